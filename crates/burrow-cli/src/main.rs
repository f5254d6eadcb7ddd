//! The `burrow` command: a thin layer over `burrow-node` and `burrow-relay`.

// Doc comments here are clap's `--help` text, written for a terminal
// (`HOST[:PORT]`), not rustdoc links.
#![allow(rustdoc::broken_intra_doc_links)]

mod args;
mod cmd;
mod config;
mod ui;

use clap::Parser;

use args::{Cli, Command};

fn main() {
    // Users see a sentence, never a backtrace.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("burrow: internal error: {info}. Please report this.");
    }));
    let cli = Cli::parse();
    let filter = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BURROW_LOG").unwrap_or_else(|_| filter.into()),
        )
        .init();
    // The exit, the proxy and a transfer each run their connection on a
    // single thread: every byte passes the same tasks in turn, and handing
    // them between worker threads cost 15% more CPU per byte and 20-30% of
    // the tunnel's throughput (docs/benchmarks.md); a transfer's file reads
    // and writes run on a blocking worker beside it. The relay, serving many
    // connections, gets two worker threads.
    // A mesh node likewise: its links carry little but keepalives and
    // gossip, and one thread keeps its memory small (docs/benchmarks.md).
    let single = matches!(
        &cli.command,
        Command::Exit(_)
            | Command::Proxy(_)
            | Command::Send(_)
            | Command::Receive(_)
            | Command::Node(_)
            | Command::Fetch(_)
    );
    let rt = if single {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            std::process::exit(1);
        }
    };
    let json = matches!(&cli.command, Command::Send(a) if a.json)
        || matches!(&cli.command, Command::Receive(a) if a.json);
    let code = rt.block_on(async {
        tokio::select! {
            r = run(cli) => match r {
                Ok(()) => 0,
                Err((msg, code)) => {
                    if json {
                        ui::emit(serde_json::json!({"event": "error", "message": msg, "exit_code": code}));
                    }
                    eprintln!("error: {msg}");
                    code
                }
            },
            _ = tokio::signal::ctrl_c() => {
                eprintln!("\ninterrupted");
                130
            }
        }
    });
    // Don't wait for blocking file or socket work still in flight.
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    std::process::exit(code);
}

async fn run(cli: Cli) -> Result<(), (String, i32)> {
    let cfg = config::load(cli.config.as_deref()).map_err(|e| (format!("{e:#}"), 2))?;
    let node = |e: burrow_node::Error| (e.to_string(), e.kind().exit_code());
    match cli.command {
        Command::Send(a) => cmd::send::run(a, &cfg).await.map_err(node),
        Command::Receive(a) => cmd::receive::run(a, &cfg).await.map_err(node),
        Command::Relay(a) => cmd::relay::run(a).await.map_err(|e| (format!("{e:#}"), 1)),
        Command::Id { json } => cmd::id(json).map_err(node),
        Command::Pair(a) => cmd::pair(a, &cfg).await.map_err(node),
        Command::Exit(a) => cmd::tunnel::exit(a, &cfg).await.map_err(node),
        Command::Proxy(a) => cmd::tunnel::proxy(a, &cfg).await.map_err(node),
        Command::Peers { json } => cmd::peers(json).map_err(node),
        Command::Unpair { name } => cmd::unpair(&name).map_err(node),
        Command::Node(a) => cmd::node::run(a, &cfg).await.map_err(node),
        Command::Directory(a) => cmd::onion::directory(a).await.map_err(node),
        Command::Fetch(a) => cmd::onion::fetch(a, &cfg).await.map_err(node),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "burrow", &mut std::io::stdout());
            Ok(())
        }
    }
}
