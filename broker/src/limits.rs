//! Named bounds of the broker and their relations, checked at compile time.
//!
//! Memory of one shard is bounded by: the request budget (request bytes read and not yet
//! answered), the fetch budget (record bytes of fetch responses not yet written), and per
//! partition its write buffers and tail cache (see `topic_config`).

use sluice_proto::BATCH_BYTES_MAX;
use sluice_proto::protocol::{FETCH_BYTES_MAX, REQUEST_FRAME_BYTES_MAX};

const MIB: usize = 1024 * 1024;

/// Default bytes of requests a shard holds in flight (read, not yet answered). A connection
/// acquires a frame's size before reading its body; while the budget is spent it stops
/// reading, and TCP pushes back on the client.
pub(crate) const SHARD_REQUEST_BYTES_DEFAULT: usize = 64 * MIB;
/// Default bytes of fetched records a shard holds for responses not yet written.
pub(crate) const SHARD_FETCH_BYTES_DEFAULT: usize =
    2 * (FETCH_BYTES_MAX + BATCH_BYTES_MAX as usize);
/// Requests one connection may have in flight (read, not yet answered).
pub(crate) const CONNECTION_REQUESTS_IN_FLIGHT_MAX: usize = 64;
/// Connections one shard serves at once; more are accepted and closed with a log line.
pub(crate) const SHARD_CONNECTIONS_MAX: usize = 4096;
/// Messages waiting in one shard's inbox; senders wait when it is full.
pub(crate) const SHARD_INBOX_CAPACITY: usize = 1024;
/// Longest a graceful shutdown waits for in-flight requests before cutting connections.
pub(crate) const SHUTDOWN_DRAIN_MS_MAX: u64 = 10_000;
/// Default interval between retention passes.
pub(crate) const RETENTION_CHECK_MS_DEFAULT: u64 = 60_000;
/// Longest wait between two checks of a shard's compacted partitions (Kafka's
/// `log.cleaner.backoff.ms`); shorter when `retention_check_ms` is shorter.
pub(crate) const CLEANER_BACKOFF_MS: u64 = 15_000;
/// Memory of one compaction pass's key -> offset map (Kafka's
/// `log.cleaner.dedupe.buffer.size`). A shard runs one pass at a time.
pub(crate) const CLEANER_DEDUPE_BUFFER_BYTES: usize = 32 << 20;
/// Read plus write rate of a shard's cleaner, so compaction never saturates the disk.
pub(crate) const CLEANER_IO_BYTES_PER_S: u64 = 128 << 20;
/// Most shards a broker runs (shard ids are u16 on the wire).
pub(crate) const SHARDS_MAX: usize = 1024;
/// Write-buffer chunk of a partition log.
pub(crate) const LOG_WRITE_CHUNK_BYTES: usize = MIB;
/// Write-buffer chunks of a partition log with the default `max.message.bytes`.
pub(crate) const LOG_WRITE_CHUNKS_DEFAULT: usize = 4;
/// Tail cache of one shard: the most recent written batches of any of its logs, up to this
/// many bytes (`sluice_storage::TailCacheBudget`), so a busy partition may use all of it and
/// a shard with many partitions keeps a bounded amount in memory (batches not yet written
/// stay cached until they are; the write buffers bound those).
pub(crate) const SHARD_TAIL_CACHE_BYTES: usize = 128 * MIB;
/// Default `max.message.bytes` (Kafka's order of magnitude).
pub(crate) const MAX_MESSAGE_BYTES_DEFAULT: usize = MIB;

const _: () = {
    // One whole frame always fits the request budget, or a connection could wait forever.
    assert!(SHARD_REQUEST_BYTES_DEFAULT >= REQUEST_FRAME_BYTES_MAX);
    // One whole fetch (its budget plus one oversized batch) always fits the fetch budget.
    assert!(SHARD_FETCH_BYTES_DEFAULT >= FETCH_BYTES_MAX + BATCH_BYTES_MAX as usize);
    assert!(SHARDS_MAX <= u16::MAX as usize);
    assert!(CONNECTION_REQUESTS_IN_FLIGHT_MAX >= 1);
    assert!(MAX_MESSAGE_BYTES_DEFAULT <= BATCH_BYTES_MAX as usize);
    // The default batch fits the default write buffers beside a filling chunk (the storage
    // layer checks the same relation at open).
    assert!(
        (LOG_WRITE_CHUNKS_DEFAULT - 1) * (LOG_WRITE_CHUNK_BYTES - 4096)
            >= MAX_MESSAGE_BYTES_DEFAULT
    );
};

/// Allocations at least this large come from their own `mmap` (glibc `M_MMAP_THRESHOLD`; 32
/// MiB is the most glibc accepts). Request frames (up to a few MiB under produce load) are
/// allocated and freed once per request: with glibc's default (dynamic, from 128 KiB) many of
/// them were mapped, faulted in page by page and unmapped again, every request.
pub(crate) const MALLOC_MMAP_THRESHOLD_BYTES: usize = 32 * MIB;
/// Free memory at the top of an allocator arena that glibc keeps for reuse instead of
/// returning it to the kernel (`M_TRIM_THRESHOLD`). A shard's request memory is bounded by its
/// request budget, so keeping one default budget's worth bounds what this retains, and stops
/// the return-then-fault-in-again cycle of request buffers.
pub(crate) const MALLOC_TRIM_THRESHOLD_BYTES: usize = SHARD_REQUEST_BYTES_DEFAULT;

/// Sets glibc's allocator thresholds (above) for a broker process. Returns whether glibc
/// accepted both; the broker runs either way, only with more CPU spent in page faults.
pub(crate) fn tune_allocator() -> bool {
    let as_int = |n: usize| libc::c_int::try_from(n).unwrap_or(libc::c_int::MAX);
    // SAFETY: mallopt only changes glibc's allocator parameters; called before the shards
    // start, and glibc serialises it with allocations anyway.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, as_int(MALLOC_MMAP_THRESHOLD_BYTES)) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, as_int(MALLOC_TRIM_THRESHOLD_BYTES)) == 1
    }
}
