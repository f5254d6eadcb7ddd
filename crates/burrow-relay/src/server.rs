//! The relay's accept loop: admission, protocol sniffing (the first four
//! bytes, [`burrow_proto::wire::registry`]), the greeting deadline, and
//! dispatch to the channel API (`channel`), stapling (`staple`), the lobby
//! and the connector. The state they share lives here.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, oneshot};
use tokio::task::JoinHandle;

use burrow_proto::channel::api::Role;
use burrow_proto::channel::table::{ChannelTable, TableConfig};
use burrow_proto::lobby::relay::LobbyConfig;
use burrow_proto::staple::StapleReply;
use burrow_proto::wire::registry::{self, Protocol};

use crate::admission::{Admission, Evicted, Phase, Refused, Ticket};
use crate::channel::{handle_http, http};
use crate::metrics::Metrics;
use crate::staple::{handle_identity, handle_staple, handle_token, pipe};

/// Relay settings. [`Default`] gives the production values.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Channel table limits (idle expiry, per-IP cap).
    pub table: TableConfig,
    /// Deadline for a connection to say what it is and send its request or hello.
    pub handshake_timeout: Duration,
    /// How long a stapling connection waits for its partner.
    pub staple_timeout: Duration,
    /// Most connections open at once; more are refused with a reason.
    pub max_connections: usize,
    /// Most connections open at once from one address (an IPv4 address or
    /// an IPv6 /64; see [`share_key`](burrow_proto::channel::table::share_key)); 0 = a sixteenth of
    /// `max_connections` (at least 8).
    pub max_per_ip: usize,
    /// Copy buffer per direction of a stapled pair.
    pub pipe_buffer: usize,
    /// Lobby (seed 003) limits, `lobby_timeout` among them.
    pub lobby: LobbyConfig,
    /// The relay's identity key (seed 000's connector needs it; without one,
    /// connector connections are refused).
    pub key: Option<Arc<crate::connector::RelayKey>>,
}

/// Descriptors kept back for everything but connections (listener,
/// key file, logging, the runtime).
const SPARE_FDS: u64 = 256;

impl RelayConfig {
    /// Raises this process's open-file limit as far as the hard limit
    /// allows, and lowers `max_connections` if even that cannot hold every
    /// connection with its stapled partner (two descriptors a slot; the
    /// splice pipes fall back to copying when none are left). Returns the
    /// limit and whether `max_connections` was lowered.
    pub fn fit_fd_limit(&mut self) -> (u64, bool) {
        use rustix::process::{Resource, getrlimit, setrlimit};
        let mut lim = getrlimit(Resource::Nofile);
        if lim.current < lim.maximum {
            lim.current = lim.maximum;
            if setrlimit(Resource::Nofile, lim).is_err() {
                lim = getrlimit(Resource::Nofile);
            }
        }
        let have = lim.current.unwrap_or(u64::MAX);
        let fits = usize::try_from(have.saturating_sub(SPARE_FDS) / 2)
            .unwrap_or(usize::MAX)
            .max(1);
        let lowered = self.max_connections > fits;
        if lowered {
            self.max_connections = fits;
        }
        (have, lowered)
    }

    /// The per-address share in effect.
    pub fn per_ip(&self) -> usize {
        match self.max_per_ip {
            0 => (self.max_connections / 16).max(8),
            n => n,
        }
    }
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 9009)),
            table: TableConfig::default(),
            handshake_timeout: Duration::from_secs(10),
            staple_timeout: Duration::from_secs(120),
            max_connections: 4096,
            max_per_ip: 0,
            pipe_buffer: 256 * 1024,
            lobby: LobbyConfig::default(),
            key: None,
        }
    }
}

