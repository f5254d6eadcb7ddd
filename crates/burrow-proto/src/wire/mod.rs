//! Total decoding and simple encoding helpers shared by every binary codec.
//!
//! A [`Reader`] walks a byte slice and never panics: every read checks the
//! remaining length first, and every length-prefixed field is checked against a
//! named maximum *before* anything is allocated. Decoders built on it are total:
//! any input yields either a value or a [`DecodeError`]. A [`Writer`]
//! encodes, and refuses a field that does not fit instead of clipping it.
//! [`registry`] names every protocol's first bytes and type codes.

use thiserror::Error;

pub mod registry;

/// Why a byte string could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended before the value did.
    #[error("truncated input: {needed} more bytes needed")]
    Truncated {
        /// How many more bytes the current field needs.
        needed: usize,
    },
    /// A length field declares more than the format allows.
    #[error("{what} too long: {len} bytes (max {max})")]
    TooLong {
        /// The field.
        what: &'static str,
        /// Declared length.
        len: usize,
        /// Allowed maximum.
        max: usize,
    },
    /// A tag byte has no meaning in this version.
    #[error("unknown {what} {value:#04x}")]
    Unknown {
        /// The field.
        what: &'static str,
        /// The value found.
        value: u64,
    },
    /// A field is well-formed but not acceptable.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// The field.
        what: &'static str,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// Bytes were left over after a complete message.
    #[error("{0} unexpected trailing bytes")]
    Trailing(usize),
}

/// A bounds-checked cursor over a byte slice.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Starts reading `buf` from its first byte.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Takes the next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated {
                needed: n - self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Takes the next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    /// Reads one byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    /// Reads a big-endian u16.
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    /// Reads a big-endian u32.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// Reads a big-endian u64.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// Reads a u16 length followed by that many bytes, refusing lengths over `max`.
    pub fn bytes_u16(&mut self, what: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = usize::from(self.u16()?);
        if len > max {
            return Err(DecodeError::TooLong { what, len, max });
        }
        self.bytes(len)
    }

    /// Like [`Reader::bytes_u16`] but the bytes must be UTF-8.
    pub fn str_u16(&mut self, what: &'static str, max: usize) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.bytes_u16(what, max)?).map_err(|_| DecodeError::Invalid {
            what,
            reason: "not UTF-8",
        })
    }

    /// Reads a u8 length followed by that many UTF-8 bytes, refusing lengths over `max`.
    pub fn str_u8(&mut self, what: &'static str, max: usize) -> Result<&'a str, DecodeError> {
        let len = usize::from(self.u8()?);
        if len > max {
            return Err(DecodeError::TooLong { what, len, max });
        }
        std::str::from_utf8(self.bytes(len)?).map_err(|_| DecodeError::Invalid {
            what,
            reason: "not UTF-8",
        })
    }

    /// A socket address as [`Writer::socket_addr`] writes it:
    /// `kind:u8 (4|6) | ip:[4|16] | port:u16`.
    pub fn socket_addr(&mut self) -> Result<std::net::SocketAddr, DecodeError> {
        let ip = match self.u8()? {
            4 => std::net::IpAddr::from(self.array::<4>()?),
            6 => std::net::IpAddr::from(self.array::<16>()?),
            k => {
                return Err(DecodeError::Unknown {
                    what: "address kind",
                    value: u64::from(k),
                });
            }
        };
        Ok(std::net::SocketAddr::new(ip, self.u16()?))
    }

    /// Takes everything that is left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// Succeeds only if nothing is left.
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Trailing(self.buf.len()))
        }
    }
}

