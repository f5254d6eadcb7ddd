//! Mesh link handshakes per second on one core (issue 12, G9): full seed
//! 002 handshakes (HELLO, HELLO_ACK, FIN, FIN_ACK with signed records
//! checked on both sides) between two [`Link`] machines in memory, both
//! sides on this one thread, for `XX` and for `IK`. A node pays one side
//! of each handshake, so the rate a core can serve is about twice the
//! figure printed.
//!
//! `cargo run --release -p burrow-proto --example handshakes [SECONDS]`

use std::time::{Duration, Instant};

use burrow_proto::keys::Identity;
use burrow_proto::mesh::link::{Link, LinkConfig, LinkState};
use burrow_proto::mesh::record::{Claims, NodeRecord};
use burrow_proto::random::Stream;
use burrow_proto::session::aead::Backend;

fn record(id: &Identity) -> Vec<u8> {
    let claims = Claims {
        seq: 1,
        issued: 1_700_000_000,
        ttl: 3600,
        name: "bench".to_owned(),
        addrs: vec!["10.0.0.1:9010".parse().expect("address")],
        ..Claims::default()
    };
    NodeRecord::sign(id, &claims).expect("record")
}

/// Moves bytes between the two links until both are up (or one closed).
fn run_one(a: &mut Link, b: &mut Link, now: Instant) -> bool {
    for _ in 0..8 {
        let out = a.output().to_vec();
        a.advance(out.len());
        b.input(now, &out, &mut |_| {});
        let back = b.output().to_vec();
        b.advance(back.len());
        a.input(now, &back, &mut |_| {});
        if a.state() == LinkState::Up && b.state() == LinkState::Up {
            return true;
        }
        if a.state() == LinkState::Closed || b.state() == LinkState::Closed {
            return false;
        }
    }
    false
}

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let mut rng = Stream::from_key(&[9; 32]);
    let (ia, ib) = (Identity::generate(&mut rng), Identity::generate(&mut rng));
    let (ra, rb) = (record(&ia), record(&ib));
    let cfg = LinkConfig::new(Backend::detect());
    for ik in [false, true] {
        let t0 = Instant::now();
        let mut n = 0u64;
        while t0.elapsed() < Duration::from_secs_f64(secs) {
            let now = Instant::now();
            let key = ib.public().x25519;
            let Ok(mut a) = Link::outbound(
                cfg,
                ia.x25519_secret(),
                ra.clone(),
                ik.then_some(&key),
                now,
                &mut rng,
            ) else {
                eprintln!("cannot start a handshake");
                return;
            };
            let mut b = Link::inbound(cfg, ib.x25519_secret(), rb.clone(), now, &mut rng);
            if !run_one(&mut a, &mut b, now) {
                eprintln!("a handshake failed");
                return;
            }
            n += 1;
        }
        let rate = n as f64 / t0.elapsed().as_secs_f64();
        println!(
            "{} handshakes, both sides on one core: {:.0}/s ({:.0} µs each; one side ≈ {:.0}/s per core)",
            if ik { "IK" } else { "XX" },
            rate,
            1e6 / rate,
            2.0 * rate
        );
    }
}
