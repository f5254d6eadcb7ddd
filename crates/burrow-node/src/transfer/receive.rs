//! The receiving side: the connection task and its file-writing worker.
//!
//! ```text
//! task                                        worker (blocking)
//!   records → Receiver ... OfferReady
//!   (keepalives go on)          ─── prepare ► check the offer against the
//!                                              output, ask the user, make
//!                                              folders, find partial files
//!   accept / continue (resume proposals) ◄───
//!   read 512 KiB, open records in place,
//!   Data → Write(piece), FileVerified →
//!   Finish, Resumed → Reopen     ─── Batch ──► write the pieces, rename
//!                                ◄── Done ─── the buffer back
//!   Finished → Sync              ─── Batch ──► sync the file system
//!   confirm → Ack                ◄── Synced
//! ```
//!
//! At most [`BUFFERS`] read buffers exist; when the worker holds all of
//! them (a slow disk) the task stops reading, and TCP slows the sender.

use std::fs::{self, File, OpenOptions};
use std::io::{IoSlice, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use burrow_proto::session::MIN_INBOX;
use burrow_proto::transfer::{
    Entry, EntryKind, MAX_CHUNK, MAX_RESUME, OfferKind, Receiver, RxEvent, UNKNOWN_SIZE, Verify,
    escape_display,
};

use super::link::Link;
use super::{MAX_TEXT, Obs, Progress, Timer, file_bytes, obs_lock};
use crate::error::{Error, shown};
use crate::files;
use crate::meet::paths::READ_BUF;
use crate::{Decision, Event, OfferInfo, ReceiveReport, Sink};

/// Read buffers at most (the one being read into included).
const BUFFERS: usize = 4;
/// `O_NOFOLLOW`: partial files are reopened only if they are not links.
const NOFOLLOW: i32 = rustix::fs::OFlags::NOFOLLOW.bits() as i32;
/// Files at least this large are synced to disk one by one.
const SYNC_EACH: u64 = 1 << 20;
/// How long a failing receiver tries to tell the sender why.
const LAST_WORDS: Duration = Duration::from_secs(2);

/// What a receiver remembers between the connections of one session.
#[derive(Default)]
pub(crate) struct RecvState {
    /// The offer accepted on the first connection, and whether existing
    /// files may be replaced; a later connection must offer the same.
    accepted: Option<(OfferKind, Vec<Entry>, bool)>,
    /// Entries before this one are complete and verified.
    from: usize,
    saved: Vec<PathBuf>,
    /// File bytes received, over every connection.
    received: u64,
    /// Bytes already here from an earlier session.
    resumed: u64,
    started: Option<Instant>,
    /// Lobby mode: the sender's identity, shown with the offer.
    peer: Option<String>,
    /// Which files are hashed again on arrival.
    verify: Verify,
}

impl RecvState {
    /// A fresh state; `peer` is shown with the offer.
    pub(crate) fn new(peer: Option<String>, verify: Verify) -> Self {
        Self {
            peer,
            verify,
            ..Default::default()
        }
    }

    /// Whether a dropped connection may be continued on a new one: only a
    /// file transfer that got past the offer.
    pub(crate) fn continuable(&self) -> bool {
        matches!(&self.accepted, Some((OfferKind::Files, _, _)))
    }
}

/// Where a file goes, worked out by the task (which knows the offer).
#[derive(Debug)]
struct FileJob {
    rel: String,
    dest: PathBuf,
    part: PathBuf,
    size: u64,
    executable: bool,
}

/// One step for the worker, in wire order.
#[derive(Debug)]
enum Action {
    /// Start writing a file under its temporary name.
    Open(FileJob),
    /// Continue a partial file at an offset.
    Reopen(FileJob, u64),
    /// Bytes of the current file, in the batch's buffer.
    Write(Range<usize>),
    /// Bytes of the current file, decompressed.
    Owned(Vec<u8>),
    /// The current file is complete and verified: move it into place.
    Finish,
    /// Everything arrived: make it durable, then answer [`Back::Synced`].
    Sync,
    /// The transfer failed: keep the partial file (for a resume) or not.
    Abort { keep: bool },
}

/// What the task hands the worker: a read buffer (if pieces of it are to
/// be written) and the steps.
struct Batch {
    buf: Option<Vec<u8>>,
    actions: Vec<Action>,
}

enum Back {
    /// A batch is done; its buffer, for reuse.
    Done(Option<Vec<u8>>),
    Synced,
    Failed(Error),
}

/// What the worker leaves at the end.
#[derive(Default)]
struct Written {
    saved: Vec<PathBuf>,
    text: Option<Vec<u8>>,
}

/// Where received bytes go (the worker's).
enum Out {
    Dir {
        root: PathBuf,
        overwrite: bool,
        current: Option<(FileJob, File)>,
        /// Bytes of unknown size (a stream) that may still be written
        /// before the file system would fall below its reserve.
        budget: Option<u64>,
    },
    Stdout,
    Memory(Vec<u8>),
}

impl Out {
    fn apply(&mut self, a: Action, buf: Option<&[u8]>, w: &mut Written) -> Result<(), Error> {
        match a {
            Action::Open(job) => self.open(job),
            Action::Reopen(job, offset) => self.reopen(job, offset),
            Action::Write(r) => self.write_pieces(buf, &[r]),
            Action::Owned(v) => self.write(&v),
            Action::Finish => self.finish(w),
            Action::Sync => self.sync_all(),
            Action::Abort { keep } => {
                self.abort(keep);
                Ok(())
            }
        }
    }

    fn open(&mut self, job: FileJob) -> Result<(), Error> {
        let Out::Dir { root, current, .. } = self else {
            return Ok(());
        };
        files::check_components(root, &job.rel)?;
        if let Some(parent) = job.dest.parent() {
            fs::create_dir_all(parent).map_err(|err| Error::io(parent, err))?;
        }
        if fs::symlink_metadata(&job.part).is_ok() {
            fs::remove_file(&job.part).map_err(|err| Error::io(&job.part, err))?;
        }
        // create_new: O_EXCL, so a link planted at this name is never followed.
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&job.part)
            .map_err(|err| Error::io(&job.part, err))?;
        *current = Some((job, f));
        Ok(())
    }

    fn reopen(&mut self, job: FileJob, offset: u64) -> Result<(), Error> {
        let Out::Dir { current, .. } = self else {
            return Ok(());
        };
        let part = &job.part;
        let meta = fs::symlink_metadata(part).map_err(|e| Error::io(part, e))?;
        if !meta.file_type().is_file() {
            return Err(Error::Usage(format!("{} is not a regular file", shown(part))));
        }
        let mut f = OpenOptions::new()
            .write(true)
            .custom_flags(NOFOLLOW)
            .open(part)
            .map_err(|e| Error::io(part, e))?;
        f.set_len(offset).map_err(|e| Error::io(part, e))?;
        f.seek(SeekFrom::Start(offset)).map_err(|e| Error::io(part, e))?;
        *current = Some((job, f));
        Ok(())
    }

    /// Writes pieces of the current file that lie in `buf`, in order, with
    /// as few system calls as the kernel allows.
    fn write_pieces(&mut self, buf: Option<&[u8]>, pieces: &[Range<usize>]) -> Result<(), Error> {
        let outside = || Error::Protocol("internal: a piece outside its buffer".into());
        let buf = buf.ok_or_else(outside)?;
        let mut slices = Vec::with_capacity(pieces.len());
        for r in pieces {
            slices.push(IoSlice::new(buf.get(r.clone()).ok_or_else(outside)?));
        }
        let Out::Dir {
            root,
            current,
            budget,
            ..
        } = self
        else {
            return slices.iter().try_for_each(|s| self.write(s));
        };
        let Some((job, f)) = current else {
            return Err(Error::Protocol("internal: data before its file".into()));
        };
        if job.size == UNKNOWN_SIZE {
            let n: usize = slices.iter().map(|s| s.len()).sum();
            stream_room(root, budget, n as u64)?;
        }
        let mut left = &mut slices[..];
        while !left.is_empty() {
            match f.write_vectored(left) {
                Ok(0) => return Err(Error::io(&job.part, std::io::ErrorKind::WriteZero.into())),
                Ok(n) => IoSlice::advance_slices(&mut left, n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io(&job.part, e)),
            }
        }
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), Error> {
        match self {
            Out::Dir {
                root,
                current,
                budget,
                ..
            } => {
                let Some((job, f)) = current else {
                    return Err(Error::Protocol("internal: data before its file".into()));
                };
                if job.size == UNKNOWN_SIZE {
                    stream_room(root, budget, bytes.len() as u64)?;
                }
                f.write_all(bytes).map_err(|e| Error::io(&job.part, e))
            }
            Out::Stdout => std::io::stdout()
                .lock()
                .write_all(bytes)
                .map_err(|e| Error::io("standard output", e)),
            Out::Memory(v) => {
                v.extend_from_slice(bytes);
                Ok(())
            }
        }
    }

    fn finish(&mut self, w: &mut Written) -> Result<(), Error> {
        match self {
            Out::Dir {
                overwrite, current, ..
            } => {
                let Some((job, f)) = current.take() else {
                    return Err(Error::Protocol(
                        "internal: a file finished before it began".into(),
                    ));
                };
                // Large files reach the disk before their rename; small ones
                // are flushed together by `sync_all` before the final Ack.
                if job.size >= SYNC_EACH {
                    f.sync_data().map_err(|err| Error::io(&job.part, err))?;
                }
                drop(f);
                if job.executable {
                    files::set_executable(&job.part)?;
                }
                if !*overwrite && fs::symlink_metadata(&job.dest).is_ok() {
                    let _ = fs::remove_file(&job.part);
                    return Err(Error::Exists(vec![escape_display(&job.rel)]));
                }
                fs::rename(&job.part, &job.dest).map_err(|err| Error::io(&job.dest, err))?;
                w.saved.push(job.dest);
                Ok(())
            }
            Out::Stdout => std::io::stdout()
                .flush()
                .map_err(|e| Error::io("standard output", e)),
            Out::Memory(_) => Ok(()),
        }
    }

    /// Flushes everything written to the file system holding the output, so
    /// that "done" means on disk, at the cost of one sync per transfer.
    fn sync_all(&self) -> Result<(), Error> {
        if let Out::Dir { root, .. } = self {
            let d = File::open(root).map_err(|e| Error::io(root, e))?;
            rustix::fs::syncfs(&d).map_err(|e| Error::io(root, e.into()))?;
        }
        Ok(())
    }

    /// Ends a failed transfer: the partial file is kept under its hidden
    /// name (for a later resume) only if `keep`.
    fn abort(&mut self, keep: bool) {
        if let Out::Dir { current, .. } = self
            && let Some((job, f)) = current.take()
        {
            drop(f);
            if !keep {
                let _ = fs::remove_file(&job.part);
            }
        }
    }
}

