//! Paths, tested where the addresses burrow advertises are only the test's
//! own: every process runs inside network namespaces this test creates
//! (`ip netns` + veth pairs), never on the host's interfaces.
//!
//! ```text
//!   sender (A) ── 10.91.1.0/24 ── relay (R) ── 10.91.2.0/24 ── receiver (B)
//!        └──────────────── 10.91.3.0/24 (only in the "direct" layout) ──┘
//! ```

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

/// Sender, relay and receiver namespaces; the A–B link only if `direct`.
struct Lan {
    a: Netns,
    r: Netns,
    b: Netns,
}

fn layout(tag: &str, direct: bool) -> Lan {
    let (a, r, b) = (
        Netns::new(&format!("{tag}a")),
        Netns::new(&format!("{tag}r")),
        Netns::new(&format!("{tag}b")),
    );
    veth(&a, "10.91.1.1/24", &r, "10.91.1.2/24");
    veth(&b, "10.91.2.1/24", &r, "10.91.2.2/24");
    if direct {
        veth(&a, "10.91.3.1/24", &b, "10.91.3.2/24");
    }
    Lan { a, r, b }
}

/// Sends `file` from A to B through the relay in R; returns the
/// `connected` paths the sender and receiver reported.
fn transfer(lan: &Lan, home: &Path, file: &Path, dst: &Path, extra: &[&str]) -> (String, String) {
    let mut c = lan.r.burrow(home);
    c.args(["relay", "--listen", "0.0.0.0:9009"]);
    let relay = spawn(c);
    relay.line("burrow relay listening on");

    let mut s = lan.a.burrow(home);
    s.args(["send", "--json", "--relay", "10.91.1.2:9009"])
        .args(extra)
        .arg(file);
    let sender = spawn_lines(s);
    let code = sender.event("code", |_| true)["code"]
        .as_str()
        .unwrap()
        .to_owned();

    let mut r = lan.b.burrow(home);
    r.args(["receive", "--json", "--yes", "--relay", "10.91.2.2:9009", "--out"])
        .arg(dst)
        .args(extra)
        .arg(&code);
    let receiver = spawn_lines(r);
    let rpath = receiver.event("connected", |_| true)["path"]
        .as_str()
        .unwrap()
        .to_owned();
    let spath = sender.event("connected", |_| true)["path"]
        .as_str()
        .unwrap()
        .to_owned();
    receiver.event("done", |_| true);
    sender.event("done", |_| true);
    let (rc, err) = receiver.finish();
    assert_eq!(rc, 0, "receiver: {err}");
    let (rc, err) = sender.finish();
    assert_eq!(rc, 0, "sender: {err}");
    assert_eq!(hash(&dst.join(file.file_name().unwrap())), hash(file));
    (spath, rpath)
}

fn data_file(dir: &Path, name: &str, len: usize) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, pseudo_random(len, name)).unwrap();
    p
}

#[test]
fn the_direct_path_wins_when_it_exists_and_relay_only_forces_the_relay() {
    let lan = layout("d", true);
    let home = tempfile::tempdir().unwrap();
    let file = data_file(home.path(), "direct.bin", 4 << 20);

    let dst = tempfile::tempdir().unwrap();
    let paths = transfer(&lan, home.path(), &file, dst.path(), &[]);
    assert_eq!(paths, ("direct".into(), "direct".into()));

    let dst = tempfile::tempdir().unwrap();
    let paths = transfer(&lan, home.path(), &file, dst.path(), &["--relay-only"]);
    assert_eq!(paths, ("relay".into(), "relay".into()));

    // A small offer skips the race: the relay carries it at once.
    let small = data_file(home.path(), "small.bin", 4 << 10);
    let dst = tempfile::tempdir().unwrap();
    let paths = transfer(&lan, home.path(), &small, dst.path(), &[]);
    assert_eq!(paths, ("relay".into(), "relay".into()));
}

#[test]
fn the_relay_carries_the_transfer_when_no_direct_path_exists() {
    // Both sides advertise addresses, but neither can reach the other's.
    let lan = layout("n", false);
    let home = tempfile::tempdir().unwrap();
    let file = data_file(home.path(), "relayed.bin", 4 << 20);
    let dst = tempfile::tempdir().unwrap();
    let paths = transfer(&lan, home.path(), &file, dst.path(), &[]);
    assert_eq!(paths, ("relay".into(), "relay".into()));
}

