//! `burrow relay`.

use std::time::Duration;

use anyhow::Context;
use burrow_relay::{Relay, RelayConfig};

use crate::args::RelayArgs;

/// Runs the relay until Ctrl-C or SIGTERM.
pub async fn run(args: RelayArgs) -> anyhow::Result<()> {
    let listen = tokio::net::lookup_host(&args.listen)
        .await
        .with_context(|| format!("--listen {}", args.listen))?
        .next()
        .with_context(|| format!("--listen {}: no address", args.listen))?;
    let mut cfg = RelayConfig {
        listen,
        handshake_timeout: Duration::from_secs(args.handshake_timeout.max(1)),
        staple_timeout: Duration::from_secs(args.staple_timeout.max(1)),
        max_connections: args.max_connections.max(1),
        max_per_ip: args.max_per_ip.unwrap_or(0),
        ..Default::default()
    };
    cfg.table.idle_ttl = Duration::from_secs(args.idle_timeout.max(1));
    cfg.lobby.lobby_timeout = Duration::from_secs(args.lobby_timeout.max(1));
    cfg.table.max_channels_per_ip = args.max_channels_per_ip.max(1);
    cfg.table.max_channels = args.max_channels.max(1);
    let key_path = match &args.key {
        Some(p) => p.clone(),
        None => burrow_node::keys::identity::default_path()
            .map(|p| p.with_file_name("relay.key"))
            .context("neither XDG_DATA_HOME nor HOME is set: pass --key FILE")?,
    };
    let id = burrow_node::keys::identity::load_or_create(&key_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    cfg.key = Some(std::sync::Arc::new(burrow_relay::RelayKey {
        x25519: zeroize::Zeroizing::new(*id.x25519_secret()),
        ed25519_public: id.public().ed25519,
    }));
    let asked = cfg.max_connections;
    let (fds, lowered) = cfg.fit_fd_limit();
    if lowered {
        eprintln!(
            "warning: the open-file limit ({fds}) cannot hold --max-connections {asked}: serving at most {} (raise `ulimit -n`)",
            cfg.max_connections
        );
    }
    let fingerprint = id.public().fingerprint();
    let relay = Relay::bind(cfg)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = relay.local_addr()?;
    eprintln!("burrow relay listening on {addr}");
    eprintln!(
        "relay key fingerprint: {fingerprint} (exits and proxies may pin it: --relay HOST:PORT#{fingerprint})"
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = relay.serve() => {}
        _ = tokio::signal::ctrl_c() => eprintln!("stopping"),
        _ = term.recv() => eprintln!("stopping"),
    }
    Ok(())
}
