//! The transfer engine: runs on a blocking thread over a stapled connection.
//!
//! Sending: handshake, offer, wait for the decision, then for each file
//! read → hash → seal → write (one 64 KiB record at a time, buffers reused),
//! `FileEnd` with the BLAKE3, `Done`, and wait for the `Ack`.
//! Receiving: handshake, collect the offer through the proto
//! [`Receiver`](burrow_proto::transfer::Receiver) machine, check it against the
//! output folder, ask, then write each file under a hidden temporary name and
//! rename it into place only after its hash was verified.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use burrow_proto::pake::SessionKey;
use burrow_proto::transfer::{
    Entry, EntryKind, Message, OfferKind, Receiver, RxEvent, UNKNOWN_SIZE, escape_display, offer_records,
};

use crate::error::Error;
use crate::files::{self, Item};
use crate::record::{RecordReader, RecordWriter, handshake};
use crate::{Decision, Event, Observer, OfferInfo, ReceiveReport, SendReport, Sink};

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
    set(stream.set_read_timeout(Some(idle)))?;
    set(stream.set_write_timeout(Some(idle)))?;
    set(stream.set_nodelay(true))
}

fn expect_msg<R: Read>(r: &mut RecordReader<R>, what: &str) -> Result<Vec<u8>, Error> {
    match r.next_record()? {
        Some(m) => Ok(m.to_vec()),
        None => Err(Error::ConnectionLost(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("the other side closed the connection before {what}"),
        ))),
    }
}

/// After a failed write, the peer may have said why before closing.
fn peer_reason<R: Read>(r: &mut RecordReader<R>, err: Error) -> Error {
    if matches!(err, Error::ConnectionLost(_) | Error::Timeout(_))
        && let Ok(Some(m)) = r.next_record()
        && let Ok(Message::Error(msg)) = Message::decode(m)
    {
        return Error::PeerClosed(escape_display(&msg));
    }
    err
}

pub(crate) fn run_send(
    stream: TcpStream,
    key: &SessionKey,
    context: &str,
    payload: Payload,
    obs: &mut dyn Observer,
    idle: Duration,
) -> Result<SendReport, Error> {
    setup(&stream, idle)?;
    let mut s = stream;
    let (sealer, opener) = handshake(&mut s, key, context, true)?;
    let rd = s.try_clone().map_err(Error::ConnectionLost)?;
    let rd_timeout = s.try_clone().map_err(Error::ConnectionLost)?;
    let mut w = RecordWriter::new(s, sealer);
    let mut r = RecordReader::new(rd, opener);

    let (kind, entries): (OfferKind, Vec<Entry>) = match &payload {
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
    };
    for rec in offer_records(kind, &entries) {
        w.send(&rec)?;
    }
    w.flush()?;
    obs.event(Event::WaitingForAccept);
    // A person is deciding: no deadline, but a closed connection still ends it.
    rd_timeout.set_read_timeout(None).map_err(Error::ConnectionLost)?;
    let answer = expect_msg(&mut r, "answering the offer")?;
    match Message::decode(&answer).map_err(|e| Error::Protocol(e.to_string()))? {
        Message::Accept => {}
        Message::Reject(reason) => return Err(Error::Declined(escape_display(&reason))),
        Message::Error(m) => return Err(Error::PeerClosed(escape_display(&m))),
        _ => return Err(Error::Protocol("unexpected answer to the offer".into())),
    }
    rd_timeout
        .set_read_timeout(Some(idle))
        .map_err(Error::ConnectionLost)?;
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
    obs.event(Event::Started { files, total });
    let started = Instant::now();
    let mut progress = Progress::new(total);
    let res = (|| -> Result<(), Error> {
        match payload {
            Payload::Items(items) => {
                for item in items.iter().filter(|i| i.entry.kind == EntryKind::File) {
                    let Some(src) = &item.source else { continue };
                    let f = File::open(src).map_err(|e| Error::io(src, e))?;
                    send_reader(&mut w, f, Some(item.entry.size), src, &mut progress, obs)?;
                }
            }
            Payload::Text(t) => {
                send_reader(
                    &mut w,
                    t.as_bytes(),
                    Some(t.len() as u64),
                    Path::new("text"),
                    &mut progress,
                    obs,
                )?;
            }
            Payload::Stream(rd) => send_reader(&mut w, rd, None, Path::new("stdin"), &mut progress, obs)?,
        }
        w.send(&Message::Done.to_vec())?;
        w.flush()
    })();
    if let Err(e) = res {
        // Tell the receiver why, unless the connection is already gone.
        if matches!(e, Error::Io { .. } | Error::Usage(_)) {
            let _ = w.send(&Message::Error(e.to_string()).to_vec());
            let _ = w.flush();
            return Err(e);
        }
        return Err(peer_reason(&mut r, e));
    }
    progress.finish(obs);
    let ack = expect_msg(&mut r, "confirming the transfer")?;
    match Message::decode(&ack).map_err(|e| Error::Protocol(e.to_string()))? {
        Message::Ack => {}
        Message::Error(m) => return Err(Error::PeerClosed(escape_display(&m))),
        _ => return Err(Error::Protocol("expected the receiver's confirmation".into())),
    }
    let report = SendReport {
        files,
        bytes: progress.done,
        elapsed: started.elapsed(),
    };
    obs.event(Event::Finished {
        files,
        bytes: report.bytes,
        elapsed: report.elapsed,
    });
    Ok(report)
}

