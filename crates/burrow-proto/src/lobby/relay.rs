//! The relay's lobby (seed 003), sans-IO: uids, identities, the New_server
//! broadcast, which packets may pass between which peers, and the pairs that
//! may open the "secure room" (the second, stapled connection).
//!
//! The driver calls [`Lobby::connect`] for each new lobby connection,
//! [`Lobby::receive`] for each decoded packet, [`Lobby::disconnect`] when a
//! connection ends and [`Lobby::tick`] now and then, and carries out the
//! [`Out`] actions in order. A packet the driver cannot decode is
//! [`Lobby::violation`]: `Closed{0000}` to that peer, then its connection ends.
//!
//! Rules:
//! - a connection's first packet is `Hello_as_a_server` or `Hello_as_a_client`
//!   (to uid 0000); the relay answers with the peer's identity (the address it
//!   sees) and, to clients, a `New_server` for every waiting server; a new
//!   server is announced to every waiting client;
//! - client→client and server→server packets are refused (`Relay_failure`);
//!   packets between a client and a server pass through unread, except that
//!   `X_and_client_identity` opens a handshake (the identity must be the
//!   client's own), `Agreement` marks it agreed, `Spoke_failure` and `Refused`
//!   end it, and `Accepted` (only after `Agreement`) pairs the two: the server
//!   gets `Accepted`, the client `Done`, both leave the lobby and their
//!   other counterparts get `Closed`;
//! - packets only the relay sends (identities, New_server, Closed, Relay_failure,
//!   Done, Timeout), a second Hello, a packet to uid 0000 other than Hello, or
//!   more than the packet rate close only that peer;
//! - a peer that says no Hello within the handshake timeout, or stays longer
//!   than the lobby timeout, gets `Timeout` and is closed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::lobby::{Body, Identity, PUBLIC_LEN, Packet, RELAY_UID, RelayFailure};

/// Limits of a lobby.
#[derive(Debug, Clone)]
pub struct LobbyConfig {
    /// Most peers at once.
    pub max_peers: usize,
    /// Time to send a Hello.
    pub handshake_timeout: Duration,
    /// Longest stay in the lobby.
    pub lobby_timeout: Duration,
    /// Most packets per peer per second.
    pub max_packets_per_sec: u32,
    /// How long an accepted pair may take to open its second connection.
    pub pair_timeout: Duration,
}

impl Default for LobbyConfig {
    fn default() -> Self {
        Self {
            max_peers: 4096,
            handshake_timeout: Duration::from_secs(10),
            lobby_timeout: Duration::from_secs(600),
            max_packets_per_sec: 64,
            pair_timeout: Duration::from_secs(60),
        }
    }
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    /// Write this packet (its uid already rewritten) to peer `to`.
    Send {
        /// The recipient's uid.
        to: u16,
        /// The packet.
        packet: Packet,
    },
    /// End peer `uid`'s connection after what was sent to it.
    Close {
        /// The peer.
        uid: u16,
    },
}

/// Why a connection was not let in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LobbyError {
    /// No uid free or the lobby is at its size limit.
    #[error("the lobby is full")]
    Full,
    /// The address does not make a valid identity.
    #[error("unusable peer address")]
    BadAddress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Pending,
    Server,
    Client,
}

#[derive(Debug)]
struct Peer {
    role: Role,
    identity: Identity,
    public: [u8; PUBLIC_LEN],
    joined: Instant,
    window: Instant,
    count: u32,
}

/// Which side of a pair a second connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The sender (lobby server).
    Server,
    /// The receiver (lobby client).
    Client,
}

/// A pair allowed to open its second connection.
#[derive(Debug, Clone)]
struct Pair {
    server: Identity,
    client: Identity,
    until: Instant,
}

/// The lobby's state.
#[derive(Debug)]
pub struct Lobby {
    cfg: LobbyConfig,
    peers: BTreeMap<u16, Peer>,
    next: u16,
    /// (client, server) in a handshake.
    talks: HashSet<(u16, u16)>,
    /// (client, server) past Agreement.
    agreed: HashSet<(u16, u16)>,
    /// Accepted pairs by a key both halves compute from their identities.
    pairs: HashMap<String, Pair>,
}

