//! What a replicated partition log needs: leader epochs and the leader-epoch cache, follower
//! appends, truncation (also under SIGKILL), and the high watermark. Real files in a tempdir;
//! the crash test SIGKILLs `sluice-log-crash-child` in its `truncate` mode.
//!
//! Environment: `SLUICE_TRUNCATE_CRASH_ITERATIONS` (default 60), `SLUICE_CRASH_SEED`
//! (default: from the clock; printed, so a run's schedule can be replayed).
#![allow(missing_docs)]

mod common;

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sluice_proto::{Offset, RecordBatch};
use sluice_storage::{
    EpochEntry, FlushPolicy, HW_CHECKPOINT, LEADER_EPOCH_CHECKPOINT, LogConfig, LogError,
    PartitionLog,
};

use common::workload::{batch_for, config as crash_config};
use common::{make_batch, run, within};

const CHILD: &str = env!("CARGO_BIN_EXE_sluice-log-crash-child");

/// Small segments and index interval, so truncations cross segments and index entries;
/// writes acknowledged once written (truncation syncs first anyway).
fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 16 * 1024,
        preallocate_bytes: 16 * 1024,
        index_interval_bytes: 1024,
        flush: FlushPolicy::Interval {
            messages: None,
            ms: None,
        },
        ..LogConfig::default()
    }
}

fn batch(tag: u64) -> BytesMut {
    make_batch(
        tag,
        1 + (tag % 3) as usize,
        100 + (tag % 7) as usize * 90,
        1_000 + tag as i64,
    )
}

/// Every batch of the log, from its start.
async fn all_batches(log: &PartitionLog) -> Vec<RecordBatch> {
    let mut out: Vec<RecordBatch> = Vec::new();
    let mut from = log.offsets().log_start;
    loop {
        let batches = log.read(from, 1 << 20).await.expect("read");
        let Some(last) = batches.last() else {
            break;
        };
        from = last.next_offset();
        out.extend(batches);
    }
    out
}

fn bytes_of(batches: &[RecordBatch]) -> Vec<Vec<u8>> {
    batches.iter().map(|b| b.as_bytes().to_vec()).collect()
}

/// The log's batches run gap-free from its start to its end, and its epoch cache matches
/// their headers: every entry starts at or before the log end, and each batch carries the
/// epoch of the latest entry starting at or before it.
async fn check_epochs_match(log: &PartitionLog) -> Vec<RecordBatch> {
    let batches = all_batches(log).await;
    let offsets = log.offsets();
    let mut next = offsets.log_start;
    for b in &batches {
        assert_eq!(b.base_offset(), next, "gap in the log");
        next = b.next_offset();
    }
    assert_eq!(next, offsets.log_end, "batches do not end at the log end");
    let entries = log.epoch_entries();
    for pair in entries.windows(2) {
        assert!(pair[0].epoch < pair[1].epoch && pair[0].start_offset <= pair[1].start_offset);
    }
    for e in &entries {
        assert!(
            e.start_offset <= offsets.log_end,
            "epoch cache {entries:?} names offsets beyond the log end {}",
            offsets.log_end
        );
    }
    for b in &batches {
        let expected = entries
            .iter()
            .rev()
            .find(|e| e.start_offset <= b.base_offset())
            .map(|e| e.epoch);
        assert_eq!(
            Some(b.leader_epoch()),
            expected,
            "batch at {} vs epoch cache {entries:?}",
            b.base_offset()
        );
    }
    batches
}

// ---------------------------------------------------------------------------------------
// Tracing: count warn lines.

#[derive(Clone, Default)]
struct Warnings(Arc<Mutex<Vec<String>>>);

struct MessageOf(String);

