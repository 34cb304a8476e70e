//! Typed errors: decoding untrusted bytes (`DecodeError`) and building a batch (`BuildError`).
//!
//! Positions (`at`) are byte offsets: from the start of the batch for header errors, and from
//! the start of the records section for errors inside it (the decompressed section, for a
//! compressed batch).

use crate::batch::attributes::Compression;

/// Why bytes are not a valid batch. Every variant says where or what, so a log line names
/// the fault without a hex dump.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The input ends before a field or a length it declared.
    #[error("truncated at byte {at}: need {need} bytes, have {have}")]
    Truncated {
        /// Where the missing field starts.
        at: usize,
        /// Bytes the field needs.
        need: usize,
        /// Bytes available from `at`.
        have: usize,
    },
    /// The batch format version is not one this build reads.
    #[error("unsupported batch format version {found}")]
    UnsupportedVersion {
        /// The version byte found.
        found: u8,
    },
    /// The header's batch length is below the header size or above the batch limit.
    #[error("batch length {length} outside [{min}, {max}]")]
    BatchLengthOutOfRange {
        /// The declared batch length.
        length: u64,
        /// The smallest valid length (the header size).
        min: u64,
        /// The batch size limit.
        max: u64,
    },
    /// The buffer holding one batch is not exactly as long as the header says.
    #[error("batch length {declared} does not match the {actual} bytes given")]
    LengthMismatch {
        /// The length in the header.
        declared: u64,
        /// The length of the buffer.
        actual: u64,
    },
    /// The CRC32C stored in the header does not match the bytes it covers.
    #[error("crc mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch {
        /// The CRC in the header.
        stored: u32,
        /// The CRC of the covered bytes.
        computed: u32,
    },
    /// The record count is zero or above the limit.
    #[error("record count {count} outside [1, {max}]")]
    RecordCountOutOfRange {
        /// The declared record count.
        count: u32,
        /// The limit.
        max: u32,
    },
    /// `last_offset_delta` is not `record_count - 1`.
    #[error("last offset delta {last_offset_delta} does not match record count {record_count}")]
    LastOffsetDeltaMismatch {
        /// The declared last offset delta.
        last_offset_delta: u32,
        /// The declared record count.
        record_count: u32,
    },
    /// The last offset of the batch would not fit in a u64.
    #[error("base offset {base_offset} + {record_count} records overflows")]
    OffsetOverflow {
        /// The declared base offset.
        base_offset: u64,
        /// The declared record count.
        record_count: u32,
    },
    /// The attributes set bits this format does not define.
    #[error("unknown attribute bits in {attributes:#06x}")]
    UnknownAttributes {
        /// The whole attributes field.
        attributes: u16,
    },
    /// The compression codec is not none, lz4 or zstd.
    #[error("unsupported compression codec {codec}")]
    UnsupportedCompression {
        /// The codec bits.
        codec: u8,
    },
    /// The compressed records section is corrupt.
    #[error("{codec} decompression failed: {reason}")]
    Decompress {
        /// The codec of the batch.
        codec: Compression,
        /// What the decompressor reported.
        reason: String,
    },
    /// The compressed records section declares a decompressed size above the limit.
    #[error("decompressed size {size} exceeds {max}")]
    DecompressedTooLarge {
        /// The declared decompressed size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// Decompression produced a different number of bytes than declared.
    #[error("decompressed {actual} bytes, declared {declared}")]
    DecompressedSizeMismatch {
        /// The declared decompressed size.
        declared: u64,
        /// The bytes actually produced.
        actual: u64,
    },
    /// A varint runs past its maximum width or sets bits beyond its type.
    #[error("varint overflow at byte {at}")]
    VarintOverflow {
        /// Where the varint starts.
        at: usize,
    },
    /// A field holds a value the format forbids.
    #[error("malformed at byte {at}: {reason}")]
    Malformed {
        /// Where the field starts.
        at: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// A key, value, header or count is larger than its limit.
    #[error("{what} {size} exceeds {max}")]
    LimitExceeded {
        /// Which limit.
        what: &'static str,
        /// The declared size or count.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// A record's offset delta is not its index in the batch.
    #[error("record {index} at byte {at} has offset delta {found}")]
    OffsetDeltaMismatch {
        /// Where the offset delta starts.
        at: usize,
        /// The record's index (the expected delta).
        index: u32,
        /// The offset delta found.
        found: i32,
    },
    /// The records section has bytes after the last declared record.
    #[error("{count} trailing bytes at byte {at} after the last record")]
    TrailingBytes {
        /// Where the trailing bytes start.
        at: usize,
        /// How many there are.
        count: usize,
    },
    /// The records section ends before the declared number of records.
    #[error("batch declares {declared} records, section holds {found}")]
    RecordCountMismatch {
        /// The declared record count.
        declared: u32,
        /// The records found.
        found: u32,
    },
    /// A create-time batch's max timestamp is not the largest record timestamp.
    #[error("max timestamp {declared} does not match the records' {computed}")]
    MaxTimestampMismatch {
        /// The header's max timestamp.
        declared: i64,
        /// The largest record timestamp.
        computed: i64,
    },
}

/// Why a batch could not be built. These are caller errors (too much data), not bugs.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum BuildError {
    /// A key, value, header, record count or the batch size would exceed its limit.
    #[error("{what} {size} exceeds {max}")]
    LimitExceeded {
        /// Which limit.
        what: &'static str,
        /// The size or count that would result.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// A record's timestamp is too far from the batch's base timestamp to encode a delta.
    #[error("timestamp {timestamp} too far from base timestamp {base}")]
    TimestampDeltaOverflow {
        /// The record's timestamp.
        timestamp: i64,
        /// The batch's base timestamp.
        base: i64,
    },
    /// `build` was called with no records: a batch holds at least one.
    #[error("a batch needs at least one record")]
    Empty,
    /// The compressor failed.
    #[error("{codec} compression failed: {reason}")]
    Compress {
        /// The codec.
        codec: Compression,
        /// What the compressor reported.
        reason: String,
    },
}
