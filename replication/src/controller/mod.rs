//! The Raft controller: cluster metadata replicated by raft-rs among the nodes of `--cluster`.
//!
//! [`Controller`] is sans-IO and `!Send`-friendly: it owns a raft-rs `RawNode` over
//! [`DiskStorage`] (in `DATA_DIR/controller/`) and the [`ClusterState`] state machine. The
//! caller (shard 0 of the broker, next round) drives it:
//!
//! - [`Controller::tick`] every [`CONTROLLER_TICK_MS`];
//! - [`Controller::step`] with every raft message a peer sends (frame kind 1);
//! - [`Controller::ready`] after either, which persists (fsync) first, then hands out the
//!   messages to send and the commands it applied;
//! - on the active controller (the Raft leader) only: [`Controller::broker_heartbeat`],
//!   [`Controller::check_liveness`], [`Controller::create_topic`] and [`Controller::propose`],
//!   which decide (time and choices are inputs) and propose [`Command`]s. Apply only validates
//!   and applies, so every voter reaches the same state.
//!
//! Raft node ids are `node_id + 1`, because raft-rs reserves 0 for "none" and Sluice node ids
//! start at 0. The voter set is fixed at first open (every node of `--cluster`) and checked on
//! every later open.

pub mod driver;
mod error;
pub mod state;
pub mod storage;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::eraftpb::{Entry, EntryType, Message, MessageType};
use raft::{RawNode, StateRole};

pub use driver::{ControllerDriver, DriverError, DriverStats};
pub use error::{ControllerError, Result};
pub use state::{
    BrokerInfo, BrokerRegistration, ClusterState, Command, PartitionChange, PartitionState,
    Reassignment, Rejection, TopicState,
};
pub use storage::{DiskStorage, Recovery};

use state::{
    assign_replicas, changes_for_fence, changes_for_unfence, decommission_blocker,
    reassignment_steps, validate_topic_name,
};
use storage::{CONTROLLER_ENTRY_BYTES_MAX, CONTROLLER_SNAPSHOT_BYTES_MAX, CONTROLLER_VOTERS_MAX};

pub use crate::NodeId;

/// How often the caller calls [`Controller::tick`].
pub const CONTROLLER_TICK_MS: u64 = 100;
/// Default ticks without a leader before a follower campaigns (randomized up to twice this).
pub const CONTROLLER_ELECTION_TICKS: usize = 10;
/// Default ticks between leader heartbeats.
pub const CONTROLLER_HEARTBEAT_TICKS: usize = 2;
/// Default applied entries between two snapshots (and log compactions).
pub const CONTROLLER_SNAPSHOT_ENTRIES: u64 = 1000;
/// Default time a broker may stay silent before the active controller fences it.
pub const BROKER_SESSION_TIMEOUT_MS: u64 = 9_000;
/// Largest raft message accepted from a peer: one peer frame (a snapshot fits in it).
pub const CONTROLLER_MESSAGE_BYTES_MAX: usize = 8 * 1024 * 1024 + 64 * 1024;
/// Most partition reassignments under way at once (each copies a whole partition to a new
/// replica, so this bounds the extra replication traffic a decommission causes).
pub const REASSIGNMENTS_IN_FLIGHT_MAX: usize = 32;
/// Largest encoded command a proposal may carry.
pub const COMMAND_BYTES_MAX: usize = 1024 * 1024;
/// raft-rs: most bytes of entries in one append message.
const RAFT_MSG_BYTES_MAX: u64 = 1024 * 1024;
/// raft-rs: most append messages in flight to one follower.
const RAFT_INFLIGHT_MSGS_MAX: usize = 64;
/// raft-rs: most bytes of proposed but uncommitted entries on the leader.
const RAFT_UNCOMMITTED_BYTES_MAX: u64 = 32 * 1024 * 1024;

const _: () = assert!(COMMAND_BYTES_MAX + 1024 <= CONTROLLER_ENTRY_BYTES_MAX);
const _: () = assert!(CONTROLLER_SNAPSHOT_BYTES_MAX + 4096 <= CONTROLLER_MESSAGE_BYTES_MAX);
const _: () = assert!((RAFT_MSG_BYTES_MAX as usize) < CONTROLLER_MESSAGE_BYTES_MAX);

