//! Consumer groups (Kafka's classic consumer protocol, simplified, version 0): find the
//! coordinator, join, sync, heartbeat, leave, commit and fetch offsets, list, describe and
//! delete groups; and the consumer protocol's payloads ([`ConsumerSubscription`],
//! [`ConsumerAssignment`]) that travel inside JoinGroup metadata and SyncGroup assignments as
//! opaque bytes, so the broker can decode them for describe and lag.

use bytes::{Bytes, BytesMut};

use crate::protocol::codec::{ProtocolError, Reader, Writer};
use crate::protocol::error_code::ErrorCode;
use crate::protocol::frame::decode_body;
use crate::protocol::wire::{Wire, message};

/// The only `protocol_type` the coordinator accepts.
pub const PROTOCOL_TYPE_CONSUMER: &str = "consumer";
/// Assignor name: contiguous ranges of each topic's partitions per member.
pub const ASSIGNOR_RANGE: &str = "range";
/// Assignor name: every subscribed partition dealt round-robin over the members.
pub const ASSIGNOR_ROUND_ROBIN: &str = "roundrobin";
/// Assignor name: sticky, revoking only what moves (cooperative).
pub const ASSIGNOR_COOPERATIVE_STICKY: &str = "cooperative-sticky";
/// `generation_id` of an admin offset commit (with an empty `member_id`), and of a group
/// that has no generation.
pub const GENERATION_NONE: i32 = -1;
/// `offset` in an OffsetFetch answer for a partition with no committed offset.
pub const OFFSET_NONE: i64 = -1;
/// Longest group id, in bytes.
pub const GROUP_ID_BYTES_MAX: usize = 249;

/// Group state names, as DescribeGroups and ListGroups report them.
pub mod group_state {
    /// No members; committed offsets may exist.
    pub const EMPTY: &str = "Empty";
    /// A join round is open: members are (re)joining.
    pub const PREPARING_REBALANCE: &str = "PreparingRebalance";
    /// Every member joined; waiting for the leader's assignments.
    pub const COMPLETING_REBALANCE: &str = "CompletingRebalance";
    /// Assignments distributed; members heartbeat.
    pub const STABLE: &str = "Stable";
    /// Deleted, or not (or no longer) coordinated here.
    pub const DEAD: &str = "Dead";
}

message! {
    /// FindCoordinator request.
    pub struct FindCoordinatorRequest {
        /// Group id.
        pub group: String,
    }
}

message! {
    /// FindCoordinator response: the shard that coordinates the group.
    pub struct FindCoordinatorResponse {
        /// `NONE`, or why there is no coordinator.
        pub error: ErrorCode,
        /// What went wrong, empty on success.
        pub message: String,
        /// The coordinator's node id.
        pub node_id: u32,
        /// The coordinator shard (owner of the group's `__consumer_offsets` partition).
        pub shard: u16,
        /// That shard's host.
        pub host: String,
        /// That shard's own port.
        pub port: u16,
    }
}

message! {
    /// One protocol (assignor) a joining member supports, with its metadata.
    pub struct JoinGroupProtocol {
        /// Assignor name (`range`, `roundrobin`, `cooperative-sticky`).
        pub name: String,
        /// For `consumer` groups, an encoded [`ConsumerSubscription`].
        pub metadata: Bytes,
    }
}

message! {
    /// JoinGroup request.
    pub struct JoinGroupRequest {
        /// Group id.
        pub group: String,
        /// A member not heard from (heartbeat, join, sync) for this long is evicted.
        pub session_timeout_ms: u32,
        /// How long a join round waits for the known members to rejoin.
        pub rebalance_timeout_ms: u32,
        /// Empty for a new member: the coordinator assigns one.
        pub member_id: String,
        /// The client's id, for describe.
        pub client_id: String,
        /// Must be `consumer`.
        pub protocol_type: String,
        /// Supported protocols, most preferred first.
        pub protocols: Vec<JoinGroupProtocol>,
    }
}

message! {
    /// A member of the new generation, as the leader sees it.
    pub struct JoinGroupMember {
        /// Member id.
        pub member_id: String,
        /// Its metadata for the chosen protocol.
        pub metadata: Bytes,
    }
}

message! {
    /// JoinGroup response.
    pub struct JoinGroupResponse {
        /// `NONE`, or why the join failed.
        pub error: ErrorCode,
        /// What went wrong, empty on success.
        pub message: String,
        /// The new generation.
        pub generation_id: i32,
        /// The chosen protocol (assignor).
        pub protocol_name: String,
        /// The leader's member id.
        pub leader_id: String,
        /// This member's id (assigned by the coordinator for a new member).
        pub member_id: String,
        /// Every member with its metadata; only in the leader's response.
        pub members: Vec<JoinGroupMember>,
    }
}

