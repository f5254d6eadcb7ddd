//! Paths: the seed's "construct a random list of nodes (at least 3)",
//! with the rules that keep one operator or one network from holding two
//! hops of a circuit.
//!
//! The exit is chosen first (its policy must allow the destination port),
//! then the entry (a Guard), then the middles; each by bandwidth weight,
//! among Running + Valid nodes of the list, and never:
//! - a node twice;
//! - two nodes in one IPv4 /16 or IPv6 /32 (any of their addresses;
//!   prefixes configurable for test networks that live in one subnet);
//! - two nodes of one declared family (either one naming the other).

use std::net::IpAddr;

use thiserror::Error;

use super::directory::{Entry, NodeList, Status};
use crate::keys::NodeId;
use crate::random::Random;

/// Fewest hops a path may have (the seed's "at least 3").
pub const MIN_HOPS: usize = 3;
/// Most hops (the EXTEND cap plus the entry).
pub const MAX_HOPS: usize = super::cell::MAX_EXTENDS as usize + 1;

/// What a path must satisfy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathRules {
    /// Hops, [`MIN_HOPS`]..=[`MAX_HOPS`].
    pub hops: usize,
    /// The destination port the exit must allow.
    pub port: u16,
    /// Prefix length under which two IPv4 addresses are one network (16).
    pub ipv4_prefix: u8,
    /// The same for IPv6 (32).
    pub ipv6_prefix: u8,
    /// Nodes not to use (a hop that just failed).
    pub exclude: Vec<NodeId>,
    /// The entry to use, if the client keeps guards.
    pub entry: Option<NodeId>,
}

impl PathRules {
    /// Default rules for `hops` hops to `port`.
    pub fn new(hops: usize, port: u16) -> Self {
        Self {
            hops,
            port,
            ipv4_prefix: 16,
            ipv6_prefix: 32,
            exclude: Vec::new(),
            entry: None,
        }
    }
}

/// Why no path could be chosen.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PathError {
    /// Hop count out of range.
    #[error("a path has {MIN_HOPS} to {MAX_HOPS} hops (asked for {0})")]
    Hops(usize),
    /// No running exit allows the port.
    #[error("no exit in the node list allows port {0}")]
    NoExit(u16),
    /// Not enough nodes that satisfy the rules for the other hops.
    #[error("not enough unrelated nodes for a {0}-hop path (distinct /16 networks and families)")]
    NotEnough(usize),
}

fn network(ip: IpAddr, v4: u8, v6: u8) -> (u8, u128) {
    match ip {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let p = u32::from(v4.min(32));
            let masked = if p == 0 { 0 } else { bits & (u32::MAX << (32 - p)) };
            (4, u128::from(masked))
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let p = u32::from(v6.min(128));
            let masked = if p == 0 {
                0
            } else {
                bits & (u128::MAX << (128 - p))
            };
            (6, masked)
        }
    }
}

/// Whether `a` and `b` may not share a circuit.
pub fn related(a: &Entry, b: &Entry, rules: &PathRules) -> bool {
    let (da, db) = (&a.descriptor, &b.descriptor);
    if a.id() == b.id() {
        return true;
    }
    if da.claims.family.contains(&b.id()) || db.claims.family.contains(&a.id()) {
        return true;
    }
    da.claims.addrs.iter().any(|x| {
        db.claims.addrs.iter().any(|y| {
            network(x.ip(), rules.ipv4_prefix, rules.ipv6_prefix)
                == network(y.ip(), rules.ipv4_prefix, rules.ipv6_prefix)
        })
    })
}

/// A uniform draw below `n` (rejection sampling, no modulo bias).
fn below(rng: &mut dyn Random, n: u64) -> u64 {
    let zone = u64::MAX - u64::MAX % n;
    loop {
        let mut b = [0u8; 8];
        rng.fill(&mut b);
        let v = u64::from_le_bytes(b);
        if v < zone {
            return v % n;
        }
    }
}

