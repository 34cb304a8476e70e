//! One compaction pass over a log (`cleanup.policy=compact`); the algorithm and its file
//! protocol are described in `crate::compact` and docs/ARCHITECTURE.md ("Compaction").
//!
//! Only closed segments are read and rewritten; the active segment, the write pipeline and the
//! flusher are never touched, so appends go on during a pass. The state is borrowed only in
//! short synchronous steps (planning, and installing each cleaned segment).

use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use compio::io::AsyncWriteAtExt;
use sluice_proto::{BatchHeader, Offset, RecordBatch};

use super::{PartitionLog, Shared, write_file_atomically};
use crate::compact::{
    CLEANED_SUFFIX, CLEANER_READ_BYTES, CLEANER_WRITE_BYTES, Filtered, OffsetMap, RecordView,
    Throttle, commit_swap, filter_batch, install_swap, remove_cleaned, segment_names, suffixed,
};
use crate::error::{LogError, LogResult};
use crate::index::{
    IndexEntry, SegmentIndex, SegmentSummary, encode_offset_index, encode_time_index,
};
use crate::io::{DirectFile, sync_dir};
use crate::scan::{ReadFrom, read_batches};
use crate::segment::{Segment, SegmentFile, SegmentState};

/// What one cleaning pass did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanStats {
    /// Closed segments read by the rewrite pass.
    pub segments_scanned: usize,
    /// Segments replaced by a cleaned copy (those that lost at least one record).
    pub segments_rewritten: usize,
    /// Bytes of the scanned segments before the pass.
    pub bytes_before: u64,
    /// Bytes of the same segments after it.
    pub bytes_after: u64,
    /// Records of the scanned segments that stayed.
    pub records_kept: u64,
    /// Records removed (superseded, or tombstones past `delete.retention.ms`).
    pub records_removed: u64,
    /// Keys in the offset map.
    pub keys: usize,
    /// Offsets below this are now clean; the next pass starts its dirty range here.
    pub cleaned_to: Offset,
    /// Wall time of the pass.
    pub duration: Duration,
}

/// A closed segment as planned for a pass.
#[derive(Clone)]
struct Source {
    base: Offset,
    file: Rc<SegmentFile>,
    size: u64,
    next_offset: Offset,
    max_timestamp: i64,
}

/// A segment rewritten into `.cleaned` files.
struct Rewritten {
    size: u64,
    index: SegmentIndex,
    max_timestamp: i64,
}

/// Clears the log's `cleaning` flag however the pass ends (also when its task is dropped).
struct CleaningGuard<'a>(&'a Shared);

impl Drop for CleaningGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.0.state.borrow_mut();
        st.cleaning = false;
        st.swapping = false;
    }
}

impl PartitionLog {
    /// Whether the log is compacted (`cleanup.policy=compact`): the cleaner runs on it, and
    /// its reads accept offset gaps.
    pub fn compacted(&self) -> bool {
        self.shared.config.compaction.is_some()
    }

    /// Bytes of closed segments not yet cleaned over all closed segments' bytes (0 when there
    /// is no closed segment). A pass runs when this reaches `min.cleanable.dirty.ratio`.
    pub fn dirty_ratio(&self) -> f64 {
        let st = self.shared.state.borrow();
        let from = st.cleaned_to.max(st.log_start);
        let (mut total, mut dirty) = (0u64, 0u64);
        for s in st
            .segments
            .values()
            .take_while(|s| s.state == SegmentState::Closed)
        {
            total += s.size;
            if s.base() >= from {
                dirty += s.size;
            }
        }
        if total == 0 {
            0.0
        } else {
            dirty as f64 / total as f64
        }
    }

    /// End of the closed segments: offsets below it are in segments a pass may clean (a
    /// rolled segment counts once its seal has completed).
    pub fn cleanable_end(&self) -> Offset {
        let st = self.shared.state.borrow();
        st.segments
            .values()
            .take_while(|s| s.state == SegmentState::Closed)
            .last()
            .map_or(st.log_start, |s| s.next_offset)
    }

