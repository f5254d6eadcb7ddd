//! Seed 004 on the command line: `burrow directory`, `burrow fetch`,
//! `burrow proxy --hops N`.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

use burrow_node::Error;
use burrow_node::onion::{
    DirectoryConfig, OnionClient, OnionClientConfig, fetch as fetch_page, run_directory, serve_proxy,
};

use crate::args::{DirectoryArgs, FetchArgs, ProxyArgs};
use crate::config::Config;

fn log() -> burrow_node::tunnel::Log {
    Arc::new(|l| eprintln!("{l}"))
}

/// `burrow directory`.
pub async fn directory(args: DirectoryArgs) -> Result<(), Error> {
    let listen = tokio::net::lookup_host(&args.listen)
        .await
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| Error::Usage(format!("--listen {:?} is not HOST:PORT", args.listen)))?;
    let peers = args
        .peers
        .iter()
        .map(|p| p.parse().map_err(Error::Usage))
        .collect::<Result<Vec<_>, _>>()?;
    run_directory(DirectoryConfig {
        me: Arc::new(super::my_identity()?),
        listen,
        peers,
        lifetime: Duration::from_secs(args.lifetime.max(60)),
        max_per_ip: args.max_per_ip.max(1),
        log: log(),
    })
    .await
}

async fn client(hops: usize, flags: &[String], cfg: &Config, announce: bool) -> Result<OnionClient, Error> {
    let directories = cfg.directories(flags)?;
    OnionClient::start(OnionClientConfig {
        directories,
        hops,
        log: log(),
        announce,
        bind: None,
    })
    .await
}

/// `burrow fetch`.
pub async fn fetch(args: FetchArgs, cfg: &Config) -> Result<(), Error> {
    // The URL first: a typo fails before any network.
    burrow_node::onion::parse_http_url(&args.url)?;
    let c = client(args.hops, &args.directories, cfg, false).await?;
    let tty = std::io::stderr().is_terminal() && args.output.is_some();
    let bar = tty.then(|| {
        let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        b.set_style(
            ProgressStyle::with_template("{spinner} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    });
    let mut progress = |got: u64, total: Option<u64>| {
        if let Some(b) = &bar {
            if let Some(t) = total {
                b.set_length(t);
            }
            b.set_position(got);
        }
    };
    let report = match &args.output {
        Some(path) => {
            let mut f = tokio::fs::File::create(path).await.map_err(|e| Error::Io {
                path: path.clone(),
                source: e,
            })?;
            fetch_page(&c, &args.url, &mut f, &mut progress).await?
        }
        None => {
            let mut out = tokio::io::stdout();
            fetch_page(&c, &args.url, &mut out, &mut progress).await?
        }
    };
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if args.json {
        eprintln!("{}", serde_json::to_string(&report).unwrap_or_default());
    } else if args.output.is_some() {
        eprintln!(
            "HTTP {}: {} in {:.0} ms through {} hops",
            report.status,
            HumanBytes(report.bytes),
            report.total_ms,
            report.path.len()
        );
    }
    if report.status >= 400 {
        return Err(Error::PeerClosed(format!(
            "the server answered HTTP {}",
            report.status
        )));
    }
    Ok(())
}

/// `burrow proxy --hops N`.
pub async fn proxy(args: ProxyArgs, hops: usize, cfg: &Config) -> Result<(), Error> {
    let l = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| Error::Usage(format!("cannot listen on {}: {e}", args.listen)))?;
    let c = client(hops, &args.directories, cfg, true).await?;
    let n = c.list().map(|l| l.entries.len()).unwrap_or(0);
    eprintln!(
        "SOCKS5 and HTTP CONNECT on {}: every connection through a {hops}-hop circuit ({n} nodes in the list)",
        args.listen
    );
    serve_proxy(c, l).await;
    Ok(())
}
