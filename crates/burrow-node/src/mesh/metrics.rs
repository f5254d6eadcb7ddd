//! `--metrics HOST:PORT`: the node's counters in Prometheus' text format
//! (`GET /metrics`, one request per connection, any other path 404).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use burrow_proto::mesh::link::LinkState;

use super::Shared;
use crate::error::Error;

/// Binds the metrics listener.
pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Usage(format!("cannot serve metrics on {addr}: {e}")))
}

pub(crate) async fn serve(shared: Arc<Shared>, l: TcpListener) {
    loop {
        let Ok((s, _)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), answer(&shared, s)).await;
        });
    }
}

async fn answer(shared: &Shared, mut s: TcpStream) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let (status, body) = if head.starts_with(b"GET /metrics ") || head.starts_with(b"GET /metrics?") {
        ("200 OK", text(shared))
    } else {
        ("404 Not Found", "only /metrics is served here\n".to_owned())
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(reply.as_bytes()).await?;
    s.shutdown().await
}

/// The exposition.
pub(crate) fn text(shared: &Shared) -> String {
    let st = shared.lock();
    let up = st.links.values().filter(|l| l.state == LinkState::Up).count();
    let (bytes_in, bytes_out) = st.links.values().fold((0u64, 0u64), |(i, o), l| {
        (i + l.stats.bytes_in, o + l.stats.bytes_out)
    });
    let c = st.counters;
    let mut out = String::new();
    let mut put = |name: &str, kind: &str, help: &str, value: String| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    };
    put("burrow_mesh_links_up", "gauge", "Links up.", up.to_string());
    put(
        "burrow_mesh_links_handshaking",
        "gauge",
        "Links in their handshake.",
        (st.links.len() - up).to_string(),
    );
    put(
        "burrow_mesh_known_nodes",
        "gauge",
        "Records in the node table.",
        st.table.len().to_string(),
    );
    put(
        "burrow_mesh_handshakes_total",
        "counter",
        "Handshakes completed.",
        c.handshakes.to_string(),
    );
    put(
        "burrow_mesh_handshake_failures_total",
        "counter",
        "Links that failed before they were up.",
        c.handshake_failures.to_string(),
    );
    put(
        "burrow_mesh_authentication_failures_total",
        "counter",
        "Links closed for a record or key that did not authenticate.",
        c.authentication_failures.to_string(),
    );
    put(
        "burrow_mesh_keepalive_timeouts_total",
        "counter",
        "Links closed for a keepalive with no answer.",
        c.keepalive_timeouts.to_string(),
    );
    put(
        "burrow_mesh_records_in_total",
        "counter",
        "Node records received.",
        c.records_in.to_string(),
    );
    put(
        "burrow_mesh_records_new_total",
        "counter",
        "Records new or newer.",
        c.records_new.to_string(),
    );
    put(
        "burrow_mesh_records_duplicate_total",
        "counter",
        "Records already held (gossip echoes).",
        c.records_duplicate.to_string(),
    );
    put(
        "burrow_mesh_records_refused_total",
        "counter",
        "Records refused.",
        c.records_refused.to_string(),
    );
    put(
        "burrow_mesh_records_pushed_total",
        "counter",
        "Records pushed to links.",
        c.records_pushed.to_string(),
    );
    put(
        "burrow_mesh_links_refused_busy_total",
        "counter",
        "Connections refused at a limit.",
        c.links_refused_busy.to_string(),
    );
    put(
        "burrow_mesh_tunnels_total",
        "counter",
        "Tunnels paired nodes opened through this node.",
        c.tunnels.to_string(),
    );
    put(
        "burrow_mesh_tunnels_open",
        "gauge",
        "Tunnels open now.",
        c.tunnels_open.to_string(),
    );
    let tb = &shared.tunnel_bytes;
    put(
        "burrow_mesh_tunnel_bytes_in_total",
        "counter",
        "Bytes received on tunnel connections (records, framing included).",
        tb.rx.load(std::sync::atomic::Ordering::Relaxed).to_string(),
    );
    put(
        "burrow_mesh_tunnel_bytes_out_total",
        "counter",
        "Bytes sent on tunnel connections (records, framing included).",
        tb.tx.load(std::sync::atomic::Ordering::Relaxed).to_string(),
    );
    put(
        "burrow_mesh_link_bytes_in",
        "gauge",
        "Bytes received on the links now open.",
        bytes_in.to_string(),
    );
    put(
        "burrow_mesh_link_bytes_out",
        "gauge",
        "Bytes sent on the links now open.",
        bytes_out.to_string(),
    );
    out
}
