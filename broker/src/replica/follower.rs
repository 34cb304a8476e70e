//! The follower side: one fetcher task per (leader node, leader shard) fetches every
//! partition this shard follows from there, appends the leader's batches as they are
//! (`append_replica`), truncates a divergent suffix, and follows the leader's high
//! watermark.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::{Either, join_all, select};
use sluice_proto::protocol::ErrorCode;
use sluice_proto::{BatchHeader, Limits, Offset, peek_batch_length};
use sluice_replication::NodeId;
use sluice_replication::replica::{
    FetchPartition, FetchRequest, FetchResponse, FetchedPartition, REPLICA_FETCH_BYTES_MAX,
    REPLICA_FETCH_PARTITIONS_MAX,
};
use sluice_replication::tls::PeerTls;
use sluice_replication::transport::{FrameKind, PeerConnection, PeerEndpoint, TransportError};
use sluice_storage::{Durable, LogError, system_clock_ms};

use super::{REPLICA_BACKOFF_MAX, REPLICA_BACKOFF_MIN, REPLICA_FETCH_WAIT_MS, Role};
use crate::metrics::{self, FetchPhase};
use crate::shard::Shard;
use crate::shard::partition::Partition;
use crate::shard::producer_state::ProducerStates;

/// The leader shard a fetcher fetches from.
pub(super) struct Target {
    /// Leader node.
    pub(super) leader: NodeId,
    /// Its shard's replication endpoint.
    pub(super) addr: SocketAddr,
}

/// Where a fetcher connects from: a client-only endpoint of its own on `ip` (ephemeral
/// port), with the node's TLS identity.
pub(super) struct Origin {
    /// The shard's replication IP.
    pub(super) ip: IpAddr,
    /// The node's certificates.
    pub(super) tls: PeerTls,
}

/// Partitions to fetch, with the leader epoch of each.
type Parts = Rc<RefCell<BTreeMap<(String, u32), u32>>>;

/// Waits `d`, or less if the fetcher is stopped. Returns whether it was stopped.
async fn sleep_or_stop(d: Duration, stop: &flume::Receiver<()>) -> bool {
    let sleep = Box::pin(compio::time::sleep(d));
    let stopped = Box::pin(stop.recv_async());
    matches!(select(sleep, stopped).await, Either::Right(_))
}

