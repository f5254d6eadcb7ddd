//! The circuit client: the seed's "client" (`burrow fetch`, `burrow proxy
//! --hops N`).
//!
//! It fetches the **whole** signed node list (never one node at a time:
//! that would tell the directory the path), checks that more than half of
//! the pinned authorities signed it, picks paths ([`path::choose`]), and
//! keeps a circuit ready before any request needs one, plus a spare. A
//! circuit is one task: the link to its entry under a fresh key, the
//! [`ClientCircuit`] machine, and the streams on it. A circuit that dies
//! (a hop went away, a cell was altered) is dropped, its middle and exit
//! avoided for a minute, and the spare takes over while a new one is
//! built. Circuits are used for new streams for ten minutes at most.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};

use burrow_proto::keys::{NodeId, PublicIdentity};
use burrow_proto::onion::cell::{Cell, Reason};
use burrow_proto::onion::circuit::{CircuitError, ClientCircuit, ClientEvent, HopInfo};
use burrow_proto::onion::directory::{Entry, NodeList};
use burrow_proto::onion::path::{self, PathRules};
use burrow_proto::tunnel::mux::{End, Host, ResetReason};

use super::directory::{DirectoryAddr, fetch_keys, fetch_list};
use super::link::{CellLink, Channel, ChannelCircuit};
use super::streams::{Action, CHUNK, StreamEvent, Streams, Tagged};
use crate::error::Error;
use crate::mesh::unix_now;
use crate::platform::OsRandom;
use crate::tunnel::Log;

/// How long a circuit takes new streams.
const MAX_DIRTY: Duration = Duration::from_secs(600);
/// How long the hops of a circuit that died are avoided.
const AVOID: Duration = Duration::from_secs(60);
/// How long building one circuit may take.
const BUILD_TIMEOUT: Duration = Duration::from_secs(10);

/// What a circuit client runs with.
#[derive(Clone)]
pub struct OnionClientConfig {
    /// The authorities (all of them).
    pub directories: Vec<DirectoryAddr>,
    /// Hops per circuit (3 or more).
    pub hops: usize,
    /// Lines for the user.
    pub log: Log,
    /// Say so when a circuit is built (its path and build time).
    pub announce: bool,
    /// The local address links to entry nodes leave from (`None`: the
    /// system picks).
    pub bind: Option<std::net::IpAddr>,
}

/// A ready circuit as the client holds it.
#[derive(Clone)]
struct Circuit {
    tx: mpsc::UnboundedSender<CircCmd>,
    path: Vec<NodeId>,
    exit: Entry,
    built: Instant,
    dead: Arc<std::sync::atomic::AtomicBool>,
    /// Why it ended, once it did.
    why: Arc<Mutex<Option<String>>>,
}

impl Circuit {
    /// Why the circuit ended, if it did.
    fn ended(&self) -> Option<String> {
        if !self.dead.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        Some(lock(&self.why).clone().unwrap_or_else(|| "closed".into()))
    }

    fn usable_for(&self, port: u16) -> bool {
        !self.dead.load(std::sync::atomic::Ordering::Relaxed)
            && self.built.elapsed() < MAX_DIRTY
            && self.exit.descriptor.allows_port(port)
    }
}

/// A socket a stream is tied to.
pub(crate) trait Socket: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Socket for T {}

/// Where a stream open's outcome goes: connected (its id), or why not.
type OpenReply = oneshot::Sender<Result<u32, OpenError>>;

/// Why a stream did not open.
enum OpenError {
    /// The exit or the destination refused it (or it could not be asked).
    Refused(ResetReason, String),
    /// The circuit failed under it: another circuit may do.
    Circuit(String),
}

impl From<OpenError> for (ResetReason, String) {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::Refused(r, why) => (r, why),
            OpenError::Circuit(why) => (ResetReason::Failure, why),
        }
    }
}

enum CircCmd {
    /// A new stream: `early` rides with the open, its socket comes once
    /// the exit accepted ([`CircCmd::Attach`]).
    Open {
        host: Host,
        port: u16,
        early: Vec<u8>,
        opened: OpenReply,
    },
    /// The socket of an open stream.
    Attach { stream: u32, socket: Box<dyn Socket> },
    /// An open stream that will get no socket.
    Abandon { stream: u32 },
}

/// A stream the exit accepted, waiting for its socket; dropped without
/// one, the stream is reset.
pub(crate) struct OpenStream {
    tx: mpsc::UnboundedSender<CircCmd>,
    stream: u32,
    attached: bool,
}

