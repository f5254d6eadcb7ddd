//! The tokio driver over an in-memory pipe (`tokio::io::duplex`): not a
//! TCP socket, so this is what a mux stream or any other ordered byte
//! stream gets. Small pipe buffers force partial reads and writes
//! everywhere.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use burrow_proto::channel::pake::SessionKey;
use burrow_proto::session::{Inbox, handshake_in_memory};
use burrow_proto::transfer::Verify;
use tokio::io::DuplexStream;

use super::link::Link;
use super::{Obs, Payload, RecvState, SendState, run_receive, run_send};
use crate::error::Error;
use crate::files::{self, Exclude};
use crate::{Compress, Decision, Event, Observer, OfferInfo, ReceiveReport, SendReport, Sink};

#[derive(Default)]
struct Seen {
    events: Vec<Event>,
    offers: usize,
}

/// Accepts every offer and keeps the events.
struct Yes(Arc<Mutex<Seen>>);

impl Observer for Yes {
    fn event(&mut self, e: Event) {
        self.0.lock().unwrap().events.push(e);
    }
    fn decide(&mut self, _: &OfferInfo) -> Decision {
        self.0.lock().unwrap().offers += 1;
        Decision::Accept
    }
}

fn observer() -> (Obs, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    (Arc::new(Mutex::new(Yes(seen.clone()))), seen)
}

/// Both ends of a session over a pipe holding `pipe` bytes.
fn links(pipe: usize, seed: u8) -> (Link<DuplexStream>, Link<DuplexStream>) {
    let (a, b) = handshake_in_memory(
        &SessionKey::from_bytes([seed; 32]),
        "driver test",
        crate::platform::aead(),
        &mut burrow_proto::random::seeded(seed),
    )
    .unwrap();
    let (sa, oa) = a.split();
    let (sb, ob) = b.split();
    let (x, y) = tokio::io::duplex(pipe);
    (
        Link::new(x, sa, oa, Inbox::new(crate::meet::paths::READ_BUF)),
        Link::new(y, sb, ob, Inbox::new(crate::meet::paths::READ_BUF)),
    )
}

/// A folder of files of these sizes (content derived from the name).
fn tree(root: &Path, sizes: &[usize]) -> PathBuf {
    let top = root.join("tree");
    for (i, &n) in sizes.iter().enumerate() {
        let p = top.join(format!("d{}/f{i}", i % 3));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let bytes: Vec<u8> = (0..n).map(|k| (k * 7 + i * 13 + k / 4096) as u8).collect();
        std::fs::write(p, bytes).unwrap();
    }
    top
}

fn same_tree(a: &Path, b: &Path) {
    let mut n = 0;
    for entry in walk(a) {
        let rel = entry.strip_prefix(a).unwrap();
        assert_eq!(
            std::fs::read(&entry).unwrap(),
            std::fs::read(b.join(rel)).unwrap(),
            "{}",
            rel.display()
        );
        n += 1;
    }
    assert_eq!(n, walk(b).len(), "no extra files");
}

fn walk(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap().path();
        if e.is_dir() {
            out.extend(walk(&e));
        } else {
            out.push(e);
        }
    }
    out
}

/// How one test transfer is set up.
struct Setup {
    pipe: usize,
    compress: Compress,
    verify: Verify,
}

/// Runs both sides to the end (bounded in time).
async fn both(
    payload: Payload,
    sink: Sink,
    setup: Setup,
    tx_obs: &Obs,
    rx_obs: &Obs,
) -> (Result<SendReport, Error>, Result<ReceiveReport, Error>) {
    let (tx_link, rx_link) = links(setup.pipe, 1);
    let idle = Duration::from_secs(10);
    let sink = Arc::new(sink);
    let send = async {
        let mut st = SendState::default();
        run_send(tx_link, payload, tx_obs, idle, setup.compress, &mut st)
            .await
            .0
    };
    let receive = async {
        let mut st = RecvState::new(None, setup.verify);
        run_receive(rx_link, &sink, false, rx_obs, idle, &mut st).await
    };
    tokio::time::timeout(Duration::from_secs(30), async { tokio::join!(send, receive) })
        .await
        .expect("the transfer finished")
}

