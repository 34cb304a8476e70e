//! Large batches in a cluster, with real processes (three `sluice serve --cluster` brokers).
//!
//! Two partitions led by the same node are fetched by each follower in one request. Both
//! get batches of about 3.5 MiB (within `max.message.bytes` = 4 MiB, the largest a
//! replicated topic takes): one response cannot carry a batch of each, so the partition
//! behind has to wait for the next response instead of being refused. Afterwards an acks=all
//! write to each partition is acknowledged with all three replicas still in sync, and the
//! leader never logged a batch as too large to replicate. A batch over the topic's limit is
//! refused with MESSAGE_TOO_LARGE.

mod common;

use std::time::Duration;

use common::cluster::{Cluster, ClusterOptions, wait_until};
use common::wire::{Conn, batch, produce_request};
use sluice_proto::protocol::{
    ACKS_ALL, ACKS_LEADER, ApiKey, ErrorCode, LATEST_TIMESTAMP, ProduceResponse,
};

const TOPIC: &str = "large";
/// Four partitions over three nodes: partitions 0 and 3 share a leader.
const PARTITIONS: u32 = 4;
const MAX_MESSAGE_BYTES: &str = "4194304";
/// One record per batch, this big (the batch is a little larger).
const VALUE_BYTES: usize = 3_500_000;
/// Batches per partition.
const ROUNDS: usize = 4;
const SETTLE: Duration = Duration::from_secs(60);

fn produce(conn: &mut Conn, p: u32, acks: i8, value: &[u8]) -> (ErrorCode, String) {
    let mut request = produce_request(TOPIC, p, acks, batch(&[value], 1_700_000_000_000));
    request.timeout_ms = 30_000;
    let response: ProduceResponse = conn.call(ApiKey::Produce, &request);
    let r = &response.topics[0].partitions[0];
    (r.error, r.message.clone())
}

#[test]
fn batches_that_share_a_fetch_all_replicate() {
    let mut cluster = Cluster::start(ClusterOptions::new(3));
    cluster.wait_for_brokers(SETTLE);
    let config = format!("max.message.bytes={MAX_MESSAGE_BYTES}");
    cluster.create_topic(TOPIC, PARTITIONS, 3, &[&config]);
    let (leader, _) = cluster.wait_for_leader(TOPIC, 0, SETTLE);
    let (leader3, _) = cluster.wait_for_leader(TOPIC, 3, SETTLE);
    assert_eq!(
        leader, leader3,
        "partitions 0 and 3 should share a leader (round-robin placement)"
    );
    let leader_addr = cluster.nodes[leader as usize].client_addr();
    for p in [0, 3] {
        wait_until("the leader to serve both partitions", SETTLE, || {
            let r = Conn::connect(leader_addr).list_offset(TOPIC, p, LATEST_TIMESTAMP);
            (r.error == ErrorCode::NONE).then_some(())
        });
    }
    let mut conn = Conn::connect(leader_addr);
    conn.stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("read timeout");

    for round in 0..ROUNDS {
        for p in [0, 3] {
            let value = vec![b'a' + (round as u8 % 26); VALUE_BYTES];
            let (error, message) = produce(&mut conn, p, ACKS_LEADER, &value);
            assert_eq!(
                error,
                ErrorCode::NONE,
                "round {round} partition {p}: {message}"
            );
        }
    }
    // Committed by all three: both followers fetched every large batch of both partitions.
    for p in [0, 3] {
        let (error, message) = produce(&mut conn, p, ACKS_ALL, b"small");
        assert_eq!(
            error,
            ErrorCode::NONE,
            "acks=all to partition {p}: {message}"
        );
    }
    // (The answering broker may be a follower, which learns the high watermark with its
    // next fetch.)
    wait_until("all replicas in sync at the end", SETTLE, || {
        let parts = cluster.describe(TOPIC).ok()?;
        let done = parts.iter().all(|p| p.isr.len() == 3)
            && [0usize, 3]
                .iter()
                .all(|&p| parts[p].end_offset == ROUNDS as u64 + 1);
        done.then_some(())
    });
    let log = cluster.log(leader as usize);
    assert!(
        !log.contains("batch too large to replicate"),
        "the leader refused a batch that fits an empty fetch response: {}",
        cluster.log_tail(leader as usize, 40)
    );

    // Over the topic's limit: refused.
    let (error, _) = produce(&mut conn, 0, ACKS_ALL, &vec![b'z'; 4 * 1024 * 1024 + 1]);
    assert_eq!(error, ErrorCode::MESSAGE_TOO_LARGE);
}
