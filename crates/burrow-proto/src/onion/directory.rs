//! The directory: the seed's "main controller", made several authorities
//! that must agree. Node descriptors, the authorities' votes, and the
//! signed node list (consensus) clients fetch whole.
//!
//! Flow (names from the seed where it has them):
//!
//! ```text
//! node ──REGISTER(descriptor)──▶ each authority    "get their public IP and send it to the main controller":
//!      ◀──────── observed address                  the authority tells the node the address it sees,
//!                                                  the node signs a descriptor with it and registers again
//! authority ──(link handshake to the address)──▶ node       reachability: only then Running
//! authority ──VOTE(signed list of what it saw)──▶ other authorities
//! every authority: consensus = nodes listed by more than half of all authorities, from the same votes
//! authority ──SIG(digest)──▶ other authorities; the list is served with every signature collected
//! client ──GET list──▶ any authority: checks > half of its pinned authorities signed this exact body
//! operator ──LOOKUP(node id)──▶ authority: address and keys (clients never look nodes up one by one)
//! ```
//!
//! ```text
//! descriptor = version:u8 (1) | ed25519:[32] | x25519:[32]    the node's identity (node id = fingerprint)
//!            | onion_key:[32]                                  X25519 for circuit handshakes
//!            | published:u64 | expires:u64                     Unix seconds (expires ≤ published + MAX_DESCRIPTOR_TTL)
//!            | name: len:u8 (≤ 63) + UTF-8 (untrusted)
//!            | addrs: count:u8 (≤ 4) × (kind:u8 4|6, ip, port:u16)
//!            | family: count:u8 (≤ 8) × node id:[15]
//!            | exit ports: count:u8 (≤ 16) × (lo:u16, hi:u16)  accepted destination ports; none: not an exit
//!            | bandwidth:u32                                   bytes/s it offers (path weight)
//!            | sig:[64]                                        Ed25519 over "burrow onion descriptor v1" ‖ the above
//! entry      = flags:u8 (Status) | len:u16 | descriptor
//! vote       = version:u8 (1) | authority:[15] | published:u64 | count:u16 (≤ MAX_NODES) × entry | sig:[64]
//!              (over "burrow onion vote v1" ‖ the above)
//! list body  = version:u8 (1) | valid_after:u64 | fresh_until:u64 | valid_until:u64 | count:u16 × entry
//!              (entries sorted by node id, each id once)
//! list       = body_len:u32 | body | count:u8 (≤ MAX_AUTHORITIES) × (authority:[15] | sig:[64])
//!              (each over "burrow onion node list v1" ‖ BLAKE3(body) — the digest)
//! ```
//!
//! A client accepts a list only if more than half of the authorities it
//! pins signed its body ([`NodeList::verify`]): one rogue authority can
//! sign whatever it likes and still never reaches a majority, and an
//! entry edited after signing changes the digest every signature covers.
//! Consensus is a pure function of the votes ([`consensus`]): authorities
//! that hold the same votes compute the same bytes, sign the same digest,
//! and their signatures add up.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use thiserror::Error;

use super::handshake::DIGEST_LEN;
use crate::keys::{Identity, NodeId, PublicIdentity};
use crate::wire::{DecodeError, EncodeError, Reader, Writer};

/// Format version of descriptors, votes and lists.
pub const VERSION: u8 = 1;
/// Longest encoded descriptor.
pub const MAX_DESCRIPTOR_LEN: usize = 640;
/// Longest validity of a descriptor (seconds): nodes re-register well before.
pub const MAX_DESCRIPTOR_TTL: u64 = 3 * 3600;
/// Most addresses in a descriptor.
pub const MAX_ADDRS: usize = 4;
/// Most family members a descriptor declares.
pub const MAX_FAMILY: usize = 8;
/// Most accepted port ranges in an exit policy.
pub const MAX_EXIT_RANGES: usize = 16;
/// Longest node name.
pub const MAX_NAME: usize = 63;
/// Most nodes in a vote or a list.
pub const MAX_NODES: usize = 4096;
/// Most authorities a list carries signatures of.
pub const MAX_AUTHORITIES: usize = 16;
/// Longest list body (every node at the longest descriptor).
pub const MAX_LIST_LEN: usize = 25 + MAX_NODES * (3 + MAX_DESCRIPTOR_LEN);
/// How far a timestamp may be in the future (clock skew).
pub const MAX_SKEW: u64 = 300;

