//! The lobby wire format (seed 003): the relay-assigned 16-bit ids, the 16
//! packet types, and their codec. The relay's lobby state machine and the
//! PAKE that uses these packets come with issue 4; this module only owns the
//! bytes.
//!
//! # Format
//!
//! ```text
//! packet = uid:4 hex digits | type:2 hex digits | payload
//! ```
//!
//! `uid` is the destination when a peer sends and the source when the relay
//! delivers (0000 is the relay). Payloads are fixed-size or end with a NUL:
//!
//! | type | name | payload |
//! |---|---|---|
//! | 00 | Hello_as_a_server | public: 34 bytes |
//! | 01 | Hello_as_a_client | — |
//! | 02 | Server_identity | identity NUL |
//! | 03 | Client_identity | identity NUL |
//! | 04 | New_server | uid: 4 hex, public: 34, identity NUL |
//! | 05 | Client_validator | 64 bytes |
//! | 06 | Y_and_server_validator | Y: 32, validator: 64 |
//! | 07 | X_and_client_identity | X: 32, identity NUL |
//! | 08 | Agreement | — |
//! | 09 | Closed | uid: 4 hex (0000: the relay closes you) |
//! | 0a | Accepted | — |
//! | 0b | Refused | — |
//! | 0c | Relay_failure | reason: 1 ASCII letter, uid: 4 hex |
//! | 0d | Spoke_failure | reason: 1 byte |
//! | 0e | Done | — |
//! | 0f | Timeout | — |
//!
//! An identity is the relay-observed `addr:port`: 1–53 printable ASCII bytes.
//! Hex digits are written lowercase and read in either case.

pub mod pake;
pub mod relay;

use crate::wire::DecodeError;

/// Longest identity (47 bytes of address and 6 of port, as in the seed).
pub const MAX_IDENTITY: usize = 53;
/// Size of the PAKE "public" parameters.
pub const PUBLIC_LEN: usize = 34;
/// Size of X and Y.
pub const POINT_LEN: usize = 32;
/// Size of a validator.
pub const VALIDATOR_LEN: usize = 64;
/// Longest packet on the wire: Y_and_server_validator (102 bytes); New_server
/// with the longest identity takes 98.
pub const MAX_PACKET: usize = {
    let new_server = 6 + 4 + PUBLIC_LEN + MAX_IDENTITY + 1;
    let y_and_validator = 6 + POINT_LEN + VALIDATOR_LEN;
    if new_server > y_and_validator {
        new_server
    } else {
        y_and_validator
    }
};
/// The relay's uid.
pub const RELAY_UID: u16 = 0;

/// Whether the first four bytes of a connection start a lobby packet.
pub fn is_lobby_prefix(head: &[u8; 4]) -> bool {
    head.iter().all(u8::is_ascii_hexdigit)
}

/// A relay-observed `addr:port`, validated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity(String);

