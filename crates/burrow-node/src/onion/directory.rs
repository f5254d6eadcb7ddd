//! `burrow directory`: one directory authority (the seed's "main
//! controller"), a thin driver of [`burrow_proto::onion::authority`].
//!
//! HTTP/1.1, one request per connection:
//!
//! | request | answer |
//! |---|---|
//! | `GET /onion/key` | this authority's keys: `ed25519-hex x25519-hex` (clients check them against the fingerprint they pin) |
//! | `GET /onion/whoami` | the address the request came from (the seed's "get their public IP") |
//! | `POST /onion/register` | a signed descriptor; 200 once accepted (reachability is checked next), 400 with the reason |
//! | `GET /onion/list` | the node list with every signature collected (503 until a majority signed one) |
//! | `GET /onion/digest` | that list's digest, hex (nodes poll it, and fetch the list when it changed) |
//! | `GET /onion/node/FINGERPRINT` | the seed's lookup: address and keys of one node, JSON (for operators) |
//! | `POST /onion/vote` | a peer authority's signed vote |
//! | `POST /onion/sig` | a peer's signature: `authority id:[15] ‖ digest:[32] ‖ sig:[64]` |
//!
//! Bounded like the relay: connections in all and per address, requests
//! per second per address, body sizes per route; a bad request gets its
//! reason and the connection is closed, everyone else is served.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

use burrow_proto::keys::{NodeId, PublicIdentity};
use burrow_proto::onion::authority::{Authority, AuthorityConfig};
use burrow_proto::onion::directory::{MAX_DESCRIPTOR_LEN, MAX_LIST_LEN};
use burrow_proto::transfer::escape_display;

use super::http::{read_request, request, respond, share_of};
use crate::error::Error;
use crate::keys::identity::Identity;
use crate::mesh::unix_now;
use crate::tunnel::Log;

/// An authority as configured: `FINGERPRINT@HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryAddr {
    /// Its node id (the fingerprint `burrow id` prints there).
    pub id: NodeId,
    /// Where it listens.
    pub addr: String,
}

impl FromStr for DirectoryAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (fp, addr) = s
            .split_once('@')
            .ok_or_else(|| format!("{s:?}: a directory is FINGERPRINT@HOST:PORT"))?;
        let id =
            NodeId::parse(fp).ok_or_else(|| format!("{fp:?} is not a fingerprint (burrow id prints it)"))?;
        if !addr.contains(':') {
            return Err(format!("{addr:?}: a directory address is HOST:PORT"));
        }
        Ok(Self {
            id,
            addr: addr.to_owned(),
        })
    }
}

impl std::fmt::Display for DirectoryAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.id, self.addr)
    }
}

/// Fetches an authority's keys and checks them against its fingerprint.
pub(crate) async fn fetch_keys(d: &DirectoryAddr) -> Result<PublicIdentity, Error> {
    let r = request(&d.addr, "GET", "/onion/key", None).await?;
    let text = String::from_utf8_lossy(&r.body);
    let mut parts = text.split_whitespace();
    let mut key = || -> Option<[u8; 32]> { hex::decode(parts.next()?).ok()?.try_into().ok() };
    let (ed25519, x25519) = match (r.status, key(), key()) {
        (200, Some(e), Some(x)) => (e, x),
        _ => {
            return Err(Error::Protocol(format!(
                "{} did not answer with its keys",
                d.addr
            )));
        }
    };
    let keys = PublicIdentity { x25519, ed25519 };
    if keys.id() != d.id {
        return Err(Error::Integrity(format!(
            "the directory at {} is {}, not the pinned {}",
            d.addr,
            keys.id(),
            d.id
        )));
    }
    Ok(keys)
}

/// What `burrow directory` runs with.
pub struct DirectoryConfig {
    /// This authority's identity.
    pub me: Arc<Identity>,
    /// Where it listens.
    pub listen: SocketAddr,
    /// The other authorities.
    pub peers: Vec<DirectoryAddr>,
    /// How long a node list is valid.
    pub lifetime: Duration,
    /// Nodes per registering address.
    pub max_per_ip: usize,
    /// Lines for the operator.
    pub log: Log,
}

