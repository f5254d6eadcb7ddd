//! LAN announcements: how a sender with no relay configured tells receivers
//! on the same network where its embedded relay listens.
//!
//! The sender serves a relay on an ephemeral TCP port and sends this
//! datagram to [`GROUP`]:[`PORT`] (UDP multicast, TTL 1, on every IPv4
//! interface; also to 127.0.0.1 for receivers on the same machine) every
//! [`INTERVAL_MS`] until the other side has connected. A receiver with no
//! relay configured listens there for the channel of its code and connects
//! to the relay at the datagram's source address and the announced port.
//!
//! # Format
//!
//! ```text
//! announce = "BRWL" | version:u8 (=1) | port:u16 | channel_len:u8 | channel
//! ```
//!
//! Only the channel (which the relay sees anyway) is revealed, never
//! anything derived from the code's words: the code stays safe against
//! offline guessing by anyone on the LAN.

use std::net::Ipv4Addr;

use crate::channel::code::{MAX_CHANNEL_LEN, validate_channel};
use crate::wire::{DecodeError, EncodeError, Reader, Writer};

/// The multicast group (organisation-local scope).
pub const GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 90, 9);
/// The UDP port announcements go to.
pub const PORT: u16 = 9009;
/// How often a sender repeats its announcement.
pub const INTERVAL_MS: u64 = 500;
/// The first bytes of an announcement.
pub const MAGIC: &[u8; 4] = b"BRWL";
/// Announcement format version.
pub const VERSION: u8 = 1;
/// Largest announcement.
pub const MAX_LEN: usize = 4 + 1 + 2 + 1 + MAX_CHANNEL_LEN;

/// "A relay for `channel` listens on `port` at my address."
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announce {
    /// The embedded relay's TCP port.
    pub port: u16,
    /// The channel of the sender's code.
    pub channel: String,
}

impl Announce {
    /// Encodes the datagram.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(MAX_LEN);
        Writer::new(&mut out)
            .bytes(MAGIC)
            .u8(VERSION)
            .u16(self.port)
            .bytes_u8("channel", MAX_CHANNEL_LEN, self.channel.as_bytes())?;
        Ok(out)
    }

    /// Decodes one whole datagram. Total: never panics.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        if r.array::<4>()? != *MAGIC {
            return Err(DecodeError::Invalid {
                what: "announcement",
                reason: "not BRWL",
            });
        }
        let v = r.u8()?;
        if v != VERSION {
            return Err(DecodeError::Unknown {
                what: "announcement version",
                value: v.into(),
            });
        }
        let port = r.u16()?;
        if port == 0 {
            return Err(DecodeError::Invalid {
                what: "port",
                reason: "zero",
            });
        }
        let channel = r.str_u8("channel", MAX_CHANNEL_LEN)?.to_owned();
        validate_channel(&channel).map_err(|_| DecodeError::Invalid {
            what: "channel",
            reason: "bad characters",
        })?;
        r.finish()?;
        Ok(Self { port, channel })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bytes_are_exact() {
        let a = Announce {
            port: 0x1234,
            channel: "42".into(),
        };
        assert_eq!(hex::encode(a.encode().unwrap()), "4252574c011234023432");
        assert_eq!(Announce::decode(&a.encode().unwrap()).unwrap(), a);
        assert!(Announce::decode(b"BRWL\x01\x00\x00\x012").is_err(), "port 0");
        assert!(Announce::decode(b"BRWL\x02\x00\x01\x012").is_err(), "version");
        assert!(Announce::decode(b"BRWL\x01\x00\x01\x01/").is_err(), "channel");
        assert!(Announce::decode(b"BRWL\x01\x00\x01\x012x").is_err(), "trailing");
        assert!(Announce::decode(b"BRWL\x01\x00\x01\x05ab").is_err(), "short");
    }

    proptest! {
        #[test]
        fn round_trips(port in 1u16.., ch in "[0-9a-z]{1,32}") {
            let a = Announce { port, channel: ch };
            prop_assert_eq!(Announce::decode(&a.encode().unwrap()).unwrap(), a);
        }

        #[test]
        fn decode_is_total(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Announce::decode(&data);
        }
    }
}
