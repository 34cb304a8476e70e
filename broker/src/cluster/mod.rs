//! Cluster mode (`sluice serve --cluster ...`): the controller quorum member on shard 0, the
//! broker's heartbeats, and the cluster view every shard installs. Without `--cluster` the
//! broker runs alone and none of this exists (`Shard::view` stays `None`).
//!
//! Shard 0 runs, on its own compio runtime:
//!
//! - the [`ControllerDriver`] over the controller's QUIC endpoint (`peer_port`), with its
//!   raft storage in `DATA_DIR/controller/`;
//! - the heartbeat task: every [`BROKER_HEARTBEAT_INTERVAL`] this node's
//!   [`BrokerRegistration`] (a fresh incarnation per start) goes to the active controller;
//!   it asks to be unfenced once it has installed a view at least as new as the
//!   controller's applied index of the previous answer (its logs are then open);
//! - the view task: after every applied change it builds a [`ClusterView`] from the
//!   controller's state, has the owning shards open the logs of partitions newly assigned
//!   here, sends every shard the derived topic metadata (`ShardMsg::Snapshot`) and the view
//!   (`ShardMsg::ClusterView`) and waits for all of them, then has the logs of partitions
//!   no longer assigned here closed and deleted.
//!
//! Admin changes (CreateTopics, DeleteTopics) go to the controller through the driver and are
//! answered once this node installed a view at least as new as the change
//! ([`wait_installed`]).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::future::poll_fn;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use compio::runtime::JoinHandle;
use sluice_replication::NodeId;
use sluice_replication::controller::driver::{ControllerDriver, DriverError};
use sluice_replication::controller::state::BrokerRegistration;
use sluice_replication::controller::{
    BrokerHeartbeat, ClusterState, Command, Controller, ControllerConfig,
};
use sluice_replication::tls::PeerTls;
use sluice_replication::transport::PeerEndpoint;

use crate::metadata::{Metadata, TopicMeta, topic_dir};
use crate::placement::{ShardId, shard_for};
use crate::shard::Shard;
use crate::shard::msg::{ShardMsg, reply_channel};

/// What a shard knows of the cluster: the controller's applied state as this node has it.
/// Shard 0 builds one after every applied change and sends it to every shard
/// (`ShardMsg::ClusterView`); a shard installs it, then applies the partition roles it
/// implies (`crate::replica::apply_view`) and the group coordinators it implies
/// (`crate::group::on_view`).
#[derive(Debug, Clone)]
pub(crate) struct ClusterView {
    /// This node.
    pub(crate) me: NodeId,
    /// The raft index this view was built at.
    pub(crate) applied_index: u64,
    /// Brokers, topics, assignments, leaders, ISRs and epochs.
    pub(crate) state: ClusterState,
}

impl ClusterView {
    /// The shard of `node` that owns `partition` of `topic` (by the shard count the node
    /// registered); `None` if the node is not registered.
    pub(crate) fn owner_shard(&self, node: NodeId, topic: &str, partition: u32) -> Option<ShardId> {
        let b = self.state.brokers.get(&node)?;
        Some(shard_for(
            topic,
            partition,
            usize::from(b.registration.shards).max(1),
        ))
    }

    /// Registered brokers that are not fenced.
    pub(crate) fn live_brokers(&self) -> impl Iterator<Item = &BrokerRegistration> {
        self.state
            .brokers
            .values()
            .filter(|b| !b.fenced)
            .map(|b| &b.registration)
    }
}

