//! Circuits: the client's machine ([`ClientCircuit`]) and a node's
//! ([`Relay`], every circuit through it), the seed's "path" and "layers
//! both ways".
//!
//! Message flow of a 3-hop circuit (telescoping: the client only ever
//! talks to its entry node; it reaches the middle and the exit through the
//! hops it already has, so neither ever sees its address):
//!
//! ```text
//! client                entry (hop 1)           middle (hop 2)          exit (hop 3)
//!   CREATE(hs1) ───────▶ respond
//!   ◀─────── CREATED
//!   RELAY_EARLY[EXTEND(middle, hs2)]_1 ─▶ recognised: CREATE(hs2) ──▶ respond
//!   ◀── RELAY[EXTENDED]_1 ◀──────────────── CREATED ◀─────────────────
//!   RELAY_EARLY[EXTEND(exit, hs3)]_21 ─▶ peel ─▶ recognised: CREATE(hs3) ─▶ respond
//!   ◀─ RELAY[EXTENDED]_12 ◀──────── wrap ◀── RELAY[EXTENDED]_2 ◀── CREATED
//!   RELAY[DATA(frame)]_321 ─▶ peel 1 ─▶ peel 2 ─▶ recognised: the exit's streams
//!   ◀─ peel 1,2,3 ◀─ wrap 1 ◀─ wrap 2 ◀─ RELAY[DATA(frame)]_3 (originated)
//! ```
//!
//! `[m]_321` is a relay cell the client originated for hop 3 and layered
//! for hops 2 and 1 ([`super::cgo`]). A relay cell no hop recognises
//! (altered, replayed, reordered or moved to another command) stops at the
//! last hop, which destroys the circuit: DESTROY travels both ways and the
//! client's application gets an error, never altered bytes.
//!
//! **Flow control per circuit.** Each end may send [`CIRC_WINDOW`] DATA
//! cells ahead; the receiving end answers every [`SENDME_EVERY`] with a
//! SENDME carrying the tag of the cell that completed the step, which the
//! sender checks (a SENDME for cells not yet delivered is refused). Per
//! stream, the mux's own credit runs inside the DATA frames.
//!
//! Only the exit end (the last hop) reads DATA and SENDME; a middle that
//! recognised one is looking at a protocol error. EXTEND is honoured only
//! in RELAY_EARLY, which a hop counts: a ninth one destroys the circuit.

use std::collections::{HashMap, VecDeque};

use thiserror::Error;

use super::cell::{BODY_LEN, Cell, CellError, Command, MAX_EXTENDS, OUTBOUND_BIT, Reason, RelayMsg};
use super::cgo::{ClientInbound, ClientOutbound, RelayInbound, RelayOutbound, State, TAG_LEN};
use super::handshake::{ClientHandshake, DIGEST_LEN, HandshakeError, HopKeys, Responder};
use crate::keys::NodeId;
use crate::random::Random;

/// DATA cells one end may send before a SENDME (2 MiB of 8 KiB cells:
/// several times the bandwidth-delay product of a fast circuit, and what
/// bounds the cells a stalled client can make its hops hold).
pub const CIRC_WINDOW: u32 = 256;
/// DATA cells per SENDME.
pub const SENDME_EVERY: u32 = 32;
/// Most SENDME tags an end keeps waiting for (the window's steps).
const MAX_PENDING_SENDMES: usize = (CIRC_WINDOW / SENDME_EVERY) as usize + 1;

/// What the client needs of a hop (from the node list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HopInfo {
    /// Its node id.
    pub id: NodeId,
    /// Its onion key.
    pub onion_key: [u8; 32],
}

