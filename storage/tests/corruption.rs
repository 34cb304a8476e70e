//! Corruption tests: a log with several closed segments and an active tail is damaged on disk
//! (truncation, bit flips, zeroed blocks, garbage, damaged or missing index files) and
//! reopened.
//!
//! What each damage must lead to (the log's recovery rules, `src/recovery.rs`):
//! - Tail damage after a crash (the log dropped without `close`, or a tail whose size no
//!   longer matches its index): the log opens, truncated just before the first damaged batch:
//!   the batches before it read back exactly, nothing after it is returned, `log_end` is its
//!   base offset, and appends continue from there.
//! - Tail damage after a clean close: the tail's index records its exact size, so no write
//!   can have been torn and damage is damage: `Corrupt` at open (in the stretch after the
//!   index's last entry, or the first batch's header) or at read of the damaged batch, as
//!   for a closed segment; nothing is truncated away.
//! - Closed-segment damage: either open fails with `Corrupt` naming the file and a position
//!   in the damaged area, or it opens and every read of the damaged batch fails with
//!   `Corrupt`; the other segments read back exactly.
//! - Index damage: the index is rebuilt (byte-identical to the one the log wrote) and every
//!   batch reads back exactly.
//! - Garbage after the tail's last batch: cut off; every batch reads back exactly.
//!
//! Whatever happens, no read ever returns a batch that differs from the one appended. The
//! only bytes no check can see are the leader-epoch fields of batch headers: the format
//! leaves them out of the CRC so that the broker can stamp them in place. A flip there is
//! served as is; the tests count such flips and check that nothing but those 4 bytes differ.
//!
//! Every case runs on two fixtures: the log closed cleanly (all indexes written, tail
//! truncated to its data) and the log dropped without `close` (tail without index, followed
//! by preallocated zeros).
#![allow(missing_docs)]

mod common;

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sluice_proto::{LEADER_EPOCH_AT, Offset, RecordBatch};
use sluice_storage::{LogConfig, LogError, PartitionLog};
use tempfile::TempDir;

use common::{make_batch, run, within};

const SEGMENT_BYTES: u64 = 64 * 1024;
const INDEX_INTERVAL_BYTES: u32 = 8 * 1024;
/// Batches in a fixture: with about 3 KB each, 7 closed segments and a tail.
const BATCHES: usize = 170;
const TIMESTAMP_BASE_MS: i64 = 1_700_000_000_000;
/// Timestamps of batch `j` start at `TIMESTAMP_BASE_MS + j * TIMESTAMP_STEP_MS`.
const TIMESTAMP_STEP_MS: i64 = 10;
/// Tags of batches appended after the damage.
const LATE_TAG: u64 = 1 << 40;
const BLOCK: u64 = 4096;
/// A log operation that takes longer than this hangs: the test fails instead of stalling.
const HANG_SECS: u64 = 20;
/// Outside the damaged segment, every this-many-th batch is also read on its own.
const READ_EACH_STRIDE: usize = 5;
/// Bytes asked for per read when walking the log.
const WALK_BYTES: usize = 64 * 1024;
const RANDOM_FLIPS: usize = 50;
const SEED_DEFAULT: u64 = 0x5EED_C0DE;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: SEGMENT_BYTES,
        index_interval_bytes: INDEX_INTERVAL_BYTES,
        preallocate_bytes: 64 * 1024,
        tail_cache_bytes: 64 * 1024,
        ..LogConfig::default()
    }
}

