//! Group admin on [`Client`]: list, describe and delete groups, read committed offsets, and
//! reset them (an admin commit, accepted only while the group has no members). These go to
//! the bootstrap connection; the broker forwards them to the group's coordinator shard.

use std::collections::BTreeMap;

use sluice_proto::protocol::{
    ApiKey, ConsumerAssignment, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, DescribedGroup, ErrorCode, GENERATION_NONE, ListGroupsRequest,
    ListGroupsResponse, ListedGroup, OffsetCommitPartition, OffsetCommitRequest,
    OffsetCommitResponse, OffsetCommitTopic, OffsetFetchRequest, OffsetFetchResponse,
    OffsetFetchTopic, group_state,
};

use crate::client::Client;
use crate::error::{ClientError, group_error};
use crate::topic_partition::TopicPartition;

/// A committed offset with its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    /// The next offset the group reads.
    pub offset: u64,
    /// Metadata committed with it.
    pub metadata: String,
}

impl Client {
    /// Every group the cluster knows, by id.
    pub async fn list_groups(&self) -> Result<Vec<ListedGroup>, ClientError> {
        let response: ListGroupsResponse = self
            .admin(ApiKey::ListGroups, &ListGroupsRequest {})
            .await?;
        Ok(response.groups)
    }

    /// A group's state, protocol, generation and members (with their assignments; see
    /// [`decode_assignment`]).
    pub async fn describe_group(&self, group: &str) -> Result<DescribedGroup, ClientError> {
        let request = DescribeGroupsRequest {
            groups: vec![group.to_owned()],
        };
        let response: DescribeGroupsResponse = self.admin(ApiKey::DescribeGroups, &request).await?;
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
        let response: DeleteGroupsResponse = self.admin(ApiKey::DeleteGroups, &request).await?;
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
        let response: OffsetFetchResponse = self.admin(ApiKey::OffsetFetch, &request).await?;
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
        let response: OffsetCommitResponse = self.admin(ApiKey::OffsetCommit, &request).await?;
        commit_result(group, "", GENERATION_NONE, &response)
    }
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