const DESCRIPTOR_CONTEXT: &[u8] = b"burrow onion descriptor v1";
const VOTE_CONTEXT: &[u8] = b"burrow onion vote v1";
const LIST_CONTEXT: &[u8] = b"burrow onion node list v1";

/// What the authorities say about a node in a vote or list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Status(pub u8);

impl Status {
    /// Reachable when the authority last tried.
    pub const RUNNING: u8 = 1;
    /// Its descriptor checked out.
    pub const VALID: u8 = 2;
    /// Fit to be a client's first hop.
    pub const GUARD: u8 = 4;
    /// It lets circuits out (its descriptor has exit ports).
    pub const EXIT: u8 = 8;
    /// Up for a while.
    pub const STABLE: u8 = 16;

    /// Whether `bit` is set.
    pub fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }
}

/// Why a directory document was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DirError {
    /// It does not decode.
    #[error("malformed directory document: {0}")]
    Malformed(#[from] DecodeError),
    /// A field does not fit the format.
    #[error("cannot encode: {0}")]
    Encode(#[from] EncodeError),
    /// A signature does not check.
    #[error("bad signature on {0}")]
    BadSignature(&'static str),
    /// Expired, or from the future.
    #[error("{0} is not valid now")]
    NotValidNow(&'static str),
    /// Too few of the pinned authorities signed the list.
    #[error("node list signed by {got} of {pinned} pinned authorities (more than half needed)")]
    NoMajority {
        /// Valid signatures from pinned authorities.
        got: usize,
        /// Authorities pinned.
        pinned: usize,
    },
    /// Entries out of order or repeated.
    #[error("node list entries not sorted by node id, or repeated")]
    Unsorted,
}

/// The fields a node signs about itself for the directory.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DescriptorClaims {
    /// Its onion key.
    pub onion_key: [u8; 32],
    /// Unix seconds now.
    pub published: u64,
    /// Validity (at most [`MAX_DESCRIPTOR_TTL`]).
    pub ttl: u64,
    /// Its name.
    pub name: String,
    /// Its addresses (the one the directory observed first).
    pub addrs: Vec<SocketAddr>,
    /// Nodes run by the same operator.
    pub family: Vec<NodeId>,
    /// Destination ports it lets circuits out to (inclusive ranges).
    pub exit_ports: Vec<(u16, u16)>,
    /// Bytes per second it offers.
    pub bandwidth: u32,
}

/// A decoded descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// The node's identity keys.
    pub keys: PublicIdentity,
    /// What it signed.
    pub claims: DescriptorClaims,
    /// Expiry (Unix seconds).
    pub expires: u64,
}

fn write_addrs(w: &mut Writer<'_>, addrs: &[SocketAddr]) {
    w.u8(addrs.len() as u8);
    for a in addrs {
        w.socket_addr(a);
    }
}

fn read_count(r: &mut Reader<'_>, what: &'static str, max: usize) -> Result<usize, DecodeError> {
    let n = usize::from(r.u8()?);
    if n > max {
        return Err(DecodeError::TooLong { what, len: n, max });
    }
    Ok(n)
}

impl Descriptor {
    /// The node's id.
    pub fn id(&self) -> NodeId {
        self.keys.id()
    }

    /// Signs `claims` with the node's identity: the descriptor's bytes.
    pub fn sign(identity: &Identity, claims: &DescriptorClaims) -> Result<Vec<u8>, DirError> {
        let too_long = |what, len, max| DirError::Encode(EncodeError { what, len, max });
        if claims.ttl > MAX_DESCRIPTOR_TTL {
            return Err(too_long(
                "descriptor lifetime",
                claims.ttl as usize,
                MAX_DESCRIPTOR_TTL as usize,
            ));
        }
        if claims.addrs.len() > MAX_ADDRS {
            return Err(too_long("descriptor addresses", claims.addrs.len(), MAX_ADDRS));
        }
        if claims.family.len() > MAX_FAMILY {
            return Err(too_long("family", claims.family.len(), MAX_FAMILY));
        }
        if claims.exit_ports.len() > MAX_EXIT_RANGES {
            return Err(too_long("exit ports", claims.exit_ports.len(), MAX_EXIT_RANGES));
        }
        let keys = identity.public();
        let mut out = Vec::with_capacity(MAX_DESCRIPTOR_LEN);
        let mut w = Writer::new(&mut out);
        w.u8(VERSION)
            .bytes(&keys.ed25519)
            .bytes(&keys.x25519)
            .bytes(&claims.onion_key)
            .u64(claims.published)
            .u64(claims.published.saturating_add(claims.ttl))
            .bytes_u8("node name", MAX_NAME, claims.name.as_bytes())?;
        write_addrs(&mut w, &claims.addrs);
        w.u8(claims.family.len() as u8);
        for f in &claims.family {
            w.bytes(&f.0);
        }
        w.u8(claims.exit_ports.len() as u8);
        for (lo, hi) in &claims.exit_ports {
            w.u16(*lo).u16(*hi);
        }
        w.u32(claims.bandwidth);
        let sig = identity.sign(&[DESCRIPTOR_CONTEXT, &out].concat());
        out.extend_from_slice(&sig);
        Ok(out)
    }

    /// Decodes and checks the signature (not the times: [`Descriptor::is_valid_at`]).
    pub fn verify(b: &[u8]) -> Result<Self, DirError> {
        if b.len() > MAX_DESCRIPTOR_LEN || b.len() < 64 {
            return Err(DecodeError::TooLong {
                what: "descriptor",
                len: b.len(),
                max: MAX_DESCRIPTOR_LEN,
            }
            .into());
        }
        let mut r = Reader::new(b);
        let v = r.u8()?;
        if v != VERSION {
            return Err(DecodeError::Unknown {
                what: "descriptor version",
                value: u64::from(v),
            }
            .into());
        }
        let ed25519 = r.array()?;
        let x25519 = r.array()?;
        let onion_key = r.array()?;
        let published = r.u64()?;
        let expires = r.u64()?;
        let name = r.str_u8("node name", MAX_NAME)?.to_owned();
        let n = read_count(&mut r, "descriptor addresses", MAX_ADDRS)?;
        let mut addrs = Vec::with_capacity(n);
        for _ in 0..n {
            addrs.push(r.socket_addr()?);
        }
        let n = read_count(&mut r, "family", MAX_FAMILY)?;
        let family = (0..n)
            .map(|_| r.array().map(NodeId))
            .collect::<Result<Vec<_>, _>>()?;
        let n = read_count(&mut r, "exit ports", MAX_EXIT_RANGES)?;
        let exit_ports = (0..n)
            .map(|_| Ok((r.u16()?, r.u16()?)))
            .collect::<Result<Vec<_>, DecodeError>>()?;
        let bandwidth = r.u32()?;
        let signed_len = b.len() - r.remaining();
        let sig = r.array::<64>()?;
        r.finish()?;
        let keys = PublicIdentity { x25519, ed25519 };
        if !keys.verify(&[DESCRIPTOR_CONTEXT, &b[..signed_len]].concat(), &sig) {
            return Err(DirError::BadSignature("descriptor"));
        }
        if expires < published || expires - published > MAX_DESCRIPTOR_TTL {
            return Err(DirError::NotValidNow("descriptor"));
        }
        Ok(Self {
            keys,
            claims: DescriptorClaims {
                onion_key,
                published,
                ttl: expires - published,
                name,
                addrs,
                family,
                exit_ports,
                bandwidth,
            },
            expires,
        })
    }

    /// Whether it is valid at `now` (published not in the future beyond
    /// [`MAX_SKEW`], not expired).
    pub fn is_valid_at(&self, now: u64) -> bool {
        self.claims.published <= now.saturating_add(MAX_SKEW) && now < self.expires
    }

    /// Whether its exit policy lets circuits out to `port`.
    pub fn allows_port(&self, port: u16) -> bool {
        self.claims
            .exit_ports
            .iter()
            .any(|&(lo, hi)| lo <= port && port <= hi)
    }

    /// Whether it offers to be an exit at all.
    pub fn is_exit(&self) -> bool {
        !self.claims.exit_ports.is_empty()
    }
}

/// One node in a vote or list: what the authorities say, and its descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Flags.
    pub status: Status,
    /// The descriptor's bytes (as signed by the node).
    pub raw: Vec<u8>,
    /// The descriptor, decoded.
    pub descriptor: Descriptor,
}

