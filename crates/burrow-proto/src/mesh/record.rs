//! Signed node records: what a node says about itself, and the only thing
//! node lists (NLIST_REQ / NLIST_RES) carry.
//!
//! ```text
//! record = version:u8 (1)
//!        | ed25519:[32] | x25519:[32]         the node's keys (its id is their fingerprint)
//!        | flags:u8                           Flags: 1 exit, 2 onion relay, 4 behind NAT, 8 client, 16 inbox client, 32 onion client (unknown bits kept)
//!        | seq:u64                            grows with every change the owner signs
//!        | issued:u64 | expires:u64           Unix seconds; expires ≤ issued + MAX_TTL
//!        | name: len:u8 (≤ 63) + UTF-8        what the owner calls itself (untrusted)
//!        | addrs: count:u8 (≤ 8) × (kind:u8 4|6, ip:[4|16], port:u16)
//!        | relay: len:u8 (≤ 128) + printable ASCII (HOST:PORT#FINGERPRINT)   a relay mailbox the node is reachable through, or empty
//!        | sig:[64]                           Ed25519 over "burrow mesh record v1" ‖ everything before it
//! ```
//!
//! A record is checked before anything is believed ([`NodeRecord::check`]):
//! the signature under its own Ed25519 key, the expiry within
//! [`MAX_TTL`] of its issue time, the issue time not in the future beyond
//! [`MAX_SKEW`], and a sequence number above the one already held. Only
//! the owner can make a record, so nobody can say "X is down" on X's
//! behalf: X is offline to a node when its links to X are down and its
//! record runs out. Duplicates are recognised by (node id, seq).

use std::net::SocketAddr;

use thiserror::Error;

use crate::keys::{Identity, NodeId, PublicIdentity};
use crate::wire::{DecodeError, EncodeError, Reader, Writer};

/// The record format's version byte.
pub const RECORD_VERSION: u8 = 1;
/// What every record signature starts with.
const SIG_CONTEXT: &[u8] = b"burrow mesh record v1";
/// Longest encoded record.
pub const MAX_RECORD_LEN: usize = 512;
/// Shortest encoded record (no name, no address, no relay).
pub const MIN_RECORD_LEN: usize = 1 + 32 + 32 + 1 + 8 + 8 + 8 + 1 + 1 + 1 + 64;
/// Longest node name.
pub const MAX_NAME: usize = 63;
/// Most addresses in a record.
pub const MAX_ADDRS: usize = 8;
/// Longest relay address.
pub const MAX_RELAY: usize = 128;
/// Longest validity of a record (seconds): the owner re-signs at half of it.
pub const MAX_TTL: u64 = 3600;
/// How far in the future a record's issue time may be (clock skew).
pub const MAX_SKEW: u64 = 300;

/// What a node offers (record flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags(pub u8);

impl Flags {
    /// It lets paired nodes out to the internet (`burrow exit` policy).
    pub const EXIT: u8 = 1;
    /// It relays onion circuits (seed 004).
    pub const ONION_RELAY: u8 = 2;
    /// It accepts no inbound connections: reach it through its relay.
    pub const BEHIND_NAT: u8 = 4;
    /// Not a node: a client's link (`burrow proxy --mesh`) that only asks
    /// for tunnels; never listed, never gossiped, never dialled back.
    pub const CLIENT: u8 = 8;
    /// With [`Flags::CLIENT`]: the client sends files to the node's inbox
    /// (`burrow send --to`), not tunnels.
    pub const INBOX: u8 = 16;
    /// With [`Flags::CLIENT`]: an onion client (seed 004) or a directory
    /// authority checking reachability, under a fresh key: only circuit
    /// cells, from anyone, at a node that relays circuits.
    pub const ONION_CLIENT: u8 = 32;

    /// Whether `bit` is set.
    pub fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }
}

/// A decoded record (the bytes it was decoded from stay the signed form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    /// The node's keys.
    pub keys: PublicIdentity,
    /// What it offers.
    pub flags: Flags,
    /// Sequence number.
    pub seq: u64,
    /// Unix seconds when signed.
    pub issued: u64,
    /// Unix seconds when it runs out.
    pub expires: u64,
    /// What it calls itself (from the peer: escape before showing).
    pub name: String,
    /// Where it listens.
    pub addrs: Vec<SocketAddr>,
    /// A relay it can be reached through (`host:port`), if any.
    pub relay: Option<String>,
    sig: [u8; 64],
}

