//! ApiVersions, Metadata, ListTopics and DescribeTopics (answered from this shard's metadata
//! snapshot; Describe asks the owning shards for offsets), and CreateTopics/DeleteTopics
//! (forwarded to the controller, shard 0).

use std::rc::Rc;

use sluice_proto::protocol::{
    ApiVersionsResponse, BrokerMetadata, CreateTopicsRequest, CreateTopicsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse, DescribeTopicsRequest, DescribeTopicsResponse,
    ErrorCode, ListTopicsResponse, MetadataRequest, MetadataResponse, PartitionDescription,
    PartitionMetadata, TopicDescription, TopicListing, TopicMetadata, TopicResult,
    api_version_ranges,
};

use super::{Groups, Merged, OWNER_SHUTTING_DOWN};
use crate::shard::Shard;
use crate::shard::msg::{OffsetsResult, ShardMsg, reply_channel};
use crate::topic_config;

/// The controller's shard.
const CONTROLLER: usize = 0;

pub(super) fn api_versions(shard: &Shard) -> ApiVersionsResponse {
    ApiVersionsResponse {
        apis: api_version_ranges(),
        node_id: shard.cluster.config.node_id,
        shard: shard.id as u16,
        shard_count: shard.cluster.config.shards as u16,
    }
}

fn node(shard: &Shard) -> i32 {
    shard.cluster.config.node_id as i32
}

pub(super) fn metadata(shard: &Shard, request: MetadataRequest) -> MetadataResponse {
    let snapshot = shard.snapshot();
    let config = &shard.cluster.config;
    let broker = BrokerMetadata {
        node_id: config.node_id,
        host: config.advertised_host.clone(),
        port: shard.cluster.shared_port,
        shards: shard.cluster.shard_addresses.clone(),
    };
    let names: Vec<String> = match request.topics {
        Some(names) => names,
        None => snapshot.topics.keys().cloned().collect(),
    };
    let topics = names
        .into_iter()
        .map(|name| match snapshot.topics.get(&name) {
            None => TopicMetadata {
                message: format!("unknown topic {name}"),
                name,
                error: ErrorCode::UNKNOWN_TOPIC_OR_PARTITION,
                partitions: Vec::new(),
            },
            Some(meta) => TopicMetadata {
                partitions: (0..meta.partitions)
                    .map(|p| PartitionMetadata {
                        partition: p,
                        error: ErrorCode::NONE,
                        leader: node(shard),
                        leader_shard: shard.owner(&name, p) as u16,
                        leader_epoch: 0,
                        replicas: vec![node(shard)],
                        isr: vec![node(shard)],
                    })
                    .collect(),
                name,
                error: ErrorCode::NONE,
                message: String::new(),
            },
        })
        .collect();
    MetadataResponse {
        brokers: vec![broker],
        topics,
    }
}

pub(super) fn list_topics(shard: &Shard) -> ListTopicsResponse {
    ListTopicsResponse {
        topics: shard
            .snapshot()
            .topics
            .iter()
            .map(|(name, meta)| TopicListing {
                name: name.clone(),
                partitions: meta.partitions,
            })
            .collect(),
    }
}

pub(super) async fn describe_topics(
    shard: Rc<Shard>,
    request: DescribeTopicsRequest,
) -> DescribeTopicsResponse {
    let snapshot = shard.snapshot();
    let names: Vec<String> = match request.names {
        Some(names) => names,
        None => snapshot.topics.keys().cloned().collect(),
    };
    let known: Vec<Option<u32>> = names
        .iter()
        .map(|n| snapshot.topics.get(n).map(|m| m.partitions))
        .collect();
    let mut groups = Groups::new();
    for (t, (name, partitions)) in names.iter().zip(&known).enumerate() {
        for p in 0..partitions.unwrap_or(0) {
            groups.push(shard.owner(name, p), (t, p as usize), (name.clone(), p));
        }
    }
    let mut pending = Vec::new();
    for (owner, (places, parts)) in groups.by_shard {
        let (reply, rx) = reply_channel();
        shard.send(owner, ShardMsg::Offsets { parts, reply }).await;
        pending.push((places, rx));
    }
    let merged =
        Merged::<OffsetsResult>::gather(known.iter().map(|k| k.unwrap_or(0) as usize), pending)
            .await;
    let offsets = merged.finish(|_, _| Err((ErrorCode::SHUTTING_DOWN, OWNER_SHUTTING_DOWN.into())));
    let topics = names
        .into_iter()
        .zip(offsets)
        .map(|(name, offsets)| match snapshot.topics.get(&name) {
            None => TopicDescription {
                message: format!("unknown topic {name}"),
                name,
                error: ErrorCode::UNKNOWN_TOPIC_OR_PARTITION,
                ..Default::default()
            },
            Some(meta) => TopicDescription {
                configs: topic_config::effective(&meta.configs),
                partitions: offsets
                    .into_iter()
                    .enumerate()
                    .map(|(p, o)| {
                        let (error, (start, end)) = match o {
                            Ok(o) => (ErrorCode::NONE, o),
                            Err((e, _)) => (e, (0, 0)),
                        };
                        PartitionDescription {
                            partition: p as u32,
                            error,
                            leader: node(&shard),
                            leader_shard: shard.owner(&name, p as u32) as u16,
                            replicas: vec![node(&shard)],
                            isr: vec![node(&shard)],
                            start_offset: start,
                            end_offset: end,
                        }
                    })
                    .collect(),
                name,
                error: ErrorCode::NONE,
                message: String::new(),
            },
        })
        .collect();
    DescribeTopicsResponse { topics }
}

fn shutting_down(names: impl Iterator<Item = String>) -> Vec<TopicResult> {
    names
        .map(|name| TopicResult {
            name,
            error: ErrorCode::SHUTTING_DOWN,
            message: "the controller is shutting down".into(),
        })
        .collect()
}

pub(super) async fn create_topics(
    shard: Rc<Shard>,
    request: CreateTopicsRequest,
) -> CreateTopicsResponse {
    let names: Vec<String> = request.topics.iter().map(|t| t.name.clone()).collect();
    let (reply, rx) = reply_channel();
    shard
        .send(CONTROLLER, ShardMsg::CreateTopics { request, reply })
        .await;
    rx.recv_async()
        .await
        .unwrap_or_else(|_| CreateTopicsResponse {
            topics: shutting_down(names.into_iter()),
        })
}

pub(super) async fn delete_topics(
    shard: Rc<Shard>,
    request: DeleteTopicsRequest,
) -> DeleteTopicsResponse {
    let names = request.names.clone();
    let (reply, rx) = reply_channel();
    shard
        .send(CONTROLLER, ShardMsg::DeleteTopics { request, reply })
        .await;
    rx.recv_async()
        .await
        .unwrap_or_else(|_| DeleteTopicsResponse {
            topics: shutting_down(names.into_iter()),
        })
}