fn text_entry(len: u64) -> Entry {
    Entry {
        kind: EntryKind::File,
        executable: false,
        size: len,
        path: "text".into(),
    }
}

fn send_reader<W: Write>(
    w: &mut RecordWriter<W>,
    mut rd: impl Read,
    size: Option<u64>,
    name: &Path,
    progress: &mut Progress,
    obs: &mut dyn Observer,
) -> Result<(), Error> {
    let mut hasher = blake3::Hasher::new();
    let mut sent: u64 = 0;
    loop {
        let buf = w.data_buf();
        let n = match rd.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(name, e)),
        };
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        sent += n as u64;
        if size.is_some_and(|s| sent > s) {
            return Err(Error::Usage(format!(
                "{} grew while it was being sent",
                name.display()
            )));
        }
        w.send_data(n)?;
        progress.add(n, obs);
    }
    if size.is_some_and(|s| sent != s) {
        return Err(Error::Usage(format!(
            "{} shrank while it was being sent",
            name.display()
        )));
    }
    w.send(&Message::FileEnd(*hasher.finalize().as_bytes()).to_vec())
}

/// Where received bytes go.
enum Out {
    Dir {
        root: PathBuf,
        overwrite: bool,
        current: Option<(usize, File, PathBuf)>,
    },
    Stdout,
    Memory(Vec<u8>),
}

