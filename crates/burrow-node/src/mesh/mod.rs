//! `burrow node`: the mesh daemon (seed 002). It listens for links, dials
//! its bootstrap nodes and then the nodes it learns about, keeps enough
//! links up, gossips signed node records (push on change, pull for
//! anti-entropy), answers pings, and serves `burrow node status / nodes /
//! ping` on a control socket.
//!
//! | module | owns |
//! |---|---|
//! | [`link`] | one task per connection driving the link machine ([`burrow_proto::mesh::link`]) |
//! | `client` | a client's link (`burrow proxy --mesh`): handshake, then the tunnel driver takes it |
//! | [`control`] | the control socket (0600, in the data folder) and its client |
//! | `metrics` | `--metrics`: the counters in Prometheus' text format |
//! | `pair` | pairing over a link (PAIR_REQ / PAIR_RES): the offer and the join |
//!
//! State shared by the tasks lives in one `Shared` under a mutex that is
//! never held across an await: the node table, the links, counters, and
//! waiting pings.

pub(crate) mod client;
pub use client::NodeAddrs;
pub mod control;
mod known;
pub mod link;
mod metrics;
mod pair;
mod relayed;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use burrow_proto::keys::NodeId;
use burrow_proto::mesh::link::{Direction, LinkState, LinkStats};
use burrow_proto::mesh::packet::Reason;
use burrow_proto::mesh::record::{Claims, Flags, MAX_TTL, NodeRecord};
use burrow_proto::mesh::table::{NodeTable, TableConfig};

use crate::error::Error;
use crate::keys::identity::Identity;
use crate::tunnel::Log;

/// What a node runs with.
pub struct NodeConfig {
    /// This installation.
    pub me: Arc<Identity>,
    /// What it calls itself in its record.
    pub name: String,
    /// Where it listens for links.
    pub listen: SocketAddr,
    /// What its record advertises (empty: the listen address if it is
    /// specific, else this machine's interface addresses).
    pub advertise: Vec<SocketAddr>,
    /// Nodes to link to first (HOST:PORT).
    pub bootstrap: Vec<String>,
    /// The seed's KEEPALIVE_INTERVAL.
    pub keepalive: Duration,
    /// The control socket.
    pub control: PathBuf,
    /// Where known nodes are remembered across restarts (their signed
    /// records); `None`: nowhere.
    pub known_file: Option<PathBuf>,
    /// Lines for the user.
    pub log: Log,
    /// Links kept up by dialling learned nodes.
    pub target_links: usize,
    /// Links at most (handshakes included); more are refused with "busy".
    pub max_links: usize,
    /// Where paired nodes' tunnels may go (as for `burrow exit`).
    pub policy: Arc<burrow_proto::tunnel::policy::Policy>,
    /// The peer book (re-read for every client link: pairing adds to it).
    pub peer_book: Option<PathBuf>,
    /// Where paired nodes' `burrow send --to` files go (`None`: refused).
    pub inbox: Option<PathBuf>,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// A relay to keep a mailbox on (`HOST:PORT[#FINGERPRINT]`), for a
    /// node that accepts no inbound connections.
    pub relay: Option<String>,
    /// Relay onion circuits (seed 004): the directory authorities, and
    /// whether this node is an exit.
    pub onion: Option<crate::onion::relay::OnionNodeConfig>,
}

/// Where the control socket lives by default: beside the identity.
pub fn default_control_path() -> Option<PathBuf> {
    crate::keys::identity::default_path().and_then(|p| p.parent().map(|d| d.join("node.sock")))
}

/// Handshakes in progress from one address (IPv4, or an IPv6 /64) at once.
pub const MAX_HANDSHAKES_PER_ADDRESS: usize = 8;

/// What one address's share is counted by: the IPv4 address, or the /64 of
/// an IPv6 one.
fn share_key(a: SocketAddr) -> u128 {
    match a.ip() {
        std::net::IpAddr::V4(v4) => u128::from(u32::from(v4)),
        std::net::IpAddr::V6(v6) => u128::from(v6) >> 64 | 1 << 127,
    }
}

/// Where known nodes are remembered by default: beside the identity.
pub fn default_known_path() -> Option<PathBuf> {
    crate::keys::identity::default_path().and_then(|p| p.parent().map(|d| d.join("mesh-nodes")))
}

