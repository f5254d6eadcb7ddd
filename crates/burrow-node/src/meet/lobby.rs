//! Lobby mode (seed 003), the peers' side: a sender waits in the relay's
//! lobby with its PAKE parameters; a receiver tries the PAKE with every
//! waiting sender at once and only the one with the same password agrees.
//! Both then open the second connection (the "secure room"), and the same
//! session and transfer driver as channel mode run on it.
//!
//! The sans-IO parts are [`burrow_proto::lobby::relay`] (the relay) and
//! [`burrow_proto::lobby::pake`] (the PAKE); this module does the I/O.

use std::collections::HashMap;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use burrow_proto::channel::pake::SessionKey;
use burrow_proto::lobby::pake::{ClientTry, Params, ServerTry};
use burrow_proto::lobby::{Body, Identity, MAX_PACKET, PUBLIC_LEN, Packet, RELAY_UID, SpokeFailure};
use burrow_proto::staple::IdentityHello;
use burrow_proto::transfer::escape_display;

use crate::error::Error;
use crate::meet::relay_client::RelayClient;
use crate::platform::OsRandom;

/// Senders a receiver tries at once (each costs one Argon2 run).
const MAX_TRIES: usize = 64;
/// How long a sender being tried may take to answer before the next one
/// gets its place.
const TRY_TIMEOUT: Duration = Duration::from_secs(10);
/// Senders waiting to be tried, at most (the oldest make room).
const MAX_PENDING: usize = 4096;
/// Tries started per second at most: each sends a packet, and the relay
/// closes a peer that sends more than 64 a second.
const STARTS_PER_SEC: usize = 24;

/// A lobby pairing that agreed: the second connection and its key.
pub struct Matched {
    /// The stapled second connection.
    pub stream: TcpStream,
    /// The PAKE's session key.
    pub key: SessionKey,
    /// Handshake context (both identities).
    pub context: String,
    /// The other side's relay-given identity.
    pub peer: String,
}

/// One lobby connection with a packet reader.
struct LobbyConn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl LobbyConn {
    async fn open(relay: &RelayClient) -> Result<Self, Error> {
        Ok(Self {
            s: relay.connect().await?,
            buf: Vec::new(),
        })
    }

    async fn send(&mut self, uid: u16, body: Body) -> Result<(), Error> {
        self.s
            .write_all(&Packet { uid, body }.to_vec())
            .await
            .map_err(Error::ConnectionLost)
    }

    async fn next(&mut self) -> Result<Packet, Error> {
        loop {
            match Packet::decode(&self.buf) {
                Ok(Some((p, n))) => {
                    self.buf.drain(..n);
                    return Ok(p);
                }
                Ok(None) if self.buf.len() <= MAX_PACKET => {}
                _ => {
                    return Err(Error::RelayProtocol(
                        "malformed lobby packet from the relay".into(),
                    ));
                }
            }
            let mut b = [0u8; 512];
            let n = self.s.read(&mut b).await.map_err(Error::ConnectionLost)?;
            if n == 0 {
                return Err(Error::RelayProtocol(
                    "the relay closed the lobby connection".into(),
                ));
            }
            self.buf.extend_from_slice(&b[..n]);
        }
    }
}

fn timed_out() -> Error {
    Error::Timeout("the lobby timed out: nobody with the same password showed up".into())
}

fn relay_closed_us() -> Error {
    Error::RelayProtocol("the relay closed our lobby connection".into())
}

async fn stretch(params: Params, password: String) -> Result<zeroize::Zeroizing<[u8; 32]>, SpokeFailure> {
    let password = zeroize::Zeroizing::new(password);
    tokio::task::spawn_blocking(move || params.stretch(password.as_bytes()))
        .await
        .unwrap_or(Err(SpokeFailure::BadSecret))
}

fn context(server: &str, client: &str) -> String {
    format!("lobby {server} {client}")
}

/// How a receiver's attempt on this sender ended without a pairing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// Its password was another one (or its PAKE messages were bad).
    OtherPassword,
    /// The passwords matched, and it declined.
    Declined,
}

