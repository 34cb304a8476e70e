//! Behaviour tests of the partition log on the real disk: group commit, fatal write and
//! fdatasync failures, segment rolling, retention, the interval flush policy, rejected
//! batches, backpressure with tiny write buffers, and cache versus disk reads.
//!
//! Every wait that could hang on a bug is bounded with [`within`], so a deadlock fails the
//! test. No assertion depends on timing: fdatasyncs are counted with the fault injector
//! (a sync failing at the N-th attempt stops the log, so "not stopped" proves fewer syncs).
#![allow(missing_docs)]

mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use common::{check_batch, fake_clock_ms, make_batch, read_all, run, set_fake_clock_ms, within};
use sluice_proto::{BatchBuilder, Compression, DecodeError, Limits, Offset};
use sluice_storage::{BLOCK_BYTES, FaultInjector, FlushPolicy, LogConfig, LogError, PartitionLog};

fn segment_files(log: &PartitionLog) -> Vec<u64> {
    let mut bases: Vec<u64> = std::fs::read_dir(log.dir())
        .expect("list log dir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .filter_map(|n| n.strip_suffix(".log").and_then(|s| s.parse().ok()))
        .collect();
    bases.sort_unstable();
    bases
}

fn bases(log: &PartitionLog) -> Vec<u64> {
    log.segment_bases().iter().map(|o| o.get()).collect()
}

/// A batch of one record with `value_len` bytes of value, at timestamp `ts`.
fn one_record(tag: u64, value_len: usize, ts: i64) -> BytesMut {
    make_batch(tag, 1, value_len, ts)
}

/// Appends and waits for the acknowledgement; returns the base offset.
async fn append_acked(log: &PartitionLog, batch: BytesMut) -> Offset {
    let appended = within(30, "append", log.append(batch))
        .await
        .expect("append");
    within(30, "durable", appended.durable)
        .await
        .expect("durable");
    appended.base_offset
}

fn is_stopped<T>(result: &Result<T, LogError>) -> bool {
    matches!(result, Err(LogError::Stopped { .. }))
}

// ---------------------------------------------------------------------------------------
// (a) Group commit

/// 16 tasks append 64 KiB batches under `EveryBatch`, each waiting for its acknowledgement
/// before the next. Every batch is acknowledged and readable, and the log needed far fewer
/// fdatasyncs than batches: the fault injector fails the `SYNCS_MAX`-th one, which would
/// have stopped the log.
#[test]
fn group_commit_acknowledges_every_batch_with_few_fdatasyncs() {
    const TASKS: u64 = 16;
    const BATCHES_PER_TASK: u64 = 16;
    const BATCHES: u64 = TASKS * BATCHES_PER_TASK;
    // One fdatasync per batch would be 256; group commit needs about one per round of 16.
    const SYNCS_MAX: u32 = (BATCHES / 4) as u32;
    let dir = tempfile::tempdir().expect("tempdir");
    let faults = Arc::new(FaultInjector::default());
    faults.fail_sync_after(SYNCS_MAX);
    let config = LogConfig {
        flush: FlushPolicy::EveryBatch,
        faults: Some(faults.clone()),
        ..LogConfig::default()
    };
    run(async {
        let log = Rc::new(PartitionLog::open(dir.path(), config).await.expect("open"));
        let mut tasks = Vec::new();
        for task in 0..TASKS {
            let log = log.clone();
            tasks.push(compio::runtime::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..BATCHES_PER_TASK {
                    let tag = task * 1000 + i;
                    let appended = log
                        .append(make_batch(tag, 1, 64 * 1024 - 200, 1_000))
                        .await
                        .expect("append: the log must not have stopped");
                    appended
                        .durable
                        .await
                        .expect("acknowledged: fewer than SYNCS_MAX fdatasyncs");
                    acked.push((tag, appended.base_offset));
                }
                acked
            }));
        }
        let mut acked = Vec::new();
        for task in tasks {
            acked.extend(within(120, "appending task", task).await.expect("task"));
        }
        assert_eq!(acked.len() as u64, BATCHES);
        assert_eq!(log.offsets().log_end, Offset(BATCHES));
        assert_eq!(log.offsets().durable_end, Offset(BATCHES));
        for (tag, base) in acked {
            let got = log.read(base, 1).await.expect("read");
            check_batch(&got[0], tag, base);
        }
        // The injector is armed still: one more fdatasync than SYNCS_MAX - 1 fails. Disarm
        // it so close() can sync.
        faults.fail_sync_after(0);
        Rc::into_inner(log)
            .expect("tasks done")
            .close()
            .await
            .expect("close");
    });
}

/// The counting itself works: with the same load, failing an early fdatasync stops the log.
#[test]
fn group_commit_sync_counter_fires_when_few_syncs_are_allowed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let faults = Arc::new(FaultInjector::default());
    faults.fail_sync_after(2);
    let config = LogConfig {
        faults: Some(faults),
        ..LogConfig::default()
    };
    run(async {
        let log = PartitionLog::open(dir.path(), config).await.expect("open");
        let mut stopped = false;
        for tag in 0..8 {
            match log.append(make_batch(tag, 1, 60_000, 1_000)).await {
                Ok(a) => {
                    if is_stopped(&within(30, "durable", a.durable).await) {
                        stopped = true;
                        break;
                    }
                }
                Err(e) => panic!("append before the failure was seen: {e}"),
            }
        }
        assert!(stopped, "the second fdatasync should have failed");
    });
}

// ---------------------------------------------------------------------------------------
// (b) Fatal write and fdatasync failures

#[derive(Debug)]
enum Outcome {
    Acked,
    Failed,
}

struct FailureRun {
    /// (tag, base offset, outcome) of every append the log accepted.
    appends: Vec<(u64, Offset, Outcome)>,
    /// `durable_end` once the log stopped.
    durable_end: Offset,
}

