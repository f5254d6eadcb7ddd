//! The connection of one transfer: sealed records out, opened records in,
//! over any ordered byte stream (a TCP connection, a stream of the mux, an
//! in-memory pipe in tests), polled by the one task that drives the
//! transfer's machine.
//!
//! Writes go out in the order they were sealed (the nonces demand it):
//! control records are sealed into a byte queue, `Data` records in place
//! in their [`DataBatch`] (file bytes are never copied in user space), and
//! each queued item is written whole before the next. A batch whose bytes
//! are written is handed back through [`Link::take_freed`] for reuse.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use burrow_proto::session::{Inbox, LEN_PREFIX, MAX_PLAINTEXT, Opener, Sealer, StreamEnd, TAG_LEN};
use burrow_proto::transfer::Message;

use crate::error::Error;

/// Control records are gathered into one buffer up to this size.
const GATHER: usize = 256 * 1024;

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
/// written from there. Filled slots side by side are the records exactly
/// as they go on the wire; a batch ends early at a short read, whose slot
/// is then the last.
pub struct DataBatch {
    buf: Vec<u8>,
    /// File bytes in each filled slot.
    filled: Vec<usize>,
    /// Bytes of the sealed records (0 until sealed).
    sealed: usize,
}

impl Default for DataBatch {
    fn default() -> Self {
        Self {
            buf: vec![0u8; SLOT * SLOTS],
            filled: Vec::with_capacity(SLOTS),
            sealed: 0,
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
    /// Returns whether the batch should be sent now (full, or ended by a short read).
    pub fn commit(&mut self, n: usize) -> bool {
        // Sealing encrypted the slot's type byte along with its bytes last time.
        let at = self.next_data();
        self.buf[at - 1] = Message::DATA;
        self.filled.push(n);
        n < DATA_SPACE || self.filled.len() == SLOTS
    }

    /// The file bytes of each record, in order.
    pub fn records(&self) -> &[usize] {
        &self.filled
    }

    /// Whether no record is in the batch.
    pub fn is_empty(&self) -> bool {
        self.filled.is_empty()
    }

    /// Seals every record in place.
    fn seal(&mut self, sealer: &mut Sealer) -> Result<(), Error> {
        let mut end = 0;
        for (i, &n) in self.filled.iter().enumerate() {
            let rec = i * SLOT..i * SLOT + LEN_PREFIX + 1 + n + TAG_LEN;
            end = rec.end;
            sealer.seal_in_place(&mut self.buf[rec])?;
        }
        self.sealed = end;
        Ok(())
    }

    /// Empties a written batch for reuse.
    fn clear(&mut self) {
        self.filled.clear();
        self.sealed = 0;
    }
}

enum Outgoing {
    Bytes(Vec<u8>),
    Batch(DataBatch),
}

impl Outgoing {
    fn bytes(&self) -> &[u8] {
        match self {
            Outgoing::Bytes(v) => v,
            Outgoing::Batch(b) => &b.buf[..b.sealed],
        }
    }
}

/// One transfer's connection. See the module docs.
pub struct Link<S> {
    io: S,
    sealer: Sealer,
    opener: Opener,
    inbox: Inbox,
    queue: VecDeque<Outgoing>,
    /// Bytes of the front item already written.
    written: usize,
    freed: Vec<DataBatch>,
    /// Spare control buffers.
    spare: Vec<Vec<u8>>,
    closed: bool,
}

fn lost(e: std::io::Error) -> Error {
    Error::ConnectionLost(e)
}

impl<S: AsyncRead + AsyncWrite + Unpin> Link<S> {
    /// A link over `io`; `inbox` may already hold bytes read during setup.
    pub fn new(io: S, sealer: Sealer, opener: Opener, inbox: Inbox) -> Self {
        Self {
            io,
            sealer,
            opener,
            inbox,
            queue: VecDeque::new(),
            written: 0,
            freed: Vec::new(),
            spare: Vec::new(),
            closed: false,
        }
    }

    /// Seals one control message onto the queue.
    pub fn send(&mut self, msg: &[u8]) -> Result<(), Error> {
        if !matches!(self.queue.back(), Some(Outgoing::Bytes(v)) if v.len() < GATHER) {
            let v = self.spare.pop().unwrap_or_default();
            self.queue.push_back(Outgoing::Bytes(v));
        }
        if let Some(Outgoing::Bytes(v)) = self.queue.back_mut() {
            self.sealer.seal(msg, v)?;
        }
        Ok(())
    }

    /// Seals the batch's records in place and queues them.
    pub fn send_batch(&mut self, mut batch: DataBatch) -> Result<(), Error> {
        if batch.is_empty() {
            self.freed.push(batch);
            return Ok(());
        }
        batch.seal(&mut self.sealer)?;
        self.queue.push_back(Outgoing::Batch(batch));
        Ok(())
    }

    /// Items queued and not yet written.
    pub fn backlog(&self) -> usize {
        self.queue.len()
    }

    /// Batches whose bytes are written, for reuse.
    pub fn take_freed(&mut self) -> impl Iterator<Item = DataBatch> + '_ {
        self.freed.drain(..)
    }

    /// Writes what is queued: `Ready(Ok)` once all of it is written.
    pub fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        while let Some(front) = self.queue.front() {
            let bytes = &front.bytes()[self.written..];
            if bytes.is_empty() {
                self.done_front();
                continue;
            }
            match Pin::new(&mut self.io).poll_write(cx, bytes) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(lost(ErrorKind::WriteZero.into()))),
                Poll::Ready(Ok(n)) => self.written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(lost(e))),
                Poll::Pending => return Poll::Pending,
            }
        }
        match Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Ready(r) => Poll::Ready(r.map_err(lost)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn done_front(&mut self) {
        self.written = 0;
        match self.queue.pop_front() {
            Some(Outgoing::Batch(mut b)) => {
                b.clear();
                self.freed.push(b);
            }
            Some(Outgoing::Bytes(mut v)) => {
                v.clear();
                if self.spare.len() < 4 {
                    self.spare.push(v);
                }
            }
            None => {}
        }
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> Result<(), Error> {
        std::future::poll_fn(|cx| self.poll_write(cx)).await
    }

    /// Reads more bytes into the inbox: `Ready(Ok(false))` at the end of the stream.
    pub fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, Error>> {
        self.read_into(cx, false)
    }

    /// As [`Link::poll_read`], without moving the bytes held (ranges of
    /// opened records stay valid); the caller makes sure a whole record
    /// fits in what is left ([`Inbox::space_in_place`]).
    pub fn poll_read_in_place(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, Error>> {
        self.read_into(cx, true)
    }

    fn read_into(&mut self, cx: &mut Context<'_>, in_place: bool) -> Poll<Result<bool, Error>> {
        if self.closed {
            return Poll::Ready(Ok(false));
        }
        let space = if in_place {
            self.inbox.space_in_place()
        } else {
            self.inbox.space()
        };
        if space.is_empty() {
            return Poll::Ready(Err(Error::Protocol("internal: no room to read into".into())));
        }
        let mut rb = ReadBuf::new(space);
        match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                if n == 0 {
                    self.closed = true;
                    return Poll::Ready(Ok(false));
                }
                self.inbox.filled(n);
                Poll::Ready(Ok(true))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(lost(e))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// The next complete record in the inbox: its plaintext's range in [`Link::buffer`].
    pub fn next_record(&mut self) -> Result<Option<Range<usize>>, Error> {
        Ok(self.inbox.open_next(&mut self.opener)?)
    }

    /// The inbox buffer the ranges of [`Link::next_record`] point into.
    pub fn buffer(&self) -> &[u8] {
        self.inbox.buffer()
    }

    /// The inbox, for handing its buffer on (see [`Inbox::take_buffer`]).
    pub fn inbox(&mut self) -> &mut Inbox {
        &mut self.inbox
    }

    /// The error for a stream that ended while `what` was still expected.
    pub fn ended(&self, what: &str) -> Error {
        let why = match self.inbox.at_end() {
            StreamEnd::Clean => format!("the other side closed the connection before {what}"),
            StreamEnd::Truncated => "the stream ended in the middle of a record".to_owned(),
        };
        Error::ConnectionLost(std::io::Error::new(ErrorKind::UnexpectedEof, why))
    }

    /// Shuts the writing side down (best effort).
    pub async fn shutdown(&mut self) {
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut self.io).await;
    }
}
