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

use std::cmp::Ordering;

use thiserror::Error;

use crate::wire::{DecodeError, Reader, clip, put_bytes_u16};

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
                put_bytes_u16(out, clip(&e.path, MAX_PATH).as_bytes());
            }
            Message::OfferEnd => out.push(0x03),
            Message::Accept { hash_all, resume } => {
                out.push(0x04);
                put_resume(out, *hash_all, resume);
            }
            Message::Reject(r) => {
                out.push(0x05);
                put_bytes_u16(out, clip(r, MAX_MESSAGE).as_bytes());
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
                put_bytes_u16(out, clip(m, MAX_MESSAGE).as_bytes());
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
}

/// A validated offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// What is offered.
    pub kind: OfferKind,
    /// Files and folders, in the order their data will arrive.
    pub entries: Vec<Entry>,
    /// Sum of the file sizes (for streams: unknown, 0).
    pub total: u64,
}

impl Offer {
    /// Number of file entries.
    pub fn files(&self) -> usize {
        self.entries.iter().filter(|e| e.kind == EntryKind::File).count()
    }

    /// Number of folder entries.
    pub fn dirs(&self) -> usize {
        self.entries.len() - self.files()
    }
}

/// What the receiver's driver must do after a message.
#[derive(Debug, PartialEq, Eq)]
pub enum RxEvent<'a> {
    /// Nothing to do yet.
    Nothing,
    /// The offer is complete: show it and call [`Receiver::accept`] or [`Receiver::reject`].
    OfferReady,
    /// Bytes for the file at `index` (of [`Offer::entries`]): write them.
    Data {
        /// Entry index.
        index: usize,
        /// The bytes.
        bytes: &'a [u8],
    },
    /// Compressed bytes for the current file: decompress them (to at most
    /// [`MAX_CHUNK`] bytes) and pass the result to [`Receiver::data`].
    Compressed {
        /// Entry index.
        index: usize,
        /// One zstd frame.
        frame: &'a [u8],
    },
    /// The file at `index` continues at `offset`: reopen its partial file there.
    Resumed {
        /// Entry index.
        index: usize,
        /// Bytes already present.
        offset: u64,
    },
    /// The file at `index` is complete and its hash verified: move it into place.
    FileVerified {
        /// Entry index.
        index: usize,
    },
    /// Everything arrived and was verified; send the returned `Ack`.
    Finished,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RxState {
    AwaitOffer,
    Entries,
    AwaitDecision,
    Receiving,
    Finished,
    Failed,
}

/// Which files the receiver hashes again to check their `FileEnd` hash
/// (see the module docs: the session's AEAD already authenticates every byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verify {
    /// Only resumed files, whose first bytes came from the receiver's disk.
    #[default]
    Resumed,
    /// Every file.
    All,
}

/// The receiving side of a transfer, sans-IO: feed it each record's
/// plaintext with [`Receiver::handle`] and act on the [`RxEvent`]s.
#[derive(Debug, Clone)]
pub struct Receiver {
    state: RxState,
    kind: OfferKind,
    expected: u64,
    declared_total: u64,
    entries: Vec<Entry>,
    /// Path bytes the entries may still use (from [`MAX_OFFER_PATH_BYTES`]).
    path_budget: u64,
    /// Entry indexes in path order (components compared one by one), built
    /// when the offer is complete: the clash checks and [`Receiver::offers`].
    order: Vec<u32>,
    sum: u64,
    current: usize,
    in_file: u64,
    /// The current file's hash so far, when it is to be checked.
    hasher: Option<blake3::Hasher>,
    verify: Verify,
    received: u64,
    /// Whether the current file has seen any message yet.
    started: bool,
    /// Resume proposals sent with `Accept`, by entry index.
    resume: std::collections::HashMap<usize, (u64, blake3::Hasher)>,
}

impl Default for Receiver {
    fn default() -> Self {
        Self::new()
    }
}

impl Receiver {
    /// A receiver waiting for an offer.
    pub fn new() -> Self {
        Self {
            state: RxState::AwaitOffer,
            kind: OfferKind::Files,
            expected: 0,
            declared_total: 0,
            entries: Vec::new(),
            path_budget: MAX_OFFER_PATH_BYTES,
            order: Vec::new(),
            sum: 0,
            current: 0,
            in_file: 0,
            hasher: None,
            verify: Verify::Resumed,
            received: 0,
            started: false,
            resume: std::collections::HashMap::new(),
        }
    }