/// Keeps `k` of `v`'s items, picked at random (a partial Fisher-Yates
/// shuffle on the OS RNG): gossip targets and dial candidates must not be
/// the same few every time, or some nodes would only ever hear of a change
/// through the 30 s anti-entropy pull.
pub(crate) fn sample<T>(v: &mut Vec<T>, k: usize) {
    let n = v.len();
    for i in 0..k.min(n) {
        let mut b = [0u8; 8];
        crate::platform::random(&mut b);
        let j = i + (u64::from_be_bytes(b) % (n - i) as u64) as usize;
        v.swap(i, j);
    }
    v.truncate(k);
}

/// Unix seconds now.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What a link task is told to do.
#[derive(Debug)]
pub(crate) enum Cmd {
    /// Send this encoded packet.
    Send(Vec<u8>),
    /// Ping with this nonce.
    Ping(u64),
    /// Close the link with this reason.
    Close(Reason, String),
}

/// One link as the node sees it.
#[derive(Debug)]
pub(crate) struct LinkInfo {
    pub dir: Direction,
    pub addr: SocketAddr,
    pub peer: Option<NodeId>,
    pub state: LinkState,
    pub rtt: Option<Duration>,
    pub since: Instant,
    pub stats: LinkStats,
    pub tx: mpsc::Sender<Cmd>,
    /// Circuit cells to send on this link (bounded by the circuits' windows).
    pub cells: mpsc::UnboundedSender<Vec<u8>>,
    /// The peer's keys and the handshake hash, once up.
    pub keys: Option<burrow_proto::keys::PublicIdentity>,
    pub hash: Option<[u8; 32]>,
    /// Through a relay mailbox (else a direct connection).
    pub relayed: bool,
}

/// Counters for `status`.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub(crate) struct Counters {
    pub handshakes: u64,
    pub handshake_failures: u64,
    pub authentication_failures: u64,
    pub keepalive_timeouts: u64,
    pub records_in: u64,
    pub records_new: u64,
    pub records_duplicate: u64,
    pub records_refused: u64,
    pub records_pushed: u64,
    pub links_refused_busy: u64,
    pub tunnels: u64,
    pub tunnels_open: u64,
}

/// Why a node went offline, for `status`.
#[derive(Debug, Clone)]
pub(crate) struct Gone {
    pub reason: Reason,
    pub text: String,
    pub by_peer: bool,
    pub at: Instant,
}

pub(crate) struct State {
    pub table: NodeTable,
    pub my_record: Vec<u8>,
    pub my_seq: u64,
    pub my_signed_at: u64,
    pub links: HashMap<u64, LinkInfo>,
    pub by_node: HashMap<NodeId, u64>,
    pub next_link: u64,
    pub dialing: HashSet<NodeId>,
    /// When a learned node may be dialled again.
    pub retry: HashMap<NodeId, (Instant, Duration)>,
    pub gone: HashMap<NodeId, Gone>,
    pub counters: Counters,
    pub pings: HashMap<u64, (Instant, oneshot::Sender<Duration>)>,
    pub offers: HashMap<NodeId, pair::Offer>,
    pub joins: HashMap<NodeId, pair::Join>,
    /// Nodes known from an earlier run whose records ran out meanwhile:
    /// still worth dialling (keys and last addresses), never gossiped.
    pub remembered: HashMap<NodeId, ([u8; 32], Vec<SocketAddr>)>,
    /// The relay mailbox, if the node keeps one.
    pub mailbox: Option<relayed::MailboxState>,
}

/// What every task of a node shares.
pub(crate) struct Shared {
    pub cfg: NodeConfig,
    pub id: NodeId,
    /// Where it actually listens (the port chosen when 0 was asked for).
    pub listen: SocketAddr,
    pub advertised: Vec<SocketAddr>,
    pub state: Mutex<State>,
    pub started: Instant,
    /// What the record says of the relay mailbox (`HOST:PORT#FINGERPRINT`).
    pub relay_claim: Mutex<Option<String>>,
    /// Bytes of the tunnels paired nodes ran through this node (all of them).
    pub tunnel_bytes: Arc<crate::tunnel::Meter>,
    /// The circuit relay, when the node has directories configured.
    pub onion: std::sync::OnceLock<crate::onion::relay::OnionShared>,
    /// Woken whenever a link comes up (those waiting for one to a node).
    pub link_up: tokio::sync::Notify,
}

impl Shared {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sign_record(&self, seq: u64, now: u64) -> Result<Vec<u8>, Error> {
        NodeRecord::sign(
            &self.cfg.me,
            &Claims {
                flags: Flags(if self.cfg.relay.is_some() {
                    Flags::BEHIND_NAT
                } else {
                    0
                }),
                seq,
                issued: now,
                ttl: MAX_TTL,
                name: self.cfg.name.clone(),
                addrs: self.advertised.clone(),
                relay: self.relay_claim.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            },
        )
        .map_err(|e| Error::Usage(format!("cannot sign this node's record: {e}")))
    }
}

