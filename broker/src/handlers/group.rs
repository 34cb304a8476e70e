//! Consumer group APIs (FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup,
//! OffsetCommit, OffsetFetch, ListGroups, DescribeGroups, DeleteGroups). Any shard accepts
//! them: FindCoordinator is answered here; a request for one group goes to the group's
//! coordinator shard (`ShardMsg::Group`); ListGroups asks every shard; DescribeGroups and
//! DeleteGroups ask each group's coordinator. In cluster mode FindCoordinator answers the
//! node leading the group's `__consumer_offsets` partition, and the coordinator shard
//! refuses groups this node does not coordinate (`NOT_COORDINATOR`).

use std::rc::Rc;

use sluice_proto::protocol::{
    ApiKey, DeleteGroupResult, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, DescribedGroup, ErrorCode, FindCoordinatorRequest,
    FindCoordinatorResponse, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest,
    JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest,
    ListGroupsResponse, OffsetCommitPartitionResult, OffsetCommitRequest, OffsetCommitResponse,
    OffsetCommitTopicResult, OffsetFetchRequest, OffsetFetchResponse, Reader, SyncGroupRequest,
    SyncGroupResponse, decode_body, group_state,
};

use super::{Admitted, OWNER_SHUTTING_DOWN, RequestCtx, respond};
use crate::group::{self, GroupOp, GroupReply};
use crate::shard::Shard;
use crate::shard::msg::{ShardMsg, reply_channel};

/// Decodes and admits one group request.
pub(crate) fn admit(shard: &Rc<Shard>, api: ApiKey, reader: Reader, ctx: RequestCtx) -> Admitted {
    macro_rules! body {
        ($ty:ty) => {
            match decode_body::<$ty>(reader) {
                Ok(body) => body,
                Err(e) => return Admitted::Invalid(e.to_string(), ctx.permit),
            }
        };
    }
    let shard = shard.clone();
    let in_flight = match api {
        ApiKey::FindCoordinator => {
            let request = body!(FindCoordinatorRequest);
            let response = find_coordinator(&shard, &request);
            respond(ctx, async move { response })
        }
        ApiKey::JoinGroup => {
            let request = body!(JoinGroupRequest);
            let host = ctx.peer.ip().to_string();
            respond(ctx, async move {
                let group = request.group.clone();
                match forward(&shard, &group, GroupOp::Join(request, host)).await {
                    Ok(GroupReply::Join(r)) => r,
                    Ok(_) | Err(_) => JoinGroupResponse {
                        error: ErrorCode::COORDINATOR_NOT_AVAILABLE,
                        message: OWNER_SHUTTING_DOWN.into(),
                        generation_id: -1,
                        ..Default::default()
                    },
                }
            })
        }
        ApiKey::SyncGroup => {
            let request = body!(SyncGroupRequest);
            respond(ctx, async move {
                let group = request.group.clone();
                match forward(&shard, &group, GroupOp::Sync(request)).await {
                    Ok(GroupReply::Sync(r)) => r,
                    Ok(_) | Err(_) => SyncGroupResponse {
                        error: ErrorCode::COORDINATOR_NOT_AVAILABLE,
                        message: OWNER_SHUTTING_DOWN.into(),
                        ..Default::default()
                    },
                }
            })
        }
        ApiKey::Heartbeat => {
            let request = body!(HeartbeatRequest);
            respond(ctx, async move {
                let group = request.group.clone();
                match forward(&shard, &group, GroupOp::Heartbeat(request)).await {
                    Ok(GroupReply::Heartbeat(r)) => r,
                    Ok(_) | Err(_) => HeartbeatResponse {
                        error: ErrorCode::COORDINATOR_NOT_AVAILABLE,
                        message: OWNER_SHUTTING_DOWN.into(),
                    },
                }
            })
        }
        ApiKey::LeaveGroup => {
            let request = body!(LeaveGroupRequest);
            respond(ctx, async move {
                let group = request.group.clone();
                match forward(&shard, &group, GroupOp::Leave(request)).await {
                    Ok(GroupReply::Leave(r)) => r,
                    Ok(_) | Err(_) => LeaveGroupResponse {
                        error: ErrorCode::COORDINATOR_NOT_AVAILABLE,
                        message: OWNER_SHUTTING_DOWN.into(),
                    },
                }
            })
        }
        ApiKey::OffsetCommit => {
            let request = body!(OffsetCommitRequest);
            respond(ctx, async move {
                let group = request.group.clone();
                let shape: Vec<(String, Vec<u32>)> = request
                    .topics
                    .iter()
                    .map(|t| {
                        (
                            t.topic.clone(),
                            t.partitions.iter().map(|p| p.partition).collect(),
                        )
                    })
                    .collect();
                match forward(&shard, &group, GroupOp::Commit(request)).await {
                    Ok(GroupReply::Commit(r)) => r,
                    Ok(_) | Err(_) => OffsetCommitResponse {
                        topics: shape
                            .into_iter()
                            .map(|(topic, partitions)| OffsetCommitTopicResult {
                                topic,
                                partitions: partitions
                                    .into_iter()
                                    .map(|partition| OffsetCommitPartitionResult {
                                        partition,
                                        error: ErrorCode::COORDINATOR_NOT_AVAILABLE,
                                        message: OWNER_SHUTTING_DOWN.into(),
                                    })
                                    .collect(),
                            })
                            .collect(),
                    },
                }
            })
        }
        ApiKey::OffsetFetch => {
            let request = body!(OffsetFetchRequest);
            respond(ctx, async move {
                let group = request.group.clone();
                match forward(&shard, &group, GroupOp::Fetch(request)).await {
                    Ok(GroupReply::Fetch(r)) => r,
                    Ok(_) | Err(_) => OffsetFetchResponse {
                        error: ErrorCode::COORDINATOR_NOT_AVAILABLE,
                        message: OWNER_SHUTTING_DOWN.into(),
                        topics: Vec::new(),
                    },
                }
            })
        }
        ApiKey::ListGroups => {
            let _: ListGroupsRequest = body!(ListGroupsRequest);
            respond(ctx, list_groups(shard))
        }
        ApiKey::DescribeGroups => {
            let request = body!(DescribeGroupsRequest);
            respond(ctx, describe_groups(shard, request))
        }
        ApiKey::DeleteGroups => {
            let request = body!(DeleteGroupsRequest);
            respond(ctx, delete_groups(shard, request))
        }
        _ => unreachable!("only group APIs are routed here"),
    };
    Admitted::InFlight(in_flight)
}