/// What went wrong on a circuit (the circuit is then unusable).
#[derive(Debug, Error)]
pub enum CircuitError {
    /// A hop's handshake failed.
    #[error("hop handshake: {0}")]
    Handshake(#[from] HandshakeError),
    /// A cell did not decode.
    #[error(transparent)]
    Cell(#[from] CellError),
    /// A relay cell no hop recognised: altered, replayed or reordered.
    #[error("a cell was altered, replayed or reordered on the way")]
    Tampered,
    /// The other end broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// The circuit was destroyed.
    #[error("circuit destroyed: {0}")]
    Destroyed(Reason),
    /// No window left: wait for a SENDME.
    #[error("circuit window exhausted")]
    Window,
    /// More hops than [`MAX_EXTENDS`] allows.
    #[error("a circuit has at most {} hops", MAX_EXTENDS + 1)]
    TooLong,
}

fn states(keys: &HopKeys) -> (State, State) {
    (
        State::new(&keys.forward, BODY_LEN),
        State::new(&keys.backward, BODY_LEN),
    )
}

/// Sends SENDMEs for one direction and checks them for the other.
#[derive(Debug)]
struct Window {
    /// DATA cells this end may still send.
    send: u32,
    /// Tags of the cells that will complete the next steps.
    expect: VecDeque<[u8; TAG_LEN]>,
    sent: u32,
    /// DATA cells received since the last SENDME.
    received: u32,
}

impl Window {
    fn new() -> Self {
        Self {
            send: CIRC_WINDOW,
            expect: VecDeque::new(),
            sent: 0,
            received: 0,
        }
    }

    /// One DATA cell sent with `tag`.
    fn sent(&mut self, tag: [u8; TAG_LEN]) {
        self.send -= 1;
        self.sent += 1;
        if self.sent.is_multiple_of(SENDME_EVERY) && self.expect.len() < MAX_PENDING_SENDMES {
            self.expect.push_back(tag);
        }
    }

    /// A SENDME arrived.
    fn sendme(&mut self, tag: &[u8; TAG_LEN]) -> Result<(), CircuitError> {
        match self.expect.pop_front() {
            Some(t) if t == *tag => {
                self.send += SENDME_EVERY;
                Ok(())
            }
            _ => Err(CircuitError::Protocol("a SENDME for cells not sent")),
        }
    }

    /// One DATA cell received; `true` when a SENDME is due.
    fn received(&mut self) -> Result<bool, CircuitError> {
        self.received += 1;
        if self.received > CIRC_WINDOW {
            return Err(CircuitError::Protocol("DATA beyond the circuit window"));
        }
        Ok(self.received.is_multiple_of(SENDME_EVERY))
    }

    fn sendme_sent(&mut self) {
        self.received -= SENDME_EVERY;
    }
}

struct ClientHop {
    id: NodeId,
    fwd: ClientOutbound,
    back: ClientInbound,
}

/// What a cell meant to the client.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientEvent<'a> {
    /// A hop joined: the circuit now has this many.
    Extended(usize),
    /// A stream frame from the exit.
    Data(&'a [u8]),
    /// Nothing for the application (a SENDME, padding).
    Nothing,
}

/// The client's end of one circuit.
pub struct ClientCircuit {
    circ: u32,
    digest: [u8; DIGEST_LEN],
    hops: Vec<ClientHop>,
    pending: Option<(NodeId, ClientHandshake)>,
    extends: u8,
    window: Window,
    sendme: VecDeque<Cell>,
    closed: Option<Reason>,
}

impl std::fmt::Debug for ClientCircuit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCircuit")
            .field("circ", &self.circ)
            .field("hops", &self.hops.iter().map(|h| h.id).collect::<Vec<_>>())
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl ClientCircuit {
    /// Starts a circuit with id `circ` at `entry`, whose onion key the
    /// node list with `digest` gives: the CREATE cell to send on the link
    /// to it.
    pub fn start(
        circ: u32,
        entry: &HopInfo,
        digest: [u8; DIGEST_LEN],
        now_unix: u64,
        rng: &mut dyn Random,
    ) -> Result<(Self, Cell), CircuitError> {
        let (hs, create) = ClientHandshake::start(&entry.id, &entry.onion_key, &digest, now_unix, rng)?;
        let c = Self {
            circ,
            digest,
            hops: Vec::new(),
            pending: Some((entry.id, hs)),
            extends: 0,
            window: Window::new(),
            sendme: VecDeque::new(),
            closed: None,
        };
        Ok((c, Cell::with_bytes(circ, Command::Create, &create)))
    }

    /// The circuit id on the link to the entry.
    pub fn circ(&self) -> u32 {
        self.circ
    }

    /// Hops built so far.
    pub fn len(&self) -> usize {
        self.hops.len()
    }

    /// Whether no hop is built yet.
    pub fn is_empty(&self) -> bool {
        self.hops.is_empty()
    }

    /// The hops' ids, entry first.
    pub fn path(&self) -> Vec<NodeId> {
        self.hops.iter().map(|h| h.id).collect()
    }

    /// Whether a CREATE or EXTEND is waiting for its answer.
    pub fn is_extending(&self) -> bool {
        self.pending.is_some()
    }

    /// DATA cells the client may still send.
    pub fn window(&self) -> u32 {
        self.window.send
    }

    /// Why it was destroyed, once it was.
    pub fn closed(&self) -> Option<Reason> {
        self.closed
    }

    fn check_open(&self) -> Result<(), CircuitError> {
        match self.closed {
            Some(r) => Err(CircuitError::Destroyed(r)),
            None => Ok(()),
        }
    }

    /// A relay cell for hop `target` (0-based), layered for every hop
    /// before it; returns the cell and its tag at the target.
    fn originate(&mut self, target: usize, cmd: Command, msg: RelayMsg<'_>) -> (Cell, [u8; TAG_LEN]) {
        let mut cell = Cell::new(self.circ, cmd);
        let body = cell.body_mut();
        msg.write(body);
        let ad = cmd as u8;
        let tag = self.hops[target].fwd.originate(ad, body);
        for hop in self.hops[..target].iter_mut().rev() {
            hop.fwd.encrypt(ad, body);
        }
        (cell, tag)
    }

    /// Extends the circuit by `next` (through the hops it has): the
    /// RELAY_EARLY cell to send.
    pub fn extend(
        &mut self,
        next: &HopInfo,
        now_unix: u64,
        rng: &mut dyn Random,
    ) -> Result<Cell, CircuitError> {
        self.check_open()?;
        if self.pending.is_some() || self.hops.is_empty() {
            return Err(CircuitError::Protocol("extend while a hop is being built"));
        }
        if self.extends >= MAX_EXTENDS {
            return Err(CircuitError::TooLong);
        }
        let (hs, create) = ClientHandshake::start(&next.id, &next.onion_key, &self.digest, now_unix, rng)?;
        let last = self.hops.len() - 1;
        let (cell, _) = self.originate(
            last,
            Command::RelayEarly,
            RelayMsg::Extend {
                node: next.id,
                create: &create,
            },
        );
        self.extends += 1;
        self.pending = Some((next.id, hs));
        Ok(cell)
    }

    /// A stream frame for the exit: the RELAY cell to send. Fails with
    /// [`CircuitError::Window`] until a SENDME opens the window again.
    pub fn send(&mut self, frame: &[u8]) -> Result<Cell, CircuitError> {
        self.check_open()?;
        if self.hops.is_empty() || self.pending.is_some() {
            return Err(CircuitError::Protocol("data before the circuit is built"));
        }
        if self.window.send == 0 {
            return Err(CircuitError::Window);
        }
        if frame.len() > super::cell::MAX_RELAY_DATA {
            return Err(CircuitError::Protocol("frame longer than a cell"));
        }
        let last = self.hops.len() - 1;
        let (cell, tag) = self.originate(last, Command::Relay, RelayMsg::Data(frame));
        self.window.sent(tag);
        Ok(cell)
    }

    /// A padding cell for hop `target` (it is dropped there).
    pub fn drop_cell(&mut self, target: usize) -> Result<Cell, CircuitError> {
        self.check_open()?;
        if target >= self.hops.len() {
            return Err(CircuitError::Protocol("no such hop"));
        }
        Ok(self.originate(target, Command::Relay, RelayMsg::Drop).0)
    }

    /// The DESTROY cell that closes the circuit from this end.
    pub fn destroy(&mut self) -> Cell {
        self.closed.get_or_insert(Reason::Finished);
        Cell::destroy(self.circ, Reason::Finished)
    }

    /// A SENDME that [`ClientCircuit::on_cell`] made due: send it (call
    /// after every cell).
    pub fn take_sendme(&mut self) -> Option<Cell> {
        self.sendme.pop_front()
    }

    /// Handles a cell from the entry for this circuit. An error leaves
    /// the circuit destroyed (send [`ClientCircuit::destroy`] unless the
    /// error is [`CircuitError::Destroyed`]).
    pub fn on_cell<'a>(
        &mut self,
        cell: &'a mut Cell,
        now_unix: u64,
    ) -> Result<ClientEvent<'a>, CircuitError> {
        let _ = now_unix;
        self.check_open()?;
        let r = self.handle(cell);
        if let Err(e) = &r {
            self.closed = Some(match e {
                CircuitError::Destroyed(r) => *r,
                CircuitError::Tampered => Reason::Tampered,
                CircuitError::Handshake(_) => Reason::Handshake,
                _ => Reason::Protocol,
            });
        }
        r
    }

