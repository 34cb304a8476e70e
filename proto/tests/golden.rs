//! Golden byte fixtures: the format must not change by accident.
//!
//! Uncompressed batches must build to exactly the fixture bytes; compressed fixtures must
//! decode to the expected records (compressor output may change between library versions).
//! `SLUICE_BLESS=1 cargo test -p sluice-proto --test golden` rewrites the fixtures; review the
//! diff, and bump `BATCH_FORMAT_VERSION` if the format changed.

mod common;

use std::path::PathBuf;

use bytes::Bytes;
use common::{Plain, blessing, build, decode_plain, from_hex};
use sluice_proto::{
    BATCH_FORMAT_VERSION, BATCH_HEADER_BYTES, BatchBuilder, Compression, Limits, Offset,
    RecordBatch, TimestampType, stamp_base_offset, stamp_leader_epoch, verify_crc,
};

const BASE_TIMESTAMP: i64 = 1_700_000_000_000;
const PRODUCER_ID: i64 = 4242;
const PRODUCER_EPOCH: i16 = 3;
const BASE_SEQUENCE: i32 = 17;

/// Three records: two headers (one with a null value), a null key, a null value.
fn records() -> Vec<Plain> {
    vec![
        Plain::new(
            BASE_TIMESTAMP,
            Some(b"k0"),
            Some(b"v0"),
            &[(b"h1", Some(b"a")), (b"h2", None)],
        ),
        Plain::new(BASE_TIMESTAMP + 5, None, Some(b"v1-null-key"), &[]),
        Plain::new(BASE_TIMESTAMP + 3, Some(b"k2"), None, &[]),
    ]
}

fn build_golden(compression: Compression) -> Vec<u8> {
    let mut builder = BatchBuilder::new(compression, Limits::DEFAULT).producer(
        PRODUCER_ID,
        PRODUCER_EPOCH,
        BASE_SEQUENCE,
    );
    common::push_all(&mut builder, &records());
    builder.build().expect("build").to_vec()
}

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("{name}.hex"))
}

/// Reads fixture `name`, or with `SLUICE_BLESS=1` first writes `built` to it.
fn fixture(name: &str, built: &[u8]) -> Vec<u8> {
    let path = fixture_path(name);
    if blessing() {
        std::fs::write(&path, annotate(built)).expect("write fixture");
    }
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with SLUICE_BLESS=1 to create)",
            path.display()
        )
    });
    from_hex(&text)
}

/// The fixture text: one header field per line with its offset and meaning, then the records
/// section 16 bytes a line.
fn annotate(batch: &[u8]) -> String {
    const FIELDS: [(usize, usize, &str); 13] = [
        (0, 8, "base_offset u64"),
        (8, 4, "batch_length u32"),
        (12, 4, "leader_epoch u32"),
        (16, 1, "format_version u8"),
        (17, 4, "crc u32 (CRC32C of bytes 21..)"),
        (21, 2, "attributes u16"),
        (23, 4, "last_offset_delta u32"),
        (27, 8, "base_timestamp i64"),
        (35, 8, "max_timestamp i64"),
        (43, 8, "producer_id i64"),
        (51, 2, "producer_epoch i16"),
        (53, 4, "base_sequence i32"),
        (57, 4, "record_count u32"),
    ];
    let mut out = String::from(
        "# Sluice record batch, golden fixture (proto/tests/golden.rs; SLUICE_BLESS=1 rewrites).\n\
         # Hex bytes, integers little-endian; '#' starts a comment.\n",
    );
    for (at, len, name) in FIELDS {
        out.push_str(&format!(
            "{:<20}# @{at:<2} {name}\n",
            common::to_hex(&batch[at..at + len])
        ));
    }
    let section = &batch[BATCH_HEADER_BYTES..];
    out.push_str(&format!("# @61 records section, {} bytes\n", section.len()));
    for line in section.chunks(16) {
        out.push_str(&common::to_hex(line));
        out.push('\n');
    }
    out
}