/// Interval between two heartbeats of this broker (the controller fences a broker silent
/// for `BROKER_SESSION_TIMEOUT_MS`, 9 s).
pub(crate) const BROKER_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);
/// A failing heartbeat is logged at most once per this interval.
const HEARTBEAT_FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Longest an admin change waits, after the controller applied it, for this node to install
/// the view that has it.
pub(crate) const VIEW_INSTALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a controlled shutdown waits for the controller to move this node's leaderships
/// (then the broker stops anyway, and the rest moves when its session expires).
pub(crate) const CONTROLLED_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a controlled shutdown keeps asking while no controller is elected (the quorum
/// may be gone: the other nodes are stopping too).
const CONTROLLED_SHUTDOWN_NO_CONTROLLER: Duration = Duration::from_secs(2);
/// Pause between two controlled-shutdown requests the controller could not take yet.
const CONTROLLED_SHUTDOWN_RETRY: Duration = Duration::from_millis(200);
/// Most tasks waiting in [`wait_installed`] at once (admin requests; more wait for a slot).
const INSTALL_WAITERS_MAX: usize = 64;

thread_local! {
    /// Shard 0: the heartbeat and view tasks, cancelled when draining.
    static TASKS: RefCell<Vec<JoinHandle<()>>> = const { RefCell::new(Vec::new()) };
    /// Shard 0: the applied index of the last view every shard installed.
    static INSTALLED: Cell<u64> = const { Cell::new(0) };
    /// Shard 0: whether a view was installed yet.
    static HAS_VIEW: Cell<bool> = const { Cell::new(false) };
    /// Shard 0: tasks waiting for a newer installed view (at most [`INSTALL_WAITERS_MAX`]).
    static INSTALL_WAITERS: RefCell<Vec<Waker>> = const { RefCell::new(Vec::new()) };
    /// Shard 0: this start's incarnation (registered with the controller).
    static INCARNATION: Cell<u64> = const { Cell::new(0) };
    /// Shard 0: a controlled shutdown began; the heartbeat loop stops (a heartbeat asking to
    /// be unfenced would undo it).
    static SHUTTING_DOWN: Cell<bool> = const { Cell::new(false) };
}

/// The applied index of the last view every shard of this node installed (shard 0 only).
pub(crate) fn installed_index() -> Option<u64> {
    HAS_VIEW.with(Cell::get).then(|| INSTALLED.with(Cell::get))
}

fn set_installed(index: u64) {
    INSTALLED.with(|i| i.set(index));
    HAS_VIEW.with(|h| h.set(true));
    let waiters: Vec<Waker> = INSTALL_WAITERS.with(|w| w.borrow_mut().drain(..).collect());
    for w in waiters {
        w.wake();
    }
}

/// Waits (on shard 0) until every shard installed a view at `index` or newer, at most until
/// `deadline`. Returns whether it did.
pub(crate) async fn wait_installed(index: u64, deadline: Instant) -> bool {
    let wait = poll_fn(|cx| {
        if installed_index().is_some_and(|i| i >= index) {
            return Poll::Ready(());
        }
        INSTALL_WAITERS.with(|w| {
            let mut w = w.borrow_mut();
            if !w.iter().any(|x| x.will_wake(cx.waker())) && w.len() < INSTALL_WAITERS_MAX {
                w.push(cx.waker().clone());
            }
        });
        Poll::Pending
    });
    // A waiter that found no slot (more than the limit) resolves at its deadline.
    let remaining = deadline.saturating_duration_since(Instant::now());
    compio::time::timeout(remaining, wait).await.is_ok()
}

/// Resolves every voter's peer address (DNS names too; the first address wins).
fn resolve_voters(voters: &[crate::config::PeerAddr]) -> Result<Vec<(NodeId, SocketAddr)>, String> {
    voters
        .iter()
        .map(|v| {
            let addr = (v.host.as_str(), v.port)
                .to_socket_addrs()
                .map_err(|e| {
                    format!(
                        "cannot resolve node {}'s address {}:{}: {e}",
                        v.id, v.host, v.port
                    )
                })?
                .next()
                .ok_or_else(|| format!("node {}'s host {} has no address", v.id, v.host))?;
            Ok((v.id, addr))
        })
        .collect()
}

/// A number that differs between two starts of this broker (Kafka's incarnation id).
fn fresh_incarnation() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}

