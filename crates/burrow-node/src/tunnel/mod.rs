//! Exit and proxy (seed 000): a paired machine's internet connection used
//! through a relay that cannot read or alter the traffic.
//!
//! - Both sides authenticate the relay (Noise XX; its fingerprint is pinned
//!   with `ADDR#FINGERPRINT` or remembered on first use) and prove their own
//!   identity key to it.
//! - The exit keeps a mailbox connection under its key and reconnects by
//!   itself; for each session the relay announces, it opens a new connection,
//!   runs Noise XX end to end with the proxy, and checks the proxy's key is
//!   paired. The proxy checks the exit's key is the paired one it asked for.
//! - Streams are multiplexed ([`burrow_proto::tunnel::mux`]) with per-stream credit;
//!   the exit resolves names and checks every address against its
//!   [`Policy`](burrow_proto::tunnel::policy::Policy) before connecting.
//!
//! | file | owns |
//! |---|---|
//! | `relay.rs` | the authenticated link to the relay's connector, the end-to-end handshake |
//! | `session.rs` | the mux driver: one tunnel's frames, streams, flow control, liveness |
//! | `exit.rs` | `burrow exit`: the mailbox, sessions, destination connects under the policy |
//! | `proxy.rs` | `burrow proxy`: the local SOCKS5 / HTTP CONNECT listener and its tunnel |

pub(crate) mod exit;
pub(crate) mod proxy;
pub(crate) mod relay;
mod session;

use std::sync::{Arc, Mutex};
use std::time::Duration;

pub(crate) use exit::serve_mesh_tunnel;
pub use exit::{ExitConfig, run_exit};
pub use proxy::{Proxy, ProxyConfig, Via};
pub use relay::RelayTrust;
pub(crate) use session::Meter;

use exit::shown_host;
use relay::{end_to_end, relay_link};
use session::{Framing, Inflow, OnOpen, Opening, Tunnel};

/// How long a connect to a destination may take at the exit.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes with the relay and the other side.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// Mailbox keepalive.
pub(crate) const PING_EVERY: Duration = Duration::from_secs(20);

/// Where the exit and the proxy say what happens (a line for the user).
pub type Log = Arc<dyn Fn(String) + Send + Sync>;

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
