//! `sluice group list` with a broker down, on real `sluice serve --cluster` processes: three
//! nodes, groups with committed offsets spread over the coordinators. With every node up the
//! listing has every group and no warning. Right after the coordinator of some of them is
//! SIGKILLed (before its broker session expires, so the metadata still names it), the command
//! prints the groups of the two nodes that answered, one warning naming the dead node on
//! stderr, and exits 0. With every node down it exits 1.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, ClusterOptions, wait_until};
use common::wire::Conn;
use sluice_proto::protocol::{ApiKey, ErrorCode, FindCoordinatorRequest, FindCoordinatorResponse};

const TOPIC: &str = "listed";
/// Groups created (each with committed offsets, no members).
const GROUPS: usize = 8;
/// Longest wait for a group's coordinator to accept its offsets.
const COORDINATOR_TIMEOUT: Duration = Duration::from_secs(30);

fn group(i: usize) -> String {
    format!("list-{i}")
}

/// The groups `sluice group list` printed (first column of each line).
fn listed(stdout: &str) -> BTreeSet<String> {
    stdout
        .lines()
        .filter_map(|l| l.split('\t').next())
        .filter(|g| !g.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn group_list_reports_the_groups_of_the_brokers_that_answered() {
    let started = Instant::now();
    let mut cluster = Cluster::start(ClusterOptions::new(3));
    cluster.wait_for_brokers(Duration::from_secs(60));
    cluster.create_topic(TOPIC, 1, 3, &[]);
    cluster.wait_for_leader(TOPIC, 0, Duration::from_secs(30));

    let mut coordinators: BTreeMap<String, u32> = BTreeMap::new();
    for i in 0..GROUPS {
        let g = group(i);
        wait_until(
            &format!("offsets of {g} committed"),
            COORDINATOR_TIMEOUT,
            || {
                let (code, out, err) = cluster.cli(&[
                    "group",
                    "reset-offsets",
                    &g,
                    "--topic",
                    TOPIC,
                    "--to-earliest",
                ]);
                if code != 0 {
                    eprintln!("reset-offsets {g}: exit {code}: {out}{err}");
                    std::thread::sleep(Duration::from_millis(200));
                }
                (code == 0).then_some(())
            },
        );
        let found: FindCoordinatorResponse = Conn::connect(cluster.nodes[0].client_addr()).call(
            ApiKey::FindCoordinator,
            &FindCoordinatorRequest { group: g.clone() },
        );
        assert_eq!(found.error, ErrorCode::NONE, "{}", found.message);
        coordinators.insert(g, found.node_id);
    }
    let all: BTreeSet<String> = coordinators.keys().cloned().collect();
    eprintln!("coordinators: {coordinators:?}");

    let (code, out, err) = cluster.cli(&["group", "list"]);
    assert_eq!(code, 0, "group list with every node up: {out}{err}");
    assert_eq!(listed(&out), all, "every group listed: {out}");
    assert!(
        !err.contains("warning"),
        "no warning with every node up: {err}"
    );

    // The node coordinating the most groups (at least one) dies.
    let mut per_node: BTreeMap<u32, usize> = BTreeMap::new();
    for node in coordinators.values() {
        *per_node.entry(*node).or_default() += 1;
    }
    let (&victim, _) = per_node
        .iter()
        .max_by_key(|(_, n)| **n)
        .expect("some coordinator");
    let victim_addr = cluster.nodes[victim as usize].client_addr().to_string();
    let expected: BTreeSet<String> = coordinators
        .iter()
        .filter(|(_, node)| **node != victim)
        .map(|(g, _)| g.clone())
        .collect();
    cluster.kill(victim as usize);
    let killed_at = Instant::now();
    let (code, out, err) = cluster.cli(&["group", "list"]);
    eprintln!(
        "group list {:?} after node {victim} was killed: exit {code}\n{out}{err}",
        killed_at.elapsed()
    );
    assert_eq!(code, 0, "two of three nodes answered: {out}{err}");
    assert_eq!(
        listed(&out),
        expected,
        "the groups of the nodes that answered"
    );
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warnings.len(), 1, "one warning, for the dead node: {err}");
    assert!(
        warnings[0].contains(&victim_addr),
        "the warning names the dead node {victim_addr}: {err}"
    );

    // No node answers: exit 1, nothing listed.
    let all_brokers = cluster.brokers();
    for i in 0..3 {
        if i != victim as usize {
            cluster.kill(i);
        }
    }
    let (code, out, err) =
        common::cluster::run_cli(None, &["group", "list", "--brokers", &all_brokers]);
    assert_eq!(code, 1, "no node answered: {out}{err}");
    assert!(listed(&out).is_empty(), "{out}");
    eprintln!("test took {:?}", started.elapsed());
}
