//! Runs a [`Controller`] over the QUIC peer transport on the current compio runtime.
//!
//! [`ControllerDriver::start`] takes an opened [`Controller`] and a bound [`PeerEndpoint`]
//! (shard 0's) and spawns its tasks on the current runtime (single-threaded: `Rc`/`RefCell`,
//! no locks):
//!
//! - a ticker: [`Controller::tick`] every [`CONTROLLER_TICK_MS`], then `ready`; on the active
//!   controller also [`Controller::check_liveness`];
//! - one sender per peer voter: a bounded queue ([`CONTROLLER_PEER_QUEUE_MAX`] raft messages;
//!   when full the message is dropped and counted, Raft resends what matters), one outgoing
//!   connection made lazily and remade with a bounded backoff, one unidirectional stream per
//!   connection so a peer receives our raft messages in order. A failed connect or send calls
//!   [`Controller::report_unreachable`] and drops what was queued for that peer;
//! - an acceptor and one reader per incoming connection: raft frames are stepped with the node
//!   id the TLS handshake verified (never one from the frame); a frame `step` refuses is
//!   counted, logged at most once per peer per [`BAD_FRAME_LOG_INTERVAL`], and dropped;
//!   forwarded requests (frame kind 6) are answered with kind 7. Several connections of one
//!   node are each read on their own (none replaces another); more than
//!   [`CONTROLLER_CONNECTIONS_PER_PEER_USUAL`] are logged.
//!
//! After every tick, step and proposal the driver calls `ready` and dispatches its output: the
//! messages to the senders, the applied commands to [`ControllerDriver::applied_index`] and its
//! waiters. A `ready` error (failed fsync) stops the driver: every later call answers
//! [`DriverError::Stopped`], and the broker must stop.
//!
//! [`ControllerDriver::close`] (or a drop) cancels the tasks and lets go of the endpoint, which
//! then releases its UDP socket in the background; [`ControllerDriver::shutdown`] also waits
//! for that, so the same peer port can be bound again in this process.

