//! Transfer messages inside the encrypted session, and the receiver's state machine.
//!
//! Every record's plaintext is one message: a type byte and a body.
//!
//! ```text
//! sender                                   recipient
//!   Offer{kind, entries, total}  ------>
//!   Entry{...} x entries         ------>     (validated one by one)
//!   OfferEnd                     ------>     user decides
//!                                <------   Accept{hash_all, resume proposals} | Reject{reason}
//!   for each file entry, in order:
//!     [Skip{offset}]             ------>     only if the receiver proposed resuming this
//!                                            file at `offset` and the prefixes' hashes match
//!     Data{bytes} ...            ------>     written to a temporary name
//!     FileEnd{[blake3]}          ------>     size (and hash, see below) checked,
//!                                            file renamed into place
//!   Done                         ------>
//!                                <------   Ack  (everything verified)
//! either side, any time:         Error{message}
//! ```
//!
//! # Format
//!
//! | type | name | body |
//! |---|---|---|
//! | 0x01 | Offer | version:u8 (=1), kind:u8 (0 files, 1 text, 2 stream), entries:u64, total:u64 |
//! | 0x02 | Entry | kind:u8 (0 file, 1 dir), flags:u8 (bit 0 executable), size:u64 (u64::MAX = unknown), path: len:u16 + UTF-8 |
//! | 0x03 | OfferEnd | — |
//! | 0x04 | Accept | flags:u8 (bit 0 `hash_all`: hash every file), n:u32, then n × (index:u32, offset:u64, blake3 of the first `offset` bytes:32) |
//! | 0x05 | Reject | reason: len:u16 + UTF-8 |
//! | 0x06 | Data | the rest of the record |
//! | 0x07 | FileEnd | blake3:32 of the whole file, or nothing when the receiver will not check it (see below) |
//! | 0x08 | Done | — |
//! | 0x09 | Ack | — |
//! | 0x0a | Error | message: len:u16 + UTF-8 |
//! | 0x0b | Skip | offset:u64 — the file continues from here (a resume proposal was accepted) |
//! | 0x0c | Keepalive | — (either side, whenever it has sent nothing for a third of the idle timeout) |
//! | 0x0d | ZData | one zstd frame: file bytes that decompress to at most [`MAX_CHUNK`] bytes |
//! | 0x0e | Hints | flags:u8 (bit 0: direct paths allowed), n:u8 (≤ [`MAX_HINTS`]), n × (family:u8 4\|6, address:4\|16, port:u16) |
//! | 0x0f | Use | — (sender: "this connection carries the session from here on") |
//! | 0x10 | Continue | from:u32, then flags and a resume list as in `Accept` |
//!
//! **Paths.** Right after the handshake on the relay, each side sends
//! `Hints` (the addresses it listens on for a direct connection, possibly
//! none). If both allow direct paths and at least one has addresses, both
//! race direct connections; the sender picks the connection and sends `Use`
//! as its first record on it (on the relay connection if no direct one
//! completed its handshake in time). The receiver takes the first connection
//! that delivers `Use`; everything after it (the offer first) runs there.
//!
//! **Reconnect.** When a connection drops mid-transfer, both sides connect
//! again (within the same session key), the sender sends `Use` and the same
//! offer again, and the receiver, which accepted this very offer already,
//! answers `Continue{from, resume}` instead of asking its user again: files
//! before entry `from` are complete and verified, and the resume list
//! proposes where the file in flight continues.
//!
//! **Resume.** A receiver that has a partial file from an earlier transfer
//! (its hidden temporary file) proposes in `Accept` to continue it at
//! `offset`, with the BLAKE3 of those bytes. The sender hashes the same prefix
//! of its file; only if the hashes match does it send `Skip{offset}` and the
//! rest of the file, else it sends the whole file. Either way the final
//! `FileEnd` hash covers the entire file, so a resumed file is verified end to end.
//!
//! **What is verified, and how.** Every byte a receiver writes arrived in an
//! AES-256-GCM record under the session key, with a counter nonce: altered,
//! dropped, reordered or replayed records end the session, and `FileEnd`
//! comes exactly at the file's size. Hashing those bytes again on the
//! receiver proves nothing the AEAD did not (it would only catch a bug in our
//! own receiving code), and costs a quarter of the receiver's CPU, so by
//! default ([`Verify::Resumed`]) the receiver checks a BLAKE3 only for files
//! it resumed: their first bytes came from its disk, not from this session.
//! [`Verify::All`] (`burrow receive --verify`) checks every file, and says
//! so with `hash_all` in `Accept` (and `Continue`).
//!
//! The sender hashes a file (BLAKE3, as it streams it: no pre-pass) exactly
//! when its hash will be checked: every file under `hash_all`, else the files
//! it resumed with `Skip` (their prefix is hashed anyway, to check the
//! receiver's proposal). Other files end with an empty `FileEnd`: a hash
//! nobody checks would cost the sender a third of its CPU (BLAKE3 is its
//! largest single cost) for nothing. A receiver that needs a hash and gets
//! an empty `FileEnd` fails the transfer.
//!
//! Paths are relative, `/`-separated, and checked by [`validate_rel_path`]:
//! nothing the peer sends can name a place outside the output folder.

use thiserror::Error;

use std::time::{Duration, Instant};

use crate::wire::{DecodeError, Reader, Writer};

mod receiver;
mod sender;

pub use receiver::{Offer, Receiver, RxEvent, Verify};
pub use sender::{Attempt, Next, Sender, TxEvent};

