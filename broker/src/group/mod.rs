//! The consumer group coordinator. A group belongs to partition `crc32c(group) % N` of the
//! internal compacted topic `__consumer_offsets`; the shard owning that partition
//! coordinates it: it runs the group's state machine (`state.rs`), writes committed offsets
//! as records to that partition (acknowledged once durable), keeps them in memory, and
//! rebuilds them from the partition at start-up. Other shards forward group requests to it
//! (`ShardMsg::Group`).

pub(crate) mod state;

use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use sluice_proto::protocol::{
    DeleteGroupResult, DescribedGroup, ErrorCode, GENERATION_NONE, GROUP_ID_BYTES_MAX,
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, ListedGroup, OFFSET_NONE, OffsetCommitPartitionResult, OffsetCommitRequest,
    OffsetCommitResponse, OffsetCommitTopicResult, OffsetFetchPartition, OffsetFetchRequest,
    OffsetFetchResponse, OffsetFetchTopicResult, Reader, SyncGroupRequest, SyncGroupResponse,
    Writer, group_state,
};
use sluice_proto::{BatchBuilder, Compression, Limits, Offset};
use sluice_storage::system_clock_ms;

use crate::metadata::{Metadata, TopicMeta};
use crate::placement::ShardId;
use crate::shard::Shard;
use crate::shard::partition::{Partition, log_error};
use state::{Committed, Group};

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
    /// Bytes read per step when rebuilding the offsets at start-up.
    pub(crate) const RESTORE_READ_BYTES: usize = 1024 * 1024;
}
use limits::*;

/// The internal topic holding committed offsets.
pub(crate) const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// Its partition count unless the configuration says otherwise.
pub(crate) const OFFSETS_TOPIC_PARTITIONS_DEFAULT: u32 = 16;
/// Version of the offset record key and value layouts.
const OFFSET_RECORD_VERSION: u16 = 1;

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
        let mut c = shard.groups.borrow_mut();
        for group in c.groups.values_mut() {
            group.tick(now);
        }
        c.groups.retain(|_, g| !g.is_vacant());
    }
}