/// The fetcher task; ends when `stop`'s sender is dropped.
pub(super) async fn run(
    shard: Rc<Shard>,
    origin: Origin,
    target: Target,
    parts: Parts,
    stop: flume::Receiver<()>,
) {
    let Target { leader, addr } = target;
    let mut endpoint: Option<PeerEndpoint> = None;
    let mut conn: Option<PeerConnection> = None;
    let mut backoff = REPLICA_BACKOFF_MIN;
    let mut rotate = 0usize;
    let fail = |backoff: &mut Duration| {
        let d = *backoff;
        *backoff = (*backoff * 2).min(REPLICA_BACKOFF_MAX);
        d
    };
    loop {
        if stop.is_disconnected() || shard.replication.stopped.get() {
            break;
        }
        let ep = match endpoint {
            Some(ref ep) => ep,
            None => match PeerEndpoint::bind(SocketAddr::new(origin.ip, 0), &origin.tls, &[]).await
            {
                Ok(ep) => endpoint.insert(ep),
                Err(e) => {
                    tracing::warn!(shard = shard.id, leader, ip = %origin.ip, error = %e,
                        "cannot bind the fetcher's endpoint; retrying");
                    if sleep_or_stop(fail(&mut backoff), &stop).await {
                        break;
                    }
                    continue;
                }
            },
        };
        let c = match conn.clone() {
            Some(c) => c,
            None => {
                let connecting = Box::pin(ep.connect(addr, leader));
                match select(connecting, Box::pin(stop.recv_async())).await {
                    Either::Left((Ok(c), _)) => {
                        tracing::info!(shard = shard.id, leader, %addr, "connected to leader");
                        conn = Some(c.clone());
                        c
                    }
                    Either::Left((Err(e), _)) => {
                        tracing::warn!(shard = shard.id, leader, %addr, error = %e,
                            "cannot connect to leader; retrying");
                        if sleep_or_stop(fail(&mut backoff), &stop).await {
                            break;
                        }
                        continue;
                    }
                    Either::Right(_) => break,
                }
            }
        };
        let request = build_request(&shard, &parts, &mut rotate);
        if request.partitions.is_empty() {
            if sleep_or_stop(REPLICA_BACKOFF_MAX, &stop).await {
                break;
            }
            continue;
        }
        let asked_at = Instant::now();
        let sent = Box::pin(c.request(FrameKind::ReplicaFetchRequest, request.encode()));
        let frame = match select(sent, Box::pin(stop.recv_async())).await {
            Either::Left((Ok(f), _)) => f,
            Either::Left((Err(e), _)) => {
                if !matches!(e, TransportError::Remote { .. }) {
                    conn = None;
                    c.close();
                }
                tracing::warn!(shard = shard.id, leader, %addr, error = %e, "replica fetch failed");
                if sleep_or_stop(fail(&mut backoff), &stop).await {
                    break;
                }
                continue;
            }
            Either::Right(_) => break,
        };
        let response = match decode(frame.kind, frame.body) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(shard = shard.id, leader, %addr, error = %e, "bad replica fetch answer");
                conn = None;
                c.close();
                if sleep_or_stop(fail(&mut backoff), &stop).await {
                    break;
                }
                continue;
            }
        };
        let answered_at = Instant::now();
        metrics::replica_fetch_phase(FetchPhase::RoundTrip, answered_at - asked_at);
        metrics::replica_fetched(
            response
                .partitions
                .iter()
                .map(|p| p.records.len() as u64)
                .sum(),
        );
        let mut progress = false;
        let mut errors = false;
        // Every partition's batches are appended first, then all are made durable at once:
        // each log's fdatasync runs beside the others' instead of one after another.
        let mut appended = Vec::with_capacity(response.partitions.len());
        for (asked, got) in request.partitions.iter().zip(&response.partitions) {
            if asked.topic != got.topic || asked.partition != got.partition {
                errors = true;
                continue;
            }
            let Some(p) = shard.partition(&got.topic, got.partition) else {
                continue;
            };
            match apply(&p, leader, asked, got).await {
                Ok(Applied::Moved(moved)) => progress |= moved,
                Ok(Applied::Appended(done)) => appended.push(done),
                Err(()) => errors = true,
            }
        }
        let appended_at = Instant::now();
        metrics::replica_fetch_phase(FetchPhase::Append, appended_at - answered_at);
        for done in join_all(appended.into_iter().map(AppendedAnswer::finish)).await {
            match done {
                Ok(moved) => progress |= moved,
                Err(()) => errors = true,
            }
        }
        metrics::replica_fetch_phase(FetchPhase::Durable, appended_at.elapsed());
        if errors && !progress {
            if sleep_or_stop(fail(&mut backoff), &stop).await {
                break;
            }
        } else {
            backoff = REPLICA_BACKOFF_MIN;
        }
    }
    if let Some(c) = conn {
        c.close();
    }
    if let Some(ep) = endpoint {
        ep.close();
    }
    tracing::info!(shard = shard.id, leader, %addr, "replica fetcher stopped");
}

fn decode(kind: FrameKind, body: Bytes) -> Result<FetchResponse, String> {
    if kind != FrameKind::ReplicaFetchResponse {
        return Err(format!("answer of kind {kind:?}"));
    }
    FetchResponse::decode(body).map_err(|e| e.to_string())
}

