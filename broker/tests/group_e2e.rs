//! Consumer groups end to end with real processes: `sluice consume --group` members sharing
//! a topic's partitions, one SIGKILLed mid-stream (its partitions move within the session
//! timeout and consumption resumes from the committed offsets), two groups each reading
//! everything, and the `sluice group` commands (list, describe with lag, reset-offsets,
//! delete).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cli::{Run, run_sluice};
use common::{Broker, sluice_bin};
use serde_json::Value;
use sluice_client::{
    Client, ClientConfig, ClientError, Producer, ProducerConfig, ProducerRecord, TopicPartition,
    decode_assignment,
};

/// Session timeout of the members in these tests.
const SESSION_MS: u64 = 3_000;

/// A `sluice consume --group` child printing `partition:offset` lines; killed on drop.
struct Member {
    child: Child,
    /// `(partition, offset)` in print order.
    records: Arc<Mutex<Vec<(u32, u64)>>>,
    /// stderr lines (`assigned`, `revoked`, `committed` with `--verbose`).
    log: Arc<Mutex<Vec<String>>>,
    /// The threads reading stdout and stderr; they end when the process does.
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Member {
    fn spawn(brokers: &str, topic: &str, group: &str, extra: &[&str]) -> Member {
        let session = SESSION_MS.to_string();
        let mut child = Command::new(sluice_bin())
            .args(["consume", topic, "--group", group, "--brokers", brokers])
            .args(["--format", "{partition}:{offset}", "--verbose"])
            .args(if extra.contains(&"--session-timeout-ms") {
                Vec::new()
            } else {
                vec!["--session-timeout-ms", &session]
            })
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sluice consume");
        let records = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("stdout");
        let sink = records.clone();
        let out_reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let (p, o) = line.split_once(':').expect("partition:offset");
                let pair = (p.parse().expect("partition"), o.parse().expect("offset"));
                sink.lock().expect("records").push(pair);
            }
        });
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        let err_reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                sink.lock().expect("log").push(line);
            }
        });
        Member {
            child,
            records,
            log,
            readers: vec![out_reader, err_reader],
        }
    }

    fn records(&self) -> Vec<(u32, u64)> {
        self.records.lock().expect("records").clone()
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().expect("log").clone()
    }

    /// The last offset it reported committed per partition (`committed t-3@57,...`).
    fn last_commits(&self) -> BTreeMap<u32, u64> {
        let mut out = BTreeMap::new();
        for line in self.log() {
            let Some(list) = line.strip_prefix("committed ") else {
                continue;
            };
            for item in list.split(',') {
                let (tp, offset) = item.rsplit_once('@').expect("tp@offset");
                let (_, p) = tp.rsplit_once('-').expect("topic-partition");
                out.insert(p.parse().expect("p"), offset.parse().expect("offset"));
            }
        }
        out
    }

    /// SIGKILL; returns once everything it printed has been read.
    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }

    /// Waits for the process to exit by itself; returns its exit code.
    fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                for reader in self.readers.drain(..) {
                    let _ = reader.join();
                }
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "consumer did not exit; log: {:?}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn sluice(args: &[&str]) -> Run {
    run_sluice(args, None)
}

fn ok(args: &[&str]) -> String {
    let run = sluice(args);
    assert_eq!(run.code, 0, "sluice {args:?} failed: {}", run.stderr);
    run.stdout
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}

async fn client(broker: &Broker) -> Client {
    let mut config = ClientConfig::new(&broker.addr_string());
    config.client_id = "group-e2e".into();
    Client::connect(config).await.expect("connect")
}

