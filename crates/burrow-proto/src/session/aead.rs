//! The transport's AES-256-GCM, on whichever well-kept implementation is
//! fastest on this CPU.
//!
//! Records are sealed and opened in place ([`crate::session`]); the cipher
//! under them is the largest single cost of every byte burrow moves, and
//! which library is fastest depends on the CPU (measured with 60 KiB
//! records, one core, `docs/benchmarks.md`):
//!
//! | CPU | ring 0.17 | aws-lc-rs 1.x |
//! |---|---|---|
//! | x86-64 with AVX-512 + VAES (Intel Xeon, Ice Lake and later) | 5.8 GB/s (VAES-AVX2) | 9.2 GB/s (VAES-AVX512) |
//! | x86-64 with VAES + AVX2 only (AMD Zen 3) | 4.3–6.2 GB/s (VAES-AVX2) | 2.1–3.2 GB/s (AES-NI) |
//!
//! So [`Backend::detect`] takes aws-lc-rs where AVX-512 with VAES and
//! VPCLMULQDQ is present and ring everywhere else. The driver passes the
//! backend into each handshake; `burrow-node` honours `BURROW_AEAD=ring` or
//! `BURROW_AEAD=aws-lc` as an override for the whole process (A/B
//! measurements). Both produce the same bytes (AES-256-GCM is AES-256-GCM;
//! a test checks them against each other).
//!
//! **Key hygiene.** aws-lc keeps its key schedule in C memory that it
//! cleanses when the key is freed. ring offers no zeroization, so its key
//! lives in one heap allocation that is never moved, and on drop is
//! overwritten in place with the schedule of an all-zero key before it is
//! freed (`RingKey`).

use std::sync::OnceLock;

/// Length of an AEAD tag.
pub const TAG_LEN: usize = 16;

/// Which implementation runs AES-256-GCM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `ring` (VAES-AVX2 on x86-64 where available; ARMv8 crypto extensions).
    Ring,
    /// `aws-lc-rs` (VAES-AVX512 on x86-64 where available).
    AwsLc,
}

impl Backend {
    /// A backend by its [`Backend::name`] (`ring`, `aws-lc`); the driver
    /// reads an override (`BURROW_AEAD`) and passes the choice in.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "ring" => Some(Backend::Ring),
            "aws-lc" => Some(Backend::AwsLc),
            _ => None,
        }
    }

    /// The faster backend on this CPU (see the module docs). Decided once
    /// per process (CPU feature detection, no environment).
    pub fn detect() -> Self {
        static CHOICE: OnceLock<Backend> = OnceLock::new();
        *CHOICE.get_or_init(Self::by_cpu)
    }

    fn by_cpu() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("vaes")
                && std::arch::is_x86_feature_detected!("vpclmulqdq")
            {
                return Backend::AwsLc;
            }
        }
        Backend::Ring
    }

    /// Its name, for logs and benchmarks.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Ring => "ring",
            Backend::AwsLc => "aws-lc",
        }
    }
}

/// The AEAD failed: a wrong tag (altered data), or a key that could not be set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("AES-256-GCM failed: wrong tag or unusable key")]
pub struct AeadError;

/// A ring AES-256-GCM key that is wiped when dropped: boxed so that it never
/// moves (no stale copies), and overwritten with an all-zero key's schedule
/// before the allocation is freed.
struct RingKey(Box<ring::aead::LessSafeKey>);

fn ring_key(k: &[u8; 32]) -> Result<ring::aead::LessSafeKey, AeadError> {
    ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, k)
        .map(ring::aead::LessSafeKey::new)
        .map_err(|_| AeadError)
}

impl Drop for RingKey {
    fn drop(&mut self) {
        if let Ok(zero) = ring_key(&[0; 32]) {
            *self.0 = zero;
            // Keep the overwrite from being optimised away as a dead store.
            std::hint::black_box(&*self.0);
        }
    }
}

/// One direction's AES-256-GCM key.
pub struct Key(Inner);

enum Inner {
    Ring(RingKey),
    AwsLc(aws_lc_rs::aead::LessSafeKey),
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Inner::Ring(_) => "Key(ring)",
            Inner::AwsLc(_) => "Key(aws-lc)",
        })
    }
}

/// A 96-bit nonce.
pub type Nonce = [u8; 12];

