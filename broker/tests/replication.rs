//! Partition replication with real processes: three `sluice serve --cluster` brokers on
//! 127.0.0.1, a topic with replication factor 3 and `min.insync.replicas=3`.
//!
//! - acks=all produce to the leader succeeds; the same bytes sit at the same offsets in the
//!   log files of all three data dirs (read directly from the segment files);
//! - the followers refuse produce and consumer fetches (NOT_LEADER_OR_FOLLOWER);
//! - an acks=all write to a `min.insync.replicas=3` topic that waits while a follower is
//!   SIGSTOPped gets NOT_ENOUGH_REPLICAS_AFTER_APPEND once the ISR shrinks (the record is in the
//!   log), and the next one NOT_ENOUGH_REPLICAS;
//! - consumers read only below the high watermark: with one follower SIGSTOPped, an acks=1
//!   record is appended on the leader but neither fetched nor listed as latest until the
//!   follower resumes (SIGCONT) and fetches it;
//! - after the leader is SIGKILLed, the new leader serves the same records at the same
//!   offsets, and with only two in-sync replicas left an acks=all produce is refused with
//!   NOT_ENOUGH_REPLICAS (nothing appended), while acks=1 still works.

mod common;

use std::collections::BTreeSet;
use std::fs::File;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::cli::run_sluice;
use common::wire::{Conn, batch, produce_request, values};
use common::{Broker, sluice_bin};
use sluice_proto::protocol::{
    ACKS_ALL, ACKS_LEADER, ApiKey, ErrorCode, LATEST_TIMESTAMP, MetadataRequest, MetadataResponse,
    ProduceResponse,
};
use sluice_proto::{BATCH_HEADER_BYTES, BatchBuilder, Compression, Limits, peek_batch_length};

/// Shards per broker.
const SHARDS: usize = 2;
/// Longest wait for the cluster to reach a state (elections, heartbeats, the 9 s session).
const SETTLE: Duration = Duration::from_secs(40);
const TOPIC: &str = "replicated";

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

struct Node {
    data_dir: PathBuf,
    broker: Option<Broker>,
    /// How it was started: root, id, cluster, certs, extra arguments.
    spawn: (PathBuf, u32, String, PathBuf, Vec<String>),
}

impl Node {
    /// Starts the node again (same data dir, ports and certificates).
    fn restart(&mut self) {
        let (root, id, cluster, certs, extra) = self.spawn.clone();
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        *self = spawn_node(&root, id, &cluster, &certs, &extra);
    }

    fn addr(&self) -> SocketAddr {
        self.broker.as_ref().expect("running").addr
    }

    fn signal(&self, sig: &str) {
        let pid = self.broker.as_ref().expect("running").child.id();
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig} {pid}");
    }
}

fn spawn_node(root: &Path, id: u32, cluster: &str, certs: &Path, extra: &[&str]) -> Node {
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
        .args(extra)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(
            File::options()
                .create(true)
                .append(true)
                .open(&log)
                .expect("log file"),
        )
        .spawn()
        .expect("spawn sluice serve");
    let broker = Broker::await_listening(
        child,
        &data_dir,
        SHARDS,
        &format!("node {id}"),
        Duration::from_secs(60),
    );
    Node {
        data_dir,
        broker: Some(broker),
        spawn: (
            root.to_path_buf(),
            id,
            cluster.to_string(),
            certs.to_path_buf(),
            extra.iter().map(|e| e.to_string()).collect(),
        ),
    }
}

fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + SETTLE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Leader and ISR of partition 0 of the topic, as `addr` answers.
fn partition_state(addr: SocketAddr) -> Option<(u32, Vec<u32>)> {
    let m = topic_metadata(addr);
    let t = m.topics.first()?;
    let p = t.partitions.iter().find(|p| p.partition == 0)?;
    (t.error.is_ok() && p.error.is_ok() && p.leader >= 0).then(|| {
        (
            p.leader as u32,
            p.isr.iter().map(|r| *r as u32).collect::<Vec<_>>(),
        )
    })
}

