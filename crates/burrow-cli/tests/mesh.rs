//! `burrow node` (seed 002), tested with real processes inside a network
//! namespace this test creates: every node listens on an address of the
//! namespace's own loopback (10.92.0.0/24), never on the host's interfaces.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A namespace whose loopback carries 10.92.0.1..=n.
fn mesh_ns(tag: &str, n: u8) -> Netns {
    let ns = Netns::new(tag);
    for i in 1..=n {
        ns.ip(&["addr", "add", &format!("10.92.0.{i}/32"), "dev", "lo"]);
    }
    ns
}

fn node(ns: &Netns, home: &Path, i: u8, bootstrap: Option<u8>, keepalive: u64) -> Proc {
    node_with(ns, home, i, bootstrap, keepalive, &[])
}

/// [`node`] with more flags.
fn node_with(ns: &Netns, home: &Path, i: u8, bootstrap: Option<u8>, keepalive: u64, extra: &[&str]) -> Proc {
    let mut c = ns.burrow(home);
    c.args(["node", "--listen", &format!("10.92.0.{i}:9010")]).args([
        "--keepalive",
        &keepalive.to_string(),
        "--name",
        &format!("n{i}"),
    ]);
    c.args(extra);
    if let Some(b) = bootstrap {
        c.args(["--bootstrap", &format!("10.92.0.{b}:9010")]);
    }
    let p = spawn(c);
    p.line("node ");
    p
}

