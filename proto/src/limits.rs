//! Named bounds on everything a batch can carry, and the `Limits` that decoders and the
//! builder enforce.
//!
//! Every length read from the network or the disk is checked against one of these before
//! anything is allocated for it. The relations between them are checked at compile time.

use crate::batch::layout::BATCH_HEADER_BYTES;
use crate::batch::record::RECORD_BYTES_MIN;

const KIB: u32 = 1024;
const MIB: u32 = 1024 * KIB;

/// Largest whole batch (header included) on the wire or on disk.
pub const BATCH_BYTES_MAX: u32 = 16 * MIB;
/// Most records in one batch.
pub const BATCH_RECORDS_MAX: u32 = 262_144;
/// Largest records section after decompression: bounds the memory a compressed batch can
/// make a decoder allocate.
pub const RECORDS_UNCOMPRESSED_BYTES_MAX: u32 = 64 * MIB;
/// Largest record key.
pub const KEY_BYTES_MAX: u32 = 64 * KIB;
/// Largest record value. A value this large only fits in a compressed batch.
pub const VALUE_BYTES_MAX: u32 = BATCH_BYTES_MAX;
/// Most headers on one record.
pub const RECORD_HEADERS_MAX: u32 = 64;
/// Largest record header key.
pub const HEADER_KEY_BYTES_MAX: u32 = KIB;
/// Largest record header value.
pub const HEADER_VALUE_BYTES_MAX: u32 = 64 * KIB;

const _: () = {
    // A batch holds its header and at least one record.
    assert!(BATCH_HEADER_BYTES as u64 + RECORD_BYTES_MIN as u64 <= BATCH_BYTES_MAX as u64);
    // An uncompressed batch always decodes within the decompression bound.
    assert!(BATCH_BYTES_MAX <= RECORDS_UNCOMPRESSED_BYTES_MAX);
    // Record lengths are zigzag i32 varints: every section length must fit one.
    assert!(RECORDS_UNCOMPRESSED_BYTES_MAX <= i32::MAX as u32);
    // Offset deltas are i32 varints and the record count a u32.
    assert!(BATCH_RECORDS_MAX >= 1);
    assert!(BATCH_RECORDS_MAX <= i32::MAX as u32);
    // The most records a batch may declare can actually be encoded in the section.
    assert!(
        BATCH_RECORDS_MAX as u64 * RECORD_BYTES_MIN as u64 <= RECORDS_UNCOMPRESSED_BYTES_MAX as u64
    );
    assert!(KEY_BYTES_MAX < BATCH_BYTES_MAX);
    assert!(VALUE_BYTES_MAX <= BATCH_BYTES_MAX);
    assert!(HEADER_KEY_BYTES_MAX <= KEY_BYTES_MAX);
    assert!(HEADER_VALUE_BYTES_MAX <= VALUE_BYTES_MAX);
    // A record with every header at its largest still fits in one batch.
    assert!(
        RECORD_HEADERS_MAX as u64 * (HEADER_KEY_BYTES_MAX as u64 + HEADER_VALUE_BYTES_MAX as u64)
            < BATCH_BYTES_MAX as u64
    );
};

/// The bounds a decoder or builder enforces. [`Limits::DEFAULT`] holds the named constants;
/// a broker may tighten them (or loosen them, up to what the format can encode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limits {
    /// Largest whole batch, header included ([`BATCH_BYTES_MAX`]).
    pub batch_bytes_max: u32,
    /// Most records in a batch ([`BATCH_RECORDS_MAX`]).
    pub batch_records_max: u32,
    /// Largest decompressed records section ([`RECORDS_UNCOMPRESSED_BYTES_MAX`]).
    pub records_uncompressed_bytes_max: u32,
    /// Largest key ([`KEY_BYTES_MAX`]).
    pub key_bytes_max: u32,
    /// Largest value ([`VALUE_BYTES_MAX`]).
    pub value_bytes_max: u32,
    /// Most headers per record ([`RECORD_HEADERS_MAX`]).
    pub record_headers_max: u32,
    /// Largest header key ([`HEADER_KEY_BYTES_MAX`]).
    pub header_key_bytes_max: u32,
    /// Largest header value ([`HEADER_VALUE_BYTES_MAX`]).
    pub header_value_bytes_max: u32,
}

impl Limits {
    /// The named constants of this module.
    pub const DEFAULT: Limits = Limits {
        batch_bytes_max: BATCH_BYTES_MAX,
        batch_records_max: BATCH_RECORDS_MAX,
        records_uncompressed_bytes_max: RECORDS_UNCOMPRESSED_BYTES_MAX,
        key_bytes_max: KEY_BYTES_MAX,
        value_bytes_max: VALUE_BYTES_MAX,
        record_headers_max: RECORD_HEADERS_MAX,
        header_key_bytes_max: HEADER_KEY_BYTES_MAX,
        header_value_bytes_max: HEADER_VALUE_BYTES_MAX,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}
