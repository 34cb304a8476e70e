//! Opening a log directory: finding the segments, checking them, and truncating a torn tail.
//!
//! - Closed segments (all but the last) are trusted when their index is intact and the file
//!   has exactly the size the index records; their last batch is still checked. Otherwise the
//!   segment is scanned whole and its index rebuilt. A closed segment whose batches do not
//!   run cleanly to its end, or do not lead to the next segment's base offset, is an error
//!   naming the file and position: damage before the tail is never dropped silently.
//! - The last segment is scanned batch by batch and truncated after its last valid batch
//!   (torn write, bad CRC, offset gap). Trailing segments that were never written (a crash
//!   right after a roll) are removed first. After a clean close the last segment has an intact
//!   index recording its exact size: then no write can be torn, only its last indexed stretch
//!   is scanned, and a mismatch there is an error like damage in a closed segment.

use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;

use sluice_proto::{BatchHeader, Offset};

use crate::aligned::{BLOCK_BYTES, align_up};
use crate::config::LogConfig;
use crate::error::{LogError, LogResult};
use crate::index::{
    SegmentIndex, encode_offset_index, encode_time_index, parse_segment_name, segment_file_names,
};
use crate::io::{DirectFile, sync_dir};
use crate::log::{load_index, read_tail_block, write_file_atomically};
use crate::scan::{ScanFrom, ScanOutcome, ScanStop, all_zero_from, scan_segment};
use crate::segment::{Segment, SegmentFile, SegmentState};

/// The segments of a recovered log and the partial last block of its tail.
pub(crate) struct Recovered {
    pub segments: BTreeMap<Offset, Segment>,
    pub tail_block: Vec<u8>,
}

/// The segment base offsets in `dir`, oldest first, and leftover temporary files.
fn list_segments(dir: &Path) -> LogResult<(Vec<Offset>, Vec<std::path::PathBuf>)> {
    let io_err = |e| LogError::io("list directory", dir, e);
    let mut bases = Vec::new();
    let mut leftovers = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err)? {
        let path = entry.map_err(io_err)?.path();
        if let Some(base) = parse_segment_name(&path) {
            bases.push(base);
        } else if path.extension().is_some_and(|e| e == "tmp") {
            leftovers.push(path);
        }
    }
    bases.sort();
    Ok((bases, leftovers))
}

async fn open_file(dir: &Path, base: Offset, config: &LogConfig) -> LogResult<(DirectFile, u64)> {
    let path = dir.join(segment_file_names(base).0);
    let file = DirectFile::open(&path, false, config.lock_wait_ms, config.faults.clone())
        .await
        .map_err(|e| LogError::io("open segment", &path, e))?;
    let len = file
        .len()
        .await
        .map_err(|e| LogError::io("stat segment", &path, e))?;
    Ok((file, len))
}

async fn scan_all(
    file: &DirectFile,
    base: Offset,
    len: u64,
    config: &LogConfig,
) -> LogResult<ScanOutcome> {
    scan_segment(
        file,
        ScanFrom {
            segment_base: base,
            position: 0,
            offset: base,
            file_len: len,
            index_interval_bytes: config.index_interval_bytes,
            index: SegmentIndex::default(),
            max_timestamp: i64::MIN,
            limits: &config.limits,
            gaps: config.compaction.is_some(),
        },
    )
    .await
    .map_err(|e| LogError::io("read segment", file.path(), e))
}

/// The error for an indexed stretch that does not run exactly to the file's end.
fn stretch_mismatch(file: &DirectFile, outcome: &ScanOutcome, indexed_next: Offset) -> LogError {
    let (position, reason) = match &outcome.stop {
        ScanStop::Invalid { position, reason } => (*position, reason.clone()),
        _ => (
            outcome.valid_end,
            format!(
                "segment's batches end at offset {} but its index says {indexed_next}",
                outcome.next_offset
            ),
        ),
    };
    LogError::corrupt(file.path(), position, reason)
}