impl tracing::field::Visit for MessageOf {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl tracing::Subscriber for Warnings {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        if *event.metadata().level() <= tracing::Level::WARN {
            let mut m = MessageOf(String::new());
            event.record(&mut m);
            self.0.lock().expect("lock").push(m.0);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

impl Warnings {
    fn containing(&self, text: &str) -> usize {
        let lines = self.0.lock().expect("lock");
        lines.iter().filter(|l| l.contains(text)).count()
    }
}

// ---------------------------------------------------------------------------------------
// Leader epochs.

#[test]
fn leader_stamps_epochs_and_answers_end_offsets() {
    let dir = tempfile::tempdir().expect("tempdir");
    run(async {
        let log = PartitionLog::open(dir.path(), config())
            .await
            .expect("open");
        assert_eq!(log.end_offset_for_epoch(0), None);
        log.become_leader(2).await.expect("leader 2");
        for tag in 0..5 {
            log.append(batch(tag))
                .await
                .expect("append")
                .durable
                .await
                .expect("durable");
        }
        let end2 = log.offsets().log_end;
        log.become_leader(5).await.expect("leader 5");
        for tag in 5..8 {
            log.append(batch(tag))
                .await
                .expect("append")
                .durable
                .await
                .expect("durable");
        }
        let end = log.offsets().log_end;
        assert_eq!(
            log.epoch_entries(),
            vec![
                EpochEntry {
                    epoch: 2,
                    start_offset: Offset(0)
                },
                EpochEntry {
                    epoch: 5,
                    start_offset: end2
                },
            ]
        );
        assert_eq!(log.end_offset_for_epoch(1), None);
        assert_eq!(log.end_offset_for_epoch(2), Some((2, end2)));
        assert_eq!(log.end_offset_for_epoch(4), Some((2, end2)));
        assert_eq!(log.end_offset_for_epoch(5), Some((5, end)));
        assert_eq!(log.end_offset_for_epoch(9), Some((5, end)));
        assert!(matches!(
            log.become_leader(4).await,
            Err(LogError::StaleLeaderEpoch {
                epoch: 4,
                latest: 5
            })
        ));
        check_epochs_match(&log).await;
        log.close().await.expect("close");
        let log = PartitionLog::open(dir.path(), config())
            .await
            .expect("reopen");
        assert_eq!(log.epoch_entries().len(), 2);
        assert_eq!(log.end_offset_for_epoch(2), Some((2, end2)));
        let batches = check_epochs_match(&log).await;
        assert_eq!(batches.last().expect("batches").leader_epoch(), 5);
        // A reopened log does not stamp until it is told it leads.
        assert_eq!(log.leader_epoch(), None);
        log.close().await.expect("close");
    });
}

// ---------------------------------------------------------------------------------------
// Follower appends.

/// A log that leads takes no replica batch (a fetch answer of the previous leader that lands
/// after the log took over), and takes them again once it follows.
#[test]
fn a_leaders_log_refuses_replica_batches() {
    let leader_dir = tempfile::tempdir().expect("tempdir");
    let other_dir = tempfile::tempdir().expect("tempdir");
    run(async {
        let leader = PartitionLog::open(leader_dir.path(), config())
            .await
            .expect("open");
        let other = PartitionLog::open(other_dir.path(), config())
            .await
            .expect("open");
        leader.become_leader(3).await.expect("leader");
        for tag in 0..2 {
            let _ = leader.append(batch(tag)).await.expect("append");
        }
        let batches = all_batches(&leader).await;
        other.become_leader(4).await.expect("the other log leads");
        let err = other
            .append_replica(batches[0].as_bytes().clone())
            .await
            .err()
            .expect("replica batch on a leader's log refused");
        assert!(matches!(err, LogError::LeaderLog { epoch: 4 }), "{err}");
        assert_eq!(other.offsets().log_end, Offset(0));
        other.become_follower();
        let a = other
            .append_replica(batches[0].as_bytes().clone())
            .await
            .expect("a follower's log takes it");
        a.durable.await.expect("durable");
        assert_eq!(other.offsets().log_end, batches[1].base_offset());
        leader.close().await.expect("close");
        other.close().await.expect("close");
    });
}

#[test]
fn append_replica_refuses_gaps_overlaps_and_corruption() {
    let leader_dir = tempfile::tempdir().expect("tempdir");
    let follower_dir = tempfile::tempdir().expect("tempdir");
    run(async {
        let leader = PartitionLog::open(leader_dir.path(), config())
            .await
            .expect("open");
        let follower = PartitionLog::open(follower_dir.path(), config())
            .await
            .expect("open");
        leader.become_leader(3).await.expect("leader");
        for tag in 0..6 {
            let _ = leader.append(batch(tag)).await.expect("append");
        }
        let batches = all_batches(&leader).await;
        for b in &batches[..3] {
            let a = follower
                .append_replica(b.as_bytes().clone())
                .await
                .expect("replica append");
            assert_eq!(a.base_offset, b.base_offset());
            a.durable.await.expect("durable");
        }
        let before = bytes_of(&all_batches(&follower).await);
        let end = follower.offsets().log_end;
        // A gap.
        let err = follower
            .append_replica(batches[4].as_bytes().clone())
            .await
            .err()
            .expect("gap refused");
        assert!(
            matches!(err, LogError::NonContiguous { expected, got }
                if expected == end && got == batches[4].base_offset()),
            "{err}"
        );
        // An overlap.
        let err = follower
            .append_replica(batches[1].as_bytes().clone())
            .await
            .err()
            .expect("overlap refused");
        assert!(matches!(err, LogError::NonContiguous { .. }), "{err}");
        // A corrupt batch (a flipped bit in a record).
        let mut bad = BytesMut::from(batches[3].as_bytes().as_ref());
        let last = bad.len() - 1;
        bad[last] ^= 0x01;
        let err = follower
            .append_replica(bad.freeze())
            .await
            .err()
            .expect("corrupt refused");
        assert!(
            matches!(
                err,
                LogError::InvalidBatch(sluice_proto::DecodeError::CrcMismatch { .. })
            ),
            "{err}"
        );
        assert_eq!(follower.offsets().log_end, end);
        assert_eq!(bytes_of(&all_batches(&follower).await), before);
        // The follower kept offsets and epochs as they were.
        let a = follower
            .append_replica(batches[3].as_bytes().clone())
            .await
            .expect("next batch");
        a.durable.await.expect("durable");
        assert_eq!(follower.epoch_entries(), leader.epoch_entries());
        assert_eq!(
            bytes_of(&all_batches(&follower).await),
            bytes_of(&batches[..4])
        );
        leader.close().await.expect("close");
        follower.close().await.expect("close");
    });
}

// ---------------------------------------------------------------------------------------
// Truncation.

#[test]
fn truncate_to_cuts_whole_batches_across_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    run(async {
        let log = PartitionLog::open(dir.path(), config())
            .await
            .expect("open");
        log.become_leader(1).await.expect("leader");
        for tag in 0..40 {
            let _ = log.append(batch(tag)).await.expect("append");
        }
        log.become_leader(2).await.expect("leader");
        for tag in 40..80 {
            let _ = log.append(batch(tag)).await.expect("append");
        }
        assert!(log.segment_bases().len() > 3, "several segments");
        let before = all_batches(&log).await;
        let end = log.offsets().log_end;
        // At or after the end: nothing happens.
        assert_eq!(log.truncate_to(end).await.expect("no-op"), end);
        assert_eq!(
            log.truncate_to(Offset(end.get() + 10))
                .await
                .expect("no-op"),
            end
        );
        // Inside a multi-record batch: the whole batch goes.
        let straddling = before
            .iter()
            .enumerate()
            .position(|(i, b)| {
                b.next_offset().get() - b.base_offset().get() >= 2 && i > before.len() / 2
            })
            .expect("a multi-record batch");
        let cut = Offset(before[straddling].base_offset().get() + 1);
        assert!(
            log.segment_bases().len() > 2,
            "several segments before the cut"
        );
        let new_end = log.truncate_to(cut).await.expect("truncate");
        assert_eq!(new_end, before[straddling].base_offset());
        assert!(
            log.segment_bases().len() > 1,
            "segments left before the cut"
        );
        assert_eq!(log.offsets().log_end, new_end);
        assert_eq!(log.offsets().durable_end, new_end);
        assert_eq!(
            bytes_of(&all_batches(&log).await),
            bytes_of(&before[..straddling])
        );
        check_epochs_match(&log).await;
        // Reads at and past the new end behave as at any end.
        assert!(log.read(new_end, 1 << 20).await.expect("read").is_empty());
        assert!(matches!(
            log.read(Offset(new_end.get() + 1), 1 << 20).await,
            Err(LogError::OffsetOutOfRange { .. })
        ));
        // Appends continue at the new end, under a new epoch.
        log.become_leader(3).await.expect("leader");
        let a = log.append(batch(500)).await.expect("append");
        assert_eq!(a.base_offset, new_end);
        a.durable.await.expect("durable");
        let expected = all_batches(&log).await;
        check_epochs_match(&log).await;
        // Deep truncation into the first segment, to a segment base, then reopen.
        let second_base = log.segment_bases()[1];
        let new_end = log.truncate_to(second_base).await.expect("truncate");
        assert_eq!(new_end, second_base);
        let kept = expected
            .iter()
            .take_while(|b| b.next_offset() <= second_base)
            .count();
        assert_eq!(
            bytes_of(&all_batches(&log).await),
            bytes_of(&expected[..kept])
        );
        assert_eq!(log.segment_bases().len(), 1);
        log.close().await.expect("close");
        let log = PartitionLog::open(dir.path(), config())
            .await
            .expect("reopen");
        assert_eq!(log.offsets().log_end, second_base);
        assert_eq!(
            bytes_of(&check_epochs_match(&log).await),
            bytes_of(&expected[..kept])
        );
        assert_eq!(
            log.epoch_entries(),
            vec![EpochEntry {
                epoch: 1,
                start_offset: Offset(0)
            }]
        );
        // Down to the log start: empty.
        assert_eq!(
            log.truncate_to(Offset(0)).await.expect("truncate"),
            Offset(0)
        );
        assert!(all_batches(&log).await.is_empty());
        assert!(log.epoch_entries().is_empty());
        let a = log.append(batch(900)).await.expect("append");
        assert_eq!(a.base_offset, Offset(0));
        a.durable.await.expect("durable");
        log.close().await.expect("close");
    });
}

#[test]
fn truncate_fully_and_start_at_starts_an_empty_log_past_the_old_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    run(async {
        let log = PartitionLog::open(dir.path(), config())
            .await
            .expect("open");
        log.become_leader(2).await.expect("leader");
        for tag in 0..60 {
            let _ = log.append(batch(tag)).await.expect("append");
        }
        assert!(log.segment_bases().len() > 2);
        log.set_high_watermark(Offset(5));
        log.become_follower();
        log.truncate_fully_and_start_at(Offset(1_000))
            .await
            .expect("start over");
        let offsets = log.offsets();
        assert_eq!(
            (offsets.log_start, offsets.log_end),
            (Offset(1_000), Offset(1_000))
        );
        assert_eq!(offsets.high_watermark, Offset(1_000));
        assert_eq!(log.segment_bases(), vec![Offset(1_000)]);
        assert!(log.epoch_entries().is_empty());
        assert!(
            log.read(Offset(1_000), 1 << 20)
                .await
                .expect("read")
                .is_empty()
        );
        assert!(matches!(
            log.read(Offset(10), 1 << 20).await,
            Err(LogError::OffsetOutOfRange { .. })
        ));
        // The leader's batches from its log start on.
        let mut expected = Vec::new();
        let mut base = 1_000;
        for tag in 100..110 {
            let mut b = batch(tag);
            sluice_proto::stamp_base_offset(&mut b, Offset(base));
            sluice_proto::stamp_leader_epoch(&mut b, 7);
            let a = log
                .append_replica(b.clone().freeze())
                .await
                .expect("replica append");
            a.durable.await.expect("durable");
            base = a.last_offset.get() + 1;
            expected.push(b.to_vec());
        }
        assert_eq!(
            log.epoch_entries(),
            vec![EpochEntry {
                epoch: 7,
                start_offset: Offset(1_000)
            }]
        );
        log.close().await.expect("close");
        let log = PartitionLog::open(dir.path(), config())
            .await
            .expect("reopen");
        assert_eq!(log.offsets().log_start, Offset(1_000));
        assert_eq!(log.offsets().log_end, Offset(base));
        assert_eq!(bytes_of(&check_epochs_match(&log).await), expected);
        log.close().await.expect("close");
    });
}

/// A `truncate-intent` file as the log writes it (format in `storage/src/epoch.rs`).
fn intent_bytes(new_end: Offset) -> Vec<u8> {
    let mut out = b"SLTR".to_vec();
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&new_end.get().to_le_bytes());
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// The crash window after the segments were cut but before the checkpoints were rewritten:
/// the reopen finds the intent and trims the stale checkpoints (an epoch that started at the
/// new end, a high watermark above it).
#[test]
fn reopen_with_an_intent_trims_stale_checkpoints() {
    let dir = tempfile::tempdir().expect("tempdir");
    let warnings = Warnings::default();
    let _guard = tracing::subscriber::set_default(warnings.clone());
    run(async {
        let log = PartitionLog::open(dir.path(), config())
            .await
            .expect("open");
        log.become_leader(1).await.expect("leader");
        for tag in 0..10 {
            let _ = log.append(batch(tag)).await.expect("append");
        }
        let cut = log.offsets().log_end;
        log.become_leader(2).await.expect("leader");
        for tag in 10..20 {
            let a = log.append(batch(tag)).await.expect("append");
            a.durable.await.expect("durable");
        }
        log.set_high_watermark(log.offsets().log_end);
        log.close().await.expect("close");
        let stale_epochs = std::fs::read(dir.path().join(LEADER_EPOCH_CHECKPOINT)).expect("read");
        let stale_hw = std::fs::read(dir.path().join(HW_CHECKPOINT)).expect("read");
        let log = PartitionLog::open(dir.path(), config())
            .await
            .expect("reopen");
        assert_eq!(log.truncate_to(cut).await.expect("truncate"), cut);
        log.close().await.expect("close");
        // As if killed after the segments were cut, before the checkpoints were rewritten.
        std::fs::write(dir.path().join(LEADER_EPOCH_CHECKPOINT), &stale_epochs).expect("write");
        std::fs::write(dir.path().join(HW_CHECKPOINT), &stale_hw).expect("write");
        std::fs::write(dir.path().join("truncate-intent"), intent_bytes(cut)).expect("write");
        let log = PartitionLog::open(dir.path(), config())
            .await
            .expect("reopen");
        assert_eq!(
            warnings.containing("finishing a truncation interrupted by a crash"),
            1
        );
        assert_eq!(log.offsets().log_end, cut);
        assert_eq!(
            log.epoch_entries(),
            vec![EpochEntry {
                epoch: 1,
                start_offset: Offset(0)
            }]
        );
        assert_eq!(log.high_watermark(), cut);
        assert!(!dir.path().join("truncate-intent").exists());
        check_epochs_match(&log).await;
        log.close().await.expect("close");
        // The checkpoints on disk were rewritten too.
        let log = PartitionLog::open(dir.path(), config())
            .await
            .expect("reopen");
        assert_eq!(log.epoch_entries().len(), 1);
        assert_eq!(log.high_watermark(), cut);
        log.close().await.expect("close");
    });
}

#[test]
fn truncate_below_the_log_start_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    run(async {
        let cfg = LogConfig {
            retention_bytes: Some(20 * 1024),
            ..config()
        };
        let log = PartitionLog::open(dir.path(), cfg).await.expect("open");
        log.become_leader(1).await.expect("leader");
        for tag in 0..60 {
            let _ = log.append(batch(tag)).await.expect("append");
        }
        log.become_leader(4).await.expect("leader");
        for tag in 60..120 {
            let _ = log.append(batch(tag)).await.expect("append");
        }
        log.roll_now().await.expect("roll");
        let start = within(30, "retention", log.enforce_retention(i64::MAX))
            .await
            .expect("retention");
        assert!(start > Offset(0), "retention moved the log start");
        // The epoch cache starts at the log start now.
        let entries = log.epoch_entries();
        assert_eq!(entries[0].start_offset, start.max(entries[0].start_offset));
        assert!(entries.iter().all(|e| e.start_offset >= start));
        let end = log.offsets().log_end;
        let err = log
            .truncate_to(Offset(start.get() - 1))
            .await
            .expect_err("refused");
        assert!(
            matches!(err, LogError::OffsetOutOfRange { requested, .. }
                if requested.get() == start.get() - 1),
            "{err}"
        );
        assert_eq!(log.offsets().log_end, end);
        check_epochs_match(&log).await;
        log.close().await.expect("close");
    });
}