    fn handle<'a>(&mut self, cell: &'a mut Cell) -> Result<ClientEvent<'a>, CircuitError> {
        match cell.cmd() {
            Command::Destroy => Err(CircuitError::Destroyed(cell.reason())),
            Command::Created => {
                if !self.hops.is_empty() {
                    return Err(CircuitError::Protocol("CREATED after the first hop"));
                }
                let (id, hs) = self
                    .pending
                    .take()
                    .ok_or(CircuitError::Protocol("unexpected CREATED"))?;
                let keys = hs.finish(cell.bytes_field()?)?;
                self.add_hop(id, &keys);
                Ok(ClientEvent::Extended(self.hops.len()))
            }
            Command::Relay => {
                let ad = Command::Relay as u8;
                let body = cell.body_mut();
                let mut from = None;
                for (i, hop) in self.hops.iter_mut().enumerate() {
                    if let Some(tag) = hop.back.decrypt(ad, body) {
                        from = Some((i, tag));
                        break;
                    }
                }
                let (i, tag) = from.ok_or(CircuitError::Tampered)?;
                let last = i + 1 == self.hops.len();
                match RelayMsg::read(cell.body())? {
                    RelayMsg::Extended(created) if last && self.pending.is_some() => {
                        let (id, hs) = self
                            .pending
                            .take()
                            .ok_or(CircuitError::Protocol("unexpected EXTENDED"))?;
                        let keys = hs.finish(created)?;
                        self.add_hop(id, &keys);
                        Ok(ClientEvent::Extended(self.hops.len()))
                    }
                    RelayMsg::Data(frame) if last && self.pending.is_none() => {
                        if self.window.received()? {
                            let (c, _) = self.originate(i, Command::Relay, RelayMsg::Sendme(tag));
                            self.window.sendme_sent();
                            self.sendme.push_back(c);
                        }
                        Ok(ClientEvent::Data(frame))
                    }
                    RelayMsg::Sendme(t) if last => {
                        self.window.sendme(&t)?;
                        Ok(ClientEvent::Nothing)
                    }
                    RelayMsg::Drop => Ok(ClientEvent::Nothing),
                    _ => Err(CircuitError::Protocol("a relay message out of place")),
                }
            }
            Command::Create | Command::RelayEarly => Err(CircuitError::Protocol("a cell only clients send")),
        }
    }

    fn add_hop(&mut self, id: NodeId, keys: &HopKeys) {
        let (f, b) = states(keys);
        self.hops.push(ClientHop {
            id,
            fwd: ClientOutbound(f),
            back: ClientInbound(b),
        });
    }
}

/// A link a node has, as its driver names it.
pub type LinkId = u64;
/// A circuit through a node, as the [`Relay`] names it.
pub type CircuitKey = u64;

/// What a [`Relay`] asks its driver to do.
#[derive(Debug, PartialEq, Eq)]
pub enum RelayOut {
    /// Send `cell` on `link`.
    Send {
        /// The link.
        link: LinkId,
        /// The cell.
        cell: Cell,
    },
    /// Get a link to `node` (an existing one, or dial it), then call
    /// [`Relay::extend_link`] (or [`Relay::extend_failed`]).
    Extend {
        /// The circuit.
        circuit: CircuitKey,
        /// The next hop.
        node: NodeId,
    },
    /// A stream frame for this node's exit (it is the circuit's last hop).
    Stream {
        /// The circuit.
        circuit: CircuitKey,
        /// The frame.
        frame: Vec<u8>,
    },
    /// More DATA may go back on this circuit ([`Relay::send_back`] had
    /// refused for want of window).
    Writable {
        /// The circuit.
        circuit: CircuitKey,
    },
    /// The circuit is gone: drop the exit's streams on it.
    Closed {
        /// The circuit.
        circuit: CircuitKey,
        /// Why.
        reason: Reason,
    },
}

