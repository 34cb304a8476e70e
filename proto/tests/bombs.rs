//! Decompression bombs and oversized declarations are rejected before anything large is
//! allocated. A counting global allocator records the largest single allocation each thread
//! makes, so each test measures only its own decoding.

mod alloc_tracking;
mod common;

use alloc_tracking::largest_allocation;
use bytes::{BufMut, BytesMut};
use common::Plain;
use sluice_proto::{
    Attributes, BATCH_FORMAT_VERSION, BatchBuilder, BatchHeader, CRC_AT, Compression, DecodeError,
    Limits, Offset, RECORDS_UNCOMPRESSED_BYTES_MAX, RecordBatch, TimestampType, compute_crc,
};

const GIB: u64 = 1 << 30;
/// No decode below may allocate more than this.
const ALLOCATION_BUDGET: usize = 1 << 20;

/// A valid batch (header, length, CRC) around a hand-made records `section`.
fn batch_around(compression: Compression, record_count: u32, section: &[u8]) -> RecordBatch {
    let header = BatchHeader {
        base_offset: Offset::ZERO,
        batch_length: (61 + section.len()) as u32,
        leader_epoch: 0,
        format_version: BATCH_FORMAT_VERSION,
        crc: 0,
        attributes: Attributes::new(compression, TimestampType::CreateTime, false, false),
        last_offset_delta: record_count - 1,
        base_timestamp: 0,
        max_timestamp: 0,
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
        record_count,
    };
    let mut bytes = BytesMut::new();
    bytes.put_slice(&header.encode());
    bytes.put_slice(section);
    let crc = compute_crc(&bytes);
    bytes[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    RecordBatch::from_bytes(bytes.freeze(), &Limits::DEFAULT).expect("valid header and crc")
}

/// A real zstd frame that declares `content_size` and holds it as RLE blocks of zeros:
/// 4 bytes per 128 KiB, so a 1 GiB frame is 32 KiB. `actual` is what the blocks produce.
fn zstd_rle_frame(content_size: u64, actual: u64) -> Vec<u8> {
    const BLOCK_MAX: u64 = 128 * 1024;
    let mut frame = Vec::new();
    frame.extend_from_slice(&0xFD2F_B528u32.to_le_bytes());
    // Frame header descriptor: 8-byte content size, single segment, no checksum, no dict.
    frame.push(0b1110_0000);
    frame.extend_from_slice(&content_size.to_le_bytes());
    let mut left = actual;
    while left > 0 {
        let size = left.min(BLOCK_MAX);
        left -= size;
        let last = u32::from(left == 0);
        // Block header: last flag, type 1 (RLE), 21-bit size; then the byte to repeat.
        let block_header = last | (1 << 1) | ((size as u32) << 3);
        frame.extend_from_slice(&block_header.to_le_bytes()[..3]);
        frame.push(0);
    }
    frame
}

#[test]
fn the_rle_frame_is_real_zstd() {
    let frame = zstd_rle_frame(300 * 1024, 300 * 1024);
    let out = zstd::bulk::decompress(&frame, 300 * 1024).expect("valid frame");
    assert_eq!(out, vec![0u8; 300 * 1024]);
}

#[test]
fn zstd_frame_declaring_one_gib_is_rejected_without_allocating() {
    let batch = batch_around(Compression::Zstd, 1, &zstd_rle_frame(GIB, GIB));
    let (result, largest) = largest_allocation(|| batch.records().map(|_| ()));
    assert_eq!(
        result,
        Err(DecodeError::DecompressedTooLarge {
            size: GIB,
            max: u64::from(RECORDS_UNCOMPRESSED_BYTES_MAX)
        })
    );
    assert!(largest < ALLOCATION_BUDGET, "allocated {largest} bytes");
    let (result, largest) = largest_allocation(|| batch.validate());
    assert!(matches!(
        result,
        Err(DecodeError::DecompressedTooLarge { .. })
    ));
    assert!(largest < ALLOCATION_BUDGET, "allocated {largest} bytes");
}

#[test]
fn zstd_frame_producing_more_than_it_declares_is_rejected() {
    // Declares 1000 bytes, its blocks produce 1 GiB: decoding stops at the 1000-byte buffer.
    let batch = batch_around(Compression::Zstd, 1, &zstd_rle_frame(1000, GIB));
    let (result, largest) = largest_allocation(|| batch.records().map(|_| ()));
    assert!(
        matches!(result, Err(DecodeError::Decompress { .. })),
        "{result:?}"
    );
    assert!(largest < ALLOCATION_BUDGET, "allocated {largest} bytes");
}

#[test]
fn lz4_declaring_one_gib_is_rejected_without_allocating() {
    let mut section = (GIB as u32).to_le_bytes().to_vec();
    // An lz4 block: one literal, then a long match repeating it (the bomb body).
    section.extend_from_slice(&lz4_flex::block::compress(&vec![0u8; 1 << 20]));
    let batch = batch_around(Compression::Lz4, 1, &section);
    let (result, largest) = largest_allocation(|| batch.records().map(|_| ()));
    assert_eq!(
        result,
        Err(DecodeError::DecompressedTooLarge {
            size: GIB,
            max: u64::from(RECORDS_UNCOMPRESSED_BYTES_MAX)
        })
    );
    assert!(largest < ALLOCATION_BUDGET, "allocated {largest} bytes");
}

#[test]
fn lz4_block_producing_more_than_it_declares_is_rejected() {
    let mut section = 1000u32.to_le_bytes().to_vec();
    section.extend_from_slice(&lz4_flex::block::compress(&vec![0u8; 1 << 20]));
    let batch = batch_around(Compression::Lz4, 1, &section);
    let (result, largest) = largest_allocation(|| batch.records().map(|_| ()));
    assert!(
        matches!(result, Err(DecodeError::Decompress { .. })),
        "{result:?}"
    );
    assert!(largest < ALLOCATION_BUDGET, "allocated {largest} bytes");
}

#[test]
fn decompression_respects_a_lowered_limit() {
    // 4 MiB of zeros compresses to a few KiB; a broker allowing 1 MiB rejects it.
    let value = vec![0u8; 4 << 20];
    for compression in [Compression::Lz4, Compression::Zstd] {
        let mut builder = BatchBuilder::new(compression, Limits::DEFAULT);
        builder
            .push(0, None, Some(&value), &[])
            .expect("within default limits");
        let bytes = builder.build().expect("build").freeze();
        assert!(bytes.len() < 64 * 1024);
        let limits = Limits {
            records_uncompressed_bytes_max: 1 << 20,
            ..Limits::DEFAULT
        };
        let batch = RecordBatch::from_bytes(bytes, &limits).expect("header and crc");
        let (result, largest) = largest_allocation(|| batch.validate());
        assert!(
            matches!(result, Err(DecodeError::DecompressedTooLarge { size, max })
                if size == (4 << 20) + 13 && max == 1 << 20),
            "{result:?}"
        );
        assert!(largest < ALLOCATION_BUDGET, "allocated {largest} bytes");
    }
}

#[test]
fn huge_record_count_with_a_tiny_section_allocates_nothing_per_record() {
    let record = common::build(Compression::None, &[Plain::new(0, None, None, &[])]);
    let section = &record[61..];
    let batch = batch_around(Compression::None, sluice_proto::BATCH_RECORDS_MAX, section);
    let (result, largest) = largest_allocation(|| batch.validate());
    assert_eq!(
        result,
        Err(DecodeError::RecordCountMismatch {
            declared: sluice_proto::BATCH_RECORDS_MAX,
            found: 1
        })
    );
    assert!(largest < 4096, "allocated {largest} bytes");
}

#[test]
fn declared_key_length_beyond_the_section_allocates_nothing() {
    // A record claiming a 60 KiB key in a few bytes of section.
    let mut section = Vec::new();
    section.extend_from_slice(&[0x0c, 0x00, 0x00, 0x00]); // length 6, attributes, ts, offset
    section.extend_from_slice(&[0x80, 0xc0, 0x07]); // key length 61440 (zigzag varint)
    section.extend_from_slice(b"abc");
    let batch = batch_around(Compression::None, 1, &section);
    let (result, largest) = largest_allocation(|| batch.validate());
    assert!(
        matches!(result, Err(DecodeError::Truncated { .. })),
        "{result:?}"
    );
    assert!(largest < 4096, "allocated {largest} bytes");
}
