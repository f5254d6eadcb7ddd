//! CGO cell crypto per core at three cell sizes (issue 13: "choose the
//! cell size by benchmark"): the client's side of a 3-hop circuit
//! (originate for the exit, then two more layers), one relay hop
//! (recognition check and key update included), and, for scale, one
//! AES-256-GCM seal of the same bytes (the link record each cell also
//! rides in). MB/s of cell bodies.
//!
//! `cargo run --release -p burrow-proto --example onion_cells [SECONDS]`

use std::time::{Duration, Instant};

use burrow_proto::onion::cgo::{ClientOutbound, RelayOutbound, SEED_LEN, State};
use burrow_proto::session::aead::{Backend, Key};

fn rate(secs: f64, mut f: impl FnMut() -> usize) -> f64 {
    let start = Instant::now();
    let mut bytes = 0usize;
    while start.elapsed() < Duration::from_secs_f64(secs) {
        for _ in 0..64 {
            bytes += f();
        }
    }
    bytes as f64 / start.elapsed().as_secs_f64() / 1e6
}

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    println!(
        "{:>6} {:>14} {:>12} {:>14}",
        "body", "client 3 hops", "relay hop", "AES-256-GCM"
    );
    for body_len in [509usize, 2048, 8192] {
        let seeds: Vec<[u8; SEED_LEN]> = (0..3u8).map(|i| [i + 1; SEED_LEN]).collect();
        let mut client: Vec<ClientOutbound> = seeds
            .iter()
            .map(|s| ClientOutbound(State::new(s, body_len)))
            .collect();
        let mut body = vec![0u8; body_len];
        let c = rate(secs, || {
            client[2].originate(3, &mut body);
            client[1].encrypt(3, &mut body);
            client[0].encrypt(3, &mut body);
            body_len
        });
        let mut relay = RelayOutbound(State::new(&seeds[0], body_len));
        let r = rate(secs, || {
            let _ = relay.decrypt(3, &mut body);
            body_len
        });
        let key = Key::new(Backend::detect(), &[9u8; 32]).expect("key");
        let mut n = 0u64;
        let mut rec = vec![0u8; body_len];
        let g = rate(secs, || {
            n += 1;
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&n.to_be_bytes());
            let _ = key.seal_in_place(nonce, &mut rec);
            body_len
        });
        println!("{body_len:>6} {c:>11.0} MB/s {r:>7.0} MB/s {g:>9.0} MB/s");
    }
}
