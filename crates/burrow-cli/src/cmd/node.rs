//! `burrow node`: run a mesh node, or ask the running one.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use burrow_node::Error;
use burrow_node::mesh::{NodeConfig, control, default_control_path, run_node};
use burrow_proto::transfer::escape_display;

use crate::args::{NodeArgs, NodeAsk};

fn control_path() -> Result<std::path::PathBuf, Error> {
    default_control_path().ok_or_else(|| Error::Usage("neither XDG_DATA_HOME nor HOME is set".into()))
}

/// Text from another node, safe for a terminal.
fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => escape_display(s),
        Value::Null => "-".into(),
        other => escape_display(&other.to_string()),
    }
}

pub async fn run(args: NodeArgs, cfg: &crate::config::Config) -> Result<(), Error> {
    match args.ask {
        Some(NodeAsk::Status { json }) => show("status", json, print_status).await,
        Some(NodeAsk::Nodes { json }) => show("nodes", json, print_nodes).await,
        Some(NodeAsk::Ping { node, count, json }) => ping(&node, count.max(1), json).await,
        None => serve(args, cfg).await,
    }
}

/// Asks the running node for `op` and prints the answer (JSON as it came).
async fn show(op: &str, json: bool, print: fn(&Value)) -> Result<(), Error> {
    let v = control::request(&control_path()?, &json!({ "op": op })).await?;
    if json {
        println!("{v}");
    } else {
        print(&v);
    }
    Ok(())
}

async fn serve(args: NodeArgs, cfg: &crate::config::Config) -> Result<(), Error> {
    let listen = tokio::net::lookup_host(&args.listen)
        .await
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| Error::Usage(format!("--listen {:?} is not HOST:PORT", args.listen)))?;
    let mut advertise = Vec::new();
    for a in &args.advertise {
        let addr = tokio::net::lookup_host(a)
            .await
            .ok()
            .and_then(|mut x| x.next())
            .ok_or_else(|| Error::Usage(format!("--advertise {a:?} is not HOST:PORT")))?;
        advertise.push(addr);
    }
    let name = args.name.unwrap_or_else(super::host_name);
    if name.len() > burrow_proto::mesh::record::MAX_NAME {
        return Err(Error::Usage(format!(
            "--name is {} bytes; at most {} fit a node record",
            name.len(),
            burrow_proto::mesh::record::MAX_NAME
        )));
    }
    let directories = cfg.directories(&args.directories)?;
    let onion = if directories.is_empty() {
        if args.exit {
            return Err(Error::Usage(
                "--exit relays onion circuits out: it needs --directory".into(),
            ));
        }
        None
    } else {
        Some(burrow_node::onion::OnionNodeConfig {
            directories,
            exit: args.exit,
            exit_ports: match &args.exit_ports {
                Some(p) => parse_ports(p)?,
                None => burrow_node::onion::default_exit_ports(),
            },
        })
    };
    run_node(NodeConfig {
        me: Arc::new(super::my_identity()?),
        name,
        listen,
        advertise,
        bootstrap: args.bootstrap,
        keepalive: Duration::from_secs(args.keepalive.max(1)),
        control: control_path()?,
        known_file: burrow_node::mesh::default_known_path(),
        policy: Arc::new(super::tunnel::policy_of(&args.allow, &args.deny)?),
        peer_book: burrow_node::keys::peers::PeerBook::default_path(),
        metrics: args.metrics,
        inbox: args
            .inbox
            .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join("burrow-inbox"))),
        log: Arc::new(|l| eprintln!("{l}")),
        target_links: args.links.max(1),
        max_links: 256.max(args.links * 4),
        relay: args.relay.filter(|r| !r.trim().is_empty()),
        onion,
    })
    .await
}

/// `80,443,8000-9000` as inclusive ranges.
fn parse_ports(text: &str) -> Result<Vec<(u16, u16)>, Error> {
    let bad = || {
        Error::Usage(format!(
            "--exit-ports {text:?}: expected ports like 80,443,8000-9000"
        ))
    };
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (
                a.trim().parse::<u16>().map_err(|_| bad())?,
                b.trim().parse::<u16>().map_err(|_| bad())?,
            ),
            None => {
                let p = part.parse::<u16>().map_err(|_| bad())?;
                (p, p)
            }
        };
        if lo == 0 || hi < lo {
            return Err(bad());
        }
        out.push((lo, hi));
    }
    if out.is_empty() || out.len() > burrow_proto::onion::directory::MAX_EXIT_RANGES {
        return Err(bad());
    }
    Ok(out)
}

fn print_status(v: &Value) {
    println!("node {} ({})", shown(&v["id"]), shown(&v["name"]));
    println!("  listening on {}", shown(&v["listen"]));
    if let Some(a) = v["addresses"].as_array() {
        let a: Vec<String> = a.iter().map(shown).collect();
        println!(
            "  advertising {}",
            if a.is_empty() {
                "nothing".into()
            } else {
                a.join(", ")
            }
        );
    }
    if v["relay"].is_object() {
        println!(
            "  behind NAT: reachable through the relay {} (mailbox {})",
            shown(&v["relay"]["addr"]),
            shown(&v["relay"]["state"])
        );
    }
    println!("  knows {} node(s), up {} s", v["known_nodes"], v["uptime_s"]);
    let links = v["links"].as_array().cloned().unwrap_or_default();
    println!("links ({}):", links.len());
    for l in &links {
        let rtt = l["rtt_ms"]
            .as_f64()
            .map(|r| format!("{r:.2} ms"))
            .unwrap_or_else(|| "-".into());
        let addr = if l["via"] == "relay" {
            format!("{} (relay)", shown(&l["addr"]))
        } else {
            shown(&l["addr"])
        };
        println!(
            "  {:<29} {:<12} {:<8} {:<9} {:<21} rtt {}",
            shown(&l["node"]),
            shown(&l["name"]),
            shown(&l["direction"]),
            shown(&l["state"]),
            addr,
            rtt
        );
    }
    let offline = v["offline"].as_array().cloned().unwrap_or_default();
    if !offline.is_empty() {
        println!("offline:");
        for o in &offline {
            println!(
                "  {} {} ({}), {} s ago",
                shown(&o["node"]),
                shown(&o["text"]),
                shown(&o["reason"]),
                o["ago_s"]
            );
        }
    }
    if let Some(c) = v["counters"].as_object() {
        let parts: Vec<String> = c
            .iter()
            .map(|(k, n)| format!("{} {n}", k.replace('_', " ")))
            .collect();
        println!("counters: {}", parts.join(", "));
    }
}

