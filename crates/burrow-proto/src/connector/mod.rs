//! The connector (seed 000): the relay as a mailbox that joins a proxy to
//! an exit without either trusting it.
//!
//! ```text
//! connection = "BRWX" | version:u8 (=1), then Noise XX (prologue "burrow v1 session connector"):
//!   peer -> relay   e
//!   relay -> peer   e, ee, s, es  + payload: the relay's Ed25519 key (32)   "authenticate": the peer
//!                                  checks the relay's fingerprint (pinned or first use)
//!   peer -> relay   s, se                                                   "authenticate-ack": the
//!                                  relay now knows the peer's identity key
//! then records (2-byte length + AES-GCM), each one message:
//!   0x01 Listen                          exit  -> relay  be the mailbox of my key
//!   0x02 Connect  target:32              proxy -> relay  join me to the exit with this key
//!   0x03 Init     session:16, peer:32    relay -> both   "init": after it, the connection is a
//!                                        blind pipe to the other side (the exit first gets it
//!                                        on its mailbox, and answers on a new connection)
//!   0x04 Accept   session:16             exit  -> relay  (new connection) I take this session
//!   0x05 Error    message: len:u16 + UTF-8   relay -> peer, then it closes
//!   0x06 Ping / 0x07 Pong                keepalives on the mailbox
//!   0x08 Refuse   session:16             exit  -> relay  (mailbox) not this one: the key is not paired
//! inside the pipe, end to end (the relay sees ciphertext only):
//!   exit  -> proxy  e                    "helloclient"
//!   proxy -> exit   e, ee, s, es         "helloserver"
//!   exit  -> proxy  s, se                "publickey": the proxy checks it is the paired exit's key;
//!                                        the exit checks the proxy's key is paired
//!   then mux frames in records           "data"
//! ```

use crate::wire::{DecodeError, Reader, Writer};

/// The first bytes of a connector connection.
pub const MAGIC: &[u8; 4] = b"BRWX";
/// Version byte after the magic.
pub const VERSION: u8 = 1;
/// Handshake context (prologue) relay ↔ peer.
pub const RELAY_CONTEXT: &str = "connector";
/// Handshake context (prologue) proxy ↔ exit.
pub const TUNNEL_CONTEXT: &str = "tunnel";
/// Longest error message.
pub const MAX_MESSAGE: usize = 512;

/// One connector message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// Exit: be my mailbox.
    Listen,
    /// Proxy: join me to this exit.
    Connect {
        /// The exit's X25519 identity key.
        target: [u8; 32],
    },
    /// Relay: a session starts; `peer` is the other side's key.
    Init {
        /// Session id.
        session: [u8; 16],
        /// The other side's X25519 identity key.
        peer: [u8; 32],
    },
    /// Exit (new connection): I take this session.
    Accept {
        /// Session id.
        session: [u8; 16],
    },
    /// Relay: refused, with a reason.
    Error(String),
    /// Keepalive.
    Ping,
    /// Keepalive answer.
    Pong,
    /// Exit (mailbox): refuses a session (the proxy's key is not paired).
    Refuse {
        /// Session id.
        session: [u8; 16],
    },
}

impl Msg {
    /// Encodes the message.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        match self {
            Msg::Listen => out.push(0x01),
            Msg::Connect { target } => {
                out.push(0x02);
                out.extend_from_slice(target);
            }
            Msg::Init { session, peer } => {
                out.push(0x03);
                out.extend_from_slice(session);
                out.extend_from_slice(peer);
            }
            Msg::Accept { session } => {
                out.push(0x04);
                out.extend_from_slice(session);
            }
            Msg::Error(m) => {
                out.push(0x05);
                Writer::new(&mut out).text_u16(MAX_MESSAGE, m);
            }
            Msg::Ping => out.push(0x06),
            Msg::Pong => out.push(0x07),
            Msg::Refuse { session } => {
                out.push(0x08);
                out.extend_from_slice(session);
            }
        }
        out
    }

    /// Decodes one whole message. Total.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let m = match r.u8()? {
            0x01 => Msg::Listen,
            0x02 => Msg::Connect { target: r.array()? },
            0x03 => Msg::Init {
                session: r.array()?,
                peer: r.array()?,
            },
            0x04 => Msg::Accept { session: r.array()? },
            0x05 => Msg::Error(r.str_u16("message", MAX_MESSAGE)?.to_owned()),
            0x06 => Msg::Ping,
            0x07 => Msg::Pong,
            0x08 => Msg::Refuse { session: r.array()? },
            other => {
                return Err(DecodeError::Unknown {
                    what: "connector message",
                    value: other.into(),
                });
            }
        };
        r.finish()?;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_exact_and_round_trip() {
        assert_eq!(Msg::Listen.encode(), [1]);
        assert_eq!(Msg::Connect { target: [7; 32] }.encode().len(), 33);
        assert_eq!(hex::encode(Msg::Error("no".into()).encode()), "0500026e6f");
        for m in [
            Msg::Listen,
            Msg::Connect { target: [1; 32] },
            Msg::Init {
                session: [2; 16],
                peer: [3; 32],
            },
            Msg::Accept { session: [4; 16] },
            Msg::Error("exit not connected".into()),
            Msg::Ping,
            Msg::Pong,
            Msg::Refuse { session: [5; 16] },
        ] {
            assert_eq!(Msg::decode(&m.encode()).unwrap(), m);
        }
        assert!(Msg::decode(&[2, 0]).is_err());
        assert!(Msg::decode(&[1, 0]).is_err(), "trailing byte");
        assert!(Msg::decode(&[9]).is_err());
    }
}
