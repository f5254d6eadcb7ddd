//! burrow's protocol core, free of I/O.
//!
//! Everything here takes bytes (and, where it matters, the current time and
//! random bytes) in, and returns bytes and events out. No sockets, no tokio, no
//! clock reads: the relay (`burrow-relay`) and the peer runtime (`burrow-node`)
//! drive these machines, and the fuzz targets drive them too.
//!
//! | module | owns |
//! |---|---|
//! | [`wire`] | total decoding helpers shared by every binary codec |
//! | [`code`] | transfer codes `<channel>-<word>-<word>-<word>` |
//! | [`mux`] | streams over one session: open, data, windows, half-close, resets |
//! | [`pair`] | the pairing message (long-term keys exchanged under a code) |
//! | [`pake`] | SPAKE2 + key confirmation (seed 001, steps 2–10) |
//! | [`api`] | JSON bodies of the relay's HTTP API (seed 001) |
//! | [`channels`] | the relay's channel table: joins, steps, limits, expiry |
//! | [`http`] | the HTTP/1.1 subset of the relay API (request heads, responses) |
//! | [`connector`] | seed 000: the relay as a mailbox joining a proxy to an exit |
//! | [`lan`] | LAN announcements of an embedded relay (no relay configured) |
//! | [`lobby`] | the lobby packets of seed 003 |
//! | [`lobby_pake`] | the lobby PAKE (Argon2id + SPAKE2 bound to both identities) |
//! | [`lobby_relay`] | the relay's lobby: uids, broadcast, forwarding rules, pairs |
//! | [`policy`] | an exit's egress policy: default refusals, --allow/--deny rules |
//! | [`socks`] | SOCKS5 and HTTP CONNECT for the local proxy |
//! | [`staple`] | the stapling hello and reply (seed 001, steps 11–17) |
//! | [`session`] | the Noise `NNpsk0` handshake and the AEAD record layer |
//! | [`aead`] | the record layer's AES-256-GCM on the fastest library for this CPU |
//! | [`transfer`] | transfer messages and the receiving state machine |

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod aead;
pub mod api;
pub mod channels;
pub mod code;
pub mod connector;
pub mod fuzzing;
pub mod http;
pub mod lan;
pub mod lobby;
pub mod lobby_pake;
pub mod lobby_relay;
pub mod mux;
pub mod pair;
pub mod pake;
pub mod policy;
pub mod session;
pub mod socks;
pub mod staple;
pub mod transfer;
pub mod wire;
