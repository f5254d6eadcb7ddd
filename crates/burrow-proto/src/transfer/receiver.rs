//! The receiving side of a transfer, sans-IO: it validates the offer as it
//! arrives (paths, sizes, clashes, the name budget), waits for its user's
//! decision, then checks every file's data against the offer (order,
//! sizes, resume points, hashes where they are checked) and tells its
//! driver where bytes go ([`RxEvent`]). It sends nothing on its own but
//! keepalives: its answers come out of [`Receiver::poll_transmit`].

use std::cmp::Ordering;
use std::collections::HashMap;
use std::time::Instant;

use super::{
    Entry, EntryKind, MAX_ENTRIES, MAX_OFFER_PATH_BYTES, MAX_RESUME, Message, OfferKind, Outbox, ResumeAt,
    TransferError, UNKNOWN_SIZE, escape_display, validate_rel_path,
};

/// A validated offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// What is offered.
    pub kind: OfferKind,
    /// Files and folders, in the order their data will arrive.
    pub entries: Vec<Entry>,
    /// Sum of the file sizes (for streams: unknown, 0).
    pub total: u64,
}

impl Offer {
    /// Number of file entries.
    pub fn files(&self) -> usize {
        self.entries.iter().filter(|e| e.kind == EntryKind::File).count()
    }

    /// Number of folder entries.
    pub fn dirs(&self) -> usize {
        self.entries.len() - self.files()
    }
}

/// What the receiver's driver must do after a message.
#[derive(Debug, PartialEq, Eq)]
pub enum RxEvent<'a> {
    /// Nothing to do yet.
    Nothing,
    /// The offer is complete: show it and call [`Receiver::accept`] or [`Receiver::reject`].
    OfferReady,
    /// Bytes for the file at `index` (of [`Offer::entries`]): write them.
    Data {
        /// Entry index.
        index: usize,
        /// The bytes.
        bytes: &'a [u8],
    },
    /// Compressed bytes for the current file: decompress them (to at most
    /// [`MAX_CHUNK`](super::MAX_CHUNK) bytes) and pass the result to [`Receiver::data`].
    Compressed {
        /// Entry index.
        index: usize,
        /// One zstd frame.
        frame: &'a [u8],
    },
    /// The file at `index` continues at `offset`: reopen its partial file there.
    Resumed {
        /// Entry index.
        index: usize,
        /// Bytes already present.
        offset: u64,
    },
    /// The file at `index` is complete and its hash verified: move it into place.
    FileVerified {
        /// Entry index.
        index: usize,
    },
    /// Everything arrived and was verified: make it durable, then call
    /// [`Receiver::confirm`], which queues the `Ack` (the timers keep
    /// running meanwhile: a long sync is not silence).
    Finished,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RxState {
    AwaitOffer,
    Entries,
    AwaitDecision,
    Receiving,
    /// `Done` arrived; waiting for the driver's [`Receiver::confirm`].
    Saving,
    Finished,
    Failed,
}

/// Which files the receiver hashes again to check their `FileEnd` hash
/// (see the module docs: the session's AEAD already authenticates every byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verify {
    /// Only resumed files, whose first bytes came from the receiver's disk.
    #[default]
    Resumed,
    /// Every file.
    All,
}

/// The receiving side of a transfer, sans-IO: feed it each record's
/// plaintext with [`Receiver::handle`] and act on the [`RxEvent`]s.
#[derive(Debug, Clone)]
pub struct Receiver {
    state: RxState,
    kind: OfferKind,
    expected: u64,
    declared_total: u64,
    entries: Vec<Entry>,
    /// Path bytes the entries may still use (from [`MAX_OFFER_PATH_BYTES`]).
    pub(super) path_budget: u64,
    /// Entry indexes in path order (components compared one by one), built
    /// when the offer is complete: the clash checks and [`Receiver::offers`].
    order: Vec<u32>,
    sum: u64,
    current: usize,
    in_file: u64,
    /// The current file's hash so far, when it is to be checked.
    hasher: Option<blake3::Hasher>,
    verify: Verify,
    received: u64,
    /// Whether the current file has seen any message yet.
    started: bool,
    /// Resume proposals sent with `Accept`, by entry index.
    resume: HashMap<usize, (u64, blake3::Hasher)>,
    /// Messages to send, oldest first (see [`Receiver::poll_transmit`]).
    out: Outbox,
}

