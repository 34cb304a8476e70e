//! Property tests: whatever the builder accepts decodes back to the same records and header,
//! for every codec, alone or back to back with other batches, stamped or not.

mod common;

use bytes::{Bytes, BytesMut};
use common::{Plain, decode_plain, push_all};
use proptest::prelude::*;
use sluice_proto::{
    BatchBuilder, Compression, Limits, Offset, RecordBatch, TimestampType, split_batches,
    stamp_base_offset, stamp_leader_epoch,
};

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    // Mostly small and repetitive (so compression does something), sometimes random.
    prop_oneof![
        proptest::collection::vec(0u8..4, 0..max),
        proptest::collection::vec(any::<u8>(), 0..max),
    ]
}

fn plain(base: i64) -> impl Strategy<Value = Plain> {
    (
        -1_000_000i64..1_000_000,
        proptest::option::weighted(0.8, bytes(40)),
        proptest::option::weighted(0.9, bytes(300)),
        proptest::collection::vec((bytes(16), proptest::option::of(bytes(32))), 0..4),
    )
        .prop_map(move |(delta, key, value, headers)| Plain {
            timestamp: base + delta,
            key,
            value,
            headers,
        })
}

fn records() -> impl Strategy<Value = Vec<Plain>> {
    (-(1i64 << 45)..(1i64 << 45))
        .prop_flat_map(|base| proptest::collection::vec(plain(base), 1..40))
}

fn compression() -> impl Strategy<Value = Compression> {
    prop_oneof![
        Just(Compression::None),
        Just(Compression::Lz4),
        Just(Compression::Zstd)
    ]
}

fn timestamp_type() -> impl Strategy<Value = TimestampType> {
    prop_oneof![
        Just(TimestampType::CreateTime),
        Just(TimestampType::LogAppendTime)
    ]
}

#[derive(Debug, Clone)]
struct Settings {
    compression: Compression,
    timestamp_type: TimestampType,
    transactional: bool,
    control: bool,
    producer: (i64, i16, i32),
}

fn settings() -> impl Strategy<Value = Settings> {
    (
        compression(),
        timestamp_type(),
        any::<bool>(),
        any::<bool>(),
        any::<(i64, i16, i32)>(),
    )
        .prop_map(
            |(compression, timestamp_type, transactional, control, producer)| Settings {
                compression,
                timestamp_type,
                transactional,
                control,
                producer,
            },
        )
}

