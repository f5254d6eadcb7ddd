//! Streams multiplexed over one encrypted session, with per-stream flow
//! control, half-close and resets: the proxy ↔ exit tunnel (seed 000) now,
//! node tunnels (seed 002) and circuits (seed 004) later.
//!
//! One frame per session record:
//!
//! | type | name | body |
//! |---|---|---|
//! | 0x01 | Open | stream:u32, port:u16, host: kind:u8 (0 name: len:u8 + ASCII, 4: 4 bytes, 6: 16 bytes) |
//! | 0x02 | Opened | stream:u32 |
//! | 0x03 | Data | stream:u32, bytes (the rest, at most [`MAX_DATA`]) |
//! | 0x04 | Window | stream:u32, credit:u32 (more bytes the sender of this frame will take) |
//! | 0x05 | Fin | stream:u32 (no more data from this side; the other may go on) |
//! | 0x06 | Reset | stream:u32, reason:u8, message: len:u16 + UTF-8 (≤ 256 bytes) |
//!
//! Stream ids are chosen by the opener: odd from the client (proxy), even
//! from the server (exit), never reused within a session. Each side starts
//! with [`INITIAL_WINDOW`] bytes of credit per stream and grants more with
//! `Window` as its application consumes data; data beyond the credit is a
//! protocol error that ends the session, so memory per stream is bounded by
//! the window. A stream ends when both sides sent `Fin`, or at a `Reset`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::wire::{DecodeError, Reader, clip, put_bytes_u8, put_bytes_u16};

/// Bytes of credit each side grants each stream at the start (a quarter of
/// it is granted again at a time). Through a relay on a loaded machine the
/// time until a `Window` comes back is set by scheduling, not the network:
/// with 1 MiB the exit ran out of credit and the tunnel moved 30% less
/// (`docs/benchmarks.md`). Memory per stream stays bounded by it.
pub const INITIAL_WINDOW: u32 = 4 * 1024 * 1024;
/// Largest `Data` payload (fits one session record with its header).
pub const MAX_DATA: usize = crate::session::MAX_PLAINTEXT - 5;
/// Longest host name in `Open`.
pub const MAX_HOST: usize = 255;
/// Longest reset message.
pub const MAX_RESET_MESSAGE: usize = 256;
/// Default cap on streams open at once per session. With
/// [`INITIAL_WINDOW`] this bounds what a session can buffer for streams
/// whose local side does not read: 256 × 4 MiB = 1 GiB at the very worst
/// (before 4 MiB windows: 1024 × 1 MiB). A proxy asked for more answers
/// the client with a SOCKS failure; a peer that opens more breaks the rules.
pub const DEFAULT_MAX_STREAMS: usize = 256;

/// Where a stream should connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A name the exit resolves (socks5h semantics).
    Name(String),
    /// An address.
    Ip(IpAddr),
}

/// Why a stream was reset; maps onto SOCKS reply codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReason {
    /// The exit's policy refuses the destination (SOCKS 0x02).
    NotAllowed,
    /// No route / name did not resolve (SOCKS 0x04).
    HostUnreachable,
    /// The destination refused the connection (SOCKS 0x05).
    ConnectionRefused,
    /// The network is unreachable (SOCKS 0x03).
    NetworkUnreachable,
    /// Connecting timed out (SOCKS 0x06).
    TimedOut,
    /// Anything else (SOCKS 0x01).
    Failure,
    /// The stream was aborted by an application (an RST both ways).
    Aborted,
}

impl ResetReason {
    fn code(self) -> u8 {
        match self {
            ResetReason::NotAllowed => 1,
            ResetReason::HostUnreachable => 2,
            ResetReason::ConnectionRefused => 3,
            ResetReason::NetworkUnreachable => 4,
            ResetReason::TimedOut => 5,
            ResetReason::Failure => 6,
            ResetReason::Aborted => 7,
        }
    }

    fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            1 => ResetReason::NotAllowed,
            2 => ResetReason::HostUnreachable,
            3 => ResetReason::ConnectionRefused,
            4 => ResetReason::NetworkUnreachable,
            5 => ResetReason::TimedOut,
            6 => ResetReason::Failure,
            7 => ResetReason::Aborted,
            _ => return None,
        })
    }

    /// The SOCKS5 reply code for this reason.
    pub fn socks_reply(self) -> u8 {
        match self {
            ResetReason::NotAllowed => 0x02,
            ResetReason::NetworkUnreachable => 0x03,
            ResetReason::HostUnreachable => 0x04,
            ResetReason::ConnectionRefused => 0x05,
            ResetReason::TimedOut => 0x06,
            ResetReason::Failure | ResetReason::Aborted => 0x01,
        }
    }
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Open a stream to `host:port`.
    Open {
        /// Stream id.
        stream: u32,
        /// Destination host.
        host: Host,
        /// Destination port.
        port: u16,
    },
    /// The stream is connected.
    Opened {
        /// Stream id.
        stream: u32,
    },
    /// Stream bytes.
    Data {
        /// Stream id.
        stream: u32,
        /// The bytes.
        bytes: &'a [u8],
    },
    /// More credit for the other side.
    Window {
        /// Stream id.
        stream: u32,
        /// Extra bytes allowed.
        credit: u32,
    },
    /// Half-close.
    Fin {
        /// Stream id.
        stream: u32,
    },
    /// Abort, with a reason.
    Reset {
        /// Stream id.
        stream: u32,
        /// Why.
        reason: ResetReason,
        /// Details for the user.
        message: String,
    },
}

impl Frame<'_> {
    /// Appends the encoded frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Frame::Open { stream, host, port } => {
                out.push(0x01);
                out.extend_from_slice(&stream.to_be_bytes());
                out.extend_from_slice(&port.to_be_bytes());
                match host {
                    Host::Name(n) => {
                        out.push(0);
                        put_bytes_u8(out, clip(n, MAX_HOST).as_bytes());
                    }
                    Host::Ip(IpAddr::V4(a)) => {
                        out.push(4);
                        out.extend_from_slice(&a.octets());
                    }
                    Host::Ip(IpAddr::V6(a)) => {
                        out.push(6);
                        out.extend_from_slice(&a.octets());
                    }
                }
            }
            Frame::Opened { stream } => {
                out.push(0x02);
                out.extend_from_slice(&stream.to_be_bytes());
            }
            Frame::Data { stream, bytes } => {
                out.push(0x03);
                out.extend_from_slice(&stream.to_be_bytes());
                out.extend_from_slice(bytes);
            }
            Frame::Window { stream, credit } => {
                out.push(0x04);
                out.extend_from_slice(&stream.to_be_bytes());
                out.extend_from_slice(&credit.to_be_bytes());
            }
            Frame::Fin { stream } => {
                out.push(0x05);
                out.extend_from_slice(&stream.to_be_bytes());
            }
            Frame::Reset {
                stream,
                reason,
                message,
            } => {
                out.push(0x06);
                out.extend_from_slice(&stream.to_be_bytes());
                out.push(reason.code());
                put_bytes_u16(out, clip(message, MAX_RESET_MESSAGE).as_bytes());
            }
        }
    }

    /// Encodes into a fresh vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }
}

impl<'a> Frame<'a> {
    /// Decodes one whole frame. Total: never panics, allocates at most the host name.
    pub fn decode(buf: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let t = r.u8()?;
        let stream = r.u32()?;
        let f = match t {
            0x01 => {
                let port = r.u16()?;
                let host = match r.u8()? {
                    0 => {
                        let n = r.str_u8("host", MAX_HOST)?;
                        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_graphic()) {
                            return Err(DecodeError::Invalid {
                                what: "host",
                                reason: "empty or not printable ASCII",
                            });
                        }
                        Host::Name(n.to_owned())
                    }
                    4 => Host::Ip(Ipv4Addr::from(r.array::<4>()?).into()),
                    6 => Host::Ip(Ipv6Addr::from(r.array::<16>()?).into()),
                    k => {
                        return Err(DecodeError::Unknown {
                            what: "host kind",
                            value: k.into(),
                        });
                    }
                };
                Frame::Open { stream, host, port }
            }
            0x02 => Frame::Opened { stream },
            0x03 => {
                let bytes = r.rest();
                if bytes.len() > MAX_DATA {
                    return Err(DecodeError::TooLong {
                        what: "data",
                        len: bytes.len(),
                        max: MAX_DATA,
                    });
                }
                Frame::Data { stream, bytes }
            }
            0x04 => Frame::Window {
                stream,
                credit: r.u32()?,
            },
            0x05 => Frame::Fin { stream },
            0x06 => {
                let code = r.u8()?;
                let reason = ResetReason::from_code(code).ok_or(DecodeError::Unknown {
                    what: "reset reason",
                    value: code.into(),
                })?;
                Frame::Reset {
                    stream,
                    reason,
                    message: r.str_u16("message", MAX_RESET_MESSAGE)?.to_owned(),
                }
            }
            other => {
                return Err(DecodeError::Unknown {
                    what: "frame type",
                    value: other.into(),
                });
            }
        };
        r.finish()?;
        Ok(f)
    }
}

