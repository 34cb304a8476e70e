//! Property tests of the partition log: random sequences of appends, reads, timestamp
//! lookups, rolls, retention and reopens (clean, after a drop, and crash-like) with random
//! small configurations, checked step by step against a simple in-memory model.
//!
//! The model is a list of batches (stamped bytes, record timestamps) and of segment bases.
//! Where the log's behaviour legitimately depends on I/O timing, the model knows the
//! bounds and checks the log stays within them:
//! - A read served from disk stops at the end of its segment and at the start of the tail
//!   cache; a read served from the cache does not stop at segment ends. The cache start is
//!   known exactly once every append is durable (then the cache holds the longest suffix of
//!   the batches appended since open that fits its budget) and is bounded below otherwise.
//! - Retention deletes only closed segments: a rolled segment is closed for certain once a
//!   batch of a later segment is durable (its seal runs before that batch's write) or after
//!   a reopen; before that it may still be sealing.
//! - After a crash-like reopen the log holds a prefix of what was appended that includes
//!   everything acknowledged.
//!
//! Cases: `PROPTEST_CASES` (default 128 per test, two tests: about 20 s in release on two
//! cores). The logs live on the real disk, in temporary directories.
#![allow(missing_docs)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use bytes::{Bytes, BytesMut};
use common::{fake_clock_ms, set_fake_clock_ms, value_for, within};
use proptest::prelude::*;
use sluice_proto::{BatchBuilder, Compression, Limits, Offset, RecordBatch};
use sluice_storage::{BLOCK_BYTES, Durable, FlushPolicy, LogConfig, LogError, PartitionLog};

/// Largest batch the generated specs can produce (20 records of 3000 bytes, lz4/zstd
/// overhead on incompressible data included) is about 61 KiB.
const MAX_BATCH_BYTES: usize = 96 * 1024;
const RECORDS_MAX: usize = 20;
const VALUE_BYTES_MAX: usize = 3000;
const _: () = assert!(RECORDS_MAX * (VALUE_BYTES_MAX + 64) + 4096 < MAX_BATCH_BYTES);
/// Seconds one operation may take before the test calls it a hang.
const OP_TIMEOUT_S: u64 = 60;
const T0_MS: i64 = 1_700_000_000_000;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128)
}

// ---------------------------------------------------------------------------------------
// Generated inputs

#[derive(Debug, Clone)]
struct ConfigSpec {
    segment_bytes: u64,
    index_interval_bytes: u32,
    tail_cache_bytes: usize,
    write_chunk_blocks: usize,
    extra_chunks: usize,
    preallocate_bytes: u64,
    flush: FlushPolicy,
    retention_ms: Option<u64>,
    retention_bytes: Option<u64>,
}

impl ConfigSpec {
    fn config(&self) -> LogConfig {
        let chunk = self.write_chunk_blocks * BLOCK_BYTES;
        // A whole batch must fit in the chunks beside the filling one (see validate()).
        let chunks_max = MAX_BATCH_BYTES.div_ceil(chunk - BLOCK_BYTES) + 1 + self.extra_chunks;
        let config = LogConfig {
            segment_bytes: self.segment_bytes,
            segment_ms: None,
            retention_ms: self.retention_ms,
            retention_bytes: self.retention_bytes,
            flush: self.flush,
            max_batch_bytes: MAX_BATCH_BYTES,
            index_interval_bytes: self.index_interval_bytes,
            preallocate_bytes: self.preallocate_bytes,
            write_chunk_bytes: chunk,
            write_chunks_max: chunks_max,
            tail_cache_bytes: self.tail_cache_bytes,
            limits: Limits::DEFAULT,
            clock: fake_clock_ms,
            lock_wait_ms: 10_000,
            faults: None,
            compaction: None,
        };
        config.validate().expect("generated config is valid");
        config
    }
}

fn flush_strategy(every_batch: bool) -> BoxedStrategy<FlushPolicy> {
    if every_batch {
        Just(FlushPolicy::EveryBatch).boxed()
    } else {
        (prop::option::of(1u64..40), prop::option::of(1u64..30))
            .prop_map(|(messages, ms)| FlushPolicy::Interval { messages, ms })
            .boxed()
    }
}

