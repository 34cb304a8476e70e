//! Topic administration: create, delete, list, describe (with configs and offsets).

use crate::protocol::error_code::ErrorCode;
use crate::protocol::wire::message;

message! {
    /// A topic config entry (`retention.ms=86400000`).
    pub struct ConfigEntry {
        /// Config name.
        pub name: String,
        /// Config value.
        pub value: String,
    }
}

message! {
    /// A topic to create.
    pub struct NewTopic {
        /// Topic name: 1 to 249 of `[a-zA-Z0-9._-]`.
        pub name: String,
        /// Partition count.
        pub partitions: u32,
        /// Configs that differ from the defaults.
        pub configs: Vec<ConfigEntry>,
        /// Copies of each partition (cluster mode); `-1`: the broker's default (min(3,
        /// registered brokers) in a cluster, 1 alone).
        pub replication_factor: i16,
    }
}

message! {
    /// CreateTopics request.
    pub struct CreateTopicsRequest {
        /// Topics to create.
        pub topics: Vec<NewTopic>,
        /// Check only; create nothing.
        pub validate_only: bool,
    }
}

message! {
    /// The outcome for one topic.
    pub struct TopicResult {
        /// Topic name.
        pub name: String,
        /// `NONE` on success.
        pub error: ErrorCode,
        /// What went wrong, empty on success.
        pub message: String,
    }
}

message! {
    /// CreateTopics response.
    pub struct CreateTopicsResponse {
        /// One result per requested topic.
        pub topics: Vec<TopicResult>,
    }
}

message! {
    /// DeleteTopics request.
    pub struct DeleteTopicsRequest {
        /// Topics to delete.
        pub names: Vec<String>,
    }
}

message! {
    /// DeleteTopics response.
    pub struct DeleteTopicsResponse {
        /// One result per requested topic.
        pub topics: Vec<TopicResult>,
    }
}

message! {
    /// A topic to grow.
    pub struct PartitionsIncrease {
        /// Topic name.
        pub name: String,
        /// The partition count wanted (the new total; more than today's).
        pub count: u32,
    }
}

message! {
    /// CreatePartitions request: add partitions to existing topics.
    pub struct CreatePartitionsRequest {
        /// Topics to grow.
        pub topics: Vec<PartitionsIncrease>,
        /// Check only; change nothing.
        pub validate_only: bool,
    }
}

message! {
    /// CreatePartitions response.
    pub struct CreatePartitionsResponse {
        /// One result per requested topic.
        pub topics: Vec<TopicResult>,
    }
}

message! {
    /// ListTopics request: no fields.
    pub struct ListTopicsRequest {}
}

message! {
    /// One topic in a listing.
    pub struct TopicListing {
        /// Topic name.
        pub name: String,
        /// Partition count.
        pub partitions: u32,
    }
}

message! {
    /// ListTopics response.
    pub struct ListTopicsResponse {
        /// Every topic, by name.
        pub topics: Vec<TopicListing>,
    }
}

message! {
    /// DescribeTopics request.
    pub struct DescribeTopicsRequest {
        /// Topics to describe; `None` for all.
        pub names: Option<Vec<String>>,
    }
}

message! {
    /// One partition of a described topic.
    pub struct PartitionDescription {
        /// Partition index.
        pub partition: u32,
        /// `NONE`, or why the offsets are missing.
        pub error: ErrorCode,
        /// Leader node id, `-1` if none.
        pub leader: i32,
        /// The leader's shard that owns the partition.
        pub leader_shard: u16,
        /// Replica node ids.
        pub replicas: Vec<i32>,
        /// In-sync replica node ids.
        pub isr: Vec<i32>,
        /// First offset held.
        pub start_offset: u64,
        /// High watermark: the offset the next committed record gets.
        pub end_offset: u64,
    }
}

message! {
    /// A described topic: every config (defaults included) and every partition.
    pub struct TopicDescription {
        /// Topic name.
        pub name: String,
        /// `NONE`, or `UNKNOWN_TOPIC_OR_PARTITION`.
        pub error: ErrorCode,
        /// What went wrong, empty if fine.
        pub message: String,
        /// Every config with its effective value.
        pub configs: Vec<ConfigEntry>,
        /// Partitions, by index.
        pub partitions: Vec<PartitionDescription>,
    }
}

message! {
    /// DescribeTopics response.
    pub struct DescribeTopicsResponse {
        /// Described topics.
        pub topics: Vec<TopicDescription>,
    }
}
