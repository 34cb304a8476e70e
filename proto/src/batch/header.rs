//! The 61-byte batch header: parsing and checking it, encoding it, and the in-place edits the
//! broker makes (stamping the base offset and leader epoch).

use crate::batch::attributes::{Attributes, Compression};
use crate::batch::layout::BATCH_FORMAT_VERSION;
use crate::batch::layout::{
    ATTRIBUTES_AT, BASE_OFFSET_AT, BASE_SEQUENCE_AT, BASE_TIMESTAMP_AT, BATCH_HEADER_BYTES,
    BATCH_LENGTH_AT, CRC_AT, LAST_OFFSET_DELTA_AT, LEADER_EPOCH_AT, MAX_TIMESTAMP_AT, PEEK_BYTES,
    PRODUCER_EPOCH_AT, PRODUCER_ID_AT, RECORD_COUNT_AT, VERSION_AT,
};
use crate::error::DecodeError;
use crate::limits::Limits;
use crate::offset::Offset;

/// The decoded batch header. Fields are as stored; [`BatchHeader::parse`] checks them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BatchHeader {
    /// Offset of the first record; stamped by the broker.
    pub base_offset: Offset,
    /// Length of the whole batch in bytes, header included.
    pub batch_length: u32,
    /// Leader epoch of the broker that appended the batch; stamped by the broker.
    pub leader_epoch: u32,
    /// Format version ([`BATCH_FORMAT_VERSION`]).
    pub format_version: u8,
    /// CRC32C of every byte after the CRC field.
    pub crc: u32,
    /// Codec, timestamp type, transactional and control flags.
    pub attributes: Attributes,
    /// Offset delta of the last record: `record_count - 1`.
    pub last_offset_delta: u32,
    /// Timestamp (ms) the record timestamp deltas are relative to.
    pub base_timestamp: i64,
    /// Largest record timestamp (ms).
    pub max_timestamp: i64,
    /// Idempotent producer id, -1 for none.
    pub producer_id: i64,
    /// Producer epoch, -1 for none.
    pub producer_epoch: i16,
    /// Sequence number of the first record, -1 for none.
    pub base_sequence: i32,
    /// Number of records, at least 1.
    pub record_count: u32,
}

impl BatchHeader {
    /// Parses and checks the header at the start of `bytes` (only its first
    /// [`BATCH_HEADER_BYTES`] are read): version, batch length within
    /// `[BATCH_HEADER_BYTES, limits.batch_bytes_max]`, record count within
    /// `[1, limits.batch_records_max]`, `last_offset_delta == record_count - 1`, no offset
    /// overflow, and attributes with no unknown bits and a supported codec.
    /// Does not check the CRC ([`crate::verify_crc`]).
    pub fn parse(bytes: &[u8], limits: &Limits) -> Result<BatchHeader, DecodeError> {
        let Some(h) = bytes.first_chunk::<BATCH_HEADER_BYTES>() else {
            return Err(DecodeError::Truncated {
                at: 0,
                need: BATCH_HEADER_BYTES,
                have: bytes.len(),
            });
        };
        let header = BatchHeader {
            base_offset: Offset(u64::from_le_bytes(field(h, BASE_OFFSET_AT))),
            batch_length: u32::from_le_bytes(field(h, BATCH_LENGTH_AT)),
            leader_epoch: u32::from_le_bytes(field(h, LEADER_EPOCH_AT)),
            format_version: h[VERSION_AT],
            crc: u32::from_le_bytes(field(h, CRC_AT)),
            attributes: Attributes(u16::from_le_bytes(field(h, ATTRIBUTES_AT))),
            last_offset_delta: u32::from_le_bytes(field(h, LAST_OFFSET_DELTA_AT)),
            base_timestamp: i64::from_le_bytes(field(h, BASE_TIMESTAMP_AT)),
            max_timestamp: i64::from_le_bytes(field(h, MAX_TIMESTAMP_AT)),
            producer_id: i64::from_le_bytes(field(h, PRODUCER_ID_AT)),
            producer_epoch: i16::from_le_bytes(field(h, PRODUCER_EPOCH_AT)),
            base_sequence: i32::from_le_bytes(field(h, BASE_SEQUENCE_AT)),
            record_count: u32::from_le_bytes(field(h, RECORD_COUNT_AT)),
        };
        header.check(limits)?;
        Ok(header)
    }