impl Entry {
    /// The node's id.
    pub fn id(&self) -> NodeId {
        self.descriptor.id()
    }

    fn write(&self, w: &mut Writer<'_>) {
        w.u8(self.status.0).u16(self.raw.len() as u16).bytes(&self.raw);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DirError> {
        let status = Status(r.u8()?);
        let raw = r.bytes_u16("descriptor", MAX_DESCRIPTOR_LEN)?.to_vec();
        let descriptor = Descriptor::verify(&raw)?;
        Ok(Self {
            status,
            raw,
            descriptor,
        })
    }
}

fn read_entries(r: &mut Reader<'_>) -> Result<Vec<Entry>, DirError> {
    let n = usize::from(r.u16()?);
    if n > MAX_NODES {
        return Err(DecodeError::TooLong {
            what: "node count",
            len: n,
            max: MAX_NODES,
        }
        .into());
    }
    // Each entry takes at least 3 + 64 bytes: the count cannot make the
    // decoder reserve more than the input could hold.
    let mut out = Vec::with_capacity(n.min(r.remaining() / 67));
    for _ in 0..n {
        out.push(Entry::read(r)?);
    }
    if out.windows(2).any(|w| w[0].id() >= w[1].id()) {
        return Err(DirError::Unsorted);
    }
    Ok(out)
}

/// An authority's vote: the nodes it found, signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vote {
    /// Who voted.
    pub authority: NodeId,
    /// When (Unix seconds).
    pub published: u64,
    /// What it saw, sorted by node id.
    pub entries: Vec<Entry>,
}

