//! What a replicated partition log needs on top of appends and reads: leader epochs (stamped
//! on appends, remembered in the leader-epoch cache), follower appends that keep the
//! leader's offsets and epochs, crash-safe truncation of a divergent suffix, and a high
//! watermark distinct from the durable end. See "Replication support in the log" in
//! `docs/ARCHITECTURE.md`.
//!
//! Truncation is made atomic with an intent file: `truncate_to` first quiesces the log
//! (every appended byte written and synced), then writes `truncate-intent` holding the new
//! end offset, then changes the segments and checkpoints, and removes the intent last. A
//! crash before the intent is durable leaves the old log; after it, `open` finds the intent
//! and truncates again (the steps are idempotent), so a reopened log is the old one or the
//! truncated one.

use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_proto::{BATCH_HEADER_BYTES, BatchHeader, Offset};

use super::{Appended, Incoming, PartitionLog, Shared, read_tail_block, wait_progress};
use crate::aligned::{align_down, align_up};
use crate::config::READ_BYTES_MAX;
use crate::epoch::{
    EpochCache, EpochEntry, HW_CHECKPOINT, LEADER_EPOCH_CHECKPOINT, TRUNCATE_INTENT,
    TruncateIntent, decode_hw, decode_intent, encode_hw, encode_intent, read_optional,
    remove_checkpoint, write_checkpoint,
};
use crate::error::{LogError, LogResult};
use crate::index::segment_file_names;
use crate::io::{DirectFile, is_no_space, sync_dir};
use crate::segment::{Segment, SegmentState};

/// Least time between two writes of a log's `hw-checkpoint` while the high watermark moves
/// (it is also written at close, and at once when a truncation lowers it). A crash loses at
/// most this much high-watermark progress: the reopened log serves less until the leader
/// advances it again, never more than it had.
pub const HW_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(5);

/// Replication state of a log, kept in its `State`.
#[derive(Default)]
pub(super) struct Replication {
    /// The leader-epoch cache.
    pub(super) epochs: EpochCache,
    /// `epochs` differs from its checkpoint file.
    epochs_dirty: bool,
    /// A write of the leader-epoch checkpoint is in progress.
    epochs_writing: bool,
    /// Set by `become_leader`: appends stamp this epoch.
    pub(super) leader_epoch: Option<u32>,
    /// The high watermark, once given; `None`: it follows the durable end.
    pub(super) hw: Option<Offset>,
    /// The value in `hw-checkpoint`, if known.
    hw_checkpointed: Option<Offset>,
    /// When the last `hw-checkpoint` write started.
    hw_written_at: Option<Instant>,
    /// A write of `hw-checkpoint` is in progress.
    hw_writing: bool,
    /// A truncation is in progress: appends, rolls, retention and compaction wait.
    pub(super) truncating: bool,
}

impl Replication {
    /// Retention moved the log start: epochs wholly below it go, the high watermark is at
    /// least the log start.
    pub(super) fn log_start_moved(&mut self, start: Offset) {
        if self.epochs.truncate_from_start(start) {
            self.epochs_dirty = true;
        }
        if let Some(hw) = self.hw
            && hw < start
        {
            self.hw = Some(start);
        }
    }
}

/// Which in-progress flag a [`Busy`] holds.
#[derive(Clone, Copy)]
enum Flag {
    EpochsWriting,
    HwWriting,
    Truncating,
}

/// Holds one of the log's in-progress flags; clears it and wakes waiters when dropped (also
/// when the future holding it is dropped half-way).
struct Busy<'a> {
    shared: &'a Shared,
    flag: Flag,
}

impl Busy<'_> {
    /// Waits until `flag` is free and takes it.
    async fn take(shared: &Shared, flag: Flag) -> LogResult<Busy<'_>> {
        loop {
            {
                let mut st = shared.state.borrow_mut();
                if let Some(reason) = &st.stopped {
                    return Err(LogError::Stopped {
                        reason: reason.clone(),
                    });
                }
                let slot = flag_of(&mut st.repl, flag);
                if !*slot {
                    *slot = true;
                    return Ok(Busy { shared, flag });
                }
            }
            wait_progress(shared).await;
        }
    }
}

