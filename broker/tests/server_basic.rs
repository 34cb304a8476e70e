//! The broker end to end over real sockets: topics, produce (acks=1 and all), fetch, order,
//! list offsets, describe, delete, restart, and forwarding between shards.

mod common;

use std::time::Duration;

use common::Broker;
use common::wire::{Conn, batch, values};
use sluice_proto::protocol::*;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

#[test]
fn topics_produce_fetch_offsets_describe_delete_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut broker = Broker::start(dir.path(), 2);
    let mut c = Conn::connect(broker.addr);

    let versions: ApiVersionsResponse = c.call(ApiKey::ApiVersions, &ApiVersionsRequest {});
    assert_eq!(versions.shard_count, 2);
    assert_eq!(versions.apis.len(), APIS.len());

    let created = c.create_topic("orders", 4, &[("retention.ms", "-1")]);
    assert_eq!(created.error, ErrorCode::NONE, "{}", created.message);
    assert_eq!(
        c.create_topic("orders", 4, &[]).error,
        ErrorCode::TOPIC_ALREADY_EXISTS
    );
    assert_eq!(
        c.create_topic("bad/name", 1, &[]).error,
        ErrorCode::INVALID_TOPIC
    );
    assert_eq!(
        c.create_topic("zero", 0, &[]).error,
        ErrorCode::INVALID_PARTITIONS
    );
    assert_eq!(
        c.create_topic("cfg", 1, &[("nope", "1")]).error,
        ErrorCode::INVALID_CONFIG
    );
    assert_eq!(
        c.create_topic("cfg", 1, &[("retention.ms", "soon")]).error,
        ErrorCode::INVALID_CONFIG
    );

    // Metadata: every shard has its own address; partitions spread over both shards.
    let meta = c.metadata();
    assert_eq!(meta.brokers.len(), 1);
    assert_eq!(meta.brokers[0].port, broker.addr.port());
    assert_eq!(meta.brokers[0].shards.len(), 2);
    let orders = meta
        .topics
        .iter()
        .find(|t| t.name == "orders")
        .expect("orders");
    assert_eq!(orders.partitions.len(), 4);
    let owners: Vec<u16> = orders.partitions.iter().map(|p| p.leader_shard).collect();
    assert!(owners.contains(&0) && owners.contains(&1), "{owners:?}");

    // Produce through the shared address (forwarded as needed), both ack modes.
    let t0 = now_ms();
    for p in 0..4u32 {
        for i in 0..5u32 {
            let acks = if i % 2 == 0 { ACKS_LEADER } else { ACKS_ALL };
            let v = format!("p{p}-r{i}");
            let r = c.produce(
                "orders",
                p,
                acks,
                batch(&[v.as_bytes()], t0 + i64::from(i) * 1000),
            );
            assert_eq!(r.error, ErrorCode::NONE, "{}", r.message);
            assert_eq!(r.base_offset, u64::from(i));
        }
    }
    // Several batches in one record set keep their order.
    let mut set = Vec::new();
    set.extend_from_slice(&batch(&[b"x1", b"x2"], t0 + 9000));
    set.extend_from_slice(&batch(&[b"x3"], t0 + 9000));
    let r = c.produce("orders", 0, ACKS_ALL, bytes::Bytes::from(set));
    assert_eq!(r.error, ErrorCode::NONE, "{}", r.message);
    assert_eq!(r.base_offset, 5);

    for p in 0..4u32 {
        let got = c.read_all("orders", p, 0);
        let mut want: Vec<Vec<u8>> = (0..5).map(|i| format!("p{p}-r{i}").into_bytes()).collect();
        if p == 0 {
            want.extend([b"x1".to_vec(), b"x2".to_vec(), b"x3".to_vec()]);
        }
        let offsets: Vec<u64> = got.iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, (0..want.len() as u64).collect::<Vec<_>>());
        assert_eq!(got.into_iter().map(|(_, v)| v).collect::<Vec<_>>(), want);
    }

    // List offsets.
    assert_eq!(c.list_offset("orders", 1, EARLIEST_TIMESTAMP).offset, 0);
    assert_eq!(c.list_offset("orders", 1, LATEST_TIMESTAMP).offset, 5);
    assert_eq!(c.list_offset("orders", 1, t0 + 2500).offset, 3);
    assert_eq!(c.list_offset("orders", 1, t0 + 100_000).offset, 5);
    assert_eq!(
        c.list_offset("nope", 0, LATEST_TIMESTAMP).error,
        ErrorCode::UNKNOWN_TOPIC_OR_PARTITION
    );

    // Describe: configs with defaults, offsets from both shards.
    let described: DescribeTopicsResponse = c.call(
        ApiKey::DescribeTopics,
        &DescribeTopicsRequest {
            names: Some(vec!["orders".into(), "missing".into()]),
        },
    );
    let d = &described.topics[0];
    assert_eq!(d.error, ErrorCode::NONE);
    assert!(
        d.configs
            .iter()
            .any(|c| c.name == "retention.ms" && c.value == "-1")
    );
    assert!(
        d.configs
            .iter()
            .any(|c| c.name == "max.message.bytes" && c.value == "1048576")
    );
    let ends: Vec<u64> = d.partitions.iter().map(|p| p.end_offset).collect();
    assert_eq!(ends, vec![8, 5, 5, 5]);
    assert_eq!(
        described.topics[1].error,
        ErrorCode::UNKNOWN_TOPIC_OR_PARTITION
    );

    // Each shard's own address serves every partition (forwarding to the owner).
    for shard in &meta.brokers[0].shards {
        let mut sc = Conn::connect_host(&shard.host, shard.port);
        let v: ApiVersionsResponse = sc.call(ApiKey::ApiVersions, &ApiVersionsRequest {});
        assert_eq!(v.shard, shard.shard);
        for p in 0..4u32 {
            let r = sc.produce("orders", p, ACKS_ALL, batch(&[b"via-shard"], t0));
            assert_eq!(r.error, ErrorCode::NONE, "{}", r.message);
            let f = sc.fetch("orders", p, r.base_offset, 0, 0);
            assert_eq!(values(f.records)[0].1, b"via-shard");
        }
    }

    // Delete one topic; create another; restart keeps topics and data.
    assert_eq!(c.create_topic("doomed", 2, &[]).error, ErrorCode::NONE);
    c.produce("doomed", 1, ACKS_ALL, batch(&[b"bye"], t0));
    let deleted: DeleteTopicsResponse = c.call(
        ApiKey::DeleteTopics,
        &DeleteTopicsRequest {
            names: vec!["doomed".into(), "never".into()],
        },
    );
    assert_eq!(deleted.topics[0].error, ErrorCode::NONE);
    assert_eq!(
        deleted.topics[1].error,
        ErrorCode::UNKNOWN_TOPIC_OR_PARTITION
    );
    assert!(!dir.path().join("topics/doomed").exists());
    let listed: ListTopicsResponse = c.call(ApiKey::ListTopics, &ListTopicsRequest {});
    // Besides the internal topic of committed offsets, which the broker creates.
    assert_eq!(listed.topics.len(), 2);
    assert_eq!(listed.topics[0].name, "__consumer_offsets");
    assert_eq!(listed.topics[1].name, "orders");

    assert!(broker.terminate(Duration::from_secs(20)), "clean exit");
    let broker = Broker::start(dir.path(), 2);
    let mut c = Conn::connect(broker.addr);
    let listed: ListTopicsResponse = c.call(ApiKey::ListTopics, &ListTopicsRequest {});
    assert_eq!(
        listed
            .topics
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        ["__consumer_offsets", "orders"]
    );
    let got = c.read_all("orders", 0, 0);
    // 8 records, then one "via-shard" through each shard's address.
    assert_eq!(got.len(), 10);
    assert_eq!(got[7].1, b"x3");
    assert_eq!(got[8].1, b"via-shard");
    assert_eq!(got[9].1, b"via-shard");
    // Recreating a deleted topic starts empty.
    assert_eq!(c.create_topic("doomed", 2, &[]).error, ErrorCode::NONE);
    assert_eq!(c.list_offset("doomed", 1, LATEST_TIMESTAMP).offset, 0);
}