impl Identity {
    /// Validates an identity: 1–53 printable ASCII bytes.
    pub fn new(s: &str) -> Result<Self, DecodeError> {
        let ok = !s.is_empty() && s.len() <= MAX_IDENTITY && s.bytes().all(|b| b.is_ascii_graphic());
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(DecodeError::Invalid {
                what: "identity",
                reason: "1-53 printable ASCII bytes",
            })
        }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why the relay refused a lobby request (`Relay_failure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayFailure {
    /// The client uid is not a client.
    InvalidClient,
    /// The server uid is not a server.
    InvalidServer,
    /// No handshake is going on with that uid.
    NoHandshake,
    /// No agreement was reached with that uid.
    NoAgreement,
}

impl RelayFailure {
    fn letter(self) -> u8 {
        match self {
            RelayFailure::InvalidClient => b'c',
            RelayFailure::InvalidServer => b's',
            RelayFailure::NoHandshake => b'h',
            RelayFailure::NoAgreement => b'a',
        }
    }

    fn from_letter(b: u8) -> Option<Self> {
        Some(match b {
            b'c' => RelayFailure::InvalidClient,
            b's' => RelayFailure::InvalidServer,
            b'h' => RelayFailure::NoHandshake,
            b'a' => RelayFailure::NoAgreement,
            _ => return None,
        })
    }
}

/// Why a PAKE attempt failed (`Spoke_failure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpokeFailure {
    /// A point is not in the prime-order subgroup.
    PointNotInSubgroup,
    /// The client's validator did not verify.
    BadClientValidator,
    /// The server's validator did not verify.
    BadServerValidator,
    /// The public parameters are unusable.
    BadPublic,
    /// The password could not be stretched.
    BadSecret,
}

impl SpokeFailure {
    fn code(self) -> u8 {
        match self {
            SpokeFailure::PointNotInSubgroup => 0,
            SpokeFailure::BadClientValidator => 1,
            SpokeFailure::BadServerValidator => 2,
            SpokeFailure::BadPublic => 3,
            SpokeFailure::BadSecret => 4,
        }
    }

    fn from_code(b: u8) -> Option<Self> {
        Some(match b {
            0 => SpokeFailure::PointNotInSubgroup,
            1 => SpokeFailure::BadClientValidator,
            2 => SpokeFailure::BadServerValidator,
            3 => SpokeFailure::BadPublic,
            4 => SpokeFailure::BadSecret,
            _ => return None,
        })
    }
}

/// A packet's payload, by type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// 00: a sender announces itself with its PAKE parameters.
    HelloAsServer {
        /// The "public" parameters.
        public: [u8; PUBLIC_LEN],
    },
    /// 01: a receiver announces itself.
    HelloAsClient,
    /// 02: the relay tells a server who it is.
    ServerIdentity(Identity),
    /// 03: the relay tells a client who it is.
    ClientIdentity(Identity),
    /// 04: the relay tells a client about a waiting server.
    NewServer {
        /// The server's uid.
        uid: u16,
        /// Its PAKE parameters.
        public: [u8; PUBLIC_LEN],
        /// Its identity.
        identity: Identity,
    },
    /// 05: the client's key confirmation.
    ClientValidator([u8; VALIDATOR_LEN]),
    /// 06: the server's PAKE message and key confirmation.
    YAndServerValidator {
        /// Y.
        y: [u8; POINT_LEN],
        /// The server's validator.
        validator: [u8; VALIDATOR_LEN],
    },
    /// 07: the client's PAKE message and its relay-given identity.
    XAndClientIdentity {
        /// X.
        x: [u8; POINT_LEN],
        /// The client's identity.
        identity: Identity,
    },
    /// 08: the server verified the client.
    Agreement,
    /// 09: a peer went away (uid 0000: the relay closes you).
    Closed {
        /// Who went away.
        uid: u16,
    },
    /// 0a: the client accepts the server's offer.
    Accepted,
    /// 0b: the client declines.
    Refused,
    /// 0c: the relay refused a request.
    RelayFailure {
        /// Why.
        reason: RelayFailure,
        /// About whom.
        uid: u16,
    },
    /// 0d: a PAKE attempt failed.
    SpokeFailure(SpokeFailure),
    /// 0e: the relay paired the client (after Accepted).
    Done,
    /// 0f: the lobby timed out.
    Timeout,
}

/// One lobby packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Destination (sent by a peer) or source (delivered by the relay).
    pub uid: u16,
    /// The payload.
    pub body: Body,
}

fn hex4(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(format!("{v:04x}").as_bytes());
}

/// Reads `n` ASCII hex digits as a number.
fn read_hex(buf: &[u8], at: usize, n: usize, what: &'static str) -> Result<Option<u16>, DecodeError> {
    let Some(digits) = buf.get(at..at + n) else {
        return Ok(None);
    };
    let mut v: u16 = 0;
    for &d in digits {
        let x = (d as char).to_digit(16).ok_or(DecodeError::Invalid {
            what,
            reason: "not a hex digit",
        })?;
        v = (v << 4) | x as u16;
    }
    Ok(Some(v))
}

/// Reads a NUL-terminated identity starting at `at`; `Ok(None)` = need more bytes.
fn read_identity(buf: &[u8], at: usize) -> Result<Option<(Identity, usize)>, DecodeError> {
    let rest = buf.get(at..).unwrap_or_default();
    match rest.iter().take(MAX_IDENTITY + 1).position(|&b| b == 0) {
        Some(n) => {
            let s = std::str::from_utf8(&rest[..n]).map_err(|_| DecodeError::Invalid {
                what: "identity",
                reason: "not ASCII",
            })?;
            Ok(Some((Identity::new(s)?, at + n + 1)))
        }
        None if rest.len() > MAX_IDENTITY => Err(DecodeError::TooLong {
            what: "identity",
            len: rest.len(),
            max: MAX_IDENTITY,
        }),
        None => Ok(None),
    }
}

