//! The packets of seed 002, under the seed's names and ids, and the
//! framing of a link.
//!
//! A link is one ordered byte stream (TCP, or a relay mailbox's pipe). The
//! side that dialled (outbound) starts it with the preamble `BRWM` and a
//! version byte (1), then both sides send frames:
//!
//! ```text
//! frame  = len:u16 (big-endian) | payload (len bytes)
//! ```
//!
//! Until the handshake is over the payload is a packet in the clear
//! (`id:u8 | body`): HELLO, HELLO_ACK, FIN, and a DISCONNECT refusing a
//! handshake. From FIN on every frame is a session record ([`crate::session`]:
//! `len` is the ciphertext's length, nonces count per direction) whose
//! plaintext is `id:u8 | body`.
//!
//! | id | name | body |
//! |---|---|---|
//! | 0x00 | HELLO | key_len:u16, g_len:u8 = 0, p_len:u8 = 0, key: Noise message 1 (32 bytes: `XX`; more: `IK` with the initiator's record) |
//! | 0x01 | HELLO_ACK | key_len:u16, key: Noise message 2 (its payload: the responder's record) |
//! | 0x02 | FIN | noise_len:u16, noise: Noise message 3 (`XX`, payload: the initiator's record; empty for `IK`), then one sealed record whose plaintext is the seed's FIN body: n:u8, random(n) |
//! | 0x03 | FIN_ACK | n:u8, random(n): FIN's bytes echoed (sealed) |
//! | 0x04 | DISCONNECT | reason_len:u8, reason: UTF-8, code:u8 ([`Reason`]) |
//! | 0x05 | KEEP_ALIVE | kind:u8 (0 probe, 1 answer, 2 rekey, 3 beat), nonce:u64 (beat: the sender's tag) |
//! | 0x06 | NLIST_REQ | digest: 32 bytes, count:u32, cursor: flag:u8 (+ node id: 15 bytes), max:u16 |
//! | 0x07 | NLIST_RES | flags:u8 (1 more, 2 push), next: node id: 15 bytes if more, count:u16 (≤ [`MAX_PAGE`]), count × (len:u16, record) |
//! | 0x08 | PAIR_REQ | step:u8, body_len:u16, body |
//! | 0x09 | PAIR_RES | step:u8, status:u8, body_len:u16, body |
//! | 0x0a | DATA | kind:u8 ([`DataKind`]), payload (the rest) |
//! | 0x0b | TUNNEL_REQ | a mux frame: Open ([`crate::tunnel::mux`]) |
//! | 0x0c | TUNNEL_DATA | a mux frame: Opened, Data, Window, Fin or Ping |
//! | 0x0d | TUNNEL_CLOSE | a mux frame: Reset |
//!
//! Every decoder here is total: lengths are checked against the frame
//! before anything is read, nothing is allocated but the bounded list of
//! a node list's record slices, and a frame that does not decode drops the
//! link (seed step 9).

use crate::keys::NodeId;
use crate::tunnel::mux::Frame;
use crate::wire::{DecodeError, EncodeError, Reader, Writer};

/// The outbound side's first bytes: the registry's claim for mesh links.
pub const MAGIC: &[u8; 4] = b"BRWM";
/// The link protocol's version, the preamble's fifth byte.
pub const VERSION: u8 = 1;
/// Bytes of the preamble.
pub const PREAMBLE_LEN: usize = 5;
/// Largest Noise message a handshake packet may carry (message 1 of `IK`
/// with a record is 32 + 48 + 16 + [`super::record::MAX_RECORD_LEN`]).
pub const MAX_NOISE: usize = 1024;
/// Longest DISCONNECT reason (the seed's u8 length).
pub const MAX_REASON: usize = 255;
/// Most records in one NLIST_RES page.
pub const MAX_PAGE: usize = 256;
/// Most pairing bytes in one PAIR_REQ / PAIR_RES.
pub const MAX_PAIR_BODY: usize = 4096;
/// Smallest FIN random (the seed lets the sender pick `n`; fewer than
/// this would confirm little).
pub const MIN_FIN_RANDOM: usize = 8;

