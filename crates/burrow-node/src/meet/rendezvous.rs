//! Channel-mode rendezvous through a relay (seed 001, steps 1–17).
//!
//! Both functions end with a TCP connection stapled to the other peer and the
//! key both sides confirmed; the encrypted session starts on top of it.
//!
//! ```text
//! sender                                    recipient
//! 1  POST /join {role: sender}              5  POST /join {channel, role: recipient}
//! 2-3 POST /channel {x}                     5  POST /channel (long-poll until x)
//!    (code shown to the user)               6-7 POST /channel {y, hh_k}
//! 8  POST /channel (long-poll until y)     10 POST /channel (long-poll until h_k)
//! 8  check hh_k (abort: close "wrong code")    check h_k (abort: close "wrong code")
//! 9  POST /channel {h_k}
//! 11 staple connect                        13 staple connect
//! 16 POST /channel: stapled?
//! ```

use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use burrow_proto::channel::api::{ChannelRequest, ChannelState, JoinRequest, Role};
use burrow_proto::channel::code::Code;
use burrow_proto::channel::pake::{PakeError, RecipientStart, SenderStart, SessionKey};
use burrow_proto::staple::StapleHello;

use crate::error::Error;
use crate::meet::relay_client::RelayClient;
use crate::platform::OsRandom;

/// Reason text a peer posts when key confirmation fails.
const WRONG_CODE: &str = "wrong code";
/// How long a recipient waits for a sender to open its channel.
const SENDER_GRACE: Duration = Duration::from_secs(5);
/// One long-poll's length.
const POLL_MS: u64 = 25_000;

/// A stapled, key-confirmed connection to the other peer.
#[derive(Debug)]
pub struct Rendezvous {
    /// The stapled TCP connection (bytes go to the other peer through the relay).
    pub stream: TcpStream,
    /// The confirmed key for the Noise session.
    pub key: SessionKey,
    /// The channel (the Noise prologue context).
    pub channel: String,
    /// For closing the channel at the end (step 18).
    pub handle: ChannelHandle,
}

/// What a peer needs to act on its channel later.
#[derive(Debug, Clone)]
pub struct ChannelHandle {
    relay: RelayClient,
    channel: String,
    uuid: String,
}

impl ChannelHandle {
    fn req(&self) -> ChannelRequest {
        ChannelRequest {
            channel: self.channel.clone(),
            uuid: self.uuid.clone(),
            ..Default::default()
        }
    }

    /// Step 18: closes the channel with a reason (best effort).
    pub async fn close(&self, reason: &str) {
        let mut r = self.req();
        r.close = Some(true);
        r.reason = Some(reason.to_owned());
        let _ = self.relay.channel(&r).await;
    }

    /// Closes the channel with the reason of a failed step, so the other
    /// peer learns why (a confirmation failure is reported as "wrong code").
    async fn close_on_failure<T>(&self, res: &Result<T, Error>, who: &str) {
        if let Err(e) = res {
            let reason = match e {
                Error::WrongCode => WRONG_CODE.to_owned(),
                other => format!("{who} failed: {other}"),
            };
            self.close(&reason).await;
        }
    }

    /// Long-polls until `done` holds for the state, the channel closes, or `deadline`.
    async fn wait_for(
        &self,
        deadline: Option<Instant>,
        what: &str,
        done: impl Fn(&ChannelState) -> bool,
    ) -> Result<ChannelState, Error> {
        let mut seen = None;
        loop {
            let mut r = self.req();
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                return Err(Error::Timeout(format!("waited too long for {what}")));
            }
            r.wait_ms = Some(left.map_or(POLL_MS, |l| (l.as_millis() as u64).clamp(1, POLL_MS)));
            r.seen = seen;
            let st = self.relay.channel(&r).await?;
            if done(&st) {
                return Ok(st);
            }
            if st.closed {
                let reason = st.reason.unwrap_or_default();
                if reason.starts_with(WRONG_CODE) {
                    return Err(Error::WrongCode);
                }
                return Err(Error::PeerClosed(burrow_proto::transfer::escape_display(&reason)));
            }
            seen = Some(st.version);
        }
    }
}

fn unhex<const N: usize>(field: &str, s: Option<&str>) -> Result<[u8; N], Error> {
    let mut out = [0u8; N];
    hex_decode(s.unwrap_or_default(), &mut out)
        .ok_or_else(|| Error::RelayProtocol(format!("bad {field} from the relay")))?;
    Ok(out)
}

fn unhex_vec(field: &str, s: Option<&str>) -> Result<Vec<u8>, Error> {
    let s = s.unwrap_or_default();
    let mut b = vec![0u8; s.len() / 2];
    hex_decode(s, &mut b).ok_or_else(|| Error::RelayProtocol(format!("bad {field} from the relay")))?;
    Ok(b)
}

