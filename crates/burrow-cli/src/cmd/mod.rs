//! One module per subcommand.

pub mod node;
pub mod onion;
pub mod receive;
pub mod relay;
pub mod send;
pub mod tunnel;

use burrow_node::Error;
use burrow_node::keys::identity::{self, Identity};
use burrow_node::keys::peers::PeerBook;

use crate::args::{PairArgs, RelayOpt};

pub(crate) fn my_identity() -> Result<Identity, Error> {
    let path = identity::default_path()
        .ok_or_else(|| Error::Usage("neither XDG_DATA_HOME nor HOME is set".into()))?;
    identity::load_or_create(&path)
}

pub(crate) fn book() -> Result<PeerBook, Error> {
    let path = PeerBook::default_path()
        .ok_or_else(|| Error::Usage("neither XDG_DATA_HOME nor HOME is set".into()))?;
    PeerBook::load(&path)
}

/// This machine's name, as a pairing name hint.
pub(crate) fn host_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let name: String = raw
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(64)
        .collect();
    if name.is_empty() { "burrow".into() } else { name }
}

/// `burrow pair [CODE] [--name NAME]`.
pub async fn pair(args: PairArgs, cfg: &Config) -> Result<(), Error> {
    if let Some(node) = &args.mesh {
        return node::pair(node, args.code.as_deref(), args.name.as_deref()).await;
    }
    let (relay, _) = resolve_relay(&args.relay, cfg).ok_or_else(|| {
        Error::Usage("pairing needs a relay both machines reach: pass --relay HOST:PORT".into())
    })?;
    let me = my_identity()?;
    let mut book = book()?;
    if let Some(n) = &args.name
        && !burrow_node::keys::peers::valid_name(n)
    {
        return Err(Error::Usage(format!(
            "{n:?} cannot name a peer: use 1-64 of A-Z a-z 0-9 . _ -"
        )));
    }
    let code = match &args.code {
        Some(c) => {
            Some(burrow_node::Code::parse(c.trim()).map_err(|e| Error::Usage(format!("invalid code: {e}")))?)
        }
        None => None,
    };
    let client = burrow_node::meet::relay_client::RelayClient::new(&relay);
    let opts = burrow_node::meet::rendezvous::RendezvousOptions::default();
    let peer = burrow_node::keys::pairing::pair(&client, &me, &host_name(), code, &opts, |c| {
        eprintln!("code: {}", c.reveal());
        eprintln!(
            "On the other machine, run:\n\n    burrow pair --relay {relay} {} --name NAME\n",
            c.reveal()
        );
    })
    .await?;
    let name = args.name.unwrap_or(peer.name);
    book.add(&name, peer.key)?;
    println!("paired with {name} ({})", peer.key.fingerprint());
    Ok(())
}

/// `burrow peers`.
pub fn peers(json: bool) -> Result<(), Error> {
    let book = book()?;
    for p in book.peers() {
        if json {
            crate::ui::emit(serde_json::json!({"name": p.name, "fingerprint": p.key.fingerprint()}));
        } else {
            println!("{}  {}", p.name, p.key.fingerprint());
        }
    }
    if book.peers().is_empty() && !json {
        eprintln!("no paired peers yet: `burrow pair`");
    }
    Ok(())
}

/// `burrow unpair NAME`.
pub fn unpair(name: &str) -> Result<(), Error> {
    let p = book()?.remove(name)?;
    println!("forgot {} ({})", p.name, p.key.fingerprint());
    Ok(())
}

/// `burrow id`: this installation's fingerprint (the identity is created on first use).
pub fn id(json: bool) -> Result<(), Error> {
    let me = my_identity()?;
    let path = identity::default_path().unwrap_or_default();
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
