//! Drives the sans-IO lobby ([`burrow_proto::lobby::relay`]) over TCP: one
//! reader task and one writer task per lobby connection, every decision
//! taken under one lock so that packets reach each peer in the order the
//! lobby produced them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use burrow_proto::lobby::relay::{Lobby, LobbyConfig, Out};
use burrow_proto::lobby::{Body, MAX_PACKET, Packet, RELAY_UID};

use crate::admission::Ticket;
use crate::metrics::Metrics;

/// Packets queued for one peer before it counts as too slow and is closed.
const QUEUE: usize = 256;

enum Cmd {
    Packet(Vec<u8>),
    Close,
}

struct State {
    lobby: Lobby,
    peers: HashMap<u16, mpsc::Sender<Cmd>>,
}

/// The relay's lobby and the connections in it.
pub(crate) struct Hub {
    state: Mutex<State>,
}

impl Hub {
    pub(crate) fn new(cfg: LobbyConfig) -> Self {
        Self {
            state: Mutex::new(State {
                lobby: Lobby::new(cfg),
                peers: HashMap::new(),
            }),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State, &mut Vec<Out>) -> T) -> T {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        let r = f(&mut st, &mut out);
        dispatch(&mut st, out);
        r
    }

    /// Times peers out (called every second).
    pub(crate) fn tick(&self) {
        self.with(|st, out| st.lobby.tick(Instant::now(), out));
    }

    /// The stapling key and side for a lobby pair's second connection.
    pub(crate) fn second_connection(
        &self,
        identity: &str,
        ip: std::net::IpAddr,
    ) -> Option<(String, burrow_proto::lobby::relay::Side)> {
        self.with(|st, _| st.lobby.second_connection(Instant::now(), identity, ip))
    }

    /// Both halves of a pair found each other.
    pub(crate) fn forget_pair(&self, key: &str) {
        self.with(|st, _| st.lobby.forget_pair(key));
    }
}

fn dispatch(st: &mut State, out: Vec<Out>) {
    let mut slow = Vec::new();
    for o in out {
        match o {
            Out::Send { to, packet } => {
                if let Some(tx) = st.peers.get(&to)
                    && tx.try_send(Cmd::Packet(packet.to_vec())).is_err()
                {
                    slow.push(to);
                }
            }
            Out::Close { uid } => {
                if let Some(tx) = st.peers.remove(&uid) {
                    let _ = tx.try_send(Cmd::Close);
                }
            }
        }
    }
    for uid in slow {
        // Its queue is full: it does not read. Drop it (without a last word).
        let mut more = Vec::new();
        st.lobby.disconnect(uid, &mut more);
        if let Some(tx) = st.peers.remove(&uid) {
            drop(tx);
        }
        dispatch(st, more);
    }
}

/// Serves one lobby connection whose first four bytes were `head`.
///
/// Nobody vouches for a lobby peer: it may be chosen to make room for a
/// newcomer when the relay is full (`slot`), and is then disconnected.
pub(crate) async fn serve(
    hub: &Hub,
    metrics: &Metrics,
    stream: TcpStream,
    addr: SocketAddr,
    head: [u8; 4],
    slot: &Ticket,
) {
    let (tx, mut rx) = mpsc::channel::<Cmd>(QUEUE);
    let uid = hub.with(|st, _| {
        let uid = st.lobby.connect(Instant::now(), addr).ok()?;
        st.peers.insert(uid, tx.clone());
        Some(uid)
    });
    let (mut rd, mut wr) = stream.into_split();
    let Some(uid) = uid else {
        metrics.error("lobby_full");
        let closed = Packet {
            uid: RELAY_UID,
            body: Body::Closed { uid: RELAY_UID },
        };
        let _ = wr.write_all(&closed.to_vec()).await;
        return;
    };
    drop(tx);
    let (done_tx, mut done_rx) = oneshot::channel::<()>();
    let writer = tokio::spawn(async move {
        while let Some(cmd) = rx.recv().await {
            match cmd {
                Cmd::Packet(b) => {
                    if wr.write_all(&b).await.is_err() {
                        break;
                    }
                }
                Cmd::Close => break,
            }
        }
        let _ = wr.shutdown().await;
        let _ = done_tx.send(());
    });
    let mut buf = head.to_vec();
    let mut chunk = [0u8; 512];
    'conn: loop {
        // Every whole packet in the buffer.
        loop {
            match Packet::decode(&buf) {
                Ok(Some((p, n))) => {
                    buf.drain(..n);
                    hub.with(|st, out| st.lobby.receive(Instant::now(), uid, p, out));
                }
                Ok(None) if buf.len() <= MAX_PACKET => break,
                Ok(None) | Err(_) => {
                    metrics.error("lobby_bad_packet");
                    hub.with(|st, out| st.lobby.violation(uid, out));
                    break 'conn;
                }
            }
        }
        let n = tokio::select! {
            r = rd.read(&mut chunk) => match r {
                Ok(0) | Err(_) => 0,
                Ok(n) => n,
            },
            _ = &mut done_rx => break 'conn,
            () = slot.evicted() => break 'conn,
        };
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    hub.with(|st, out| st.lobby.disconnect(uid, out));
    // Let the writer deliver what was queued (Closed, Timeout...) and close.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), writer).await;
}
