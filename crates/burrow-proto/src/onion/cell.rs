//! Cells: what circuits are made of on a mesh link, all of one length.
//!
//! A cell rides in one mesh DATA packet (kind Cell) on a node-to-node link
//! (whose own AES-256-GCM record hides it from the wire), and every cell
//! on every link is [`CELL_LEN`] bytes whatever it carries, so a hop or
//! an observer learns nothing from sizes:
//!
//! ```text
//! cell  = circ:u32 | cmd:u8 | body:[BODY_LEN]
//! CREATE, CREATED, DESTROY body = len:u16 | bytes (len) | zeros
//! RELAY, RELAY_EARLY body       = a CGO cell: tag:[16] | payload (encrypted per hop)
//! payload (where recognised)    = rcmd:u8 | len:u16 | data (len) | zeros
//! ```
//!
//! | cmd | name | body bytes |
//! |---|---|---|
//! | 1 | CREATE | a hop handshake ([`super::handshake`]) |
//! | 2 | CREATED | its answer |
//! | 3 | RELAY | a relay cell |
//! | 4 | RELAY_EARLY | a relay cell that may carry EXTEND (at most [`MAX_EXTENDS`] per circuit) |
//! | 5 | DESTROY | reason:u8 ([`Reason`]) |
//!
//! | rcmd | name | data |
//! |---|---|---|
//! | 1 | EXTEND | `node id:[15]`, then CREATE bytes for it |
//! | 2 | EXTENDED | CREATED bytes from it |
//! | 3 | DATA | one stream frame ([`crate::tunnel::mux`]): the exit's streams |
//! | 4 | SENDME | `tag:[16]` of the cell that completed the window step |
//! | 5 | DROP | padding, ignored |
//!
//! The command byte is CGO's associated data: a hop that turns RELAY into
//! RELAY_EARLY (or back) breaks the cell. Circuit ids belong to a link;
//! the side that dialled the link picks ids with the top bit set, the
//! other side without, so both can create circuits on one link.
//!
//! **Why 8 KiB.** Tor's 509-byte cell costs one key update and two
//! POLYVAL/CTR set-ups per half kilobyte: `examples/onion_cells.rs` on
//! these machines gives 186 MB/s for a client's three layers at 509 B,
//! 400 MB/s at 2 KiB and 570 MB/s at 8 KiB (a relay hop 760 / 1,430 /
//! 1,735 MB/s). 8 KiB is the smallest that meets the throughput goal
//! with room for the links' AEAD, syscalls and copies; small requests
//! pay padding (a 1 KiB request is still one cell), which costs bytes on
//! the link, not round trips.

use thiserror::Error;

use super::cgo::TAG_LEN;
use crate::keys::NodeId;
use crate::wire::{DecodeError, Reader};

/// Bytes of every cell on a link.
pub const CELL_LEN: usize = 8192;
/// Bytes before the body.
pub const HEADER_LEN: usize = 5;
/// Bytes of a cell's body (a CGO cell for RELAY).
pub const BODY_LEN: usize = CELL_LEN - HEADER_LEN;
/// Bytes of a relay payload's header.
pub const RELAY_HEADER: usize = 3;
/// Most data bytes one relay cell carries.
pub const MAX_RELAY_DATA: usize = BODY_LEN - TAG_LEN - RELAY_HEADER;
/// Most RELAY_EARLY cells (so EXTENDs) one circuit may carry: a path
/// of at most nine hops.
pub const MAX_EXTENDS: u8 = 8;
/// The circuit-id bit of the side that dialled the link.
pub const OUTBOUND_BIT: u32 = 1 << 31;

/// A cell's command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Command {
    /// 1.
    Create = 1,
    /// 2.
    Created = 2,
    /// 3.
    Relay = 3,
    /// 4.
    RelayEarly = 4,
    /// 5.
    Destroy = 5,
}

