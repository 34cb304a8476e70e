//! Every request and response type of the native protocol encodes and decodes to itself,
//! alone and inside whole frames (`encode_request`, `encode_response`,
//! `encode_error_response`) parsed back the way a peer does: `frame_length`, `Reader`, the
//! header, `decode_body`. Record sets are real batches from `BatchBuilder`, and they travel
//! without copies: large chunks are the caller's own allocation in the encoded frame, and a
//! decoded record set is a slice of the received frame.

mod protocol_common;

use std::fmt::Debug;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use protocol_common::{concat, open_frame, received_fetch, received_produce};
use sluice_proto::protocol::*;
use sluice_proto::{BatchBuilder, Compression, Limits, split_batches};

// ---- strategies -------------------------------------------------------------------------

fn string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-zA-Z0-9._-]{0,16}",
        // Any Unicode, multi-byte characters included.
        1 => ".{0,8}",
    ]
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        3 => Just(ErrorCode::NONE),
        1 => any::<i16>().prop_map(ErrorCode),
    ]
}

fn few<T: Debug>(s: impl Strategy<Value = T>) -> impl Strategy<Value = Vec<T>> {
    prop::collection::vec(s, 0..4)
}

fn compression() -> impl Strategy<Value = Compression> {
    prop_oneof![
        Just(Compression::None),
        Just(Compression::Lz4),
        Just(Compression::Zstd)
    ]
}

type PlainRecord = (i64, Option<Vec<u8>>, Option<Vec<u8>>);

fn plain_record() -> impl Strategy<Value = PlainRecord> {
    (
        any::<i64>().prop_map(|t| t >> 20),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..16)),
        // Up to 700 bytes, so record sets have chunks both under and over the size at
        // which the writer stops copying.
        prop::option::of(prop::collection::vec(any::<u8>(), 0..700)),
    )
}

/// A real batch built by `BatchBuilder`.
fn batch() -> impl Strategy<Value = Bytes> {
    (compression(), prop::collection::vec(plain_record(), 1..4)).prop_map(|(c, records)| {
        let mut builder = BatchBuilder::new(c, Limits::DEFAULT);
        for (timestamp, key, value) in &records {
            builder
                .push(*timestamp, key.as_deref(), value.as_deref(), &[])
                .expect("push within limits");
        }
        builder.build().expect("build").freeze()
    })
}

/// Zero to three batches, each its own chunk.
fn record_set() -> impl Strategy<Value = RecordSet> {
    prop::collection::vec(batch(), 0..3).prop_map(RecordSet::Chunks)
}

fn api_versions_response() -> impl Strategy<Value = ApiVersionsResponse> {
    (
        few(
            (any::<u16>(), any::<u16>(), any::<u16>()).prop_map(|(k, a, b)| ApiVersionRange {
                api_key: k,
                min_version: a,
                max_version: b,
            }),
        ),
        any::<u32>(),
        any::<u16>(),
        any::<u16>(),
    )
        .prop_map(|(apis, node_id, shard, shard_count)| ApiVersionsResponse {
            apis,
            node_id,
            shard,
            shard_count,
        })
}

fn metadata_request() -> impl Strategy<Value = MetadataRequest> {
    prop::option::of(few(string())).prop_map(|topics| MetadataRequest { topics })
}

fn metadata_response() -> impl Strategy<Value = MetadataResponse> {
    let shard = (any::<u16>(), string(), any::<u16>())
        .prop_map(|(shard, host, port)| ShardAddress { shard, host, port });
    let broker = (any::<u32>(), string(), any::<u16>(), few(shard)).prop_map(
        |(node_id, host, port, shards)| BrokerMetadata {
            node_id,
            host,
            port,
            shards,
        },
    );
    let partition = (
        any::<u32>(),
        error_code(),
        any::<i32>(),
        any::<u16>(),
        any::<u32>(),
        few(any::<i32>()),
        few(any::<i32>()),
    )
        .prop_map(
            |(partition, error, leader, leader_shard, leader_epoch, replicas, isr)| {
                PartitionMetadata {
                    partition,
                    error,
                    leader,
                    leader_shard,
                    leader_epoch,
                    replicas,
                    isr,
                }
            },
        );
    let topic = (string(), error_code(), string(), few(partition)).prop_map(
        |(name, error, message, partitions)| TopicMetadata {
            name,
            error,
            message,
            partitions,
        },
    );
    (few(broker), few(topic)).prop_map(|(brokers, topics)| MetadataResponse { brokers, topics })
}

fn config_entry() -> impl Strategy<Value = ConfigEntry> {
    (string(), string()).prop_map(|(name, value)| ConfigEntry { name, value })
}

fn create_topics_request() -> impl Strategy<Value = CreateTopicsRequest> {
    let topic = (string(), any::<u32>(), few(config_entry()), any::<i16>()).prop_map(
        |(name, partitions, configs, replication_factor)| NewTopic {
            name,
            partitions,
            configs,
            replication_factor,
        },
    );
    (few(topic), any::<bool>()).prop_map(|(topics, validate_only)| CreateTopicsRequest {
        topics,
        validate_only,
    })
}

