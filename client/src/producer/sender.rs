//! The sender task: drains the accumulator, groups batches into one produce request per
//! destination connection, writes the requests in order, and settles each batch from the
//! response (acknowledge, retry with backoff, or fail).
//!
//! Requests are put on a connection's queue one after another from this single task, so
//! batches of one partition reach the wire in the order they were closed; only waiting for
//! the responses happens in spawned tasks.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use sluice_proto::protocol::{
    ApiKey, ErrorCode, InitProducerIdRequest, InitProducerIdResponse, NO_PRODUCER_EPOCH,
    NO_PRODUCER_ID, ProducePartition, ProduceRequest, ProduceResponse, ProduceTopic, RecordSet,
};

use super::ProducerShared;
use super::accumulator::{ProducerIdentity, ReadyBatch};
use crate::config::millis_u32;
use crate::connection::Connection;
use crate::error::ClientError;
use crate::limits::PRODUCE_REQUEST_BYTES_MAX;

/// Runs until the producer is closed and everything is settled.
pub(crate) async fn run(shared: Arc<ProducerShared>) {
    let idempotent = shared.config.is_idempotent();
    let mut next_init = Instant::now();
    loop {
        let (wants_identity, current) = if idempotent {
            let acc = shared.lock();
            let wants = (acc.identity.is_none() || acc.ready_to_bump())
                && acc.fatal.is_none()
                && !acc.is_idle();
            (wants, acc.identity)
        } else {
            (false, None)
        };
        if wants_identity && Instant::now() >= next_init {
            match init_identity(&shared, current).await {
                Ok(identity) => {
                    if current.is_some() {
                        tracing::info!(
                            producer_id = identity.id,
                            epoch = identity.epoch,
                            "idempotent producer epoch bumped; sequences restart at 0"
                        );
                    } else {
                        tracing::debug!(
                            producer_id = identity.id,
                            epoch = identity.epoch,
                            "idempotent producer ready"
                        );
                    }
                    shared.lock().install_identity(identity);
                }
                Err(e) if e.is_retriable() => {
                    tracing::debug!(error = %e, "InitProducerId failed; will retry");
                    next_init = Instant::now() + shared.config.retry_backoff;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "InitProducerId refused: the producer cannot send");
                    shared.lock().fatal = Some(e);
                }
            }
        }
        let (mut drained, done) = {
            let mut acc = shared.lock();
            let can_send = !idempotent
                || (acc.identity.is_some() && acc.bump.is_none())
                || acc.fatal.is_some();
            let drained = acc.drain(Instant::now(), can_send);
            let done = acc.is_closed() && acc.is_idle();
            (drained, done)
        };
        let still_waiting = {
            let acc = shared.lock();
            acc.identity.is_none() || acc.ready_to_bump()
        };
        if wants_identity && still_waiting {
            drained.next_wake = Some(drained.next_wake.map_or(next_init, |w| w.min(next_init)));
        }
        if !drained.failed.is_empty() {
            shared.publish_progress();
        }
        if idempotent && !wants_identity && drained.send.is_empty() {
            // A delivery timeout in `drain` may have made a bump due: go round to start it.
            let acc = shared.lock();
            if acc.ready_to_bump() && acc.fatal.is_none() && !acc.is_idle() {
                continue;
            }
        }
        if done {
            break;
        }
        if !drained.send.is_empty() {
            dispatch(&shared, drained.send).await;
            // Dispatch may have settled or requeued batches (routing or dial failures), so
            // the wake time computed above is stale: look again.
            shared.publish_progress();
            continue;
        }
        match drained.next_wake {
            Some(at) => {
                tokio::select! {
                    _ = shared.wake.notified() => {}
                    _ = tokio::time::sleep_until(at.into()) => {}
                }
            }
            None => shared.wake.notified().await,
        }
    }
    tracing::debug!("producer sender stopped");
}

