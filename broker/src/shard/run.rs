//! A shard's life: its thread (pinned to a core), its runtime, opening its partitions, the
//! accept loops, the inbox loop, retention, and the two shutdown phases (drain, stop).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_storage::{PartitionLog, system_clock_ms};

use crate::budget::Budget;
use crate::limits::{SHARD_CONNECTIONS_MAX, SHARD_TAIL_CACHE_BYTES, SHUTDOWN_DRAIN_MS_MAX};
use crate::metadata::{Metadata, partition_dir};
use crate::net::conn;
use crate::placement::ShardId;
use crate::shard::msg::ShardMsg;
use crate::shard::partition::{self, Partition};
use crate::shard::producer_state::ProducerStates;
use crate::shard::{Cluster, Shard, controller};
use crate::ticket::Admission;
use crate::topic_config;

/// Everything a shard thread starts with.
pub(crate) struct ShardStart {
    /// Shard index.
    pub(crate) id: ShardId,
    /// The cluster view.
    pub(crate) cluster: Arc<Cluster>,
    /// This shard's inbox.
    pub(crate) inbox: flume::Receiver<ShardMsg>,
    /// Metadata at start-up.
    pub(crate) metadata: Arc<Metadata>,
    /// The shared address (SO_REUSEPORT), bound.
    pub(crate) shared_listener: std::net::TcpListener,
    /// This shard's own address, bound.
    pub(crate) own_listener: std::net::TcpListener,
    /// Told once the shard serves (or why it cannot).
    pub(crate) ready: std::sync::mpsc::Sender<Result<(), String>>,
}

/// The CPUs the calling thread may run on, in order (empty if the mask cannot be read).
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: sched_getaffinity fills a plain bitmask owned by this frame; CPU_ISSET reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

/// Pins the calling thread to `cpu`. A failure is logged, not fatal: the shard still works.
fn pin_to_cpu(cpu: usize) {
    // SAFETY: `set` is a plain bitmask owned by this frame; sched_setaffinity(0, ..) only
    // changes the calling thread's affinity.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        tracing::warn!(cpu, error = %std::io::Error::last_os_error(), "could not pin shard thread");
    }
}

/// Runs shard `start.id` on the calling thread until it is stopped. Returns whether every
/// log closed cleanly.
pub(crate) fn run_shard(start: ShardStart) -> bool {
    // The i-th CPU the process may use (systemd CPUAffinity=, taskset, cpusets), not CPU i:
    // pinning outside the inherited mask would escape what the operator set.
    let allowed = allowed_cpus();
    match allowed.get(start.id % allowed.len().max(1)) {
        Some(&cpu) => pin_to_cpu(cpu),
        None => pin_to_cpu(start.id % std::thread::available_parallelism().map_or(1, |n| n.get())),
    }
    let runtime = match crate::doctor::build_runtime(start.cluster.config.io_driver) {
        Ok(rt) => rt,
        Err(e) => {
            let _ = start.ready.send(Err(format!(
                "shard {}: cannot start the {:?} runtime: {e}",
                start.id, start.cluster.config.io_driver
            )));
            return false;
        }
    };
    runtime.block_on(shard_main(start))
}

