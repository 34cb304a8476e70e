//! Metrics, collected per shard without cross-core locks.
//!
//! Each shard thread owns its counters: a thread-local [`ShardMetrics`] of `Cell`s and
//! `RefCell`s, touched only by the tasks of that shard (the shard *is* the thread). The
//! recording functions below are what the data path calls. Nothing is shared: the metrics
//! endpoint (`http.rs`, its own thread) sends every shard a `ShardMsg::Metrics` over its
//! inbox, each shard answers with a plain-data [`ShardSnapshot`] built on its own thread, and
//! the endpoint merges them and renders the Prometheus text format (`render.rs`).

pub(crate) mod http;
pub(crate) mod render;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::Duration;

use sluice_proto::RECORD_COUNT_AT;
use sluice_proto::protocol::{ApiKey, ErrorCode};
use sluice_replication::NodeId;
use sluice_storage::{LatencyHistogram, LogIoStats};

use crate::replica::Role;
use crate::shard::Shard;
use crate::shard::partition::Partition;

/// Most per-partition series one shard keeps (bytes and records in and out). Beyond it, new
/// partitions are counted only in the per-shard totals (and a debug line is logged).
pub(crate) const PARTITION_SERIES_MAX: usize = 100_000;
/// Most consumer-group lag series one shard keeps (group × topic × partition).
pub(crate) const GROUP_LAG_SERIES_MAX: usize = 100_000;
/// The `api` label of failures that happen before the API is known (bad frame, unknown key).
pub(crate) const UNKNOWN_API: &str = "unknown";

/// Bytes and records in (produce) and out (fetch) of one partition, as seen by one shard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Traffic {
    /// Record-batch bytes appended.
    pub(crate) produce_bytes: u64,
    /// Records appended.
    pub(crate) produce_records: u64,
    /// Record-batch bytes sent in fetch responses.
    pub(crate) fetch_bytes: u64,
    /// Records sent in fetch responses.
    pub(crate) fetch_records: u64,
}

impl Traffic {
    fn add(&mut self, other: &Traffic) {
        self.produce_bytes += other.produce_bytes;
        self.produce_records += other.produce_records;
        self.fetch_bytes += other.fetch_bytes;
        self.fetch_records += other.fetch_records;
    }
}

/// One shard's counters. Lives in a thread-local of the shard thread.
#[derive(Default)]
struct ShardMetrics {
    /// Per-shard totals.
    traffic: Cell<Traffic>,
    /// Per partition: topic → partition → traffic (bounded by [`PARTITION_SERIES_MAX`]).
    partitions: RefCell<HashMap<String, HashMap<u32, Traffic>>>,
    partition_series: Cell<usize>,
    /// Latency of every answered request, by API name (bounded by the API table).
    requests: RefCell<HashMap<&'static str, LatencyHistogram>>,
    /// Errors by API name and code (bounded by the API table × the code table).
    errors: RefCell<HashMap<(&'static str, ErrorCode), u64>>,
    /// Requests read and not yet answered.
    in_flight: Cell<u64>,
    /// Time spent waiting for the request and fetch budgets.
    throttle_us: Cell<u64>,
    /// Consumer-group lag: (group, topic, partition) → records behind the high watermark.
    group_lag: RefCell<HashMap<(String, String, u32), i64>>,
    /// The follower's fetch rounds, by phase ([`FetchPhase`]).
    replica_fetch: RefCell<[LatencyHistogram; FetchPhase::ALL.len()]>,
    /// Record-batch bytes this shard's followers fetched from leaders.
    replica_fetched_bytes: Cell<u64>,
}

/// The phases of one follower fetch round, one after another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FetchPhase {
    /// From sending the fetch request to holding the whole answer (the leader's long poll,
    /// its read and the transfer).
    RoundTrip,
    /// Appending the answer's batches to the logs (waits for write buffers included).
    Append,
    /// Waiting for the appended batches to be durable (their fdatasyncs).
    Durable,
}

impl FetchPhase {
    pub(crate) const ALL: [FetchPhase; 3] = [
        FetchPhase::RoundTrip,
        FetchPhase::Append,
        FetchPhase::Durable,
    ];

    /// The `phase` label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            FetchPhase::RoundTrip => "round_trip",
            FetchPhase::Append => "append",
            FetchPhase::Durable => "durable",
        }
    }
}

thread_local! {
    static SHARD: ShardMetrics = ShardMetrics::default();
}

