//! Partition replication between brokers (cluster mode only).
//!
//! Every shard that holds replicas runs one QUIC endpoint for them (`peer_port + 1 + shard`).
//! A partition's role comes from the cluster view ([`apply_view`]):
//! - leader: appends stamp its leader epoch; it serves its followers' fetches (`leader.rs`),
//!   tracks their progress, moves the high watermark (the least durable end over the
//!   committed ISR) and asks the controller to shrink or expand the ISR;
//! - follower: one fetcher task per (leader node, leader shard) fetches every partition this
//!   shard follows from there (`follower.rs`), appends the leader's batches as they are,
//!   truncates a divergent suffix and follows the leader's high watermark. Each fetcher
//!   connects from a client-only endpoint of its own (same IP, ephemeral port): compio-quic
//!   keeps one receive in flight per endpoint, so fetchers sharing the shard's endpoint read
//!   every leader's answers through one socket, one datagram batch at a time.
//!
//! Producers and consumers talk to the leader only; consumers read below the high watermark;
//! acks=all waits until it covers the append ([`wait_committed`]). See "Replication" in
//! `docs/ARCHITECTURE.md`. Without `--cluster` every partition's role is [`Role::Single`] and
//! nothing here runs: the high watermark is the durable end, as before.

mod follower;
mod leader;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use compio::net::ToSocketAddrsAsync;
use compio::runtime::JoinHandle;
use sluice_proto::Offset;
use sluice_proto::protocol::ErrorCode;
use sluice_replication::NodeId;
use sluice_replication::controller::ClusterState;
use sluice_replication::tls::PeerTls;
use sluice_replication::transport::PeerEndpoint;

use crate::cluster::ClusterView;
use crate::placement::shard_for;
use crate::shard::Shard;
use crate::shard::msg::{ShardMsg, reply_channel};
use crate::shard::partition::Partition;

/// A topic's `min.insync.replicas`: acks=all produce needs at least this many in-sync
/// replicas (Kafka's name and default, 1).
pub(crate) const MIN_INSYNC_REPLICAS_CONFIG: &str = "min.insync.replicas";

/// Longest a follower's fetch waits at the leader for new data.
pub(crate) const REPLICA_FETCH_WAIT_MS: u32 = 500;

/// First wait after a failed fetch (connect, transport or partition errors); doubles on
/// each failure in a row up to [`REPLICA_BACKOFF_MAX`].
pub(crate) const REPLICA_BACKOFF_MIN: Duration = Duration::from_millis(50);

/// Longest wait between failed fetches.
pub(crate) const REPLICA_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Least time between two ISR change requests for one partition after one failed.
pub(crate) const ALTER_PARTITION_RETRY: Duration = Duration::from_secs(1);

/// Longest interval of the ISR shrink check (it runs every `replica.lag.time.max.ms / 2`,
/// at most this).
pub(crate) const ISR_CHECK_INTERVAL_MAX: Duration = Duration::from_secs(1);

/// What replication needs from the broker configuration.
pub(crate) struct Settings {
    /// `ca.pem`, `node-<id>.pem`, `node-<id>.key`.
    pub(crate) cert_dir: PathBuf,
    /// `replica.lag.time.max.ms`.
    pub(crate) lag_time_max: Duration,
}

/// The replication settings, in cluster mode.
pub(crate) fn settings(shard: &Shard) -> Option<Settings> {
    let config = &shard.cluster.config;
    config.cluster.as_ref().map(|c| Settings {
        cert_dir: c.cert_dir.clone(),
        lag_time_max: Duration::from_millis(config.replica_lag_time_max_ms),
    })
}

/// Whether the broker runs in cluster mode (partitions then start without a role and wait
/// for the cluster view).
pub(crate) fn cluster_mode(shard: &Shard) -> bool {
    shard.cluster.config.cluster.is_some()
}