#[test]
fn a_relay_restart_mid_transfer_is_survived_by_reconnecting() {
    // One namespace, its loopback shaped so that the transfer takes a while.
    let ns = Netns::new("rc");
    ns.ip(&["link", "set", "lo", "mtu", "1500"]);
    ns.exec(
        "tc",
        &[
            "qdisc", "add", "dev", "lo", "root", "tbf", "rate", "300mbit", "burst", "64kb", "latency",
            "200ms",
        ],
    );
    let home = tempfile::tempdir().unwrap();
    let size = 24 << 20;
    let file = data_file(home.path(), "big.bin", size);
    let start_relay = || {
        let mut c = ns.burrow(home.path());
        c.args(["relay", "--listen", "127.0.0.1:9009"]);
        let p = spawn(c);
        p.line("burrow relay listening on");
        p
    };
    let relay = start_relay();
    let mut s = ns.burrow(home.path());
    s.args(["send", "--json", "--relay", "127.0.0.1:9009"]).arg(&file);
    let sender = spawn_lines(s);
    let code = sender.event("code", |_| true)["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let dst = tempfile::tempdir().unwrap();
    let mut r = ns.burrow(home.path());
    r.args(["receive", "--json", "--yes", "--relay", "127.0.0.1:9009", "--out"])
        .arg(dst.path())
        .arg(&code);
    let receiver = spawn_lines(r);
    receiver.event("progress", |v| {
        v["done"].as_u64().unwrap_or(0) > (size as u64) / 5
    });
    drop(relay); // SIGKILL: every connection through it breaks at once
    std::thread::sleep(Duration::from_millis(300));
    let _relay = start_relay();
    let why = receiver.event("reconnecting", |_| true);
    assert!(why["reason"].as_str().unwrap().contains("lost"), "{why}");
    sender.event("reconnecting", |_| true);
    let again = receiver.event("connected", |_| true);
    assert_eq!(again["path"], "relay");
    let done = receiver.event("done", |_| true);
    // Verified bytes were not sent again.
    assert_eq!(done["bytes"].as_u64(), Some(size as u64), "{done}");
    let (rc, err) = receiver.finish();
    assert_eq!(rc, 0, "receiver: {err}");
    let (rc, err) = sender.finish();
    assert_eq!(rc, 0, "sender: {err}");
    assert_eq!(hash(&dst.path().join("big.bin")), hash(&file));
}

/// Sends with no relay configured from `a`, receives with none in `b`.
fn lan_transfer(a: &Netns, b: &Netns, home: &Path, file: &Path) -> serde_json::Value {
    let mut s = a.burrow(home);
    s.args(["send", "--json"]).arg(file);
    let sender = spawn_lines(s);
    let port = sender.event("local_relay", |_| true)["port"].as_u64().unwrap();
    let code = sender.event("code", |_| true)["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let dst = tempfile::tempdir().unwrap();
    let mut r = b.burrow(home);
    r.args(["receive", "--json", "--yes", "--out"])
        .arg(dst.path())
        .arg(&code);
    let receiver = spawn_lines(r);
    let found = receiver.event("found", |_| true);
    assert!(
        found["relay"].as_str().unwrap().ends_with(&format!(":{port}")),
        "{found}"
    );
    let connected = receiver.event("connected", |_| true);
    receiver.event("done", |_| true);
    let (rc, err) = receiver.finish();
    assert_eq!(rc, 0, "receiver: {err}");
    let (rc, err) = sender.finish();
    assert_eq!(rc, 0, "sender: {err}");
    assert_eq!(hash(&dst.path().join(file.file_name().unwrap())), hash(file));
    connected
}

#[test]
fn with_no_relay_configured_the_sender_serves_one_and_the_lan_finds_it() {
    let (a, b) = (Netns::new("la"), Netns::new("lb"));
    veth(&a, "10.92.0.1/24", &b, "10.92.0.2/24");
    let home = tempfile::tempdir().unwrap();
    let file = data_file(home.path(), "lan.bin", 2 << 20);
    // Across the LAN: found by multicast; then the direct path wins.
    let c = lan_transfer(&a, &b, home.path(), &file);
    assert_eq!(c["path"], "direct", "{c}");
    assert_eq!(
        c["relay"],
        "10.92.0.1:".to_owned() + c["relay"].as_str().unwrap().rsplit(':').next().unwrap()
    );
    // On one machine with nothing but loopback: found through 127.0.0.1.
    let solo = Netns::new("ls");
    let c = lan_transfer(&solo, &solo, home.path(), &file);
    assert_eq!(c["path"], "relay", "{c}");
}

#[test]
fn with_no_relay_and_no_sender_the_receiver_says_so() {
    let ns = Netns::new("ln");
    let home = tempfile::tempdir().unwrap();
    let mut r = ns.burrow(home.path());
    r.args(["receive", "--yes", "--lan-wait", "2", "4242-abandon-ability-able"]);
    let started = std::time::Instant::now();
    let (rc, err) = spawn(r).finish();
    assert_eq!(rc, 4, "{err}");
    assert!(
        err.contains("no sender for channel 4242 announced itself"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
}

/// Issue 14, 11: an address the host gains after the exit started is the
/// exit's own too, and refused. In a namespace of the test's own: the
/// relay, exit, proxy, a web server on the new address, and curl.
#[test]
fn an_address_added_after_the_exit_started_is_refused() {
    let (ha, hb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Paired on the host's loopback first (the keys do not care where).
    {
        let (_relay, addr) = relay(ha.path());
        let mut a = burrow(ha.path());
        a.args(["pair", "--relay", &addr, "--name", "laptop"]);
        let a = spawn(a);
        let code = a.line("code:");
        let out = burrow(hb.path())
            .args(["pair", "--relay", &addr, &code, "--name", "home"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(a.finish().0, 0);
    }
    let ns = Netns::new("ea");
    let mut c = ns.burrow(ha.path());
    c.args(["relay", "--listen", "127.0.0.1:9009", "--key"])
        .arg(ha.path().join("relay.key"));
    let relay = spawn(c);
    relay.line("burrow relay listening on");
    let mut e = ns.burrow(ha.path());
    e.args(["exit", "--relay", "127.0.0.1:9009"]);
    let exit = spawn(e);
    exit.line("exit ready");
    let mut p = ns.burrow(hb.path());
    p.args([
        "proxy",
        "home",
        "--relay",
        "127.0.0.1:9009",
        "--listen",
        "127.0.0.1:1080",
    ]);
    let proxy = spawn(p);
    proxy.line("proxy listening on");
    // Now the host gains a public-looking address, and a server on it.
    ns.ip(&["addr", "add", "1.2.3.4/32", "dev", "lo"]);
    let www = tempfile::tempdir().unwrap();
    std::fs::write(www.path().join("x.txt"), b"inside").unwrap();
    let mut s = std::process::Command::new("ip");
    s.args([
        "netns",
        "exec",
        &ns.name,
        "python3",
        "-m",
        "http.server",
        "--bind",
        "1.2.3.4",
        "8080",
        "--directory",
    ])
    .arg(www.path())
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    let _server = Proc {
        child: s.spawn().unwrap(),
        stderr: std::sync::mpsc::channel::<String>().1,
        stdout: None,
    };
    // The server is up (straight from the namespace, not through the exit).
    let direct = |args: &[&str]| {
        let mut a = vec!["netns", "exec", &ns.name, "curl", "-sS", "--max-time", "10"];
        a.extend_from_slice(args);
        std::process::Command::new("ip").args(&a).output().unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !direct(&["http://1.2.3.4:8080/x.txt"]).status.success() {
        assert!(
            std::time::Instant::now() < deadline,
            "the test's web server did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = direct(&["--socks5-hostname", "127.0.0.1:1080", "http://1.2.3.4:8080/x.txt"]);
    assert!(
        !out.status.success(),
        "reached: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let said = exit.line("refused a stream to 1.2.3.4:8080");
    assert!(said.contains("own address"), "{said}");
    drop((proxy, exit, relay));
}
