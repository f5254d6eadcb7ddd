//! The control socket of a running node: a Unix socket (mode 0600, in the
//! data folder beside the identity) that answers one JSON request per
//! connection with one JSON line.
//!
//! | request | answer |
//! |---|---|
//! | `{"op":"status"}` | `{"id", "name", "listen", "addresses", "uptime_s", "links": [...], "offline": [...], "counters": {...}}` |
//! | `{"op":"nodes"}` | `{"nodes": [{"id", "name", "addresses", "online", "linked", "seq", "expires_in_s", "flags"}]}` |
//! | `{"op":"ping","node":ID}` | `{"node", "rtt_ms"}` or `{"error"}` |
//!
//! Names and texts that came from other nodes are passed as they are (JSON
//! escapes them); `burrow node` escapes them again before printing.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;

use burrow_proto::keys::NodeId;
use burrow_proto::mesh::link::{Direction, LinkState};
use burrow_proto::mesh::record::Flags;

use super::{Cmd, Shared, unix_now};
use crate::error::Error;
use crate::platform::random;

/// Longest request line.
const MAX_REQUEST: u64 = 4096;

/// Binds the control socket, replacing a stale one; refuses when another
/// node answers on it.
pub(crate) fn bind(path: &Path) -> Result<UnixListener, Error> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    if std::fs::symlink_metadata(path).is_ok() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(Error::Usage(format!(
                "a node already runs with this data folder (its control socket {} answers)",
                path.display()
            )));
        }
        std::fs::remove_file(path).map_err(|e| Error::io(path, e))?;
    }
    let l = UnixListener::bind(path).map_err(|e| Error::io(path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| Error::io(path, e))?;
    Ok(l)
}

pub(crate) async fn serve(shared: Arc<Shared>, l: UnixListener) {
    loop {
        let Ok((s, _)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(30), answer(shared, s)).await;
        });
    }
}

