//! A topic deleted and created again under the same name while one of its replicas is down,
//! with real processes (three `sluice serve --cluster` brokers): the returning node must not
//! take its old log for the new topic's (topic ids). Its replica of the new topic ends up
//! with exactly the records the leader has, none of the old topic's.

mod common;

use std::time::Duration;

use common::cluster::{
    Cluster, ClusterOptions, check_reads, phase_values, produce_acked, read_topic,
    test_client_config, wait_until,
};
use sluice_client::Client;

const TOPIC: &str = "again";
const SETTLE: Duration = Duration::from_secs(60);

#[test]
fn a_node_that_missed_the_delete_drops_the_old_topics_log() {
    let mut cluster = Cluster::start(ClusterOptions::new(3));
    cluster.wait_for_brokers(SETTLE);
    cluster.create_topic(TOPIC, 1, 3, &[]);
    let (leader, _) = cluster.wait_for_leader(TOPIC, 0, SETTLE);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let brokers = cluster.brokers();
    let client = runtime.block_on(async {
        Client::connect(test_client_config(&brokers, "topic-recreate"))
            .await
            .expect("connect")
    });
    runtime.block_on(produce_acked(&client, TOPIC, &phase_values("old", 50)));

    // A follower goes down; within its 9 s session the topic is deleted and created again
    // (the node still counts as live, so the new topic has a replica on it too).
    let away = (0..3).find(|&i| i != leader as usize).expect("a follower");
    cluster.kill(away);
    let (code, out, err) = cluster.cli(&["topic", "delete", TOPIC]);
    assert_eq!(code, 0, "delete: {out}{err}");
    cluster.create_topic(TOPIC, 1, 3, &[]);
    let described = cluster.describe(TOPIC).expect("describe");
    assert!(
        described[0].replicas.contains(&(away as i32)),
        "the new topic has no replica on node {away}: {described:?}"
    );
    let mut acked = runtime.block_on(produce_acked(&client, TOPIC, &phase_values("new", 10)));

    // Back: its old log must go, and the new topic's be copied from the leader. Either at its
    // first view (the directory's topic id differs), or once its controller caught up past
    // the re-creation (the open log's topic id differs).
    cluster.restart(away);
    wait_until(
        "the returning node to drop the old topic's log",
        SETTLE,
        || {
            let log = cluster.log(away);
            (log.contains("removing the logs of an older topic of the same name")
                || log.contains("topic deleted and created again; removing the old logs first"))
            .then_some(())
        },
    );
    wait_until("the returning node in the ISR", SETTLE, || {
        let parts = cluster.describe(TOPIC).ok()?;
        (parts[0].isr.len() == 3).then_some(())
    });
    acked.extend(runtime.block_on(produce_acked(&client, TOPIC, &phase_values("more", 10))));
    let reads = runtime.block_on(read_topic(&client, TOPIC, 1, SETTLE));
    let sent = |v: &[u8]| {
        let v = String::from_utf8_lossy(v);
        v.starts_with("new-") || v.starts_with("more-")
    };
    if let Err(e) = check_reads(&reads, &acked, sent) {
        cluster.dump_logs();
        panic!("the new topic: {e}");
    }
    let (end, records) = &reads[&0];
    assert_eq!(*end, 20);
    // Every replica, the returning one included, holds the new topic's records only.
    cluster.compare_replicas(TOPIC, 0, *end, records);
}
