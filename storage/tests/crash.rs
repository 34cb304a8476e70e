//! Crash test: a child process appends with per-batch fdatasync from several tasks and is
//! SIGKILLed at a random moment, again and again, on the same log directory. After every
//! kill the log is reopened here and must hold every batch the child acknowledged, intact
//! and at its acknowledged offsets, in a gap-free sequence of batches that ends exactly at
//! `log_end`; and nothing recovered earlier may change.
//!
//! Environment: `SLUICE_CRASH_ITERATIONS` (default 200), `SLUICE_CRASH_SEED` (default: from
//! the clock; printed, so a run's kill schedule can be replayed).
#![allow(missing_docs)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sluice_proto::{Offset, RecordBatch};
use sluice_storage::PartitionLog;

use common::run;
use common::workload::{batch_for, config};

const CHILD: &str = env!("CARGO_BIN_EXE_sluice-log-crash-child");
const ITERATIONS_DEFAULT: usize = 200;
/// Kill delay after the child reports the log open.
const KILL_DELAY_MS_MIN: u64 = 5;
const KILL_DELAY_MS_MAX: u64 = 60;
/// One kill in this many lands while the child is still starting up or recovering.
const EARLY_KILL_ONE_IN: u32 = 8;
/// Longest the child may take to open the log.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Bytes asked for per read while walking the log.
const WALK_READ_BYTES: usize = 4 << 20;
/// Tags of iteration `i` are `(i + 1) << TAG_ITERATION_SHIFT` and up.
const TAG_ITERATION_SHIFT: u32 = 32;

/// The exact bytes the log must hold for the batch tagged `tag` stamped at `base`.
fn expected_bytes(tag: u64, base: Offset) -> BytesMut {
    let mut bytes = batch_for(tag);
    sluice_proto::stamp_base_offset(&mut bytes, base);
    bytes
}

/// The tag in the key of a batch's first record (`k{tag}-0`).
fn tag_of(batch: &RecordBatch) -> u64 {
    let record = batch
        .records()
        .expect("records")
        .next()
        .expect("a batch has a record")
        .expect("record decodes");
    let key = record.key.expect("child batches have keys");
    let key = std::str::from_utf8(&key).expect("utf-8 key");
    key.strip_prefix('k')
        .and_then(|k| k.strip_suffix("-0"))
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("not a child batch key: {key:?}"))
}

/// A batch acknowledged by the child: the line `base last tag`.
#[derive(Debug, Clone, Copy)]
struct Ack {
    base: Offset,
    last: Offset,
    tag: u64,
}

/// A batch found in the log after a recovery, remembered to check it never changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    base: Offset,
    next: Offset,
    crc: u32,
    len: usize,
}

/// What the library reported while recovering (its tracing events).
#[derive(Default)]
struct RecoveryEvents {
    truncations: AtomicU64,
    empty_segments_removed: AtomicU64,
    indexes_rebuilt: AtomicU64,
    other_warnings: AtomicU64,
}

/// A tracing subscriber that counts the log's recovery events.
struct CountEvents(Arc<RecoveryEvents>);

struct MessageOf(String);