/// `burrow node ARGS --json` against the node whose HOME is `home` (a Unix
/// socket: no network).
fn ask(home: &Path, args: &[&str]) -> Value {
    let out = burrow(home)
        .arg("node")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn id_of(home: &Path) -> String {
    let out = burrow(home).args(["id", "--json"]).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["fingerprint"].as_str().unwrap().to_owned()
}

/// Polls `f` every 100 ms until it holds, for at most `limit`.
fn eventually(limit: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
    t0.elapsed()
}

fn online(home: &Path, id: &str) -> bool {
    ask(home, &["nodes"])["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["id"] == id && n["online"] == true)
}

fn homes(n: usize) -> (tempfile::TempDir, Vec<std::path::PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let hs = (0..n)
        .map(|i| {
            let h = dir.path().join(format!("h{i}"));
            std::fs::create_dir_all(&h).unwrap();
            h
        })
        .collect();
    (dir, hs)
}

#[test]
fn three_nodes_learn_each_other_through_one_and_ping() {
    let (_d, h) = homes(3);
    let ids: Vec<String> = h.iter().map(|p| id_of(p)).collect();
    let ns = mesh_ns("m1", 3);
    let _a = node(&ns, &h[0], 1, None, 10);
    let _b = node(&ns, &h[1], 2, Some(1), 10);
    let _c = node(&ns, &h[2], 3, Some(1), 10);
    // B and C only know A; they learn each other from A's node list and link.
    let took = eventually(
        Duration::from_secs(15),
        "every node sees the other two online",
        || (0..3).all(|i| (0..3).filter(|&j| j != i).all(|j| online(&h[i], &ids[j]))),
    );
    eprintln!("all linked after {took:?}");
    let st = ask(&h[2], &["status"]);
    assert_eq!(
        st["id"],
        ids[2].as_str(),
        "status names this installation's identity"
    );
    let links = st["links"].as_array().unwrap();
    assert_eq!(links.iter().filter(|l| l["state"] == "up").count(), 2, "{st}");
    let nodes = ask(&h[1], &["nodes"]);
    let c = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == ids[2].as_str())
        .unwrap()
        .clone();
    assert_eq!(c["name"], "n3");
    assert_eq!(c["addresses"][0], "10.92.0.3:9010");
    // Ping from C to B, by id and by name.
    let out = burrow(&h[2])
        .args(["node", "ping", "-c", "2", &ids[1]])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.matches("reply from").count() == 2,
        "{text}"
    );
    let out = burrow(&h[2])
        .args(["node", "ping", "-c", "1", "n1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // An unknown node is a clear error, at once.
    let out = burrow(&h[2]).args(["node", "ping", "nobody"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no known node"));
}

#[test]
fn a_stopped_node_goes_offline_within_two_intervals_and_comes_back() {
    let (_d, h) = homes(2);
    let ids: Vec<String> = h.iter().map(|p| id_of(p)).collect();
    let ns = mesh_ns("m2", 2);
    let _a = node(&ns, &h[0], 1, None, 1);
    let b = node(&ns, &h[1], 2, Some(1), 1);
    eventually(Duration::from_secs(10), "A sees B", || online(&h[0], &ids[1]));
    let pid = b.child.id().to_string();
    run("kill", &["-STOP", &pid]);
    // KEEPALIVE_INTERVAL is 1 s: offline two intervals and the 1 s grace
    // after the last packet heard from B (and the poll).
    let took = eventually(Duration::from_secs(4), "A marks B offline", || {
        !online(&h[0], &ids[1])
    });
    eprintln!("offline after {took:?}");
    let st = ask(&h[0], &["status"]);
    let gone = st["offline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["node"] == ids[1].as_str())
        .cloned();
    assert_eq!(gone.expect("B listed offline")["reason"], "timeout", "{st}");
    run("kill", &["-CONT", &pid]);
    // B's bootstrap link redials: the link heals by itself.
    eventually(Duration::from_secs(15), "A sees B again", || {
        online(&h[0], &ids[1])
    });
    assert!(
        st["counters"]["keepalive_timeouts"].as_u64().unwrap() >= 1,
        "{st}"
    );
}

#[test]
fn garbage_on_a_node_port_closes_that_connection_only() {
    let (_d, h) = homes(2);
    let ids: Vec<String> = h.iter().map(|p| id_of(p)).collect();
    let ns = mesh_ns("m3", 2);
    let _a = node(&ns, &h[0], 1, None, 10);
    let _b = node(&ns, &h[1], 2, Some(1), 10);
    eventually(Duration::from_secs(10), "B sees A", || online(&h[1], &ids[0]));
    // A hostile client: an HTTP request, a bad HELLO, a huge frame length.
    for junk in [
        "printf 'GET / HTTP/1.1\\r\\n\\r\\n'",
        "printf 'BRWM\\001\\000\\005\\000\\000\\040\\001\\002'",
        "printf 'BRWM\\001\\377\\377'; sleep 1",
    ] {
        let st = Command::new("ip")
            .args(["netns", "exec", &ns.name, "timeout", "5", "bash", "-c"])
            .arg(format!(
                "exec 3<>/dev/tcp/10.92.0.1/9010; ({junk}) >&3; sleep 0.5"
            ))
            .status()
            .unwrap();
        let _ = st;
    }
    let out = burrow(&h[1])
        .args(["node", "ping", "-c", "1", &ids[0]])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "A still answers: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = ask(&h[0], &["status"]);
    assert!(
        st["counters"]["handshake_failures"].as_u64().unwrap() >= 2,
        "{st}"
    );
    assert_eq!(
        st["links"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["state"] == "up")
            .count(),
        1
    );
}

fn peers_of(home: &Path) -> Vec<Value> {
    let out = burrow(home).args(["peers", "--json"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn two_linked_nodes_pair_with_a_code_over_their_link() {
    let (_d, h) = homes(2);
    let ids: Vec<String> = h.iter().map(|p| id_of(p)).collect();
    let ns = mesh_ns("m4", 2);
    let _a = node(&ns, &h[0], 1, None, 10);
    let _b = node(&ns, &h[1], 2, Some(1), 10);
    eventually(Duration::from_secs(10), "A sees B", || online(&h[0], &ids[1]));

    // A wrong code first: both sides say so, nothing is stored.
    let mut c = burrow(&h[0]);
    c.args(["pair", "--mesh", &ids[1]]);
    let offer = spawn(c);
    let code = offer.line("code:");
    let wrong = if code.starts_with("zoo") {
        "abandon-ability-able"
    } else {
        "zoo-zone-zero"
    };
    let out = burrow(&h[1])
        .args(["pair", "--mesh", &ids[0], wrong])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code_a, err_a) = offer.finish();
    assert_eq!(code_a, 3, "{err_a}");
    assert!(peers_of(&h[0]).is_empty() && peers_of(&h[1]).is_empty());

    // The right code: each side pins the other.
    let mut c = burrow(&h[0]);
    c.args(["pair", "--mesh", "n2"]);
    let offer = spawn(c);
    let code = offer.line("code:");
    let out = burrow(&h[1])
        .args(["pair", "--mesh", &ids[0], &code, "--name", "office"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("paired with office"));
    let (code_a, err_a) = offer.finish();
    assert_eq!(code_a, 0, "{err_a}");
    let pa = peers_of(&h[0]);
    let pb = peers_of(&h[1]);
    assert_eq!(pa.len(), 1);
    assert_eq!(
        (pa[0]["name"].as_str(), pa[0]["fingerprint"].as_str()),
        (Some("n2"), Some(ids[1].as_str()))
    );
    assert_eq!(
        (pb[0]["name"].as_str(), pb[0]["fingerprint"].as_str()),
        (Some("office"), Some(ids[0].as_str()))
    );
    // An unlinked node cannot be paired with.
    let out = burrow(&h[1])
        .args(["pair", "--mesh", "aaaa-aaaa-aaaa-aaaa-aaaa-aaaa"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_restarted_node_finds_its_mesh_without_a_bootstrap() {
    let (_d, h) = homes(3);
    let ids: Vec<String> = h.iter().map(|p| id_of(p)).collect();
    let ns = mesh_ns("m5", 3);
    let a = node(&ns, &h[0], 1, None, 10);
    let _b = node(&ns, &h[1], 2, Some(1), 10);
    let c = node(&ns, &h[2], 3, Some(1), 10);
    eventually(Duration::from_secs(15), "C sees A and B", || {
        online(&h[2], &ids[0]) && online(&h[2], &ids[1])
    });
    let known = h[2].join(".local/share/burrow/mesh-nodes");
    eventually(Duration::from_secs(15), "C remembers two nodes", || {
        std::fs::read_to_string(&known).is_ok_and(|t| t.lines().count() == 2)
    });
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&known).unwrap().permissions().mode() & 0o777,
        0o600
    );
    drop(c);
    drop(a); // the bootstrap node is gone
    let _c = node(&ns, &h[2], 3, None, 10);
    eventually(Duration::from_secs(15), "C links to B again", || {
        online(&h[2], &ids[1])
    });
}

#[test]
fn a_handshake_flood_from_one_address_leaves_links_from_others() {
    let (_d, h) = homes(2);
    let ids: Vec<String> = h.iter().map(|p| id_of(p)).collect();
    let ns = mesh_ns("m6", 3);
    let _a = node(&ns, &h[0], 1, None, 10);
    // 10.92.0.3 opens 300 connections that never finish a handshake (more
    // than the 256 links a node takes at most).
    let mut flood = Command::new("ip");
    flood.args(["netns", "exec", &ns.name, "timeout", "20", "python3", "-c"]).arg(
        "import socket,time\nss=[]\nfor i in range(300):\n    s=socket.socket(); s.bind(('10.92.0.3',0)); s.connect(('10.92.0.1',9010)); ss.append(s)\nprint('open',flush=True)\ntime.sleep(15)",
    );
    flood.stdout(std::process::Stdio::piped());
    let mut flood = flood.spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(flood.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "open");
    // B, from another address, links at once.
    let _b = node(&ns, &h[1], 2, Some(1), 10);
    let took = eventually(Duration::from_secs(4), "A links with B during the flood", || {
        online(&h[0], &ids[1])
    });
    eprintln!("linked after {took:?} under the flood");
    let st = ask(&h[0], &["status"]);
    let handshaking = st["links"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["state"] == "handshake")
        .count();
    assert!(handshaking <= 8, "{handshaking} handshakes held for one address");
    assert!(
        st["counters"]["links_refused_busy"].as_u64().unwrap() >= 250,
        "{st}"
    );
    let _ = flood.kill();
    let _ = flood.wait();
}

/// Gives `to` the peers `from` paired with (a side that pins a node that
/// never paired with it).
fn copy_book(from: &Path, to: &Path) {
    let book = |h: &Path| h.join(".local/share/burrow/peers");
    std::fs::copy(book(from), book(to)).unwrap();
}

/// `curl` inside the namespace through the SOCKS5 proxy on 127.0.0.1:`port`.
fn socks_curl(ns: &Netns, port: u16, url: &str, out: &Path) -> std::process::Output {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "curl",
            "-sS",
            "--max-time",
            "20",
            "--socks5-hostname",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .arg(url)
        .arg("-o")
        .arg(out)
        .output()
        .unwrap()
}

/// Pairs the nodes of `a` and `b` over their link (A shows the code).
fn pair_over_mesh(a: &Path, b: &Path, a_id: &str, b_id: &str, b_calls_a: &str) {
    let mut c = burrow(a);
    c.args(["pair", "--mesh", b_id]);
    let offer = spawn(c);
    let code = offer.line("code:");
    let out = burrow(b)
        .args(["pair", "--mesh", a_id, &code, "--name", b_calls_a])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(offer.finish().0, 0);
}

#[test]
fn a_paired_nodes_tunnel_carries_curl_and_an_unpaired_one_is_refused() {
    let (d, h) = homes(3);
    let ids: Vec<String> = h.iter().map(|p| id_of(p)).collect();
    let ns = mesh_ns("m7", 9);
    // A is the exit; its policy lets tunnels reach the web server's range.
    let _a = node_with(
        &ns,
        &h[0],
        1,
        None,
        10,
        &["--allow", "10.92.0.9/32:8080", "--metrics", "10.92.0.1:9101"],
    );
    let _b = node(&ns, &h[1], 2, Some(1), 10);
    let _c = node(&ns, &h[2], 3, Some(1), 10);
    eventually(Duration::from_secs(10), "A sees B and C", || {
        online(&h[0], &ids[1]) && online(&h[0], &ids[2])
    });
    pair_over_mesh(&h[0], &h[1], &ids[0], &ids[1], "exit");

    // A web server inside the namespace, and a file to fetch through the tunnel.
    let www = d.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    let body = pseudo_random(3 * 1024 * 1024 + 17, "mesh tunnel");
    std::fs::write(www.join("file.bin"), &body).unwrap();
    let mut web = Command::new("ip");
    web.args([
        "netns",
        "exec",
        &ns.name,
        "python3",
        "-m",
        "http.server",
        "--bind",
        "10.92.0.9",
        "8080",
        "--directory",
    ])
    .arg(&www)
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped());
    let _web = spawn(web);
    eventually(Duration::from_secs(10), "the web server answers", || {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.name,
                "curl",
                "-sf",
                "-o",
                "/dev/null",
                "http://10.92.0.9:8080/",
            ])
            .status()
            .unwrap()
            .success()
    });

    let mut p = ns.burrow(&h[1]);
    p.args(["proxy", "exit", "--mesh", "--listen", "127.0.0.1:11080"]);
    let proxy = spawn(p);
    proxy.line("proxy listening on");
    let got = d.path().join("got.bin");
    let out = socks_curl(&ns, 11080, "http://10.92.0.9:8080/file.bin", &got);
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::read(&got).unwrap() == body,
        "byte-identical through the mesh tunnel"
    );
    // The exit's metrics count the tunnel and its bytes (the body went out).
    let m = Command::new("ip")
        .args(["netns", "exec", &ns.name, "curl", "-s", "--max-time", "5"])
        .arg("http://10.92.0.1:9101/metrics")
        .output()
        .unwrap();
    let m = String::from_utf8_lossy(&m.stdout);
    let value = |name: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in:\n{m}"))
    };
    assert_eq!(value("burrow_mesh_tunnels_total"), 1, "{m}");
    assert_eq!(value("burrow_mesh_tunnels_open"), 1, "{m}");
    assert!(
        value("burrow_mesh_tunnel_bytes_out_total") >= body.len() as u64,
        "{m}"
    );
    assert!(value("burrow_mesh_tunnel_bytes_in_total") > 0, "{m}");
    // The exit's policy still holds: a destination outside --allow is refused.
    let out = socks_curl(&ns, 11080, "http://10.92.0.1:9010/", &d.path().join("x"));
    assert!(!out.status.success(), "the node's own port is not a destination");
    drop(proxy);

    // C is linked but not paired with A: its tunnel is refused, with a reason.
    // C pins A by copying B's book (A as "exit"); A has not paired with C.
    let pb = String::from_utf8(burrow(&h[1]).args(["peers"]).output().unwrap().stdout).unwrap();
    assert!(pb.contains(&ids[0]), "{pb}");
    copy_book(&h[1], &h[2]);
    let mut p = ns.burrow(&h[2]);
    p.args(["proxy", "exit", "--mesh", "--listen", "127.0.0.1:11081"]);
    let proxy = spawn(p);
    proxy.line("proxy listening on");
    let out = socks_curl(
        &ns,
        11081,
        "http://10.92.0.9:8080/file.bin",
        &d.path().join("no.bin"),
    );
    assert!(!out.status.success(), "an unpaired node's tunnel is refused");
    let (_, log) = proxy.finish_after_kill();
    assert!(
        log.contains("not paired") || log.contains("paired nodes only"),
        "{log}"
    );
}

/// A hostile peer on loopback (the node listens on 127.0.0.1 only and
/// advertises just that): after a real handshake it pushes forged node
/// records as fast as it can. The node checks a table's worth, then closes
/// that one link with DISCONNECT(busy) and a reason, and keeps serving.
#[test]
fn a_record_flood_closes_that_link_with_a_reason() {
    use burrow_proto::keys::Identity;
    use burrow_proto::mesh::link::{Link, LinkConfig, LinkEvent, LinkState};
    use burrow_proto::mesh::packet::{Packet, Reason};
    use burrow_proto::mesh::record::{Claims, NodeRecord};
    use burrow_proto::session::aead::Backend;
    use std::io::{Read, Write};

    let (_d, h) = homes(1);
    let mut c = burrow(&h[0]);
    c.args(["node", "--listen", "127.0.0.1:0", "--name", "target"]);
    let node = spawn(c);
    let line = node.line("node ");
    let port: u16 = line
        .split("listening on 127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut rng = move |out: &mut [u8]| {
        for b in out {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *b = state as u8;
        }
    };
    let me = Identity::generate(&mut rng);
    let claims = Claims {
        seq: 1,
        issued: 0,
        ttl: 3600,
        ..Claims::default()
    };
    let mine = NodeRecord::sign(
        &me,
        &Claims {
            issued: now_unix(),
            ..claims.clone()
        },
    )
    .unwrap();
    // A forged record: someone else's keys, a signature that does not check.
    let mut forged = NodeRecord::sign(
        &Identity::generate(&mut rng),
        &Claims {
            issued: now_unix(),
            ..claims
        },
    )
    .unwrap();
    let last = forged.len() - 1;
    forged[last] ^= 1;

    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
    let t0 = std::time::Instant::now();
    let mut link = Link::outbound(
        LinkConfig::new(Backend::detect()),
        me.x25519_secret(),
        mine,
        None,
        t0,
        &mut rng,
    )
    .unwrap();
    let mut buf = vec![0u8; 65536];
    let mut closed = None;
    let page: Vec<&[u8]> = vec![&forged[..]; 200];
    let mut sent = 0usize;
    let mut write_failed = false;
    while closed.is_none() && t0.elapsed() < Duration::from_secs(30) {
        if link.state() == LinkState::Up && sent < 100_000 {
            link.send(&Packet::NlistRes {
                next: None,
                push: true,
                records: page.clone(),
            })
            .unwrap();
            sent += page.len();
        }
        // Once the node stops reading, writes fail; what it said before it
        // closed is still to be read.
        let out = link.output().to_vec();
        if !out.is_empty() && !write_failed {
            write_failed = s.write_all(&out).is_err();
        }
        link.advance(out.len());
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => link.input(std::time::Instant::now(), &buf[..n], &mut |_| {}),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
        while let Some(e) = link.poll_event() {
            if let LinkEvent::Closed {
                reason,
                text,
                by_peer,
            } = e
            {
                closed = Some((reason, text, by_peer));
            }
        }
    }
    let (reason, text, by_peer) = closed.expect("the node closed the flooding link");
    assert_eq!((reason, by_peer), (Reason::Busy, true), "{text}");
    assert!(text.contains("record flood"), "{text}");
    assert!(sent >= 10_000, "a table's worth was taken first ({sent} sent)");
    let st = ask(&h[0], &["status"]);
    assert_eq!(
        st["known_nodes"], 2,
        "itself and the flooder's own (real) record, nothing forged: {st}"
    );
    assert!(
        st["counters"]["records_refused"].as_u64().unwrap() >= 10_000,
        "{st}"
    );
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn send_to_puts_a_folder_in_a_paired_nodes_inbox_and_an_unpaired_one_is_refused() {
    let (d, h) = homes(3);
    let ids: Vec<String> = h.iter().map(|p| id_of(p)).collect();
    let ns = mesh_ns("m8", 3);
    let inbox = d.path().join("inbox");
    let _a = node(&ns, &h[0], 1, None, 10);
    let _b = node_with(&ns, &h[1], 2, Some(1), 10, &["--inbox", inbox.to_str().unwrap()]);
    let _c = node(&ns, &h[2], 3, Some(1), 10);
    eventually(Duration::from_secs(10), "A and C see B", || {
        online(&h[0], &ids[1]) && online(&h[2], &ids[1])
    });
    pair_over_mesh(&h[1], &h[0], &ids[1], &ids[0], "office");

    let tree = d.path().join("photos");
    for (i, n) in [0usize, 1, 70_000, 1_500_000].iter().enumerate() {
        let p = tree.join(format!("d{}/f{i}", i % 2));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, pseudo_random(*n, &format!("f{i}"))).unwrap();
    }
    let mut s = ns.burrow(&h[0]);
    s.args(["send", "--to", "office"]).arg(&tree);
    let out = s.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for (i, n) in [0usize, 1, 70_000, 1_500_000].iter().enumerate() {
        let rel = format!("photos/d{}/f{i}", i % 2);
        assert_eq!(
            std::fs::read(inbox.join(&rel)).unwrap(),
            pseudo_random(*n, &format!("f{i}")),
            "{rel}"
        );
    }
    // C pins B (a copy of A's book) but B never paired with C: refused.
    copy_book(&h[0], &h[2]);
    let mut s = ns.burrow(&h[2]);
    s.args(["send", "--to", "office", "--text", "hello"]);
    let out = s.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("paired nodes only"), "{err}");
    // A name nobody paired: a clear error before any connection.
    let out = burrow(&h[0])
        .args(["send", "--to", "nobody", "--text", "x"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn metrics_count_links_and_handshakes() {
    let (_d, h) = homes(2);
    let ids: Vec<String> = h.iter().map(|p| id_of(p)).collect();
    let ns = mesh_ns("m9", 2);
    let _a = node_with(&ns, &h[0], 1, None, 10, &["--metrics", "10.92.0.1:9100"]);
    let _b = node(&ns, &h[1], 2, Some(1), 10);
    eventually(Duration::from_secs(10), "A sees B", || online(&h[0], &ids[1]));
    let get = |path: &str| {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.name,
                "curl",
                "-s",
                "-w",
                "\n%{http_code}",
                "--max-time",
                "5",
            ])
            .arg(format!("http://10.92.0.1:9100{path}"))
            .output()
            .unwrap()
    };
    let out = String::from_utf8(get("/metrics").stdout).unwrap();
    assert!(out.ends_with("\n200"), "{out}");
    for line in [
        "burrow_mesh_links_up 1",
        "burrow_mesh_known_nodes 2",
        "burrow_mesh_handshakes_total 1",
    ] {
        assert!(out.lines().any(|l| l == line), "{line} in:\n{out}");
    }
    assert!(out.contains("# TYPE burrow_mesh_authentication_failures_total counter"));
    assert!(
        String::from_utf8(get("/other").stdout)
            .unwrap()
            .ends_with("\n404")
    );
    // A second node on the same data folder is refused, the first keeps serving.
    let mut again = ns.burrow(&h[0]);
    again.args(["node", "--listen", "10.92.0.1:9011"]);
    let out = again.output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already runs"),
        "{out:?}"
    );
    assert!(online(&h[0], &ids[1]));
    // Asking where no node runs: a clear error, exit 2.
    let (_e, lone) = homes(1);
    let out = burrow(&lone[0]).args(["node", "status"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no node is running here"),
        "{out:?}"
    );
}

#[test]
fn a_node_nobody_can_dial_is_linked_and_sent_to_through_its_relay_mailbox() {
    let (d, h) = homes(4);
    let ids: Vec<String> = h.iter().map(|p| id_of(p)).collect();
    let ns = mesh_ns("m11", 4);
    let mut r = ns.burrow(&h[3]);
    r.args(["relay", "--listen", "10.92.0.4:7000"]);
    let relay = spawn(r);
    relay.line("burrow relay listening on");
    let inbox = d.path().join("inbox");
    let _a = node(&ns, &h[0], 1, None, 10);
    // B advertises an address no one can reach (no route to it): behind NAT.
    let _b = node_with(
        &ns,
        &h[1],
        2,
        Some(1),
        10,
        &[
            "--advertise",
            "10.92.9.9:9010",
            "--relay",
            "10.92.0.4:7000",
            "--inbox",
            inbox.to_str().unwrap(),
        ],
    );
    eventually(Duration::from_secs(10), "B's mailbox is up", || {
        ask(&h[1], &["status"])["relay"]["state"] == "up"
    });
    // C learns B from A and can only reach it through the relay (C is
    // behind a NAT of its own, without a relay: B cannot dial it either).
    let _c = node_with(&ns, &h[2], 3, Some(1), 10, &["--advertise", "10.92.9.8:9010"]);
    eventually(Duration::from_secs(15), "C links with B", || {
        online(&h[2], &ids[1])
    });
    let st = ask(&h[2], &["status"]);
    let to_b = st["links"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["node"] == ids[1].as_str() && l["state"] == "up")
        .cloned()
        .unwrap_or_else(|| panic!("no link to B: {st}"));
    assert_eq!(to_b["via"], "relay", "{to_b}");
    assert_eq!(to_b["addr"], "10.92.0.4:7000", "{to_b}");
    let b = ask(&h[2], &["nodes"])["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == ids[1].as_str())
        .cloned()
        .unwrap();
    assert!(
        b["relay"].as_str().unwrap().starts_with("10.92.0.4:7000#"),
        "B's record names its relay with its fingerprint: {b}"
    );
    assert!(
        b["flags"].as_array().unwrap().iter().any(|f| f == "behind-nat"),
        "{b}"
    );
    // Pairing runs over the relayed link; files then go through the relay too.
    pair_over_mesh(&h[1], &h[2], &ids[1], &ids[2], "natbox");
    let mut s = ns.burrow(&h[2]);
    s.args(["send", "--to", "natbox", "--text", "through the relay"]);
    let out = s.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eventually(Duration::from_secs(5), "the text is in B's inbox", || {
        std::fs::read_dir(&inbox).is_ok_and(|d| {
            d.flatten()
                .any(|e| std::fs::read(e.path()).is_ok_and(|b| b == b"through the relay"))
        })
    });
    // `burrow node status` says it in words.
    let out = burrow(&h[1]).args(["node", "status"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("reachable through the relay 10.92.0.4:7000 (mailbox up)"),
        "{text}"
    );
}
