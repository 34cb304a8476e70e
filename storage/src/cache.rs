//! The tail cache: recent batches kept in memory, so consumers that keep up are served
//! without touching the disk (the page cache is bypassed by direct I/O).
//!
//! Each log keeps its recent batches in a [`TailCache`]; the logs of one shard share one
//! [`TailCacheBudget`], which holds the shard's most recent batches whichever logs they
//! belong to: it remembers the order in which batches were cached across all its logs and,
//! once they hold more than its limit, drops the oldest written ones first. A busy partition
//! can so use most of the shard's cache while idle ones use none (an even split gave each
//! of a shard's logs a few MiB, and a consumer a few milliseconds behind a busy partition
//! read from the disk). Batches not yet written are always kept (reads of them could not go
//! to the disk); the write budget bounds those.
//!
//! Single-threaded: a budget belongs to one shard (`Rc`), like the logs that share it.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::rc::{Rc, Weak};

use sluice_proto::{Offset, RecordBatch};

/// Entries of a budget's order that may refer to batches already gone (dropped by a
/// truncation, a compaction or a closed log) before the order is swept of them: the order
/// holds at most twice the cached batches plus this.
const ORDER_SLACK_ENTRIES: usize = 4096;

/// Bytes the logs of one budget may have read ahead for readers catching up from the disk
/// (in flight or read and not yet used): 16 reads of the consumer's default 4 MiB.
pub const READ_AHEAD_BYTES_PER_SHARD: usize = 64 << 20;

struct Cached {
    batch: RecordBatch,
    end_log_pos: u64,
    segment: Offset,
    position: u64,
}

/// One cached batch in a budget's order: the log's cache and the batch's base offset.
struct Entry {
    cache: Weak<RefCell<TailCache>>,
    base: Offset,
}

struct BudgetState {
    limit_bytes: usize,
    /// Bytes of the batches cached by all the logs.
    held_bytes: usize,
    /// Batches cached by all the logs.
    held_batches: usize,
    /// Cached batches, oldest first (entries of batches dropped otherwise linger until they
    /// reach the front or the order is swept).
    order: VecDeque<Entry>,
    /// Bytes read ahead by the logs (see `log/read_ahead.rs`).
    read_ahead_bytes: usize,
}

/// The tail-cache budget of one shard, shared (cheap clones) by its logs: at most
/// `limit_bytes` of written batches stay cached, the most recent ones of any log.
#[derive(Clone)]
pub struct TailCacheBudget {
    state: Rc<RefCell<BudgetState>>,
}

impl fmt::Debug for TailCacheBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.state.borrow();
        f.debug_struct("TailCacheBudget")
            .field("limit_bytes", &st.limit_bytes)
            .field("held_bytes", &st.held_bytes)
            .finish()
    }
}

impl TailCacheBudget {
    /// A budget of `limit_bytes`.
    pub fn new(limit_bytes: usize) -> Self {
        Self {
            state: Rc::new(RefCell::new(BudgetState {
                limit_bytes,
                held_bytes: 0,
                held_batches: 0,
                order: VecDeque::new(),
                read_ahead_bytes: 0,
            })),
        }
    }

    /// The limit.
    pub fn limit_bytes(&self) -> usize {
        self.state.borrow().limit_bytes
    }

    /// Bytes of batches the logs hold now (over the limit only while some are not written).
    pub fn held_bytes(&self) -> usize {
        self.state.borrow().held_bytes
    }

    /// Bytes read ahead by the logs now (in flight or read and not yet used).
    pub fn read_ahead_bytes(&self) -> usize {
        self.state.borrow().read_ahead_bytes
    }

    /// A place for `len` bytes of read-ahead, if [`READ_AHEAD_BYTES_PER_SHARD`] allows.
    pub(crate) fn reserve_read_ahead(&self, len: usize) -> Option<ReadAheadPermit> {
        let mut st = self.state.borrow_mut();
        if st.read_ahead_bytes + len > READ_AHEAD_BYTES_PER_SHARD {
            return None;
        }
        st.read_ahead_bytes += len;
        Some(ReadAheadPermit {
            budget: self.clone(),
            len,
        })
    }

