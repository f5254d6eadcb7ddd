//! The encrypted session between two peers, and its record layer.
//!
//! Channel mode runs Noise `NNpsk0` (via `snow`), with the PAKE's
//! [`SessionKey`] as the pre-shared key and the
//! channel name in the prologue:
//!
//! ```text
//! initiator (sender)                  responder (recipient)
//!   -> psk, e          (48 bytes + 16-byte tag)
//!   <- e, ee           (32 bytes + 16-byte tag)
//! ```
//!
//! After the two messages each side holds a [`Transport`]; its halves
//! ([`Sealer`], [`Opener`]) can live in different tasks. Every record is
//!
//! ```text
//! record = len:u16 (big-endian, 16..=65535) | AEAD ciphertext (plaintext + 16-byte tag)
//! ```
//!
//! with AES-256-GCM and a per-direction counter nonce, exactly Noise's
//! transport messages with the 2-byte length framing the Noise spec suggests
//! for TCP. A record that fails authentication (a flipped bit, a dropped or
//! reordered record) ends the session: nothing from it is delivered.
//!
//! `snow` runs the handshake; the transport phase is driven here on the two
//! keys of Noise's `Split()` (`dangerously_get_raw_split`) with
//! AES-256-GCM from ring or aws-lc-rs, whichever is faster on this CPU
//! ([`crate::session::aead`]), so that records are sealed and opened *in place* (snow's
//! transport API copies every record once more). The bytes on the wire are
//! identical to snow's own transport messages; a test checks that against
//! snow.

pub mod aead;
pub mod inbox;

pub use inbox::{Inbox, MIN_INBOX, StreamEnd};

use std::sync::Mutex;

use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::{Builder, HandshakeState};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::channel::pake::SessionKey;
use crate::random::{Random, Stream};
use crate::wire::DecodeError;

/// The Noise protocol for code-keyed sessions.
pub const NOISE_NNPSK0: &str = "Noise_NNpsk0_25519_AESGCM_SHA256";
/// The Noise protocol between long-term identities (relay connector, exit
/// and proxy): mutual authentication by static keys, forward secrecy by
/// ephemeral ones.
pub const NOISE_XX: &str = "Noise_XX_25519_AESGCM_SHA256";
/// The Noise protocol between two mesh nodes when the initiator already
/// knows the responder's static key (from a node record or the peer book).
pub const NOISE_IK: &str = "Noise_IK_25519_AESGCM_SHA256";
/// The Noise protocol of one onion hop (seed 004): the client knows the
/// hop's onion key from the directory and stays anonymous; forward secrecy
/// from both sides' ephemeral keys.
pub const NOISE_NK: &str = "Noise_NK_25519_AESGCM_SHA256";
/// Largest Noise message (ciphertext).
pub const MAX_RECORD: usize = 65535;
/// AEAD tag length.
pub const TAG_LEN: usize = aead::TAG_LEN;
/// Largest plaintext in one record.
pub const MAX_PLAINTEXT: usize = MAX_RECORD - TAG_LEN;
/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 2;

/// Why the session failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The handshake failed: a wrong key or a peer that is not the one the code named.
    #[error("secure handshake failed: {0}")]
    Handshake(snow::Error),
    /// A record failed authentication: the data was altered in transit.
    #[error("integrity check failed: the data was altered in transit")]
    Integrity,
    /// A record's framing is invalid.
    #[error("malformed record: {0}")]
    Malformed(#[from] DecodeError),
    /// The nonce space is exhausted (2^64 records).
    #[error("session exhausted")]
    Exhausted,
}

/// The prologue both sides mix in: binds the session to the protocol and channel.
fn prologue(context: &str) -> Vec<u8> {
    format!("burrow v1 session {context}").into_bytes()
}

/// Which end of a handshake this side is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Writes the first message.
    Initiator,
    /// Reads the first message.
    Responder,
}

/// snow's default primitives, with the caller's randomness: snow takes its
/// RNG (for the ephemeral keys) from the resolver once, when the handshake
/// is built; this hands it a [`Stream`] keyed from the caller's
/// [`Random`], and nothing else ever.
struct CallerRandom(Mutex<Option<Stream>>);

