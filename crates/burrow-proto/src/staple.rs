//! The stapling connection (seed 001, steps 11–17).
//!
//! A peer opens a TCP connection to the relay's port and, before anything
//! else, names its channel and UUID. The relay answers with a one-byte status;
//! when both peers of the channel are in, it answers [`StapleReply::Stapled`]
//! to each and from then on copies bytes blindly between them.
//!
//! # Format
//!
//! ```text
//! hello  = "BRWS" | version:u8 (=1) | channel_len:u8 | channel | uuid:16
//! lobby  = "BRWI" | version:u8 (=1) | identity_len:u8 | identity (seed 003's second connection)
//! token  = "BRWT" | version:u8 (=1) | role:u8 (0 sender, 1 recipient) | token:32
//! reply  = 0x00                           Stapled: start talking
//!        | 0x01                           Waiting: accepted, the other peer is not here yet
//!        | 0xff | len:u16 | reason:utf8   Refused: the relay closes the connection
//! ```

use crate::channel::code::{MAX_CHANNEL_LEN, validate_channel};
use crate::wire::{DecodeError, EncodeError, Reader, Writer};

/// The first four bytes of a stapling connection.
pub const STAPLE_MAGIC: &[u8; 4] = b"BRWS";
/// The stapling protocol version.
pub const STAPLE_VERSION: u8 = 1;
/// Largest hello on the wire.
pub const MAX_HELLO_LEN: usize = 4 + 1 + 1 + MAX_CHANNEL_LEN + 16;
/// Longest refusal reason.
pub const MAX_REASON_LEN: usize = 512;

/// A stapling hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StapleHello {
    /// The channel.
    pub channel: String,
    /// The UUID from `/join`.
    pub uuid: [u8; 16],
}

/// The first four bytes of a reconnecting (token) stapling connection.
pub const TOKEN_MAGIC: &[u8; 4] = b"BRWT";
/// Length of a token hello.
pub const TOKEN_HELLO_LEN: usize = 4 + 1 + 1 + 32;

/// A reconnect hello: two peers that already share a session meet again
/// under a token derived from their session key. The relay pairs a sender
/// with a recipient presenting the same token; it keeps no other state, so
/// this works after a relay restart. A newer connection with the same token
/// and role replaces a waiting one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenHello {
    /// Which side this is.
    pub role: crate::channel::api::Role,
    /// BLAKE3-derived from the session key; reveals nothing about it.
    pub token: [u8; 32],
}

impl TokenHello {
    /// Encodes the hello (including the magic).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(TOKEN_HELLO_LEN);
        out.extend_from_slice(TOKEN_MAGIC);
        out.push(STAPLE_VERSION);
        out.push(match self.role {
            crate::channel::api::Role::Sender => 0,
            crate::channel::api::Role::Recipient => 1,
        });
        out.extend_from_slice(&self.token);
        out
    }

    /// Decodes a hello from the start of `buf` (which begins with the magic).
    pub fn decode(buf: &[u8]) -> Partial<Self> {
        partial(buf, |r| {
            if r.array::<4>()? != *TOKEN_MAGIC {
                return Err(DecodeError::Invalid {
                    what: "token magic",
                    reason: "not BRWT",
                });
            }
            let v = r.u8()?;
            if v != STAPLE_VERSION {
                return Err(DecodeError::Unknown {
                    what: "staple version",
                    value: v.into(),
                });
            }
            let role = match r.u8()? {
                0 => crate::channel::api::Role::Sender,
                1 => crate::channel::api::Role::Recipient,
                other => {
                    return Err(DecodeError::Unknown {
                        what: "role",
                        value: other.into(),
                    });
                }
            };
            Ok(Self {
                role,
                token: r.array()?,
            })
        })
    }
}

/// The first four bytes of a lobby pair's second connection.
pub const IDENTITY_MAGIC: &[u8; 4] = b"BRWI";

/// A lobby peer's second connection (seed 003's "secure room"): it names
/// its relay-given identity; the relay staples it to the other half of the
/// pair accepted in the lobby.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityHello {
    /// The relay-given identity (`addr:port` of the lobby connection).
    pub identity: crate::lobby::Identity,
}

impl IdentityHello {
    /// Encodes the hello (including the magic).
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = IDENTITY_MAGIC.to_vec();
        Writer::new(&mut out).u8(STAPLE_VERSION).bytes_u8(
            "identity",
            crate::lobby::MAX_IDENTITY,
            self.identity.as_str().as_bytes(),
        )?;
        Ok(out)
    }

    /// Decodes a hello from the start of `buf` (which begins with the magic).
    pub fn decode(buf: &[u8]) -> Partial<Self> {
        partial(buf, |r| {
            if r.array::<4>()? != *IDENTITY_MAGIC {
                return Err(DecodeError::Invalid {
                    what: "identity magic",
                    reason: "not BRWI",
                });
            }
            let v = r.u8()?;
            if v != STAPLE_VERSION {
                return Err(DecodeError::Unknown {
                    what: "staple version",
                    value: v.into(),
                });
            }
            let s = r.str_u8("identity", crate::lobby::MAX_IDENTITY)?;
            Ok(Self {
                identity: crate::lobby::Identity::new(s)?,
            })
        })
    }
}

/// Decodes something that may still be arriving: `Ok(None)` means "need more bytes".
pub type Partial<T> = Result<Option<(T, usize)>, DecodeError>;

