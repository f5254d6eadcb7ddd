//! Paths between two peers that share a session key: the relay connection
//! from the rendezvous, direct TCP connections raced against it, and new
//! connections after a drop (reconnect).
//!
//! ```text
//! relay connection (from the rendezvous)
//!   Noise NNpsk0 handshake (prologue: the channel)
//!   both: Hints{direct allowed, listen addresses}
//! if both allow direct paths and one side has addresses:
//!   both dial every address of the other and accept on their listener;
//!   each TCP connection runs its own handshake (prologue "direct")
//! sender: the first direct connection whose handshake completes wins; the
//!   relay connection only after RELAY_DELAY, or once no direct attempt is
//!   left; it sends `Use` as its first record on the winner
//! receiver: takes the first connection that delivers `Use`
//! ```
//!
//! A reconnect is the same race with the relay leg replaced by a token
//! staple ([`TokenHello`]): the token and the handshakes are derived from
//! the session key, so only the two peers can complete them, and the relay
//! needs no memory of the channel (it may have restarted).
//!
//! Everything here is bounded in time; losers are aborted when a winner is
//! chosen. The winner is handed to the transfer driver with its Noise
//! halves and its inbox: whatever arrived after the last setup record (the
//! offer may follow `Use` at once) stays there.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use burrow_proto::channel::api::Role;
use burrow_proto::channel::pake::SessionKey;
use burrow_proto::channel::race::{Chooser, Decision, Race};
use burrow_proto::session::{Handshake, Inbox, Opener, Sealer, Side};
use burrow_proto::staple::TokenHello;
use burrow_proto::transfer::{MAX_HINTS, Message};

use crate::error::Error;
pub(crate) use crate::meet::handshake::read_frame;
use crate::meet::relay_client::RelayClient;
use crate::platform::{self, OsRandom};

pub use burrow_proto::channel::race::RELAY_DELAY;
/// One direct TCP connect, handshake included.
const DIRECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One reconnect attempt, before backing off and trying again.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);
/// Backoff between reconnect attempts: doubles from the first to the last.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(4));
/// Most of the other side's addresses dialled in one race.
const MAX_DIALS: usize = 8;
/// Direct connections handshaking at once on the listener (others are dropped).
const MAX_INCOMING: usize = 32;
/// Handshake prologue context for direct connections.
const DIRECT_CONTEXT: &str = "direct";
/// Handshake prologue context for reconnects through the relay.
const RECONNECT_CONTEXT: &str = "reconnect";
/// Token derivation label (BLAKE3 derive_key).
const TOKEN_LABEL: &str = "burrow v1 reconnect token";

/// Which way the session's bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// Through the relay.
    Relay,
    /// A TCP connection straight to the other peer.
    Direct,
    /// A mesh link to a paired node (`send --to`): direct, or through the
    /// node's relay mailbox, end to end either way.
    Mesh,
}

impl PathKind {
    /// `"relay"` or `"direct"`.
    pub fn as_str(self) -> &'static str {
        match self {
            PathKind::Relay => "relay",
            PathKind::Direct => "direct",
            PathKind::Mesh => "mesh",
        }
    }
}

/// Bytes per read on a transfer's connection.
pub(crate) const READ_BUF: usize = 512 * 1024;

/// An authenticated connection: during the race, and then the transfer's.
/// Bytes read past the last record used in setup stay in `inbox`.
pub(crate) struct Established {
    pub stream: TcpStream,
    pub sealer: Sealer,
    pub opener: Opener,
    pub inbox: Inbox,
    pub kind: PathKind,
}

/// One candidate's outcome during a race.
enum Cand {
    /// A direct connection finished its handshake (and, on the receiver,
    /// delivered `Use`).
    Direct(Established),
    /// A direct attempt (a dial) failed.
    DialFailed,
    /// The relay leg is ready (receiver: delivered `Use`), or failed.
    Relay(Result<Established, Error>),
}

