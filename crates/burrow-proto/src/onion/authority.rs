//! One directory authority's state, sans-IO: the nodes that registered
//! with it, whether it could reach them, its own vote and its peers',
//! the consensus they make and the signatures collected for it.
//!
//! The driver (`burrow directory`) feeds it: REGISTER requests (with the
//! address the request came from), reachability results, peers' votes and
//! signatures, and the clock; it sends what [`Authority::vote`] and
//! [`Authority::recompute`] return to every peer, and serves
//! [`Authority::list`].
//!
//! An authority votes for a node only after it has reached the node at
//! the address the node registered from (its "public IP", the seed's
//! step), and lists at most [`AuthorityConfig::max_per_ip`] nodes per
//! address, so one machine cannot fill the list.

use std::collections::HashMap;
use std::net::IpAddr;

use thiserror::Error;

use super::directory::{
    Descriptor, DirError, Entry, Status, Vote, check_digest, consensus, encode_list, sign_digest,
};
use super::handshake::DIGEST_LEN;
use crate::keys::{Identity, NodeId, PublicIdentity};

/// Limits and timings of an authority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthorityConfig {
    /// How long a node list is valid (seconds); fresh for a third of it.
    pub lifetime: u64,
    /// Seconds a node must have been reachable to be a Guard.
    pub guard_after: u64,
    /// Nodes listed per registering address.
    pub max_per_ip: usize,
    /// Nodes registered at most.
    pub max_nodes: usize,
}

impl Default for AuthorityConfig {
    fn default() -> Self {
        Self {
            lifetime: 1800,
            guard_after: 0,
            max_per_ip: 4,
            max_nodes: super::directory::MAX_NODES,
        }
    }
}

/// Why a registration was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RegisterError {
    /// The descriptor does not check.
    #[error("{0}")]
    Descriptor(#[from] DirError),
    /// Its time is off.
    #[error("descriptor expired or from the future")]
    NotValidNow,
    /// Its first address is not the one the request came from.
    #[error("the descriptor's address {claimed} is not the address this authority sees ({seen})")]
    WrongAddress {
        /// What the descriptor says.
        claimed: IpAddr,
        /// What the authority sees.
        seen: IpAddr,
    },
    /// Too many nodes from that address, or in all.
    #[error("too many nodes registered from {0}")]
    Full(IpAddr),
    /// Not newer than the descriptor held.
    #[error("a newer descriptor of this node is registered")]
    Stale,
}

#[derive(Debug, Clone)]
struct Registered {
    raw: Vec<u8>,
    descriptor: Descriptor,
    ip: IpAddr,
    /// When it was first reachable (in this run of reachability).
    up_since: Option<u64>,
}

/// One authority.
#[derive(Debug)]
pub struct Authority {
    me: NodeId,
    /// The authorities' keys known so far, this one's included.
    authorities: Vec<PublicIdentity>,
    /// Authorities configured (a majority is of all of them, known or not).
    total: usize,
    cfg: AuthorityConfig,
    nodes: HashMap<NodeId, Registered>,
    votes: HashMap<NodeId, Vote>,
    /// The body, digest and signatures of the consensus this authority
    /// computed last.
    current: Option<Consensus>,
    /// Signatures that came before this authority computed their digest.
    early_sigs: Vec<([u8; DIGEST_LEN], NodeId, [u8; 64])>,
    /// The last list with a majority of signatures.
    published: Option<Vec<u8>>,
    /// What this authority's last vote listed (re-vote on change).
    last_vote: Option<Vec<(NodeId, u8, Vec<u8>)>>,
}

const MAX_EARLY_SIGS: usize = 64;

/// A consensus body, its digest, and the signatures collected for it.
type Consensus = (Vec<u8>, [u8; DIGEST_LEN], Vec<(NodeId, [u8; 64])>);

impl Authority {
    /// An authority with identity `me` among `authorities` (which must
    /// include it); all of them are known.
    pub fn new(me: NodeId, authorities: Vec<PublicIdentity>, cfg: AuthorityConfig) -> Self {
        let total = authorities.len();
        Self::with_total(me, authorities, total, cfg)
    }

