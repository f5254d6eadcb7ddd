//! What the sans-IO core takes from this machine, in one place: random
//! bytes (the OS RNG, for every handshake, PAKE, code and key) and the
//! AES-256-GCM backend (by CPU, or `BURROW_AEAD=ring|aws-lc`).

use std::sync::OnceLock;

use burrow_proto::random::Random;
use burrow_proto::session::aead::Backend;

/// The operating system's RNG.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsRandom;

impl Random for OsRandom {
    fn fill(&mut self, out: &mut [u8]) {
        if getrandom::fill(out).is_err() {
            // Without an OS RNG no secure key can be made: stop rather than
            // continue with predictable ones.
            eprintln!("burrow: the operating system's random number generator failed");
            std::process::abort();
        }
    }
}

/// Fills `out` from the OS RNG.
pub fn random(out: &mut [u8]) {
    OsRandom.fill(out)
}

/// The AEAD backend for this process: `BURROW_AEAD` (`ring` or `aws-lc`)
/// if set, else the faster one on this CPU. Decided once.
pub fn aead() -> Backend {
    static CHOICE: OnceLock<Backend> = OnceLock::new();
    *CHOICE.get_or_init(|| {
        std::env::var("BURROW_AEAD")
            .ok()
            .and_then(|v| Backend::from_name(&v))
            .unwrap_or_else(Backend::detect)
    })
}
