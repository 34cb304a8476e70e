//! The table of APIs: key, name, supported versions. One table drives dispatch and the
//! ApiVersions answer.

use super::messages::ApiVersionRange;

/// An API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ApiKey {
    /// Handshake.
    ApiVersions = 0,
    /// Brokers, shards, partition placement.
    Metadata = 1,
    /// Create topics.
    CreateTopics = 2,
    /// Delete topics.
    DeleteTopics = 3,
    /// List topic names.
    ListTopics = 4,
    /// Topic configs and partition offsets.
    DescribeTopics = 5,
    /// Append batches.
    Produce = 6,
    /// Read batches.
    Fetch = 7,
    /// Earliest, latest, or by-timestamp offsets.
    ListOffsets = 8,
    /// A producer id and epoch for the idempotent producer.
    InitProducerId = 9,
    /// The shard coordinating a consumer group.
    FindCoordinator = 10,
    /// Join a consumer group (open or join a rebalance).
    JoinGroup = 11,
    /// Hand out (leader) or receive the generation's assignments.
    SyncGroup = 12,
    /// Keep a member alive; learn about rebalances.
    Heartbeat = 13,
    /// Leave a consumer group.
    LeaveGroup = 14,
    /// Commit consumed offsets for a group.
    OffsetCommit = 15,
    /// Fetch a group's committed offsets.
    OffsetFetch = 16,
    /// List consumer groups.
    ListGroups = 17,
    /// Describe consumer groups: state, members, assignments.
    DescribeGroups = 18,
    /// Delete empty consumer groups and their committed offsets.
    DeleteGroups = 19,
    /// Add partitions to existing topics.
    CreatePartitions = 20,
    /// Move every replica off a broker (cluster mode).
    DecommissionBroker = 21,
}

/// One row of the API table.
#[derive(Debug, Clone, Copy)]
pub struct ApiSpec {
    /// The key.
    pub key: ApiKey,
    /// Its name in logs.
    pub name: &'static str,
    /// Oldest version supported.
    pub min_version: u16,
    /// Newest version supported.
    pub max_version: u16,
}

/// Every API this build speaks.
pub const APIS: &[ApiSpec] = &[
    spec(ApiKey::ApiVersions, "ApiVersions"),
    spec(ApiKey::Metadata, "Metadata"),
    spec(ApiKey::CreateTopics, "CreateTopics"),
    spec(ApiKey::DeleteTopics, "DeleteTopics"),
    spec(ApiKey::ListTopics, "ListTopics"),
    spec(ApiKey::DescribeTopics, "DescribeTopics"),
    spec(ApiKey::Produce, "Produce"),
    spec(ApiKey::Fetch, "Fetch"),
    spec(ApiKey::ListOffsets, "ListOffsets"),
    spec(ApiKey::InitProducerId, "InitProducerId"),
    spec(ApiKey::FindCoordinator, "FindCoordinator"),
    spec(ApiKey::JoinGroup, "JoinGroup"),
    spec(ApiKey::SyncGroup, "SyncGroup"),
    spec(ApiKey::Heartbeat, "Heartbeat"),
    spec(ApiKey::LeaveGroup, "LeaveGroup"),
    spec(ApiKey::OffsetCommit, "OffsetCommit"),
    spec(ApiKey::OffsetFetch, "OffsetFetch"),
    spec(ApiKey::ListGroups, "ListGroups"),
    spec(ApiKey::DescribeGroups, "DescribeGroups"),
    spec(ApiKey::DeleteGroups, "DeleteGroups"),
    spec(ApiKey::CreatePartitions, "CreatePartitions"),
    spec(ApiKey::DecommissionBroker, "DecommissionBroker"),
];

const fn spec(key: ApiKey, name: &'static str) -> ApiSpec {
    ApiSpec {
        key,
        name,
        min_version: 0,
        max_version: 0,
    }
}

const _: () = {
    // Keys are listed in increasing order, each once.
    let mut i = 1;
    while i < APIS.len() {
        assert!((APIS[i - 1].key as u16) < (APIS[i].key as u16));
        i += 1;
    }
};

impl ApiKey {
    /// The key for a raw value, if known.
    pub fn from_u16(raw: u16) -> Option<ApiKey> {
        APIS.iter()
            .find(|spec| spec.key as u16 == raw)
            .map(|spec| spec.key)
    }

    /// This API's row of the table.
    pub fn spec(self) -> &'static ApiSpec {
        APIS.iter()
            .find(|spec| spec.key == self)
            .expect("every API key has a row in APIS")
    }

    /// Whether `version` of this API is supported.
    pub fn supports(self, version: u16) -> bool {
        let spec = self.spec();
        (spec.min_version..=spec.max_version).contains(&version)
    }
}

/// The table as ApiVersions reports it.
pub fn api_version_ranges() -> Vec<ApiVersionRange> {
    APIS.iter()
        .map(|s| ApiVersionRange {
            api_key: s.key as u16,
            min_version: s.min_version,
            max_version: s.max_version,
        })
        .collect()
}