/// Offer format version.
pub const OFFER_VERSION: u8 = 1;
/// Longest relative path.
pub const MAX_PATH: usize = 4096;
/// Longest path component.
pub const MAX_COMPONENT: usize = 255;
/// Most entries in one offer.
pub const MAX_ENTRIES: u64 = 1 << 22;
/// Most bytes of path text in one offer, all entries together: with
/// [`MAX_ENTRIES`] this bounds what a receiver holds before its user is
/// asked (about 1.5 KiB per entry on average, far beyond real trees).
pub const MAX_OFFER_PATH_BYTES: u64 = 128 << 20;
/// Longest reason or error message.
pub const MAX_MESSAGE: usize = 1024;
/// Size value meaning "unknown until the end" (stdin streams).
pub const UNKNOWN_SIZE: u64 = u64::MAX;
/// Most file bytes one `Data` or `ZData` record may carry (after decompression).
pub const MAX_CHUNK: usize = crate::session::MAX_PLAINTEXT - 1;
/// Most resume proposals in one `Accept`.
pub const MAX_RESUME: usize = 4096;
/// Most addresses in one `Hints`.
pub const MAX_HINTS: usize = 16;
/// Encoded size of one resume proposal.
const RESUME_LEN: usize = 4 + 8 + 32;

/// A receiver's proposal to continue a file from `offset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeAt {
    /// Entry index in the offer.
    pub index: u32,
    /// Bytes the receiver already has.
    pub offset: u64,
    /// BLAKE3 of those bytes.
    pub prefix: [u8; 32],
}

/// What is offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfferKind {
    /// Files and folders.
    Files,
    /// A text message (one entry, printed by the receiver).
    Text,
    /// A byte stream of unknown length (stdin to stdout).
    Stream,
}

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A folder (sent so that empty folders arrive).
    Dir,
}

/// One offered file or folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// File or folder.
    pub kind: EntryKind,
    /// The executable bit.
    pub executable: bool,
    /// Size in bytes ([`UNKNOWN_SIZE`] for streams).
    pub size: u64,
    /// Relative `/`-separated path.
    pub path: String,
}