/// A stream's size is not known up front, so the free-space check before
/// the prompt cannot bound it: it is bounded as it arrives, and stops
/// while the file system still has [`files::reserve`] free (the disk is
/// never filled for everyone else). `budget` is what may be written before
/// the free space must be looked at again.
fn stream_room(root: &Path, budget: &mut Option<u64>, n: u64) -> Result<(), Error> {
    if let Some(left) = budget.as_mut()
        && let Some(after) = left.checked_sub(n)
    {
        *left = after;
        return Ok(());
    }
    let Some((free, total)) = files::space(root) else {
        return Ok(());
    };
    let reserve = files::reserve(total);
    match free.checked_sub(reserve).and_then(|room| room.checked_sub(n)) {
        Some(left) => {
            *budget = Some(left);
            Ok(())
        }
        None => Err(Error::StreamFull {
            dir: root.to_path_buf(),
            reserve,
        }),
    }
}

/// The worker: applies batches in order until told to stop.
fn write_worker(
    mut out: Out,
    mut ops: mpsc::UnboundedReceiver<Batch>,
    back: mpsc::UnboundedSender<Back>,
    keep_if_cut: bool,
) -> Written {
    let mut w = Written::default();
    while let Some(batch) = ops.blocking_recv() {
        let buf = batch.buf;
        let mut actions = batch.actions.into_iter().peekable();
        while let Some(a) = actions.next() {
            let sync = matches!(a, Action::Sync);
            let stop = matches!(a, Action::Abort { .. });
            let done = match a {
                // A run of pieces of one file goes out in one system call.
                Action::Write(first) => {
                    let mut run = vec![first];
                    while let Some(Action::Write(_)) = actions.peek() {
                        if let Some(Action::Write(r)) = actions.next() {
                            run.push(r);
                        }
                    }
                    out.write_pieces(buf.as_deref(), &run)
                }
                a => out.apply(a, buf.as_deref(), &mut w),
            };
            if let Err(e) = done {
                out.abort(false);
                let _ = back.send(Back::Failed(e));
                return w;
            }
            if stop {
                return w;
            }
            if sync {
                let _ = back.send(Back::Synced);
            }
        }
        let _ = back.send(Back::Done(buf));
    }
    // The task went away without a word.
    out.abort(keep_if_cut);
    if let Out::Memory(v) = out {
        w.text = Some(v);
    }
    w
}

