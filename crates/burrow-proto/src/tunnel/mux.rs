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
//! | 0x07 | Ping | stream:u32 = 0 (a keepalive: the link is alive; nothing to answer) |
//!
//! Stream ids are chosen by the opener: odd from the client (proxy), even
//! from the server (exit), never reused within a session. A stream ends
//! when both sides sent `Fin`, or at a `Reset`.
//!
//! **Flow control, bounded per session.** Each side may send
//! [`START_WINDOW`] bytes on a new stream before hearing anything, and
//! more as the other side grants it with `Window`; data beyond the credit
//! is a protocol error that ends the session. What a side has promised
//! (windows) or holds (received, not yet consumed by its application) is
//! drawn from one pool per session ([`Limits::pool`]): every stream keeps
//! [`START_WINDOW`] reserved so it can always make progress, and is topped
//! up towards [`TARGET_WINDOW`] while the pool has room. So the memory a
//! session can be made to hold is the pool, however many streams are
//! open; a stream the pool (or [`Limits::max_streams`]) cannot take is
//! refused with a `Reset`, and the session goes on.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::wire::{DecodeError, Reader, Writer};

/// Bytes of credit each side implicitly grants a stream when it opens
/// (until its first `Window`), and keeps reserved for it in the pool.
pub const START_WINDOW: u32 = 64 * 1024;
/// What a stream's window is topped up to while the pool has room (in
/// steps of a quarter). Through a relay on a loaded machine the time until
/// a `Window` comes back is set by scheduling, not the network: with 1 MiB
/// the exit ran out of credit and the tunnel moved 30% less
/// (`docs/benchmarks.md`).
pub const TARGET_WINDOW: u32 = 4 * 1024 * 1024;
/// Bytes a stream takes in before its window grows past [`START_WINDOW`]
/// (a stream that moves less never costs a `Window` frame).
const FIRST_GROWTH: u64 = 8 * 1024;
/// Largest `Data` payload (fits one session record with its header).
pub const MAX_DATA: usize = crate::session::MAX_PLAINTEXT - 5;
/// Longest host name in `Open`.
pub const MAX_HOST: usize = 255;
/// Longest reset message.
pub const MAX_RESET_MESSAGE: usize = 256;
/// What one side of a session may promise or hold, all streams together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of the session-wide pool (windows granted plus data held).
    pub pool: u64,
    /// Streams open at once (each also needs [`START_WINDOW`] of the pool).
    pub max_streams: usize,
}

impl Default for Limits {
    /// 64 MiB and 1,024 streams: sixteen streams at full speed, a
    /// thousand slow ones, and never more than 64 MiB held per session
    /// (before the pool: 256 streams × 4 MiB = 1 GiB at worst).
    fn default() -> Self {
        Self {
            pool: 64 * 1024 * 1024,
            max_streams: 1024,
        }
    }
}