/// `tasks` tasks append until the log stops (the injector is armed by the caller). Checks
/// the stop is final and returns what was acknowledged.
async fn append_until_stopped(
    log: Rc<PartitionLog>,
    tasks: u64,
    value_len: usize,
    wait_each: bool,
) -> FailureRun {
    let failure_seen = Rc::new(RefCell::new(false));
    let mut handles = Vec::new();
    for task in 0..tasks {
        let log = log.clone();
        let failure_seen = failure_seen.clone();
        handles.push(compio::runtime::spawn(async move {
            let mut appends = Vec::new();
            let mut pending = Vec::new();
            for i in 0..400u64 {
                let tag = task * 10_000 + i;
                match log.append(make_batch(tag, 2, value_len, 1_000)).await {
                    Ok(a) => {
                        if wait_each {
                            let res = a.durable.await;
                            if res.is_err() {
                                *failure_seen.borrow_mut() = true;
                            }
                            let outcome = match res {
                                Ok(()) => Outcome::Acked,
                                Err(LogError::Stopped { .. }) => Outcome::Failed,
                                Err(e) => panic!("unexpected error {e}"),
                            };
                            appends.push((tag, a.base_offset, outcome));
                        } else {
                            pending.push((tag, a.base_offset, a.durable));
                        }
                    }
                    Err(LogError::Stopped { .. }) => {
                        *failure_seen.borrow_mut() = true;
                        break;
                    }
                    Err(e) => panic!("unexpected append error {e}"),
                }
                if appends.iter().any(|(_, _, o)| matches!(o, Outcome::Failed)) {
                    break;
                }
            }
            for (tag, base, durable) in pending {
                let outcome = match durable.await {
                    Ok(()) => Outcome::Acked,
                    Err(LogError::Stopped { .. }) => {
                        *failure_seen.borrow_mut() = true;
                        Outcome::Failed
                    }
                    Err(e) => panic!("unexpected error {e}"),
                };
                appends.push((tag, base, outcome));
            }
            appends
        }));
    }
    let mut appends = Vec::new();
    for h in handles {
        appends.extend(within(60, "appending task", h).await.expect("task"));
    }
    assert!(
        *failure_seen.borrow(),
        "the injected failure must stop the log"
    );
    // The stop is for good: appends fail, nothing more becomes durable.
    let durable_end = log.offsets().durable_end;
    for tag in 0..3 {
        let res = log.append(make_batch(900_000 + tag, 1, 10, 1_000)).await;
        assert!(
            is_stopped(&res),
            "append after the failure: {:?}",
            res.err()
        );
        compio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        log.offsets().durable_end,
        durable_end,
        "durable_end moved after the log stopped"
    );
    // Reads still work, and return whole batches, however far the writes got.
    read_all(&log).await;
    FailureRun {
        appends,
        durable_end,
    }
}

/// Checks a run stopped by a failure: acknowledgements cover exactly a prefix of the log
/// that ends at or before the final `durable_end`; after reopening without faults that
/// prefix is all there, byte for byte.
fn check_failure_run(dir: &std::path::Path, mut run_: FailureRun, config: LogConfig) {
    run_.appends.sort_by_key(|(_, base, _)| *base);
    let acked_end = run_
        .appends
        .iter()
        .take_while(|(_, _, o)| matches!(o, Outcome::Acked))
        .count();
    let acked: Vec<(u64, Offset)> = run_.appends[..acked_end]
        .iter()
        .map(|(tag, base, _)| (*tag, *base))
        .collect();
    assert!(
        run_.appends[acked_end..]
            .iter()
            .all(|(_, _, o)| matches!(o, Outcome::Failed)),
        "an append after an unacknowledged one was acknowledged: {:?}",
        run_.appends
            .iter()
            .map(|(_, b, o)| (b.get(), o))
            .collect::<Vec<_>>()
    );
    assert!(
        run_.appends.len() > acked_end,
        "some appends must have failed"
    );
    let acked_next = Offset(acked.len() as u64 * 2);
    assert!(
        acked_next <= run_.durable_end,
        "acknowledged up to {acked_next} but durable_end is {}",
        run_.durable_end
    );
    run(async {
        let log = PartitionLog::open(dir, config).await.expect("reopen");
        assert!(
            log.offsets().log_end >= acked_next,
            "reopened log ends at {}, below the acknowledged {acked_next}",
            log.offsets().log_end
        );
        for (tag, base) in &acked {
            let got = log.read(*base, 1).await.expect("read acknowledged batch");
            check_batch(&got[0], *tag, *base);
        }
        // Whatever else survived is whole batches in order.
        read_all(&log).await;
        log.close().await.expect("close");
    });
}

#[test]
fn failed_fdatasync_stops_the_log_for_good() {
    let dir = tempfile::tempdir().expect("tempdir");
    let faults = Arc::new(FaultInjector::default());
    let config = LogConfig {
        flush: FlushPolicy::EveryBatch,
        faults: Some(faults.clone()),
        ..LogConfig::default()
    };
    let result = run(async {
        let log = Rc::new(
            PartitionLog::open(dir.path(), config.clone())
                .await
                .expect("open"),
        );
        faults.fail_sync_after(5);
        let result = append_until_stopped(log.clone(), 8, 3_000, true).await;
        let log = Rc::into_inner(log).expect("tasks done");
        assert!(is_stopped(&log.close().await), "close of a stopped log");
        result
    });
    check_failure_run(
        dir.path(),
        result,
        LogConfig {
            faults: None,
            ..config
        },
    );
}

/// A write that fails while later writes of the same log succeed: nothing at or after the
/// failed write may be acknowledged, under either flush policy.
fn failed_write_case(flush: FlushPolicy, fail_at: u32, wait_each: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let faults = Arc::new(FaultInjector::default());
    let config = LogConfig {
        flush,
        write_chunk_bytes: 64 * 1024,
        write_chunks_max: 8,
        max_batch_bytes: 64 * 1024,
        // Written batches leave the cache at once: reads of them go to disk.
        tail_cache_bytes: 0,
        faults: Some(faults.clone()),
        ..LogConfig::default()
    };
    let result = run(async {
        let log = Rc::new(
            PartitionLog::open(dir.path(), config.clone())
                .await
                .expect("open"),
        );
        faults.fail_write_after(fail_at);
        let result = append_until_stopped(log.clone(), 4, 7_000, wait_each).await;
        let log = Rc::into_inner(log).expect("tasks done");
        assert!(is_stopped(&log.close().await), "close of a stopped log");
        result
    });
    check_failure_run(
        dir.path(),
        result,
        LogConfig {
            faults: None,
            ..config
        },
    );
}

