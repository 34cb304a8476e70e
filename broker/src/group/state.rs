//! One consumer group's state machine, pure: no I/O, no clock of its own (callers pass
//! `now`), replies go out on the channels members parked. The coordinator
//! (`group/mod.rs`) owns the groups of its shard and does the persistence.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_proto::protocol::{
    ConsumerAssignment, DescribedGroup, DescribedMember, ErrorCode, GENERATION_NONE,
    HeartbeatResponse, JoinGroupMember, JoinGroupRequest, JoinGroupResponse,
    PROTOCOL_TYPE_CONSUMER, SyncGroupRequest, SyncGroupResponse, group_state,
};

use super::limits::{
    ASSIGNMENT_BYTES_MAX, MEMBER_METADATA_BYTES_MAX, MEMBERS_PER_GROUP_MAX,
    PROTOCOLS_PER_MEMBER_MAX, REBALANCE_TIMEOUT_MS_MAX, SESSION_TIMEOUT_MS_MAX,
    SESSION_TIMEOUT_MS_MIN,
};

/// Where a parked JoinGroup answer goes.
pub(crate) type JoinReply = flume::Sender<JoinGroupResponse>;
/// Where a parked SyncGroup answer goes.
pub(crate) type SyncReply = flume::Sender<SyncGroupResponse>;

/// A group's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// No members.
    Empty,
    /// A join round is open.
    PreparingRebalance,
    /// Joined; waiting for the leader's assignments.
    CompletingRebalance,
    /// Assignments handed out.
    Stable,
}

impl State {
    /// The name clients see.
    pub(crate) fn name(self) -> &'static str {
        match self {
            State::Empty => group_state::EMPTY,
            State::PreparingRebalance => group_state::PREPARING_REBALANCE,
            State::CompletingRebalance => group_state::COMPLETING_REBALANCE,
            State::Stable => group_state::STABLE,
        }
    }
}

/// A committed offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Committed {
    /// The next offset to consume.
    pub(crate) offset: i64,
    /// Metadata committed with it.
    pub(crate) metadata: String,
    /// When (ms since the epoch).
    pub(crate) commit_ms: i64,
}

/// A group's membership as its group record keeps it (`record.rs`): what a coordinator
/// taking the group over restores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupRecord {
    /// The generation.
    pub(crate) generation: i32,
    /// Its protocol (empty when the group is empty).
    pub(crate) protocol: String,
    /// Its leader (empty when the group is empty).
    pub(crate) leader: String,
    /// Its members with their assignments.
    pub(crate) members: Vec<PersistedMember>,
}

/// One member in a [`GroupRecord`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PersistedMember {
    /// Member id.
    pub(crate) id: String,
    /// The client id it joined with.
    pub(crate) client_id: String,
    /// The address it joined from.
    pub(crate) client_host: String,
    /// Its session timeout.
    pub(crate) session_timeout_ms: u32,
    /// Its rebalance timeout.
    pub(crate) rebalance_timeout_ms: u32,
    /// Its metadata for the generation's protocol.
    pub(crate) subscription: Bytes,
    /// Its assignment.
    pub(crate) assignment: Bytes,
}

/// What a SyncGroup did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Synced {
    /// Answered or parked: the reply comes on the member's channel.
    Waiting,
    /// The leader's assignments are in place: the caller persists the group record of this
    /// generation, then calls [`Group::assignments_persisted`] (or
    /// [`Group::assignments_not_persisted`]), which answers the parked syncs.
    Persist(i32),
}

/// One member.
#[derive(Debug)]
pub(crate) struct Member {
    /// The client id it joined with.
    pub(crate) client_id: String,
    /// The address it joined from.
    pub(crate) client_host: String,
    /// Evicted after this long without a heartbeat, join or sync.
    pub(crate) session_timeout: Duration,
    /// How long a join round waits for it.
    pub(crate) rebalance_timeout: Duration,
    /// Its protocols, most preferred first.
    pub(crate) protocols: Vec<(String, Bytes)>,
    /// Its assignment in the current generation (empty before sync).
    pub(crate) assignment: Bytes,
    /// The assignment decoded: what it may commit.
    pub(crate) owned: BTreeSet<(String, u32)>,
    /// Last heard from.
    pub(crate) last_seen: Instant,
    /// Its JoinGroup waiting for the round to complete.
    pub(crate) join_reply: Option<JoinReply>,
    /// Its SyncGroup waiting for the leader.
    pub(crate) sync_reply: Option<SyncReply>,
}

/// One group.
#[derive(Debug)]
pub(crate) struct Group {
    /// Group id.
    pub(crate) id: String,
    /// Current state.
    pub(crate) state: State,
    /// Current generation (0 before the first join round completes).
    pub(crate) generation: i32,
    /// The chosen protocol of the current generation.
    pub(crate) protocol: Option<String>,
    /// The leader of the current generation.
    pub(crate) leader: Option<String>,
    /// Members by id (ordered: describe and the leader's member list are deterministic).
    pub(crate) members: BTreeMap<String, Member>,
    /// Members in the order they joined this round (the first is the leader candidate).
    pub(crate) join_order: Vec<String>,
    /// When the open join round completes whoever has rejoined.
    pub(crate) join_deadline: Option<Instant>,
    /// Committed offsets by topic and partition.
    pub(crate) offsets: BTreeMap<(String, u32), Committed>,
    /// Source of member ids.
    next_member: u64,
    /// The leader's assignments are set and wait for their group record to be committed
    /// before the syncs are answered (the group stays `CompletingRebalance` meanwhile).
    persisting: bool,
    /// The group became empty since its record was last written (the coordinator writes
    /// the empty record, so a restart does not bring back members who left).
    empty_unwritten: bool,
}