fn topic_metadata(addr: SocketAddr) -> MetadataResponse {
    metadata_of(addr, TOPIC)
}

fn metadata_of(addr: SocketAddr, topic: &str) -> MetadataResponse {
    Conn::connect(addr).call(
        ApiKey::Metadata,
        &MetadataRequest {
            topics: Some(vec![topic.into()]),
        },
    )
}

/// The leader of partition 0 of `topic`, once it has one.
fn leader_of(addr: SocketAddr, topic: &str) -> Option<u32> {
    let m = metadata_of(addr, topic);
    let p = m.topics.first()?.partitions.first()?;
    (p.error.is_ok() && p.leader >= 0).then_some(p.leader as u32)
}

/// Certificates and three running nodes.
fn start_cluster(root: &Path, extra: &[&str]) -> Vec<Node> {
    let certs = root.join("certs");
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
    let nodes: Vec<Node> = (0..3)
        .map(|id| spawn_node(root, id, &cluster, &certs, extra))
        .collect();
    for node in &nodes {
        wait_until("3 live brokers", || {
            let m = Conn::connect(node.addr()).metadata();
            (m.brokers.len() == 3).then_some(())
        });
    }
    nodes
}

fn stop_all(nodes: &mut [Node]) {
    for (i, node) in nodes.iter_mut().enumerate() {
        if let Some(b) = node.broker.as_mut() {
            assert!(
                b.terminate(Duration::from_secs(30)),
                "node {i} did not stop cleanly"
            );
        }
    }
}

/// The raw batch bytes of partition 0 from `offset` up to the high watermark, as the
/// leader at `addr` serves them, and the high watermark.
fn raw_from(addr: SocketAddr, offset: u64) -> (Vec<u8>, u64) {
    let mut c = Conn::connect(addr);
    let mut out = Vec::new();
    let mut next = offset;
    loop {
        let r = c.fetch(TOPIC, 0, next, 0, 0);
        assert_eq!(r.error, ErrorCode::NONE, "{}", r.message);
        let bytes = r.records.clone().into_bytes();
        if bytes.is_empty() {
            assert_eq!(next, r.high_watermark);
            return (out, r.high_watermark);
        }
        let vals = values(r.records);
        next = vals.last().expect("records").0 + 1;
        out.extend_from_slice(&bytes);
    }
}