fn fixed<const N: usize>(buf: &[u8], at: usize) -> Option<[u8; N]> {
    buf.get(at..at + N).and_then(|s| s.try_into().ok())
}

impl Packet {
    /// The two hex digits of the type.
    pub fn type_code(&self) -> u8 {
        match self.body {
            Body::HelloAsServer { .. } => 0x00,
            Body::HelloAsClient => 0x01,
            Body::ServerIdentity(_) => 0x02,
            Body::ClientIdentity(_) => 0x03,
            Body::NewServer { .. } => 0x04,
            Body::ClientValidator(_) => 0x05,
            Body::YAndServerValidator { .. } => 0x06,
            Body::XAndClientIdentity { .. } => 0x07,
            Body::Agreement => 0x08,
            Body::Closed { .. } => 0x09,
            Body::Accepted => 0x0a,
            Body::Refused => 0x0b,
            Body::RelayFailure { .. } => 0x0c,
            Body::SpokeFailure(_) => 0x0d,
            Body::Done => 0x0e,
            Body::Timeout => 0x0f,
        }
    }

    /// Appends the packet's bytes to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        hex4(out, self.uid);
        out.extend_from_slice(format!("{:02x}", self.type_code()).as_bytes());
        match &self.body {
            Body::HelloAsServer { public } => out.extend_from_slice(public),
            Body::ServerIdentity(id) | Body::ClientIdentity(id) => {
                out.extend_from_slice(id.0.as_bytes());
                out.push(0);
            }
            Body::NewServer {
                uid,
                public,
                identity,
            } => {
                hex4(out, *uid);
                out.extend_from_slice(public);
                out.extend_from_slice(identity.0.as_bytes());
                out.push(0);
            }
            Body::ClientValidator(v) => out.extend_from_slice(v),
            Body::YAndServerValidator { y, validator } => {
                out.extend_from_slice(y);
                out.extend_from_slice(validator);
            }
            Body::XAndClientIdentity { x, identity } => {
                out.extend_from_slice(x);
                out.extend_from_slice(identity.0.as_bytes());
                out.push(0);
            }
            Body::Closed { uid } => hex4(out, *uid),
            Body::RelayFailure { reason, uid } => {
                out.push(reason.letter());
                hex4(out, *uid);
            }
            Body::SpokeFailure(r) => out.push(r.code()),
            Body::HelloAsClient
            | Body::Agreement
            | Body::Accepted
            | Body::Refused
            | Body::Done
            | Body::Timeout => {}
        }
    }

    /// Encodes into a fresh vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(MAX_PACKET);
        self.encode(&mut v);
        v
    }

    /// Decodes one packet from the start of `buf`. `Ok(None)` means "need
    /// more bytes"; otherwise returns the packet and the bytes it took.
    /// Total: never panics, never allocates more than [`MAX_PACKET`].
    pub fn decode(buf: &[u8]) -> Result<Option<(Packet, usize)>, DecodeError> {
        let Some(uid) = read_hex(buf, 0, 4, "uid")? else {
            return Ok(None);
        };
        let Some(ty) = read_hex(buf, 4, 2, "packet type")? else {
            return Ok(None);
        };
        let at = 6;
        let need = |n: usize| buf.len() < at + n;
        let (body, end) = match ty {
            0x00 => match fixed::<PUBLIC_LEN>(buf, at) {
                Some(public) => (Body::HelloAsServer { public }, at + PUBLIC_LEN),
                None => return Ok(None),
            },
            0x01 => (Body::HelloAsClient, at),
            0x02 | 0x03 => match read_identity(buf, at)? {
                Some((id, end)) if ty == 0x02 => (Body::ServerIdentity(id), end),
                Some((id, end)) => (Body::ClientIdentity(id), end),
                None => return Ok(None),
            },
            0x04 => {
                let Some(server) = read_hex(buf, at, 4, "server uid")? else {
                    return Ok(None);
                };
                let Some(public) = fixed::<PUBLIC_LEN>(buf, at + 4) else {
                    return Ok(None);
                };
                match read_identity(buf, at + 4 + PUBLIC_LEN)? {
                    Some((identity, end)) => (
                        Body::NewServer {
                            uid: server,
                            public,
                            identity,
                        },
                        end,
                    ),
                    None => return Ok(None),
                }
            }
            0x05 => match fixed::<VALIDATOR_LEN>(buf, at) {
                Some(v) => (Body::ClientValidator(v), at + VALIDATOR_LEN),
                None => return Ok(None),
            },
            0x06 => match (
                fixed::<POINT_LEN>(buf, at),
                fixed::<VALIDATOR_LEN>(buf, at + POINT_LEN),
            ) {
                (Some(y), Some(validator)) => (
                    Body::YAndServerValidator { y, validator },
                    at + POINT_LEN + VALIDATOR_LEN,
                ),
                _ => return Ok(None),
            },
            0x07 => {
                let Some(x) = fixed::<POINT_LEN>(buf, at) else {
                    return Ok(None);
                };
                match read_identity(buf, at + POINT_LEN)? {
                    Some((identity, end)) => (Body::XAndClientIdentity { x, identity }, end),
                    None => return Ok(None),
                }
            }
            0x08 => (Body::Agreement, at),
            0x09 => match read_hex(buf, at, 4, "uid")? {
                Some(uid) => (Body::Closed { uid }, at + 4),
                None => return Ok(None),
            },
            0x0a => (Body::Accepted, at),
            0x0b => (Body::Refused, at),
            0x0c => {
                if need(5) {
                    return Ok(None);
                }
                let reason = RelayFailure::from_letter(buf[at]).ok_or(DecodeError::Unknown {
                    what: "relay failure reason",
                    value: buf[at].into(),
                })?;
                let uid = read_hex(buf, at + 1, 4, "uid")?.unwrap_or_default();
                (Body::RelayFailure { reason, uid }, at + 5)
            }
            0x0d => {
                if need(1) {
                    return Ok(None);
                }
                let r = SpokeFailure::from_code(buf[at]).ok_or(DecodeError::Unknown {
                    what: "spoke failure reason",
                    value: buf[at].into(),
                })?;
                (Body::SpokeFailure(r), at + 1)
            }
            0x0e => (Body::Done, at),
            0x0f => (Body::Timeout, at),
            other => {
                return Err(DecodeError::Unknown {
                    what: "lobby packet type",
                    value: other.into(),
                });
            }
        };
        Ok(Some((Packet { uid, body }, end)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(s: &str) -> Identity {
        Identity::new(s).unwrap()
    }

    fn all() -> Vec<Packet> {
        let p = |uid, body| Packet { uid, body };
        vec![
            p(0, Body::HelloAsServer { public: [0xab; 34] }),
            p(0, Body::HelloAsClient),
            p(0, Body::ServerIdentity(id("127.0.0.1:4000"))),
            p(0, Body::ClientIdentity(id("[::1]:5"))),
            p(
                0,
                Body::NewServer {
                    uid: 0x1a2b,
                    public: [1; 34],
                    identity: id("10.0.0.1:9"),
                },
            ),
            p(0x0042, Body::ClientValidator([2; 64])),
            p(
                0x0042,
                Body::YAndServerValidator {
                    y: [3; 32],
                    validator: [4; 64],
                },
            ),
            p(
                0xffff,
                Body::XAndClientIdentity {
                    x: [5; 32],
                    identity: id("1.2.3.4:5"),
                },
            ),
            p(7, Body::Agreement),
            p(0, Body::Closed { uid: 0x00ff }),
            p(7, Body::Accepted),
            p(7, Body::Refused),
            p(
                0,
                Body::RelayFailure {
                    reason: RelayFailure::NoAgreement,
                    uid: 9,
                },
            ),
            p(7, Body::SpokeFailure(SpokeFailure::BadServerValidator)),
            p(0, Body::Done),
            p(0, Body::Timeout),
        ]
    }

    #[test]
    fn every_type_has_exact_bytes() {
        let expect = [
            format!("000000{}", "ab".repeat(34)),
            "000001".to_owned(),
            format!("000002{}00", hex::encode("127.0.0.1:4000")),
            format!("000003{}00", hex::encode("[::1]:5")),
            format!(
                "000004{}{}{}00",
                hex::encode("1a2b"),
                "01".repeat(34),
                hex::encode("10.0.0.1:9")
            ),
            format!("004205{}", "02".repeat(64)),
            format!("004206{}{}", "03".repeat(32), "04".repeat(64)),
            format!("ffff07{}{}00", "05".repeat(32), hex::encode("1.2.3.4:5")),
            "000708".to_owned(),
            format!("000009{}", hex::encode("00ff")),
            "00070a".to_owned(),
            "00070b".to_owned(),
            format!("00000c{}", hex::encode("a0009")),
            "00070d02".to_owned(),
            "00000e".to_owned(),
            "00000f".to_owned(),
        ];
        let packets = all();
        assert_eq!(packets.len(), 16);
        for (p, want) in packets.iter().zip(expect) {
            let bytes = p.to_vec();
            // The header is ASCII hex; everything after is raw bytes.
            let wire = format!(
                "{}{}",
                String::from_utf8_lossy(&bytes[..6]),
                hex::encode(&bytes[6..])
            );
            assert_eq!(wire, want, "{:?}", p.body);
            assert_eq!(Packet::decode(&bytes).unwrap(), Some((p.clone(), bytes.len())));
            // Every strict prefix is "need more bytes", never an error or a packet.
            for cut in 0..bytes.len() {
                assert_eq!(
                    Packet::decode(&bytes[..cut]),
                    Ok(None),
                    "{:?} cut at {cut}",
                    p.body
                );
            }
        }
    }

    #[test]
    fn the_longest_packet_is_the_bound() {
        assert_eq!(MAX_PACKET, 102);
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(Packet::decode(b"00zz01").is_err());
        assert!(Packet::decode(b"000010").is_err(), "unknown type 0x10");
        assert!(Packet::decode(b"00000cx0001").is_err());
        assert!(Packet::decode(b"00070d\x09").is_err());
        let mut long = b"000002".to_vec();
        long.extend(vec![b'a'; MAX_IDENTITY + 1]);
        assert!(
            matches!(Packet::decode(&long), Err(DecodeError::TooLong { .. })),
            "unterminated identity"
        );
        assert!(Packet::decode(b"000002a b\0").is_err(), "space in identity");
        assert!(Packet::decode(b"000002\0").is_err(), "empty identity");
        // Upper-case hex is read too; two packets back to back decode one at a time.
        let (p, n) = Packet::decode(b"00AB0800070a").unwrap().unwrap();
        assert_eq!((p.uid, n), (0xab, 6));
        assert!(is_lobby_prefix(b"0a1F"));
        assert!(!is_lobby_prefix(b"POST") && !is_lobby_prefix(b"BRWS") && !is_lobby_prefix(b"GET "));
    }

    fn arb_identity() -> impl Strategy<Value = Identity> {
        "[!-~]{1,53}".prop_map(|s| Identity::new(&s).unwrap())
    }

    fn arb_body() -> impl Strategy<Value = Body> {
        prop_oneof![
            any::<[u8; 32]>().prop_map(|b| {
                let mut public = [0u8; 34];
                public[..32].copy_from_slice(&b);
                Body::HelloAsServer { public }
            }),
            Just(Body::HelloAsClient),
            arb_identity().prop_map(Body::ServerIdentity),
            arb_identity().prop_map(Body::ClientIdentity),
            (any::<u16>(), arb_identity()).prop_map(|(uid, identity)| Body::NewServer {
                uid,
                public: [7; 34],
                identity
            }),
            (any::<[u8; 32]>(), arb_identity())
                .prop_map(|(x, identity)| Body::XAndClientIdentity { x, identity }),
            any::<[u8; 32]>().prop_map(|y| Body::YAndServerValidator {
                y,
                validator: [9; 64]
            }),
            any::<u16>().prop_map(|uid| Body::Closed { uid }),
            (0usize..4, any::<u16>()).prop_map(|(r, uid)| Body::RelayFailure {
                reason: [
                    RelayFailure::InvalidClient,
                    RelayFailure::InvalidServer,
                    RelayFailure::NoHandshake,
                    RelayFailure::NoAgreement
                ][r],
                uid
            }),
            (0u8..5).prop_map(|c| Body::SpokeFailure(SpokeFailure::from_code(c).unwrap())),
            Just(Body::Done),
            Just(Body::Timeout),
        ]
    }

    proptest! {
        #[test]
        fn round_trips(uid in any::<u16>(), body in arb_body()) {
            let p = Packet { uid, body };
            let bytes = p.to_vec();
            prop_assert!(bytes.len() <= MAX_PACKET);
            prop_assert_eq!(Packet::decode(&bytes).unwrap(), Some((p, bytes.len())));
        }

        #[test]
        fn decoding_is_total(data in proptest::collection::vec(any::<u8>(), 0..120)) {
            if let Ok(Some((_, n))) = Packet::decode(&data) {
                prop_assert!(n <= data.len());
            }
        }
    }
}