/// A refused request: code and message.
pub(crate) type Refusal = (ErrorCode, String);

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

fn join_error(error: ErrorCode, message: String, member_id: &str) -> JoinGroupResponse {
    JoinGroupResponse {
        error,
        message,
        generation_id: GENERATION_NONE,
        member_id: member_id.to_string(),
        ..Default::default()
    }
}

impl Group {
    /// A new, empty group.
    pub(crate) fn new(id: String) -> Self {
        Self {
            id,
            state: State::Empty,
            generation: 0,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            join_order: Vec::new(),
            join_deadline: None,
            offsets: BTreeMap::new(),
            next_member: 0,
            persisting: false,
            empty_unwritten: false,
        }
    }

    /// Whether the group holds nothing worth keeping (no members, no offsets).
    pub(crate) fn is_vacant(&self) -> bool {
        self.members.is_empty() && self.offsets.is_empty()
    }

    /// Handles a JoinGroup: refuses it at once, or parks `reply` until the round completes
    /// (which may be now). `nonce` makes new member ids unique across restarts.
    pub(crate) fn join(
        &mut self,
        req: JoinGroupRequest,
        client_host: String,
        reply: JoinReply,
        now: Instant,
        nonce: u64,
    ) -> Result<(), Refusal> {
        if !(SESSION_TIMEOUT_MS_MIN..=SESSION_TIMEOUT_MS_MAX).contains(&req.session_timeout_ms) {
            return Err((
                ErrorCode::INVALID_SESSION_TIMEOUT,
                format!(
                    "session_timeout_ms {} is outside {SESSION_TIMEOUT_MS_MIN}..={SESSION_TIMEOUT_MS_MAX}",
                    req.session_timeout_ms
                ),
            ));
        }
        if req.protocol_type != PROTOCOL_TYPE_CONSUMER
            || req.protocols.is_empty()
            || req.protocols.len() > PROTOCOLS_PER_MEMBER_MAX
        {
            return Err((
                ErrorCode::INCONSISTENT_GROUP_PROTOCOL,
                format!(
                    "protocol_type must be {PROTOCOL_TYPE_CONSUMER:?} with 1 to \
                     {PROTOCOLS_PER_MEMBER_MAX} protocols (got {:?} with {})",
                    req.protocol_type,
                    req.protocols.len()
                ),
            ));
        }
        if let Some(p) = req
            .protocols
            .iter()
            .find(|p| p.metadata.len() > MEMBER_METADATA_BYTES_MAX)
        {
            return Err((
                ErrorCode::INVALID_REQUEST,
                format!(
                    "metadata of protocol {} is {} bytes, over {MEMBER_METADATA_BYTES_MAX}",
                    p.name,
                    p.metadata.len()
                ),
            ));
        }
        let is_new = req.member_id.is_empty();
        if !is_new && !self.members.contains_key(&req.member_id) {
            return Err((
                ErrorCode::UNKNOWN_MEMBER_ID,
                format!("group {} has no member {}", self.id, req.member_id),
            ));
        }
        if is_new && self.members.len() >= MEMBERS_PER_GROUP_MAX {
            return Err((
                ErrorCode::GROUP_MAX_SIZE_REACHED,
                format!("group {} has {MEMBERS_PER_GROUP_MAX} members", self.id),
            ));
        }
        // Every other member must support one of this member's protocols.
        let others = self.members.iter().filter(|(id, _)| **id != req.member_id);
        for (id, other) in others {
            let common = req
                .protocols
                .iter()
                .any(|p| other.protocols.iter().any(|(name, _)| *name == p.name));
            if !common {
                let names: Vec<&str> = req.protocols.iter().map(|p| p.name.as_str()).collect();
                return Err((
                    ErrorCode::INCONSISTENT_GROUP_PROTOCOL,
                    format!(
                        "none of the protocols {names:?} is supported by member {id} of group {}",
                        self.id
                    ),
                ));
            }
        }
        let member_id = if is_new {
            self.next_member += 1;
            let client = if req.client_id.is_empty() {
                "member"
            } else {
                req.client_id.as_str()
            };
            format!("{client}-{nonce:x}-{}", self.next_member)
        } else {
            req.member_id.clone()
        };
        let member = self
            .members
            .entry(member_id.clone())
            .or_insert_with(|| Member {
                client_id: req.client_id.clone(),
                client_host: String::new(),
                session_timeout: Duration::ZERO,
                rebalance_timeout: Duration::ZERO,
                protocols: Vec::new(),
                assignment: Bytes::new(),
                owned: BTreeSet::new(),
                last_seen: now,
                join_reply: None,
                sync_reply: None,
            });
        member.session_timeout = Duration::from_millis(u64::from(req.session_timeout_ms));
        member.rebalance_timeout = Duration::from_millis(u64::from(
            req.rebalance_timeout_ms
                .clamp(req.session_timeout_ms, REBALANCE_TIMEOUT_MS_MAX),
        ));
        member.protocols = req
            .protocols
            .into_iter()
            .map(|p| (p.name, p.metadata))
            .collect();
        member.last_seen = now;
        member.client_host = client_host;
        member.join_reply = Some(reply);
        if !self.join_order.contains(&member_id) {
            self.join_order.push(member_id.clone());
        }
        if self.state != State::PreparingRebalance {
            let reason = if is_new {
                format!("member {member_id} joined")
            } else {
                format!("member {member_id} rejoined")
            };
            self.prepare_rebalance(now, &reason);
        }
        self.maybe_complete_join(now, false);
        Ok(())
    }

