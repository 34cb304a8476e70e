//! Named bounds of the native protocol, and their relations checked at compile time.

use crate::limits::BATCH_BYTES_MAX;

const MIB: usize = 1024 * 1024;

/// Largest request frame (after the 4-byte length prefix). A client declaring more gets
/// `FRAME_TOO_LARGE` and the connection is closed before anything is allocated for it.
pub const REQUEST_FRAME_BYTES_MAX: usize = 64 * MIB;
/// Largest response frame a client accepts.
pub const RESPONSE_FRAME_BYTES_MAX: usize = 96 * MIB;
/// Most bytes of record batches in one fetch response (`max_bytes` is capped here). The first
/// batch found is returned even if larger, so a response can exceed this by one batch.
pub const FETCH_BYTES_MAX: usize = 50 * MIB;
/// Room for everything in a response that is not record bytes.
pub const RESPONSE_OVERHEAD_BYTES_MAX: usize = 8 * MIB;
/// Longest string field (topic names, messages, config values).
pub const STRING_BYTES_MAX: usize = 32 * 1024;
/// Most elements in one array field.
pub const ARRAY_LEN_MAX: usize = 1 << 20;
/// Longest opaque bytes field (consumer group metadata and assignments).
pub const OPAQUE_BYTES_MAX: usize = MIB;
/// Longest topic name (Kafka's rule).
pub const TOPIC_NAME_BYTES_MAX: usize = 249;
/// Most partitions one topic may have.
pub const PARTITIONS_PER_TOPIC_MAX: u32 = 4096;
/// Most config entries on one topic.
pub const TOPIC_CONFIGS_MAX: usize = 64;
/// Longest long-poll wait a fetch may ask for.
pub const FETCH_WAIT_MS_MAX: u32 = 60_000;
/// Longest produce/admin timeout a request may ask for.
pub const REQUEST_TIMEOUT_MS_MAX: u32 = 300_000;

const _: () = {
    assert!(BATCH_BYTES_MAX as usize <= REQUEST_FRAME_BYTES_MAX);
    assert!(
        FETCH_BYTES_MAX + BATCH_BYTES_MAX as usize + RESPONSE_OVERHEAD_BYTES_MAX
            <= RESPONSE_FRAME_BYTES_MAX
    );
    assert!(REQUEST_FRAME_BYTES_MAX <= u32::MAX as usize);
    assert!(RESPONSE_FRAME_BYTES_MAX <= u32::MAX as usize);
    assert!(STRING_BYTES_MAX <= u16::MAX as usize);
    assert!(TOPIC_NAME_BYTES_MAX <= STRING_BYTES_MAX);
    assert!(OPAQUE_BYTES_MAX <= REQUEST_FRAME_BYTES_MAX);
};
