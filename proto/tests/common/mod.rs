//! Helpers shared by the integration tests: building batches from plain records, comparing
//! decoded records with them, and running every decoder over untrusted bytes.

// Each test binary uses a subset of these helpers.
#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use sluice_proto::{
    BatchBuilder, Compression, DecodeError, Limits, Record, RecordBatch, split_batches,
};

/// A record as a producer hands it over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plain {
    pub(crate) timestamp: i64,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) value: Option<Vec<u8>>,
    pub(crate) headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Plain {
    pub(crate) fn new(
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&[u8], Option<&[u8]>)],
    ) -> Plain {
        Plain {
            timestamp,
            key: key.map(<[u8]>::to_vec),
            value: value.map(<[u8]>::to_vec),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec)))
                .collect(),
        }
    }
}

/// Pushes `records` into `builder`.
pub(crate) fn push_all(builder: &mut BatchBuilder, records: &[Plain]) {
    for r in records {
        let headers: Vec<(&[u8], Option<&[u8]>)> = r
            .headers
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_deref()))
            .collect();
        builder
            .push(r.timestamp, r.key.as_deref(), r.value.as_deref(), &headers)
            .expect("push within limits");
    }
}

/// Builds a batch of `records` with default settings.
pub(crate) fn build(compression: Compression, records: &[Plain]) -> BytesMut {
    let mut builder = BatchBuilder::new(compression, Limits::DEFAULT);
    push_all(&mut builder, records);
    builder.build().expect("build")
}

/// Converts a decoded record back to plain form.
pub(crate) fn to_plain(record: &Record, base_timestamp: i64) -> Plain {
    Plain {
        timestamp: record.timestamp(base_timestamp),
        key: record.key.as_deref().map(<[u8]>::to_vec),
        value: record.value.as_deref().map(<[u8]>::to_vec),
        headers: record
            .headers
            .iter()
            .map(|h| {
                let (k, v) = h.expect("validated header");
                (k.to_vec(), v.map(|v| v.to_vec()))
            })
            .collect(),
    }
}

/// Decodes every record of `batch` into plain form.
pub(crate) fn decode_plain(batch: &RecordBatch) -> Result<Vec<Plain>, DecodeError> {
    let base = batch.header().base_timestamp;
    batch
        .records()?
        .map(|r| r.map(|r| to_plain(&r, base)))
        .collect()
}

/// Runs every decoder over untrusted `bytes` and checks that whatever they accept is
/// consistent. Must never panic.
pub(crate) fn exercise(bytes: &[u8], limits: &Limits) {
    let _ = RecordBatch::from_bytes(Bytes::copy_from_slice(bytes), limits);
    let mut iter = split_batches(Bytes::copy_from_slice(bytes), limits);
    let mut consumed = 0;
    for batch in iter.by_ref() {
        let Ok(batch) = batch else { break };
        consumed += batch.len();
        check_consistent(&batch);
    }
    assert_eq!(iter.consumed_bytes(), consumed);
    assert_eq!(consumed + iter.remaining().len(), bytes.len());
}

/// For a batch whose header and CRC check: `validate` agrees with walking `records`, and a
/// fully decoded batch has exactly `record_count` records with dense offset deltas.
pub(crate) fn check_consistent(batch: &RecordBatch) {
    let validated = batch.validate();
    let walked: Result<Vec<Record>, DecodeError> = batch.records().and_then(|r| r.collect());
    match &walked {
        Ok(records) => {
            assert_eq!(records.len(), batch.record_count() as usize);
            for (i, r) in records.iter().enumerate() {
                assert_eq!(r.offset_delta as usize, i);
                assert_eq!(
                    r.headers.iter().filter(Result::is_ok).count(),
                    r.headers.len()
                );
            }
            assert!(
                matches!(
                    validated,
                    Ok(()) | Err(DecodeError::MaxTimestampMismatch { .. })
                ),
                "{validated:?}"
            );
        }
        Err(e) => assert_eq!(validated.as_ref(), Err(e)),
    }
    // A second walk gives the same answer: decoding is deterministic.
    assert_eq!(batch.records().and_then(|r| r.collect()), walked);
}

/// Whether the golden tests should rewrite their fixtures (`SLUICE_BLESS=1`).
pub(crate) fn blessing() -> bool {
    std::env::var_os("SLUICE_BLESS").is_some_and(|v| v == "1")
}

/// Lowercase hex of `bytes`.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes of a fixture file: hex digits, with whitespace ignored and `#` starting a comment.
pub(crate) fn from_hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text
        .lines()
        .map(|line| line.split('#').next().unwrap_or_default())
        .flat_map(|line| line.bytes().filter(|b| !b.is_ascii_whitespace()))
        .map(|d| match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            b'A'..=b'F' => d - b'A' + 10,
            _ => panic!("not a hex digit: {:?}", d as char),
        })
        .collect();
    assert!(digits.len().is_multiple_of(2), "odd number of hex digits");
    digits.chunks(2).map(|p| (p[0] << 4) | p[1]).collect()
}