fn flag_of(repl: &mut Replication, flag: Flag) -> &mut bool {
    match flag {
        Flag::EpochsWriting => &mut repl.epochs_writing,
        Flag::HwWriting => &mut repl.hw_writing,
        Flag::Truncating => &mut repl.truncating,
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let mut st = self.shared.state.borrow_mut();
        *flag_of(&mut st.repl, self.flag) = false;
        st.wake_all();
        st.kick_flusher();
    }
}

/// Where a truncation cuts.
struct Cut {
    /// The segment that becomes the active one.
    base: Offset,
    /// Its new size (a batch boundary).
    position: u64,
    /// The new log end offset.
    new_end: Offset,
    /// Largest timestamp of the batches it keeps.
    max_timestamp: i64,
}

impl PartitionLog {
    /// Makes this log the leader's for `epoch`: from now on [`PartitionLog::append`] stamps
    /// `epoch` into each batch header, and the leader-epoch cache records that `epoch` starts
    /// at the current log end (persisted before this returns). Calling it again with the
    /// latest epoch only resumes stamping; an older epoch is refused with
    /// [`LogError::StaleLeaderEpoch`].
    pub async fn become_leader(&self, epoch: u32) -> LogResult<()> {
        let _truncation = Busy::take(&self.shared, Flag::Truncating).await?;
        {
            let mut st = self.shared.state.borrow_mut();
            st.check_writable()?;
            if let Some(latest) = st.repl.epochs.latest()
                && epoch < latest.epoch
            {
                return Err(LogError::StaleLeaderEpoch {
                    epoch,
                    latest: latest.epoch,
                });
            }
            let end = st.next_offset;
            if st.repl.epochs.assign(epoch, end) {
                st.repl.epochs_dirty = true;
            }
            st.repl.leader_epoch = Some(epoch);
        }
        self.checkpoint_epochs_if_dirty().await
    }

    /// Stops stamping a leader epoch on appends (the log now follows another leader and is
    /// written with [`PartitionLog::append_replica`]).
    pub fn become_follower(&self) {
        self.shared.state.borrow_mut().repl.leader_epoch = None;
    }

    /// The epoch [`PartitionLog::append`] stamps, if the log is a leader's.
    pub fn leader_epoch(&self) -> Option<u32> {
        self.shared.state.borrow().repl.leader_epoch
    }

    /// The leader-epoch cache: `(epoch, start offset)`, oldest first.
    pub fn epoch_entries(&self) -> Vec<EpochEntry> {
        self.shared.state.borrow().repl.epochs.entries().to_vec()
    }

    /// The latest epoch in the leader-epoch cache.
    pub fn latest_epoch(&self) -> Option<u32> {
        self.shared
            .state
            .borrow()
            .repl
            .epochs
            .latest()
            .map(|e| e.epoch)
    }

    /// Kafka's OffsetsForLeaderEpoch answer: the largest epoch `<= epoch` this log holds, and
    /// its end offset (the start of the next epoch, or the log end offset for the latest).
    /// `None` if the log knows no epoch that old. A follower whose latest epoch is `E`
    /// truncates to `min(its log end, end)` of the leader's answer for `E`.
    pub fn end_offset_for_epoch(&self, epoch: u32) -> Option<(u32, Offset)> {
        let st = self.shared.state.borrow();
        st.repl.epochs.end_offset_for(epoch, st.next_offset)
    }

