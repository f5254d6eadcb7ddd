//! One tunnel: the mux machine driven over the end-to-end session, its
//! frame writer, the streams and their buffers, liveness.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc, oneshot, watch};

use burrow_proto::session::{Inbox, LEN_PREFIX, MAX_RECORD, Opener, Sealer, TAG_LEN};
use burrow_proto::tunnel::mux::{End, Event, Host, Limits, Mux, ResetReason};

use super::*;

/// What the exit does with a stream the proxy opens.
pub(super) type OnOpen = Arc<dyn Fn(Arc<Tunnel>, u32, Host, u16) + Send + Sync>;

/// One stream's plumbing inside a tunnel.
pub(super) struct StreamIo {
    pub(super) inflow: Arc<Inflow>,
    pub(super) writable: Arc<Notify>,
    pub(super) opened: Option<oneshot::Sender<Result<(), (ResetReason, String)>>>,
}

/// A stream the proxy's end has asked the exit for ([`Tunnel::open_stream`]).
pub(super) struct Opening {
    pub(super) id: u32,
    pub(super) inflow: Arc<Inflow>,
    pub(super) writable: Arc<Notify>,
    /// The exit's answer: `Opened`, or the reset that refused it.
    pub(super) answer: oneshot::Receiver<Result<(), (ResetReason, String)>>,
}

/// A running tunnel: the mux, the frame writer, the streams.
pub(super) struct Tunnel {
    pub(super) mux: Mutex<Mux>,
    pub(super) out: mpsc::Sender<Vec<u8>>,
    pub(super) streams: Mutex<HashMap<u32, StreamIo>>,
    /// Becomes true when the session ends (either direction failed).
    pub(super) dead: watch::Sender<bool>,
    /// Spare 64 KiB buffers: no allocation (and no page faults) per frame.
    pub(super) pool: Mutex<Vec<Vec<u8>>>,
    /// The reader's buffers.
    recv_bufs: Arc<RecvBufs>,
    /// When the session started, and the last read and write since then
    /// (milliseconds): the keepalive timer's inputs.
    pub(super) born: std::time::Instant,
    pub(super) last_rx: std::sync::atomic::AtomicU64,
    pub(super) last_tx: std::sync::atomic::AtomicU64,
    /// Bytes before each mux frame in a record: 0 on a relay session, 1 on
    /// a mesh link (the TUNNEL_REQ / TUNNEL_DATA / TUNNEL_CLOSE id).
    head: usize,
    meter: Option<Arc<Meter>>,
}

/// How a tunnel's records carry mux frames.
#[derive(Debug, Clone)]
pub(crate) enum Framing {
    /// One mux frame per record (the connector's end-to-end session).
    Session,
    /// One seed 002 packet per record: the TUNNEL_* id, then the mux frame;
    /// `already`: bytes the link's handshake read past its end.
    Mesh {
        /// Read, not yet consumed.
        already: Vec<u8>,
        /// Where the session's bytes are counted (the node's metrics).
        meter: Arc<Meter>,
    },
}

/// Bytes a tunnel's connection carried (records, framing included).
#[derive(Debug, Default)]
pub(crate) struct Meter {
    /// Read from the connection.
    pub rx: std::sync::atomic::AtomicU64,
    /// Written to it.
    pub tx: std::sync::atomic::AtomicU64,
}