    /// Runs one compaction pass at wall time `now_ms` if the log is compacted and its dirty
    /// ratio reaches `min.cleanable.dirty.ratio`: keeps the latest record of every key in the
    /// closed segments (and the last record of each segment), removes tombstones older than
    /// `delete.retention.ms`, and swaps each changed segment in atomically. `None` when no
    /// pass was due. Appends go on meanwhile; only one pass runs at a time.
    pub async fn clean(&self, now_ms: i64) -> LogResult<Option<CleanStats>> {
        self.clean_pass(now_ms, false).await
    }

    /// Like [`PartitionLog::clean`], whatever the dirty ratio (tests and admin tools).
    pub async fn clean_now(&self, now_ms: i64) -> LogResult<Option<CleanStats>> {
        self.clean_pass(now_ms, true).await
    }

    async fn clean_pass(&self, now_ms: i64, force: bool) -> LogResult<Option<CleanStats>> {
        let shared = &*self.shared;
        let Some(cc) = shared.config.compaction.clone() else {
            return Ok(None);
        };
        let (sources, first_dirty) = {
            let mut st = shared.state.borrow_mut();
            if st.cleaning || st.repl.truncating || st.stopped.is_some() || st.closing {
                return Ok(None);
            }
            let sources: Vec<Source> = st
                .segments
                .values()
                .take_while(|s| s.state == SegmentState::Closed)
                .map(|s| Source {
                    base: s.base(),
                    file: s.file.clone(),
                    size: s.size,
                    next_offset: s.next_offset,
                    max_timestamp: s.max_timestamp,
                })
                .collect();
            let first_dirty = st.cleaned_to.max(st.log_start);
            let total: u64 = sources.iter().map(|s| s.size).sum();
            let dirty: u64 = sources
                .iter()
                .filter(|s| s.base >= first_dirty)
                .map(|s| s.size)
                .sum();
            let ratio = if total == 0 {
                0.0
            } else {
                dirty as f64 / total as f64
            };
            if dirty == 0 || (!force && ratio < cc.min_cleanable_dirty_ratio) {
                return Ok(None);
            }
            st.cleaning = true;
            (sources, first_dirty)
        };
        let _guard = CleaningGuard(shared);
        let started = Instant::now();
        let mut throttle = Throttle::new(cc.io_bytes_per_s);
        // Pass 1: key -> latest offset over the dirty segments old enough to clean, as far as
        // the map holds whole segments.
        let lag_limit = now_ms.saturating_sub(cc.min_compaction_lag_ms as i64);
        let mut map = OffsetMap::new(cc.dedupe_buffer_bytes);
        let mut end = first_dirty;
        for source in sources.iter().filter(|s| s.base >= first_dirty) {
            if cc.min_compaction_lag_ms > 0 && source.max_timestamp > lag_limit {
                break;
            }
            let mut full = false;
            for_each_batch(shared, source, &mut throttle, |batch| {
                for record in batch.records()? {
                    let record = record?;
                    if let Some(key) = &record.key
                        && !map.insert(key, record.offset(batch.base_offset()))
                    {
                        full = true;
                        return Ok(false);
                    }
                }
                Ok(true)
            })
            .await?;
            if full {
                break;
            }
            end = source.next_offset;
        }
        if end == first_dirty {
            if map.len() > 0 {
                tracing::warn!(
                    dir = %shared.dir.display(),
                    dedupe_buffer_bytes = cc.dedupe_buffer_bytes,
                    segment = first_dirty.get(),
                    "compaction skipped: the cleaner's offset map cannot hold the keys of one segment"
                );
            }
            return Ok(None);
        }
        // Pass 2: rewrite every closed segment below `end`, keeping a record iff it is the
        // latest of its key (or has no key, or ends its segment), dropping old tombstones.
        let tombstone_limit = now_ms.saturating_sub(cc.delete_retention_ms as i64);
        let mut stats = CleanStats {
            segments_scanned: 0,
            segments_rewritten: 0,
            bytes_before: 0,
            bytes_after: 0,
            records_kept: 0,
            records_removed: 0,
            keys: map.len(),
            cleaned_to: end,
            duration: Duration::ZERO,
        };
        for source in sources.iter().filter(|s| s.next_offset <= end) {
            stats.segments_scanned += 1;
            stats.bytes_before += source.size;
            let last = Offset(source.next_offset.get() - 1);
            let keep = |r: &RecordView<'_>| {
                if r.offset == last {
                    return true;
                }
                let Some(key) = r.key else { return true };
                if map.get(key).is_some_and(|latest| latest > r.offset) {
                    return false;
                }
                !(r.tombstone && r.timestamp < tombstone_limit)
            };
            let rewritten =
                rewrite_segment(shared, source, keep, &mut throttle, &mut stats).await?;
            match rewritten {
                Some(rewritten) => {
                    let size = rewritten.size;
                    if swap_in(shared, source, rewritten).await? {
                        stats.segments_rewritten += 1;
                        stats.bytes_after += size;
                    } else {
                        stats.bytes_after += source.size;
                    }
                }
                None => stats.bytes_after += source.size,
            }
        }
        {
            let mut st = shared.state.borrow_mut();
            st.cleaned_to = st.cleaned_to.max(end);
        }
        stats.duration = started.elapsed();
        tracing::info!(
            dir = %shared.dir.display(),
            segments_scanned = stats.segments_scanned,
            segments_rewritten = stats.segments_rewritten,
            bytes_before = stats.bytes_before,
            bytes_after = stats.bytes_after,
            records_kept = stats.records_kept,
            records_removed = stats.records_removed,
            keys = stats.keys,
            cleaned_to = end.get(),
            duration_ms = stats.duration.as_millis() as u64,
            "compaction pass"
        );
        Ok(Some(stats))
    }
}