/// Why a record is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RecordError {
    /// It does not decode.
    #[error("malformed node record: {0}")]
    Malformed(#[from] DecodeError),
    /// The signature does not check under the record's own key.
    #[error("node record with a bad signature")]
    BadSignature,
    /// It ran out.
    #[error("node record expired")]
    Expired,
    /// It claims to be valid for longer than [`MAX_TTL`], or expires before it was issued.
    #[error("node record valid for too long")]
    TooLong,
    /// Issued too far in the future.
    #[error("node record from the future (clock skew)")]
    FromTheFuture,
    /// Not newer than the record already held.
    #[error("node record not newer than the one held (seq {got} ≤ {held})")]
    Stale {
        /// The record's sequence number.
        got: u64,
        /// The one held.
        held: u64,
    },
    /// A field does not fit the format.
    #[error("cannot encode node record: {0}")]
    Encode(#[from] EncodeError),
}

/// The fields a node signs about itself.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Claims {
    /// What it offers.
    pub flags: Flags,
    /// Sequence number (the caller keeps it growing across restarts).
    pub seq: u64,
    /// Unix seconds now.
    pub issued: u64,
    /// Validity in seconds (at most [`MAX_TTL`]).
    pub ttl: u64,
    /// Its name.
    pub name: String,
    /// Its addresses.
    pub addrs: Vec<SocketAddr>,
    /// A relay mailbox, if any.
    pub relay: Option<String>,
}

impl NodeRecord {
    /// The node's id.
    pub fn id(&self) -> NodeId {
        self.keys.id()
    }