/// Scans the last segment. After a clean close its index is intact and records the file's
/// exact size: then only the stretch after the last index entry is scanned.
async fn scan_tail(
    dir: &Path,
    file: &DirectFile,
    base: Offset,
    len: u64,
    config: &LogConfig,
) -> LogResult<ScanOutcome> {
    let Some((summary, index)) = load_index(dir, base)
        .await
        .filter(|(s, _)| s.segment_bytes == len)
    else {
        return scan_all(file, base, len, config).await;
    };
    let Some(last) = index.entries.last().copied() else {
        return scan_all(file, base, len, config).await;
    };
    let mut entries = index;
    entries.entries.pop();
    let mut outcome = scan_segment(
        file,
        ScanFrom {
            segment_base: base,
            position: u64::from(last.position),
            offset: Offset(base.get() + u64::from(last.relative_offset)),
            file_len: len,
            index_interval_bytes: config.index_interval_bytes,
            index: entries,
            max_timestamp: last.max_timestamp_before,
            limits: &config.limits,
            gaps: config.compaction.is_some(),
        },
    )
    .await
    .map_err(|e| LogError::io("read segment", file.path(), e))?;
    if outcome.stop != ScanStop::EndOfFile || outcome.next_offset != summary.next_offset {
        // The index is intact and the file has exactly the size it records: the log was
        // closed cleanly and not written since, so no write can have been torn. What does not
        // match is damage, reported like damage in a closed segment, not truncated away.
        return Err(stretch_mismatch(file, &outcome, summary.next_offset));
    }
    // Batches before the last entry were not counted: the segment is non-empty either way.
    outcome.batches += u64::from(last.position > 0);
    if last.position > 0 {
        // The segment's age (`segment.ms`) counts from its first batch, which the scan above
        // did not see: read its header. (Leaving it unknown restarted the age at the first
        // append after every clean reopen, so a log restarted more often than `segment.ms`
        // never rolled its active segment, and retention never deleted its data.)
        let block = file
            .read_at(0, BLOCK_BYTES)
            .await
            .map_err(|e| LogError::io("read segment", file.path(), e))?;
        match BatchHeader::parse(block.as_slice(), &config.limits) {
            Ok(header) => outcome.first_timestamp = Some(header.max_timestamp),
            Err(err) => {
                return Err(LogError::corrupt(
                    file.path(),
                    0,
                    format!("bad first batch header in a cleanly closed segment: {err}"),
                ));
            }
        }
    }
    Ok(outcome)
}

async fn remove_segment_files(dir: &Path, base: Offset) -> LogResult<()> {
    let (log, index, time) = segment_file_names(base);
    for name in [index, time, log] {
        let path = dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(LogError::io("remove segment", path, e)),
        }
    }
    Ok(())
}

