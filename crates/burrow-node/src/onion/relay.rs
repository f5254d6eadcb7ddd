//! A node's circuit relay (`burrow node --directory ...`): one task owns
//! the [`Relay`] machine, cells come in from link tasks and go out to
//! them, EXTENDs find or dial the next node, and at the last hop the
//! exit's streams run (under the egress policy, `--exit` only).
//!
//! Also the node's directory client: it registers with every authority
//! (its descriptor with the address the authorities see it at, and the
//! onion key it made at start and keeps only in memory), fetches the node
//! list, and keeps both fresh.
//!
//! Bounds: CREATEs per client address and per second in all (handshake
//! work), circuits in all, and the bytes the exit holds for clients that
//! do not read (global cap: the circuit holding most is closed first).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::mpsc;

use burrow_proto::keys::{NodeId, PublicIdentity};
use burrow_proto::mesh::link::Direction;
use burrow_proto::onion::cell::{CELL_LEN, Cell, Command, Reason};
use burrow_proto::onion::circuit::{CircuitKey, Relay, RelayOut};
use burrow_proto::onion::directory::{Descriptor, DescriptorClaims, NodeList};
use burrow_proto::onion::handshake::Responder;
use burrow_proto::tunnel::mux::{End, Host, ResetReason};

use super::directory::{DirectoryAddr, fetch_keys, fetch_list, whoami};
use super::http::{request, share_of};
use super::streams::{Action, StreamEvent, Streams, Tagged};
use crate::mesh::{Shared, unix_now};
use crate::platform::OsRandom;

/// What `--directory` and `--exit` configure on a node.
#[derive(Debug, Clone)]
pub struct OnionNodeConfig {
    /// The authorities (all of them: the list needs more than half).
    pub directories: Vec<DirectoryAddr>,
    /// Whether circuits may leave through this node.
    pub exit: bool,
    /// Destination ports the exit allows (published in the descriptor).
    pub exit_ports: Vec<(u16, u16)>,
}

/// The exit's default ports: all but 25 (SMTP abuse).
pub fn default_exit_ports() -> Vec<(u16, u16)> {
    vec![(1, 24), (26, 65535)]
}

/// Work for the onion task.
pub(crate) enum OnionCmd {
    /// A cell from a link.
    Cell(u64, Vec<u8>),
    /// A link ended.
    LinkClosed(u64),
    /// An onion client's link came up from this address.
    ClientLink(u64, SocketAddr),
    /// An EXTEND's link is up.
    ExtendReady(CircuitKey, u64, bool),
    /// An EXTEND's node could not be reached.
    ExtendFailed(CircuitKey),
    /// A newer node list.
    List(Arc<NodeList>),
    /// An exit connection finished connecting.
    Connected(CircuitKey, u32, Result<TcpStream, (ResetReason, String)>),
}

/// What the rest of the node holds of the relay.
pub(crate) struct OnionShared {
    pub tx: mpsc::UnboundedSender<OnionCmd>,
    /// A client used a node list this node does not have yet: look now.
    pub list_wanted: tokio::sync::Notify,
    pub list: Mutex<Option<Arc<NodeList>>>,
    pub stats: Mutex<OnionStats>,
}

/// Counters for status and metrics.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub(crate) struct OnionStats {
    pub circuits: usize,
    pub created: u64,
    pub refused: u64,
    pub tampered: u64,
    pub forwarded: u64,
    pub exit_streams: u64,
    pub exit_refused: u64,
    pub registered: usize,
    pub list_nodes: usize,
}

/// CREATEs per client address: burst, then per second.
const CREATE_BURST: f64 = 30.0;
const CREATES_PER_S: f64 = 10.0;
/// CREATEs per second in all (handshake work).
const ALL_CREATES_PER_S: f64 = 2000.0;
/// Circuits through this node at most.
const MAX_CIRCUITS: usize = 20_000;
/// Bytes the exit holds for all clients together before it closes the
/// circuit holding most.
const EXIT_HOLD_CAP: usize = 48 * 1024 * 1024;

