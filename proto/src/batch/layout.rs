//! Byte layout of the batch header: where each field sits, and which bytes the CRC covers.
//!
//! ```text
//!  0 base_offset       u64   stamped by the broker, not CRC-covered
//!  8 batch_length      u32   whole batch, header included, not CRC-covered
//! 12 leader_epoch      u32   stamped by the broker, not CRC-covered
//! 16 format_version    u8
//! 17 crc               u32   CRC32C of bytes [21, batch_length)
//! 21 attributes        u16
//! 23 last_offset_delta u32
//! 27 base_timestamp    i64
//! 35 max_timestamp     i64
//! 43 producer_id       i64
//! 51 producer_epoch    i16
//! 53 base_sequence     i32
//! 57 record_count      u32
//! 61 records section
//! ```

/// Offset of `base_offset` (u64).
pub const BASE_OFFSET_AT: usize = 0;
/// Offset of `batch_length` (u32).
pub const BATCH_LENGTH_AT: usize = 8;
/// Offset of `leader_epoch` (u32).
pub const LEADER_EPOCH_AT: usize = 12;
/// Offset of `format_version` (u8).
pub const VERSION_AT: usize = 16;
/// Offset of `crc` (u32).
pub const CRC_AT: usize = 17;
/// Offset of `attributes` (u16).
pub const ATTRIBUTES_AT: usize = 21;
/// Offset of `last_offset_delta` (u32).
pub const LAST_OFFSET_DELTA_AT: usize = 23;
/// Offset of `base_timestamp` (i64, ms).
pub const BASE_TIMESTAMP_AT: usize = 27;
/// Offset of `max_timestamp` (i64, ms).
pub const MAX_TIMESTAMP_AT: usize = 35;
/// Offset of `producer_id` (i64).
pub const PRODUCER_ID_AT: usize = 43;
/// Offset of `producer_epoch` (i16).
pub const PRODUCER_EPOCH_AT: usize = 51;
/// Offset of `base_sequence` (i32).
pub const BASE_SEQUENCE_AT: usize = 53;
/// Offset of `record_count` (u32).
pub const RECORD_COUNT_AT: usize = 57;
/// Offset of the records section.
pub const RECORDS_AT: usize = 61;
/// Size of the batch header.
pub const BATCH_HEADER_BYTES: usize = 61;
/// First byte the CRC covers: everything after the CRC field, to the end of the batch.
pub const CRC_COVERED_FROM: usize = ATTRIBUTES_AT;
/// Bytes needed to learn a batch's length (see [`crate::peek_batch_length`]).
pub const PEEK_BYTES: usize = BATCH_LENGTH_AT + size_of::<u32>();
/// The batch format version this build writes and reads.
pub const BATCH_FORMAT_VERSION: u8 = 1;

const _: () = {
    // Fields are packed back to back, in order.
    assert!(BASE_OFFSET_AT == 0);
    assert!(BATCH_LENGTH_AT == BASE_OFFSET_AT + size_of::<u64>());
    assert!(LEADER_EPOCH_AT == BATCH_LENGTH_AT + size_of::<u32>());
    assert!(VERSION_AT == LEADER_EPOCH_AT + size_of::<u32>());
    assert!(CRC_AT == VERSION_AT + size_of::<u8>());
    assert!(ATTRIBUTES_AT == CRC_AT + size_of::<u32>());
    assert!(LAST_OFFSET_DELTA_AT == ATTRIBUTES_AT + size_of::<u16>());
    assert!(BASE_TIMESTAMP_AT == LAST_OFFSET_DELTA_AT + size_of::<u32>());
    assert!(MAX_TIMESTAMP_AT == BASE_TIMESTAMP_AT + size_of::<i64>());
    assert!(PRODUCER_ID_AT == MAX_TIMESTAMP_AT + size_of::<i64>());
    assert!(PRODUCER_EPOCH_AT == PRODUCER_ID_AT + size_of::<i64>());
    assert!(BASE_SEQUENCE_AT == PRODUCER_EPOCH_AT + size_of::<i16>());
    assert!(RECORD_COUNT_AT == BASE_SEQUENCE_AT + size_of::<i32>());
    assert!(RECORDS_AT == RECORD_COUNT_AT + size_of::<u32>());
    assert!(BATCH_HEADER_BYTES == RECORDS_AT);
    // The CRC covers everything after itself.
    assert!(CRC_COVERED_FROM == CRC_AT + size_of::<u32>());
    // The broker-stamped fields lie before the CRC-covered range: stamping needs no re-CRC.
    assert!(BASE_OFFSET_AT + size_of::<u64>() <= CRC_COVERED_FROM);
    assert!(LEADER_EPOCH_AT + size_of::<u32>() <= CRC_COVERED_FROM);
    // The length is readable from a prefix of the header.
    assert!(PEEK_BYTES <= BATCH_HEADER_BYTES);
};