impl CryptoResolver for CallerRandom {
    fn resolve_rng(&self) -> Option<Box<dyn snow::types::Random>> {
        let taken = self.0.lock().ok()?.take()?;
        Some(Box::new(taken))
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn snow::types::Dh>> {
        match choice {
            DHChoice::Curve25519 => Some(Box::new(X25519::default())),
            _ => DefaultResolver.resolve_dh(choice),
        }
    }

    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn snow::types::Hash>> {
        DefaultResolver.resolve_hash(choice)
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn snow::types::Cipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}

/// Noise's `25519` DH on aws-lc-rs's X25519 (assembly; snow's default,
/// curve25519-dalek's portable ladder, took 80% of a mesh handshake:
/// docs/benchmarks.md, handshakes). The same function, so the same bytes;
/// one difference: aws-lc refuses a low-order peer key (an all-zero
/// shared secret), which fails that handshake instead of running it on a
/// known key.
#[derive(Default)]
struct X25519 {
    privkey: Zeroizing<[u8; 32]>,
    pubkey: [u8; 32],
    key: Option<aws_lc_rs::agreement::PrivateKey>,
}

/// The last static key's public half, by a hash of its private half: a
/// node sets the same static key for every handshake, and its public key
/// is one fixed-base multiplication (a tenth of an `IK` side) to redo.
/// Two slots: a node's identity key and its onion key (seed 004).
static STATIC_PUBLIC: std::sync::Mutex<[StaticSlot; 2]> = std::sync::Mutex::new([None; 2]);
/// A cached static key: (tag of the private key, public key).
type StaticSlot = Option<([u8; 32], [u8; 32])>;

impl X25519 {
    /// Parses the private key; `cached`: look its public key up first (a
    /// static key), else compute it (an ephemeral one).
    fn load(&mut self, cached: bool) {
        use aws_lc_rs::agreement::{PrivateKey, X25519 as ALG};
        self.key = PrivateKey::from_private_key(&ALG, &self.privkey[..]).ok();
        self.pubkey = [0; 32];
        let tag = cached.then(|| *blake3::keyed_hash(&[0x25; 32], &self.privkey[..]).as_bytes());
        if let Some(t) = tag
            && let Ok(c) = STATIC_PUBLIC.lock()
            && let Some((_, public)) = c.iter().flatten().find(|(known, _)| *known == t)
            && self.key.is_some()
        {
            self.pubkey = *public;
            return;
        }
        if let Some(pk) = self.key.as_ref().and_then(|k| k.compute_public_key().ok())
            && pk.as_ref().len() == 32
        {
            self.pubkey.copy_from_slice(pk.as_ref());
            if let (Some(t), Ok(mut c)) = (tag, STATIC_PUBLIC.lock()) {
                // The newest in the first slot, the one before it kept.
                c[1] = c[0];
                c[0] = Some((t, self.pubkey));
            }
        }
    }
}

impl snow::types::Dh for X25519 {
    fn name(&self) -> &'static str {
        "25519"
    }

    fn pub_len(&self) -> usize {
        32
    }

    fn priv_len(&self) -> usize {
        32
    }

    fn set(&mut self, privkey: &[u8]) {
        let n = privkey.len().min(32);
        *self.privkey = [0; 32];
        self.privkey[..n].copy_from_slice(&privkey[..n]);
        self.load(true);
    }

    fn generate(&mut self, rng: &mut dyn snow::types::Random) -> Result<(), snow::Error> {
        rng.try_fill_bytes(&mut self.privkey[..])?;
        self.load(false);
        Ok(())
    }

    fn pubkey(&self) -> &[u8] {
        &self.pubkey
    }

    fn privkey(&self) -> &[u8] {
        &self.privkey[..]
    }

    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        use aws_lc_rs::agreement::{UnparsedPublicKey, X25519 as ALG, agree};
        let key = self.key.as_ref().ok_or(snow::Error::Dh)?;
        let peer = pubkey.get(..32).ok_or(snow::Error::Dh)?;
        agree(key, UnparsedPublicKey::new(&ALG, peer), snow::Error::Dh, |k| {
            let n = k.len().min(out.len());
            out[..n].copy_from_slice(&k[..n]);
            Ok(())
        })
    }
}

/// A Noise handshake in progress.
pub struct Handshake {
    hs: HandshakeState,
    /// Which AES-256-GCM the transport runs on.
    backend: aead::Backend,
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshake")
            .field("initiator", &self.hs.is_initiator())
            .field("finished", &self.hs.is_handshake_finished())
            .finish()
    }
}