#[test]
fn failed_write_stops_the_log_every_batch() {
    for fail_at in [1, 2, 3, 7] {
        failed_write_case(FlushPolicy::EveryBatch, fail_at, false);
        failed_write_case(FlushPolicy::EveryBatch, fail_at, true);
    }
}

#[test]
fn failed_write_stops_the_log_interval() {
    let flush = FlushPolicy::Interval {
        messages: None,
        ms: None,
    };
    for fail_at in [1, 2, 3, 7] {
        failed_write_case(flush, fail_at, false);
        failed_write_case(flush, fail_at, true);
    }
}

/// Appends blocked on full write buffers when the log stops fail with `Stopped` instead of
/// waiting for room that never comes.
#[test]
fn appends_waiting_for_room_fail_when_the_log_stops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let faults = Arc::new(FaultInjector::default());
    let config = LogConfig {
        write_chunk_bytes: 2 * BLOCK_BYTES,
        write_chunks_max: 5,
        max_batch_bytes: 16 * 1024,
        faults: Some(faults.clone()),
        ..LogConfig::default()
    };
    run(async {
        let log = Rc::new(PartitionLog::open(dir.path(), config).await.expect("open"));
        faults.fail_write_after(1);
        let mut handles = Vec::new();
        for task in 0..32u64 {
            let log = log.clone();
            handles.push(compio::runtime::spawn(async move {
                let res = log.append(make_batch(task, 1, 12_000, 1_000)).await;
                match res {
                    Ok(a) => a.durable.await,
                    Err(e) => Err(e),
                }
            }));
        }
        let mut stopped = 0;
        for h in handles {
            let res = within(30, "append waiting for room", h)
                .await
                .expect("task");
            assert!(is_stopped(&res), "{res:?}");
            stopped += 1;
        }
        assert_eq!(stopped, 32);
        assert_eq!(log.offsets().durable_end, Offset(0));
    });
}

// ---------------------------------------------------------------------------------------
// (c) Rolling

#[test]
fn segments_roll_by_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        segment_bytes: 16 * 1024,
        ..LogConfig::default()
    };
    run(async {
        let log = PartitionLog::open(dir.path(), config.clone())
            .await
            .expect("open");
        let mut expected = vec![0u64];
        let mut active_bytes = 0u64;
        for tag in 0..40u64 {
            let batch = make_batch(tag, 2, 700 + (tag as usize * 97) % 3000, 1_000);
            let len = batch.len() as u64;
            if active_bytes > 0 && active_bytes + len > config.segment_bytes {
                expected.push(log.offsets().log_end.get());
                active_bytes = 0;
            }
            active_bytes += len;
            append_acked(&log, batch).await;
            assert_eq!(bases(&log), expected, "after batch {tag}");
        }
        // A batch larger than a segment goes alone into a segment of its own.
        let big = make_batch(99, 1, 40_000, 1_000);
        let end = log.offsets().log_end.get();
        append_acked(&log, big).await;
        let small = make_batch(100, 1, 10, 1_000);
        append_acked(&log, small).await;
        expected.extend([end, end + 1]);
        assert_eq!(bases(&log), expected);
        assert_eq!(segment_files(&log), expected);
        log.close().await.expect("close");
        let log = PartitionLog::open(dir.path(), config)
            .await
            .expect("reopen");
        assert_eq!(bases(&log), expected);
        assert_eq!(read_all(&log).await.len(), 42);
        log.close().await.expect("close");
    });
}

/// A one-record batch of exactly `len` bytes.
fn batch_of_len(tag: u64, len: usize) -> BytesMut {
    (0..len)
        .map(|v| one_record(tag, v, 1_000))
        .find(|b| b.len() == len)
        .expect("a value length gives exactly this batch length")
}

/// A segment rolls only when the next batch would take it past `segment.bytes`: filling it
/// exactly does not roll.
#[test]
fn segments_roll_only_past_segment_bytes() {
    const SEGMENT: usize = 16 * 1024;
    for overshoot in [0usize, 1] {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = LogConfig {
            segment_bytes: SEGMENT as u64,
            ..LogConfig::default()
        };
        run(async {
            let log = PartitionLog::open(dir.path(), config).await.expect("open");
            append_acked(&log, batch_of_len(0, 10_000)).await;
            append_acked(&log, batch_of_len(1, SEGMENT - 10_000 + overshoot)).await;
            append_acked(&log, batch_of_len(2, 100)).await;
            let expected = if overshoot == 0 {
                vec![0, 2]
            } else {
                vec![0, 1]
            };
            assert_eq!(
                bases(&log),
                expected,
                "second batch overshoots by {overshoot}"
            );
            log.close().await.expect("close");
        });
    }
}

fn age_config(segment_ms: u64) -> LogConfig {
    LogConfig {
        segment_ms: Some(segment_ms),
        clock: fake_clock_ms,
        ..LogConfig::default()
    }
}

fn age_config_indexed(segment_ms: u64, index_interval_bytes: u32) -> LogConfig {
    LogConfig {
        index_interval_bytes,
        ..age_config(segment_ms)
    }
}

#[test]
fn segments_roll_by_age() {
    let dir = tempfile::tempdir().expect("tempdir");
    set_fake_clock_ms(1_000_000);
    run(async {
        let log = PartitionLog::open(dir.path(), age_config(1_000))
            .await
            .expect("open");
        append_acked(&log, one_record(0, 10, fake_clock_ms())).await;
        set_fake_clock_ms(1_000_999);
        append_acked(&log, one_record(1, 10, fake_clock_ms())).await;
        assert_eq!(bases(&log), vec![0], "younger than segment.ms");
        set_fake_clock_ms(1_001_000);
        append_acked(&log, one_record(2, 10, fake_clock_ms())).await;
        assert_eq!(bases(&log), vec![0, 2], "segment.ms reached");
        // The age counts from the first append to the new segment.
        set_fake_clock_ms(1_001_900);
        append_acked(&log, one_record(3, 10, fake_clock_ms())).await;
        assert_eq!(bases(&log), vec![0, 2]);
        set_fake_clock_ms(1_002_000);
        append_acked(&log, one_record(4, 10, fake_clock_ms())).await;
        assert_eq!(bases(&log), vec![0, 2, 4]);
        // An empty active segment never rolls, however old the log.
        set_fake_clock_ms(9_000_000);
        log.roll_now().await.expect("roll");
        assert_eq!(bases(&log), vec![0, 2, 4, 5]);
        set_fake_clock_ms(9_999_000);
        append_acked(&log, one_record(5, 10, fake_clock_ms())).await;
        assert_eq!(bases(&log), vec![0, 2, 4, 5]);
        log.close().await.expect("close");
    });
}