async fn shard_main(start: ShardStart) -> bool {
    let ShardStart {
        id,
        cluster,
        inbox,
        metadata,
        shared_listener,
        own_listener,
        ready,
    } = start;
    let (drain_signal, drained) = flume::bounded(1);
    let shard = Rc::new(Shard {
        id,
        drain_signal: RefCell::new(Some(drain_signal)),
        drained,
        request_budget: Budget::new(cluster.config.shard_request_bytes),
        fetch_budget: Budget::new(cluster.config.shard_fetch_bytes),
        write_budget: sluice_storage::WriteBudget::new(cluster.config.shard_write_buffer_bytes),
        tail_cache: sluice_storage::TailCacheBudget::new(SHARD_TAIL_CACHE_BYTES),
        cluster,
        metadata: RefCell::new(metadata.clone()),
        partitions: RefCell::new(HashMap::new()),
        connections: Cell::new(0),
        acceptors: RefCell::new(Vec::new()),
        background: RefCell::new(Vec::new()),
        readers: RefCell::new(HashMap::new()),
        next_connection: Cell::new(0),
        draining: Cell::new(false),
        admin: Admission::default(),
        producer_ids: RefCell::new(None),
        groups: RefCell::new(crate::group::Coordinator::default()),
        view: RefCell::new(None),
        controller: RefCell::new(None),
        replication: crate::replica::ShardReplication::default(),
    });
    // Open the partitions this shard owns.
    for (topic, meta) in &metadata.topics {
        let mine: Vec<u32> = (0..meta.partitions)
            .filter(|&p| shard.owner(topic, p) == id)
            .collect();
        if let Err(e) = open_partitions(&shard, topic, &mine, &meta.configs).await {
            let _ = ready.send(Err(format!("shard {id}: {e}")));
            close_all(&shard).await;
            return false;
        }
    }
    // Committed offsets come back before the shard serves a single group request.
    if let Err(e) = crate::group::restore(&shard).await {
        let _ = ready.send(Err(format!("shard {id}: restoring committed offsets: {e}")));
        close_all(&shard).await;
        return false;
    }
    crate::group::start(&shard);
    if id == 0
        && let Err(e) = crate::cluster::start(&shard).await
    {
        let _ = ready.send(Err(e));
        close_all(&shard).await;
        return false;
    }
    for listener in [shared_listener, own_listener] {
        let listener = match compio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(format!("shard {id}: cannot register listener: {e}")));
                close_all(&shard).await;
                return false;
            }
        };
        let acceptor = compio::runtime::spawn(accept_loop(shard.clone(), listener));
        shard.acceptors.borrow_mut().push(acceptor);
    }
    RETENTION_CHECK_MS.with(|ms| ms.set(shard.cluster.config.retention_check_ms));
    partition::set_cluster_mode(shard.cluster.config.cluster.is_some());
    let retention = compio::runtime::spawn(retention_loop(shard.clone()));
    shard.background.borrow_mut().push(retention);
    let cleaner = compio::runtime::spawn(cleaner_loop(shard.clone()));
    shard.background.borrow_mut().push(cleaner);
    tracing::info!(
        shard = id,
        partitions = shard.partitions.borrow().len(),
        "shard serving"
    );
    let _ = ready.send(Ok(()));
    loop {
        match inbox.recv_async().await {
            Ok(ShardMsg::Stop { reply }) => {
                let clean = close_all(&shard).await;
                let _ = reply.try_send(clean);
                return clean;
            }
            Ok(msg) => shard.clone().handle(msg),
            Err(_) => return close_all(&shard).await,
        }
    }
}

async fn accept_loop(shard: Rc<Shard>, listener: compio::net::TcpListener) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, for instance: back off rather than spin.
                tracing::warn!(shard = shard.id, error = %e, "accept failed");
                compio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if shard.connections.get() >= SHARD_CONNECTIONS_MAX {
            tracing::warn!(
                shard = shard.id,
                %peer,
                limit = SHARD_CONNECTIONS_MAX,
                "connection limit reached; closing the new connection"
            );
            continue;
        }
        conn::start(&shard, stream, peer);
    }
}

thread_local! {
    /// This shard's interval between retention passes: the configuration's, or the last
    /// SIGHUP reload's (`ShardMsg::Reconfigure`).
    static RETENTION_CHECK_MS: Cell<u64> = const { Cell::new(u64::MAX) };
}

/// Longest the retention loop sleeps before looking at its (reloadable) interval again.
const RETENTION_TICK_MS_MAX: u64 = 1_000;

async fn retention_loop(shard: Rc<Shard>) {
    let interval = || Duration::from_millis(RETENTION_CHECK_MS.with(Cell::get));
    let mut last = Instant::now();
    loop {
        let wait = interval()
            .saturating_sub(last.elapsed())
            .min(Duration::from_millis(RETENTION_TICK_MS_MAX));
        compio::time::sleep(wait).await;
        if last.elapsed() < interval() {
            continue;
        }
        last = Instant::now();
        let partitions: Vec<Rc<Partition>> = shard.partitions.borrow().values().cloned().collect();
        for p in partitions {
            if let Err(e) = p.log.enforce_retention(system_clock_ms()).await {
                tracing::error!(topic = %p.topic, partition = p.index, error = %e, "retention failed");
            }
        }
    }
}

/// Compacts the shard's compacted partitions (`cleanup.policy=compact`), one pass at a time
/// so the shard holds at most one offset map (`CLEANER_DEDUPE_BUFFER_BYTES`). A pass reads and
/// writes in bounded steps and yields between them; appends go on meanwhile.
async fn cleaner_loop(shard: Rc<Shard>) {
    let interval = Duration::from_millis(
        shard
            .cluster
            .config
            .retention_check_ms
            .min(crate::limits::CLEANER_BACKOFF_MS),
    );
    loop {
        compio::time::sleep(interval).await;
        let partitions: Vec<Rc<Partition>> = shard
            .partitions
            .borrow()
            .values()
            .filter(|p| p.log.compacted())
            .cloned()
            .collect();
        for p in partitions {
            if let Err(e) = p.log.clean(system_clock_ms()).await {
                tracing::error!(topic = %p.topic, partition = p.index, error = %e, "compaction failed");
            }
        }
    }
}