impl Default for Receiver {
    fn default() -> Self {
        Self::new()
    }
}

impl Receiver {
    /// A receiver waiting for an offer (without timers: see
    /// [`Receiver::timeouts`]).
    pub fn new() -> Self {
        Self {
            state: RxState::AwaitOffer,
            kind: OfferKind::Files,
            expected: 0,
            declared_total: 0,
            entries: Vec::new(),
            path_budget: MAX_OFFER_PATH_BYTES,
            order: Vec::new(),
            sum: 0,
            current: 0,
            in_file: 0,
            hasher: None,
            verify: Verify::Resumed,
            received: 0,
            started: false,
            resume: HashMap::new(),
            out: Outbox::default(),
        }
    }

    /// Keepalives and a silence limit: a `Keepalive` goes out whenever
    /// nothing was sent for `idle / 3`, and the transfer fails when nothing
    /// arrived for `idle` (the sender's keepalives cover its quiet times).
    pub fn timeouts(mut self, idle: std::time::Duration, now: Instant) -> Self {
        self.out.set_timeouts(idle, now);
        self
    }

    /// The next message to send, written into `out` (cleared first);
    /// `false` when there is none.
    pub fn poll_transmit(&mut self, now: Instant, out: &mut Vec<u8>) -> bool {
        self.out.transmit(now, out)
    }

