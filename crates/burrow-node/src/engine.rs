//! The transfer engine: runs on a blocking thread over a stapled connection.
//!
//! Sending: handshake, offer, wait for the decision, then for each file
//! read straight into a batch of four 60 KiB records → hash (if the receiver
//! checks this file) → seal in place → one write (buffers reused), `FileEnd`
//! (with the BLAKE3 if hashed), `Done`, and wait for the `Ack`.
//! Receiving: handshake, collect the offer through the proto
//! [`Receiver`](burrow_proto::transfer::Receiver) machine, check it against the
//! output folder, ask, then write each file under a hidden temporary name and
//! rename it into place once complete (every byte authenticated by the
//! session; the hash checked for resumed files, or all with `--verify`).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use burrow_proto::transfer::{
    Attempt, Entry, EntryKind, MAX_CHUNK, MAX_RESUME, Message, Next, OfferKind, Receiver, ResumeAt, RxEvent,
    Sender, TxEvent, UNKNOWN_SIZE, Verify, escape_display,
};

use crate::error::{Error, shown};
use crate::files::{self, Item};
use crate::paths::Established;
use crate::record::{DataBatch, Keepalive, RecordReader, RecordWriter, SharedWriter};
use crate::{Compress, Decision, Event, Observer, OfferInfo, ReceiveReport, SendReport, Sink};

/// `O_NOFOLLOW`: partial files are reopened only if they are not links.
const NOFOLLOW: i32 = rustix::fs::OFlags::NOFOLLOW.bits() as i32;
/// Files at least this large are synced to disk one by one.
const SYNC_EACH: u64 = 1 << 20;
/// Largest text message a receiver accepts.
pub const MAX_TEXT: u64 = 1 << 20;
/// Progress events at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// What the sender streams.
pub(crate) enum Payload {
    Items(Vec<Item>),
    Text(String),
    Stream(Box<dyn Read + Send>),
}

struct Progress {
    done: u64,
    total: Option<u64>,
    last: Instant,
}

impl Progress {
    fn new(total: Option<u64>) -> Self {
        Self {
            done: 0,
            total,
            last: Instant::now(),
        }
    }

    fn add(&mut self, n: usize, obs: &mut dyn Observer) {
        self.done += n as u64;
        if self.last.elapsed() >= PROGRESS_EVERY {
            self.last = Instant::now();
            obs.event(Event::Progress {
                done: self.done,
                total: self.total,
            });
        }
    }

    /// Counts bytes already present on the other side (resumed).
    fn skip(&mut self, n: u64) {
        self.done += n;
    }

    fn finish(&self, obs: &mut dyn Observer) {
        obs.event(Event::Progress {
            done: self.done,
            total: self.total,
        });
    }
}

fn setup(stream: &TcpStream, idle: Duration) -> Result<(), Error> {
    let set = |r: std::io::Result<()>| r.map_err(Error::ConnectionLost);
    set(stream.set_nonblocking(false))?;
    // Liveness is judged by reads (data or keepalives every idle/3); a write
    // may legitimately wait for a slow but live peer.
    set(stream.set_read_timeout(Some(idle)))?;
    set(stream.set_write_timeout(None))?;
    set(stream.set_nodelay(true))
}

/// An established session on a relay or direct connection: the shared
/// writer with its keepalive thread, the reader, and a handle to the socket
/// for shutting it down.
struct SessionIo {
    w: SharedWriter,
    r: RecordReader<TcpStream>,
    sock: TcpStream,
    _keepalive: Keepalive,
}

impl SessionIo {
    /// Sets the socket of an authenticated connection up and starts
    /// keepalives every idle/3.
    fn open(conn: Established, idle: Duration) -> Result<Self, Error> {
        let Established {
            stream: s,
            sealer,
            opener,
            ..
        } = conn;
        setup(&s, idle)?;
        let clone = |s: &TcpStream| s.try_clone().map_err(Error::ConnectionLost);
        let (rd, sock) = (clone(&s)?, clone(&s)?);
        let w = SharedWriter::new(RecordWriter::new(s, sealer));
        Ok(Self {
            _keepalive: Keepalive::start(w.clone(), idle / 3),
            w,
            r: RecordReader::new(rd, opener),
            sock,
        })
    }
}

