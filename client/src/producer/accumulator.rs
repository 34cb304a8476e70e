//! The accumulator: per partition an open batch being filled, the closed batches waiting to
//! be sent (in order), and how many requests are in flight. No I/O: the sender task drains
//! it and reports outcomes back.
//!
//! Every batch gets a sequence number when it is opened; the set of unfinished numbers lets
//! `flush` wait for exactly the batches that existed when it was called.
//!
//! An idempotent producer also stamps each batch, when it is first taken to be sent, with
//! its producer id, epoch and the partition's next record sequence number (batches of a
//! partition are taken in the order they were closed). The stamped bytes are kept, so a
//! retry sends exactly the same batch, and a retried batch goes back into its queue in
//! order. Retries are sent one at a time, each only when nothing else of its partition is
//! in flight, so after a leader move the new leader gets them in sequence order.
//!
//! Epoch bump (KIP-360): when a stamped batch fails for good (delivery timeout, retries
//! used up, a refusal) its sequence is unresolved: the partition's next batch would meet a
//! gap, or the batch may be in the log. [`Accumulator::begin_bump`] then stops sending;
//! stamped batches still queued fail with [`ClientError::EpochBumped`], those in flight
//! settle (acknowledged, or failed with that error, never retried); once none is left
//! ([`Accumulator::ready_to_bump`]) the sender asks InitProducerId for epoch + 1 and
//! [`Accumulator::install_identity`] restarts every partition at sequence 0. Batches never
//! sent are stamped with the new epoch.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use sluice_proto::{BatchBuilder, BuildError, Limits, stamp_producer};
use tokio::sync::OwnedSemaphorePermit;

use super::config::ProducerConfig;
use super::record::{DeliveryFuture, DeliverySender, ProducerRecord};
use crate::config::millis_u64;
use crate::error::ClientError;
use crate::partitioner::pick_sticky;
use crate::topic_partition::TopicPartition;

struct OpenBatch {
    builder: BatchBuilder,
    /// Records in the batch.
    records: u32,
    /// Tells the records' futures how the batch ended.
    outcome: DeliverySender,
    created: Instant,
    memory: Option<OwnedSemaphorePermit>,
    seq: u64,
}

impl OpenBatch {
    /// A record was pushed into the builder: counts it, holds its buffer memory until the
    /// batch is settled, and returns its future.
    fn admitted(&mut self, timestamp: i64, memory: OwnedSemaphorePermit) -> DeliveryFuture {
        let future = self.outcome.future(self.records, timestamp);
        self.records += 1;
        match self.memory.as_mut() {
            Some(held) => held.merge(memory),
            None => self.memory = Some(memory),
        }
        future
    }
}

/// A built batch, waiting to be sent or in flight.
pub(crate) struct ReadyBatch {
    pub(crate) tp: TopicPartition,
    pub(crate) bytes: Bytes,
    records: u32,
    outcome: DeliverySender,
    /// Deadline for delivery (`delivery_timeout` after the batch opened).
    pub(crate) deadline: Instant,
    /// Sends so far.
    pub(crate) attempts: u32,
    retry_at: Option<Instant>,
    /// Whether metadata was already refreshed once for an unknown topic.
    pub(crate) refreshed_unknown: bool,
    /// The error of the last attempt, reported if the deadline passes.
    last_error: Option<ClientError>,
    _memory: Option<OwnedSemaphorePermit>,
    /// The batch number (in close order).
    pub(crate) seq: u64,
    /// Idempotent: the batch's base record sequence, once stamped.
    pub(crate) sequence: Option<i32>,
    /// Idempotent: the identity the batch was stamped with.
    pub(crate) stamped_with: Option<ProducerIdentity>,
}

impl ReadyBatch {
    /// Number of records.
    pub(crate) fn record_count(&self) -> usize {
        self.records as usize
    }

    /// Tells every record where it landed. `base_offset` is `None` for `acks=0`.
    pub(crate) fn complete(self, base_offset: Option<u64>) -> u64 {
        self.outcome.complete(base_offset);
        self.seq
    }

    /// Fails every record with `error`.
    pub(crate) fn fail(self, error: &ClientError) -> u64 {
        self.outcome.fail(error.clone());
        self.seq
    }

    /// Schedules another attempt after `retry_backoff` if retries and time are left; else
    /// hands the error back for the batch to be failed.
    pub(crate) fn schedule_retry(
        &mut self,
        error: ClientError,
        config: &ProducerConfig,
        now: Instant,
    ) -> Result<(), ClientError> {
        if self.attempts > config.retries || now + config.retry_backoff >= self.deadline {
            return Err(error);
        }
        self.retry_at = Some(now + config.retry_backoff);
        self.last_error = Some(error);
        Ok(())
    }
}