    /// Opens a join round: the members must rejoin within the longest rebalance timeout.
    pub(crate) fn prepare_rebalance(&mut self, now: Instant, reason: &str) {
        tracing::debug!(group = %self.id, generation = self.generation, reason, "rebalance starts");
        // Assignments waiting for their record are not handed out.
        self.persisting = false;
        // Members waiting for a sync of the old round learn they must rejoin.
        for member in self.members.values_mut() {
            if let Some(reply) = member.sync_reply.take() {
                let _ = reply.try_send(SyncGroupResponse {
                    error: ErrorCode::REBALANCE_IN_PROGRESS,
                    message: format!("group {} is rebalancing: {reason}", self.id),
                    assignment: Bytes::new(),
                });
            }
        }
        if self.members.is_empty() {
            self.become_empty(reason);
            return;
        }
        let wait = self
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default();
        self.state = State::PreparingRebalance;
        self.join_deadline = Some(now + wait);
        self.join_order
            .retain(|id| self.members.get(id).is_some_and(|m| m.join_reply.is_some()));
    }

    fn become_empty(&mut self, reason: &str) {
        self.persisting = false;
        if self.state != State::Empty {
            self.generation += 1;
            self.empty_unwritten = true;
            tracing::info!(
                group = %self.id,
                generation = self.generation,
                members = 0,
                protocol = "",
                reason,
                "group rebalanced: empty"
            );
        }
        self.state = State::Empty;
        self.protocol = None;
        self.leader = None;
        self.join_deadline = None;
        self.join_order.clear();
    }

    /// Completes the join round if every member has rejoined, or (`deadline_passed`) with
    /// those who did (the others are removed).
    pub(crate) fn maybe_complete_join(&mut self, now: Instant, deadline_passed: bool) {
        if self.state != State::PreparingRebalance {
            return;
        }
        let all_joined = self.members.values().all(|m| m.join_reply.is_some());
        if !all_joined && !deadline_passed {
            return;
        }
        let gone: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.join_reply.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        for id in &gone {
            tracing::info!(group = %self.id, member = %id, "member did not rejoin in time: removed");
            self.members.remove(id);
        }
        self.join_order.retain(|id| self.members.contains_key(id));
        if self.members.is_empty() {
            self.become_empty("no member rejoined");
            return;
        }
        let leader = match &self.leader {
            Some(l) if self.members.contains_key(l) => l.clone(),
            _ => self.join_order[0].clone(),
        };
        // The leader's most preferred protocol that every member supports.
        let leader_protocols: Vec<String> = self.members[&leader]
            .protocols
            .iter()
            .map(|(n, _)| n.clone())
            .collect();
        let chosen = leader_protocols.into_iter().find(|name| {
            self.members
                .values()
                .all(|m| m.protocols.iter().any(|(n, _)| n == name))
        });
        self.generation += 1;
        let Some(protocol) = chosen else {
            // Cannot happen: joins with no protocol in common are refused. Still: nobody
            // gets a generation without a protocol.
            for (id, m) in self.members.iter_mut() {
                if let Some(reply) = m.join_reply.take() {
                    let _ = reply.try_send(join_error(
                        ErrorCode::INCONSISTENT_GROUP_PROTOCOL,
                        "no protocol common to every member".into(),
                        id,
                    ));
                }
            }
            self.members.clear();
            self.become_empty("no common protocol");
            return;
        };
        self.state = State::CompletingRebalance;
        self.persisting = false;
        self.join_deadline = None;
        self.leader = Some(leader.clone());
        self.protocol = Some(protocol.clone());
        let reason = if deadline_passed && !gone.is_empty() {
            format!("rebalance timeout: {} member(s) removed", gone.len())
        } else {
            "every member joined".to_string()
        };
        tracing::info!(
            group = %self.id,
            generation = self.generation,
            members = self.members.len(),
            protocol = %protocol,
            leader = %leader,
            reason = %reason,
            "group rebalanced"
        );
        let roster: Vec<JoinGroupMember> = self
            .members
            .iter()
            .map(|(id, m)| JoinGroupMember {
                member_id: id.clone(),
                metadata: m
                    .protocols
                    .iter()
                    .find(|(n, _)| *n == protocol)
                    .map(|(_, md)| md.clone())
                    .unwrap_or_default(),
            })
            .collect();
        for (id, m) in self.members.iter_mut() {
            m.assignment = Bytes::new();
            m.owned.clear();
            m.last_seen = now;
            if let Some(reply) = m.join_reply.take() {
                let _ = reply.try_send(JoinGroupResponse {
                    error: ErrorCode::NONE,
                    message: String::new(),
                    generation_id: self.generation,
                    protocol_name: protocol.clone(),
                    leader_id: leader.clone(),
                    member_id: id.clone(),
                    members: if *id == leader {
                        roster.clone()
                    } else {
                        Vec::new()
                    },
                });
            }
        }
        self.join_order.clear();
    }

