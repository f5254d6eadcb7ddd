//! The smallest HTTP/1.1 the relay needs: one request per connection, a
//! `Content-Length` body of at most [`MAX_BODY`](burrow_proto::channel::api::MAX_BODY)
//! bytes, a JSON or text answer, then close. Anything else is refused with a
//! clear status: no chunked bodies, no pipelining, bounded head size.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use burrow_proto::channel::api::ErrorBody;

pub use burrow_proto::channel::http::MAX_HEAD;
use burrow_proto::channel::http::{HeadError, parse_request_head};

/// A parsed request.
#[derive(Debug)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path without query string.
    pub path: String,
    /// The body.
    pub body: Vec<u8>,
}

/// Why a request could not be read; each maps to a status and a message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The head was refused (malformed, too large, no length).
    #[error("{0}")]
    Head(#[from] HeadError),
    /// Bytes after the body: one request per connection.
    #[error("malformed HTTP request: bytes after the body")]
    Pipelined,
    /// The peer closed the connection mid-request.
    #[error("connection closed mid-request")]
    Eof,
    /// An I/O error.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl HttpError {
    /// The status to answer with, if the connection can still be answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            HttpError::Head(HeadError::HeadTooLarge) => Some(431),
            HttpError::Head(HeadError::BodyTooLarge) => Some(413),
            HttpError::Head(HeadError::LengthRequired) => Some(411),
            HttpError::Head(_) | HttpError::Pipelined => Some(400),
            HttpError::Eof | HttpError::Io(_) => None,
        }
    }

    /// Stable kind for metrics and error bodies.
    pub fn kind(&self) -> &'static str {
        match self {
            HttpError::Head(HeadError::HeadTooLarge) => "head_too_large",
            HttpError::Head(HeadError::BodyTooLarge) => "body_too_large",
            HttpError::Head(HeadError::LengthRequired) => "length_required",
            HttpError::Head(_) | HttpError::Pipelined => "malformed_http",
            HttpError::Eof => "eof",
            HttpError::Io(_) => "io",
        }
    }
}

/// Reads one request. `buf` holds bytes already read (the sniffed prefix).
pub async fn read_request<S: AsyncRead + Unpin>(
    stream: &mut S,
    mut buf: Vec<u8>,
) -> Result<Request, HttpError> {
    let head = loop {
        match parse_request_head(&buf) {
            Ok(Some(h)) => break h,
            Ok(None) => {}
            Err(e) => return Err(HttpError::Head(e)),
        }
        let mut chunk = [0u8; 2048];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(HttpError::Eof);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let mut body = buf.split_off(head.head_len);
    if body.len() > head.content_length {
        // Pipelined bytes after the body: one request per connection.
        return Err(HttpError::Pipelined);
    }
    let have = body.len();
    body.resize(head.content_length, 0);
    match stream.read_exact(&mut body[have..]).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(HttpError::Eof),
        Err(e) => return Err(e.into()),
    }
    Ok(Request {
        method: head.method,
        path: head.path,
        body,
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Writes a whole response and flushes it.
pub async fn write_response<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n",
        reason(status),
        body.len()
    );
    let mut out = Vec::with_capacity(head.len() + body.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(body);
    stream.write_all(&out).await?;
    stream.flush().await
}

/// Writes a JSON error answer.
pub async fn write_error<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    kind: &str,
    message: &str,
) -> std::io::Result<()> {
    let body = ErrorBody {
        error: message.to_owned(),
        kind: kind.to_owned(),
    };
    let json = serde_json::to_vec(&body).unwrap_or_default();
    write_response(stream, status, "application/json", &json).await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> Result<Request, HttpError> {
        let mut s = bytes;
        read_request(&mut s, Vec::new()).await
    }

    #[tokio::test]
    async fn parses_and_limits() {
        let r = parse(b"POST /join?x=1 HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}")
            .await
            .unwrap();
        assert_eq!(
            (r.method.as_str(), r.path.as_str(), &r.body[..]),
            ("POST", "/join", &b"{}"[..])
        );
        assert!(matches!(
            parse(b"POST /join HTTP/1.1\r\n\r\n").await,
            Err(HttpError::Head(HeadError::LengthRequired))
        ));
        assert!(matches!(
            parse(b"POST /join HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").await,
            Err(HttpError::Head(HeadError::LengthRequired))
        ));
        assert!(matches!(
            parse(b"POST /join HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n").await,
            Err(HttpError::Head(HeadError::BodyTooLarge))
        ));
        assert!(matches!(
            parse(b"\x00\x01garbage\r\n\r\n").await,
            Err(HttpError::Head(HeadError::Malformed))
        ));
        assert!(matches!(parse(b"GET / HTTP/1.1\r\n").await, Err(HttpError::Eof)));
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert!(matches!(
            parse(big.as_bytes()).await,
            Err(HttpError::Head(HeadError::HeadTooLarge))
        ));
        assert!(matches!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab").await,
            Err(HttpError::Head(HeadError::Malformed))
        ));
    }
}
