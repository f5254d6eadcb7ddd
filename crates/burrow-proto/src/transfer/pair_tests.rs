//! Both sides of a transfer against each other on the in-memory pair
//! harness ([`crate::harness`]): whole transfers, resume, verification,
//! keepalives through a slow decision, silence, a hostile link, and a
//! transfer over a stream of the mux.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::framing;
use super::*;
use crate::harness::{Endpoint, Link, Outcome, TwoEnds};
use crate::tunnel::mux::{self, Host, Mux};

const IDLE: Duration = Duration::from_secs(15);
const CHUNK: usize = 1000;

/// A sender with its files in memory.
struct TxEnd {
    tx: Sender,
    files: Vec<Vec<u8>>,
    sending: bool,
    /// (index, cursor, hasher) of the file in flight.
    file: Option<(usize, usize, Option<blake3::Hasher>)>,
    /// What `schedule` promised once the answer came: `next_file` must
    /// name exactly these files.
    planned: Option<VecDeque<Next>>,
    finished: bool,
}

impl TxEnd {
    fn new(entries: Vec<Entry>, files: Vec<Vec<u8>>, now: Instant) -> Self {
        Self {
            tx: Sender::new(OfferKind::Files, entries, Attempt::First).timeouts(IDLE, now),
            files,
            sending: false,
            file: None,
            planned: None,
            finished: false,
        }
    }

    /// The data phase: the next `Data` record, or `None` once every file
    /// is ended (its control messages go through `poll_transmit`).
    fn data(&mut self, now: Instant) -> Result<Option<Vec<u8>>, TransferError> {
        let Some((index, cursor, hasher)) = &mut self.file else {
            let planned = self.planned.get_or_insert_with(|| self.tx.schedule().into());
            let next = self.tx.next_file()?;
            let promised = match &next {
                Next::Done => planned.is_empty(),
                file => planned.pop_front().as_ref() == Some(file),
            };
            if !promised {
                return Err(TransferError::Local(format!("{next:?} was not scheduled")));
            }
            match next {
                Next::Done => self.sending = false,
                Next::File { index, resume, .. } => {
                    let data = &self.files[index];
                    // Resume only where the receiver's prefix is ours.
                    let at = resume.filter(|r| {
                        let o = r.offset as usize;
                        o <= data.len() && *blake3::hash(&data[..o]).as_bytes() == r.prefix
                    });
                    self.tx.begin(index, at.as_ref().map(|r| r.offset))?;
                    let start = at.map_or(0, |r| r.offset as usize);
                    let hasher = self.tx.hashing().then(|| {
                        let mut h = blake3::Hasher::new();
                        h.update(&data[..start]);
                        h
                    });
                    self.file = Some((index, start, hasher));
                }
            }
            return Ok(None); // a Skip or Done may be queued: it goes first
        };
        let data = &self.files[*index];
        if *cursor == data.len() {
            let hash = hasher.take().map(|h| *h.finalize().as_bytes());
            self.file = None;
            self.tx.end_file(hash)?;
            return Ok(None); // FileEnd goes first
        }
        let end = (*cursor + CHUNK).min(data.len());
        let bytes = &data[*cursor..end];
        if let Some(h) = hasher {
            h.update(bytes);
        }
        let rec = Message::Data(bytes).to_vec();
        *cursor = end;
        self.tx.sent_data(now, bytes.len())?;
        Ok(Some(rec))
    }
}

impl Endpoint for TxEnd {
    fn input(&mut self, now: Instant, msg: &[u8]) -> Result<(), String> {
        match self.tx.handle(now, msg).map_err(|e| e.to_string())? {
            Some(TxEvent::Accepted { .. }) => self.sending = true,
            Some(TxEvent::Finished) => self.finished = true,
            None => {}
        }
        Ok(())
    }

    fn transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            // Control messages (Skip, FileEnd, Done, keepalives) go first.
            if self.tx.poll_transmit(now, &mut out) {
                return Some(out);
            }
            if !self.sending {
                return None;
            }
            match self.data(now) {
                Ok(Some(rec)) => return Some(rec),
                Ok(None) => {}
                Err(e) => {
                    self.tx.abort(&e.to_string());
                    self.sending = false;
                }
            }
        }
    }

    fn timeout(&self) -> Option<Instant> {
        self.tx.poll_timeout()
    }

    fn on_timeout(&mut self, now: Instant) -> Result<(), String> {
        self.tx.handle_timeout(now).map_err(|e| e.to_string())
    }

    fn done(&self) -> bool {
        self.finished
    }
}

