//! Helpers shared by the native-protocol tests (`protocol_*.rs`): the request and response
//! type of each API, real record batches, one sample message of each type, and frame
//! helpers that cut an encoded frame back into header and body the way a peer does.

// Each test binary uses a subset of these helpers.
#![allow(dead_code, unused_macros, unused_imports)]

use bytes::{Bytes, BytesMut};
use sluice_proto::protocol::*;
use sluice_proto::{BatchBuilder, Compression, Limits};

/// Runs `$body` with `$req` and `$resp` as the request and response types of `$api`.
macro_rules! with_api_types {
    ($api:expr, $req:ident, $resp:ident => $body:expr) => {{
        use sluice_proto::protocol::*;
        match $api {
            ApiKey::ApiVersions => {
                type $req = ApiVersionsRequest;
                type $resp = ApiVersionsResponse;
                $body
            }
            ApiKey::Metadata => {
                type $req = MetadataRequest;
                type $resp = MetadataResponse;
                $body
            }
            ApiKey::CreateTopics => {
                type $req = CreateTopicsRequest;
                type $resp = CreateTopicsResponse;
                $body
            }
            ApiKey::DeleteTopics => {
                type $req = DeleteTopicsRequest;
                type $resp = DeleteTopicsResponse;
                $body
            }
            ApiKey::ListTopics => {
                type $req = ListTopicsRequest;
                type $resp = ListTopicsResponse;
                $body
            }
            ApiKey::DescribeTopics => {
                type $req = DescribeTopicsRequest;
                type $resp = DescribeTopicsResponse;
                $body
            }
            ApiKey::Produce => {
                type $req = ProduceRequest;
                type $resp = ProduceResponse;
                $body
            }
            ApiKey::Fetch => {
                type $req = FetchRequest;
                type $resp = FetchResponse;
                $body
            }
            ApiKey::ListOffsets => {
                type $req = ListOffsetsRequest;
                type $resp = ListOffsetsResponse;
                $body
            }
            ApiKey::FindCoordinator => {
                type $req = FindCoordinatorRequest;
                type $resp = FindCoordinatorResponse;
                $body
            }
            ApiKey::JoinGroup => {
                type $req = JoinGroupRequest;
                type $resp = JoinGroupResponse;
                $body
            }
            ApiKey::SyncGroup => {
                type $req = SyncGroupRequest;
                type $resp = SyncGroupResponse;
                $body
            }
            ApiKey::Heartbeat => {
                type $req = HeartbeatRequest;
                type $resp = HeartbeatResponse;
                $body
            }
            ApiKey::LeaveGroup => {
                type $req = LeaveGroupRequest;
                type $resp = LeaveGroupResponse;
                $body
            }
            ApiKey::OffsetCommit => {
                type $req = OffsetCommitRequest;
                type $resp = OffsetCommitResponse;
                $body
            }
            ApiKey::OffsetFetch => {
                type $req = OffsetFetchRequest;
                type $resp = OffsetFetchResponse;
                $body
            }
            ApiKey::ListGroups => {
                type $req = ListGroupsRequest;
                type $resp = ListGroupsResponse;
                $body
            }
            ApiKey::DescribeGroups => {
                type $req = DescribeGroupsRequest;
                type $resp = DescribeGroupsResponse;
                $body
            }
            ApiKey::DeleteGroups => {
                type $req = DeleteGroupsRequest;
                type $resp = DeleteGroupsResponse;
                $body
            }
            ApiKey::InitProducerId => {
                type $req = InitProducerIdRequest;
                type $resp = InitProducerIdResponse;
                $body
            }
            ApiKey::CreatePartitions => {
                type $req = CreatePartitionsRequest;
                type $resp = CreatePartitionsResponse;
                $body
            }
            ApiKey::DecommissionBroker => {
                type $req = DecommissionBrokerRequest;
                type $resp = DecommissionBrokerResponse;
                $body
            }
        }
    }};
}
pub(crate) use with_api_types;

/// Every API key, in table order.
pub(crate) fn all_apis() -> Vec<ApiKey> {
    APIS.iter().map(|spec| spec.key).collect()
}