/// A follower's progress, as the leader saw it in its last fetch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FollowerProgress {
    /// Its log end offset (the fetch offset).
    pub(crate) log_end: u64,
    /// Its durable end.
    pub(crate) durable_end: u64,
    /// When it fetched last.
    pub(crate) last_fetch: Instant,
    /// The leader's log end when it fetched last.
    pub(crate) leader_end_at_last_fetch: u64,
    /// Last time it had everything the leader had (Kafka's lastCaughtUpTime).
    pub(crate) caught_up_at: Instant,
}

/// A leader's state for one partition.
#[derive(Debug, Clone)]
pub(crate) struct LeaderState {
    /// The leader epoch it leads in.
    pub(crate) epoch: u32,
    /// The partition epoch of the view (ISR changes name it).
    pub(crate) partition_epoch: u32,
    /// Every replica.
    pub(crate) replicas: Vec<NodeId>,
    /// The committed ISR (from the view).
    pub(crate) isr: Vec<NodeId>,
    /// `min.insync.replicas`.
    pub(crate) min_insync: usize,
    /// The log end when this node became leader in `epoch`: a follower joins the ISR only
    /// once it has reached it.
    pub(crate) epoch_start: u64,
    /// The followers' progress, at most one entry per replica.
    pub(crate) followers: HashMap<NodeId, FollowerProgress>,
    /// An ISR change is on its way to the controller (or applied, until the view shows it).
    pub(crate) alter_in_flight: bool,
    /// No ISR change before this (after a failed one).
    pub(crate) alter_retry_at: Option<Instant>,
}

/// A partition's role on this node.
#[derive(Debug, Clone)]
pub(crate) enum Role {
    /// The broker runs alone: no replication, the high watermark is the durable end.
    Single,
    /// Cluster mode, before the view gave a role (or after the partition left the view).
    Unassigned,
    /// Cluster mode, no leader (offline partition).
    Offline,
    /// This node leads.
    Leader(LeaderState),
    /// This node follows `leader` in `leader_epoch`.
    Follower {
        /// The leader.
        leader: NodeId,
        /// Its epoch.
        leader_epoch: u32,
    },
}

/// A partition's replication state on its owning shard.
pub(crate) struct ReplicaState {
    /// Its role.
    pub(crate) role: RefCell<Role>,
    /// This node (set by the first view).
    pub(crate) me: Cell<NodeId>,
    /// Dropped (and replaced) when the high watermark or the role changes: every waiter on
    /// a clone of `changed` wakes.
    notify: RefCell<flume::Sender<()>>,
    changed: RefCell<flume::Receiver<()>>,
}

impl ReplicaState {
    /// A partition's state at open: [`Role::Single`] unless the broker runs in cluster mode.
    pub(crate) fn new(cluster: bool) -> Self {
        let (notify, changed) = flume::bounded(1);
        Self {
            role: RefCell::new(if cluster {
                Role::Unassigned
            } else {
                Role::Single
            }),
            me: Cell::new(0),
            notify: RefCell::new(notify),
            changed: RefCell::new(changed),
        }
    }

    /// Whether replication governs this partition (cluster mode).
    pub(crate) fn is_cluster(&self) -> bool {
        !matches!(*self.role.borrow(), Role::Single)
    }

    /// Wakes everyone waiting on [`changed`](Self::changed).
    pub(crate) fn notify(&self) {
        let (tx, rx) = flume::bounded(1);
        drop(std::mem::replace(&mut *self.notify.borrow_mut(), tx));
        *self.changed.borrow_mut() = rx;
    }

    /// Resolves at the next high watermark or role change.
    pub(crate) fn changed(&self) -> impl std::future::Future<Output = ()> + 'static {
        let rx = self.changed.borrow().clone();
        async move {
            let _ = rx.recv_async().await;
        }
    }

    /// The leader epoch, if this node leads.
    pub(crate) fn leader_epoch(&self) -> Option<u32> {
        match &*self.role.borrow() {
            Role::Leader(l) => Some(l.epoch),
            _ => None,
        }
    }
}

/// A per-partition failure: code and message.
type Failure = (ErrorCode, String);

