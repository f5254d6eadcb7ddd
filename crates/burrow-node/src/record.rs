//! Blocking record I/O over a stream: the session layer of the data path.
//!
//! The transfer engine runs on a dedicated thread with blocking sockets, so
//! the hot loop is read → hash → seal → write with no task hand-offs, and
//! buffers are reused (no allocation per record).

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use burrow_proto::session::{LEN_PREFIX, MAX_PLAINTEXT, MAX_RECORD, Opener, Sealer, peek_record_len};
use burrow_proto::transfer::Message;

use crate::error::Error;

/// Sealed bytes are written once this many are buffered.
const FLUSH_AT: usize = 256 * 1024;
/// Socket read size on the receiving side.
const READ_BUF: usize = 512 * 1024;

fn lost(e: std::io::Error) -> Error {
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => {
            Error::Timeout("the other side stopped responding".into())
        }
        _ => Error::ConnectionLost(e),
    }
}

/// Writes sealed records.
pub struct RecordWriter<W: Write> {
    w: W,
    sealer: Sealer,
    out: Vec<u8>,
    last_write: Instant,
}

impl<W: Write> RecordWriter<W> {
    /// Wraps a stream.
    pub fn new(w: W, sealer: Sealer) -> Self {
        Self {
            w,
            sealer,
            out: Vec::with_capacity(FLUSH_AT + MAX_RECORD + LEN_PREFIX),
            last_write: Instant::now(),
        }
    }

    /// Time since bytes were last written to the stream.
    pub fn idle(&self) -> Duration {
        self.last_write.elapsed()
    }

    /// Queues one message (one record); writes when enough is buffered.
    pub fn send(&mut self, msg: &[u8]) -> Result<(), Error> {
        self.sealer.seal(msg, &mut self.out)?;
        self.maybe_flush()
    }

    fn maybe_flush(&mut self) -> Result<(), Error> {
        if self.out.len() >= FLUSH_AT {
            self.flush()
        } else {
            Ok(())
        }
    }

    /// Writes everything buffered.
    pub fn flush(&mut self) -> Result<(), Error> {
        if !self.out.is_empty() {
            self.w.write_all(&self.out).map_err(lost)?;
            self.out.clear();
            self.last_write = Instant::now();
        }
        self.w.flush().map_err(lost)
    }
}

/// A reusable plaintext buffer for `Data` records: fill [`DataBuf::space`],
/// then seal [`DataBuf::record`]. Filling happens outside any lock.
pub struct DataBuf(Vec<u8>);

impl Default for DataBuf {
    fn default() -> Self {
        let mut v = vec![0u8; MAX_PLAINTEXT];
        v[0] = 0x06;
        Self(v)
    }
}

impl DataBuf {
    /// Where the file bytes go: a whole number of BLAKE3 chunks (1 KiB), so
    /// that hashing one record never leaves a partial chunk behind.
    pub fn space(&mut self) -> &mut [u8] {
        let whole = (self.0.len() - 1) / 1024 * 1024;
        &mut self.0[1..1 + whole]
    }

    /// The `Data` record holding the first `n` bytes of [`DataBuf::space`].
    pub fn record(&self, n: usize) -> &[u8] {
        &self.0[..1 + n]
    }
}

/// The writing half, shared by the engine and the keepalive thread.
#[derive(Clone)]
pub struct SharedWriter(Arc<Mutex<RecordWriter<TcpStream>>>);

impl SharedWriter {
    /// Shares `w`.
    pub fn new(w: RecordWriter<TcpStream>) -> Self {
        Self(Arc::new(Mutex::new(w)))
    }

    /// Locks the writer (a panic elsewhere does not poison it for us).
    pub fn lock(&self) -> MutexGuard<'_, RecordWriter<TcpStream>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends one message and flushes.
    pub fn send_now(&self, msg: &[u8]) -> Result<(), Error> {
        let mut g = self.lock();
        g.send(msg)?;
        g.flush()
    }
}

