//! Meeting a peer: everything between "I have a code (or a key)" and "here
//! is an encrypted connection to the right peer".
//!
//! | module | owns |
//! |---|---|
//! | [`relay_client`] | the relay's HTTP API calls and its stapling connection |
//! | [`rendezvous`] | seed 001 steps 1–17 for each side (join, PAKE, confirm, staple) |
//! | [`paths`] | relay and direct connections, the race between them, reconnects |
//! | [`lan`] | no relay configured: serve one and announce it, or find one |
//! | [`lobby`] | lobby mode (seed 003): wait as a sender, try every sender as a receiver |
//! | `handshake` | the one Noise handshake driver over any async stream |

pub(crate) mod handshake;
pub mod lan;
pub mod lobby;
pub mod paths;
pub mod relay_client;
pub mod rendezvous;
