//! The node table: every node record a node holds, checked, bounded, and
//! served back in pages (NLIST_REQ / NLIST_RES).
//!
//! Records are kept by node id in id order, so a page is "the next
//! records after this id" and the digest (BLAKE3 over the (id, seq)
//! pairs in that order, [`super::record::digest`]) says in 32 bytes
//! whether two nodes hold the same list. Anti-entropy is one request:
//! the asker sends its digest; equal digests get an empty answer,
//! different ones get pages until `next` is none.
//!
//! **Bounds.** At most [`TableConfig::max_records`] records. A full table
//! takes updates of records it holds and records of pinned nodes (this
//! node, paired and linked ones), and refuses other newcomers: a flood of
//! freshly minted identities can fill free room but never push out a
//! record already held; held records leave only when they expire. Pages
//! hold at most [`super::packet::MAX_PAGE`] records and fit one session
//! record.

use std::collections::{BTreeMap, HashSet};

use super::packet::{MAX_PAGE, NlistReq};
use super::record::{NodeRecord, RecordError, digest};
use crate::keys::NodeId;

/// What the table holds at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableConfig {
    /// Records held.
    pub max_records: usize,
}

impl Default for TableConfig {
    /// 10,000 records (about 5 MB at the largest record size; G7's budget
    /// of ≤ 2 KB per extra known record).
    fn default() -> Self {
        Self { max_records: 10_000 }
    }
}

/// What became of an offered record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Merge {
    /// A node the table did not hold.
    New(NodeId),
    /// A newer record of a node it held.
    Updated(NodeId),
    /// The record it holds already (same id and seq): gossip's echo.
    Duplicate,
    /// An older record than the one held: ignored.
    Older,
    /// The table is full and the node is not pinned.
    Full,
    /// The record does not check (forged, expired, from the future, malformed).
    Refused(RecordError),
}

impl Merge {
    /// Whether the table changed (and the record should be pushed on).
    pub fn changed(&self) -> Option<NodeId> {
        match self {
            Merge::New(id) | Merge::Updated(id) => Some(*id),
            _ => None,
        }
    }
}

struct Entry {
    bytes: Vec<u8>,
    record: NodeRecord,
}

/// The records a node holds.
pub struct NodeTable {
    cfg: TableConfig,
    entries: BTreeMap<NodeId, Entry>,
    pinned: HashSet<NodeId>,
    digest: Option<[u8; 32]>,
}

impl std::fmt::Debug for NodeTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTable")
            .field("records", &self.entries.len())
            .field("pinned", &self.pinned.len())
            .finish()
    }
}