/// Shard 0 in cluster mode: opens the controller in `DATA_DIR/controller/`, binds its QUIC
/// endpoint on the peer port, starts the driver and the heartbeat and view tasks. An error
/// is for the start-up line (the broker exits 2).
pub(crate) async fn start(shard: &Rc<Shard>) -> Result<(), String> {
    let config = &shard.cluster.config;
    let Some(cluster) = config.cluster.as_ref() else {
        return Ok(());
    };
    let me = config.node_id;
    let Some(my_addr) = cluster.me(me) else {
        return Err(format!("node {me} is not in the cluster list"));
    };
    let tls = PeerTls::load(&cluster.cert_dir, me).map_err(|e| {
        format!(
            "cannot load the certificates of node {me} from {}: {e} (make them with `sluice \
             cert dev --dir {} --nodes ...`)",
            cluster.cert_dir.display(),
            cluster.cert_dir.display()
        )
    })?;
    let voters: Vec<NodeId> = cluster.voters.iter().map(|v| v.id).collect();
    let dir = config.data_dir.join("controller");
    let controller = Controller::open(&dir, me, &voters, ControllerConfig::default())
        .map_err(|e| format!("cannot open the controller in {}: {e}", dir.display()))?;
    let addrs = resolve_voters(&cluster.voters)?;
    let bind = SocketAddr::new(config.listen.ip(), my_addr.port);
    let peers: Vec<NodeId> = voters.iter().copied().filter(|n| *n != me).collect();
    let endpoint = PeerEndpoint::bind(bind, &tls, &peers)
        .await
        .map_err(|e| format!("cannot bind the controller's peer endpoint {bind}: {e}"))?;
    let driver = ControllerDriver::start(controller, endpoint, &addrs)
        .map_err(|e| format!("cannot start the controller: {e}"))?;
    let driver = Rc::new(driver);
    *shard.controller.borrow_mut() = Some(driver.clone());
    let registration = BrokerRegistration {
        id: me,
        incarnation: fresh_incarnation(),
        client_host: config.advertised_host.clone(),
        client_port: shard.cluster.shared_port,
        shards: u16::try_from(config.shards).unwrap_or(u16::MAX),
        shard_ports: shard
            .cluster
            .shard_addresses
            .iter()
            .map(|a| a.port)
            .collect(),
        peer_host: my_addr.host.clone(),
        peer_port: my_addr.port,
    };
    tracing::info!(
        node = me,
        peer = %bind,
        voters = ?voters,
        incarnation = registration.incarnation,
        controller_dir = %dir.display(),
        "cluster mode: controller started"
    );
    INCARNATION.with(|i| i.set(registration.incarnation));
    let heartbeat = compio::runtime::spawn(heartbeat_loop(driver.clone(), registration));
    let view = compio::runtime::spawn(view_loop(shard.clone(), driver));
    TASKS.with(|t| t.borrow_mut().extend([heartbeat, view]));
    Ok(())
}

/// Shard 0, before the drain (SIGTERM/SIGINT; Kafka's controlled shutdown): stops the
/// heartbeats and has the active controller fence this node at once, so its leaderships move
/// to in-sync replicas while it still runs, instead of after its 9 s session; waits until this
/// node installed that view, at most [`CONTROLLED_SHUTDOWN_TIMEOUT`]. A partition whose only
/// in-sync replica is this node goes offline as on a crash.
pub(crate) async fn controlled_shutdown(shard: &Rc<Shard>) {
    let Some(driver) = shard.controller.borrow().clone() else {
        return;
    };
    SHUTTING_DOWN.with(|s| s.set(true));
    let me = shard.cluster.config.node_id;
    let incarnation = INCARNATION.with(Cell::get);
    let leading = |state: &ClusterState| {
        state
            .topics
            .values()
            .flat_map(|t| &t.partitions)
            .filter(|p| p.leader == Some(me))
            .count()
    };
    let (led, others_live) = {
        let state = driver.state();
        let others = state.live_brokers().iter().filter(|b| **b != me).count();
        (leading(&state), others)
    };
    if others_live == 0 {
        tracing::info!(
            node = me,
            led,
            "controlled shutdown skipped: no other live broker to take over"
        );
        return;
    }
    let started = Instant::now();
    let deadline = started + CONTROLLED_SHUTDOWN_TIMEOUT;
    let no_controller_deadline = started + CONTROLLED_SHUTDOWN_NO_CONTROLLER;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let outcome =
            compio::time::timeout(remaining, driver.controlled_shutdown(incarnation)).await;
        match outcome {
            Ok(Ok(index)) => {
                let installed = wait_installed(index, deadline).await;
                let still = leading(&driver.state());
                if installed {
                    tracing::info!(
                        node = me,
                        led,
                        still_leading = still,
                        took_ms = started.elapsed().as_millis() as u64,
                        "controlled shutdown: fenced; leaderships moved to in-sync replicas"
                    );
                } else {
                    tracing::warn!(
                        node = me,
                        led,
                        still_leading = still,
                        "controlled shutdown: fenced, but this node did not install the view in time"
                    );
                }
                return;
            }
            Ok(Err(e))
                if Instant::now() + CONTROLLED_SHUTDOWN_RETRY < deadline
                    && (driver.leader().is_some() || Instant::now() < no_controller_deadline) =>
            {
                tracing::debug!(node = me, error = %e, "controlled shutdown not taken yet; retrying");
                compio::time::sleep(CONTROLLED_SHUTDOWN_RETRY).await;
            }
            Ok(Err(e)) => {
                tracing::warn!(node = me, led, error = %e,
                    "controlled shutdown failed; the partitions move when the session expires");
                return;
            }
            Err(_) => {
                tracing::warn!(
                    node = me,
                    led,
                    timeout_ms = CONTROLLED_SHUTDOWN_TIMEOUT.as_millis() as u64,
                    "controlled shutdown timed out; the partitions move when the session expires"
                );
                return;
            }
        }
    }
}

