//! One consumer's membership in a group: finding the coordinator, the join/sync round, the
//! heartbeat task, commits and leaving. The [`crate::Consumer`] drives it from `poll`.
//!
//! State machine (Kafka's classic protocol):
//!
//! ```text
//!   Unjoined --join+sync--> Stable --heartbeat says REBALANCE_IN_PROGRESS--> Rejoin
//!      ^                      |     --ILLEGAL_GENERATION / UNKNOWN_MEMBER_ID--> Lost
//!      |                      '--close()--> LeaveGroup
//!   Rejoin: commit positions (generation still valid); eager assignors revoke everything,
//!           cooperative ones keep their partitions and send them as `owned`.
//!   Lost:   the partitions may already be someone else's: revoke everything, no commit.
//! ```
//!
//! The coordinator connection is dedicated to the member (not the pooled one): a JoinGroup
//! waits up to the rebalance timeout, and responses on a connection come in order, so it
//! must not hold up fetches. The heartbeat task shares it and stays quiet while a join is
//! in flight.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use sluice_proto::protocol::{
    ApiKey, ConsumerAssignment, ConsumerSubscription, ConsumerTopicPartitions, ErrorCode,
    HeartbeatRequest, HeartbeatResponse, JoinGroupProtocol, JoinGroupRequest, JoinGroupResponse,
    LeaveGroupRequest, LeaveGroupResponse, OffsetCommitResponse, OffsetFetchResponse,
    PROTOCOL_TYPE_CONSUMER, SyncGroupAssignment, SyncGroupRequest, SyncGroupResponse, Wire,
};

use super::admin::{
    CommittedOffset, commit_result, decode_assignment, is_moved, offset_commit_moved,
    offset_commit_request, offset_fetch_moved, offset_fetch_request, offsets_from,
};
use super::assignor::{Assignor, MemberSubscription};
use crate::client::Client;
use crate::config::millis_u32;
use crate::connection::Connection;
use crate::error::{ClientError, group_error};
use crate::limits::{COORDINATOR_ATTEMPTS_MAX, GROUP_JOIN_ATTEMPTS_MAX, GROUP_RETRY_BACKOFF_MS};
use crate::topic_partition::TopicPartition;

/// Called by the consumer when its partitions change in a rebalance.
///
/// `on_revoked` runs after the consumer committed the revoked partitions' positions (unless
/// the membership was lost) and before anyone else can be given them; `on_assigned` runs
/// once the new partitions have positions (committed offset, or `auto_offset_reset`).
pub trait RebalanceListener: Send {
    /// Partitions newly assigned to this consumer.
    fn on_assigned(&mut self, partitions: &[TopicPartition]) {
        let _ = partitions;
    }
    /// Partitions taken away from this consumer.
    fn on_revoked(&mut self, partitions: &[TopicPartition]) {
        let _ = partitions;
    }
}

/// No callbacks.
impl RebalanceListener for () {}

/// Timings of a membership (from [`crate::ConsumerConfig`]).
#[derive(Debug, Clone)]
pub(crate) struct GroupSettings {
    pub(crate) group: String,
    pub(crate) session_timeout: Duration,
    pub(crate) rebalance_timeout: Duration,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) assignors: Vec<Assignor>,
}

#[derive(Default)]
struct MemberState {
    member_id: String,
    /// `-1` until the first successful sync.
    generation: i32,
    conn: Option<Arc<Connection>>,
    /// The member must rejoin before its next fetch.
    rejoin: bool,
    /// The coordinator no longer knows this generation or member: the partitions may be
    /// someone else's already.
    lost: bool,
    /// A join or sync is in flight (the heartbeat task waits).
    joining: bool,
}

struct Shared {
    state: Mutex<MemberState>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, MemberState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The outcome of a join and sync.
pub(crate) struct Joined {
    pub(crate) generation: i32,
    pub(crate) protocol: Assignor,
    pub(crate) assignment: BTreeSet<TopicPartition>,
}

/// A consumer's group membership.
pub(crate) struct GroupMember {
    client: Client,
    settings: GroupSettings,
    topics: Vec<String>,
    shared: Arc<Shared>,
    heartbeat: tokio::task::JoinHandle<()>,
    /// The assignor of the current generation.
    protocol: Option<Assignor>,
}

impl std::fmt::Debug for GroupMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupMember")
            .field("group", &self.settings.group)
            .field("topics", &self.topics)
            .finish()
    }
}