fn decode(bytes: &[u8]) -> RecordBatch {
    RecordBatch::from_bytes(Bytes::copy_from_slice(bytes), &Limits::DEFAULT).expect("valid batch")
}

fn assert_golden_header(batch: &RecordBatch, compression: Compression) {
    let h = batch.header();
    assert_eq!(h.format_version, BATCH_FORMAT_VERSION);
    assert_eq!(h.attributes.compression(), Ok(compression));
    assert_eq!(h.attributes.timestamp_type(), TimestampType::CreateTime);
    assert!(!h.attributes.is_transactional() && !h.attributes.is_control());
    assert_eq!(h.record_count, 3);
    assert_eq!(h.last_offset_delta, 2);
    assert_eq!(h.base_timestamp, BASE_TIMESTAMP);
    assert_eq!(h.max_timestamp, BASE_TIMESTAMP + 5);
    assert_eq!(
        (h.producer_id, h.producer_epoch, h.base_sequence),
        (PRODUCER_ID, PRODUCER_EPOCH, BASE_SEQUENCE)
    );
    assert_eq!(batch.validate(), Ok(()));
    assert_eq!(decode_plain(batch), Ok(records()));
}

#[test]
fn uncompressed_builds_exactly_the_fixture() {
    let built = build_golden(Compression::None);
    let golden = fixture("uncompressed_3_records", &built);
    assert_eq!(common::to_hex(&built), common::to_hex(&golden));
    let batch = decode(&golden);
    assert_golden_header(&batch, Compression::None);
    assert_eq!((batch.base_offset(), batch.leader_epoch()), (Offset(0), 0));
    // Hand-checkable anchors: length, version and count at their offsets, little-endian.
    assert_eq!(&golden[8..12], &(golden.len() as u32).to_le_bytes());
    assert_eq!(golden[16], 1);
    assert_eq!(&golden[57..61], &[3, 0, 0, 0]);
}

#[test]
fn stamped_builds_exactly_the_fixture() {
    let unstamped = build_golden(Compression::None);
    let mut built = unstamped.clone();
    stamp_base_offset(&mut built, Offset(1000));
    stamp_leader_epoch(&mut built, 7);
    let golden = fixture("stamped_offset_1000_epoch_7", &built);
    assert_eq!(common::to_hex(&built), common::to_hex(&golden));
    // Only the stamped fields differ, and the CRC still holds.
    assert_eq!(&golden[0..8], &1000u64.to_le_bytes());
    assert_eq!(&golden[12..16], &7u32.to_le_bytes());
    assert_eq!(&golden[8..12], &unstamped[8..12]);
    assert_eq!(&golden[16..], &unstamped[16..]);
    assert_eq!(verify_crc(&golden), Ok(()));
    let batch = decode(&golden);
    assert_golden_header(&batch, Compression::None);
    assert_eq!(batch.base_offset(), Offset(1000));
    assert_eq!(batch.last_offset(), Offset(1002));
    assert_eq!(batch.next_offset(), Offset(1003));
    assert_eq!(batch.leader_epoch(), 7);
}

#[test]
fn lz4_fixture_decodes_to_the_records() {
    let golden = fixture("lz4_3_records", &build_golden(Compression::Lz4));
    assert_golden_header(&decode(&golden), Compression::Lz4);
}

#[test]
fn zstd_fixture_decodes_to_the_records() {
    let golden = fixture("zstd_3_records", &build_golden(Compression::Zstd));
    assert_golden_header(&decode(&golden), Compression::Zstd);
}

#[test]
fn default_builder_matches_golden_records() {
    // The plain `build` helper (no producer) decodes to the same records.
    let bytes = build(Compression::None, &records()).freeze();
    let batch = RecordBatch::from_bytes(bytes, &Limits::DEFAULT).expect("valid batch");
    assert_eq!(decode_plain(&batch), Ok(records()));
    assert_eq!(batch.header().producer_id, -1);
}
