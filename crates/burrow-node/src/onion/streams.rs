//! Streams over one circuit, both ends: a [`Mux`] whose frames travel in
//! relay DATA cells, each stream tied to a TCP socket by a reader and a
//! writer task. The exit opens sockets for `Open` frames; the client ties
//! SOCKS connections to streams it opened.
//!
//! Flow control is the mux's per stream: a reader may read only the
//! credit the other end granted (an atomic counter the owner tops up), a
//! writer reports what it wrote so the window can be granted again. So
//! what a circuit holds is bounded by the mux pool, whatever the peer or
//! the socket does.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};

use burrow_proto::onion::cell::MAX_RELAY_DATA;
use burrow_proto::tunnel::mux::{End, Event, Host, Limits, Mux, ResetReason};

/// Largest data in one stream frame that fits a cell.
pub(crate) const CHUNK: usize = MAX_RELAY_DATA - Mux::DATA_HEADER;
/// What one circuit's streams may hold, all together (windows granted and
/// data not yet written).
pub(crate) const CIRCUIT_POOL: u64 = 8 * 1024 * 1024;
/// Streams per circuit at most.
pub(crate) const MAX_STREAMS: usize = 256;

/// What a stream's tasks report to the circuit's owner.
#[derive(Debug)]
pub(crate) enum StreamEvent {
    /// Bytes read from the socket (within the credit), after
    /// [`Mux::DATA_HEADER`] bytes of room: the frame is built in place.
    Read(u32, Vec<u8>),
    /// The socket's read side ended.
    Eof(u32),
    /// This many bytes were written to the socket.
    Wrote(u32, usize),
    /// The socket failed.
    Failed(u32, String),
}

/// Tagged with the circuit they belong to.
pub(crate) type Tagged<K> = (K, StreamEvent);

struct Attached {
    credit: Arc<AtomicUsize>,
    notify: Arc<Notify>,
    /// Ends the reader (blocked in a read the peer will never answer).
    kill: Arc<Notify>,
    /// Credit handed to the reader, and bytes it sent back as frames.
    granted: usize,
    used: usize,
    to_socket: mpsc::UnboundedSender<Option<Vec<u8>>>,
    dead: Arc<AtomicBool>,
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.dead.store(true, Ordering::Relaxed);
        self.notify.notify_one();
        self.kill.notify_one();
        let _ = self.to_socket.send(None);
    }
}

/// Bytes a stream's writer gathers for one write at most.
const WRITE_BATCH: usize = 64 * 1024;

/// Writes every chunk of `batch`, in order, with as few writes as the
/// socket takes.
async fn write_batch<W: AsyncWrite + Unpin>(wr: &mut W, batch: &[Vec<u8>]) -> std::io::Result<()> {
    if let [one] = batch {
        return wr.write_all(one).await;
    }
    let mut slices: Vec<std::io::IoSlice<'_>> = batch
        .iter()
        .filter(|b| !b.is_empty())
        .map(|b| std::io::IoSlice::new(b))
        .collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let n = wr.write_vectored(rest).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        std::io::IoSlice::advance_slices(&mut rest, n);
    }
    Ok(())
}

/// What the owner must do after a frame came in.
#[derive(Debug)]
pub(crate) enum Action {
    /// Send this frame back through the circuit.
    Send(Vec<u8>),
    /// The other end asks for a stream (exit side): connect, then
    /// [`Streams::attach`] or [`Streams::refuse`].
    Open(u32, Host, u16),
    /// A stream this end opened was accepted (client side).
    Opened(u32),
    /// A stream ended with an error (the client tells its application).
    Reset(u32, ResetReason, String),
}

/// The streams of one circuit end.
pub(crate) struct Streams<K: Copy + Send + 'static> {
    key: K,
    pub(crate) mux: Mux,
    attached: HashMap<u32, Attached>,
    /// Bytes for streams still connecting (the first request rides with
    /// the open); at most the stream's first window each.
    early: HashMap<u32, Vec<Vec<u8>>>,
    events: mpsc::UnboundedSender<Tagged<K>>,
}