/// The mesh packet id that carries a mux frame (by its type byte).
fn mesh_id(frame: &[u8]) -> u8 {
    use burrow_proto::mesh::packet::PacketId;
    match frame.first() {
        Some(0x01) => PacketId::TunnelReq as u8,
        Some(0x06) => PacketId::TunnelClose as u8,
        _ => PacketId::TunnelData as u8,
    }
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
pub(super) struct Inflow {
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
pub(super) fn as_record(frame: &[u8]) -> Vec<u8> {
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
    pub(super) fn start(
        s: TcpStream,
        mut sealer: Sealer,
        mut opener: Opener,
        end: End,
        on_open: Option<OnOpen>,
        idle: Duration,
        framing: Framing,
    ) -> Arc<Self> {
        let (head, already, meter) = match framing {
            Framing::Session => (0, Vec::new(), None),
            Framing::Mesh { already, meter } => (1, already, Some(meter)),
        };
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
            head,
            meter,
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
                if let Some(m) = &t1.meter {
                    let n: usize = batch.iter().map(Vec::len).sum();
                    m.tx.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
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
            // Bytes that came with the handshake, before this reader.
            let n = already.len().min(inbox.space().len());
            inbox.space()[..n].copy_from_slice(&already[..n]);
            inbox.filled(n);
            let mut plains: Vec<std::ops::Range<usize>> = Vec::new();
            'session: loop {
                let mut failed = false;
                loop {
                    match inbox.open_next(&mut opener) {
                        // On a mesh link the TUNNEL_* id comes first; it
                        // must be the one for the frame that follows.
                        Ok(Some(p)) if head == 1 => {
                            let id = inbox.buffer().get(p.start).copied();
                            let frame = inbox.buffer().get(p.start + 1..p.end).unwrap_or_default();
                            if id != Some(mesh_id(frame)) || frame.is_empty() {
                                tracing::warn!(
                                    "tunnel: a record that is not a TUNNEL packet; closing every stream"
                                );
                                failed = true;
                                break;
                            }
                            plains.push(p.start + 1..p.end);
                        }
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
                        if let Some(m) = &t2.meter {
                            m.rx.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                        }
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
                    let _ = t3.out.try_send(t3.rec(&ping));
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
    pub(super) async fn ended(&self) {
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
                    let _ = self.out.try_send(self.rec(&r));
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
                let _ = self.out.try_send(self.rec(&reset));
            }
            Event::Nothing => {}
        }
    }

    pub(super) fn register(
        &self,
        stream: u32,
        opened: Option<oneshot::Sender<Result<(), (ResetReason, String)>>>,
    ) -> (Arc<Inflow>, Arc<Notify>) {
        Self::register_in(&mut lock(&self.streams), stream, opened)
    }

    /// [`Tunnel::register`] with the streams' lock already held.
    pub(super) fn register_in(
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

    /// Opens a stream to `host:port` from the proxy's end: queues its
    /// `Open` and registers the stream (so that bytes the destination sends
    /// at once, an SSH banner, wait in its queue). Returns the id, the
    /// stream's plumbing, and what the exit answers.
    ///
    /// Room in the writer's queue comes first; then the id, the stream's
    /// entry and the queued `Open` under one lock, so that `Open`s leave in
    /// the order of their ids whatever the number of clients opening at
    /// once, on any runtime (the exit refuses an id below one it has seen).
    pub(super) async fn open_stream(&self, host: Host, port: u16) -> Result<Opening, (ResetReason, String)> {
        let (tx, answer) = oneshot::channel();
        let Ok(permit) = self.out.reserve().await else {
            return Err((ResetReason::Failure, "the tunnel closed".into()));
        };
        let mut streams = lock(&self.streams);
        let (id, frame) = lock(&self.mux)
            .open(host, port)
            .map_err(|e| (ResetReason::Failure, e.to_string()))?;
        let (inflow, writable) = Tunnel::register_in(&mut streams, id, Some(tx));
        permit.send(self.rec(&frame));
        Ok(Opening {
            id,
            inflow,
            writable,
            answer,
        })
    }

    /// Queues a frame (plaintext); it is copied into record layout.
    pub(super) async fn send(&self, frame: Vec<u8>) -> bool {
        self.out.send(self.rec(&frame)).await.is_ok()
    }

    /// `frame` laid out as a record of this tunnel: [`as_record`], with the
    /// TUNNEL_* id first on a mesh link.
    pub(super) fn rec(&self, frame: &[u8]) -> Vec<u8> {
        if self.head == 0 {
            return as_record(frame);
        }
        let mut r = Vec::with_capacity(LEN_PREFIX + 1 + frame.len() + TAG_LEN);
        r.extend_from_slice(&[0; LEN_PREFIX]);
        r.push(mesh_id(frame));
        r.extend_from_slice(frame);
        r.extend_from_slice(&[0; TAG_LEN]);
        r
    }

    /// Queues a frame already laid out as a record (see [`as_record`]).
    async fn send_record(&self, record: Vec<u8>) -> bool {
        self.out.send(record).await.is_ok()
    }

    pub(super) fn is_closed(&self) -> bool {
        *self.dead.borrow() || self.out.is_closed()
    }

    /// Copies between a local socket and a stream until both directions end.
    pub(super) async fn pump(
        self: Arc<Self>,
        id: u32,
        local: TcpStream,
        inflow: Arc<Inflow>,
        writable: Arc<Notify>,
    ) {
        let (mut lr, mut lw) = local.into_split();
        let up = {
            let t = self.clone();
            async move {
                // Data goes straight into a frame laid out as a record:
                // [prefix][Data header][bytes][tag], sealed in place later.
                let at = LEN_PREFIX + t.head + Mux::DATA_HEADER;
                loop {
                    let credit = lock(&t.mux)
                        .credit(id)
                        .min(burrow_proto::tunnel::mux::MAX_DATA - t.head);
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
                    f.resize(at + credit, 0);
                    let n = match lr.read(&mut f[at..]).await {
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
                    f.truncate(at + n);
                    if t.head == 1 {
                        f[LEN_PREFIX] = burrow_proto::mesh::packet::PacketId::TunnelData as u8;
                    }
                    let ok = lock(&t.mux)
                        .data_in_place(id, &mut f[LEN_PREFIX + t.head..])
                        .is_ok();
                    f.resize(at + n + TAG_LEN, 0);
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

    /// Issue 14, 7: hundreds of clients open streams at once on a
    /// multi-threaded runtime while the writer's queue is full (the
    /// connection's buffers are tiny and the peer does not read yet): the
    /// `Open`s still reach the peer in the order of their ids. (With the id
    /// taken before waiting for room, as before the fix, two opens racing
    /// on two threads left out of order and the exit ended the tunnel.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn opens_leave_in_id_order_when_many_wait_for_room() {
        use burrow_proto::channel::pake::SessionKey;
        use burrow_proto::session::handshake_in_memory;
        use burrow_proto::tunnel::mux::Frame;
        const OPENS: usize = 600;
        let (a, b) = handshake_in_memory(
            &SessionKey::from_bytes([7; 32]),
            "open order test",
            crate::platform::aead(),
            &mut burrow_proto::random::seeded(7),
        )
        .unwrap();
        let (sa, oa) = a.split();
        let (_, mut ob) = b.split();
        let l = tokio::net::TcpSocket::new_v4().unwrap();
        l.set_recv_buffer_size(4096).unwrap();
        l.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let l = l.listen(1).unwrap();
        let c = tokio::net::TcpSocket::new_v4().unwrap();
        c.set_send_buffer_size(4096).unwrap();
        let client = c.connect(l.local_addr().unwrap()).await.unwrap();
        let (mut peer, _) = l.accept().await.unwrap();
        let t = Tunnel::start(
            client,
            sa,
            oa,
            End::Client,
            None,
            Duration::from_secs(60),
            Framing::Session,
        );
        let opens: Vec<_> = (0..OPENS)
            .map(|i| {
                let t = t.clone();
                tokio::spawn(async move {
                    let host = Host::Name(format!("host{i}.example"));
                    t.open_stream(host, 80).await.map(|o| o.id)
                })
            })
            .collect();
        // Let the queue fill and the opens pile up behind it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut inbox = Inbox::new(256 * 1024);
        let mut ids = Vec::new();
        loop {
            while let Some(r) = inbox.open_next(&mut ob).unwrap() {
                if let Frame::Open { stream, .. } = Frame::decode(&inbox.buffer()[r]).unwrap() {
                    ids.push(stream);
                }
            }
            if ids.len() == OPENS {
                break;
            }
            let n = tokio::time::timeout(Duration::from_secs(10), peer.read(inbox.space()))
                .await
                .unwrap_or_else(|_| panic!("the Opens stopped coming after {}", ids.len()))
                .unwrap();
            assert!(n > 0, "the tunnel closed after {} Opens", ids.len());
            inbox.filled(n);
        }
        for o in opens {
            o.await.unwrap().unwrap();
        }
        let late: Vec<_> = ids.windows(2).filter(|w| w[1] <= w[0]).map(|w| w[1]).collect();
        assert!(late.is_empty(), "{} Opens out of id order: {late:?}", late.len());
    }

    #[test]
    fn as_record_leaves_room_for_prefix_and_tag() {
        let r = as_record(b"frame");
        assert_eq!(r.len(), LEN_PREFIX + 5 + TAG_LEN);
        assert_eq!(&r[LEN_PREFIX..LEN_PREFIX + 5], b"frame");
    }
}
