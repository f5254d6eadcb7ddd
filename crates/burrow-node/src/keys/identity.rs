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
//! The keys themselves, their fingerprint and signatures are
//! [`burrow_proto::keys`]; this module only stores and loads them.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

pub use burrow_proto::keys::{Identity, PublicIdentity};

use crate::error::{Error, shown};
use crate::platform::OsRandom;

const HEADER: &str = "# burrow identity: secret keys, keep this file private";

/// The default key file: `$XDG_DATA_HOME/burrow/identity.key`, else
/// `$HOME/.local/share/burrow/identity.key`.
pub fn default_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/share")))?;
    Some(base.join("burrow").join("identity.key"))
}

/// A fresh identity from the OS RNG (not stored).
pub fn generate() -> Identity {
    Identity::generate(&mut OsRandom)
}

/// Loads the identity at `path`, creating it (0600, folder 0700) if it
/// does not exist yet.
pub fn load_or_create(path: &Path) -> Result<Identity, Error> {
    match fs::symlink_metadata(path) {
        Ok(_) => load(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = generate();
            store(&id, path)?;
            Ok(id)
        }
        Err(e) => Err(Error::io(path, e)),
    }
}

fn load(path: &Path) -> Result<Identity, Error> {
    let meta = fs::symlink_metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.file_type().is_file() {
        return Err(Error::Usage(format!("{} is not a regular file", shown(path))));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(Error::Usage(format!(
            "{} is readable by other users: refusing to use it (chmod 600 it if it is yours)",
            shown(path)
        )));
    }
    let text = Zeroizing::new(fs::read_to_string(path).map_err(|e| Error::io(path, e))?);
    let bad = || Error::Usage(format!("{} is not a burrow identity file", shown(path)));
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
        (Some(x), Some(seed)) => Ok(Identity::from_secrets(x, &seed)),
        _ => Err(bad()),
    }
}

fn store(id: &Identity, path: &Path) -> Result<(), Error> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    }
    let x = Zeroizing::new(hex::encode(&id.x25519_secret()[..]));
    let seed = Zeroizing::new(hex::encode(&id.signing_seed()[..]));
    let body = Zeroizing::new(format!("{HEADER}\nx25519 {}\ned25519 {}\n", *x, *seed));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("burrow/identity.key");
        let a = load_or_create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777;
        assert_eq!(dmode, 0o700);
        let b = load_or_create(&path).unwrap();
        assert_eq!(a.public(), b.public());
        // Another home, another identity.
        let other = load_or_create(&dir.path().join("other/identity.key")).unwrap();
        assert_ne!(other.public(), a.public());
    }

    #[test]
    fn a_readable_or_broken_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        load_or_create(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create(&path).unwrap_err().to_string();
        assert!(e.contains("readable by other users"), "{e}");
        fs::write(&path, "x25519 zz\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(load_or_create(&path).is_err());
    }
}