/// A packet's id byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PacketId {
    /// 0x00.
    Hello = 0x00,
    /// 0x01.
    HelloAck = 0x01,
    /// 0x02.
    Fin = 0x02,
    /// 0x03.
    FinAck = 0x03,
    /// 0x04.
    Disconnect = 0x04,
    /// 0x05.
    KeepAlive = 0x05,
    /// 0x06.
    NlistReq = 0x06,
    /// 0x07.
    NlistRes = 0x07,
    /// 0x08.
    PairReq = 0x08,
    /// 0x09.
    PairRes = 0x09,
    /// 0x0a.
    Data = 0x0a,
    /// 0x0b.
    TunnelReq = 0x0b,
    /// 0x0c.
    TunnelData = 0x0c,
    /// 0x0d.
    TunnelClose = 0x0d,
}

impl PacketId {
    /// The id of byte `b`, if the seed names it.
    pub fn from_byte(b: u8) -> Option<Self> {
        use PacketId::*;
        Some(match b {
            0x00 => Hello,
            0x01 => HelloAck,
            0x02 => Fin,
            0x03 => FinAck,
            0x04 => Disconnect,
            0x05 => KeepAlive,
            0x06 => NlistReq,
            0x07 => NlistRes,
            0x08 => PairReq,
            0x09 => PairRes,
            0x0a => Data,
            0x0b => TunnelReq,
            0x0c => TunnelData,
            0x0d => TunnelClose,
            _ => return None,
        })
    }

    /// The seed's name.
    pub fn name(self) -> &'static str {
        use PacketId::*;
        match self {
            Hello => "HELLO",
            HelloAck => "HELLO_ACK",
            Fin => "FIN",
            FinAck => "FIN_ACK",
            Disconnect => "DISCONNECT",
            KeepAlive => "KEEP_ALIVE",
            NlistReq => "NLIST_REQ",
            NlistRes => "NLIST_RES",
            PairReq => "PAIR_REQ",
            PairRes => "PAIR_RES",
            Data => "DATA",
            TunnelReq => "TUNNEL_REQ",
            TunnelData => "TUNNEL_DATA",
            TunnelClose => "TUNNEL_CLOSE",
        }
    }
}

/// Why a link was closed (DISCONNECT's code, after the seed's reason text).
/// Unknown codes are kept, so a newer peer's reason still shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Anything else; the text says what.
    Other,
    /// The node is shutting down.
    Shutdown,
    /// No answer to a keepalive in time (the seed's "timeout").
    Timeout,
    /// A packet that did not decode or was not allowed at this point.
    Protocol,
    /// A record failed authentication, or a key was not the expected one.
    Authentication,
    /// The node is at a limit (links, handshakes); try later or elsewhere.
    Busy,
    /// Another link to the same node is kept instead of this one.
    Duplicate,
    /// The request needs a paired node.
    NotPaired,
    /// A code this version does not know.
    Unknown(u8),
}

impl Reason {
    /// The wire code.
    pub fn code(self) -> u8 {
        match self {
            Reason::Other => 0,
            Reason::Shutdown => 1,
            Reason::Timeout => 2,
            Reason::Protocol => 3,
            Reason::Authentication => 4,
            Reason::Busy => 5,
            Reason::Duplicate => 6,
            Reason::NotPaired => 7,
            Reason::Unknown(c) => c,
        }
    }

    /// The reason of wire code `c`.
    pub fn from_code(c: u8) -> Self {
        match c {
            0 => Reason::Other,
            1 => Reason::Shutdown,
            2 => Reason::Timeout,
            3 => Reason::Protocol,
            4 => Reason::Authentication,
            5 => Reason::Busy,
            6 => Reason::Duplicate,
            7 => Reason::NotPaired,
            c => Reason::Unknown(c),
        }
    }

