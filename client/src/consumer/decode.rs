//! Turning a fetched record set into [`ConsumerRecord`]s from a position on: batches may
//! start before the position (the broker returns whole batches), so earlier records are
//! skipped; compressed batches are decompressed by `RecordBatch::records`.

use bytes::Bytes;
use sluice_proto::{Limits, TimestampType, split_batches};

use crate::error::ClientError;

/// A record read from a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The record's offset.
    pub offset: u64,
    /// Create time, or log append time if the topic uses it (ms).
    pub timestamp: i64,
    /// The key.
    pub key: Option<Bytes>,
    /// The value (`None` for a tombstone).
    pub value: Option<Bytes>,
    /// Headers in order.
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// Appends the records of `set` at or after `position` to `out`; returns the position after
/// the last batch read (unchanged if there was none).
pub(crate) fn decode_records(
    topic: &str,
    partition: u32,
    set: Bytes,
    position: u64,
    out: &mut Vec<ConsumerRecord>,
) -> Result<u64, ClientError> {
    let mut next = position;
    for batch in split_batches(set, &Limits::DEFAULT) {
        let batch = batch?;
        if batch.next_offset().get() <= next {
            continue;
        }
        let header = batch.header();
        let log_append = header.attributes.timestamp_type() == TimestampType::LogAppendTime;
        for record in batch.records()? {
            let record = record?;
            let offset = record.offset(batch.base_offset()).get();
            if offset < next {
                continue;
            }
            let mut headers = Vec::with_capacity(record.headers.len());
            for h in &record.headers {
                let (k, v) = h?;
                headers.push((String::from_utf8_lossy(&k).into_owned(), v));
            }
            out.push(ConsumerRecord {
                topic: topic.to_owned(),
                partition,
                offset,
                timestamp: if log_append {
                    header.max_timestamp
                } else {
                    record.timestamp(header.base_timestamp)
                },
                key: record.key,
                value: record.value,
                headers,
            });
        }
        next = batch.next_offset().get();
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use sluice_proto::{BatchBuilder, Compression, stamp_base_offset};

    use super::*;

    fn batch(base: u64, values: &[&str], compression: Compression) -> Bytes {
        let mut b = BatchBuilder::new(compression, Limits::DEFAULT);
        for (i, v) in values.iter().enumerate() {
            let header: (&[u8], Option<&[u8]>) = (b"h", Some(v.as_bytes()));
            b.push(100 + i as i64, Some(b"k"), Some(v.as_bytes()), &[header])
                .expect("push");
        }
        let mut bytes: BytesMut = b.build().expect("build");
        stamp_base_offset(&mut bytes, sluice_proto::Offset(base));
        bytes.freeze()
    }

    #[test]
    fn skips_records_before_the_position_and_decompresses() {
        for compression in [Compression::None, Compression::Lz4, Compression::Zstd] {
            let mut set = BytesMut::new();
            set.extend_from_slice(&batch(10, &["a", "b", "c"], compression));
            set.extend_from_slice(&batch(13, &["d", "e"], compression));
            let mut out = Vec::new();
            let next = decode_records("t", 2, set.freeze(), 11, &mut out).expect("decode");
            assert_eq!(next, 15);
            let got: Vec<(u64, &[u8])> = out
                .iter()
                .map(|r| (r.offset, r.value.as_deref().expect("value")))
                .collect();
            assert_eq!(
                got,
                vec![(11, &b"b"[..]), (12, b"c"), (13, b"d"), (14, b"e")],
                "{compression}"
            );
            assert_eq!(out[0].timestamp, 101);
            assert_eq!(
                out[0].headers,
                vec![("h".to_string(), Some(Bytes::from("b")))]
            );
            assert_eq!(out[0].partition, 2);
        }
    }

    /// A compacted topic has offset gaps between batches: a position inside a gap gets the
    /// next existing record, and the position moves past the last batch.
    #[test]
    fn gaps_between_batches_as_left_by_compaction() {
        let mut set = BytesMut::new();
        set.extend_from_slice(&batch(10, &["a", "b"], Compression::None));
        set.extend_from_slice(&batch(20, &["c"], Compression::Lz4));
        set.extend_from_slice(&batch(35, &["d", "e"], Compression::None));
        let mut out = Vec::new();
        let next = decode_records("t", 0, set.freeze(), 14, &mut out).expect("decode");
        let offsets: Vec<u64> = out.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, vec![20, 35, 36]);
        assert_eq!(next, 37);
    }

    #[test]
    fn corrupt_set_is_a_typed_error() {
        let mut set = BytesMut::from(&batch(0, &["a"], Compression::None)[..]);
        let last = set.len() - 1;
        set[last] ^= 0xff;
        let err = decode_records("t", 0, set.freeze(), 0, &mut Vec::new()).expect_err("corrupt");
        assert!(matches!(err, ClientError::Decode(_)), "{err}");
    }
}
