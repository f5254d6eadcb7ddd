//! Entry points for the fuzz targets in `fuzz/`, one per decoder or state machine.
//!
//! Each takes arbitrary bytes and must never panic. The seed corpora in
//! `fuzz/corpus/<target>/` are replayed through these same functions by an
//! ordinary test (`corpus_replays`), so CI exercises them on every run.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::channel::api::{ChannelRequest, ChannelState, JoinRequest, decode_json};
use crate::channel::table::{ChannelTable, TableConfig};
use crate::session::peek_record_len;
use crate::staple::{StapleHello, StapleReply};
use crate::transfer::{Message, Receiver};

/// A fuzz target: arbitrary bytes in, must not panic.
pub type Target = fn(&[u8]);

/// Every target by name, for the corpus replay.
pub const TARGETS: &[(&str, Target)] = &[
    ("staple_hello", staple_hello),
    ("staple_reply", staple_reply),
    ("transfer_message", transfer_message),
    ("transfer_receiver", transfer_receiver),
    ("transfer_sender", transfer_sender),
    ("transfer_framing", transfer_framing),
    ("api_json", api_json),
    ("channel_table", channel_table),
    ("record", record),
    ("http_request", http_request),
    ("http_response", http_response),
    ("lobby_packet", lobby_packet),
    ("lan_announce", lan_announce),
    ("lobby_relay", lobby_relay),
    ("mux", mux),
    ("policy_rule", policy_rule),
    ("socks", socks),
    ("pair_hello", pair_hello),
    ("connector", connector),
    ("mesh_packet", mesh_packet),
    ("node_record", node_record),
    ("mesh_link", mesh_link),
    ("onion_cell", onion_cell),
    ("onion_handshake", onion_handshake),
    ("onion_descriptor", onion_descriptor),
    ("onion_list", onion_list),
    ("onion_relay", onion_relay),
];

/// Onion cells and the relay messages inside them: whatever decodes
/// re-encodes to the same bytes (relay messages up to their padding).
pub fn onion_cell(data: &[u8]) {
    use crate::onion::cell::{BODY_LEN, CELL_LEN, Cell, RelayMsg};
    let mut bytes = data.to_vec();
    bytes.resize(CELL_LEN, 0);
    if let Ok(c) = Cell::decode(bytes.clone()) {
        let _ = c.bytes_field();
        let _ = c.reason();
        assert_eq!(c.as_bytes(), &bytes[..]);
    }
    let mut body = data.to_vec();
    body.resize(BODY_LEN, 0);
    if let Ok(m) = RelayMsg::read(&body) {
        let mut again = vec![0u8; BODY_LEN];
        m.write(&mut again);
        assert_eq!(RelayMsg::read(&again).ok(), Some(m));
    }
    let _ = Cell::decode(data.to_vec());
}

/// A node's side of the hop handshake fed arbitrary CREATEs (a real one
/// with bytes flipped, and raw input), and a client fed arbitrary
/// CREATEDs: errors, never a panic, and the replay cache grows by at most
/// one per accepted CREATE.
pub fn onion_handshake(data: &[u8]) {
    use crate::keys::NodeId;
    use crate::onion::handshake::{ClientHandshake, Responder};
    use crate::random::seeded;
    let now = 1_800_000_000;
    let node = NodeId([3; 15]);
    let mut r = Responder::generate(node, &mut seeded(1));
    r.learn_digest([7; 32]);
    let _ = r.respond(data, now, &mut seeded(2));
    let (c, mut create) =
        ClientHandshake::start(&node, &r.onion_key(), &[7; 32], now, &mut seeded(3)).expect("start");
    for (i, b) in data.iter().enumerate().take(create.len()) {
        create[i] ^= b;
    }
    let before = r.replay_len();
    let ok = r.respond(&create, now, &mut seeded(4)).is_ok();
    assert!(r.replay_len() <= before + usize::from(ok));
    let _ = c.finish(data);
}

/// Descriptors: a descriptor that verifies re-signs to... itself cannot
/// be checked without the key, so: fields stay within their caps.
pub fn onion_descriptor(data: &[u8]) {
    use crate::onion::directory::{Descriptor, MAX_ADDRS, MAX_EXIT_RANGES, MAX_FAMILY};
    if let Ok(d) = Descriptor::verify(data) {
        assert!(d.claims.addrs.len() <= MAX_ADDRS);
        assert!(d.claims.family.len() <= MAX_FAMILY);
        assert!(d.claims.exit_ports.len() <= MAX_EXIT_RANGES);
        let _ = d.allows_port(80);
    }
}

