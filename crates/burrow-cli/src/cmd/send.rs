//! `burrow send`.

use std::path::Path;
use std::time::Duration;

use burrow_node::{Code, Compress, Error, Source, Transfer};

use crate::args::{CompressArg, SendArgs};
use crate::config::Config;
use crate::ui::{Mode, Ui};

/// Runs `burrow send`.
pub async fn run(args: SendArgs, cfg: &Config) -> Result<(), Error> {
    // No relay configured: LAN mode (a relay served here, announced on the network).
    let relay = super::resolve_relay(&args.relay, cfg);
    let mut b = Transfer::builder()
        .idle_timeout(args.timeout.duration())
        .relay_only(args.path.relay_only || cfg.relay_only.unwrap_or(false))
        .reconnect_for(Duration::from_secs(args.path.reconnect))
        .exclude(args.exclude.clone())
        .compress(match args.compress {
            CompressArg::Auto => Compress::Auto,
            CompressArg::Always => Compress::Always,
            CompressArg::Never => Compress::Never,
        });
    if let Some(c) = &args.code {
        let code = Code::parse(c).map_err(|e| Error::Usage(format!("--code: {e}")))?;
        if code.secret_bits() < 30.0 && args.json.then_some(()).is_none() {
            eprintln!("warning: this code is easy to guess; a generated code has 33 bits");
        }
        b = b.code(code);
    }
    if let Some((r, _)) = &relay {
        b = b.relay(r.clone());
    }
    if let Some(w) = args.wait {
        b = b.wait_for_peer(Duration::from_secs(w));
    }
    let t = b.build()?;
    let source = if let Some(text) = args.text {
        Source::Text(text)
    } else if args.paths.len() == 1 && args.paths[0] == Path::new("-") {
        Source::Stream(Box::new(std::io::stdin()))
    } else {
        if args.paths.iter().any(|p| p == Path::new("-")) {
            return Err(Error::Usage(
                "'-' (standard input) cannot be combined with other paths".into(),
            ));
        }
        Source::Paths(args.paths)
    };
    let hint = relay.and_then(|(r, tell)| tell.then_some(r));
    // The receive command as the other machine must type it.
    let relay_flag = hint.as_ref().map(|r| format!("--relay {r} ")).unwrap_or_default();
    let mode = Mode::detect(args.json);
    let mut ui = Ui::new(mode, hint, false, false);
    ui.qr = args.qr;
    if let Some(name) = &args.to {
        let peer = super::book()?
            .find(name)
            .ok_or_else(|| {
                Error::Usage(format!(
                    "no paired peer {}: see `burrow peers` (pair a node first: `burrow pair --mesh`)",
                    burrow_proto::transfer::escape_display(name)
                ))
            })?
            .key;
        let addrs = super::node::addresses_of(&peer).await?;
        let me = super::my_identity()?;
        t.send_to_node(&addrs, &me, &peer, source, ui).await?;
    } else if args.lobby {
        let password = args.password.clone().unwrap_or_else(burrow_node::lobby_password);
        if mode == Mode::Json {
            crate::ui::emit(serde_json::json!({"event": "password", "password": password}));
        } else {
            eprintln!("password: {password}");
            eprintln!("On the other machine, run:\n\n    burrow receive {relay_flag}--lobby {password}\n");
        }
        t.send_lobby(&password, source, ui).await?;
    } else {
        t.send(source, ui).await?;
    }
    Ok(())
}