/// Refuses a client request (produce, consumer fetch, list offsets) unless this node may
/// serve it: the leader in cluster mode, anyone when the broker runs alone.
pub(crate) fn check_leader(p: &Partition) -> Result<(), Failure> {
    match &*p.replica.role.borrow() {
        Role::Single | Role::Leader(_) => Ok(()),
        Role::Offline => Err((
            ErrorCode::LEADER_NOT_AVAILABLE,
            format!("{}/{} has no leader", p.topic, p.index),
        )),
        Role::Follower { leader, .. } => Err((
            ErrorCode::NOT_LEADER_OR_FOLLOWER,
            format!(
                "this node follows {}/{}; node {leader} leads it",
                p.topic, p.index
            ),
        )),
        Role::Unassigned => Err((
            ErrorCode::NOT_LEADER_OR_FOLLOWER,
            format!("this node does not lead {}/{}", p.topic, p.index),
        )),
    }
}

/// Before an acks=all append in cluster mode: NOT_ENOUGH_REPLICAS when the committed ISR is
/// smaller than `min.insync.replicas`.
pub(crate) fn check_enough_replicas(p: &Partition) -> Result<(), Failure> {
    if let Role::Leader(l) = &*p.replica.role.borrow()
        && l.isr.len() < l.min_insync
    {
        tracing::debug!(topic = %p.topic, partition = p.index, isr = ?l.isr,
            min_insync = l.min_insync, "acks=all produce refused: not enough in-sync replicas");
        return Err((
            ErrorCode::NOT_ENOUGH_REPLICAS,
            format!(
                "{}/{} has {} in-sync replicas {:?}, min.insync.replicas is {}",
                p.topic,
                p.index,
                l.isr.len(),
                l.isr,
                l.min_insync
            ),
        ));
    }
    Ok(())
}

/// The end of what consumers may read: the high watermark in cluster mode, the durable end
/// when the broker runs alone.
pub(crate) fn visible_end(p: &Partition) -> u64 {
    let offsets = p.log.offsets();
    if p.replica.is_cluster() {
        offsets.high_watermark.get()
    } else {
        offsets.durable_end.get()
    }
}

/// Cluster mode: waits until the high watermark passes `seen`, this node stops leading,
/// or the partition goes. Holds the partition only while it looks.
pub(crate) async fn visible_past(p: std::rc::Weak<Partition>, seen: u64) {
    loop {
        let changed = {
            let Some(p) = p.upgrade() else {
                return;
            };
            if visible_end(&p) > seen || !matches!(*p.replica.role.borrow(), Role::Leader(_)) {
                return;
            }
            p.replica.changed()
        };
        changed.await;
    }
}

/// Leader: recomputes the high watermark, the least durable end over the committed ISR
/// (its own included); a follower not heard from in this epoch holds it. Wakes waiters when
/// it moved.
pub(crate) fn update_high_watermark(p: &Partition, me: NodeId) {
    let hw = {
        let role = p.replica.role.borrow();
        let Role::Leader(l) = &*role else {
            return;
        };
        let own = p.log.offsets().durable_end.get();
        l.isr
            .iter()
            .map(|m| {
                if *m == me {
                    own
                } else {
                    l.followers.get(m).map_or(0, |f| f.durable_end)
                }
            })
            .min()
            .unwrap_or(own)
    };
    let before = p.log.high_watermark();
    if p.log.set_high_watermark(Offset(hw)) != before {
        p.replica.notify();
    }
}

/// After an acks=1 append in cluster mode: once the batch is durable, the high watermark
/// may move (a leader alone in its ISR has no follower fetch to move it).
pub(crate) fn after_append(p: &Rc<Partition>, durable: sluice_storage::Durable, me: NodeId) {
    let weak = Rc::downgrade(p);
    compio::runtime::spawn(async move {
        if durable.await.is_ok()
            && let Some(p) = weak.upgrade()
        {
            update_high_watermark(&p, me);
        }
    })
    .detach();
}