#[derive(Default)]
struct PartitionQueue {
    open: Option<OpenBatch>,
    ready: VecDeque<ReadyBatch>,
    in_flight: usize,
    /// Idempotent: the record sequence number the next stamped batch starts at.
    next_sequence: i32,
    /// Idempotent: batch numbers stamped and not yet finished (queued or in flight).
    stamped: BTreeSet<u64>,
    /// Idempotent: the batch number of the retry in flight, if one is.
    retry_in_flight: Option<u64>,
}

impl PartitionQueue {
    /// Whether a batch closed now would have to wait: the batches already queued take
    /// every free in-flight slot. Kafka's rule for a lingered batch: while its partition
    /// cannot send, it stays open and keeps filling, so a short linger under load makes
    /// bigger batches rather than a queue of tiny ones.
    fn is_blocked(&self, max_in_flight: usize) -> bool {
        self.in_flight + self.ready.len() >= max_in_flight
    }
}

/// An idempotent producer's identity from InitProducerId.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProducerIdentity {
    /// The producer id.
    pub(crate) id: i64,
    /// Its epoch.
    pub(crate) epoch: i16,
}

/// `seq + n` with Kafka's wrap from `i32::MAX` to 0 (the broker's rule).
fn seq_add(seq: i32, n: i32) -> i32 {
    if seq > i32::MAX - n {
        n - (i32::MAX - seq) - 1
    } else {
        seq + n
    }
}

/// What [`Accumulator::drain`] hands the sender.
#[derive(Default)]
pub(crate) struct Drained {
    /// Batches to send now, in order per partition.
    pub(crate) send: Vec<ReadyBatch>,
    /// Sequence numbers of batches that were failed (delivery timeout passed).
    pub(crate) failed: Vec<u64>,
    /// When to look again if nothing else happens.
    pub(crate) next_wake: Option<Instant>,
}

/// The accumulator.
pub(crate) struct Accumulator {
    config: ProducerConfig,
    partitions: BTreeMap<TopicPartition, PartitionQueue>,
    /// Partitions with an open batch or batches waiting to be sent: the only ones `drain`
    /// and `close_all` look at, so their cost follows the partitions being written, not
    /// every partition the producer ever wrote (at most the entries of `partitions`).
    pending: BTreeSet<TopicPartition>,
    sticky: HashMap<String, u32>,
    next_seq: u64,
    unfinished: BTreeSet<u64>,
    closed: bool,
    /// Idempotent: the identity batches are stamped with; nothing is sent until it is known.
    pub(crate) identity: Option<ProducerIdentity>,
    /// A fatal error (fenced): every queued batch and later send fails with it.
    pub(crate) fatal: Option<ClientError>,
    /// Idempotent: why the epoch must be bumped, while a bump is pending (nothing is sent).
    pub(crate) bump: Option<String>,
}

impl Accumulator {
    pub(crate) fn new(config: ProducerConfig) -> Self {
        Accumulator {
            config,
            partitions: BTreeMap::new(),
            pending: BTreeSet::new(),
            sticky: HashMap::new(),
            next_seq: 0,
            unfinished: BTreeSet::new(),
            closed: false,
            identity: None,
            fatal: None,
            bump: None,
        }
    }

    /// A stamped batch failed for good: its sequence is unresolved, so the epoch must be
    /// bumped (see the module docs). Nothing is sent until it is. No-op without an identity,
    /// after a fatal error, or while a bump is already pending.
    pub(crate) fn begin_bump(&mut self, reason: String) {
        if self.identity.is_none() || self.fatal.is_some() || self.bump.is_some() {
            return;
        }
        tracing::warn!(%reason, "idempotent producer will bump its epoch");
        self.bump = Some(reason);
    }

    /// Whether a bump is pending and no batch stamped with the old epoch is left.
    pub(crate) fn ready_to_bump(&self) -> bool {
        self.bump.is_some() && self.partitions.values().all(|q| q.stamped.is_empty())
    }

    /// Takes the identity from InitProducerId. After a bump (a previous identity): every
    /// partition starts again at sequence 0 and sending resumes.
    pub(crate) fn install_identity(&mut self, identity: ProducerIdentity) {
        if self.identity.is_some() {
            for q in self.partitions.values_mut() {
                q.next_sequence = 0;
                q.retry_in_flight = None;
            }
        }
        self.identity = Some(identity);
        self.bump = None;
    }

    /// The error for a stamped batch abandoned by a pending bump.
    pub(crate) fn bump_error(
        &self,
        batch: &ReadyBatch,
        cause: Option<&ClientError>,
    ) -> ClientError {
        bump_error(self.bump.as_deref(), batch, cause)
    }

