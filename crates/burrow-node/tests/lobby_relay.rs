//! The relay's lobby (seed 003) over real TCP: what it refuses, whom it
//! closes, and that it keeps serving everyone else.

mod common;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use burrow_proto::lobby::{Body, PUBLIC_LEN, Packet, RelayFailure};

use common::relay_with;

struct Peer {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Peer {
    async fn connect(addr: std::net::SocketAddr) -> Self {
        Self {
            s: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, uid: u16, body: Body) {
        self.s.write_all(&Packet { uid, body }.to_vec()).await.unwrap();
    }

    async fn raw(&mut self, b: &[u8]) {
        self.s.write_all(b).await.unwrap();
    }

    /// The next packet, or None at the end of the connection (bounded wait).
    async fn next(&mut self) -> Option<Packet> {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some((p, n)) = Packet::decode(&self.buf).unwrap() {
                    self.buf.drain(..n);
                    return Some(p);
                }
                let mut b = [0u8; 256];
                match self.s.read(&mut b).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.buf.extend_from_slice(&b[..n]),
                }
            }
        })
        .await
        .expect("the relay did not answer in time")
    }

    async fn server(addr: std::net::SocketAddr, tag: u8) -> (Self, String) {
        let mut p = Self::connect(addr).await;
        p.send(
            0,
            Body::HelloAsServer {
                public: [tag; PUBLIC_LEN],
            },
        )
        .await;
        match p.next().await.unwrap().body {
            Body::ServerIdentity(id) => (p, id.as_str().to_owned()),
            other => panic!("{other:?}"),
        }
    }

    /// Joins as a client; returns its identity and the servers announced at once.
    async fn client(
        addr: std::net::SocketAddr,
        servers: usize,
    ) -> (Self, burrow_proto::lobby::Identity, Vec<u16>) {
        let mut p = Self::connect(addr).await;
        p.send(0, Body::HelloAsClient).await;
        let id = match p.next().await.unwrap().body {
            Body::ClientIdentity(id) => id,
            other => panic!("{other:?}"),
        };
        let mut uids = Vec::new();
        for _ in 0..servers {
            match p.next().await.unwrap().body {
                Body::NewServer { uid, .. } => uids.push(uid),
                other => panic!("{other:?}"),
            }
        }
        (p, id, uids)
    }

    /// Expects `Closed{0000}` and then the end of the connection.
    async fn expect_closed_by_relay(&mut self) {
        let p = self.next().await.expect("Closed before the end");
        assert_eq!((p.uid, p.body), (0, Body::Closed { uid: 0 }));
        assert!(self.next().await.is_none(), "the connection should end");
    }
}

#[tokio::test]
async fn bad_lobby_peers_are_closed_alone_and_the_relay_keeps_serving() {
    let relay = relay_with(|_| {}).await;
    let addr = relay.addr();
    let (mut server, _) = Peer::server(addr, 1).await;
    let (mut c1, c1_id, servers) = Peer::client(addr, 1).await;
    let s_uid = servers[0];
    let (c2, _, _) = Peer::client(addr, 1).await;
    let c2_uid = {
        // Learn c2's uid from the server's side: c2 opens a handshake.
        let mut c2 = c2;
        let id = {
            let a = c2.s.local_addr().unwrap();
            burrow_proto::lobby::Identity::new(&a.to_string()).unwrap()
        };
        c2.send(
            s_uid,
            Body::XAndClientIdentity {
                x: [2; 32],
                identity: id,
            },
        )
        .await;
        let p = server.next().await.unwrap();
        assert!(matches!(p.body, Body::XAndClientIdentity { .. }));
        // Client → client is refused, and the client stays connected.
        c1.send(p.uid, Body::ClientValidator([0; 64])).await;
        let r = c1.next().await.unwrap();
        assert_eq!(
            r.body,
            Body::RelayFailure {
                reason: RelayFailure::InvalidServer,
                uid: p.uid
            }
        );
        // c2 goes away: the server, in a handshake with it, hears Closed.
        drop(c2);
        let closed = server.next().await.unwrap();
        assert_eq!(closed.body, Body::Closed { uid: p.uid });
        p.uid
    };
    assert_ne!(c2_uid, s_uid);

    // A client speaking for another identity is closed.
    let (mut liar, _, _) = Peer::client(addr, 1).await;
    liar.send(
        s_uid,
        Body::XAndClientIdentity {
            x: [0; 32],
            identity: c1_id.clone(),
        },
    )
    .await;
    liar.expect_closed_by_relay().await;

    // An unknown packet type.
    let (mut odd, _, _) = Peer::client(addr, 1).await;
    odd.raw(b"0001ff").await;
    odd.expect_closed_by_relay().await;

    // An unterminated identity longer than any identity.
    let mut long = Peer::connect(addr).await;
    long.raw(b"000003").await;
    long.raw(&[b'a'; 80]).await;
    long.expect_closed_by_relay().await;

    // A packet before Hello.
    let mut rude = Peer::connect(addr).await;
    rude.send(s_uid, Body::Agreement).await;
    rude.expect_closed_by_relay().await;

    // Everyone else is still served: c1 still talks to the server.
    c1.send(
        s_uid,
        Body::XAndClientIdentity {
            x: [1; 32],
            identity: c1_id,
        },
    )
    .await;
    let p = server.next().await.unwrap();
    assert!(matches!(p.body, Body::XAndClientIdentity { x, .. } if x == [1; 32]));
    // And a new client still sees the server.
    let (_c3, _, servers) = Peer::client(addr, 1).await;
    assert_eq!(servers, vec![s_uid]);
}