    /// Changes the limit; written batches over it are dropped at once.
    pub fn set_limit(&self, limit_bytes: usize) {
        self.state.borrow_mut().limit_bytes = limit_bytes;
        self.enforce();
    }

    fn added(&self, cache: &Rc<RefCell<TailCache>>, base: Offset, bytes: usize) {
        let mut st = self.state.borrow_mut();
        st.held_bytes += bytes;
        st.held_batches += 1;
        st.order.push_back(Entry {
            cache: Rc::downgrade(cache),
            base,
        });
    }

    fn removed(&self, batches: usize, bytes: usize) {
        let mut st = self.state.borrow_mut();
        st.held_batches -= batches;
        st.held_bytes -= bytes;
    }

    /// Drops the oldest written batches, whichever logs hold them, until the logs hold no
    /// more than the limit or the oldest batch is not written yet. Called where batches
    /// become droppable (a write completed, the limit changed), with no log's cache
    /// borrowed.
    pub(crate) fn enforce(&self) {
        loop {
            let entry = {
                let mut st = self.state.borrow_mut();
                if st.held_bytes <= st.limit_bytes {
                    break;
                }
                match st.order.pop_front() {
                    Some(entry) => entry,
                    None => break,
                }
            };
            let Some(cache) = entry.cache.upgrade() else {
                continue;
            };
            let Ok(mut cache) = cache.try_borrow_mut() else {
                // In use: retry at the next completion.
                self.state.borrow_mut().order.push_front(entry);
                break;
            };
            // Drops the log's batches up to this one (older ones of the same log normally
            // left already; a batch re-appended at a truncated offset may match an older
            // entry, which only drops it early).
            let (batches, bytes, blocked) = cache.drop_written_through(entry.base);
            drop(cache);
            self.removed(batches, bytes);
            if blocked {
                self.state.borrow_mut().order.push_front(entry);
                break;
            }
        }
        self.sweep();
    }

    /// Keeps the order's entries of batches already gone within bounds.
    fn sweep(&self) {
        let mut st = self.state.borrow_mut();
        if st.order.len() <= 2 * st.held_batches + ORDER_SLACK_ENTRIES {
            return;
        }
        st.order.retain(|entry| {
            entry.cache.upgrade().is_some_and(|cache| {
                cache
                    .try_borrow()
                    .map_or(true, |cache| cache.holds(entry.base))
            })
        });
    }
}

/// `len` bytes of the budget's read-ahead, given back when dropped.
pub(crate) struct ReadAheadPermit {
    budget: TailCacheBudget,
    len: usize,
}

impl Drop for ReadAheadPermit {
    fn drop(&mut self) {
        self.budget.state.borrow_mut().read_ahead_bytes -= self.len;
    }
}

/// Recent batches of one log in offset order, their bytes counted in the shard's
/// [`TailCacheBudget`].
pub(crate) struct TailCache {
    batches: VecDeque<Cached>,
    bytes: usize,
    /// Log position below which every byte is written: batches ending there may be dropped.
    written_log_pos: u64,
    budget: TailCacheBudget,
}

impl TailCache {
    /// An empty cache counted in `budget`.
    pub(crate) fn new(budget: TailCacheBudget) -> Rc<RefCell<Self>> {
        Rc::new(RefCell::new(Self {
            batches: VecDeque::new(),
            bytes: 0,
            written_log_pos: 0,
            budget,
        }))
    }

    /// The shard's budget this cache is counted in.
    pub(crate) fn budget(&self) -> &TailCacheBudget {
        &self.budget
    }

    /// First offset served from memory, if any.
    pub(crate) fn first_offset(&self) -> Option<Offset> {
        self.batches.front().map(|c| c.batch.base_offset())
    }

    /// Segment base and file position of the first batch served from memory.
    pub(crate) fn first_position(&self) -> Option<(Offset, u64)> {
        self.batches.front().map(|c| (c.segment, c.position))
    }