/// One message inside the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    /// Start of an offer.
    Offer {
        /// What is offered.
        kind: OfferKind,
        /// How many [`Message::Entry`] follow.
        entries: u64,
        /// Sum of the file sizes.
        total: u64,
    },
    /// One entry of the offer.
    Entry(Entry),
    /// End of the offer.
    OfferEnd,
    /// The receiver accepts, proposing to resume some files.
    Accept {
        /// The receiver checks every file's hash: the sender must send them all.
        hash_all: bool,
        /// Resume proposals.
        resume: Vec<ResumeAt>,
    },
    /// The receiver declines.
    Reject(String),
    /// File bytes.
    Data(&'a [u8]),
    /// End of the current file, with its BLAKE3 when the receiver checks it.
    FileEnd(Option<[u8; 32]>),
    /// All files sent.
    Done,
    /// All files received and verified.
    Ack,
    /// A fatal error on the peer's side.
    Error(String),
    /// The current file continues at this offset (resume accepted).
    Skip(u64),
    /// "Still here": sent when a side has nothing else to send.
    Keepalive,
    /// Compressed file bytes (one zstd frame).
    ZData(&'a [u8]),
    /// The addresses this side listens on for direct connections.
    Hints {
        /// Whether this side takes part in direct paths at all.
        direct: bool,
        /// Where it listens (at most [`MAX_HINTS`]).
        addrs: Vec<std::net::SocketAddr>,
    },
    /// Sender: the session continues on this connection.
    Use,
    /// Receiver, after a reconnect: files before `from` are done; resume the
    /// one in flight as proposed.
    Continue {
        /// The first entry not yet complete.
        from: u32,
        /// As in `Accept`.
        hash_all: bool,
        /// Resume proposals (as in `Accept`).
        resume: Vec<ResumeAt>,
    },
}

fn put_resume(out: &mut Vec<u8>, hash_all: bool, resume: &[ResumeAt]) {
    out.push(u8::from(hash_all));
    let n = resume.len().min(MAX_RESUME);
    out.extend_from_slice(&(n as u32).to_be_bytes());
    for r in &resume[..n] {
        out.extend_from_slice(&r.index.to_be_bytes());
        out.extend_from_slice(&r.offset.to_be_bytes());
        out.extend_from_slice(&r.prefix);
    }
}

/// The flags byte and resume list of `Accept` and `Continue`.
fn read_resume(r: &mut Reader<'_>) -> Result<(bool, Vec<ResumeAt>), DecodeError> {
    let flags = r.u8()?;
    if flags > 1 {
        return Err(DecodeError::Invalid {
            what: "accept flags",
            reason: "unknown bits",
        });
    }
    let n = r.u32()? as usize;
    if n > MAX_RESUME {
        return Err(DecodeError::TooLong {
            what: "resume list",
            len: n,
            max: MAX_RESUME,
        });
    }
    if n * RESUME_LEN > r.remaining() {
        return Err(DecodeError::Truncated {
            needed: n * RESUME_LEN - r.remaining(),
        });
    }
    let mut list = Vec::with_capacity(n);
    for _ in 0..n {
        list.push(ResumeAt {
            index: r.u32()?,
            offset: r.u64()?,
            prefix: r.array()?,
        });
    }
    Ok((flags == 1, list))
}

impl Message<'_> {
    /// The type byte of [`Message::Data`] (records built in place start with it).
    pub const DATA: u8 = 0x06;
    /// The type byte of [`Message::ZData`].
    pub const ZDATA: u8 = 0x0d;

    /// Appends the encoded message to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Message::Offer { kind, entries, total } => {
                out.push(0x01);
                out.push(OFFER_VERSION);
                out.push(match kind {
                    OfferKind::Files => 0,
                    OfferKind::Text => 1,
                    OfferKind::Stream => 2,
                });
                out.extend_from_slice(&entries.to_be_bytes());
                out.extend_from_slice(&total.to_be_bytes());
            }
            Message::Entry(e) => {
                out.push(0x02);
                out.push(match e.kind {
                    EntryKind::File => 0,
                    EntryKind::Dir => 1,
                });
                out.push(u8::from(e.executable));
                out.extend_from_slice(&e.size.to_be_bytes());
                // Never another name: a path the sender should have refused
                // (see `Sender::new`) goes out empty, which every receiver refuses.
                if Writer::new(out)
                    .bytes_u16("path", MAX_PATH, e.path.as_bytes())
                    .is_err()
                {
                    Writer::new(out).u16(0);
                }
            }
            Message::OfferEnd => out.push(0x03),
            Message::Accept { hash_all, resume } => {
                out.push(0x04);
                put_resume(out, *hash_all, resume);
            }
            Message::Reject(r) => {
                out.push(0x05);
                Writer::new(out).text_u16(MAX_MESSAGE, r);
            }
            Message::Data(d) => {
                out.push(Self::DATA);
                out.extend_from_slice(d);
            }
            Message::FileEnd(h) => {
                out.push(0x07);
                if let Some(h) = h {
                    out.extend_from_slice(h);
                }
            }
            Message::Done => out.push(0x08),
            Message::Ack => out.push(0x09),
            Message::Error(m) => {
                out.push(0x0a);
                Writer::new(out).text_u16(MAX_MESSAGE, m);
            }
            Message::Skip(offset) => {
                out.push(0x0b);
                out.extend_from_slice(&offset.to_be_bytes());
            }
            Message::Keepalive => out.push(0x0c),
            Message::ZData(d) => {
                out.push(Self::ZDATA);
                out.extend_from_slice(d);
            }
            Message::Hints { direct, addrs } => {
                out.push(0x0e);
                out.push(u8::from(*direct));
                let n = addrs.len().min(MAX_HINTS);
                out.push(n as u8);
                for a in &addrs[..n] {
                    match a.ip() {
                        std::net::IpAddr::V4(ip) => {
                            out.push(4);
                            out.extend_from_slice(&ip.octets());
                        }
                        std::net::IpAddr::V6(ip) => {
                            out.push(6);
                            out.extend_from_slice(&ip.octets());
                        }
                    }
                    out.extend_from_slice(&a.port().to_be_bytes());
                }
            }
            Message::Use => out.push(0x0f),
            Message::Continue {
                from,
                hash_all,
                resume,
            } => {
                out.push(0x10);
                out.extend_from_slice(&from.to_be_bytes());
                put_resume(out, *hash_all, resume);
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

impl<'a> Message<'a> {
    /// Decodes one whole message (one record's plaintext). Total: never panics.
    pub fn decode(buf: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let msg = match r.u8()? {
            0x01 => {
                let v = r.u8()?;
                if v != OFFER_VERSION {
                    return Err(DecodeError::Unknown {
                        what: "offer version",
                        value: v.into(),
                    });
                }
                let kind = match r.u8()? {
                    0 => OfferKind::Files,
                    1 => OfferKind::Text,
                    2 => OfferKind::Stream,
                    k => {
                        return Err(DecodeError::Unknown {
                            what: "offer kind",
                            value: k.into(),
                        });
                    }
                };
                Message::Offer {
                    kind,
                    entries: r.u64()?,
                    total: r.u64()?,
                }
            }
            0x02 => {
                let kind = match r.u8()? {
                    0 => EntryKind::File,
                    1 => EntryKind::Dir,
                    k => {
                        return Err(DecodeError::Unknown {
                            what: "entry kind",
                            value: k.into(),
                        });
                    }
                };
                let flags = r.u8()?;
                if flags & !1 != 0 {
                    return Err(DecodeError::Unknown {
                        what: "entry flags",
                        value: flags.into(),
                    });
                }
                let size = r.u64()?;
                let path = r.str_u16("path", MAX_PATH)?.to_owned();
                Message::Entry(Entry {
                    kind,
                    executable: flags & 1 == 1,
                    size,
                    path,
                })
            }
            0x03 => Message::OfferEnd,
            0x04 => {
                let (hash_all, resume) = read_resume(&mut r)?;
                Message::Accept { hash_all, resume }
            }
            0x05 => Message::Reject(r.str_u16("reason", MAX_MESSAGE)?.to_owned()),
            Self::DATA => Message::Data(r.rest()),
            0x07 if r.remaining() == 0 => Message::FileEnd(None),
            0x07 => Message::FileEnd(Some(r.array()?)),
            0x08 => Message::Done,
            0x09 => Message::Ack,
            0x0a => Message::Error(r.str_u16("message", MAX_MESSAGE)?.to_owned()),
            0x0b => Message::Skip(r.u64()?),
            0x0c => Message::Keepalive,
            Self::ZDATA => Message::ZData(r.rest()),
            0x0e => {
                let flags = r.u8()?;
                if flags > 1 {
                    return Err(DecodeError::Invalid {
                        what: "hints flags",
                        reason: "unknown bits",
                    });
                }
                let n = usize::from(r.u8()?);
                if n > MAX_HINTS {
                    return Err(DecodeError::TooLong {
                        what: "hints",
                        len: n,
                        max: MAX_HINTS,
                    });
                }
                let mut addrs = Vec::with_capacity(n);
                for _ in 0..n {
                    let ip: std::net::IpAddr = match r.u8()? {
                        4 => std::net::Ipv4Addr::from(r.array::<4>()?).into(),
                        6 => std::net::Ipv6Addr::from(r.array::<16>()?).into(),
                        other => {
                            return Err(DecodeError::Unknown {
                                what: "address family",
                                value: other.into(),
                            });
                        }
                    };
                    addrs.push(std::net::SocketAddr::new(ip, r.u16()?));
                }
                Message::Hints {
                    direct: flags == 1,
                    addrs,
                }
            }
            0x0f => Message::Use,
            0x10 => {
                let from = r.u32()?;
                let (hash_all, resume) = read_resume(&mut r)?;
                Message::Continue {
                    from,
                    hash_all,
                    resume,
                }
            }
            t => {
                return Err(DecodeError::Unknown {
                    what: "message type",
                    value: t.into(),
                });
            }
        };
        r.finish()?;
        Ok(msg)
    }
}

/// Why a path from the peer is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PathError {
    /// Empty path or component.
    #[error("empty path component")]
    Empty,
    /// Starts with `/` (absolute).
    #[error("absolute path")]
    Absolute,
    /// Contains `.` or `..`.
    #[error("path contains '.' or '..'")]
    DotComponent,
    /// Contains a backslash or NUL, or a component too long.
    #[error("path contains a backslash, a NUL byte or an over-long name")]
    BadChars,
    /// Longer than [`MAX_PATH`].
    #[error("path too long")]
    TooLong,
}

