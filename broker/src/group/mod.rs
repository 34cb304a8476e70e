//! The consumer group coordinator. A group belongs to partition `crc32c(group) % N` of the
//! internal compacted topic `__consumer_offsets`; the shard owning that partition
//! coordinates it: it runs the group's state machine (`state.rs`), writes committed offsets
//! as records to that partition (acknowledged once durable), keeps them in memory, and
//! rebuilds them from the partition at start-up. Other shards forward group requests to it
//! (`ShardMsg::Group`).
//!
//! It also writes each group's membership as a group record (`record.rs`) when a
//! generation's assignments are handed out (before any sync is answered) and when the group
//! becomes empty, so a restarted broker or a new coordinator restores the members.
//!
//! Cluster mode (`Shard::view` installed): the coordinator of a group is the node that leads
//! the group's `__consumer_offsets` partition, on the shard that owns that partition there.
//! [`on_view`] takes up the groups of each offsets partition this node starts leading
//! (reading the partition to its log end, in a background task; requests meanwhile get
//! `COORDINATOR_LOAD_IN_PROGRESS`) and drops those of partitions it stops leading (their
//! members carry on at the new coordinator, which restores them). Requests for a group this
//! shard does not coordinate get `NOT_COORDINATOR`; commits wait until the offsets
//! partition's in-sync replicas hold them ([`crate::replica::wait_committed`]).

mod record;
pub(crate) mod state;

use std::collections::HashMap;
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use compio::runtime::JoinHandle;

use bytes::BytesMut;
use record::{
    Key, decode_group_value, decode_key, decode_offset_value, group_key, group_value, offset_key,
    offset_value,
};
use sluice_proto::protocol::{
    DeleteGroupResult, DescribedGroup, ErrorCode, GENERATION_NONE, GROUP_ID_BYTES_MAX,
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, ListedGroup, OFFSET_NONE, OffsetCommitPartitionResult, OffsetCommitRequest,
    OffsetCommitResponse, OffsetCommitTopicResult, OffsetFetchPartition, OffsetFetchRequest,
    OffsetFetchResponse, OffsetFetchTopicResult, SyncGroupRequest, SyncGroupResponse, group_state,
};
use sluice_proto::{BatchBuilder, Compression, Limits, Offset};
use sluice_storage::system_clock_ms;

use crate::cluster::ClusterView;
use crate::metadata::{Metadata, TopicMeta};
use crate::placement::ShardId;
use crate::shard::Shard;
use crate::shard::partition::{Partition, log_error};
use state::{Committed, Group, Synced};

/// Named bounds of the coordinator.
pub(crate) mod limits {
    /// Most groups one coordinator shard holds (with members or committed offsets).
    pub(crate) const GROUPS_PER_SHARD_MAX: usize = 10_000;
    /// Most members in one group.
    pub(crate) const MEMBERS_PER_GROUP_MAX: usize = 1_000;
    /// Most protocols one member may offer.
    pub(crate) const PROTOCOLS_PER_MEMBER_MAX: usize = 16;
    /// Largest metadata of one protocol of one member.
    pub(crate) const MEMBER_METADATA_BYTES_MAX: usize = 64 * 1024;
    /// Largest assignment of one member.
    pub(crate) const ASSIGNMENT_BYTES_MAX: usize = 256 * 1024;
    /// Most committed offsets one group keeps.
    pub(crate) const OFFSETS_PER_GROUP_MAX: usize = 100_000;
    /// Longest metadata committed with an offset.
    pub(crate) const OFFSET_METADATA_BYTES_MAX: usize = 4096;
    /// Shortest session timeout a member may ask for.
    pub(crate) const SESSION_TIMEOUT_MS_MIN: u32 = 500;
    /// Longest session timeout a member may ask for.
    pub(crate) const SESSION_TIMEOUT_MS_MAX: u32 = 300_000;
    /// Longest rebalance timeout (a join round waits at most this).
    pub(crate) const REBALANCE_TIMEOUT_MS_MAX: u32 = 300_000;
    /// How often the coordinator checks session timeouts and join deadlines.
    pub(crate) const GROUP_TICK_MS: u64 = 100;
    /// Bytes of records per batch written to `__consumer_offsets` (a commit of many
    /// partitions becomes several batches, each under the topic's `max.message.bytes`).
    pub(crate) const OFFSETS_BATCH_BYTES: usize = 256 * 1024;
    /// Bytes read per step when rebuilding the offsets at start-up or when taking up an
    /// offsets partition (the shard yields between steps).
    pub(crate) const RESTORE_READ_BYTES: usize = 1024 * 1024;
    /// Longest a commit (or a group deletion) waits for its offset records to be committed:
    /// durable here, and in cluster mode held by the offsets partition's in-sync replicas
    /// (Kafka's `offsets.commit.timeout.ms`).
    pub(crate) const OFFSET_COMMIT_TIMEOUT_MS: u64 = 5_000;
    /// Largest replication factor `__consumer_offsets` gets in cluster mode (Kafka's
    /// `offsets.topic.replication.factor`); fewer if the cluster lists fewer nodes.
    pub(crate) const OFFSETS_TOPIC_REPLICATION_FACTOR_MAX: usize = 3;
}
use limits::*;

/// The internal topic holding committed offsets.
pub(crate) const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// Its partition count unless the configuration says otherwise.
pub(crate) const OFFSETS_TOPIC_PARTITIONS_DEFAULT: u32 = 16;

/// Adds `__consumer_offsets` (compacted, `partitions` partitions) to `metadata` if it is
/// missing. Returns whether it was added (the caller persists).
pub(crate) fn ensure_offsets_topic(metadata: &mut Metadata, partitions: u32) -> bool {
    if metadata.topics.contains_key(OFFSETS_TOPIC) {
        return false;
    }
    let mut configs = crate::topic_config::TopicConfigs::new();
    configs.insert(
        sluice_proto::protocol::config::CLEANUP_POLICY.to_string(),
        "compact".to_string(),
    );
    metadata.topics.insert(
        OFFSETS_TOPIC.to_string(),
        TopicMeta {
            partitions,
            configs,
        },
    );
    true
}

/// The `__consumer_offsets` partition of `group`.
pub(crate) fn offsets_partition(group: &str, partitions: u32) -> u32 {
    crc32c::crc32c(group.as_bytes()) % partitions.max(1)
}

/// The coordinator shard of `group`.
pub(crate) fn coordinator_of(shard: &Shard, group: &str) -> ShardId {
    let partitions = offsets_partitions(&shard.snapshot());
    shard.owner(OFFSETS_TOPIC, offsets_partition(group, partitions))
}

fn offsets_partitions(metadata: &Metadata) -> u32 {
    metadata
        .topics
        .get(OFFSETS_TOPIC)
        .map_or(OFFSETS_TOPIC_PARTITIONS_DEFAULT, |t| t.partitions)
}

/// Where a group's coordinator runs in cluster mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CoordinatorAddress {
    /// The node leading the group's offsets partition.
    pub(crate) node: sluice_replication::NodeId,
    /// Its shard owning that partition.
    pub(crate) shard: ShardId,
    /// The node's client host.
    pub(crate) host: String,
    /// That shard's own client port (the node's shared port if it registered none).
    pub(crate) port: u16,
}