fn topic_result() -> impl Strategy<Value = TopicResult> {
    (string(), error_code(), string()).prop_map(|(name, error, message)| TopicResult {
        name,
        error,
        message,
    })
}

fn create_topics_response() -> impl Strategy<Value = CreateTopicsResponse> {
    few(topic_result()).prop_map(|topics| CreateTopicsResponse { topics })
}

fn delete_topics_request() -> impl Strategy<Value = DeleteTopicsRequest> {
    few(string()).prop_map(|names| DeleteTopicsRequest { names })
}

fn delete_topics_response() -> impl Strategy<Value = DeleteTopicsResponse> {
    few(topic_result()).prop_map(|topics| DeleteTopicsResponse { topics })
}

fn list_topics_response() -> impl Strategy<Value = ListTopicsResponse> {
    few((string(), any::<u32>()).prop_map(|(name, partitions)| TopicListing { name, partitions }))
        .prop_map(|topics| ListTopicsResponse { topics })
}

fn describe_topics_request() -> impl Strategy<Value = DescribeTopicsRequest> {
    prop::option::of(few(string())).prop_map(|names| DescribeTopicsRequest { names })
}

fn describe_topics_response() -> impl Strategy<Value = DescribeTopicsResponse> {
    let partition = (
        any::<u32>(),
        error_code(),
        any::<i32>(),
        any::<u16>(),
        few(any::<i32>()),
        few(any::<i32>()),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(partition, error, leader, leader_shard, replicas, isr, start_offset, end_offset)| {
                PartitionDescription {
                    partition,
                    error,
                    leader,
                    leader_shard,
                    replicas,
                    isr,
                    start_offset,
                    end_offset,
                }
            },
        );
    let topic = (
        string(),
        error_code(),
        string(),
        few(config_entry()),
        few(partition),
    )
        .prop_map(
            |(name, error, message, configs, partitions)| TopicDescription {
                name,
                error,
                message,
                configs,
                partitions,
            },
        );
    few(topic).prop_map(|topics| DescribeTopicsResponse { topics })
}

fn produce_request() -> impl Strategy<Value = ProduceRequest> {
    let partition = (any::<u32>(), record_set())
        .prop_map(|(partition, records)| ProducePartition { partition, records });
    let topic =
        (string(), few(partition)).prop_map(|(name, partitions)| ProduceTopic { name, partitions });
    (any::<i8>(), any::<u32>(), few(topic)).prop_map(|(acks, timeout_ms, topics)| ProduceRequest {
        acks,
        timeout_ms,
        topics,
    })
}

fn produce_response() -> impl Strategy<Value = ProduceResponse> {
    let partition = (
        any::<u32>(),
        error_code(),
        string(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(partition, error, message, base_offset, log_start_offset)| ProducePartitionResult {
                partition,
                error,
                message,
                base_offset,
                log_start_offset,
            },
        );
    let topic = (string(), few(partition))
        .prop_map(|(name, partitions)| ProduceTopicResult { name, partitions });
    (any::<u32>(), few(topic)).prop_map(|(throttle_ms, topics)| ProduceResponse {
        throttle_ms,
        topics,
    })
}

fn fetch_request() -> impl Strategy<Value = FetchRequest> {
    let partition = (any::<u32>(), any::<u64>(), any::<u32>()).prop_map(
        |(partition, fetch_offset, partition_max_bytes)| FetchPartition {
            partition,
            fetch_offset,
            partition_max_bytes,
        },
    );
    let topic =
        (string(), few(partition)).prop_map(|(name, partitions)| FetchTopic { name, partitions });
    (any::<u32>(), any::<u32>(), any::<u32>(), few(topic)).prop_map(
        |(max_wait_ms, min_bytes, max_bytes, topics)| FetchRequest {
            max_wait_ms,
            min_bytes,
            max_bytes,
            topics,
        },
    )
}

fn fetch_response() -> impl Strategy<Value = FetchResponse> {
    let partition = (
        any::<u32>(),
        error_code(),
        string(),
        any::<u64>(),
        any::<u64>(),
        record_set(),
    )
        .prop_map(
            |(partition, error, message, high_watermark, log_start_offset, records)| {
                FetchPartitionResult {
                    partition,
                    error,
                    message,
                    high_watermark,
                    log_start_offset,
                    records,
                }
            },
        );
    let topic = (string(), few(partition))
        .prop_map(|(name, partitions)| FetchTopicResult { name, partitions });
    (any::<u32>(), few(topic)).prop_map(|(throttle_ms, topics)| FetchResponse {
        throttle_ms,
        topics,
    })
}

fn list_offsets_request() -> impl Strategy<Value = ListOffsetsRequest> {
    let partition = (
        any::<u32>(),
        prop_oneof![
            Just(LATEST_TIMESTAMP),
            Just(EARLIEST_TIMESTAMP),
            any::<i64>()
        ],
    )
        .prop_map(|(partition, timestamp)| ListOffsetsPartition {
            partition,
            timestamp,
        });
    let topic = (string(), few(partition))
        .prop_map(|(name, partitions)| ListOffsetsTopic { name, partitions });
    few(topic).prop_map(|topics| ListOffsetsRequest { topics })
}

fn list_offsets_response() -> impl Strategy<Value = ListOffsetsResponse> {
    let partition = (
        any::<u32>(),
        error_code(),
        string(),
        any::<u64>(),
        any::<i64>(),
    )
        .prop_map(|(partition, error, message, offset, timestamp)| {
            ListOffsetsPartitionResult {
                partition,
                error,
                message,
                offset,
                timestamp,
            }
        });
    let topic = (string(), few(partition))
        .prop_map(|(name, partitions)| ListOffsetsTopicResult { name, partitions });
    few(topic).prop_map(|topics| ListOffsetsResponse { topics })
}

fn init_producer_id_request() -> impl Strategy<Value = InitProducerIdRequest> {
    (prop::option::of(string()), any::<i64>(), any::<i16>()).prop_map(
        |(transactional_id, producer_id, producer_epoch)| InitProducerIdRequest {
            transactional_id,
            producer_id,
            producer_epoch,
        },
    )
}

fn init_producer_id_response() -> impl Strategy<Value = InitProducerIdResponse> {
    (error_code(), string(), any::<i64>(), any::<i16>()).prop_map(
        |(error, message, producer_id, producer_epoch)| InitProducerIdResponse {
            error,
            message,
            producer_id,
            producer_epoch,
        },
    )
}

fn opaque() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        3 => prop::collection::vec(any::<u8>(), 0..32),
        // Over the size at which the writer stops copying a chunk.
        1 => prop::collection::vec(any::<u8>(), 500..700),
    ]
    .prop_map(Bytes::from)
}