impl Drop for GroupMember {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

impl GroupMember {
    /// A member not yet joined; starts the heartbeat task.
    pub(crate) fn new(client: Client, settings: GroupSettings, topics: Vec<String>) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(MemberState {
                generation: -1,
                ..MemberState::default()
            }),
        });
        let heartbeat = tokio::spawn(heartbeat_loop(
            Arc::downgrade(&shared),
            client.clone(),
            settings.clone(),
        ));
        GroupMember {
            client,
            settings,
            topics,
            shared,
            heartbeat,
            protocol: None,
        }
    }

    /// The group id.
    pub(crate) fn group(&self) -> &str {
        &self.settings.group
    }

    /// Whether a join round is due before the next fetch.
    pub(crate) fn needs_join(&self) -> bool {
        let st = self.shared.lock();
        st.generation < 0 || st.rejoin
    }

    /// Whether the membership was lost (partitions must be dropped without committing).
    pub(crate) fn is_lost(&self) -> bool {
        self.shared.lock().lost
    }

    /// Whether a commit of the owned partitions can be accepted: the member is in a
    /// generation it has not lost. A pending rejoin does not matter: until the member
    /// rejoins, the coordinator still takes commits of its generation.
    pub(crate) fn can_commit(&self) -> bool {
        let st = self.shared.lock();
        st.generation >= 0 && !st.lost
    }

    /// Asks for a rejoin at the next poll (after a cooperative revocation).
    pub(crate) fn request_rejoin(&self) {
        self.shared.lock().rejoin = true;
    }

    /// The assignor of the current generation.
    pub(crate) fn protocol(&self) -> Option<Assignor> {
        self.protocol
    }

    /// The member id and generation.
    pub(crate) fn identity(&self) -> (String, i32) {
        let st = self.shared.lock();
        (st.member_id.clone(), st.generation)
    }

    /// Joins (or rejoins) and syncs, reporting `owned` (cooperative assignors) as owned.
    /// Retries the round on rebalance and coordinator errors, up to
    /// [`GROUP_JOIN_ATTEMPTS_MAX`] times.
    pub(crate) async fn join(
        &mut self,
        owned: &BTreeSet<TopicPartition>,
    ) -> Result<Joined, ClientError> {
        self.shared.lock().joining = true;
        let result = self.join_rounds(owned).await;
        let mut st = self.shared.lock();
        st.joining = false;
        if let Ok(joined) = &result {
            st.generation = joined.generation;
            st.rejoin = false;
            st.lost = false;
            self.protocol = Some(joined.protocol);
        }
        result
    }

    async fn join_rounds(
        &mut self,
        owned: &BTreeSet<TopicPartition>,
    ) -> Result<Joined, ClientError> {
        let group = self.settings.group.clone();
        let mut last: Option<ClientError> = None;
        for attempt in 0..GROUP_JOIN_ATTEMPTS_MAX {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(GROUP_RETRY_BACKOFF_MS)).await;
            }
            match self.join_once(owned).await {
                Ok(joined) => return Ok(joined),
                Err(e) => {
                    let retry = match &e {
                        ClientError::RebalanceInProgress { .. }
                        | ClientError::IllegalGeneration { .. } => true,
                        ClientError::UnknownMember { .. } => {
                            self.shared.lock().member_id.clear();
                            true
                        }
                        e if e.is_retriable() => {
                            self.shared.lock().conn = None;
                            true
                        }
                        _ => false,
                    };
                    tracing::debug!(group, attempt, error = %e, retry, "join round failed");
                    if !retry {
                        return Err(e);
                    }
                    last = Some(e);
                }
            }
        }
        Err(ClientError::CoordinatorNotAvailable {
            group,
            reason: last.map_or_else(|| "no attempt".to_owned(), |e| e.to_string()),
        })
    }

    async fn join_once(&self, owned: &BTreeSet<TopicPartition>) -> Result<Joined, ClientError> {
        let group = &self.settings.group;
        let member_id = self.shared.lock().member_id.clone();
        let protocols = self
            .settings
            .assignors
            .iter()
            .map(|a| JoinGroupProtocol {
                name: a.name().to_owned(),
                metadata: ConsumerSubscription {
                    topics: self.topics.clone(),
                    owned: if a.is_cooperative() {
                        by_topic(owned.iter())
                    } else {
                        Vec::new()
                    },
                    user_data: Default::default(),
                }
                .to_bytes(),
            })
            .collect();
        let request = JoinGroupRequest {
            group: group.clone(),
            session_timeout_ms: millis_u32(self.settings.session_timeout),
            rebalance_timeout_ms: millis_u32(self.settings.rebalance_timeout),
            member_id: member_id.clone(),
            client_id: self.client.config().client_id.clone(),
            protocol_type: PROTOCOL_TYPE_CONSUMER.to_owned(),
            protocols,
        };
        let wait = self.settings.rebalance_timeout + self.client.request_timeout();
        let joined: JoinGroupResponse = self.call(ApiKey::JoinGroup, &request, wait).await?;
        if joined.error != ErrorCode::NONE {
            return Err(group_error(
                joined.error,
                &joined.message,
                group,
                &member_id,
                -1,
            ));
        }
        self.shared.lock().member_id = joined.member_id.clone();
        let protocol = Assignor::from_name(&joined.protocol_name).ok_or_else(|| {
            ClientError::InconsistentGroupProtocol {
                group: group.clone(),
                message: format!(
                    "the coordinator chose unknown assignor '{}'",
                    joined.protocol_name
                ),
            }
        })?;
        let assignments = if joined.leader_id == joined.member_id {
            self.lead(protocol, &joined).await?
        } else {
            Vec::new()
        };
        tracing::debug!(
            group,
            member = joined.member_id,
            generation = joined.generation_id,
            %protocol,
            leader = joined.leader_id == joined.member_id,
            "joined"
        );
        let request = SyncGroupRequest {
            group: group.clone(),
            generation_id: joined.generation_id,
            member_id: joined.member_id.clone(),
            assignments,
        };
        let synced: SyncGroupResponse = self.call(ApiKey::SyncGroup, &request, wait).await?;
        if synced.error != ErrorCode::NONE {
            return Err(group_error(
                synced.error,
                &synced.message,
                group,
                &joined.member_id,
                joined.generation_id,
            ));
        }
        Ok(Joined {
            generation: joined.generation_id,
            protocol,
            assignment: decode_assignment(&synced.assignment)?.into_iter().collect(),
        })
    }

    /// The leader's part: decode every member's subscription and run the assignor.
    async fn lead(
        &self,
        protocol: Assignor,
        joined: &JoinGroupResponse,
    ) -> Result<Vec<SyncGroupAssignment>, ClientError> {
        let mut members = Vec::with_capacity(joined.members.len());
        for m in &joined.members {
            let sub = ConsumerSubscription::from_bytes(&m.metadata)?;
            members.push(MemberSubscription {
                member_id: m.member_id.clone(),
                topics: sub.topics,
                owned: sub
                    .owned
                    .iter()
                    .flat_map(|t| {
                        t.partitions
                            .iter()
                            .map(|p| TopicPartition::new(t.topic.clone(), *p))
                    })
                    .collect(),
            });
        }
        let topics: BTreeSet<&String> = members.iter().flat_map(|m| m.topics.iter()).collect();
        let mut counts = BTreeMap::new();
        for topic in topics {
            // Fresh counts, so partitions added since the last rebalance are assigned.
            self.client.forget_topic(topic);
            match self.client.partition_count(topic).await {
                Ok(n) => {
                    counts.insert(topic.clone(), n);
                }
                Err(ClientError::UnknownTopic { .. }) => {
                    tracing::warn!(
                        group = self.settings.group,
                        topic,
                        "subscribed topic does not exist"
                    );
                }
                Err(e) => return Err(e),
            }
        }
        let plan = protocol.assign(&members, &counts);
        Ok(plan
            .into_iter()
            .map(|(member_id, partitions)| SyncGroupAssignment {
                member_id,
                assignment: ConsumerAssignment {
                    partitions: by_topic(partitions.iter()),
                    user_data: Default::default(),
                }
                .to_bytes(),
            })
            .collect())
    }

    /// Commits offsets with the current generation.
    pub(crate) async fn commit(
        &self,
        offsets: &BTreeMap<TopicPartition, (u64, String)>,
    ) -> Result<(), ClientError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let (member_id, generation) = self.identity();
        let request = offset_commit_request(
            &self.settings.group,
            generation,
            &member_id,
            offsets.iter().map(|(tp, (o, m))| (tp, *o, m.as_str())),
        );
        let response: OffsetCommitResponse = coordinator_call(
            &self.shared,
            &self.client,
            &self.settings.group,
            ApiKey::OffsetCommit,
            &request,
            self.client.request_timeout(),
            offset_commit_moved,
            COORDINATOR_ATTEMPTS_MAX,
        )
        .await?;
        let result = commit_result(&self.settings.group, &member_id, generation, &response);
        self.note_error(&result, generation);
        result
    }

    /// A commit as a detached future (for `commit_async`): it captures the connection and
    /// identity now.
    pub(crate) fn commit_later(
        &self,
        offsets: BTreeMap<TopicPartition, (u64, String)>,
    ) -> impl Future<Output = Result<(), ClientError>> + Send + 'static {
        let shared = self.shared.clone();
        let client = self.client.clone();
        let settings = self.settings.clone();
        async move {
            if offsets.is_empty() {
                return Ok(());
            }
            let (member_id, generation) = {
                let st = shared.lock();
                (st.member_id.clone(), st.generation)
            };
            let request = offset_commit_request(
                &settings.group,
                generation,
                &member_id,
                offsets.iter().map(|(tp, (o, m))| (tp, *o, m.as_str())),
            );
            let response: OffsetCommitResponse = coordinator_call(
                &shared,
                &client,
                &settings.group,
                ApiKey::OffsetCommit,
                &request,
                client.request_timeout(),
                offset_commit_moved,
                COORDINATOR_ATTEMPTS_MAX,
            )
            .await?;
            commit_result(&settings.group, &member_id, generation, &response)
        }
    }

    /// The committed offsets of `partitions`.
    pub(crate) async fn committed(
        &self,
        partitions: &[TopicPartition],
    ) -> Result<BTreeMap<TopicPartition, CommittedOffset>, ClientError> {
        let request = offset_fetch_request(&self.settings.group, partitions);
        let response: OffsetFetchResponse = coordinator_call(
            &self.shared,
            &self.client,
            &self.settings.group,
            ApiKey::OffsetFetch,
            &request,
            self.client.request_timeout(),
            offset_fetch_moved,
            COORDINATOR_ATTEMPTS_MAX,
        )
        .await?;
        offsets_from(&self.settings.group, response)
    }

    /// Leaves the group (best effort: the session timeout evicts the member anyway).
    pub(crate) async fn leave(&self) -> Result<(), ClientError> {
        let (member_id, _) = self.identity();
        self.heartbeat.abort();
        if member_id.is_empty() {
            return Ok(());
        }
        let request = LeaveGroupRequest {
            group: self.settings.group.clone(),
            member_id: member_id.clone(),
        };
        let response: LeaveGroupResponse = coordinator_call(
            &self.shared,
            &self.client,
            &self.settings.group,
            ApiKey::LeaveGroup,
            &request,
            self.client.request_timeout(),
            |r: &LeaveGroupResponse| is_moved(r.error).then(|| (r.error, r.message.clone())),
            COORDINATOR_ATTEMPTS_MAX,
        )
        .await?;
        let mut st = self.shared.lock();
        st.generation = -1;
        st.member_id.clear();
        if response.error != ErrorCode::NONE {
            return Err(group_error(
                response.error,
                &response.message,
                &self.settings.group,
                &member_id,
                -1,
            ));
        }
        Ok(())
    }

    /// A request to the coordinator, sent once (join rounds retry themselves); a
    /// coordinator move or connection failure drops the connection, so the next call finds
    /// the coordinator again.
    async fn call<Req: Wire, Resp: Wire>(
        &self,
        api: ApiKey,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, ClientError> {
        let conn = coordinator(&self.shared, &self.client, &self.settings.group).await?;
        let result = conn.call(api, body, timeout).await;
        if let Err(e) = &result
            && (e.is_retriable() || e.wants_new_coordinator())
        {
            self.shared.lock().conn = None;
        }
        result
    }

    /// Records what a group error means for the membership.
    fn note_error(&self, result: &Result<(), ClientError>, generation: i32) {
        let Err(e) = result else { return };
        let mut st = self.shared.lock();
        if st.generation != generation {
            return;
        }
        mark(&mut st, e);
    }
}