struct RelayCircuit {
    prev: (LinkId, u32),
    next: Option<(LinkId, u32)>,
    fwd: RelayOutbound,
    back: RelayInbound,
    early: u8,
    /// The CREATE of an EXTEND waiting for its link.
    pending_create: Option<Vec<u8>>,
    /// CREATE sent, CREATED not yet back.
    extending: bool,
    window: Window,
    blocked: bool,
}

/// Counters a node reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Circuits created through this node.
    pub created: u64,
    /// Handshakes refused (bad, replayed, skewed).
    pub refused: u64,
    /// Of those, against a node list this node does not have (yet).
    pub unknown_list: u64,
    /// Circuits destroyed because a cell was recognised by no hop.
    pub tampered: u64,
    /// Cells forwarded either way.
    pub forwarded: u64,
}

/// Every circuit through one node.
pub struct Relay {
    node: NodeId,
    responder: Responder,
    circuits: HashMap<CircuitKey, RelayCircuit>,
    by_prev: HashMap<(LinkId, u32), CircuitKey>,
    by_next: HashMap<(LinkId, u32), CircuitKey>,
    next_key: CircuitKey,
    out: VecDeque<RelayOut>,
    stats: RelayStats,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("node", &self.node)
            .field("circuits", &self.circuits.len())
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// A node's relay with its onion-key responder.
    pub fn new(node: NodeId, responder: Responder) -> Self {
        Self {
            node,
            responder,
            circuits: HashMap::new(),
            by_prev: HashMap::new(),
            by_next: HashMap::new(),
            next_key: 1,
            out: VecDeque::new(),
            stats: RelayStats::default(),
        }
    }

    /// The responder (its onion key, the node lists it accepts).
    pub fn responder(&mut self) -> &mut Responder {
        &mut self.responder
    }

    /// Circuits through this node.
    pub fn len(&self) -> usize {
        self.circuits.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.circuits.is_empty()
    }

    /// Counters.
    pub fn stats(&self) -> RelayStats {
        self.stats
    }

    /// The next thing for the driver to do.
    pub fn poll(&mut self) -> Option<RelayOut> {
        self.out.pop_front()
    }

    /// Circuits whose previous or next hop is on `link`.
    pub fn circuits_on(&self, link: LinkId) -> usize {
        self.circuits
            .values()
            .filter(|c| c.prev.0 == link || c.next.is_some_and(|n| n.0 == link))
            .count()
    }

    fn send(&mut self, link: LinkId, cell: Cell) {
        self.out.push_back(RelayOut::Send { link, cell });
    }

    /// Removes a circuit, telling the side(s) in `tell` with DESTROY.
    fn teardown(&mut self, key: CircuitKey, reason: Reason, tell_prev: bool, tell_next: bool) {
        let Some(c) = self.circuits.remove(&key) else {
            return;
        };
        self.by_prev.remove(&c.prev);
        if tell_prev {
            self.send(c.prev.0, Cell::destroy(c.prev.1, reason));
        }
        if let Some(n) = c.next {
            self.by_next.remove(&n);
            if tell_next {
                self.send(n.0, Cell::destroy(n.1, reason));
            }
        }
        self.out.push_back(RelayOut::Closed { circuit: key, reason });
    }

    /// Handles a cell from `link`. `Err` means the link itself misbehaved
    /// (not a cell): the driver closes it, and calls
    /// [`Relay::link_closed`].
    pub fn on_cell(
        &mut self,
        link: LinkId,
        bytes: Vec<u8>,
        now_unix: u64,
        rng: &mut dyn Random,
    ) -> Result<(), CellError> {
        let cell = Cell::decode(bytes)?;
        let id = (link, cell.circ());
        if let Some(&key) = self.by_prev.get(&id) {
            self.towards_exit(key, cell);
        } else if let Some(&key) = self.by_next.get(&id) {
            self.towards_client(key, cell);
        } else if cell.cmd() == Command::Create {
            self.create(link, cell, now_unix, rng);
        }
        // Anything else is for a circuit this node no longer has (a
        // DESTROY crossed it on the way): dropped.
        Ok(())
    }

    fn create(&mut self, link: LinkId, cell: Cell, now_unix: u64, rng: &mut dyn Random) {
        let circ = cell.circ();
        let reply = cell
            .bytes_field()
            .map_err(|_| HandshakeError::Malformed(crate::wire::DecodeError::Truncated { needed: 2 }))
            .and_then(|b| self.responder.respond(b, now_unix, rng));
        match reply {
            Ok((created, keys)) => {
                let (f, b) = states(&keys);
                let key = self.next_key;
                self.next_key += 1;
                self.circuits.insert(
                    key,
                    RelayCircuit {
                        prev: (link, circ),
                        next: None,
                        fwd: RelayOutbound(f),
                        back: RelayInbound(b),
                        early: 0,
                        pending_create: None,
                        extending: false,
                        window: Window::new(),
                        blocked: false,
                    },
                );
                self.by_prev.insert((link, circ), key);
                self.stats.created += 1;
                self.send(link, Cell::with_bytes(circ, Command::Created, &created));
            }
            Err(e) => {
                self.stats.refused += 1;
                if matches!(e, HandshakeError::UnknownDigest) {
                    self.stats.unknown_list += 1;
                }
                let reason = match e {
                    HandshakeError::Busy => Reason::ResourceLimit,
                    _ => Reason::Handshake,
                };
                self.send(link, Cell::destroy(circ, reason));
            }
        }
    }

