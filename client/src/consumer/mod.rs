//! The consumer: a position per assigned partition; `poll` sends one long-polling fetch per
//! destination connection, decodes the batches, and advances the positions past what it
//! returns. Positions only move when a whole poll round succeeds, so an error never loses
//! records: the next poll fetches them again.
//!
//! Partitions come from [`Consumer::assign`] (manual) or [`Consumer::subscribe`] (a consumer
//! group, see `crate::group::member`): then `poll` also joins and rejoins the group, starts
//! new partitions at the committed offset (or `auto_offset_reset`), and auto-commits the
//! positions of what it returned. At-least-once: positions are committed before partitions
//! are revoked, so a partition's next owner starts at or before the first record this
//! consumer has not returned.
//!
//! Like Kafka's consumer, `poll` keeps one fetch round ahead: when it returns records it
//! starts the next round from the new positions in the background, and the next `poll`
//! uses it if the positions are still the same (no seek, assignment change or rebalance in
//! between; otherwise it is dropped and a fresh round is sent). The application's handling
//! of one batch of records then overlaps the broker's read and the transfer of the next.

mod config;
mod decode;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use sluice_proto::protocol::{
    ApiKey, EARLIEST_TIMESTAMP, ErrorCode, FetchPartition, FetchRequest, FetchResponse, FetchTopic,
    LATEST_TIMESTAMP,
};
use tokio::task::JoinSet;

pub use config::{ConsumerConfig, OffsetReset};
pub use decode::ConsumerRecord;

use crate::client::Client;
use crate::config::millis_u32;
use crate::error::ClientError;
use crate::group::admin::CommittedOffset;
use crate::group::member::{GroupMember, GroupSettings, RebalanceListener};
use crate::limits::CONSUMER_RETRY_BACKOFF_MS;
use crate::topic_partition::TopicPartition;

/// Where [`Consumer::seek`] moves a partition's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeekTo {
    /// The partition's first offset.
    Beginning,
    /// The high watermark: only records produced from now on.
    End,
    /// This offset.
    Offset(u64),
    /// The first record with a timestamp at or after this (ms), or the end.
    Timestamp(i64),
}

/// Reads assigned partitions. Not shared: one consumer per task.
pub struct Consumer {
    client: Client,
    config: ConsumerConfig,
    config_error: Option<ClientError>,
    /// Next offset to read per assigned partition; `None` until the first poll or seek.
    positions: BTreeMap<TopicPartition, Option<u64>>,
    /// The group membership once subscribed.
    group: Option<GroupMember>,
    /// Behind a mutex only so `Consumer` is `Sync` (its futures are `Send`); always reached
    /// through `&mut self`.
    listener: std::sync::Mutex<Box<dyn RebalanceListener>>,
    /// Positions last committed (auto-commit sends only what changed).
    committed: BTreeMap<TopicPartition, u64>,
    last_auto_commit: Instant,
    /// The round started ahead by the last `poll` that returned records.
    prefetch: Option<Prefetch>,
}

/// A fetch round started ahead from `positions` (at most one: its memory is one round's).
struct Prefetch {
    positions: BTreeMap<TopicPartition, u64>,
    task: tokio::task::JoinHandle<Result<Round, ClientError>>,
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        // Unused (positions moved, or the consumer is gone): stop it.
        self.task.abort();
    }
}

/// What a fetch round needs from the consumer's config.
#[derive(Clone, Copy)]
struct FetchSettings {
    min_bytes: u32,
    max_bytes: u32,
    partition_max_bytes: u32,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("positions", &self.positions)
            .field("group", &self.group)
            .finish()
    }
}

/// What one fetch round gives: the records, the new positions, a retriable error some
/// fetches hit (their partitions are not advanced), and whether a leader move was seen.
type Round = (Vec<ConsumerRecord>, Vec<Fetched>, Option<ClientError>, bool);

/// What one fetch round produced for one partition.
struct Fetched {
    tp: TopicPartition,
    next: u64,
}

impl Consumer {
    /// A consumer over `client`. An invalid config is reported by `poll`.
    pub fn new(client: Client, config: ConsumerConfig) -> Consumer {
        let config_error = config.validate().err();
        Consumer {
            client,
            config,
            config_error,
            positions: BTreeMap::new(),
            group: None,
            listener: std::sync::Mutex::new(Box::new(())),
            committed: BTreeMap::new(),
            last_auto_commit: Instant::now(),
            prefetch: None,
        }
    }