/// Starts the relay (its task and the directory client) and sets
/// `shared.onion`.
pub(crate) fn start(shared: &Arc<Shared>, cfg: OnionNodeConfig) {
    let (tx, rx) = mpsc::unbounded_channel();
    let responder = Responder::generate(shared.id, &mut OsRandom);
    let onion_key = responder.onion_key();
    let relay = Relay::new(shared.id, responder);
    let _ = shared.onion.set(OnionShared {
        tx: tx.clone(),
        list_wanted: tokio::sync::Notify::new(),
        list: Mutex::new(None),
        stats: Mutex::new(OnionStats::default()),
    });
    let s = shared.clone();
    let exit = cfg.exit;
    let ports = cfg.exit_ports.clone();
    tokio::spawn(async move { run(s, relay, rx, tx, exit, ports).await });
    let s = shared.clone();
    tokio::spawn(async move { directory_client(s, cfg, onion_key).await });
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Bucket(f64, Instant);

impl Bucket {
    fn take(&mut self, cap: f64, per_s: f64) -> bool {
        let now = Instant::now();
        self.0 = (self.0 + now.duration_since(self.1).as_secs_f64() * per_s).min(cap);
        self.1 = now;
        if self.0 >= 1.0 {
            self.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

struct ExitCircuit {
    streams: Streams<CircuitKey>,
    queued: VecDeque<Vec<u8>>,
    queued_bytes: usize,
}

/// A hostile hop, for the tests only (debug builds): from the N-th RELAY
/// cell this node sends on, flip a bit in each, send each twice, or swap
/// each pair (`BURROW_TEST_TAMPER=flip:N`, `replay:N` or `reorder:N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tamper {
    Flip(u64),
    Replay(u64),
    Reorder(u64),
}

fn tamper_from_env() -> Option<Tamper> {
    if !cfg!(debug_assertions) {
        return None;
    }
    let v = std::env::var("BURROW_TEST_TAMPER").ok()?;
    let (mode, n) = v.split_once(':')?;
    let n: u64 = n.parse().ok()?;
    match mode {
        "flip" => Some(Tamper::Flip(n)),
        "replay" => Some(Tamper::Replay(n)),
        "reorder" => Some(Tamper::Reorder(n)),
        _ => None,
    }
}

struct Task {
    tamper: Option<Tamper>,
    relayed: u64,
    held_back: Option<(u64, Cell)>,
    shared: Arc<Shared>,
    relay: Relay,
    exit: bool,
    exit_ports: Vec<(u16, u16)>,
    clients: HashMap<u64, SocketAddr>,
    per_ip: HashMap<u128, Bucket>,
    all: Bucket,
    exits: HashMap<CircuitKey, ExitCircuit>,
    held: usize,
    events: mpsc::UnboundedSender<Tagged<CircuitKey>>,
    tx: mpsc::UnboundedSender<OnionCmd>,
}

async fn run(
    shared: Arc<Shared>,
    relay: Relay,
    mut rx: mpsc::UnboundedReceiver<OnionCmd>,
    tx: mpsc::UnboundedSender<OnionCmd>,
    exit: bool,
    exit_ports: Vec<(u16, u16)>,
) {
    let (events, mut events_rx) = mpsc::unbounded_channel::<Tagged<CircuitKey>>();
    let mut t = Task {
        tamper: tamper_from_env(),
        relayed: 0,
        held_back: None,
        shared,
        relay,
        exit,
        exit_ports,
        clients: HashMap::new(),
        per_ip: HashMap::new(),
        all: Bucket(ALL_CREATES_PER_S, Instant::now()),
        exits: HashMap::new(),
        held: 0,
        events,
        tx,
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(c) => t.on_cmd(c),
                None => return,
            },
            ev = events_rx.recv() => {
                if let Some((circuit, ev)) = ev {
                    t.on_stream_event(circuit, ev);
                }
            }
            _ = tick.tick() => {
                t.publish_stats();
                // The test hook's held cell goes out late rather than never.
                if let Some((l, c)) = t.held_back.take() {
                    t.deliver(l, c);
                }
            }
        }
        t.drain();
    }
}

impl Task {
    fn on_cmd(&mut self, c: OnionCmd) {
        match c {
            OnionCmd::Cell(link, bytes) => {
                if bytes.len() != CELL_LEN {
                    return self.close_link(link, "a cell of the wrong length");
                }
                if bytes[4] == Command::Create as u8 && !self.admit_create(link) {
                    let circ = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
                    self.send(link, Cell::destroy(circ, Reason::ResourceLimit));
                    return;
                }
                let before = self.relay.stats().unknown_list;
                if let Err(e) = self.relay.on_cell(link, bytes, unix_now(), &mut OsRandom) {
                    self.close_link(link, &e.to_string());
                }
                if self.relay.stats().unknown_list != before
                    && let Some(o) = self.shared.onion.get()
                {
                    o.list_wanted.notify_one();
                }
            }
            OnionCmd::LinkClosed(link) => {
                self.clients.remove(&link);
                self.relay.link_closed(link);
            }
            OnionCmd::ClientLink(link, addr) => {
                self.clients.insert(link, addr);
            }
            OnionCmd::ExtendReady(circuit, link, outbound) => {
                self.relay.extend_link(circuit, link, outbound, &mut OsRandom)
            }
            OnionCmd::ExtendFailed(circuit) => self.relay.extend_failed(circuit),
            OnionCmd::List(list) => {
                self.relay.responder().learn_digest(list.digest);
            }
            OnionCmd::Connected(circuit, stream, r) => {
                let Some(e) = self.exits.get_mut(&circuit) else {
                    return;
                };
                let frame = match r {
                    Ok(sock) => {
                        e.streams.attach(stream, sock);
                        e.streams.mux.opened(stream)
                    }
                    Err((reason, why)) => e.streams.refuse(stream, reason, &why),
                };
                self.send_back(circuit, frame);
            }
        }
    }

    fn admit_create(&mut self, link: u64) -> bool {
        if self.relay.len() >= MAX_CIRCUITS || !self.all.take(ALL_CREATES_PER_S, ALL_CREATES_PER_S) {
            return false;
        }
        let Some(addr) = self.clients.get(&link) else {
            return true;
        };
        if self.per_ip.len() > 65_536 {
            let now = Instant::now();
            self.per_ip
                .retain(|_, b| now.duration_since(b.1) < Duration::from_secs(10));
        }
        self.per_ip
            .entry(share_of(*addr))
            .or_insert(Bucket(CREATE_BURST, Instant::now()))
            .take(CREATE_BURST, CREATES_PER_S)
    }

    fn close_link(&self, link: u64, why: &str) {
        let st = self.shared.lock();
        if let Some(l) = st.links.get(&link) {
            let _ = l.tx.try_send(crate::mesh::Cmd::Close(
                burrow_proto::mesh::packet::Reason::Protocol,
                format!("circuit cells: {why}"),
            ));
        }
    }

    fn send(&mut self, link: u64, mut cell: Cell) {
        if let Some(t) = self.tamper
            && cell.cmd() == Command::Relay
        {
            self.relayed += 1;
            let n = self.relayed;
            match t {
                Tamper::Flip(at) if n >= at => cell.body_mut()[100] ^= 1,
                Tamper::Replay(at) if n >= at => self.deliver(link, cell.clone()),
                Tamper::Reorder(at) if n >= at => match self.held_back.take() {
                    None => {
                        self.held_back = Some((link, cell));
                        return;
                    }
                    Some((l, c)) => {
                        self.deliver(link, cell);
                        self.deliver(l, c);
                        return;
                    }
                },
                _ => {}
            }
        }
        self.deliver(link, cell);
    }

    fn deliver(&self, link: u64, cell: Cell) {
        let st = self.shared.lock();
        if let Some(l) = st.links.get(&link) {
            let _ = l.cells.send(cell.into_bytes());
        }
    }

    fn drain(&mut self) {
        while let Some(out) = self.relay.poll() {
            match out {
                RelayOut::Send { link, cell } => self.send(link, cell),
                RelayOut::Extend { circuit, node } => self.extend(circuit, node),
                RelayOut::Stream { circuit, frame } => self.on_frame(circuit, &frame),
                RelayOut::Writable { circuit } => self.flush(circuit),
                RelayOut::Closed { circuit, .. } => {
                    if let Some(e) = self.exits.remove(&circuit) {
                        self.held -= e.queued_bytes;
                    }
                }
            }
        }
    }

    fn extend(&mut self, circuit: CircuitKey, node: NodeId) {
        let linked = {
            let st = self.shared.lock();
            st.by_node
                .get(&node)
                .and_then(|l| st.links.get(l).map(|i| (*l, i.dir == Direction::Outbound)))
        };
        if let Some((link, outbound)) = linked {
            return self.relay.extend_link(circuit, link, outbound, &mut OsRandom);
        }
        let target = self
            .shared
            .onion
            .get()
            .and_then(|o| lock(&o.list).clone())
            .and_then(|l| {
                l.lookup(&node)
                    .map(|e| (e.descriptor.keys, e.descriptor.claims.addrs.clone()))
            });
        let Some((keys, addrs)) = target else {
            return self.relay.extend_failed(circuit);
        };
        let (shared, tx) = (self.shared.clone(), self.tx.clone());
        tokio::spawn(async move {
            let r = crate::mesh::dial_node(&shared, node, keys.x25519, addrs, Duration::from_secs(3)).await;
            let _ = tx.send(match r {
                Some((link, outbound)) => OnionCmd::ExtendReady(circuit, link, outbound),
                None => OnionCmd::ExtendFailed(circuit),
            });
        });
    }

    fn on_frame(&mut self, circuit: CircuitKey, frame: &[u8]) {
        let events = self.events.clone();
        let e = self.exits.entry(circuit).or_insert_with(|| ExitCircuit {
            streams: Streams::new(circuit, End::Server, events),
            queued: VecDeque::new(),
            queued_bytes: 0,
        });
        let actions = match e.streams.on_frame(frame) {
            Ok(a) => a,
            Err(_) => {
                self.relay.close(circuit, Reason::Protocol);
                return;
            }
        };
        for a in actions {
            match a {
                Action::Send(f) => self.send_back(circuit, f),
                Action::Open(stream, host, port) => self.open(circuit, stream, host, port),
                Action::Opened(_) | Action::Reset(..) => {}
            }
        }
    }

    fn open(&mut self, circuit: CircuitKey, stream: u32, host: Host, port: u16) {
        let refuse = if !self.exit {
            Some("this node is not an exit")
        } else if !self.exit_ports.iter().any(|&(lo, hi)| lo <= port && port <= hi) {
            Some("the exit's policy refuses this port")
        } else {
            None
        };
        if let Some(why) = refuse {
            self.bump(|s| s.exit_refused += 1);
            let Some(e) = self.exits.get_mut(&circuit) else {
                return;
            };
            let f = e.streams.refuse(stream, ResetReason::NotAllowed, why);
            return self.send_back(circuit, f);
        }
        self.bump(|s| s.exit_streams += 1);
        let (policy, tx) = (self.shared.cfg.policy.clone(), self.tx.clone());
        tokio::spawn(async move {
            let r = crate::tunnel::exit::connect_checked(&host, port, &policy).await;
            let _ = tx.send(OnionCmd::Connected(circuit, stream, r));
        });
    }

    fn bump(&self, f: impl FnOnce(&mut OnionStats)) {
        if let Some(o) = self.shared.onion.get() {
            f(&mut lock(&o.stats));
        }
    }

    fn on_stream_event(&mut self, circuit: CircuitKey, ev: StreamEvent) {
        let Some(e) = self.exits.get_mut(&circuit) else {
            return;
        };
        for f in e.streams.on_event(ev) {
            self.send_back(circuit, f);
        }
    }

    fn send_back(&mut self, circuit: CircuitKey, frame: Vec<u8>) {
        let Some(e) = self.exits.get_mut(&circuit) else {
            return;
        };
        if e.queued.is_empty() && self.relay.send_back(circuit, &frame) {
            return;
        }
        e.queued_bytes += frame.len();
        self.held += frame.len();
        e.queued.push_back(frame);
        if self.held > EXIT_HOLD_CAP {
            let largest = self
                .exits
                .iter()
                .max_by_key(|(_, e)| e.queued_bytes)
                .map(|(k, _)| *k);
            if let Some(k) = largest {
                (self.shared.cfg.log)(format!(
                    "closing a circuit that holds the most unread exit data ({} bytes)",
                    self.exits[&k].queued_bytes
                ));
                self.relay.close(k, Reason::ResourceLimit);
            }
        }
    }

    fn flush(&mut self, circuit: CircuitKey) {
        let Some(e) = self.exits.get_mut(&circuit) else {
            return;
        };
        while let Some(f) = e.queued.front() {
            if !self.relay.send_back(circuit, f) {
                break;
            }
            let n = f.len();
            e.queued.pop_front();
            e.queued_bytes -= n;
            self.held -= n;
        }
    }

    fn publish_stats(&mut self) {
        let s = self.relay.stats();
        let circuits = self.relay.len();
        self.bump(|g| {
            g.circuits = circuits;
            g.created = s.created;
            g.refused = s.refused;
            g.tampered = s.tampered;
            g.forwarded = s.forwarded;
        });
    }
}

/// Registers with every authority and keeps the node list fresh.
async fn directory_client(shared: Arc<Shared>, cfg: OnionNodeConfig, onion_key: [u8; 32]) {
    let log = shared.cfg.log.clone();
    // The authorities' keys, checked against the pinned fingerprints.
    let mut keys: HashMap<NodeId, PublicIdentity> = HashMap::new();
    let mut wait = Duration::from_millis(50);
    // A majority of them is enough to go on (a list needs more than half
    // of all the authorities' signatures; the others count as silent).
    while keys.len() * 2 <= cfg.directories.len() {
        for d in &cfg.directories {
            if keys.contains_key(&d.id) {
                continue;
            }
            if let Ok(k) = fetch_keys(d).await {
                keys.insert(d.id, k);
            }
        }
        if keys.len() * 2 <= cfg.directories.len() {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(1));
        }
    }
    let pinned: Vec<PublicIdentity> = keys.values().copied().collect();
    let mut registered_at: Option<Instant> = None;
    let mut registered: Vec<bool> = vec![false; cfg.directories.len()];
    let mut list_wait = Duration::from_millis(100);
    let mut have_digest = None;
    loop {
        // Register (again) every 20 minutes, and with any authority that
        // has not taken the descriptor yet.
        if registered_at.is_none_or(|t| t.elapsed() > Duration::from_secs(1200))
            || registered.iter().any(|r| !r)
        {
            if registered_at.is_some_and(|t| t.elapsed() > Duration::from_secs(1200)) {
                registered.fill(false);
            }
            let mut ip = None;
            for d in &cfg.directories {
                if let Ok(a) = whoami(d).await {
                    ip = Some(a);
                    break;
                }
            }
            if let Some(ip) = ip {
                let now = unix_now();
                let claims = DescriptorClaims {
                    onion_key,
                    published: now,
                    ttl: 3 * 3600,
                    name: shared.cfg.name.clone(),
                    addrs: vec![SocketAddr::new(ip, shared.listen.port())],
                    family: Vec::new(),
                    exit_ports: if cfg.exit {
                        cfg.exit_ports.clone()
                    } else {
                        Vec::new()
                    },
                    bandwidth: 0,
                };
                match Descriptor::sign(&shared.cfg.me, &claims) {
                    Ok(raw) => {
                        for (i, d) in cfg.directories.iter().enumerate() {
                            if registered[i] {
                                continue;
                            }
                            match request(&d.addr, "POST", "/onion/register", Some(&raw)).await {
                                Ok(r) if r.status == 200 => registered[i] = true,
                                Ok(r) => log(format!(
                                    "the directory at {} refused this node: {}",
                                    d.addr,
                                    burrow_proto::transfer::escape_display(
                                        String::from_utf8_lossy(&r.body).trim()
                                    )
                                )),
                                Err(_) => {}
                            }
                        }
                        if registered.iter().all(|r| *r) && registered_at.is_none() {
                            log(format!(
                                "registered with {} directory authorities as {ip}",
                                cfg.directories.len()
                            ));
                        }
                        registered_at = Some(Instant::now());
                        if let Some(o) = shared.onion.get() {
                            lock(&o.stats).registered = registered.iter().filter(|r| **r).count();
                        }
                    }
                    Err(e) => log(format!("cannot sign this node's descriptor: {e}")),
                }
            }
        }
        // Fetch the list only when its digest changed (polled cheaply).
        let mut newer = have_digest.is_none();
        if !newer {
            for d in &cfg.directories {
                if let Some(dg) = super::directory::fetch_digest(d).await {
                    newer = Some(dg) != have_digest;
                    break;
                }
            }
        }
        if !newer {
            let o = shared.onion.get();
            let wanted = async {
                match o {
                    Some(o) => o.list_wanted.notified().await,
                    None => std::future::pending().await,
                }
            };
            let _ = tokio::time::timeout(list_wait, wanted).await;
            continue;
        }
        match fetch_list(&cfg.directories, &pinned).await {
            Ok((list, _)) => {
                let fresh_until = list.fresh_until;
                let listed = list.lookup(&shared.id).is_some();
                if have_digest != Some(list.digest) {
                    have_digest = Some(list.digest);
                    let list = Arc::new(list);
                    if let Some(o) = shared.onion.get() {
                        lock(&o.stats).list_nodes = list.entries.len();
                        *lock(&o.list) = Some(list.clone());
                        let _ = o.tx.send(OnionCmd::List(list));
                    }
                }
                // Until this node is in the list, look often; then the
                // digest every second (a new list comes whenever a node
                // joins or leaves, and clients use it at once).
                let _ = fresh_until;
                list_wait = if listed {
                    Duration::from_secs(1)
                } else {
                    Duration::from_millis(200)
                };
            }
            // No list yet (authorities starting): keep looking, at most a second apart.
            Err(_) => list_wait = (list_wait * 2).clamp(Duration::from_millis(100), Duration::from_secs(1)),
        }
        let o = shared.onion.get();
        let wanted = async {
            match o {
                Some(o) => o.list_wanted.notified().await,
                None => std::future::pending().await,
            }
        };
        let _ = tokio::time::timeout(list_wait, wanted).await;
    }
}