/// Checks a relative path from the peer: `/`-separated, every component a
/// plain name (no `.`, `..`, empty, NUL or backslash), not absolute.
pub fn validate_rel_path(p: &str) -> Result<(), PathError> {
    if p.len() > MAX_PATH {
        return Err(PathError::TooLong);
    }
    if p.starts_with('/') {
        return Err(PathError::Absolute);
    }
    if p.is_empty() {
        return Err(PathError::Empty);
    }
    for c in p.split('/') {
        match c {
            "" => return Err(PathError::Empty),
            "." | ".." => return Err(PathError::DotComponent),
            _ if c.len() > MAX_COMPONENT || c.contains(['\\', '\0']) => return Err(PathError::BadChars),
            _ => {}
        }
    }
    Ok(())
}

/// Makes a peer-supplied name safe to print: control characters and
/// bidirectional overrides are shown as escapes, so no file name can move the
/// cursor, recolour the terminal or disguise its extension.
pub fn escape_display(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        let bidi = matches!(ch, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}');
        if ch.is_control() || bidi {
            out.extend(ch.escape_default());
        } else {
            out.push(ch);
        }
    }
    out
}

/// Why the transfer failed on the receiving side.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TransferError {
    /// A message could not be decoded.
    #[error("malformed message from the peer: {0}")]
    Decode(#[from] DecodeError),
    /// A message came when another was expected.
    #[error("protocol violation: {0}")]
    Unexpected(&'static str),
    /// The offer is inconsistent or unsafe.
    #[error("unacceptable offer: {0}")]
    BadOffer(String),
    /// A file's hash did not match.
    #[error("integrity check failed for {0}: the data does not match its hash")]
    HashMismatch(String),
    /// The peer reported an error.
    #[error("the other side failed: {0}")]
    Peer(String),
    /// The peer declined the offer.
    #[error("the other side declined: {0}")]
    Rejected(String),
    /// Nothing arrived for the idle limit (not even a keepalive).
    #[error("the other side stopped responding (nothing arrived for {}s)", .0.as_secs())]
    Silent(std::time::Duration),
    /// This side's own data broke the offer (a file grew or shrank while
    /// it was sent, or the driver misused the machine).
    #[error("{0}")]
    Local(String),
}

/// One side's control messages waiting for the driver, and its liveness
/// timers (both machines have the same).
#[derive(Debug, Clone, Default)]
struct Outbox {
    queue: std::collections::VecDeque<Vec<u8>>,
    liveness: Option<Liveness>,
}

impl Outbox {
    fn set_timeouts(&mut self, idle: Duration, now: Instant) {
        self.liveness = Some(Liveness::new(idle, now));
    }

    fn push_back(&mut self, msg: Vec<u8>) {
        self.queue.push_back(msg);
    }

    fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The next message into `out` (cleared first); `false` when there is none.
    fn transmit(&mut self, now: Instant, out: &mut Vec<u8>) -> bool {
        let Some(m) = self.queue.pop_front() else {
            return false;
        };
        out.clear();
        out.extend_from_slice(&m);
        self.sent(now);
        true
    }

    fn sent(&mut self, now: Instant) {
        if let Some(l) = &mut self.liveness {
            l.sent(now);
        }
    }

    fn received(&mut self, now: Instant) {
        if let Some(l) = &mut self.liveness {
            l.received(now);
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.liveness.as_ref().map(Liveness::deadline)
    }

    /// Queues a keepalive when one is due; fails when the other side has
    /// been silent for the idle limit.
    fn on_timeout(&mut self, now: Instant) -> Result<(), TransferError> {
        let Some(l) = &mut self.liveness else {
            return Ok(());
        };
        if l.on_timeout(now)? {
            self.queue.push_back(Message::Keepalive.to_vec());
        }
        Ok(())
    }
}

/// Keepalive and silence timers of one side of a transfer: a `Keepalive`
/// is due when nothing was sent for a third of the idle limit, and the
/// other side is gone when nothing arrived for the whole limit.
#[derive(Debug, Clone)]
struct Liveness {
    idle: Duration,
    last_in: Instant,
    last_out: Instant,
}

impl Liveness {
    fn new(idle: Duration, now: Instant) -> Self {
        Self {
            idle,
            last_in: now,
            last_out: now,
        }
    }

    fn received(&mut self, now: Instant) {
        self.last_in = self.last_in.max(now);
    }

    fn sent(&mut self, now: Instant) {
        self.last_out = self.last_out.max(now);
    }

    fn keepalive_at(&self) -> Option<Instant> {
        self.last_out.checked_add(self.idle / 3)
    }

    fn silent_at(&self) -> Option<Instant> {
        self.last_in.checked_add(self.idle)
    }

    /// The earlier of the two timers (far in the future if neither can be
    /// represented).
    fn deadline(&self) -> Instant {
        match (self.keepalive_at(), self.silent_at()) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => self.last_out,
        }
    }

    /// `Ok(true)`: send a keepalive now; an error: the other side is silent.
    fn on_timeout(&mut self, now: Instant) -> Result<bool, TransferError> {
        if self.silent_at().is_some_and(|t| now >= t) {
            return Err(TransferError::Silent(self.idle));
        }
        if self.keepalive_at().is_some_and(|t| now >= t) {
            self.last_out = now;
            return Ok(true);
        }
        Ok(false)
    }
}

/// Writes an offer's messages, one `Vec` per record.
pub fn offer_records(kind: OfferKind, entries: &[Entry]) -> impl Iterator<Item = Vec<u8>> + '_ {
    let total = if kind == OfferKind::Stream {
        0
    } else {
        entries
            .iter()
            .filter(|e| e.kind == EntryKind::File)
            .map(|e| e.size)
            .sum()
    };
    std::iter::once(
        Message::Offer {
            kind,
            entries: entries.len() as u64,
            total,
        }
        .to_vec(),
    )
    .chain(entries.iter().map(|e| Message::Entry(e.clone()).to_vec()))
    .chain(std::iter::once(Message::OfferEnd.to_vec()))
}