/// Checks an offer against the sink before asking the user.
fn plan(info: &mut OfferInfo, sink: &Sink) -> Result<(), Error> {
    match (info.kind, sink) {
        (OfferKind::Text, _) => {
            if info.total > MAX_TEXT {
                return Err(Error::Usage(format!(
                    "a text message of {} bytes is too long",
                    info.total
                )));
            }
            Ok(())
        }
        (OfferKind::Stream, Sink::Stdout | Sink::Auto(_)) => Ok(()),
        (OfferKind::Files, Sink::Stdout) => {
            if info.files != 1 || info.dirs != 0 {
                return Err(Error::Usage(
                    "only a single file can be written to standard output; use --out DIR".into(),
                ));
            }
            Ok(())
        }
        (_, Sink::Dir(root) | Sink::Auto(root)) => {
            let mut probe = root.as_path();
            while !probe.exists() {
                probe = match probe.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p,
                    _ => Path::new("."),
                };
                if probe == Path::new(".") {
                    break;
                }
            }
            info.free = files::free_space(probe);
            if info.kind == OfferKind::Stream {
                info.save_as = info.entries.first().map(|e| escape_display(&e.path));
            }
            for e in &info.entries {
                files::check_components(root, &e.path)?;
                let dest = files::target(root, &e.path);
                match (fs::symlink_metadata(&dest), e.kind) {
                    (Ok(m), EntryKind::Dir) if m.is_dir() => {}
                    (Ok(_), EntryKind::Dir) => {
                        return Err(Error::Usage(format!(
                            "{} exists and is not a folder",
                            escape_display(&e.path)
                        )));
                    }
                    (Ok(m), EntryKind::File) if m.is_dir() => {
                        return Err(Error::Usage(format!(
                            "{} exists and is a folder",
                            escape_display(&e.path)
                        )));
                    }
                    (Ok(_), EntryKind::File) => info.existing.push(escape_display(&e.path)),
                    (Err(_), _) => {}
                }
            }
            if let Some(avail) = info.free
                && info.total > avail
            {
                return Err(Error::NoSpace {
                    dir: root.clone(),
                    need: info.total,
                    avail,
                });
            }
            Ok(())
        }
    }
}