    /// An authority that knows the keys of some of the `total` configured
    /// authorities (a majority is enough to start): the others' keys come
    /// with [`Authority::learn_authority`].
    pub fn with_total(
        me: NodeId,
        authorities: Vec<PublicIdentity>,
        total: usize,
        cfg: AuthorityConfig,
    ) -> Self {
        Self {
            me,
            total: total.max(authorities.len()),
            authorities,
            cfg,
            nodes: HashMap::new(),
            votes: HashMap::new(),
            current: None,
            early_sigs: Vec::new(),
            published: None,
            last_vote: None,
        }
    }

    /// Authorities whose keys are known, this one included.
    pub fn authorities(&self) -> &[PublicIdentity] {
        &self.authorities
    }

    /// Another authority's key, learned late (its votes and signatures
    /// count from now on).
    pub fn learn_authority(&mut self, key: PublicIdentity) {
        if !self.authorities.contains(&key) && self.authorities.len() < self.total {
            self.authorities.push(key);
        }
    }

    /// A node registers `raw` from address `seen`. On success, check that
    /// it is reachable and report with [`Authority::reachable`].
    pub fn register(&mut self, raw: &[u8], seen: IpAddr, now: u64) -> Result<NodeId, RegisterError> {
        let descriptor = Descriptor::verify(raw)?;
        if !descriptor.is_valid_at(now) {
            return Err(RegisterError::NotValidNow);
        }
        let claimed = descriptor
            .claims
            .addrs
            .first()
            .map(|a| a.ip())
            .ok_or(RegisterError::WrongAddress {
                claimed: IpAddr::from([0, 0, 0, 0]),
                seen,
            })?;
        if claimed != seen {
            return Err(RegisterError::WrongAddress { claimed, seen });
        }
        let id = descriptor.id();
        match self.nodes.get(&id) {
            Some(old) if old.descriptor.claims.published > descriptor.claims.published => {
                return Err(RegisterError::Stale);
            }
            Some(_) => {}
            None => {
                let same_ip = self.nodes.values().filter(|n| n.ip == seen).count();
                if same_ip >= self.cfg.max_per_ip || self.nodes.len() >= self.cfg.max_nodes {
                    return Err(RegisterError::Full(seen));
                }
            }
        }
        let up_since = self.nodes.get(&id).and_then(|n| n.up_since);
        self.nodes.insert(
            id,
            Registered {
                raw: raw.to_vec(),
                descriptor,
                ip: seen,
                up_since,
            },
        );
        Ok(id)
    }

    /// The outcome of a reachability check of `id`.
    pub fn reachable(&mut self, id: &NodeId, ok: bool, now: u64) {
        if let Some(n) = self.nodes.get_mut(id) {
            n.up_since = if ok { Some(n.up_since.unwrap_or(now)) } else { None };
        }
    }

    /// Nodes to check again (all registered ones; the driver paces it).
    pub fn registered(&self) -> Vec<(NodeId, Descriptor)> {
        self.nodes
            .iter()
            .map(|(id, n)| (*id, n.descriptor.clone()))
            .collect()
    }

    /// The seed's lookup by node id (operators; clients fetch the list).
    pub fn lookup(&self, id: &NodeId) -> Option<&Descriptor> {
        self.nodes.get(id).map(|n| &n.descriptor)
    }

    /// Drops registrations whose descriptor expired.
    pub fn expire(&mut self, now: u64) {
        self.nodes.retain(|_, n| n.descriptor.is_valid_at(now));
        let oldest = now.saturating_sub(self.cfg.lifetime);
        self.votes.retain(|_, v| v.published >= oldest);
    }

