//! The partition log: an append-only sequence of record batches in segment files, owned by
//! one shard (single-threaded, `!Send`: it lives on the shard's compio runtime and ring).
//!
//! Appends assign offsets and copy the batch into the write pipeline at once; a background
//! flusher task turns the pipeline into direct writes (several in flight) and fdatasyncs,
//! one fdatasync covering every batch that waits for it (group commit). Each append returns
//! a [`Durable`] future that resolves when the batch is durable under the flush policy.
//! Any failed write or fdatasync stops the log for good.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::future::{Future, poll_fn};
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use compio::runtime::JoinHandle;
use futures_util::stream::{FuturesUnordered, StreamExt};
use sluice_proto::{BATCH_HEADER_BYTES, BatchHeader, Offset, RecordBatch};

use crate::aligned::{AlignedBuf, BLOCK_BYTES, align_down, align_up};
use crate::budget::WriteBudget;
use crate::cache::{TailCache, TailCacheBudget};
use crate::config::{FlushPolicy, LogConfig, READ_BYTES_MAX};
use crate::error::{LogError, LogResult};
use crate::index::{decode_index, encode_offset_index, encode_time_index, segment_file_names};
use crate::io::{DirectFile, is_no_space, sync_dir};
use crate::recovery::recover;
use crate::scan::{ReadFrom, read_batches};
use crate::segment::{Segment, SegmentFile, SegmentState};
use crate::stats::LogIoStats;
use crate::writer::{Job, Pipeline, WriteJob};

mod clean;
mod read_ahead;
mod replica;

pub use clean::CleanStats;
use read_ahead::ReadAhead;
pub use replica::HW_CHECKPOINT_INTERVAL;
use replica::Replication;

type LocalFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// After ENOSPC, how long the flusher waits before retrying an allocation or write that
/// buffered data needs. New appends do not wait for it: they are refused with
/// [`LogError::DiskFull`] (or try the allocation themselves) meanwhile.
const DISK_FULL_RETRY_MS: u64 = 200;

/// A batch accepted by [`PartitionLog::append`].
#[must_use = "an append is acknowledged only when `durable` resolves"]
pub struct Appended {
    /// Offset stamped on the batch.
    pub base_offset: Offset,
    /// Offset of its last record.
    pub last_offset: Offset,
    /// Resolves when the batch is durable under the log's flush policy.
    pub durable: Durable,
}

/// Resolves when every offset below `next` is durable (written or synced, by policy), or
/// with the error that stopped the log.
#[must_use = "futures do nothing unless awaited"]
pub struct Durable {
    shared: Rc<Shared>,
    next: Offset,
    needs_sync: bool,
    /// A watch ([`PartitionLog::durable_at`]) rather than an append's acknowledgement: it
    /// also ends (with [`LogError::Closed`]) once the log is closing, since no more data can
    /// arrive to satisfy it.
    watch: bool,
}

impl Future for Durable {
    type Output = LogResult<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut st = self.shared.state.borrow_mut();
        let reached = if self.needs_sync {
            st.acks.synced_next
        } else {
            st.acks.written_next
        };
        if reached >= self.next {
            return Poll::Ready(Ok(()));
        }
        if let Some(reason) = &st.stopped {
            return Poll::Ready(Err(LogError::Stopped {
                reason: reason.clone(),
            }));
        }
        if self.watch && st.closing {
            return Poll::Ready(Err(LogError::Closed));
        }
        st.waiters.push(cx.waker().clone());
        Poll::Pending
    }
}

/// Log positions of appended batches not yet synced, to turn written/synced byte positions
/// into offsets.
#[derive(Default)]
struct Acks {
    /// `(end log position, next offset, records)` per batch, oldest first.
    pending: VecDeque<(u64, Offset, u32)>,
    /// Entries before this index are written (not yet synced).
    written_idx: usize,
    written_next: Offset,
    synced_next: Offset,
    /// Records written but not synced (for `flush.messages`).
    unsynced_records: u64,
    synced_pos: u64,
}

impl Acks {
    fn advance_written(&mut self, written: u64) {
        while let Some(&(end, next, records)) = self.pending.get(self.written_idx) {
            if end > written {
                break;
            }
            self.written_next = next;
            self.unsynced_records += u64::from(records);
            self.written_idx += 1;
        }
    }

    fn advance_synced(&mut self, synced: u64) {
        self.synced_pos = self.synced_pos.max(synced);
        while let Some(&(end, next, records)) = self.pending.front() {
            if end > self.synced_pos || self.written_idx == 0 {
                break;
            }
            self.synced_next = next;
            self.unsynced_records -= u64::from(records);
            self.written_idx -= 1;
            self.pending.pop_front();
        }
    }
}

struct State {
    stopped: Option<Arc<str>>,
    closing: bool,
    rolling: bool,
    segments: BTreeMap<Offset, Segment>,
    log_start: Offset,
    next_offset: Offset,
    pipeline: Pipeline,
    acks: Acks,
    /// The file of the last completed write not yet covered by an fdatasync.
    dirty_file: Option<Rc<SegmentFile>>,
    /// `flush.ms` elapsed with unsynced data.
    flush_due: bool,
    /// Tasks waiting for progress (room, roll, durability).
    waiters: Vec<Waker>,
    flusher: Option<Waker>,
    flusher_kicked: bool,
    /// Compaction: offsets below this were cleaned by a pass since the log was opened.
    cleaned_to: Offset,
    /// A compaction pass is running.
    cleaning: bool,
    /// A compaction pass is renaming a segment's files: retention deletes nothing meanwhile.
    swapping: bool,
    /// An allocation failed with ENOSPC and none succeeded since: appends that do not fit in
    /// the allocated space try to allocate it themselves and are refused if that fails.
    disk_full: bool,
    /// A write failed with ENOSPC and is being retried: appends are refused until it lands.
    write_no_space: bool,
    /// Leader epochs, the high watermark, truncation (see `log/replica.rs`).
    repl: Replication,
    /// Where the last disk read ended, and the read ahead of a sequential reader (see
    /// `log/read_ahead.rs`). Dropped by truncations and compaction swaps
    /// ([`State::reset_read_ahead`]).
    read_ahead: Option<ReadAhead>,
    /// Counts those drops: a read that saw it change meanwhile leaves no read ahead.
    read_ahead_resets: u64,
}