async fn send_and_receive(payload: Payload, sink: Sink, setup: Setup) -> ReceiveReport {
    let (tx_obs, tx_seen) = observer();
    let (rx_obs, rx_seen) = observer();
    let (s, r) = both(payload, sink, setup, &tx_obs, &rx_obs).await;
    let (s, r) = (s.unwrap(), r.unwrap());
    assert_eq!(s.bytes, r.bytes);
    assert_eq!(rx_seen.lock().unwrap().offers, 1);
    for seen in [&tx_seen, &rx_seen] {
        let seen = seen.lock().unwrap();
        assert!(
            matches!(seen.events.last(), Some(Event::Finished { .. })),
            "{:?}",
            seen.events
        );
    }
    r
}

#[tokio::test]
async fn a_tree_crosses_a_narrow_pipe_whole() {
    let dir = tempfile::tempdir().unwrap();
    // Empty files, sizes around record and batch boundaries, one of several MiB.
    let sizes = [0, 1, 4095, 61_440, 61_441, 245_760, 0, 3 << 20, 100, 7];
    let top = tree(dir.path(), &sizes);
    for pipe in [997, 256 * 1024] {
        let out = dir.path().join(format!("out-{pipe}"));
        let items = files::collect(std::slice::from_ref(&top), &Exclude::default(), &mut Vec::new()).unwrap();
        let setup = Setup {
            pipe,
            compress: Compress::Never,
            verify: Verify::Resumed,
        };
        send_and_receive(Payload::Items(items), Sink::Dir(out.clone()), setup).await;
        same_tree(&top, &out.join("tree"));
    }
}

#[tokio::test]
async fn compressed_and_verified_files_arrive_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let top = dir.path().join("tree");
    std::fs::create_dir_all(&top).unwrap();
    // Compressible, incompressible, and mixed within one file.
    std::fs::write(top.join("zeros"), vec![0u8; 1 << 20]).unwrap();
    let noise: Vec<u8> = (0..(600u32 << 10))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(top.join("noise"), &noise).unwrap();
    let mut mixed = vec![b'a'; 200_000];
    mixed.extend_from_slice(&noise[..200_000]);
    std::fs::write(top.join("mixed"), mixed).unwrap();
    for (compress, verify) in [(Compress::Always, Verify::All), (Compress::Auto, Verify::Resumed)] {
        let out = dir.path().join(format!("out-{compress:?}"));
        let items = files::collect(std::slice::from_ref(&top), &Exclude::default(), &mut Vec::new()).unwrap();
        let setup = Setup {
            pipe: 8192,
            compress,
            verify,
        };
        send_and_receive(Payload::Items(items), Sink::Dir(out.clone()), setup).await;
        same_tree(&top, &out.join("tree"));
    }
}

#[tokio::test]
async fn text_arrives_in_the_report() {
    let text = "héllo ".repeat(20_000);
    let setup = Setup {
        pipe: 4096,
        compress: Compress::Auto,
        verify: Verify::Resumed,
    };
    let r = send_and_receive(Payload::Text(text.clone()), Sink::Stdout, setup).await;
    assert_eq!(r.text.as_deref(), Some(text.as_str()));
}

/// A receiver that declines: the sender reports the reason, no file is written.
#[tokio::test]
async fn a_declined_offer_is_reported_to_the_sender() {
    struct No;
    impl Observer for No {
        fn event(&mut self, _: Event) {}
        fn decide(&mut self, _: &OfferInfo) -> Decision {
            Decision::Reject("not today".into())
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let top = tree(dir.path(), &[10, 20]);
    let items = files::collect(std::slice::from_ref(&top), &Exclude::default(), &mut Vec::new()).unwrap();
    let (tx_obs, _) = observer();
    let rx_obs: Obs = Arc::new(Mutex::new(No));
    let out = dir.path().join("out");
    let setup = Setup {
        pipe: 4096,
        compress: Compress::Never,
        verify: Verify::Resumed,
    };
    let (s, r) = both(
        Payload::Items(items),
        Sink::Dir(out.clone()),
        setup,
        &tx_obs,
        &rx_obs,
    )
    .await;
    let s = s.unwrap_err().to_string();
    assert!(s.contains("not today"), "{s}");
    assert!(r.is_err());
    assert!(!out.exists() || walk(&out).is_empty());
}