impl OpenStream {
    /// Ties the stream to `socket`: what the exit sends is written to it
    /// and what it reads goes to the exit, with no copy in between.
    pub(crate) fn attach(mut self, socket: impl Socket) {
        self.attached = true;
        let _ = self.tx.send(CircCmd::Attach {
            stream: self.stream,
            socket: Box::new(socket),
        });
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        if !self.attached {
            let _ = self.tx.send(CircCmd::Abandon { stream: self.stream });
        }
    }
}

struct Inner {
    cfg: OnionClientConfig,
    pinned: Vec<PublicIdentity>,
    list: Mutex<Option<Arc<NodeList>>>,
    ready: Mutex<VecDeque<Circuit>>,
    avoid: Mutex<HashMap<NodeId, Instant>>,
    guard: Mutex<Option<NodeId>>,
    building: Mutex<usize>,
    changed: tokio::sync::Notify,
    /// Build times of the circuits so far (for `--json` and benchmarks).
    builds: Mutex<Vec<Duration>>,
    /// The open link to each entry node, shared by its circuits.
    channels: tokio::sync::Mutex<HashMap<NodeId, Channel>>,
}

/// A circuit client.
#[derive(Clone)]
pub struct OnionClient {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl OnionClient {
    /// Learns the authorities' keys and the node list, and starts building
    /// circuits ahead of need.
    pub async fn start(cfg: OnionClientConfig) -> Result<Self, Error> {
        if cfg.directories.is_empty() {
            return Err(Error::Usage(
                "no directory authorities configured (--directory FINGERPRINT@HOST:PORT, or `directories` in the config file)".into(),
            ));
        }
        if !(path::MIN_HOPS..=path::MAX_HOPS).contains(&cfg.hops) {
            return Err(Error::Usage(format!(
                "--hops must be {} to {}",
                path::MIN_HOPS,
                path::MAX_HOPS
            )));
        }
        let mut pinned = Vec::new();
        let mut errors = Vec::new();
        for d in &cfg.directories {
            match fetch_keys(d).await {
                Ok(k) => pinned.push(k),
                Err(e) => errors.push(e.to_string()),
            }
        }
        // Keys of a majority are enough to accept a list; the others are
        // still counted as pinned (their absence is not a signature).
        if pinned.len() * 2 <= cfg.directories.len() {
            return Err(Error::NotFound(format!(
                "fewer than half of the {} directory authorities answered: {}",
                cfg.directories.len(),
                errors.join("; ")
            )));
        }
        let client = Self {
            inner: Arc::new(Inner {
                cfg,
                pinned,
                list: Mutex::new(None),
                ready: Mutex::new(VecDeque::new()),
                avoid: Mutex::new(HashMap::new()),
                guard: Mutex::new(None),
                building: Mutex::new(0),
                changed: tokio::sync::Notify::new(),
                builds: Mutex::new(Vec::new()),
                channels: tokio::sync::Mutex::new(HashMap::new()),
            }),
        };
        client.refresh_list().await?;
        let c = client.clone();
        tokio::spawn(async move { c.maintain().await });
        Ok(client)
    }

    async fn refresh_list(&self) -> Result<Arc<NodeList>, Error> {
        // Authorities that did not answer still count towards the
        // majority (fetch_list counts every configured one).
        let (list, _) = fetch_list(&self.inner.cfg.directories, &self.inner.pinned).await?;
        let list = Arc::new(list);
        *lock(&self.inner.list) = Some(list.clone());
        Ok(list)
    }

    /// The node list in use.
    pub fn list(&self) -> Option<Arc<NodeList>> {
        lock(&self.inner.list).clone()
    }

    /// How long the circuits built so far took.
    pub fn build_times(&self) -> Vec<Duration> {
        lock(&self.inner.builds).clone()
    }

