//! Named bounds of the client: every queue and buffer it keeps has one, and the relations
//! between them are checked at compile time.

use sluice_proto::BATCH_BYTES_MAX;
use sluice_proto::protocol::{FETCH_BYTES_MAX, REQUEST_FRAME_BYTES_MAX};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// Requests one connection may have sent (or queued to send) without a response yet. A
/// caller past this waits for a permit, so a slow broker cannot make the client queue
/// without bound.
pub const IN_FLIGHT_REQUESTS_MAX: usize = 64;
/// Depth of a connection's queue of frames handed to its writer task.
pub const WRITE_QUEUE_DEPTH: usize = IN_FLIGHT_REQUESTS_MAX;
/// Frames the writer takes off its queue before one flush (write coalescing).
pub const WRITE_COALESCE_FRAMES_MAX: usize = 16;
/// Write buffer of a connection; larger chunks (record sets) bypass it.
pub const WRITE_BUFFER_BYTES: usize = 64 * KIB;
/// Most batch bytes one produce request carries (at least one batch always goes, and a
/// batch is at most `BATCH_BYTES_MAX`).
pub const PRODUCE_REQUEST_BYTES_MAX: usize = 32 * MIB;
/// Room in a produce request for everything that is not batch bytes.
pub const PRODUCE_REQUEST_OVERHEAD_BYTES_MAX: usize = 4 * MIB;
/// Largest `buffer_bytes` a producer may be given (permits of a semaphore are `u32`).
pub const PRODUCER_BUFFER_BYTES_MAX: usize = u32::MAX as usize;
/// Largest `max_in_flight_per_partition`.
pub const IN_FLIGHT_PER_PARTITION_MAX: usize = IN_FLIGHT_REQUESTS_MAX;
/// Bytes a record costs in the producer's buffer on top of its key, value and headers
/// (record framing, bookkeeping).
pub const RECORD_OVERHEAD_BYTES: usize = 64;
/// Most bytes an open producer batch reserves up front (its `batch_bytes`, capped at this):
/// a batch up to this size is filled without ever being copied to a larger buffer, and
/// many open batches of a large `batch_bytes` reserve at most this much each.
pub const BATCH_PREALLOC_BYTES_MAX: usize = MIB;
/// Pause before a consumer retries a round whose fetches all hit retriable errors.
pub const CONSUMER_RETRY_BACKOFF_MS: u64 = 50;
/// Join rounds a consumer tries (on rebalance and coordinator errors) before giving up
/// with `CoordinatorNotAvailable`.
pub const GROUP_JOIN_ATTEMPTS_MAX: u32 = 50;
/// Pause between two join rounds.
pub const GROUP_RETRY_BACKOFF_MS: u64 = 100;
/// Attempts of a metadata or admin read (Metadata, FindCoordinator) across brokers: after
/// a connection failure the next attempt goes to another broker.
pub const ADMIN_READ_ATTEMPTS_MAX: u32 = 3;
/// Attempts of `Client::list_offset` through leader moves (each after a metadata refresh
/// or `retry_backoff`).
pub const LIST_OFFSETS_ATTEMPTS_MAX: u32 = 5;
/// Topics the client may be waiting to learn the metadata of at once.
pub const METADATA_TOPICS_MAX: usize = 10_000;
/// Attempts of one group call (commit, committed offsets, leave, and the admin's group
/// requests) through coordinator moves: each failed attempt finds the coordinator again
/// (FindCoordinator against any live broker) after `retry_backoff`.
pub const COORDINATOR_ATTEMPTS_MAX: u32 = 10;

const _: () = {
    assert!(WRITE_COALESCE_FRAMES_MAX <= WRITE_QUEUE_DEPTH);
    assert!(IN_FLIGHT_PER_PARTITION_MAX <= IN_FLIGHT_REQUESTS_MAX);
    // The largest batch fits a produce request, which fits a request frame.
    assert!(BATCH_BYTES_MAX as usize <= PRODUCE_REQUEST_BYTES_MAX);
    assert!(
        PRODUCE_REQUEST_BYTES_MAX + BATCH_BYTES_MAX as usize + PRODUCE_REQUEST_OVERHEAD_BYTES_MAX
            <= REQUEST_FRAME_BYTES_MAX
    );
    assert!(FETCH_BYTES_MAX <= u32::MAX as usize);
};