/// Calls `f` on every batch of `source`, reading at most [`CLEANER_READ_BYTES`] at a time
/// and yielding (or throttling) between reads; stops when `f` returns `false`.
async fn for_each_batch(
    shared: &Shared,
    source: &Source,
    throttle: &mut Throttle,
    mut f: impl FnMut(&RecordBatch) -> Result<bool, sluice_proto::DecodeError>,
) -> LogResult<()> {
    let path = source.file.file.path().to_path_buf();
    let mut position = 0u64;
    let mut expected = source.base;
    while position < source.size {
        let read = read_batches(
            &source.file.file,
            ReadFrom {
                position,
                position_offset: expected,
                offset: expected,
                end_position: source.size,
                end_offset: Offset(u64::MAX),
                max_bytes: CLEANER_READ_BYTES,
                limits: &shared.config.limits,
                gaps: true,
                prefetched: None,
            },
        )
        .await?;
        if read.batches.is_empty() {
            return Err(LogError::corrupt(
                &path,
                position,
                "no batch where the segment's data goes on",
            ));
        }
        for batch in &read.batches {
            let go_on = f(batch).map_err(|e| LogError::corrupt(&path, position, e.to_string()))?;
            position += batch.len() as u64;
            expected = batch.next_offset();
            if !go_on {
                return Ok(());
            }
        }
        throttle.step(read.bytes).await;
    }
    Ok(())
}

/// Output of a rewrite: buffered, written in [`CLEANER_WRITE_BYTES`] steps.
struct Output {
    file: compio::fs::File,
    path: std::path::PathBuf,
    buf: Vec<u8>,
    written: u64,
    size: u64,
    index: SegmentIndex,
    last_indexed: Option<u64>,
    max_timestamp: i64,
}

impl Output {
    async fn push(
        &mut self,
        base: Offset,
        bytes: &[u8],
        header: &BatchHeader,
        index_interval_bytes: u32,
        throttle: &mut Throttle,
    ) -> LogResult<()> {
        let position = self.size;
        if self
            .last_indexed
            .is_none_or(|last| position - last >= u64::from(index_interval_bytes))
        {
            self.index.push(IndexEntry {
                relative_offset: (header.base_offset.get() - base.get()) as u32,
                position: position as u32,
                max_timestamp_before: self.max_timestamp,
            });
            self.last_indexed = Some(position);
        }
        self.max_timestamp = self.max_timestamp.max(header.max_timestamp);
        self.buf.extend_from_slice(bytes);
        self.size += bytes.len() as u64;
        if self.buf.len() >= CLEANER_WRITE_BYTES {
            let len = self.buf.len();
            self.flush().await?;
            throttle.step(len).await;
        }
        Ok(())
    }

