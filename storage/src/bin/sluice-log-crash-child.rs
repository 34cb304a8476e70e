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
//! Mode `truncate` (`sluice-log-crash-child <dir> <first-tag> truncate <seed>`, for
//! `tests/replica.rs`): one task runs cycles of leader change, appends and truncation, so
//! that a kill often lands inside `truncate_to`. Each cycle: `become_leader(latest + 1)`
//! (printed `L epoch log_end`), one to eight appends, each printed `A base last tag epoch`
//! once durable, sometimes a roll, then a cut offset drawn from the seed in
//! `[log_start, log_end]`, printed `T cut` before `truncate_to` and `D new_end` after it;
//! one cycle in ten instead starts the log over past its end, printed `F start` before
//! `truncate_fully_and_start_at` and `G` after it.
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

/// A small deterministic generator (xorshift64*), so a run replays from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `[lo, hi]`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

fn ok_or_fail<T, E: std::fmt::Display>(res: Result<T, E>, what: &str) -> T {
    res.unwrap_or_else(|e| fail(&format!("{what}: {e}")))
}

/// The `truncate` mode: leader changes, appends and truncations in a loop (see the top).
async fn truncate_loop(log: &PartitionLog, mut tag: u64, seed: u64, deadline: Instant) {
    let mut rng = Rng(seed | 1);
    while Instant::now() < deadline {
        let epoch = log.latest_epoch().map_or(1, |e| e + 1);
        ok_or_fail(log.become_leader(epoch).await, "become_leader");
        let end = log.offsets().log_end.get();
        ok_or_fail(print_line(&format!("L {epoch} {end}")), "stdout");
        for _ in 0..rng.between(1, 8) {
            let appended = ok_or_fail(log.append(batch_for(tag)).await, "append");
            ok_or_fail(appended.durable.await, "durable");
            let line = format!(
                "A {} {} {tag} {epoch}",
                appended.base_offset.get(),
                appended.last_offset.get()
            );
            ok_or_fail(print_line(&line), "stdout");
            tag += 1;
            if rng.between(0, 3) == 0 {
                ok_or_fail(log.roll_now().await, "roll");
            }
        }
        let offsets = log.offsets();
        // Mostly short cuts (a follower's divergent suffix), sometimes deep ones.
        let (start, end) = (offsets.log_start.get(), offsets.log_end.get());
        let cut = if rng.between(0, 3) == 0 {
            rng.between(start, end)
        } else {
            rng.between(end.saturating_sub(12).max(start), end)
        };
        if rng.between(0, 9) == 0 {
            // A follower far behind: the log starts over, empty, past its old end.
            let start = end + rng.between(0, 20);
            ok_or_fail(print_line(&format!("F {start}")), "stdout");
            let res = log
                .truncate_fully_and_start_at(sluice_storage::Offset(start))
                .await;
            ok_or_fail(res, "truncate fully");
            ok_or_fail(print_line("G"), "stdout");
            continue;
        }
        ok_or_fail(print_line(&format!("T {cut}")), "stdout");
        let new_end = ok_or_fail(
            log.truncate_to(sluice_storage::Offset(cut)).await,
            "truncate",
        );
        ok_or_fail(print_line(&format!("D {}", new_end.get())), "stdout");
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
    runtime.block_on(async {
        let log = match PartitionLog::open(&dir, config()).await {
            Ok(log) => Rc::new(log),
            Err(e) => fail(&format!("open {}: {e}", dir.display())),
        };
        if let Err(e) = print_line("ready") {
            fail(&format!("stdout: {e}"));
        }
        let deadline = Instant::now() + Duration::from_millis(RUN_MS_MAX);
        if args.get(3).map(String::as_str) == Some("truncate") {
            let seed = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(1);
            truncate_loop(&log, first_tag, seed, deadline).await;
            return;
        }
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