/// Transfer messages over a plain ordered byte stream (a mux stream inside
/// an already encrypted session, not a raw socket): each message with a
/// two-byte big-endian length in front, as records are framed on TCP.
///
/// ```text
/// framed = len:u16 (0..=MAX_PLAINTEXT) | message
/// ```
pub mod framing {
    use crate::session::MAX_PLAINTEXT;

    /// Appends `msg` with its length prefix to `out`; `false` (nothing
    /// appended) when it is longer than one message may be.
    pub fn put(msg: &[u8], out: &mut Vec<u8>) -> bool {
        let Ok(len) = u16::try_from(msg.len()) else {
            return false;
        };
        if msg.len() > MAX_PLAINTEXT {
            return false;
        }
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(msg);
        true
    }

    /// Reassembles messages from stream bytes. Holds at most one message
    /// and its prefix (64 KiB) plus what one `push` adds.
    #[derive(Debug, Default)]
    pub struct Reader {
        buf: Vec<u8>,
        start: usize,
    }

    /// A length prefix above [`MAX_PLAINTEXT`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
    #[error("a framed message longer than {MAX_PLAINTEXT} bytes")]
    pub struct TooLong;

    impl Reader {
        /// Bytes that arrived.
        pub fn push(&mut self, bytes: &[u8]) {
            if self.start > 0 && self.start == self.buf.len() {
                self.buf.clear();
                self.start = 0;
            }
            self.buf.extend_from_slice(bytes);
        }

        /// The next complete message, if one is there.
        pub fn next_message(&mut self) -> Result<Option<&[u8]>, TooLong> {
            let rest = &self.buf[self.start..];
            let Some(len) = rest
                .get(..2)
                .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
            else {
                return Ok(None);
            };
            if len > MAX_PLAINTEXT {
                return Err(TooLong);
            }
            if rest.len() < 2 + len {
                if self.start > 0 {
                    self.buf.drain(..self.start);
                    self.start = 0;
                }
                return Ok(None);
            }
            let at = self.start + 2;
            self.start = at + len;
            Ok(Some(&self.buf[at..at + len]))
        }
    }
}

