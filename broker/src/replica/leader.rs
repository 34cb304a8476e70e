//! The leader side: the shard's replication endpoint serves its followers' fetches (frame
//! kind 4), records their progress, moves the high watermark, and keeps the ISR (expand when
//! a follower caught up, shrink when one lags longer than `replica.lag.time.max.ms`).

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use futures_util::future::{Either, LocalBoxFuture, select, select_all};
use sluice_proto::Offset;
use sluice_proto::protocol::ErrorCode;
use sluice_replication::NodeId;
use sluice_replication::replica::{
    Diverging, FetchPartition, FetchRequest, FetchResponse, FetchedPartition,
    REPLICA_RESPONSE_BYTES_MAX, response_overhead_max,
};
use sluice_replication::transport::{
    ErrorBody, Frame, FrameKind, PeerConnection, PeerEndpoint, PeerIncoming, Responder,
};

use super::{FollowerProgress, Role, alter_isr, update_high_watermark};
use crate::budget::Permit;
use crate::shard::Shard;
use crate::shard::partition::{Partition, log_error};

/// Accepts follower connections until the endpoint closes; each gets a reader task.
pub(super) async fn accept_loop(shard: Rc<Shard>, endpoint: Rc<PeerEndpoint>) {
    loop {
        match endpoint.accept().await {
            Ok(conn) => {
                tracing::debug!(shard = shard.id, peer = conn.peer_node(),
                    remote = %conn.remote_address(), "replica connection");
                compio::runtime::spawn(serve_connection(shard.clone(), conn)).detach();
            }
            Err(e) => {
                tracing::debug!(shard = shard.id, error = %e, "replication endpoint stopped accepting");
                return;
            }
        }
    }
}

/// Serves the requests of one follower connection; each in its own task (at most the
/// transport's concurrent stream limit per connection).
async fn serve_connection(shard: Rc<Shard>, conn: PeerConnection) {
    loop {
        match conn.accept_incoming().await {
            Ok(PeerIncoming::Request { frame, responder }) => {
                if shard.replication.stopped.get() {
                    return;
                }
                compio::runtime::spawn(serve_request(shard.clone(), frame, responder)).detach();
            }
            Ok(PeerIncoming::Oneway(frame)) => {
                tracing::warn!(shard = shard.id, peer = conn.peer_node(), kind = ?frame.kind,
                    "unexpected one-way frame on a replication connection; ignored");
            }
            Err(e) => {
                tracing::debug!(shard = shard.id, peer = conn.peer_node(), error = %e,
                    "replica connection closed");
                return;
            }
        }
    }
}

async fn serve_request(shard: Rc<Shard>, frame: Frame, responder: Responder) {
    let follower = responder.peer_node();
    if frame.kind != FrameKind::ReplicaFetchRequest {
        tracing::warn!(shard = shard.id, peer = follower, kind = ?frame.kind,
            "unexpected request kind on a replication endpoint");
        let _ = responder
            .respond_error(
                ErrorBody::UNSUPPORTED_KIND,
                "a replication endpoint answers replica fetches only",
            )
            .await;
        return;
    }
    let request = match FetchRequest::decode(frame.body) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(shard = shard.id, peer = follower, error = %e, "malformed replica fetch");
            let _ = responder
                .respond_error(ErrorBody::MALFORMED_FRAME, &e.to_string())
                .await;
            return;
        }
    };
    // The permit holds the answer's bytes in the shard's fetch budget until it is sent.
    let (response, _permit) = fetch(&shard, follower, &request).await;
    if let Err(e) = responder
        .respond(FrameKind::ReplicaFetchResponse, response.encode())
        .await
    {
        tracing::debug!(shard = shard.id, peer = follower, error = %e, "replica fetch answer not sent");
    }
}

/// Answers a fetch: one pass over the partitions, and when none has data, a long poll up to
/// `max_wait_ms` and one more pass. Each pass reads under a permit of the shard's fetch
/// budget (released while the request waits, so idle followers hold none); the last one is
/// returned with the answer and held until it is sent.
async fn fetch(
    shard: &Rc<Shard>,
    follower: NodeId,
    request: &FetchRequest,
) -> (FetchResponse, Permit) {
    let room = REPLICA_RESPONSE_BYTES_MAX.saturating_sub(response_overhead_max(
        request.partitions.iter().map(|p| p.topic.len()),
    ));
    let budget = (request.max_bytes as usize).min(room);
    let deadline = Instant::now() + Duration::from_millis(u64::from(request.max_wait_ms));
    let mut waited = false;
    loop {
        let (permit, _) = shard.fetch_budget.acquire(budget).await;
        let mut waits: Vec<LocalBoxFuture<'static, ()>> = Vec::new();
        let mut used = 0usize;
        let mut out = Vec::with_capacity(request.partitions.len());
        let mut any = false;
        for part in &request.partitions {
            let (answer, wait) = fetch_one(shard, follower, part, budget, &mut used).await;
            any |= answer.error != 0 || answer.diverging.is_some() || !answer.records.is_empty();
            if let Some(w) = wait {
                waits.push(w);
            }
            out.push(answer);
        }
        let now = Instant::now();
        if any || waited || waits.is_empty() || now >= deadline || shard.replication.stopped.get() {
            return (FetchResponse { partitions: out }, permit);
        }
        drop(permit);
        waited = true;
        let _ = compio::time::timeout(deadline - now, select_all(waits)).await;
    }
}

