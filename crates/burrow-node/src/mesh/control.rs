//! The control socket of a running node: a Unix socket (mode 0600, in the
//! data folder beside the identity) that answers one JSON request per
//! connection with one JSON line.
//!
//! | request | answer |
//! |---|---|
//! | `{"op":"status"}` | `{"id", "name", "listen", "addresses", "uptime_s", "relay": {"addr", "state", "fingerprint"} or null, "links": [{..., "via": "direct" or "relay"}], "offline": [...], "counters": {...}}` |
//! | `{"op":"nodes"}` | `{"nodes": [{"id", "name", "addresses", "relay", "online", "linked", "seq", "expires_in_s", "flags"}]}` |
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
            let _ = tokio::time::timeout(
                super::pair::OFFER_FOR + Duration::from_secs(30),
                answer(shared, s),
            )
            .await;
        });
    }
}

async fn answer(shared: Arc<Shared>, s: UnixStream) -> std::io::Result<()> {
    let (rd, mut wr) = s.into_split();
    let mut line = String::new();
    BufReader::new(rd.take(MAX_REQUEST)).read_line(&mut line).await?;
    let reply = match serde_json::from_str::<Value>(&line) {
        Ok(req) if req.get("op").and_then(Value::as_str) == Some("pair_offer") => {
            pair_offer(&shared, &req, &mut wr).await?
        }
        Ok(req) if req.get("op").and_then(Value::as_str) == Some("pair_join") => {
            pair_join(&shared, &req).await
        }
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

fn paired_json(p: &super::pair::Paired) -> Value {
    json!({"paired": {
        "node": p.node.to_string(),
        "x25519": hex::encode(p.keys.x25519),
        "ed25519": hex::encode(p.keys.ed25519),
        "name": p.name,
    }})
}

/// `{"op":"pair_offer","node":N}`: a line with the code at once, then a
/// line with the outcome when the other node tried it (or the code expired).
async fn pair_offer(
    shared: &Shared,
    req: &Value,
    wr: &mut tokio::net::unix::OwnedWriteHalf,
) -> std::io::Result<Value> {
    let node = match req.get("node").and_then(Value::as_str).map(|n| find(shared, n)) {
        Some(Ok(n)) => n,
        Some(Err(e)) => return Ok(json!({ "error": e })),
        None => return Ok(json!({"error": "pairing needs a node"})),
    };
    let (tx, rx) = oneshot::channel();
    let words = match super::pair::offer(shared, node, tx) {
        Ok(w) => w,
        Err(e) => return Ok(json!({ "error": e })),
    };
    let mut first =
        json!({"code": words.as_str(), "node": node.to_string(), "me": shared.id.to_string()}).to_string();
    first.push('\n');
    wr.write_all(first.as_bytes()).await?;
    Ok(match tokio::time::timeout(super::pair::OFFER_FOR, rx).await {
        Ok(Ok(Ok(p))) => paired_json(&p),
        Ok(Ok(Err(e))) => json!({ "error": e }),
        _ => {
            shared.lock().offers.remove(&node);
            json!({"error": "nobody used the code in time"})
        }
    })
}

/// `{"op":"pair_join","node":N,"code":WORDS}`.
async fn pair_join(shared: &Shared, req: &Value) -> Value {
    let node = match req.get("node").and_then(Value::as_str).map(|n| find(shared, n)) {
        Some(Ok(n)) => n,
        Some(Err(e)) => return json!({ "error": e }),
        None => return json!({"error": "pairing needs a node"}),
    };
    let Some(words) = req.get("code").and_then(Value::as_str) else {
        return json!({"error": "pairing needs the code"});
    };
    let (tx, rx) = oneshot::channel();
    if let Err(e) = super::pair::join(shared, node, words, tx) {
        return json!({ "error": e });
    }
    match tokio::time::timeout(Duration::from_secs(20), rx).await {
        Ok(Ok(Ok(p))) => paired_json(&p),
        Ok(Ok(Err(e))) => json!({ "error": e }),
        _ => {
            shared.lock().joins.remove(&node);
            json!({"error": "the other node did not answer in 20 s"})
        }
    }
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
                "via": if l.relayed { "relay" } else { "direct" },
                "direction": match l.dir { Direction::Outbound => "outbound", Direction::Inbound => "inbound" },
                "state": match l.state { LinkState::Handshake => "handshake", LinkState::Up => "up", LinkState::Closed => "closed" },
                "rtt_ms": l.rtt.map(|r| (r.as_secs_f64() * 1e6).round() / 1e3),
                "up_s": secs(now.duration_since(l.since)),
                "packets_in": l.stats.packets_in,
                "packets_out": l.stats.packets_out,
                "bytes_in": l.stats.bytes_in,
                "bytes_out": l.stats.bytes_out,
                "probes": l.stats.probes,
                "beats": l.stats.beats,
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
        "listen": shared.listen.to_string(),
        "addresses": shared.advertised.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "uptime_s": secs(now.duration_since(shared.started)),
        "relay": st.mailbox.as_ref().map(|m| json!({
            "addr": m.addr,
            "state": m.state,
            "fingerprint": m.fingerprint,
        })),
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
                "relay": r.relay,
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

/// Sends one request and hands every answer line to `each` (pairing
/// offers answer twice: the code, then the outcome); returns the last.
pub async fn request_lines(path: &Path, req: &Value, mut each: impl FnMut(&Value)) -> Result<Value, Error> {
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
    let mut lines = BufReader::new(s.take(1 << 24)).lines();
    let mut last = None;
    while let Some(l) = lines.next_line().await.map_err(|e| Error::io(path, e))? {
        let v: Value = serde_json::from_str(l.trim())
            .map_err(|_| Error::Protocol("the node's answer is not JSON".into()))?;
        each(&v);
        last = Some(v);
    }
    last.ok_or_else(|| Error::Protocol("the node closed the control connection without an answer".into()))
}

/// Sends one request to the node at `path` and returns its answer
/// (within 15 s).
pub async fn request(path: &Path, req: &Value) -> Result<Value, Error> {
    tokio::time::timeout(Duration::from_secs(15), request_lines(path, req, |_| {}))
        .await
        .map_err(|_| Error::Timeout("the node did not answer in 15 s".into()))?
}