/// Records, value length and first timestamp of fixture batch `j` (about 300 B to 6 KB).
fn shape(j: usize) -> (usize, usize, i64) {
    let records = 1 + j % 3;
    let bytes = 300 + (j * 7919) % 5700;
    (
        records,
        bytes / records,
        TIMESTAMP_BASE_MS + j as i64 * TIMESTAMP_STEP_MS,
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Shutdown {
    /// `close().await`: every segment has its index; the tail is truncated to its data.
    Close,
    /// Dropped after every append was durable: the tail has no index and is followed by
    /// preallocated zeros.
    Drop,
}

/// One appended batch and where it sits on disk.
#[derive(Debug, Clone)]
struct Written {
    base: Offset,
    next: Offset,
    first_ts: i64,
    /// The exact bytes the log must return for it.
    bytes: Vec<u8>,
    segment: usize,
    position: u64,
}

impl Written {
    fn range(&self) -> Range<u64> {
        self.position..self.position + self.bytes.len() as u64
    }
}

#[derive(Debug, Clone)]
struct Seg {
    base: Offset,
    batches: Range<usize>,
    data_len: u64,
}

impl Seg {
    fn log_name(&self) -> String {
        format!("{:020}.log", self.base.get())
    }
    fn index_name(&self) -> String {
        format!("{:020}.index", self.base.get())
    }
    fn time_name(&self) -> String {
        format!("{:020}.timeindex", self.base.get())
    }
}

/// A log written once and kept pristine; every case damages a copy.
struct Fixture {
    pristine: TempDir,
    shutdown: Shutdown,
    written: Vec<Written>,
    segs: Vec<Seg>,
    log_end: Offset,
    /// Position of the tail index's last entry (clean close only): tail damage before it is
    /// found at read time, not at open.
    tail_index_last: Option<u64>,
}

impl Fixture {
    fn build(shutdown: Shutdown) -> Self {
        let pristine = tempfile::tempdir().expect("tempdir");
        let (mut written, bases, log_end) = run(async {
            let log = PartitionLog::open(pristine.path(), config())
                .await
                .expect("open");
            let mut written = Vec::new();
            let mut durables = Vec::new();
            for j in 0..BATCHES {
                let (records, value_len, ts) = shape(j);
                let batch = make_batch(j as u64, records, value_len, ts);
                let mut bytes = batch.clone();
                let a = log.append(batch).await.expect("append");
                sluice_proto::stamp_base_offset(&mut bytes, a.base_offset);
                written.push(Written {
                    base: a.base_offset,
                    next: Offset(a.last_offset.get() + 1),
                    first_ts: ts,
                    bytes: bytes.to_vec(),
                    segment: 0,
                    position: 0,
                });
                durables.push(a.durable);
            }
            for d in durables {
                d.await.expect("durable");
            }
            let bases = log.segment_bases();
            let log_end = log.offsets().log_end;
            match shutdown {
                Shutdown::Close => log.close().await.expect("close"),
                Shutdown::Drop => drop(log),
            }
            (written, bases, log_end)
        });
        // Lay the batches out over the segments and check the files hold exactly them.
        let mut segs = Vec::new();
        let mut j = 0;
        for (s, &base) in bases.iter().enumerate() {
            let end = bases.get(s + 1).copied().unwrap_or(log_end);
            let first = j;
            let mut position = 0;
            while j < written.len() && written[j].base < end {
                written[j].segment = s;
                written[j].position = position;
                position += written[j].bytes.len() as u64;
                j += 1;
            }
            segs.push(Seg {
                base,
                batches: first..j,
                data_len: position,
            });
        }
        assert_eq!(j, written.len());
        let tail = segs.len() - 1;
        for (s, seg) in segs.iter().enumerate() {
            let file = std::fs::read(pristine.path().join(seg.log_name())).expect("read segment");
            let data: Vec<u8> = written[seg.batches.clone()]
                .iter()
                .flat_map(|w| w.bytes.iter().copied())
                .collect();
            assert_eq!(
                &file[..data.len().min(file.len())],
                &data[..],
                "segment {s}"
            );
            let rest = &file[data.len()..];
            if s < tail || shutdown == Shutdown::Close {
                assert!(
                    rest.is_empty(),
                    "segment {s} has {} extra bytes",
                    rest.len()
                );
            } else {
                assert!(rest.iter().all(|&b| b == 0), "tail is followed by zeros");
            }
            let has_index = pristine.path().join(seg.index_name()).exists();
            assert_eq!(has_index, s < tail || shutdown == Shutdown::Close);
        }
        assert!(segs.len() >= 5, "{} segments", segs.len());
        assert!(segs[tail].batches.len() >= 6, "tail batches");
        let tail_index_last = (shutdown == Shutdown::Close).then(|| {
            let entries = index_positions(&pristine.path().join(segs[tail].index_name()));
            assert!(entries.len() >= 3, "tail index entries {entries:?}");
            *entries.last().expect("entries")
        });
        Fixture {
            pristine,
            shutdown,
            written,
            segs,
            log_end,
            tail_index_last,
        }
    }

    fn tail(&self) -> usize {
        self.segs.len() - 1
    }

    fn copy(&self) -> TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for entry in std::fs::read_dir(self.pristine.path()).expect("list") {
            let entry = entry.expect("entry");
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).expect("copy");
        }
        dir
    }

    fn by_base(&self, base: Offset) -> Option<usize> {
        self.written.binary_search_by_key(&base, |w| w.base).ok()
    }
}

/// Byte positions of the entries of an `.index` file (layout in `src/index.rs`: a 44-byte
/// header with the entry count at byte 40, then `(relative_offset u32, position u32)`).
fn index_positions(path: &Path) -> Vec<u64> {
    let bytes = std::fs::read(path).expect("read index");
    let count = u32::from_le_bytes(bytes[40..44].try_into().expect("4 bytes")) as usize;
    (0..count)
        .map(|i| {
            let at = 44 + i * 8 + 4;
            u64::from(u32::from_le_bytes(
                bytes[at..at + 4].try_into().expect("4 bytes"),
            ))
        })
        .collect()
}

// ----- Damage ------------------------------------------------------------------------------

/// What was done to one file, found by comparing it before and after.
#[derive(Debug, Clone)]
struct Damage {
    what: String,
    /// The segment whose `.log` was damaged; `None` for an index file.
    segment: Option<usize>,
    /// Changed or removed byte positions (a truncation removes `[new_len, old_len)`).
    changed: Vec<Range<u64>>,
    resized: bool,
}

impl Damage {
    fn last(&self) -> u64 {
        self.changed.last().map_or(0, |r| r.end - 1)
    }
}

fn diff(before: &[u8], after: &[u8]) -> Vec<Range<u64>> {
    let mut ranges: Vec<Range<u64>> = Vec::new();
    let common_len = before.len().min(after.len());
    for i in 0..common_len {
        if before[i] != after[i] {
            let i = i as u64;
            match ranges.last_mut() {
                Some(r) if r.end == i => r.end = i + 1,
                _ => ranges.push(i..i + 1),
            }
        }
    }
    let longer = before.len().max(after.len()) as u64;
    if longer > common_len as u64 {
        ranges.push(common_len as u64..longer);
    }
    ranges
}