/// Controller tuning.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Ticks without a leader before a follower campaigns: raft-rs picks a timeout at random
    /// in `[election_ticks, election_ticks + election_ticks_spread)` after every reset.
    pub election_ticks: usize,
    /// Width of that random window, at least 1. The default (`election_ticks`) is raft-rs's
    /// `[election, 2 * election)`; 1 fixes the timeout, which a deterministic simulation
    /// uses with a different `election_ticks` per node.
    pub election_ticks_spread: usize,
    /// Ticks between leader heartbeats; less than `election_ticks`.
    pub heartbeat_ticks: usize,
    /// Applied entries between two snapshots; at least 1.
    pub snapshot_entries: u64,
    /// Silence after which the active controller fences a broker.
    pub broker_session_timeout: Duration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            election_ticks: CONTROLLER_ELECTION_TICKS,
            election_ticks_spread: CONTROLLER_ELECTION_TICKS,
            heartbeat_ticks: CONTROLLER_HEARTBEAT_TICKS,
            snapshot_entries: CONTROLLER_SNAPSHOT_ENTRIES,
            broker_session_timeout: Duration::from_millis(BROKER_SESSION_TIMEOUT_MS),
        }
    }
}

/// A committed command as this node applied it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Raft index of the entry.
    pub index: u64,
    /// The command.
    pub command: Command,
    /// Whether it changed the state (every voter gets the same result).
    pub result: std::result::Result<(), Rejection>,
}

/// What [`Controller::ready`] hands out.
#[derive(Debug, Default)]
pub struct Output {
    /// Raft messages to send: destination node and the encoded message (frame kind 1).
    pub messages: Vec<(NodeId, Vec<u8>)>,
    /// Commands applied to the [`ClusterState`], in order.
    pub applied: Vec<Applied>,
    /// Whether the state was replaced by a snapshot from the leader.
    pub snapshot_installed: bool,
}

/// A broker's periodic heartbeat to the active controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerHeartbeat {
    /// Who the broker is and where it listens.
    pub registration: BrokerRegistration,
    /// Whether the broker is ready to serve (asks to be unfenced).
    pub want_unfence: bool,
}

/// The active controller's answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatReply {
    /// Whether the broker is registered with this incarnation.
    pub registered: bool,
    /// Whether the broker is fenced (it must not lead or accept produce).
    pub fenced: bool,
    /// The controller's applied index, for the broker to know how far its metadata must be.
    pub applied_index: u64,
}

/// Bridges raft-rs's slog lines at warn and above to `tracing`; drops the rest.
struct SlogToTracing;

impl slog::Drain for SlogToTracing {
    type Ok = ();
    type Err = slog::Never;

    fn log(
        &self,
        record: &slog::Record<'_>,
        _values: &slog::OwnedKVList,
    ) -> std::result::Result<(), slog::Never> {
        if record.level().is_at_least(slog::Level::Warning) {
            tracing::warn!(target: "sluice::controller::raft", "{}", record.msg());
        }
        Ok(())
    }
}

fn raft_id(node: NodeId) -> u64 {
    u64::from(node) + 1
}

fn node_id(raft_id: u64) -> Option<NodeId> {
    raft_id
        .checked_sub(1)
        .and_then(|n| NodeId::try_from(n).ok())
}

/// One controller voter: raft-rs `RawNode`, durable storage and the cluster state.
pub struct Controller {
    me: NodeId,
    voters: Vec<NodeId>,
    config: ControllerConfig,
    raw: RawNode<DiskStorage>,
    state: ClusterState,
    applied_index: u64,
    poisoned: bool,
    /// Messages produced while opening, handed out by the next `ready`.
    outbox: Vec<(NodeId, Vec<u8>)>,
    /// Active controller only: when this node started leading (first duty call).
    leading_since: Option<Instant>,
    /// Active controller only: last heartbeat seen per broker.
    last_heartbeat: BTreeMap<NodeId, Instant>,
    /// Active controller only: brokers (by incarnation) in a controlled shutdown; a heartbeat
    /// of theirs that was already on its way never unfences them again. At most one entry
    /// per registered broker (a new incarnation replaces it).
    stopping: BTreeMap<NodeId, u64>,
    /// Index of the last state-dependent proposal; none is made until it applies.
    pending_index: Option<u64>,
    /// Leader-local choice of where replica assignment starts (Kafka picks at random).
    assign_start: usize,
}