/// Shard 0, draining: stops the heartbeats and the view task, then shuts the controller
/// down (its peer port is released).
pub(crate) async fn stop(shard: &Rc<Shard>) {
    let tasks: Vec<JoinHandle<()>> = TASKS.with(|t| t.borrow_mut().drain(..).collect());
    drop(tasks);
    let driver = shard.controller.borrow_mut().take();
    if let Some(driver) = driver
        && let Err(e) = driver.shutdown().await
    {
        tracing::warn!(error = %e, "controller shutdown incomplete");
    }
}

async fn heartbeat_loop(driver: Rc<ControllerDriver>, registration: BrokerRegistration) {
    // The controller's applied index in its last answer: once this node installed a view at
    // least as new, its logs are open and it asks to be unfenced.
    let mut controller_index: Option<u64> = None;
    let mut state: Option<(bool, bool)> = None;
    let mut last_failure_log: Option<Instant> = None;
    let mut leader = None;
    loop {
        if SHUTTING_DOWN.with(Cell::get) {
            return;
        }
        if driver.leader() != leader {
            leader = driver.leader();
            tracing::info!(
                node = registration.id,
                leader = ?leader,
                term = driver.term(),
                "active controller changed"
            );
        }
        let want_unfence =
            controller_index.is_some_and(|i| installed_index().is_some_and(|mine| mine >= i));
        let heartbeat = BrokerHeartbeat {
            registration: registration.clone(),
            want_unfence,
        };
        match driver.broker_heartbeat(&heartbeat).await {
            Ok(reply) => {
                controller_index = Some(reply.applied_index);
                let now = (reply.registered, reply.fenced);
                if state != Some(now) {
                    tracing::info!(
                        node = registration.id,
                        registered = reply.registered,
                        fenced = reply.fenced,
                        "broker heartbeat answered"
                    );
                    state = Some(now);
                }
                last_failure_log = None;
            }
            Err(DriverError::Stopped) => return,
            Err(e) => {
                if last_failure_log.is_none_or(|t| t.elapsed() >= HEARTBEAT_FAILURE_LOG_INTERVAL) {
                    tracing::warn!(node = registration.id, error = %e,
                        "broker heartbeat failed (logged once per interval)");
                    last_failure_log = Some(Instant::now());
                }
            }
        }
        compio::time::sleep(BROKER_HEARTBEAT_INTERVAL).await;
    }
}

