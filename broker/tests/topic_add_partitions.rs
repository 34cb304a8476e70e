//! `sluice topic add-partitions` on a broker running alone: the new partitions are usable at
//! once, existing partitions keep their records and their shard, the count survives a
//! restart, and bad requests are refused with Kafka's error codes.

mod common;

use std::time::Duration;

use common::Broker;
use common::cli::run_sluice;
use common::wire::{Conn, batch};
use sluice_proto::protocol::{
    ApiKey, CreatePartitionsRequest, CreatePartitionsResponse, ErrorCode, PartitionsIncrease,
};

fn partitions_of(conn: &mut Conn, topic: &str) -> usize {
    let m = conn.metadata();
    m.topics
        .iter()
        .find(|t| t.name == topic)
        .map_or(0, |t| t.partitions.len())
}

fn grow(conn: &mut Conn, topic: &str, count: u32, validate_only: bool) -> (ErrorCode, String) {
    let response: CreatePartitionsResponse = conn.call(
        ApiKey::CreatePartitions,
        &CreatePartitionsRequest {
            topics: vec![PartitionsIncrease {
                name: topic.into(),
                count,
            }],
            validate_only,
        },
    );
    let r = response.topics.into_iter().next().expect("one result");
    (r.error, r.message)
}

#[test]
fn partitions_are_added_kept_across_a_restart_and_bad_requests_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut broker = Broker::start(dir.path(), 3);
    let mut conn = Conn::connect(broker.addr);
    assert_eq!(conn.create_topic("orders", 2, &[]).error, ErrorCode::NONE);
    let before = conn.produce("orders", 1, -1, batch(&[b"first"], 1));
    assert_eq!(before.error, ErrorCode::NONE);

    // Validate only: nothing changes.
    assert_eq!(grow(&mut conn, "orders", 4, true).0, ErrorCode::NONE);
    assert_eq!(partitions_of(&mut conn, "orders"), 2);

    let run = run_sluice(
        &[
            "topic",
            "add-partitions",
            "orders",
            "4",
            "--brokers",
            &broker.addr_string(),
        ],
        None,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("now has 4 partitions"),
        "{}",
        run.stdout
    );
    assert_eq!(partitions_of(&mut conn, "orders"), 4);
    for p in 2..4 {
        let r = conn.produce("orders", p, -1, batch(&[b"new"], 1));
        assert_eq!(r.error, ErrorCode::NONE, "partition {p}: {r:?}");
    }
    let kept: Vec<Vec<u8>> = conn
        .read_all("orders", 1, 0)
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert_eq!(kept, vec![b"first".to_vec()]);

    // Bad requests: no more partitions than today, an unknown topic, the offsets topic.
    let (code, message) = grow(&mut conn, "orders", 4, false);
    assert_eq!(code, ErrorCode::INVALID_PARTITIONS, "{message}");
    assert!(message.contains("has 4 partitions"), "{message}");
    assert_eq!(
        grow(&mut conn, "orders", 3, false).0,
        ErrorCode::INVALID_PARTITIONS
    );
    assert_eq!(
        grow(&mut conn, "nope", 3, false).0,
        ErrorCode::UNKNOWN_TOPIC_OR_PARTITION
    );
    assert_eq!(
        grow(&mut conn, "orders", 1_000_000, false).0,
        ErrorCode::INVALID_PARTITIONS
    );
    assert_eq!(
        grow(&mut conn, "__consumer_offsets", 64, false).0,
        ErrorCode::INVALID_TOPIC
    );
    let run = run_sluice(
        &[
            "topic",
            "add-partitions",
            "orders",
            "2",
            "--brokers",
            &broker.addr_string(),
        ],
        None,
    );
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("INVALID_PARTITIONS"), "{}", run.stderr);

    // The new count and every record survive a restart.
    drop(conn);
    assert!(broker.terminate(Duration::from_secs(30)));
    let broker = Broker::start(dir.path(), 3);
    let mut conn = Conn::connect(broker.addr);
    assert_eq!(partitions_of(&mut conn, "orders"), 4);
    for (p, expected) in [(1, b"first".as_slice()), (2, b"new"), (3, b"new")] {
        let got: Vec<Vec<u8>> = conn
            .read_all("orders", p, 0)
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        assert_eq!(got, vec![expected.to_vec()], "partition {p}");
    }
}
