//! Exit and proxy (seed 000): a paired machine's internet connection used
//! through a relay that cannot read or alter the traffic.
//!
//! - Both sides authenticate the relay (Noise XX; its fingerprint is pinned
//!   with `ADDR#FINGERPRINT` or remembered on first use) and prove their own
//!   identity key to it.
//! - The exit keeps a mailbox connection under its key and reconnects by
//!   itself; for each session the relay announces, it opens a new connection,
//!   runs Noise XX end to end with the proxy, and checks the proxy's key is
//!   paired. The proxy checks the exit's key is the paired one it asked for.
//! - Streams are multiplexed ([`burrow_proto::tunnel::mux`]) with per-stream credit;
//!   the exit resolves names and checks every address against its
//!   [`Policy`] before connecting.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, oneshot, watch};

use burrow_proto::connector::{MAGIC, Msg, RELAY_CONTEXT, TUNNEL_CONTEXT, VERSION};
use burrow_proto::session::{Handshake, Inbox, LEN_PREFIX, MAX_RECORD, Opener, Sealer, Side, TAG_LEN};
use burrow_proto::tunnel::mux::{End, Event, Host, Limits, Mux, ResetReason};
use burrow_proto::tunnel::policy::Policy;
use burrow_proto::tunnel::socks;

use crate::error::Error;
use crate::handshake;
use crate::identity::{Identity, PublicIdentity};
use crate::paths::{read_frame, send_record};
use crate::peers::PeerBook;
use crate::platform::{self, OsRandom};
use crate::relay_client::RelayClient;

/// How long a connect to a destination may take at the exit.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes with the relay and the other side.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// Mailbox keepalive.
const PING_EVERY: Duration = Duration::from_secs(20);

/// Where the exit and the proxy say what happens (a line for the user).
pub type Log = Arc<dyn Fn(String) + Send + Sync>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Which relay key to trust: a pinned fingerprint, or trust on first use
/// remembered in a file.
#[derive(Debug, Clone)]
pub struct RelayTrust {
    /// `ADDR#FINGERPRINT` gave one.
    pub pinned: Option<String>,
    /// Where first-use fingerprints are kept (`ADDR FINGERPRINT` lines).
    pub known: Option<PathBuf>,
}

impl RelayTrust {
    /// Splits `ADDR#FINGERPRINT`.
    pub fn parse(relay: &str, known: Option<PathBuf>) -> (String, Self) {
        match relay.split_once('#') {
            Some((a, fp)) => (
                a.to_owned(),
                Self {
                    pinned: Some(fp.trim().to_owned()),
                    known,
                },
            ),
            None => (relay.to_owned(), Self { pinned: None, known }),
        }
    }

    /// The default file of first-use fingerprints.
    pub fn default_known() -> Option<PathBuf> {
        crate::identity::default_path().map(|p| p.with_file_name("relays"))
    }

    fn check(&self, addr: &str, fp: &str) -> Result<(), Error> {
        if let Some(p) = &self.pinned {
            return if p == fp {
                Ok(())
            } else {
                Err(Error::Integrity(format!(
                    "the relay at {addr} presents key {fp}, not the pinned {p}: refusing it"
                )))
            };
        }
        let Some(path) = &self.known else { return Ok(()) };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        for line in text.lines() {
            if let Some((a, known)) = line.split_once(' ')
                && a == addr
            {
                return if known.trim() == fp {
                    Ok(())
                } else {
                    Err(Error::Integrity(format!(
                        "THE RELAY'S KEY CHANGED: {addr} presented {known} before and {fp} now. \
                         Someone may be impersonating it. If it was re-keyed on purpose, remove its line \
                         from {} (or pin it with {addr}#{fp})",
                        path.display()
                    )))
                };
            }
        }
        remember(path, addr, fp)
    }
}

fn remember(path: &Path, addr: &str, fp: &str) -> Result<(), Error> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    std::io::Write::write_all(&mut f, format!("{addr} {fp}\n").as_bytes()).map_err(|e| Error::io(path, e))
}

/// An authenticated connection to the relay.
struct RelayLink {
    s: TcpStream,
    sealer: Sealer,
    opener: Opener,
}

impl RelayLink {
    async fn send(&mut self, m: &Msg) -> Result<(), Error> {
        send_record(&mut self.s, &mut self.sealer, &m.encode()).await
    }

    async fn recv(&mut self) -> Result<Msg, Error> {
        let mut ct = read_frame(&mut self.s).await?;
        let plain = self.opener.open_in_place(&mut ct)?;
        match Msg::decode(plain).map_err(|e| Error::RelayProtocol(e.to_string()))? {
            Msg::Error(m) => Err(Error::Relay {
                kind: "connector".into(),
                message: burrow_proto::transfer::escape_display(&m),
            }),
            m => Ok(m),
        }
    }
}

