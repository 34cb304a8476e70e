//! Sluice's partition log.
//!
//! A partition is an append-only, ordered, CRC-checked log of record batches stored as
//! segment files (`{base_offset:020}.log`) with a sparse offset index and a time index. One
//! shard owns each log: it runs on that shard's compio runtime and io_uring ring and is not
//! `Send`. Appends are direct (O_DIRECT), aligned, sequential writes into preallocated
//! segments, coalesced in a per-log write buffer, with group commit: one fdatasync
//! acknowledges every batch waiting for it. Recent batches are served from an in-memory tail
//! cache, older ones by direct reads with their CRC checked. See `docs/ARCHITECTURE.md`.

mod aligned;
mod budget;
mod cache;
mod compact;
mod config;
mod epoch;
mod error;
mod index;
mod io;
mod log;
mod recovery;
mod scan;
mod segment;
mod stats;
mod writer;

pub use aligned::{AlignedBuf, BLOCK_BYTES};
pub use budget::{WRITE_BUFFER_BYTES_PER_SHARD_DEFAULT, WriteBudget};
pub use cache::{READ_AHEAD_BYTES_PER_SHARD, TailCacheBudget};
pub use compact::{CLEANER_READ_BYTES, CLEANER_WRITE_BYTES, OFFSET_MAP_ENTRY_OVERHEAD_BYTES};
pub use config::{
    CLEANER_DEDUPE_BUFFER_BYTES_MIN, Clock, CompactionConfig, FlushPolicy, LogConfig,
    READ_BYTES_MAX, SCAN_READ_BYTES, SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN, WRITE_CHUNK_BYTES_MAX,
    WRITE_DEPTH_MAX, system_clock_ms,
};
pub use epoch::{EpochEntry, HW_CHECKPOINT, LEADER_EPOCH_CHECKPOINT, LEADER_EPOCH_ENTRIES_MAX};
pub use error::{LogError, LogResult};
pub use io::FaultInjector;
pub use log::{
    Appended, CleanStats, Durable, HW_CHECKPOINT_INTERVAL, LogOffsets, LogStats, PartitionLog,
};
pub use sluice_proto::{Offset, RecordBatch};
pub use stats::{LATENCY_BUCKETS, LATENCY_BUCKETS_US, LatencyHistogram, LogIoStats};