/// Node lists and votes: arbitrary bytes against a pinned set, and a
/// real list with the input XORed in. Only lists a majority signed get
/// through.
pub fn onion_list(data: &[u8]) {
    use crate::keys::Identity;
    use crate::onion::directory::{NodeList, Vote, consensus, encode_list, sign_digest};
    use crate::random::seeded;
    let now = 1_800_000_000;
    let auths: Vec<Identity> = (0..3).map(|i| Identity::generate(&mut seeded(i))).collect();
    let pinned: Vec<_> = auths.iter().map(Identity::public).collect();
    let _ = NodeList::verify(data, &pinned, now);
    let _ = Vote::verify(data, &pinned);
    let vote = Vote::sign(&auths[0], now, vec![]).expect("vote");
    let vote = Vote::verify(&vote, &pinned).expect("verify");
    let (body, digest) = consensus(
        &[
            vote.clone(),
            Vote {
                authority: pinned[1].id(),
                ..vote
            },
        ],
        3,
        600,
    );
    let sigs: Vec<_> = auths[..2]
        .iter()
        .map(|a| (a.public().id(), sign_digest(a, &digest)))
        .collect();
    let mut list = encode_list(&body, &sigs);
    let changed = data.iter().take(list.len()).any(|&b| b != 0);
    for (i, b) in data.iter().enumerate().take(list.len()) {
        list[i] ^= b;
    }
    let r = NodeList::verify(&list, &pinned, now);
    if !changed {
        assert!(r.is_ok());
    }
    if let Ok(l) = r {
        assert!(l.entries.len() <= crate::onion::directory::MAX_NODES);
    }
}

/// A node's relay machine under a hostile neighbour: a real circuit is
/// built through it, then the input, cut into cells by one length byte
/// each (padded to a cell), comes in on the client's link and on the next
/// hop's. Invariants: no panic, and what it queues stays bounded (a cell
/// out per cell in, plus DESTROYs).
pub fn onion_relay(data: &[u8]) {
    use crate::keys::NodeId;
    use crate::onion::cell::CELL_LEN;
    use crate::onion::circuit::{ClientCircuit, HopInfo, Relay, RelayOut};
    use crate::onion::handshake::Responder;
    use crate::random::seeded;
    let now = 1_800_000_000;
    let mut rng = seeded(5);
    let node = NodeId([1; 15]);
    let mut responder = Responder::generate(node, &mut rng);
    responder.learn_digest([2; 32]);
    let info = HopInfo {
        id: node,
        onion_key: responder.onion_key(),
    };
    let mut relay = Relay::new(node, responder);
    let (mut client, create) =
        ClientCircuit::start(0x8000_0001, &info, [2; 32], now, &mut rng).expect("start");
    let _ = relay.on_cell(1, create.into_bytes(), now, &mut rng);
    while let Some(out) = relay.poll() {
        if let RelayOut::Send { mut cell, .. } = out {
            let _ = client.on_cell(&mut cell, now);
        }
    }
    let mut rest = data;
    let mut cells = 0usize;
    while let Some((&n, tail)) = rest.split_first() {
        let take = usize::from(n).min(tail.len());
        let (chunk, tail) = tail.split_at(take);
        rest = tail;
        let mut bytes = chunk.to_vec();
        if n % 2 == 0 {
            bytes.resize(CELL_LEN, 0);
        }
        let link = if n % 3 == 0 { 2 } else { 1 };
        let _ = relay.on_cell(link, bytes, now, &mut rng);
        cells += 1;
        let mut out = 0usize;
        while relay.poll().is_some() {
            out += 1;
        }
        assert!(out <= 4, "{out} outputs for one cell");
    }
    assert!(relay.len() <= cells + 1);
}

/// The mesh packet decoder: whatever decodes re-encodes to the same bytes.
pub fn mesh_packet(data: &[u8]) {
    use crate::mesh::packet::Packet;
    if let Ok(p) = Packet::decode(data) {
        let mut out = Vec::new();
        p.encode(&mut out).expect("a decoded packet encodes");
        assert_eq!(out, data);
    }
}

