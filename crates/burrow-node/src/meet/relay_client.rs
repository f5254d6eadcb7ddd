//! Talking to a relay: the JSON API over HTTP/1.1 and the stapling connection.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use burrow_proto::channel::api::{ChannelRequest, ChannelState, ErrorBody, JoinRequest, JoinResponse};
use burrow_proto::staple::{StapleHello, StapleReply, TokenHello};

use crate::error::Error;

/// A relay at capacity is asked again this many times, after this pause,
/// doubled each time (0.5 + 1 + 2 s in all).
const CAPACITY_RETRIES: u32 = 3;
const CAPACITY_RETRY: Duration = Duration::from_millis(500);
/// The relay's default port.
pub const DEFAULT_PORT: u16 = 9009;
use burrow_proto::channel::http::MAX_RESPONSE;
/// Deadline for one short API call.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// A relay address as the user gave it, `HOST[:PORT]`.
#[derive(Debug, Clone)]
pub struct RelayClient {
    addr: String,
    bind: Option<IpAddr>,
}

/// Adds the default port to `HOST` if none is given.
pub fn normalize_addr(addr: &str) -> String {
    let a = addr.trim();
    let a = a.strip_prefix("tcp://").unwrap_or(a);
    if a.parse::<SocketAddr>().is_ok() {
        return a.to_owned();
    }
    if a.starts_with('[') {
        return if a.contains("]:") {
            a.to_owned()
        } else {
            format!("{a}:{DEFAULT_PORT}")
        };
    }
    if a.parse::<IpAddr>().is_ok_and(|ip| ip.is_ipv6()) {
        return format!("[{a}]:{DEFAULT_PORT}");
    }
    match a.rsplit_once(':') {
        Some((_, port)) if port.parse::<u16>().is_ok() => a.to_owned(),
        _ => format!("{a}:{DEFAULT_PORT}"),
    }
}

impl RelayClient {
    /// A client for `addr` (`HOST[:PORT]`).
    pub fn new(addr: &str) -> Self {
        Self {
            addr: normalize_addr(addr),
            bind: None,
        }
    }

    /// Uses `ip` as the local address of every connection (tests bind to 127.0.0.x).
    pub fn bind(mut self, ip: Option<IpAddr>) -> Self {
        self.bind = ip;
        self
    }

