//! One module per subcommand.

pub mod receive;
pub mod relay;
pub mod send;

use burrow_node::Error;
use burrow_node::identity::Identity;

use crate::args::RelayOpt;

/// `burrow id`: this installation's fingerprint (the identity is created on first use).
pub fn id(json: bool) -> Result<(), Error> {
    let path = Identity::default_path()
        .ok_or_else(|| Error::Usage("neither XDG_DATA_HOME nor HOME is set".into()))?;
    let me = Identity::load_or_create(&path)?;
    let fp = me.public().fingerprint();
    if json {
        crate::ui::emit(serde_json::json!({"fingerprint": fp, "key_file": path.display().to_string()}));
    } else {
        println!("{fp}");
        eprintln!("(identity key: {})", path.display());
    }
    Ok(())
}
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