/// The node record decoder and its checks: never a panic, and a record
/// that verifies is one whose every field decoded.
pub fn node_record(data: &[u8]) {
    use crate::mesh::record::NodeRecord;
    if let Ok(r) = NodeRecord::decode(data) {
        assert!(r.addrs.len() <= crate::mesh::record::MAX_ADDRS);
        let _ = r.check(data, 1_000_000, Some(1));
    }
}

/// A mesh link under a hostile peer, two ways, split by the first byte:
/// even, the bytes go raw to an inbound link (preamble, handshake
/// packets, framing); odd, a real handshake is made first and the bytes,
/// cut into records by one length byte each, are sealed by the peer as
/// packets of its own choosing (every id, every state). Invariants: no
/// panic, the read buffer holds at most one frame and a read chunk, and
/// what the link queues stays a small multiple of what came in.
pub fn mesh_link(data: &[u8]) {
    use crate::keys::Identity;
    use crate::mesh::link::{Link, LinkConfig};
    use crate::mesh::record::{Claims, NodeRecord};
    use crate::random::seeded;
    use crate::session::aead::Backend;
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let t0 = Instant::now();
    let cfg = LinkConfig::new(Backend::Ring);
    let (a, b) = (
        Identity::generate(&mut seeded(1)),
        Identity::generate(&mut seeded(2)),
    );
    let rec = |id: &Identity| {
        NodeRecord::sign(
            id,
            &Claims {
                issued: 1,
                ttl: 60,
                ..Claims::default()
            },
        )
        .expect("a small record signs")
    };
    let mut inbound = Link::inbound(cfg, b.x25519_secret(), rec(&b), t0, &mut seeded(3));
    if mode % 2 == 0 {
        inbound.input(t0, rest, &mut |_| {});
        inbound.handle_timeout(t0 + Duration::from_secs(60));
        assert!(inbound.queued() <= 4096 + rest.len() * 4);
        return;
    }
    let mut outbound = Link::outbound(cfg, a.x25519_secret(), rec(&a), None, t0, &mut seeded(4))
        .expect("a handshake starts");
    for _ in 0..3 {
        let out = outbound.output().to_vec();
        outbound.advance(out.len());
        inbound.input(t0, &out, &mut |_| {});
        let back = inbound.output().to_vec();
        inbound.advance(back.len());
        outbound.input(t0, &back, &mut |_| {});
    }
    let before = inbound.queued();
    let mut left = rest;
    let mut fed = 0usize;
    while let Some((&n, r)) = left.split_first() {
        let n = usize::from(n).min(r.len());
        let (plain, r) = r.split_at(n);
        left = r;
        if outbound.seal_raw(plain).is_err() {
            break;
        }
        let wire = outbound.output().to_vec();
        outbound.advance(wire.len());
        fed += wire.len();
        inbound.input(t0, &wire, &mut |_| {});
    }
    inbound.handle_timeout(t0 + Duration::from_secs(30));
    assert!(inbound.queued() <= before + 4096 + fed * 4);
}

/// The connector message decoder: whatever decodes re-encodes to the same bytes.
pub fn connector(data: &[u8]) {
    if let Ok(m) = crate::connector::Msg::decode(data) {
        assert_eq!(m.encode(), data);
    }
}

/// The pairing message decoder: whatever decodes re-encodes to the same bytes.
pub fn pair_hello(data: &[u8]) {
    if let Ok(h) = crate::keys::pair::PairHello::decode(data) {
        assert_eq!(h.encode().ok().as_deref(), Some(data));
    }
}

/// The proxy's request decoders (SOCKS5 greeting and request, HTTP CONNECT).
pub fn socks(data: &[u8]) {
    use crate::tunnel::socks::{greeting, http_connect, request};
    if let Ok(Some((_, n))) = greeting(data) {
        assert!(n <= data.len());
        if let Ok(Some((_, m))) = request(&data[n..]) {
            assert!(n + m <= data.len());
        }
    }
    if let Ok(Some((_, n))) = http_connect(data) {
        assert!(n <= data.len());
    }
}

/// The stream multiplexer: the input is a sequence of frames, each
/// preceded by one length byte, fed to the exit's side.
pub fn mux(data: &[u8]) {
    let mut m = crate::tunnel::mux::Mux::new(
        crate::tunnel::mux::End::Server,
        crate::tunnel::mux::Limits {
            pool: 1 << 20,
            max_streams: 16,
        },
    );
    let mut rest = data;
    while let Some((&n, r)) = rest.split_first() {
        let n = usize::from(n).min(r.len());
        let (frame, r) = r.split_at(n);
        rest = r;
        if let Ok(crate::tunnel::mux::Frame::Data { .. }) = crate::tunnel::mux::Frame::decode(frame) {
            // Whatever decodes re-encodes to the same bytes.
            assert_eq!(
                crate::tunnel::mux::Frame::decode(frame)
                    .map(|f| f.to_vec())
                    .ok()
                    .as_deref(),
                Some(frame)
            );
        }
        let _ = m.handle(frame);
        assert!(m.len() <= 16);
    }
}

