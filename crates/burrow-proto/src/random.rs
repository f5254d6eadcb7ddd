//! Randomness comes in from the caller: nothing in `burrow-proto` reads the
//! OS RNG (or a clock, or the environment), so every handshake, PAKE and
//! code can be run against fixed vectors in tests, and the driver decides
//! where randomness comes from (`burrow-node` and `burrow-relay` use the
//! OS RNG through `getrandom`).
//!
//! [`Random`] is the one interface: "fill these bytes". Closures
//! `FnMut(&mut [u8])` implement it. Libraries that want their own RNG type
//! get an adapter: [`RandCore`] for RustCrypto's `rand_core` (SPAKE2), and
//! [`Stream`] for snow's handshakes (which keep their RNG for the whole
//! handshake): 32 bytes from the caller key a BLAKE3 XOF, and snow draws
//! its ephemeral keys from that stream.

use zeroize::Zeroizing;

/// A source of cryptographically secure random bytes.
pub trait Random {
    /// Fills `out` entirely.
    fn fill(&mut self, out: &mut [u8]);
}

impl<F: FnMut(&mut [u8])> Random for F {
    fn fill(&mut self, out: &mut [u8]) {
        self(out)
    }
}

/// [`Random`] as a `rand_core` 0.10 cryptographic RNG.
pub struct RandCore<'a>(pub &'a mut dyn Random);

impl rand_core::TryRng for RandCore<'_> {
    type Error = core::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut b = [0u8; 4];
        self.0.fill(&mut b);
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut b = [0u8; 8];
        self.0.fill(&mut b);
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        self.0.fill(dst);
        Ok(())
    }
}

impl rand_core::TryCryptoRng for RandCore<'_> {}

/// An owned stream of random bytes keyed by 32 bytes from a [`Random`]:
/// BLAKE3 in keyed XOF mode (a PRF, so the stream is as unpredictable as
/// its key). For libraries that keep an RNG of their own beyond one call.
pub struct Stream(blake3::OutputReader);

impl Stream {
    /// A stream keyed from `rng`.
    pub fn from_random(rng: &mut dyn Random) -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        rng.fill(&mut key[..]);
        Self::from_key(&key)
    }

    /// A stream from a fixed key (tests and vectors: the same key gives
    /// the same bytes).
    pub fn from_key(key: &[u8; 32]) -> Self {
        Self(blake3::Hasher::new_keyed(key).finalize_xof())
    }
}

impl Random for Stream {
    fn fill(&mut self, out: &mut [u8]) {
        self.0.fill(out);
    }
}

impl snow::types::Random for Stream {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.fill(dest);
        Ok(())
    }
}

/// A deterministic [`Random`] for tests: the same `seed`, the same bytes.
pub fn seeded(seed: u8) -> Stream {
    Stream::from_key(&[seed; 32])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_keyed_and_repeatable() {
        let (mut a, mut b, mut c) = (seeded(1), seeded(1), seeded(2));
        let (mut x, mut y, mut z) = ([0u8; 48], [0u8; 48], [0u8; 48]);
        a.fill(&mut x);
        b.fill(&mut y);
        c.fill(&mut z);
        assert_eq!(x, y);
        assert_ne!(x, z);
        let mut calls = 0;
        let mut f = |o: &mut [u8]| {
            calls += 1;
            o.fill(7)
        };
        let mut s = Stream::from_random(&mut f);
        s.fill(&mut x);
        assert_eq!(calls, 1);
        assert_eq!(x, {
            let mut o = [0u8; 48];
            Stream::from_key(&[7; 32]).fill(&mut o);
            o
        });
    }
}
