//! `burrow exit`: the mailbox under this key, one tunnel per session the
//! relay announces, destinations connected under the policy.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use burrow_proto::connector::Msg;
use burrow_proto::session::Side;
use burrow_proto::tunnel::mux::{End, Host, ResetReason};
use burrow_proto::tunnel::policy::Policy;

use crate::error::Error;
use crate::keys::identity::Identity;
use crate::keys::peers::PeerBook;
use crate::meet::relay_client::RelayClient;

use super::*;

/// What an exit needs.
pub struct ExitConfig {
    /// The relay.
    pub relay: RelayClient,
    /// How to trust it.
    pub trust: RelayTrust,
    /// This installation.
    pub me: Arc<Identity>,
    /// Paired peers allowed to use the exit.
    pub peers: Arc<PeerBook>,
    /// Egress policy.
    pub policy: Arc<Policy>,
    /// Called with a line for the user (connected, reconnecting, sessions).
    pub log: Log,
    /// Silence after which a tunnel counts as lost (keepalives every third).
    pub idle: Duration,
}

/// Serves as an exit forever: keeps the mailbox up (reconnecting with
/// backoff), and serves each session the relay announces.
pub async fn run_exit(cfg: ExitConfig) -> Result<(), Error> {
    let cfg = Arc::new(cfg);
    let mut backoff = Backoff::default();
    loop {
        let mut ready = false;
        match mailbox(&cfg, &mut ready).await {
            Err(e @ Error::Integrity(_)) => return Err(e),
            Err(e) => {
                let wait = backoff.after_loss(ready);
                (cfg.log)(format!(
                    "relay connection lost ({e}); reconnecting in {:.1}s",
                    wait.as_secs_f32()
                ));
                tokio::time::sleep(wait).await;
            }
            Ok(()) => backoff = Backoff::default(),
        }
    }
}

/// The exit's wait before it reconnects its mailbox: doubling from
/// [`Backoff::FIRST`] to [`Backoff::MOST`] while the relay stays out of
/// reach, and short again after a mailbox that was up (each outage is a
/// fresh one, instead of starting where the last one ended).
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: Self::FIRST }
    }
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(500);
    const MOST: Duration = Duration::from_secs(5);

    /// How long to wait after losing the relay; `was_up`: the mailbox had
    /// been ready on this attempt.
    fn after_loss(&mut self, was_up: bool) -> Duration {
        if was_up {
            self.next = Self::FIRST;
        }
        let wait = self.next;
        self.next = (wait * 2).min(Self::MOST);
        wait
    }
}

async fn mailbox(cfg: &Arc<ExitConfig>, ready: &mut bool) -> Result<(), Error> {
    let mut link = relay_link(&cfg.relay, &cfg.trust, &cfg.me).await?;
    link.send(&Msg::Listen).await?;
    *ready = true;
    (cfg.log)(format!(
        "exit ready at relay {} as {}",
        cfg.relay.addr(),
        cfg.me.public().fingerprint()
    ));
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            _ = ping.tick() => link.send(&Msg::Ping).await?,
            m = link.recv() => match m? {
                Msg::Init { session, peer } if cfg.peers.by_x25519(&peer).is_none() => {
                    (cfg.log)(format!(
                        "refused a session from an unpaired key ({})",
                        hex::encode(&peer[..8])
                    ));
                    link.send(&Msg::Refuse { session }).await?;
                }
                Msg::Init { session, peer } => {
                    let cfg = cfg.clone();
                    tokio::spawn(async move {
                        if let Err(e) = exit_session(&cfg, session, peer).await {
                            (cfg.log)(format!("session refused or failed: {e}"));
                        }
                    });
                }
                Msg::Pong => {}
                _ => return Err(Error::RelayProtocol("unexpected message on the mailbox".into())),
            },
        }
    }
}

async fn exit_session(cfg: &Arc<ExitConfig>, session: [u8; 16], peer: [u8; 32]) -> Result<(), Error> {
    let Some(p) = cfg.peers.by_x25519(&peer) else {
        return Err(Error::Usage(
            "a key that is not paired asked for a session".into(),
        ));
    };
    let name = p.name.clone();
    let mut link = relay_link(&cfg.relay, &cfg.trust, &cfg.me).await?;
    link.send(&Msg::Accept { session }).await?;
    match link.recv().await? {
        Msg::Init { peer: p2, .. } if p2 == peer => {}
        _ => return Err(Error::RelayProtocol("the relay did not start the session".into())),
    }
    let mut s = link.s;
    let (sealer, opener, seen) = end_to_end(&mut s, &cfg.me, Side::Initiator).await?;
    if seen != peer {
        return Err(Error::Integrity(
            "the proxy's key is not the one the relay announced".into(),
        ));
    }
    (cfg.log)(format!("session from {name}"));
    let (policy, log) = (cfg.policy.clone(), cfg.log.clone());
    let on_open: OnOpen = Arc::new(move |t, id, host, port| {
        tokio::spawn(exit_stream(t, id, host, port, policy.clone(), log.clone()));
    });
    let t = Tunnel::start(
        s,
        sealer,
        opener,
        End::Server,
        Some(on_open),
        cfg.idle,
        Framing::Session,
    );
    t.ended().await;
    Ok(())
}

