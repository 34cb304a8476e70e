//! One segment of a partition log: its file, what is known about its contents, and its index.

use std::cell::Cell;
use std::rc::Rc;

use sluice_proto::Offset;

use crate::index::{IndexEntry, SegmentIndex, SegmentSummary};
use crate::io::DirectFile;

/// A segment's open file, shared with in-flight writes and reads.
#[derive(Debug)]
pub(crate) struct SegmentFile {
    /// The file, opened for direct I/O.
    pub file: DirectFile,
    /// Base offset of the segment.
    pub base: Offset,
    /// Bytes of the file allocated so far (writes must stay below).
    allocated: Cell<u64>,
    /// An fallocate extending the file is in flight.
    allocating: Cell<bool>,
}

impl SegmentFile {
    pub(crate) fn new(file: DirectFile, base: Offset, allocated: u64) -> Self {
        Self {
            file,
            base,
            allocated: Cell::new(allocated),
            allocating: Cell::new(false),
        }
    }

    pub(crate) fn allocated(&self) -> u64 {
        self.allocated.get()
    }

    pub(crate) fn set_allocated(&self, bytes: u64) {
        self.allocated.set(bytes);
    }

    pub(crate) fn allocating(&self) -> bool {
        self.allocating.get()
    }

    pub(crate) fn set_allocating(&self, allocating: bool) {
        self.allocating.set(allocating);
    }
}

/// Where a segment is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SegmentState {
    /// Receives appends.
    Active,
    /// Rolled; its last writes and seal are pending.
    Sealing,
    /// Durable, truncated to its size, index on disk. Only these are deleted by retention.
    Closed,
}

/// A segment and what the log knows about it.
#[derive(Debug)]
pub(crate) struct Segment {
    pub file: Rc<SegmentFile>,
    /// Logical size: bytes of batches appended.
    pub size: u64,
    /// Offset after the last batch.
    pub next_offset: Offset,
    /// Largest batch max-timestamp (`i64::MIN` when empty).
    pub max_timestamp: i64,
    /// Wall-clock ms of the first append (or of the first batch, after recovery).
    pub first_append_ms: Option<i64>,
    /// Sparse offset and time index.
    pub index: SegmentIndex,
    /// Position of the last index entry.
    pub last_indexed: Option<u64>,
    pub state: SegmentState,
}

impl Segment {
    pub(crate) fn base(&self) -> Offset {
        self.file.base
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Records a batch of `len` bytes appended at the end.
    pub(crate) fn record_append(
        &mut self,
        base_offset: Offset,
        next_offset: Offset,
        max_timestamp: i64,
        len: u64,
        index_interval_bytes: u32,
        now_ms: i64,
    ) {
        let position = self.size;
        if self
            .last_indexed
            .is_none_or(|last| position - last >= u64::from(index_interval_bytes))
        {
            self.index.push(IndexEntry {
                relative_offset: (base_offset.get() - self.base().get()) as u32,
                position: position as u32,
                max_timestamp_before: self.max_timestamp,
            });
            self.last_indexed = Some(position);
        }
        self.first_append_ms.get_or_insert(now_ms);
        self.max_timestamp = self.max_timestamp.max(max_timestamp);
        self.next_offset = next_offset;
        self.size += len;
    }

    /// Cuts the segment at byte `position` (a batch boundary): it now ends at offset
    /// `next_offset` and its batches' largest timestamp is `max_timestamp`. It receives
    /// appends again.
    pub(crate) fn truncate(&mut self, position: u64, next_offset: Offset, max_timestamp: i64) {
        self.index
            .entries
            .retain(|e| u64::from(e.position) < position);
        self.last_indexed = self.index.entries.last().map(|e| u64::from(e.position));
        self.size = position;
        self.next_offset = next_offset;
        self.max_timestamp = max_timestamp;
        if position == 0 {
            self.first_append_ms = None;
        }
        self.state = SegmentState::Active;
    }

    pub(crate) fn summary(&self) -> SegmentSummary {
        SegmentSummary {
            base_offset: self.base(),
            segment_bytes: self.size,
            next_offset: self.next_offset,
            max_timestamp: self.max_timestamp,
        }
    }
}