impl Controller {
    /// Opens the controller in `dir` (created and initialized on first use) as node `me`
    /// among `voters`, replaying the snapshot and the committed log into the state.
    pub fn open(
        dir: &Path,
        me: NodeId,
        voters: &[NodeId],
        config: ControllerConfig,
    ) -> Result<Controller> {
        let mut sorted = voters.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != voters.len() || sorted.is_empty() || sorted.len() > CONTROLLER_VOTERS_MAX
        {
            return Err(ControllerError::Voters(format!(
                "{voters:?}: 1 to {CONTROLLER_VOTERS_MAX} distinct node ids"
            )));
        }
        if !sorted.contains(&me) {
            return Err(ControllerError::Voters(format!(
                "node {me} is not one of the voters {voters:?}"
            )));
        }
        if config.snapshot_entries == 0
            || config.election_ticks_spread == 0
            || config.heartbeat_ticks == 0
            || config.heartbeat_ticks >= config.election_ticks
        {
            return Err(ControllerError::Config(format!(
                "{config:?}: snapshot_entries, election_ticks_spread and heartbeat_ticks must \
                 be at least 1, heartbeat_ticks below election_ticks"
            )));
        }
        let raft_voters: Vec<u64> = sorted.iter().map(|n| raft_id(*n)).collect();
        let (storage, recovery) = DiskStorage::open(dir, &raft_voters)?;
        let snap = storage.snapshot_ref();
        let applied_index = snap.get_metadata().index;
        let state = if applied_index > 0 {
            ClusterState::decode(&snap.data).map_err(|e| ControllerError::Corrupt {
                path: dir.join("snapshot"),
                reason: format!("the cluster state does not decode: {e}"),
            })?
        } else {
            ClusterState::default()
        };
        tracing::info!(
            dir = %dir.display(),
            node = me,
            fresh = recovery.fresh,
            snapshot_index = recovery.snapshot_index,
            log_entries = recovery.entries,
            cut_bytes = recovery.cut_bytes,
            "controller storage opened"
        );
        let raft_config = raft::Config {
            id: raft_id(me),
            election_tick: config.election_ticks,
            min_election_tick: config.election_ticks,
            max_election_tick: config.election_ticks + config.election_ticks_spread,
            heartbeat_tick: config.heartbeat_ticks,
            applied: applied_index,
            max_size_per_msg: RAFT_MSG_BYTES_MAX,
            max_inflight_msgs: RAFT_INFLIGHT_MSGS_MAX,
            max_uncommitted_size: RAFT_UNCOMMITTED_BYTES_MAX,
            // An isolated leader steps down, and an isolated node's elections do not disturb
            // the majority when it returns.
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        raft_config.validate()?;
        let logger = slog::Logger::root(SlogToTracing, slog::o!());
        let raw = RawNode::new(&raft_config, storage, &logger)?;
        let mut controller = Controller {
            me,
            voters: sorted,
            assign_start: me as usize,
            config,
            raw,
            state,
            applied_index,
            poisoned: false,
            outbox: Vec::new(),
            leading_since: None,
            last_heartbeat: BTreeMap::new(),
            stopping: BTreeMap::new(),
            pending_index: None,
        };
        // Apply the committed entries after the snapshot now, so `state()` is current.
        let out = controller.ready()?;
        controller.outbox = out.messages;
        Ok(controller)
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.me
    }

    /// The voters.
    pub fn voters(&self) -> &[NodeId] {
        &self.voters
    }

    /// The applied cluster state.
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// Index of the last applied entry.
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// Index of the latest snapshot (0: none).
    pub fn snapshot_index(&self) -> u64 {
        self.raw.store().snapshot_ref().get_metadata().index
    }

    /// Entries held in the log after the snapshot.
    pub fn log_entries(&self) -> usize {
        self.raw.store().entry_count()
    }

    /// The current Raft term.
    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    /// The leader this node knows of.
    pub fn leader(&self) -> Option<NodeId> {
        match self.raw.raft.leader_id {
            0 => None,
            id => node_id(id),
        }
    }

    /// Whether this node is the Raft leader (the active controller).
    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// Tells raft that `node` could not be reached (the transport failed to send to it), so
    /// the leader stops streaming appends to it and probes instead.
    pub fn report_unreachable(&mut self, node: NodeId) {
        if self.voters.contains(&node) && node != self.me {
            self.raw.report_unreachable(raft_id(node));
        }
    }

    /// Advances the Raft clock by one tick.
    pub fn tick(&mut self) {
        self.raw.tick();
    }

    /// Steps a raft message received from peer `from` (as the transport verified it).
    /// Garbage, a sender that is not a voter or not the verified peer, a message for another
    /// node, or a message type peers must not send: a typed error, no state change.
    pub fn step(&mut self, from: NodeId, bytes: &[u8]) -> Result<()> {
        self.check_usable()?;
        let bad = |reason: String| ControllerError::BadMessage { from, reason };
        let foreign = |reason: String| ControllerError::ForeignMessage { from, reason };
        if bytes.len() > CONTROLLER_MESSAGE_BYTES_MAX {
            return Err(bad(format!(
                "{} bytes, at most {CONTROLLER_MESSAGE_BYTES_MAX}",
                bytes.len()
            )));
        }
        let msg = Message::parse_from_bytes(bytes).map_err(|e| bad(e.to_string()))?;
        if !self.voters.contains(&from) || from == self.me {
            return Err(foreign(format!("node {from} is not a peer voter")));
        }
        if msg.from != raft_id(from) {
            return Err(foreign(format!(
                "the message claims raft id {} but the peer is node {from}",
                msg.from
            )));
        }
        if msg.to != raft_id(self.me) {
            return Err(foreign(format!(
                "addressed to raft id {}, this is node {}",
                msg.to, self.me
            )));
        }
        match msg.get_msg_type() {
            MessageType::MsgHup
            | MessageType::MsgBeat
            | MessageType::MsgUnreachable
            | MessageType::MsgSnapStatus
            | MessageType::MsgCheckQuorum
            | MessageType::MsgPropose
            | MessageType::MsgReadIndex
            | MessageType::MsgReadIndexResp
            | MessageType::MsgTransferLeader => {
                return Err(foreign(format!(
                    "message type {:?} is not accepted from peers",
                    msg.get_msg_type()
                )));
            }
            _ => {}
        }
        if msg.get_msg_type() == MessageType::MsgSnapshot
            && ClusterState::decode(&msg.get_snapshot().data).is_err()
        {
            return Err(bad("snapshot data is not a cluster state".into()));
        }
        self.raw.step(msg).map_err(ControllerError::Raft)
    }

    /// Proposes a command (active controller only). Returns the raft index it will have if
    /// it commits; its result comes in [`Output::applied`]. If leadership moves before it
    /// commits, another command may take that index (or none ever does): callers compare
    /// the applied command and time out.
    pub fn propose(&mut self, command: &Command) -> Result<u64> {
        self.check_usable()?;
        self.check_leader()?;
        let data = command.encode();
        if data.len() > COMMAND_BYTES_MAX {
            return Err(ControllerError::Invalid(Rejection::InvalidRequest(
                format!(
                    "command of {} bytes, at most {COMMAND_BYTES_MAX}",
                    data.len()
                ),
            )));
        }
        self.raw.propose(Vec::new(), data)?;
        Ok(self.raw.raft.raft_log.last_index())
    }

    /// Handles raft's pending work: persists entries, HardState and received snapshots
    /// (fsync), then returns the messages to send and the commands applied. Call after
    /// `tick`, `step` and `propose`. An error here is fatal (a failed write or fsync; the
    /// controller refuses all further work with [`ControllerError::Poisoned`] and the broker
    /// must stop).
    pub fn ready(&mut self) -> Result<Output> {
        self.check_usable()?;
        match self.ready_inner() {
            Ok(out) => Ok(out),
            Err(e) => {
                // A failed write or fsync, or a committed entry that does not decode: raft-rs
                // cannot be resumed half-way through a Ready, so the controller stops.
                tracing::error!(node = self.me, error = %e, "controller failed; stopping it");
                self.poisoned = true;
                Err(e)
            }
        }
    }

    fn ready_inner(&mut self) -> Result<Output> {
        let mut out = Output {
            messages: std::mem::take(&mut self.outbox),
            ..Default::default()
        };
        if !self.raw.has_ready() {
            return Ok(out);
        }
        let mut rd = self.raw.ready();
        // The leader's own messages may go before its entries are durable (Raft thesis
        // 10.2.1), but they are only handed out after the fsync below anyway.
        let early = rd.take_messages();

        if !rd.snapshot().is_empty() {
            let snap = rd.snapshot().clone();
            let state = ClusterState::decode(&snap.data)?;
            self.raw.mut_store().apply_snapshot(&snap)?;
            self.state = state;
            self.applied_index = snap.get_metadata().index;
            out.snapshot_installed = true;
            tracing::info!(
                node = self.me,
                index = self.applied_index,
                "controller installed a snapshot from the leader"
            );
        }
        let committed = rd.take_committed_entries();
        self.apply_entries(committed, &mut out)?;
        self.raw.mut_store().append(rd.entries())?;
        if let Some(hs) = rd.hs() {
            self.raw.mut_store().set_hard_state(hs)?;
        }
        let persisted = rd.take_persisted_messages();
        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit)?;
        }
        let mut snapshots_sent = Vec::new();
        for msg in early
            .into_iter()
            .chain(persisted)
            .chain(light.take_messages())
        {
            if msg.get_msg_type() == MessageType::MsgSnapshot {
                snapshots_sent.push(msg.to);
            }
            push_message(&mut out.messages, msg);
        }
        let committed = light.take_committed_entries();
        self.apply_entries(committed, &mut out)?;
        self.raw.advance_apply();
        // A snapshot handed to the transport counts as sent: raft-rs then probes the
        // follower, and if the snapshot was lost on the way, the probe is rejected and the
        // snapshot goes again. (Waiting for a report instead would stall the follower for
        // good when the message is lost.)
        for to in snapshots_sent {
            self.raw.report_snapshot(to, raft::SnapshotStatus::Finish);
        }
        self.maybe_snapshot()?;
        if !self.is_leader() {
            self.leading_since = None;
            self.last_heartbeat.clear();
            self.pending_index = None;
        } else if self.pending_index.is_some_and(|p| self.applied_index >= p) {
            self.pending_index = None;
        }
        Ok(out)
    }

    fn apply_entries(&mut self, entries: Vec<Entry>, out: &mut Output) -> Result<()> {
        for entry in entries {
            if entry.index <= self.applied_index {
                continue;
            }
            self.applied_index = entry.index;
            if entry.data.is_empty() {
                continue; // a new leader's empty entry
            }
            if entry.get_entry_type() != EntryType::EntryNormal {
                // The voter set is fixed; nothing proposes configuration changes.
                tracing::warn!(
                    node = self.me,
                    index = entry.index,
                    "ignoring a raft configuration change entry"
                );
                continue;
            }
            let command = Command::decode(&entry.data)?;
            let result = self.state.apply(&command);
            if let Err(rejection) = &result {
                tracing::info!(
                    node = self.me,
                    index = entry.index,
                    %rejection,
                    "controller command rejected"
                );
            }
            out.applied.push(Applied {
                index: entry.index,
                command,
                result,
            });
        }
        Ok(())
    }

    fn maybe_snapshot(&mut self) -> Result<()> {
        if self.applied_index < self.snapshot_index() + self.config.snapshot_entries {
            return Ok(());
        }
        let data = self.state.encode();
        if data.len() > CONTROLLER_SNAPSHOT_BYTES_MAX {
            // The cluster limits keep the state far below this; never silently drop it.
            return Err(ControllerError::Corrupt {
                path: Path::new("snapshot").to_path_buf(),
                reason: format!(
                    "cluster state of {} bytes exceeds {CONTROLLER_SNAPSHOT_BYTES_MAX}",
                    data.len()
                ),
            });
        }
        let index = self.applied_index;
        self.raw.mut_store().compact(index, data)?;
        tracing::debug!(
            node = self.me,
            index,
            "controller snapshot written, log compacted"
        );
        Ok(())
    }

    fn check_usable(&self) -> Result<()> {
        if self.poisoned {
            Err(ControllerError::Poisoned)
        } else {
            Ok(())
        }
    }

    fn check_leader(&self) -> Result<()> {
        if self.is_leader() {
            Ok(())
        } else {
            Err(ControllerError::NotLeader {
                leader_hint: self.leader(),
            })
        }
    }

    /// Starts the active controller's clock: brokers it has not heard from yet count as
    /// heard at the moment it started leading, so a new leader fences no one at once.
    fn leader_clock(&mut self, now: Instant) -> Instant {
        *self.leading_since.get_or_insert(now)
    }

    /// Whether a state-dependent decision may be proposed: this leader applied everything up
    /// to an entry of its own term (so its state holds all that earlier leaders committed),
    /// and its previous decision applied.
    fn may_decide(&self) -> bool {
        self.caught_up() && self.pending_index.is_none()
    }

    /// Whether this leader applied an entry of its own term (its first entry is empty).
    fn caught_up(&self) -> bool {
        self.raw
            .raft
            .raft_log
            .term(self.applied_index)
            .is_ok_and(|t| t == self.raw.raft.term)
    }

    fn check_caught_up(&self) -> Result<()> {
        if self.caught_up() {
            Ok(())
        } else {
            Err(ControllerError::Busy)
        }
    }

    fn propose_decision(&mut self, command: &Command) -> Result<u64> {
        let index = self.propose(command)?;
        self.pending_index = Some(index);
        Ok(index)
    }

    /// Handles a broker heartbeat on the active controller: records liveness, and proposes
    /// what follows: registering a new broker or a new incarnation (a restarted broker that
    /// is still unfenced is fenced first), unfencing a registered broker that asks for it.
    pub fn broker_heartbeat(
        &mut self,
        hb: &BrokerHeartbeat,
        now: Instant,
    ) -> Result<HeartbeatReply> {
        self.check_usable()?;
        self.check_leader()?;
        self.leader_clock(now);
        let reg = &hb.registration;
        if !self.last_heartbeat.contains_key(&reg.id)
            && self.last_heartbeat.len() >= state::CLUSTER_BROKERS_MAX
        {
            return Err(ControllerError::Invalid(Rejection::InvalidRequest(
                format!("more than {} brokers", state::CLUSTER_BROKERS_MAX),
            )));
        }
        self.last_heartbeat.insert(reg.id, now);
        let known = self.state.brokers.get(&reg.id).cloned();
        if self.may_decide() {
            match known {
                None => {
                    self.propose_decision(&Command::RegisterBroker {
                        registration: reg.clone(),
                    })?;
                }
                Some(b) if b.registration != *reg => {
                    if b.fenced {
                        self.propose_decision(&Command::RegisterBroker {
                            registration: reg.clone(),
                        })?;
                    } else {
                        let changes = changes_for_fence(&self.state, reg.id);
                        tracing::info!(
                            broker = reg.id,
                            incarnation = reg.incarnation,
                            "broker restarted; fencing its old incarnation"
                        );
                        self.propose_decision(&Command::FenceBroker {
                            broker: reg.id,
                            changes,
                        })?;
                    }
                }
                Some(b)
                    if b.fenced
                        && hb.want_unfence
                        && self.stopping.get(&reg.id) != Some(&reg.incarnation) =>
                {
                    let changes = changes_for_unfence(&self.state, reg.id);
                    self.propose_decision(&Command::UnfenceBroker {
                        broker: reg.id,
                        incarnation: reg.incarnation,
                        changes,
                    })?;
                }
                Some(_) => {}
            }
        }
        let current = self
            .state
            .brokers
            .get(&reg.id)
            .filter(|b| b.registration == *reg);
        Ok(HeartbeatReply {
            registered: current.is_some(),
            fenced: current.is_none_or(|b| b.fenced),
            applied_index: self.applied_index,
        })
    }

    /// On the active controller: fences a broker whose last heartbeat is older than the
    /// session timeout, with the leader elections and ISR shrinks that follow (at most one
    /// broker per call, and only once the previous decision applied). Returns the broker.
    pub fn check_liveness(&mut self, now: Instant) -> Result<Option<NodeId>> {
        self.check_usable()?;
        self.check_leader()?;
        let since = self.leader_clock(now);
        if !self.may_decide() {
            return Ok(None);
        }
        let timeout = self.config.broker_session_timeout;
        let dead = self.state.brokers.iter().find(|(id, b)| {
            let last = self.last_heartbeat.get(id).copied().unwrap_or(since);
            !b.fenced && now.saturating_duration_since(last) >= timeout
        });
        let Some((&broker, _)) = dead else {
            return Ok(None);
        };
        let changes = changes_for_fence(&self.state, broker);
        tracing::warn!(
            broker,
            partitions = changes.len(),
            "broker session expired; fencing it"
        );
        self.propose_decision(&Command::FenceBroker { broker, changes })?;
        Ok(Some(broker))
    }

    /// On the active controller: validates and proposes a topic with an explicit replica
    /// assignment, round-robin over the live brokers (rack-less, like Kafka). Returns the
    /// raft index of the proposal.
    pub fn create_topic(
        &mut self,
        name: &str,
        partitions: u32,
        replication_factor: usize,
        configs: BTreeMap<String, String>,
    ) -> Result<u64> {
        self.check_usable()?;
        self.check_leader()?;
        self.check_caught_up()?;
        validate_topic_name(name)?;
        if self.state.topics.contains_key(name) {
            return Err(Rejection::TopicExists(name.to_string()).into());
        }
        if partitions == 0 || partitions > state::TOPIC_PARTITIONS_MAX {
            return Err(Rejection::InvalidPartitions(partitions).into());
        }
        let live = self.state.assignable_brokers();
        if replication_factor == 0
            || replication_factor > state::REPLICATION_FACTOR_MAX
            || replication_factor > live.len()
        {
            return Err(Rejection::InvalidReplicationFactor {
                requested: replication_factor,
                available: live.len(),
            }
            .into());
        }
        let assignment =
            assign_replicas(&live, partitions, replication_factor, self.assign_start, 0);
        self.assign_start = self.assign_start.wrapping_add(1);
        self.propose(&Command::CreateTopic {
            name: name.to_string(),
            // The raft index this entry gets: only one committed entry ever holds it, so no
            // two topics share an id, and replays (the simulation's seeds) stay identical.
            id: self.raw.raft.raft_log.last_index() + 1,
            configs,
            assignment,
        })
    }
}