/// Applies `edit` to `name` in `dir` and records what changed.
fn damage(
    fix: &Fixture,
    dir: &Path,
    name: &str,
    what: &str,
    edit: impl FnOnce(&mut Vec<u8>),
) -> Damage {
    let path = dir.join(name);
    let before = std::fs::read(&path).expect("read file to damage");
    let mut after = before.clone();
    edit(&mut after);
    std::fs::write(&path, &after).expect("write damaged file");
    let changed = diff(&before, &after);
    assert!(!changed.is_empty(), "{what}: the edit changed nothing");
    Damage {
        what: format!("{what} ({name})"),
        segment: fix.segs.iter().position(|s| s.log_name() == name),
        changed,
        resized: before.len() != after.len(),
    }
}

/// An edit of a file's bytes.
type Edit = Box<dyn FnOnce(&mut Vec<u8>)>;

fn flip_bit(pos: u64, bit: u32) -> impl FnOnce(&mut Vec<u8>) {
    move |b| b[pos as usize] ^= 1 << bit
}

fn zero(range: Range<u64>) -> impl FnOnce(&mut Vec<u8>) {
    move |b| b[range.start as usize..range.end as usize].fill(0)
}

fn truncate_to(len: u64) -> impl FnOnce(&mut Vec<u8>) {
    move |b| b.truncate(len as usize)
}

fn write_at(at: u64, bytes: Vec<u8>) -> impl FnOnce(&mut Vec<u8>) {
    move |b| {
        let at = at as usize;
        if b.len() < at + bytes.len() {
            b.resize(at + bytes.len(), 0);
        }
        b[at..at + bytes.len()].copy_from_slice(&bytes);
    }
}

// ----- Expectations ------------------------------------------------------------------------

/// What the log must do with a damage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// No batch touched: everything reads back.
    Intact,
    /// Only the leader epoch of this batch changed (not covered by the CRC).
    EpochOnly(usize),
    /// Tail damage: truncated before this batch.
    Truncated(usize),
    /// Closed-segment damage, or damage in a cleanly closed tail: `Corrupt` at open or at
    /// read of this batch.
    Corrupt(usize),
}

/// Which batches a damage touches, in order.
fn touched(fix: &Fixture, d: &Damage) -> Vec<usize> {
    let Some(s) = d.segment else {
        return Vec::new();
    };
    fix.segs[s]
        .batches
        .clone()
        .filter(|&j| {
            let r = fix.written[j].range();
            d.changed.iter().any(|c| c.start < r.end && r.start < c.end)
        })
        .collect()
}

fn expect(fix: &Fixture, d: &Damage) -> Expect {
    let Some(s) = d.segment else {
        return Expect::Intact;
    };
    let touched = touched(fix, d);
    let Some(&k) = touched.first() else {
        return Expect::Intact;
    };
    let epoch_only = !d.resized
        && d.changed.iter().all(|c| {
            touched.iter().any(|&j| {
                let at = fix.written[j].position + LEADER_EPOCH_AT as u64;
                at <= c.start && c.end <= at + 4
            })
        });
    if epoch_only {
        Expect::EpochOnly(k)
    } else if s == fix.tail() {
        match fix.tail_index_last {
            Some(_) if !d.resized => Expect::Corrupt(k),
            _ => Expect::Truncated(k),
        }
    } else {
        Expect::Corrupt(k)
    }
}

// ----- Checks ------------------------------------------------------------------------------

/// How a damage was handled (for the summaries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Seen {
    Intact,
    EpochServed,
    Truncated,
    CorruptAtOpen,
    CorruptAtRead,
}

struct Checker<'a> {
    fix: &'a Fixture,
    dir: PathBuf,
    ctx: String,
    /// The damaged segment (of its data or its index): every batch of it is read on its
    /// own; elsewhere every [`READ_EACH_STRIDE`]-th and each segment's first and last (the
    /// walks still read every batch).
    focus: Option<usize>,
}