impl tracing::field::Visit for MessageOf {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl tracing::Subscriber for CountEvents {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut message = MessageOf(String::new());
        event.record(&mut message);
        let m = &message.0;
        let counter = if m.contains("truncating the last segment") {
            &self.0.truncations
        } else if m.contains("removing empty last segment") {
            &self.0.empty_segments_removed
        } else if m.contains("rebuilt segment index") {
            &self.0.indexes_rebuilt
        } else if *event.metadata().level() <= tracing::Level::WARN {
            eprintln!("recovery warning: {m}");
            &self.0.other_warnings
        } else {
            return;
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// What one run of the child printed and how it ended.
struct ChildRun {
    acks: Vec<Ack>,
    /// How long after the spawn the child reported the log open; `None` if killed before.
    ready_after: Option<Duration>,
}

/// Runs the child on `dir` with tags from `first_tag`, kills it, and returns the batches it
/// acknowledged (complete lines only).
fn run_child(dir: &Path, first_tag: u64, rng: &mut StdRng, startup: Duration) -> ChildRun {
    let started = Instant::now();
    let mut child = Command::new(CHILD)
        .arg(dir)
        .arg(first_tag.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the crash child");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let (ready_tx, ready_rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut chunk = [0u8; 64 * 1024];
        let mut ready_sent = false;
        loop {
            match stdout.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => panic!("reading the child's stdout: {e}"),
            }
            if !ready_sent && out.starts_with(b"ready\n") {
                ready_sent = true;
                let _ = ready_tx.send(Instant::now());
            }
        }
        out
    });
    let early = rng.random_ratio(1, EARLY_KILL_ONE_IN);
    let delay_ms = rng.random_range(KILL_DELAY_MS_MIN..=KILL_DELAY_MS_MAX);
    let mut ready_at = None;
    if early {
        // Somewhere in start-up: exec, runtime, opening and recovering the log.
        let at = Duration::from_micros(rng.random_range(0..=startup.as_micros() as u64));
        std::thread::sleep(at.saturating_sub(started.elapsed()));
    } else {
        let ready = ready_rx.recv_timeout(READY_TIMEOUT);
        ready_at = ready.ok();
        if ready_at.is_none() {
            let _ = child.kill();
            let status = child.wait().expect("wait for the child");
            let mut err = String::new();
            let _ = child
                .stderr
                .take()
                .expect("stderr")
                .read_to_string(&mut err);
            panic!("child never reported the log open ({status}): {err}");
        }
        std::thread::sleep(Duration::from_millis(delay_ms));
    }
    if let Some(status) = child.try_wait().expect("poll the child") {
        let mut err = String::new();
        let _ = child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut err);
        panic!("child exited by itself ({status}) instead of being killed: {err}");
    }
    child.kill().expect("SIGKILL the child");
    let status = child.wait().expect("wait for the child");
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "child status {status}"
    );
    let out = reader.join().expect("stdout reader");
    let mut err = String::new();
    let _ = child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err);
    assert!(err.is_empty(), "child wrote to stderr: {err}");

    // Only complete lines count: the kill may cut the last one.
    let text = std::str::from_utf8(&out).expect("utf-8 output");
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    let mut lines = complete.lines();
    let saw_ready = !complete.is_empty();
    let ready_after = if saw_ready {
        let at = ready_at.unwrap_or_else(|| ready_rx.try_recv().expect("the reader saw ready"));
        Some(at.duration_since(started))
    } else {
        None
    };
    if saw_ready {
        assert_eq!(lines.next(), Some("ready"), "first line of the child");
    }
    let acks = lines
        .map(|line| {
            let mut parts = line.split(' ').map(|p| {
                p.parse::<u64>()
                    .unwrap_or_else(|_| panic!("bad child line {line:?}"))
            });
            let (Some(base), Some(last), Some(tag), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                panic!("bad child line {line:?}");
            };
            Ack {
                base: Offset(base),
                last: Offset(last),
                tag,
            }
        })
        .collect();
    ChildRun { acks, ready_after }
}

/// Everything the log holds after a recovery, read back batch by batch.
struct Recovered {
    batches: Vec<RecordBatch>,
    log_end: Offset,
    segments: usize,
    bytes: u64,
}

/// Opens the log, reads it whole, checks its shape, and closes it.
fn reopen_and_read(dir: &Path) -> Recovered {
    run(async {
        let log = PartitionLog::open(dir, config())
            .await
            .unwrap_or_else(|e| panic!("reopen after the kill: {e}"));
        let offsets = log.offsets();
        assert_eq!(
            offsets.log_start,
            Offset(0),
            "nothing deletes segments here"
        );
        assert_eq!(
            offsets.durable_end, offsets.log_end,
            "everything recovered is durable"
        );
        let mut batches = Vec::new();
        let mut next = offsets.log_start;
        while next < offsets.log_end {
            let got = log
                .read(next, WALK_READ_BYTES)
                .await
                .unwrap_or_else(|e| panic!("read at {next} of [0, {}): {e}", offsets.log_end));
            assert!(
                !got.is_empty(),
                "read at {next} below log_end returned nothing"
            );
            for batch in got {
                assert_eq!(batch.base_offset(), next, "gap or overlap in the log");
                next = batch.next_offset();
                batches.push(batch);
            }
        }
        assert_eq!(
            next, offsets.log_end,
            "log_end must fall on the end of the last batch"
        );
        let stats = log.stats();
        log.close().await.expect("close");
        Recovered {
            batches,
            log_end: offsets.log_end,
            segments: stats.segments,
            bytes: stats.bytes,
        }
    })
}

fn seen(batch: &RecordBatch) -> Seen {
    Seen {
        base: batch.base_offset(),
        next: batch.next_offset(),
        crc: batch.header().crc,
        len: batch.len(),
    }
}

