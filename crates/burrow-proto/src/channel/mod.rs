//! Channel mode (seed 001): a short spoken code meets two peers at the relay.
//!
//! ```text
//! sender                         relay                        recipient
//!   code = <channel>-<w>-<w>-<w>  (code)
//!   POST /join {channel, role}  ------>  table: join, two IPs, expiry  <------ POST /join
//!   SPAKE2 X, Y, hh_k, h_k via POST /channel (long-polls)             (pake)
//!   "BRWS" staple hello ------>  paired with the waiting partner  <------ "BRWS"   (crate::staple)
//!   Noise NNpsk0 with the PAKE key, then the transfer                 (crate::session, crate::transfer)
//! ```
//!
//! | module | owns |
//! |---|---|
//! | [`code`] | transfer codes `<channel>-<word>-<word>-<word>` |
//! | [`pake`] | SPAKE2 + key confirmation (steps 2–10) |
//! | [`api`] | JSON bodies of the relay's HTTP API |
//! | [`http`] | the HTTP/1.1 subset of that API (request heads, responses) |
//! | [`table`] | the relay's channel table: joins, steps, limits, expiry |
//! | [`lan`] | LAN announcements of an embedded relay (no relay configured) |
//! | [`race`] | the rule that picks a session's path: direct connections vs the relay |

pub mod api;
pub mod code;
pub mod http;
pub mod lan;
pub mod pake;
pub mod race;
pub mod table;
