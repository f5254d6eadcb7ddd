//! The per-hop handshake of a circuit: what the seed calls "the client
//! sends each node its own AES key", made one-way authenticated and
//! forward secret.
//!
//! `Noise_NK_25519_AESGCM_SHA256` against the hop's **onion key** (an
//! X25519 key the node makes at start, keeps only in memory and publishes
//! in its signed descriptor). The client has no static key, so the hop
//! learns nothing about who it is; both ephemeral keys enter the session,
//! so recorded cells stay sealed even after the node's keys leak.
//!
//! ```text
//! CREATE   = version:u8 (1) | digest:[32] | noise message 1 (e, es; payload: time:u64 | ext:u8 = 0)
//! CREATED  = noise message 2 (e, ee; empty payload)
//! prologue = "burrow onion v1 NK" ‖ node id:[15] ‖ digest:[32]
//! ```
//!
//! `digest` is the node list's (directory consensus) digest the client
//! took the onion key from; it is in the prologue too, so a node that is
//! not the one the client looked up, or a list the hop does not know,
//! fails the handshake. The hop refuses a CREATE whose time is more than
//! [`MAX_SKEW`] from its clock, and one whose ephemeral key it has seen
//! within the window ([`ReplayCache`], bounded: when it is full, new
//! CREATEs are refused until old entries age out, never admitted
//! unchecked).
//!
//! Keys: BLAKE3 in key-derivation mode over both split keys and the
//! handshake hash gives 160 bytes, the forward (client → exit) CGO seed
//! then the backward one ([`HopKeys`]).

use std::collections::{HashSet, VecDeque};

use thiserror::Error;
use zeroize::Zeroizing;

use super::cgo::SEED_LEN;
use crate::keys::NodeId;
use crate::random::Random;
use crate::session::{Handshake, SessionError, Side};
use crate::wire::{DecodeError, Reader, Writer};

/// The CREATE format's version byte.
pub const VERSION: u8 = 1;
/// Bytes of a node-list digest.
pub const DIGEST_LEN: usize = 32;
/// Bytes of a CREATE (1 + 32 + e 32 + payload 9 + tag 16).
pub const CREATE_LEN: usize = 1 + DIGEST_LEN + 32 + 9 + 16;
/// Bytes of a CREATED (e 32 + tag 16).
pub const CREATED_LEN: usize = 32 + 16;
/// How far a CREATE's time may be from the hop's clock (seconds).
pub const MAX_SKEW: u64 = 120;
/// Most ephemeral keys remembered (16 bytes each, about 8 MiB at most).
pub const MAX_REPLAY: usize = 1 << 18;
const KDF_CONTEXT: &str = "burrow onion v1 hop keys";
const PROLOGUE: &[u8] = b"burrow onion v1 NK";

/// Why a handshake failed.
#[derive(Debug, Error)]
pub enum HandshakeError {
    /// The message does not parse.
    #[error("malformed handshake: {0}")]
    Malformed(#[from] DecodeError),
    /// A version this side does not speak.
    #[error("unknown handshake version {0}")]
    Version(u8),
    /// The client used a node list this hop does not have.
    #[error("the client's node list is not one this node knows")]
    UnknownDigest,
    /// Noise refused it (wrong key, altered bytes).
    #[error("handshake failed: {0}")]
    Noise(#[from] SessionError),
    /// The CREATE's time is outside the window.
    #[error("handshake time is {0} s away from this node's clock")]
    Skew(u64),
    /// The CREATE was seen before.
    #[error("replayed handshake")]
    Replay,
    /// The replay cache is full: refused rather than admitted unchecked.
    #[error("too many handshakes; try again later")]
    Busy,
}

/// The two CGO seeds one hop shares with the client.
pub struct HopKeys {
    /// Client → exit.
    pub forward: Zeroizing<[u8; SEED_LEN]>,
    /// Exit → client.
    pub backward: Zeroizing<[u8; SEED_LEN]>,
}

impl std::fmt::Debug for HopKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HopKeys(..)")
    }
}