    /// Which files' `FileEnd` hashes are checked (default: [`Verify::Resumed`]).
    pub fn verify(mut self, verify: Verify) -> Self {
        self.verify = verify;
        self.hasher = self.fresh_hasher();
        self
    }

    fn fresh_hasher(&self) -> Option<blake3::Hasher> {
        (self.verify == Verify::All).then(blake3::Hasher::new)
    }

    /// The offer so far (complete once [`RxEvent::OfferReady`] was returned).
    pub fn offer(&self) -> Offer {
        Offer {
            kind: self.kind,
            entries: self.entries.clone(),
            total: self.declared_total,
        }
    }

    /// Borrow the entries.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// File bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Accepts the offer; returns the message to send.
    pub fn accept(&mut self) -> Result<Vec<u8>, TransferError> {
        self.accept_resuming(Vec::new())
    }

    /// Accepts the offer, proposing to resume files: for each, the entry
    /// index, the bytes already present, and a hasher that has hashed exactly
    /// those bytes. Proposals for non-files, past a file's size, or beyond
    /// [`MAX_RESUME`] are dropped.
    pub fn accept_resuming(
        &mut self,
        proposals: Vec<(usize, u64, blake3::Hasher)>,
    ) -> Result<Vec<u8>, TransferError> {
        let resume = self.start_receiving(0, proposals)?;
        Ok(Message::Accept {
            hash_all: self.verify == Verify::All,
            resume,
        }
        .to_vec())
    }

    /// After a reconnect: the offer (sent again) was accepted before, and
    /// every file before entry `from` is complete. Returns the `Continue`
    /// message; `proposals` as for [`Receiver::accept_resuming`].
    pub fn continue_from(
        &mut self,
        from: usize,
        proposals: Vec<(usize, u64, blake3::Hasher)>,
    ) -> Result<Vec<u8>, TransferError> {
        let wire_from = u32::try_from(from)
            .ok()
            .filter(|_| from <= self.entries.len())
            .ok_or(TransferError::Unexpected("continue past the last entry"))?;
        let resume = self.start_receiving(from, proposals)?;
        Ok(Message::Continue {
            from: wire_from,
            hash_all: self.verify == Verify::All,
            resume,
        }
        .to_vec())
    }

    fn start_receiving(
        &mut self,
        from: usize,
        proposals: Vec<(usize, u64, blake3::Hasher)>,
    ) -> Result<Vec<ResumeAt>, TransferError> {
        if self.state != RxState::AwaitDecision {
            return Err(TransferError::Unexpected("accept before the offer is complete"));
        }
        let mut wire = Vec::new();
        for (index, offset, hasher) in proposals.into_iter().take(MAX_RESUME) {
            let ok = index >= from
                && self.entries.get(index).is_some_and(|e| {
                    e.kind == EntryKind::File && e.size != UNKNOWN_SIZE && offset <= e.size && offset > 0
                });
            let Ok(idx32) = u32::try_from(index) else { continue };
            if ok && !self.resume.contains_key(&index) {
                wire.push(ResumeAt {
                    index: idx32,
                    offset,
                    prefix: *hasher.finalize().as_bytes(),
                });
                self.resume.insert(index, (offset, hasher));
            }
        }
        self.state = RxState::Receiving;
        self.current = from.min(self.entries.len());
        self.skip_dirs();
        Ok(wire)
    }

    /// Declines the offer; returns the message to send.
    pub fn reject(&mut self, reason: &str) -> Vec<u8> {
        self.state = RxState::Failed;
        Message::Reject(reason.to_owned()).to_vec()
    }

    fn skip_dirs(&mut self) {
        while self.current < self.entries.len() && self.entries[self.current].kind == EntryKind::Dir {
            self.current += 1;
        }
        self.in_file = 0;
        self.started = false;
        self.hasher = self.fresh_hasher();
    }

    fn fail<T>(&mut self, e: TransferError) -> Result<T, TransferError> {
        self.state = RxState::Failed;
        Err(e)
    }