use std::cell::{Cell, Ref, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rkyv::rancor::BoxedError;

use super::state::{BrokerRegistration, ClusterState, Command, Rejection, decode_archive};
use super::{
    Applied, BrokerHeartbeat, CONTROLLER_TICK_MS, Controller, ControllerError, HeartbeatReply,
    NodeId, Output,
};
use crate::transport::{
    EndpointRelease, ErrorBody, Frame, FrameKind, OnewaySender, PEER_CONNECT_TIMEOUT,
    PEER_ENDPOINT_SHUTDOWN_TIMEOUT, PeerConnection, PeerEndpoint, PeerIncoming, Responder,
    TransportError,
};

/// Raft messages queued for one peer; more are dropped (and counted) until the sender catches
/// up. Raft tolerates the loss: heartbeats and appends are resent.
pub const CONTROLLER_PEER_QUEUE_MAX: usize = 1024;
/// Applied commands remembered (by raft index) so a proposer can check that its index holds
/// its own command; older ones are forgotten.
pub const CONTROLLER_APPLIED_HISTORY_MAX: usize = 4096;
/// First wait before reconnecting to a peer after a failed connect or send.
pub const CONTROLLER_RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait before reconnecting (the backoff doubles up to this).
pub const CONTROLLER_RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Longest wait for a proposal to apply (or for a forwarded request's answer).
pub const CONTROLLER_PROPOSAL_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a forwarded heartbeat's answer, connecting included: a heartbeat must not
/// hang on a dead leader for longer than the broker's session allows.
pub const CONTROLLER_HEARTBEAT_FORWARD_TIMEOUT: Duration = Duration::from_secs(1);
/// A peer whose raft frames `step` refuses is logged at most once per this interval.
pub const BAD_FRAME_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Longest [`ControllerDriver::shutdown`]: its tasks end at once, a forward still connecting
/// lets go of the endpoint within the (default) handshake timeout, then the endpoint has
/// [`PEER_ENDPOINT_SHUTDOWN_TIMEOUT`] to release its socket.
pub const CONTROLLER_SHUTDOWN_TIMEOUT: Duration =
    Duration::from_secs(PEER_ENDPOINT_SHUTDOWN_TIMEOUT.as_secs() + PEER_CONNECT_TIMEOUT.as_secs());
/// Largest forwarded request or response body (a topic request with its configs fits).
pub const FORWARD_BYTES_MAX: usize = 256 * 1024;
/// Incoming connections a peer node usually holds to this controller: its raft sender's and
/// its forwarder's. More are served too (none replaces another) and logged at info.
pub const CONTROLLER_CONNECTIONS_PER_PEER_USUAL: usize = 2;
/// Version byte in front of every forwarded request and response.
pub const FORWARD_FORMAT_VERSION: u8 = 1;
/// [`ErrorBody`] code of a forwarded request the receiver could not decode.
pub const FORWARD_ERROR_BAD_REQUEST: u16 = 100;

/// Kafka's NOT_CONTROLLER.
const NOT_CONTROLLER: i16 = 41;
/// Kafka's REQUEST_TIMED_OUT.
const REQUEST_TIMED_OUT: i16 = 7;
/// Kafka's UNKNOWN_SERVER_ERROR.
const UNKNOWN_SERVER_ERROR: i16 = -1;

/// What a driver call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// No node is known to lead, or the leader changed while the request was in flight;
    /// retry (Kafka's NOT_CONTROLLER, 41).
    #[error("no active controller (leader hint {leader_hint:?})")]
    NotController {
        /// The leader this node knows of.
        leader_hint: Option<NodeId>,
    },
    /// The controller refused the request before proposing it.
    #[error(transparent)]
    Controller(#[from] ControllerError),
    /// The command committed but the state machine rejected it (on every voter alike).
    #[error("rejected: {0}")]
    Rejected(Rejection),
    /// No answer in time: a proposal that did not apply (its outcome is unknown), or a
    /// forwarded heartbeat the leader did not answer.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Forwarding to the leader failed on the way.
    #[error("forwarding to the active controller: {0}")]
    Transport(#[from] TransportError),
    /// The leader answered a forwarded request with an error.
    #[error("the active controller answered error {code}: {message}")]
    Remote {
        /// Kafka's error code.
        code: i16,
        /// For people and logs.
        message: String,
    },
    /// The driver was closed or its controller stopped after a storage failure.
    #[error("the controller driver stopped")]
    Stopped,
}

impl DriverError {
    /// Kafka's error code for this error.
    pub fn kafka_code(&self) -> i16 {
        match self {
            DriverError::NotController { .. } => NOT_CONTROLLER,
            DriverError::Controller(e) => e.kafka_code(),
            DriverError::Rejected(r) => r.kafka_code(),
            DriverError::Timeout(_) => REQUEST_TIMED_OUT,
            // The leader could not be reached: the client rediscovers the controller.
            DriverError::Transport(_) => NOT_CONTROLLER,
            DriverError::Remote { code, .. } => *code,
            DriverError::Stopped => UNKNOWN_SERVER_ERROR,
        }
    }
}

/// Counters of a driver, for metrics and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DriverStats {
    /// Raft messages handed to the transport.
    pub messages_sent: u64,
    /// Raft messages dropped: the peer's queue was full, or the peer was unreachable.
    pub messages_dropped: u64,
    /// Raft frames received and stepped.
    pub frames_stepped: u64,
    /// Raft frames `step` refused (garbage, foreign) or of a kind the driver does not take.
    pub frames_refused: u64,
    /// Outgoing connections made.
    pub connects: u64,
    /// Outgoing connects or sends that failed (each reported to raft as unreachable).
    pub peer_failures: u64,
    /// Forwarded requests answered for other nodes.
    pub forwards_served: u64,
}

pub use forward::{ForwardRequest, ForwardResponse};

// rkyv's derive emits undocumented items for the archived forms; the lint level of a module
// reaches generated items. The fields are those of the driver calls of the same name.
#[allow(missing_docs)]
mod forward {
    use super::{BTreeMap, BrokerRegistration, NodeId};

    /// A request a non-leader forwards to the active controller (frame kind 6).
    #[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
    pub enum ForwardRequest {
        /// [`ControllerDriver::create_topic`](super::ControllerDriver::create_topic).
        CreateTopic {
            name: String,
            partitions: u32,
            replication_factor: u32,
            configs: BTreeMap<String, String>,
        },
        /// [`ControllerDriver::delete_topic`](super::ControllerDriver::delete_topic).
        DeleteTopic { name: String },
        /// [`ControllerDriver::broker_heartbeat`](super::ControllerDriver::broker_heartbeat).
        BrokerHeartbeat {
            registration: BrokerRegistration,
            want_unfence: bool,
        },
        /// [`ControllerDriver::create_partitions`](super::ControllerDriver::create_partitions).
        CreatePartitions { topic: String, total: u32 },
        /// [`ControllerDriver::alter_partition`](super::ControllerDriver::alter_partition).
        AlterPartition {
            topic: String,
            partition: u32,
            leader: NodeId,
            leader_epoch: u32,
            partition_epoch: u32,
            new_isr: Vec<NodeId>,
        },
        /// [`ControllerDriver::decommission_broker`](super::ControllerDriver::decommission_broker).
        DecommissionBroker { broker: NodeId },
        /// [`ControllerDriver::controlled_shutdown`](super::ControllerDriver::controlled_shutdown).
        ControlledShutdown { broker: NodeId, incarnation: u64 },
    }

    /// The active controller's answer to a [`ForwardRequest`] (frame kind 7).
    #[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
    pub enum ForwardResponse {
        /// The command applied (create or delete topic).
        Applied { index: u64 },
        /// A heartbeat's reply.
        Heartbeat {
            registered: bool,
            fenced: bool,
            applied_index: u64,
        },
        /// An error with Kafka's code.
        Error { code: i16, message: String },
    }
}

fn encode_versioned<T>(value: &T) -> Bytes
where
    T: for<'a> rkyv::Serialize<
            rkyv::api::high::HighSerializer<
                rkyv::util::AlignedVec,
                rkyv::ser::allocator::ArenaHandle<'a>,
                BoxedError,
            >,
        >,
{
    // Serializing plain owned data into a growable buffer cannot fail.
    let archive = rkyv::to_bytes::<BoxedError>(value)
        .unwrap_or_else(|e| panic!("archiving a forwarded message cannot fail: {e}"));
    let mut out = Vec::with_capacity(1 + archive.len());
    out.push(FORWARD_FORMAT_VERSION);
    out.extend_from_slice(&archive);
    Bytes::from(out)
}

fn decode_versioned<T>(bytes: &[u8]) -> Result<T, String>
where
    T: rkyv::Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, BoxedError>>
        + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<BoxedError>>,
{
    if bytes.len() > FORWARD_BYTES_MAX {
        return Err(format!(
            "{} bytes, at most {FORWARD_BYTES_MAX}",
            bytes.len()
        ));
    }
    match bytes.split_first() {
        None => Err("empty".into()),
        Some((&FORWARD_FORMAT_VERSION, rest)) => {
            decode_archive::<T>(rest).map_err(|e| without_addresses(&e.to_string()))
        }
        Some((v, _)) => Err(format!("unknown format version {v}")),
    }
}

/// `text` with every hexadecimal number (`0x…`) replaced by `<address>`: rkyv's validation
/// errors name the memory addresses of the buffer they checked, which must not go to a peer
/// (nor mean anything to one).
fn without_addresses(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("0x") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let digits = after
            .find(|c: char| !c.is_ascii_hexdigit())
            .unwrap_or(after.len());
        if digits == 0 {
            out.push_str("0x");
        } else {
            out.push_str("<address>");
        }
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}

impl ForwardRequest {
    /// Encodes as a frame body: a version byte and the rkyv archive.
    pub fn encode(&self) -> Bytes {
        encode_versioned(self)
    }

    /// Decodes a body written by [`ForwardRequest::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        decode_versioned(bytes)
    }
}

impl ForwardResponse {
    /// Encodes as a frame body: a version byte and the rkyv archive.
    pub fn encode(&self) -> Bytes {
        encode_versioned(self)
    }

    /// Decodes a body written by [`ForwardResponse::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        decode_versioned(bytes)
    }

    fn from_error(e: &DriverError) -> Self {
        ForwardResponse::Error {
            code: e.kafka_code(),
            message: e.to_string(),
        }
    }
}