impl<K: Copy + Send + 'static> Streams<K> {
    /// The streams of circuit `key`; their tasks report on `events`.
    pub(crate) fn new(key: K, end: End, events: mpsc::UnboundedSender<Tagged<K>>) -> Self {
        Self {
            key,
            mux: Mux::new(
                end,
                Limits {
                    pool: CIRCUIT_POOL,
                    max_streams: MAX_STREAMS,
                },
            ),
            attached: HashMap::new(),
            early: HashMap::new(),
            events,
        }
    }

    /// Ties `stream` to `socket`: its reader may read what the mux allows.
    pub(crate) fn attach<S: AsyncRead + AsyncWrite + Send + 'static>(&mut self, stream: u32, socket: S) {
        let (mut rd, mut wr) = tokio::io::split(socket);
        let credit = Arc::new(AtomicUsize::new(0));
        let notify = Arc::new(Notify::new());
        let dead = Arc::new(AtomicBool::new(false));
        let kill = Arc::new(Notify::new());
        let (to_socket, mut from_owner) = mpsc::unbounded_channel::<Option<Vec<u8>>>();
        let key = self.key;
        let events = self.events.clone();
        {
            let (credit, notify, dead, kill, events) = (
                credit.clone(),
                notify.clone(),
                dead.clone(),
                kill.clone(),
                events.clone(),
            );
            tokio::spawn(async move {
                use bytes::BufMut;
                loop {
                    if dead.load(Ordering::Relaxed) {
                        return;
                    }
                    let c = credit.load(Ordering::Acquire);
                    if c == 0 {
                        tokio::select! {
                            _ = notify.notified() => continue,
                            _ = kill.notified() => return,
                        }
                    }
                    let want = c.min(CHUNK);
                    // Read into the frame itself (no zeroing, no copy);
                    // a read the peer never answers must not keep the
                    // socket open after the stream is gone.
                    let mut frame = Vec::with_capacity(Mux::DATA_HEADER + want);
                    frame.extend_from_slice(&[0; Mux::DATA_HEADER]);
                    let mut room = (&mut frame).limit(want);
                    let r = tokio::select! {
                        r = rd.read_buf(&mut room) => r,
                        _ = kill.notified() => return,
                    };
                    match r {
                        Ok(0) => {
                            let _ = events.send((key, StreamEvent::Eof(stream)));
                            return;
                        }
                        Ok(n) => {
                            credit.fetch_sub(n, Ordering::AcqRel);
                            if events.send((key, StreamEvent::Read(stream, frame))).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            let _ = events.send((key, StreamEvent::Failed(stream, e.to_string())));
                            return;
                        }
                    }
                }
            });
        }
        tokio::spawn(async move {
            // What is queued goes out in one write (up to WRITE_BATCH): a
            // cell's data at a time would cost a syscall and a wake-up of
            // the application per 8 KiB. An empty chunk is the peer's FIN,
            // `None` the end.
            loop {
                let Some(Some(first)) = from_owner.recv().await else {
                    return;
                };
                let mut fin = first.is_empty();
                let mut batch = vec![first];
                let mut queued = batch[0].len();
                let mut end = false;
                while !fin && queued < WRITE_BATCH {
                    match from_owner.try_recv() {
                        Ok(Some(b)) if b.is_empty() => fin = true,
                        Ok(Some(b)) => {
                            queued += b.len();
                            batch.push(b);
                        }
                        Ok(None) => {
                            end = true;
                            break;
                        }
                        Err(_) => break,
                    }
                }
                if queued > 0 {
                    if let Err(e) = write_batch(&mut wr, &batch).await {
                        let _ = events.send((key, StreamEvent::Failed(stream, e.to_string())));
                        return;
                    }
                    if events.send((key, StreamEvent::Wrote(stream, queued))).is_err() {
                        return;
                    }
                }
                if fin {
                    let _ = wr.shutdown().await;
                }
                if end {
                    return;
                }
            }
        });
        if let Some(early) = self.early.remove(&stream) {
            for b in early {
                let _ = to_socket.send(Some(b));
            }
        }
        self.attached.insert(
            stream,
            Attached {
                credit,
                notify,
                kill,
                granted: 0,
                used: 0,
                to_socket,
                dead,
            },
        );
        self.grant(stream);
    }

    /// Refuses a stream the other end asked for: the Reset frame to send.
    pub(crate) fn refuse(&mut self, stream: u32, reason: ResetReason, message: &str) -> Vec<u8> {
        self.attached.remove(&stream);
        self.early.remove(&stream);
        self.mux.reset(stream, reason, message)
    }

    /// Tops the reader's credit up to what the mux allows now.
    fn grant(&mut self, stream: u32) {
        let credit = usize::try_from(self.mux.credit_total(stream)).unwrap_or(usize::MAX);
        if let Some(a) = self.attached.get_mut(&stream) {
            let outstanding = a.granted - a.used;
            if credit > outstanding {
                let more = credit - outstanding;
                a.granted += more;
                a.credit.fetch_add(more, Ordering::AcqRel);
                a.notify.notify_one();
            }
        }
    }

    /// A frame from the other end.
    pub(crate) fn on_frame(&mut self, frame: &[u8]) -> Result<Vec<Action>, String> {
        let ev = self.mux.handle(frame).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        match ev {
            Event::Open { stream, host, port } => out.push(Action::Open(stream, host, port)),
            Event::Opened { stream } => out.push(Action::Opened(stream)),
            Event::Data { stream, bytes } => match self.attached.get(&stream) {
                Some(a) => {
                    let _ = a.to_socket.send(Some(bytes.to_vec()));
                }
                None if self.mux.contains(stream) => {
                    // Still connecting: kept for the socket (within the
                    // stream's window, so bounded).
                    self.early.entry(stream).or_default().push(bytes.to_vec());
                }
                None => {
                    // A stream no longer open: count it consumed so the
                    // pool is not held.
                    let n = bytes.len();
                    if let Some(w) = self.mux.consumed(stream, n) {
                        out.push(Action::Send(w));
                    }
                }
            },
            Event::Writable { stream } => self.grant(stream),
            Event::Fin { stream } => {
                match self.attached.get(&stream) {
                    Some(a) => {
                        let _ = a.to_socket.send(Some(Vec::new()));
                    }
                    // Still connecting: the half-close waits with the data.
                    None => self.early.entry(stream).or_default().push(Vec::new()),
                }
                if !self.mux.contains(stream) {
                    // Both ways finished: the writer drains what it holds, then ends.
                    self.attached.remove(&stream);
                }
            }
            Event::Reset {
                stream,
                reason,
                message,
            } => {
                self.attached.remove(&stream);
                self.early.remove(&stream);
                out.push(Action::Reset(stream, reason, message));
            }
            Event::Refused { reset, .. } => out.push(Action::Send(reset)),
            Event::Nothing => {}
        }
        Ok(out)
    }

    /// An event from one of this circuit's stream tasks: the frames to send.
    pub(crate) fn on_event(&mut self, ev: StreamEvent) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        match ev {
            StreamEvent::Read(stream, mut frame) => {
                if let Some(a) = self.attached.get_mut(&stream) {
                    a.used += frame.len().saturating_sub(Mux::DATA_HEADER);
                }
                if self.mux.data_in_place(stream, &mut frame).is_ok() {
                    out.push(frame);
                }
            }
            StreamEvent::Eof(stream) => {
                if let Some(f) = self.mux.fin(stream) {
                    out.push(f);
                }
                if !self.mux.contains(stream) {
                    self.attached.remove(&stream);
                }
            }
            StreamEvent::Wrote(stream, n) => {
                if let Some(w) = self.mux.consumed(stream, n) {
                    out.push(w);
                }
            }
            StreamEvent::Failed(stream, why) => {
                self.attached.remove(&stream);
                out.push(self.mux.reset(stream, ResetReason::Failure, &why));
            }
        }
        out
    }

    /// Drops a stream's socket (it was reset).
    pub(crate) fn detach(&mut self, stream: u32) {
        self.attached.remove(&stream);
        self.early.remove(&stream);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a socket gives becomes `Data` frames built where it was read,
    /// never more than the stream's credit in one.
    #[tokio::test]
    async fn socket_bytes_become_data_frames_in_place() {
        use burrow_proto::tunnel::mux::Frame;
        use tokio::io::AsyncWriteExt;
        let (events, mut rx) = mpsc::unbounded_channel();
        let mut s: Streams<u32> = Streams::new(7, End::Client, events);
        let (id, _open) = s.mux.open(Host::Name("x".into()), 80).unwrap();
        let (mut app, theirs) = tokio::io::duplex(1 << 20);
        s.attach(id, theirs);
        let sent = vec![0x5au8; 3 * CHUNK];
        app.write_all(&sent).await.unwrap();
        let mut got = Vec::new();
        while got.len() < sent.len() {
            let (key, ev) = tokio::time::timeout(std::time::Duration::from_secs(2), rx.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(key, 7);
            for f in s.on_event(ev) {
                match Frame::decode(&f).unwrap() {
                    Frame::Data { stream, bytes } => {
                        assert_eq!(stream, id);
                        assert!(bytes.len() <= CHUNK);
                        got.extend_from_slice(bytes);
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
        assert_eq!(got, sent);
    }

    /// A batch goes out whole and in order, however little the socket
    /// takes at a time.
    #[tokio::test]
    async fn a_batch_is_written_whole_and_in_order() {
        let (mut a, mut b) = tokio::io::duplex(7);
        let batch: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 100 + usize::from(i)]).collect();
        let want: Vec<u8> = batch.concat();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            b.read_to_end(&mut got).await.unwrap();
            got
        });
        write_batch(&mut a, &batch).await.unwrap();
        drop(a);
        assert_eq!(reader.await.unwrap(), want);
    }

    /// A circuit that dies takes its streams' sockets with it: the
    /// application reads EOF instead of waiting forever.
    #[tokio::test]
    async fn dropping_the_streams_closes_their_sockets() {
        let (events, _rx) = mpsc::unbounded_channel();
        let mut s: Streams<u32> = Streams::new(0, End::Client, events);
        let (id, _open) = s.mux.open(Host::Name("x".into()), 80).unwrap();
        let (mut app, theirs) = tokio::io::duplex(1024);
        s.attach(id, theirs);
        drop(s);
        let mut b = [0u8; 8];
        let n = tokio::time::timeout(std::time::Duration::from_secs(2), app.read(&mut b)).await;
        assert!(matches!(n, Ok(Ok(0))), "{n:?}");
    }
}