fn with_partition(topic: &str, partition: u32, f: impl FnOnce(&mut Traffic)) {
    SHARD.with(|m| {
        let mut partitions = m.partitions.borrow_mut();
        if let Some(t) = partitions
            .get_mut(topic)
            .and_then(|p| p.get_mut(&partition))
        {
            f(t);
            return;
        }
        if m.partition_series.get() >= PARTITION_SERIES_MAX {
            tracing::debug!(
                topic,
                partition,
                "per-partition metric series limit reached"
            );
            return;
        }
        m.partition_series.set(m.partition_series.get() + 1);
        let mut t = Traffic::default();
        f(&mut t);
        partitions
            .entry(topic.to_string())
            .or_default()
            .insert(partition, t);
    });
}

/// A batch of `bytes` holding `records` was appended to `topic`/`partition`.
pub(crate) fn produced(topic: &str, partition: u32, bytes: usize, records: u64) {
    let add = |t: &mut Traffic| {
        t.produce_bytes += bytes as u64;
        t.produce_records += records;
    };
    SHARD.with(|m| {
        let mut total = m.traffic.get();
        add(&mut total);
        m.traffic.set(total);
    });
    with_partition(topic, partition, add);
}

/// Whole batches (`chunks`, each one batch) of `topic`/`partition` go out in a fetch response.
pub(crate) fn fetched(topic: &str, partition: u32, chunks: &[bytes::Bytes]) {
    let bytes: usize = chunks.iter().map(|c| c.len()).sum();
    let records: u64 = chunks
        .iter()
        .filter_map(|c| c.get(RECORD_COUNT_AT..RECORD_COUNT_AT + 4))
        .map(|b| u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
        .sum();
    if bytes == 0 {
        return;
    }
    let add = |t: &mut Traffic| {
        t.fetch_bytes += bytes as u64;
        t.fetch_records += records;
    };
    SHARD.with(|m| {
        let mut total = m.traffic.get();
        add(&mut total);
        m.traffic.set(total);
    });
    with_partition(topic, partition, add);
}

/// A request of `api` was answered (or, for `acks=0`, completed) `latency` after it was read.
pub(crate) fn request_done(api: ApiKey, latency: Duration) {
    SHARD.with(|m| {
        m.requests
            .borrow_mut()
            .entry(api.spec().name)
            .or_default()
            .record(latency);
    });
}

/// A request of `api` (or [`UNKNOWN_API`]) failed, wholly or for one partition, with `code`.
pub(crate) fn error(api: &'static str, code: ErrorCode) {
    if code.is_ok() {
        return;
    }
    SHARD.with(|m| *m.errors.borrow_mut().entry((api, code)).or_default() += 1);
}

/// A follower fetch round spent `took` in `phase`.
pub(crate) fn replica_fetch_phase(phase: FetchPhase, took: Duration) {
    SHARD.with(|m| m.replica_fetch.borrow_mut()[phase as usize].record(took));
}

/// A follower's fetch answer brought `bytes` of record batches.
pub(crate) fn replica_fetched(bytes: u64) {
    SHARD.with(|m| {
        m.replica_fetched_bytes
            .set(m.replica_fetched_bytes.get().saturating_add(bytes));
    });
}

/// A reader waited `waited` for a budget (request bytes or fetch bytes).
pub(crate) fn throttled(waited: Duration) {
    if waited.is_zero() {
        return;
    }
    let us = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
    SHARD.with(|m| m.throttle_us.set(m.throttle_us.get().saturating_add(us)));
}

/// Counts a request in flight on this shard until dropped.
pub(crate) struct InFlightGuard(());

impl InFlightGuard {
    /// A request was read and admitted.
    pub(crate) fn new() -> Self {
        SHARD.with(|m| m.in_flight.set(m.in_flight.get() + 1));
        Self(())
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        SHARD.with(|m| m.in_flight.set(m.in_flight.get().saturating_sub(1)));
    }
}

/// Sets the lag (records between the group's committed offset and the high watermark) of
/// `group` on `topic`/`partition`, for `sluice_consumer_group_lag`. Call it on the shard
/// that computes it; the endpoint merges every shard's series. Lag of offsets committed to
/// the group coordinator is computed at each scrape without it (see [`ShardSnapshot`]);
/// this is for lag known elsewhere, and wins over the computed value.
#[allow(dead_code)] // The API for the group coordinator (see ARCHITECTURE.md, "Metrics").
pub(crate) fn set_group_lag(group: &str, topic: &str, partition: u32, lag: i64) {
    SHARD.with(|m| {
        let mut lags = m.group_lag.borrow_mut();
        let key = (group.to_string(), topic.to_string(), partition);
        if lags.len() >= GROUP_LAG_SERIES_MAX && !lags.contains_key(&key) {
            tracing::debug!(group, topic, partition, "group lag series limit reached");
            return;
        }
        lags.insert(key, lag);
    });
}

/// Forgets every lag series of `group` (the group was deleted or moved to another shard).
#[allow(dead_code)] // The API for the group coordinator.
pub(crate) fn clear_group_lag(group: &str) {
    SHARD.with(|m| m.group_lag.borrow_mut().retain(|(g, _, _), _| g != group));
}

/// Per-partition traffic in a snapshot.
#[derive(Debug, Clone)]
pub(crate) struct PartitionSample {
    /// Topic name.
    pub(crate) topic: String,
    /// Partition index.
    pub(crate) partition: u32,
    /// Counts.
    pub(crate) traffic: Traffic,
}

/// Replication state of one partition held by a shard (leader or follower), for the
/// `sluice_partition_*` gauges and `sluice_replica_lag_records`.
#[derive(Debug, Clone)]
pub(crate) struct ReplicaSample {
    /// Topic name.
    pub(crate) topic: String,
    /// Partition index.
    pub(crate) partition: u32,
    /// What consumers may read up to (the durable end when the broker runs alone).
    pub(crate) high_watermark: u64,
    /// The end of the local log.
    pub(crate) log_end: u64,
    /// Set when this node leads the partition (or runs alone, where it is its only replica).
    pub(crate) leader: Option<LeaderSample>,
}

/// A leader's view of its partition's replicas.
#[derive(Debug, Clone)]
pub(crate) struct LeaderSample {
    /// Size of the committed ISR.
    pub(crate) isr: usize,
    /// Size of the replica list.
    pub(crate) replicas: usize,
    /// Per follower: the leader's log end minus the follower's last fetch offset.
    pub(crate) lag: Vec<(NodeId, u64)>,
}

/// Everything one shard reports to the endpoint: plain data, built on the shard's thread.
#[derive(Debug, Clone, Default)]
pub(crate) struct ShardSnapshot {
    /// Shard index.
    pub(crate) shard: usize,
    /// Per-shard totals.
    pub(crate) traffic: Traffic,
    /// Per partition (every partition the shard owns, plus those it fetched for others).
    pub(crate) partitions: Vec<PartitionSample>,
    /// Request latency by API name.
    pub(crate) requests: Vec<(&'static str, LatencyHistogram)>,
    /// Errors by API name and code.
    pub(crate) errors: Vec<(&'static str, ErrorCode, u64)>,
    /// Requests read and not yet answered.
    pub(crate) in_flight: u64,
    /// Microseconds waited for budgets.
    pub(crate) throttle_us: u64,
    /// Open connections.
    pub(crate) connections: u64,
    /// Messages waiting in the shard's inbox.
    pub(crate) inbox: u64,
    /// Partitions the shard owns.
    pub(crate) partitions_owned: u64,
    /// Write-buffer bytes held by the shard's logs now.
    pub(crate) write_buffer_bytes: u64,
    /// Write-buffer bytes given back by logs, still mapped, for the next log that needs them.
    pub(crate) write_buffer_free_bytes: u64,
    /// `shard_write_buffer_bytes`.
    pub(crate) write_buffer_limit_bytes: u64,
    /// Bytes of record batches in the shard's tail cache.
    pub(crate) tail_cache_bytes: u64,
    /// The shard's tail-cache budget.
    pub(crate) tail_cache_limit_bytes: u64,
    /// I/O counters of the shard's logs (fsync latency, cache hits, disk-full refusals).
    pub(crate) io: LogIoStats,
    /// Consumer-group lag series set through [`set_group_lag`].
    pub(crate) group_lag: Vec<(String, String, u32, i64)>,
    /// High watermark of every partition the shard owns: `(topic, partition, hw)`.
    pub(crate) high_watermarks: Vec<(String, u32, u64)>,
    /// Offsets committed by the groups this shard coordinates: `(group, topic, partition,
    /// offset)`, at most [`GROUP_LAG_SERIES_MAX`]. The endpoint turns them into lag with the
    /// owners' high watermarks, so no shard asks another.
    pub(crate) committed: Vec<(String, String, u32, i64)>,
    /// Replication state of the partitions the shard holds, at most [`PARTITION_SERIES_MAX`].
    pub(crate) replicas: Vec<ReplicaSample>,
    /// The follower fetch rounds' phases, indexed by [`FetchPhase`].
    pub(crate) replica_fetch: [LatencyHistogram; FetchPhase::ALL.len()],
    /// Record-batch bytes fetched from leaders.
    pub(crate) replica_fetched_bytes: u64,
    /// Partitions the shard leads whose committed ISR is smaller than their replica list
    /// (every one of them, not bounded by the series limit).
    pub(crate) under_replicated: u64,
}

/// This shard's snapshot (runs on the shard). Per-partition series of topics the metadata no
/// longer lists are dropped here, so deleted topics do not accumulate.
pub(crate) fn snapshot(shard: &Shard) -> ShardSnapshot {
    let metadata = shard.snapshot();
    let owned = shard.partitions.borrow();
    let high_watermarks = owned
        .iter()
        .map(|((topic, index), p)| (topic.clone(), *index, crate::replica::visible_end(p)))
        .collect();
    let mut under_replicated = 0;
    let mut replicas = Vec::new();
    for p in owned.values() {
        let sample = replica_sample(p);
        if sample.leader.as_ref().is_some_and(|l| l.isr < l.replicas) {
            under_replicated += 1;
        }
        if replicas.len() < PARTITION_SERIES_MAX {
            replicas.push(sample);
        }
    }
    let committed = shard
        .groups
        .borrow()
        .groups
        .values()
        .flat_map(|g| {
            g.offsets
                .iter()
                .map(|((topic, partition), c)| (g.id.clone(), topic.clone(), *partition, c.offset))
        })
        .take(GROUP_LAG_SERIES_MAX)
        .collect();
    let mut io = LogIoStats::default();
    for p in owned.values() {
        io.merge(&p.log.io_stats());
    }
    SHARD.with(|m| {
        let mut partitions = m.partitions.borrow_mut();
        partitions.retain(|topic, _| metadata.topics.contains_key(topic));
        m.partition_series
            .set(partitions.values().map(|p| p.len()).sum());
        let mut samples: HashMap<(&str, u32), Traffic> = HashMap::new();
        for (topic, index) in owned.keys() {
            samples.insert((topic.as_str(), *index), Traffic::default());
        }
        for (topic, parts) in partitions.iter() {
            for (index, traffic) in parts {
                samples
                    .entry((topic.as_str(), *index))
                    .or_default()
                    .add(traffic);
            }
        }
        ShardSnapshot {
            shard: shard.id,
            traffic: m.traffic.get(),
            partitions: samples
                .into_iter()
                .map(|((topic, partition), traffic)| PartitionSample {
                    topic: topic.to_string(),
                    partition,
                    traffic,
                })
                .collect(),
            requests: m
                .requests
                .borrow()
                .iter()
                .map(|(api, h)| (*api, h.clone()))
                .collect(),
            errors: m
                .errors
                .borrow()
                .iter()
                .map(|((api, code), n)| (*api, *code, *n))
                .collect(),
            in_flight: m.in_flight.get(),
            throttle_us: m.throttle_us.get(),
            connections: shard.connections.get() as u64,
            inbox: shard.cluster.inboxes[shard.id].len() as u64,
            partitions_owned: owned.len() as u64,
            write_buffer_bytes: shard.write_budget.mapped_bytes() as u64,
            write_buffer_free_bytes: (shard.write_budget.resident_bytes()
                - shard.write_budget.mapped_bytes()) as u64,
            write_buffer_limit_bytes: shard.write_budget.limit_bytes() as u64,
            tail_cache_bytes: shard.tail_cache.held_bytes() as u64,
            tail_cache_limit_bytes: shard.tail_cache.limit_bytes() as u64,
            io,
            group_lag: m
                .group_lag
                .borrow()
                .iter()
                .map(|((g, t, p), lag)| (g.clone(), t.clone(), *p, *lag))
                .collect(),
            high_watermarks,
            committed,
            replicas,
            under_replicated,
            replica_fetch: m.replica_fetch.borrow().clone(),
            replica_fetched_bytes: m.replica_fetched_bytes.get(),
        }
    })
}

/// One partition's replication state, read on its shard.
fn replica_sample(p: &Partition) -> ReplicaSample {
    let log_end = p.log.offsets().log_end.get();
    let leader = match &*p.replica.role.borrow() {
        // Alone, the broker is the partition's only replica and always in sync.
        Role::Single => Some(LeaderSample {
            isr: 1,
            replicas: 1,
            lag: Vec::new(),
        }),
        Role::Leader(l) => {
            let mut lag: Vec<(NodeId, u64)> = l
                .followers
                .iter()
                .map(|(node, f)| (*node, log_end.saturating_sub(f.log_end)))
                .collect();
            lag.sort_unstable();
            Some(LeaderSample {
                isr: l.isr.len(),
                replicas: l.replicas.len(),
                lag,
            })
        }
        Role::Unassigned | Role::Offline | Role::Follower { .. } => None,
    };
    ReplicaSample {
        topic: p.topic.clone(),
        partition: p.index,
        high_watermark: crate::replica::visible_end(p),
        log_end,
        leader,
    }
}