/// A protocol violation by the other side: the session must end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MuxError {
    /// A frame that does not decode.
    #[error("malformed frame: {0}")]
    Malformed(#[from] DecodeError),
    /// An `Open` with an id of the wrong parity, or one already used.
    #[error("bad stream id {0}")]
    BadId(u32),
    /// More streams than allowed.
    #[error("too many streams")]
    TooMany,
    /// Data beyond the credit granted.
    #[error("stream {0} sent more than its window")]
    Overrun(u32),
    /// Data after the peer's own `Fin`.
    #[error("stream {0} sent data after its end")]
    AfterFin(u32),
    /// Credit overflow.
    #[error("stream {0} window overflow")]
    WindowOverflow(u32),
    /// A local misuse (sending without credit, on a closed stream).
    #[error("cannot send on stream {0} now")]
    CannotSend(u32),
}

/// What a received frame means to the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<'a> {
    /// The peer asks for a stream (exit side).
    Open {
        /// Stream id.
        stream: u32,
        /// Destination host.
        host: Host,
        /// Destination port.
        port: u16,
    },
    /// Our stream was opened.
    Opened {
        /// Stream id.
        stream: u32,
    },
    /// Bytes for a stream; report them with [`Mux::consumed`] once delivered.
    Data {
        /// Stream id.
        stream: u32,
        /// The bytes.
        bytes: &'a [u8],
    },
    /// We may send more on this stream.
    Writable {
        /// Stream id.
        stream: u32,
    },
    /// The peer will send no more on this stream.
    Fin {
        /// Stream id.
        stream: u32,
    },
    /// The stream is gone.
    Reset {
        /// Stream id.
        stream: u32,
        /// Why.
        reason: ResetReason,
        /// Details.
        message: String,
    },
    /// Nothing to do (a frame for a stream already forgotten).
    Nothing,
}

#[derive(Debug)]
struct Stream {
    /// Bytes we may still send.
    credit: u64,
    /// Bytes the peer may still send.
    window: u64,
    /// Delivered to the application, not yet granted back.
    consumed: u64,
    sent_fin: bool,
    got_fin: bool,
}

/// The stream table of one side of a session, sans-IO.
#[derive(Debug)]
pub struct Mux {
    client: bool,
    next: u32,
    /// Highest id the peer has opened so far (ids only grow).
    peer_high: u32,
    max_streams: usize,
    streams: HashMap<u32, Stream>,
}

impl Mux {
    /// The proxy's side (opens odd ids) or the exit's (even).
    pub fn new(client: bool, max_streams: usize) -> Self {
        Self {
            client,
            next: if client { 1 } else { 2 },
            peer_high: 0,
            max_streams,
            streams: HashMap::new(),
        }
    }

    /// Streams open now.
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    /// Whether no stream is open.
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    fn fresh() -> Stream {
        Stream {
            credit: u64::from(INITIAL_WINDOW),
            window: u64::from(INITIAL_WINDOW),
            consumed: 0,
            sent_fin: false,
            got_fin: false,
        }
    }

    /// Opens a stream; returns its id and the `Open` frame.
    pub fn open(&mut self, host: Host, port: u16) -> Result<(u32, Vec<u8>), MuxError> {
        if self.streams.len() >= self.max_streams {
            return Err(MuxError::TooMany);
        }
        let stream = self.next;
        self.next = self.next.checked_add(2).ok_or(MuxError::TooMany)?;
        self.streams.insert(stream, Self::fresh());
        Ok((stream, Frame::Open { stream, host, port }.to_vec()))
    }

    /// How many bytes may be sent on `stream` now.
    pub fn credit(&self, stream: u32) -> usize {
        self.streams
            .get(&stream)
            .filter(|s| !s.sent_fin)
            .map_or(0, |s| s.credit.min(MAX_DATA as u64) as usize)
    }

    /// A `Data` frame for `bytes` (at most [`Mux::credit`]).
    pub fn data(&mut self, stream: u32, bytes: &[u8]) -> Result<Vec<u8>, MuxError> {
        let mut out = Vec::with_capacity(bytes.len() + 5);
        self.data_into(stream, bytes, &mut out)?;
        Ok(out)
    }