async fn view_loop(shard: Rc<Shard>, driver: Rc<ControllerDriver>) {
    let mut opened: BTreeSet<(String, u32)> = BTreeSet::new();
    // The id of each topic with logs open here, as of the last view.
    let mut ids: BTreeMap<String, u64> = BTreeMap::new();
    let mut installed: Option<u64> = None;
    loop {
        let index = driver.applied_index();
        if installed == Some(index) {
            let next = driver.applied_changed().await;
            if next == index {
                // `applied_changed` returns unchanged only once the driver stopped.
                if !shard.draining.get() {
                    tracing::error!(
                        "the controller stopped (storage failure); the broker shuts down"
                    );
                    // SAFETY: sends SIGTERM to this process, whose main thread takes it.
                    unsafe {
                        libc::kill(libc::getpid(), libc::SIGTERM);
                    }
                }
                return;
            }
            continue;
        }
        let view = Arc::new(ClusterView {
            me: driver.node_id(),
            applied_index: index,
            // Cloned: the borrow must not be held across an await.
            state: driver.state().clone(),
        });
        match installed {
            None => remove_unassigned_dirs(&shard.cluster.config.data_dir, &view),
            Some(previous) => {
                // A topic deleted since the previous view that exists again under the same
                // name: its old logs go first (a plain delete is handled after the
                // broadcast, like any partition no longer assigned here).
                let mut recreated: BTreeSet<String> = driver
                    .applied_after(previous)
                    .into_iter()
                    .filter(|a| a.index <= index && a.result.is_ok())
                    .filter_map(|a| match a.command {
                        Command::DeleteTopic { name } if view.state.topics.contains_key(&name) => {
                            Some(name)
                        }
                        _ => None,
                    })
                    .collect();
                // The same by topic id, also when the history does not reach back (a
                // snapshot was installed, or more entries applied than it keeps).
                for (topic, id) in &ids {
                    if view.state.topics.get(topic).is_some_and(|t| t.id != *id) {
                        recreated.insert(topic.clone());
                    }
                }
                let stale: Vec<(String, u32)> = opened
                    .iter()
                    .filter(|(t, _)| recreated.contains(t))
                    .cloned()
                    .collect();
                if !stale.is_empty() {
                    tracing::info!(topics = ?recreated, "topic deleted and created again; removing the old logs first");
                    remove_logs(&shard, &stale).await;
                    for key in &stale {
                        opened.remove(key);
                    }
                    for topic in &recreated {
                        // Empty unless the new topic has replicas here (opened below).
                        remove_topic_dir_if_empty(&topic_dir(
                            &shard.cluster.config.data_dir,
                            topic,
                        ));
                    }
                }
            }
        }
        install(&shard, &view, &mut opened).await;
        ids.clear();
        for (topic, _) in &opened {
            if let Some(t) = view.state.topics.get(topic) {
                ids.insert(topic.clone(), t.id);
            }
        }
        installed = Some(index);
    }
}

/// Partitions whose replicas include this node.
fn assigned_here(view: &ClusterView) -> BTreeSet<(String, u32)> {
    let mut out = BTreeSet::new();
    for (name, topic) in &view.state.topics {
        for (p, state) in topic.partitions.iter().enumerate() {
            if state.replicas.contains(&view.me) {
                out.insert((name.clone(), p as u32));
            }
        }
    }
    out
}

/// The topic metadata every shard reads (partition counts, configs), from the cluster state.
pub(crate) fn metadata_of(state: &ClusterState) -> Metadata {
    Metadata {
        version: crate::metadata::METADATA_VERSION,
        topics: state
            .topics
            .iter()
            .map(|(name, t)| {
                (
                    name.clone(),
                    TopicMeta {
                        partitions: t.partitions.len() as u32,
                        configs: t.configs.clone(),
                    },
                )
            })
            .collect(),
    }
}

/// File in a topic's directory (cluster mode) that holds the topic's id, in decimal: written
/// before the topic's first log opens on this node.
const TOPIC_ID_FILE: &str = "topic-id";

