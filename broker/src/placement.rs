//! Which shard owns a partition: `(crc32c(topic) + partition) % shards`. Every shard computes
//! it the same way, so no table is shared.

/// A shard's index.
pub(crate) type ShardId = usize;

/// The shard that owns `partition` of `topic`.
pub(crate) fn shard_for(topic: &str, partition: u32, shards: usize) -> ShardId {
    debug_assert!(shards > 0);
    let hash = u64::from(crc32c::crc32c(topic.as_bytes()));
    ((hash + u64::from(partition)) % shards as u64) as ShardId
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_partitions_spread_over_shards() {
        let owners: Vec<_> = (0..4).map(|p| shard_for("orders", p, 2)).collect();
        assert_ne!(owners[0], owners[1]);
        assert_eq!(owners[0], owners[2]);
        assert!(owners.iter().all(|&s| s < 2));
        assert_eq!(shard_for("orders", 3, 1), 0);
    }
}