    fn check(&self, limits: &Limits) -> Result<(), DecodeError> {
        if self.format_version != BATCH_FORMAT_VERSION {
            return Err(DecodeError::UnsupportedVersion {
                found: self.format_version,
            });
        }
        let length = u64::from(self.batch_length);
        let (min, max) = (BATCH_HEADER_BYTES as u64, u64::from(limits.batch_bytes_max));
        if length < min || length > max {
            return Err(DecodeError::BatchLengthOutOfRange { length, min, max });
        }
        self.attributes.check()?;
        if self.record_count == 0 || self.record_count > limits.batch_records_max {
            return Err(DecodeError::RecordCountOutOfRange {
                count: self.record_count,
                max: limits.batch_records_max,
            });
        }
        if u64::from(self.last_offset_delta) + 1 != u64::from(self.record_count) {
            return Err(DecodeError::LastOffsetDeltaMismatch {
                last_offset_delta: self.last_offset_delta,
                record_count: self.record_count,
            });
        }
        if self
            .base_offset
            .checked_add(u64::from(self.record_count))
            .is_none()
        {
            return Err(DecodeError::OffsetOverflow {
                base_offset: self.base_offset.0,
                record_count: self.record_count,
            });
        }
        Ok(())
    }

    /// The header's bytes, fields written as they are (the CRC is not recomputed).
    pub fn encode(&self) -> [u8; BATCH_HEADER_BYTES] {
        let mut h = [0u8; BATCH_HEADER_BYTES];
        put(&mut h, BASE_OFFSET_AT, &self.base_offset.0.to_le_bytes());
        put(&mut h, BATCH_LENGTH_AT, &self.batch_length.to_le_bytes());
        put(&mut h, LEADER_EPOCH_AT, &self.leader_epoch.to_le_bytes());
        put(&mut h, VERSION_AT, &[self.format_version]);
        put(&mut h, CRC_AT, &self.crc.to_le_bytes());
        put(&mut h, ATTRIBUTES_AT, &self.attributes.0.to_le_bytes());
        put(
            &mut h,
            LAST_OFFSET_DELTA_AT,
            &self.last_offset_delta.to_le_bytes(),
        );
        put(
            &mut h,
            BASE_TIMESTAMP_AT,
            &self.base_timestamp.to_le_bytes(),
        );
        put(&mut h, MAX_TIMESTAMP_AT, &self.max_timestamp.to_le_bytes());
        put(&mut h, PRODUCER_ID_AT, &self.producer_id.to_le_bytes());
        put(
            &mut h,
            PRODUCER_EPOCH_AT,
            &self.producer_epoch.to_le_bytes(),
        );
        put(&mut h, BASE_SEQUENCE_AT, &self.base_sequence.to_le_bytes());
        put(&mut h, RECORD_COUNT_AT, &self.record_count.to_le_bytes());
        h
    }

    /// The codec of the records section. Infallible for a parsed header; an error only if the
    /// attributes were set by hand to an unsupported codec.
    pub fn compression(&self) -> Result<Compression, DecodeError> {
        self.attributes.compression()
    }

    /// Offset of the last record: `base_offset + last_offset_delta`.
    pub fn last_offset(&self) -> Offset {
        Offset(
            self.base_offset
                .0
                .saturating_add(u64::from(self.last_offset_delta)),
        )
    }

    /// Offset right after the last record: where the next batch starts.
    pub fn next_offset(&self) -> Offset {
        Offset(
            self.base_offset
                .0
                .saturating_add(u64::from(self.last_offset_delta))
                .saturating_add(1),
        )
    }
}

