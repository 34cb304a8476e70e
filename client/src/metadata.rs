//! The metadata cache: brokers with each shard's address, and per topic where each
//! partition lives (leader node, its shard, leader epoch). Filled from Metadata responses;
//! entries are replaced when a response arrives and dropped when the broker says a topic is
//! unknown. Refreshing it is the client's job (`crate::client`: at most one refresh in
//! flight, `retry_backoff` apart, and at least every `metadata_max_age`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use sluice_proto::protocol::{ErrorCode, MetadataResponse};

/// Where one partition lives.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PartitionRoute {
    /// Leader node id, `-1` if none.
    pub(crate) leader: i32,
    /// The leader's shard that owns the partition.
    pub(crate) leader_shard: u16,
    /// The leader epoch the metadata named (for logs).
    pub(crate) leader_epoch: u32,
    /// The partition's own error in the metadata (`LEADER_NOT_AVAILABLE` during an
    /// election), `NONE` normally.
    pub(crate) error: ErrorCode,
}

/// One topic's partitions, by index.
#[derive(Debug, Clone)]
pub(crate) struct TopicRoute {
    pub(crate) partitions: Vec<PartitionRoute>,
}

#[derive(Debug, Clone)]
struct BrokerAddrs {
    shared: String,
    shards: HashMap<u16, String>,
}

/// The cache.
#[derive(Debug, Default)]
pub(crate) struct MetadataCache {
    brokers: HashMap<u32, BrokerAddrs>,
    topics: HashMap<String, Arc<TopicRoute>>,
}

impl MetadataCache {
    /// Takes in a Metadata response. `bootstrap_host` replaces unspecified hosts
    /// (`0.0.0.0`), which a broker listening on every interface may advertise.
    pub(crate) fn update(&mut self, response: &MetadataResponse, bootstrap_host: &str) {
        let addr = |host: &str, port: u16| {
            let host = match host.parse::<IpAddr>() {
                Ok(ip) if ip.is_unspecified() => bootstrap_host,
                _ if host.is_empty() => bootstrap_host,
                _ => host,
            };
            if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            }
        };
        if !response.brokers.is_empty() {
            self.brokers = response
                .brokers
                .iter()
                .map(|b| {
                    let shards = b
                        .shards
                        .iter()
                        .map(|s| (s.shard, addr(&s.host, s.port)))
                        .collect();
                    (
                        b.node_id,
                        BrokerAddrs {
                            shared: addr(&b.host, b.port),
                            shards,
                        },
                    )
                })
                .collect();
        }
        for topic in &response.topics {
            if topic.error != ErrorCode::NONE {
                self.topics.remove(&topic.name);
                continue;
            }
            let mut partitions: Vec<_> = topic.partitions.iter().collect();
            partitions.sort_by_key(|p| p.partition);
            let route = TopicRoute {
                partitions: partitions
                    .iter()
                    .map(|p| PartitionRoute {
                        leader: p.leader,
                        leader_shard: p.leader_shard,
                        leader_epoch: p.leader_epoch,
                        error: p.error,
                    })
                    .collect(),
            };
            self.topics.insert(topic.name.clone(), Arc::new(route));
        }
    }

    /// A cached topic.
    pub(crate) fn topic(&self, name: &str) -> Option<Arc<TopicRoute>> {
        self.topics.get(name).cloned()
    }

    /// Forgets a topic, so the next use asks the broker.
    pub(crate) fn forget(&mut self, name: &str) {
        self.topics.remove(name);
    }

    /// Names of the cached topics.
    pub(crate) fn topic_names(&self) -> impl Iterator<Item = &String> {
        self.topics.keys()
    }

    /// The address of the partition's leader: the shard owning it when `shard_aware` (the
    /// leader's shared address if that shard is not listed), else the leader's shared
    /// address. `None` without a leader, or when the leader is not among the brokers.
    pub(crate) fn leader_address(
        &self,
        route: &PartitionRoute,
        shard_aware: bool,
    ) -> Option<String> {
        let node = u32::try_from(route.leader).ok()?;
        let broker = self.brokers.get(&node)?;
        if !shard_aware {
            return Some(broker.shared.clone());
        }
        Some(
            broker
                .shards
                .get(&route.leader_shard)
                .unwrap_or(&broker.shared)
                .clone(),
        )
    }

    /// A broker's shared address.
    pub(crate) fn broker_address(&self, node: u32) -> Option<String> {
        self.brokers.get(&node).map(|b| b.shared.clone())
    }

    /// Every broker's shared address, by node id.
    pub(crate) fn broker_addresses(&self) -> Vec<String> {
        let mut nodes: Vec<(&u32, &BrokerAddrs)> = self.brokers.iter().collect();
        nodes.sort_by_key(|(id, _)| **id);
        nodes.into_iter().map(|(_, b)| b.shared.clone()).collect()
    }

    /// Whether `addr` is one of the brokers' shared or shard addresses.
    pub(crate) fn knows_address(&self, addr: &str) -> bool {
        self.brokers
            .values()
            .any(|b| b.shared == addr || b.shards.values().any(|s| s == addr))
    }
}

/// The host part of `host:port` (brackets of an IPv6 literal removed).
pub(crate) fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use sluice_proto::protocol::{BrokerMetadata, PartitionMetadata, ShardAddress, TopicMetadata};

    use super::*;

    #[test]
    fn routes_to_the_owning_shard() {
        let response = MetadataResponse {
            brokers: vec![BrokerMetadata {
                node_id: 0,
                host: "0.0.0.0".into(),
                port: 9092,
                shards: vec![
                    ShardAddress {
                        shard: 0,
                        host: "10.0.0.1".into(),
                        port: 9100,
                    },
                    ShardAddress {
                        shard: 1,
                        host: "10.0.0.1".into(),
                        port: 9101,
                    },
                ],
            }],
            topics: vec![TopicMetadata {
                name: "t".into(),
                partitions: vec![
                    PartitionMetadata {
                        partition: 1,
                        leader: 0,
                        leader_shard: 1,
                        ..Default::default()
                    },
                    PartitionMetadata {
                        partition: 0,
                        leader: 0,
                        leader_shard: 0,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
        };
        let mut cache = MetadataCache::default();
        cache.update(&response, "127.0.0.1");
        let route = cache.topic("t").expect("cached");
        assert_eq!(route.partitions.len(), 2);
        assert_eq!(
            cache.leader_address(&route.partitions[1], true).as_deref(),
            Some("10.0.0.1:9101")
        );
        assert_eq!(
            cache.leader_address(&route.partitions[1], false).as_deref(),
            Some("127.0.0.1:9092"),
            "not shard aware: the leader's shared address"
        );
        let unknown_shard = PartitionRoute {
            leader: 0,
            leader_shard: 7,
            leader_epoch: 0,
            error: ErrorCode::NONE,
        };
        assert_eq!(
            cache.leader_address(&unknown_shard, true).as_deref(),
            Some("127.0.0.1:9092")
        );
        let no_leader = PartitionRoute {
            leader: -1,
            ..unknown_shard
        };
        assert_eq!(cache.leader_address(&no_leader, true), None);
        let unknown_node = PartitionRoute {
            leader: 5,
            ..unknown_shard
        };
        assert_eq!(cache.leader_address(&unknown_node, true), None);
        assert!(cache.knows_address("10.0.0.1:9101"));
        assert!(!cache.knows_address("10.0.0.1:9999"));
        assert_eq!(host_of("[::1]:80"), "::1");
        assert_eq!(host_of("localhost:80"), "localhost");
    }
}