/// Everything needed to (re)connect to the other peer within one session.
pub(crate) struct Paths {
    key: Arc<SessionKey>,
    role: Role,
    relay: RelayClient,
    listener: Option<Arc<TcpListener>>,
    my_addrs: Vec<SocketAddr>,
    peer_addrs: Vec<SocketAddr>,
    /// Both sides take part in direct paths.
    direct: bool,
    /// Bound on each handshake read.
    io_timeout: Duration,
}

/// The addresses of this machine's interfaces that another machine could
/// dial: not loopback, not link-local, not unspecified.
pub fn local_addresses() -> Vec<IpAddr> {
    let Ok(ifs) = if_addrs::get_if_addrs() else {
        return Vec::new();
    };
    let mut out: Vec<IpAddr> = ifs
        .into_iter()
        .map(|i| i.ip())
        .filter(|ip| match ip {
            IpAddr::V4(v4) => !(v4.is_loopback() || v4.is_link_local() || v4.is_unspecified()),
            IpAddr::V6(v6) => {
                !(v6.is_loopback() || v6.is_unspecified() || v6.is_unicast_link_local() || v6.is_multicast())
            }
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Which of the addresses the other side advertised are worth dialling:
/// the peer chooses them, so without this filter it could steer our
/// connects at anything we can reach (a blind port probe). Kept: unicast
/// addresses with a port, loopback only when the relay itself is on
/// loopback (both peers on one machine), never unspecified, multicast,
/// broadcast or link-local (no scope to dial with); at most `MAX_DIALS` (8),
/// duplicates dropped. What remains (a peer naming another host of our
/// LAN) is said in docs/security.md.
pub fn dialable(addrs: &[SocketAddr], relay: Option<IpAddr>) -> Vec<SocketAddr> {
    let relay_loopback = relay.is_some_and(|r| r.to_canonical().is_loopback());
    let mut out: Vec<SocketAddr> = Vec::new();
    for a in addrs {
        let ip = a.ip().to_canonical();
        let ok = a.port() != 0
            && !ip.is_unspecified()
            && !ip.is_multicast()
            && (relay_loopback || !ip.is_loopback())
            && match ip {
                IpAddr::V4(v4) => !(v4.is_broadcast() || v4.is_link_local()),
                IpAddr::V6(v6) => !v6.is_unicast_link_local(),
            };
        let a = SocketAddr::new(ip, a.port());
        if ok && !out.contains(&a) {
            out.push(a);
            if out.len() == MAX_DIALS {
                break;
            }
        }
    }
    out
}

async fn bind_listener() -> Option<TcpListener> {
    // One dual-stack socket if the host has IPv6, else IPv4 only.
    if let Ok(l) = TcpListener::bind((Ipv6Addr::UNSPECIFIED, 0)).await {
        return Some(l);
    }
    TcpListener::bind(("0.0.0.0", 0)).await.ok()
}

fn timeout_err(what: &str) -> Error {
    Error::Timeout(format!("the other side did not answer during {what}"))
}

/// Runs the session's Noise handshake on a connection (the sender
/// initiates, whoever dialled).
pub(crate) async fn handshake(
    s: &mut TcpStream,
    key: &SessionKey,
    context: &str,
    role: Role,
    limit: Duration,
) -> Result<(Sealer, Opener), Error> {
    let side = match role {
        Role::Sender => Side::Initiator,
        Role::Recipient => Side::Responder,
    };
    let hs = Handshake::nn_psk0(side, key, context, platform::aead(), &mut OsRandom)?;
    crate::meet::handshake::transport(s, hs, limit, "the handshake").await
}

/// Sends one record.
pub(crate) async fn send_record(s: &mut TcpStream, sealer: &mut Sealer, msg: &[u8]) -> Result<(), Error> {
    let mut out = Vec::with_capacity(msg.len() + 64);
    sealer.seal(msg, &mut out)?;
    s.write_all(&out).await.map_err(Error::ConnectionLost)
}

/// Reads the next record, skipping keepalives; whatever arrived after it
/// stays in `inbox`.
pub(crate) async fn read_record(
    s: &mut TcpStream,
    opener: &mut Opener,
    inbox: &mut Inbox,
    limit: Duration,
) -> Result<Vec<u8>, Error> {
    let run = async {
        loop {
            while let Some(r) = inbox.open_next(opener)? {
                let rec = &inbox.buffer()[r];
                if rec != Message::Keepalive.to_vec().as_slice() {
                    return Ok(rec.to_vec());
                }
            }
            let n = s.read(inbox.space()).await.map_err(Error::ConnectionLost)?;
            if n == 0 {
                return Err(Error::ConnectionLost(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the other side closed the connection during path setup",
                )));
            }
            inbox.filled(n);
        }
    };
    tokio::time::timeout(limit, run)
        .await
        .map_err(|_| timeout_err("path setup"))?
}

/// The receiver's side of a candidate: after the handshake, wait for `Use`.
async fn await_use(mut live: Established, limit: Duration) -> Result<Established, Error> {
    let rec = read_record(&mut live.stream, &mut live.opener, &mut live.inbox, limit).await?;
    match Message::decode(&rec) {
        Ok(Message::Use) => Ok(live),
        Ok(Message::Error(m)) => Err(Error::PeerClosed(burrow_proto::transfer::escape_display(&m))),
        _ => Err(Error::Protocol("expected the sender's path choice".into())),
    }
}

/// One direct connection: handshake (the sender initiates whoever dialed),
/// and on the receiver the wait for `Use`.
async fn direct_leg(
    mut s: TcpStream,
    key: &SessionKey,
    role: Role,
    limit: Duration,
) -> Result<Established, Error> {
    let _ = s.set_nodelay(true);
    let (sealer, opener) = handshake(&mut s, key, DIRECT_CONTEXT, role, limit).await?;
    let live = Established {
        stream: s,
        sealer,
        opener,
        inbox: Inbox::new(READ_BUF),
        kind: PathKind::Direct,
    };
    match role {
        Role::Sender => Ok(live),
        Role::Recipient => await_use(live, limit).await,
    }
}

impl Paths {
    /// Prepares paths for one side of a session; binds the direct listener
    /// unless `relay_only`.
    pub async fn new(
        key: SessionKey,
        role: Role,
        relay: RelayClient,
        relay_only: bool,
        io_timeout: Duration,
    ) -> Self {
        let listener = if relay_only {
            None
        } else {
            bind_listener().await.map(Arc::new)
        };
        let my_addrs = match &listener {
            Some(l) => {
                let port = l.local_addr().map(|a| a.port()).unwrap_or(0);
                let v6 = l.local_addr().is_ok_and(|a| a.is_ipv6());
                local_addresses()
                    .into_iter()
                    .filter(|ip| v6 || ip.is_ipv4())
                    .take(MAX_HINTS)
                    .map(|ip| SocketAddr::new(ip, port))
                    .collect()
            }
            None => Vec::new(),
        };
        Self {
            key: Arc::new(key),
            role,
            relay,
            listener,
            my_addrs,
            peer_addrs: Vec::new(),
            direct: !relay_only,
            io_timeout,
        }
    }

    fn is_sender(&self) -> bool {
        self.role == Role::Sender
    }

    /// Whether a direct race is worth starting.
    fn racing(&self) -> bool {
        self.direct && (!self.my_addrs.is_empty() || !self.peer_addrs.is_empty())
    }

    /// The first connection of the session: handshake on the stapled relay
    /// connection, exchange hints, race direct paths against it.
    pub async fn first(&mut self, mut relay: TcpStream, channel: &str) -> Result<Established, Error> {
        let (mut sealer, mut opener) =
            handshake(&mut relay, &self.key, channel, self.role, self.io_timeout).await?;
        let hints = Message::Hints {
            direct: self.direct,
            addrs: self.my_addrs.clone(),
        };
        send_record(&mut relay, &mut sealer, &hints.to_vec()).await?;
        let mut inbox = Inbox::new(READ_BUF);
        let rec = read_record(&mut relay, &mut opener, &mut inbox, self.io_timeout).await?;
        match Message::decode(&rec) {
            Ok(Message::Hints { direct, addrs }) => {
                self.direct &= direct;
                self.peer_addrs = dialable(&addrs, relay.peer_addr().ok().map(|a| a.ip()));
                if self.peer_addrs.len() < addrs.len() {
                    tracing::debug!(
                        "direct paths: dialling {} of the {} addresses the other side gave",
                        self.peer_addrs.len(),
                        addrs.len()
                    );
                }
            }
            Ok(Message::Error(m)) => {
                return Err(Error::PeerClosed(burrow_proto::transfer::escape_display(&m)));
            }
            _ => return Err(Error::Protocol("expected the other side's address hints".into())),
        }
        let relay = Established {
            stream: relay,
            sealer,
            opener,
            inbox,
            kind: PathKind::Relay,
        };
        let deadline = Instant::now() + self.io_timeout;
        self.race(Some(relay), deadline).await
    }

    /// A new connection after a drop: races direct paths against a token
    /// staple through the relay, attempt after attempt with backoff, until
    /// `deadline`.
    pub async fn reconnect(&mut self, deadline: Instant) -> Result<Established, Error> {
        let mut wait = BACKOFF.0;
        loop {
            let attempt_end = (Instant::now() + ATTEMPT_TIMEOUT).min(deadline);
            let err = match self.race(None, attempt_end).await {
                Ok(c) => return Ok(c),
                Err(e) => e,
            };
            let now = Instant::now();
            if now + wait >= deadline {
                return Err(err);
            }
            tracing::debug!("reconnect attempt failed: {err}");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(BACKOFF.1);
        }
    }

    /// One race. `relay`: the ready relay leg (first connection); without
    /// it, a token staple through the relay is one of the candidates.
    async fn race(&mut self, relay: Option<Established>, deadline: Instant) -> Result<Established, Error> {
        let sender = self.is_sender();
        let role = self.role;
        let (tx, mut rx) = mpsc::channel::<Cand>(16);
        let mut tasks = JoinSet::new();
        let racing = self.racing();
        let mut dials = 0usize;
        if racing {
            for &addr in &self.peer_addrs {
                dials += 1;
                let (tx, key, limit) = (tx.clone(), self.key.clone(), self.io_timeout);
                tasks.spawn(async move {
                    let res = tokio::time::timeout(DIRECT_TIMEOUT, async {
                        let s = TcpStream::connect(addr).await.map_err(Error::ConnectionLost)?;
                        direct_leg(s, &key, role, limit).await
                    })
                    .await;
                    let _ = tx
                        .send(match res {
                            Ok(Ok(live)) => Cand::Direct(live),
                            _ => Cand::DialFailed,
                        })
                        .await;
                });
            }
            if let Some(l) = self.listener.clone() {
                let (tx, key, limit) = (tx.clone(), self.key.clone(), self.io_timeout);
                tasks.spawn(async move {
                    // Children die with this task (their JoinSet is dropped).
                    let mut children = JoinSet::new();
                    while let Ok((s, _)) = l.accept().await {
                        // Reap finished handshakes; strangers get a bounded share.
                        while children.try_join_next().is_some() {}
                        if children.len() >= MAX_INCOMING {
                            continue;
                        }
                        let (tx, key) = (tx.clone(), key.clone());
                        children.spawn(async move {
                            let res =
                                tokio::time::timeout(DIRECT_TIMEOUT, direct_leg(s, &key, role, limit)).await;
                            if let Ok(Ok(live)) = res {
                                let _ = tx.send(Cand::Direct(live)).await;
                            }
                        });
                    }
                });
            }
        }
        // The relay leg.
        let may_be_dialed = racing && !self.my_addrs.is_empty() && self.listener.is_some();
        let chooser = if sender {
            Chooser::Sender
        } else {
            Chooser::Receiver
        };
        let mut race = Race::new(chooser, dials, may_be_dialed, racing, Instant::now(), deadline);
        let mut relay_ready: Option<Established> = None;
        match relay {
            Some(live) if sender => {
                relay_ready = Some(live);
                race.relay_ready();
            }
            Some(live) => {
                let (tx, limit) = (tx.clone(), deadline.saturating_duration_since(Instant::now()));
                tasks.spawn(async move {
                    let _ = tx.send(Cand::Relay(await_use(live, limit).await)).await;
                });
            }
            None => {
                let (tx, key, relay, limit) =
                    (tx.clone(), self.key.clone(), self.relay.clone(), self.io_timeout);
                let hello = TokenHello {
                    role: self.role,
                    token: blake3::derive_key(TOKEN_LABEL, key.as_bytes()),
                };
                let wait = deadline.saturating_duration_since(Instant::now());
                tasks.spawn(async move {
                    let res = async {
                        let mut s = relay.staple_token(&hello, wait).await?;
                        let (sealer, opener) =
                            handshake(&mut s, &key, RECONNECT_CONTEXT, role, limit).await?;
                        let live = Established {
                            stream: s,
                            sealer,
                            opener,
                            inbox: Inbox::new(READ_BUF),
                            kind: PathKind::Relay,
                        };
                        if sender {
                            Ok(live)
                        } else {
                            await_use(live, wait).await
                        }
                    }
                    .await;
                    let _ = tx.send(Cand::Relay(res)).await;
                });
            }
        }
        drop(tx);
        // The decisions are the proto rule's; this loop only waits and reports.
        let mut direct: Option<Established> = None;
        let mut last_err: Option<Error> = None;
        let winner = loop {
            let until = match race.decide(Instant::now()) {
                Decision::Direct => break direct.take(),
                Decision::Relay => break relay_ready.take(),
                Decision::Fail => break None,
                Decision::Wait(until) => until,
            };
            let ev = tokio::select! {
                ev = rx.recv() => ev,
                _ = tokio::time::sleep_until(until.into()) => continue,
            };
            match ev {
                Some(Cand::Direct(live)) => {
                    direct = Some(live);
                    race.direct();
                }
                Some(Cand::DialFailed) => race.dial_failed(),
                Some(Cand::Relay(Ok(live))) => {
                    relay_ready = Some(live);
                    race.relay_ready();
                }
                Some(Cand::Relay(Err(e))) => {
                    race.relay_failed();
                    last_err = Some(e);
                }
                // Every task is done.
                None => race.all_done(),
            }
        };
        tasks.abort_all();
        let Some(mut live) = winner else {
            return Err(last_err.unwrap_or_else(|| timeout_err("reconnecting")));
        };
        if sender {
            send_record(&mut live.stream, &mut live.sealer, &Message::Use.to_vec()).await?;
        }
        Ok(live)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_addresses_that_make_a_direct_path_are_dialled() {
        let hints = [
            a("127.0.0.1:22"),
            a("[::1]:22"),
            a("[::ffff:127.0.0.1]:22"),
            a("0.0.0.0:9"),
            a("[::]:9"),
            a("224.0.0.1:9"),
            a("255.255.255.255:9"),
            a("169.254.1.1:9"),
            a("[fe80::1]:9"),
            a("[ff02::1]:9"),
            a("192.0.2.7:0"),
            a("192.0.2.7:4000"),
            a("[2001:db8::7]:4000"),
            a("192.0.2.7:4000"),
        ];
        let public_relay = Some("198.51.100.1".parse().unwrap());
        assert_eq!(
            dialable(&hints, public_relay),
            [a("192.0.2.7:4000"), a("[2001:db8::7]:4000")]
        );
        // Both peers on this machine, through a relay on loopback.
        let local_relay = Some("127.0.0.1".parse().unwrap());
        assert_eq!(
            dialable(&hints, local_relay),
            [
                a("127.0.0.1:22"),
                a("[::1]:22"),
                a("192.0.2.7:4000"),
                a("[2001:db8::7]:4000")
            ]
        );
        let many: Vec<SocketAddr> = (1..=16).map(|p| SocketAddr::from(([192, 0, 2, 1], p))).collect();
        assert_eq!(dialable(&many, public_relay).len(), MAX_DIALS);
    }
}