fn expect_msg<R: Read>(r: &mut RecordReader<R>, what: &str) -> Result<Vec<u8>, Error> {
    loop {
        match r.next_record()? {
            Some(m) if m == Message::Keepalive.to_vec().as_slice() => continue,
            Some(m) => return Ok(m.to_vec()),
            None => {
                return Err(Error::ConnectionLost(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("the other side closed the connection before {what}"),
                )));
            }
        }
    }
}

/// The sending machine, shared between the data loop and the watcher.
type SharedSender = Arc<Mutex<Sender>>;

fn lock(tx: &SharedSender) -> MutexGuard<'_, Sender> {
    tx.lock().unwrap_or_else(|p| p.into_inner())
}

/// Writes what the sending machine queued (offer, Skip, FileEnd, Done,
/// the reason it failed) through the writer `g`.
fn send_machine(g: &mut RecordWriter<TcpStream>, tx: &SharedSender) -> Result<(), Error> {
    let mut buf = Vec::new();
    while lock(tx).poll_transmit(Instant::now(), &mut buf) {
        g.send(&buf)?;
    }
    Ok(())
}

/// Reads what the receiver says during the data phase, on its own thread,
/// through the machine: keepalives, an `Error`, and finally the `Ack`. If
/// the receiver falls silent for the idle timeout, or fails, the socket is
/// shut down so that a write blocked on a dead peer returns at once.
fn watch_receiver(
    mut r: RecordReader<TcpStream>,
    sock: TcpStream,
    tx: SharedSender,
) -> mpsc::Receiver<Result<(), Error>> {
    let (done, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let res = loop {
            let rec = match expect_msg(&mut r, "confirming the transfer") {
                Ok(rec) => rec,
                Err(e) => break Err(e),
            };
            match lock(&tx).handle(Instant::now(), &rec) {
                Ok(Some(TxEvent::Finished)) => break Ok(()),
                Ok(_) => {}
                Err(e) => break Err(Error::from(e)),
            }
        };
        if res.is_err() {
            let _ = sock.shutdown(Shutdown::Both);
        }
        let _ = done.send(res);
    });
    rx
}

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

impl Payload {
    /// Whether the payload can be offered again on a new connection (a
    /// stream cannot be rewound).
    pub(crate) fn repeatable(&self) -> bool {
        !matches!(self, Payload::Stream(_))
    }

    /// What is offered.
    fn offer(&self) -> (OfferKind, Vec<Entry>) {
        match self {
            Payload::Items(items) => (OfferKind::Files, items.iter().map(|i| i.entry.clone()).collect()),
            Payload::Text(t) => (OfferKind::Text, vec![text_entry(t.len() as u64)]),
            Payload::Stream(_) => (
                OfferKind::Stream,
                vec![Entry {
                    kind: EntryKind::File,
                    executable: false,
                    size: UNKNOWN_SIZE,
                    path: "stdin".into(),
                }],
            ),
        }
    }
}