    /// When [`Receiver::handle_timeout`] wants to run next, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            RxState::Finished | RxState::Failed => None,
            _ => self.out.deadline(),
        }
    }

    /// Runs the timers: queues a keepalive when due; fails when the
    /// sender has been silent for the idle limit.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), TransferError> {
        if matches!(self.state, RxState::Finished | RxState::Failed) {
            return Ok(());
        }
        self.out
            .on_timeout(now)
            .inspect_err(|_| self.state = RxState::Failed)
    }

    /// Everything received is durable: queues the `Ack` that tells the
    /// sender so. Only after [`RxEvent::Finished`].
    pub fn confirm(&mut self) -> Result<(), TransferError> {
        if self.state != RxState::Saving {
            return Err(TransferError::Local("confirmed before everything arrived".into()));
        }
        self.state = RxState::Finished;
        self.out.push_back(Message::Ack.to_vec());
        Ok(())
    }

    /// Ends the transfer from this side (a local failure): tells the
    /// sender why.
    pub fn abort(&mut self, reason: &str) {
        if !matches!(self.state, RxState::Finished | RxState::Failed) {
            self.state = RxState::Failed;
            self.out.push_back(Message::Error(reason.to_owned()).to_vec());
        }
    }

    /// Which files' `FileEnd` hashes are checked (default: [`Verify::Resumed`]).
    pub fn verify(mut self, verify: Verify) -> Self {
        self.verify = verify;
        self.hasher = self.fresh_hasher();
        self
    }

    fn fresh_hasher(&self) -> Option<blake3::Hasher> {
        (self.verify == Verify::All).then(blake3::Hasher::new)
    }

    /// The offer so far (complete once [`RxEvent::OfferReady`] was returned).
    pub fn offer(&self) -> Offer {
        Offer {
            kind: self.kind,
            entries: self.entries.clone(),
            total: self.declared_total,
        }
    }

    /// Borrow the entries.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// File bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Accepts the offer (`Accept` is queued).
    pub fn accept(&mut self) -> Result<(), TransferError> {
        self.accept_resuming(Vec::new())
    }

    /// Accepts the offer, proposing to resume files: for each, the entry
    /// index, the bytes already present, and a hasher that has hashed exactly
    /// those bytes. Proposals for non-files, past a file's size, or beyond
    /// [`MAX_RESUME`] are dropped.
    pub fn accept_resuming(
        &mut self,
        proposals: Vec<(usize, u64, blake3::Hasher)>,
    ) -> Result<(), TransferError> {
        let resume = self.start_receiving(0, proposals)?;
        let hash_all = self.verify == Verify::All;
        self.out.push_back(Message::Accept { hash_all, resume }.to_vec());
        Ok(())
    }

    /// After a reconnect: the offer (sent again) was accepted before, and
    /// every file before entry `from` is complete. Queues `Continue`;
    /// `proposals` as for [`Receiver::accept_resuming`].
    pub fn continue_from(
        &mut self,
        from: usize,
        proposals: Vec<(usize, u64, blake3::Hasher)>,
    ) -> Result<(), TransferError> {
        let wire_from = u32::try_from(from)
            .ok()
            .filter(|_| from <= self.entries.len())
            .ok_or(TransferError::Unexpected("continue past the last entry"))?;
        let resume = self.start_receiving(from, proposals)?;
        let hash_all = self.verify == Verify::All;
        self.out.push_back(
            Message::Continue {
                from: wire_from,
                hash_all,
                resume,
            }
            .to_vec(),
        );
        Ok(())
    }

    fn start_receiving(
        &mut self,
        from: usize,
        proposals: Vec<(usize, u64, blake3::Hasher)>,
    ) -> Result<Vec<ResumeAt>, TransferError> {
        if self.state != RxState::AwaitDecision {
            return Err(TransferError::Unexpected("accept before the offer is complete"));
        }
        let mut wire = Vec::new();
        for (index, offset, hasher) in proposals.into_iter().take(MAX_RESUME) {
            let ok = index >= from
                && self.entries.get(index).is_some_and(|e| {
                    e.kind == EntryKind::File && e.size != UNKNOWN_SIZE && offset <= e.size && offset > 0
                });
            let Ok(idx32) = u32::try_from(index) else { continue };
            if ok && !self.resume.contains_key(&index) {
                wire.push(ResumeAt {
                    index: idx32,
                    offset,
                    prefix: *hasher.finalize().as_bytes(),
                });
                self.resume.insert(index, (offset, hasher));
            }
        }
        self.state = RxState::Receiving;
        self.current = from.min(self.entries.len());
        self.skip_dirs();
        Ok(wire)
    }

    /// Declines the offer (`Reject` is queued).
    pub fn reject(&mut self, reason: &str) {
        self.state = RxState::Failed;
        self.out.push_back(Message::Reject(reason.to_owned()).to_vec());
    }

    fn skip_dirs(&mut self) {
        while self.current < self.entries.len() && self.entries[self.current].kind == EntryKind::Dir {
            self.current += 1;
        }
        self.in_file = 0;
        self.started = false;
        self.hasher = self.fresh_hasher();
    }

    /// The peer broke the rules (or said it failed): this side stops, and
    /// tells the sender why unless the sender is the one who failed.
    fn fail<T>(&mut self, e: TransferError) -> Result<T, TransferError> {
        if self.state != RxState::Failed && !matches!(e, TransferError::Peer(_)) {
            self.out
                .push_back(Message::Error(format!("receiver: {e}")).to_vec());
        }
        self.state = RxState::Failed;
        Err(e)
    }

    fn add_entry(&mut self, e: Entry) -> Result<(), TransferError> {
        if let Err(err) = validate_rel_path(&e.path) {
            return Err(TransferError::BadOffer(format!(
                "{}: {err}",
                escape_display(&e.path)
            )));
        }
        // Clashes (a file twice, a file that is also a folder, an entry
        // below a file) are found once the offer is complete, by sorting
        // (see `check_clashes`): holding every folder prefix of every path
        // instead would cost memory quadratic in the path depth.
        let Some(left) = self.path_budget.checked_sub(e.path.len() as u64) else {
            return Err(TransferError::BadOffer(format!(
                "more than {MAX_OFFER_PATH_BYTES} bytes of names"
            )));
        };
        self.path_budget = left;
        match e.kind {
            EntryKind::File => {
                if self.kind != OfferKind::Stream && e.size == UNKNOWN_SIZE {
                    return Err(TransferError::BadOffer("a file without a size".into()));
                }
                if self.kind != OfferKind::Stream {
                    self.sum = self
                        .sum
                        .checked_add(e.size)
                        .ok_or_else(|| TransferError::BadOffer("sizes overflow".into()))?;
                }
            }
            EntryKind::Dir => {
                if self.kind != OfferKind::Files {
                    return Err(TransferError::BadOffer(
                        "folders in a text or stream offer".into(),
                    ));
                }
            }
        }
        self.entries.push(e);
        Ok(())
    }

    /// Sorts the entries by path, component by component, and refuses an
    /// offer where a file appears twice, is also a folder, or has entries
    /// below it. In that order every entry below or equal to a path comes
    /// right after it, so comparing neighbours finds every clash: O(n log n)
    /// time and four bytes per entry.
    fn check_clashes(&mut self) -> Result<(), TransferError> {
        let entries = &self.entries;
        let mut order: Vec<u32> = (0..entries.len() as u32).collect();
        order.sort_unstable_by(|&a, &b| path_order(&entries[a as usize].path, &entries[b as usize].path));
        for w in order.windows(2) {
            let (a, b) = (&entries[w[0] as usize], &entries[w[1] as usize]);
            let same = a.path == b.path;
            let below = b.path.len() > a.path.len()
                && b.path.as_bytes()[a.path.len()] == b'/'
                && b.path.starts_with(a.path.as_str());
            if same && (a.kind == EntryKind::File || b.kind == EntryKind::File) {
                return Err(TransferError::BadOffer(format!(
                    "{} appears twice",
                    escape_display(&a.path)
                )));
            }
            if below && a.kind == EntryKind::File {
                return Err(TransferError::BadOffer(format!(
                    "{} is both a file and a folder",
                    escape_display(&a.path)
                )));
            }
        }
        self.order = order;
        Ok(())
    }

    /// Whether the complete offer names `path` (a file or folder entry).
    /// Folders only implied by deeper entries do not count.
    pub fn offers(&self, path: &str) -> bool {
        self.order
            .binary_search_by(|&i| path_order(&self.entries[i as usize].path, path))
            .is_ok()
    }

    /// Handles one record's plaintext, received at `now`.
    pub fn handle<'a>(&mut self, now: Instant, record: &'a [u8]) -> Result<RxEvent<'a>, TransferError> {
        self.out.received(now);
        let msg = match Message::decode(record) {
            Ok(m) => m,
            Err(e) => return self.fail(e.into()),
        };
        match (self.state, msg) {
            (RxState::Failed, _) => Err(TransferError::Unexpected("message after failure")),
            (_, Message::Keepalive) => Ok(RxEvent::Nothing),
            (_, Message::Error(m)) => self.fail(TransferError::Peer(escape_display(&m))),
            (RxState::AwaitOffer, Message::Offer { kind, entries, total }) => {
                let bad = entries > MAX_ENTRIES
                    || (kind != OfferKind::Files && entries != 1)
                    || (kind == OfferKind::Stream && total != 0);
                if bad {
                    return self.fail(TransferError::BadOffer(format!(
                        "{entries} entries of kind {kind:?}"
                    )));
                }
                self.kind = kind;
                self.expected = entries;
                self.declared_total = total;
                self.state = RxState::Entries;
                Ok(RxEvent::Nothing)
            }
            (RxState::Entries, Message::Entry(e)) => {
                if self.entries.len() as u64 >= self.expected {
                    return self.fail(TransferError::BadOffer("more entries than announced".into()));
                }
                match self.add_entry(e) {
                    Ok(()) => Ok(RxEvent::Nothing),
                    Err(err) => self.fail(err),
                }
            }
            (RxState::Entries, Message::OfferEnd) => {
                if self.entries.len() as u64 != self.expected {
                    return self.fail(TransferError::BadOffer("fewer entries than announced".into()));
                }
                if self.kind != OfferKind::Stream && self.sum != self.declared_total {
                    return self.fail(TransferError::BadOffer("sizes do not add up to the total".into()));
                }
                if let Err(e) = self.check_clashes() {
                    return self.fail(e);
                }
                self.state = RxState::AwaitDecision;
                Ok(RxEvent::OfferReady)
            }
            (RxState::Receiving, Message::Skip(offset)) => {
                let index = self.current;
                match self.resume.remove(&index) {
                    Some((proposed, hasher)) if proposed == offset && !self.started => {
                        self.started = true;
                        self.in_file = offset;
                        self.hasher = Some(hasher);
                        Ok(RxEvent::Resumed { index, offset })
                    }
                    _ => self.fail(TransferError::Unexpected(
                        "skip without a matching resume proposal",
                    )),
                }
            }
            (RxState::Receiving, Message::Data(bytes)) => self.data(bytes),
            (RxState::Receiving, Message::ZData(frame)) => {
                if self.current >= self.entries.len() {
                    return self.fail(TransferError::Unexpected("data after the last file"));
                }
                Ok(RxEvent::Compressed {
                    index: self.current,
                    frame,
                })
            }
            (RxState::Receiving, Message::FileEnd(hash)) => {
                self.resume.remove(&self.current);
                let Some(e) = self.entries.get(self.current) else {
                    return self.fail(TransferError::Unexpected("file end after the last file"));
                };
                if e.size != UNKNOWN_SIZE && self.in_file != e.size {
                    return self.fail(TransferError::Unexpected("file ended before its size"));
                }
                if let Some(h) = self.hasher.take() {
                    let Some(hash) = hash else {
                        return self.fail(TransferError::Unexpected(
                            "the sender sent no hash for a file this side checks",
                        ));
                    };
                    if h.finalize() != blake3::Hash::from_bytes(hash) {
                        let name = escape_display(&e.path);
                        return self.fail(TransferError::HashMismatch(name));
                    }
                }
                let index = self.current;
                self.current += 1;
                self.skip_dirs();
                Ok(RxEvent::FileVerified { index })
            }
            (RxState::Receiving, Message::Done) => {
                if self.current < self.entries.len() {
                    return self.fail(TransferError::Unexpected("done before every file arrived"));
                }
                self.state = RxState::Saving;
                Ok(RxEvent::Finished)
            }
            (_, _) => self.fail(TransferError::Unexpected("message out of order")),
        }
    }

    /// File bytes for the current file: from a `Data` record, or what a
    /// `ZData` frame decompressed to ([`RxEvent::Compressed`]).
    pub fn data<'a>(&mut self, bytes: &'a [u8]) -> Result<RxEvent<'a>, TransferError> {
        if self.state != RxState::Receiving {
            return self.fail(TransferError::Unexpected("data out of order"));
        }
        self.started = true;
        self.resume.remove(&self.current);
        let Some(e) = self.entries.get(self.current) else {
            return self.fail(TransferError::Unexpected("data after the last file"));
        };
        let new_len = self.in_file.saturating_add(bytes.len() as u64);
        if e.size != UNKNOWN_SIZE && new_len > e.size {
            return self.fail(TransferError::Unexpected("more data than the file's size"));
        }
        self.in_file = new_len;
        self.received += bytes.len() as u64;
        if let Some(h) = &mut self.hasher {
            h.update(bytes);
        }
        Ok(RxEvent::Data {
            index: self.current,
            bytes,
        })
    }
}

/// Orders paths component by component: as bytes, with `/` below every
/// other byte (NUL cannot occur in a valid path), so that `a/b` sorts right
/// after `a` and before `a-b`.
fn path_order(a: &str, b: &str) -> Ordering {
    let key = |c: &u8| if *c == b'/' { 0 } else { *c };
    a.as_bytes().iter().map(key).cmp(b.as_bytes().iter().map(key))
}