/// Waits until the records below `end` are committed, at most until `deadline`: durable
/// here when the broker runs alone; in cluster mode also below the partition's high
/// watermark (held by the in-sync replicas), failing with NOT_LEADER_OR_FOLLOWER if this
/// node stops leading meanwhile. What acks=all producers and the group coordinator's writes
/// wait for.
pub(crate) async fn wait_committed(
    p: &Partition,
    end: Offset,
    deadline: Instant,
) -> Result<(), Failure> {
    let timed_out = || {
        (
            ErrorCode::REQUEST_TIMED_OUT,
            "not acknowledged within the request timeout".to_string(),
        )
    };
    let epoch = p.replica.leader_epoch();
    let remaining = deadline.saturating_duration_since(Instant::now());
    compio::time::timeout(remaining, p.log.durable_at(end))
        .await
        .map_err(|_| timed_out())?
        .map_err(|e| crate::shard::partition::log_error(&p.topic, p.index, &e))?;
    if !p.replica.is_cluster() {
        return Ok(());
    }
    let me = p.replica.me.get();
    loop {
        let changed = p.replica.changed();
        if epoch.is_none() || p.replica.leader_epoch() != epoch {
            return Err((
                ErrorCode::NOT_LEADER_OR_FOLLOWER,
                format!(
                    "this node no longer leads {}/{}: the records may not be committed",
                    p.topic, p.index
                ),
            ));
        }
        update_high_watermark(p, me);
        if p.log.high_watermark() >= end {
            // Kafka's rule: committed, but by fewer in-sync replicas than the topic asks
            // for (the ISR shrank after the append): say so, the producer retries (an
            // idempotent one is answered with the same offset).
            let short = match &*p.replica.role.borrow() {
                Role::Leader(l) if l.isr.len() < l.min_insync => Some((l.isr.len(), l.min_insync)),
                _ => None,
            };
            return match short {
                None => Ok(()),
                Some((isr, min)) => Err((
                    ErrorCode::NOT_ENOUGH_REPLICAS_AFTER_APPEND,
                    format!(
                        "written to {}/{}, but the ISR shrank to {isr} replicas after the \
                         append (min.insync.replicas is {min})",
                        p.topic, p.index
                    ),
                )),
            };
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        compio::time::timeout(remaining, changed)
            .await
            .map_err(|_| timed_out())?;
    }
}

/// The fetchers a view asks for: by (leader node, leader shard), its address and the
/// partitions (with their leader epochs).
type WantedFetchers = HashMap<(NodeId, usize), (SocketAddr, BTreeMap<(String, u32), u32>)>;

/// One fetcher: follows a set of partitions from one leader shard.
struct FetcherHandle {
    /// Where the leader shard's endpoint is.
    addr: SocketAddr,
    /// What it fetches; the task reads it before every fetch.
    parts: Rc<RefCell<BTreeMap<(String, u32), u32>>>,
    /// Dropped to stop the task.
    _stop: flume::Sender<()>,
}

/// A shard's replication machinery (cluster mode).
#[derive(Default)]
pub(crate) struct ShardReplication {
    /// The shard's replication endpoint, once bound.
    endpoint: RefCell<Option<Rc<PeerEndpoint>>>,
    /// The node's TLS material the endpoint was bound with; fetchers bind their own
    /// endpoints with it.
    tls: RefCell<Option<PeerTls>>,
    /// The port it is bound to (a new registration with another port rebinds).
    port: Cell<u16>,
    /// When binding last failed: retried at the next view after a second.
    bind_failed_at: Cell<Option<Instant>>,
    /// Accept loop and ISR check, cancelled at drain.
    tasks: RefCell<Vec<JoinHandle<()>>>,
    /// Fetchers by (leader node, leader shard).
    fetchers: RefCell<HashMap<(NodeId, usize), FetcherHandle>>,
    /// Set at drain: nothing starts again.
    stopped: Cell<bool>,
    /// Serializes [`apply_view`] runs (a view, and the retry after a failed bind).
    applying: crate::ticket::Admission,
    /// A retry of a failed bind is scheduled.
    retry_scheduled: Cell<bool>,
}

impl ShardReplication {
    /// The endpoint, if bound.
    pub(crate) fn endpoint(&self) -> Option<Rc<PeerEndpoint>> {
        self.endpoint.borrow().clone()
    }
}

/// Peer hosts of brokers looked up during one [`apply_view`]: each at most once.
type ResolvedHosts = HashMap<NodeId, Option<IpAddr>>;

/// The address of `broker`'s shard `shard` replication endpoint.
async fn replica_addr(
    state: &ClusterState,
    resolved: &mut ResolvedHosts,
    broker: NodeId,
    shard: usize,
) -> Option<SocketAddr> {
    let reg = &state.brokers.get(&broker)?.registration;
    let port = u16::try_from(usize::from(reg.peer_port) + 1 + shard).ok()?;
    let ip = match resolved.get(&broker) {
        Some(ip) => *ip,
        None => {
            let ip = resolve_peer_host(&reg.peer_host, broker).await;
            resolved.insert(broker, ip);
            ip
        }
    };
    Some(SocketAddr::new(ip?, port))
}

/// A broker's peer host as an address: an IP literal as it is, a host name looked up on a
/// blocking thread (getaddrinfo blocks; on the shard's thread it would stall every
/// partition of the shard for as long as the lookup takes). The first address wins, as
/// for the controller's voters.
async fn resolve_peer_host(host: &str, broker: NodeId) -> Option<IpAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(ip);
    }
    match (host, 0).to_socket_addrs_async().await {
        Ok(mut addrs) => {
            let ip = addrs.next().map(|a| a.ip());
            if ip.is_none() {
                tracing::warn!(broker, host, "a broker's peer host has no address");
            }
            ip
        }
        Err(e) => {
            tracing::warn!(broker, host, error = %e, "cannot resolve a broker's peer host");
            None
        }
    }
}