    /// Joins the consumer group `group_id` (from the config) subscribed to `topics`; the
    /// group shares the topics' partitions among its members. The join itself happens in
    /// the next `poll`, which also rejoins on rebalances. `listener` hears about assigned
    /// and revoked partitions. Replaces any manual assignment.
    pub fn subscribe(
        &mut self,
        topics: Vec<String>,
        listener: impl RebalanceListener + 'static,
    ) -> Result<(), ClientError> {
        if let Some(e) = &self.config_error {
            return Err(e.clone());
        }
        let Some(group) = self.config.group_id.clone() else {
            return Err(ClientError::InvalidConfig(
                "subscribe needs a group_id in the consumer config".into(),
            ));
        };
        if topics.is_empty() {
            return Err(ClientError::InvalidConfig(
                "subscribe needs at least one topic".into(),
            ));
        }
        let settings = GroupSettings {
            group,
            session_timeout: self.config.session_timeout,
            rebalance_timeout: self.config.rebalance_timeout,
            heartbeat_interval: self.config.heartbeat_interval,
            assignors: self.config.assignors.clone(),
        };
        self.positions.clear();
        self.committed.clear();
        self.listener = std::sync::Mutex::new(Box::new(listener));
        self.group = Some(GroupMember::new(self.client.clone(), settings, topics));
        Ok(())
    }

    /// Commits the positions of every assigned partition (what `poll` has returned) and
    /// waits for the coordinator's answer.
    pub async fn commit_sync(&mut self) -> Result<(), ClientError> {
        let offsets = self.uncommitted(true);
        self.commit_offsets(offsets).await
    }

    /// Commits the positions of every assigned partition in the background; the handle
    /// gives the outcome. Errors that mean a rebalance are also seen by the next `poll`.
    pub fn commit_async(&mut self) -> tokio::task::JoinHandle<Result<(), ClientError>> {
        let offsets = self.uncommitted(true);
        match &self.group {
            Some(member) => {
                for (tp, (offset, _)) in &offsets {
                    self.committed.insert(tp.clone(), *offset);
                }
                tokio::spawn(member.commit_later(offsets))
            }
            None => tokio::spawn(async { Err(not_in_group()) }),
        }
    }

    /// Commits these offsets (the next offset to read, with metadata kept beside it) for
    /// partitions this consumer is assigned, and waits for the answer.
    pub async fn commit_offsets(
        &mut self,
        offsets: BTreeMap<TopicPartition, (u64, String)>,
    ) -> Result<(), ClientError> {
        let Some(member) = &self.group else {
            return Err(not_in_group());
        };
        member.commit(&offsets).await?;
        for (tp, (offset, _)) in offsets {
            self.committed.insert(tp, offset);
        }
        Ok(())
    }

    /// The group's committed offsets for `partitions`.
    pub async fn committed(
        &self,
        partitions: &[TopicPartition],
    ) -> Result<BTreeMap<TopicPartition, CommittedOffset>, ClientError> {
        match &self.group {
            Some(member) => member.committed(partitions).await,
            None => Err(not_in_group()),
        }
    }

    /// The group member id and generation (`None` outside a group).
    pub fn group_identity(&self) -> Option<(String, i32)> {
        self.group.as_ref().map(GroupMember::identity)
    }

    /// Leaves the group: commits the positions (with `auto_commit`), tells the listener
    /// everything is revoked, and sends LeaveGroup so the others rebalance at once.
    pub async fn close(mut self) -> Result<(), ClientError> {
        let Some(member) = &self.group else {
            return Ok(());
        };
        let mut result = Ok(());
        // Also while a rebalance is pending (the heartbeat said rejoin): the generation
        // is still valid, and without this commit the next owner would re-read everything
        // since the last auto-commit.
        if self.config.auto_commit && member.can_commit() {
            let offsets = self.uncommitted(false);
            result = member.commit(&offsets).await;
        }
        let assigned: Vec<TopicPartition> = self.positions.keys().cloned().collect();
        if !assigned.is_empty() {
            listener(&mut self.listener).on_revoked(&assigned);
        }
        self.positions.clear();
        let left = member.leave().await;
        result.and(left)
    }

    /// Positions to commit: all (`all`) or only those changed since the last commit.
    fn uncommitted(&self, all: bool) -> BTreeMap<TopicPartition, (u64, String)> {
        self.positions
            .iter()
            .filter_map(|(tp, p)| p.map(|p| (tp, p)))
            .filter(|(tp, p)| all || self.committed.get(*tp) != Some(p))
            .map(|(tp, p)| (tp.clone(), (p, String::new())))
            .collect()
    }