impl Checker<'_> {
    /// `batch` is the one appended at its base offset, byte for byte (or, for `epoch_of`,
    /// byte for byte but the leader epoch).
    fn assert_written(&self, batch: &RecordBatch, epoch_of: Option<usize>) -> usize {
        let ctx = &self.ctx;
        let j = self.fix.by_base(batch.base_offset()).unwrap_or_else(|| {
            panic!(
                "{ctx}: read returned a batch at {} where none starts",
                batch.base_offset()
            )
        });
        assert_eq!(
            batch.next_offset(),
            self.fix.written[j].next,
            "{ctx}: batch {j} end"
        );
        let want = &self.fix.written[j].bytes;
        let got = batch.as_bytes();
        if epoch_of == Some(j) {
            let epoch = LEADER_EPOCH_AT..LEADER_EPOCH_AT + 4;
            assert_eq!(got.len(), want.len(), "{ctx}: batch {j} length");
            for (i, (a, b)) in got.iter().zip(want).enumerate() {
                assert!(a == b || epoch.contains(&i), "{ctx}: batch {j} byte {i}");
            }
        } else {
            assert!(
                got[..] == want[..],
                "{ctx}: batch {j} at {} differs from what was appended",
                batch.base_offset()
            );
        }
        j
    }

    fn assert_corrupt(&self, err: &LogError, segment: usize, at: Option<Range<u64>>) {
        let ctx = &self.ctx;
        let want = self.dir.join(self.fix.segs[segment].log_name());
        match err {
            LogError::Corrupt { path, position, .. } => {
                assert_eq!(path, &want, "{ctx}: Corrupt names the wrong file: {err}");
                if let Some(at) = at {
                    assert!(
                        at.contains(position),
                        "{ctx}: Corrupt at {position}, damage in {at:?}: {err}"
                    );
                }
            }
            other => panic!(
                "{ctx}: expected Corrupt for {}, got {other}",
                want.display()
            ),
        }
    }

    /// Reads `[from, to)` in reads of `max_bytes` (checking each batch), until done or an
    /// error. Returns the batches read (indexes into `written`) and the error.
    async fn walk(
        &self,
        log: &PartitionLog,
        (from, to): (Offset, Offset),
        max_bytes: usize,
        epoch_of: Option<usize>,
    ) -> (Vec<usize>, Option<LogError>) {
        let mut next = from;
        let mut seen = Vec::new();
        while next < to {
            let batches = match log.read(next, max_bytes).await {
                Ok(b) => b,
                Err(e) => return (seen, Some(e)),
            };
            assert!(!batches.is_empty(), "{}: empty read at {next}", self.ctx);
            for batch in &batches {
                assert_eq!(batch.base_offset(), next, "{}: gap in the log", self.ctx);
                seen.push(self.assert_written(batch, epoch_of));
                next = batch.next_offset();
            }
        }
        assert_eq!(next, to, "{}: walk overshot", self.ctx);
        (seen, None)
    }

    /// Appends one more batch, checks where it lands and that it reads back.
    async fn append_more(&self, log: &PartitionLog, tag: u64) {
        let ctx = &self.ctx;
        let end = log.offsets().log_end;
        let mut want = make_batch(tag, 2, 700, TIMESTAMP_BASE_MS + 1_000_000);
        let a = within(
            HANG_SECS,
            &format!("{ctx}: append"),
            log.append(want.clone()),
        )
        .await
        .unwrap_or_else(|e| panic!("{ctx}: append after damage: {e}"));
        assert_eq!(a.base_offset, end, "{ctx}: append continues the offsets");
        within(HANG_SECS, &format!("{ctx}: durable"), a.durable)
            .await
            .unwrap_or_else(|e| panic!("{ctx}: durable after damage: {e}"));
        sluice_proto::stamp_base_offset(&mut want, end);
        let got = log.read(end, 1).await.expect("read the new batch");
        assert_eq!(got.len(), 1, "{ctx}");
        assert!(
            got[0].as_bytes()[..] == want[..],
            "{ctx}: new batch differs"
        );
    }

    /// Checks that the batches in `js` read back exactly on their own (all of the focus
    /// segment, a sample elsewhere).
    async fn read_each(&self, log: &PartitionLog, js: Range<usize>, epoch_of: Option<usize>) {
        for j in js {
            let w = &self.fix.written[j];
            let seg = &self.fix.segs[w.segment];
            let edge = j == seg.batches.start || j + 1 == seg.batches.end;
            if self.focus != Some(w.segment) && !edge && j % READ_EACH_STRIDE != 0 {
                continue;
            }
            let got = log
                .read(w.base, 1)
                .await
                .unwrap_or_else(|e| panic!("{}: read of batch {j}: {e}", self.ctx));
            assert_eq!(got.len(), 1, "{}", self.ctx);
            assert_eq!(self.assert_written(&got[0], epoch_of), j, "{}", self.ctx);
        }
    }

    /// Opens the damaged log and checks the outcome against `expect`.
    fn check(&self, d: &Damage, expect: Expect) -> Seen {
        let fix = self.fix;
        let ctx = &self.ctx;
        let all = 0..fix.written.len();
        // One runtime for the whole check: the log's flusher task lives on the runtime that
        // opened it.
        run(async {
            let opened = within(HANG_SECS, ctx, PartitionLog::open(&self.dir, config())).await;
            let log = match (opened, expect) {
                (Ok(log), _) => log,
                (Err(err), Expect::Corrupt(k)) => {
                    let s = fix.written[k].segment;
                    self.assert_corrupt(&err, s, Some(fix.written[k].position..d.last() + 1));
                    // Failing to open must not have repaired the damage away.
                    match within(HANG_SECS, ctx, PartitionLog::open(&self.dir, config())).await {
                        Err(err) => self.assert_corrupt(&err, s, None),
                        Ok(_) => panic!("{ctx}: second open succeeded after Corrupt: {err}"),
                    }
                    return Seen::CorruptAtOpen;
                }
                (Err(err), _) => panic!("{ctx}: open failed, expected {expect:?}: {err}"),
            };
            let offsets = log.offsets();
            assert_eq!(offsets.log_start, Offset(0), "{ctx}");
            let seen = match expect {
                Expect::Intact | Expect::EpochOnly(_) => {
                    let epoch_of = match expect {
                        Expect::EpochOnly(k) => Some(k),
                        _ => None,
                    };
                    assert_eq!(offsets.log_end, fix.log_end, "{ctx}: log_end");
                    let (seen, err) = self
                        .walk(&log, (Offset(0), fix.log_end), WALK_BYTES, epoch_of)
                        .await;
                    assert!(err.is_none(), "{ctx}: walk: {err:?}");
                    assert_eq!(seen, all.clone().collect::<Vec<_>>(), "{ctx}");
                    self.read_each(&log, all.clone(), epoch_of).await;
                    for j in (0..fix.written.len()).step_by(7) {
                        let w = &fix.written[j];
                        let found = log.offset_for_timestamp(w.first_ts).await;
                        assert_eq!(found.expect("offset_for_timestamp"), Some(w.base), "{ctx}");
                    }
                    if epoch_of.is_some() {
                        Seen::EpochServed
                    } else {
                        Seen::Intact
                    }
                }
                Expect::Truncated(k) => {
                    let end = fix.written[k].base;
                    assert_eq!(offsets.log_end, end, "{ctx}: log_end after truncation");
                    let (seen, err) = self.walk(&log, (Offset(0), end), WALK_BYTES, None).await;
                    assert!(err.is_none(), "{ctx}: walk: {err:?}");
                    assert_eq!(seen, (0..k).collect::<Vec<_>>(), "{ctx}");
                    self.read_each(&log, 0..k, None).await;
                    let at_end = log.read(end, 1 << 20).await.expect("read at log_end");
                    assert!(at_end.is_empty(), "{ctx}: batches past the truncation");
                    if let Some(past) = fix.written.get(k + 1) {
                        let err = log.read(past.base, 1).await.expect_err("past log_end");
                        assert!(
                            matches!(err, LogError::OffsetOutOfRange { .. }),
                            "{ctx}: {err}"
                        );
                    }
                    Seen::Truncated
                }
                Expect::Corrupt(k) => {
                    assert_eq!(offsets.log_end, fix.log_end, "{ctx}: log_end");
                    let s = fix.written[k].segment;
                    let seg = &fix.segs[s];
                    let damaged = Some(fix.written[k].position..d.last() + 1);
                    // The damaged batch cannot be read.
                    let err = log
                        .read(fix.written[k].base, 1)
                        .await
                        .err()
                        .unwrap_or_else(|| panic!("{ctx}: damaged batch {k} was read"));
                    self.assert_corrupt(&err, s, damaged.clone());
                    // Walking the log a batch at a time stops at it with the same error.
                    let (seen, err) = self.walk(&log, (Offset(0), fix.log_end), 1, None).await;
                    assert_eq!(seen, (0..k).collect::<Vec<_>>(), "{ctx}: walk");
                    let err = err.expect("walk stops at the damage");
                    self.assert_corrupt(&err, s, damaged.clone());
                    // So does one large read across the whole segment.
                    let err = log
                        .read(seg.base, 1 << 20)
                        .await
                        .err()
                        .unwrap_or_else(|| panic!("{ctx}: read across the damage succeeded"));
                    self.assert_corrupt(&err, s, damaged);
                    // Batches of the damaged segment: exact before the damage; after it
                    // exact or Corrupt (a read may have to pass the damaged batch).
                    self.read_each(&log, seg.batches.start..k, None).await;
                    for j in k + 1..seg.batches.end {
                        match log.read(fix.written[j].base, 1).await {
                            Ok(got) => {
                                assert_eq!(got.len(), 1, "{ctx}");
                                assert_eq!(self.assert_written(&got[0], None), j, "{ctx}");
                            }
                            Err(e) => self.assert_corrupt(&e, s, None),
                        }
                    }
                    // Every other segment reads back whole.
                    for (o, other) in fix.segs.iter().enumerate().filter(|(o, _)| *o != s) {
                        let to = fix.segs.get(o + 1).map_or(fix.log_end, |n| n.base);
                        let (seen, err) = self.walk(&log, (other.base, to), WALK_BYTES, None).await;
                        assert!(err.is_none(), "{ctx}: segment {o}: {err:?}");
                        assert_eq!(seen, other.batches.clone().collect::<Vec<_>>(), "{ctx}");
                        self.read_each(&log, other.batches.clone(), None).await;
                    }
                    Seen::CorruptAtRead
                }
            };
            self.append_more(&log, LATE_TAG).await;
            within(HANG_SECS, &format!("{ctx}: close"), log.close())
                .await
                .expect("close");
            seen
        })
    }
}