impl State {
    /// Drops the read ahead: the bytes after the last read may have changed.
    fn reset_read_ahead(&mut self) {
        self.read_ahead = None;
        self.read_ahead_resets += 1;
    }

    fn wake_all(&mut self) {
        for w in self.waiters.drain(..) {
            w.wake();
        }
    }

    fn kick_flusher(&mut self) {
        self.flusher_kicked = true;
        if let Some(w) = self.flusher.take() {
            w.wake();
        }
    }

    fn active(&self) -> &Segment {
        self.segments
            .values()
            .next_back()
            .expect("a log always has an active segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments
            .values_mut()
            .next_back()
            .expect("a log always has an active segment")
    }

    fn stop(&mut self, op: &str, path: &Path, err: &io::Error) {
        if self.stopped.is_none() {
            let reason = format!("{op} of {} failed: {err}", path.display());
            tracing::error!(%reason, "partition log stopped; no more writes will be accepted");
            self.stopped = Some(reason.into());
        }
        self.wake_all();
    }

    /// ENOSPC from `op`: appends are refused (or allocate first) until space is freed. Logged
    /// once per episode, not per refused append.
    fn mark_disk_full(&mut self, dir: &Path, op: &str, err: &io::Error) {
        if !self.disk_full && !self.write_no_space {
            tracing::warn!(
                dir = %dir.display(),
                op,
                error = %err,
                free_bytes = crate::io::free_bytes(dir),
                "disk full: appends to this log are refused until space is freed"
            );
        }
        self.disk_full = true;
        self.pipeline.set_space_short(true);
    }

    /// An allocation succeeded: the disk has room again.
    fn space_available(&mut self, dir: &Path) {
        if self.disk_full {
            tracing::info!(dir = %dir.display(), "disk space available again; appends resume");
        }
        self.disk_full = false;
        self.pipeline.set_space_short(false);
    }

    /// File position (block aligned) up to which `file` must be allocated for the data
    /// buffered for it.
    fn data_end(&self, file: &Rc<SegmentFile>) -> u64 {
        match self.pipeline.active_end() {
            Some((active, end)) if Rc::ptr_eq(active, file) => align_up(end),
            _ => self
                .segments
                .get(&file.base)
                .map_or(0, |s| align_up(s.size)),
        }
    }

    /// When the disk is full: the allocated end the active file needs for `len` more
    /// bytes, if it is beyond what is allocated.
    fn space_needed(&self, len: usize) -> Option<u64> {
        let (file, end) = self.pipeline.active_end()?;
        let to = align_up(end + len as u64);
        (to > file.allocated()).then_some(to)
    }

    fn check_writable(&self) -> LogResult<()> {
        if let Some(reason) = &self.stopped {
            return Err(LogError::Stopped {
                reason: reason.clone(),
            });
        }
        if self.closing {
            return Err(LogError::Closed);
        }
        Ok(())
    }
}

struct Shared {
    dir: PathBuf,
    config: LogConfig,
    /// The shard's write-buffer budget (waiting appends register on it).
    budget: WriteBudget,
    /// Recent batches, counted in the shard's tail-cache budget (never borrowed across an
    /// await, nor while the budget's `enforce` runs).
    cache: Rc<RefCell<TailCache>>,
    state: RefCell<State>,
    /// I/O counters (never borrowed across an await).
    io: RefCell<LogIoStats>,
}

/// A batch to append: a producer's, on which the log stamps its offsets and epoch in place,
/// or one fetched from the leader, kept as it is (no copy of the fetched bytes).
enum Incoming {
    Stamp(BytesMut),
    AsIs(Bytes),
}

impl std::ops::Deref for Incoming {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Incoming::Stamp(b) => b,
            Incoming::AsIs(b) => b,
        }
    }
}

/// One partition's log. Not `Send`: it belongs to the shard that opened it.
pub struct PartitionLog {
    shared: Rc<Shared>,
    flusher: Option<JoinHandle<()>>,
}

/// Offsets of a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogOffsets {
    /// First offset still held (moves forward with retention).
    pub log_start: Offset,
    /// Offset the next appended record gets.
    pub log_end: Offset,
    /// Offsets below this are durable under the flush policy.
    pub durable_end: Offset,
    /// Offsets below this may be served to consumers. Equal to `durable_end` unless the log
    /// was given a high watermark ([`PartitionLog::set_high_watermark`], or an
    /// `hw-checkpoint` found at open); never above `durable_end`.
    pub high_watermark: Offset,
}

/// A log's size and shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogStats {
    /// Segments, including the active one.
    pub segments: usize,
    /// Logical bytes of all segments.
    pub bytes: u64,
}

enum Step {
    Wait,
    /// No room because the shard's write-buffer budget is spent: wait for this log's
    /// progress or for any log of the shard to give chunks back.
    WaitBudget,
    Roll(Offset),
    /// The disk was full: allocate up to this file position before appending.
    Allocate(Rc<SegmentFile>, u64),
}

/// Waits until the next wake-up of the log's waiters.
fn wait_progress(shared: &Shared) -> impl Future<Output = ()> + '_ {
    wait_wake(shared, false)
}

/// Waits until the next wake-up of the log's waiters or of the shard's write budget.
fn wait_budget(shared: &Shared) -> impl Future<Output = ()> + '_ {
    wait_wake(shared, true)
}

fn wait_wake(shared: &Shared, budget_too: bool) -> impl Future<Output = ()> + '_ {
    let mut registered = false;
    poll_fn(move |cx| {
        if registered {
            return Poll::Ready(());
        }
        registered = true;
        shared.state.borrow_mut().waiters.push(cx.waker().clone());
        if budget_too {
            shared.budget.register(cx.waker());
        }
        Poll::Pending
    })
}