#[cfg(test)]
mod pair_tests;

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn now() -> Instant {
        Instant::now()
    }
    use proptest::prelude::*;

    pub(super) fn file(path: &str, size: u64) -> Entry {
        Entry {
            kind: EntryKind::File,
            executable: false,
            size,
            path: path.into(),
        }
    }

    pub(super) fn dir(path: &str) -> Entry {
        Entry {
            kind: EntryKind::Dir,
            executable: false,
            size: 0,
            path: path.into(),
        }
    }

    #[test]
    fn bytes_are_exact() {
        assert_eq!(
            hex::encode(
                Message::Offer {
                    kind: OfferKind::Files,
                    entries: 2,
                    total: 5
                }
                .to_vec()
            ),
            "0101000000000000000002".to_owned() + "0000000000000005"
        );
        let e = Entry {
            kind: EntryKind::File,
            executable: true,
            size: 3,
            path: "a/b".into(),
        };
        assert_eq!(
            hex::encode(Message::Entry(e).to_vec()),
            "0200010000000000000003".to_owned() + "0003612f62"
        );
        assert_eq!(Message::OfferEnd.to_vec(), [3]);
        let accept = |hash_all, resume| Message::Accept { hash_all, resume };
        assert_eq!(accept(false, vec![]).to_vec(), [4, 0, 0, 0, 0, 0]);
        assert_eq!(accept(true, vec![]).to_vec(), [4, 1, 0, 0, 0, 0]);
        assert!(Message::decode(&[4, 2, 0, 0, 0, 0]).is_err(), "unknown flags");
        let acc = accept(
            false,
            vec![ResumeAt {
                index: 2,
                offset: 5,
                prefix: [0xaa; 32],
            }],
        );
        assert_eq!(
            hex::encode(&acc.to_vec()[..18]),
            "0400000000010000000200000000000000".to_owned() + "05"
        );
        assert_eq!(hex::encode(Message::Skip(9).to_vec()), "0b0000000000000009");
        let hints = Message::Hints {
            direct: true,
            addrs: vec!["10.0.0.1:9".parse().unwrap(), "[::1]:258".parse().unwrap()],
        };
        assert_eq!(
            hex::encode(hints.to_vec()),
            "0e0102040a000001000906000000000000000000000000000000010102"
        );
        assert_eq!(Message::decode(&hints.to_vec()).unwrap(), hints);
        assert!(Message::decode(&[0x0e, 2, 0]).is_err());
        assert!(Message::decode(&[0x0e, 1, 17]).is_err());
        assert!(Message::decode(&[0x0e, 1, 1, 5, 0, 0, 0, 0, 0, 0]).is_err());
        assert_eq!(Message::Use.to_vec(), [0x0f]);
        assert_eq!(
            hex::encode(
                Message::Continue {
                    from: 3,
                    hash_all: true,
                    resume: vec![]
                }
                .to_vec()
            ),
            "10000000030100000000"
        );
        // A resume list longer than its bytes is refused before allocating.
        assert!(Message::decode(&[4, 0, 0, 0, 0x0f, 0xff]).is_err());
        assert_eq!(hex::encode(Message::Reject("no".into()).to_vec()), "0500026e6f");
        assert_eq!(Message::Data(b"xy").to_vec(), [6, b'x', b'y']);
        assert_eq!(Message::FileEnd(Some([9; 32])).to_vec()[..2], [7, 9]);
        assert_eq!(Message::FileEnd(Some([9; 32])).to_vec().len(), 33);
        assert_eq!(Message::FileEnd(None).to_vec(), [7]);
        assert_eq!(Message::decode(&[7]).unwrap(), Message::FileEnd(None));
        assert!(
            Message::decode(&[7, 1, 2]).is_err(),
            "a truncated hash is not an empty one"
        );
        assert_eq!(Message::Done.to_vec(), [8]);
        assert_eq!(Message::Ack.to_vec(), [9]);
        assert_eq!(hex::encode(Message::Error("x".into()).to_vec()), "0a000178");
    }

    fn run(entries: Vec<Entry>, data: &[(&str, &[u8])]) -> Result<Vec<(usize, Vec<u8>)>, TransferError> {
        let mut rx = Receiver::new();
        for rec in offer_records(OfferKind::Files, &entries) {
            rx.handle(now(), &rec)?;
        }
        rx.accept()?;
        let mut got: Vec<(usize, Vec<u8>)> = Vec::new();
        for (_, bytes) in data {
            let m = Message::Data(bytes).to_vec();
            if let RxEvent::Data { index, bytes } = rx.handle(now(), &m)? {
                got.push((index, bytes.to_vec()));
            }
            let end = Message::FileEnd(Some(*blake3::hash(bytes).as_bytes())).to_vec();
            rx.handle(now(), &end)?;
        }
        assert_eq!(rx.handle(now(), &Message::Done.to_vec())?, RxEvent::Finished);
        rx.confirm()?;
        Ok(got)
    }

    #[test]
    fn files_and_folders_flow() {
        let got = run(
            vec![
                dir("d"),
                file("d/a", 3),
                dir("d/empty"),
                file("d/z", 0),
                file("b", 2),
            ],
            &[("d/a", b"abc"), ("d/z", b""), ("b", b"hi")],
        )
        .unwrap();
        assert_eq!(got, vec![(1, b"abc".to_vec()), (3, vec![]), (4, b"hi".to_vec())]);
    }

    #[test]
    fn hash_mismatch_is_detected_when_verifying_all() {
        let mut rx = Receiver::new().verify(Verify::All);
        for rec in offer_records(OfferKind::Files, &[file("a", 3), file("b", 2)]) {
            rx.handle(now(), &rec).unwrap();
        }
        rx.accept().unwrap();
        rx.handle(now(), &Message::Data(b"abc").to_vec()).unwrap();
        rx.handle(
            now(),
            &Message::FileEnd(Some(*blake3::hash(b"abc").as_bytes())).to_vec(),
        )
        .unwrap();
        // The second file too: the hasher starts again for every file.
        rx.handle(now(), &Message::Data(b"xy").to_vec()).unwrap();
        let err = rx
            .handle(
                now(),
                &Message::FileEnd(Some(*blake3::hash(b"xz").as_bytes())).to_vec(),
            )
            .unwrap_err();
        assert_eq!(err, TransferError::HashMismatch("b".into()));
        assert!(rx.handle(now(), &Message::Done.to_vec()).is_err());
    }

    /// By default a file that arrived whole in this session is trusted to
    /// the AEAD (its hash is not recomputed); sizes are still enforced.
    #[test]
    fn by_default_only_sizes_are_checked_for_whole_files() {
        let mut rx = Receiver::new();
        for rec in offer_records(OfferKind::Files, &[file("a", 3)]) {
            rx.handle(now(), &rec).unwrap();
        }
        rx.accept().unwrap();
        rx.handle(now(), &Message::Data(b"ab").to_vec()).unwrap();
        let early = rx.clone();
        assert!(matches!(
            rx.handle(now(), &Message::FileEnd(Some([0; 32])).to_vec()),
            Err(TransferError::Unexpected(_))
        ));
        let mut rx = early;
        rx.handle(now(), &Message::Data(b"c").to_vec()).unwrap();
        assert_eq!(
            rx.handle(now(), &Message::FileEnd(Some([0; 32])).to_vec())
                .unwrap(),
            RxEvent::FileVerified { index: 0 }
        );
    }

    #[test]
    fn unsafe_offers_are_refused() {
        for bad in [
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a\\..\\b",
            "a/\0",
            "",
        ] {
            let mut rx = Receiver::new();
            let mut res = Ok(());
            for rec in offer_records(OfferKind::Files, &[file(bad, 1)]) {
                res = rx.handle(now(), &rec).map(|_| ());
                if res.is_err() {
                    break;
                }
            }
            assert!(matches!(res, Err(TransferError::BadOffer(_))), "{bad:?} accepted");
        }
        // A file and a folder with one name, or a file under a file.
        for pair in [
            [file("a", 1), file("a/b", 1)],
            [file("a", 1), file("a", 1)],
            [file("a/b", 1), file("a", 1)],
            [file("a/b/c", 1), file("a/b", 1)],
        ] {
            let mut rx = Receiver::new();
            let r: Result<Vec<_>, _> = offer_records(OfferKind::Files, &pair)
                .map(|rec| rx.handle(now(), &rec).map(|_| ()))
                .collect();
            assert!(r.is_err());
        }
    }

    #[test]
    fn clashes_are_found_whatever_sorts_between() {
        // `a-x` and `a.b` sort between `a` and `a/…` as plain bytes.
        let bad = [
            file("a-x", 1),
            dir("a.b"),
            file("a", 1),
            dir("a/z"),
            file("a0", 1),
        ];
        let mut rx = Receiver::new();
        let r: Result<Vec<_>, _> = offer_records(OfferKind::Files, &bad)
            .map(|rec| rx.handle(now(), &rec).map(|_| ()))
            .collect();
        assert!(matches!(r, Err(TransferError::BadOffer(m)) if m.contains("both a file and a folder")));
        // A folder named twice, or implied and named, is fine.
        let good = [
            dir("a"),
            dir("a"),
            file("a/b", 1),
            dir("a/c"),
            file("a-b", 1),
            file("c", 0),
        ];
        let mut rx = Receiver::new();
        for rec in offer_records(OfferKind::Files, &good) {
            rx.handle(now(), &rec).unwrap();
        }
        assert!(rx.offers("a/b") && rx.offers("a") && rx.offers("a-b") && rx.offers("c"));
        assert!(!rx.offers("a/b/c") && !rx.offers("b") && !rx.offers("a/"));
    }

    #[test]
    fn offers_past_the_name_budget_are_refused() {
        // Clashes are only checked at the end: one long path, many times.
        let long = vec!["x".repeat(MAX_COMPONENT); 16].join("/");
        let mut rx = Receiver::new();
        rx.path_budget = 64 * long.len() as u64; // the same rule, a smaller budget
        let n = 65;
        rx.handle(
            now(),
            &Message::Offer {
                kind: OfferKind::Files,
                entries: n,
                total: 0,
            }
            .to_vec(),
        )
        .unwrap();
        let rec = Message::Entry(file(&long, 0)).to_vec();
        for _ in 1..n {
            rx.handle(now(), &rec).unwrap();
        }
        let e = rx.handle(now(), &rec).unwrap_err();
        assert!(matches!(e, TransferError::BadOffer(m) if m.contains("bytes of names")));
    }

    #[test]
    fn order_and_size_are_enforced() {
        let mut rx = Receiver::new();
        assert!(rx.handle(now(), &Message::Data(b"x").to_vec()).is_err());
        let mut rx = Receiver::new();
        for rec in offer_records(OfferKind::Files, &[file("a", 1)]) {
            rx.handle(now(), &rec).unwrap();
        }
        rx.accept().unwrap();
        assert!(rx.handle(now(), &Message::Data(b"xy").to_vec()).is_err());
        // Lying totals.
        let mut rx = Receiver::new();
        rx.handle(
            now(),
            &Message::Offer {
                kind: OfferKind::Files,
                entries: 1,
                total: 9,
            }
            .to_vec(),
        )
        .unwrap();
        rx.handle(now(), &Message::Entry(file("a", 1)).to_vec()).unwrap();
        assert!(rx.handle(now(), &Message::OfferEnd.to_vec()).is_err());
        // Done before all files.
        let mut rx = Receiver::new();
        for rec in offer_records(OfferKind::Files, &[file("a", 0)]) {
            rx.handle(now(), &rec).unwrap();
        }
        rx.accept().unwrap();
        assert!(rx.handle(now(), &Message::Done.to_vec()).is_err());
    }

    #[test]
    fn peer_errors_surface() {
        let mut rx = Receiver::new();
        let e = rx
            .handle(now(), &Message::Error("disk \x1b[31mfull".into()).to_vec())
            .unwrap_err();
        assert_eq!(e, TransferError::Peer("disk \\u{1b}[31mfull".into()));
    }

    #[test]
    fn display_escaping() {
        assert_eq!(escape_display("a\nb"), "a\\nb");
        assert_eq!(escape_display("evil\u{202e}txt.exe"), "evil\\u{202e}txt.exe");
        assert_eq!(escape_display("normal é"), "normal é");
    }

    fn arb_entry() -> impl Strategy<Value = Entry> {
        (
            any::<bool>(),
            any::<bool>(),
            any::<u64>(),
            "[a-z]{1,8}(/[a-z]{1,8}){0,3}",
        )
            .prop_map(|(d, x, size, path)| Entry {
                kind: if d { EntryKind::Dir } else { EntryKind::File },
                executable: x,
                size,
                path,
            })
    }

    proptest! {
        #[test]
        fn messages_round_trip(e in arb_entry(), data in proptest::collection::vec(any::<u8>(), 0..100), s in ".{0,40}", h in any::<[u8; 32]>(), n in any::<u64>(), t in any::<u64>()) {
            let msgs = vec![
                Message::Offer { kind: OfferKind::Files, entries: n, total: t },
                Message::Offer { kind: OfferKind::Stream, entries: n, total: t },
                Message::Entry(e),
                Message::Data(&data),
                Message::FileEnd(Some(h)),
                Message::FileEnd(None),
                Message::Reject(s.clone()),
                Message::Error(s),
                Message::Accept { hash_all: n % 2 == 1, resume: vec![ResumeAt { index: n as u32, offset: t, prefix: h }] },
                Message::Skip(t),
                Message::OfferEnd, Message::Accept { hash_all: false, resume: vec![] }, Message::Done, Message::Ack, Message::Keepalive, Message::ZData(&data),
                Message::Use,
                Message::Continue { from: n as u32, hash_all: t % 2 == 0, resume: vec![ResumeAt { index: t as u32, offset: n, prefix: h }] },
                Message::Hints { direct: n % 2 == 0, addrs: vec![std::net::SocketAddr::new(std::net::Ipv6Addr::from(h[..16].try_into().unwrap_or([0u8; 16])).into(), t as u16), std::net::SocketAddr::from((std::net::Ipv4Addr::from(n as u32), 7))] },
            ];
            for m in msgs {
                let enc = m.to_vec();
                prop_assert_eq!(Message::decode(&enc).unwrap(), m);
            }
        }

        #[test]
        fn decode_and_receiver_are_total(records in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..8)) {
            let mut rx = Receiver::new();
            for r in &records {
                let _ = rx.handle(now(), r);
                let _ = rx.accept();
            }
        }
    }
}