impl Controller {
    /// On the active controller: proposes deleting a topic that exists.
    pub fn delete_topic(&mut self, name: &str) -> Result<u64> {
        self.check_usable()?;
        self.check_leader()?;
        self.check_caught_up()?;
        if !self.state.topics.contains_key(name) {
            return Err(Rejection::UnknownTopicOrPartition {
                topic: name.to_string(),
                partition: 0,
            }
            .into());
        }
        self.propose(&Command::DeleteTopic {
            name: name.to_string(),
        })
    }

    /// On the active controller: grows a topic to `total` partitions, placing the new ones
    /// like [`Controller::create_topic`] with the replication factor of partition 0.
    pub fn create_partitions(&mut self, topic: &str, total: u32) -> Result<u64> {
        self.check_usable()?;
        self.check_leader()?;
        self.check_caught_up()?;
        let t = self
            .state
            .topics
            .get(topic)
            .ok_or_else(|| Rejection::UnknownTopicOrPartition {
                topic: topic.to_string(),
                partition: 0,
            })?;
        let existing = t.partitions.len() as u32;
        if total <= existing || total > state::TOPIC_PARTITIONS_MAX {
            return Err(Rejection::InvalidPartitions(total).into());
        }
        let replication_factor = t
            .partitions
            .first()
            .map_or(1, |p| p.replicas.len() - p.adding.len());
        let live = self.state.assignable_brokers();
        if replication_factor > live.len() {
            return Err(Rejection::InvalidReplicationFactor {
                requested: replication_factor,
                available: live.len(),
            }
            .into());
        }
        let assignment = assign_replicas(
            &live,
            total - existing,
            replication_factor,
            self.assign_start,
            existing,
        );
        self.assign_start = self.assign_start.wrapping_add(1);
        self.propose(&Command::CreatePartitions {
            topic: topic.to_string(),
            assignment,
        })
    }
}