/// A receiver writing into memory; `partial` are files it has part of.
struct RxEnd {
    rx: Receiver,
    partial: HashMap<usize, Vec<u8>>,
    files: HashMap<usize, Vec<u8>>,
    saved: Vec<usize>,
    /// A person who takes this long to say yes.
    decide_after: Duration,
    decide_at: Option<Instant>,
    finished: bool,
}

impl RxEnd {
    fn new(verify: Verify, now: Instant) -> Self {
        Self {
            rx: Receiver::new().verify(verify).timeouts(IDLE, now),
            partial: HashMap::new(),
            files: HashMap::new(),
            saved: Vec::new(),
            decide_after: Duration::ZERO,
            decide_at: None,
            finished: false,
        }
    }

    fn decide(&mut self) -> Result<(), String> {
        self.decide_at = None;
        let proposals = self
            .partial
            .iter()
            .map(|(&i, d)| {
                let mut h = blake3::Hasher::new();
                h.update(d);
                (i, d.len() as u64, h)
            })
            .collect();
        self.rx.accept_resuming(proposals).map_err(|e| e.to_string())
    }
}

impl Endpoint for RxEnd {
    fn input(&mut self, now: Instant, msg: &[u8]) -> Result<(), String> {
        match self.rx.handle(now, msg).map_err(|e| e.to_string())? {
            RxEvent::OfferReady if self.decide_after.is_zero() => self.decide()?,
            RxEvent::OfferReady => self.decide_at = Some(now + self.decide_after),
            RxEvent::Data { index, bytes } => self.files.entry(index).or_default().extend_from_slice(bytes),
            RxEvent::Compressed { .. } => return Err("no compression here".into()),
            RxEvent::Resumed { index, offset } => {
                let have = self.partial.remove(&index).unwrap_or_default();
                self.files.insert(index, have[..offset as usize].to_vec());
            }
            RxEvent::FileVerified { index } => {
                self.files.entry(index).or_default();
                self.saved.push(index);
            }
            RxEvent::Finished => {
                self.rx.confirm().map_err(|e| e.to_string())?;
                self.finished = true;
            }
            RxEvent::Nothing => {}
        }
        Ok(())
    }

    fn transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        self.rx.poll_transmit(now, &mut out).then_some(out)
    }

    fn timeout(&self) -> Option<Instant> {
        [self.rx.poll_timeout(), self.decide_at]
            .into_iter()
            .flatten()
            .min()
    }

    fn on_timeout(&mut self, now: Instant) -> Result<(), String> {
        if self.decide_at.is_some_and(|t| t <= now) {
            self.decide()?;
        }
        self.rx.handle_timeout(now).map_err(|e| e.to_string())
    }

    fn done(&self) -> bool {
        self.finished
    }
}

fn file(path: &str, data: &[u8]) -> Entry {
    Entry {
        kind: EntryKind::File,
        executable: false,
        size: data.len() as u64,
        path: path.into(),
    }
}

fn dir(path: &str) -> Entry {
    Entry {
        kind: EntryKind::Dir,
        executable: false,
        size: 0,
        path: path.into(),
    }
}

fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A small tree: a folder, an empty file, a file of several chunks.
fn tree() -> (Vec<Entry>, Vec<Vec<u8>>) {
    let big = bytes(10 * CHUNK + 7, 1);
    let small = bytes(5, 2);
    let entries = vec![
        dir("top"),
        file("top/big", &big),
        file("top/empty", b""),
        dir("top/sub"),
        file("top/sub/small", &small),
    ];
    let files = vec![vec![], big, vec![], vec![], small];
    (entries, files)
}

fn pair(link: Link, verify: Verify) -> TwoEnds<TxEnd, RxEnd> {
    let start = Instant::now();
    let (entries, files) = tree();
    TwoEnds::new(
        TxEnd::new(entries, files, start),
        RxEnd::new(verify, start),
        link,
        start,
    )
}

fn assert_arrived(p: &TwoEnds<TxEnd, RxEnd>) {
    let (tx, rx) = (p.a(), p.b());
    assert!(tx.finished && rx.finished);
    for (i, e) in tx.tx.entries().iter().enumerate() {
        if e.kind == EntryKind::File {
            assert_eq!(rx.files.get(&i), Some(&tx.files[i]), "{}", e.path);
        }
    }
    assert_eq!(rx.saved, [1, 2, 4]);
}

fn ok(o: &Outcome) {
    assert!(o.a.is_none() && o.b.is_none(), "{o:?}");
}

