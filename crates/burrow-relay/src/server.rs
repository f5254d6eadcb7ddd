//! The relay's accept loop, protocol sniffing, HTTP routes, stapling and pipe.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, oneshot};
use tokio::task::JoinHandle;

use burrow_proto::channel::api::{ChannelRequest, JoinRequest, MAX_WAIT_MS, Role, decode_json};
use burrow_proto::channel::table::{ApiError, ChannelTable, TableConfig};
use burrow_proto::lobby::relay::{LobbyConfig, Side};
use burrow_proto::staple::{
    IDENTITY_MAGIC, IdentityHello, MAX_HELLO_LEN, STAPLE_MAGIC, StapleHello, StapleReply, TOKEN_HELLO_LEN,
    TOKEN_MAGIC, TokenHello,
};
use burrow_proto::wire::registry::{self, Protocol};

use crate::admission::{Admission, Evicted, Phase, Refused, Ticket};
use crate::http;
use crate::metrics::Metrics;

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
    /// an IPv6 /64; see [`crate::shares`]); 0 = a sixteenth of
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

struct Shared {
    cfg: RelayConfig,
    table: Mutex<ChannelTable>,
    notify: Mutex<HashMap<String, Arc<Notify>>>,
    /// Stapling connections waiting for their partner, by what they meet under.
    pending: Mutex<HashMap<MeetKey, Pending>>,
    /// Seed 003's lobby.
    lobby: crate::lobby::Hub,
    /// Seed 000's connector.
    connector: crate::connector::Connector,
    /// Ids for pending entries, so a replaced waiter never removes its successor.
    next_id: AtomicU64,
    metrics: Metrics,
}

struct Pending {
    role: Role,
    id: u64,
    tx: oneshot::Sender<TcpStream>,
}

/// What two stapling connections meet under: one key space per kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum MeetKey {
    /// A channel of the table (seed 001).
    Channel(String),
    /// An accepted lobby pair (seed 003's second connection).
    Lobby(String),
    /// A reconnect token derived from a session key.
    Token([u8; 32]),
}

impl MeetKey {
    /// The channel of the table this meeting is for, if any.
    fn channel(&self) -> Option<&str> {
        match self {
            MeetKey::Channel(c) => Some(c),
            _ => None,
        }
    }
}

/// What a second connection of the same role under one key does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SameRole {
    /// It is refused: the role is taken (a channel's peers are fixed).
    Refuse,
    /// It replaces the waiting one (a reconnecting peer's newest attempt).
    Replace,
}

/// The outcome of [`Shared::meet`].
enum Meet {
    /// The partner was waiting: hand it this connection.
    Pair(oneshot::Sender<TcpStream>),
    /// Wait under the key (the waiter's id, and where the partner arrives).
    Wait(u64, oneshot::Receiver<TcpStream>),
    /// The role is taken.
    Duplicate,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock would be a bug; keep serving with the data as it is.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn notifier(&self, channel: &str) -> Arc<Notify> {
        lock(&self.notify).entry(channel.to_owned()).or_default().clone()
    }

    fn wake(&self, channel: &str) {
        if let Some(n) = lock(&self.notify).get(channel) {
            n.notify_waiters();
        }
    }