impl Handshake {
    /// Builds either side of `pattern` with its key material set by `keys`.
    fn build<'b>(
        pattern: &str,
        side: Side,
        context: &str,
        backend: aead::Backend,
        rng: &mut dyn Random,
        keys: impl FnOnce(Builder<'b>) -> Result<Builder<'b>, snow::Error>,
    ) -> Result<Self, SessionError> {
        Self::build_raw(pattern, side, &prologue(context), backend, rng, keys)
    }

    fn build_raw<'b>(
        pattern: &str,
        side: Side,
        prologue: &[u8],
        backend: aead::Backend,
        rng: &mut dyn Random,
        keys: impl FnOnce(Builder<'b>) -> Result<Builder<'b>, snow::Error>,
    ) -> Result<Self, SessionError> {
        let params = pattern.parse().map_err(SessionError::Handshake)?;
        let resolver = CallerRandom(Mutex::new(Some(Stream::from_random(rng))));
        let b = keys(Builder::with_resolver(params, Box::new(resolver)))
            .and_then(|b| b.prologue(prologue))
            .map_err(SessionError::Handshake)?;
        let hs = match side {
            Side::Initiator => b.build_initiator(),
            Side::Responder => b.build_responder(),
        }
        .map_err(SessionError::Handshake)?;
        Ok(Self { hs, backend })
    }

    /// A code-keyed `NNpsk0` handshake (the sender initiates). `context`
    /// must match the peer's (the channel name); `rng` gives the ephemeral
    /// key; the transport will run on `backend`.
    pub fn nn_psk0(
        side: Side,
        psk: &SessionKey,
        context: &str,
        backend: aead::Backend,
        rng: &mut dyn Random,
    ) -> Result<Self, SessionError> {
        Self::build(NOISE_NNPSK0, side, context, backend, rng, |b| {
            b.psk(0, psk.as_bytes())
        })
    }

    /// An `XX` handshake with this side's static X25519 key (its identity).
    /// After it, [`Handshake::remote_static`] is the peer's identity key,
    /// which the caller must check against what it expects.
    pub fn xx(
        side: Side,
        local_static: &[u8; 32],
        context: &str,
        backend: aead::Backend,
        rng: &mut dyn Random,
    ) -> Result<Self, SessionError> {
        Self::build(NOISE_XX, side, context, backend, rng, |b| {
            b.local_private_key(local_static)
        })
    }

    /// An `IK` handshake: the initiator names the responder's static key
    /// (`remote_static`, required on that side, ignored on the other), so
    /// its first message already carries its own static key encrypted to
    /// the responder, and a responder with another key fails at once.
    pub fn ik(
        side: Side,
        local_static: &[u8; 32],
        remote_static: Option<&[u8; 32]>,
        context: &str,
        backend: aead::Backend,
        rng: &mut dyn Random,
    ) -> Result<Self, SessionError> {
        Self::build(NOISE_IK, side, context, backend, rng, |b| {
            let b = b.local_private_key(local_static)?;
            match (side, remote_static) {
                (Side::Initiator, Some(k)) => b.remote_public_key(k),
                (Side::Initiator, None) => Err(snow::Error::Input),
                (Side::Responder, _) => Ok(b),
            }
        })
    }

    /// An `NK` handshake (an onion hop's): the initiator knows the
    /// responder's static key (`remote_static`) and has none of its own;
    /// the responder has `local_static`. `prologue` binds both sides to
    /// the same context (the hop's id and the directory's digest).
    pub fn nk(
        side: Side,
        key: &[u8; 32],
        prologue: &[u8],
        rng: &mut dyn Random,
    ) -> Result<Self, SessionError> {
        Self::build_raw(
            NOISE_NK,
            side,
            prologue,
            aead::Backend::detect(),
            rng,
            |b| match side {
                Side::Initiator => b.remote_public_key(key),
                Side::Responder => b.local_private_key(key),
            },
        )
    }

    /// After the last message: the handshake hash and Noise's two split
    /// keys (initiator → responder first), for a caller that derives its
    /// own keys from them (onion hops derive CGO states).
    pub fn into_raw_keys(mut self) -> Result<RawKeys, SessionError> {
        if !self.hs.is_handshake_finished() {
            return Err(SessionError::Handshake(snow::Error::State(
                snow::error::StateProblem::HandshakeNotFinished,
            )));
        }
        let hash = self.hash();
        let (k1, k2) = self.hs.dangerously_get_raw_split();
        Ok(RawKeys {
            hash,
            initiator: Zeroizing::new(k1),
            responder: Zeroizing::new(k2),
        })
    }