/// The key under which a pair's second connections meet.
pub fn pair_key(server: &str, client: &str) -> String {
    format!("{server}|{client}")
}

impl Lobby {
    /// An empty lobby.
    pub fn new(cfg: LobbyConfig) -> Self {
        Self {
            cfg,
            peers: BTreeMap::new(),
            next: 1,
            talks: HashSet::new(),
            agreed: HashSet::new(),
            pairs: HashMap::new(),
        }
    }

    /// Peers in the lobby.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether the lobby is empty.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// A new lobby connection from `addr`: its uid (1..=0xFFFF, never two
    /// live peers with one uid).
    pub fn connect(&mut self, now: Instant, addr: SocketAddr) -> Result<u16, LobbyError> {
        if self.peers.len() >= self.cfg.max_peers.min(0xFFFF) {
            return Err(LobbyError::Full);
        }
        let identity = Identity::new(&addr.to_string()).map_err(|_| LobbyError::BadAddress)?;
        let mut uid = self.next;
        while uid == RELAY_UID || self.peers.contains_key(&uid) {
            uid = uid.wrapping_add(1);
        }
        self.next = uid.wrapping_add(1);
        self.peers.insert(
            uid,
            Peer {
                role: Role::Pending,
                identity,
                public: [0; PUBLIC_LEN],
                joined: now,
                window: now,
                count: 0,
            },
        );
        Ok(uid)
    }

    fn send(out: &mut Vec<Out>, to: u16, uid: u16, body: Body) {
        out.push(Out::Send {
            to,
            packet: Packet { uid, body },
        });
    }

    /// Removes `uid` and tells everyone in a handshake with it.
    fn remove(&mut self, uid: u16, out: &mut Vec<Out>) {
        if self.peers.remove(&uid).is_none() {
            return;
        }
        let mut others: Vec<u16> = Vec::new();
        for &(c, s) in self.talks.iter().filter(|(c, s)| *c == uid || *s == uid) {
            others.push(if c == uid { s } else { c });
        }
        self.talks.retain(|(c, s)| *c != uid && *s != uid);
        self.agreed.retain(|(c, s)| *c != uid && *s != uid);
        others.sort_unstable();
        others.dedup();
        for o in others {
            if self.peers.contains_key(&o) {
                Self::send(out, o, RELAY_UID, Body::Closed { uid });
            }
        }
        out.push(Out::Close { uid });
    }

    /// Closes a peer that broke the rules: `Closed{0000}`, then the connection.
    pub fn violation(&mut self, uid: u16, out: &mut Vec<Out>) {
        if self.peers.contains_key(&uid) {
            Self::send(out, uid, RELAY_UID, Body::Closed { uid: RELAY_UID });
        }
        self.remove(uid, out);
    }

    /// A peer's connection ended.
    pub fn disconnect(&mut self, uid: u16, out: &mut Vec<Out>) {
        self.remove(uid, out);
    }

