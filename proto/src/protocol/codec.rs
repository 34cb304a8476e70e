//! The field codec: fixed-width little-endian integers, length-prefixed strings, counted
//! arrays and record sets, read from untrusted bytes without panicking and without allocating
//! beyond the frame's own bytes.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::limits::{ARRAY_LEN_MAX, STRING_BYTES_MAX};

/// Why a frame's payload is not a valid message. Says where and why.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// The payload ends before a field.
    #[error("truncated at byte {at} reading {field}: need {need} bytes, have {have}")]
    Truncated {
        /// Byte position in the payload.
        at: usize,
        /// What was being read.
        field: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes left.
        have: usize,
    },
    /// A length or count is above its limit.
    #[error("{field} of {size} at byte {at} is over the limit of {max}")]
    TooLarge {
        /// Byte position in the payload.
        at: usize,
        /// What was being read.
        field: &'static str,
        /// The declared size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// A string is not UTF-8.
    #[error("{field} at byte {at} is not UTF-8")]
    InvalidUtf8 {
        /// Byte position in the payload.
        at: usize,
        /// What was being read.
        field: &'static str,
    },
    /// A field holds a value the protocol does not define.
    #[error("{field} at byte {at} has invalid value {value}")]
    InvalidValue {
        /// Byte position in the payload.
        at: usize,
        /// What was being read.
        field: &'static str,
        /// The value found.
        value: i64,
    },
    /// Bytes are left over after the message.
    #[error("{extra} unexpected bytes after the message at byte {at}")]
    TrailingBytes {
        /// Where the message ended.
        at: usize,
        /// Bytes left over.
        extra: usize,
    },
}

/// Reads fields from a received payload. Record sets come out as zero-copy slices of it.
pub struct Reader {
    buf: BytesMut,
    at: usize,
}

impl Reader {
    /// A reader over one frame's payload.
    pub fn new(buf: BytesMut) -> Self {
        Self { buf, at: 0 }
    }

