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

/// Port of the probe servers in the harness test.
const PROBE_PORT: u16 = 7_000;
/// How long a probe waits for its answer (a cut drops the packets: it times out).
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);

/// A TCP and a UDP echo server on `PROBE_PORT` of the calling thread's namespace, until `stop`.
fn echo_servers(net: &Net, i: usize, stop: &std::sync::atomic::AtomicBool) {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    let addr = std::net::SocketAddr::from((net.ip(i), PROBE_PORT));
    net.enter(i).expect("enter the namespace");
    let tcp = std::net::TcpListener::bind(addr).expect("bind tcp");
    tcp.set_nonblocking(true).expect("nonblocking");
    let udp = std::net::UdpSocket::bind(addr).expect("bind udp");
    udp.set_read_timeout(Some(Duration::from_millis(20)))
        .expect("udp timeout");
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut buf = [0u8; 16];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(&buf[..n], from);
                }
            }
        });
        while !stop.load(Ordering::Relaxed) {
            match tcp.accept() {
                Ok((mut conn, _)) => {
                    conn.set_nonblocking(false).expect("blocking");
                    conn.set_read_timeout(Some(PROBE_TIMEOUT)).expect("timeout");
                    let mut byte = [0u8; 1];
                    if conn.read_exact(&mut byte).is_ok() {
                        let _ = conn.write_all(&byte);
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
}

/// Sets its flag when dropped.
struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Whether namespace `from` gets an answer from `to`'s echo servers: (TCP, UDP).
fn reach(net: &Net, from: usize, to: usize) -> (bool, bool) {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from((net.ip(to), PROBE_PORT));
    net.run_in(from, || {
        let tcp = (|| {
            let mut conn = std::net::TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).ok()?;
            conn.set_read_timeout(Some(PROBE_TIMEOUT)).ok()?;
            conn.write_all(b"t").ok()?;
            let mut byte = [0u8; 1];
            conn.read_exact(&mut byte).ok()?;
            Some(byte == *b"t")
        })()
        .unwrap_or(false);
        let udp = (|| {
            let socket = std::net::UdpSocket::bind((net.ip(from), 0)).ok()?;
            socket.set_read_timeout(Some(PROBE_TIMEOUT)).ok()?;
            socket.send_to(b"u", addr).ok()?;
            let mut buf = [0u8; 16];
            let (n, peer) = socket.recv_from(&mut buf).ok()?;
            Some(peer == addr && buf[..n] == *b"u")
        })()
        .unwrap_or(false);
        (tcp, udp)
    })
}

/// Checks every ordered pair: reachable (TCP and UDP) iff `connected(a, b)`.
fn check_reach(net: &Net, what: &str, connected: impl Fn(usize, usize) -> bool) {
    for from in 0..net.len() {
        for to in (0..net.len()).filter(|&to| to != from) {
            let expected = connected(from, to);
            assert_eq!(
                reach(net, from, to),
                (expected, expected),
                "{what}: {from} -> {to} (tcp, udp)"
            );
        }
    }
}

/// The harness itself: a partition cuts exactly one pair, both ways, for TCP and UDP; isolate
/// cuts one node from all; heal restores everything; leftovers of a dead run are removed.
#[test]
fn harness_cuts_pairs_and_nodes_for_tcp_and_udp_and_cleans_up() {
    common::netns::check_available().unwrap_or_else(|e| panic!("network namespace harness: {e}"));
    // Leftovers of a "crashed" run: a namespace and a bridge named after a dead pid.
    let mut dead = std::process::Command::new("true")
        .spawn()
        .expect("spawn true");
    let dead_pid = dead.id();
    dead.wait().expect("wait true");
    let stale_ns = format!("{}{dead_pid}c0-0", common::netns::NETNS_PREFIX);
    let stale_bridge = format!("sn{dead_pid}c0b");
    common::netns::ip(&["netns", "add", &stale_ns]).expect("stale namespace");
    common::netns::ip(&["link", "add", &stale_bridge, "type", "bridge"]).expect("stale bridge");

    let net = Net::new(3).unwrap_or_else(|e| panic!("network namespace harness: {e}"));
    assert!(
        !netns_names().expect("ip netns list").contains(&stale_ns),
        "stale namespace removed"
    );
    assert!(
        !link_names().expect("ip link").contains(&stale_bridge),
        "stale bridge removed"
    );
    let names = net.names();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for i in 0..net.len() {
            let (net, stop) = (&net, &stop);
            s.spawn(move || echo_servers(net, i, stop));
        }
        // Stops the servers also when an assertion below panics (the scope joins them).
        let _stop_servers = StopOnDrop(&stop);
        // The servers bind before answering; the first check waits for them.
        let deadline = Instant::now() + Duration::from_secs(5);
        while reach(&net, 0, 2) != (true, true) || reach(&net, 1, 2) != (true, true) {
            assert!(Instant::now() < deadline, "probe servers did not come up");
        }
        check_reach(&net, "connected", |_, _| true);
        net.partition(0, 1).expect("partition");
        check_reach(&net, "0 | 1", |a, b| a.min(b) != 0 || a.max(b) != 1);
        net.heal().expect("heal");
        check_reach(&net, "healed", |_, _| true);
        net.isolate(2).expect("isolate");
        check_reach(&net, "2 isolated", |a, b| a != 2 && b != 2);
        net.heal().expect("heal");
        check_reach(&net, "healed again", |_, _| true);
    });
    drop(net);
    let namespaces = netns_names().expect("ip netns list");
    let links = link_names().expect("ip link");
    for name in &names {
        assert!(!namespaces.contains(name), "namespace {name} left behind");
        assert!(!links.contains(name), "link {name} left behind");
    }
}
