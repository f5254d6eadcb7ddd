//! Paired peers, like `known_hosts`: `$XDG_DATA_HOME/burrow/peers` (next to
//! the identity key), mode 0600, one peer per line:
//!
//! ```text
//! # burrow paired peers: NAME FINGERPRINT X25519 ED25519
//! laptop k3vq-7zpa-m2xd-qq4r-aa7b-c6de 5f0c…(64 hex) 9a1e…(64 hex)
//! ```
//!
//! The file is rewritten whole (to a temporary name, then renamed), so a
//! crash never leaves half a line.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub use burrow_proto::keys::pair::valid_name;

use crate::error::Error;
use crate::keys::identity::PublicIdentity;

const HEADER: &str = "# burrow paired peers: NAME FINGERPRINT X25519 ED25519";

/// One paired peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The local name.
    pub name: String,
    /// Its keys.
    pub key: PublicIdentity,
}

/// The paired peers of this installation.
#[derive(Debug)]
pub struct PeerBook {
    path: PathBuf,
    peers: Vec<Peer>,
}

fn key_hex(s: &str) -> Option<[u8; 32]> {
    let mut b = [0u8; 32];
    hex::decode_to_slice(s, &mut b).ok()?;
    Some(b)
}

impl PeerBook {
    /// The default file, beside the identity key.
    pub fn default_path() -> Option<PathBuf> {
        crate::keys::identity::default_path().map(|p| p.with_file_name("peers"))
    }

    /// Loads the book (an absent file is an empty book).
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(Error::io(path, e)),
        };
        let mut peers = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let bad = || Error::Usage(format!("{}:{}: not a peer line", path.display(), n + 1));
            let f: Vec<&str> = line.split_whitespace().collect();
            let [name, fp, x, ed] = f[..] else {
                return Err(bad());
            };
            let key = PublicIdentity {
                x25519: key_hex(x).ok_or_else(bad)?,
                ed25519: key_hex(ed).ok_or_else(bad)?,
            };
            if !valid_name(name) || key.fingerprint() != fp {
                return Err(bad());
            }
            peers.push(Peer {
                name: name.to_owned(),
                key,
            });
        }
        Ok(Self {
            path: path.to_owned(),
            peers,
        })
    }

    /// Every peer, in the order they were paired.
    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }

    /// A peer by name or fingerprint.
    pub fn find(&self, name_or_fp: &str) -> Option<&Peer> {
        self.peers
            .iter()
            .find(|p| p.name == name_or_fp || p.key.fingerprint() == name_or_fp)
    }

    /// Whether `x25519` belongs to a paired peer.
    pub fn by_x25519(&self, x25519: &[u8; 32]) -> Option<&Peer> {
        self.peers.iter().find(|p| &p.key.x25519 == x25519)
    }

    /// Adds a peer. A name already used for another key is refused; pairing
    /// the same key again renames it.
    pub fn add(&mut self, name: &str, key: PublicIdentity) -> Result<(), Error> {
        if !valid_name(name) {
            return Err(Error::Usage(format!(
                "{name:?} cannot name a peer: use 1-64 of A-Z a-z 0-9 . _ -"
            )));
        }
        if let Some(p) = self.peers.iter().find(|p| p.name == name && p.key != key) {
            return Err(Error::Usage(format!(
                "the name {} is taken by {}; choose another with --name, or `burrow unpair {}` first",
                p.name,
                p.key.fingerprint(),
                p.name
            )));
        }
        self.peers.retain(|p| p.key != key);
        self.peers.push(Peer {
            name: name.to_owned(),
            key,
        });
        self.save()
    }

    /// Removes a peer by name or fingerprint; returns it.
    pub fn remove(&mut self, name_or_fp: &str) -> Result<Peer, Error> {
        let i = self
            .peers
            .iter()
            .position(|p| p.name == name_or_fp || p.key.fingerprint() == name_or_fp)
            .ok_or_else(|| Error::Usage(format!("no paired peer is called {name_or_fp}")))?;
        let p = self.peers.remove(i);
        self.save()?;
        Ok(p)
    }

    fn save(&self) -> Result<(), Error> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut body = format!("{HEADER}\n");
        for p in &self.peers {
            body.push_str(&format!(
                "{} {} {} {}\n",
                p.name,
                p.key.fingerprint(),
                hex::encode(p.key.x25519),
                hex::encode(p.key.ed25519)
            ));
        }
        let tmp = self.path.with_extension("tmp");
        let _ = fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| Error::io(&tmp, e))?;
        f.write_all(body.as_bytes()).map_err(|e| Error::io(&tmp, e))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
        fs::rename(&tmp, &self.path).map_err(|e| Error::io(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_find_rename_remove_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peers");
        let (a, b) = (
            crate::keys::identity::generate().public(),
            crate::keys::identity::generate().public(),
        );
        let mut book = PeerBook::load(&path).unwrap();
        book.add("laptop", a).unwrap();
        book.add("server", b).unwrap();
        assert!(book.add("laptop", b).is_err(), "a name is not silently reused");
        assert!(book.add("bad name", b).is_err());
        book.add("work-laptop", a).unwrap();
        let book = PeerBook::load(&path).unwrap();
        assert_eq!(book.peers().len(), 2);
        assert_eq!(book.find("work-laptop").unwrap().key, a);
        assert_eq!(book.find(&b.fingerprint()).unwrap().name, "server");
        assert_eq!(book.by_x25519(&b.x25519).unwrap().name, "server");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let mut book = book;
        book.remove("server").unwrap();
        assert!(book.remove("server").is_err());
        assert_eq!(PeerBook::load(&path).unwrap().peers().len(), 1);
        // A tampered line (fingerprint not matching the keys) is refused.
        let text = fs::read_to_string(&path)
            .unwrap()
            .replace("work-laptop ", "work-laptop aaaa");
        fs::write(&path, text).unwrap();
        assert!(PeerBook::load(&path).is_err());
    }
}
