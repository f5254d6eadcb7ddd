//! One link between two nodes (seed 002): the handshake, keepalives,
//! rekeying and DISCONNECT, as a sans-IO machine. Node lists, pairing,
//! datagrams and tunnels ride on it as packets that the machine hands to
//! its owner.
//!
//! ```text
//! outbound (dialled)                               inbound
//!   BRWM 01, HELLO(e)                    ->                       XX
//!                                        <-  HELLO_ACK(e, ee, s, es + responder's record)
//!   FIN(s, se + initiator's record;
//!       sealed n | random)               ->
//!                                        <-  FIN_ACK(n | random)    (sealed; both sides up)
//!   ... KEEP_ALIVE, NLIST_*, PAIR_*, DATA, TUNNEL_*, DISCONNECT (all sealed) ...
//! ```
//!
//! With the responder's key already known (from its record or the peer
//! book) the outbound side runs `IK` instead: HELLO carries
//! `e, es, s, ss` and its record, HELLO_ACK `e, ee, se` and the
//! responder's record, FIN an empty Noise part. A wrong responder fails at
//! HELLO_ACK. Each record must be signed by the key the handshake
//! authenticated ([`super::record`]); anything that does not decode or
//! authenticate closes the link (seed step 9) with a DISCONNECT saying why.
//!
//! **Keepalives** (seed, plus what users of meshes asked for): a side
//! that has received a packet and sent nothing since answers one
//! [`LinkConfig::keepalive`] later with KEEP_ALIVE(beat), so an idle link
//! carries one beat per interval, in turns (the inbound side's
//! "keepalive" and the outbound side's "answer" of the seed, each
//! answering the other; the first beat is the outbound side's, one
//! interval after FIN_ACK). Each side therefore hears from a live peer at
//! least every two intervals, and silence for two intervals plus a grace
//! (three RTTs, 1 s at least, half an interval at most) closes the link
//! with "timeout". Any authenticated packet counts as liveness and as an
//! answer, so only idle links pay for beats, and a beat is one TCP segment
//! plus its ACK: 12 packets a minute at 10 s. Beats carry the owner's tag
//! ([`Link::set_beat_tag`]: the node-list digest, so idle links notice a
//! difference without pulling). Traffic that gets no packet back within
//! [`LinkConfig::probe_after`] makes either side probe at once
//! (KEEP_ALIVE(probe), answered at once), so a dead peer under load is
//! found in `probe_after + probe_timeout`. RTT comes from the handshake
//! and from those probes.
//!
//! **Rekeying**: every [`LinkConfig::rekey_after`] (or
//! [`REKEY_AFTER_RECORDS`] records) a side sends KEEP_ALIVE(rekey) and
//! moves its sending key on with Noise's `Rekey()`; the other side moves
//! its receiving key on right after that record. The rekey waits for the
//! side's next packet (its next beat on an idle link, which it replaces),
//! so rekeying costs an idle link nothing.
//!
//! The owner moves bytes: it reads from the socket into [`Link::read_buf`]
//! and calls [`Link::filled`] (records are decrypted in place), writes
//! [`Link::output`] and calls [`Link::advance`], and runs
//! [`Link::handle_timeout`] at [`Link::poll_timeout`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use thiserror::Error;
use zeroize::Zeroizing;

use super::packet::{
    self, KeepAliveKind, MAGIC, PREAMBLE_LEN, Packet, PacketId, Reason, VERSION, decode_random, encode_random,
};
use super::record::NodeRecord;
use crate::keys::PublicIdentity;
use crate::random::{Random, Stream};
use crate::session::aead::Backend;
use crate::session::{Handshake, LEN_PREFIX, Opener, Sealer, SessionError, Side, TAG_LEN};
use crate::wire::{DecodeError, EncodeError};

/// The Noise prologue's context for mesh links.
const CONTEXT: &str = "mesh link 1";
/// Records a direction seals before it rekeys, whatever the time.
pub const REKEY_AFTER_RECORDS: u64 = 1 << 32;
/// The read buffer's size at rest: links carry control traffic (most
/// records are tens of bytes, a page of node records tens of KiB).
const READ_CHUNK: usize = 4 * 1024;
/// What the read buffer grows to once a frame needs more than
/// [`READ_CHUNK`] (circuit cells are 8 KiB): several frames a read. Both
/// buffers keep what they grew to while the link is busy (no allocation
/// and copy per frame) and come back to [`READ_CHUNK`] or nothing at the
/// link's next timer with nothing in them ([`Link::handle_timeout`]).
const BUSY_CHUNK: usize = 32 * 1024;
/// Largest frame (prefix included).
const MAX_FRAME: usize = LEN_PREFIX + u16::MAX as usize;

/// Timers of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkConfig {
    /// The seed's KEEPALIVE_INTERVAL.
    pub keepalive: Duration,
    /// A handshake not finished by then is dropped.
    pub handshake_timeout: Duration,
    /// Sent traffic that hears nothing back for this long makes a probe.
    pub probe_after: Duration,
    /// How long such an early probe waits for any packet.
    pub probe_timeout: Duration,
    /// Each direction rekeys this often.
    pub rekey_after: Duration,
    /// The AES-256-GCM the records run on.
    pub backend: Backend,
}

impl LinkConfig {
    /// The defaults: 10 s keepalives, 5 s handshakes, dead peers under
    /// traffic found in 0.75 + 2 s, rekey every 120 s.
    pub fn new(backend: Backend) -> Self {
        Self {
            keepalive: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(5),
            probe_after: Duration::from_millis(750),
            probe_timeout: Duration::from_secs(2),
            rekey_after: Duration::from_secs(120),
            backend,
        }
    }
}

/// Which side dialled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// This side connected (the seed's "outbound" peer).
    Outbound,
    /// The other side connected.
    Inbound,
}

/// Where a link is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Handshaking.
    Handshake,
    /// Both sides confirmed the keys.
    Up,
    /// Over (a DISCONNECT went out or came in).
    Closed,
}

/// What a link reports to its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// The handshake is done and confirmed.
    Up {
        /// The peer's keys (its X25519 key authenticated by the handshake,
        /// its Ed25519 key by its record's signature).
        peer: PublicIdentity,
        /// The peer's signed record, as received.
        record: Vec<u8>,
        /// Noise's handshake hash: the channel binding for pairing.
        handshake_hash: [u8; 32],
    },
    /// The handshake or a probe's answer measured the round trip.
    Rtt(Duration),
    /// The peer's idle beat, with the tag it carries
    /// ([`Link::set_beat_tag`]).
    Beat {
        /// The peer's tag.
        tag: u64,
    },
    /// The link is over.
    Closed {
        /// Why.
        reason: Reason,
        /// Why, in words (the peer's words when `by_peer`: untrusted).
        text: String,
        /// The peer said so (DISCONNECT), rather than this side.
        by_peer: bool,
    },
}