    /// Appends a batch fetched from the leader, as it is: its base offset and leader epoch
    /// are kept (nothing is stamped). Its base offset must be the log end offset, else
    /// [`LogError::NonContiguous`]; header, size and CRC are checked as by
    /// [`PartitionLog::append`], and a bad batch leaves the log unchanged. A batch of an
    /// epoch newer than the cache's latest adds a cache entry (persisted before the batch is
    /// queued). Group commit, durability and the tail cache are those of `append`. A leader's
    /// log (between [`PartitionLog::become_leader`] and [`PartitionLog::become_follower`])
    /// refuses it with [`LogError::LeaderLog`]: a fetch answer of the previous leader that
    /// lands after this log took over must not write into it.
    pub async fn append_replica(&self, batch: Bytes) -> LogResult<Appended> {
        let header = self.check_batch_frame(&batch)?;
        sluice_proto::verify_crc(&batch)?;
        loop {
            {
                let mut st = self.shared.state.borrow_mut();
                st.check_writable()?;
                if !st.repl.truncating {
                    if let Some(epoch) = st.repl.leader_epoch {
                        return Err(LogError::LeaderLog { epoch });
                    }
                    if header.base_offset != st.next_offset {
                        return Err(LogError::NonContiguous {
                            expected: st.next_offset,
                            got: header.base_offset,
                        });
                    }
                    match st.repl.epochs.latest() {
                        Some(latest) if header.leader_epoch < latest.epoch => {
                            tracing::warn!(
                                dir = %self.shared.dir.display(),
                                batch_epoch = header.leader_epoch,
                                latest_epoch = latest.epoch,
                                base_offset = header.base_offset.get(),
                                "replica batch of an epoch older than the log's latest"
                            );
                        }
                        _ => {
                            if st
                                .repl
                                .epochs
                                .assign(header.leader_epoch, header.base_offset)
                            {
                                st.repl.epochs_dirty = true;
                            }
                        }
                    }
                    break;
                }
            }
            wait_progress(&self.shared).await;
        }
        self.checkpoint_epochs_if_dirty().await?;
        self.append_inner(Incoming::AsIs(batch)).await
    }

    /// The high watermark: consumers read below it. Equal to the durable end until the log
    /// is given one with [`PartitionLog::set_high_watermark`] (or finds an `hw-checkpoint`
    /// at open).
    pub fn high_watermark(&self) -> Offset {
        self.offsets().high_watermark
    }

    /// Sets the high watermark (the leader: the least log end of the in-sync replicas; a
    /// follower: the leader's, capped at its own end). It never goes beyond the durable end
    /// (a larger value is capped) and never back (a smaller value is ignored); only a
    /// truncation lowers it. Persisted to `hw-checkpoint` at most every
    /// [`HW_CHECKPOINT_INTERVAL`] and at close. Returns the high watermark now.
    pub fn set_high_watermark(&self, hw: Offset) -> Offset {
        let mut st = self.shared.state.borrow_mut();
        let durable = self.offsets_durable_end(&st);
        let capped = hw.min(durable);
        let now = match st.repl.hw {
            Some(current) if current >= capped => current,
            _ => capped,
        };
        st.repl.hw = Some(now);
        let due = !st.repl.hw_writing
            && !st.closing
            && st.repl.hw_checkpointed != Some(now)
            && st
                .repl
                .hw_written_at
                .is_none_or(|t| t.elapsed() >= HW_CHECKPOINT_INTERVAL);
        if due {
            st.repl.hw_writing = true;
            st.repl.hw_written_at = Some(Instant::now());
            let shared = self.shared.clone();
            compio::runtime::spawn(async move {
                let res = write_checkpoint(&shared.dir, HW_CHECKPOINT, encode_hw(now)).await;
                let mut st = shared.state.borrow_mut();
                st.repl.hw_writing = false;
                match res {
                    Ok(()) => st.repl.hw_checkpointed = Some(now),
                    Err(e) => tracing::warn!(
                        dir = %shared.dir.display(),
                        error = %e,
                        "writing hw-checkpoint failed; retried with the next high watermark"
                    ),
                }
                st.wake_all();
            })
            .detach();
        }
        now
    }

    fn offsets_durable_end(&self, st: &super::State) -> Offset {
        match self.shared.config.flush {
            crate::config::FlushPolicy::EveryBatch => st.acks.synced_next,
            crate::config::FlushPolicy::Interval { .. } => st.acks.written_next,
        }
    }