pub(crate) struct Shared {
    pub(crate) cfg: RelayConfig,
    pub(crate) table: Mutex<ChannelTable>,
    pub(crate) notify: Mutex<HashMap<String, Arc<Notify>>>,
    /// Stapling connections waiting for their partner, by what they meet under.
    pub(crate) pending: Mutex<HashMap<MeetKey, Pending>>,
    /// Seed 003's lobby.
    pub(crate) lobby: crate::lobby::Hub,
    /// Seed 000's connector.
    pub(crate) connector: crate::connector::Connector,
    /// Ids for pending entries, so a replaced waiter never removes its successor.
    pub(crate) next_id: AtomicU64,
    pub(crate) metrics: Metrics,
}

pub(crate) struct Pending {
    pub(crate) role: Role,
    pub(crate) id: u64,
    pub(crate) tx: oneshot::Sender<TcpStream>,
}

/// What two stapling connections meet under: one key space per kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum MeetKey {
    /// A channel of the table (seed 001).
    Channel(String),
    /// An accepted lobby pair (seed 003's second connection).
    Lobby(String),
    /// A reconnect token derived from a session key.
    Token([u8; 32]),
}

impl MeetKey {
    /// The channel of the table this meeting is for, if any.
    pub(crate) fn channel(&self) -> Option<&str> {
        match self {
            MeetKey::Channel(c) => Some(c),
            _ => None,
        }
    }
}

/// What a second connection of the same role under one key does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SameRole {
    /// It is refused: the role is taken (a channel's peers are fixed).
    Refuse,
    /// It replaces the waiting one (a reconnecting peer's newest attempt).
    Replace,
}

/// The outcome of [`Shared::meet`].
pub(crate) enum Meet {
    /// The partner was waiting: hand it this connection.
    Pair(oneshot::Sender<TcpStream>),
    /// Wait under the key (the waiter's id, and where the partner arrives).
    Wait(u64, oneshot::Receiver<TcpStream>),
    /// The role is taken.
    Duplicate,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock would be a bug; keep serving with the data as it is.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub(crate) fn notifier(&self, channel: &str) -> Arc<Notify> {
        lock(&self.notify).entry(channel.to_owned()).or_default().clone()
    }

    pub(crate) fn wake(&self, channel: &str) {
        if let Some(n) = lock(&self.notify).get(channel) {
            n.notify_waiters();
        }
    }

    /// Pairs a stapling connection with the partner waiting under `key`
    /// (the other role), or registers it to wait: the one rule for every
    /// kind of stapling.
    pub(crate) fn meet(&self, key: &MeetKey, role: Role, same: SameRole) -> Meet {
        let mut pending = lock(&self.pending);
        match pending.remove(key) {
            Some(w) if w.role != role => return Meet::Pair(w.tx),
            Some(w) if same == SameRole::Refuse => {
                pending.insert(key.clone(), w);
                return Meet::Duplicate;
            }
            // Replaced: the old waiter's receiver ends, its wait expires.
            _ => {}
        }
        let (tx, rx) = oneshot::channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        pending.insert(key.clone(), Pending { role, id, tx });
        Meet::Wait(id, rx)
    }

    /// Forgets the waiting connection `id` (and only it).
    pub(crate) fn forget(&self, key: &MeetKey, id: u64) {
        let mut p = lock(&self.pending);
        if p.get(key).is_some_and(|w| w.id == id) {
            p.remove(key);
        }
    }

    pub(crate) fn expire(&self) {
        let gone = lock(&self.table).expire(Instant::now());
        if !gone.is_empty() {
            let mut n = lock(&self.notify);
            let mut p = lock(&self.pending);
            for ch in gone {
                if let Some(w) = n.remove(&ch) {
                    w.notify_waiters();
                }
                p.remove(&MeetKey::Channel(ch));
            }
        }
    }
}

/// A bound relay, ready to serve.
pub struct Relay {
    listener: TcpListener,
    shared: Arc<Shared>,
}