/// Opens (creating if needed) the logs of `partitions` of `topic`.
pub(crate) async fn open_partitions(
    shard: &Rc<Shard>,
    topic: &str,
    partitions: &[u32],
    configs: &topic_config::TopicConfigs,
) -> Result<(), String> {
    let config = topic_config::log_config(configs).map_err(|e| format!("topic {topic}: {e}"))?;
    for &index in partitions {
        if shard.partition(topic, index).is_some() {
            continue;
        }
        let dir = partition_dir(&shard.cluster.config.data_dir, topic, index);
        let log = PartitionLog::open_with_budget(
            &dir,
            config.clone(),
            shard.write_budget.clone(),
            shard.tail_cache.clone(),
        )
        .await
        .map_err(|e| format!("cannot open partition {topic}/{index}: {e}"))?;
        let producers = ProducerStates::rebuild(&log).await.map_err(|e| {
            format!("cannot rebuild producer state of partition {topic}/{index}: {e}")
        })?;
        let p = Partition {
            topic: topic.to_string(),
            index,
            log,
            admission: Admission::default(),
            max_batch_bytes: config.max_batch_bytes,
            producers: RefCell::new(producers),
            replica: crate::replica::ReplicaState::new(crate::replica::cluster_mode(shard)),
        };
        shard
            .partitions
            .borrow_mut()
            .insert((topic.to_string(), index), Rc::new(p));
    }
    Ok(())
}

/// Closes a partition's log once no task holds it (bounded wait), durably.
async fn close_partition(p: Rc<Partition>, deadline: Instant) -> bool {
    let mut p = p;
    loop {
        match Rc::try_unwrap(p) {
            Ok(owned) => {
                let (topic, index) = (owned.topic.clone(), owned.index);
                return match owned.log.close().await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::error!(%topic, partition = index, error = %e, "closing log failed");
                        false
                    }
                };
            }
            Err(shared) if Instant::now() < deadline => {
                p = shared;
                compio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(shared) => {
                // Dropping the log flushes what was appended in the background; recovery
                // covers the rest at the next start.
                tracing::warn!(topic = %shared.topic, partition = shared.index, "log still in use; dropping it unclosed");
                return false;
            }
        }
    }
}

/// Closes and deletes the logs of `partitions` of `topic`.
pub(crate) async fn remove_partitions(shard: &Rc<Shard>, topic: &str, partitions: &[u32]) {
    let deadline = Instant::now() + Duration::from_millis(SHUTDOWN_DRAIN_MS_MAX);
    for &index in partitions {
        let removed = shard
            .partitions
            .borrow_mut()
            .remove(&(topic.to_string(), index));
        if let Some(p) = removed {
            close_partition(p, deadline).await;
        }
        let dir = partition_dir(&shard.cluster.config.data_dir, topic, index);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "cannot delete partition directory")
            }
        }
    }
}

async fn close_all(shard: &Rc<Shard>) -> bool {
    shard.background.borrow_mut().clear();
    crate::group::cancel_loads(shard);
    shard.acceptors.borrow_mut().clear();
    let partitions: Vec<_> = shard
        .partitions
        .borrow_mut()
        .drain()
        .map(|(_, p)| p)
        .collect();
    let deadline = Instant::now() + Duration::from_millis(SHUTDOWN_DRAIN_MS_MAX);
    let mut clean = true;
    for p in partitions {
        clean &= close_partition(p, deadline).await;
    }
    tracing::info!(shard = shard.id, clean, "shard stopped");
    clean
}

/// Shutdown phase 1: stop accepting and reading; wait (bounded) for in-flight requests.
async fn drain(shard: Rc<Shard>) {
    shard.draining.set(true);
    shard.drain_signal.borrow_mut().take();
    crate::replica::drain(&shard);
    shard.acceptors.borrow_mut().clear();
    let readers: Vec<_> = shard.readers.borrow_mut().drain().map(|(_, r)| r).collect();
    drop(readers);
    let deadline = Instant::now() + Duration::from_millis(SHUTDOWN_DRAIN_MS_MAX);
    while shard.connections.get() > 0 && Instant::now() < deadline {
        compio::time::sleep(Duration::from_millis(5)).await;
    }
    if shard.connections.get() > 0 {
        tracing::warn!(
            shard = shard.id,
            connections = shard.connections.get(),
            "connections still busy after the drain deadline"
        );
    }
    if shard.id == 0 {
        crate::cluster::stop(&shard).await;
    }
}

