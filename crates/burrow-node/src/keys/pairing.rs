//! `burrow pair`: two installations exchange their public identities inside
//! a session keyed by a spoken code (the channel rendezvous of seed 001,
//! then the same Noise `NNpsk0` handshake), each signing what it sends.

use std::time::Duration;

use burrow_proto::channel::code::Code;
use burrow_proto::keys::pair::PairHello;
use burrow_proto::transfer::escape_display;

use burrow_proto::channel::api::Role;

use crate::error::Error;
use crate::keys::identity::{Identity, PublicIdentity};
use crate::meet::paths::{handshake, read_record, send_record};
use crate::meet::relay_client::RelayClient;
use crate::meet::rendezvous::{self, RendezvousOptions};

/// The other side, as it introduced itself (signature checked).
#[derive(Debug, Clone)]
pub struct Introduced {
    /// Its keys.
    pub key: PublicIdentity,
    /// The name it suggests for itself.
    pub name: String,
}

/// Runs a pairing. Without `code`, opens a channel and reports the code via
/// `on_code`; with one, joins it. `my_name` is the name suggested to the other side.
pub async fn pair(
    relay: &RelayClient,
    me: &Identity,
    my_name: &str,
    code: Option<Code>,
    opts: &RendezvousOptions,
    on_code: impl FnOnce(&Code),
) -> Result<Introduced, Error> {
    let (rv, role) = match code {
        None => {
            let code =
                Code::generate("0", &mut crate::platform::random).map_err(|e| Error::Usage(e.to_string()))?;
            (
                rendezvous::sender(relay, code, true, opts, on_code).await?,
                Role::Sender,
            )
        }
        Some(code) => (rendezvous::recipient(relay, &code, opts).await?, Role::Recipient),
    };
    let handle = rv.handle.clone();
    let res = exchange(rv, me, my_name, role).await;
    match &res {
        Ok(_) => handle.close("paired").await,
        Err(e) => handle.close(&format!("pairing failed: {e}")).await,
    }
    res
}

async fn exchange(
    rv: rendezvous::Rendezvous,
    me: &Identity,
    my_name: &str,
    role: Role,
) -> Result<Introduced, Error> {
    let limit = Duration::from_secs(30);
    let mut s = rv.stream;
    let (mut sealer, mut opener) =
        handshake(&mut s, &rv.key, &format!("pair {}", rv.channel), role, limit).await?;
    let binding = PairHello::binding(rv.key.as_bytes());
    let mine = me.public();
    let hello = PairHello {
        x25519: mine.x25519,
        ed25519: mine.ed25519,
        name: my_name.to_owned(),
        signature: me.sign(&PairHello::signed_bytes(
            &binding,
            &mine.x25519,
            &mine.ed25519,
            my_name,
        )),
    };
    let hello = hello
        .encode()
        .map_err(|e| Error::Usage(format!("cannot pair: {e}")))?;
    send_record(&mut s, &mut sealer, &hello).await?;
    // One record each way, then the connection ends.
    let mut inbox = burrow_proto::session::Inbox::new(0);
    let rec = read_record(&mut s, &mut opener, &mut inbox, limit).await?;
    let theirs = PairHello::decode(&rec)
        .map_err(|e| Error::Protocol(format!("bad pairing message from the other side: {e}")))?;
    let key = PublicIdentity {
        x25519: theirs.x25519,
        ed25519: theirs.ed25519,
    };
    let signed = PairHello::signed_bytes(&binding, &theirs.x25519, &theirs.ed25519, &theirs.name);
    if !key.verify(&signed, &theirs.signature) {
        return Err(Error::Integrity(format!(
            "{} did not prove it holds its key",
            escape_display(&theirs.name)
        )));
    }
    if key == mine {
        return Err(Error::Usage("this installation cannot pair with itself".into()));
    }
    Ok(Introduced {
        key,
        name: theirs.name,
    })
}