#[test]
fn a_tree_arrives_whole_in_virtual_milliseconds() {
    for verify in [Verify::Resumed, Verify::All] {
        let mut p = pair(
            Link {
                latency: Duration::from_millis(20),
                ..Link::default()
            },
            verify,
        );
        let o = p.run(Duration::from_secs(60));
        ok(&o);
        assert_arrived(&p);
        // Offer, answer, data and Ack: a few round trips, not timeouts.
        assert!(o.elapsed < Duration::from_millis(200), "{:?}", o.elapsed);
        assert_eq!(p.a().tx.sent(), 10 * CHUNK as u64 + 7 + 5);
    }
}

#[test]
fn a_partial_file_resumes_only_when_its_prefix_matches() {
    let start = Instant::now();
    let (entries, files) = tree();
    let mut rx = RxEnd::new(Verify::Resumed, start);
    rx.partial.insert(1, files[1][..3 * CHUNK].to_vec());
    let mut p = TwoEnds::new(
        TxEnd::new(entries.clone(), files.clone(), start),
        rx,
        Link::default(),
        start,
    );
    ok(&p.run(Duration::from_secs(60)));
    assert_arrived(&p);
    assert_eq!(p.a().tx.skipped(), 3 * CHUNK as u64);
    assert_eq!(p.a().tx.sent(), 7 * CHUNK as u64 + 7 + 5);

    // A stale partial file (other bytes): the whole file is sent again.
    let mut rx = RxEnd::new(Verify::Resumed, start);
    rx.partial.insert(1, vec![0xee; 3 * CHUNK]);
    let mut p = TwoEnds::new(TxEnd::new(entries, files, start), rx, Link::default(), start);
    ok(&p.run(Duration::from_secs(60)));
    assert_arrived(&p);
    assert_eq!(p.a().tx.skipped(), 0);
}

#[test]
fn keepalives_carry_a_slow_decision() {
    let mut p = pair(
        Link {
            latency: Duration::from_millis(5),
            ..Link::default()
        },
        Verify::Resumed,
    );
    // The person takes four idle limits to say yes.
    p.b_mut().decide_after = IDLE * 4;
    let o = p.run(Duration::from_secs(600));
    ok(&o);
    assert_arrived(&p);
    assert!(o.elapsed >= IDLE * 4);
    // About three keepalives per idle limit, each way.
    assert!(o.messages > 2 * 4 * 3, "{} messages", o.messages);
}

#[test]
fn silence_fails_both_sides_within_the_idle_limit() {
    // Everything after the offer's first records is lost.
    let mut p = pair(
        Link {
            drop_from: Some(3),
            ..Link::default()
        },
        Verify::Resumed,
    );
    let o = p.run(Duration::from_secs(600));
    let (a, b) = (o.a.expect("sender fails"), o.b.expect("receiver fails"));
    assert!(
        a.contains("stopped responding") && b.contains("stopped responding"),
        "{a} / {b}"
    );
    assert!(o.elapsed <= IDLE + Duration::from_secs(1), "{:?}", o.elapsed);
}

#[test]
fn a_hostile_link_never_yields_altered_files() {
    // Without the session's AEAD underneath, a flipped byte in file data is
    // caught by the hashes (--verify); anything else is a clean failure.
    let total = {
        let mut p = pair(Link::default(), Verify::All);
        p.run(Duration::from_secs(60)).messages
    };
    for seq in 0..total {
        for reorder in [false, true] {
            let link = Link {
                corrupt: Some(seq),
                reorder,
                latency: Duration::from_millis(1),
                ..Link::default()
            };
            let mut p = pair(link, Verify::All);
            let o = p.run(Duration::from_secs(120));
            if o.a.is_none() && o.b.is_none() {
                // The flip was harmless (it hit a byte no check depends
                // on): then every byte must still be right.
                assert_arrived(&p);
            } else {
                // A clean failure, told, and no file saved with wrong bytes.
                let rx = p.b();
                for &i in &rx.saved {
                    assert_eq!(
                        rx.files.get(&i),
                        Some(&p.a().files[i]),
                        "seq {seq}: file {i} saved altered"
                    );
                }
                // (A receiver may have finished when only the Ack was hit:
                // then it holds every file, checked above.)
                assert!(!rx.finished || rx.saved == [1, 2, 4], "seq {seq}: {o:?}");
            }
        }
    }
}

