//! Pairing (issue 5): two installations exchange their long-term public
//! keys inside a session keyed by a spoken code (the channel rendezvous of
//! seed 001), and each stores the other under a name, like `known_hosts`.
//!
//! ```text
//! PairHello = version:u8 (=1) | x25519:32 | ed25519:32 | name: len:u8 + printable ASCII (1..=64)
//!           | signature:64
//! signature = Ed25519 over "burrow pair v1" ‖ binding:32 ‖ x25519 ‖ ed25519 ‖ name
//! binding   = BLAKE3-derive_key("burrow pair binding", session key)
//! ```
//!
//! The code authenticates the exchange (only the two people holding it can
//! be in the session); the signature proves the sender holds the Ed25519 key
//! it announces, for this session only. The X25519 key is proven later, by
//! every Noise handshake made with it.

use crate::wire::{DecodeError, EncodeError, Reader, Writer};

/// Format version.
pub const VERSION: u8 = 1;
/// Longest name hint.
pub const MAX_NAME: usize = 64;

/// One side's pairing message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairHello {
    /// X25519 public key.
    pub x25519: [u8; 32],
    /// Ed25519 verifying key.
    pub ed25519: [u8; 32],
    /// How this side would like to be called (e.g. its host name).
    pub name: String,
    /// Ed25519 signature over [`PairHello::signed_bytes`].
    pub signature: [u8; 64],
}

/// Whether `name` may name a peer: 1–64 of `[A-Za-z0-9._-]`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl PairHello {
    /// What the signature covers.
    pub fn signed_bytes(binding: &[u8; 32], x25519: &[u8; 32], ed25519: &[u8; 32], name: &str) -> Vec<u8> {
        let mut v = b"burrow pair v1".to_vec();
        v.extend_from_slice(binding);
        v.extend_from_slice(x25519);
        v.extend_from_slice(ed25519);
        v.extend_from_slice(name.as_bytes());
        v
    }

    /// The binding of a signature to one session.
    pub fn binding(session_key: &[u8; 32]) -> [u8; 32] {
        blake3::derive_key("burrow pair binding", session_key)
    }

    /// Encodes the message; a name that does not fit is an error (a
    /// clipped name would no longer match its signature).
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(2 + 64 + MAX_NAME + 64);
        Writer::new(&mut out)
            .u8(VERSION)
            .bytes(&self.x25519)
            .bytes(&self.ed25519)
            .bytes_u8("name", MAX_NAME, self.name.as_bytes())?
            .bytes(&self.signature);
        Ok(out)
    }

    /// Decodes one whole message. Total.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let v = r.u8()?;
        if v != VERSION {
            return Err(DecodeError::Unknown {
                what: "pair version",
                value: v.into(),
            });
        }
        let x25519 = r.array()?;
        let ed25519 = r.array()?;
        let name = r.str_u8("name", MAX_NAME)?.to_owned();
        if !valid_name(&name) {
            return Err(DecodeError::Invalid {
                what: "name",
                reason: "1-64 of A-Z a-z 0-9 . _ -",
            });
        }
        let signature = r.array()?;
        r.finish()?;
        Ok(Self {
            x25519,
            ed25519,
            name,
            signature,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_limits() {
        let h = PairHello {
            x25519: [1; 32],
            ed25519: [2; 32],
            name: "laptop".into(),
            signature: [3; 64],
        };
        let enc = h.encode().unwrap();
        assert_eq!(enc.len(), 1 + 32 + 32 + 1 + 6 + 64);
        assert_eq!(&enc[65..72], b"\x06laptop");
        assert_eq!(PairHello::decode(&enc).unwrap(), h);
        assert!(PairHello::decode(&enc[..enc.len() - 1]).is_err());
        let mut bad = enc.clone();
        bad[66] = b' ';
        assert!(PairHello::decode(&bad).is_err());
        assert!(
            valid_name("home-pc.lan_2")
                && !valid_name("a b")
                && !valid_name("")
                && !valid_name(&"x".repeat(65))
        );
    }
}