    fn add_entry(&mut self, e: Entry) -> Result<(), TransferError> {
        if let Err(err) = validate_rel_path(&e.path) {
            return Err(TransferError::BadOffer(format!(
                "{}: {err}",
                escape_display(&e.path)
            )));
        }
        // Clashes (a file twice, a file that is also a folder, an entry
        // below a file) are found once the offer is complete, by sorting
        // (see `check_clashes`): holding every folder prefix of every path
        // instead would cost memory quadratic in the path depth.
        let Some(left) = self.path_budget.checked_sub(e.path.len() as u64) else {
            return Err(TransferError::BadOffer(format!(
                "more than {MAX_OFFER_PATH_BYTES} bytes of names"
            )));
        };
        self.path_budget = left;
        match e.kind {
            EntryKind::File => {
                if self.kind != OfferKind::Stream && e.size == UNKNOWN_SIZE {
                    return Err(TransferError::BadOffer("a file without a size".into()));
                }
                if self.kind != OfferKind::Stream {
                    self.sum = self
                        .sum
                        .checked_add(e.size)
                        .ok_or_else(|| TransferError::BadOffer("sizes overflow".into()))?;
                }
            }
            EntryKind::Dir => {
                if self.kind != OfferKind::Files {
                    return Err(TransferError::BadOffer(
                        "folders in a text or stream offer".into(),
                    ));
                }
            }
        }
        self.entries.push(e);
        Ok(())
    }

    /// Sorts the entries by path, component by component, and refuses an
    /// offer where a file appears twice, is also a folder, or has entries
    /// below it. In that order every entry below or equal to a path comes
    /// right after it, so comparing neighbours finds every clash: O(n log n)
    /// time and four bytes per entry.
    fn check_clashes(&mut self) -> Result<(), TransferError> {
        let entries = &self.entries;
        let mut order: Vec<u32> = (0..entries.len() as u32).collect();
        order.sort_unstable_by(|&a, &b| path_order(&entries[a as usize].path, &entries[b as usize].path));
        for w in order.windows(2) {
            let (a, b) = (&entries[w[0] as usize], &entries[w[1] as usize]);
            let same = a.path == b.path;
            let below = b.path.len() > a.path.len()
                && b.path.as_bytes()[a.path.len()] == b'/'
                && b.path.starts_with(a.path.as_str());
            if same && (a.kind == EntryKind::File || b.kind == EntryKind::File) {
                return Err(TransferError::BadOffer(format!(
                    "{} appears twice",
                    escape_display(&a.path)
                )));
            }
            if below && a.kind == EntryKind::File {
                return Err(TransferError::BadOffer(format!(
                    "{} is both a file and a folder",
                    escape_display(&a.path)
                )));
            }
        }
        self.order = order;
        Ok(())
    }

    /// Whether the complete offer names `path` (a file or folder entry).
    /// Folders only implied by deeper entries do not count.
    pub fn offers(&self, path: &str) -> bool {
        self.order
            .binary_search_by(|&i| path_order(&self.entries[i as usize].path, path))
            .is_ok()
    }

