//! The sending side of a transfer, sans-IO.
//!
//! It owns every decision of the protocol on the sending side: the offer
//! (sent entry by entry, never all at once), the receiver's answer
//! (`Accept`, or `Continue` after a reconnect), which files start where
//! (a resume proposal is only taken after the driver checked the prefix),
//! which files must carry a hash in `FileEnd`, that a file's bytes add up
//! to its size, `Done`, and the final `Ack`; plus the keepalive and silence
//! timers. The driver does only I/O: it reads file bytes into its record
//! buffers (so data is sealed where it lies: the machine never copies
//! it), hashes them when told, and sends what [`Sender::poll_transmit`]
//! gives it.
//!
//! ```text
//! driver                               Sender
//!   Sender::new(kind, entries)   ->      queues Offer, Entry × n, OfferEnd
//!   poll_transmit ... (send)     <-      control messages, oldest first
//!   handle(Accept|Continue)      ->      TxEvent::Accepted{from, hash_all}
//!   loop next_file():
//!     Next::File{index, resume, hash}    the driver checks a resume proposal's
//!     begin(index, Some(offset)|None)    prefix itself, then says where it starts
//!     Data …, sent(n) for each record    (Data records are the driver's)
//!     end_file(hash)                     queues FileEnd
//!   Next::Done                           queues Done
//!   handle(Ack)                  ->      TxEvent::Finished
//! ```

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{
    Entry, EntryKind, Message, OfferKind, Outbox, ResumeAt, TransferError, UNKNOWN_SIZE, escape_display,
};

/// What an answer from the receiver means to the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxEvent {
    /// The receiver accepted the offer (or, after a reconnect, continues
    /// it): files before entry `from` are complete on its side.
    Accepted {
        /// The first entry still to send.
        from: usize,
        /// Every file's hash is checked (else only resumed files').
        hash_all: bool,
    },
    /// The receiver confirmed everything: the transfer is complete.
    Finished,
}

/// What the driver sends next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// The file at `index`: the receiver proposed resuming it at
    /// `resume.offset` (check its prefix hash, then [`Sender::begin`] with
    /// the offset, or with `None` to send it all). `hash`: hash the file's
    /// bytes for `FileEnd` (from the start, or on from the checked prefix).
    File {
        /// Entry index.
        index: usize,
        /// The receiver's resume proposal, if any.
        resume: Option<ResumeAt>,
        /// Whether `FileEnd` must carry the hash even when not resumed.
        hash: bool,
    },
    /// Every file is sent; `Done` is queued. Wait for the `Ack`.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TxState {
    /// The offer is out; waiting for `Accept`/`Continue`.
    AwaitAnswer,
    /// Between files.
    Between,
    /// Inside the file at `current`.
    InFile,
    /// `Done` queued; waiting for `Ack`.
    AwaitAck,
    Finished,
    Failed,
}

/// The sending side of one transfer on one connection.
#[derive(Debug)]
pub struct Sender {
    state: TxState,
    entries: Vec<Entry>,
    /// Whether this connection continues an offer accepted before (a
    /// reconnect: `Continue` is the expected answer).
    again: bool,
    hash_all: bool,
    resume: HashMap<usize, ResumeAt>,
    /// The entry being sent, or the next to look at.
    current: usize,
    /// Bytes of the current file accounted for (a resumed prefix included).
    in_file: u64,
    /// Whether the current file's `FileEnd` must carry a hash.
    hashed: bool,
    /// File bytes sent on this connection (resumed prefixes not counted).
    sent: u64,
    /// Bytes the receiver already had (accepted resume offsets).
    skipped: u64,
    out: Outbox,
}

/// Whether a connection starts a transfer or continues one after a reconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// The first connection of the session: `Accept` answers the offer.
    First,
    /// A later connection: the receiver answers `Continue`.
    Again,
}

impl Sender {
    /// Starts a transfer of `entries` (in the order their data will go);
    /// the offer is queued at once.
    pub fn new(kind: OfferKind, entries: Vec<Entry>, attempt: Attempt) -> Self {
        let mut out = Outbox::default();
        for rec in super::offer_records(kind, &entries) {
            out.push_back(rec);
        }
        Self {
            state: TxState::AwaitAnswer,
            entries,
            again: attempt == Attempt::Again,
            hash_all: false,
            resume: HashMap::new(),
            current: 0,
            in_file: 0,
            hashed: false,
            sent: 0,
            skipped: 0,
            out,
        }
    }