/// A frame's chunks as one contiguous buffer (what arrives on the socket).
pub(crate) fn concat(chunks: &[Bytes]) -> BytesMut {
    let mut out = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
    for chunk in chunks {
        out.extend_from_slice(chunk);
    }
    out
}

/// Checks a whole frame's length prefix against `max` and returns a reader over its payload.
pub(crate) fn open_frame(mut frame: BytesMut, max: usize) -> Reader {
    assert!(
        frame.len() >= FRAME_PREFIX_BYTES,
        "frame shorter than its prefix"
    );
    let prefix: [u8; FRAME_PREFIX_BYTES] = frame[..FRAME_PREFIX_BYTES]
        .try_into()
        .expect("prefix bytes");
    let len = frame_length(prefix, max).expect("frame within its limit");
    let payload = frame.split_off(FRAME_PREFIX_BYTES);
    assert_eq!(len, payload.len(), "length prefix matches the payload");
    Reader::new(payload)
}

/// One real record batch of `records` records, values of `value_bytes` bytes.
pub(crate) fn batch(compression: Compression, records: usize, value_bytes: usize) -> Bytes {
    let mut builder = BatchBuilder::new(compression, Limits::DEFAULT);
    for i in 0..records {
        let key = format!("key-{i}");
        let value = noise(value_bytes, i as u64);
        builder
            .push(
                1_700_000_000_000 + i as i64,
                Some(key.as_bytes()),
                Some(&value),
                &[(b"h".as_slice(), Some(b"v".as_slice()))],
            )
            .expect("push within limits");
    }
    builder.build().expect("build").freeze()
}

/// `len` pseudo-random bytes from `seed` (incompressible, so compressed batches stay large).
pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A record set as the decoder returns it: the same bytes, received in one piece.
pub(crate) fn received(records: &RecordSet) -> RecordSet {
    RecordSet::Received(records.clone().into_bytes_mut())
}

/// A produce request with every record set in received form.
pub(crate) fn received_produce(request: &ProduceRequest) -> ProduceRequest {
    let mut out = request.clone();
    for partition in out.topics.iter_mut().flat_map(|t| t.partitions.iter_mut()) {
        partition.records = received(&partition.records);
    }
    out
}

/// A fetch response with every record set in received form.
pub(crate) fn received_fetch(response: &FetchResponse) -> FetchResponse {
    let mut out = response.clone();
    for partition in out.topics.iter_mut().flat_map(|t| t.partitions.iter_mut()) {
        partition.records = received(&partition.records);
    }
    out
}

/// Fixed, hand-checkable sample messages, one per type (the golden fixtures encode these).
pub(crate) mod samples {
    use super::*;

    /// A small uncompressed batch (copied into the frame: under the zero-copy threshold).
    pub(crate) fn small_batch() -> Bytes {
        batch(Compression::None, 2, 8)
    }

    pub(crate) fn api_versions_request() -> ApiVersionsRequest {
        ApiVersionsRequest {}
    }

    pub(crate) fn api_versions_response() -> ApiVersionsResponse {
        ApiVersionsResponse {
            apis: api_version_ranges(),
            node_id: 1,
            shard: 0,
            shard_count: 2,
        }
    }

    pub(crate) fn metadata_request() -> MetadataRequest {
        MetadataRequest {
            topics: Some(vec!["orders".into(), "payments".into()]),
        }
    }