// ---------------------------------------------------------------------------------------
// Damaged checkpoints.

#[test]
fn corrupt_epoch_checkpoint_is_rebuilt_from_the_batches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let warnings = Warnings::default();
    let _guard = tracing::subscriber::set_default(warnings.clone());
    run(async {
        let log = PartitionLog::open(dir.path(), config())
            .await
            .expect("open");
        for (epoch, tags) in [(1, 0..10), (3, 10..12), (7, 12..30)] {
            log.become_leader(epoch).await.expect("leader");
            for tag in tags {
                let _ = log.append(batch(tag)).await.expect("append");
            }
        }
        let entries = log.epoch_entries();
        log.close().await.expect("close");
        let path = dir.path().join(LEADER_EPOCH_CHECKPOINT);
        let mut bytes = std::fs::read(&path).expect("checkpoint");
        bytes[12] ^= 0x10;
        std::fs::write(&path, &bytes).expect("damage");
        let log = PartitionLog::open(dir.path(), config())
            .await
            .expect("reopen");
        assert_eq!(log.epoch_entries(), entries);
        assert_eq!(warnings.containing("leader-epoch checkpoint unusable"), 1);
        log.close().await.expect("close");
        // It was written again: the next open is quiet.
        let log = PartitionLog::open(dir.path(), config())
            .await
            .expect("reopen");
        assert_eq!(log.epoch_entries(), entries);
        assert_eq!(warnings.containing("leader-epoch checkpoint unusable"), 1);
        log.close().await.expect("close");
    });
}