    async fn flush(&mut self) -> LogResult<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.buf);
        let len = buf.len() as u64;
        let compio::BufResult(res, mut buf) = self.file.write_all_at(buf, self.written).await;
        res.map_err(|e| LogError::io("write cleaned segment", &self.path, e))?;
        self.written += len;
        buf.clear();
        self.buf = buf;
        Ok(())
    }
}

/// Writes the kept records of `source` into `{base}.log.cleaned` with its index files beside
/// it (`.index.cleaned`, `.timeindex.cleaned`), all fsynced. `None` (and no files) when every
/// record stays.
async fn rewrite_segment(
    shared: &Shared,
    source: &Source,
    mut keep: impl FnMut(&RecordView<'_>) -> bool,
    throttle: &mut Throttle,
    stats: &mut CleanStats,
) -> LogResult<Option<Rewritten>> {
    let dir = &shared.dir;
    let limits = &shared.config.limits;
    let [log_name, index_name, time_name] = segment_names(source.base);
    remove_cleaned(dir, source.base)
        .map_err(|e| LogError::io("remove stale cleaned files", dir, e))?;
    let path = suffixed(dir, &log_name, CLEANED_SUFFIX);
    let file = compio::fs::File::create(&path)
        .await
        .map_err(|e| LogError::io("create cleaned segment", &path, e))?;
    let mut out = Output {
        file,
        path: path.clone(),
        buf: Vec::with_capacity(CLEANER_WRITE_BYTES + sluice_proto::BATCH_BYTES_MAX as usize / 16),
        written: 0,
        size: 0,
        index: SegmentIndex::default(),
        last_indexed: None,
        max_timestamp: i64::MIN,
    };
    let mut changed = false;
    let mut kept = 0u64;
    let mut removed = 0u64;
    // Batches are collected per read step and written after it (the writes await).
    let mut position = 0u64;
    let mut expected = source.base;
    let result: LogResult<()> = async {
        while position < source.size {
            let read = read_batches(
                &source.file.file,
                ReadFrom {
                    position,
                    position_offset: expected,
                    offset: expected,
                    end_position: source.size,
                    end_offset: Offset(u64::MAX),
                    max_bytes: CLEANER_READ_BYTES,
                    limits,
                    gaps: true,
                    prefetched: None,
                },
            )
            .await?;
            if read.batches.is_empty() {
                return Err(LogError::corrupt(
                    source.file.file.path(),
                    position,
                    "no batch where the segment's data goes on",
                ));
            }
            for batch in &read.batches {
                let corrupt = |e: String| LogError::corrupt(source.file.file.path(), position, e);
                let mut batch_kept = 0u64;
                let filtered = filter_batch(batch, limits, |r| {
                    let k = keep(r);
                    batch_kept += u64::from(k);
                    k
                })
                .map_err(|e| corrupt(e.to_string()))?;
                kept += batch_kept;
                removed += u64::from(batch.record_count()) - batch_kept;
                match filtered {
                    Filtered::All => {
                        out.push(
                            source.base,
                            batch.as_bytes(),
                            batch.header(),
                            shared.config.index_interval_bytes,
                            throttle,
                        )
                        .await?;
                    }
                    Filtered::None => changed = true,
                    Filtered::Some(runs) => {
                        changed = true;
                        for run in runs {
                            let header = BatchHeader::parse(&run, limits)
                                .map_err(|e| corrupt(e.to_string()))?;
                            out.push(
                                source.base,
                                &run,
                                &header,
                                shared.config.index_interval_bytes,
                                throttle,
                            )
                            .await?;
                        }
                    }
                }
                position += batch.len() as u64;
                expected = batch.next_offset();
            }
            throttle.step(read.bytes).await;
        }
        Ok(())
    }
    .await;
    stats.records_kept += kept;
    stats.records_removed += removed;
    if result.is_err() || !changed {
        let _ = out.file.close().await;
        let _ = remove_cleaned(dir, source.base);
        return result.map(|()| None);
    }
    let finish: LogResult<()> = async {
        out.flush().await?;
        out.file
            .sync_all()
            .await
            .map_err(|e| LogError::io("fsync cleaned segment", &path, e))?;
        let summary = SegmentSummary {
            base_offset: source.base,
            segment_bytes: out.size,
            next_offset: source.next_offset,
            max_timestamp: out.max_timestamp,
        };
        for (name, bytes) in [
            (index_name, encode_offset_index(&summary, &out.index)),
            (time_name, encode_time_index(&summary, &out.index)),
        ] {
            let name = format!("{name}.{CLEANED_SUFFIX}");
            write_file_atomically(dir, &name, bytes)
                .await
                .map_err(|e| LogError::io("write cleaned index", dir.join(&name), e))?;
        }
        Ok(())
    }
    .await;
    let Output {
        file,
        size,
        index,
        max_timestamp,
        ..
    } = out;
    let _ = file.close().await;
    if let Err(e) = finish {
        let _ = remove_cleaned(dir, source.base);
        return Err(e);
    }
    Ok(Some(Rewritten {
        size,
        index,
        max_timestamp,
    }))
}

/// Swaps a cleaned segment in: checks it is still the log's (retention may have deleted it
/// meanwhile), renames its `.cleaned` files to `.swap` (the log file last: the commit point),
/// then over the segment's files, and installs it in the log's state. Readers holding the old
/// file keep reading it (the open file outlives its name). `false` if the segment is gone.
async fn swap_in(shared: &Shared, source: &Source, cleaned: Rewritten) -> LogResult<bool> {
    let dir = &shared.dir;
    {
        let mut st = shared.state.borrow_mut();
        let current = st
            .segments
            .get(&source.base)
            .is_some_and(|s| Rc::ptr_eq(&s.file, &source.file) && s.state == SegmentState::Closed);
        if !current || st.closing || st.stopped.is_some() {
            drop(st);
            remove_cleaned(dir, source.base)
                .map_err(|e| LogError::io("remove cleaned files", dir, e))?;
            return Ok(false);
        }
        // Retention deletes no segment while a swap renames files.
        st.swapping = true;
    }
    let sync = |dir: &Path| {
        let dir = dir.to_path_buf();
        async move {
            sync_dir(&dir)
                .await
                .map_err(|e| LogError::io("sync directory", &dir, e))
        }
    };
    let before_commit: LogResult<()> = async {
        sync(dir).await?;
        commit_swap(dir, source.base).map_err(|e| LogError::io("commit compaction swap", dir, e))
    }
    .await;
    if let Err(e) = before_commit {
        let _ = remove_cleaned(dir, source.base);
        shared.state.borrow_mut().swapping = false;
        return Err(e);
    }
    // Past the commit point: a failure leaves `.log.swap`, which the next open finishes. The
    // log stops (its state no longer matches the files) rather than serve a mix.
    let after_commit: LogResult<DirectFile> = async {
        sync(dir).await?;
        install_swap(dir, source.base)
            .map_err(|e| LogError::io("install compaction swap", dir, e))?;
        sync(dir).await?;
        let path = dir.join(segment_names(source.base)[0].clone());
        DirectFile::open(
            &path,
            false,
            shared.config.lock_wait_ms,
            shared.config.faults.clone(),
        )
        .await
        .map_err(|e| LogError::io("open cleaned segment", &path, e))
    }
    .await;
    let mut st = shared.state.borrow_mut();
    st.swapping = false;
    let file = match after_commit {
        Ok(file) => file,
        Err(e) => {
            let io = std::io::Error::other(e.to_string());
            st.stop("compaction swap", dir, &io);
            return Err(e);
        }
    };
    let Some(segment) = st.segments.get_mut(&source.base) else {
        // Not reachable: retention waits for `swapping`, and the state is only changed here.
        return Ok(false);
    };
    *segment = Segment {
        file: Rc::new(SegmentFile::new(file, source.base, cleaned.size)),
        size: cleaned.size,
        next_offset: source.next_offset,
        max_timestamp: cleaned.max_timestamp,
        first_append_ms: segment.first_append_ms,
        last_indexed: cleaned.index.entries.last().map(|e| u64::from(e.position)),
        index: cleaned.index,
        state: SegmentState::Closed,
    };
    shared.cache.borrow_mut().drop_segment(source.base);
    st.reset_read_ahead();
    Ok(true)
}
