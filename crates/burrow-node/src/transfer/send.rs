//! The sending side: the connection task and its file-reading worker.
//!
//! ```text
//! task                                   worker (blocking)
//!   Sender::new → offer out
//!   ... Accept/Continue → schedule ───►   for each scheduled file:
//!                                           check a resume prefix, Begin
//!   begin (Skip)             ◄── Begin      read + hash into a DataBatch
//!   sent_data, seal, write   ◄── Batch      (or a ZData record)
//!   end_file (FileEnd)       ◄── End
//!   next_file → Done         ◄── Finished
//!   ... Ack → report
//!   written batches ──────────────────►   reused
//! ```
//!
//! The worker runs ahead of the connection by the machine's
//! [`schedule`](burrow_proto::transfer::Sender::schedule), so many small
//! files cost no round trip each between the two; the machine still checks
//! every step.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use burrow_proto::transfer::{
    Attempt, MAX_CHUNK, Message, Next, OfferKind, ResumeAt, Sender, TxEvent, UNKNOWN_SIZE,
};

use super::link::{DATA_SPACE, DataBatch, Link};
use super::{Obs, Payload, Progress, Timer, file_bytes, obs_lock};
use crate::error::Error;
use crate::{Compress, Event, SendReport};

/// Batches in flight between the worker and the socket (~240 KiB each).
const BATCHES: usize = 4;
/// Files at most this large are read whole into one record of their own
/// (a copy of a few KiB), so that many small files share the writes and
/// wake-ups that a batch each would cost.
const SMALL_FILE: u64 = 32 * 1024;
/// The worker hands steps over in groups of at most this many (or
/// [`GROUP_BYTES`] of small records), and at every batch.
const GROUP_STEPS: usize = 256;
const GROUP_BYTES: usize = 256 * 1024;
/// Items waiting to be written before the task stops taking more from the worker.
const BACKLOG: usize = 3;
/// How long a failing sender waits for the receiver's reason, or to tell its own.
const LAST_WORDS: Duration = Duration::from_secs(2);

/// What a sender remembers between the connections of one session.
#[derive(Default)]
pub(crate) struct SendState {
    /// Connections used so far (0 before the first).
    pub runs: u32,
    /// File bytes sent, over every connection.
    pub sent: u64,
    /// Bytes the receiver had from an earlier session (first connection only).
    pub resumed: u64,
    /// When data started to flow.
    pub started: Option<Instant>,
}

/// From the worker to the task, in the order things go on the wire.
enum Filled {
    /// The scheduled file `index` starts: at `start` (a resume proposal whose
    /// prefix matched) or at 0.
    Begin { index: usize, start: Option<u64> },
    /// `Data` records of the current file, ready to seal.
    Batch(DataBatch),
    /// A `ZData` record's plaintext, standing for `bytes` file bytes.
    Record { plain: Vec<u8>, bytes: usize },
    /// The current file is complete (its hash, if one is checked).
    End(Option<[u8; 32]>),
    /// Every scheduled file was sent.
    Finished,
    /// A local failure (a file that cannot be read).
    Failed(Error),
}