/// The batch length in the first [`PEEK_BYTES`] of `bytes`, unchecked; `None` if fewer bytes.
/// Lets a reader learn how much more to read before it has a whole header.
pub fn peek_batch_length(bytes: &[u8]) -> Option<u32> {
    let prefix = bytes.first_chunk::<PEEK_BYTES>()?;
    Some(u32::from_le_bytes(field(prefix, BATCH_LENGTH_AT)))
}

/// Overwrites the base offset of the batch at the start of `batch`. The field is not covered
/// by the CRC, so the batch stays valid.
///
/// # Panics
/// If `batch` is shorter than a header: the caller holds a batch it has already parsed.
pub fn stamp_base_offset(batch: &mut [u8], base: Offset) {
    stamp(batch, BASE_OFFSET_AT, &base.0.to_le_bytes());
}

/// Overwrites the leader epoch of the batch at the start of `batch`. The field is not covered
/// by the CRC, so the batch stays valid.
///
/// # Panics
/// If `batch` is shorter than a header: the caller holds a batch it has already parsed.
pub fn stamp_leader_epoch(batch: &mut [u8], epoch: u32) {
    stamp(batch, LEADER_EPOCH_AT, &epoch.to_le_bytes());
}

/// Overwrites the idempotent-producer fields (id, epoch, base sequence) of the batch at the
/// start of `batch` and recomputes its CRC (these fields are covered by it), so the batch
/// stays valid. The client stamps a sealed batch this way when it is first sent.
///
/// # Panics
/// If `batch` is shorter than a header: the caller holds a batch it has built.
pub fn stamp_producer(batch: &mut [u8], producer_id: i64, epoch: i16, base_sequence: i32) {
    stamp(batch, PRODUCER_ID_AT, &producer_id.to_le_bytes());
    stamp(batch, PRODUCER_EPOCH_AT, &epoch.to_le_bytes());
    stamp(batch, BASE_SEQUENCE_AT, &base_sequence.to_le_bytes());
    let crc = crate::batch::crc::compute_crc(batch);
    stamp(batch, CRC_AT, &crc.to_le_bytes());
}

fn stamp(batch: &mut [u8], at: usize, value: &[u8]) {
    assert!(
        batch.len() >= BATCH_HEADER_BYTES,
        "stamping a {}-byte slice: a batch header is {BATCH_HEADER_BYTES} bytes",
        batch.len()
    );
    batch[at..at + value.len()].copy_from_slice(value);
}

/// The `N` bytes of a fixed header field. `at + N` is within the array for every field (the
/// layout's const asserts), so the slice indexing cannot fail.
fn field<const N: usize, const H: usize>(h: &[u8; H], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&h[at..at + N]);
    out
}

