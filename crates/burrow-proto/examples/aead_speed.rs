//! How fast each AES-256-GCM backend seals 60 KiB records on this CPU, and
//! which one burrow picks (`burrow_proto::session::aead`).
//!
//! `cargo run --release -p burrow-proto --example aead_speed`

use std::time::Instant;

use burrow_proto::session::aead::{Backend, Key};

fn main() {
    const RECORD: usize = 60 * 1024;
    const ROUNDS: u64 = 16_384; // 960 MiB per backend
    let mut body = vec![0x5au8; RECORD];
    for backend in [Backend::Ring, Backend::AwsLc] {
        let Ok(key) = Key::new(backend, &[7; 32]) else {
            eprintln!("{}: no key", backend.name());
            continue;
        };
        let t = Instant::now();
        for n in 0..ROUNDS {
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&n.to_be_bytes());
            if key.seal_in_place(nonce, &mut body).is_err() {
                eprintln!("{}: seal failed", backend.name());
                return;
            }
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "{:7} AES-256-GCM seal, 60 KiB records: {:.2} GB/s",
            backend.name(),
            (RECORD as u64 * ROUNDS) as f64 / secs / 1e9
        );
    }
    let forced = std::env::var("BURROW_AEAD").ok();
    println!(
        "chosen on this CPU: {} (BURROW_AEAD overrides: {})",
        Backend::detect().name(),
        forced
            .as_deref()
            .and_then(Backend::from_name)
            .unwrap_or(Backend::detect())
            .name()
    );
}