/// Damages a fresh copy of `fix` with `edit` on `name`, checks the outcome, and for tail
/// truncations also that the repaired log reopens as left.
fn case(fix: &Fixture, name: &str, what: &str, edit: impl FnOnce(&mut Vec<u8>)) -> Seen {
    let dir = fix.copy();
    let d = damage(fix, dir.path(), name, what, edit);
    let expect = expect(fix, &d);
    let checker = Checker {
        fix,
        dir: dir.path().to_path_buf(),
        ctx: format!(
            "{:?} fixture, {}, expecting {expect:?}",
            fix.shutdown, d.what
        ),
        focus: d.segment,
    };
    let seen = checker.check(&d, expect);
    if let (Seen::Truncated, Expect::Truncated(k)) = (seen, expect) {
        // The truncation and the batch appended after it survive a reopen.
        run(async {
            let log = PartitionLog::open(dir.path(), config())
                .await
                .expect("reopen after repair");
            let end = fix.written[k].base;
            assert_eq!(
                log.offsets().log_end,
                Offset(end.get() + 2),
                "{}",
                checker.ctx
            );
            let (seen, err) = checker.walk(&log, (Offset(0), end), WALK_BYTES, None).await;
            assert!(err.is_none() && seen.len() == k, "{}", checker.ctx);
            let late = log.read(end, 1).await.expect("read the late batch");
            common::check_batch(&late[0], LATE_TAG, end);
        });
    }
    seen
}

