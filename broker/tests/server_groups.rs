//! The consumer group coordinator on the raw wire against the real broker (2 shards, so
//! group requests are forwarded to the coordinator shard): join, sync, heartbeat and leave
//! with generation checks; session-timeout eviction; offset commits and fetches; committed
//! offsets back after SIGKILL and restart; typed refusals that leave the group working.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Broker;
use common::wire::Conn;
use sluice_proto::protocol::*;

const GROUP: &str = "billing";
const SESSION_MS: u32 = 1000;

fn subscription() -> Bytes {
    ConsumerSubscription {
        topics: vec!["orders".into()],
        owned: vec![],
        user_data: Bytes::new(),
    }
    .to_bytes()
}

fn join_request(member_id: &str, protocols: &[&str]) -> JoinGroupRequest {
    JoinGroupRequest {
        group: GROUP.into(),
        session_timeout_ms: SESSION_MS,
        rebalance_timeout_ms: 5000,
        member_id: member_id.into(),
        client_id: "test-consumer".into(),
        protocol_type: PROTOCOL_TYPE_CONSUMER.into(),
        protocols: protocols
            .iter()
            .map(|name| JoinGroupProtocol {
                name: (*name).into(),
                metadata: subscription(),
            })
            .collect(),
    }
}

fn join(conn: &mut Conn, member_id: &str) -> JoinGroupResponse {
    conn.call(
        ApiKey::JoinGroup,
        &join_request(member_id, &[ASSIGNOR_RANGE, ASSIGNOR_ROUND_ROBIN]),
    )
}

fn assignment(partitions: &[u32]) -> Bytes {
    ConsumerAssignment {
        partitions: vec![ConsumerTopicPartitions {
            topic: "orders".into(),
            partitions: partitions.to_vec(),
        }],
        user_data: Bytes::new(),
    }
    .to_bytes()
}

fn sync_request(generation: i32, member: &str, plan: &[(&str, &[u32])]) -> SyncGroupRequest {
    SyncGroupRequest {
        group: GROUP.into(),
        generation_id: generation,
        member_id: member.into(),
        assignments: plan
            .iter()
            .map(|(m, parts)| SyncGroupAssignment {
                member_id: (*m).into(),
                assignment: assignment(parts),
            })
            .collect(),
    }
}

fn heartbeat(conn: &mut Conn, generation: i32, member: &str) -> ErrorCode {
    let r: HeartbeatResponse = conn.call(
        ApiKey::Heartbeat,
        &HeartbeatRequest {
            group: GROUP.into(),
            generation_id: generation,
            member_id: member.into(),
        },
    );
    r.error
}

fn commit(
    conn: &mut Conn,
    generation: i32,
    member: &str,
    offsets: &[(u32, i64)],
) -> Vec<ErrorCode> {
    let r: OffsetCommitResponse = conn.call(
        ApiKey::OffsetCommit,
        &OffsetCommitRequest {
            group: GROUP.into(),
            generation_id: generation,
            member_id: member.into(),
            topics: vec![OffsetCommitTopic {
                topic: "orders".into(),
                partitions: offsets
                    .iter()
                    .map(|&(partition, offset)| OffsetCommitPartition {
                        partition,
                        offset,
                        metadata: format!("m{offset}"),
                    })
                    .collect(),
            }],
        },
    );
    r.topics[0].partitions.iter().map(|p| p.error).collect()
}

/// Committed offsets of `orders` partitions 0..4 (`-1`: none).
fn fetch_offsets(conn: &mut Conn) -> Vec<i64> {
    let r: OffsetFetchResponse = conn.call(
        ApiKey::OffsetFetch,
        &OffsetFetchRequest {
            group: GROUP.into(),
            topics: vec![OffsetFetchTopic {
                topic: "orders".into(),
                partitions: vec![0, 1, 2, 3],
            }],
        },
    );
    assert_eq!(r.error, ErrorCode::NONE, "{}", r.message);
    r.topics[0].partitions.iter().map(|p| p.offset).collect()
}