    /// Keeps two circuits ready and the list fresh.
    async fn maintain(self) {
        loop {
            let ready = {
                let mut r = lock(&self.inner.ready);
                r.retain(|c| {
                    !c.dead.load(std::sync::atomic::Ordering::Relaxed) && c.built.elapsed() < MAX_DIRTY
                });
                r.len()
            };
            let building = *lock(&self.inner.building);
            if ready + building < 2 {
                *lock(&self.inner.building) += 1;
                let c = self.clone();
                tokio::spawn(async move {
                    let r = c.build(443).await;
                    *lock(&c.inner.building) -= 1;
                    match r {
                        Ok(circ) => lock(&c.inner.ready).push_back(circ),
                        Err(e) => {
                            if c.inner.cfg.announce {
                                (c.inner.cfg.log)(format!("building a circuit failed: {e}"));
                            }
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                    c.inner.changed.notify_waiters();
                });
            }
            let stale = self.list().is_none_or(|l| unix_now() >= l.fresh_until);
            if stale {
                let _ = self.refresh_list().await;
            }
            let _ = tokio::time::timeout(Duration::from_millis(500), self.inner.changed.notified()).await;
        }
    }

    /// A circuit whose exit allows `port`: a ready one, or one built now.
    async fn circuit(&self, port: u16) -> Result<Circuit, Error> {
        if let Some(c) = lock(&self.inner.ready)
            .iter()
            .find(|c| c.usable_for(port))
            .cloned()
        {
            return Ok(c);
        }
        // None ready (they are building, or none allows the port): build
        // one for this port, and keep it for the next request. A failed
        // build is tried again with a fresh list (a node may not have the
        // newest one yet, a hop may have just died).
        let mut last = None;
        for attempt in 0..4u32 {
            match self.build(port).await {
                Ok(c) => {
                    lock(&self.inner.ready).push_back(c.clone());
                    return Ok(c);
                }
                Err(e) => last = Some(e),
            }
            if let Some(c) = lock(&self.inner.ready)
                .iter()
                .find(|c| c.usable_for(port))
                .cloned()
            {
                return Ok(c);
            }
            tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt + 1))).await;
            let _ = self.refresh_list().await;
        }
        Err(last.unwrap_or_else(|| Error::NotFound("no circuit".into())))
    }