impl Key {
    /// A key on `backend`.
    pub fn new(backend: Backend, k: &[u8; 32]) -> Result<Self, AeadError> {
        Ok(Key(match backend {
            Backend::Ring => Inner::Ring(RingKey(Box::new(ring_key(k)?))),
            Backend::AwsLc => Inner::AwsLc(
                aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, k)
                    .map(aws_lc_rs::aead::LessSafeKey::new)
                    .map_err(|_| AeadError)?,
            ),
        }))
    }

    /// Noise's `REKEY(k)`: the first 32 bytes of `ENCRYPT(k, 2^64 - 1, "",
    /// 32 zero bytes)` (Noise spec §11.3, AESGCM nonce encoding), as a key
    /// on the same backend.
    pub fn rekey(&self) -> Result<Self, AeadError> {
        let mut next = zeroize::Zeroizing::new([0u8; 32]);
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&u64::MAX.to_be_bytes());
        self.seal_in_place(nonce, &mut next[..])?;
        let backend = match self.0 {
            Inner::Ring(_) => Backend::Ring,
            Inner::AwsLc(_) => Backend::AwsLc,
        };
        Key::new(backend, &next)
    }

    /// Encrypts `body` in place (no associated data); returns the tag.
    pub fn seal_in_place(&self, nonce: Nonce, body: &mut [u8]) -> Result<[u8; TAG_LEN], AeadError> {
        let mut out = [0u8; TAG_LEN];
        match &self.0 {
            Inner::Ring(k) => {
                let n = ring::aead::Nonce::assume_unique_for_key(nonce);
                let tag =
                    k.0.seal_in_place_separate_tag(n, ring::aead::Aad::empty(), body)
                        .map_err(|_| AeadError)?;
                out.copy_from_slice(tag.as_ref());
            }
            Inner::AwsLc(k) => {
                let n = aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce);
                let tag = k
                    .seal_in_place_separate_tag(n, aws_lc_rs::aead::Aad::empty(), body)
                    .map_err(|_| AeadError)?;
                out.copy_from_slice(tag.as_ref());
            }
        }
        Ok(out)
    }

    /// Decrypts `ct` (ciphertext followed by its tag) in place; returns the
    /// plaintext, a prefix of `ct`. On failure the contents of `ct` are unspecified.
    pub fn open_in_place<'a>(&self, nonce: Nonce, ct: &'a mut [u8]) -> Result<&'a mut [u8], AeadError> {
        match &self.0 {
            Inner::Ring(k) => {
                let n = ring::aead::Nonce::assume_unique_for_key(nonce);
                k.0.open_in_place(n, ring::aead::Aad::empty(), ct)
                    .map_err(|_| AeadError)
            }
            Inner::AwsLc(k) => {
                let n = aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce);
                k.open_in_place(n, aws_lc_rs::aead::Aad::empty(), ct)
                    .map_err(|_| AeadError)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKENDS: [Backend; 2] = [Backend::Ring, Backend::AwsLc];

    #[test]
    fn backends_agree_and_open_each_other() {
        let k = [0x42; 32];
        let nonce = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
        let plain: Vec<u8> = (0..70_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let mut sealed = Vec::new();
        for b in BACKENDS {
            let key = Key::new(b, &k).unwrap();
            let mut body = plain.clone();
            let tag = key.seal_in_place(nonce, &mut body).unwrap();
            body.extend_from_slice(&tag);
            sealed.push(body);
        }
        assert_eq!(
            sealed[0], sealed[1],
            "ring and aws-lc must produce the same record"
        );
        assert_ne!(&sealed[0][..plain.len()], &plain[..]);
        for b in BACKENDS {
            let key = Key::new(b, &k).unwrap();
            let mut ct = sealed[0].clone();
            assert_eq!(key.open_in_place(nonce, &mut ct).unwrap(), &plain[..]);
        }
    }

    #[test]
    fn wrong_tag_key_or_nonce_fails_on_both() {
        let k = [1; 32];
        for b in BACKENDS {
            let key = Key::new(b, &k).unwrap();
            let mut body = b"attack at dawn".to_vec();
            let tag = key.seal_in_place([0; 12], &mut body).unwrap();
            body.extend_from_slice(&tag);
            let mut flipped = body.clone();
            flipped[3] ^= 1;
            assert_eq!(key.open_in_place([0; 12], &mut flipped), Err(AeadError));
            let mut other_nonce = body.clone();
            assert_eq!(key.open_in_place([1; 12], &mut other_nonce), Err(AeadError));
            let other = Key::new(b, &[2; 32]).unwrap();
            let mut c = body.clone();
            assert_eq!(other.open_in_place([0; 12], &mut c), Err(AeadError));
            let mut short = vec![0u8; TAG_LEN - 1];
            assert_eq!(key.open_in_place([0; 12], &mut short), Err(AeadError));
        }
    }

    #[test]
    fn a_backend_is_chosen() {
        assert!(BACKENDS.contains(&Backend::detect()));
        for b in BACKENDS {
            assert_eq!(Backend::from_name(b.name()), Some(b));
        }
        assert_eq!(Backend::from_name("rot13"), None);
    }
}