impl Out {
    fn write(&mut self, index: usize, entries: &[Entry], bytes: &[u8]) -> Result<(), Error> {
        match self {
            Out::Dir { root, current, .. } => {
                if current.as_ref().is_none_or(|c| c.0 != index) {
                    let (f, part) = open_part(root, &entries[index])?;
                    *current = Some((index, f, part));
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

    fn finish(&mut self, index: usize, entries: &[Entry]) -> Result<Option<PathBuf>, Error> {
        match self {
            Out::Dir {
                root,
                overwrite,
                current,
            } => {
                let e = &entries[index];
                let (f, part) = match current.take() {
                    Some((i, f, part)) if i == index => (f, part),
                    other => {
                        *current = other;
                        open_part(root, e)?
                    }
                };
                f.sync_data().map_err(|err| Error::io(&part, err))?;
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

    /// Removes the partial file of a failed transfer.
    fn abort(&mut self) {
        if let Out::Dir { current, .. } = self
            && let Some((_, f, part)) = current.take()
        {
            drop(f);
            let _ = fs::remove_file(part);
        }
    }
}

fn open_part(root: &Path, e: &Entry) -> Result<(File, PathBuf), Error> {
    files::check_components(root, &e.path)?;
    let dest = files::target(root, &e.path);
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(|err| Error::io(parent, err))?;
    }
    let part = files::part_path(&dest);
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

pub(crate) fn run_receive(
    stream: TcpStream,
    key: &SessionKey,
    context: &str,
    sink: &Sink,
    overwrite: bool,
    obs: &mut dyn Observer,
    idle: Duration,
) -> Result<ReceiveReport, Error> {
    setup(&stream, idle)?;
    let mut s = stream;
    let (sealer, opener) = handshake(&mut s, key, context, false)?;
    let rd = s.try_clone().map_err(Error::ConnectionLost)?;
    let mut w = RecordWriter::new(s, sealer);
    let mut r = RecordReader::new(rd, opener);
    let mut rx = Receiver::new();
    loop {
        let rec = expect_msg(&mut r, "sending its offer")?;
        match rx.handle(&rec) {
            Ok(RxEvent::OfferReady) => break,
            Ok(_) => {}
            Err(e) => {
                let _ = w.send(&Message::Error(e.to_string()).to_vec());
                let _ = w.flush();
                return Err(e.into());
            }
        }
    }
    let offer = rx.offer();
    let mut info = OfferInfo {
        kind: offer.kind,
        files: offer.files(),
        dirs: offer.dirs(),
        total: offer.total,
        entries: offer.entries,
        existing: Vec::new(),
        free: None,
    };
    let refuse = |w: &mut RecordWriter<TcpStream>, reason: &str| {
        let _ = w.send(&Message::Reject(reason.to_owned()).to_vec());
        let _ = w.flush();
    };
    if let Err(e) = plan(&mut info, sink) {
        refuse(&mut w, &format!("the receiver cannot take this: {e}"));
        return Err(e);
    }
    let overwrite = match obs.decide(&info) {
        Decision::Accept => overwrite,
        Decision::AcceptOverwrite => true,
        Decision::Reject(reason) => {
            refuse(&mut w, &reason);
            return Err(Error::Declined(reason));
        }
    };
    if !overwrite && !info.existing.is_empty() {
        refuse(
            &mut w,
            "files with these names already exist on the receiving side",
        );
        return Err(Error::Exists(info.existing));
    }
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
            }
        }
    };
    let accept = rx.accept()?;
    w.send(&accept)?;
    w.flush()?;
    let total = (info.kind != OfferKind::Stream).then_some(info.total);
    obs.event(Event::Started {
        files: info.files,
        total,
    });
    let started = Instant::now();
    let mut progress = Progress::new(total);
    let mut saved = Vec::new();
    let res = (|| -> Result<(), Error> {
        loop {
            let rec = expect_msg(&mut r, "finishing the transfer")?;
            match rx.handle(&rec)? {
                RxEvent::Data { index, bytes } => {
                    let n = bytes.len();
                    out.write(index, rx.entries(), bytes)?;
                    progress.add(n, obs);
                }
                RxEvent::FileVerified { index } => {
                    if let Some(p) = out.finish(index, rx.entries())? {
                        saved.push(p);
                    }
                }
                RxEvent::Finished => {
                    w.send(&rx.ack())?;
                    w.flush()?;
                    return Ok(());
                }
                RxEvent::Nothing | RxEvent::OfferReady => {}
            }
        }
    })();
    if let Err(e) = res {
        out.abort();
        let _ = w.send(&Message::Error(format!("receiver: {e}")).to_vec());
        let _ = w.flush();
        return Err(e);
    }
    progress.finish(obs);
    let text = match out {
        Out::Memory(v) => Some(String::from_utf8_lossy(&v).into_owned()),
        _ => None,
    };
    let report = ReceiveReport {
        files: info.files,
        bytes: rx.received(),
        elapsed: started.elapsed(),
        saved,
        text,
    };
    obs.event(Event::Finished {
        files: report.files,
        bytes: report.bytes,
        elapsed: report.elapsed,
    });
    Ok(report)
}