/// Heartbeats until the coordinator says a rebalance is open (a new member's join arrived).
fn await_rebalance(conn: &mut Conn, generation: i32, member: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let e = heartbeat(conn, generation, member);
        if e == ErrorCode::REBALANCE_IN_PROGRESS {
            return;
        }
        assert_eq!(e, ErrorCode::NONE);
        assert!(Instant::now() < deadline, "no rebalance signalled");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn describe(conn: &mut Conn) -> DescribedGroup {
    let r: DescribeGroupsResponse = conn.call(
        ApiKey::DescribeGroups,
        &DescribeGroupsRequest {
            groups: vec![GROUP.into()],
        },
    );
    r.groups.into_iter().next().expect("one group")
}

/// Two members through two generations, a third joining, bad input at each step, commits,
/// and leaving; the group keeps working after every refusal.
#[test]
fn members_join_sync_heartbeat_commit_and_leave_with_generation_checks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path(), 2);
    let mut admin = Conn::connect(broker.addr);
    assert_eq!(admin.create_topic("orders", 4, &[]).error, ErrorCode::NONE);

    // FindCoordinator names a real shard with its own address; requests through any shard
    // reach it.
    let coord: FindCoordinatorResponse = admin.call(
        ApiKey::FindCoordinator,
        &FindCoordinatorRequest {
            group: GROUP.into(),
        },
    );
    assert_eq!(coord.error, ErrorCode::NONE);
    assert!(usize::from(coord.shard) < 2);
    let mut a = Conn::connect_host(&coord.host, coord.port);
    let mut b = Conn::connect(broker.addr);
    let mut c = Conn::connect(broker.addr);

    // Generation 1: a alone, leader of itself.
    let ja = join(&mut a, "");
    assert_eq!(ja.error, ErrorCode::NONE, "{}", ja.message);
    assert_eq!(ja.generation_id, 1);
    assert_eq!(ja.leader_id, ja.member_id);
    assert_eq!(ja.protocol_name, ASSIGNOR_RANGE);
    assert_eq!(ja.members.len(), 1);
    let a_id = ja.member_id.clone();
    let s: SyncGroupResponse = a.call(
        ApiKey::SyncGroup,
        &sync_request(1, &a_id, &[(&a_id, &[0, 1, 2, 3])]),
    );
    assert_eq!(s.error, ErrorCode::NONE);
    assert_eq!(s.assignment, assignment(&[0, 1, 2, 3]));
    assert_eq!(heartbeat(&mut a, 1, &a_id), ErrorCode::NONE);
    assert_eq!(
        commit(&mut a, 1, &a_id, &[(0, 10), (3, 30)]),
        vec![ErrorCode::NONE; 2]
    );
    assert_eq!(fetch_offsets(&mut admin), vec![10, -1, -1, 30]);

    // Bad input: a member offering only an unknown protocol is refused; the group is as it was.
    let bad: JoinGroupResponse =
        c.call(ApiKey::JoinGroup, &join_request("", &["no-such-assignor"]));
    assert_eq!(
        bad.error,
        ErrorCode::INCONSISTENT_GROUP_PROTOCOL,
        "{}",
        bad.message
    );
    let wrong_type = JoinGroupRequest {
        protocol_type: "connect".into(),
        ..join_request("", &[ASSIGNOR_RANGE])
    };
    let bad: JoinGroupResponse = c.call(ApiKey::JoinGroup, &wrong_type);
    assert_eq!(bad.error, ErrorCode::INCONSISTENT_GROUP_PROTOCOL);
    let bad: JoinGroupResponse = c.call(
        ApiKey::JoinGroup,
        &join_request("ghost-1", &[ASSIGNOR_RANGE]),
    );
    assert_eq!(bad.error, ErrorCode::UNKNOWN_MEMBER_ID);
    assert_eq!(heartbeat(&mut a, 1, &a_id), ErrorCode::NONE);
    assert_eq!(describe(&mut admin).state, group_state::STABLE);

    // b joins (only roundrobin in common with a): a round opens; a learns it by heartbeat.
    let b_join = b.send(
        ApiKey::JoinGroup,
        &join_request("", &[ASSIGNOR_ROUND_ROBIN]),
    );
    await_rebalance(&mut a, 1, &a_id);
    // During the round, a may still commit its generation-1 partitions.
    assert_eq!(commit(&mut a, 1, &a_id, &[(1, 11)]), vec![ErrorCode::NONE]);
    let ja = join(&mut a, &a_id);
    let jb = b.read::<JoinGroupResponse>();
    assert_eq!(jb.header.correlation_id, b_join);
    let jb = jb.body.expect("join body");
    assert_eq!((ja.error, jb.error), (ErrorCode::NONE, ErrorCode::NONE));
    assert_eq!((ja.generation_id, jb.generation_id), (2, 2));
    assert_eq!(
        ja.protocol_name, ASSIGNOR_ROUND_ROBIN,
        "the leader's first common choice"
    );
    assert_eq!(ja.leader_id, a_id, "the leader stays");
    assert_eq!(ja.members.len(), 2);
    assert!(jb.members.is_empty(), "only the leader sees the members");
    let b_id = jb.member_id.clone();

    // Stale generation everywhere: typed errors.
    assert_eq!(heartbeat(&mut a, 1, &a_id), ErrorCode::ILLEGAL_GENERATION);
    assert_eq!(
        commit(&mut a, 1, &a_id, &[(0, 12)]),
        vec![ErrorCode::ILLEGAL_GENERATION]
    );
    assert_eq!(
        heartbeat(&mut b, 2, "ghost-2"),
        ErrorCode::UNKNOWN_MEMBER_ID
    );

    // b's sync waits for the leader's. The leader first gives partition 0 to both: refused.
    let b_sync = b.send(ApiKey::SyncGroup, &sync_request(2, &b_id, &[]));
    let bad: SyncGroupResponse = a.call(
        ApiKey::SyncGroup,
        &sync_request(2, &a_id, &[(&a_id, &[0, 1]), (&b_id, &[0, 2, 3])]),
    );
    assert_eq!(bad.error, ErrorCode::INVALID_REQUEST);
    assert!(bad.message.contains("orders/0"), "{}", bad.message);
    let good: SyncGroupResponse = a.call(
        ApiKey::SyncGroup,
        &sync_request(2, &a_id, &[(&a_id, &[0, 1]), (&b_id, &[2, 3])]),
    );
    assert_eq!(good.error, ErrorCode::NONE);
    assert_eq!(good.assignment, assignment(&[0, 1]));
    let sb = b.read::<SyncGroupResponse>();
    assert_eq!(sb.header.correlation_id, b_sync);
    assert_eq!(sb.body.expect("sync body").assignment, assignment(&[2, 3]));

    // Commits: own partitions only.
    assert_eq!(
        commit(&mut b, 2, &b_id, &[(2, 22), (3, 33)]),
        vec![ErrorCode::NONE; 2]
    );
    assert_eq!(
        commit(&mut b, 2, &b_id, &[(0, 99), (2, 23)]),
        vec![ErrorCode::PARTITION_NOT_ASSIGNED, ErrorCode::NONE]
    );
    assert_eq!(
        commit(&mut a, 2, "ghost-3", &[(0, 1)]),
        vec![ErrorCode::UNKNOWN_MEMBER_ID]
    );
    assert_eq!(
        commit(&mut a, -1, "", &[(0, 1)]),
        vec![ErrorCode::NON_EMPTY_GROUP]
    );
    assert_eq!(fetch_offsets(&mut admin), vec![10, 11, 23, 33]);

    // Describe decodes to the assignments; list shows the group.
    let d = describe(&mut admin);
    assert_eq!(d.error, ErrorCode::NONE);
    assert_eq!(
        (d.state.as_str(), d.generation_id),
        (group_state::STABLE, 2)
    );
    assert_eq!(d.protocol, ASSIGNOR_ROUND_ROBIN);
    assert!(
        d.members
            .iter()
            .all(|m| m.client_host == "127.0.0.1" && m.client_id == "test-consumer"),
        "{d:?}"
    );
    let mut owned: Vec<u32> = d
        .members
        .iter()
        .flat_map(|m| {
            ConsumerAssignment::from_bytes(&m.assignment)
                .expect("decodes")
                .partitions
        })
        .flat_map(|tp| tp.partitions)
        .collect();
    owned.sort_unstable();
    assert_eq!(owned, vec![0, 1, 2, 3]);
    let l: ListGroupsResponse = admin.call(ApiKey::ListGroups, &ListGroupsRequest {});
    assert!(
        l.groups.iter().any(|g| g.group == GROUP && g.members == 2),
        "{l:?}"
    );
    let del: DeleteGroupsResponse = admin.call(
        ApiKey::DeleteGroups,
        &DeleteGroupsRequest {
            groups: vec![GROUP.into()],
        },
    );
    assert_eq!(del.groups[0].error, ErrorCode::NON_EMPTY_GROUP);

    // A third member joins: generation 3 with all three.
    let c_join = c.send(
        ApiKey::JoinGroup,
        &join_request("", &[ASSIGNOR_ROUND_ROBIN]),
    );
    await_rebalance(&mut a, 2, &a_id);
    let b_join = b.send(
        ApiKey::JoinGroup,
        &join_request(&b_id, &[ASSIGNOR_ROUND_ROBIN]),
    );
    let ja = join(&mut a, &a_id);
    assert_eq!(ja.generation_id, 3);
    assert_eq!(ja.members.len(), 3);
    let jb = b.read::<JoinGroupResponse>();
    assert_eq!(jb.header.correlation_id, b_join);
    let jc = c.read::<JoinGroupResponse>();
    assert_eq!(jc.header.correlation_id, c_join);
    assert_eq!(jc.body.as_ref().expect("c").generation_id, 3);
    let c_id = jc.body.expect("c").member_id;

    // b leaves: a new round; a and c rejoin into generation 4.
    let left: LeaveGroupResponse = b.call(
        ApiKey::LeaveGroup,
        &LeaveGroupRequest {
            group: GROUP.into(),
            member_id: b_id.clone(),
        },
    );
    assert_eq!(left.error, ErrorCode::NONE);
    let c_join = c.send(
        ApiKey::JoinGroup,
        &join_request(&c_id, &[ASSIGNOR_ROUND_ROBIN]),
    );
    let ja = join(&mut a, &a_id);
    assert_eq!(ja.generation_id, 4);
    let member_ids: Vec<&str> = ja.members.iter().map(|m| m.member_id.as_str()).collect();
    assert_eq!(member_ids.len(), 2);
    assert!(member_ids.contains(&a_id.as_str()) && member_ids.contains(&c_id.as_str()));
    let jc = c.read::<JoinGroupResponse>();
    assert_eq!(jc.header.correlation_id, c_join);
    assert_eq!(jc.body.expect("c").generation_id, 4);
}