/// Binds the shard's replication endpoint if it is not yet (or its port changed), and lets
/// every registered broker connect.
async fn ensure_endpoint(shard: &Rc<Shard>, view: &ClusterView) {
    let repl = &shard.replication;
    let config = &shard.cluster.config;
    let Some(me) = config.cluster.as_ref().and_then(|c| c.me(config.node_id)) else {
        return;
    };
    let Some(port) = u16::try_from(usize::from(me.port) + 1 + shard.id).ok() else {
        tracing::error!(
            shard = shard.id,
            peer_port = me.port,
            "replication port out of range"
        );
        return;
    };
    let nodes: Vec<NodeId> = view.state.brokers.keys().copied().collect();
    if let Some(ep) = repl.endpoint()
        && repl.port.get() == port
    {
        ep.set_allowed_nodes(&nodes);
        return;
    }
    if repl
        .bind_failed_at
        .get()
        .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
    {
        return;
    }
    let Some(settings) = settings(shard) else {
        return;
    };
    let tls = match PeerTls::load(&settings.cert_dir, view.me) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(shard = shard.id, dir = %settings.cert_dir.display(), error = %e,
                "cannot load the peer certificates; this shard does not replicate");
            repl.bind_failed_at.set(Some(Instant::now()));
            return;
        }
    };
    if let Some(old) = repl.endpoint.borrow_mut().take() {
        old.close();
    }
    repl.tasks.borrow_mut().clear();
    // On the `--listen` IP, like the controller's endpoint.
    let addr = SocketAddr::new(config.listen.ip(), port);
    match PeerEndpoint::bind(addr, &tls, &nodes).await {
        Ok(ep) => {
            tracing::info!(shard = shard.id, %addr, "replication endpoint listening");
            let ep = Rc::new(ep);
            *repl.endpoint.borrow_mut() = Some(ep.clone());
            *repl.tls.borrow_mut() = Some(tls.clone());
            repl.port.set(port);
            repl.bind_failed_at.set(None);
            let accept = compio::runtime::spawn(leader::accept_loop(shard.clone(), ep));
            let isr =
                compio::runtime::spawn(leader::isr_loop(shard.clone(), settings.lag_time_max));
            repl.tasks.borrow_mut().extend([accept, isr]);
        }
        Err(e) => {
            tracing::error!(shard = shard.id, %addr, error = %e,
                "cannot bind the replication endpoint; retrying every second");
            repl.bind_failed_at.set(Some(Instant::now()));
            schedule_retry(shard);
        }
    }
}

