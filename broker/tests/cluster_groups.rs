//! Consumer groups in cluster mode with real processes: three `sluice serve --cluster`
//! brokers on 127.0.0.1, a topic with replication factor 3, a group of two consumers (the
//! client library) that commit after every poll.
//!
//! - the first FindCoordinator has `__consumer_offsets` created through the controller
//!   (replication factor 3); every node answers the same coordinator, the leader of the
//!   group's offsets partition, and the other nodes refuse group requests with
//!   NOT_COORDINATOR;
//! - the coordinator node is SIGKILLed; another node takes the offsets partition over, loads
//!   the group from its log (the members, their generation and assignments, and the offsets
//!   committed before the kill) and answers for it; the members rediscover it and carry on
//!   in the same generation, and consume what is produced next;
//! - no record is lost, and none is consumed twice unless it was at or past its partition's
//!   acknowledged commit when it was consumed again (the uncommitted tail).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cli::run_sluice;
use common::wire::Conn;
use common::{Broker, sluice_bin};
use sluice_client::{
    Client, ClientConfig, Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord,
    TopicPartition,
};
use sluice_proto::protocol::{
    ApiKey, DescribeGroupsRequest, DescribeGroupsResponse, DescribedGroup, ErrorCode,
    FindCoordinatorRequest, FindCoordinatorResponse, HeartbeatRequest, HeartbeatResponse,
    MetadataRequest, MetadataResponse, OffsetFetchRequest, OffsetFetchResponse, group_state,
};

/// Shards per broker.
const SHARDS: usize = 2;
/// Longest wait for the cluster to reach a state (elections, the 9 s broker session).
const SETTLE: Duration = Duration::from_secs(60);
const TOPIC: &str = "events";
const PARTITIONS: u32 = 4;
/// Records per partition in each of the two production rounds.
const PER_PARTITION: u64 = 40;
const GROUP: &str = "cluster-group";

/// A UDP port `p` with `p + 1 ..= p + 1 + SHARDS` free as well (the replication endpoints).
fn free_peer_port() -> u16 {
    for _ in 0..100 {
        let first = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = first.local_addr().expect("addr").port();
        if usize::from(port) + 2 + SHARDS > usize::from(u16::MAX) {
            continue;
        }
        let rest: Result<Vec<UdpSocket>, _> = (1..=1 + SHARDS as u16)
            .map(|i| UdpSocket::bind(("127.0.0.1", port + i)))
            .collect();
        if rest.is_ok() {
            return port;
        }
    }
    panic!("no free UDP port range");
}

fn spawn_node(root: &Path, id: u32, cluster: &str, certs: &Path) -> Broker {
    let data_dir = root.join(format!("node-{id}"));
    let log = root.join(format!("node-{id}.log"));
    let child = Command::new(sluice_bin())
        .arg("serve")
        .arg("--data-dir")
        .arg(&data_dir)
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "off"])
        .args(["--shards", &SHARDS.to_string()])
        .args(["--node-id", &id.to_string(), "--cluster", cluster])
        .arg("--cert-dir")
        .arg(certs)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn sluice serve");
    Broker::await_listening(
        child,
        &data_dir,
        SHARDS,
        &format!("node {id}"),
        Duration::from_secs(60),
    )
}

fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + SETTLE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// FindCoordinator for the group at `addr`.
fn find(addr: SocketAddr) -> FindCoordinatorResponse {
    Conn::connect(addr).call(
        ApiKey::FindCoordinator,
        &FindCoordinatorRequest {
            group: GROUP.into(),
        },
    )
}

/// The group as `addr` describes it.
fn describe(addr: SocketAddr) -> DescribedGroup {
    let r: DescribeGroupsResponse = Conn::connect(addr).call(
        ApiKey::DescribeGroups,
        &DescribeGroupsRequest {
            groups: vec![GROUP.into()],
        },
    );
    r.groups.into_iter().next().expect("one group")
}

/// Generation and member ids of a stable group.
fn membership(d: &DescribedGroup) -> (i32, BTreeSet<String>) {
    (
        d.generation_id,
        d.members.iter().map(|m| m.member_id.clone()).collect(),
    )
}

/// Replication factor and ISR size of every partition of `topic`, as `addr` answers.
fn replicas(addr: SocketAddr, topic: &str) -> Option<Vec<(usize, usize)>> {
    let m: MetadataResponse = Conn::connect(addr).call(
        ApiKey::Metadata,
        &MetadataRequest {
            topics: Some(vec![topic.into()]),
        },
    );
    let t = m.topics.first()?;
    t.error
        .is_ok()
        .then(|| {
            t.partitions
                .iter()
                .map(|p| (p.replicas.len(), p.isr.len()))
                .collect()
        })
        .filter(|v: &Vec<_>| !v.is_empty())
}