/// Cluster mode: the coordinator of `group` under `view`: the leader of the group's
/// `__consumer_offsets` partition, on the shard of that node that owns the partition.
/// `Ok(None)`: the offsets topic does not exist yet. `COORDINATOR_NOT_AVAILABLE` when the
/// partition has no leader or the leader is not a live registered broker.
pub(crate) fn coordinator_in(
    view: &ClusterView,
    group: &str,
) -> Result<Option<CoordinatorAddress>, (ErrorCode, String)> {
    let Some(topic) = view.state.topics.get(OFFSETS_TOPIC) else {
        return Ok(None);
    };
    let index = offsets_partition(group, topic.partitions.len() as u32);
    let unavailable = |why: String| {
        Err((
            ErrorCode::COORDINATOR_NOT_AVAILABLE,
            format!("group {group}'s partition {OFFSETS_TOPIC}/{index} {why}"),
        ))
    };
    let Some(leader) = topic.partitions.get(index as usize).and_then(|p| p.leader) else {
        return unavailable("has no leader".into());
    };
    let Some(broker) = view.state.brokers.get(&leader) else {
        return unavailable(format!("is led by node {leader}, which is not registered"));
    };
    if broker.fenced {
        return unavailable(format!("is led by node {leader}, which is fenced"));
    }
    let Some(shard) = view.owner_shard(leader, OFFSETS_TOPIC, index) else {
        return unavailable(format!("is led by node {leader}, which is not registered"));
    };
    let registration = &broker.registration;
    Ok(Some(CoordinatorAddress {
        node: leader,
        shard,
        host: registration.client_host.clone(),
        port: registration
            .shard_ports
            .get(shard)
            .copied()
            .unwrap_or(registration.client_port),
    }))
}

/// Cluster mode: the replication factor `__consumer_offsets` is created with: min(3, nodes
/// in the cluster list); `Err` (why not yet) while fewer brokers than that are live, so the
/// topic does not get fewer copies because a node registered late (Kafka waits for
/// `offsets.topic.replication.factor` brokers too).
pub(crate) fn offsets_topic_replication(view: &ClusterView, nodes: usize) -> Result<i16, String> {
    let wanted = nodes.clamp(1, OFFSETS_TOPIC_REPLICATION_FACTOR_MAX);
    let live = view.live_brokers().count();
    if live < wanted {
        return Err(format!(
            "{OFFSETS_TOPIC} is created once {wanted} brokers are live ({live} are)"
        ));
    }
    Ok(wanted as i16)
}

/// Cluster mode: asks shard 0 (which has the controller create it) for `__consumer_offsets`
/// with [`offsets_topic_replication`] copies, unless this shard already asked and waits.
/// Returns why the coordinator is not available meanwhile.
pub(crate) fn create_offsets_topic(shard: &Rc<Shard>, view: &ClusterView) -> String {
    let nodes = shard
        .cluster
        .config
        .cluster
        .as_ref()
        .map_or(1, |c| c.voters.len());
    let replication_factor = match offsets_topic_replication(view, nodes) {
        Ok(rf) => rf,
        Err(why) => return why,
    };
    {
        let mut c = shard.groups.borrow_mut();
        if c.creating_offsets_topic {
            return format!("{OFFSETS_TOPIC} is being created");
        }
        c.creating_offsets_topic = true;
    }
    let partitions = shard.cluster.config.offsets_topic_partitions;
    let request = sluice_proto::protocol::CreateTopicsRequest {
        topics: vec![sluice_proto::protocol::NewTopic {
            name: OFFSETS_TOPIC.to_string(),
            partitions,
            configs: vec![sluice_proto::protocol::ConfigEntry {
                name: sluice_proto::protocol::config::CLEANUP_POLICY.to_string(),
                value: "compact".to_string(),
            }],
            replication_factor,
        }],
        validate_only: false,
    };
    tracing::info!(
        shard = shard.id,
        partitions,
        replication_factor,
        "asking the controller to create {OFFSETS_TOPIC}"
    );
    let asking = shard.clone();
    compio::runtime::spawn(async move {
        let (reply, rx) = crate::shard::msg::reply_channel();
        asking
            .send(
                0,
                crate::shard::msg::ShardMsg::CreateTopics { request, reply },
            )
            .await;
        match rx.recv_async().await {
            Ok(response) => {
                for t in response.topics {
                    if t.error == ErrorCode::NONE {
                        tracing::info!(topic = %t.name, "offsets topic created");
                    } else if t.error == ErrorCode::TOPIC_ALREADY_EXISTS {
                        tracing::debug!(topic = %t.name, "offsets topic created by another request");
                    } else {
                        tracing::warn!(topic = %t.name, code = t.error.name(), error = %t.message,
                            "offsets topic not created (asked again at the next FindCoordinator)");
                    }
                }
            }
            Err(_) => tracing::debug!("shard 0 stopped before creating the offsets topic"),
        }
        asking.groups.borrow_mut().creating_offsets_topic = false;
    })
    .detach();
    format!("{OFFSETS_TOPIC} is being created")
}

/// A group id's problem, if any.
pub(crate) fn check_group_id(group: &str) -> Result<(), (ErrorCode, String)> {
    if group.is_empty() || group.len() > GROUP_ID_BYTES_MAX {
        return Err((
            ErrorCode::INVALID_GROUP_ID,
            format!(
                "group id must be 1 to {GROUP_ID_BYTES_MAX} bytes (got {})",
                group.len()
            ),
        ));
    }
    Ok(())
}

/// A group request, on its way to the coordinator shard.
pub(crate) enum GroupOp {
    /// JoinGroup, with the client's host.
    Join(JoinGroupRequest, String),
    /// SyncGroup.
    Sync(SyncGroupRequest),
    /// Heartbeat.
    Heartbeat(HeartbeatRequest),
    /// LeaveGroup.
    Leave(LeaveGroupRequest),
    /// OffsetCommit.
    Commit(OffsetCommitRequest),
    /// OffsetFetch.
    Fetch(OffsetFetchRequest),
    /// This shard's groups (ListGroups asks every shard).
    List,
    /// One group of DescribeGroups.
    Describe(String),
    /// One group of DeleteGroups.
    Delete(String),
}

/// The coordinator's answer to a [`GroupOp`].
pub(crate) enum GroupReply {
    /// JoinGroup.
    Join(JoinGroupResponse),
    /// SyncGroup.
    Sync(SyncGroupResponse),
    /// Heartbeat.
    Heartbeat(HeartbeatResponse),
    /// LeaveGroup.
    Leave(LeaveGroupResponse),
    /// OffsetCommit.
    Commit(OffsetCommitResponse),
    /// OffsetFetch.
    Fetch(OffsetFetchResponse),
    /// This shard's groups.
    List(Vec<ListedGroup>),
    /// One described group.
    Describe(DescribedGroup),
    /// One deleted group.
    Delete(DeleteGroupResult),
}

/// The groups one shard coordinates.
#[derive(Default)]
pub(crate) struct Coordinator {
    /// Groups by id.
    pub(crate) groups: HashMap<String, Group>,
    /// Makes new member ids unique across restarts (the start time).
    nonce: u64,
    /// Whether the ticker runs.
    ticking: bool,
    /// Cluster mode: the `__consumer_offsets` partitions this shard leads, by index (at most
    /// the topic's partition count).
    led: HashMap<u32, Led>,
    /// Cluster mode: the partition count of `__consumer_offsets` in the installed view (0:
    /// the topic does not exist yet).
    led_partitions: u32,
    /// Numbers the loads of offsets partitions, so that a load's end recognises whether it
    /// is still the current one.
    loads: u64,
    /// Cluster mode: this shard asked shard 0 to create `__consumer_offsets` and waits for
    /// the answer (one request at a time per shard).
    creating_offsets_topic: bool,
}

/// Cluster mode: one `__consumer_offsets` partition this shard leads.
struct Led {
    /// The leader epoch the view gave when this node took it up.
    epoch: u32,
    /// Which load this is (see [`Coordinator::loads`]).
    load: u64,
    /// Where taking it up stands.
    state: LoadState,
    /// The load task (dropping it cancels the load).
    task: Option<JoinHandle<()>>,
}

