//! The config file: `$BURROW_CONFIG`, else `$XDG_CONFIG_HOME/burrow/config.toml`,
//! else `~/.config/burrow/config.toml`. Flags beat environment variables,
//! which beat the file.
//!
//! ```toml
//! relay = "relay.example.org:9009"
//! relay_only = false   # true: never connect straight to the other side
//! verify = false       # true: `receive` hashes every file again (as --verify)
//! ```

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

/// Settings from the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Default relay, HOST[:PORT].
    pub relay: Option<String>,
    /// Never use a direct path.
    pub relay_only: Option<bool>,
    /// Receiver: hash every file again.
    pub verify: Option<bool>,
}

/// The default config path, if a home is known.
pub fn default_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".config")))?;
    Some(base.join("burrow").join("config.toml"))
}

/// Loads the file named by `--config`/`BURROW_CONFIG` (which must exist), or
/// the default one (which may be missing).
pub fn load(explicit: Option<&Path>) -> anyhow::Result<Config> {
    let (path, must_exist) = match explicit {
        Some(p) => (p.to_path_buf(), true),
        None => match default_path() {
            Some(p) => (p, false),
            None => return Ok(Config::default()),
        },
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => return Ok(Config::default()),
        Err(e) => return Err(e).with_context(|| format!("reading config file {}", path.display())),
    };
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}