impl Shard {
    /// Handles one message. Admission (taking produce tickets) happens here, synchronously,
    /// so messages are admitted in inbox order; the work runs as a task.
    pub(crate) fn handle(self: Rc<Self>, msg: ShardMsg) {
        let lookup = {
            let shard = self.clone();
            move |topic: &str, index: u32| shard.partition(topic, index)
        };
        let spawn = |fut: std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>| {
            compio::runtime::spawn(fut).detach();
        };
        match msg {
            ShardMsg::Produce {
                acks,
                timeout_ms,
                parts,
                reply,
            } => {
                let work = partition::admit_produce(lookup, acks, timeout_ms, parts);
                spawn(Box::pin(async move {
                    let _ = reply.try_send(work.await);
                }));
            }
            ShardMsg::Fetch {
                parts,
                max_bytes,
                reply,
            } => spawn(Box::pin(async move {
                let _ = reply.try_send(partition::fetch(lookup, parts, max_bytes).await);
            })),
            ShardMsg::Watch {
                parts,
                deadline,
                cancel,
                reply,
            } => spawn(Box::pin(async move {
                partition::watch(lookup, parts, deadline, cancel).await;
                let _ = reply.try_send(());
            })),
            ShardMsg::ListOffsets { parts, reply } => spawn(Box::pin(async move {
                let _ = reply.try_send(partition::list_offsets(lookup, parts).await);
            })),
            ShardMsg::Offsets { parts, reply } => {
                let _ = reply.try_send(partition::offsets(lookup, &parts));
            }
            ShardMsg::Group { op, reply } => spawn(Box::pin(async move {
                let _ = reply.try_send(crate::group::serve(self, op).await);
            })),
            ShardMsg::CreateTopics { request, reply } => spawn(Box::pin(async move {
                let _ = reply.try_send(controller::create_topics(&self, request).await);
            })),
            ShardMsg::CreatePartitions { request, reply } => spawn(Box::pin(async move {
                let _ = reply.try_send(controller::create_partitions(&self, request).await);
            })),
            ShardMsg::DecommissionBroker { request, reply } => spawn(Box::pin(async move {
                let _ = reply.try_send(controller::decommission_broker(&self, request).await);
            })),
            ShardMsg::InitProducerId { request, reply } => {
                let _ = reply.try_send(controller::init_producer_id(&self, &request));
            }
            ShardMsg::DeleteTopics { request, reply } => spawn(Box::pin(async move {
                let _ = reply.try_send(controller::delete_topics(&self, request).await);
            })),
            ShardMsg::OpenPartitions {
                topic,
                partitions,
                configs,
                reply,
            } => spawn(Box::pin(async move {
                let _ = reply.try_send(open_partitions(&self, &topic, &partitions, &configs).await);
            })),
            ShardMsg::RemovePartitions {
                topic,
                partitions,
                reply,
            } => spawn(Box::pin(async move {
                remove_partitions(&self, &topic, &partitions).await;
                let _ = reply.try_send(());
            })),
            ShardMsg::Metrics { reply } => {
                let _ = reply.try_send(crate::metrics::snapshot(&self));
            }
            ShardMsg::Reconfigure {
                retention_check_ms,
                shard_request_bytes,
                shard_fetch_bytes,
                reply,
            } => {
                RETENTION_CHECK_MS.with(|ms| ms.set(retention_check_ms));
                self.request_budget.set_capacity(shard_request_bytes);
                self.fetch_budget.set_capacity(shard_fetch_bytes);
                tracing::debug!(shard = self.id, "settings reloaded");
                let _ = reply.try_send(());
            }
            ShardMsg::Snapshot { metadata, reply } => {
                *self.metadata.borrow_mut() = metadata;
                let _ = reply.try_send(());
            }
            ShardMsg::ClusterView { view, reply } => spawn(Box::pin(async move {
                *self.view.borrow_mut() = Some(view.clone());
                crate::replica::apply_view(&self, &view).await;
                crate::group::on_view(&self, &view).await;
                let _ = reply.try_send(());
            })),
            ShardMsg::AlterPartition {
                topic,
                partition,
                leader_epoch,
                partition_epoch,
                new_isr,
                reply,
            } => spawn(Box::pin(async move {
                let result = crate::replica::alter_partition(
                    &self,
                    &topic,
                    partition,
                    leader_epoch,
                    partition_epoch,
                    new_isr,
                )
                .await;
                let _ = reply.try_send(result);
            })),
            ShardMsg::ControlledShutdown { reply } => spawn(Box::pin(async move {
                crate::cluster::controlled_shutdown(&self).await;
                let _ = reply.try_send(());
            })),
            ShardMsg::Drain { reply } => spawn(Box::pin(async move {
                drain(self).await;
                let _ = reply.try_send(());
            })),
            ShardMsg::Stop { reply } => {
                // Only the inbox loop stops a shard; a Stop cannot come from a local send.
                tracing::error!(shard = self.id, "stop delivered outside the inbox loop");
                let _ = reply.try_send(false);
            }
        }
    }
}
