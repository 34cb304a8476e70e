//! Read-ahead for a reader catching up from the disk. Direct I/O bypasses the kernel's page
//! cache and with it the kernel's read-ahead, so a consumer reading old data sequentially
//! would leave the disk idle while each response travels and is decoded. The log remembers
//! where its last disk read ended (offset and file position); when the next read starts
//! exactly there, it is sequential, and the log starts reading the bytes after it in the
//! background. The read after that finds them read, or waits for the read in flight instead
//! of issuing its own.
//!
//! One read ahead per log; its bytes count against the shard's
//! [`READ_AHEAD_BYTES_PER_SHARD`](crate::cache::READ_AHEAD_BYTES_PER_SHARD) (in the tail-cache
//! budget), and no read ahead starts when that is spent. A read that is not sequential drops
//! the read ahead (two readers of one log at different places get none, instead of reading
//! everything twice). Truncations and compaction swaps drop it too (the bytes it holds may no
//! longer be the log's); the next read must then start sequential again.

use std::rc::Rc;

use bytes::Bytes;
use compio::runtime::JoinHandle;
use sluice_proto::Offset;

use crate::aligned::{align_down, align_up};
use crate::cache::{ReadAheadPermit, TailCacheBudget};
use crate::segment::SegmentFile;

/// Where the last disk read of a log ended, and the read of what follows, if started.
pub(super) struct ReadAhead {
    /// The offset a sequential reader asks for next.
    next: Offset,
    /// The segment file and position of the batch holding `next` (where the read ended).
    file: Rc<SegmentFile>,
    position: u64,
    pending: Option<Pending>,
}

/// A background read of the file from `start`; only its first `valid` bytes were written
/// data when it started (the rest of the last block may be written later).
struct Pending {
    start: u64,
    valid: usize,
    task: JoinHandle<std::io::Result<Bytes>>,
    /// Holds the bytes' place in the shard's read-ahead budget until the read is used or
    /// dropped.
    _permit: ReadAheadPermit,
}

/// What a read takes from the log's read ahead: where to start without the index, and the
/// bytes read in advance, if any.
pub(super) struct Sequential {
    pub position: u64,
    pending: Option<Pending>,
}

impl Sequential {
    /// The bytes read ahead, as `(file position, bytes)`: waits for the read if it is still
    /// in flight. `None` if none was started or it failed (the caller then reads itself).
    pub(super) async fn bytes(self) -> Option<(u64, Bytes)> {
        let pending = self.pending?;
        match pending.task.await {
            Ok(Ok(mut bytes)) => {
                bytes.truncate(pending.valid);
                Some((pending.start, bytes))
            }
            _ => None,
        }
    }
}

impl ReadAhead {
    /// Takes the read ahead for a read of `from` in `file`, if that read continues the
    /// last one. Otherwise the read ahead is dropped (cancelled if in flight).
    pub(super) fn take_if_sequential(
        slot: &mut Option<ReadAhead>,
        from: Offset,
        file: &Rc<SegmentFile>,
    ) -> Option<Sequential> {
        let ahead = slot.take()?;
        (ahead.next == from && Rc::ptr_eq(&ahead.file, file)).then_some(Sequential {
            position: ahead.position,
            pending: ahead.pending,
        })
    }

    /// After a disk read of `file` that returned batches up to `next`, whose batch starts at
    /// `position`: remembers that, and if the read was sequential and more written data
    /// follows (up to `end_position`), starts reading the next `max_bytes` in the background.
    pub(super) fn after_read(
        file: Rc<SegmentFile>,
        next: Offset,
        position: u64,
        end_position: u64,
        max_bytes: usize,
        sequential: bool,
        budget: &TailCacheBudget,
    ) -> ReadAhead {
        let mut pending = None;
        if sequential && position < end_position {
            let start = align_down(position);
            // What the next read will want from here (whatever the offset of `position`
            // within its block), no further than the written data.
            let len = align_up(position - start + max_bytes as u64)
                .min(align_up(end_position - start)) as usize;
            if let Some(permit) = budget.reserve_read_ahead(len) {
                let reader = file.clone();
                let task = compio::runtime::spawn(async move {
                    reader.file.read_at(start, len).await.map(|b| b.freeze())
                });
                pending = Some(Pending {
                    start,
                    valid: ((end_position - start) as usize).min(len),
                    task,
                    _permit: permit,
                });
            }
        }
        ReadAhead {
            next,
            file,
            position,
            pending,
        }
    }
}