/// The request for every followed partition this shard still follows from `leader` (at
/// most [`REPLICA_FETCH_PARTITIONS_MAX`], rotating through them when there are more).
fn build_request(shard: &Shard, parts: &Parts, rotate: &mut usize) -> FetchRequest {
    let parts = parts.borrow();
    let total = parts.len();
    let max = REPLICA_FETCH_PARTITIONS_MAX as usize;
    // A different partition first each time, so that one with a lot to fetch cannot keep
    // taking the whole response from the ones after it.
    let skip = if total == 0 { 0 } else { *rotate % total };
    *rotate = rotate.wrapping_add(if total > max { max } else { 1 });
    let mut partitions = Vec::with_capacity(total.min(max));
    for ((topic, index), epoch) in parts.iter().cycle().skip(skip).take(total.min(max)) {
        let Some(p) = shard.partition(topic, *index) else {
            continue;
        };
        let offsets = p.log.offsets();
        partitions.push(FetchPartition {
            topic: topic.clone(),
            partition: *index,
            leader_epoch: *epoch,
            fetch_offset: offsets.log_end.get(),
            durable_end: offsets.durable_end.get(),
            last_fetched_epoch: last_batch_epoch(&p, offsets.log_end),
        });
    }
    FetchRequest {
        max_wait_ms: REPLICA_FETCH_WAIT_MS,
        max_bytes: REPLICA_FETCH_BYTES_MAX,
        partitions,
    }
}

/// After a truncation: the idempotent producers' state is read again from what is left.
async fn rebuild_producers(p: &Partition) -> Result<bool, ()> {
    match ProducerStates::rebuild(&p.log).await {
        Ok(states) => {
            *p.producers.borrow_mut() = states;
            Ok(true)
        }
        Err(e) => {
            tracing::error!(topic = %p.topic, partition = p.index, error = %e,
                "cannot rebuild the producer state after a truncation");
            Err(())
        }
    }
}

/// The epoch of the last batch in the log (Kafka's lastFetchedEpoch): the latest cache entry
/// that starts below the log end (an epoch this node led without appending holds no batch).
fn last_batch_epoch(p: &Partition, log_end: Offset) -> Option<u32> {
    p.log
        .epoch_entries()
        .iter()
        .rev()
        .find(|e| e.start_offset < log_end)
        .map(|e| e.epoch)
}

/// Whether `p` still follows `leader` in `epoch`.
fn follows(p: &Partition, leader: NodeId, epoch: u32) -> bool {
    matches!(&*p.replica.role.borrow(),
        Role::Follower { leader: l, leader_epoch } if *l == leader && *leader_epoch == epoch)
}

/// What applying one partition's answer did.
enum Applied {
    /// Done; whether the log moved (truncated).
    Moved(bool),
    /// Its batches (if any) are appended; [`AppendedAnswer::finish`] completes it.
    Appended(AppendedAnswer),
}

/// A partition whose fetched batches are appended, not yet durable.
struct AppendedAnswer {
    p: Rc<Partition>,
    /// Resolves when the last appended batch is durable; `None`: nothing was appended.
    durable: Option<Durable>,
    /// The leader's high watermark in the answer.
    high_watermark: u64,
}

impl AppendedAnswer {
    /// Waits until the batches are durable, then takes the leader's high watermark. The next
    /// fetch reports the durable end that the leader's high watermark counts: waiting here
    /// keeps an acks=all producer from waiting for one more long poll. `Ok(true)`: batches
    /// were appended.
    async fn finish(self) -> Result<bool, ()> {
        let p = &self.p;
        let appended = self.durable.is_some();
        if let Some(durable) = self.durable
            && let Err(e) = durable.await
        {
            tracing::error!(topic = %p.topic, partition = p.index, error = %e, "replica batches not durable");
            return Err(());
        }
        let before = p.log.high_watermark();
        if p.log.set_high_watermark(Offset(self.high_watermark)) != before {
            p.replica.notify();
        }
        Ok(appended)
    }
}