    /// Writes `hw-checkpoint` now if the high watermark was given and differs from it.
    async fn checkpoint_hw_now(&self) -> LogResult<()> {
        let _busy = Busy::take(&self.shared, Flag::HwWriting).await?;
        let Some(hw) = ({
            let st = self.shared.state.borrow();
            st.repl.hw.filter(|hw| st.repl.hw_checkpointed != Some(*hw))
        }) else {
            return Ok(());
        };
        let path = self.shared.dir.join(HW_CHECKPOINT);
        write_checkpoint(&self.shared.dir, HW_CHECKPOINT, encode_hw(hw))
            .await
            .map_err(|e| LogError::io("write hw-checkpoint", path, e))?;
        let mut st = self.shared.state.borrow_mut();
        st.repl.hw_checkpointed = Some(hw);
        st.repl.hw_written_at = Some(Instant::now());
        Ok(())
    }

    /// At close: the last high watermark goes to `hw-checkpoint`.
    pub(super) async fn checkpoint_hw_at_close(&self) -> LogResult<()> {
        self.checkpoint_hw_now().await
    }

    /// Writes the leader-epoch checkpoint if the cache changed since it was last written.
    pub(super) async fn checkpoint_epochs_if_dirty(&self) -> LogResult<()> {
        let _busy = Busy::take(&self.shared, Flag::EpochsWriting).await?;
        let bytes = {
            let mut st = self.shared.state.borrow_mut();
            if !st.repl.epochs_dirty {
                return Ok(());
            }
            st.repl.epochs_dirty = false;
            st.repl.epochs.encode()
        };
        let res = write_checkpoint(&self.shared.dir, LEADER_EPOCH_CHECKPOINT, bytes).await;
        if let Err(e) = res {
            self.shared.state.borrow_mut().repl.epochs_dirty = true;
            let path = self.shared.dir.join(LEADER_EPOCH_CHECKPOINT);
            return Err(LogError::io("write leader-epoch checkpoint", path, e));
        }
        Ok(())
    }

    /// Waits until every appended byte is written and synced, and no roll, compaction pass
    /// or swap is running. The caller holds the truncation flag, so no append starts.
    async fn quiesce(&self) -> LogResult<()> {
        loop {
            {
                let mut st = self.shared.state.borrow_mut();
                st.check_writable()?;
                if !st.rolling
                    && !st.cleaning
                    && !st.swapping
                    && st.pipeline.is_idle()
                    && st.acks.synced_pos >= st.pipeline.appended()
                    && st.acks.pending.is_empty()
                {
                    return Ok(());
                }
                st.flush_due = true;
                st.kick_flusher();
            }
            wait_progress(&self.shared).await;
        }
    }

