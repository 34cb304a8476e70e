//! The client library against a real `sluice serve`: concurrent producers over many
//! partitions and two shards (keyed and unkeyed, acks=1 and all, shard aware or not), read
//! back with no loss, no duplicates and per-partition order; seeks and positions; typed
//! errors; compression round trips.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Broker;
use sluice_client::{
    Acks, Client, ClientConfig, ClientError, Compression, Consumer, ConsumerConfig, ConsumerRecord,
    Producer, ProducerConfig, ProducerRecord, RecordMetadata, SeekTo, TopicPartition,
    partition_for_key,
};

const PARTITIONS: u32 = 16;
const TASKS: usize = 8;
const RECORDS_PER_TASK: usize = 1_500;

async fn client(broker: &Broker, shard_aware: bool) -> Client {
    let mut config = ClientConfig::new(&broker.addr_string());
    config.shard_aware = shard_aware;
    config.client_id = "client-e2e".into();
    Client::connect(config).await.expect("connect")
}

fn all_partitions(topic: &str, n: u32) -> Vec<TopicPartition> {
    (0..n).map(|p| TopicPartition::new(topic, p)).collect()
}

/// Polls until `count` records arrived (or fails after a deadline).
async fn read_all(
    client: &Client,
    topic: &str,
    partitions: u32,
    count: usize,
) -> Vec<ConsumerRecord> {
    let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default());
    let tps = all_partitions(topic, partitions);
    consumer.assign(tps.clone());
    for tp in &tps {
        consumer.seek(tp, SeekTo::Beginning).await.expect("seek");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = Vec::new();
    while out.len() < count {
        assert!(
            Instant::now() < deadline,
            "only {} of {count} records came back",
            out.len()
        );
        out.extend(
            consumer
                .poll(Duration::from_millis(500))
                .await
                .expect("poll"),
        );
    }
    // Nothing more than what was produced.
    let extra = consumer
        .poll(Duration::from_millis(300))
        .await
        .expect("poll");
    assert!(extra.is_empty(), "{} unexpected extra records", extra.len());
    for tp in &tps {
        let end = client
            .list_offset(&tp.topic, tp.partition, sluice_client::LATEST_TIMESTAMP)
            .await
            .expect("end offset");
        assert_eq!(
            consumer.position(tp),
            Some(end),
            "position of {tp} at the end"
        );
    }
    out
}

/// Shard aware: each partition's address is a shard's own listener, and the shard answering
/// there is the one the broker says owns the partition. Otherwise: the bootstrap address.
async fn check_routing(broker: &Broker, client: &Client, topic: &str, shard_aware: bool) {
    use sluice_proto::protocol::{ApiKey, ApiVersionsRequest, ApiVersionsResponse};
    let description = client.describe_topic(topic).await.expect("describe");
    let mut shards_seen = HashSet::new();
    for p in &description.partitions {
        let addr = client
            .partition_address(topic, p.partition)
            .await
            .expect("address");
        if !shard_aware {
            assert_eq!(addr, broker.addr_string());
            continue;
        }
        assert_ne!(addr, broker.addr_string(), "a shard's own address");
        let mut conn = common::wire::Conn::connect(addr.parse().expect("socket address"));
        let versions: ApiVersionsResponse = conn.call(ApiKey::ApiVersions, &ApiVersionsRequest {});
        assert_eq!(versions.shard, p.leader_shard, "partition {}", p.partition);
        shards_seen.insert(versions.shard);
    }
    if shard_aware {
        assert_eq!(shards_seen.len(), 2, "partitions on both shards");
    }
}