impl Vote {
    /// Signs a vote with the authority's identity (entries are sorted here).
    pub fn sign(identity: &Identity, published: u64, mut entries: Vec<Entry>) -> Result<Vec<u8>, DirError> {
        entries.sort_by_key(Entry::id);
        entries.dedup_by_key(|e| e.id());
        if entries.len() > MAX_NODES {
            return Err(EncodeError {
                what: "vote entries",
                len: entries.len(),
                max: MAX_NODES,
            }
            .into());
        }
        let mut out = Vec::new();
        let mut w = Writer::new(&mut out);
        w.u8(VERSION)
            .bytes(&identity.public().id().0)
            .u64(published)
            .u16(entries.len() as u16);
        for e in &entries {
            e.write(&mut w);
        }
        let sig = identity.sign(&[VOTE_CONTEXT, &out].concat());
        out.extend_from_slice(&sig);
        Ok(out)
    }

    /// Decodes a vote and checks it was signed by one of `authorities`.
    pub fn verify(b: &[u8], authorities: &[PublicIdentity]) -> Result<Self, DirError> {
        if b.len() > MAX_LIST_LEN + 88 {
            return Err(DecodeError::TooLong {
                what: "vote",
                len: b.len(),
                max: MAX_LIST_LEN + 88,
            }
            .into());
        }
        let mut r = Reader::new(b);
        let v = r.u8()?;
        if v != VERSION {
            return Err(DecodeError::Unknown {
                what: "vote version",
                value: u64::from(v),
            }
            .into());
        }
        let authority = NodeId(r.array()?);
        let published = r.u64()?;
        let key = authorities
            .iter()
            .find(|a| a.id() == authority)
            .ok_or(DirError::BadSignature("vote"))?;
        let entries = read_entries(&mut r)?;
        let signed_len = b.len() - r.remaining();
        let sig = r.array::<64>()?;
        r.finish()?;
        if !key.verify(&[VOTE_CONTEXT, &b[..signed_len]].concat(), &sig) {
            return Err(DirError::BadSignature("vote"));
        }
        Ok(Self {
            authority,
            published,
            entries,
        })
    }
}

/// The signed node list clients use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeList {
    /// From when (Unix seconds).
    pub valid_after: u64,
    /// A newer list is expected from then on.
    pub fresh_until: u64,
    /// Not usable after.
    pub valid_until: u64,
    /// The nodes, sorted by id.
    pub entries: Vec<Entry>,
    /// BLAKE3 of the body: what every signature covers, and what circuit
    /// handshakes bind to.
    pub digest: [u8; DIGEST_LEN],
}