    /// The partition keyless records of `topic` stick to now.
    pub(crate) fn sticky_partition(&mut self, topic: &str, partitions: u32) -> u32 {
        if let Some(&p) = self.sticky.get(topic)
            && p < partitions
        {
            return p;
        }
        let p = pick_sticky(partitions, None);
        self.sticky.insert(topic.to_owned(), p);
        p
    }

    /// Adds a record to `tp`'s open batch. Returns its future and whether the sender should
    /// look (a batch became ready, or a new one started its linger clock). `now` is read only
    /// when the record opens a batch.
    pub(crate) fn append(
        &mut self,
        tp: TopicPartition,
        record: &ProducerRecord,
        timestamp: i64,
        memory: OwnedSemaphorePermit,
        now: impl Fn() -> Instant,
    ) -> Result<(DeliveryFuture, bool), ClientError> {
        let estimate = record.payload_bytes() + crate::limits::RECORD_OVERHEAD_BYTES;
        let batch_bytes = self.config.batch_bytes;
        let headers: Vec<(&[u8], Option<&[u8]>)> = record
            .headers
            .iter()
            .map(|(k, v)| (k.as_bytes(), v.as_deref()))
            .collect();
        let key = record.key.as_deref();
        let value = record.value.as_deref();
        // The usual case, with one lookup: the open batch takes the record. Anything else
        // (no open batch, too full, refused) takes the general path below.
        let mut memory = Some(memory);
        if let Some(open) = self.partitions.get_mut(&tp).and_then(|q| q.open.as_mut())
            && (open.builder.is_empty() || open.builder.estimated_bytes() + estimate <= batch_bytes)
            && open.builder.push(timestamp, key, value, &headers).is_ok()
        {
            let future = open.admitted(timestamp, memory.take().expect("not used yet"));
            let full = open.builder.estimated_bytes() >= batch_bytes;
            if full {
                self.close_open(&tp);
            }
            return Ok((future, full));
        }
        let mut wake = false;
        let too_full = self
            .partitions
            .get(&tp)
            .and_then(|q| q.open.as_ref())
            .is_some_and(|o| {
                !o.builder.is_empty() && o.builder.estimated_bytes() + estimate > batch_bytes
            });
        if too_full {
            self.close_open(&tp);
            wake = true;
        }
        for fresh_try in [false, true] {
            if self.partitions.get(&tp).is_none_or(|q| q.open.is_none()) {
                let seq = self.next_seq;
                self.next_seq += 1;
                self.unfinished.insert(seq);
                self.pending.insert(tp.clone());
                self.partitions.entry(tp.clone()).or_default().open = Some(OpenBatch {
                    builder: BatchBuilder::with_capacity(
                        self.config.compression,
                        Limits::DEFAULT,
                        batch_bytes.min(crate::limits::BATCH_PREALLOC_BYTES_MAX),
                    ),
                    records: 0,
                    outcome: DeliverySender::new(tp.clone()),
                    created: now(),
                    memory: None,
                    seq,
                });
                wake = true;
            }
            let open = self
                .partitions
                .get_mut(&tp)
                .and_then(|q| q.open.as_mut())
                .expect("an open batch was just ensured");
            match open.builder.push(timestamp, key, value, &headers) {
                Ok(()) => {
                    let memory = memory.take().expect("taken once: this arm returns");
                    let future = open.admitted(timestamp, memory);
                    if open.builder.estimated_bytes() >= batch_bytes {
                        self.close_open(&tp);
                        wake = true;
                    }
                    return Ok((future, wake));
                }
                Err(e) if open.builder.is_empty() || fresh_try => {
                    if open.builder.is_empty() {
                        self.discard_empty_open(&tp);
                    }
                    return Err(too_large(e, estimate));
                }
                // The batch is full by some limit other than our estimate: start another.
                Err(_) => {
                    self.close_open(&tp);
                    wake = true;
                }
            }
        }
        unreachable!("the second try runs on a fresh batch and returns")
    }

    fn discard_empty_open(&mut self, tp: &TopicPartition) {
        if let Some(q) = self.partitions.get_mut(tp)
            && let Some(open) = q.open.take()
        {
            self.unfinished.remove(&open.seq);
        }
    }