fn put(h: &mut [u8; BATCH_HEADER_BYTES], at: usize, value: &[u8]) {
    h[at..at + value.len()].copy_from_slice(value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::attributes::TimestampType;

    #[test]
    fn stamp_producer_keeps_the_batch_valid() {
        let mut b = crate::BatchBuilder::new(Compression::None, Limits::DEFAULT);
        b.push(1, None, Some(b"v"), &[]).expect("push");
        let mut bytes = b.build().expect("build");
        stamp_producer(&mut bytes, 42, 3, 17);
        crate::verify_crc(&bytes).expect("crc recomputed");
        let h = BatchHeader::parse(&bytes, &Limits::DEFAULT).expect("parse");
        assert_eq!(
            (h.producer_id, h.producer_epoch, h.base_sequence),
            (42, 3, 17)
        );
    }

    #[test]
    fn an_unsealed_batch_is_refused_until_stamped() {
        let mut b = crate::BatchBuilder::new(Compression::None, Limits::DEFAULT);
        b.push(1, None, Some(b"v"), &[]).expect("push");
        let sealed = b.clone().build().expect("build");
        let mut bytes = b.build_unsealed().expect("build");
        assert!(crate::verify_crc(&bytes).is_err(), "no CRC yet");
        stamp_producer(&mut bytes, -1, -1, -1);
        assert_eq!(bytes, sealed, "stamping computes the CRC build would have");
    }

    fn sample() -> BatchHeader {
        BatchHeader {
            base_offset: Offset(5),
            batch_length: 100,
            leader_epoch: 2,
            format_version: BATCH_FORMAT_VERSION,
            crc: 0xdead_beef,
            attributes: Attributes::new(Compression::Lz4, TimestampType::CreateTime, false, false),
            last_offset_delta: 2,
            base_timestamp: 1_000,
            max_timestamp: 1_002,
            producer_id: 9,
            producer_epoch: 1,
            base_sequence: 0,
            record_count: 3,
        }
    }

    fn parse_modified(f: impl FnOnce(&mut BatchHeader)) -> Result<BatchHeader, DecodeError> {
        let mut h = sample();
        f(&mut h);
        BatchHeader::parse(&h.encode(), &Limits::DEFAULT)
    }

    #[test]
    fn encode_parse_roundtrip() {
        let h = sample();
        assert_eq!(BatchHeader::parse(&h.encode(), &Limits::DEFAULT), Ok(h));
        assert_eq!(h.last_offset(), Offset(7));
        assert_eq!(h.next_offset(), Offset(8));
        assert_eq!(peek_batch_length(&h.encode()), Some(100));
        assert_eq!(peek_batch_length(&h.encode()[..PEEK_BYTES - 1]), None);
    }

    #[test]
    fn rejects_bad_fields() {
        assert_eq!(
            BatchHeader::parse(&[0u8; 60], &Limits::DEFAULT),
            Err(DecodeError::Truncated {
                at: 0,
                need: 61,
                have: 60
            })
        );
        assert_eq!(
            parse_modified(|h| h.format_version = 2),
            Err(DecodeError::UnsupportedVersion { found: 2 })
        );
        assert!(matches!(
            parse_modified(|h| h.batch_length = 60),
            Err(DecodeError::BatchLengthOutOfRange { length: 60, .. })
        ));
        assert!(matches!(
            parse_modified(|h| h.batch_length = crate::BATCH_BYTES_MAX + 1),
            Err(DecodeError::BatchLengthOutOfRange { .. })
        ));
        assert_eq!(
            parse_modified(|h| {
                h.record_count = 0;
                h.last_offset_delta = u32::MAX;
            }),
            Err(DecodeError::RecordCountOutOfRange {
                count: 0,
                max: crate::BATCH_RECORDS_MAX
            })
        );
        assert_eq!(
            parse_modified(|h| h.last_offset_delta = 3),
            Err(DecodeError::LastOffsetDeltaMismatch {
                last_offset_delta: 3,
                record_count: 3
            })
        );
        assert_eq!(
            parse_modified(|h| h.attributes = Attributes(2)),
            Err(DecodeError::UnsupportedCompression { codec: 2 })
        );
        assert_eq!(
            parse_modified(|h| h.attributes = Attributes(0x40)),
            Err(DecodeError::UnknownAttributes { attributes: 0x40 })
        );
        assert!(matches!(
            parse_modified(|h| h.base_offset = Offset(u64::MAX - 2)),
            Err(DecodeError::OffsetOverflow { .. })
        ));
    }

    #[test]
    fn stamping_writes_little_endian_in_place() {
        let mut bytes = sample().encode();
        stamp_base_offset(&mut bytes, Offset(0x0102_0304_0506_0708));
        stamp_leader_epoch(&mut bytes, 0x0a0b_0c0d);
        assert_eq!(&bytes[0..8], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&bytes[12..16], &[0x0d, 0x0c, 0x0b, 0x0a]);
        let h =
            BatchHeader::parse(&bytes, &Limits::DEFAULT).map(|h| (h.base_offset, h.leader_epoch));
        assert_eq!(h, Ok((Offset(0x0102_0304_0506_0708), 0x0a0b_0c0d)));
    }

    #[test]
    #[should_panic(expected = "batch header is 61 bytes")]
    fn stamping_a_short_slice_panics() {
        stamp_base_offset(&mut [0u8; 60], Offset(1));
    }
}
