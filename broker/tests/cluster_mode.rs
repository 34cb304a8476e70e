//! Cluster mode with real processes: three `sluice serve --cluster` brokers on 127.0.0.1 form
//! a controller quorum, register, and answer Metadata from every node; a topic created
//! through one node (replication factor 3) is seen with its leaders, replicas and ISR from
//! another; after a SIGKILL of the active controller's node the others elect a new one,
//! fence the dead broker, move its leaderships, and still create and delete topics. Bad
//! `--cluster` values are refused with a clear message and exit code 2.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::cli::run_sluice;
use common::cluster::{Cluster, ClusterOptions};
use common::wire::Conn;
use sluice_proto::protocol::{ErrorCode, MetadataResponse};

/// Shards per broker.
const SHARDS: usize = 2;
/// Longest wait for the cluster to reach a state (elections, heartbeats, the 9 s session).
const SETTLE: Duration = Duration::from_secs(40);

fn wait_until<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    common::cluster::wait_until(what, SETTLE, f)
}

fn metadata(addr: SocketAddr) -> MetadataResponse {
    Conn::connect(addr).metadata()
}

fn broker_ids(m: &MetadataResponse) -> BTreeSet<u32> {
    m.brokers.iter().map(|b| b.node_id).collect()
}

/// The active controller as the logs last name it (the line with the highest term).
fn controller_leader(c: &Cluster) -> Option<u32> {
    let mut best: Option<(u64, u32)> = None;
    for node in &c.nodes {
        let text = std::fs::read_to_string(&node.log_path).unwrap_or_default();
        for line in text
            .lines()
            .filter(|l| l.contains("active controller changed"))
        {
            let field = |name: &str| {
                let rest = &line[line.find(name)? + name.len()..];
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse::<u64>()
                    .ok()
            };
            if let (Some(leader), Some(term)) = (field("leader=Some("), field("term="))
                && best.is_none_or(|(t, _)| term > t)
            {
                best = Some((term, leader as u32));
            }
        }
    }
    best.map(|(_, leader)| leader)
}

fn describe(addr: SocketAddr, topic: &str) -> serde_json::Value {
    let run = run_sluice(
        &[
            "topic",
            "describe",
            topic,
            "--json",
            "--brokers",
            &addr.to_string(),
        ],
        None,
    );
    assert_eq!(run.code, 0, "describe failed: {}", run.stderr);
    serde_json::from_str(&run.stdout).expect("describe JSON")
}

fn create(addr: SocketAddr, topic: &str, partitions: u32, rf: Option<u16>) -> common::cli::Run {
    let partitions = partitions.to_string();
    let mut args = vec![
        "topic",
        "create",
        topic,
        "--partitions",
        &partitions,
        "--brokers",
    ];
    let addr = addr.to_string();
    args.push(&addr);
    let rf = rf.map(|r| r.to_string());
    if let Some(rf) = &rf {
        args.extend(["--replication-factor", rf]);
    }
    run_sluice(&args, None)
}

fn partition_dirs(data_dir: &Path, topic: &str) -> BTreeSet<u32> {
    match std::fs::read_dir(data_dir.join("topics").join(topic)) {
        Err(_) => BTreeSet::new(),
        Ok(entries) => entries
            .flatten()
            .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
            .collect(),
    }
}