    /// The normalised address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub(crate) async fn connect(&self) -> Result<TcpStream, Error> {
        let unreachable = |source| Error::RelayUnreachable {
            addr: self.addr.clone(),
            source,
        };
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&self.addr)
            .await
            .map_err(unreachable)?
            .collect();
        let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "the name resolved to no address");
        for a in addrs {
            let sock = if a.is_ipv4() {
                TcpSocket::new_v4()
            } else {
                TcpSocket::new_v6()
            }
            .map_err(unreachable)?;
            if let Some(ip) = self.bind {
                sock.bind(SocketAddr::new(ip, 0)).map_err(unreachable)?;
            }
            match tokio::time::timeout(Duration::from_secs(10), sock.connect(a)).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Ok(Err(e)) => last = e,
                Err(_) => last = std::io::Error::new(std::io::ErrorKind::TimedOut, "connection timed out"),
            }
        }
        Err(unreachable(last))
    }

    /// One API call: POST `path` with a JSON body, parse the JSON answer.
    /// A relay at capacity (HTTP 503, `capacity`: full, or this address holds
    /// its share of connections) is asked again a few times, waiting a
    /// little longer each time, before its answer becomes the error.
    async fn post<Q: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &Q,
        wait: Duration,
    ) -> Result<R, Error> {
        let mut pause = CAPACITY_RETRY;
        for _ in 0..CAPACITY_RETRIES {
            match self.post_once(path, body, wait).await {
                Err(Error::Relay { kind, message }) if kind == "capacity" => {
                    tracing::warn!(
                        "the relay at {} is at capacity ({}); asking again in {:.1}s",
                        self.addr,
                        burrow_proto::transfer::escape_display(&message),
                        pause.as_secs_f32()
                    );
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                other => return other,
            }
        }
        self.post_once(path, body, wait).await
    }

    async fn post_once<Q: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &Q,
        wait: Duration,
    ) -> Result<R, Error> {
        let fut = async {
            let mut s = self.connect().await?;
            let json = serde_json::to_vec(body).map_err(|e| Error::RelayProtocol(e.to_string()))?;
            let head = format!(
                "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                self.addr,
                json.len()
            );
            let mut req = head.into_bytes();
            req.extend_from_slice(&json);
            s.write_all(&req).await.map_err(Error::ConnectionLost)?;
            let mut resp = Vec::new();
            (&mut s)
                .take(MAX_RESPONSE as u64 + 1)
                .read_to_end(&mut resp)
                .await
                .map_err(|e| Error::RelayProtocol(format!("reading the answer: {e}")))?;
            parse_response(&resp)
        };
        tokio::time::timeout(CALL_TIMEOUT + wait, fut)
            .await
            .map_err(|_| Error::Timeout(format!("the relay at {} did not answer", self.addr)))?
    }

    /// `POST /join`.
    pub async fn join(&self, req: &JoinRequest) -> Result<JoinResponse, Error> {
        self.post("/join", req, Duration::ZERO).await
    }

    /// `POST /channel`.
    pub async fn channel(&self, req: &ChannelRequest) -> Result<ChannelState, Error> {
        let wait = Duration::from_millis(req.wait_ms.unwrap_or(0));
        self.post("/channel", req, wait).await
    }

    /// Opens the stapling connection and waits until the relay staples it to
    /// the other peer (or `timeout` passes).
    pub async fn staple(&self, hello: &StapleHello, timeout: Duration) -> Result<TcpStream, Error> {
        let hello = hello.encode().map_err(|e| Error::Usage(e.to_string()))?;
        self.staple_raw(&hello, timeout).await
    }

    /// Reconnect stapling under a session-derived token (see [`TokenHello`]).
    pub async fn staple_token(&self, hello: &TokenHello, timeout: Duration) -> Result<TcpStream, Error> {
        self.staple_raw(&hello.encode(), timeout).await
    }

    /// A lobby pair's second connection (seed 003's secure room).
    pub async fn staple_identity(
        &self,
        hello: &burrow_proto::staple::IdentityHello,
        timeout: Duration,
    ) -> Result<TcpStream, Error> {
        let hello = hello.encode().map_err(|e| Error::RelayProtocol(e.to_string()))?;
        self.staple_raw(&hello, timeout).await
    }

    async fn staple_raw(&self, hello: &[u8], timeout: Duration) -> Result<TcpStream, Error> {
        let mut s = self.connect().await?;
        s.write_all(hello).await.map_err(Error::ConnectionLost)?;
        let fut = async {
            let mut buf = Vec::new();
            loop {
                match StapleReply::decode(&buf) {
                    Ok(Some((StapleReply::Stapled, n))) => {
                        if n != buf.len() {
                            return Err(Error::RelayProtocol("bytes after the staple reply".into()));
                        }
                        return Ok(());
                    }
                    Ok(Some((StapleReply::Waiting, n))) => {
                        buf.drain(..n);
                        continue;
                    }
                    Ok(Some((StapleReply::Refused(reason), _))) => {
                        return Err(Error::Relay {
                            kind: "staple".into(),
                            message: burrow_proto::transfer::escape_display(&reason),
                        });
                    }
                    Ok(None) => {}
                    Err(e) => return Err(Error::RelayProtocol(e.to_string())),
                }
                // Read one byte at a time: nothing after the reply may be consumed here.
                let mut b = [0u8; 1];
                let n = s.read(&mut b).await.map_err(Error::ConnectionLost)?;
                if n == 0 {
                    return Err(Error::RelayProtocol(
                        "the relay closed the stapling connection".into(),
                    ));
                }
                buf.push(b[0]);
                if buf.len() > 1024 {
                    return Err(Error::RelayProtocol("over-long staple reply".into()));
                }
            }
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| Error::Timeout("the other side did not connect to the relay".into()))??;
        Ok(s)
    }
}

fn parse_response<R: DeserializeOwned>(resp: &[u8]) -> Result<R, Error> {
    let r = burrow_proto::channel::http::parse_response(resp)
        .map_err(|_| Error::RelayProtocol("not an HTTP answer (is this a burrow relay?)".into()))?;
    if r.status == 200 {
        serde_json::from_slice(r.body).map_err(|e| Error::RelayProtocol(format!("bad JSON: {e}")))
    } else {
        match serde_json::from_slice::<ErrorBody>(r.body) {
            Ok(e) => Err(Error::Relay {
                kind: e.kind,
                message: burrow_proto::transfer::escape_display(&e.error),
            }),
            Err(_) => Err(Error::RelayProtocol(format!("HTTP status {}", r.status))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_get_the_default_port() {
        assert_eq!(normalize_addr("relay.example"), "relay.example:9009");
        assert_eq!(normalize_addr("relay.example:443"), "relay.example:443");
        assert_eq!(normalize_addr("127.0.0.1"), "127.0.0.1:9009");
        assert_eq!(normalize_addr("::1"), "[::1]:9009");
        assert_eq!(normalize_addr("[::1]:7"), "[::1]:7");
        assert_eq!(normalize_addr("tcp://h:1"), "h:1");
    }

    #[test]
    fn responses_are_parsed_strictly() {
        let ok: Result<JoinResponse, _> = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 27\r\n\r\n{\"channel\":\"1\",\"uuid\":\"ab\"}",
        );
        assert_eq!(ok.unwrap().channel, "1");
        let err: Result<JoinResponse, _> = parse_response(
            b"HTTP/1.1 403 Forbidden\r\n\r\n{\"error\":\"channel 1 is full\",\"kind\":\"full\"}",
        );
        assert!(matches!(err, Err(Error::Relay { kind, .. }) if kind == "full"));
        let junk: Result<JoinResponse, _> = parse_response(b"SSH-2.0-OpenSSH\r\n");
        assert!(matches!(junk, Err(Error::RelayProtocol(_))));
    }
}
