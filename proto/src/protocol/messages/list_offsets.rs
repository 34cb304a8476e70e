//! ListOffsets: the earliest, the latest, or the first offset at or after a timestamp.

use crate::protocol::error_code::ErrorCode;
use crate::protocol::wire::message;

/// `timestamp` value asking for the high watermark.
pub const LATEST_TIMESTAMP: i64 = -1;
/// `timestamp` value asking for the log start offset.
pub const EARLIEST_TIMESTAMP: i64 = -2;

message! {
    /// One partition's query.
    pub struct ListOffsetsPartition {
        /// Partition index.
        pub partition: u32,
        /// A timestamp (ms), or [`LATEST_TIMESTAMP`] / [`EARLIEST_TIMESTAMP`].
        pub timestamp: i64,
    }
}

message! {
    /// One topic's queries.
    pub struct ListOffsetsTopic {
        /// Topic name.
        pub name: String,
        /// Per partition.
        pub partitions: Vec<ListOffsetsPartition>,
    }
}

message! {
    /// ListOffsets request.
    pub struct ListOffsetsRequest {
        /// Per topic.
        pub topics: Vec<ListOffsetsTopic>,
    }
}

message! {
    /// One partition's answer.
    pub struct ListOffsetsPartitionResult {
        /// Partition index.
        pub partition: u32,
        /// `NONE` on success.
        pub error: ErrorCode,
        /// What went wrong, empty on success.
        pub message: String,
        /// The offset; for a timestamp, the first record at or after it, or the high
        /// watermark when no record is that recent.
        pub offset: u64,
        /// For a timestamp query, the max timestamp of the batch found; else -1.
        pub timestamp: i64,
    }
}

message! {
    /// One topic's answers.
    pub struct ListOffsetsTopicResult {
        /// Topic name.
        pub name: String,
        /// Per partition, in request order.
        pub partitions: Vec<ListOffsetsPartitionResult>,
    }
}

message! {
    /// ListOffsets response.
    pub struct ListOffsetsResponse {
        /// Per topic, in request order.
        pub topics: Vec<ListOffsetsTopicResult>,
    }
}
