//! Total decoding and simple encoding helpers shared by every binary codec.
//!
//! A [`Reader`] walks a byte slice and never panics: every read checks the
//! remaining length first, and every length-prefixed field is checked against a
//! named maximum *before* anything is allocated. Decoders built on it are total:
//! any input yields either a value or a [`DecodeError`].

use thiserror::Error;

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

/// `s` cut to at most `max` bytes, on a character boundary.
pub fn clip(s: &str, max: usize) -> &str {
    let mut cut = s.len().min(max);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

/// Appends a u16 length and the bytes. The caller guarantees `b.len() <= u16::MAX`
/// (every encoder checks its field against its `MAX_*` first).
pub fn put_bytes_u16(out: &mut Vec<u8>, b: &[u8]) {
    let len = u16::try_from(b.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&b[..usize::from(len)]);
}

/// Appends a u8 length and the bytes, truncated to 255 bytes.
pub fn put_bytes_u8(out: &mut Vec<u8>, b: &[u8]) {
    let len = u8::try_from(b.len()).unwrap_or(u8::MAX);
    out.push(len);
    out.extend_from_slice(&b[..usize::from(len)]);
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn put_truncates_instead_of_panicking() {
        let mut v = Vec::new();
        put_bytes_u8(&mut v, &[7u8; 300]);
        assert_eq!(v.len(), 256);
        assert_eq!(v[0], 255);
    }
}