async fn concurrent_producers_round_trip(shard_aware: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path(), 2);
    let client = client(&broker, shard_aware).await;
    let topic = "events";
    client
        .create_topic(topic, PARTITIONS, &[])
        .await
        .expect("create topic");
    assert_eq!(
        client.partition_count(topic).await.expect("count"),
        PARTITIONS
    );
    check_routing(&broker, &client, topic, shard_aware).await;

    let leader = Producer::new(
        client.clone(),
        ProducerConfig {
            acks: Acks::Leader,
            batch_bytes: 16 * 1024,
            ..ProducerConfig::default()
        },
    );
    let all = Producer::new(
        client.clone(),
        ProducerConfig {
            acks: Acks::All,
            ..ProducerConfig::default()
        },
    );
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let producer = if task % 2 == 0 {
            leader.clone()
        } else {
            all.clone()
        };
        let keyed = task % 4 < 2;
        tasks.push(tokio::spawn(async move {
            let mut futures = Vec::with_capacity(RECORDS_PER_TASK);
            for seq in 0..RECORDS_PER_TASK {
                let mut record = ProducerRecord::new(topic, format!("{task}:{seq}"));
                if keyed {
                    record = record.key(format!("key-{}", seq % 37));
                }
                futures.push(producer.send(record).await.expect("send"));
            }
            let mut acks: Vec<RecordMetadata> = Vec::with_capacity(futures.len());
            for f in futures {
                acks.push(f.await.expect("delivered"));
            }
            acks
        }));
    }
    let mut acked: HashMap<(u32, i64), String> = HashMap::new();
    for (task, t) in tasks.into_iter().enumerate() {
        let acks = t.await.expect("task");
        assert_eq!(acks.len(), RECORDS_PER_TASK);
        for (seq, meta) in acks.into_iter().enumerate() {
            assert_eq!(meta.topic, topic);
            assert!(meta.offset >= 0, "acks 1/all report offsets");
            let value = format!("{task}:{seq}");
            let previous = acked.insert((meta.partition, meta.offset), value.clone());
            assert!(previous.is_none(), "two records acked at {meta:?}");
        }
    }
    leader.close().await.expect("close");
    all.close().await.expect("close");

    let total = TASKS * RECORDS_PER_TASK;
    let records = read_all(&client, topic, PARTITIONS, total).await;
    assert_eq!(records.len(), total);

    let mut seen = HashSet::new();
    let mut by_partition: BTreeMap<u32, Vec<&ConsumerRecord>> = BTreeMap::new();
    for r in &records {
        let value = String::from_utf8(r.value.clone().expect("value").to_vec()).expect("utf8");
        assert!(seen.insert(value.clone()), "duplicate record {value}");
        assert_eq!(
            acked.get(&(r.partition, r.offset as i64)),
            Some(&value),
            "record at {}-{} is not the one acked there",
            r.partition,
            r.offset
        );
        if let Some(key) = &r.key {
            assert_eq!(
                r.partition,
                partition_for_key(key, PARTITIONS),
                "keyed record on the murmur2 partition"
            );
        }
        by_partition.entry(r.partition).or_default().push(r);
    }
    assert_eq!(seen.len(), total, "no loss");
    assert!(
        by_partition.len() > PARTITIONS as usize / 2,
        "records spread over partitions: {}",
        by_partition.len()
    );
    for (partition, records) in by_partition {
        // Offsets dense from 0, and each task's records in the order it sent them.
        let mut last_seq: HashMap<String, usize> = HashMap::new();
        for (i, r) in records.iter().enumerate() {
            assert_eq!(
                r.offset, i as u64,
                "partition {partition} offsets are dense"
            );
            let value = String::from_utf8_lossy(r.value.as_deref().expect("value")).to_string();
            let (task, seq) = value.split_once(':').expect("task:seq");
            let seq: usize = seq.parse().expect("seq");
            if let Some(prev) = last_seq.insert(task.to_owned(), seq) {
                assert!(
                    prev < seq,
                    "partition {partition}: {task}:{seq} after {task}:{prev}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_producers_shard_aware() {
    concurrent_producers_round_trip(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_producers_through_the_bootstrap_address() {
    concurrent_producers_round_trip(false).await;
}

/// Produces one record "late" to partition 0 of `topic` (acknowledged), then polls once and
/// expects exactly that record.
async fn produce_and_poll_one(
    producer: &Producer,
    consumer: &mut Consumer,
    topic: &str,
) -> ConsumerRecord {
    producer
        .send(ProducerRecord::new(topic, "late"))
        .await
        .expect("send")
        .await
        .expect("delivered");
    let mut got = consumer.poll(Duration::from_secs(5)).await.expect("poll");
    assert_eq!(got.len(), 1);
    got.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seek_beginning_end_offset_timestamp_and_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path(), 2);
    let client = client(&broker, true).await;
    client.create_topic("seek", 1, &[]).await.expect("create");
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    let base = 1_700_000_000_000i64;
    let mut futures = Vec::new();
    for i in 0..100i64 {
        // Several batches, so a seek lands inside one and earlier records must be skipped.
        let record = ProducerRecord::new("seek", format!("v{i}")).timestamp(base + i * 10);
        futures.push(producer.send(record).await.expect("send"));
        if i % 30 == 29 {
            producer.flush().await.expect("flush");
        }
    }
    for (i, f) in futures.into_iter().enumerate() {
        let meta = f.await.expect("delivered");
        assert_eq!(meta.offset, i as i64);
        assert_eq!(meta.timestamp, base + i as i64 * 10);
    }

    let tp = TopicPartition::new("seek", 0);
    let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default());
    assert_eq!(consumer.position(&tp), None);
    consumer.assign(vec![tp.clone()]);
    assert_eq!(consumer.position(&tp), None, "unset until the first poll");

    // Unset position: the first poll starts at the earliest offset.
    let first = consumer.poll(Duration::from_secs(5)).await.expect("poll");
    assert_eq!(first[0].offset, 0);
    assert_eq!(first[0].timestamp, base);
    assert_eq!(
        consumer.position(&tp),
        Some(first.last().expect("records").offset + 1)
    );

    consumer.seek(&tp, SeekTo::Offset(50)).await.expect("seek");
    assert_eq!(consumer.position(&tp), Some(50));
    let got = consumer.poll(Duration::from_secs(5)).await.expect("poll");
    assert_eq!(got[0].offset, 50);
    assert_eq!(got[0].value.as_deref(), Some(&b"v50"[..]));

    // The first record at or after base+255 is offset 26 (timestamp base+260).
    consumer
        .seek(&tp, SeekTo::Timestamp(base + 255))
        .await
        .expect("seek");
    assert_eq!(consumer.position(&tp), Some(26));
    let got = consumer.poll(Duration::from_secs(5)).await.expect("poll");
    assert_eq!(got[0].offset, 26);
    assert_eq!(got[0].timestamp, base + 260);

    consumer.seek(&tp, SeekTo::Beginning).await.expect("seek");
    assert_eq!(consumer.position(&tp), Some(0));

    consumer.seek(&tp, SeekTo::End).await.expect("seek");
    assert_eq!(consumer.position(&tp), Some(100));
    let started = Instant::now();
    let none = consumer
        .poll(Duration::from_millis(400))
        .await
        .expect("poll");
    assert!(none.is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(350),
        "poll waited"
    );

    // A record produced now arrives at the end position.
    let late = produce_and_poll_one(&producer, &mut consumer, "seek").await;
    assert_eq!(late.offset, 100);
    assert_eq!(consumer.position(&tp), Some(101));

    // Seeking an unassigned partition is a typed error.
    let other = TopicPartition::new("seek", 7);
    assert!(matches!(
        consumer.seek(&other, SeekTo::Beginning).await,
        Err(ClientError::NotAssigned { .. })
    ));

    // Past the end: a typed error naming the partition and its range.
    consumer
        .seek(&tp, SeekTo::Offset(5_000))
        .await
        .expect("seek");
    let err = consumer
        .poll(Duration::from_secs(2))
        .await
        .expect_err("out of range");
    match &err {
        ClientError::OffsetOutOfRange {
            topic,
            partition,
            offset,
            start,
            end,
        } => {
            assert_eq!((topic.as_str(), *partition, *offset), ("seek", 0, 5_000));
            assert_eq!((*start, *end), (0, 101));
        }
        other => panic!("expected OffsetOutOfRange, got {other:?}"),
    }
    assert!(err.to_string().contains("'seek'"), "{err}");
    assert_eq!(
        consumer.position(&tp),
        Some(5_000),
        "an error moves nothing"
    );
    producer.close().await.expect("close");
}

/// `poll` keeps one fetch round ahead: many small rounds return every record once and in
/// order; a round still long-polling at a poll's deadline is kept and delivers the next
/// record to arrive; a seek drops the round fetched ahead from the old position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rounds_fetched_ahead_deliver_every_record_once_and_follow_seeks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path(), 2);
    let client = client(&broker, true).await;
    client.create_topic("ahead", 1, &[]).await.expect("create");
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    let mut futures = Vec::new();
    for i in 0..2_000u32 {
        futures.push(
            producer
                .send(ProducerRecord::new("ahead", format!("v{i}")))
                .await
                .expect("send"),
        );
        if i % 50 == 49 {
            // Many batches, so small fetches take many rounds.
            producer.flush().await.expect("flush");
        }
    }
    for f in futures {
        f.await.expect("delivered");
    }
    let tp = TopicPartition::new("ahead", 0);
    let config = ConsumerConfig {
        // One batch per fetch (the first batch is returned whatever its size).
        partition_max_bytes: 1,
        fetch_max_wait: Duration::from_millis(500),
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(client.clone(), config);
    consumer.assign(vec![tp.clone()]);
    let mut next = 0u64;
    let mut polls = 0;
    while next < 2_000 {
        let got = consumer.poll(Duration::from_secs(5)).await.expect("poll");
        polls += 1;
        assert!(polls < 2_000, "stuck at offset {next}");
        for r in got {
            assert_eq!(r.offset, next, "every record once, in order");
            assert_eq!(r.value.as_deref(), Some(format!("v{next}").as_bytes()));
            next += 1;
        }
    }
    assert!(
        polls >= 40,
        "one batch per round, 40 or more batches ({polls})"
    );
    assert_eq!(consumer.position(&tp), Some(2_000));

    // At the end the round fetched ahead long-polls; a short poll returns nothing and keeps
    // it, and it delivers the record produced next.
    let none = consumer
        .poll(Duration::from_millis(50))
        .await
        .expect("poll");
    assert!(none.is_empty());
    let late = produce_and_poll_one(&producer, &mut consumer, "ahead").await;
    assert_eq!(late.offset, 2_000);
    assert_eq!(late.value.as_deref(), Some(&b"late"[..]));

    // A poll that returned records left a round fetched ahead from offset 2,001; a seek
    // moves the position, and the next poll reads from there, not from the round ahead.
    consumer.seek(&tp, SeekTo::Offset(3)).await.expect("seek");
    let got = consumer.poll(Duration::from_secs(5)).await.expect("poll");
    assert_eq!(got[0].offset, 3);
    let got_next = consumer.poll(Duration::from_secs(5)).await.expect("poll");
    assert_eq!(
        got_next[0].offset,
        got.last().expect("records").offset + 1,
        "the round fetched ahead continues where the last poll ended"
    );
    producer.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_errors_for_unknown_topics_partitions_and_large_batches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path(), 2);
    let client = client(&broker, true).await;
    client
        .create_topic("small", 2, &[("max.message.bytes".into(), "10000".into())])
        .await
        .expect("create");
    let producer = Producer::new(client.clone(), ProducerConfig::default());

    let err = producer
        .send(ProducerRecord::new("missing", "x"))
        .await
        .expect_err("unknown topic");
    assert!(matches!(err, ClientError::UnknownTopic { .. }), "{err:?}");
    assert_eq!(err.to_string(), "unknown topic 'missing'");

    let err = producer
        .send(ProducerRecord::new("small", "x").partition(9))
        .await
        .expect_err("unknown partition");
    assert!(
        matches!(
            err,
            ClientError::UnknownPartition {
                partition: 9,
                partitions: 2,
                ..
            }
        ),
        "{err:?}"
    );

    let err = client.describe_topic("missing").await.expect_err("unknown");
    assert!(matches!(err, ClientError::UnknownTopic { .. }), "{err:?}");
    let err = client.delete_topic("missing").await.expect_err("unknown");
    assert!(matches!(err, ClientError::UnknownTopic { .. }), "{err:?}");
    let err = client
        .create_topic("small", 1, &[])
        .await
        .expect_err("exists");
    assert!(err.to_string().contains("TOPIC_ALREADY_EXISTS"), "{err}");

    // One record of 20000 bytes over a max.message.bytes of 10000.
    let big = producer
        .send(ProducerRecord::new("small", vec![b'x'; 20_000]).partition(0))
        .await
        .expect("queued");
    let err = big.await.expect_err("too large");
    assert!(matches!(err, ClientError::TooLarge { .. }), "{err:?}");
    assert!(err.to_string().contains("MESSAGE_TOO_LARGE"), "{err}");
    assert!(err.to_string().contains("too large"), "{err}");

    // The partition still works for records that fit.
    let ok = producer
        .send(ProducerRecord::new("small", "fits").partition(0))
        .await
        .expect("queued")
        .await
        .expect("delivered");
    assert_eq!(ok.offset, 0);
    producer.close().await.expect("close");

    // A closed producer refuses new records.
    let closed = Producer::new(client.clone(), ProducerConfig::default());
    closed.clone().close().await.expect("close");
    assert!(matches!(
        closed.send(ProducerRecord::new("small", "x")).await,
        Err(ClientError::Closed)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_broker_is_a_typed_error() {
    // Bind and drop a listener to find a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let err = Client::connect(ClientConfig::new(&addr))
        .await
        .expect_err("nobody listens");
    assert!(
        matches!(err, ClientError::BrokerUnreachable { .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!("broker not reachable at {addr}: connection refused")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lz4_zstd_and_acks_none_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path(), 2);
    let client = client(&broker, true).await;
    for (topic, compression, acks) in [
        ("lz4", Compression::Lz4, Acks::All),
        ("zstd", Compression::Zstd, Acks::Leader),
        ("fire", Compression::None, Acks::None),
    ] {
        client.create_topic(topic, 3, &[]).await.expect("create");
        let producer = Producer::new(
            client.clone(),
            ProducerConfig {
                compression,
                acks,
                linger: Duration::from_millis(20),
                ..ProducerConfig::default()
            },
        );
        let mut futures = Vec::new();
        for i in 0..3_000u32 {
            let value = format!("{topic} record {i} {}", "compressible ".repeat(8));
            let record = ProducerRecord::new(topic, value)
                .key(format!("k{}", i % 10))
                .header("n", Bytes::from(i.to_string()));
            futures.push(producer.send(record).await.expect("send"));
        }
        producer.flush().await.expect("flush");
        for f in futures {
            let meta = f.await.expect("delivered");
            if acks == Acks::None {
                assert_eq!(meta.offset, -1, "acks=0 has no offsets");
            } else {
                assert!(meta.offset >= 0);
            }
        }
        producer.close().await.expect("close");

        let records = read_all(&client, topic, 3, 3_000).await;
        let mut seen = HashSet::new();
        for r in &records {
            let (_, n) = &r.headers[0];
            let i: u32 = std::str::from_utf8(n.as_deref().expect("header"))
                .expect("utf8")
                .parse()
                .expect("number");
            let expected = format!("{topic} record {i} {}", "compressible ".repeat(8));
            assert_eq!(r.value.as_deref(), Some(expected.as_bytes()));
            assert_eq!(r.key.as_deref(), Some(format!("k{}", i % 10).as_bytes()));
            assert!(seen.insert(i), "duplicate {i}");
        }
        assert_eq!(seen.len(), 3_000, "{topic}: no loss");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_death_fails_deliveries_with_typed_errors_after_retries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut broker = Broker::start(dir.path(), 2);
    let client = client(&broker, true).await;
    client.create_topic("doomed", 4, &[]).await.expect("create");
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            retries: 3,
            retry_backoff: Duration::from_millis(50),
            delivery_timeout: Duration::from_secs(3),
            ..ProducerConfig::default()
        },
    );
    let before = producer
        .send(ProducerRecord::new("doomed", "before"))
        .await
        .expect("send")
        .await
        .expect("delivered while the broker lives");
    assert_eq!(before.offset, 0);

    broker.kill9();
    let started = Instant::now();
    let mut futures = Vec::new();
    for i in 0..20 {
        futures.push(
            producer
                .send(ProducerRecord::new("doomed", format!("after {i}")))
                .await
                .expect("queued: the partition count is cached"),
        );
    }
    for f in futures {
        let err = f.await.expect_err("no broker");
        assert!(
            matches!(
                err,
                ClientError::BrokerUnreachable { .. }
                    | ClientError::ConnectionLost { .. }
                    | ClientError::Timeout { .. }
            ),
            "{err:?}"
        );
        assert!(err.is_retriable());
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "failed within the delivery timeout, took {:?}",
        started.elapsed()
    );

    let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default());
    consumer.assign(vec![TopicPartition::new("doomed", 0)]);
    let err = consumer
        .poll(Duration::from_millis(500))
        .await
        .expect_err("no broker");
    assert!(err.is_retriable(), "{err:?}");
    producer.close().await.expect("close settles at once");
}