/// Opens an authenticated connection to the relay ("authenticate" and
/// "authenticate-ack" of seed 000).
async fn relay_link(relay: &RelayClient, trust: &RelayTrust, me: &Identity) -> Result<RelayLink, Error> {
    let mut s = relay.connect().await?;
    let run = async {
        let mut hello = MAGIC.to_vec();
        hello.push(VERSION);
        s.write_all(&hello).await.map_err(Error::ConnectionLost)?;
        let hs = Handshake::xx(
            Side::Initiator,
            me.x25519_secret(),
            RELAY_CONTEXT,
            platform::aead(),
            &mut OsRandom,
        )?;
        // The relay's one payload (message 2): its Ed25519 key, checked
        // with its static key against the pinned fingerprint.
        let hs = handshake::drive(
            &mut s,
            hs,
            HANDSHAKE_TIMEOUT,
            "the relay handshake",
            |hs, payload| {
                let (Some(x25519), Ok(ed25519)) = (hs.remote_static(), <[u8; 32]>::try_from(payload)) else {
                    return Err(Error::RelayProtocol("the relay did not present its keys".into()));
                };
                trust.check(relay.addr(), &PublicIdentity { x25519, ed25519 }.fingerprint())
            },
        )
        .await?;
        Ok::<_, Error>(hs.into_transport()?.split())
    };
    let (sealer, opener) = run.await?;
    Ok(RelayLink { s, sealer, opener })
}

/// End-to-end Noise XX through the relay's pipe; returns the peer's key.
async fn end_to_end(
    s: &mut TcpStream,
    me: &Identity,
    side: Side,
) -> Result<(Sealer, Opener, [u8; 32]), Error> {
    let run = async {
        // helloclient, helloserver, publickey (seed 000): XX's three messages.
        let hs = Handshake::xx(
            side,
            me.x25519_secret(),
            TUNNEL_CONTEXT,
            platform::aead(),
            &mut OsRandom,
        )?;
        let hs = handshake::drive(
            s,
            hs,
            HANDSHAKE_TIMEOUT,
            "the end-to-end handshake",
            |_, _| Ok(()),
        )
        .await?;
        let peer = hs
            .remote_static()
            .ok_or_else(|| Error::Protocol("no key from the other side".into()))?;
        let (a, b) = hs.into_transport()?.split();
        Ok::<_, Error>((a, b, peer))
    };
    run.await
}

/// What the exit does with a stream the proxy opens.
type OnOpen = Arc<dyn Fn(Arc<Tunnel>, u32, Host, u16) + Send + Sync>;

/// One stream's plumbing inside a tunnel.
struct StreamIo {
    inflow: Arc<Inflow>,
    writable: Arc<Notify>,
    opened: Option<oneshot::Sender<Result<(), (ResetReason, String)>>>,
}

/// A running tunnel: the mux, the frame writer, the streams.
struct Tunnel {
    mux: Mutex<Mux>,
    out: mpsc::Sender<Vec<u8>>,
    streams: Mutex<HashMap<u32, StreamIo>>,
    /// Becomes true when the session ends (either direction failed).
    dead: watch::Sender<bool>,
    /// Spare 64 KiB buffers: no allocation (and no page faults) per frame.
    pool: Mutex<Vec<Vec<u8>>>,
    /// The reader's buffers.
    recv_bufs: Arc<RecvBufs>,
    /// When the session started, and the last read and write since then
    /// (milliseconds): the keepalive timer's inputs.
    born: std::time::Instant,
    last_rx: std::sync::atomic::AtomicU64,
    last_tx: std::sync::atomic::AtomicU64,
}

/// Bytes per read on the tunnel's connection: small enough that a buffer
/// read, decrypted and written out stays in the CPU's L2 cache (512 KiB
/// buffers cost more CPU per byte, `docs/benchmarks.md`).
const RECV_BUF: usize = 128 * 1024;
/// Receive buffers held by streams at most; beyond, `Data` is copied out.
const MAX_SHARED: usize = 8;

/// The tunnel reader's buffers. After a read, the records in a buffer are
/// decrypted in place and the buffer is shared ([`RecvBuf`]) with every
/// stream whose `Data` lies in it: the bytes reach the local socket without
/// a copy, and the last piece written returns the buffer here. With
/// [`MAX_SHARED`] buffers out (slow local sides), data is copied instead, so
/// memory stays bounded.
#[derive(Default)]
struct RecvBufs {
    pool: Mutex<Vec<Vec<u8>>>,
    out: std::sync::atomic::AtomicUsize,
}

impl RecvBufs {
    fn take(&self) -> Vec<u8> {
        lock(&self.pool).pop().unwrap_or_else(|| vec![0u8; RECV_BUF])
    }

    fn share(self: &Arc<Self>, v: Vec<u8>) -> Arc<RecvBuf> {
        self.out.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Arc::new(RecvBuf {
            v,
            home: self.clone(),
        })
    }

    /// Gives `inbox` its buffer back if no stream holds a piece of it,
    /// else a fresh one with the partial record moved over.
    fn unshare(&self, b: Arc<RecvBuf>, inbox: &mut Inbox) {
        match Arc::try_unwrap(b) {
            Ok(mut b) => inbox.put_back(std::mem::take(&mut b.v)),
            Err(shared) => inbox.put_fresh(self.take(), &shared.v),
        }
    }

    fn crowded(&self) -> bool {
        self.out.load(std::sync::atomic::Ordering::Relaxed) >= MAX_SHARED
    }
}

/// A receive buffer shared by the streams whose data it holds.
struct RecvBuf {
    v: Vec<u8>,
    home: Arc<RecvBufs>,
}