#[test]
fn corrupt_hw_checkpoint_restarts_the_high_watermark_at_the_log_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let warnings = Warnings::default();
    let _guard = tracing::subscriber::set_default(warnings.clone());
    run(async {
        let log = PartitionLog::open(dir.path(), config())
            .await
            .expect("open");
        for tag in 0..10 {
            let a = log.append(batch(tag)).await.expect("append");
            a.durable.await.expect("durable");
        }
        assert_eq!(log.set_high_watermark(Offset(7)), Offset(7));
        log.close().await.expect("close");
        let path = dir.path().join(HW_CHECKPOINT);
        let mut bytes = std::fs::read(&path).expect("hw checkpoint");
        bytes[8] ^= 0x04;
        std::fs::write(&path, &bytes).expect("damage");
        let log = PartitionLog::open(dir.path(), config())
            .await
            .expect("reopen");
        assert_eq!(log.high_watermark(), Offset(0));
        assert_eq!(warnings.containing("hw-checkpoint unusable"), 1);
        log.close().await.expect("close");
    });
}

// ---------------------------------------------------------------------------------------
// High watermark.

#[test]
fn high_watermark_is_capped_monotonic_lowered_by_truncation_and_persisted() {
    let dir = tempfile::tempdir().expect("tempdir");
    run(async {
        let cfg = LogConfig {
            flush: FlushPolicy::EveryBatch,
            ..config()
        };
        let log = PartitionLog::open(dir.path(), cfg.clone())
            .await
            .expect("open");
        // Never told: the high watermark is the durable end (single-node behaviour).
        let mut last = None;
        for tag in 0..12 {
            let a = log.append(batch(tag)).await.expect("append");
            last = Some(a.durable);
        }
        last.expect("appended").await.expect("durable");
        let offsets = log.offsets();
        assert_eq!(offsets.high_watermark, offsets.durable_end);
        let end = offsets.log_end;
        // Capped at the durable end, and monotonic.
        assert_eq!(log.set_high_watermark(Offset(end.get() + 100)), end);
        assert_eq!(log.set_high_watermark(Offset(3)), end);
        log.close().await.expect("close");
        let log = PartitionLog::open(dir.path(), cfg.clone())
            .await
            .expect("reopen");
        assert_eq!(log.high_watermark(), end);
        // Now explicit: new appends do not move it.
        let a = log.append(batch(50)).await.expect("append");
        a.durable.await.expect("durable");
        assert_eq!(log.high_watermark(), end);
        // Reads for consumers stop below it.
        let visible = log
            .read_until(Offset(0), log.high_watermark(), 1 << 20)
            .await
            .expect("read");
        assert_eq!(visible.last().expect("batches").next_offset(), end);
        // A truncation below it lowers it, at once on disk too.
        let new_end = log.truncate_to(Offset(4)).await.expect("truncate");
        assert!(new_end <= Offset(4));
        assert_eq!(log.high_watermark(), new_end);
        drop(log);
        let log = PartitionLog::open(dir.path(), cfg).await.expect("reopen");
        assert_eq!(log.high_watermark(), new_end);
        assert_eq!(log.offsets().log_end, new_end);
        log.close().await.expect("close");
    });
}