/// The body of a list (what authorities sign), and its digest.
pub fn list_body(
    valid_after: u64,
    fresh_until: u64,
    valid_until: u64,
    entries: &[Entry],
) -> (Vec<u8>, [u8; DIGEST_LEN]) {
    let mut out = Vec::new();
    let mut w = Writer::new(&mut out);
    w.u8(VERSION)
        .u64(valid_after)
        .u64(fresh_until)
        .u64(valid_until)
        .u16(entries.len() as u16);
    for e in entries {
        e.write(&mut w);
    }
    let digest = *blake3::hash(&out).as_bytes();
    (out, digest)
}

/// An authority's signature on a list digest.
pub fn sign_digest(identity: &Identity, digest: &[u8; DIGEST_LEN]) -> [u8; 64] {
    identity.sign(&[LIST_CONTEXT, &digest[..]].concat())
}

/// Whether `sig` is `authority`'s signature on `digest`.
pub fn check_digest(authority: &PublicIdentity, digest: &[u8; DIGEST_LEN], sig: &[u8; 64]) -> bool {
    authority.verify(&[LIST_CONTEXT, &digest[..]].concat(), sig)
}

/// The list as served: the body and the signatures collected for it.
pub fn encode_list(body: &[u8], sigs: &[(NodeId, [u8; 64])]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5 + sigs.len() * 79);
    let mut w = Writer::new(&mut out);
    w.u32(body.len() as u32)
        .bytes(body)
        .u8(sigs.len().min(MAX_AUTHORITIES) as u8);
    for (id, sig) in sigs.iter().take(MAX_AUTHORITIES) {
        w.bytes(&id.0).bytes(sig);
    }
    out
}

impl NodeList {
    /// Decodes a list and accepts it only if more than half of the
    /// `authorities` (the client's pinned keys) signed its body, and it is
    /// valid at `now`.
    pub fn verify(b: &[u8], authorities: &[PublicIdentity], now: u64) -> Result<Self, DirError> {
        Self::verify_among(b, authorities, authorities.len(), now)
    }

    /// [`NodeList::verify`] when only some of the `total` pinned
    /// authorities' keys are known: more than half of `total` must have
    /// signed (an authority whose key is unknown signs nothing).
    pub fn verify_among(
        b: &[u8],
        authorities: &[PublicIdentity],
        total: usize,
        now: u64,
    ) -> Result<Self, DirError> {
        let total = total.max(authorities.len());
        let mut r = Reader::new(b);
        let len = r.u32()? as usize;
        if len > MAX_LIST_LEN {
            return Err(DecodeError::TooLong {
                what: "node list",
                len,
                max: MAX_LIST_LEN,
            }
            .into());
        }
        let body = r.bytes(len)?;
        let digest = *blake3::hash(body).as_bytes();
        let n = read_count(&mut r, "signatures", MAX_AUTHORITIES)?;
        let mut signed: Vec<NodeId> = Vec::new();
        for _ in 0..n {
            let id = NodeId(r.array()?);
            let sig = r.array::<64>()?;
            if signed.contains(&id) {
                continue;
            }
            if let Some(a) = authorities.iter().find(|a| a.id() == id)
                && check_digest(a, &digest, &sig)
            {
                signed.push(id);
            }
        }
        r.finish()?;
        if signed.len() * 2 <= total {
            return Err(DirError::NoMajority {
                got: signed.len(),
                pinned: total,
            });
        }
        let mut br = Reader::new(body);
        let v = br.u8()?;
        if v != VERSION {
            return Err(DecodeError::Unknown {
                what: "node list version",
                value: u64::from(v),
            }
            .into());
        }
        let valid_after = br.u64()?;
        let fresh_until = br.u64()?;
        let valid_until = br.u64()?;
        let entries = read_entries(&mut br)?;
        br.finish()?;
        if valid_after > now.saturating_add(MAX_SKEW) || now >= valid_until {
            return Err(DirError::NotValidNow("node list"));
        }
        Ok(Self {
            valid_after,
            fresh_until,
            valid_until,
            entries,
            digest,
        })
    }

    /// The entry of `id` (the seed's lookup: address and public key).
    pub fn lookup(&self, id: &NodeId) -> Option<&Entry> {
        self.entries
            .binary_search_by_key(id, Entry::id)
            .ok()
            .map(|i| &self.entries[i])
    }
}