    /// Removes every batch that ends at or after `offset` (a batch holding `offset` goes
    /// whole) from the segments, indexes, tail cache and leader-epoch cache, and lowers the
    /// high watermark to the new end if it was above. Returns the new log end offset: the
    /// base of the first removed batch (or `offset` in a compacted log with a gap there).
    /// A no-op at or after the log end; below the log start it is refused with
    /// [`LogError::OffsetOutOfRange`].
    ///
    /// Waits for appends in flight to become durable (and for a roll or compaction pass in
    /// progress to finish), and holds new appends back until it is done. A read running
    /// concurrently over the removed batches may fail with [`LogError::Corrupt`] or a short
    /// read; readers retry from the new end. Crash-safe: after a crash at any moment the
    /// reopened log is the old one or the truncated one (an intent file makes `open` finish
    /// an interrupted truncation). A failure half-way stops the log (the next open finishes
    /// the truncation).
    pub async fn truncate_to(&self, offset: Offset) -> LogResult<Offset> {
        let _truncation = Busy::take(&self.shared, Flag::Truncating).await?;
        {
            // The common case for a follower: nothing to cut, nothing to wait for.
            let st = self.shared.state.borrow();
            st.check_writable()?;
            if offset >= st.next_offset {
                return Ok(st.next_offset);
            }
        }
        self.quiesce().await?;
        let Some(cut) = self.plan_cut(offset).await? else {
            return Ok(self.shared.state.borrow().next_offset);
        };
        let dir = self.shared.dir.clone();
        let cut_file = self.shared.state.borrow().segments[&cut.base].file.clone();
        let tail_block = read_tail_block(&cut_file.file, cut.position)
            .await
            .map_err(|e| LogError::io("read segment", cut_file.file.path(), e))?;
        // The intent names the new end, a batch boundary: truncating to it cuts the same.
        write_checkpoint(
            &dir,
            TRUNCATE_INTENT,
            encode_intent(TruncateIntent::To(cut.new_end)),
        )
        .await
        .map_err(|e| LogError::io("write truncate-intent", dir.join(TRUNCATE_INTENT), e))?;
        // Memory first (readers see the truncated log at once), then the files.
        let (doomed, hw_lowered) = {
            let mut guard = self.shared.state.borrow_mut();
            let st = &mut *guard;
            let doomed: Vec<Offset> = st
                .segments
                .range(cut.base..)
                .map(|(base, _)| *base)
                .filter(|base| *base > cut.base)
                .collect();
            for base in &doomed {
                st.segments.remove(base);
            }
            let segment = st
                .segments
                .get_mut(&cut.base)
                .expect("the cut segment is in the log");
            segment.truncate(cut.position, cut.new_end, cut.max_timestamp);
            st.pipeline
                .restart_segment(cut_file.clone(), align_down(cut.position), &tail_block);
            st.next_offset = cut.new_end;
            st.acks.written_next = cut.new_end;
            st.acks.synced_next = cut.new_end;
            st.dirty_file = None;
            self.shared.cache.borrow_mut().truncate(cut.new_end);
            st.reset_read_ahead();
            st.cleaned_to = st.cleaned_to.min(cut.new_end);
            if st.repl.epochs.truncate_from_end(cut.new_end) {
                st.repl.epochs_dirty = true;
            }
            let hw_lowered = match st.repl.hw {
                Some(hw) if hw > cut.new_end => {
                    st.repl.hw = Some(cut.new_end);
                    true
                }
                _ => false,
            };
            (doomed, hw_lowered)
        };
        tracing::info!(
            dir = %dir.display(),
            requested = offset.get(),
            new_end = cut.new_end.get(),
            segments_removed = doomed.len(),
            "truncated the log"
        );
        let result = self
            .truncate_files(&cut, &cut_file.file, &doomed, hw_lowered)
            .await;
        if let Err(err) = &result {
            let mut st = self.shared.state.borrow_mut();
            st.stop("truncation", &dir, &std::io::Error::other(err.to_string()));
        }
        result?;
        Ok(cut.new_end)
    }

    /// Kafka's `truncateFullyAndStartAt`, for a follower whose log end is below the
    /// leader's log start (or otherwise unusable): removes every segment and starts the log
    /// empty at `start` (log start = log end = `start`), with an empty leader-epoch cache and
    /// the high watermark at `start`. Crash-safe like [`PartitionLog::truncate_to`]: a
    /// reopened log is the old one or the empty one at `start`.
    pub async fn truncate_fully_and_start_at(&self, start: Offset) -> LogResult<()> {
        let _truncation = Busy::take(&self.shared, Flag::Truncating).await?;
        self.quiesce().await?;
        let dir = self.shared.dir.clone();
        write_checkpoint(
            &dir,
            TRUNCATE_INTENT,
            encode_intent(TruncateIntent::FullyAt(start)),
        )
        .await
        .map_err(|e| LogError::io("write truncate-intent", dir.join(TRUNCATE_INTENT), e))?;
        let result = self.start_over_at(start).await;
        if let Err(err) = &result {
            let mut st = self.shared.state.borrow_mut();
            st.stop(
                "full truncation",
                &dir,
                &std::io::Error::other(err.to_string()),
            );
        }
        result
    }

