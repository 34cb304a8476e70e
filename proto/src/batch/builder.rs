//! `BatchBuilder`: encodes records into one batch, enforcing the limits as it goes, and fills
//! in the header and CRC.

use bytes::BytesMut;

use crate::batch::attributes::{Attributes, Compression, TimestampType};
use crate::batch::compression::compress_into;
use crate::batch::crc::compute_crc;
use crate::batch::header::BatchHeader;
use crate::batch::layout::{BATCH_FORMAT_VERSION, BATCH_HEADER_BYTES, CRC_AT, RECORDS_AT};
use crate::batch::record::{body_len, encode_record};
use crate::batch::varint::varint_len;
use crate::error::BuildError;
use crate::limits::Limits;
use crate::offset::Offset;

/// Builds one batch. Records are encoded as they are pushed, into a buffer that already has
/// room for the header, so an uncompressed batch is never copied.
///
/// ```
/// use sluice_proto::{BatchBuilder, Compression, Limits, RecordBatch};
/// let mut builder = BatchBuilder::new(Compression::None, Limits::DEFAULT);
/// builder.push(1_000, Some(b"key"), Some(b"value"), &[]).unwrap();
/// let bytes = builder.build().unwrap().freeze();
/// let batch = RecordBatch::from_bytes(bytes, &Limits::DEFAULT).unwrap();
/// assert_eq!(batch.record_count(), 1);
/// ```
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    compression: Compression,
    limits: Limits,
    timestamp_type: TimestampType,
    transactional: bool,
    control: bool,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    base_timestamp: Option<i64>,
    max_timestamp: i64,
    record_count: u32,
    /// Header placeholder followed by the uncompressed records section.
    buf: BytesMut,
}

impl BatchBuilder {
    /// An empty builder for a batch compressed with `compression`, enforcing `limits`.
    /// No producer (-1 id, epoch and sequence), create-time timestamps, not transactional,
    /// not control.
    pub fn new(compression: Compression, limits: Limits) -> Self {
        Self::with_capacity(compression, limits, BATCH_HEADER_BYTES + 1024)
    }

    /// Like [`BatchBuilder::new`], with room for `capacity` bytes of batch (header plus
    /// uncompressed records section) reserved up front, so that a batch filled up to that
    /// size is never copied to a larger buffer. The reservation is capped at the largest
    /// section `limits` allow plus the header; the buffer still grows past it if needed.
    pub fn with_capacity(compression: Compression, limits: Limits, capacity: usize) -> Self {
        let most =
            BATCH_HEADER_BYTES.saturating_add(limits.records_uncompressed_bytes_max as usize);
        let mut buf = BytesMut::with_capacity(capacity.clamp(BATCH_HEADER_BYTES, most));
        buf.resize(BATCH_HEADER_BYTES, 0);
        BatchBuilder {
            compression,
            limits,
            timestamp_type: TimestampType::CreateTime,
            transactional: false,
            control: false,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            base_timestamp: None,
            max_timestamp: i64::MIN,
            record_count: 0,
            buf,
        }
    }

    /// Sets the idempotent producer's id, epoch and first sequence number.
    #[must_use]
    pub fn producer(mut self, id: i64, epoch: i16, base_sequence: i32) -> Self {
        self.producer_id = id;
        self.producer_epoch = epoch;
        self.base_sequence = base_sequence;
        self
    }

    /// Sets what the record timestamps mean.
    #[must_use]
    pub fn timestamp_type(mut self, timestamp_type: TimestampType) -> Self {
        self.timestamp_type = timestamp_type;
        self
    }

    /// Marks the batch as part of a transaction.
    #[must_use]
    pub fn transactional(mut self, transactional: bool) -> Self {
        self.transactional = transactional;
        self
    }

    /// Marks the batch as a control batch.
    #[must_use]
    pub fn control(mut self, control: bool) -> Self {
        self.control = control;
        self
    }

    /// Sets the timestamp record deltas are relative to. Defaults to the first record's.
    ///
    /// # Panics
    /// If records were already pushed: their deltas are encoded against the old base.
    #[must_use]
    pub fn base_timestamp(mut self, base_timestamp: i64) -> Self {
        assert!(
            self.record_count == 0,
            "base_timestamp must be set before the first push"
        );
        self.base_timestamp = Some(base_timestamp);
        self
    }