    /// Handles one record's plaintext.
    pub fn handle<'a>(&mut self, record: &'a [u8]) -> Result<RxEvent<'a>, TransferError> {
        let msg = match Message::decode(record) {
            Ok(m) => m,
            Err(e) => return self.fail(e.into()),
        };
        match (self.state, msg) {
            (RxState::Failed, _) => Err(TransferError::Unexpected("message after failure")),
            (_, Message::Keepalive) => Ok(RxEvent::Nothing),
            (_, Message::Error(m)) => self.fail(TransferError::Peer(escape_display(&m))),
            (RxState::AwaitOffer, Message::Offer { kind, entries, total }) => {
                let bad = entries > MAX_ENTRIES
                    || (kind != OfferKind::Files && entries != 1)
                    || (kind == OfferKind::Stream && total != 0);
                if bad {
                    return self.fail(TransferError::BadOffer(format!(
                        "{entries} entries of kind {kind:?}"
                    )));
                }
                self.kind = kind;
                self.expected = entries;
                self.declared_total = total;
                self.state = RxState::Entries;
                Ok(RxEvent::Nothing)
            }
            (RxState::Entries, Message::Entry(e)) => {
                if self.entries.len() as u64 >= self.expected {
                    return self.fail(TransferError::BadOffer("more entries than announced".into()));
                }
                match self.add_entry(e) {
                    Ok(()) => Ok(RxEvent::Nothing),
                    Err(err) => self.fail(err),
                }
            }
            (RxState::Entries, Message::OfferEnd) => {
                if self.entries.len() as u64 != self.expected {
                    return self.fail(TransferError::BadOffer("fewer entries than announced".into()));
                }
                if self.kind != OfferKind::Stream && self.sum != self.declared_total {
                    return self.fail(TransferError::BadOffer("sizes do not add up to the total".into()));
                }
                if let Err(e) = self.check_clashes() {
                    return self.fail(e);
                }
                self.state = RxState::AwaitDecision;
                Ok(RxEvent::OfferReady)
            }
            (RxState::Receiving, Message::Skip(offset)) => {
                let index = self.current;
                match self.resume.remove(&index) {
                    Some((proposed, hasher)) if proposed == offset && !self.started => {
                        self.started = true;
                        self.in_file = offset;
                        self.hasher = Some(hasher);
                        Ok(RxEvent::Resumed { index, offset })
                    }
                    _ => self.fail(TransferError::Unexpected(
                        "skip without a matching resume proposal",
                    )),
                }
            }
            (RxState::Receiving, Message::Data(bytes)) => self.data(bytes),
            (RxState::Receiving, Message::ZData(frame)) => {
                if self.current >= self.entries.len() {
                    return self.fail(TransferError::Unexpected("data after the last file"));
                }
                Ok(RxEvent::Compressed {
                    index: self.current,
                    frame,
                })
            }
            (RxState::Receiving, Message::FileEnd(hash)) => {
                self.resume.remove(&self.current);
                let Some(e) = self.entries.get(self.current) else {
                    return self.fail(TransferError::Unexpected("file end after the last file"));
                };
                if e.size != UNKNOWN_SIZE && self.in_file != e.size {
                    return self.fail(TransferError::Unexpected("file ended before its size"));
                }
                if let Some(h) = self.hasher.take() {
                    let Some(hash) = hash else {
                        return self.fail(TransferError::Unexpected(
                            "the sender sent no hash for a file this side checks",
                        ));
                    };
                    if h.finalize() != blake3::Hash::from_bytes(hash) {
                        let name = escape_display(&e.path);
                        return self.fail(TransferError::HashMismatch(name));
                    }
                }
                let index = self.current;
                self.current += 1;
                self.skip_dirs();
                Ok(RxEvent::FileVerified { index })
            }
            (RxState::Receiving, Message::Done) => {
                if self.current < self.entries.len() {
                    return self.fail(TransferError::Unexpected("done before every file arrived"));
                }
                self.state = RxState::Finished;
                Ok(RxEvent::Finished)
            }
            (_, _) => self.fail(TransferError::Unexpected("message out of order")),
        }
    }

    /// File bytes for the current file: from a `Data` record, or what a
    /// `ZData` frame decompressed to ([`RxEvent::Compressed`]).
    pub fn data<'a>(&mut self, bytes: &'a [u8]) -> Result<RxEvent<'a>, TransferError> {
        if self.state != RxState::Receiving {
            return self.fail(TransferError::Unexpected("data out of order"));
        }
        self.started = true;
        self.resume.remove(&self.current);
        let Some(e) = self.entries.get(self.current) else {
            return self.fail(TransferError::Unexpected("data after the last file"));
        };
        let new_len = self.in_file.saturating_add(bytes.len() as u64);
        if e.size != UNKNOWN_SIZE && new_len > e.size {
            return self.fail(TransferError::Unexpected("more data than the file's size"));
        }
        self.in_file = new_len;
        self.received += bytes.len() as u64;
        if let Some(h) = &mut self.hasher {
            h.update(bytes);
        }
        Ok(RxEvent::Data {
            index: self.current,
            bytes,
        })
    }

    /// The message to send once [`RxEvent::Finished`] was returned.
    pub fn ack(&self) -> Vec<u8> {
        Message::Ack.to_vec()
    }
}

