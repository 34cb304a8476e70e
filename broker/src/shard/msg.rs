//! Messages between shards. Every request for partitions another shard owns, every admin
//! change, and every metadata snapshot travels as one of these over the owner's bounded
//! inbox (a FIFO `flume` channel); the answer comes back on a bounded(1) reply channel.

use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use sluice_proto::protocol::{
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse,
    DecommissionBrokerRequest, DecommissionBrokerResponse, DeleteTopicsRequest,
    DeleteTopicsResponse, ErrorCode, FetchPartitionResult, InitProducerIdRequest,
    InitProducerIdResponse, ListOffsetsPartitionResult, ProducePartitionResult,
};

use crate::metadata::Metadata;
use crate::topic_config::TopicConfigs;

/// Where a reply goes.
pub(crate) type Reply<T> = flume::Sender<T>;

/// A reply channel and its receiving end.
pub(crate) fn reply_channel<T>() -> (Reply<T>, flume::Receiver<T>) {
    flume::bounded(1)
}

/// Batches for one partition.
#[derive(Debug)]
pub(crate) struct ProducePart {
    /// Topic name.
    pub(crate) topic: String,
    /// Partition index.
    pub(crate) partition: u32,
    /// Whole batches, back to back (a zero-copy slice of the request frame).
    pub(crate) records: BytesMut,
}

/// One partition to read.
#[derive(Debug, Clone)]
pub(crate) struct FetchPart {
    /// Topic name.
    pub(crate) topic: String,
    /// Partition index.
    pub(crate) partition: u32,
    /// First offset wanted.
    pub(crate) offset: u64,
    /// Most bytes for this partition.
    pub(crate) max_bytes: usize,
}

/// A partition whose committed end a long poll waits to see move.
#[derive(Debug, Clone)]
pub(crate) struct WatchPart {
    /// Topic name.
    pub(crate) topic: String,
    /// Partition index.
    pub(crate) partition: u32,
    /// The high watermark already seen: the watch ends when it moves past this.
    pub(crate) high_watermark: u64,
}

/// A partition's offsets, or why they are missing.
pub(crate) type OffsetsResult = Result<(u64, u64), (ErrorCode, String)>;

