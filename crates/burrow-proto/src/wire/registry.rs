//! One registry of what starts every burrow byte stream and datagram, so
//! that the relay dispatches a connection by its first four bytes in one
//! place and no two protocols can ever claim the same start.
//!
//! | first bytes | protocol | module |
//! |---|---|---|
//! | `GET `, `POST`, `HEAD`, `PUT `, `DELE` | the channel API over HTTP/1.1 (seed 001) | [`crate::channel::http`] |
//! | `BRWS` | stapling hello of a channel (seed 001) | [`crate::staple`] |
//! | `BRWT` | stapling hello of a reconnect, by token | [`crate::staple`] |
//! | `BRWI` | a lobby pair's second connection (seed 003) | [`crate::staple`] |
//! | `BRWX` | the connector (seed 000) | [`crate::connector`] |
//! | four hex digits | a lobby packet (seed 003) | [`crate::lobby`] |
//! | `BRWL` | a LAN announcement (UDP, never on the relay's port) | [`crate::channel::lan`] |
//! | `BRWM` | a mesh link (seed 002; to a node's port, never the relay's) | [`crate::mesh::packet`] |
//!
//! Message type codes inside sessions, per codec (each decoder refuses a
//! code it does not know with [`DecodeError::Unknown`](super::DecodeError),
//! so a new code is a new version, never a silent misreading):
//!
//! | codec | codes |
//! |---|---|
//! | transfer messages ([`crate::transfer::Message`]) | 0x01–0x10 |
//! | mux frames ([`crate::tunnel::mux::Frame`]) | 0x01–0x06 |
//! | connector messages ([`crate::connector::Msg`]) | 0x01–0x08 |
//! | staple replies ([`crate::staple::StapleReply`]) | 0x00, 0x01, 0xff |
//! | mesh packets ([`crate::mesh::packet::Packet`]) | 0x00–0x0d (the seed's ids) |

use crate::staple::{IDENTITY_MAGIC, STAPLE_MAGIC, TOKEN_MAGIC};

/// What a connection to the relay's port speaks, by its first four bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// The channel API (HTTP/1.1).
    Http,
    /// A channel's stapling connection.
    Staple,
    /// A reconnect's stapling connection.
    Token,
    /// A lobby pair's second connection.
    Identity,
    /// The connector.
    Connector,
    /// A lobby connection.
    Lobby,
}

/// The fixed four-byte starts, each claimed once.
pub const MAGICS: &[(&[u8; 4], Protocol)] = &[
    (b"GET ", Protocol::Http),
    (b"POST", Protocol::Http),
    (b"HEAD", Protocol::Http),
    (b"PUT ", Protocol::Http),
    (b"DELE", Protocol::Http),
    (STAPLE_MAGIC, Protocol::Staple),
    (TOKEN_MAGIC, Protocol::Token),
    (IDENTITY_MAGIC, Protocol::Identity),
    (crate::connector::MAGIC, Protocol::Connector),
];

/// Which protocol a relay connection speaks; `None`: none of burrow's.
pub fn classify(head: &[u8; 4]) -> Option<Protocol> {
    if let Some((_, p)) = MAGICS.iter().find(|(m, _)| *m == head) {
        return Some(*p);
    }
    crate::lobby::is_lobby_prefix(head).then_some(Protocol::Lobby)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_start_is_claimed_once() {
        let mut all: Vec<&[u8; 4]> = MAGICS.iter().map(|(m, _)| *m).collect();
        all.push(crate::channel::lan::MAGIC);
        all.push(crate::mesh::packet::MAGIC);
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "two protocols share a magic");
        for m in &all {
            assert!(!crate::lobby::is_lobby_prefix(m), "{m:?} reads as a lobby packet");
        }
        assert_eq!(classify(b"BRWS"), Some(Protocol::Staple));
        assert_eq!(classify(b"00ff"), Some(Protocol::Lobby));
        assert_eq!(classify(b"BRWL"), None, "LAN datagrams never come to the relay");
        assert_eq!(classify(b"BRWM"), None, "mesh links go to nodes, not the relay");
        assert_eq!(classify(b"SSH-"), None);
    }

    #[test]
    fn unknown_type_codes_are_refused_by_name() {
        use crate::wire::DecodeError;
        let unknown = |r: Result<(), DecodeError>| matches!(r, Err(DecodeError::Unknown { .. }));
        for code in 0x11..=0xff_u8 {
            assert!(
                unknown(crate::transfer::Message::decode(&[code]).map(|_| ())),
                "transfer {code:#x}"
            );
        }
        for code in [0x00, 0x07, 0xff_u8] {
            assert!(
                unknown(crate::tunnel::mux::Frame::decode(&[code, 0, 0, 0, 1]).map(|_| ())),
                "mux {code:#x}"
            );
        }
        for code in 0x0e..=0xff_u8 {
            assert!(
                unknown(crate::mesh::packet::Packet::decode(&[code]).map(|_| ())),
                "mesh {code:#x}"
            );
        }
        for code in [0x00, 0x09, 0xff_u8] {
            assert!(
                crate::connector::Msg::decode(&[code]).is_err(),
                "connector {code:#x}"
            );
        }
    }
}
