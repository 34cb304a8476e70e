//! Compacted topics against a real `sluice serve`: many updates of a few keys to a topic with
//! `cleanup.policy=compact` and small segments; the shard's cleaner compacts the closed
//! segments while a producer keeps appending; consuming from the beginning then gives every
//! key's latest value, no record that was not acknowledged at its offset, offsets increasing,
//! and of each key's older versions only what the active segment and the segment ends hold.
//! A keyless record is refused with INVALID_RECORD.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::Broker;
use sluice_client::{
    Acks, Client, ClientConfig, ClientError, Consumer, ConsumerConfig, ConsumerRecord, Producer,
    ProducerConfig, ProducerRecord, SeekTo, TopicPartition,
};
use sluice_proto::protocol::ErrorCode;

const TOPIC: &str = "table";
const KEYS: u64 = 8;
/// Values are padded so that 16 KiB segments roll every few dozen records.
const VALUE_PAD: usize = 200;

fn value(seq: u64) -> String {
    format!("v{seq}-{}", "x".repeat(VALUE_PAD))
}

/// Produces records `seqs` (key `k{seq % KEYS}`), waiting for every acknowledgement; returns
/// offset -> (key, value).
async fn produce(
    producer: &Producer,
    seqs: std::ops::Range<u64>,
) -> BTreeMap<u64, (String, String)> {
    let mut pending = Vec::new();
    for seq in seqs {
        let key = format!("k{}", seq % KEYS);
        let record = ProducerRecord::new(TOPIC, value(seq))
            .key(key.clone())
            .partition(0);
        pending.push((key, value(seq), producer.send(record).await.expect("send")));
    }
    let mut acked = BTreeMap::new();
    for (key, value, delivery) in pending {
        let meta = delivery.await.expect("acknowledged");
        acked.insert(u64::try_from(meta.offset).expect("offset"), (key, value));
    }
    acked
}

/// Base offsets of the partition's segment files, oldest first (the last one is active).
fn segment_bases(dir: &Path) -> Vec<u64> {
    let mut bases: Vec<u64> = std::fs::read_dir(dir)
        .expect("list partition dir")
        .filter_map(|e| {
            let name = e.expect("entry").file_name().into_string().ok()?;
            name.strip_suffix(".log")?.parse().ok()
        })
        .collect();
    bases.sort_unstable();
    bases
}

/// Whether some closed segment file is well below the segment size: the cleaner rewrote it.
fn some_segment_cleaned(dir: &Path) -> bool {
    let bases = segment_bases(dir);
    bases[..bases.len().saturating_sub(1)].iter().any(|base| {
        std::fs::metadata(dir.join(format!("{base:020}.log"))).is_ok_and(|m| m.len() < 8 * 1024)
    })
}

/// Every record from the beginning to the current end.
async fn read_all(client: &Client) -> Vec<ConsumerRecord> {
    let tp = TopicPartition::new(TOPIC, 0);
    let end = client
        .list_offset(TOPIC, 0, sluice_client::LATEST_TIMESTAMP)
        .await
        .expect("end offset");
    let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default());
    consumer.assign(vec![tp.clone()]);
    consumer.seek(&tp, SeekTo::Beginning).await.expect("seek");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    while consumer.position(&tp).is_none_or(|p| p < end) {
        assert!(
            Instant::now() < deadline,
            "consumer stuck at {:?} of {end}",
            consumer.position(&tp)
        );
        out.extend(
            consumer
                .poll(Duration::from_millis(200))
                .await
                .expect("poll"),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_topic_keeps_each_keys_latest_value_while_appends_go_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start_with(dir.path(), 1, &["--retention-check-ms", "200"]);
    let client = Client::connect(ClientConfig::new(&broker.addr_string()))
        .await
        .expect("connect");
    let configs: Vec<(String, String)> = [
        ("cleanup.policy", "compact"),
        ("segment.bytes", "16384"),
        ("min.cleanable.dirty.ratio", "0.1"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
    .collect();
    client
        .create_topic(TOPIC, 1, &configs)
        .await
        .expect("create compacted topic");
    let partition_dir = dir.path().join("topics").join(TOPIC).join("0");
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            acks: Acks::All,
            ..ProducerConfig::default()
        },
    );

    // Phase 1: 2000 updates of 8 keys (about 30 segments).
    let mut acked = produce(&producer, 0..2000).await;
    // Phase 2: keep appending until the cleaner has rewritten segments, and a little after.
    let stop = Arc::new(AtomicBool::new(false));
    let appender = {
        let producer = producer.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut acked = BTreeMap::new();
            let mut next = 2000;
            while !stop.load(Ordering::Relaxed) || next < 3000 {
                acked.extend(produce(&producer, next..next + 50).await);
                next += 50;
                assert!(next < 200_000, "the cleaner never ran");
            }
            acked
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !some_segment_cleaned(&partition_dir) {
        assert!(
            Instant::now() < deadline,
            "no segment was compacted within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let during = appender.await.expect("appender");
    assert!(during.len() >= 1000, "appends went on during cleaning");
    acked.extend(during);
    producer.close().await.expect("close producer");

    // Wait until the cleaner has caught up with every closed segment, then check.
    let mut latest: HashMap<&str, u64> = HashMap::new();
    for (offset, (key, _)) in &acked {
        latest.insert(key, *offset);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let bases = segment_bases(&partition_dir);
        let active = *bases.last().expect("a segment");
        let closed = (bases.len() - 1) as u64;
        let records = read_all(&client).await;
        // Offsets increase; every record is one that was acknowledged there.
        for pair in records.windows(2) {
            assert!(pair[0].offset < pair[1].offset, "offsets increase");
        }
        for r in &records {
            let (key, value) = &acked[&r.offset];
            assert_eq!(
                r.key.as_deref(),
                Some(key.as_bytes()),
                "key at {}",
                r.offset
            );
            assert_eq!(
                r.value.as_deref(),
                Some(value.as_bytes()),
                "value at {}",
                r.offset
            );
        }
        // Every key's latest value is there.
        let present: HashMap<u64, &ConsumerRecord> =
            records.iter().map(|r| (r.offset, r)).collect();
        for (key, offset) in &latest {
            assert!(
                present.contains_key(offset),
                "latest record of {key} at {offset} is missing"
            );
        }
        // In the closed segments: the latest per key plus at most each segment's last record.
        let in_closed = records.iter().filter(|r| r.offset < active).count() as u64;
        if in_closed <= KEYS + closed {
            assert!(
                (records.len() as u64) < acked.len() as u64 / 4,
                "{} of {} records left",
                records.len(),
                acked.len()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "closed segments still hold {in_closed} records (at most {} expected)",
            KEYS + closed
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // A record without a key cannot be compacted: refused with Kafka's INVALID_RECORD.
    let plain = Producer::new(
        client.clone(),
        ProducerConfig {
            acks: Acks::All,
            idempotence: Some(false),
            ..ProducerConfig::default()
        },
    );
    let refused = plain
        .send(ProducerRecord::new(TOPIC, "no key").partition(0))
        .await
        .expect("send")
        .await
        .expect_err("keyless record on a compacted topic");
    assert!(
        matches!(&refused, ClientError::Broker { code, .. } if *code == ErrorCode::INVALID_RECORD),
        "{refused}"
    );
    plain.close().await.expect("close");
}