    /// The handshake hash so far (after the last message: the channel
    /// binding a PAKE run inside the session mixes in).
    pub fn hash(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        let h = self.hs.get_handshake_hash();
        let n = h.len().min(32);
        out[..n].copy_from_slice(&h[..n]);
        out
    }

    /// The peer's static key, once a message carrying it was read.
    pub fn remote_static(&self) -> Option<[u8; 32]> {
        self.hs.get_remote_static().and_then(|k| k.try_into().ok())
    }

    /// Whether it is this side's turn to write.
    pub fn is_my_turn(&self) -> bool {
        self.hs.is_my_turn()
    }

    /// Produces the next handshake message, framed with its length prefix.
    pub fn write_message(&mut self) -> Result<Vec<u8>, SessionError> {
        self.write_message_with(&[])
    }

    /// Like [`Handshake::write_message`], with a payload (at most 256 bytes;
    /// encrypted once the handshake has a key).
    pub fn write_message_with(&mut self, payload: &[u8]) -> Result<Vec<u8>, SessionError> {
        let mut buf = vec![0u8; 512 + payload.len()];
        let n = self
            .hs
            .write_message(payload, &mut buf[LEN_PREFIX..])
            .map_err(SessionError::Handshake)?;
        let len = u16::try_from(n).map_err(|_| SessionError::Exhausted)?;
        buf[..LEN_PREFIX].copy_from_slice(&len.to_be_bytes());
        buf.truncate(LEN_PREFIX + n);
        Ok(buf)
    }

    /// Consumes the peer's handshake message (without its length prefix).
    pub fn read_message(&mut self, msg: &[u8]) -> Result<(), SessionError> {
        self.read_message_payload(msg).map(|_| ())
    }

    /// Like [`Handshake::read_message`], returning the message's payload.
    pub fn read_message_payload(&mut self, msg: &[u8]) -> Result<Vec<u8>, SessionError> {
        let mut payload = vec![0u8; msg.len()];
        let n = self
            .hs
            .read_message(msg, &mut payload)
            .map_err(SessionError::Handshake)?;
        payload.truncate(n);
        Ok(payload)
    }

    /// Whether both messages have been exchanged.
    pub fn is_finished(&self) -> bool {
        self.hs.is_handshake_finished()
    }

    /// Switches to transport mode: the two directions' keys from Noise's
    /// `Split()`, each driving its own AES-256-GCM with a counter nonce.
    pub fn into_transport(mut self) -> Result<Transport, SessionError> {
        if !self.hs.is_handshake_finished() {
            return Err(SessionError::Handshake(snow::Error::State(
                snow::error::StateProblem::HandshakeNotFinished,
            )));
        }
        let initiator = self.hs.is_initiator();
        let (k1, k2) = self.hs.dangerously_get_raw_split();
        let (k1, k2) = (Zeroizing::new(k1), Zeroizing::new(k2));
        let (send, recv) = if initiator { (k1, k2) } else { (k2, k1) };
        let backend = self.backend;
        let key = |k: &[u8; 32]| aead::Key::new(backend, k).map_err(|_| SessionError::Exhausted);
        Ok(Transport {
            send: key(&send)?,
            recv: key(&recv)?,
        })
    }
}

/// What a finished handshake leaves for a caller's own key schedule.
pub struct RawKeys {
    /// The handshake hash.
    pub hash: [u8; 32],
    /// The initiator's sending key.
    pub initiator: Zeroizing<[u8; 32]>,
    /// The responder's sending key.
    pub responder: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for RawKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RawKeys(..)")
    }
}

/// An established session. Split it to send and receive independently.
pub struct Transport {
    send: aead::Key,
    recv: aead::Key,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Transport(..)")
    }
}

impl Transport {
    /// The two directions.
    pub fn split(self) -> (Sealer, Opener) {
        (
            Sealer {
                key: self.send,
                nonce: 0,
            },
            Opener {
                key: self.recv,
                nonce: 0,
            },
        )
    }
}

/// Noise's AESGCM nonce: 32 zero bits, then the counter big-endian.
fn noise_nonce(n: u64) -> aead::Nonce {
    let mut b = [0u8; 12];
    b[4..].copy_from_slice(&n.to_be_bytes());
    b
}

/// Encrypts outgoing records.
pub struct Sealer {
    key: aead::Key,
    nonce: u64,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").field("nonce", &self.nonce).finish()
    }
}