fn hex_decode(s: &str, out: &mut [u8]) -> Option<()> {
    if s.len() != out.len() * 2 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hello(h: &ChannelHandle) -> Result<StapleHello, Error> {
    let mut uuid = [0u8; 16];
    hex_decode(&h.uuid, &mut uuid).ok_or_else(|| Error::RelayProtocol("bad uuid from the relay".into()))?;
    Ok(StapleHello {
        channel: h.channel.clone(),
        uuid,
    })
}

/// Options for a rendezvous.
#[derive(Debug, Clone)]
pub struct RendezvousOptions {
    /// How long the sender waits for a recipient (None: until cancelled).
    pub wait_for_peer: Option<Duration>,
    /// How long to wait for the other side at each later step.
    pub step_timeout: Duration,
}

impl Default for RendezvousOptions {
    fn default() -> Self {
        Self {
            wait_for_peer: None,
            step_timeout: Duration::from_secs(120),
        }
    }
}

/// The sender's side: joins (or creates) the channel, posts X, reports the
/// code through `on_code`, and runs the rest of the flow.
pub async fn sender(
    relay: &RelayClient,
    code: Code,
    pick_channel: bool,
    opts: &RendezvousOptions,
    on_code: impl FnOnce(&Code),
) -> Result<Rendezvous, Error> {
    let joined = relay
        .join(&JoinRequest {
            channel: if pick_channel {
                None
            } else {
                Some(code.channel().to_owned())
            },
            curve: None,
            role: Role::Sender,
        })
        .await?;
    let code = code
        .with_channel(&joined.channel)
        .map_err(|e| Error::RelayProtocol(format!("the relay picked an invalid channel: {e}")))?;
    let h = ChannelHandle {
        relay: relay.clone(),
        channel: joined.channel,
        uuid: joined.uuid,
    };
    let res = sender_steps(&h, &code, opts, on_code).await;
    h.close_on_failure(&res, "sender").await;
    res
}

async fn sender_steps(
    h: &ChannelHandle,
    code: &Code,
    opts: &RendezvousOptions,
    on_code: impl FnOnce(&Code),
) -> Result<Rendezvous, Error> {
    let (pake, x) = SenderStart::new(code, &mut OsRandom);
    let mut r = h.req();
    r.x = Some(hex(&x));
    h.relay.channel(&r).await?;
    on_code(code);
    let deadline = opts.wait_for_peer.map(|d| Instant::now() + d);
    let st = h
        .wait_for(deadline, "the other side to enter the code", |s| {
            s.y.is_some() && s.hh_k.is_some()
        })
        .await?;
    let y = unhex_vec("y", st.y.as_deref())?;
    let hh_k: [u8; 32] = unhex("hh_k", st.hh_k.as_deref())?;
    let (key, h_k) = pake.finish(&y, &hh_k).map_err(|e| match e {
        PakeError::WrongCode => Error::WrongCode,
        other => Error::Protocol(other.to_string()),
    })?;
    let mut r = h.req();
    r.h_k = Some(hex(&h_k));
    h.relay.channel(&r).await?;
    let stream = h.relay.staple(&hello(h)?, opts.step_timeout).await?;
    // Step 16: the relay reports the staple on the channel too.
    let st = h.relay.channel(&h.req()).await?;
    if !st.stapled {
        return Err(Error::RelayProtocol(
            "the relay stapled the connection but does not say so".into(),
        ));
    }
    Ok(Rendezvous {
        stream,
        key,
        channel: h.channel.clone(),
        handle: h.clone(),
    })
}

/// The recipient's side: joins the code's channel and runs the flow.
pub async fn recipient(
    relay: &RelayClient,
    code: &Code,
    opts: &RendezvousOptions,
) -> Result<Rendezvous, Error> {
    // Both sides may start at once with a chosen code: give the sender a
    // moment to open the channel before calling the code wrong.
    let patience = Instant::now() + SENDER_GRACE;
    let joined = loop {
        let res = relay
            .join(&JoinRequest {
                channel: Some(code.channel().to_owned()),
                curve: None,
                role: Role::Recipient,
            })
            .await;
        match res {
            Err(Error::Relay { kind, .. }) if kind == "unknown_channel" => {
                if Instant::now() >= patience {
                    return Err(Error::Relay {
                        kind,
                        message: format!(
                            "nobody is sending on channel {}: check the code (the part before the first '-')",
                            code.channel()
                        ),
                    });
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            other => break other?,
        }
    };
    let h = ChannelHandle {
        relay: relay.clone(),
        channel: joined.channel,
        uuid: joined.uuid,
    };
    let res = recipient_steps(&h, code, opts).await;
    h.close_on_failure(&res, "recipient").await;
    res
}

async fn recipient_steps(
    h: &ChannelHandle,
    code: &Code,
    opts: &RendezvousOptions,
) -> Result<Rendezvous, Error> {
    let step = Some(Instant::now() + opts.step_timeout);
    let st = h
        .wait_for(step, "the sender's key exchange", |s| s.x.is_some())
        .await?;
    let x = unhex_vec("x", st.x.as_deref())?;
    let (awaiting, y, hh_k) =
        RecipientStart::respond(code, &x, &mut OsRandom).map_err(|e| Error::Protocol(e.to_string()))?;
    let mut r = h.req();
    r.y = Some(hex(&y));
    r.hh_k = Some(hex(&hh_k));
    h.relay.channel(&r).await?;
    let st = h
        .wait_for(step, "the sender's confirmation", |s| s.h_k.is_some())
        .await?;
    let h_k: [u8; 32] = unhex("h_k", st.h_k.as_deref())?;
    let key = awaiting.verify(&h_k).map_err(|_| Error::WrongCode)?;
    let stream = h.relay.staple(&hello(h)?, opts.step_timeout).await?;
    Ok(Rendezvous {
        stream,
        key,
        channel: h.channel.clone(),
        handle: h.clone(),
    })
}