    /// A short name for status output.
    pub fn name(self) -> &'static str {
        match self {
            Reason::Other => "other",
            Reason::Shutdown => "shutdown",
            Reason::Timeout => "timeout",
            Reason::Protocol => "protocol error",
            Reason::Authentication => "authentication failed",
            Reason::Busy => "busy",
            Reason::Duplicate => "duplicate link",
            Reason::NotPaired => "not paired",
            Reason::Unknown(_) => "unknown reason",
        }
    }
}

/// What a KEEP_ALIVE is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAliveKind {
    /// "Are you there?" (the seed's keepalive).
    Probe,
    /// The answer, echoing the probe's nonce.
    Answer,
    /// The sender's next record uses its next key (Noise `Rekey()`).
    Rekey,
    /// An idle link's turn: "I heard you", sent one interval after the
    /// peer's last packet; the nonce carries the sender's tag (its
    /// node-list digest).
    Beat,
}

/// What a DATA datagram carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataKind {
    /// `burrow node ping`: answer with a pong carrying the same payload.
    Ping,
    /// The answer to a ping.
    Pong,
    /// A circuit cell (seed 004; not yet interpreted).
    Cell,
}

impl DataKind {
    fn code(self) -> u8 {
        match self {
            DataKind::Ping => 0,
            DataKind::Pong => 1,
            DataKind::Cell => 2,
        }
    }
}

/// Where a node list page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NlistReq {
    /// The asker's digest of its table ([`super::record`]): equal digests
    /// need no records.
    pub digest: [u8; 32],
    /// How many records the asker holds.
    pub count: u32,
    /// Start after this node id (ids ascending); `None`: from the first.
    pub cursor: Option<NodeId>,
    /// Most records the asker wants in the page.
    pub max: u16,
}