/// The batches of partition 0 in `data_dir`, read from its segment files (in offset
/// order, each up to its zero-filled tail), back to back.
fn log_bytes(data_dir: &Path) -> Vec<u8> {
    let dir = data_dir.join("topics").join(TOPIC).join("0");
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("partition dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segments.sort();
    let mut out = Vec::new();
    for path in segments {
        let bytes = std::fs::read(&path).expect("read segment");
        let mut at = 0;
        while let Some(len) = peek_batch_length(&bytes[at..]) {
            let len = len as usize;
            if len < BATCH_HEADER_BYTES || at + len > bytes.len() {
                break;
            }
            out.extend_from_slice(&bytes[at..at + len]);
            at += len;
        }
    }
    out
}

/// Asserts that every node's log holds `raw` (the leader's batches) as its first bytes.
fn assert_same_log(nodes: &[Node], raw: &[u8]) {
    for node in nodes {
        let bytes = log_bytes(&node.data_dir);
        let prefix = &bytes[..raw.len().min(bytes.len())];
        assert!(
            prefix == raw,
            "{}: {} log bytes, first difference at byte {:?} of the leader's {}",
            node.data_dir.display(),
            bytes.len(),
            prefix.iter().zip(raw).position(|(a, b)| a != b),
            raw.len()
        );
    }
}

/// A one-record batch of an idempotent producer.
fn idempotent_batch(pid: i64, epoch: i16, seq: i32, value: &[u8]) -> Bytes {
    let mut b = BatchBuilder::new(Compression::None, Limits::DEFAULT)
        .producer(pid, epoch, seq)
        .base_timestamp(2_000);
    b.push(2_000, None, Some(value), &[]).expect("push");
    b.build().expect("build").freeze()
}

fn produce(addr: SocketAddr, acks: i8, timeout_ms: u32, records: Bytes) -> (ErrorCode, u64) {
    produce_to(addr, TOPIC, acks, timeout_ms, records)
}

fn produce_to(
    addr: SocketAddr,
    topic: &str,
    acks: i8,
    timeout_ms: u32,
    records: Bytes,
) -> (ErrorCode, u64) {
    let mut req = produce_request(topic, 0, acks, records);
    req.timeout_ms = timeout_ms;
    let resp: ProduceResponse = Conn::connect(addr).call(ApiKey::Produce, &req);
    let p = &resp.topics[0].partitions[0];
    (p.error, p.base_offset)
}

fn latest(addr: SocketAddr) -> u64 {
    let r = Conn::connect(addr).list_offset(TOPIC, 0, LATEST_TIMESTAMP);
    assert_eq!(r.error, ErrorCode::NONE, "{}", r.message);
    r.offset
}

#[test]
fn rf3_acks_all_replicates_identical_bytes_limits_reads_to_the_hw_and_survives_the_leader() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut nodes = start_cluster(root.path(), &[]);
    let created =
        // Partition 0 carries the records; the others stay empty (a replica that led an
        // empty partition must rejoin after a restart too).
        Conn::connect(nodes[0].addr()).create_topic(TOPIC, 4, &[("min.insync.replicas", "3")]);
    assert_eq!(created.error, ErrorCode::NONE, "{}", created.message);
    let (leader, isr) = wait_until("a leader with 3 in-sync replicas", || {
        partition_state(nodes[0].addr()).filter(|(_, isr)| isr.len() == 3)
    });
    assert_eq!(
        isr.iter().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([0, 1, 2])
    );
    let leader_addr = nodes[leader as usize].addr();
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader as usize).collect();

    // acks=all: committed on all three before the answer. (The first produce may meet the
    // followers still connecting: it waits for them within its timeout.)
    // The metadata may name the leader a moment before the leader applied that view: until
    // then it answers NOT_LEADER_OR_FOLLOWER (retriable), as a client would see.
    wait_until("the leader to take produce requests", || {
        let r = Conn::connect(leader_addr).list_offset(TOPIC, 0, LATEST_TIMESTAMP);
        (r.error != ErrorCode::NOT_LEADER_OR_FOLLOWER).then_some(())
    });
    let started = Instant::now();
    let mut expected = Vec::new();
    for i in 0..20u64 {
        let vals: Vec<Vec<u8>> = (0..5).map(|j| format!("r-{i}-{j}").into_bytes()).collect();
        let refs: Vec<&[u8]> = vals.iter().map(Vec::as_slice).collect();
        let (error, base) = produce(
            leader_addr,
            ACKS_ALL,
            30_000,
            batch(&refs, 1_000 + i as i64),
        );
        assert_eq!(error, ErrorCode::NONE, "batch {i}");
        assert_eq!(base, i * 5);
        for (j, v) in vals.into_iter().enumerate() {
            expected.push((i * 5 + j as u64, v));
        }
    }
    eprintln!("20 acks=all batches with RF 3 took {:?}", started.elapsed());
    assert_eq!(latest(leader_addr), 100);
    assert_eq!(Conn::connect(leader_addr).read_all(TOPIC, 0, 0), expected);

    // The same bytes at the same offsets in every data dir (acks=all: already durable on
    // the followers when the producer got its answer).
    let (raw, hw) = raw_from(leader_addr, 0);
    assert_eq!(hw, 100);
    assert_same_log(&nodes, &raw);

    // Followers refuse clients.
    let follower_addr = nodes[followers[0]].addr();
    let (error, _) = produce(follower_addr, ACKS_ALL, 5_000, batch(&[b"no"], 1));
    assert_eq!(error, ErrorCode::NOT_LEADER_OR_FOLLOWER);
    let r = Conn::connect(follower_addr).fetch(TOPIC, 0, 0, 0, 0);
    assert_eq!(r.error, ErrorCode::NOT_LEADER_OR_FOLLOWER);
    let r = Conn::connect(follower_addr).list_offset(TOPIC, 0, LATEST_TIMESTAMP);
    assert_eq!(r.error, ErrorCode::NOT_LEADER_OR_FOLLOWER);

    // Reads stop at the high watermark: with a follower stopped, an acks=1 record is on the
    // leader but not committed.
    nodes[followers[1]].signal("-STOP");
    // An idempotent producer's batch: the followers keep its producer state too.
    let pending = idempotent_batch(4242, 0, 0, b"pending");
    let (error, base) = produce(leader_addr, ACKS_LEADER, 5_000, pending.clone());
    assert_eq!((error, base), (ErrorCode::NONE, 100));
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(latest(leader_addr), 100, "latest is the high watermark");
    let r = Conn::connect(leader_addr).fetch(TOPIC, 0, 100, 0, 0);
    assert_eq!(r.error, ErrorCode::NONE);
    assert_eq!(r.high_watermark, 100);
    assert!(r.records.is_empty(), "read past the high watermark");
    // A long poll at the high watermark is answered once the follower catches up.
    nodes[followers[1]].signal("-CONT");
    let r = Conn::connect(leader_addr).fetch(TOPIC, 0, 100, 10_000, 1);
    assert_eq!(r.error, ErrorCode::NONE);
    assert_eq!(values(r.records), vec![(100, b"pending".to_vec())]);
    assert_eq!(latest(leader_addr), 101);

    // An uncommitted record: both followers stopped, the leader appends it (acks=1) and
    // dies. It is not visible (above the high watermark), and the next leader does not
    // have it.
    let (raw, _) = raw_from(leader_addr, 0);
    for &f in &followers {
        nodes[f].signal("-STOP");
    }
    // Their fetches in flight end empty (a long poll lasts at most 500 ms); no new ones
    // come while they are stopped, so no fetch answer carries the next record.
    std::thread::sleep(Duration::from_millis(800));
    let (error, base) = produce(leader_addr, ACKS_LEADER, 5_000, batch(&[b"lost"], 2_500));
    assert_eq!((error, base), (ErrorCode::NONE, 101));
    assert_eq!(latest(leader_addr), 101);
    // Let it reach the old leader's disk, so that its log diverges when it comes back.
    std::thread::sleep(Duration::from_millis(500));
    nodes[leader as usize]
        .broker
        .as_mut()
        .expect("running")
        .kill9();
    nodes[leader as usize].broker = None;
    for &f in &followers {
        nodes[f].signal("-CONT");
    }

    // A follower takes over with the same records at the same offsets.
    let survivor = nodes[followers[0]].addr();
    let (new_leader, isr) = wait_until("a new leader and a 2-replica ISR", || {
        partition_state(survivor).filter(|(l, isr)| *l != leader && isr.len() == 2)
    });
    assert!(!isr.contains(&leader));
    let new_addr = nodes[new_leader as usize].addr();
    let (moved, hw) = wait_until("the new leader's high watermark", || {
        let mut c = Conn::connect(new_addr);
        let r = c.fetch(TOPIC, 0, 0, 0, 0);
        (r.error.is_ok() && r.high_watermark >= 101).then(|| raw_from(new_addr, 0))
    });
    assert_eq!(hw, 101);
    assert_eq!(moved, raw, "the new leader serves the same bytes");
    let mut all = expected.clone();
    all.push((100, b"pending".to_vec()));
    assert_eq!(Conn::connect(new_addr).read_all(TOPIC, 0, 0), all);
    // The producer retries its batch at the new leader: recognised, not written twice.
    let (error, base) = produce(new_addr, ACKS_LEADER, 5_000, pending);
    assert_eq!((error, base), (ErrorCode::NONE, 100));
    assert_eq!(latest(new_addr), 101);

    // Two in-sync replicas, min.insync.replicas=3: acks=all is refused, nothing appended.
    let (error, _) = produce(new_addr, ACKS_ALL, 5_000, batch(&[b"refused"], 3_000));
    assert_eq!(error, ErrorCode::NOT_ENOUGH_REPLICAS);
    assert_eq!(latest(new_addr), 101);
    // acks=1 needs only the leader; the high watermark follows the two in-sync replicas.
    let (error, base) = produce(new_addr, ACKS_LEADER, 5_000, batch(&[b"after"], 3_001));
    assert_eq!((error, base), (ErrorCode::NONE, 101));
    wait_until("the acks=1 record committed by the two replicas", || {
        (latest(new_addr) == 102).then_some(())
    });
    let tail = Conn::connect(new_addr).read_all(TOPIC, 0, 101);
    assert_eq!(tail, vec![(101, b"after".to_vec())]);

    // The old leader comes back: it finds its log diverging at offset 101 (its "lost"
    // record, of the old epoch), truncates it, fetches "after", and rejoins the ISR.
    let old = log_bytes(&nodes[leader as usize].data_dir);
    assert!(
        old.windows(4).any(|w| w == b"lost"),
        "the old leader's log holds the uncommitted record"
    );
    nodes[leader as usize].restart();
    wait_until("the old leader back in the ISR of every partition", || {
        let m = topic_metadata(new_addr);
        let full = m.topics[0].partitions.iter().all(|p| p.isr.len() == 3);
        (full && partition_state(new_addr).is_some_and(|(l, _)| l == new_leader)).then_some(())
    });
    let (error, base) = produce(new_addr, ACKS_ALL, 10_000, batch(&[b"last"], 4_000));
    assert_eq!((error, base), (ErrorCode::NONE, 102));
    let (raw, hw) = raw_from(new_addr, 0);
    assert_eq!(hw, 103);
    assert_same_log(&nodes, &raw);
    let old = log_bytes(&nodes[leader as usize].data_dir);
    assert!(
        !old.windows(4).any(|w| w == b"lost"),
        "the divergent record was truncated"
    );

    stop_all(&mut nodes);
}