/// One of `candidates`, by bandwidth weight (at least 1 each).
fn weighted<'a>(candidates: &[&'a Entry], rng: &mut dyn Random) -> Option<&'a Entry> {
    let weight = |e: &Entry| u64::from(e.descriptor.claims.bandwidth.max(1));
    let total: u64 = candidates.iter().map(|e| weight(e)).sum();
    if total == 0 {
        return None;
    }
    let mut at = below(rng, total);
    for e in candidates {
        let w = weight(e);
        if at < w {
            return Some(e);
        }
        at -= w;
    }
    None
}

/// Chooses a path from `list` at `now`: entry first, exit last.
pub fn choose<'a>(
    list: &'a NodeList,
    rules: &PathRules,
    now: u64,
    rng: &mut dyn Random,
) -> Result<Vec<&'a Entry>, PathError> {
    if !(MIN_HOPS..=MAX_HOPS).contains(&rules.hops) {
        return Err(PathError::Hops(rules.hops));
    }
    let usable: Vec<&Entry> = list
        .entries
        .iter()
        .filter(|e| {
            e.status.has(Status::RUNNING)
                && e.status.has(Status::VALID)
                && e.descriptor.is_valid_at(now)
                && !rules.exclude.contains(&e.id())
        })
        .collect();
    // A kept guard must be usable, and the exit unrelated to it.
    let pinned = match rules.entry {
        Some(g) => Some(
            *usable
                .iter()
                .find(|e| e.id() == g)
                .ok_or(PathError::NotEnough(rules.hops))?,
        ),
        None => None,
    };
    let exits: Vec<&Entry> = usable
        .iter()
        .copied()
        .filter(|e| e.status.has(Status::EXIT) && e.descriptor.allows_port(rules.port))
        .filter(|e| pinned.is_none_or(|g| !related(g, e, rules)))
        .collect();
    let exit = weighted(&exits, rng).ok_or(PathError::NoExit(rules.port))?;
    let mut chosen = vec![exit];
    let fits = |e: &Entry, chosen: &[&Entry]| chosen.iter().all(|c| !related(c, e, rules));
    let guards: Vec<&Entry> = usable
        .iter()
        .copied()
        .filter(|e| {
            e.status.has(Status::GUARD) && rules.entry.is_none_or(|g| g == e.id()) && fits(e, &chosen)
        })
        .collect();
    let entry = weighted(&guards, rng).ok_or(PathError::NotEnough(rules.hops))?;
    chosen.push(entry);
    let mut middles = Vec::new();
    for _ in 0..rules.hops - 2 {
        let candidates: Vec<&Entry> = usable.iter().copied().filter(|e| fits(e, &chosen)).collect();
        let m = weighted(&candidates, rng).ok_or(PathError::NotEnough(rules.hops))?;
        chosen.push(m);
        middles.push(m);
    }
    let mut path = vec![entry];
    path.extend(middles);
    path.push(exit);
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::super::directory::tests::{NOW, claims, entry};
    use super::super::directory::{DescriptorClaims, list_body};
    use super::*;
    use crate::keys::Identity;
    use crate::random::seeded;

    const RUNNING: u8 = Status::RUNNING | Status::VALID | Status::GUARD;

    /// 40 nodes over 12 networks, families of two, exits on varied ports.
    fn list() -> NodeList {
        let mut rng = seeded(3);
        let ids: Vec<Identity> = (0..40).map(|_| Identity::generate(&mut rng)).collect();
        let mut entries = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let mut c: DescriptorClaims = claims(i as u8);
            c.addrs = vec![format!("10.{}.{}.1:9010", i % 12, i).parse().unwrap()];
            c.exit_ports = match i % 4 {
                0 => vec![(80, 80), (443, 443)],
                1 => vec![(1, 65535)],
                _ => vec![],
            };
            c.family = if i % 10 == 3 {
                vec![ids[i + 1].public().id()]
            } else {
                vec![]
            };
            c.bandwidth = 1000 * (1 + i as u32 % 5);
            let status = if c.exit_ports.is_empty() {
                RUNNING
            } else {
                RUNNING | Status::EXIT
            };
            entries.push(entry(id, &c, status));
        }
        entries.sort_by_key(Entry::id);
        let (body, _) = list_body(NOW, NOW + 600, NOW + 1800, &entries);
        NodeList {
            valid_after: NOW,
            fresh_until: NOW + 600,
            valid_until: NOW + 1800,
            digest: *blake3::hash(&body).as_bytes(),
            entries,
        }
    }

    #[test]
    fn ten_thousand_paths_keep_every_rule() {
        let list = list();
        let mut rng = seeded(11);
        let mut exits_seen = std::collections::HashSet::new();
        for n in 0..10_000 {
            let hops = 3 + n % 3;
            let port = [80u16, 443, 22, 8080][n % 4];
            let path = choose(&list, &PathRules::new(hops, port), NOW, &mut rng).unwrap();
            assert_eq!(path.len(), hops);
            for (i, a) in path.iter().enumerate() {
                for b in &path[i + 1..] {
                    assert!(
                        !related(a, b, &PathRules::new(hops, port)),
                        "path {n}: related hops"
                    );
                }
            }
            let exit = path[hops - 1];
            assert!(exit.descriptor.allows_port(port) && exit.status.has(Status::EXIT));
            assert!(path[0].status.has(Status::GUARD));
            exits_seen.insert(exit.id());
        }
        assert!(exits_seen.len() > 10, "exits are spread: {}", exits_seen.len());
    }

    #[test]
    fn families_and_networks_are_kept_apart() {
        let list = list();
        let rules = PathRules::new(3, 80);
        let fam: Vec<&Entry> = list
            .entries
            .iter()
            .filter(|e| !e.descriptor.claims.family.is_empty())
            .collect();
        assert!(!fam.is_empty());
        for a in fam {
            let b = list.lookup(&a.descriptor.claims.family[0]).unwrap();
            assert!(related(a, b, &rules) && related(b, a, &rules));
        }
        let same_net: Vec<&Entry> = list
            .entries
            .iter()
            .filter(|e| e.descriptor.claims.addrs[0].ip().to_string().starts_with("10.5."))
            .collect();
        assert!(same_net.len() >= 2 && related(same_net[0], same_net[1], &rules));
        // With /24 networks, they are unrelated.
        let narrow = PathRules {
            ipv4_prefix: 24,
            ..rules.clone()
        };
        assert!(!related(same_net[0], same_net[1], &narrow));
    }

    #[test]
    fn impossible_paths_say_why() {
        let list = list();
        let mut rng = seeded(1);
        assert_eq!(
            choose(&list, &PathRules::new(2, 80), NOW, &mut rng),
            Err(PathError::Hops(2))
        );
        assert_eq!(
            choose(&list, &PathRules::new(10, 80), NOW, &mut rng),
            Err(PathError::Hops(10))
        );
        // 12 networks: 13 hops can never be unrelated (and 9 is the cap anyway).
        let mut one_net = list.clone();
        for e in &mut one_net.entries {
            e.descriptor.claims.addrs = vec!["10.0.0.1:1".parse().unwrap()];
        }
        assert_eq!(
            choose(&one_net, &PathRules::new(3, 80), NOW, &mut rng),
            Err(PathError::NotEnough(3))
        );
        let mut no_exit = list.clone();
        no_exit.entries.retain(|e| !e.descriptor.allows_port(25));
        assert_eq!(
            choose(&no_exit, &PathRules::new(3, 25), NOW, &mut rng),
            Err(PathError::NoExit(25))
        );
        // Expired descriptors are not used.
        assert_eq!(
            choose(&list, &PathRules::new(3, 80), NOW + 3600, &mut rng),
            Err(PathError::NoExit(80))
        );
    }

    #[test]
    fn excluded_nodes_and_a_pinned_entry_are_respected() {
        let list = list();
        let mut rng = seeded(2);
        let guard = list.entries[7].id();
        let mut rules = PathRules::new(3, 443);
        rules.entry = Some(guard);
        rules.exclude = vec![list.entries[0].id(), list.entries[1].id()];
        for _ in 0..500 {
            let p = choose(&list, &rules, NOW, &mut rng).unwrap();
            assert_eq!(p[0].id(), guard);
            assert!(p.iter().all(|e| !rules.exclude.contains(&e.id())));
        }
    }
}