/// After a failed bind: applies the latest view again in a second (which binds again), so a
/// shard whose port was briefly taken does not wait for the next view to replicate.
fn schedule_retry(shard: &Rc<Shard>) {
    let repl = &shard.replication;
    if repl.retry_scheduled.replace(true) {
        return;
    }
    let shard = shard.clone();
    let retry: std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> = Box::pin(async move {
        compio::time::sleep(Duration::from_secs(1)).await;
        shard.replication.retry_scheduled.set(false);
        let view = shard.view.borrow().clone();
        if let Some(view) = view {
            apply_view(&shard, &view).await;
        }
    });
    compio::runtime::spawn(retry).detach();
}

/// `min.insync.replicas` of a topic in the view (1 when unset or invalid).
fn min_insync(state: &ClusterState, topic: &str) -> usize {
    state
        .topics
        .get(topic)
        .and_then(|t| t.configs.get(MIN_INSYNC_REPLICAS_CONFIG))
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n >= 1)
        .unwrap_or(1)
}

/// Applies the partition roles `view` gives this shard's partitions (leader or follower,
/// epochs, ISR), and starts, changes or stops the fetchers.
pub(crate) async fn apply_view(shard: &Rc<Shard>, view: &Arc<ClusterView>) {
    let turn = shard.replication.applying.ticket();
    turn.turn().await;
    if shard.replication.stopped.get() {
        return;
    }
    ensure_endpoint(shard, view).await;
    let me = view.me;
    let partitions: Vec<Rc<Partition>> = shard.partitions.borrow().values().cloned().collect();
    let mut wanted: WantedFetchers = HashMap::new();
    let mut resolved = ResolvedHosts::new();
    for p in partitions {
        p.replica.me.set(me);
        let state = view.state.partition(&p.topic, p.index);
        let role = match state {
            None => Role::Unassigned,
            Some(ps) if !ps.replicas.contains(&me) => Role::Unassigned,
            Some(ps) if ps.leader == Some(me) => {
                let current = p.replica.role.borrow().clone();
                match current {
                    Role::Leader(mut l) if l.epoch == ps.leader_epoch => {
                        if l.partition_epoch != ps.partition_epoch {
                            l.alter_in_flight = false;
                        }
                        l.partition_epoch = ps.partition_epoch;
                        l.isr = ps.isr.clone();
                        l.replicas = ps.replicas.clone();
                        l.followers.retain(|n, _| ps.replicas.contains(n));
                        l.min_insync = min_insync(&view.state, &p.topic);
                        Role::Leader(l)
                    }
                    _ => match p.log.become_leader(ps.leader_epoch).await {
                        Ok(()) => {
                            let now = Instant::now();
                            let end = p.log.offsets().log_end.get();
                            tracing::info!(topic = %p.topic, partition = p.index,
                                epoch = ps.leader_epoch, isr = ?ps.isr, log_end = end,
                                "leading partition");
                            // Every follower starts as caught up now (Kafka does the same):
                            // the lag clock starts with the leadership.
                            let followers = ps
                                .replicas
                                .iter()
                                .filter(|r| **r != me)
                                .map(|r| {
                                    (
                                        *r,
                                        FollowerProgress {
                                            log_end: 0,
                                            durable_end: 0,
                                            last_fetch: now,
                                            leader_end_at_last_fetch: 0,
                                            caught_up_at: now,
                                        },
                                    )
                                })
                                .collect();
                            Role::Leader(LeaderState {
                                epoch: ps.leader_epoch,
                                partition_epoch: ps.partition_epoch,
                                replicas: ps.replicas.clone(),
                                isr: ps.isr.clone(),
                                min_insync: min_insync(&view.state, &p.topic),
                                epoch_start: end,
                                followers,
                                alter_in_flight: false,
                                alter_retry_at: None,
                            })
                        }
                        Err(e) => {
                            tracing::error!(topic = %p.topic, partition = p.index,
                                epoch = ps.leader_epoch, error = %e, "cannot become leader");
                            Role::Unassigned
                        }
                    },
                }
            }
            Some(ps) => match ps.leader {
                None => {
                    p.log.become_follower();
                    Role::Offline
                }
                Some(leader) => {
                    p.log.become_follower();
                    let leader_shards = view
                        .state
                        .brokers
                        .get(&leader)
                        .map_or(0, |b| usize::from(b.registration.shards));
                    if leader_shards > 0 {
                        let lshard = shard_for(&p.topic, p.index, leader_shards);
                        let addr = replica_addr(&view.state, &mut resolved, leader, lshard).await;
                        if let Some(addr) = addr {
                            wanted
                                .entry((leader, lshard))
                                .or_insert_with(|| (addr, BTreeMap::new()))
                                .1
                                .insert((p.topic.clone(), p.index), ps.leader_epoch);
                        }
                    }
                    Role::Follower {
                        leader,
                        leader_epoch: ps.leader_epoch,
                    }
                }
            },
        };
        if matches!(role, Role::Unassigned | Role::Offline) {
            p.log.become_follower();
        }
        *p.replica.role.borrow_mut() = role;
        p.replica.notify();
        update_high_watermark(&p, me);
    }
    reconcile_fetchers(shard, wanted);
}

