//! The local side of `burrow proxy`: SOCKS5 (RFC 1928, CONNECT, no
//! authentication, names resolved at the exit: socks5h) and HTTP CONNECT on
//! the same port, told apart by the first byte (0x05, or an HTTP method).
//!
//! ```text
//! greeting = 05 | n:u8 | n methods          → 05 00 (no auth) | 05 ff (no acceptable method)
//! request  = 05 | cmd:u8 (01 CONNECT) | 00 | atyp (01 v4 | 03 len name | 04 v6) | addr | port:u16
//! reply    = 05 | rep:u8 | 00 | 01 | 0.0.0.0 | 0     rep: 00 ok, 01 failure, 02 not allowed,
//!            03 network unreachable, 04 host unreachable, 05 refused, 06 TTL expired,
//!            07 command not supported, 08 address type not supported
//! http     = CONNECT host:port HTTP/1.1 ... CRLF CRLF → HTTP/1.1 200 Connection established
//! ```
//!
//! Decoders take what has arrived so far: `Ok(None)` means "need more bytes";
//! `Ok(Some((value, used)))` gives what the message took.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::channel::http::{HeadError, parse_request_head};
use crate::tunnel::mux::{Host, ResetReason};

/// SOCKS reply codes for refusals that happen before any stream exists.
pub const REP_COMMAND_NOT_SUPPORTED: u8 = 0x07;
/// The address type is not one of v4, name, v6.
pub const REP_ADDRESS_NOT_SUPPORTED: u8 = 0x08;
/// Generic failure.
pub const REP_FAILURE: u8 = 0x01;

/// A request the proxy cannot serve, with the reply code to send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SocksError {
    /// Not SOCKS version 5.
    #[error("not SOCKS5")]
    Version,
    /// The client offers no method we accept (we accept "no authentication").
    #[error("no acceptable authentication method")]
    NoMethod,
    /// BIND or UDP ASSOCIATE.
    #[error("only CONNECT is supported")]
    Command,
    /// Unknown address type, or an empty name.
    #[error("unsupported address type")]
    Address,
    /// A malformed HTTP CONNECT request.
    #[error("bad HTTP CONNECT request: {0}")]
    Http(String),
}

impl SocksError {
    /// The SOCKS reply code to send before closing.
    pub fn reply_code(&self) -> u8 {
        match self {
            SocksError::Command => REP_COMMAND_NOT_SUPPORTED,
            SocksError::Address => REP_ADDRESS_NOT_SUPPORTED,
            _ => REP_FAILURE,
        }
    }
}

/// What a client wants to reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host (a name is resolved by the exit).
    pub host: Host,
    /// Port.
    pub port: u16,
}

/// Partial decode result.
pub type Partial<T> = Result<Option<(T, usize)>, SocksError>;

/// Decodes the greeting; the value is the answer to send (`05 00`).
pub fn greeting(buf: &[u8]) -> Partial<[u8; 2]> {
    let Some(&v) = buf.first() else { return Ok(None) };
    if v != 5 {
        return Err(SocksError::Version);
    }
    let Some(&n) = buf.get(1) else { return Ok(None) };
    let end = 2 + usize::from(n);
    let Some(methods) = buf.get(2..end) else {
        return Ok(None);
    };
    if methods.contains(&0) {
        Ok(Some(([5, 0], end)))
    } else {
        Err(SocksError::NoMethod)
    }
}

/// Decodes a CONNECT request.
pub fn request(buf: &[u8]) -> Partial<Target> {
    if buf.len() < 4 {
        return Ok(None);
    }
    if buf[0] != 5 {
        return Err(SocksError::Version);
    }
    if buf[1] != 1 {
        return Err(SocksError::Command);
    }
    let (host, at) = match buf[3] {
        1 => match buf.get(4..8) {
            Some(b) => (Host::Ip(Ipv4Addr::new(b[0], b[1], b[2], b[3]).into()), 8),
            None => return Ok(None),
        },
        4 => match buf.get(4..20) {
            Some(b) => {
                let mut a = [0u8; 16];
                a.copy_from_slice(b);
                (Host::Ip(Ipv6Addr::from(a).into()), 20)
            }
            None => return Ok(None),
        },
        3 => {
            let Some(&n) = buf.get(4) else { return Ok(None) };
            let end = 5 + usize::from(n);
            let Some(name) = buf.get(5..end) else {
                return Ok(None);
            };
            if name.is_empty() || !name.iter().all(u8::is_ascii_graphic) {
                return Err(SocksError::Address);
            }
            (Host::Name(String::from_utf8_lossy(name).into_owned()), end)
        }
        _ => return Err(SocksError::Address),
    };
    let Some(p) = buf.get(at..at + 2) else {
        return Ok(None);
    };
    let port = u16::from_be_bytes([p[0], p[1]]);
    Ok(Some((Target { host, port }, at + 2)))
}

/// A SOCKS5 reply with code `rep` (bound address 0.0.0.0:0).
pub fn reply(rep: u8) -> [u8; 10] {
    [5, rep, 0, 1, 0, 0, 0, 0, 0, 0]
}