impl Command {
    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Create,
            2 => Self::Created,
            3 => Self::Relay,
            4 => Self::RelayEarly,
            5 => Self::Destroy,
            _ => return None,
        })
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Create => "CREATE",
            Self::Created => "CREATED",
            Self::Relay => "RELAY",
            Self::RelayEarly => "RELAY_EARLY",
            Self::Destroy => "DESTROY",
        }
    }
}

/// Why a circuit was destroyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Nothing more to say (the client closed it).
    Finished,
    /// A cell did not decode, or came out of order.
    Protocol,
    /// A relay cell was recognised by no hop: altered, replayed or
    /// reordered on the way.
    Tampered,
    /// A link of the circuit went down, or the next hop could not be
    /// reached.
    HopGone,
    /// The node is out of memory or handshake budget for it.
    ResourceLimit,
    /// More EXTENDs than [`MAX_EXTENDS`].
    TooLong,
    /// The handshake failed.
    Handshake,
    /// A reason this version does not know.
    Other(u8),
}

impl Reason {
    /// Its byte.
    pub fn code(self) -> u8 {
        match self {
            Self::Finished => 0,
            Self::Protocol => 1,
            Self::Tampered => 2,
            Self::HopGone => 3,
            Self::ResourceLimit => 4,
            Self::TooLong => 5,
            Self::Handshake => 6,
            Self::Other(b) => b,
        }
    }

    /// From its byte.
    pub fn from_code(b: u8) -> Self {
        match b {
            0 => Self::Finished,
            1 => Self::Protocol,
            2 => Self::Tampered,
            3 => Self::HopGone,
            4 => Self::ResourceLimit,
            5 => Self::TooLong,
            6 => Self::Handshake,
            b => Self::Other(b),
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Finished => f.write_str("closed"),
            Self::Protocol => f.write_str("protocol error"),
            Self::Tampered => f.write_str("a cell was altered, replayed or reordered on the way"),
            Self::HopGone => f.write_str("a hop went away"),
            Self::ResourceLimit => f.write_str("a node is out of resources"),
            Self::TooLong => f.write_str("too many hops"),
            Self::Handshake => f.write_str("a hop's handshake failed"),
            Self::Other(b) => write!(f, "reason {b}"),
        }
    }
}

/// What went wrong with a cell.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CellError {
    /// Not a cell.
    #[error("malformed cell: {0}")]
    Malformed(#[from] DecodeError),
    /// A command this version does not know.
    #[error("unknown cell command {0}")]
    UnknownCommand(u8),
    /// A relay command this version does not know.
    #[error("unknown relay command {0}")]
    UnknownRelay(u8),
}

/// One cell, owning its [`CELL_LEN`] bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Cell {
    bytes: Vec<u8>,
}

impl std::fmt::Debug for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cell")
            .field("circ", &self.circ())
            .field("cmd", &self.cmd())
            .finish_non_exhaustive()
    }
}

impl Cell {
    /// A cell whose body is zero.
    pub fn new(circ: u32, cmd: Command) -> Self {
        let mut bytes = vec![0u8; CELL_LEN];
        bytes[..4].copy_from_slice(&circ.to_be_bytes());
        bytes[4] = cmd as u8;
        Self { bytes }
    }

    /// A CREATE, CREATED or DESTROY cell: `len:u16 | bytes | zeros`.
    pub fn with_bytes(circ: u32, cmd: Command, data: &[u8]) -> Self {
        let mut c = Self::new(circ, cmd);
        let n = data.len().min(BODY_LEN - 2);
        c.bytes[HEADER_LEN..HEADER_LEN + 2].copy_from_slice(&(n as u16).to_be_bytes());
        c.bytes[HEADER_LEN + 2..HEADER_LEN + 2 + n].copy_from_slice(&data[..n]);
        c
    }

    /// A DESTROY cell.
    pub fn destroy(circ: u32, reason: Reason) -> Self {
        Self::with_bytes(circ, Command::Destroy, &[reason.code()])
    }