fn topic_partitions() -> impl Strategy<Value = ConsumerTopicPartitions> {
    (string(), few(any::<u32>()))
        .prop_map(|(topic, partitions)| ConsumerTopicPartitions { topic, partitions })
}

fn consumer_subscription() -> impl Strategy<Value = ConsumerSubscription> {
    (few(string()), few(topic_partitions()), opaque()).prop_map(|(topics, owned, user_data)| {
        ConsumerSubscription {
            topics,
            owned,
            user_data,
        }
    })
}

fn consumer_assignment() -> impl Strategy<Value = ConsumerAssignment> {
    (few(topic_partitions()), opaque()).prop_map(|(partitions, user_data)| ConsumerAssignment {
        partitions,
        user_data,
    })
}

fn find_coordinator_response() -> impl Strategy<Value = FindCoordinatorResponse> {
    (
        error_code(),
        string(),
        any::<u32>(),
        any::<u16>(),
        string(),
        any::<u16>(),
    )
        .prop_map(
            |(error, message, node_id, shard, host, port)| FindCoordinatorResponse {
                error,
                message,
                node_id,
                shard,
                host,
                port,
            },
        )
}

fn join_group_request() -> impl Strategy<Value = JoinGroupRequest> {
    let protocol =
        (string(), opaque()).prop_map(|(name, metadata)| JoinGroupProtocol { name, metadata });
    (
        string(),
        any::<u32>(),
        any::<u32>(),
        string(),
        string(),
        string(),
        few(protocol),
    )
        .prop_map(
            |(
                group,
                session_timeout_ms,
                rebalance_timeout_ms,
                member_id,
                client_id,
                protocol_type,
                protocols,
            )| JoinGroupRequest {
                group,
                session_timeout_ms,
                rebalance_timeout_ms,
                member_id,
                client_id,
                protocol_type,
                protocols,
            },
        )
}

fn join_group_response() -> impl Strategy<Value = JoinGroupResponse> {
    let member = (string(), opaque()).prop_map(|(member_id, metadata)| JoinGroupMember {
        member_id,
        metadata,
    });
    (
        error_code(),
        string(),
        any::<i32>(),
        string(),
        string(),
        string(),
        few(member),
    )
        .prop_map(
            |(error, message, generation_id, protocol_name, leader_id, member_id, members)| {
                JoinGroupResponse {
                    error,
                    message,
                    generation_id,
                    protocol_name,
                    leader_id,
                    member_id,
                    members,
                }
            },
        )
}

fn sync_group_request() -> impl Strategy<Value = SyncGroupRequest> {
    let assignment = (string(), opaque()).prop_map(|(member_id, assignment)| SyncGroupAssignment {
        member_id,
        assignment,
    });
    (string(), any::<i32>(), string(), few(assignment)).prop_map(
        |(group, generation_id, member_id, assignments)| SyncGroupRequest {
            group,
            generation_id,
            member_id,
            assignments,
        },
    )
}

fn sync_group_response() -> impl Strategy<Value = SyncGroupResponse> {
    (error_code(), string(), opaque()).prop_map(|(error, message, assignment)| SyncGroupResponse {
        error,
        message,
        assignment,
    })
}