fn config_strategy(every_batch: bool) -> impl Strategy<Value = ConfigSpec> {
    (
        16u64 * 1024..=256 * 1024,
        prop_oneof![1u32..4096, 32 * 1024u32..1 << 20],
        prop_oneof![Just(0usize), Just(1024), Just(64 * 1024), Just(64 << 20)],
        2usize..=16,
        0usize..3,
        prop_oneof![Just(4096u64), Just(64 * 1024), Just(1 << 20)],
        flush_strategy(every_batch),
        prop::option::of(5_000u64..120_000),
        prop::option::of(32 * 1024u64..1 << 20),
    )
        .prop_map(
            |(
                segment_bytes,
                index_interval_bytes,
                tail_cache_bytes,
                write_chunk_blocks,
                extra_chunks,
                preallocate_bytes,
                flush,
                retention_ms,
                retention_bytes,
            )| ConfigSpec {
                segment_bytes,
                index_interval_bytes,
                tail_cache_bytes,
                write_chunk_blocks,
                extra_chunks,
                preallocate_bytes,
                flush,
                retention_ms,
                retention_bytes,
            },
        )
}

#[derive(Debug, Clone)]
struct BatchSpec {
    /// (timestamp relative to the clock, value length) per record.
    records: Vec<(i32, usize)>,
    compression: Compression,
    /// Repetitive values (compress well) instead of pseudo-random ones.
    compressible: bool,
    /// The fake clock moves forward by this much before the append.
    clock_step_ms: u32,
}

fn batch_strategy() -> impl Strategy<Value = BatchSpec> {
    (
        prop::collection::vec(
            (
                -20_000i32..20_000,
                prop_oneof![3 => 0usize..200, 2 => 200usize..VALUE_BYTES_MAX],
            ),
            1..RECORDS_MAX,
        ),
        prop_oneof![
            6 => Just(Compression::None),
            1 => Just(Compression::Lz4),
            1 => Just(Compression::Zstd)
        ],
        any::<bool>(),
        0u32..2_000,
    )
        .prop_map(
            |(records, compression, compressible, clock_step_ms)| BatchSpec {
                records,
                compression,
                compressible,
                clock_step_ms,
            },
        )
}

/// An offset relative to the model's state, resolved when the operation runs.
#[derive(Debug, Clone, Copy)]
enum OffsetPick {
    /// `log_start - n` (saturating).
    BelowStart(u8),
    /// Somewhere in `[log_start, log_end]`, per mille.
    Within(u16),
    /// The base of a batch (index modulo the batch count).
    BatchBase(u16),
    /// The base of a segment (index modulo the segment count).
    SegmentBase(u8),
    /// `log_end + n`.
    AboveEnd(u8),
}

fn offset_strategy() -> impl Strategy<Value = OffsetPick> {
    prop_oneof![
        1 => (1u8..4).prop_map(OffsetPick::BelowStart),
        6 => (0u16..=1000).prop_map(OffsetPick::Within),
        3 => any::<u16>().prop_map(OffsetPick::BatchBase),
        2 => any::<u8>().prop_map(OffsetPick::SegmentBase),
        1 => (0u8..3).prop_map(OffsetPick::AboveEnd),
    ]
}

#[derive(Debug, Clone, Copy)]
enum TimestampPick {
    /// The timestamp of a stored record (index modulo the record count) plus a delta.
    Record(u16, i8),
    /// Relative to the clock.
    Clock(i32),
    Min,
    Max,
}

