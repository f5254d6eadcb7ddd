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
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
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

/// What a fingerprint spells: the first 15 bytes of BLAKE3("burrow
/// identity v1" ‖ x25519 ‖ ed25519). The mesh names nodes by it (node id),
/// so "my machines" have one name everywhere: `burrow id`, the peer book,
/// node lists, `burrow node ping`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub [u8; 15]);

impl NodeId {
    /// Reads a fingerprint as printed (`k3vq-7zpa-…`, dashes and case
    /// optional); `None` if it is not 24 base32 letters.
    pub fn parse(s: &str) -> Option<Self> {
        let mut out = [0u8; 15];
        let (mut acc, mut bits, mut n, mut letters) = (0u32, 0u32, 0usize, 0usize);
        for c in s.bytes().filter(|&c| c != b'-') {
            let v = match c.to_ascii_lowercase() {
                c @ b'a'..=b'z' => c - b'a',
                c @ b'2'..=b'7' => c - b'2' + 26,
                _ => return None,
            };
            letters += 1;
            if letters > 24 {
                return None;
            }
            acc = (acc << 5) | u32::from(v);
            bits += 5;
            if bits >= 8 {
                bits -= 8;
                out[n] = (acc >> bits) as u8;
                n += 1;
            }
        }
        (letters == 24).then_some(NodeId(out))
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b32 = base32(&self.0);
        for (i, c) in b32.as_bytes().chunks(4).enumerate() {
            if i > 0 {
                f.write_str("-")?;
            }
            f.write_str(std::str::from_utf8(c).unwrap_or_default())?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeId({self})")
    }
}

impl PublicIdentity {
    /// The node id these keys make (see [`NodeId`]).
    pub fn id(&self) -> NodeId {
        let mut h = blake3::Hasher::new();
        h.update(b"burrow identity v1");
        h.update(&self.x25519);
        h.update(&self.ed25519);
        let mut id = [0u8; 15];
        id.copy_from_slice(&h.finalize().as_bytes()[..15]);
        NodeId(id)
    }

    /// The fingerprint, e.g. `k3vq-7zpa-...` (six groups of four): the
    /// node id as printed.
    pub fn fingerprint(&self) -> String {
        self.id().to_string()
    }

    /// Checks a signature made with [`Identity::sign`], strictly: a
    /// small-order key or a non-canonical signature is refused (with one,
    /// a forger can make a "signature" that checks for any message).
    pub fn verify(&self, msg: &[u8], sig: &[u8; 64]) -> bool {
        VerifyingKey::from_bytes(&self.ed25519)
            .is_ok_and(|k| k.verify_strict(msg, &Signature::from_bytes(sig)).is_ok())
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

    /// The neutral point as a key, with R = the neutral point and S = 0:
    /// a lax check accepts it for every message; ours refuses it.
    #[test]
    fn small_order_keys_sign_nothing() {
        use ed25519_dalek::Verifier;
        let mut neutral = [0u8; 32];
        neutral[0] = 1;
        let weak = PublicIdentity {
            ed25519: neutral,
            x25519: [9; 32],
        };
        let mut sig = [0u8; 64];
        sig[0] = 1;
        let lax = VerifyingKey::from_bytes(&neutral)
            .unwrap()
            .verify(b"anything", &Signature::from_bytes(&sig));
        assert!(lax.is_ok(), "the forgery the strict check exists for");
        assert!(!weak.verify(b"anything", &sig));
        assert!(!weak.verify(b"anything else", &sig));
    }

    #[test]
    fn node_ids_read_back_from_their_fingerprints() {
        for seed in 0..20 {
            let id = Identity::generate(&mut seeded(seed)).public().id();
            let fp = id.to_string();
            assert_eq!(NodeId::parse(&fp), Some(id));
            assert_eq!(NodeId::parse(&fp.replace('-', "").to_uppercase()), Some(id));
            assert_eq!(NodeId::parse(&fp[..fp.len() - 1]), None);
            assert_eq!(NodeId::parse(&format!("{fp}a")), None);
        }
        assert_eq!(NodeId::parse("1111-2222-3333-4444-5555-6666"), None);
        assert_eq!(NodeId::parse(""), None);
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
