//! The controller's replicated state machine: brokers, topics, partition assignment, leaders,
//! ISR and epochs ([`ClusterState`]), the [`Command`]s that change it, and the election policy.
//!
//! Apply is deterministic: every choice that depends on time or on a pick between candidates
//! (who is dead, which replica leads, where replicas go) is made by the active controller
//! before it proposes; [`ClusterState::apply`] only validates a command against the current
//! state and applies it, or rejects it whole with a [`Rejection`] and changes nothing. Every
//! voter applies the same committed sequence and so holds the same state.
//!
//! Election policy (see [`elect_leader`]): a new leader comes only from the ISR members that
//! are not fenced, in replica order; if there is none and the topic sets
//! `unclean.leader.election.enable=true`, any unfenced replica (the ISR then becomes that one
//! replica); otherwise the partition is offline (`leader = None`). The leader epoch bumps on
//! every leader change (to `None` too); the partition epoch bumps on every change of leader or
//! ISR. A fenced broker leaves the ISR of every partition, except that the ISR never becomes
//! empty: its last member stays, so that it can be elected when it returns.

use std::collections::BTreeMap;

use rkyv::rancor::BoxedError;
use rkyv::util::AlignedVec;

use super::NodeId;

/// Topic config that lets an out-of-sync replica become leader when no ISR member is alive.
pub const UNCLEAN_LEADER_ELECTION_CONFIG: &str = "unclean.leader.election.enable";
/// Most brokers the cluster state holds.
pub const CLUSTER_BROKERS_MAX: usize = 256;
/// Most topics the cluster state holds.
pub const CLUSTER_TOPICS_MAX: usize = 10_000;
/// Most partitions of one topic.
pub const TOPIC_PARTITIONS_MAX: u32 = 10_000;
/// Most partitions over all topics (bounds the snapshot size).
pub const CLUSTER_PARTITIONS_MAX: usize = 50_000;
/// Most configs of one topic.
pub const TOPIC_CONFIGS_MAX: usize = 64;
/// Longest topic name (Kafka's limit).
pub const TOPIC_NAME_BYTES_MAX: usize = 249;
/// Longest config key or value, host name.
pub const STRING_BYTES_MAX: usize = 1024;
/// Most replicas of one partition.
pub const REPLICATION_FACTOR_MAX: usize = 16;
/// Version byte in front of every encoded command (raft entry data). 2: decommissioning
/// and reassignment (version 1 entries, from before, are refused as unknown).
pub const COMMAND_FORMAT_VERSION: u8 = 2;
/// Version byte in front of an encoded [`ClusterState`] (snapshot data); 2 as for commands.
pub const STATE_FORMAT_VERSION: u8 = 2;

/// A broker as the cluster knows it.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct BrokerInfo {
    /// What the broker registered.
    pub registration: BrokerRegistration,
    /// A fenced broker leads nothing and is in no ISR (except as the last member).
    pub fenced: bool,
    /// Being decommissioned (`sluice cluster decommission`): it gets no new replicas, and
    /// the active controller moves the ones it holds to other brokers. Survives restarts.
    pub decommissioning: bool,
}

/// What a broker tells the controller about itself when it (re)starts.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct BrokerRegistration {
    /// The broker's node id.
    pub id: NodeId,
    /// Changes every time the broker process starts (Kafka's incarnation id).
    pub incarnation: u64,
    /// Host clients connect to.
    pub client_host: String,
    /// The shared client port (any shard accepts on it).
    pub client_port: u16,
    /// Number of shards of this broker.
    pub shards: u16,
    /// Each shard's own client port (`shard_ports[s]` is shard `s`'s), for shard-aware
    /// clients; at most [`REGISTRATION_SHARDS_MAX`] entries.
    pub shard_ports: Vec<u16>,
    /// Host peers connect to (QUIC).
    pub peer_host: String,
    /// The controller's peer port (QUIC, shard 0); shard `s` replicates on
    /// `peer_port + 1 + s`.
    pub peer_port: u16,
}

/// Most shard ports a [`BrokerRegistration`] lists (the broker's shard limit).
pub const REGISTRATION_SHARDS_MAX: usize = 1024;

/// One partition's replicas, leader, ISR and epochs.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct PartitionState {
    /// Assigned replicas, preferred leader first.
    pub replicas: Vec<NodeId>,
    /// The leader, `None` when offline.
    pub leader: Option<NodeId>,
    /// Bumped on every leader change.
    pub leader_epoch: u32,
    /// In-sync replicas; never empty.
    pub isr: Vec<NodeId>,
    /// Bumped on every change of leader, ISR or replicas (Kafka's partition epoch).
    pub partition_epoch: u32,
    /// Replicas being added by a reassignment (also in `replicas`); empty when none runs.
    pub adding: Vec<NodeId>,
    /// Replicas a reassignment removes once every `adding` replica is in the ISR (also in
    /// `replicas` until then).
    pub removing: Vec<NodeId>,
}

impl PartitionState {
    /// Whether a reassignment of this partition is under way.
    pub fn reassigning(&self) -> bool {
        !self.adding.is_empty() || !self.removing.is_empty()
    }
}