impl Drop for RecvBuf {
    fn drop(&mut self) {
        self.home.out.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if self.v.len() == RECV_BUF {
            let mut p = lock(&self.home.pool);
            if p.len() <= MAX_SHARED {
                p.push(std::mem::take(&mut self.v));
            }
        }
    }
}

/// `Data` on its way to a stream's local socket.
enum Chunk {
    /// A piece of a shared receive buffer.
    Shared(Arc<RecvBuf>, std::ops::Range<usize>),
    /// A copy in a pooled buffer.
    Copied(Vec<u8>),
}

impl AsRef<[u8]> for Chunk {
    fn as_ref(&self) -> &[u8] {
        match self {
            Chunk::Shared(b, r) => &b.v[r.clone()],
            Chunk::Copied(v) => v,
        }
    }
}

impl Drop for StreamIo {
    fn drop(&mut self) {
        // Reset, or the session ended: the local side is cut off.
        self.inflow.close();
    }
}

/// Pieces below this are copied (gathered with their neighbours) rather
/// than holding on to a shared receive buffer for a few bytes.
const SMALL_PIECE: usize = 4096;
/// Bytes gathered into one copy at most.
const GATHER: usize = 64 * 1024;

/// `Data` that arrived for a stream and waits for its local socket. Its
/// size is bounded by the stream's window (the peer may send no more than
/// the credit this side gave, and credit returns only for bytes written to
/// the local socket), and what holds it costs at most about twice that:
/// small pieces are copied together into buffers of up to [`GATHER`]
/// bytes, so a peer sending 1-byte frames cannot turn a 4 MiB window into
/// gigabytes of per-frame buffers. Large pieces share the receive buffer
/// they arrived in (no copy) while few such buffers are held.
#[derive(Default)]
struct Inflow {
    state: Mutex<InflowState>,
    ready: Notify,
}

#[derive(Default)]
struct InflowState {
    chunks: std::collections::VecDeque<Chunk>,
    /// Bytes queued.
    bytes: usize,
    /// The peer ended its side (after the queued bytes).
    fin: bool,
    /// The stream is gone (reset, or the session ended).
    closed: bool,
}

/// What [`Inflow::take`] found.
enum Took {
    Data,
    Fin,
    Closed,
}

impl Inflow {
    /// Queues `range` of `shared` (the plaintext of a `Data` frame): as a
    /// piece of it, or copied when small or when `crowded` (too many
    /// receive buffers are held already); `spare` gives a buffer for a
    /// large copy.
    fn push(
        &self,
        shared: &Arc<RecvBuf>,
        range: std::ops::Range<usize>,
        crowded: bool,
        spare: impl FnOnce() -> Vec<u8>,
    ) {
        let bytes = &shared.v[range.clone()];
        let mut st = lock(&self.state);
        if st.closed {
            return;
        }
        st.bytes += bytes.len();
        if bytes.len() >= SMALL_PIECE && !crowded {
            st.chunks.push_back(Chunk::Shared(shared.clone(), range));
        } else if let Some(Chunk::Copied(v)) = st.chunks.back_mut()
            && v.len() + bytes.len() <= GATHER.max(v.capacity())
        {
            v.extend_from_slice(bytes);
        } else {
            let mut v = if bytes.len() >= SMALL_PIECE {
                spare()
            } else {
                Vec::with_capacity(SMALL_PIECE)
            };
            v.clear();
            v.extend_from_slice(bytes);
            st.chunks.push_back(Chunk::Copied(v));
        }
        drop(st);
        self.ready.notify_one();
    }

    fn finish(&self) {
        lock(&self.state).fin = true;
        self.ready.notify_one();
    }

    fn close(&self) {
        let mut st = lock(&self.state);
        st.closed = true;
        st.chunks.clear();
        st.bytes = 0;
        drop(st);
        self.ready.notify_one();
    }

    /// Bytes waiting for the local socket, and the bytes of memory
    /// holding them (copies' capacity; pieces count their whole buffer).
    #[cfg(test)]
    fn held(&self) -> (usize, usize) {
        let st = lock(&self.state);
        let mem = st
            .chunks
            .iter()
            .map(|c| match c {
                Chunk::Shared(b, _) => b.v.len(),
                Chunk::Copied(v) => v.capacity(),
            })
            .sum();
        (st.bytes, mem)
    }

    /// Waits for data (up to `max` chunks moved into `into`), the end, or
    /// the stream's loss.
    async fn take(&self, into: &mut Vec<Chunk>, max: usize) -> Took {
        loop {
            let woken = self.ready.notified();
            {
                let mut st = lock(&self.state);
                if st.closed {
                    return Took::Closed;
                }
                if !st.chunks.is_empty() {
                    while into.len() < max
                        && let Some(c) = st.chunks.pop_front()
                    {
                        st.bytes -= c.as_ref().len();
                        into.push(c);
                    }
                    return Took::Data;
                }
                if st.fin {
                    return Took::Fin;
                }
            }
            woken.await;
        }
    }
}

/// Frames written with one `writev` at most: a few, so that they stay in
/// cache between the read that filled them, the seal and the write.
const WRITE_BATCH: usize = 4;
/// Bytes of frames in one write at most.
const WRITE_BYTES: usize = 256 * 1024;
/// Frames queued for the writer at most (the streams wait beyond).
const OUT_QUEUE: usize = 32;

