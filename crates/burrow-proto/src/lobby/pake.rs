//! The lobby's PAKE (seed 003), bound to the relay-given identities.
//!
//! ```text
//! public (34 bytes) = version:u8 (=1) | kdf:u8 (1 = Argon2id v1.3) | memory_kib:u32
//!                   | iterations:u8 | lanes:u8 | cipher:u8 (1 = Noise AES-256-GCM)
//!                   | hash:u8 (1 = BLAKE3) | salt:16 | reserved:8 (zero)
//! w        = Argon2id(password, salt, memory, iterations, lanes) → 32 bytes
//! client (A)                                  server (B)
//!   X = SPAKE2_A(w, "burrow lobby client <client id>", "... server <server id>")
//!   X_and_client_identity{X[32], client id} →
//!                                             Y = SPAKE2_B(w, same ids); k = SPAKE2 key
//!                                      ←      Y_and_server_validator{Y[32], Vs[64]}
//!   k; check Vs; Client_validator{Vc[64]} →
//!                                             check Vc; Agreement
//! T  = BLAKE3 over (public, server id, client id, X, Y), each length-prefixed
//! Vs = BLAKE3-XOF(keyed: derive_key("burrow lobby server validator", k), T)[..64]
//! Vc = the same with "burrow lobby client validator"
//! session key = derive_key("burrow lobby session", k ‖ T)  (Noise NNpsk0 PSK)
//! ```
//!
//! Both identities are SPAKE2 identities and part of T, so a peer that lies
//! about who it is (or a relay that rewrites identities) cannot finish. Each
//! try is independent: a failed one costs only that pairing.

use crate::random::{RandCore, Random};
use spake2::{Ed25519Group, Identity as SpakeId, Password, Spake2};
use zeroize::Zeroizing;

use crate::channel::pake::SessionKey;
use crate::lobby::{Identity, POINT_LEN, PUBLIC_LEN, SpokeFailure, VALIDATOR_LEN};

/// Format version of the public parameters.
pub const VERSION: u8 = 1;
/// Argon2id v1.3.
pub const KDF_ARGON2ID: u8 = 1;
/// Noise NNpsk0 with AES-256-GCM.
pub const CIPHER_NOISE_AESGCM: u8 = 1;
/// BLAKE3.
pub const HASH_BLAKE3: u8 = 1;
/// Largest memory cost a peer accepts from another (KiB): bounds what a
/// hostile sender can make a receiver spend.
pub const MAX_MEMORY_KIB: u32 = 256 * 1024;
/// Largest iteration count accepted.
pub const MAX_ITERATIONS: u8 = 10;

const LABEL_SERVER: &str = "burrow lobby server validator";
const LABEL_CLIENT: &str = "burrow lobby client validator";
const LABEL_SESSION: &str = "burrow lobby session";

/// The password-stretching parameters a sender announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// Argon2 memory in KiB.
    pub memory_kib: u32,
    /// Argon2 passes.
    pub iterations: u8,
    /// Argon2 lanes.
    pub lanes: u8,
    /// Random salt.
    pub salt: [u8; 16],
}

impl Params {
    /// The defaults (OWASP's Argon2id minimum: 19 MiB, 2 passes, 1 lane) with `salt`.
    pub fn new(salt: [u8; 16]) -> Self {
        Self {
            memory_kib: 19 * 1024,
            iterations: 2,
            lanes: 1,
            salt,
        }
    }

    /// The 34 bytes of the seed's "public" field.
    pub fn encode(&self) -> [u8; PUBLIC_LEN] {
        let mut b = [0u8; PUBLIC_LEN];
        b[0] = VERSION;
        b[1] = KDF_ARGON2ID;
        b[2..6].copy_from_slice(&self.memory_kib.to_be_bytes());
        b[6] = self.iterations;
        b[7] = self.lanes;
        b[8] = CIPHER_NOISE_AESGCM;
        b[9] = HASH_BLAKE3;
        b[10..26].copy_from_slice(&self.salt);
        b
    }

    /// Reads and bounds the public field.
    pub fn decode(b: &[u8; PUBLIC_LEN]) -> Result<Self, SpokeFailure> {
        let memory_kib = u32::from_be_bytes([b[2], b[3], b[4], b[5]]);
        let ok = b[0] == VERSION
            && b[1] == KDF_ARGON2ID
            && b[8] == CIPHER_NOISE_AESGCM
            && b[9] == HASH_BLAKE3
            && b[26..].iter().all(|&x| x == 0)
            && (8..=MAX_MEMORY_KIB).contains(&memory_kib)
            && (1..=MAX_ITERATIONS).contains(&b[6])
            && (1..=4).contains(&b[7])
            && memory_kib >= 8 * u32::from(b[7]);
        if !ok {
            return Err(SpokeFailure::BadPublic);
        }
        let mut salt = [0u8; 16];
        salt.copy_from_slice(&b[10..26]);
        Ok(Self {
            memory_kib,
            iterations: b[6],
            lanes: b[7],
            salt,
        })
    }

