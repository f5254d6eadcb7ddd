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
        ..Default::default()
    };
    cfg.table.idle_ttl = Duration::from_secs(args.idle_timeout.max(1));
    cfg.lobby.lobby_timeout = Duration::from_secs(args.lobby_timeout.max(1));
    cfg.table.max_channels_per_ip = args.max_channels_per_ip.max(1);
    let relay = Relay::bind(cfg)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = relay.local_addr()?;
    eprintln!("burrow relay listening on {addr}");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = relay.serve() => {}
        _ = tokio::signal::ctrl_c() => eprintln!("stopping"),
        _ = term.recv() => eprintln!("stopping"),
    }
    Ok(())
}
