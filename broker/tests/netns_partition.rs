//! A broker cut off by a network partition (issue 6's network-namespace harness, proven on a
//! single real broker): `sluice serve` runs in namespace 0, the client (tokio) in namespace 1,
//! and every byte between them crosses the veth pairs and the bridge of `common::netns`.
//! While namespace 0 is isolated, acks=all production fails with the client's typed timeout
//! and nothing is acknowledged; after the heal production goes on (a new producer), and every
//! acknowledged record is read back exactly once at its offset. The namespaces and the bridge
//! are gone afterwards.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::netns::{Net, link_names, netns_names};
use sluice_client::{
    Acks, Client, ClientConfig, ClientError, Consumer, ConsumerConfig, LATEST_TIMESTAMP, Producer,
    ProducerConfig, ProducerRecord, SeekTo, TopicPartition,
};

const TOPIC: &str = "partitioned";
/// Records acknowledged before the cut, and again after the heal.
const RECORDS_PER_PHASE: usize = 200;
/// Records sent while the broker is isolated (none may be acknowledged).
const RECORDS_CUT_OFF: usize = 20;
/// The producer's delivery timeout (the isolation lasts longer than this).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(3);
/// The client's timeout for one response.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

const BROKER_NS: usize = 0;
const CLIENT_NS: usize = 1;

/// acks=all (so idempotent), small batches, a short delivery timeout.
fn producer_config() -> ProducerConfig {
    ProducerConfig {
        acks: Acks::All,
        linger: Duration::from_millis(2),
        batch_bytes: 4 * 1024,
        delivery_timeout: DELIVERY_TIMEOUT,
        ..ProducerConfig::default()
    }
}

/// Sends `count` records `"{phase}-{i}"` and waits for each outcome.
async fn produce(
    producer: &Producer,
    phase: &str,
    count: usize,
) -> Vec<(String, Result<i64, ClientError>)> {
    let mut pending = Vec::with_capacity(count);
    for i in 0..count {
        let value = format!("{phase}-{i}");
        let delivery = producer
            .send(ProducerRecord::new(TOPIC, value.clone()))
            .await
            .expect("send is accepted");
        pending.push((value, delivery));
    }
    let mut out = Vec::with_capacity(count);
    for (value, delivery) in pending {
        out.push((value, delivery.await.map(|meta| meta.offset)));
    }
    out
}

/// The partition's end offset, asked on a runtime of the calling thread's namespace.
fn end_offset_from_inside(addr: &str) -> u64 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let mut config = ClientConfig::new(addr);
        config.client_id = "netns-partition-inside".into();
        let client = Client::connect(config).await.expect("connect inside");
        client
            .list_offset(TOPIC, 0, LATEST_TIMESTAMP)
            .await
            .expect("end offset inside")
    })
}

/// Records every acknowledged value at its offset; fails on an error or a reused offset.
fn expect_acked(
    results: Vec<(String, Result<i64, ClientError>)>,
    acked: &mut BTreeMap<u64, String>,
) {
    for (value, result) in results {
        let offset = result.unwrap_or_else(|e| panic!("{value} was not acknowledged: {e}"));
        let offset = u64::try_from(offset).expect("acks=all reports an offset");
        let previous = acked.insert(offset, value.clone());
        assert!(previous.is_none(), "offset {offset} acknowledged twice");
    }
}