/// What the members did, in the order it happened.
#[derive(Debug, Clone)]
enum Event {
    /// `member` got the record at `offset` of `partition`.
    Consumed {
        member: usize,
        partition: u32,
        offset: u64,
    },
    /// A commit of `partition` at `next` was acknowledged.
    Acked { partition: u32, next: u64 },
}

type Log = Arc<Mutex<Vec<Event>>>;

/// One member: polls, commits the positions of its partitions after every poll, logs what it
/// consumed and which commits were acknowledged, until `stop`. Poll and commit errors (the
/// coordinator moving) are counted and retried.
async fn member(client: Client, id: usize, log: Log, stop: Arc<AtomicBool>) -> (usize, usize) {
    let config = ConsumerConfig {
        group_id: Some(GROUP.to_owned()),
        session_timeout: Duration::from_secs(6),
        heartbeat_interval: Duration::from_millis(300),
        auto_commit: false,
        fetch_max_wait: Duration::from_millis(200),
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(client, config);
    consumer
        .subscribe(vec![TOPIC.into()], ())
        .expect("subscribe");
    let (mut poll_errors, mut commit_errors) = (0, 0);
    while !stop.load(Ordering::SeqCst) {
        match consumer.poll(Duration::from_millis(300)).await {
            Ok(records) => {
                let mut log = log.lock().expect("log");
                for r in records {
                    log.push(Event::Consumed {
                        member: id,
                        partition: r.partition,
                        offset: r.offset,
                    });
                }
            }
            Err(e) => {
                poll_errors += 1;
                eprintln!("member {id}: poll: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        }
        // `commit_sync` commits the position of every assigned partition.
        let positions: Vec<(u32, u64)> = consumer
            .assignment()
            .iter()
            .filter_map(|tp| consumer.position(tp).map(|p| (tp.partition, p)))
            .collect();
        if positions.is_empty() {
            continue;
        }
        match consumer.commit_sync().await {
            Ok(()) => {
                let mut log = log.lock().expect("log");
                for (partition, next) in positions {
                    log.push(Event::Acked { partition, next });
                }
            }
            Err(e) => {
                commit_errors += 1;
                eprintln!("member {id}: commit: {e}");
            }
        }
    }
    let _ = consumer.close().await;
    (poll_errors, commit_errors)
}

/// Consumed `(partition, offset)` pairs and the acknowledged commit of each partition.
fn summary(log: &Log) -> (BTreeSet<(u32, u64)>, BTreeMap<u32, u64>) {
    let mut consumed = BTreeSet::new();
    let mut acked: BTreeMap<u32, u64> = BTreeMap::new();
    for e in log.lock().expect("log").iter() {
        match e {
            Event::Consumed {
                partition, offset, ..
            } => {
                consumed.insert((*partition, *offset));
            }
            Event::Acked { partition, next } => {
                let a = acked.entry(*partition).or_default();
                *a = (*a).max(*next);
            }
        }
    }
    (consumed, acked)
}

async fn produce_round(brokers: &str, round: u64) {
    let client = Client::connect(ClientConfig::new(brokers))
        .await
        .expect("producer client");
    let producer = Producer::new(client, ProducerConfig::default());
    let mut deliveries = Vec::new();
    for i in 0..PER_PARTITION {
        for p in 0..PARTITIONS {
            let record = ProducerRecord::new(TOPIC, format!("r{round}-{p}-{i}")).partition(p);
            deliveries.push((p, i, producer.send(record).await.expect("send")));
        }
    }
    for (p, i, delivery) in deliveries {
        let acked = delivery.await;
        assert!(
            acked.is_ok(),
            "round {round}: record {i} of partition {p}: {acked:?}"
        );
    }
    producer.close().await.expect("close producer");
}

async fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_keeps_its_committed_offsets_when_the_coordinator_node_is_killed() {
    let root = tempfile::tempdir().expect("tempdir");
    let certs = root.path().join("certs");
    let made = run_sluice(
        &[
            "cert",
            "dev",
            "--dir",
            certs.to_str().expect("utf-8"),
            "--nodes",
            "0,1,2",
        ],
        None,
    );
    assert_eq!(made.code, 0, "cert dev: {}", made.stderr);
    let ports: Vec<u16> = (0..3).map(|_| free_peer_port()).collect();
    let cluster = ports
        .iter()
        .enumerate()
        .map(|(id, port)| format!("{id}@127.0.0.1:{port}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes: Vec<Option<Broker>> = (0..3)
        .map(|id| Some(spawn_node(root.path(), id, &cluster, &certs)))
        .collect();
    let addrs: Vec<SocketAddr> = nodes.iter().flatten().map(|b| b.addr).collect();
    for &addr in &addrs {
        wait_until("3 live brokers", || {
            let m = Conn::connect(addr).metadata();
            (m.brokers.len() == 3).then_some(())
        });
    }
    let brokers = addrs
        .iter()
        .map(SocketAddr::to_string)
        .collect::<Vec<_>>()
        .join(",");

    // The first FindCoordinator has the offsets topic created (RF 3); until it has a leader
    // the answer is COORDINATOR_NOT_AVAILABLE.
    let first = find(addrs[1]);
    assert!(
        first.error == ErrorCode::COORDINATOR_NOT_AVAILABLE || first.error == ErrorCode::NONE,
        "{:?} {}",
        first.error,
        first.message
    );
    let coordinator = wait_until("a coordinator", || {
        let r = find(addrs[1]);
        (r.error == ErrorCode::NONE).then_some(r)
    });
    let offsets_topic = wait_until("__consumer_offsets with 3 in-sync replicas", || {
        replicas(addrs[0], "__consumer_offsets")
            .filter(|v| v.iter().all(|&(rf, isr)| rf == 3 && isr == 3))
    });
    assert_eq!(offsets_topic.len(), 16, "the default partition count");
    // Every node names the same coordinator: node, shard and that shard's port.
    for &addr in &addrs {
        let r = find(addr);
        assert_eq!(r.error, ErrorCode::NONE, "{}", r.message);
        assert_eq!(
            (r.node_id, r.shard, r.port),
            (coordinator.node_id, coordinator.shard, coordinator.port)
        );
    }
    let old = coordinator.node_id as usize;
    eprintln!(
        "coordinator of {GROUP}: node {old} shard {}",
        coordinator.shard
    );
    // The other nodes refuse group requests.
    for (i, &addr) in addrs.iter().enumerate().filter(|(i, _)| *i != old) {
        let r: HeartbeatResponse = Conn::connect(addr).call(
            ApiKey::Heartbeat,
            &HeartbeatRequest {
                group: GROUP.into(),
                generation_id: 1,
                member_id: "m".into(),
            },
        );
        assert_eq!(
            r.error,
            ErrorCode::NOT_COORDINATOR,
            "node {i}: {}",
            r.message
        );
        let r: OffsetFetchResponse = Conn::connect(addr).call(
            ApiKey::OffsetFetch,
            &OffsetFetchRequest {
                group: GROUP.into(),
                topics: Vec::new(),
            },
        );
        assert_eq!(
            r.error,
            ErrorCode::NOT_COORDINATOR,
            "node {i}: {}",
            r.message
        );
    }
    // The coordinator itself answers: a new group has no offsets.
    let r: OffsetFetchResponse = Conn::connect(addrs[old]).call(
        ApiKey::OffsetFetch,
        &OffsetFetchRequest {
            group: GROUP.into(),
            topics: Vec::new(),
        },
    );
    assert_eq!(r.error, ErrorCode::NONE, "{}", r.message);
    assert!(r.topics.is_empty(), "{:?}", r.topics);

    let admin = Client::connect(ClientConfig::new(&brokers))
        .await
        .expect("admin client");
    admin
        .create_topic(TOPIC, PARTITIONS, &[])
        .await
        .expect("create topic");
    let topic = wait_until("the topic with 3 in-sync replicas", || {
        replicas(addrs[0], TOPIC).filter(|v| v.iter().all(|&(rf, isr)| rf == 3 && isr == 3))
    });
    assert_eq!(topic.len(), PARTITIONS as usize);
    produce_round(&brokers, 1).await;

    // Two members consume the first round and commit it.
    let log: Log = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut members = Vec::new();
    for id in 0..2 {
        let client = Client::connect(ClientConfig::new(&brokers))
            .await
            .expect("member client");
        members.push(tokio::spawn(member(client, id, log.clone(), stop.clone())));
    }
    let first_round: BTreeMap<u32, u64> = (0..PARTITIONS).map(|p| (p, PER_PARTITION)).collect();
    wait_for(
        "the first round consumed and committed",
        Duration::from_secs(60),
        || summary(&log).1 == first_round,
    )
    .await;
    let both = {
        let log = log.lock().expect("log");
        log.iter()
            .filter_map(|e| match e {
                Event::Consumed { member, .. } => Some(*member),
                Event::Acked { .. } => None,
            })
            .collect::<BTreeSet<_>>()
    };
    eprintln!("members that consumed in round 1: {both:?}");
    // Both members in one stable generation (the second may have joined after the first
    // consumed everything).
    let before = wait_until("a stable group of two", || {
        let d = describe(addrs[old]);
        (d.error == ErrorCode::NONE && d.state == group_state::STABLE && d.members.len() == 2)
            .then(|| membership(&d))
    });
    eprintln!(
        "before the kill: generation {} members {:?}",
        before.0, before.1
    );

    // SIGKILL the coordinator node.
    let killed_at = Instant::now();
    nodes[old].as_mut().expect("running").kill9();
    nodes[old] = None;
    let survivors: Vec<SocketAddr> = (0..3).filter(|&i| i != old).map(|i| addrs[i]).collect();
    let moved = wait_until("a new coordinator", || {
        let r = find(survivors[0]);
        (r.error == ErrorCode::NONE && r.node_id as usize != old).then_some(r)
    });
    assert_ne!(moved.node_id as usize, old);
    eprintln!(
        "new coordinator: node {} shard {} after {:?}",
        moved.node_id,
        moved.shard,
        killed_at.elapsed()
    );
    // It restored the membership: the same members in the same generation, so nobody is
    // handed partitions another member still reads.
    let after = wait_until("the group at the new coordinator", || {
        let d = describe(addrs[moved.node_id as usize]);
        (d.error == ErrorCode::NONE).then_some(d)
    });
    assert_eq!(
        (after.state.as_str(), membership(&after)),
        (group_state::STABLE, before.clone()),
        "the group after the failover: {after:?}"
    );
    // It answers the offsets committed before the kill.
    let survivor_brokers = survivors
        .iter()
        .map(SocketAddr::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let reader = Client::connect(ClientConfig::new(&survivor_brokers))
        .await
        .expect("reader client");
    let tps: Vec<TopicPartition> = (0..PARTITIONS)
        .map(|p| TopicPartition::new(TOPIC, p))
        .collect();
    let deadline = Instant::now() + SETTLE;
    let committed = loop {
        match reader.committed_offsets(GROUP, &tps).await {
            Ok(c) => break c,
            Err(e) => {
                assert!(Instant::now() < deadline, "committed offsets: {e}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    };
    for tp in &tps {
        let c = committed.get(tp).map(|c| c.offset);
        assert!(
            c.is_some_and(|o| o >= PER_PARTITION),
            "{tp}: committed {c:?} after the failover, {PER_PARTITION} acknowledged before"
        );
    }

    // The members rediscover the coordinator and consume the second round.
    produce_round(&survivor_brokers, 2).await;
    let everything: BTreeMap<u32, u64> = (0..PARTITIONS).map(|p| (p, 2 * PER_PARTITION)).collect();
    wait_for(
        "the second round consumed and committed",
        Duration::from_secs(90),
        || summary(&log).1 == everything,
    )
    .await;
    eprintln!(
        "second round consumed and committed {:?} after the kill",
        killed_at.elapsed()
    );
    stop.store(true, Ordering::SeqCst);
    for m in members {
        let (poll_errors, commit_errors) = m.await.expect("member task");
        eprintln!("member: {poll_errors} poll errors, {commit_errors} commit errors");
    }

    // None lost.
    let (consumed, _) = summary(&log);
    let produced: BTreeSet<(u32, u64)> = (0..PARTITIONS)
        .flat_map(|p| (0..2 * PER_PARTITION).map(move |o| (p, o)))
        .collect();
    assert_eq!(consumed, produced, "every record consumed");
    // None consumed twice unless it was in the uncommitted tail when consumed again.
    let mut seen = BTreeSet::new();
    let mut acked: BTreeMap<u32, u64> = BTreeMap::new();
    let mut again = 0usize;
    for e in log.lock().expect("log").iter() {
        match e {
            Event::Acked { partition, next } => {
                let a = acked.entry(*partition).or_default();
                *a = (*a).max(*next);
            }
            Event::Consumed {
                member,
                partition,
                offset,
            } => {
                if !seen.insert((*partition, *offset)) {
                    again += 1;
                    let a = acked.get(partition).copied().unwrap_or(0);
                    assert!(
                        *offset >= a,
                        "member {member} consumed {TOPIC}/{partition}@{offset} again, below \
                         its acknowledged commit {a}"
                    );
                }
            }
        }
    }
    eprintln!("{again} records consumed again (uncommitted tails)");

    for b in nodes.iter_mut().flatten() {
        assert!(b.terminate(Duration::from_secs(20)), "clean shutdown");
    }
}