/// Applies a group error to the state: rejoin, and for a stale generation or unknown member,
/// the membership is lost.
fn mark(st: &mut MemberState, e: &ClientError) {
    match e {
        ClientError::RebalanceInProgress { .. } => st.rejoin = true,
        ClientError::IllegalGeneration { .. } => {
            st.rejoin = true;
            st.lost = true;
        }
        ClientError::UnknownMember { .. } => {
            st.rejoin = true;
            st.lost = true;
            st.member_id.clear();
        }
        ClientError::Broker { code, .. }
            if *code == ErrorCode::NOT_COORDINATOR
                || *code == ErrorCode::COORDINATOR_NOT_AVAILABLE =>
        {
            st.conn = None;
        }
        _ => {}
    }
}

/// The member's coordinator connection, found (FindCoordinator against any live broker)
/// and dialled if there is none.
async fn coordinator(
    shared: &Shared,
    client: &Client,
    group: &str,
) -> Result<Arc<Connection>, ClientError> {
    if let Some(conn) = shared.lock().conn.clone().filter(|c| !c.is_dead()) {
        return Ok(conn);
    }
    let addr = client.coordinator_address(group).await?;
    let config = client.config();
    let conn = Connection::open(&addr, &config.client_id, config.connect_timeout).await?;
    shared.lock().conn = Some(conn.clone());
    Ok(conn)
}

