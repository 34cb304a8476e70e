//! Hostile input to the native-protocol decoders: arbitrary bytes as every request and
//! response type never panic, never reserve memory for elements that are not in the input,
//! and what they accept re-encodes to exactly the same bytes. Specific malformations get the
//! typed error that names the field and the byte position.
//!
//! A counting global allocator records the largest single allocation each thread makes, so
//! each check measures only its own decoding.

mod alloc_tracking;
mod protocol_common;

use std::fmt::Debug;

use alloc_tracking::largest_allocation;
use bytes::{BufMut, BytesMut};
use proptest::prelude::*;
use protocol_common::{all_apis, concat, samples, with_api_types};
use sluice_proto::protocol::*;

/// How much larger than its encoding a decoded value may be in memory: an empty string is
/// 2 bytes on the wire and 24 in a `Vec<String>`, and a `Vec` may hold up to twice its
/// length while it grows. Elements that are really in the input may cost this much; a
/// declared count alone may not (see `hostile_counts_reserve_nothing_beyond_the_input`).
const EXPANSION_MAX: usize = 2 * 24;
/// Small fixed allocations (a short string, a first `Vec` growth step).
const ALLOCATION_SLACK_BYTES: usize = 256;

/// Decodes `bytes` as a whole `T` body. Never panics; allocates in proportion to the input;
/// an accepted body re-encodes to exactly `bytes` (the encoding is canonical).
fn decode_as<T: Wire + Debug>(bytes: &[u8]) -> Result<(), ProtocolError> {
    let buf = BytesMut::from(bytes);
    let (result, largest) = largest_allocation(|| decode_body::<T>(Reader::new(buf)));
    let bound = EXPANSION_MAX * bytes.len() + ALLOCATION_SLACK_BYTES;
    assert!(
        largest <= bound,
        "{}: {} input bytes made an allocation of {largest} bytes",
        std::any::type_name::<T>(),
        bytes.len()
    );
    let value = result?;
    let mut w = Writer::new();
    value.encode(&mut w);
    assert_eq!(
        &concat(&w.into_chunks())[..],
        bytes,
        "{value:?} does not re-encode to its input"
    );
    Ok(())
}

/// Decodes `bytes` as the request and the response body of every API.
fn decode_as_everything(bytes: &[u8]) {
    for api in all_apis() {
        with_api_types!(api, Req, Resp => {
            let _ = decode_as::<Req>(bytes);
            let _ = decode_as::<Resp>(bytes);
        });
    }
}

/// Decodes a whole frame the way the broker (request) or client (response) does.
fn decode_frame(frame: &[u8]) {
    let Some(prefix) = frame.get(..FRAME_PREFIX_BYTES) else {
        return;
    };
    let prefix: [u8; FRAME_PREFIX_BYTES] = prefix.try_into().expect("4 bytes");
    let payload = &frame[FRAME_PREFIX_BYTES..];
    if let Ok(len) = frame_length(prefix, REQUEST_FRAME_BYTES_MAX) {
        let payload = &payload[..len.min(payload.len())];
        let mut r = Reader::new(BytesMut::from(payload));
        if let Ok(header) = RequestHeader::decode(&mut r)
            && let Some(api) = ApiKey::from_u16(header.api_key)
        {
            let body = &payload[r.position()..];
            with_api_types!(api, Req, _Resp => { let _ = decode_as::<Req>(body); });
        }
        let mut r = Reader::new(BytesMut::from(payload));
        if let Ok(header) = ResponseHeader::decode(&mut r) {
            let body = &payload[r.position()..];
            if header.error.is_ok() {
                for api in all_apis() {
                    with_api_types!(api, _Req, Resp => { let _ = decode_as::<Resp>(body); });
                }
            }
        }
    }
}

/// Every sample frame (requests and responses), whole.
fn sample_frames() -> Vec<Vec<u8>> {
    all_apis()
        .into_iter()
        .flat_map(|api| [samples::request_frame(api), samples::response_frame(api)])
        .map(|chunks| concat(&chunks).to_vec())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_as_every_body(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        decode_as_everything(&bytes);
    }

    #[test]
    fn arbitrary_frames(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        decode_frame(&bytes);
    }

    #[test]
    fn mutated_sample_frames(
        which in any::<prop::sample::Index>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let frames = sample_frames();
        let mut frame = which.get(&frames).clone();
        for (at, byte) in &edits {
            let i = at.index(frame.len());
            frame[i] = *byte;
        }
        if truncate {
            frame.truncate(cut.index(frame.len() + 1));
        }
        decode_frame(&frame);
        // The body alone, without its header, as every type.
        decode_as_everything(frame.get(FRAME_PREFIX_BYTES..).unwrap_or_default());
    }
}