/// A member that stops heartbeating is evicted after its session timeout and the rest of
/// the group rebalances without it.
#[test]
fn session_timeout_evicts_a_silent_member() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path(), 2);
    let mut a = Conn::connect(broker.addr);
    let mut b = Conn::connect(broker.addr);
    assert_eq!(a.create_topic("orders", 4, &[]).error, ErrorCode::NONE);
    let a_id = join(&mut a, "").member_id;
    let b_join = b.send(ApiKey::JoinGroup, &join_request("", &[ASSIGNOR_RANGE]));
    await_rebalance(&mut a, 1, &a_id);
    let ja = join(&mut a, &a_id);
    let jb = b.read::<JoinGroupResponse>().body.expect("b joined");
    assert_eq!(jb.generation_id, ja.generation_id);
    let _ = b_join;
    let b_sync = b.send(
        ApiKey::SyncGroup,
        &sync_request(ja.generation_id, &jb.member_id, &[]),
    );
    let s: SyncGroupResponse = a.call(
        ApiKey::SyncGroup,
        &sync_request(
            ja.generation_id,
            &a_id,
            &[(&a_id, &[0, 1]), (&jb.member_id, &[2, 3])],
        ),
    );
    assert_eq!(s.error, ErrorCode::NONE);
    assert_eq!(b.read::<SyncGroupResponse>().header.correlation_id, b_sync);

    // b goes silent; a keeps heartbeating and is told to rejoin once b is evicted.
    let started = Instant::now();
    let evicted_after = loop {
        let e = heartbeat(&mut a, ja.generation_id, &a_id);
        if e == ErrorCode::REBALANCE_IN_PROGRESS {
            break started.elapsed();
        }
        assert_eq!(e, ErrorCode::NONE);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "b was never evicted"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        evicted_after >= Duration::from_millis(u64::from(SESSION_MS) - 200),
        "evicted after {evicted_after:?}, before its session timeout"
    );
    let again = join(&mut a, &a_id);
    assert_eq!(again.generation_id, ja.generation_id + 1);
    assert_eq!(again.members.len(), 1, "b is gone");
    assert_eq!(
        heartbeat(&mut b, ja.generation_id, &jb.member_id),
        ErrorCode::UNKNOWN_MEMBER_ID
    );
}

