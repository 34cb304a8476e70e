//! Controlled shutdown with real processes: three `sluice serve --cluster` brokers on
//! 127.0.0.1. A leader stopped with SIGTERM has the controller move its leaderships before it
//! exits (the new leader is in the metadata when the process is gone, well inside the 9 s
//! session a crash waits for), exits 0, and an idempotent acks=all producer writing meanwhile
//! loses nothing: every acknowledged value is read back at exactly one offset, also after the
//! node is back.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{
    Acked, Cluster, ClusterOptions, Writer, check_reads, phase_values, produce_acked, read_topic,
    test_client_config, wait_until,
};
use sluice_client::Client;

const TOPIC: &str = "stopping";
const PARTITIONS: u32 = 2;
const ROUND_VALUES: usize = 20;
/// Longest wait for metadata to settle (elections, the 9 s broker session).
const SETTLE: Duration = Duration::from_secs(60);
/// How soon after the stopped leader's exit another leader must be in the metadata. A crash
/// is noticed after the 9 s session; a controlled shutdown moved it before the exit, so this
/// only covers the other nodes installing the view they already have.
const MOVED_BY_EXIT: Duration = Duration::from_secs(3);

#[test]
fn a_leader_stopped_with_sigterm_hands_over_before_it_exits() {
    let mut cluster = Cluster::start(ClusterOptions::new(3));
    cluster.wait_for_brokers(SETTLE);
    cluster.create_topic(TOPIC, PARTITIONS, 3, &[]);
    let (old, old_epoch) = cluster.wait_for_leader(TOPIC, 0, SETTLE);
    let old = old as usize;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let brokers = cluster.brokers();
    let client = runtime.block_on(async {
        Client::connect(test_client_config(&brokers, "controlled-shutdown"))
            .await
            .expect("connect")
    });
    let mut acked: Vec<Acked> =
        runtime.block_on(produce_acked(&client, TOPIC, &phase_values("before", 100)));

    let writer = Writer::start(&runtime, &client, TOPIC, ROUND_VALUES);
    std::thread::sleep(Duration::from_millis(500));

    let sent_at = Instant::now();
    assert!(
        cluster.terminate(old, Duration::from_secs(30)),
        "node {old} did not exit 0 after SIGTERM: {}",
        cluster.log_tail(old, 40)
    );
    let exited_after = sent_at.elapsed();
    let (new, new_epoch) = wait_until(
        &format!("a leader other than the stopped node {old}"),
        MOVED_BY_EXIT,
        || {
            cluster
                .leader_of(TOPIC, 0)
                .filter(|&(l, e)| l as usize != old && e > old_epoch)
        },
    );
    let log = cluster.log(old);
    assert!(
        log.contains("controlled shutdown: fenced; leaderships moved to in-sync replicas"),
        "node {old}'s log does not show the controlled shutdown: {}",
        cluster.log_tail(old, 40)
    );
    eprintln!(
        "node {old} (leader, epoch {old_epoch}) exited {exited_after:?} after SIGTERM; node \
         {new} leads in epoch {new_epoch}"
    );

    // Writes go on without it, and once it is back.
    std::thread::sleep(Duration::from_millis(500));
    cluster.restart(old);
    std::thread::sleep(Duration::from_millis(500));
    let (rounds, during) = writer.finish(&runtime);
    assert!(rounds > 0, "the writer wrote nothing");
    acked.extend(during);
    acked.extend(runtime.block_on(produce_acked(&client, TOPIC, &phase_values("after", 100))));
    let reads = runtime.block_on(read_topic(&client, TOPIC, PARTITIONS, SETTLE));
    let known = |v: &[u8]| {
        let v = String::from_utf8_lossy(v);
        v.starts_with("before-") || v.starts_with("during-") || v.starts_with("after-")
    };
    if let Err(e) = check_reads(&reads, &acked, known) {
        cluster.dump_logs();
        panic!("after the controlled shutdown: {e}");
    }
    eprintln!(
        "controlled shutdown: {rounds} write rounds meanwhile, {} acknowledged, all read back",
        acked.len()
    );
}