/// Where taking up an offsets partition stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LoadState {
    /// Its groups are being read from the log.
    Loading,
    /// Its groups are served.
    Loaded,
    /// Reading the log failed (retried at the next view).
    Failed,
}

impl Coordinator {
    fn group_mut(&mut self, id: &str) -> Result<&mut Group, (ErrorCode, String)> {
        if !self.groups.contains_key(id) {
            if self.groups.len() >= GROUPS_PER_SHARD_MAX {
                return Err((
                    ErrorCode::COORDINATOR_NOT_AVAILABLE,
                    format!("this coordinator holds {GROUPS_PER_SHARD_MAX} groups"),
                ));
            }
            self.groups
                .insert(id.to_string(), Group::new(id.to_string()));
        }
        Ok(self.groups.get_mut(id).expect("inserted"))
    }
}

/// Starts the coordinator's ticker on this shard (once): session timeouts, join deadlines.
pub(crate) fn start(shard: &Rc<Shard>) {
    let mut c = shard.groups.borrow_mut();
    if c.ticking {
        return;
    }
    c.ticking = true;
    c.nonce = system_clock_ms() as u64;
    drop(c);
    let ticker = compio::runtime::spawn(tick_loop(shard.clone()));
    shard.background.borrow_mut().push(ticker);
}

async fn tick_loop(shard: Rc<Shard>) {
    loop {
        compio::time::sleep(Duration::from_millis(GROUP_TICK_MS)).await;
        let now = Instant::now();
        let cluster = shard.cluster.config.cluster.is_some();
        let emptied: Vec<String> = {
            let mut c = shard.groups.borrow_mut();
            let Coordinator {
                groups,
                led,
                led_partitions,
                ..
            } = &mut *c;
            // Cluster mode: not the groups of a partition still loading (their members'
            // sessions start when it is served).
            let serving = |id: &str| {
                !cluster
                    || led
                        .get(&offsets_partition(id, *led_partitions))
                        .is_some_and(|l| l.state == LoadState::Loaded)
            };
            for (id, group) in groups.iter_mut() {
                if serving(id) {
                    group.tick(now);
                }
            }
            // A group whose empty record is still to be written stays until it is.
            c.groups
                .retain(|_, g| !g.is_vacant() || g.empty_unwritten());
            c.groups
                .iter()
                .filter(|(_, g)| g.empty_unwritten())
                .map(|(id, _)| id.clone())
                .collect()
        };
        // In the background: a write waits for the offsets partition, the ticker must not.
        for id in emptied {
            let shard = shard.clone();
            compio::runtime::spawn(async move {
                if let Ok(load) = coordinating(&shard, &id) {
                    write_empty_record(&shard, &id, load).await;
                }
            })
            .detach();
        }
    }
}

/// Runs a group request on its coordinator shard. In cluster mode a request for a group
/// whose offsets partition this shard does not lead (or has not loaded yet) is refused with
/// `NOT_COORDINATOR` (`COORDINATOR_LOAD_IN_PROGRESS`).
pub(crate) async fn serve(shard: Rc<Shard>, op: GroupOp) -> GroupReply {
    let group = match &op {
        GroupOp::Join(r, _) => Some(r.group.as_str()),
        GroupOp::Sync(r) => Some(r.group.as_str()),
        GroupOp::Heartbeat(r) => Some(r.group.as_str()),
        GroupOp::Leave(r) => Some(r.group.as_str()),
        GroupOp::Commit(r) => Some(r.group.as_str()),
        GroupOp::Fetch(r) => Some(r.group.as_str()),
        GroupOp::List => None,
        GroupOp::Describe(id) | GroupOp::Delete(id) => Some(id.as_str()),
    };
    // An invalid group id gets its own error from the operation below.
    let mut load = None;
    if let Some(group) = group.filter(|g| check_group_id(g).is_ok()) {
        match coordinating(&shard, group) {
            Ok(l) => load = l,
            Err(e) => {
                tracing::debug!(shard = shard.id, group, error = %e.0, "group request refused: {}", e.1);
                return refused(op, e);
            }
        }
    }
    match op {
        GroupOp::Join(req, host) => GroupReply::Join(join(&shard, req, host).await),
        GroupOp::Sync(req) => GroupReply::Sync(sync(&shard, req, load).await),
        GroupOp::Heartbeat(req) => GroupReply::Heartbeat(heartbeat(&shard, &req)),
        GroupOp::Leave(req) => GroupReply::Leave(leave(&shard, &req, load).await),
        GroupOp::Commit(req) => GroupReply::Commit(commit(&shard, req, load).await),
        GroupOp::Fetch(req) => GroupReply::Fetch(fetch(&shard, &req)),
        GroupOp::List => GroupReply::List(list(&shard)),
        GroupOp::Describe(id) => GroupReply::Describe(describe(&shard, &id)),
        GroupOp::Delete(id) => GroupReply::Delete(delete(&shard, &id, load).await),
    }
}

/// The answer refusing `op` with `error`.
fn refused(op: GroupOp, (error, message): (ErrorCode, String)) -> GroupReply {
    match op {
        GroupOp::Join(req, _) => GroupReply::Join(JoinGroupResponse {
            error,
            message,
            generation_id: GENERATION_NONE,
            member_id: req.member_id,
            ..Default::default()
        }),
        GroupOp::Sync(_) => GroupReply::Sync(SyncGroupResponse {
            error,
            message,
            ..Default::default()
        }),
        GroupOp::Heartbeat(_) => GroupReply::Heartbeat(HeartbeatResponse { error, message }),
        GroupOp::Leave(_) => GroupReply::Leave(LeaveGroupResponse { error, message }),
        GroupOp::Commit(req) => GroupReply::Commit(OffsetCommitResponse {
            topics: req
                .topics
                .iter()
                .map(|t| OffsetCommitTopicResult {
                    topic: t.topic.clone(),
                    partitions: t
                        .partitions
                        .iter()
                        .map(|p| OffsetCommitPartitionResult {
                            partition: p.partition,
                            error,
                            message: message.clone(),
                        })
                        .collect(),
                })
                .collect(),
        }),
        GroupOp::Fetch(_) => GroupReply::Fetch(OffsetFetchResponse {
            error,
            message,
            topics: Vec::new(),
        }),
        GroupOp::List => GroupReply::List(Vec::new()),
        GroupOp::Describe(group) => GroupReply::Describe(DescribedGroup {
            group,
            error,
            message,
            state: group_state::DEAD.into(),
            generation_id: GENERATION_NONE,
            ..Default::default()
        }),
        GroupOp::Delete(group) => GroupReply::Delete(DeleteGroupResult {
            group,
            error,
            message,
        }),
    }
}

/// Whether this shard coordinates `group` now. `Ok(None)`: the broker runs alone (the group
/// belongs to this shard). Cluster mode: `Ok(Some(load))` if this node leads the group's
/// offsets partition and this shard has loaded it (`load` names that load); else
/// `NOT_COORDINATOR`, or `COORDINATOR_LOAD_IN_PROGRESS` while it loads, or
/// `COORDINATOR_NOT_AVAILABLE` if loading failed.
fn coordinating(shard: &Shard, group: &str) -> Result<Option<u64>, (ErrorCode, String)> {
    if shard.cluster.config.cluster.is_none() {
        return Ok(None);
    }
    let c = shard.groups.borrow();
    if c.led_partitions == 0 {
        return Err((
            ErrorCode::NOT_COORDINATOR,
            format!("{OFFSETS_TOPIC} does not exist yet: find the coordinator first"),
        ));
    }
    let index = offsets_partition(group, c.led_partitions);
    let node = shard.cluster.config.node_id;
    match c.led.get(&index).map(|l| (l.state, l.load)) {
        None => Err((
            ErrorCode::NOT_COORDINATOR,
            format!("node {node} does not lead {OFFSETS_TOPIC}/{index}, group {group}'s partition"),
        )),
        Some((LoadState::Loading, _)) => Err((
            ErrorCode::COORDINATOR_LOAD_IN_PROGRESS,
            format!("node {node} is loading the groups of {OFFSETS_TOPIC}/{index}"),
        )),
        Some((LoadState::Failed, _)) => Err((
            ErrorCode::COORDINATOR_NOT_AVAILABLE,
            format!("node {node} could not load the groups of {OFFSETS_TOPIC}/{index}"),
        )),
        Some((LoadState::Loaded, load)) => Ok(Some(load)),
    }
}