/// Connections at once, and per address.
const MAX_CONNECTIONS: usize = 512;
const MAX_PER_ADDRESS: usize = 16;
/// Requests per second per address (burst of twice that).
const REQUESTS_PER_S: f64 = 50.0;

struct Limiter {
    open: HashMap<u128, usize>,
    total: usize,
    buckets: HashMap<u128, (f64, Instant)>,
}

struct Dir {
    me: Arc<Identity>,
    auth: Mutex<Option<Authority>>,
    limiter: Mutex<Limiter>,
    peers: Vec<DirectoryAddr>,
    peer_keys: Mutex<HashMap<NodeId, PublicIdentity>>,
    cfg: AuthorityConfig,
    log: Log,
    /// Something changed: vote and recompute soon.
    changed: tokio::sync::Notify,
    /// The vote and signature this authority sends its peers, and which
    /// peers have them.
    outbox: Mutex<Outbox>,
}

/// This authority's vote and signature, and which peers took each.
type Outbox = (Option<Vec<u8>>, Option<Vec<u8>>, HashMap<NodeId, (bool, bool)>);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs an authority until the process ends.
pub async fn run_directory(cfg: DirectoryConfig) -> Result<(), Error> {
    let listener = TcpListener::bind(cfg.listen).await.map_err(|e| Error::Io {
        path: format!("listen {}", cfg.listen).into(),
        source: e,
    })?;
    let local = listener.local_addr().map_err(Error::ConnectionLost)?;
    (cfg.log)(format!(
        "directory authority {} listening on {local} ({} peer authorities)",
        cfg.me.public().fingerprint(),
        cfg.peers.len()
    ));
    let dir = Arc::new(Dir {
        me: cfg.me.clone(),
        auth: Mutex::new(None),
        limiter: Mutex::new(Limiter {
            open: HashMap::new(),
            total: 0,
            buckets: HashMap::new(),
        }),
        peers: cfg.peers.clone(),
        peer_keys: Mutex::new(HashMap::new()),
        cfg: AuthorityConfig {
            lifetime: cfg.lifetime.as_secs().max(60),
            max_per_ip: cfg.max_per_ip,
            ..AuthorityConfig::default()
        },
        log: cfg.log.clone(),
        changed: tokio::sync::Notify::new(),
        outbox: Mutex::new((None, None, HashMap::new())),
    });
    tokio::spawn(maintain(dir.clone()));
    loop {
        let (s, addr) = match listener.accept().await {
            Ok(x) => x,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let key = share_of(addr);
        {
            let mut l = lock(&dir.limiter);
            let n = l.open.get(&key).copied().unwrap_or(0);
            if l.total >= MAX_CONNECTIONS || n >= MAX_PER_ADDRESS {
                drop(l);
                let mut s = s;
                tokio::spawn(async move {
                    respond(&mut s, 503, "text/plain", b"busy: too many connections\n").await
                });
                continue;
            }
            l.total += 1;
            *l.open.entry(key).or_insert(0) += 1;
        }
        let dir = dir.clone();
        tokio::spawn(async move {
            serve(&dir, s, addr).await;
            let mut l = lock(&dir.limiter);
            l.total -= 1;
            if let Some(n) = l.open.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    l.open.remove(&key);
                }
            }
        });
    }
}

fn allowed(dir: &Dir, addr: SocketAddr) -> bool {
    let mut l = lock(&dir.limiter);
    let now = Instant::now();
    if l.buckets.len() > 65_536 {
        l.buckets
            .retain(|_, (_, at)| now.duration_since(*at) < Duration::from_secs(10));
    }
    let b = l
        .buckets
        .entry(share_of(addr))
        .or_insert((2.0 * REQUESTS_PER_S, now));
    b.0 = (b.0 + now.duration_since(b.1).as_secs_f64() * REQUESTS_PER_S).min(2.0 * REQUESTS_PER_S);
    b.1 = now;
    b.0 -= 1.0;
    b.0 >= 0.0
}

