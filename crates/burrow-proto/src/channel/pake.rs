//! SPAKE2 and key confirmation for channel mode (seed 001, steps 2–10).
//!
//! Flow (who computes what; the relay only stores and forwards the values):
//!
//! ```text
//! sender                         relay                      recipient
//! SenderStart::new(code) -> X  --x-->   stores x
//!                                        <--(state)--      RecipientStart::respond(code, X)
//!                                                          -> Y, hh_k = H(h_k)
//!                               stores y, hh_k  <--y,hh_k--
//! finish(Y, hh_k): checks H(h_k') == hh_k, else WrongCode
//!   -> h_k                     --h_k--> stores h_k   -->   verify(h_k): h_k == h_k'?
//! SessionKey                                               SessionKey
//! ```
//!
//! `h_k` is a BLAKE3 MAC, keyed from the SPAKE2 output, over the transcript
//! (protocol label, channel, both roles, X and Y), so confirmation fails if
//! anything in the exchange was altered. `hh_k = BLAKE3(h_k)`: the recipient
//! proves first without revealing the value the sender later proves with.
//! Each step consumes its state, so a failed attempt cannot be retried with the
//! same state; the relay lets each channel carry one `x` and one `y`, which
//! burns the channel after one guess.

use crate::random::{RandCore, Random};
use spake2::{Ed25519Group, Identity, Password, Spake2};
use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::channel::code::Code;

/// Domain-separation labels (versioned).
const LABEL_TRANSCRIPT: &str = "burrow v1 channel pake transcript";
const LABEL_CONFIRM: &str = "burrow v1 channel key confirmation";
const LABEL_PSK: &str = "burrow v1 channel noise psk";
/// SPAKE2 messages on the wire (1 side byte + 32-byte point).
pub const PAKE_MSG_LEN: usize = 33;

/// Why the key exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PakeError {
    /// The peer's PAKE message is malformed.
    #[error("the peer's key exchange message is malformed")]
    BadMessage,
    /// Key confirmation failed: the two sides used different codes (or someone
    /// in the middle tried to guess it).
    #[error("wrong code: the other side used a different code")]
    WrongCode,
}

/// The shared secret both sides end with: the pre-shared key for the Noise
/// session. Zeroized on drop; never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct SessionKey([u8; 32]);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(<redacted>)")
    }
}

impl SessionKey {
    /// The raw key (for the Noise PSK slot).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Builds a key from raw bytes (tests and other handshakes that end in a PSK).
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }
}

fn ids(channel: &str) -> (Identity, Identity) {
    (
        Identity::new(format!("burrow/v1/channel/{channel}/sender").as_bytes()),
        Identity::new(format!("burrow/v1/channel/{channel}/recipient").as_bytes()),
    )
}

fn transcript(channel: &str, x: &[u8], y: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(LABEL_TRANSCRIPT);
    for part in [channel.as_bytes(), b"sender", b"recipient", x, y] {
        h.update(&(part.len() as u64).to_be_bytes());
        h.update(part);
    }
    *h.finalize().as_bytes()
}

/// Derived values once both PAKE messages are known.
struct Derived {
    h_k: blake3::Hash,
    psk: SessionKey,
}

fn derive(k: &[u8], channel: &str, x: &[u8], y: &[u8]) -> Derived {
    let t = transcript(channel, x, y);
    let ck = Zeroizing::new(blake3::derive_key(LABEL_CONFIRM, k));
    let h_k = blake3::keyed_hash(&ck, &t);
    let mut ikm = Zeroizing::new(Vec::with_capacity(k.len() + 32));
    ikm.extend_from_slice(k);
    ikm.extend_from_slice(&t);
    let psk = SessionKey(blake3::derive_key(LABEL_PSK, &ikm));
    Derived { h_k, psk }
}

/// `hh_k` for a given `h_k`.
fn hash_twice(h_k: &blake3::Hash) -> blake3::Hash {
    blake3::hash(h_k.as_bytes())
}

/// Sender, after step 2: X is generated and waits for Y and `hh_k`.
#[derive(Debug)]
pub struct SenderStart {
    state: Spake2<Ed25519Group>,
    channel: String,
    x: Vec<u8>,
}

impl SenderStart {
    /// Step 2: generates X from the code's secret (its scalar from `rng`).
    /// Returns the state and X.
    pub fn new(code: &Code, rng: &mut dyn Random) -> (Self, Vec<u8>) {
        let (a, b) = ids(code.channel());
        let (state, x) =
            Spake2::<Ed25519Group>::start_a_with_rng(&Password::new(code.secret()), &a, &b, RandCore(rng));
        let me = Self {
            state,
            channel: code.channel().to_owned(),
            x: x.clone(),
        };
        (me, x)
    }