    fn entries(&self, now: u64) -> Vec<Entry> {
        let mut out: Vec<Entry> = self
            .nodes
            .values()
            .filter(|n| n.descriptor.is_valid_at(now))
            .filter_map(|n| {
                let since = n.up_since?;
                let mut s = Status::RUNNING | Status::VALID;
                if now.saturating_sub(since) >= self.cfg.guard_after {
                    s |= Status::GUARD;
                }
                if now.saturating_sub(since) >= 3600 {
                    s |= Status::STABLE;
                }
                if n.descriptor.is_exit() {
                    s |= Status::EXIT;
                }
                Some(Entry {
                    status: Status(s),
                    raw: n.raw.clone(),
                    descriptor: n.descriptor.clone(),
                })
            })
            .collect();
        out.sort_by_key(Entry::id);
        out
    }

    /// This authority's vote, if what it would say changed since its last
    /// one or that one is older than a third of the list's lifetime (then
    /// send it to every peer). The vote counts for this authority too.
    pub fn vote(&mut self, identity: &Identity, now: u64) -> Option<Vec<u8>> {
        let entries = self.entries(now);
        let summary: Vec<(NodeId, u8, Vec<u8>)> = entries
            .iter()
            .map(|e| (e.id(), e.status.0, e.raw.clone()))
            .collect();
        let mine = self.votes.get(&self.me).map(|v| v.published);
        let stale = mine.is_none_or(|t| now >= t + self.cfg.lifetime / 3);
        if !stale && self.last_vote.as_ref() == Some(&summary) {
            return None;
        }
        // Strictly later than this authority's last vote: peers keep only
        // newer votes, and several changes may come within one second.
        let published = match mine {
            Some(t) if t >= now => t + 1,
            _ => now,
        };
        let raw = Vote::sign(identity, published, entries).ok()?;
        let vote = Vote::verify(&raw, &self.authorities).ok()?;
        self.votes.insert(self.me, vote);
        self.last_vote = Some(summary);
        Some(raw)
    }

    /// A peer's vote. Only newer votes replace older ones.
    pub fn on_vote(&mut self, raw: &[u8], now: u64) -> Result<NodeId, DirError> {
        let vote = Vote::verify(raw, &self.authorities)?;
        if vote.published > now.saturating_add(super::directory::MAX_SKEW) {
            return Err(DirError::NotValidNow("vote"));
        }
        let who = vote.authority;
        if self.votes.get(&who).is_none_or(|v| v.published < vote.published) {
            self.votes.insert(who, vote);
        }
        Ok(who)
    }

    /// Recomputes the consensus from the votes held. When it changed,
    /// returns its digest and this authority's signature (send both to
    /// every peer).
    pub fn recompute(&mut self, identity: &Identity) -> Option<([u8; DIGEST_LEN], [u8; 64])> {
        let votes: Vec<Vote> = self.votes.values().cloned().collect();
        if votes.is_empty() {
            return None;
        }
        let (body, digest) = consensus(&votes, self.total, self.cfg.lifetime);
        if self.current.as_ref().is_some_and(|c| c.1 == digest) {
            return None;
        }
        let sig = sign_digest(identity, &digest);
        let mut sigs = vec![(self.me, sig)];
        for (d, who, s) in &self.early_sigs {
            if *d == digest && !sigs.iter().any(|(w, _)| w == who) {
                sigs.push((*who, *s));
            }
        }
        self.current = Some((body, digest, sigs));
        self.publish();
        Some((digest, sig))
    }

    /// A peer's signature on a digest.
    pub fn on_sig(&mut self, who: NodeId, digest: [u8; DIGEST_LEN], sig: [u8; 64]) -> Result<(), DirError> {
        let key = self
            .authorities
            .iter()
            .find(|a| a.id() == who)
            .ok_or(DirError::BadSignature("list"))?;
        if !check_digest(key, &digest, &sig) {
            return Err(DirError::BadSignature("list"));
        }
        match &mut self.current {
            Some((_, d, sigs)) if *d == digest => {
                if !sigs.iter().any(|(w, _)| *w == who) {
                    sigs.push((who, sig));
                }
                self.publish();
            }
            _ => {
                self.early_sigs.retain(|(_, w, _)| *w != who);
                if self.early_sigs.len() >= MAX_EARLY_SIGS {
                    self.early_sigs.remove(0);
                }
                self.early_sigs.push((digest, who, sig));
            }
        }
        Ok(())
    }