    /// Pairs a stapling connection with the partner waiting under `key`
    /// (the other role), or registers it to wait: the one rule for every
    /// kind of stapling.
    fn meet(&self, key: &MeetKey, role: Role, same: SameRole) -> Meet {
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
    fn forget(&self, key: &MeetKey, id: u64) {
        let mut p = lock(&self.pending);
        if p.get(key).is_some_and(|w| w.id == id) {
            p.remove(key);
        }
    }

    fn expire(&self) {
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
enum Cut {
    /// Not complete within the handshake timeout, counted from the accept.
    Timeout,
    /// It had to make room for a newcomer (see [`crate::admission`]).
    Evicted,
}

/// Runs `read`, a part of the greeting of the connection holding `ticket`:
/// one deadline for the whole greeting (a slow sender cannot stretch it by
/// trickling bytes), and the greeting ends early if the relay needs its slot.
async fn greet<T>(shared: &Shared, ticket: &Ticket, read: impl Future<Output = T>) -> Result<T, Cut> {
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

async fn handle_http(shared: &Shared, mut stream: TcpStream, ip: IpAddr, prefix: Vec<u8>, ticket: &Ticket) {
    let req = match greet(shared, ticket, http::read_request(&mut stream, prefix)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            shared.metrics.error(e.kind());
            if let Some(status) = e.status() {
                let _ = http::write_error(&mut stream, status, e.kind(), &e.to_string()).await;
                linger(&mut stream).await;
            }
            return;
        }
        Err(Cut::Timeout) => {
            let _ = http::write_error(&mut stream, 408, "timeout", "request not received in time").await;
            linger(&mut stream).await;
            return;
        }
        Err(Cut::Evicted) => {
            let _ = http::write_error(
                &mut stream,
                503,
                "capacity",
                "request not received in time; the relay is at capacity",
            )
            .await;
            return;
        }
    };
    ticket.set(Phase::Working);
    shared.metrics.http_requests.fetch_add(1, Ordering::Relaxed);
    let (status, ctype, body) = route(shared, ip, &req).await;
    let _ = http::write_response(&mut stream, status, ctype, &body).await;
}

fn json<T: serde::Serialize>(status: u16, v: &T) -> (u16, &'static str, Vec<u8>) {
    (
        status,
        "application/json",
        serde_json::to_vec(v).unwrap_or_default(),
    )
}

fn api_error(shared: &Shared, e: &ApiError) -> (u16, &'static str, Vec<u8>) {
    shared.metrics.error(e.kind());
    json(e.status(), &e.body())
}

fn bad_json(shared: &Shared, e: &dyn std::fmt::Display) -> (u16, &'static str, Vec<u8>) {
    shared.metrics.error("bad_json");
    json(
        400,
        &burrow_proto::channel::api::ErrorBody {
            error: format!("invalid request body: {e}"),
            kind: "bad_json".into(),
        },
    )
}

/// The relay's randomness (channel names, uuids, session ids, handshakes).
pub(crate) fn fill(b: &mut [u8]) {
    // The OS RNG does not fail on supported platforms; if it ever did, refuse
    // to continue rather than hand out predictable handles.
    if getrandom::fill(b).is_err() {
        std::process::abort();
    }
}

async fn route(shared: &Shared, ip: IpAddr, req: &http::Request) -> (u16, &'static str, Vec<u8>) {
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/health") => json(200, &serde_json::json!({"status": "ok"})),
        ("GET", "/metrics") => {
            let open = lock(&shared.table).len();
            (
                200,
                "text/plain; version=0.0.4",
                shared.metrics.render(open).into_bytes(),
            )
        }
        ("POST", "/join") => {
            let r: JoinRequest = match decode_json(&req.body) {
                Ok(r) => r,
                Err(e) => return bad_json(shared, &e),
            };
            let res = lock(&shared.table).join(Instant::now(), ip, &r, &mut fill);
            match res {
                Ok(ok) => {
                    shared.wake(&ok.channel);
                    json(200, &ok)
                }
                Err(e) => api_error(shared, &e),
            }
        }
        ("POST", "/channel") => {
            let r: ChannelRequest = match decode_json(&req.body) {
                Ok(r) => r,
                Err(e) => return bad_json(shared, &e),
            };
            channel(shared, ip, &r).await
        }
        (_, "/health" | "/metrics" | "/join" | "/channel") => {
            shared.metrics.error("method");
            json(
                405,
                &burrow_proto::channel::api::ErrorBody {
                    error: "method not allowed".into(),
                    kind: "method".into(),
                },
            )
        }
        _ => {
            shared.metrics.error("not_found");
            json(
                404,
                &burrow_proto::channel::api::ErrorBody {
                    error: "no such endpoint; see /join, /channel, /health, /metrics".into(),
                    kind: "not_found".into(),
                },
            )
        }
    }
}

/// `POST /channel`, with the long-poll: answers at once if the state changed
/// (or the request changed it), else waits up to `wait_ms` for a change.
async fn channel(shared: &Shared, ip: IpAddr, r: &ChannelRequest) -> (u16, &'static str, Vec<u8>) {
    let notify = shared.notifier(&r.channel);
    let notified = notify.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    let before = lock(&shared.table).state(&r.channel).map(|s| s.version);
    let res = lock(&shared.table).post(Instant::now(), ip, r);
    let state = match res {
        Ok(s) => s,
        Err(e) => {
            if matches!(e, ApiError::UnknownChannel(_)) {
                lock(&shared.notify).remove(&r.channel);
            }
            return api_error(shared, &e);
        }
    };
    if Some(state.version) != before {
        shared.wake(&r.channel);
    }
    let wait = Duration::from_millis(r.wait_ms.unwrap_or(0).min(MAX_WAIT_MS));
    // Wait only for a caller who says which version it already has.
    if wait.is_zero() || r.seen != Some(state.version) || state.closed {
        return json(200, &state);
    }
    let _ = tokio::time::timeout(wait, notified).await;
    match lock(&shared.table).state(&r.channel) {
        Some(s) => json(200, &s),
        None => api_error(shared, &ApiError::UnknownChannel(r.channel.clone())),
    }
}

async fn refuse(shared: &Shared, stream: &mut TcpStream, kind: &'static str, reason: &str) {
    shared.metrics.error(kind);
    let _ = stream
        .write_all(&StapleReply::Refused(reason.to_owned()).encode())
        .await;
    linger(stream).await;
}

/// Refuses a stapling connection whose greeting was cut short. An evicted
/// one does not linger: its slot is wanted now.
async fn refuse_cut(shared: &Shared, stream: &mut TcpStream, cut: Cut) {
    match cut {
        Cut::Timeout => refuse(shared, stream, "timeout", "hello not received in time").await,
        Cut::Evicted => {
            let why = "the relay is at capacity and needed this waiting connection's slot; try again later";
            let _ = stream.write_all(&StapleReply::Refused(why.into()).encode()).await;
            let _ = stream.shutdown().await;
        }
    }
}

/// Closes after an error answer without losing it: shut down our side, then
/// discard what the peer still sends for a moment, so that closing with
/// unread bytes does not reset the connection before the peer read the reason.
async fn linger(stream: &mut TcpStream) {
    let _ = stream.shutdown().await;
    let drain = async {
        let mut buf = [0u8; 8192];
        let mut left: usize = 256 * 1024;
        while left > 0 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(500), drain).await;
}

async fn read_hello(stream: &mut TcpStream) -> Result<StapleHello, String> {
    let mut buf = STAPLE_MAGIC.to_vec();
    loop {
        match StapleHello::decode(&buf) {
            Ok(Some((h, n))) if n == buf.len() => return Ok(h),
            Ok(Some(_)) => return Err("bytes after the hello before stapling".into()),
            Ok(None) => {}
            Err(e) => return Err(format!("malformed hello: {e}")),
        }
        if buf.len() >= MAX_HELLO_LEN {
            return Err("hello too long".into());
        }
        let mut b = [0u8; MAX_HELLO_LEN];
        let want = MAX_HELLO_LEN - buf.len();
        let n = stream.read(&mut b[..want]).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed during hello".into());
        }
        buf.extend_from_slice(&b[..n]);
    }
}

async fn handle_staple(shared: Arc<Shared>, mut stream: TcpStream, ip: IpAddr, slot: &Ticket) {
    let hello = match greet(&shared, slot, read_hello(&mut stream)).await {
        Ok(Ok(h)) => h,
        Ok(Err(reason)) => return refuse(&shared, &mut stream, "bad_hello", &reason).await,
        Err(cut) => return refuse_cut(&shared, &mut stream, cut).await,
    };
    let ch = hello.channel.clone();
    let checked = lock(&shared.table).staple_check(Instant::now(), ip, &ch, &hex_bytes(&hello.uuid));
    let checked = match checked {
        Ok(t) => t,
        Err(e) => return refuse(&shared, &mut stream, e.kind(), &e.to_string()).await,
    };
    // The table vouched for it: a channel's peer is never evicted.
    slot.set(Phase::Working);
    staple(
        shared,
        stream,
        MeetKey::Channel(ch),
        checked.role,
        SameRole::Refuse,
        slot,
    )
    .await;
}

/// Pairs `stream` with its partner under `key`, or waits for it, then pipes.
async fn staple(
    shared: Arc<Shared>,
    mut stream: TcpStream,
    key: MeetKey,
    role: Role,
    same: SameRole,
    slot: &Ticket,
) {
    match shared.meet(&key, role, same) {
        Meet::Pair(tx) => {
            if let MeetKey::Lobby(pair) = &key {
                shared.lobby.forget_pair(pair);
            }
            if let Err(mut back) = tx.send(stream) {
                // The waiting side gave up a moment ago.
                refuse(&shared, &mut back, "staple_timeout", "the other peer is gone").await;
            }
        }
        Meet::Wait(id, rx) => wait_for_partner(shared, stream, key, (id, rx), slot).await,
        Meet::Duplicate => {
            refuse(
                &shared,
                &mut stream,
                "already_set",
                "this role is already connected",
            )
            .await
        }
    }
}

/// A lobby pair's second connection: it names its relay-given identity.
async fn handle_identity(shared: Arc<Shared>, mut stream: TcpStream, ip: IpAddr, slot: &Ticket) {
    let mut buf = IDENTITY_MAGIC.to_vec();
    let read = greet(&shared, slot, async {
        loop {
            match IdentityHello::decode(&buf) {
                Ok(Some((h, n))) if n == buf.len() => return Ok(h),
                Ok(Some(_)) => return Err("bytes after the hello before stapling"),
                Ok(None) => {}
                Err(_) => return Err("malformed identity hello"),
            }
            let mut b = [0u8; 1];
            match stream.read(&mut b).await {
                Ok(1) => buf.push(b[0]),
                _ => return Err("closed during hello"),
            }
        }
    })
    .await;
    let hello = match read {
        Ok(Ok(h)) => h,
        Ok(Err(reason)) => return refuse(&shared, &mut stream, "bad_hello", reason).await,
        Err(cut) => return refuse_cut(&shared, &mut stream, cut).await,
    };
    let Some((pair, side)) = shared.lobby.second_connection(hello.identity.as_str(), ip) else {
        return refuse(
            &shared,
            &mut stream,
            "no_pair",
            "no accepted lobby pair with this identity from this address",
        )
        .await;
    };
    let role = match side {
        Side::Server => Role::Sender,
        Side::Client => Role::Recipient,
    };
    // The lobby vouched for it (an accepted pair, from this address).
    slot.set(Phase::Working);
    staple(
        shared,
        stream,
        MeetKey::Lobby(pair),
        role,
        SameRole::Replace,
        slot,
    )
    .await;
}

/// A reconnecting pair: no channel, just a token both peers derived from
/// their session key. The newest connection per token and role waits; the
/// first of the other role staples to it.
async fn handle_token(shared: Arc<Shared>, mut stream: TcpStream, slot: &Ticket) {
    let mut buf = [0u8; TOKEN_HELLO_LEN];
    buf[..4].copy_from_slice(TOKEN_MAGIC);
    let read = greet(&shared, slot, stream.read_exact(&mut buf[4..])).await;
    let hello = match read {
        Ok(Ok(_)) => match TokenHello::decode(&buf) {
            Ok(Some((h, _))) => h,
            _ => return refuse(&shared, &mut stream, "bad_hello", "malformed token hello").await,
        },
        Ok(Err(_)) => return refuse(&shared, &mut stream, "bad_hello", "closed during hello").await,
        Err(cut) => return refuse_cut(&shared, &mut stream, cut).await,
    };
    // A newer connection of the same side replaces the waiting one (whose
    // wait then ends as expired). Anyone can make up a token: it waits
    // unvouched for, and may make room for a newcomer.
    slot.set(Phase::Waiting);
    staple(
        shared,
        stream,
        MeetKey::Token(hello.token),
        hello.role,
        SameRole::Replace,
        slot,
    )
    .await;
}

fn hex_bytes(u: &[u8]) -> String {
    u.iter().map(|b| format!("{b:02x}")).collect()
}

/// Waits for the partner under `ch`, then pipes (a channel's table entry
/// learns that it is stapled, and when the pipe ends).
async fn wait_for_partner(
    shared: Arc<Shared>,
    mut stream: TcpStream,
    ch: MeetKey,
    (id, rx): (u64, oneshot::Receiver<TcpStream>),
    slot: &Ticket,
) {
    if stream.write_all(&StapleReply::Waiting.encode()).await.is_err() {
        shared.forget(&ch, id);
        return;
    }
    // Wait for the partner, but notice if this peer hangs up meanwhile (so
    // that it can come back without being refused as "already connected"),
    // or talks before it is stapled.
    enum Waited {
        Partner(TcpStream),
        Gone,
        Chatter,
        Expired,
        Evicted,
    }
    let waited = tokio::time::timeout(shared.cfg.staple_timeout, async {
        let mut probe = [0u8; 1];
        tokio::select! {
            p = rx => match p {
                Ok(p) => Waited::Partner(p),
                Err(_) => Waited::Expired,
            },
            n = stream.peek(&mut probe) => match n {
                Ok(0) | Err(_) => Waited::Gone,
                Ok(_) => Waited::Chatter,
            },
            () = slot.evicted() => Waited::Evicted,
        }
    })
    .await;
    let partner = match waited {
        Ok(Waited::Partner(p)) => p,
        Ok(Waited::Gone) => {
            shared.forget(&ch, id);
            shared.metrics.error("staple_gone");
            return;
        }
        Ok(Waited::Chatter) => {
            shared.forget(&ch, id);
            return refuse(&shared, &mut stream, "bad_hello", "bytes sent before stapling").await;
        }
        Ok(Waited::Evicted) => {
            shared.forget(&ch, id);
            return refuse_cut(&shared, &mut stream, Cut::Evicted).await;
        }
        Ok(Waited::Expired) | Err(_) => {
            shared.forget(&ch, id);
            return refuse(
                &shared,
                &mut stream,
                "staple_timeout",
                "the other peer did not connect in time",
            )
            .await;
        }
    };
    slot.set(Phase::Working);
    if let Some(c) = ch.channel() {
        lock(&shared.table).set_stapled(Instant::now(), c);
        shared.wake(c);
    }
    shared.metrics.staples_total.fetch_add(1, Ordering::Relaxed);
    shared.metrics.staples_active.fetch_add(1, Ordering::Relaxed);
    let mut partner = partner;
    let ok = StapleReply::Stapled.encode();
    if stream.write_all(&ok).await.is_ok() && partner.write_all(&ok).await.is_ok() {
        pipe(&shared, stream, partner).await;
    }
    shared.metrics.staples_active.fetch_sub(1, Ordering::Relaxed);
    if let Some(c) = ch.channel() {
        lock(&shared.table).close(Instant::now(), c, "the relay connection ended");
        shared.wake(c);
    }
}

/// Copies bytes both ways until both directions are finished. End of stream
/// (or an error) in one direction is passed on as a half-close.
async fn pipe(shared: &Shared, a: TcpStream, b: TcpStream) {
    let (ar, aw) = a.into_split();
    let (br, bw) = b.into_split();
    let size = shared.cfg.pipe_buffer;
    // Each direction runs to its own end: when one side fails (say, writing to
    // a receiver that closed), the other direction must still deliver what
    // that receiver said last (its error message). It ends promptly anyway,
    // since the failed side's socket is closed.
    let (r1, r2) = tokio::join!(copy_half(shared, ar, bw, size), copy_half(shared, br, aw, size));
    for r in [r1, r2] {
        if let Err(e) = r {
            tracing::debug!("pipe direction ended: {e}");
        }
    }
}

async fn copy_half(
    shared: &Shared,
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    size: usize,
) -> std::io::Result<()> {
    let res =
        match rustix::pipe::pipe_with(rustix::pipe::PipeFlags::NONBLOCK | rustix::pipe::PipeFlags::CLOEXEC) {
            Ok(pipe) => splice_half(shared, &from, &to, pipe, size).await,
            Err(_) => copy_loop(shared, &mut from, &mut to, size).await,
        };
    // Pass the end on, clean or not, so the other peer is not left waiting.
    let _ = to.shutdown().await;
    res
}

/// Moves bytes socket → pipe → socket in the kernel (splice(2)): the relay
/// never copies them into its own memory.
async fn splice_half(
    shared: &Shared,
    from: &OwnedReadHalf,
    to: &OwnedWriteHalf,
    (pr, pw): (std::os::fd::OwnedFd, std::os::fd::OwnedFd),
    size: usize,
) -> std::io::Result<()> {
    use rustix::pipe::{SpliceFlags, splice};
    use tokio::io::Interest;
    let _ = rustix::pipe::fcntl_setpipe_size(&pw, size);
    let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
    let (src, dst): (&TcpStream, &TcpStream) = (from.as_ref(), to.as_ref());
    loop {
        src.readable().await?;
        let n = match src.try_io(Interest::READABLE, || {
            splice(src, None, &pw, None, size, flags).map_err(std::io::Error::from)
        }) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        let mut left = n;
        while left > 0 {
            dst.writable().await?;
            match dst.try_io(Interest::WRITABLE, || {
                splice(&pr, None, dst, None, left, flags).map_err(std::io::Error::from)
            }) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(m) => left -= m,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        shared
            .metrics
            .bytes_relayed
            .fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// The portable fallback: copy through a buffer.
async fn copy_loop(
    shared: &Shared,
    from: &mut OwnedReadHalf,
    to: &mut OwnedWriteHalf,
    size: usize,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; size];
    async {
        loop {
            let n = from.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            to.write_all(&buf[..n]).await?;
            shared
                .metrics
                .bytes_relayed
                .fetch_add(n as u64, Ordering::Relaxed);
        }
    }
    .await
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("addr", &self.listener.local_addr().ok())
            .finish()
    }
}
