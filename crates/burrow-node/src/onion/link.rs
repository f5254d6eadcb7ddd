//! A client's link to its entry node (and an authority's reachability
//! check): a mesh link under a **fresh identity** made for this link alone
//! (the node learns no long-term key of the client), record flags
//! CLIENT | ONION_CLIENT, `IK` against the node's key from the node list.
//! The link machine runs in its own task (keepalives, rekeying); cells go
//! in and out as DATA(kind Cell) on two channels.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use burrow_proto::keys::PublicIdentity;
use burrow_proto::mesh::link::{Link, LinkConfig, LinkEvent, LinkState};
use burrow_proto::mesh::packet::{DataKind, Packet};
use burrow_proto::mesh::record::{Claims, Flags, NodeRecord};
use burrow_proto::onion::cell::CELL_LEN;
use burrow_proto::transfer::escape_display;

use crate::error::Error;
use crate::keys::identity::Identity;
use crate::mesh::unix_now;
use crate::platform::{OsRandom, aead};

/// How long the link handshake may take.
const HANDSHAKE: Duration = Duration::from_secs(5);
/// Cells queued towards the node beyond which the sender waits.
const OUT_QUEUE: usize = 512;

/// An open link to a node: cells in, cells out. Dropping it closes it.
pub(crate) struct CellLink {
    pub to_node: mpsc::Sender<Vec<u8>>,
    pub from_node: mpsc::UnboundedReceiver<Vec<u8>>,
}

/// Dials `addr`, runs the handshake against `node`'s keys under a fresh
/// identity, and waits until the node accepts an onion client.
pub(crate) async fn connect(addr: SocketAddr, node: &PublicIdentity) -> Result<CellLink, Error> {
    let go = async {
        let s = TcpStream::connect(addr)
            .await
            .map_err(|e| Error::RelayUnreachable {
                addr: addr.to_string(),
                source: e,
            })?;
        let _ = s.set_nodelay(true);
        let me = Identity::generate(&mut OsRandom);
        let now = unix_now();
        let record = NodeRecord::sign(
            &me,
            &Claims {
                flags: Flags(Flags::CLIENT | Flags::ONION_CLIENT),
                seq: 1,
                issued: now,
                ttl: 600,
                name: String::new(),
                addrs: Vec::new(),
                relay: None,
            },
        )
        .map_err(|e| Error::Usage(format!("cannot sign a client record: {e}")))?;
        let link = Link::outbound(
            LinkConfig::new(aead()),
            me.x25519_secret(),
            record,
            Some(&node.x25519),
            Instant::now(),
            &mut OsRandom,
        )
        .map_err(Error::from)?;
        Ok::<_, Error>((s, link))
    };
    let (mut s, mut link) = tokio::time::timeout(HANDSHAKE, go)
        .await
        .map_err(|_| Error::Timeout(format!("{addr} did not answer in 5 s")))??;
    let deadline = tokio::time::Instant::now() + HANDSHAKE;
    let mut accepted = false;
    let mut early = Vec::new();
    loop {
        while !link.output().is_empty() {
            let n = s.write(link.output()).await.map_err(Error::ConnectionLost)?;
            link.advance(n);
        }
        while let Some(e) = link.poll_event() {
            if let LinkEvent::Closed { reason, text, .. } = e {
                return Err(Error::PeerClosed(format!(
                    "{addr} refused the link: {} ({})",
                    escape_display(&text),
                    reason.name()
                )));
            }
        }
        if link.state() == LinkState::Up && accepted {
            break;
        }
        let n = tokio::time::timeout_at(deadline, s.read(link.read_buf()))
            .await
            .map_err(|_| Error::Timeout(format!("{addr} did not finish the handshake in 5 s")))?
            .map_err(Error::ConnectionLost)?;
        if n == 0 {
            return Err(Error::PeerClosed(format!(
                "{addr} closed the connection during the handshake"
            )));
        }
        link.filled(n, Instant::now(), &mut |p| match p {
            Packet::TunnelData(_) => accepted = true,
            Packet::Data {
                kind: DataKind::Cell,
                payload,
            } if payload.len() == CELL_LEN => early.push(payload.to_vec()),
            _ => {}
        });
    }
    let (to_node, mut rx) = mpsc::channel::<Vec<u8>>(OUT_QUEUE);
    let (tx, from_node) = mpsc::unbounded_channel::<Vec<u8>>();
    for c in early {
        let _ = tx.send(c);
    }
    tokio::spawn(async move {
        let (mut rd, mut wr) = s.into_split();
        loop {
            while !link.output().is_empty() {
                match wr.write(link.output()).await {
                    Ok(n) if n > 0 => link.advance(n),
                    _ => return,
                }
            }
            while let Some(e) = link.poll_event() {
                if let LinkEvent::Closed { .. } = e {
                    return;
                }
            }
            if link.state() == LinkState::Closed {
                return;
            }
            let deadline = link
                .poll_timeout()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                r = rd.read(link.read_buf()) => match r {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        let mut gone = false;
                        link.filled(n, Instant::now(), &mut |p| {
                            if let Packet::Data { kind: DataKind::Cell, payload } = p
                                && tx.send(payload.to_vec()).is_err()
                            {
                                gone = true;
                            }
                        });
                        if gone {
                            return;
                        }
                    }
                },
                cell = rx.recv() => match cell {
                    Some(c) => {
                        let _ = link.send(&Packet::Data { kind: DataKind::Cell, payload: &c });
                        // Take what else is waiting: one write for many cells.
                        while link.queued() < 256 * 1024 {
                            match rx.try_recv() {
                                Ok(c) => {
                                    let _ = link.send(&Packet::Data { kind: DataKind::Cell, payload: &c });
                                }
                                Err(_) => break,
                            }
                        }
                    }
                    None => {
                        link.close(burrow_proto::mesh::packet::Reason::Other, "done");
                        while !link.output().is_empty() {
                            match wr.write(link.output()).await {
                                Ok(n) if n > 0 => link.advance(n),
                                _ => break,
                            }
                        }
                        return;
                    }
                },
                _ = tokio::time::sleep_until(deadline.into()) => link.handle_timeout(Instant::now()),
            }
        }
    });
    Ok(CellLink { to_node, from_node })
}