    /// Times peers out; call about once a second.
    pub fn tick(&mut self, now: Instant, out: &mut Vec<Out>) {
        let late: Vec<u16> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                let limit = if p.role == Role::Pending {
                    self.cfg.handshake_timeout
                } else {
                    self.cfg.lobby_timeout
                };
                now.saturating_duration_since(p.joined) >= limit
            })
            .map(|(u, _)| *u)
            .collect();
        for uid in late {
            Self::send(out, uid, RELAY_UID, Body::Timeout);
            self.remove(uid, out);
        }
        self.pairs.retain(|_, p| p.until > now);
    }

    fn role(&self, uid: u16) -> Option<Role> {
        self.peers.get(&uid).map(|p| p.role)
    }

    /// Handles one packet from `from`.
    pub fn receive(&mut self, now: Instant, from: u16, p: Packet, out: &mut Vec<Out>) {
        let Some(peer) = self.peers.get_mut(&from) else {
            return;
        };
        if now.saturating_duration_since(peer.window) >= Duration::from_secs(1) {
            peer.window = now;
            peer.count = 0;
        }
        peer.count += 1;
        if peer.count > self.cfg.max_packets_per_sec {
            return self.violation(from, out);
        }
        let role = peer.role;
        match (role, p.body) {
            (Role::Pending, Body::HelloAsServer { public }) if p.uid == RELAY_UID => {
                peer.role = Role::Server;
                peer.public = public;
                let identity = peer.identity.clone();
                Self::send(out, from, RELAY_UID, Body::ServerIdentity(identity.clone()));
                let clients: Vec<u16> = self
                    .peers
                    .iter()
                    .filter(|(_, q)| q.role == Role::Client)
                    .map(|(u, _)| *u)
                    .collect();
                for c in clients {
                    Self::send(
                        out,
                        c,
                        RELAY_UID,
                        Body::NewServer {
                            uid: from,
                            public,
                            identity: identity.clone(),
                        },
                    );
                }
            }
            (Role::Pending, Body::HelloAsClient) if p.uid == RELAY_UID => {
                peer.role = Role::Client;
                Self::send(out, from, RELAY_UID, Body::ClientIdentity(peer.identity.clone()));
                let servers: Vec<(u16, [u8; PUBLIC_LEN], Identity)> = self
                    .peers
                    .iter()
                    .filter(|(_, q)| q.role == Role::Server)
                    .map(|(u, q)| (*u, q.public, q.identity.clone()))
                    .collect();
                for (uid, public, identity) in servers {
                    Self::send(
                        out,
                        from,
                        RELAY_UID,
                        Body::NewServer {
                            uid,
                            public,
                            identity,
                        },
                    );
                }
            }
            (Role::Pending, _) => self.violation(from, out),
            (_, Body::HelloAsServer { .. } | Body::HelloAsClient) => self.violation(from, out),
            (
                _,
                Body::ServerIdentity(_)
                | Body::ClientIdentity(_)
                | Body::NewServer { .. }
                | Body::Closed { .. }
                | Body::RelayFailure { .. }
                | Body::Done
                | Body::Timeout,
            ) => self.violation(from, out),
            (_, _) if p.uid == RELAY_UID => self.violation(from, out),
            (Role::Client, body) => self.client_packet(from, p.uid, body, out),
            (Role::Server, body) => self.server_packet(from, p.uid, body, out),
        }
    }

    fn refuse(out: &mut Vec<Out>, from: u16, reason: RelayFailure, uid: u16) {
        Self::send(out, from, RELAY_UID, Body::RelayFailure { reason, uid });
    }

    fn client_packet(&mut self, client: u16, server: u16, body: Body, out: &mut Vec<Out>) {
        if self.role(server) != Some(Role::Server) {
            return Self::refuse(out, client, RelayFailure::InvalidServer, server);
        }
        let pair = (client, server);
        match body {
            Body::XAndClientIdentity { ref identity, .. } => {
                let own = self.peers.get(&client).map(|p| &p.identity);
                if own != Some(identity) {
                    // A client may only speak for itself.
                    return self.violation(client, out);
                }
                self.talks.insert(pair);
                self.agreed.remove(&pair);
                Self::send(out, server, client, body);
            }
            Body::ClientValidator(_) if self.talks.contains(&pair) => Self::send(out, server, client, body),
            Body::SpokeFailure(_) if self.talks.contains(&pair) => {
                self.talks.remove(&pair);
                self.agreed.remove(&pair);
                Self::send(out, server, client, body);
            }
            Body::Refused if self.agreed.contains(&pair) => {
                self.talks.remove(&pair);
                self.agreed.remove(&pair);
                Self::send(out, server, client, body);
            }
            Body::Accepted if self.agreed.contains(&pair) => {
                let (Some(s), Some(c)) = (self.peers.get(&server), self.peers.get(&client)) else {
                    return;
                };
                let key = pair_key(s.identity.as_str(), c.identity.as_str());
                self.pairs.insert(
                    key,
                    Pair {
                        server: s.identity.clone(),
                        client: c.identity.clone(),
                        until: s.joined.max(c.joined) + self.cfg.lobby_timeout + self.cfg.pair_timeout,
                    },
                );
                Self::send(out, server, client, Body::Accepted);
                Self::send(out, client, RELAY_UID, Body::Done);
                // Both leave the lobby; their other counterparts learn it.
                self.talks.remove(&pair);
                self.agreed.remove(&pair);
                self.remove(server, out);
                self.remove(client, out);
            }
            Body::Accepted | Body::Refused => Self::refuse(out, client, RelayFailure::NoAgreement, server),
            Body::ClientValidator(_) | Body::SpokeFailure(_) => {
                Self::refuse(out, client, RelayFailure::NoHandshake, server)
            }
            // Only servers send these.
            Body::YAndServerValidator { .. } | Body::Agreement => self.violation(client, out),
            _ => self.violation(client, out),
        }
    }

    fn server_packet(&mut self, server: u16, client: u16, body: Body, out: &mut Vec<Out>) {
        if self.role(client) != Some(Role::Client) {
            return Self::refuse(out, server, RelayFailure::InvalidClient, client);
        }
        let pair = (client, server);
        if !self.talks.contains(&pair) {
            return Self::refuse(out, server, RelayFailure::NoHandshake, client);
        }
        match body {
            Body::YAndServerValidator { .. } => Self::send(out, client, server, body),
            Body::Agreement => {
                self.agreed.insert(pair);
                Self::send(out, client, server, body);
            }
            Body::SpokeFailure(_) => {
                self.talks.remove(&pair);
                self.agreed.remove(&pair);
                Self::send(out, client, server, body);
            }
            _ => self.violation(server, out),
        }
    }

    /// A second connection naming `identity` from `ip`: if it is half of an
    /// accepted pair (and comes from the identity's address), the key under
    /// which to staple it and which side it is.
    pub fn second_connection(&self, now: Instant, identity: &str, ip: IpAddr) -> Option<(String, Side)> {
        let from_ip = identity
            .parse::<SocketAddr>()
            .is_ok_and(|a| a.ip().to_canonical() == ip.to_canonical());
        if !from_ip {
            return None;
        }
        self.pairs.iter().find_map(|(k, p)| {
            if p.until <= now {
                None
            } else if p.server.as_str() == identity {
                Some((k.clone(), Side::Server))
            } else if p.client.as_str() == identity {
                Some((k.clone(), Side::Client))
            } else {
                None
            }
        })
    }

    /// Forgets a pair once its second connections are stapled.
    pub fn forget_pair(&mut self, key: &str) {
        self.pairs.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lobby::SpokeFailure;

    fn addr(n: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, n], 4000 + u16::from(n)))
    }

    fn pkt(uid: u16, body: Body) -> Packet {
        Packet { uid, body }
    }

    fn sends_to(out: &[Out], to: u16) -> Vec<Body> {
        out.iter()
            .filter_map(|o| match o {
                Out::Send { to: t, packet } if *t == to => Some(packet.body.clone()),
                _ => None,
            })
            .collect()
    }

    fn closed(out: &[Out], uid: u16) -> bool {
        out.contains(&Out::Close { uid })
    }

    struct World {
        l: Lobby,
        now: Instant,
    }

    impl World {
        fn new() -> Self {
            Self {
                l: Lobby::new(LobbyConfig::default()),
                now: Instant::now(),
            }
        }
        fn join(&mut self, n: u8, server: bool) -> (u16, Vec<Out>) {
            let uid = self.l.connect(self.now, addr(n)).unwrap();
            let mut out = Vec::new();
            let body = if server {
                Body::HelloAsServer {
                    public: [n; PUBLIC_LEN],
                }
            } else {
                Body::HelloAsClient
            };
            self.l.receive(self.now, uid, pkt(0, body), &mut out);
            (uid, out)
        }
        fn rx(&mut self, from: u16, to: u16, body: Body) -> Vec<Out> {
            let mut out = Vec::new();
            self.l.receive(self.now, from, pkt(to, body), &mut out);
            out
        }
    }

    fn ident(n: u8) -> Identity {
        Identity::new(&addr(n).to_string()).unwrap()
    }

    #[test]
    fn servers_are_broadcast_to_clients_both_ways() {
        let mut w = World::new();
        let (s1, out) = w.join(1, true);
        assert_eq!(sends_to(&out, s1), vec![Body::ServerIdentity(ident(1))]);
        let (c1, out) = w.join(2, false);
        assert_eq!(
            sends_to(&out, c1),
            vec![
                Body::ClientIdentity(ident(2)),
                Body::NewServer {
                    uid: s1,
                    public: [1; PUBLIC_LEN],
                    identity: ident(1)
                }
            ]
        );
        let (s2, out) = w.join(3, true);
        assert_eq!(
            sends_to(&out, c1),
            vec![Body::NewServer {
                uid: s2,
                public: [3; PUBLIC_LEN],
                identity: ident(3)
            }]
        );
        assert!(sends_to(&out, s1).is_empty());
    }

    #[test]
    fn a_full_handshake_pairs_and_empties_the_lobby() {
        let mut w = World::new();
        let (s, _) = w.join(1, true);
        let (c, _) = w.join(2, false);
        let (c2, _) = w.join(5, false);
        // c2 is also talking to s: it must learn that s left.
        w.rx(
            c2,
            s,
            Body::XAndClientIdentity {
                x: [9; 32],
                identity: ident(5),
            },
        );
        let out = w.rx(
            c,
            s,
            Body::XAndClientIdentity {
                x: [7; 32],
                identity: ident(2),
            },
        );
        assert_eq!(
            out,
            vec![Out::Send {
                to: s,
                packet: pkt(
                    c,
                    Body::XAndClientIdentity {
                        x: [7; 32],
                        identity: ident(2)
                    }
                )
            }]
        );
        let out = w.rx(
            s,
            c,
            Body::YAndServerValidator {
                y: [1; 32],
                validator: [2; 64],
            },
        );
        assert_eq!(sends_to(&out, c).len(), 1);
        // Accepted before Agreement is refused.
        let out = w.rx(c, s, Body::Accepted);
        assert_eq!(
            sends_to(&out, c),
            vec![Body::RelayFailure {
                reason: RelayFailure::NoAgreement,
                uid: s
            }]
        );
        w.rx(c, s, Body::ClientValidator([3; 64]));
        w.rx(s, c, Body::Agreement);
        let out = w.rx(c, s, Body::Accepted);
        assert_eq!(sends_to(&out, s), vec![Body::Accepted]);
        assert_eq!(sends_to(&out, c), vec![Body::Done]);
        assert_eq!(sends_to(&out, c2), vec![Body::Closed { uid: s }]);
        assert!(closed(&out, s) && closed(&out, c) && !closed(&out, c2));
        assert_eq!(w.l.len(), 1);
        let (key, side) =
            w.l.second_connection(w.now, ident(1).as_str(), addr(1).ip())
                .unwrap();
        assert_eq!(
            (key.as_str(), side),
            (
                pair_key(ident(1).as_str(), ident(2).as_str()).as_str(),
                Side::Server
            )
        );
        assert_eq!(
            w.l.second_connection(w.now, ident(2).as_str(), addr(2).ip())
                .map(|x| x.1),
            Some(Side::Client)
        );
        // Another address cannot claim the identity.
        assert!(
            w.l.second_connection(w.now, ident(2).as_str(), addr(9).ip())
                .is_none()
        );
    }

    #[test]
    fn same_role_traffic_is_refused_and_rule_breakers_are_closed() {
        let mut w = World::new();
        let (s1, _) = w.join(1, true);
        let (s2, _) = w.join(2, true);
        let (c1, _) = w.join(3, false);
        let (c2, _) = w.join(4, false);
        let out = w.rx(c1, c2, Body::ClientValidator([0; 64]));
        assert_eq!(
            sends_to(&out, c1),
            vec![Body::RelayFailure {
                reason: RelayFailure::InvalidServer,
                uid: c2
            }]
        );
        let out = w.rx(s1, s2, Body::Agreement);
        assert_eq!(
            sends_to(&out, s1),
            vec![Body::RelayFailure {
                reason: RelayFailure::InvalidClient,
                uid: s2
            }]
        );
        let out = w.rx(s1, c1, Body::Agreement);
        assert_eq!(
            sends_to(&out, s1),
            vec![Body::RelayFailure {
                reason: RelayFailure::NoHandshake,
                uid: c1
            }]
        );
        // Claiming another identity closes only that peer.
        let out = w.rx(
            c1,
            s1,
            Body::XAndClientIdentity {
                x: [0; 32],
                identity: ident(4),
            },
        );
        assert_eq!(sends_to(&out, c1), vec![Body::Closed { uid: 0 }]);
        assert!(closed(&out, c1));
        // A relay-only packet from a peer, or a packet for uid 0000.
        let out = w.rx(c2, s1, Body::Done);
        assert!(closed(&out, c2));
        let out = w.rx(s2, 0, Body::Agreement);
        assert!(closed(&out, s2));
        assert_eq!(w.l.len(), 1);
    }

    #[test]
    fn spoke_failure_and_refused_end_only_that_pairing() {
        let mut w = World::new();
        let (s, _) = w.join(1, true);
        let (c, _) = w.join(2, false);
        w.rx(
            c,
            s,
            Body::XAndClientIdentity {
                x: [7; 32],
                identity: ident(2),
            },
        );
        let out = w.rx(s, c, Body::SpokeFailure(SpokeFailure::BadClientValidator));
        assert_eq!(
            sends_to(&out, c),
            vec![Body::SpokeFailure(SpokeFailure::BadClientValidator)]
        );
        let out = w.rx(c, s, Body::ClientValidator([0; 64]));
        assert_eq!(
            sends_to(&out, c),
            vec![Body::RelayFailure {
                reason: RelayFailure::NoHandshake,
                uid: s
            }]
        );
        w.rx(
            c,
            s,
            Body::XAndClientIdentity {
                x: [7; 32],
                identity: ident(2),
            },
        );
        w.rx(s, c, Body::Agreement);
        let out = w.rx(c, s, Body::Refused);
        assert_eq!(sends_to(&out, s), vec![Body::Refused]);
        assert_eq!(w.l.len(), 2);
    }

    #[test]
    fn timeouts_rates_and_disconnects() {
        let mut w = World::new();
        let (s, _) = w.join(1, true);
        let (c, _) = w.join(2, false);
        let quiet = w.l.connect(w.now, addr(3)).unwrap();
        w.rx(
            c,
            s,
            Body::XAndClientIdentity {
                x: [7; 32],
                identity: ident(2),
            },
        );
        let mut out = Vec::new();
        w.l.tick(w.now + Duration::from_secs(11), &mut out);
        assert_eq!(sends_to(&out, quiet), vec![Body::Timeout]);
        assert!(closed(&out, quiet) && !closed(&out, s));
        let mut out = Vec::new();
        w.l.disconnect(s, &mut out);
        assert_eq!(sends_to(&out, c), vec![Body::Closed { uid: s }]);
        let mut out = Vec::new();
        w.l.tick(w.now + Duration::from_secs(601), &mut out);
        assert_eq!(sends_to(&out, c), vec![Body::Timeout]);
        assert!(w.l.is_empty());
        // Rate limit.
        let (s, _) = w.join(4, true);
        let (c, _) = w.join(5, false);
        let mut all = Vec::new();
        for _ in 0..70 {
            all.extend(w.rx(
                c,
                s,
                Body::XAndClientIdentity {
                    x: [7; 32],
                    identity: ident(5),
                },
            ));
        }
        assert!(closed(&all, c));
        assert_eq!(
            sends_to(&all, s).len(),
            63 + 1,
            "63 forwarded (the Hello was the 64th packet), then Closed"
        );
    }

    #[test]
    fn uids_are_never_shared_and_skip_zero() {
        let mut l = Lobby::new(LobbyConfig {
            max_peers: 3,
            ..Default::default()
        });
        let now = Instant::now();
        l.next = 0xFFFF;
        let a = l.connect(now, addr(1)).unwrap();
        let b = l.connect(now, addr(2)).unwrap();
        assert_eq!((a, b), (0xFFFF, 1));
        l.next = 0xFFFF;
        let c = l.connect(now, addr(3)).unwrap();
        assert_eq!(c, 2);
        assert_eq!(l.connect(now, addr(4)), Err(LobbyError::Full));
    }
}
