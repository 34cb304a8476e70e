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
        }
    }
}