#[test]
fn a_lagging_follower_leaves_the_isr_and_rejoins_once_caught_up() {
    let root = tempfile::tempdir().expect("tempdir");
    // Well below the 9 s broker session: the ISR shrinks while the broker is still live.
    let mut nodes = start_cluster(root.path(), &["--replica-lag-time-max-ms", "1500"]);
    let created = Conn::connect(nodes[0].addr()).create_topic(TOPIC, 1, &[]);
    assert_eq!(created.error, ErrorCode::NONE, "{}", created.message);
    // A topic that wants all three copies.
    const STRICT: &str = "strict";
    let created =
        Conn::connect(nodes[0].addr()).create_topic(STRICT, 1, &[("min.insync.replicas", "3")]);
    assert_eq!(created.error, ErrorCode::NONE, "{}", created.message);
    let (leader, _) = wait_until("a leader with 3 in-sync replicas", || {
        partition_state(nodes[0].addr()).filter(|(_, isr)| isr.len() == 3)
    });
    let strict_leader = wait_until("a leader of the strict topic", || {
        leader_of(nodes[0].addr(), STRICT)
    });
    let leader_addr = nodes[leader as usize].addr();
    let strict_addr = nodes[strict_leader as usize].addr();
    for (addr, topic) in [(leader_addr, TOPIC), (strict_addr, STRICT)] {
        wait_until("the leader to take produce requests", || {
            let r = Conn::connect(addr).list_offset(topic, 0, LATEST_TIMESTAMP);
            (r.error != ErrorCode::NOT_LEADER_OR_FOLLOWER).then_some(())
        });
    }
    // A follower of both partitions (three nodes, at most two leaders).
    let lagging = (0..3u32)
        .find(|&i| i != leader && i != strict_leader)
        .expect("a follower");
    let (error, _) = produce(leader_addr, ACKS_ALL, 30_000, batch(&[b"first"], 1));
    assert_eq!(error, ErrorCode::NONE);
    let (error, _) = produce_to(strict_addr, STRICT, ACKS_ALL, 30_000, batch(&[b"s0"], 1));
    assert_eq!(error, ErrorCode::NONE);

    // The stopped follower falls behind the leader's end and leaves the ISR (through the
    // controller) while its broker is still registered and unfenced.
    nodes[lagging as usize].signal("-STOP");
    let stopped = Instant::now();
    // Taken while all three are in sync, then waiting for the stopped one; once the ISR
    // shrinks the record is committed by two: NOT_ENOUGH_REPLICAS_AFTER_APPEND.
    let strict_write = std::thread::spawn(move || {
        produce_to(strict_addr, STRICT, ACKS_ALL, 20_000, batch(&[b"s1"], 2))
    });
    let (error, _) = produce(leader_addr, ACKS_LEADER, 5_000, batch(&[b"second"], 2));
    assert_eq!(error, ErrorCode::NONE);
    let m = wait_until("the ISR without the stopped follower", || {
        let m = topic_metadata(leader_addr);
        let isr = &m.topics[0].partitions[0].isr;
        (isr.len() == 2 && !isr.contains(&(lagging as i32))).then_some(m)
    });
    let shrunk_after = stopped.elapsed();
    assert!(
        m.brokers.iter().any(|b| b.node_id == lagging),
        "the follower's broker was fenced instead: {m:?}"
    );
    assert!(
        shrunk_after >= Duration::from_millis(1500),
        "shrunk after {shrunk_after:?}, before replica.lag.time.max.ms"
    );
    eprintln!("ISR shrank {shrunk_after:?} after the follower stopped");
    let (error, _) = strict_write.join().expect("strict writer");
    assert_eq!(
        error,
        ErrorCode::NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        "an acks=all write whose ISR shrank below min.insync.replicas after the append"
    );
    // It is in the log (committed by the two left), and the next one is refused before
    // anything is appended.
    wait_until(
        "the strict topic's ISR without the stopped follower",
        || {
            let m = metadata_of(strict_addr, STRICT);
            (m.topics[0].partitions[0].isr.len() == 2).then_some(())
        },
    );
    let (error, _) = produce_to(strict_addr, STRICT, ACKS_ALL, 5_000, batch(&[b"s2"], 3));
    assert_eq!(error, ErrorCode::NOT_ENOUGH_REPLICAS);
    let r = Conn::connect(strict_addr).list_offset(STRICT, 0, LATEST_TIMESTAMP);
    assert_eq!((r.error, r.offset), (ErrorCode::NONE, 2));
    // The two remaining in-sync replicas commit without it.
    let (error, base) = produce(leader_addr, ACKS_ALL, 5_000, batch(&[b"third"], 3));
    assert_eq!((error, base), (ErrorCode::NONE, 2));
    assert_eq!(latest(leader_addr), 3);

    // Resumed, it catches up and the leader adds it back.
    nodes[lagging as usize].signal("-CONT");
    wait_until("the follower back in the ISR", || {
        partition_state(leader_addr).filter(|(_, isr)| isr.contains(&lagging))
    });
    let (error, base) = produce(leader_addr, ACKS_ALL, 5_000, batch(&[b"fourth"], 4));
    assert_eq!((error, base), (ErrorCode::NONE, 3));
    let (raw, hw) = raw_from(leader_addr, 0);
    assert_eq!(hw, 4);
    assert_same_log(&nodes, &raw);
    stop_all(&mut nodes);
}