pub(crate) fn run_send(
    conn: Established,
    payload: &mut Payload,
    obs: &mut dyn Observer,
    idle: Duration,
    compress: Compress,
    state: &mut SendState,
) -> Result<SendReport, Error> {
    let SessionIo {
        w,
        mut r,
        sock,
        _keepalive,
    } = SessionIo::open(conn, idle)?;
    let first_run = state.runs == 0;
    state.runs += 1;
    let (kind, entries) = payload.offer();
    let attempt = if first_run { Attempt::First } else { Attempt::Again };
    let tx: SharedSender = Arc::new(Mutex::new(Sender::new(kind, entries, attempt)));
    {
        let mut g = w.lock();
        send_machine(&mut g, &tx)?;
        g.flush()?;
    }
    if first_run {
        obs.event(Event::WaitingForAccept);
    }
    // A person may take their time: the receiver's keepalives prove it is still there.
    let answer = expect_msg(&mut r, "answering the offer")?;
    let from = match lock(&tx).handle(Instant::now(), &answer) {
        Ok(Some(TxEvent::Accepted { from, .. })) => from,
        Ok(_) => return Err(Error::Protocol("unexpected answer to the offer".into())),
        Err(e) => return Err(e.into()),
    };
    let watcher = watch_receiver(r, sock, tx.clone());
    let entries = lock(&tx).entries().to_vec();
    let total = match kind {
        OfferKind::Stream => None,
        _ => Some(
            entries
                .iter()
                .filter(|e| e.kind == EntryKind::File)
                .map(|e| e.size)
                .sum(),
        ),
    };
    let files = entries.iter().filter(|e| e.kind == EntryKind::File).count();
    if first_run {
        obs.event(Event::Started { files, total });
    }
    let started = *state.started.get_or_insert_with(Instant::now);
    let mut progress = Progress::new(total);
    // Files the receiver completed on an earlier connection of this session.
    progress.skip(
        entries[..from]
            .iter()
            .filter(|e| e.kind == EntryKind::File)
            .map(|e| e.size)
            .sum(),
    );
    let mut buf = Chunker::new(compress);
    let res = (|| -> Result<(), Error> {
        loop {
            let next = lock(&tx).next_file()?;
            let (index, resume) = match next {
                Next::Done => break,
                Next::File { index, resume, .. } => (index, resume),
            };
            let sent_before = progress.done;
            let r = match payload {
                Payload::Items(items) => {
                    let src = items[index]
                        .source
                        .as_ref()
                        .ok_or_else(|| Error::Protocol("a file entry without a source".into()))?;
                    let mut f = File::open(src).map_err(|e| Error::io(src, e))?;
                    let start = match &resume {
                        Some(r) => resume_point(&mut f, src, r)?,
                        None => None,
                    };
                    let start = begin(&w, &tx, index, start, &mut progress)?;
                    send_reader(&w, &tx, &mut buf, f, src, start, &mut progress, obs)
                }
                Payload::Text(t) => {
                    let start = begin(&w, &tx, index, None, &mut progress)?;
                    send_reader(
                        &w,
                        &tx,
                        &mut buf,
                        t.as_bytes(),
                        Path::new("text"),
                        start,
                        &mut progress,
                        obs,
                    )
                }
                Payload::Stream(rd) => {
                    let start = begin(&w, &tx, index, None, &mut progress)?;
                    send_reader(
                        &w,
                        &tx,
                        &mut buf,
                        rd,
                        Path::new("stdin"),
                        start,
                        &mut progress,
                        obs,
                    )
                }
            };
            state.sent += progress.done - sent_before;
            r?;
        }
        let mut g = w.lock();
        send_machine(&mut g, &tx)?;
        g.flush()
    })();
    if first_run {
        state.resumed = lock(&tx).skipped();
    }
    if let Err(e) = res {
        if matches!(e, Error::Io { .. } | Error::Usage(_)) {
            // A local problem: tell the receiver why.
            lock(&tx).abort(&e.to_string());
            let mut g = w.lock();
            let _ = send_machine(&mut g, &tx).and_then(|()| g.flush());
            return Err(e);
        }
        // The connection failed: the watcher knows whether the receiver said why.
        return Err(match watcher.recv_timeout(Duration::from_secs(2)) {
            Ok(Err(why)) => why,
            _ => e,
        });
    }
    progress.finish(obs);
    watcher
        .recv()
        .map_err(|_| Error::Protocol("the receiver watcher stopped".into()))??;
    let report = SendReport {
        files,
        bytes: state.sent,
        resumed: state.resumed,
        elapsed: started.elapsed(),
    };
    obs.event(Event::Finished {
        files,
        bytes: report.bytes,
        elapsed: report.elapsed,
    });
    Ok(report)
}

/// Starts file `index` in the machine (from a checked resume point or from
/// the start) and sends the `Skip` it may queue. Returns the hasher
/// `FileEnd` needs when the receiver checks this file (every file under
/// `hash_all`, else resumed ones: see `burrow_proto::transfer`, "What is
/// verified"), over the bytes before the start.
fn begin(
    w: &SharedWriter,
    tx: &SharedSender,
    index: usize,
    resume: Option<(u64, blake3::Hasher)>,
    progress: &mut Progress,
) -> Result<Option<blake3::Hasher>, Error> {
    let offset = resume.as_ref().map(|r| r.0);
    let hashing = {
        let mut t = lock(tx);
        t.begin(index, offset)?;
        t.hashing()
    };
    send_machine(&mut w.lock(), tx)?;
    Ok(match resume {
        Some((offset, hasher)) => {
            progress.skip(offset);
            Some(hasher)
        }
        None => hashing.then(blake3::Hasher::new),
    })
}