/// A segment's age survives a reopen, clean or not: a log restarted more often than
/// `segment.ms` must still roll (and so let retention delete its old data). With an index
/// entry per batch, a clean reopen scans only the last batch of the active segment.
#[test]
fn segment_age_survives_reopen() {
    for (clean, index_interval_bytes) in [(true, 32 * 1024), (true, 1), (false, 1)] {
        let age_config = |ms| age_config_indexed(ms, index_interval_bytes);
        let dir = tempfile::tempdir().expect("tempdir");
        set_fake_clock_ms(5_000_000);
        run(async {
            let log = PartitionLog::open(dir.path(), age_config(10_000))
                .await
                .expect("open");
            append_acked(&log, one_record(0, 10, fake_clock_ms())).await;
            if clean {
                log.close().await.expect("close");
            } else {
                drop(log);
            }
        });
        set_fake_clock_ms(5_006_000);
        run(async {
            let log = PartitionLog::open(dir.path(), age_config(10_000))
                .await
                .expect("reopen");
            append_acked(&log, one_record(1, 10, fake_clock_ms())).await;
            assert_eq!(bases(&log), vec![0], "6 s old, clean {clean}");
            log.close().await.expect("close");
        });
        set_fake_clock_ms(5_008_000);
        run(async {
            let log = PartitionLog::open(dir.path(), age_config(10_000))
                .await
                .expect("reopen");
            append_acked(&log, one_record(2, 10, fake_clock_ms())).await;
            assert_eq!(bases(&log), vec![0], "8 s old, clean {clean}");
            log.close().await.expect("close");
        });
        set_fake_clock_ms(5_010_000);
        run(async {
            let log = PartitionLog::open(dir.path(), age_config(10_000))
                .await
                .expect("reopen");
            append_acked(&log, one_record(3, 10, fake_clock_ms())).await;
            assert_eq!(
                bases(&log),
                vec![0, 3],
                "the first batch is 10 s old (clean close: {clean})"
            );
            log.close().await.expect("close");
        });
    }
}

// ---------------------------------------------------------------------------------------
// (d) Retention

/// Five closed segments of two batches each with timestamps `t, t+1` for t = 0, 10, .., 40
/// (relative to `T`), then an active segment holding one batch at `T + 50`. All closed.
const T: i64 = 1_700_000_000_000;

async fn retention_log(dir: &std::path::Path, config: LogConfig) -> PartitionLog {
    let log = PartitionLog::open(dir, config).await.expect("open");
    for seg in 0..5u64 {
        for i in 0..2u64 {
            let tag = seg * 2 + i;
            append_acked(
                &log,
                make_batch(tag, 1, 1_000, T + seg as i64 * 10 + i as i64),
            )
            .await;
        }
        log.roll_now().await.expect("roll");
    }
    // A durable batch in the active segment: every earlier seal is complete.
    append_acked(&log, make_batch(10, 1, 1_000, T + 50)).await;
    assert_eq!(bases(&log), vec![0, 2, 4, 6, 8, 10]);
    log
}

#[test]
fn retention_by_time_deletes_expired_closed_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        retention_ms: Some(100),
        retention_bytes: None,
        ..LogConfig::default()
    };
    run(async {
        let log = retention_log(dir.path(), config.clone()).await;
        // Segment max timestamps: T+1, T+11, T+21, T+31, T+41; deleted when < now - 100.
        assert_eq!(
            log.enforce_retention(T + 101).await.expect("ret"),
            Offset(0)
        );
        assert_eq!(bases(&log), vec![0, 2, 4, 6, 8, 10]);
        assert_eq!(
            log.enforce_retention(T + 102).await.expect("ret"),
            Offset(2)
        );
        assert_eq!(
            log.enforce_retention(T + 122).await.expect("ret"),
            Offset(6)
        );
        assert_eq!(bases(&log), vec![6, 8, 10]);
        assert_eq!(segment_files(&log), vec![6, 8, 10]);
        assert_eq!(log.offsets().log_start, Offset(6));
        match log.read(Offset(5), 1 << 20).await {
            Err(LogError::OffsetOutOfRange {
                requested,
                log_start,
                log_end,
            }) => {
                assert_eq!(
                    (requested, log_start, log_end),
                    (Offset(5), Offset(6), Offset(11))
                );
            }
            other => panic!("read below log start: {other:?}"),
        }
        let got = log.read(Offset(6), 1).await.expect("read at log start");
        check_batch(&got[0], 6, Offset(6));
        // The first record at or after T is now the first retained one.
        assert_eq!(
            log.offset_for_timestamp(T).await.expect("ts"),
            Some(Offset(6))
        );
        // Everything expired: all closed segments go, the active one stays.
        assert_eq!(
            log.enforce_retention(T + 1_000_000).await.expect("ret"),
            Offset(10)
        );
        assert_eq!(bases(&log), vec![10]);
        assert_eq!(segment_files(&log), vec![10]);
        let got = log.read(Offset(10), 1 << 20).await.expect("read active");
        check_batch(&got[0], 10, Offset(10));
        assert_eq!(log.stats().segments, 1);
        log.close().await.expect("close");
        let log = PartitionLog::open(dir.path(), config)
            .await
            .expect("reopen");
        assert_eq!(log.offsets().log_start, Offset(10));
        assert_eq!(log.offsets().log_end, Offset(11));
        assert!(matches!(
            log.read(Offset(0), 1).await,
            Err(LogError::OffsetOutOfRange { .. })
        ));
        log.close().await.expect("close");
    });
}