/// Wakes every waiting task when something changed. Waiters are the driver's own tasks and
/// its callers; a task registers at most one waker (deduplicated with `will_wake`).
#[derive(Default)]
struct Notify {
    version: Cell<u64>,
    waiters: RefCell<Vec<Waker>>,
}

impl Notify {
    fn notify(&self) {
        self.version.set(self.version.get() + 1);
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Resolves once [`Notify::notify`] is called after this call started.
    async fn notified(&self) {
        let start = self.version.get();
        poll_fn(|cx| {
            if self.version.get() != start {
                return Poll::Ready(());
            }
            let mut waiters = self.waiters.borrow_mut();
            if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                waiters.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await;
    }
}

/// One peer voter's outgoing side.
struct PeerOut {
    addr: SocketAddr,
    queue: RefCell<VecDeque<Bytes>>,
    wake: Notify,
}

struct Inner {
    me: NodeId,
    controller: RefCell<Controller>,
    /// The endpoint, until [`ControllerDriver::close`]. Tasks clone the `Rc` only around a
    /// `connect` or `accept`, so closing (which cancels them) lets the endpoint go.
    endpoint: RefCell<Option<Rc<PeerEndpoint>>>,
    /// Tells when the endpoint's socket is released, after it is let go.
    release: EndpointRelease,
    peers: BTreeMap<NodeId, PeerOut>,
    /// Recently applied commands by index, at most [`CONTROLLER_APPLIED_HISTORY_MAX`].
    history: RefCell<VecDeque<Applied>>,
    applied: Notify,
    stopped: Cell<bool>,
    stats: Cell<DriverStats>,
    /// The connection forwarded requests use, to the leader it was made to.
    forward_conn: RefCell<Option<PeerConnection>>,
    /// Per peer: when its last refused frame was logged, and how many since.
    bad_frame_log: RefCell<BTreeMap<NodeId, (Instant, u64)>>,
}

/// The controller quorum member of one node, run over QUIC on the current compio runtime.
/// Dropping it is [`ControllerDriver::close`]; [`ControllerDriver::shutdown`] also waits
/// until the peer port can be bound again.
pub struct ControllerDriver {
    inner: Rc<Inner>,
    tasks: RefCell<Vec<compio::runtime::JoinHandle<()>>>,
}

impl std::fmt::Debug for ControllerDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControllerDriver")
            .field("node", &self.inner.me)
            .finish_non_exhaustive()
    }
}

impl ControllerDriver {
    /// Starts driving `controller` over `endpoint` (bound on this node's shard 0 peer port).
    /// `voters` lists every voter with its peer address (this node's own entry is ignored);
    /// only those nodes may connect to `endpoint` from now on.
    pub fn start(
        controller: Controller,
        endpoint: PeerEndpoint,
        voters: &[(NodeId, SocketAddr)],
    ) -> Result<ControllerDriver, DriverError> {
        let me = controller.id();
        let mut peers = BTreeMap::new();
        for &(node, addr) in voters {
            if !controller.voters().contains(&node) {
                return Err(ControllerError::Voters(format!(
                    "node {node} is given an address but is not a voter {:?}",
                    controller.voters()
                ))
                .into());
            }
            if node != me {
                peers.insert(
                    node,
                    PeerOut {
                        addr,
                        queue: RefCell::new(VecDeque::new()),
                        wake: Notify::default(),
                    },
                );
            }
        }
        let missing: Vec<NodeId> = controller
            .voters()
            .iter()
            .copied()
            .filter(|n| *n != me && !peers.contains_key(n))
            .collect();
        if !missing.is_empty() {
            return Err(
                ControllerError::Voters(format!("no address for voters {missing:?}")).into(),
            );
        }
        let allowed: Vec<NodeId> = peers.keys().copied().collect();
        endpoint.set_allowed_nodes(&allowed);
        let release = endpoint.release();
        let inner = Rc::new(Inner {
            me,
            controller: RefCell::new(controller),
            endpoint: RefCell::new(Some(Rc::new(endpoint))),
            release,
            peers,
            history: RefCell::new(VecDeque::new()),
            applied: Notify::default(),
            stopped: Cell::new(false),
            stats: Cell::new(DriverStats::default()),
            forward_conn: RefCell::new(None),
            bad_frame_log: RefCell::new(BTreeMap::new()),
        });
        let mut tasks = Vec::new();
        tasks.push(compio::runtime::spawn(ticker(Rc::clone(&inner))));
        tasks.push(compio::runtime::spawn(acceptor(Rc::clone(&inner))));
        for &node in inner.peers.keys() {
            tasks.push(compio::runtime::spawn(sender(Rc::clone(&inner), node)));
        }
        // Hand out what opening the controller produced.
        inner.drive(|_| Ok(()))?;
        Ok(ControllerDriver {
            inner,
            tasks: RefCell::new(tasks),
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.me
    }

    /// The leader this node knows of.
    pub fn leader(&self) -> Option<NodeId> {
        self.inner.controller.borrow().leader()
    }

    /// Whether this node is the active controller.
    pub fn is_leader(&self) -> bool {
        self.inner.controller.borrow().is_leader()
    }

    /// The current Raft term.
    pub fn term(&self) -> u64 {
        self.inner.controller.borrow().term()
    }

    /// Index of the last applied command.
    pub fn applied_index(&self) -> u64 {
        self.inner.controller.borrow().applied_index()
    }

    /// The applied cluster state. Do not hold the borrow across an `.await`.
    pub fn state(&self) -> Ref<'_, ClusterState> {
        Ref::map(self.inner.controller.borrow(), |c| c.state())
    }

    /// The commands applied here with a raft index above `after`, in order, as far as this
    /// node still remembers them (the last [`CONTROLLER_APPLIED_HISTORY_MAX`]; a snapshot
    /// installed from the leader brings state without commands). The broker uses it to see
    /// what happened between two views it built, e.g. a topic deleted and created again.
    pub fn applied_after(&self, after: u64) -> Vec<Applied> {
        self.inner
            .history
            .borrow()
            .iter()
            .filter(|a| a.index > after)
            .cloned()
            .collect()
    }

    /// The counters so far.
    pub fn stats(&self) -> DriverStats {
        self.inner.stats.get()
    }

    /// The endpoint the driver runs on; `None` once closed.
    pub fn endpoint(&self) -> Option<Rc<PeerEndpoint>> {
        self.inner.endpoint.borrow().clone()
    }

    /// Waits until the applied index changes (or the driver stops), then returns it.
    pub async fn applied_changed(&self) -> u64 {
        let seen = self.applied_index();
        while !self.inner.stopped.get() && self.applied_index() == seen {
            self.inner.applied.notified().await;
        }
        self.applied_index()
    }

    /// Creates a topic through the active controller (forwarded if this node is not it),
    /// within [`CONTROLLER_PROPOSAL_TIMEOUT`]: returns once the command applied on the leader,
    /// with its raft index (this node's state has it once
    /// [`applied_index`](Self::applied_index) reaches it). A rejection applied by every voter
    /// is [`DriverError::Rejected`] here and [`DriverError::Remote`] with Kafka's code when
    /// forwarded; no leader is [`DriverError::NotController`].
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u32,
        configs: BTreeMap<String, String>,
    ) -> Result<u64, DriverError> {
        let request = ForwardRequest::CreateTopic {
            name: name.to_string(),
            partitions,
            replication_factor,
            configs,
        };
        match self.inner.handle(request).await? {
            ForwardResponse::Applied { index } => Ok(index),
            other => Err(unexpected(&other)),
        }
    }

