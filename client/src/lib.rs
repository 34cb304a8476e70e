//! The native Sluice client for tokio applications: admin ([`Client`]), [`Producer`] and
//! [`Consumer`].
//!
//! - [`Client`] holds one connection per broker or shard address and the metadata cache.
//!   Each partition's requests go to its leader broker: with [`ClientConfig::shard_aware`]
//!   straight to the leader's shard that owns it, otherwise to the leader's shared address
//!   (which forwards). Leader moves (`NOT_LEADER_OR_FOLLOWER` and the like, dead
//!   connections) refresh the metadata, at most one refresh in flight and
//!   [`ClientConfig::retry_backoff`] apart, and requests are re-routed; the metadata is also
//!   refreshed every [`ClientConfig::metadata_max_age`]. Group members and the admin find a
//!   moved coordinator again.
//! - [`Producer`] batches records per partition (`linger`, `batch_bytes`, lz4/zstd),
//!   partitions by key like Kafka (murmur2), retries retriable failures, and bounds its memory.
//!   Retries after a lost connection may duplicate records: there is no idempotence yet.
//! - [`Consumer`] reads assigned partitions from a position, with long polling. With
//!   [`ConsumerConfig::group_id`] and [`Consumer::subscribe`] it is a member of a consumer
//!   group: the group shares the topics' partitions among its members (the leader member
//!   runs the [`Assignor`]: `cooperative-sticky` by default, then `range`; `roundrobin`),
//!   [`RebalanceListener`] hears about assigned and revoked partitions, and progress is
//!   committed to the broker (auto-commit every 5 s and before a revocation, or
//!   `commit_sync` / `commit_async` / `commit_offsets`): at-least-once. Different groups
//!   each read every record.
//!
//! Every failure is a [`ClientError`] whose message reads like a sentence.

mod client;
mod config;
mod connection;
mod consumer;
mod error;
mod group;
pub mod limits;
mod metadata;
mod partitioner;
mod producer;
mod topic_partition;

pub use client::Client;
pub use config::ClientConfig;
pub use consumer::{Consumer, ConsumerConfig, ConsumerRecord, OffsetReset, SeekTo};
pub use error::ClientError;
pub use group::admin::{CommittedOffset, GroupListing, decode_assignment};
pub use group::assignor::{Assignor, COOPERATIVE_STICKY, MemberSubscription, RANGE, ROUND_ROBIN};
pub use group::member::RebalanceListener;
pub use partitioner::{murmur2, partition_for_key, to_positive};
pub use producer::{
    Acks, DeliveryFuture, Producer, ProducerConfig, ProducerRecord, RecordMetadata,
};
pub use sluice_proto::Compression;
pub use sluice_proto::protocol::{
    ConfigEntry, DescribedGroup, DescribedMember, EARLIEST_TIMESTAMP, ErrorCode, LATEST_TIMESTAMP,
    ListedGroup, PartitionDescription, TopicDescription, TopicListing,
};
pub use topic_partition::TopicPartition;
