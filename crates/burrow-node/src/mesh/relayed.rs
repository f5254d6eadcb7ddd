//! Links through a relay mailbox, for nodes that accept no inbound
//! connections (behind NAT): seed 000's connector, the same one
//! `burrow exit` keeps its mailbox on.
//!
//! ```text
//! node behind NAT (--relay R)            relay R                   dialling node
//!   Listen (mailbox under its key)  ->
//!                                        <-  Connect{target: its X25519 key}
//!   <- Init{session, dialler's key}
//!   new connection: Accept{session} ->
//!   <- Init                              Init ->
//!   ...... a blind pipe: the mesh link (BRWM 01, HELLO ... FIN_ACK, records) end to end ......
//! ```
//!
//! The record of such a node names the relay (`HOST:PORT#FINGERPRINT`,
//! learnt on its mailbox's first handshake) and says "behind NAT"; a node
//! dialling it tries the direct addresses and, a moment later or when
//! they fail, the relay (whichever answers first). The relay sees two
//! connector handshakes and ciphertext: the link's Noise handshake (`IK`
//! against the key in the record) runs end to end through the pipe, so a
//! relayed link is as authenticated and as private as a direct one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use burrow_proto::connector::Msg;
use burrow_proto::mesh::link::{Direction, LinkState};

use super::{Shared, link};
use crate::error::Error;
use crate::keys::identity::Identity;
use crate::meet::relay_client::RelayClient;
use crate::tunnel::RelayTrust;
use crate::tunnel::relay::relay_link;

/// Relayed handshakes in progress at once (they all come from the relay's
/// one address, so the listener's per-address share does not apply).
const MAX_RELAYED_HANDSHAKES: usize = 32;
/// How long a dial waits for the direct addresses before it also tries
/// the relay (a node that says it is behind NAT: at once).
const RELAY_AFTER: Duration = Duration::from_millis(300);
/// The mailbox's keepalive (as `burrow exit`'s).
const PING_EVERY: Duration = Duration::from_secs(20);

/// Where the mailbox is, for `status`.
#[derive(Debug, Clone, Default)]
pub(crate) struct MailboxState {
    /// The relay's address.
    pub addr: String,
    /// "connecting", "up" or "down: why".
    pub state: String,
    /// The relay's fingerprint once a handshake checked it.
    pub fingerprint: Option<String>,
}

/// Keeps the mailbox on `relay` up for as long as the node runs, with
/// backoff (0.5 s doubling to 30 s, short again after a mailbox that was
/// up), and takes every session the relay starts on it as an inbound link.
pub(crate) async fn mailbox(shared: Arc<Shared>, relay: RelayClient, trust: RelayTrust) {
    let mut wait = Duration::from_millis(500);
    loop {
        set_state(&shared, &relay, "connecting", None);
        let was_up = match serve_mailbox(&shared, &relay, &trust).await {
            Ok(()) => true,
            Err((up, e)) => {
                (shared.cfg.log)(format!("the relay mailbox at {} is down: {e}", relay.addr()));
                set_state(&shared, &relay, &format!("down: {e}"), None);
                up
            }
        };
        if was_up {
            wait = Duration::from_millis(500);
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(30));
    }
}

fn set_state(shared: &Shared, relay: &RelayClient, state: &str, fingerprint: Option<String>) {
    let mut st = shared.lock();
    let old_fp = st.mailbox.as_ref().and_then(|m| m.fingerprint.clone());
    st.mailbox = Some(MailboxState {
        addr: relay.addr().to_owned(),
        state: state.to_owned(),
        fingerprint: fingerprint.or(old_fp),
    });
}

/// One mailbox connection, until it breaks; the error says whether it had
/// been up.
async fn serve_mailbox(
    shared: &Arc<Shared>,
    relay: &RelayClient,
    trust: &RelayTrust,
) -> Result<(), (bool, Error)> {
    let mut box_link = relay_link(relay, trust, &shared.cfg.me)
        .await
        .map_err(|e| (false, e))?;
    box_link.send(&Msg::Listen).await.map_err(|e| (false, e))?;
    let fp = box_link.fingerprint.clone();
    set_state(shared, relay, "up", Some(fp.clone()));
    // The record names the relay: re-sign it (and push it) when that changes.
    let claim = format!("{}#{fp}", relay.addr());
    if super::set_relay_claim(shared, Some(claim)) {
        (shared.cfg.log)(format!(
            "reachable through the relay {} (mailbox up; links through it are end to end)",
            relay.addr()
        ));
    }
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            _ = ping.tick() => box_link.send(&Msg::Ping).await.map_err(|e| (true, e))?,
            m = box_link.recv() => match m.map_err(|e| (true, e))? {
                Msg::Init { session, .. } => {
                    let busy = {
                        let st = shared.lock();
                        let handshaking = st
                            .links
                            .values()
                            .filter(|l| l.relayed && l.state == LinkState::Handshake)
                            .count();
                        st.links.len() >= shared.cfg.max_links || handshaking >= MAX_RELAYED_HANDSHAKES
                    };
                    if busy {
                        shared.lock().counters.links_refused_busy += 1;
                        box_link.send(&Msg::Refuse { session }).await.map_err(|e| (true, e))?;
                        continue;
                    }
                    tokio::spawn(accept(shared.clone(), relay.clone(), trust.clone(), session));
                }
                Msg::Pong => {}
                _ => {
                    return Err((true, Error::RelayProtocol("unexpected message on the mailbox".into())));
                }
            },
        }
    }
}