    /// Opens a stream to `host:port` through a circuit: `early` bytes go
    /// with the open (the first request does not wait a round trip); once
    /// the exit connected, the caller attaches its socket.
    pub(crate) async fn open_stream(
        &self,
        host: Host,
        port: u16,
        early: &[u8],
    ) -> Result<OpenStream, (ResetReason, String)> {
        // A circuit that dies under the open (a hop just went away) is
        // replaced and the stream tried once more on another.
        let mut tries = 0;
        loop {
            let c = self
                .circuit(port)
                .await
                .map_err(|e| (ResetReason::Failure, e.to_string()))?;
            match Self::open_bare(&c, host.clone(), port, early).await {
                Ok(s) => return Ok(s),
                Err(OpenError::Circuit(why)) if tries == 0 => {
                    tries += 1;
                    self.retire(&c);
                    if self.inner.cfg.announce {
                        (self.inner.cfg.log)(format!(
                            "a stream's circuit failed ({}); trying another",
                            burrow_proto::transfer::escape_display(&why)
                        ));
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Takes a circuit that failed a stream out of use.
    fn retire(&self, c: &Circuit) {
        c.dead.store(true, std::sync::atomic::Ordering::Relaxed);
        lock(&self.inner.ready).retain(|r| !r.dead.load(std::sync::atomic::Ordering::Relaxed));
        self.inner.changed.notify_waiters();
    }

    /// [`OnionClient::open_stream`] on a given circuit, tied to an
    /// in-memory pipe: its other end.
    async fn open_on(
        c: &Circuit,
        host: Host,
        port: u16,
        early: &[u8],
    ) -> Result<tokio::io::DuplexStream, OpenError> {
        let stream = Self::open_bare(c, host, port, early).await?;
        let (mine, theirs) = tokio::io::duplex(256 * 1024);
        stream.attach(theirs);
        Ok(mine)
    }

    /// [`OnionClient::open_stream`] on a given circuit: asks for the
    /// stream and waits for the exit's answer.
    async fn open_bare(c: &Circuit, host: Host, port: u16, early: &[u8]) -> Result<OpenStream, OpenError> {
        let (tx, rx) = oneshot::channel();
        c.tx.send(CircCmd::Open {
            host,
            port,
            early: early.to_vec(),
            opened: tx,
        })
        .map_err(|_| OpenError::Circuit("the circuit closed".to_owned()))?;
        match rx.await {
            Ok(r) => r.map(|stream| OpenStream {
                tx: c.tx.clone(),
                stream,
                attached: false,
            }),
            Err(_) => Err(OpenError::Circuit(
                "the circuit closed before the exit answered".to_owned(),
            )),
        }
    }

    /// A new circuit's place on the link to `entry`: on the open link, or
    /// on a new one. Links to other entries that carry no circuit are
    /// closed.
    async fn channel(
        &self,
        entry: NodeId,
        addr: std::net::SocketAddr,
        keys: &PublicIdentity,
    ) -> Result<ChannelCircuit, Error> {
        let mut channels = self.inner.channels.lock().await;
        channels.retain(|id, c| c.alive() && (*id == entry || c.circuits() > 0));
        if let Some(c) = channels.get(&entry).and_then(Channel::circuit) {
            return Ok(c);
        }
        let ch = Channel::new(super::link::connect(addr, keys, self.inner.cfg.bind).await?);
        let c = ch
            .circuit()
            .ok_or_else(|| Error::PeerClosed(format!("{addr} closed the link at once")))?;
        channels.insert(entry, ch);
        Ok(c)
    }

    /// Builds one more circuit to an exit allowing `port` and keeps it
    /// ready (beyond the two kept ahead of need), for a caller that knows
    /// a burst of streams is coming: the circuit's path.
    pub async fn prebuild(&self, port: u16) -> Result<Vec<NodeId>, Error> {
        let c = self.build(port).await?;
        let path = c.path.clone();
        lock(&self.inner.ready).push_back(c);
        Ok(path)
    }

    /// Circuits built and not yet dead or retired.
    pub fn ready(&self) -> usize {
        let r = lock(&self.inner.ready);
        r.iter()
            .filter(|c| !c.dead.load(std::sync::atomic::Ordering::Relaxed))
            .count()
    }

    /// Builds a circuit to an exit allowing `port`.
    async fn build(&self, port: u16) -> Result<Circuit, Error> {
        let list = match self.list() {
            Some(l) => l,
            None => self.refresh_list().await?,
        };
        let started = Instant::now();
        let mut rules = PathRules::new(self.inner.cfg.hops, port);
        {
            let mut avoid = lock(&self.inner.avoid);
            avoid.retain(|_, at| at.elapsed() < AVOID);
            rules.exclude = avoid.keys().copied().collect();
        }
        let guard = *lock(&self.inner.guard);
        rules.entry = guard.filter(|g| !rules.exclude.contains(g) && list.lookup(g).is_some());
        let path = {
            let mut rng = OsRandom;
            let chosen = path::choose(&list, &rules, unix_now(), &mut rng).or_else(|_| {
                rules.entry = None;
                path::choose(&list, &rules, unix_now(), &mut rng)
            });
            chosen
                .map_err(|e| Error::NotFound(format!("no path: {e}")))?
                .into_iter()
                .cloned()
                .collect::<Vec<Entry>>()
        };
        let entry = &path[0];
        *lock(&self.inner.guard) = Some(entry.id());
        let addr = *entry
            .descriptor
            .claims
            .addrs
            .first()
            .ok_or_else(|| Error::NotFound("the entry node has no address".into()))?;
        let go = async {
            let on_link = self.channel(entry.id(), addr, &entry.descriptor.keys).await?;
            run_circuit(on_link, &path, list.digest, self.inner.cfg.log.clone()).await
        };
        let r = tokio::time::timeout(BUILD_TIMEOUT, go)
            .await
            .map_err(|_| Error::Timeout(format!("building a {}-hop circuit took over 10 s", path.len())))?;
        match r {
            Ok((tx, dead, why, done)) => {
                let took = started.elapsed();
                lock(&self.inner.builds).push(took);
                if self.inner.cfg.announce {
                    let hops: Vec<String> = path.iter().map(|e| e.id().to_string()).collect();
                    (self.inner.cfg.log)(format!(
                        "circuit ready: {} ({:.1} ms)",
                        hops.join(" > "),
                        took.as_secs_f64() * 1000.0
                    ));
                }
                let exit = path[path.len() - 1].clone();
                let c = Circuit {
                    tx,
                    path: path.iter().map(Entry::id).collect(),
                    exit,
                    built: Instant::now(),
                    dead: dead.clone(),
                    why,
                };
                // When it dies: avoid its middle and exit for a while, and
                // build a replacement at once.
                let me = self.clone();
                let hops = c.path.clone();
                tokio::spawn(async move {
                    let _ = done.await;
                    {
                        let mut avoid = lock(&me.inner.avoid);
                        for h in &hops[1..] {
                            avoid.insert(*h, Instant::now());
                        }
                    }
                    lock(&me.inner.ready).retain(|c| !c.dead.load(std::sync::atomic::Ordering::Relaxed));
                    me.inner.changed.notify_waiters();
                });
                Ok(c)
            }
            Err(BuildFailed(e, reason)) => {
                // A hop that could not be reached is avoided for a while;
                // a refused handshake (a node behind on the list) is not.
                if reason == Some(Reason::HopGone)
                    && let Some(middle) = path.get(1)
                {
                    lock(&self.inner.avoid).insert(middle.id(), Instant::now());
                }
                Err(e)
            }
        }
    }
}

/// Why a build failed, with the reason of the DESTROY that ended it, if
/// a hop sent one.
struct BuildFailed(Error, Option<Reason>);

impl From<Error> for BuildFailed {
    fn from(e: Error) -> Self {
        Self(e, None)
    }
}

fn build_failed(e: CircuitError) -> BuildFailed {
    let reason = match &e {
        CircuitError::Destroyed(r) => Some(*r),
        _ => None,
    };
    BuildFailed(circuit_error(e), reason)
}

fn circuit_error(e: CircuitError) -> Error {
    match e {
        CircuitError::Tampered => Error::Integrity(
            "a cell was altered, replayed or reordered on the way; the circuit was closed".into(),
        ),
        CircuitError::Destroyed(r) => Error::PeerClosed(format!("the circuit was closed: {r}")),
        other => Error::Protocol(other.to_string()),
    }
}

/// A served circuit: its command sender, the flag set when it dies, and why.
type Served = (
    mpsc::UnboundedSender<CircCmd>,
    Arc<std::sync::atomic::AtomicBool>,
    Arc<Mutex<Option<String>>>,
    oneshot::Receiver<()>,
);

/// Builds the circuit over `link` through `path`, then serves it in a
/// task: its command sender, and a flag set when it dies.
async fn run_circuit(
    on_link: ChannelCircuit,
    path: &[Entry],
    digest: [u8; 32],
    log: Log,
) -> Result<Served, BuildFailed> {
    let hop = |e: &Entry| HopInfo {
        id: e.id(),
        onion_key: e.descriptor.claims.onion_key,
    };
    let ChannelCircuit {
        circ,
        mut link,
        registered,
    } = on_link;
    let (mut c, create) = ClientCircuit::start(circ, &hop(&path[0]), digest, unix_now(), &mut OsRandom)
        .map_err(build_failed)?;
    send(&link, create).await?;
    loop {
        let bytes = link
            .from_node
            .recv()
            .await
            .ok_or_else(|| Error::PeerClosed("the entry node closed the link".into()))?;
        let mut cell = Cell::decode(bytes).map_err(|e| Error::Protocol(e.to_string()))?;
        match c.on_cell(&mut cell, unix_now()).map_err(build_failed)? {
            ClientEvent::Extended(n) if n == path.len() => break,
            ClientEvent::Extended(n) => {
                let next = c
                    .extend(&hop(&path[n]), unix_now(), &mut OsRandom)
                    .map_err(build_failed)?;
                send(&link, next).await?;
            }
            _ => {
                return Err(Error::Protocol("a cell out of place while building the circuit".into()).into());
            }
        }
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let dead = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let why = Arc::new(Mutex::new(None));
    let (d, w) = (dead.clone(), why.clone());
    let (done_tx, done_rx) = oneshot::channel();
    tokio::spawn(async move {
        // The circuit's id stays taken on the link until it is done.
        let _registered = registered;
        if let Err(e) = serve(&mut link, &mut c, rx).await {
            log(format!("circuit {:?} closed: {e}", c.path()));
            *lock(&w) = Some(e.to_string());
        }
        d.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = done_tx.send(());
    });
    Ok((tx, dead, why, done_rx))
}

async fn send(link: &CellLink, cell: Cell) -> Result<(), Error> {
    link.to_node
        .send(cell.into_bytes())
        .await
        .map_err(|_| Error::PeerClosed("the link to the entry node closed".into()))
}

/// Serves a built circuit: streams opened on it, cells both ways. Once
/// nobody can open streams on it any more (the client retired it: too old,
/// or it failed a stream), it lives on until its last stream ends, then
/// is destroyed.
async fn serve(
    link: &mut CellLink,
    c: &mut ClientCircuit,
    mut cmds: mpsc::UnboundedReceiver<CircCmd>,
) -> Result<(), Error> {
    let (events, mut events_rx) = mpsc::unbounded_channel::<Tagged<u32>>();
    let mut streams: Streams<u32> = Streams::new(0, End::Client, events);
    let mut pending: HashMap<u32, OpenReply> = HashMap::new();
    // Frames waiting for the circuit's window.
    let mut queued: VecDeque<Vec<u8>> = VecDeque::new();
    let mut retired = false;
    loop {
        if retired && streams.mux.is_empty() && queued.is_empty() {
            let _ = send(link, c.destroy()).await;
            return Ok(());
        }
        let mut out: Vec<Vec<u8>> = Vec::new();
        tokio::select! {
            bytes = link.from_node.recv() => {
                let bytes = bytes.ok_or_else(|| Error::PeerClosed("the entry node closed the link".into()))?;
                let mut cell = Cell::decode(bytes).map_err(|e| Error::Protocol(e.to_string()))?;
                // The frame is read where it was decrypted, in the cell.
                let frame = match c.on_cell(&mut cell, unix_now()) {
                    Ok(ClientEvent::Data(f)) => Some(f),
                    Ok(_) => None,
                    Err(e) => {
                        for (_, p) in pending.drain() {
                            let _ = p.send(Err(OpenError::Circuit(e.to_string())));
                        }
                        return Err(circuit_error(e));
                    }
                };
                if let Some(f) = frame {
                    let actions = streams.on_frame(f).map_err(Error::Protocol)?;
                    for a in actions {
                        match a {
                            Action::Send(f) => out.push(f),
                            Action::Opened(s) => {
                                if let Some(p) = pending.remove(&s) {
                                    let _ = p.send(Ok(s));
                                }
                            }
                            Action::Reset(s, reason, why) => {
                                streams.detach(s);
                                if let Some(p) = pending.remove(&s) {
                                    let _ = p.send(Err(OpenError::Refused(reason, why)));
                                }
                            }
                            Action::Open(s, ..) => out.push(streams.refuse(s, ResetReason::NotAllowed, "clients take no streams")),
                        }
                    }
                }
                while let Some(s) = c.take_sendme() {
                    send(link, s).await?;
                }
            }
            cmd = cmds.recv(), if !retired => match cmd {
                Some(CircCmd::Open { host, port, early, opened }) => match streams.mux.open(host, port) {
                    Ok((id, frame)) => {
                        out.push(frame);
                        // The first bytes ride with the open; the socket
                        // comes once the exit accepted.
                        match early_frames(&mut streams, id, &early) {
                            Ok(frames) => {
                                out.extend(frames);
                                pending.insert(id, opened);
                            }
                            Err(why) => {
                                out.push(streams.refuse(id, ResetReason::Failure, &why));
                                let _ = opened.send(Err(OpenError::Refused(ResetReason::Failure, why)));
                            }
                        }
                    }
                    Err(e) => {
                        let _ = opened.send(Err(OpenError::Refused(ResetReason::Failure, e.to_string())));
                    }
                },
                Some(CircCmd::Attach { stream, socket }) => {
                    // (A stream reset meanwhile: its socket just closes.)
                    if streams.mux.contains(stream) {
                        streams.attach(stream, socket);
                    }
                }
                Some(CircCmd::Abandon { stream }) => {
                    if streams.mux.contains(stream) {
                        out.push(streams.refuse(stream, ResetReason::Failure, "the application went away"));
                    }
                }
                None => retired = true,
            },
            ev = events_rx.recv() => {
                if let Some((_, ev)) = ev {
                    if let StreamEvent::Failed(s, _) = &ev {
                        pending.remove(s);
                    }
                    out.extend(streams.on_event(ev));
                }
            }
        }
        queued.extend(out);
        while let Some(f) = queued.front() {
            match c.send(f) {
                Ok(cell) => {
                    queued.pop_front();
                    send(link, cell).await?;
                }
                Err(CircuitError::Window) => break,
                Err(e) => return Err(circuit_error(e)),
            }
        }
    }
}

/// The data frames of the bytes a stream carries before its socket is
/// tied (within its first window), or why not.
fn early_frames(streams: &mut Streams<u32>, id: u32, early: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    early
        .chunks(CHUNK)
        .map(|chunk| {
            streams
                .mux
                .data(id, chunk)
                .map_err(|e| format!("too many bytes before the stream opened: {e}"))
        })
        .collect()
}

/// The address a SOCKS client asked for, as a stream host.
pub(crate) fn host_of(name: &str) -> Host {
    match name.parse::<std::net::IpAddr>() {
        Ok(ip) => Host::Ip(ip),
        Err(_) => Host::Name(name.to_owned()),
    }
}

/// What `burrow fetch` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FetchReport {
    /// The HTTP status.
    pub status: u16,
    /// Body bytes written.
    pub bytes: u64,
    /// From the request to the first byte of the answer.
    pub first_byte_ms: f64,
    /// The whole fetch, circuit ready to last byte.
    pub total_ms: f64,
    /// The circuit's path (node fingerprints, entry first).
    pub path: Vec<String>,
    /// How long building the first circuit of this client took.
    pub circuit_build_ms: Option<f64>,
}

/// A URL `burrow fetch` takes: `http://HOST[:PORT][/PATH]`.
pub fn parse_http_url(url: &str) -> Result<(String, u16, String), Error> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        Error::Usage(format!(
            "{url:?}: burrow fetch takes http:// URLs (for https, use `burrow proxy --hops 3` with curl)"
        ))
    })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = if let Some(h) = authority.strip_prefix('[') {
        let (h, p) = h
            .split_once(']')
            .ok_or_else(|| Error::Usage(format!("{url:?}: unclosed [")))?;
        (h.to_owned(), p.strip_prefix(':').map(str::parse).transpose())
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p.parse()).transpose()),
            None => (authority.to_owned(), Ok(None)),
        }
    };
    let port = port
        .map_err(|_| Error::Usage(format!("{url:?}: the port is not a number")))?
        .unwrap_or(80);
    if host.is_empty()
        || !host.bytes().all(|b| b.is_ascii_graphic())
        || path.bytes().any(|b| !b.is_ascii_graphic())
    {
        return Err(Error::Usage(format!("{url:?} is not a URL burrow can send")));
    }
    Ok((host, port, path.to_owned()))
}