fn text_entry(len: u64) -> Entry {
    Entry {
        kind: EntryKind::File,
        executable: false,
        size: len,
        path: "text".into(),
    }
}

/// Reads file bytes into records, compressing them when that pays.
pub(crate) struct Chunker {
    batch: DataBatch,
    zip: Option<Zip>,
}

struct Zip {
    c: zstd::bulk::Compressor<'static>,
    out: Vec<u8>,
    always: bool,
}

/// What to do about compression for the file being sent.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FileZip {
    Off,
    /// `auto`: the first chunk decides.
    Undecided,
    On,
}

impl Chunker {
    pub(crate) fn new(mode: Compress) -> Self {
        let zip = match mode {
            Compress::Never => None,
            m => zstd::bulk::Compressor::new(1).ok().map(|c| Zip {
                c,
                out: vec![0u8; MAX_CHUNK + 1],
                always: m == Compress::Always,
            }),
        };
        Self {
            batch: DataBatch::default(),
            zip,
        }
    }

    fn start_file(&self) -> FileZip {
        match &self.zip {
            None => FileZip::Off,
            Some(z) if z.always => FileZip::On,
            Some(_) => FileZip::Undecided,
        }
    }

    /// Sends the `n` bytes just read into the batch's space: compressed if
    /// that saves at least a tenth (then at once, as its own record), else
    /// as a `Data` record built in place, written with the batch. Returns
    /// whether it compressed.
    fn send(&mut self, w: &SharedWriter, n: usize, state: FileZip) -> Result<bool, Error> {
        if state != FileZip::Off
            && let Some(z) = &mut self.zip
        {
            let limit = n * 9 / 10;
            if limit > 64 {
                z.out[0] = Message::ZDATA;
                if let Ok(m) =
                    z.c.compress_to_buffer(self.batch.pending(n), &mut z.out[1..1 + limit])
                {
                    let mut g = w.lock();
                    g.send_batch(&mut self.batch)?;
                    g.send(&z.out[..1 + m])?;
                    return Ok(true);
                }
            }
        }
        if self.batch.commit(n) {
            w.lock().send_batch(&mut self.batch)?;
        }
        Ok(false)
    }

    /// Writes the records still in the batch.
    fn flush(&mut self, w: &SharedWriter) -> Result<(), Error> {
        if self.batch.is_empty() {
            return Ok(());
        }
        w.lock().send_batch(&mut self.batch)
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

/// Streams one file's bytes from `rd` (positioned where it starts) into
/// records, hashing them on into `hasher` if that is given; the machine
/// checks every count against the offer and queues `FileEnd`.
#[allow(clippy::too_many_arguments)]
fn send_reader(
    w: &SharedWriter,
    tx: &SharedSender,
    chunker: &mut Chunker,
    mut rd: impl Read,
    name: &Path,
    mut hasher: Option<blake3::Hasher>,
    progress: &mut Progress,
    obs: &mut dyn Observer,
) -> Result<(), Error> {
    let mut zip = chunker.start_file();
    loop {
        // Read outside the lock: a slow source (stdin) must not block keepalives.
        let n = match rd.read(chunker.batch.space()) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(name, e)),
        };
        if n == 0 {
            break;
        }
        if let Some(h) = &mut hasher {
            h.update(chunker.batch.pending(n));
        }
        lock(tx).sent_data(Instant::now(), n)?;
        let compressed = chunker.send(w, n, zip)?;
        if zip == FileZip::Undecided {
            zip = if compressed { FileZip::On } else { FileZip::Off };
        }
        progress.add(n, obs);
    }
    chunker.flush(w)?;
    lock(tx).end_file(hasher.map(|h| *h.finalize().as_bytes()))?;
    send_machine(&mut w.lock(), tx)
}

/// Where received bytes go.
enum Out {
    Dir {
        root: PathBuf,
        overwrite: bool,
        current: Option<(usize, File, PathBuf)>,
        /// Bytes of unknown size (a stream) that may still be written
        /// before the file system would fall below its reserve.
        budget: Option<u64>,
    },
    Stdout,
    Memory(Vec<u8>),
}