/// Takes one session from the mailbox: a new connection to the relay that
/// accepts it, then the link's inbound side over the pipe.
async fn accept(shared: Arc<Shared>, relay: RelayClient, trust: RelayTrust, session: [u8; 16]) {
    let run = async {
        let mut l = relay_link(&relay, &trust, &shared.cfg.me).await?;
        l.send(&Msg::Accept { session }).await?;
        match l.recv().await? {
            Msg::Init { .. } => Ok(l.s),
            _ => Err(Error::RelayProtocol("the relay did not start the session".into())),
        }
    };
    match tokio::time::timeout(Duration::from_secs(10), run).await {
        Ok(Ok(stream)) => {
            let addr = stream
                .peer_addr()
                .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
            let slot = link::register(&shared, Direction::Inbound, addr, true);
            link::run_inbound(shared, stream, addr, slot).await;
        }
        Ok(Err(e)) => (shared.cfg.log)(format!("a relayed link through {} failed: {e}", relay.addr())),
        Err(_) => (shared.cfg.log)(format!("a relayed link through {} timed out", relay.addr())),
    }
}

/// Splits a record's `HOST:PORT#FINGERPRINT` into the relay and its pin.
pub(crate) fn relay_of(claim: &str) -> (RelayClient, RelayTrust) {
    let (addr, trust) = RelayTrust::parse(claim, None);
    (RelayClient::new(&addr), trust)
}

/// A pipe to the node with X25519 key `target` through its relay mailbox.
pub(crate) async fn dial_via(claim: &str, me: &Identity, target: &[u8; 32]) -> Result<TcpStream, Error> {
    let (relay, trust) = relay_of(claim);
    let run = async {
        let mut l = relay_link(&relay, &trust, me).await?;
        l.send(&Msg::Connect { target: *target }).await?;
        match l.recv().await? {
            Msg::Init { peer, .. } if peer == *target => Ok(l.s),
            Msg::Init { .. } => Err(Error::RelayProtocol("the relay joined another key".into())),
            _ => Err(Error::RelayProtocol("the relay did not start the session".into())),
        }
    };
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .map_err(|_| {
            Error::Timeout(format!(
                "the relay {} did not join the node in 10 s",
                relay.addr()
            ))
        })?
}

/// How a dial reached the node.
pub(crate) struct Reached {
    pub stream: TcpStream,
    pub addr: SocketAddr,
    /// Through the relay (else direct).
    pub relayed: bool,
}

/// Dials the node: its direct addresses in turn and, `RELAY_AFTER` later
/// (at once when `behind_nat`) or when they all failed, its relay;
/// the first that answers wins.
pub(crate) async fn dial_any(
    addrs: &[SocketAddr],
    relay: Option<&str>,
    behind_nat: bool,
    me: &Identity,
    target: &[u8; 32],
) -> Result<Reached, Error> {
    let direct = async {
        let mut last = None;
        for a in addrs {
            match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(a)).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    return Ok(Reached {
                        stream: s,
                        addr: *a,
                        relayed: false,
                    });
                }
                Ok(Err(e)) => last = Some(format!("{a}: {e}")),
                Err(_) => last = Some(format!("{a}: connect timed out")),
            }
        }
        Err(last.unwrap_or_else(|| "it advertises no address".into()))
    };
    let Some(claim) = relay else {
        return direct
            .await
            .map_err(|why| Error::PeerClosed(format!("cannot reach the node ({why})")));
    };
    let via = async {
        let s = dial_via(claim, me, target).await?;
        let _ = s.set_nodelay(true);
        let addr = s
            .peer_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        Ok::<_, Error>(Reached {
            stream: s,
            addr,
            relayed: true,
        })
    };
    tokio::pin!(direct, via);
    let head_start = tokio::time::sleep(if behind_nat { Duration::ZERO } else { RELAY_AFTER });
    tokio::pin!(head_start);
    let mut direct_failed = None;
    // Direct alone for the head start (unless it fails sooner).
    tokio::select! {
        r = &mut direct => match r {
            Ok(x) => return Ok(x),
            Err(why) => direct_failed = Some(why),
        },
        _ = &mut head_start => {}
    }
    if let Some(why) = direct_failed {
        return via.await.map_err(|e| {
            Error::PeerClosed(format!("cannot reach the node ({why}; through its relay: {e})"))
        });
    }
    tokio::select! {
        r = &mut direct => match r {
            Ok(x) => Ok(x),
            Err(why) => via
                .await
                .map_err(|e| Error::PeerClosed(format!("cannot reach the node ({why}; through its relay: {e})"))),
        },
        r = &mut via => match r {
            Ok(x) => Ok(x),
            Err(e) => direct
                .await
                .map_err(|why| Error::PeerClosed(format!("cannot reach the node ({why}; through its relay: {e})"))),
        },
    }
}