#[test]
fn isolated_broker_acknowledges_nothing_and_every_ack_survives_the_heal() {
    let started = Instant::now();
    let net = Net::new(2).unwrap_or_else(|e| panic!("network namespace harness: {e}"));
    let names = net.names();
    // Not tmpfs: the broker refuses it (tempdir is on the test machine's disk, as in the
    // other broker tests).
    let dir = tempfile::tempdir().expect("tempdir");
    let mut broker = net.start_broker(BROKER_NS, dir.path(), 1, &[]);
    assert_eq!(
        broker.addr.ip(),
        net.ip(BROKER_NS),
        "the broker listens on its namespace's bridge address"
    );
    let addr = broker.addr_string();

    let acked = net.run_in(CLIENT_NS, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        runtime.block_on(async {
            let mut config = ClientConfig::new(&addr);
            config.client_id = "netns-partition".into();
            config.request_timeout = REQUEST_TIMEOUT;
            config.connect_timeout = REQUEST_TIMEOUT;
            let client = Client::connect(config)
                .await
                .expect("connect across the bridge");
            client
                .create_topic(TOPIC, 1, &[])
                .await
                .expect("create topic");
            let producer = Producer::new(client.clone(), producer_config());
            let mut acked = BTreeMap::new();
            expect_acked(
                produce(&producer, "before", RECORDS_PER_PHASE).await,
                &mut acked,
            );
            let end_before_cut = acked.len() as u64;

            net.isolate(BROKER_NS).expect("isolate the broker");
            let cut_at = Instant::now();
            for (value, result) in produce(&producer, "cut-off", RECORDS_CUT_OFF).await {
                // The delivery timeout fails the batch with its last attempt's error: a
                // response that never came, or a connection whose handshake never came
                // back (timed out: the black hole neither refuses nor resets).
                match result {
                    Err(ClientError::Timeout { .. }) => {}
                    Err(ClientError::BrokerUnreachable { source, .. })
                        if source.kind() == std::io::ErrorKind::TimedOut => {}
                    other => panic!("{value} while isolated: expected a timeout, got {other:?}"),
                }
            }
            let waited = cut_at.elapsed();
            assert!(
                waited >= DELIVERY_TIMEOUT - Duration::from_millis(100),
                "failed after {waited:?}, before the delivery timeout"
            );
            // Seen from inside the broker's namespace (its own address, not across the cut):
            // nothing of the cut-off records arrived while the cut lasted.
            let end_during_cut = net.run_in(BROKER_NS, || end_offset_from_inside(&addr));
            assert_eq!(
                end_during_cut, end_before_cut,
                "nothing written during the cut"
            );
            net.heal().expect("heal");
            // A new producer: the client's idempotent producer does not yet reset its
            // sequence numbers after batches expired (Kafka bumps the epoch, KIP-360), so
            // its next batch would be refused as out of order.
            producer.close().await.expect("close the cut-off producer");
            let producer = Producer::new(client.clone(), producer_config());
            expect_acked(
                produce(&producer, "after", RECORDS_PER_PHASE).await,
                &mut acked,
            );
            producer.close().await.expect("close the producer");
            let end = client
                .list_offset(TOPIC, 0, LATEST_TIMESTAMP)
                .await
                .expect("end offset after the heal");
            // Every acknowledged record, exactly once, at its offset. A request that timed
            // out had an unknown outcome, not a failed one: its bytes may still sit in a TCP
            // send queue and reach the broker after the heal, so cut-off records may be in
            // the log too, but each at most once (the idempotent producer's sequence numbers)
            // and nothing else.
            let tp = TopicPartition::new(TOPIC, 0);
            let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default());
            consumer.assign(vec![tp.clone()]);
            consumer.seek(&tp, SeekTo::Beginning).await.expect("seek");
            let mut read = BTreeMap::new();
            let deadline = Instant::now() + Duration::from_secs(20);
            while consumer.position(&tp) != Some(end) {
                assert!(
                    Instant::now() < deadline,
                    "read only {} records",
                    read.len()
                );
                for r in consumer
                    .poll(Duration::from_millis(500))
                    .await
                    .expect("poll")
                {
                    let value =
                        String::from_utf8(r.value.expect("value").to_vec()).expect("utf8 value");
                    assert!(
                        read.insert(r.offset, value).is_none(),
                        "offset {} read twice",
                        r.offset
                    );
                }
            }
            let mut late = std::collections::BTreeSet::new();
            for (offset, value) in &read {
                match acked.get(offset) {
                    Some(expected) => assert_eq!(value, expected, "record at offset {offset}"),
                    None => {
                        assert!(
                            value.starts_with("cut-off-"),
                            "{value} at offset {offset} was never sent"
                        );
                        assert!(late.insert(value.clone()), "{value} written twice");
                    }
                }
            }
            for offset in acked.keys() {
                assert!(
                    read.contains_key(offset),
                    "acknowledged offset {offset} missing"
                );
            }
            assert_eq!(read.len(), acked.len() + late.len());
            assert_eq!(end, read.len() as u64, "the log holds nothing else");
            assert!(end_before_cut <= end, "the log did not shrink");
            eprintln!(
                "{} acknowledged records read back; {} of {RECORDS_CUT_OFF} cut-off records \
                 reached the broker after the heal",
                acked.len(),
                late.len()
            );
            acked
        })
    });
    assert_eq!(acked.len(), 2 * RECORDS_PER_PHASE);
    assert!(
        acked.values().all(|v| !v.starts_with("cut-off")),
        "nothing sent during the isolation was acknowledged"
    );

    broker.kill9();
    drop(net);
    let namespaces = netns_names().expect("ip netns list");
    let links = link_names().expect("ip link");
    for name in &names {
        assert!(!namespaces.contains(name), "namespace {name} left behind");
        assert!(!links.contains(name), "link {name} left behind");
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(30), "took {took:?}");
}
