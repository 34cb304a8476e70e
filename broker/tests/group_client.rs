//! The client library's consumer group API against a real broker: subscribe with a
//! rebalance listener, commits (sync, async, with metadata) read back, typed errors for an
//! assignor no member shares and for a commit of a partition the member does not own (the
//! group keeps working after both), a cooperative rebalance when a second member joins,
//! and `close` leaving the group so the other member takes over at once.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Broker;
use sluice_client::{
    Assignor, Client, ClientConfig, ClientError, Consumer, ConsumerConfig, ErrorCode, Producer,
    ProducerConfig, ProducerRecord, RebalanceListener, TopicPartition,
};

/// Session timeout here: long, so a member leaving is visibly faster than an eviction.
const SESSION: Duration = Duration::from_secs(10);

/// `(assigned?, partitions)` in callback order.
type EventLog = Arc<Mutex<Vec<(bool, Vec<TopicPartition>)>>>;

#[derive(Clone, Default)]
struct Events(EventLog);

impl RebalanceListener for Events {
    fn on_assigned(&mut self, partitions: &[TopicPartition]) {
        self.0
            .lock()
            .expect("events")
            .push((true, partitions.to_vec()));
    }
    fn on_revoked(&mut self, partitions: &[TopicPartition]) {
        self.0
            .lock()
            .expect("events")
            .push((false, partitions.to_vec()));
    }
}

impl Events {
    /// What the events say the member owns now.
    fn owned(&self) -> BTreeSet<TopicPartition> {
        let mut owned = BTreeSet::new();
        for (assigned, parts) in self.0.lock().expect("events").iter() {
            for tp in parts {
                if *assigned {
                    assert!(owned.insert(tp.clone()), "{tp} assigned twice");
                } else {
                    assert!(owned.remove(tp), "{tp} revoked but not owned");
                }
            }
        }
        owned
    }
}

fn config(group: &str) -> ConsumerConfig {
    ConsumerConfig {
        group_id: Some(group.to_owned()),
        session_timeout: SESSION,
        heartbeat_interval: Duration::from_millis(300),
        auto_commit: false,
        ..ConsumerConfig::default()
    }
}

async fn produce(client: &Client, topic: &str, partitions: u32, per_partition: u32) {
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    for i in 0..per_partition {
        for p in 0..partitions {
            let record = ProducerRecord::new(topic, format!("v{i}")).partition(p);
            producer.send(record).await.expect("send");
        }
    }
    producer.close().await.expect("close producer");
}

