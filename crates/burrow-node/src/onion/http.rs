//! The directory's HTTP/1.1: a client for one request per connection, and
//! the server's request reader. One request per connection, bodies by
//! Content-Length only, every size bounded.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use burrow_proto::channel::http::{RequestHead, parse_request_head_limited, parse_response_limited};

use crate::error::Error;

/// How long one directory request may take.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response read (a node list of every node at the longest descriptor).
pub(crate) const MAX_RESPONSE: usize = burrow_proto::onion::directory::MAX_LIST_LEN + 64 * 1024;

/// A response: status and body.
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

/// One request to `addr` (HOST:PORT): `body` for a POST.
pub(crate) async fn request(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<Reply, Error> {
    let go = async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| Error::RelayUnreachable {
                addr: addr.to_owned(),
                source: e,
            })?;
        let _ = s.set_nodelay(true);
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        if let Some(b) = body {
            req.push_str(&format!(
                "Content-Length: {}\r\nContent-Type: application/octet-stream\r\n",
                b.len()
            ));
        }
        req.push_str("\r\n");
        let mut out = req.into_bytes();
        if let Some(b) = body {
            out.extend_from_slice(b);
        }
        s.write_all(&out).await.map_err(Error::ConnectionLost)?;
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = s.read(&mut chunk).await.map_err(Error::ConnectionLost)?;
            if n == 0 {
                break;
            }
            if buf.len() + n > MAX_RESPONSE {
                return Err(Error::Protocol(format!(
                    "the directory at {addr} sent more than {MAX_RESPONSE} bytes"
                )));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let r = parse_response_limited(&buf, MAX_RESPONSE).map_err(|e| {
            Error::Protocol(format!(
                "the directory at {addr} answered something that is not HTTP: {e}"
            ))
        })?;
        Ok(Reply {
            status: r.status,
            body: r.body.to_vec(),
        })
    };
    tokio::time::timeout(REQUEST_TIMEOUT, go).await.map_err(|_| {
        Error::Timeout(format!(
            "the directory at {addr} did not answer {method} {path} in 5 s"
        ))
    })?
}

/// Reads one request (head ≤ 8 KiB, body ≤ `max_body`) within the time limit.
pub(crate) async fn read_request(
    s: &mut TcpStream,
    max_body: usize,
) -> Result<(RequestHead, Vec<u8>), String> {
    let go = async {
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 4096];
        let head = loop {
            let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed before a request".to_owned());
            }
            buf.extend_from_slice(&chunk[..n]);
            match parse_request_head_limited(&buf, max_body) {
                Ok(Some(h)) => break h,
                Ok(None) => {}
                Err(e) => return Err(e.to_string()),
            }
        };
        let total = head.head_len + head.content_length;
        while buf.len() < total {
            let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed inside the body".to_owned());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = buf[head.head_len..total].to_vec();
        Ok((head, body))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, go)
        .await
        .map_err(|_| "request timed out".to_owned())?
}

/// Writes a response and closes.
pub(crate) async fn respond(s: &mut TcpStream, status: u16, kind: &str, body: &[u8]) {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, s.write_all(&out)).await;
    let _ = s.shutdown().await;
}

/// An address as a peer's share key (IPv4, or an IPv6 /64).
pub(crate) fn share_of(a: SocketAddr) -> u128 {
    match a.ip() {
        std::net::IpAddr::V4(v4) => u128::from(u32::from(v4)),
        std::net::IpAddr::V6(v6) => u128::from(v6) >> 64 | 1 << 127,
    }
}
