//! Errors of the partition log: each says what failed, where, and whether the log can go on.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use sluice_proto::{DecodeError, Offset};

/// An error from the partition log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A file operation failed; the log may still be usable (reads, opening).
    #[error("{op} failed on {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A write or fdatasync failed earlier. The log accepts no more appends and resolves
    /// every pending acknowledgement with this error: after a failed fsync the kernel may have
    /// dropped the dirty pages, so retrying could acknowledge data that is not on disk.
    #[error("the log is stopped: {reason}")]
    Stopped {
        /// The first failure, with file and operation.
        reason: Arc<str>,
    },
    /// Bytes on disk are damaged somewhere other than the tail of the last segment.
    #[error("corrupt segment {} at byte {position}: {reason}", path.display())]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Byte position of the damage in the file.
        position: u64,
        /// What was wrong.
        reason: String,
    },
    /// A read asked for an offset outside `[log_start, log_end]`.
    #[error("offset {requested} is out of range: the log holds [{log_start}, {log_end})")]
    OffsetOutOfRange {
        /// The offset asked for.
        requested: Offset,
        /// First offset still held.
        log_start: Offset,
        /// Next offset to be written.
        log_end: Offset,
    },
    /// The batch handed to `append` is malformed or its CRC does not match.
    #[error("invalid batch: {0}")]
    InvalidBatch(#[from] DecodeError),
    /// The batch is larger than this log accepts (`max.message.bytes`).
    #[error("batch of {size} bytes exceeds the log's limit of {max} bytes")]
    BatchTooLarge {
        /// Size of the batch.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The configuration is inconsistent.
    #[error("invalid log configuration: {0}")]
    InvalidConfig(String),
    /// The shard's write-buffer budget (`write_buffer_bytes_per_shard`) cannot serve this
    /// log's largest batch: idle logs may keep half of the budget, so the other half must
    /// hold the chunks of one `max.message.bytes` batch.
    #[error(
        "write buffer budget of {limit_bytes} bytes is below the {needed_bytes} bytes a largest batch needs"
    )]
    WriteBudgetTooSmall {
        /// The shard's budget.
        limit_bytes: usize,
        /// The smallest budget that serves this log.
        needed_bytes: usize,
    },
    /// The disk holding the log has no room for this append. Unlike a failed write or
    /// fdatasync this does not stop the log: reads go on, and appends are accepted again
    /// once space is freed (the log retries its allocation).
    #[error("disk full on {}: {free_bytes} bytes free", path.display())]
    DiskFull {
        /// The log's directory.
        path: PathBuf,
        /// Bytes available to the broker on that filesystem when the append was refused.
        free_bytes: u64,
    },
    /// The log was closed.
    #[error("the log is closed")]
    Closed,
    /// A batch handed to `append_replica` does not start at the log end: the follower and
    /// the leader disagree on where it is (a gap or an overlap). Nothing was written.
    #[error("non-contiguous replica batch: the log ends at {expected}, the batch starts at {got}")]
    NonContiguous {
        /// The log end offset, where the batch had to start.
        expected: Offset,
        /// The batch's base offset.
        got: Offset,
    },
    /// `become_leader` was given an epoch older than one the log already holds.
    #[error("leader epoch {epoch} is older than the log's latest epoch {latest}")]
    StaleLeaderEpoch {
        /// The epoch asked for.
        epoch: u32,
        /// The latest epoch in the log's leader-epoch cache.
        latest: u32,
    },
    /// `append_replica` on a leader's log (after `become_leader`, before `become_follower`):
    /// a fetch answer from a previous leader that arrived late must not land in it.
    #[error("the log leads in epoch {epoch}: it takes no replica batches")]
    LeaderLog {
        /// The epoch the log leads in.
        epoch: u32,
    },
}

impl LogError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// A [`LogError::DiskFull`] for the log in `dir`, with the free space there now.
    pub(crate) fn disk_full(dir: &std::path::Path) -> Self {
        Self::DiskFull {
            path: dir.to_path_buf(),
            free_bytes: crate::io::free_bytes(dir),
        }
    }

    pub(crate) fn corrupt(
        path: impl Into<PathBuf>,
        position: u64,
        reason: impl Into<String>,
    ) -> Self {
        Self::Corrupt {
            path: path.into(),
            position,
            reason: reason.into(),
        }
    }
}

/// Result alias for the log.
pub type LogResult<T> = Result<T, LogError>;