    /// Deletes a topic through the active controller, like
    /// [`create_topic`](Self::create_topic); returns its raft index.
    pub async fn delete_topic(&self, name: &str) -> Result<u64, DriverError> {
        let request = ForwardRequest::DeleteTopic {
            name: name.to_string(),
        };
        match self.inner.handle(request).await? {
            ForwardResponse::Applied { index } => Ok(index),
            other => Err(unexpected(&other)),
        }
    }

    /// Grows a topic to `total` partitions through the active controller, like
    /// [`create_topic`](Self::create_topic) (new partitions are placed like a new topic's, with
    /// the replication factor of partition 0); returns its raft index.
    pub async fn create_partitions(&self, topic: &str, total: u32) -> Result<u64, DriverError> {
        let request = ForwardRequest::CreatePartitions {
            topic: topic.to_string(),
            total,
        };
        match self.inner.handle(request).await? {
            ForwardResponse::Applied { index } => Ok(index),
            other => Err(unexpected(&other)),
        }
    }

    /// A partition leader's ISR change (Kafka's AlterPartition) through the active
    /// controller (forwarded if needed), like [`create_topic`](Self::create_topic): returns
    /// the raft index once the change applied. `leader_epoch` and `partition_epoch` are those
    /// the leader holds; a stale one is rejected ([`Rejection::FencedLeaderEpoch`],
    /// [`Rejection::InvalidUpdateVersion`]), so a fenced leader never changes the ISR.
    pub async fn alter_partition(
        &self,
        topic: &str,
        partition: u32,
        leader_epoch: u32,
        partition_epoch: u32,
        new_isr: Vec<NodeId>,
    ) -> Result<u64, DriverError> {
        let request = ForwardRequest::AlterPartition {
            topic: topic.to_string(),
            partition,
            leader: self.inner.me,
            leader_epoch,
            partition_epoch,
            new_isr,
        };
        match self.inner.handle(request).await? {
            ForwardResponse::Applied { index } => Ok(index),
            other => Err(unexpected(&other)),
        }
    }

    /// Marks `broker` as being decommissioned through the active controller (forwarded if
    /// needed), like [`create_topic`](Self::create_topic); its replicas then move to other
    /// brokers in the background. Refused with [`Rejection::NoReassignmentTarget`] when a
    /// replica has nowhere to go, [`Rejection::UnknownBroker`] for an unknown id.
    pub async fn decommission_broker(&self, broker: NodeId) -> Result<u64, DriverError> {
        let request = ForwardRequest::DecommissionBroker { broker };
        match self.inner.handle(request).await? {
            ForwardResponse::Applied { index } => Ok(index),
            other => Err(unexpected(&other)),
        }
    }