/// One packet, borrowing from its frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    /// Noise message 1.
    Hello {
        /// The Noise message.
        key: &'a [u8],
    },
    /// Noise message 2.
    HelloAck {
        /// The Noise message.
        key: &'a [u8],
    },
    /// Noise message 3 and the first sealed record.
    Fin {
        /// Noise message 3 (empty after `IK`).
        noise: &'a [u8],
        /// A whole session record (length prefix included) sealing `n | random`.
        sealed: &'a [u8],
    },
    /// FIN's random bytes, echoed.
    FinAck {
        /// The echoed bytes.
        random: &'a [u8],
    },
    /// The link ends.
    Disconnect {
        /// Why (code).
        reason: Reason,
        /// Why (text from the peer: untrusted, escape before showing).
        text: &'a str,
    },
    /// Liveness.
    KeepAlive {
        /// Probe, answer or rekey.
        kind: KeepAliveKind,
        /// Echoed by the answer.
        nonce: u64,
    },
    /// Asks for node records.
    NlistReq(NlistReq),
    /// Node records.
    NlistRes {
        /// More pages follow from this id.
        next: Option<NodeId>,
        /// Sent unasked (a changed record), not as an answer.
        push: bool,
        /// The records, each still signed (decoded by [`super::record`]).
        records: Vec<&'a [u8]>,
    },
    /// A pairing step from the side that asks.
    PairReq {
        /// Which step.
        step: u8,
        /// Its bytes.
        body: &'a [u8],
    },
    /// A pairing step from the side that was asked.
    PairRes {
        /// Which step.
        step: u8,
        /// 0: go on / done; anything else: refused (see the pairing machine).
        status: u8,
        /// Its bytes.
        body: &'a [u8],
    },
    /// A datagram between linked nodes.
    Data {
        /// What it is.
        kind: DataKind,
        /// Its bytes.
        payload: &'a [u8],
    },
    /// A stream opens (mux `Open`).
    TunnelReq(Frame<'a>),
    /// Stream traffic (mux `Opened`, `Data`, `Window`, `Fin`, `Ping`).
    TunnelData(Frame<'a>),
    /// A stream is reset (mux `Reset`).
    TunnelClose(Frame<'a>),
}

/// Reads FIN's (and FIN_ACK's) `n:u8 | random(n)`.
pub fn decode_random(b: &[u8]) -> Result<&[u8], DecodeError> {
    let mut r = Reader::new(b);
    let n = usize::from(r.u8()?);
    if n < MIN_FIN_RANDOM {
        return Err(DecodeError::Invalid {
            what: "FIN random",
            reason: "fewer bytes than the minimum",
        });
    }
    let random = r.bytes(n)?;
    r.finish()?;
    Ok(random)
}

/// Writes `n:u8 | random`.
pub fn encode_random(random: &[u8], out: &mut Vec<u8>) -> Result<(), EncodeError> {
    Writer::new(out).bytes_u8("FIN random", 255, random)?;
    Ok(())
}

impl<'a> Packet<'a> {
    /// This packet's id.
    pub fn id(&self) -> PacketId {
        match self {
            Packet::Hello { .. } => PacketId::Hello,
            Packet::HelloAck { .. } => PacketId::HelloAck,
            Packet::Fin { .. } => PacketId::Fin,
            Packet::FinAck { .. } => PacketId::FinAck,
            Packet::Disconnect { .. } => PacketId::Disconnect,
            Packet::KeepAlive { .. } => PacketId::KeepAlive,
            Packet::NlistReq(_) => PacketId::NlistReq,
            Packet::NlistRes { .. } => PacketId::NlistRes,
            Packet::PairReq { .. } => PacketId::PairReq,
            Packet::PairRes { .. } => PacketId::PairRes,
            Packet::Data { .. } => PacketId::Data,
            Packet::TunnelReq(_) => PacketId::TunnelReq,
            Packet::TunnelData(_) => PacketId::TunnelData,
            Packet::TunnelClose(_) => PacketId::TunnelClose,
        }
    }

    /// Decodes one packet (`id | body`, a frame's payload or a record's plaintext).
    pub fn decode(b: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let code = r.u8()?;
        let id = PacketId::from_byte(code).ok_or(DecodeError::Unknown {
            what: "mesh packet",
            value: u64::from(code),
        })?;
        let p = match id {
            PacketId::Hello => {
                let key_len = usize::from(r.u16()?);
                let (g, p) = (r.u8()?, r.u8()?);
                if g != 0 || p != 0 {
                    return Err(DecodeError::Invalid {
                        what: "HELLO",
                        reason: "only the X25519 suite (empty g and p) is spoken",
                    });
                }
                if key_len > MAX_NOISE {
                    return Err(DecodeError::TooLong {
                        what: "HELLO key",
                        len: key_len,
                        max: MAX_NOISE,
                    });
                }
                Packet::Hello {
                    key: r.bytes(key_len)?,
                }
            }
            PacketId::HelloAck => Packet::HelloAck {
                key: r.bytes_u16("HELLO_ACK key", MAX_NOISE)?,
            },
            PacketId::Fin => {
                let noise = r.bytes_u16("FIN noise", MAX_NOISE)?;
                let sealed = r.rest();
                let len =
                    crate::session::peek_record_len(sealed)?.ok_or(DecodeError::Truncated { needed: 2 })?;
                if sealed.len() != crate::session::LEN_PREFIX + len {
                    return Err(DecodeError::Invalid {
                        what: "FIN",
                        reason: "the sealed record does not fill the frame",
                    });
                }
                Packet::Fin { noise, sealed }
            }
            PacketId::FinAck => Packet::FinAck {
                random: decode_random(r.rest())?,
            },
            PacketId::Disconnect => {
                let text = r.str_u8("DISCONNECT reason", MAX_REASON)?;
                let reason = Reason::from_code(r.u8()?);
                Packet::Disconnect { reason, text }
            }
            PacketId::KeepAlive => {
                let kind = match r.u8()? {
                    0 => KeepAliveKind::Probe,
                    1 => KeepAliveKind::Answer,
                    2 => KeepAliveKind::Rekey,
                    3 => KeepAliveKind::Beat,
                    k => {
                        return Err(DecodeError::Unknown {
                            what: "KEEP_ALIVE kind",
                            value: u64::from(k),
                        });
                    }
                };
                Packet::KeepAlive {
                    kind,
                    nonce: r.u64()?,
                }
            }
            PacketId::NlistReq => {
                let digest = r.array::<32>()?;
                let count = r.u32()?;
                let cursor = match r.u8()? {
                    0 => None,
                    1 => Some(NodeId(r.array::<15>()?)),
                    f => {
                        return Err(DecodeError::Unknown {
                            what: "NLIST_REQ cursor flag",
                            value: u64::from(f),
                        });
                    }
                };
                let max = r.u16()?;
                Packet::NlistReq(NlistReq {
                    digest,
                    count,
                    cursor,
                    max,
                })
            }
            PacketId::NlistRes => {
                let flags = r.u8()?;
                if flags & !3 != 0 {
                    return Err(DecodeError::Unknown {
                        what: "NLIST_RES flags",
                        value: u64::from(flags),
                    });
                }
                let next = if flags & 1 != 0 {
                    Some(NodeId(r.array::<15>()?))
                } else {
                    None
                };
                let count = usize::from(r.u16()?);
                if count > MAX_PAGE {
                    return Err(DecodeError::TooLong {
                        what: "NLIST_RES page",
                        len: count,
                        max: MAX_PAGE,
                    });
                }
                // Each record needs at least its two length bytes and the
                // smallest record, so `count` is bounded by what arrived.
                let least = count * (2 + super::record::MIN_RECORD_LEN);
                if r.remaining() < least {
                    return Err(DecodeError::Truncated {
                        needed: least - r.remaining(),
                    });
                }
                let mut records = Vec::with_capacity(count);
                for _ in 0..count {
                    let rec = r.bytes_u16("node record", super::record::MAX_RECORD_LEN)?;
                    if rec.len() < super::record::MIN_RECORD_LEN {
                        return Err(DecodeError::Invalid {
                            what: "node record",
                            reason: "shorter than any record",
                        });
                    }
                    records.push(rec);
                }
                Packet::NlistRes {
                    next,
                    push: flags & 2 != 0,
                    records,
                }
            }
            PacketId::PairReq => {
                let step = r.u8()?;
                Packet::PairReq {
                    step,
                    body: r.bytes_u16("PAIR_REQ body", MAX_PAIR_BODY)?,
                }
            }
            PacketId::PairRes => {
                let step = r.u8()?;
                let status = r.u8()?;
                Packet::PairRes {
                    step,
                    status,
                    body: r.bytes_u16("PAIR_RES body", MAX_PAIR_BODY)?,
                }
            }
            PacketId::Data => {
                let kind = match r.u8()? {
                    0 => DataKind::Ping,
                    1 => DataKind::Pong,
                    2 => DataKind::Cell,
                    k => {
                        return Err(DecodeError::Unknown {
                            what: "DATA kind",
                            value: u64::from(k),
                        });
                    }
                };
                Packet::Data {
                    kind,
                    payload: r.rest(),
                }
            }
            PacketId::TunnelReq | PacketId::TunnelData | PacketId::TunnelClose => {
                let frame = Frame::decode(r.rest())?;
                let fits = match (&frame, id) {
                    (Frame::Open { .. }, PacketId::TunnelReq) => true,
                    (Frame::Reset { .. }, PacketId::TunnelClose) => true,
                    (Frame::Open { .. } | Frame::Reset { .. }, _) => false,
                    (_, PacketId::TunnelData) => true,
                    _ => false,
                };
                if !fits {
                    return Err(DecodeError::Invalid {
                        what: id.name(),
                        reason: "carries a mux frame of another kind",
                    });
                }
                match id {
                    PacketId::TunnelReq => Packet::TunnelReq(frame),
                    PacketId::TunnelClose => Packet::TunnelClose(frame),
                    _ => Packet::TunnelData(frame),
                }
            }
        };
        r.finish()?;
        Ok(p)
    }

    /// Appends `id | body` to `out`; a field that does not fit its format
    /// is an error and nothing is appended.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let start = out.len();
        let r = self.encode_inner(out);
        if r.is_err() {
            out.truncate(start);
        }
        r
    }

    fn encode_inner(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        out.push(self.id() as u8);
        let mut w = Writer::new(out);
        match self {
            Packet::Hello { key } => {
                check("HELLO key", key.len(), MAX_NOISE)?;
                w.u16(key.len() as u16).u8(0).u8(0).bytes(key);
            }
            Packet::HelloAck { key } => {
                w.bytes_u16("HELLO_ACK key", MAX_NOISE, key)?;
            }
            Packet::Fin { noise, sealed } => {
                w.bytes_u16("FIN noise", MAX_NOISE, noise)?.bytes(sealed);
            }
            Packet::FinAck { random } => {
                w.bytes_u8("FIN random", 255, random)?;
            }
            Packet::Disconnect { reason, text } => {
                w.bytes_u8(
                    "DISCONNECT reason",
                    MAX_REASON,
                    crate::wire::clip(text, MAX_REASON).as_bytes(),
                )?
                .u8(reason.code());
            }
            Packet::KeepAlive { kind, nonce } => {
                let k = match kind {
                    KeepAliveKind::Probe => 0,
                    KeepAliveKind::Answer => 1,
                    KeepAliveKind::Rekey => 2,
                    KeepAliveKind::Beat => 3,
                };
                w.u8(k).u64(*nonce);
            }
            Packet::NlistReq(q) => {
                w.bytes(&q.digest).u32(q.count);
                match q.cursor {
                    None => w.u8(0),
                    Some(id) => w.u8(1).bytes(&id.0),
                };
                w.u16(q.max);
            }
            Packet::NlistRes { next, push, records } => {
                check("NLIST_RES page", records.len(), MAX_PAGE)?;
                let flags = u8::from(next.is_some()) | (u8::from(*push) << 1);
                w.u8(flags);
                if let Some(id) = next {
                    w.bytes(&id.0);
                }
                w.u16(records.len() as u16);
                for rec in records {
                    if rec.len() < super::record::MIN_RECORD_LEN {
                        return Err(EncodeError {
                            what: "node record (too short)",
                            len: rec.len(),
                            max: super::record::MAX_RECORD_LEN,
                        });
                    }
                    w.bytes_u16("node record", super::record::MAX_RECORD_LEN, rec)?;
                }
            }
            Packet::PairReq { step, body } => {
                w.u8(*step).bytes_u16("PAIR_REQ body", MAX_PAIR_BODY, body)?;
            }
            Packet::PairRes { step, status, body } => {
                w.u8(*step)
                    .u8(*status)
                    .bytes_u16("PAIR_RES body", MAX_PAIR_BODY, body)?;
            }
            Packet::Data { kind, payload } => {
                w.u8(kind.code()).bytes(payload);
            }
            Packet::TunnelReq(f) | Packet::TunnelData(f) | Packet::TunnelClose(f) => {
                f.encode(out);
            }
        }
        Ok(())
    }
}

fn check(what: &'static str, len: usize, max: usize) -> Result<(), EncodeError> {
    if len > max {
        return Err(EncodeError { what, len, max });
    }
    Ok(())
}

/// Where a frame ends, if `buf` holds all of it: `Ok(None)` = more bytes
/// needed. Returns the payload's length (without the prefix).
pub fn peek_frame(buf: &[u8]) -> Option<usize> {
    (buf.len() >= 2).then(|| usize::from(u16::from_be_bytes([buf[0], buf[1]])))
}

/// Checks the outbound side's preamble.
pub fn check_preamble(b: &[u8; PREAMBLE_LEN]) -> Result<(), DecodeError> {
    if &b[..4] != MAGIC {
        return Err(DecodeError::Invalid {
            what: "link preamble",
            reason: "not a burrow mesh link",
        });
    }
    if b[4] != VERSION {
        return Err(DecodeError::Unknown {
            what: "mesh link version",
            value: u64::from(b[4]),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::mux::{Host, ResetReason};

    fn roundtrip(p: &Packet<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        p.encode(&mut out).unwrap();
        assert_eq!(&Packet::decode(&out).unwrap(), p, "{p:?}");
        out
    }

    fn rec() -> Vec<u8> {
        vec![7u8; super::super::record::MIN_RECORD_LEN]
    }

    #[test]
    fn every_seed_packet_round_trips_with_its_id() {
        let r = rec();
        let packets = [
            Packet::Hello { key: &[1; 32] },
            Packet::HelloAck { key: &[2; 96] },
            Packet::FinAck { random: &[3; 16] },
            Packet::Disconnect {
                reason: Reason::Timeout,
                text: "timeout",
            },
            Packet::KeepAlive {
                kind: KeepAliveKind::Answer,
                nonce: 9,
            },
            Packet::NlistReq(NlistReq {
                digest: [4; 32],
                count: 3,
                cursor: Some(NodeId([5; 15])),
                max: 256,
            }),
            Packet::NlistRes {
                next: None,
                push: true,
                records: vec![&r, &r],
            },
            Packet::PairReq {
                step: 1,
                body: b"msg",
            },
            Packet::PairRes {
                step: 1,
                status: 0,
                body: b"",
            },
            Packet::Data {
                kind: DataKind::Ping,
                payload: b"x",
            },
            Packet::TunnelReq(Frame::Open {
                stream: 1,
                host: Host::Name("example.org".into()),
                port: 443,
            }),
            Packet::TunnelData(Frame::Data {
                stream: 1,
                bytes: b"abc",
            }),
            Packet::TunnelClose(Frame::Reset {
                stream: 1,
                reason: ResetReason::Aborted,
                message: "gone".into(),
            }),
        ];
        for p in &packets {
            let b = roundtrip(p);
            assert_eq!(b[0], p.id() as u8);
        }
        let mut ids: Vec<u8> = packets.iter().map(|p| p.id() as u8).collect();
        ids.extend([PacketId::Fin as u8]);
        ids.sort();
        assert_eq!(ids, (0..=0x0d).collect::<Vec<u8>>(), "every seed id, once");
        for b in 0..=0x0du8 {
            assert!(PacketId::from_byte(b).is_some(), "{b:#x}");
        }
        assert!(PacketId::from_byte(0x0e).is_none());
    }

    /// The layouts, byte for byte (a change here is a new link version).
    #[test]
    fn hex_snapshots() {
        let hex = |p: &Packet<'_>| {
            let mut out = Vec::new();
            p.encode(&mut out).unwrap();
            hex::encode(out)
        };
        assert_eq!(hex(&Packet::Hello { key: &[0xaa; 2] }), "0000020000aaaa");
        assert_eq!(hex(&Packet::HelloAck { key: &[0xbb] }), "010001bb");
        assert_eq!(
            hex(&Packet::Disconnect {
                reason: Reason::Timeout,
                text: "timeout"
            }),
            "040774696d656f757402"
        );
        assert_eq!(
            hex(&Packet::KeepAlive {
                kind: KeepAliveKind::Probe,
                nonce: 0x0102
            }),
            "05000000000000000102"
        );
        assert_eq!(
            hex(&Packet::KeepAlive {
                kind: KeepAliveKind::Beat,
                nonce: 0xa1b2
            }),
            "0503000000000000a1b2"
        );
        let beat = Packet::KeepAlive {
            kind: KeepAliveKind::Beat,
            nonce: u64::MAX,
        };
        let mut b = Vec::new();
        beat.encode(&mut b).unwrap();
        assert_eq!(Packet::decode(&b).unwrap(), beat);
        assert_eq!(
            hex(&Packet::Data {
                kind: DataKind::Pong,
                payload: b"hi"
            }),
            "0a016869"
        );
        assert_eq!(
            hex(&Packet::PairRes {
                step: 2,
                status: 1,
                body: b"z"
            }),
            "09020100017a"
        );
        assert_eq!(
            hex(&Packet::TunnelData(Frame::Window {
                stream: 3,
                credit: 16
            })),
            "0c040000000300000010"
        );
    }

    #[test]
    fn what_the_seed_leaves_weak_is_refused() {
        // A peer-chosen group.
        assert!(Packet::decode(&hex::decode("0000020102aaaa").unwrap()).is_err());
        // A FIN whose sealed record does not fill the frame.
        let mut fin = vec![0x02, 0, 0, 0, 16];
        fin.extend([0u8; 17]);
        assert!(Packet::decode(&fin).is_err());
        fin.pop();
        assert!(Packet::decode(&fin).is_ok());
        // Too few FIN random bytes.
        assert!(decode_random(&[2, 1, 2]).is_err());
        assert_eq!(decode_random(&[8, 1, 2, 3, 4, 5, 6, 7, 8]).unwrap().len(), 8);
        // A mux frame in the wrong tunnel packet.
        let mut b = Vec::new();
        Packet::TunnelData(Frame::Fin { stream: 1 })
            .encode(&mut b)
            .unwrap();
        b[0] = PacketId::TunnelClose as u8;
        assert!(Packet::decode(&b).is_err());
        b[0] = PacketId::TunnelReq as u8;
        assert!(Packet::decode(&b).is_err());
        // Unknown ids, kinds and flags.
        for bad in [
            &[0x0e][..],
            &[0x05, 4, 0, 0, 0, 0, 0, 0, 0, 0],
            &[0x0a, 9],
            &[0x07, 4, 0, 0],
        ] {
            assert!(
                matches!(Packet::decode(bad), Err(DecodeError::Unknown { .. })),
                "{bad:?}"
            );
        }
        // Trailing bytes.
        assert!(Packet::decode(&[0x05, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn a_page_cannot_claim_more_records_than_arrived() {
        // 256 records announced, two bytes sent: refused before allocating.
        let b = [0x07, 0, 1, 0];
        assert!(matches!(Packet::decode(&b), Err(DecodeError::Truncated { .. })));
        let b = [0x07, 0, 1, 1];
        assert!(matches!(Packet::decode(&b), Err(DecodeError::TooLong { .. })));
    }

    #[test]
    fn an_unknown_disconnect_code_is_kept() {
        let b = [0x04, 1, b'x', 200];
        assert_eq!(
            Packet::decode(&b).unwrap(),
            Packet::Disconnect {
                reason: Reason::Unknown(200),
                text: "x"
            }
        );
        let long = "é".repeat(200);
        let mut out = Vec::new();
        Packet::Disconnect {
            reason: Reason::Busy,
            text: &long,
        }
        .encode(&mut out)
        .unwrap();
        assert!(out.len() <= 2 + MAX_REASON + 1);
        assert!(Packet::decode(&out).is_ok(), "clipped on a character boundary");
    }

    #[test]
    fn the_preamble() {
        assert!(check_preamble(b"BRWM\x01").is_ok());
        assert!(check_preamble(b"BRWM\x02").is_err());
        assert!(check_preamble(b"BRWS\x01").is_err());
    }
}
