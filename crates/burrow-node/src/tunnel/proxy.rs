//! `burrow proxy`: the local SOCKS5 / HTTP CONNECT listener and the tunnel
//! it opens streams in (replaced when it dies).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use burrow_proto::connector::Msg;
use burrow_proto::session::Side;
use burrow_proto::tunnel::mux::{End, Host, ResetReason};
use burrow_proto::tunnel::socks;

use crate::error::Error;
use crate::keys::identity::{Identity, PublicIdentity};
use crate::meet::relay_client::RelayClient;

use super::*;

/// How the proxy reaches its exit.
pub enum Via {
    /// Through a relay's connector (seed 000).
    Relay {
        /// The relay.
        relay: RelayClient,
        /// How to trust it.
        trust: RelayTrust,
    },
    /// Over a mesh link to the node (seed 002): its addresses and relay.
    Mesh(crate::mesh::NodeAddrs),
}

/// What a proxy needs.
pub struct ProxyConfig {
    /// The way to the exit.
    pub via: Via,
    /// This installation.
    pub me: Arc<Identity>,
    /// The exit's keys (paired).
    pub exit: PublicIdentity,
    /// Called with a line for the user.
    pub log: Log,
    /// Silence after which a tunnel counts as lost (keepalives every third).
    pub idle: Duration,
    /// How long a request waits for the exit to connect before it fails;
    /// the stream is then freed at both ends.
    pub open_wait: Duration,
}

/// A stream the exit has connected, with its plumbing.
struct Opened {
    t: Arc<Tunnel>,
    id: u32,
    inflow: Arc<Inflow>,
    writable: Arc<Notify>,
}

impl Opened {
    /// Copies between the local connection and the stream until both end.
    async fn pump(self, s: TcpStream) {
        let _ = s.set_nodelay(true);
        self.t.pump(self.id, s, self.inflow, self.writable).await;
    }
}

/// The proxy: one tunnel to the exit, reopened when it ends.
pub struct Proxy {
    cfg: ProxyConfig,
    tunnel: tokio::sync::Mutex<Option<Arc<Tunnel>>>,
}

impl Proxy {
    /// A proxy (connects on first use).
    pub fn new(cfg: ProxyConfig) -> Arc<Self> {
        Arc::new(Self {
            cfg,
            tunnel: tokio::sync::Mutex::new(None),
        })
    }

    /// The live tunnel, opening one if needed.
    async fn tunnel(&self) -> Result<Arc<Tunnel>, Error> {
        let mut g = self.tunnel.lock().await;
        if let Some(t) = g.as_ref()
            && !t.is_closed()
        {
            return Ok(t.clone());
        }
        let (s, sealer, opener, framing) = match &self.cfg.via {
            Via::Relay { relay, trust } => {
                let mut link = relay_link(relay, trust, &self.cfg.me).await?;
                link.send(&Msg::Connect {
                    target: self.cfg.exit.x25519,
                })
                .await?;
                match link.recv().await? {
                    Msg::Init { peer, .. } if peer == self.cfg.exit.x25519 => {}
                    _ => return Err(Error::RelayProtocol("the relay did not start the session".into())),
                }
                let mut s = link.s;
                let (sealer, opener, seen) = end_to_end(&mut s, &self.cfg.me, Side::Responder).await?;
                if seen != self.cfg.exit.x25519 {
                    return Err(Error::Integrity(
                        "the exit presented another key than the paired one (refusing)".into(),
                    ));
                }
                (s, sealer, opener, Framing::Session)
            }
            Via::Mesh(addrs) => {
                let (s, sealer, opener, already) =
                    crate::mesh::client::connect(addrs, &self.cfg.me, &self.cfg.exit, false).await?;
                (
                    s,
                    sealer,
                    opener,
                    Framing::Mesh {
                        already,
                        meter: Arc::default(),
                    },
                )
            }
        };
        let t = Tunnel::start(s, sealer, opener, End::Client, None, self.cfg.idle, framing);
        (self.cfg.log)(format!(
            "tunnel to the exit {} is up",
            self.cfg.exit.fingerprint()
        ));
        *g = Some(t.clone());
        Ok(t)
    }