/// What preparing (off the connection task) found.
struct Prepared {
    overwrite: bool,
    out: Out,
    /// Resume proposals: entry, bytes present, a hasher over them.
    proposals: Vec<(usize, u64, blake3::Hasher)>,
}

/// Why preparing failed: the error, and whether the sender is told with a
/// `Reject` (a decision) rather than an `Error`.
struct Refused {
    error: Error,
    reject: Option<String>,
}

/// Runs on a blocking thread while the task keeps the connection alive:
/// the checks, the user's decision (first connection only), the output's
/// folders, and the partial files that could be resumed.
fn prepare(
    mut info: OfferInfo,
    sink: &Sink,
    overwrite: bool,
    decided: Option<bool>,
    obs: &Obs,
    parts: Vec<(usize, u64, PathBuf)>,
) -> Result<Prepared, Refused> {
    let refuse = |error: Error, why: String| Refused {
        error,
        reject: Some(why),
    };
    let overwrite = match decided {
        // Accepted on an earlier connection of this session: don't ask again.
        Some(o) => o,
        None => {
            if let Err(e) = plan(&mut info, sink) {
                let why = format!("the receiver cannot take this: {e}");
                return Err(refuse(e, why));
            }
            let overwrite = match obs_lock(obs).decide(&info) {
                Decision::Accept => overwrite,
                Decision::AcceptOverwrite => true,
                Decision::Reject(reason) => return Err(refuse(Error::Declined(reason.clone()), reason)),
            };
            if !overwrite && !info.existing.is_empty() {
                return Err(refuse(
                    Error::Exists(info.existing),
                    "files with these names already exist on the receiving side".into(),
                ));
            }
            overwrite
        }
    };
    let local = |error: Error| Refused { error, reject: None };
    let out = match (info.kind, sink) {
        (OfferKind::Text, _) => Out::Memory(Vec::new()),
        (OfferKind::Stream, Sink::Auto(_)) | (_, Sink::Stdout) => Out::Stdout,
        (_, Sink::Dir(root) | Sink::Auto(root)) => {
            for e in info.entries.iter().filter(|e| e.kind == EntryKind::Dir) {
                files::check_components(root, &e.path).map_err(local)?;
                let d = files::target(root, &e.path);
                fs::create_dir_all(&d).map_err(|err| local(Error::io(&d, err)))?;
            }
            if info.kind == OfferKind::Files {
                fs::create_dir_all(root).map_err(|err| local(Error::io(root, err)))?;
            }
            Out::Dir {
                root: root.clone(),
                overwrite,
                current: None,
                budget: None,
            }
        }
    };
    let proposals = resume_proposals(parts).map_err(local)?;
    Ok(Prepared {
        overwrite,
        out,
        proposals,
    })
}