impl PartitionLog {
    /// Opens the log in `dir` (created if missing), recovering it: the last segment is
    /// checked batch by batch and truncated after its last valid batch; damage elsewhere is
    /// an error naming the file and position.
    ///
    /// The log belongs to the compio runtime (the shard) that opens it: its flusher is a task
    /// there, so use it only from that runtime and `close` it before the runtime shuts down.
    /// Every segment file is `flock`ed while open; a second instance waits up to
    /// `lock_wait_ms` and then fails.
    pub async fn open(dir: impl AsRef<Path>, config: LogConfig) -> LogResult<Self> {
        let budget = WriteBudget::unshared(&config);
        let cache_budget = TailCacheBudget::new(config.tail_cache_bytes);
        Self::open_with_budget(dir, config, budget, cache_budget).await
    }

    /// [`PartitionLog::open`], with the log's write-buffer chunks taken from `budget`, the
    /// shard's [`WriteBudget`] shared by all its logs, and its recent batches cached within
    /// `cache_budget`, the shard's [`TailCacheBudget`] (`LogConfig::tail_cache_bytes` is
    /// not used). Fails with [`LogError::WriteBudgetTooSmall`] if the budget cannot serve
    /// the log's largest batch.
    pub async fn open_with_budget(
        dir: impl AsRef<Path>,
        config: LogConfig,
        budget: WriteBudget,
        cache_budget: TailCacheBudget,
    ) -> LogResult<Self> {
        config.validate()?;
        budget.check(&config)?;
        let dir = dir.as_ref().to_path_buf();
        compio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| LogError::io("create directory", &dir, e))?;
        let recovered = recover(&dir, &config).await?;
        let mut pipeline = Pipeline::new(
            config.write_chunk_bytes,
            config.write_chunks_max,
            config.preallocate_bytes,
            budget.clone(),
        );
        let active = recovered
            .segments
            .values()
            .next_back()
            .expect("recovery leaves a segment");
        pipeline.start_segment(
            active.file.clone(),
            align_down(active.size),
            &recovered.tail_block,
        );
        let next_offset = active.next_offset;
        let log_start = recovered
            .segments
            .values()
            .next()
            .map(|s| s.base())
            .expect("recovery leaves a segment");
        let acks = Acks {
            written_next: next_offset,
            synced_next: next_offset,
            ..Acks::default()
        };
        let state = State {
            stopped: None,
            closing: false,
            rolling: false,
            segments: recovered.segments,
            log_start,
            next_offset,
            pipeline,
            acks,
            dirty_file: None,
            flush_due: false,
            waiters: Vec::new(),
            flusher: None,
            flusher_kicked: false,
            cleaned_to: Offset::ZERO,
            cleaning: false,
            swapping: false,
            disk_full: false,
            write_no_space: false,
            repl: Replication::default(),
            read_ahead: None,
            read_ahead_resets: 0,
        };
        let shared = Rc::new(Shared {
            dir,
            config,
            budget,
            cache: TailCache::new(cache_budget),
            state: RefCell::new(state),
            io: RefCell::new(LogIoStats::default()),
        });
        let flusher = compio::runtime::spawn(run_flusher(shared.clone()));
        let log = Self {
            shared,
            flusher: Some(flusher),
        };
        log.open_replication().await?;
        Ok(log)
    }

    /// The directory holding the segments.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Current offsets.
    pub fn offsets(&self) -> LogOffsets {
        let st = self.shared.state.borrow();
        let durable_end = match self.shared.config.flush {
            FlushPolicy::EveryBatch => st.acks.synced_next,
            FlushPolicy::Interval { .. } => st.acks.written_next,
        };
        LogOffsets {
            log_start: st.log_start,
            log_end: st.next_offset,
            durable_end,
            high_watermark: st.repl.hw.map_or(durable_end, |hw| hw.min(durable_end)),
        }
    }

    /// A future that resolves once every offset below `next` is durable under the flush
    /// policy (`offsets().durable_end >= next`): a long-polling reader waits on it for new
    /// committed data. It resolves with the stop error if the log stops, and with
    /// [`LogError::Closed`] once the log is closing. It holds no claim on the log itself.
    pub fn durable_at(&self, next: Offset) -> Durable {
        Durable {
            shared: self.shared.clone(),
            next,
            needs_sync: self.shared.config.flush == FlushPolicy::EveryBatch,
            watch: true,
        }
    }

    /// The tail-cache budget the log's recent batches count in (shared by the logs of a
    /// shard; the log's own with [`PartitionLog::open`]).
    pub fn tail_cache_budget(&self) -> TailCacheBudget {
        self.shared.cache.borrow().budget().clone()
    }

    /// Bytes of this log's record batches in the tail cache now.
    pub fn tail_cache_held_bytes(&self) -> usize {
        self.shared.cache.borrow().bytes()
    }

    /// Segment count and bytes.
    pub fn stats(&self) -> LogStats {
        let st = self.shared.state.borrow();
        LogStats {
            segments: st.segments.len(),
            bytes: st.segments.values().map(|s| s.size).sum(),
        }
    }

    /// I/O counters since the log was opened: fdatasync latency, tail-cache hits and misses,
    /// appends refused for a full disk.
    pub fn io_stats(&self) -> LogIoStats {
        self.shared.io.borrow().clone()
    }

    /// Base offsets of the segments, oldest first.
    pub fn segment_bases(&self) -> Vec<Offset> {
        self.shared
            .state
            .borrow()
            .segments
            .keys()
            .copied()
            .collect()
    }

    /// Appends one batch: checks it (header, size, CRC), stamps the next offset on it in
    /// place, and queues it for writing. Waits only when the write buffers are full or a
    /// segment is being rolled. Await [`Appended::durable`] for the acknowledgement.
    ///
    /// After [`PartitionLog::become_leader`] each batch is also stamped with the leader
    /// epoch (a field outside the CRC, like the base offset).
    pub async fn append(&self, batch: BytesMut) -> LogResult<Appended> {
        self.append_inner(Incoming::Stamp(batch)).await
    }

    /// The checks every appended batch passes before anything is written: its size against
    /// `max_batch_bytes`, a header that parses, and a declared length equal to its size.
    fn check_batch_frame(&self, batch: &[u8]) -> LogResult<BatchHeader> {
        let config = &self.shared.config;
        if batch.len() > config.max_batch_bytes {
            return Err(LogError::BatchTooLarge {
                size: batch.len(),
                max: config.max_batch_bytes,
            });
        }
        let header = BatchHeader::parse(batch, &config.limits)?;
        if header.batch_length as usize != batch.len() {
            return Err(sluice_proto::DecodeError::LengthMismatch {
                declared: u64::from(header.batch_length),
                actual: batch.len() as u64,
            }
            .into());
        }
        Ok(header)
    }

    /// `append` ([`Incoming::Stamp`]: offsets and epoch stamped here) or `append_replica`
    /// ([`Incoming::AsIs`]: the batch keeps them, and must start at the log end).
    async fn append_inner(&self, batch: Incoming) -> LogResult<Appended> {
        let config = &self.shared.config;
        let replica = matches!(batch, Incoming::AsIs(_));
        let header = self.check_batch_frame(&batch)?;
        let len = batch.len();
        loop {
            let step = {
                let mut st = self.shared.state.borrow_mut();
                st.check_writable()?;
                let now = (config.clock)();
                let active = st.active();
                let too_big = active.size + len as u64 > config.segment_bytes;
                let too_old = config.segment_ms.is_some_and(|ms| {
                    active
                        .first_append_ms
                        .is_some_and(|first| now.saturating_sub(first) >= ms as i64)
                });
                if st.rolling || st.repl.truncating {
                    Step::Wait
                } else if replica && header.base_offset != st.next_offset {
                    return Err(LogError::NonContiguous {
                        expected: st.next_offset,
                        got: header.base_offset,
                    });
                } else if !active.is_empty() && (too_big || too_old) {
                    // The new segment starts parked: it needs no chunk until appended to.
                    st.rolling = true;
                    Step::Roll(st.next_offset)
                } else if st.pipeline.waits_for_budget(len) {
                    Step::WaitBudget
                } else if !st.pipeline.has_room(len) {
                    Step::Wait
                } else if st.write_no_space {
                    self.shared.io.borrow_mut().disk_full_refusals += 1;
                    return Err(LogError::disk_full(&self.shared.dir));
                } else if st.disk_full
                    && let Some(to) = st.space_needed(len)
                {
                    let file = st.active().file.clone();
                    if file.allocating() {
                        self.shared.io.borrow_mut().disk_full_refusals += 1;
                        return Err(LogError::disk_full(&self.shared.dir));
                    }
                    file.set_allocating(true);
                    Step::Allocate(file, to)
                } else {
                    return self.append_now(&mut st, batch, now);
                }
            };
            match step {
                Step::Wait => wait_progress(&self.shared).await,
                Step::WaitBudget => wait_budget(&self.shared).await,
                Step::Roll(base) => self.roll(base).await?,
                Step::Allocate(file, to) => self.allocate_for_append(&file, to).await?,
            }
        }
    }

    fn append_now(&self, st: &mut State, batch: Incoming, now: i64) -> LogResult<Appended> {
        let config = &self.shared.config;
        let base_offset = st.next_offset;
        let batch = match batch {
            Incoming::Stamp(mut batch) => {
                sluice_proto::stamp_base_offset(&mut batch, base_offset);
                if let Some(epoch) = st.repl.leader_epoch {
                    sluice_proto::stamp_leader_epoch(&mut batch, epoch);
                }
                batch.freeze()
            }
            Incoming::AsIs(batch) => batch,
        };
        let batch = RecordBatch::from_bytes(batch, &config.limits)?;
        let next = batch.next_offset();
        let file = st.active().file.clone();
        let position = st.active().size;
        st.pipeline.append(&file, batch.as_bytes());
        let end_log_pos = st.pipeline.appended();
        st.active_mut().record_append(
            base_offset,
            next,
            batch.max_timestamp(),
            batch.len() as u64,
            config.index_interval_bytes,
            now,
        );
        st.next_offset = next;
        st.acks
            .pending
            .push_back((end_log_pos, next, batch.record_count()));
        let last_offset = batch.last_offset();
        TailCache::push(&self.shared.cache, batch, end_log_pos, file.base, position);
        st.kick_flusher();
        Ok(Appended {
            base_offset,
            last_offset,
            durable: Durable {
                shared: self.shared.clone(),
                next,
                needs_sync: config.flush == FlushPolicy::EveryBatch,
                watch: false,
            },
        })
    }

    /// While the disk is full, an append that needs more space allocates it itself (the
    /// flusher allocates ahead only while there is room). First the usual step ahead: success
    /// means the disk has room again and appends resume normally. Else just what this append
    /// needs: success lets it through (the log stays marked full), ENOSPC refuses it.
    async fn allocate_for_append(&self, file: &Rc<SegmentFile>, to: u64) -> LogResult<()> {
        let from = file.allocated();
        let ahead = align_up(to + self.shared.config.preallocate_bytes);
        let mut res = file
            .file
            .allocate(from, ahead - from)
            .await
            .map(|()| (ahead, true));
        if res.as_ref().is_err_and(is_no_space) {
            res = file
                .file
                .allocate(from, to - from)
                .await
                .map(|()| (to, false));
        }
        let mut st = self.shared.state.borrow_mut();
        file.set_allocating(false);
        st.kick_flusher();
        st.wake_all();
        match res {
            Ok((allocated, room)) => {
                file.set_allocated(allocated.max(file.allocated()));
                if room {
                    st.space_available(&self.shared.dir);
                }
                Ok(())
            }
            Err(e) if is_no_space(&e) => {
                self.shared.io.borrow_mut().disk_full_refusals += 1;
                Err(LogError::disk_full(&self.shared.dir))
            }
            Err(e) => {
                st.stop("fallocate", file.file.path(), &e);
                Err(LogError::io("fallocate", file.file.path(), e))
            }
        }
    }

    /// Closes the active segment and starts a new one at `base`.
    async fn roll(&self, base: Offset) -> LogResult<()> {
        let result = self.create_segment(base).await;
        let mut st = self.shared.state.borrow_mut();
        st.rolling = false;
        st.wake_all();
        let file = result?;
        st.check_writable()?;
        debug_assert_eq!(st.next_offset, base);
        st.pipeline.seal_segment();
        st.active_mut().state = SegmentState::Sealing;
        tracing::info!(
            dir = %self.shared.dir.display(),
            segment = base.get(),
            "rolled to a new segment"
        );
        st.segments.insert(
            base,
            Segment {
                file: file.clone(),
                size: 0,
                next_offset: base,
                max_timestamp: i64::MIN,
                first_append_ms: None,
                index: Default::default(),
                last_indexed: None,
                state: SegmentState::Active,
            },
        );
        st.pipeline.start_segment(file, 0, &[]);
        st.kick_flusher();
        Ok(())
    }

    async fn create_segment(&self, base: Offset) -> LogResult<Rc<SegmentFile>> {
        let config = &self.shared.config;
        let (name, _, _) = segment_file_names(base);
        let path = self.shared.dir.join(name);
        let no_space = |e: &io::Error| {
            if is_no_space(e) {
                self.shared.state.borrow_mut().mark_disk_full(
                    &self.shared.dir,
                    "create segment",
                    e,
                );
                self.shared.io.borrow_mut().disk_full_refusals += 1;
                Some(LogError::disk_full(&self.shared.dir))
            } else {
                None
            }
        };
        let file =
            match DirectFile::open(&path, true, config.lock_wait_ms, config.faults.clone()).await {
                Ok(file) => file,
                Err(e) => {
                    return Err(
                        no_space(&e).unwrap_or_else(|| LogError::io("create segment", &path, e))
                    );
                }
            };
        let step = align_up(config.preallocate_bytes.min(config.segment_bytes));
        if let Err(e) = file.allocate(0, step).await {
            // Nothing was written to it: remove it so a later roll can try again (a full
            // disk is not fatal: the roll is retried by the next append).
            drop(file);
            let _ = compio::fs::remove_file(&path).await;
            return Err(
                no_space(&e).unwrap_or_else(|| LogError::io("preallocate segment", &path, e))
            );
        }
        sync_dir(&self.shared.dir)
            .await
            .map_err(|e| LogError::io("sync directory", &self.shared.dir, e))?;
        Ok(Rc::new(SegmentFile::new(file, base, step)))
    }

    /// Starts a new segment now if the active one holds any batch (tests and admin tools).
    pub async fn roll_now(&self) -> LogResult<()> {
        loop {
            let base = {
                let mut st = self.shared.state.borrow_mut();
                st.check_writable()?;
                if st.active().is_empty() {
                    return Ok(());
                }
                if st.rolling || st.repl.truncating {
                    None
                } else {
                    st.rolling = true;
                    Some(st.next_offset)
                }
            };
            match base {
                Some(base) => return self.roll(base).await,
                None => wait_progress(&self.shared).await,
            }
        }
    }

    /// Reads whole batches holding offsets `>= from`: at most `max_bytes` (capped at
    /// [`READ_BYTES_MAX`]) except that the first batch is returned whatever its size. An
    /// offset at the log end gives no batches; one outside `[log_start, log_end]` is an error.
    /// Recent batches come from memory, older ones from disk with their CRC checked.
    pub async fn read(&self, from: Offset, max_bytes: usize) -> LogResult<Vec<RecordBatch>> {
        self.read_until(from, Offset(u64::MAX), max_bytes).await
    }

    /// Like [`PartitionLog::read`], returning no batch that starts at or after `end`
    /// (a high watermark, for instance).
    pub async fn read_until(
        &self,
        from: Offset,
        end: Offset,
        max_bytes: usize,
    ) -> LogResult<Vec<RecordBatch>> {
        let max_bytes = max_bytes.min(READ_BYTES_MAX);
        let (file, position, position_offset, end_position, sequential, resets) = {
            let mut st = self.shared.state.borrow_mut();
            if from < st.log_start || from > st.next_offset {
                return Err(LogError::OffsetOutOfRange {
                    requested: from,
                    log_start: st.log_start,
                    log_end: st.next_offset,
                });
            }
            if from == st.next_offset {
                return Ok(Vec::new());
            }
            {
                let cache = self.shared.cache.borrow();
                if cache.first_offset().is_some_and(|first| first <= from) {
                    self.shared.io.borrow_mut().cache_hits += 1;
                    return Ok(cache.read(from, end, max_bytes));
                }
            }
            let (_, segment) = st
                .segments
                .range(..=from)
                .next_back()
                .expect("from >= log_start, the first segment's base");
            let (segment_base, file) = (segment.base(), segment.file.clone());
            let sequential = ReadAhead::take_if_sequential(&mut st.read_ahead, from, &file);
            let segment = &st.segments[&segment_base];
            let relative = (from.get() - segment.base().get()) as u32;
            // The batch the index entry points at, and the offset it must have; for a read
            // that goes on where the last one ended, that batch is known exactly.
            let (position, position_offset) = match &sequential {
                Some(seq) => (seq.position, from),
                None => segment
                    .index
                    .floor_offset(relative)
                    .map_or((0, segment.base()), |e| {
                        (
                            u64::from(e.position),
                            Offset(segment.base().get() + u64::from(e.relative_offset)),
                        )
                    }),
            };
            // Everything before the cache is written; read no further than where it starts.
            let end_position = match self.shared.cache.borrow().first_position() {
                Some((base, position)) if base == segment.base() => position,
                _ => segment.size,
            };
            let resets = st.read_ahead_resets;
            (
                file,
                position,
                position_offset,
                end_position,
                sequential,
                resets,
            )
        };
        let cache_start = self.shared.cache.borrow().first_offset();
        self.shared.io.borrow_mut().cache_misses += 1;
        let is_sequential = sequential.is_some();
        let prefetched = match sequential {
            Some(seq) => seq.bytes().await,
            None => None,
        };
        let read = read_batches(
            &file.file,
            ReadFrom {
                position,
                position_offset,
                offset: from,
                end_position,
                end_offset: cache_start.map_or(end, |c| c.min(end)),
                max_bytes,
                limits: &self.shared.config.limits,
                gaps: self.shared.config.compaction.is_some(),
                prefetched,
            },
        )
        .await?;
        if read.used_prefetched {
            self.shared.io.borrow_mut().read_ahead_hits += 1;
        }
        if let Some(last) = read.batches.last() {
            let ahead = ReadAhead::after_read(
                file.clone(),
                last.next_offset(),
                read.next_position,
                end_position,
                max_bytes,
                is_sequential,
                &self.tail_cache_budget(),
            );
            let mut st = self.shared.state.borrow_mut();
            // A truncation or compaction swap during the read may have changed the bytes
            // after it.
            if st.read_ahead_resets == resets {
                st.read_ahead = Some(ahead);
            }
        }
        let batches = read.batches;
        // Only when `end` did not cut the read: with `end <= from` nothing is due, and when
        // `from` is a segment base the retry below would find the same segment and recurse
        // forever (stack overflow on `read_until(base, base, _)`, e.g. a fetch at the high
        // watermark when the high watermark is a segment base).
        if batches.is_empty() && from < end {
            // The segment ended right before `from` (the next segment starts there) or the
            // cache starts there: read again from the new place.
            let next_segment_base = {
                let st = self.shared.state.borrow();
                st.segments
                    .range(from..)
                    .next()
                    .map(|(base, _)| *base)
                    .filter(|base| *base == from)
            };
            if next_segment_base.is_some() || cache_start == Some(from) {
                return Box::pin(self.read_until(from, end, max_bytes)).await;
            }
        }
        // Verify what the disk gave back continues from `from` (paired with the CRC check).
        // In a compacted log `from` may have been compacted away: the next record is served.
        let gaps = self.shared.config.compaction.is_some();
        if let Some(first) = batches.first()
            && ((first.base_offset() > from && !gaps) || first.next_offset() <= from)
        {
            return Err(LogError::corrupt(
                file.file.path(),
                position,
                format!(
                    "index points to batch [{}, {}) for offset {from}",
                    first.base_offset(),
                    first.next_offset()
                ),
            ));
        }
        Ok(batches)
    }

    /// The first offset whose record timestamp is `>= timestamp`, or `None` if every
    /// record is older.
    pub async fn offset_for_timestamp(&self, timestamp: i64) -> LogResult<Option<Offset>> {
        let start = {
            let st = self.shared.state.borrow();
            let Some(segment) = st.segments.values().find(|s| s.max_timestamp >= timestamp) else {
                return Ok(None);
            };
            let entry = segment.index.floor_timestamp(timestamp);
            let from = entry.map_or(segment.base(), |e| {
                Offset(segment.base().get() + u64::from(e.relative_offset))
            });
            from.max(st.log_start)
        };
        let mut from = start;
        loop {
            let batches = self.read(from, 1 << 20).await?;
            if batches.is_empty() {
                return Ok(None);
            }
            for batch in &batches {
                if batch.max_timestamp() < timestamp {
                    continue;
                }
                let base_ts = batch.header().base_timestamp;
                for record in batch.records()? {
                    let record = record?;
                    if record.timestamp(base_ts) >= timestamp {
                        return Ok(Some(record.offset(batch.base_offset())));
                    }
                }
                // The header's max timestamp is at least the target but no record is:
                // under log-append time the header alone decides.
                return Ok(Some(batch.base_offset()));
            }
            from = batches.last().expect("non-empty").next_offset();
        }
    }

    /// Applies `retention.ms` and `retention.bytes` at wall time `now_ms`: deletes whole
    /// closed segments, oldest first, never the active one. Returns the new log start.
    pub async fn enforce_retention(&self, now_ms: i64) -> LogResult<Offset> {
        let config = &self.shared.config;
        let doomed = {
            let mut st = self.shared.state.borrow_mut();
            if st.swapping || st.repl.truncating {
                // A compaction swap is renaming files, or a truncation is removing them; the
                // next retention pass runs as usual.
                return Ok(st.log_start);
            }
            let mut total: u64 = st.segments.values().map(|s| s.size).sum();
            let mut doomed = Vec::new();
            for segment in st.segments.values() {
                if segment.state != SegmentState::Closed {
                    break;
                }
                let expired = config
                    .retention_ms
                    .is_some_and(|ms| segment.max_timestamp < now_ms.saturating_sub(ms as i64));
                let oversize = config
                    .retention_bytes
                    .is_some_and(|limit| total.saturating_sub(segment.size) >= limit);
                if !(expired || oversize) {
                    break;
                }
                total -= segment.size;
                doomed.push(segment.base());
            }
            let mut files = Vec::new();
            for base in &doomed {
                let segment = st.segments.remove(base).expect("listed above");
                files.push(segment.file.clone());
            }
            if let Some(first) = st.segments.keys().next() {
                st.log_start = *first;
            }
            let log_start = st.log_start;
            st.repl.log_start_moved(log_start);
            files
        };
        self.checkpoint_epochs_if_dirty().await?;
        for file in &doomed {
            let (log, index, time) = segment_file_names(file.base);
            for name in [index, time, log] {
                let path = self.shared.dir.join(name);
                match compio::fs::remove_file(&path).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(LogError::io("delete segment", path, e)),
                }
            }
            tracing::info!(
                dir = %self.shared.dir.display(),
                segment = file.base.get(),
                "retention deleted segment"
            );
        }
        if !doomed.is_empty() {
            sync_dir(&self.shared.dir)
                .await
                .map_err(|e| LogError::io("sync directory", &self.shared.dir, e))?;
        }
        Ok(self.shared.state.borrow().log_start)
    }

    /// Flushes everything, makes it durable, writes the active segment's index and closes
    /// the log. Pending appends are acknowledged first.
    pub async fn close(mut self) -> LogResult<()> {
        {
            let mut st = self.shared.state.borrow_mut();
            st.closing = true;
            st.kick_flusher();
            // Watches (`durable_at`) end now; appends' acknowledgements still complete.
            st.wake_all();
        }
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.await;
        }
        let (file, stopped) = {
            let st = self.shared.state.borrow();
            (st.active().file.clone(), st.stopped.clone())
        };
        if let Some(reason) = stopped {
            return Err(LogError::Stopped { reason });
        }
        seal_segment(&self.shared, &file).await?;
        self.checkpoint_hw_at_close().await
    }
}