    pub(crate) fn metadata_response() -> MetadataResponse {
        MetadataResponse {
            brokers: vec![BrokerMetadata {
                node_id: 1,
                host: "127.0.0.1".into(),
                port: 9092,
                shards: vec![
                    ShardAddress {
                        shard: 0,
                        host: "127.0.0.1".into(),
                        port: 9093,
                    },
                    ShardAddress {
                        shard: 1,
                        host: "127.0.0.1".into(),
                        port: 9094,
                    },
                ],
            }],
            topics: vec![
                TopicMetadata {
                    name: "orders".into(),
                    error: ErrorCode::NONE,
                    message: String::new(),
                    partitions: vec![
                        PartitionMetadata {
                            partition: 0,
                            error: ErrorCode::NONE,
                            leader: 1,
                            leader_shard: 0,
                            leader_epoch: 3,
                            replicas: vec![1],
                            isr: vec![1],
                        },
                        PartitionMetadata {
                            partition: 1,
                            error: ErrorCode::NONE,
                            leader: 1,
                            leader_shard: 1,
                            leader_epoch: 3,
                            replicas: vec![1],
                            isr: vec![1],
                        },
                    ],
                },
                TopicMetadata {
                    name: "payments".into(),
                    error: ErrorCode::UNKNOWN_TOPIC_OR_PARTITION,
                    message: "no topic payments".into(),
                    partitions: vec![],
                },
            ],
        }
    }

    pub(crate) fn create_topics_request() -> CreateTopicsRequest {
        CreateTopicsRequest {
            topics: vec![NewTopic {
                name: "orders".into(),
                partitions: 2,
                configs: vec![ConfigEntry {
                    name: config::RETENTION_MS.into(),
                    value: "86400000".into(),
                }],
                replication_factor: 3,
            }],
            validate_only: false,
        }
    }

    pub(crate) fn create_topics_response() -> CreateTopicsResponse {
        CreateTopicsResponse {
            topics: vec![TopicResult {
                name: "orders".into(),
                error: ErrorCode::TOPIC_ALREADY_EXISTS,
                message: "topic orders exists".into(),
            }],
        }
    }

    pub(crate) fn create_partitions_request() -> CreatePartitionsRequest {
        CreatePartitionsRequest {
            topics: vec![PartitionsIncrease {
                name: "orders".into(),
                count: 6,
            }],
            validate_only: false,
        }
    }

    pub(crate) fn create_partitions_response() -> CreatePartitionsResponse {
        CreatePartitionsResponse {
            topics: vec![TopicResult {
                name: "orders".into(),
                error: ErrorCode::NONE,
                message: String::new(),
            }],
        }
    }

    pub(crate) fn decommission_broker_request() -> DecommissionBrokerRequest {
        DecommissionBrokerRequest { broker: 2 }
    }

    pub(crate) fn decommission_broker_response() -> DecommissionBrokerResponse {
        DecommissionBrokerResponse {
            error: ErrorCode::NONE,
            message: String::new(),
            remaining_replicas: 5,
        }
    }

    pub(crate) fn delete_topics_request() -> DeleteTopicsRequest {
        DeleteTopicsRequest {
            names: vec!["orders".into()],
        }
    }

    pub(crate) fn delete_topics_response() -> DeleteTopicsResponse {
        DeleteTopicsResponse {
            topics: vec![TopicResult {
                name: "orders".into(),
                error: ErrorCode::NONE,
                message: String::new(),
            }],
        }
    }

    pub(crate) fn list_topics_request() -> ListTopicsRequest {
        ListTopicsRequest {}
    }

    pub(crate) fn list_topics_response() -> ListTopicsResponse {
        ListTopicsResponse {
            topics: vec![
                TopicListing {
                    name: "orders".into(),
                    partitions: 2,
                },
                TopicListing {
                    name: "payments".into(),
                    partitions: 1,
                },
            ],
        }
    }

    pub(crate) fn describe_topics_request() -> DescribeTopicsRequest {
        DescribeTopicsRequest { names: None }
    }

    pub(crate) fn describe_topics_response() -> DescribeTopicsResponse {
        DescribeTopicsResponse {
            topics: vec![TopicDescription {
                name: "orders".into(),
                error: ErrorCode::NONE,
                message: String::new(),
                configs: vec![ConfigEntry {
                    name: config::SEGMENT_BYTES.into(),
                    value: "1073741824".into(),
                }],
                partitions: vec![PartitionDescription {
                    partition: 0,
                    error: ErrorCode::NONE,
                    leader: 1,
                    leader_shard: 0,
                    replicas: vec![1],
                    isr: vec![1],
                    start_offset: 0,
                    end_offset: 42,
                }],
            }],
        }
    }

