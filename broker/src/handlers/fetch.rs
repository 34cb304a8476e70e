//! Fetch on the connection's shard: reserve fetch memory, read every partition from its
//! owner (groups in parallel), merge in request order sharing `max_bytes`, and long-poll:
//! while fewer than `min_bytes` are available, ask the owners to watch the partitions and
//! read again when one has new committed data, until `max_wait_ms` passes.

use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_util::future::{select, select_all};
use sluice_proto::BATCH_BYTES_MAX;
use sluice_proto::protocol::{
    ErrorCode, FETCH_BYTES_MAX, FETCH_WAIT_MS_MAX, FetchPartitionResult, FetchRequest,
    FetchResponse, FetchTopicResult, RecordSet, encode_response,
};

use super::{Groups, Merged, OWNER_SHUTTING_DOWN, RequestCtx};
use crate::net::conn::{InFlight, Outgoing};
use crate::shard::Shard;
use crate::shard::msg::{FetchPart, ShardMsg, WatchPart, reply_channel};

/// Admits a fetch; reads do not need ordering, so all the work is in the task.
pub(super) fn admit(shard: &Rc<Shard>, request: FetchRequest, ctx: RequestCtx) -> InFlight {
    let shard = shard.clone();
    compio::runtime::spawn(async move {
        let max_bytes = (request.max_bytes as usize).min(FETCH_BYTES_MAX);
        // The response holds at most `max_bytes` plus one batch over it.
        let (fetch_permit, waited) = shard
            .fetch_budget
            .acquire(max_bytes + BATCH_BYTES_MAX as usize)
            .await;
        crate::metrics::throttled(waited);
        let wait = Duration::from_millis(u64::from(request.max_wait_ms.min(FETCH_WAIT_MS_MAX)));
        let deadline = Instant::now() + wait;
        let min_bytes = request.min_bytes as usize;
        let topics = loop {
            let topics = read_all(&shard, &request, max_bytes).await;
            let total: usize = topics.iter().flatten().map(|p| p.records.len()).sum();
            if total >= min_bytes || Instant::now() >= deadline || shard.draining.get() {
                break topics;
            }
            let watched = watch_parts(&request, &topics);
            if watched.is_empty() {
                break topics;
            }
            wait_for_data(&shard, watched, deadline).await;
        };
        for (results, t) in topics.iter().zip(&request.topics) {
            for p in results {
                crate::metrics::error(sluice_proto::protocol::ApiKey::Fetch.spec().name, p.error);
                if let RecordSet::Chunks(chunks) = &p.records {
                    crate::metrics::fetched(&t.name, p.partition, chunks);
                }
            }
        }
        let response = FetchResponse {
            throttle_ms: ctx.throttle_ms(waited),
            topics: topics
                .into_iter()
                .zip(&request.topics)
                .map(|(partitions, t)| FetchTopicResult {
                    name: t.name.clone(),
                    partitions,
                })
                .collect(),
        };
        Some(Outgoing {
            chunks: encode_response(ctx.correlation_id, &response),
            close: false,
            permits: vec![ctx.permit, fetch_permit],
        })
    })
}

/// One read of every partition, merged in request order within `max_bytes`.
async fn read_all(
    shard: &Rc<Shard>,
    request: &FetchRequest,
    max_bytes: usize,
) -> Vec<Vec<FetchPartitionResult>> {
    let mut groups = Groups::new();
    for (t, topic) in request.topics.iter().enumerate() {
        for (i, part) in topic.partitions.iter().enumerate() {
            groups.push(
                shard.owner(&topic.name, part.partition),
                (t, i),
                FetchPart {
                    topic: topic.name.clone(),
                    partition: part.partition,
                    offset: part.fetch_offset,
                    max_bytes: part.partition_max_bytes as usize,
                },
            );
        }
    }
    let mut pending = Vec::new();
    for (owner, (places, parts)) in groups.by_shard {
        let (reply, rx) = reply_channel();
        shard
            .send(
                owner,
                ShardMsg::Fetch {
                    parts,
                    max_bytes,
                    reply,
                },
            )
            .await;
        pending.push((places, rx));
    }
    let merged = Merged::gather(request.topics.iter().map(|t| t.partitions.len()), pending).await;
    let mut topics = merged.finish(|t, p| FetchPartitionResult {
        partition: request.topics[t].partitions[p].partition,
        error: ErrorCode::SHUTTING_DOWN,
        message: OWNER_SHUTTING_DOWN.into(),
        ..Default::default()
    });
    // Each owner filled `max_bytes` on its own; keep the total within it, in request order.
    let mut used = 0usize;
    for result in topics.iter_mut().flatten() {
        let RecordSet::Chunks(chunks) = &mut result.records else {
            continue;
        };
        let mut keep = 0;
        for chunk in chunks.iter() {
            if used + chunk.len() > max_bytes && used > 0 {
                break;
            }
            used += chunk.len();
            keep += 1;
        }
        chunks.truncate(keep);
    }
    topics
}

/// Partitions worth waiting on: those that answered without error.
fn watch_parts(request: &FetchRequest, topics: &[Vec<FetchPartitionResult>]) -> Vec<WatchPart> {
    let mut watched = Vec::new();
    for (topic, results) in request.topics.iter().zip(topics) {
        for result in results.iter().filter(|r| r.error.is_ok()) {
            watched.push(WatchPart {
                topic: topic.name.clone(),
                partition: result.partition,
                high_watermark: result.high_watermark,
            });
        }
    }
    watched
}

/// Waits until one owner reports new committed data, or `deadline`.
async fn wait_for_data(shard: &Rc<Shard>, watched: Vec<WatchPart>, deadline: Instant) {
    let mut groups = Groups::new();
    for part in watched {
        groups.push(shard.owner(&part.topic, part.partition), (0, 0), part);
    }
    // Dropping `cancel` (on return) ends the owners' watches that are still waiting.
    let (cancel, cancelled) = flume::bounded::<()>(1);
    let mut replies = Vec::new();
    for (owner, (_, parts)) in groups.by_shard {
        let (reply, rx) = reply_channel();
        shard
            .send(
                owner,
                ShardMsg::Watch {
                    parts,
                    deadline,
                    cancel: cancelled.clone(),
                    reply,
                },
            )
            .await;
        replies.push(Box::pin(async move {
            let _ = rx.recv_async().await;
        }));
    }
    let remaining = deadline.saturating_duration_since(Instant::now());
    // A draining shard answers long polls at once with what they have.
    let draining = shard.drained.recv_async();
    let _ = compio::time::timeout(remaining, select(select_all(replies), draining)).await;
    drop(cancel);
}