/// The `--allow` / `--deny` rule parser.
pub fn policy_rule(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data)
        && let Ok(r) = crate::tunnel::policy::Rule::parse(s)
    {
        let _ = r.matches(std::net::SocketAddr::from(([10, 0, 0, 1], 80)));
    }
}

/// The relay's lobby state machine, driven by a script of connects,
/// packets (in wire format), disconnects and clock ticks. Invariants: the
/// lobby stays within its size, and nothing is ever sent from a uid that
/// was not in the lobby.
pub fn lobby_relay(data: &[u8]) {
    use crate::lobby::Packet;
    use crate::lobby::relay::{Lobby, LobbyConfig, Out};
    let cfg = LobbyConfig {
        max_peers: 8,
        ..Default::default()
    };
    let mut l = Lobby::new(cfg);
    let start = Instant::now();
    let mut t = Duration::ZERO;
    let mut uids: Vec<u16> = Vec::new();
    let mut out = Vec::new();
    let mut rest = data;
    while let Some((&op, r)) = rest.split_first() {
        rest = r;
        let who = if uids.is_empty() {
            1
        } else {
            uids[usize::from(op / 4) % uids.len()]
        };
        match op % 4 {
            0 => {
                let addr = std::net::SocketAddr::from(([10, 0, 0, op], 1000 + u16::from(op)));
                if let Ok(u) = l.connect(start + t, addr) {
                    uids.push(u);
                }
            }
            1 => match Packet::decode(rest) {
                Ok(Some((p, n))) => {
                    rest = &rest[n..];
                    l.receive(start + t, who, p, &mut out);
                }
                _ => rest = rest.get(1..).unwrap_or_default(),
            },
            2 => l.disconnect(who, &mut out),
            _ => {
                t += Duration::from_millis(u64::from(op) * 97);
                l.tick(start + t, &mut out);
            }
        }
        for o in out.drain(..) {
            if let Out::Send { packet, .. } = o {
                assert!(packet.uid == 0 || uids.contains(&packet.uid));
            }
        }
        assert!(l.len() <= 8);
    }
}

/// The LAN announcement decoder: whatever decodes re-encodes to the same bytes.
pub fn lan_announce(data: &[u8]) {
    if let Ok(a) = crate::channel::lan::Announce::decode(data) {
        assert_eq!(a.encode().ok().as_deref(), Some(data));
    }
}

/// The stapling hello decoder.
pub fn staple_hello(data: &[u8]) {
    if let Ok(Some((h, n))) = StapleHello::decode(data) {
        assert!(n <= data.len());
        assert_eq!(
            StapleHello::decode(&h.encode().unwrap_or_default())
                .ok()
                .flatten()
                .map(|x| x.0),
            Some(h)
        );
    }
    if let Ok(Some((h, n))) = crate::staple::TokenHello::decode(data) {
        assert_eq!(n, crate::staple::TOKEN_HELLO_LEN);
        assert_eq!(
            crate::staple::TokenHello::decode(&h.encode())
                .ok()
                .flatten()
                .map(|x| x.0),
            Some(h)
        );
    }
}

/// The stapling reply decoder.
pub fn staple_reply(data: &[u8]) {
    if let Ok(Some((r, _))) = StapleReply::decode(data) {
        assert_eq!(
            StapleReply::decode(&r.encode()).ok().flatten().map(|x| x.0),
            Some(r)
        );
    }
}

/// One transfer message: decode, and re-encode what decoded.
pub fn transfer_message(data: &[u8]) {
    if let Ok(m) = Message::decode(data) {
        assert_eq!(Message::decode(&m.to_vec()).ok(), Some(m));
    }
}

/// The receiving state machine fed a sequence of records (each prefixed by a
/// one-byte length), accepting whenever an offer completes.
pub fn transfer_receiver(data: &[u8]) {
    let mut rx = Receiver::new();
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let n = usize::from(len).min(tail.len());
        let (rec, tail) = tail.split_at(n);
        rest = tail;
        if let Ok(crate::transfer::RxEvent::OfferReady) = rx.handle(std::time::Instant::now(), rec) {
            let _ = rx.accept();
        }
    }
}