    fn towards_exit(&mut self, key: CircuitKey, mut cell: Cell) {
        let cmd = cell.cmd();
        match cmd {
            Command::Destroy => self.teardown(key, cell.reason(), false, true),
            Command::Relay | Command::RelayEarly => {
                let Some(c) = self.circuits.get_mut(&key) else {
                    return;
                };
                if cmd == Command::RelayEarly {
                    c.early += 1;
                    if c.early > MAX_EXTENDS {
                        return self.teardown(key, Reason::TooLong, true, true);
                    }
                }
                let recognised = c.fwd.decrypt(cmd as u8, cell.body_mut());
                match (recognised, c.next) {
                    (Some(tag), _) => self.recognised(key, cmd, cell, tag),
                    (None, Some((link, circ))) if !c.extending => {
                        cell.set_circ(circ);
                        self.stats.forwarded += 1;
                        self.send(link, cell);
                    }
                    _ => {
                        self.stats.tampered += 1;
                        self.teardown(key, Reason::Tampered, true, true);
                    }
                }
            }
            Command::Create | Command::Created => self.teardown(key, Reason::Protocol, true, true),
        }
    }

    fn recognised(&mut self, key: CircuitKey, cmd: Command, cell: Cell, tag: [u8; TAG_LEN]) {
        let Some(c) = self.circuits.get_mut(&key) else {
            return;
        };
        let last = c.next.is_none() && !c.extending && c.pending_create.is_none();
        let msg = match RelayMsg::read(cell.body()) {
            Ok(m) => m,
            Err(_) => return self.teardown(key, Reason::Protocol, true, true),
        };
        match msg {
            RelayMsg::Extend { node, create } if cmd == Command::RelayEarly && last && node != self.node => {
                c.pending_create = Some(create.to_vec());
                self.out.push_back(RelayOut::Extend { circuit: key, node });
            }
            RelayMsg::Data(frame) if last => match c.window.received() {
                Ok(due) => {
                    let frame = frame.to_vec();
                    if due {
                        c.window.sendme_sent();
                        let prev = c.prev;
                        let mut reply = Cell::new(prev.1, Command::Relay);
                        RelayMsg::Sendme(tag).write(reply.body_mut());
                        c.back.originate(Command::Relay as u8, reply.body_mut());
                        self.send(prev.0, reply);
                    }
                    self.out.push_back(RelayOut::Stream { circuit: key, frame });
                }
                Err(_) => self.teardown(key, Reason::Protocol, true, true),
            },
            RelayMsg::Sendme(t) if last => {
                let was_blocked = c.blocked;
                match c.window.sendme(&t) {
                    Ok(()) => {
                        if was_blocked {
                            c.blocked = false;
                            self.out.push_back(RelayOut::Writable { circuit: key });
                        }
                    }
                    Err(_) => self.teardown(key, Reason::Protocol, true, true),
                }
            }
            RelayMsg::Drop => {}
            _ => self.teardown(key, Reason::Protocol, true, true),
        }
    }

    fn towards_client(&mut self, key: CircuitKey, mut cell: Cell) {
        let Some(c) = self.circuits.get_mut(&key) else {
            return;
        };
        let prev = c.prev;
        match cell.cmd() {
            Command::Created if c.extending => {
                c.extending = false;
                let created = match cell.bytes_field() {
                    Ok(b) => b.to_vec(),
                    Err(_) => return self.teardown(key, Reason::Protocol, true, true),
                };
                let mut reply = Cell::new(prev.1, Command::Relay);
                RelayMsg::Extended(&created).write(reply.body_mut());
                c.back.originate(Command::Relay as u8, reply.body_mut());
                self.send(prev.0, reply);
            }
            Command::Relay if !c.extending => {
                c.back.encrypt(Command::Relay as u8, cell.body_mut());
                cell.set_circ(prev.1);
                self.stats.forwarded += 1;
                self.send(prev.0, cell);
            }
            Command::Destroy => {
                let reason = cell.reason();
                self.teardown(key, reason, true, false);
            }
            _ => self.teardown(key, Reason::Protocol, true, true),
        }
    }

    /// The link for a circuit's EXTEND is up: `outbound` says whether
    /// this node dialled it (which half of the circuit ids it uses).
    pub fn extend_link(&mut self, circuit: CircuitKey, link: LinkId, outbound: bool, rng: &mut dyn Random) {
        let Some(c) = self.circuits.get_mut(&circuit) else {
            return;
        };
        let Some(create) = c.pending_create.take() else {
            return;
        };
        let circ = loop {
            let mut b = [0u8; 4];
            rng.fill(&mut b);
            let mut id = u32::from_be_bytes(b) & !OUTBOUND_BIT;
            if outbound {
                id |= OUTBOUND_BIT;
            }
            if id & !OUTBOUND_BIT != 0
                && !self.by_next.contains_key(&(link, id))
                && !self.by_prev.contains_key(&(link, id))
            {
                break id;
            }
        };
        c.next = Some((link, circ));
        c.extending = true;
        self.by_next.insert((link, circ), circuit);
        self.send(link, Cell::with_bytes(circ, Command::Create, &create));
    }