#[test]
fn every_truncation_of_every_sample_is_refused() {
    for frame in sample_frames() {
        for cut in 0..frame.len() {
            decode_frame(&frame[..cut]);
        }
    }
    // Every strict prefix of every sample body fails as that type.
    for api in all_apis() {
        let request = concat(&samples::request_frame(api));
        let mut r = Reader::new(BytesMut::from(&request[FRAME_PREFIX_BYTES..]));
        RequestHeader::decode(&mut r).expect("header");
        let body = request[FRAME_PREFIX_BYTES + r.position()..].to_vec();
        for cut in 0..body.len() {
            with_api_types!(api, Req, _Resp => {
                let e = decode_as::<Req>(&body[..cut]).expect_err("a strict prefix is not a body");
                assert!(matches!(e, ProtocolError::Truncated { .. }), "{e}");
            });
        }
        let response = concat(&samples::response_frame(api));
        let mut r = Reader::new(BytesMut::from(&response[FRAME_PREFIX_BYTES..]));
        ResponseHeader::decode(&mut r).expect("header");
        let body = response[FRAME_PREFIX_BYTES + r.position()..].to_vec();
        for cut in 0..body.len() {
            with_api_types!(api, _Req, Resp => {
                let e = decode_as::<Resp>(&body[..cut]).expect_err("a strict prefix is not a body");
                assert!(matches!(e, ProtocolError::Truncated { .. }), "{e}");
            });
        }
    }
}

/// The error decoding `bytes` as `T`, as text.
fn error_text<T: Wire + Debug>(bytes: &[u8]) -> String {
    decode_as::<T>(bytes)
        .expect_err("malformed input is refused")
        .to_string()
}

#[test]
fn huge_count_with_few_bytes_is_refused_before_allocating() {
    // u32::MAX - 1 elements: over ARRAY_LEN_MAX.
    let body = [0xfe, 0xff, 0xff, 0xff, 0, 0];
    let (text, largest) = largest_allocation(|| error_text::<DeleteTopicsRequest>(&body));
    assert_eq!(
        text,
        "DeleteTopicsRequest.names of 4294967294 at byte 0 is over the limit of 1048576"
    );
    assert!(largest < 1024, "allocated {largest} bytes");

    // Within ARRAY_LEN_MAX, but more elements than bytes can hold.
    let mut body = (ARRAY_LEN_MAX as u32).to_le_bytes().to_vec();
    body.extend_from_slice(&[0, 0]);
    let (text, largest) = largest_allocation(|| error_text::<DeleteTopicsRequest>(&body));
    assert_eq!(
        text,
        "truncated at byte 4 reading DeleteTopicsRequest.names: need 2097152 bytes, have 2"
    );
    assert!(largest < 1024, "allocated {largest} bytes");

    // Same for a nested array: each element is at least its fixed-size fields.
    let body = [
        0, 0, 0, 0, // FetchRequest.max_wait_ms
        0, 0, 0, 0, // min_bytes
        0, 0, 0, 0, // max_bytes
        1, 0, 0, 0, // topics: 1
        1, 0, b't', // name "t"
        0xfe, 0xff, 0x0f, 0x00, // partitions: 0x0fffe (within ARRAY_LEN_MAX)
        1, 2, 3,
    ];
    assert_eq!(
        error_text::<FetchRequest>(&body),
        "truncated at byte 23 reading FetchTopic.partitions: need 16777184 bytes, have 3"
    );
}

#[test]
fn hostile_counts_reserve_nothing_beyond_the_input() {
    // A count that the bytes left could hold, followed by elements that fail at once:
    // decoding may reserve at most about as much as the input, not `count` decoded elements.
    let count = 100_000usize;
    let mut body = (count as u32).to_le_bytes().to_vec();
    // Each "string" declares 65535 bytes: over STRING_BYTES_MAX, refused at the first.
    body.extend(std::iter::repeat_n(0xff, 2 * count));
    let buf = BytesMut::from(&body[..]);
    let (result, largest) =
        largest_allocation(|| decode_body::<DeleteTopicsRequest>(Reader::new(buf)));
    assert_eq!(
        result.expect_err("refused").to_string(),
        "DeleteTopicsRequest.names of 65535 at byte 4 is over the limit of 32768"
    );
    assert!(
        largest <= body.len(),
        "{} input bytes reserved {largest} bytes",
        body.len()
    );

    // The same with structs: 100 000 topic results of 6 bytes each, the first one bad.
    let mut body = (count as u32).to_le_bytes().to_vec();
    body.extend(std::iter::repeat_n(0xfe, 6 * count));
    let buf = BytesMut::from(&body[..]);
    let (result, largest) =
        largest_allocation(|| decode_body::<CreateTopicsResponse>(Reader::new(buf)));
    assert!(matches!(result, Err(ProtocolError::TooLarge { .. })));
    assert!(
        largest <= body.len(),
        "{} input bytes reserved {largest} bytes",
        body.len()
    );
}