/// Sends a `Keepalive` record whenever nothing was written for `every`, so
/// the other side can tell "slow" from "gone". Stops, at once, when dropped.
pub struct Keepalive {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Keepalive {
    /// Starts the keepalive thread.
    pub fn start(w: SharedWriter, every: Duration) -> Self {
        let (stop, stopped) = mpsc::channel::<()>();
        let tick = (every / 4).max(Duration::from_millis(20));
        let thread = std::thread::spawn(move || {
            let ka = Message::Keepalive.to_vec();
            // Wakes every tick, or immediately when the handle is dropped.
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(tick) {
                let mut g = w.lock();
                if g.idle() >= every && (g.send(&ka).is_err() || g.flush().is_err()) {
                    return;
                }
            }
        });
        Self {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Keepalive {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads and opens records.
pub struct RecordReader<R: Read> {
    r: R,
    opener: Opener,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    plain: Vec<u8>,
}

impl<R: Read> RecordReader<R> {
    /// Wraps a stream.
    pub fn new(r: R, opener: Opener) -> Self {
        Self {
            r,
            opener,
            buf: vec![0u8; READ_BUF],
            start: 0,
            end: 0,
            plain: vec![0u8; MAX_PLAINTEXT],
        }
    }

    /// The next record's plaintext; `None` on a clean end of stream between records.
    pub fn next_record(&mut self) -> Result<Option<&[u8]>, Error> {
        loop {
            let have = &self.buf[self.start..self.end];
            if let Some(len) =
                peek_record_len(have).map_err(|e| Error::Protocol(format!("malformed record: {e}")))?
                && have.len() >= LEN_PREFIX + len
            {
                let ct = self.start + LEN_PREFIX..self.start + LEN_PREFIX + len;
                self.start = ct.end;
                let n = self.opener.open(&self.buf[ct], &mut self.plain)?;
                return Ok(Some(&self.plain[..n]));
            }
            // Need more bytes: compact, then read.
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let n = self.r.read(&mut self.buf[self.end..]).map_err(lost)?;
            if n == 0 {
                return if self.end == 0 {
                    Ok(None)
                } else {
                    Err(Error::ConnectionLost(std::io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "the stream ended in the middle of a record",
                    )))
                };
            }
            self.end += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burrow_proto::pake::SessionKey;
    use burrow_proto::session::pair_in_memory;

    #[test]
    fn records_survive_arbitrary_read_boundaries() {
        let key = SessionKey::from_bytes([3; 32]);
        let (a, b) = pair_in_memory(&key, "t").unwrap();
        let (tx, _) = a.split();
        let (_, rx) = b.split();
        let mut w = RecordWriter::new(Vec::new(), tx);
        let msgs: Vec<Vec<u8>> = (0..50).map(|i| vec![i as u8; i * 1300]).collect();
        for m in &msgs {
            w.send(m).unwrap();
        }
        w.flush().unwrap();
        // A reader that returns at most 7 bytes per call.
        struct Trickle(std::io::Cursor<Vec<u8>>);
        impl Read for Trickle {
            fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
                let n = b.len().min(7);
                self.0.read(&mut b[..n])
            }
        }
        let mut r = RecordReader::new(Trickle(std::io::Cursor::new(w.w.clone())), rx);
        for m in &msgs {
            assert_eq!(r.next_record().unwrap().unwrap(), &m[..]);
        }
        assert!(r.next_record().unwrap().is_none());
    }

    #[test]
    fn truncated_stream_is_an_error() {
        let key = SessionKey::from_bytes([3; 32]);
        let (a, b) = pair_in_memory(&key, "t").unwrap();
        let (tx, _) = a.split();
        let (_, rx) = b.split();
        let mut w = RecordWriter::new(Vec::new(), tx);
        w.send(b"hello").unwrap();
        w.flush().unwrap();
        let mut bytes = w.w.clone();
        bytes.pop();
        let mut r = RecordReader::new(std::io::Cursor::new(bytes), rx);
        assert!(matches!(r.next_record(), Err(Error::ConnectionLost(_))));
    }
}