/// Signs this node's record anew (a newer seq) and pushes it to links.
fn resign(shared: &Arc<Shared>) {
    let unix = unix_now();
    let seq = { shared.lock().my_seq.max(unix * 1000) + 1 };
    if let Ok(rec) = shared.sign_record(seq, unix) {
        let mut st = shared.lock();
        st.my_seq = seq;
        st.my_signed_at = unix;
        let _ = st.table.insert(&rec, unix);
        st.my_record = rec;
        let me = shared.id;
        drop(st);
        link::push(shared, me, None);
    }
}

/// Sets what the record says of the relay mailbox; re-signs when that
/// changed (and says so: true).
pub(crate) fn set_relay_claim(shared: &Arc<Shared>, claim: Option<String>) -> bool {
    {
        let mut c = shared.relay_claim.lock().unwrap_or_else(|p| p.into_inner());
        if *c == claim {
            return false;
        }
        *c = claim;
    }
    resign(shared);
    true
}

/// The addresses a record advertises for `listen`.
fn advertise_for(listen: SocketAddr, extra: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = extra.to_vec();
    if out.is_empty() {
        if listen.ip().is_unspecified() {
            if let Ok(ifs) = if_addrs::get_if_addrs() {
                for i in ifs {
                    let ip = i.ip();
                    if ip.is_loopback() || (ip.is_ipv6() != listen.is_ipv6() && listen.is_ipv6()) {
                        continue;
                    }
                    if listen.is_ipv4() && !ip.is_ipv4() {
                        continue;
                    }
                    out.push(SocketAddr::new(ip, listen.port()));
                }
            }
        } else {
            out.push(listen);
        }
    }
    out.truncate(burrow_proto::mesh::record::MAX_ADDRS);
    out
}

/// Runs a node until the process ends (or its listener fails).
pub async fn run_node(cfg: NodeConfig) -> Result<(), Error> {
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| Error::Usage(format!("cannot listen on {}: {e}", cfg.listen)))?;
    let listen = listener
        .local_addr()
        .map_err(|e| Error::io("the listening socket", e))?;
    let control = control::bind(&cfg.control)?;
    let metrics = match cfg.metrics {
        Some(a) => Some(metrics::bind(a).await?),
        None => None,
    };
    let advertised = advertise_for(listen, &cfg.advertise);
    let me_id = cfg.me.public().id();
    let now = unix_now();
    // Sequence numbers grow across restarts without a state file: the
    // signing time in milliseconds.
    let seq = now.saturating_mul(1000);
    let shared = Arc::new(Shared {
        id: me_id,
        listen,
        advertised,
        state: Mutex::new(State {
            table: NodeTable::new(TableConfig::default()),
            my_record: Vec::new(),
            my_seq: seq,
            my_signed_at: now,
            links: HashMap::new(),
            by_node: HashMap::new(),
            next_link: 1,
            dialing: HashSet::new(),
            retry: HashMap::new(),
            gone: HashMap::new(),
            counters: Counters::default(),
            pings: HashMap::new(),
            offers: HashMap::new(),
            joins: HashMap::new(),
            remembered: HashMap::new(),
            mailbox: None,
        }),
        started: Instant::now(),
        relay_claim: Mutex::new(None),
        tunnel_bytes: Arc::default(),
        onion: std::sync::OnceLock::new(),
        link_up: tokio::sync::Notify::new(),
        cfg,
    });
    let record = shared.sign_record(seq, now)?;
    {
        let mut st = shared.lock();
        st.table.pin(me_id);
        let _ = st.table.insert(&record, now);
        st.my_record = record;
    }
    if let Some(path) = &shared.cfg.known_file {
        let n = known::load(&shared, path);
        if n > 0 {
            (shared.cfg.log)(format!("remembered {n} node(s) from {}", path.display()));
        }
    }
    let addrs: Vec<String> = shared.advertised.iter().map(|a| a.to_string()).collect();
    (shared.cfg.log)(format!(
        "node {me_id} listening on {listen} (advertising {}); control socket {}",
        if addrs.is_empty() {
            "no address".to_owned()
        } else {
            addrs.join(", ")
        },
        shared.cfg.control.display()
    ));
    if let Some(c) = shared.cfg.onion.clone() {
        crate::onion::relay::start(&shared, c);
    }
    tokio::spawn(control::serve(shared.clone(), control));
    if let Some(l) = metrics {
        tokio::spawn(metrics::serve(shared.clone(), l));
    }
    for addr in shared.cfg.bootstrap.clone() {
        tokio::spawn(bootstrap(shared.clone(), addr));
    }
    if let Some(raw) = shared.cfg.relay.clone() {
        let (addr, trust) =
            crate::tunnel::RelayTrust::parse(&raw, crate::tunnel::RelayTrust::default_known());
        let client = crate::meet::relay_client::RelayClient::new(&addr);
        (shared.cfg.log)(format!(
            "keeping a mailbox on the relay {} (for nodes that cannot dial this one)",
            client.addr()
        ));
        tokio::spawn(relayed::mailbox(shared.clone(), client, trust));
    }
    tokio::spawn(maintain(shared.clone()));
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: keep serving.
                (shared.cfg.log)(format!("accept failed: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // At the link limit, or this address already has its share of
        // handshakes in progress: refuse this one, keep serving the rest.
        let busy = {
            let st = shared.lock();
            let handshaking = st
                .links
                .values()
                .filter(|l| l.state == LinkState::Handshake && share_key(l.addr) == share_key(addr))
                .count();
            st.links.len() >= shared.cfg.max_links || handshaking >= MAX_HANDSHAKES_PER_ADDRESS
        };
        if busy {
            shared.lock().counters.links_refused_busy += 1;
            tokio::spawn(link::refuse_busy(stream));
            continue;
        }
        let slot = link::register(&shared, Direction::Inbound, addr, false);
        tokio::spawn(link::run_inbound(shared.clone(), stream, addr, slot));
    }
}