#[test]
fn string_over_the_limit_is_refused() {
    // api_key 6, version 0, correlation 1, client_id of STRING_BYTES_MAX + 1 bytes.
    let mut payload = vec![6, 0, 0, 0, 1, 0, 0, 0];
    payload.extend_from_slice(&((STRING_BYTES_MAX + 1) as u16).to_le_bytes());
    payload.extend(std::iter::repeat_n(b'a', STRING_BYTES_MAX + 1));
    let mut r = Reader::new(BytesMut::from(&payload[..]));
    let e = RequestHeader::decode(&mut r).expect_err("refused");
    assert_eq!(
        e.to_string(),
        "RequestHeader.client_id of 32769 at byte 8 is over the limit of 32768"
    );
    // Exactly at the limit is fine.
    let mut payload = vec![6, 0, 0, 0, 1, 0, 0, 0];
    payload.extend_from_slice(&(STRING_BYTES_MAX as u16).to_le_bytes());
    payload.extend(std::iter::repeat_n(b'a', STRING_BYTES_MAX));
    let mut r = Reader::new(BytesMut::from(&payload[..]));
    let header = RequestHeader::decode(&mut r).expect("at the limit");
    assert_eq!(header.client_id.len(), STRING_BYTES_MAX);
}

#[test]
fn invalid_utf8_is_refused() {
    let body = [1, 0, 0, 0, 2, 0, 0xff, 0xfe];
    assert_eq!(
        error_text::<DeleteTopicsRequest>(&body),
        "DeleteTopicsRequest.names at byte 4 is not UTF-8"
    );
    // A truncated multi-byte character is invalid too.
    let body = [1, 0, 0, 0, 1, 0, 0xc3];
    assert_eq!(
        error_text::<DeleteTopicsRequest>(&body),
        "DeleteTopicsRequest.names at byte 4 is not UTF-8"
    );
}

#[test]
fn trailing_bytes_are_refused() {
    assert_eq!(
        error_text::<ListTopicsRequest>(&[0]),
        "1 unexpected bytes after the message at byte 0"
    );
    // In a whole frame, positions count from the start of the payload.
    let frame = concat(&encode_request(
        ApiKey::ApiVersions,
        0,
        1,
        "x",
        &ApiVersionsRequest {},
    ));
    let mut payload = BytesMut::from(&frame[FRAME_PREFIX_BYTES..]);
    payload.put_slice(&[1, 2, 3]);
    let mut r = Reader::new(payload);
    RequestHeader::decode(&mut r).expect("header");
    assert_eq!(
        decode_body::<ApiVersionsRequest>(r)
            .expect_err("refused")
            .to_string(),
        "3 unexpected bytes after the message at byte 11"
    );
}

#[test]
fn frame_length_over_the_max_is_refused() {
    let max = REQUEST_FRAME_BYTES_MAX;
    assert_eq!(frame_length((max as u32).to_le_bytes(), max), Ok(max));
    assert_eq!(frame_length([0; 4], max), Ok(0));
    let e = frame_length((max as u32 + 1).to_le_bytes(), max).expect_err("refused");
    assert_eq!(
        e,
        FrameTooLarge {
            size: max as u64 + 1,
            max: max as u64
        }
    );
    assert_eq!(
        e.to_string(),
        "frame of 67108865 bytes is over the limit of 67108864"
    );
    let e = frame_length([0xff; 4], RESPONSE_FRAME_BYTES_MAX).expect_err("refused");
    assert_eq!(
        e.to_string(),
        "frame of 4294967295 bytes is over the limit of 100663296"
    );
}

#[test]
fn bool_other_than_0_or_1_is_refused() {
    let body = [0, 0, 0, 0, 2];
    assert_eq!(
        error_text::<CreateTopicsRequest>(&body),
        "CreateTopicsRequest.validate_only at byte 4 has invalid value 2"
    );
    let body = [0, 0, 0, 0, 0xff];
    assert_eq!(
        error_text::<CreateTopicsRequest>(&body),
        "CreateTopicsRequest.validate_only at byte 4 has invalid value 255"
    );
}