fn offset_commit_request() -> impl Strategy<Value = OffsetCommitRequest> {
    let partition =
        (any::<u32>(), any::<i64>(), string()).prop_map(|(partition, offset, metadata)| {
            OffsetCommitPartition {
                partition,
                offset,
                metadata,
            }
        });
    let topic = (string(), few(partition))
        .prop_map(|(topic, partitions)| OffsetCommitTopic { topic, partitions });
    (string(), any::<i32>(), string(), few(topic)).prop_map(
        |(group, generation_id, member_id, topics)| OffsetCommitRequest {
            group,
            generation_id,
            member_id,
            topics,
        },
    )
}

fn offset_commit_response() -> impl Strategy<Value = OffsetCommitResponse> {
    let partition =
        (any::<u32>(), error_code(), string()).prop_map(|(partition, error, message)| {
            OffsetCommitPartitionResult {
                partition,
                error,
                message,
            }
        });
    let topic = (string(), few(partition))
        .prop_map(|(topic, partitions)| OffsetCommitTopicResult { topic, partitions });
    few(topic).prop_map(|topics| OffsetCommitResponse { topics })
}

fn offset_fetch_request() -> impl Strategy<Value = OffsetFetchRequest> {
    let topic = (string(), few(any::<u32>()))
        .prop_map(|(topic, partitions)| OffsetFetchTopic { topic, partitions });
    (string(), few(topic)).prop_map(|(group, topics)| OffsetFetchRequest { group, topics })
}

fn offset_fetch_response() -> impl Strategy<Value = OffsetFetchResponse> {
    let partition = (any::<u32>(), any::<i64>(), string(), error_code()).prop_map(
        |(partition, offset, metadata, error)| OffsetFetchPartition {
            partition,
            offset,
            metadata,
            error,
        },
    );
    let topic = (string(), few(partition))
        .prop_map(|(topic, partitions)| OffsetFetchTopicResult { topic, partitions });
    (error_code(), string(), few(topic)).prop_map(|(error, message, topics)| OffsetFetchResponse {
        error,
        message,
        topics,
    })
}

fn list_groups_response() -> impl Strategy<Value = ListGroupsResponse> {
    let group = (string(), string(), string(), any::<u32>()).prop_map(
        |(group, state, protocol_type, members)| ListedGroup {
            group,
            state,
            protocol_type,
            members,
        },
    );
    few(group).prop_map(|groups| ListGroupsResponse { groups })
}

fn describe_groups_response() -> impl Strategy<Value = DescribeGroupsResponse> {
    let member = (string(), string(), string(), opaque()).prop_map(
        |(member_id, client_id, client_host, assignment)| DescribedMember {
            member_id,
            client_id,
            client_host,
            assignment,
        },
    );
    let group = (
        (string(), error_code(), string(), string()),
        (string(), string(), any::<i32>(), few(member)),
    )
        .prop_map(
            |(
                (group, error, message, state),
                (protocol_type, protocol, generation_id, members),
            )| {
                DescribedGroup {
                    group,
                    error,
                    message,
                    state,
                    protocol_type,
                    protocol,
                    generation_id,
                    members,
                }
            },
        );
    few(group).prop_map(|groups| DescribeGroupsResponse { groups })
}

fn delete_groups_response() -> impl Strategy<Value = DeleteGroupsResponse> {
    let group =
        (string(), error_code(), string()).prop_map(|(group, error, message)| DeleteGroupResult {
            group,
            error,
            message,
        });
    few(group).prop_map(|groups| DeleteGroupsResponse { groups })
}

// ---- checks -----------------------------------------------------------------------------

/// `value` encodes to `Writer::len()` bytes, decodes to `expected` (the value with record
/// sets in received form), and the decoded value encodes to the same bytes.
fn check_body<T: Wire + Debug + PartialEq>(value: &T, expected: &T) {
    let mut w = Writer::new();
    value.encode(&mut w);
    let len = w.len();
    let bytes = concat(&w.into_chunks());
    assert_eq!(bytes.len(), len, "Writer::len counts every byte");
    assert!(len >= T::MIN_BYTES, "MIN_BYTES is a lower bound");

    let decoded: T = decode_body(Reader::new(bytes.clone())).expect("decodes");
    assert_eq!(&decoded, expected);

    let mut again = Writer::new();
    decoded.encode(&mut again);
    assert_eq!(concat(&again.into_chunks()), bytes, "re-encoding is stable");
}

/// A request frame parses back to its header and body.
fn check_request<T: Wire + Debug + PartialEq>(api: ApiKey, value: &T, expected: &T) {
    check_body(value, expected);
    let frame = concat(&encode_request(api, 0, 0xdead_beef, "client-é", value));
    let mut r = open_frame(frame, REQUEST_FRAME_BYTES_MAX);
    let header = RequestHeader::decode(&mut r).expect("request header");
    assert_eq!(
        header,
        RequestHeader {
            api_key: api as u16,
            api_version: 0,
            correlation_id: 0xdead_beef,
            client_id: "client-é".into(),
        }
    );
    assert_eq!(ApiKey::from_u16(header.api_key), Some(api));
    assert!(api.supports(header.api_version));
    assert_eq!(decode_body::<T>(r).as_ref(), Ok(expected));
}

