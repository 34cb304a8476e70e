//! Produce: record batches for many partitions in one request.

use crate::protocol::codec::RecordSet;
use crate::protocol::error_code::ErrorCode;
use crate::protocol::wire::message;

/// `acks` value: no response at all.
pub const ACKS_NONE: i8 = 0;
/// `acks` value: respond once the leader has appended the batch.
pub const ACKS_LEADER: i8 = 1;
/// `acks` value: respond once the batch is committed (durable under the topic's flush policy
/// on every in-sync replica).
pub const ACKS_ALL: i8 = -1;

message! {
    /// Batches for one partition.
    pub struct ProducePartition {
        /// Partition index.
        pub partition: u32,
        /// One or more whole batches, back to back.
        pub records: RecordSet,
    }
}

message! {
    /// Batches for one topic.
    pub struct ProduceTopic {
        /// Topic name.
        pub name: String,
        /// Per partition.
        pub partitions: Vec<ProducePartition>,
    }
}

message! {
    /// Produce request.
    pub struct ProduceRequest {
        /// 0, 1 or -1 (all).
        pub acks: i8,
        /// How long the broker may wait for the acknowledgement.
        pub timeout_ms: u32,
        /// Per topic.
        pub topics: Vec<ProduceTopic>,
    }
}

message! {
    /// The outcome for one partition.
    pub struct ProducePartitionResult {
        /// Partition index.
        pub partition: u32,
        /// `NONE` on success.
        pub error: ErrorCode,
        /// What went wrong, empty on success.
        pub message: String,
        /// Offset given to the first record of the first batch.
        pub base_offset: u64,
        /// The partition's first offset.
        pub log_start_offset: u64,
    }
}

message! {
    /// The outcome for one topic.
    pub struct ProduceTopicResult {
        /// Topic name.
        pub name: String,
        /// Per partition, in request order.
        pub partitions: Vec<ProducePartitionResult>,
    }
}

message! {
    /// Produce response (none is sent for `acks=0`).
    pub struct ProduceResponse {
        /// How long the broker held this request back because the shard was at its limits;
        /// clients should slow down by as much.
        pub throttle_ms: u32,
        /// Per topic, in request order.
        pub topics: Vec<ProduceTopicResult>,
    }
}