    /// Signs `claims` with `identity`: the record's bytes.
    pub fn sign(identity: &Identity, claims: &Claims) -> Result<Vec<u8>, RecordError> {
        if claims.ttl > MAX_TTL {
            return Err(RecordError::TooLong);
        }
        let keys = identity.public();
        let mut out = Vec::with_capacity(MAX_RECORD_LEN);
        let mut w = Writer::new(&mut out);
        w.u8(RECORD_VERSION)
            .bytes(&keys.ed25519)
            .bytes(&keys.x25519)
            .u8(claims.flags.0)
            .u64(claims.seq)
            .u64(claims.issued)
            .u64(claims.issued.saturating_add(claims.ttl))
            .bytes_u8("node name", MAX_NAME, claims.name.as_bytes())?;
        if claims.addrs.len() > MAX_ADDRS {
            return Err(EncodeError {
                what: "node addresses",
                len: claims.addrs.len(),
                max: MAX_ADDRS,
            }
            .into());
        }
        w.u8(claims.addrs.len() as u8);
        for a in &claims.addrs {
            w.socket_addr(a);
        }
        let relay = claims.relay.as_deref().unwrap_or("");
        if !relay.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(DecodeError::Invalid {
                what: "relay address",
                reason: "not printable ASCII",
            }
            .into());
        }
        w.bytes_u8("relay address", MAX_RELAY, relay.as_bytes())?;
        let sig = identity.sign(&signed_bytes(&out));
        out.extend_from_slice(&sig);
        Ok(out)
    }

    /// Decodes a record without checking it (use [`NodeRecord::check`]).
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        if b.len() > MAX_RECORD_LEN {
            return Err(DecodeError::TooLong {
                what: "node record",
                len: b.len(),
                max: MAX_RECORD_LEN,
            });
        }
        let mut r = Reader::new(b);
        let v = r.u8()?;
        if v != RECORD_VERSION {
            return Err(DecodeError::Unknown {
                what: "node record version",
                value: u64::from(v),
            });
        }
        let ed25519 = r.array::<32>()?;
        let x25519 = r.array::<32>()?;
        let flags = Flags(r.u8()?);
        let seq = r.u64()?;
        let issued = r.u64()?;
        let expires = r.u64()?;
        let name = r.str_u8("node name", MAX_NAME)?.to_owned();
        let count = usize::from(r.u8()?);
        if count > MAX_ADDRS {
            return Err(DecodeError::TooLong {
                what: "node addresses",
                len: count,
                max: MAX_ADDRS,
            });
        }
        let mut addrs = Vec::with_capacity(count);
        for _ in 0..count {
            addrs.push(r.socket_addr()?);
        }
        let relay = r.str_u8("relay address", MAX_RELAY)?;
        // Shown in errors and status: printable ASCII only (no escapes).
        if !relay.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(DecodeError::Invalid {
                what: "relay address",
                reason: "not printable ASCII",
            });
        }
        let relay = (!relay.is_empty()).then(|| relay.to_owned());
        let sig = r.array::<64>()?;
        r.finish()?;
        Ok(NodeRecord {
            keys: PublicIdentity { x25519, ed25519 },
            flags,
            seq,
            issued,
            expires,
            name,
            addrs,
            relay,
            sig,
        })
    }

    /// Decodes and checks a record: signed by its own key, valid at `now`
    /// (Unix seconds), newer than `held` (the sequence number already
    /// known for this node, if any).
    pub fn verify(b: &[u8], now: u64, held: Option<u64>) -> Result<Self, RecordError> {
        let rec = Self::decode(b)?;
        rec.check(b, now, held)?;
        Ok(rec)
    }

    /// Only the signature: `b` (the bytes this record was decoded from) is
    /// signed by the record's own Ed25519 key. A link checks this much
    /// of the peer's record; the node table checks the rest.
    pub fn check_signature(&self, b: &[u8]) -> Result<(), RecordError> {
        if b.len() < 64
            || b[b.len() - 64..] != self.sig
            || !self.keys.verify(&signed_bytes(&b[..b.len() - 64]), &self.sig)
        {
            return Err(RecordError::BadSignature);
        }
        Ok(())
    }

    /// The checks of [`NodeRecord::verify`] on a decoded record and its bytes.
    pub fn check(&self, b: &[u8], now: u64, held: Option<u64>) -> Result<(), RecordError> {
        self.check_signature(b)?;
        if self.expires < self.issued || self.expires - self.issued > MAX_TTL {
            return Err(RecordError::TooLong);
        }
        if self.issued > now.saturating_add(MAX_SKEW) {
            return Err(RecordError::FromTheFuture);
        }
        if self.expires <= now {
            return Err(RecordError::Expired);
        }
        if let Some(held) = held
            && self.seq <= held
        {
            return Err(RecordError::Stale { got: self.seq, held });
        }
        Ok(())
    }
}

fn signed_bytes(body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIG_CONTEXT.len() + body.len());
    m.extend_from_slice(SIG_CONTEXT);
    m.extend_from_slice(body);
    m
}

