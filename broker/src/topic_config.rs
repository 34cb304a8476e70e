//! Topic configs (Kafka's names) and how they map to a partition's [`LogConfig`]: parsing and
//! validation for CreateTopics, the effective values for DescribeTopics, and the broker's
//! per-partition memory defaults.
//!
//! Memory of one partition: its write buffers (`write_chunks_max` chunks of
//! [`LOG_WRITE_CHUNK_BYTES`]: 4 MiB with the default `max.message.bytes`, more only when a
//! topic allows larger batches) plus its recent batches in the shard's tail cache (one
//! budget per shard, [`crate::limits::SHARD_TAIL_CACHE_BYTES`], shared by recency).

use std::collections::BTreeMap;

use sluice_proto::BATCH_BYTES_MAX;
use sluice_proto::protocol::ConfigEntry;
use sluice_proto::protocol::config::{self as names, TOPIC_CONFIGS};
use sluice_storage::{CompactionConfig, FlushPolicy, LogConfig, WriteBudget};

use crate::limits::{
    CLEANER_DEDUPE_BUFFER_BYTES, CLEANER_IO_BYTES_PER_S, LOG_WRITE_CHUNK_BYTES,
    LOG_WRITE_CHUNKS_DEFAULT, MAX_MESSAGE_BYTES_DEFAULT,
};

/// Configs set on a topic (only those that differ from the defaults are stored).
pub(crate) type TopicConfigs = BTreeMap<String, String>;

/// The broker default of each config, as DescribeTopics shows it (`-1`: none / unbounded).
fn default_value(name: &str) -> String {
    let week_ms = 7 * 24 * 3600 * 1000_u64;
    match name {
        names::RETENTION_MS => week_ms.to_string(),
        names::RETENTION_BYTES => "-1".into(),
        names::SEGMENT_BYTES => (1_u64 << 30).to_string(),
        names::SEGMENT_MS => week_ms.to_string(),
        names::MAX_MESSAGE_BYTES => MAX_MESSAGE_BYTES_DEFAULT.to_string(),
        names::CLEANUP_POLICY => "delete".into(),
        names::DELETE_RETENTION_MS => (24 * 3600 * 1000_u64).to_string(),
        names::MIN_CLEANABLE_DIRTY_RATIO => "0.5".into(),
        names::MIN_COMPACTION_LAG_MS => "0".into(),
        names::FLUSH_MESSAGES | names::FLUSH_MS => "-1".into(),
        names::MIN_INSYNC_REPLICAS => "1".into(),
        names::UNCLEAN_LEADER_ELECTION_ENABLE => "false".into(),
        _ => String::new(),
    }
}

/// Write-buffer bytes (whole chunks) a batch of `max_batch_bytes` may need: its chunks, each
/// losing up to a block to a carried partial block, plus the fresh chunk taken when one fills.
/// The shard's write budget must hold twice this for the largest batch (idle logs may keep
/// half of it; see `sluice_storage::WriteBudget`).
pub(crate) fn write_buffer_bytes_for_batch(max_batch_bytes: u32) -> usize {
    WriteBudget::bytes_for_batch(&LogConfig {
        max_batch_bytes: max_batch_bytes as usize,
        write_chunk_bytes: LOG_WRITE_CHUNK_BYTES,
        ..LogConfig::default()
    })
}

/// Checks requested configs: known names, no duplicates, parseable values, and a
/// consistent log configuration. Returns them as stored.
pub(crate) fn validate(entries: &[ConfigEntry]) -> Result<TopicConfigs, String> {
    let mut configs = TopicConfigs::new();
    for entry in entries {
        if !TOPIC_CONFIGS.contains(&entry.name.as_str()) {
            return Err(format!(
                "unknown config {:?} (known: {})",
                entry.name,
                TOPIC_CONFIGS.join(", ")
            ));
        }
        if configs
            .insert(entry.name.clone(), entry.value.trim().to_string())
            .is_some()
        {
            return Err(format!("config {:?} given twice", entry.name));
        }
    }
    log_config(&configs)?;
    min_insync_replicas(&configs)?;
    if let Some(v) = configs.get(names::UNCLEAN_LEADER_ELECTION_ENABLE)
        && v != "true"
        && v != "false"
    {
        return Err(format!(
            "{}={v:?} must be true or false",
            names::UNCLEAN_LEADER_ELECTION_ENABLE
        ));
    }
    Ok(configs)
}

