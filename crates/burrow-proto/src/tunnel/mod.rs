//! Tunnels (seed 000 now; the mesh's and circuits' streams later): streams
//! multiplexed over one session, the exit's egress policy, and the proxy's
//! local SOCKS5 / HTTP CONNECT front.
//!
//! ```text
//! app --SOCKS5/CONNECT--> proxy (socks) ==mux streams over Noise XX==> exit (policy) --TCP--> destination
//! ```
//!
//! | module | owns |
//! |---|---|
//! | [`mux`] | streams over one session: open, data, windows, half-close, resets |
//! | [`policy`] | an exit's egress policy: default refusals, --allow/--deny rules |
//! | [`socks`] | SOCKS5 and HTTP CONNECT for the local proxy |

pub mod mux;
pub mod policy;
pub mod socks;
