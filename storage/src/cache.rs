//! The tail cache: recent batches of one log kept in memory, so consumers that keep up are
//! served without touching the disk (the page cache is bypassed by direct I/O).
//!
//! Batches not yet written are always here (reads of them could not go to the disk); written
//! ones are evicted oldest first once the cache holds more than its byte budget.

use std::collections::VecDeque;

use sluice_proto::{Offset, RecordBatch};

struct Cached {
    batch: RecordBatch,
    end_log_pos: u64,
    segment: Offset,
    position: u64,
}

/// Recent batches in offset order.
pub(crate) struct TailCache {
    batches: VecDeque<Cached>,
    bytes: usize,
    budget: usize,
}

impl TailCache {
    pub(crate) fn new(budget: usize) -> Self {
        Self {
            batches: VecDeque::new(),
            bytes: 0,
            budget,
        }
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
        &mut self,
        batch: RecordBatch,
        end_log_pos: u64,
        segment: Offset,
        position: u64,
    ) {
        debug_assert!(
            self.batches
                .back()
                .is_none_or(|c| c.batch.next_offset() == batch.base_offset())
        );
        self.bytes += batch.len();
        self.batches.push_back(Cached {
            batch,
            end_log_pos,
            segment,
            position,
        });
    }

    /// Changes the byte budget; the next [`TailCache::evict`] applies it.
    pub(crate) fn set_budget(&mut self, budget: usize) {
        self.budget = budget;
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Drops the oldest written batches while over budget.
    pub(crate) fn evict(&mut self, written_log_pos: u64) {
        while self.bytes > self.budget {
            match self.batches.front() {
                Some(front) if front.end_log_pos <= written_log_pos => {
                    self.bytes -= front.batch.len();
                    self.batches.pop_front();
                }
                _ => break,
            }
        }
    }

    /// Drops the batches of segment `segment` and of any older segment (all written: the
    /// segment is closed, and its file was replaced by a compacted copy whose positions and
    /// contents differ).
    pub(crate) fn drop_segment(&mut self, segment: Offset) {
        while let Some(front) = self.batches.front()
            && front.segment <= segment
        {
            self.bytes -= front.batch.len();
            self.batches.pop_front();
        }
    }

    /// After a truncation to `end`: drops the batches that start at or after it.
    pub(crate) fn truncate(&mut self, end: Offset) {
        while let Some(back) = self.batches.back()
            && back.batch.base_offset() >= end
        {
            self.bytes -= back.batch.len();
            self.batches.pop_back();
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
