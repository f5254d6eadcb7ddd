//! Compression: what crosses the relay (its own byte counter) shrinks for
//! compressible data, never grows for incompressible data, and the received
//! files are identical either way.

mod common;

use std::time::Duration;

use burrow_node::{Code, Compress, Sink, Source, Transfer};
use common::*;

fn relayed(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("burrow_relay_bytes_relayed_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("bytes counter in /metrics")
}

async fn send_with(addr: std::net::SocketAddr, data: &[u8], mode: Compress) -> u64 {
    let (_, before) = raw_http(addr, [127, 0, 0, 1], b"GET /metrics HTTP/1.1\r\n\r\n").await;
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let file = src.path().join("data");
    std::fs::write(&file, data).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let t = Transfer::builder()
        .relay(addr.to_string())
        .compress(mode)
        .idle_timeout(Duration::from_secs(10))
        .relay_only(true)
        .build()
        .unwrap();
    let sender = tokio::spawn(async move {
        t.send(Source::Paths(vec![file]), Auto { code_tx: Some(tx) })
            .await
    });
    let code = rx.await.unwrap();
    transfer(&addr.to_string())
        .receive(
            &Code::parse(&code).unwrap(),
            Sink::Dir(dst.path().into()),
            Auto { code_tx: None },
        )
        .await
        .unwrap();
    sender.await.unwrap().unwrap();
    assert!(
        std::fs::read(dst.path().join("data")).unwrap() == data,
        "content differs"
    );
    let (_, after) = raw_http(addr, [127, 0, 0, 1], b"GET /metrics HTTP/1.1\r\n\r\n").await;
    relayed(&after) - relayed(&before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressible_data_shrinks_and_random_data_does_not_grow() {
    let r = relay_with(|_| {}).await;
    let text: Vec<u8> = (0..4_000_000u32)
        .flat_map(|i| format!("{i:08} INFO request served in {} ms\n", i % 97).into_bytes())
        .take(4 << 20)
        .collect();
    let mut random = vec![0u8; 4 << 20];
    blake3::Hasher::new()
        .update(b"noise")
        .finalize_xof()
        .fill(&mut random);

    let auto_text = send_with(r.addr(), &text, Compress::Auto).await;
    assert!(
        auto_text < (text.len() / 4) as u64,
        "auto sent {auto_text} bytes for a log file"
    );
    let never_text = send_with(r.addr(), &text, Compress::Never).await;
    assert!(never_text > text.len() as u64);
    let always_random = send_with(r.addr(), &random, Compress::Always).await;
    let auto_random = send_with(r.addr(), &random, Compress::Auto).await;
    // Random data goes as is: only record and handshake overhead (< 1%).
    for sent in [always_random, auto_random] {
        assert!(sent < random.len() as u64 * 101 / 100, "{sent}");
    }
}
