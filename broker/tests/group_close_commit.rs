//! A group member that closes while a rebalance is pending (its heartbeat already said
//! REBALANCE_IN_PROGRESS, it has not rejoined yet) still commits what it was given: its
//! generation is valid until it rejoins, and the coordinator takes commits of it. Without
//! that commit the next owner re-reads everything since the last auto-commit: the
//! duplicates `sluice-bench e2e --group G --churn-every S` counted after a member left.
//! Real broker, real members, each as its own `Consumer`.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::Broker;
use sluice_client::{
    Client, ClientConfig, Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord,
    TopicPartition,
};

const TOPIC: &str = "handover";
const PARTITIONS: u32 = 4;
const HEARTBEAT: Duration = Duration::from_millis(200);

/// Auto-commit on, but its interval far beyond the test: the only commits are the ones the
/// consumer makes before giving partitions up (rebalance, close).
fn config(group: &str) -> ConsumerConfig {
    ConsumerConfig {
        group_id: Some(group.to_owned()),
        session_timeout: Duration::from_secs(10),
        heartbeat_interval: HEARTBEAT,
        auto_commit: true,
        auto_commit_interval: Duration::from_secs(3600),
        ..ConsumerConfig::default()
    }
}

async fn produce(client: &Client, per_partition: u32) {
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    for i in 0..per_partition {
        for p in 0..PARTITIONS {
            let record = ProducerRecord::new(TOPIC, format!("v{i}")).partition(p);
            producer.send(record).await.expect("send");
        }
    }
    producer.close().await.expect("close producer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_during_a_pending_rebalance_commits_so_the_next_owner_reads_nothing_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path(), 2);
    let client = Client::connect(ClientConfig::new(&broker.addr_string()))
        .await
        .expect("connect");
    client
        .create_topic(TOPIC, PARTITIONS, &[])
        .await
        .expect("create");
    produce(&client, 10).await;

    // A alone reads all 40 records.
    let mut a = Consumer::new(client.clone(), config("g"));
    a.subscribe(vec![TOPIC.into()], ()).expect("subscribe a");
    let mut got_a = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got_a.len() < 40 {
        assert!(Instant::now() < deadline, "A read only {}", got_a.len());
        for r in a.poll(Duration::from_millis(200)).await.expect("poll a") {
            assert!(got_a.insert((r.partition, r.offset)), "A read twice");
        }
    }
    let committed = client.committed_offsets("g", &[]).await.expect("fetch");
    assert!(
        committed.is_empty(),
        "nothing committed yet (auto-commit is an hour away): {committed:?}"
    );

    // B joins: the group starts a rebalance and waits for A to rejoin. A is not polling,
    // but its heartbeat hears REBALANCE_IN_PROGRESS within a heartbeat interval.
    let mut b = Consumer::new(client.clone(), config("g"));
    b.subscribe(vec![TOPIC.into()], ()).expect("subscribe b");
    let b_task = tokio::spawn(async move {
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        // Until B owns everything (A left), then a little longer for stray re-reads.
        let mut owned_since: Option<Instant> = None;
        loop {
            assert!(Instant::now() < deadline, "B never took over: {got:?}");
            for r in b.poll(Duration::from_millis(200)).await.expect("poll b") {
                got.push((r.partition, r.offset));
            }
            if b.assignment().len() == PARTITIONS as usize {
                let since = *owned_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(1) {
                    return (b, got);
                }
            }
        }
    });
    tokio::time::sleep(HEARTBEAT * 5).await;

    // A leaves with the rebalance pending: it must commit its positions first.
    a.close().await.expect("close a");
    let committed = client.committed_offsets("g", &[]).await.expect("fetch");
    let all: Vec<TopicPartition> = (0..PARTITIONS)
        .map(|p| TopicPartition::new(TOPIC, p))
        .collect();
    for tp in &all {
        assert_eq!(
            committed.get(tp).map(|c| c.offset),
            Some(10),
            "A's close committed {tp}: {committed:?}"
        );
    }

    // B starts at A's commits: none of A's 40 records again.
    let (mut b, got_b) = b_task.await.expect("b task");
    assert!(got_b.is_empty(), "B re-read what A had: {got_b:?}");
    // And B reads what comes next, exactly once.
    produce(&client, 1).await;
    let mut next = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while next.len() < PARTITIONS as usize {
        assert!(Instant::now() < deadline, "B read only {next:?}");
        for r in b.poll(Duration::from_millis(200)).await.expect("poll b") {
            next.push((r.partition, r.offset));
        }
    }
    next.sort();
    let want: Vec<(u32, u64)> = (0..PARTITIONS).map(|p| (p, 10)).collect();
    assert_eq!(next, want);
    b.close().await.expect("close b");
}
