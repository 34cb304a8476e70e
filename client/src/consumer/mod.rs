//! The consumer: a position per assigned partition; `poll` sends one long-polling fetch per
//! destination connection, decodes the batches, and advances the positions past what it
//! returns. Positions only move when a whole poll round succeeds, so an error never loses
//! records: the next poll fetches them again.

mod config;
mod decode;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sluice_proto::protocol::{
    ApiKey, EARLIEST_TIMESTAMP, ErrorCode, FetchPartition, FetchRequest, FetchResponse, FetchTopic,
    LATEST_TIMESTAMP,
};
use tokio::task::JoinSet;

pub use config::ConsumerConfig;
pub use decode::ConsumerRecord;

use crate::client::Client;
use crate::config::millis_u32;
use crate::error::ClientError;
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
#[derive(Debug)]
pub struct Consumer {
    client: Client,
    config: ConsumerConfig,
    config_error: Option<ClientError>,
    /// Next offset to read per assigned partition; `None` until the first poll or seek.
    positions: BTreeMap<TopicPartition, Option<u64>>,
}

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
            let (records, fetched, retry_error) = self.round(wait).await?;
            for f in fetched {
                self.positions.insert(f.tp, Some(f.next));
            }
            if !records.is_empty() {
                return Ok(records);
            }
            let now = Instant::now();
            if now >= deadline {
                return match retry_error {
                    Some(e) => Err(e),
                    None => Ok(records),
                };
            }
            if retry_error.is_some() {
                let pause = Duration::from_millis(CONSUMER_RETRY_BACKOFF_MS)
                    .min(deadline.saturating_duration_since(now));
                tokio::time::sleep(pause).await;
            }
        }
    }

    /// One fetch per destination, concurrently. Returns the records, the new positions, and
    /// a retriable error if some fetches hit one (their partitions are simply not advanced).
    async fn round(
        &self,
        wait: Duration,
    ) -> Result<(Vec<ConsumerRecord>, Vec<Fetched>, Option<ClientError>), ClientError> {
        let mut by_addr: BTreeMap<String, BTreeMap<String, Vec<FetchPartition>>> = BTreeMap::new();
        for (tp, position) in &self.positions {
            let offset = position.expect("positions are resolved before a round");
            let addr = self
                .client
                .partition_address(&tp.topic, tp.partition)
                .await?;
            by_addr
                .entry(addr)
                .or_default()
                .entry(tp.topic.clone())
                .or_default()
                .push(FetchPartition {
                    partition: tp.partition,
                    fetch_offset: offset,
                    partition_max_bytes: self.config.partition_max_bytes,
                });
        }
        let timeout = self.client.request_timeout() + wait;
        let mut tasks = JoinSet::new();
        for (addr, topics) in by_addr {
            let request = FetchRequest {
                max_wait_ms: millis_u32(wait),
                min_bytes: self.config.fetch_min_bytes,
                max_bytes: self.config.fetch_max_bytes,
                topics: topics
                    .into_iter()
                    .map(|(name, partitions)| FetchTopic { name, partitions })
                    .collect(),
            };
            let client = self.client.clone();
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
            let (request, result) = joined.expect("fetch tasks do not panic");
            let response = match result {
                Ok(response) => response,
                Err(e) => {
                    for t in &request.topics {
                        self.client.forget_topic(&t.name);
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
                    let Some(Some(position)) = self.positions.get(&tp).copied() else {
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
                            self.client.forget_topic(&tp.topic);
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
        Ok((records, fetched, retry_error))
    }
}
