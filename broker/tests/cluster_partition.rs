//! A network partition isolates the leader (issue 6's third acceptance test), with network
//! namespaces (`common::netns`: a bridge, one namespace per node, veth pairs; the test makes
//! and removes them): three `sluice serve --cluster` processes in namespaces 0..3, the client
//! in namespace 3. One partition with three replicas (`min.insync.replicas` at its default
//! 1: the committed-ISR rule alone must keep the minority leader from acknowledging).
//!
//! The partition's leader is cut off from the other two brokers (it still reaches the
//! client). acks=all writes sent straight to it are not acknowledged, before and after the
//! majority elects a new leader, which acknowledges writes meanwhile. After the heal the old
//! leader follows the new one and is back in the ISR; every acknowledged record is read back
//! exactly once at its offset, nothing the minority took is left in any replica, and the
//! replicas' files agree offset by offset below the high watermark. The namespaces and the
//! bridge are gone afterwards.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{
    Cluster, ClusterOptions, check_phases, produce_acked, read_raw_produce, read_replica_log,
    send_raw_produce, test_client_config, wait_follows, wait_until,
};
use common::netns::{Net, link_names, netns_names};
use common::wire::Conn;
use sluice_client::Client;

const TOPIC: &str = "partitioned";
const NODES: usize = 3;
/// The client's namespace.
const CLIENT_NS: usize = 3;
const RECORDS_PER_PHASE: usize = 100;
/// Longest wait for the majority to elect a new leader.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the broker may hold an acks=all Produce (its `timeout_ms`).
const PRODUCE_TIMEOUT_MS: u32 = 5_000;

fn values(phase: &str) -> Vec<String> {
    (0..RECORDS_PER_PHASE)
        .map(|i| format!("{phase}-{i:04}"))
        .collect()
}

/// An acks=all write straight to `node`, from the calling thread's namespace: must not be
/// acknowledged.
fn write_to_minority(cluster: &Cluster, node: usize, value: &str) -> String {
    let mut conn = Conn::connect(cluster.nodes[node].client_addr());
    conn.stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    send_raw_produce(&mut conn, TOPIC, 0, value, PRODUCE_TIMEOUT_MS);
    match read_raw_produce(&mut conn) {
        Ok(offset) => panic!("the isolated leader {node} acknowledged {value} at offset {offset}"),
        Err(e) => e,
    }
}

#[test]
fn an_isolated_leader_acknowledges_nothing_and_the_cluster_converges_after_the_heal() {
    let started = Instant::now();
    let net = Net::new(NODES + 1).unwrap_or_else(|e| panic!("network namespace harness: {e}"));
    let names = net.names();
    let mut options = ClusterOptions::new(NODES);
    options.netns = Some(
        (0..NODES)
            .map(|i| (net.ns(i).to_owned(), net.ip(i)))
            .collect(),
    );
    options.client_netns = Some(net.ns(CLIENT_NS).to_owned());
    let mut cluster = Cluster::start(options);
    cluster.wait_for_brokers(Duration::from_secs(60));
    cluster.create_topic(TOPIC, 1, 3, &[]);
    let (old, old_epoch) = cluster.wait_for_leader(TOPIC, 0, FAILOVER_TIMEOUT);
    let old = old as usize;
    let majority: Vec<usize> = (0..NODES).filter(|&i| i != old).collect();

    let (end, records) = net.run_in(CLIENT_NS, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let all = cluster.brokers();
        let client = runtime.block_on(async {
            Client::connect(test_client_config(&all, "cluster-partition"))
                .await
                .expect("connect")
        });
        let mut acked = runtime.block_on(produce_acked(&client, TOPIC, &values("before")));

        for &other in &majority {
            net.partition(old, other).expect("cut the leader off");
        }
        let cut_at = Instant::now();
        let refused = write_to_minority(&cluster, old, "minority-0");
        eprintln!("write to the isolated leader {old} right after the cut: {refused}");

        let (new, new_epoch) = wait_until(
            &format!("the majority elects a leader other than node {old} (epoch {old_epoch})"),
            FAILOVER_TIMEOUT,
            || {
                majority
                    .iter()
                    .filter_map(|&i| cluster.partition_at(i, TOPIC, 0))
                    .find(|pm| {
                        pm.leader >= 0 && pm.leader as usize != old && pm.leader_epoch > old_epoch
                    })
                    .map(|pm| (pm.leader as usize, pm.leader_epoch))
            },
        );
        eprintln!(
            "node {new} leads (epoch {new_epoch}) {:?} after the cut",
            cut_at.elapsed()
        );
        // Through the majority only: the isolated node still answers metadata, with its own
        // stale view.
        let majority_brokers: Vec<String> = majority
            .iter()
            .map(|&i| cluster.nodes[i].client_addr().to_string())
            .collect();
        let majority_client = runtime.block_on(async {
            Client::connect(test_client_config(
                &majority_brokers.join(","),
                "cluster-partition-majority",
            ))
            .await
            .expect("connect to the majority")
        });
        acked.extend(runtime.block_on(produce_acked(&majority_client, TOPIC, &values("during"))));
        let refused = write_to_minority(&cluster, old, "minority-1");
        eprintln!("write to the isolated leader {old} after the election: {refused}");

        net.heal().expect("heal");
        wait_follows(&cluster, TOPIC, old, new, Duration::from_secs(60));
        acked.extend(runtime.block_on(produce_acked(&client, TOPIC, &values("after"))));
        check_phases(
            &cluster,
            &runtime,
            &client,
            TOPIC,
            &acked,
            RECORDS_PER_PHASE,
        )
    });

    let ends = cluster.compare_replicas(TOPIC, 0, end, &records);
    for i in 0..NODES {
        let log = read_replica_log(&cluster.nodes[i].data_dir, TOPIC, 0, u64::MAX)
            .unwrap_or_else(|e| panic!("node {i}: {e}"));
        for (offset, epoch, value) in &log.records {
            assert!(
                !value.starts_with(b"minority-"),
                "node {i} still holds {:?} at offset {offset} (epoch {epoch})",
                String::from_utf8_lossy(value)
            );
        }
    }
    eprintln!("replica log ends {ends:?}");

    drop(cluster);
    drop(net);
    let namespaces = netns_names().expect("ip netns list");
    let links = link_names().expect("ip link");
    for name in &names {
        assert!(!namespaces.contains(name), "namespace {name} left behind");
        assert!(!links.contains(name), "link {name} left behind");
    }
    eprintln!("took {:?}", started.elapsed());
}