/// Why a parked join or sync lost its answer: the coordinator moved (cluster mode), or
/// `otherwise`.
fn lost_answer(shard: &Shard, group: &str, otherwise: &str) -> (ErrorCode, String) {
    match coordinating(shard, group) {
        Err((ErrorCode::NOT_COORDINATOR, message)) => (ErrorCode::NOT_COORDINATOR, message),
        _ => (ErrorCode::UNKNOWN_MEMBER_ID, otherwise.to_string()),
    }
}

async fn join(shard: &Rc<Shard>, req: JoinGroupRequest, host: String) -> JoinGroupResponse {
    let member_id = req.member_id.clone();
    let refused = |(error, message): (ErrorCode, String)| JoinGroupResponse {
        error,
        message,
        generation_id: GENERATION_NONE,
        member_id: member_id.clone(),
        ..Default::default()
    };
    if let Err(e) = check_group_id(&req.group) {
        return refused(e);
    }
    let id = req.group.clone();
    let (tx, rx) = flume::bounded(1);
    {
        let mut c = shard.groups.borrow_mut();
        let nonce = c.nonce;
        let group = match c.group_mut(&req.group) {
            Ok(g) => g,
            Err(e) => return refused(e),
        };
        if let Err((error, message)) = group.join(req, host, tx, Instant::now(), nonce) {
            tracing::warn!(group = %id, member = %member_id, %error, "join refused: {message}");
            return refused((error, message));
        }
    }
    rx.recv_async().await.unwrap_or_else(|_| {
        refused(lost_answer(
            shard,
            &id,
            "the join was superseded by a newer join of the same member",
        ))
    })
}

async fn sync(shard: &Rc<Shard>, req: SyncGroupRequest, load: Option<u64>) -> SyncGroupResponse {
    let refused = |(error, message): (ErrorCode, String)| SyncGroupResponse {
        error,
        message,
        ..Default::default()
    };
    let id = req.group.clone();
    let (tx, rx) = flume::bounded(1);
    let synced = {
        let mut c = shard.groups.borrow_mut();
        let Some(group) = c.groups.get_mut(&req.group) else {
            return refused(unknown_member(&req.group, &req.member_id));
        };
        match group.sync(req, tx, Instant::now()) {
            Ok(synced) => synced,
            Err(e) => return refused(e),
        }
    };
    if let Synced::Persist(generation) = synced {
        // The syncs are answered once the group record holding the assignments is
        // committed: a coordinator taking the group over knows every member that holds
        // partitions.
        let written = write_group_record(shard, &id, load).await;
        if still_loaded(shard, &id, load) {
            let mut c = shard.groups.borrow_mut();
            if let Some(group) = c.groups.get_mut(&id) {
                match written {
                    Ok(()) => group.assignments_persisted(generation),
                    Err(e) => group.assignments_not_persisted(generation, e, Instant::now()),
                }
            }
        }
    }
    rx.recv_async().await.unwrap_or_else(|_| {
        refused(lost_answer(
            shard,
            &id,
            "the member was removed while waiting for its assignment",
        ))
    })
}

fn unknown_member(group: &str, member: &str) -> (ErrorCode, String) {
    (
        ErrorCode::UNKNOWN_MEMBER_ID,
        format!("group {group} has no member {member:?}"),
    )
}

fn heartbeat(shard: &Rc<Shard>, req: &HeartbeatRequest) -> HeartbeatResponse {
    let mut c = shard.groups.borrow_mut();
    match c.groups.get_mut(&req.group) {
        Some(g) => g.heartbeat(&req.member_id, req.generation_id, Instant::now()),
        None => {
            let (error, message) = unknown_member(&req.group, &req.member_id);
            HeartbeatResponse { error, message }
        }
    }
}

/// Removes the member; the last one to leave has the empty group record written before the
/// answer.
async fn leave(
    shard: &Rc<Shard>,
    req: &LeaveGroupRequest,
    load: Option<u64>,
) -> LeaveGroupResponse {
    let outcome = match shard.groups.borrow_mut().groups.get_mut(&req.group) {
        Some(g) => g.remove_member(&req.member_id, Instant::now(), "left the group"),
        None => Err(unknown_member(&req.group, &req.member_id)),
    };
    write_empty_record(shard, &req.group, load).await;
    match outcome {
        Ok(()) => LeaveGroupResponse::default(),
        Err((error, message)) => LeaveGroupResponse { error, message },
    }
}

/// A record for `__consumer_offsets`: key and value (`None`: a tombstone), encoded by
/// `record.rs`.
type OffsetsRecord = (Vec<u8>, Option<Vec<u8>>);

/// Offset records for `records` (`None`: a tombstone).
fn offset_records(group: &str, records: &[(String, u32, Option<Committed>)]) -> Vec<OffsetsRecord> {
    records
        .iter()
        .map(|(topic, partition, value)| {
            (
                offset_key(group, topic, *partition),
                value.as_ref().map(offset_value),
            )
        })
        .collect()
}

/// Writes `records` to `group`'s offsets partition and waits until they are committed
/// ([`crate::replica::wait_committed`]: durable here, and in cluster mode below the
/// partition's high watermark), at most [`OFFSET_COMMIT_TIMEOUT_MS`]. Everything up to the
/// partition's admission ticket happens in the first poll, so records written by callers
/// that snapshot the group and call this in one turn of the shard reach the log in the order
/// of those snapshots.
async fn write_records(
    shard: &Rc<Shard>,
    group: &str,
    load: Option<u64>,
    records: &[OffsetsRecord],
) -> Result<(), (ErrorCode, String)> {
    let partitions = offsets_partitions(&shard.snapshot());
    let index = offsets_partition(group, partitions);
    let Some(p) = shard.partition(OFFSETS_TOPIC, index) else {
        return Err((
            ErrorCode::NOT_COORDINATOR,
            format!("{OFFSETS_TOPIC}/{index} is not open on this shard"),
        ));
    };
    let cluster = shard.cluster.config.cluster.is_some();
    let now = system_clock_ms();
    let mut batches = Vec::new();
    let mut builder = BatchBuilder::new(Compression::None, Limits::DEFAULT);
    for (key, value) in records {
        builder
            .push(now, Some(key), value.as_deref(), &[])
            .map_err(|e| {
                (
                    ErrorCode::UNKNOWN_SERVER_ERROR,
                    format!("offset record: {e}"),
                )
            })?;
        if builder.estimated_bytes() >= OFFSETS_BATCH_BYTES {
            let full = std::mem::replace(
                &mut builder,
                BatchBuilder::new(Compression::None, Limits::DEFAULT),
            );
            batches.push(full.build().map_err(|e| {
                (
                    ErrorCode::UNKNOWN_SERVER_ERROR,
                    format!("offset batch: {e}"),
                )
            })?);
        }
    }
    if !builder.is_empty() {
        batches.push(builder.build().map_err(|e| {
            (
                ErrorCode::UNKNOWN_SERVER_ERROR,
                format!("offset batch: {e}"),
            )
        })?);
    }
    let deadline = Instant::now() + Duration::from_millis(OFFSET_COMMIT_TIMEOUT_MS);
    // Checked in the partition's admission turn: a load of the partition reads up to the log
    // end in its own turn, so these records are either before that end or not written.
    let still_coordinating = || -> Result<(), (ErrorCode, String)> {
        if !cluster {
            return Ok(());
        }
        // The log must be the leader's at the epoch this shard took the partition up with
        // (`replica::apply_view` made it so), and the load the request was admitted under
        // must still be the current one; anything else is a coordinator that moved.
        let epoch = shard.groups.borrow().led.get(&index).map(|l| l.epoch);
        if epoch.is_none() || p.log.leader_epoch() != epoch || !still_loaded(shard, group, load) {
            return Err((
                ErrorCode::NOT_COORDINATOR,
                format!(
                    "this node no longer coordinates group {group} ({OFFSETS_TOPIC}/{index}: log \
                     epoch {:?}, coordinator epoch {epoch:?})",
                    p.log.leader_epoch()
                ),
            ));
        }
        Ok(())
    };
    let written = append_committed(&p, batches, deadline, still_coordinating).await;
    match written {
        Err(e) if cluster => {
            let mapped = commit_error(e.0);
            tracing::warn!(%group, partition = index, error = %e.0, answered = %mapped,
                "offset records not committed: {}", e.1);
            Err((mapped, e.1))
        }
        other => other,
    }
}