    /// Closes `tp`'s open batch: builds it and queues it to send. A batch that fails to
    /// build fails its records here.
    fn close_open(&mut self, tp: &TopicPartition) {
        let Some(q) = self.partitions.get_mut(tp) else {
            return;
        };
        let Some(open) = q.open.take() else {
            return;
        };
        if self.sticky.get(&tp.topic) == Some(&tp.partition) {
            self.sticky.remove(&tp.topic);
        }
        let deadline = open.created + self.config.delivery_timeout;
        // An idempotent producer's batches are stamped (and their CRC computed) when first
        // taken to be sent, and nothing is sent before that (see `drain`).
        let built = if self.config.is_idempotent() {
            open.builder.build_unsealed()
        } else {
            open.builder.build()
        };
        match built {
            Ok(bytes) => q.ready.push_back(ReadyBatch {
                tp: tp.clone(),
                bytes: bytes.freeze(),
                records: open.records,
                outcome: open.outcome,
                deadline,
                attempts: 0,
                retry_at: None,
                refreshed_unknown: false,
                last_error: None,
                _memory: open.memory,
                seq: open.seq,
                sequence: None,
                stamped_with: None,
            }),
            Err(e) => {
                let error = ClientError::Build(e);
                tracing::warn!(%tp, %error, "batch could not be built");
                open.outcome.fail(error);
                self.unfinished.remove(&open.seq);
            }
        }
    }

    /// Closes every open batch (flush, close). Returns the sequence number every batch
    /// existing now is below.
    pub(crate) fn close_all(&mut self) -> u64 {
        let open: Vec<TopicPartition> = self
            .pending
            .iter()
            .filter(|tp| self.partitions.get(tp).is_some_and(|q| q.open.is_some()))
            .cloned()
            .collect();
        for tp in open {
            self.close_open(&tp);
        }
        self.next_seq
    }

    /// Takes what can be sent now: lingered or full batches, respecting backoff and the
    /// per-partition in-flight cap; fails batches past their delivery deadline. An
    /// idempotent producer without its identity yet sends nothing (`can_send` false); after
    /// a fatal error every queued batch fails with it.
    pub(crate) fn drain(&mut self, now: Instant, can_send: bool) -> Drained {
        let mut out = Drained::default();
        let linger = self.config.linger;
        let max_in_flight = self.config.max_in_flight_per_partition;
        let delivery_timeout = self.config.delivery_timeout;
        let lingered: Vec<TopicPartition> = self
            .pending
            .iter()
            .filter_map(|tp| {
                let q = self.partitions.get(tp)?;
                let open = q.open.as_ref()?;
                let due = self.closed || now >= open.created + linger;
                (due && (!q.is_blocked(max_in_flight) || now >= open.created + delivery_timeout))
                    .then(|| tp.clone())
            })
            .collect();
        for tp in &lingered {
            self.close_open(tp);
        }
        let delivery_timeout_ms = millis_u64(delivery_timeout);
        // Partitions left with nothing to send leave `pending` (retained in place: no
        // rebuilding of the set on every drain).
        self.pending.retain(|tp| {
            let Some(q) = self.partitions.get_mut(tp) else {
                return false;
            };
            if let Some(open) = &q.open {
                // A lingered batch of a blocked partition keeps filling; a settled request
                // wakes the sender (`after_settle`), and the delivery timeout still applies.
                let at = if now >= open.created + linger {
                    open.created + delivery_timeout
                } else {
                    open.created + linger
                };
                wake_at(&mut out.next_wake, at);
            }
            while let Some(front) = q.ready.front() {
                if let Some(fatal) = &self.fatal {
                    let batch = q.ready.pop_front().expect("front exists");
                    q.stamped.remove(&batch.seq);
                    out.failed.push(batch.fail(fatal));
                    continue;
                }
                if self.bump.is_some() && front.sequence.is_some() {
                    // Sent under the epoch being abandoned: never resent under the new one.
                    let batch = q.ready.pop_front().expect("front exists");
                    q.stamped.remove(&batch.seq);
                    let error = bump_error(self.bump.as_deref(), &batch, batch.last_error.as_ref());
                    out.failed.push(batch.fail(&error));
                    continue;
                }
                if now >= front.deadline {
                    let batch = q.ready.pop_front().expect("front exists");
                    q.stamped.remove(&batch.seq);
                    if batch.sequence.is_some()
                        && self.identity.is_some()
                        && self.fatal.is_none()
                        && self.bump.is_none()
                    {
                        let reason = format!(
                            "delivery of a sent batch of {} records to {tp} timed out after \
                             {delivery_timeout_ms} ms: its sequence is unresolved",
                            batch.record_count()
                        );
                        tracing::warn!(%reason, "idempotent producer will bump its epoch");
                        self.bump = Some(reason);
                    }
                    let error = batch.last_error.clone().unwrap_or(ClientError::Timeout {
                        what: format!(
                            "delivery of {} records to {}",
                            batch.record_count(),
                            batch.tp
                        ),
                        after_ms: delivery_timeout_ms,
                    });
                    out.failed.push(batch.fail(&error));
                    continue;
                }
                if q.in_flight >= max_in_flight || !can_send || self.bump.is_some() {
                    wake_at(&mut out.next_wake, front.deadline);
                    break;
                }
                if let Some(at) = front.retry_at
                    && at > now
                {
                    wake_at(&mut out.next_wake, at);
                    break;
                }
                let retry = front.sequence.is_some();
                if q.retry_in_flight.is_some() || (retry && q.in_flight > 0) {
                    // An idempotent retry goes only when nothing of its partition is in
                    // flight, and nothing follows it until its outcome is known: retries
                    // reach the broker one at a time and in order, and no later batch
                    // (possibly routed to a new leader) overtakes one (Kafka sends a retry
                    // only as the first in-flight sequence). `finished`/`requeue` wake the
                    // sender; the deadline still applies meanwhile.
                    wake_at(&mut out.next_wake, front.deadline);
                    break;
                }
                let mut batch = q.ready.pop_front().expect("front exists");
                if let Some(identity) = self.identity
                    && batch.sequence.is_none()
                {
                    let sequence = q.next_sequence;
                    let count = i32::try_from(batch.record_count()).unwrap_or(i32::MAX);
                    q.next_sequence = seq_add(sequence, count);
                    // The batch's only reference until it is sent: stamped in place.
                    let mut bytes = std::mem::take(&mut batch.bytes)
                        .try_into_mut()
                        .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
                    stamp_producer(&mut bytes, identity.id, identity.epoch, sequence);
                    batch.bytes = bytes.freeze();
                    batch.sequence = Some(sequence);
                    batch.stamped_with = Some(identity);
                    q.stamped.insert(batch.seq);
                }
                debug_assert!(
                    !self.config.is_idempotent() || batch.sequence.is_some(),
                    "an idempotent batch is stamped (and sealed) before it is sent"
                );
                if retry {
                    q.retry_in_flight = Some(batch.seq);
                }
                batch.attempts += 1;
                batch.retry_at = None;
                q.in_flight += 1;
                out.send.push(batch);
            }
            q.open.is_some() || !q.ready.is_empty()
        });
        for seq in &out.failed {
            self.unfinished.remove(seq);
        }
        out
    }

