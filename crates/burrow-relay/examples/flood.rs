//! A slowloris and idle-connection flood against a relay, with a probe of
//! `/health` beside it: the attacker of `scripts/bench-flood.sh`.
//!
//! ```text
//! cargo run --release -p burrow-relay --example flood -- \
//!     127.0.0.1:9009 --slow 5000 --idle 5000 --addresses 40 --seconds 30
//! ```
//!
//! Slowloris connections send an HTTP request head a line a second and
//! never finish it; idle ones connect, say nothing and reconnect when
//! closed. Both reconnect at once when closed. The attack comes from
//! `--addresses` loopback addresses 127.0.9.1, 127.0.9.2, … (each a share
//! of the relay's per-address limit). Every second it prints how many
//! attacking connections are open and how many `/health` probes (from
//! 127.0.0.2, ten a second) were answered 200, and the slowest answer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Counts {
    open: AtomicUsize,
    connects: AtomicUsize,
}

fn bound_socket(from: [u8; 4]) -> std::io::Result<tokio::net::TcpSocket> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(SocketAddr::from((from, 0)))?;
    Ok(sock)
}

async fn attacker(relay: SocketAddr, from: [u8; 4], slow: bool, counts: Arc<Counts>) {
    loop {
        let Ok(sock) = bound_socket(from) else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(mut s) = sock.connect(relay).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        counts.connects.fetch_add(1, Ordering::Relaxed);
        counts.open.fetch_add(1, Ordering::Relaxed);
        let mut b = [0u8; 512];
        if slow {
            let mut line: &[u8] = b"POST /join HTTP/1.1\r\n";
            while s.write_all(line).await.is_ok() {
                line = b"X-Slow: yes\r\n";
                if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), s.read(&mut b)).await {
                    break;
                }
            }
        } else {
            while let Ok(n) = s.read(&mut b).await {
                if n == 0 {
                    break;
                }
            }
        }
        counts.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One `/health` probe: its status (0 = no answer in 5 s) and time.
async fn probe(relay: SocketAddr) -> (u16, Duration) {
    let t = Instant::now();
    let ask = async {
        let mut s = bound_socket([127, 0, 0, 2])?.connect(relay).await?;
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        let status = std::str::from_utf8(out.get(9..12).unwrap_or_default())
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        std::io::Result::Ok(status)
    };
    let status = match tokio::time::timeout(Duration::from_secs(5), ask).await {
        Ok(Ok(s)) => s,
        _ => 0,
    };
    (status, t.elapsed())
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(relay) = args.first().and_then(|a| a.parse::<SocketAddr>().ok()) else {
        eprintln!("usage: flood RELAY_ADDR [--slow N] [--idle N] [--addresses N] [--seconds N]");
        std::process::exit(2);
    };
    let slow: usize = arg(&args, "--slow", 5000);
    let idle: usize = arg(&args, "--idle", 5000);
    let addresses: usize = arg(&args, "--addresses", 40).clamp(1, 250);
    let seconds: u64 = arg(&args, "--seconds", 30);
    let counts = Arc::new(Counts {
        open: AtomicUsize::new(0),
        connects: AtomicUsize::new(0),
    });
    for i in 0..slow + idle {
        let from = [127, 0, 9, 1 + (i % addresses) as u8];
        tokio::spawn(attacker(relay, from, i < slow, counts.clone()));
    }
    let (mut ok, mut tried) = (0usize, 0usize);
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    while start.elapsed() < Duration::from_secs(seconds) {
        let probes: Vec<_> = (0..10).map(|_| tokio::spawn(probe(relay))).collect();
        let (mut good, mut slowest) = (0, Duration::ZERO);
        for p in probes {
            if let Ok((status, took)) = p.await {
                good += usize::from(status == 200);
                slowest = slowest.max(took);
            }
        }
        ok += good;
        tried += 10;
        tick.tick().await;
        println!(
            "t={:>3}s attack open {:>5} (connects {:>7}), /health {good}/10, slowest {:.0} ms",
            start.elapsed().as_secs(),
            counts.open.load(Ordering::Relaxed),
            counts.connects.load(Ordering::Relaxed),
            slowest.as_secs_f64() * 1e3
        );
    }
    println!("health answered {ok}/{tried}");
}