fn read_topic_id(dir: &Path) -> Option<u64> {
    std::fs::read_to_string(dir.join(TOPIC_ID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Records `id` in the topic directory `dir` (created if needed): a temporary file, fsync,
/// rename, directory fsync.
fn write_topic_id(dir: &Path, id: u64) -> std::io::Result<()> {
    use std::io::Write as _;
    if read_topic_id(dir) == Some(id) {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join("topic-id.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(format!("{id}\n").as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(TOPIC_ID_FILE))?;
    std::fs::File::open(dir)?.sync_all()
}

/// Removes a topic directory that holds no partition directory any more (its id file goes
/// with it); leaves one that does.
fn remove_topic_dir_if_empty(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let partitions = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .count();
    if partitions == 0 {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// At the first view after start-up (no log is open yet): deletes partition directories not
/// assigned here (topics deleted, or partitions moved away, while this node was down), and
/// whole topic directories whose recorded id is not the topic's (deleted and created again
/// under the same name meanwhile).
fn remove_unassigned_dirs(data_dir: &Path, view: &ClusterView) {
    let assigned = assigned_here(view);
    let Ok(topics) = std::fs::read_dir(data_dir.join("topics")) else {
        return;
    };
    for topic in topics.flatten() {
        let name = topic.file_name().to_string_lossy().into_owned();
        if let (Some(state), Some(recorded)) =
            (view.state.topics.get(&name), read_topic_id(&topic.path()))
            && state.id != recorded
        {
            tracing::warn!(dir = %topic.path().display(), recorded, id = state.id,
                "removing the logs of an older topic of the same name (deleted and created again)");
            if let Err(e) = std::fs::remove_dir_all(topic.path()) {
                tracing::error!(dir = %topic.path().display(), error = %e, "cannot remove directory");
            }
            continue;
        }
        if let Ok(parts) = std::fs::read_dir(topic.path()) {
            for part in parts.flatten() {
                // Only partition directories (the topic id file stays with its directory).
                let Ok(index) = part.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                if assigned.contains(&(name.clone(), index)) {
                    continue;
                }
                tracing::warn!(dir = %part.path().display(),
                    "removing a partition directory not assigned to this node");
                if let Err(e) = std::fs::remove_dir_all(part.path()) {
                    tracing::error!(dir = %part.path().display(), error = %e, "cannot remove directory");
                }
            }
        }
        if !view.state.topics.contains_key(&name) {
            remove_topic_dir_if_empty(&topic.path());
        }
    }
}

/// Opens newly assigned logs, installs the view on every shard, removes unassigned logs.
async fn install(shard: &Rc<Shard>, view: &Arc<ClusterView>, opened: &mut BTreeSet<(String, u32)>) {
    let assigned = assigned_here(view);
    let shards = shard.cluster.config.shards;
    // Open the logs of partitions newly assigned here, on their owning shards.
    let mut to_open: BTreeMap<(ShardId, String), Vec<u32>> = BTreeMap::new();
    for (topic, p) in assigned.difference(opened) {
        to_open
            .entry((shard_for(topic, *p, shards), topic.clone()))
            .or_default()
            .push(*p);
    }
    let mut pending = Vec::new();
    for ((owner, topic), partitions) in to_open {
        let Some(state) = view.state.topics.get(&topic) else {
            continue;
        };
        let configs = state.configs.clone();
        let dir = topic_dir(&shard.cluster.config.data_dir, &topic);
        if let Err(e) = write_topic_id(&dir, state.id) {
            tracing::error!(%topic, dir = %dir.display(), error = %e,
                "cannot record the topic id; its logs open at the next view");
            continue;
        }
        let (reply, rx) = reply_channel();
        shard
            .send(
                owner,
                ShardMsg::OpenPartitions {
                    topic: topic.clone(),
                    partitions: partitions.clone(),
                    configs,
                    reply,
                },
            )
            .await;
        pending.push((topic, partitions, rx));
    }
    for (topic, partitions, rx) in pending {
        match rx.recv_async().await {
            Ok(Ok(())) => opened.extend(partitions.into_iter().map(|p| (topic.clone(), p))),
            Ok(Err(e)) => {
                tracing::error!(%topic, ?partitions, error = %e, "cannot open replica logs (retried at the next view)")
            }
            Err(_) => tracing::debug!(%topic, "a shard stopped while opening logs"),
        }
    }
    // Every shard: the topic metadata, then the view.
    let metadata = Arc::new(metadata_of(&view.state));
    let mut replies = Vec::new();
    for target in 0..shards {
        let (reply, rx) = reply_channel();
        shard
            .send(
                target,
                ShardMsg::Snapshot {
                    metadata: metadata.clone(),
                    reply,
                },
            )
            .await;
        replies.push(rx);
        let (reply, rx) = reply_channel();
        shard
            .send(
                target,
                ShardMsg::ClusterView {
                    view: view.clone(),
                    reply,
                },
            )
            .await;
        replies.push(rx);
    }
    for rx in replies {
        let _ = rx.recv_async().await;
    }
    set_installed(view.applied_index);
    tracing::debug!(
        applied_index = view.applied_index,
        brokers = view.state.brokers.len(),
        topics = view.state.topics.len(),
        replicas_here = assigned.len(),
        "cluster view installed"
    );
    // Close and delete the logs no longer assigned here.
    let gone: Vec<(String, u32)> = opened.difference(&assigned).cloned().collect();
    if gone.is_empty() {
        return;
    }
    remove_logs(shard, &gone).await;
    let data_dir = &shard.cluster.config.data_dir;
    for (topic, p) in &gone {
        opened.remove(&(topic.clone(), *p));
        // Gone with its last partition here (a leftover is removed at the next start).
        remove_topic_dir_if_empty(&topic_dir(data_dir, topic));
    }
    tracing::info!(
        partitions = gone.len(),
        "removed replica logs no longer assigned here"
    );
}

/// Has the owning shards close and delete these partitions' logs, and waits for them.
async fn remove_logs(shard: &Rc<Shard>, partitions: &[(String, u32)]) {
    let shards = shard.cluster.config.shards;
    let mut to_remove: BTreeMap<(ShardId, String), Vec<u32>> = BTreeMap::new();
    for (topic, p) in partitions {
        to_remove
            .entry((shard_for(topic, *p, shards), topic.clone()))
            .or_default()
            .push(*p);
    }
    let mut pending = Vec::new();
    for ((owner, topic), partitions) in to_remove {
        let (reply, rx) = reply_channel();
        shard
            .send(
                owner,
                ShardMsg::RemovePartitions {
                    topic,
                    partitions,
                    reply,
                },
            )
            .await;
        pending.push(rx);
    }
    for rx in pending {
        let _ = rx.recv_async().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_replication::controller::state::{BrokerInfo, PartitionState, TopicState};

    fn registration(id: NodeId, shards: u16) -> BrokerRegistration {
        BrokerRegistration {
            id,
            incarnation: 1,
            client_host: "h".into(),
            client_port: 9092,
            shards,
            shard_ports: (0..shards).map(|s| 9093 + s).collect(),
            peer_host: "h".into(),
            peer_port: 9192,
        }
    }

    #[test]
    fn a_view_places_partitions_and_lists_live_brokers() {
        let mut state = ClusterState::default();
        for (id, shards, fenced) in [(0, 2, false), (1, 4, false), (2, 1, true)] {
            state.brokers.insert(
                id,
                BrokerInfo {
                    registration: registration(id, shards),
                    fenced,
                    decommissioning: false,
                },
            );
        }
        let partition = |replicas: Vec<NodeId>| PartitionState {
            leader: replicas.first().copied(),
            isr: replicas.clone(),
            replicas,
            leader_epoch: 0,
            partition_epoch: 0,
            adding: Vec::new(),
            removing: Vec::new(),
        };
        state.topics.insert(
            "t".into(),
            TopicState {
                id: 1,
                configs: BTreeMap::from([("retention.ms".into(), "1000".into())]),
                partitions: vec![partition(vec![0, 1]), partition(vec![1, 2])],
            },
        );
        let view = ClusterView {
            me: 0,
            applied_index: 9,
            state,
        };
        assert_eq!(assigned_here(&view), BTreeSet::from([("t".to_string(), 0)]));
        assert_eq!(view.owner_shard(1, "t", 1), Some(shard_for("t", 1, 4)));
        assert_eq!(view.owner_shard(5, "t", 1), None);
        let live: Vec<NodeId> = view.live_brokers().map(|b| b.id).collect();
        assert_eq!(live, [0, 1]);
        let meta = metadata_of(&view.state);
        assert_eq!(meta.topics["t"].partitions, 2);
        assert_eq!(meta.topics["t"].configs["retention.ms"], "1000");
    }
}