    /// Bytes before the data in a `Data` frame (type and stream id).
    pub const DATA_HEADER: usize = 5;

    /// A `Data` frame built in place: `frame` holds [`Mux::DATA_HEADER`]
    /// bytes of room and then the data; the header is written there (after
    /// the same checks as [`Mux::data`]), so the data is never copied.
    pub fn data_in_place(&mut self, stream: u32, frame: &mut [u8]) -> Result<(), MuxError> {
        let n = frame.len().saturating_sub(Self::DATA_HEADER);
        let s = self
            .streams
            .get_mut(&stream)
            .ok_or(MuxError::CannotSend(stream))?;
        if frame.len() < Self::DATA_HEADER || s.sent_fin || n as u64 > s.credit || n > MAX_DATA {
            return Err(MuxError::CannotSend(stream));
        }
        s.credit -= n as u64;
        frame[0] = 0x03;
        frame[1..Self::DATA_HEADER].copy_from_slice(&stream.to_be_bytes());
        Ok(())
    }

    /// Like [`Mux::data`], encoding into `out` (cleared first) so buffers can be reused.
    pub fn data_into(&mut self, stream: u32, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), MuxError> {
        let s = self
            .streams
            .get_mut(&stream)
            .ok_or(MuxError::CannotSend(stream))?;
        if s.sent_fin || bytes.len() as u64 > s.credit || bytes.len() > MAX_DATA {
            return Err(MuxError::CannotSend(stream));
        }
        s.credit -= bytes.len() as u64;
        out.clear();
        Frame::Data { stream, bytes }.encode(out);
        Ok(())
    }

    /// The application took `n` bytes of `stream`: grants them back (as one
    /// `Window` frame once a quarter of the window is consumed).
    pub fn consumed(&mut self, stream: u32, n: usize) -> Option<Vec<u8>> {
        let s = self.streams.get_mut(&stream)?;
        s.consumed += n as u64;
        if s.got_fin || s.consumed < u64::from(INITIAL_WINDOW / 4) {
            return None;
        }
        let credit = s.consumed.min(u64::from(u32::MAX)) as u32;
        s.consumed -= u64::from(credit);
        s.window += u64::from(credit);
        Some(Frame::Window { stream, credit }.to_vec())
    }

    /// Half-closes `stream` from our side.
    pub fn fin(&mut self, stream: u32) -> Option<Vec<u8>> {
        let s = self.streams.get_mut(&stream)?;
        if s.sent_fin {
            return None;
        }
        s.sent_fin = true;
        let done = s.got_fin;
        if done {
            self.streams.remove(&stream);
        }
        Some(Frame::Fin { stream }.to_vec())
    }

    /// Aborts `stream`, telling the peer why.
    pub fn reset(&mut self, stream: u32, reason: ResetReason, message: &str) -> Vec<u8> {
        self.streams.remove(&stream);
        Frame::Reset {
            stream,
            reason,
            message: message.to_owned(),
        }
        .to_vec()
    }

    /// The exit accepted an `Open`.
    pub fn opened(&self, stream: u32) -> Vec<u8> {
        Frame::Opened { stream }.to_vec()
    }