/// A topic and its partitions.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct TopicState {
    /// Chosen by the active controller at creation (Kafka's topic id): a topic deleted and
    /// created again under the same name has another, so a replica that missed the delete
    /// can tell its old log from the new topic's.
    pub id: u64,
    /// Topic configs (`key = value`).
    pub configs: BTreeMap<String, String>,
    /// Partition `p` is `partitions[p]`.
    pub partitions: Vec<PartitionState>,
}

impl TopicState {
    /// Whether the topic allows unclean leader election.
    pub fn unclean_election(&self) -> bool {
        self.configs
            .get(UNCLEAN_LEADER_ELECTION_CONFIG)
            .is_some_and(|v| v == "true")
    }
}

/// The cluster metadata every controller voter holds.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct ClusterState {
    /// Registered brokers by id.
    pub brokers: BTreeMap<NodeId, BrokerInfo>,
    /// Topics by name.
    pub topics: BTreeMap<String, TopicState>,
}

/// A leader and ISR change the active controller decided for one partition; applied only if
/// the partition is still at the epochs it was decided from.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct PartitionChange {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: u32,
    /// Leader epoch the decision was made from.
    pub expected_leader_epoch: u32,
    /// Partition epoch the decision was made from.
    pub expected_partition_epoch: u32,
    /// New leader (`None`: offline).
    pub leader: Option<NodeId>,
    /// New ISR.
    pub isr: Vec<NodeId>,
}

/// One step of a partition reassignment the active controller decided (start: replicas grow
/// by `adding`; finish: the `removing` replicas leave replicas and ISR, a new leader if the
/// old one leaves); applied only if the partition is still at the epochs it was decided from.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Reassignment {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: u32,
    /// Leader epoch the decision was made from.
    pub expected_leader_epoch: u32,
    /// Partition epoch the decision was made from.
    pub expected_partition_epoch: u32,
    /// The new replica list.
    pub replicas: Vec<NodeId>,
    /// Replicas still being added (empty when the step finishes the reassignment).
    pub adding: Vec<NodeId>,
    /// Replicas still to remove (empty when the step finishes the reassignment).
    pub removing: Vec<NodeId>,
    /// New leader (`None`: offline).
    pub leader: Option<NodeId>,
    /// New ISR (a subset of the current one: a reassignment never adds ISR members).
    pub isr: Vec<NodeId>,
}

pub use command::Command;

// rkyv's derive emits one undocumented field for this enum's archived form; the lint level
// of a module reaches generated items, an attribute on the enum does not.
#[allow(missing_docs)]
mod command {
    use super::{BrokerRegistration, NodeId, PartitionChange, Reassignment};
    use std::collections::BTreeMap;

    /// A change to the cluster state: the data of one raft entry.
    #[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
    pub enum Command {
        /// Registers a broker, or re-registers it with a new incarnation; it starts fenced.
        RegisterBroker {
            /// What the broker sent.
            registration: BrokerRegistration,
        },
        /// Fences a broker (its session expired) together with the partition changes that follow.
        FenceBroker {
            /// The broker.
            broker: NodeId,
            /// Leader elections and ISR shrinks that the fencing causes.
            changes: Vec<PartitionChange>,
        },
        /// Unfences a registered broker that heartbeats again, with the elections of offline
        /// partitions it can now lead.
        UnfenceBroker {
            /// The broker.
            broker: NodeId,
            /// The incarnation that asked to be unfenced.
            incarnation: u64,
            /// Elections of partitions that were offline.
            changes: Vec<PartitionChange>,
        },
        /// Creates a topic with an explicit assignment (`assignment[p]` = replicas of `p`).
        CreateTopic {
            /// Topic name.
            name: String,
            /// Its id (see [`TopicState::id`](super::TopicState::id)).
            id: u64,
            /// Topic configs.
            configs: BTreeMap<String, String>,
            /// Replicas per partition, preferred leader first.
            assignment: Vec<Vec<NodeId>>,
        },
        /// Deletes a topic.
        DeleteTopic {
            /// Topic name.
            name: String,
        },
        /// Adds partitions to a topic (`assignment[i]` = replicas of the i-th new partition).
        CreatePartitions {
            /// Topic name.
            topic: String,
            /// Replicas of each new partition.
            assignment: Vec<Vec<NodeId>>,
        },
        /// A partition leader changes its ISR (Kafka's AlterPartition).
        AlterPartition {
            /// Topic name.
            topic: String,
            /// Partition index.
            partition: u32,
            /// The leader that asks.
            leader: NodeId,
            /// The leader epoch the leader holds.
            leader_epoch: u32,
            /// The partition epoch the leader holds.
            partition_epoch: u32,
            /// The ISR it wants.
            new_isr: Vec<NodeId>,
        },
        /// Leader elections decided by the active controller.
        ElectLeaders {
            /// The changes.
            changes: Vec<PartitionChange>,
        },
        /// Marks a broker as being decommissioned (idempotent).
        DecommissionBroker {
            /// The broker.
            broker: NodeId,
        },
        /// Reassignment steps decided by the active controller (all or none apply).
        Reassign {
            /// The steps.
            changes: Vec<Reassignment>,
        },
    }
}