/// A response frame parses back to its header and body; an error response for the same
/// request has the header only.
fn check_response<T: Wire + Debug + PartialEq>(value: &T, expected: &T, error: ErrorCode) {
    check_body(value, expected);
    let frame = concat(&encode_response(41, value));
    let mut r = open_frame(frame, RESPONSE_FRAME_BYTES_MAX);
    let header = ResponseHeader::decode(&mut r).expect("response header");
    assert_eq!(
        header,
        ResponseHeader {
            correlation_id: 41,
            error: ErrorCode::NONE,
            message: String::new(),
        }
    );
    assert_eq!(decode_body::<T>(r).as_ref(), Ok(expected));

    let frame = concat(&encode_error_response(42, error, "it failed: ünïcode"));
    let mut r = open_frame(frame, RESPONSE_FRAME_BYTES_MAX);
    let header = ResponseHeader::decode(&mut r).expect("error response header");
    assert_eq!(
        header,
        ResponseHeader {
            correlation_id: 42,
            error,
            message: "it failed: ünïcode".into(),
        }
    );
    assert_eq!(r.remaining(), 0, "an error response has no body");
    r.finish().expect("nothing after the header");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn api_versions(resp in api_versions_response(), error in error_code()) {
        check_request(ApiKey::ApiVersions, &ApiVersionsRequest {}, &ApiVersionsRequest {});
        check_response(&resp, &resp, error);
    }

    #[test]
    fn metadata(req in metadata_request(), resp in metadata_response(), error in error_code()) {
        check_request(ApiKey::Metadata, &req, &req);
        check_response(&resp, &resp, error);
    }

    #[test]
    fn create_topics(
        req in create_topics_request(),
        resp in create_topics_response(),
        error in error_code(),
    ) {
        check_request(ApiKey::CreateTopics, &req, &req);
        check_response(&resp, &resp, error);
    }

    #[test]
    fn delete_topics(
        req in delete_topics_request(),
        resp in delete_topics_response(),
        error in error_code(),
    ) {
        check_request(ApiKey::DeleteTopics, &req, &req);
        check_response(&resp, &resp, error);
    }

    #[test]
    fn list_topics(resp in list_topics_response(), error in error_code()) {
        check_request(ApiKey::ListTopics, &ListTopicsRequest {}, &ListTopicsRequest {});
        check_response(&resp, &resp, error);
    }

    #[test]
    fn describe_topics(
        req in describe_topics_request(),
        resp in describe_topics_response(),
        error in error_code(),
    ) {
        check_request(ApiKey::DescribeTopics, &req, &req);
        check_response(&resp, &resp, error);
    }

    #[test]
    fn produce(req in produce_request(), resp in produce_response(), error in error_code()) {
        check_request(ApiKey::Produce, &req, &received_produce(&req));
        check_response(&resp, &resp, error);
        // The received record sets are the batches that were sent, intact.
        let frame = concat(&encode_request(ApiKey::Produce, 0, 1, "", &req));
        let mut r = open_frame(frame, REQUEST_FRAME_BYTES_MAX);
        RequestHeader::decode(&mut r).expect("header");
        let decoded: ProduceRequest = decode_body(r).expect("body");
        let sent = req.topics.iter().flat_map(|t| &t.partitions);
        let got = decoded.topics.iter().flat_map(|t| &t.partitions);
        for (sent, got) in sent.zip(got) {
            assert_batches_survive(&sent.records, &got.records);
        }
    }

    #[test]
    fn fetch(req in fetch_request(), resp in fetch_response(), error in error_code()) {
        check_request(ApiKey::Fetch, &req, &req);
        check_response(&resp, &received_fetch(&resp), error);
        let frame = concat(&encode_response(1, &resp));
        let mut r = open_frame(frame, RESPONSE_FRAME_BYTES_MAX);
        ResponseHeader::decode(&mut r).expect("header");
        let decoded: FetchResponse = decode_body(r).expect("body");
        let sent = resp.topics.iter().flat_map(|t| &t.partitions);
        let got = decoded.topics.iter().flat_map(|t| &t.partitions);
        for (sent, got) in sent.zip(got) {
            assert_batches_survive(&sent.records, &got.records);
        }
    }

    #[test]
    fn list_offsets(
        req in list_offsets_request(),
        resp in list_offsets_response(),
        error in error_code(),
    ) {
        check_request(ApiKey::ListOffsets, &req, &req);
        check_response(&resp, &resp, error);
    }

    #[test]
    fn init_producer_id(
        req in init_producer_id_request(),
        resp in init_producer_id_response(),
        error in error_code(),
    ) {
        check_request(ApiKey::InitProducerId, &req, &req);
        check_response(&resp, &resp, error);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn consumer_protocol_payloads(sub in consumer_subscription(), asg in consumer_assignment()) {
        check_body(&sub, &sub);
        check_body(&asg, &asg);
        prop_assert_eq!(ConsumerSubscription::from_bytes(&sub.to_bytes()), Ok(sub.clone()));
        prop_assert_eq!(ConsumerAssignment::from_bytes(&asg.to_bytes()), Ok(asg.clone()));
    }

    #[test]
    fn find_coordinator(group in string(), resp in find_coordinator_response(), error in error_code()) {
        let req = FindCoordinatorRequest { group };
        check_request(ApiKey::FindCoordinator, &req, &req);
        check_response(&resp, &resp, error);
    }

    #[test]
    fn join_group(req in join_group_request(), resp in join_group_response(), error in error_code()) {
        check_request(ApiKey::JoinGroup, &req, &req);
        check_response(&resp, &resp, error);
    }

    #[test]
    fn sync_group(req in sync_group_request(), resp in sync_group_response(), error in error_code()) {
        check_request(ApiKey::SyncGroup, &req, &req);
        check_response(&resp, &resp, error);
    }

    #[test]
    fn heartbeat_and_leave(
        group in string(),
        generation_id in any::<i32>(),
        member_id in string(),
        resp_error in error_code(),
        message in string(),
        error in error_code(),
    ) {
        let req = HeartbeatRequest { group: group.clone(), generation_id, member_id: member_id.clone() };
        check_request(ApiKey::Heartbeat, &req, &req);
        let resp = HeartbeatResponse { error: resp_error, message: message.clone() };
        check_response(&resp, &resp, error);
        let req = LeaveGroupRequest { group, member_id };
        check_request(ApiKey::LeaveGroup, &req, &req);
        let resp = LeaveGroupResponse { error: resp_error, message };
        check_response(&resp, &resp, error);
    }

    #[test]
    fn offset_commit(
        req in offset_commit_request(),
        resp in offset_commit_response(),
        error in error_code(),
    ) {
        check_request(ApiKey::OffsetCommit, &req, &req);
        check_response(&resp, &resp, error);
    }

    #[test]
    fn offset_fetch(
        req in offset_fetch_request(),
        resp in offset_fetch_response(),
        error in error_code(),
    ) {
        check_request(ApiKey::OffsetFetch, &req, &req);
        check_response(&resp, &resp, error);
    }

    #[test]
    fn list_describe_delete_groups(
        groups in few(string()),
        list in list_groups_response(),
        describe in describe_groups_response(),
        delete in delete_groups_response(),
        error in error_code(),
    ) {
        check_request(ApiKey::ListGroups, &ListGroupsRequest {}, &ListGroupsRequest {});
        check_response(&list, &list, error);
        let req = DescribeGroupsRequest { groups: groups.clone() };
        check_request(ApiKey::DescribeGroups, &req, &req);
        check_response(&describe, &describe, error);
        let req = DeleteGroupsRequest { groups };
        check_request(ApiKey::DeleteGroups, &req, &req);
        check_response(&delete, &delete, error);
    }

    #[test]
    fn create_partitions(
        topics in few((string(), any::<u32>())),
        validate_only in any::<bool>(),
        results in few(topic_result()),
        error in error_code(),
    ) {
        let req = CreatePartitionsRequest {
            topics: topics
                .into_iter()
                .map(|(name, count)| PartitionsIncrease { name, count })
                .collect(),
            validate_only,
        };
        check_request(ApiKey::CreatePartitions, &req, &req);
        let resp = CreatePartitionsResponse { topics: results };
        check_response(&resp, &resp, error);
    }

    #[test]
    fn decommission_broker(
        broker in any::<i32>(),
        code in error_code(),
        message in string(),
        remaining_replicas in any::<u32>(),
        error in error_code(),
    ) {
        let req = DecommissionBrokerRequest { broker };
        check_request(ApiKey::DecommissionBroker, &req, &req);
        let resp = DecommissionBrokerResponse { error: code, message, remaining_replicas };
        check_response(&resp, &resp, error);
    }
}

#[test]
fn opaque_bytes_over_the_limit_are_refused_before_allocating() {
    let mut body = Vec::new();
    body.extend_from_slice(&((OPAQUE_BYTES_MAX + 1) as u32).to_le_bytes());
    let err = decode_body::<SyncGroupResponse>(Reader::new(BytesMut::from(
        &[&[0u8, 0, 0, 0][..], &body[..]].concat()[..],
    )))
    .expect_err("over the limit");
    assert!(
        matches!(
            err,
            ProtocolError::TooLarge {
                field: "SyncGroupResponse.assignment",
                ..
            }
        ),
        "{err:?}"
    );
}

/// The received record set splits into the sent batches, each valid.
fn assert_batches_survive(sent: &RecordSet, got: &RecordSet) {
    let RecordSet::Chunks(sent) = sent else {
        panic!("strategies send chunks")
    };
    let got = got.clone().into_bytes();
    let batches: Vec<_> = split_batches(got, &Limits::DEFAULT)
        .map(|b| b.expect("a whole valid batch"))
        .collect();
    assert_eq!(batches.len(), sent.len());
    for (batch, sent) in batches.iter().zip(sent) {
        assert_eq!(batch.as_bytes(), sent);
        assert_eq!(batch.validate(), Ok(()));
    }
}

// ---- zero copy --------------------------------------------------------------------------

/// Whether `chunk` is `original`'s own memory (same allocation, same range).
fn same_memory(chunk: &Bytes, original: &Bytes) -> bool {
    chunk.as_ptr() == original.as_ptr() && chunk.len() == original.len()
}

fn fetch_response_with(records: RecordSet) -> FetchResponse {
    FetchResponse {
        throttle_ms: 0,
        topics: vec![FetchTopicResult {
            name: "t".into(),
            partitions: vec![FetchPartitionResult {
                partition: 0,
                error: ErrorCode::NONE,
                message: String::new(),
                high_watermark: 10,
                log_start_offset: 0,
                records,
            }],
        }],
    }
}

#[test]
fn fetch_response_record_chunks_are_not_copied() {
    let first = protocol_common::batch(Compression::None, 4, 300);
    let second = protocol_common::batch(Compression::Lz4, 2, 700);
    assert!(
        first.len() >= 512 && second.len() >= 512,
        "over the copy threshold"
    );
    let response = fetch_response_with(RecordSet::Chunks(vec![first.clone(), second.clone()]));

    let chunks = encode_response(9, &response);
    assert!(
        chunks.iter().any(|c| same_memory(c, &first)),
        "first batch copied"
    );
    assert!(
        chunks.iter().any(|c| same_memory(c, &second)),
        "second batch copied"
    );
    // The frame around them is intact.
    let mut r = open_frame(concat(&chunks), RESPONSE_FRAME_BYTES_MAX);
    ResponseHeader::decode(&mut r).expect("header");
    let decoded: FetchResponse = decode_body(r).expect("body");
    assert_eq!(decoded, received_fetch(&response));
}

#[test]
fn produce_request_record_chunks_are_not_copied() {
    let batch = protocol_common::batch(Compression::Zstd, 3, 2000);
    assert!(batch.len() >= 512, "over the copy threshold");
    let request = ProduceRequest {
        acks: ACKS_LEADER,
        timeout_ms: 1000,
        topics: vec![ProduceTopic {
            name: "t".into(),
            partitions: vec![ProducePartition {
                partition: 3,
                records: RecordSet::Chunks(vec![batch.clone()]),
            }],
        }],
    };
    let chunks = encode_request(ApiKey::Produce, 0, 1, "c", &request);
    assert!(chunks.iter().any(|c| same_memory(c, &batch)));
}

#[test]
fn small_record_chunks_are_copied_into_one_contiguous_frame() {
    // Under 512 bytes a chunk costs more as its own iovec than as a copy.
    let small = protocol_common::batch(Compression::None, 1, 4);
    assert!(small.len() < 512);
    let chunks = encode_response(
        9,
        &fetch_response_with(RecordSet::Chunks(vec![small.clone()])),
    );
    assert_eq!(chunks.len(), 1, "a small frame is one buffer");
    assert!(!same_memory(&chunks[0], &small));
}

#[test]
fn decoded_record_sets_are_slices_of_the_received_frame() {
    let first = protocol_common::batch(Compression::None, 3, 100);
    let second = protocol_common::batch(Compression::Zstd, 3, 900);
    let response = fetch_response_with(RecordSet::Chunks(vec![first.clone(), second.clone()]));
    let frame = concat(&encode_response(9, &response));
    let frame_start = frame.as_ptr() as usize;
    let frame_end = frame_start + frame.len();

    let mut r = open_frame(frame, RESPONSE_FRAME_BYTES_MAX);
    ResponseHeader::decode(&mut r).expect("header");
    let mut decoded: FetchResponse = decode_body(r).expect("body");
    // Moved out, not cloned: cloning a `BytesMut` copies it.
    let records = std::mem::take(&mut decoded.topics[0].partitions[0].records);
    let RecordSet::Received(bytes) = &records else {
        panic!("decoded record sets are received bytes")
    };
    let at = bytes.as_ptr() as usize;
    assert!(
        at >= frame_start && at + bytes.len() <= frame_end,
        "record set was copied out of the frame"
    );
    assert_eq!(bytes.len(), first.len() + second.len());

    // Freezing and splitting into batches copies nothing either.
    let frozen = records.into_bytes();
    assert_eq!(frozen.as_ptr() as usize, at);
    let batches: Vec<_> = split_batches(frozen, &Limits::DEFAULT)
        .map(|b| b.expect("valid batch"))
        .collect();
    assert_eq!(batches.len(), 2);
    assert_eq!(batches[0].as_bytes().as_ptr() as usize, at);
    assert_eq!(batches[1].as_bytes().as_ptr() as usize, at + first.len());
    assert_eq!(batches[0].as_bytes(), &first);
    assert_eq!(batches[1].as_bytes(), &second);
}

// ---- frames and fields ------------------------------------------------------------------

#[test]
fn pipelined_frames_parse_one_after_another() {
    // Several frames back to back in one buffer, as a pipelining client sends them.
    let mut stream = BytesMut::new();
    for correlation_id in 0..5u32 {
        let request = DeleteTopicsRequest {
            names: vec![format!("topic-{correlation_id}")],
        };
        stream.extend_from_slice(&concat(&encode_request(
            ApiKey::DeleteTopics,
            0,
            correlation_id,
            "pipe",
            &request,
        )));
    }
    for correlation_id in 0..5u32 {
        let prefix: [u8; FRAME_PREFIX_BYTES] =
            stream[..FRAME_PREFIX_BYTES].try_into().expect("prefix");
        let len = frame_length(prefix, REQUEST_FRAME_BYTES_MAX).expect("length");
        let mut frame = stream.split_to(FRAME_PREFIX_BYTES + len);
        let mut r = Reader::new(frame.split_off(FRAME_PREFIX_BYTES));
        let header = RequestHeader::decode(&mut r).expect("header");
        assert_eq!(header.correlation_id, correlation_id);
        let body: DeleteTopicsRequest = decode_body(r).expect("body");
        assert_eq!(body.names, vec![format!("topic-{correlation_id}")]);
    }
    assert!(stream.is_empty());
}

#[test]
fn optional_arrays_distinguish_absent_from_empty() {
    for topics in [None, Some(vec![]), Some(vec!["a".to_string()])] {
        let request = MetadataRequest {
            topics: topics.clone(),
        };
        let mut w = Writer::new();
        request.encode(&mut w);
        let bytes = concat(&w.into_chunks());
        match &topics {
            None => assert_eq!(&bytes[..], &[0xff, 0xff, 0xff, 0xff]),
            Some(v) => assert_eq!(&bytes[..4], &(v.len() as u32).to_le_bytes()),
        }
        let decoded: MetadataRequest = decode_body(Reader::new(bytes)).expect("decodes");
        assert_eq!(decoded.topics, topics);
    }
}

#[test]
fn integers_are_little_endian_and_fixed_width() {
    let mut w = Writer::new();
    w.u16(0x0102);
    w.i16(-2);
    w.u32(0x0102_0304);
    w.i32(-2);
    w.u64(0x0102_0304_0506_0708);
    w.i64(-2);
    w.u8(0xab);
    w.i8(-1);
    w.bool(true);
    w.string("hé");
    let bytes = concat(&w.into_chunks());
    let expected: Vec<u8> = [
        &[0x02, 0x01][..],
        &[0xfe, 0xff],
        &[0x04, 0x03, 0x02, 0x01],
        &[0xfe, 0xff, 0xff, 0xff],
        &[0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01],
        &[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        &[0xab, 0xff, 0x01],
        &[0x03, 0x00, b'h', 0xc3, 0xa9],
    ]
    .concat();
    assert_eq!(&bytes[..], &expected[..]);

    let mut r = Reader::new(bytes);
    assert_eq!(r.u16("a"), Ok(0x0102));
    assert_eq!(r.i16("b"), Ok(-2));
    assert_eq!(r.u32("c"), Ok(0x0102_0304));
    assert_eq!(r.i32("d"), Ok(-2));
    assert_eq!(r.u64("e"), Ok(0x0102_0304_0506_0708));
    assert_eq!(r.i64("f"), Ok(-2));
    assert_eq!(r.u8("g"), Ok(0xab));
    assert_eq!(r.i8("h"), Ok(-1));
    assert_eq!(r.bool("i"), Ok(true));
    assert_eq!(r.string("j").as_deref(), Ok("hé"));
    assert_eq!(r.position(), expected.len());
    r.finish().expect("all read");
}

#[test]
fn over_long_strings_are_cut_at_the_limit_on_a_character_boundary() {
    // The writer never produces a frame the reader refuses: it cuts at STRING_BYTES_MAX,
    // backing off to the previous character boundary.
    let long = "é".repeat(STRING_BYTES_MAX); // 2 bytes each: twice the limit
    let mut w = Writer::new();
    w.string(&long);
    let bytes = concat(&w.into_chunks());
    let mut r = Reader::new(bytes);
    let got = r.string("s").expect("reads back");
    assert_eq!(got.len(), STRING_BYTES_MAX);
    assert!(long.starts_with(&got));

    let odd = format!("a{}", "é".repeat(STRING_BYTES_MAX));
    let mut w = Writer::new();
    w.string(&odd);
    let got = Reader::new(concat(&w.into_chunks()))
        .string("s")
        .expect("reads back");
    assert_eq!(got.len(), STRING_BYTES_MAX - 1, "backs off to a boundary");
    assert!(odd.starts_with(&got));
}

#[test]
fn api_table_and_api_versions_agree() {
    let ranges = api_version_ranges();
    assert_eq!(ranges.len(), APIS.len());
    for (range, spec) in ranges.iter().zip(APIS) {
        assert_eq!(ApiKey::from_u16(range.api_key), Some(spec.key));
        assert_eq!(spec.key.spec().name, spec.name);
        assert!(spec.key.supports(range.min_version));
        assert!(spec.key.supports(range.max_version));
        assert!(!spec.key.supports(range.max_version + 1));
    }
    let past_last = APIS.iter().map(|s| s.key as u16).max().unwrap_or(0) + 1;
    assert_eq!(ApiKey::from_u16(past_last), None);
    assert_eq!(ApiKey::from_u16(u16::MAX), None);
}