    /// Handles one received frame.
    pub fn handle<'a>(&mut self, record: &'a [u8]) -> Result<Event<'a>, MuxError> {
        match Frame::decode(record)? {
            Frame::Open { stream, host, port } => {
                let theirs = if self.client {
                    stream % 2 == 0
                } else {
                    stream % 2 == 1
                };
                if !theirs || stream <= self.peer_high {
                    return Err(MuxError::BadId(stream));
                }
                self.peer_high = stream;
                if self.streams.len() >= self.max_streams {
                    return Err(MuxError::TooMany);
                }
                self.streams.insert(stream, Self::fresh());
                Ok(Event::Open { stream, host, port })
            }
            Frame::Opened { stream } => Ok(if self.streams.contains_key(&stream) {
                Event::Opened { stream }
            } else {
                Event::Nothing
            }),
            Frame::Data { stream, bytes } => {
                let Some(s) = self.streams.get_mut(&stream) else {
                    // Reset by us a moment ago: drop it.
                    return Ok(Event::Nothing);
                };
                if s.got_fin {
                    return Err(MuxError::AfterFin(stream));
                }
                if bytes.len() as u64 > s.window {
                    return Err(MuxError::Overrun(stream));
                }
                s.window -= bytes.len() as u64;
                Ok(Event::Data { stream, bytes })
            }
            Frame::Window { stream, credit } => {
                let Some(s) = self.streams.get_mut(&stream) else {
                    return Ok(Event::Nothing);
                };
                s.credit = s
                    .credit
                    .checked_add(u64::from(credit))
                    .filter(|c| *c <= u64::from(u32::MAX))
                    .ok_or(MuxError::WindowOverflow(stream))?;
                Ok(Event::Writable { stream })
            }
            Frame::Fin { stream } => {
                let Some(s) = self.streams.get_mut(&stream) else {
                    return Ok(Event::Nothing);
                };
                s.got_fin = true;
                if s.sent_fin {
                    self.streams.remove(&stream);
                }
                Ok(Event::Fin { stream })
            }
            Frame::Reset {
                stream,
                reason,
                message,
            } => Ok(if self.streams.remove(&stream).is_some() {
                Event::Reset {
                    stream,
                    reason,
                    message,
                }
            } else {
                Event::Nothing
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bytes_are_exact() {
        let open = Frame::Open {
            stream: 1,
            host: Host::Name("example.com".into()),
            port: 443,
        };
        assert_eq!(
            hex::encode(open.to_vec()),
            "010000000101bb000b6578616d706c652e636f6d"
        );
        let v4 = Frame::Open {
            stream: 3,
            host: Host::Ip("127.0.0.1".parse().unwrap()),
            port: 80,
        };
        assert_eq!(hex::encode(v4.to_vec()), "01000000030050047f000001");
        assert_eq!(hex::encode(Frame::Opened { stream: 1 }.to_vec()), "0200000001");
        assert_eq!(
            hex::encode(
                Frame::Data {
                    stream: 1,
                    bytes: b"hi"
                }
                .to_vec()
            ),
            "03000000016869"
        );
        assert_eq!(
            hex::encode(
                Frame::Window {
                    stream: 1,
                    credit: 65536
                }
                .to_vec()
            ),
            "040000000100010000"
        );
        assert_eq!(hex::encode(Frame::Fin { stream: 1 }.to_vec()), "0500000001");
        let rst = Frame::Reset {
            stream: 1,
            reason: ResetReason::NotAllowed,
            message: "no".into(),
        };
        assert_eq!(hex::encode(rst.to_vec()), "06000000010100026e6f");
        for f in [open, v4, rst] {
            assert_eq!(Frame::decode(&f.to_vec()).unwrap(), f);
        }
        assert!(
            Frame::decode(&[0x01, 0, 0, 0, 1, 0, 80, 0, 0]).is_err(),
            "empty name"
        );
        assert!(
            Frame::decode(&[0x06, 0, 0, 0, 1, 9, 0, 0]).is_err(),
            "unknown reason"
        );
        assert!(Frame::decode(&[0x02, 0, 0, 0, 1, 0]).is_err(), "trailing byte");
        assert!(Frame::decode(&[0x09, 0, 0, 0, 1]).is_err());
    }

    #[test]
    fn data_in_place_is_data_and_spends_credit() {
        let (mut c, mut s) = (Mux::new(true, 8), Mux::new(false, 8));
        let (id, open) = c.open(Host::Name("h".into()), 1).unwrap();
        s.handle(&open).unwrap();
        c.handle(&s.opened(id)).unwrap();
        let mut frame = vec![0u8; Mux::DATA_HEADER + 3];
        frame[Mux::DATA_HEADER..].copy_from_slice(b"abc");
        c.data_in_place(id, &mut frame).unwrap();
        assert_eq!(
            frame,
            Frame::Data {
                stream: id,
                bytes: b"abc"
            }
            .to_vec()
        );
        assert_eq!(
            s.handle(&frame).unwrap(),
            Event::Data {
                stream: id,
                bytes: b"abc"
            }
        );
        // No room for the header, an unknown stream, more than a frame holds: refused.
        assert!(c.data_in_place(id, &mut [0u8; 2]).is_err());
        assert!(c.data_in_place(99, &mut frame).is_err());
        let mut huge = vec![0u8; Mux::DATA_HEADER + MAX_DATA + 1];
        assert!(c.data_in_place(id, &mut huge).is_err());
        // The window is spent like `data`'s: 1 MiB in all, then nothing.
        let mut sent = 3usize;
        while c.credit(id) > 0 {
            let mut f = vec![0u8; Mux::DATA_HEADER + c.credit(id)];
            c.data_in_place(id, &mut f).unwrap();
            sent += f.len() - Mux::DATA_HEADER;
        }
        assert_eq!(sent, INITIAL_WINDOW as usize);
        assert!(c.data_in_place(id, &mut frame).is_err());
    }

    #[test]
    fn flow_control_half_close_and_reset() {
        let (mut c, mut s) = (Mux::new(true, 8), Mux::new(false, 8));
        let (id, open) = c.open(Host::Name("h".into()), 1).unwrap();
        assert_eq!(id, 1);
        assert!(matches!(s.handle(&open).unwrap(), Event::Open { stream: 1, .. }));
        assert_eq!(c.handle(&s.opened(1)).unwrap(), Event::Opened { stream: 1 });
        // The client may send exactly its window.
        let chunk = vec![7u8; MAX_DATA];
        let mut sent = 0usize;
        while c.credit(1) > 0 {
            let n = c.credit(1);
            let f = c.data(1, &chunk[..n]).unwrap();
            assert!(matches!(s.handle(&f).unwrap(), Event::Data { .. }));
            sent += n;
        }
        assert_eq!(sent, INITIAL_WINDOW as usize);
        assert!(c.data(1, b"x").is_err());
        // A peer that ignores the window breaks the session.
        let mut s2 = Mux::new(false, 8);
        s2.handle(&open).unwrap();
        let big = Frame::Data {
            stream: 1,
            bytes: &chunk,
        }
        .to_vec();
        let mut res = Ok(Event::Nothing);
        for _ in 0..INITIAL_WINDOW as usize / MAX_DATA + 2 {
            res = s2.handle(&big);
            if res.is_err() {
                break;
            }
        }
        assert_eq!(res, Err(MuxError::Overrun(1)));
        // Consuming grants credit back.
        let w = s.consumed(1, INITIAL_WINDOW as usize).unwrap();
        assert_eq!(c.handle(&w).unwrap(), Event::Writable { stream: 1 });
        assert_eq!(c.credit(1), MAX_DATA.min(INITIAL_WINDOW as usize));
        // Half-close both ways ends the stream.
        let fin = c.fin(1).unwrap();
        assert!(c.data(1, b"x").is_err(), "no data after our Fin");
        assert_eq!(s.handle(&fin).unwrap(), Event::Fin { stream: 1 });
        let d = s.data(1, b"reply").unwrap();
        assert!(matches!(
            c.handle(&d).unwrap(),
            Event::Data { bytes: b"reply", .. }
        ));
        let fin2 = s.fin(1).unwrap();
        assert_eq!(c.handle(&fin2).unwrap(), Event::Fin { stream: 1 });
        assert!(c.is_empty() && s.is_empty());
        // A reset reaches the opener with its reason.
        let (id, open) = c.open(Host::Ip("10.0.0.1".parse().unwrap()), 80).unwrap();
        assert_eq!(id, 3);
        s.handle(&open).unwrap();
        let r = s.reset(3, ResetReason::NotAllowed, "private address");
        assert!(matches!(
            c.handle(&r).unwrap(),
            Event::Reset {
                reason: ResetReason::NotAllowed,
                ..
            }
        ));
        assert_eq!(ResetReason::NotAllowed.socks_reply(), 0x02);
    }

    #[test]
    fn ids_and_limits_are_enforced() {
        let mut s = Mux::new(false, 2);
        let open = |id| {
            Frame::Open {
                stream: id,
                host: Host::Name("h".into()),
                port: 1,
            }
            .to_vec()
        };
        assert_eq!(s.handle(&open(2)), Err(MuxError::BadId(2)), "the exit's parity");
        s.handle(&open(5)).unwrap();
        assert_eq!(s.handle(&open(3)), Err(MuxError::BadId(3)), "ids only grow");
        s.handle(&open(7)).unwrap();
        assert_eq!(s.handle(&open(9)), Err(MuxError::TooMany));
        let w = Frame::Window {
            stream: 5,
            credit: u32::MAX,
        }
        .to_vec();
        assert_eq!(s.handle(&w), Err(MuxError::WindowOverflow(5)));
    }

    proptest! {
        #[test]
        fn decode_and_handle_are_total(frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..10)) {
            let mut m = Mux::new(false, 4);
            for f in &frames {
                let _ = m.handle(f);
            }
            prop_assert!(m.len() <= 4);
        }
    }
}