/// Why a committed command changed nothing. Every voter reaches the same rejection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The topic does not exist, or the partition index is out of range.
    #[error("unknown topic or partition {topic}-{partition}")]
    UnknownTopicOrPartition {
        /// Topic name.
        topic: String,
        /// Partition index.
        partition: u32,
    },
    /// A topic with that name exists.
    #[error("topic {0} already exists")]
    TopicExists(String),
    /// The broker is not registered.
    #[error("broker {0} is not registered")]
    UnknownBroker(NodeId),
    /// The command's incarnation is not the registered one.
    #[error("broker {broker} incarnation {got} is stale (registered {registered})")]
    StaleIncarnation {
        /// Broker id.
        broker: NodeId,
        /// Incarnation in the command.
        got: u64,
        /// Registered incarnation.
        registered: u64,
    },
    /// The broker is registered and unfenced: fence it before it re-registers.
    #[error("broker {0} is registered and unfenced")]
    BrokerActive(NodeId),
    /// The requester is not the partition's leader or its leader epoch is not current.
    #[error(
        "leader {leader} epoch {leader_epoch} is fenced (current leader {current:?} epoch {current_epoch})"
    )]
    FencedLeaderEpoch {
        /// Requesting leader.
        leader: NodeId,
        /// Its epoch.
        leader_epoch: u32,
        /// Current leader.
        current: Option<NodeId>,
        /// Current epoch.
        current_epoch: u32,
    },
    /// The partition epoch (or leader epoch of a controller decision) is stale.
    #[error("stale partition epoch {got} (current {current})")]
    InvalidUpdateVersion {
        /// Epoch in the command.
        got: u32,
        /// Current epoch.
        current: u32,
    },
    /// An ISR or leader names a broker that is not a replica, is fenced, or repeats.
    #[error("ineligible replica set {0:?}")]
    IneligibleReplica(Vec<NodeId>),
    /// An assignment is empty, repeats a broker, names an unknown broker, or is too large.
    #[error("invalid replica assignment: {0}")]
    InvalidAssignment(String),
    /// A partition count is out of range.
    #[error("invalid partition count {0}")]
    InvalidPartitions(u32),
    /// The replication factor is out of range or above the number of live brokers.
    #[error("replication factor {requested} is invalid ({available} live brokers)")]
    InvalidReplicationFactor {
        /// Asked for.
        requested: usize,
        /// Live brokers.
        available: usize,
    },
    /// A name, config or limit is invalid.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A broker cannot be decommissioned: some replica it holds has nowhere to go.
    #[error(
        "cannot decommission broker {broker}: {topic}-{partition} has replicas {replicas:?} and \
         no other broker can take a copy (add a broker or lower the topic's replication factor)"
    )]
    NoReassignmentTarget {
        /// The broker to decommission.
        broker: NodeId,
        /// A topic whose partition cannot move.
        topic: String,
        /// The partition.
        partition: u32,
        /// Its replicas.
        replicas: Vec<NodeId>,
    },
}

impl Rejection {
    /// Kafka's error code for this rejection.
    pub fn kafka_code(&self) -> i16 {
        match self {
            Rejection::UnknownTopicOrPartition { .. } => 3,
            Rejection::TopicExists(_) => 36,
            Rejection::UnknownBroker(_) => 8,
            Rejection::StaleIncarnation { .. } => 77,
            Rejection::BrokerActive(_) => 77,
            Rejection::FencedLeaderEpoch { .. } => 74,
            Rejection::InvalidUpdateVersion { .. } => 108,
            Rejection::IneligibleReplica(_) => 107,
            Rejection::InvalidAssignment(_) => 39,
            Rejection::InvalidPartitions(_) => 37,
            Rejection::InvalidReplicationFactor { .. } => 38,
            Rejection::InvalidRequest(_) => 42,
            Rejection::NoReassignmentTarget { .. } => 39,
        }
    }
}

/// Errors decoding a command or a state archive.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The data is empty.
    #[error("empty command")]
    Empty,
    /// Unknown format version byte.
    #[error("unknown command format version {0}")]
    Version(u8),
    /// rkyv refused the bytes.
    #[error("invalid archive: {0}")]
    Archive(String),
}

impl Command {
    /// Encodes as raft entry data: a version byte and the rkyv archive.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain owned data into a growable buffer cannot fail.
        let archive = rkyv::to_bytes::<BoxedError>(self).unwrap_or_else(|e| {
            panic!("archiving a command cannot fail: {e}");
        });
        let mut out = Vec::with_capacity(1 + archive.len());
        out.push(COMMAND_FORMAT_VERSION);
        out.extend_from_slice(&archive);
        out
    }

    /// Decodes raft entry data written by [`Command::encode`].
    pub fn decode(data: &[u8]) -> Result<Command, CodecError> {
        let (&version, rest) = data.split_first().ok_or(CodecError::Empty)?;
        if version != COMMAND_FORMAT_VERSION {
            return Err(CodecError::Version(version));
        }
        decode_archive::<Command>(rest)
    }
}

/// Validates and deserializes an rkyv archive (copied to an aligned buffer first).
pub(crate) fn decode_archive<T>(bytes: &[u8]) -> Result<T, CodecError>
where
    T: rkyv::Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, BoxedError>>
        + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<BoxedError>>,
{
    let mut aligned = AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    rkyv::from_bytes::<T, BoxedError>(&aligned).map_err(|e| CodecError::Archive(e.to_string()))
}