    /// Current position from the start of the payload.
    pub fn position(&self) -> usize {
        self.at
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn need(&self, field: &'static str, need: usize) -> Result<(), ProtocolError> {
        if self.buf.len() < need {
            return Err(ProtocolError::Truncated {
                at: self.at,
                field,
                need,
                have: self.buf.len(),
            });
        }
        Ok(())
    }

    /// Fails unless every byte was read.
    pub fn finish(self) -> Result<(), ProtocolError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::TrailingBytes {
                at: self.at,
                extra: self.buf.len(),
            })
        }
    }

    /// An invalid-value error at the current position.
    pub fn invalid(&self, field: &'static str, value: i64) -> ProtocolError {
        ProtocolError::InvalidValue {
            at: self.at,
            field,
            value,
        }
    }

    /// Reads a `u8`.
    pub fn u8(&mut self, field: &'static str) -> Result<u8, ProtocolError> {
        self.need(field, 1)?;
        self.at += 1;
        Ok(self.buf.get_u8())
    }

    /// Reads an `i8`.
    pub fn i8(&mut self, field: &'static str) -> Result<i8, ProtocolError> {
        self.need(field, 1)?;
        self.at += 1;
        Ok(self.buf.get_i8())
    }

    /// Reads a `bool` (0 or 1).
    pub fn bool(&mut self, field: &'static str) -> Result<bool, ProtocolError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(ProtocolError::InvalidValue {
                at: self.at - 1,
                field,
                value: i64::from(v),
            }),
        }
    }

    /// Reads a `u16`.
    pub fn u16(&mut self, field: &'static str) -> Result<u16, ProtocolError> {
        self.need(field, 2)?;
        self.at += 2;
        Ok(self.buf.get_u16_le())
    }

    /// Reads an `i16`.
    pub fn i16(&mut self, field: &'static str) -> Result<i16, ProtocolError> {
        self.need(field, 2)?;
        self.at += 2;
        Ok(self.buf.get_i16_le())
    }

    /// Reads a `u32`.
    pub fn u32(&mut self, field: &'static str) -> Result<u32, ProtocolError> {
        self.need(field, 4)?;
        self.at += 4;
        Ok(self.buf.get_u32_le())
    }

    /// Reads an `i32`.
    pub fn i32(&mut self, field: &'static str) -> Result<i32, ProtocolError> {
        self.need(field, 4)?;
        self.at += 4;
        Ok(self.buf.get_i32_le())
    }

    /// Reads a `u64`.
    pub fn u64(&mut self, field: &'static str) -> Result<u64, ProtocolError> {
        self.need(field, 8)?;
        self.at += 8;
        Ok(self.buf.get_u64_le())
    }

    /// Reads an `i64`.
    pub fn i64(&mut self, field: &'static str) -> Result<i64, ProtocolError> {
        self.need(field, 8)?;
        self.at += 8;
        Ok(self.buf.get_i64_le())
    }

    /// Reads a string: `u16` length, then UTF-8 bytes.
    pub fn string(&mut self, field: &'static str) -> Result<String, ProtocolError> {
        let at = self.at;
        let len = usize::from(self.u16(field)?);
        if len > STRING_BYTES_MAX {
            return Err(ProtocolError::TooLarge {
                at,
                field,
                size: len as u64,
                max: STRING_BYTES_MAX as u64,
            });
        }
        self.need(field, len)?;
        let bytes = self.buf.split_to(len);
        self.at += len;
        String::from_utf8(bytes.to_vec()).map_err(|_| ProtocolError::InvalidUtf8 { at, field })
    }

    /// Reads a nullable string: length `u16::MAX` is null.
    pub fn optional_string(
        &mut self,
        field: &'static str,
    ) -> Result<Option<String>, ProtocolError> {
        self.need(field, 2)?;
        if self.buf[..2] == [0xff; 2] {
            self.at += 2;
            self.buf.advance(2);
            return Ok(None);
        }
        self.string(field).map(Some)
    }

    /// Reads an array count (`u32`), bounded by `max`, by [`ARRAY_LEN_MAX`] and by the bytes
    /// left (each element takes at least `min_element_bytes`), so a hostile count cannot make
    /// the caller reserve memory.
    pub fn count(
        &mut self,
        field: &'static str,
        max: usize,
        min_element_bytes: usize,
    ) -> Result<usize, ProtocolError> {
        let at = self.at;
        let count = self.u32(field)? as usize;
        let max = max.min(ARRAY_LEN_MAX);
        if count > max {
            return Err(ProtocolError::TooLarge {
                at,
                field,
                size: count as u64,
                max: max as u64,
            });
        }
        let need = count.saturating_mul(min_element_bytes.max(1));
        self.need(field, need)?;
        Ok(count)
    }

    /// Reads an optional array count: `u32::MAX` means "absent" (for instance "all topics").
    pub fn optional_count(
        &mut self,
        field: &'static str,
        max: usize,
        min_element_bytes: usize,
    ) -> Result<Option<usize>, ProtocolError> {
        self.need(field, 4)?;
        if self.buf[..4] == [0xff; 4] {
            self.at += 4;
            self.buf.advance(4);
            return Ok(None);
        }
        self.count(field, max, min_element_bytes).map(Some)
    }

    /// Reads `len` raw bytes as a zero-copy slice of the payload.
    pub fn bytes(&mut self, field: &'static str, len: usize) -> Result<BytesMut, ProtocolError> {
        self.need(field, len)?;
        self.at += len;
        Ok(self.buf.split_to(len))
    }

    /// Reads a record set: `u32` length, then that many bytes of back-to-back batches.
    pub fn records(&mut self, field: &'static str, max: usize) -> Result<RecordSet, ProtocolError> {
        let at = self.at;
        let len = self.u32(field)? as usize;
        if len > max {
            return Err(ProtocolError::TooLarge {
                at,
                field,
                size: len as u64,
                max: max as u64,
            });
        }
        Ok(RecordSet::Received(self.bytes(field, len)?))
    }
}

/// Writes fields into a frame. Record sets given as [`Bytes`] are not copied: the frame
/// becomes a list of chunks for one vectored write.
#[derive(Default)]
pub struct Writer {
    done: Vec<Bytes>,
    cur: BytesMut,
    len: usize,
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// A writer for one whole frame: room for the length prefix is kept at the start and
    /// filled in by [`Writer::into_frame`], so the payload is never copied to prepend it.
    pub fn frame() -> Self {
        let mut w = Self::default();
        w.cur.put_u32_le(0);
        w
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes a `u8`.
    pub fn u8(&mut self, v: u8) {
        self.cur.put_u8(v);
        self.len += 1;
    }

    /// Writes an `i8`.
    pub fn i8(&mut self, v: i8) {
        self.cur.put_i8(v);
        self.len += 1;
    }

    /// Writes a `bool` as 0 or 1.
    pub fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }

    /// Writes a `u16`.
    pub fn u16(&mut self, v: u16) {
        self.cur.put_u16_le(v);
        self.len += 2;
    }

    /// Writes an `i16`.
    pub fn i16(&mut self, v: i16) {
        self.cur.put_i16_le(v);
        self.len += 2;
    }

    /// Writes a `u32`.
    pub fn u32(&mut self, v: u32) {
        self.cur.put_u32_le(v);
        self.len += 4;
    }