/// The seed's "get request to a website": `GET url` through a circuit,
/// the body into `out`; `progress(bytes, total)` as it arrives.
pub async fn fetch(
    client: &OnionClient,
    url: &str,
    out: &mut (dyn tokio::io::AsyncWrite + Send + Unpin),
    progress: &mut (dyn FnMut(u64, Option<u64>) + Send),
) -> Result<FetchReport, Error> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (host, port, path) = parse_http_url(url)?;
    let shown_host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.clone()
    };
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {shown_host}{}\r\nUser-Agent: burrow/{}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        if port == 80 {
            String::new()
        } else {
            format!(":{port}")
        },
        env!("CARGO_PKG_VERSION")
    );
    let mut tries = 0;
    let (circuit, started, mut s) = loop {
        let circuit = client.circuit(port).await?;
        let started = Instant::now();
        match OnionClient::open_on(&circuit, host_of(&host), port, request.as_bytes()).await {
            Ok(s) => break (circuit, started, s),
            // The circuit died under the open: once more on another.
            Err(OpenError::Circuit(_)) if tries == 0 => {
                tries += 1;
                client.retire(&circuit);
            }
            Err(OpenError::Circuit(why)) => {
                return Err(Error::PeerClosed(format!(
                    "the circuit broke before the exit answered: {}",
                    burrow_proto::transfer::escape_display(&why)
                )));
            }
            Err(OpenError::Refused(_, why)) => {
                return Err(Error::PeerClosed(format!(
                    "the exit could not reach {shown_host}:{port}: {}",
                    burrow_proto::transfer::escape_display(&why)
                )));
            }
        }
    };
    let path_ids: Vec<String> = circuit.path.iter().map(|n| n.to_string()).collect();
    let mut head = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut first_byte = None;
    // Silence this long means the circuit or the server stalled.
    const STALL: Duration = Duration::from_secs(30);
    let stalled = || Error::Timeout(format!("nothing from {shown_host} for 30 s"));
    let (status, total, mut got) = loop {
        let n = tokio::time::timeout(STALL, s.read(&mut buf))
            .await
            .map_err(|_| stalled())?
            .map_err(Error::ConnectionLost)?;
        if n == 0 {
            if let Some(why) = circuit.ended() {
                return Err(Error::PeerClosed(format!(
                    "the circuit closed before an HTTP answer: {why}"
                )));
            }
            return Err(Error::PeerClosed(format!(
                "{shown_host} closed the connection before an HTTP answer"
            )));
        }
        first_byte.get_or_insert_with(|| started.elapsed());
        head.extend_from_slice(&buf[..n]);
        if head.len() > 64 * 1024 {
            return Err(Error::Protocol(format!(
                "{shown_host} sent an HTTP head over 64 KiB"
            )));
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Response::new(&mut headers);
        match r.parse(&head) {
            Ok(httparse::Status::Complete(used)) => {
                let status = r.code.unwrap_or(0);
                let total = r
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<u64>().ok());
                let body = head[used..].to_vec();
                out.write_all(&body)
                    .await
                    .map_err(|e| Error::io("the output", e))?;
                break (status, total, body.len() as u64);
            }
            Ok(httparse::Status::Partial) => {}
            Err(_) => return Err(Error::Protocol(format!("{shown_host} did not answer with HTTP"))),
        }
    };
    progress(got, total);
    loop {
        if total.is_some_and(|t| got >= t) {
            break;
        }
        let n = tokio::time::timeout(STALL, s.read(&mut buf))
            .await
            .map_err(|_| stalled())?
            .map_err(Error::ConnectionLost)?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])
            .await
            .map_err(|e| Error::io("the output", e))?;
        got += n as u64;
        progress(got, total);
    }
    out.flush().await.map_err(|e| Error::io("the output", e))?;
    if let Some(t) = total
        && got < t
    {
        if let Some(why) = circuit.ended() {
            return Err(Error::PeerClosed(format!(
                "the circuit closed after {got} of {t} bytes: {why}"
            )));
        }
        return Err(Error::PeerClosed(format!(
            "{shown_host} sent {got} of {t} bytes, then closed"
        )));
    }
    Ok(FetchReport {
        status,
        bytes: got,
        first_byte_ms: first_byte.unwrap_or_default().as_secs_f64() * 1000.0,
        total_ms: started.elapsed().as_secs_f64() * 1000.0,
        path: path_ids,
        circuit_build_ms: client.build_times().first().map(|d| d.as_secs_f64() * 1000.0),
    })
}