impl Sealer {
    /// Appends one record (length prefix + ciphertext) for `plain` to `out`.
    /// `plain` must be at most [`MAX_PLAINTEXT`] bytes.
    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), SessionError> {
        check_plaintext(plain.len())?;
        let start = out.len();
        out.reserve(LEN_PREFIX + plain.len() + TAG_LEN);
        out.extend_from_slice(&[0; LEN_PREFIX]);
        out.extend_from_slice(plain);
        out.extend_from_slice(&[0; TAG_LEN]);
        self.seal_in_place(&mut out[start..])
    }

    /// Seals a record laid out in place: `record` is
    /// `[2 bytes for the prefix][plaintext][16 bytes for the tag]`; the
    /// prefix and tag are written and the plaintext encrypted where it is
    /// (no copy). The plaintext must be at most [`MAX_PLAINTEXT`] bytes.
    pub fn seal_in_place(&mut self, record: &mut [u8]) -> Result<(), SessionError> {
        let plain_len = record
            .len()
            .checked_sub(LEN_PREFIX + TAG_LEN)
            .ok_or(SessionError::Malformed(DecodeError::Invalid {
                what: "record",
                reason: "no room for the length prefix and tag",
            }))?;
        check_plaintext(plain_len)?;
        if self.nonce == u64::MAX {
            return Err(SessionError::Exhausted);
        }
        let len = u16::try_from(plain_len + TAG_LEN).map_err(|_| SessionError::Exhausted)?;
        let (prefix, rest) = record.split_at_mut(LEN_PREFIX);
        prefix.copy_from_slice(&len.to_be_bytes());
        let (body, tag_out) = rest.split_at_mut(plain_len);
        let tag = self
            .key
            .seal_in_place(noise_nonce(self.nonce), body)
            .map_err(|_| SessionError::Exhausted)?;
        tag_out.copy_from_slice(&tag);
        self.nonce += 1;
        Ok(())
    }
}

impl Sealer {
    /// Noise's `Rekey()` for this direction: the key becomes the first 32
    /// bytes of `ENCRYPT(k, 2^64 - 1, "", zeros)`; the nonce counter goes on.
    /// Both ends must rekey at the same record (the protocol says when).
    pub fn rekey(&mut self) -> Result<(), SessionError> {
        self.key = self.key.rekey().map_err(|_| SessionError::Exhausted)?;
        Ok(())
    }
}

fn check_plaintext(len: usize) -> Result<(), SessionError> {
    if len > MAX_PLAINTEXT {
        return Err(SessionError::Malformed(DecodeError::TooLong {
            what: "record",
            len,
            max: MAX_PLAINTEXT,
        }));
    }
    Ok(())
}

/// Decrypts incoming records.
pub struct Opener {
    key: aead::Key,
    nonce: u64,
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opener").field("nonce", &self.nonce).finish()
    }
}

/// Length of the next record if `buf` starts with its prefix: `Ok(None)` = need more bytes.
/// Returns the ciphertext length (without the prefix).
pub fn peek_record_len(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    if buf.len() < LEN_PREFIX {
        return Ok(None);
    }
    let len = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
    if len < TAG_LEN {
        return Err(DecodeError::Invalid {
            what: "record length",
            reason: "shorter than the AEAD tag",
        });
    }
    Ok(Some(len))
}

/// Whether a reader whose buffer (`cap` bytes) holds the start of an
/// incomplete record at `start..end` must move it to the front before
/// reading more: only when a whole record might not fit after `start` (or
/// nothing is held), not on every read.
pub fn compact_before_read(start: usize, end: usize, cap: usize) -> bool {
    start > 0 && (start == end || cap - start < LEN_PREFIX + MAX_RECORD)
}

impl Opener {
    /// Decrypts one record's ciphertext (without the length prefix, with
    /// the tag) where it lies; returns the plaintext, a prefix of `ct`.
    /// On failure the buffer's contents are unspecified and the session is over.
    pub fn open_in_place<'a>(&mut self, ct: &'a mut [u8]) -> Result<&'a mut [u8], SessionError> {
        if ct.len() < TAG_LEN || ct.len() > MAX_RECORD {
            return Err(SessionError::Malformed(DecodeError::Invalid {
                what: "record",
                reason: "bad length",
            }));
        }
        if self.nonce == u64::MAX {
            return Err(SessionError::Exhausted);
        }
        let plain = self
            .key
            .open_in_place(noise_nonce(self.nonce), ct)
            .map_err(|_| SessionError::Integrity)?;
        self.nonce += 1;
        Ok(plain)
    }
}