    /// Appends a record. Fails, leaving the builder unchanged, if the key, value, a header,
    /// the header count, the record count or the batch size would exceed the limits. For a
    /// compressed batch the size checked is the uncompressed section's; the compressed batch
    /// is checked by [`BatchBuilder::build`].
    pub fn push(
        &mut self,
        timestamp_ms: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&[u8], Option<&[u8]>)],
    ) -> Result<(), BuildError> {
        let limits = &self.limits;
        check(
            "batch records",
            u64::from(self.record_count) + 1,
            limits.batch_records_max,
        )?;
        if let Some(key) = key {
            check("key bytes", key.len() as u64, limits.key_bytes_max)?;
        }
        if let Some(value) = value {
            check("value bytes", value.len() as u64, limits.value_bytes_max)?;
        }
        check(
            "record headers",
            headers.len() as u64,
            limits.record_headers_max,
        )?;
        for (k, v) in headers {
            check(
                "header key bytes",
                k.len() as u64,
                limits.header_key_bytes_max,
            )?;
            if let Some(v) = v {
                check(
                    "header value bytes",
                    v.len() as u64,
                    limits.header_value_bytes_max,
                )?;
            }
        }
        let base = self.base_timestamp.unwrap_or(timestamp_ms);
        let timestamp_delta =
            timestamp_ms
                .checked_sub(base)
                .ok_or(BuildError::TimestampDeltaOverflow {
                    timestamp: timestamp_ms,
                    base,
                })?;
        // Checked above against batch_records_max, which `check` caps at i32::MAX.
        let offset_delta =
            i32::try_from(self.record_count).map_err(|_| BuildError::LimitExceeded {
                what: "batch records",
                size: u64::from(self.record_count) + 1,
                max: i32::MAX as u64,
            })?;
        let body = body_len(timestamp_delta, offset_delta, key, value, headers);
        let body = i32::try_from(body).map_err(|_| BuildError::LimitExceeded {
            what: "record bytes",
            size: body,
            max: i32::MAX as u64,
        })?;
        let record_bytes = varint_len(body) as u64 + body as u64;
        let section = (self.buf.len() - RECORDS_AT) as u64 + record_bytes;
        if self.compression == Compression::None {
            check(
                "batch bytes",
                BATCH_HEADER_BYTES as u64 + section,
                limits.batch_bytes_max,
            )?;
        }
        check(
            "records uncompressed bytes",
            section,
            limits.records_uncompressed_bytes_max,
        )?;

        let before = self.buf.len();
        encode_record(
            &mut self.buf,
            body,
            timestamp_delta,
            offset_delta,
            key,
            value,
            headers,
        );
        debug_assert_eq!((self.buf.len() - before) as u64, record_bytes);
        self.base_timestamp = Some(base);
        self.max_timestamp = self.max_timestamp.max(timestamp_ms);
        self.record_count += 1;
        Ok(())
    }

    /// Number of records pushed.
    pub fn len(&self) -> usize {
        self.record_count as usize
    }

    /// Whether no record was pushed.
    pub fn is_empty(&self) -> bool {
        self.record_count == 0
    }

    /// Size of the batch if built uncompressed: header plus records section. An upper bound
    /// for compressible data, but lz4 or zstd can add a little to incompressible data.
    pub fn estimated_bytes(&self) -> usize {
        self.buf.len()
    }

    /// The finished batch: base offset 0 and leader epoch 0 (the broker stamps them in
    /// place), format version [`BATCH_FORMAT_VERSION`], CRC filled in.
    pub fn build(self) -> Result<BytesMut, BuildError> {
        self.finish(true)
    }

    /// [`BatchBuilder::build`] without the CRC (left 0), for a batch whose producer fields
    /// are stamped later with [`crate::stamp_producer`], which computes it: an idempotent
    /// producer's batch gets one CRC pass instead of two. Sent unstamped, it is refused as
    /// corrupt.
    pub fn build_unsealed(self) -> Result<BytesMut, BuildError> {
        self.finish(false)
    }

    fn finish(self, seal: bool) -> Result<BytesMut, BuildError> {
        let (Some(base_timestamp), Some(last_offset_delta)) =
            (self.base_timestamp, self.record_count.checked_sub(1))
        else {
            return Err(BuildError::Empty);
        };
        let mut out = match self.compression {
            Compression::None => self.buf,
            codec => {
                let section = &self.buf[RECORDS_AT..];
                let mut out = BytesMut::with_capacity(BATCH_HEADER_BYTES + section.len() / 2);
                out.resize(BATCH_HEADER_BYTES, 0);
                compress_into(codec, section, &mut out)?;
                out
            }
        };
        check("batch bytes", out.len() as u64, self.limits.batch_bytes_max)?;
        let header = BatchHeader {
            base_offset: Offset::ZERO,
            batch_length: u32::try_from(out.len()).map_err(|_| BuildError::LimitExceeded {
                what: "batch bytes",
                size: out.len() as u64,
                max: u64::from(u32::MAX),
            })?,
            leader_epoch: 0,
            format_version: BATCH_FORMAT_VERSION,
            crc: 0,
            attributes: Attributes::new(
                self.compression,
                self.timestamp_type,
                self.transactional,
                self.control,
            ),
            last_offset_delta,
            base_timestamp,
            max_timestamp: self.max_timestamp,
            producer_id: self.producer_id,
            producer_epoch: self.producer_epoch,
            base_sequence: self.base_sequence,
            record_count: self.record_count,
        };
        out[..BATCH_HEADER_BYTES].copy_from_slice(&header.encode());
        let crc = if seal { compute_crc(&out) } else { 0 };
        out[CRC_AT..CRC_AT + size_of::<u32>()].copy_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(
            BatchHeader::parse(&out, &self.limits).map(|h| (h.batch_length as usize, h.crc)),
            Ok((out.len(), crc))
        );
        Ok(out)
    }
}