/// Checks a closed segment and returns it, rebuilding its index when needed.
async fn recover_closed(
    dir: &Path,
    base: Offset,
    next_base: Offset,
    config: &LogConfig,
) -> LogResult<Segment> {
    let (file, len) = open_file(dir, base, config).await?;
    let path = file.path().to_path_buf();
    let trusted = match load_index(dir, base).await {
        Some((summary, index)) if summary.segment_bytes == len => Some((summary, index)),
        _ => None,
    };
    let segment = if let Some((summary, index)) = trusted {
        // Check the last indexed stretch: it must run exactly to the end of the file.
        let (position, offset, before) = index.entries.last().map_or((0, base, i64::MIN), |e| {
            (
                u64::from(e.position),
                Offset(base.get() + u64::from(e.relative_offset)),
                e.max_timestamp_before,
            )
        });
        let outcome = scan_segment(
            &file,
            ScanFrom {
                segment_base: base,
                position,
                offset,
                file_len: len,
                index_interval_bytes: u32::MAX,
                index: SegmentIndex::default(),
                max_timestamp: before,
                limits: &config.limits,
                gaps: config.compaction.is_some(),
            },
        )
        .await
        .map_err(|e| LogError::io("read segment", &path, e))?;
        if outcome.stop != ScanStop::EndOfFile || outcome.next_offset != summary.next_offset {
            return Err(stretch_mismatch(&file, &outcome, summary.next_offset));
        }
        Segment {
            file: Rc::new(SegmentFile::new(file, base, len)),
            size: len,
            next_offset: summary.next_offset,
            max_timestamp: summary.max_timestamp,
            first_append_ms: None,
            last_indexed: index.entries.last().map(|e| u64::from(e.position)),
            index,
            state: SegmentState::Closed,
        }
    } else {
        let outcome = scan_all(&file, base, len, config).await?;
        let clean_end = match &outcome.stop {
            ScanStop::EndOfFile => true,
            // Preallocated space after the data: the segment was rolled but not yet truncated.
            ScanStop::Zeros => all_zero_from(&file, outcome.valid_end, len)
                .await
                .map_err(|e| LogError::io("read segment", &path, e))?,
            ScanStop::Invalid { .. } => false,
        };
        if !clean_end {
            let (position, reason) = match outcome.stop {
                ScanStop::Invalid { position, reason } => (position, reason),
                _ => (
                    outcome.valid_end,
                    "non-zero bytes after the last batch".to_string(),
                ),
            };
            return Err(LogError::corrupt(path, position, reason));
        }
        if outcome.valid_end != len {
            file.set_len(outcome.valid_end)
                .await
                .map_err(|e| LogError::io("truncate segment", &path, e))?;
            file.sync_all()
                .await
                .map_err(|e| LogError::io("fsync segment", &path, e))?;
        }
        let allocated = outcome.valid_end;
        let segment = from_scan(file, base, allocated, outcome, SegmentState::Closed);
        write_index(dir, &segment).await?;
        tracing::info!(dir = %dir.display(), segment = base.get(), "rebuilt segment index");
        segment
    };
    if segment.next_offset != next_base {
        return Err(LogError::corrupt(
            segment.file.file.path(),
            segment.size,
            format!(
                "segment ends at offset {} but the next segment starts at {next_base}",
                segment.next_offset
            ),
        ));
    }
    Ok(segment)
}

/// The segment a scan of its file describes.
fn from_scan(
    file: DirectFile,
    base: Offset,
    allocated: u64,
    outcome: ScanOutcome,
    state: SegmentState,
) -> Segment {
    Segment {
        file: Rc::new(SegmentFile::new(file, base, allocated)),
        size: outcome.valid_end,
        next_offset: outcome.next_offset,
        max_timestamp: outcome.max_timestamp,
        first_append_ms: outcome.first_timestamp,
        last_indexed: outcome.index.entries.last().map(|e| u64::from(e.position)),
        index: outcome.index,
        state,
    }
}

async fn write_index(dir: &Path, segment: &Segment) -> LogResult<()> {
    let (_, index_name, time_name) = segment_file_names(segment.base());
    let summary = segment.summary();
    for (name, bytes) in [
        (index_name, encode_offset_index(&summary, &segment.index)),
        (time_name, encode_time_index(&summary, &segment.index)),
    ] {
        write_file_atomically(dir, &name, bytes)
            .await
            .map_err(|e| LogError::io("write index", dir.join(&name), e))?;
    }
    Ok(())
}

