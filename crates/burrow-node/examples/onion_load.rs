//! Opens many onion circuits at once and holds them, for
//! `scripts/bench-onion.sh`'s "RSS per node with 1,000 circuits".
//!
//! Entry nodes limit circuit creation per client address (a burst of 30,
//! then 10 a second), so the circuits are spread over several clients,
//! each leaving from its own address (`--bind`, addresses the caller put
//! on an interface) and each on one link to its entry, as a real client.
//!
//! ```text
//! onion_load --directory FP@HOST:PORT,... --circuits 1000 [--per-client 20]
//!            [--bind IP,IP,...] [--hold SECS] [--hops 3] [--port 8000]
//! ```
//! Prints `holding N circuits (K clients, built in S s)` once they are up
//! (or when 60 s have passed), holds them `--hold` seconds, and exits.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burrow_node::onion::{OnionClient, OnionClientConfig};

struct Args {
    directories: Vec<burrow_node::onion::DirectoryAddr>,
    circuits: usize,
    per_client: usize,
    bind: Vec<IpAddr>,
    hold: u64,
    hops: usize,
    port: u16,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        directories: Vec::new(),
        circuits: 1000,
        per_client: 20,
        bind: Vec::new(),
        hold: 5,
        hops: 3,
        port: 8000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().ok_or(format!("{flag} needs a value"))?;
        let num = |v: &str| v.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--directory" => {
                for d in v.split(',') {
                    a.directories
                        .push(d.parse().map_err(|e| format!("--directory {d}: {e}"))?);
                }
            }
            "--circuits" => a.circuits = num(&v)?,
            "--per-client" => a.per_client = num(&v)?.max(1),
            "--bind" => {
                for ip in v.split(',') {
                    a.bind.push(ip.parse().map_err(|e| format!("--bind {ip}: {e}"))?);
                }
            }
            "--hold" => a.hold = num(&v)? as u64,
            "--hops" => a.hops = num(&v)?,
            "--port" => a.port = v.parse().map_err(|e| format!("--port: {e}"))?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if a.directories.is_empty() {
        return Err("--directory is required".into());
    }
    Ok(a)
}

#[tokio::main]
async fn main() {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("onion_load: {e}");
            std::process::exit(2);
        }
    };
    let started = Instant::now();
    let clients = a.circuits.div_ceil(a.per_client);
    let log: burrow_node::tunnel::Log = Arc::new(|line| eprintln!("{line}"));
    let mut tasks = Vec::new();
    let starting = Arc::new(tokio::sync::Semaphore::new(4));
    for i in 0..clients {
        let cfg = OnionClientConfig {
            directories: a.directories.clone(),
            hops: a.hops,
            log: log.clone(),
            announce: false,
            bind: (!a.bind.is_empty()).then(|| a.bind[i % a.bind.len()]),
        };
        let want = a.per_client.min(a.circuits - i * a.per_client);
        let port = a.port;
        let starting = starting.clone();
        tasks.push(tokio::spawn(async move {
            // The clients all ask the authorities from one address, which
            // limit requests per address: a few at a time, and again later.
            let mut tries = 0;
            let c = loop {
                let permit = starting.acquire().await.map_err(|e| e.to_string())?;
                let r = OnionClient::start(cfg.clone()).await;
                drop(permit);
                match r {
                    Ok(c) => break c,
                    Err(e) if tries >= 30 => return Err(e.to_string()),
                    Err(_) => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                }
            };
            // Two are built ahead by the client itself; the rest here.
            let deadline = Instant::now() + Duration::from_secs(60);
            while c.ready() < want && Instant::now() < deadline {
                if let Err(e) = c.prebuild(port).await {
                    eprintln!("a build failed: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            Ok::<_, String>(c)
        }));
    }
    let mut held = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok(c)) => held.push(c),
            Ok(Err(e)) => eprintln!("a client failed: {e}"),
            Err(e) => eprintln!("a client task failed: {e}"),
        }
    }
    let open: usize = held.iter().map(OnionClient::ready).sum();
    println!(
        "holding {open} circuits ({} clients, built in {:.2} s)",
        held.len(),
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(a.hold)).await;
    let still: usize = held.iter().map(OnionClient::ready).sum();
    println!("after {} s: {still} circuits still open", a.hold);
}