/// `s` cut to at most `max` bytes, on a character boundary: for
/// human-readable text only (error messages, reasons), never for a name,
/// a path or anything signed, which [`Writer`] refuses to shorten.
pub fn clip(s: &str, max: usize) -> &str {
    let mut cut = s.len().min(max);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

/// A field too long for its format: the encoder fails instead of
/// shortening it (a clipped name is another name; a clipped signed record
/// no longer verifies).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{what} too long to encode: {len} bytes (max {max})")]
pub struct EncodeError {
    /// The field.
    pub what: &'static str,
    /// Its length.
    pub len: usize,
    /// What the format allows.
    pub max: usize,
}

/// Appends fields to a buffer, big-endian; length-prefixed fields are
/// checked against their maximum and never clipped.
#[derive(Debug)]
pub struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> Writer<'a> {
    /// Appends to `out`.
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        Self { out }
    }

    /// One byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.out.push(v);
        self
    }

    /// A big-endian u16.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.bytes(&v.to_be_bytes())
    }

    /// A big-endian u32.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes(&v.to_be_bytes())
    }

    /// A big-endian u64.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_be_bytes())
    }

    /// Raw bytes (fixed-size fields, or the rest of a message).
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.out.extend_from_slice(b);
        self
    }

    /// A socket address: `kind:u8 (4|6) | ip:[4|16] | port:u16`.
    pub fn socket_addr(&mut self, a: &std::net::SocketAddr) -> &mut Self {
        match a.ip() {
            std::net::IpAddr::V4(ip) => self.u8(4).bytes(&ip.octets()),
            std::net::IpAddr::V6(ip) => self.u8(6).bytes(&ip.octets()),
        };
        self.u16(a.port())
    }

    fn check(what: &'static str, len: usize, max: usize) -> Result<(), EncodeError> {
        if len > max {
            return Err(EncodeError { what, len, max });
        }
        Ok(())
    }

    /// A u8 length and the bytes; more than `max` (or 255) is an error.
    pub fn bytes_u8(&mut self, what: &'static str, max: usize, b: &[u8]) -> Result<&mut Self, EncodeError> {
        Self::check(what, b.len(), max.min(usize::from(u8::MAX)))?;
        self.out.push(b.len() as u8);
        Ok(self.bytes(b))
    }

    /// A u16 length and the bytes; more than `max` (or 65,535) is an error.
    pub fn bytes_u16(&mut self, what: &'static str, max: usize, b: &[u8]) -> Result<&mut Self, EncodeError> {
        Self::check(what, b.len(), max.min(usize::from(u16::MAX)))?;
        self.out.extend_from_slice(&(b.len() as u16).to_be_bytes());
        Ok(self.bytes(b))
    }

    /// Human-readable text with a u16 length, [`clip`]ped to `max` bytes
    /// on purpose (a reason or an error message, never a name).
    pub fn text_u16(&mut self, max: usize, s: &str) -> &mut Self {
        let t = clip(s, max.min(usize::from(u16::MAX)));
        self.out.extend_from_slice(&(t.len() as u16).to_be_bytes());
        self.bytes(t.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Socket addresses: both kinds round-trip, bytes as documented; an
    /// unknown kind or a short one is an error.
    #[test]
    fn socket_addresses() {
        let v4: std::net::SocketAddr = "10.1.2.3:9010".parse().unwrap();
        let v6: std::net::SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        let mut out = Vec::new();
        Writer::new(&mut out).socket_addr(&v4).socket_addr(&v6);
        assert_eq!(&out[..7], &[4, 10, 1, 2, 3, 0x23, 0x32]);
        assert_eq!(out.len(), 7 + 19);
        let mut r = Reader::new(&out);
        assert_eq!(r.socket_addr().unwrap(), v4);
        assert_eq!(r.socket_addr().unwrap(), v6);
        assert!(r.finish().is_ok());
        assert_eq!(
            Reader::new(&[5, 0, 0]).socket_addr(),
            Err(DecodeError::Unknown {
                what: "address kind",
                value: 5
            })
        );
        assert!(Reader::new(&[6, 1, 2]).socket_addr().is_err());
    }

    #[test]
    fn reads_are_bounds_checked() {
        let mut r = Reader::new(&[0, 5, b'a']);
        assert_eq!(
            r.clone().bytes_u16("x", 4),
            Err(DecodeError::TooLong {
                what: "x",
                len: 5,
                max: 4
            })
        );
        assert_eq!(r.bytes_u16("x", 10), Err(DecodeError::Truncated { needed: 4 }));
        let mut r = Reader::new(&[1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(r.u64().unwrap(), 0x0102030405060708);
        assert_eq!(r.clone().finish(), Err(DecodeError::Trailing(1)));
        assert_eq!(r.u8().unwrap(), 9);
        assert!(r.u8().is_err());
        assert!(r.finish().is_ok());
    }

    #[test]
    fn the_writer_refuses_what_does_not_fit_and_clips_only_text() {
        let mut v = Vec::new();
        let e = Writer::new(&mut v)
            .bytes_u8("name", 300, &[7u8; 256])
            .unwrap_err();
        assert_eq!(
            e,
            EncodeError {
                what: "name",
                len: 256,
                max: 255
            }
        );
        assert!(Writer::new(&mut v).bytes_u16("path", 4, b"abcde").is_err());
        assert!(v.is_empty(), "nothing written by a refused field");
        Writer::new(&mut v)
            .u8(1)
            .u16(2)
            .bytes_u8("name", 8, b"ab")
            .unwrap()
            .text_u16(3, "héllo");
        assert_eq!(v, [1, 0, 2, 2, b'a', b'b', 0, 3, b'h', 0xc3, 0xa9]);
    }
}