    /// This broker (incarnation `incarnation`) is stopping on purpose: the active controller
    /// fences it now, moving its leaderships to in-sync replicas (forwarded if needed). Returns
    /// the raft index of the change (this node has it once
    /// [`applied_index`](Self::applied_index) reaches it). Stop heartbeating first, or a
    /// heartbeat asking to be unfenced undoes it.
    pub async fn controlled_shutdown(&self, incarnation: u64) -> Result<u64, DriverError> {
        let request = ForwardRequest::ControlledShutdown {
            broker: self.inner.me,
            incarnation,
        };
        match self.inner.handle(request).await? {
            ForwardResponse::Applied { index } => Ok(index),
            other => Err(unexpected(&other)),
        }
    }

    /// Sends this broker's heartbeat to the active controller (forwarded if needed); the
    /// reply comes at once (registering or unfencing follows by proposal).
    pub async fn broker_heartbeat(
        &self,
        heartbeat: &BrokerHeartbeat,
    ) -> Result<HeartbeatReply, DriverError> {
        let request = ForwardRequest::BrokerHeartbeat {
            registration: heartbeat.registration.clone(),
            want_unfence: heartbeat.want_unfence,
        };
        match self.inner.handle(request).await? {
            ForwardResponse::Heartbeat {
                registered,
                fenced,
                applied_index,
            } => Ok(HeartbeatReply {
                registered,
                fenced,
                applied_index,
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// Stops the tasks (cancelled; they are dropped at the runtime's next turn), closes the
    /// endpoint (peers see [`CloseCode::Shutdown`](crate::transport::CloseCode::Shutdown))
    /// and lets go of it: its UDP socket is released in the background within
    /// [`PEER_ENDPOINT_SHUTDOWN_TIMEOUT`]. Every later call answers [`DriverError::Stopped`].
    pub fn close(&self) {
        self.inner.stop();
        self.inner.forward_conn.borrow_mut().take();
        let endpoint = self.inner.endpoint.borrow_mut().take();
        if let Some(endpoint) = endpoint {
            endpoint.close();
        }
        self.tasks.borrow_mut().clear();
    }

    /// [`close`](Self::close), then waits until the endpoint's UDP socket is released, so the
    /// peer port can be bound again (a restart in the same process); at most
    /// [`CONTROLLER_SHUTDOWN_TIMEOUT`]. An error says the socket may still be bound.
    pub async fn shutdown(&self) -> Result<(), DriverError> {
        self.close();
        let timeout = CONTROLLER_SHUTDOWN_TIMEOUT;
        compio::time::timeout(timeout, self.inner.release.wait())
            .await
            .map_err(|_| DriverError::Timeout(timeout))??;
        Ok(())
    }
}

impl Drop for ControllerDriver {
    fn drop(&mut self) {
        self.close();
    }
}

fn unexpected(response: &ForwardResponse) -> DriverError {
    match response {
        ForwardResponse::Error { code, message } => DriverError::Remote {
            code: *code,
            message: message.clone(),
        },
        other => DriverError::Remote {
            code: UNKNOWN_SERVER_ERROR,
            message: format!("unexpected answer {other:?}"),
        },
    }
}

impl Inner {
    /// The endpoint, or [`DriverError::Stopped`] once closed. Hold it only as long as a call
    /// on it takes.
    fn endpoint(&self) -> Result<Rc<PeerEndpoint>, DriverError> {
        self.endpoint.borrow().clone().ok_or(DriverError::Stopped)
    }

    fn stop(&self) {
        self.stopped.set(true);
        self.applied.notify();
        for p in self.peers.values() {
            p.wake.notify();
        }
    }

    fn count(&self, f: impl FnOnce(&mut DriverStats)) {
        let mut s = self.stats.get();
        f(&mut s);
        self.stats.set(s);
    }

    /// Runs `f` on the controller, then `ready`, and dispatches the output.
    fn drive<T>(
        &self,
        f: impl FnOnce(&mut Controller) -> Result<T, ControllerError>,
    ) -> Result<T, DriverError> {
        if self.stopped.get() {
            return Err(DriverError::Stopped);
        }
        let (result, ready) = {
            let mut c = self.controller.borrow_mut();
            let result = f(&mut c);
            (result, c.ready())
        };
        match ready {
            Ok(out) => self.dispatch(out),
            Err(e) => {
                tracing::error!(node = self.me, error = %e, "controller stopped; the driver stops");
                self.stop();
                return Err(DriverError::Stopped);
            }
        }
        Ok(result?)
    }

    fn dispatch(&self, out: Output) {
        for (to, bytes) in out.messages {
            let Some(peer) = self.peers.get(&to) else {
                continue;
            };
            let mut q = peer.queue.borrow_mut();
            if q.len() >= CONTROLLER_PEER_QUEUE_MAX {
                self.count(|s| s.messages_dropped += 1);
                continue;
            }
            q.push_back(Bytes::from(bytes));
            drop(q);
            peer.wake.notify();
        }
        if !out.applied.is_empty() || out.snapshot_installed {
            let mut h = self.history.borrow_mut();
            for a in out.applied {
                if h.len() >= CONTROLLER_APPLIED_HISTORY_MAX {
                    h.pop_front();
                }
                h.push_back(a);
            }
            drop(h);
            self.applied.notify();
        }
    }

    /// Handles a request here on the active controller, or forwards it to the leader.
    async fn handle(&self, request: ForwardRequest) -> Result<ForwardResponse, DriverError> {
        if self.stopped.get() {
            return Err(DriverError::Stopped);
        }
        let leader = self.controller.borrow().leader();
        match leader {
            Some(l) if l == self.me => self.handle_local(request).await,
            Some(l) if matches!(request, ForwardRequest::BrokerHeartbeat { .. }) => {
                let timeout = CONTROLLER_HEARTBEAT_FORWARD_TIMEOUT;
                compio::time::timeout(timeout, self.forward(l, request))
                    .await
                    .map_err(|_| DriverError::Timeout(timeout))?
            }
            Some(l) => self.forward(l, request).await,
            None => Err(DriverError::NotController { leader_hint: None }),
        }
    }

    async fn forward(
        &self,
        leader: NodeId,
        request: ForwardRequest,
    ) -> Result<ForwardResponse, DriverError> {
        let Some(peer) = self.peers.get(&leader) else {
            return Err(DriverError::NotController {
                leader_hint: Some(leader),
            });
        };
        // Forwards have their own connection to the leader (kept while it works), so a
        // stalled forward never holds up the raft sender's stream.
        let cached = self
            .forward_conn
            .borrow()
            .as_ref()
            .filter(|c| c.peer_node() == leader)
            .cloned();
        let conn = match cached {
            Some(c) => c,
            None => {
                let endpoint = self.endpoint()?;
                let c = endpoint.connect(peer.addr, leader).await?;
                drop(endpoint);
                *self.forward_conn.borrow_mut() = Some(c.clone());
                c
            }
        };
        let frame = match conn
            .request(FrameKind::ControllerForward, request.encode())
            .await
        {
            Ok(f) => f,
            Err(e) => {
                let mut cached = self.forward_conn.borrow_mut();
                if !matches!(e, TransportError::Remote { .. })
                    && cached.as_ref().is_some_and(|c| c.peer_node() == leader)
                {
                    *cached = None;
                    conn.close();
                }
                return Err(e.into());
            }
        };
        if frame.kind != FrameKind::ControllerForwardResponse {
            return Err(DriverError::Remote {
                code: UNKNOWN_SERVER_ERROR,
                message: format!("answer of kind {:?}", frame.kind),
            });
        }
        let response = ForwardResponse::decode(&frame.body).map_err(|e| DriverError::Remote {
            code: UNKNOWN_SERVER_ERROR,
            message: format!("undecodable answer: {e}"),
        })?;
        match response {
            ForwardResponse::Error { code, message } => Err(DriverError::Remote { code, message }),
            ok => Ok(ok),
        }
    }

    /// Handles a request on this node, which must be the active controller (a forwarded
    /// request is never forwarded again).
    async fn handle_local(&self, request: ForwardRequest) -> Result<ForwardResponse, DriverError> {
        match request {
            ForwardRequest::CreateTopic {
                name,
                partitions,
                replication_factor,
                configs,
            } => {
                let index = self.drive(|c| {
                    c.create_topic(&name, partitions, replication_factor as usize, configs)
                })?;
                self.wait_applied(index).await
            }
            ForwardRequest::DeleteTopic { name } => {
                let index = self.drive(|c| c.delete_topic(&name))?;
                self.wait_applied(index).await
            }
            ForwardRequest::CreatePartitions { topic, total } => {
                let index = self.drive(|c| c.create_partitions(&topic, total))?;
                self.wait_applied(index).await
            }
            ForwardRequest::AlterPartition {
                topic,
                partition,
                leader,
                leader_epoch,
                partition_epoch,
                new_isr,
            } => {
                let command = Command::AlterPartition {
                    topic,
                    partition,
                    leader,
                    leader_epoch,
                    partition_epoch,
                    new_isr,
                };
                let index = self.drive(|c| c.propose(&command))?;
                self.wait_applied(index).await
            }
            ForwardRequest::DecommissionBroker { broker } => {
                let index = self.drive(|c| c.decommission_broker(broker))?;
                self.wait_applied(index).await
            }
            ForwardRequest::ControlledShutdown {
                broker,
                incarnation,
            } => match self.drive(|c| c.controlled_shutdown(broker, incarnation))? {
                Some(index) => self.wait_applied(index).await,
                None => Ok(ForwardResponse::Applied {
                    index: self.controller.borrow().applied_index(),
                }),
            },
            ForwardRequest::BrokerHeartbeat {
                registration,
                want_unfence,
            } => {
                let hb = BrokerHeartbeat {
                    registration,
                    want_unfence,
                };
                let reply = self.drive(|c| c.broker_heartbeat(&hb, Instant::now()))?;
                Ok(ForwardResponse::Heartbeat {
                    registered: reply.registered,
                    fenced: reply.fenced,
                    applied_index: reply.applied_index,
                })
            }
        }
    }

    /// Waits until the entry at `index` (proposed by this node in the current term) applied,
    /// and answers with its result.
    async fn wait_applied(&self, index: u64) -> Result<ForwardResponse, DriverError> {
        let term = self.controller.borrow().term();
        let wait = async {
            loop {
                if self.stopped.get() {
                    return Err(DriverError::Stopped);
                }
                let (applied, current_term, leader) = {
                    let c = self.controller.borrow();
                    (c.applied_index(), c.term(), c.leader())
                };
                if applied >= index {
                    let h = self.history.borrow();
                    return match h.iter().find(|a| a.index == index) {
                        // Only a command this leader proposed in its term can sit at `index`
                        // unless leadership moved; then its outcome is unknown here.
                        Some(a) if current_term == term => match &a.result {
                            Ok(()) => Ok(ForwardResponse::Applied { index }),
                            Err(r) => Err(DriverError::Rejected(r.clone())),
                        },
                        _ => Err(DriverError::NotController {
                            leader_hint: leader,
                        }),
                    };
                }
                if current_term != term {
                    return Err(DriverError::NotController {
                        leader_hint: leader,
                    });
                }
                self.applied.notified().await;
            }
        };
        compio::time::timeout(CONTROLLER_PROPOSAL_TIMEOUT, wait)
            .await
            .map_err(|_| DriverError::Timeout(CONTROLLER_PROPOSAL_TIMEOUT))?
    }

    fn log_refused(&self, peer: NodeId, error: &dyn std::fmt::Display) {
        self.count(|s| s.frames_refused += 1);
        let now = Instant::now();
        let mut log = self.bad_frame_log.borrow_mut();
        match log.get_mut(&peer) {
            Some((last, suppressed)) if now.duration_since(*last) < BAD_FRAME_LOG_INTERVAL => {
                *suppressed += 1;
            }
            entry => {
                let suppressed = entry.map_or(0, |e| e.1);
                tracing::warn!(node = self.me, peer, suppressed, %error,
                    "dropped a raft frame from a peer (logged once per interval per peer)");
                log.insert(peer, (now, 0));
            }
        }
    }
}

/// Ticks the controller; on the active controller also checks broker liveness.
async fn ticker(inner: Rc<Inner>) {
    let period = Duration::from_millis(CONTROLLER_TICK_MS);
    let mut next = Instant::now() + period;
    while !inner.stopped.get() {
        compio::time::sleep(next.saturating_duration_since(Instant::now())).await;
        next += period;
        if next < Instant::now() {
            next = Instant::now() + period; // we fell behind: do not burst ticks
        }
        let result = inner.drive(|c| {
            c.tick();
            Ok(())
        });
        if result.is_err() {
            return;
        }
        if inner.controller.borrow().is_leader() {
            match inner.drive(|c| c.check_liveness(Instant::now())) {
                Ok(_) | Err(DriverError::Controller(ControllerError::NotLeader { .. })) => {}
                Err(DriverError::Stopped) => return,
                Err(e) => tracing::warn!(node = inner.me, error = %e, "liveness check failed"),
            }
            match inner.drive(|c| c.check_reassignments()) {
                Ok(_) | Err(DriverError::Controller(ControllerError::NotLeader { .. })) => {}
                Err(DriverError::Stopped) => return,
                Err(e) => tracing::warn!(node = inner.me, error = %e, "reassignment step failed"),
            }
        }
    }
}

/// Sends the raft messages queued for `node`, keeping one connection and one one-way stream.
async fn sender(inner: Rc<Inner>, node: NodeId) {
    let Some(peer) = inner.peers.get(&node) else {
        return;
    };
    let mut link: Option<(PeerConnection, OnewaySender)> = None;
    let mut backoff = CONTROLLER_RECONNECT_BACKOFF_MIN;
    loop {
        while peer.queue.borrow().is_empty() && !inner.stopped.get() {
            peer.wake.notified().await;
        }
        if inner.stopped.get() {
            return;
        }
        if link.is_none() {
            let made = async {
                let endpoint = inner
                    .endpoint()
                    .map_err(|_| TransportError::EndpointClosed)?;
                let conn = endpoint.connect(peer.addr, node).await?;
                drop(endpoint);
                let stream = conn.open_oneway().await?;
                Ok::<_, TransportError>((conn, stream))
            }
            .await;
            match made {
                Ok(l) => {
                    tracing::debug!(node = inner.me, peer = node, "controller connected to peer");
                    inner.count(|s| s.connects += 1);
                    backoff = CONTROLLER_RECONNECT_BACKOFF_MIN;
                    link = Some(l);
                }
                Err(e) => {
                    fail(&inner, peer, node, &e);
                    compio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(CONTROLLER_RECONNECT_BACKOFF_MAX);
                    continue;
                }
            }
        }
        let Some(bytes) = peer.queue.borrow_mut().pop_front() else {
            continue;
        };
        let Some((_, stream)) = link.as_mut() else {
            continue;
        };
        match stream.send(FrameKind::RaftMessage, bytes).await {
            Ok(()) => inner.count(|s| s.messages_sent += 1),
            Err(e) => {
                if let Some((conn, _)) = link.take() {
                    conn.close();
                }
                fail(&inner, peer, node, &e);
            }
        }
    }
}

/// A failed connect or send: tell raft, drop what was queued (it is stale by the time the
/// peer is back; raft resends).
fn fail(inner: &Inner, peer: &PeerOut, node: NodeId, error: &TransportError) {
    let dropped = {
        let mut q = peer.queue.borrow_mut();
        let n = q.len() as u64;
        q.clear();
        n
    };
    inner.count(|s| {
        s.peer_failures += 1;
        s.messages_dropped += dropped;
    });
    tracing::debug!(node = inner.me, peer = node, error = %error, dropped,
        "controller peer unreachable");
    if !inner.stopped.get() {
        inner.controller.borrow_mut().report_unreachable(node);
    }
}

/// Incoming connections open per peer node. A node may hold several at once (its reconnect
/// racing the close of its old connection, its sender's and its forwarder's, or anyone with a
/// copy of its key): each is served on its own and none replaces another. One entry per
/// allowed node at most.
type OpenConnections = Rc<RefCell<BTreeMap<NodeId, usize>>>;

/// One open incoming connection in [`OpenConnections`], until its reader ends.
struct OpenConnection {
    open: OpenConnections,
    peer: NodeId,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        let mut open = self.open.borrow_mut();
        if let Some(n) = open.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.peer);
            }
        }
    }
}

/// Accepts peer connections and spawns a reader for each.
async fn acceptor(inner: Rc<Inner>) {
    let mut readers: Vec<compio::runtime::JoinHandle<()>> = Vec::new();
    let open = OpenConnections::default();
    while !inner.stopped.get() {
        let Ok(endpoint) = inner.endpoint() else {
            return;
        };
        let accepted = endpoint.accept().await;
        drop(endpoint);
        match accepted {
            Ok(conn) => {
                let peer = conn.peer_node();
                let count = {
                    let mut open = open.borrow_mut();
                    let n = open.entry(peer).or_default();
                    *n += 1;
                    *n
                };
                if count > CONTROLLER_CONNECTIONS_PER_PEER_USUAL {
                    tracing::info!(node = inner.me, peer, open = count,
                        remote = %conn.remote_address(),
                        "another controller connection from a peer node; each is served");
                } else {
                    tracing::debug!(node = inner.me, peer, open = count,
                        remote = %conn.remote_address(), "controller connection from a peer node");
                }
                let entry = OpenConnection {
                    open: Rc::clone(&open),
                    peer,
                };
                readers.retain(|r| !r.is_finished());
                readers.push(compio::runtime::spawn(reader(
                    Rc::clone(&inner),
                    conn,
                    entry,
                )));
            }
            Err(_) => return,
        }
    }
}

/// Steps the raft frames of one incoming connection and serves its forwarded requests.
async fn reader(inner: Rc<Inner>, conn: PeerConnection, _open: OpenConnection) {
    let peer = conn.peer_node();
    let mut requests: Vec<compio::runtime::JoinHandle<()>> = Vec::new();
    loop {
        let incoming = match conn.accept_incoming().await {
            Ok(incoming) => incoming,
            Err(e) => {
                tracing::debug!(node = inner.me, peer, remote = %conn.remote_address(),
                    malformed_streams = conn.malformed_streams(), error = %e,
                    "controller connection from a peer node ended");
                return;
            }
        };
        if inner.stopped.get() {
            return;
        }
        match incoming {
            PeerIncoming::Oneway(Frame {
                kind: FrameKind::RaftMessage,
                body,
            }) => match inner.drive(|c| c.step(peer, &body)) {
                Ok(()) => inner.count(|s| s.frames_stepped += 1),
                Err(DriverError::Stopped) => return,
                Err(e) => inner.log_refused(peer, &e),
            },
            PeerIncoming::Oneway(frame) => {
                inner.log_refused(peer, &format!("one-way frame of kind {:?}", frame.kind));
            }
            PeerIncoming::Request { frame, responder } => {
                requests.retain(|r| !r.is_finished());
                requests.push(compio::runtime::spawn(serve_request(
                    Rc::clone(&inner),
                    frame,
                    responder,
                )));
            }
        }
    }
}

async fn serve_request(inner: Rc<Inner>, frame: Frame, responder: Responder) {
    let peer = responder.peer_node();
    if frame.kind != FrameKind::ControllerForward {
        let _ = responder
            .respond_error(
                ErrorBody::UNSUPPORTED_KIND,
                &format!("the controller does not serve {:?}", frame.kind),
            )
            .await;
        return;
    }
    let request = match ForwardRequest::decode(&frame.body) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(node = inner.me, peer, error = %e, "undecodable forwarded request");
            let _ = responder
                .respond_error(
                    FORWARD_ERROR_BAD_REQUEST,
                    &format!("bad forwarded request: {e}"),
                )
                .await;
            return;
        }
    };
    inner.count(|s| s.forwards_served += 1);
    let is_leader = inner.controller.borrow().is_leader();
    let response = if is_leader {
        match inner.handle_local(request).await {
            Ok(r) => r,
            Err(e) => ForwardResponse::from_error(&e),
        }
    } else {
        let leader_hint = inner.controller.borrow().leader();
        ForwardResponse::from_error(&DriverError::NotController { leader_hint })
    };
    if let Err(e) = responder
        .respond(FrameKind::ControllerForwardResponse, response.encode())
        .await
    {
        tracing::debug!(node = inner.me, peer, error = %e, "could not answer a forwarded request");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_messages_round_trip_and_garbage_is_an_error() {
        let requests = [
            ForwardRequest::CreateTopic {
                name: "orders".into(),
                partitions: 6,
                replication_factor: 3,
                configs: BTreeMap::from([("cleanup.policy".into(), "compact".into())]),
            },
            ForwardRequest::DeleteTopic { name: "x".into() },
            ForwardRequest::CreatePartitions {
                topic: "x".into(),
                total: 12,
            },
            ForwardRequest::BrokerHeartbeat {
                registration: BrokerRegistration {
                    id: 2,
                    incarnation: 9,
                    client_host: "h".into(),
                    client_port: 9092,
                    shards: 4,
                    shard_ports: Vec::new(),
                    peer_host: "p".into(),
                    peer_port: 19092,
                },
                want_unfence: true,
            },
        ];
        for r in requests {
            assert_eq!(ForwardRequest::decode(&r.encode()), Ok(r));
        }
        let responses = [
            ForwardResponse::Applied { index: 7 },
            ForwardResponse::Heartbeat {
                registered: true,
                fenced: false,
                applied_index: 3,
            },
            ForwardResponse::from_error(&DriverError::NotController { leader_hint: None }),
        ];
        for r in responses {
            assert_eq!(ForwardResponse::decode(&r.encode()), Ok(r));
        }
        assert!(ForwardRequest::decode(b"").is_err());
        assert!(ForwardRequest::decode(b"\x02abc").is_err());
        assert!(ForwardRequest::decode(b"\x01garbage").is_err());
        // rkyv's errors name heap addresses (here: the root is past the end of the buffer);
        // a peer never sees them.
        let error = ForwardRequest::decode(&[FORWARD_FORMAT_VERSION, 0, 0]).expect_err("short");
        assert!(
            error.contains("pointer") && error.contains("<address>"),
            "{error}"
        );
        assert!(!error.contains("0x"), "{error}");
        assert_eq!(
            without_addresses("ptr 0x00007f1e6c0ac4d0 size 64 in 0x1..0xg 0x"),
            "ptr <address> size 64 in <address>..0xg 0x"
        );
        assert!(ForwardRequest::decode(&vec![1; FORWARD_BYTES_MAX + 1]).is_err());
        assert_eq!(
            DriverError::NotController { leader_hint: None }.kafka_code(),
            41
        );
    }
}