    /// Joins or rejoins the group if needed, and applies the new assignment.
    async fn ensure_active(&mut self) -> Result<(), ClientError> {
        let Some(member) = self.group.as_mut() else {
            return Ok(());
        };
        if !member.needs_join() {
            return Ok(());
        }
        let current: Vec<TopicPartition> = self.positions.keys().cloned().collect();
        if !current.is_empty() {
            let lost = member.is_lost();
            if !lost && self.config.auto_commit {
                let offsets: BTreeMap<TopicPartition, (u64, String)> = self
                    .positions
                    .iter()
                    .filter_map(|(tp, p)| p.map(|p| (tp.clone(), (p, String::new()))))
                    .filter(|(tp, (p, _))| self.committed.get(tp) != Some(p))
                    .collect();
                match member.commit(&offsets).await {
                    Ok(()) => self
                        .committed
                        .extend(offsets.into_iter().map(|(tp, (o, _))| (tp, o))),
                    Err(e) => tracing::warn!(
                        group = member.group(),
                        error = %e,
                        "commit before rebalance failed; the next owner may re-read records"
                    ),
                }
            }
            let cooperative = member.protocol().is_some_and(|p| p.is_cooperative());
            if member.is_lost() || !cooperative {
                listener(&mut self.listener).on_revoked(&current);
                self.positions.clear();
            }
        }
        let owned: BTreeSet<TopicPartition> = self.positions.keys().cloned().collect();
        let joined = member.join(&owned).await?;
        let revoked: Vec<TopicPartition> = owned.difference(&joined.assignment).cloned().collect();
        let added: Vec<TopicPartition> = joined.assignment.difference(&owned).cloned().collect();
        tracing::debug!(
            group = member.group(),
            generation = joined.generation,
            revoked = revoked.len(),
            added = added.len(),
            "rebalanced"
        );
        if !revoked.is_empty() {
            listener(&mut self.listener).on_revoked(&revoked);
            for tp in &revoked {
                self.positions.remove(tp);
            }
            // The partitions go to their new owner in the follow-up rebalance.
            member.request_rejoin();
        }
        if !added.is_empty() {
            let committed = member.committed(&added).await?;
            for tp in &added {
                let position = match committed.get(tp) {
                    Some(c) => c.offset,
                    None => {
                        let ts = match self.config.auto_offset_reset {
                            OffsetReset::Earliest => EARLIEST_TIMESTAMP,
                            OffsetReset::Latest => LATEST_TIMESTAMP,
                        };
                        self.client.list_offset(&tp.topic, tp.partition, ts).await?
                    }
                };
                self.committed.insert(tp.clone(), position);
                self.positions.insert(tp.clone(), Some(position));
            }
            listener(&mut self.listener).on_assigned(&added);
        }
        Ok(())
    }

    /// Commits changed positions if `auto_commit_interval` has passed.
    async fn maybe_auto_commit(&mut self) {
        if !self.config.auto_commit
            || self.last_auto_commit.elapsed() < self.config.auto_commit_interval
        {
            return;
        }
        self.last_auto_commit = Instant::now();
        let offsets = self.uncommitted(false);
        let Some(member) = &self.group else { return };
        match member.commit(&offsets).await {
            Ok(()) => self
                .committed
                .extend(offsets.into_iter().map(|(tp, (o, _))| (tp, o))),
            Err(e) => tracing::warn!(group = member.group(), error = %e, "auto-commit failed"),
        }
    }

    /// Sets the partitions to read. Partitions already assigned keep their position; new
    /// ones start unset, which means the earliest offset on the first poll unless sought.
    pub fn assign(&mut self, partitions: Vec<TopicPartition>) {
        let old = std::mem::take(&mut self.positions);
        for tp in partitions {
            let position = old.get(&tp).copied().flatten();
            self.positions.insert(tp, position);
        }
    }

    /// The assigned partitions.
    pub fn assignment(&self) -> Vec<TopicPartition> {
        self.positions.keys().cloned().collect()
    }

    /// Moves an assigned partition's position.
    pub async fn seek(&mut self, tp: &TopicPartition, to: SeekTo) -> Result<(), ClientError> {
        if !self.positions.contains_key(tp) {
            return Err(ClientError::NotAssigned {
                topic: tp.topic.clone(),
                partition: tp.partition,
            });
        }
        let offset = match to {
            SeekTo::Offset(offset) => offset,
            SeekTo::Beginning => self.list(tp, EARLIEST_TIMESTAMP).await?,
            SeekTo::End => self.list(tp, LATEST_TIMESTAMP).await?,
            SeekTo::Timestamp(ms) => self.list(tp, ms).await?,
        };
        self.positions.insert(tp.clone(), Some(offset));
        Ok(())
    }