/// Pieces of `Data` written to a local socket with one `writev` at most.
const DOWN_BATCH: usize = 16;

/// `frame` laid out as a record to seal in place: `[prefix][frame][tag]`.
fn as_record(frame: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(LEN_PREFIX + frame.len() + TAG_LEN);
    r.extend_from_slice(&[0; LEN_PREFIX]);
    r.extend_from_slice(frame);
    r.extend_from_slice(&[0; TAG_LEN]);
    r
}

/// Writes every frame, in order, with as few `writev` calls as the socket allows.
async fn write_all_frames<F: AsRef<[u8]>>(
    wr: &mut (impl AsyncWriteExt + Unpin),
    frames: &[F],
) -> std::io::Result<()> {
    let (mut i, mut off) = (0usize, 0usize);
    while i < frames.len() {
        let slices: Vec<std::io::IoSlice<'_>> =
            std::iter::once(std::io::IoSlice::new(&frames[i].as_ref()[off..]))
                .chain(frames[i + 1..].iter().map(|f| std::io::IoSlice::new(f.as_ref())))
                .collect();
        let mut n = wr.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 && i < frames.len() {
            let left = frames[i].as_ref().len() - off;
            if n >= left {
                n -= left;
                i += 1;
                off = 0;
            } else {
                off += n;
                n = 0;
            }
        }
    }
    Ok(())
}

