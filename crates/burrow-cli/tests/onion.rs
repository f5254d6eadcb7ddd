//! Onion circuits (seed 004) with real processes, each "machine" in a
//! network namespace of this test's own on one bridge, each in its own
//! /16 (paths never put two hops in one): three directory authorities,
//! nodes (the last ones exits), a client and a web server. Nothing leaves
//! the namespaces.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// One machine: its namespace, address and HOME.
struct Machine {
    ns: Netns,
    ip: String,
    home: PathBuf,
}

/// The network: a hub namespace with a bridge, and machines on it.
/// Processes are dropped before the namespaces (declared after them in
/// the tests).
struct Net {
    machines: Vec<Machine>,
    hub: Netns,
    _dir: tempfile::TempDir,
    /// /etc/netns folders this test made.
    etc: Vec<PathBuf>,
}

impl Drop for Net {
    fn drop(&mut self) {
        for d in &self.etc {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

impl Net {
    fn new(tag: &str) -> Self {
        let hub = Netns::new(&format!("{tag}h"));
        hub.ip(&["link", "add", "br0", "type", "bridge"]);
        hub.ip(&["link", "set", "br0", "up"]);
        Self {
            machines: Vec::new(),
            hub,
            _dir: tempfile::tempdir().unwrap(),
            etc: Vec::new(),
        }
    }

    /// A machine at `10.<net>.0.1/8`.
    fn add(&mut self, tag: &str, net: u8) -> usize {
        let ns = Netns::new(tag);
        let ip = format!("10.{net}.0.1");
        let (inner, outer) = (
            format!("e{}", self.machines.len()),
            format!("{}{tag}", self.hub.name),
        );
        let outer: String = outer
            .chars()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        run(
            "ip",
            &[
                "link",
                "add",
                &inner,
                "netns",
                &ns.name,
                "type",
                "veth",
                "peer",
                "name",
                &outer,
                "netns",
                &self.hub.name,
            ],
        );
        ns.ip(&["addr", "add", &format!("{ip}/8"), "dev", &inner]);
        ns.ip(&["link", "set", &inner, "up"]);
        self.hub.ip(&["link", "set", &outer, "master", "br0", "up"]);
        let home = self._dir.path().join(tag);
        std::fs::create_dir_all(&home).unwrap();
        self.machines.push(Machine { ns, ip, home });
        self.machines.len() - 1
    }

    fn m(&self, i: usize) -> &Machine {
        &self.machines[i]
    }
}

fn fingerprint(home: &Path) -> String {
    let out = burrow(home).args(["id", "--json"]).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["fingerprint"].as_str().unwrap().to_owned()
}

/// A static web server in `m`'s namespace on port 8000 (Python's
/// http.server without its DNS lookup of its own address).
fn web(m: &Machine, root: &Path) -> Proc {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &m.ns.name, "python3", "-c"])
        .arg(
            "import functools, http.server, socketserver, sys\n\
             socketserver.ThreadingTCPServer.allow_reuse_address = True\n\
             h = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[2])\n\
             socketserver.ThreadingTCPServer((sys.argv[1], 8000), h).serve_forever()",
        )
        .arg(&m.ip)
        .arg(root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    spawn(c)
}

/// Captures every frame on `m`'s interface into `out` until killed
/// (AF_PACKET: no tcpdump on these machines).
fn sniff(m: &Machine, out: &Path) -> Proc {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &m.ns.name, "python3", "-c"])
        .arg(
            "import socket, sys\n\
             s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(3))\n\
             f = open(sys.argv[1], 'wb', buffering=0)\n\
             sys.stderr.write('sniffing\\n'); sys.stderr.flush()\n\
             while True:\n    d = s.recv(65535)\n    f.write(len(d).to_bytes(4, 'big') + d)",
        )
        .arg(out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let p = spawn(c);
    p.line("sniffing");
    p
}

/// The frames a [`sniff`] wrote.
fn frames(path: &Path) -> Vec<Vec<u8>> {
    let b = std::fs::read(path).unwrap_or_default();
    let mut out = Vec::new();
    let mut i = 0;
    while i + 4 <= b.len() {
        let n = u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]) as usize;
        if i + 4 + n > b.len() {
            break;
        }
        out.push(b[i + 4..i + 4 + n].to_vec());
        i += 4 + n;
    }
    out
}