message! {
    /// One member's assignment, computed by the leader.
    pub struct SyncGroupAssignment {
        /// Member id.
        pub member_id: String,
        /// For `consumer` groups, an encoded [`ConsumerAssignment`].
        pub assignment: Bytes,
    }
}

message! {
    /// SyncGroup request.
    pub struct SyncGroupRequest {
        /// Group id.
        pub group: String,
        /// The generation the member joined.
        pub generation_id: i32,
        /// Member id.
        pub member_id: String,
        /// Every member's assignment (only the leader sends them).
        pub assignments: Vec<SyncGroupAssignment>,
    }
}

message! {
    /// SyncGroup response.
    pub struct SyncGroupResponse {
        /// `NONE`, or why the sync failed.
        pub error: ErrorCode,
        /// What went wrong, empty on success.
        pub message: String,
        /// This member's assignment.
        pub assignment: Bytes,
    }
}

message! {
    /// Heartbeat request.
    pub struct HeartbeatRequest {
        /// Group id.
        pub group: String,
        /// The member's generation.
        pub generation_id: i32,
        /// Member id.
        pub member_id: String,
    }
}

message! {
    /// Heartbeat response. `REBALANCE_IN_PROGRESS` asks the member to rejoin.
    pub struct HeartbeatResponse {
        /// `NONE`, or what the member must do.
        pub error: ErrorCode,
        /// What went wrong, empty on success.
        pub message: String,
    }
}

message! {
    /// LeaveGroup request.
    pub struct LeaveGroupRequest {
        /// Group id.
        pub group: String,
        /// Member id.
        pub member_id: String,
    }
}

message! {
    /// LeaveGroup response.
    pub struct LeaveGroupResponse {
        /// `NONE`, or why the leave failed.
        pub error: ErrorCode,
        /// What went wrong, empty on success.
        pub message: String,
    }
}

message! {
    /// One partition's offset to commit.
    pub struct OffsetCommitPartition {
        /// Partition index.
        pub partition: u32,
        /// The next offset to consume (at least 0).
        pub offset: i64,
        /// Free-form metadata kept with the offset.
        pub metadata: String,
    }
}

message! {
    /// One topic's offsets to commit.
    pub struct OffsetCommitTopic {
        /// Topic name.
        pub topic: String,
        /// Per partition.
        pub partitions: Vec<OffsetCommitPartition>,
    }
}

message! {
    /// OffsetCommit request. `generation_id` [`GENERATION_NONE`] with an empty `member_id`
    /// is an admin commit, accepted only while the group has no members.
    pub struct OffsetCommitRequest {
        /// Group id.
        pub group: String,
        /// The member's generation.
        pub generation_id: i32,
        /// Member id.
        pub member_id: String,
        /// Offsets to commit.
        pub topics: Vec<OffsetCommitTopic>,
    }
}

message! {
    /// One partition's commit outcome.
    pub struct OffsetCommitPartitionResult {
        /// Partition index.
        pub partition: u32,
        /// `NONE` once durable.
        pub error: ErrorCode,
        /// What went wrong, empty on success.
        pub message: String,
    }
}

message! {
    /// One topic's commit outcomes.
    pub struct OffsetCommitTopicResult {
        /// Topic name.
        pub topic: String,
        /// Per partition, in request order.
        pub partitions: Vec<OffsetCommitPartitionResult>,
    }
}

message! {
    /// OffsetCommit response.
    pub struct OffsetCommitResponse {
        /// Per topic, in request order.
        pub topics: Vec<OffsetCommitTopicResult>,
    }
}

message! {
    /// The partitions of one topic whose committed offsets to fetch.
    pub struct OffsetFetchTopic {
        /// Topic name.
        pub topic: String,
        /// Partition indexes.
        pub partitions: Vec<u32>,
    }
}

message! {
    /// OffsetFetch request.
    pub struct OffsetFetchRequest {
        /// Group id.
        pub group: String,
        /// Topics and partitions; empty for every committed offset of the group.
        pub topics: Vec<OffsetFetchTopic>,
    }
}

message! {
    /// One partition's committed offset.
    pub struct OffsetFetchPartition {
        /// Partition index.
        pub partition: u32,
        /// The committed offset, [`OFFSET_NONE`] if none.
        pub offset: i64,
        /// The metadata committed with it.
        pub metadata: String,
        /// `NONE`, or why there is no answer.
        pub error: ErrorCode,
    }
}

message! {
    /// One topic's committed offsets.
    pub struct OffsetFetchTopicResult {
        /// Topic name.
        pub topic: String,
        /// Per partition.
        pub partitions: Vec<OffsetFetchPartition>,
    }
}

message! {
    /// OffsetFetch response.
    pub struct OffsetFetchResponse {
        /// `NONE`, or why nothing could be fetched (`COORDINATOR_LOAD_IN_PROGRESS`, ...).
        pub error: ErrorCode,
        /// What went wrong, empty on success.
        pub message: String,
        /// Per topic (request order, or by name for "all").
        pub topics: Vec<OffsetFetchTopicResult>,
    }
}