/// Serves a tunnel over a mesh link a paired node's client handed over
/// (`burrow proxy --mesh`): its streams leave under `policy`.
pub(crate) async fn serve_mesh_tunnel(
    s: TcpStream,
    keys: (burrow_proto::session::Sealer, burrow_proto::session::Opener),
    already: Vec<u8>,
    policy: Arc<Policy>,
    log: Log,
    meter: Arc<super::session::Meter>,
) {
    let log2 = log.clone();
    let on_open: OnOpen = Arc::new(move |t, id, host, port| {
        tokio::spawn(exit_stream(t, id, host, port, policy.clone(), log2.clone()));
    });
    let t = Tunnel::start(
        s,
        keys.0,
        keys.1,
        End::Server,
        Some(on_open),
        Duration::from_secs(30),
        Framing::Mesh { already, meter },
    );
    t.ended().await;
}

fn reset_for(e: &std::io::Error) -> ResetReason {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => ResetReason::ConnectionRefused,
        K::NetworkUnreachable => ResetReason::NetworkUnreachable,
        K::HostUnreachable => ResetReason::HostUnreachable,
        K::TimedOut => ResetReason::TimedOut,
        _ => ResetReason::Failure,
    }
}

/// How a destination is shown in a log line (names come from the peer).
pub(super) fn shown_host(host: &Host, port: u16) -> String {
    match host {
        Host::Ip(std::net::IpAddr::V6(a)) => format!("[{a}]:{port}"),
        Host::Ip(a) => format!("{a}:{port}"),
        Host::Name(n) => format!("{}:{port}", burrow_proto::transfer::escape_display(n)),
    }
}

/// This host's addresses, at most a second old: not only those at start
/// (one added since is ours too), but not a netlink dump per stream either
/// (that was a fifth of an onion stream's time to first byte).
fn own_addresses() -> Arc<Vec<std::net::IpAddr>> {
    static CACHE: std::sync::Mutex<Option<(std::time::Instant, Arc<Vec<std::net::IpAddr>>)>> =
        std::sync::Mutex::new(None);
    let mut c = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    match &*c {
        Some((at, addrs)) if at.elapsed() < Duration::from_secs(1) => addrs.clone(),
        _ => {
            let addrs = Arc::new(crate::meet::paths::local_addresses());
            *c = Some((std::time::Instant::now(), addrs.clone()));
            addrs
        }
    }
}

/// Resolves `host`, checks every address against the egress policy after
/// resolution (a name may point anywhere), and connects to the first
/// allowed one that answers; or why not.
pub(crate) async fn connect_checked(
    host: &Host,
    port: u16,
    policy: &Policy,
) -> Result<TcpStream, (ResetReason, String)> {
    let addrs: Vec<SocketAddr> = match host {
        Host::Ip(ip) => vec![SocketAddr::new(*ip, port)],
        // A resolver that never answers must not hold the stream past the
        // proxy's patience.
        Host::Name(n) => {
            match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host((n.as_str(), port))).await {
                Ok(Ok(a)) => a.collect(),
                _ => Vec::new(),
            }
        }
    };
    let mut last = (
        ResetReason::HostUnreachable,
        "the name did not resolve".to_owned(),
    );
    let own = own_addresses();
    for a in addrs {
        if let Err(why) = policy.check_with(a, &own) {
            last = (ResetReason::NotAllowed, format!("{a}: {why}"));
            continue;
        }
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(a)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(e)) => last = (reset_for(&e), format!("{a}: {e}")),
            Err(_) => last = (ResetReason::TimedOut, format!("{a}: timed out")),
        }
    }
    Err(last)
}

async fn exit_stream(t: Arc<Tunnel>, id: u32, host: Host, port: u16, policy: Arc<Policy>, log: Log) {
    let (inflow, writable) = t.register(id, None);
    let s = match connect_checked(&host, port, &policy).await {
        Ok(s) => s,
        Err(last) => {
            if last.0 == ResetReason::NotAllowed {
                log(format!(
                    "refused a stream to {}: {}",
                    shown_host(&host, port),
                    last.1
                ));
            }
            lock(&t.streams).remove(&id);
            let r = lock(&t.mux).reset(id, last.0, &last.1);
            t.send(r).await;
            return;
        }
    };
    let opened = lock(&t.mux).opened(id);
    t.send(opened).await;
    t.pump(id, s, inflow, writable).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 14, 14: a second outage starts from the short wait again
    /// (before, it went on from where the first one ended: 5 s).
    #[test]
    fn the_reconnect_wait_doubles_and_starts_over_after_a_good_connection() {
        let mut b = Backoff::default();
        let first: Vec<f32> = (0..6).map(|_| b.after_loss(false).as_secs_f32()).collect();
        assert_eq!(first, [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]);
        // The relay came back, the mailbox was up, then lost again.
        assert_eq!(b.after_loss(true), Duration::from_millis(500));
        assert_eq!(b.after_loss(false), Duration::from_secs(1));
    }

    #[test]
    fn destinations_from_the_peer_are_shown_escaped() {
        let h = Host::Name("evil\x1b]0;x\x07.example".into());
        let shown = shown_host(&h, 80);
        assert!(!shown.contains('\x1b') && !shown.contains('\x07'), "{shown}");
        assert!(shown.ends_with(":80"));
    }
}