#[test]
fn retention_by_size_keeps_at_least_retention_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        retention_ms: None,
        ..LogConfig::default()
    };
    run(async {
        let log = retention_log(dir.path(), config.clone()).await;
        let mut sizes = vec![0u64; 6];
        for batch in read_all(&log).await {
            sizes[batch.base_offset().get() as usize / 2] += batch.len() as u64;
        }
        let total: u64 = sizes.iter().sum();
        assert_eq!(log.stats().bytes, total);
        log.close().await.expect("close");
        // The closed segments hold equal batches (tags 0..9 have keys of the same length).
        assert!(sizes[..5].iter().all(|&s| s == sizes[0]), "{sizes:?}");
        // Deleting the oldest must leave at least retention.bytes: with the limit at exactly
        // total - size(first), one segment goes; one byte more and none does.
        let seg = sizes[0];
        for (limit, start) in [
            (total - seg + 1, 0u64),
            (total - seg, 2),
            (total - 2 * seg, 4),
            (total - 3 * seg - 1, 6),
            (1, 10),
        ] {
            let dir = tempfile::tempdir().expect("tempdir");
            let config = LogConfig {
                retention_bytes: Some(limit),
                ..config.clone()
            };
            let log = retention_log(dir.path(), config).await;
            assert_eq!(
                log.enforce_retention(T).await.expect("ret"),
                Offset(start),
                "retention.bytes {limit} of {total}"
            );
            assert_eq!(log.offsets().log_start, Offset(start));
            assert_eq!(segment_files(&log)[0], start);
            let kept: u64 = log.stats().bytes;
            assert_eq!(kept, sizes[start as usize / 2..].iter().sum::<u64>());
            assert!(
                kept >= limit || log.stats().segments == 1,
                "kept {kept} bytes, below retention.bytes {limit}"
            );
            if start > 0 {
                assert!(matches!(
                    log.read(Offset(start - 1), 1).await,
                    Err(LogError::OffsetOutOfRange { .. })
                ));
            }
            log.close().await.expect("close");
        }
    });
}

#[test]
fn retention_never_deletes_the_active_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        retention_ms: Some(1),
        retention_bytes: Some(1),
        ..LogConfig::default()
    };
    run(async {
        let log = PartitionLog::open(dir.path(), config).await.expect("open");
        for tag in 0..20 {
            append_acked(&log, make_batch(tag, 3, 500, T)).await;
        }
        assert_eq!(
            log.enforce_retention(T + 1_000_000).await.expect("ret"),
            Offset(0)
        );
        assert_eq!(bases(&log), vec![0]);
        assert_eq!(read_all(&log).await.len(), 20);
        // Rolled, the segment is sealing until the flusher runs (this task has not yielded
        // since the roll returned): it is not closed yet and stays.
        log.roll_now().await.expect("roll");
        assert_eq!(
            log.enforce_retention(T + 1_000_000).await.expect("ret"),
            Offset(0),
            "a segment still being sealed was deleted"
        );
        // Once a later batch is durable, its seal is done and it goes.
        append_acked(&log, make_batch(20, 1, 10, T)).await;
        assert_eq!(
            log.enforce_retention(T + 1_000_000).await.expect("ret"),
            Offset(60)
        );
        assert_eq!(bases(&log), vec![60]);
        log.close().await.expect("close");
    });
}

// ---------------------------------------------------------------------------------------
// (e) Interval flush policy

#[test]
fn interval_policy_acknowledges_without_fdatasync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let faults = Arc::new(FaultInjector::default());
    let config = LogConfig {
        flush: FlushPolicy::Interval {
            messages: None,
            ms: None,
        },
        faults: Some(faults.clone()),
        ..LogConfig::default()
    };
    run(async {
        let log = PartitionLog::open(dir.path(), config).await.expect("open");
        // Any fdatasync would fail and stop the log.
        faults.fail_sync_after(1);
        for tag in 0..200 {
            append_acked(&log, make_batch(tag, 5, 2_000, 1_000)).await;
        }
        assert_eq!(log.offsets().durable_end, Offset(1_000));
        // close() syncs: that is the first fdatasync, and it fails.
        assert!(is_stopped(&log.close().await));
    });
}

#[test]
fn flush_messages_syncs_after_n_records() {
    const N: u64 = 10;
    let dir = tempfile::tempdir().expect("tempdir");
    let faults = Arc::new(FaultInjector::default());
    let config = LogConfig {
        flush: FlushPolicy::Interval {
            messages: Some(N),
            ms: None,
        },
        faults: Some(faults.clone()),
        ..LogConfig::default()
    };
    run(async {
        let log = PartitionLog::open(dir.path(), config).await.expect("open");
        faults.fail_sync_after(1);
        // N - 1 records, acknowledged one batch at a time: no fdatasync yet (it would fail
        // and stop the log, failing the next append).
        for tag in 0..3 {
            append_acked(&log, make_batch(tag, 3, 100, 1_000)).await;
            compio::time::sleep(Duration::from_millis(20)).await;
        }
        append_acked(&log, make_batch(3, 1, 100, 1_000)).await;
        assert_eq!(log.offsets().log_end, Offset(N));
        // The N-th record is written and acknowledged; its write's completion triggers the
        // fdatasync, which fails: the log stops.
        compio::time::sleep(Duration::from_millis(20)).await;
        let res = log.append(make_batch(4, 1, 100, 1_000)).await;
        assert!(
            is_stopped(&res),
            "no fdatasync after {N} records: {:?}",
            res.err()
        );
    });
}

#[test]
fn flush_messages_syncs_are_real_and_counted() {
    // With the sync after every 10 records succeeding, the log keeps going; the count of
    // syncs matches: 50 records in batches of 5 make 5 syncs, and the 6th (at 60) fails.
    let dir = tempfile::tempdir().expect("tempdir");
    let faults = Arc::new(FaultInjector::default());
    let config = LogConfig {
        flush: FlushPolicy::Interval {
            messages: Some(10),
            ms: None,
        },
        faults: Some(faults.clone()),
        ..LogConfig::default()
    };
    run(async {
        let log = PartitionLog::open(dir.path(), config).await.expect("open");
        faults.fail_sync_after(6);
        for tag in 0..10 {
            append_acked(&log, make_batch(tag, 5, 100, 1_000)).await;
            compio::time::sleep(Duration::from_millis(5)).await;
        }
        // Records 50..59: below the next threshold, no sync (the appends still succeed).
        append_acked(&log, make_batch(10, 9, 100, 1_000)).await;
        compio::time::sleep(Duration::from_millis(20)).await;
        append_acked(&log, make_batch(11, 1, 100, 1_000)).await;
        compio::time::sleep(Duration::from_millis(20)).await;
        let res = log.append(make_batch(12, 1, 100, 1_000)).await;
        assert!(
            is_stopped(&res),
            "the 6th sync (at 60 records) should have failed"
        );
    });
}