/// Kafka's answer to a commit whose offset records could not be committed to the offsets
/// partition (its `GroupMetadataManager`): a lost leadership or a broken log means the
/// coordinator moved, a timeout or too few in-sync replicas that it is not available.
fn commit_error(code: ErrorCode) -> ErrorCode {
    match code {
        ErrorCode::UNKNOWN_TOPIC_OR_PARTITION
        | ErrorCode::NOT_ENOUGH_REPLICAS
        | ErrorCode::NOT_ENOUGH_REPLICAS_AFTER_APPEND
        | ErrorCode::REQUEST_TIMED_OUT => ErrorCode::COORDINATOR_NOT_AVAILABLE,
        ErrorCode::NOT_LEADER_OR_FOLLOWER | ErrorCode::STORAGE_ERROR => ErrorCode::NOT_COORDINATOR,
        other => other,
    }
}

/// In its admission turn, checks `allowed` then appends `batches` to `p` in order; then waits
/// until they are committed.
async fn append_committed(
    p: &Partition,
    batches: Vec<BytesMut>,
    deadline: Instant,
    allowed: impl Fn() -> Result<(), (ErrorCode, String)>,
) -> Result<(), (ErrorCode, String)> {
    let ticket = p.admission.ticket();
    ticket.turn().await;
    allowed()?;
    let mut end = None;
    for batch in batches {
        let appended = p
            .log
            .append(batch)
            .await
            .map_err(|e| log_error(&p.topic, p.index, &e))?;
        // `wait_committed` below waits for everything up to the last batch.
        drop(appended.durable);
        end = Some(Offset(appended.last_offset.get() + 1));
    }
    drop(ticket);
    match end {
        Some(end) => crate::replica::wait_committed(p, end, deadline).await,
        None => Ok(()),
    }
}

/// Whether offsets written under `load` may go into memory: the broker runs alone, or this
/// shard still coordinates the group with the same load (else the records are in the log,
/// and whoever loads the partition next reads them).
fn still_loaded(shard: &Shard, group: &str, load: Option<u64>) -> bool {
    match load {
        None => true,
        Some(load) => coordinating(shard, group).is_ok_and(|now| now == Some(load)),
    }
}

/// Writes `id`'s group record as the group is now (see `record.rs`); nothing mid-rebalance.
/// The snapshot and the write's admission ticket are taken in one turn of the shard.
async fn write_group_record(
    shard: &Rc<Shard>,
    id: &str,
    load: Option<u64>,
) -> Result<(), (ErrorCode, String)> {
    let record = shard.groups.borrow().groups.get(id).and_then(Group::record);
    let Some(record) = record else {
        return Ok(());
    };
    write_records(
        shard,
        id,
        load,
        &[(group_key(id), Some(group_value(&record)))],
    )
    .await
}

/// If group `id` became empty since its record was last written, writes its empty record, so
/// a restart or a new coordinator does not bring back members who left (they would only be
/// evicted a session timeout later). The flag is taken in the same turn of the shard as the
/// snapshot: a newer generation's record, written meanwhile, cleared it already.
async fn write_empty_record(shard: &Rc<Shard>, id: &str, load: Option<u64>) {
    let taken = shard
        .groups
        .borrow_mut()
        .groups
        .get_mut(id)
        .is_some_and(Group::take_empty_unwritten);
    if taken && let Err((error, message)) = write_group_record(shard, id, load).await {
        tracing::warn!(group = %id, %error, "the empty group's record was not written: {message}");
    }
}