/// `size <= max`, where `max` is also capped at `i32::MAX`: every length the format
/// encodes is an i32 varint, whatever limits the caller configured.
fn check(what: &'static str, size: u64, max: u32) -> Result<(), BuildError> {
    let max = u64::from(max).min(i32::MAX as u64);
    if size > max {
        return Err(BuildError::LimitExceeded { what, size, max });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(builder: &mut BatchBuilder, records: usize) {
        for i in 0..records {
            let value = vec![(i % 251) as u8; 1000];
            let key = format!("key-{i}");
            builder
                .push(
                    1_700_000_000_000 + i as i64,
                    Some(key.as_bytes()),
                    Some(&value),
                    &[(b"h".as_slice(), Some(b"v".as_slice()))],
                )
                .expect("the record fits the limits");
        }
    }

    #[test]
    fn with_capacity_builds_the_same_bytes_as_new() {
        for compression in [Compression::None, Compression::Lz4, Compression::Zstd] {
            let mut small = BatchBuilder::new(compression, Limits::DEFAULT).producer(7, 1, 42);
            let mut big = BatchBuilder::with_capacity(compression, Limits::DEFAULT, 256 * 1024)
                .producer(7, 1, 42);
            fill(&mut small, 200);
            fill(&mut big, 200);
            assert_eq!(small.estimated_bytes(), big.estimated_bytes());
            assert_eq!(small.build().expect("builds"), big.build().expect("builds"));
        }
    }

    #[test]
    fn a_batch_within_its_capacity_is_never_moved() {
        let capacity = 128 * 1024;
        let mut builder = BatchBuilder::with_capacity(Compression::None, Limits::DEFAULT, capacity);
        assert!(builder.buf.capacity() >= capacity);
        let start = builder.buf.as_ptr();
        // 1000-byte values plus framing: 120 records stay under 128 KiB.
        fill(&mut builder, 120);
        assert!(builder.estimated_bytes() <= capacity);
        assert!(builder.estimated_bytes() > capacity / 2);
        assert_eq!(builder.buf.as_ptr(), start, "the buffer was reallocated");
    }

    #[test]
    fn the_reservation_is_capped_by_the_limits() {
        let limits = Limits {
            records_uncompressed_bytes_max: 4096,
            ..Limits::DEFAULT
        };
        let builder = BatchBuilder::with_capacity(Compression::None, limits, usize::MAX);
        assert!(builder.buf.capacity() < BATCH_HEADER_BYTES + 4096 + 1024);
        let builder = BatchBuilder::with_capacity(Compression::None, limits, 0);
        assert_eq!(builder.estimated_bytes(), BATCH_HEADER_BYTES);
    }
}
