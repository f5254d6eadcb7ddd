//! `burrow exit` and `burrow proxy`.

use std::sync::Arc;

use burrow_node::Error;
use burrow_node::meet::relay_client::RelayClient;
use burrow_node::tunnel::{ExitConfig, Proxy, ProxyConfig, RelayTrust, Via, run_exit};
use burrow_proto::tunnel::mux::Host;
use burrow_proto::tunnel::policy::{Policy, Rule};

use crate::args::{ExitArgs, ProxyArgs};
use crate::config::Config;

fn relay_of(flag: &Option<String>, cfg: &Config) -> Result<(RelayClient, RelayTrust), Error> {
    let raw = flag
        .clone()
        .filter(|r| !r.trim().is_empty())
        .or_else(|| cfg.relay.clone())
        .ok_or_else(|| Error::Usage("a relay is needed: --relay HOST:PORT[#FINGERPRINT]".into()))?;
    let (addr, trust) = RelayTrust::parse(&raw, RelayTrust::default_known());
    Ok((RelayClient::new(&addr), trust))
}

fn log() -> Arc<dyn Fn(String) + Send + Sync> {
    Arc::new(|l| eprintln!("{l}"))
}

/// The egress policy of `--allow` / `--deny` (as for `burrow exit`).
pub(crate) fn policy_of(allow: &[String], deny: &[String]) -> Result<Policy, Error> {
    let parse = |v: &[String]| -> Result<Vec<Rule>, Error> {
        v.iter()
            .map(|r| Rule::parse(r).map_err(|e| Error::Usage(e.to_string())))
            .collect()
    };
    Ok(Policy::new(
        parse(allow)?,
        parse(deny)?,
        burrow_node::meet::paths::local_addresses(),
    ))
}

/// `burrow exit`.
pub async fn exit(args: ExitArgs, cfg: &Config) -> Result<(), Error> {
    let (relay, trust) = relay_of(&args.relay, cfg)?;
    let policy = policy_of(&args.allow, &args.deny)?;
    let peers = super::book()?;
    if peers.peers().is_empty() {
        eprintln!("warning: no paired peers yet, so nobody can use this exit (`burrow pair`)");
    }
    run_exit(ExitConfig {
        relay,
        trust,
        me: Arc::new(super::my_identity()?),
        peers: Arc::new(peers),
        policy: Arc::new(policy),
        log: log(),
        idle: std::time::Duration::from_secs(args.idle_timeout.max(1)),
    })
    .await
}

fn host_port(s: &str) -> Result<(Host, u16), Error> {
    let bad = || Error::Usage(format!("{s:?} is not HOST:PORT"));
    let (h, p) = s.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = p.parse().map_err(|_| bad())?;
    let h = h.trim_start_matches('[').trim_end_matches(']');
    let host = match h.parse() {
        Ok(ip) => Host::Ip(ip),
        Err(_) if !h.is_empty() => Host::Name(h.to_owned()),
        Err(_) => return Err(bad()),
    };
    Ok((host, port))
}

/// `burrow proxy NAME`.
pub async fn proxy(args: ProxyArgs, cfg: &Config) -> Result<(), Error> {
    if let Some(hops) = args.hops {
        return super::onion::proxy(args, hops, cfg).await;
    }
    let exit_name = args.exit.clone().unwrap_or_default();
    let book = super::book()?;
    let exit = book
        .find(&exit_name)
        .ok_or_else(|| {
            Error::Usage(format!(
                "no paired peer {}: see `burrow peers` (a mesh node must be paired first: `burrow pair --mesh`)",
                burrow_proto::transfer::escape_display(&exit_name)
            ))
        })?
        .key;
    let via = if args.mesh {
        Via::Mesh(super::node::addresses_of(&exit).await?)
    } else {
        let (relay, trust) = relay_of(&args.relay, cfg)?;
        Via::Relay { relay, trust }
    };
    let proxy = Proxy::new(ProxyConfig {
        via,
        me: Arc::new(super::my_identity()?),
        exit,
        log: log(),
        idle: std::time::Duration::from_secs(args.idle_timeout.max(1)),
        open_wait: std::time::Duration::from_secs(args.open_timeout.max(1)),
    });
    let bind = |a: &str| {
        let a = a.to_owned();
        async move {
            tokio::net::TcpListener::bind(&a)
                .await
                .map_err(|e| Error::Usage(format!("cannot listen on {a}: {e}")))
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    for f in &args.forward {
        let (local, target) = f
            .split_once('=')
            .ok_or_else(|| Error::Usage(format!("--forward {f}: expected LOCAL=HOST:PORT")))?;
        let (host, port) = host_port(target)?;
        let l = bind(local).await?;
        eprintln!(
            "forwarding {} to {target} through {}",
            l.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            exit_name
        );
        tasks.spawn(proxy.clone().forward(l, host, port));
    }
    let l = bind(&args.listen).await?;
    eprintln!(
        "proxy listening on {} (SOCKS5 and HTTP CONNECT) through {}",
        l.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        exit_name
    );
    tasks.spawn(proxy.serve(l));
    while tasks.join_next().await.is_some() {}
    Ok(())
}