async fn serve(dir: &Arc<Dir>, mut s: TcpStream, addr: SocketAddr) {
    let (head, body) = match read_request(&mut s, MAX_LIST_LEN + 1024).await {
        Ok(x) => x,
        Err(why) => return respond(&mut s, 400, "text/plain", format!("{why}\n").as_bytes()).await,
    };
    if !allowed(dir, addr) {
        return respond(
            &mut s,
            429,
            "text/plain",
            b"too many requests from this address\n",
        )
        .await;
    }
    let now = unix_now();
    match (head.method.as_str(), head.path.as_str()) {
        ("GET", "/onion/key") => {
            let k = dir.me.public();
            let text = format!("{} {}\n", hex::encode(k.ed25519), hex::encode(k.x25519));
            respond(&mut s, 200, "text/plain", text.as_bytes()).await
        }
        ("GET", "/onion/whoami") => {
            respond(&mut s, 200, "text/plain", format!("{}\n", addr.ip()).as_bytes()).await
        }
        ("GET", "/onion/list") => {
            let list = lock(&dir.auth)
                .as_ref()
                .and_then(|a| a.list().map(<[u8]>::to_vec));
            match list {
                Some(l) => respond(&mut s, 200, "application/octet-stream", &l).await,
                None => {
                    respond(
                        &mut s,
                        503,
                        "text/plain",
                        b"no node list signed by a majority of the authorities yet\n",
                    )
                    .await
                }
            }
        }
        ("GET", "/onion/digest") => {
            let d = lock(&dir.auth)
                .as_ref()
                .and_then(|a| a.list().map(|l| hex::encode(list_digest(l))));
            match d {
                Some(d) => respond(&mut s, 200, "text/plain", format!("{d}\n").as_bytes()).await,
                None => respond(&mut s, 503, "text/plain", b"no node list yet\n").await,
            }
        }
        ("GET", p) if p.starts_with("/onion/node/") => {
            let fp = &p["/onion/node/".len()..];
            let Some(id) = NodeId::parse(fp) else {
                return respond(&mut s, 400, "text/plain", b"not a fingerprint\n").await;
            };
            let found = lock(&dir.auth).as_ref().and_then(|a| a.lookup(&id).cloned());
            match found {
                Some(d) => {
                    let j = serde_json::json!({
                        "id": id.to_string(),
                        "name": escape_display(&d.claims.name),
                        "addresses": d.claims.addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                        "ed25519": hex::encode(d.keys.ed25519),
                        "x25519": hex::encode(d.keys.x25519),
                        "onion_key": hex::encode(d.claims.onion_key),
                        "exit_ports": d.claims.exit_ports,
                        "expires": d.expires,
                    });
                    respond(&mut s, 200, "application/json", format!("{j}\n").as_bytes()).await
                }
                None => respond(&mut s, 404, "text/plain", b"no such node registered here\n").await,
            }
        }
        ("POST", "/onion/register") => {
            if body.len() > MAX_DESCRIPTOR_LEN {
                return respond(&mut s, 413, "text/plain", b"descriptor too long\n").await;
            }
            let r = match lock(&dir.auth).as_mut() {
                Some(a) => a.register(&body, addr.ip(), now).map_err(|e| e.to_string()),
                None => Err("this authority has not reached its peers yet; try again".to_owned()),
            };
            match r {
                Ok(id) => {
                    respond(
                        &mut s,
                        200,
                        "text/plain",
                        b"registered; checking that this node is reachable\n",
                    )
                    .await;
                    let dir = dir.clone();
                    tokio::spawn(async move { check_reachable(&dir, id).await });
                }
                Err(why) => {
                    (dir.log)(format!("refused a registration from {addr}: {why}"));
                    respond(&mut s, 400, "text/plain", format!("{why}\n").as_bytes()).await
                }
            }
        }
        ("POST", "/onion/vote") => {
            let r = match lock(&dir.auth).as_mut() {
                Some(a) => a.on_vote(&body, now).map_err(|e| e.to_string()),
                None => Err("not ready".to_owned()),
            };
            match r {
                Ok(_) => {
                    dir.changed.notify_one();
                    respond(&mut s, 200, "text/plain", b"ok\n").await
                }
                Err(why) => respond(&mut s, 400, "text/plain", format!("{why}\n").as_bytes()).await,
            }
        }
        ("POST", "/onion/sig") => {
            let parsed: Option<(NodeId, [u8; 32], [u8; 64])> = (body.len() == 15 + 32 + 64).then(|| {
                let id = NodeId(body[..15].try_into().unwrap_or([0; 15]));
                let d = body[15..47].try_into().unwrap_or([0; 32]);
                let sig = body[47..].try_into().unwrap_or([0; 64]);
                (id, d, sig)
            });
            let r = match (parsed, lock(&dir.auth).as_mut()) {
                (Some((id, d, sig)), Some(a)) => a.on_sig(id, d, sig).map_err(|e| e.to_string()),
                (None, _) => Err("a signature is id, digest and signature (111 bytes)".to_owned()),
                (_, None) => Err("not ready".to_owned()),
            };
            match r {
                Ok(()) => respond(&mut s, 200, "text/plain", b"ok\n").await,
                Err(why) => respond(&mut s, 400, "text/plain", format!("{why}\n").as_bytes()).await,
            }
        }
        _ => respond(&mut s, 404, "text/plain", b"unknown request\n").await,
    }
}

