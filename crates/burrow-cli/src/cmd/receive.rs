//! `burrow receive`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use burrow_node::{Code, Error, Sink, Transfer, escape_display};

use crate::args::ReceiveArgs;
use crate::config::Config;
use crate::ui::{Mode, Ui, emit};

/// Runs `burrow receive`.
pub async fn run(args: ReceiveArgs, cfg: &Config) -> Result<(), Error> {
    let typed = match &args.code {
        Some(c) => c.clone(),
        None if std::io::stdin().is_terminal() && std::io::stderr().is_terminal() => {
            crate::ui::prompt_code().ok_or_else(|| Error::Usage("no code entered".into()))?
        }
        None => return Err(Error::Usage("no code given: burrow receive CODE".into())),
    };
    // No relay configured: look for the sender on the local network.
    let relay = super::resolve_relay(&args.relay, cfg);
    let sink = match &args.out {
        Some(p) if p == Path::new("-") => {
            if args.json {
                return Err(Error::Usage(
                    "--out - and --json both want standard output".into(),
                ));
            }
            Sink::Stdout
        }
        Some(p) => Sink::Dir(p.clone()),
        None => Sink::Auto(PathBuf::from(".")),
    };
    let mut b = Transfer::builder();
    if let Some((r, _)) = relay {
        b = b.relay(r);
    }
    if let Some(w) = args.wait {
        b = b.wait_for_peer(Duration::from_secs(w));
    }
    let t = b
        .overwrite(args.overwrite)
        .discover_for(Duration::from_secs(args.lan_wait))
        .idle_timeout(args.timeout.duration())
        .relay_only(args.path.relay_only || cfg.relay_only.unwrap_or(false))
        .verify_all(args.verify || cfg.verify.unwrap_or(false))
        .reconnect_for(Duration::from_secs(args.path.reconnect))
        .build()?;
    let mode = Mode::detect(args.json);
    let ui = Ui::new(mode, None, args.yes, args.overwrite);
    let report = if args.lobby {
        if t.relay_addr().is_none() {
            return Err(Error::Usage(
                "--lobby needs a relay (--relay, BURROW_RELAY or the config file)".into(),
            ));
        }
        t.receive_lobby(typed.trim(), sink, ui).await?
    } else {
        let code = Code::parse(typed.trim().trim_end_matches('-'))
            .map_err(|e| Error::Usage(format!("invalid code: {e}")))?;
        t.receive(&code, sink, ui).await?
    };
    if let Some(text) = report.text {
        if mode == Mode::Json {
            emit(serde_json::json!({"event": "text", "text": text}));
        } else {
            let mut out = std::io::stdout().lock();
            // On a terminal, escape control characters: a message must not drive the terminal.
            let shown = if std::io::stdout().is_terminal() {
                text.split('\n')
                    .map(escape_display)
                    .collect::<Vec<_>>()
                    .join("\n")
            } else {
                text
            };
            let _ = writeln!(out, "{shown}");
        }
    } else if mode != Mode::Json {
        for p in report.saved.iter().take(5) {
            eprintln!("saved {}", escape_display(&p.display().to_string()));
        }
        if report.saved.len() > 5 {
            eprintln!("saved {} more", report.saved.len() - 5);
        }
    }
    Ok(())
}