    /// Checks a member and generation; refreshes the member's liveness.
    fn check_member(
        &mut self,
        member_id: &str,
        generation: i32,
        now: Instant,
    ) -> Result<(), Refusal> {
        let Some(member) = self.members.get_mut(member_id) else {
            return Err((
                ErrorCode::UNKNOWN_MEMBER_ID,
                format!("group {} has no member {member_id}", self.id),
            ));
        };
        member.last_seen = now;
        if generation != self.generation {
            return Err((
                ErrorCode::ILLEGAL_GENERATION,
                format!(
                    "generation {generation} is not group {}'s current generation {}",
                    self.id, self.generation
                ),
            ));
        }
        Ok(())
    }

    /// Handles a SyncGroup: refuses it, answers it, or parks it until the leader's sync.
    pub(crate) fn sync(
        &mut self,
        req: SyncGroupRequest,
        reply: SyncReply,
        now: Instant,
    ) -> Result<Synced, Refusal> {
        self.check_member(&req.member_id, req.generation_id, now)?;
        match self.state {
            State::Empty | State::PreparingRebalance => Err((
                ErrorCode::REBALANCE_IN_PROGRESS,
                format!("group {} is rebalancing: rejoin", self.id),
            )),
            State::Stable => {
                let _ = reply.try_send(SyncGroupResponse {
                    error: ErrorCode::NONE,
                    message: String::new(),
                    assignment: self.members[&req.member_id].assignment.clone(),
                });
                Ok(Synced::Waiting)
            }
            State::CompletingRebalance => {
                let leads = self.leader.as_deref() == Some(req.member_id.as_str());
                let step = if leads && !self.persisting {
                    let decoded = self.validate_assignments(&req)?;
                    for (id, member) in self.members.iter_mut() {
                        let (bytes, owned) = decoded.get(id).cloned().unwrap_or_default();
                        member.assignment = bytes;
                        member.owned = owned;
                    }
                    self.persisting = true;
                    Synced::Persist(self.generation)
                } else {
                    Synced::Waiting
                };
                self.members
                    .get_mut(&req.member_id)
                    .expect("checked")
                    .sync_reply = Some(reply);
                Ok(step)
            }
        }
    }

    /// The group record of `generation` is committed: the group is stable and every parked
    /// sync gets its assignment. Nothing happens if the group moved on meanwhile (a
    /// rebalance already told the parked syncs to rejoin).
    pub(crate) fn assignments_persisted(&mut self, generation: i32) {
        if !self.stop_persisting(generation) {
            return;
        }
        self.state = State::Stable;
        self.empty_unwritten = false;
        tracing::debug!(group = %self.id, generation, "assignments distributed");
        for member in self.members.values_mut() {
            if let Some(reply) = member.sync_reply.take() {
                let _ = reply.try_send(SyncGroupResponse {
                    error: ErrorCode::NONE,
                    message: String::new(),
                    assignment: member.assignment.clone(),
                });
            }
        }
    }

    /// The group record of `generation` could not be committed: the parked syncs get
    /// `error` and the group rebalances (Kafka's coordinator does the same), so no member
    /// holds an assignment a coordinator taking over would not know.
    pub(crate) fn assignments_not_persisted(
        &mut self,
        generation: i32,
        (error, message): Refusal,
        now: Instant,
    ) {
        if !self.stop_persisting(generation) {
            return;
        }
        tracing::warn!(group = %self.id, generation, %error, "assignments not handed out: their group record was not committed: {message}");
        for member in self.members.values_mut() {
            member.assignment = Bytes::new();
            member.owned.clear();
            if let Some(reply) = member.sync_reply.take() {
                let _ = reply.try_send(SyncGroupResponse {
                    error,
                    message: message.clone(),
                    assignment: Bytes::new(),
                });
            }
        }
        self.prepare_rebalance(now, "its assignments could not be persisted");
    }

    /// Whether the assignments of `generation` wait for their record; if so they no longer
    /// do. A late answer for an older generation leaves a newer one waiting.
    fn stop_persisting(&mut self, generation: i32) -> bool {
        let waiting = self.persisting
            && self.generation == generation
            && self.state == State::CompletingRebalance;
        if waiting {
            self.persisting = false;
        }
        waiting
    }

    /// The membership to write as the group record: when the group is empty (no members,
    /// protocol or leader), stable, or its assignments wait for their record; `None`
    /// mid-rebalance (the record written last stays the one to restore).
    pub(crate) fn record(&self) -> Option<GroupRecord> {
        match self.state {
            State::Empty | State::Stable => {}
            State::CompletingRebalance if self.persisting => {}
            State::CompletingRebalance | State::PreparingRebalance => return None,
        }
        let protocol = self.protocol.clone().unwrap_or_default();
        let members = self
            .members
            .iter()
            .map(|(id, m)| PersistedMember {
                id: id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                session_timeout_ms: millis(m.session_timeout),
                rebalance_timeout_ms: millis(m.rebalance_timeout),
                subscription: m
                    .protocols
                    .iter()
                    .find(|(n, _)| *n == protocol)
                    .map(|(_, md)| md.clone())
                    .unwrap_or_default(),
                assignment: m.assignment.clone(),
            })
            .collect();
        Some(GroupRecord {
            generation: self.generation,
            protocol,
            leader: self.leader.clone().unwrap_or_default(),
            members,
        })
    }