/// The SOCKS5 reply for a stream reset by the exit (or `None`: success).
pub fn reply_for(reset: Option<ResetReason>) -> [u8; 10] {
    reply(reset.map_or(0, ResetReason::socks_reply))
}

/// Splits `host:port` (with `[v6]:port`).
fn authority(s: &str) -> Option<Target> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    let host = match host.parse() {
        Ok(ip) => Host::Ip(ip),
        Err(_) if host.bytes().all(|b| b.is_ascii_graphic()) && host.len() <= 255 => {
            Host::Name(host.to_owned())
        }
        Err(_) => return None,
    };
    Some(Target { host, port })
}

/// Decodes an HTTP `CONNECT host:port` request head.
pub fn http_connect(buf: &[u8]) -> Partial<Target> {
    match parse_request_head(buf) {
        Ok(None) => Ok(None),
        Ok(Some(h)) => {
            if h.method != "CONNECT" {
                return Err(SocksError::Http(format!(
                    "only CONNECT is supported, not {}",
                    h.method.chars().take(16).collect::<String>()
                )));
            }
            let t =
                authority(&h.path).ok_or_else(|| SocksError::Http("the target is not host:port".into()))?;
            Ok(Some((t, h.head_len)))
        }
        Err(HeadError::HeadTooLarge) => Err(SocksError::Http("request head too large".into())),
        Err(e) => Err(SocksError::Http(e.to_string())),
    }
}

/// The HTTP answer to a CONNECT: 200, or the error that matches the reset.
pub fn http_reply(reset: Option<(ResetReason, &str)>) -> Vec<u8> {
    let (status, text) = match reset {
        None => return b"HTTP/1.1 200 Connection established\r\n\r\n".to_vec(),
        Some((ResetReason::NotAllowed, _)) => (403, "Forbidden"),
        Some((ResetReason::TimedOut, _)) => (504, "Gateway Timeout"),
        Some(_) => (502, "Bad Gateway"),
    };
    let msg: String = reset
        .map(|(_, m)| m.chars().filter(|c| !c.is_control()).take(200).collect())
        .unwrap_or_default();
    format!(
        "HTTP/1.1 {status} {text}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{msg}\n",
        msg.len() + 1
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socks5_connect_by_name_v4_and_v6() {
        assert_eq!(greeting(&[5, 2, 2, 0]).unwrap(), Some(([5, 0], 4)));
        assert_eq!(greeting(&[5, 2, 2]).unwrap(), None);
        assert_eq!(greeting(&[5, 1, 2]), Err(SocksError::NoMethod));
        assert_eq!(greeting(&[4, 1, 0]), Err(SocksError::Version));
        let mut r = vec![5, 1, 0, 3, 11];
        r.extend_from_slice(b"example.com");
        r.extend_from_slice(&443u16.to_be_bytes());
        assert_eq!(
            request(&r).unwrap(),
            Some((
                Target {
                    host: Host::Name("example.com".into()),
                    port: 443
                },
                r.len()
            ))
        );
        assert_eq!(request(&r[..r.len() - 1]).unwrap(), None);
        let v4 = [5, 1, 0, 1, 127, 0, 0, 1, 0, 80];
        assert_eq!(
            request(&v4).unwrap().unwrap().0.host,
            Host::Ip("127.0.0.1".parse().unwrap())
        );
        let mut v6 = vec![5, 1, 0, 4];
        v6.extend_from_slice(&[0; 15]);
        v6.extend_from_slice(&[1, 0, 22]);
        assert_eq!(request(&v6).unwrap().unwrap().0.port, 22);
        assert_eq!(request(&[5, 2, 0, 1]), Err(SocksError::Command));
        assert_eq!(request(&[5, 1, 0, 9]), Err(SocksError::Address));
        assert_eq!(request(&[5, 1, 0, 3, 0, 0, 80]), Err(SocksError::Address));
        assert_eq!(SocksError::Command.reply_code(), 7);
        assert_eq!(reply_for(Some(ResetReason::NotAllowed))[1], 2);
        assert_eq!(reply_for(None), [5, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn http_connect_parses_and_answers() {
        let req = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\nextra";
        let (t, n) = http_connect(req).unwrap().unwrap();
        assert_eq!(
            (t.host, t.port, &req[n..]),
            (Host::Name("example.com".into()), 443, &b"extra"[..])
        );
        let (t, _) = http_connect(b"CONNECT [::1]:8080 HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(t.host, Host::Ip("::1".parse().unwrap()));
        assert_eq!(
            http_connect(b"CONNECT example.com:443 HTTP/1.1\r\n").unwrap(),
            None
        );
        assert!(http_connect(b"GET / HTTP/1.1\r\n\r\n").is_err());
        assert!(http_connect(b"CONNECT example.com HTTP/1.1\r\n\r\n").is_err());
        assert!(http_reply(None).starts_with(b"HTTP/1.1 200 "));
        let r = String::from_utf8(http_reply(Some((ResetReason::NotAllowed, "private address")))).unwrap();
        assert!(
            r.starts_with("HTTP/1.1 403 ") && r.ends_with("private address\n"),
            "{r}"
        );
    }
}
