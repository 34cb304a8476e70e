//! The crash test's workload: the log settings and the batches, as a function of a tag. Shared
//! by `tests/crash.rs` (through `common`) and the child process
//! `src/bin/sluice-log-crash-child.rs` (which includes this file by path), so both build
//! byte-identical batches with the same settings. `make_batch` and `value_for` also serve the
//! other storage tests.
#![allow(dead_code)]

use bytes::BytesMut;
use sluice_proto::{BatchBuilder, Compression, Limits};
use sluice_storage::{FlushPolicy, LogConfig};

/// Segment size of the log: small, so that segments roll during a run.
pub(crate) const SEGMENT_BYTES: u64 = 256 * 1024;
/// Preallocation step: small, so that writes outrun the allocation during a run.
pub(crate) const PREALLOCATE_BYTES: u64 = 64 * 1024;
/// Sparse index interval: several entries per segment.
pub(crate) const INDEX_INTERVAL_BYTES: u32 = 16 * 1024;
/// Smallest and largest batch the shapes aim for.
pub(crate) const BATCH_BYTES_MIN: usize = 100;
pub(crate) const BATCH_BYTES_MAX: usize = 64 * 1024;
/// Timestamp of record 0 of the batch tagged 0; a batch's timestamps follow from its tag.
pub(crate) const TIMESTAMP_BASE_MS: i64 = 1_600_000_000_000;

/// The log configuration the child writes with (the parent reopens with the same).
pub(crate) fn config() -> LogConfig {
    LogConfig {
        segment_bytes: SEGMENT_BYTES,
        preallocate_bytes: PREALLOCATE_BYTES,
        index_interval_bytes: INDEX_INTERVAL_BYTES,
        flush: FlushPolicy::EveryBatch,
        ..LogConfig::default()
    }
}

fn mix(tag: u64) -> u64 {
    // splitmix64 finaliser.
    let mut z = tag.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Records and value length of the batch tagged `tag`: 1..=4 records, sizes from about
/// [`BATCH_BYTES_MIN`] to [`BATCH_BYTES_MAX`], skewed towards small: the number of doublings
/// of the minimum is the smallest of three uniform draws from 0..10 (mean about 2 KB; about
/// one batch in 140 is over 38 KB), so that hundreds of kills leave a few tens of MB, which
/// the parent reads back after every kill.
pub(crate) fn shape_for(tag: u64) -> (usize, usize) {
    let h = mix(tag);
    let records = 1 + (h % 4) as usize;
    let doublings = ((h >> 8) % 10).min((h >> 12) % 10).min((h >> 16) % 10);
    let low = BATCH_BYTES_MIN << doublings;
    let bytes = (low + ((h >> 24) as usize % low)).min(BATCH_BYTES_MAX);
    let value_len = (bytes / records).saturating_sub(24).max(1);
    (records, value_len)
}

/// Deterministic value bytes for record `i` of a batch tagged `tag`.
pub(crate) fn value_for(tag: u64, i: usize, len: usize) -> Vec<u8> {
    let mut x =
        tag.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A batch of `records` records of `value_len` bytes, content derived from `tag`, record `i`
/// keyed `k{tag}-{i}`, timestamps starting at `ts`.
pub(crate) fn make_batch(tag: u64, records: usize, value_len: usize, ts: i64) -> BytesMut {
    let mut b = BatchBuilder::new(Compression::None, Limits::DEFAULT);
    for i in 0..records {
        let key = format!("k{tag}-{i}");
        b.push(
            ts + i as i64,
            Some(key.as_bytes()),
            Some(&value_for(tag, i, value_len)),
            &[],
        )
        .expect("within limits");
    }
    b.build().expect("non-empty batch")
}

/// The crash workload's batch tagged `tag` (offset not yet stamped).
pub(crate) fn batch_for(tag: u64) -> BytesMut {
    let (records, value_len) = shape_for(tag);
    let ts = TIMESTAMP_BASE_MS + (tag % (1 << 32)) as i64;
    make_batch(tag, records, value_len, ts)
}
