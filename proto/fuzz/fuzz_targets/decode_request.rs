//! Fuzzes the native-protocol decoders: a frame's length prefix, the request header and, by
//! API key, the request body; the response header and every response body. Must never panic,
//! and whatever decodes must re-encode to exactly the bytes it came from (the encoding is
//! canonical), so a decoder that accepts too much or reads fields in the wrong order shows up.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sluice_proto::protocol::*;

fuzz_target!(|data: &[u8]| {
    // As a whole frame: prefix, then a payload the prefix may or may not describe.
    if let Some((prefix, payload)) = data.split_first_chunk::<FRAME_PREFIX_BYTES>()
        && let Ok(len) = frame_length(*prefix, REQUEST_FRAME_BYTES_MAX)
    {
        let payload = &payload[..len.min(payload.len())];
        request(payload);
        response(payload);
    }
    // As a payload with no prefix.
    request(data);
    response(data);
});

fn request(payload: &[u8]) {
    let mut r = Reader::new(BytesMut::from(payload));
    let Ok(header) = RequestHeader::decode(&mut r) else {
        return;
    };
    let body = &payload[r.position()..];
    match ApiKey::from_u16(header.api_key) {
        Some(ApiKey::ApiVersions) => check::<ApiVersionsRequest>(body),
        Some(ApiKey::Metadata) => check::<MetadataRequest>(body),
        Some(ApiKey::CreateTopics) => check::<CreateTopicsRequest>(body),
        Some(ApiKey::DeleteTopics) => check::<DeleteTopicsRequest>(body),
        Some(ApiKey::ListTopics) => check::<ListTopicsRequest>(body),
        Some(ApiKey::DescribeTopics) => check::<DescribeTopicsRequest>(body),
        Some(ApiKey::Produce) => check::<ProduceRequest>(body),
        Some(ApiKey::Fetch) => check::<FetchRequest>(body),
        Some(ApiKey::ListOffsets) => check::<ListOffsetsRequest>(body),
        Some(ApiKey::FindCoordinator) => check::<FindCoordinatorRequest>(body),
        Some(ApiKey::JoinGroup) => check::<JoinGroupRequest>(body),
        Some(ApiKey::SyncGroup) => check::<SyncGroupRequest>(body),
        Some(ApiKey::Heartbeat) => check::<HeartbeatRequest>(body),
        Some(ApiKey::LeaveGroup) => check::<LeaveGroupRequest>(body),
        Some(ApiKey::OffsetCommit) => check::<OffsetCommitRequest>(body),
        Some(ApiKey::OffsetFetch) => check::<OffsetFetchRequest>(body),
        Some(ApiKey::ListGroups) => check::<ListGroupsRequest>(body),
        Some(ApiKey::DescribeGroups) => check::<DescribeGroupsRequest>(body),
        Some(ApiKey::DeleteGroups) => check::<DeleteGroupsRequest>(body),
        Some(ApiKey::InitProducerId) => check::<InitProducerIdRequest>(body),
        Some(ApiKey::CreatePartitions) => check::<CreatePartitionsRequest>(body),
        Some(ApiKey::DecommissionBroker) => check::<DecommissionBrokerRequest>(body),
        None => {}
    }
}

fn response(payload: &[u8]) {
    let mut r = Reader::new(BytesMut::from(payload));
    let Ok(header) = ResponseHeader::decode(&mut r) else {
        return;
    };
    let body = &payload[r.position()..];
    if !header.error.is_ok() {
        // An error response has no body.
        return;
    }
    // The client knows which API it asked; try them all.
    check::<ApiVersionsResponse>(body);
    check::<MetadataResponse>(body);
    check::<CreateTopicsResponse>(body);
    check::<DeleteTopicsResponse>(body);
    check::<ListTopicsResponse>(body);
    check::<DescribeTopicsResponse>(body);
    check::<ProduceResponse>(body);
    check::<FetchResponse>(body);
    check::<ListOffsetsResponse>(body);
    check::<FindCoordinatorResponse>(body);
    check::<JoinGroupResponse>(body);
    check::<SyncGroupResponse>(body);
    check::<HeartbeatResponse>(body);
    check::<LeaveGroupResponse>(body);
    check::<OffsetCommitResponse>(body);
    check::<OffsetFetchResponse>(body);
    check::<ListGroupsResponse>(body);
    check::<DescribeGroupsResponse>(body);
    check::<DeleteGroupsResponse>(body);
    // Consumer protocol payloads (opaque bytes inside JoinGroup and SyncGroup).
    check::<ConsumerSubscription>(body);
    check::<ConsumerAssignment>(body);
    check::<InitProducerIdResponse>(body);
    check::<CreatePartitionsResponse>(body);
    check::<DecommissionBrokerResponse>(body);
}

/// Decodes `body` as a whole `T`; what decodes re-encodes to `body` exactly.
fn check<T: Wire + std::fmt::Debug>(body: &[u8]) {
    let Ok(value) = decode_body::<T>(Reader::new(BytesMut::from(body))) else {
        return;
    };
    let mut w = Writer::new();
    value.encode(&mut w);
    assert_eq!(w.len(), body.len(), "{value:?}");
    let encoded: Vec<u8> = w.into_chunks().concat();
    assert_eq!(encoded, body, "{value:?} does not re-encode to its input");
}