fn build(settings: &Settings, records: &[Plain]) -> BytesMut {
    let (id, epoch, sequence) = settings.producer;
    let mut builder = BatchBuilder::new(settings.compression, Limits::DEFAULT)
        .producer(id, epoch, sequence)
        .timestamp_type(settings.timestamp_type)
        .transactional(settings.transactional)
        .control(settings.control);
    push_all(&mut builder, records);
    assert_eq!(builder.len(), records.len());
    let estimate = builder.estimated_bytes();
    let out = builder.build().expect("build");
    if settings.compression == Compression::None {
        assert_eq!(out.len(), estimate);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn build_then_decode_roundtrips(settings in settings(), records in records()) {
        let bytes = build(&settings, &records).freeze();
        let batch = RecordBatch::from_bytes(bytes.clone(), &Limits::DEFAULT).expect("valid batch");
        prop_assert_eq!(batch.validate(), Ok(()));
        prop_assert_eq!(decode_plain(&batch), Ok(records.clone()));

        let h = batch.header();
        prop_assert_eq!(h.batch_length as usize, bytes.len());
        prop_assert_eq!(h.record_count as usize, records.len());
        prop_assert_eq!(batch.base_offset(), Offset::ZERO);
        prop_assert_eq!(batch.last_offset(), Offset(records.len() as u64 - 1));
        prop_assert_eq!(h.base_timestamp, records[0].timestamp);
        prop_assert_eq!(
            h.max_timestamp,
            records.iter().map(|r| r.timestamp).max().expect("non-empty")
        );
        prop_assert_eq!((h.producer_id, h.producer_epoch, h.base_sequence), settings.producer);
        prop_assert_eq!(batch.compression(), settings.compression);
        prop_assert_eq!(h.attributes.timestamp_type(), settings.timestamp_type);
        prop_assert_eq!(h.attributes.is_transactional(), settings.transactional);
        prop_assert_eq!(h.attributes.is_control(), settings.control);

        // Uncompressed keys and values are slices of the batch, not copies.
        if settings.compression == Compression::None {
            let range = bytes.as_ptr_range();
            for record in batch.records().expect("records") {
                let record = record.expect("record");
                for b in record.key.iter().chain(record.value.iter()).filter(|b| !b.is_empty()) {
                    prop_assert!(range.contains(&b.as_ptr()));
                }
            }
        }
    }

    #[test]
    fn explicit_base_timestamp_roundtrips(base in -(1i64 << 45)..(1i64 << 45), records in records()) {
        let mut builder = BatchBuilder::new(Compression::None, Limits::DEFAULT).base_timestamp(base);
        push_all(&mut builder, &records);
        let batch = RecordBatch::from_bytes(builder.build().expect("build").freeze(), &Limits::DEFAULT)
            .expect("valid batch");
        prop_assert_eq!(batch.header().base_timestamp, base);
        prop_assert_eq!(batch.validate(), Ok(()));
        prop_assert_eq!(decode_plain(&batch), Ok(records));
    }

    #[test]
    fn stamping_keeps_the_crc_valid(
        settings in settings(),
        records in records(),
        base in 0u64..(u64::MAX / 2),
        epoch in any::<u32>(),
    ) {
        let mut bytes = build(&settings, &records);
        let crc_before = bytes[17..21].to_vec();
        stamp_base_offset(&mut bytes, Offset(base));
        stamp_leader_epoch(&mut bytes, epoch);
        prop_assert_eq!(&bytes[17..21], &crc_before[..]);
        let batch = RecordBatch::from_bytes(bytes.freeze(), &Limits::DEFAULT).expect("still valid");
        prop_assert_eq!(batch.base_offset(), Offset(base));
        prop_assert_eq!(batch.leader_epoch(), epoch);
        prop_assert_eq!(batch.next_offset(), Offset(base + records.len() as u64));
        let offsets: Vec<Offset> = batch
            .records()
            .expect("records")
            .map(|r| r.expect("record").offset(batch.base_offset()))
            .collect();
        let expected: Vec<Offset> = (0..records.len() as u64).map(|i| Offset(base + i)).collect();
        prop_assert_eq!(offsets, expected);
        prop_assert_eq!(decode_plain(&batch), Ok(records));
    }

    #[test]
    fn split_batches_yields_each_batch_in_order(
        batches in proptest::collection::vec((settings(), records()), 1..6),
        partial in 0usize..64,
    ) {
        let mut log = BytesMut::new();
        let mut next = Offset(100);
        let mut lengths = Vec::new();
        for (settings, records) in &batches {
            let mut bytes = build(settings, records);
            stamp_base_offset(&mut bytes, next);
            next = Offset(next.get() + records.len() as u64);
            lengths.push(bytes.len());
            log.extend_from_slice(&bytes);
        }
        let whole = log.len();
        // A reader may see the start of a batch still being written.
        let tail = build(&batches[0].0, &batches[0].1);
        let partial = partial.min(tail.len() - 1);
        log.extend_from_slice(&tail[..partial]);
        let log = log.freeze();

        let mut iter = split_batches(log.clone(), &Limits::DEFAULT);
        let mut expected_base = Offset(100);
        for ((_, records), length) in batches.iter().zip(&lengths) {
            let batch = iter.next().expect("a batch").expect("valid batch");
            prop_assert_eq!(batch.len(), *length);
            prop_assert_eq!(batch.base_offset(), expected_base);
            prop_assert_eq!(batch.validate(), Ok(()));
            prop_assert_eq!(decode_plain(&batch), Ok(records.clone()));
            expected_base = batch.next_offset();
        }
        if partial == 0 {
            prop_assert!(iter.next().is_none());
        } else {
            let err = iter.next().expect("an error").expect_err("partial batch");
            let truncated = matches!(err, sluice_proto::DecodeError::Truncated { .. });
            prop_assert!(truncated, "{:?}", err);
            prop_assert!(iter.next().is_none());
        }
        prop_assert_eq!(iter.consumed_bytes(), whole);
        prop_assert_eq!(iter.remaining().len(), partial);
        prop_assert_eq!(iter.remaining(), &log.slice(whole..));
        // The views share the log's memory.
        let first = split_batches(log.clone(), &Limits::DEFAULT)
            .next()
            .expect("a batch")
            .expect("valid batch");
        prop_assert_eq!(first.as_bytes().as_ptr(), log.as_ptr());
        let _: Bytes = first.into_bytes();
    }
}
