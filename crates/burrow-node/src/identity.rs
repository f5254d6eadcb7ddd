//! This installation's long-term identity: an X25519 key pair (for Noise
//! handshakes with the exit, the relay and, later, mesh nodes) and an
//! Ed25519 key pair (for signatures: relay descriptors, node lists).
//!
//! Stored in `$XDG_DATA_HOME/burrow/identity.key` (else
//! `~/.local/share/burrow/identity.key`), created on first use with mode 0600
//! in a 0700 folder; a key file readable by others is refused, as ssh does.
//!
//! ```text
//! # burrow identity: secret keys, keep this file private
//! x25519 <64 hex digits: the private scalar>
//! ed25519 <64 hex digits: the signing seed>
//! ```
//!
//! The fingerprint names the pair: the first 15 bytes of
//! BLAKE3("burrow identity v1" ‖ x25519 public ‖ ed25519 public), in
//! lowercase base32 (RFC 4648 alphabet, no padding), six groups of four:
//! short enough to read aloud, 120 bits against a forged key.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use curve25519_dalek::montgomery::MontgomeryPoint;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use zeroize::Zeroizing;

use crate::error::Error;

const HEADER: &str = "# burrow identity: secret keys, keep this file private";

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
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
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

fn random32() -> Result<Zeroizing<[u8; 32]>, Error> {
    let mut b = Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut b[..]).map_err(|e| Error::Usage(format!("no random numbers: {e}")))?;
    Ok(b)
}

impl Identity {
    fn from_secrets(x25519: Zeroizing<[u8; 32]>, seed: &[u8; 32]) -> Self {
        let x25519_public = MontgomeryPoint::mul_base_clamped(*x25519).to_bytes();
        Self {
            x25519,
            x25519_public,
            signing: SigningKey::from_bytes(seed),
        }
    }

    /// A fresh identity (not stored).
    pub fn generate() -> Result<Self, Error> {
        let x = random32()?;
        let seed = random32()?;
        Ok(Self::from_secrets(x, &seed))
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

    /// Signs `msg` with the Ed25519 key.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.signing.sign(msg).to_bytes()
    }

    /// The default key file: `$XDG_DATA_HOME/burrow/identity.key`, else
    /// `$HOME/.local/share/burrow/identity.key`.
    pub fn default_path() -> Option<PathBuf> {
        let base = std::env::var_os("XDG_DATA_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/share")))?;
        Some(base.join("burrow").join("identity.key"))
    }

    /// Loads the identity at `path`, creating it (0600, folder 0700) if it
    /// does not exist yet.
    pub fn load_or_create(path: &Path) -> Result<Self, Error> {
        match fs::symlink_metadata(path) {
            Ok(_) => Self::load(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = Self::generate()?;
                id.store(path)?;
                Ok(id)
            }
            Err(e) => Err(Error::io(path, e)),
        }
    }

    fn load(path: &Path) -> Result<Self, Error> {
        let meta = fs::symlink_metadata(path).map_err(|e| Error::io(path, e))?;
        if !meta.file_type().is_file() {
            return Err(Error::Usage(format!("{} is not a regular file", path.display())));
        }
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(Error::Usage(format!(
                "{} is readable by other users: refusing to use it (chmod 600 it if it is yours)",
                path.display()
            )));
        }
        let text = Zeroizing::new(fs::read_to_string(path).map_err(|e| Error::io(path, e))?);
        let bad = || Error::Usage(format!("{} is not a burrow identity file", path.display()));
        let mut x = None;
        let mut seed = None;
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let (k, v) = line.split_once(' ').ok_or_else(bad)?;
            let mut b = Zeroizing::new([0u8; 32]);
            hex::decode_to_slice(v.trim(), &mut b[..]).map_err(|_| bad())?;
            match k {
                "x25519" => x = Some(b),
                "ed25519" => seed = Some(b),
                _ => return Err(bad()),
            }
        }
        match (x, seed) {
            (Some(x), Some(seed)) => Ok(Self::from_secrets(x, &seed)),
            _ => Err(bad()),
        }
    }

    fn store(&self, path: &Path) -> Result<(), Error> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
        }
        let body = Zeroizing::new(format!(
            "{HEADER}\nx25519 {}\ned25519 {}\n",
            hex::encode(&self.x25519[..]),
            hex::encode(self.signing.to_bytes())
        ));
        // O_EXCL + 0600 from the start: never a moment where others can read it.
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        f.write_all(body.as_bytes()).map_err(|e| Error::io(path, e))?;
        f.sync_all().map_err(|e| Error::io(path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("burrow/identity.key");
        let a = Identity::load_or_create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777;
        assert_eq!(dmode, 0o700);
        let b = Identity::load_or_create(&path).unwrap();
        assert_eq!(a.public(), b.public());
        let fp = a.public().fingerprint();
        assert_eq!(fp.len(), 6 * 4 + 5, "{fp}");
        assert!(
            fp.bytes()
                .all(|c| c == b'-' || c.is_ascii_lowercase() || (b'2'..=b'7').contains(&c))
        );
        // Another home, another identity.
        let other = Identity::load_or_create(&dir.path().join("other/identity.key")).unwrap();
        assert_ne!(other.public().fingerprint(), fp);
        // Signatures verify, and only for the right message.
        let sig = a.sign(b"hello");
        assert!(a.public().verify(b"hello", &sig));
        assert!(!a.public().verify(b"hellO", &sig));
        assert!(!other.public().verify(b"hello", &sig));
    }

    #[test]
    fn a_readable_or_broken_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        Identity::load_or_create(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let e = Identity::load_or_create(&path).unwrap_err().to_string();
        assert!(e.contains("readable by other users"), "{e}");
        fs::write(&path, "x25519 zz\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Identity::load_or_create(&path).is_err());
    }

    #[test]
    fn base32_matches_rfc4648() {
        assert_eq!(base32(b"foobar"), "mzxw6ytboi");
        assert_eq!(base32(b"f"), "my");
    }

    #[test]
    fn x25519_public_matches_the_noise_library() {
        // A Noise handshake with our static key must present our public key.
        let id = Identity::generate().unwrap();
        let params: snow::params::NoiseParams = "Noise_XX_25519_AESGCM_SHA256".parse().unwrap();
        let kp = snow::Builder::new(params)
            .local_private_key(id.x25519_secret())
            .unwrap();
        let mut i = kp.build_initiator().unwrap();
        let params: snow::params::NoiseParams = "Noise_XX_25519_AESGCM_SHA256".parse().unwrap();
        let resp_key = Identity::generate().unwrap();
        let mut r = snow::Builder::new(params)
            .local_private_key(resp_key.x25519_secret())
            .unwrap()
            .build_responder()
            .unwrap();
        let (mut b1, mut b2) = ([0u8; 256], [0u8; 256]);
        let n = i.write_message(&[], &mut b1).unwrap();
        r.read_message(&b1[..n], &mut b2).unwrap();
        let n = r.write_message(&[], &mut b1).unwrap();
        i.read_message(&b1[..n], &mut b2).unwrap();
        let n = i.write_message(&[], &mut b1).unwrap();
        r.read_message(&b1[..n], &mut b2).unwrap();
        assert_eq!(r.get_remote_static().unwrap(), &id.public().x25519[..]);
    }
}