fn reconcile_fetchers(shard: &Rc<Shard>, mut wanted: WantedFetchers) {
    let repl = &shard.replication;
    let mut fetchers = repl.fetchers.borrow_mut();
    fetchers.retain(|key, f| match wanted.get(key) {
        Some((addr, _)) => *addr == f.addr,
        None => false,
    });
    let Some(endpoint) = repl.endpoint() else {
        return;
    };
    let Some(tls) = repl.tls.borrow().clone() else {
        return;
    };
    let ip = match endpoint.local_addr() {
        Ok(a) => a.ip(),
        Err(e) => {
            tracing::error!(shard = shard.id, error = %e, "replication endpoint has no address");
            return;
        }
    };
    for (key, (addr, parts)) in wanted.drain() {
        if let Some(f) = fetchers.get(&key) {
            *f.parts.borrow_mut() = parts;
            continue;
        }
        let (stop, stopped) = flume::bounded(1);
        let parts = Rc::new(RefCell::new(parts));
        tracing::info!(shard = shard.id, leader = key.0, leader_shard = key.1, %addr,
            partitions = parts.borrow().len(), "starting replica fetcher");
        compio::runtime::spawn(follower::run(
            shard.clone(),
            follower::Origin {
                ip,
                tls: tls.clone(),
            },
            follower::Target {
                leader: key.0,
                addr,
            },
            parts.clone(),
            stopped,
        ))
        .detach();
        fetchers.insert(
            key,
            FetcherHandle {
                addr,
                parts,
                _stop: stop,
            },
        );
    }
}

/// At drain: stops the fetchers, the accept loop and the ISR check, and closes the
/// endpoint (peers see a shutdown).
pub(crate) fn drain(shard: &Shard) {
    let repl = &shard.replication;
    repl.stopped.set(true);
    repl.fetchers.borrow_mut().clear();
    repl.tasks.borrow_mut().clear();
    if let Some(ep) = repl.endpoint.borrow_mut().take() {
        ep.close();
    }
}

/// Leader: asks the controller (on shard 0) to change the ISR of `p` to `new_isr`. One
/// request per partition at a time; the change counts once the view shows it.
fn alter_isr(shard: &Rc<Shard>, p: &Rc<Partition>, new_isr: Vec<NodeId>) {
    let (epoch, partition_epoch) = {
        let mut role = p.replica.role.borrow_mut();
        let Role::Leader(l) = &mut *role else {
            return;
        };
        if l.alter_in_flight || l.alter_retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        l.alter_in_flight = true;
        (l.epoch, l.partition_epoch)
    };
    tracing::info!(topic = %p.topic, partition = p.index, epoch, partition_epoch,
        new_isr = ?new_isr, "asking the controller to change the ISR");
    let shard = shard.clone();
    let weak = Rc::downgrade(p);
    let (topic, partition) = (p.topic.clone(), p.index);
    compio::runtime::spawn(async move {
        let (reply, rx) = reply_channel();
        shard
            .send(
                0,
                ShardMsg::AlterPartition {
                    topic: topic.clone(),
                    partition,
                    leader_epoch: epoch,
                    partition_epoch,
                    new_isr,
                    reply,
                },
            )
            .await;
        let result = rx
            .recv_async()
            .await
            .unwrap_or_else(|_| Err("shard 0 is shutting down".into()));
        let Some(p) = weak.upgrade() else {
            return;
        };
        let mut role = p.replica.role.borrow_mut();
        let Role::Leader(l) = &mut *role else {
            return;
        };
        if l.epoch != epoch {
            return;
        }
        if let Err(e) = result {
            tracing::warn!(%topic, partition, epoch, partition_epoch, error = %e,
                "ISR change refused or failed; retried later");
            l.alter_in_flight = false;
            l.alter_retry_at = Some(Instant::now() + ALTER_PARTITION_RETRY);
        }
        // Success: `alter_in_flight` stays until the view shows the new partition epoch.
    })
    .detach();
}