/// The connection task's state.
struct Tx<'a, S> {
    link: Link<S>,
    m: Sender,
    timer: Timer,
    obs: &'a Obs,
    /// What the receiver is expected to do next (for "closed before …").
    awaiting: &'static str,
    scratch: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Tx<'_, S> {
    /// Seals what the machine queued.
    fn transmit(&mut self) -> Result<(), Error> {
        while self.m.poll_transmit(Instant::now(), &mut self.scratch) {
            self.link.send(&self.scratch)?;
        }
        Ok(())
    }

    /// Writes, reads and runs the timers; `Ready` with what the machine made
    /// of the receiver's messages, or how the connection failed.
    fn poll_conn(&mut self, cx: &mut Context<'_>) -> Poll<Result<TxEvent, Error>> {
        loop {
            self.transmit()?;
            if let Poll::Ready(Err(e)) = self.link.poll_write(cx) {
                return Poll::Ready(Err(e));
            }
            while let Some(r) = self.link.next_record()? {
                let res = self.m.handle(Instant::now(), &self.link.buffer()[r]);
                match res {
                    Ok(Some(ev)) => return Poll::Ready(Ok(ev)),
                    Ok(None) => {}
                    Err(e) => {
                        let _ = self.transmit();
                        return Poll::Ready(Err(e.into()));
                    }
                }
            }
            match self.link.poll_read(cx) {
                Poll::Ready(Ok(true)) => continue,
                Poll::Ready(Ok(false)) => return Poll::Ready(Err(self.link.ended(self.awaiting))),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
            if let Poll::Ready(now) = self.timer.poll(cx, self.m.poll_timeout()) {
                self.m.handle_timeout(now)?;
                continue;
            }
            return Poll::Pending;
        }
    }

    /// Takes one step of the worker's output into the machine and the link.
    fn on_filled(&mut self, f: Filled, progress: &mut Progress) -> Result<bool, Error> {
        self.transmit()?;
        match f {
            Filled::Begin { index, start } => {
                match self.m.next_file()? {
                    Next::File { index: i, .. } if i == index => {}
                    other => {
                        return Err(Error::Protocol(format!(
                            "internal: the file reader is out of step ({other:?}, not {index})"
                        )));
                    }
                }
                self.m.begin(index, start)?;
                progress.skip(start.unwrap_or(0));
            }
            Filled::Batch(b) => {
                let now = Instant::now();
                let mut n = 0u64;
                for &len in b.records() {
                    self.m.sent_data(now, len)?;
                    n += len as u64;
                }
                self.link.send_batch(b)?;
                progress.add(n, self.obs);
            }
            Filled::Record { plain, bytes } => {
                self.m.sent_data(Instant::now(), bytes)?;
                self.link.send(&plain)?;
                progress.add(bytes as u64, self.obs);
            }
            Filled::End(hash) => self.m.end_file(hash)?,
            Filled::Finished => match self.m.next_file()? {
                Next::Done => {
                    self.transmit()?;
                    return Ok(true);
                }
                other => {
                    return Err(Error::Protocol(format!(
                        "internal: the file reader stopped early ({other:?})"
                    )));
                }
            },
            Filled::Failed(e) => return Err(e),
        }
        self.transmit()?;
        Ok(false)
    }

    /// After the connection failed: the receiver's own reason, if it sent one.
    async fn peer_reason(&mut self) -> Option<Error> {
        let look = std::future::poll_fn(|cx| {
            loop {
                while let Ok(Some(r)) = self.link.next_record() {
                    if let Err(e) = self.m.handle(Instant::now(), &self.link.buffer()[r]) {
                        return Poll::Ready(Some(Error::from(e)));
                    }
                }
                match self.link.poll_read(cx) {
                    Poll::Ready(Ok(true)) => continue,
                    Poll::Ready(_) => return Poll::Ready(None),
                    Poll::Pending => return Poll::Pending,
                }
            }
        });
        tokio::time::timeout(LAST_WORDS, look).await.ok().flatten()
    }

    /// Tells the receiver why this side stops (best effort, bounded).
    async fn last_words(&mut self, why: &str) {
        self.m.abort(why);
        if self.transmit().is_ok() {
            let _ = tokio::time::timeout(LAST_WORDS, self.link.flush()).await;
        }
    }
}