impl Opener {
    /// Noise's `Rekey()` for this direction (see [`Sealer::rekey`]).
    pub fn rekey(&mut self) -> Result<(), SessionError> {
        self.key = self.key.rekey().map_err(|_| SessionError::Exhausted)?;
        Ok(())
    }
}

/// Runs both sides of an `NNpsk0` handshake in memory (tests, benchmarks,
/// fuzzing): the initiator's transport, then the responder's.
pub fn handshake_in_memory(
    psk: &SessionKey,
    context: &str,
    backend: aead::Backend,
    rng: &mut dyn Random,
) -> Result<(Transport, Transport), SessionError> {
    let mut i = Handshake::nn_psk0(Side::Initiator, psk, context, backend, rng)?;
    let mut r = Handshake::nn_psk0(Side::Responder, psk, context, backend, rng)?;
    let m1 = i.write_message()?;
    r.read_message(&m1[LEN_PREFIX..])?;
    let m2 = r.write_message()?;
    i.read_message(&m2[LEN_PREFIX..])?;
    Ok((i.into_transport()?, r.into_transport()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::seeded;

    const B: aead::Backend = aead::Backend::Ring;

    fn xx(k: &[u8; 32], context: &str, side: Side) -> Result<Handshake, SessionError> {
        Handshake::xx(side, k, context, aead::Backend::detect(), &mut seeded(k[0]))
    }

    fn nn(k: &SessionKey, context: &str, side: Side) -> Handshake {
        Handshake::nn_psk0(side, k, context, B, &mut seeded(3)).unwrap()
    }

    fn pair(k: &SessionKey, context: &str) -> Result<(Transport, Transport), SessionError> {
        handshake_in_memory(k, context, B, &mut seeded(9))
    }

    /// Runs an `XX` handshake in memory; returns both transports and the
    /// static key each side saw (tests).
    fn xx_in_memory(
        a: &[u8; 32],
        b: &[u8; 32],
        context: &str,
    ) -> Result<(Transport, Transport, [u8; 32], [u8; 32]), SessionError> {
        let mut i = xx(a, context, Side::Initiator)?;
        let mut r = xx(b, context, Side::Responder)?;
        r.read_message(&i.write_message()?[LEN_PREFIX..])?;
        let m2 = r.write_message_with(b"responder says hi")?;
        assert_eq_payload(&i.read_message_payload(&m2[LEN_PREFIX..])?, b"responder says hi")?;
        r.read_message(&i.write_message()?[LEN_PREFIX..])?;
        let (ra, rb) = (
            i.remote_static().ok_or(SessionError::Exhausted)?,
            r.remote_static().ok_or(SessionError::Exhausted)?,
        );
        Ok((i.into_transport()?, r.into_transport()?, ra, rb))
    }

    fn assert_eq_payload(got: &[u8], want: &[u8]) -> Result<(), SessionError> {
        if got == want {
            Ok(())
        } else {
            Err(SessionError::Integrity)
        }
    }

    #[test]
    fn xx_authenticates_both_static_keys() {
        let (a, b) = ([5u8; 32], [9u8; 32]);
        let (ta, tb, seen_by_a, seen_by_b) = xx_in_memory(&a, &b, "t").unwrap();
        let pub_of = |k: &[u8; 32]| {
            let mut r = xx(k, "t", Side::Responder).unwrap();
            let mut i = xx(&[1; 32], "t", Side::Initiator).unwrap();
            r.read_message(&i.write_message().unwrap()[LEN_PREFIX..]).unwrap();
            i.read_message(&r.write_message().unwrap()[LEN_PREFIX..]).unwrap();
            i.remote_static().unwrap()
        };
        assert_eq!(seen_by_a, pub_of(&b));
        assert_eq!(seen_by_b, pub_of(&a));
        let (mut s, _) = ta.split();
        let (_, mut o) = tb.split();
        let mut out = Vec::new();
        s.seal(b"over xx", &mut out).unwrap();
        assert_eq!(o.open_in_place(&mut out[LEN_PREFIX..]).unwrap(), b"over xx");
        // A different prologue fails.
        let mut i = xx(&a, "t", Side::Initiator).unwrap();
        let mut r = xx(&b, "u", Side::Responder).unwrap();
        r.read_message(&i.write_message().unwrap()[LEN_PREFIX..]).unwrap();
        assert!(i.read_message(&r.write_message().unwrap()[LEN_PREFIX..]).is_err());
    }

    fn key(b: u8) -> SessionKey {
        SessionKey::from_bytes([b; 32])
    }

    #[test]
    fn records_round_trip_both_ways() {
        let (a, b) = pair(&key(1), "7").unwrap();
        let (mut a_tx, mut a_rx) = a.split();
        let (mut b_tx, mut b_rx) = b.split();
        for size in [0usize, 1, 1000, MAX_PLAINTEXT] {
            let msg: Vec<u8> = (0..size).map(|i| i as u8).collect();
            let mut wire = Vec::new();
            a_tx.seal(&msg, &mut wire).unwrap();
            let len = peek_record_len(&wire).unwrap().unwrap();
            assert_eq!(len + LEN_PREFIX, wire.len());
            assert_eq!(b_rx.open_in_place(&mut wire[LEN_PREFIX..]).unwrap(), &msg[..]);
            let mut back = Vec::new();
            b_tx.seal(&msg, &mut back).unwrap();
            assert_eq!(a_rx.open_in_place(&mut back[LEN_PREFIX..]).unwrap(), &msg[..]);
        }
        let mut wire = Vec::new();
        assert!(a_tx.seal(&vec![0; MAX_PLAINTEXT + 1], &mut wire).is_err());
    }

    #[test]
    fn flipped_bit_is_an_integrity_error() {
        let (a, b) = pair(&key(1), "7").unwrap();
        let (mut tx, _) = a.split();
        let (_, mut rx) = b.split();
        let mut wire = Vec::new();
        tx.seal(b"hello", &mut wire).unwrap();
        wire[5] ^= 0x01;
        assert!(matches!(
            rx.open_in_place(&mut wire[LEN_PREFIX..]),
            Err(SessionError::Integrity)
        ));
    }

    #[test]
    fn replayed_or_reordered_record_fails() {
        let (a, b) = pair(&key(1), "7").unwrap();
        let (mut tx, _) = a.split();
        let (_, mut rx) = b.split();
        let (mut r1, mut r2) = (Vec::new(), Vec::new());
        tx.seal(b"one", &mut r1).unwrap();
        tx.seal(b"two", &mut r2).unwrap();
        assert!(matches!(
            rx.open_in_place(&mut r2[LEN_PREFIX..]),
            Err(SessionError::Integrity)
        ));
    }

    #[test]
    fn different_keys_or_contexts_cannot_handshake() {
        let mut i = nn(&key(1), "7", Side::Initiator);
        let mut r = nn(&key(2), "7", Side::Responder);
        let m1 = i.write_message().unwrap();
        assert!(r.read_message(&m1[LEN_PREFIX..]).is_err());
        let mut i = nn(&key(1), "7", Side::Initiator);
        let mut r = nn(&key(1), "8", Side::Responder);
        let m1 = i.write_message().unwrap();
        assert!(r.read_message(&m1[LEN_PREFIX..]).is_err());
    }

    /// Our in-place transport is Noise's: snow's own transport state reads
    /// what we seal and we read what it seals, record for record.
    #[test]
    fn transport_matches_snow_on_the_wire() {
        let mut i = nn(&key(4), "9", Side::Initiator);
        let mut r = nn(&key(4), "9", Side::Responder);
        r.read_message(&i.write_message().unwrap()[LEN_PREFIX..]).unwrap();
        i.read_message(&r.write_message().unwrap()[LEN_PREFIX..]).unwrap();
        let snow_side = r.hs.into_stateless_transport_mode().unwrap();
        let (mut tx, mut rx) = i.into_transport().unwrap().split();
        for (n, size) in [0usize, 1, 4096, MAX_PLAINTEXT].into_iter().enumerate() {
            let msg: Vec<u8> = (0..size).map(|i| (i * 7) as u8).collect();
            let mut wire = Vec::new();
            tx.seal(&msg, &mut wire).unwrap();
            let mut plain = vec![0u8; wire.len()];
            let got = snow_side
                .read_message(n as u64, &wire[LEN_PREFIX..], &mut plain)
                .unwrap();
            assert_eq!(&plain[..got], &msg[..]);
            let mut back = vec![0u8; size + TAG_LEN];
            snow_side.write_message(n as u64, &msg, &mut back).unwrap();
            assert_eq!(rx.open_in_place(&mut back).unwrap(), &msg[..]);
        }
    }

    /// `Rekey()` is Noise's: after snow rekeys its side, the two still
    /// read each other, and records sealed before and after differ in key.
    #[test]
    fn rekey_matches_snow() {
        let mut i = nn(&key(5), "r", Side::Initiator);
        let mut r = nn(&key(5), "r", Side::Responder);
        r.read_message(&i.write_message().unwrap()[LEN_PREFIX..]).unwrap();
        i.read_message(&r.write_message().unwrap()[LEN_PREFIX..]).unwrap();
        let mut snow_side = r.hs.into_stateless_transport_mode().unwrap();
        let (mut tx, mut rx) = i.into_transport().unwrap().split();
        let msg = b"after the rekey";
        let mut before = Vec::new();
        tx.seal(msg, &mut before).unwrap();
        tx.rekey().unwrap();
        snow_side.rekey_incoming();
        let mut wire = Vec::new();
        tx.seal(msg, &mut wire).unwrap();
        let mut plain = [0u8; 64];
        let n = snow_side
            .read_message(1, &wire[LEN_PREFIX..], &mut plain)
            .unwrap();
        assert_eq!(&plain[..n], msg);
        snow_side.rekey_outgoing();
        let mut back = vec![0u8; msg.len() + TAG_LEN];
        snow_side.write_message(0, msg, &mut back).unwrap();
        rx.rekey().unwrap();
        assert_eq!(rx.open_in_place(&mut back).unwrap(), msg);
    }

    #[test]
    fn ik_authenticates_the_named_responder_in_one_round_trip() {
        use crate::keys::Identity;
        use crate::random::seeded;
        let (a, b, c) = (
            Identity::generate(&mut seeded(7)),
            Identity::generate(&mut seeded(8)),
            Identity::generate(&mut seeded(9)),
        );
        let be = aead::Backend::Ring;
        let bk = b.public().x25519;
        let mut i = Handshake::ik(
            Side::Initiator,
            a.x25519_secret(),
            Some(&bk),
            "m",
            be,
            &mut seeded(1),
        )
        .unwrap();
        let mut r = Handshake::ik(Side::Responder, b.x25519_secret(), None, "m", be, &mut seeded(2)).unwrap();
        let m1 = i.write_message_with(b"hi").unwrap();
        assert_eq!(r.read_message_payload(&m1[LEN_PREFIX..]).unwrap(), b"hi");
        assert_eq!(
            r.remote_static(),
            Some(a.public().x25519),
            "the initiator's key came in message 1"
        );
        i.read_message(&r.write_message().unwrap()[LEN_PREFIX..]).unwrap();
        assert!(i.is_finished() && r.is_finished());
        assert_eq!(i.hash(), r.hash());
        // A responder with another key cannot read message 1.
        let mut i = Handshake::ik(
            Side::Initiator,
            a.x25519_secret(),
            Some(&bk),
            "m",
            be,
            &mut seeded(3),
        )
        .unwrap();
        let mut wrong =
            Handshake::ik(Side::Responder, c.x25519_secret(), None, "m", be, &mut seeded(4)).unwrap();
        assert!(
            wrong
                .read_message(&i.write_message().unwrap()[LEN_PREFIX..])
                .is_err()
        );
        assert!(Handshake::ik(Side::Initiator, a.x25519_secret(), None, "m", be, &mut seeded(5)).is_err());
    }

    #[test]
    fn seal_in_place_matches_seal() {
        let (a, _) = pair(&key(2), "7").unwrap();
        let (b, _) = pair(&key(2), "7").unwrap();
        let (mut s1, _) = a.split();
        let (mut s2, _) = b.split();
        let msg = b"in place";
        let mut wire = Vec::new();
        s1.seal(msg, &mut wire).unwrap();
        let mut rec = vec![0u8; LEN_PREFIX + msg.len() + TAG_LEN];
        rec[LEN_PREFIX..LEN_PREFIX + msg.len()].copy_from_slice(msg);
        s2.seal_in_place(&mut rec).unwrap();
        // Same key material would make them equal; different ephemerals
        // make only the framing comparable.
        assert_eq!(rec.len(), wire.len());
        assert_eq!(rec[..LEN_PREFIX], wire[..LEN_PREFIX]);
        assert!(s2.seal_in_place(&mut [0u8; 17]).is_err());
        assert!(
            s2.seal_in_place(&mut vec![0u8; LEN_PREFIX + MAX_PLAINTEXT + 1 + TAG_LEN])
                .is_err()
        );
    }

    #[test]
    fn record_length_checks() {
        assert_eq!(peek_record_len(&[0]).unwrap(), None);
        assert!(peek_record_len(&[0, 3]).is_err());
        assert_eq!(peek_record_len(&[0xff, 0xff]).unwrap(), Some(65535));
    }
}