/// Produces `per_partition` records to each of `partitions`, `pause` between rounds.
async fn produce(
    client: &Client,
    topic: &str,
    partitions: u32,
    per_partition: u32,
    pause: Duration,
) {
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    for i in 0..per_partition {
        let mut deliveries = Vec::new();
        for p in 0..partitions {
            let record = ProducerRecord::new(topic, format!("v{i}")).partition(p);
            deliveries.push(producer.send(record).await.expect("send"));
        }
        for d in deliveries {
            d.await.expect("delivered");
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    producer.close().await.expect("close producer");
}

/// The group's assignment as the coordinator reports it: member id -> partitions.
async fn assignment(client: &Client, group: &str) -> (String, BTreeMap<String, BTreeSet<u32>>) {
    let d = match client.describe_group(group).await {
        Ok(d) => d,
        // Not created yet (no member has joined), or deleted.
        Err(ClientError::GroupNotFound { .. }) => return ("Dead".to_owned(), BTreeMap::new()),
        Err(e) => panic!("describe {group}: {e}"),
    };
    let members = d
        .members
        .iter()
        .map(|m| {
            let parts = decode_assignment(&m.assignment)
                .expect("assignment")
                .iter()
                .map(|tp| tp.partition)
                .collect();
            (m.member_id.clone(), parts)
        })
        .collect();
    (d.state, members)
}

/// Waits until the group is Stable with `members` members whose assignments cover
/// `0..partitions` exactly once, twice in a row 300 ms apart (cooperative rebalances take
/// two rounds).
async fn wait_balanced(client: &Client, group: &str, members: usize, partitions: u32) -> Duration {
    let start = Instant::now();
    let mut good = 0;
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "group {group} not balanced over {members} members: {:?}",
            assignment(client, group).await
        );
        let (state, assigned) = assignment(client, group).await;
        let all: Vec<u32> = assigned.values().flatten().copied().collect();
        let distinct: BTreeSet<u32> = all.iter().copied().collect();
        let ok = state == "Stable"
            && assigned.len() == members
            && all.len() == partitions as usize
            && distinct.len() == partitions as usize
            && assigned.values().all(|s| !s.is_empty());
        if ok {
            good += 1;
            if good == 2 {
                return start.elapsed();
            }
        } else {
            good = 0;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Waits until the members together printed every offset `0..per_partition` of every
/// partition.
fn wait_all(members: &[&Member], partitions: u32, per_partition: u64) {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let seen: BTreeSet<(u32, u64)> = members.iter().flat_map(|m| m.records()).collect();
        if seen.len() == (partitions as u64 * per_partition) as usize {
            for p in 0..partitions {
                for o in 0..per_partition {
                    assert!(seen.contains(&(p, o)), "{p}:{o} never delivered");
                }
            }
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {} records delivered",
            seen.len(),
            partitions as u64 * per_partition
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn three_members_share_six_partitions_and_a_killed_members_partitions_move() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path(), 2);
    let b = broker.addr_string();
    let rt = runtime();
    let client = rt.block_on(client(&broker));
    rt.block_on(client.create_topic("events", 6, &[]))
        .expect("create topic");

    let mut members: Vec<Member> = (0..3)
        .map(|_| Member::spawn(&b, "events", "g", &["--from-beginning"]))
        .collect();
    let took = rt.block_on(wait_balanced(&client, "g", 3, 6));
    eprintln!("three members balanced in {took:?}");

    // Stable membership: every record to exactly one member.
    rt.block_on(produce(&client, "events", 6, 50, Duration::ZERO));
    wait_all(&members.iter().collect::<Vec<_>>(), 6, 50);
    let mut owner: BTreeMap<(u32, u64), usize> = BTreeMap::new();
    for (i, m) in members.iter().enumerate() {
        for r in m.records() {
            assert!(
                owner.insert(r, i).is_none(),
                "{r:?} delivered twice while membership was stable"
            );
        }
    }
    // Each partition was read by one member only.
    let mut partition_owner: BTreeMap<u32, usize> = BTreeMap::new();
    for ((p, _), i) in &owner {
        assert_eq!(
            *partition_owner.entry(*p).or_insert(*i),
            *i,
            "partition {p} split"
        );
    }

    // Kill one member while records keep coming.
    let producing = {
        let client = client.clone();
        rt.spawn(async move {
            produce(&client, "events", 6, 150, Duration::from_millis(20)).await;
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    let victim = 1;
    members[victim].kill9();
    let killed_at = Instant::now();
    let victim_records = members[victim].records();
    let victim_commits = members[victim].last_commits();
    let victim_partitions: BTreeSet<u32> = partition_owner
        .iter()
        .filter(|(_, i)| **i == victim)
        .map(|(p, _)| *p)
        .collect();
    let moved = rt.block_on(wait_balanced(&client, "g", 2, 6));
    let moved_after = killed_at.elapsed();
    eprintln!(
        "partitions {victim_partitions:?} moved {moved_after:?} after the SIGKILL ({moved:?} of polling)"
    );
    assert!(
        moved_after < Duration::from_millis(SESSION_MS) + Duration::from_secs(5),
        "partitions took {moved_after:?} to move (session timeout {SESSION_MS} ms)"
    );
    rt.block_on(producing).expect("producer task");
    let survivors: Vec<&Member> = members
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, m)| m)
        .collect();
    wait_all(&members.iter().collect::<Vec<_>>(), 6, 200);

    // No record skipped (checked above); duplicates only on the victim's partitions, only
    // at or after its last commit, and each printed once by the victim and once after.
    let mut count: BTreeMap<(u32, u64), usize> = BTreeMap::new();
    for m in &members {
        for r in m.records() {
            *count.entry(r).or_default() += 1;
        }
    }
    let mut duplicates = 0;
    for ((p, o), n) in &count {
        if *n == 1 {
            continue;
        }
        duplicates += 1;
        assert_eq!(*n, 2, "{p}:{o} delivered {n} times");
        assert!(
            victim_partitions.contains(p),
            "{p}:{o} duplicated on a partition that did not move"
        );
        let committed = victim_commits.get(p).copied().unwrap_or(0);
        assert!(
            *o >= committed,
            "{p}:{o} re-delivered although the victim committed {committed}"
        );
        assert!(victim_records.contains(&(*p, *o)));
    }
    let uncommitted_window = victim_records
        .iter()
        .filter(|(p, o)| *o >= victim_commits.get(p).copied().unwrap_or(0))
        .count();
    eprintln!(
        "{duplicates} records re-delivered; the victim's uncommitted window was {uncommitted_window}"
    );
    assert!(duplicates <= uncommitted_window);
    // Survivors never overlap each other.
    let a: BTreeSet<(u32, u64)> = survivors[0].records().into_iter().collect();
    let c: BTreeSet<(u32, u64)> = survivors[1].records().into_iter().collect();
    assert!(a.is_disjoint(&c), "two live members read the same record");
}

#[test]
fn two_groups_each_get_every_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path(), 2);
    let b = broker.addr_string();
    let rt = runtime();
    let client = rt.block_on(client(&broker));
    rt.block_on(client.create_topic("news", 4, &[]))
        .expect("create topic");
    rt.block_on(produce(&client, "news", 4, 25, Duration::ZERO));

    let mut first = Member::spawn(
        &b,
        "news",
        "ga",
        &["--from-beginning", "--max-messages", "100"],
    );
    let mut second = Member::spawn(
        &b,
        "news",
        "gb",
        &["--from-beginning", "--max-messages", "100"],
    );
    assert_eq!(
        first.wait_exit(Duration::from_secs(40)),
        0,
        "{:?}",
        first.log()
    );
    assert_eq!(
        second.wait_exit(Duration::from_secs(40)),
        0,
        "{:?}",
        second.log()
    );
    let expected: BTreeSet<(u32, u64)> =
        (0..4).flat_map(|p| (0..25).map(move |o| (p, o))).collect();
    for m in [&first, &second] {
        let got = m.records();
        assert_eq!(got.len(), 100, "each record once");
        assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), expected);
    }
    // Both groups committed everything: nothing left to lag.
    for g in ["ga", "gb"] {
        let committed = rt
            .block_on(client.committed_offsets(g, &[]))
            .expect("committed");
        for p in 0..4 {
            assert_eq!(
                committed[&TopicPartition::new("news", p)].offset,
                25,
                "{g} {p}"
            );
        }
    }
}