    fn publish(&mut self) {
        if let Some((body, _, sigs)) = &self.current
            && sigs.len() * 2 > self.total
        {
            self.published = Some(encode_list(body, sigs));
        }
    }

    /// The newest node list a majority signed, as served to clients.
    pub fn list(&self) -> Option<&[u8]> {
        self.published.as_deref()
    }

    /// The digest this authority signed last.
    pub fn current_digest(&self) -> Option<[u8; DIGEST_LEN]> {
        self.current.as_ref().map(|c| c.1)
    }
}

#[cfg(test)]
mod tests {
    use super::super::directory::NodeList;
    use super::super::directory::tests::{NOW, claims};
    use super::*;
    use crate::random::seeded;

    fn setup(n: usize) -> (Vec<Identity>, Vec<Authority>) {
        let mut rng = seeded(8);
        let ids: Vec<Identity> = (0..n).map(|_| Identity::generate(&mut rng)).collect();
        let keys: Vec<PublicIdentity> = ids.iter().map(Identity::public).collect();
        let auths = ids
            .iter()
            .map(|i| Authority::new(i.public().id(), keys.clone(), AuthorityConfig::default()))
            .collect();
        (ids, auths)
    }

    /// Runs votes and signatures between every pair until quiet.
    fn gossip(ids: &[Identity], auths: &mut [Authority], now: u64) {
        for _ in 0..3 {
            let votes: Vec<(usize, Vec<u8>)> = (0..auths.len())
                .filter_map(|i| auths[i].vote(&ids[i], now).map(|v| (i, v)))
                .collect();
            for (from, v) in &votes {
                for (j, a) in auths.iter_mut().enumerate() {
                    if j != *from {
                        a.on_vote(v, now).unwrap();
                    }
                }
            }
            let sigs: Vec<(usize, [u8; 32], [u8; 64])> = (0..auths.len())
                .filter_map(|i| auths[i].recompute(&ids[i]).map(|(d, s)| (i, d, s)))
                .collect();
            for (from, d, s) in &sigs {
                for (j, a) in auths.iter_mut().enumerate() {
                    if j != *from {
                        a.on_sig(ids[*from].public().id(), *d, *s).unwrap();
                    }
                }
            }
        }
    }

    #[test]
    fn three_authorities_agree_on_reachable_nodes_only() {
        let (ids, mut auths) = setup(3);
        let nodes: Vec<Identity> = (0..4).map(|i| Identity::generate(&mut seeded(40 + i))).collect();
        for (i, n) in nodes.iter().enumerate() {
            let raw = super::super::directory::Descriptor::sign(n, &claims(i as u8)).unwrap();
            for a in auths.iter_mut() {
                let id = a.register(&raw, IpAddr::from([10, i as u8, 0, 1]), NOW).unwrap();
                // Node 3 is not reachable.
                a.reachable(&id, i != 3, NOW);
            }
        }
        gossip(&ids, &mut auths, NOW);
        let pinned: Vec<PublicIdentity> = ids.iter().map(Identity::public).collect();
        let lists: Vec<NodeList> = auths
            .iter()
            .map(|a| NodeList::verify(a.list().unwrap(), &pinned, NOW).unwrap())
            .collect();
        assert!(
            lists.windows(2).all(|w| w[0].digest == w[1].digest),
            "every authority serves the same list"
        );
        assert_eq!(lists[0].entries.len(), 3);
        assert!(lists[0].lookup(&nodes[3].public().id()).is_none());
        // Nothing changed: no new vote, no new list.
        assert!(auths[0].vote(&ids[0], NOW + 1).is_none());
        // Two changes within one second: the second vote is still newer,
        // and every authority follows it.
        let n = Identity::generate(&mut seeded(70));
        let raw = super::super::directory::Descriptor::sign(&n, &claims(9)).unwrap();
        for a in auths.iter_mut() {
            let id = a.register(&raw, IpAddr::from([10, 9, 0, 1]), NOW).unwrap();
            a.reachable(&id, true, NOW);
        }
        gossip(&ids, &mut auths, NOW);
        let lists: Vec<NodeList> = auths
            .iter()
            .map(|a| NodeList::verify(a.list().unwrap(), &pinned, NOW).unwrap())
            .collect();
        assert!(
            lists.iter().all(|l| l.entries.len() == 4),
            "{:?}",
            lists.iter().map(|l| l.entries.len()).collect::<Vec<_>>()
        );
    }