    /// The steps of `truncate_fully_and_start_at` after its intent is durable: old segments
    /// go newest first (a crash leaves a prefix, or no segment), then the new one is created.
    /// Until it exists the log keeps its old segments in memory (appends are held back; a
    /// read may fail on a removed file).
    async fn start_over_at(&self, start: Offset) -> LogResult<()> {
        let dir = &self.shared.dir;
        let old: Vec<Offset> = self
            .shared
            .state
            .borrow()
            .segments
            .keys()
            .copied()
            .collect();
        for base in old.iter().rev() {
            let (log, index, time) = segment_file_names(*base);
            for name in [index, time, log] {
                let path = dir.join(name);
                match compio::fs::remove_file(&path).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(LogError::io("delete segment file", path, e)),
                }
            }
        }
        sync_dir(dir)
            .await
            .map_err(|e| LogError::io("sync directory", dir, e))?;
        let file = self.create_segment(start).await?;
        {
            let mut guard = self.shared.state.borrow_mut();
            let st = &mut *guard;
            st.segments.clear();
            st.segments.insert(
                start,
                Segment {
                    file: file.clone(),
                    size: 0,
                    next_offset: start,
                    max_timestamp: i64::MIN,
                    first_append_ms: None,
                    index: Default::default(),
                    last_indexed: None,
                    state: SegmentState::Active,
                },
            );
            st.pipeline.restart_segment(file, 0, &[]);
            st.log_start = start;
            st.next_offset = start;
            st.acks.written_next = start;
            st.acks.synced_next = start;
            st.dirty_file = None;
            self.shared.cache.borrow_mut().truncate(Offset::ZERO);
            st.reset_read_ahead();
            st.cleaned_to = start;
            if !st.repl.epochs.entries().is_empty() {
                st.repl.epochs = EpochCache::default();
                st.repl.epochs_dirty = true;
            }
            if st.repl.hw.is_some() {
                st.repl.hw = Some(start);
            }
        }
        tracing::info!(
            dir = %dir.display(),
            start = start.get(),
            segments_removed = old.len(),
            "truncated the log fully; it starts again empty"
        );
        self.checkpoint_epochs_if_dirty().await?;
        self.checkpoint_hw_now().await?;
        remove_checkpoint(dir, TRUNCATE_INTENT)
            .await
            .map_err(|e| LogError::io("remove truncate-intent", dir.join(TRUNCATE_INTENT), e))
    }

    /// Finds where truncating to `offset` cuts; `None` if at or after the end.
    async fn plan_cut(&self, offset: Offset) -> LogResult<Option<Cut>> {
        let (file, base, size, position, max_before, prev) = {
            let st = self.shared.state.borrow();
            if offset >= st.next_offset {
                return Ok(None);
            }
            if offset < st.log_start {
                return Err(LogError::OffsetOutOfRange {
                    requested: offset,
                    log_start: st.log_start,
                    log_end: st.next_offset,
                });
            }
            let (_, segment) = st
                .segments
                .range(..=offset)
                .next_back()
                .expect("offset >= log_start, the first segment's base");
            let relative = (offset.get() - segment.base().get()) as u32;
            let (position, max_before) = segment
                .index
                .floor_offset(relative)
                .map_or((0, i64::MIN), |e| {
                    (u64::from(e.position), e.max_timestamp_before)
                });
            let prev = st
                .segments
                .range(..segment.base())
                .next_back()
                .map(|(base, s)| (*base, s.size, s.next_offset, s.max_timestamp));
            (
                segment.file.clone(),
                segment.base(),
                segment.size,
                position,
                max_before,
                prev,
            )
        };
        let (position, new_end, max_timestamp) = find_cut(
            &file.file,
            position,
            size,
            offset,
            max_before,
            &self.shared.config.limits,
        )
        .await?;
        if position == 0
            && let Some((prev_base, prev_size, prev_next, prev_max)) = prev
        {
            // The whole segment goes: the previous one becomes the active one, whole.
            return Ok(Some(Cut {
                base: prev_base,
                position: prev_size,
                new_end: prev_next.min(new_end),
                max_timestamp: prev_max,
            }));
        }
        Ok(Some(Cut {
            base,
            position,
            new_end,
            max_timestamp,
        }))
    }

    /// The file steps of a truncation, each one idempotent, in an order that keeps the
    /// directory a valid log after a crash between any two of them.
    async fn truncate_files(
        &self,
        cut: &Cut,
        file: &DirectFile,
        doomed: &[Offset],
        hw_lowered: bool,
    ) -> LogResult<()> {
        let dir = &self.shared.dir;
        let remove = |name: String| async move {
            let path = dir.join(name);
            match compio::fs::remove_file(&path).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(LogError::io("delete segment file", path, e)),
            }
        };
        // The cut segment's index (from when it was closed) no longer matches it.
        let (_, index, time) = segment_file_names(cut.base);
        remove(index).await?;
        remove(time).await?;
        // Newest first: a crash leaves a prefix of the segments.
        for base in doomed.iter().rev() {
            let (log, index, time) = segment_file_names(*base);
            remove(index).await?;
            remove(time).await?;
            remove(log).await?;
        }
        let io = |op: &'static str| move |e| LogError::io(op, file.path(), e);
        file.set_len(cut.position)
            .await
            .map_err(io("truncate segment"))?;
        let want = align_up(cut.position) + self.shared.config.preallocate_bytes;
        let allocated = match file.allocate(0, want).await {
            Ok(()) => want,
            // Appends allocate what they need themselves (or are refused with DiskFull).
            Err(e) if is_no_space(&e) => align_up(cut.position),
            Err(e) => return Err(LogError::io("preallocate segment", file.path(), e)),
        };
        file.sync_all().await.map_err(io("fsync segment"))?;
        if let Some(segment) = self.shared.state.borrow().segments.get(&cut.base) {
            segment.file.set_allocated(allocated);
        }
        sync_dir(dir)
            .await
            .map_err(|e| LogError::io("sync directory", dir, e))?;
        self.checkpoint_epochs_if_dirty().await?;
        if hw_lowered {
            self.checkpoint_hw_now().await?;
        }
        remove_checkpoint(dir, TRUNCATE_INTENT)
            .await
            .map_err(|e| LogError::io("remove truncate-intent", dir.join(TRUNCATE_INTENT), e))
    }

    /// At open: loads the leader-epoch cache (rebuilding it from the batches if the file is
    /// damaged) and the high watermark, and finishes an interrupted truncation.
    pub(super) async fn open_replication(&self) -> LogResult<()> {
        let dir = self.shared.dir.clone();
        let epoch_path = dir.join(LEADER_EPOCH_CHECKPOINT);
        let loaded = read_optional(&epoch_path)
            .await
            .map_err(|e| LogError::io("read leader-epoch checkpoint", &epoch_path, e))?;
        let (epochs, rebuilt) = match loaded {
            None => (EpochCache::default(), false),
            Some(bytes) => match EpochCache::decode(&bytes) {
                Ok(cache) => (cache, false),
                Err(reason) => {
                    tracing::warn!(
                        file = %epoch_path.display(),
                        %reason,
                        "leader-epoch checkpoint unusable; rebuilding it from the batch headers"
                    );
                    (self.rebuild_epochs().await?, true)
                }
            },
        };
        let hw_path = dir.join(HW_CHECKPOINT);
        let hw_bytes = read_optional(&hw_path)
            .await
            .map_err(|e| LogError::io("read hw-checkpoint", &hw_path, e))?;
        {
            let mut st = self.shared.state.borrow_mut();
            let (start, end) = (st.log_start, st.next_offset);
            st.repl.epochs = epochs;
            let clamped = st.repl.epochs.clamp_to_end(end);
            let trimmed = st.repl.epochs.truncate_from_start(start);
            st.repl.epochs_dirty = rebuilt || clamped || trimmed;
            if let Some(bytes) = hw_bytes {
                let hw = match decode_hw(&bytes) {
                    Ok(hw) => {
                        st.repl.hw_checkpointed = Some(hw);
                        hw.min(end).max(start)
                    }
                    Err(reason) => {
                        tracing::warn!(
                            file = %hw_path.display(),
                            %reason,
                            log_start = start.get(),
                            "hw-checkpoint unusable; the high watermark restarts at the log start"
                        );
                        start
                    }
                };
                st.repl.hw = Some(hw);
            }
        }
        self.checkpoint_epochs_if_dirty().await?;
        let intent_path = dir.join(TRUNCATE_INTENT);
        let intent = read_optional(&intent_path)
            .await
            .map_err(|e| LogError::io("read truncate-intent", &intent_path, e))?;
        if let Some(bytes) = intent {
            match decode_intent(&bytes) {
                Ok(TruncateIntent::FullyAt(start)) => {
                    tracing::warn!(
                        dir = %dir.display(),
                        start = start.get(),
                        "finishing a full truncation interrupted by a crash"
                    );
                    self.truncate_fully_and_start_at(start).await?;
                }
                Ok(TruncateIntent::To(new_end)) => {
                    tracing::warn!(
                        dir = %dir.display(),
                        new_end = new_end.get(),
                        "finishing a truncation interrupted by a crash"
                    );
                    let start = self.shared.state.borrow().log_start;
                    if new_end >= start {
                        self.truncate_to(new_end).await?;
                    }
                    // The segments may have been cut before the crash (then `truncate_to` had
                    // nothing to do) but not the checkpoints: epochs starting at the new end
                    // go, and the high watermark is at most the new end.
                    let hw_lowered = {
                        let mut st = self.shared.state.borrow_mut();
                        if st.repl.epochs.truncate_from_end(new_end) {
                            st.repl.epochs_dirty = true;
                        }
                        match st.repl.hw {
                            Some(hw) if hw > new_end => {
                                st.repl.hw = Some(new_end);
                                true
                            }
                            _ => st.repl.hw_checkpointed.is_some_and(|c| c > new_end),
                        }
                    };
                    self.checkpoint_epochs_if_dirty().await?;
                    if hw_lowered {
                        self.checkpoint_hw_now().await?;
                    }
                }
                Err(reason) => tracing::warn!(
                    file = %intent_path.display(),
                    %reason,
                    "truncate-intent unusable (damaged on disk); ignoring it"
                ),
            }
            remove_checkpoint(&dir, TRUNCATE_INTENT)
                .await
                .map_err(|e| LogError::io("remove truncate-intent", &intent_path, e))?;
        }
        Ok(())
    }

    /// The leader-epoch cache as the batch headers tell it: reads the whole log.
    async fn rebuild_epochs(&self) -> LogResult<EpochCache> {
        let mut cache = EpochCache::default();
        let mut from = self.shared.state.borrow().log_start;
        loop {
            let batches = self.read(from, READ_BYTES_MAX).await?;
            let Some(last) = batches.last() else {
                break;
            };
            from = last.next_offset();
            for batch in &batches {
                cache.assign(batch.leader_epoch(), batch.base_offset());
            }
        }
        Ok(cache)
    }
}