    pub(crate) fn produce_request() -> ProduceRequest {
        ProduceRequest {
            acks: ACKS_ALL,
            timeout_ms: 30_000,
            topics: vec![ProduceTopic {
                name: "orders".into(),
                partitions: vec![ProducePartition {
                    partition: 1,
                    records: RecordSet::Chunks(vec![small_batch()]),
                }],
            }],
        }
    }

    pub(crate) fn produce_response() -> ProduceResponse {
        ProduceResponse {
            throttle_ms: 0,
            topics: vec![ProduceTopicResult {
                name: "orders".into(),
                partitions: vec![ProducePartitionResult {
                    partition: 1,
                    error: ErrorCode::NONE,
                    message: String::new(),
                    base_offset: 40,
                    log_start_offset: 0,
                }],
            }],
        }
    }

    pub(crate) fn fetch_request() -> FetchRequest {
        FetchRequest {
            max_wait_ms: 500,
            min_bytes: 1,
            max_bytes: 1 << 20,
            topics: vec![FetchTopic {
                name: "orders".into(),
                partitions: vec![FetchPartition {
                    partition: 1,
                    fetch_offset: 40,
                    partition_max_bytes: 1 << 20,
                }],
            }],
        }
    }

    pub(crate) fn fetch_response() -> FetchResponse {
        FetchResponse {
            throttle_ms: 0,
            topics: vec![FetchTopicResult {
                name: "orders".into(),
                partitions: vec![
                    FetchPartitionResult {
                        partition: 1,
                        error: ErrorCode::NONE,
                        message: String::new(),
                        high_watermark: 42,
                        log_start_offset: 0,
                        records: RecordSet::Chunks(vec![small_batch()]),
                    },
                    FetchPartitionResult {
                        partition: 7,
                        error: ErrorCode::UNKNOWN_TOPIC_OR_PARTITION,
                        message: "no partition 7".into(),
                        high_watermark: 0,
                        log_start_offset: 0,
                        records: RecordSet::empty(),
                    },
                ],
            }],
        }
    }

    pub(crate) fn list_offsets_request() -> ListOffsetsRequest {
        ListOffsetsRequest {
            topics: vec![ListOffsetsTopic {
                name: "orders".into(),
                partitions: vec![
                    ListOffsetsPartition {
                        partition: 0,
                        timestamp: EARLIEST_TIMESTAMP,
                    },
                    ListOffsetsPartition {
                        partition: 1,
                        timestamp: 1_700_000_000_000,
                    },
                ],
            }],
        }
    }

    pub(crate) fn list_offsets_response() -> ListOffsetsResponse {
        ListOffsetsResponse {
            topics: vec![ListOffsetsTopicResult {
                name: "orders".into(),
                partitions: vec![
                    ListOffsetsPartitionResult {
                        partition: 0,
                        error: ErrorCode::NONE,
                        message: String::new(),
                        offset: 0,
                        timestamp: -1,
                    },
                    ListOffsetsPartitionResult {
                        partition: 1,
                        error: ErrorCode::NONE,
                        message: String::new(),
                        offset: 40,
                        timestamp: 1_700_000_000_001,
                    },
                ],
            }],
        }
    }

    pub(crate) fn init_producer_id_request() -> InitProducerIdRequest {
        InitProducerIdRequest {
            transactional_id: None,
            producer_id: 4096,
            producer_epoch: 2,
        }
    }

    pub(crate) fn init_producer_id_response() -> InitProducerIdResponse {
        InitProducerIdResponse {
            error: ErrorCode::NONE,
            message: String::new(),
            producer_id: 4096,
            producer_epoch: 3,
        }
    }

    pub(crate) fn consumer_assignment() -> ConsumerAssignment {
        ConsumerAssignment {
            partitions: vec![ConsumerTopicPartitions {
                topic: "orders".into(),
                partitions: vec![0, 1],
            }],
            user_data: Bytes::new(),
        }
    }

