//! Bounded reads over untrusted bytes: every read checks what is left and reports where it
//! failed; nothing here panics or allocates.

use std::ops::Range;

use crate::batch::varint::{VARINT_BYTES_MAX, VARLONG_BYTES_MAX, unzigzag32, unzigzag64};
use crate::error::DecodeError;

/// A read position in `buf`. Positions are absolute indexes into `buf`, so errors name the
/// byte offset within the whole buffer even when reading a sub-range of it.
#[derive(Debug, Clone)]
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// Reads `buf` from `pos`; a `pos` past the end reads as empty.
    pub(crate) fn new(buf: &'a [u8], pos: usize) -> Self {
        Cursor { buf, pos }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn truncated(&self, need: usize) -> DecodeError {
        DecodeError::Truncated {
            at: self.pos,
            need,
            have: self.remaining(),
        }
    }

    pub(crate) fn read_u8(&mut self) -> Result<u8, DecodeError> {
        let byte = *self.buf.get(self.pos).ok_or_else(|| self.truncated(1))?;
        self.pos += 1;
        Ok(byte)
    }

    /// Skips `len` bytes and returns their range.
    pub(crate) fn take(&mut self, len: usize) -> Result<Range<usize>, DecodeError> {
        if len > self.remaining() {
            return Err(self.truncated(len));
        }
        let start = self.pos;
        self.pos += len;
        Ok(start..self.pos)
    }

    /// A zigzag LEB128 i32 of at most [`VARINT_BYTES_MAX`] bytes. Non-minimal encodings are
    /// accepted (as Kafka does); bits beyond 32 are not.
    pub(crate) fn read_varint(&mut self) -> Result<i32, DecodeError> {
        let at = self.pos;
        let mut n: u32 = 0;
        for i in 0..VARINT_BYTES_MAX {
            let byte = self.read_u8()?;
            if i == VARINT_BYTES_MAX - 1 && byte & 0xf0 != 0 {
                return Err(DecodeError::VarintOverflow { at });
            }
            n |= u32::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(unzigzag32(n));
            }
        }
        // Not reached: the last byte either overflows or ends the varint.
        Err(DecodeError::VarintOverflow { at })
    }

    /// A zigzag LEB128 i64 of at most [`VARLONG_BYTES_MAX`] bytes.
    pub(crate) fn read_varlong(&mut self) -> Result<i64, DecodeError> {
        let at = self.pos;
        let mut n: u64 = 0;
        for i in 0..VARLONG_BYTES_MAX {
            let byte = self.read_u8()?;
            if i == VARLONG_BYTES_MAX - 1 && byte & 0xfe != 0 {
                return Err(DecodeError::VarintOverflow { at });
            }
            n |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(unzigzag64(n));
            }
        }
        // Not reached: the last byte either overflows or ends the varlong.
        Err(DecodeError::VarintOverflow { at })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::varint::{put_varint, put_varlong};

    #[test]
    fn varint_roundtrip_edges() {
        for v in [0, 1, -1, 63, -64, 64, 8191, -8192, i32::MAX, i32::MIN] {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            let mut c = Cursor::new(&buf, 0);
            assert_eq!(c.read_varint(), Ok(v));
            assert_eq!(c.remaining(), 0);
        }
        for v in [0, 1, -1, i64::from(i32::MAX) + 1, i64::MAX, i64::MIN] {
            let mut buf = Vec::new();
            put_varlong(&mut buf, v);
            let mut c = Cursor::new(&buf, 0);
            assert_eq!(c.read_varlong(), Ok(v));
            assert_eq!(c.remaining(), 0);
        }
    }

    #[test]
    fn varint_rejects_overflow_and_truncation() {
        // Fifth byte carrying bits beyond 32.
        let mut c = Cursor::new(&[0xff, 0xff, 0xff, 0xff, 0x1f], 0);
        assert_eq!(c.read_varint(), Err(DecodeError::VarintOverflow { at: 0 }));
        // Continuation past five bytes.
        let mut c = Cursor::new(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x00], 0);
        assert_eq!(c.read_varint(), Err(DecodeError::VarintOverflow { at: 0 }));
        let mut c = Cursor::new(&[0x80; 10], 0);
        assert_eq!(c.read_varlong(), Err(DecodeError::VarintOverflow { at: 0 }));
        let mut c = Cursor::new(&[0x80, 0x80], 0);
        assert_eq!(
            c.read_varint(),
            Err(DecodeError::Truncated {
                at: 2,
                need: 1,
                have: 0
            })
        );
        // Largest valid five-byte varint.
        let mut c = Cursor::new(&[0xff, 0xff, 0xff, 0xff, 0x0f], 0);
        assert_eq!(c.read_varint(), Ok(i32::MIN));
        // Non-minimal zero.
        let mut c = Cursor::new(&[0x80, 0x00], 0);
        assert_eq!(c.read_varint(), Ok(0));
    }

    #[test]
    fn take_is_bounded() {
        let mut c = Cursor::new(&[1, 2, 3], 1);
        assert_eq!(c.take(2), Ok(1..3));
        assert_eq!(
            c.take(1),
            Err(DecodeError::Truncated {
                at: 3,
                need: 1,
                have: 0
            })
        );
        let mut c = Cursor::new(&[1], 5);
        assert_eq!(c.remaining(), 0);
        assert!(c.read_u8().is_err());
    }
}