/// A relay running in the background; dropping it stops the relay.
#[derive(Debug)]
pub struct RelayHandle {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl RelayHandle {
    /// The address the relay listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Relay {
    /// Binds the listening socket.
    pub async fn bind(cfg: RelayConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind(cfg.listen).await?;
        Ok(Self {
            listener,
            shared: Arc::new(Shared {
                table: Mutex::new(ChannelTable::new(cfg.table.clone())),
                lobby: crate::lobby::Hub::new(cfg.lobby.clone()),
                connector: crate::connector::Connector::new(cfg.key.clone()),
                cfg,
                notify: Mutex::new(HashMap::new()),
                pending: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(0),
                metrics: Metrics::default(),
            }),
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves in a background task until the handle is dropped.
    pub fn spawn(self) -> std::io::Result<RelayHandle> {
        let addr = self.local_addr()?;
        let task = tokio::spawn(self.serve());
        Ok(RelayHandle { addr, task })
    }

    /// Serves forever.
    pub async fn serve(self) {
        let shared = self.shared;
        let admission = Admission::new(shared.cfg.max_connections, shared.cfg.per_ip());
        let refusers = Arc::new(Semaphore::new(REFUSERS));
        let sweeper = {
            let shared = shared.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    shared.expire();
                    shared.lobby.tick();
                }
            })
        };
        let _sweeper = AbortOnDrop(sweeper);
        let mut backoff = Duration::from_millis(5);
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(c) => {
                    backoff = Duration::from_millis(5);
                    c
                }
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            shared.metrics.connections.fetch_add(1, Ordering::Relaxed);
            let (ticket, made_room) = match admission.admit(peer.ip(), Instant::now()) {
                Ok(t) => t,
                Err(Refused::PerAddress) => {
                    shared.metrics.error("per_ip");
                    let why = "too many connections from your address; try again later";
                    refuse_early(&refusers, stream, why);
                    continue;
                }
                Err(Refused::Capacity) => {
                    shared.metrics.error("capacity");
                    refuse_early(&refusers, stream, "the relay is at capacity; try again later");
                    continue;
                }
            };
            match made_room {
                Some(Evicted::Biggest) => shared.metrics.error("evicted_biggest"),
                Some(Evicted::Oldest) => shared.metrics.error("evicted_oldest"),
                None => {}
            }
            let shared = shared.clone();
            tokio::spawn(async move {
                handle_connection(shared, stream, peer, &ticket).await;
            });
        }
    }
}

/// Connections being refused at once, at most; beyond, they are closed
/// without a word (answering costs a task and a read each).
const REFUSERS: usize = 64;

/// Refuses a connection that got no slot, with `reason` in its own protocol
/// (an HTTP 503 for the API, a refusal reply for stapling and reconnect
/// hellos), so the client can tell the user why instead of "not an HTTP
/// answer". Bounded: [`REFUSERS`] at once, a second each at most.
fn refuse_early(refusers: &Arc<Semaphore>, mut stream: TcpStream, reason: &'static str) {
    let Ok(permit) = refusers.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let _permit = permit;
        let answer = async {
            let mut head = [0u8; 4];
            stream.read_exact(&mut head).await.ok()?;
            match registry::classify(&head) {
                Some(Protocol::Http) => {
                    let _ = http::write_error(&mut stream, 503, "capacity", reason).await;
                }
                Some(Protocol::Staple | Protocol::Token | Protocol::Identity) => {
                    let _ = stream
                        .write_all(&StapleReply::Refused(reason.to_owned()).encode())
                        .await;
                }
                // The lobby and connector protocols have no such answer: a close.
                _ => {}
            }
            let _ = stream.shutdown().await;
            Some(())
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), answer).await;
    });
}

