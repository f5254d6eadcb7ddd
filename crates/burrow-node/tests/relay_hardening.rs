//! Bad input to the relay: every case gets a clear error, only the bad
//! connection is closed, and a clean transfer works afterwards.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

async fn clean_transfer_still_works(addr: &str) {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("ok.txt"), b"still serving").unwrap();
    let (s, r) = round_trip(addr, &src.path().join("ok.txt"), dst.path()).await;
    s.unwrap();
    r.unwrap();
    assert_eq!(
        std::fs::read(dst.path().join("ok.txt")).unwrap(),
        b"still serving"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_clear_errors() {
    let r = relay_with(|_| {}).await;
    let a = r.addr();
    let ip = [127, 0, 0, 1];
    let (st, body) = raw_http(a, ip, &post("/join", "{not json")).await;
    assert_eq!(st, 400);
    assert_eq!(json(&body)["kind"], "bad_json");
    let (st, body) = raw_http(a, ip, &post("/join", r#"{"role":"sender","curve":"p256"}"#)).await;
    assert_eq!((st, json(&body)["kind"].clone()), (400, "unknown_curve".into()));
    let (st, body) = raw_http(a, ip, &post("/join", r#"{"role":"recipient","channel":"4242"}"#)).await;
    assert_eq!((st, json(&body)["kind"].clone()), (404, "unknown_channel".into()));
    let (st, body) = raw_http(a, ip, &post("/channel", r#"{"channel":"4242","uuid":"00"}"#)).await;
    assert_eq!((st, json(&body)["kind"].clone()), (404, "unknown_channel".into()));
    // Wrong UUID on a real channel.
    let (_, body) = raw_http(a, ip, &post("/join", r#"{"role":"sender","channel":"77"}"#)).await;
    assert!(json(&body)["uuid"].is_string());
    let wrong = format!(r#"{{"channel":"77","uuid":"{}","x":"aa"}}"#, "11".repeat(16));
    let (st, body) = raw_http(a, ip, &post("/channel", &wrong)).await;
    assert_eq!((st, json(&body)["kind"].clone()), (403, "bad_uuid".into()));
    // Oversized body, missing length, unknown path, non-HTTP garbage.
    let big = format!(
        "POST /join HTTP/1.1\r\nContent-Length: {}\r\n\r\n{}",
        100_000,
        "x".repeat(100)
    );
    let (st, body) = raw_http(a, ip, big.as_bytes()).await;
    assert_eq!((st, json(&body)["kind"].clone()), (413, "body_too_large".into()));
    let (st, _) = raw_http(a, ip, b"POST /join HTTP/1.1\r\n\r\n").await;
    assert_eq!(st, 411);
    let (st, _) = raw_http(a, ip, b"GET /nope HTTP/1.1\r\n\r\n").await;
    assert_eq!(st, 404);
    let (st, body) = raw_http(a, ip, b"\x16\x03\x01\x02\x00garbage").await;
    assert_eq!(
        (st, json(&body)["kind"].clone()),
        (400, "unknown_protocol".into())
    );
    let (st, _) = raw_http(a, ip, b"GET /health HTTP/1.1\r\n\r\n").await;
    assert_eq!(st, 200);
    let (_, metrics) = raw_http(a, ip, b"GET /metrics HTTP/1.1\r\n\r\n").await;
    assert!(
        metrics.contains("burrow_relay_errors_total{kind=\"bad_json\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("burrow_relay_errors_total{kind=\"unknown_protocol\"} 1"),
        "{metrics}"
    );
    clean_transfer_still_works(&a.to_string()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_ip_cannot_join() {
    let r = relay_with(|_| {}).await;
    let a = r.addr();
    let (st, _) = raw_http(
        a,
        [127, 0, 0, 2],
        &post("/join", r#"{"role":"sender","channel":"31"}"#),
    )
    .await;
    assert_eq!(st, 200);
    let (st, _) = raw_http(
        a,
        [127, 0, 0, 3],
        &post("/join", r#"{"role":"recipient","channel":"31"}"#),
    )
    .await;
    assert_eq!(st, 200);
    for role in ["recipient", "sender"] {
        let (st, body) = raw_http(
            a,
            [127, 0, 0, 4],
            &post("/join", &format!(r#"{{"role":"{role}","channel":"31"}}"#)),
        )
        .await;
        assert_eq!(st, 403, "{body}");
        assert_eq!(json(&body)["kind"], "full");
        assert!(json(&body)["error"].as_str().unwrap().contains("full"));
    }
    // Even the role check comes second: a known IP gets role_taken, a new one full.
    let (st, body) = raw_http(
        a,
        [127, 0, 0, 2],
        &post("/join", r#"{"role":"recipient","channel":"31"}"#),
    )
    .await;
    assert_eq!((st, json(&body)["kind"].clone()), (409, "role_taken".into()));
    clean_transfer_still_works(&a.to_string()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_slow_bytes_on_the_stapling_path() {
    let r = relay_with(|c| c.handshake_timeout = Duration::from_millis(300)).await;
    let a = r.addr();
    // A malformed hello is refused with a reason.
    let mut s = tokio::net::TcpStream::connect(a).await.unwrap();
    s.write_all(b"BRWS\x09garbage").await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    assert_eq!(out[0], 0xff);
    assert!(String::from_utf8_lossy(&out).contains("malformed hello"));
    // A well-formed hello for a channel that does not exist.
    let mut s = tokio::net::TcpStream::connect(a).await.unwrap();
    s.write_all(b"BRWS\x01\x0299").await.unwrap();
    s.write_all(&[0u8; 16]).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    assert!(String::from_utf8_lossy(&out).contains("no channel 99"));
    // Slow bytes: a hello that never finishes is cut off after the handshake timeout.
    let mut s = tokio::net::TcpStream::connect(a).await.unwrap();
    s.write_all(b"BRWS\x01").await.unwrap();
    let mut out = Vec::new();
    let t = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(3));
    assert!(String::from_utf8_lossy(&out).contains("in time"));
    // A connection that says nothing at all.
    let mut s = tokio::net::TcpStream::connect(a).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    // Half an HTTP request, then silence.
    let mut s = tokio::net::TcpStream::connect(a).await.unwrap();
    s.write_all(b"POST /join HTTP/1.1\r\nContent-Le").await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 408"));
    clean_transfer_still_works(&a.to_string()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_wait_for_a_change_and_only_when_asked() {
    let r = relay_with(|_| {}).await;
    let a = r.addr();
    let ip = [127, 0, 0, 1];
    let (_, body) = raw_http(a, ip, &post("/join", r#"{"role":"sender","channel":"55"}"#)).await;
    let uuid = json(&body)["uuid"].as_str().unwrap().to_owned();
    let read = |extra: &str| format!(r#"{{"channel":"55","uuid":"{uuid}"{extra}}}"#);
    let (_, body) = raw_http(a, ip, &post("/channel", &read(""))).await;
    let v = json(&body)["version"].as_u64().unwrap();
    // Without `seen`, wait_ms does not delay the answer.
    let t = std::time::Instant::now();
    raw_http(a, ip, &post("/channel", &read(r#","wait_ms":3000"#))).await;
    assert!(t.elapsed() < Duration::from_millis(1500));
    // With `seen` = current and no change: answers after wait_ms.
    let t = std::time::Instant::now();
    let (_, body) = raw_http(
        a,
        ip,
        &post("/channel", &read(&format!(r#","wait_ms":400,"seen":{v}"#))),
    )
    .await;
    assert!(t.elapsed() >= Duration::from_millis(350));
    assert_eq!(json(&body)["version"].as_u64(), Some(v));
    // With `seen` = current: a change (the recipient joins) answers at once.
    let waiter = {
        let q = post("/channel", &read(&format!(r#","wait_ms":10000,"seen":{v}"#)));
        tokio::spawn(async move { raw_http(a, ip, &q).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = std::time::Instant::now();
    raw_http(
        a,
        [127, 0, 0, 2],
        &post("/join", r#"{"role":"recipient","channel":"55"}"#),
    )
    .await;
    let (_, body) = waiter.await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(json(&body)["recipient"], true);
    assert!(json(&body)["version"].as_u64().unwrap() > v);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_stapling_connection_is_refused_after_the_staple_timeout() {
    let r = relay_with(|c| c.staple_timeout = Duration::from_millis(400)).await;
    let a = r.addr();
    let hello = confirmed_channel(a, "66").await;
    let mut c = tokio::net::TcpStream::connect(a).await.unwrap();
    c.write_all(&hello).await.unwrap();
    let mut out = Vec::new();
    let t = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert!(t.elapsed() >= Duration::from_millis(350));
    assert_eq!(out[0], 0x01, "first Waiting");
    assert_eq!(out[1], 0xff, "then Refused");
    assert!(String::from_utf8_lossy(&out).contains("did not connect in time"));
    clean_transfer_still_works(&a.to_string()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stapling_peer_that_hangs_up_can_come_back() {
    let r = relay_with(|_| {}).await;
    let a = r.addr();
    let hello = confirmed_channel(a, "67").await;
    for attempt in 0..2 {
        let mut c = tokio::net::TcpStream::connect(a).await.unwrap();
        c.write_all(&hello).await.unwrap();
        let mut b = [0u8; 1];
        c.read_exact(&mut b).await.unwrap();
        assert_eq!(b[0], 0x01, "attempt {attempt}: expected Waiting, not a refusal");
        drop(c); // hang up while waiting
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Walks channel `ch` through join, x, y + hh_k and h_k by hand (so stapling
/// is allowed) and returns the sender's stapling hello.
async fn confirmed_channel(a: std::net::SocketAddr, ch: &str) -> Vec<u8> {
    let ip = [127, 0, 0, 1];
    let join = |role: &str| post("/join", &format!(r#"{{"role":"{role}","channel":"{ch}"}}"#));
    let (_, s) = raw_http(a, ip, &join("sender")).await;
    let su = json(&s)["uuid"].as_str().unwrap().to_owned();
    let (_, r) = raw_http(a, ip, &join("recipient")).await;
    let ru = json(&r)["uuid"].as_str().unwrap().to_owned();
    let step = |uuid: &str, extra: String| {
        post(
            "/channel",
            &format!(r#"{{"channel":"{ch}","uuid":"{uuid}",{extra}}}"#),
        )
    };
    let x = format!(r#""x":"{}""#, "aa".repeat(33));
    assert_eq!(raw_http(a, ip, &step(&su, x)).await.0, 200);
    let yh = format!(r#""y":"{}","hh_k":"{}""#, "bb".repeat(33), "cc".repeat(32));
    assert_eq!(raw_http(a, ip, &step(&ru, yh)).await.0, 200);
    let hk = format!(r#""h_k":"{}""#, "dd".repeat(32));
    assert_eq!(raw_http(a, ip, &step(&su, hk)).await.0, 200);
    let mut hello = b"BRWS\x01".to_vec();
    hello.push(ch.len() as u8);
    hello.extend_from_slice(ch.as_bytes());
    hello.extend((0..16).map(|i| u8::from_str_radix(&su[2 * i..2 * i + 2], 16).unwrap()));
    hello
}

/// Issue 14, 1: one address floods hellos that wait (lobby servers here:
/// six bytes each, then silence). It keeps only its share of the slots;
/// the rest are refused at once, and everyone else is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_connection_slot() {
    let r = relay_with(|c| {
        c.max_connections = 64;
        c.max_per_ip = 16;
    })
    .await;
    let a = r.addr();
    let mut flood = Vec::new();
    for _ in 0..200 {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
            .unwrap();
        let mut s = sock.connect(a).await.unwrap();
        let _ = s.write_all(b"000001").await;
        flood.push(s);
    }
    // Refused ones are closed within a second; the share stays open (and
    // may have been answered as lobby servers).
    let mut open = 0;
    for s in &mut flood {
        let mut b = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(1500), s.read(&mut b)).await {
            Ok(Ok(0) | Err(_)) => {}
            _ => open += 1,
        }
    }
    assert_eq!(open, 16, "the flooding address holds exactly its share");
    // The flooding address is told why when it asks over HTTP.
    let (st, body) = raw_http(a, [127, 0, 0, 1], b"GET /health HTTP/1.1\r\n\r\n").await;
    assert_eq!(st, 503, "{body}");
    assert!(body.contains("too many connections from your address"), "{body}");
    // Others: /health, and a whole transfer, while the flood holds on.
    let (st, _) = raw_http(a, [127, 0, 0, 2], b"GET /health HTTP/1.1\r\n\r\n").await;
    assert_eq!(st, 200);
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("ok.txt"), b"served beside a flood").unwrap();
    let from = Some("127.0.0.3".parse().unwrap());
    let (s, r2) = round_trip_from(&a.to_string(), from, &src.path().join("ok.txt"), dst.path()).await;
    s.unwrap();
    r2.unwrap();
    assert_eq!(
        std::fs::read(dst.path().join("ok.txt")).unwrap(),
        b"served beside a flood"
    );
    let (_, metrics) = raw_http(a, [127, 0, 0, 2], b"GET /metrics HTTP/1.1\r\n\r\n").await;
    assert!(
        metrics.contains("burrow_relay_errors_total{kind=\"per_ip\"}"),
        "{metrics}"
    );
    drop(flood);
}

/// Issue 14, 13: a relay at capacity answers why, and the client asks
/// again a little later instead of failing at once: an address that holds
/// its whole share for a moment still gets its transfer through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_waits_out_a_moment_at_capacity() {
    let r = relay_with(|c| {
        c.max_per_ip = 4;
    })
    .await;
    let a = r.addr();
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(tokio::net::TcpStream::connect(a).await.unwrap());
    }
    // Let go of the slots a second from now.
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        drop(held);
    });
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("ok.txt"), b"after the crowd").unwrap();
    let (s, r2) = round_trip(&a.to_string(), &src.path().join("ok.txt"), dst.path()).await;
    s.unwrap();
    r2.unwrap();
    assert_eq!(
        std::fs::read(dst.path().join("ok.txt")).unwrap(),
        b"after the crowd"
    );
}

/// One attacking connection, again and again until `stop`: a slowloris
/// (an HTTP request trickled a header line a second, never finished) or an
/// idle one (connects, says nothing, reconnects when closed).
async fn attacker(relay: std::net::SocketAddr, from: [u8; 4], slow: bool, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(std::net::SocketAddr::from((from, 0))).unwrap();
        let Ok(mut s) = sock.connect(relay).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if slow {
            let mut line: &[u8] = b"POST /join HTTP/1.1\r\n";
            while !stop.load(Ordering::Relaxed) && s.write_all(line).await.is_ok() {
                line = b"X-Slow: yes\r\n";
                let mut b = [0u8; 256];
                // Closed (or answered) while trickling: reconnect.
                if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), s.read(&mut b)).await {
                    break;
                }
            }
        } else {
            let mut b = [0u8; 256];
            let _ = tokio::time::timeout(Duration::from_secs(30), s.read(&mut b)).await;
        }
        // Reconnect at once, as an attacker would (a little later, so the
        // test does not spin two cores).
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Issue 14, 9: slowloris and idle reconnecting connections from forty
/// addresses want two and a half times the relay's slots (each address
/// within its share). Before, every newcomer was refused at capacity (so
/// `/health` answered 503 and transfers failed); now a full relay makes
/// room from the biggest holder's greeting connections, so everyone else
/// is served at once while the flood goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_floods_leave_room_for_everyone_else() {
    let r = relay_with(|c| {
        c.max_connections = 256;
    })
    .await;
    let a = r.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let mut flood = Vec::new();
    for host in 1..=40u8 {
        for k in 0..16 {
            flood.push(tokio::spawn(attacker(a, [127, 0, 9, host], k < 8, stop.clone())));
        }
    }
    // Let the flood fill the relay, and its connections grow old.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, metrics) = raw_http(a, [127, 0, 0, 2], b"GET /metrics HTTP/1.1\r\n\r\n").await;
    assert!(
        metrics.contains("burrow_relay_errors_total{kind=\"capacity\"}"),
        "the flood filled the relay: {metrics}"
    );
    for i in 0..20 {
        let (st, body) = raw_http(a, [127, 0, 0, 2], b"GET /health HTTP/1.1\r\n\r\n").await;
        assert_eq!(st, 200, "probe {i} beside the flood: {body}");
    }
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("ok.txt"), b"served beside slowloris").unwrap();
    let from = Some("127.0.0.3".parse().unwrap());
    let (s, r2) = tokio::time::timeout(
        Duration::from_secs(30),
        round_trip_from(&a.to_string(), from, &src.path().join("ok.txt"), dst.path()),
    )
    .await
    .expect("the transfer finished beside the flood");
    s.unwrap();
    r2.unwrap();
    assert_eq!(
        std::fs::read(dst.path().join("ok.txt")).unwrap(),
        b"served beside slowloris"
    );
    let (_, metrics) = raw_http(a, [127, 0, 0, 2], b"GET /metrics HTTP/1.1\r\n\r\n").await;
    assert!(
        metrics.contains("burrow_relay_errors_total{kind=\"evicted_biggest\"}"),
        "{metrics}"
    );
    stop.store(true, Ordering::Relaxed);
    for f in flood {
        f.abort();
    }
}
