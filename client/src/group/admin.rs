//! Group admin on [`Client`]: list, describe and delete groups, read committed offsets, and
//! reset them (an admin commit, accepted only while the group has no members).
//!
//! A group's requests go to its coordinator, found with FindCoordinator against any live
//! broker; on `NOT_COORDINATOR` / `COORDINATOR_NOT_AVAILABLE` or a dead connection the
//! coordinator is found again and the request retried, up to [`COORDINATOR_ATTEMPTS_MAX`]
//! attempts `retry_backoff` apart. ListGroups asks every broker and merges the answers.

use std::collections::BTreeMap;

use sluice_proto::protocol::{
    ApiKey, ConsumerAssignment, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, DescribedGroup, ErrorCode, GENERATION_NONE, ListGroupsRequest,
    ListGroupsResponse, ListedGroup, OffsetCommitPartition, OffsetCommitRequest,
    OffsetCommitResponse, OffsetCommitTopic, OffsetFetchRequest, OffsetFetchResponse,
    OffsetFetchTopic, group_state,
};

use sluice_proto::protocol::{FindCoordinatorRequest, FindCoordinatorResponse, Wire};

use crate::client::Client;
use crate::error::{ClientError, group_error};
use crate::limits::COORDINATOR_ATTEMPTS_MAX;
use crate::metadata::host_of;
use crate::topic_partition::TopicPartition;

/// A committed offset with its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    /// The next offset the group reads.
    pub offset: u64,
    /// Metadata committed with it.
    pub metadata: String,
}

/// The answer of [`Client::list_groups`]: the groups of the brokers that answered, and the
/// brokers that did not (Kafka's `ListConsumerGroupsResult` valid/errors split).
#[derive(Debug, Clone, Default)]
pub struct GroupListing {
    /// Every group listed by a broker that answered, sorted by id.
    pub groups: Vec<ListedGroup>,
    /// The brokers that could not be asked or did not answer (address, error); the groups
    /// they coordinate are missing from [`GroupListing::groups`].
    pub unreachable: Vec<(String, ClientError)>,
}