/// Reaches the node at its registered address with a link handshake
/// against its key: Running only if that works.
async fn check_reachable(dir: &Arc<Dir>, id: NodeId) {
    let desc = lock(&dir.auth).as_ref().and_then(|a| a.lookup(&id).cloned());
    let Some(d) = desc else { return };
    let Some(addr) = d.claims.addrs.first().copied() else {
        return;
    };
    let r = super::link::connect(addr, &d.keys, None).await;
    let ok = r.is_ok();
    if let Err(e) = r {
        (dir.log)(format!("node {id} is not reachable at {addr}: {e}"));
    }
    if let Some(a) = lock(&dir.auth).as_mut() {
        a.reachable(&id, ok, unix_now());
    }
    dir.changed.notify_one();
}

/// Learns the peers' keys, then votes, recomputes and sends what changed.
async fn maintain(dir: Arc<Dir>) {
    // The peers' keys: a majority of all authorities (this one counted)
    // is enough to start; the rest are learned while running.
    let total = dir.peers.len() + 1;
    loop {
        fetch_peer_keys(&dir).await;
        let known = lock(&dir.peer_keys).len() + 1;
        if known * 2 > total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut keys: Vec<PublicIdentity> = lock(&dir.peer_keys).values().copied().collect();
    keys.push(dir.me.public());
    let known = keys.len();
    *lock(&dir.auth) = Some(Authority::with_total(dir.me.public().id(), keys, total, dir.cfg));
    (dir.log)(format!(
        "reached {} of {} peer authorities; taking registrations",
        known - 1,
        dir.peers.len()
    ));
    // The others, when they come up (a dead one must not hold the votes).
    let d = dir.clone();
    tokio::spawn(async move {
        while lock(&d.peer_keys).len() < d.peers.len() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            fetch_peer_keys(&d).await;
            let keys: Vec<PublicIdentity> = lock(&d.peer_keys).values().copied().collect();
            if let Some(a) = lock(&d.auth).as_mut() {
                for k in keys {
                    a.learn_authority(k);
                }
            }
            d.changed.notify_one();
        }
    });
    let mut last_check = Instant::now();
    loop {
        let _ = tokio::time::timeout(Duration::from_millis(500), dir.changed.notified()).await;
        // A short pause gathers what arrives together into one vote.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = unix_now();
        let (vote, sig) = {
            let mut g = lock(&dir.auth);
            let Some(a) = g.as_mut() else { continue };
            a.expire(now);
            let vote = a.vote(&dir.me, now);
            let sig = a.recompute(&dir.me);
            (vote, sig)
        };
        {
            let mut o = lock(&dir.outbox);
            if let Some(v) = vote {
                o.0 = Some(v);
                for p in &dir.peers {
                    o.2.entry(p.id).or_default().0 = false;
                }
            }
            if let Some((digest, s)) = sig {
                let mut b = dir.me.public().id().0.to_vec();
                b.extend_from_slice(&digest);
                b.extend_from_slice(&s);
                o.1 = Some(b);
                for p in &dir.peers {
                    o.2.entry(p.id).or_default().1 = false;
                }
            }
        }
        send_outbox(&dir).await;
        if last_check.elapsed() >= Duration::from_secs(60) {
            last_check = Instant::now();
            let ids: Vec<NodeId> = lock(&dir.auth)
                .as_ref()
                .map(|a| a.registered().into_iter().map(|(i, _)| i).collect())
                .unwrap_or_default();
            for id in ids {
                let dir = dir.clone();
                tokio::spawn(async move { check_reachable(&dir, id).await });
            }
        }
    }
}

