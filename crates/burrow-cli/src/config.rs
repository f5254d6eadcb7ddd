//! The config file: `$BURROW_CONFIG`, else `$XDG_CONFIG_HOME/burrow/config.toml`,
//! else `~/.config/burrow/config.toml`. Flags beat environment variables,
//! which beat the file.
//!
//! ```toml
//! relay = "relay.example.org:9009"
//! relay_only = false   # true: never connect straight to the other side
//! verify = false       # true: `receive` hashes every file again (as --verify)
//! directories = ["FP1@10.0.0.1:9030", "FP2@10.0.0.2:9030", "FP3@10.0.0.3:9030"]   # onion circuits (seed 004)
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
    /// Onion directory authorities, `FINGERPRINT@HOST:PORT`.
    pub directories: Option<Vec<String>>,
}

impl Config {
    /// The directory authorities: the flags' if any, else
    /// BURROW_DIRECTORIES (comma-separated), else the file's.
    pub fn directories(
        &self,
        flags: &[String],
    ) -> Result<Vec<burrow_node::onion::DirectoryAddr>, burrow_node::Error> {
        let from_env: Vec<String> = std::env::var("BURROW_DIRECTORIES")
            .ok()
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let raw: Vec<String> = if !flags.is_empty() {
            flags.to_vec()
        } else if !from_env.is_empty() {
            from_env
        } else {
            self.directories.clone().unwrap_or_default()
        };
        raw.iter()
            .map(|s| s.parse().map_err(burrow_node::Error::Usage))
            .collect()
    }
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
