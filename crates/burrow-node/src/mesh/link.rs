//! One task per mesh connection: socket bytes into the link machine, its
//! output back out, its timers, and the packets it hands over (node lists,
//! pings) answered against the node's shared state.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use burrow_proto::keys::NodeId;
use burrow_proto::mesh::link::{Direction, Link, LinkConfig, LinkEvent, LinkState};
use burrow_proto::mesh::packet::{DataKind, NlistReq, Packet, Reason};
use burrow_proto::mesh::record::{Flags, NodeRecord};
use burrow_proto::mesh::table::Merge;
use burrow_proto::session::MAX_PLAINTEXT;
use burrow_proto::transfer::escape_display;
use burrow_proto::tunnel::mux::{Frame, ResetReason};

use super::{Cmd, Gone, LinkInfo, Shared, unix_now};
use crate::platform::{OsRandom, aead};

/// Records pushed to this many other links when one changes.
const FANOUT: usize = 6;
/// Bytes a node-list page may take (one record, with room for its header).
const PAGE_BUDGET: usize = MAX_PLAINTEXT - 64;
/// Output queued on a link beyond which gossip to it is skipped.
const MAX_QUEUED: usize = 1 << 20;

fn config(shared: &Shared) -> LinkConfig {
    LinkConfig {
        keepalive: shared.cfg.keepalive,
        ..LinkConfig::new(aead())
    }
}

/// Refuses a connection when the node is at its link limit: a plain
/// DISCONNECT(busy) after the peer's HELLO, so it hears why.
pub(crate) async fn refuse_busy(mut stream: TcpStream) {
    let mut pkt = Vec::new();
    let reason = "busy: this node is at its link limit";
    if (Packet::Disconnect {
        reason: Reason::Busy,
        text: reason,
    })
    .encode(&mut pkt)
    .is_ok()
    {
        let mut frame = (pkt.len() as u16).to_be_bytes().to_vec();
        frame.extend_from_slice(&pkt);
        let _ = tokio::time::timeout(Duration::from_secs(2), stream.write_all(&frame)).await;
    }
}

/// Serves a connection someone made to this node.
pub(crate) async fn run_inbound(shared: Arc<Shared>, stream: TcpStream, addr: SocketAddr, slot: Slot) {
    let _ = stream.set_nodelay(true);
    let (secret, record) = {
        let st = shared.lock();
        (*shared.cfg.me.x25519_secret(), st.my_record.clone())
    };
    let link = Link::inbound(config(&shared), &secret, record, Instant::now(), &mut OsRandom);
    drive(shared, stream, addr, link, slot).await;
}

/// Dials out over `stream`; `peer`: the node's X25519 key when known
/// (then `IK`). Returns the node it reached, and whether the link came up.
pub(crate) async fn run_outbound(
    shared: Arc<Shared>,
    stream: TcpStream,
    addr: SocketAddr,
    peer: Option<[u8; 32]>,
    relayed: bool,
) -> (Option<NodeId>, bool) {
    let (secret, record) = {
        let st = shared.lock();
        (*shared.cfg.me.x25519_secret(), st.my_record.clone())
    };
    let link = match Link::outbound(
        config(&shared),
        &secret,
        record,
        peer.as_ref(),
        Instant::now(),
        &mut OsRandom,
    ) {
        Ok(l) => l,
        Err(e) => {
            (shared.cfg.log)(format!("cannot start a handshake with {addr}: {e}"));
            return (None, false);
        }
    };
    let slot = register(&shared, Direction::Outbound, addr, relayed);
    drive(shared, stream, addr, link, slot).await
}