fn answer(part: &FetchPartition, error: ErrorCode, message: String) -> FetchedPartition {
    FetchedPartition {
        topic: part.topic.clone(),
        partition: part.partition,
        error: error.0,
        message,
        high_watermark: 0,
        log_start: 0,
        diverging: None,
        records: Bytes::new(),
    }
}

/// Checks that this node leads `p` in the epoch the follower names, and that the follower
/// is a replica.
fn check_epoch(
    p: &Partition,
    follower: NodeId,
    part: &FetchPartition,
) -> Result<(), (ErrorCode, String)> {
    let role = p.replica.role.borrow();
    let Role::Leader(l) = &*role else {
        return Err((
            ErrorCode::NOT_LEADER_OR_FOLLOWER,
            format!("this node does not lead {}/{}", p.topic, p.index),
        ));
    };
    if part.leader_epoch < l.epoch {
        return Err((
            ErrorCode::FENCED_LEADER_EPOCH,
            format!(
                "leader epoch {} is older than {}",
                part.leader_epoch, l.epoch
            ),
        ));
    }
    if part.leader_epoch > l.epoch {
        return Err((
            ErrorCode::UNKNOWN_LEADER_EPOCH,
            format!(
                "leader epoch {} is newer than {}",
                part.leader_epoch, l.epoch
            ),
        ));
    }
    if !l.replicas.contains(&follower) {
        return Err((
            ErrorCode::NOT_LEADER_OR_FOLLOWER,
            format!(
                "node {follower} is not a replica of {}/{}",
                p.topic, p.index
            ),
        ));
    }
    Ok(())
}

/// One partition of a fetch: the answer, and (when it has nothing new) what to wait on.
async fn fetch_one(
    shard: &Rc<Shard>,
    follower: NodeId,
    part: &FetchPartition,
    budget: usize,
    used: &mut usize,
) -> (FetchedPartition, Option<LocalBoxFuture<'static, ()>>) {
    let Some(p) = shard.partition(&part.topic, part.partition) else {
        let msg = format!(
            "unknown topic or partition {}/{}",
            part.topic, part.partition
        );
        return (
            answer(part, ErrorCode::UNKNOWN_TOPIC_OR_PARTITION, msg),
            None,
        );
    };
    if let Err((code, msg)) = check_epoch(&p, follower, part) {
        tracing::debug!(topic = %p.topic, partition = p.index, follower, error = %code, "{msg}");
        return (answer(part, code, msg), None);
    }
    let offsets = p.log.offsets();
    let mut out = answer(part, ErrorCode::NONE, String::new());
    out.log_start = offsets.log_start.get();
    // Divergence (KIP-320): the follower's last epoch must end on the leader no earlier than
    // the follower's log does.
    let diverging = match part.last_fetched_epoch {
        Some(e) => match p.log.end_offset_for_epoch(e) {
            Some((epoch, end)) if epoch != e || end.get() < part.fetch_offset => Some(Diverging {
                epoch,
                end_offset: end.get(),
            }),
            Some(_) => None,
            // The leader knows no epoch that old: everything the follower holds from where
            // the leader's earliest epoch starts diverges.
            None => Some(Diverging {
                epoch: e,
                end_offset: p
                    .log
                    .epoch_entries()
                    .first()
                    .map_or(offsets.log_end, |first| first.start_offset)
                    .get()
                    .max(offsets.log_start.get()),
            }),
        },
        None => None,
    };
    let diverging = diverging.or_else(|| {
        (part.fetch_offset > offsets.log_end.get()).then(|| Diverging {
            epoch: p.log.latest_epoch().unwrap_or(0),
            end_offset: offsets.log_end.get(),
        })
    });
    if let Some(d) = diverging {
        tracing::info!(topic = %p.topic, partition = p.index, follower,
            fetch_offset = part.fetch_offset, last_epoch = ?part.last_fetched_epoch,
            diverging_epoch = d.epoch, end_offset = d.end_offset, "follower log diverges");
        out.diverging = Some(d);
        out.high_watermark = p.log.high_watermark().get();
        return (out, None);
    }
    if part.fetch_offset < offsets.log_start.get() {
        out.error = ErrorCode::OFFSET_OUT_OF_RANGE.0;
        out.message = format!(
            "offset {} is below the log start {}",
            part.fetch_offset,
            offsets.log_start.get()
        );
        out.high_watermark = p.log.high_watermark().get();
        return (out, None);
    }
    record_progress(shard, &p, follower, part, offsets.log_end.get());
    out.high_watermark = p.log.high_watermark().get();
    let durable = offsets.durable_end.get();
    if part.fetch_offset >= durable {
        // Nothing new: wake when data becomes durable here or the high watermark moves.
        let data = p.log.durable_at(Offset(part.fetch_offset + 1));
        let changed = p.replica.changed();
        let wait = async move {
            match select(Box::pin(data), Box::pin(changed)).await {
                Either::Left(_) | Either::Right(_) => {}
            }
        }
        .boxed_local();
        return (out, Some(wait));
    }
    let room = budget.saturating_sub(*used);
    if room == 0 {
        return (out, None);
    }
    match p
        .log
        .read_until(Offset(part.fetch_offset), Offset(durable), room)
        .await
    {
        Ok(batches) => {
            let mut records = BytesMut::new();
            for batch in batches {
                if records.len() + batch.len() > room {
                    break;
                }
                records.extend_from_slice(&batch.into_bytes());
            }
            // A batch that does not fit what other partitions left of this response waits
            // for the next one (the follower rotates its partition order); one that does not
            // fit an empty response never will.
            if records.is_empty() && *used == 0 {
                out.error = ErrorCode::MESSAGE_TOO_LARGE.0;
                out.message = format!(
                    "the batch at offset {} does not fit a replica fetch of {room} bytes",
                    part.fetch_offset
                );
                tracing::error!(topic = %p.topic, partition = p.index, follower,
                    offset = part.fetch_offset, room, "batch too large to replicate");
            }
            *used += records.len();
            out.records = records.freeze();
        }
        Err(e) => {
            let (code, msg) = log_error(&p.topic, p.index, &e);
            out.error = code.0;
            out.message = msg;
        }
    }
    (out, None)
}

