//! burrow's protocol core, free of I/O.
//!
//! Everything here takes bytes (and, where it matters, the current time and
//! random bytes) in, and returns bytes and events out. No sockets, no tokio, no
//! clock reads: the relay (`burrow-relay`) and the peer runtime (`burrow-node`)
//! drive these machines, and the fuzz targets drive them too.
//!
//! One folder per system, its codec and both sides' machines together:
//!
//! | module | owns |
//! |---|---|
//! | [`wire`] | total decoding helpers shared by every binary codec |
//! | [`random`] | the caller-supplied randomness every handshake and PAKE takes |
//! | [`keys`] | long-term identities, fingerprints, signatures; the pairing message |
//! | [`session`] | Noise handshakes (`NNpsk0`, `XX`) and the AEAD record layer |
//! | [`channel`] | seed 001: codes, SPAKE2, the relay's HTTP API and channel table, LAN announcements |
//! | [`staple`] | the stapling hellos and replies every relay connection starts with |
//! | [`lobby`] | seed 003: the lobby packets, the lobby PAKE, the relay's lobby |
//! | [`connector`] | seed 000: the relay as a mailbox joining a proxy to an exit |
//! | [`transfer`] | files, folders, text and streams inside a session: both sides' machines |
//! | [`tunnel`] | streams over one session (mux), egress policy, SOCKS5 / HTTP CONNECT |
//! | [`mesh`] | seed 002: node links (handshake, keepalives, rekeying), packets, signed node records |
//! | [`onion`] | seed 004: circuits (CGO cells, per-hop handshakes), the directory authorities' node list, paths |
//! | `fuzzing` | entry points of the fuzz targets and their corpus replay (feature `fuzzing`, and tests) |

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod channel;
pub mod connector;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
#[cfg(test)]
pub(crate) mod harness;
pub mod keys;
pub mod lobby;
pub mod mesh;
pub mod onion;
pub mod random;
pub mod session;
pub mod staple;
pub mod transfer;
pub mod tunnel;
pub mod wire;
