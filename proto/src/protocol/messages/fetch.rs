//! Fetch: read batches from offsets, with long polling.

use crate::protocol::codec::RecordSet;
use crate::protocol::error_code::ErrorCode;
use crate::protocol::wire::message;

message! {
    /// Where to read one partition from.
    pub struct FetchPartition {
        /// Partition index.
        pub partition: u32,
        /// First offset wanted.
        pub fetch_offset: u64,
        /// Most bytes for this partition (the first batch is returned whatever its size).
        pub partition_max_bytes: u32,
    }
}

message! {
    /// Partitions of one topic to read.
    pub struct FetchTopic {
        /// Topic name.
        pub name: String,
        /// Per partition.
        pub partitions: Vec<FetchPartition>,
    }
}

message! {
    /// Fetch request.
    pub struct FetchRequest {
        /// Longest the broker may wait for `min_bytes` to arrive.
        pub max_wait_ms: u32,
        /// Answer as soon as this many bytes are available.
        pub min_bytes: u32,
        /// Most bytes in the whole response (capped at `FETCH_BYTES_MAX`).
        pub max_bytes: u32,
        /// Per topic.
        pub topics: Vec<FetchTopic>,
    }
}

message! {
    /// What one partition returned.
    pub struct FetchPartitionResult {
        /// Partition index.
        pub partition: u32,
        /// `NONE` on success.
        pub error: ErrorCode,
        /// What went wrong, empty on success.
        pub message: String,
        /// Offset after the last committed record.
        pub high_watermark: u64,
        /// The partition's first offset.
        pub log_start_offset: u64,
        /// Whole batches; the first may start before `fetch_offset`.
        pub records: RecordSet,
    }
}

message! {
    /// What one topic returned.
    pub struct FetchTopicResult {
        /// Topic name.
        pub name: String,
        /// Per partition, in request order.
        pub partitions: Vec<FetchPartitionResult>,
    }
}

message! {
    /// Fetch response.
    pub struct FetchResponse {
        /// How long the broker held this request back at its limits.
        pub throttle_ms: u32,
        /// Per topic, in request order.
        pub topics: Vec<FetchTopicResult>,
    }
}