/// Owned copies of what the link handed over while reading.
fn collect(into: &mut Vec<Vec<u8>>) -> impl FnMut(Packet<'_>) + '_ {
    move |p| {
        let mut b = Vec::new();
        if p.encode(&mut b).is_ok() {
            into.push(b);
        }
    }
}

/// A link's entry in the node's table, made before its task runs (so that
/// the accept loop's per-address count sees it at once).
pub(crate) struct Slot {
    id: u64,
    rx: mpsc::Receiver<Cmd>,
    cells: mpsc::UnboundedReceiver<Vec<u8>>,
}

/// Registers a link about to start.
pub(crate) fn register(shared: &Shared, dir: Direction, addr: SocketAddr, relayed: bool) -> Slot {
    let (tx, rx) = mpsc::channel::<Cmd>(256);
    let (cells_tx, cells) = mpsc::unbounded_channel::<Vec<u8>>();
    let mut st = shared.lock();
    let id = st.next_link;
    st.next_link += 1;
    st.links.insert(
        id,
        LinkInfo {
            dir,
            addr,
            peer: None,
            state: LinkState::Handshake,
            rtt: None,
            since: Instant::now(),
            stats: Default::default(),
            tx,
            cells: cells_tx,
            keys: None,
            hash: None,
            relayed,
        },
    );
    Slot { id, rx, cells }
}

async fn drive(
    shared: Arc<Shared>,
    stream: TcpStream,
    addr: SocketAddr,
    mut link: Link,
    slot: Slot,
) -> (Option<NodeId>, bool) {
    let Slot {
        id,
        mut rx,
        mut cells,
    } = slot;
    let mut onion_client = false;
    let (mut rd, mut wr) = stream.into_split();
    // Control traffic: pages of records and beats, read straight into the
    // link's own buffer (2 KiB, grown to a frame when one needs it).
    let mut peer: Option<NodeId> = None;
    let mut was_up = false;
    let mut closed_by_socket = None;
    let mut client: Option<(String, bool)> = None;
    let mut budget = Budget::new(Instant::now());
    // The last NLIST_REQ a differing beat made (at most one per 30 s).
    let mut beat_pull: Option<Instant> = None;
    loop {
        // Everything queued goes out first (control traffic: small).
        while !link.output().is_empty() {
            match tokio::time::timeout(Duration::from_secs(10), wr.write(link.output())).await {
                Ok(Ok(n)) if n > 0 => link.advance(n),
                _ => {
                    closed_by_socket.get_or_insert_with(|| "the connection broke while sending".to_owned());
                    break;
                }
            }
        }
        while let Some(e) = link.poll_event() {
            match e {
                LinkEvent::Up {
                    peer: keys,
                    record,
                    handshake_hash,
                } => {
                    peer = Some(keys.id());
                    was_up = true;
                    if let Some(l) = shared.lock().links.get_mut(&id) {
                        l.keys = Some(keys);
                        l.hash = Some(handshake_hash);
                    }
                    let flags = NodeRecord::decode(&record).map(|r| r.flags).unwrap_or_default();
                    if flags.has(Flags::CLIENT) && flags.has(Flags::ONION_CLIENT) {
                        // An onion client (or an authority checking that
                        // this node is reachable), under a fresh key: only
                        // circuit cells, from anyone, if this node relays.
                        peer = None;
                        match shared.onion.get() {
                            Some(o) => {
                                onion_client = true;
                                let _ = o.tx.send(crate::onion::relay::OnionCmd::ClientLink(id, addr));
                                let _ = link.send(&Packet::TunnelData(Frame::Ping));
                            }
                            None => link.close(Reason::Other, "this node relays no circuits"),
                        }
                        continue;
                    }
                    if !flags.has(Flags::CLIENT) {
                        on_up(&shared, id, &mut link, keys.id(), &record);
                        continue;
                    }
                    // A paired node's client asking for tunnels or sending
                    // files: not a mesh link.
                    peer = None;
                    let inbox = flags.has(Flags::INBOX);
                    match (paired_name(&shared, &keys), inbox && shared.cfg.inbox.is_none()) {
                        (Some(_), true) => link.close(Reason::Other, "this node has no inbox"),
                        (Some(name), false) => client = Some((name, inbox)),
                        (None, _) => {
                            (shared.cfg.log)(format!(
                                "refused {} from {}: not a paired node",
                                if inbox { "files" } else { "a tunnel" },
                                keys.id()
                            ));
                            link.close(
                                Reason::NotPaired,
                                "this node takes tunnels and files from paired nodes only",
                            );
                        }
                    }
                }
                LinkEvent::Beat { tag } => {
                    // An idle peer's node-list digest: pull only when it
                    // differs from ours.
                    let now = Instant::now();
                    let mut st = shared.lock();
                    if peer.is_some()
                        && tag != digest_tag(&st.table.digest())
                        && beat_pull.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(30))
                    {
                        beat_pull = Some(now);
                        let req = st.table.request(None);
                        drop(st);
                        let _ = link.send(&Packet::NlistReq(req));
                    }
                }
                LinkEvent::Rtt(rtt) => {
                    if let Some(l) = shared.lock().links.get_mut(&id) {
                        l.rtt = Some(rtt);
                    }
                }
                LinkEvent::Closed {
                    reason,
                    text,
                    by_peer,
                } => {
                    // An onion client's link ends unlogged: a node keeps
                    // no record of its clients' addresses.
                    if !onion_client {
                        on_closed(&shared, id, peer, &link, reason, &text, by_peer);
                    }
                }
            }
        }
        if let Some(l) = shared.lock().links.get_mut(&id) {
            l.stats = link.stats();
            l.state = link.state();
        }
        if link.state() == LinkState::Closed || closed_by_socket.is_some() || client.is_some() {
            break;
        }
        // Events above may have queued packets (an onion client's
        // acceptance): out they go before waiting for the peer.
        if !link.output().is_empty() {
            continue;
        }
        let deadline = link
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            r = rd.read(link.read_buf()) => {
                match r {
                    Ok(0) | Err(_) => {
                        closed_by_socket = Some("the connection closed".to_owned());
                        let _ = r;
                    }
                    Ok(n) => {
                        let mut got = Vec::new();
                        // Circuit cells go straight to the relay (one copy,
                        // no re-decoding); the rest is handled below, where
                        // the link may answer.
                        let onion = shared.onion.get();
                        link.filled(n, Instant::now(), &mut |p| match (p, onion) {
                            (Packet::Data { kind: DataKind::Cell, payload }, Some(o)) => {
                                let _ = o.tx.send(crate::onion::relay::OnionCmd::Cell(id, payload.to_vec()));
                            }
                            (Packet::Data { kind: DataKind::Cell, .. }, None) => {}
                            (p, _) => collect(&mut got)(p),
                        });
                        for bytes in &got {
                            // The link handed over only packets that decode.
                            let Ok(p) = Packet::decode(bytes) else { continue };
                            if let Err(why) = budget.charge(&p, Instant::now()) {
                                (shared.cfg.log)(format!("closing the link with {addr}: {why}"));
                                link.close(Reason::Busy, why);
                                break;
                            }
                            // An onion client gets circuit cells, nothing of the mesh.
                            if onion_client && !matches!(p, Packet::Data { kind: DataKind::Cell, .. }) {
                                continue;
                            }
                            handle(&shared, id, &mut link, p);
                        }
                    }
                }
            }
            Some(cell) = cells.recv() => {
                let _ = link.send(&Packet::Data { kind: DataKind::Cell, payload: &cell });
                // Take what else is waiting: one write for many cells.
                while link.queued() < 256 * 1024 {
                    match cells.try_recv() {
                        Ok(c) => {
                            let _ = link.send(&Packet::Data { kind: DataKind::Cell, payload: &c });
                        }
                        Err(_) => break,
                    }
                }
            }
            cmd = rx.recv() => match cmd {
                Some(Cmd::Send(bytes)) => {
                    if let Ok(p) = Packet::decode(&bytes)
                        && link.queued() < MAX_QUEUED
                    {
                        let _ = link.send(&p);
                    }
                }
                Some(Cmd::Close(reason, text)) => link.close(reason, &text),
                Some(Cmd::Ping(nonce)) => ping(&mut link, nonce),
                None => {}
            },
            _ = tokio::time::sleep_until(deadline.into()) => {
                // A beat may go out: it carries our node-list digest.
                link.set_beat_tag(digest_tag(&shared.lock().table.digest()));
                link.handle_timeout(Instant::now());
            }
        }
    }
    if let Some((name, inbox)) = client {
        // The client waits for this before it sends: accepted (a refusal
        // would have been a DISCONNECT with its reason).
        let _ = link.send(&Packet::TunnelData(Frame::Ping));
        while !link.output().is_empty() {
            match wr.write(link.output()).await {
                Ok(n) if n > 0 => link.advance(n),
                _ => break,
            }
        }
        if let (Ok(stream), Ok((sealer, opener, already))) = (rd.reunite(wr), link.into_session()) {
            match shared.cfg.inbox.clone().filter(|_| inbox) {
                Some(dir) => {
                    let log = shared.cfg.log.clone();
                    // Boxed: a link's task is sized for its largest await,
                    // and every link would carry the transfer engine's.
                    let got = Box::pin(crate::receive_into_inbox(
                        stream,
                        (sealer, opener),
                        already,
                        dir,
                        name.clone(),
                        log,
                    ));
                    if let Err(e) = got.await {
                        (shared.cfg.log)(format!("files from {name} failed: {e}"));
                    }
                }
                None => {
                    (shared.cfg.log)(format!("tunnel from {name} ({addr})"));
                    {
                        let mut st = shared.lock();
                        st.counters.tunnels += 1;
                        st.counters.tunnels_open += 1;
                    }
                    Box::pin(crate::tunnel::serve_mesh_tunnel(
                        stream,
                        (sealer, opener),
                        already,
                        shared.cfg.policy.clone(),
                        shared.cfg.log.clone(),
                        shared.tunnel_bytes.clone(),
                    ))
                    .await;
                    shared.lock().counters.tunnels_open -= 1;
                    (shared.cfg.log)(format!("tunnel from {name} ended"));
                }
            }
        }
        shared.lock().links.remove(&id);
        return (None, false);
    }
    // A close decided above (duplicate, not paired, timeout) queued its
    // DISCONNECT: the peer should hear why.
    while closed_by_socket.is_none() && !link.output().is_empty() {
        match tokio::time::timeout(Duration::from_secs(2), wr.write(link.output())).await {
            Ok(Ok(n)) if n > 0 => link.advance(n),
            _ => break,
        }
    }
    let we_closed = closed_by_socket.is_none();
    if let Some(text) = closed_by_socket
        && link.state() != LinkState::Closed
        && !onion_client
    {
        let reason = if link.state() == LinkState::Up {
            Reason::Other
        } else {
            Reason::Protocol
        };
        on_closed(&shared, id, peer, &link, reason, &text, true);
    }
    let _ = wr.shutdown().await;
    if we_closed {
        // We closed with a reason while the peer may still be sending:
        // closing the socket on unread bytes would reset the connection and
        // could destroy the DISCONNECT in flight. Read and drop what comes,
        // bounded in time and bytes, off this task.
        let mut rd = rd;
        tokio::spawn(async move { burrow_relay::drain_for(&mut rd, LINGER_BYTES, LINGER).await });
    }
    shared.lock().links.remove(&id);
    if let Some(o) = shared.onion.get() {
        let _ = o.tx.send(crate::onion::relay::OnionCmd::LinkClosed(id));
    }
    (peer, was_up)
}