impl Drop for PartitionLog {
    fn drop(&mut self) {
        // Without close(): the flusher still writes out and syncs what was appended, then
        // exits; the next open recovers the active segment by scanning it.
        if let Some(flusher) = self.flusher.take() {
            let mut st = self.shared.state.borrow_mut();
            st.closing = true;
            st.kick_flusher();
            flusher.detach();
        }
    }
}

/// Makes a finished segment durable, truncates its preallocated tail, and writes its index.
async fn seal_segment(shared: &Shared, file: &Rc<SegmentFile>) -> LogResult<()> {
    let (summary, offset_index, time_index) = {
        let st = shared.state.borrow();
        let segment = &st.segments[&file.base];
        (
            segment.summary(),
            encode_offset_index(&segment.summary(), &segment.index),
            encode_time_index(&segment.summary(), &segment.index),
        )
    };
    let path = file.file.path();
    let fatal = |op: &'static str, e: io::Error| {
        shared.state.borrow_mut().stop(op, path, &e);
        LogError::io(op, path, e)
    };
    let started = Instant::now();
    let synced = file.file.sync_data().await;
    shared.io.borrow_mut().fsync.record(started.elapsed());
    synced.map_err(|e| fatal("fdatasync", e))?;
    file.file
        .set_len(summary.segment_bytes)
        .await
        .map_err(|e| fatal("truncate", e))?;
    let started = Instant::now();
    let synced = file.file.sync_all().await;
    shared.io.borrow_mut().fsync.record(started.elapsed());
    synced.map_err(|e| fatal("fsync", e))?;
    let (_, index_name, time_name) = segment_file_names(file.base);
    for (name, bytes) in [(index_name, offset_index), (time_name, time_index)] {
        write_file_atomically(&shared.dir, &name, bytes)
            .await
            .map_err(|e| fatal("write index", e))?;
    }
    sync_dir(&shared.dir)
        .await
        .map_err(|e| fatal("sync directory", e))?;
    let mut st = shared.state.borrow_mut();
    if let Some(segment) = st.segments.get_mut(&file.base) {
        if segment.state == SegmentState::Sealing {
            segment.state = SegmentState::Closed;
        }
        file.set_allocated(summary.segment_bytes);
    }
    Ok(())
}