/// Walks batch headers of a segment from `position` (a batch boundary, from the index) to
/// the first batch that ends after `offset`. Returns its position, the new log end, and the
/// largest timestamp of the batches before it.
async fn find_cut(
    file: &DirectFile,
    mut position: u64,
    size: u64,
    offset: Offset,
    mut max_timestamp: i64,
    limits: &sluice_proto::Limits,
) -> LogResult<(u64, Offset, i64)> {
    while position < size {
        let start = align_down(position);
        let len = align_up(position + BATCH_HEADER_BYTES as u64) - start;
        let buf = file
            .read_at(start, len as usize)
            .await
            .map_err(|e| LogError::io("read segment", file.path(), e))?;
        let at = (position - start) as usize;
        if buf.len() < at + BATCH_HEADER_BYTES {
            return Err(LogError::corrupt(
                file.path(),
                position,
                "short read of a batch header",
            ));
        }
        let header = BatchHeader::parse(&buf.as_slice()[at..at + BATCH_HEADER_BYTES], limits)
            .map_err(|e| LogError::corrupt(file.path(), position, e.to_string()))?;
        if header.next_offset() > offset {
            return Ok((position, header.base_offset.min(offset), max_timestamp));
        }
        max_timestamp = max_timestamp.max(header.max_timestamp);
        position += u64::from(header.batch_length);
    }
    Ok((size, offset, max_timestamp))
}