/// Runs one connection of a send; the payload comes back for a reconnect.
pub(crate) async fn run_send<S: AsyncRead + AsyncWrite + Unpin>(
    link: Link<S>,
    payload: Payload,
    obs: &Obs,
    idle: Duration,
    compress: Compress,
    state: &mut SendState,
) -> (Result<SendReport, Error>, Payload) {
    let first_run = state.runs == 0;
    state.runs += 1;
    let (kind, entries) = payload.offer();
    let attempt = if first_run { Attempt::First } else { Attempt::Again };
    let files = entries
        .iter()
        .filter(|e| e.kind == burrow_proto::transfer::EntryKind::File)
        .count();
    let total = (kind != OfferKind::Stream).then(|| file_bytes(&entries));
    let mut tx = Tx {
        link,
        m: Sender::new(kind, entries, attempt).timeouts(idle, Instant::now()),
        timer: Timer::new(),
        obs,
        awaiting: "answering the offer",
        scratch: Vec::new(),
    };
    if first_run {
        obs_lock(obs).event(Event::WaitingForAccept);
    }
    // A person may take their time: the receiver's keepalives prove it is still there.
    let from = match std::future::poll_fn(|cx| tx.poll_conn(cx)).await {
        Ok(TxEvent::Accepted { from, .. }) => from,
        Ok(TxEvent::Finished) => {
            return (
                Err(Error::Protocol("unexpected answer to the offer".into())),
                payload,
            );
        }
        Err(e) => return (Err(e), payload),
    };
    tx.awaiting = "confirming the transfer";
    if first_run {
        obs_lock(obs).event(Event::Started { files, total });
    }
    let started = *state.started.get_or_insert_with(Instant::now);
    let mut progress = Progress::new(total);
    // Files the receiver completed on an earlier connection of this session.
    progress.skip(file_bytes(&tx.m.entries()[..from]));

    let schedule = tx.m.schedule();
    let repeatable = payload.repeatable();
    let (fill_tx, mut fill_rx) = mpsc::channel::<Vec<Filled>>(BATCHES);
    let (free_tx, free_rx) = mpsc::unbounded_channel::<DataBatch>();
    let worker = tokio::task::spawn_blocking(move || {
        let mut payload = payload;
        Reader {
            to: fill_tx,
            free: free_rx,
            made: 0,
            spare: None,
            zip: Zip::new(compress),
            group: Vec::new(),
            group_bytes: 0,
            flush_every_batch: !repeatable,
        }
        .run(&mut payload, schedule);
        payload
    });

    let mut worker_done = false;
    let res = std::future::poll_fn(|cx| {
        loop {
            let conn = tx.poll_conn(cx);
            for b in tx.link.take_freed() {
                let _ = free_tx.send(b);
            }
            match conn {
                Poll::Ready(Ok(TxEvent::Finished)) if worker_done => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(_)) => {
                    return Poll::Ready(Err(Error::Protocol("the receiver answered out of turn".into())));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
            if worker_done || tx.link.backlog() >= BACKLOG {
                return Poll::Pending;
            }
            match fill_rx.poll_recv(cx) {
                Poll::Ready(Some(group)) => {
                    for f in group {
                        match tx.on_filled(f, &mut progress) {
                            Ok(done) => worker_done |= done,
                            Err(e) => return Poll::Ready(Err(e)),
                        }
                    }
                }
                Poll::Ready(None) => {
                    return Poll::Ready(Err(Error::Protocol("the file reader stopped".into())));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await;
    state.sent += tx.m.sent();
    if first_run {
        state.resumed = tx.m.skipped();
    }
    drop(fill_rx);
    drop(free_tx);
    let res = match res {
        Ok(()) => Ok(()),
        // A local problem: tell the receiver why.
        Err(e @ (Error::Io { .. } | Error::Usage(_))) => {
            tx.last_words(&e.to_string()).await;
            Err(e)
        }
        // The connection failed: the receiver may have said why first.
        Err(e @ Error::ConnectionLost(_)) => Err(tx.peer_reason().await.unwrap_or(e)),
        Err(e) => {
            let _ = tokio::time::timeout(LAST_WORDS, tx.link.flush()).await;
            Err(e)
        }
    };
    // A stream's reader may be blocked on its source: it is not waited for
    // (the payload cannot be offered again anyway).
    let payload = if repeatable {
        match worker.await {
            Ok(p) => p,
            Err(e) => {
                return (
                    Err(Error::Protocol(format!("the file reader failed: {e}"))),
                    Payload::Text(String::new()),
                );
            }
        }
    } else {
        Payload::Stream(Box::new(std::io::empty()))
    };
    if let Err(e) = res {
        return (Err(e), payload);
    }
    progress.finish(obs);
    tx.link.shutdown().await;
    let report = SendReport {
        files,
        bytes: state.sent,
        resumed: state.resumed,
        elapsed: started.elapsed(),
    };
    obs_lock(obs).event(Event::Finished {
        files,
        bytes: report.bytes,
        elapsed: report.elapsed,
    });
    (Ok(report), payload)
}

/// Why the worker stopped early.
enum Stop {
    /// The task is gone (the connection ended): nothing to say.
    Gone,
    Failed(Error),
}

/// The file-reading worker.
struct Reader {
    to: mpsc::Sender<Vec<Filled>>,
    free: mpsc::UnboundedReceiver<DataBatch>,
    /// Batches made so far (at most [`BATCHES`]).
    made: usize,
    /// A batch kept between files (an empty file leaves its batch unused).
    spare: Option<DataBatch>,
    zip: Option<Zip>,
    /// Steps not handed over yet, and the bytes of their small records.
    group: Vec<Filled>,
    group_bytes: usize,
    /// A stream: every batch goes at once (its source may be slow).
    flush_every_batch: bool,
}

/// zstd for `--compress`.
struct Zip {
    c: zstd::bulk::Compressor<'static>,
    out: Vec<u8>,
    always: bool,
}

impl Zip {
    fn new(mode: Compress) -> Option<Self> {
        match mode {
            Compress::Never => None,
            m => zstd::bulk::Compressor::new(1).ok().map(|c| Zip {
                c,
                out: vec![0u8; MAX_CHUNK + 1],
                always: m == Compress::Always,
            }),
        }
    }

    /// The `ZData` record for `plain` if compressing saves a tenth.
    fn squeeze(&mut self, plain: &[u8]) -> Option<Vec<u8>> {
        let limit = plain.len() * 9 / 10;
        if limit <= 64 {
            return None;
        }
        self.out[0] = Message::ZDATA;
        let m = self
            .c
            .compress_to_buffer(plain, &mut self.out[1..1 + limit])
            .ok()?;
        Some(self.out[..1 + m].to_vec())
    }
}

/// Whether the current file is compressed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FileZip {
    Off,
    /// `auto`: the first chunk decides.
    Undecided,
    On,
}

impl Reader {
    fn run(mut self, payload: &mut Payload, schedule: Vec<Next>) {
        let last = match self.send_all(payload, schedule) {
            Ok(()) => Filled::Finished,
            Err(Stop::Failed(e)) => Filled::Failed(e),
            Err(Stop::Gone) => return,
        };
        self.group.push(last);
        let _ = self.flush();
    }

    /// Hands the steps gathered so far to the task.
    fn flush(&mut self) -> Result<(), Stop> {
        if self.group.is_empty() {
            return Ok(());
        }
        self.group_bytes = 0;
        let group = std::mem::take(&mut self.group);
        self.to.blocking_send(group).map_err(|_| Stop::Gone)
    }

    /// Adds a step; hands the group over when it is large enough, and at
    /// every batch (the task frees batches only once it has them).
    fn put(&mut self, f: Filled) -> Result<(), Stop> {
        let batch = matches!(f, Filled::Batch(_));
        if let Filled::Record { plain, .. } = &f {
            self.group_bytes += plain.len();
        }
        self.group.push(f);
        if (batch && (self.flush_every_batch || self.made >= BATCHES))
            || self.group.len() >= GROUP_STEPS
            || self.group_bytes >= GROUP_BYTES
        {
            self.flush()?;
        }
        Ok(())
    }

    fn batch(&mut self) -> Result<DataBatch, Stop> {
        if let Some(b) = self.spare.take() {
            return Ok(b);
        }
        if let Ok(b) = self.free.try_recv() {
            return Ok(b);
        }
        if self.made < BATCHES {
            self.made += 1;
            return Ok(DataBatch::default());
        }
        // Whatever is gathered must reach the task before it can free a batch.
        self.flush()?;
        self.free.blocking_recv().ok_or(Stop::Gone)
    }

    fn send_all(&mut self, payload: &mut Payload, schedule: Vec<Next>) -> Result<(), Stop> {
        for next in schedule {
            let Next::File { index, resume, hash } = next else {
                continue;
            };
            match payload {
                Payload::Items(items) => {
                    let src = items[index].source.as_ref().ok_or_else(|| {
                        Stop::Failed(Error::Protocol("a file entry without a source".into()))
                    })?;
                    let mut f = File::open(src).map_err(|e| Stop::Failed(Error::io(src, e)))?;
                    let start = match &resume {
                        Some(r) => resume_point(&mut f, src, r).map_err(Stop::Failed)?,
                        None => None,
                    };
                    let size = items[index].entry.size;
                    self.file(index, start, hash, f, src, size)?;
                }
                Payload::Text(t) => {
                    let size = t.len() as u64;
                    self.file(index, None, hash, t.as_bytes(), Path::new("text"), size)?
                }
                Payload::Stream(rd) => self.file(index, None, hash, rd, Path::new("stdin"), UNKNOWN_SIZE)?,
            }
        }
        Ok(())
    }

    /// One file from `rd` (positioned where it starts): `Begin`, its data,
    /// `End`. The hash covers the whole file: a resumed prefix's hasher
    /// comes with `start`.
    fn file(
        &mut self,
        index: usize,
        start: Option<(u64, blake3::Hasher)>,
        hash: bool,
        mut rd: impl Read,
        name: &Path,
        size: u64,
    ) -> Result<(), Stop> {
        let (start, mut hasher) = match start {
            Some((offset, h)) => (Some(offset), Some(h)),
            None => (None, hash.then(blake3::Hasher::new)),
        };
        self.put(Filled::Begin { index, start })?;
        let mut zip = match &self.zip {
            None => FileZip::Off,
            Some(z) if z.always => FileZip::On,
            Some(_) => FileZip::Undecided,
        };
        let left = size.saturating_sub(start.unwrap_or(0));
        if size != UNKNOWN_SIZE && left <= SMALL_FILE {
            // One record of its own; a file that grew meanwhile goes on below.
            let mut plain = Vec::with_capacity(2 + left as usize);
            plain.push(Message::DATA);
            (&mut rd)
                .take(DATA_SPACE as u64)
                .read_to_end(&mut plain)
                .map_err(|e| Stop::Failed(Error::io(name, e)))?;
            let n = plain.len() - 1;
            if n > 0 {
                if let Some(h) = &mut hasher {
                    h.update(&plain[1..]);
                }
                let squeezed = match (&mut self.zip, zip) {
                    (Some(z), FileZip::On | FileZip::Undecided) => z.squeeze(&plain[1..]),
                    _ => None,
                };
                self.put(Filled::Record {
                    plain: squeezed.unwrap_or(plain),
                    bytes: n,
                })?;
            }
            if n < DATA_SPACE {
                return self.put(Filled::End(hasher.map(|h| *h.finalize().as_bytes())));
            }
        }
        let mut batch = self.batch()?;
        loop {
            let n = match rd.read(batch.space()) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Stop::Failed(Error::io(name, e))),
            };
            if let Some(h) = &mut hasher {
                h.update(batch.pending(n));
            }
            if zip != FileZip::Off
                && let Some(z) = &mut self.zip
            {
                let squeezed = z.squeeze(batch.pending(n));
                if zip == FileZip::Undecided {
                    zip = if squeezed.is_some() {
                        FileZip::On
                    } else {
                        FileZip::Off
                    };
                }
                if let Some(plain) = squeezed {
                    if !batch.is_empty() {
                        let full = std::mem::replace(&mut batch, self.batch()?);
                        self.put(Filled::Batch(full))?;
                    }
                    self.put(Filled::Record { plain, bytes: n })?;
                    continue;
                }
            }
            if batch.commit(n) {
                let full = std::mem::replace(&mut batch, self.batch()?);
                self.put(Filled::Batch(full))?;
            }
        }
        if batch.is_empty() {
            self.spare = Some(batch);
        } else {
            self.put(Filled::Batch(batch))?;
        }
        self.put(Filled::End(hasher.map(|h| *h.finalize().as_bytes())))
    }
}

/// Hashes the first `r.offset` bytes of `f`: if they match the receiver's
/// prefix, the file continues there (its position is left at the offset)
/// with the hasher over the prefix; else it is rewound and sent whole.
fn resume_point(f: &mut File, src: &Path, r: &ResumeAt) -> Result<Option<(u64, blake3::Hasher)>, Error> {
    let mut hasher = blake3::Hasher::new();
    let copied = std::io::copy(&mut (&mut *f).take(r.offset), &mut hasher).map_err(|e| Error::io(src, e))?;
    if copied == r.offset && hasher.finalize() == blake3::Hash::from_bytes(r.prefix) {
        return Ok(Some((r.offset, hasher)));
    }
    f.seek(SeekFrom::Start(0)).map_err(|e| Error::io(src, e))?;
    Ok(None)
}
