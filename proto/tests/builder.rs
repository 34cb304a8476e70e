//! The builder enforces every limit on push, leaves itself unchanged on a refused push, and
//! fails cleanly on empty batches and unencodable timestamps.

mod common;

use bytes::Bytes;
use sluice_proto::{
    BATCH_HEADER_BYTES, BatchBuilder, BuildError, Compression, Limits, RecordBatch,
};

fn small_limits() -> Limits {
    Limits {
        batch_bytes_max: 150,
        batch_records_max: 3,
        records_uncompressed_bytes_max: 400,
        key_bytes_max: 4,
        value_bytes_max: 100,
        record_headers_max: 2,
        header_key_bytes_max: 3,
        header_value_bytes_max: 5,
    }
}

fn limit(what: &'static str, size: u64, max: u64) -> Result<(), BuildError> {
    Err(BuildError::LimitExceeded { what, size, max })
}

#[test]
fn refuses_each_limit_and_stays_unchanged() {
    let mut b = BatchBuilder::new(Compression::None, small_limits());
    b.push(1, Some(b"k"), Some(b"v"), &[]).expect("fits");
    let before = (b.len(), b.estimated_bytes());

    assert_eq!(
        b.push(2, Some(b"kkkkk"), None, &[]),
        limit("key bytes", 5, 4)
    );
    assert_eq!(
        b.push(2, None, Some(&[0; 101]), &[]),
        limit("value bytes", 101, 100)
    );
    let three: [(&[u8], Option<&[u8]>); 3] = [(b"a", None), (b"b", None), (b"c", None)];
    assert_eq!(b.push(2, None, None, &three), limit("record headers", 3, 2));
    assert_eq!(
        b.push(2, None, None, &[(b"long", None)]),
        limit("header key bytes", 4, 3)
    );
    assert_eq!(
        b.push(2, None, None, &[(b"k", Some(b"sixsix"))]),
        limit("header value bytes", 6, 5)
    );
    // 61 header + 9 (first record) + 105 (2-byte length, 103-byte body) = 175 > 150.
    assert_eq!(
        b.push(2, None, Some(&[0; 96]), &[]),
        limit("batch bytes", 175, 150)
    );
    assert_eq!((b.len(), b.estimated_bytes()), before);

    b.push(2, None, None, &[]).expect("fits");
    b.push(3, None, None, &[]).expect("fits");
    assert_eq!(b.push(4, None, None, &[]), limit("batch records", 4, 3));

    let batch = RecordBatch::from_bytes(b.build().expect("build").freeze(), &small_limits())
        .expect("valid under the same limits");
    assert_eq!(batch.record_count(), 3);
    assert_eq!(batch.validate(), Ok(()));
}

#[test]
fn compressed_batches_are_bounded_by_the_uncompressed_limit_and_the_batch_limit() {
    let limits = Limits {
        batch_bytes_max: 100,
        value_bytes_max: 1000,
        ..small_limits()
    };
    // Compressible: 300 zeros fit the 400-byte section limit and compress far below 100.
    let mut b = BatchBuilder::new(Compression::Zstd, limits);
    b.push(0, None, Some(&[0; 300]), &[])
        .expect("section within 400");
    assert!(matches!(
        b.push(0, None, Some(&[0; 300]), &[]),
        Err(BuildError::LimitExceeded {
            what: "records uncompressed bytes",
            max: 400,
            ..
        })
    ));
    let bytes = b.build().expect("compresses under 100");
    assert!(bytes.len() <= 100);

    // Incompressible: the section fits but the compressed batch does not.
    let noise: Vec<u8> = (0..300u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for compression in [Compression::Lz4, Compression::Zstd] {
        let mut b = BatchBuilder::new(compression, limits);
        b.push(0, None, Some(&noise), &[])
            .expect("section within 400");
        assert!(matches!(
            b.build(),
            Err(BuildError::LimitExceeded {
                what: "batch bytes",
                max: 100,
                ..
            })
        ));
    }
}

#[test]
fn empty_batches_are_refused() {
    for compression in [Compression::None, Compression::Lz4, Compression::Zstd] {
        let b = BatchBuilder::new(compression, Limits::DEFAULT);
        assert!(b.is_empty());
        assert_eq!(b.estimated_bytes(), BATCH_HEADER_BYTES);
        assert_eq!(b.build().map(|_| ()), Err(BuildError::Empty));
    }
}

#[test]
fn timestamp_deltas_that_overflow_are_refused() {
    let mut b = BatchBuilder::new(Compression::None, Limits::DEFAULT);
    b.push(i64::MAX, None, None, &[])
        .expect("first sets the base");
    assert_eq!(
        b.push(i64::MIN, None, None, &[]),
        Err(BuildError::TimestampDeltaOverflow {
            timestamp: i64::MIN,
            base: i64::MAX
        })
    );
    assert_eq!(b.len(), 1);
    // Extreme but encodable timestamps round-trip.
    b.push(0, None, None, &[]).expect("delta -i64::MAX");
    let batch = RecordBatch::from_bytes(b.build().expect("build").freeze(), &Limits::DEFAULT)
        .expect("valid");
    assert_eq!(batch.validate(), Ok(()));
    assert_eq!(batch.max_timestamp(), i64::MAX);
    let timestamps: Vec<i64> = batch
        .records()
        .expect("records")
        .map(|r| r.expect("record").timestamp(batch.header().base_timestamp))
        .collect();
    assert_eq!(timestamps, [i64::MAX, 0]);
}

#[test]
#[should_panic(expected = "before the first push")]
fn base_timestamp_after_a_push_panics() {
    let mut b = BatchBuilder::new(Compression::None, Limits::DEFAULT);
    b.push(0, None, None, &[]).expect("push");
    let _ = b.base_timestamp(5);
}

#[test]
fn decoder_limits_match_builder_limits() {
    // A batch built under default limits is refused by a decoder with tighter ones.
    let bytes = common::build(
        Compression::None,
        &[common::Plain::new(0, Some(b"a-longer-key"), None, &[])],
    )
    .freeze();
    let tight = Limits {
        key_bytes_max: 4,
        ..Limits::DEFAULT
    };
    let batch = RecordBatch::from_bytes(Bytes::clone(&bytes), &tight).expect("header and crc");
    assert_eq!(
        batch.validate(),
        Err(sluice_proto::DecodeError::LimitExceeded {
            what: "key bytes",
            size: 12,
            max: 4
        })
    );
}