#[test]
fn group_commands_list_describe_reset_delete() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path(), 2);
    let b = broker.addr_string();
    let rt = runtime();
    let client = rt.block_on(client(&broker));
    rt.block_on(client.create_topic("orders", 3, &[]))
        .expect("create topic");
    rt.block_on(produce(&client, "orders", 3, 10, Duration::ZERO));

    // Read 12 of the 30 records and leave.
    let mut reader = Member::spawn(
        &b,
        "orders",
        "gc",
        &["--from-beginning", "--max-messages", "12"],
    );
    assert_eq!(
        reader.wait_exit(Duration::from_secs(40)),
        0,
        "{:?}",
        reader.log()
    );
    assert_eq!(reader.records().len(), 12);

    let list = ok(&["group", "list", "--brokers", &b]);
    assert!(
        list.lines().any(|l| l.starts_with("gc\tEmpty\t0 members")),
        "{list}"
    );

    let json = ok(&["group", "describe", "gc", "--json", "--brokers", &b]);
    let v: Value = serde_json::from_str(json.trim()).expect("describe --json is JSON");
    assert_eq!(v["state"], "Empty");
    let parts = v["partitions"].as_array().expect("partitions");
    assert_eq!(parts.len(), 3);
    let mut committed_total = 0;
    let mut lag_total = 0;
    for p in parts {
        let committed = p["committed"].as_u64().unwrap_or(0);
        assert_eq!(p["end"], 10);
        assert_eq!(p["lag"].as_u64().expect("lag"), 10 - committed, "{p}");
        committed_total += committed;
        lag_total += p["lag"].as_u64().expect("lag");
    }
    assert_eq!(committed_total, 12);
    assert_eq!(lag_total, 18);
    let text = ok(&["group", "describe", "gc", "--brokers", &b]);
    assert!(text.contains("state Empty"), "{text}");
    assert!(text.contains("committed\tend\tlag"), "{text}");

    // Reset to the beginning: the group reads all 30 again.
    let out = ok(&[
        "group",
        "reset-offsets",
        "gc",
        "--topic",
        "orders",
        "--to-earliest",
        "--brokers",
        &b,
    ]);
    assert!(out.contains("0=0 1=0 2=0"), "{out}");
    let mut again = Member::spawn(&b, "orders", "gc", &["--max-messages", "30"]);
    assert_eq!(
        again.wait_exit(Duration::from_secs(40)),
        0,
        "{:?}",
        again.log()
    );
    let expected: BTreeSet<(u32, u64)> =
        (0..3).flat_map(|p| (0..10).map(move |o| (p, o))).collect();
    assert_eq!(
        again.records().into_iter().collect::<BTreeSet<_>>(),
        expected
    );

    // --to-offset, checked through describe.
    ok(&[
        "group",
        "reset-offsets",
        "gc",
        "--topic",
        "orders",
        "--to-offset",
        "7",
        "--brokers",
        &b,
    ]);
    let committed = rt
        .block_on(client.committed_offsets("gc", &[]))
        .expect("committed");
    for p in 0..3 {
        assert_eq!(committed[&TopicPartition::new("orders", p)].offset, 7);
    }

    // Refused while a member is active; also delete.
    let active = Member::spawn(&b, "orders", "gc", &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while rt.block_on(assignment(&client, "gc")).1.is_empty() {
        assert!(
            Instant::now() < deadline,
            "member never joined: {:?}",
            active.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let refused = sluice(&[
        "group",
        "reset-offsets",
        "gc",
        "--topic",
        "orders",
        "--to-earliest",
        "--brokers",
        &b,
    ]);
    assert_eq!(refused.code, 1);
    assert!(refused.stderr.starts_with("error: "), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("active members"),
        "{}",
        refused.stderr
    );
    let refused = sluice(&["group", "delete", "gc", "--brokers", &b]);
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.contains("active members"),
        "{}",
        refused.stderr
    );
    let committed = rt
        .block_on(client.committed_offsets("gc", &[]))
        .expect("committed");
    // The refused reset to the earliest offsets changed nothing: the member started at 7
    // and commits forward from there.
    for p in 0..3 {
        let offset = committed[&TopicPartition::new("orders", p)].offset;
        assert!(
            offset >= 7,
            "partition {p} reset to {offset} while a member was active"
        );
    }

    drop(active); // SIGKILL: the session timeout empties the group
    let deadline = Instant::now() + Duration::from_secs(30);
    while !rt.block_on(assignment(&client, "gc")).1.is_empty() {
        assert!(Instant::now() < deadline, "dead member never evicted");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ok(&["group", "delete", "gc", "--brokers", &b]).contains("deleted group 'gc'"));
    let list = ok(&["group", "list", "--brokers", &b]);
    assert!(!list.lines().any(|l| l.starts_with("gc\t")), "{list}");
    let gone = sluice(&["group", "describe", "gc", "--brokers", &b]);
    assert_eq!(gone.code, 1, "{}", gone.stdout);
    assert!(gone.stderr.starts_with("error: "), "{}", gone.stderr);
}

#[test]
fn sigterm_commits_and_leaves_the_group_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path(), 1);
    let b = broker.addr_string();
    let rt = runtime();
    let client = rt.block_on(client(&broker));
    rt.block_on(client.create_topic("jobs", 2, &[]))
        .expect("create topic");
    rt.block_on(produce(&client, "jobs", 2, 5, Duration::ZERO));
    // A long session: only a LeaveGroup empties the group quickly.
    let mut member = Member::spawn(
        &b,
        "jobs",
        "gt",
        &["--from-beginning", "--session-timeout-ms", "30000"],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while member.records().len() < 10 {
        assert!(Instant::now() < deadline, "read {:?}", member.records());
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: signalling our own child process.
    unsafe {
        libc::kill(member.child.id() as libc::pid_t, libc::SIGTERM);
    }
    let stopped = Instant::now();
    assert_eq!(
        member.wait_exit(Duration::from_secs(20)),
        0,
        "{:?}",
        member.log()
    );
    let left = loop {
        let (_, members) = rt.block_on(assignment(&client, "gt"));
        if members.is_empty() {
            break stopped.elapsed();
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(10),
            "member still in the group"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("group empty {left:?} after SIGTERM");
    let committed = rt
        .block_on(client.committed_offsets("gt", &[]))
        .expect("committed");
    for p in 0..2 {
        assert_eq!(committed[&TopicPartition::new("jobs", p)].offset, 5);
    }
}