    /// Writes an `i32`.
    pub fn i32(&mut self, v: i32) {
        self.cur.put_i32_le(v);
        self.len += 4;
    }

    /// Writes a `u64`.
    pub fn u64(&mut self, v: u64) {
        self.cur.put_u64_le(v);
        self.len += 8;
    }

    /// Writes an `i64`.
    pub fn i64(&mut self, v: i64) {
        self.cur.put_i64_le(v);
        self.len += 8;
    }

    /// Writes a string, truncated to [`STRING_BYTES_MAX`] bytes at a character boundary.
    pub fn string(&mut self, s: &str) {
        let mut end = s.len().min(STRING_BYTES_MAX);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.u16(end as u16);
        self.cur.put_slice(&s.as_bytes()[..end]);
        self.len += end;
    }

    /// Writes an array count.
    ///
    /// # Panics
    /// If `n` is over `u32::MAX - 1` (a programmer error: limits are far below).
    pub fn count(&mut self, n: usize) {
        let n = u32::try_from(n).ok().filter(|&n| n != u32::MAX);
        self.u32(n.expect("array count fits the wire"));
    }

    /// Writes an optional array count (`u32::MAX` for absent).
    pub fn optional_count(&mut self, n: Option<usize>) {
        match n {
            Some(n) => self.count(n),
            None => self.u32(u32::MAX),
        }
    }

    /// Appends a chunk without copying it.
    pub fn chunk(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        self.len += bytes.len();
        if bytes.len() < 512 {
            // Small chunks are cheaper copied than as an extra iovec.
            self.cur.put_slice(&bytes);
            return;
        }
        if !self.cur.is_empty() {
            self.done.push(self.cur.split().freeze());
        }
        self.done.push(bytes);
    }

    /// Writes a record set: `u32` total length, then its batches.
    pub fn records(&mut self, records: &RecordSet) {
        self.u32(records.len() as u32);
        match records {
            RecordSet::Chunks(chunks) => {
                for chunk in chunks {
                    self.chunk(chunk.clone());
                }
            }
            RecordSet::Received(bytes) => {
                self.cur.put_slice(bytes);
                self.len += bytes.len();
            }
        }
    }

    /// The frame begun with [`Writer::frame`], its length prefix filled in, as chunks for
    /// one vectored write. Only the bytes before the first shared chunk (the headers) are
    /// copied, and only when there are shared chunks.
    ///
    /// # Panics
    /// If the writer was not made with [`Writer::frame`] (a programmer error), or the
    /// payload is over 4 GiB (frames are limited far below).
    pub fn into_frame(mut self) -> Vec<Bytes> {
        let prefix = u32::try_from(self.len)
            .expect("frames are far below 4 GiB")
            .to_le_bytes();
        match self.done.first_mut() {
            None => {
                self.cur[..4].copy_from_slice(&prefix);
                vec![self.cur.freeze()]
            }
            Some(first) => {
                let mut head = BytesMut::from(&first[..]);
                head[..4].copy_from_slice(&prefix);
                *first = head.freeze();
                self.into_chunks()
            }
        }
    }

    /// The written bytes as chunks, in order.
    pub fn into_chunks(mut self) -> Vec<Bytes> {
        if !self.cur.is_empty() {
            self.done.push(self.cur.freeze());
        }
        self.done
    }
}

/// Back-to-back record batches in one protocol field: chunks to send (zero-copy from the
/// producer's buffer or the log), or bytes received (a slice of the frame).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordSet {
    /// Batches to send, one or more chunks.
    Chunks(Vec<Bytes>),
    /// Batches as received.
    Received(BytesMut),
}

impl RecordSet {
    /// No batches.
    pub fn empty() -> Self {
        RecordSet::Chunks(Vec::new())
    }

    /// Total bytes.
    pub fn len(&self) -> usize {
        match self {
            RecordSet::Chunks(c) => c.iter().map(Bytes::len).sum(),
            RecordSet::Received(b) => b.len(),
        }
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes, writable (copies only if given as several chunks).
    pub fn into_bytes_mut(self) -> BytesMut {
        match self {
            RecordSet::Received(b) => b,
            RecordSet::Chunks(chunks) => {
                let mut out = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
                for c in chunks {
                    out.put_slice(&c);
                }
                out
            }
        }
    }

    /// The bytes, shared (copies only if given as several chunks).
    pub fn into_bytes(self) -> Bytes {
        match self {
            RecordSet::Chunks(mut chunks) if chunks.len() == 1 => chunks.remove(0),
            other => other.into_bytes_mut().freeze(),
        }
    }
}