/// IPv4 peers of the frames (source and destination, ARP excluded).
fn ip_peers(frames: &[Vec<u8>]) -> HashSet<String> {
    let mut out = HashSet::new();
    for f in frames {
        if f.len() >= 34 && f[12] == 0x08 && f[13] == 0x00 {
            out.insert(format!("{}.{}.{}.{}", f[26], f[27], f[28], f[29]));
            out.insert(format!("{}.{}.{}.{}", f[30], f[31], f[32], f[33]));
        }
    }
    out
}

struct Onion {
    net: Net,
    dirs: String,
    auths: Vec<usize>,
    nodes: Vec<usize>,
    client: usize,
    web: usize,
}

/// `burrow node` on `m` with these authorities, linking to `boot`'s node;
/// an exit may reach the web server.
fn node(m: &Machine, name: &str, dirs: &str, boot: Option<&Machine>, exit: bool) -> Command {
    let mut c = m.ns.burrow(&m.home);
    c.args([
        "node",
        "--listen",
        &format!("{}:9010", m.ip),
        "--name",
        name,
        "--directory",
        dirs,
    ]);
    if let Some(b) = boot {
        c.args(["--bootstrap", &format!("{}:9010", b.ip)]);
    }
    if exit {
        c.args(["--exit", "--allow", "10.60.0.0/16"]);
    }
    c
}

/// `a` authorities, `n` nodes (the last `exits` of them exits that may
/// reach the web server), a client and a web server; every process is
/// pushed to `procs`. `env` goes to the nodes (the tamper hook).
fn onion(
    tag: &str,
    hosts: Option<&str>,
    a: usize,
    n: usize,
    exits: usize,
    node_env: &[(usize, &str, &str)],
    procs: &mut Vec<Proc>,
) -> Onion {
    let mut net = Net::new(tag);
    let auths: Vec<usize> = (0..a)
        .map(|i| net.add(&format!("{tag}a{i}"), 1 + i as u8))
        .collect();
    let nodes: Vec<usize> = (0..n)
        .map(|i| net.add(&format!("{tag}n{i}"), 11 + i as u8))
        .collect();
    let client = net.add(&format!("{tag}c"), 50);
    let web_m = net.add(&format!("{tag}w"), 60);
    // Names the exits resolve: /etc/netns/NS/hosts is what `ip netns exec`
    // shows a process as /etc/hosts, read when it starts (so: before).
    if let Some(h) = hosts {
        for &i in &nodes {
            let d = Path::new("/etc/netns").join(&net.m(i).ns.name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("hosts"), h).unwrap();
            net.etc.push(d);
        }
    }
    let fps: Vec<String> = auths.iter().map(|&i| fingerprint(&net.m(i).home)).collect();
    let dirs: Vec<String> = auths
        .iter()
        .zip(&fps)
        .map(|(&i, fp)| format!("{fp}@{}:9030", net.m(i).ip))
        .collect();
    for (k, &i) in auths.iter().enumerate() {
        let m = net.m(i);
        let mut c = m.ns.burrow(&m.home);
        c.args(["directory", "--listen", &format!("{}:9030", m.ip)]);
        for (j, d) in dirs.iter().enumerate() {
            if j != k {
                c.args(["--peer", d]);
            }
        }
        procs.push(spawn(c));
    }
    let all = dirs.join(",");
    for (k, &i) in nodes.iter().enumerate() {
        let boot = (k > 0).then(|| net.m(nodes[0]));
        let mut c = node(net.m(i), &format!("n{k}"), &all, boot, k >= n - exits);
        for (who, key, value) in node_env {
            if *who == k {
                c.env(key, value);
            }
        }
        procs.push(spawn(c));
    }
    Onion {
        net,
        dirs: all,
        auths,
        nodes,
        client,
        web: web_m,
    }
}

impl Onion {
    fn client(&self) -> &Machine {
        self.net.m(self.client)
    }

