//! `sluice cluster decommission NODE` with real processes (issue 6, reassignment): three
//! `sluice serve --cluster` brokers on 127.0.0.1.
//!
//! - Refused, changing nothing: a node whose replica has nowhere to go (a topic with
//!   replication factor 3 on three brokers), and an unknown node id.
//! - A topic with replication factor 2: while an idempotent acks=all producer keeps writing,
//!   the leader of partition 0 is decommissioned through the CLI, which waits until the node
//!   holds no replica. Then every partition has two replicas, both in the ISR, none on the
//!   node, and the node's partition directories are gone. The node is SIGKILLed: writes go
//!   on, every acknowledged value is read back at exactly one offset, and the replicas left
//!   hold the same records. Restarted, the node stays decommissioned: a new topic gets no
//!   replica on it.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{
    Acked, Cluster, ClusterOptions, DescribedPartition, Writer, check_reads, phase_values,
    produce_acked, read_topic, test_client_config, wait_until,
};
use sluice_client::Client;

const TOPIC: &str = "moving";
const PARTITIONS: u32 = 4;
/// Values per produce round of the background writer.
const ROUND_VALUES: usize = 20;
/// Longest the decommission may take (the CLI is asked again after each of its timeouts).
const DECOMMISSION_TIMEOUT: Duration = Duration::from_secs(120);
/// `--timeout-secs` of one CLI run (below the harness's 30 s limit per CLI run).
const CLI_WAIT_SECS: &str = "20";
/// Longest wait for metadata to settle (elections, the 9 s broker session).
const SETTLE: Duration = Duration::from_secs(60);

fn describe(cluster: &mut Cluster, topic: &str) -> Vec<DescribedPartition> {
    cluster
        .describe(topic)
        .unwrap_or_else(|e| panic!("describe {topic}: {e}"))
}

fn sorted(mut ids: Vec<i32>) -> Vec<i32> {
    ids.sort_unstable();
    ids
}