    pub(crate) fn consumer_subscription() -> ConsumerSubscription {
        ConsumerSubscription {
            topics: vec!["orders".into()],
            owned: vec![ConsumerTopicPartitions {
                topic: "orders".into(),
                partitions: vec![1],
            }],
            user_data: Bytes::from_static(b"ud"),
        }
    }

    pub(crate) fn find_coordinator_request() -> FindCoordinatorRequest {
        FindCoordinatorRequest {
            group: "billing".into(),
        }
    }

    pub(crate) fn find_coordinator_response() -> FindCoordinatorResponse {
        FindCoordinatorResponse {
            error: ErrorCode::NONE,
            message: String::new(),
            node_id: 1,
            shard: 1,
            host: "127.0.0.1".into(),
            port: 9094,
        }
    }

    pub(crate) fn join_group_request() -> JoinGroupRequest {
        JoinGroupRequest {
            group: "billing".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 30_000,
            member_id: String::new(),
            client_id: "consumer-1".into(),
            protocol_type: PROTOCOL_TYPE_CONSUMER.into(),
            protocols: vec![
                JoinGroupProtocol {
                    name: ASSIGNOR_RANGE.into(),
                    metadata: consumer_subscription().to_bytes(),
                },
                JoinGroupProtocol {
                    name: ASSIGNOR_ROUND_ROBIN.into(),
                    metadata: consumer_subscription().to_bytes(),
                },
            ],
        }
    }

    pub(crate) fn join_group_response() -> JoinGroupResponse {
        JoinGroupResponse {
            error: ErrorCode::NONE,
            message: String::new(),
            generation_id: 3,
            protocol_name: ASSIGNOR_RANGE.into(),
            leader_id: "consumer-1-0001".into(),
            member_id: "consumer-1-0001".into(),
            members: vec![JoinGroupMember {
                member_id: "consumer-1-0001".into(),
                metadata: consumer_subscription().to_bytes(),
            }],
        }
    }

    pub(crate) fn sync_group_request() -> SyncGroupRequest {
        SyncGroupRequest {
            group: "billing".into(),
            generation_id: 3,
            member_id: "consumer-1-0001".into(),
            assignments: vec![SyncGroupAssignment {
                member_id: "consumer-1-0001".into(),
                assignment: consumer_assignment().to_bytes(),
            }],
        }
    }

    pub(crate) fn sync_group_response() -> SyncGroupResponse {
        SyncGroupResponse {
            error: ErrorCode::NONE,
            message: String::new(),
            assignment: consumer_assignment().to_bytes(),
        }
    }

    pub(crate) fn heartbeat_request() -> HeartbeatRequest {
        HeartbeatRequest {
            group: "billing".into(),
            generation_id: 3,
            member_id: "consumer-1-0001".into(),
        }
    }

    pub(crate) fn heartbeat_response() -> HeartbeatResponse {
        HeartbeatResponse {
            error: ErrorCode::REBALANCE_IN_PROGRESS,
            message: "group billing is rebalancing".into(),
        }
    }

    pub(crate) fn leave_group_request() -> LeaveGroupRequest {
        LeaveGroupRequest {
            group: "billing".into(),
            member_id: "consumer-1-0001".into(),
        }
    }

    pub(crate) fn leave_group_response() -> LeaveGroupResponse {
        LeaveGroupResponse {
            error: ErrorCode::NONE,
            message: String::new(),
        }
    }

    pub(crate) fn offset_commit_request() -> OffsetCommitRequest {
        OffsetCommitRequest {
            group: "billing".into(),
            generation_id: 3,
            member_id: "consumer-1-0001".into(),
            topics: vec![OffsetCommitTopic {
                topic: "orders".into(),
                partitions: vec![OffsetCommitPartition {
                    partition: 1,
                    offset: 42,
                    metadata: "m".into(),
                }],
            }],
        }
    }

    pub(crate) fn offset_commit_response() -> OffsetCommitResponse {
        OffsetCommitResponse {
            topics: vec![OffsetCommitTopicResult {
                topic: "orders".into(),
                partitions: vec![OffsetCommitPartitionResult {
                    partition: 1,
                    error: ErrorCode::PARTITION_NOT_ASSIGNED,
                    message: "orders-1 is not assigned to consumer-1-0001".into(),
                }],
            }],
        }
    }