    /// The next hop of a circuit's EXTEND could not be reached.
    pub fn extend_failed(&mut self, circuit: CircuitKey) {
        self.teardown(circuit, Reason::HopGone, true, false);
    }

    /// Whether the exit may send DATA back on `circuit` now.
    pub fn can_send_back(&self, circuit: CircuitKey) -> bool {
        self.circuits.get(&circuit).is_some_and(|c| c.window.send > 0)
    }

    /// The exit sends a stream frame back to the client. `false` when the
    /// circuit has no window left (a [`RelayOut::Writable`] follows) or is
    /// gone.
    pub fn send_back(&mut self, circuit: CircuitKey, frame: &[u8]) -> bool {
        let Some(c) = self.circuits.get_mut(&circuit) else {
            return false;
        };
        if c.window.send == 0 || c.next.is_some() || frame.len() > super::cell::MAX_RELAY_DATA {
            c.blocked = true;
            return false;
        }
        let prev = c.prev;
        let mut cell = Cell::new(prev.1, Command::Relay);
        RelayMsg::Data(frame).write(cell.body_mut());
        let tag = c.back.originate(Command::Relay as u8, cell.body_mut());
        c.window.sent(tag);
        self.send(prev.0, cell);
        true
    }

    /// Closes a circuit from this node (the exit is done with it, or a
    /// memory cap chose it).
    pub fn close(&mut self, circuit: CircuitKey, reason: Reason) {
        self.teardown(circuit, reason, true, true);
    }