/// `burrow proxy --hops N`: SOCKS5 (names resolved by the exit) and HTTP
/// CONNECT on `listener`, every stream through a circuit.
pub async fn serve_proxy(client: OnionClient, listener: tokio::net::TcpListener) {
    while let Ok((s, _)) = listener.accept().await {
        let c = client.clone();
        tokio::spawn(async move { proxy_client(c, s).await });
    }
}

async fn proxy_client(client: OnionClient, mut s: tokio::net::TcpStream) {
    use burrow_proto::tunnel::socks;
    use tokio::io::AsyncWriteExt;
    let _ = s.set_nodelay(true);
    let Some((target, is_socks, buf)) = crate::tunnel::proxy::read_target(&mut s).await else {
        return;
    };
    match client.open_stream(target.host, target.port, &buf).await {
        Ok(stream) => {
            let ok = if is_socks {
                socks::reply_for(None).to_vec()
            } else {
                socks::http_reply(None)
            };
            // The reply goes out before the stream's first bytes can (they
            // wait for the socket); a client gone meanwhile fails the
            // stream's reader, which resets it.
            let _ = s.write_all(&ok).await;
            stream.attach(s);
        }
        Err((reason, msg)) => {
            if client.inner.cfg.announce {
                (client.inner.cfg.log)(format!(
                    "a stream failed: {}",
                    burrow_proto::transfer::escape_display(&msg)
                ));
            }
            let fail = if is_socks {
                socks::reply_for(Some(reason)).to_vec()
            } else {
                socks::http_reply(Some((reason, &msg)))
            };
            let _ = s.write_all(&fail).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_burrow_fetch_takes() {
        assert_eq!(
            parse_http_url("http://example.com").unwrap(),
            ("example.com".into(), 80, "/".into())
        );
        assert_eq!(
            parse_http_url("http://10.0.0.5:8080/a/b?c=d").unwrap(),
            ("10.0.0.5".into(), 8080, "/a/b?c=d".into())
        );
        assert_eq!(
            parse_http_url("http://[fd00::1]:81/x").unwrap(),
            ("fd00::1".into(), 81, "/x".into())
        );
        assert!(parse_http_url("https://example.com/").is_err());
        assert!(parse_http_url("http://exa mple.com/").is_err());
        assert!(parse_http_url("http://host:port/").is_err());
        assert!(parse_http_url("http:///").is_err());
    }
}