    /// Keepalives and a silence limit, as for the receiver: a `Keepalive`
    /// whenever nothing was sent for `idle / 3` (a person deciding, a slow
    /// source), failure when the receiver was silent for `idle`.
    pub fn timeouts(mut self, idle: Duration, now: Instant) -> Self {
        self.out.set_timeouts(idle, now);
        self
    }

    /// The offered entries.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// File bytes sent on this connection (resumed prefixes not counted).
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Bytes the receiver already had, by accepted resume proposals.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// The next control message, written into `out` (cleared first);
    /// `false` when there is none. Data records are the driver's own.
    pub fn poll_transmit(&mut self, now: Instant, out: &mut Vec<u8>) -> bool {
        self.out.transmit(now, out)
    }

    /// When [`Sender::handle_timeout`] wants to run next, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            TxState::Finished | TxState::Failed => None,
            _ => self.out.deadline(),
        }
    }

    /// Runs the timers: queues a keepalive when due; fails when the
    /// receiver has been silent for the idle limit.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), TransferError> {
        if matches!(self.state, TxState::Finished | TxState::Failed) {
            return Ok(());
        }
        self.out
            .on_timeout(now)
            .inspect_err(|_| self.state = TxState::Failed)
    }

    fn fail<T>(&mut self, e: TransferError) -> Result<T, TransferError> {
        if self.state != TxState::Failed && !matches!(e, TransferError::Peer(_) | TransferError::Rejected(_))
        {
            self.out
                .push_back(Message::Error(format!("sender: {e}")).to_vec());
        }
        self.state = TxState::Failed;
        Err(e)
    }

    /// Ends the transfer from this side (a local failure: a file that
    /// cannot be read): tells the receiver why.
    pub fn abort(&mut self, reason: &str) {
        if !matches!(self.state, TxState::Finished | TxState::Failed) {
            self.state = TxState::Failed;
            self.out.push_back(Message::Error(reason.to_owned()).to_vec());
        }
    }

    /// Handles one message from the receiver, received at `now`.
    pub fn handle(&mut self, now: Instant, record: &[u8]) -> Result<Option<TxEvent>, TransferError> {
        self.out.received(now);
        let msg = match Message::decode(record) {
            Ok(m) => m,
            Err(e) => return self.fail(e.into()),
        };
        match (self.state, msg) {
            (TxState::Failed, _) => Err(TransferError::Unexpected("message after failure")),
            (_, Message::Keepalive) => Ok(None),
            (_, Message::Error(m)) => self.fail(TransferError::Peer(escape_display(&m))),
            (TxState::AwaitAnswer, Message::Reject(r)) => {
                self.fail(TransferError::Rejected(escape_display(&r)))
            }
            (TxState::AwaitAnswer, Message::Accept { hash_all, resume }) if !self.again => {
                self.answered(0, hash_all, resume)
            }
            (
                TxState::AwaitAnswer,
                Message::Continue {
                    from,
                    hash_all,
                    resume,
                },
            ) if self.again => {
                let from = from as usize;
                if from > self.entries.len() {
                    return self.fail(TransferError::Unexpected("continue past the last entry"));
                }
                self.answered(from, hash_all, resume)
            }
            (TxState::AwaitAck, Message::Ack) => {
                self.state = TxState::Finished;
                Ok(Some(TxEvent::Finished))
            }
            _ => self.fail(TransferError::Unexpected(
                "message out of order from the receiver",
            )),
        }
    }

    fn answered(
        &mut self,
        from: usize,
        hash_all: bool,
        resume: Vec<ResumeAt>,
    ) -> Result<Option<TxEvent>, TransferError> {
        self.hash_all = hash_all;
        for r in resume {
            let index = r.index as usize;
            let fits = self
                .entries
                .get(index)
                .is_some_and(|e| e.kind == EntryKind::File && e.size != UNKNOWN_SIZE && r.offset <= e.size);
            // A proposal that cannot be right is ignored: the file goes whole.
            if fits && index >= from {
                self.resume.insert(index, r);
            }
        }
        self.current = from;
        self.state = TxState::Between;
        Ok(Some(TxEvent::Accepted { from, hash_all }))
    }

    /// The next thing to send (between files only).
    pub fn next_file(&mut self) -> Result<Next, TransferError> {
        if self.state == TxState::Failed {
            // The receiver (or a check) ended it: not the driver's misuse.
            return Err(TransferError::Unexpected("the transfer has already failed"));
        }
        if self.state != TxState::Between {
            return Err(TransferError::Local("next file asked for out of turn".into()));
        }
        while self.current < self.entries.len() && self.entries[self.current].kind == EntryKind::Dir {
            self.current += 1;
        }
        if self.current >= self.entries.len() {
            self.out.push_back(Message::Done.to_vec());
            self.state = TxState::AwaitAck;
            return Ok(Next::Done);
        }
        let index = self.current;
        Ok(Next::File {
            index,
            resume: self.resume.get(&index).cloned(),
            hash: self.hash_all,
        })
    }

    /// The files still to send, in order, exactly as [`Sender::next_file`]
    /// will name them one by one: a driver whose file reader runs ahead of
    /// the connection (so there is no round trip per file) follows this
    /// list, and the machine still checks every `begin` against it.
    pub fn schedule(&self) -> Vec<Next> {
        if self.state != TxState::Between {
            return Vec::new();
        }
        (self.current..self.entries.len())
            .filter(|&i| self.entries[i].kind == EntryKind::File)
            .map(|index| Next::File {
                index,
                resume: self.resume.get(&index).cloned(),
                hash: self.hash_all,
            })
            .collect()
    }

    /// Starts the file [`Sender::next_file`] named: from `Some(offset)`
    /// (its resume proposal, whose prefix the driver found matching: `Skip`
    /// is queued, and the hash must cover the whole file), or from the start.
    pub fn begin(&mut self, index: usize, resumed_at: Option<u64>) -> Result<(), TransferError> {
        if self.state == TxState::Failed {
            // The receiver (or a check) ended it: not the driver's misuse.
            return Err(TransferError::Unexpected("the transfer has already failed"));
        }
        if self.state != TxState::Between || index != self.current {
            return Err(TransferError::Local("a file begun out of turn".into()));
        }
        let proposal = self.resume.remove(&index);
        self.in_file = 0;
        self.hashed = self.hash_all;
        if let Some(offset) = resumed_at {
            if proposal.as_ref().map(|p| p.offset) != Some(offset) {
                return Err(TransferError::Local(
                    "resumed where the receiver did not propose".into(),
                ));
            }
            self.out.push_back(Message::Skip(offset).to_vec());
            self.in_file = offset;
            self.skipped += offset;
            self.hashed = true;
        }
        self.state = TxState::InFile;
        Ok(())
    }

    /// Whether the current file's `FileEnd` carries a hash.
    pub fn hashing(&self) -> bool {
        self.state == TxState::InFile && self.hashed
    }

    /// The driver sent `n` more bytes of the current file (in `Data` or
    /// `ZData` records of its own) at `now`. Refuses bytes past the
    /// file's size (the file grew while it was sent), and data while
    /// control messages wait in [`Sender::poll_transmit`] (they go first).
    pub fn sent_data(&mut self, now: Instant, n: usize) -> Result<(), TransferError> {
        if self.state == TxState::Failed {
            // The receiver (or a check) ended it: not the driver's misuse.
            return Err(TransferError::Unexpected("the transfer has already failed"));
        }
        if self.state != TxState::InFile {
            return Err(TransferError::Local("data sent outside a file".into()));
        }
        if !self.out.is_empty() {
            // A queued Skip must reach the receiver before the data.
            return Err(TransferError::Local(
                "data sent before the queued control messages".into(),
            ));
        }
        let size = self.entries[self.current].size;
        let after = self.in_file.saturating_add(n as u64);
        if size != UNKNOWN_SIZE && after > size {
            let name = escape_display(&self.entries[self.current].path);
            return self.fail(TransferError::Local(format!(
                "{name} grew while it was being sent"
            )));
        }
        self.in_file = after;
        self.sent += n as u64;
        self.out.sent(now);
        Ok(())
    }

    /// The current file is complete: queues `FileEnd` with `hash` (which
    /// must be there exactly when [`Sender::hashing`] says so).
    pub fn end_file(&mut self, hash: Option<[u8; 32]>) -> Result<(), TransferError> {
        if self.state == TxState::Failed {
            // The receiver (or a check) ended it: not the driver's misuse.
            return Err(TransferError::Unexpected("the transfer has already failed"));
        }
        if self.state != TxState::InFile {
            return Err(TransferError::Local("a file ended outside a file".into()));
        }
        let e = &self.entries[self.current];
        if e.size != UNKNOWN_SIZE && self.in_file != e.size {
            let name = escape_display(&e.path);
            return self.fail(TransferError::Local(format!(
                "{name} shrank while it was being sent"
            )));
        }
        if hash.is_some() != self.hashed {
            return Err(TransferError::Local(
                "a hash where none is checked, or none where one is".into(),
            ));
        }
        self.out.push_back(Message::FileEnd(hash).to_vec());
        self.current += 1;
        self.state = TxState::Between;
        Ok(())
    }
}
