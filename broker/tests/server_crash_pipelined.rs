//! Repeated SIGKILLs of the broker under pipelined acks=all production through the real
//! client (many requests in flight, 16 partitions over 2 shards, shard-aware connections):
//! after every restart, each record whose delivery was acknowledged is at its acknowledged
//! offset, no record appears twice, and within a partition records keep production order.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Broker;
use sluice_client::{
    Acks, Client, ClientConfig, Consumer, ConsumerConfig, ConsumerRecord, Producer, ProducerConfig,
    ProducerRecord, SeekTo, TopicPartition,
};

const PARTITIONS: u32 = 16;
const CYCLES: u64 = 4;
/// How long each cycle produces before the SIGKILL.
const PRODUCE_MS: u64 = 400;

async fn connect(broker: &Broker) -> Client {
    let mut config = ClientConfig::new(&broker.addr_string());
    config.client_id = "crash-pipelined".into();
    Client::connect(config).await.expect("connect")
}

/// Produces `cycle:n` records round-robin over the partitions until the broker dies;
/// returns `(partition, offset, value)` of every acknowledged record.
async fn produce_until_killed(broker: &mut Broker, cycle: u64) -> Vec<(u32, u64, String)> {
    let client = connect(broker).await;
    let producer = Producer::new(
        client,
        ProducerConfig {
            acks: Acks::All,
            linger: Duration::from_millis(1),
            batch_bytes: 8 * 1024,
            retries: 0,
            delivery_timeout: Duration::from_secs(10),
            max_in_flight_per_partition: 5,
            ..ProducerConfig::default()
        },
    );
    let (tx, mut rx) = tokio::sync::mpsc::channel(1 << 16);
    let sender = {
        let producer = producer.clone();
        tokio::spawn(async move {
            for n in 0u64.. {
                let value = format!("{cycle}:{n:08}");
                let record = ProducerRecord::new("crash", Bytes::from(value.clone()))
                    .partition((n % u64::from(PARTITIONS)) as u32);
                let Ok(delivery) = producer.send(record).await else {
                    break;
                };
                if tx.send((value, delivery)).await.is_err() {
                    break;
                }
            }
        })
    };
    let collector = tokio::spawn(async move {
        let mut acked = Vec::new();
        while let Some((value, delivery)) = rx.recv().await {
            let delivery: sluice_client::DeliveryFuture = delivery;
            if let Ok(meta) = delivery.await {
                acked.push((meta.partition, meta.offset as u64, value));
            }
        }
        acked
    });
    tokio::time::sleep(Duration::from_millis(PRODUCE_MS)).await;
    broker.kill9();
    // With the broker gone, sends and deliveries fail; stop the sender and drain.
    sender.abort();
    let _ = sender.await;
    drop(producer);
    collector.await.expect("collector")
}

async fn read_everything(client: &Client) -> BTreeMap<u32, Vec<ConsumerRecord>> {
    let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default());
    let tps: Vec<TopicPartition> = (0..PARTITIONS)
        .map(|p| TopicPartition::new("crash", p))
        .collect();
    consumer.assign(tps.clone());
    let mut ends = BTreeMap::new();
    for tp in &tps {
        consumer.seek(tp, SeekTo::Beginning).await.expect("seek");
        let end = client
            .list_offset("crash", tp.partition, sluice_client::LATEST_TIMESTAMP)
            .await
            .expect("end offset");
        ends.insert(tp.partition, end);
    }
    let mut out: BTreeMap<u32, Vec<ConsumerRecord>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while tps
        .iter()
        .any(|tp| consumer.position(tp).unwrap_or(0) < ends[&tp.partition])
    {
        assert!(Instant::now() < deadline, "could not read back to the end");
        for r in consumer
            .poll(Duration::from_millis(200))
            .await
            .expect("poll")
        {
            out.entry(r.partition).or_default().push(r);
        }
    }
    out
}

#[test]
fn repeated_sigkill_under_pipelined_acks_all_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut acked_all = Vec::new();
    for cycle in 0..CYCLES {
        let mut broker = Broker::start(dir.path(), 2);
        rt.block_on(async {
            if cycle == 0 {
                let client = connect(&broker).await;
                client
                    .create_topic("crash", PARTITIONS, &[])
                    .await
                    .expect("create topic");
            }
            let acked = produce_until_killed(&mut broker, cycle).await;
            assert!(
                acked.len() > 100,
                "cycle {cycle}: only {} acknowledged records",
                acked.len()
            );
            acked_all.extend(acked);
        });
    }

    let broker = Broker::start(dir.path(), 2);
    rt.block_on(async {
        let client = connect(&broker).await;
        let log = read_everything(&client).await;
        // Offsets are dense, no record appears twice, production order within each partition.
        let mut seen = HashSet::new();
        for (partition, records) in &log {
            let mut previous: Option<&[u8]> = None;
            for (i, r) in records.iter().enumerate() {
                assert_eq!(
                    r.offset, i as u64,
                    "partition {partition}: offsets are dense"
                );
                let value = r.value.as_deref().expect("value");
                assert!(seen.insert(value), "{value:?} appears twice");
                if let Some(prev) = previous {
                    assert!(
                        prev < value,
                        "partition {partition}: {prev:?} before {value:?}"
                    );
                }
                previous = Some(value);
            }
        }
        // Every acknowledged record is at its acknowledged offset.
        for (partition, offset, value) in &acked_all {
            let record = log[partition]
                .get(*offset as usize)
                .unwrap_or_else(|| panic!("acknowledged {partition}@{offset} ({value}) is gone"));
            assert_eq!(
                record.value.as_deref(),
                Some(value.as_bytes()),
                "{partition}@{offset}"
            );
        }
        eprintln!(
            "{} acknowledged records over {CYCLES} SIGKILLs; {} records in the log",
            acked_all.len(),
            seen.len()
        );
    });
}