/// Orders paths component by component: as bytes, with `/` below every
/// other byte (NUL cannot occur in a valid path), so that `a/b` sorts right
/// after `a` and before `a-b`.
fn path_order(a: &str, b: &str) -> Ordering {
    let key = |c: &u8| if *c == b'/' { 0 } else { *c };
    a.as_bytes().iter().map(key).cmp(b.as_bytes().iter().map(key))
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

#[cfg(test)]
mod tests {
    use super::*;
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
            rx.handle(&rec)?;
        }
        rx.accept()?;
        let mut got: Vec<(usize, Vec<u8>)> = Vec::new();
        for (_, bytes) in data {
            let m = Message::Data(bytes).to_vec();
            if let RxEvent::Data { index, bytes } = rx.handle(&m)? {
                got.push((index, bytes.to_vec()));
            }
            let end = Message::FileEnd(Some(*blake3::hash(bytes).as_bytes())).to_vec();
            rx.handle(&end)?;
        }
        assert_eq!(rx.handle(&Message::Done.to_vec())?, RxEvent::Finished);
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
            rx.handle(&rec).unwrap();
        }
        rx.accept().unwrap();
        rx.handle(&Message::Data(b"abc").to_vec()).unwrap();
        rx.handle(&Message::FileEnd(Some(*blake3::hash(b"abc").as_bytes())).to_vec())
            .unwrap();
        // The second file too: the hasher starts again for every file.
        rx.handle(&Message::Data(b"xy").to_vec()).unwrap();
        let err = rx
            .handle(&Message::FileEnd(Some(*blake3::hash(b"xz").as_bytes())).to_vec())
            .unwrap_err();
        assert_eq!(err, TransferError::HashMismatch("b".into()));
        assert!(rx.handle(&Message::Done.to_vec()).is_err());
    }

    /// By default a file that arrived whole in this session is trusted to
    /// the AEAD (its hash is not recomputed); sizes are still enforced.
    #[test]
    fn by_default_only_sizes_are_checked_for_whole_files() {
        let mut rx = Receiver::new();
        for rec in offer_records(OfferKind::Files, &[file("a", 3)]) {
            rx.handle(&rec).unwrap();
        }
        rx.accept().unwrap();
        rx.handle(&Message::Data(b"ab").to_vec()).unwrap();
        let early = rx.clone();
        assert!(matches!(
            rx.handle(&Message::FileEnd(Some([0; 32])).to_vec()),
            Err(TransferError::Unexpected(_))
        ));
        let mut rx = early;
        rx.handle(&Message::Data(b"c").to_vec()).unwrap();
        assert_eq!(
            rx.handle(&Message::FileEnd(Some([0; 32])).to_vec()).unwrap(),
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
                res = rx.handle(&rec).map(|_| ());
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
                .map(|rec| rx.handle(&rec).map(|_| ()))
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
            .map(|rec| rx.handle(&rec).map(|_| ()))
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
            rx.handle(&rec).unwrap();
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
            rx.handle(&rec).unwrap();
        }
        let e = rx.handle(&rec).unwrap_err();
        assert!(matches!(e, TransferError::BadOffer(m) if m.contains("bytes of names")));
    }

    #[test]
    fn order_and_size_are_enforced() {
        let mut rx = Receiver::new();
        assert!(rx.handle(&Message::Data(b"x").to_vec()).is_err());
        let mut rx = Receiver::new();
        for rec in offer_records(OfferKind::Files, &[file("a", 1)]) {
            rx.handle(&rec).unwrap();
        }
        rx.accept().unwrap();
        assert!(rx.handle(&Message::Data(b"xy").to_vec()).is_err());
        // Lying totals.
        let mut rx = Receiver::new();
        rx.handle(
            &Message::Offer {
                kind: OfferKind::Files,
                entries: 1,
                total: 9,
            }
            .to_vec(),
        )
        .unwrap();
        rx.handle(&Message::Entry(file("a", 1)).to_vec()).unwrap();
        assert!(rx.handle(&Message::OfferEnd.to_vec()).is_err());
        // Done before all files.
        let mut rx = Receiver::new();
        for rec in offer_records(OfferKind::Files, &[file("a", 0)]) {
            rx.handle(&rec).unwrap();
        }
        rx.accept().unwrap();
        assert!(rx.handle(&Message::Done.to_vec()).is_err());
    }

    #[test]
    fn peer_errors_surface() {
        let mut rx = Receiver::new();
        let e = rx
            .handle(&Message::Error("disk \x1b[31mfull".into()).to_vec())
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
                let _ = rx.handle(r);
                let _ = rx.accept();
            }
        }
    }
}

#[cfg(test)]
mod resume_tests {
    use super::*;