/// A batch of the tail before the tail index's last entry (or the tail's first batch).
fn early_tail_batch(fix: &Fixture) -> usize {
    let tail = &fix.segs[fix.tail()];
    let limit = fix.tail_index_last.unwrap_or(u64::MAX);
    let j = tail.batches.start + 1;
    assert!(
        fix.written[j].range().end <= limit,
        "tail batch before the last entry"
    );
    j
}

/// The middle of the records section of batch `j`.
fn inside_records(fix: &Fixture, j: usize) -> u64 {
    let w = &fix.written[j];
    w.position + (sluice_proto::RECORDS_AT + (w.bytes.len() - sluice_proto::RECORDS_AT) / 2) as u64
}

fn fixtures() -> [Fixture; 2] {
    [
        Fixture::build(Shutdown::Close),
        Fixture::build(Shutdown::Drop),
    ]
}

// ----- Cases -------------------------------------------------------------------------------

#[test]
fn tail_truncated_mid_batch() {
    for fix in fixtures() {
        let tail = &fix.segs[fix.tail()];
        let name = tail.log_name();
        let mid = tail.batches.start + tail.batches.len() / 2;
        let w = &fix.written[mid];
        let cut = w.position + w.bytes.len() as u64 / 2;
        assert_eq!(
            case(&fix, &name, "truncate the tail mid-batch", truncate_to(cut)),
            Seen::Truncated
        );
        // Inside the tail's first batch: the tail keeps no batch and goes away.
        let first = &fix.written[tail.batches.start];
        let cut = first.position + 30;
        assert_eq!(
            case(
                &fix,
                &name,
                "truncate inside the tail's first header",
                truncate_to(cut)
            ),
            Seen::Truncated
        );
        // Inside the last batch's header.
        let last = &fix.written[tail.batches.end - 1];
        let cut = last.position + 10;
        assert_eq!(
            case(
                &fix,
                &name,
                "truncate the last batch's header",
                truncate_to(cut)
            ),
            Seen::Truncated
        );
    }
}

#[test]
fn tail_bit_flips() {
    use sluice_proto::{ATTRIBUTES_AT, BASE_OFFSET_AT, BATCH_LENGTH_AT, CRC_AT, VERSION_AT};
    for fix in fixtures() {
        let tail = &fix.segs[fix.tail()];
        let name = tail.log_name();
        let last = tail.batches.end - 1;
        let at = fix.written[last].position;
        for (field, pos, bit) in [
            ("records", inside_records(&fix, last), 3),
            ("base offset", at + BASE_OFFSET_AT as u64, 0),
            ("base offset high bit", at + BASE_OFFSET_AT as u64 + 7, 6),
            ("batch length", at + BATCH_LENGTH_AT as u64, 2),
            ("batch length high", at + BATCH_LENGTH_AT as u64 + 1, 4),
            ("version", at + VERSION_AT as u64, 1),
            ("crc", at + CRC_AT as u64 + 2, 5),
            ("attributes", at + ATTRIBUTES_AT as u64, 0),
            (
                "last byte",
                at + fix.written[last].bytes.len() as u64 - 1,
                7,
            ),
        ] {
            let what = format!("flip a bit in the {field} of the tail's last batch");
            let seen = case(&fix, &name, &what, flip_bit(pos, bit));
            match fix.shutdown {
                // The last indexed stretch of a cleanly closed tail is checked at open.
                Shutdown::Close => assert_eq!(seen, Seen::CorruptAtOpen, "{what}"),
                Shutdown::Drop => assert_eq!(seen, Seen::Truncated, "{what}"),
            }
        }
        // Before the tail index's last entry: after a clean close found at read time.
        let early = early_tail_batch(&fix);
        let seen = case(
            &fix,
            &name,
            "flip a bit in an early batch of the tail",
            flip_bit(inside_records(&fix, early), 0),
        );
        match fix.shutdown {
            Shutdown::Close => assert_eq!(seen, Seen::CorruptAtRead),
            Shutdown::Drop => assert_eq!(seen, Seen::Truncated),
        }
        // The leader epoch is outside the CRC: served as flipped, nothing else changes.
        let epoch = fix.written[early].position + LEADER_EPOCH_AT as u64;
        assert_eq!(
            case(&fix, &name, "flip a leader-epoch bit", flip_bit(epoch, 0)),
            Seen::EpochServed
        );
    }
}

#[test]
fn tail_zeroed_blocks() {
    for fix in fixtures() {
        let tail = &fix.segs[fix.tail()];
        let name = tail.log_name();
        let data_len = tail.data_len;
        assert!(data_len >= 3 * BLOCK, "tail of {data_len} bytes");
        let last_block = (data_len - 1) / BLOCK * BLOCK;
        for (what, start) in [
            ("zero the tail's first block", 0),
            (
                "zero a block in the middle of the tail",
                data_len / 2 / BLOCK * BLOCK,
            ),
            ("zero the tail's last block", last_block),
        ] {
            let end = (start + BLOCK).min(data_len);
            let seen = case(&fix, &name, what, zero(start..end));
            match fix.shutdown {
                // A cleanly closed tail reports damage: at open where it checks (the first
                // header, the last indexed stretch), otherwise at read.
                Shutdown::Close => assert!(
                    matches!(seen, Seen::CorruptAtOpen | Seen::CorruptAtRead),
                    "{what}: {seen:?}"
                ),
                Shutdown::Drop => assert_eq!(seen, Seen::Truncated, "{what}"),
            }
        }
    }
}