#[test]
fn flush_ms_syncs_on_a_timer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let faults = Arc::new(FaultInjector::default());
    let config = LogConfig {
        flush: FlushPolicy::Interval {
            messages: None,
            ms: Some(20),
        },
        faults: Some(faults.clone()),
        ..LogConfig::default()
    };
    run(async {
        let log = PartitionLog::open(dir.path(), config).await.expect("open");
        faults.fail_sync_after(1);
        append_acked(&log, make_batch(0, 1, 100, 1_000)).await;
        // Appends do not trigger syncs under this policy; only the timer does. Poll until
        // the timer's sync has failed and stopped the log.
        let stopped = within(10, "flush.ms timer", async {
            loop {
                compio::time::sleep(Duration::from_millis(5)).await;
                match log.append(make_batch(1, 1, 100, 1_000)).await {
                    Err(LogError::Stopped { .. }) => break true,
                    Ok(a) => {
                        let _ = a.durable.await;
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        })
        .await;
        assert!(stopped);
    });
}

// ---------------------------------------------------------------------------------------
// (f) Rejected batches

#[test]
fn invalid_batches_are_rejected_and_the_log_keeps_working() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        max_batch_bytes: 64 * 1024,
        ..LogConfig::default()
    };
    run(async {
        let log = PartitionLog::open(dir.path(), config).await.expect("open");
        append_acked(&log, make_batch(0, 2, 100, 1_000)).await;

        let big = make_batch(1, 1, 70_000, 1_000);
        let len = big.len();
        match log.append(big).await {
            Err(LogError::BatchTooLarge { size, max }) => {
                assert_eq!((size, max), (len, 64 * 1024));
            }
            other => panic!("oversized batch: {:?}", other.err()),
        }

        let mut bad_crc = make_batch(2, 2, 100, 1_000);
        let last = bad_crc.len() - 1;
        bad_crc[last] ^= 0x40;
        assert!(matches!(
            log.append(bad_crc).await,
            Err(LogError::InvalidBatch(DecodeError::CrcMismatch { .. }))
        ));

        let mut trailing = make_batch(3, 1, 100, 1_000);
        trailing.extend_from_slice(&[0u8; 8]);
        assert!(matches!(
            log.append(trailing).await,
            Err(LogError::InvalidBatch(DecodeError::LengthMismatch { .. }))
        ));

        let truncated = BytesMut::from(&make_batch(4, 1, 100, 1_000)[..40]);
        assert!(matches!(
            log.append(truncated).await,
            Err(LogError::InvalidBatch(_))
        ));

        // Nothing rejected took an offset; the log goes on.
        assert_eq!(log.offsets().log_end, Offset(2));
        let base = append_acked(&log, make_batch(5, 3, 100, 1_000)).await;
        assert_eq!(base, Offset(2));
        let all = read_all(&log).await;
        assert_eq!(all.len(), 2);
        check_batch(&all[0], 0, Offset(0));
        check_batch(&all[1], 5, Offset(2));
        log.close().await.expect("close");
    });
}

#[test]
fn invalid_configs_are_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = [
        LogConfig {
            segment_bytes: 16 * 1024 - 1,
            ..LogConfig::default()
        },
        // A one-block chunk has no room beside the carried partial block.
        LogConfig {
            write_chunk_bytes: BLOCK_BYTES,
            write_chunks_max: 1_000,
            max_batch_bytes: 1,
            ..LogConfig::default()
        },
        LogConfig {
            write_chunk_bytes: 3 * 1000,
            ..LogConfig::default()
        },
        LogConfig {
            index_interval_bytes: 0,
            ..LogConfig::default()
        },
    ];
    run(async {
        for config in bad {
            assert!(matches!(
                PartitionLog::open(dir.path(), config.clone()).await,
                Err(LogError::InvalidConfig(_))
            ));
        }
    });
}

// ---------------------------------------------------------------------------------------
// (g) Backpressure

/// Many tasks append into tiny write buffers (five 8 KiB chunks, which is all a 16 KiB
/// batch needs) and small segments, so appends wait for room and for rolls all the time.
/// Every append completes and is acknowledged, in order, without a deadlock.
fn backpressure_case(flush: FlushPolicy) {
    const TASKS: u64 = 32;
    const PER_TASK: u64 = 20;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        flush,
        segment_bytes: 16 * 1024,
        write_chunk_bytes: 2 * BLOCK_BYTES,
        write_chunks_max: 5,
        max_batch_bytes: 16 * 1024,
        preallocate_bytes: 4096,
        tail_cache_bytes: 0,
        ..LogConfig::default()
    };
    config
        .validate()
        .expect("smallest buffers that fit a batch");
    run(async {
        let log = Rc::new(PartitionLog::open(dir.path(), config).await.expect("open"));
        let mut handles = Vec::new();
        for task in 0..TASKS {
            let log = log.clone();
            handles.push(compio::runtime::spawn(async move {
                let mut mine = Vec::new();
                let mut pending = Vec::new();
                for i in 0..PER_TASK {
                    let tag = task * 1_000 + i;
                    // Mostly small, some close to the 16 KiB limit.
                    let len = if tag % 10 == 3 {
                        14_000
                    } else {
                        ((tag * 7919) % 4_000) as usize
                    };
                    let a = log
                        .append(make_batch(tag, 1, len, 1_000))
                        .await
                        .expect("append");
                    mine.push((tag, a.base_offset));
                    // Some tasks wait for each acknowledgement, others pipeline.
                    if task % 2 == 0 {
                        a.durable.await.expect("durable");
                    } else {
                        pending.push(a.durable);
                    }
                }
                for d in pending {
                    d.await.expect("durable");
                }
                mine
            }));
        }
        let mut all = Vec::new();
        for h in handles {
            all.extend(within(120, "appending task", h).await.expect("task"));
        }
        all.sort_by_key(|(_, base)| *base);
        assert_eq!(all.len() as u64, TASKS * PER_TASK);
        for (i, (_, base)) in all.iter().enumerate() {
            assert_eq!(*base, Offset(i as u64), "offsets are dense");
        }
        assert_eq!(log.offsets().durable_end, Offset(TASKS * PER_TASK));
        assert!(log.stats().segments > 10, "{:?}", log.stats());
        let read = read_all(&log).await;
        assert_eq!(read.len(), all.len());
        for (batch, (tag, base)) in read.iter().zip(&all) {
            check_batch(batch, *tag, *base);
        }
        within(
            30,
            "close",
            Rc::into_inner(log).expect("tasks done").close(),
        )
        .await
        .expect("close");
    });
}