    /// Stretches the password (memory-hard; run it off the async threads).
    pub fn stretch(&self, password: &[u8]) -> Result<Zeroizing<[u8; 32]>, SpokeFailure> {
        let p = argon2::Params::new(
            self.memory_kib,
            u32::from(self.iterations),
            u32::from(self.lanes),
            Some(32),
        )
        .map_err(|_| SpokeFailure::BadPublic)?;
        let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, p);
        let mut out = Zeroizing::new([0u8; 32]);
        a.hash_password_into(password, &self.salt, &mut out[..])
            .map_err(|_| SpokeFailure::BadSecret)?;
        Ok(out)
    }
}

fn ids(server: &Identity, client: &Identity) -> (SpakeId, SpakeId) {
    (
        SpakeId::new(format!("burrow lobby client {}", client.as_str()).as_bytes()),
        SpakeId::new(format!("burrow lobby server {}", server.as_str()).as_bytes()),
    )
}

fn transcript(
    public: &[u8; PUBLIC_LEN],
    server: &Identity,
    client: &Identity,
    x: &[u8],
    y: &[u8],
) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    for part in [
        &public[..],
        server.as_str().as_bytes(),
        client.as_str().as_bytes(),
        x,
        y,
    ] {
        h.update(&(part.len() as u64).to_be_bytes());
        h.update(part);
    }
    *h.finalize().as_bytes()
}

fn validator(label: &str, k: &[u8], t: &[u8; 32]) -> [u8; VALIDATOR_LEN] {
    let key = Zeroizing::new(blake3::derive_key(label, k));
    let mut out = [0u8; VALIDATOR_LEN];
    blake3::Hasher::new_keyed(&key)
        .update(t)
        .finalize_xof()
        .fill(&mut out);
    out
}

/// Compares validators in constant time (as two BLAKE3 hashes).
fn same(a: &[u8; VALIDATOR_LEN], b: &[u8; VALIDATOR_LEN]) -> bool {
    let half = |v: &[u8; VALIDATOR_LEN], i: usize| {
        let mut h = [0u8; 32];
        h.copy_from_slice(&v[i * 32..i * 32 + 32]);
        blake3::Hash::from_bytes(h)
    };
    let first = half(a, 0) == half(b, 0);
    let second = half(a, 1) == half(b, 1);
    first & second
}

struct Keys {
    vs: [u8; VALIDATOR_LEN],
    vc: [u8; VALIDATOR_LEN],
    session: SessionKey,
}

fn keys(k: &[u8], t: &[u8; 32]) -> Keys {
    let mut ikm = Zeroizing::new(Vec::with_capacity(k.len() + 32));
    ikm.extend_from_slice(k);
    ikm.extend_from_slice(t);
    Keys {
        vs: validator(LABEL_SERVER, k, t),
        vc: validator(LABEL_CLIENT, k, t),
        session: SessionKey::from_bytes(blake3::derive_key(LABEL_SESSION, &ikm)),
    }
}

/// A receiver's try with one sender.
pub struct ClientTry {
    state: Spake2<Ed25519Group>,
    public: [u8; PUBLIC_LEN],
    server: Identity,
    client: Identity,
    x: [u8; POINT_LEN],
}

impl std::fmt::Debug for ClientTry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTry").field("server", &self.server).finish()
    }
}

impl ClientTry {
    /// Starts a try with the stretched password `w`; returns X to send.
    pub fn start(
        w: &[u8; 32],
        public: [u8; PUBLIC_LEN],
        server: Identity,
        client: Identity,
        rng: &mut dyn Random,
    ) -> (Self, [u8; POINT_LEN]) {
        let (a, b) = ids(&server, &client);
        let (state, msg) =
            Spake2::<Ed25519Group>::start_a_with_rng(&Password::new(&w[..]), &a, &b, RandCore(rng));
        let mut x = [0u8; POINT_LEN];
        x.copy_from_slice(&msg[1..]);
        let me = Self {
            state,
            public,
            server,
            client,
            x,
        };
        (me, x)
    }

    /// Y and the server's validator: checks it; returns the session key and
    /// the client validator to send.
    pub fn finish(
        self,
        y: &[u8; POINT_LEN],
        server_validator: &[u8; VALIDATOR_LEN],
    ) -> Result<(SessionKey, [u8; VALIDATOR_LEN]), SpokeFailure> {
        let mut msg = vec![0x42];
        msg.extend_from_slice(y);
        let k = Zeroizing::new(
            self.state
                .finish(&msg)
                .map_err(|_| SpokeFailure::PointNotInSubgroup)?,
        );
        let t = transcript(&self.public, &self.server, &self.client, &self.x, y);
        let keys = keys(&k, &t);
        if !same(&keys.vs, server_validator) {
            return Err(SpokeFailure::BadServerValidator);
        }
        Ok((keys.session, keys.vc))
    }
}