/// The sending state machine with a small offer, fed what a receiver
/// might say (records as for [`transfer_receiver`]), and driven on as far
/// as each answer allows: files begun, all their bytes counted, ended;
/// timers run at a clock that advances a second per record.
pub fn transfer_sender(data: &[u8]) {
    use crate::transfer::{Attempt, Entry, EntryKind, Next, OfferKind, Sender};
    let entries = vec![
        Entry {
            kind: EntryKind::Dir,
            executable: false,
            size: 0,
            path: "d".into(),
        },
        Entry {
            kind: EntryKind::File,
            executable: false,
            size: 3,
            path: "d/f".into(),
        },
        Entry {
            kind: EntryKind::File,
            executable: false,
            size: 0,
            path: "e".into(),
        },
    ];
    let again = data.first().is_some_and(|b| b & 1 == 1);
    let attempt = if again { Attempt::Again } else { Attempt::First };
    let mut now = Instant::now();
    let mut tx = Sender::new(OfferKind::Files, entries, attempt).timeouts(Duration::from_secs(15), now);
    let mut out = Vec::new();
    let mut rest = data.get(1..).unwrap_or_default();
    while let Some((&len, tail)) = rest.split_first() {
        let n = usize::from(len).min(tail.len());
        let (rec, tail) = tail.split_at(n);
        rest = tail;
        now += Duration::from_secs(1);
        let _ = tx.handle(now, rec);
        let _ = tx.handle_timeout(now);
        while tx.poll_transmit(now, &mut out) {
            assert!(
                Message::decode(&out).is_ok(),
                "the sender queued bytes that do not decode"
            );
        }
        while let Ok(Next::File { index, resume, .. }) = tx.next_file() {
            let size = tx.entries()[index].size as usize;
            let from = resume.map(|r| r.offset).filter(|_| len % 2 == 0);
            if tx.begin(index, from).is_err() {
                break;
            }
            while tx.poll_transmit(now, &mut out) {}
            let left = size - from.unwrap_or(0) as usize;
            assert!(tx.sent_data(now, left).is_ok());
            let hash = tx.hashing().then_some([0u8; 32]);
            assert!(tx.end_file(hash).is_ok());
            while tx.poll_transmit(now, &mut out) {}
        }
    }
}

