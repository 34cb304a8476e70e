//! ApiVersions, Metadata, ListTopics and DescribeTopics (answered from this shard's metadata
//! snapshot; Describe asks the owning shards for offsets), and CreateTopics/DeleteTopics/
//! CreatePartitions (forwarded to the controller, shard 0).

use std::rc::Rc;

use sluice_proto::protocol::{
    ApiVersionsResponse, BrokerMetadata, CreatePartitionsRequest, CreatePartitionsResponse,
    CreateTopicsRequest, CreateTopicsResponse, DecommissionBrokerRequest,
    DecommissionBrokerResponse, DeleteTopicsRequest, DeleteTopicsResponse, DescribeTopicsRequest,
    DescribeTopicsResponse, ErrorCode, ListTopicsResponse, MetadataRequest, MetadataResponse,
    PartitionDescription, PartitionMetadata, TopicDescription, TopicListing, TopicMetadata,
    TopicResult, api_version_ranges,
};

use sluice_proto::protocol::ShardAddress;
use sluice_replication::controller::state::{BrokerRegistration, PartitionState};

use super::{Groups, Merged, OWNER_SHUTTING_DOWN};
use crate::cluster::ClusterView;
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

/// A broker as Metadata lists it, from its registration.
fn broker_metadata(reg: &BrokerRegistration) -> BrokerMetadata {
    BrokerMetadata {
        node_id: reg.id,
        host: reg.client_host.clone(),
        port: reg.client_port,
        shards: reg
            .shard_ports
            .iter()
            .enumerate()
            .map(|(s, port)| ShardAddress {
                shard: s as u16,
                host: reg.client_host.clone(),
                port: *port,
            })
            .collect(),
    }
}

/// One partition as the cluster view places it: leader (-1 and LEADER_NOT_AVAILABLE when
/// there is none), the leader's owning shard, epoch, replicas, ISR.
fn partition_in_view(
    view: &ClusterView,
    topic: &str,
    p: u32,
    state: &PartitionState,
) -> PartitionMetadata {
    let leader = state.leader;
    PartitionMetadata {
        partition: p,
        error: if leader.is_some() {
            ErrorCode::NONE
        } else {
            ErrorCode::LEADER_NOT_AVAILABLE
        },
        leader: leader.map_or(-1, |l| l as i32),
        leader_shard: leader
            .and_then(|l| view.owner_shard(l, topic, p))
            .map_or(0, |s| s as u16),
        leader_epoch: state.leader_epoch,
        replicas: state.replicas.iter().map(|r| *r as i32).collect(),
        isr: state.isr.iter().map(|r| *r as i32).collect(),
    }
}

/// Metadata in cluster mode, from the installed view: live brokers, and per partition its
/// leader, the leader's owning shard, epoch, replicas and ISR. Before the first view (the
/// controller quorum has not answered yet) no broker is listed and every named topic is
/// LEADER_NOT_AVAILABLE (retriable).
fn cluster_metadata(shard: &Shard, request: MetadataRequest) -> MetadataResponse {
    let Some(view) = shard.view.borrow().clone() else {
        return MetadataResponse {
            brokers: Vec::new(),
            topics: request
                .topics
                .unwrap_or_default()
                .into_iter()
                .map(|name| TopicMetadata {
                    message: "the cluster metadata is not loaded yet".into(),
                    name,
                    error: ErrorCode::LEADER_NOT_AVAILABLE,
                    partitions: Vec::new(),
                })
                .collect(),
        };
    };
    let names: Vec<String> = match request.topics {
        Some(names) => names,
        None => view.state.topics.keys().cloned().collect(),
    };
    let topics = names
        .into_iter()
        .map(|name| match view.state.topics.get(&name) {
            None => TopicMetadata {
                message: format!("unknown topic {name}"),
                name,
                error: ErrorCode::UNKNOWN_TOPIC_OR_PARTITION,
                partitions: Vec::new(),
            },
            Some(t) => TopicMetadata {
                partitions: t
                    .partitions
                    .iter()
                    .enumerate()
                    .map(|(p, state)| partition_in_view(&view, &name, p as u32, state))
                    .collect(),
                name,
                error: ErrorCode::NONE,
                message: String::new(),
            },
        })
        .collect();
    MetadataResponse {
        brokers: view.live_brokers().map(broker_metadata).collect(),
        topics,
    }
}

pub(super) fn metadata(shard: &Shard, request: MetadataRequest) -> MetadataResponse {
    if shard.cluster.config.cluster.is_some() {
        return cluster_metadata(shard, request);
    }
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
    // Cluster mode: placement from the installed view; offsets only of local replicas.
    let view = shard.view.borrow().clone();
    let names: Vec<String> = match request.names {
        Some(names) => names,
        None => snapshot.topics.keys().cloned().collect(),
    };
    let known: Vec<Option<u32>> = names
        .iter()
        .map(|n| snapshot.topics.get(n).map(|m| m.partitions))
        .collect();
    let local = |name: &str, p: u32| {
        view.as_ref().is_none_or(|v| {
            v.state
                .partition(name, p)
                .is_some_and(|s| s.replicas.contains(&v.me))
        })
    };
    let mut groups = Groups::new();
    for (t, (name, partitions)) in names.iter().zip(&known).enumerate() {
        for p in (0..partitions.unwrap_or(0)).filter(|p| local(name, *p)) {
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
    let offsets = merged.finish(|t, p| {
        if local(&names[t], p as u32) {
            Err((ErrorCode::SHUTTING_DOWN, OWNER_SHUTTING_DOWN.into()))
        } else {
            Err((
                ErrorCode::NOT_LEADER_OR_FOLLOWER,
                "no replica on this broker".into(),
            ))
        }
    });
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
                        if let Some(view) = &view {
                            let placed = view
                                .state
                                .partition(&name, p as u32)
                                .map(|s| partition_in_view(view, &name, p as u32, s));
                            let placed = placed.unwrap_or_default();
                            return PartitionDescription {
                                partition: p as u32,
                                error: if error.is_ok() { placed.error } else { error },
                                leader: placed.leader,
                                leader_shard: placed.leader_shard,
                                replicas: placed.replicas,
                                isr: placed.isr,
                                start_offset: start,
                                end_offset: end,
                            };
                        }
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

pub(super) async fn create_partitions(
    shard: Rc<Shard>,
    request: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let names: Vec<String> = request.topics.iter().map(|t| t.name.clone()).collect();
    let (reply, rx) = reply_channel();
    shard
        .send(CONTROLLER, ShardMsg::CreatePartitions { request, reply })
        .await;
    rx.recv_async()
        .await
        .unwrap_or_else(|_| CreatePartitionsResponse {
            topics: shutting_down(names.into_iter()),
        })
}

pub(super) async fn decommission_broker(
    shard: Rc<Shard>,
    request: DecommissionBrokerRequest,
) -> DecommissionBrokerResponse {
    let (reply, rx) = reply_channel();
    shard
        .send(CONTROLLER, ShardMsg::DecommissionBroker { request, reply })
        .await;
    rx.recv_async()
        .await
        .unwrap_or_else(|_| DecommissionBrokerResponse {
            error: ErrorCode::SHUTTING_DOWN,
            message: "the controller is shutting down".into(),
            remaining_replicas: 0,
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