/// Most `min.insync.replicas` (the largest replication factor).
pub(crate) const MIN_INSYNC_REPLICAS_MAX: u64 = 16;

/// A topic's `min.insync.replicas` (default 1): 1 to [`MIN_INSYNC_REPLICAS_MAX`].
pub(crate) fn min_insync_replicas(configs: &TopicConfigs) -> Result<u64, String> {
    let n = required_u64(configs, names::MIN_INSYNC_REPLICAS)?;
    if !(1..=MIN_INSYNC_REPLICAS_MAX).contains(&n) {
        return Err(format!(
            "{}={n} must be between 1 and {MIN_INSYNC_REPLICAS_MAX}",
            names::MIN_INSYNC_REPLICAS
        ));
    }
    Ok(n)
}

/// Every config with its effective value, by name.
pub(crate) fn effective(configs: &TopicConfigs) -> Vec<ConfigEntry> {
    TOPIC_CONFIGS
        .iter()
        .map(|name| ConfigEntry {
            name: (*name).to_string(),
            value: configs
                .get(*name)
                .cloned()
                .unwrap_or_else(|| default_value(name)),
        })
        .collect()
}

/// A number, or `-1` for "none".
fn optional_u64(configs: &TopicConfigs, name: &str) -> Result<Option<u64>, String> {
    let value = configs
        .get(name)
        .cloned()
        .unwrap_or_else(|| default_value(name));
    if value == "-1" {
        return Ok(None);
    }
    value
        .parse::<u64>()
        .map(Some)
        .map_err(|_| format!("{name}={value:?} is not a non-negative integer or -1"))
}

fn required_u64(configs: &TopicConfigs, name: &str) -> Result<u64, String> {
    optional_u64(configs, name)?.ok_or_else(|| format!("{name} cannot be -1"))
}