    /// Whether the group became empty since its record was last written.
    pub(crate) fn empty_unwritten(&self) -> bool {
        self.empty_unwritten
    }

    /// Starts every member's session anew at `now` (the coordinator starts serving groups it
    /// restored).
    pub(crate) fn restart_sessions(&mut self, now: Instant) {
        for m in self.members.values_mut() {
            m.last_seen = now;
        }
    }

    /// Whether the group became empty since its record was last written; clears the flag
    /// (the caller writes the record).
    pub(crate) fn take_empty_unwritten(&mut self) -> bool {
        std::mem::take(&mut self.empty_unwritten)
    }

    /// Restores the membership from a group record read back from the log (`now`: when,
    /// which starts every member's session anew). An older generation than the group's
    /// is ignored. A member gets the record's assignment and may commit what it owns.
    pub(crate) fn restore(&mut self, record: GroupRecord, now: Instant) {
        if record.generation < self.generation {
            return;
        }
        self.generation = record.generation;
        self.members.clear();
        self.join_order.clear();
        self.join_deadline = None;
        self.persisting = false;
        self.empty_unwritten = false;
        for m in record.members {
            let owned = ConsumerAssignment::from_bytes(&m.assignment)
                .map(|a| {
                    a.partitions
                        .iter()
                        .flat_map(|tp| tp.partitions.iter().map(|&p| (tp.topic.clone(), p)))
                        .collect()
                })
                .unwrap_or_default();
            self.members.insert(
                m.id,
                Member {
                    client_id: m.client_id,
                    client_host: m.client_host,
                    session_timeout: Duration::from_millis(u64::from(m.session_timeout_ms)),
                    rebalance_timeout: Duration::from_millis(u64::from(m.rebalance_timeout_ms)),
                    protocols: vec![(record.protocol.clone(), m.subscription)],
                    assignment: m.assignment,
                    owned,
                    last_seen: now,
                    join_reply: None,
                    sync_reply: None,
                },
            );
        }
        if self.members.is_empty() {
            self.state = State::Empty;
            self.protocol = None;
            self.leader = None;
        } else {
            self.state = State::Stable;
            self.protocol = Some(record.protocol);
            self.leader = Some(record.leader).filter(|l| self.members.contains_key(l));
        }
    }

    /// Forgets the membership (the group record's tombstone: the group was deleted).
    pub(crate) fn forget(&mut self) {
        *self = Group {
            offsets: std::mem::take(&mut self.offsets),
            ..Group::new(self.id.clone())
        };
    }

    /// The leader's assignments, checked: members of this generation only, within the size
    /// bound, decodable, and no partition given to two members.
    #[allow(clippy::type_complexity)]
    fn validate_assignments(
        &self,
        req: &SyncGroupRequest,
    ) -> Result<HashMap<String, (Bytes, BTreeSet<(String, u32)>)>, Refusal> {
        let mut out = HashMap::new();
        let mut owner_of: HashMap<(String, u32), &str> = HashMap::new();
        let invalid = |why: String| {
            tracing::warn!(group = %self.id, generation = self.generation, leader = %req.member_id, "leader's assignments refused: {why}");
            (ErrorCode::INVALID_REQUEST, why)
        };
        for a in &req.assignments {
            if !self.members.contains_key(&a.member_id) {
                return Err(invalid(format!(
                    "assignment for {}, not a member of generation {}",
                    a.member_id, self.generation
                )));
            }
            if a.assignment.len() > ASSIGNMENT_BYTES_MAX {
                return Err(invalid(format!(
                    "assignment of {} is {} bytes, over {ASSIGNMENT_BYTES_MAX}",
                    a.member_id,
                    a.assignment.len()
                )));
            }
            let decoded = ConsumerAssignment::from_bytes(&a.assignment).map_err(|e| {
                invalid(format!(
                    "assignment of {} does not decode: {e}",
                    a.member_id
                ))
            })?;
            let mut owned = BTreeSet::new();
            for tp in &decoded.partitions {
                for &p in &tp.partitions {
                    let key = (tp.topic.clone(), p);
                    if let Some(other) = owner_of.insert(key.clone(), &a.member_id)
                        && other != a.member_id
                    {
                        return Err(invalid(format!(
                            "partition {}/{p} is assigned to both {other} and {}",
                            tp.topic, a.member_id
                        )));
                    }
                    owned.insert(key);
                }
            }
            if out
                .insert(a.member_id.clone(), (a.assignment.clone(), owned))
                .is_some()
            {
                return Err(invalid(format!("two assignments for {}", a.member_id)));
            }
        }
        Ok(out)
    }

    /// Handles a Heartbeat.
    pub(crate) fn heartbeat(
        &mut self,
        member_id: &str,
        generation: i32,
        now: Instant,
    ) -> HeartbeatResponse {
        let outcome = self
            .check_member(member_id, generation, now)
            .and_then(|()| {
                if self.state == State::PreparingRebalance {
                    Err((
                        ErrorCode::REBALANCE_IN_PROGRESS,
                        format!("group {} is rebalancing: rejoin", self.id),
                    ))
                } else {
                    Ok(())
                }
            });
        match outcome {
            Ok(()) => HeartbeatResponse::default(),
            Err((error, message)) => HeartbeatResponse { error, message },
        }
    }