impl ClusterState {
    /// Archives the state (snapshot data): a version byte and the rkyv archive.
    pub fn encode(&self) -> Vec<u8> {
        let archive = rkyv::to_bytes::<BoxedError>(self)
            .unwrap_or_else(|e| panic!("archiving the cluster state cannot fail: {e}"));
        let mut out = Vec::with_capacity(1 + archive.len());
        out.push(STATE_FORMAT_VERSION);
        out.extend_from_slice(&archive);
        out
    }

    /// Reads an archive written by [`ClusterState::encode`].
    pub fn decode(bytes: &[u8]) -> Result<ClusterState, CodecError> {
        let (&version, rest) = bytes.split_first().ok_or(CodecError::Empty)?;
        if version != STATE_FORMAT_VERSION {
            return Err(CodecError::Version(version));
        }
        decode_archive::<ClusterState>(rest)
    }

    /// The partition, if it exists.
    pub fn partition(&self, topic: &str, partition: u32) -> Option<&PartitionState> {
        self.topics.get(topic)?.partitions.get(partition as usize)
    }

    /// Whether the broker is registered and not fenced.
    pub fn is_live(&self, broker: NodeId) -> bool {
        self.brokers.get(&broker).is_some_and(|b| !b.fenced)
    }

    /// Unfenced brokers, by id.
    pub fn live_brokers(&self) -> Vec<NodeId> {
        self.brokers
            .iter()
            .filter(|(_, b)| !b.fenced)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Brokers that may get new replicas: unfenced and not being decommissioned, by id.
    pub fn assignable_brokers(&self) -> Vec<NodeId> {
        self.brokers
            .iter()
            .filter(|(_, b)| !b.fenced && !b.decommissioning)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Whether the broker is registered and being decommissioned.
    pub fn is_decommissioning(&self, broker: NodeId) -> bool {
        self.brokers.get(&broker).is_some_and(|b| b.decommissioning)
    }

    /// How many partition replicas `broker` holds.
    pub fn replicas_on(&self, broker: NodeId) -> usize {
        self.topics
            .values()
            .flat_map(|t| &t.partitions)
            .filter(|p| p.replicas.contains(&broker))
            .count()
    }

    fn partition_count(&self) -> usize {
        self.topics.values().map(|t| t.partitions.len()).sum()
    }

    /// Validates `command` against the state and applies it whole, or rejects it and changes
    /// nothing.
    pub fn apply(&mut self, command: &Command) -> Result<(), Rejection> {
        match command {
            Command::RegisterBroker { registration } => self.register(registration),
            Command::FenceBroker { broker, changes } => {
                let mut next = self.clone();
                let info = next
                    .brokers
                    .get_mut(broker)
                    .ok_or(Rejection::UnknownBroker(*broker))?;
                info.fenced = true;
                next.apply_changes(changes)?;
                // A fenced broker must not stay leader anywhere: the active controller
                // included every partition it led.
                for (topic, t) in &next.topics {
                    for (p, part) in t.partitions.iter().enumerate() {
                        if part.leader == Some(*broker) {
                            return Err(Rejection::InvalidRequest(format!(
                                "fencing {broker} leaves it leader of {topic}-{p}"
                            )));
                        }
                    }
                }
                *self = next;
                Ok(())
            }
            Command::UnfenceBroker {
                broker,
                incarnation,
                changes,
            } => {
                let mut next = self.clone();
                let info = next
                    .brokers
                    .get_mut(broker)
                    .ok_or(Rejection::UnknownBroker(*broker))?;
                if info.registration.incarnation != *incarnation {
                    return Err(Rejection::StaleIncarnation {
                        broker: *broker,
                        got: *incarnation,
                        registered: info.registration.incarnation,
                    });
                }
                info.fenced = false;
                next.apply_changes(changes)?;
                *self = next;
                Ok(())
            }
            Command::CreateTopic {
                name,
                id,
                configs,
                assignment,
            } => {
                validate_topic_name(name)?;
                validate_configs(configs)?;
                if self.topics.contains_key(name) {
                    return Err(Rejection::TopicExists(name.clone()));
                }
                if self.topics.len() >= CLUSTER_TOPICS_MAX {
                    return Err(Rejection::InvalidRequest(format!(
                        "the cluster holds {CLUSTER_TOPICS_MAX} topics already"
                    )));
                }
                self.validate_assignment(assignment, 0)?;
                let partitions = assignment.iter().map(|r| new_partition(r)).collect();
                self.topics.insert(
                    name.clone(),
                    TopicState {
                        id: *id,
                        configs: configs.clone(),
                        partitions,
                    },
                );
                Ok(())
            }
            Command::DeleteTopic { name } => match self.topics.remove(name) {
                Some(_) => Ok(()),
                None => Err(Rejection::UnknownTopicOrPartition {
                    topic: name.clone(),
                    partition: 0,
                }),
            },
            Command::CreatePartitions { topic, assignment } => {
                let existing = self
                    .topics
                    .get(topic)
                    .ok_or_else(|| Rejection::UnknownTopicOrPartition {
                        topic: topic.clone(),
                        partition: 0,
                    })?
                    .partitions
                    .len();
                self.validate_assignment(assignment, existing)?;
                if let Some(t) = self.topics.get_mut(topic) {
                    t.partitions
                        .extend(assignment.iter().map(|r| new_partition(r)));
                }
                Ok(())
            }
            Command::AlterPartition {
                topic,
                partition,
                leader,
                leader_epoch,
                partition_epoch,
                new_isr,
            } => {
                let part = self.partition(topic, *partition).ok_or_else(|| {
                    Rejection::UnknownTopicOrPartition {
                        topic: topic.clone(),
                        partition: *partition,
                    }
                })?;
                if part.leader != Some(*leader) || part.leader_epoch != *leader_epoch {
                    return Err(Rejection::FencedLeaderEpoch {
                        leader: *leader,
                        leader_epoch: *leader_epoch,
                        current: part.leader,
                        current_epoch: part.leader_epoch,
                    });
                }
                if part.partition_epoch != *partition_epoch {
                    return Err(Rejection::InvalidUpdateVersion {
                        got: *partition_epoch,
                        current: part.partition_epoch,
                    });
                }
                let newly_added = new_isr.iter().any(|r| !part.isr.contains(r));
                if !new_isr.contains(leader) || !self.eligible_isr(part, new_isr, newly_added) {
                    return Err(Rejection::IneligibleReplica(new_isr.clone()));
                }
                let part = self.partition_mut(topic, *partition);
                part.isr = new_isr.clone();
                part.partition_epoch += 1;
                Ok(())
            }
            Command::ElectLeaders { changes } => {
                let mut next = self.clone();
                next.apply_changes(changes)?;
                *self = next;
                Ok(())
            }
            Command::DecommissionBroker { broker } => {
                let info = self
                    .brokers
                    .get_mut(broker)
                    .ok_or(Rejection::UnknownBroker(*broker))?;
                info.decommissioning = true;
                Ok(())
            }
            Command::Reassign { changes } => {
                let mut next = self.clone();
                for r in changes {
                    next.apply_reassignment(r)?;
                }
                *self = next;
                Ok(())
            }
        }
    }

    fn apply_reassignment(&mut self, r: &Reassignment) -> Result<(), Rejection> {
        let part = self.partition(&r.topic, r.partition).ok_or_else(|| {
            Rejection::UnknownTopicOrPartition {
                topic: r.topic.clone(),
                partition: r.partition,
            }
        })?;
        if part.leader_epoch != r.expected_leader_epoch {
            return Err(Rejection::InvalidUpdateVersion {
                got: r.expected_leader_epoch,
                current: part.leader_epoch,
            });
        }
        if part.partition_epoch != r.expected_partition_epoch {
            return Err(Rejection::InvalidUpdateVersion {
                got: r.expected_partition_epoch,
                current: part.partition_epoch,
            });
        }
        let replicas = &r.replicas;
        if replicas.is_empty()
            || replicas.len() > REPLICATION_FACTOR_MAX
            || has_duplicates(replicas)
        {
            return Err(Rejection::InvalidAssignment(format!(
                "{}-{} replicas {replicas:?}",
                r.topic, r.partition
            )));
        }
        for b in replicas {
            let new = !part.replicas.contains(b);
            let ok = match self.brokers.get(b) {
                None => false,
                Some(info) => !new || (!info.fenced && !info.decommissioning),
            };
            if !ok {
                return Err(Rejection::InvalidAssignment(format!(
                    "{}-{}: broker {b} cannot take a new replica",
                    r.topic, r.partition
                )));
            }
        }
        let within =
            |ids: &[NodeId]| ids.iter().all(|b| replicas.contains(b)) && !has_duplicates(ids);
        if !within(&r.adding)
            || !within(&r.removing)
            || r.adding.iter().any(|b| r.removing.contains(b))
        {
            return Err(Rejection::InvalidAssignment(format!(
                "{}-{}: adding {:?} and removing {:?} must be distinct replicas",
                r.topic, r.partition, r.adding, r.removing
            )));
        }
        // A reassignment never adds ISR members (the leader does, by AlterPartition).
        if r.isr.is_empty()
            || has_duplicates(&r.isr)
            || r.isr
                .iter()
                .any(|b| !replicas.contains(b) || !part.isr.contains(b))
        {
            return Err(Rejection::IneligibleReplica(r.isr.clone()));
        }
        if let Some(l) = r.leader
            && (!r.isr.contains(&l) || !self.is_live(l))
        {
            return Err(Rejection::IneligibleReplica(vec![l]));
        }
        let leader_changed = part.leader != r.leader;
        let part = self.partition_mut(&r.topic, r.partition);
        if leader_changed {
            part.leader = r.leader;
            part.leader_epoch += 1;
        }
        part.replicas = r.replicas.clone();
        part.adding = r.adding.clone();
        part.removing = r.removing.clone();
        part.isr = r.isr.clone();
        part.partition_epoch += 1;
        Ok(())
    }

    fn register(&mut self, reg: &BrokerRegistration) -> Result<(), Rejection> {
        for host in [&reg.client_host, &reg.peer_host] {
            if host.is_empty() || host.len() > STRING_BYTES_MAX {
                return Err(Rejection::InvalidRequest(format!(
                    "broker {} host of {} bytes",
                    reg.id,
                    host.len()
                )));
            }
        }
        if reg.shards == 0 {
            return Err(Rejection::InvalidRequest(format!(
                "broker {} has no shards",
                reg.id
            )));
        }
        if reg.shard_ports.len() > REGISTRATION_SHARDS_MAX
            || (!reg.shard_ports.is_empty() && reg.shard_ports.len() != usize::from(reg.shards))
        {
            return Err(Rejection::InvalidRequest(format!(
                "broker {} lists {} shard ports for {} shards",
                reg.id,
                reg.shard_ports.len(),
                reg.shards
            )));
        }
        let mut decommissioning = false;
        match self.brokers.get(&reg.id) {
            Some(b) if !b.fenced && b.registration != *reg => {
                return Err(Rejection::BrokerActive(reg.id));
            }
            Some(b) => decommissioning = b.decommissioning,
            None if self.brokers.len() >= CLUSTER_BROKERS_MAX => {
                return Err(Rejection::InvalidRequest(format!(
                    "the cluster holds {CLUSTER_BROKERS_MAX} brokers already"
                )));
            }
            None => {}
        }
        self.brokers.insert(
            reg.id,
            BrokerInfo {
                registration: reg.clone(),
                fenced: true,
                decommissioning,
            },
        );
        Ok(())
    }

    fn partition_mut(&mut self, topic: &str, partition: u32) -> &mut PartitionState {
        // Callers checked that it exists.
        match self
            .topics
            .get_mut(topic)
            .and_then(|t| t.partitions.get_mut(partition as usize))
        {
            Some(p) => p,
            None => panic!("partition {topic}-{partition} checked before"),
        }
    }

    /// An ISR is eligible when it is not empty, has no repeats, holds only replicas, and
    /// (when it adds members) adds only unfenced brokers.
    fn eligible_isr(&self, part: &PartitionState, isr: &[NodeId], check_added: bool) -> bool {
        if isr.is_empty() || has_duplicates(isr) {
            return false;
        }
        isr.iter().all(|r| {
            part.replicas.contains(r) && (!check_added || part.isr.contains(r) || self.is_live(*r))
        })
    }

    fn apply_changes(&mut self, changes: &[PartitionChange]) -> Result<(), Rejection> {
        for c in changes {
            let part = self.partition(&c.topic, c.partition).ok_or_else(|| {
                Rejection::UnknownTopicOrPartition {
                    topic: c.topic.clone(),
                    partition: c.partition,
                }
            })?;
            if part.leader_epoch != c.expected_leader_epoch {
                return Err(Rejection::InvalidUpdateVersion {
                    got: c.expected_leader_epoch,
                    current: part.leader_epoch,
                });
            }
            if part.partition_epoch != c.expected_partition_epoch {
                return Err(Rejection::InvalidUpdateVersion {
                    got: c.expected_partition_epoch,
                    current: part.partition_epoch,
                });
            }
            if !self.eligible_isr(part, &c.isr, true) {
                return Err(Rejection::IneligibleReplica(c.isr.clone()));
            }
            if let Some(l) = c.leader
                && (!c.isr.contains(&l) || !self.is_live(l))
            {
                return Err(Rejection::IneligibleReplica(vec![l]));
            }
            let leader_changed = part.leader != c.leader;
            let part = self.partition_mut(&c.topic, c.partition);
            if leader_changed {
                part.leader = c.leader;
                part.leader_epoch += 1;
            }
            part.isr = c.isr.clone();
            part.partition_epoch += 1;
        }
        Ok(())
    }

    fn validate_assignment(
        &self,
        assignment: &[Vec<NodeId>],
        existing: usize,
    ) -> Result<(), Rejection> {
        if assignment.is_empty() {
            return Err(Rejection::InvalidAssignment("no partitions".into()));
        }
        let total = existing + assignment.len();
        if total > TOPIC_PARTITIONS_MAX as usize
            || self.partition_count() + assignment.len() > CLUSTER_PARTITIONS_MAX
        {
            return Err(Rejection::InvalidAssignment(format!(
                "{total} partitions exceed the limits ({TOPIC_PARTITIONS_MAX} per topic, \
                 {CLUSTER_PARTITIONS_MAX} in the cluster)"
            )));
        }
        for (i, replicas) in assignment.iter().enumerate() {
            if replicas.is_empty() || replicas.len() > REPLICATION_FACTOR_MAX {
                return Err(Rejection::InvalidAssignment(format!(
                    "partition {} has {} replicas",
                    existing + i,
                    replicas.len()
                )));
            }
            if has_duplicates(replicas) {
                return Err(Rejection::InvalidAssignment(format!(
                    "partition {} repeats a replica: {replicas:?}",
                    existing + i
                )));
            }
            if let Some(r) = replicas
                .iter()
                .find(|r| !self.is_live(**r) || self.is_decommissioning(**r))
            {
                return Err(Rejection::InvalidAssignment(format!(
                    "partition {} names broker {r}, which is not a live broker or is being \
                     decommissioned",
                    existing + i
                )));
            }
        }
        Ok(())
    }
}

fn new_partition(replicas: &[NodeId]) -> PartitionState {
    PartitionState {
        replicas: replicas.to_vec(),
        leader: replicas.first().copied(),
        leader_epoch: 0,
        isr: replicas.to_vec(),
        partition_epoch: 0,
        adding: Vec::new(),
        removing: Vec::new(),
    }
}

fn has_duplicates(ids: &[NodeId]) -> bool {
    ids.iter().enumerate().any(|(i, a)| ids[..i].contains(a))
}

/// Kafka's rule: 1 to 249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<(), Rejection> {
    let ok = !name.is_empty()
        && name.len() <= TOPIC_NAME_BYTES_MAX
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Rejection::InvalidRequest(format!(
            "invalid topic name {name:?}"
        )))
    }
}