/// Runs a group request on its coordinator shard.
pub(crate) async fn serve(shard: Rc<Shard>, op: GroupOp) -> GroupReply {
    match op {
        GroupOp::Join(req, host) => GroupReply::Join(join(&shard, req, host).await),
        GroupOp::Sync(req) => GroupReply::Sync(sync(&shard, req).await),
        GroupOp::Heartbeat(req) => GroupReply::Heartbeat(heartbeat(&shard, &req)),
        GroupOp::Leave(req) => GroupReply::Leave(leave(&shard, &req)),
        GroupOp::Commit(req) => GroupReply::Commit(commit(&shard, req).await),
        GroupOp::Fetch(req) => GroupReply::Fetch(fetch(&shard, &req)),
        GroupOp::List => GroupReply::List(list(&shard)),
        GroupOp::Describe(id) => GroupReply::Describe(describe(&shard, &id)),
        GroupOp::Delete(id) => GroupReply::Delete(delete(&shard, &id).await),
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
    let (tx, rx) = flume::bounded(1);
    {
        let mut c = shard.groups.borrow_mut();
        let nonce = c.nonce;
        let group = match c.group_mut(&req.group) {
            Ok(g) => g,
            Err(e) => return refused(e),
        };
        let id = req.group.clone();
        if let Err((error, message)) = group.join(req, host, tx, Instant::now(), nonce) {
            tracing::warn!(group = %id, member = %member_id, %error, "join refused: {message}");
            return refused((error, message));
        }
    }
    rx.recv_async().await.unwrap_or_else(|_| {
        refused((
            ErrorCode::UNKNOWN_MEMBER_ID,
            "the join was superseded by a newer join of the same member".into(),
        ))
    })
}

async fn sync(shard: &Rc<Shard>, req: SyncGroupRequest) -> SyncGroupResponse {
    let refused = |(error, message): (ErrorCode, String)| SyncGroupResponse {
        error,
        message,
        ..Default::default()
    };
    let (tx, rx) = flume::bounded(1);
    {
        let mut c = shard.groups.borrow_mut();
        let Some(group) = c.groups.get_mut(&req.group) else {
            return refused(unknown_member(&req.group, &req.member_id));
        };
        if let Err(e) = group.sync(req, tx, Instant::now()) {
            return refused(e);
        }
    }
    rx.recv_async().await.unwrap_or_else(|_| {
        refused((
            ErrorCode::UNKNOWN_MEMBER_ID,
            "the member was removed while waiting for its assignment".into(),
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

fn leave(shard: &Rc<Shard>, req: &LeaveGroupRequest) -> LeaveGroupResponse {
    let mut c = shard.groups.borrow_mut();
    let outcome = match c.groups.get_mut(&req.group) {
        Some(g) => g.remove_member(&req.member_id, Instant::now(), "left the group"),
        None => Err(unknown_member(&req.group, &req.member_id)),
    };
    match outcome {
        Ok(()) => LeaveGroupResponse::default(),
        Err((error, message)) => LeaveGroupResponse { error, message },
    }
}

/// Encodes the key of an offset record: version, group, topic, partition.
fn offset_key(group: &str, topic: &str, partition: u32) -> Vec<u8> {
    let mut w = Writer::new();
    w.u16(OFFSET_RECORD_VERSION);
    w.string(group);
    w.string(topic);
    w.u32(partition);
    w.into_chunks().concat()
}

/// Encodes the value of an offset record: version, offset, metadata, commit time.
fn offset_value(c: &Committed) -> Vec<u8> {
    let mut w = Writer::new();
    w.u16(OFFSET_RECORD_VERSION);
    w.i64(c.offset);
    w.string(&c.metadata);
    w.i64(c.commit_ms);
    w.into_chunks().concat()
}

type OffsetKey = (String, String, u32);

fn decode_key(key: &[u8]) -> Option<OffsetKey> {
    let mut r = Reader::new(BytesMut::from(key));
    if r.u16("version").ok()? != OFFSET_RECORD_VERSION {
        return None;
    }
    let group = r.string("group").ok()?;
    let topic = r.string("topic").ok()?;
    let partition = r.u32("partition").ok()?;
    Some((group, topic, partition))
}

fn decode_value(value: &[u8]) -> Option<Committed> {
    let mut r = Reader::new(BytesMut::from(value));
    if r.u16("version").ok()? != OFFSET_RECORD_VERSION {
        return None;
    }
    Some(Committed {
        offset: r.i64("offset").ok()?,
        metadata: r.string("metadata").ok()?,
        commit_ms: r.i64("commit_ms").ok()?,
    })
}

/// Writes offset records (`None`: a tombstone) to `group`'s offsets partition and waits
/// until they are durable.
async fn write_offsets(
    shard: &Rc<Shard>,
    group: &str,
    records: &[(String, u32, Option<Committed>)],
) -> Result<(), (ErrorCode, String)> {
    let partitions = offsets_partitions(&shard.snapshot());
    let index = offsets_partition(group, partitions);
    let Some(p) = shard.partition(OFFSETS_TOPIC, index) else {
        return Err((
            ErrorCode::NOT_COORDINATOR,
            format!("{OFFSETS_TOPIC}/{index} is not open on this shard"),
        ));
    };
    let now = system_clock_ms();
    let mut batches = Vec::new();
    let mut builder = BatchBuilder::new(Compression::None, Limits::DEFAULT);
    for (topic, partition, value) in records {
        let key = offset_key(group, topic, *partition);
        let value = value.as_ref().map(offset_value);
        builder
            .push(now, Some(&key), value.as_deref(), &[])
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
    append_durably(p, batches).await
}

async fn append_durably(
    p: Rc<Partition>,
    batches: Vec<BytesMut>,
) -> Result<(), (ErrorCode, String)> {
    let ticket = p.admission.ticket();
    ticket.turn().await;
    let mut last = None;
    for batch in batches {
        let appended = p
            .log
            .append(batch)
            .await
            .map_err(|e| log_error(&p.topic, p.index, &e))?;
        last = Some(appended.durable);
    }
    drop(ticket);
    let (topic, index) = (p.topic.clone(), p.index);
    drop(p);
    if let Some(durable) = last {
        durable.await.map_err(|e| log_error(&topic, index, &e))?;
    }
    Ok(())
}

async fn commit(shard: &Rc<Shard>, req: OffsetCommitRequest) -> OffsetCommitResponse {
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
        match write_offsets(shard, &req.group, &records).await {
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
        .values()
        .filter(|g| !g.is_vacant())
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

async fn delete(shard: &Rc<Shard>, id: &str) -> DeleteGroupResult {
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
    if !keys.is_empty()
        && let Err((error, message)) = write_offsets(shard, id, &keys).await
    {
        return result(error, message);
    }
    let mut c = shard.groups.borrow_mut();
    if c.groups.get(id).is_some_and(|g| g.members.is_empty()) {
        c.groups.remove(id);
    }
    tracing::info!(group = %id, offsets = keys.len(), "group deleted");
    result(ErrorCode::NONE, String::new())
}

/// Rebuilds the committed offsets of the groups whose `__consumer_offsets` partitions this
/// shard owns, reading each from its start (latest record per key wins; a tombstone
/// deletes). Runs at start-up, before the shard serves.
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
        let offsets = p.log.offsets();
        let mut at = offsets.log_start;
        while at < offsets.durable_end {
            let batches = p
                .log
                .read_until(at, offsets.durable_end, RESTORE_READ_BYTES)
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
                    let Some((group, topic, partition)) =
                        record.key.as_deref().and_then(decode_key)
                    else {
                        tracing::warn!(
                            partition = p.index,
                            "skipping an offset record with an unknown key"
                        );
                        continue;
                    };
                    let mut c = shard.groups.borrow_mut();
                    match record.value.as_deref().map(decode_value) {
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
                                g.offsets.insert((topic, partition), value);
                                restored += 1;
                            }
                        }
                    }
                }
            }
        }
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

/// Takes up or gives up the groups whose offsets partitions this shard holds, as `view`
/// says this node leads them or not (cluster mode). Integration seam: the cluster group
/// work fills it in.
pub(crate) async fn on_view(shard: &Rc<Shard>, view: &std::sync::Arc<crate::cluster::ClusterView>) {
    let _ = (shard, view);
}