/// Dials `node` for a circuit's EXTEND (unless a link to it comes up
/// meanwhile) and waits up to `wait` for the link: its id and whether
/// this node dialled it.
pub(crate) async fn dial_node(
    shared: &Arc<Shared>,
    node: NodeId,
    x25519: [u8; 32],
    addrs: Vec<SocketAddr>,
    wait: Duration,
) -> Option<(u64, bool)> {
    let linked = |shared: &Shared| {
        let st = shared.lock();
        st.by_node
            .get(&node)
            .and_then(|l| st.links.get(l).map(|i| (*l, i.dir == Direction::Outbound)))
    };
    if let Some(l) = linked(shared) {
        return Some(l);
    }
    let first = shared.lock().dialing.insert(node);
    if first {
        let s = shared.clone();
        tokio::spawn(async move {
            if let Ok(r) = relayed::dial_any(&addrs, None, false, &s.cfg.me, &x25519).await {
                let s2 = s.clone();
                // The link lives on in its own task; this one only waits for it.
                tokio::spawn(async move {
                    link::run_outbound(s2, r.stream, r.addr, Some(x25519), r.relayed).await
                });
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            s.lock().dialing.remove(&node);
        });
    }
    // Told when a link comes up (registered before each look, so one that
    // comes up in between is not missed).
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let up = shared.link_up.notified();
        tokio::pin!(up);
        up.as_mut().enable();
        if let Some(l) = linked(shared) {
            return Some(l);
        }
        if tokio::time::timeout_at(deadline, up).await.is_err() {
            return None;
        }
    }
}