async fn answer(shared: Arc<Shared>, s: UnixStream) -> std::io::Result<()> {
    let (rd, mut wr) = s.into_split();
    let mut line = String::new();
    BufReader::new(rd.take(MAX_REQUEST)).read_line(&mut line).await?;
    let reply = match serde_json::from_str::<Value>(&line) {
        Ok(req) => match req.get("op").and_then(Value::as_str) {
            Some("status") => status(&shared),
            Some("nodes") => nodes(&shared),
            Some("ping") => match req.get("node").and_then(Value::as_str) {
                Some(n) => ping(&shared, n).await,
                None => json!({"error": "ping needs a node"}),
            },
            _ => json!({"error": "unknown request"}),
        },
        Err(_) => json!({"error": "the request is not JSON"}),
    };
    let mut out = reply.to_string();
    out.push('\n');
    wr.write_all(out.as_bytes()).await?;
    wr.shutdown().await
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

fn status(shared: &Shared) -> Value {
    let st = shared.lock();
    let now = Instant::now();
    let links: Vec<Value> = st
        .links
        .values()
        .map(|l| {
            let name = l.peer.and_then(|p| st.table.get(&p)).map(|r| r.name.clone());
            json!({
                "node": l.peer.map(|p| p.to_string()),
                "name": name,
                "addr": l.addr.to_string(),
                "direction": match l.dir { Direction::Outbound => "outbound", Direction::Inbound => "inbound" },
                "state": match l.state { LinkState::Handshake => "handshake", LinkState::Up => "up", LinkState::Closed => "closed" },
                "rtt_ms": l.rtt.map(|r| (r.as_secs_f64() * 1e6).round() / 1e3),
                "up_s": secs(now.duration_since(l.since)),
                "packets_in": l.stats.packets_in,
                "packets_out": l.stats.packets_out,
                "bytes_in": l.stats.bytes_in,
                "bytes_out": l.stats.bytes_out,
                "probes": l.stats.probes,
                "rekeys": l.stats.rekeys,
            })
        })
        .collect();
    let offline: Vec<Value> = st
        .gone
        .iter()
        .map(|(id, g)| {
            json!({
                "node": id.to_string(),
                "reason": g.reason.name(),
                "text": g.text,
                "by_peer": g.by_peer,
                "ago_s": secs(now.duration_since(g.at)),
            })
        })
        .collect();
    json!({
        "id": shared.id.to_string(),
        "name": shared.cfg.name,
        "listen": shared.cfg.listen.to_string(),
        "addresses": shared.advertised.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "uptime_s": secs(now.duration_since(shared.started)),
        "keepalive_s": shared.cfg.keepalive.as_secs_f64(),
        "known_nodes": st.table.len(),
        "links": links,
        "offline": offline,
        "counters": st.counters,
    })
}

fn nodes(shared: &Shared) -> Value {
    let st = shared.lock();
    let unix = unix_now();
    let list: Vec<Value> = st
        .table
        .iter()
        .map(|(id, r)| {
            let me = *id == shared.id;
            let linked = st.by_node.contains_key(id);
            let mut flags = Vec::new();
            if r.flags.has(Flags::EXIT) {
                flags.push("exit");
            }
            if r.flags.has(Flags::ONION_RELAY) {
                flags.push("onion-relay");
            }
            if r.flags.has(Flags::BEHIND_NAT) {
                flags.push("behind-nat");
            }
            json!({
                "id": id.to_string(),
                "name": r.name,
                "self": me,
                "addresses": r.addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                "online": me || linked,
                "linked": linked,
                "seq": r.seq,
                "expires_in_s": r.expires.saturating_sub(unix),
                "flags": flags,
            })
        })
        .collect();
    json!({ "nodes": list })
}

/// Finds a node by id (as printed, or a unique prefix of it) or by the
/// name in its record (if unique).
fn find(shared: &Shared, what: &str) -> Result<NodeId, String> {
    if let Some(id) = NodeId::parse(what) {
        return Ok(id);
    }
    let st = shared.lock();
    let want = what.to_ascii_lowercase();
    let hits: Vec<NodeId> = st
        .table
        .iter()
        .filter(|(id, r)| r.name == what || id.to_string().starts_with(&want))
        .map(|(id, _)| *id)
        .collect();
    match hits.as_slice() {
        [one] => Ok(*one),
        [] => Err("no known node by that id or name".into()),
        _ => Err("more than one node matches; give more of the id".into()),
    }
}

async fn ping(shared: &Shared, what: &str) -> Value {
    let id = match find(shared, what) {
        Ok(id) => id,
        Err(e) => return json!({ "error": e }),
    };
    if id == shared.id {
        return json!({"error": "that is this node"});
    }
    let mut nonce = [0u8; 8];
    random(&mut nonce);
    let nonce = u64::from_be_bytes(nonce);
    let (tx, rx) = oneshot::channel();
    let link = {
        let mut st = shared.lock();
        let link = st
            .by_node
            .get(&id)
            .and_then(|l| st.links.get(l))
            .map(|l| l.tx.clone());
        if link.is_some() {
            st.pings.insert(nonce, (Instant::now(), tx));
        }
        link
    };
    let Some(link) = link else {
        return json!({
            "error": format!("no link to {id} (pings go over a direct link; routing through other nodes is not built yet)")
        });
    };
    if link.send(Cmd::Ping(nonce)).await.is_err() {
        shared.lock().pings.remove(&nonce);
        return json!({"error": "the link went down"});
    }
    let r = tokio::time::timeout(Duration::from_secs(5), rx).await;
    shared.lock().pings.remove(&nonce);
    match r {
        Ok(Ok(rtt)) => json!({"node": id.to_string(), "rtt_ms": (rtt.as_secs_f64() * 1e6).round() / 1e3}),
        _ => json!({"node": id.to_string(), "error": "no answer within 5 s"}),
    }
}

/// Sends one request to the node at `path` and returns its answer.
pub async fn request(path: &Path, req: &Value) -> Result<Value, Error> {
    let mut s = UnixStream::connect(path).await.map_err(|e| {
        Error::Usage(format!(
            "no node is running here (cannot reach its control socket {}: {e}); start one with `burrow node`",
            path.display()
        ))
    })?;
    let mut line = req.to_string();
    line.push('\n');
    s.write_all(line.as_bytes())
        .await
        .map_err(|e| Error::io(path, e))?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(15), s.take(1 << 24).read_to_string(&mut out))
        .await
        .map_err(|_| Error::Timeout("the node did not answer in 15 s".into()))?
        .map_err(|e| Error::io(path, e))?;
    serde_json::from_str(out.trim()).map_err(|_| Error::Protocol("the node's answer is not JSON".into()))
}