#[test]
fn closed_segment_damage() {
    let mut outcomes: HashMap<Seen, usize> = HashMap::new();
    for fix in fixtures() {
        for s in [0, 2, fix.tail() - 1] {
            let seg = fix.segs[s].clone();
            let name = seg.log_name();
            let last = seg.batches.end - 1;
            let mid = seg.batches.start + seg.batches.len() / 2;
            let w = &fix.written[mid];
            let cases: Vec<(String, Edit)> = vec![
                (
                    "truncate mid-batch".into(),
                    Box::new(truncate_to(w.position + w.bytes.len() as u64 / 2)),
                ),
                (
                    "truncate at a batch boundary".into(),
                    Box::new(truncate_to(fix.written[last].position)),
                ),
                (
                    "flip a bit in an early batch".into(),
                    Box::new(flip_bit(inside_records(&fix, seg.batches.start + 1), 4)),
                ),
                (
                    "flip a bit in the last batch".into(),
                    Box::new(flip_bit(inside_records(&fix, last), 4)),
                ),
                (
                    "flip a base offset bit of a middle batch".into(),
                    Box::new(flip_bit(w.position, 1)),
                ),
                (
                    "flip a base offset bit of the last batch".into(),
                    Box::new(flip_bit(fix.written[last].position, 0)),
                ),
                (
                    "flip a batch length bit of a middle batch".into(),
                    Box::new(flip_bit(w.position + 8, 3)),
                ),
                ("zero the first block".into(), Box::new(zero(0..BLOCK))),
                (
                    "zero a middle block".into(),
                    Box::new(zero(
                        seg.data_len / 2 / BLOCK * BLOCK..seg.data_len / 2 / BLOCK * BLOCK + BLOCK,
                    )),
                ),
                (
                    "zero the last partial block".into(),
                    Box::new(zero((seg.data_len - 1) / BLOCK * BLOCK..seg.data_len)),
                ),
            ];
            for (what, edit) in cases {
                let what = format!("{what} of closed segment {s}");
                let seen = case(&fix, &name, &what, edit);
                assert!(
                    matches!(seen, Seen::CorruptAtOpen | Seen::CorruptAtRead),
                    "{what}: {seen:?}"
                );
                *outcomes.entry(seen).or_default() += 1;
            }
        }
    }
    println!("closed-segment damage outcomes: {outcomes:?}");
    // Both detection paths are exercised: damage in a segment's last index stretch is
    // found at open, damage before it at read time.
    assert!(outcomes.contains_key(&Seen::CorruptAtOpen), "{outcomes:?}");
    assert!(outcomes.contains_key(&Seen::CorruptAtRead), "{outcomes:?}");
}

#[test]
fn index_files_damaged_or_missing_are_rebuilt() {
    for fix in fixtures() {
        let mut segments: Vec<usize> = vec![0, 3, fix.tail() - 1];
        if fix.shutdown == Shutdown::Close {
            segments.push(fix.tail());
        }
        for s in segments {
            let seg = fix.segs[s].clone();
            for name in [seg.index_name(), seg.time_name()] {
                let len = std::fs::metadata(fix.pristine.path().join(&name))
                    .expect("index exists")
                    .len();
                let edits: Vec<(&str, Edit)> = vec![
                    (
                        "flip a byte in the header",
                        Box::new(|b: &mut Vec<u8>| b[20] ^= 0xFF),
                    ),
                    ("flip a bit in the entries", Box::new(flip_bit(50, 2))),
                    ("flip a bit in the checksum", Box::new(flip_bit(len - 1, 0))),
                    ("truncate to half", Box::new(truncate_to(len / 2))),
                    ("truncate to nothing", Box::new(truncate_to(0))),
                    ("append a byte", Box::new(write_at(len, vec![0]))),
                ];
                for (what, edit) in edits {
                    let what = format!("{what} of segment {s}'s index");
                    index_case(&fix, s, &name, &what, Some(edit));
                }
                index_case(&fix, s, &name, "delete", None);
            }
            // Both files gone.
            let dir = fix.copy();
            std::fs::remove_file(dir.path().join(seg.index_name())).expect("rm");
            std::fs::remove_file(dir.path().join(seg.time_name())).expect("rm");
            check_index_rebuilt(&fix, dir, s, "delete both index files");
        }
        // Another segment's (valid) index in place of this one's.
        let dir = fix.copy();
        std::fs::copy(
            fix.pristine.path().join(fix.segs[1].index_name()),
            dir.path().join(fix.segs[2].index_name()),
        )
        .expect("copy");
        std::fs::copy(
            fix.pristine.path().join(fix.segs[1].time_name()),
            dir.path().join(fix.segs[2].time_name()),
        )
        .expect("copy");
        check_index_rebuilt(&fix, dir, 2, "another segment's index files");
    }
}

fn index_case(fix: &Fixture, s: usize, name: &str, what: &str, edit: Option<Edit>) {
    let dir = fix.copy();
    match edit {
        Some(edit) => {
            damage(fix, dir.path(), name, what, edit);
        }
        None => std::fs::remove_file(dir.path().join(name)).expect("delete index"),
    }
    check_index_rebuilt(fix, dir, s, &format!("{what} ({name})"));
}

