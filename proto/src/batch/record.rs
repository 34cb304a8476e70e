//! One record of the records section (Kafka's v2 record layout): the zero-copy decoded view,
//! its headers, and the encoder the builder uses.
//!
//! ```text
//! length          varint   bytes of the record after this field
//! attributes      u8       0
//! timestamp_delta varlong  ms after the batch's base_timestamp
//! offset_delta    varint   the record's index in the batch
//! key_length      varint   -1 for a null key
//! key             bytes
//! value_length    varint   -1 for a null value
//! value           bytes
//! header_count    varint
//! headers         header_count x (key_length varint >= 0, key, value_length varint
//!                 (-1 = null), value)
//! ```

use std::iter::FusedIterator;

use bytes::{BufMut, Bytes};

use crate::batch::cursor::Cursor;
use crate::batch::varint::{put_varint, put_varlong, varint_len, varlong_len};
use crate::error::DecodeError;
use crate::limits::Limits;
use crate::offset::Offset;

/// Smallest encoded record: a one-byte length and six one-byte fields (attributes,
/// timestamp delta, offset delta, key length, value length, header count).
pub const RECORD_BYTES_MIN: u32 = 7;

/// One decoded record. Keys, values and headers are slices of the batch's bytes (or of the
/// decompressed section), not copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Index of the record in its batch; its offset is `base_offset + offset_delta`.
    pub offset_delta: u32,
    /// Milliseconds after the batch's base timestamp (may be negative).
    pub timestamp_delta: i64,
    /// The key, `None` for a null key.
    pub key: Option<Bytes>,
    /// The value, `None` for a null value (a tombstone).
    pub value: Option<Bytes>,
    /// The record headers.
    pub headers: RecordHeaders,
}

impl Record {
    /// The record's offset in a batch starting at `base`.
    pub fn offset(&self, base: Offset) -> Offset {
        Offset(base.0.saturating_add(u64::from(self.offset_delta)))
    }

    /// The record's timestamp (ms) in a batch whose base timestamp is `base_timestamp`.
    pub fn timestamp(&self, base_timestamp: i64) -> i64 {
        base_timestamp.saturating_add(self.timestamp_delta)
    }
}

/// The headers of a record: a view of their encoded bytes, decoded lazily by
/// [`RecordHeaders::iter`]. The record decoder has already checked them against the limits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordHeaders {
    bytes: Bytes,
    count: u32,
}

impl RecordHeaders {
    /// Number of headers.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether there are no headers.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The headers in order, as `(key, value)` with `None` for a null value.
    pub fn iter(&self) -> RecordHeadersIter {
        RecordHeadersIter {
            bytes: self.bytes.clone(),
            pos: 0,
            left: self.count,
        }
    }
}

impl IntoIterator for &RecordHeaders {
    type Item = Result<(Bytes, Option<Bytes>), DecodeError>;
    type IntoIter = RecordHeadersIter;

    fn into_iter(self) -> RecordHeadersIter {
        self.iter()
    }
}

/// Iterator over [`RecordHeaders`]. Positions in its errors count from the first header.
/// After an error it yields `None`.
#[derive(Debug, Clone)]
pub struct RecordHeadersIter {
    bytes: Bytes,
    pos: usize,
    left: u32,
}

impl Iterator for RecordHeadersIter {
    type Item = Result<(Bytes, Option<Bytes>), DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let mut cursor = Cursor::new(&self.bytes, self.pos);
        let header = read_header(&mut cursor, &self.bytes, &UNBOUNDED);
        match header {
            Ok(header) => {
                self.pos = cursor.pos();
                Some(Ok(header))
            }
            Err(e) => {
                self.left = 0;
                Some(Err(e))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.left as usize))
    }
}

impl FusedIterator for RecordHeadersIter {}

/// Header limits for re-reading headers the record decoder already checked.
const UNBOUNDED: Limits = Limits {
    batch_bytes_max: u32::MAX,
    batch_records_max: u32::MAX,
    records_uncompressed_bytes_max: u32::MAX,
    key_bytes_max: u32::MAX,
    value_bytes_max: u32::MAX,
    record_headers_max: u32::MAX,
    header_key_bytes_max: u32::MAX,
    header_value_bytes_max: u32::MAX,
};