#[test]
fn sigkill_during_appends_loses_no_acknowledged_batch() {
    let iterations = std::env::var("SLUICE_CRASH_ITERATIONS")
        .ok()
        .map(|v| {
            v.parse::<usize>()
                .expect("SLUICE_CRASH_ITERATIONS is a number")
        })
        .unwrap_or(ITERATIONS_DEFAULT);
    let seed = std::env::var("SLUICE_CRASH_SEED")
        .ok()
        .map(|v| v.parse::<u64>().expect("SLUICE_CRASH_SEED is a number"))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
        });
    println!("crash test: {iterations} iterations, SLUICE_CRASH_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("log");
    let events = Arc::new(RecoveryEvents::default());

    let test_started = Instant::now();
    // Every batch recovered so far, in order: each recovery must keep them all unchanged.
    let mut log: Vec<Seen> = Vec::new();
    let mut acked_total = 0usize;
    let mut early_kills = 0usize;
    let mut unacked_recovered = 0usize;
    let mut nothing_acked = 0usize;
    let mut reopen_time = Duration::ZERO;
    // How long the child last took to report the log open: the range of early kills.
    let mut startup = Duration::from_millis(5);
    let mut last: Option<Recovered> = None;

    for iteration in 0..iterations {
        let first_tag = (iteration as u64 + 1) << TAG_ITERATION_SHIFT;
        let child = run_child(&dir, first_tag, &mut rng, startup);
        match child.ready_after {
            Some(after) => startup = after,
            None => early_kills += 1,
        }
        nothing_acked += usize::from(child.acks.is_empty());
        acked_total += child.acks.len();

        let reopen_started = Instant::now();
        let recovered = tracing::subscriber::with_default(CountEvents(events.clone()), || {
            reopen_and_read(&dir)
        });
        reopen_time += reopen_started.elapsed();
        let context = format!("iteration {iteration} (seed {seed})");

        // What earlier recoveries found is still there, unchanged.
        assert!(
            recovered.batches.len() >= log.len(),
            "{context}: the log shrank from {} to {} batches",
            log.len(),
            recovered.batches.len()
        );
        for (old, batch) in log.iter().zip(&recovered.batches) {
            assert_eq!(*old, seen(batch), "{context}: an earlier batch changed");
        }
        // Everything new was appended by this child: exactly the batch of its tag.
        let mut new_tags = HashSet::new();
        let mut by_base = BTreeMap::new();
        for batch in &recovered.batches[log.len()..] {
            let tag = tag_of(batch);
            assert!(
                tag >= first_tag && tag < first_tag + (1 << TAG_ITERATION_SHIFT),
                "{context}: batch at {} has tag {tag} of another run",
                batch.base_offset()
            );
            assert!(
                new_tags.insert(tag),
                "{context}: tag {tag} twice in the log"
            );
            assert_eq!(
                batch.as_bytes()[..],
                expected_bytes(tag, batch.base_offset())[..],
                "{context}: batch at {} (tag {tag}) is not what was appended",
                batch.base_offset()
            );
            by_base.insert(batch.base_offset(), (batch.last_offset(), tag));
        }
        // Every acknowledged batch is there, at its offsets.
        let mut acked_next = log.last().map_or(Offset(0), |s| s.next);
        for ack in &child.acks {
            let found = by_base.get(&ack.base).copied();
            assert_eq!(
                found,
                Some((ack.last, ack.tag)),
                "{context}: acknowledged batch {ack:?} missing or different"
            );
            acked_next = acked_next.max(Offset(ack.last.get() + 1));
        }
        if recovered.log_end > acked_next {
            unacked_recovered += 1;
        }
        log = recovered.batches.iter().map(seen).collect();
        last = Some(recovered);
    }

    let last = last.expect("at least one iteration");
    let e = &events;
    println!(
        "crash test summary: {iterations} iterations in {:.1} s (reopen + verify {:.1} s), seed {seed}\n\
         \x20 acknowledged batches: {acked_total}; batches in the log: {}, log_end {}, {} segments, {} bytes\n\
         \x20 kills during start-up/recovery: {early_kills}; runs with no acknowledged batch: {nothing_acked}\n\
         \x20 recoveries that found unacknowledged batches past the last ack: {unacked_recovered} of {iterations}\n\
         \x20 library recovery events: {} tail truncations, {} empty trailing segments removed, {} indexes rebuilt, {} other warnings",
        test_started.elapsed().as_secs_f64(),
        reopen_time.as_secs_f64(),
        last.batches.len(),
        last.log_end,
        last.segments,
        last.bytes,
        e.truncations.load(Ordering::Relaxed),
        e.empty_segments_removed.load(Ordering::Relaxed),
        e.indexes_rebuilt.load(Ordering::Relaxed),
        e.other_warnings.load(Ordering::Relaxed),
    );
    assert!(acked_total > 0, "no batch was ever acknowledged");
}