fn validate_configs(configs: &BTreeMap<String, String>) -> Result<(), Rejection> {
    if configs.len() > TOPIC_CONFIGS_MAX {
        return Err(Rejection::InvalidRequest(format!(
            "{} configs, at most {TOPIC_CONFIGS_MAX}",
            configs.len()
        )));
    }
    for (k, v) in configs {
        if k.is_empty() || k.len() > STRING_BYTES_MAX || v.len() > STRING_BYTES_MAX {
            return Err(Rejection::InvalidRequest(format!("invalid config {k:?}")));
        }
    }
    if let Some(v) = configs.get(UNCLEAN_LEADER_ELECTION_CONFIG)
        && v != "true"
        && v != "false"
    {
        return Err(Rejection::InvalidRequest(format!(
            "{UNCLEAN_LEADER_ELECTION_CONFIG} must be true or false, got {v:?}"
        )));
    }
    Ok(())
}

/// The election policy: the first replica (in replica order) that is in `isr` and not
/// fenced; if none and `unclean` is set, the first unfenced replica; else `None`.
/// Returns the leader and whether it came from outside the ISR.
pub fn elect_leader(
    replicas: &[NodeId],
    isr: &[NodeId],
    is_live: impl Fn(NodeId) -> bool,
    unclean: bool,
) -> Option<(NodeId, bool)> {
    if let Some(l) = replicas.iter().find(|r| isr.contains(r) && is_live(**r)) {
        return Some((*l, false));
    }
    if unclean {
        return replicas.iter().find(|r| is_live(**r)).map(|l| (*l, true));
    }
    None
}