    /// Removes a member (LeaveGroup or eviction) and rebalances the rest.
    pub(crate) fn remove_member(
        &mut self,
        member_id: &str,
        now: Instant,
        reason: &str,
    ) -> Result<(), Refusal> {
        let Some(member) = self.members.remove(member_id) else {
            return Err((
                ErrorCode::UNKNOWN_MEMBER_ID,
                format!("group {} has no member {member_id}", self.id),
            ));
        };
        if let Some(reply) = member.join_reply {
            let _ = reply.try_send(join_error(
                ErrorCode::UNKNOWN_MEMBER_ID,
                format!("member {member_id} was removed: {reason}"),
                member_id,
            ));
        }
        self.join_order.retain(|id| id != member_id);
        if self.leader.as_deref() == Some(member_id) {
            self.leader = None;
        }
        let reason = format!("member {member_id} {reason}");
        if self.state == State::PreparingRebalance && !self.members.is_empty() {
            self.maybe_complete_join(now, false);
        } else {
            self.prepare_rebalance(now, &reason);
        }
        Ok(())
    }

    /// Evicts members silent for longer than their session timeout (not those waiting in a
    /// join, whose request is itself a sign of life) and completes an expired join round.
    /// Returns the evicted ids.
    pub(crate) fn tick(&mut self, now: Instant) -> Vec<String> {
        let expired: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| {
                m.join_reply.is_none() && now.duration_since(m.last_seen) > m.session_timeout
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            tracing::info!(group = %self.id, member = %id, "session timeout: member evicted");
            let _ = self.remove_member(id, now, "missed its session timeout");
        }
        if self.join_deadline.is_some_and(|d| now >= d) {
            self.maybe_complete_join(now, true);
        }
        expired
    }

    /// Whether `member_id` of `generation` may commit `(topic, partition)`.
    pub(crate) fn check_commit(
        &mut self,
        member_id: &str,
        generation: i32,
        now: Instant,
    ) -> Result<(), Refusal> {
        if generation == GENERATION_NONE && member_id.is_empty() {
            if !self.members.is_empty() {
                return Err((
                    ErrorCode::NON_EMPTY_GROUP,
                    format!(
                        "group {} has {} member(s): admin commits need an empty group",
                        self.id,
                        self.members.len()
                    ),
                ));
            }
            return Ok(());
        }
        self.check_member(member_id, generation, now)?;
        if self.state == State::CompletingRebalance {
            return Err((
                ErrorCode::REBALANCE_IN_PROGRESS,
                format!("group {} is rebalancing: rejoin", self.id),
            ));
        }
        Ok(())
    }

    /// Whether the member owns the partition (admin commits own everything).
    pub(crate) fn owns(&self, member_id: &str, topic: &str, partition: u32) -> bool {
        member_id.is_empty()
            || self
                .members
                .get(member_id)
                .is_some_and(|m| m.owned.contains(&(topic.to_string(), partition)))
    }

