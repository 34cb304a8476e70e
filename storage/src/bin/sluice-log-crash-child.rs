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
//! (see `batch_for` in `tests/common/workload.rs`), which lets the parent verify every batch it finds in the log.
//!
//! The parent kills this process; [`RUN_MS_MAX`] bounds a run that is never killed, and the
//! process asks the kernel to SIGKILL it if the parent dies first.

use std::cell::Cell;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use sluice_storage::PartitionLog;

// The workload is shared with the parent test, which must rebuild every batch byte for byte.
#[path = "../../tests/common/workload.rs"]
mod workload;

use workload::{batch_for, config};

/// Concurrent appenders.
const TASKS: usize = 4;
/// A run the parent never kills ends with an error after this long.
const RUN_MS_MAX: u64 = 30_000;
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