/// The partition log configuration for a topic's configs.
pub(crate) fn log_config(configs: &TopicConfigs) -> Result<LogConfig, String> {
    let policy = configs
        .get(names::CLEANUP_POLICY)
        .map_or("delete", String::as_str);
    let mut policies: Vec<&str> = policy.split(',').map(str::trim).collect();
    policies.sort_unstable();
    let (compact, delete) = match policies[..] {
        ["delete"] => (false, true),
        ["compact"] => (true, false),
        ["compact", "delete"] => (true, true),
        _ => {
            return Err(format!(
                "{}={policy:?} must be delete, compact or compact,delete",
                names::CLEANUP_POLICY
            ));
        }
    };
    let ratio_text = configs
        .get(names::MIN_CLEANABLE_DIRTY_RATIO)
        .cloned()
        .unwrap_or_else(|| default_value(names::MIN_CLEANABLE_DIRTY_RATIO));
    let ratio = ratio_text
        .parse::<f64>()
        .ok()
        .filter(|r| (0.0..=1.0).contains(r))
        .ok_or_else(|| {
            format!(
                "{}={ratio_text:?} must be a number in [0, 1]",
                names::MIN_CLEANABLE_DIRTY_RATIO
            )
        })?;
    // The cleaner's memory and I/O bounds are the broker's (`limits.rs`).
    // Checked whatever the policy, as Kafka does.
    let delete_retention_ms = required_u64(configs, names::DELETE_RETENTION_MS)?;
    let min_compaction_lag_ms = required_u64(configs, names::MIN_COMPACTION_LAG_MS)?;
    let compaction = compact.then_some(CompactionConfig {
        delete_retention_ms,
        min_cleanable_dirty_ratio: ratio,
        min_compaction_lag_ms,
        dedupe_buffer_bytes: CLEANER_DEDUPE_BUFFER_BYTES,
        io_bytes_per_s: Some(CLEANER_IO_BYTES_PER_S),
    });
    let max_message = required_u64(configs, names::MAX_MESSAGE_BYTES)?;
    if max_message == 0 || max_message > u64::from(BATCH_BYTES_MAX) {
        return Err(format!(
            "{}={max_message} must be between 1 and {BATCH_BYTES_MAX}",
            names::MAX_MESSAGE_BYTES
        ));
    }
    let max_batch_bytes = max_message as usize;
    let segment_ms = optional_u64(configs, names::SEGMENT_MS)?;
    if segment_ms == Some(0) {
        return Err(format!("{} must be positive", names::SEGMENT_MS));
    }
    let messages = optional_u64(configs, names::FLUSH_MESSAGES)?;
    let ms = optional_u64(configs, names::FLUSH_MS)?;
    if messages == Some(0) || ms == Some(0) {
        return Err("flush.messages and flush.ms must be positive (or -1)".into());
    }
    let flush = if messages.is_none() && ms.is_none() {
        FlushPolicy::EveryBatch
    } else {
        FlushPolicy::Interval { messages, ms }
    };
    // Enough chunks that a whole batch fits beside a filling one.
    let write_chunks_max = LOG_WRITE_CHUNKS_DEFAULT
        .max(write_buffer_bytes_for_batch(max_message as u32) / LOG_WRITE_CHUNK_BYTES);
    let config = LogConfig {
        segment_bytes: required_u64(configs, names::SEGMENT_BYTES)?,
        segment_ms,
        // `compact` alone deletes nothing by age or size (Kafka's rule).
        retention_ms: optional_u64(configs, names::RETENTION_MS)?.filter(|_| delete),
        retention_bytes: optional_u64(configs, names::RETENTION_BYTES)?.filter(|_| delete),
        compaction,
        flush,
        max_batch_bytes,
        write_chunk_bytes: LOG_WRITE_CHUNK_BYTES,
        write_chunks_max,
        // Not used: the shard's logs share its tail-cache budget.
        tail_cache_bytes: 0,
        // Preallocate in steps no larger than a small segment.
        preallocate_bytes: 16 << 20,
        ..LogConfig::default()
    };
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, value: &str) -> ConfigEntry {
        ConfigEntry {
            name: name.into(),
            value: value.into(),
        }
    }

    #[test]
    fn defaults_make_a_valid_log() {
        let config = log_config(&TopicConfigs::new()).expect("defaults");
        assert_eq!(config.flush, FlushPolicy::EveryBatch);
        assert_eq!(config.max_batch_bytes, MAX_MESSAGE_BYTES_DEFAULT);
        assert_eq!(config.write_chunks_max, LOG_WRITE_CHUNKS_DEFAULT);
        assert_eq!(effective(&TopicConfigs::new()).len(), TOPIC_CONFIGS.len());
    }

    #[test]
    fn parses_and_rejects() {
        let ok = validate(&[
            entry("retention.ms", "-1"),
            entry("flush.ms", "100"),
            entry("max.message.bytes", &BATCH_BYTES_MAX.to_string()),
            entry("cleanup.policy", "compact"),
        ])
        .expect("valid");
        let config = log_config(&ok).expect("valid");
        assert_eq!(config.retention_ms, None);
        assert_eq!(
            config.flush,
            FlushPolicy::Interval {
                messages: None,
                ms: Some(100)
            }
        );
        assert!(validate(&[entry("bogus", "1")]).is_err());
        assert!(validate(&[entry("retention.ms", "soon")]).is_err());
        assert!(validate(&[entry("segment.bytes", "10")]).is_err());
        assert!(validate(&[entry("cleanup.policy", "shred")]).is_err());
        assert!(validate(&[entry("cleanup.policy", "compact,shred")]).is_err());
        assert!(validate(&[entry("min.cleanable.dirty.ratio", "1.5")]).is_err());
        assert!(validate(&[entry("delete.retention.ms", "-1")]).is_err());
        let compact = log_config(
            &validate(&[
                entry("cleanup.policy", "compact"),
                entry("delete.retention.ms", "100"),
                entry("min.cleanable.dirty.ratio", "0.25"),
            ])
            .expect("valid"),
        )
        .expect("valid");
        let c = compact.compaction.expect("compacted");
        assert_eq!(c.delete_retention_ms, 100);
        assert_eq!(c.min_cleanable_dirty_ratio, 0.25);
        assert_eq!(compact.retention_ms, None, "compact alone deletes nothing");
        let both =
            log_config(&validate(&[entry("cleanup.policy", "delete,compact")]).expect("valid"))
                .expect("valid");
        assert!(both.compaction.is_some());
        assert!(
            both.retention_ms.is_some(),
            "compact,delete applies retention"
        );
        let plain = log_config(&TopicConfigs::new()).expect("valid");
        assert!(plain.compaction.is_none());
        assert!(validate(&[entry("flush.ms", "1"), entry("flush.ms", "2")]).is_err());
    }
}