impl Tunnel {
    /// Starts the reader and writer tasks; `on_open` handles streams the
    /// other side opens (exit side).
    fn start(
        s: TcpStream,
        mut sealer: Sealer,
        mut opener: Opener,
        end: End,
        on_open: Option<OnOpen>,
        idle: Duration,
    ) -> Arc<Self> {
        let (mut rd, mut wr) = s.into_split();
        let (out, mut out_rx) = mpsc::channel::<Vec<u8>>(OUT_QUEUE);
        let t = Arc::new(Self {
            mux: Mutex::new(Mux::new(end, Limits::default())),
            out,
            streams: Mutex::new(HashMap::new()),
            dead: watch::channel(false).0,
            pool: Mutex::new(Vec::new()),
            recv_bufs: Arc::default(),
            born: std::time::Instant::now(),
            last_rx: Default::default(),
            last_tx: Default::default(),
        });
        let t1 = t.clone();
        tokio::spawn(async move {
            // Frames arrive laid out as records (`Tunnel::send`): sealed where
            // they are and written together with one `writev`, never copied.
            let mut batch: Vec<Vec<u8>> = Vec::with_capacity(WRITE_BATCH);
            let mut dead = t1.dead.subscribe();
            'writer: loop {
                let f = tokio::select! {
                    f = out_rx.recv() => match f { Some(f) => f, None => break },
                    _ = dead.wait_for(|d| *d) => break,
                };
                let mut queued = f.len();
                batch.push(f);
                // Whatever else is queued goes in the same write.
                while queued < WRITE_BYTES
                    && batch.len() < WRITE_BATCH
                    && let Ok(more) = out_rx.try_recv()
                {
                    queued += more.len();
                    batch.push(more);
                }
                for f in &mut batch {
                    if sealer.seal_in_place(f).is_err() {
                        break 'writer;
                    }
                }
                if write_all_frames(&mut wr, &batch).await.is_err() {
                    break;
                }
                t1.stamp(&t1.last_tx);
                for f in batch.drain(..) {
                    t1.put(f);
                }
            }
            let _ = wr.shutdown().await;
            t1.kill();
        });
        let t2 = t.clone();
        tokio::spawn(async move {
            // Large reads; records are decrypted in place, then the buffer is
            // shared with the streams their `Data` goes to (no copy) and the
            // next read goes into another buffer (see `RecvBuf`).
            let mut inbox = Inbox::with_buffer(t2.recv_bufs.take());
            let mut plains: Vec<std::ops::Range<usize>> = Vec::new();
            'session: loop {
                let mut failed = false;
                loop {
                    match inbox.open_next(&mut opener) {
                        Ok(Some(p)) => plains.push(p),
                        Ok(None) => break,
                        // A record that fails authentication ends everything: no altered byte is delivered.
                        Err(e) => {
                            tracing::warn!("tunnel: {e}; closing every stream");
                            failed = true;
                            break;
                        }
                    }
                }
                if !plains.is_empty() {
                    let shared = t2.recv_bufs.share(inbox.take_buffer());
                    for r in plains.drain(..) {
                        let ev = lock(&t2.mux).handle(&shared.v[r.clone()]).map(|e| match e {
                            Event::Data { stream, bytes } => {
                                let data = r.end - bytes.len()..r.end;
                                (Some((&shared, data)), Event::Data { stream, bytes: &[] })
                            }
                            other => (None, other),
                        });
                        let (bytes, ev) = match ev {
                            Ok(x) => x,
                            Err(e) => {
                                tracing::warn!("tunnel: {e}");
                                break 'session;
                            }
                        };
                        t2.dispatch(ev, bytes, on_open.as_ref());
                    }
                    // Streams still holding pieces of it: read on into
                    // another buffer, with the partial record moved over.
                    t2.recv_bufs.unshare(shared, &mut inbox);
                }
                if failed {
                    break 'session;
                }
                match rd.read(inbox.space()).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        t2.stamp(&t2.last_rx);
                        inbox.filled(n);
                    }
                }
            }
            t2.kill();
        });
        // Liveness: a Ping when nothing went out for a third of `idle`; the
        // session is over when nothing came in for `idle` (a link that died
        // silently: no FIN, no RST), so the proxy opens a new tunnel.
        let t3 = t.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval((idle / 6).max(Duration::from_millis(50)));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = t3.ended() => return,
                }
                let now = t3.born.elapsed().as_millis() as u64;
                let since = |a: &std::sync::atomic::AtomicU64| {
                    Duration::from_millis(now.saturating_sub(a.load(std::sync::atomic::Ordering::Relaxed)))
                };
                if since(&t3.last_rx) >= idle {
                    tracing::warn!(
                        "tunnel: nothing from the other side for {}s; closing it",
                        idle.as_secs()
                    );
                    t3.kill();
                    return;
                }
                if since(&t3.last_tx) >= idle / 3 {
                    let ping = lock(&t3.mux).ping();
                    let _ = t3.out.try_send(as_record(&ping));
                }
            }
        });
        t
    }

    /// Notes that bytes moved now.
    fn stamp(&self, at: &std::sync::atomic::AtomicU64) {
        let ms = self.born.elapsed().as_millis() as u64;
        at.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// A spare buffer with room for a whole record. Its contents (and
    /// length) are whatever it last held: resizing it then zero-fills only
    /// what it did not hold before.
    fn get(&self) -> Vec<u8> {
        lock(&self.pool)
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(LEN_PREFIX + MAX_RECORD))
    }

    /// Returns a buffer for reuse.
    fn put(&self, v: Vec<u8>) {
        if v.capacity() >= LEN_PREFIX + MAX_RECORD {
            let mut p = lock(&self.pool);
            if p.len() < 64 {
                p.push(v);
            }
        }
    }

    /// Ends the session: every stream ends, the writer stops.
    fn kill(&self) {
        lock(&self.streams).clear();
        self.dead.send_replace(true);
    }

    /// Waits until the session has ended.
    async fn ended(&self) {
        let mut d = self.dead.subscribe();
        let _ = d.wait_for(|d| *d).await;
    }

    fn dispatch(
        self: &Arc<Self>,
        ev: Event<'_>,
        bytes: Option<(&Arc<RecvBuf>, std::ops::Range<usize>)>,
        on_open: Option<&OnOpen>,
    ) {
        let mut streams = lock(&self.streams);
        match ev {
            Event::Open { stream, host, port } => match on_open {
                Some(f) => {
                    drop(streams);
                    f(self.clone(), stream, host, port);
                }
                None => {
                    let r = lock(&self.mux).reset(stream, ResetReason::Failure, "this side opens no streams");
                    let _ = self.out.try_send(as_record(&r));
                }
            },
            Event::Opened { stream } => {
                if let Some(tx) = streams.get_mut(&stream).and_then(|s| s.opened.take()) {
                    let _ = tx.send(Ok(()));
                }
            }
            Event::Data { stream, .. } => {
                if let (Some(s), Some((shared, range))) = (streams.get(&stream), bytes) {
                    s.inflow
                        .push(shared, range, self.recv_bufs.crowded(), || self.get());
                }
            }
            Event::Writable { stream } => {
                if let Some(s) = streams.get(&stream) {
                    s.writable.notify_one();
                }
            }
            Event::Fin { stream } => {
                if let Some(s) = streams.get(&stream) {
                    s.inflow.finish();
                }
            }
            Event::Reset {
                stream,
                reason,
                message,
            } => {
                if let Some(mut s) = streams.remove(&stream)
                    && let Some(tx) = s.opened.take()
                {
                    let _ = tx.send(Err((reason, message)));
                }
            }
            Event::Refused { reset, .. } => {
                let _ = self.out.try_send(as_record(&reset));
            }
            Event::Nothing => {}
        }
    }

    fn register(
        &self,
        stream: u32,
        opened: Option<oneshot::Sender<Result<(), (ResetReason, String)>>>,
    ) -> (Arc<Inflow>, Arc<Notify>) {
        Self::register_in(&mut lock(&self.streams), stream, opened)
    }

    /// [`Tunnel::register`] with the streams' lock already held.
    fn register_in(
        streams: &mut HashMap<u32, StreamIo>,
        stream: u32,
        opened: Option<oneshot::Sender<Result<(), (ResetReason, String)>>>,
    ) -> (Arc<Inflow>, Arc<Notify>) {
        let inflow = Arc::new(Inflow::default());
        let writable = Arc::new(Notify::new());
        streams.insert(
            stream,
            StreamIo {
                inflow: inflow.clone(),
                writable: writable.clone(),
                opened,
            },
        );
        (inflow, writable)
    }

    /// Queues a frame (plaintext); it is copied into record layout.
    async fn send(&self, frame: Vec<u8>) -> bool {
        self.out.send(as_record(&frame)).await.is_ok()
    }

    /// Queues a frame already laid out as a record (see [`as_record`]).
    async fn send_record(&self, record: Vec<u8>) -> bool {
        self.out.send(record).await.is_ok()
    }

    fn is_closed(&self) -> bool {
        *self.dead.borrow() || self.out.is_closed()
    }

    /// Copies between a local socket and a stream until both directions end.
    async fn pump(self: Arc<Self>, id: u32, local: TcpStream, inflow: Arc<Inflow>, writable: Arc<Notify>) {
        let (mut lr, mut lw) = local.into_split();
        let up = {
            let t = self.clone();
            async move {
                // Data goes straight into a frame laid out as a record:
                // [prefix][Data header][bytes][tag], sealed in place later.
                const AT: usize = LEN_PREFIX + Mux::DATA_HEADER;
                loop {
                    let credit = lock(&t.mux).credit(id);
                    if credit == 0 {
                        if !lock(&t.streams).contains_key(&id) {
                            return;
                        }
                        tokio::select! {
                            _ = writable.notified() => continue,
                            _ = t.ended() => return,
                        }
                    }
                    let mut f = t.get();
                    f.resize(AT + credit, 0);
                    let n = match lr.read(&mut f[AT..]).await {
                        Ok(0) => {
                            let fin = lock(&t.mux).fin(id);
                            if let Some(f) = fin {
                                t.send(f).await;
                            }
                            return;
                        }
                        Ok(n) => n,
                        Err(_) => {
                            let r = lock(&t.mux).reset(
                                id,
                                ResetReason::Aborted,
                                "the client's connection failed",
                            );
                            lock(&t.streams).remove(&id);
                            t.send(r).await;
                            return;
                        }
                    };
                    f.truncate(AT + n);
                    let ok = lock(&t.mux).data_in_place(id, &mut f[LEN_PREFIX..]).is_ok();
                    f.resize(AT + n + TAG_LEN, 0);
                    if !ok || !t.send_record(f).await {
                        return;
                    }
                }
            }
        };
        let down = {
            let t = self.clone();
            async move {
                // Whatever has arrived for this stream goes out in one `writev`.
                let mut ready: Vec<Chunk> = Vec::with_capacity(DOWN_BATCH);
                loop {
                    match inflow.take(&mut ready, DOWN_BATCH).await {
                        Took::Data => {}
                        Took::Fin | Took::Closed => {
                            // The peer's end, or a reset or the tunnel's end
                            // (then the local connection is cut off too).
                            let _ = lw.shutdown().await;
                            return;
                        }
                    }
                    if write_all_frames(&mut lw, &ready).await.is_err() {
                        let r = lock(&t.mux).reset(id, ResetReason::Aborted, "the local side went away");
                        lock(&t.streams).remove(&id);
                        t.send(r).await;
                        return;
                    }
                    // Credit goes back only for bytes the local side took.
                    let n = ready.iter().map(|c| c.as_ref().len()).sum();
                    let w = lock(&t.mux).consumed(id, n);
                    for chunk in ready.drain(..) {
                        if let Chunk::Copied(v) = chunk {
                            t.put(v);
                        }
                    }
                    if let Some(w) = w {
                        t.send(w).await;
                    }
                }
            }
        };
        tokio::join!(up, down);
        lock(&self.streams).remove(&id);
    }
}