    /// A link went down: every circuit on it is destroyed, the other side
    /// told.
    pub fn link_closed(&mut self, link: LinkId) {
        let keys: Vec<(CircuitKey, bool)> = self
            .circuits
            .iter()
            .filter_map(|(k, c)| {
                if c.prev.0 == link {
                    Some((*k, true))
                } else if c.next.is_some_and(|n| n.0 == link) {
                    Some((*k, false))
                } else {
                    None
                }
            })
            .collect();
        for (k, prev_gone) in keys {
            self.teardown(k, Reason::HopGone, !prev_gone, prev_gone);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::seeded;

    const NOW: u64 = 1_800_000_000;
    const DIGEST: [u8; 32] = [4; 32];

    /// Links in the harness: client ↔ node i is link 100 + i; node i ↔
    /// node j is link 10·min + max.
    fn link(a: usize, b: usize) -> LinkId {
        let (lo, hi) = (a.min(b), a.max(b));
        (10 * lo + hi) as LinkId
    }

    /// What a hostile node does to a cell it sends: the cells that go out instead.
    type Tamper = dyn FnMut(usize, LinkId, &mut Vec<u8>) -> Vec<Vec<u8>>;

    struct Net {
        relays: Vec<Relay>,
        client_inbox: VecDeque<Cell>,
        exit_frames: Vec<(usize, CircuitKey, Vec<u8>)>,
        /// Applied to every cell that node `.0` sends on link `.1`.
        tamper: Option<Box<Tamper>>,
        rng: crate::random::Stream,
    }

    fn node_id(i: usize) -> NodeId {
        NodeId([i as u8 + 1; 15])
    }

    impl Net {
        fn new(n: usize) -> Self {
            let mut rng = seeded(9);
            let relays = (0..n)
                .map(|i| {
                    let mut r = Responder::generate(node_id(i), &mut rng);
                    r.learn_digest(DIGEST);
                    Relay::new(node_id(i), r)
                })
                .collect();
            Self {
                relays,
                client_inbox: VecDeque::new(),
                exit_frames: Vec::new(),
                tamper: None,
                rng,
            }
        }

        fn info(&mut self, i: usize) -> HopInfo {
            HopInfo {
                id: node_id(i),
                onion_key: self.relays[i].responder().onion_key(),
            }
        }

        /// Delivers `cell` from the client to node `entry`, then runs the
        /// network until it is quiet.
        fn client_sends(&mut self, entry: usize, cell: Cell) {
            let mut queue = VecDeque::from([(entry, link(entry, 100), cell.into_bytes())]);
            self.run(&mut queue);
        }

        fn run(&mut self, queue: &mut VecDeque<(usize, LinkId, Vec<u8>)>) {
            while let Some((to, l, bytes)) = queue.pop_front() {
                let rng = &mut self.rng;
                self.relays[to].on_cell(l, bytes, NOW, rng).unwrap();
                while let Some(out) = self.relays[to].poll() {
                    match out {
                        RelayOut::Send { link: l, cell } => {
                            let mut bytes = cell.into_bytes();
                            let sent = match &mut self.tamper {
                                Some(t) => t(to, l, &mut bytes),
                                None => vec![bytes],
                            };
                            for bytes in sent {
                                if l == link(to, 100) {
                                    self.client_inbox.push_back(Cell::decode(bytes).unwrap());
                                } else {
                                    let other = if l as usize / 10 == to {
                                        l as usize % 10
                                    } else {
                                        l as usize / 10
                                    };
                                    queue.push_back((other, l, bytes));
                                }
                            }
                        }
                        RelayOut::Extend { circuit, node } => {
                            let j = (0..self.relays.len()).find(|&j| node_id(j) == node);
                            match j {
                                Some(j) => {
                                    let rng = &mut self.rng;
                                    self.relays[to].extend_link(circuit, link(to, j), to < j, rng);
                                }
                                None => self.relays[to].extend_failed(circuit),
                            }
                        }
                        RelayOut::Stream { circuit, frame } => self.exit_frames.push((to, circuit, frame)),
                        RelayOut::Writable { .. } | RelayOut::Closed { .. } => {}
                    }
                }
            }
        }

        /// Hands every cell waiting for the client to it.
        fn client_reads(&mut self, c: &mut ClientCircuit) -> Vec<Result<Vec<u8>, String>> {
            let mut got = Vec::new();
            while let Some(mut cell) = self.client_inbox.pop_front() {
                match c.on_cell(&mut cell, NOW) {
                    Ok(ClientEvent::Data(d)) => got.push(Ok(d.to_vec())),
                    Ok(_) => {}
                    Err(e) => got.push(Err(e.to_string())),
                }
            }
            got
        }

        fn build(&mut self, path: &[usize]) -> ClientCircuit {
            let first = self.info(path[0]);
            let (mut c, cell) =
                ClientCircuit::start(0x8000_0001, &first, DIGEST, NOW, &mut self.rng).unwrap();
            self.client_sends(path[0], cell);
            assert!(self.client_reads(&mut c).is_empty());
            for &hop in &path[1..] {
                let info = self.info(hop);
                let cell = c.extend(&info, NOW, &mut self.rng).unwrap();
                self.client_sends(path[0], cell);
                let got = self.client_reads(&mut c);
                assert!(got.is_empty(), "{got:?}");
            }
            assert_eq!(c.path(), path.iter().map(|&i| node_id(i)).collect::<Vec<_>>());
            c
        }
    }

    #[test]
    fn three_hops_built_telescoping_and_data_flows_both_ways() {
        let mut net = Net::new(4);
        let mut c = net.build(&[0, 1, 2]);
        assert_eq!(c.len(), 3);
        // Every node holds exactly one circuit; node 3 none.
        assert_eq!([0, 1, 2, 3].map(|i| net.relays[i].len()), [1, 1, 1, 0]);
        let cell = c.send(b"GET / HTTP/1.1").unwrap();
        net.client_sends(0, cell);
        assert_eq!(net.exit_frames.len(), 1);
        let (exit, circuit, frame) = net.exit_frames.pop().unwrap();
        assert_eq!((exit, &frame[..]), (2, &b"GET / HTTP/1.1"[..]));
        assert!(net.relays[2].send_back(circuit, b"HTTP/1.1 200 OK"));
        let mut q = VecDeque::new();
        net.run(&mut q);
        while let Some(out) = net.relays[2].poll() {
            if let RelayOut::Send { link: l, cell } = out {
                q.push_back((1, l, cell.into_bytes()));
            }
        }
        net.run(&mut q);
        assert_eq!(net.client_reads(&mut c), vec![Ok(b"HTTP/1.1 200 OK".to_vec())]);
        // The middle forwarded and saw nothing it could read.
        assert_eq!(net.relays[1].stats().forwarded, 2, "one cell each way");
    }

    fn exit_reply(net: &mut Net, exit: usize, circuit: CircuitKey, frame: &[u8]) -> bool {
        let ok = net.relays[exit].send_back(circuit, frame);
        let mut q = VecDeque::new();
        while let Some(out) = net.relays[exit].poll() {
            if let RelayOut::Send { link: l, cell } = out {
                let other = if l as usize / 10 == exit {
                    l as usize % 10
                } else {
                    l as usize / 10
                };
                q.push_back((other, l, cell.into_bytes()));
            }
        }
        net.run(&mut q);
        ok
    }

    #[test]
    fn windows_stop_a_sender_until_sendmes_come_back() {
        let mut net = Net::new(3);
        let mut c = net.build(&[0, 1, 2]);
        // Client → exit: the exit's SENDMEs reopen the client's window.
        for i in 0..CIRC_WINDOW * 2 {
            let cell = c.send(&i.to_be_bytes()).unwrap();
            net.client_sends(0, cell);
            assert!(net.client_reads(&mut c).is_empty());
        }
        assert_eq!(net.exit_frames.len() as u32, CIRC_WINDOW * 2);
        assert_eq!(c.window(), CIRC_WINDOW);
        // Exit → client without the client's SENDMEs: stops at the window.
        let circuit = net.exit_frames[0].1;
        let mut sent = 0;
        while exit_reply(&mut net, 2, circuit, b"x") {
            sent += 1;
            assert!(sent <= CIRC_WINDOW);
        }
        assert_eq!(sent, CIRC_WINDOW);
        let got = net.client_reads(&mut c);
        assert_eq!(got.len() as u32, CIRC_WINDOW);
        // The client's SENDMEs are waiting; sending them reopens the window.
        let mut n = 0;
        while let Some(s) = c.take_sendme() {
            net.client_sends(0, s);
            n += 1;
        }
        assert_eq!(n, CIRC_WINDOW / SENDME_EVERY);
        assert!(net.relays[2].can_send_back(circuit));
    }

    #[test]
    fn a_middle_that_flips_one_bit_kills_the_circuit_and_nothing_altered_arrives() {
        for direction in ["forward", "backward"] {
            let mut net = Net::new(3);
            let mut c = net.build(&[0, 1, 2]);
            let mut armed = true;
            net.tamper = Some(Box::new(move |from, l, bytes| {
                let forward = from == 1 && l == link(1, 2);
                let backward = from == 1 && l == link(0, 1);
                if armed && ((direction == "forward" && forward) || (direction == "backward" && backward)) {
                    armed = false;
                    bytes[100] ^= 0x01;
                }
                vec![bytes.clone()]
            }));
            let cell = c.send(b"secret request").unwrap();
            net.client_sends(0, cell);
            if direction == "forward" {
                assert!(
                    net.exit_frames.is_empty(),
                    "no altered byte reaches the exit's streams"
                );
                assert_eq!(net.relays[2].stats().tampered, 1);
                let got = net.client_reads(&mut c);
                assert_eq!(got.len(), 1);
                assert!(got[0].as_ref().unwrap_err().contains("altered"), "{got:?}");
            } else {
                let circuit = net.exit_frames[0].1;
                exit_reply(&mut net, 2, circuit, b"the page");
                let got = net.client_reads(&mut c);
                assert_eq!(got.len(), 1);
                assert!(got[0].as_ref().unwrap_err().contains("altered"), "{got:?}");
            }
            assert!(c.closed().is_some());
            assert!(matches!(c.send(b"more"), Err(CircuitError::Destroyed(_))));
            // Every node let the circuit go.
            if direction == "forward" {
                assert_eq!([0, 1, 2].map(|i| net.relays[i].len()), [0, 0, 0]);
            }
        }
    }

    #[test]
    fn replayed_and_reordered_cells_are_refused() {
        // Replay: the middle sends one cell twice.
        let mut net = Net::new(3);
        let mut c = net.build(&[0, 1, 2]);
        net.tamper = Some(Box::new(|from, l, bytes| {
            if from == 1 && l == link(1, 2) {
                vec![bytes.clone(), bytes.clone()]
            } else {
                vec![bytes.clone()]
            }
        }));
        let cell = c.send(b"once").unwrap();
        net.client_sends(0, cell);
        assert_eq!(
            net.exit_frames.len(),
            1,
            "the first copy is delivered, the replay is not"
        );
        assert_eq!(net.relays[2].stats().tampered, 1);
        assert!(net.client_reads(&mut c)[0].as_ref().is_err());

        // Reorder: the entry holds one cell back and sends it after the next.
        let mut net = Net::new(3);
        let mut c = net.build(&[0, 1, 2]);
        let mut held: Option<Vec<u8>> = None;
        net.tamper = Some(Box::new(move |from, l, bytes| {
            if from == 0 && l == link(0, 1) {
                match held.take() {
                    None => {
                        held = Some(bytes.clone());
                        vec![]
                    }
                    Some(first) => vec![bytes.clone(), first],
                }
            } else {
                vec![bytes.clone()]
            }
        }));
        let a = c.send(b"first").unwrap();
        let b = c.send(b"second").unwrap();
        net.client_sends(0, a);
        net.client_sends(0, b);
        assert!(net.exit_frames.is_empty(), "neither reordered cell is delivered");
        assert!(net.client_reads(&mut c)[0].is_err());
    }

    #[test]
    fn a_node_refuses_a_ninth_extend() {
        let mut net = Net::new(10);
        let path: Vec<usize> = (0..9).collect();
        let mut c = net.build(&path);
        assert_eq!(c.len(), 9);
        let info = net.info(9);
        assert!(matches!(
            c.extend(&info, NOW, &mut seeded(1)),
            Err(CircuitError::TooLong)
        ));
        // A client that ignores the rule: its entry destroys the circuit.
        c.extends = 0;
        let cell = c.extend(&info, NOW, &mut seeded(1)).unwrap();
        net.client_sends(0, cell);
        let got = net.client_reads(&mut c);
        assert!(got[0].as_ref().unwrap_err().contains("too many hops"), "{got:?}");
    }

    #[test]
    fn an_extend_to_an_unknown_node_or_itself_fails_cleanly() {
        let mut net = Net::new(3);
        let mut c = net.build(&[0, 1]);
        let ghost = HopInfo {
            id: NodeId([0xee; 15]),
            onion_key: [1; 32],
        };
        let cell = c.extend(&ghost, NOW, &mut seeded(1)).unwrap();
        net.client_sends(0, cell);
        let got = net.client_reads(&mut c);
        assert!(got[0].as_ref().unwrap_err().contains("went away"), "{got:?}");
        assert_eq!(net.relays[0].len(), 0);

        let mut net = Net::new(3);
        let mut c = net.build(&[0, 1]);
        let me = net.info(1);
        let cell = c.extend(&me, NOW, &mut seeded(1)).unwrap();
        net.client_sends(0, cell);
        assert!(net.client_reads(&mut c)[0].is_err());
    }

    #[test]
    fn a_link_going_down_destroys_its_circuits_both_ways() {
        let mut net = Net::new(3);
        let mut c = net.build(&[0, 1, 2]);
        net.relays[1].link_closed(link(1, 2));
        let mut q = VecDeque::new();
        while let Some(out) = net.relays[1].poll() {
            if let RelayOut::Send { link: l, cell } = out {
                q.push_back((0, l, cell.into_bytes()));
            }
        }
        net.run(&mut q);
        let got = net.client_reads(&mut c);
        assert!(got[0].as_ref().unwrap_err().contains("went away"), "{got:?}");
        assert_eq!([0, 1].map(|i| net.relays[i].len()), [0, 0]);
    }

    #[test]
    fn a_middle_cannot_read_data_meant_for_the_exit() {
        let mut net = Net::new(3);
        let mut c = net.build(&[0, 1, 2]);
        let mut seen = Vec::new();
        let cell = c.send(b"GET http://example.com/").unwrap();
        net.tamper = Some(Box::new(move |_, _, bytes| {
            seen.push(bytes.clone());
            assert!(
                !bytes.windows(11).any(|w| w == b"example.com"),
                "plaintext on a link"
            );
            vec![bytes.clone()]
        }));
        net.client_sends(0, cell);
        assert_eq!(net.exit_frames.len(), 1);
    }
}
