//! A relay that flips one byte of the stapled stream: the transfer fails with
//! an integrity error and no file that looks complete is left behind.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does to the first stapling connection.
#[derive(Clone, Copy)]
enum Evil {
    /// Flip one bit at this byte offset.
    Flip(usize),
    /// Drop the connection (both ways) at this byte offset.
    Cut(usize),
}

/// Forwards to `upstream`; on stapling connections (they start with `BRWS`)
/// misbehaves once, as `evil` says, when that many bytes passed from the client.
async fn evil_proxy(upstream: std::net::SocketAddr, evil: Evil) -> (std::net::SocketAddr, Arc<AtomicBool>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let fired = Arc::new(AtomicBool::new(false));
    let f = fired.clone();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = l.accept().await else { return };
            let f = f.clone();
            tokio::spawn(async move {
                let server = TcpStream::connect(upstream).await.unwrap();
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = async move {
                    let mut buf = vec![0u8; 65536];
                    let mut seen = 0usize;
                    let mut staple = None;
                    let at = match evil {
                        Evil::Flip(a) | Evil::Cut(a) => a,
                    };
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let is_staple = *staple.get_or_insert_with(|| buf.starts_with(b"BRWS"));
                        if is_staple && seen <= at && at < seen + n && !f.swap(true, Ordering::SeqCst) {
                            match evil {
                                Evil::Flip(_) => buf[at - seen] ^= 0x20,
                                // Returning drops both halves: like a pulled cable.
                                Evil::Cut(_) => return true,
                            }
                        }
                        seen += n;
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = sw.shutdown().await;
                    false
                };
                let down = async move {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                    let _ = cw.shutdown().await;
                };
                tokio::pin!(up, down);
                tokio::select! {
                    cut = &mut up => if !cut { (&mut down).await },
                    _ = &mut down => { (&mut up).await; }
                }
            });
        }
    });
    (addr, fired)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_is_an_integrity_error_and_leaves_no_file() {
    let r = relay_with(|_| {}).await;
    let (proxy, flipped) = evil_proxy(r.addr(), Evil::Flip(700_000)).await;
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let file = src.path().join("data.bin");
    // Incompressible, so that the flipped offset is really reached on the wire.
    let mut data = vec![0u8; 3_000_000];
    blake3::Hasher::new()
        .update(b"flip")
        .finalize_xof()
        .fill(&mut data);
    std::fs::write(&file, data).unwrap();
    let (s, rcv) = round_trip(&proxy.to_string(), &file, dst.path()).await;
    assert!(flipped.load(Ordering::SeqCst), "the proxy never flipped a byte");
    let err = rcv.unwrap_err();
    assert_eq!(err.kind(), burrow_node::ErrorKind::Integrity, "{err}");
    assert!(err.to_string().contains("integrity"), "{err}");
    assert!(s.is_err(), "the sender must not report success");
    let left: Vec<_> = std::fs::read_dir(dst.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_transfer_resumes_and_moves_only_what_is_missing() {
    let r = relay_with(|_| {}).await;
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let file = src.path().join("big.bin");
    let size = 8 << 20;
    let mut data = vec![0u8; size];
    blake3::Hasher::new()
        .update(b"resume")
        .finalize_xof()
        .fill(&mut data);
    std::fs::write(&file, &data).unwrap();

    // First attempt: the connection is cut about halfway.
    let (proxy, cut) = evil_proxy(r.addr(), Evil::Cut(size / 2)).await;
    let (s, rcv) = round_trip(&proxy.to_string(), &file, dst.path()).await;
    assert!(cut.load(Ordering::SeqCst));
    let err = rcv.unwrap_err();
    assert_eq!(err.kind(), burrow_node::ErrorKind::Peer, "{err}");
    assert!(s.is_err());
    assert!(
        !dst.path().join("big.bin").exists(),
        "an incomplete file must not look complete"
    );
    let part = burrow_node::files::part_path(dst.path(), "big.bin", |_| false);
    let have = std::fs::metadata(&part)
        .expect("partial state kept for resume")
        .len();
    assert!(have > 0 && have < size as u64);

    // Second attempt, new code, straight to the relay: only the rest moves.
    let (s, rcv) = round_trip(&r.addr().to_string(), &file, dst.path()).await;
    let rep = rcv.unwrap();
    let srep = s.unwrap();
    assert_eq!(rep.resumed, have);
    assert_eq!(srep.resumed, have);
    assert_eq!(rep.bytes + have, size as u64);
    assert!(
        (rep.bytes as f64) < 0.6 * size as f64,
        "moved {} of {size}",
        rep.bytes
    );
    assert_eq!(
        blake3::hash(&std::fs::read(dst.path().join("big.bin")).unwrap()),
        blake3::hash(&data)
    );
    assert!(!part.exists(), "partial state removed once complete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_partial_file_is_not_trusted() {
    let r = relay_with(|_| {}).await;
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let file = src.path().join("f.bin");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &data).unwrap();
    // A partial file whose bytes differ from the sender's prefix.
    std::fs::write(
        burrow_node::files::part_path(dst.path(), "f.bin", |_| false),
        vec![0xEEu8; 1_000_000],
    )
    .unwrap();
    let (s, rcv) = round_trip(&r.addr().to_string(), &file, dst.path()).await;
    let rep = rcv.unwrap();
    s.unwrap();
    assert_eq!(rep.resumed, 0);
    assert_eq!(rep.bytes, data.len() as u64);
    assert!(
        std::fs::read(dst.path().join("f.bin")).unwrap() == data,
        "content differs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_link_at_the_partial_name_is_not_followed() {
    let r = relay_with(|_| {}).await;
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    std::fs::write(&victim, b"do not touch").unwrap();
    std::os::unix::fs::symlink(
        &victim,
        burrow_node::files::part_path(dst.path(), "f.bin", |_| false),
    )
    .unwrap();
    let file = src.path().join("f.bin");
    std::fs::write(&file, b"do not touch, and more").unwrap();
    let (s, rcv) = round_trip(&r.addr().to_string(), &file, dst.path()).await;
    s.unwrap();
    let rep = rcv.unwrap();
    assert_eq!(rep.resumed, 0, "a link is not partial data");
    assert_eq!(std::fs::read(&victim).unwrap(), b"do not touch");
    assert_eq!(
        std::fs::read(dst.path().join("f.bin")).unwrap(),
        b"do not touch, and more"
    );
}
