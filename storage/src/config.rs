//! Per-log configuration (the topic configs that concern storage) and the log's named limits.

use std::sync::Arc;

use sluice_proto::Limits;

use crate::aligned::BLOCK_BYTES;
use crate::error::{LogError, LogResult};
use crate::io::FaultInjector;

/// Writes to one log's segment file that may be in flight at once. Sequential 1 MiB direct
/// writes need a queue depth of about 8 to reach the disk's bandwidth (fio, this machine).
pub const WRITE_DEPTH_MAX: usize = 8;
/// Largest segment: positions in the sparse index are u32.
pub const SEGMENT_BYTES_MAX: u64 = (u32::MAX as u64) & !(BLOCK_BYTES as u64 - 1);
/// Smallest segment accepted (tests use small segments to exercise rolling).
pub const SEGMENT_BYTES_MIN: u64 = 16 * 1024;
/// Largest single read from a segment file, whatever the caller asks for.
pub const READ_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Bytes read per step while scanning a segment at recovery.
pub const SCAN_READ_BYTES: usize = 4 * 1024 * 1024;
/// Largest write-buffer chunk.
pub const WRITE_CHUNK_BYTES_MAX: usize = 16 * 1024 * 1024;

const _: () = assert!(SEGMENT_BYTES_MAX.is_multiple_of(BLOCK_BYTES as u64));
const _: () = assert!(SCAN_READ_BYTES.is_multiple_of(BLOCK_BYTES));
const _: () = assert!(SEGMENT_BYTES_MIN.is_multiple_of(BLOCK_BYTES as u64));

/// When an appended batch counts as acknowledged, and when the log calls fdatasync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// fdatasync before acknowledging; one fdatasync covers every batch waiting for it
    /// (group commit).
    EveryBatch,
    /// Acknowledge once the direct write completes (the data is on the device, safe from a
    /// process crash); fdatasync after `messages` records or `ms` milliseconds, whichever
    /// comes first (`flush.messages`, `flush.ms`). `None` for both: only at roll and close.
    Interval {
        /// `flush.messages`.
        messages: Option<u64>,
        /// `flush.ms`.
        ms: Option<u64>,
    },
}

/// Wall-clock source in milliseconds since the epoch; replaceable in tests.
pub type Clock = fn() -> i64;

/// The system clock.
pub fn system_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Configuration of one partition log.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// `segment.bytes`: roll to a new segment when the active one would exceed this.
    pub segment_bytes: u64,
    /// `segment.ms`: roll when the active segment's first batch is older than this.
    pub segment_ms: Option<u64>,
    /// `retention.ms`: delete closed segments whose newest record is older than this.
    pub retention_ms: Option<u64>,
    /// `retention.bytes`: delete the oldest closed segments while the log stays at least this big.
    pub retention_bytes: Option<u64>,
    /// `flush.messages` / `flush.ms`, or per-batch durability.
    pub flush: FlushPolicy,
    /// `max.message.bytes`: largest batch accepted.
    pub max_batch_bytes: usize,
    /// Bytes between two sparse-index entries.
    pub index_interval_bytes: u32,
    /// Segment files are allocated ahead of the writes in steps of this many bytes.
    pub preallocate_bytes: u64,
    /// Size of one write-buffer chunk (one direct write when full).
    pub write_chunk_bytes: usize,
    /// Write-buffer chunks this log may hold at once (filling, queued and in flight).
    pub write_chunks_max: usize,
    /// Bytes of recent batches kept in memory for consumers that keep up.
    pub tail_cache_bytes: usize,
    /// Limits for decoding batches.
    pub limits: Limits,
    /// Time source for segment age.
    pub clock: Clock,
    /// How long opening a segment waits for its lock: another log instance has it open, or a
    /// crashed one still has writes in flight to it (see `io::lock_exclusive`).
    pub lock_wait_ms: u64,
    /// Fault injection for tests; `None` in production.
    pub faults: Option<Arc<FaultInjector>>,
    /// `cleanup.policy=compact` (or `compact,delete`): how the cleaner compacts this log.
    /// `None` for `delete` only. A compacted log may have offset gaps inside and between
    /// batches, so its reads and recovery accept a batch that starts past where the previous
    /// one ended (see `docs/ARCHITECTURE.md`, "Compaction").
    pub compaction: Option<CompactionConfig>,
}

