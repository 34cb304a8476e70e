//! Topic config names, as in Kafka.

/// Partition count is not a config, but `topic describe` shows it next to them.
pub const PARTITIONS: &str = "partitions";
/// Delete closed segments older than this (ms); `-1` keeps forever.
pub const RETENTION_MS: &str = "retention.ms";
/// Delete oldest closed segments while the partition is larger than this; `-1` unbounded.
pub const RETENTION_BYTES: &str = "retention.bytes";
/// Roll the active segment at this size.
pub const SEGMENT_BYTES: &str = "segment.bytes";
/// Roll the active segment at this age (ms).
pub const SEGMENT_MS: &str = "segment.ms";
/// Largest batch accepted.
pub const MAX_MESSAGE_BYTES: &str = "max.message.bytes";
/// `delete` (retention), `compact` (keep the latest record per key), or `compact,delete`.
pub const CLEANUP_POLICY: &str = "cleanup.policy";
/// Compacted topics: how long a tombstone (null value) stays after its timestamp (ms).
pub const DELETE_RETENTION_MS: &str = "delete.retention.ms";
/// Compacted topics: the cleaner runs when uncleaned bytes reach this fraction of the closed
/// segments' bytes.
pub const MIN_CLEANABLE_DIRTY_RATIO: &str = "min.cleanable.dirty.ratio";
/// Compacted topics: a record stays uncompacted at least this long (ms).
pub const MIN_COMPACTION_LAG_MS: &str = "min.compaction.lag.ms";
/// fdatasync after this many records; unset (with `flush.ms` unset): every batch.
pub const FLUSH_MESSAGES: &str = "flush.messages";
/// fdatasync at least this often (ms); unset (with `flush.messages` unset): every batch.
pub const FLUSH_MS: &str = "flush.ms";

/// Cluster mode: fewest in-sync replicas (the leader included) an acks=all produce needs;
/// fewer: NOT_ENOUGH_REPLICAS. Default 1 (Kafka's).
pub const MIN_INSYNC_REPLICAS: &str = "min.insync.replicas";
/// Cluster mode: `true` lets an out-of-sync replica lead when no in-sync one is alive
/// (acknowledged records may be lost). Default `false`.
pub const UNCLEAN_LEADER_ELECTION_ENABLE: &str = "unclean.leader.election.enable";

/// Every topic config this build knows.
pub const TOPIC_CONFIGS: &[&str] = &[
    RETENTION_MS,
    RETENTION_BYTES,
    SEGMENT_BYTES,
    SEGMENT_MS,
    MAX_MESSAGE_BYTES,
    CLEANUP_POLICY,
    DELETE_RETENTION_MS,
    MIN_CLEANABLE_DIRTY_RATIO,
    MIN_COMPACTION_LAG_MS,
    FLUSH_MESSAGES,
    FLUSH_MS,
    MIN_INSYNC_REPLICAS,
    UNCLEAN_LEADER_ELECTION_ENABLE,
];