// ---------------------------------------------------------------------------------------
// The replication model.

#[derive(Debug, Clone)]
enum Op {
    /// The leader appends this many batches.
    Append(usize),
    /// A follower (index among the non-leaders) fetches up to this many batches.
    Replicate(usize, usize),
    /// This node becomes leader with the next epoch and appends this many batches (≥ 1).
    Elect(usize, usize),
    /// Close and reopen this node's log.
    Reopen(usize),
    /// Roll this node's active segment.
    Roll(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1usize..6).prop_map(Op::Append),
        4 => (0usize..2, 1usize..12).prop_map(|(f, n)| Op::Replicate(f, n)),
        2 => (0usize..3, 1usize..4).prop_map(|(n, k)| Op::Elect(n, k)),
        1 => (0usize..3).prop_map(Op::Reopen),
        1 => (0usize..3).prop_map(Op::Roll),
    ]
}

const NODES: usize = 3;

struct Cluster {
    dirs: Vec<tempfile::TempDir>,
    logs: Vec<Option<PartitionLog>>,
    leader: usize,
    epoch: u32,
    tag: u64,
    /// Batches known to be on every node, with their bytes: never lost.
    committed: Vec<Vec<u8>>,
}

impl Cluster {
    fn log(&self, n: usize) -> &PartitionLog {
        self.logs[n].as_ref().expect("open")
    }

