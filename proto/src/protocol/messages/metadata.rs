//! Metadata: brokers, the address of every shard, and per partition its leader and the shard
//! that owns it, so clients connect straight to the owning core.

use crate::protocol::error_code::ErrorCode;
use crate::protocol::wire::message;

message! {
    /// Metadata request.
    pub struct MetadataRequest {
        /// Topics to describe; `None` for all.
        pub topics: Option<Vec<String>>,
    }
}

message! {
    /// Where one shard of a broker accepts connections.
    pub struct ShardAddress {
        /// Shard id.
        pub shard: u16,
        /// Host to connect to.
        pub host: String,
        /// Port to connect to.
        pub port: u16,
    }
}

message! {
    /// One broker.
    pub struct BrokerMetadata {
        /// Node id.
        pub node_id: u32,
        /// The shared address (any shard accepts, and forwards as needed).
        pub host: String,
        /// Port of the shared address.
        pub port: u16,
        /// Each shard's own address.
        pub shards: Vec<ShardAddress>,
    }
}

message! {
    /// One partition's placement.
    pub struct PartitionMetadata {
        /// Partition index.
        pub partition: u32,
        /// Error for this partition, `NONE` if fine.
        pub error: ErrorCode,
        /// Leader node id, `-1` if none.
        pub leader: i32,
        /// The shard of the leader that owns the partition.
        pub leader_shard: u16,
        /// Leader epoch.
        pub leader_epoch: u32,
        /// Replica node ids.
        pub replicas: Vec<i32>,
        /// In-sync replica node ids.
        pub isr: Vec<i32>,
    }
}

message! {
    /// One topic's placement.
    pub struct TopicMetadata {
        /// Topic name.
        pub name: String,
        /// Error for this topic (`UNKNOWN_TOPIC_OR_PARTITION`), `NONE` if fine.
        pub error: ErrorCode,
        /// What went wrong, empty if fine.
        pub message: String,
        /// Partitions, by index.
        pub partitions: Vec<PartitionMetadata>,
    }
}

message! {
    /// Metadata response.
    pub struct MetadataResponse {
        /// Brokers of the cluster.
        pub brokers: Vec<BrokerMetadata>,
        /// Topics asked for (all topics if none were named).
        pub topics: Vec<TopicMetadata>,
    }
}