/// A request to the coordinator over the member's own connection. On a coordinator move
/// (`NOT_COORDINATOR` / `COORDINATOR_NOT_AVAILABLE` in the header, or in the body as
/// `moved` reports it) or a connection failure the connection is dropped, and the request
/// is sent again to the coordinator found anew, up to `attempts` attempts `retry_backoff`
/// apart. The member id and generation in `body` stay as they are: the coordinator that
/// takes over the group still knows them.
#[allow(clippy::too_many_arguments)]
async fn coordinator_call<Req: Wire, Resp: Wire>(
    shared: &Shared,
    client: &Client,
    group: &str,
    api: ApiKey,
    body: &Req,
    timeout: Duration,
    moved: fn(&Resp) -> Option<(ErrorCode, String)>,
    attempts: u32,
) -> Result<Resp, ClientError> {
    let mut attempt = 1;
    loop {
        let result = async {
            let conn = coordinator(shared, client, group).await?;
            let response: Resp = conn.call(api, body, timeout).await?;
            if let Some((code, message)) = moved(&response) {
                return Err(ClientError::Broker { code, message });
            }
            Ok(response)
        }
        .await;
        match result {
            Err(e) if e.wants_new_coordinator() => {
                shared.lock().conn = None;
                if attempt >= attempts {
                    return Err(e);
                }
                tracing::debug!(group, api = api.spec().name, attempt, error = %e,
                    "coordinator moved or unreachable; finding it again");
                attempt += 1;
                tokio::time::sleep(client.retry_backoff()).await;
            }
            other => return other,
        }
    }
}

