//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use burrow_node::{
    Code, Decision, Event, Observer, OfferInfo, ReceiveReport, SendReport, Sink, Source, Transfer,
};
use burrow_relay::{Relay, RelayConfig, RelayHandle};

/// Accepts every offer; forwards the code.
pub struct Auto {
    pub code_tx: Option<tokio::sync::oneshot::Sender<String>>,
}

impl Observer for Auto {
    fn event(&mut self, e: Event) {
        if let Event::Code(c) = e
            && let Some(tx) = self.code_tx.take()
        {
            let _ = tx.send(c);
        }
    }
    fn decide(&mut self, _: &OfferInfo) -> Decision {
        Decision::Accept
    }
}

pub async fn relay_with(cfg: impl FnOnce(&mut RelayConfig)) -> RelayHandle {
    let mut c = RelayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    };
    cfg(&mut c);
    Relay::bind(c).await.unwrap().spawn().unwrap()
}

pub fn transfer(addr: &str) -> Transfer {
    builder(addr).build().unwrap()
}

/// The settings of [`transfer`], to add to.
pub fn builder(addr: &str) -> burrow_node::TransferBuilder {
    Transfer::builder()
        .relay(addr)
        .step_timeout(Duration::from_secs(10))
        .idle_timeout(Duration::from_secs(10))
        // This machine has a real interface: only namespace tests may use direct paths.
        .relay_only(true)
        .reconnect_for(Duration::ZERO)
}

/// Sends `src` through `addr` and receives into `dst`; returns both results.
pub async fn round_trip(
    addr: &str,
    src: &Path,
    dst: &Path,
) -> (
    Result<SendReport, burrow_node::Error>,
    Result<ReceiveReport, burrow_node::Error>,
) {
    round_trip_from(addr, None, src, dst).await
}

/// [`round_trip`] with both sides' connections from `from` (a loopback
/// address of their own, e.g. 127.0.0.3).
pub async fn round_trip_from(
    addr: &str,
    from: Option<std::net::IpAddr>,
    src: &Path,
    dst: &Path,
) -> (
    Result<SendReport, burrow_node::Error>,
    Result<ReceiveReport, burrow_node::Error>,
) {
    let transfer = |addr: &str| match from {
        Some(ip) => builder(addr).bind_ip(ip).build().unwrap(),
        None => transfer(addr),
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let t = transfer(addr);
    let p = src.to_path_buf();
    let sender =
        tokio::spawn(async move { t.send(Source::Paths(vec![p]), Auto { code_tx: Some(tx) }).await });
    let code = tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .unwrap()
        .unwrap();
    let r = transfer(addr)
        .receive(
            &Code::parse(&code).unwrap(),
            Sink::Dir(dst.into()),
            Auto { code_tx: None },
        )
        .await;
    (sender.await.unwrap(), r)
}

/// One raw HTTP request from a chosen local IP; returns (status, body).
pub async fn raw_http(relay: SocketAddr, from: [u8; 4], request: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::from((from, 0))).unwrap();
    let mut s = sock.connect(relay).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("relay answered in time")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_owned())
        .unwrap_or_default();
    (status, body)
}

pub fn post(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}
