//! `RecordBatch`: a checked, zero-copy view of one whole batch, and `split_batches`, which
//! cuts a buffer of back-to-back batches (a fetch response, a disk read) into such views.

use std::iter::FusedIterator;

use bytes::{Buf, Bytes};

use crate::batch::attributes::{Compression, TimestampType};
use crate::batch::compression::decompress;
use crate::batch::crc::compute_crc;
use crate::batch::header::BatchHeader;
use crate::batch::layout::RECORDS_AT;
use crate::batch::records::Records;
use crate::error::DecodeError;
use crate::limits::Limits;
use crate::offset::Offset;

/// One whole batch whose header and CRC have been checked. Holds the batch's bytes without
/// copying them; the records are decoded on demand by [`RecordBatch::records`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordBatch {
    header: BatchHeader,
    compression: Compression,
    bytes: Bytes,
    limits: Limits,
}

impl RecordBatch {
    /// Checks that `bytes` is exactly one batch: a valid header, `bytes.len()` equal to the
    /// batch length, and a matching CRC. Cheap: the records are not walked (see
    /// [`RecordBatch::validate`]). `limits` is kept for decoding the records.
    pub fn from_bytes(bytes: Bytes, limits: &Limits) -> Result<RecordBatch, DecodeError> {
        let header = BatchHeader::parse(&bytes, limits)?;
        if bytes.len() as u64 != u64::from(header.batch_length) {
            return Err(DecodeError::LengthMismatch {
                declared: u64::from(header.batch_length),
                actual: bytes.len() as u64,
            });
        }
        let computed = compute_crc(&bytes);
        if computed != header.crc {
            return Err(DecodeError::CrcMismatch {
                stored: header.crc,
                computed,
            });
        }
        let compression = header.compression()?;
        Ok(RecordBatch {
            header,
            compression,
            bytes,
            limits: *limits,
        })
    }

    /// Takes the first batch off the front of `buf`, which may hold several back to back.
    /// `Ok(None)` if `buf` is empty; [`DecodeError::Truncated`] if it holds only part of a
    /// batch. On error `buf` is left as it was.
    pub fn split_first(
        buf: &mut Bytes,
        limits: &Limits,
    ) -> Result<Option<RecordBatch>, DecodeError> {
        if buf.is_empty() {
            return Ok(None);
        }
        let header = BatchHeader::parse(buf, limits)?;
        // Within the batch limit (a u32), so this fits a usize.
        let length = header.batch_length as usize;
        if buf.len() < length {
            return Err(DecodeError::Truncated {
                at: 0,
                need: length,
                have: buf.len(),
            });
        }
        let batch = RecordBatch::from_bytes(buf.slice(..length), limits)?;
        buf.advance(length);
        Ok(Some(batch))
    }

    /// The checked header.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// Offset of the first record.
    pub fn base_offset(&self) -> Offset {
        self.header.base_offset
    }

    /// Offset of the last record.
    pub fn last_offset(&self) -> Offset {
        self.header.last_offset()
    }

    /// Offset after the last record.
    pub fn next_offset(&self) -> Offset {
        self.header.next_offset()
    }

    /// Number of records (at least 1).
    pub fn record_count(&self) -> u32 {
        self.header.record_count
    }

    /// Largest record timestamp (ms), as the header declares it.
    pub fn max_timestamp(&self) -> i64 {
        self.header.max_timestamp
    }

    /// Leader epoch stamped on the batch.
    pub fn leader_epoch(&self) -> u32 {
        self.header.leader_epoch
    }

    /// Codec of the records section.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// The batch's bytes, header included.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The batch's bytes, header included.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// Length of the batch in bytes, header included.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Always false: a batch holds at least its header. Here for the `len` convention.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Iterates the records. An uncompressed section is read in place (keys and values are
    /// slices of this batch's bytes); a compressed one is decompressed once here, within
    /// `limits.records_uncompressed_bytes_max`, and read from that buffer.
    pub fn records(&self) -> Result<Records, DecodeError> {
        let stored = self.bytes.slice(RECORDS_AT..);
        let section = match self.compression {
            Compression::None => {
                let max = u64::from(self.limits.records_uncompressed_bytes_max);
                if stored.len() as u64 > max {
                    return Err(DecodeError::LimitExceeded {
                        what: "records section bytes",
                        size: stored.len() as u64,
                        max,
                    });
                }
                stored
            }
            codec => decompress(codec, &stored, &self.limits)?,
        };
        Ok(Records::new(
            section,
            self.header.record_count,
            self.header.base_timestamp,
            self.limits,
        ))
    }

    /// Walks every record and checks the batch is consistent: each record well formed and
    /// within the limits, offset deltas equal to record indexes, exactly `record_count`
    /// records and no trailing bytes, and for create-time batches `max_timestamp` equal to
    /// the largest record timestamp. The broker runs this on produce.
    pub fn validate(&self) -> Result<(), DecodeError> {
        let base_timestamp = self.header.base_timestamp;
        let mut max_timestamp = None;
        for record in self.records()? {
            let timestamp = record?.timestamp(base_timestamp);
            max_timestamp = max_timestamp.max(Some(timestamp));
        }
        // `records` yields at least one record (record_count >= 1) or an error, so
        // `max_timestamp` is set here.
        if self.header.attributes.timestamp_type() == TimestampType::CreateTime
            && let Some(computed) = max_timestamp
            && computed != self.header.max_timestamp
        {
            return Err(DecodeError::MaxTimestampMismatch {
                declared: self.header.max_timestamp,
                computed,
            });
        }
        Ok(())
    }
}

/// Cuts `bytes`, holding batches back to back, into [`RecordBatch`] views (no copies). Each
/// batch's header and CRC are checked as it is yielded; the iterator stops after the first
/// error, which for a buffer ending in a partial batch is [`DecodeError::Truncated`].
pub fn split_batches(bytes: Bytes, limits: &Limits) -> BatchIter {
    BatchIter {
        remaining: bytes,
        limits: *limits,
        consumed: 0,
        failed: false,
    }
}

/// Iterator from [`split_batches`].
#[derive(Debug, Clone)]
pub struct BatchIter {
    remaining: Bytes,
    limits: Limits,
    consumed: usize,
    failed: bool,
}

impl BatchIter {
    /// The bytes not yet yielded as batches: after an error, the bad or partial batch
    /// onwards.
    pub fn remaining(&self) -> &Bytes {
        &self.remaining
    }

    /// Bytes yielded as valid batches so far: after an error, where the good prefix ends
    /// (what recovery truncates to).
    pub fn consumed_bytes(&self) -> usize {
        self.consumed
    }
}

impl Iterator for BatchIter {
    type Item = Result<RecordBatch, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match RecordBatch::split_first(&mut self.remaining, &self.limits) {
            Ok(Some(batch)) => {
                self.consumed += batch.len();
                Some(Ok(batch))
            }
            Ok(None) => None,
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

impl FusedIterator for BatchIter {}
