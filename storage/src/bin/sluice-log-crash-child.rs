//! Test helper for `storage/tests/crash.rs`, not a tool: appends to a partition log as fast
//! as it can until the parent test SIGKILLs it, printing one line per acknowledged batch.
//!
//! Usage: `sluice-log-crash-child <dir> <first-tag>`
//!
//! Opens the log in `<dir>` with per-batch fdatasync (`FlushPolicy::EveryBatch`), small
//! segments (so rolls happen during a run) and a small preallocation step, prints `ready`,
//! then runs [`TASKS`] concurrent tasks. Each task takes the next tag (counting up from
//! `<first-tag>`), appends the batch derived from that tag, awaits its `durable` and only
//! then prints `base_offset last_offset tag` and flushes stdout, so every complete line the
//! parent reads is an acknowledged batch. The batch content is a function of the tag alone
//! (see [`batch_for`]), which lets the parent verify every batch it finds in the log.
//!
//! The parent kills this process; [`RUN_MS_MAX`] bounds a run that is never killed, and the
//! process asks the kernel to SIGKILL it if the parent dies first.

use std::cell::Cell;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use sluice_proto::{BatchBuilder, Compression, Limits};
use sluice_storage::{FlushPolicy, LogConfig, PartitionLog};

/// Concurrent appenders.
const TASKS: usize = 4;
/// A run the parent never kills ends with an error after this long.
const RUN_MS_MAX: u64 = 30_000;
/// Segment size of the log: small, so that segments roll during a run.
const SEGMENT_BYTES: u64 = 256 * 1024;
/// Preallocation step: small, so that writes outrun the allocation during a run.
const PREALLOCATE_BYTES: u64 = 64 * 1024;
/// Sparse index interval: several entries per segment.
const INDEX_INTERVAL_BYTES: u32 = 16 * 1024;
/// Smallest and largest batch the shapes aim for.
const BATCH_BYTES_MIN: usize = 100;
const BATCH_BYTES_MAX: usize = 64 * 1024;
/// Timestamp of record 0 of the batch tagged 0; a batch's timestamps follow from its tag.
const TIMESTAMP_BASE_MS: i64 = 1_600_000_000_000;

/// The log configuration the child writes with (the parent reopens with the same).
fn config() -> LogConfig {
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
/// `tests/crash.rs` has the same function: keep them in step.
fn shape_for(tag: u64) -> (usize, usize) {
    let h = mix(tag);
    let records = 1 + (h % 4) as usize;
    let doublings = ((h >> 8) % 10).min((h >> 12) % 10).min((h >> 16) % 10);
    let low = BATCH_BYTES_MIN << doublings;
    let bytes = (low + ((h >> 24) as usize % low)).min(BATCH_BYTES_MAX);
    let value_len = (bytes / records).saturating_sub(24).max(1);
    (records, value_len)
}

/// Value bytes of record `i` of the batch tagged `tag`: the same as `value_for` in
/// `tests/common/mod.rs`.
fn value_for(tag: u64, i: usize, len: usize) -> Vec<u8> {
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

/// The batch tagged `tag`: what `make_batch(tag, records, value_len, ts)` in
/// `tests/common/mod.rs` builds for the tag's shape, record `i` keyed `k{tag}-{i}`.
fn batch_for(tag: u64) -> BytesMut {
    let (records, value_len) = shape_for(tag);
    let ts = TIMESTAMP_BASE_MS + (tag % (1 << 32)) as i64;
    let mut b = BatchBuilder::new(Compression::None, Limits::DEFAULT);
    for i in 0..records {
        let key = format!("k{tag}-{i}");
        b.push(
            ts + i as i64,
            Some(key.as_bytes()),
            Some(&value_for(tag, i, value_len)),
            &[],
        )
        .expect("shapes stay within the default limits");
    }
    b.build().expect("at least one record")
}

fn print_line(line: &str) -> std::io::Result<()> {
    // One write per line: a line is either in the pipe whole or not at all, unless the kill
    // lands inside the write, which leaves an unterminated line the parent ignores.
    let mut out = std::io::stdout().lock();
    out.write_all(format!("{line}\n").as_bytes())?;
    out.flush()
}

async fn append_loop(log: Rc<PartitionLog>, next_tag: Rc<Cell<u64>>, deadline: Instant) {
    while Instant::now() < deadline {
        let tag = next_tag.get();
        next_tag.set(tag + 1);
        let appended = match log.append(batch_for(tag)).await {
            Ok(a) => a,
            Err(e) => fail(&format!("append of tag {tag} failed: {e}")),
        };
        if let Err(e) = appended.durable.await {
            fail(&format!("durable of tag {tag} failed: {e}"));
        }
        let line = format!(
            "{} {} {tag}",
            appended.base_offset.get(),
            appended.last_offset.get()
        );
        if let Err(e) = print_line(&line) {
            fail(&format!("stdout: {e}"));
        }
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("sluice-log-crash-child: {msg}");
    std::process::exit(2);
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(first_tag)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: sluice-log-crash-child <dir> <first-tag>");
        return ExitCode::from(64);
    };
    let dir = PathBuf::from(dir);
    let Ok(first_tag) = first_tag.parse::<u64>() else {
        eprintln!("first tag must be a number, got {first_tag:?}");
        return ExitCode::from(64);
    };
    // SAFETY: prctl with PR_SET_PDEATHSIG only sets a flag of this process.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    let runtime = match compio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => fail(&format!("io_uring runtime: {e}")),
    };
    runtime.block_on(async move {
        let log = match PartitionLog::open(&dir, config()).await {
            Ok(log) => Rc::new(log),
            Err(e) => fail(&format!("open {}: {e}", dir.display())),
        };
        if let Err(e) = print_line("ready") {
            fail(&format!("stdout: {e}"));
        }
        let deadline = Instant::now() + Duration::from_millis(RUN_MS_MAX);
        let next_tag = Rc::new(Cell::new(first_tag));
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| compio::runtime::spawn(append_loop(log.clone(), next_tag.clone(), deadline)))
            .collect();
        for task in tasks {
            if task.await.is_err() {
                fail("an append task panicked");
            }
        }
    });
    eprintln!("sluice-log-crash-child: not killed within {RUN_MS_MAX} ms");
    ExitCode::from(3)
}