#[test]
fn three_nodes_form_a_quorum_replicate_metadata_and_survive_the_controller_kill() {
    let mut c = Cluster::start(ClusterOptions {
        shards: SHARDS,
        ..ClusterOptions::new(3)
    });

    // The quorum forms and every broker registers and is unfenced: each node lists all three,
    // with their client addresses and every shard's.
    for node in &c.nodes {
        let m = wait_until(&format!("3 brokers in node {}'s metadata", node.id), || {
            let m = metadata(node.client_addr());
            (broker_ids(&m) == BTreeSet::from([0, 1, 2])).then_some(m)
        });
        for other in &c.nodes {
            let b = m
                .brokers
                .iter()
                .find(|b| b.node_id == other.id)
                .expect("listed");
            assert_eq!(
                (b.host.as_str(), b.port),
                ("127.0.0.1", other.client_addr().port())
            );
            assert_eq!(b.shards.len(), SHARDS, "{b:?}");
            for (s, a) in b.shards.iter().enumerate() {
                assert_eq!(usize::from(a.shard), s);
                // Each shard's own address answers.
                let mut c = Conn::connect_host(&a.host, a.port);
                assert!(!c.metadata().brokers.is_empty());
            }
        }
    }

    // A replicated topic whose batches could not fit one replica fetch is refused.
    let addr0 = c.nodes[0].client_addr().to_string();
    let big = run_sluice(
        &[
            "topic",
            "create",
            "huge",
            "--partitions",
            "1",
            "--config",
            "max.message.bytes=8388608",
            "--brokers",
            &addr0,
        ],
        None,
    );
    assert_ne!(big.code, 0, "8 MiB batches accepted on a replicated topic");
    assert!(
        big.stderr.contains("INVALID_CONFIG") && big.stderr.contains("max.message.bytes"),
        "{}",
        big.stderr
    );

    // A topic with replication factor 3, created through node 0, seen from node 1.
    let created = create(c.nodes[0].client_addr(), "orders", 3, Some(3));
    assert_eq!(created.code, 0, "create: {}", created.stderr);
    // (Node 0 answered once it had the topic; node 1 installs it a moment later.)
    let m = wait_until("orders in node 1's metadata", || {
        let m = Conn::connect(c.nodes[1].client_addr()).call::<_, MetadataResponse>(
            sluice_proto::protocol::ApiKey::Metadata,
            &sluice_proto::protocol::MetadataRequest {
                topics: Some(vec!["orders".into(), "missing".into()]),
            },
        );
        (m.topics[0].error == ErrorCode::NONE).then_some(m)
    });
    assert_eq!(m.topics[1].error, ErrorCode::UNKNOWN_TOPIC_OR_PARTITION);
    let orders = &m.topics[0];
    assert_eq!(orders.error, ErrorCode::NONE, "{orders:?}");
    assert_eq!(orders.partitions.len(), 3);
    let mut leaders = BTreeSet::new();
    for p in &orders.partitions {
        assert_eq!(p.error, ErrorCode::NONE, "{p:?}");
        assert_eq!(
            p.replicas.iter().copied().collect::<BTreeSet<_>>(),
            BTreeSet::from([0, 1, 2]),
            "{p:?}"
        );
        assert_eq!(p.isr.len(), 3, "{p:?}");
        assert_eq!(p.leader, p.replicas[0], "preferred leader first: {p:?}");
        assert!(usize::from(p.leader_shard) < SHARDS);
        leaders.insert(p.leader);
    }
    assert_eq!(leaders.len(), 3, "leaders spread over the brokers");
    // `topic describe --json` through node 2 shows the same leaders.
    let d = wait_until("orders described by node 2", || {
        let run = run_sluice(
            &[
                "topic",
                "describe",
                "orders",
                "--json",
                "--brokers",
                &c.nodes[2].client_addr().to_string(),
            ],
            None,
        );
        (run.code == 0).then(|| serde_json::from_str::<serde_json::Value>(&run.stdout))
    })
    .expect("describe JSON");
    for (p, meta) in d["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .zip(&orders.partitions)
    {
        assert_eq!(p["leader"], meta.leader, "{d}");
        assert_eq!(p["replicas"].as_array().map(Vec::len), Some(3), "{d}");
    }
    // Every node holds a replica of every partition.
    for node in &c.nodes {
        wait_until(&format!("the orders logs on node {}", node.id), || {
            (partition_dirs(&node.data_dir, "orders") == BTreeSet::from([0, 1, 2])).then_some(())
        });
    }

    // SIGKILL the active controller's node.
    let dead = wait_until("a controller leader in the logs", || controller_leader(&c));
    c.kill(dead as usize);
    let alive: Vec<usize> = (0..3).filter(|&i| i != dead as usize).collect();
    let survivor = c.nodes[alive[0]].client_addr();
    let other = c.nodes[alive[1]].client_addr();
    // A new controller fences the dead broker and moves its leaderships to the ISR.
    wait_until("the dead broker fenced and its leaderships moved", || {
        let m = metadata(other);
        let ok = !broker_ids(&m).contains(&dead)
            && broker_ids(&m).len() == 2
            && m.topics.iter().filter(|t| t.name == "orders").all(|t| {
                t.partitions.iter().all(|p| {
                    p.error == ErrorCode::NONE
                        && p.leader != dead as i32
                        && p.leader >= 0
                        && !p.isr.contains(&(dead as i32))
                })
            });
        ok.then_some(())
    });
    assert_ne!(controller_leader(&c), Some(dead));

    // The default replication factor is min(3, registered brokers): 3, above the 2 alive.
    let refused = create(survivor, "payments", 2, None);
    assert_ne!(
        refused.code, 0,
        "created with 2 live brokers: {}",
        refused.stdout
    );
    assert!(
        refused.stderr.contains("replication factor"),
        "{}",
        refused.stderr
    );
    // Replication factor 2 works, through either survivor, and the other sees it.
    let created = create(survivor, "payments", 2, Some(2));
    assert_eq!(created.code, 0, "create after the kill: {}", created.stderr);
    let payments = wait_until("payments in the other survivor's metadata", || {
        metadata(other)
            .topics
            .into_iter()
            .find(|t| t.name == "payments")
    });
    for p in &payments.partitions {
        assert_eq!(p.error, ErrorCode::NONE, "{p:?}");
        assert_eq!(p.replicas.len(), 2);
        assert!(!p.replicas.contains(&(dead as i32)), "{p:?}");
    }
    let again = create(other, "payments", 2, Some(2));
    assert_ne!(again.code, 0);
    assert!(again.stderr.contains("exists"), "{}", again.stderr);

    // Delete through the other survivor: its replicas are removed on both nodes.
    let deleted = run_sluice(
        &[
            "topic",
            "delete",
            "payments",
            "--brokers",
            &other.to_string(),
        ],
        None,
    );
    assert_eq!(deleted.code, 0, "delete: {}", deleted.stderr);
    for &i in &alive {
        wait_until(&format!("payments removed on node {i}"), || {
            (!c.nodes[i].data_dir.join("topics/payments").exists()).then_some(())
        });
    }
    let m = metadata(survivor);
    assert!(m.topics.iter().all(|t| t.name != "payments"));

    // A record in `orders`, then the topic deleted and at once created again under the same
    // name: every replica of the new topic starts empty, never with the old log.
    let m = metadata(survivor);
    let p0 = &m
        .topics
        .iter()
        .find(|t| t.name == "orders")
        .expect("orders")
        .partitions[0];
    let leader = c.nodes[p0.leader as usize].client_addr();
    let produced = Conn::connect(leader).produce("orders", 0, 1, common::wire::batch(&[b"old"], 1));
    assert_eq!(produced.error, ErrorCode::NONE, "{produced:?}");
    // Replicated (the end shown is the high watermark once replication runs).
    wait_until("the record in orders", || {
        (describe(leader, "orders")["partitions"][0]["end_offset"] == 1).then_some(())
    });
    let deleted = run_sluice(
        &[
            "topic",
            "delete",
            "orders",
            "--brokers",
            &survivor.to_string(),
        ],
        None,
    );
    assert_eq!(deleted.code, 0, "delete: {}", deleted.stderr);
    let created = create(survivor, "orders", 3, Some(2));
    assert_eq!(created.code, 0, "create again: {}", created.stderr);
    for &i in &alive {
        let addr = c.nodes[i].client_addr();
        let d = wait_until(&format!("the new orders on node {i}"), || {
            let d = describe(addr, "orders");
            let parts = d["partitions"].as_array().cloned().unwrap_or_default();
            (parts.len() == 3 && parts.iter().all(|p| p["error"] == "NONE")).then_some(d)
        });
        for p in d["partitions"].as_array().expect("partitions") {
            assert_eq!(p["end_offset"], 0, "node {i}: {d}");
        }
    }

    // More partitions through the controller: placed on the live brokers with the topic's
    // replication factor, their logs opened where they are assigned.
    let grown = run_sluice(
        &[
            "topic",
            "add-partitions",
            "orders",
            "5",
            "--brokers",
            &other.to_string(),
        ],
        None,
    );
    assert_eq!(grown.code, 0, "add-partitions: {}", grown.stderr);
    let m = wait_until(
        "5 orders partitions in the other survivor's metadata",
        || {
            let m = metadata(survivor);
            m.topics
                .iter()
                .any(|t| t.name == "orders" && t.partitions.len() == 5)
                .then_some(m)
        },
    );
    let orders = m
        .topics
        .iter()
        .find(|t| t.name == "orders")
        .expect("orders");
    assert_eq!(orders.partitions.len(), 5, "{orders:?}");
    for p in &orders.partitions {
        assert_eq!(p.error, ErrorCode::NONE, "{p:?}");
        assert_eq!(p.replicas.len(), 2, "{p:?}");
    }
    for &i in &alive {
        wait_until(&format!("5 orders logs on node {i}"), || {
            (partition_dirs(&c.nodes[i].data_dir, "orders") == (0..5).collect()).then_some(())
        });
    }
    let fewer = run_sluice(
        &[
            "topic",
            "add-partitions",
            "orders",
            "5",
            "--brokers",
            &survivor.to_string(),
        ],
        None,
    );
    assert_ne!(fewer.code, 0);
    assert!(
        fewer.stderr.contains("INVALID_PARTITIONS"),
        "{}",
        fewer.stderr
    );

    // The killed node restarts from its data directory: it registers again (a new
    // incarnation), catches up, is unfenced and listed by the others, and drops its logs of
    // the old `orders` (deleted while it was down; the new one has no replica on it).
    c.restart(dead as usize);
    for node in &c.nodes {
        wait_until(
            &format!("node {} lists the restarted node", node.id),
            || {
                (broker_ids(&metadata(node.client_addr())) == BTreeSet::from([0, 1, 2]))
                    .then_some(())
            },
        );
    }
    wait_until("the old orders logs removed on the restarted node", || {
        (!c.nodes[dead as usize]
            .data_dir
            .join("topics/orders")
            .exists())
        .then_some(())
    });
    let m = metadata(c.nodes[dead as usize].client_addr());
    let orders = m
        .topics
        .iter()
        .find(|t| t.name == "orders")
        .expect("orders");
    assert!(
        orders
            .partitions
            .iter()
            .all(|p| p.replicas.len() == 2 && !p.replicas.contains(&(dead as i32))),
        "{orders:?}"
    );

    // Every node stops cleanly.
    for i in 0..c.nodes.len() {
        assert!(
            c.terminate(i, Duration::from_secs(30)),
            "node {i} did not stop cleanly"
        );
    }
}

#[test]
fn bad_cluster_settings_are_refused_with_a_clear_message() {
    let root = tempfile::tempdir().expect("tempdir");
    let data = root.path().join("data");
    let serve = |extra: &[&str]| {
        let mut args = vec![
            "serve",
            "--data-dir",
            data.to_str().expect("utf-8"),
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
            "--shards",
            "1",
        ];
        args.extend(extra);
        run_sluice(&args, None)
    };
    let certs = root.path().join("certs");
    let certs = certs.to_str().expect("utf-8");
    for (extra, expected) in [
        (
            vec!["--cluster", "127.0.0.1:7001,127.0.0.1:7002"],
            "1, 3, 5, 7 or 9 voters",
        ),
        (
            vec!["--cluster", "127.0.0.1:7001,127.0.0.1"],
            "is not ID@HOST:PORT or HOST:PORT",
        ),
        (
            vec![
                "--cluster",
                "0@127.0.0.1:7001,0@127.0.0.1:7002,2@127.0.0.1:7003",
            ],
            "node id 0 twice",
        ),
        (
            vec![
                "--node-id",
                "5",
                "--cluster",
                "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003",
            ],
            "node id 5 is not in the cluster list",
        ),
    ] {
        let mut extra = extra;
        extra.extend(["--cert-dir", certs]);
        let run = serve(&extra);
        assert_eq!(run.code, 2, "{extra:?}: {}", run.stderr);
        assert!(
            run.stderr.contains(expected),
            "{extra:?}: expected {expected:?} in {}",
            run.stderr
        );
    }
    let run = serve(&["--cluster", "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("--cert-dir"), "{}", run.stderr);
    // Certificates missing from the directory: refused at start-up, not at the first peer.
    std::fs::create_dir_all(certs).expect("mkdir");
    let run = serve(&[
        "--cluster",
        "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003",
        "--cert-dir",
        certs,
    ]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("cannot load the certificates of node 0"),
        "{}",
        run.stderr
    );
}