impl NodeTable {
    /// An empty table.
    pub fn new(cfg: TableConfig) -> Self {
        Self {
            cfg,
            entries: BTreeMap::new(),
            pinned: HashSet::new(),
            digest: None,
        }
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Keeps room for `id` however full the table is (this node, paired
    /// and linked nodes).
    pub fn pin(&mut self, id: NodeId) {
        self.pinned.insert(id);
    }

    /// Stops keeping room for `id`.
    pub fn unpin(&mut self, id: &NodeId) {
        self.pinned.remove(id);
    }

    /// Offers a record (as received, signed) at `now` (Unix seconds).
    pub fn insert(&mut self, bytes: &[u8], now: u64) -> Merge {
        let rec = match NodeRecord::decode(bytes) {
            Ok(r) => r,
            Err(e) => return Merge::Refused(e.into()),
        };
        let id = rec.id();
        let held = self.entries.get(&id).map(|e| e.record.seq);
        match held {
            Some(h) if rec.seq == h => {
                // Same node, same seq: the same record unless forged; only
                // an identical byte string counts as the echo.
                return if self.entries.get(&id).is_some_and(|e| e.bytes == bytes) {
                    Merge::Duplicate
                } else {
                    Merge::Refused(RecordError::Stale {
                        got: rec.seq,
                        held: h,
                    })
                };
            }
            Some(h) if rec.seq < h => {
                return match rec.check_signature(bytes) {
                    Ok(()) => Merge::Older,
                    Err(e) => Merge::Refused(e),
                };
            }
            _ => {}
        }
        if let Err(e) = rec.check(bytes, now, held) {
            return Merge::Refused(e);
        }
        if held.is_none() && self.entries.len() >= self.cfg.max_records && !self.pinned.contains(&id) {
            return Merge::Full;
        }
        self.entries.insert(
            id,
            Entry {
                bytes: bytes.to_vec(),
                record: rec,
            },
        );
        self.digest = None;
        if held.is_some() {
            Merge::Updated(id)
        } else {
            Merge::New(id)
        }
    }

    /// Drops every record that ran out by `now`; returns their ids.
    pub fn expire(&mut self, now: u64) -> Vec<NodeId> {
        let gone: Vec<NodeId> = self
            .entries
            .iter()
            .filter(|(_, e)| e.record.expires <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in &gone {
            self.entries.remove(id);
        }
        if !gone.is_empty() {
            self.digest = None;
        }
        gone
    }

    /// The record of `id`.
    pub fn get(&self, id: &NodeId) -> Option<&NodeRecord> {
        self.entries.get(id).map(|e| &e.record)
    }

    /// The signed bytes of `id`'s record (to push it on).
    pub fn bytes(&self, id: &NodeId) -> Option<&[u8]> {
        self.entries.get(id).map(|e| e.bytes.as_slice())
    }

    /// Every record, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (&NodeId, &NodeRecord)> {
        self.entries.iter().map(|(id, e)| (id, &e.record))
    }

    /// The digest of what is held.
    pub fn digest(&mut self) -> [u8; 32] {
        if let Some(d) = self.digest {
            return d;
        }
        let d = digest(self.entries.iter().map(|(id, e)| (id, e.record.seq)));
        self.digest = Some(d);
        d
    }

    /// An NLIST_REQ for the page after `cursor`.
    pub fn request(&mut self, cursor: Option<NodeId>) -> NlistReq {
        NlistReq {
            digest: self.digest(),
            count: u32::try_from(self.entries.len()).unwrap_or(u32::MAX),
            cursor,
            max: MAX_PAGE as u16,
        }
    }

    /// The answer to `req`: records after its cursor, at most its `max`
    /// and [`MAX_PAGE`] of them in at most `budget` bytes (two bytes of
    /// length each included), and where the next page starts. Equal
    /// digests get nothing.
    pub fn page(&mut self, req: &NlistReq, budget: usize) -> (Vec<&[u8]>, Option<NodeId>) {
        if req.cursor.is_none() && req.digest == self.digest() {
            return (Vec::new(), None);
        }
        let max = usize::from(req.max).clamp(1, MAX_PAGE);
        let mut out = Vec::new();
        let mut used = 0;
        let range = match req.cursor {
            Some(c) => self
                .entries
                .range((std::ops::Bound::Excluded(c), std::ops::Bound::Unbounded)),
            None => self.entries.range(..),
        };
        let mut last = None;
        for (id, e) in range {
            if out.len() == max || used + 2 + e.bytes.len() > budget {
                return (out, last);
            }
            used += 2 + e.bytes.len();
            out.push(e.bytes.as_slice());
            last = Some(*id);
        }
        (out, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Identity;
    use crate::mesh::record::{Claims, MAX_TTL};
    use crate::random::seeded;

    const NOW: u64 = 1_000_000;

    fn rec(id: &Identity, seq: u64) -> Vec<u8> {
        NodeRecord::sign(
            id,
            &Claims {
                seq,
                issued: NOW,
                ttl: MAX_TTL,
                name: format!("n{seq}"),
                ..Claims::default()
            },
        )
        .unwrap()
    }

    fn ids(n: u8) -> Vec<Identity> {
        (0..n).map(|i| Identity::generate(&mut seeded(i))).collect()
    }

    #[test]
    fn newer_records_replace_older_and_echoes_are_duplicates() {
        let id = &ids(1)[0];
        let mut t = NodeTable::new(TableConfig::default());
        let nid = id.public().id();
        assert_eq!(t.insert(&rec(id, 1), NOW), Merge::New(nid));
        assert_eq!(t.insert(&rec(id, 1), NOW), Merge::Duplicate);
        assert_eq!(t.insert(&rec(id, 3), NOW), Merge::Updated(nid));
        assert_eq!(t.insert(&rec(id, 2), NOW), Merge::Older);
        assert_eq!(t.get(&nid).unwrap().seq, 3);
        let mut forged = rec(id, 4);
        forged[70] ^= 1;
        assert!(matches!(t.insert(&forged, NOW), Merge::Refused(_)));
        assert!(matches!(
            t.insert(&rec(id, 5), NOW + MAX_TTL),
            Merge::Refused(RecordError::Expired)
        ));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_full_table_keeps_what_it_holds_and_room_for_pinned_nodes() {
        let all = ids(6);
        let mut t = NodeTable::new(TableConfig { max_records: 3 });
        for id in &all[..3] {
            assert!(t.insert(&rec(id, 1), NOW).changed().is_some());
        }
        assert_eq!(
            t.insert(&rec(&all[3], 1), NOW),
            Merge::Full,
            "a newcomer is refused"
        );
        assert!(
            t.insert(&rec(&all[0], 2), NOW).changed().is_some(),
            "updates still go in"
        );
        t.pin(all[4].public().id());
        assert!(
            t.insert(&rec(&all[4], 1), NOW).changed().is_some(),
            "pinned nodes always fit"
        );
        assert_eq!(t.len(), 4);
        // Records leave when they run out, making room again.
        assert_eq!(t.expire(NOW + MAX_TTL).len(), 4);
        assert!(t.is_empty());
    }

    #[test]
    fn anti_entropy_pages_bring_two_tables_to_one_digest() {
        let all = ids(40);
        let (mut a, mut b) = (
            NodeTable::new(TableConfig::default()),
            NodeTable::new(TableConfig::default()),
        );
        for (i, id) in all.iter().enumerate() {
            if i % 3 != 0 {
                a.insert(&rec(id, 1), NOW);
            }
            if i % 2 == 0 {
                b.insert(&rec(id, 2), NOW);
            }
        }
        assert_ne!(a.digest(), b.digest());
        // A pulls from B, then B from A, in pages of at most 7 records / 2 KiB.
        fn pull(from: &mut NodeTable, to: &mut NodeTable) -> usize {
            let mut cursor = None;
            let mut pages = 0;
            loop {
                let mut req = to.request(cursor);
                req.max = 7;
                let (recs, next) = from.page(&req, 2048);
                let recs: Vec<Vec<u8>> = recs.into_iter().map(<[u8]>::to_vec).collect();
                assert!(recs.len() <= 7);
                assert!(recs.iter().map(|r| r.len() + 2).sum::<usize>() <= 2048);
                for r in &recs {
                    to.insert(r, NOW);
                }
                pages += 1;
                match next {
                    Some(n) => cursor = Some(n),
                    None => return pages,
                }
            }
        }
        assert!(pull(&mut b, &mut a) > 1);
        assert!(pull(&mut a, &mut b) > 1);
        assert_eq!(a.digest(), b.digest());
        let either = (0..all.len()).filter(|i| i % 3 != 0 || i % 2 == 0).count();
        assert_eq!(a.len(), either);
        assert!(a.iter().all(|(id, r)| b.get(id).is_some_and(|o| o.seq == r.seq)));
        // Equal digests: an empty answer.
        let req = a.request(None);
        assert_eq!(b.page(&req, 60_000), (Vec::new(), None));
    }
}