    /// A sent batch is done (acknowledged or failed for good).
    pub(crate) fn finished(&mut self, tp: &TopicPartition, seq: u64) {
        if let Some(q) = self.partitions.get_mut(tp) {
            q.in_flight = q.in_flight.saturating_sub(1);
            q.stamped.remove(&seq);
            if q.retry_in_flight == Some(seq) {
                q.retry_in_flight = None;
            }
        }
        self.unfinished.remove(&seq);
    }

    /// A sent batch goes back into its queue for another attempt, before every batch closed
    /// after it (several requeued batches keep their order).
    pub(crate) fn requeue(&mut self, batch: ReadyBatch) {
        let q = self.partitions.entry(batch.tp.clone()).or_default();
        q.in_flight = q.in_flight.saturating_sub(1);
        if q.retry_in_flight == Some(batch.seq) {
            q.retry_in_flight = None;
        }
        let at = q.ready.partition_point(|b| b.seq < batch.seq);
        self.pending.insert(batch.tp.clone());
        q.ready.insert(at, batch);
    }

    /// Whether a batch of `tp` closed before batch `seq` is stamped and not finished: a
    /// sequence gap the broker reports for `seq` is then that batch's retry in progress.
    pub(crate) fn earlier_unfinished(&self, tp: &TopicPartition, seq: u64) -> bool {
        self.partitions
            .get(tp)
            .and_then(|q| q.stamped.first())
            .is_some_and(|&first| first < seq)
    }

    /// The lowest unfinished batch number, `u64::MAX` when all are done.
    pub(crate) fn min_unfinished(&self) -> u64 {
        self.unfinished.first().copied().unwrap_or(u64::MAX)
    }

    /// Stops taking records; the remaining batches go out without lingering.
    pub(crate) fn close(&mut self) {
        self.closed = true;
    }

    /// Whether `close` was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    /// Whether nothing is open, queued or in flight.
    pub(crate) fn is_idle(&self) -> bool {
        self.unfinished.is_empty()
    }

    /// The config.
    #[cfg(test)]
    fn config(&self) -> &ProducerConfig {
        &self.config
    }

    /// The linger, for tests.
    #[cfg(test)]
    fn linger(&self) -> std::time::Duration {
        self.config.linger
    }
}

fn bump_error(
    reason: Option<&str>,
    batch: &ReadyBatch,
    cause: Option<&ClientError>,
) -> ClientError {
    let identity = batch.stamped_with;
    let reason = reason.unwrap_or("the epoch was bumped");
    ClientError::EpochBumped {
        topic: batch.tp.topic.clone(),
        partition: batch.tp.partition,
        producer_id: identity.map_or(-1, |i| i.id),
        epoch: identity.map_or(-1, |i| i.epoch),
        reason: match cause {
            Some(cause) => format!("{reason} (this batch's last error: {cause})"),
            None => reason.to_owned(),
        },
    }
}