fn print_nodes(v: &Value) {
    let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
    for n in &nodes {
        let addrs: Vec<String> = n["addresses"]
            .as_array()
            .map(|a| a.iter().map(shown).collect())
            .unwrap_or_default();
        let state = if n["self"].as_bool() == Some(true) {
            "self"
        } else if n["online"].as_bool() == Some(true) {
            "online"
        } else {
            "offline"
        };
        println!(
            "{:<29} {:<16} {:<7} {}",
            shown(&n["id"]),
            shown(&n["name"]),
            state,
            addrs.join(", ")
        );
    }
}

async fn ping(node: &str, count: u32, json: bool) -> Result<(), Error> {
    let path = control_path()?;
    let mut ok = 0;
    for i in 0..count {
        if i > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let v = control::request(&path, &json!({"op": "ping", "node": node})).await?;
        if json {
            println!("{v}");
        }
        match v.get("rtt_ms").and_then(Value::as_f64) {
            Some(rtt) => {
                ok += 1;
                if !json {
                    println!("reply from {}: {rtt:.3} ms", shown(&v["node"]));
                }
            }
            None => {
                let e = shown(&v["error"]);
                if v.get("node").is_none() {
                    // Not a node we can ping at all: no point in trying again.
                    return Err(Error::Usage(e));
                }
                if !json {
                    println!("no reply: {e}");
                }
            }
        }
    }
    if ok == 0 {
        return Err(Error::Timeout(format!("no reply from {}", escape_display(node))));
    }
    Ok(())
}

/// `burrow pair --mesh NODE [CODE] [--name NAME]`: through the running node.
pub async fn pair(node: &str, code: Option<&str>, name: Option<&str>) -> Result<(), Error> {
    if let Some(n) = name
        && !burrow_node::keys::peers::valid_name(n)
    {
        return Err(Error::Usage(format!(
            "{n:?} cannot name a peer: use 1-64 of A-Z a-z 0-9 . _ -"
        )));
    }
    let mut book = super::book()?;
    let path = control_path()?;
    let answer = match code {
        None => {
            control::request_lines(&path, &json!({"op": "pair_offer", "node": node}), |v| {
                if let Some(c) = v.get("code").and_then(Value::as_str) {
                    eprintln!("code: {c}");
                    eprintln!(
                        "On the other node, run:\n\n    burrow pair --mesh {} {c} --name NAME\n\nwaiting for it (up to 5 minutes)...",
                        shown(&v["me"])
                    );
                }
            })
            .await?
        }
        Some(c) => {
            eprintln!(
                "trying the code with {} over the mesh (up to 20 s)...",
                escape_display(node)
            );
            control::request(&path, &json!({"op": "pair_join", "node": node, "code": c})).await?
        }
    };
    if let Some(e) = answer.get("error") {
        let e = shown(e);
        return Err(if e.contains("wrong code") {
            Error::WrongCode
        } else {
            Error::Usage(e)
        });
    }
    let p = &answer["paired"];
    let key = |k: &str| -> Result<[u8; 32], Error> {
        p[k].as_str()
            .and_then(|h| hex::decode(h).ok())
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| Error::Protocol("the node's pairing answer has no keys".into()))
    };
    let keys = burrow_node::keys::identity::PublicIdentity {
        x25519: key("x25519")?,
        ed25519: key("ed25519")?,
    };
    let hint = p["name"].as_str().unwrap_or_default();
    let fallback = format!("node-{}", &keys.fingerprint()[..4]);
    let name = match name {
        Some(n) => n.to_owned(),
        None if burrow_node::keys::peers::valid_name(hint) => hint.to_owned(),
        None => fallback,
    };
    book.add(&name, keys)?;
    println!("paired with {name} ({})", keys.fingerprint());
    Ok(())
}

/// Where the running node last saw the node with `keys`: from its node list.
pub async fn addresses_of(
    keys: &burrow_node::keys::identity::PublicIdentity,
) -> Result<burrow_node::mesh::NodeAddrs, Error> {
    let v = control::request(&control_path()?, &json!({"op": "nodes"})).await?;
    let id = keys.fingerprint();
    let node = v["nodes"]
        .as_array()
        .and_then(|l| l.iter().find(|n| n["id"] == id.as_str()))
        .ok_or_else(|| {
            Error::Usage(format!(
                "the local node does not know {id} (is it linked? `burrow node nodes`)"
            ))
        })?;
    let addrs: Vec<std::net::SocketAddr> = node["addresses"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_str()?.parse().ok()).collect())
        .unwrap_or_default();
    let relay = node["relay"].as_str().map(str::to_owned);
    let behind_nat = node["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == "behind-nat"));
    if addrs.is_empty() && relay.is_none() {
        return Err(Error::Usage(format!(
            "{id} advertises no address and no relay to reach it at"
        )));
    }
    Ok(burrow_node::mesh::NodeAddrs {
        addrs,
        relay,
        behind_nat,
    })
}