/// The partition changes that fencing `broker` causes (computed by the active controller
/// from its applied state): `broker` leaves every ISR unless it is the last member, and
/// every partition it led gets a new leader by [`elect_leader`] (or goes offline).
pub fn changes_for_fence(state: &ClusterState, broker: NodeId) -> Vec<PartitionChange> {
    let is_live = |b: NodeId| b != broker && state.is_live(b);
    let mut changes = Vec::new();
    for (name, topic) in &state.topics {
        for (p, part) in topic.partitions.iter().enumerate() {
            if !part.replicas.contains(&broker) {
                continue;
            }
            let mut isr: Vec<NodeId> = part.isr.iter().copied().filter(|r| *r != broker).collect();
            if isr.is_empty() {
                isr = part.isr.clone();
            }
            let mut leader = part.leader;
            if part.leader == Some(broker) {
                leader = match elect_leader(&part.replicas, &isr, is_live, topic.unclean_election())
                {
                    Some((l, true)) => {
                        isr = vec![l];
                        Some(l)
                    }
                    Some((l, false)) => Some(l),
                    None => None,
                };
            }
            if leader == part.leader && isr == part.isr {
                continue;
            }
            changes.push(PartitionChange {
                topic: name.clone(),
                partition: p as u32,
                expected_leader_epoch: part.leader_epoch,
                expected_partition_epoch: part.partition_epoch,
                leader,
                isr,
            });
        }
    }
    changes
}

