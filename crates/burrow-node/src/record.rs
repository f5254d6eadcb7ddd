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

use burrow_proto::session::{
    LEN_PREFIX, MAX_PLAINTEXT, MAX_RECORD, Opener, Sealer, TAG_LEN, compact_before_read, peek_record_len,
};
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

    /// Seals the batch's records in place and writes them (after anything
    /// queued before them), leaving the batch empty.
    pub fn send_batch(&mut self, batch: &mut DataBatch) -> Result<(), Error> {
        if batch.filled.is_empty() {
            return Ok(());
        }
        if !self.out.is_empty() {
            self.w.write_all(&self.out).map_err(lost)?;
            self.out.clear();
        }
        let mut end = 0;
        for (i, &n) in batch.filled.iter().enumerate() {
            let rec = i * SLOT..i * SLOT + LEN_PREFIX + 1 + n + TAG_LEN;
            end = rec.end;
            self.sealer.seal_in_place(&mut batch.buf[rec])?;
        }
        batch.filled.clear();
        self.w.write_all(&batch.buf[..end]).map_err(lost)?;
        self.last_write = Instant::now();
        Ok(())
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

/// File bytes per `Data` record: whole pages, so that every read on the
/// sender and every write on the receiver starts and ends on a page boundary
/// (partial pages cost the kernel extra work on both), and whole BLAKE3
/// chunks.
pub const DATA_SPACE: usize = (MAX_PLAINTEXT - 1) / 4096 * 4096;
/// One record as it goes on the wire: prefix, `Data` type byte, bytes, tag.
const SLOT: usize = LEN_PREFIX + 1 + DATA_SPACE + TAG_LEN;
/// Records sealed and written together (one `write` of ~240 KiB).
const SLOTS: usize = 4;

/// `Data` records built where they are sealed: file bytes are read straight
/// into a slot laid out as `[prefix][0x06][bytes][tag]`, sealed in place and
/// written from there, so they are never copied in user space. Full slots
/// side by side are the records exactly as they go on the wire; a batch ends
/// early at a short read, whose slot is then the last.
pub struct DataBatch {
    buf: Vec<u8>,
    /// Bytes in each filled slot.
    filled: Vec<usize>,
}

impl Default for DataBatch {
    fn default() -> Self {
        Self {
            buf: vec![0u8; SLOT * SLOTS],
            filled: Vec::with_capacity(SLOTS),
        }
    }
}

impl DataBatch {
    /// Where the next record's file bytes start.
    fn next_data(&self) -> usize {
        self.filled.len() * SLOT + LEN_PREFIX + 1
    }

    /// Where the next record's file bytes go (read into it, then [`DataBatch::commit`]).
    pub fn space(&mut self) -> &mut [u8] {
        let at = self.next_data();
        &mut self.buf[at..at + DATA_SPACE]
    }

    /// The first `n` bytes of [`DataBatch::space`], read but not committed.
    pub fn pending(&self, n: usize) -> &[u8] {
        let at = self.next_data();
        &self.buf[at..at + n]
    }

    /// Takes the first `n` bytes of [`DataBatch::space`] as the next record.
    /// Returns whether the batch should be written now (full, or ended by a short read).
    pub fn commit(&mut self, n: usize) -> bool {
        // Sealing encrypted the slot's type byte along with its bytes last time.
        let at = self.next_data();
        self.buf[at - 1] = Message::DATA;
        self.filled.push(n);
        n < DATA_SPACE || self.filled.len() == SLOTS
    }

    /// Whether no record is waiting.
    pub fn is_empty(&self) -> bool {
        self.filled.is_empty()
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
                return Ok(Some(self.opener.open_in_place(&mut self.buf[ct])?));
            }
            // Need more bytes.
            if compact_before_read(self.start, self.end, self.buf.len()) {
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
    use burrow_proto::channel::pake::SessionKey;
    use burrow_proto::session::handshake_in_memory;

    /// A writer into memory and the opener for what it writes.
    fn one_way(seed: u8) -> (RecordWriter<Vec<u8>>, Opener) {
        let (a, b) = handshake_in_memory(
            &SessionKey::from_bytes([seed; 32]),
            "t",
            crate::platform::aead(),
            &mut burrow_proto::random::seeded(seed),
        )
        .unwrap();
        let (tx, _) = a.split();
        let (_, rx) = b.split();
        (RecordWriter::new(Vec::new(), tx), rx)
    }

    /// Records built in place come out as the same `Data` messages, in
    /// order with records queued around them, across several batches.
    #[test]
    fn batches_keep_order_with_queued_records() {
        let (mut w, rx) = one_way(4);
        let mut batch = DataBatch::default();
        let mut want: Vec<Vec<u8>> = Vec::new();
        // Full slots until a batch is due, a short one that ends a batch, control records between.
        let sizes = [
            DATA_SPACE, DATA_SPACE, DATA_SPACE, DATA_SPACE, DATA_SPACE, 10, 0, DATA_SPACE, 1,
        ];
        for (i, &n) in sizes.iter().enumerate() {
            if i % 3 == 1 {
                let ctl = vec![0xc0 | i as u8; 3];
                w.send(&ctl).unwrap();
                want.push(ctl);
            }
            let space = batch.space();
            assert_eq!(space.len(), DATA_SPACE);
            space[..n].fill(i as u8);
            assert_eq!(batch.pending(n), &vec![i as u8; n][..]);
            let mut rec = vec![Message::DATA];
            rec.extend(std::iter::repeat_n(i as u8, n));
            // Queued records sealed before the batch is written go first.
            if batch.commit(n) {
                w.send_batch(&mut batch).unwrap();
                assert!(batch.is_empty());
            }
            want.push(rec);
        }
        // What is left in the batch goes last.
        w.send_batch(&mut batch).unwrap();
        w.flush().unwrap();
        let mut r = RecordReader::new(std::io::Cursor::new(w.w), rx);
        let mut got = Vec::new();
        while let Some(rec) = r.next_record().unwrap() {
            got.push(rec.to_vec());
        }
        // Control records queued while data waited in the batch were sealed
        // first, so they arrive before that data: data must come in order,
        // and controls in order.
        let data = |v: &Vec<Vec<u8>>| {
            v.iter()
                .filter(|m| m[0] == Message::DATA)
                .cloned()
                .collect::<Vec<_>>()
        };
        let ctl = |v: &Vec<Vec<u8>>| {
            v.iter()
                .filter(|m| m[0] != Message::DATA)
                .cloned()
                .collect::<Vec<_>>()
        };
        let summary = |v: Vec<Vec<u8>>| v.iter().map(|m| (m.len(), m.get(1).copied())).collect::<Vec<_>>();
        assert_eq!(summary(data(&got)), summary(data(&want)));
        assert!(data(&got) == data(&want), "same sizes, different bytes");
        assert_eq!(ctl(&got), ctl(&want));
        assert_eq!(got.len(), want.len());
    }

    #[test]
    fn records_survive_arbitrary_read_boundaries() {
        let (mut w, rx) = one_way(3);
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
        let (mut w, rx) = one_way(3);
        w.send(b"hello").unwrap();
        w.flush().unwrap();
        let mut bytes = w.w.clone();
        bytes.pop();
        let mut r = RecordReader::new(std::io::Cursor::new(bytes), rx);
        assert!(matches!(r.next_record(), Err(Error::ConnectionLost(_))));
    }
}