impl Controller {
    /// On the active controller: proposes marking `broker` as being decommissioned, after
    /// checking that every replica it holds has somewhere to go
    /// ([`Rejection::NoReassignmentTarget`] otherwise). From then on
    /// [`Controller::check_reassignments`] moves its replicas away. Idempotent.
    pub fn decommission_broker(&mut self, broker: NodeId) -> Result<u64> {
        self.check_usable()?;
        self.check_leader()?;
        self.check_caught_up()?;
        if !self.state.brokers.contains_key(&broker) {
            return Err(Rejection::UnknownBroker(broker).into());
        }
        if let Some(blocker) = decommission_blocker(&self.state, broker) {
            return Err(blocker.into());
        }
        self.propose(&Command::DecommissionBroker { broker })
    }

    /// On the active controller: a broker stopping on purpose (Kafka's controlled shutdown)
    /// is fenced now rather than when its session expires: its leaderships move to in-sync
    /// replicas and it leaves every ISR, as [`Controller::check_liveness`] would do 9 s
    /// later. Returns the raft index to wait for, `None` if it is fenced already.
    /// [`ControllerError::Busy`] while another decision is in flight (retry).
    pub fn controlled_shutdown(&mut self, broker: NodeId, incarnation: u64) -> Result<Option<u64>> {
        self.check_usable()?;
        self.check_leader()?;
        let info = self
            .state
            .brokers
            .get(&broker)
            .ok_or(Rejection::UnknownBroker(broker))?;
        if info.registration.incarnation != incarnation {
            return Err(Rejection::StaleIncarnation {
                broker,
                got: incarnation,
                registered: info.registration.incarnation,
            }
            .into());
        }
        if !self.stopping.contains_key(&broker) && self.stopping.len() >= state::CLUSTER_BROKERS_MAX
        {
            self.stopping
                .retain(|b, _| self.state.brokers.contains_key(b));
        }
        self.stopping.insert(broker, incarnation);
        if info.fenced {
            return Ok(None);
        }
        if !self.may_decide() {
            return Err(ControllerError::Busy);
        }
        let changes = changes_for_fence(&self.state, broker);
        tracing::info!(
            broker,
            partitions = changes.len(),
            "controlled shutdown: fencing the broker and moving its leaderships"
        );
        self.propose_decision(&Command::FenceBroker { broker, changes })
            .map(Some)
    }