/// The digest NLIST_REQ carries: BLAKE3 over the held (node id, seq)
/// pairs in id order. Two nodes with equal digests hold the same records.
pub fn digest<'a>(entries: impl IntoIterator<Item = (&'a NodeId, u64)>) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"burrow mesh nlist digest v1");
    for (id, seq) in entries {
        h.update(&id.0);
        h.update(&seq.to_be_bytes());
    }
    *h.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::seeded;

    fn claims() -> Claims {
        Claims {
            flags: Flags(Flags::EXIT),
            seq: 5,
            issued: 1_000_000,
            ttl: 3600,
            name: "home".into(),
            addrs: vec![
                "10.0.0.1:7000".parse().unwrap(),
                "[fd00::1]:7000".parse().unwrap(),
            ],
            relay: Some("relay.example:4433".into()),
        }
    }

    #[test]
    fn a_signed_record_checks_and_reads_back() {
        let id = Identity::generate(&mut seeded(1));
        let b = NodeRecord::sign(&id, &claims()).unwrap();
        assert!(b.len() <= MAX_RECORD_LEN && b.len() >= MIN_RECORD_LEN);
        let r = NodeRecord::verify(&b, 1_000_010, Some(4)).unwrap();
        assert_eq!(r.id(), id.public().id());
        assert_eq!(r.name, "home");
        assert_eq!(r.addrs.len(), 2);
        assert_eq!(r.relay.as_deref(), Some("relay.example:4433"));
        assert!(r.flags.has(Flags::EXIT) && !r.flags.has(Flags::BEHIND_NAT));
        // The smallest record is MIN_RECORD_LEN.
        let small = NodeRecord::sign(
            &id,
            &Claims {
                ttl: 60,
                ..Claims::default()
            },
        )
        .unwrap();
        assert_eq!(small.len(), MIN_RECORD_LEN);
        // The largest fits MAX_RECORD_LEN.
        let big = Claims {
            name: "n".repeat(MAX_NAME),
            addrs: vec!["[fd00::1]:1".parse().unwrap(); MAX_ADDRS],
            relay: Some("r".repeat(MAX_RELAY)),
            ..claims()
        };
        assert!(NodeRecord::sign(&id, &big).unwrap().len() <= MAX_RECORD_LEN);
    }

    #[test]
    fn forged_stale_expired_and_future_records_are_refused() {
        let id = Identity::generate(&mut seeded(2));
        let other = Identity::generate(&mut seeded(3));
        let b = NodeRecord::sign(&id, &claims()).unwrap();
        let now = 1_000_010;
        // Any flipped bit breaks the signature (or the decoding).
        for i in 0..b.len() {
            let mut f = b.clone();
            f[i] ^= 1;
            assert!(NodeRecord::verify(&f, now, None).is_err(), "bit at {i}");
        }
        // Someone else's key with this record's claims: another node.
        let mut swapped = b.clone();
        swapped[1..33].copy_from_slice(&other.public().ed25519);
        assert_eq!(
            NodeRecord::verify(&swapped, now, None),
            Err(RecordError::BadSignature)
        );
        assert_eq!(
            NodeRecord::verify(&b, now, Some(5)),
            Err(RecordError::Stale { got: 5, held: 5 })
        );
        assert_eq!(NodeRecord::verify(&b, 1_003_600, None), Err(RecordError::Expired));
        assert_eq!(
            NodeRecord::verify(&b, 1_000_000 - MAX_SKEW - 1, None),
            Err(RecordError::FromTheFuture)
        );
        assert!(NodeRecord::verify(&b, 1_000_000 - MAX_SKEW, None).is_ok());
        assert_eq!(
            NodeRecord::sign(
                &id,
                &Claims {
                    ttl: MAX_TTL + 1,
                    ..claims()
                }
            ),
            Err(RecordError::TooLong)
        );
        assert!(
            NodeRecord::sign(
                &id,
                &Claims {
                    name: "x".repeat(64),
                    ..claims()
                }
            )
            .is_err()
        );
        assert!(
            NodeRecord::sign(
                &id,
                &Claims {
                    relay: Some("é".into()),
                    ..claims()
                }
            )
            .is_err()
        ); // A terminal escape in a peer's relay address never gets signed or read.
        assert!(
            NodeRecord::sign(
                &id,
                &Claims {
                    relay: Some("r\x1b[2J:1".into()),
                    ..claims()
                }
            )
            .is_err()
        );
    }

    /// The layout, byte for byte, of a record with fixed keys.
    #[test]
    fn hex_snapshot() {
        let id = Identity::generate(&mut seeded(4));
        let c = Claims {
            flags: Flags(Flags::ONION_RELAY),
            seq: 1,
            issued: 2,
            ttl: 3,
            name: "a".into(),
            addrs: vec!["1.2.3.4:258".parse().unwrap()],
            relay: None,
        };
        let b = NodeRecord::sign(&id, &c).unwrap();
        let keys = id.public();
        let head = format!(
            "01{}{}02{}{}{}0161010401020304010200",
            hex::encode(keys.ed25519),
            hex::encode(keys.x25519),
            "0000000000000001",
            "0000000000000002",
            "0000000000000005"
        );
        assert_eq!(hex::encode(&b[..b.len() - 64]), head);
    }

    #[test]
    fn the_digest_follows_ids_and_sequence_numbers() {
        let (a, b) = (NodeId([1; 15]), NodeId([2; 15]));
        let d = digest([(&a, 1), (&b, 1)]);
        assert_eq!(d, digest([(&a, 1), (&b, 1)]));
        assert_ne!(d, digest([(&a, 1), (&b, 2)]));
        assert_ne!(d, digest([(&a, 1)]));
    }
}
