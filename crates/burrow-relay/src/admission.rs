//! Admission: the relay's connection slots, each address's share of them,
//! and who gives one up when they are all taken.
//!
//! Every accepted connection holds a [`Ticket`] until it closes. A ticket
//! counts against its address (an IPv4 address or an IPv6 /64, see
//! [`share_key`], the channel table's rule too), which holds at most its share; and it is
//! in one of three phases:
//!
//! ```text
//! accept ─► greeting ──(its first request or hello is complete)──► working
//!              │                                                     ▲
//!              └──(a lobby server, a reconnect token)──► waiting ────┘ (paired)
//! ```
//!
//! When every slot is taken, a newcomer is not simply refused (that is what
//! let 5,000 slowloris and 5,000 idle connections deny a whole relay): the
//! relay first makes room, in this order:
//!
//! 1. from the address holding the most **evictable** (greeting or waiting)
//!    connections, if it holds at least two more than the newcomer's
//!    address holds in all: its oldest greeting connection, else its
//!    newest waiting one. A flood from a few addresses thus gives way to
//!    anyone with less, and floods from equal addresses cannot churn each
//!    other;
//! 2. else the **oldest greeting** connection anywhere, if it has been
//!    greeting for at least [`MIN_GREETING_AGE`]: an honest client sends its
//!    request or hello the moment it connects, so a connection still
//!    greeting after a second is a slow or idle one;
//! 3. else the newcomer is refused with a reason.
//!
//! Working connections (a request being answered, a channel's stapled
//! pipe, an authenticated connector link) are never evicted. An evicted
//! connection learns it through [`Ticket::evicted`] and closes (waiters
//! with a reason their protocol can carry). At most [`MAX_EVICTING`]
//! evicted connections may still be closing, so the open count exceeds the
//! limit by at most that many, for the moment it takes them to close.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use burrow_proto::channel::table::share_key;

/// A connection greeting for less than this is not evicted by age.
pub const MIN_GREETING_AGE: Duration = Duration::from_secs(1);
/// Evicted connections still closing, at most.
pub const MAX_EVICTING: usize = 64;

/// Where a greeting connection goes next (every ticket starts greeting:
/// see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Waits without anyone having vouched for it (lobby, reconnect token).
    Waiting,
    /// Doing vouched-for work; never evicted.
    Working,
}

/// Which connection gave up its slot for a newcomer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Evicted {
    /// One of the biggest holder's connections.
    Biggest,
    /// The oldest slow greeter.
    Oldest,
}

/// Why a newcomer got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Its address holds its whole share.
    PerAddress,
    /// Every slot is taken and none could be freed.
    Capacity,
}

#[derive(Debug, Default)]
struct Flag {
    set: AtomicBool,
    notify: Notify,
}

impl Flag {
    fn raise(&self) {
        self.set.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Greeting,
    Waiting,
    Working,
    Evicted,
}

#[derive(Debug)]
struct Slot {
    key: IpAddr,
    since: Instant,
    state: State,
    flag: Arc<Flag>,
}

/// One address's tickets.
#[derive(Debug, Default)]
struct Holder {
    held: usize,
    greeting: BTreeSet<u64>,
    waiting: BTreeSet<u64>,
}

impl Holder {
    fn evictable(&self) -> usize {
        self.greeting.len() + self.waiting.len()
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// Tickets held (evicted ones still closing included).
    open: usize,
    /// Evicted tickets not yet dropped.
    evicting: usize,
    /// Ids grow with accept time.
    next: u64,
    slots: HashMap<u64, Slot>,
    holders: HashMap<IpAddr, Holder>,
    /// Addresses by how many evictable tickets they hold (those with any).
    by_evictable: BTreeSet<(usize, IpAddr)>,
    /// Every greeting ticket, oldest first.
    greeting: BTreeSet<u64>,
}

impl Inner {
    /// Moves ticket `id` to `to`, keeping every index in step.
    fn move_to(&mut self, id: u64, to: State) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        let (from, key) = (slot.state, slot.key);
        if from == to || from == State::Evicted {
            return;
        }
        slot.state = to;
        let holder = self.holders.entry(key).or_default();
        let before = holder.evictable();
        match from {
            State::Greeting => {
                holder.greeting.remove(&id);
                self.greeting.remove(&id);
            }
            State::Waiting => {
                holder.waiting.remove(&id);
            }
            State::Working | State::Evicted => {}
        }
        match to {
            State::Greeting => {
                holder.greeting.insert(id);
                self.greeting.insert(id);
            }
            State::Waiting => {
                holder.waiting.insert(id);
            }
            State::Working | State::Evicted => {}
        }
        let after = holder.evictable();
        if before != after {
            self.by_evictable.remove(&(before, key));
            if after > 0 {
                self.by_evictable.insert((after, key));
            }
        }
    }