/// Decodes the record starting at `*pos` in `section`, checking it is record `index` and
/// within `limits`, and advances `*pos` past it. Key, value and headers are slices of
/// `section`.
pub(crate) fn decode_record(
    section: &Bytes,
    pos: &mut usize,
    index: u32,
    base_timestamp: i64,
    limits: &Limits,
) -> Result<Record, DecodeError> {
    let mut cursor = Cursor::new(section, *pos);
    let length_at = cursor.pos();
    let length = cursor.read_varint()?;
    let length = usize::try_from(length).map_err(|_| DecodeError::Malformed {
        at: length_at,
        reason: "negative record length",
    })?;
    // Read the body through a cursor that ends where the record says it ends.
    let body = cursor.take(length)?;
    let mut body_cursor = Cursor::new(&section[..body.end], body.start);

    let attributes_at = body_cursor.pos();
    if body_cursor.read_u8()? != 0 {
        return Err(DecodeError::Malformed {
            at: attributes_at,
            reason: "record attributes must be zero",
        });
    }
    let timestamp_at = body_cursor.pos();
    let timestamp_delta = body_cursor.read_varlong()?;
    if base_timestamp.checked_add(timestamp_delta).is_none() {
        return Err(DecodeError::Malformed {
            at: timestamp_at,
            reason: "timestamp delta overflows the base timestamp",
        });
    }
    let offset_delta_at = body_cursor.pos();
    let offset_delta = body_cursor.read_varint()?;
    if u32::try_from(offset_delta) != Ok(index) {
        return Err(DecodeError::OffsetDeltaMismatch {
            at: offset_delta_at,
            index,
            found: offset_delta,
        });
    }
    let key = read_bytes(
        &mut body_cursor,
        section,
        Nullable::Yes,
        limits.key_bytes_max,
        "key bytes",
    )?;
    let value = read_bytes(
        &mut body_cursor,
        section,
        Nullable::Yes,
        limits.value_bytes_max,
        "value bytes",
    )?;
    let count_at = body_cursor.pos();
    let count = body_cursor.read_varint()?;
    let count = u32::try_from(count).map_err(|_| DecodeError::Malformed {
        at: count_at,
        reason: "negative header count",
    })?;
    if count > limits.record_headers_max {
        return Err(DecodeError::LimitExceeded {
            what: "record headers",
            size: u64::from(count),
            max: u64::from(limits.record_headers_max),
        });
    }
    let headers_start = body_cursor.pos();
    // Bounded by `count <= record_headers_max`, and each header consumes at least two bytes.
    for _ in 0..count {
        read_header(&mut body_cursor, section, limits)?;
    }
    let headers_end = body_cursor.pos();
    if headers_end != body.end {
        return Err(DecodeError::Malformed {
            at: headers_end,
            reason: "record length does not match its fields",
        });
    }
    *pos = body.end;
    Ok(Record {
        offset_delta: index,
        timestamp_delta,
        key,
        value,
        headers: RecordHeaders {
            bytes: section.slice(headers_start..headers_end),
            count,
        },
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Nullable {
    Yes,
    No,
}

/// A length-prefixed byte string: length varint (-1 = null where allowed), then the bytes.
fn read_bytes(
    cursor: &mut Cursor<'_>,
    source: &Bytes,
    nullable: Nullable,
    max: u32,
    what: &'static str,
) -> Result<Option<Bytes>, DecodeError> {
    let at = cursor.pos();
    let length = cursor.read_varint()?;
    if length == -1 && nullable == Nullable::Yes {
        return Ok(None);
    }
    let Ok(length) = u32::try_from(length) else {
        return Err(DecodeError::Malformed {
            at,
            reason: "negative length",
        });
    };
    if length > max {
        return Err(DecodeError::LimitExceeded {
            what,
            size: u64::from(length),
            max: u64::from(max),
        });
    }
    let range = cursor.take(length as usize)?;
    Ok(Some(source.slice(range)))
}

fn read_header(
    cursor: &mut Cursor<'_>,
    source: &Bytes,
    limits: &Limits,
) -> Result<(Bytes, Option<Bytes>), DecodeError> {
    let key_at = cursor.pos();
    let key = read_bytes(
        cursor,
        source,
        Nullable::No,
        limits.header_key_bytes_max,
        "header key bytes",
    )?
    .ok_or(DecodeError::Malformed {
        at: key_at,
        reason: "null header key",
    })?;
    let value = read_bytes(
        cursor,
        source,
        Nullable::Yes,
        limits.header_value_bytes_max,
        "header value bytes",
    )?;
    Ok((key, value))
}

/// Size of the record body (everything after the length varint). Computed in u64 from the
/// lengths of slices that exist in memory, so it cannot overflow.
pub(crate) fn body_len(
    timestamp_delta: i64,
    offset_delta: i32,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[(&[u8], Option<&[u8]>)],
) -> u64 {
    let mut len = 1 + varlong_len(timestamp_delta) as u64 + varint_len(offset_delta) as u64;
    len += bytes_len(key) + bytes_len(value);
    len += prefix_len(headers.len() as u64);
    for (k, v) in headers {
        len += bytes_len(Some(k)) + bytes_len(*v);
    }
    len
}

/// Encoded size of a length-prefixed byte string.
fn bytes_len(bytes: Option<&[u8]>) -> u64 {
    match bytes {
        None => 1,
        Some(b) => prefix_len(b.len() as u64) + b.len() as u64,
    }
}

/// Size of the varint holding `n`; lengths beyond i32 never get encoded (the builder checks
/// every length against limits that fit an i32), so the widest width is the honest answer.
fn prefix_len(n: u64) -> u64 {
    i32::try_from(n).map_or(5, |n| varint_len(n) as u64)
}

/// Encodes one record. The caller has checked every length fits an i32 and `body_len` is the
/// value [`body_len`] returned for the same arguments.
pub(crate) fn encode_record(
    out: &mut impl BufMut,
    body_len: i32,
    timestamp_delta: i64,
    offset_delta: i32,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[(&[u8], Option<&[u8]>)],
) {
    put_varint(out, body_len);
    out.put_u8(0);
    put_varlong(out, timestamp_delta);
    put_varint(out, offset_delta);
    put_bytes(out, key);
    put_bytes(out, value);
    put_varint(out, encoded_i32(headers.len()));
    for (k, v) in headers {
        put_bytes(out, Some(k));
        put_bytes(out, *v);
    }
}

fn put_bytes(out: &mut impl BufMut, bytes: Option<&[u8]>) {
    match bytes {
        None => put_varint(out, -1),
        Some(b) => {
            put_varint(out, encoded_i32(b.len()));
            out.put_slice(b);
        }
    }
}

fn encoded_i32(n: usize) -> i32 {
    i32::try_from(n).expect("the builder checks every length against limits below i32::MAX")
}
