//! The connector (seed 000): exits keep a mailbox connection open under
//! their identity key; a proxy asks for an exit by key; the relay tells the
//! exit ("init"), the exit answers on a new connection, and the relay pipes
//! the two connections together. Every connection first authenticates with
//! Noise XX: the relay proves its key (peers pin it), the peer proves its
//! own. See `burrow_proto::connector` for the messages.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use zeroize::Zeroizing;

use burrow_proto::connector::{Msg, RELAY_CONTEXT, VERSION};

use crate::admission::{Phase, Ticket};
use burrow_proto::session::aead::Backend;
use burrow_proto::session::{Handshake, LEN_PREFIX, Opener, Sealer, Side};

/// How long a proxy waits for the exit to take its session.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(15);

/// The relay's identity: its X25519 secret (the Noise static key) and its
/// Ed25519 public key (sent in the handshake, part of its fingerprint).
pub struct RelayKey {
    /// X25519 private key.
    pub x25519: Zeroizing<[u8; 32]>,
    /// Ed25519 verifying key.
    pub ed25519_public: [u8; 32],
}

impl std::fmt::Debug for RelayKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RelayKey(..)")
    }
}

struct Session {
    exit: [u8; 32],
    proxy: [u8; 32],
    tx: oneshot::Sender<Result<TcpStream, String>>,
}

/// Mailboxes and pending sessions.
pub(crate) struct Connector {
    key: Option<Arc<RelayKey>>,
    mailboxes: Mutex<HashMap<[u8; 32], mpsc::Sender<Msg>>>,
    sessions: Mutex<HashMap<[u8; 16], Session>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn read_frame(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; LEN_PREFIX];
    s.read_exact(&mut len).await?;
    let mut b = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut b).await?;
    Ok(b)
}

struct PeerLink {
    s: TcpStream,
    sealer: Sealer,
    opener: Opener,
}

impl PeerLink {
    async fn send(&mut self, m: &Msg) -> std::io::Result<()> {
        let mut out = Vec::new();
        self.sealer
            .seal(&m.encode(), &mut out)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        self.s.write_all(&out).await
    }

    async fn recv(&mut self) -> std::io::Result<Msg> {
        let mut ct = read_frame(&mut self.s).await?;
        let plain = self
            .opener
            .open_in_place(&mut ct)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Msg::decode(plain).map_err(|e| std::io::Error::other(e.to_string()))
    }

    async fn refuse(mut self, why: &str) {
        let _ = self.send(&Msg::Error(why.to_owned())).await;
        let _ = self.s.shutdown().await;
    }
}

impl Connector {
    pub(crate) fn new(key: Option<Arc<RelayKey>>) -> Self {
        Self {
            key,
            mailboxes: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// Authenticates both ways; returns the link and the peer's identity key.
    async fn authenticate(&self, mut s: TcpStream, limit: Duration) -> Option<(PeerLink, [u8; 32])> {
        let key = self.key.clone()?;
        let run = async {
            let mut v = [0u8; 1];
            s.read_exact(&mut v).await.ok()?;
            if v[0] != VERSION {
                return None;
            }
            let mut hs = Handshake::xx(
                Side::Responder,
                &key.x25519,
                RELAY_CONTEXT,
                Backend::detect(),
                &mut crate::server::fill,
            )
            .ok()?;
            hs.read_message(&read_frame(&mut s).await.ok()?).ok()?;
            s.write_all(&hs.write_message_with(&key.ed25519_public).ok()?)
                .await
                .ok()?;
            hs.read_message(&read_frame(&mut s).await.ok()?).ok()?;
            let peer = hs.remote_static()?;
            let (sealer, opener) = hs.into_transport().ok()?.split();
            Some((PeerLink { s, sealer, opener }, peer))
        };
        tokio::time::timeout(limit, run).await.ok().flatten()
    }

    /// Serves one connector connection (after the magic). Returns a pair of
    /// connections to pipe together, when it becomes one half of a session.
    pub(crate) async fn serve(
        &self,
        s: TcpStream,
        limit: Duration,
        slot: &Ticket,
    ) -> Option<(TcpStream, TcpStream)> {
        // Without a key (a library relay configured without one) there is no connector.
        let (mut link, peer) = tokio::select! {
            a = self.authenticate(s, limit) => a?,
            // The handshake is a greeting: a slow one may make room.
            () = slot.evicted() => return None,
        };
        // An authenticated key's link is working, never evicted.
        slot.set(Phase::Working);
        let first = tokio::time::timeout(limit, link.recv()).await.ok()?.ok()?;
        match first {
            Msg::Listen => {
                self.mailbox(link, peer).await;
                None
            }
            Msg::Connect { target } => self.connect(link, peer, target).await,
            Msg::Accept { session } => {
                let pending = lock(&self.sessions).remove(&session);
                match pending {
                    Some(p) if p.exit == peer => {
                        link.send(&Msg::Init {
                            session,
                            peer: p.proxy,
                        })
                        .await
                        .ok()?;
                        if let Err(Ok(mut back)) = p.tx.send(Ok(link.s)) {
                            let _ = back.shutdown().await;
                        }
                        None
                    }
                    _ => {
                        link.refuse("no such session for this key").await;
                        None
                    }
                }
            }
            _ => {
                link.refuse("expected Listen, Connect or Accept").await;
                None
            }
        }
    }

    async fn mailbox(&self, mut link: PeerLink, peer: [u8; 32]) {
        let (tx, mut rx) = mpsc::channel::<Msg>(64);
        // A newer mailbox for the same key replaces the old one.
        lock(&self.mailboxes).insert(peer, tx.clone());
        loop {
            tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => if link.send(&m).await.is_err() { break },
                    None => break,
                },
                r = link.recv() => match r {
                    Ok(Msg::Ping) => if link.send(&Msg::Pong).await.is_err() { break },
                    Ok(Msg::Refuse { session }) => {
                        let p = lock(&self.sessions).remove(&session);
                        if let Some(p) = p.filter(|p| p.exit == peer) {
                            let _ = p.tx.send(Err("the exit refused: this key is not paired with it".into()));
                        }
                    }
                    _ => break,
                },
            }
        }
        let mut boxes = lock(&self.mailboxes);
        if boxes.get(&peer).is_some_and(|t| t.same_channel(&tx)) {
            boxes.remove(&peer);
        }
    }

    async fn connect(
        &self,
        mut link: PeerLink,
        proxy: [u8; 32],
        exit: [u8; 32],
    ) -> Option<(TcpStream, TcpStream)> {
        let mailbox = lock(&self.mailboxes).get(&exit).cloned();
        let Some(mailbox) = mailbox else {
            link.refuse("no exit with that key is connected to this relay")
                .await;
            return None;
        };
        let mut session = [0u8; 16];
        crate::server::fill(&mut session);
        let (tx, rx) = oneshot::channel();
        lock(&self.sessions).insert(session, Session { exit, proxy, tx });
        if mailbox.send(Msg::Init { session, peer: proxy }).await.is_err() {
            lock(&self.sessions).remove(&session);
            link.refuse("the exit's mailbox just closed").await;
            return None;
        }
        let exit_stream = match tokio::time::timeout(ACCEPT_TIMEOUT, rx).await {
            Ok(Ok(Ok(s))) => s,
            Ok(Ok(Err(why))) => {
                link.refuse(&why).await;
                return None;
            }
            _ => {
                lock(&self.sessions).remove(&session);
                link.refuse("the exit did not take the session in time").await;
                return None;
            }
        };
        link.send(&Msg::Init { session, peer: exit }).await.ok()?;
        Some((link.s, exit_stream))
    }
}