fn check_index_rebuilt(fix: &Fixture, dir: TempDir, s: usize, what: &str) {
    let checker = Checker {
        fix,
        dir: dir.path().to_path_buf(),
        ctx: format!("{:?} fixture, {what}", fix.shutdown),
        focus: Some(s),
    };
    let d = Damage {
        what: what.into(),
        segment: None,
        changed: Vec::new(),
        resized: false,
    };
    assert_eq!(checker.check(&d, Expect::Intact), Seen::Intact);
    if s != fix.tail() {
        // Rebuilt at open exactly as the log wrote it when it closed the segment.
        let seg = &fix.segs[s];
        for name in [seg.index_name(), seg.time_name()] {
            let rebuilt = std::fs::read(dir.path().join(&name))
                .unwrap_or_else(|e| panic!("{}: {name} not rebuilt: {e}", checker.ctx));
            let original = std::fs::read(fix.pristine.path().join(&name)).expect("pristine");
            assert!(
                rebuilt == original,
                "{}: rebuilt {name} differs",
                checker.ctx
            );
        }
    }
}

#[test]
fn garbage_after_the_tail_is_cut_off() {
    let mut rng = StdRng::seed_from_u64(SEED_DEFAULT);
    for fix in fixtures() {
        let tail = &fix.segs[fix.tail()];
        let name = tail.log_name();
        let end = tail.data_len;
        let mut random = vec![0u8; 3000];
        rng.fill(&mut random[..]);
        random[0] |= 1;
        // A whole valid batch from earlier: good CRC, wrong offset.
        let stale = fix.written[tail.batches.start].bytes.clone();
        // A header that continues the offsets but whose body is garbage.
        let mut forged = fix.written[tail.batches.end - 1].bytes.clone();
        sluice_proto::stamp_base_offset(&mut forged, fix.log_end);
        let len = forged.len();
        forged[len / 2..].fill(0xA5);
        for (what, bytes) in [
            ("random bytes", random.clone()),
            ("a few random bytes", random[..7].to_vec()),
            ("an earlier batch", stale),
            ("a forged next batch", forged),
        ] {
            let what = format!("append {what} after the tail's last batch");
            assert_eq!(case(&fix, &name, &what, write_at(end, bytes)), Seen::Intact);
        }
    }
}

/// One bit flipped in each byte of a batch header, in a closed segment (before its last
/// index entry, so found at read time) and in the tail: header fields outside the CRC (base
/// offset, length, epoch, version) are where damage can pass the CRC check.
#[test]
fn every_header_byte_flipped() {
    let fix = Fixture::build(Shutdown::Drop);
    let mut outcomes: HashMap<Seen, usize> = HashMap::new();
    let closed = &fix.segs[1];
    let tail = &fix.segs[fix.tail()];
    for (seg, j) in [
        (closed, closed.batches.start + 2),
        (tail, tail.batches.start + tail.batches.len() / 2),
    ] {
        let at = fix.written[j].position;
        for byte in 0..sluice_proto::BATCH_HEADER_BYTES as u64 {
            let bit = (byte % 8) as u32;
            let what = format!("flip bit {bit} of header byte {byte} of batch {j}");
            let seen = case(&fix, &seg.log_name(), &what, flip_bit(at + byte, bit));
            *outcomes.entry(seen).or_default() += 1;
        }
    }
    println!("header flip outcomes: {outcomes:?}");
}

/// Seeded random bit flips anywhere in the log's files.
#[test]
fn random_bit_flips() {
    let seed = std::env::var("SLUICE_CORRUPTION_SEED")
        .ok()
        .map(|v| {
            v.parse::<u64>()
                .expect("SLUICE_CORRUPTION_SEED is a number")
        })
        .unwrap_or(SEED_DEFAULT);
    println!("random bit flips: SLUICE_CORRUPTION_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut outcomes: HashMap<(Shutdown, Seen), usize> = HashMap::new();
    for fix in fixtures() {
        let mut files: Vec<(String, u64)> = std::fs::read_dir(fix.pristine.path())
            .expect("list")
            .map(|e| {
                let e = e.expect("entry");
                let len = e.metadata().expect("metadata").len();
                (e.file_name().into_string().expect("utf-8 name"), len)
            })
            .collect();
        files.sort();
        let logs: Vec<_> = files.iter().filter(|(n, _)| n.ends_with(".log")).collect();
        let indexes: Vec<_> = files.iter().filter(|(n, _)| !n.ends_with(".log")).collect();
        let log_bytes: u64 = logs.iter().map(|(_, len)| len).sum();
        for i in 0..RANDOM_FLIPS {
            // Four in five flips hit segment data, spread by size; the rest an index file.
            let (name, pos) = if rng.random_ratio(4, 5) {
                let mut at = rng.random_range(0..log_bytes);
                let (name, len) = logs
                    .iter()
                    .find(|(_, len)| {
                        let here = at < *len;
                        if !here {
                            at -= len;
                        }
                        here
                    })
                    .expect("position within the files");
                assert!(at < *len);
                (name.clone(), at)
            } else {
                let (name, len) = indexes[rng.random_range(0..indexes.len())];
                (name.clone(), rng.random_range(0..*len))
            };
            let bit = rng.random_range(0..8);
            let what = format!("random flip {i}: bit {bit} of byte {pos}");
            let seen = case(&fix, &name, &what, flip_bit(pos, bit));
            *outcomes.entry((fix.shutdown, seen)).or_default() += 1;
        }
    }
    let mut outcomes: Vec<_> = outcomes.into_iter().collect();
    outcomes.sort_by_key(|((s, o), _)| (format!("{s:?}"), format!("{o:?}")));
    println!("random bit flip outcomes (fixture, outcome, count): {outcomes:?}");
}