    /// Decodes a cell: exactly [`CELL_LEN`] bytes and a known command.
    /// Takes the buffer over (no copy).
    pub fn decode(bytes: Vec<u8>) -> Result<Self, CellError> {
        if bytes.len() != CELL_LEN {
            return Err(DecodeError::Invalid {
                what: "cell",
                reason: "not 8192 bytes",
            }
            .into());
        }
        Command::from_byte(bytes[4]).ok_or(CellError::UnknownCommand(bytes[4]))?;
        Ok(Self { bytes })
    }

    /// Decodes from a slice (copies).
    pub fn decode_slice(bytes: &[u8]) -> Result<Self, CellError> {
        Self::decode(bytes.to_vec())
    }

    /// The circuit id.
    pub fn circ(&self) -> u32 {
        u32::from_be_bytes([self.bytes[0], self.bytes[1], self.bytes[2], self.bytes[3]])
    }

    /// Gives the cell another circuit id (a hop forwarding it).
    pub fn set_circ(&mut self, circ: u32) {
        self.bytes[..4].copy_from_slice(&circ.to_be_bytes());
    }

    /// The command (checked at decode).
    pub fn cmd(&self) -> Command {
        Command::from_byte(self.bytes[4]).unwrap_or(Command::Destroy)
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.bytes[HEADER_LEN..]
    }

    /// The body, to encrypt in place.
    pub fn body_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[HEADER_LEN..]
    }

    /// A CREATE / CREATED / DESTROY body's bytes.
    pub fn bytes_field(&self) -> Result<&[u8], CellError> {
        let mut r = Reader::new(self.body());
        let n = usize::from(r.u16()?);
        if n > BODY_LEN - 2 {
            return Err(DecodeError::TooLong {
                what: "cell field",
                len: n,
                max: BODY_LEN - 2,
            }
            .into());
        }
        Ok(r.bytes(n)?)
    }

    /// A DESTROY's reason.
    pub fn reason(&self) -> Reason {
        Reason::from_code(
            self.bytes_field()
                .ok()
                .and_then(|b| b.first().copied())
                .unwrap_or(1),
        )
    }

    /// The cell's bytes, to send.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The cell's bytes, to send.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// A relay payload's command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RelayCommand {
    /// 1.
    Extend = 1,
    /// 2.
    Extended = 2,
    /// 3.
    Data = 3,
    /// 4.
    Sendme = 4,
    /// 5.
    Drop = 5,
}

impl RelayCommand {
    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Extend,
            2 => Self::Extended,
            3 => Self::Data,
            4 => Self::Sendme,
            5 => Self::Drop,
            _ => return None,
        })
    }
}

