//! JSON bodies of the relay's HTTP API (seed 001).
//!
//! | request | body | response |
//! |---|---|---|
//! | `POST /join` | [`JoinRequest`] | [`JoinResponse`] |
//! | `POST /channel` | [`ChannelRequest`] | [`ChannelState`] |
//! | any error | — | [`ErrorBody`] with a 4xx/5xx status |
//!
//! Binary values (`x`, `y`, `hh_k`, `h_k`) travel as lowercase hex. Decoding
//! goes through [`decode_json`], which caps the input size before parsing.

use serde::{Deserialize, Serialize};

/// Largest request body the relay reads.
pub const MAX_BODY: usize = 16 * 1024;
/// Largest hex field (`x`, `y`, `hh_k`, `h_k`) the relay stores.
pub const MAX_HEX_FIELD: usize = 256;
/// Longest long-poll the relay honours, in milliseconds.
pub const MAX_WAIT_MS: u64 = 30_000;
/// The only curve this version speaks (SPAKE2 over Ed25519).
pub const CURVE_ED25519: &str = "ed25519";

/// Which side of a channel a peer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The peer that offers data and posts X.
    Sender,
    /// The peer that receives data and posts Y.
    Recipient,
}

impl Role {
    /// The lowercase name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Sender => "sender",
            Role::Recipient => "recipient",
        }
    }
}

/// `POST /join` (step 1 and step 5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The channel to join; a sender may leave it out to get a fresh one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// PAKE curve; defaults to `ed25519`, the only one supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub curve: Option<String>,
    /// The caller's role.
    pub role: Role,
}

/// Answer to `POST /join`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinResponse {
    /// The channel joined.
    pub channel: String,
    /// The caller's secret handle for this channel (32 hex digits).
    pub uuid: String,
}

/// `POST /channel`: reads the state and optionally applies one step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelRequest {
    /// The channel.
    pub channel: String,
    /// The caller's handle from `/join`.
    pub uuid: String,
    /// Step 3: the sender's PAKE message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    /// Step 7: the recipient's PAKE message (with `hh_k`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    /// Step 7: the recipient's confirmation `H(H(k))`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hh_k: Option<String>,
    /// Step 9: the sender's confirmation `H(k)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub h_k: Option<String>,
    /// Step 18: close the channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close: Option<bool>,
    /// Why the channel is closed (shown to the other peer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Long-poll: wait up to this many ms for the state to change (needs `seen`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
    /// With `wait_ms`: the `version` the caller already has. The relay answers
    /// at once if the channel's version differs, else when it changes or
    /// `wait_ms` passes. Without `seen` the relay answers at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen: Option<u64>,
}

/// The current state of a channel, returned by every `POST /channel`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelState {
    /// The channel.
    pub channel: String,
    /// The PAKE curve.
    pub curve: String,
    /// Whether each role has joined.
    pub sender: bool,
    /// Whether the recipient has joined.
    pub recipient: bool,
    /// Sender's PAKE message, once posted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    /// Recipient's PAKE message, once posted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    /// Recipient's confirmation, once posted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hh_k: Option<String>,
    /// Sender's confirmation, once posted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub h_k: Option<String>,
    /// Both stapling connections are joined.
    pub stapled: bool,
    /// The channel was closed by a peer or the relay.
    pub closed: bool,
    /// Why it was closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Increases on every change; use it as `seen` for long-polls.
    pub version: u64,
}

/// Every error answer: a human sentence and a stable machine-readable kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, in plain words.
    pub error: String,
    /// Stable identifier, e.g. `full`, `role_taken`, `unknown_channel`.
    pub kind: String,
}

/// Why a JSON body was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JsonError {
    /// Over [`MAX_BODY`].
    #[error("body too large: {0} bytes (max {MAX_BODY})")]
    TooLarge(usize),
    /// Not the expected JSON.
    #[error("malformed JSON: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// Decodes a size-capped JSON body.
pub fn decode_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, JsonError> {
    if body.len() > MAX_BODY {
        return Err(JsonError::TooLarge(body.len()));
    }
    Ok(serde_json::from_slice(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_request_shape_matches_seed() {
        let r: JoinRequest = decode_json(br#"{"channel":"7","curve":"ed25519","role":"sender"}"#).unwrap();
        assert_eq!(r.role, Role::Sender);
        let r: JoinRequest = decode_json(br#"{"role":"recipient"}"#).unwrap();
        assert_eq!(r.channel, None);
        assert!(decode_json::<JoinRequest>(br#"{"role":"thief"}"#).is_err());
        assert!(decode_json::<JoinRequest>(&vec![b' '; MAX_BODY + 1]).is_err());
    }

    #[test]
    fn state_omits_absent_fields() {
        let s = ChannelState {
            channel: "7".into(),
            curve: CURVE_ED25519.into(),
            ..Default::default()
        };
        let j = serde_json::to_string(&s).unwrap();
        assert!(!j.contains("\"x\""));
        assert!(j.contains("\"stapled\":false"));
    }
}