/// Records a follower's position, moves the high watermark, and asks to add the follower to
/// the ISR once it caught up.
fn record_progress(
    shard: &Rc<Shard>,
    p: &Rc<Partition>,
    follower: NodeId,
    part: &FetchPartition,
    leader_end: u64,
) {
    let now = Instant::now();
    let me = p.replica.me.get();
    let expand = {
        let mut role = p.replica.role.borrow_mut();
        let Role::Leader(l) = &mut *role else {
            return;
        };
        let prev = l.followers.get(&follower).copied();
        let caught_up_at = if part.fetch_offset >= leader_end {
            now
        } else {
            match prev {
                Some(f) if part.fetch_offset >= f.leader_end_at_last_fetch => f.last_fetch,
                Some(f) => f.caught_up_at,
                None => now,
            }
        };
        l.followers.insert(
            follower,
            FollowerProgress {
                log_end: part.fetch_offset,
                durable_end: part.durable_end.min(part.fetch_offset),
                last_fetch: now,
                leader_end_at_last_fetch: leader_end,
                caught_up_at,
            },
        );
        let hw = p.log.high_watermark().get();
        (!l.isr.contains(&follower)
            && part.fetch_offset >= hw
            && part.fetch_offset >= l.epoch_start)
            .then(|| {
                l.replicas
                    .iter()
                    .copied()
                    .filter(|r| l.isr.contains(r) || *r == follower)
                    .collect::<Vec<_>>()
            })
    };
    update_high_watermark(p, me);
    if let Some(new_isr) = expand {
        alter_isr(shard, p, new_isr);
    }
}

/// Every `lag_time_max / 2` (at most [`super::ISR_CHECK_INTERVAL_MAX`]): a follower in the
/// ISR that has not caught up for longer than `lag_time_max` leaves it.
pub(super) async fn isr_loop(shard: Rc<Shard>, lag_time_max: Duration) {
    let interval = (lag_time_max / 2)
        .min(super::ISR_CHECK_INTERVAL_MAX)
        .max(Duration::from_millis(10));
    loop {
        compio::time::sleep(interval).await;
        let partitions: Vec<Rc<Partition>> = shard.partitions.borrow().values().cloned().collect();
        for p in partitions {
            let shrink = {
                let role = p.replica.role.borrow();
                let Role::Leader(l) = &*role else {
                    continue;
                };
                if l.alter_in_flight {
                    // The last change is on its way (or waits for the view to show it).
                    continue;
                }
                let me = p.replica.me.get();
                let leader_end = p.log.offsets().log_end.get();
                let lagging: Vec<NodeId> = l
                    .isr
                    .iter()
                    .copied()
                    .filter(|m| *m != me)
                    .filter(|m| match l.followers.get(m) {
                        Some(f) => {
                            f.log_end < leader_end && f.caught_up_at.elapsed() > lag_time_max
                                || f.last_fetch.elapsed() > lag_time_max
                        }
                        None => true,
                    })
                    .collect();
                (!lagging.is_empty()).then(|| {
                    tracing::warn!(topic = %p.topic, partition = p.index, lagging = ?lagging,
                        lag_time_max_ms = lag_time_max.as_millis() as u64,
                        "followers fell behind; shrinking the ISR");
                    l.isr
                        .iter()
                        .copied()
                        .filter(|m| !lagging.contains(m))
                        .collect::<Vec<_>>()
                })
            };
            if let Some(new_isr) = shrink {
                alter_isr(&shard, &p, new_isr);
            }
        }
    }
}