/// A decoded relay payload (borrowing the cell).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayMsg<'a> {
    /// Extend the circuit to `node` with this CREATE.
    Extend {
        /// The next hop.
        node: NodeId,
        /// Its CREATE bytes.
        create: &'a [u8],
    },
    /// The next hop's CREATED.
    Extended(&'a [u8]),
    /// A stream frame.
    Data(&'a [u8]),
    /// A window step, with the tag of the cell that completed it.
    Sendme([u8; TAG_LEN]),
    /// Padding.
    Drop,
}

impl RelayMsg<'_> {
    /// Writes the payload into a relay cell body (after its tag field);
    /// `data` must fit [`MAX_RELAY_DATA`].
    pub fn write(&self, body: &mut [u8]) {
        let p = &mut body[TAG_LEN..];
        let (cmd, parts): (RelayCommand, [&[u8]; 2]) = match self {
            RelayMsg::Extend { node, create } => (RelayCommand::Extend, [&node.0[..], create]),
            RelayMsg::Extended(b) => (RelayCommand::Extended, [b, &[]]),
            RelayMsg::Data(b) => (RelayCommand::Data, [b, &[]]),
            RelayMsg::Sendme(t) => (RelayCommand::Sendme, [&t[..], &[]]),
            RelayMsg::Drop => (RelayCommand::Drop, [&[], &[]]),
        };
        let n = (parts[0].len() + parts[1].len()).min(MAX_RELAY_DATA);
        p[0] = cmd as u8;
        p[1..3].copy_from_slice(&(n as u16).to_be_bytes());
        let mut at = RELAY_HEADER;
        for part in parts {
            let take = part.len().min(RELAY_HEADER + n - at);
            p[at..at + take].copy_from_slice(&part[..take]);
            at += take;
        }
        p[at..].fill(0);
    }

    /// Reads a recognised relay cell's payload.
    pub fn read(body: &[u8]) -> Result<RelayMsg<'_>, CellError> {
        let mut r = Reader::new(
            body.get(TAG_LEN..)
                .ok_or(DecodeError::Truncated { needed: TAG_LEN })?,
        );
        let cmd = r.u8()?;
        let n = usize::from(r.u16()?);
        if n > MAX_RELAY_DATA {
            return Err(DecodeError::TooLong {
                what: "relay data",
                len: n,
                max: MAX_RELAY_DATA,
            }
            .into());
        }
        let data = r.bytes(n)?;
        let cmd = RelayCommand::from_byte(cmd).ok_or(CellError::UnknownRelay(cmd))?;
        Ok(match cmd {
            RelayCommand::Extend => {
                let mut d = Reader::new(data);
                let node = NodeId(d.array()?);
                RelayMsg::Extend {
                    node,
                    create: d.rest(),
                }
            }
            RelayCommand::Extended => RelayMsg::Extended(data),
            RelayCommand::Data => RelayMsg::Data(data),
            RelayCommand::Sendme => {
                let mut d = Reader::new(data);
                let tag = d.array()?;
                d.finish()?;
                RelayMsg::Sendme(tag)
            }
            RelayCommand::Drop => RelayMsg::Drop,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_one_length_and_decode_totally() {
        let c = Cell::with_bytes(0x8000_0001, Command::Create, b"hello");
        assert_eq!(c.as_bytes().len(), CELL_LEN);
        let d = Cell::decode(c.clone().into_bytes()).unwrap();
        assert_eq!(d.circ(), 0x8000_0001);
        assert_eq!(d.cmd(), Command::Create);
        assert_eq!(d.bytes_field().unwrap(), b"hello");
        assert_eq!(
            hex::encode(&c.as_bytes()[..12]),
            "800000010100056865 6c6c6f".replace(' ', "")
        );
        assert!(Cell::decode(vec![0; CELL_LEN - 1]).is_err());
        assert!(Cell::decode(vec![0; CELL_LEN + 1]).is_err());
        assert_eq!(Cell::decode(vec![0; CELL_LEN]), Err(CellError::UnknownCommand(0)));
        let mut bad = Cell::new(1, Command::Created).into_bytes();
        bad[5] = 0xff;
        assert!(Cell::decode(bad).unwrap().bytes_field().is_err());
        assert_eq!(Cell::destroy(3, Reason::Tampered).reason(), Reason::Tampered);
    }

    #[test]
    fn relay_messages_round_trip() {
        let create = [9u8; 90];
        let sendme = [3u8; 16];
        let big = vec![0x55u8; MAX_RELAY_DATA];
        let msgs = [
            RelayMsg::Extend {
                node: NodeId([1; 15]),
                create: &create,
            },
            RelayMsg::Extended(&create[..48]),
            RelayMsg::Data(&big),
            RelayMsg::Data(b""),
            RelayMsg::Sendme(sendme),
            RelayMsg::Drop,
        ];
        for m in msgs {
            let mut body = vec![0xaau8; BODY_LEN];
            m.write(&mut body);
            assert_eq!(RelayMsg::read(&body).unwrap(), m);
        }
        let mut body = vec![0u8; BODY_LEN];
        body[TAG_LEN] = 9;
        assert_eq!(RelayMsg::read(&body), Err(CellError::UnknownRelay(9)));
        body[TAG_LEN] = 3;
        body[TAG_LEN + 1..TAG_LEN + 3].copy_from_slice(&u16::MAX.to_be_bytes());
        assert!(RelayMsg::read(&body).is_err());
        assert!(RelayMsg::read(&body[..10]).is_err());
    }
}
