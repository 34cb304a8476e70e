//! Read-ahead of a reader catching up from the disk (no tail cache, so every read is a disk
//! read): a sequential reader is served from bytes read in advance and gets exactly what
//! was appended, across segments; readers at two places get no read-ahead; a truncation
//! and re-append at the same positions never serves the old bytes; the shard's read-ahead
//! bytes stay within their limit and are given back when the log closes.
#![allow(missing_docs)]

mod common;

use common::{check_batch, make_batch, run, within};
use sluice_storage::{LogConfig, Offset, PartitionLog, READ_AHEAD_BYTES_PER_SHARD};

/// One record of 3000 bytes per batch: the batch at offset N is `make_batch(N, ..)`.
const VALUE_BYTES: usize = 3_000;
const READ_BYTES: usize = 32 * 1024;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 512 * 1024,
        index_interval_bytes: 4096,
        tail_cache_bytes: 0,
        ..LogConfig::default()
    }
}

async fn append_tagged(log: &PartitionLog, tags: std::ops::Range<u64>) {
    for tag in tags {
        let appended = within(
            30,
            "append",
            log.append(make_batch(tag, 1, VALUE_BYTES, 1_000)),
        )
        .await
        .expect("append");
        within(30, "durable", appended.durable)
            .await
            .expect("durable");
    }
}

/// Reads from `from` with `READ_BYTES`, checks each batch is the one tagged `tag_of(offset)`,
/// and returns the next offset.
async fn read_checked(log: &PartitionLog, from: Offset, tag_of: impl Fn(u64) -> u64) -> Offset {
    let batches = within(30, "read", log.read(from, READ_BYTES))
        .await
        .expect("read");
    assert!(!batches.is_empty(), "nothing at {from}");
    assert_eq!(batches[0].base_offset(), from);
    for b in &batches {
        check_batch(b, tag_of(b.base_offset().get()), b.base_offset());
    }
    batches.last().expect("a batch").next_offset()
}

#[test]
fn a_sequential_reader_is_served_from_bytes_read_ahead() {
    let dir = tempfile::tempdir().expect("tempdir");
    run(async {
        let log = PartitionLog::open(dir.path(), config())
            .await
            .expect("open");
        append_tagged(&log, 0..600).await;
        assert!(log.stats().segments >= 3, "{:?}", log.stats());
        let budget = log.tail_cache_budget();
        let mut at = Offset::ZERO;
        let mut reads = 0;
        while at < log.offsets().log_end {
            at = read_checked(&log, at, |o| o).await;
            reads += 1;
            assert!(budget.read_ahead_bytes() <= READ_AHEAD_BYTES_PER_SHARD);
        }
        let io = log.io_stats();
        assert_eq!(io.cache_hits, 0, "no tail cache");
        assert_eq!(io.cache_misses, reads);
        // The first read of the log and of each segment is not read ahead; the others are.
        let segments = log.stats().segments as u64;
        assert!(
            io.read_ahead_hits >= reads - 2 * segments,
            "{} of {reads} reads read ahead",
            io.read_ahead_hits
        );
        log.close().await.expect("close");
        assert_eq!(budget.read_ahead_bytes(), 0, "given back at close");
    });
}

#[test]
fn readers_at_two_places_get_no_read_ahead() {
    let dir = tempfile::tempdir().expect("tempdir");
    run(async {
        let log = PartitionLog::open(dir.path(), config())
            .await
            .expect("open");
        append_tagged(&log, 0..300).await;
        let (mut a, mut b) = (Offset::ZERO, Offset(150));
        for _ in 0..10 {
            a = read_checked(&log, a, |o| o).await;
            b = read_checked(&log, b, |o| o).await;
        }
        assert_eq!(log.io_stats().read_ahead_hits, 0);
        assert_eq!(log.tail_cache_budget().read_ahead_bytes(), 0);
        log.close().await.expect("close");
    });
}

/// A reader has read ahead past offset 40; the log is truncated to 30 and batches of other
/// contents but the same sizes are appended, so they sit at the same file positions. The
/// reader's next read returns the new batches, never the bytes read before the truncation.
#[test]
fn a_truncation_drops_the_bytes_read_ahead() {
    let dir = tempfile::tempdir().expect("tempdir");
    run(async {
        let log = PartitionLog::open(dir.path(), config())
            .await
            .expect("open");
        append_tagged(&log, 0..100).await;
        let mut at = Offset::ZERO;
        while at.get() < 30 {
            at = read_checked(&log, at, |o| o).await;
        }
        // Two sequential reads done: the read of what follows is started.
        assert!(log.io_stats().read_ahead_hits >= 1);
        assert!(log.tail_cache_budget().read_ahead_bytes() > 0);
        let cut = Offset(at.get() - 5);
        assert_eq!(log.truncate_to(cut).await.expect("truncate"), cut);
        assert_eq!(log.tail_cache_budget().read_ahead_bytes(), 0);
        append_tagged(&log, 1_000 + cut.get()..1_100).await;
        let new_tag = |o: u64| if o < cut.get() { o } else { 1_000 + o };
        while at < log.offsets().log_end {
            at = read_checked(&log, at, new_tag).await;
        }
        assert_eq!(at, Offset(100));
        log.close().await.expect("close");
    });
}