fn find_coordinator(
    shard: &Rc<Shard>,
    request: &FindCoordinatorRequest,
) -> FindCoordinatorResponse {
    if let Err((error, message)) = group::check_group_id(&request.group) {
        return FindCoordinatorResponse {
            error,
            message,
            ..Default::default()
        };
    }
    if shard.cluster.config.cluster.is_some() {
        return find_in_cluster(shard, &request.group);
    }
    let coordinator = group::coordinator_of(shard, &request.group);
    let address = &shard.cluster.shard_addresses[coordinator];
    FindCoordinatorResponse {
        error: ErrorCode::NONE,
        message: String::new(),
        node_id: shard.cluster.config.node_id,
        shard: coordinator as u16,
        host: address.host.clone(),
        port: address.port,
    }
}

/// Cluster mode: the node (and shard) leading the group's `__consumer_offsets` partition, or
/// `COORDINATOR_NOT_AVAILABLE` (no view yet, no leader, or the offsets topic is being
/// created: the first FindCoordinator asks the controller for it).
fn find_in_cluster(shard: &Rc<Shard>, group: &str) -> FindCoordinatorResponse {
    let not_available = |message: String| {
        tracing::debug!(group, "no coordinator: {message}");
        FindCoordinatorResponse {
            error: ErrorCode::COORDINATOR_NOT_AVAILABLE,
            message,
            ..Default::default()
        }
    };
    let view = shard.view.borrow().clone();
    let Some(view) = view else {
        return not_available("this broker has not joined the cluster yet".into());
    };
    match group::coordinator_in(&view, group) {
        Ok(Some(c)) => FindCoordinatorResponse {
            error: ErrorCode::NONE,
            message: String::new(),
            node_id: c.node,
            shard: c.shard as u16,
            host: c.host,
            port: c.port,
        },
        Ok(None) => not_available(group::create_offsets_topic(shard, &view)),
        Err((error, message)) => {
            tracing::debug!(group, "no coordinator: {message}");
            FindCoordinatorResponse {
                error,
                message,
                ..Default::default()
            }
        }
    }
}

/// Sends `op` to `group`'s coordinator and waits for its answer (`Err`: it stopped).
async fn forward(shard: &Rc<Shard>, group: &str, op: GroupOp) -> Result<GroupReply, ()> {
    let target = group::coordinator_of(shard, group);
    let (reply, rx) = reply_channel();
    shard.send(target, ShardMsg::Group { op, reply }).await;
    rx.recv_async().await.map_err(|_| ())
}

async fn list_groups(shard: Rc<Shard>) -> ListGroupsResponse {
    let mut pending = Vec::new();
    for target in 0..shard.cluster.config.shards {
        let (reply, rx) = reply_channel();
        shard
            .send(
                target,
                ShardMsg::Group {
                    op: GroupOp::List,
                    reply,
                },
            )
            .await;
        pending.push(rx);
    }
    let mut groups = Vec::new();
    for rx in pending {
        if let Ok(GroupReply::List(mut some)) = rx.recv_async().await {
            groups.append(&mut some);
        }
    }
    groups.sort_by(|a, b| a.group.cmp(&b.group));
    ListGroupsResponse { groups }
}

async fn describe_groups(
    shard: Rc<Shard>,
    request: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    let mut groups = Vec::with_capacity(request.groups.len());
    for id in request.groups {
        if let Err((error, message)) = group::check_group_id(&id) {
            groups.push(DescribedGroup {
                group: id,
                error,
                message,
                state: group_state::DEAD.into(),
                generation_id: -1,
                ..Default::default()
            });
            continue;
        }
        let described = match forward(&shard, &id, GroupOp::Describe(id.clone())).await {
            Ok(GroupReply::Describe(d)) => d,
            Ok(_) | Err(_) => DescribedGroup {
                group: id,
                error: ErrorCode::COORDINATOR_NOT_AVAILABLE,
                message: OWNER_SHUTTING_DOWN.into(),
                state: group_state::DEAD.into(),
                generation_id: -1,
                ..Default::default()
            },
        };
        groups.push(described);
    }
    DescribeGroupsResponse { groups }
}

async fn delete_groups(shard: Rc<Shard>, request: DeleteGroupsRequest) -> DeleteGroupsResponse {
    let mut groups = Vec::with_capacity(request.groups.len());
    for id in request.groups {
        if let Err((error, message)) = group::check_group_id(&id) {
            groups.push(DeleteGroupResult {
                group: id,
                error,
                message,
            });
            continue;
        }
        let result = match forward(&shard, &id, GroupOp::Delete(id.clone())).await {
            Ok(GroupReply::Delete(d)) => d,
            Ok(_) | Err(_) => DeleteGroupResult {
                group: id,
                error: ErrorCode::COORDINATOR_NOT_AVAILABLE,
                message: OWNER_SHUTTING_DOWN.into(),
            },
        };
        groups.push(result);
    }
    DeleteGroupsResponse { groups }
}