    pub(crate) fn offset_fetch_request() -> OffsetFetchRequest {
        OffsetFetchRequest {
            group: "billing".into(),
            topics: vec![OffsetFetchTopic {
                topic: "orders".into(),
                partitions: vec![0, 1],
            }],
        }
    }

    pub(crate) fn offset_fetch_response() -> OffsetFetchResponse {
        OffsetFetchResponse {
            error: ErrorCode::NONE,
            message: String::new(),
            topics: vec![OffsetFetchTopicResult {
                topic: "orders".into(),
                partitions: vec![
                    OffsetFetchPartition {
                        partition: 0,
                        offset: OFFSET_NONE,
                        metadata: String::new(),
                        error: ErrorCode::NONE,
                    },
                    OffsetFetchPartition {
                        partition: 1,
                        offset: 42,
                        metadata: "m".into(),
                        error: ErrorCode::NONE,
                    },
                ],
            }],
        }
    }

    pub(crate) fn list_groups_request() -> ListGroupsRequest {
        ListGroupsRequest {}
    }

    pub(crate) fn list_groups_response() -> ListGroupsResponse {
        ListGroupsResponse {
            groups: vec![ListedGroup {
                group: "billing".into(),
                state: group_state::STABLE.into(),
                protocol_type: PROTOCOL_TYPE_CONSUMER.into(),
                members: 1,
            }],
        }
    }

    pub(crate) fn describe_groups_request() -> DescribeGroupsRequest {
        DescribeGroupsRequest {
            groups: vec!["billing".into(), "nope".into()],
        }
    }

    pub(crate) fn describe_groups_response() -> DescribeGroupsResponse {
        DescribeGroupsResponse {
            groups: vec![
                DescribedGroup {
                    group: "billing".into(),
                    error: ErrorCode::NONE,
                    message: String::new(),
                    state: group_state::STABLE.into(),
                    protocol_type: PROTOCOL_TYPE_CONSUMER.into(),
                    protocol: ASSIGNOR_RANGE.into(),
                    generation_id: 3,
                    members: vec![DescribedMember {
                        member_id: "consumer-1-0001".into(),
                        client_id: "consumer-1".into(),
                        client_host: "127.0.0.1".into(),
                        assignment: consumer_assignment().to_bytes(),
                    }],
                },
                DescribedGroup {
                    group: "nope".into(),
                    error: ErrorCode::GROUP_ID_NOT_FOUND,
                    message: "no group nope".into(),
                    state: group_state::DEAD.into(),
                    protocol_type: String::new(),
                    protocol: String::new(),
                    generation_id: GENERATION_NONE,
                    members: vec![],
                },
            ],
        }
    }

    pub(crate) fn delete_groups_request() -> DeleteGroupsRequest {
        DeleteGroupsRequest {
            groups: vec!["billing".into()],
        }
    }

    pub(crate) fn delete_groups_response() -> DeleteGroupsResponse {
        DeleteGroupsResponse {
            groups: vec![DeleteGroupResult {
                group: "billing".into(),
                error: ErrorCode::NON_EMPTY_GROUP,
                message: "group billing has 1 member".into(),
            }],
        }
    }

