//! The one record reader: bytes read from any stream go in, records opened
//! where they lie come out. Every driver (the transfer, the tunnel, the
//! path setup) reads through it, so framing, compaction and the handling
//! of a stream that ends inside a record exist once.
//!
//! ```text
//! driver                         Inbox
//!   read(sock, inbox.space())      room after what is held (compacted first
//!   inbox.filled(n)                only when a whole record might not fit)
//!   while let Some(r) = inbox.open_next(&mut opener)?
//!       use inbox.buffer()[r]      the plaintext, decrypted in place
//! ```
//!
//! A driver that hands the plaintexts of a read on without copying them
//! (the tunnel's streams, the transfer's file writer) takes the whole
//! buffer with [`Inbox::take_buffer`] and gives the inbox either the same
//! buffer back or a fresh one with the partial record moved over
//! ([`Inbox::put_back`], [`Inbox::put_fresh`]).
//!
//! Memory: one buffer of the size the driver chose (at least one whole
//! record); nothing grows with what the peer sends.

use std::ops::Range;

use super::{LEN_PREFIX, MAX_RECORD, Opener, SessionError, peek_record_len};

/// The smallest buffer that holds any record.
pub const MIN_INBOX: usize = LEN_PREFIX + MAX_RECORD;

/// Received bytes and the records in them. See the module docs.
#[derive(Debug)]
pub struct Inbox {
    buf: Vec<u8>,
    /// Where the first byte not yet opened is.
    start: usize,
    /// Where the received bytes end.
    end: usize,
}

/// How a stream ended, as far as records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// Between two records: a clean end.
    Clean,
    /// Inside a record: the peer (or the path) cut it short.
    Truncated,
}

impl Inbox {
    /// An inbox reading `cap` bytes at a time (at least [`MIN_INBOX`]).
    pub fn new(cap: usize) -> Self {
        Self::with_buffer(vec![0u8; cap.max(MIN_INBOX)])
    }

    /// An inbox over `buf` (its length is the read size; grown to
    /// [`MIN_INBOX`] if shorter).
    pub fn with_buffer(mut buf: Vec<u8>) -> Self {
        if buf.len() < MIN_INBOX {
            buf.resize(MIN_INBOX, 0);
        }
        Self {
            buf,
            start: 0,
            end: 0,
        }
    }