/// Why a packet could not be sent.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The link is not up (or already closed).
    #[error("the link is not up")]
    NotUp,
    /// The packet does not fit its format.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The packet is one the link sends itself.
    #[error("{0} is the link's own packet")]
    Reserved(&'static str),
    /// Sealing failed.
    #[error(transparent)]
    Session(#[from] SessionError),
}

/// Packet and byte counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Frames received.
    pub packets_in: u64,
    /// Frames sent.
    pub packets_out: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Keepalive probes sent.
    pub probes: u64,
    /// Rekeys of the sending direction.
    pub rekeys: u64,
    /// Idle beats sent.
    pub beats: u64,
}

enum Phase {
    /// Inbound: the preamble has not arrived.
    Preamble,
    /// Inbound: waiting for HELLO.
    AwaitHello,
    /// Outbound: HELLO sent.
    AwaitHelloAck { hs: Box<Handshake>, ik: bool },
    /// Inbound: HELLO_ACK sent.
    AwaitFin {
        hs: Box<Handshake>,
        /// The initiator's record, from HELLO (`IK`).
        record: Option<Vec<u8>>,
    },
    /// Outbound: FIN sent, keys in place.
    AwaitFinAck { random: Vec<u8> },
    /// Both confirmed.
    Up,
    /// Over.
    Closed,
}

struct Probe {
    nonce: u64,
    sent: Instant,
    deadline: Instant,
}