#[test]
fn backpressure_with_tiny_buffers_every_batch() {
    backpressure_case(FlushPolicy::EveryBatch);
}

#[test]
fn backpressure_with_tiny_buffers_interval() {
    backpressure_case(FlushPolicy::Interval {
        messages: Some(7),
        ms: Some(3),
    });
}

// ---------------------------------------------------------------------------------------
// (h) Tail cache and disk

/// Two logs get the same batches: one with a tail cache larger than all of them (every
/// read served from memory), one with a cache of 0 bytes (once written, every read goes
/// to disk, through the sparse index and CRC checks). Every read returns the same bytes from
/// both, equal to what was appended; after a reopen (empty cache) too.
#[test]
fn tail_cache_and_disk_reads_are_identical() {
    let cached_dir = tempfile::tempdir().expect("tempdir");
    let disk_dir = tempfile::tempdir().expect("tempdir");
    let config = |tail_cache_bytes| LogConfig {
        segment_bytes: 64 * 1024,
        index_interval_bytes: 4096,
        tail_cache_bytes,
        ..LogConfig::default()
    };
    let mut expected: Vec<bytes::Bytes> = Vec::new();
    run(async {
        let cached = PartitionLog::open(cached_dir.path(), config(64 << 20))
            .await
            .expect("open");
        let disk = PartitionLog::open(disk_dir.path(), config(0))
            .await
            .expect("open");
        for tag in 0..120u64 {
            let compression = match tag % 3 {
                0 => Compression::None,
                1 => Compression::Lz4,
                _ => Compression::Zstd,
            };
            let mut b = BatchBuilder::new(compression, Limits::DEFAULT);
            for i in 0..(1 + tag % 7) {
                let value = common::value_for(tag, i as usize, (tag as usize * 131) % 2_500);
                b.push(1_000 + tag as i64, None, Some(&value), &[])
                    .expect("push");
            }
            let batch = b.build().expect("build");
            let base = append_acked(&cached, batch.clone()).await;
            assert_eq!(append_acked(&disk, batch.clone()).await, base);
            let mut stamped = batch;
            sluice_proto::stamp_base_offset(&mut stamped, base);
            for _ in 0..(1 + tag % 7) {
                expected.push(stamped.clone().freeze());
            }
        }
        assert!(cached.stats().segments > 3, "{:?}", cached.stats());
        compare_reads(&[&cached, &disk], &expected).await;
        cached.close().await.expect("close");
        disk.close().await.expect("close");
    });
    run(async {
        let cached = PartitionLog::open(cached_dir.path(), config(64 << 20))
            .await
            .expect("reopen");
        let disk = PartitionLog::open(disk_dir.path(), config(0))
            .await
            .expect("reopen");
        compare_reads(&[&cached, &disk], &expected).await;
        cached.close().await.expect("close");
        disk.close().await.expect("close");
    });
}

/// A tail-cache budget's limit can shrink and grow: the written batches over the new limit
/// leave memory at once, the cache keeps within it as appends go on, and every read still
/// returns the appended bytes (from disk).
#[test]
fn tail_cache_budget_can_shrink_and_grow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        segment_bytes: 256 * 1024,
        index_interval_bytes: 4096,
        tail_cache_bytes: 64 << 20,
        ..LogConfig::default()
    };
    let mut expected: Vec<bytes::Bytes> = Vec::new();
    run(async {
        let log = PartitionLog::open(dir.path(), config).await.expect("open");
        let mut appended = 0usize;
        let append = async |log: &PartitionLog, tag: u64, expected: &mut Vec<bytes::Bytes>| {
            append_recorded(log, tag, 3_000, expected).await
        };
        for tag in 0..40u64 {
            appended += append(&log, tag, &mut expected).await;
        }
        assert_eq!(
            log.tail_cache_held_bytes(),
            appended,
            "everything fits the cache"
        );
        log.tail_cache_budget().set_limit(0);
        assert_eq!(log.tail_cache_held_bytes(), 0, "every batch was written");
        compare_reads(&[&log], &expected).await;
        log.tail_cache_budget().set_limit(10_000);
        for tag in 40..80u64 {
            append(&log, tag, &mut expected).await;
            assert!(log.tail_cache_held_bytes() <= 10_000);
        }
        assert!(
            log.tail_cache_held_bytes() > 0,
            "the latest batches are cached"
        );
        compare_reads(&[&log], &expected).await;
        log.close().await.expect("close");
    });
}

