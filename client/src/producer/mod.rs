//! The producer: `send` puts a record into its partition's open batch and returns a
//! [`DeliveryFuture`]; a background task sends batches after `linger` or when full, one
//! produce request per destination connection, and settles every future.
//!
//! Memory is bounded by `buffer_bytes`: each record holds permits of a semaphore for its
//! size from `send` until its batch is settled, so `send` waits when the buffer is full.
//!
//! Idempotence (on by default with acks=all): the sender gets a producer id and epoch
//! (InitProducerId) before its first send, and stamps each partition's batches with
//! consecutive sequence numbers; the broker answers a retried batch it already wrote with
//! the original offset. Policy for the producer errors:
//! - a sequence gap (`OUT_OF_ORDER_SEQUENCE_NUMBER`) behind a batch that is being retried:
//!   the batch is resent in order behind it;
//! - a batch that fails for good after it was sent (delivery timeout, retries used up, a
//!   refusal, `OUT_OF_ORDER_SEQUENCE_NUMBER` with nothing before it being retried,
//!   `UNKNOWN_PRODUCER_ID`) leaves its sequence unresolved. As Kafka does since KIP-360,
//!   the producer bumps its epoch: it stops sending, lets the batches in flight settle,
//!   fails the ones sent under the old epoch that were not acknowledged with
//!   [`ClientError::EpochBumped`] (they may be in the log, so they are never resent under
//!   the new epoch), asks InitProducerId for its id with epoch + 1 (a new id if the broker
//!   refuses the bump), restarts every partition at sequence 0 and goes on. The failed
//!   batch gets its own error ([`ClientError::Timeout`], [`ClientError::OutOfOrderSequence`],
//!   ...). Records sent afterwards are written exactly once;
//! - a fenced epoch (`PRODUCER_FENCED`, `INVALID_PRODUCER_EPOCH` on a produce) is fatal: the
//!   batch and every later send fail with [`ClientError::ProducerFenced`].

mod accumulator;
mod config;
mod record;
mod sender;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::{Notify, Semaphore, watch};

pub use config::{Acks, ProducerConfig};
pub use record::{DeliveryFuture, ProducerRecord, RecordMetadata};

use self::accumulator::Accumulator;
use crate::client::Client;
use crate::error::ClientError;
use crate::limits::RECORD_OVERHEAD_BYTES;
use crate::partitioner::partition_for_key;
use crate::topic_partition::TopicPartition;

/// State shared by the producer handles and the sender task.
pub(crate) struct ProducerShared {
    client: Client,
    config: ProducerConfig,
    config_error: Option<ClientError>,
    acc: Mutex<Accumulator>,
    /// Wakes the sender: a batch is ready, a linger clock started, or a request settled.
    wake: Notify,
    /// The lowest unfinished batch number (`u64::MAX` when idle), for `flush`.
    progress: watch::Sender<u64>,
    memory: Arc<Semaphore>,
    sender_started: AtomicBool,
}

impl ProducerShared {
    fn lock(&self) -> MutexGuard<'_, Accumulator> {
        // The accumulator is only changed by short, non-panicking sections; a poisoned
        // lock still holds a consistent state.
        self.acc.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish_progress(&self) {
        let min = self.lock().min_unfinished();
        self.progress.send_if_modified(|v| {
            let changed = *v != min;
            *v = min;
            changed
        });
    }

    /// After batches were settled or requeued: tell flush waiters and the sender.
    fn after_settle(&self) {
        self.publish_progress();
        self.wake.notify_one();
    }
}

/// Closes the accumulator when the last producer handle goes, so the sender task sends
/// what is left and stops.
struct Handle {
    shared: Arc<ProducerShared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.lock().close();
        self.shared.wake.notify_one();
    }
}

/// Sends records to topics. Cheap to clone; clones share the batches and the buffer.
/// Create and use it inside a tokio runtime.
#[derive(Clone)]
pub struct Producer {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("config", &self.handle.shared.config)
            .finish()
    }
}