    /// `burrow fetch URL --json -o OUT` on the client: exit code, report, stderr.
    fn fetch(&self, url: &str, out: &Path) -> (i32, Value, String) {
        let c = self.client();
        let o =
            c.ns.burrow(&c.home)
                .args([
                    "fetch",
                    url,
                    "--hops",
                    "3",
                    "--directory",
                    &self.dirs,
                    "--json",
                    "-o",
                ])
                .arg(out)
                .output()
                .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        let report = err
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str(l).ok())
            .unwrap_or(Value::Null);
        (o.status.code().unwrap_or(-1), report, err)
    }

    /// Fetches until it works (the network is coming up), for at most `limit`.
    fn fetch_until_ok(&self, url: &str, out: &Path, limit: Duration) -> (Value, Duration) {
        let t0 = Instant::now();
        loop {
            let (code, report, err) = self.fetch(url, out);
            if code == 0 {
                return (report, t0.elapsed());
            }
            assert!(t0.elapsed() < limit, "no fetch within {limit:?}: {err}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The node machine whose fingerprint is `fp`.
    fn node_by_fp(&self, fp: &str) -> usize {
        *self
            .nodes
            .iter()
            .find(|&&i| fingerprint(&self.net.m(i).home) == fp)
            .unwrap_or_else(|| panic!("no node {fp}"))
    }
}

/// The seed's flow end to end, and what each hop sees: `burrow fetch`
/// through 3 hops returns the page byte-identical; a 64 MiB download over
/// `burrow proxy --hops 3` too; the middle's wire carries no plaintext and
/// no destination name; the client's namespace talks only to its entry
/// and the authorities; the exit never hears of the client's address;
/// the exit refuses loopback and port 25; a client pinning mostly
/// unknown authorities refuses to go on.
#[test]
fn three_hops_carry_a_page_and_64_mib_and_no_hop_learns_more_than_its_neighbours() {
    let site = tempfile::tempdir().unwrap();
    let marker = "burrow-plaintext-marker-4f1c";
    let page = format!("<html>{marker} {}</html>", "x".repeat(200_000));
    std::fs::write(site.path().join("page.html"), &page).unwrap();
    std::fs::write(site.path().join("big.bin"), pseudo_random(64 << 20, "onion-big")).unwrap();
    let mut procs = Vec::new();
    let name = "web.burrow.test";
    let o = onion(
        "o1",
        Some(&format!("127.0.0.1 localhost\n10.60.0.1 {name}\n")),
        3,
        7,
        3,
        &[],
        &mut procs,
    );
    procs.push(web(o.net.m(o.web), site.path()));
    let out = o.client().home.join("page.html");
    let url = format!("http://{name}:8000/page.html");
    let (report, took) = o.fetch_until_ok(&url, &out, Duration::from_secs(30));
    eprintln!("first fetch after {took:?}: {report}");
    assert_eq!(std::fs::read(&out).unwrap(), page.as_bytes(), "byte-identical");
    let path: Vec<String> = report["path"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(path.len(), 3);
    assert_eq!(
        path.iter().collect::<HashSet<_>>().len(),
        3,
        "three distinct nodes"
    );

    // Capture the middle, the exit and the client while fetching again
    // over a known circuit... each fetch is a new client with its own
    // circuit: sniff every node and the client, then read the path.
    let caps = tempfile::tempdir().unwrap();
    let mut sniffers = Vec::new();
    for &i in o.nodes.iter().chain([o.client].iter()) {
        sniffers.push(sniff(o.net.m(i), &caps.path().join(format!("m{i}"))));
    }
    // (A fresh client may meet a node a list behind; it retries.)
    let (report, _) = o.fetch_until_ok(&url, &out, Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(200));
    drop(sniffers);
    let path: Vec<String> = report["path"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let (entry, middle, exit) = (
        o.node_by_fp(&path[0]),
        o.node_by_fp(&path[1]),
        o.node_by_fp(&path[2]),
    );
    let seen = frames(&caps.path().join(format!("m{middle}")));
    assert!(!seen.is_empty(), "the middle's capture is empty");
    let wire: Vec<u8> = seen.concat();
    assert!(
        !wire.windows(marker.len()).any(|w| w == marker.as_bytes()),
        "plaintext on the middle's wire"
    );
    assert!(
        !wire.windows(name.len()).any(|w| w == name.as_bytes()),
        "the destination's name on the middle's wire"
    );
    let client_peers = ip_peers(&frames(&caps.path().join(format!("m{}", o.client))));
    let mut allowed: HashSet<String> = o.auths.iter().map(|&i| o.net.m(i).ip.clone()).collect();
    allowed.insert(o.net.m(entry).ip.clone());
    allowed.insert(o.client().ip.clone());
    assert!(
        client_peers.is_subset(&allowed),
        "the client talked to {:?} beyond its entry and the authorities",
        client_peers.difference(&allowed).collect::<Vec<_>>()
    );
    let exit_peers = ip_peers(&frames(&caps.path().join(format!("m{exit}"))));
    assert!(
        !exit_peers.contains(&o.client().ip),
        "the exit saw the client's address"
    );
    let middle_peers = ip_peers(&frames(&caps.path().join(format!("m{middle}"))));
    assert!(
        !middle_peers.contains(&o.client().ip),
        "the middle saw the client's address"
    );

    // 64 MiB over `burrow proxy --hops 3` and curl.
    let c = o.client();
    let mut px = c.ns.burrow(&c.home);
    px.args([
        "proxy",
        "--hops",
        "3",
        "--directory",
        &o.dirs,
        "--listen",
        "127.0.0.1:1080",
    ]);
    let px = spawn(px);
    px.line("SOCKS5");
    let big = c.home.join("big.bin");
    let t0 = Instant::now();
    let curl = Command::new("ip")
        .args([
            "netns",
            "exec",
            &c.ns.name,
            "curl",
            "-sS",
            "--max-time",
            "60",
            "-x",
            "socks5h://127.0.0.1:1080",
            "-o",
        ])
        .arg(&big)
        .arg(format!("http://{name}:8000/big.bin"))
        .output()
        .unwrap();
    assert!(
        curl.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&curl.stderr)
    );
    eprintln!("64 MiB through 3 hops in {:?}", t0.elapsed());
    assert_eq!(
        hash(&big),
        hash(&site.path().join("big.bin")),
        "64 MiB byte-identical"
    );

    // kill -9 the middle of the proxy's circuit: a new stream works
    // again within 1 s.
    let ready = px.line("circuit ready:");
    let hops: Vec<&str> = ready.split(" (").next().unwrap().split(" > ").collect();
    let victim = o.node_by_fp(hops[1]);
    let victim_pid = procs[o.auths.len() + o.nodes.iter().position(|&i| i == victim).unwrap()]
        .child
        .id();
    run("kill", &["-9", &victim_pid.to_string()]);
    let t0 = Instant::now();
    loop {
        let r = Command::new("ip")
            .args([
                "netns",
                "exec",
                &c.ns.name,
                "curl",
                "-sS",
                "--max-time",
                "2",
                "-x",
                "socks5h://127.0.0.1:1080",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .arg(format!("http://{name}:8000/page.html"))
            .output()
            .unwrap();
        if String::from_utf8_lossy(&r.stdout) == "200" {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "no working stream 1 s after the middle died"
        );
    }
    eprintln!(
        "a stream worked again {:?} after kill -9 of the middle",
        t0.elapsed()
    );

    // The exit's egress policy: loopback (its own) and port 25 refused.
    let (code, _, err) = o.fetch("http://127.0.0.1:8000/page.html", &out);
    assert_ne!(code, 0);
    assert!(
        err.contains("loopback") || err.contains("not allowed") || err.contains("refus"),
        "{err}"
    );
    let (code, _, err) = o.fetch("http://10.60.0.1:25/", &out);
    assert_ne!(code, 0);
    assert!(err.contains("port 25") || err.contains("no exit"), "{err}");
    // The exits' logs never name the client.
    drop(px);
    for p in procs.drain(..) {
        let (_, log) = p.finish_after_kill();
        assert!(
            !log.contains(&o.client().ip),
            "a log names the client's address: {log}"
        );
    }
    // A client that pins two unknown authorities of three refuses to start.
    let fake = format!(
        "{},aaaa-aaaa-aaaa-aaaa-aaaa-aaaa@10.2.0.1:9031,bbbb-bbbb-bbbb-bbbb-bbbb-bbbb@10.3.0.1:9031",
        o.dirs.split(',').next().unwrap()
    );
    let r =
        c.ns.burrow(&c.home)
            .args(["fetch", "http://10.60.0.1:8000/page.html", "--directory", &fake])
            .output()
            .unwrap();
    assert!(!r.status.success());
}

/// A hostile hop (the test hook flips a bit in, replays, or reorders one
/// RELAY cell it forwards): the circuit breaks with an error, and no
/// altered byte reaches the application.
#[test]
fn a_tampering_hop_breaks_the_circuit_and_nothing_altered_arrives() {
    let site = tempfile::tempdir().unwrap();
    let body = pseudo_random(300_000, "tamper-page");
    std::fs::write(site.path().join("p.bin"), &body).unwrap();
    for (k, mode) in ["flip:6", "replay:6", "reorder:6"].into_iter().enumerate() {
        let mut procs = Vec::new();
        // Three nodes: the exit and two that both tamper, so whichever is
        // the entry or the middle does.
        let o = onion(
            &format!("t{k}"),
            None,
            1,
            3,
            1,
            &[(0, "BURROW_TEST_TAMPER", mode), (1, "BURROW_TEST_TAMPER", mode)],
            &mut procs,
        );
        procs.push(web(o.net.m(o.web), site.path()));
        let out = o.client().home.join("p.bin");
        let t0 = Instant::now();
        let err = loop {
            let (code, _, err) = o.fetch("http://10.60.0.1:8000/p.bin", &out);
            assert_ne!(code, 0, "{mode}: a tampered circuit delivered the page");
            if err.contains("altered") || err.contains("closed") {
                break err;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "{mode}: {err}");
            std::thread::sleep(Duration::from_millis(100));
        };
        eprintln!("{mode}: {err}");
        let got = std::fs::read(&out).unwrap_or_default();
        assert!(body.starts_with(&got), "{mode}: altered bytes reached the file");
    }
}

/// One authority of three dead from the start: the other two still take
/// registrations and sign a list clients accept (two of three is more
/// than half), and a page comes through.
#[test]
fn two_authorities_of_three_are_enough() {
    let site = tempfile::tempdir().unwrap();
    std::fs::write(site.path().join("p.html"), b"two of three").unwrap();
    let mut procs = Vec::new();
    let o = onion("m2", None, 3, 3, 1, &[], &mut procs);
    let _ = procs[2].child.kill();
    procs.push(web(o.net.m(o.web), site.path()));
    let out = o.client().home.join("p.html");
    let (_, took) = o.fetch_until_ok("http://10.60.0.1:8000/p.html", &out, Duration::from_secs(30));
    eprintln!("with one authority dead: first page after {took:?}");
    assert_eq!(std::fs::read(&out).unwrap(), b"two of three");
}

/// `curl` in `m`'s namespace: the HTTP status of `url` ("000" when it
/// did not answer).
fn http_status(m: &Machine, url: &str) -> String {
    let o = Command::new("ip")
        .args([
            "netns",
            "exec",
            &m.ns.name,
            "curl",
            "-s",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            url,
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

/// One rogue authority cannot add a node: a node (an exit, so paths would
/// pick it often) registers with the third authority only. That authority
/// takes it, checks it, and lists it in its vote; the other two never
/// hear of it. The list every authority signs names a node only when more
/// than half of the authorities vote for it, so clients, which accept
/// only a list a majority signed, never route through it.
#[test]
fn one_rogue_authority_cannot_add_a_node() {
    let site = tempfile::tempdir().unwrap();
    std::fs::write(site.path().join("p.html"), b"honest list").unwrap();
    let mut procs = Vec::new();
    let mut o = onion("ra", None, 3, 3, 1, &[], &mut procs);
    procs.push(web(o.net.m(o.web), site.path()));
    // The extra node, with the third authority only.
    let x = o.net.add("rax", 40);
    let rogue = o.dirs.split(',').nth(2).unwrap().to_owned();
    let rogue_addr = rogue.split('@').nth(1).unwrap().to_owned();
    let honest_addr = o
        .dirs
        .split('@')
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .to_owned();
    procs.push(spawn(node(
        o.net.m(x),
        "rogue-listed",
        &rogue,
        Some(o.net.m(o.nodes[0])),
        true,
    )));
    let x_fp = fingerprint(&o.net.m(x).home);
    let out = o.client().home.join("p.html");
    o.fetch_until_ok("http://10.60.0.1:8000/p.html", &out, Duration::from_secs(30));
    // The rogue authority has the node; the honest ones do not.
    let t0 = Instant::now();
    while http_status(o.client(), &format!("http://{rogue_addr}/onion/node/{x_fp}")) != "200" {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the node never registered with its one authority"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        http_status(o.client(), &format!("http://{honest_addr}/onion/node/{x_fp}")),
        "404"
    );
    // Time for the rogue's vote with the node in it to reach the others.
    std::thread::sleep(Duration::from_secs(2));
    let mut exits = HashSet::new();
    for _ in 0..12 {
        let (report, _) = o.fetch_until_ok("http://10.60.0.1:8000/p.html", &out, Duration::from_secs(10));
        let path: Vec<&str> = report["path"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(
            !path.contains(&x_fp.as_str()),
            "a circuit went through the node only the rogue authority listed: {path:?}"
        );
        exits.insert(path[2].to_owned());
        assert_eq!(std::fs::read(&out).unwrap(), b"honest list");
    }
    eprintln!("12 fetches, exits used: {exits:?}; {x_fp} never in a path");
}