/// Writes `name` in `dir` through a temporary file and a rename, so a crash leaves either
/// the old or the new file whole.
pub(crate) async fn write_file_atomically(
    dir: &Path,
    name: &str,
    bytes: Vec<u8>,
) -> io::Result<()> {
    use compio::io::AsyncWriteAtExt;
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = compio::fs::File::create(&tmp).await?;
    let compio::BufResult(res, _) = file.write_all_at(bytes, 0).await;
    res?;
    file.sync_all().await?;
    file.close().await?;
    compio::fs::rename(&tmp, dir.join(name)).await
}

enum Event {
    Write(u64, Rc<SegmentFile>, u64, io::Result<()>, AlignedBuf),
    Synced(u64, io::Result<()>, Rc<SegmentFile>, Duration),
    Allocated(Rc<SegmentFile>, u64, io::Result<()>),
    FlushTimer,
    Kick,
}

async fn perform_write(job: WriteJob) -> Event {
    let WriteJob {
        id,
        file,
        file_pos,
        buf,
    } = job;
    let (res, buf) = file.file.write_all_at(buf, file_pos).await;
    Event::Write(id, file, file_pos, res, buf)
}

/// The background task of one log: issues writes, fdatasyncs and seals as the pipeline
/// allows, and turns their completions into acknowledgements.
async fn run_flusher(shared: Rc<Shared>) {
    let config = &shared.config;
    let mut writes: FuturesUnordered<LocalFuture<Event>> = FuturesUnordered::new();
    let mut sync: Option<LocalFuture<Event>> = None;
    let mut timer: Option<LocalFuture<Event>> = None;
    let mut allocation: Option<LocalFuture<Event>> = None;
    let mut last_sync = Instant::now();
    loop {
        // Start every job the pipeline allows now.
        loop {
            let job = {
                let mut st = shared.state.borrow_mut();
                if st.stopped.is_some() {
                    None
                } else {
                    st.pipeline.next_job()
                }
            };
            match job {
                None => break,
                Some(Job::Write(job)) => writes.push(Box::pin(perform_write(job))),
                Some(Job::Allocate { file, to }) => {
                    debug_assert!(allocation.is_none(), "one fallocate at a time per log");
                    allocation = Some(Box::pin(async move {
                        let from = file.allocated();
                        let res = file.file.allocate(from, to - from).await;
                        Event::Allocated(file, to, res)
                    }));
                }
                Some(Job::Seal(file)) => {
                    if seal_segment(&shared, &file).await.is_ok() {
                        let mut st = shared.state.borrow_mut();
                        let written = st.pipeline.written();
                        if st.dirty_file.as_ref().is_some_and(|d| Rc::ptr_eq(d, &file)) {
                            st.dirty_file = None;
                        }
                        st.acks.advance_synced(written);
                        st.wake_all();
                    }
                }
            }
        }
        {
            let mut st = shared.state.borrow_mut();
            // Every job that may start has: if nothing is left to write, the chunks go
            // back to the shard's budget when it is under pressure.
            st.pipeline.release_idle();
            let written = st.pipeline.written();
            let unsynced = written > st.acks.synced_pos;
            if sync.is_none() && st.stopped.is_none() && unsynced {
                let due = match config.flush {
                    FlushPolicy::EveryBatch => true,
                    FlushPolicy::Interval { messages, .. } => {
                        st.closing
                            || st.flush_due
                            || messages.is_some_and(|m| st.acks.unsynced_records >= m)
                    }
                };
                if due && let Some(file) = st.dirty_file.take() {
                    st.flush_due = false;
                    sync = Some(Box::pin(async move {
                        let started = Instant::now();
                        let res = file.file.sync_data().await;
                        Event::Synced(written, res, file, started.elapsed())
                    }));
                }
            }
            if let FlushPolicy::Interval { ms: Some(ms), .. } = config.flush
                && timer.is_none()
                && unsynced
                && !st.flush_due
            {
                let wait = Duration::from_millis(ms).saturating_sub(last_sync.elapsed());
                timer = Some(Box::pin(async move {
                    compio::time::sleep(wait).await;
                    Event::FlushTimer
                }));
            }
            let finished = st.stopped.is_some()
                || (st.closing
                    && st.pipeline.is_idle()
                    && st.acks.synced_pos == st.pipeline.appended());
            if finished && writes.is_empty() && sync.is_none() && allocation.is_none() {
                st.wake_all();
                return;
            }
        }
        let event = poll_fn(|cx| {
            if let Poll::Ready(Some(event)) = writes.poll_next_unpin(cx) {
                return Poll::Ready(event);
            }
            if let Some(fut) = sync.as_mut()
                && let Poll::Ready(event) = fut.as_mut().poll(cx)
            {
                sync = None;
                return Poll::Ready(event);
            }
            if let Some(fut) = timer.as_mut()
                && let Poll::Ready(event) = fut.as_mut().poll(cx)
            {
                timer = None;
                return Poll::Ready(event);
            }
            if let Some(fut) = allocation.as_mut()
                && let Poll::Ready(event) = fut.as_mut().poll(cx)
            {
                allocation = None;
                return Poll::Ready(event);
            }
            let mut st = shared.state.borrow_mut();
            if std::mem::take(&mut st.flusher_kicked) {
                return Poll::Ready(Event::Kick);
            }
            st.flusher = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        let mut st = shared.state.borrow_mut();
        // Once stopped, nothing more is acknowledged: every acknowledgement pending at the
        // stop resolves with the error (see `LogError::Stopped`). A write or fdatasync
        // issued before the stop may still complete; without this its completion would
        // acknowledge some of them, or not, depending on when their `Durable` is polled.
        let acking = st.stopped.is_none();
        if let Event::Synced(_, _, _, elapsed) = &event {
            shared.io.borrow_mut().fsync.record(*elapsed);
        }
        // A completed write makes its batches droppable from the tail cache.
        let wrote = matches!(&event, Event::Write(_, _, _, Ok(()), _));
        match event {
            Event::Write(id, file, _, Ok(()), buf) => {
                if std::mem::take(&mut st.write_no_space) {
                    tracing::info!(dir = %shared.dir.display(), "write retried after a full disk landed; appends resume");
                }
                let written = st.pipeline.complete_write(id, buf);
                if acking {
                    st.acks.advance_written(written);
                }
                shared.cache.borrow_mut().set_written(written);
                st.dirty_file = Some(file);
            }
            Event::Write(id, file, file_pos, Err(e), buf)
                if is_no_space(&e) && !st.closing && st.stopped.is_none() =>
            {
                // Nothing acknowledged depends on this write yet: write the same bytes again
                // once there is room (the data is still in `buf`; `written` waits for it).
                st.mark_disk_full(&shared.dir, "write", &e);
                st.write_no_space = true;
                writes.push(Box::pin(async move {
                    compio::time::sleep(Duration::from_millis(DISK_FULL_RETRY_MS)).await;
                    perform_write(WriteJob {
                        id,
                        file,
                        file_pos,
                        buf,
                    })
                    .await
                }));
            }
            Event::Write(id, file, _, Err(e), _) => {
                st.pipeline.abandon_write(id);
                st.stop("write", file.file.path(), &e);
            }
            Event::Synced(target, Ok(()), _, _) => {
                last_sync = Instant::now();
                if acking {
                    st.acks.advance_synced(target);
                }
            }
            // ENOSPC from fdatasync stays fatal, like any fsync error.
            Event::Synced(_, Err(e), file, _) => st.stop("fdatasync", file.file.path(), &e),
            Event::Allocated(file, to, Ok(())) => {
                file.set_allocating(false);
                file.set_allocated(to);
                st.space_available(&shared.dir);
            }
            Event::Allocated(file, _, Err(e)) if is_no_space(&e) => {
                st.mark_disk_full(&shared.dir, "fallocate", &e);
                let needed = st.data_end(&file);
                if needed <= file.allocated() {
                    // Only an allocation ahead failed: nothing waits for it.
                    file.set_allocating(false);
                } else if st.closing || st.stopped.is_some() {
                    file.set_allocating(false);
                    st.stop("fallocate", file.file.path(), &e);
                } else {
                    // Buffered data needs the space: retry (the file stays `allocating`).
                    allocation = Some(Box::pin(async move {
                        compio::time::sleep(Duration::from_millis(DISK_FULL_RETRY_MS)).await;
                        let from = file.allocated();
                        let res = file.file.allocate(from, needed - from).await;
                        Event::Allocated(file, needed, res)
                    }));
                }
            }
            Event::Allocated(file, _, Err(e)) => {
                file.set_allocating(false);
                st.stop("fallocate", file.file.path(), &e);
            }
            Event::FlushTimer => st.flush_due = true,
            Event::Kick => {}
        }
        st.wake_all();
        drop(st);
        if wrote {
            // Cloned first: enforcing borrows every cache of the shard, this log's included.
            let budget = shared.cache.borrow().budget().clone();
            budget.enforce();
        }
    }
}

/// Reads the block holding the end of a segment's valid data, to be rewritten with more.
pub(crate) async fn read_tail_block(file: &DirectFile, size: u64) -> io::Result<Vec<u8>> {
    let start = align_down(size);
    let len = (size - start) as usize;
    if len == 0 {
        return Ok(Vec::new());
    }
    let buf = file.read_at(start, BLOCK_BYTES).await?;
    if buf.len() < len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("short read of the tail block of {}", file.path().display()),
        ));
    }
    Ok(buf.as_slice()[..len].to_vec())
}

/// Loads and checks a closed segment's index files; `None` if missing or unusable.
pub(crate) async fn load_index(
    dir: &Path,
    base: Offset,
) -> Option<(crate::index::SegmentSummary, crate::index::SegmentIndex)> {
    let (_, index_name, time_name) = segment_file_names(base);
    let offsets = compio::fs::read(dir.join(&index_name)).await.ok()?;
    let times = compio::fs::read(dir.join(&time_name)).await.ok()?;
    match decode_index(&offsets, &times) {
        Ok((summary, index)) if summary.base_offset == base => Some((summary, index)),
        Ok(_) => None,
        Err(err) => {
            tracing::warn!(dir = %dir.display(), segment = base.get(), %err, "index unusable; rebuilding it");
            None
        }
    }
}

const _: () = assert!(BATCH_HEADER_BYTES < BLOCK_BYTES);
