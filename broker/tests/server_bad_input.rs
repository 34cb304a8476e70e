//! Bad input never takes the broker down: each case is followed by a check that another
//! client is still served.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use common::Broker;
use common::wire::{Conn, batch, produce_request};
use sluice_proto::protocol::*;

fn still_served(addr: SocketAddr) {
    let mut c = Conn::connect(addr);
    let r = c.produce("t", 0, ACKS_ALL, batch(&[b"alive"], 1));
    assert_eq!(r.error, ErrorCode::NONE, "{}", r.message);
    let v: ApiVersionsResponse = c.call(ApiKey::ApiVersions, &ApiVersionsRequest {});
    assert!(!v.apis.is_empty());
}

#[test]
fn bad_input_gets_typed_errors_and_the_broker_keeps_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path(), 2);
    let mut admin = Conn::connect(broker.addr);
    let created = admin.create_topic("t", 2, &[("max.message.bytes", "20000")]);
    assert_eq!(created.error, ErrorCode::NONE, "{}", created.message);
    still_served(broker.addr);

    // Garbage bytes: a small frame whose header does not decode.
    let mut c = Conn::connect(broker.addr);
    c.send_raw(&[3, 0, 0, 0, 0xde, 0xad, 0xbe]);
    let frame = c.read_frame().expect("an error response");
    let mut r = Reader::new(frame);
    let h = ResponseHeader::decode(&mut r).expect("header");
    assert_eq!(h.error, ErrorCode::INVALID_REQUEST);
    assert!(c.is_closed());
    still_served(broker.addr);

    // A valid header with a malformed body.
    let mut c = Conn::connect(broker.addr);
    let mut w = vec![];
    let payload: Vec<u8> = [
        &(ApiKey::Produce as u16).to_le_bytes()[..],
        &0u16.to_le_bytes(),
        &77u32.to_le_bytes(),
        &0u16.to_le_bytes(),
        &[1, 2, 3],
    ]
    .concat();
    w.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    w.extend_from_slice(&payload);
    c.send_raw(&w);
    let a = c.read::<ProduceResponse>();
    assert_eq!(a.header.correlation_id, 77);
    assert_eq!(a.header.error, ErrorCode::INVALID_REQUEST);
    assert!(!a.header.message.is_empty());
    assert!(c.is_closed());
    still_served(broker.addr);

    // A frame prefix claiming ~4 GiB: FRAME_TOO_LARGE, then closed.
    let mut c = Conn::connect(broker.addr);
    c.send_raw(&0xffff_fff0u32.to_le_bytes());
    let a = c.read::<ProduceResponse>();
    assert_eq!(a.header.error, ErrorCode::FRAME_TOO_LARGE);
    assert!(c.is_closed());
    still_served(broker.addr);

    // A batch over max.message.bytes.
    let mut c = Conn::connect(broker.addr);
    let big = vec![7u8; 30_000];
    let r = c.produce("t", 1, ACKS_ALL, batch(&[&big], 1));
    assert_eq!(r.error, ErrorCode::MESSAGE_TOO_LARGE);
    assert!(r.message.contains("20000"), "{}", r.message);
    // A corrupt batch (CRC broken).
    let mut bad = batch(&[b"x"], 1).to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    let r = c.produce("t", 1, ACKS_ALL, bad.into());
    assert_eq!(r.error, ErrorCode::CORRUPT_MESSAGE, "{}", r.message);
    // Unknown topic and partition.
    let r = c.produce("nope", 0, ACKS_ALL, batch(&[b"x"], 1));
    assert_eq!(r.error, ErrorCode::UNKNOWN_TOPIC_OR_PARTITION);
    let r = c.produce("t", 9, ACKS_ALL, batch(&[b"x"], 1));
    assert_eq!(r.error, ErrorCode::UNKNOWN_TOPIC_OR_PARTITION);
    let f = c.fetch("nope", 0, 0, 0, 0);
    assert_eq!(f.error, ErrorCode::UNKNOWN_TOPIC_OR_PARTITION);
    // Bad acks.
    let id = c.send(
        ApiKey::Produce,
        &produce_request("t", 0, 5, batch(&[b"x"], 1)),
    );
    let a = c.read::<ProduceResponse>();
    assert_eq!(a.header.correlation_id, id);
    assert_eq!(a.header.error, ErrorCode::INVALID_REQUIRED_ACKS);
    // Fetch offset out of range.
    let f = c.fetch("t", 1, 1_000_000, 0, 0);
    assert_eq!(f.error, ErrorCode::OFFSET_OUT_OF_RANGE);
    // Unknown API key and unsupported version keep the connection.
    let mut raw = Vec::new();
    let payload: Vec<u8> = [
        &999u16.to_le_bytes()[..],
        &0u16.to_le_bytes(),
        &5u32.to_le_bytes(),
        &0u16.to_le_bytes(),
    ]
    .concat();
    raw.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    raw.extend_from_slice(&payload);
    c.send_raw(&raw);
    let a = c.read::<ApiVersionsResponse>();
    assert_eq!(a.header.correlation_id, 5);
    assert_eq!(a.header.error, ErrorCode::UNSUPPORTED_API);
    let id = c.send_versioned(ApiKey::ApiVersions, 9, &ApiVersionsRequest {});
    let a = c.read::<ApiVersionsResponse>();
    assert_eq!(a.header.correlation_id, id);
    assert_eq!(a.header.error, ErrorCode::UNSUPPORTED_VERSION);
    let v: ApiVersionsResponse = c.call(ApiKey::ApiVersions, &ApiVersionsRequest {});
    assert_eq!(v.shard_count, 2);
    still_served(broker.addr);

    // Half a frame, then the client vanishes.
    {
        let mut s = std::net::TcpStream::connect(broker.addr).expect("connect");
        let chunks = encode_request(
            ApiKey::Produce,
            0,
            1,
            "half",
            &produce_request("t", 0, ACKS_ALL, batch(&[b"half"], 1)),
        );
        let whole: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        s.write_all(&whole[..whole.len() / 2]).expect("write half");
    }
    std::thread::sleep(Duration::from_millis(100));
    still_served(broker.addr);

    // Pipelined requests come back in order.
    let mut c = Conn::connect(broker.addr);
    let ids: Vec<u32> = (0..20)
        .map(|i| {
            c.send(
                ApiKey::Produce,
                &produce_request("t", i % 2, ACKS_ALL, batch(&[b"p"], 1)),
            )
        })
        .collect();
    for id in ids {
        let a = c.read::<ProduceResponse>();
        assert_eq!(a.header.correlation_id, id);
        assert_eq!(
            a.body.expect("body").topics[0].partitions[0].error,
            ErrorCode::NONE
        );
    }
}