    /// Two of three authorities up: they publish a list the client
    /// accepts (two of three signed); the third joins later and follows.
    #[test]
    fn a_majority_of_authorities_is_enough_to_start() {
        let (ids, _) = setup(3);
        let keys: Vec<PublicIdentity> = ids.iter().map(Identity::public).collect();
        let mut auths: Vec<Authority> = (0..2)
            .map(|i| Authority::with_total(keys[i].id(), keys[..2].to_vec(), 3, AuthorityConfig::default()))
            .collect();
        let n = Identity::generate(&mut seeded(80));
        let raw = super::super::directory::Descriptor::sign(&n, &claims(1)).unwrap();
        for a in auths.iter_mut() {
            let id = a.register(&raw, IpAddr::from([10, 1, 0, 1]), NOW).unwrap();
            a.reachable(&id, true, NOW);
        }
        gossip(&ids[..2], &mut auths, NOW);
        let list = NodeList::verify(auths[0].list().unwrap(), &keys, NOW).unwrap();
        assert_eq!(list.entries.len(), 1);
        // The third's key arrives: its votes count from then on.
        auths[0].learn_authority(keys[2]);
        assert_eq!(auths[0].authorities().len(), 3);
        auths[0].learn_authority(keys[2]);
        assert_eq!(auths[0].authorities().len(), 3, "once");
    }

    #[test]
    fn registration_checks_the_address_and_the_per_address_cap() {
        let (_, mut auths) = setup(1);
        let n = Identity::generate(&mut seeded(50));
        let raw = super::super::directory::Descriptor::sign(&n, &claims(1)).unwrap();
        assert!(matches!(
            auths[0].register(&raw, IpAddr::from([10, 9, 9, 9]), NOW),
            Err(RegisterError::WrongAddress { .. })
        ));
        assert_eq!(
            auths[0].register(&raw, IpAddr::from([10, 1, 0, 1]), NOW + 4000),
            Err(RegisterError::NotValidNow)
        );
        for i in 0..4u8 {
            let other = Identity::generate(&mut seeded(60 + i));
            let raw = super::super::directory::Descriptor::sign(&other, &claims(1)).unwrap();
            auths[0].register(&raw, IpAddr::from([10, 1, 0, 1]), NOW).unwrap();
        }
        assert_eq!(
            auths[0].register(&raw, IpAddr::from([10, 1, 0, 1]), NOW),
            Err(RegisterError::Full(IpAddr::from([10, 1, 0, 1])))
        );
        let mut bad = raw.clone();
        bad[40] ^= 1;
        assert!(matches!(
            auths[0].register(&bad, IpAddr::from([10, 1, 0, 1]), NOW),
            Err(RegisterError::Descriptor(_))
        ));
    }

    #[test]
    fn a_forged_signature_or_vote_is_refused() {
        let (ids, mut auths) = setup(3);
        let rogue = Identity::generate(&mut seeded(99));
        let vote = Vote::sign(&rogue, NOW, vec![]).unwrap();
        assert!(auths[0].on_vote(&vote, NOW).is_err());
        assert!(auths[0].on_sig(ids[1].public().id(), [0; 32], [0; 64]).is_err());
        assert!(
            auths[0]
                .on_sig(rogue.public().id(), [0; 32], sign_digest(&rogue, &[0; 32]))
                .is_err()
        );
    }
}