    /// On the active controller: proposes the next reassignment steps (see
    /// [`state::reassignment_steps`]), once the previous decision applied. Returns how many
    /// partitions the proposal changes.
    pub fn check_reassignments(&mut self) -> Result<usize> {
        self.check_usable()?;
        self.check_leader()?;
        if !self.may_decide() {
            return Ok(0);
        }
        let changes = reassignment_steps(&self.state, REASSIGNMENTS_IN_FLIGHT_MAX);
        if changes.is_empty() {
            return Ok(0);
        }
        let n = changes.len();
        for c in &changes {
            if c.adding.is_empty() {
                tracing::info!(topic = %c.topic, partition = c.partition, replicas = ?c.replicas,
                    leader = ?c.leader, "reassignment finished");
            } else {
                tracing::info!(topic = %c.topic, partition = c.partition, adding = ?c.adding,
                    removing = ?c.removing, "reassignment started");
            }
        }
        self.propose_decision(&Command::Reassign { changes })?;
        Ok(n)
    }
}

fn push_message(out: &mut Vec<(NodeId, Vec<u8>)>, msg: Message) {
    let Some(to) = node_id(msg.to) else {
        return;
    };
    match msg.write_to_bytes() {
        Ok(bytes) => out.push((to, bytes)),
        Err(e) => tracing::error!(error = %e, "raft message does not encode; dropped"),
    }
}
