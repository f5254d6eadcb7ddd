//! A client's link to its entry node (and an authority's reachability
//! check): a mesh link under a **fresh identity** made for this link alone
//! (the node learns no long-term key of the client), record flags
//! CLIENT | ONION_CLIENT, `IK` against the node's key from the node list.
//! The link machine runs in its own task (keepalives, rekeying); cells go
//! in and out as DATA(kind Cell) on two channels.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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

/// Dials `addr` (from `bind`, if given), runs the handshake against
/// `node`'s keys under a fresh identity, and waits until the node accepts
/// an onion client.
pub(crate) async fn connect(
    addr: SocketAddr,
    node: &PublicIdentity,
    bind: Option<IpAddr>,
) -> Result<CellLink, Error> {
    let go = async {
        let unreachable = |e| Error::RelayUnreachable {
            addr: addr.to_string(),
            source: e,
        };
        let s = match bind {
            None => TcpStream::connect(addr).await.map_err(unreachable)?,
            Some(ip) => {
                let sock = if addr.is_ipv4() {
                    tokio::net::TcpSocket::new_v4()
                } else {
                    tokio::net::TcpSocket::new_v6()
                }
                .map_err(unreachable)?;
                sock.bind(SocketAddr::new(ip, 0)).map_err(unreachable)?;
                sock.connect(addr).await.map_err(unreachable)?
            }
        };
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

/// Circuits registered on a [`Channel`]: where each one's cells go.
type Circuits = Arc<Mutex<HashMap<u32, mpsc::UnboundedSender<Vec<u8>>>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One client link to an entry node carrying many circuits (Tor's
/// "channel"): cells from the node go to the circuit their id names, cells
/// of every circuit share the link's queue. The client's address already
/// ties its circuits together at the entry; one link instead of one per
/// circuit saves a handshake per build and a link slot per circuit at the
/// entry. A cell for an id nobody registered is dropped.
#[derive(Clone)]
pub(crate) struct Channel {
    to_node: mpsc::Sender<Vec<u8>>,
    circuits: Circuits,
    dead: Arc<AtomicBool>,
}

/// A circuit's share of a [`Channel`]: its id and its own cell stream.
/// Dropping it frees the id.
pub(crate) struct ChannelCircuit {
    pub circ: u32,
    pub link: CellLink,
    pub registered: Registration,
}

/// Holds a circuit id on a [`Channel`]; dropping it frees the id.
pub(crate) struct Registration {
    circuits: Circuits,
    circ: u32,
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.circuits).remove(&self.circ);
    }
}

impl Channel {
    /// Takes over `link`: a task hands each arriving cell to its circuit.
    pub(crate) fn new(link: CellLink) -> Self {
        let CellLink {
            to_node,
            mut from_node,
        } = link;
        let circuits: Circuits = Arc::default();
        let dead = Arc::new(AtomicBool::new(false));
        let (c, d) = (circuits.clone(), dead.clone());
        tokio::spawn(async move {
            while let Some(cell) = from_node.recv().await {
                if cell.len() < 4 {
                    continue;
                }
                let id = u32::from_be_bytes([cell[0], cell[1], cell[2], cell[3]]);
                let mut map = lock(&c);
                if let Some(tx) = map.get(&id)
                    && tx.send(cell).is_err()
                {
                    map.remove(&id);
                }
            }
            // The link is gone: every circuit on it sees its stream end.
            d.store(true, Ordering::Relaxed);
            lock(&c).clear();
        });
        Self {
            to_node,
            circuits,
            dead,
        }
    }

    /// Whether the link still works.
    pub(crate) fn alive(&self) -> bool {
        !self.dead.load(Ordering::Relaxed) && !self.to_node.is_closed()
    }

    /// Circuits on it now.
    pub(crate) fn circuits(&self) -> usize {
        lock(&self.circuits).len()
    }

    /// A new circuit on the link, under an id not in use (outbound bit
    /// set: the client opened the link), `None` once the link is gone.
    pub(crate) fn circuit(&self) -> Option<ChannelCircuit> {
        use burrow_proto::onion::cell::OUTBOUND_BIT;
        if !self.alive() {
            return None;
        }
        let mut map = lock(&self.circuits);
        let circ = loop {
            let mut b = [0u8; 4];
            crate::platform::random(&mut b);
            let c = (u32::from_be_bytes(b) | OUTBOUND_BIT).max(OUTBOUND_BIT | 1);
            if !map.contains_key(&c) {
                break c;
            }
        };
        let (tx, from_node) = mpsc::unbounded_channel();
        map.insert(circ, tx);
        drop(map);
        Some(ChannelCircuit {
            circ,
            link: CellLink {
                to_node: self.to_node.clone(),
                from_node,
            },
            registered: Registration {
                circuits: self.circuits.clone(),
                circ,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell_for(circ: u32, tag: u8) -> Vec<u8> {
        let mut c = vec![tag; CELL_LEN];
        c[..4].copy_from_slice(&circ.to_be_bytes());
        c
    }

    #[tokio::test]
    async fn a_channel_hands_each_cell_to_its_circuit() {
        let (to_node, mut at_node) = mpsc::channel(8);
        let (node_tx, from_node) = mpsc::unbounded_channel();
        let ch = Channel::new(CellLink { to_node, from_node });
        let mut a = ch.circuit().unwrap();
        let mut b = ch.circuit().unwrap();
        assert_ne!(a.circ, b.circ);
        assert_eq!(ch.circuits(), 2);
        // Both circuits' cells share the one link towards the node.
        a.link.to_node.send(cell_for(a.circ, 1)).await.unwrap();
        b.link.to_node.send(cell_for(b.circ, 2)).await.unwrap();
        assert_eq!(at_node.recv().await.unwrap()[4], 1);
        assert_eq!(at_node.recv().await.unwrap()[4], 2);
        // From the node: by id; an id nobody holds is dropped.
        node_tx.send(cell_for(b.circ, 3)).unwrap();
        node_tx.send(cell_for(12345, 4)).unwrap();
        node_tx.send(cell_for(a.circ, 5)).unwrap();
        assert_eq!(b.link.from_node.recv().await.unwrap()[4], 3);
        assert_eq!(a.link.from_node.recv().await.unwrap()[4], 5);
        assert!(a.link.from_node.try_recv().is_err());
        // A finished circuit frees its id; the link stays for the others.
        let b_id = b.circ;
        drop(b);
        assert_eq!(ch.circuits(), 1);
        node_tx.send(cell_for(b_id, 6)).unwrap();
        // The link going away ends every circuit's stream.
        drop(node_tx);
        assert!(a.link.from_node.recv().await.is_none());
        assert!(!ch.alive());
        assert!(ch.circuit().is_none());
    }
}