    /// The sample request frame of `api` (correlation id 7, client id "golden").
    pub(crate) fn request_frame(api: ApiKey) -> Vec<Bytes> {
        match api {
            ApiKey::ApiVersions => encode_request(api, 0, 7, "golden", &api_versions_request()),
            ApiKey::Metadata => encode_request(api, 0, 7, "golden", &metadata_request()),
            ApiKey::CreateTopics => encode_request(api, 0, 7, "golden", &create_topics_request()),
            ApiKey::DeleteTopics => encode_request(api, 0, 7, "golden", &delete_topics_request()),
            ApiKey::ListTopics => encode_request(api, 0, 7, "golden", &list_topics_request()),
            ApiKey::DescribeTopics => {
                encode_request(api, 0, 7, "golden", &describe_topics_request())
            }
            ApiKey::Produce => encode_request(api, 0, 7, "golden", &produce_request()),
            ApiKey::Fetch => encode_request(api, 0, 7, "golden", &fetch_request()),
            ApiKey::ListOffsets => encode_request(api, 0, 7, "golden", &list_offsets_request()),
            ApiKey::FindCoordinator => {
                encode_request(api, 0, 7, "golden", &find_coordinator_request())
            }
            ApiKey::JoinGroup => encode_request(api, 0, 7, "golden", &join_group_request()),
            ApiKey::SyncGroup => encode_request(api, 0, 7, "golden", &sync_group_request()),
            ApiKey::Heartbeat => encode_request(api, 0, 7, "golden", &heartbeat_request()),
            ApiKey::LeaveGroup => encode_request(api, 0, 7, "golden", &leave_group_request()),
            ApiKey::OffsetCommit => encode_request(api, 0, 7, "golden", &offset_commit_request()),
            ApiKey::OffsetFetch => encode_request(api, 0, 7, "golden", &offset_fetch_request()),
            ApiKey::ListGroups => encode_request(api, 0, 7, "golden", &list_groups_request()),
            ApiKey::DescribeGroups => {
                encode_request(api, 0, 7, "golden", &describe_groups_request())
            }
            ApiKey::DeleteGroups => encode_request(api, 0, 7, "golden", &delete_groups_request()),
            ApiKey::InitProducerId => {
                encode_request(api, 0, 7, "golden", &init_producer_id_request())
            }
            ApiKey::CreatePartitions => {
                encode_request(api, 0, 7, "golden", &create_partitions_request())
            }
            ApiKey::DecommissionBroker => {
                encode_request(api, 0, 7, "golden", &decommission_broker_request())
            }
        }
    }

    /// The sample response frame of `api` (correlation id 7).
    pub(crate) fn response_frame(api: ApiKey) -> Vec<Bytes> {
        match api {
            ApiKey::ApiVersions => encode_response(7, &api_versions_response()),
            ApiKey::Metadata => encode_response(7, &metadata_response()),
            ApiKey::CreateTopics => encode_response(7, &create_topics_response()),
            ApiKey::DeleteTopics => encode_response(7, &delete_topics_response()),
            ApiKey::ListTopics => encode_response(7, &list_topics_response()),
            ApiKey::DescribeTopics => encode_response(7, &describe_topics_response()),
            ApiKey::Produce => encode_response(7, &produce_response()),
            ApiKey::Fetch => encode_response(7, &fetch_response()),
            ApiKey::ListOffsets => encode_response(7, &list_offsets_response()),
            ApiKey::FindCoordinator => encode_response(7, &find_coordinator_response()),
            ApiKey::JoinGroup => encode_response(7, &join_group_response()),
            ApiKey::SyncGroup => encode_response(7, &sync_group_response()),
            ApiKey::Heartbeat => encode_response(7, &heartbeat_response()),
            ApiKey::LeaveGroup => encode_response(7, &leave_group_response()),
            ApiKey::OffsetCommit => encode_response(7, &offset_commit_response()),
            ApiKey::OffsetFetch => encode_response(7, &offset_fetch_response()),
            ApiKey::ListGroups => encode_response(7, &list_groups_response()),
            ApiKey::DescribeGroups => encode_response(7, &describe_groups_response()),
            ApiKey::DeleteGroups => encode_response(7, &delete_groups_response()),
            ApiKey::InitProducerId => encode_response(7, &init_producer_id_response()),
            ApiKey::CreatePartitions => encode_response(7, &create_partitions_response()),
            ApiKey::DecommissionBroker => encode_response(7, &decommission_broker_response()),
        }
    }