/// A sender's side of one try, waiting for the client validator.
pub struct ServerTry {
    vc: [u8; VALIDATOR_LEN],
    session: SessionKey,
}

impl std::fmt::Debug for ServerTry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTry")
    }
}

impl ServerTry {
    /// Answers X: returns the state, Y and the server validator to send.
    pub fn respond(
        w: &[u8; 32],
        public: &[u8; PUBLIC_LEN],
        server: &Identity,
        client: &Identity,
        x: &[u8; POINT_LEN],
        rng: &mut dyn Random,
    ) -> Result<(Self, [u8; POINT_LEN], [u8; VALIDATOR_LEN]), SpokeFailure> {
        let (a, b) = ids(server, client);
        let (state, msg) =
            Spake2::<Ed25519Group>::start_b_with_rng(&Password::new(&w[..]), &a, &b, RandCore(rng));
        let mut y = [0u8; POINT_LEN];
        y.copy_from_slice(&msg[1..]);
        let mut xm = vec![0x41];
        xm.extend_from_slice(x);
        let k = Zeroizing::new(state.finish(&xm).map_err(|_| SpokeFailure::PointNotInSubgroup)?);
        let t = transcript(public, server, client, x, &y);
        let keys = keys(&k, &t);
        Ok((
            Self {
                vc: keys.vc,
                session: keys.session,
            },
            y,
            keys.vs,
        ))
    }

    /// Checks the client validator; the session key on success.
    pub fn finish(self, client_validator: &[u8; VALIDATOR_LEN]) -> Result<SessionKey, SpokeFailure> {
        if same(&self.vc, client_validator) {
            Ok(self.session)
        } else {
            Err(SpokeFailure::BadClientValidator)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::seeded;

    fn cheap(salt: u8) -> Params {
        Params {
            memory_kib: 64,
            iterations: 1,
            lanes: 1,
            salt: [salt; 16],
        }
    }

    fn id(s: &str) -> Identity {
        Identity::new(s).unwrap()
    }

    fn run(pw_c: &[u8], pw_s: &[u8], claimed_client: &str) -> Result<(SessionKey, SessionKey), SpokeFailure> {
        let params = cheap(7);
        let public = params.encode();
        assert_eq!(Params::decode(&public).unwrap(), params);
        let (server, client) = (id("10.0.0.1:5000"), id("10.0.0.2:6000"));
        let wc = params.stretch(pw_c)?;
        let ws = params.stretch(pw_s)?;
        let (c, x) = ClientTry::start(&wc, public, server.clone(), client.clone(), &mut seeded(1));
        // The server binds the identity the relay vouched for (or a claimed one).
        let (s, y, vs) = ServerTry::respond(&ws, &public, &server, &id(claimed_client), &x, &mut seeded(2))?;
        let (kc, vc) = c.finish(&y, &vs)?;
        let ks = s.finish(&vc)?;
        Ok((kc, ks))
    }

    #[test]
    fn the_same_password_agrees_on_one_key() {
        let (a, b) = run(b"correct horse", b"correct horse", "10.0.0.2:6000").unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn a_wrong_password_fails_at_the_server_validator() {
        assert_eq!(
            run(b"correct horse", b"wrong horse", "10.0.0.2:6000").unwrap_err(),
            SpokeFailure::BadServerValidator
        );
    }

    #[test]
    fn a_lie_about_the_identity_cannot_finish() {
        assert_eq!(
            run(b"pw", b"pw", "10.0.0.9:6000").unwrap_err(),
            SpokeFailure::BadServerValidator
        );
    }

    #[test]
    fn hostile_parameters_are_refused() {
        let mut p = cheap(1).encode();
        p[2..6].copy_from_slice(&(MAX_MEMORY_KIB + 1).to_be_bytes());
        assert_eq!(Params::decode(&p), Err(SpokeFailure::BadPublic));
        let mut p = cheap(1).encode();
        p[6] = 0;
        assert_eq!(Params::decode(&p), Err(SpokeFailure::BadPublic));
        let mut p = cheap(1).encode();
        p[33] = 1;
        assert_eq!(Params::decode(&p), Err(SpokeFailure::BadPublic));
        assert_eq!(
            hex::encode(Params::new([0xaa; 16]).encode()),
            "010100004c0002010101aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa0000000000000000"
        );
    }

    #[test]
    fn a_tampered_validator_fails() {
        let params = cheap(3);
        let public = params.encode();
        let (server, client) = (id("a:1"), id("b:2"));
        let w = params.stretch(b"pw").unwrap();
        let (c, x) = ClientTry::start(&w, public, server.clone(), client.clone(), &mut seeded(1));
        let (s, y, mut vs) = ServerTry::respond(&w, &public, &server, &client, &x, &mut seeded(2)).unwrap();
        vs[63] ^= 1;
        assert_eq!(c.finish(&y, &vs).unwrap_err(), SpokeFailure::BadServerValidator);
        assert_eq!(s.finish(&[0; 64]).unwrap_err(), SpokeFailure::BadClientValidator);
    }
}