/// Sends a heartbeat every interval while the member is in a generation and not joining;
/// turns the answers into rejoin or lost flags. Ends when the member is dropped.
async fn heartbeat_loop(shared: Weak<Shared>, client: Client, settings: GroupSettings) {
    loop {
        tokio::time::sleep(settings.heartbeat_interval).await;
        let Some(strong) = shared.upgrade() else {
            return;
        };
        let (member_id, generation) = {
            let st = strong.lock();
            if st.joining || st.generation < 0 || st.rejoin || st.member_id.is_empty() {
                continue;
            }
            (st.member_id.clone(), st.generation)
        };
        let request = HeartbeatRequest {
            group: settings.group.clone(),
            generation_id: generation,
            member_id: member_id.clone(),
        };
        let result = async {
            let conn = coordinator(&strong, &client, &settings.group).await?;
            conn.call::<_, HeartbeatResponse>(ApiKey::Heartbeat, &request, client.request_timeout())
                .await
        }
        .await;
        let error = match result {
            Ok(r) if r.error == ErrorCode::NONE => continue,
            Ok(r) => group_error(r.error, &r.message, &settings.group, &member_id, generation),
            Err(e) => e,
        };
        tracing::debug!(group = settings.group, error = %error, "heartbeat");
        let mut st = strong.lock();
        if st.generation == generation {
            if error.is_retriable() {
                st.conn = None;
            }
            mark(&mut st, &error);
        }
    }
}

/// Partitions grouped by topic, for the consumer protocol payloads.
fn by_topic<'a>(
    partitions: impl Iterator<Item = &'a TopicPartition>,
) -> Vec<ConsumerTopicPartitions> {
    let mut map: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for tp in partitions {
        map.entry(&tp.topic).or_default().push(tp.partition);
    }
    map.into_iter()
        .map(|(topic, partitions)| ConsumerTopicPartitions {
            topic: topic.to_owned(),
            partitions,
        })
        .collect()
}