fn partial<T>(buf: &[u8], f: impl FnOnce(&mut Reader<'_>) -> Result<T, DecodeError>) -> Partial<T> {
    let mut r = Reader::new(buf);
    match f(&mut r) {
        Ok(v) => Ok(Some((v, buf.len() - r.remaining()))),
        Err(DecodeError::Truncated { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

impl StapleHello {
    /// Encodes the hello (including the magic).
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(MAX_HELLO_LEN);
        Writer::new(&mut out)
            .bytes(STAPLE_MAGIC)
            .u8(STAPLE_VERSION)
            .bytes_u8("channel", MAX_CHANNEL_LEN, self.channel.as_bytes())?
            .bytes(&self.uuid);
        Ok(out)
    }

    /// Decodes a hello from the start of `buf` (which begins with the magic).
    pub fn decode(buf: &[u8]) -> Partial<Self> {
        partial(buf, |r| {
            if r.array::<4>()? != *STAPLE_MAGIC {
                return Err(DecodeError::Invalid {
                    what: "staple magic",
                    reason: "not BRWS",
                });
            }
            let v = r.u8()?;
            if v != STAPLE_VERSION {
                return Err(DecodeError::Unknown {
                    what: "staple version",
                    value: v.into(),
                });
            }
            let channel = r.str_u8("channel", MAX_CHANNEL_LEN)?.to_owned();
            validate_channel(&channel).map_err(|_| DecodeError::Invalid {
                what: "channel",
                reason: "bad characters",
            })?;
            let uuid = r.array()?;
            Ok(Self { channel, uuid })
        })
    }
}

/// The relay's answer on a stapling connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StapleReply {
    /// Both peers are in: the pipe is open.
    Stapled,
    /// Accepted; waiting for the other peer.
    Waiting,
    /// Refused; the relay closes the connection.
    Refused(String),
}

impl StapleReply {
    /// Encodes the reply.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            StapleReply::Stapled => vec![0x00],
            StapleReply::Waiting => vec![0x01],
            StapleReply::Refused(reason) => {
                let mut out = vec![0xff];
                Writer::new(&mut out).text_u16(MAX_REASON_LEN, reason);
                out
            }
        }
    }

    /// Decodes a reply from the start of `buf`.
    pub fn decode(buf: &[u8]) -> Partial<Self> {
        partial(buf, |r| match r.u8()? {
            0x00 => Ok(StapleReply::Stapled),
            0x01 => Ok(StapleReply::Waiting),
            0xff => Ok(StapleReply::Refused(
                r.str_u16("reason", MAX_REASON_LEN)?.to_owned(),
            )),
            other => Err(DecodeError::Unknown {
                what: "staple reply",
                value: other.into(),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hello_bytes_are_exact() {
        let h = StapleHello {
            channel: "42".into(),
            uuid: [0xab; 16],
        };
        assert_eq!(
            hex::encode(h.encode().unwrap()),
            "4252575301023432abababababababababababababababab"
        );
        let enc = h.encode().unwrap();
        assert_eq!(StapleHello::decode(&enc).unwrap(), Some((h, enc.len())));
        assert_eq!(StapleHello::decode(&enc[..10]).unwrap(), None);
        assert!(StapleHello::decode(b"BRWS\x09").is_err());
        assert!(StapleHello::decode(b"GET / HTTP/1.1").is_err());
        assert!(StapleHello::decode(b"BRWS\x01\x02a/").is_err());
    }

    #[test]
    fn identity_hello_bytes_are_exact() {
        let h = IdentityHello {
            identity: crate::lobby::Identity::new("1.2.3.4:5").unwrap(),
        };
        let enc = h.encode().unwrap();
        assert_eq!(
            hex::encode(&enc),
            "42525749010931 2e322e332e343a35".replace(' ', "")
        );
        assert_eq!(IdentityHello::decode(&enc).unwrap(), Some((h, enc.len())));
        assert_eq!(IdentityHello::decode(&enc[..7]).unwrap(), None);
        assert!(IdentityHello::decode(b"BRWI\x01\x01 ").is_err());
    }

    #[test]
    fn token_hello_bytes_are_exact() {
        let h = TokenHello {
            role: crate::channel::api::Role::Recipient,
            token: [7; 32],
        };
        let enc = h.encode();
        assert_eq!(hex::encode(&enc[..6]), "425257540101");
        assert_eq!(enc.len(), TOKEN_HELLO_LEN);
        assert_eq!(TokenHello::decode(&enc).unwrap(), Some((h, enc.len())));
        assert_eq!(TokenHello::decode(&enc[..20]).unwrap(), None);
        assert!(TokenHello::decode(b"BRWT\x01\x02").is_err());
        assert!(TokenHello::decode(b"BRWS\x01\x00").is_err());
    }

    #[test]
    fn reply_bytes_are_exact() {
        assert_eq!(StapleReply::Stapled.encode(), vec![0]);
        assert_eq!(StapleReply::Waiting.encode(), vec![1]);
        assert_eq!(
            hex::encode(StapleReply::Refused("no".into()).encode()),
            "ff00026e6f"
        );
        assert_eq!(StapleReply::decode(&[0xff, 0, 5, b'a']).unwrap(), None);
        assert!(StapleReply::decode(&[7]).is_err());
        let long = "é".repeat(400);
        let enc = StapleReply::Refused(long).encode();
        assert!(
            matches!(StapleReply::decode(&enc).unwrap(), Some((StapleReply::Refused(s), _)) if s.len() <= MAX_REASON_LEN)
        );
    }

    proptest! {
        #[test]
        fn hello_round_trips(ch in "[a-zA-Z0-9_]{1,32}", uuid in any::<[u8; 16]>()) {
            let h = StapleHello { channel: ch, uuid };
            let enc = h.encode().unwrap();
            prop_assert_eq!(StapleHello::decode(&enc).unwrap(), Some((h, enc.len())));
        }

        #[test]
        fn decoders_are_total(data in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = StapleHello::decode(&data);
            let _ = StapleReply::decode(&data);
            let _ = TokenHello::decode(&data);
            let _ = IdentityHello::decode(&data);
        }
    }
}
