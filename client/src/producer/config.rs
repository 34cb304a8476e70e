//! `ProducerConfig` and `Acks`: how records are batched, acknowledged and retried.

use std::time::Duration;

use sluice_proto::protocol::{ACKS_ALL, ACKS_LEADER, ACKS_NONE};
use sluice_proto::{BATCH_BYTES_MAX, Compression};

use crate::error::ClientError;
use crate::limits::{IN_FLIGHT_PER_PARTITION_MAX, PRODUCER_BUFFER_BYTES_MAX};

/// When the broker acknowledges a produce request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// No acknowledgement: a record counts as delivered once written to the socket, and its
    /// offset is reported as -1.
    None,
    /// Once the leader has appended the batch.
    Leader,
    /// Once the batch is committed (durable under the topic's flush policy on every in-sync
    /// replica).
    All,
}

impl Acks {
    /// The wire value.
    pub fn wire(self) -> i8 {
        match self {
            Acks::None => ACKS_NONE,
            Acks::Leader => ACKS_LEADER,
            Acks::All => ACKS_ALL,
        }
    }
}

/// Most requests in flight per partition for an idempotent producer: the broker remembers
/// the last 5 batches of each producer, so a retry is recognised only within that window.
pub(crate) const IDEMPOTENT_IN_FLIGHT_MAX: usize = 5;

/// How a [`crate::Producer`] batches and sends.
///
/// With idempotence (the default with `acks = All`) the producer gets a producer id from the
/// broker and numbers each partition's batches: a batch retried after a lost connection or a
/// timeout is recognised by the broker, which answers its original offset instead of
/// writing it again, and retried batches keep their order. Without it (`idempotence:
/// Some(false)`, or `acks` other than `All`), a retry can write a batch twice, and with
/// `max_in_flight_per_partition > 1` a retried batch can land after a later one.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// Acknowledgement level.
    pub acks: Acks,
    /// How long a batch waits for more records before it is sent.
    pub linger: Duration,
    /// A batch is sent once it reaches this size (a record larger than this goes alone).
    pub batch_bytes: usize,
    /// Codec for the batches.
    pub compression: Compression,
    /// How many times a batch is retried after a retriable error (a leader move, a lost
    /// connection, a timeout). Like Kafka (`retries` = `i32::MAX` since 2.1), the default is
    /// unlimited: `delivery_timeout` is the bound.
    pub retries: u32,
    /// Pause before a retry.
    pub retry_backoff: Duration,
    /// Longest a record may take from `send` to its acknowledgement, retries included.
    pub delivery_timeout: Duration,
    /// Most bytes of records waiting to be sent or acknowledged; `send` waits past this.
    pub buffer_bytes: usize,
    /// Most produce requests in flight per partition.
    pub max_in_flight_per_partition: usize,
    /// Idempotent production: `None` means on exactly when `acks` is [`Acks::All`];
    /// `Some(true)` with other acks is an invalid config. Needs
    /// `max_in_flight_per_partition <= 5`.
    pub idempotence: Option<bool>,
}

impl Default for ProducerConfig {
    /// acks all, linger 5 ms, batches of 256 KiB, no compression, retries 100 ms apart until
    /// the delivery timeout,
    /// 120 s delivery timeout, 32 MiB buffer, 5 requests in flight per partition,
    /// idempotent (because acks is all).
    fn default() -> Self {
        ProducerConfig {
            acks: Acks::All,
            linger: Duration::from_millis(5),
            batch_bytes: 256 * 1024,
            compression: Compression::None,
            retries: u32::MAX,
            retry_backoff: Duration::from_millis(100),
            delivery_timeout: Duration::from_secs(120),
            buffer_bytes: 32 * 1024 * 1024,
            max_in_flight_per_partition: 5,
            idempotence: None,
        }
    }
}

impl ProducerConfig {
    /// Whether this config produces idempotently.
    pub fn is_idempotent(&self) -> bool {
        self.idempotence.unwrap_or(self.acks == Acks::All)
    }

    /// Checks the values make sense.
    pub(crate) fn validate(&self) -> Result<(), ClientError> {
        let bad = |msg: String| Err(ClientError::InvalidConfig(msg));
        if self.batch_bytes == 0 || self.batch_bytes > BATCH_BYTES_MAX as usize {
            return bad(format!(
                "batch_bytes {} is outside 1..={BATCH_BYTES_MAX}",
                self.batch_bytes
            ));
        }
        if self.buffer_bytes < self.batch_bytes || self.buffer_bytes > PRODUCER_BUFFER_BYTES_MAX {
            return bad(format!(
                "buffer_bytes {} is outside batch_bytes ({})..={PRODUCER_BUFFER_BYTES_MAX}",
                self.buffer_bytes, self.batch_bytes
            ));
        }
        if self.max_in_flight_per_partition == 0
            || self.max_in_flight_per_partition > IN_FLIGHT_PER_PARTITION_MAX
        {
            return bad(format!(
                "max_in_flight_per_partition {} is outside 1..={IN_FLIGHT_PER_PARTITION_MAX}",
                self.max_in_flight_per_partition
            ));
        }
        if self.idempotence == Some(true) && self.acks != Acks::All {
            return bad(format!(
                "idempotence needs acks = All, not {:?} (set idempotence: Some(false) or None)",
                self.acks
            ));
        }
        if self.is_idempotent() && self.max_in_flight_per_partition > IDEMPOTENT_IN_FLIGHT_MAX {
            return bad(format!(
                "an idempotent producer allows at most {IDEMPOTENT_IN_FLIGHT_MAX} requests in \
                 flight per partition, not {}",
                self.max_in_flight_per_partition
            ));
        }
        if self.delivery_timeout.is_zero() {
            return bad("delivery_timeout must be above zero".into());
        }
        Ok(())
    }
}