    async fn append(&mut self, count: usize) {
        for _ in 0..count {
            let tag = self.tag;
            self.tag += 1;
            let a = self
                .log(self.leader)
                .append(batch(tag))
                .await
                .expect("leader append");
            a.durable.await.expect("durable");
        }
    }

    /// The follower asks the leader where its latest epoch ends and truncates its divergent
    /// suffix (KIP-279: the smaller of the leader's and its own end of the answered epoch),
    /// until its latest epoch is the leader's answer and its end is within it.
    async fn reconcile(&self, f: usize) {
        let (leader, follower) = (self.log(self.leader), self.log(f));
        for _ in 0..64 {
            let Some(fe) = follower.latest_epoch() else {
                return;
            };
            let fend = follower.offsets().log_end;
            let target = match leader.end_offset_for_epoch(fe) {
                None => follower.offsets().log_start,
                Some((e, lend)) if e == fe && lend >= fend => return,
                Some((e, lend)) => {
                    let own = follower
                        .end_offset_for_epoch(e)
                        .map_or(Offset(0), |(_, o)| o);
                    lend.min(own).min(fend)
                }
            };
            assert!(
                target < fend || follower.latest_epoch() != Some(fe),
                "no progress"
            );
            follower.truncate_to(target).await.expect("truncate");
        }
        panic!("reconciliation did not converge");
    }

    async fn replicate(&self, f: usize, max: usize) {
        self.reconcile(f).await;
        let (leader, follower) = (self.log(self.leader), self.log(f));
        let from = follower.offsets().log_end;
        let batches = leader.read(from, 1 << 20).await.expect("leader read");
        for b in batches.into_iter().take(max) {
            let a = follower
                .append_replica(b.as_bytes().clone())
                .await
                .expect("replica append");
            a.durable.await.expect("durable");
        }
    }

    async fn record_committed(&mut self) {
        let mut common: Option<Vec<Vec<u8>>> = None;
        for n in 0..NODES {
            let bytes = bytes_of(&all_batches(self.log(n)).await);
            common = Some(match common {
                None => bytes,
                Some(c) => c
                    .into_iter()
                    .zip(bytes)
                    .take_while(|(a, b)| a == b)
                    .map(|(a, _)| a)
                    .collect(),
            });
        }
        let common = common.expect("nodes");
        if common.len() > self.committed.len() {
            assert_eq!(
                common[..self.committed.len()],
                self.committed[..],
                "committed changed"
            );
            self.committed = common;
        }
    }

    async fn apply(&mut self, op: &Op) {
        match *op {
            Op::Append(n) => self.append(n).await,
            Op::Replicate(f, n) => {
                let f = (self.leader + 1 + f) % NODES;
                self.replicate(f, n).await;
            }
            Op::Elect(node, k) => {
                self.log(self.leader).become_follower();
                self.leader = node;
                self.epoch += 1;
                self.log(node)
                    .become_leader(self.epoch)
                    .await
                    .expect("become leader");
                self.append(k).await;
            }
            Op::Reopen(n) => {
                let log = self.logs[n].take().expect("open");
                let stamping = log.leader_epoch();
                log.close().await.expect("close");
                let log = PartitionLog::open(self.dirs[n].path(), config())
                    .await
                    .expect("reopen");
                if let Some(epoch) = stamping {
                    log.become_leader(epoch).await.expect("resume leading");
                }
                self.logs[n] = Some(log);
            }
            Op::Roll(n) => self.log(n).roll_now().await.expect("roll"),
        }
        self.record_committed().await;
    }