/// Carries an endpoint's messages over one stream of a [`Mux`]: framed
/// with [`framing`], cut into `Data` frames within the stream's credit,
/// flow-controlled by `Window` frames.
struct OverMux<E> {
    inner: E,
    mux: Mux,
    stream: Option<u32>,
    /// Framed bytes waiting for credit.
    pending: Vec<u8>,
    frames: VecDeque<Vec<u8>>,
    reader: framing::Reader,
}

impl<E: Endpoint> OverMux<E> {
    fn client(inner: E) -> Self {
        let mut mux = Mux::new(mux::End::Client, mux::Limits::default());
        let (stream, open) = mux.open(Host::Name("transfer".into()), 0).expect("a stream");
        Self {
            inner,
            mux,
            stream: Some(stream),
            pending: Vec::new(),
            frames: VecDeque::from([open]),
            reader: framing::Reader::default(),
        }
    }

    fn server(inner: E) -> Self {
        Self {
            inner,
            mux: Mux::new(mux::End::Server, mux::Limits::default()),
            stream: None,
            pending: Vec::new(),
            frames: VecDeque::new(),
            reader: framing::Reader::default(),
        }
    }
}

impl<E: Endpoint> Endpoint for OverMux<E> {
    fn input(&mut self, now: Instant, frame: &[u8]) -> Result<(), String> {
        match self.mux.handle(frame).map_err(|e| e.to_string())? {
            mux::Event::Open { stream, .. } => {
                self.stream = Some(stream);
                self.frames.push_back(self.mux.opened(stream));
            }
            mux::Event::Data { stream, bytes } => {
                self.reader.push(bytes);
                if let Some(w) = self.mux.consumed(stream, bytes.len()) {
                    self.frames.push_back(w);
                }
                while let Some(msg) = self.reader.next_message().map_err(|e| e.to_string())? {
                    let msg = msg.to_vec();
                    self.inner.input(now, &msg)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        if let Some(f) = self.frames.pop_front() {
            return Some(f);
        }
        let stream = self.stream?;
        while self.pending.len() < mux::MAX_DATA {
            let Some(msg) = self.inner.transmit(now) else {
                break;
            };
            assert!(framing::put(&msg, &mut self.pending));
        }
        let n = self.pending.len().min(self.mux.credit(stream));
        if n == 0 {
            return None;
        }
        let frame = self.mux.data(stream, &self.pending[..n]).ok()?;
        self.pending.drain(..n);
        Some(frame)
    }

    fn timeout(&self) -> Option<Instant> {
        self.inner.timeout()
    }

    fn on_timeout(&mut self, now: Instant) -> Result<(), String> {
        self.inner.on_timeout(now)
    }

    fn done(&self) -> bool {
        self.inner.done() && self.pending.is_empty() && self.frames.is_empty()
    }
}

#[test]
fn a_transfer_runs_over_a_mux_stream() {
    let start = Instant::now();
    // Larger than one stream window, so credit has to come back.
    let big = bytes(mux::TARGET_WINDOW as usize + 300_000, 9);
    let entries = vec![file("big", &big), file("small", b"hi")];
    let files = vec![big, b"hi".to_vec()];
    let tx = OverMux::client(TxEnd::new(entries, files, start));
    let rx = OverMux::server(RxEnd::new(Verify::All, start));
    let mut p = TwoEnds::new(
        tx,
        rx,
        Link {
            latency: Duration::from_millis(10),
            ..Link::default()
        },
        start,
    );
    let o = p.run(Duration::from_secs(600));
    ok(&o);
    let (tx, rx) = (&p.a().inner, &p.b().inner);
    assert!(tx.finished && rx.finished);
    assert_eq!(rx.files.get(&0), Some(&tx.files[0]));
    assert_eq!(rx.files.get(&1).map(Vec::as_slice), Some(&b"hi"[..]));
}

#[test]
fn framing_is_total_and_bounded() {
    let mut out = Vec::new();
    assert!(framing::put(b"abc", &mut out));
    assert!(!framing::put(
        &vec![0; crate::session::MAX_PLAINTEXT + 1],
        &mut out
    ));
    assert_eq!(out, [0, 3, b'a', b'b', b'c']);
    let mut r = framing::Reader::default();
    r.push(&out[..2]);
    assert_eq!(r.next_message(), Ok(None));
    r.push(&out[2..]);
    assert_eq!(r.next_message(), Ok(Some(&b"abc"[..])));
    assert_eq!(r.next_message(), Ok(None));
    r.push(&[0xff, 0xff]);
    assert_eq!(r.next_message(), Err(framing::TooLong));
}
