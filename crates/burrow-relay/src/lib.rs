//! The burrow relay: a rendezvous and pipe that only ever sees ciphertext.
//!
//! One TCP port serves every relay protocol; the first four bytes of a
//! connection say which (the registry is
//! [`burrow_proto::wire::registry`]):
//!
//! | first bytes | protocol |
//! |---|---|
//! | `GET ` / `POST` | the HTTP API (seed 001): `/join`, `/channel`, `/health`, `/metrics` |
//! | `BRWS` | a channel's stapling connection (seed 001 steps 11–17), see [`burrow_proto::staple`] |
//! | `BRWT` | a reconnecting pair's token hello |
//! | `BRWI` | a lobby pair's second connection, by relay-given identity |
//! | four hex digits | the lobby (seed 003), driven by `lobby.rs` around [`burrow_proto::lobby::relay`] |
//! | the connector magic | seed 000's connector: exits' mailboxes and proxies' connects ([`connector`]) |
//! | anything else | refused with a reason and closed |
//!
//! The rules of the channel API live in [`burrow_proto::channel::table`] and
//! the lobby's in [`burrow_proto::lobby::relay`]; this crate is the tokio
//! layer around them: it parses HTTP, wakes long-polls, holds the first
//! stapling connection until its partner arrives, and pipes bytes between
//! the two. Every connection is bounded: each address holds at most its
//! share of the slots (an IPv4 address or an IPv6 /64), a full relay makes room from slow
//! greeters and unvouched-for waiters before it refuses anyone
//! (`admission.rs`), the whole greeting has one deadline, bodies and heads
//! have maximum sizes, and a bad connection only ever closes itself.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod admission;
pub mod channel;
pub mod connector;
mod lobby;
pub mod metrics;
mod server;
mod staple;

pub use connector::RelayKey;
pub use server::{Relay, RelayConfig, RelayHandle, drain_for};
