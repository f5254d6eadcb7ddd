//! The burrow relay: a rendezvous and pipe that only ever sees ciphertext.
//!
//! One TCP port serves every relay protocol; the first bytes of a connection
//! say which:
//!
//! | first bytes | protocol |
//! |---|---|
//! | `GET ` / `POST` | the HTTP API (seed 001): `/join`, `/channel`, `/health`, `/metrics` |
//! | `BRWS` | a stapling connection (seed 001 steps 11–17), see [`burrow_proto::staple`] |
//! | anything else | refused and closed (the lobby of seed 003 will claim 4 hex digits) |
//!
//! The rules of the channel API live in [`burrow_proto::channel::table`]; this crate
//! is the tokio layer around them: it parses HTTP, wakes long-polls, holds the
//! first stapling connection of a channel until its partner arrives, and pipes
//! bytes between the two. Every connection is bounded (a semaphore caps how
//! many are open, every read before stapling has a deadline, bodies and heads
//! have maximum sizes), and a bad connection only ever closes itself.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod connector;
pub mod http;
mod lobby;
pub mod metrics;
mod server;
pub mod shares;

pub use connector::RelayKey;
pub use server::{Relay, RelayConfig, RelayHandle};
