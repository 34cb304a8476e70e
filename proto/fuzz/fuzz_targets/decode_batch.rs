//! Fuzzes every decoder of untrusted batch bytes: `split_batches`, `records()` and
//! `validate()`. Must never panic; what they accept must be consistent.
//!
//! The input is decoded twice: as it is (exercising framing and the CRC check), and with
//! the first batch's length and CRC repaired to match the input, so mutations get past the
//! CRC and reach the record decoder and the decompressors.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sluice_proto::{
    BATCH_HEADER_BYTES, BATCH_LENGTH_AT, CRC_AT, DecodeError, Limits, Record, RecordBatch,
    compute_crc, split_batches,
};

/// Tight limits, so declared lengths also reach the limit checks.
const TIGHT: Limits = Limits {
    batch_bytes_max: 4096,
    batch_records_max: 64,
    records_uncompressed_bytes_max: 8192,
    key_bytes_max: 64,
    value_bytes_max: 1024,
    record_headers_max: 4,
    header_key_bytes_max: 16,
    header_value_bytes_max: 64,
};

fuzz_target!(|data: &[u8]| {
    decode_all(data, &Limits::DEFAULT);
    let mut repaired = data.to_vec();
    if repaired.len() >= BATCH_HEADER_BYTES {
        let len = repaired.len() as u32;
        repaired[BATCH_LENGTH_AT..BATCH_LENGTH_AT + 4].copy_from_slice(&len.to_le_bytes());
        let crc = compute_crc(&repaired);
        repaired[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    }
    decode_all(&repaired, &Limits::DEFAULT);
    decode_all(&repaired, &TIGHT);
});

fn decode_all(data: &[u8], limits: &Limits) {
    let bytes = Bytes::copy_from_slice(data);
    let mut batches = split_batches(bytes, limits);
    let mut consumed = 0;
    for batch in batches.by_ref() {
        let Ok(batch) = batch else { break };
        consumed += batch.len();
        check(&batch);
    }
    assert_eq!(batches.consumed_bytes(), consumed);
    assert_eq!(consumed + batches.remaining().len(), data.len());
}

/// `validate` agrees with walking the records; a fully decoded batch has exactly
/// `record_count` records with dense offset deltas and decodable headers.
fn check(batch: &RecordBatch) {
    let validated = batch.validate();
    let walked: Result<Vec<Record>, DecodeError> = batch.records().and_then(|r| r.collect());
    match &walked {
        Ok(records) => {
            assert_eq!(records.len(), batch.record_count() as usize);
            for (i, record) in records.iter().enumerate() {
                assert_eq!(record.offset_delta as usize, i);
                for header in &record.headers {
                    assert!(header.is_ok());
                }
            }
            assert!(matches!(
                validated,
                Ok(()) | Err(DecodeError::MaxTimestampMismatch { .. })
            ));
        }
        Err(e) => assert_eq!(validated.as_ref(), Err(e)),
    }
}