message! {
    /// ListGroups request: no fields.
    pub struct ListGroupsRequest {}
}

message! {
    /// One group in a listing.
    pub struct ListedGroup {
        /// Group id.
        pub group: String,
        /// State name (see [`group_state`]).
        pub state: String,
        /// Protocol type (`consumer`; empty for a group with only committed offsets).
        pub protocol_type: String,
        /// Member count.
        pub members: u32,
    }
}

message! {
    /// ListGroups response.
    pub struct ListGroupsResponse {
        /// Every group, by id.
        pub groups: Vec<ListedGroup>,
    }
}

message! {
    /// DescribeGroups request.
    pub struct DescribeGroupsRequest {
        /// Group ids.
        pub groups: Vec<String>,
    }
}

message! {
    /// A member of a described group.
    pub struct DescribedMember {
        /// Member id.
        pub member_id: String,
        /// The client id it joined with.
        pub client_id: String,
        /// The address it connected from.
        pub client_host: String,
        /// Its current assignment (an encoded [`ConsumerAssignment`]); empty before sync.
        pub assignment: Bytes,
    }
}

message! {
    /// A described group.
    pub struct DescribedGroup {
        /// Group id.
        pub group: String,
        /// `NONE`, or `GROUP_ID_NOT_FOUND`, `INVALID_GROUP_ID`, ...
        pub error: ErrorCode,
        /// What went wrong, empty on success.
        pub message: String,
        /// State name (see [`group_state`]).
        pub state: String,
        /// Protocol type.
        pub protocol_type: String,
        /// The chosen protocol (assignor), empty if none.
        pub protocol: String,
        /// Current generation ([`GENERATION_NONE`] before the first).
        pub generation_id: i32,
        /// Members.
        pub members: Vec<DescribedMember>,
    }
}

message! {
    /// DescribeGroups response.
    pub struct DescribeGroupsResponse {
        /// One per requested group, in request order.
        pub groups: Vec<DescribedGroup>,
    }
}

message! {
    /// DeleteGroups request.
    pub struct DeleteGroupsRequest {
        /// Group ids.
        pub groups: Vec<String>,
    }
}

message! {
    /// One group's delete outcome.
    pub struct DeleteGroupResult {
        /// Group id.
        pub group: String,
        /// `NONE`, `NON_EMPTY_GROUP`, `GROUP_ID_NOT_FOUND`, ...
        pub error: ErrorCode,
        /// What went wrong, empty on success.
        pub message: String,
    }
}

message! {
    /// DeleteGroups response.
    pub struct DeleteGroupsResponse {
        /// One per requested group, in request order.
        pub groups: Vec<DeleteGroupResult>,
    }
}

message! {
    /// Some partitions of one topic (in consumer protocol payloads).
    pub struct ConsumerTopicPartitions {
        /// Topic name.
        pub topic: String,
        /// Partition indexes.
        pub partitions: Vec<u32>,
    }
}

message! {
    /// A consumer's JoinGroup metadata: what it subscribes to and what it owns now.
    pub struct ConsumerSubscription {
        /// Subscribed topics.
        pub topics: Vec<String>,
        /// Partitions it owns (for sticky assignors).
        pub owned: Vec<ConsumerTopicPartitions>,
        /// Assignor-specific data.
        pub user_data: Bytes,
    }
}

message! {
    /// A consumer's assignment, as the leader computes it and SyncGroup hands it out.
    pub struct ConsumerAssignment {
        /// Assigned partitions.
        pub partitions: Vec<ConsumerTopicPartitions>,
        /// Assignor-specific data.
        pub user_data: Bytes,
    }
}

/// Encodes a payload (a [`ConsumerSubscription`] or [`ConsumerAssignment`]) to the bytes
/// that travel in JoinGroup metadata or a SyncGroup assignment.
pub fn encode_payload<T: Wire>(value: &T) -> Bytes {
    let mut w = Writer::new();
    value.encode(&mut w);
    let mut out = BytesMut::with_capacity(w.len());
    for chunk in w.into_chunks() {
        out.extend_from_slice(&chunk);
    }
    out.freeze()
}

/// Decodes a payload from untrusted bytes: the whole input, nothing left over.
pub fn decode_payload<T: Wire>(bytes: &[u8]) -> Result<T, ProtocolError> {
    decode_body(Reader::new(BytesMut::from(bytes)))
}

impl ConsumerSubscription {
    /// The encoded subscription.
    pub fn to_bytes(&self) -> Bytes {
        encode_payload(self)
    }

    /// Decodes a subscription.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProtocolError> {
        decode_payload(bytes)
    }
}

impl ConsumerAssignment {
    /// The encoded assignment.
    pub fn to_bytes(&self) -> Bytes {
        encode_payload(self)
    }

    /// Decodes an assignment.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProtocolError> {
        decode_payload(bytes)
    }
}