/// Asks every peer whose key is not known yet for it.
async fn fetch_peer_keys(dir: &Arc<Dir>) {
    for p in &dir.peers {
        if lock(&dir.peer_keys).contains_key(&p.id) {
            continue;
        }
        if let Ok(k) = fetch_keys(p).await {
            lock(&dir.peer_keys).insert(p.id, k);
        }
    }
}

/// Sends each peer the vote and signature it has not taken yet.
async fn send_outbox(dir: &Arc<Dir>) {
    let (vote, sig, pending) = {
        let o = lock(&dir.outbox);
        (o.0.clone(), o.1.clone(), o.2.clone())
    };
    let mut sends = Vec::new();
    for p in &dir.peers {
        let (has_vote, has_sig) = pending.get(&p.id).copied().unwrap_or_default();
        let (vote, sig) = (
            vote.clone().filter(|_| !has_vote),
            sig.clone().filter(|_| !has_sig),
        );
        if vote.is_none() && sig.is_none() {
            continue;
        }
        let (dir, p) = (dir.clone(), p.clone());
        sends.push(tokio::spawn(async move {
            let mut ok_vote = vote.is_none();
            if let Some(v) = &vote {
                ok_vote = matches!(request(&p.addr, "POST", "/onion/vote", Some(v)).await, Ok(r) if r.status == 200);
            }
            let mut ok_sig = sig.is_none();
            if let Some(s) = &sig {
                ok_sig = matches!(request(&p.addr, "POST", "/onion/sig", Some(s)).await, Ok(r) if r.status == 200);
            }
            let mut o = lock(&dir.outbox);
            let e = o.2.entry(p.id).or_default();
            e.0 |= ok_vote;
            e.1 |= ok_sig;
        }));
    }
    for s in sends {
        let _ = s.await;
    }
}

/// Fetches the node list from the first of `dirs` that has one, and
/// checks it against the pinned authorities' keys.
pub(crate) async fn fetch_list(
    dirs: &[DirectoryAddr],
    keys: &[PublicIdentity],
) -> Result<(burrow_proto::onion::directory::NodeList, Vec<u8>), Error> {
    // Every configured authority counts towards the majority, whether its
    // key is known or not.
    let total = dirs.len();
    let mut last = Error::NotFound("no directory configured".into());
    for d in dirs {
        match request(&d.addr, "GET", "/onion/list", None).await {
            Ok(r) if r.status == 200 => {
                match burrow_proto::onion::directory::NodeList::verify_among(&r.body, keys, total, unix_now())
                {
                    Ok(l) => return Ok((l, r.body)),
                    Err(e) => {
                        last = Error::Integrity(format!("the node list from {} was refused: {e}", d.addr))
                    }
                }
            }
            Ok(r) => {
                last = Error::NotFound(format!(
                    "{} has no node list yet: {}",
                    d.addr,
                    escape_display(String::from_utf8_lossy(&r.body).trim())
                ))
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The digest of an encoded list (BLAKE3 of its body).
fn list_digest(list: &[u8]) -> [u8; 32] {
    let n = list
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .unwrap_or(0);
    *blake3::hash(list.get(4..4 + n).unwrap_or_default()).as_bytes()
}

/// The digest of the list `d` serves now.
pub(crate) async fn fetch_digest(d: &DirectoryAddr) -> Option<[u8; 32]> {
    let r = request(&d.addr, "GET", "/onion/digest", None).await.ok()?;
    if r.status != 200 {
        return None;
    }
    hex::decode(String::from_utf8_lossy(&r.body).trim())
        .ok()?
        .try_into()
        .ok()
}

/// The address a directory sees this machine at.
pub(crate) async fn whoami(d: &DirectoryAddr) -> Result<IpAddr, Error> {
    let r = request(&d.addr, "GET", "/onion/whoami", None).await?;
    String::from_utf8_lossy(&r.body)
        .trim()
        .parse()
        .map_err(|_| Error::Protocol(format!("{} did not say which address it sees", d.addr)))
}