    /// The ticket to evict for a newcomer from `key`, by the module's rules.
    fn victim(&self, key: IpAddr, now: Instant) -> Option<(u64, Evicted)> {
        let mine = self.holders.get(&key).map_or(0, |h| h.held);
        if let Some(&(n, big)) = self.by_evictable.last()
            && n > mine + 1
            && let Some(h) = self.holders.get(&big)
        {
            let id = h.greeting.first().or_else(|| h.waiting.last())?;
            return Some((*id, Evicted::Biggest));
        }
        let oldest = *self.greeting.first()?;
        let slot = self.slots.get(&oldest)?;
        (now.saturating_duration_since(slot.since) >= MIN_GREETING_AGE).then_some((oldest, Evicted::Oldest))
    }
}

/// The relay's slots.
#[derive(Debug)]
pub(crate) struct Admission {
    max: usize,
    per_address: usize,
    inner: Mutex<Inner>,
}

/// One connection's slot, given back on drop.
#[derive(Debug)]
pub(crate) struct Ticket {
    adm: Arc<Admission>,
    id: u64,
    flag: Arc<Flag>,
    accepted: Instant,
}

impl Admission {
    /// `max` slots in all, at most `per_address` of them for one address.
    pub(crate) fn new(max: usize, per_address: usize) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            per_address: per_address.max(1),
            inner: Mutex::new(Inner::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for a connection from `ip` accepted at `now`, making room if
    /// every slot is taken. The second value says whom the newcomer
    /// displaced.
    pub(crate) fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        now: Instant,
    ) -> Result<(Ticket, Option<Evicted>), Refused> {
        let key = share_key(ip);
        let mut g = self.lock();
        if g.holders.get(&key).is_some_and(|h| h.held >= self.per_address) {
            return Err(Refused::PerAddress);
        }
        let mut evicted = None;
        if g.open >= self.max {
            if g.evicting >= MAX_EVICTING {
                return Err(Refused::Capacity);
            }
            let (victim, why) = g.victim(key, now).ok_or(Refused::Capacity)?;
            g.move_to(victim, State::Evicted);
            if let Some(slot) = g.slots.get(&victim) {
                slot.flag.raise();
            }
            g.evicting += 1;
            evicted = Some(why);
        }
        g.open += 1;
        let id = g.next;
        g.next += 1;
        let flag = Arc::new(Flag::default());
        g.slots.insert(
            id,
            Slot {
                key,
                since: now,
                state: State::Working,
                flag: flag.clone(),
            },
        );
        g.holders.entry(key).or_default().held += 1;
        g.move_to(id, State::Greeting);
        drop(g);
        let t = Ticket {
            adm: self.clone(),
            id,
            flag,
            accepted: now,
        };
        Ok((t, evicted))
    }

    /// Slots held, and addresses holding any.
    #[cfg(test)]
    pub(crate) fn open(&self) -> (usize, usize) {
        let g = self.lock();
        (g.open, g.holders.len())
    }
}

impl Ticket {
    /// When the connection was accepted.
    pub(crate) fn accepted(&self) -> Instant {
        self.accepted
    }

    /// Moves to `phase` (an evicted ticket stays evicted).
    pub(crate) fn set(&self, phase: Phase) {
        let to = match phase {
            Phase::Waiting => State::Waiting,
            Phase::Working => State::Working,
        };
        self.adm.lock().move_to(self.id, to);
    }

    fn is_evicted(&self) -> bool {
        self.flag.set.load(Ordering::Acquire)
    }