/// A message to a shard.
pub(crate) enum ShardMsg {
    /// Append batches to partitions this shard owns (admitted in arrival order).
    Produce {
        /// 0, 1 or -1.
        acks: i8,
        /// Longest wait for the acknowledgement.
        timeout_ms: u32,
        /// Partitions, in request order.
        parts: Vec<ProducePart>,
        /// Results in the same order.
        reply: Reply<Vec<ProducePartitionResult>>,
    },
    /// Read partitions this shard owns.
    Fetch {
        /// Partitions, in request order.
        parts: Vec<FetchPart>,
        /// Bytes shared by these partitions, in order.
        max_bytes: usize,
        /// Results in the same order.
        reply: Reply<Vec<FetchPartitionResult>>,
    },
    /// Wait until one of these partitions' high watermark moves, `deadline` passes, or the
    /// requester drops `cancel`'s sender.
    Watch {
        /// Partitions to watch.
        parts: Vec<WatchPart>,
        /// When to give up.
        deadline: Instant,
        /// Disconnects when the requester no longer waits.
        cancel: flume::Receiver<()>,
        /// Sent once the watch ends.
        reply: Reply<()>,
    },
    /// Offsets by timestamp, earliest or latest.
    ListOffsets {
        /// `(topic, partition, timestamp)`, in request order.
        parts: Vec<(String, u32, i64)>,
        /// Results in the same order.
        reply: Reply<Vec<ListOffsetsPartitionResult>>,
    },
    /// Log start and high watermark of partitions (DescribeTopics).
    Offsets {
        /// `(topic, partition)`.
        parts: Vec<(String, u32)>,
        /// Results in the same order.
        reply: Reply<Vec<OffsetsResult>>,
    },
    /// To a group's coordinator shard: a consumer group request.
    Group {
        /// The request.
        op: crate::group::GroupOp,
        /// The answer.
        reply: Reply<crate::group::GroupReply>,
    },
    /// To the controller: create topics.
    CreateTopics {
        /// The request.
        request: CreateTopicsRequest,
        /// The answer.
        reply: Reply<CreateTopicsResponse>,
    },
    /// To the controller: add partitions to topics.
    CreatePartitions {
        /// The request.
        request: CreatePartitionsRequest,
        /// The answer.
        reply: Reply<CreatePartitionsResponse>,
    },
    /// To the controller: decommission a broker (cluster mode).
    DecommissionBroker {
        /// The request.
        request: DecommissionBrokerRequest,
        /// The answer.
        reply: Reply<DecommissionBrokerResponse>,
    },
    /// To the controller: a producer id and epoch.
    InitProducerId {
        /// The request.
        request: InitProducerIdRequest,
        /// The answer.
        reply: Reply<InitProducerIdResponse>,
    },
    /// To the controller: delete topics.
    DeleteTopics {
        /// The request.
        request: DeleteTopicsRequest,
        /// The answer.
        reply: Reply<DeleteTopicsResponse>,
    },
    /// From the controller: open (creating if needed) these partitions' logs.
    OpenPartitions {
        /// Topic name.
        topic: String,
        /// Partition indexes this shard owns.
        partitions: Vec<u32>,
        /// The topic's configs.
        configs: TopicConfigs,
        /// `Err` names the first failure.
        reply: Reply<Result<(), String>>,
    },
    /// From the controller: close these partitions' logs and delete their directories.
    RemovePartitions {
        /// Topic name.
        topic: String,
        /// Partition indexes this shard owns.
        partitions: Vec<u32>,
        /// Sent when done.
        reply: Reply<()>,
    },
    /// From the controller: the new metadata.
    Snapshot {
        /// Immutable metadata.
        metadata: Arc<Metadata>,
        /// Sent once installed.
        reply: Reply<()>,
    },
    /// From shard 0 in cluster mode: the new cluster view. The shard installs it, then
    /// applies the partition roles and group coordinators it implies, then replies.
    ClusterView {
        /// The view.
        view: Arc<crate::cluster::ClusterView>,
        /// Sent once applied.
        reply: Reply<()>,
    },
    /// To shard 0 in cluster mode, from a partition leader: change the ISR through the
    /// controller (Kafka's AlterPartition).
    AlterPartition {
        /// Topic name.
        topic: String,
        /// Partition index.
        partition: u32,
        /// The leader epoch the leader holds.
        leader_epoch: u32,
        /// The partition epoch the leader holds.
        partition_epoch: u32,
        /// The ISR it wants.
        new_isr: Vec<sluice_replication::NodeId>,
        /// `Err` says why the controller did not apply it.
        reply: Reply<Result<(), String>>,
    },
    /// From the metrics endpoint: this shard's counters.
    Metrics {
        /// The snapshot, built on the shard.
        reply: Reply<crate::metrics::ShardSnapshot>,
    },
    /// From the main thread on SIGHUP: the reloadable settings, applied on this shard.
    Reconfigure {
        /// Interval between retention passes.
        retention_check_ms: u64,
        /// Capacity of the request budget.
        shard_request_bytes: usize,
        /// Capacity of the fetch budget.
        shard_fetch_bytes: usize,
        /// Sent once applied.
        reply: Reply<()>,
    },
    /// Shutdown, phase 0, to shard 0 in cluster mode: have the controller move this node's
    /// leaderships away (controlled shutdown).
    ControlledShutdown {
        /// Sent when done (or given up).
        reply: Reply<()>,
    },
    /// Shutdown, phase 1: stop accepting and reading, finish in-flight requests (bounded).
    Drain {
        /// Sent when drained.
        reply: Reply<()>,
    },
    /// Shutdown, phase 2: close every log and stop the shard.
    Stop {
        /// Sent when every log is closed; `false` if any close failed.
        reply: Reply<bool>,
    },
}