/// Length-prefixed transfer messages over a byte stream: the bytes arrive
/// in pieces (their sizes from the first byte); every message that comes
/// out is within bounds and re-frames to the bytes it came from.
pub fn transfer_framing(data: &[u8]) {
    use crate::transfer::framing::{Reader, put};
    let step = usize::from(data.first().copied().unwrap_or(1)).max(1);
    let mut r = Reader::default();
    let mut out = Vec::new();
    for piece in data.chunks(step) {
        r.push(piece);
        loop {
            match r.next_message() {
                Ok(Some(m)) => {
                    assert!(m.len() <= crate::session::MAX_PLAINTEXT);
                    assert!(put(m, &mut out));
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    assert!(
        data.starts_with(&out),
        "re-framed messages differ from what arrived"
    );
}

/// The relay's JSON bodies.
pub fn api_json(data: &[u8]) {
    let _ = decode_json::<JoinRequest>(data);
    let _ = decode_json::<ChannelRequest>(data);
    let _ = decode_json::<ChannelState>(data);
}

/// The channel table driven by a list of operations encoded in the bytes:
/// each op is `kind:u8 ip:u8 arg:u8`, applied at a clock that advances.
pub fn channel_table(data: &[u8]) {
    let mut t = ChannelTable::new(TableConfig {
        idle_ttl: Duration::from_secs(30),
        max_channels_per_ip: 4,
        max_channels: 16,
    });
    let start = Instant::now();
    let mut joined: Vec<(String, String, IpAddr)> = Vec::new();
    let mut seed = 0u8;
    let mut fill = move |b: &mut [u8]| {
        for x in b {
            seed = seed.wrapping_mul(29).wrapping_add(11);
            *x = seed;
        }
    };
    for (i, op) in data.chunks_exact(3).enumerate() {
        let now = start + Duration::from_secs(i as u64);
        let ip = IpAddr::from([127, 0, 0, op[1] % 5]);
        let pick = joined.get(usize::from(op[2]) % joined.len().max(1)).cloned();
        match op[0] % 8 {
            0 | 1 => {
                let req = JoinRequest {
                    channel: if op[0] % 2 == 0 {
                        None
                    } else {
                        Some((op[2] % 4).to_string())
                    },
                    curve: None,
                    role: if op[2] % 2 == 0 {
                        crate::channel::api::Role::Sender
                    } else {
                        crate::channel::api::Role::Recipient
                    },
                };
                if let Ok(r) = t.join(now, ip, &req, &mut fill) {
                    joined.push((r.channel, r.uuid, ip));
                }
            }
            2..=5 => {
                if let Some((ch, uuid, _)) = pick {
                    let mut req = ChannelRequest {
                        channel: ch,
                        uuid,
                        ..Default::default()
                    };
                    match op[0] % 8 {
                        2 => req.x = Some("ab".repeat(33)),
                        3 => {
                            req.y = Some("cd".repeat(33));
                            req.hh_k = Some("ef".repeat(32));
                        }
                        4 => req.h_k = Some("01".repeat(32)),
                        _ => req.close = Some(true),
                    }
                    let _ = t.post(now, ip, &req);
                }
            }
            6 => {
                if let Some((ch, uuid, _)) = pick
                    && t.staple_check(now, ip, &ch, &uuid).is_ok()
                {
                    t.set_stapled(now, &ch);
                }
            }
            _ => {
                t.expire(now);
            }
        }
        assert!(t.len() <= 16);
    }
}

/// The relay's request-head parser.
pub fn http_request(data: &[u8]) {
    if let Ok(Some(h)) = crate::channel::http::parse_request_head(data) {
        assert!(h.head_len <= data.len() && h.head_len <= crate::channel::http::MAX_HEAD);
        assert!(h.content_length <= crate::channel::api::MAX_BODY);
    }
}

/// A peer's response parser.
pub fn http_response(data: &[u8]) {
    if let Ok(r) = crate::channel::http::parse_response(data) {
        assert!(r.body.len() <= data.len());
    }
}

/// The lobby packet decoder: decode, and re-encode what decoded.
pub fn lobby_packet(data: &[u8]) {
    if let Ok(Some((p, n))) = crate::lobby::Packet::decode(data) {
        assert!(n <= data.len() && n <= crate::lobby::MAX_PACKET);
        assert_eq!(
            crate::lobby::Packet::decode(&p.to_vec())
                .ok()
                .flatten()
                .map(|x| x.0),
            Some(p)
        );
    }
}

/// The record layer: the length prefix; opening arbitrary bytes in place
/// (never a panic, never a success without the key); and what is sealed
/// opens to itself.
pub fn record(data: &[u8]) {
    use crate::session::{LEN_PREFIX, MAX_PLAINTEXT, MAX_RECORD, handshake_in_memory};
    if let Ok(Some(n)) = peek_record_len(data) {
        assert!((16..=65535).contains(&n));
    }
    let key = crate::channel::pake::SessionKey::from_bytes([7; 32]);
    let backend = crate::session::aead::Backend::detect();
    let Ok((a, b)) = handshake_in_memory(&key, "fuzz", backend, &mut crate::random::seeded(7)) else {
        return;
    };
    let (mut tx, _) = a.split();
    let (_, mut rx) = b.split();
    let mut forged = data[..data.len().min(MAX_RECORD)].to_vec();
    assert!(rx.open_in_place(&mut forged).is_err());
    let plain = &data[..data.len().min(MAX_PLAINTEXT)];
    let mut wire = Vec::new();
    tx.seal(plain, &mut wire)
        .expect("a plaintext within the limit seals");
    assert_eq!(
        rx.open_in_place(&mut wire[LEN_PREFIX..]).ok(),
        Some(&mut plain.to_vec()[..])
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Random bytes through every target, beyond the committed seeds.
        #[test]
        fn targets_never_panic_on_random_bytes(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            for (_, target) in TARGETS {
                target(&data);
            }
        }
    }

    /// Replays every committed seed corpus through its target.
    #[test]
    fn corpus_replays() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
        for (name, target) in TARGETS {
            let dir = root.join(name);
            let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            let mut n = 0;
            for entry in entries {
                let path = entry.unwrap().path();
                target(&std::fs::read(&path).unwrap());
                n += 1;
            }
            assert!(n > 0, "empty corpus for {name}");
        }
    }
}
