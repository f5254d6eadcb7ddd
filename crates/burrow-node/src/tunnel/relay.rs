//! The relay side of a tunnel: the authenticated connector link (Noise XX
//! with the relay, its key pinned or remembered) and the end-to-end
//! handshake with the other side through the relay's pipe.

use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use burrow_proto::connector::{MAGIC, Msg, RELAY_CONTEXT, TUNNEL_CONTEXT, VERSION};
use burrow_proto::session::{Handshake, Opener, Sealer, Side};

use crate::error::Error;
use crate::keys::identity::{Identity, PublicIdentity};
use crate::meet::handshake;
use crate::meet::paths::{read_frame, send_record};
use crate::meet::relay_client::RelayClient;
use crate::platform::{self, OsRandom};

use super::*;

/// Which relay key to trust: a pinned fingerprint, or trust on first use
/// remembered in a file.
#[derive(Debug, Clone)]
pub struct RelayTrust {
    /// `ADDR#FINGERPRINT` gave one.
    pub pinned: Option<String>,
    /// Where first-use fingerprints are kept (`ADDR FINGERPRINT` lines).
    pub known: Option<PathBuf>,
}

impl RelayTrust {
    /// Splits `ADDR#FINGERPRINT`.
    pub fn parse(relay: &str, known: Option<PathBuf>) -> (String, Self) {
        match relay.split_once('#') {
            Some((a, fp)) => (
                a.to_owned(),
                Self {
                    pinned: Some(fp.trim().to_owned()),
                    known,
                },
            ),
            None => (relay.to_owned(), Self { pinned: None, known }),
        }
    }

    /// The default file of first-use fingerprints.
    pub fn default_known() -> Option<PathBuf> {
        crate::keys::identity::default_path().map(|p| p.with_file_name("relays"))
    }

    pub(super) fn check(&self, addr: &str, fp: &str) -> Result<(), Error> {
        if let Some(p) = &self.pinned {
            return if p == fp {
                Ok(())
            } else {
                Err(Error::Integrity(format!(
                    "the relay at {addr} presents key {fp}, not the pinned {p}: refusing it"
                )))
            };
        }
        let Some(path) = &self.known else { return Ok(()) };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        for line in text.lines() {
            if let Some((a, known)) = line.split_once(' ')
                && a == addr
            {
                return if known.trim() == fp {
                    Ok(())
                } else {
                    Err(Error::Integrity(format!(
                        "THE RELAY'S KEY CHANGED: {addr} presented {known} before and {fp} now. \
                         Someone may be impersonating it. If it was re-keyed on purpose, remove its line \
                         from {} (or pin it with {addr}#{fp})",
                        path.display()
                    )))
                };
            }
        }
        remember(path, addr, fp)
    }
}

fn remember(path: &Path, addr: &str, fp: &str) -> Result<(), Error> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    std::io::Write::write_all(&mut f, format!("{addr} {fp}\n").as_bytes()).map_err(|e| Error::io(path, e))
}

/// An authenticated connection to the relay.
pub(crate) struct RelayLink {
    pub(crate) s: TcpStream,
    pub(crate) sealer: Sealer,
    pub(crate) opener: Opener,
    /// The relay's fingerprint, as checked.
    pub(crate) fingerprint: String,
}

impl RelayLink {
    pub(crate) async fn send(&mut self, m: &Msg) -> Result<(), Error> {
        send_record(&mut self.s, &mut self.sealer, &m.encode()).await
    }

    pub(crate) async fn recv(&mut self) -> Result<Msg, Error> {
        let mut ct = read_frame(&mut self.s).await?;
        let plain = self.opener.open_in_place(&mut ct)?;
        match Msg::decode(plain).map_err(|e| Error::RelayProtocol(e.to_string()))? {
            Msg::Error(m) => Err(Error::Relay {
                kind: "connector".into(),
                message: burrow_proto::transfer::escape_display(&m),
            }),
            m => Ok(m),
        }
    }
}

/// Opens an authenticated connection to the relay ("authenticate" and
/// "authenticate-ack" of seed 000).
pub(crate) async fn relay_link(
    relay: &RelayClient,
    trust: &RelayTrust,
    me: &Identity,
) -> Result<RelayLink, Error> {
    let mut s = relay.connect().await?;
    let mut seen = String::new();
    let run = async {
        let mut hello = MAGIC.to_vec();
        hello.push(VERSION);
        s.write_all(&hello).await.map_err(Error::ConnectionLost)?;
        let hs = Handshake::xx(
            Side::Initiator,
            me.x25519_secret(),
            RELAY_CONTEXT,
            platform::aead(),
            &mut OsRandom,
        )?;
        // The relay's one payload (message 2): its Ed25519 key, checked
        // with its static key against the pinned fingerprint.
        let hs = handshake::drive(
            &mut s,
            hs,
            HANDSHAKE_TIMEOUT,
            "the relay handshake",
            |hs, payload| {
                let (Some(x25519), Ok(ed25519)) = (hs.remote_static(), <[u8; 32]>::try_from(payload)) else {
                    return Err(Error::RelayProtocol("the relay did not present its keys".into()));
                };
                let fp = PublicIdentity { x25519, ed25519 }.fingerprint();
                trust.check(relay.addr(), &fp)?;
                seen = fp;
                Ok(())
            },
        )
        .await?;
        Ok::<_, Error>(hs.into_transport()?.split())
    };
    let (sealer, opener) = run.await?;
    Ok(RelayLink {
        s,
        sealer,
        opener,
        fingerprint: seen,
    })
}

/// End-to-end Noise XX through the relay's pipe; returns the peer's key.
pub(super) async fn end_to_end(
    s: &mut TcpStream,
    me: &Identity,
    side: Side,
) -> Result<(Sealer, Opener, [u8; 32]), Error> {
    let run = async {
        // helloclient, helloserver, publickey (seed 000): XX's three messages.
        let hs = Handshake::xx(
            side,
            me.x25519_secret(),
            TUNNEL_CONTEXT,
            platform::aead(),
            &mut OsRandom,
        )?;
        let hs = handshake::drive(
            s,
            hs,
            HANDSHAKE_TIMEOUT,
            "the end-to-end handshake",
            |_, _| Ok(()),
        )
        .await?;
        let peer = hs
            .remote_static()
            .ok_or_else(|| Error::Protocol("no key from the other side".into()))?;
        let (a, b) = hs.into_transport()?.split();
        Ok::<_, Error>((a, b, peer))
    };
    run.await
}