    /// Adds the newest batch, which sits at `position` in segment `segment` and ends at log
    /// position `end_log_pos`.
    pub(crate) fn push(
        this: &Rc<RefCell<Self>>,
        batch: RecordBatch,
        end_log_pos: u64,
        segment: Offset,
        position: u64,
    ) {
        let mut cache = this.borrow_mut();
        debug_assert!(
            cache
                .batches
                .back()
                .is_none_or(|c| c.batch.next_offset() == batch.base_offset())
        );
        let (base, len) = (batch.base_offset(), batch.len());
        cache.bytes += len;
        cache.batches.push_back(Cached {
            batch,
            end_log_pos,
            segment,
            position,
        });
        cache.budget.added(this, base, len);
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Records that every byte below log position `written_log_pos` is written: batches
    /// ending there may be dropped (the caller then runs the budget's `enforce`).
    pub(crate) fn set_written(&mut self, written_log_pos: u64) {
        self.written_log_pos = written_log_pos;
    }

    /// Whether a batch starting at `base` is cached.
    fn holds(&self, base: Offset) -> bool {
        let at = self
            .batches
            .partition_point(|c| c.batch.base_offset() < base);
        self.batches
            .get(at)
            .is_some_and(|c| c.batch.base_offset() == base)
    }

    /// The budget's eviction: drops the batches starting at or below `base` as long as they
    /// are written. Returns the batches and bytes dropped, and whether a batch at or below
    /// `base` stays because it is not written yet.
    fn drop_written_through(&mut self, base: Offset) -> (usize, usize, bool) {
        let (mut batches, mut bytes) = (0, 0);
        while let Some(front) = self.batches.front()
            && front.batch.base_offset() <= base
        {
            if front.end_log_pos > self.written_log_pos {
                return (batches, bytes, true);
            }
            batches += 1;
            bytes += front.batch.len();
            self.batches.pop_front();
        }
        self.bytes -= bytes;
        (batches, bytes, false)
    }

    /// Drops the front batch, counting it out of the budget.
    fn pop_front(&mut self) {
        if let Some(front) = self.batches.pop_front() {
            self.bytes -= front.batch.len();
            self.budget.removed(1, front.batch.len());
        }
    }

    /// Drops the back batch, counting it out of the budget.
    fn pop_back(&mut self) {
        if let Some(back) = self.batches.pop_back() {
            self.bytes -= back.batch.len();
            self.budget.removed(1, back.batch.len());
        }
    }

    /// Drops the batches of segment `segment` and of any older segment (all written: the
    /// segment is closed, and its file was replaced by a compacted copy whose positions and
    /// contents differ).
    pub(crate) fn drop_segment(&mut self, segment: Offset) {
        while let Some(front) = self.batches.front()
            && front.segment <= segment
        {
            self.pop_front();
        }
    }

    /// After a truncation to `end`: drops the batches that start at or after it.
    pub(crate) fn truncate(&mut self, end: Offset) {
        while let Some(back) = self.batches.back()
            && back.batch.base_offset() >= end
        {
            self.pop_back();
        }
    }

    /// Batches holding offsets `>= from` and starting below `end`, no more than `max_bytes`
    /// in all except that the first batch is returned whatever its size.
    pub(crate) fn read(&self, from: Offset, end: Offset, max_bytes: usize) -> Vec<RecordBatch> {
        let start = self
            .batches
            .partition_point(|c| c.batch.next_offset() <= from);
        let mut out = Vec::new();
        let mut bytes = 0;
        for cached in self.batches.range(start..) {
            let len = cached.batch.len();
            if cached.batch.base_offset() >= end || (!out.is_empty() && bytes + len > max_bytes) {
                break;
            }
            bytes += len;
            out.push(cached.batch.clone());
        }
        out
    }
}

impl Drop for TailCache {
    fn drop(&mut self) {
        self.budget.removed(self.batches.len(), self.bytes);
    }
}