#[cfg(test)]
mod resume_tests {
    use super::tests::now;
    use super::*;

    /// The message the receiver queued next.
    fn queued(rx: &mut Receiver) -> Vec<u8> {
        let mut out = Vec::new();
        assert!(rx.poll_transmit(now(), &mut out), "nothing queued");
        out
    }

    fn offer(rx: &mut Receiver, data: &[u8]) {
        let e = Entry {
            kind: EntryKind::File,
            executable: false,
            size: data.len() as u64,
            path: "f".into(),
        };
        for rec in offer_records(OfferKind::Files, &[e]) {
            rx.handle(now(), &rec).unwrap();
        }
    }

    fn prefix_hasher(b: &[u8]) -> blake3::Hasher {
        let mut h = blake3::Hasher::new();
        h.update(b);
        h
    }

    #[test]
    fn resumed_file_is_verified_end_to_end() {
        let data = b"hello resumable world";
        let mut rx = Receiver::new();
        offer(&mut rx, data);
        rx.accept_resuming(vec![(0, 6, prefix_hasher(&data[..6]))])
            .unwrap();
        let acc = queued(&mut rx);
        let Ok(Message::Accept {
            hash_all: false,
            resume: list,
        }) = Message::decode(&acc)
        else {
            panic!()
        };
        assert_eq!(list[0].offset, 6);
        assert_eq!(list[0].prefix, *blake3::hash(&data[..6]).as_bytes());
        assert_eq!(
            rx.handle(now(), &Message::Skip(6).to_vec()).unwrap(),
            RxEvent::Resumed { index: 0, offset: 6 }
        );
        rx.handle(now(), &Message::Data(&data[6..]).to_vec()).unwrap();
        let end = Message::FileEnd(Some(*blake3::hash(data).as_bytes())).to_vec();
        assert_eq!(
            rx.handle(now(), &end).unwrap(),
            RxEvent::FileVerified { index: 0 }
        );
        assert_eq!(rx.received(), (data.len() - 6) as u64);
    }

