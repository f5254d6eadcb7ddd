//! Blocking record I/O over a stream: the session layer of the data path.
//!
//! The transfer engine runs on a dedicated thread with blocking sockets, so
//! the hot loop is read → hash → seal → write with no task hand-offs, and
//! buffers are reused (no allocation per record).

use std::io::{ErrorKind, Read, Write};

use burrow_proto::pake::SessionKey;
use burrow_proto::session::{
    Handshake, LEN_PREFIX, MAX_PLAINTEXT, MAX_RECORD, Opener, Sealer, peek_record_len,
};

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

fn read_frame<R: Read>(r: &mut R) -> Result<Vec<u8>, Error> {
    let mut len = [0u8; LEN_PREFIX];
    r.read_exact(&mut len).map_err(lost)?;
    let n = usize::from(u16::from_be_bytes(len));
    let mut msg = vec![0u8; n];
    r.read_exact(&mut msg).map_err(lost)?;
    Ok(msg)
}

/// Runs the Noise handshake on a blocking stream. The sender initiates.
pub fn handshake<S: Read + Write>(
    s: &mut S,
    key: &SessionKey,
    context: &str,
    initiator: bool,
) -> Result<(Sealer, Opener), Error> {
    let t = if initiator {
        let mut hs = Handshake::initiator(key, context)?;
        s.write_all(&hs.write_message()?).map_err(lost)?;
        s.flush().map_err(lost)?;
        hs.read_message(&read_frame(s)?)?;
        hs.into_transport()?
    } else {
        let mut hs = Handshake::responder(key, context)?;
        hs.read_message(&read_frame(s)?)?;
        s.write_all(&hs.write_message()?).map_err(lost)?;
        s.flush().map_err(lost)?;
        hs.into_transport()?
    };
    Ok(t.split())
}

/// Writes sealed records.
pub struct RecordWriter<W: Write> {
    w: W,
    sealer: Sealer,
    out: Vec<u8>,
    plain: Vec<u8>,
}

impl<W: Write> RecordWriter<W> {
    /// Wraps a stream.
    pub fn new(w: W, sealer: Sealer) -> Self {
        Self {
            w,
            sealer,
            out: Vec::with_capacity(FLUSH_AT + MAX_RECORD + LEN_PREFIX),
            plain: vec![0u8; MAX_PLAINTEXT],
        }
    }

    /// Queues one message (one record); writes when enough is buffered.
    pub fn send(&mut self, msg: &[u8]) -> Result<(), Error> {
        self.sealer.seal(msg, &mut self.out)?;
        self.maybe_flush()
    }

    /// Space for file bytes of one `Data` record: fill it, then call [`RecordWriter::send_data`].
    pub fn data_buf(&mut self) -> &mut [u8] {
        self.plain[0] = 0x06;
        &mut self.plain[1..]
    }

    /// Seals a `Data` record of the first `n` bytes of [`RecordWriter::data_buf`].
    pub fn send_data(&mut self, n: usize) -> Result<(), Error> {
        self.sealer.seal(&self.plain[..1 + n], &mut self.out)?;
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
        }
        self.w.flush().map_err(lost)
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