/// Polls until `n` records came back.
async fn poll_n(consumer: &mut Consumer, n: usize) -> Vec<(u32, u64)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    while out.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} records",
            out.len()
        );
        for r in consumer
            .poll(Duration::from_millis(300))
            .await
            .expect("poll")
        {
            out.push((r.partition, r.offset));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_commit_rebalance_and_leave() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path(), 2);
    let client = Client::connect(ClientConfig::new(&broker.addr_string()))
        .await
        .expect("connect");
    client.create_topic("lib", 4, &[]).await.expect("create");
    client.create_topic("other", 1, &[]).await.expect("create");
    produce(&client, "lib", 4, 10).await;

    let a_events = Events::default();
    let mut a = Consumer::new(client.clone(), config("lib-g"));
    a.subscribe(vec!["lib".into()], a_events.clone())
        .expect("subscribe");
    let got = poll_n(&mut a, 40).await;
    assert_eq!(got.iter().collect::<BTreeSet<_>>().len(), 40);
    let all: BTreeSet<TopicPartition> = (0..4).map(|p| TopicPartition::new("lib", p)).collect();
    assert_eq!(a_events.owned(), all);
    let (member_id, generation) = a.group_identity().expect("in a group");
    assert!(
        !member_id.is_empty() && generation >= 1,
        "{member_id} {generation}"
    );

    // Commit with metadata, then sync and async commits of the positions.
    let tp0 = TopicPartition::new("lib", 0);
    a.commit_offsets(BTreeMap::from([(tp0.clone(), (5, "batch-7".to_owned()))]))
        .await
        .expect("commit with metadata");
    let committed = a
        .committed(std::slice::from_ref(&tp0))
        .await
        .expect("committed");
    assert_eq!(committed[&tp0].offset, 5);
    assert_eq!(committed[&tp0].metadata, "batch-7");
    a.commit_sync().await.expect("commit_sync");
    let committed = client.committed_offsets("lib-g", &[]).await.expect("fetch");
    for tp in &all {
        assert_eq!(committed[tp].offset, 10, "{tp}");
    }
    produce(&client, "lib", 4, 1).await;
    poll_n(&mut a, 4).await;
    a.commit_async().await.expect("join").expect("commit_async");
    let committed = client.committed_offsets("lib-g", &[]).await.expect("fetch");
    assert!(
        all.iter().all(|tp| committed[tp].offset == 11),
        "{committed:?}"
    );

    // A member whose only assignor no one else supports is refused, typed.
    let mut stranger = Consumer::new(
        client.clone(),
        ConsumerConfig {
            assignors: vec![Assignor::RoundRobin],
            ..config("lib-g")
        },
    );
    stranger
        .subscribe(vec!["lib".into()], ())
        .expect("subscribe");
    let err = stranger
        .poll(Duration::from_millis(300))
        .await
        .expect_err("no common assignor");
    assert!(
        matches!(err, ClientError::InconsistentGroupProtocol { .. }),
        "{err:?}"
    );
    drop(stranger);

    // Committing a partition the member does not own: typed, and nothing changes.
    let foreign = TopicPartition::new("other", 0);
    let err = a
        .commit_offsets(BTreeMap::from([(foreign.clone(), (1, String::new()))]))
        .await
        .expect_err("not assigned");
    assert!(
        matches!(&err, ClientError::Broker { code, .. } if *code == ErrorCode::PARTITION_NOT_ASSIGNED),
        "{err:?}"
    );
    // The group keeps working.
    produce(&client, "lib", 4, 1).await;
    poll_n(&mut a, 4).await;

    a.commit_sync().await.expect("commit_sync");

    // A second member (its own task, as it would be its own process): a cooperative
    // rebalance splits the partitions, never sharing one.
    let b_events = Events::default();
    let mut b = Consumer::new(client.clone(), config("lib-g"));
    b.subscribe(vec!["lib".into()], b_events.clone())
        .expect("subscribe");
    let stop = Arc::new(AtomicBool::new(false));
    let b_records = Arc::new(Mutex::new(Vec::new()));
    let b_task = tokio::spawn({
        let stop = stop.clone();
        let b_records = b_records.clone();
        async move {
            while !stop.load(Ordering::SeqCst) {
                for r in b.poll(Duration::from_millis(200)).await.expect("poll b") {
                    b_records.lock().expect("b").push((r.partition, r.offset));
                }
            }
            b
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            Instant::now() < deadline,
            "no split: {:?} {:?}",
            a_events.owned(),
            b_events.owned()
        );
        let got = a.poll(Duration::from_millis(200)).await.expect("poll a");
        assert!(got.is_empty(), "nothing new was produced: {got:?}");
        // A revokes before it rejoins, and B is assigned only after that rejoin.
        let (oa, ob) = (a_events.owned(), b_events.owned());
        assert!(
            oa.is_disjoint(&ob),
            "a partition owned twice: {oa:?} {ob:?}"
        );
        if oa.len() == 2 && ob.len() == 2 {
            break;
        }
    }
    // B starts where A committed: nothing A read is read again, nothing is skipped.
    produce(&client, "lib", 4, 1).await;
    let got_a = poll_n(&mut a, 2).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while b_records.lock().expect("b").len() < 2 {
        assert!(Instant::now() < deadline, "B read nothing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got_b = b_records.lock().expect("b").clone();
    assert_eq!(got_b.len(), 2, "{got_b:?}");
    let mut partitions = BTreeSet::new();
    for (p, o) in got_a.iter().chain(got_b.iter()) {
        assert_eq!(*o, 12, "partition {p}");
        assert!(partitions.insert(*p), "partition {p} read twice");
    }

    // A leaves: B takes everything long before the session timeout would have evicted A.
    let left_at = Instant::now();
    a.close().await.expect("close");
    while b_events.owned() != all {
        assert!(
            left_at.elapsed() < SESSION / 2,
            "B did not take over after A left: {:?}",
            b_events.owned()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("B owned everything {:?} after A left", left_at.elapsed());
    stop.store(true, Ordering::SeqCst);
    let b = b_task.await.expect("b task");
    b.close().await.expect("close b");
}
