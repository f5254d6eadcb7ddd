//! No silent stalls: a peer that stops answering is reported within the idle
//! timeout; a peer that is slow but alive (slow input, a person deciding)
//! keeps the session up with keepalives.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use burrow_node::{Code, Decision, ErrorKind, Event, Observer, OfferInfo, Sink, Source, Transfer};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const IDLE: Duration = Duration::from_millis(700);

fn quick(addr: &str) -> Transfer {
    Transfer::builder()
        .relay(addr)
        .step_timeout(Duration::from_secs(10))
        .idle_timeout(IDLE)
        .relay_only(true)
        .reconnect_for(Duration::ZERO)
        .build()
        .unwrap()
}

/// Forwards to `upstream`, but on stapling connections stops forwarding in
/// both directions (without closing) after `after` bytes from the client.
async fn black_hole(upstream: std::net::SocketAddr, after: usize) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = l.accept().await {
            tokio::spawn(async move {
                let server = TcpStream::connect(upstream).await.unwrap();
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let stall = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                let s2 = stall.clone();
                let up = async move {
                    let mut buf = vec![0u8; 65536];
                    let (mut seen, mut staple) = (0usize, None);
                    while let Ok(n) = cr.read(&mut buf).await {
                        if n == 0 {
                            let _ = sw.shutdown().await;
                            break;
                        }
                        if *staple.get_or_insert(buf.starts_with(b"BRWS")) && seen + n > after {
                            s2.store(true, std::sync::atomic::Ordering::SeqCst);
                            std::future::pending::<()>().await;
                        }
                        seen += n;
                        let _ = sw.write_all(&buf[..n]).await;
                    }
                };
                let down = async move {
                    let mut buf = vec![0u8; 65536];
                    while let Ok(n) = sr.read(&mut buf).await {
                        if stall.load(std::sync::atomic::Ordering::SeqCst) {
                            std::future::pending::<()>().await;
                        }
                        if n == 0 {
                            let _ = cw.shutdown().await;
                            break;
                        }
                        let _ = cw.write_all(&buf[..n]).await;
                    }
                };
                tokio::join!(up, down);
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_answering_is_reported_within_the_timeout() {
    let r = relay_with(|_| {}).await;
    let proxy = black_hole(r.addr(), 2_000_000).await.to_string();
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let file = src.path().join("f.bin");
    // Incompressible, so that the stall point is really reached on the wire.
    let mut data = vec![0u8; 8 << 20];
    blake3::Hasher::new()
        .update(b"stall")
        .finalize_xof()
        .fill(&mut data);
    std::fs::write(&file, data).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let t = quick(&proxy);
    let started = Instant::now();
    let sender = tokio::spawn(async move {
        t.send(Source::Paths(vec![file]), Auto { code_tx: Some(tx) })
            .await
    });
    let code = rx.await.unwrap();
    let res = quick(&proxy)
        .receive(
            &Code::parse(&code).unwrap(),
            Sink::Dir(dst.path().into()),
            Auto { code_tx: None },
        )
        .await;
    let err = res.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Peer, "{err}");
    assert!(err.to_string().contains("stopped responding"), "{err}");
    let serr = sender.await.unwrap().unwrap_err();
    assert!(serr.to_string().contains("stopped responding"), "{serr}");
    // Both noticed within a few idle periods, never a frozen transfer.
    assert!(started.elapsed() < IDLE * 6, "took {:?}", started.elapsed());
}

/// A reader that pauses longer than the idle timeout between chunks.
struct Trickle {
    chunks: usize,
}

impl Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.chunks == 0 {
            return Ok(0);
        }
        self.chunks -= 1;
        std::thread::sleep(IDLE * 2);
        let n = buf.len().min(1000);
        buf[..n].fill(b'x');
        Ok(n)
    }
}

/// Accepts after thinking for longer than the idle timeout.
struct Slow(Option<tokio::sync::oneshot::Sender<String>>);

impl Observer for Slow {
    fn event(&mut self, e: Event) {
        if let (Event::Code(c), Some(tx)) = (&e, self.0.take()) {
            let _ = tx.send(c.clone());
        }
    }
    fn decide(&mut self, _: &OfferInfo) -> Decision {
        std::thread::sleep(IDLE * 2);
        Decision::Accept
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_but_alive_peers_are_kept() {
    let r = relay_with(|_| {}).await;
    let addr = r.addr().to_string();
    let dst = tempfile::tempdir().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let t = quick(&addr);
    let sender = tokio::spawn(async move {
        t.send(
            Source::Stream(Box::new(Trickle { chunks: 2 })),
            Auto { code_tx: Some(tx) },
        )
        .await
    });
    let code = rx.await.unwrap();
    let rep = quick(&addr)
        .receive(
            &Code::parse(&code).unwrap(),
            Sink::Dir(dst.path().into()),
            Slow(None),
        )
        .await
        .unwrap();
    sender.await.unwrap().unwrap();
    assert_eq!(rep.bytes, 2000);
    assert_eq!(std::fs::read(dst.path().join("stdin")).unwrap(), vec![b'x'; 2000]);
}