fn prologue(node: &NodeId, digest: &[u8; DIGEST_LEN]) -> Vec<u8> {
    [PROLOGUE, &node.0[..], &digest[..]].concat()
}

fn derive(hs: Handshake) -> Result<HopKeys, HandshakeError> {
    let raw = hs.into_raw_keys()?;
    let mut kdf = blake3::Hasher::new_derive_key(KDF_CONTEXT);
    kdf.update(&raw.initiator[..]);
    kdf.update(&raw.responder[..]);
    kdf.update(&raw.hash);
    let mut out = Zeroizing::new([0u8; 2 * SEED_LEN]);
    kdf.finalize_xof().fill(&mut out[..]);
    let mut forward = Zeroizing::new([0u8; SEED_LEN]);
    let mut backward = Zeroizing::new([0u8; SEED_LEN]);
    forward.copy_from_slice(&out[..SEED_LEN]);
    backward.copy_from_slice(&out[SEED_LEN..]);
    Ok(HopKeys { forward, backward })
}

/// The client's half of a hop handshake, waiting for CREATED.
pub struct ClientHandshake {
    hs: Handshake,
}

impl std::fmt::Debug for ClientHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientHandshake(..)")
    }
}

impl ClientHandshake {
    /// Starts a handshake with `node`, whose onion key the node list with
    /// `digest` gives; returns the CREATE bytes.
    pub fn start(
        node: &NodeId,
        onion_key: &[u8; 32],
        digest: &[u8; DIGEST_LEN],
        now_unix: u64,
        rng: &mut dyn Random,
    ) -> Result<(Self, Vec<u8>), HandshakeError> {
        let mut hs = Handshake::nk(Side::Initiator, onion_key, &prologue(node, digest), rng)?;
        let mut payload = Vec::with_capacity(9);
        Writer::new(&mut payload).u64(now_unix).u8(0);
        let msg = hs.write_message_with(&payload)?;
        let mut out = Vec::with_capacity(CREATE_LEN);
        Writer::new(&mut out).u8(VERSION).bytes(digest).bytes(&msg[2..]);
        Ok((Self { hs }, out))
    }

    /// Reads CREATED: the hop's keys.
    pub fn finish(mut self, created: &[u8]) -> Result<HopKeys, HandshakeError> {
        if created.len() != CREATED_LEN {
            return Err(DecodeError::Invalid {
                what: "CREATED",
                reason: "wrong length",
            }
            .into());
        }
        self.hs.read_message(created)?;
        derive(self.hs)
    }
}

/// Ephemeral keys seen within the time window, in buckets of
/// `2·MAX_SKEW / 16` seconds, kept for 17 buckets (a CREATE accepted at
/// `t` can only be replayed until `t + 2·MAX_SKEW`), the oldest dropped as
/// time moves on.
#[derive(Debug, Default)]
pub struct ReplayCache {
    buckets: VecDeque<(u64, HashSet<[u8; 16]>)>,
    len: usize,
}

const BUCKETS: u64 = 16;

impl ReplayCache {
    fn bucket_of(t: u64) -> u64 {
        t / (2 * MAX_SKEW / BUCKETS)
    }

    /// Records `key` first seen at `now`; `Err` if seen before, or the
    /// cache is full.
    pub fn insert(&mut self, key: &[u8; 32], now: u64) -> Result<(), HandshakeError> {
        let current = Self::bucket_of(now);
        while let Some((b, set)) = self.buckets.front() {
            if current.saturating_sub(*b) <= BUCKETS {
                break;
            }
            self.len -= set.len();
            self.buckets.pop_front();
        }
        let short: [u8; 16] = blake3::hash(key).as_bytes()[..16].try_into().unwrap_or([0; 16]);
        if self.buckets.iter().any(|(_, s)| s.contains(&short)) {
            return Err(HandshakeError::Replay);
        }
        if self.len >= MAX_REPLAY {
            return Err(HandshakeError::Busy);
        }
        match self.buckets.back_mut() {
            Some((b, set)) if *b >= current => {
                set.insert(short);
            }
            _ => self.buckets.push_back((current, HashSet::from([short]))),
        }
        self.len += 1;
        Ok(())
    }

