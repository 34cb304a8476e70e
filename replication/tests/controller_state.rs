//! Properties of the controller's state machine alone: replica assignment, the election
//! policy under random fence/unfence/ISR changes, and the rkyv encodings.

use std::collections::BTreeMap;

use proptest::prelude::*;
use sluice_replication::controller::state::{
    assign_replicas, changes_for_fence, changes_for_unfence, decommission_blocker, elect_leader,
    reassignment_steps,
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
            s.apply(&Command::CreateTopic { name: format!("t{i}"), id: i as u64 + 1, configs, assignment })
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
            id: 7,
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

/// The leader of `topic`-`p` adds every replica that is not in the ISR yet (as its fetchers
/// would once the replica caught up).
fn expand_isr(s: &mut ClusterState, topic: &str, p: u32) {
    let part = s.partition(topic, p).expect("partition").clone();
    let Some(leader) = part.leader else {
        return;
    };
    if part.replicas.iter().all(|r| part.isr.contains(r)) {
        return;
    }
    s.apply(&Command::AlterPartition {
        topic: topic.into(),
        partition: p,
        leader,
        leader_epoch: part.leader_epoch,
        partition_epoch: part.partition_epoch,
        new_isr: part.replicas.clone(),
    })
    .expect("expand the ISR");
}

#[test]
fn decommission_moves_every_replica_away_keeping_the_replication_factor() {
    let mut s = cluster(4);
    let assignment = assign_replicas(&[0, 1, 2, 3], 8, 2, 0, 0);
    s.apply(&Command::CreateTopic {
        name: "t".into(),
        id: 7,
        configs: BTreeMap::new(),
        assignment,
    })
    .expect("create");
    // Two replicas over four brokers leave two to move to; four replicas leave none.
    assert_eq!(decommission_blocker(&s, 2), None);
    let mut wide = s.clone();
    wide.apply(&Command::CreateTopic {
        name: "wide".into(),
        id: 7,
        configs: BTreeMap::new(),
        assignment: vec![vec![0, 1, 2, 3]],
    })
    .expect("create wide");
    assert!(matches!(
        decommission_blocker(&wide, 2),
        Some(Rejection::NoReassignmentTarget { broker: 2, ref topic, partition: 0, .. })
            if topic == "wide"
    ));

    s.apply(&Command::DecommissionBroker { broker: 2 })
        .expect("decommission");
    assert!(s.is_decommissioning(2));
    assert!(!s.assignable_brokers().contains(&2));
    let held = s.replicas_on(2);
    assert!(held > 0);
    // At most two under way at once; the rest wait.
    let mut steps_taken = 0;
    while s.replicas_on(2) > 0 {
        let steps = reassignment_steps(&s, 2);
        assert!(!steps.is_empty(), "no progress: {s:?}");
        let under_way = s
            .topics
            .values()
            .flat_map(|t| &t.partitions)
            .filter(|p| p.reassigning())
            .count();
        let starting = steps.iter().filter(|c| !c.adding.is_empty()).count();
        assert!(
            under_way + starting <= 2,
            "{under_way} + {starting} under way"
        );
        s.apply(&Command::Reassign { changes: steps })
            .expect("apply the steps");
        check_invariants(&s);
        for p in 0..8 {
            let part = s.partition("t", p).expect("partition");
            // Never the decommissioning broker as a new replica.
            assert!(!part.adding.contains(&2), "{part:?}");
            expand_isr(&mut s, "t", p);
        }
        steps_taken += 1;
        assert!(steps_taken < 100, "the decommission does not converge");
    }
    for p in 0..8 {
        let part = s.partition("t", p).expect("partition");
        assert_eq!(part.replicas.len(), 2, "{part:?}");
        assert!(!part.replicas.contains(&2), "{part:?}");
        assert!(!part.reassigning(), "{part:?}");
        assert_ne!(part.leader, Some(2), "{part:?}");
    }
    // A stale step (epochs moved on) changes nothing.
    let mut moving = cluster(3);
    moving
        .apply(&Command::CreateTopic {
            name: "m".into(),
            id: 7,
            configs: BTreeMap::new(),
            assignment: vec![vec![0, 1]],
        })
        .expect("create m");
    moving
        .apply(&Command::DecommissionBroker { broker: 0 })
        .expect("decommission 0");
    let start = reassignment_steps(&moving, 8);
    assert_eq!(start.len(), 1);
    assert_eq!(start[0].adding, vec![2]);
    assert_eq!(start[0].removing, vec![0]);
    moving
        .apply(&Command::Reassign {
            changes: start.clone(),
        })
        .expect("start");
    let before = moving.clone();
    assert!(matches!(
        moving.apply(&Command::Reassign { changes: start }),
        Err(Rejection::InvalidUpdateVersion { .. })
    ));
    assert_eq!(moving, before);
    // Not finished until the new replica is in sync; then the leader moves off broker 0.
    assert!(reassignment_steps(&moving, 8).is_empty());
    expand_isr(&mut moving, "m", 0);
    let finish = reassignment_steps(&moving, 8);
    assert_eq!(finish.len(), 1);
    moving
        .apply(&Command::Reassign { changes: finish })
        .expect("finish");
    let part = moving.partition("m", 0).expect("partition");
    assert_eq!(part.replicas, vec![1, 2]);
    assert_eq!(part.isr, vec![1, 2]);
    assert_eq!(part.leader, Some(1));
    assert_eq!(part.leader_epoch, 1);
    // A restart keeps the mark.
    moving
        .apply(&Command::FenceBroker {
            broker: 0,
            changes: vec![],
        })
        .expect("fence");
    let mut again = registration(0);
    again.incarnation = 2;
    moving
        .apply(&Command::RegisterBroker {
            registration: again,
        })
        .expect("register again");
    assert!(moving.is_decommissioning(0));
}
