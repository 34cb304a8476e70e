//! ListOffsets: earliest (-2), latest (-1, the high watermark) or the first offset at or after
//! a timestamp, per partition, asked of the owning shards and merged in request order.

use std::rc::Rc;

use sluice_proto::protocol::{
    ErrorCode, ListOffsetsPartitionResult, ListOffsetsRequest, ListOffsetsResponse,
    ListOffsetsTopicResult,
};

use super::{Groups, Merged, OWNER_SHUTTING_DOWN};
use crate::shard::Shard;
use crate::shard::msg::{ShardMsg, reply_channel};

/// Runs a ListOffsets request.
pub(super) async fn run(shard: Rc<Shard>, request: ListOffsetsRequest) -> ListOffsetsResponse {
    let mut groups = Groups::new();
    for (t, topic) in request.topics.iter().enumerate() {
        for (i, part) in topic.partitions.iter().enumerate() {
            groups.push(
                shard.owner(&topic.name, part.partition),
                (t, i),
                (topic.name.clone(), part.partition, part.timestamp),
            );
        }
    }
    let mut pending = Vec::new();
    for (owner, (places, parts)) in groups.by_shard {
        let (reply, rx) = reply_channel();
        shard
            .send(owner, ShardMsg::ListOffsets { parts, reply })
            .await;
        pending.push((places, rx));
    }
    let merged = Merged::gather(request.topics.iter().map(|t| t.partitions.len()), pending).await;
    let topics = merged
        .finish(|t, p| ListOffsetsPartitionResult {
            partition: request.topics[t].partitions[p].partition,
            error: ErrorCode::SHUTTING_DOWN,
            message: OWNER_SHUTTING_DOWN.into(),
            offset: 0,
            timestamp: -1,
        })
        .into_iter()
        .zip(&request.topics)
        .map(|(partitions, topic)| ListOffsetsTopicResult {
            name: topic.name.clone(),
            partitions,
        })
        .collect();
    let response = ListOffsetsResponse { topics };
    for p in response.topics.iter().flat_map(|t| &t.partitions) {
        crate::metrics::error(
            sluice_proto::protocol::ApiKey::ListOffsets.spec().name,
            p.error,
        );
    }
    response
}