/// Keeps a link to one bootstrap address: dials, and after the link ends
/// dials again with backoff (0.5 s doubling to 30 s, short again after a
/// link that was up).
async fn bootstrap(shared: Arc<Shared>, addr: String) {
    let mut wait = Duration::from_millis(500);
    let mut known: Option<NodeId> = None;
    loop {
        // Linked to that node by another way (it dialled us): check later.
        let linked = known.is_some_and(|id| shared.lock().by_node.contains_key(&id));
        if !linked {
            let started = Instant::now();
            match dial(&addr).await {
                Ok((stream, sa)) => {
                    let (peer, was_up) = link::run_outbound(shared.clone(), stream, sa, None, false).await;
                    if peer.is_some() {
                        known = peer;
                    }
                    if was_up && started.elapsed() > Duration::from_secs(10) {
                        wait = Duration::from_millis(500);
                    }
                }
                Err(e) => (shared.cfg.log)(format!(
                    "bootstrap {}: {e}; retrying in {:.1}s",
                    burrow_proto::transfer::escape_display(&addr),
                    wait.as_secs_f32()
                )),
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(30));
    }
}

async fn dial(addr: &str) -> Result<(TcpStream, SocketAddr), std::io::Error> {
    let s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = s.set_nodelay(true);
    let peer = s.peer_addr()?;
    Ok((s, peer))
}

/// The node's clock: anti-entropy pulls, record refresh, expiry, and
/// dialling learned nodes while below the link target.
async fn maintain(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut last_pull = Instant::now();
    // A young node pulls after 1, 2, 4, 8 and 16 s (what its first links
    // had not heard of yet when they came up), then every 30 s while the
    // list changes.
    let mut pull_every = Duration::from_secs(1);
    let mut last_expire = Instant::now();
    let mut last_save = Instant::now();
    let mut saved_digest = [0u8; 32];
    let mut last_digest = [0u8; 32];
    let mut last_change = Instant::now();
    loop {
        tick.tick().await;
        let now = Instant::now();
        let unix = unix_now();
        // Re-sign at half the record's life, and push it to every link.
        let resign = {
            let st = shared.lock();
            unix >= st.my_signed_at + MAX_TTL / 2
        };
        if resign {
            self::resign(&shared);
        }
        if now.duration_since(last_expire) >= Duration::from_secs(60) {
            last_expire = now;
            shared.lock().table.expire(unix);
        }
        // Anti-entropy: ask one link for what differs while the node list
        // is changing (or the node is young). Once it has
        // been quiet for 2 min, idle links' beats carry each side's digest
        // and a link pulls only when they differ: a settled mesh's idle
        // links carry beats only (docs/benchmarks.md, idle link cost).
        let digest = shared.lock().table.digest();
        if digest != last_digest {
            last_digest = digest;
            last_change = now;
        }
        let settled = now.duration_since(last_change) >= Duration::from_secs(120);
        let young = pull_every < Duration::from_secs(30);
        if (young || !settled) && now.duration_since(last_pull) >= pull_every {
            last_pull = now;
            link::pull_from_one(&shared);
            pull_every = (pull_every * 2).min(Duration::from_secs(30));
        }
        if now.duration_since(last_save) >= Duration::from_secs(5)
            && let Some(path) = &shared.cfg.known_file
        {
            last_save = now;
            let d = shared.lock().table.digest();
            if d != saved_digest {
                match known::save(&shared, path) {
                    Ok(()) => saved_digest = d,
                    Err(e) => (shared.cfg.log)(format!("cannot remember known nodes: {e}")),
                }
            }
        }
        dial_learned(&shared);
    }
}

/// Dials learned nodes (by their records) while fewer than the target are linked.
fn dial_learned(shared: &Arc<Shared>) {
    let now = Instant::now();
    type Pick = (NodeId, [u8; 32], Vec<SocketAddr>, Option<String>, bool);
    let picks: Vec<Pick> = {
        let st = shared.lock();
        let up = st.by_node.len() + st.dialing.len();
        if up >= shared.cfg.target_links || st.links.len() >= shared.cfg.max_links {
            return;
        }
        let from_table = st.table.iter().map(|(id, r)| {
            (
                *id,
                r.keys.x25519,
                r.addrs.clone(),
                r.relay.clone(),
                r.flags.has(Flags::BEHIND_NAT),
            )
        });
        let remembered = st
            .remembered
            .iter()
            .filter(|(id, _)| st.table.get(id).is_none())
            .map(|(id, (k, a))| (*id, *k, a.clone(), None, false));
        let mut all: Vec<_> = from_table
            .chain(remembered)
            .filter(|(id, _, addrs, relay, _)| {
                *id != shared.id
                    && (!addrs.is_empty() || relay.is_some())
                    && !st.by_node.contains_key(id)
                    && !st.dialing.contains(id)
                    && st.retry.get(id).is_none_or(|(at, _)| now >= *at)
            })
            .collect();
        sample(&mut all, shared.cfg.target_links - up);
        all
    };
    for (id, key, addrs, relay, behind_nat) in picks {
        shared.lock().dialing.insert(id);
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut up = false;
            if let Ok(r) = relayed::dial_any(&addrs, relay.as_deref(), behind_nat, &shared.cfg.me, &key).await
            {
                let (_, was_up) =
                    link::run_outbound(shared.clone(), r.stream, r.addr, Some(key), r.relayed).await;
                up = was_up;
            }
            let mut st = shared.lock();
            st.dialing.remove(&id);
            let back = if up {
                Duration::from_millis(500)
            } else {
                st.retry
                    .get(&id)
                    .map(|(_, d)| (*d * 2).min(Duration::from_secs(60)))
                    .unwrap_or(Duration::from_secs(1))
            };
            st.retry.insert(id, (Instant::now() + back, back));
        });
    }
}