impl Producer {
    /// A producer over `client`. An invalid config is reported by the first `send`.
    pub fn new(client: Client, config: ProducerConfig) -> Producer {
        let config_error = config.validate().err();
        let permits = config.buffer_bytes.min(Semaphore::MAX_PERMITS);
        let shared = Arc::new(ProducerShared {
            client,
            acc: Mutex::new(Accumulator::new(config.clone())),
            config,
            config_error,
            wake: Notify::new(),
            progress: watch::Sender::new(u64::MAX),
            memory: Arc::new(Semaphore::new(permits)),
            sender_started: AtomicBool::new(false),
        });
        Producer {
            handle: Arc::new(Handle { shared }),
        }
    }

    fn shared(&self) -> &Arc<ProducerShared> {
        &self.handle.shared
    }

    /// Queues a record. Waits only while the buffer is full (or to learn a topic's
    /// partition count the first time). The returned future resolves when the record is
    /// acknowledged or has failed for good.
    pub async fn send(&self, mut record: ProducerRecord) -> Result<DeliveryFuture, ClientError> {
        let shared = self.shared();
        if let Some(e) = &shared.config_error {
            return Err(e.clone());
        }
        {
            let acc = shared.lock();
            if let Some(fatal) = &acc.fatal {
                return Err(fatal.clone());
            }
            if acc.is_closed() {
                return Err(ClientError::Closed);
            }
        }
        if !shared.sender_started.swap(true, Ordering::AcqRel) {
            tokio::spawn(sender::run(shared.clone()));
        }
        let partitions = shared.client.partition_count(&record.topic).await?;
        let explicit = match (record.partition, &record.key) {
            (Some(p), _) if p >= partitions => {
                return Err(ClientError::UnknownPartition {
                    topic: record.topic.clone(),
                    partition: p,
                    partitions,
                });
            }
            (Some(p), _) => Some(p),
            (None, Some(key)) => Some(partition_for_key(key, partitions)),
            (None, None) => None,
        };
        let bytes = record.payload_bytes() + RECORD_OVERHEAD_BYTES;
        if bytes > shared.config.buffer_bytes {
            return Err(ClientError::TooLarge {
                what: "record",
                bytes,
                reason: format!(
                    "it is over the producer's buffer_bytes of {}",
                    shared.config.buffer_bytes
                ),
            });
        }
        let permits = u32::try_from(bytes).expect("bytes <= buffer_bytes <= u32::MAX");
        let memory = shared
            .memory
            .clone()
            .acquire_many_owned(permits)
            .await
            .map_err(|_| ClientError::Closed)?;
        let timestamp = record.timestamp.unwrap_or_else(now_ms);
        let (future, wake) = {
            let mut acc = shared.lock();
            if acc.is_closed() {
                return Err(ClientError::Closed);
            }
            let partition = match explicit {
                Some(p) => p,
                None => acc.sticky_partition(&record.topic, partitions),
            };
            // The record's own topic string names its batch: no copy per record.
            let tp = TopicPartition::new(std::mem::take(&mut record.topic), partition);
            // The clock is read only when the record opens a batch (its linger starts).
            acc.append(tp, &record, timestamp, memory, Instant::now)?
        };
        if wake {
            shared.wake.notify_one();
        }
        Ok(future)
    }

    /// Sends every record queued so far without waiting for `linger`, and waits until each
    /// is settled (acknowledged or failed; see the records' futures for which).
    pub async fn flush(&self) -> Result<(), ClientError> {
        let shared = self.shared();
        let target = shared.lock().close_all();
        shared.wake.notify_one();
        shared.publish_progress();
        let mut rx = shared.progress.subscribe();
        rx.wait_for(|min| *min >= target)
            .await
            .map_err(|_| ClientError::Closed)?;
        Ok(())
    }

    /// Flushes, then stops this producer and its clones: later sends fail with
    /// [`ClientError::Closed`].
    pub async fn close(self) -> Result<(), ClientError> {
        self.flush().await?;
        let shared = self.shared();
        shared.lock().close();
        shared.wake.notify_one();
        Ok(())
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