/// Asks the broker for a producer id and epoch: a fresh one, or with `current` the bump of
/// its epoch. A bump the broker refuses (the epoch is stale, for instance because the answer
/// to an earlier bump was lost; the id is unknown; the broker restarted without it) falls
/// back to a fresh id, which is as safe: no partition has state for it.
async fn init_identity(
    shared: &ProducerShared,
    current: Option<ProducerIdentity>,
) -> Result<ProducerIdentity, ClientError> {
    if let Some(current) = current {
        match init_once(shared, current.id, current.epoch).await {
            Err(e) if !e.is_retriable() => {
                tracing::info!(
                    producer_id = current.id,
                    epoch = current.epoch,
                    error = %e,
                    "epoch bump refused; asking for a new producer id"
                );
            }
            other => return other,
        }
    }
    init_once(shared, NO_PRODUCER_ID, NO_PRODUCER_EPOCH).await
}

async fn init_once(
    shared: &ProducerShared,
    producer_id: i64,
    producer_epoch: i16,
) -> Result<ProducerIdentity, ClientError> {
    let request = InitProducerIdRequest {
        transactional_id: None,
        producer_id,
        producer_epoch,
    };
    let response: InitProducerIdResponse = shared
        .client
        .admin(ApiKey::InitProducerId, &request)
        .await?;
    if response.error != ErrorCode::NONE {
        return Err(ClientError::from_code(
            response.error,
            &response.message,
            "",
        ));
    }
    Ok(ProducerIdentity {
        id: response.producer_id,
        epoch: response.producer_epoch,
    })
}

/// One produce request: at most one batch per partition, within the request byte cap.
#[derive(Default)]
struct Request {
    batches: Vec<ReadyBatch>,
    bytes: usize,
}

impl Request {
    fn accepts(&self, batch: &ReadyBatch) -> bool {
        self.batches.is_empty()
            || (self.bytes + batch.bytes.len() <= PRODUCE_REQUEST_BYTES_MAX
                && !self.batches.iter().any(|b| b.tp == batch.tp))
    }
}

async fn dispatch(shared: &Arc<ProducerShared>, batches: Vec<ReadyBatch>) {
    let mut by_addr: BTreeMap<String, Vec<Request>> = BTreeMap::new();
    for batch in batches {
        let addr = match shared
            .client
            .partition_address(&batch.tp.topic, batch.tp.partition)
            .await
        {
            Ok(addr) => addr,
            Err(e) => {
                settle_failure(shared, batch, e);
                continue;
            }
        };
        let requests = by_addr.entry(addr).or_default();
        // A partition's batches go in successive requests, which are queued in order.
        let index = requests
            .iter()
            .rposition(|r| r.batches.iter().any(|b| b.tp == batch.tp))
            .map_or(0, |i| i + 1);
        let slot = match requests[index.min(requests.len())..]
            .iter()
            .position(|r| r.accepts(&batch))
        {
            Some(i) => index + i,
            None => {
                requests.push(Request::default());
                requests.len() - 1
            }
        };
        requests[slot].bytes += batch.bytes.len();
        requests[slot].batches.push(batch);
    }
    for (addr, requests) in by_addr {
        let conn = match shared.client.connection(&addr).await {
            Ok(conn) => conn,
            Err(e) => {
                for r in requests {
                    for b in r.batches {
                        settle_failure(shared, b, e.clone());
                    }
                }
                continue;
            }
        };
        for request in requests {
            send_request(shared, &conn, request).await;
        }
    }
}