impl Client {
    /// Every group the cluster knows, by id: each broker lists the groups it coordinates,
    /// so every broker the metadata names is asked. Like Kafka's AdminClient, a broker that
    /// cannot answer does not fail the call: its address and error are in
    /// [`GroupListing::unreachable`] (its groups are missing from the listing). Fails only
    /// when no broker answered (with the first broker's error).
    pub async fn list_groups(&self) -> Result<GroupListing, ClientError> {
        // Fresh broker list; a failure leaves the cached one, which is still worth asking.
        let _ = self.refresh_and_wait(None).await;
        let brokers = self.broker_addresses();
        if brokers.is_empty() {
            let response: ListGroupsResponse = self
                .admin_read(ApiKey::ListGroups, &ListGroupsRequest {})
                .await?;
            return Ok(GroupListing {
                groups: response.groups,
                unreachable: Vec::new(),
            });
        }
        let mut groups: BTreeMap<String, ListedGroup> = BTreeMap::new();
        let mut unreachable = Vec::new();
        let mut answered = 0usize;
        for addr in brokers {
            let response = match self.connection(&addr).await {
                Ok(conn) => {
                    conn.call::<_, ListGroupsResponse>(
                        ApiKey::ListGroups,
                        &ListGroupsRequest {},
                        self.request_timeout(),
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            match response {
                Ok(response) => {
                    answered += 1;
                    for g in response.groups {
                        groups.entry(g.group.clone()).or_insert(g);
                    }
                }
                Err(e) => {
                    tracing::debug!(broker = %addr, error = %e, "ListGroups: broker did not answer");
                    unreachable.push((addr, e));
                }
            }
        }
        if answered == 0 && !unreachable.is_empty() {
            return Err(unreachable.swap_remove(0).1);
        }
        Ok(GroupListing {
            groups: groups.into_values().collect(),
            unreachable,
        })
    }

    /// The address of `group`'s coordinator: FindCoordinator against any live broker; its
    /// shard's own address when shard aware, else the coordinator node's shared address.
    pub(crate) async fn coordinator_address(&self, group: &str) -> Result<String, ClientError> {
        let request = FindCoordinatorRequest {
            group: group.to_owned(),
        };
        let (answered, found): (String, FindCoordinatorResponse) = self
            .admin_read_at(ApiKey::FindCoordinator, &request)
            .await?;
        if found.error != ErrorCode::NONE {
            return Err(group_error(found.error, &found.message, group, "", -1));
        }
        let direct = || {
            let unspecified = found.host.is_empty()
                || found
                    .host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_unspecified());
            let host = if unspecified {
                host_of(&answered).to_owned()
            } else {
                found.host.clone()
            };
            if host.contains(':') {
                format!("[{host}]:{}", found.port)
            } else {
                format!("{host}:{}", found.port)
            }
        };
        let addr = if self.config().shard_aware && found.port != 0 {
            direct()
        } else if let Some(addr) = self.broker_address(found.node_id) {
            addr
        } else {
            // A node the cached metadata does not name yet.
            let _ = self.refresh_and_wait(None).await;
            match self.broker_address(found.node_id) {
                Some(addr) => addr,
                None if found.port != 0 => direct(),
                None => answered,
            }
        };
        tracing::debug!(
            group,
            addr,
            node = found.node_id,
            shard = found.shard,
            "coordinator found"
        );
        Ok(addr)
    }

    /// A request to `group`'s coordinator, retried on another coordinator after
    /// `NOT_COORDINATOR` / `COORDINATOR_NOT_AVAILABLE` (in the response header, or in the
    /// body as `moved` reports it) or a connection failure.
    async fn coordinator_call<Req: Wire, Resp: Wire>(
        &self,
        group: &str,
        api: ApiKey,
        body: &Req,
        moved: fn(&Resp) -> Option<(ErrorCode, String)>,
    ) -> Result<Resp, ClientError> {
        let mut attempt = 1;
        loop {
            let result = async {
                let addr = self.coordinator_address(group).await?;
                let conn = self.connection(&addr).await?;
                let response: Resp = conn.call(api, body, self.request_timeout()).await?;
                if let Some((code, message)) = moved(&response) {
                    return Err(ClientError::Broker { code, message });
                }
                Ok(response)
            }
            .await;
            match result {
                Err(e) if e.wants_new_coordinator() && attempt < COORDINATOR_ATTEMPTS_MAX => {
                    tracing::debug!(group, api = api.spec().name, attempt, error = %e,
                        "coordinator moved or unreachable; finding it again");
                    attempt += 1;
                    tokio::time::sleep(self.retry_backoff()).await;
                }
                other => return other,
            }
        }
    }

    /// A group's state, protocol, generation and members (with their assignments; see
    /// [`decode_assignment`]).
    pub async fn describe_group(&self, group: &str) -> Result<DescribedGroup, ClientError> {
        let request = DescribeGroupsRequest {
            groups: vec![group.to_owned()],
        };
        let response: DescribeGroupsResponse = self
            .coordinator_call(
                group,
                ApiKey::DescribeGroups,
                &request,
                |r: &DescribeGroupsResponse| {
                    r.groups
                        .iter()
                        .find(|g| is_moved(g.error))
                        .map(|g| (g.error, g.message.clone()))
                },
            )
            .await?;
        let found = response
            .groups
            .into_iter()
            .find(|g| g.group == group)
            .ok_or_else(|| ClientError::GroupNotFound {
                group: group.to_owned(),
            })?;
        if found.error != ErrorCode::NONE {
            return Err(group_error(found.error, &found.message, group, "", -1));
        }
        // Like Kafka, a coordinator may describe a group it does not have as `Dead`.
        if found.state == group_state::DEAD && found.members.is_empty() {
            return Err(ClientError::GroupNotFound {
                group: group.to_owned(),
            });
        }
        Ok(found)
    }

    /// Deletes a group with no members, and its committed offsets.
    pub async fn delete_group(&self, group: &str) -> Result<(), ClientError> {
        let request = DeleteGroupsRequest {
            groups: vec![group.to_owned()],
        };
        let response: DeleteGroupsResponse = self
            .coordinator_call(
                group,
                ApiKey::DeleteGroups,
                &request,
                |r: &DeleteGroupsResponse| {
                    r.groups
                        .iter()
                        .find(|g| is_moved(g.error))
                        .map(|g| (g.error, g.message.clone()))
                },
            )
            .await?;
        match response.groups.iter().find(|g| g.group == group) {
            Some(g) if g.error == ErrorCode::NONE => Ok(()),
            Some(g) => Err(group_error(g.error, &g.message, group, "", -1)),
            None => Err(ClientError::GroupNotFound {
                group: group.to_owned(),
            }),
        }
    }

    /// The group's committed offsets: for `partitions`, or every one it has when empty.
    /// Partitions without a committed offset are left out.
    pub async fn committed_offsets(
        &self,
        group: &str,
        partitions: &[TopicPartition],
    ) -> Result<BTreeMap<TopicPartition, CommittedOffset>, ClientError> {
        let request = offset_fetch_request(group, partitions);
        let response: OffsetFetchResponse = self
            .coordinator_call(group, ApiKey::OffsetFetch, &request, offset_fetch_moved)
            .await?;
        offsets_from(group, response)
    }

    /// Sets a group's committed offsets (`sluice group reset-offsets`). The broker refuses
    /// with [`ClientError::NonEmptyGroup`] while the group has members.
    pub async fn reset_offsets(
        &self,
        group: &str,
        offsets: &BTreeMap<TopicPartition, u64>,
    ) -> Result<(), ClientError> {
        let request = offset_commit_request(
            group,
            GENERATION_NONE,
            "",
            offsets.iter().map(|(tp, o)| (tp, *o, "")),
        );
        let response: OffsetCommitResponse = self
            .coordinator_call(group, ApiKey::OffsetCommit, &request, offset_commit_moved)
            .await?;
        commit_result(group, "", GENERATION_NONE, &response)
    }
}

/// Whether a group error code means "find the coordinator again".
pub(crate) fn is_moved(code: ErrorCode) -> bool {
    code == ErrorCode::NOT_COORDINATOR
        || code == ErrorCode::COORDINATOR_NOT_AVAILABLE
        || code == ErrorCode::COORDINATOR_LOAD_IN_PROGRESS
}

/// A coordinator move reported in an OffsetFetch response.
pub(crate) fn offset_fetch_moved(r: &OffsetFetchResponse) -> Option<(ErrorCode, String)> {
    is_moved(r.error).then(|| (r.error, r.message.clone()))
}

/// A coordinator move reported in an OffsetCommit response (per partition, like Kafka).
pub(crate) fn offset_commit_moved(r: &OffsetCommitResponse) -> Option<(ErrorCode, String)> {
    r.topics
        .iter()
        .flat_map(|t| t.partitions.iter())
        .find(|p| is_moved(p.error))
        .map(|p| (p.error, p.message.clone()))
}

/// The partitions in an encoded assignment (from [`DescribedGroup`] members); empty bytes
/// (no assignment yet) decode to none.
pub fn decode_assignment(bytes: &[u8]) -> Result<Vec<TopicPartition>, ClientError> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let assignment = ConsumerAssignment::from_bytes(bytes)?;
    Ok(assignment
        .partitions
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| TopicPartition::new(t.topic.clone(), *p))
        })
        .collect())
}