/// Partial files from an earlier transfer, as resume proposals: the bytes
/// present and a hasher over them (the sender checks the hash).
fn resume_proposals(parts: Vec<(usize, u64, PathBuf)>) -> Result<Vec<(usize, u64, blake3::Hasher)>, Error> {
    let mut out = Vec::new();
    for (index, size, part) in parts {
        if out.len() >= MAX_RESUME {
            break;
        }
        let Ok(meta) = fs::symlink_metadata(&part) else {
            continue;
        };
        if !meta.file_type().is_file() || meta.len() == 0 {
            continue;
        }
        let offset = meta.len().min(size);
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(NOFOLLOW)
            .open(&part)
            .map_err(|err| Error::io(&part, err))?;
        let mut hasher = blake3::Hasher::new();
        let n = std::io::copy(&mut f.take(offset), &mut hasher).map_err(|err| Error::io(&part, err))?;
        if n == offset {
            out.push((index, offset, hasher));
        }
    }
    Ok(out)
}

/// The connection task's state.
struct Rx<S> {
    link: Link<S>,
    m: Receiver,
    timer: Timer,
    awaiting: &'static str,
    scratch: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Rx<S> {
    fn transmit(&mut self) -> Result<(), Error> {
        while self.m.poll_transmit(Instant::now(), &mut self.scratch) {
            self.link.send(&self.scratch)?;
        }
        Ok(())
    }

    /// Writes what is queued and runs the timers.
    fn poll_out(&mut self, cx: &mut Context<'_>) -> Result<(), Error> {
        loop {
            self.transmit()?;
            if let Poll::Ready(Err(e)) = self.link.poll_write(cx) {
                return Err(e);
            }
            match self.timer.poll(cx, self.m.poll_timeout()) {
                Poll::Ready(now) => self.m.handle_timeout(now)?,
                Poll::Pending => return Ok(()),
            }
        }
    }

    /// Before the data: reads records until the machine has an event
    /// other than `Nothing` (the offer), keeping the connection alive.
    fn poll_setup(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        loop {
            if let Err(e) = self.poll_out(cx) {
                return Poll::Ready(Err(e));
            }
            loop {
                let r = match self.link.next_record() {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(e) => return Poll::Ready(Err(e)),
                };
                match self.m.handle(Instant::now(), &self.link.buffer()[r]) {
                    Ok(RxEvent::Nothing) => {}
                    Ok(RxEvent::OfferReady) => return Poll::Ready(Ok(())),
                    Ok(_) => {
                        return Poll::Ready(Err(Error::Protocol(
                            "data before the offer was accepted".into(),
                        )));
                    }
                    Err(e) => return Poll::Ready(Err(e.into())),
                }
            }
            match self.link.poll_read(cx) {
                Poll::Ready(Ok(true)) => continue,
                Poll::Ready(Ok(false)) => return Poll::Ready(Err(self.link.ended(self.awaiting))),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Tells the sender why this side stops (best effort, bounded).
    async fn last_words(&mut self) {
        if self.transmit().is_ok() {
            let _ = tokio::time::timeout(LAST_WORDS, self.link.flush()).await;
        }
    }
}

/// The data phase's own state beside the machine.
struct Data {
    root: Option<PathBuf>,
    /// The file the worker has open.
    open: Option<usize>,
    actions: Vec<Action>,
    /// Whether `actions` holds pieces of the inbox's buffer.
    pieces: bool,
    spare: Vec<Vec<u8>>,
    /// Buffers made (at most [`BUFFERS`]), and batches at the worker.
    made: usize,
    in_flight: usize,
    plain: Vec<u8>,
    unzip: zstd::bulk::Decompressor<'static>,
    /// Nothing more to read for now: hand off what there is.
    idle: bool,
    /// `Done` arrived; the worker is syncing.
    saving: bool,
    synced: bool,
}

impl Data {
    /// The job for entry `index` (folder sinks only).
    fn job(&self, m: &Receiver, index: usize) -> Option<FileJob> {
        let root = self.root.as_ref()?;
        let e = &m.entries()[index];
        Some(FileJob {
            rel: e.path.clone(),
            dest: files::target(root, &e.path),
            part: files::part_path(root, &e.path, |p| m.offers(p)),
            size: e.size,
            executable: e.executable,
        })
    }

    /// Whether a batch can go to the worker now: fewer than [`BUFFERS`]
    /// out, and a buffer to read on into if this one goes.
    fn can_hand_off(&self) -> bool {
        self.in_flight < BUFFERS && (!self.pieces || !self.spare.is_empty() || self.made < BUFFERS)
    }

    /// Makes sure the worker has file `index` open.
    fn ensure_open(&mut self, m: &Receiver, index: usize) {
        if self.open != Some(index) {
            self.open = Some(index);
            if let Some(job) = self.job(m, index) {
                self.actions.push(Action::Open(job));
            }
        }
    }
}

/// Runs one connection of a receive.
pub(crate) async fn run_receive<S: AsyncRead + AsyncWrite + Unpin>(
    link: Link<S>,
    sink: &Arc<Sink>,
    overwrite: bool,
    obs: &Obs,
    idle: Duration,
    state: &mut RecvState,
) -> Result<ReceiveReport, Error> {
    let mut rx = Rx {
        link,
        m: Receiver::new()
            .verify(state.verify)
            .timeouts(idle, Instant::now()),
        timer: Timer::new(),
        awaiting: "sending its offer",
        scratch: Vec::new(),
    };
    if let Err(e) = std::future::poll_fn(|cx| rx.poll_setup(cx)).await {
        // The machine may have queued the reason for the sender.
        rx.last_words().await;
        return Err(e);
    }
    let offer = rx.m.offer();
    let again = state.accepted.is_some();
    if let Some((kind, entries, _)) = &state.accepted
        && (*kind != offer.kind || *entries != offer.entries)
    {
        let e = Error::Protocol("the sender offered something else after reconnecting".into());
        rx.m.abort(&e.to_string());
        rx.last_words().await;
        return Err(e);
    }
    let from = if again { state.from } else { 0 };
    let root = match (offer.kind, &**sink) {
        (OfferKind::Files, Sink::Dir(r) | Sink::Auto(r)) | (OfferKind::Stream, Sink::Dir(r)) => {
            Some(r.clone())
        }
        _ => None,
    };
    // Partial files that a proposal could continue: after a reconnect only
    // the first unfinished file can have one.
    let mut parts = Vec::new();
    if let (Some(root), OfferKind::Files) = (&root, offer.kind) {
        let entries = rx.m.entries();
        for (index, e) in entries.iter().enumerate().skip(from) {
            if e.kind != EntryKind::File {
                continue;
            }
            if e.size > 0 {
                parts.push((index, e.size, files::part_path(root, &e.path, |p| rx.m.offers(p))));
            }
            if again {
                break;
            }
        }
    }
    let info = OfferInfo {
        kind: offer.kind,
        files: offer.files(),
        dirs: offer.dirs(),
        total: offer.total,
        entries: offer.entries,
        existing: Vec::new(),
        free: None,
        save_as: None,
        from: state.peer.clone(),
    };
    let (kind, files, total_bytes) = (info.kind, info.files, info.total);
    let entries_for_state = (!again).then(|| info.entries.clone());
    let decided = state.accepted.as_ref().map(|a| a.2);
    let prep = {
        let (sink, obs2) = (sink.clone(), obs.clone());
        tokio::task::spawn_blocking(move || prepare(info, &sink, overwrite, decided, &obs2, parts))
    };
    // A person may take their time: keepalives go on, and a sender that
    // gives up (or fails) is noticed.
    rx.awaiting = "the receiver decided";
    let mut prep = prep;
    let prepared = std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = std::pin::Pin::new(&mut prep).poll(cx) {
            return Poll::Ready(r.map_err(|e| Refused {
                error: Error::Protocol(format!("preparing failed: {e}")),
                reject: None,
            })?);
        }
        match rx.poll_setup(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Err(Refused {
                error: Error::Protocol("a second offer".into()),
                reject: None,
            })),
            Poll::Ready(Err(error)) => Poll::Ready(Err(Refused { error, reject: None })),
            Poll::Pending => Poll::Pending,
        }
    })
    .await;
    let Prepared {
        overwrite,
        out,
        proposals,
    } = match prepared {
        Ok(p) => p,
        Err(Refused { error, reject }) => {
            match reject {
                Some(why) => rx.m.reject(&why),
                None if !error.is_transient() => rx.m.abort(&format!("receiver: {error}")),
                None => {}
            }
            rx.last_words().await;
            return Err(error);
        }
    };
    let resumable: u64 = proposals.iter().map(|p| p.1).sum();
    let answered = if again {
        rx.m.continue_from(from, proposals)
    } else {
        rx.m.accept_resuming(proposals)
    };
    if let Err(e) = answered {
        rx.last_words().await;
        return Err(e.into());
    }
    if let Some(entries) = entries_for_state {
        state.accepted = Some((kind, entries, overwrite));
    }
    let total = (kind != OfferKind::Stream).then_some(total_bytes);
    if !again {
        obs_lock(obs).event(Event::Started { files, total });
    }
    let started = *state.started.get_or_insert_with(Instant::now);
    let mut progress = Progress::new(total);
    progress.skip(file_bytes(&rx.m.entries()[..from.min(rx.m.entries().len())]));
    rx.awaiting = "finishing the transfer";

    let (ops_tx, ops_rx) = mpsc::unbounded_channel::<Batch>();
    let (back_tx, mut back_rx) = mpsc::unbounded_channel::<Back>();
    let keep_if_cut = kind == OfferKind::Files;
    let worker = tokio::task::spawn_blocking(move || write_worker(out, ops_rx, back_tx, keep_if_cut));
    let mut d = Data {
        root,
        open: None,
        actions: Vec::new(),
        pieces: false,
        spare: Vec::new(),
        made: 1,
        in_flight: 0,
        // A frame may not expand past one chunk: no decompression bombs.
        plain: vec![0u8; MAX_CHUNK],
        unzip: match zstd::bulk::Decompressor::new() {
            Ok(u) => u,
            Err(e) => return Err(Error::Protocol(format!("zstd: {e}"))),
        },
        idle: false,
        saving: false,
        synced: false,
    };
    let mut resumed_here = 0u64;
    let res = std::future::poll_fn(|cx| {
        loop {
            if let Err(e) = rx.poll_out(cx) {
                return Poll::Ready(Err(e));
            }
            // What the worker says.
            while let Poll::Ready(Some(b)) = back_rx.poll_recv(cx) {
                match b {
                    Back::Done(buf) => {
                        d.in_flight -= 1;
                        if let Some(b) = buf {
                            d.spare.push(b);
                        }
                    }
                    Back::Synced => d.synced = true,
                    Back::Failed(e) => return Poll::Ready(Err(e)),
                }
            }
            if d.synced {
                return Poll::Ready(Ok(()));
            }
            // Records already read, while their pieces can stay in the buffer.
            if !d.saving {
                loop {
                    let r = match rx.link.next_record() {
                        Ok(Some(r)) => r,
                        Ok(None) => break,
                        Err(e) => return Poll::Ready(Err(e)),
                    };
                    let rec = &rx.link.buffer()[r.clone()];
                    let ev = match rx.m.handle(Instant::now(), rec) {
                        Ok(ev) => ev,
                        Err(e) => return Poll::Ready(Err(e.into())),
                    };
                    match ev {
                        RxEvent::Data { index, bytes } => {
                            let n = bytes.len();
                            let piece = r.end - n..r.end;
                            d.ensure_open(&rx.m, index);
                            d.actions.push(Action::Write(piece));
                            d.pieces = true;
                            progress.add(n as u64, obs);
                        }
                        RxEvent::Compressed { frame, .. } => {
                            let n = match d.unzip.decompress_to_buffer(frame, &mut d.plain[..]) {
                                Ok(n) => n,
                                Err(e) => {
                                    let e =
                                        Error::Protocol(format!("bad compressed data from the sender: {e}"));
                                    return Poll::Ready(Err(e));
                                }
                            };
                            match rx.m.data(&d.plain[..n]) {
                                Ok(RxEvent::Data { index, bytes }) => {
                                    let owned = bytes.to_vec();
                                    d.ensure_open(&rx.m, index);
                                    d.actions.push(Action::Owned(owned));
                                    progress.add(n as u64, obs);
                                }
                                Ok(_) => {}
                                Err(e) => return Poll::Ready(Err(e.into())),
                            }
                        }
                        RxEvent::Resumed { index, offset } => {
                            d.open = Some(index);
                            if let Some(job) = d.job(&rx.m, index) {
                                d.actions.push(Action::Reopen(job, offset));
                            }
                            progress.skip(offset);
                            resumed_here += offset;
                        }
                        RxEvent::FileVerified { index } => {
                            d.ensure_open(&rx.m, index);
                            d.actions.push(Action::Finish);
                            d.open = None;
                            state.from = index + 1;
                        }
                        RxEvent::Finished => {
                            // On disk before the Ack says so.
                            d.actions.push(Action::Sync);
                            d.saving = true;
                            break;
                        }
                        RxEvent::Nothing | RxEvent::OfferReady => {}
                    }
                }
            }
            // Hand what was gathered to the worker when the buffer is
            // needed again, when nothing more is ready, or at the end. A
            // buffer whose pieces are still here is read on in place while a
            // whole record fits after them.
            let full = d.pieces && rx.link.inbox().space_in_place().len() < MIN_INBOX;
            if (d.saving || full || d.idle) && !d.actions.is_empty() && d.can_hand_off() {
                let buf = d.pieces.then(|| {
                    let fresh = d.spare.pop().unwrap_or_else(|| {
                        d.made += 1;
                        vec![0u8; READ_BUF]
                    });
                    let inbox = rx.link.inbox();
                    let old = inbox.take_buffer();
                    inbox.put_fresh(fresh, &old);
                    old
                });
                let batch = Batch {
                    buf,
                    actions: std::mem::take(&mut d.actions),
                };
                d.pieces = false;
                d.idle = false;
                d.in_flight += 1;
                if ops_tx.send(batch).is_err() {
                    return Poll::Ready(Err(Error::Protocol("the file writer stopped".into())));
                }
                continue;
            }
            if d.saving || full {
                // Wait for the worker: a buffer back, or the sync.
                return Poll::Pending;
            }
            let read = if d.pieces {
                rx.link.poll_read_in_place(cx)
            } else {
                rx.link.poll_read(cx)
            };
            match read {
                Poll::Ready(Ok(true)) => continue,
                Poll::Ready(Ok(false)) => return Poll::Ready(Err(rx.link.ended(rx.awaiting))),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending
                    if !d.actions.is_empty() && d.can_hand_off() && !rx.link.inbox().holds_partial() =>
                {
                    // Nothing more to read now: let the worker write what there
                    // is. (With half a record held, not yet: it completes with
                    // the next read, and handing over now would copy it.)
                    d.idle = true;
                    continue;
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await;
    state.received += rx.m.received();
    if !again {
        state.resumed = resumable.min(resumed_here);
    }
    let res = match res {
        Ok(()) => rx.m.confirm().map_err(Error::from),
        Err(e) => Err(e),
    };
    if let Err(e) = res {
        // A partial file is kept (under its hidden name) when the
        // connection was lost, so that a later transfer can resume it;
        // after an integrity, protocol or local error it is removed.
        let keep = keep_if_cut
            && matches!(
                e,
                Error::ConnectionLost(_) | Error::Timeout(_) | Error::PeerClosed(_)
            );
        // Bytes that arrived authenticated are written before a partial
        // file is kept: the resume proposal then covers all of them.
        let mut actions = if keep {
            std::mem::take(&mut d.actions)
        } else {
            Vec::new()
        };
        let buf = (keep && d.pieces).then(|| rx.link.inbox().take_buffer());
        actions.push(Action::Abort { keep });
        let _ = ops_tx.send(Batch { buf, actions });
        drop(ops_tx);
        let _ = worker.await;
        // A file the worker could not write matters more than the connection.
        let mut e = e;
        while let Ok(b) = back_rx.try_recv() {
            if let Back::Failed(local) = b {
                e = local;
            }
        }
        // A dropped connection may be continued: only a real failure is told.
        if !e.is_transient() {
            // (Unless the machine failed first and told the sender itself.)
            rx.m.abort(&format!("receiver: {e}"));
        }
        rx.last_words().await;
        return Err(e);
    }
    drop(ops_tx);
    let written = worker
        .await
        .map_err(|e| Error::Protocol(format!("the file writer failed: {e}")))?;
    // The Ack.
    rx.transmit()?;
    rx.link.flush().await?;
    rx.link.shutdown().await;
    state.saved.extend(written.saved);
    progress.finish(obs);
    let report = ReceiveReport {
        files,
        bytes: state.received,
        resumed: state.resumed,
        elapsed: started.elapsed(),
        saved: std::mem::take(&mut state.saved),
        text: written.text.map(|v| String::from_utf8_lossy(&v).into_owned()),
    };
    obs_lock(obs).event(Event::Finished {
        files: report.files,
        bytes: report.bytes,
        elapsed: report.elapsed,
    });
    Ok(report)
}
