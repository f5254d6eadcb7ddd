//! Per-address shares of the relay's connection slots.
//!
//! Every open connection counts against the address it came from: an IPv4
//! address, or the /64 an IPv6 address is in (one host usually has a whole
//! /64 to pick from). No address holds more than its share
//! (`RelayConfig::max_per_ip`, by default a sixteenth of
//! `max_connections`), so one client flooding hellos that then wait (lobby
//! servers, reconnect tokens, slow requests) cannot take the slots everyone
//! else needs; its newest connections are refused with a reason instead.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// What a connection from `ip` counts against: the address itself, or its /64.
pub fn addr_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(a) => {
            let bits = u128::from(a) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

/// The slots held per address.
#[derive(Debug)]
pub(crate) struct Shares {
    limit: usize,
    held: Mutex<HashMap<IpAddr, usize>>,
}

/// One slot, given back on drop.
#[derive(Debug)]
pub(crate) struct Share {
    shares: Arc<Shares>,
    key: IpAddr,
}

impl Shares {
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit: limit.max(1),
            held: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for a connection from `ip`, unless its address holds its share.
    pub(crate) fn take(self: &Arc<Self>, ip: IpAddr) -> Option<Share> {
        let key = addr_key(ip);
        let mut held = self.lock();
        let n = held.entry(key).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(Share {
            shares: self.clone(),
            key,
        })
    }

    /// Addresses holding at least one slot.
    #[cfg(test)]
    pub(crate) fn addresses(&self) -> usize {
        self.lock().len()
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut held = self.shares.lock();
        if let Some(n) = held.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_its_share_and_gets_it_back() {
        let s = Shares::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let (x, y) = (s.take(a).unwrap(), s.take(a).unwrap());
        assert!(s.take(a).is_none());
        assert!(s.take("192.0.2.2".parse().unwrap()).is_some());
        drop(x);
        let z = s.take(a).unwrap();
        drop((y, z));
        assert_eq!(s.addresses(), 0);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let s = Shares::new(1);
        let _a = s.take("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert!(s.take("2001:db8:1:2:ffff::9".parse().unwrap()).is_none());
        assert!(s.take("2001:db8:1:3::1".parse().unwrap()).is_some());
        let _b = s.take("198.51.100.7".parse().unwrap()).unwrap();
        assert!(s.take("::ffff:198.51.100.7".parse().unwrap()).is_none());
    }
}