impl Out {
    fn write(&mut self, index: usize, rx: &Receiver, bytes: &[u8]) -> Result<(), Error> {
        match self {
            Out::Dir {
                root,
                current,
                budget,
                ..
            } => {
                if current.as_ref().is_none_or(|c| c.0 != index) {
                    let (f, part) = open_part(root, rx, index)?;
                    *current = Some((index, f, part));
                }
                if rx.entries()[index].size == UNKNOWN_SIZE {
                    stream_room(root, budget, bytes.len() as u64)?;
                }
                if let Some((_, f, part)) = current {
                    f.write_all(bytes).map_err(|e| Error::io(&*part, e))?;
                }
                Ok(())
            }
            Out::Stdout => {
                let mut o = std::io::stdout().lock();
                o.write_all(bytes).map_err(|e| Error::io("standard output", e))
            }
            Out::Memory(v) => {
                v.extend_from_slice(bytes);
                Ok(())
            }
        }
    }

    fn finish(&mut self, index: usize, rx: &Receiver) -> Result<Option<PathBuf>, Error> {
        match self {
            Out::Dir {
                root,
                overwrite,
                current,
                ..
            } => {
                let e = &rx.entries()[index];
                let (f, part) = match current.take() {
                    Some((i, f, part)) if i == index => (f, part),
                    other => {
                        *current = other;
                        open_part(root, rx, index)?
                    }
                };
                // Large files reach the disk before their rename; small ones
                // are flushed together by `sync_all` before the final Ack.
                if e.size >= SYNC_EACH {
                    f.sync_data().map_err(|err| Error::io(&part, err))?;
                }
                drop(f);
                if e.executable {
                    files::set_executable(&part)?;
                }
                let dest = files::target(root, &e.path);
                if !*overwrite && fs::symlink_metadata(&dest).is_ok() {
                    let _ = fs::remove_file(&part);
                    return Err(Error::Exists(vec![escape_display(&e.path)]));
                }
                fs::rename(&part, &dest).map_err(|err| Error::io(&dest, err))?;
                Ok(Some(dest))
            }
            Out::Stdout => {
                std::io::stdout()
                    .flush()
                    .map_err(|e| Error::io("standard output", e))?;
                Ok(None)
            }
            Out::Memory(_) => Ok(None),
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

    /// Continues the partial file of entry `index` at `offset`.
    fn resume(&mut self, index: usize, rx: &Receiver, offset: u64) -> Result<(), Error> {
        if let Out::Dir { root, current, .. } = self {
            let part = files::part_path(root, &rx.entries()[index].path, |p| rx.offers(p));
            let meta = fs::symlink_metadata(&part).map_err(|e| Error::io(&part, e))?;
            if !meta.file_type().is_file() {
                return Err(Error::Usage(format!("{} is not a regular file", shown(&part))));
            }
            let mut f = OpenOptions::new()
                .write(true)
                .custom_flags(NOFOLLOW)
                .open(&part)
                .map_err(|e| Error::io(&part, e))?;
            f.set_len(offset).map_err(|e| Error::io(&part, e))?;
            f.seek(SeekFrom::Start(offset)).map_err(|e| Error::io(&part, e))?;
            *current = Some((index, f, part));
        }
        Ok(())
    }

    /// Ends a failed transfer. A partial file is kept (under its hidden
    /// name) when the connection was lost, so a later transfer can resume
    /// it; after an integrity, protocol or local error it is removed.
    fn abort(&mut self, err: &Error, resumable: bool) {
        let keep = resumable
            && matches!(
                err,
                Error::ConnectionLost(_) | Error::Timeout(_) | Error::PeerClosed(_)
            );
        if let Out::Dir { current, .. } = self
            && let Some((_, f, part)) = current.take()
        {
            drop(f);
            if !keep {
                let _ = fs::remove_file(part);
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

fn open_part(root: &Path, rx: &Receiver, index: usize) -> Result<(File, PathBuf), Error> {
    let e = &rx.entries()[index];
    files::check_components(root, &e.path)?;
    let dest = files::target(root, &e.path);
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(|err| Error::io(parent, err))?;
    }
    let part = files::part_path(root, &e.path, |p| rx.offers(p));
    if fs::symlink_metadata(&part).is_ok() {
        fs::remove_file(&part).map_err(|err| Error::io(&part, err))?;
    }
    // create_new: O_EXCL, so a link planted at this name is never followed.
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&part)
        .map_err(|err| Error::io(&part, err))?;
    Ok((f, part))
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

pub(crate) fn run_receive(
    conn: Established,
    sink: &Sink,
    overwrite: bool,
    obs: &mut dyn Observer,
    idle: Duration,
    state: &mut RecvState,
) -> Result<ReceiveReport, Error> {
    // Keepalives also cover the time a person takes to decide.
    let SessionIo {
        w, mut r, _keepalive, ..
    } = SessionIo::open(conn, idle)?;
    let mut rx = Receiver::new().verify(state.verify);
    loop {
        let rec = expect_msg(&mut r, "sending its offer")?;
        match rx.handle(Instant::now(), &rec) {
            Ok(RxEvent::OfferReady) => break,
            Ok(_) => {}
            Err(e) => {
                // The machine queued the reason for the sender.
                let _ = send_queued(&w, &mut rx);
                return Err(e.into());
            }
        }
    }
    let offer = rx.offer();
    let again = state.accepted.is_some();
    if let Some((kind, entries, _)) = &state.accepted
        && (*kind != offer.kind || *entries != offer.entries)
    {
        let e = Error::Protocol("the sender offered something else after reconnecting".into());
        let _ = w.send_now(&Message::Error(e.to_string()).to_vec());
        return Err(e);
    }
    let mut info = OfferInfo {
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
    let refuse = |w: &SharedWriter, rx: &mut Receiver, reason: &str| {
        rx.reject(reason);
        let _ = send_queued(w, rx);
    };
    let overwrite = match &state.accepted {
        // Accepted on an earlier connection of this session: don't ask again.
        Some((_, _, overwrite)) => *overwrite,
        None => {
            if let Err(e) = plan(&mut info, sink) {
                refuse(&w, &mut rx, &format!("the receiver cannot take this: {e}"));
                return Err(e);
            }
            let overwrite = match obs.decide(&info) {
                Decision::Accept => overwrite,
                Decision::AcceptOverwrite => true,
                Decision::Reject(reason) => {
                    refuse(&w, &mut rx, &reason);
                    return Err(Error::Declined(reason));
                }
            };
            if !overwrite && !info.existing.is_empty() {
                refuse(
                    &w,
                    &mut rx,
                    "files with these names already exist on the receiving side",
                );
                return Err(Error::Exists(info.existing));
            }
            overwrite
        }
    };
    let mut out = match (info.kind, sink) {
        (OfferKind::Text, _) => Out::Memory(Vec::new()),
        (OfferKind::Stream, Sink::Auto(_)) | (_, Sink::Stdout) => Out::Stdout,
        (_, Sink::Dir(root) | Sink::Auto(root)) => {
            for e in info.entries.iter().filter(|e| e.kind == EntryKind::Dir) {
                files::check_components(root, &e.path)?;
                let d = files::target(root, &e.path);
                fs::create_dir_all(&d).map_err(|err| Error::io(&d, err))?;
            }
            if info.kind == OfferKind::Files {
                fs::create_dir_all(root).map_err(|err| Error::io(root, err))?;
            }
            Out::Dir {
                root: root.clone(),
                overwrite,
                current: None,
                budget: None,
            }
        }
    };
    let from = if again { state.from } else { 0 };
    let proposals = match &out {
        Out::Dir { root, .. } if info.kind == OfferKind::Files => resume_proposals(root, &rx, from, again)?,
        _ => Vec::new(),
    };
    let resumable: u64 = proposals.iter().map(|p| p.1).sum();
    if again {
        rx.continue_from(from, proposals)?;
    } else {
        rx.accept_resuming(proposals)?;
    }
    send_queued(&w, &mut rx)?;
    if !again {
        state.accepted = Some((info.kind, info.entries.clone(), overwrite));
    }
    let total = (info.kind != OfferKind::Stream).then_some(info.total);
    if !again {
        obs.event(Event::Started {
            files: info.files,
            total,
        });
    }
    let started = *state.started.get_or_insert_with(Instant::now);
    let mut progress = Progress::new(total);
    progress.skip(
        info.entries[..from.min(info.entries.len())]
            .iter()
            .filter(|e| e.kind == EntryKind::File)
            .map(|e| e.size)
            .sum(),
    );
    // A frame may not expand past one chunk: no decompression bombs.
    let mut plain = vec![0u8; MAX_CHUNK];
    let mut unzip = zstd::bulk::Decompressor::new().map_err(|e| Error::Protocol(format!("zstd: {e}")))?;
    let mut resumed_here = 0u64;
    let res = (|| -> Result<(), Error> {
        loop {
            let rec = expect_msg(&mut r, "finishing the transfer")?;
            let ev = rx.handle(Instant::now(), &rec);
            if ev.is_err() {
                let _ = send_queued(&w, &mut rx);
            }
            match ev? {
                RxEvent::Data { index, bytes } => {
                    let n = bytes.len();
                    out.write(index, &rx, bytes)?;
                    progress.add(n, obs);
                }
                RxEvent::Compressed { frame, .. } => {
                    let n = unzip
                        .decompress_to_buffer(frame, &mut plain[..])
                        .map_err(|e| Error::Protocol(format!("bad compressed data from the sender: {e}")))?;
                    if let RxEvent::Data { index, bytes } = rx.data(&plain[..n])? {
                        out.write(index, &rx, bytes)?;
                        progress.add(n, obs);
                    }
                }
                RxEvent::Resumed { index, offset } => {
                    out.resume(index, &rx, offset)?;
                    progress.skip(offset);
                    resumed_here += offset;
                }
                RxEvent::FileVerified { index } => {
                    if let Some(p) = out.finish(index, &rx)? {
                        state.saved.push(p);
                    }
                    state.from = index + 1;
                }
                RxEvent::Finished => {
                    // On disk before the Ack (queued by the machine) says so.
                    out.sync_all()?;
                    send_queued(&w, &mut rx)?;
                    return Ok(());
                }
                RxEvent::Nothing | RxEvent::OfferReady => {}
            }
        }
    })();
    state.received += rx.received();
    if !again {
        state.resumed = resumable.min(resumed_here);
    }
    if let Err(e) = res {
        out.abort(&e, info.kind == OfferKind::Files);
        // A dropped connection may be continued: only a real failure is told.
        if !e.is_transient() {
            // (Unless the machine failed first and told the sender itself.)
            rx.abort(&format!("receiver: {e}"));
            let _ = send_queued(&w, &mut rx);
        }
        return Err(e);
    }
    progress.finish(obs);
    let text = match out {
        Out::Memory(v) => Some(String::from_utf8_lossy(&v).into_owned()),
        _ => None,
    };
    let report = ReceiveReport {
        files: info.files,
        bytes: state.received,
        resumed: state.resumed,
        elapsed: started.elapsed(),
        saved: std::mem::take(&mut state.saved),
        text,
    };
    obs.event(Event::Finished {
        files: report.files,
        bytes: report.bytes,
        elapsed: report.elapsed,
    });
    Ok(report)
}

/// Sends what the receiving machine queued (its answers, the Ack, the
/// reason it failed).
fn send_queued(w: &SharedWriter, rx: &mut Receiver) -> Result<(), Error> {
    let mut buf = Vec::new();
    while rx.poll_transmit(Instant::now(), &mut buf) {
        w.send_now(&buf)?;
    }
    Ok(())
}

/// Partial files from an earlier transfer, as resume proposals: the bytes
/// present and a hasher over them (the sender checks the hash). After a
/// reconnect (`in_flight`) only the first unfinished file can have one.
fn resume_proposals(
    root: &Path,
    rx: &Receiver,
    from: usize,
    in_flight: bool,
) -> Result<Vec<(usize, u64, blake3::Hasher)>, Error> {
    let entries = rx.entries();
    let mut out = Vec::new();
    let last = if in_flight {
        first_file(entries, from)
    } else {
        usize::MAX
    };
    for (index, e) in entries.iter().enumerate().skip(from) {
        if index > last {
            break;
        }
        if out.len() >= MAX_RESUME || e.kind != EntryKind::File || e.size == 0 {
            continue;
        }
        let part = files::part_path(root, &e.path, |p| rx.offers(p));
        let Ok(meta) = fs::symlink_metadata(&part) else {
            continue;
        };
        if !meta.file_type().is_file() || meta.len() == 0 {
            continue;
        }
        let offset = meta.len().min(e.size);
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

/// The index of the first file entry at or after `from`.
fn first_file(entries: &[Entry], from: usize) -> usize {
    entries
        .iter()
        .enumerate()
        .skip(from)
        .find(|(_, e)| e.kind == EntryKind::File)
        .map_or(entries.len(), |(i, _)| i)
}