struct AbortOnDrop(JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Why a connection's greeting (its first request or hello) did not finish.
pub(crate) enum Cut {
    /// Not complete within the handshake timeout, counted from the accept.
    Timeout,
    /// It had to make room for a newcomer (see [`crate::admission`]).
    Evicted,
}

/// Runs `read`, a part of the greeting of the connection holding `ticket`:
/// one deadline for the whole greeting (a slow sender cannot stretch it by
/// trickling bytes), and the greeting ends early if the relay needs its slot.
pub(crate) async fn greet<T>(
    shared: &Shared,
    ticket: &Ticket,
    read: impl Future<Output = T>,
) -> Result<T, Cut> {
    let deadline = tokio::time::Instant::from_std(ticket.accepted() + shared.cfg.handshake_timeout);
    tokio::select! {
        r = tokio::time::timeout_at(deadline, read) => r.map_err(|_| {
            shared.metrics.error("timeout");
            Cut::Timeout
        }),
        () = ticket.evicted() => Err(Cut::Evicted),
    }
}

async fn handle_connection(shared: Arc<Shared>, mut stream: TcpStream, peer: SocketAddr, ticket: &Ticket) {
    let ip = peer.ip().to_canonical();
    let _ = stream.set_nodelay(true);
    let mut head = [0u8; 4];
    match greet(&shared, ticket, stream.read_exact(&mut head)).await {
        Ok(Ok(_)) => {}
        Ok(Err(_)) => {
            shared.metrics.error("eof");
            return;
        }
        Err(_) => return,
    }
    match registry::classify(&head) {
        Some(Protocol::Http) => handle_http(&shared, stream, ip, head.to_vec(), ticket).await,
        Some(Protocol::Staple) => handle_staple(shared, stream, ip, ticket).await,
        Some(Protocol::Token) => handle_token(shared, stream, ticket).await,
        Some(Protocol::Identity) => handle_identity(shared, stream, ip, ticket).await,
        Some(Protocol::Connector) => {
            let limit = shared.cfg.handshake_timeout;
            if let Some((a, b)) = shared.connector.serve(stream, limit, ticket).await {
                shared.metrics.staples_total.fetch_add(1, Ordering::Relaxed);
                shared.metrics.staples_active.fetch_add(1, Ordering::Relaxed);
                pipe(&shared, a, b).await;
                shared.metrics.staples_active.fetch_sub(1, Ordering::Relaxed);
            }
        }
        Some(Protocol::Lobby) => {
            shared.metrics.lobby_total.fetch_add(1, Ordering::Relaxed);
            let addr = SocketAddr::new(ip, peer.port());
            ticket.set(Phase::Waiting);
            crate::lobby::serve(&shared.lobby, &shared.metrics, stream, addr, head, ticket).await;
        }
        None => unknown_protocol(&shared, stream).await,
    }
}

async fn unknown_protocol(shared: &Shared, mut stream: TcpStream) {
    shared.metrics.error("unknown_protocol");
    // Say why in the one format a confused client is most likely to read.
    let _ = http::write_error(
        &mut stream,
        400,
        "unknown_protocol",
        "not a burrow relay request (expected HTTP or a stapling hello)",
    )
    .await;
    linger(&mut stream).await;
}

/// The relay's randomness (channel names, uuids, session ids, handshakes).
pub(crate) fn fill(b: &mut [u8]) {
    // The OS RNG does not fail on supported platforms; if it ever did, refuse
    // to continue rather than hand out predictable handles.
    if getrandom::fill(b).is_err() {
        std::process::abort();
    }
}

/// Closes after an error answer without losing it: shut down our side, then
/// discard what the peer still sends for a moment, so that closing with
/// unread bytes does not reset the connection before the peer read the reason.
pub(crate) async fn linger(stream: &mut TcpStream) {
    let _ = stream.shutdown().await;
    drain_for(stream, 256 * 1024, Duration::from_millis(500)).await;
}

/// Reads and drops what a peer still sends, until it closes, `max_bytes` have
/// come or `max_time` has passed: the read half of a connection we closed
/// with a reason, kept open so that the reason is not lost to a reset.
pub async fn drain_for<R>(rd: &mut R, max_bytes: usize, max_time: Duration)
where
    R: tokio::io::AsyncRead + Unpin,
{
    let drain = async {
        let mut buf = [0u8; 8192];
        let mut left = max_bytes;
        while left > 0 {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(max_time, drain).await;
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("addr", &self.listener.local_addr().ok())
            .finish()
    }
}