fn wake_at(slot: &mut Option<Instant>, at: Instant) {
    *slot = Some(slot.map_or(at, |s| s.min(at)));
}

fn too_large(e: BuildError, estimate: usize) -> ClientError {
    match e {
        BuildError::LimitExceeded { what, size, max } => ClientError::TooLarge {
            what: "record",
            bytes: estimate,
            reason: format!("{what} {size} exceeds the limit of {max}"),
        },
        other => ClientError::Build(other),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::Semaphore;

    use super::*;

    fn permit(sem: &Arc<Semaphore>, n: u32) -> OwnedSemaphorePermit {
        sem.clone().try_acquire_many_owned(n).expect("permits")
    }

    /// A plain (not idempotent) producer's config; the idempotence tests say so.
    fn config(batch_bytes: usize) -> ProducerConfig {
        ProducerConfig {
            batch_bytes,
            linger: Duration::from_millis(10),
            idempotence: Some(false),
            ..ProducerConfig::default()
        }
    }

    fn idempotent(batch_bytes: usize) -> ProducerConfig {
        ProducerConfig {
            idempotence: Some(true),
            ..config(batch_bytes)
        }
    }

    #[test]
    fn full_batch_closes_and_linger_releases_the_rest() {
        let sem = Arc::new(Semaphore::new(1 << 20));
        let mut acc = Accumulator::new(config(1024));
        let tp = TopicPartition::new("t", 0);
        let now = Instant::now();
        let record = ProducerRecord::new("t", vec![7u8; 250]);
        for _ in 0..3 {
            acc.append(tp.clone(), &record, 1, permit(&sem, 364), || now)
                .expect("append");
        }
        // 3 x ~260 bytes fit in 1024 with the header; the fourth does not and closes the
        // first batch.
        let (_f, wake) = acc
            .append(tp.clone(), &record, 1, permit(&sem, 364), || now)
            .expect("append");
        assert!(wake);
        let drained = acc.drain(now, true);
        assert_eq!(drained.send.len(), 1);
        assert_eq!(drained.send[0].record_count(), 3);
        assert!(drained.send[0].bytes.len() <= 1024);
        assert_eq!(drained.next_wake, Some(now + acc.linger()));
        // After the linger the open batch goes too.
        let later = acc.drain(now + acc.linger(), true);
        assert_eq!(later.send.len(), 1);
        assert_eq!(later.send[0].record_count(), 1);
        // Memory stays held until the batches finish.
        assert_eq!(sem.available_permits(), (1 << 20) - 4 * 364);
        for b in drained.send.into_iter().chain(later.send) {
            let tp = b.tp.clone();
            let seq = b.complete(Some(0));
            acc.finished(&tp, seq);
        }
        assert!(acc.is_idle());
        assert_eq!(sem.available_permits(), 1 << 20);
    }

    #[test]
    fn in_flight_cap_and_order_per_partition() {
        let sem = Arc::new(Semaphore::new(1 << 20));
        let mut acc = Accumulator::new(ProducerConfig {
            max_in_flight_per_partition: 2,
            ..config(100)
        });
        let tp = TopicPartition::new("t", 0);
        let now = Instant::now();
        for i in 0..5u8 {
            // Each record is over batch_bytes, so each is its own batch.
            let record = ProducerRecord::new("t", vec![i; 200]);
            acc.append(tp.clone(), &record, 1, permit(&sem, 1), || now)
                .expect("append");
        }
        let first = acc.drain(now, true);
        assert_eq!(first.send.len(), 2);
        assert!(acc.drain(now, true).send.is_empty(), "cap of 2 in flight");
        let mut sent = first.send.into_iter();
        let mut a = sent.next().expect("a");
        let seq_a = a.seq;
        // A retriable failure puts the batch back at the front.
        a.schedule_retry(ClientError::Closed, acc.config(), now)
            .expect("retry allowed");
        acc.requeue(a);
        let again = acc.drain(now + Duration::from_secs(1), true);
        assert_eq!(again.send.len(), 1);
        assert_eq!(again.send[0].seq, seq_a, "the retried batch goes first");
        assert_eq!(again.send[0].attempts, 2);
    }

    #[test]
    fn lingered_batch_keeps_filling_while_its_partition_is_blocked() {
        let sem = Arc::new(Semaphore::new(1 << 20));
        let mut acc = Accumulator::new(ProducerConfig {
            max_in_flight_per_partition: 1,
            linger: Duration::ZERO,
            ..config(1 << 16)
        });
        let tp = TopicPartition::new("t", 0);
        let now = Instant::now();
        let record = ProducerRecord::new("t", vec![1u8; 100]);
        acc.append(tp.clone(), &record, 1, permit(&sem, 1), || now)
            .expect("append");
        let first = acc.drain(now, true);
        assert_eq!(
            first.send.len(),
            1,
            "linger 0: the first record goes at once"
        );
        // The only in-flight slot is taken: later records join one open batch instead of
        // each closing a batch of their own.
        for _ in 0..10 {
            acc.append(tp.clone(), &record, 1, permit(&sem, 1), || now)
                .expect("append");
            let drained = acc.drain(now, true);
            assert!(drained.send.is_empty(), "the partition is blocked");
            assert_eq!(
                drained.next_wake,
                Some(now + acc.config().delivery_timeout),
                "no busy wake-up for a blocked lingered batch"
            );
        }
        let b = first.send.into_iter().next().expect("sent");
        let seq = b.complete(Some(0));
        acc.finished(&tp, seq);
        let second = acc.drain(now, true);
        assert_eq!(second.send.len(), 1);
        assert_eq!(
            second.send[0].record_count(),
            10,
            "one batch of every waiting record"
        );
        // A blocked batch still closes at its delivery deadline, to be failed there.
        acc.append(tp.clone(), &record, 1, permit(&sem, 1), || now)
            .expect("append");
        let late = now + acc.config().delivery_timeout;
        let drained = acc.drain(late, true);
        assert!(drained.send.is_empty());
        assert_eq!(drained.failed.len(), 1, "past its deadline the batch fails");
    }

    #[test]
    fn oversized_record_is_a_typed_error_and_leaves_nothing_behind() {
        let sem = Arc::new(Semaphore::new(1 << 20));
        let mut acc = Accumulator::new(config(1024));
        let tp = TopicPartition::new("t", 0);
        let huge_key = vec![0u8; sluice_proto::KEY_BYTES_MAX as usize + 1];
        let record = ProducerRecord::new("t", "v").key(huge_key);
        let err = acc
            .append(tp, &record, 1, permit(&sem, 1), Instant::now)
            .expect_err("too large");
        assert!(matches!(err, ClientError::TooLarge { .. }), "{err}");
        assert!(err.to_string().contains("key bytes"), "{err}");
        assert!(acc.is_idle());
    }

    #[test]
    fn idempotent_batches_are_stamped_once_and_requeued_in_order() {
        let sem = Arc::new(Semaphore::new(1 << 20));
        let mut acc = Accumulator::new(idempotent(100));
        let tp = TopicPartition::new("t", 0);
        let now = Instant::now();
        for i in 0..3u8 {
            // Two records per batch: each record is over half of batch_bytes.
            let record = ProducerRecord::new("t", vec![i; 60]);
            acc.append(tp.clone(), &record, 1, permit(&sem, 1), || now)
                .expect("append");
            acc.append(tp.clone(), &record, 1, permit(&sem, 1), || now)
                .expect("append");
        }
        // Without an identity nothing is sent.
        assert!(acc.drain(now, false).send.is_empty());
        acc.identity = Some(ProducerIdentity { id: 9, epoch: 2 });
        let sent = acc.drain(now + Duration::from_secs(1), true).send;
        let sequences: Vec<_> = sent.iter().map(|b| b.sequence).collect();
        let counts: Vec<_> = sent.iter().map(ReadyBatch::record_count).collect();
        let mut expected = Vec::new();
        let mut next = 0i32;
        for c in &counts {
            expected.push(Some(next));
            next += *c as i32;
        }
        assert_eq!(sequences, expected);
        for b in &sent {
            sluice_proto::verify_crc(&b.bytes).expect("stamped batches keep a valid CRC");
            let h = sluice_proto::BatchHeader::parse(&b.bytes, &Limits::DEFAULT).expect("header");
            assert_eq!((h.producer_id, h.producer_epoch), (9, 2));
            assert_eq!(Some(h.base_sequence), b.sequence);
        }
        // The first two fail (lost connection); requeued in any order they go back in order,
        // and a retry sends the same bytes.
        let mut sent = sent.into_iter();
        let (a, b) = (sent.next().expect("a"), sent.next().expect("b"));
        let (a_bytes, a_seq) = (a.bytes.clone(), a.seq);
        assert!(
            acc.earlier_unfinished(&tp, b.seq),
            "a is before b and unfinished"
        );
        assert!(!acc.earlier_unfinished(&tp, a.seq));
        let rest: Vec<ReadyBatch> = sent.collect();
        assert!(!rest.is_empty());
        let b_seq = b.seq;
        acc.requeue(b);
        acc.requeue(a);
        // Later batches are still in flight: no retry goes until their outcome is known (a
        // retry sent now could reach the broker behind them, or they behind it).
        assert!(
            acc.drain(now + Duration::from_secs(2), true)
                .send
                .is_empty()
        );
        for later in rest {
            acc.requeue(later);
        }
        // Retries go one at a time, in order.
        let again = acc.drain(now + Duration::from_secs(3), true).send;
        assert_eq!(again.len(), 1, "one retry in flight");
        assert_eq!(again[0].seq, a_seq);
        assert_eq!(again[0].bytes, a_bytes, "a retry is byte-identical");
        assert!(
            acc.drain(now + Duration::from_secs(4), true)
                .send
                .is_empty(),
            "nothing follows a retry in flight"
        );
        let a = again.into_iter().next().expect("a");
        let seq = a.complete(Some(0));
        acc.finished(&tp, seq);
        let again = acc.drain(now + Duration::from_secs(5), true).send;
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].seq, b_seq, "then b");
    }

    #[test]
    fn delivery_deadline_fails_waiting_batches() {
        let sem = Arc::new(Semaphore::new(1 << 20));
        let mut acc = Accumulator::new(ProducerConfig {
            delivery_timeout: Duration::from_millis(50),
            ..config(1024)
        });
        let now = Instant::now();
        let (mut fut, _) = acc
            .append(
                TopicPartition::new("t", 0),
                &ProducerRecord::new("t", "v"),
                1,
                permit(&sem, 1),
                || now,
            )
            .expect("append");
        let drained = acc.drain(now + Duration::from_millis(60), true);
        assert_eq!(drained.failed.len(), 1);
        assert!(acc.is_idle());
        match fut.rx_try() {
            Some(Err(ClientError::Timeout { .. })) => {}
            other => panic!("expected a timeout, got {other:?}"),
        }
    }

    #[test]
    fn a_bump_abandons_old_epoch_batches_and_restarts_sequences() {
        let sem = Arc::new(Semaphore::new(1 << 20));
        let mut acc = Accumulator::new(ProducerConfig {
            max_in_flight_per_partition: 5,
            ..idempotent(100)
        });
        let (t0, t1) = (TopicPartition::new("t", 0), TopicPartition::new("t", 1));
        let now = Instant::now();
        acc.identity = Some(ProducerIdentity { id: 4, epoch: 0 });
        let mut futures = Vec::new();
        for tp in [&t0, &t0, &t1] {
            let record = ProducerRecord::new("t", vec![1u8; 200]);
            let (f, _) = acc
                .append(tp.clone(), &record, 1, permit(&sem, 1), || now)
                .expect("append");
            futures.push(f);
        }
        let sent = acc.drain(now, true).send;
        assert_eq!(sent.len(), 3);
        let mut sent = sent.into_iter();
        let (a, mut b, c) = (
            sent.next().expect("a"),
            sent.next().expect("b"),
            sent.next().expect("c"),
        );
        // `a` timed out for good: a bump is due; `b` came back with a retriable error and is
        // queued; `c` is still in flight.
        let a_seq = a.seq;
        let _ = a.fail(&ClientError::Closed);
        acc.finished(&t0, a_seq);
        acc.begin_bump("a timed out".into());
        b.schedule_retry(ClientError::Closed, acc.config(), now)
            .expect("retry allowed");
        acc.requeue(b);
        // A record appended meanwhile waits for the new epoch.
        let (mut later, _) = acc
            .append(
                t0.clone(),
                &ProducerRecord::new("t", vec![2u8; 200]),
                1,
                permit(&sem, 1),
                || now,
            )
            .expect("append");
        let drained = acc.drain(now + Duration::from_secs(1), true);
        assert!(
            drained.send.is_empty(),
            "nothing is sent while a bump is pending"
        );
        assert_eq!(drained.failed.len(), 1, "the queued old-epoch retry fails");
        match futures[1].rx_try() {
            Some(Err(ClientError::EpochBumped {
                producer_id: 4,
                epoch: 0,
                reason,
                ..
            })) => {
                assert!(reason.contains("a timed out"), "{reason}")
            }
            other => panic!("expected EpochBumped, got {other:?}"),
        }
        assert!(!acc.ready_to_bump(), "c is still in flight");
        let c_seq = c.complete(Some(9));
        acc.finished(&t1, c_seq);
        assert!(acc.ready_to_bump());
        acc.install_identity(ProducerIdentity { id: 4, epoch: 1 });
        let sent = acc.drain(now + Duration::from_secs(2), true).send;
        assert_eq!(sent.len(), 1);
        let h = sluice_proto::BatchHeader::parse(&sent[0].bytes, &Limits::DEFAULT).expect("header");
        assert_eq!(
            (h.producer_id, h.producer_epoch, h.base_sequence),
            (4, 1, 0)
        );
        let tp = sent[0].tp.clone();
        let seq = sent.into_iter().next().expect("one").complete(Some(10));
        acc.finished(&tp, seq);
        assert!(matches!(later.rx_try(), Some(Ok(_))));
        assert!(acc.is_idle());
    }
}