/// The consensus of `votes` among `total` configured authorities: the
/// nodes more than half of all authorities listed (with the descriptor
/// most of them hold; ties go to the newer, then the smaller bytes), each
/// flag set where more than half of those listing it set it. Valid from
/// the newest vote's time for `lifetime` seconds (fresh for a third).
/// The same votes give the same bytes on every authority.
pub fn consensus(votes: &[Vote], total: usize, lifetime: u64) -> (Vec<u8>, [u8; DIGEST_LEN]) {
    let valid_after = votes.iter().map(|v| v.published).max().unwrap_or(0);
    let mut by_node: BTreeMap<NodeId, Vec<&Entry>> = BTreeMap::new();
    for v in votes {
        for e in &v.entries {
            by_node.entry(e.id()).or_default().push(e);
        }
    }
    let mut entries = Vec::new();
    for listed in by_node.values() {
        if listed.len() * 2 <= total {
            continue;
        }
        let mut counts: HashMap<&[u8], (usize, &Entry)> = HashMap::new();
        for e in listed {
            counts.entry(&e.raw[..]).or_insert((0, e)).0 += 1;
        }
        let best = counts
            .values()
            .max_by(|a, b| {
                a.0.cmp(&b.0)
                    .then(
                        a.1.descriptor
                            .claims
                            .published
                            .cmp(&b.1.descriptor.claims.published),
                    )
                    .then(b.1.raw.cmp(&a.1.raw))
            })
            .map(|(_, e)| *e);
        let Some(best) = best else { continue };
        let mut status = 0u8;
        for bit in [
            Status::RUNNING,
            Status::VALID,
            Status::GUARD,
            Status::EXIT,
            Status::STABLE,
        ] {
            if listed.iter().filter(|e| e.status.has(bit)).count() * 2 > listed.len() {
                status |= bit;
            }
        }
        entries.push(Entry {
            status: Status(status),
            raw: best.raw.clone(),
            descriptor: best.descriptor.clone(),
        });
    }
    list_body(
        valid_after,
        valid_after + lifetime / 3,
        valid_after + lifetime,
        &entries,
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::random::seeded;

    pub(crate) const NOW: u64 = 1_800_000_000;

    pub(crate) fn claims(i: u8) -> DescriptorClaims {
        DescriptorClaims {
            onion_key: [i; 32],
            published: NOW,
            ttl: 3600,
            name: format!("node{i}"),
            addrs: vec![SocketAddr::new(std::net::IpAddr::from([10, i, 0, 1]), 9010)],
            family: vec![],
            exit_ports: if i.is_multiple_of(2) {
                vec![(80, 80), (443, 443)]
            } else {
                vec![]
            },
            bandwidth: 1_000_000,
        }
    }

    pub(crate) fn entry(id: &Identity, c: &DescriptorClaims, status: u8) -> Entry {
        let raw = Descriptor::sign(id, c).unwrap();
        Entry {
            status: Status(status),
            descriptor: Descriptor::verify(&raw).unwrap(),
            raw,
        }
    }

    const ALL: u8 = Status::RUNNING | Status::VALID | Status::GUARD;

    #[test]
    fn descriptors_sign_verify_and_refuse_forgery() {
        let id = Identity::generate(&mut seeded(1));
        let mut c = claims(2);
        c.family = vec![NodeId([3; 15])];
        let raw = Descriptor::sign(&id, &c).unwrap();
        assert!(raw.len() <= MAX_DESCRIPTOR_LEN);
        let d = Descriptor::verify(&raw).unwrap();
        assert_eq!(d.claims, c);
        assert_eq!(d.id(), id.public().id());
        assert!(d.allows_port(443) && !d.allows_port(25));
        assert!(d.is_valid_at(NOW + 10) && !d.is_valid_at(NOW + 3600));
        for i in 0..raw.len() {
            let mut bad = raw.clone();
            bad[i] ^= 0x20;
            assert!(
                Descriptor::verify(&bad).is_err(),
                "byte {i} flipped still verifies"
            );
        }
        // The longest descriptor fits.
        let mut big = claims(4);
        big.name = "n".repeat(MAX_NAME);
        big.addrs = vec!["[fd00::1]:1".parse().unwrap(); MAX_ADDRS];
        big.family = vec![NodeId([1; 15]); MAX_FAMILY];
        big.exit_ports = vec![(1, 2); MAX_EXIT_RANGES];
        assert!(Descriptor::sign(&id, &big).unwrap().len() <= MAX_DESCRIPTOR_LEN);
        big.family.push(NodeId([1; 15]));
        assert!(Descriptor::sign(&id, &big).is_err());
    }

    pub(crate) struct Dir {
        pub(crate) authorities: Vec<Identity>,
        pub(crate) nodes: Vec<Identity>,
    }

    impl Dir {
        pub(crate) fn new(a: usize, n: usize) -> Self {
            let mut rng = seeded(5);
            Self {
                authorities: (0..a).map(|_| Identity::generate(&mut rng)).collect(),
                nodes: (0..n).map(|_| Identity::generate(&mut rng)).collect(),
            }
        }

        pub(crate) fn pinned(&self) -> Vec<PublicIdentity> {
            self.authorities.iter().map(Identity::public).collect()
        }

        /// A vote by authority `a` listing `nodes`.
        pub(crate) fn vote(&self, a: usize, nodes: &[usize]) -> Vote {
            let entries = nodes
                .iter()
                .map(|&i| entry(&self.nodes[i], &claims(i as u8), ALL))
                .collect();
            let raw = Vote::sign(&self.authorities[a], NOW, entries).unwrap();
            Vote::verify(&raw, &self.pinned()).unwrap()
        }

        /// The list of these votes signed by `signers`.
        pub(crate) fn list(&self, votes: &[Vote], signers: &[usize]) -> Vec<u8> {
            let (body, digest) = consensus(votes, self.authorities.len(), 3600);
            let sigs: Vec<_> = signers
                .iter()
                .map(|&a| {
                    (
                        self.authorities[a].public().id(),
                        sign_digest(&self.authorities[a], &digest),
                    )
                })
                .collect();
            encode_list(&body, &sigs)
        }
    }

    #[test]
    fn a_list_needs_more_than_half_of_the_pinned_authorities() {
        let d = Dir::new(3, 4);
        let votes = [
            d.vote(0, &[0, 1, 2, 3]),
            d.vote(1, &[0, 1, 2, 3]),
            d.vote(2, &[0, 1, 2, 3]),
        ];
        let pinned = d.pinned();
        let list = NodeList::verify(&d.list(&votes, &[0, 1]), &pinned, NOW).unwrap();
        assert_eq!(list.entries.len(), 4);
        assert!(list.lookup(&d.nodes[2].public().id()).is_some());
        assert_eq!(
            NodeList::verify(&d.list(&votes, &[2]), &pinned, NOW),
            Err(DirError::NoMajority { got: 1, pinned: 3 })
        );
        // The same signature twice counts once.
        let (body, digest) = consensus(&votes, 3, 3600);
        let s = (
            d.authorities[0].public().id(),
            sign_digest(&d.authorities[0], &digest),
        );
        assert!(matches!(
            NodeList::verify(&encode_list(&body, &[s, s]), &pinned, NOW),
            Err(DirError::NoMajority { got: 1, .. })
        ));
        // A signature by a key the client does not pin counts for nothing.
        let rogue = Identity::generate(&mut seeded(77));
        let r = (rogue.public().id(), sign_digest(&rogue, &digest));
        assert!(NodeList::verify(&encode_list(&body, &[s, r]), &pinned, NOW).is_err());
        // Out of its validity.
        assert_eq!(
            NodeList::verify(&d.list(&votes, &[0, 1]), &pinned, NOW + 3600),
            Err(DirError::NotValidNow("node list"))
        );
    }

    /// Three pinned, one key unknown (its authority is down): two
    /// signatures still make a majority of three, one does not, and a
    /// "signature" for the unknown one counts for nothing (no placeholder
    /// key it could verify under).
    #[test]
    fn a_majority_counts_every_pinned_authority_known_or_not() {
        let d = Dir::new(3, 2);
        let votes = [d.vote(0, &[0, 1]), d.vote(1, &[0, 1])];
        let known = &d.pinned()[..2];
        assert!(NodeList::verify_among(&d.list(&votes, &[0, 1]), known, 3, NOW).is_ok());
        assert_eq!(
            NodeList::verify_among(&d.list(&votes, &[0]), known, 3, NOW),
            Err(DirError::NoMajority { got: 1, pinned: 3 })
        );
        let (body, digest) = consensus(&votes, 3, 3600);
        let one = (
            d.authorities[0].public().id(),
            sign_digest(&d.authorities[0], &digest),
        );
        let forged = (d.authorities[2].public().id(), [0u8; 64]);
        assert!(matches!(
            NodeList::verify_among(&encode_list(&body, &[one, forged]), known, 3, NOW),
            Err(DirError::NoMajority { got: 1, .. })
        ));
    }

    #[test]
    fn an_entry_edited_after_signing_is_refused() {
        let d = Dir::new(3, 3);
        let votes = [d.vote(0, &[0, 1, 2]), d.vote(1, &[0, 1, 2])];
        let good = d.list(&votes, &[0, 1, 2]);
        assert!(NodeList::verify(&good, &d.pinned(), NOW).is_ok());
        // Flip a status bit, an address byte, a time: each breaks every signature.
        for at in [4 + 1 + 24 + 2, 4 + 1 + 24 + 2 + 3 + 120, 4 + 3] {
            let mut bad = good.clone();
            bad[at] ^= 0x04;
            assert!(
                NodeList::verify(&bad, &d.pinned(), NOW).is_err(),
                "edit at {at} accepted"
            );
        }
        // With two signatures of three, one altered signature leaves no majority.
        let mut two = d.list(&votes, &[0, 1]);
        let last = two.len() - 1;
        two[last] ^= 1;
        assert!(matches!(
            NodeList::verify(&two, &d.pinned(), NOW),
            Err(DirError::NoMajority { got: 1, .. })
        ));
    }

    #[test]
    fn one_rogue_authority_cannot_add_nodes() {
        let d = Dir::new(3, 5);
        // Authorities 0 and 1 saw nodes 0..3; the rogue (2) also lists 3 and 4.
        let votes = [
            d.vote(0, &[0, 1, 2]),
            d.vote(1, &[0, 1, 2]),
            d.vote(2, &[0, 1, 2, 3, 4]),
        ];
        let (body, _) = consensus(&votes, 3, 3600);
        let list = NodeList::verify(&d.list(&votes, &[0, 1, 2]), &d.pinned(), NOW).unwrap();
        assert_eq!(list.entries.len(), 3, "only nodes listed by a majority");
        // The rogue's own list with its extra nodes gets only its signature.
        let (rbody, rdigest) = list_body(NOW, NOW + 1200, NOW + 3600, &votes[2].entries);
        assert_ne!(rbody, body);
        let sig = (
            d.authorities[2].public().id(),
            sign_digest(&d.authorities[2], &rdigest),
        );
        assert!(matches!(
            NodeList::verify(&encode_list(&rbody, &[sig]), &d.pinned(), NOW),
            Err(DirError::NoMajority { .. })
        ));
    }

    #[test]
    fn the_same_votes_give_the_same_bytes_in_any_order() {
        let d = Dir::new(3, 4);
        let a = [d.vote(0, &[0, 1]), d.vote(1, &[1, 2, 3]), d.vote(2, &[0, 1, 3])];
        let b = [a[2].clone(), a[0].clone(), a[1].clone()];
        assert_eq!(consensus(&a, 3, 3600), consensus(&b, 3, 3600));
        let (body, _) = consensus(&a, 3, 3600);
        let list = NodeList::verify(&encode_list(&body, &[]), &[], NOW);
        // No authorities pinned: nothing is a majority of nothing... and
        // the list is refused rather than trusted.
        assert!(list.is_err());
    }

    #[test]
    fn votes_from_unknown_authorities_or_altered_are_refused() {
        let d = Dir::new(2, 2);
        let e = vec![entry(&d.nodes[0], &claims(0), ALL)];
        let raw = Vote::sign(&d.authorities[0], NOW, e).unwrap();
        assert!(Vote::verify(&raw, &d.pinned()[1..]).is_err());
        let mut bad = raw.clone();
        bad[20] ^= 1;
        assert!(Vote::verify(&bad, &d.pinned()).is_err());
    }
}