    async fn list(&self, tp: &TopicPartition, timestamp: i64) -> Result<u64, ClientError> {
        self.client
            .list_offset(&tp.topic, tp.partition, timestamp)
            .await
    }

    /// The next offset `poll` reads from `tp`; `None` if unassigned or not yet known.
    pub fn position(&self, tp: &TopicPartition) -> Option<u64> {
        self.positions.get(tp).copied().flatten()
    }

    /// Waits up to `timeout` for records from the assigned partitions and returns them (an
    /// empty list when none arrived), advancing the positions past them.
    pub async fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>, ClientError> {
        if let Some(e) = &self.config_error {
            return Err(e.clone());
        }
        let deadline = Instant::now() + timeout;
        if self.group.is_some() {
            self.ensure_active().await?;
            self.maybe_auto_commit().await;
        }
        if self.positions.is_empty() {
            tokio::time::sleep(timeout).await;
            return Ok(Vec::new());
        }
        let unset: Vec<TopicPartition> = self
            .positions
            .iter()
            .filter(|(_, p)| p.is_none())
            .map(|(tp, _)| tp.clone())
            .collect();
        for tp in unset {
            let offset = self.list(&tp, EARLIEST_TIMESTAMP).await?;
            self.positions.insert(tp, Some(offset));
        }
        loop {
            let wait = self
                .config
                .fetch_max_wait
                .min(deadline.saturating_duration_since(Instant::now()));
            if self.group.as_ref().is_some_and(GroupMember::needs_join) {
                // A rebalance: rejoin now (the caller sees no records this time).
                self.ensure_active().await?;
                if self.positions.is_empty() {
                    return Ok(Vec::new());
                }
            }
            let positions = self.resolved_positions();
            let round = match self.prefetch.take() {
                Some(mut ahead) if ahead.positions == positions => {
                    match tokio::time::timeout_at(deadline.into(), &mut ahead.task).await {
                        Ok(joined) => joined.expect("fetch rounds do not panic"),
                        Err(_) => {
                            // Still long-polling: keep it for the next poll.
                            self.prefetch = Some(ahead);
                            return Ok(Vec::new());
                        }
                    }
                }
                _ => fetch_round(self.client.clone(), self.fetch_settings(), positions, wait).await,
            };
            let (records, fetched, retry_error, leader_moved) = match round {
                // A group member whose position fell out of the log (retention deleted it,
                // or a reset went past the end) starts over per `auto_offset_reset`.
                Err(ClientError::OffsetOutOfRange {
                    topic,
                    partition,
                    offset,
                    start,
                    end,
                }) if self.group.is_some() => {
                    let to = match self.config.auto_offset_reset {
                        OffsetReset::Earliest => start,
                        OffsetReset::Latest => end,
                    };
                    tracing::warn!(
                        topic,
                        partition,
                        offset,
                        to,
                        "position out of range: reset by auto_offset_reset"
                    );
                    self.positions
                        .insert(TopicPartition::new(topic, partition), Some(to));
                    continue;
                }
                other => other?,
            };
            for f in fetched {
                self.positions.insert(f.tp, Some(f.next));
            }
            if !records.is_empty() {
                let positions = self.resolved_positions();
                let task = tokio::spawn(fetch_round(
                    self.client.clone(),
                    self.fetch_settings(),
                    positions.clone(),
                    self.config.fetch_max_wait,
                ));
                self.prefetch = Some(Prefetch { positions, task });
                return Ok(records);
            }
            let now = Instant::now();
            if now >= deadline {
                return match retry_error {
                    Some(e) => Err(e),
                    None => Ok(records),
                };
            }
            if retry_error.is_some() || leader_moved {
                let pause = Duration::from_millis(CONSUMER_RETRY_BACKOFF_MS)
                    .min(deadline.saturating_duration_since(now));
                tokio::time::sleep(pause).await;
            }
        }
    }

    /// Every assigned partition's position (all are resolved before a round).
    fn resolved_positions(&self) -> BTreeMap<TopicPartition, u64> {
        self.positions
            .iter()
            .map(|(tp, p)| {
                (
                    tp.clone(),
                    p.expect("positions are resolved before a round"),
                )
            })
            .collect()
    }

    fn fetch_settings(&self) -> FetchSettings {
        FetchSettings {
            min_bytes: self.config.fetch_min_bytes,
            max_bytes: self.config.fetch_max_bytes,
            partition_max_bytes: self.config.partition_max_bytes,
        }
    }
}