/// The sender ("server"): waits in the lobby until a receiver with the same
/// password agrees and accepts. `on_ready` gets the sender's identity once
/// it is in the lobby; `on_miss` hears of every receiver that tried and
/// did not pair (its relay-given identity, as the peer sent it).
pub async fn serve(
    relay: &RelayClient,
    password: &str,
    salt: [u8; 16],
    on_ready: impl FnOnce(&str),
    mut on_miss: impl FnMut(&str, Miss),
) -> Result<Matched, Error> {
    let params = Params::new(salt);
    let public: [u8; PUBLIC_LEN] = params.encode();
    let w = stretch(params, password.to_owned())
        .await
        .map_err(|e| Error::Usage(format!("cannot stretch the password: {e:?}")))?;
    let mut c = LobbyConn::open(relay).await?;
    c.send(RELAY_UID, Body::HelloAsServer { public }).await?;
    let me = match c.next().await?.body {
        Body::ServerIdentity(id) => id,
        _ => return Err(Error::RelayProtocol("expected our lobby identity".into())),
    };
    on_ready(me.as_str());
    let mut tries: HashMap<u16, (ServerTry, Identity)> = HashMap::new();
    let mut agreed: HashMap<u16, (SessionKey, Identity)> = HashMap::new();
    loop {
        let p = c.next().await?;
        match p.body {
            Body::XAndClientIdentity { x, identity } => {
                match ServerTry::respond(&w, &public, &me, &identity, &x, &mut OsRandom) {
                    Ok((t, y, validator)) => {
                        tries.insert(p.uid, (t, identity));
                        c.send(p.uid, Body::YAndServerValidator { y, validator }).await?;
                    }
                    Err(e) => {
                        on_miss(identity.as_str(), Miss::OtherPassword);
                        c.send(p.uid, Body::SpokeFailure(e)).await?
                    }
                }
            }
            Body::ClientValidator(v) => {
                if let Some((t, identity)) = tries.remove(&p.uid) {
                    match t.finish(&v) {
                        Ok(key) => {
                            agreed.insert(p.uid, (key, identity));
                            c.send(p.uid, Body::Agreement).await?;
                        }
                        Err(e) => {
                            on_miss(identity.as_str(), Miss::OtherPassword);
                            c.send(p.uid, Body::SpokeFailure(e)).await?
                        }
                    }
                }
            }
            Body::Accepted => {
                if let Some((key, client)) = agreed.remove(&p.uid) {
                    let stream = second(relay, &me).await?;
                    return Ok(Matched {
                        stream,
                        key,
                        context: context(me.as_str(), client.as_str()),
                        peer: client.as_str().to_owned(),
                    });
                }
            }
            Body::Refused | Body::SpokeFailure(_) => {
                if let Some((_, identity)) = tries.remove(&p.uid) {
                    on_miss(identity.as_str(), Miss::OtherPassword);
                }
                if let Some((_, identity)) = agreed.remove(&p.uid) {
                    on_miss(identity.as_str(), Miss::Declined);
                }
            }
            Body::Closed { uid } if uid == RELAY_UID => return Err(relay_closed_us()),
            Body::Closed { uid } => {
                tries.remove(&uid);
                agreed.remove(&uid);
            }
            Body::Timeout => return Err(timed_out()),
            Body::RelayFailure { .. } => {}
            _ => return Err(Error::RelayProtocol("unexpected lobby packet".into())),
        }
    }
}

/// Opens the second connection naming our identity; the relay staples it.
async fn second(relay: &RelayClient, me: &Identity) -> Result<TcpStream, Error> {
    let hello = IdentityHello { identity: me.clone() };
    relay.staple_identity(&hello, Duration::from_secs(60)).await
}

/// What a receiver does when a sender agreed.
pub enum Verdict {
    /// Go ahead with this sender.
    Accept,
    /// Not this one (the others stay possible).
    Refuse,
}

/// How long a receiver waits for the relay to list the senders already in
/// the lobby before it says that none is there.
const FIRST_LIST: Duration = Duration::from_millis(500);