fn timestamp_strategy() -> impl Strategy<Value = TimestampPick> {
    prop_oneof![
        6 => (any::<u16>(), -2i8..3).prop_map(|(i, d)| TimestampPick::Record(i, d)),
        3 => (-200_000i32..30_000).prop_map(TimestampPick::Clock),
        1 => Just(TimestampPick::Min),
        1 => Just(TimestampPick::Max),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reopen {
    /// `close()`, then open again.
    Clean,
    /// Drop without `close()`, await every pending acknowledgement (the dropped log's
    /// flusher still writes and syncs), then open again: everything appended survives.
    DropFlushed,
    /// Drop without `close()` and tear the runtime down at once, cancelling the flusher
    /// mid-I/O: what was acknowledged survives, the rest may be cut at a batch boundary.
    Crash,
}

#[derive(Debug, Clone)]
enum Op {
    Append(BatchSpec),
    AwaitDurable,
    Read {
        from: OffsetPick,
        end: Option<OffsetPick>,
        max_bytes: MaxBytes,
    },
    OffsetForTimestamp(TimestampPick),
    Roll,
    Retention(RetentionAt),
    Reopen(Reopen),
}

/// A read's byte budget.
#[derive(Debug, Clone, Copy)]
enum MaxBytes {
    Fixed(usize),
    /// The bytes of the first `batches` batches from the read's start, plus `delta`: the
    /// edges of the "later batches only while the total fits" rule.
    Fit {
        batches: u8,
        delta: i8,
    },
}

fn max_bytes_strategy() -> impl Strategy<Value = MaxBytes> {
    prop_oneof![
        1 => Just(MaxBytes::Fixed(0)),
        1 => Just(MaxBytes::Fixed(1)),
        2 => (61usize..5_000).prop_map(MaxBytes::Fixed),
        2 => (5_000usize..200_000).prop_map(MaxBytes::Fixed),
        1 => Just(MaxBytes::Fixed(1 << 20)),
        3 => (1u8..6, -1i8..=1).prop_map(|(batches, delta)| MaxBytes::Fit { batches, delta }),
    ]
}

/// The wall time retention runs at.
#[derive(Debug, Clone, Copy)]
enum RetentionAt {
    /// The fake clock moves forward by this much.
    Advance(u32),
    /// Exactly where segment `i` (modulo the count) expires under `retention.ms`, plus
    /// `delta` (the clock itself does not move back).
    Edge(u8, i8),
}

fn retention_strategy() -> impl Strategy<Value = RetentionAt> {
    prop_oneof![
        1 => Just(RetentionAt::Advance(0)),
        2 => (0u32..60_000).prop_map(RetentionAt::Advance),
        2 => (any::<u8>(), -1i8..=1).prop_map(|(i, d)| RetentionAt::Edge(i, d)),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => batch_strategy().prop_map(Op::Append),
        3 => Just(Op::AwaitDurable),
        7 => (
            offset_strategy(),
            prop::option::weighted(0.25, offset_strategy()),
            max_bytes_strategy()
        )
            .prop_map(|(from, end, max_bytes)| Op::Read {
                from,
                end,
                max_bytes
            }),
        2 => timestamp_strategy().prop_map(Op::OffsetForTimestamp),
        1 => Just(Op::Roll),
        2 => retention_strategy().prop_map(Op::Retention),
        1 => prop_oneof![
            Just(Reopen::Clean),
            Just(Reopen::DropFlushed),
            Just(Reopen::Crash)
        ]
        .prop_map(Op::Reopen),
    ]
}

// ---------------------------------------------------------------------------------------
// The model

#[derive(Debug, Clone)]
struct MBatch {
    base: u64,
    next: u64,
    /// The bytes as the log must return them (base offset stamped).
    bytes: Bytes,
    timestamps: Vec<i64>,
    max_timestamp: i64,
}

#[derive(Debug, Clone)]
struct MSegment {
    base: u64,
    /// Certainly closed (not still sealing): retention may delete it.
    closed: bool,
}

#[derive(Debug)]
struct Model {
    /// Batches from `log_start` on.
    batches: Vec<MBatch>,
    /// Segments oldest first; the last is the active one.
    segments: Vec<MSegment>,
    log_end: u64,
    /// Every offset below this was acknowledged (its `durable` resolved).
    acked_end: u64,
    /// Batches appended since open that may still be in the tail cache: (base, len).
    cache: Vec<(u64, usize)>,
    cache_budget: usize,
    /// Lower bound of the cache's first offset; exact when `settled`.
    cache_start: u64,
    /// Every appended batch is written (all `durable`s awaited since the last append).
    settled: bool,
    segment_bytes: u64,
    retention_ms: Option<u64>,
    retention_bytes: Option<u64>,
    /// Batches appended ever (tags the content).
    appended: u64,
}

impl Model {
    fn new(config: &LogConfig) -> Self {
        Self {
            batches: Vec::new(),
            segments: vec![MSegment {
                base: 0,
                closed: false,
            }],
            log_end: 0,
            acked_end: 0,
            cache: Vec::new(),
            cache_budget: config.tail_cache_bytes,
            cache_start: 0,
            settled: true,
            segment_bytes: config.segment_bytes,
            retention_ms: config.retention_ms,
            retention_bytes: config.retention_bytes,
            appended: 0,
        }
    }

    fn log_start(&self) -> u64 {
        self.segments[0].base
    }

    /// End offset of segment `i` (the next segment's base, or the log end).
    fn segment_end(&self, i: usize) -> u64 {
        self.segments.get(i + 1).map_or(self.log_end, |s| s.base)
    }

    /// Index range into `batches` of segment `i`.
    fn segment_batches(&self, i: usize) -> std::ops::Range<usize> {
        let base = self.segments[i].base;
        let end = self.segment_end(i);
        let lo = self.batches.partition_point(|b| b.base < base);
        let hi = self.batches.partition_point(|b| b.base < end);
        lo..hi
    }

    fn segment_bytes_of(&self, i: usize) -> u64 {
        self.batches[self.segment_batches(i)]
            .iter()
            .map(|b| b.bytes.len() as u64)
            .sum()
    }

    fn segment_max_timestamp(&self, i: usize) -> i64 {
        self.batches[self.segment_batches(i)]
            .iter()
            .map(|b| b.max_timestamp)
            .max()
            .unwrap_or(i64::MIN)
    }

    fn total_bytes(&self) -> u64 {
        self.batches.iter().map(|b| b.bytes.len() as u64).sum()
    }

    fn segment_of(&self, offset: u64) -> usize {
        self.segments.partition_point(|s| s.base <= offset) - 1
    }

    /// Index of the batch holding `offset` (or the first after it).
    fn batch_at(&self, offset: u64) -> usize {
        self.batches.partition_point(|b| b.next <= offset)
    }

    fn batch_boundaries(&self) -> BTreeSet<u64> {
        let mut set: BTreeSet<u64> = self.batches.iter().map(|b| b.base).collect();
        set.insert(self.log_end);
        set.insert(self.log_start());
        set
    }

    /// Builds the next batch from `spec`; returns its unstamped bytes and timestamps.
    fn build(&mut self, spec: &BatchSpec, now_ms: i64) -> (BytesMut, Vec<i64>) {
        let tag = self.appended;
        self.appended += 1;
        let mut builder = BatchBuilder::new(spec.compression, Limits::DEFAULT);
        let mut timestamps = Vec::new();
        for (i, &(jitter, len)) in spec.records.iter().enumerate() {
            let ts = now_ms + i64::from(jitter);
            let value = if spec.compressible {
                vec![(tag as u8).wrapping_add(i as u8); len]
            } else {
                value_for(tag, i, len)
            };
            let key = format!("k{tag}-{i}");
            builder
                .push(ts, Some(key.as_bytes()), Some(&value), &[])
                .expect("within limits");
            timestamps.push(ts);
        }
        let bytes = builder.build().expect("non-empty");
        assert!(bytes.len() <= MAX_BATCH_BYTES, "spec bounds are wrong");
        (bytes, timestamps)
    }

    /// Records an append the log accepted.
    fn append(&mut self, unstamped: &BytesMut, timestamps: Vec<i64>) {
        let len = unstamped.len() as u64;
        let active = self.segments.len() - 1;
        let active_bytes = self.segment_bytes_of(active);
        if active_bytes > 0 && active_bytes + len > self.segment_bytes {
            self.segments.push(MSegment {
                base: self.log_end,
                closed: false,
            });
        }
        let mut stamped = unstamped.clone();
        sluice_proto::stamp_base_offset(&mut stamped, Offset(self.log_end));
        let base = self.log_end;
        let next = base + timestamps.len() as u64;
        let max_timestamp = *timestamps.iter().max().expect("non-empty");
        self.batches.push(MBatch {
            base,
            next,
            bytes: stamped.freeze(),
            timestamps,
            max_timestamp,
        });
        self.cache.push((base, len as usize));
        self.log_end = next;
        self.settled = false;
    }

    fn roll(&mut self) {
        let active = self.segments.len() - 1;
        if self.segment_bytes_of(active) > 0 {
            self.segments.push(MSegment {
                base: self.log_end,
                closed: false,
            });
        }
    }

    /// Every appended batch is acknowledged: written, and durable by policy.
    fn all_acknowledged(&mut self) {
        self.acked_end = self.log_end;
        // The cache evicted written batches oldest first while over budget: it holds the
        // longest suffix of the batches appended since open that fits the budget.
        let mut bytes = 0usize;
        let mut keep = self.cache.len();
        while keep > 0 && bytes + self.cache[keep - 1].1 <= self.cache_budget {
            bytes += self.cache[keep - 1].1;
            keep -= 1;
        }
        self.cache.drain(..keep);
        self.cache_start = self.cache.first().map_or(self.log_end, |c| c.0);
        self.settled = true;
        // A batch of segment j is written only after the seals of all segments before j.
        if let Some(last) = self.batches.last() {
            let j = self.segment_of(last.base);
            for s in &mut self.segments[..j] {
                s.closed = true;
            }
        }
    }

    /// The batches a read must return if it stops at `stop` (exclusive batch base) or the
    /// byte budget, whichever comes first.
    fn greedy(&self, from: u64, end: u64, max_bytes: usize, stop: u64) -> Vec<usize> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for i in self.batch_at(from)..self.batches.len() {
            let b = &self.batches[i];
            if b.base >= end || b.base >= stop {
                break;
            }
            let len = b.bytes.len();
            if !out.is_empty() && bytes + len > max_bytes {
                break;
            }
            bytes += len;
            out.push(i);
        }
        out
    }

    /// The answer of `offset_for_timestamp`: the first offset >= log_start whose record
    /// timestamp is >= `ts`.
    fn offset_for_timestamp(&self, ts: i64) -> Option<u64> {
        for b in &self.batches {
            if b.max_timestamp < ts {
                continue;
            }
            for (i, &t) in b.timestamps.iter().enumerate() {
                if t >= ts {
                    return Some(b.base + i as u64);
                }
            }
        }
        None
    }

    /// Cuts the model at `end` (a batch boundary) and drops trailing segments left without
    /// batches, as recovery does.
    fn truncate(&mut self, end: u64) {
        assert!(
            self.batch_boundaries().contains(&end),
            "log end {end} after reopen is not a batch boundary of the model"
        );
        self.batches.retain(|b| b.next <= end);
        self.log_end = end;
        self.segments.retain(|s| s.base <= end);
        while self.segments.len() > 1 && self.segment_bytes_of(self.segments.len() - 1) == 0 {
            self.segments.pop();
        }
    }

    /// State after open: every segment but the last is closed; the cache is empty.
    fn reopened(&mut self) {
        while self.segments.len() > 1 && self.segment_bytes_of(self.segments.len() - 1) == 0 {
            self.segments.pop();
        }
        let last = self.segments.len() - 1;
        for s in &mut self.segments[..last] {
            s.closed = true;
        }
        self.segments[last].closed = false;
        self.acked_end = self.log_end;
        self.cache.clear();
        self.cache_start = self.log_end;
        self.settled = true;
    }

    fn resolve(&self, pick: OffsetPick) -> u64 {
        let (start, end) = (self.log_start(), self.log_end);
        match pick {
            OffsetPick::BelowStart(n) => start.saturating_sub(u64::from(n)),
            OffsetPick::Within(per_mille) => start + (end - start) * u64::from(per_mille) / 1000,
            OffsetPick::BatchBase(i) => {
                if self.batches.is_empty() {
                    start
                } else {
                    self.batches[usize::from(i) % self.batches.len()].base
                }
            }
            OffsetPick::SegmentBase(i) => self.segments[usize::from(i) % self.segments.len()].base,
            OffsetPick::AboveEnd(n) => end + u64::from(n),
        }
    }

    fn resolve_max_bytes(&self, from: u64, pick: MaxBytes) -> usize {
        match pick {
            MaxBytes::Fixed(n) => n,
            MaxBytes::Fit { batches, delta } => {
                let first = self.batch_at(from);
                let fit: usize = self.batches[first.min(self.batches.len())..]
                    .iter()
                    .take(usize::from(batches))
                    .map(|b| b.bytes.len())
                    .sum();
                fit.saturating_add_signed(isize::from(delta))
            }
        }
    }

    fn resolve_timestamp(&self, pick: TimestampPick) -> i64 {
        match pick {
            TimestampPick::Record(i, delta) => {
                let all: Vec<i64> = self
                    .batches
                    .iter()
                    .flat_map(|b| b.timestamps.iter().copied())
                    .collect();
                if all.is_empty() {
                    fake_clock_ms()
                } else {
                    all[usize::from(i) % all.len()] + i64::from(delta)
                }
            }
            TimestampPick::Clock(d) => fake_clock_ms() + i64::from(d),
            TimestampPick::Min => i64::MIN,
            TimestampPick::Max => i64::MAX,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Checks

fn segment_files(dir: &Path) -> Vec<u64> {
    let mut bases: Vec<u64> = std::fs::read_dir(dir)
        .expect("list log dir")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .into_string()
                .expect("utf-8")
        })
        .filter_map(|name| name.strip_suffix(".log").and_then(|s| s.parse().ok()))
        .collect();
    bases.sort_unstable();
    bases
}

/// Offsets, segments, sizes and files agree with the model.
fn check_shape(log: &PartitionLog, model: &Model, files: bool) {
    let offsets = log.offsets();
    assert_eq!(offsets.log_start, Offset(model.log_start()), "log_start");
    assert_eq!(offsets.log_end, Offset(model.log_end), "log_end");
    assert!(
        offsets.durable_end >= Offset(model.acked_end) && offsets.durable_end <= offsets.log_end,
        "durable_end {} outside [acked {}, log_end {}]",
        offsets.durable_end,
        model.acked_end,
        model.log_end
    );
    let bases: Vec<u64> = model.segments.iter().map(|s| s.base).collect();
    let real: Vec<u64> = log.segment_bases().iter().map(|o| o.get()).collect();
    assert_eq!(real, bases, "segment bases");
    let stats = log.stats();
    assert_eq!(stats.segments, model.segments.len(), "segment count");
    assert_eq!(stats.bytes, model.total_bytes(), "log bytes");
    if files {
        assert_eq!(segment_files(log.dir()), bases, "segment files on disk");
    }
}

fn check_batches(got: &[RecordBatch], model: &Model, want: &[usize], what: &str) {
    let got_bases: Vec<u64> = got.iter().map(|b| b.base_offset().get()).collect();
    let want_bases: Vec<u64> = want.iter().map(|&i| model.batches[i].base).collect();
    assert_eq!(got_bases, want_bases, "{what}: batch bases");
    for (b, &i) in got.iter().zip(want) {
        assert!(
            b.as_bytes() == &model.batches[i].bytes,
            "{what}: bytes of batch {} differ",
            model.batches[i].base
        );
    }
}

async fn check_read(
    log: &PartitionLog,
    model: &Model,
    from: u64,
    end: Option<u64>,
    max_bytes: usize,
) {
    let result = within(OP_TIMEOUT_S, "read", async {
        match end {
            Some(end) => log.read_until(Offset(from), Offset(end), max_bytes).await,
            None => log.read(Offset(from), max_bytes).await,
        }
    })
    .await;
    let what = format!("read(from {from}, end {end:?}, max {max_bytes})");
    if from < model.log_start() || from > model.log_end {
        match result {
            Err(LogError::OffsetOutOfRange {
                requested,
                log_start,
                log_end,
            }) => {
                assert_eq!(requested, Offset(from), "{what}");
                assert_eq!(log_start, Offset(model.log_start()), "{what}");
                assert_eq!(log_end, Offset(model.log_end), "{what}");
            }
            other => panic!("{what}: expected OffsetOutOfRange, got {other:?}"),
        }
        return;
    }
    let got = match result {
        Ok(got) => got,
        Err(e) => panic!("{what}: {e}"),
    };
    let end = end.unwrap_or(u64::MAX);
    if from == model.log_end {
        assert!(got.is_empty(), "{what}: batches at the log end");
        return;
    }
    let segment_end = model.segment_end(model.segment_of(from));
    let from_cache = model.greedy(from, end, max_bytes, u64::MAX);
    let from_disk =
        |cache_start: u64| model.greedy(from, end, max_bytes, segment_end.min(cache_start));
    let want = if model.settled {
        if from >= model.cache_start {
            from_cache
        } else {
            from_disk(model.cache_start)
        }
    } else {
        // The cache starts somewhere in [cache_start, log_end]: accept a cache read (if it
        // may cover `from`) or a disk read stopping at a possible cache start.
        let got_end = got.last().map_or(from, |b| b.next_offset().get());
        let mut candidates = vec![from_disk(u64::MAX)];
        if from >= model.cache_start {
            candidates.push(from_cache);
        }
        if got_end > from && got_end >= model.cache_start {
            candidates.push(from_disk(got_end));
        }
        let got_bases: Vec<u64> = got.iter().map(|b| b.base_offset().get()).collect();
        candidates
            .into_iter()
            .find(|c| {
                c.iter()
                    .map(|&i| model.batches[i].base)
                    .eq(got_bases.iter().copied())
            })
            .unwrap_or_else(|| {
                panic!(
                    "{what}: got batches {got_bases:?}, not a read the model allows \
                     (cache start >= {}, segment end {segment_end})",
                    model.cache_start
                )
            })
    };
    check_batches(&got, model, &want, &what);
}

/// Reads the whole log back, in steps, and compares every byte.
async fn check_all(log: &PartitionLog, model: &Model) {
    let mut from = model.log_start();
    let mut seen = 0usize;
    while from < model.log_end {
        let got = within(
            OP_TIMEOUT_S,
            "full read",
            log.read(Offset(from), 256 * 1024),
        )
        .await
        .expect("full read");
        assert!(!got.is_empty(), "no batches at {from} below the log end");
        let first = model.batch_at(from);
        let want: Vec<usize> = (first..first + got.len()).collect();
        assert!(want.last().is_some_and(|&i| i < model.batches.len()));
        check_batches(&got, model, &want, "full read");
        seen += got.len();
        from = got.last().expect("non-empty").next_offset().get();
    }
    assert_eq!(seen, model.batches.len());
}

// ---------------------------------------------------------------------------------------
// The runner

enum EpochEnd {
    Finished,
    Reopened,
    Crashed,
}

fn run_case(spec: &ConfigSpec, ops: &[Op]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = spec.config();
    let mut model = Model::new(&config);
    set_fake_clock_ms(T0_MS);
    let mut next_op = 0usize;
    loop {
        let runtime = compio::runtime::Runtime::new().expect("io_uring runtime");
        let end = runtime.block_on(run_epoch(
            dir.path(),
            &config,
            &mut model,
            ops,
            &mut next_op,
        ));
        match end {
            EpochEnd::Finished => break,
            EpochEnd::Reopened => continue,
            // Like a killed process, the crashed epoch's files close when its runtime goes,
            // and its segment locks are released once its last write has landed: the next
            // open waits for that (see `freeze_until_io_lands`).
            EpochEnd::Crashed => drop(runtime),
        }
    }
}

async fn run_epoch(
    dir: &Path,
    config: &LogConfig,
    model: &mut Model,
    ops: &[Op],
    next_op: &mut usize,
) -> EpochEnd {
    let log = within(
        OP_TIMEOUT_S,
        "open",
        PartitionLog::open(dir, config.clone()),
    )
    .await
    .expect("open");
    // What a crash-like reopen kept: a prefix holding everything acknowledged.
    let log_end = log.offsets().log_end.get();
    assert!(
        log_end >= model.acked_end && log_end <= model.log_end,
        "reopened log ends at {log_end}, outside [acknowledged {}, appended {}]",
        model.acked_end,
        model.log_end
    );
    model.truncate(log_end);
    model.reopened();
    check_shape(&log, model, true);
    check_all(&log, model).await;
    let mut pending: Vec<Durable> = Vec::new();
    while let Some(op) = ops.get(*next_op) {
        *next_op += 1;
        match op {
            Op::Append(spec) => {
                set_fake_clock_ms(fake_clock_ms() + i64::from(spec.clock_step_ms));
                let (bytes, timestamps) = model.build(spec, fake_clock_ms());
                let records = timestamps.len() as u64;
                let appended = within(OP_TIMEOUT_S, "append", log.append(bytes.clone()))
                    .await
                    .expect("append");
                assert_eq!(
                    appended.base_offset,
                    Offset(model.log_end),
                    "offsets contiguous"
                );
                assert_eq!(appended.last_offset, Offset(model.log_end + records - 1));
                model.append(&bytes, timestamps);
                pending.push(appended.durable);
                check_shape(&log, model, false);
            }
            Op::AwaitDurable => {
                for durable in pending.drain(..) {
                    within(OP_TIMEOUT_S, "durable", durable)
                        .await
                        .expect("acknowledged");
                }
                model.all_acknowledged();
                assert_eq!(log.offsets().durable_end, Offset(model.log_end));
                check_shape(&log, model, false);
            }
            Op::Read {
                from,
                end,
                max_bytes,
            } => {
                let from = model.resolve(*from);
                let end = end.map(|e| model.resolve(e));
                let max_bytes = model.resolve_max_bytes(from, *max_bytes);
                check_read(&log, model, from, end, max_bytes).await;
            }
            Op::OffsetForTimestamp(pick) => {
                let ts = model.resolve_timestamp(*pick);
                let got = within(
                    OP_TIMEOUT_S,
                    "offset_for_timestamp",
                    log.offset_for_timestamp(ts),
                )
                .await
                .expect("offset_for_timestamp");
                assert_eq!(
                    got.map(Offset::get),
                    model.offset_for_timestamp(ts),
                    "offset_for_timestamp({ts})"
                );
            }
            Op::Roll => {
                within(OP_TIMEOUT_S, "roll", log.roll_now())
                    .await
                    .expect("roll");
                model.roll();
                check_shape(&log, model, true);
            }
            Op::Retention(at) => {
                let now = match *at {
                    RetentionAt::Advance(ms) => {
                        set_fake_clock_ms(fake_clock_ms() + i64::from(ms));
                        fake_clock_ms()
                    }
                    RetentionAt::Edge(i, delta) => {
                        let i = usize::from(i) % model.segments.len();
                        // Expired when max_timestamp < now - retention.ms.
                        let ms = model.retention_ms.unwrap_or(0) as i64;
                        model
                            .segment_max_timestamp(i)
                            .saturating_add(ms)
                            .saturating_add(1 + i64::from(delta))
                    }
                };
                let start = within(OP_TIMEOUT_S, "retention", log.enforce_retention(now))
                    .await
                    .expect("retention")
                    .get();
                apply_retention(model, now, start);
                check_shape(&log, model, true);
            }
            Op::Reopen(kind) => {
                match kind {
                    Reopen::Clean => {
                        within(OP_TIMEOUT_S, "close", log.close())
                            .await
                            .expect("close");
                        // close() acknowledges what was pending.
                        for durable in pending.drain(..) {
                            within(OP_TIMEOUT_S, "durable after close", durable)
                                .await
                                .expect("acknowledged by close");
                        }
                        model.all_acknowledged();
                    }
                    Reopen::DropFlushed => {
                        drop(log);
                        for durable in pending.drain(..) {
                            within(OP_TIMEOUT_S, "durable after drop", durable)
                                .await
                                .expect("acknowledged after drop");
                        }
                        model.all_acknowledged();
                        // The flusher may still be sealing: the teardown below cuts it.
                        freeze_until_io_lands();
                    }
                    Reopen::Crash => {
                        drop(pending);
                        freeze_until_io_lands();
                        drop(log);
                        // The flusher is never polled again: the runtime is dropped.
                        return EpochEnd::Crashed;
                    }
                }
                return EpochEnd::Reopened;
            }
        }
    }
    within(OP_TIMEOUT_S, "final close", log.close())
        .await
        .expect("close");
    for durable in pending.drain(..) {
        durable.await.expect("acknowledged by close");
    }
    model.all_acknowledged();
    EpochEnd::Finished
}

/// Blocks the runtime's thread, so no task runs (a frozen or killed process), while the
/// I/O already submitted completes in the kernel. Tearing the runtime down with I/O in
/// flight would not be a crash: compio frees the buffers of unfinished operations when the
/// ring is dropped, and a write still queued in the kernel could then carry reused memory
/// to disk, over acknowledged bytes of the block it rewrites (seen as a lost acknowledged
/// batch after the next open), or a truncation could land after the next open. A killed
/// process has no such late effects, and its successor takes far longer to start than
/// this. Each segment file is `flock`ed by the log that opens it, and an in-flight io_uring
/// request keeps its file (and so the lock) alive: a reopen waits for the crashed epoch's
/// last write instead of racing it.
fn freeze_until_io_lands() {
    std::thread::sleep(std::time::Duration::from_millis(50));
}

/// Checks the log start retention chose against the model's rule and applies it.
fn apply_retention(model: &mut Model, now: i64, real_start: u64) {
    let mut total = model.total_bytes();
    let mut doomed = 0usize;
    let mut first_unsure = None;
    for i in 0..model.segments.len() - 1 {
        let bytes = model.segment_bytes_of(i);
        let expired = model
            .retention_ms
            .is_some_and(|ms| model.segment_max_timestamp(i) < now.saturating_sub(ms as i64));
        let oversize = model
            .retention_bytes
            .is_some_and(|limit| total.saturating_sub(bytes) >= limit);
        if !(expired || oversize) {
            break;
        }
        if !model.segments[i].closed && first_unsure.is_none() {
            first_unsure = Some(i);
        }
        total -= bytes;
        doomed += 1;
    }
    let least = first_unsure.map_or(doomed, |u| u.min(doomed));
    let Some(deleted) = model.segments.iter().position(|s| s.base == real_start) else {
        panic!("retention moved log_start to {real_start}, not a segment base");
    };
    assert!(
        (least..=doomed).contains(&deleted),
        "retention at {now} deleted {deleted} segments; the rule allows {least}..={doomed}"
    );
    model.segments.drain(..deleted);
    let start = model.log_start();
    model.batches.retain(|b| b.base >= start);
}

fn proptest_config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        max_shrink_iters: 256,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(proptest_config())]

    #[test]
    fn log_matches_model_every_batch(
        spec in config_strategy(true),
        ops in prop::collection::vec(op_strategy(), 1..120),
    ) {
        run_case(&spec, &ops);
    }

    #[test]
    fn log_matches_model_interval_flush(
        spec in config_strategy(false),
        ops in prop::collection::vec(op_strategy(), 1..120),
    ) {
        run_case(&spec, &ops);
    }
}