/// One fetch round from `positions`: one fetch per destination (each partition's leader),
/// concurrently. Leader moves (`NOT_LEADER_OR_FOLLOWER` and the like, no leader in the
/// metadata) ask for a metadata refresh and are not errors: those partitions are fetched
/// again from the same position in the next round. Other retriable errors are handed back
/// (and `poll` returns one at its deadline if no records came).
async fn fetch_round(
    client: Client,
    settings: FetchSettings,
    positions: BTreeMap<TopicPartition, u64>,
    wait: Duration,
) -> Result<Round, ClientError> {
    let mut by_addr: BTreeMap<String, BTreeMap<String, Vec<FetchPartition>>> = BTreeMap::new();
    // A leader move seen this round (absorbed: the partitions are fetched again from the
    // same position once the metadata names the new leader).
    let mut leader_moved: Option<ClientError> = None;
    for (tp, &offset) in &positions {
        let addr = match client.partition_address(&tp.topic, tp.partition).await {
            Ok(addr) => addr,
            // No leader right now (an election): this partition sits the round out.
            Err(e) if e.is_retriable() => {
                leader_moved = Some(e);
                continue;
            }
            Err(e) => return Err(e),
        };
        by_addr
            .entry(addr)
            .or_default()
            .entry(tp.topic.clone())
            .or_default()
            .push(FetchPartition {
                partition: tp.partition,
                fetch_offset: offset,
                partition_max_bytes: settings.partition_max_bytes,
            });
    }
    let timeout = client.request_timeout() + wait;
    let mut tasks = JoinSet::new();
    for (addr, topics) in by_addr {
        let request = FetchRequest {
            max_wait_ms: millis_u32(wait),
            min_bytes: settings.min_bytes,
            max_bytes: settings.max_bytes,
            topics: topics
                .into_iter()
                .map(|(name, partitions)| FetchTopic { name, partitions })
                .collect(),
        };
        let client = client.clone();
        tasks.spawn(async move {
            let result = async {
                let conn = client.connection(&addr).await?;
                conn.call::<_, FetchResponse>(ApiKey::Fetch, &request, timeout)
                    .await
            }
            .await;
            (request, result)
        });
    }
    let mut records = Vec::new();
    let mut fetched = Vec::new();
    let mut retry_error = None;
    while let Some(joined) = tasks.join_next().await {
        let (_, result) = joined.expect("fetch tasks do not panic");
        let response = match result {
            Ok(response) => response,
            Err(e) => {
                if e.wants_metadata_refresh() {
                    client.request_metadata_refresh();
                }
                if e.is_retriable() {
                    retry_error = Some(e);
                    continue;
                }
                return Err(e);
            }
        };
        for topic in response.topics {
            for p in topic.partitions {
                let tp = TopicPartition::new(topic.name.clone(), p.partition);
                let Some(&position) = positions.get(&tp) else {
                    continue;
                };
                if p.error == ErrorCode::OFFSET_OUT_OF_RANGE {
                    return Err(ClientError::OffsetOutOfRange {
                        topic: tp.topic,
                        partition: tp.partition,
                        offset: position,
                        start: p.log_start_offset,
                        end: p.high_watermark,
                    });
                }
                if p.error != ErrorCode::NONE {
                    let e = ClientError::from_code(p.error, &p.message, &tp.topic);
                    if e.wants_metadata_refresh() {
                        tracing::debug!(%tp, error = %e, "fetch: leader moved; refreshing metadata");
                        client.request_metadata_refresh();
                        leader_moved = Some(e);
                        continue;
                    }
                    if e.is_retriable() {
                        retry_error = Some(e);
                        continue;
                    }
                    return Err(e);
                }
                let next = decode::decode_records(
                    &tp.topic,
                    tp.partition,
                    p.records.into_bytes(),
                    position,
                    &mut records,
                )?;
                if next != position {
                    fetched.push(Fetched { tp, next });
                }
            }
        }
    }
    Ok((records, fetched, retry_error, leader_moved.is_some()))
}

fn not_in_group() -> ClientError {
    ClientError::InvalidConfig("commits need a consumer subscribed to a group".into())
}

/// The rebalance listener (no locking cost to speak of: the consumer's `&mut self` is
/// exclusive).
fn listener(
    slot: &mut std::sync::Mutex<Box<dyn RebalanceListener>>,
) -> &mut Box<dyn RebalanceListener> {
    slot.get_mut().unwrap_or_else(|p| p.into_inner())
}

// A consumer moves between tasks, and its `poll` future must be `Send` for `tokio::spawn`.
const _: () = {
    const fn send_and_sync<T: Send + Sync>() {}
    send_and_sync::<Consumer>();
};
