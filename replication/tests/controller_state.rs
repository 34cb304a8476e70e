//! Properties of the controller's state machine alone: replica assignment, the election
//! policy under random fence/unfence/ISR changes, and the rkyv encodings.

use std::collections::BTreeMap;

use proptest::prelude::*;
use sluice_replication::controller::state::{
    assign_replicas, changes_for_fence, changes_for_unfence, elect_leader,
};
use sluice_replication::controller::{
    BrokerRegistration, ClusterState, Command, NodeId, Rejection,
};

fn registration(id: NodeId) -> BrokerRegistration {
    BrokerRegistration {
        id,
        incarnation: 1,
        client_host: "10.0.0.1".into(),
        client_port: 9092,
        shards: 4,
        shard_ports: Vec::new(),
        peer_host: "10.0.0.1".into(),
        peer_port: 19092,
    }
}

fn cluster(brokers: u32) -> ClusterState {
    let mut s = ClusterState::default();
    for b in 0..brokers {
        s.apply(&Command::RegisterBroker {
            registration: registration(b),
        })
        .expect("register");
        s.apply(&Command::UnfenceBroker {
            broker: b,
            incarnation: 1,
            changes: vec![],
        })
        .expect("unfence");
    }
    s
}

/// Every partition: ISR not empty, no repeats, only replicas; a leader is an unfenced ISR
/// member; a partition is offline only when the policy finds no leader.
fn check_invariants(s: &ClusterState) {
    for (name, t) in &s.topics {
        for (p, part) in t.partitions.iter().enumerate() {
            let at = format!("{name}-{p}: {part:?}");
            assert!(!part.isr.is_empty(), "{at}");
            assert!(part.isr.iter().all(|r| part.replicas.contains(r)), "{at}");
            let mut isr = part.isr.clone();
            isr.sort_unstable();
            isr.dedup();
            assert_eq!(isr.len(), part.isr.len(), "{at}");
            match part.leader {
                Some(l) => {
                    assert!(part.isr.contains(&l), "{at}");
                    assert!(s.is_live(l), "{at}: fenced leader");
                }
                None => assert_eq!(
                    elect_leader(
                        &part.replicas,
                        &part.isr,
                        |b| s.is_live(b),
                        t.unclean_election()
                    ),
                    None,
                    "{at}: offline although a leader is electable"
                ),
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Fence(u32),
    Unfence(u32),
    /// Leader of (topic, partition) shrinks its ISR to itself, or grows it to all live replicas.
    Alter(usize, usize, bool),
    /// The same with epochs one behind: must be rejected.
    StaleAlter(usize, usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u32..5).prop_map(Op::Fence),
        (0u32..5).prop_map(Op::Unfence),
        (0usize..3, 0usize..4, any::<bool>()).prop_map(|(t, p, g)| Op::Alter(t, p, g)),
        (0usize..3, 0usize..4).prop_map(|(t, p)| Op::StaleAlter(t, p)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn assignment_is_distinct_round_robin(
        n in 1usize..9,
        rf_seed in 0usize..100,
        partitions in 1u32..60,
        start in 0usize..1000,
    ) {
        let brokers: Vec<NodeId> = (0..n as u32).map(|b| b * 3 + 1).collect();
        let rf = 1 + rf_seed % n;
        let a = assign_replicas(&brokers, partitions, rf, start, 0);
        prop_assert_eq!(a.len(), partitions as usize);
        let mut leaders = BTreeMap::<NodeId, usize>::new();
        for r in &a {
            prop_assert_eq!(r.len(), rf);
            let mut d = r.clone();
            d.sort_unstable();
            d.dedup();
            prop_assert_eq!(d.len(), rf, "repeats in {:?}", r);
            prop_assert!(r.iter().all(|b| brokers.contains(b)));
            *leaders.entry(r[0]).or_default() += 1;
        }
        // Preferred leaders spread evenly: counts differ by at most one.
        let max = leaders.values().max().copied().unwrap_or(0);
        let min = if leaders.len() < n { 0 } else { leaders.values().min().copied().unwrap_or(0) };
        prop_assert!(max - min <= 1, "{:?}", leaders);
    }

    #[test]
    fn random_fencing_and_isr_changes_keep_the_invariants(
        topics in proptest::collection::vec((1u32..5, 1usize..4, any::<bool>(), 0usize..100), 1..4),
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        let mut s = cluster(5);
        let live: Vec<NodeId> = (0..5).collect();
        for (i, (partitions, rf, unclean, start)) in topics.iter().enumerate() {
            let mut configs = BTreeMap::new();
            if *unclean {
                configs.insert("unclean.leader.election.enable".to_string(), "true".to_string());
            }
            let assignment = assign_replicas(&live, *partitions, *rf, *start, 0);
            s.apply(&Command::CreateTopic { name: format!("t{i}"), configs, assignment })
                .expect("create");
        }
        check_invariants(&s);
        for op in ops {
            let before = s.clone();
            let result = match &op {
                Op::Fence(b) => {
                    if !s.is_live(*b) { continue; }
                    let changes = changes_for_fence(&s, *b);
                    s.apply(&Command::FenceBroker { broker: *b, changes })
                }
                Op::Unfence(b) => {
                    if s.is_live(*b) { continue; }
                    let changes = changes_for_unfence(&s, *b);
                    s.apply(&Command::UnfenceBroker { broker: *b, incarnation: 1, changes })
                }
                Op::Alter(t, p, _) | Op::StaleAlter(t, p) if s.topics.contains_key(&format!("t{t}")) => {
                    let name = format!("t{t}");
                    let Some(part) = s.partition(&name, *p as u32).cloned() else { continue };
                    let Some(leader) = part.leader else { continue };
                    let stale = matches!(op, Op::StaleAlter(..));
                    if stale && part.partition_epoch == 0 { continue; }
                    let new_isr = if matches!(op, Op::Alter(_, _, true)) {
                        part.replicas.iter().copied().filter(|r| s.is_live(*r)).collect()
                    } else {
                        vec![leader]
                    };
                    let r = s.apply(&Command::AlterPartition {
                        topic: name,
                        partition: *p as u32,
                        leader,
                        leader_epoch: part.leader_epoch,
                        partition_epoch: part.partition_epoch - u32::from(stale),
                        new_isr,
                    });
                    if stale {
                        prop_assert!(matches!(r, Err(Rejection::InvalidUpdateVersion { .. })), "{:?}", r);
                    }
                    r
                }
                _ => continue,
            };
            match result {
                // The leader's own decisions from current state always apply.
                Err(e) if !matches!(op, Op::StaleAlter(..)) => {
                    prop_assert!(false, "{:?} rejected: {}", op, e);
                }
                Err(_) => prop_assert_eq!(&s, &before, "a rejection changed the state"),
                Ok(()) => {}
            }
            check_invariants(&s);
            // Epochs never go back.
            for (name, t) in &s.topics {
                for (p, part) in t.partitions.iter().enumerate() {
                    let old = &before.topics[name].partitions[p];
                    prop_assert!(part.leader_epoch >= old.leader_epoch);
                    prop_assert!(part.partition_epoch >= old.partition_epoch);
                    if part.leader != old.leader {
                        prop_assert_eq!(part.leader_epoch, old.leader_epoch + 1);
                    }
                }
            }
        }
        // The state survives its archive byte for byte.
        let back = ClusterState::decode(&s.encode()).expect("decode");
        prop_assert_eq!(back, s);
    }
}

#[test]
fn commands_round_trip_and_garbage_is_refused() {
    let commands = vec![
        Command::RegisterBroker {
            registration: registration(3),
        },
        Command::CreateTopic {
            name: "orders".into(),
            configs: [(
                "unclean.leader.election.enable".to_string(),
                "true".to_string(),
            )]
            .into_iter()
            .collect(),
            assignment: vec![vec![0, 1, 2], vec![1, 2, 0]],
        },
        Command::AlterPartition {
            topic: "orders".into(),
            partition: 1,
            leader: 1,
            leader_epoch: 4,
            partition_epoch: 9,
            new_isr: vec![1, 2],
        },
    ];
    for c in commands {
        assert_eq!(Command::decode(&c.encode()).expect("decode"), c);
    }
    assert!(Command::decode(&[]).is_err());
    assert!(Command::decode(&[9, 1, 2, 3]).is_err(), "unknown version");
    assert!(Command::decode(&[1, 0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0]).is_err());
    assert!(ClusterState::decode(&[0xff; 40]).is_err());
}