/// Which ids a side opens streams with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The proxy's side: odd ids.
    Client,
    /// The exit's side: even ids.
    Server,
}

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
    /// A keepalive of the whole session (stream 0).
    Ping,
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
                        // Never another host: a name [`Mux::open`] refused
                        // as too long goes out empty, which no exit resolves.
                        let name = if n.len() <= MAX_HOST { n.as_bytes() } else { &[] };
                        out.push(name.len() as u8);
                        out.extend_from_slice(name);
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
            Frame::Ping => {
                out.push(0x07);
                out.extend_from_slice(&0u32.to_be_bytes());
            }
            Frame::Reset {
                stream,
                reason,
                message,
            } => {
                out.push(0x06);
                out.extend_from_slice(&stream.to_be_bytes());
                out.push(reason.code());
                Writer::new(out).text_u16(MAX_RESET_MESSAGE, message);
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
            0x07 if stream == 0 => Frame::Ping,
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
    /// No room for another stream (this side's limits): not a violation,
    /// the stream is simply not opened.
    #[error("too many streams open in this session")]
    Busy,
    /// A host name that does not fit `Open` (empty, or over [`MAX_HOST`]).
    #[error("host name empty or longer than {MAX_HOST} bytes")]
    BadHost,
    /// Stream ids ran out.
    #[error("stream ids exhausted")]
    IdsExhausted,
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
    /// The peer asked for a stream this side has no room for: send
    /// `reset` (the session goes on).
    Refused {
        /// Stream id.
        stream: u32,
        /// The `Reset` frame to send.
        reset: Vec<u8>,
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
    /// Received and not yet consumed by the application.
    held: u64,
    sent_fin: bool,
    got_fin: bool,
    /// Whether a `Window` was sent for this stream yet.
    grown: bool,
}

impl Stream {
    /// What this stream takes from the pool: its window and held data, and
    /// never less than its reservation.
    fn reserved(&self) -> u64 {
        (self.window + self.held).max(u64::from(START_WINDOW))
    }
}

/// The stream table of one side of a session, sans-IO.
#[derive(Debug)]
pub struct Mux {
    end: End,
    next: u32,
    /// Highest id the peer has opened so far (ids only grow).
    peer_high: u32,
    limits: Limits,
    /// Σ [`Stream::reserved`] over the streams.
    pool_used: u64,
    streams: HashMap<u32, Stream>,
}

impl Mux {
    /// One side of a session's streams.
    pub fn new(end: End, limits: Limits) -> Self {
        Self {
            end,
            next: match end {
                End::Client => 1,
                End::Server => 2,
            },
            peer_high: 0,
            limits,
            pool_used: 0,
            streams: HashMap::new(),
        }
    }

    /// Bytes of the pool in use (windows granted, data held, reservations).
    pub fn pool_used(&self) -> u64 {
        self.pool_used
    }

    /// Whether a new stream fits the limits.
    fn has_room(&self) -> bool {
        self.streams.len() < self.limits.max_streams
            && self.pool_used + u64::from(START_WINDOW) <= self.limits.pool
    }

    fn insert(&mut self, stream: u32) {
        let s = Self::fresh();
        self.pool_used += s.reserved();
        self.streams.insert(stream, s);
    }

    fn remove(&mut self, stream: u32) -> bool {
        match self.streams.remove(&stream) {
            Some(s) => {
                self.pool_used -= s.reserved();
                true
            }
            None => false,
        }
    }

    /// Grants `stream` more window, up to [`TARGET_WINDOW`] as the pool
    /// allows, when that is worth a frame: a quarter of the target (once
    /// the stream has taken in [`FIRST_GROWTH`], or was grown before), or
    /// the stream has used half its first window. A short request or
    /// answer (an HTTP GET, a small page) costs no frame: through a circuit
    /// every frame is a cell each hop handles, and the exit's went ahead of
    /// the reply.
    fn top_up(&mut self, stream: u32) -> Option<Vec<u8>> {
        let free = self.limits.pool.saturating_sub(self.pool_used);
        let s = self.streams.get_mut(&stream)?;
        if s.got_fin {
            return None;
        }
        let outstanding = s.window + s.held;
        let before = s.reserved();
        let most = (before + free)
            .min(u64::from(TARGET_WINDOW))
            .max(u64::from(START_WINDOW));
        let grant = most.saturating_sub(outstanding).min(u64::from(u32::MAX));
        let busy = s.grown || s.window + FIRST_GROWTH <= u64::from(START_WINDOW);
        let worth = (busy && grant >= u64::from(TARGET_WINDOW / 4))
            || (grant > 0 && s.window <= u64::from(START_WINDOW / 2));
        if !worth {
            return None;
        }
        s.grown = true;
        s.window += grant;
        let after = s.reserved();
        self.pool_used = self.pool_used - before + after;
        Some(
            Frame::Window {
                stream,
                credit: grant as u32,
            }
            .to_vec(),
        )
    }

    /// Streams open now.
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    /// Whether `stream` is open (not both ways finished, not reset).
    pub fn contains(&self, stream: u32) -> bool {
        self.streams.contains_key(&stream)
    }

    /// Whether no stream is open.
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    fn fresh() -> Stream {
        Stream {
            credit: u64::from(START_WINDOW),
            window: u64::from(START_WINDOW),
            held: 0,
            sent_fin: false,
            got_fin: false,
            grown: false,
        }
    }

    /// Opens a stream; returns its id and the `Open` frame.
    /// [`MuxError::Busy`] when the limits have no room for it.
    pub fn open(&mut self, host: Host, port: u16) -> Result<(u32, Vec<u8>), MuxError> {
        if matches!(&host, Host::Name(n) if n.len() > MAX_HOST || n.is_empty()) {
            return Err(MuxError::BadHost);
        }
        if !self.has_room() {
            return Err(MuxError::Busy);
        }
        let stream = self.next;
        self.next = self.next.checked_add(2).ok_or(MuxError::IdsExhausted)?;
        self.insert(stream);
        Ok((stream, Frame::Open { stream, host, port }.to_vec()))
    }

    /// How many bytes may be sent on `stream` now.
    pub fn credit(&self, stream: u32) -> usize {
        self.streams
            .get(&stream)
            .filter(|s| !s.sent_fin)
            .map_or(0, |s| s.credit.min(MAX_DATA as u64) as usize)
    }

    /// All the credit of `stream` (what [`Mux::credit`] caps at one frame's
    /// worth): what a reader may take in before the next `Window`.
    pub fn credit_total(&self, stream: u32) -> u64 {
        self.streams
            .get(&stream)
            .filter(|s| !s.sent_fin)
            .map_or(0, |s| s.credit)
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

    /// The application took `n` bytes of `stream`: they leave the pool,
    /// and the stream's window is topped up (one `Window` frame) when
    /// that is worth it.
    pub fn consumed(&mut self, stream: u32, n: usize) -> Option<Vec<u8>> {
        let s = self.streams.get_mut(&stream)?;
        let before = s.reserved();
        s.held = s.held.saturating_sub(n as u64);
        let after = s.reserved();
        self.pool_used = self.pool_used - before + after;
        self.top_up(stream)
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
            self.remove(stream);
        }
        Some(Frame::Fin { stream }.to_vec())
    }

    /// Aborts `stream`, telling the peer why.
    pub fn reset(&mut self, stream: u32, reason: ResetReason, message: &str) -> Vec<u8> {
        self.remove(stream);
        Frame::Reset {
            stream,
            reason,
            message: message.to_owned(),
        }
        .to_vec()
    }

    /// A keepalive frame (the driver sends it when it sent nothing for a while).
    pub fn ping(&self) -> Vec<u8> {
        Frame::Ping.to_vec()
    }

    /// The exit accepted an `Open`.
    pub fn opened(&self, stream: u32) -> Vec<u8> {
        Frame::Opened { stream }.to_vec()
    }

    /// Handles one received frame.
    pub fn handle<'a>(&mut self, record: &'a [u8]) -> Result<Event<'a>, MuxError> {
        match Frame::decode(record)? {
            Frame::Open { stream, host, port } => {
                let theirs = match self.end {
                    End::Client => stream % 2 == 0,
                    End::Server => stream % 2 == 1,
                };
                if !theirs || stream <= self.peer_high {
                    return Err(MuxError::BadId(stream));
                }
                self.peer_high = stream;
                if !self.has_room() {
                    let reset = Frame::Reset {
                        stream,
                        reason: ResetReason::Failure,
                        message: "the other side has too many streams open".into(),
                    }
                    .to_vec();
                    return Ok(Event::Refused { stream, reset });
                }
                self.insert(stream);
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
                s.held += bytes.len() as u64;
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
                // It sends no more: its window goes back to the pool.
                let before = s.reserved();
                s.got_fin = true;
                s.window = 0;
                let (after, done) = (s.reserved(), s.sent_fin);
                self.pool_used = self.pool_used - before + after;
                if done {
                    self.remove(stream);
                }
                Ok(Event::Fin { stream })
            }
            Frame::Ping => Ok(Event::Nothing),
            Frame::Reset {
                stream,
                reason,
                message,
            } => Ok(if self.remove(stream) {
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

    fn limits(max_streams: usize) -> Limits {
        Limits {
            max_streams,
            ..Limits::default()
        }
    }
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
        assert_eq!(hex::encode(Frame::Ping.to_vec()), "0700000000");
        assert_eq!(
            Frame::decode(&hex::decode("0700000000").unwrap()).unwrap(),
            Frame::Ping
        );
        // A ping names no stream.
        assert!(Frame::decode(&hex::decode("0700000001").unwrap()).is_err());
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
        let (mut c, mut s) = (Mux::new(End::Client, limits(8)), Mux::new(End::Server, limits(8)));
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
        assert_eq!(sent, START_WINDOW as usize);
        assert!(c.data_in_place(id, &mut frame).is_err());
    }

    /// A short request and its answer cost no `Window` frame either way
    /// (through a circuit each is a cell every hop handles, ahead of the
    /// reply); a stream that moves more grows its window at once.
    #[test]
    fn short_exchanges_send_no_window_and_bulk_grows_at_once() {
        let (mut c, mut s) = (Mux::new(End::Client, limits(8)), Mux::new(End::Server, limits(8)));
        let (id, open) = c.open(Host::Name("h".into()), 80).unwrap();
        s.handle(&open).unwrap();
        c.handle(&s.opened(id)).unwrap();
        // An 84-byte GET, written out by the exit: no frame back.
        s.handle(&c.data(id, &[b'G'; 84]).unwrap()).unwrap();
        assert_eq!(s.consumed(id, 84), None);
        // A 1,278-byte answer, taken by the application: none either.
        c.handle(&s.data(id, &[b'a'; 1278]).unwrap()).unwrap();
        assert_eq!(c.consumed(id, 1278), None);
        // Past FIRST_GROWTH taken in, the window grows to the target.
        let more = vec![b'b'; FIRST_GROWTH as usize];
        c.handle(&s.data(id, &more).unwrap()).unwrap();
        let w = c.consumed(id, more.len()).expect("the window grows");
        assert!(matches!(
            Frame::decode(&w).unwrap(),
            Frame::Window { credit, .. } if u64::from(credit) >= u64::from(TARGET_WINDOW / 4)
        ));
    }

    #[test]
    fn flow_control_half_close_and_reset() {
        let (mut c, mut s) = (Mux::new(End::Client, limits(8)), Mux::new(End::Server, limits(8)));
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
        assert_eq!(sent, START_WINDOW as usize);
        assert!(c.data(1, b"x").is_err());
        // A peer that ignores the window breaks the session.
        let mut s2 = Mux::new(End::Server, limits(8));
        s2.handle(&open).unwrap();
        let big = Frame::Data {
            stream: 1,
            bytes: &chunk,
        }
        .to_vec();
        let mut res = Ok(Event::Nothing);
        for _ in 0..START_WINDOW as usize / MAX_DATA + 2 {
            res = s2.handle(&big);
            if res.is_err() {
                break;
            }
        }
        assert_eq!(res, Err(MuxError::Overrun(1)));
        // Consuming grants credit back.
        let w = s.consumed(1, START_WINDOW as usize).unwrap();
        assert_eq!(c.handle(&w).unwrap(), Event::Writable { stream: 1 });
        assert_eq!(c.credit(1), MAX_DATA.min(START_WINDOW as usize));
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
        let mut s = Mux::new(End::Server, limits(2));
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
        // One too many: that stream is refused, the session goes on.
        let Ok(Event::Refused { stream: 9, reset }) = s.handle(&open(9)) else {
            panic!("not refused")
        };
        assert!(matches!(
            Frame::decode(&reset),
            Ok(Frame::Reset { stream: 9, .. })
        ));
        assert_eq!(s.handle(&open(9)), Err(MuxError::BadId(9)), "and its id is spent");
        assert!(matches!(s.handle(&open(11)), Ok(Event::Refused { .. })));
        let w = Frame::Window {
            stream: 5,
            credit: u32::MAX,
        }
        .to_vec();
        assert_eq!(s.handle(&w), Err(MuxError::WindowOverflow(5)));
    }

    /// Sends everything the client may on `stream`; returns the bytes.
    fn drain_credit(c: &mut Mux, s: &mut Mux, stream: u32) -> usize {
        let chunk = vec![1u8; MAX_DATA];
        let mut sent = 0;
        while c.credit(stream) > 0 {
            let n = c.credit(stream);
            let f = c.data(stream, &chunk[..n]).unwrap();
            assert!(matches!(s.handle(&f).unwrap(), Event::Data { .. }));
            sent += n;
        }
        sent
    }

    #[test]
    fn one_pool_bounds_what_a_session_holds_however_many_streams() {
        let pool = 1024 * 1024;
        let server = Limits {
            pool,
            max_streams: 1000,
        };
        let (mut c, mut s) = (
            Mux::new(End::Client, Limits::default()),
            Mux::new(End::Server, server),
        );
        let (mut opened, mut refused) = (0, 0);
        for _ in 0..100 {
            let (id, open) = c.open(Host::Name("h".into()), 1).unwrap();
            match s.handle(&open).unwrap() {
                Event::Open { .. } => {
                    opened += 1;
                    // The server's application never reads: all it may get is held.
                    drain_credit(&mut c, &mut s, id);
                }
                Event::Refused { reset, .. } => {
                    refused += 1;
                    assert!(matches!(c.handle(&reset).unwrap(), Event::Reset { .. }));
                }
                other => panic!("{other:?}"),
            }
            assert!(s.pool_used() <= pool, "{} > {pool}", s.pool_used());
        }
        assert_eq!(opened, (pool / u64::from(START_WINDOW)) as usize);
        assert_eq!(refused, 100 - opened);
        assert!(c.len() == opened && s.len() == opened);
    }

    #[test]
    fn windows_grow_while_the_pool_has_room_and_every_stream_keeps_moving() {
        let pool = u64::from(TARGET_WINDOW) + 2 * u64::from(START_WINDOW);
        let (mut c, mut s) = (
            Mux::new(End::Client, Limits::default()),
            Mux::new(End::Server, Limits { pool, max_streams: 8 }),
        );
        let (a, open) = c.open(Host::Name("a".into()), 1).unwrap();
        s.handle(&open).unwrap();
        let (b, open) = c.open(Host::Name("b".into()), 1).unwrap();
        s.handle(&open).unwrap();
        // Stream a: consumed as it comes, its window grows to the target.
        let n = drain_credit(&mut c, &mut s, a);
        assert_eq!(n, START_WINDOW as usize);
        let w = s.consumed(a, n).expect("a top-up");
        c.handle(&w).unwrap();
        let n = drain_credit(&mut c, &mut s, a);
        assert_eq!(n, TARGET_WINDOW as usize, "topped up to the target");
        // Its application stops reading: it holds the target. Stream b
        // still has its reservation, and gets it back each time it is read.
        for _ in 0..3 {
            let n = drain_credit(&mut c, &mut s, b);
            assert!(n > 0, "stream b starved");
            if let Some(w) = s.consumed(b, n) {
                c.handle(&w).unwrap();
            }
            assert!(s.pool_used() <= pool);
        }
        // Once a is read, the pool has room again and b can grow.
        let _ = s.consumed(a, n);
        let n = drain_credit(&mut c, &mut s, b);
        let w = s.consumed(b, n).expect("a top-up from the freed pool");
        c.handle(&w).unwrap();
        assert!(c.credit(b) > 0);
        assert!(s.pool_used() <= pool);
    }

    proptest! {
        #[test]
        fn decode_and_handle_are_total(frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..10)) {
            let mut m = Mux::new(End::Server, limits(4));
            for f in &frames {
                let _ = m.handle(f);
            }
            prop_assert!(m.len() <= 4);
        }
    }
}
