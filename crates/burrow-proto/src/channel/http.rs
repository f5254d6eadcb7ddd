//! The HTTP/1.1 subset of the relay API, sans-IO: request heads as the relay
//! reads them, whole responses as a peer reads them.
//!
//! One request per connection, a `Content-Length` body of at most
//! [`MAX_BODY`] bytes, heads of at most [`MAX_HEAD`] bytes, no chunked
//! bodies, no pipelining. Both parsers are total and fuzzed.

use crate::channel::api::MAX_BODY;

/// Largest request head (request line + headers).
pub const MAX_HEAD: usize = 8 * 1024;
/// Most headers parsed.
pub const MAX_HEADERS: usize = 32;
/// Largest response a peer reads.
pub const MAX_RESPONSE: usize = 64 * 1024;

/// Why a head was refused; each maps to an HTTP status on the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeadError {
    /// Not valid HTTP/1.x.
    #[error("malformed HTTP")]
    Malformed,
    /// The head is larger than [`MAX_HEAD`].
    #[error("request head too large")]
    HeadTooLarge,
    /// The declared body is larger than [`MAX_BODY`].
    #[error("request body too large (max {MAX_BODY} bytes)")]
    BodyTooLarge,
    /// A POST without Content-Length, or a chunked body.
    #[error("a Content-Length body is required (chunked bodies are not supported)")]
    LengthRequired,
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path without its query string.
    pub path: String,
    /// Declared body length (≤ [`MAX_BODY`]).
    pub content_length: usize,
    /// Bytes of `buf` the head took; the body follows.
    pub head_len: usize,
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Parses a request head from the start of `buf`; `Ok(None)` means "need more bytes".
pub fn parse_request_head(buf: &[u8]) -> Result<Option<RequestHead>, HeadError> {
    parse_request_head_limited(buf, MAX_BODY)
}

/// [`parse_request_head`] for a server whose bodies may be up to
/// `max_body` bytes (the onion directory takes votes of megabytes).
pub fn parse_request_head_limited(buf: &[u8], max_body: usize) -> Result<Option<RequestHead>, HeadError> {
    let Some(head_len) = find_head_end(&buf[..buf.len().min(MAX_HEAD + 4)]) else {
        return if buf.len() >= MAX_HEAD {
            Err(HeadError::HeadTooLarge)
        } else {
            Ok(None)
        };
    };
    if head_len > MAX_HEAD {
        return Err(HeadError::HeadTooLarge);
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(&buf[..head_len]) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(HeadError::Malformed),
    }
    let method = req.method.ok_or(HeadError::Malformed)?.to_owned();
    let target = req.path.ok_or(HeadError::Malformed)?;
    let path = target.split('?').next().unwrap_or_default().to_owned();
    let mut content_length: Option<usize> = None;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HeadError::LengthRequired);
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value).map_err(|_| HeadError::Malformed)?;
            let n: usize = v.trim().parse().map_err(|_| HeadError::Malformed)?;
            if content_length.is_some_and(|old| old != n) {
                return Err(HeadError::Malformed);
            }
            content_length = Some(n);
        }
    }
    let content_length = match (method.as_str(), content_length) {
        (_, Some(n)) => n,
        ("POST", None) => return Err(HeadError::LengthRequired),
        (_, None) => 0,
    };
    if content_length > max_body {
        return Err(HeadError::BodyTooLarge);
    }
    Ok(Some(RequestHead {
        method,
        path,
        content_length,
        head_len,
    }))
}

/// A whole response (read until the relay closed the connection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response<'a> {
    /// The status code.
    pub status: u16,
    /// Everything after the head.
    pub body: &'a [u8],
}

/// Parses a complete response.
pub fn parse_response(buf: &[u8]) -> Result<Response<'_>, HeadError> {
    parse_response_limited(buf, MAX_RESPONSE)
}

/// [`parse_response`] for responses of up to `max` bytes.
pub fn parse_response_limited(buf: &[u8], max: usize) -> Result<Response<'_>, HeadError> {
    if buf.len() > max {
        return Err(HeadError::BodyTooLarge);
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Response::new(&mut headers);
    let head = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return Err(HeadError::Malformed),
    };
    let status = r.code.ok_or(HeadError::Malformed)?;
    Ok(Response {
        status,
        body: &buf[head..],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_heads() {
        let r = parse_request_head(b"POST /join?x=1 HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}")
            .unwrap()
            .unwrap();
        assert_eq!(
            (r.method.as_str(), r.path.as_str(), r.content_length),
            ("POST", "/join", 2)
        );
        assert_eq!(r.head_len, 46);
        assert_eq!(parse_request_head(b"GET / HTTP/1.1\r\n"), Ok(None));
        assert_eq!(
            parse_request_head(b"POST /join HTTP/1.1\r\n\r\n"),
            Err(HeadError::LengthRequired)
        );
        assert_eq!(
            parse_request_head(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(HeadError::LengthRequired)
        );
        assert_eq!(
            parse_request_head(b"POST / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n"),
            Err(HeadError::BodyTooLarge)
        );
        assert_eq!(
            parse_request_head(b"\x00\x01garbage\r\n\r\n"),
            Err(HeadError::Malformed)
        );
        assert_eq!(
            parse_request_head(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Err(HeadError::Malformed)
        );
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(parse_request_head(big.as_bytes()), Err(HeadError::HeadTooLarge));
        assert_eq!(
            parse_request_head(&vec![b'a'; MAX_HEAD]),
            Err(HeadError::HeadTooLarge)
        );
    }

    #[test]
    fn responses() {
        let r = parse_response(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\n{}").unwrap();
        assert_eq!((r.status, r.body), (403, &b"{}"[..]));
        assert_eq!(parse_response(b"SSH-2.0-OpenSSH\r\n"), Err(HeadError::Malformed));
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\n"), Err(HeadError::Malformed));
    }
}