    fn offer(rx: &mut Receiver, data: &[u8]) {
        let e = Entry {
            kind: EntryKind::File,
            executable: false,
            size: data.len() as u64,
            path: "f".into(),
        };
        for rec in offer_records(OfferKind::Files, &[e]) {
            rx.handle(&rec).unwrap();
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
        let acc = rx
            .accept_resuming(vec![(0, 6, prefix_hasher(&data[..6]))])
            .unwrap();
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
            rx.handle(&Message::Skip(6).to_vec()).unwrap(),
            RxEvent::Resumed { index: 0, offset: 6 }
        );
        rx.handle(&Message::Data(&data[6..]).to_vec()).unwrap();
        let end = Message::FileEnd(Some(*blake3::hash(data).as_bytes())).to_vec();
        assert_eq!(rx.handle(&end).unwrap(), RxEvent::FileVerified { index: 0 });
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
            rx.handle(&rec).unwrap();
        }
        assert!(rx.continue_from(5, vec![]).is_err());
        let msg = rx
            .continue_from(1, vec![(2, 6, prefix_hasher(b"012345"))])
            .unwrap();
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
            rx.handle(&Message::Skip(6).to_vec()).unwrap(),
            RxEvent::Resumed { index: 2, offset: 6 }
        );
        rx.handle(&Message::Data(b"6789").to_vec()).unwrap();
        let h = *blake3::hash(b"0123456789").as_bytes();
        assert_eq!(
            rx.handle(&Message::FileEnd(Some(h)).to_vec()).unwrap(),
            RxEvent::FileVerified { index: 2 }
        );
        rx.handle(&Message::Data(b"xy").to_vec()).unwrap();
        let h = *blake3::hash(b"xy").as_bytes();
        assert_eq!(
            rx.handle(&Message::FileEnd(Some(h)).to_vec()).unwrap(),
            RxEvent::FileVerified { index: 3 }
        );
        assert_eq!(rx.handle(&Message::Done.to_vec()).unwrap(), RxEvent::Finished);
    }

    #[test]
    fn a_wrong_prefix_fails_the_final_hash() {
        let data = b"hello resumable world";
        let mut rx = Receiver::new();
        offer(&mut rx, data);
        rx.accept_resuming(vec![(0, 6, prefix_hasher(b"HELLO "))])
            .unwrap();
        rx.handle(&Message::Skip(6).to_vec()).unwrap();
        rx.handle(&Message::Data(&data[6..]).to_vec()).unwrap();
        let end = Message::FileEnd(Some(*blake3::hash(data).as_bytes())).to_vec();
        assert!(matches!(rx.handle(&end), Err(TransferError::HashMismatch(_))));
    }

    #[test]
    fn skip_needs_a_matching_proposal_and_full_resend_still_works() {
        let data = b"abcdef";
        let mut rx = Receiver::new();
        offer(&mut rx, data);
        rx.accept().unwrap();
        assert!(rx.handle(&Message::Skip(3).to_vec()).is_err());
        // The sender may decline a proposal and resend everything.
        let mut rx = Receiver::new();
        offer(&mut rx, data);
        rx.accept_resuming(vec![(0, 3, prefix_hasher(b"abc"))]).unwrap();
        rx.handle(&Message::Data(data).to_vec()).unwrap();
        let end = Message::FileEnd(Some(*blake3::hash(data).as_bytes())).to_vec();
        assert_eq!(rx.handle(&end).unwrap(), RxEvent::FileVerified { index: 0 });
        // A skip to another offset than proposed is refused.
        let mut rx = Receiver::new();
        offer(&mut rx, data);
        rx.accept_resuming(vec![(0, 3, prefix_hasher(b"abc"))]).unwrap();
        assert!(rx.handle(&Message::Skip(4).to_vec()).is_err());
        // Proposals past the size are dropped.
        let mut rx = Receiver::new();
        offer(&mut rx, data);
        let acc = rx.accept_resuming(vec![(0, 99, prefix_hasher(b""))]).unwrap();
        assert_eq!(
            acc,
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
        rx.handle(&Message::Data(data).to_vec()).unwrap();
        assert_eq!(
            rx.handle(&Message::FileEnd(None).to_vec()).unwrap(),
            RxEvent::FileVerified { index: 0 }
        );
        // Resumed: the sender must send the hash.
        let mut rx = Receiver::new();
        offer(&mut rx, data);
        rx.accept_resuming(vec![(0, 3, prefix_hasher(b"abc"))]).unwrap();
        rx.handle(&Message::Skip(3).to_vec()).unwrap();
        rx.handle(&Message::Data(&data[3..]).to_vec()).unwrap();
        assert!(rx.handle(&Message::FileEnd(None).to_vec()).is_err());
        // --verify: asks for every hash in Accept, and refuses to go without.
        let mut rx = Receiver::new().verify(Verify::All);
        offer(&mut rx, data);
        let acc = rx.accept().unwrap();
        assert!(matches!(
            Message::decode(&acc),
            Ok(Message::Accept { hash_all: true, .. })
        ));
        rx.handle(&Message::Data(data).to_vec()).unwrap();
        assert!(rx.handle(&Message::FileEnd(None).to_vec()).is_err());
    }
}