/// Recovers the log in `dir`, creating its first segment if it has none.
pub(crate) async fn recover(dir: &Path, config: &LogConfig) -> LogResult<Recovered> {
    let (mut bases, leftovers) = list_segments(dir)?;
    // Scan the last segment; drop it while it holds no valid batch and others precede it.
    let (tail_file, tail_len, outcome) = loop {
        let Some(&base) = bases.last() else {
            break create_first(dir, config).await?;
        };
        let (file, len) = open_file(dir, base, config).await?;
        let outcome = scan_tail(dir, &file, base, len, config).await?;
        // Only a segment that was never written (zeros, or nothing) is removed: a crash right
        // after a roll. One whose first batch is damaged is a tail like any other.
        let never_written = outcome.valid_end == 0
            && match outcome.stop {
                ScanStop::EndOfFile => true,
                ScanStop::Zeros => all_zero_from(&file, 0, len)
                    .await
                    .map_err(|e| LogError::io("read segment", file.path(), e))?,
                ScanStop::Invalid { .. } => false,
            };
        if never_written && bases.len() > 1 {
            tracing::warn!(dir = %dir.display(), segment = base.get(), "removing empty last segment left by a crash");
            drop(file);
            remove_segment_files(dir, base).await?;
            bases.pop();
            continue;
        }
        break (file, len, outcome);
    };
    // A compaction swap that reached its commit point is finished, any other is discarded
    // (see `compact`): a closed segment is then either the cleaned or the original one,
    // whole. Done only now that the tail's lock is held, like the removal below.
    crate::compact::finish_swaps(dir)
        .map_err(|e| LogError::io("finish compaction swap", dir, e))?;
    // Half-written index files from a crash during a seal (the index is rebuilt). Removed
    // only now that the tail's lock is held: another live instance would still own them.
    for path in leftovers {
        std::fs::remove_file(&path).map_err(|e| LogError::io("remove temporary file", &path, e))?;
    }
    let mut segments = BTreeMap::new();
    let tail_segment_base = bases.last().copied().unwrap_or(Offset::ZERO);
    for pair in bases.windows(2) {
        let segment = recover_closed(dir, pair[0], pair[1], config).await?;
        segments.insert(pair[0], segment);
    }
    let path = tail_file.path().to_path_buf();
    if let ScanStop::Invalid { position, reason } = &outcome.stop {
        tracing::warn!(
            file = %path.display(),
            position,
            truncated_bytes = tail_len - position,
            %reason,
            "truncating the last segment after its last valid batch"
        );
    }
    // Cut whatever follows the valid batches, then allocate ahead again (zeros).
    let allocated = align_up(outcome.valid_end) + config.preallocate_bytes;
    let io_err = |op, e| LogError::io(op, &path, e);
    tail_file
        .set_len(outcome.valid_end)
        .await
        .map_err(|e| io_err("truncate segment", e))?;
    // A full disk does not stop the log from opening: reads go on, and appends allocate
    // (or are refused with DiskFull) once they need the space.
    let allocated = match tail_file.allocate(0, allocated).await {
        Ok(()) => allocated,
        Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
            tracing::warn!(
                file = %path.display(),
                "disk full: the active segment is not allocated ahead; appends are refused with DiskFull until space frees"
            );
            align_up(outcome.valid_end)
        }
        Err(e) => return Err(io_err("preallocate segment", e)),
    };
    tail_file
        .sync_all()
        .await
        .map_err(|e| io_err("fsync segment", e))?;
    let tail_block = read_tail_block(&tail_file, outcome.valid_end)
        .await
        .map_err(|e| io_err("read segment", e))?;
    // The tail's index files (from a clean close) go stale with the next append.
    let (_, index_name, time_name) = segment_file_names(tail_segment_base);
    for name in [index_name, time_name] {
        let _ = std::fs::remove_file(dir.join(name));
    }
    sync_dir(dir)
        .await
        .map_err(|e| LogError::io("sync directory", dir, e))?;
    let tail = from_scan(
        tail_file,
        tail_segment_base,
        allocated,
        outcome,
        SegmentState::Active,
    );
    segments.insert(tail_segment_base, tail);
    Ok(Recovered {
        segments,
        tail_block,
    })
}

async fn create_first(dir: &Path, config: &LogConfig) -> LogResult<(DirectFile, u64, ScanOutcome)> {
    let path = dir.join(segment_file_names(Offset::ZERO).0);
    let file = DirectFile::open(&path, true, config.lock_wait_ms, config.faults.clone())
        .await
        .map_err(|e| LogError::io("create segment", &path, e))?;
    let outcome = ScanOutcome {
        valid_end: 0,
        next_offset: Offset::ZERO,
        max_timestamp: i64::MIN,
        first_timestamp: None,
        batches: 0,
        index: SegmentIndex::default(),
        stop: ScanStop::EndOfFile,
    };
    Ok((file, 0, outcome))
}
