//! A relay that flips one byte of the stapled stream: the transfer fails with
//! an integrity error and no file that looks complete is left behind.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Forwards to `upstream`; on stapling connections (they start with `BRWS`)
/// flips one bit once `flip_at` bytes have passed from the client.
async fn evil_proxy(
    upstream: std::net::SocketAddr,
    flip_at: usize,
) -> (std::net::SocketAddr, Arc<AtomicBool>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let flipped = Arc::new(AtomicBool::new(false));
    let f = flipped.clone();
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
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let is_staple = *staple.get_or_insert_with(|| buf.starts_with(b"BRWS"));
                        if is_staple
                            && seen <= flip_at
                            && flip_at < seen + n
                            && !f.swap(true, Ordering::SeqCst)
                        {
                            buf[flip_at - seen] ^= 0x20;
                        }
                        seen += n;
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = sw.shutdown().await;
                };
                let down = async move {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                    let _ = cw.shutdown().await;
                };
                tokio::join!(up, down);
            });
        }
    });
    (addr, flipped)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_is_an_integrity_error_and_leaves_no_file() {
    let r = relay_with(|_| {}).await;
    let (proxy, flipped) = evil_proxy(r.addr(), 700_000).await;
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let file = src.path().join("data.bin");
    std::fs::write(&file, vec![7u8; 3_000_000]).unwrap();
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