pub(crate) fn offset_fetch_request(
    group: &str,
    partitions: &[TopicPartition],
) -> OffsetFetchRequest {
    let mut by_topic: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for tp in partitions {
        by_topic.entry(&tp.topic).or_default().push(tp.partition);
    }
    OffsetFetchRequest {
        group: group.to_owned(),
        topics: by_topic
            .into_iter()
            .map(|(topic, partitions)| OffsetFetchTopic {
                topic: topic.to_owned(),
                partitions,
            })
            .collect(),
    }
}

pub(crate) fn offsets_from(
    group: &str,
    response: OffsetFetchResponse,
) -> Result<BTreeMap<TopicPartition, CommittedOffset>, ClientError> {
    if response.error != ErrorCode::NONE {
        return Err(group_error(
            response.error,
            &response.message,
            group,
            "",
            -1,
        ));
    }
    let mut out = BTreeMap::new();
    for t in response.topics {
        for p in t.partitions {
            if p.error != ErrorCode::NONE {
                return Err(ClientError::from_code(p.error, "", &t.topic));
            }
            if let Ok(offset) = u64::try_from(p.offset) {
                out.insert(
                    TopicPartition::new(t.topic.clone(), p.partition),
                    CommittedOffset {
                        offset,
                        metadata: p.metadata,
                    },
                );
            }
        }
    }
    Ok(out)
}

pub(crate) fn offset_commit_request<'a>(
    group: &str,
    generation_id: i32,
    member_id: &str,
    offsets: impl Iterator<Item = (&'a TopicPartition, u64, &'a str)>,
) -> OffsetCommitRequest {
    let mut by_topic: BTreeMap<&str, Vec<OffsetCommitPartition>> = BTreeMap::new();
    for (tp, offset, metadata) in offsets {
        by_topic
            .entry(&tp.topic)
            .or_default()
            .push(OffsetCommitPartition {
                partition: tp.partition,
                offset: i64::try_from(offset).unwrap_or(i64::MAX),
                metadata: metadata.to_owned(),
            });
    }
    OffsetCommitRequest {
        group: group.to_owned(),
        generation_id,
        member_id: member_id.to_owned(),
        topics: by_topic
            .into_iter()
            .map(|(topic, partitions)| OffsetCommitTopic {
                topic: topic.to_owned(),
                partitions,
            })
            .collect(),
    }
}

/// The first per-partition error of a commit, typed.
pub(crate) fn commit_result(
    group: &str,
    member_id: &str,
    generation: i32,
    response: &OffsetCommitResponse,
) -> Result<(), ClientError> {
    for t in &response.topics {
        for p in &t.partitions {
            if p.error != ErrorCode::NONE {
                if p.error == ErrorCode::UNKNOWN_TOPIC_OR_PARTITION {
                    return Err(ClientError::from_code(p.error, &p.message, &t.topic));
                }
                return Err(group_error(
                    p.error, &p.message, group, member_id, generation,
                ));
            }
        }
    }
    Ok(())
}
