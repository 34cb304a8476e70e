//! Sluice wire and disk formats: the record batch and the native protocol ([`protocol`]).
//!
//! One byte format serves the network and the disk, so a produced batch is validated once,
//! stamped with its base offset and leader epoch in place, and written and served without
//! re-encoding. This crate does no I/O: it parses, validates and builds byte buffers.
//!
//! A batch is a fixed 61-byte header (see [`BATCH_HEADER_BYTES`] and the `*_AT` field
//! offsets) followed by a records section in Kafka's v2 record layout, possibly compressed as
//! a whole with lz4 or zstd. All integers are little-endian and fixed width. A CRC32C covers
//! every byte after the CRC field; the broker-stamped fields (base offset, batch length,
//! leader epoch) come before it, so stamping never invalidates the CRC.
//!
//! Decoding treats every byte as untrusted: it never panics, checks every length against
//! [`Limits`] before allocating, and reports where and why it failed ([`DecodeError`]).
//!
//! - [`BatchBuilder`] builds a batch (producer side, tests, tools).
//! - [`RecordBatch`] is a zero-copy view of one whole batch; [`split_batches`] cuts a buffer
//!   of back-to-back batches into such views.
//! - [`BatchHeader`], [`stamp_base_offset`], [`stamp_leader_epoch`], [`peek_batch_length`],
//!   [`compute_crc`] and [`verify_crc`] work on raw header bytes (the storage layer).

mod batch;
mod error;
mod limits;
mod offset;
pub mod protocol;

pub use batch::attributes::{Attributes, Compression, TimestampType};
pub use batch::builder::BatchBuilder;
pub use batch::crc::{compute_crc, verify_crc};
pub use batch::header::{
    BatchHeader, peek_batch_length, stamp_base_offset, stamp_leader_epoch, stamp_producer,
};
pub use batch::layout::{
    ATTRIBUTES_AT, BASE_OFFSET_AT, BASE_SEQUENCE_AT, BASE_TIMESTAMP_AT, BATCH_FORMAT_VERSION,
    BATCH_HEADER_BYTES, BATCH_LENGTH_AT, CRC_AT, CRC_COVERED_FROM, LAST_OFFSET_DELTA_AT,
    LEADER_EPOCH_AT, MAX_TIMESTAMP_AT, PEEK_BYTES, PRODUCER_EPOCH_AT, PRODUCER_ID_AT,
    RECORD_COUNT_AT, RECORDS_AT, VERSION_AT,
};
pub use batch::reader::{BatchIter, RecordBatch, split_batches};
pub use batch::record::{RECORD_BYTES_MIN, Record, RecordHeaders, RecordHeadersIter};
pub use batch::records::Records;
pub use error::{BuildError, DecodeError};
pub use limits::{
    BATCH_BYTES_MAX, BATCH_RECORDS_MAX, HEADER_KEY_BYTES_MAX, HEADER_VALUE_BYTES_MAX,
    KEY_BYTES_MAX, Limits, RECORD_HEADERS_MAX, RECORDS_UNCOMPRESSED_BYTES_MAX, VALUE_BYTES_MAX,
};
pub use offset::Offset;