    /// Opens a stream to `host:port`; on success, the stream's plumbing.
    async fn open(&self, host: Host, port: u16) -> Result<Opened, (ResetReason, String)> {
        let t = match self.tunnel().await {
            Ok(t) => t,
            Err(e) => {
                (self.cfg.log)(format!("cannot reach the exit: {e}"));
                return Err((ResetReason::Failure, e.to_string()));
            }
        };
        let Opening {
            id,
            inflow,
            writable,
            answer,
        } = t.open_stream(host, port).await?;
        match tokio::time::timeout(self.cfg.open_wait, answer).await {
            Ok(Ok(Ok(()))) => Ok(Opened {
                t,
                id,
                inflow,
                writable,
            }),
            Ok(Ok(Err(r))) => Err(r),
            _ => {
                // Given up: the stream is freed here and at the exit (a late
                // Opened is then ignored), or each such request would keep a
                // stream's share of the session until the tunnel ends.
                lock(&t.streams).remove(&id);
                let r = lock(&t.mux).reset(id, ResetReason::TimedOut, "the proxy stopped waiting");
                t.send(r).await;
                Err((ResetReason::TimedOut, "the exit did not answer in time".into()))
            }
        }
    }

    /// Serves SOCKS5 and HTTP CONNECT on `listener` forever.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        while let Ok((s, _)) = listener.accept().await {
            let me = self.clone();
            tokio::spawn(async move { me.client(s).await });
        }
    }

    /// Forwards every connection to `listener` to `host:port` through the exit.
    pub async fn forward(self: Arc<Self>, listener: TcpListener, host: Host, port: u16) {
        while let Ok((s, _)) = listener.accept().await {
            let (me, host) = (self.clone(), host.clone());
            tokio::spawn(async move {
                if let Ok(o) = me.open(host, port).await {
                    o.pump(s).await;
                }
            });
        }
    }

    async fn client(&self, mut s: TcpStream) {
        let Some((target, is_socks, buf)) = read_target(&mut s).await else {
            return;
        };
        let shown = shown_host(&target.host, target.port);
        match self.open(target.host, target.port).await {
            Ok(o) => {
                let ok = if is_socks {
                    socks::reply_for(None).to_vec()
                } else {
                    socks::http_reply(None)
                };
                if s.write_all(&ok).await.is_err() {
                    return;
                }
                if !buf.is_empty() {
                    // Bytes the client sent right after its request.
                    let f = lock(&o.t.mux).data(o.id, &buf);
                    if let Ok(f) = f {
                        o.t.send(f).await;
                    }
                }
                o.pump(s).await;
            }
            Err((reason, msg)) => {
                // The reason comes from the exit: shown escaped.
                let msg_shown = burrow_proto::transfer::escape_display(&msg);
                (self.cfg.log)(format!("{shown}: {msg_shown}"));
                let fail = if is_socks {
                    socks::reply_for(Some(reason)).to_vec()
                } else {
                    socks::http_reply(Some((reason, &msg)))
                };
                let _ = s.write_all(&fail).await;
            }
        }
    }
}

/// Reads a SOCKS5 or HTTP CONNECT request (answering the SOCKS greeting,
/// or the reason a request is refused): the target, whether it was SOCKS,
/// and the bytes the client sent after it. `None`: the client is gone or
/// was refused.
pub(crate) async fn read_target(s: &mut TcpStream) -> Option<(socks::Target, bool, Vec<u8>)> {
    let mut buf = Vec::with_capacity(512);
    if !read_more(s, &mut buf).await {
        return None;
    }
    if buf[0] == 5 {
        let (answer, used) = loop {
            match socks::greeting(&buf) {
                Ok(Some(x)) => break x,
                Ok(None) if read_more(s, &mut buf).await => {}
                Ok(None) => return None,
                Err(_) => {
                    let _ = s.write_all(&[5, 0xff]).await;
                    return None;
                }
            }
        };
        s.write_all(&answer).await.ok()?;
        buf.drain(..used);
        let (t, used) = loop {
            match socks::request(&buf) {
                Ok(Some(x)) => break x,
                Ok(None) if read_more(s, &mut buf).await => {}
                Ok(None) => return None,
                Err(e) => {
                    let _ = s.write_all(&socks::reply(e.reply_code())).await;
                    return None;
                }
            }
        };
        buf.drain(..used);
        Some((t, true, buf))
    } else {
        let (t, used) = loop {
            match socks::http_connect(&buf) {
                Ok(Some(x)) => break x,
                Ok(None) if read_more(s, &mut buf).await => {}
                Ok(None) => return None,
                Err(e) => {
                    let body = e.to_string();
                    let head = format!(
                        "HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(head.as_bytes()).await;
                    return None;
                }
            }
        };
        buf.drain(..used);
        Some((t, false, buf))
    }
}

/// Reads more of a client's request (bounded in size and time).
async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    if buf.len() > 8 * 1024 {
        return false;
    }
    let mut chunk = [0u8; 1024];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, s.read(&mut chunk)).await {
        Ok(Ok(n)) if n > 0 => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
        _ => false,
    }
}
