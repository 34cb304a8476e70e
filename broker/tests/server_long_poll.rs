//! Long polling: a fetch with `min_bytes` waits and returns when a produce arrives, also when
//! the partition lives on another shard than the connection.

mod common;

use std::time::Duration;

use common::Broker;
use common::wire::{Conn, batch, values};
use sluice_proto::protocol::*;

#[test]
fn fetch_with_min_bytes_returns_when_data_arrives() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path(), 2);
    let mut admin = Conn::connect(broker.addr);
    assert_eq!(admin.create_topic("lp", 2, &[]).error, ErrorCode::NONE);
    let meta = admin.metadata();
    let shards = meta.brokers[0].shards.clone();
    for partition in 0..2u32 {
        // Connect to the shard that does NOT own the partition: the wait is forwarded.
        let owner = meta.topics[0].partitions[partition as usize].leader_shard;
        let other = shards
            .iter()
            .find(|s| s.shard != owner)
            .expect("two shards");
        let mut consumer = Conn::connect_host(&other.host, other.port);
        let addr = broker.addr;
        let value = format!("hello-{partition}");
        let producer = std::thread::spawn({
            let value = value.clone();
            move || {
                std::thread::sleep(Duration::from_millis(300));
                let mut p = Conn::connect(addr);
                let r = p.produce("lp", partition, ACKS_ALL, batch(&[value.as_bytes()], 1));
                assert_eq!(r.error, ErrorCode::NONE);
            }
        });
        let r = consumer.fetch("lp", partition, 0, 30_000, 1);
        assert_eq!(r.error, ErrorCode::NONE, "{}", r.message);
        let got = values(r.records);
        assert_eq!(got, vec![(0, value.into_bytes())]);
        producer.join().expect("producer");
    }
    // With nothing arriving, the wait ends at max_wait_ms with an empty answer.
    let mut c = Conn::connect(broker.addr);
    let r = c.fetch("lp", 0, 1, 200, 1);
    assert_eq!(r.error, ErrorCode::NONE);
    assert!(r.records.is_empty());
}

#[test]
fn sigterm_ends_waiting_long_polls_promptly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut broker = Broker::start(dir.path(), 2);
    let mut admin = Conn::connect(broker.addr);
    assert_eq!(admin.create_topic("idle", 2, &[]).error, ErrorCode::NONE);
    let addr = broker.addr;
    let consumer = std::thread::spawn(move || {
        let mut c = Conn::connect(addr);
        // Waits up to a minute for data that never comes.
        let r = c.fetch("idle", 1, 0, 60_000, 1);
        assert_eq!(r.error, ErrorCode::NONE);
        assert!(r.records.is_empty());
    });
    std::thread::sleep(Duration::from_millis(300));
    let started = std::time::Instant::now();
    assert!(
        broker.terminate(Duration::from_secs(30)),
        "SIGTERM must exit 0"
    );
    // The drain answers the long poll instead of waiting out its minute.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    consumer.join().expect("consumer got its answer");
}