    /// Resolves once this connection has been chosen to make room (never,
    /// while it is working).
    pub(crate) async fn evicted(&self) {
        loop {
            let wait = self.flag.notify.notified();
            if self.is_evicted() {
                return;
            }
            wait.await;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut g = self.adm.lock();
        g.open -= 1;
        if self.is_evicted() {
            g.evicting -= 1;
        } else {
            // Not evictable any more: out of every index but the count.
            g.move_to(self.id, State::Working);
        }
        if let Some(slot) = g.slots.remove(&self.id)
            && let Some(h) = g.holders.get_mut(&slot.key)
        {
            h.held -= 1;
            if h.held == 0 {
                g.holders.remove(&slot.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_address_holds_its_share_and_gets_it_back() {
        let a = Admission::new(100, 2);
        let t = Instant::now();
        let x = a.admit(ip("192.0.2.1"), t).unwrap().0;
        let y = a.admit(ip("192.0.2.1"), t).unwrap().0;
        assert_eq!(a.admit(ip("192.0.2.1"), t).err(), Some(Refused::PerAddress));
        // IPv6 counts per /64, mapped IPv4 as IPv4.
        assert_eq!(
            a.admit(ip("::ffff:192.0.2.1"), t).err(),
            Some(Refused::PerAddress)
        );
        let v6 = a.admit(ip("2001:db8:1:2::1"), t).unwrap().0;
        let _v6b = a.admit(ip("2001:db8:1:2:ffff::9"), t).unwrap().0;
        assert!(a.admit(ip("2001:db8:1:2::7"), t).is_err());
        assert!(a.admit(ip("2001:db8:1:3::1"), t).is_ok());
        drop((x, v6));
        let z = a.admit(ip("192.0.2.1"), t).unwrap().0;
        drop((y, z, _v6b));
        assert_eq!(a.open(), (0, 0));
    }

    #[test]
    fn a_flooding_address_gives_way_to_one_with_less() {
        let a = Admission::new(4, 4);
        let t0 = Instant::now();
        let flood: Vec<_> = (0..4).map(|_| a.admit(ip("10.0.0.1"), t0).unwrap().0).collect();
        // At once, not only after the age rule: the flooder holds 4, the newcomer 0.
        let (n, why) = a.admit(ip("10.0.0.2"), t0).unwrap();
        assert_eq!(why, Some(Evicted::Biggest));
        assert!(flood[0].is_evicted(), "the flooder's oldest greeter went");
        assert!(flood[1..].iter().all(|t| !t.is_evicted()));
        // Two addresses that hold nearly as much cannot churn each other.
        let m = a.admit(ip("10.0.0.2"), t0).unwrap().0;
        assert!(flood[1].is_evicted());
        assert_eq!(a.admit(ip("10.0.0.2"), t0).err(), Some(Refused::Capacity));
        drop((n, m, flood));
        assert_eq!(a.open(), (0, 0));
    }

    #[test]
    fn then_the_oldest_slow_greeter_and_never_a_worker() {
        let a = Admission::new(3, 3);
        let t0 = Instant::now();
        let old = a.admit(ip("10.0.0.1"), t0).unwrap().0;
        let mid = a.admit(ip("10.0.0.2"), t0 + Duration::from_millis(10)).unwrap().0;
        let work = a.admit(ip("10.0.0.3"), t0 + Duration::from_millis(20)).unwrap().0;
        work.set(Phase::Working);
        // Full, nobody holds more than anyone, nobody greets for a second yet.
        let soon = t0 + Duration::from_millis(500);
        assert_eq!(a.admit(ip("10.0.0.4"), soon).err(), Some(Refused::Capacity));
        let (new, why) = a.admit(ip("10.0.0.4"), t0 + Duration::from_secs(2)).unwrap();
        assert_eq!(why, Some(Evicted::Oldest));
        assert!(old.is_evicted() && !mid.is_evicted() && !work.is_evicted());
        assert_eq!(a.open().0, 4, "the evicted one still closes");
        drop(old);
        assert_eq!(a.open().0, 3);
        drop((mid, new, work));
        assert_eq!(a.open(), (0, 0));
    }

    #[test]
    fn the_biggest_holders_newest_waiter_goes_when_it_has_no_greeter() {
        let a = Admission::new(4, 4);
        let t0 = Instant::now();
        let w: Vec<_> = (0..4).map(|_| a.admit(ip("10.0.0.1"), t0).unwrap().0).collect();
        for t in &w {
            t.set(Phase::Waiting);
        }
        let _n = a.admit(ip("10.0.0.2"), t0).unwrap().0;
        assert!(w[3].is_evicted() && !w[0].is_evicted());
        // An evicted ticket cannot come back by changing phase.
        w[3].set(Phase::Waiting);
        assert!(w[3].is_evicted());
    }

    #[test]
    fn a_relay_of_workers_refuses_and_evictions_in_flight_are_bounded() {
        let a = Admission::new(1, 1);
        let t0 = Instant::now();
        let w = a.admit(ip("10.0.0.1"), t0).unwrap().0;
        w.set(Phase::Working);
        assert_eq!(
            a.admit(ip("10.0.0.2"), t0 + Duration::from_secs(9)).err(),
            Some(Refused::Capacity)
        );
        drop(w);
        // Greeters that never close: evictions stop at MAX_EVICTING.
        let mut held = vec![a.admit(ip("10.1.0.0"), t0).unwrap().0];
        for i in 0..MAX_EVICTING as u64 {
            let now = t0 + Duration::from_secs(2 + i);
            let from = IpAddr::from([10, 1, 0, 1 + i as u8]);
            held.push(a.admit(from, now).unwrap().0);
        }
        let late = a.admit(ip("10.2.0.0"), t0 + Duration::from_secs(999));
        assert_eq!(late.err(), Some(Refused::Capacity));
        assert_eq!(a.open().0, MAX_EVICTING + 1);
    }

    #[tokio::test]
    async fn an_evicted_ticket_is_told() {
        let a = Admission::new(1, 1);
        let t0 = Instant::now();
        let (t, _) = a.admit(ip("10.0.0.1"), t0).unwrap();
        let told = tokio::spawn(async move {
            t.evicted().await;
        });
        tokio::task::yield_now().await;
        let _n = a.admit(ip("10.0.0.2"), t0 + Duration::from_secs(2)).unwrap();
        tokio::time::timeout(Duration::from_secs(5), told)
            .await
            .expect("told in time")
            .unwrap();
    }
}