    /// Step 8: derives the key from Y, checks the recipient's `hh_k`, and
    /// returns the session key and `h_k` to post (step 9).
    pub fn finish(self, y: &[u8], hh_k: &[u8; 32]) -> Result<(SessionKey, [u8; 32]), PakeError> {
        if y.len() != PAKE_MSG_LEN {
            return Err(PakeError::BadMessage);
        }
        let k = Zeroizing::new(self.state.finish(y).map_err(|_| PakeError::BadMessage)?);
        let d = derive(&k, &self.channel, &self.x, y);
        if hash_twice(&d.h_k) != blake3::Hash::from_bytes(*hh_k) {
            return Err(PakeError::WrongCode);
        }
        Ok((d.psk, *d.h_k.as_bytes()))
    }
}

/// Recipient, after step 7: waits for the sender's `h_k`.
#[derive(Debug)]
pub struct RecipientAwaitConfirm {
    h_k: blake3::Hash,
    psk: SessionKey,
}

/// Recipient's side of the exchange.
#[derive(Debug)]
pub struct RecipientStart;

impl RecipientStart {
    /// Step 6: from X and the code, computes Y and `hh_k` (to post in step 7).
    pub fn respond(
        code: &Code,
        x: &[u8],
        rng: &mut dyn Random,
    ) -> Result<(RecipientAwaitConfirm, Vec<u8>, [u8; 32]), PakeError> {
        if x.len() != PAKE_MSG_LEN {
            return Err(PakeError::BadMessage);
        }
        let (a, b) = ids(code.channel());
        let (state, y) =
            Spake2::<Ed25519Group>::start_b_with_rng(&Password::new(code.secret()), &a, &b, RandCore(rng));
        let k = Zeroizing::new(state.finish(x).map_err(|_| PakeError::BadMessage)?);
        let d = derive(&k, code.channel(), x, &y);
        let hh = *hash_twice(&d.h_k).as_bytes();
        Ok((
            RecipientAwaitConfirm {
                h_k: d.h_k,
                psk: d.psk,
            },
            y,
            hh,
        ))
    }
}

impl RecipientAwaitConfirm {
    /// Step 10: checks the sender's `h_k` (constant-time) and yields the session key.
    pub fn verify(self, h_k: &[u8; 32]) -> Result<SessionKey, PakeError> {
        if self.h_k == blake3::Hash::from_bytes(*h_k) {
            Ok(self.psk.clone())
        } else {
            Err(PakeError::WrongCode)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::seeded;

    fn code(s: &str) -> Code {
        Code::parse(s).unwrap()
    }

    #[test]
    fn same_code_agrees() {
        let c = code("5-alpha-bravo-charlie");
        let (s, x) = SenderStart::new(&c, &mut seeded(1));
        let (r, y, hh) = RecipientStart::respond(&c, &x, &mut seeded(2)).unwrap();
        let (ks, h_k) = s.finish(&y, &hh).unwrap();
        let kr = r.verify(&h_k).unwrap();
        assert_eq!(ks, kr);
        assert_eq!(format!("{ks:?}"), "SessionKey(<redacted>)");
    }

    #[test]
    fn wrong_code_is_caught_by_the_sender_first() {
        let (s, x) = SenderStart::new(&code("5-alpha-bravo-charlie"), &mut seeded(1));
        let (_r, y, hh) = RecipientStart::respond(&code("5-alpha-bravo-delta"), &x, &mut seeded(2)).unwrap();
        assert_eq!(s.finish(&y, &hh).unwrap_err(), PakeError::WrongCode);
    }

    #[test]
    fn channel_is_bound() {
        let (s, x) = SenderStart::new(&code("5-alpha-bravo-charlie"), &mut seeded(1));
        let (_r, y, hh) =
            RecipientStart::respond(&code("6-alpha-bravo-charlie"), &x, &mut seeded(2)).unwrap();
        assert_eq!(s.finish(&y, &hh).unwrap_err(), PakeError::WrongCode);
    }

    #[test]
    fn tampered_confirmation_is_caught_by_the_recipient() {
        let c = code("5-alpha-bravo-charlie");
        let (s, x) = SenderStart::new(&c, &mut seeded(1));
        let (r, y, hh) = RecipientStart::respond(&c, &x, &mut seeded(2)).unwrap();
        let (_k, mut h_k) = s.finish(&y, &hh).unwrap();
        h_k[0] ^= 1;
        assert_eq!(r.verify(&h_k).unwrap_err(), PakeError::WrongCode);
    }

    #[test]
    fn malformed_messages_are_errors() {
        let c = code("5-a");
        assert_eq!(
            RecipientStart::respond(&c, &[0u8; 5], &mut seeded(2)).unwrap_err(),
            PakeError::BadMessage
        );
        let (s, _x) = SenderStart::new(&c, &mut seeded(1));
        assert_eq!(
            s.finish(&[0xffu8; 33], &[0; 32]).unwrap_err(),
            PakeError::BadMessage
        );
    }
}