/// How the log cleaner compacts one log (`cleanup.policy=compact`).
#[derive(Debug, Clone, PartialEq)]
pub struct CompactionConfig {
    /// `delete.retention.ms`: a tombstone (null value) that is the latest for its key is
    /// removed once its timestamp is older than this.
    pub delete_retention_ms: u64,
    /// `min.cleanable.dirty.ratio`: a pass runs only when the bytes of closed segments not yet
    /// cleaned are at least this fraction of all closed segments' bytes.
    pub min_cleanable_dirty_ratio: f64,
    /// `min.compaction.lag.ms`: a segment is cleaned only once its newest record is this old.
    pub min_compaction_lag_ms: u64,
    /// Memory of the cleaner's key -> latest offset map (Kafka's
    /// `log.cleaner.dedupe.buffer.size`): when full, a pass cleans only up to the last whole
    /// segment the map covers.
    pub dedupe_buffer_bytes: usize,
    /// Read and write rate limit of the cleaner in bytes per second; `None` unthrottled.
    pub io_bytes_per_s: Option<u64>,
}

/// Smallest dedupe buffer accepted: a few thousand keys.
pub const CLEANER_DEDUPE_BUFFER_BYTES_MIN: usize = 64 * 1024;

impl Default for CompactionConfig {
    fn default() -> Self {
        Self {
            delete_retention_ms: 24 * 3600 * 1000,
            min_cleanable_dirty_ratio: 0.5,
            min_compaction_lag_ms: 0,
            dedupe_buffer_bytes: 64 << 20,
            io_bytes_per_s: None,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 1 << 30,
            segment_ms: Some(7 * 24 * 3600 * 1000),
            retention_ms: Some(7 * 24 * 3600 * 1000),
            retention_bytes: None,
            flush: FlushPolicy::EveryBatch,
            max_batch_bytes: 4 << 20,
            index_interval_bytes: 32 * 1024,
            preallocate_bytes: 16 << 20,
            write_chunk_bytes: 1 << 20,
            write_chunks_max: 8,
            tail_cache_bytes: 4 << 20,
            limits: Limits::DEFAULT,
            clock: system_clock_ms,
            lock_wait_ms: 10_000,
            faults: None,
            compaction: None,
        }
    }
}

impl LogConfig {
    /// Checks the relations between the settings.
    pub fn validate(&self) -> LogResult<()> {
        let fail = |msg: String| Err(LogError::InvalidConfig(msg));
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes) {
            return fail(format!(
                "segment.bytes {} not in [{SEGMENT_BYTES_MIN}, {SEGMENT_BYTES_MAX}]",
                self.segment_bytes
            ));
        }
        if self.write_chunk_bytes == 0
            || !self.write_chunk_bytes.is_multiple_of(BLOCK_BYTES)
            || self.write_chunk_bytes > WRITE_CHUNK_BYTES_MAX
        {
            return fail(format!(
                "write chunk of {} bytes must be a non-zero multiple of {BLOCK_BYTES} up to {WRITE_CHUNK_BYTES_MAX}",
                self.write_chunk_bytes
            ));
        }
        if self.max_batch_bytes > self.limits.batch_bytes_max as usize {
            return fail(format!(
                "max.message.bytes {} exceeds the format's limit {}",
                self.max_batch_bytes, self.limits.batch_bytes_max
            ));
        }
        // One chunk may be filling while the others are queued or in flight; a whole batch
        // must fit in the rest, or an append could wait for space that never comes.
        let usable =
            (self.write_chunks_max.saturating_sub(1)) * (self.write_chunk_bytes - BLOCK_BYTES);
        if self.write_chunks_max < 2 || usable < self.max_batch_bytes {
            return fail(format!(
                "{} write chunks of {} bytes cannot hold a {}-byte batch beside a filling chunk",
                self.write_chunks_max, self.write_chunk_bytes, self.max_batch_bytes
            ));
        }
        if self.index_interval_bytes == 0 {
            return fail("index interval must be positive".into());
        }
        if self.preallocate_bytes == 0 {
            return fail("preallocation step must be positive".into());
        }
        if let Some(c) = &self.compaction {
            if !(0.0..=1.0).contains(&c.min_cleanable_dirty_ratio) {
                return fail(format!(
                    "min.cleanable.dirty.ratio {} not in [0, 1]",
                    c.min_cleanable_dirty_ratio
                ));
            }
            if c.dedupe_buffer_bytes < CLEANER_DEDUPE_BUFFER_BYTES_MIN {
                return fail(format!(
                    "cleaner dedupe buffer of {} bytes is below {CLEANER_DEDUPE_BUFFER_BYTES_MIN}",
                    c.dedupe_buffer_bytes
                ));
            }
            if c.io_bytes_per_s == Some(0) {
                return fail("cleaner I/O rate must be positive".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        LogConfig::default()
            .validate()
            .expect("defaults are consistent");
    }

    #[test]
    fn rejects_batch_larger_than_buffers() {
        let config = LogConfig {
            write_chunks_max: 2,
            ..LogConfig::default()
        };
        assert!(matches!(config.validate(), Err(LogError::InvalidConfig(_))));
    }
}