    /// Keys remembered.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A node's side: its onion key, the node lists it accepts handshakes
/// against, and the replay cache of the key's lifetime.
pub struct Responder {
    node: NodeId,
    secret: Zeroizing<[u8; 32]>,
    public: [u8; 32],
    digests: VecDeque<[u8; DIGEST_LEN]>,
    replay: ReplayCache,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// How many recent node lists a hop accepts handshakes against (clients
/// fetch a new one at different times).
pub const KNOWN_DIGESTS: usize = 4;

impl Responder {
    /// A responder for `node` with a fresh onion key from `rng`.
    pub fn generate(node: NodeId, rng: &mut dyn Random) -> Self {
        let mut secret = Zeroizing::new([0u8; 32]);
        rng.fill(&mut secret[..]);
        let public = x25519_public(&secret);
        Self {
            node,
            secret,
            public,
            digests: VecDeque::new(),
            replay: ReplayCache::default(),
        }
    }

    /// The onion key's public half (for the descriptor).
    pub fn onion_key(&self) -> [u8; 32] {
        self.public
    }

    /// Accepts handshakes against the node list with `digest` from now on
    /// (the oldest of [`KNOWN_DIGESTS`] is forgotten).
    pub fn learn_digest(&mut self, digest: [u8; DIGEST_LEN]) {
        if self.digests.contains(&digest) {
            return;
        }
        if self.digests.len() == KNOWN_DIGESTS {
            self.digests.pop_front();
        }
        self.digests.push_back(digest);
    }

    /// Keys in the replay cache.
    pub fn replay_len(&self) -> usize {
        self.replay.len()
    }