/// One link (see the module docs).
pub struct Link {
    dir: Direction,
    cfg: LinkConfig,
    phase: Phase,
    secret: Zeroizing<[u8; 32]>,
    my_record: Vec<u8>,
    rng: Stream,
    sealer: Option<Sealer>,
    opener: Option<Opener>,
    /// Received bytes not yet consumed: `inbuf[start..]`.
    inbuf: Vec<u8>,
    start: usize,
    /// End of the received bytes in `inbuf`.
    valid: usize,
    out: Vec<u8>,
    out_pos: usize,
    events: VecDeque<LinkEvent>,
    peer: Option<(PublicIdentity, Vec<u8>, [u8; 32])>,
    began: Instant,
    last_rx: Instant,
    /// When traffic went out that nothing has come back for.
    unanswered: Option<Instant>,
    probe: Option<Probe>,
    /// A packet came in at this time and nothing went out since: a beat
    /// is due one interval later.
    owe_since: Option<Instant>,
    /// The tag the next beat carries.
    beat_tag: u64,
    /// The latest `now` the owner gave.
    clock: Instant,
    rekey_at: Instant,
    /// The rekey time passed: the next packet out is a rekey first.
    rekey_due: bool,
    sealed_since_rekey: u64,
    rtt: Option<Duration>,
    stats: LinkStats,
    /// The Closed event went out (a failing packet may have taken the phase first).
    ended: bool,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("dir", &self.dir)
            .field("state", &self.state())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Link {
    fn new(
        dir: Direction,
        cfg: LinkConfig,
        secret: &[u8; 32],
        my_record: Vec<u8>,
        now: Instant,
        rng: &mut dyn Random,
    ) -> Self {
        Self {
            dir,
            cfg,
            phase: Phase::Preamble,
            secret: Zeroizing::new(*secret),
            my_record,
            rng: Stream::from_random(rng),
            sealer: None,
            opener: None,
            inbuf: Vec::new(),
            start: 0,
            valid: 0,
            out: Vec::new(),
            out_pos: 0,
            events: VecDeque::new(),
            peer: None,
            began: now,
            last_rx: now,
            unanswered: None,
            probe: None,
            owe_since: None,
            beat_tag: 0,
            clock: now,
            rekey_at: now + cfg.rekey_after,
            rekey_due: false,
            sealed_since_rekey: 0,
            rtt: None,
            stats: LinkStats::default(),
            ended: false,
        }
    }

    /// The side that dials: queues the preamble and HELLO. `peer`: the
    /// responder's X25519 key when it is known (then `IK`, else `XX`).
    /// `my_record` is this node's signed record.
    pub fn outbound(
        cfg: LinkConfig,
        secret: &[u8; 32],
        my_record: Vec<u8>,
        peer: Option<&[u8; 32]>,
        now: Instant,
        rng: &mut dyn Random,
    ) -> Result<Self, SessionError> {
        let mut link = Self::new(Direction::Outbound, cfg, secret, my_record, now, rng);
        let (mut hs, ik) = match peer {
            Some(k) => (
                Handshake::ik(
                    Side::Initiator,
                    secret,
                    Some(k),
                    CONTEXT,
                    cfg.backend,
                    &mut link.rng,
                )?,
                true,
            ),
            None => (
                Handshake::xx(Side::Initiator, secret, CONTEXT, cfg.backend, &mut link.rng)?,
                false,
            ),
        };
        let payload: &[u8] = if ik { &link.my_record } else { &[] };
        let msg = hs.write_message_with(payload)?;
        link.out.extend_from_slice(MAGIC);
        link.out.push(VERSION);
        link.queue_plain(&Packet::Hello {
            key: &msg[LEN_PREFIX..],
        });
        link.phase = Phase::AwaitHelloAck { hs: Box::new(hs), ik };
        Ok(link)
    }

    /// The side that was dialled.
    pub fn inbound(
        cfg: LinkConfig,
        secret: &[u8; 32],
        my_record: Vec<u8>,
        now: Instant,
        rng: &mut dyn Random,
    ) -> Self {
        Self::new(Direction::Inbound, cfg, secret, my_record, now, rng)
    }

    /// Which side dialled.
    pub fn direction(&self) -> Direction {
        self.dir
    }

    /// Where the link is.
    pub fn state(&self) -> LinkState {
        match self.phase {
            Phase::Up => LinkState::Up,
            Phase::Closed => LinkState::Closed,
            _ => LinkState::Handshake,
        }
    }

    /// The peer's keys, once the handshake authenticated them.
    pub fn peer(&self) -> Option<&PublicIdentity> {
        self.peer.as_ref().map(|p| &p.0)
    }

    /// The last measured round trip.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// Counters.
    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    /// Whether packets can be sent: up, or (outbound) with FIN sent.
    pub fn can_send(&self) -> bool {
        matches!(self.phase, Phase::Up | Phase::AwaitFinAck { .. })
    }

    /// The next event for the owner.
    pub fn poll_event(&mut self) -> Option<LinkEvent> {
        self.events.pop_front()
    }

    /// Bytes to write to the peer.
    pub fn output(&self) -> &[u8] {
        &self.out[self.out_pos..]
    }

    /// `n` bytes of [`Link::output`] were written.
    pub fn advance(&mut self, n: usize) {
        self.out_pos = (self.out_pos + n).min(self.out.len());
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
    }

    /// Gives back what the buffers grew to while busy, if they are empty
    /// (an idle link keeps little).
    fn trim(&mut self) {
        if self.out_pos == self.out.len() && self.out.capacity() > READ_CHUNK {
            self.out = Vec::new();
            self.out_pos = 0;
        }
        if self.start == self.valid && self.inbuf.len() > READ_CHUNK {
            self.inbuf = vec![0; READ_CHUNK];
            self.start = 0;
            self.valid = 0;
        }
    }

    /// Bytes queued and not yet written (the owner stops sending packets
    /// above its limit).
    pub fn queued(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Room to read socket bytes into (then call [`Link::filled`]).
    pub fn read_buf(&mut self) -> &mut [u8] {
        if self.start == self.valid {
            self.start = 0;
            self.valid = 0;
        }
        // A whole frame must fit after `start`: move a partial one to the
        // front when it would not, and grow only as far as one frame needs.
        let need = match packet::peek_frame(&self.inbuf[self.start..self.valid]) {
            Some(len) => LEN_PREFIX + len,
            None => LEN_PREFIX,
        };
        if self.start > 0 && self.inbuf.len() - self.start < need.max(READ_CHUNK) {
            self.inbuf.copy_within(self.start..self.valid, 0);
            self.valid -= self.start;
            self.start = 0;
        }
        let want = if self.start + need > READ_CHUNK {
            (self.start + need).max(BUSY_CHUNK)
        } else {
            READ_CHUNK
        }
        .min(self.start + MAX_FRAME);
        if self.inbuf.len() < want {
            self.inbuf.resize(want, 0);
        }
        if self.valid == self.inbuf.len() {
            // A whole frame is already here but was not processed (closed link).
            self.inbuf.resize(self.valid + 1, 0);
        }
        &mut self.inbuf[self.valid..]
    }

    /// `n` bytes were read into [`Link::read_buf`]; every whole frame is
    /// processed, packets for the owner go to `deliver`.
    pub fn filled(&mut self, n: usize, now: Instant, deliver: &mut dyn FnMut(Packet<'_>)) {
        self.valid = (self.valid + n).min(self.inbuf.len());
        self.stats.bytes_in += n as u64;
        self.clock = self.clock.max(now);
        self.process(now, deliver);
    }

    /// Feeds bytes as read from the socket (copying; tests and simple owners).
    pub fn input(&mut self, now: Instant, mut data: &[u8], deliver: &mut dyn FnMut(Packet<'_>)) {
        while !data.is_empty() && self.state() != LinkState::Closed {
            let buf = self.read_buf();
            let n = buf.len().min(data.len());
            buf[..n].copy_from_slice(&data[..n]);
            data = &data[n..];
            self.filled(n, now, deliver);
        }
    }

    /// Sends one of the owner's packets (node lists, pairing, data,
    /// tunnels), sealed.
    pub fn send(&mut self, p: &Packet<'_>) -> Result<(), LinkError> {
        match p.id() {
            PacketId::NlistReq
            | PacketId::NlistRes
            | PacketId::PairReq
            | PacketId::PairRes
            | PacketId::Data
            | PacketId::TunnelReq
            | PacketId::TunnelData
            | PacketId::TunnelClose => {}
            id => return Err(LinkError::Reserved(id.name())),
        }
        if !self.can_send() {
            return Err(LinkError::NotUp);
        }
        if self.rekey_due || self.sealed_since_rekey >= REKEY_AFTER_RECORDS {
            self.rekey();
            if !self.can_send() {
                return Err(LinkError::NotUp);
            }
        }
        self.seal_packet(p)?;
        Ok(())
    }

    /// The tag later beats carry (the owner's summary of its state, e.g.
    /// its node-list digest); the peer's arrive as [`LinkEvent::Beat`].
    pub fn set_beat_tag(&mut self, tag: u64) {
        self.beat_tag = tag;
    }

    /// Ends the link: a DISCONNECT with `reason` goes out (flush
    /// [`Link::output`], then close the socket) and the link is closed.
    pub fn close(&mut self, reason: Reason, text: &str) {
        if self.ended {
            return;
        }
        self.ended = true;
        let p = Packet::Disconnect { reason, text };
        if self.sealer.is_some() {
            // A sealing failure here (nonces exhausted) leaves only the close.
            let _ = self.seal_packet(&p);
        } else {
            self.queue_plain(&p);
        }
        self.phase = Phase::Closed;
        self.events.push_back(LinkEvent::Closed {
            reason,
            text: text.to_owned(),
            by_peer: false,
        });
    }

    /// When [`Link::handle_timeout`] wants to run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Closed => None,
            Phase::Up => {
                let mut t = self.silence_deadline();
                if !self.rekey_due {
                    t = t.min(self.rekey_at);
                }
                if let Some(o) = self.owe_since {
                    t = t.min(o + self.cfg.keepalive);
                }
                match &self.probe {
                    Some(p) => t = t.min(p.deadline),
                    None => {
                        if let Some(u) = self.unanswered {
                            t = t.min(u + self.cfg.probe_after);
                        }
                    }
                }
                Some(t)
            }
            _ => Some(self.began + self.cfg.handshake_timeout),
        }
    }

    /// Runs the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.clock = self.clock.max(now);
        self.trim();
        match self.phase {
            Phase::Closed => {}
            Phase::Up => self.up_timers(now),
            _ => {
                if now >= self.began + self.cfg.handshake_timeout {
                    self.close(Reason::Timeout, "handshake timeout");
                }
            }
        }
    }

    /// Two intervals (a live peer's beats come one interval after ours)
    /// plus a grace for the round trip: silence until then is a timeout.
    fn silence_deadline(&self) -> Instant {
        let grace = (self.rtt.unwrap_or_default() * 3)
            .min(self.cfg.keepalive / 2)
            .max(Duration::from_secs(1));
        self.last_rx + 2 * self.cfg.keepalive + grace
    }

    fn up_timers(&mut self, now: Instant) {
        if let Some(p) = &self.probe
            && now >= p.deadline
        {
            self.close(Reason::Timeout, "timeout");
            return;
        }
        if now >= self.silence_deadline() {
            self.close(Reason::Timeout, "timeout");
            return;
        }
        if now >= self.rekey_at || self.sealed_since_rekey >= REKEY_AFTER_RECORDS {
            self.rekey_due = true;
        }
        if self.probe.is_none()
            && let Some(u) = self.unanswered
            && now >= u + self.cfg.probe_after
        {
            if self.rekey_due {
                self.rekey();
            }
            self.send_probe(now, self.cfg.probe_timeout);
        }
        if let Some(o) = self.owe_since
            && now >= o + self.cfg.keepalive
        {
            if self.rekey_due {
                // The rekey record is this interval's beat.
                self.rekey();
            } else {
                let tag = self.beat_tag;
                if self
                    .seal_packet(&Packet::KeepAlive {
                        kind: KeepAliveKind::Beat,
                        nonce: tag,
                    })
                    .is_err()
                {
                    self.close(Reason::Other, "cannot seal");
                    return;
                }
            }
            self.stats.beats += 1;
        }
    }

    fn send_probe(&mut self, now: Instant, wait: Duration) {
        let mut n = [0u8; 8];
        self.rng.fill(&mut n);
        let nonce = u64::from_be_bytes(n);
        if self
            .seal_packet(&Packet::KeepAlive {
                kind: KeepAliveKind::Probe,
                nonce,
            })
            .is_err()
        {
            self.close(Reason::Other, "cannot seal");
            return;
        }
        self.stats.probes += 1;
        self.probe = Some(Probe {
            nonce,
            sent: now,
            deadline: now + wait,
        });
    }

    fn rekey(&mut self) {
        let sent = self.seal_packet(&Packet::KeepAlive {
            kind: KeepAliveKind::Rekey,
            nonce: 0,
        });
        let moved = sent.is_ok() && self.sealer.as_mut().is_some_and(|s| s.rekey().is_ok());
        if !moved {
            self.close(Reason::Other, "rekey failed");
            return;
        }
        self.stats.rekeys += 1;
        self.sealed_since_rekey = 0;
        self.rekey_due = false;
        self.rekey_at = self.clock + self.cfg.rekey_after;
    }

    fn queue_plain(&mut self, p: &Packet<'_>) {
        let start = self.out.len();
        self.out.extend_from_slice(&[0; LEN_PREFIX]);
        if p.encode(&mut self.out).is_err() {
            self.out.truncate(start);
            return;
        }
        let len = (self.out.len() - start - LEN_PREFIX) as u16;
        self.out[start..start + LEN_PREFIX].copy_from_slice(&len.to_be_bytes());
        self.stats.packets_out += 1;
        self.stats.bytes_out += (self.out.len() - start) as u64;
    }

    fn seal_packet(&mut self, p: &Packet<'_>) -> Result<(), LinkError> {
        let sealer = self.sealer.as_mut().ok_or(LinkError::NotUp)?;
        let start = self.out.len();
        self.out.extend_from_slice(&[0; LEN_PREFIX]);
        if let Err(e) = p.encode(&mut self.out) {
            self.out.truncate(start);
            return Err(e.into());
        }
        self.out.extend_from_slice(&[0; TAG_LEN]);
        if let Err(e) = sealer.seal_in_place(&mut self.out[start..]) {
            self.out.truncate(start);
            return Err(e.into());
        }
        self.sealed_since_rekey += 1;
        // Anything sent answers what came in.
        self.owe_since = None;
        self.stats.packets_out += 1;
        self.stats.bytes_out += (self.out.len() - start) as u64;
        Ok(())
    }

    /// Consumes every whole frame in `inbuf[start..valid]`.
    fn process(&mut self, now: Instant, deliver: &mut dyn FnMut(Packet<'_>)) {
        while self.state() != LinkState::Closed {
            if matches!(self.phase, Phase::Preamble) {
                if self.valid - self.start < PREAMBLE_LEN {
                    return;
                }
                let mut pre = [0u8; PREAMBLE_LEN];
                pre.copy_from_slice(&self.inbuf[self.start..self.start + PREAMBLE_LEN]);
                self.start += PREAMBLE_LEN;
                if let Err(e) = packet::check_preamble(&pre) {
                    // Not a mesh peer: nothing to tell it in our own protocol.
                    self.phase = Phase::Closed;
                    self.ended = true;
                    self.events.push_back(LinkEvent::Closed {
                        reason: Reason::Protocol,
                        text: e.to_string(),
                        by_peer: false,
                    });
                    return;
                }
                self.phase = Phase::AwaitHello;
                continue;
            }
            let Some(len) = packet::peek_frame(&self.inbuf[self.start..self.valid]) else {
                return;
            };
            if self.valid - self.start < LEN_PREFIX + len {
                return;
            }
            let frame = self.start + LEN_PREFIX..self.start + LEN_PREFIX + len;
            self.start = frame.end;
            self.stats.packets_in += 1;
            let result = if self.opener.is_some() && !self.plain_phase() {
                self.sealed_frame(now, frame, deliver)
            } else {
                self.plain_frame(now, frame)
            };
            if let Err((reason, text)) = result {
                self.close(reason, &text);
            }
        }
    }

    fn plain_phase(&self) -> bool {
        matches!(
            self.phase,
            Phase::Preamble | Phase::AwaitHello | Phase::AwaitHelloAck { .. } | Phase::AwaitFin { .. }
        )
    }

    fn sealed_frame(
        &mut self,
        now: Instant,
        frame: std::ops::Range<usize>,
        deliver: &mut dyn FnMut(Packet<'_>),
    ) -> Result<(), (Reason, String)> {
        let opener = self
            .opener
            .as_mut()
            .ok_or((Reason::Protocol, "no keys".to_owned()))?;
        let plain = opener
            .open_in_place(&mut self.inbuf[frame])
            .map_err(|e| (Reason::Authentication, e.to_string()))?;
        let p = Packet::decode(plain).map_err(|e| (Reason::Protocol, e.to_string()))?;
        // Any authenticated packet shows the peer is alive, and wants a
        // packet back within an interval.
        self.last_rx = now;
        self.unanswered = None;
        self.owe_since.get_or_insert(now);
        if let Some(probe) = self.probe.take()
            && let Packet::KeepAlive {
                kind: KeepAliveKind::Answer,
                nonce,
            } = p
            && nonce == probe.nonce
        {
            let rtt = now - probe.sent;
            self.rtt = Some(rtt);
            self.events.push_back(LinkEvent::Rtt(rtt));
        }
        match (&self.phase, p) {
            (Phase::AwaitFinAck { random }, Packet::FinAck { random: echoed }) => {
                if echoed != random.as_slice() {
                    return Err((Reason::Authentication, "FIN_ACK does not confirm FIN".to_owned()));
                }
                self.phase = Phase::Up;
                self.announce_up();
                Ok(())
            }
            (Phase::AwaitFinAck { .. }, p) => {
                Err((Reason::Protocol, format!("{} before FIN_ACK", p.id().name())))
            }
            (_, Packet::Disconnect { reason, text }) => {
                let text = text.to_owned();
                self.phase = Phase::Closed;
                self.ended = true;
                self.events.push_back(LinkEvent::Closed {
                    reason,
                    text,
                    by_peer: true,
                });
                Ok(())
            }
            (_, Packet::KeepAlive { kind, nonce }) => {
                match kind {
                    KeepAliveKind::Probe => {
                        self.seal_packet(&Packet::KeepAlive {
                            kind: KeepAliveKind::Answer,
                            nonce,
                        })
                        .map_err(|e| (Reason::Other, e.to_string()))?;
                    }
                    KeepAliveKind::Answer => {}
                    KeepAliveKind::Beat => self.events.push_back(LinkEvent::Beat { tag: nonce }),
                    KeepAliveKind::Rekey => {
                        let o = self
                            .opener
                            .as_mut()
                            .ok_or((Reason::Protocol, "no keys".to_owned()))?;
                        o.rekey().map_err(|e| (Reason::Other, e.to_string()))?;
                    }
                }
                Ok(())
            }
            (
                _,
                p @ (Packet::NlistReq(_)
                | Packet::NlistRes { .. }
                | Packet::PairReq { .. }
                | Packet::PairRes { .. }
                | Packet::Data { .. }
                | Packet::TunnelReq(_)
                | Packet::TunnelData(_)
                | Packet::TunnelClose(_)),
            ) => {
                deliver(p);
                Ok(())
            }
            (_, p) => Err((Reason::Protocol, format!("unexpected {}", p.id().name()))),
        }
    }

    fn plain_frame(&mut self, now: Instant, frame: std::ops::Range<usize>) -> Result<(), (Reason, String)> {
        let bytes = self.inbuf[frame].to_vec();
        let p = Packet::decode(&bytes).map_err(|e| (Reason::Protocol, e.to_string()))?;
        if let Packet::Disconnect { reason, text } = p {
            self.phase = Phase::Closed;
            self.ended = true;
            self.events.push_back(LinkEvent::Closed {
                reason,
                text: text.to_owned(),
                by_peer: true,
            });
            return Ok(());
        }
        let phase = std::mem::replace(&mut self.phase, Phase::Closed);
        let hs_err = |e: SessionError| (Reason::Authentication, e.to_string());
        match (phase, p) {
            (Phase::AwaitHello, Packet::Hello { key }) => {
                let ik = match key.len() {
                    32 => false,
                    n if n >= 96 => true,
                    _ => return Err((Reason::Protocol, "HELLO of no known handshake".to_owned())),
                };
                let mut hs = if ik {
                    Handshake::ik(
                        Side::Responder,
                        &self.secret,
                        None,
                        CONTEXT,
                        self.cfg.backend,
                        &mut self.rng,
                    )
                } else {
                    Handshake::xx(
                        Side::Responder,
                        &self.secret,
                        CONTEXT,
                        self.cfg.backend,
                        &mut self.rng,
                    )
                }
                .map_err(hs_err)?;
                let payload = hs.read_message_payload(key).map_err(hs_err)?;
                let record = if ik {
                    let remote = hs
                        .remote_static()
                        .ok_or((Reason::Authentication, "no key".to_owned()))?;
                    check_binding(&payload, &remote)?;
                    Some(payload)
                } else {
                    if !payload.is_empty() {
                        return Err((Reason::Protocol, "XX HELLO with a payload".to_owned()));
                    }
                    None
                };
                let msg = hs.write_message_with(&self.my_record).map_err(hs_err)?;
                self.queue_plain(&Packet::HelloAck {
                    key: &msg[LEN_PREFIX..],
                });
                self.phase = Phase::AwaitFin {
                    hs: Box::new(hs),
                    record,
                };
                // HELLO_ACK went out now: FIN's arrival times the round trip.
                self.last_rx = now;
                Ok(())
            }
            (Phase::AwaitHelloAck { mut hs, ik }, Packet::HelloAck { key }) => {
                let record = hs.read_message_payload(key).map_err(hs_err)?;
                let remote = hs
                    .remote_static()
                    .ok_or((Reason::Authentication, "no key".to_owned()))?;
                let keys = check_binding(&record, &remote)?;
                let noise = if ik {
                    Vec::new()
                } else {
                    let m = hs.write_message_with(&self.my_record).map_err(hs_err)?;
                    m[LEN_PREFIX..].to_vec()
                };
                let hash = hs.hash();
                let (sealer, opener) = hs.into_transport().map_err(hs_err)?.split();
                self.sealer = Some(sealer);
                self.opener = Some(opener);
                let mut random = vec![0u8; 16];
                self.rng.fill(&mut random);
                let mut body = Vec::new();
                encode_random(&random, &mut body).map_err(|e| (Reason::Other, e.to_string()))?;
                let mut sealed = Vec::new();
                self.sealer
                    .as_mut()
                    .ok_or((Reason::Other, "no keys".to_owned()))?
                    .seal(&body, &mut sealed)
                    .map_err(hs_err)?;
                self.queue_plain(&Packet::Fin {
                    noise: &noise,
                    sealed: &sealed,
                });
                self.peer = Some((keys, record, hash));
                self.phase = Phase::AwaitFinAck { random };
                self.rtt = Some(now.saturating_duration_since(self.began));
                self.last_rx = now;
                Ok(())
            }
            (Phase::AwaitFin { mut hs, record }, Packet::Fin { noise, sealed }) => {
                let record = match record {
                    Some(r) => {
                        if !noise.is_empty() {
                            return Err((Reason::Protocol, "IK FIN with a Noise message".to_owned()));
                        }
                        r
                    }
                    None => hs.read_message_payload(noise).map_err(hs_err)?,
                };
                let remote = hs
                    .remote_static()
                    .ok_or((Reason::Authentication, "no key".to_owned()))?;
                let keys = check_binding(&record, &remote)?;
                let hash = hs.hash();
                let (sealer, mut opener) = hs.into_transport().map_err(hs_err)?.split();
                let mut ct = sealed[LEN_PREFIX..].to_vec();
                let plain = opener.open_in_place(&mut ct).map_err(hs_err)?;
                let random = decode_random(plain)
                    .map_err(|e| (Reason::Protocol, e.to_string()))?
                    .to_vec();
                self.sealer = Some(sealer);
                self.opener = Some(opener);
                self.seal_packet(&Packet::FinAck { random: &random })
                    .map_err(|e| (Reason::Other, e.to_string()))?;
                self.peer = Some((keys, record, hash));
                self.phase = Phase::Up;
                self.rtt = Some(now.saturating_duration_since(self.last_rx));
                self.last_rx = now;
                self.announce_up();
                Ok(())
            }
            (_, p) => Err((
                Reason::Protocol,
                format!("unexpected {} during the handshake", p.id().name()),
            )),
        }
    }

    fn announce_up(&mut self) {
        if let Some(rtt) = self.rtt {
            self.events.push_back(LinkEvent::Rtt(rtt));
        }
        if let Some((peer, record, hash)) = &self.peer {
            self.events.push_back(LinkEvent::Up {
                peer: *peer,
                record: record.clone(),
                handshake_hash: *hash,
            });
        }
    }

    /// Hands the session over to another driver (a tunnel that runs the
    /// link's records itself): the two directions' keys and the bytes
    /// already read but not consumed. Only an up link with nothing left to
    /// write can be handed over; otherwise the link comes back.
    #[allow(clippy::result_large_err)]
    pub fn into_session(mut self) -> Result<(Sealer, Opener, Vec<u8>), Self> {
        if self.state() != LinkState::Up || !self.output().is_empty() {
            return Err(self);
        }
        match (self.sealer.take(), self.opener.take()) {
            (Some(s), Some(o)) => Ok((s, o, self.inbuf[self.start..self.valid].to_vec())),
            (s, o) => {
                self.sealer = s;
                self.opener = o;
                Err(self)
            }
        }
    }

    /// Seals any plaintext as a record (fuzzing: a peer that sends what it likes).
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn seal_raw(&mut self, plain: &[u8]) -> Result<(), SessionError> {
        let sealer = self.sealer.as_mut().ok_or(SessionError::Exhausted)?;
        sealer.seal(plain, &mut self.out)
    }

    /// Marks traffic sent by the owner at `now` that the peer should
    /// answer (tunnel data, pings): unanswered for
    /// [`LinkConfig::probe_after`], it makes a probe.
    pub fn expect_answer(&mut self, now: Instant) {
        if self.unanswered.is_none() {
            self.unanswered = Some(now);
        }
    }
}

/// The record must be well formed and signed by the key in it, and that
/// record's X25519 key must be the one the handshake authenticated.
fn check_binding(record: &[u8], remote: &[u8; 32]) -> Result<PublicIdentity, (Reason, String)> {
    let rec = NodeRecord::decode(record).map_err(|e: DecodeError| (Reason::Protocol, e.to_string()))?;
    rec.check_signature(record)
        .map_err(|e| (Reason::Authentication, e.to_string()))?;
    if &rec.keys.x25519 != remote {
        return Err((
            Reason::Authentication,
            "the record names another key than the handshake's".to_owned(),
        ));
    }
    Ok(rec.keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::{Endpoint, Link as Wire, TwoEnds};
    use crate::keys::Identity;
    use crate::mesh::packet::DataKind;
    use crate::mesh::record::{Claims, NodeRecord};
    use crate::random::seeded;

    fn record(id: &Identity) -> Vec<u8> {
        NodeRecord::sign(
            id,
            &Claims {
                issued: 1000,
                ttl: 3600,
                name: "n".into(),
                ..Claims::default()
            },
        )
        .unwrap()
    }

    fn cfg() -> LinkConfig {
        LinkConfig::new(Backend::Ring)
    }

    /// One side as the harness drives it: optionally sends a DATA ping
    /// every `every` once it can, and answers nothing itself.
    struct Node {
        link: Link,
        events: Vec<LinkEvent>,
        got: Vec<(PacketId, Vec<u8>)>,
        every: Option<Duration>,
        next_send: Option<Instant>,
        sent: usize,
        /// Stop the run once up (handshake tests).
        until_up: bool,
        /// When bytes last came in, and when the link closed.
        last_input: Option<Instant>,
        closed_at: Option<Instant>,
        /// A beat tag to set once up.
        set_tag: Option<u64>,
    }

    impl Node {
        fn new(link: Link) -> Self {
            Self {
                link,
                events: Vec::new(),
                got: Vec::new(),
                every: None,
                next_send: None,
                sent: 0,
                until_up: true,
                last_input: None,
                closed_at: None,
                set_tag: None,
            }
        }

        fn drain(&mut self, now: Instant) {
            if let Some(tag) = self.set_tag.take() {
                self.link.set_beat_tag(tag);
            }
            while let Some(e) = self.link.poll_event() {
                if matches!(e, LinkEvent::Closed { .. }) {
                    self.closed_at = Some(now);
                }
                self.events.push(e);
            }
            if let Some(every) = self.every
                && self.link.can_send()
            {
                let due = *self.next_send.get_or_insert(now);
                if now >= due {
                    self.link
                        .send(&Packet::Data {
                            kind: DataKind::Ping,
                            payload: &(self.sent as u32).to_be_bytes(),
                        })
                        .unwrap();
                    self.link.expect_answer(now);
                    self.sent += 1;
                    self.next_send = Some(now + every);
                }
            }
        }

        fn closed(&self) -> Option<(Reason, String, bool)> {
            self.events.iter().find_map(|e| match e {
                LinkEvent::Closed {
                    reason,
                    text,
                    by_peer,
                } => Some((*reason, text.clone(), *by_peer)),
                _ => None,
            })
        }

        fn up(&self) -> Option<(PublicIdentity, [u8; 32])> {
            self.events.iter().find_map(|e| match e {
                LinkEvent::Up {
                    peer, handshake_hash, ..
                } => Some((*peer, *handshake_hash)),
                _ => None,
            })
        }
    }

    impl Endpoint for Node {
        fn input(&mut self, now: Instant, msg: &[u8]) -> Result<(), String> {
            self.last_input = Some(now);
            let got = &mut self.got;
            self.link.input(now, msg, &mut |p| {
                let mut b = Vec::new();
                p.encode(&mut b).unwrap();
                got.push((p.id(), b));
            });
            self.drain(now);
            Ok(())
        }

        fn transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
            self.drain(now);
            let out = self.link.output().to_vec();
            self.link.advance(out.len());
            (!out.is_empty()).then_some(out)
        }

        fn timeout(&self) -> Option<Instant> {
            let t = self.link.poll_timeout();
            match (t, self.every.and(self.next_send)) {
                (Some(a), Some(b)) if self.link.state() != LinkState::Closed => Some(a.min(b)),
                (a, _) => a,
            }
        }

        fn on_timeout(&mut self, now: Instant) -> Result<(), String> {
            self.link.handle_timeout(now);
            self.drain(now);
            Ok(())
        }

        fn done(&self) -> bool {
            self.link.state() == LinkState::Closed || (self.until_up && self.link.state() == LinkState::Up)
        }
    }

    struct Pair {
        a: Identity,
        b: Identity,
        t0: Instant,
    }

    fn ids() -> Pair {
        Pair {
            a: Identity::generate(&mut seeded(1)),
            b: Identity::generate(&mut seeded(2)),
            t0: Instant::now(),
        }
    }

    impl Pair {
        /// Outbound A (knowing B's key or not) and inbound B.
        fn ends(&self, ik: bool, cfg: LinkConfig, wire: Wire) -> TwoEnds<Node, Node> {
            let bk = self.b.public().x25519;
            let a = Link::outbound(
                cfg,
                self.a.x25519_secret(),
                record(&self.a),
                ik.then_some(&bk),
                self.t0,
                &mut seeded(3),
            )
            .unwrap();
            let b = Link::inbound(
                cfg,
                self.b.x25519_secret(),
                record(&self.b),
                self.t0,
                &mut seeded(4),
            );
            TwoEnds::new(Node::new(a), Node::new(b), wire, self.t0)
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn xx_and_ik_bring_both_sides_up_with_each_others_keys() {
        let p = ids();
        for ik in [false, true] {
            let mut t = p.ends(
                ik,
                cfg(),
                Wire {
                    latency: ms(10),
                    ..Wire::default()
                },
            );
            let out = t.run(Duration::from_secs(10));
            let (a, b) = (t.a(), t.b());
            let (a_saw, ha) = a.up().expect("A up");
            let (b_saw, hb) = b.up().expect("B up");
            assert_eq!(a_saw, p.b.public());
            assert_eq!(b_saw, p.a.public());
            assert_eq!(ha, hb, "one handshake hash: the channel binding for pairing");
            // HELLO, HELLO_ACK, FIN, FIN_ACK: two round trips in all.
            assert_eq!(out.messages, 4, "ik={ik}");
            assert_eq!(out.elapsed, ms(40));
            assert!(a.closed().is_none() && b.closed().is_none());
        }
    }

    #[test]
    fn packets_ride_with_fin_one_and_a_half_round_trips_after_the_dial() {
        let p = ids();
        let mut a = Node::new(
            Link::outbound(
                cfg(),
                p.a.x25519_secret(),
                record(&p.a),
                None,
                p.t0,
                &mut seeded(3),
            )
            .unwrap(),
        );
        // A sends as soon as it may: right after HELLO_ACK, with FIN.
        a.every = Some(Duration::from_secs(3600));
        a.until_up = false;
        let mut b = Node::new(Link::inbound(
            cfg(),
            p.b.x25519_secret(),
            record(&p.b),
            p.t0,
            &mut seeded(4),
        ));
        b.until_up = false;
        let mut t = TwoEnds::new(
            a,
            b,
            Wire {
                latency: ms(10),
                ..Wire::default()
            },
            p.t0,
        );
        t.run(ms(30));
        assert_eq!(t.b().got.len(), 1, "the ping arrived with FIN, at 30 ms");
        assert_eq!(t.b().got[0].0, PacketId::Data);
        assert!(t.b().up().is_some());
    }

    #[test]
    fn a_responder_with_another_key_fails_ik_at_once() {
        let p = ids();
        let c = Identity::generate(&mut seeded(9));
        let ck = c.public().x25519;
        let a = Link::outbound(
            cfg(),
            p.a.x25519_secret(),
            record(&p.a),
            Some(&ck),
            p.t0,
            &mut seeded(3),
        )
        .unwrap();
        let b = Link::inbound(cfg(), p.b.x25519_secret(), record(&p.b), p.t0, &mut seeded(4));
        let mut t = TwoEnds::new(Node::new(a), Node::new(b), Wire::default(), p.t0);
        t.run(Duration::from_secs(10));
        assert_eq!(t.b().closed().unwrap().0, Reason::Authentication);
        let (reason, _, by_peer) = t.a().closed().unwrap();
        assert_eq!((reason, by_peer), (Reason::Authentication, true), "A hears why");
        assert!(t.a().up().is_none() && t.b().up().is_none());
    }

    #[test]
    fn a_record_signed_for_another_key_is_refused() {
        let p = ids();
        let c = Identity::generate(&mut seeded(9));
        // A presents C's (validly signed) record with A's Noise key.
        let a = Link::outbound(cfg(), p.a.x25519_secret(), record(&c), None, p.t0, &mut seeded(3)).unwrap();
        let b = Link::inbound(cfg(), p.b.x25519_secret(), record(&p.b), p.t0, &mut seeded(4));
        let mut t = TwoEnds::new(Node::new(a), Node::new(b), Wire::default(), p.t0);
        t.run(Duration::from_secs(10));
        let (reason, text, _) = t.b().closed().unwrap();
        assert_eq!(reason, Reason::Authentication, "{text}");
        assert!(t.b().up().is_none());
    }

    /// Seed step 9: a handshake packet that does not decode or
    /// authenticate drops the peer; nothing reaches the owner.
    #[test]
    fn any_corrupted_handshake_message_drops_the_link() {
        let p = ids();
        for ik in [false, true] {
            for n in 0..4 {
                let mut t = p.ends(
                    ik,
                    cfg(),
                    Wire {
                        corrupt: Some(n),
                        ..Wire::default()
                    },
                );
                t.run(Duration::from_secs(10));
                let ups = usize::from(t.a().up().is_some()) + usize::from(t.b().up().is_some());
                assert!(ups < 2, "ik={ik} message {n}: both up");
                assert!(
                    t.a().closed().is_some() || t.b().closed().is_some(),
                    "ik={ik} {n}"
                );
                assert!(t.a().got.is_empty() && t.b().got.is_empty());
            }
        }
    }

    #[test]
    fn an_idle_link_carries_one_beat_an_interval_in_turns() {
        let p = ids();
        let mut t = p.ends(
            false,
            cfg(),
            Wire {
                latency: ms(5),
                ..Wire::default()
            },
        );
        t.a_mut().set_tag = Some(7);
        t.b_mut().set_tag = Some(9);
        t.b_mut().until_up = false;
        let out = t.run(Duration::from_secs(600));
        let (a, b) = (t.a(), t.b());
        assert!(
            a.closed().is_none() && b.closed().is_none(),
            "{:?} {:?}",
            a.closed(),
            b.closed()
        );
        // Ten minutes: a beat every interval (plus one-way latency), in
        // turns; rekeys take the place of beats. Over TCP each is one
        // segment and its ACK: 12 packets a minute.
        let keepalive_records = out.messages - 4;
        let per_minute = keepalive_records as f64 / 10.0;
        assert!((5.8..=6.0).contains(&per_minute), "{per_minute} records a minute");
        let (sa, sb) = (a.link.stats(), b.link.stats());
        assert_eq!(sa.probes + sb.probes, 0, "idle: no probes");
        assert!(sa.beats.abs_diff(sb.beats) <= 1, "in turns: {sa:?} {sb:?}");
        assert!(sa.rekeys >= 4 && sb.rekeys >= 4, "{sa:?} {sb:?}");
        // Each side saw the other's tag; the RTT came from the handshake.
        let tags = |n: &Node| {
            n.events
                .iter()
                .filter_map(|e| match e {
                    LinkEvent::Beat { tag } => Some(*tag),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        assert!(tags(a).len() >= 20 && tags(a).iter().all(|t| *t == 9));
        assert!(tags(b).len() >= 20 && tags(b).iter().all(|t| *t == 7));
        assert_eq!(a.link.rtt(), Some(ms(10)));
        assert_eq!(b.link.rtt(), Some(ms(10)));
    }

    #[test]
    fn a_silent_peer_is_timed_out_after_two_intervals_and_a_grace() {
        let p = ids();
        for drop_from in [4, 5, 9] {
            let mut t = p.ends(
                false,
                cfg(),
                Wire {
                    latency: ms(5),
                    drop_from: Some(drop_from),
                    ..Wire::default()
                },
            );
            t.a_mut().until_up = false;
            t.b_mut().until_up = false;
            t.run(Duration::from_secs(200));
            for (side, n) in [("outbound", t.a()), ("inbound", t.b())] {
                let (reason, _, by_peer) = n.closed().unwrap_or_else(|| panic!("{side} still up"));
                assert_eq!((reason, by_peer), (Reason::Timeout, false), "{side}");
                // Silence since the last packet heard: two intervals and
                // the 1 s grace (three RTTs are less).
                let silent = n.closed_at.unwrap() - n.last_input.unwrap();
                assert_eq!(silent, Duration::from_secs(21), "{side} after {drop_from}");
            }
        }
    }

    #[test]
    fn a_dead_peer_under_traffic_is_found_in_three_seconds() {
        let p = ids();
        for (who, ik) in [("outbound", false), ("outbound", true), ("inbound", false)] {
            let mut t = p.ends(
                ik,
                cfg(),
                Wire {
                    latency: ms(5),
                    drop_from: Some(20),
                    ..Wire::default()
                },
            );
            // The side under test sends every 100 ms; the other only answers the link.
            let sender_is_a = who == "outbound";
            if sender_is_a {
                t.a_mut().every = Some(ms(100));
            } else {
                t.b_mut().every = Some(ms(100));
            }
            t.a_mut().until_up = false;
            t.b_mut().until_up = false;
            t.run(Duration::from_secs(60));
            let n = if sender_is_a { t.a() } else { t.b() };
            let (reason, _, _) = n.closed().expect("detected");
            assert_eq!(reason, Reason::Timeout);
            let silent_for = n.closed_at.unwrap() - n.last_input.unwrap();
            assert!(silent_for <= Duration::from_secs(3), "{who}: {silent_for:?}");
            assert!(n.link.stats().probes >= 1);
        }
    }

    #[test]
    fn rekeyed_links_keep_carrying_packets() {
        let p = ids();
        let cfg = LinkConfig {
            rekey_after: ms(500),
            ..cfg()
        };
        let mut t = p.ends(
            true,
            cfg,
            Wire {
                latency: ms(5),
                ..Wire::default()
            },
        );
        t.a_mut().every = Some(ms(50));
        t.a_mut().until_up = false;
        t.b_mut().until_up = false;
        t.run(Duration::from_secs(10));
        assert!(t.a().closed().is_none() && t.b().closed().is_none());
        assert!(t.a().link.stats().rekeys >= 19, "{:?}", t.a().link.stats());
        assert!(t.b().got.len() >= 190, "{} pings", t.b().got.len());
        let seqs: Vec<u32> = t
            .b()
            .got
            .iter()
            .map(|(_, b)| u32::from_be_bytes(b[2..6].try_into().unwrap()))
            .collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "in order, none lost");
    }

    #[test]
    fn disconnect_carries_its_reason_and_ends_both_sides() {
        let p = ids();
        let mut t = p.ends(false, cfg(), Wire::default());
        t.run(Duration::from_secs(1));
        t.a_mut().link.close(Reason::Shutdown, "going \u{1b}]0;away\u{7}");
        t.a_mut().until_up = false;
        t.b_mut().until_up = false;
        t.run(Duration::from_secs(2));
        let (reason, text, by_peer) = t.b().closed().unwrap();
        assert_eq!((reason, by_peer), (Reason::Shutdown, true));
        assert_eq!(
            text, "going \u{1b}]0;away\u{7}",
            "delivered as sent; callers escape it"
        );
        assert!(!t.a().closed().unwrap().2, "A closed it itself");
        assert!(
            t.a_mut()
                .link
                .send(&Packet::Data {
                    kind: DataKind::Ping,
                    payload: b""
                })
                .is_err()
        );
    }

    #[test]
    fn handshakes_are_bounded_in_time_and_bad_starts_are_dropped() {
        let id = Identity::generate(&mut seeded(5));
        let t0 = Instant::now();
        let mut quiet = Link::inbound(cfg(), id.x25519_secret(), record(&id), t0, &mut seeded(6));
        assert_eq!(quiet.poll_timeout(), Some(t0 + Duration::from_secs(5)));
        quiet.handle_timeout(t0 + Duration::from_secs(5));
        assert_eq!(quiet.state(), LinkState::Closed);
        for bad in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"BRWM\x02\x00\x00",
            b"BRWM\x01\x00\x05\x05\x00\x00\x00\x00",
        ] {
            let mut l = Link::inbound(cfg(), id.x25519_secret(), record(&id), t0, &mut seeded(6));
            l.input(t0, bad, &mut |_| panic!("delivered"));
            assert_eq!(l.state(), LinkState::Closed, "{bad:?}");
        }
        // The owner's packets only: the link's own are refused.
        let mut l = Link::inbound(cfg(), id.x25519_secret(), record(&id), t0, &mut seeded(6));
        assert!(matches!(
            l.send(&Packet::KeepAlive {
                kind: KeepAliveKind::Probe,
                nonce: 1
            }),
            Err(LinkError::Reserved(_))
        ));
        assert!(matches!(
            l.send(&Packet::Data {
                kind: DataKind::Ping,
                payload: b""
            }),
            Err(LinkError::NotUp)
        ));
    }

    #[test]
    fn frames_split_anywhere_and_large_ones_are_read_whole() {
        let p = ids();
        let mut a = Link::outbound(
            cfg(),
            p.a.x25519_secret(),
            record(&p.a),
            None,
            p.t0,
            &mut seeded(3),
        )
        .unwrap();
        let mut b = Link::inbound(cfg(), p.b.x25519_secret(), record(&p.b), p.t0, &mut seeded(4));
        let mut got = Vec::new();
        let big = vec![0x5a; crate::session::MAX_PLAINTEXT - 2];
        let mut pumped = 0;
        for round in 0..6 {
            let out = a.output().to_vec();
            a.advance(out.len());
            // One byte at a time, then in odd chunks.
            for chunk in out.chunks(if round % 2 == 0 { 1 } else { 7919 }) {
                b.input(p.t0, chunk, &mut |p| got.push(p.id()));
            }
            let back = b.output().to_vec();
            b.advance(back.len());
            a.input(p.t0, &back, &mut |_| {});
            if a.state() == LinkState::Up && pumped < 3 {
                a.send(&Packet::Data {
                    kind: DataKind::Cell,
                    payload: &big,
                })
                .unwrap();
                pumped += 1;
            }
        }
        assert_eq!(b.state(), LinkState::Up);
        assert_eq!(got, vec![PacketId::Data; 3]);
        assert!(b.inbuf.len() <= LEN_PREFIX + u16::MAX as usize + READ_CHUNK);
    }
}