async fn send_request(shared: &Arc<ProducerShared>, conn: &Arc<Connection>, request: Request) {
    let acks = shared.config.acks;
    let timeout = shared.client.request_timeout();
    let mut topics: BTreeMap<&str, Vec<ProducePartition>> = BTreeMap::new();
    for b in &request.batches {
        topics
            .entry(b.tp.topic.as_str())
            .or_default()
            .push(ProducePartition {
                partition: b.tp.partition,
                records: RecordSet::Chunks(vec![b.bytes.clone()]),
            });
    }
    let body = ProduceRequest {
        acks: acks.wire(),
        timeout_ms: millis_u32(timeout),
        topics: topics
            .into_iter()
            .map(|(name, partitions)| ProduceTopic {
                name: name.to_owned(),
                partitions,
            })
            .collect(),
    };
    let expects_response = acks != super::Acks::None;
    let started = conn
        .start(ApiKey::Produce, &body, expects_response, timeout)
        .await;
    let shared = shared.clone();
    match started {
        Err(e) => settle_request(&shared, request.batches, Err(e)),
        Ok(pending) => {
            tokio::spawn(async move {
                let result = pending.wait::<ProduceResponse>(timeout).await;
                settle_request(&shared, request.batches, result);
            });
        }
    }
}

/// Settles every batch of one request from its outcome.
fn settle_request(
    shared: &Arc<ProducerShared>,
    batches: Vec<ReadyBatch>,
    result: Result<Option<ProduceResponse>, ClientError>,
) {
    match result {
        Ok(None) => {
            for b in batches {
                let tp = b.tp.clone();
                let seq = b.complete(None);
                shared.lock().finished(&tp, seq);
            }
        }
        Ok(Some(response)) => {
            for b in batches {
                let found = response
                    .topics
                    .iter()
                    .filter(|t| t.name == b.tp.topic)
                    .flat_map(|t| t.partitions.iter())
                    .find(|p| p.partition == b.tp.partition);
                match found {
                    Some(p) if p.error == ErrorCode::NONE => {
                        let tp = b.tp.clone();
                        let seq = b.complete(Some(p.base_offset));
                        shared.lock().finished(&tp, seq);
                    }
                    Some(p)
                        if p.error == ErrorCode::DUPLICATE_SEQUENCE_NUMBER
                            && b.sequence.is_some() =>
                    {
                        // Kafka's rule: the partition has this batch already (its sequence
                        // is below the last one written, older than the batches whose
                        // offsets it keeps), so it is in the log, at an offset no longer
                        // known: delivered, offset -1. A retry of a batch whose answer was
                        // lost, after later batches landed, gets this.
                        tracing::debug!(tp = %b.tp, sequence = ?b.sequence,
                            "the partition had this batch already; delivered, offset unknown");
                        let tp = b.tp.clone();
                        let seq = b.complete(None);
                        shared.lock().finished(&tp, seq);
                    }
                    Some(p) => {
                        let error = partition_error(shared, &b, p.error, &p.message);
                        settle_failure(shared, b, error);
                    }
                    None => {
                        let error = ClientError::Broker {
                            code: ErrorCode::UNKNOWN_SERVER_ERROR,
                            message: format!("produce response has no result for {}", b.tp),
                        };
                        settle_failure(shared, b, error);
                    }
                }
            }
        }
        Err(e) => {
            if matches!(e, ClientError::Timeout { .. }) {
                tracing::debug!(error = %e, "produce request timed out");
            }
            for b in batches {
                settle_failure(shared, b, e.clone());
            }
        }
    }
    shared.after_settle();
}

fn partition_error(
    shared: &ProducerShared,
    batch: &ReadyBatch,
    code: ErrorCode,
    message: &str,
) -> ClientError {
    if code == ErrorCode::PRODUCER_FENCED || code == ErrorCode::INVALID_PRODUCER_EPOCH {
        let identity = shared.lock().identity;
        return ClientError::ProducerFenced {
            producer_id: identity.map_or(-1, |i| i.id),
            epoch: identity.map_or(-1, |i| i.epoch),
            message: format!("{code}: {message}"),
        };
    }
    if code == ErrorCode::OUT_OF_ORDER_SEQUENCE_NUMBER {
        return ClientError::OutOfOrderSequence {
            topic: batch.tp.topic.clone(),
            partition: batch.tp.partition,
            message: message.to_owned(),
        };
    }
    if code == ErrorCode::MESSAGE_TOO_LARGE {
        let what = if batch.record_count() == 1 {
            "record"
        } else {
            "record batch"
        };
        return ClientError::TooLarge {
            what,
            bytes: batch.bytes.len(),
            reason: if message.is_empty() {
                "MESSAGE_TOO_LARGE".to_owned()
            } else {
                format!("MESSAGE_TOO_LARGE ({message})")
            },
        };
    }
    ClientError::from_code(code, message, &batch.tp.topic)
}

