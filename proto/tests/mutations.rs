//! Property tests over hostile input: arbitrary bytes and mutated valid batches never panic
//! any decoder, and whatever a decoder accepts is consistent.

mod common;

use bytes::{Bytes, BytesMut};
use common::{Plain, build, check_consistent, decode_plain, exercise};
use proptest::prelude::*;
use sluice_proto::{
    BATCH_HEADER_BYTES, BATCH_LENGTH_AT, CRC_AT, CRC_COVERED_FROM, Compression, Limits,
    RecordBatch, compute_crc,
};

#[derive(Debug, Clone)]
enum Mutation {
    FlipBit {
        at: usize,
        bit: u8,
    },
    SetByte {
        at: usize,
        value: u8,
    },
    /// Overwrite 4 bytes with a little-endian u32: hits length fields and varints.
    SetU32 {
        at: usize,
        value: u32,
    },
    Truncate {
        len: usize,
    },
    Append {
        bytes: Vec<u8>,
    },
    Remove {
        at: usize,
        len: usize,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    // Positions are taken modulo the batch length when applied.
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, value)| Mutation::SetByte { at, value }),
        (
            any::<usize>(),
            prop_oneof![
                any::<u32>(),
                Just(0),
                Just(u32::MAX),
                Just(0x7fff_ffff),
                0u32..300
            ]
        )
            .prop_map(|(at, value)| Mutation::SetU32 { at, value }),
        any::<usize>().prop_map(|len| Mutation::Truncate { len }),
        proptest::collection::vec(any::<u8>(), 1..16).prop_map(|bytes| Mutation::Append { bytes }),
        (any::<usize>(), 1usize..8).prop_map(|(at, len)| Mutation::Remove { at, len }),
    ]
}

fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
    let n = bytes.len().max(1);
    match mutation {
        Mutation::FlipBit { at, bit } => {
            if let Some(b) = bytes.get_mut(at % n) {
                *b ^= 1 << bit;
            }
        }
        Mutation::SetByte { at, value } => {
            if let Some(b) = bytes.get_mut(at % n) {
                *b = *value;
            }
        }
        Mutation::SetU32 { at, value } => {
            let at = at % n;
            for (i, b) in value.to_le_bytes().into_iter().enumerate() {
                if let Some(slot) = bytes.get_mut(at + i) {
                    *slot = b;
                }
            }
        }
        Mutation::Truncate { len } => bytes.truncate(len % n),
        Mutation::Append { bytes: extra } => bytes.extend_from_slice(extra),
        Mutation::Remove { at, len } => {
            let at = at % n;
            let end = (at + len).min(bytes.len());
            if at < end {
                bytes.drain(at..end);
            }
        }
    }
}

/// Makes the header's length and CRC agree with the (mutated) bytes, so the mutation reaches
/// the record decoder instead of stopping at the CRC check.
fn repair(bytes: &mut [u8]) {
    if bytes.len() >= BATCH_HEADER_BYTES {
        let len = bytes.len() as u32;
        bytes[BATCH_LENGTH_AT..BATCH_LENGTH_AT + 4].copy_from_slice(&len.to_le_bytes());
        let crc = compute_crc(bytes);
        bytes[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    }
}

fn sample_records() -> impl Strategy<Value = Vec<Plain>> {
    proptest::collection::vec(
        (
            -1000i64..1000,
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..12)),
            proptest::option::of(proptest::collection::vec(0u8..3, 0..40)),
            proptest::collection::vec(
                (
                    proptest::collection::vec(any::<u8>(), 0..6),
                    proptest::option::of(proptest::collection::vec(any::<u8>(), 0..6)),
                ),
                0..3,
            ),
        )
            .prop_map(|(t, key, value, headers)| Plain {
                timestamp: 1_000_000 + t,
                key,
                value,
                headers,
            }),
        1..8,
    )
}

fn compression() -> impl Strategy<Value = Compression> {
    prop_oneof![
        Just(Compression::None),
        Just(Compression::Lz4),
        Just(Compression::Zstd)
    ]
}

/// Tight limits so mutated lengths also hit the limit checks.
fn limits() -> impl Strategy<Value = Limits> {
    prop_oneof![
        Just(Limits::DEFAULT),
        Just(Limits {
            batch_bytes_max: 4096,
            batch_records_max: 16,
            records_uncompressed_bytes_max: 2048,
            key_bytes_max: 8,
            value_bytes_max: 32,
            record_headers_max: 2,
            header_key_bytes_max: 4,
            header_value_bytes_max: 4,
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), limits in limits()) {
        exercise(&bytes, &limits);
        let mut repaired = bytes;
        repair(&mut repaired);
        exercise(&repaired, &limits);
    }

    #[test]
    fn arbitrary_header_with_valid_prefix_never_panics(
        compression in compression(),
        records in sample_records(),
        tail in proptest::collection::vec(any::<u8>(), 0..256),
        limits in limits(),
    ) {
        // A real header followed by random records: reaches the record decoder and the
        // decompressors with garbage.
        let mut bytes = build(compression, &records)[..BATCH_HEADER_BYTES].to_vec();
        bytes.extend_from_slice(&tail);
        repair(&mut bytes);
        exercise(&bytes, &limits);
    }

    #[test]
    fn mutated_batches_never_panic_and_stay_consistent(
        compression in compression(),
        records in sample_records(),
        mutations in proptest::collection::vec(mutation(), 1..4),
        fix in any::<bool>(),
        limits in limits(),
    ) {
        let original = build(compression, &records).to_vec();
        let mut bytes = original.clone();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        if fix {
            repair(&mut bytes);
        }
        exercise(&bytes, &limits);

        // Unrepaired, a batch that still checks must have kept every CRC-covered byte, so it
        // decodes to the original records.
        if let Ok(batch) = RecordBatch::from_bytes(Bytes::copy_from_slice(&bytes), &Limits::DEFAULT) {
            check_consistent(&batch);
            if !fix && bytes.get(CRC_COVERED_FROM..) == original.get(CRC_COVERED_FROM..) {
                prop_assert_eq!(decode_plain(&batch), Ok(records));
            }
        }
    }

    #[test]
    fn several_batches_with_one_mutated(
        records in sample_records(),
        mutation in mutation(),
        which in 0usize..3,
    ) {
        let mut log = BytesMut::new();
        for (i, compression) in [Compression::None, Compression::Lz4, Compression::Zstd].into_iter().enumerate() {
            let mut bytes = build(compression, &records).to_vec();
            if i == which {
                apply(&mut bytes, &mutation);
            }
            log.extend_from_slice(&bytes);
        }
        exercise(&log, &Limits::DEFAULT);
    }
}