/// The elections that unfencing `broker` allows: every offline partition whose policy now
/// finds a leader (the returning broker, or another live replica).
pub fn changes_for_unfence(state: &ClusterState, broker: NodeId) -> Vec<PartitionChange> {
    let is_live = |b: NodeId| b == broker || state.is_live(b);
    let mut changes = Vec::new();
    for (name, topic) in &state.topics {
        for (p, part) in topic.partitions.iter().enumerate() {
            if part.leader.is_some() || !part.replicas.contains(&broker) {
                continue;
            }
            let Some((leader, unclean)) =
                elect_leader(&part.replicas, &part.isr, is_live, topic.unclean_election())
            else {
                continue;
            };
            changes.push(PartitionChange {
                topic: name.clone(),
                partition: p as u32,
                expected_leader_epoch: part.leader_epoch,
                expected_partition_epoch: part.partition_epoch,
                leader: Some(leader),
                isr: if unclean {
                    vec![leader]
                } else {
                    part.isr.clone()
                },
            });
        }
    }
    changes
}

/// Kafka's rack-unaware assignment: partition `p`'s first replica is broker
/// `(start + p) % n` of the sorted live brokers, the others follow at a shift that grows
/// every `n` partitions so that followers spread too. `start` is picked by the active
/// controller (so apply stays deterministic).
pub fn assign_replicas(
    brokers: &[NodeId],
    partitions: u32,
    replication_factor: usize,
    start: usize,
    first_partition: u32,
) -> Vec<Vec<NodeId>> {
    let n = brokers.len();
    let mut out = Vec::with_capacity(partitions as usize);
    if n == 0 {
        return out;
    }
    for i in 0..partitions as usize {
        let p = first_partition as usize + i;
        let first = (start + p) % n;
        let mut replicas = vec![brokers[first]];
        if n > 1 {
            let shift = (start + p / n) % (n - 1);
            for j in 0..replication_factor.saturating_sub(1) {
                let idx = (first + 1 + (shift + j) % (n - 1)) % n;
                replicas.push(brokers[idx]);
            }
        }
        out.push(replicas);
    }
    out
}

