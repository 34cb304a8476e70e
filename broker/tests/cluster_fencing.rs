//! A paused leader is fenced (issue 6's second acceptance test): three `sluice serve
//! --cluster` processes, one partition with three replicas (`min.insync.replicas` left at its
//! default 1, so only the committed-ISR rule keeps the old leader from acknowledging alone).
//! The partition's leader is SIGSTOPped for longer than the controller needs to notice
//! (election timeout and broker session), a new leader takes over with a higher epoch and
//! acknowledges writes; an acks=all write sent to the old leader while it was stopped, and
//! one sent right after its SIGCONT, are never acknowledged; then the old leader follows the
//! new one (back in the ISR) and its log is the new leader's: the writes it took while fenced
//! are truncated away. Every acknowledged record is read back, and the replicas' files agree
//! offset by offset below the high watermark.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{
    Cluster, ClusterOptions, check_phases, produce_acked, read_raw_produce, read_replica_log,
    send_raw_produce, test_client_config, wait_follows, wait_until,
};
use common::wire::Conn;
use sluice_client::Client;

const TOPIC: &str = "fencing";
/// Records acknowledged in each phase (before, during and after the pause).
const RECORDS_PER_PHASE: usize = 100;
/// Longest wait for the controller to move leadership off the paused node.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);
/// The old leader stays stopped at least this long after the new one took over.
const PAUSED_AFTER_FAILOVER: Duration = Duration::from_secs(2);
/// How long the broker may hold an acks=all Produce (its `timeout_ms`).
const PRODUCE_TIMEOUT_MS: u32 = 5_000;

fn values(phase: &str) -> Vec<String> {
    (0..RECORDS_PER_PHASE)
        .map(|i| format!("{phase}-{i:04}"))
        .collect()
}

#[test]
fn a_paused_leader_is_fenced_and_follows_after_it_resumes() {
    let started = Instant::now();
    let mut cluster = Cluster::start(ClusterOptions::new(3));
    cluster.wait_for_brokers(Duration::from_secs(60));
    cluster.create_topic(TOPIC, 1, 3, &[]);
    let (old, old_epoch) = cluster.wait_for_leader(TOPIC, 0, FAILOVER_TIMEOUT);
    let brokers = cluster.brokers();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let client = runtime.block_on(async {
        Client::connect(test_client_config(&brokers, "cluster-fencing"))
            .await
            .expect("connect")
    });
    let mut acked = runtime.block_on(produce_acked(&client, TOPIC, &values("before")));

    // A connection straight to the old leader, made while it runs.
    let mut conn = Conn::connect(cluster.nodes[old as usize].client_addr());
    conn.stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("read timeout");

    cluster.pause(old as usize);
    let paused_at = Instant::now();
    // Queued in the paused process's socket: it can only see it after SIGCONT.
    send_raw_produce(
        &mut conn,
        TOPIC,
        0,
        "fenced-while-paused",
        PRODUCE_TIMEOUT_MS,
    );
    let (new, new_epoch) = wait_until(
        &format!("a leader other than the paused node {old} (epoch {old_epoch})"),
        FAILOVER_TIMEOUT,
        || {
            cluster
                .leader_of(TOPIC, 0)
                .filter(|&(l, e)| l != old && e > old_epoch)
        },
    );
    let failover = paused_at.elapsed();
    eprintln!("node {new} leads (epoch {new_epoch}) {failover:?} after node {old} was paused");
    acked.extend(runtime.block_on(produce_acked(&client, TOPIC, &values("during"))));
    std::thread::sleep(PAUSED_AFTER_FAILOVER);

    cluster.resume(old as usize);
    let queued = read_raw_produce(&mut conn);
    assert!(
        queued.is_err(),
        "the fenced leader acknowledged the write it got while paused at offset {queued:?}"
    );
    eprintln!(
        "the write queued at the paused leader: {}",
        queued.expect_err("checked above")
    );
    // A fresh write to the old leader right after it resumed.
    let mut conn = Conn::connect(cluster.nodes[old as usize].client_addr());
    conn.stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("read timeout");
    send_raw_produce(
        &mut conn,
        TOPIC,
        0,
        "fenced-after-resume",
        PRODUCE_TIMEOUT_MS,
    );
    let fresh = read_raw_produce(&mut conn);
    assert!(
        fresh.is_err(),
        "the old leader acknowledged a write after it resumed, at offset {fresh:?}"
    );
    eprintln!(
        "a write to the old leader after SIGCONT: {}",
        fresh.expect_err("checked above")
    );

    // It follows: its own metadata names the new leader, and it is back in the ISR.
    wait_follows(
        &cluster,
        TOPIC,
        old as usize,
        new as usize,
        Duration::from_secs(60),
    );
    acked.extend(runtime.block_on(produce_acked(&client, TOPIC, &values("after"))));

    let (end, records) = check_phases(
        &cluster,
        &runtime,
        &client,
        TOPIC,
        &acked,
        RECORDS_PER_PHASE,
    );
    drop(client);
    drop(runtime);

    let ends = cluster.compare_replicas(TOPIC, 0, end, &records);
    // The old leader truncated what it took while fenced: no replica holds it anywhere.
    for i in 0..cluster.nodes.len() {
        let log = read_replica_log(&cluster.nodes[i].data_dir, TOPIC, 0, u64::MAX)
            .unwrap_or_else(|e| panic!("node {i}: {e}"));
        for (offset, epoch, value) in &log.records {
            assert!(
                !value.starts_with(b"fenced-"),
                "node {i} still holds {:?} at offset {offset} (epoch {epoch})",
                String::from_utf8_lossy(value)
            );
        }
    }
    eprintln!("replica log ends {ends:?}; took {:?}", started.elapsed());
}
