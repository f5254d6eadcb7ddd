//! Long-term identities, their public halves and fingerprints, and
//! signatures: what every system that names a machine by its key uses
//! (the connector's relay and exit, pairing, and the mesh's node records
//! next). File storage lives in `burrow-node` (`identity`); this module is
//! pure so that sans-IO code can check signatures.
//!
//! An identity is an X25519 key pair (Noise static key) and an Ed25519 key
//! pair (signatures). Its fingerprint names the pair: the first 15 bytes of
//! BLAKE3("burrow identity v1" ‖ x25519 public ‖ ed25519 public), in
//! lowercase base32 (RFC 4648 alphabet, no padding), six groups of four:
//! short enough to read aloud, 120 bits against a forged key.
//!
//! | module | owns |
//! |---|---|
//! | [`pair`] | the pairing message (long-term keys exchanged under a code) |

pub mod pair;

use curve25519_dalek::montgomery::MontgomeryPoint;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use zeroize::Zeroizing;

use crate::random::Random;

/// A long-term identity (secret halves zeroized on drop).
pub struct Identity {
    x25519: Zeroizing<[u8; 32]>,
    x25519_public: [u8; 32],
    signing: SigningKey,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.public().fingerprint())
            .finish_non_exhaustive()
    }
}

/// The public half of an identity: what peers pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicIdentity {
    /// X25519 public key (Noise static key).
    pub x25519: [u8; 32],
    /// Ed25519 verifying key.
    pub ed25519: [u8; 32],
}

/// RFC 4648 base32, lowercase, no padding.
fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut out = String::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((acc >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((acc << (5 - bits)) & 31) as usize]));
    }
    out
}

impl PublicIdentity {
    /// The fingerprint, e.g. `k3vq-7zpa-...` (six groups of four).
    pub fn fingerprint(&self) -> String {
        let mut h = blake3::Hasher::new();
        h.update(b"burrow identity v1");
        h.update(&self.x25519);
        h.update(&self.ed25519);
        let b32 = base32(&h.finalize().as_bytes()[..15]);
        b32.as_bytes()
            .chunks(4)
            .map(|c| std::str::from_utf8(c).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("-")
    }

    /// Checks a signature made with [`Identity::sign`].
    pub fn verify(&self, msg: &[u8], sig: &[u8; 64]) -> bool {
        VerifyingKey::from_bytes(&self.ed25519)
            .is_ok_and(|k| k.verify(msg, &Signature::from_bytes(sig)).is_ok())
    }
}

impl Identity {
    /// The identity of these secrets (the X25519 private scalar and the
    /// Ed25519 signing seed, as stored).
    pub fn from_secrets(x25519: Zeroizing<[u8; 32]>, seed: &[u8; 32]) -> Self {
        let x25519_public = MontgomeryPoint::mul_base_clamped(*x25519).to_bytes();
        Self {
            x25519,
            x25519_public,
            signing: SigningKey::from_bytes(seed),
        }
    }

    /// A fresh identity from `rng` (not stored).
    pub fn generate(rng: &mut dyn Random) -> Self {
        let mut x = Zeroizing::new([0u8; 32]);
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill(&mut x[..]);
        rng.fill(&mut seed[..]);
        Self::from_secrets(x, &seed)
    }

    /// The public half.
    pub fn public(&self) -> PublicIdentity {
        PublicIdentity {
            x25519: self.x25519_public,
            ed25519: self.signing.verifying_key().to_bytes(),
        }
    }

    /// The X25519 private key, for a Noise handshake's static key.
    pub fn x25519_secret(&self) -> &[u8; 32] {
        &self.x25519
    }

    /// The Ed25519 signing seed (to store the identity).
    pub fn signing_seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.signing.to_bytes())
    }

    /// Signs `msg` with the Ed25519 key.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.signing.sign(msg).to_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::seeded;
    use crate::session::{Handshake, LEN_PREFIX, Side, aead::Backend};

    #[test]
    fn fingerprints_and_signatures() {
        let a = Identity::generate(&mut seeded(1));
        let b = Identity::generate(&mut seeded(2));
        let fp = a.public().fingerprint();
        assert_eq!(fp.len(), 6 * 4 + 5, "{fp}");
        assert!(
            fp.bytes()
                .all(|c| c == b'-' || c.is_ascii_lowercase() || (b'2'..=b'7').contains(&c))
        );
        assert_ne!(b.public().fingerprint(), fp);
        assert_eq!(Identity::generate(&mut seeded(1)).public(), a.public());
        let again = Identity::from_secrets(Zeroizing::new(*a.x25519_secret()), &a.signing_seed());
        assert_eq!(again.public(), a.public());
        let sig = a.sign(b"hello");
        assert!(a.public().verify(b"hello", &sig));
        assert!(!a.public().verify(b"hellO", &sig));
        assert!(!b.public().verify(b"hello", &sig));
    }

    #[test]
    fn base32_matches_rfc4648() {
        assert_eq!(base32(b"foobar"), "mzxw6ytboi");
        assert_eq!(base32(b"f"), "my");
    }

    #[test]
    fn x25519_public_is_what_noise_presents() {
        let (id, other) = (
            Identity::generate(&mut seeded(3)),
            Identity::generate(&mut seeded(4)),
        );
        let b = Backend::Ring;
        let mut i = Handshake::xx(Side::Initiator, id.x25519_secret(), "t", b, &mut seeded(5)).unwrap();
        let mut r = Handshake::xx(Side::Responder, other.x25519_secret(), "t", b, &mut seeded(6)).unwrap();
        r.read_message(&i.write_message().unwrap()[LEN_PREFIX..]).unwrap();
        i.read_message(&r.write_message().unwrap()[LEN_PREFIX..]).unwrap();
        r.read_message(&i.write_message().unwrap()[LEN_PREFIX..]).unwrap();
        assert_eq!(r.remote_static(), Some(id.public().x25519));
        assert_eq!(i.remote_static(), Some(other.public().x25519));
    }
}