/// Why `broker` cannot be decommissioned, if it cannot: some partition it holds has fewer
/// brokers to move to (registered, not being decommissioned, not already a replica) than it
/// has replicas on decommissioning brokers; or no broker would be left to take replicas.
pub fn decommission_blocker(state: &ClusterState, broker: NodeId) -> Option<Rejection> {
    let leaving = |b: NodeId| b == broker || state.is_decommissioning(b);
    let staying: Vec<NodeId> = state
        .brokers
        .keys()
        .copied()
        .filter(|b| !leaving(*b))
        .collect();
    if staying.is_empty() {
        return Some(Rejection::InvalidRequest(format!(
            "cannot decommission broker {broker}: it is the last broker not being decommissioned"
        )));
    }
    for (name, topic) in &state.topics {
        for (p, part) in topic.partitions.iter().enumerate() {
            if !part.replicas.contains(&broker) {
                continue;
            }
            let moving = part.replicas.iter().filter(|r| leaving(**r)).count();
            let targets = staying
                .iter()
                .filter(|b| !part.replicas.contains(b))
                .count();
            if targets < moving {
                return Some(Rejection::NoReassignmentTarget {
                    broker,
                    topic: name.clone(),
                    partition: p as u32,
                    replicas: part.replicas.clone(),
                });
            }
        }
    }
    None
}

/// The reassignment steps the active controller proposes next (computed from its applied
/// state), at most `in_flight_max` reassignments under way at once:
/// - a partition under way whose `adding` replicas are all in the ISR finishes: the
///   `removing` replicas leave replicas and ISR, and if the leader leaves, the first ISR
///   member (in replica order) that stays and is live leads (the step waits if there is none);
/// - a partition with replicas on decommissioning brokers starts, when it has a leader: each
///   such replica gets a replacement on the assignable broker (live, not decommissioning, not
///   a replica) that holds the fewest replicas (lowest id on a tie), which the leader's
///   fetchers bring into the ISR.
pub fn reassignment_steps(state: &ClusterState, in_flight_max: usize) -> Vec<Reassignment> {
    // The controller's ticker asks every 100 ms: the usual answer (nothing being
    // decommissioned or moved) costs one pass without allocations.
    let decommissioning = state.brokers.values().any(|b| b.decommissioning);
    if !decommissioning
        && !state
            .topics
            .values()
            .flat_map(|t| &t.partitions)
            .any(|p| p.reassigning())
    {
        return Vec::new();
    }
    let mut steps = Vec::new();
    let mut in_flight = 0usize;
    let mut load: BTreeMap<NodeId, usize> = BTreeMap::new();
    for part in state.topics.values().flat_map(|t| &t.partitions) {
        in_flight += usize::from(part.reassigning());
        for r in &part.replicas {
            *load.entry(*r).or_default() += 1;
        }
    }
    let assignable = state.assignable_brokers();
    for (name, topic) in &state.topics {
        for (p, part) in topic.partitions.iter().enumerate() {
            let step = |replicas: Vec<NodeId>,
                        adding: Vec<NodeId>,
                        removing: Vec<NodeId>,
                        leader: Option<NodeId>,
                        isr: Vec<NodeId>| Reassignment {
                topic: name.clone(),
                partition: p as u32,
                expected_leader_epoch: part.leader_epoch,
                expected_partition_epoch: part.partition_epoch,
                replicas,
                adding,
                removing,
                leader,
                isr,
            };
            if part.reassigning() {
                if !part.adding.iter().all(|a| part.isr.contains(a)) {
                    continue;
                }
                let keep = |r: &&NodeId| !part.removing.contains(r);
                let replicas: Vec<NodeId> = part.replicas.iter().filter(keep).copied().collect();
                let isr: Vec<NodeId> = part.isr.iter().filter(keep).copied().collect();
                if isr.is_empty() {
                    continue;
                }
                let leader = match part.leader {
                    Some(l) if !part.removing.contains(&l) => Some(l),
                    _ => match elect_leader(&replicas, &isr, |b| state.is_live(b), false) {
                        Some((l, _)) => Some(l),
                        None => continue,
                    },
                };
                steps.push(step(replicas, Vec::new(), Vec::new(), leader, isr));
                continue;
            }
            if in_flight >= in_flight_max || part.leader.is_none() {
                continue;
            }
            let removing: Vec<NodeId> = part
                .replicas
                .iter()
                .copied()
                .filter(|r| state.is_decommissioning(*r))
                .collect();
            if removing.is_empty() {
                continue;
            }
            let mut adding = Vec::with_capacity(removing.len());
            for _ in &removing {
                let target = assignable
                    .iter()
                    .copied()
                    .filter(|b| !part.replicas.contains(b) && !adding.contains(b))
                    .min_by_key(|b| (load.get(b).copied().unwrap_or(0), *b));
                match target {
                    Some(t) => adding.push(t),
                    None => break,
                }
            }
            if adding.len() < removing.len() {
                continue; // nowhere to go yet (a target broker is down)
            }
            for a in &adding {
                *load.entry(*a).or_default() += 1;
            }
            let mut replicas = part.replicas.clone();
            replicas.extend(&adding);
            in_flight += 1;
            steps.push(step(
                replicas,
                adding,
                removing,
                part.leader,
                part.isr.clone(),
            ));
        }
    }
    steps
}