/// How long a node keeps reading a link it closed with a reason.
const LINGER: Duration = Duration::from_secs(1);
/// How much it reads from it meanwhile, at most.
const LINGER_BYTES: usize = 4 << 20;

/// What a beat carries of a node-list digest.
fn digest_tag(d: &[u8; 32]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

/// The name `keys` are paired under, if they are.
fn paired_name(shared: &Shared, keys: &burrow_proto::keys::PublicIdentity) -> Option<String> {
    let path = shared.cfg.peer_book.as_ref()?;
    let book = crate::keys::peers::PeerBook::load(path).ok()?;
    book.by_x25519(&keys.x25519)
        .filter(|p| p.key == *keys)
        .map(|p| escape_display(&p.name))
}

/// Sends a ping: a DATA the peer answers, so silence makes the link probe.
fn ping(link: &mut Link, nonce: u64) {
    let p = Packet::Data {
        kind: DataKind::Ping,
        payload: &nonce.to_be_bytes(),
    };
    if link.send(&p).is_ok() {
        link.expect_answer(Instant::now());
    }
}

/// The link is up: settle duplicates, take the peer's record, pull its list.
fn on_up(shared: &Arc<Shared>, id: u64, link: &mut Link, peer: NodeId, record: &[u8]) {
    let unix = unix_now();
    let mut st = shared.lock();
    st.counters.handshakes += 1;
    if peer == shared.id {
        drop(st);
        link.close(Reason::Duplicate, "a link to itself");
        return;
    }
    // Two links to one node (both dialled at once): both sides keep the
    // one dialled by the smaller node id.
    if let Some(&other) = st.by_node.get(&peer)
        && other != id
    {
        let this_wins = {
            let dialler_of_this = if link.direction() == Direction::Outbound {
                shared.id
            } else {
                peer
            };
            dialler_of_this == shared.id.min(peer)
        };
        if !this_wins {
            drop(st);
            link.close(Reason::Duplicate, "another link to this node is kept");
            return;
        }
        if let Some(o) = st.links.get(&other) {
            let _ = o.tx.try_send(Cmd::Close(
                Reason::Duplicate,
                "another link to this node is kept".into(),
            ));
        }
    }
    st.by_node.insert(peer, id);
    shared.link_up.notify_waiters();
    st.retry.remove(&peer);
    st.gone.remove(&peer);
    if let Some(l) = st.links.get_mut(&id) {
        l.peer = Some(peer);
        l.state = LinkState::Up;
    }
    st.table.pin(peer);
    let merged = st.table.insert(record, unix);
    let name = st
        .table
        .get(&peer)
        .map(|r| escape_display(&r.name))
        .unwrap_or_default();
    let req = st.table.request(None);
    drop(st);
    (shared.cfg.log)(format!(
        "link up: {peer} {name} ({}, {})",
        link_addr(shared, id),
        match link.direction() {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    ));
    let _ = link.send(&Packet::NlistReq(req));
    if let Some(changed) = merged.changed() {
        push(shared, changed, Some(id));
    }
}

fn link_addr(shared: &Shared, id: u64) -> String {
    shared
        .lock()
        .links
        .get(&id)
        .map(|l| l.addr.to_string())
        .unwrap_or_default()
}

fn on_closed(
    shared: &Arc<Shared>,
    id: u64,
    peer: Option<NodeId>,
    link: &Link,
    reason: Reason,
    text: &str,
    by_peer: bool,
) {
    let mut st = shared.lock();
    match (reason, link.state(), peer) {
        (Reason::Timeout, _, Some(_)) => st.counters.keepalive_timeouts += 1,
        (Reason::Authentication, _, _) => st.counters.authentication_failures += 1,
        (_, _, None) => st.counters.handshake_failures += 1,
        _ => {}
    }
    let Some(peer) = peer else {
        drop(st);
        if by_peer || reason != Reason::Protocol {
            (shared.cfg.log)(format!(
                "link with {} failed during the handshake: {} ({})",
                link_addr(shared, id),
                escape_display(text),
                reason.name()
            ));
        }
        return;
    };
    if st.by_node.get(&peer) == Some(&id) {
        st.by_node.remove(&peer);
        st.table.unpin(&peer);
        st.gone.insert(
            peer,
            Gone {
                reason,
                text: text.to_owned(),
                by_peer,
                at: Instant::now(),
            },
        );
        drop(st);
        (shared.cfg.log)(format!(
            "link down: {peer}: {} ({}{})",
            escape_display(text),
            reason.name(),
            if by_peer { ", said the peer" } else { "" }
        ));
    }
}

/// What one link may make this node do, as token buckets: every record
/// offered costs an Ed25519 verification, every NLIST_REQ a page of up to
/// 64 KiB, every PAIR_REQ a SPAKE2 step. A whole table's worth (10,000
/// records, 40 pages) goes at once; beyond, the rate below. A link over
/// its budget is closed with DISCONNECT(busy) and a reason; everyone else
/// is served.
struct Budget {
    records: Bucket,
    requests: Bucket,
    pairing: Bucket,
}

struct Bucket {
    tokens: f64,
    cap: f64,
    per_s: f64,
    at: Instant,
}

impl Bucket {
    fn new(cap: f64, per_s: f64, now: Instant) -> Self {
        Self {
            tokens: cap,
            cap,
            per_s,
            at: now,
        }
    }

    fn take(&mut self, n: f64, now: Instant) -> bool {
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.per_s).min(self.cap);
        self.at = now;
        self.tokens -= n;
        self.tokens >= 0.0
    }
}

/// Records a link may offer at once, and per second after that.
pub(crate) const RECORD_BURST: f64 = 10_000.0;
const RECORDS_PER_S: f64 = 1_000.0;

impl Budget {
    fn new(now: Instant) -> Self {
        Self {
            records: Bucket::new(RECORD_BURST, RECORDS_PER_S, now),
            requests: Bucket::new(100.0, 10.0, now),
            pairing: Bucket::new(10.0, 1.0, now),
        }
    }

    /// Charges one packet.
    fn charge(&mut self, p: &Packet<'_>, now: Instant) -> Result<(), &'static str> {
        match p {
            Packet::NlistRes { records, .. } if !self.records.take(records.len() as f64, now) => {
                Err("record flood: more node records than this node checks per second")
            }
            Packet::NlistReq(_) if !self.requests.take(1.0, now) => {
                Err("request flood: more node list requests than this node answers per second")
            }
            Packet::PairReq { .. } if !self.pairing.take(1.0, now) => {
                Err("pairing flood: more pairing requests than this node answers")
            }
            _ => Ok(()),
        }
    }
}

/// Answers one packet the link handed over.
fn handle(shared: &Arc<Shared>, id: u64, link: &mut Link, p: Packet<'_>) {
    match p {
        Packet::NlistReq(req) => {
            let page = {
                let mut st = shared.lock();
                let (recs, next) = st.table.page(&req, PAGE_BUDGET);
                let recs: Vec<Vec<u8>> = recs.into_iter().map(<[u8]>::to_vec).collect();
                (recs, next)
            };
            let records: Vec<&[u8]> = page.0.iter().map(Vec::as_slice).collect();
            let _ = link.send(&Packet::NlistRes {
                next: page.1,
                push: false,
                records,
            });
        }
        Packet::NlistRes {
            next,
            push: _,
            records,
        } => {
            let unix = unix_now();
            let mut changed = Vec::new();
            {
                let mut st = shared.lock();
                for r in records {
                    st.counters.records_in += 1;
                    match st.table.insert(r, unix) {
                        Merge::New(n) | Merge::Updated(n) => {
                            st.counters.records_new += 1;
                            changed.push(n);
                        }
                        Merge::Duplicate | Merge::Older => st.counters.records_duplicate += 1,
                        Merge::Full | Merge::Refused(_) => st.counters.records_refused += 1,
                    }
                }
            }
            if let Some(cursor) = next {
                let req: NlistReq = shared.lock().table.request(Some(cursor));
                let _ = link.send(&Packet::NlistReq(req));
            }
            for n in changed {
                push(shared, n, Some(id));
            }
        }
        Packet::Data {
            kind: DataKind::Ping,
            payload,
        } => {
            let _ = link.send(&Packet::Data {
                kind: DataKind::Pong,
                payload,
            });
        }
        Packet::Data {
            kind: DataKind::Pong,
            payload,
        } => {
            if let Ok(nonce) = <[u8; 8]>::try_from(payload) {
                let waiter = shared.lock().pings.remove(&u64::from_be_bytes(nonce));
                if let Some((sent, tx)) = waiter {
                    let _ = tx.send(sent.elapsed());
                }
            }
        }
        // Circuit cells went to the relay as they were read.
        Packet::Data {
            kind: DataKind::Cell, ..
        } => {}
        Packet::TunnelReq(Frame::Open { stream, .. }) => {
            let _ = link.send(&Packet::TunnelClose(Frame::Reset {
                stream,
                reason: ResetReason::NotAllowed,
                message: "tunnels over the mesh are not built yet".into(),
            }));
        }
        Packet::PairReq { step, body } => super::pair::on_request(shared, id, link, step, body),
        Packet::PairRes { step, status, body } => super::pair::on_answer(shared, id, step, status, body),
        _ => {}
    }
}

/// Pushes `node`'s record to up to [`FANOUT`] up links other than `except`.
pub(crate) fn push(shared: &Arc<Shared>, node: NodeId, except: Option<u64>) {
    let st = shared.lock();
    let Some(rec) = st.table.bytes(&node) else { return };
    if NodeRecord::decode(rec).is_err() {
        return;
    }
    let mut b = Vec::new();
    if (Packet::NlistRes {
        next: None,
        push: true,
        records: vec![rec],
    })
    .encode(&mut b)
    .is_err()
    {
        return;
    }
    let mut targets: Vec<mpsc::Sender<Cmd>> = st
        .by_node
        .iter()
        .filter(|(n, l)| **n != node && Some(**l) != except)
        .filter_map(|(_, l)| st.links.get(l).map(|i| i.tx.clone()))
        .collect();
    super::sample(&mut targets, FANOUT);
    drop(st);
    let mut sent = 0;
    for t in targets {
        if t.try_send(Cmd::Send(b.clone())).is_ok() {
            sent += 1;
        }
    }
    shared.lock().counters.records_pushed += sent;
}

/// Anti-entropy: one up link, picked at random, gets an NLIST_REQ.
pub(crate) fn pull_from_one(shared: &Arc<Shared>) {
    let mut st = shared.lock();
    let req = st.table.request(None);
    let mut links: Vec<u64> = st.by_node.values().copied().collect();
    super::sample(&mut links, 1);
    let tx = links.first().and_then(|l| st.links.get(l)).map(|i| i.tx.clone());
    drop(st);
    let mut b = Vec::new();
    if Packet::NlistReq(req).encode(&mut b).is_ok()
        && let Some(tx) = tx
    {
        let _ = tx.try_send(Cmd::Send(b));
    }
}
