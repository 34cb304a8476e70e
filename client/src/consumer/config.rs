//! `ConsumerConfig`: how fetches long-poll and how much they bring back, and, for a
//! consumer in a group, the group's timings, assignors and commit policy.

use std::time::Duration;

use sluice_proto::protocol::{FETCH_BYTES_MAX, FETCH_WAIT_MS_MAX, GROUP_ID_BYTES_MAX};

use crate::error::ClientError;
use crate::group::assignor::Assignor;

/// Where a group member starts reading a partition the group has no committed offset for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetReset {
    /// The partition's first offset.
    Earliest,
    /// The high watermark: only records produced from now on.
    Latest,
}

/// How a [`crate::Consumer`] fetches, and how it behaves in a group.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Longest the broker holds a fetch waiting for `fetch_min_bytes` (also capped by the
    /// `poll` timeout).
    pub fetch_max_wait: Duration,
    /// The broker answers as soon as this many bytes are available.
    pub fetch_min_bytes: u32,
    /// Most bytes in one fetch response (the broker caps it at `FETCH_BYTES_MAX`).
    pub fetch_max_bytes: u32,
    /// Most bytes per partition in one fetch response (the first batch comes whole anyway).
    pub partition_max_bytes: u32,
    /// The consumer group, needed by [`crate::Consumer::subscribe`].
    pub group_id: Option<String>,
    /// The coordinator evicts the member after this long without a heartbeat.
    pub session_timeout: Duration,
    /// How long a rebalance waits for members to rejoin; a member must call `poll` at
    /// least this often or it is dropped from the next generation.
    pub rebalance_timeout: Duration,
    /// How often the background task sends a heartbeat (well under `session_timeout`).
    pub heartbeat_interval: Duration,
    /// Assignors this member supports, most preferred first; the group uses the first one
    /// every member supports (in the leader's order).
    pub assignors: Vec<Assignor>,
    /// Commit the positions of what `poll` returned every `auto_commit_interval` (checked at
    /// each `poll`), before partitions are revoked, and on `close`: at-least-once.
    pub auto_commit: bool,
    /// See `auto_commit`.
    pub auto_commit_interval: Duration,
    /// Where to start when the group has no committed offset for a partition.
    pub auto_offset_reset: OffsetReset,
}

impl Default for ConsumerConfig {
    /// 500 ms long poll, 1 byte minimum, 50 MiB per response, 1 MiB per partition; no group;
    /// group timings 10 s session, 30 s rebalance, 3 s heartbeat; assignors
    /// `cooperative-sticky` then `range` (cooperative first, so a rebalance only pauses the
    /// partitions that move; `range` lets the group roll over from older members); auto
    /// commit every 5 s; a new group starts at the earliest offset (so nothing produced
    /// before its first member joined is skipped).
    fn default() -> Self {
        ConsumerConfig {
            fetch_max_wait: Duration::from_millis(500),
            fetch_min_bytes: 1,
            fetch_max_bytes: FETCH_BYTES_MAX as u32,
            partition_max_bytes: 1024 * 1024,
            group_id: None,
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(3),
            assignors: vec![Assignor::CooperativeSticky, Assignor::Range],
            auto_commit: true,
            auto_commit_interval: Duration::from_secs(5),
            auto_offset_reset: OffsetReset::Earliest,
        }
    }
}

impl ConsumerConfig {
    pub(crate) fn validate(&self) -> Result<(), ClientError> {
        if self.fetch_max_wait.as_millis() > u128::from(FETCH_WAIT_MS_MAX) {
            return Err(ClientError::InvalidConfig(format!(
                "fetch_max_wait of {} ms is over the protocol's {FETCH_WAIT_MS_MAX} ms",
                self.fetch_max_wait.as_millis()
            )));
        }
        if self.fetch_max_bytes == 0 || self.partition_max_bytes == 0 {
            return Err(ClientError::InvalidConfig(
                "fetch_max_bytes and partition_max_bytes must be above zero".into(),
            ));
        }
        if let Some(group) = &self.group_id
            && (group.is_empty() || group.len() > GROUP_ID_BYTES_MAX)
        {
            return Err(ClientError::InvalidConfig(format!(
                "group_id must be 1 to {GROUP_ID_BYTES_MAX} bytes"
            )));
        }
        if self.heartbeat_interval.is_zero() || self.heartbeat_interval >= self.session_timeout {
            return Err(ClientError::InvalidConfig(
                "heartbeat_interval must be above zero and below session_timeout".into(),
            ));
        }
        if self.assignors.is_empty() {
            return Err(ClientError::InvalidConfig(
                "assignors must name at least one assignor".into(),
            ));
        }
        if self.auto_commit && self.auto_commit_interval.is_zero() {
            return Err(ClientError::InvalidConfig(
                "auto_commit_interval must be above zero".into(),
            ));
        }
        Ok(())
    }
}