    /// Where the next read goes: the room after the bytes held. The held
    /// bytes move to the front first only when a whole record might not
    /// fit after them (or nothing is held), not on every read.
    pub fn space(&mut self) -> &mut [u8] {
        if self.start > 0 && (self.start == self.end || self.buf.len() - self.start < MIN_INBOX) {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    /// The room after the bytes held, without moving anything (for a
    /// driver that still holds ranges of opened records).
    pub fn space_in_place(&mut self) -> &mut [u8] {
        &mut self.buf[self.end..]
    }

    /// `n` bytes were read into [`Inbox::space`] (or [`Inbox::space_in_place`]).
    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Opens the next complete record in place: the range of its plaintext
    /// in [`Inbox::buffer`], or `None` until more bytes arrive. A record
    /// that fails authentication, or a length no record can have, is an
    /// error and the session is over.
    pub fn open_next(&mut self, opener: &mut Opener) -> Result<Option<Range<usize>>, SessionError> {
        let have = &self.buf[self.start..self.end];
        let Some(len) = peek_record_len(have)? else {
            return Ok(None);
        };
        if have.len() < LEN_PREFIX + len {
            return Ok(None);
        }
        let ct = self.start + LEN_PREFIX..self.start + LEN_PREFIX + len;
        self.start = ct.end;
        let n = opener.open_in_place(&mut self.buf[ct.clone()])?.len();
        Ok(Some(ct.start..ct.start + n))
    }

    /// The buffer the ranges of [`Inbox::open_next`] point into.
    pub fn buffer(&self) -> &[u8] {
        &self.buf
    }

    /// Whether bytes of an unfinished record are held.
    pub fn holds_partial(&self) -> bool {
        self.start < self.end
    }

    /// What the end of the stream means here.
    pub fn at_end(&self) -> StreamEnd {
        if self.holds_partial() {
            StreamEnd::Truncated
        } else {
            StreamEnd::Clean
        }
    }

    /// Takes the buffer out (to share its plaintexts without copying);
    /// give the inbox a buffer back before reading on.
    pub fn take_buffer(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// The buffer [`Inbox::take_buffer`] took, unchanged.
    pub fn put_back(&mut self, buf: Vec<u8>) {
        self.buf = buf;
    }

    /// A fresh buffer instead of the one taken (`old`, still shared): the
    /// partial record held in `old` is copied to the front of `fresh`.
    pub fn put_fresh(&mut self, mut fresh: Vec<u8>, old: &[u8]) {
        let size = old.len().max(MIN_INBOX);
        if fresh.len() < size {
            fresh.resize(size, 0);
        }
        let held = self.start..self.end;
        fresh[..held.len()].copy_from_slice(&old[held.clone()]);
        self.buf = fresh;
        self.end = held.len();
        self.start = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::pake::SessionKey;
    use crate::session::{Sealer, handshake_in_memory};

    fn pair(seed: u8) -> (Sealer, Opener) {
        let (a, b) = handshake_in_memory(
            &SessionKey::from_bytes([seed; 32]),
            "inbox",
            crate::session::aead::Backend::detect(),
            &mut crate::random::seeded(seed),
        )
        .unwrap();
        (a.split().0, b.split().1)
    }

    fn sealed(msgs: &[Vec<u8>], sealer: &mut Sealer) -> Vec<u8> {
        let mut out = Vec::new();
        for m in msgs {
            sealer.seal(m, &mut out).unwrap();
        }
        out
    }

    /// Feeds `wire` in pieces of at most `step` bytes; returns the records.
    fn read_all(wire: &[u8], step: usize, opener: &mut Opener, inbox: &mut Inbox) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        let mut at = 0;
        while at < wire.len() {
            let space = inbox.space();
            let n = step.min(space.len()).min(wire.len() - at);
            space[..n].copy_from_slice(&wire[at..at + n]);
            inbox.filled(n);
            at += n;
            while let Some(r) = inbox.open_next(opener).unwrap() {
                got.push(inbox.buffer()[r].to_vec());
            }
        }
        got
    }

    #[test]
    fn records_survive_any_read_boundaries() {
        let msgs: Vec<Vec<u8>> = (0..40).map(|i| vec![i as u8; i * 1600]).collect();
        for step in [1, 7, 1000, 65_537, 1 << 20] {
            let (mut s, mut o) = pair(3);
            let wire = sealed(&msgs, &mut s);
            let mut inbox = Inbox::new(0);
            assert_eq!(read_all(&wire, step, &mut o, &mut inbox), msgs, "step {step}");
            assert_eq!(inbox.at_end(), StreamEnd::Clean);
        }
    }

    #[test]
    fn largest_records_fit_the_smallest_buffer() {
        let msgs = vec![vec![9u8; crate::session::MAX_PLAINTEXT]; 5];
        let (mut s, mut o) = pair(4);
        let wire = sealed(&msgs, &mut s);
        let mut inbox = Inbox::new(0);
        assert_eq!(read_all(&wire, 50_000, &mut o, &mut inbox), msgs);
    }

    #[test]
    fn a_stream_cut_inside_a_record_is_truncated() {
        let (mut s, mut o) = pair(5);
        let mut wire = sealed(&[b"hello".to_vec()], &mut s);
        wire.pop();
        let mut inbox = Inbox::new(0);
        assert!(read_all(&wire, 3, &mut o, &mut inbox).is_empty());
        assert_eq!(inbox.at_end(), StreamEnd::Truncated);
    }

    #[test]
    fn altered_and_impossible_records_are_errors() {
        let (mut s, mut o) = pair(6);
        let mut wire = sealed(&[b"hello".to_vec()], &mut s);
        wire[4] ^= 1;
        let mut inbox = Inbox::new(0);
        inbox.space()[..wire.len()].copy_from_slice(&wire);
        inbox.filled(wire.len());
        assert!(matches!(inbox.open_next(&mut o), Err(SessionError::Integrity)));
        // A length shorter than a tag.
        let (_, mut o) = pair(6);
        let mut inbox = Inbox::new(0);
        inbox.space()[..3].copy_from_slice(&[0, 3, 0]);
        inbox.filled(3);
        assert!(matches!(inbox.open_next(&mut o), Err(SessionError::Malformed(_))));
    }

    #[test]
    fn a_fresh_buffer_carries_the_partial_record() {
        let msgs: Vec<Vec<u8>> = (0..6).map(|i| vec![i as u8; 30_000]).collect();
        let (mut s, mut o) = pair(7);
        let wire = sealed(&msgs, &mut s);
        let mut inbox = Inbox::new(1 << 18);
        let cut = wire.len() / 2 + 11;
        inbox.space()[..cut].copy_from_slice(&wire[..cut]);
        inbox.filled(cut);
        let mut got = Vec::new();
        while let Some(r) = inbox.open_next(&mut o).unwrap() {
            got.push(inbox.buffer()[r].to_vec());
        }
        assert!(inbox.holds_partial());
        // Hand the buffer on (as if shared) and read on into a fresh one.
        let old = inbox.take_buffer();
        inbox.put_fresh(Vec::new(), &old);
        got.extend(read_all(&wire[cut..], 4096, &mut o, &mut inbox));
        assert_eq!(got, msgs);
    }
}