/// Applies one partition's answer: truncates, or appends its batches.
async fn apply(
    p: &Rc<Partition>,
    leader: NodeId,
    asked: &FetchPartition,
    got: &FetchedPartition,
) -> Result<Applied, ()> {
    if !follows(p, leader, asked.leader_epoch) {
        return Ok(Applied::Moved(false));
    }
    let code = ErrorCode(got.error);
    if code == ErrorCode::OFFSET_OUT_OF_RANGE && asked.fetch_offset < got.log_start {
        tracing::info!(topic = %p.topic, partition = p.index, leader,
            fetch_offset = asked.fetch_offset, leader_log_start = got.log_start,
            "behind the leader's log start; starting over there");
        return match p
            .log
            .truncate_fully_and_start_at(Offset(got.log_start))
            .await
        {
            Ok(()) => rebuild_producers(p).await.map(Applied::Moved),
            Err(e) => {
                tracing::error!(topic = %p.topic, partition = p.index, error = %e, "cannot start over");
                Err(())
            }
        };
    }
    if !code.is_ok() {
        tracing::debug!(topic = %p.topic, partition = p.index, leader, error = %code,
            message = %got.message, "replica fetch refused");
        return Err(());
    }
    if let Some(d) = got.diverging {
        let offsets = p.log.offsets();
        let end = offsets.log_end.get();
        // Kafka's rule: the leader's end of the epoch, capped by where this log's own copy of
        // that epoch ends (the largest epoch here not newer than it; none: nothing is kept).
        let own = p
            .log
            .end_offset_for_epoch(d.epoch)
            .map_or(offsets.log_start.get(), |(_, own_end)| own_end.get());
        let to = d.end_offset.min(end).min(own);
        if to >= end {
            // Nothing to cut, yet the leader says the logs diverge: fetching again at once
            // would loop; back off until the leader or the view changes.
            tracing::warn!(topic = %p.topic, partition = p.index, leader, epoch = d.epoch,
                leader_end_offset = d.end_offset, log_end = end,
                "the leader reports a divergence this log cannot cut; retrying later");
            return Err(());
        }
        tracing::warn!(topic = %p.topic, partition = p.index, leader, epoch = d.epoch,
            leader_end_offset = d.end_offset, log_end = end, truncate_to = to,
            "log diverges from the leader's; truncating");
        return match p.log.truncate_to(Offset(to)).await {
            Ok(_) => rebuild_producers(p).await.map(Applied::Moved),
            Err(LogError::OffsetOutOfRange { .. }) => {
                match p.log.truncate_fully_and_start_at(Offset(to)).await {
                    Ok(()) => rebuild_producers(p).await.map(Applied::Moved),
                    Err(e) => {
                        tracing::error!(topic = %p.topic, partition = p.index, error = %e, "cannot truncate");
                        Err(())
                    }
                }
            }
            Err(e) => {
                tracing::error!(topic = %p.topic, partition = p.index, error = %e, "cannot truncate");
                Err(())
            }
        };
    }
    let mut records = got.records.clone();
    let mut last = None;
    while !records.is_empty() {
        let Some(len) = peek_batch_length(&records).map(|l| l as usize) else {
            tracing::warn!(topic = %p.topic, partition = p.index, leader,
                "replica fetch answer ends inside a batch header");
            return Err(());
        };
        if len > records.len() || len == 0 {
            tracing::warn!(topic = %p.topic, partition = p.index, leader, len,
                "replica fetch answer ends inside a batch");
            return Err(());
        }
        let batch = records.split_to(len);
        if !follows(p, leader, asked.leader_epoch) {
            break;
        }
        let header = match BatchHeader::parse(&batch, &Limits::DEFAULT) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(topic = %p.topic, partition = p.index, leader, error = %e,
                    "bad batch header in a replica fetch answer");
                return Err(());
            }
        };
        match p.log.append_replica(batch).await {
            Ok(appended) => {
                // Idempotent producers' state follows the log, so that this replica
                // deduplicates retries as the leader did if it takes over.
                p.producers.borrow_mut().record(
                    &header,
                    appended.base_offset.get(),
                    system_clock_ms(),
                );
                last = Some(appended.durable);
            }
            Err(e) => {
                tracing::warn!(topic = %p.topic, partition = p.index, leader, error = %e,
                    "replica append refused; fetching again");
                return Err(());
            }
        }
    }
    Ok(Applied::Appended(AppendedAnswer {
        p: p.clone(),
        durable: last,
        high_watermark: got.high_watermark,
    }))
}