async fn commit(
    shard: &Rc<Shard>,
    req: OffsetCommitRequest,
    load: Option<u64>,
) -> OffsetCommitResponse {
    let now = Instant::now();
    let commit_ms = system_clock_ms();
    let snapshot = shard.snapshot();
    // Per partition: `Ok(committed)` to write, or the refusal.
    let mut outcomes: Vec<Vec<Result<Committed, (ErrorCode, String)>>> = Vec::new();
    {
        let mut c = shard.groups.borrow_mut();
        let checked = check_group_id(&req.group).and_then(|()| {
            let admin = req.generation_id == GENERATION_NONE && req.member_id.is_empty();
            match c.groups.get_mut(&req.group) {
                Some(_) => Ok(()),
                None if admin => c.group_mut(&req.group).map(|_| ()),
                None => Err(unknown_member(&req.group, &req.member_id)),
            }
        });
        let group = checked.and_then(|()| {
            let g = c.groups.get_mut(&req.group).expect("checked");
            g.check_commit(&req.member_id, req.generation_id, now)
                .map(|()| g)
        });
        match group {
            Err(e) => {
                tracing::debug!(group = %req.group, member = %req.member_id, error = %e.0, "commit refused: {}", e.1);
                for t in &req.topics {
                    outcomes.push(t.partitions.iter().map(|_| Err(e.clone())).collect());
                }
            }
            Ok(g) => {
                let mut new_keys = 0usize;
                for t in &req.topics {
                    let known = snapshot.topics.get(&t.topic);
                    let mut row = Vec::new();
                    for p in &t.partitions {
                        let outcome = if known.is_none_or(|m| p.partition >= m.partitions) {
                            Err((
                                ErrorCode::UNKNOWN_TOPIC_OR_PARTITION,
                                format!("unknown topic or partition {}/{}", t.topic, p.partition),
                            ))
                        } else if !g.owns(&req.member_id, &t.topic, p.partition) {
                            tracing::warn!(group = %req.group, member = %req.member_id, topic = %t.topic, partition = p.partition, "commit for a partition not assigned to the member");
                            Err((
                                ErrorCode::PARTITION_NOT_ASSIGNED,
                                format!(
                                    "{}/{} is not assigned to {} in generation {}",
                                    t.topic, p.partition, req.member_id, g.generation
                                ),
                            ))
                        } else if p.metadata.len() > OFFSET_METADATA_BYTES_MAX {
                            Err((
                                ErrorCode::OFFSET_METADATA_TOO_LARGE,
                                format!(
                                    "metadata of {} bytes, over {OFFSET_METADATA_BYTES_MAX}",
                                    p.metadata.len()
                                ),
                            ))
                        } else if p.offset < 0 {
                            Err((
                                ErrorCode::INVALID_REQUEST,
                                format!("offset {} is negative", p.offset),
                            ))
                        } else if !g.offsets.contains_key(&(t.topic.clone(), p.partition))
                            && g.offsets.len() + new_keys >= OFFSETS_PER_GROUP_MAX
                        {
                            Err((
                                ErrorCode::INVALID_REQUEST,
                                format!(
                                    "group {} has {OFFSETS_PER_GROUP_MAX} committed offsets",
                                    req.group
                                ),
                            ))
                        } else {
                            if !g.offsets.contains_key(&(t.topic.clone(), p.partition)) {
                                new_keys += 1;
                            }
                            Ok(Committed {
                                offset: p.offset,
                                metadata: p.metadata.clone(),
                                commit_ms,
                            })
                        };
                        row.push(outcome);
                    }
                    outcomes.push(row);
                }
            }
        }
    }
    let records: Vec<(String, u32, Option<Committed>)> = req
        .topics
        .iter()
        .zip(&outcomes)
        .flat_map(|(t, row)| {
            t.partitions.iter().zip(row).filter_map(|(p, o)| {
                o.as_ref()
                    .ok()
                    .map(|c| (t.topic.clone(), p.partition, Some(c.clone())))
            })
        })
        .collect();
    if !records.is_empty() {
        match write_records(
            shard,
            &req.group,
            load,
            &offset_records(&req.group, &records),
        )
        .await
        {
            Ok(()) if !still_loaded(shard, &req.group, load) => {
                tracing::info!(group = %req.group, "offsets committed while the coordinator moved: the next coordinator reads them");
            }
            Ok(()) => {
                let mut c = shard.groups.borrow_mut();
                if let Ok(g) = c.group_mut(&req.group) {
                    for (topic, partition, value) in records {
                        if let Some(value) = value {
                            g.offsets.insert((topic, partition), value);
                        }
                    }
                }
            }
            Err(e) => {
                for row in &mut outcomes {
                    for o in row.iter_mut().filter(|o| o.is_ok()) {
                        *o = Err(e.clone());
                    }
                }
            }
        }
    }
    OffsetCommitResponse {
        topics: req
            .topics
            .iter()
            .zip(outcomes)
            .map(|(t, row)| OffsetCommitTopicResult {
                topic: t.topic.clone(),
                partitions: t
                    .partitions
                    .iter()
                    .zip(row)
                    .map(|(p, o)| match o {
                        Ok(_) => OffsetCommitPartitionResult {
                            partition: p.partition,
                            error: ErrorCode::NONE,
                            message: String::new(),
                        },
                        Err((error, message)) => OffsetCommitPartitionResult {
                            partition: p.partition,
                            error,
                            message,
                        },
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn fetch(shard: &Rc<Shard>, req: &OffsetFetchRequest) -> OffsetFetchResponse {
    if let Err((error, message)) = check_group_id(&req.group) {
        return OffsetFetchResponse {
            error,
            message,
            topics: Vec::new(),
        };
    }
    let c = shard.groups.borrow();
    let group = c.groups.get(&req.group);
    let entry = |topic: &str, partition: u32| {
        let committed = group.and_then(|g| g.offsets.get(&(topic.to_string(), partition)));
        OffsetFetchPartition {
            partition,
            offset: committed.map_or(OFFSET_NONE, |c| c.offset),
            metadata: committed.map(|c| c.metadata.clone()).unwrap_or_default(),
            error: ErrorCode::NONE,
        }
    };
    let topics = if req.topics.is_empty() {
        let mut by_topic: Vec<OffsetFetchTopicResult> = Vec::new();
        for ((topic, partition), _) in group.iter().flat_map(|g| g.offsets.iter()) {
            if by_topic.last().is_none_or(|t| t.topic != *topic) {
                by_topic.push(OffsetFetchTopicResult {
                    topic: topic.clone(),
                    partitions: Vec::new(),
                });
            }
            if let Some(t) = by_topic.last_mut() {
                t.partitions.push(entry(topic, *partition));
            }
        }
        by_topic
    } else {
        req.topics
            .iter()
            .map(|t| OffsetFetchTopicResult {
                topic: t.topic.clone(),
                partitions: t.partitions.iter().map(|&p| entry(&t.topic, p)).collect(),
            })
            .collect()
    };
    OffsetFetchResponse {
        error: ErrorCode::NONE,
        message: String::new(),
        topics,
    }
}

fn list(shard: &Rc<Shard>) -> Vec<ListedGroup> {
    let c = shard.groups.borrow();
    c.groups
        .iter()
        // Cluster mode: not the groups of a partition still loading.
        .filter(|(id, g)| !g.is_vacant() && coordinating(shard, id).is_ok())
        .map(|(_, g)| g)
        .map(|g| {
            let d = g.describe();
            ListedGroup {
                group: d.group,
                state: d.state,
                protocol_type: d.protocol_type,
                members: d.members.len() as u32,
            }
        })
        .collect()
}

fn describe(shard: &Rc<Shard>, id: &str) -> DescribedGroup {
    let c = shard.groups.borrow();
    match c.groups.get(id).filter(|g| !g.is_vacant()) {
        Some(g) => g.describe(),
        None => DescribedGroup {
            group: id.to_string(),
            error: ErrorCode::GROUP_ID_NOT_FOUND,
            message: format!("no group {id}"),
            state: group_state::DEAD.into(),
            generation_id: GENERATION_NONE,
            ..Default::default()
        },
    }
}

async fn delete(shard: &Rc<Shard>, id: &str, load: Option<u64>) -> DeleteGroupResult {
    let result = |error, message| DeleteGroupResult {
        group: id.to_string(),
        error,
        message,
    };
    let keys: Vec<(String, u32, Option<Committed>)> = {
        let c = shard.groups.borrow();
        match c.groups.get(id).filter(|g| !g.is_vacant()) {
            None => return result(ErrorCode::GROUP_ID_NOT_FOUND, format!("no group {id}")),
            Some(g) if !g.members.is_empty() => {
                return result(
                    ErrorCode::NON_EMPTY_GROUP,
                    format!("group {id} has {} member(s)", g.members.len()),
                );
            }
            Some(g) => g
                .offsets
                .keys()
                .map(|(t, p)| (t.clone(), *p, None))
                .collect(),
        }
    };
    // The offsets' tombstones and the group record's: the group stays deleted after a
    // restart or a coordinator move.
    let mut records = offset_records(id, &keys);
    records.push((group_key(id), None));
    if let Err((error, message)) = write_records(shard, id, load, &records).await {
        return result(error, message);
    }
    let loaded = still_loaded(shard, id, load);
    let mut c = shard.groups.borrow_mut();
    if loaded && c.groups.get(id).is_some_and(|g| g.members.is_empty()) {
        c.groups.remove(id);
    }
    tracing::info!(group = %id, offsets = keys.len(), "group deleted");
    result(ErrorCode::NONE, String::new())
}

/// Rebuilds the committed offsets and memberships of the groups whose `__consumer_offsets`
/// partitions this shard owns, reading each from its start (latest record per key wins; a
/// tombstone deletes). Runs at start-up, before the shard serves (in cluster mode no log is
/// open yet: [`on_view`] loads the partitions this node leads).
pub(crate) async fn restore(shard: &Rc<Shard>) -> Result<(), String> {
    let partitions: Vec<Rc<Partition>> = shard
        .partitions
        .borrow()
        .values()
        .filter(|p| p.topic == OFFSETS_TOPIC)
        .cloned()
        .collect();
    let mut restored = 0usize;
    for p in partitions {
        let end = p.log.offsets().durable_end;
        restored += read_offsets(shard, &p, end).await?;
    }
    let mut c = shard.groups.borrow_mut();
    c.groups.retain(|_, g| !g.is_vacant());
    if restored > 0 {
        tracing::info!(
            shard = shard.id,
            groups = c.groups.len(),
            records = restored,
            "committed offsets restored"
        );
    }
    Ok(())
}

/// Reads `p` (a `__consumer_offsets` partition) from its start up to `end` into this
/// shard's groups, [`RESTORE_READ_BYTES`] at a time, yielding between steps. Returns the
/// offset records applied. Memory stays bounded by [`GROUPS_PER_SHARD_MAX`] and
/// [`OFFSETS_PER_GROUP_MAX`] (records beyond them are skipped).
async fn read_offsets(shard: &Rc<Shard>, p: &Partition, end: Offset) -> Result<usize, String> {
    let mut applied = 0usize;
    let mut at = p.log.offsets().log_start;
    while at < end {
        let batches = p
            .log
            .read_until(at, end, RESTORE_READ_BYTES)
            .await
            .map_err(|e| format!("{OFFSETS_TOPIC}/{}: {e}", p.index))?;
        if batches.is_empty() {
            break;
        }
        for batch in &batches {
            at = Offset(batch.next_offset().get());
            let records = batch
                .records()
                .map_err(|e| format!("{OFFSETS_TOPIC}/{}: {e}", p.index))?;
            for record in records {
                let record = record.map_err(|e| format!("{OFFSETS_TOPIC}/{}: {e}", p.index))?;
                let Some(key) = record.key.as_deref().and_then(decode_key) else {
                    tracing::warn!(
                        partition = p.index,
                        "skipping an offsets record with an unknown key"
                    );
                    continue;
                };
                let mut c = shard.groups.borrow_mut();
                match key {
                    Key::Offset {
                        group,
                        topic,
                        partition,
                    } => match record.value.as_deref().map(decode_offset_value) {
                        None => {
                            if let Some(g) = c.groups.get_mut(&group) {
                                g.offsets.remove(&(topic, partition));
                            }
                        }
                        Some(None) => {
                            tracing::warn!(partition = p.index, %group, "skipping an offset record with an unknown value");
                        }
                        Some(Some(value)) => {
                            if let Ok(g) = c.group_mut(&group) {
                                let key = (topic, partition);
                                if g.offsets.contains_key(&key)
                                    || g.offsets.len() < OFFSETS_PER_GROUP_MAX
                                {
                                    g.offsets.insert(key, value);
                                    applied += 1;
                                }
                            }
                        }
                    },
                    Key::Group { group } => match record.value.as_deref().map(decode_group_value) {
                        None => {
                            if let Some(g) = c.groups.get_mut(&group) {
                                g.forget();
                            }
                        }
                        Some(None) => {
                            tracing::warn!(partition = p.index, %group, "skipping a group record with an unknown value");
                        }
                        Some(Some(value)) => {
                            if let Ok(g) = c.group_mut(&group) {
                                g.restore(value, Instant::now());
                                applied += 1;
                            }
                        }
                    },
                }
            }
        }
        yield_now().await;
    }
    Ok(applied)
}

/// Lets the shard's other tasks run once.
async fn yield_now() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await;
}

/// Cluster mode: which `__consumer_offsets` partitions this shard should coordinate under
/// `view`, with their leader epochs: those it holds whose leader is this node.
fn led_under(view: &ClusterView, held: impl Iterator<Item = u32>) -> HashMap<u32, u32> {
    let Some(topic) = view.state.topics.get(OFFSETS_TOPIC) else {
        return HashMap::new();
    };
    held.filter_map(|index| {
        let state = topic.partitions.get(index as usize)?;
        (state.leader == Some(view.me)).then_some((index, state.leader_epoch))
    })
    .collect()
}

/// Takes up or gives up the groups whose offsets partitions this shard holds, as `view`
/// says this node leads them or not (cluster mode; runs after `replica::apply_view`, so the
/// logs of partitions led here are leaders' logs). A partition newly led (or led at a new
/// leader epoch) is loaded from its log in a background task; one no longer led has its
/// groups dropped (their members carry on at the new coordinator, which restores them).
pub(crate) async fn on_view(shard: &Rc<Shard>, view: &Arc<ClusterView>) {
    let partitions = view
        .state
        .topics
        .get(OFFSETS_TOPIC)
        .map_or(0, |t| t.partitions.len() as u32);
    let held: Vec<Rc<Partition>> = shard
        .partitions
        .borrow()
        .values()
        .filter(|p| p.topic == OFFSETS_TOPIC && p.index < partitions)
        .cloned()
        .collect();
    let want = led_under(view, held.iter().map(|p| p.index));
    let mut c = shard.groups.borrow_mut();
    if partitions != c.led_partitions {
        // The topic was created or deleted: a group's partition is computed anew.
        let led: Vec<u32> = c.led.keys().copied().collect();
        for index in led {
            give_up(shard.id, &mut c, index, "the offsets topic changed");
        }
        c.groups.clear();
        c.led_partitions = partitions;
    }
    let stale: Vec<u32> = c
        .led
        .iter()
        .filter(|(index, l)| want.get(index) != Some(&l.epoch) || l.state == LoadState::Failed)
        .map(|(index, _)| *index)
        .collect();
    for index in stale {
        let reason = match want.get(&index) {
            None => "another node leads it now",
            Some(_) => "a new leader epoch (or a failed load)",
        };
        give_up(shard.id, &mut c, index, reason);
    }
    for p in held {
        let Some(&epoch) = want.get(&p.index) else {
            continue;
        };
        if c.led.contains_key(&p.index) {
            continue;
        }
        c.loads += 1;
        let load = c.loads;
        let index = p.index;
        tracing::info!(
            shard = shard.id,
            partition = index,
            epoch,
            "this node leads {OFFSETS_TOPIC}/{index}: loading its groups"
        );
        let task = compio::runtime::spawn(take_up(shard.clone(), p, load));
        c.led.insert(
            index,
            Led {
                epoch,
                load,
                state: LoadState::Loading,
                task: Some(task),
            },
        );
    }
}

/// Cancels the loads of offsets partitions in progress (the shard is closing its logs).
pub(crate) fn cancel_loads(shard: &Shard) {
    let tasks: Vec<JoinHandle<()>> = shard
        .groups
        .borrow_mut()
        .led
        .values_mut()
        .filter_map(|l| l.task.take())
        .collect();
    drop(tasks);
}

/// Drops the groups of offsets partition `index` and stops coordinating it (a load in
/// progress is cancelled). Members waiting for a join or sync answer get `NOT_COORDINATOR`.
fn give_up(shard: ShardId, c: &mut Coordinator, index: u32, reason: &str) {
    let Some(led) = c.led.remove(&index) else {
        return;
    };
    drop(led.task);
    let partitions = c.led_partitions;
    let mut groups = 0usize;
    let mut members = 0usize;
    c.groups.retain(|id, g| {
        let mine = offsets_partition(id, partitions) == index;
        if mine {
            groups += 1;
            members += g.members.len();
        }
        !mine
    });
    tracing::info!(
        shard,
        partition = index,
        epoch = led.epoch,
        groups,
        members,
        "no longer coordinating the groups of {OFFSETS_TOPIC}/{index}: {reason}"
    );
}

/// Loads the groups of offsets partition `p` (led by this node) from its log, up to its log
/// end (Kafka's coordinator reads to the log end too: the new leader's log is the one its
/// followers converge to), then serves them.
async fn take_up(shard: Rc<Shard>, p: Rc<Partition>, load: u64) {
    let started = Instant::now();
    // The log end in the partition's admission turn: a commit admitted under an earlier load
    // appends before it (and is read here) or finds its load gone and writes nothing.
    let end = {
        let ticket = p.admission.ticket();
        ticket.turn().await;
        p.log.offsets().log_end
    };
    let outcome = read_offsets(&shard, &p, end).await;
    let index = p.index;
    drop(p);
    let mut c = shard.groups.borrow_mut();
    let partitions = c.led_partitions;
    let Some(led) = c.led.get_mut(&index).filter(|l| l.load == load) else {
        return;
    };
    match outcome {
        Ok(records) => {
            led.state = LoadState::Loaded;
            let epoch = led.epoch;
            c.groups.retain(|_, g| !g.is_vacant());
            // The restored members' sessions start now that the coordinator serves them.
            let now = Instant::now();
            for (_, g) in c
                .groups
                .iter_mut()
                .filter(|(id, _)| offsets_partition(id, partitions) == index)
            {
                g.restart_sessions(now);
            }
            let groups = c
                .groups
                .keys()
                .filter(|id| offsets_partition(id, partitions) == index)
                .count();
            tracing::info!(
                shard = shard.id,
                partition = index,
                epoch,
                groups,
                records,
                end = end.get(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "coordinating the groups of {OFFSETS_TOPIC}/{index}"
            );
        }
        Err(e) => {
            led.state = LoadState::Failed;
            c.groups
                .retain(|id, _| offsets_partition(id, partitions) != index);
            tracing::error!(
                shard = shard.id,
                partition = index,
                error = %e,
                "cannot load the groups of {OFFSETS_TOPIC}/{index} (retried at the next cluster view)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::shard_for;
    use sluice_replication::NodeId;
    use sluice_replication::controller::ClusterState;
    use sluice_replication::controller::state::{
        BrokerInfo, BrokerRegistration, PartitionState, TopicState,
    };
    use std::collections::BTreeMap;

    fn broker(id: NodeId, shards: u16, fenced: bool) -> BrokerInfo {
        BrokerInfo {
            registration: BrokerRegistration {
                id,
                incarnation: 7,
                client_host: format!("node{id}.example"),
                client_port: 9092,
                shards,
                shard_ports: (0..shards).map(|s| 10_000 + 100 * id as u16 + s).collect(),
                peer_host: "peer".into(),
                peer_port: 9192,
            },
            fenced,
            decommissioning: false,
        }
    }

    fn partition(leader: Option<NodeId>, epoch: u32) -> PartitionState {
        PartitionState {
            replicas: vec![0, 1, 2],
            leader,
            leader_epoch: epoch,
            isr: vec![0, 1, 2],
            partition_epoch: epoch,
            adding: Vec::new(),
            removing: Vec::new(),
        }
    }

    /// Three brokers (0: 2 shards, 1: 4 shards, 2: 1 shard, fenced), and, if `leaders` is
    /// given, `__consumer_offsets` with one partition per entry.
    fn view(me: NodeId, leaders: Option<Vec<Option<NodeId>>>) -> ClusterView {
        let mut state = ClusterState::default();
        state.brokers.insert(0, broker(0, 2, false));
        state.brokers.insert(1, broker(1, 4, false));
        state.brokers.insert(2, broker(2, 1, true));
        if let Some(leaders) = leaders {
            state.topics.insert(
                OFFSETS_TOPIC.into(),
                TopicState {
                    id: 1,
                    configs: BTreeMap::new(),
                    partitions: leaders
                        .into_iter()
                        .enumerate()
                        .map(|(i, l)| partition(l, i as u32 + 1))
                        .collect(),
                },
            );
        }
        ClusterView {
            me,
            applied_index: 1,
            state,
        }
    }

    /// A group id whose offsets partition (of `partitions`) is `index`.
    fn group_in(index: u32, partitions: u32) -> String {
        (0..)
            .map(|i| format!("group-{i}"))
            .find(|g| offsets_partition(g, partitions) == index)
            .expect("some group hashes there")
    }

    #[test]
    fn the_coordinator_is_the_offsets_partition_leader_on_its_owning_shard() {
        let v = view(0, Some(vec![Some(0), Some(1), Some(0), Some(1)]));
        for index in 0..4 {
            let group = group_in(index, 4);
            let found = coordinator_in(&v, &group)
                .expect("a leader")
                .expect("the topic");
            let leader = if index % 2 == 0 { 0 } else { 1 };
            let shards = if leader == 0 { 2 } else { 4 };
            let shard = shard_for(OFFSETS_TOPIC, index, shards);
            assert_eq!(
                found,
                CoordinatorAddress {
                    node: leader,
                    shard,
                    host: format!("node{leader}.example"),
                    port: 10_000 + 100 * leader as u16 + shard as u16,
                },
                "group {group} (partition {index})"
            );
        }
    }

    #[test]
    fn no_leader_or_a_dead_leader_means_no_coordinator() {
        // Partition 0 offline, 1 led by the fenced node 2, 2 led by an unregistered node 9.
        let v = view(0, Some(vec![None, Some(2), Some(9)]));
        for index in 0..3 {
            let group = group_in(index, 3);
            let (code, message) = coordinator_in(&v, &group).expect_err("no coordinator");
            assert_eq!(code, ErrorCode::COORDINATOR_NOT_AVAILABLE, "{message}");
            assert!(
                message.contains(&format!("{OFFSETS_TOPIC}/{index}")),
                "{message}"
            );
        }
    }

    #[test]
    fn without_the_offsets_topic_there_is_no_coordinator_yet() {
        let v = view(1, None);
        assert_eq!(coordinator_in(&v, "g"), Ok(None));
    }

    #[test]
    fn a_leader_without_shard_ports_is_reached_on_its_shared_port() {
        // A registration without shard ports (an old broker): its shared port.
        let mut v = view(0, Some(vec![Some(0)]));
        if let Some(b) = v.state.brokers.get_mut(&0) {
            b.registration.shard_ports.clear();
        }
        let found = coordinator_in(&v, "g").expect("leader").expect("topic");
        assert_eq!((found.node, found.port), (0, 9092));
    }

    #[test]
    fn the_offsets_topic_waits_for_enough_live_brokers() {
        // Brokers 0 and 1 are live, 2 is fenced.
        let v = view(0, None);
        assert!(offsets_topic_replication(&v, 3).is_err());
        assert_eq!(offsets_topic_replication(&v, 2), Ok(2));
        assert_eq!(offsets_topic_replication(&v, 1), Ok(1));
        let mut all = view(0, None);
        if let Some(b) = all.state.brokers.get_mut(&2) {
            b.fenced = false;
        }
        assert_eq!(offsets_topic_replication(&all, 3), Ok(3));
        // Five listed nodes, three live: three copies, Kafka's default.
        assert_eq!(offsets_topic_replication(&all, 5), Ok(3));
    }

    #[test]
    fn a_shard_coordinates_the_held_partitions_this_node_leads() {
        let v = view(1, Some(vec![Some(0), Some(1), Some(1), None]));
        // This shard holds partitions 0, 1 and 3 (and 7, which does not exist).
        let led = led_under(&v, [0, 1, 3, 7].into_iter());
        assert_eq!(led, HashMap::from([(1, 2)]));
        assert!(led_under(&view(1, None), [0, 1].into_iter()).is_empty());
    }

    #[test]
    fn commit_failures_get_kafkas_coordinator_errors() {
        for (from, to) in [
            (
                ErrorCode::NOT_LEADER_OR_FOLLOWER,
                ErrorCode::NOT_COORDINATOR,
            ),
            (ErrorCode::STORAGE_ERROR, ErrorCode::NOT_COORDINATOR),
            (
                ErrorCode::REQUEST_TIMED_OUT,
                ErrorCode::COORDINATOR_NOT_AVAILABLE,
            ),
            (
                ErrorCode::NOT_ENOUGH_REPLICAS,
                ErrorCode::COORDINATOR_NOT_AVAILABLE,
            ),
            (
                ErrorCode::NOT_ENOUGH_REPLICAS_AFTER_APPEND,
                ErrorCode::COORDINATOR_NOT_AVAILABLE,
            ),
            (ErrorCode::MESSAGE_TOO_LARGE, ErrorCode::MESSAGE_TOO_LARGE),
        ] {
            assert_eq!(commit_error(from), to, "{from}");
        }
    }
}