    /// Every follower catches up fully; then all logs and epoch caches are identical and
    /// the committed batches are all there.
    async fn converge_and_check(&mut self) {
        for f in (0..NODES).filter(|&f| f != self.leader) {
            loop {
                let before = self.log(f).offsets().log_end;
                self.replicate(f, usize::MAX).await;
                if self.log(f).offsets().log_end == before
                    && before == self.log(self.leader).offsets().log_end
                {
                    break;
                }
            }
        }
        let leader = bytes_of(&check_epochs_match(self.log(self.leader)).await);
        for n in 0..NODES {
            let log = self.log(n);
            let bytes = bytes_of(&check_epochs_match(log).await);
            assert_eq!(
                bytes, leader,
                "node {n} differs from the leader {}",
                self.leader
            );
            assert_eq!(
                log.epoch_entries(),
                self.log(self.leader).epoch_entries(),
                "epoch caches of node {n} and leader {}",
                self.leader
            );
        }
        assert!(leader.len() >= self.committed.len());
        assert_eq!(
            leader[..self.committed.len()],
            self.committed[..],
            "a committed batch was lost"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn followers_and_old_leaders_converge(ops in proptest::collection::vec(op(), 1..40)) {
        run(async {
            let dirs: Vec<_> = (0..NODES).map(|_| tempfile::tempdir().expect("tempdir")).collect();
            let mut logs = Vec::new();
            for d in &dirs {
                logs.push(Some(PartitionLog::open(d.path(), config()).await.expect("open")));
            }
            let mut c = Cluster { dirs, logs, leader: 0, epoch: 1, tag: 0, committed: Vec::new() };
            // Every leader appends at least once before the next election: an epoch with no
            // batch is in its leader's cache only, never in a follower's (as in Kafka).
            c.log(0).become_leader(1).await.expect("leader");
            c.append(1).await;
            for op in &ops {
                c.apply(op).await;
            }
            c.converge_and_check().await;
            // Reopen preserves all of it.
            for n in 0..NODES {
                c.apply(&Op::Reopen(n)).await;
            }
            c.converge_and_check().await;
            for log in c.logs.iter_mut() {
                log.take().expect("open").close().await.expect("close");
            }
        });
    }
}

/// The scenario the model is about, spelled out: an old leader's unreplicated suffix is cut
/// when it returns as a follower, and it then holds exactly the new leader's log.
#[test]
fn old_leader_truncates_its_divergent_suffix() {
    run(async {
        let dirs: Vec<_> = (0..NODES)
            .map(|_| tempfile::tempdir().expect("tempdir"))
            .collect();
        let mut logs = Vec::new();
        for d in &dirs {
            logs.push(Some(
                PartitionLog::open(d.path(), config()).await.expect("open"),
            ));
        }
        let mut c = Cluster {
            dirs,
            logs,
            leader: 0,
            epoch: 1,
            tag: 0,
            committed: Vec::new(),
        };
        c.log(0).become_leader(1).await.expect("leader");
        c.append(5).await;
        c.replicate(1, usize::MAX).await;
        c.replicate(2, usize::MAX).await;
        let replicated = c.log(1).offsets().log_end;
        assert_eq!(c.log(0).offsets().log_end, replicated);
        // Node 0 appends more that nobody fetches, then node 1 takes over at epoch 2.
        c.append(3).await;
        let divergent_end = c.log(0).offsets().log_end;
        assert!(divergent_end > replicated);
        c.apply(&Op::Elect(1, 2)).await;
        assert_eq!(c.log(1).end_offset_for_epoch(1), Some((1, replicated)));
        c.reconcile(0).await;
        assert_eq!(
            c.log(0).offsets().log_end,
            replicated,
            "the divergent suffix is cut"
        );
        assert_eq!(
            c.log(0).epoch_entries(),
            vec![EpochEntry {
                epoch: 1,
                start_offset: Offset(0)
            }]
        );
        c.converge_and_check().await;
        assert_eq!(
            c.log(0).epoch_entries(),
            vec![
                EpochEntry {
                    epoch: 1,
                    start_offset: Offset(0)
                },
                EpochEntry {
                    epoch: 2,
                    start_offset: replicated
                },
            ]
        );
        for log in c.logs.iter_mut() {
            log.take().expect("open").close().await.expect("close");
        }
    });
}

// ---------------------------------------------------------------------------------------
// Crash during truncation.

/// One batch in the child's log, as the parent knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Known {
    base: u64,
    next: u64,
    tag: u64,
    epoch: u32,
}

/// The bytes the log must hold for `k`.
fn expected_bytes(k: &Known) -> Vec<u8> {
    let mut bytes = batch_for(k.tag);
    sluice_proto::stamp_base_offset(&mut bytes, Offset(k.base));
    sluice_proto::stamp_leader_epoch(&mut bytes, k.epoch);
    bytes.to_vec()
}

/// A truncation in progress when the child was killed.
#[derive(Debug, Clone, Copy)]
enum Pending {
    /// `T` printed, `D` not: the new end it would give.
    To(u64),
    /// `F` printed, `G` not: the offset the log would start over at.
    FullyAt(u64),
}

/// Applies the child's output to `known` (and `start`, the log start); returns a
/// truncation in progress at the kill, and the tag the child's next append would have used.
fn apply_lines(
    known: &mut Vec<Known>,
    start: &mut u64,
    out: &str,
    first_tag: u64,
) -> (Option<Pending>, u64) {
    let mut pending = None;
    let mut next_tag = first_tag;
    for line in out.lines().skip(1) {
        if !out.ends_with('\n') && out.lines().last() == Some(line) {
            break; // an unterminated last line: the kill landed in its write
        }
        let f: Vec<&str> = line.split(' ').collect();
        match f[0] {
            "L" => {}
            "A" => {
                let k = Known {
                    base: f[1].parse().expect("base"),
                    next: f[2].parse::<u64>().expect("last") + 1,
                    tag: f[3].parse().expect("tag"),
                    epoch: f[4].parse().expect("epoch"),
                };
                assert_eq!(
                    k.base,
                    known.last().map_or(k.base, |l| l.next),
                    "child appended out of order"
                );
                next_tag = k.tag + 1;
                known.push(k);
            }
            "T" => {
                let cut: u64 = f[1].parse().expect("cut");
                let keep = known.iter().take_while(|k| k.next <= cut).count();
                let end = known.last().map_or(*start, |l| l.next);
                pending = Some(Pending::To(
                    known.get(keep).map_or(cut.min(end), |k| k.base),
                ));
            }
            "D" => {
                let new_end: u64 = f[1].parse().expect("new end");
                known.retain(|k| k.next <= new_end);
                assert_eq!(known.last().map_or(new_end, |l| l.next), new_end);
                pending = None;
            }
            "F" => pending = Some(Pending::FullyAt(f[1].parse().expect("start"))),
            "G" => {
                let Some(Pending::FullyAt(at)) = pending else {
                    panic!("G without F");
                };
                known.clear();
                *start = at;
                pending = None;
            }
            other => panic!("unexpected child line {other:?}"),
        }
    }
    (pending, next_tag)
}

#[test]
fn sigkill_during_truncation_leaves_the_old_or_the_truncated_log() {
    let iterations: usize = std::env::var("SLUICE_TRUNCATE_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let seed: u64 = std::env::var("SLUICE_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_nanos() as u64
        });
    eprintln!("truncation crash test: {iterations} iterations, SLUICE_CRASH_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut known: Vec<Known> = Vec::new();
    let mut start = 0u64;
    let (mut mid_truncation, mut finished_at_reopen, mut full) = (0, 0, 0);
    for i in 0..iterations {
        let first_tag = (i as u64 + 1) << 32;
        let out = run_child(dir.path(), first_tag, rng.random(), rng.random_range(5..80));
        let (pending, mut next_tag) = apply_lines(&mut known, &mut start, &out, first_tag);
        let old_end = known.last().map_or(start, |k| k.next);
        run(async {
            let log = PartitionLog::open(dir.path(), crash_config())
                .await
                .expect("reopen after SIGKILL");
            let batches = check_epochs_match(&log).await;
            let end = log.offsets().log_end.get();
            let log_start = log.offsets().log_start.get();
            if let Some(Pending::FullyAt(at)) = pending {
                mid_truncation += 1;
                full += 1;
                // Old, or empty at the new start.
                if log_start == at && end == at {
                    finished_at_reopen += 1;
                    known.clear();
                    start = at;
                    assert!(log.epoch_entries().is_empty());
                } else {
                    assert_eq!(
                        (log_start, end),
                        (start, old_end),
                        "neither old nor started over at {at}"
                    );
                }
            } else if let Some(Pending::To(new_end)) = pending {
                mid_truncation += 1;
                // Old or truncated, nothing else (the reopen finishes a begun truncation).
                assert!(
                    end == old_end || end == new_end,
                    "end {end}: neither old {old_end} nor truncated {new_end}"
                );
                if end == new_end && new_end != old_end {
                    finished_at_reopen += 1;
                }
                known.retain(|k| k.next <= end);
            } else {
                assert!(
                    end >= old_end,
                    "acknowledged batches lost: end {end} < {old_end}"
                );
            }
            for (j, b) in batches.iter().enumerate() {
                if let Some(k) = known.get(j) {
                    assert_eq!(
                        b.as_bytes().as_ref(),
                        &expected_bytes(k)[..],
                        "batch {j} at {}",
                        k.base
                    );
                } else {
                    // Written but not acknowledged before the kill: the child's next tag.
                    let k = Known {
                        base: b.base_offset().get(),
                        next: b.next_offset().get(),
                        tag: next_tag,
                        epoch: b.leader_epoch(),
                    };
                    next_tag += 1;
                    assert_eq!(
                        b.as_bytes().as_ref(),
                        &expected_bytes(&k)[..],
                        "unacknowledged batch at {}",
                        k.base
                    );
                    known.push(k);
                }
            }
            assert_eq!(known.len(), batches.len());
            assert_eq!(log.offsets().log_start.get(), start);
            log.close().await.expect("close");
        });
    }
    eprintln!(
        "truncation crash test: {mid_truncation} of {iterations} kills inside a truncation \
         ({full} of them full), {finished_at_reopen} truncations finished by the reopen"
    );
    assert!(mid_truncation > 0, "no kill landed inside a truncation");
}

/// Runs the child in `truncate` mode, kills it `delay_ms` after it is ready, returns its
/// stdout.
fn run_child(dir: &Path, first_tag: u64, seed: u64, delay_ms: u64) -> String {
    let mut child = Command::new(CHILD)
        .arg(dir)
        .arg(first_tag.to_string())
        .arg("truncate")
        .arg(seed.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the crash child");
    let mut stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        let mut sent = false;
        loop {
            match stdout.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => panic!("child stdout: {e}"),
            }
            if !sent && out.starts_with(b"ready\n") {
                sent = true;
                let _ = tx.send(());
            }
        }
        out
    });
    let ready = rx.recv_timeout(Duration::from_secs(20)).is_ok();
    if ready {
        std::thread::sleep(Duration::from_millis(delay_ms));
    }
    let killed_at = Instant::now();
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("wait");
    let out = String::from_utf8(reader.join().expect("reader")).expect("utf-8");
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert!(ready, "child never became ready: {err}");
    assert_eq!(
        status.signal(),
        Some(libc_sigkill()),
        "child ended by itself: {err}"
    );
    assert!(killed_at.elapsed() < Duration::from_secs(10));
    out
}

fn libc_sigkill() -> i32 {
    9
}
