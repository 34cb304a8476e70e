//! Produce on the connection's shard: check `acks`, split the partitions per owning shard,
//! hand each group to its owner (admission happens as the message is delivered, so requests
//! of one connection are admitted in order), then merge the results in request order.
//! `acks=0` gets no response.

use std::rc::Rc;

use sluice_proto::protocol::{
    ACKS_ALL, ACKS_LEADER, ACKS_NONE, ErrorCode, ProducePartitionResult, ProduceRequest,
    ProduceResponse, ProduceTopicResult, REQUEST_TIMEOUT_MS_MAX, encode_error_response,
    encode_response,
};

use super::{Groups, Merged, OWNER_SHUTTING_DOWN, RequestCtx};
use crate::net::conn::{InFlight, Outgoing, ready};
use crate::shard::Shard;
use crate::shard::msg::{ProducePart, ShardMsg, reply_channel};

/// Admits a produce request; the returned task yields its response.
pub(super) async fn admit(shard: &Rc<Shard>, request: ProduceRequest, ctx: RequestCtx) -> InFlight {
    let acks = request.acks;
    if ![ACKS_NONE, ACKS_LEADER, ACKS_ALL].contains(&acks) {
        let message = format!("acks must be 0, 1 or -1, not {acks}");
        let response = encode_error_response(
            ctx.correlation_id,
            ErrorCode::INVALID_REQUIRED_ACKS,
            &message,
        );
        return ready(response, false, vec![ctx.permit]);
    }
    let timeout_ms = request.timeout_ms.min(REQUEST_TIMEOUT_MS_MAX);
    let mut groups = Groups::new();
    let mut names = Vec::with_capacity(request.topics.len());
    let mut shape = Vec::with_capacity(request.topics.len());
    let mut indexes = Vec::with_capacity(request.topics.len());
    for (t, topic) in request.topics.into_iter().enumerate() {
        shape.push(topic.partitions.len());
        indexes.push(
            topic
                .partitions
                .iter()
                .map(|p| p.partition)
                .collect::<Vec<_>>(),
        );
        for (i, part) in topic.partitions.into_iter().enumerate() {
            let owner = shard.owner(&topic.name, part.partition);
            groups.push(
                owner,
                (t, i),
                ProducePart {
                    topic: topic.name.clone(),
                    partition: part.partition,
                    records: part.records.into_bytes_mut(),
                },
            );
        }
        names.push(topic.name);
    }
    // Admission: deliver every group now, in order.
    let mut pending = Vec::with_capacity(groups.by_shard.len());
    for (owner, (places, parts)) in groups.by_shard {
        let (reply, rx) = reply_channel();
        shard
            .send(
                owner,
                ShardMsg::Produce {
                    acks,
                    timeout_ms,
                    parts,
                    reply,
                },
            )
            .await;
        pending.push((places, rx));
    }
    compio::runtime::spawn(async move {
        let merged = Merged::gather(shape.into_iter(), pending).await;
        if acks == ACKS_NONE {
            return None;
        }
        let topics = merged
            .finish(|t, p| ProducePartitionResult {
                partition: indexes[t][p],
                error: ErrorCode::SHUTTING_DOWN,
                message: OWNER_SHUTTING_DOWN.into(),
                base_offset: 0,
                log_start_offset: 0,
            })
            .into_iter()
            .zip(names)
            .map(|(partitions, name)| ProduceTopicResult { name, partitions })
            .collect::<Vec<_>>();
        for p in topics.iter().flat_map(|t| &t.partitions) {
            crate::metrics::error(sluice_proto::protocol::ApiKey::Produce.spec().name, p.error);
        }
        let response = ProduceResponse {
            throttle_ms: ctx.throttle_ms(Default::default()),
            topics,
        };
        Some(Outgoing {
            chunks: encode_response(ctx.correlation_id, &response),
            close: false,
            permits: vec![ctx.permit],
        })
    })
}
