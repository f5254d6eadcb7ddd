//! The path race's decision rule, sans-IO: which connection carries a
//! session when direct connections race the relay (or, on a reconnect, a
//! token staple through it).
//!
//! ```text
//! the driver reports                     the rule decides (decide(now))
//!   direct(): a direct connection          sender and receiver: it wins at once
//!     finished its handshake (receiver:
//!     and delivered `Use`)
//!   dial_failed(): one dial gave up
//!   relay_ready() / relay_failed()         receiver: the relay wins when ready;
//!                                          sender: the relay wins after
//!                                          RELAY_DELAY, or once no direct
//!                                          attempt is left
//!   all_done(): every attempt ended        fail unless the relay is ready
//! ```
//!
//! The sender decides and says `Use` on the winner, so the two sides never
//! disagree about the path.

use std::time::{Duration, Instant};

/// How long the sender holds a ready relay connection back while direct
/// attempts are still under way (magic-wormhole waits 2 s; we wait 1).
pub const RELAY_DELAY: Duration = Duration::from_secs(1);

/// Which side of the session runs this race.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chooser {
    /// The sender: it picks, and says `Use`.
    Sender,
    /// The receiver: it takes what the sender picked.
    Receiver,
}

/// What the race says now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A direct connection won.
    Direct,
    /// The relay won.
    Relay,
    /// Nothing can win: every attempt failed, or the deadline passed.
    Fail,
    /// Nothing yet: wait for the next report, or until this instant.
    Wait(Instant),
}

/// One race.
#[derive(Debug, Clone)]
pub struct Race {
    chooser: Chooser,
    /// Dials of the other side's addresses still under way.
    dials: usize,
    /// Whether the other side may still dial us (we listen and told it where).
    may_be_dialed: bool,
    relay_ready: bool,
    relay_pending: bool,
    direct_won: bool,
    /// When a ready relay may win although direct attempts are left.
    relay_at: Instant,
    deadline: Instant,
}

impl Race {
    /// A race started at `now` with `dials` outgoing attempts, whether the
    /// peer may dial in, and whether direct paths are raced at all (else
    /// the relay wins as soon as it is ready). Nothing wins after `deadline`.
    pub fn new(
        chooser: Chooser,
        dials: usize,
        may_be_dialed: bool,
        racing: bool,
        now: Instant,
        deadline: Instant,
    ) -> Self {
        Self {
            chooser,
            dials: if racing { dials } else { 0 },
            may_be_dialed: racing && may_be_dialed,
            relay_ready: false,
            relay_pending: true,
            direct_won: false,
            relay_at: if racing { now + RELAY_DELAY } else { now },
            deadline,
        }
    }

    /// A direct connection is ready.
    pub fn direct(&mut self) {
        self.direct_won = true;
    }

    /// One outgoing dial failed.
    pub fn dial_failed(&mut self) {
        self.dials = self.dials.saturating_sub(1);
    }

    /// The relay leg is ready.
    pub fn relay_ready(&mut self) {
        self.relay_pending = false;
        self.relay_ready = true;
    }

    /// The relay leg failed.
    pub fn relay_failed(&mut self) {
        self.relay_pending = false;
    }

    /// Every attempt has ended (no more reports will come).
    pub fn all_done(&mut self) {
        self.dials = 0;
        self.may_be_dialed = false;
        self.relay_pending = false;
    }

    fn directs_left(&self) -> bool {
        self.dials > 0 || self.may_be_dialed
    }

    /// The decision at `now`.
    pub fn decide(&self, now: Instant) -> Decision {
        if self.direct_won {
            return Decision::Direct;
        }
        if self.relay_ready
            && (self.chooser == Chooser::Receiver || !self.directs_left() || now >= self.relay_at)
        {
            return Decision::Relay;
        }
        if now >= self.deadline || (!self.relay_pending && !self.relay_ready && !self.directs_left()) {
            return Decision::Fail;
        }
        if self.relay_ready {
            return Decision::Wait(self.relay_at.min(self.deadline));
        }
        Decision::Wait(self.deadline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn a_direct_connection_wins_at_once() {
        let now = t0();
        let mut r = Race::new(Chooser::Sender, 2, true, true, now, now + Duration::from_secs(15));
        r.relay_ready();
        assert_eq!(r.decide(now), Decision::Wait(now + RELAY_DELAY));
        r.direct();
        assert_eq!(r.decide(now), Decision::Direct);
    }

    #[test]
    fn the_sender_holds_the_relay_back_until_the_delay_or_no_direct_is_left() {
        let now = t0();
        let end = now + Duration::from_secs(15);
        let mut r = Race::new(Chooser::Sender, 2, false, true, now, end);
        r.relay_ready();
        assert_eq!(r.decide(now), Decision::Wait(now + RELAY_DELAY));
        assert_eq!(r.decide(now + RELAY_DELAY), Decision::Relay);
        // Both dials fail before the delay: the relay wins at once.
        let mut r = Race::new(Chooser::Sender, 2, false, true, now, end);
        r.relay_ready();
        r.dial_failed();
        assert!(matches!(r.decide(now), Decision::Wait(_)));
        r.dial_failed();
        assert_eq!(r.decide(now), Decision::Relay);
        // The peer may still dial us: that is a direct attempt left.
        let mut r = Race::new(Chooser::Sender, 0, true, true, now, end);
        r.relay_ready();
        assert!(matches!(r.decide(now), Decision::Wait(_)));
    }

    #[test]
    fn the_receiver_takes_the_relay_when_it_is_ready() {
        let now = t0();
        let mut r = Race::new(
            Chooser::Receiver,
            3,
            true,
            true,
            now,
            now + Duration::from_secs(15),
        );
        assert!(matches!(r.decide(now), Decision::Wait(_)));
        r.relay_ready();
        assert_eq!(r.decide(now), Decision::Relay);
    }

    #[test]
    fn nothing_left_or_too_late_fails() {
        let now = t0();
        let end = now + Duration::from_secs(15);
        let mut r = Race::new(Chooser::Sender, 1, false, true, now, end);
        r.dial_failed();
        r.relay_failed();
        assert_eq!(r.decide(now), Decision::Fail);
        let r = Race::new(Chooser::Sender, 1, true, true, now, end);
        assert_eq!(r.decide(end), Decision::Fail);
        let mut r = Race::new(Chooser::Sender, 1, true, true, now, end);
        r.all_done();
        assert_eq!(r.decide(now), Decision::Fail);
        // Not racing: the relay alone, at once.
        let mut r = Race::new(Chooser::Sender, 5, true, false, now, end);
        r.relay_ready();
        assert_eq!(r.decide(now), Decision::Relay);
    }
}
