//! An in-memory pair of endpoints on a virtual clock, for driving two
//! sans-IO machines against each other in tests: messages take `latency`
//! to cross, and the link can drop, reorder or corrupt them. A run ends
//! when both sides are quiet (nothing in flight, no timer due), when both
//! finished or failed, or at a virtual time limit, in milliseconds of real
//! time whatever the virtual time (timers are jumped to, never slept).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// One side of a pair, as the harness drives it.
pub(crate) trait Endpoint {
    /// A message from the other side.
    fn input(&mut self, now: Instant, msg: &[u8]) -> Result<(), String>;
    /// The next message to send, if any.
    fn transmit(&mut self, now: Instant) -> Option<Vec<u8>>;
    /// When [`Endpoint::on_timeout`] wants to run.
    fn timeout(&self) -> Option<Instant>;
    /// Timers due at `now`.
    fn on_timeout(&mut self, now: Instant) -> Result<(), String>;
    /// Whether this side has finished its job.
    fn done(&self) -> bool;
}

/// What the link does to messages (counted over both directions, from 0).
#[derive(Debug, Clone, Default)]
pub(crate) struct Link {
    /// One-way delay.
    pub latency: Duration,
    /// Messages from this one on are lost.
    pub drop_from: Option<usize>,
    /// This message has one byte flipped (its middle one).
    pub corrupt: Option<usize>,
    /// Messages due at the same moment arrive in reverse order.
    pub reorder: bool,
}

/// How a run ended.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Side A's failure, if it failed.
    pub a: Option<String>,
    /// Side B's failure, if it failed.
    pub b: Option<String>,
    /// Virtual time the run took.
    pub elapsed: Duration,
    /// Messages sent over the link (both ways).
    pub messages: usize,
}

struct Side<E> {
    e: E,
    failed: Option<String>,
}

/// Two endpoints and the link between them.
pub(crate) struct TwoEnds<A, B> {
    a: Side<A>,
    b: Side<B>,
    link: Link,
    start: Instant,
    now: Instant,
    /// (arrival, to A?, sequence number, bytes)
    flight: VecDeque<(Instant, bool, usize, Vec<u8>)>,
    sent: usize,
}

impl<A: Endpoint, B: Endpoint> TwoEnds<A, B> {
    pub(crate) fn new(a: A, b: B, link: Link, start: Instant) -> Self {
        Self {
            a: Side { e: a, failed: None },
            b: Side { e: b, failed: None },
            link,
            start,
            now: start,
            flight: VecDeque::new(),
            sent: 0,
        }
    }

    pub(crate) fn a(&self) -> &A {
        &self.a.e
    }

    pub(crate) fn b(&self) -> &B {
        &self.b.e
    }

    pub(crate) fn a_mut(&mut self) -> &mut A {
        &mut self.a.e
    }

    pub(crate) fn b_mut(&mut self) -> &mut B {
        &mut self.b.e
    }

    fn collect(&mut self) {
        let now = self.now;
        loop {
            let mut any = false;
            for to_a in [false, true] {
                let msg = if to_a {
                    self.b.e.transmit(now)
                } else {
                    self.a.e.transmit(now)
                };
                let Some(mut msg) = msg else { continue };
                any = true;
                let seq = self.sent;
                self.sent += 1;
                if self.link.drop_from.is_some_and(|d| seq >= d) {
                    continue;
                }
                if self.link.corrupt == Some(seq) && !msg.is_empty() {
                    let mid = msg.len() / 2;
                    msg[mid] ^= 0x20;
                }
                self.flight.push_back((now + self.link.latency, to_a, seq, msg));
            }
            if !any {
                break;
            }
        }
    }

    /// Runs until quiet, both sides done or failed, or `limit` of virtual time.
    pub(crate) fn run(&mut self, limit: Duration) -> Outcome {
        let end = self.start + limit;
        loop {
            self.collect();
            let settled = |f: &Option<String>, done: bool| f.is_some() || done;
            if settled(&self.a.failed, self.a.e.done())
                && settled(&self.b.failed, self.b.e.done())
                && self.flight.is_empty()
            {
                break;
            }
            let timers = [
                self.a.failed.is_none().then(|| self.a.e.timeout()).flatten(),
                self.b.failed.is_none().then(|| self.b.e.timeout()).flatten(),
            ];
            let next_msg = self.flight.iter().map(|m| m.0).min();
            let Some(next) = timers.into_iter().flatten().chain(next_msg).min() else {
                break; // quiet: nothing in flight, no timer
            };
            if next > end {
                break;
            }
            self.now = self.now.max(next);
            let now = self.now;
            // Deliver everything due (reversed within the moment if reordering).
            let mut due: Vec<_> = Vec::new();
            let mut rest = VecDeque::new();
            for m in self.flight.drain(..) {
                if m.0 <= now {
                    due.push(m)
                } else {
                    rest.push_back(m)
                }
            }
            self.flight = rest;
            due.sort_by_key(|m| m.2);
            if self.link.reorder {
                due.reverse();
            }
            for (_, to_a, _, msg) in due {
                let side_failed = if to_a { &self.a.failed } else { &self.b.failed };
                if side_failed.is_some() {
                    continue;
                }
                let r = if to_a {
                    self.a.e.input(now, &msg)
                } else {
                    self.b.e.input(now, &msg)
                };
                if let Err(e) = r {
                    if to_a {
                        self.a.failed = Some(e)
                    } else {
                        self.b.failed = Some(e)
                    }
                }
            }
            for is_a in [true, false] {
                let (failed, due) = if is_a {
                    (&self.a.failed, self.a.e.timeout())
                } else {
                    (&self.b.failed, self.b.e.timeout())
                };
                if failed.is_none() && due.is_some_and(|t| t <= now) {
                    let r = if is_a {
                        self.a.e.on_timeout(now)
                    } else {
                        self.b.e.on_timeout(now)
                    };
                    if let Err(e) = r {
                        if is_a {
                            self.a.failed = Some(e)
                        } else {
                            self.b.failed = Some(e)
                        }
                    }
                }
            }
        }
        Outcome {
            a: self.a.failed.clone(),
            b: self.b.failed.clone(),
            elapsed: self.now - self.start,
            messages: self.sent,
        }
    }
}