/// On shard 0: forwards an ISR change to the controller.
pub(crate) async fn alter_partition(
    shard: &Shard,
    topic: &str,
    partition: u32,
    leader_epoch: u32,
    partition_epoch: u32,
    new_isr: Vec<NodeId>,
) -> Result<(), String> {
    let driver = shard.controller.borrow().clone();
    let Some(driver) = driver else {
        return Err("no controller on this node".into());
    };
    driver
        .alter_partition(topic, partition, leader_epoch, partition_epoch, new_isr)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_replication::controller::TopicState;

    #[test]
    fn min_insync_defaults_to_one_and_ignores_bad_values() {
        let mut state = ClusterState::default();
        let topic = |v: Option<&str>| TopicState {
            id: 1,
            configs: v
                .map(|v| BTreeMap::from([(MIN_INSYNC_REPLICAS_CONFIG.to_string(), v.to_string())]))
                .unwrap_or_default(),
            partitions: Vec::new(),
        };
        state.topics.insert("a".into(), topic(None));
        state.topics.insert("b".into(), topic(Some("3")));
        state.topics.insert("c".into(), topic(Some("0")));
        state.topics.insert("d".into(), topic(Some("x")));
        assert_eq!(min_insync(&state, "a"), 1);
        assert_eq!(min_insync(&state, "b"), 3);
        assert_eq!(min_insync(&state, "c"), 1);
        assert_eq!(min_insync(&state, "d"), 1);
        assert_eq!(min_insync(&state, "missing"), 1);
    }

    #[test]
    fn peer_hosts_resolve_off_the_shard_thread_or_are_taken_as_addresses() {
        compio::runtime::Runtime::new()
            .expect("runtime")
            .block_on(async {
                let v4 = resolve_peer_host("127.0.0.1", 1).await;
                assert_eq!(v4, Some(IpAddr::from([127, 0, 0, 1])));
                let v6 = resolve_peer_host("::1", 1).await;
                assert_eq!(v6, Some(IpAddr::from(std::net::Ipv6Addr::LOCALHOST)));
                // A name (every resolver knows localhost), looked up on a blocking thread.
                let named = resolve_peer_host("localhost", 1).await;
                assert!(named.is_some_and(|ip| ip.is_loopback()), "{named:?}");
                // `.invalid` never resolves (RFC 6761): no address, and no panic.
                assert_eq!(resolve_peer_host("no-such-peer.invalid", 1).await, None);
            });
    }

    #[test]
    fn notify_wakes_every_waiter_and_later_waiters_wait_again() {
        compio::runtime::Runtime::new()
            .expect("runtime")
            .block_on(async {
                let state = ReplicaState::new(true);
                assert!(state.is_cluster());
                assert!(!ReplicaState::new(false).is_cluster());
                let first = state.changed();
                let second = state.changed();
                state.notify();
                // Both resolve at once after the notification.
                compio::time::timeout(Duration::from_secs(1), async {
                    first.await;
                    second.await;
                })
                .await
                .expect("woken");
                // A waiter taken after it waits for the next one.
                let third = state.changed();
                assert!(
                    compio::time::timeout(Duration::from_millis(50), third)
                        .await
                        .is_err()
                );
            });
    }
}
