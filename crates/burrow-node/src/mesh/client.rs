//! A client's link to a node (`burrow proxy --mesh`): not a node itself
//! (its record says [`Flags::CLIENT`]), it dials the node's addresses,
//! runs the link handshake (`IK` against the node's paired key), and
//! hands the session to the tunnel driver, which then speaks TUNNEL_*
//! packets on it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use burrow_proto::mesh::link::{Link, LinkConfig, LinkEvent, LinkState};
use burrow_proto::mesh::packet::Packet;
use burrow_proto::mesh::record::{Claims, Flags, NodeRecord};
use burrow_proto::session::{Opener, Sealer};
use burrow_proto::transfer::escape_display;

use super::unix_now;
use crate::error::Error;
use crate::keys::identity::{Identity, PublicIdentity};
use crate::platform::{OsRandom, aead};

/// How long the handshake may take.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// Where a client finds a node: its record's addresses and relay.
#[derive(Debug, Clone, Default)]
pub struct NodeAddrs {
    /// Its direct addresses.
    pub addrs: Vec<SocketAddr>,
    /// Its relay mailbox (`HOST:PORT#FINGERPRINT`), if it keeps one.
    pub relay: Option<String>,
    /// Its record says it accepts no inbound connections.
    pub behind_nat: bool,
}

/// Connects to the node with `keys` at the first of its addresses that
/// answers, or through its relay; `inbox`: for files to its inbox (else
/// tunnels).
pub(crate) async fn connect(
    at: &NodeAddrs,
    me: &Identity,
    keys: &PublicIdentity,
    inbox: bool,
) -> Result<(TcpStream, Sealer, Opener, Vec<u8>), Error> {
    let r = super::relayed::dial_any(&at.addrs, at.relay.as_deref(), at.behind_nat, me, &keys.x25519).await?;
    handshake(r.stream, me, keys, inbox).await
}

async fn handshake(
    mut s: TcpStream,
    me: &Identity,
    keys: &PublicIdentity,
    inbox: bool,
) -> Result<(TcpStream, Sealer, Opener, Vec<u8>), Error> {
    let _ = s.set_nodelay(true);
    let now = unix_now();
    let record = NodeRecord::sign(
        me,
        &Claims {
            flags: Flags(Flags::CLIENT | if inbox { Flags::INBOX } else { 0 }),
            seq: now.saturating_mul(1000),
            issued: now,
            ttl: 600,
            name: "client".into(),
            addrs: Vec::new(),
            relay: None,
        },
    )
    .map_err(|e| Error::Usage(format!("cannot sign a client record: {e}")))?;
    let mut link = Link::outbound(
        LinkConfig::new(aead()),
        me.x25519_secret(),
        record,
        Some(&keys.x25519),
        Instant::now(),
        &mut OsRandom,
    )
    .map_err(Error::from)?;
    let deadline = tokio::time::Instant::now() + HANDSHAKE;
    let mut buf = vec![0u8; 16 * 1024];
    // Up is not enough: the node says it takes this client with a first
    // TUNNEL_DATA (a mux Ping), or why not with a DISCONNECT.
    let mut accepted = false;
    loop {
        while !link.output().is_empty() {
            let n = s.write(link.output()).await.map_err(Error::ConnectionLost)?;
            link.advance(n);
        }
        while let Some(e) = link.poll_event() {
            if let LinkEvent::Closed { reason, text, .. } = e {
                return Err(Error::PeerClosed(format!(
                    "the node refused the link: {} ({})",
                    escape_display(&text),
                    reason.name()
                )));
            }
        }
        if link.state() == LinkState::Up && accepted {
            break;
        }
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .map_err(|_| Error::Timeout("the node did not finish the handshake in 10 s".into()))?
            .map_err(Error::ConnectionLost)?;
        if n == 0 {
            return Err(Error::PeerClosed(
                "the node closed the connection during the handshake".into(),
            ));
        }
        link.input(Instant::now(), &buf[..n], &mut |p| {
            accepted |= matches!(p, Packet::TunnelData(_));
        });
    }
    match link.into_session() {
        Ok((sealer, opener, already)) => Ok((s, sealer, opener, already)),
        Err(_) => Err(Error::Protocol(
            "the link could not be handed to the tunnel".into(),
        )),
    }
}