// ---------------------------------------------------------------- exit

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
    let mut wait = Duration::from_millis(500);
    loop {
        let mut ready = false;
        match mailbox(&cfg, &mut ready).await {
            Err(e @ Error::Integrity(_)) => return Err(e),
            Err(e) => {
                // A mailbox that was up counts as a fresh outage: the wait
                // starts short again instead of where the last one ended.
                if ready {
                    wait = Duration::from_millis(500);
                }
                (cfg.log)(format!(
                    "relay connection lost ({e}); reconnecting in {:.1}s",
                    wait.as_secs_f32()
                ));
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Ok(()) => wait = Duration::from_millis(500),
        }
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
    let t = Tunnel::start(s, sealer, opener, End::Server, Some(on_open), cfg.idle);
    t.ended().await;
    Ok(())
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
fn shown_host(host: &Host, port: u16) -> String {
    match host {
        Host::Ip(std::net::IpAddr::V6(a)) => format!("[{a}]:{port}"),
        Host::Ip(a) => format!("{a}:{port}"),
        Host::Name(n) => format!("{}:{port}", burrow_proto::transfer::escape_display(n)),
    }
}

async fn exit_stream(t: Arc<Tunnel>, id: u32, host: Host, port: u16, policy: Arc<Policy>, log: Log) {
    let (inflow, writable) = t.register(id, None);
    let addrs: Vec<SocketAddr> = match &host {
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
    let mut conn = None;
    // The host's addresses now, not only at start: one added since is ours too.
    let own = crate::paths::local_addresses();
    for a in addrs {
        // Every address, after resolution: a name may point anywhere.
        if let Err(why) = policy.check_with(a, &own) {
            last = (ResetReason::NotAllowed, format!("{a}: {why}"));
            continue;
        }
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(a)).await {
            Ok(Ok(s)) => {
                conn = Some(s);
                break;
            }
            Ok(Err(e)) => last = (reset_for(&e), format!("{a}: {e}")),
            Err(_) => last = (ResetReason::TimedOut, format!("{a}: timed out")),
        }
    }
    let Some(s) = conn else {
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
    };
    let _ = s.set_nodelay(true);
    let opened = lock(&t.mux).opened(id);
    t.send(opened).await;
    t.pump(id, s, inflow, writable).await;
}

// ---------------------------------------------------------------- proxy

/// What a proxy needs.
pub struct ProxyConfig {
    /// The relay.
    pub relay: RelayClient,
    /// How to trust it.
    pub trust: RelayTrust,
    /// This installation.
    pub me: Arc<Identity>,
    /// The exit's keys (paired).
    pub exit: PublicIdentity,
    /// Called with a line for the user.
    pub log: Log,
    /// Silence after which a tunnel counts as lost (keepalives every third).
    pub idle: Duration,
}

/// A stream the exit has connected, with its plumbing.
struct Opened {
    t: Arc<Tunnel>,
    id: u32,
    inflow: Arc<Inflow>,
    writable: Arc<Notify>,
}

impl Opened {
    /// Copies between the local connection and the stream until both end.
    async fn pump(self, s: TcpStream) {
        let _ = s.set_nodelay(true);
        self.t.pump(self.id, s, self.inflow, self.writable).await;
    }
}

/// The proxy: one tunnel to the exit, reopened when it ends.
pub struct Proxy {
    cfg: ProxyConfig,
    tunnel: tokio::sync::Mutex<Option<Arc<Tunnel>>>,
}

impl Proxy {
    /// A proxy (connects on first use).
    pub fn new(cfg: ProxyConfig) -> Arc<Self> {
        Arc::new(Self {
            cfg,
            tunnel: tokio::sync::Mutex::new(None),
        })
    }

    /// The live tunnel, opening one if needed.
    async fn tunnel(&self) -> Result<Arc<Tunnel>, Error> {
        let mut g = self.tunnel.lock().await;
        if let Some(t) = g.as_ref()
            && !t.is_closed()
        {
            return Ok(t.clone());
        }
        let mut link = relay_link(&self.cfg.relay, &self.cfg.trust, &self.cfg.me).await?;
        link.send(&Msg::Connect {
            target: self.cfg.exit.x25519,
        })
        .await?;
        match link.recv().await? {
            Msg::Init { peer, .. } if peer == self.cfg.exit.x25519 => {}
            _ => return Err(Error::RelayProtocol("the relay did not start the session".into())),
        }
        let mut s = link.s;
        let (sealer, opener, seen) = end_to_end(&mut s, &self.cfg.me, Side::Responder).await?;
        if seen != self.cfg.exit.x25519 {
            return Err(Error::Integrity(
                "the exit presented another key than the paired one (refusing)".into(),
            ));
        }
        (self.cfg.log)(format!(
            "tunnel to the exit {} is up",
            self.cfg.exit.fingerprint()
        ));
        let t = Tunnel::start(s, sealer, opener, End::Client, None, self.cfg.idle);
        *g = Some(t.clone());
        Ok(t)
    }

    /// Opens a stream to `host:port`; on success, the stream's plumbing.
    async fn open(&self, host: Host, port: u16) -> Result<Opened, (ResetReason, String)> {
        let t = match self.tunnel().await {
            Ok(t) => t,
            Err(e) => {
                (self.cfg.log)(format!("cannot reach the exit: {e}"));
                return Err((ResetReason::Failure, e.to_string()));
            }
        };
        let (tx, opened) = oneshot::channel();
        // Room in the writer's queue first; then the id, the stream's entry
        // and the queued Open under one lock, so that Opens leave in the
        // order of their ids whatever the number of clients opening at once
        // (the exit refuses an id below one it has seen).
        let Ok(permit) = t.out.reserve().await else {
            return Err((ResetReason::Failure, "the tunnel closed".into()));
        };
        let (id, inflow, writable) = {
            let mut streams = lock(&t.streams);
            let (id, frame) = lock(&t.mux)
                .open(host, port)
                .map_err(|e| (ResetReason::Failure, e.to_string()))?;
            // Registered before Open goes out: bytes the destination sends
            // right after connecting (an SSH banner) wait in the stream's queue.
            let (inflow, writable) = Tunnel::register_in(&mut streams, id, Some(tx));
            permit.send(as_record(&frame));
            (id, inflow, writable)
        };
        match tokio::time::timeout(CONNECT_TIMEOUT + Duration::from_secs(5), opened).await {
            Ok(Ok(Ok(()))) => Ok(Opened {
                t,
                id,
                inflow,
                writable,
            }),
            Ok(Ok(Err(r))) => Err(r),
            _ => {
                // Given up: the stream is freed here and at the exit (a late
                // Opened is then ignored), or each such request would keep a
                // stream's share of the session until the tunnel ends.
                lock(&t.streams).remove(&id);
                let r = lock(&t.mux).reset(id, ResetReason::TimedOut, "the proxy stopped waiting");
                t.send(r).await;
                Err((ResetReason::TimedOut, "the exit did not answer in time".into()))
            }
        }
    }

    /// Serves SOCKS5 and HTTP CONNECT on `listener` forever.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        while let Ok((s, _)) = listener.accept().await {
            let me = self.clone();
            tokio::spawn(async move { me.client(s).await });
        }
    }

    /// Forwards every connection to `listener` to `host:port` through the exit.
    pub async fn forward(self: Arc<Self>, listener: TcpListener, host: Host, port: u16) {
        while let Ok((s, _)) = listener.accept().await {
            let (me, host) = (self.clone(), host.clone());
            tokio::spawn(async move {
                if let Ok(o) = me.open(host, port).await {
                    o.pump(s).await;
                }
            });
        }
    }

    async fn client(&self, mut s: TcpStream) {
        let mut buf = Vec::with_capacity(512);
        if !read_more(&mut s, &mut buf).await {
            return;
        }
        let (target, is_socks) = if buf[0] == 5 {
            let (answer, used) = loop {
                match socks::greeting(&buf) {
                    Ok(Some(x)) => break x,
                    Ok(None) if read_more(&mut s, &mut buf).await => {}
                    Ok(None) => return,
                    Err(_) => {
                        let _ = s.write_all(&[5, 0xff]).await;
                        return;
                    }
                }
            };
            if s.write_all(&answer).await.is_err() {
                return;
            }
            buf.drain(..used);
            let (t, used) = loop {
                match socks::request(&buf) {
                    Ok(Some(x)) => break x,
                    Ok(None) if read_more(&mut s, &mut buf).await => {}
                    Ok(None) => return,
                    Err(e) => {
                        let _ = s.write_all(&socks::reply(e.reply_code())).await;
                        return;
                    }
                }
            };
            buf.drain(..used);
            (t, true)
        } else {
            let (t, used) = loop {
                match socks::http_connect(&buf) {
                    Ok(Some(x)) => break x,
                    Ok(None) if read_more(&mut s, &mut buf).await => {}
                    Ok(None) => return,
                    Err(e) => {
                        let body = e.to_string();
                        let head = format!(
                            "HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = s.write_all(head.as_bytes()).await;
                        return;
                    }
                }
            };
            buf.drain(..used);
            (t, false)
        };
        let shown = shown_host(&target.host, target.port);
        match self.open(target.host, target.port).await {
            Ok(o) => {
                let ok = if is_socks {
                    socks::reply_for(None).to_vec()
                } else {
                    socks::http_reply(None)
                };
                if s.write_all(&ok).await.is_err() {
                    return;
                }
                if !buf.is_empty() {
                    // Bytes the client sent right after its request.
                    let f = lock(&o.t.mux).data(o.id, &buf);
                    if let Ok(f) = f {
                        o.t.send(f).await;
                    }
                }
                o.pump(s).await;
            }
            Err((reason, msg)) => {
                // The reason comes from the exit: shown escaped.
                let msg_shown = burrow_proto::transfer::escape_display(&msg);
                (self.cfg.log)(format!("{shown}: {msg_shown}"));
                let fail = if is_socks {
                    socks::reply_for(Some(reason)).to_vec()
                } else {
                    socks::http_reply(Some((reason, &msg)))
                };
                let _ = s.write_all(&fail).await;
            }
        }
    }
}

/// Reads more of a client's request (bounded in size and time).
async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    if buf.len() > 8 * 1024 {
        return false;
    }
    let mut chunk = [0u8; 1024];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, s.read(&mut chunk)).await {
        Ok(Ok(n)) if n > 0 => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// Takes at most 7 bytes per call, gathered across slices.
    struct Trickle(Vec<u8>);

    impl tokio::io::AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            b: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let n = b.len().min(7);
            self.0.extend_from_slice(&b[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let mut n = 0;
            for b in bufs {
                let k = b.len().min(7 - n);
                self.0.extend_from_slice(&b[..k]);
                n += k;
                if n == 7 {
                    break;
                }
            }
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// 100,000 one-byte frames for a stream whose local side does not
    /// read: held in a few gathered copies, not a buffer per frame.
    #[tokio::test]
    async fn one_byte_frames_are_held_in_gathered_copies() {
        let bufs = Arc::new(RecvBufs::default());
        let inflow = Inflow::default();
        for crowded in [false, true] {
            for i in 0..100_000usize {
                let mut v = bufs.take();
                v[i % 1000] = i as u8;
                let shared = bufs.share(v);
                let at = i % 1000;
                inflow.push(&shared, at..at + 1, crowded, Vec::new);
            }
        }
        let (bytes, mem) = inflow.held();
        assert_eq!(bytes, 200_000);
        assert!(mem <= 2 * bytes + GATHER, "{mem} bytes hold {bytes}");
        // Everything comes out, in order, and the end after it.
        inflow.finish();
        let mut got = Vec::new();
        let mut out = Vec::new();
        while let Took::Data = inflow.take(&mut out, 16).await {
            for c in out.drain(..) {
                got.extend_from_slice(c.as_ref());
            }
        }
        assert_eq!(got.len(), 200_000);
        assert!(got.iter().enumerate().all(|(i, &b)| b == (i % 100_000) as u8));
    }

    #[tokio::test]
    async fn frames_are_written_whole_and_in_order_across_partial_writes() {
        let frames: Vec<Vec<u8>> = (0..9u8).map(|i| vec![i; usize::from(i) * 5]).collect();
        let mut w = Trickle(Vec::new());
        write_all_frames(&mut w, &frames).await.unwrap();
        assert_eq!(w.0, frames.concat());
    }

    #[test]
    fn as_record_leaves_room_for_prefix_and_tag() {
        let r = as_record(b"frame");
        assert_eq!(r.len(), LEN_PREFIX + 5 + TAG_LEN);
        assert_eq!(&r[LEN_PREFIX..LEN_PREFIX + 5], b"frame");
    }
}