/// Logs sharing one tail-cache budget (a shard's) share it by recency, not evenly: one busy
/// log may use all of it, and appends to another log push out the oldest batches of any log
/// first. A closed log's batches leave the budget. Reads return the appended bytes whether
/// they come from memory or from disk.
#[test]
fn shared_tail_cache_keeps_the_most_recent_batches_of_any_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        segment_bytes: 1 << 20,
        index_interval_bytes: 4096,
        tail_cache_bytes: 0,
        ..LogConfig::default()
    };
    const LIMIT: usize = 64 * 1024;
    run(async {
        let budget = sluice_storage::TailCacheBudget::new(LIMIT);
        let open = |name: &str| {
            PartitionLog::open_with_budget(
                dir.path().join(name),
                config.clone(),
                sluice_storage::WriteBudget::unshared(&config),
                budget.clone(),
            )
        };
        let a = open("a").await.expect("open a");
        let b = open("b").await.expect("open b");
        let c = open("c").await.expect("open c");
        let mut expected: [Vec<bytes::Bytes>; 3] = Default::default();
        let append = async |log: &PartitionLog, tag: u64, expected: &mut Vec<bytes::Bytes>| {
            append_recorded(log, tag, 4_000, expected).await
        };
        // One busy log: it gets the whole budget (an even split would give it a third).
        let mut batch_len = 0;
        for tag in 0..40u64 {
            batch_len = append(&a, tag, &mut expected[0]).await;
            assert!(budget.held_bytes() <= LIMIT, "{}", budget.held_bytes());
        }
        assert!(
            a.tail_cache_held_bytes() > LIMIT - batch_len,
            "the busy log uses the whole budget: {} of {LIMIT}",
            a.tail_cache_held_bytes()
        );
        assert_eq!(budget.held_bytes(), a.tail_cache_held_bytes());
        // Another log gets busy: a's batches, now the oldest, make room for b's.
        for tag in 0..10u64 {
            append(&b, tag, &mut expected[1]).await;
            assert!(budget.held_bytes() <= LIMIT);
        }
        let b_held = b.tail_cache_held_bytes();
        assert_eq!(b_held, 10 * batch_len, "b's recent batches are all cached");
        assert_eq!(budget.held_bytes(), a.tail_cache_held_bytes() + b_held);
        assert!(
            a.tail_cache_held_bytes() > 0,
            "a keeps its most recent batches"
        );
        // Interleaved appends to c: again the oldest go first, so c's newest stay.
        for tag in 0..30u64 {
            append(&c, tag, &mut expected[2]).await;
            append(&b, 100 + tag, &mut expected[1]).await;
        }
        assert_eq!(a.tail_cache_held_bytes(), 0, "a's batches are the oldest");
        let (b_held, c_held) = (b.tail_cache_held_bytes(), c.tail_cache_held_bytes());
        assert!(b_held.abs_diff(c_held) <= batch_len, "{b_held} / {c_held}");
        assert_eq!(budget.held_bytes(), b_held + c_held);
        assert!(budget.held_bytes() > LIMIT - 2 * batch_len);
        for (log, expected) in [&a, &b, &c].into_iter().zip(&expected) {
            compare_reads(&[log], expected).await;
        }
        // A closed log's batches leave the budget.
        c.close().await.expect("close c");
        assert_eq!(budget.held_bytes(), b.tail_cache_held_bytes());
        a.close().await.expect("close a");
        b.close().await.expect("close b");
        assert_eq!(budget.held_bytes(), 0);
    });
}

/// Appends one record of `value_len` bytes tagged `tag`, waits for it to be durable, adds
/// the stamped batch to `expected` and returns its size.
async fn append_recorded(
    log: &PartitionLog,
    tag: u64,
    value_len: usize,
    expected: &mut Vec<bytes::Bytes>,
) -> usize {
    let mut b = BatchBuilder::new(Compression::None, Limits::DEFAULT);
    let value = common::value_for(tag, 0, value_len);
    b.push(1_000 + tag as i64, None, Some(&value), &[])
        .expect("push");
    let batch = b.build().expect("build");
    let len = batch.len();
    let base = append_acked(log, batch.clone()).await;
    let mut stamped = batch;
    sluice_proto::stamp_base_offset(&mut stamped, base);
    expected.push(stamped.freeze());
    len
}

/// Reads every offset alone and the whole log with assorted budgets from each log; every
/// batch must be the expected bytes (`expected[offset]` is the batch holding `offset`).
async fn compare_reads(logs: &[&PartitionLog], expected: &[bytes::Bytes]) {
    for log in logs {
        assert_eq!(log.offsets().log_end, Offset(expected.len() as u64));
        for (off, want) in expected.iter().enumerate() {
            let got = log.read(Offset(off as u64), 0).await.expect("read");
            assert_eq!(got.len(), 1);
            assert!(got[0].as_bytes() == want, "offset {off}: wrong bytes");
            got[0].validate().expect("records decode");
        }
        for max_bytes in [1usize, 3_000, 20_000, 1 << 20] {
            let mut from = Offset(0);
            while from < log.offsets().log_end {
                let got = log.read(from, max_bytes).await.expect("read");
                assert_eq!(got[0].base_offset(), from);
                for b in &got {
                    assert!(b.as_bytes() == &expected[b.base_offset().get() as usize]);
                }
                from = got.last().expect("non-empty").next_offset();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Reads bounded by an end offset

#[test]
fn read_until_ending_at_a_segment_base_returns_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        segment_bytes: 16 * 1024,
        tail_cache_bytes: 0,
        ..LogConfig::default()
    };
    run(async {
        let log = PartitionLog::open(dir.path(), config).await.expect("open");
        for tag in 0..4u64 {
            append_acked(&log, make_batch(tag, 2, 100, 1_000)).await;
            log.roll_now().await.expect("roll");
        }
        let base = log.segment_bases()[2];
        assert_eq!(base, Offset(4));
        for end in [Offset(0), Offset(3), base] {
            let got = within(10, "read_until", log.read_until(base, end, 1 << 20))
                .await
                .expect("read");
            assert!(got.is_empty(), "read_until({base}, {end})");
        }
        let got = log
            .read_until(base, Offset(5), 1 << 20)
            .await
            .expect("read");
        assert_eq!(got.len(), 1);
        check_batch(&got[0], 2, base);
        log.close().await.expect("close");
    });
}

/// Tiny `max_bytes` reads from disk of batches whose header straddles a block boundary.
#[test]
fn tiny_reads_from_disk_of_batches_crossing_blocks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        tail_cache_bytes: 0,
        index_interval_bytes: 1,
        ..LogConfig::default()
    };
    run(async {
        let log = PartitionLog::open(dir.path(), config).await.expect("open");
        let mut tags = Vec::new();
        for tag in 0..200u64 {
            let base =
                append_acked(&log, make_batch(tag, 1, (tag as usize * 37) % 300, 1_000)).await;
            tags.push((tag, base));
        }
        for max_bytes in [0usize, 1, 30, 60, 61, 62] {
            for (tag, base) in &tags {
                let got = log.read(*base, max_bytes).await.expect("read");
                check_batch(&got[0], *tag, *base);
            }
        }
        log.close().await.expect("close");
    });
}