/// The receiver ("client"): tries every sender in the lobby; when one
/// agrees, asks `decide` with its identity, then accepts or refuses it.
/// `no_match(tried)` is called whenever every sender tried so far (`tried`
/// of them, maybe none) turned out to have another password: the receiver
/// keeps waiting for one that has this password.
pub async fn join(
    relay: &RelayClient,
    password: &str,
    mut decide: impl FnMut(&str) -> Verdict,
    mut no_match: impl FnMut(usize),
) -> Result<Matched, Error> {
    let mut c = LobbyConn::open(relay).await?;
    c.send(RELAY_UID, Body::HelloAsClient).await?;
    let me = match c.next().await?.body {
        Body::ClientIdentity(id) => id,
        _ => return Err(Error::RelayProtocol("expected our lobby identity".into())),
    };
    let mut tries: HashMap<u16, ClientTry> = HashMap::new();
    let mut keys: HashMap<u16, (SessionKey, Identity)> = HashMap::new();
    let mut servers: HashMap<u16, Identity> = HashMap::new();
    // Senders not tried yet (newest last), and when each try began: a
    // sender that does not answer within TRY_TIMEOUT gives its place to the
    // next, so senders that never answer (a flood of fakes) cannot hide
    // the real one however many there are.
    let mut pending: Vec<(u16, [u8; PUBLIC_LEN], Identity)> = Vec::new();
    let mut began: HashMap<u16, tokio::time::Instant> = HashMap::new();
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    let mut this_second = (tokio::time::Instant::now(), 0usize);
    // Senders tried whose PAKE showed another password (or that never
    // answered), and how many of them `no_match` was told about.
    let (mut failed, mut told) = (0usize, 0usize);
    let mut quiet = Some(Box::pin(tokio::time::sleep(FIRST_LIST)));
    loop {
        // Free places go to the newest senders waiting.
        while quiet.is_none() && tries.len() + keys.len() < MAX_TRIES {
            let now = tokio::time::Instant::now();
            if now.duration_since(this_second.0) >= Duration::from_secs(1) {
                this_second = (now, 0);
            }
            if this_second.1 >= STARTS_PER_SEC {
                // The rest after the next sweep tick.
                break;
            }
            let Some((uid, public, identity)) = pending.pop() else {
                break;
            };
            this_second.1 += 1;
            let w = match Params::decode(&public) {
                Ok(params) => stretch(params, password.to_owned()).await,
                Err(e) => Err(e),
            };
            match w {
                Ok(w) => {
                    let (t, x) = ClientTry::start(&w, public, identity.clone(), me.clone(), &mut OsRandom);
                    tries.insert(uid, t);
                    servers.insert(uid, identity);
                    began.insert(uid, tokio::time::Instant::now());
                    c.send(
                        uid,
                        Body::XAndClientIdentity {
                            x,
                            identity: me.clone(),
                        },
                    )
                    .await?;
                }
                Err(e) => {
                    failed += 1;
                    c.send(uid, Body::SpokeFailure(e)).await?
                }
            }
        }
        let p = tokio::select! {
            p = c.next() => p?,
            _ = async {
                match quiet.as_mut() {
                    Some(t) => t.await,
                    None => std::future::pending().await,
                }
            }, if quiet.is_some() => {
                quiet = None;
                if pending.is_empty() && failed == 0 {
                    no_match(0);
                }
                continue;
            }
            now = sweep.tick() => {
                let stale: Vec<u16> = began
                    .iter()
                    .filter(|(_, t)| now.duration_since(**t) >= TRY_TIMEOUT)
                    .map(|(u, _)| *u)
                    .collect();
                for uid in stale {
                    began.remove(&uid);
                    if tries.remove(&uid).is_some() | keys.remove(&uid).is_some() {
                        tracing::debug!("lobby: sender {uid:04x} did not answer; trying the next");
                        failed += 1;
                    }
                }
                if tries.is_empty() && keys.is_empty() && pending.is_empty() && failed > told {
                    told = failed;
                    no_match(failed);
                }
                continue;
            }
        };
        match p.body {
            Body::NewServer {
                uid,
                public,
                identity,
            } => {
                if pending.len() >= MAX_PENDING {
                    // The oldest untried sender makes room.
                    pending.remove(0);
                }
                pending.push((uid, public, identity));
                continue;
            }
            Body::YAndServerValidator { y, validator } => {
                if let Some(t) = tries.remove(&p.uid) {
                    match t.finish(&y, &validator) {
                        Ok((key, vc)) => {
                            if let Some(id) = servers.get(&p.uid) {
                                keys.insert(p.uid, (key, id.clone()));
                            }
                            c.send(p.uid, Body::ClientValidator(vc)).await?;
                        }
                        // Another password: forget this sender.
                        Err(e) => {
                            failed += 1;
                            c.send(p.uid, Body::SpokeFailure(e)).await?
                        }
                    }
                }
            }
            Body::Agreement => {
                let Some((key, server)) = keys.remove(&p.uid) else {
                    continue;
                };
                match decide(server.as_str()) {
                    Verdict::Refuse => c.send(p.uid, Body::Refused).await?,
                    Verdict::Accept => {
                        c.send(p.uid, Body::Accepted).await?;
                        loop {
                            match c.next().await?.body {
                                Body::Done => break,
                                Body::Closed { uid } if uid == p.uid => {
                                    return Err(Error::PeerClosed("the sender left the lobby".into()));
                                }
                                Body::Timeout => return Err(timed_out()),
                                _ => {}
                            }
                        }
                        let stream = second(relay, &me).await?;
                        return Ok(Matched {
                            stream,
                            key,
                            context: context(server.as_str(), me.as_str()),
                            peer: server.as_str().to_owned(),
                        });
                    }
                }
            }
            Body::SpokeFailure(_) => {
                // The sender found the passwords differ.
                if tries.remove(&p.uid).is_some() | keys.remove(&p.uid).is_some() {
                    failed += 1;
                }
            }
            Body::Closed { uid } if uid == RELAY_UID => return Err(relay_closed_us()),
            Body::Closed { uid } => {
                tries.remove(&uid);
                keys.remove(&uid);
                servers.remove(&uid);
                began.remove(&uid);
                pending.retain(|(u, _, _)| *u != uid);
            }
            Body::Timeout => return Err(timed_out()),
            Body::RelayFailure { reason, uid } => {
                tracing::debug!("lobby: relay refused ({reason:?}) about {uid:04x}");
                if tries.remove(&uid).is_some() | keys.remove(&uid).is_some() {
                    failed += 1;
                }
            }
            other => {
                return Err(Error::RelayProtocol(format!(
                    "unexpected lobby packet {}",
                    escape_display(&format!("{other:?}"))
                )));
            }
        }
        if tries.is_empty() && keys.is_empty() && pending.is_empty() && failed > told {
            told = failed;
            no_match(failed);
        }
    }
}
