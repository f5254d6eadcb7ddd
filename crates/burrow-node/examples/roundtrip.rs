//! A relay, a sender and a receiver in one process: sends this example's own
//! source file through a relay on 127.0.0.1 and checks it arrived.
//!
//! Run with `cargo run --example roundtrip -p burrow-node`.

use burrow_node::{Code, Decision, Event, Observer, OfferInfo, Sink, Source, Transfer};
use burrow_relay::{Relay, RelayConfig};

/// Prints events; accepts every offer; hands the code to the receiver.
struct Show {
    who: &'static str,
    code_tx: Option<tokio::sync::oneshot::Sender<String>>,
}

impl Observer for Show {
    fn event(&mut self, e: Event) {
        println!("{}: {e:?}", self.who);
        if let (Event::Code(c), Some(tx)) = (&e, self.code_tx.take()) {
            let _ = tx.send(c.clone());
        }
    }

    fn decide(&mut self, offer: &OfferInfo) -> Decision {
        println!(
            "{}: accepting {} file(s), {} bytes",
            self.who, offer.files, offer.total
        );
        Decision::Accept
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let relay = Relay::bind(RelayConfig {
        listen: "127.0.0.1:0".parse()?,
        ..Default::default()
    })
    .await?
    .spawn()?;
    let addr = relay.addr().to_string();

    let (tx, rx) = tokio::sync::oneshot::channel();
    let sender = Transfer::builder().relay(&addr).build()?;
    let me = std::path::PathBuf::from(file!());
    let sending = tokio::spawn(async move {
        sender
            .send(
                Source::Paths(vec![me]),
                Show {
                    who: "sender",
                    code_tx: Some(tx),
                },
            )
            .await
    });

    let code = Code::parse(&rx.await?)?;
    let out = std::env::temp_dir().join(format!("burrow-example-{}", std::process::id()));
    let report = Transfer::builder()
        .relay(&addr)
        .build()?
        .receive(
            &code,
            Sink::Dir(out.clone()),
            Show {
                who: "receiver",
                code_tx: None,
            },
        )
        .await?;
    sending.await??;
    println!("saved {:?}", report.saved);
    assert_eq!(std::fs::read(&report.saved[0])?, std::fs::read(file!())?);
    std::fs::remove_dir_all(out)?;
    Ok(())
}
