//! One module per subcommand.

pub mod receive;
pub mod relay;
pub mod send;

use crate::args::RelayOpt;
use crate::config::Config;

/// The relay to use: flag, then `BURROW_RELAY` (both through clap), then the
/// config file. Returns the address and whether the receiver must be told it.
pub fn resolve_relay(opt: &RelayOpt, cfg: &Config) -> Option<(String, bool)> {
    match (&opt.relay, &cfg.relay) {
        (Some(r), _) if !r.trim().is_empty() => Some((r.clone(), true)),
        (_, Some(r)) if !r.trim().is_empty() => Some((r.clone(), false)),
        _ => None,
    }
}