/// Retries a batch if the error allows, else fails its records.
fn settle_failure(shared: &Arc<ProducerShared>, mut batch: ReadyBatch, error: ClientError) {
    let unknown = matches!(error, ClientError::UnknownTopic { .. });
    if unknown {
        shared.client.forget_topic(&batch.tp.topic);
    } else if error.wants_metadata_refresh() {
        // The leader moved or its connection died: the refresher (one refresh in flight,
        // `retry_backoff` apart) re-routes the partition before the retry is dispatched,
        // in the usual case; a retry to the old leader just fails the same way again.
        shared.client.request_metadata_refresh();
    }
    if batch.sequence.is_some() && shared.lock().bump.is_some() {
        // Sent under the epoch being abandoned: it may be in the log, so it is never resent
        // under the new one, and the old one is over.
        let error = shared.lock().bump_error(&batch, Some(&error));
        fail(shared, batch, &error);
        return;
    }
    if let ClientError::OutOfOrderSequence { .. } = error
        && shared.lock().earlier_unfinished(&batch.tp, batch.seq)
    {
        // A batch before this one is being retried: the broker refused this one because it
        // came first. It goes back behind that batch, without using up a retry.
        tracing::debug!(tp = %batch.tp, "sequence gap behind a retried batch; resending in order");
        batch.attempts = batch.attempts.saturating_sub(1);
        match batch.schedule_retry(error, &shared.config, Instant::now()) {
            Ok(()) => shared.lock().requeue(batch),
            Err(error) => fail(shared, batch, &error),
        }
        return;
    }
    if let ClientError::ProducerFenced { .. } = error {
        tracing::warn!(tp = %batch.tp, %error, "idempotent producer stopped by a fatal error");
        shared.lock().fatal.get_or_insert_with(|| error.clone());
        fail(shared, batch, &error);
        return;
    }
    // An unknown topic may be a stale cache (topic just created elsewhere): one retry.
    let retriable = error.is_retriable() || (unknown && !batch.refreshed_unknown);
    if unknown {
        batch.refreshed_unknown = true;
    }
    if retriable {
        tracing::debug!(tp = %batch.tp, attempt = batch.attempts, %error, "produce will retry");
        match batch.schedule_retry(error, &shared.config, Instant::now()) {
            Ok(()) => shared.lock().requeue(batch),
            Err(error) => fail(shared, batch, &error),
        }
    } else {
        fail(shared, batch, &error);
    }
}

/// Fails a batch for good. A stamped batch leaves its sequence unresolved (a gap, or
/// records that may be in the log): the epoch is bumped (a no-op if a bump is already
/// pending or the producer is fenced). This covers delivery timeouts, used-up retries,
/// `OUT_OF_ORDER_SEQUENCE_NUMBER` without an earlier batch being retried, and
/// `UNKNOWN_PRODUCER_ID`.
fn fail(shared: &Arc<ProducerShared>, batch: ReadyBatch, error: &ClientError) {
    tracing::debug!(tp = %batch.tp, records = batch.record_count(), %error, "produce failed");
    let tp = batch.tp.clone();
    let records = batch.record_count();
    let stamped = batch.sequence.is_some();
    let seq = batch.fail(error);
    let mut acc = shared.lock();
    acc.finished(&tp, seq);
    if stamped {
        acc.begin_bump(format!(
            "a sent batch of {records} records to {tp} failed for good: {error}"
        ));
    }
}