    /// Answers a CREATE: the CREATED bytes and the hop's keys.
    pub fn respond(
        &mut self,
        create: &[u8],
        now_unix: u64,
        rng: &mut dyn Random,
    ) -> Result<(Vec<u8>, HopKeys), HandshakeError> {
        let mut r = Reader::new(create);
        let version = r.u8()?;
        if version != VERSION {
            return Err(HandshakeError::Version(version));
        }
        let digest: [u8; DIGEST_LEN] = r.array()?;
        let msg = r.rest();
        if msg.len() != CREATE_LEN - 1 - DIGEST_LEN {
            return Err(DecodeError::Invalid {
                what: "CREATE",
                reason: "wrong length",
            }
            .into());
        }
        if !self.digests.contains(&digest) {
            return Err(HandshakeError::UnknownDigest);
        }
        let mut hs = Handshake::nk(Side::Responder, &self.secret, &prologue(&self.node, &digest), rng)?;
        let payload = hs.read_message_payload(msg)?;
        let mut p = Reader::new(&payload);
        let time = p.u64()?;
        let _ext = p.u8()?;
        let skew = time.abs_diff(now_unix);
        if skew > MAX_SKEW {
            return Err(HandshakeError::Skew(skew));
        }
        let e: [u8; 32] = msg[..32].try_into().map_err(|_| DecodeError::Invalid {
            what: "CREATE",
            reason: "no key",
        })?;
        self.replay.insert(&e, now_unix)?;
        let reply = hs.write_message()?;
        let keys = derive(hs)?;
        Ok((reply[2..].to_vec(), keys))
    }
}

/// X25519 public key of a secret (aws-lc-rs, as the Noise DH).
fn x25519_public(secret: &[u8; 32]) -> [u8; 32] {
    use aws_lc_rs::agreement::{PrivateKey, X25519};
    let mut out = [0u8; 32];
    if let Ok(k) = PrivateKey::from_private_key(&X25519, secret)
        && let Ok(p) = k.compute_public_key()
        && p.as_ref().len() == 32
    {
        out.copy_from_slice(p.as_ref());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::seeded;

    fn node() -> NodeId {
        NodeId([7; 15])
    }

    const NOW: u64 = 1_800_000_000;

    fn responder() -> Responder {
        let mut r = Responder::generate(node(), &mut seeded(1));
        r.learn_digest([5; 32]);
        r
    }

    #[test]
    fn both_sides_derive_the_same_keys_and_sizes_are_fixed() {
        let mut r = responder();
        let (c, create) =
            ClientHandshake::start(&node(), &r.onion_key(), &[5; 32], NOW, &mut seeded(2)).unwrap();
        assert_eq!(create.len(), CREATE_LEN);
        let (created, hop) = r.respond(&create, NOW + 3, &mut seeded(3)).unwrap();
        assert_eq!(created.len(), CREATED_LEN);
        let client = c.finish(&created).unwrap();
        assert_eq!(&client.forward[..], &hop.forward[..]);
        assert_eq!(&client.backward[..], &hop.backward[..]);
        assert_ne!(&client.forward[..], &client.backward[..]);
    }

    #[test]
    fn a_replayed_create_is_refused_within_the_window() {
        let mut r = responder();
        let (_, create) =
            ClientHandshake::start(&node(), &r.onion_key(), &[5; 32], NOW, &mut seeded(2)).unwrap();
        r.respond(&create, NOW, &mut seeded(3)).unwrap();
        assert!(matches!(
            r.respond(&create, NOW + 60, &mut seeded(4)),
            Err(HandshakeError::Replay)
        ));
        // Once the window has passed, the time check refuses it instead.
        assert!(matches!(
            r.respond(&create, NOW + MAX_SKEW + 1, &mut seeded(4)),
            Err(HandshakeError::Skew(_))
        ));
    }

    #[test]
    fn wrong_node_wrong_key_unknown_list_old_time_all_fail() {
        let mut r = responder();
        let key = r.onion_key();
        let (_, other_node) =
            ClientHandshake::start(&NodeId([8; 15]), &key, &[5; 32], NOW, &mut seeded(2)).unwrap();
        assert!(matches!(
            r.respond(&other_node, NOW, &mut seeded(3)),
            Err(HandshakeError::Noise(_))
        ));
        let (_, other_key) =
            ClientHandshake::start(&node(), &[9; 32], &[5; 32], NOW, &mut seeded(2)).unwrap();
        assert!(r.respond(&other_key, NOW, &mut seeded(3)).is_err());
        let (_, other_list) = ClientHandshake::start(&node(), &key, &[6; 32], NOW, &mut seeded(2)).unwrap();
        assert!(matches!(
            r.respond(&other_list, NOW, &mut seeded(3)),
            Err(HandshakeError::UnknownDigest)
        ));
        let (_, old) = ClientHandshake::start(&node(), &key, &[5; 32], NOW - 600, &mut seeded(2)).unwrap();
        assert!(matches!(
            r.respond(&old, NOW, &mut seeded(3)),
            Err(HandshakeError::Skew(600))
        ));
        for n in [0, 1, CREATE_LEN - 1, CREATE_LEN + 1] {
            assert!(r.respond(&vec![1; n], NOW, &mut seeded(3)).is_err());
        }
    }

    #[test]
    fn a_flipped_bit_in_created_fails_the_client() {
        let mut r = responder();
        let (c, create) =
            ClientHandshake::start(&node(), &r.onion_key(), &[5; 32], NOW, &mut seeded(2)).unwrap();
        let (mut created, _) = r.respond(&create, NOW, &mut seeded(3)).unwrap();
        created[40] ^= 1;
        assert!(c.finish(&created).is_err());
    }

    #[test]
    fn the_replay_cache_is_bounded_and_forgets_old_buckets() {
        let mut cache = ReplayCache::default();
        for i in 0..1000u32 {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&i.to_be_bytes());
            cache.insert(&k, NOW + u64::from(i) / 10).unwrap();
        }
        assert_eq!(cache.len(), 1000);
        cache.insert(&[0xee; 32], NOW + 10 * MAX_SKEW).unwrap();
        assert_eq!(cache.len(), 1, "buckets older than the window are dropped");
    }
}