    #[test]
    fn continue_skips_finished_files_and_resumes_the_one_in_flight() {
        let mut rx = Receiver::new();
        let entries = vec![
            tests::file("a", 3),
            tests::dir("d"),
            tests::file("d/b", 10),
            tests::file("c", 2),
        ];
        for rec in offer_records(OfferKind::Files, &entries) {
            rx.handle(now(), &rec).unwrap();
        }
        assert!(rx.continue_from(5, vec![]).is_err());
        rx.continue_from(1, vec![(2, 6, prefix_hasher(b"012345"))])
            .unwrap();
        let msg = queued(&mut rx);
        let Ok(Message::Continue {
            from: 1,
            hash_all: false,
            resume,
        }) = Message::decode(&msg)
        else {
            panic!("not a Continue")
        };
        assert_eq!((resume.len(), resume[0].index, resume[0].offset), (1, 2, 6));
        // The folder is skipped; the file in flight continues at 6.
        assert_eq!(
            rx.handle(now(), &Message::Skip(6).to_vec()).unwrap(),
            RxEvent::Resumed { index: 2, offset: 6 }
        );
        rx.handle(now(), &Message::Data(b"6789").to_vec()).unwrap();
        let h = *blake3::hash(b"0123456789").as_bytes();
        assert_eq!(
            rx.handle(now(), &Message::FileEnd(Some(h)).to_vec()).unwrap(),
            RxEvent::FileVerified { index: 2 }
        );
        rx.handle(now(), &Message::Data(b"xy").to_vec()).unwrap();
        let h = *blake3::hash(b"xy").as_bytes();
        assert_eq!(
            rx.handle(now(), &Message::FileEnd(Some(h)).to_vec()).unwrap(),
            RxEvent::FileVerified { index: 3 }
        );
        assert_eq!(
            rx.handle(now(), &Message::Done.to_vec()).unwrap(),
            RxEvent::Finished
        );
    }

    #[test]
    fn a_wrong_prefix_fails_the_final_hash() {
        let data = b"hello resumable world";
        let mut rx = Receiver::new();
        offer(&mut rx, data);
        rx.accept_resuming(vec![(0, 6, prefix_hasher(b"HELLO "))])
            .unwrap();
        rx.handle(now(), &Message::Skip(6).to_vec()).unwrap();
        rx.handle(now(), &Message::Data(&data[6..]).to_vec()).unwrap();
        let end = Message::FileEnd(Some(*blake3::hash(data).as_bytes())).to_vec();
        assert!(matches!(
            rx.handle(now(), &end),
            Err(TransferError::HashMismatch(_))
        ));
    }

    #[test]
    fn skip_needs_a_matching_proposal_and_full_resend_still_works() {
        let data = b"abcdef";
        let mut rx = Receiver::new();
        offer(&mut rx, data);
        rx.accept().unwrap();
        assert!(rx.handle(now(), &Message::Skip(3).to_vec()).is_err());
        // The sender may decline a proposal and resend everything.
        let mut rx = Receiver::new();
        offer(&mut rx, data);
        rx.accept_resuming(vec![(0, 3, prefix_hasher(b"abc"))]).unwrap();
        rx.handle(now(), &Message::Data(data).to_vec()).unwrap();
        let end = Message::FileEnd(Some(*blake3::hash(data).as_bytes())).to_vec();
        assert_eq!(
            rx.handle(now(), &end).unwrap(),
            RxEvent::FileVerified { index: 0 }
        );
        // A skip to another offset than proposed is refused.
        let mut rx = Receiver::new();
        offer(&mut rx, data);
        rx.accept_resuming(vec![(0, 3, prefix_hasher(b"abc"))]).unwrap();
        assert!(rx.handle(now(), &Message::Skip(4).to_vec()).is_err());
        // Proposals past the size are dropped.
        let mut rx = Receiver::new();
        offer(&mut rx, data);
        rx.accept_resuming(vec![(0, 99, prefix_hasher(b""))]).unwrap();
        assert_eq!(
            queued(&mut rx),
            Message::Accept {
                hash_all: false,
                resume: vec![]
            }
            .to_vec()
        );
    }

    #[test]
    fn a_hash_is_required_exactly_where_it_is_checked() {
        let data = b"abcdef";
        // Not resumed, default verification: an empty FileEnd is fine.
        let mut rx = Receiver::new();
        offer(&mut rx, data);
        rx.accept().unwrap();
        rx.handle(now(), &Message::Data(data).to_vec()).unwrap();
        assert_eq!(
            rx.handle(now(), &Message::FileEnd(None).to_vec()).unwrap(),
            RxEvent::FileVerified { index: 0 }
        );
        // Resumed: the sender must send the hash.
        let mut rx = Receiver::new();
        offer(&mut rx, data);
        rx.accept_resuming(vec![(0, 3, prefix_hasher(b"abc"))]).unwrap();
        rx.handle(now(), &Message::Skip(3).to_vec()).unwrap();
        rx.handle(now(), &Message::Data(&data[3..]).to_vec()).unwrap();
        assert!(rx.handle(now(), &Message::FileEnd(None).to_vec()).is_err());
        // --verify: asks for every hash in Accept, and refuses to go without.
        let mut rx = Receiver::new().verify(Verify::All);
        offer(&mut rx, data);
        rx.accept().unwrap();
        let acc = queued(&mut rx);
        assert!(matches!(
            Message::decode(&acc),
            Ok(Message::Accept { hash_all: true, .. })
        ));
        rx.handle(now(), &Message::Data(data).to_vec()).unwrap();
        assert!(rx.handle(now(), &Message::FileEnd(None).to_vec()).is_err());
    }
}