/// Committed offsets and the membership are durable: after SIGKILL and a restart the offsets
/// come back and the member keeps its id, generation and partitions (until its session times
/// out); a deleted group's offsets stay deleted; a group whose members left comes back empty.
#[test]
fn committed_offsets_survive_sigkill_and_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut broker = Broker::start(dir.path(), 2);
    let mut conn = Conn::connect(broker.addr);
    assert_eq!(conn.create_topic("orders", 4, &[]).error, ErrorCode::NONE);
    // A session long enough to outlast the restarts below.
    let ja: JoinGroupResponse = conn.call(
        ApiKey::JoinGroup,
        &JoinGroupRequest {
            session_timeout_ms: 60_000,
            ..join_request("", &[ASSIGNOR_RANGE])
        },
    );
    let s: SyncGroupResponse = conn.call(
        ApiKey::SyncGroup,
        &sync_request(
            ja.generation_id,
            &ja.member_id,
            &[(&ja.member_id, &[0, 1, 2, 3])],
        ),
    );
    assert_eq!(s.error, ErrorCode::NONE);
    for round in 1..=20i64 {
        let offsets: Vec<(u32, i64)> = (0..4).map(|p| (p, round * 10 + i64::from(p))).collect();
        assert_eq!(
            commit(&mut conn, ja.generation_id, &ja.member_id, &offsets),
            vec![ErrorCode::NONE; 4]
        );
    }
    // A second group, committed by an admin commit, then deleted.
    let other = OffsetCommitRequest {
        group: "gone".into(),
        generation_id: -1,
        member_id: String::new(),
        topics: vec![OffsetCommitTopic {
            topic: "orders".into(),
            partitions: vec![OffsetCommitPartition {
                partition: 0,
                offset: 5,
                metadata: String::new(),
            }],
        }],
    };
    let r: OffsetCommitResponse = conn.call(ApiKey::OffsetCommit, &other);
    assert_eq!(r.topics[0].partitions[0].error, ErrorCode::NONE);
    let del: DeleteGroupsResponse = conn.call(
        ApiKey::DeleteGroups,
        &DeleteGroupsRequest {
            groups: vec!["gone".into(), "never-existed".into()],
        },
    );
    assert_eq!(
        del.groups.iter().map(|g| g.error).collect::<Vec<_>>(),
        vec![ErrorCode::NONE, ErrorCode::GROUP_ID_NOT_FOUND]
    );

    broker.kill9();
    let mut broker = Broker::start(dir.path(), 2);
    let mut conn = Conn::connect(broker.addr);
    assert_eq!(fetch_offsets(&mut conn), vec![200, 201, 202, 203]);
    let r: OffsetFetchResponse = conn.call(
        ApiKey::OffsetFetch,
        &OffsetFetchRequest {
            group: GROUP.into(),
            topics: vec![],
        },
    );
    assert_eq!(r.topics.len(), 1);
    assert_eq!(r.topics[0].partitions[2].metadata, "m202");
    let d = describe(&mut conn);
    assert_eq!(
        (d.error, d.state.as_str(), d.generation_id),
        (ErrorCode::NONE, group_state::STABLE, ja.generation_id)
    );
    assert_eq!(
        d.members
            .iter()
            .map(|m| m.member_id.as_str())
            .collect::<Vec<_>>(),
        vec![ja.member_id.as_str()]
    );
    // The member carries on where it was: heartbeats, its assignment, its commits.
    assert_eq!(
        heartbeat(&mut conn, ja.generation_id, &ja.member_id),
        ErrorCode::NONE
    );
    let s: SyncGroupResponse = conn.call(
        ApiKey::SyncGroup,
        &sync_request(ja.generation_id, &ja.member_id, &[]),
    );
    assert_eq!(s.error, ErrorCode::NONE, "{}", s.message);
    assert_eq!(s.assignment, d.members[0].assignment);
    assert_eq!(
        commit(&mut conn, ja.generation_id, &ja.member_id, &[(3, 213)]),
        vec![ErrorCode::NONE]
    );
    let r: OffsetFetchResponse = conn.call(
        ApiKey::OffsetFetch,
        &OffsetFetchRequest {
            group: "gone".into(),
            topics: vec![],
        },
    );
    assert!(r.topics.is_empty(), "deleted offsets came back: {r:?}");
    // The internal topic is there, compacted.
    let md = conn.metadata();
    let internal = md
        .topics
        .iter()
        .find(|t| t.name == "__consumer_offsets")
        .expect("internal topic");
    assert_eq!(internal.partitions.len(), 16);
    // Clients may neither write to it nor delete it.
    let refused = conn.produce(
        "__consumer_offsets",
        0,
        ACKS_ALL,
        common::wire::batch(&[b"forged"], 1_700_000_000_000),
    );
    assert_eq!(
        refused.error,
        ErrorCode::INVALID_TOPIC,
        "{}",
        refused.message
    );
    let refused: DeleteTopicsResponse = conn.call(
        ApiKey::DeleteTopics,
        &DeleteTopicsRequest {
            names: vec!["__consumer_offsets".into()],
        },
    );
    assert_eq!(refused.topics[0].error, ErrorCode::INVALID_TOPIC);
    assert_eq!(fetch_offsets(&mut conn), vec![200, 201, 202, 213]);
    // The member leaves: the group is empty, and stays so across another SIGKILL.
    let left: LeaveGroupResponse = conn.call(
        ApiKey::LeaveGroup,
        &LeaveGroupRequest {
            group: GROUP.into(),
            member_id: ja.member_id.clone(),
        },
    );
    assert_eq!(left.error, ErrorCode::NONE);
    let emptied = describe(&mut conn);
    assert_eq!(emptied.state, group_state::EMPTY);
    broker.kill9();
    let broker = Broker::start(dir.path(), 2);
    let mut conn = Conn::connect(broker.addr);
    let d = describe(&mut conn);
    assert_eq!(
        (d.state.as_str(), d.generation_id),
        (group_state::EMPTY, emptied.generation_id),
        "{d:?}"
    );
    assert!(d.members.is_empty());
    assert_eq!(fetch_offsets(&mut conn), vec![200, 201, 202, 213]);
    // The old member is unknown now; a new one joins a later generation.
    assert_eq!(
        heartbeat(&mut conn, ja.generation_id, &ja.member_id),
        ErrorCode::UNKNOWN_MEMBER_ID
    );
    let again = join(&mut conn, "");
    assert_eq!(again.error, ErrorCode::NONE);
    assert!(again.generation_id > emptied.generation_id);
}
