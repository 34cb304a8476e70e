//! Error codes: every failure the broker reports is one of these plus a message. Numbers are
//! Kafka's where Kafka has the same error, so people who know Kafka recognise them; Sluice's
//! own start at 1000.

use std::fmt;

/// A protocol error code. Unknown codes (from a newer broker) are kept as they are.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub i16);

macro_rules! codes {
    ($($(#[$doc:meta])* $name:ident = $value:expr, retriable: $retriable:expr;)*) => {
        impl ErrorCode {
            $($(#[$doc])* pub const $name: ErrorCode = ErrorCode($value);)*

            /// The code's name, `UNKNOWN_CODE` for codes this build does not know.
            pub fn name(self) -> &'static str {
                match self.0 {
                    $($value => stringify!($name),)*
                    _ => "UNKNOWN_CODE",
                }
            }

            /// Whether the same request may succeed if retried later.
            pub fn is_retriable(self) -> bool {
                match self.0 {
                    $($value => $retriable,)*
                    _ => false,
                }
            }
        }
    };
}

codes! {
    /// Success.
    NONE = 0, retriable: false;
    /// An unexpected failure inside the broker (its log says more).
    UNKNOWN_SERVER_ERROR = -1, retriable: false;
    /// The offset is outside the partition's `[log start, log end]`.
    OFFSET_OUT_OF_RANGE = 1, retriable: false;
    /// A record batch failed validation (CRC, lengths, layout).
    CORRUPT_MESSAGE = 2, retriable: false;
    /// No such topic or partition.
    UNKNOWN_TOPIC_OR_PARTITION = 3, retriable: false;
    /// The partition has no leader right now (an election is under way); refresh metadata
    /// and retry.
    LEADER_NOT_AVAILABLE = 5, retriable: true;
    /// This broker (shard) does not lead the partition; refresh metadata.
    NOT_LEADER_OR_FOLLOWER = 6, retriable: true;
    /// The request did not complete within its timeout.
    REQUEST_TIMED_OUT = 7, retriable: true;
    /// The broker named in the request is not alive (or not known to the controller).
    BROKER_NOT_AVAILABLE = 8, retriable: false;
    /// A batch is larger than the topic's `max.message.bytes`.
    MESSAGE_TOO_LARGE = 10, retriable: false;
    /// Offset commit metadata is longer than the coordinator keeps.
    OFFSET_METADATA_TOO_LARGE = 12, retriable: false;
    /// The coordinator is still loading the group's offsets; retry shortly.
    COORDINATOR_LOAD_IN_PROGRESS = 14, retriable: true;
    /// The group coordinator is not available (its offsets partition is not open).
    COORDINATOR_NOT_AVAILABLE = 15, retriable: true;
    /// This is not the group's coordinator; find it again.
    NOT_COORDINATOR = 16, retriable: true;
    /// The topic name is not valid.
    INVALID_TOPIC = 17, retriable: false;
    /// Fewer in-sync replicas than the topic's `min.insync.replicas`: the batch was not
    /// written.
    NOT_ENOUGH_REPLICAS = 19, retriable: true;
    /// The batch was written by the leader, but the in-sync replicas shrank below
    /// `min.insync.replicas` before it was committed.
    NOT_ENOUGH_REPLICAS_AFTER_APPEND = 20, retriable: true;
    /// `acks` is not 0, 1 or -1 (all).
    INVALID_REQUIRED_ACKS = 21, retriable: false;
    /// The member's generation is not the group's current one; rejoin.
    ILLEGAL_GENERATION = 22, retriable: false;
    /// Wrong protocol type, or no protocol supported by every member.
    INCONSISTENT_GROUP_PROTOCOL = 23, retriable: false;
    /// The group id is empty or too long.
    INVALID_GROUP_ID = 24, retriable: false;
    /// The group does not know this member id; rejoin as a new member.
    UNKNOWN_MEMBER_ID = 25, retriable: false;
    /// The session timeout is outside the coordinator's allowed range.
    INVALID_SESSION_TIMEOUT = 26, retriable: false;
    /// The group is rebalancing; rejoin.
    REBALANCE_IN_PROGRESS = 27, retriable: false;
    /// The API version is not supported (see ApiVersions).
    UNSUPPORTED_VERSION = 35, retriable: false;
    /// A topic with this name exists.
    TOPIC_ALREADY_EXISTS = 36, retriable: false;
    /// The partition count is not valid.
    INVALID_PARTITIONS = 37, retriable: false;
    /// The replication factor is out of range or above the number of live brokers.
    INVALID_REPLICATION_FACTOR = 38, retriable: false;
    /// A replica assignment is not valid.
    INVALID_REPLICA_ASSIGNMENT = 39, retriable: false;
    /// A topic config is unknown or its value invalid.
    INVALID_CONFIG = 40, retriable: false;
    /// This node is not the active controller; find it again.
    NOT_CONTROLLER = 41, retriable: true;
    /// The request is malformed.
    INVALID_REQUEST = 42, retriable: false;
    /// An idempotent batch's sequence number is not the next one the partition expects
    /// (a gap: an earlier batch was lost); the producer cannot keep its ordering guarantee.
    OUT_OF_ORDER_SEQUENCE_NUMBER = 45, retriable: false;
    /// An idempotent batch repeats a sequence number the partition no longer remembers the
    /// offset of (older than the batches it keeps per producer).
    DUPLICATE_SEQUENCE_NUMBER = 46, retriable: false;
    /// A negative producer epoch with a producer id.
    INVALID_PRODUCER_EPOCH = 47, retriable: false;
    /// The partition's log failed (a write or fsync error stops it for good).
    STORAGE_ERROR = 56, retriable: false;
    /// InitProducerId names a producer id this broker never gave.
    UNKNOWN_PRODUCER_ID = 59, retriable: false;
    /// The group still has members, so it cannot be deleted (or reset).
    NON_EMPTY_GROUP = 68, retriable: false;
    /// No such group.
    GROUP_ID_NOT_FOUND = 69, retriable: false;
    /// The request's leader epoch is older than the partition's: the sender's metadata is
    /// stale (refresh it), or the sender is a fenced old leader.
    FENCED_LEADER_EPOCH = 74, retriable: true;
    /// The request's leader epoch is newer than this broker knows: it has not caught up
    /// with the latest leader change yet; retry.
    UNKNOWN_LEADER_EPOCH = 75, retriable: true;
    /// The leader cannot answer the offset yet (its high watermark has not caught up since
    /// it became leader); retry.
    OFFSET_NOT_AVAILABLE = 78, retriable: true;
    /// The group already has the most members the coordinator allows.
    GROUP_MAX_SIZE_REACHED = 81, retriable: false;
    /// A record is not valid for the topic: a record without a key produced to a compacted
    /// topic (`cleanup.policy=compact`).
    INVALID_RECORD = 87, retriable: false;
    /// The producer epoch was bumped by a newer InitProducerId: this producer is fenced.
    PRODUCER_FENCED = 90, retriable: false;
    /// The frame is larger than the broker accepts; the connection is closed.
    FRAME_TOO_LARGE = 1000, retriable: false;
    /// The API key is unknown.
    UNSUPPORTED_API = 1001, retriable: false;
    /// The broker is shutting down.
    SHUTTING_DOWN = 1002, retriable: true;
    /// The shard is at its memory or queue limit; retry after the throttle time.
    THROTTLED = 1003, retriable: true;
    /// The disk holding the partition is full: the append was refused (nothing of it was
    /// written). Fetches still work; appends are accepted again once space is freed.
    DISK_FULL = 1004, retriable: false;
    /// An offset commit names a partition not assigned to the committing member.
    PARTITION_NOT_ASSIGNED = 1005, retriable: false;
}

impl ErrorCode {
    /// Whether this is success.
    pub fn is_ok(self) -> bool {
        self == ErrorCode::NONE
    }
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name(), self.0)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