#[test]
fn a_decommissioned_node_hands_its_replicas_over_without_losing_a_record() {
    let started = Instant::now();
    let mut cluster = Cluster::start(ClusterOptions::new(3));
    cluster.wait_for_brokers(SETTLE);

    // Refusals first; each must leave the cluster as it was.
    cluster.create_topic("wide", 1, 3, &[]);
    let before = describe(&mut cluster, "wide");
    let (code, out, err) = cluster.cli(&["cluster", "decommission", "1"]);
    assert_ne!(code, 0, "decommission with nowhere to go succeeded: {out}");
    assert!(
        err.contains("INVALID_REPLICA_ASSIGNMENT") && err.contains("wide-0"),
        "the refusal names the error and the partition: {err}"
    );
    let (code, out, err) = cluster.cli(&["cluster", "decommission", "9"]);
    assert_ne!(code, 0, "decommission of an unknown node succeeded: {out}");
    assert!(
        err.contains("BROKER_NOT_AVAILABLE") && err.contains("broker 9"),
        "the refusal names the unknown broker: {err}"
    );
    assert_eq!(
        describe(&mut cluster, "wide"),
        before,
        "a refusal changed the topic"
    );
    let (code, out, err) = cluster.cli(&["topic", "delete", "wide"]);
    assert_eq!(code, 0, "delete wide: {out}{err}");

    // Node 1 was not marked: a topic may still put a replica on each of the three nodes.
    cluster.create_topic(TOPIC, PARTITIONS, 2, &[]);
    let placed = describe(&mut cluster, TOPIC);
    for n in 0..3 {
        assert!(
            placed.iter().any(|p| p.replicas.contains(&n)),
            "node {n} got no replica of {TOPIC}: {placed:?}"
        );
    }
    let (victim, _) = cluster.wait_for_leader(TOPIC, 0, SETTLE);
    let victim = victim as usize;
    let held_before = placed
        .iter()
        .filter(|p| p.replicas.contains(&(victim as i32)))
        .count();
    eprintln!("decommissioning node {victim}, which holds {held_before} replicas: {placed:?}");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let brokers = cluster.brokers();
    let client = runtime.block_on(async {
        Client::connect(test_client_config(&brokers, "cluster-decommission"))
            .await
            .expect("connect")
    });
    let mut acked: Vec<Acked> =
        runtime.block_on(produce_acked(&client, TOPIC, &phase_values("before", 200)));

    // A writer that keeps going while the replicas move.
    let writer = Writer::start(&runtime, &client, TOPIC, ROUND_VALUES);

    let victim_id = victim.to_string();
    let decommission_started = Instant::now();
    let deadline = decommission_started + DECOMMISSION_TIMEOUT;
    let output = loop {
        let (code, out, err) = cluster.cli(&[
            "cluster",
            "decommission",
            &victim_id,
            "--timeout-secs",
            CLI_WAIT_SECS,
        ]);
        if code == 0 {
            break out;
        }
        if !err.contains("timed out") || Instant::now() > deadline {
            cluster.dump_logs();
            panic!("decommission of node {victim} failed ({code}): {out}{err}");
        }
        eprintln!("decommission still running: {out}{err}");
    };
    eprintln!("{output}");
    assert!(
        output.contains(&format!("broker {victim}: "))
            && output.contains("partition replicas left to move"),
        "the CLI reports progress: {output}"
    );
    assert!(
        output.contains(&format!("broker {victim} holds no partition replicas")),
        "the CLI says when the node holds nothing: {output}"
    );
    let took = decommission_started.elapsed();

    let (rounds, during) = writer.finish(&runtime);
    assert!(
        rounds > 0,
        "the writer wrote nothing during the decommission"
    );
    acked.extend(during);

    // Every partition: two replicas, none on the node, all in sync, a leader elsewhere.
    let moved = wait_until("every replica off the node and in sync", SETTLE, || {
        let parts = cluster.describe(TOPIC).ok()?;
        parts
            .iter()
            .all(|p| {
                p.replicas.len() == 2
                    && !p.replicas.contains(&(victim as i32))
                    && sorted(p.isr.clone()) == sorted(p.replicas.clone())
                    && p.leader >= 0
            })
            .then_some(parts)
    });
    eprintln!("after the decommission: {moved:?}");
    let dir = cluster.nodes[victim].data_dir.join("topics").join(TOPIC);
    wait_until("the node's partition directories removed", SETTLE, || {
        // Partition directories (the topic's id file may stay while the topic exists).
        let left: Vec<_> = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name())
                    .filter(|n| n.to_string_lossy().parse::<u32>().is_ok())
                    .collect()
            })
            .unwrap_or_default();
        left.is_empty().then_some(())
    });

    // The node leaves for good: nothing depends on it.
    cluster.kill(victim);
    acked.extend(runtime.block_on(produce_acked(&client, TOPIC, &phase_values("after", 200))));
    let reads = runtime.block_on(read_topic(&client, TOPIC, PARTITIONS, SETTLE));
    let known = |v: &[u8]| {
        let v = String::from_utf8_lossy(v);
        v.starts_with("before-") || v.starts_with("during-") || v.starts_with("after-")
    };
    if let Err(e) = check_reads(&reads, &acked, known) {
        cluster.dump_logs();
        panic!("after the decommission: {e}");
    }

    // Restarted, it stays decommissioned: new replicas go elsewhere.
    cluster.restart(victim);
    cluster.create_topic("later", PARTITIONS, 2, &[]);
    // The restarted node may not have the topic in its metadata yet: ask until one answers.
    let later = wait_until("the new topic described", SETTLE, || {
        cluster.describe("later").ok()
    });
    assert!(
        later.iter().all(|p| !p.replicas.contains(&(victim as i32))),
        "a decommissioned node got a new replica: {later:?}"
    );

    // The two replicas left of each partition hold the same records.
    let total: usize = reads.values().map(|(_, r)| r.len()).sum();
    for (p, (end, records)) in &reads {
        let holders: Vec<usize> = moved[*p as usize]
            .replicas
            .iter()
            .map(|r| *r as usize)
            .collect();
        cluster.compare_replicas_on(&holders, TOPIC, *p, *end, records);
    }
    eprintln!(
        "decommission: {held_before} replicas moved off node {victim}, CLI done in {took:?}; \
         {rounds} write rounds meanwhile, {} acknowledged, {total} read, all in place (test \
         {:?})",
        acked.len(),
        started.elapsed()
    );
}
