//! No relay configured: the sender serves one itself and announces it on
//! the local network; the receiver finds it there (see
//! [`burrow_proto::channel::lan`] for the datagram and why it is safe to send).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use burrow_proto::channel::lan::{Announce, GROUP, INTERVAL_MS, MAX_LEN, PORT};
use burrow_relay::{Relay, RelayConfig, RelayHandle};

use crate::error::Error;

/// How long a receiver listens for its sender by default.
pub const DISCOVER_TIMEOUT: Duration = Duration::from_secs(10);

/// This machine's IPv4 interface addresses, loopback included.
fn ipv4_interfaces() -> Vec<Ipv4Addr> {
    let mut v: Vec<Ipv4Addr> = if_addrs::get_if_addrs()
        .map(|ifs| {
            ifs.into_iter()
                .filter_map(|i| match i.ip() {
                    IpAddr::V4(a) => Some(a),
                    IpAddr::V6(_) => None,
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v.dedup();
    v
}

/// A relay served by this process on an ephemeral port of every interface.
pub async fn embedded_relay() -> Result<RelayHandle, Error> {
    let cfg = RelayConfig {
        listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        ..Default::default()
    };
    let relay = Relay::bind(cfg)
        .await
        .map_err(|e| Error::Usage(format!("cannot serve a local relay: {e}")))?;
    relay
        .spawn()
        .map_err(|e| Error::Usage(format!("cannot serve a local relay: {e}")))
}

/// Announces a channel until dropped.
pub struct Announcer {
    task: JoinHandle<()>,
}

impl Drop for Announcer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Announcer {
    /// Starts announcing `channel` at relay port `port`, every
    /// [`INTERVAL_MS`], on every IPv4 interface and to 127.0.0.1.
    pub fn start(port: u16, channel: &str) -> Result<Self, Error> {
        let msg = Announce {
            port,
            channel: channel.to_owned(),
        }
        .encode()
        .map_err(|e| Error::Usage(format!("cannot announce this channel: {e}")))?;
        let sock = (|| -> std::io::Result<UdpSocket> {
            let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
            s.set_multicast_loop_v4(true)?;
            s.set_multicast_ttl_v4(1)?;
            s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)).into())?;
            s.set_nonblocking(true)?;
            UdpSocket::from_std(s.into())
        })()
        .map_err(|e| Error::Usage(format!("cannot announce on the local network: {e}")))?;
        let task = tokio::spawn(async move {
            let group = SocketAddr::from((GROUP, PORT));
            let local = SocketAddr::from((Ipv4Addr::LOCALHOST, PORT));
            loop {
                for ip in ipv4_interfaces() {
                    if SockRef::from(&sock).set_multicast_if_v4(&ip).is_ok() {
                        let _ = sock.send_to(&msg, group).await;
                    }
                }
                // Same machine, even without a multicast-capable interface.
                let _ = sock.send_to(&msg, local).await;
                tokio::time::sleep(Duration::from_millis(INTERVAL_MS)).await;
            }
        });
        Ok(Self { task })
    }
}

/// Listens for a sender announcing `channel`; returns its relay's address.
pub async fn discover(channel: &str, within: Duration) -> Result<String, Error> {
    let sock = (|| -> std::io::Result<UdpSocket> {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        // Several receivers (and tests) may listen on one machine.
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.bind(&SocketAddr::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, PORT)).into())?;
        for ip in ipv4_interfaces() {
            let _ = s.join_multicast_v4(&GROUP, &ip);
        }
        s.set_nonblocking(true)?;
        UdpSocket::from_std(s.into())
    })()
    .map_err(|e| Error::Usage(format!("cannot listen on the local network (UDP {PORT}): {e}")))?;
    let deadline = Instant::now() + within;
    let mut buf = [0u8; MAX_LEN + 1];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let got = tokio::time::timeout(left, sock.recv_from(&mut buf)).await;
        let (n, from) = match got {
            Ok(Ok(x)) => x,
            Ok(Err(_)) => continue,
            Err(_) => {
                return Err(Error::NotFound(format!(
                    "no sender for channel {channel} announced itself on this network within {}s; \
                     if the sender used a relay, pass the same --relay",
                    within.as_secs()
                )));
            }
        };
        if let Ok(a) = Announce::decode(&buf[..n])
            && a.channel == channel
        {
            return Ok(SocketAddr::new(from.ip(), a.port).to_string());
        }
    }
}
