//! Helpers shared by the end-to-end tests: process guards that kill by PID
//! on drop, bounded waits, and network namespaces joined by veth pairs.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The binary under test: this build's, or another one named by
/// `BURROW_TEST_BIN` (to show that a test fails against an older build).
pub fn bin() -> std::ffi::OsString {
    std::env::var_os("BURROW_TEST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_burrow").into())
}
pub const WAIT: Duration = Duration::from_secs(60);

/// Kills the process when dropped.
pub struct Proc {
    pub child: Child,
    pub stderr: mpsc::Receiver<String>,
    /// Stdout lines, when spawned with [`spawn_lines`].
    pub stdout: Option<mpsc::Receiver<String>>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// Waits for a stderr line starting with `prefix`; returns the rest.
    pub fn line(&self, prefix: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return l[prefix.len()..].trim().to_owned(),
                Ok(_) => {}
                Err(e) => panic!("no line starting with {prefix:?}: {e}"),
            }
        }
    }

    /// Kills the process and returns what it wrote to stderr meanwhile.
    pub fn finish_after_kill(mut self) -> (i32, String) {
        let _ = self.child.kill();
        self.finish()
    }

    /// Waits for exit (bounded); returns the code and the rest of stderr.
    pub fn finish(mut self) -> (i32, String) {
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "process did not exit in time");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut rest = String::new();
        while let Ok(l) = self.stderr.recv_timeout(Duration::from_millis(500)) {
            rest.push_str(&l);
            rest.push('\n');
        }
        (status.code().unwrap_or(-1), rest)
    }
}

/// A `burrow` command with a clean environment: its own HOME, no relay set.
pub fn burrow(home: &Path) -> Command {
    let mut c = Command::new(bin());
    // This machine has a real interface: only namespace tests may use direct paths.
    c.env_remove("BURROW_RELAY")
        .env_remove("BURROW_CONFIG")
        .env("BURROW_RELAY_ONLY", "1")
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// `burrow receive --yes` into `dst`.
pub fn receive_into(home: &Path, addr: &str, dst: &Path, code: &str) -> Command {
    let mut r = burrow(home);
    r.args(["receive", "--relay", addr, "--yes", "--out"])
        .arg(dst)
        .arg(code);
    r
}

pub fn spawn(mut c: Command) -> Proc {
    let mut child = c.spawn().unwrap();
    let err = child.stderr.take().unwrap();
    Proc {
        child,
        stderr: lines_of(err),
        stdout: None,
    }
}

pub fn relay(home: &Path) -> (Proc, String) {
    let mut c = burrow(home);
    c.args(["relay", "--listen", "127.0.0.1:0"]);
    let p = spawn(c);
    let addr = p.line("burrow relay listening on");
    (p, addr)
}

pub fn pseudo_random(len: usize, seed: &str) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(seed.as_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

pub fn hash(p: &Path) -> blake3::Hash {
    blake3::hash(&std::fs::read(p).unwrap())
}

pub fn stdout_of(p: &mut Proc) -> Vec<u8> {
    let mut v = Vec::new();
    p.child.stdout.take().unwrap().read_to_end(&mut v).unwrap();
    v
}

fn lines_of(r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

/// Like [`spawn`], and collects stdout line by line too (for `--json`).
pub fn spawn_lines(c: Command) -> Proc {
    let mut p = spawn(c);
    let out = p.child.stdout.take().unwrap();
    p.stdout = Some(lines_of(out));
    p
}

impl Proc {
    /// Waits for a JSON event on stdout with this `event` name that also
    /// satisfies `pred`; returns it.
    pub fn event(&self, name: &str, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let rx = self.stdout.as_ref().expect("spawned without spawn_lines");
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let l = rx
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no {name:?} event: {e}"));
            let v: serde_json::Value =
                serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            if v["event"] == name && pred(&v) {
                return v;
            }
        }
    }

    /// Every remaining stdout line (after the process exited).
    pub fn rest_of_stdout(&self) -> Vec<String> {
        let rx = self.stdout.as_ref().expect("spawned without spawn_lines");
        let mut v = Vec::new();
        while let Ok(l) = rx.recv_timeout(Duration::from_millis(500)) {
            v.push(l);
        }
        v
    }
}

/// Runs a command; panics with its output if it fails.
pub fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace of the test's own (`ip netns`), deleted on drop.
/// Declare it before the processes that run in it, so they die first.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates `bw<pid><tag>` with its loopback up.
    pub fn new(tag: &str) -> Self {
        let name = format!("bw{}{tag}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run("ip", &["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NAME ARGS...`.
    pub fn ip(&self, args: &[&str]) {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend_from_slice(args);
        run("ip", &a);
    }

    /// Any command inside the namespace.
    pub fn exec(&self, cmd: &str, args: &[&str]) {
        let mut a = vec!["netns", "exec", self.name.as_str(), cmd];
        a.extend_from_slice(args);
        run("ip", &a);
    }

    /// `burrow` inside the namespace, with a clean environment and its own HOME.
    pub fn burrow(&self, home: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name])
            .arg(bin())
            .env_remove("BURROW_RELAY")
            .env_remove("BURROW_CONFIG")
            .env_remove("BURROW_RELAY_ONLY")
            .env("HOME", home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// Joins two namespaces with a veth pair: `a_ip`/`b_ip` in CIDR form.
pub fn veth(a: &Netns, a_ip: &str, b: &Netns, b_ip: &str) {
    let (ea, eb) = (format!("{}a", b.name), format!("{}b", a.name));
    // Interface names are at most 15 bytes: keep the unique tail.
    let short = |s: &str| {
        s.chars()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<String>()
    };
    let (ea, eb) = (short(&ea), short(&eb));
    run(
        "ip",
        &[
            "link", "add", &ea, "netns", &a.name, "type", "veth", "peer", "name", &eb, "netns", &b.name,
        ],
    );
    a.ip(&["addr", "add", a_ip, "dev", &ea]);
    a.ip(&["link", "set", &ea, "up"]);
    b.ip(&["addr", "add", b_ip, "dev", &eb]);
    b.ip(&["link", "set", &eb, "up"]);
}

/// A small static-file HTTP/1.1 server on 127.0.0.1 (a thread per
/// connection, `Connection: close`, the kernel's full listen backlog), for
/// tests that need many concurrent requests. Returns its port; it lives as
/// long as the test process.
pub fn http_server(root: &Path) -> u16 {
    use std::io::Write;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let root = root.to_path_buf();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            let root = root.clone();
            std::thread::spawn(move || {
                let mut req = Vec::new();
                let mut b = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16384 {
                    match c.read(&mut b) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&b[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&req);
                let path = line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("/")
                    .trim_start_matches('/')
                    .to_owned();
                let body = if path.contains("..") {
                    None
                } else {
                    std::fs::read(root.join(&path)).ok()
                };
                let _ = match body {
                    Some(b) => c
                        .write_all(
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                                b.len()
                            )
                            .as_bytes(),
                        )
                        .and_then(|_| c.write_all(&b)),
                    None => c.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    ),
                };
            });
        }
    });
    port
}