#[tokio::test]
async fn the_lobby_times_out_with_timeout_and_closed() {
    let relay = relay_with(|c| c.lobby.lobby_timeout = Duration::from_millis(1500)).await;
    let addr = relay.addr();
    let (mut server, _) = Peer::server(addr, 1).await;
    let (mut client, id, servers) = Peer::client(addr, 1).await;
    client
        .send(
            servers[0],
            Body::XAndClientIdentity {
                x: [1; 32],
                identity: id,
            },
        )
        .await;
    let opened = server.next().await.unwrap();
    // Both time out; whoever goes second may first hear Closed about the other.
    let mut seen = Vec::new();
    while let Some(p) = client.next().await {
        seen.push(p.body);
    }
    assert!(seen.contains(&Body::Timeout), "{seen:?}");
    let mut seen = Vec::new();
    while let Some(p) = server.next().await {
        seen.push(p.body);
    }
    assert!(
        seen.contains(&Body::Timeout) || seen.contains(&Body::Closed { uid: opened.uid }),
        "{seen:?}"
    );
}

/// Issue 14, 4: senders that announce themselves and then never answer
/// (100 of them, more than a receiver tries at once) do not hide the real
/// sender: the receiver tries the newest first and gives a silent sender's
/// place to the next after a while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_silent_lobby_senders_does_not_hide_the_real_one() {
    let r = relay_with(|_| {}).await;
    let addr = r.addr();
    // Valid-looking announcements with the cheapest stretching allowed.
    let mut fakes = Vec::new();
    for i in 0..100u8 {
        let mut params = burrow_proto::lobby::pake::Params::new([i; 16]);
        params.memory_kib = 8;
        params.iterations = 1;
        let mut p = Peer::connect(addr).await;
        p.send(
            0,
            Body::HelloAsServer {
                public: params.encode(),
            },
        )
        .await;
        assert!(matches!(p.next().await.unwrap().body, Body::ServerIdentity(_)));
        fakes.push(p);
    }
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("real.txt"), b"from the real sender").unwrap();
    let password = "apple-brave-cactus-dune";
    let t = common::transfer(&addr.to_string());
    let file = src.path().join("real.txt");
    let sender = tokio::spawn(async move {
        t.send_lobby(
            password,
            burrow_node::Source::Paths(vec![file]),
            common::Auto { code_tx: None },
        )
        .await
    });
    // The real sender is in the lobby (after all the fakes) before the receiver comes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = tokio::time::timeout(
        Duration::from_secs(30),
        common::transfer(&addr.to_string()).receive_lobby(
            password,
            burrow_node::Sink::Dir(dst.path().into()),
            common::Auto { code_tx: None },
        ),
    )
    .await
    .expect("paired despite the flood");
    got.unwrap();
    sender.await.unwrap().unwrap();
    assert_eq!(
        std::fs::read(dst.path().join("real.txt")).unwrap(),
        b"from the real sender"
    );
    drop(fakes);
}