    /// The group as DescribeGroups shows it.
    pub(crate) fn describe(&self) -> DescribedGroup {
        DescribedGroup {
            group: self.id.clone(),
            error: ErrorCode::NONE,
            message: String::new(),
            state: self.state.name().into(),
            protocol_type: if self.members.is_empty() {
                String::new()
            } else {
                PROTOCOL_TYPE_CONSUMER.into()
            },
            protocol: self.protocol.clone().unwrap_or_default(),
            generation_id: self.generation,
            members: self
                .members
                .iter()
                .map(|(id, m)| DescribedMember {
                    member_id: id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::protocol::{ConsumerTopicPartitions, JoinGroupProtocol, SyncGroupAssignment};

    fn join_req(member: &str, protocols: &[&str]) -> JoinGroupRequest {
        JoinGroupRequest {
            group: "g".into(),
            session_timeout_ms: 1000,
            rebalance_timeout_ms: 2000,
            member_id: member.into(),
            client_id: "c".into(),
            protocol_type: PROTOCOL_TYPE_CONSUMER.into(),
            protocols: protocols
                .iter()
                .map(|n| JoinGroupProtocol {
                    name: (*n).into(),
                    metadata: Bytes::from_static(b"m"),
                })
                .collect(),
        }
    }

    fn assignment(parts: &[u32]) -> Bytes {
        ConsumerAssignment {
            partitions: vec![ConsumerTopicPartitions {
                topic: "t".into(),
                partitions: parts.to_vec(),
            }],
            user_data: Bytes::new(),
        }
        .to_bytes()
    }

    /// A SyncGroup of `generation` from `member` with `plan`: member id, partitions of "t".
    fn sync_req(generation: i32, member: &str, plan: &[(&str, &[u32])]) -> SyncGroupRequest {
        SyncGroupRequest {
            group: "g".into(),
            generation_id: generation,
            member_id: member.into(),
            assignments: plan
                .iter()
                .map(|(id, parts)| SyncGroupAssignment {
                    member_id: (*id).into(),
                    assignment: assignment(parts),
                })
                .collect(),
        }
    }

    #[test]
    fn two_members_join_sync_and_a_double_assignment_is_refused() {
        let now = Instant::now();
        let mut g = Group::new("g".into());
        let (tx1, rx1) = flume::bounded(1);
        g.join(
            join_req("", &["range", "roundrobin"]),
            "127.0.0.1".into(),
            tx1,
            now,
            1,
        )
        .expect("join");
        let r1 = rx1
            .try_recv()
            .expect("a lone member's join completes at once");
        assert_eq!(
            (r1.generation_id, r1.leader_id.as_str()),
            (1, r1.member_id.as_str())
        );
        // A second member: a new round; the first must rejoin.
        let (tx2, rx2) = flume::bounded(1);
        g.join(
            join_req("", &["roundrobin"]),
            "127.0.0.1".into(),
            tx2,
            now,
            1,
        )
        .expect("join");
        assert_eq!(g.state, State::PreparingRebalance);
        assert!(rx2.try_recv().is_err());
        let hb = g.heartbeat(&r1.member_id, 1, now);
        assert_eq!(hb.error, ErrorCode::REBALANCE_IN_PROGRESS);
        let (tx1, rx1) = flume::bounded(1);
        g.join(
            join_req(&r1.member_id, &["range", "roundrobin"]),
            "127.0.0.1".into(),
            tx1,
            now,
            1,
        )
        .expect("rejoin");
        let (a, b) = (
            rx1.try_recv().expect("leader"),
            rx2.try_recv().expect("follower"),
        );
        assert_eq!((a.generation_id, b.generation_id), (2, 2));
        assert_eq!(
            a.protocol_name, "roundrobin",
            "the one every member supports"
        );
        assert_eq!(a.members.len(), 2);
        assert!(b.members.is_empty());
        // A third member with nothing in common is refused; the group is untouched.
        let (tx3, _rx3) = flume::bounded(1);
        let refused = g
            .join(join_req("", &["sticky-x"]), "127.0.0.1".into(), tx3, now, 1)
            .expect_err("refused");
        assert_eq!(refused.0, ErrorCode::INCONSISTENT_GROUP_PROTOCOL);
        assert_eq!(g.state, State::CompletingRebalance);
        // The leader gives partition 0 to both: refused, the group still completes later.
        let bad = SyncGroupRequest {
            group: "g".into(),
            generation_id: 2,
            member_id: a.member_id.clone(),
            assignments: vec![
                SyncGroupAssignment {
                    member_id: a.member_id.clone(),
                    assignment: assignment(&[0, 1]),
                },
                SyncGroupAssignment {
                    member_id: b.member_id.clone(),
                    assignment: assignment(&[0]),
                },
            ],
        };
        let (txs, _rxs) = flume::bounded(1);
        assert_eq!(
            g.sync(bad, txs, now).expect_err("double").0,
            ErrorCode::INVALID_REQUEST
        );
        let (txf, rxf) = flume::bounded(1);
        g.sync(
            SyncGroupRequest {
                group: "g".into(),
                generation_id: 2,
                member_id: b.member_id.clone(),
                assignments: vec![],
            },
            txf,
            now,
        )
        .expect("parked");
        let good = sync_req(
            2,
            &a.member_id,
            &[(&a.member_id, &[0]), (&b.member_id, &[1])],
        );
        let (txl, rxl) = flume::bounded(1);
        assert_eq!(g.sync(good, txl, now).expect("sync"), Synced::Persist(2));
        // Nobody hears the assignments before their group record is committed.
        assert_eq!(g.state, State::CompletingRebalance);
        assert!(rxl.try_recv().is_err() && rxf.try_recv().is_err());
        let record = g.record().expect("the assignments are to be persisted");
        assert_eq!((record.generation, record.members.len()), (2, 2));
        g.assignments_persisted(2);
        assert_eq!(g.state, State::Stable);
        assert_eq!(rxl.try_recv().expect("leader").assignment, assignment(&[0]));
        assert_eq!(
            rxf.try_recv().expect("follower").assignment,
            assignment(&[1])
        );
        assert!(g.owns(&b.member_id, "t", 1) && !g.owns(&b.member_id, "t", 0));
        assert_eq!(
            g.check_commit(&a.member_id, 1, now).expect_err("stale").0,
            ErrorCode::ILLEGAL_GENERATION
        );
        // Session timeout: b goes silent, a heartbeats.
        let later = now + Duration::from_millis(1500);
        assert_eq!(g.heartbeat(&a.member_id, 2, later).error, ErrorCode::NONE);
        assert_eq!(g.tick(later), vec![b.member_id.clone()]);
        assert_eq!(g.state, State::PreparingRebalance);
        let (tx1, rx1) = flume::bounded(1);
        g.join(
            join_req(&a.member_id, &["roundrobin"]),
            "127.0.0.1".into(),
            tx1,
            later,
            1,
        )
        .expect("rejoin");
        assert_eq!(rx1.try_recv().expect("alone").generation_id, 3);
    }

    /// Two members joined, one partition each handed out; returns their ids.
    fn stable_pair(g: &mut Group, now: Instant) -> Vec<String> {
        let (tx, rx) = flume::bounded(1);
        g.join(join_req("", &["range"]), "h".into(), tx, now, 1)
            .expect("join");
        let first = rx.try_recv().expect("alone");
        let (tx2, rx2) = flume::bounded(1);
        g.join(join_req("", &["range"]), "h".into(), tx2, now, 1)
            .expect("join");
        let (tx, rx) = flume::bounded(1);
        g.join(
            join_req(&first.member_id, &["range"]),
            "h".into(),
            tx,
            now,
            1,
        )
        .expect("rejoin");
        let (a, b) = (rx.try_recv().expect("a"), rx2.try_recv().expect("b"));
        let generation = a.generation_id;
        let (tx, _rx) = flume::bounded(1);
        let plan: [(&str, &[u32]); 2] = [(&a.member_id, &[0]), (&b.member_id, &[1])];
        let step = g
            .sync(sync_req(generation, &a.leader_id, &plan), tx, now)
            .expect("sync");
        assert_eq!(step, Synced::Persist(generation));
        g.assignments_persisted(generation);
        assert_eq!(g.state, State::Stable);
        vec![a.member_id, b.member_id]
    }

    #[test]
    fn a_restored_group_keeps_its_members_and_a_newcomer_waits_for_them() {
        let now = Instant::now();
        let mut g = Group::new("g".into());
        let ids = stable_pair(&mut g, now);
        let record = g.record().expect("stable");
        let generation = g.generation;

        // Another coordinator restores it: same members, generation and partitions.
        let later = now + Duration::from_secs(30);
        let mut r = Group::new("g".into());
        r.restore(record.clone(), later);
        assert_eq!((r.state, r.generation), (State::Stable, generation));
        for (id, p) in ids.iter().zip(0u32..) {
            assert_eq!(r.heartbeat(id, generation, later).error, ErrorCode::NONE);
            assert!(r.owns(id, "t", p), "{id} owns t/{p}");
            r.check_commit(id, generation, later).expect("may commit");
        }
        // An older record does not undo a newer one.
        let stale = GroupRecord {
            generation: generation - 1,
            members: Vec::new(),
            ..record.clone()
        };
        r.restore(stale, later);
        assert_eq!(r.members.len(), 2);

        // A newcomer opens a round; it completes only when the restored members rejoin.
        let (tx, rx) = flume::bounded(1);
        r.join(join_req("", &["range"]), "h".into(), tx, later, 2)
            .expect("join");
        assert_eq!(r.state, State::PreparingRebalance);
        assert!(
            rx.try_recv().is_err(),
            "handed a generation before the others rejoined"
        );
        assert_eq!(
            r.heartbeat(&ids[0], generation, later).error,
            ErrorCode::REBALANCE_IN_PROGRESS
        );
        let mut rejoins = Vec::new();
        for id in &ids {
            let (tx, rx) = flume::bounded(1);
            r.join(join_req(id, &["range"]), "h".into(), tx, later, 2)
                .expect("rejoin");
            rejoins.push(rx);
        }
        let newcomer = rx.try_recv().expect("the round completed");
        assert_eq!(newcomer.generation_id, generation + 1);
        assert!(rejoins.iter().all(|rx| rx.try_recv().is_ok()));

        // Silent restored members are evicted after their session timeout from the restore.
        let mut silent = Group::new("g".into());
        silent.restore(record, later);
        assert!(silent.tick(later + Duration::from_millis(900)).is_empty());
        assert_eq!(silent.tick(later + Duration::from_millis(1100)).len(), 2);
        assert_eq!(silent.state, State::Empty);
        assert!(silent.take_empty_unwritten());
        let empty = silent.record().expect("empty groups are written");
        assert!(empty.members.is_empty() && empty.generation > generation);
    }

    #[test]
    fn assignments_that_could_not_be_persisted_are_not_handed_out() {
        let now = Instant::now();
        let mut g = Group::new("g".into());
        let (tx, rx) = flume::bounded(1);
        g.join(join_req("", &["range"]), "h".into(), tx, now, 1)
            .expect("join");
        let j = rx.try_recv().expect("alone");
        let (tx, rx) = flume::bounded(1);
        let plan: [(&str, &[u32]); 1] = [(&j.member_id, &[0])];
        let step = g
            .sync(sync_req(j.generation_id, &j.member_id, &plan), tx, now)
            .expect("sync");
        assert_eq!(step, Synced::Persist(j.generation_id));
        g.assignments_not_persisted(
            j.generation_id,
            (ErrorCode::NOT_COORDINATOR, "moved".into()),
            now,
        );
        let answer = rx.try_recv().expect("answered");
        assert_eq!(answer.error, ErrorCode::NOT_COORDINATOR);
        assert!(answer.assignment.is_empty());
        assert!(!g.owns(&j.member_id, "t", 0));
        assert_eq!(g.state, State::PreparingRebalance);
        // A late confirmation of that generation changes nothing.
        g.assignments_persisted(j.generation_id);
        assert_eq!(g.state, State::PreparingRebalance);
        // Nor does it release the next generation's assignments early.
        let (tx, rx) = flume::bounded(1);
        g.join(join_req(&j.member_id, &["range"]), "h".into(), tx, now, 1)
            .expect("rejoin");
        let next = rx.try_recv().expect("alone").generation_id;
        let (tx, rx) = flume::bounded(1);
        let step = g
            .sync(sync_req(next, &j.member_id, &plan), tx, now)
            .expect("sync");
        assert_eq!(step, Synced::Persist(next));
        g.assignments_persisted(j.generation_id);
        assert!(rx.try_recv().is_err(), "answered before its own record");
        g.assignments_persisted(next);
        assert_eq!(
            rx.try_recv().expect("answered").assignment,
            assignment(&[0])
        );
    }
}