#[test]
fn truncated_fields_name_the_field_and_position() {
    let mut r = Reader::new(BytesMut::from(&[6u8, 0, 0][..]));
    assert_eq!(
        RequestHeader::decode(&mut r)
            .expect_err("refused")
            .to_string(),
        "truncated at byte 2 reading RequestHeader.api_version: need 2 bytes, have 1"
    );
    let mut r = Reader::new(BytesMut::from(&[1u8, 0, 0, 0, 0][..]));
    assert_eq!(
        ResponseHeader::decode(&mut r)
            .expect_err("refused")
            .to_string(),
        "truncated at byte 4 reading ResponseHeader.error: need 2 bytes, have 1"
    );
    // Nested: the innermost struct and field are named.
    let body = [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // max_wait_ms, min_bytes, max_bytes
        1, 0, 0, 0, // topics: 1
        10, 0, b'a', b'b', b'c', b'd', b'e', // name: 10 bytes declared, 5 present
    ];
    assert_eq!(
        error_text::<FetchRequest>(&body),
        "truncated at byte 18 reading FetchTopic.name: need 10 bytes, have 5"
    );
}

#[test]
fn record_set_lengths_are_checked() {
    let head = [
        1, // acks
        0, 0, 0, 0, // timeout_ms
        1, 0, 0, 0, // topics: 1
        1, 0, b'a', // name "a"
        1, 0, 0, 0, // partitions: 1
        0, 0, 0, 0, // partition 0
    ];
    let over = [&head[..], &[0xff, 0xff, 0xff, 0xff]].concat();
    assert_eq!(
        error_text::<ProduceRequest>(&over),
        "ProducePartition.records of 4294967295 at byte 20 is over the limit of 100663296"
    );
    let short = [&head[..], &[100, 0, 0, 0, 1, 2, 3]].concat();
    assert_eq!(
        error_text::<ProduceRequest>(&short),
        "truncated at byte 24 reading ProducePartition.records: need 100 bytes, have 3"
    );
    // An empty record set is valid (the broker decides what it means).
    let empty = [&head[..], &[0, 0, 0, 0]].concat();
    decode_as::<ProduceRequest>(&empty).expect("empty record set");
}

#[test]
fn optional_array_counts() {
    // u32::MAX is "absent"; u32::MAX - 1 is a count, and too large.
    decode_as::<MetadataRequest>(&[0xff; 4]).expect("all topics");
    assert_eq!(
        error_text::<MetadataRequest>(&[0xfe, 0xff, 0xff, 0xff]),
        "MetadataRequest.topics of 4294967294 at byte 0 is over the limit of 1048576"
    );
    // A plain array has no "absent": u32::MAX is just too large.
    assert_eq!(
        error_text::<DeleteTopicsRequest>(&[0xff; 4]),
        "DeleteTopicsRequest.names of 4294967295 at byte 0 is over the limit of 1048576"
    );
    assert_eq!(
        error_text::<DescribeTopicsRequest>(&[0xff, 0xff, 0xff]),
        "truncated at byte 0 reading DescribeTopicsRequest.names: need 4 bytes, have 3"
    );
}

#[test]
fn nullable_strings() {
    // Length u16::MAX is null; u16::MAX - 1 is a length, over the string limit.
    let mut null = vec![0xff, 0xff];
    null.extend_from_slice(&(-1i64).to_le_bytes());
    null.extend_from_slice(&(-1i16).to_le_bytes());
    decode_as::<InitProducerIdRequest>(&null).expect("null transactional id");
    let mut long = vec![0xfe, 0xff];
    long.extend_from_slice(&null[2..]);
    assert_eq!(
        error_text::<InitProducerIdRequest>(&long),
        "InitProducerIdRequest.transactional_id of 65534 at byte 0 is over the limit of 32768"
    );
    assert_eq!(
        error_text::<InitProducerIdRequest>(&[0xff]),
        "truncated at byte 0 reading InitProducerIdRequest.transactional_id: need 2 bytes, have 1"
    );
}

#[test]
fn unknown_api_keys_and_error_codes_are_kept_not_trusted() {
    let past_last = APIS.iter().map(|s| s.key as u16).max().unwrap_or(0) + 1;
    assert_eq!(ApiKey::from_u16(past_last), None);
    let code = ErrorCode(1234);
    assert_eq!(code.name(), "UNKNOWN_CODE");
    assert_eq!(format!("{code:?}"), "UNKNOWN_CODE(1234)");
    assert!(!code.is_retriable());
    // Any i16 decodes as an error code; the value is kept for logs.
    let frame = concat(&encode_error_response(3, code, "from the future"));
    let mut r = Reader::new(BytesMut::from(&frame[FRAME_PREFIX_BYTES..]));
    let header = ResponseHeader::decode(&mut r).expect("header");
    assert_eq!(header.error, code);
}
