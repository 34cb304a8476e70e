//! Partition replication with real processes: three `sluice serve --cluster` brokers on
//! 127.0.0.1, a topic with replication factor 3 and `min.insync.replicas=3`.
//!
//! - acks=all produce to the leader succeeds; the same bytes sit at the same offsets in the
//!   log files of all three data dirs (read directly from the segment files);
//! - the followers refuse produce and consumer fetches (NOT_LEADER_OR_FOLLOWER);
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
}

impl Node {
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

fn spawn_node(root: &Path, id: u32, cluster: &str, certs: &Path) -> Node {
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
    let m: MetadataResponse = Conn::connect(addr).call(
        ApiKey::Metadata,
        &MetadataRequest {
            topics: Some(vec![TOPIC.into()]),
        },
    );
    let t = m.topics.first()?;
    let p = t.partitions.first()?;
    (t.error.is_ok() && p.error.is_ok() && p.leader >= 0).then(|| {
        (
            p.leader as u32,
            p.isr.iter().map(|r| *r as u32).collect::<Vec<_>>(),
        )
    })
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

/// The first `len` bytes of partition 0's first segment file in `data_dir`.
fn segment_prefix(data_dir: &Path, len: usize) -> Vec<u8> {
    let path = data_dir
        .join("topics")
        .join(TOPIC)
        .join("0")
        .join(format!("{:020}.log", 0));
    let bytes = std::fs::read(&path).unwrap_or_default();
    bytes[..len.min(bytes.len())].to_vec()
}

fn produce(addr: SocketAddr, acks: i8, timeout_ms: u32, records: Bytes) -> (ErrorCode, u64) {
    let mut req = produce_request(TOPIC, 0, acks, records);
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
    let mut nodes: Vec<Node> = (0..3)
        .map(|id| spawn_node(root.path(), id, &cluster, &certs))
        .collect();
    for node in &nodes {
        wait_until("3 live brokers", || {
            let m = Conn::connect(node.addr()).metadata();
            (m.brokers.len() == 3).then_some(())
        });
    }
    let created =
        Conn::connect(nodes[0].addr()).create_topic(TOPIC, 1, &[("min.insync.replicas", "3")]);
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
    for node in &nodes {
        assert_eq!(
            segment_prefix(&node.data_dir, raw.len()),
            raw,
            "{}",
            node.data_dir.display()
        );
    }

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
    let (error, base) = produce(leader_addr, ACKS_LEADER, 5_000, batch(&[b"pending"], 2_000));
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

    // SIGKILL the leader: a follower takes over with the same records at the same offsets.
    let (raw, _) = raw_from(leader_addr, 0);
    nodes[leader as usize]
        .broker
        .as_mut()
        .expect("running")
        .kill9();
    nodes[leader as usize].broker = None;
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

    for i in 0..3 {
        if let Some(b) = nodes[i].broker.as_mut() {
            assert!(
                b.terminate(Duration::from_secs(30)),
                "node {i} did not stop cleanly"
            );
        }
    }
}