    /// Whether the decoded request body of `api` equals its sample (record sets compared as
    /// bytes).
    pub(crate) fn request_matches(api: ApiKey, r: Reader) -> bool {
        match api {
            ApiKey::ApiVersions => decode_body(r) == Ok(api_versions_request()),
            ApiKey::Metadata => decode_body(r) == Ok(metadata_request()),
            ApiKey::CreateTopics => decode_body(r) == Ok(create_topics_request()),
            ApiKey::DeleteTopics => decode_body(r) == Ok(delete_topics_request()),
            ApiKey::ListTopics => decode_body(r) == Ok(list_topics_request()),
            ApiKey::DescribeTopics => decode_body(r) == Ok(describe_topics_request()),
            ApiKey::Produce => decode_body(r) == Ok(received_produce(&produce_request())),
            ApiKey::Fetch => decode_body(r) == Ok(fetch_request()),
            ApiKey::ListOffsets => decode_body(r) == Ok(list_offsets_request()),
            ApiKey::FindCoordinator => decode_body(r) == Ok(find_coordinator_request()),
            ApiKey::JoinGroup => decode_body(r) == Ok(join_group_request()),
            ApiKey::SyncGroup => decode_body(r) == Ok(sync_group_request()),
            ApiKey::Heartbeat => decode_body(r) == Ok(heartbeat_request()),
            ApiKey::LeaveGroup => decode_body(r) == Ok(leave_group_request()),
            ApiKey::OffsetCommit => decode_body(r) == Ok(offset_commit_request()),
            ApiKey::OffsetFetch => decode_body(r) == Ok(offset_fetch_request()),
            ApiKey::ListGroups => decode_body(r) == Ok(list_groups_request()),
            ApiKey::DescribeGroups => decode_body(r) == Ok(describe_groups_request()),
            ApiKey::DeleteGroups => decode_body(r) == Ok(delete_groups_request()),
            ApiKey::InitProducerId => decode_body(r) == Ok(init_producer_id_request()),
            ApiKey::CreatePartitions => decode_body(r) == Ok(create_partitions_request()),
            ApiKey::DecommissionBroker => decode_body(r) == Ok(decommission_broker_request()),
        }
    }

    /// Whether the decoded response body of `api` equals its sample.
    pub(crate) fn response_matches(api: ApiKey, r: Reader) -> bool {
        match api {
            ApiKey::ApiVersions => decode_body(r) == Ok(api_versions_response()),
            ApiKey::Metadata => decode_body(r) == Ok(metadata_response()),
            ApiKey::CreateTopics => decode_body(r) == Ok(create_topics_response()),
            ApiKey::DeleteTopics => decode_body(r) == Ok(delete_topics_response()),
            ApiKey::ListTopics => decode_body(r) == Ok(list_topics_response()),
            ApiKey::DescribeTopics => decode_body(r) == Ok(describe_topics_response()),
            ApiKey::Produce => decode_body(r) == Ok(produce_response()),
            ApiKey::Fetch => decode_body(r) == Ok(received_fetch(&fetch_response())),
            ApiKey::ListOffsets => decode_body(r) == Ok(list_offsets_response()),
            ApiKey::FindCoordinator => decode_body(r) == Ok(find_coordinator_response()),
            ApiKey::JoinGroup => decode_body(r) == Ok(join_group_response()),
            ApiKey::SyncGroup => decode_body(r) == Ok(sync_group_response()),
            ApiKey::Heartbeat => decode_body(r) == Ok(heartbeat_response()),
            ApiKey::LeaveGroup => decode_body(r) == Ok(leave_group_response()),
            ApiKey::OffsetCommit => decode_body(r) == Ok(offset_commit_response()),
            ApiKey::OffsetFetch => decode_body(r) == Ok(offset_fetch_response()),
            ApiKey::ListGroups => decode_body(r) == Ok(list_groups_response()),
            ApiKey::DescribeGroups => decode_body(r) == Ok(describe_groups_response()),
            ApiKey::DeleteGroups => decode_body(r) == Ok(delete_groups_response()),
            ApiKey::InitProducerId => decode_body(r) == Ok(init_producer_id_response()),
            ApiKey::CreatePartitions => decode_body(r) == Ok(create_partitions_response()),
            ApiKey::DecommissionBroker => decode_body(r) == Ok(decommission_broker_response()),
        }
    }
}
