//! One partition on its owning shard, and the operations the shard runs on it: append
//! (admitted in order), read up to the high watermark, offsets, watch for new data.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use futures_util::future::{Either, select, select_all};
use sluice_proto::protocol::{
    ACKS_ALL, ACKS_NONE, EARLIEST_TIMESTAMP, ErrorCode, FetchPartitionResult, LATEST_TIMESTAMP,
    ListOffsetsPartitionResult, ProducePartitionResult, RecordSet,
};
use sluice_proto::{BATCH_HEADER_BYTES, BatchHeader, Limits, Offset, peek_batch_length};
use sluice_storage::{LogError, PartitionLog, system_clock_ms};

use crate::shard::msg::{FetchPart, OffsetsResult, ProducePart, WatchPart};
use crate::shard::producer_state::{ProducerStates, Verdict};
use crate::ticket::{Admission, Ticket};

/// A partition's log and its admission queue.
pub(crate) struct Partition {
    /// Topic name.
    pub(crate) topic: String,
    /// Partition index.
    pub(crate) index: u32,
    /// The log.
    pub(crate) log: PartitionLog,
    /// Appends run in ticket order.
    pub(crate) admission: Admission,
    /// `max.message.bytes`.
    pub(crate) max_batch_bytes: usize,
    /// Idempotent producers' sequences and epochs; checked and updated only while holding
    /// an admission ticket.
    pub(crate) producers: RefCell<ProducerStates>,
    /// Role (leader, follower) and replication state in cluster mode.
    pub(crate) replica: crate::replica::ReplicaState,
}

/// A per-partition failure: code and message.
type Failure = (ErrorCode, String);

/// Maps a log error to the code a client sees, and logs it when it is the broker's fault.
pub(crate) fn log_error(topic: &str, partition: u32, err: &LogError) -> Failure {
    let code = match err {
        LogError::InvalidBatch(_) => ErrorCode::CORRUPT_MESSAGE,
        LogError::BatchTooLarge { .. } => ErrorCode::MESSAGE_TOO_LARGE,
        LogError::OffsetOutOfRange { .. } => ErrorCode::OFFSET_OUT_OF_RANGE,
        LogError::Closed => ErrorCode::UNKNOWN_TOPIC_OR_PARTITION,
        LogError::DiskFull { .. } => ErrorCode::DISK_FULL,
        LogError::Io { .. }
        | LogError::Stopped { .. }
        | LogError::Corrupt { .. }
        | LogError::InvalidConfig(_)
        | LogError::WriteBudgetTooSmall { .. } => ErrorCode::STORAGE_ERROR,
        // Only the replication path appends replica batches or changes epochs; it maps
        // these itself. Reaching here would be a broker bug.
        LogError::NonContiguous { .. }
        | LogError::StaleLeaderEpoch { .. }
        | LogError::LeaderLog { .. } => ErrorCode::STORAGE_ERROR,
    };
    if matches!(err, LogError::Stopped { .. }) {
        // The log said so once, at error, when it stopped: not again for every request.
        tracing::debug!(topic, partition, error = %err, "request refused by a stopped log");
    } else if code == ErrorCode::STORAGE_ERROR {
        tracing::error!(topic, partition, error = %err, "partition log error");
    } else {
        tracing::debug!(topic, partition, error = %err, "request refused by the log");
    }
    (code, err.to_string())
}

thread_local! {
    /// Whether this shard's broker runs in a cluster (`--cluster`); set once at shard start.
    static CLUSTER_MODE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Records at shard start whether the broker runs in a cluster.
pub(crate) fn set_cluster_mode(on: bool) {
    CLUSTER_MODE.with(|c| c.set(on));
}

/// A partition this shard does not hold. Alone, the topic or partition does not exist. In a
/// cluster the client routed here from metadata, so the topic exists and this node is not
/// (or not yet: a just-restarted node before its first view) a replica the client may use:
/// NOT_LEADER_OR_FOLLOWER, which clients retry after refreshing their metadata.
fn unknown(topic: &str, partition: u32) -> Failure {
    if CLUSTER_MODE.with(std::cell::Cell::get) {
        return (
            ErrorCode::NOT_LEADER_OR_FOLLOWER,
            format!("this broker holds no replica of {topic}/{partition} (now): refresh metadata"),
        );
    }
    (
        ErrorCode::UNKNOWN_TOPIC_OR_PARTITION,
        format!("unknown topic or partition {topic}/{partition}"),
    )
}

/// Cuts a record set into its batches (zero-copy `split_to`), checking each against
/// `max_batch_bytes`. Full validation (CRC, layout) is the log's, at append.
fn split_record_set(
    mut records: BytesMut,
    max_batch_bytes: usize,
) -> Result<Vec<BytesMut>, Failure> {
    if records.is_empty() {
        return Err((ErrorCode::CORRUPT_MESSAGE, "empty record set".into()));
    }
    let mut batches = Vec::new();
    let mut at = 0usize;
    while !records.is_empty() {
        let corrupt = |why: String| {
            (
                ErrorCode::CORRUPT_MESSAGE,
                format!("batch at byte {at}: {why}"),
            )
        };
        let len = peek_batch_length(&records).ok_or_else(|| {
            corrupt(format!(
                "{} bytes left, shorter than a header",
                records.len()
            ))
        })? as usize;
        if len > max_batch_bytes {
            return Err((
                ErrorCode::MESSAGE_TOO_LARGE,
                format!(
                    "batch at byte {at} is {len} bytes, over max.message.bytes {max_batch_bytes}"
                ),
            ));
        }
        if len < BATCH_HEADER_BYTES || len > records.len() {
            return Err(corrupt(format!(
                "declared length {len} with {} bytes left",
                records.len()
            )));
        }
        batches.push(records.split_to(len));
        at += len;
    }
    Ok(batches)
}

/// Takes the admission tickets for `parts` now (in arrival order), then runs the appends.
pub(crate) fn admit_produce(
    lookup: impl Fn(&str, u32) -> Option<Rc<Partition>>,
    acks: i8,
    timeout_ms: u32,
    parts: Vec<ProducePart>,
) -> impl std::future::Future<Output = Vec<ProducePartitionResult>> {
    let admitted: Vec<_> = parts
        .into_iter()
        .map(|part| {
            let target = lookup(&part.topic, part.partition).map(|p| {
                let ticket = p.admission.ticket();
                (p, ticket)
            });
            (part, target)
        })
        .collect();
    let deadline = Instant::now() + Duration::from_millis(u64::from(timeout_ms));
    async move {
        let runs = admitted.into_iter().map(|(part, target)| {
            let partition = part.partition;
            async move {
                let outcome = match target {
                    None => Err(unknown(&part.topic, part.partition)),
                    Some((p, ticket)) => produce_one(p, ticket, part.records, acks, deadline).await,
                };
                match outcome {
                    Ok((base, start)) => ProducePartitionResult {
                        partition,
                        error: ErrorCode::NONE,
                        message: String::new(),
                        base_offset: base,
                        log_start_offset: start,
                    },
                    Err((error, message)) => ProducePartitionResult {
                        partition,
                        error,
                        message,
                        base_offset: 0,
                        log_start_offset: 0,
                    },
                }
            }
        });
        futures_util::future::join_all(runs).await
    }
}

/// A compacted topic needs a key on every record (the cleaner keeps the latest record per
/// key; a keyless one could never be superseded): Kafka's `INVALID_RECORD`, naming the record.
fn reject_keyless(p: &Partition, batches: &[BytesMut]) -> Result<(), Failure> {
    for (i, batch) in batches.iter().enumerate() {
        let corrupt =
            |e: sluice_proto::DecodeError| (ErrorCode::CORRUPT_MESSAGE, format!("batch {i}: {e}"));
        // A copy: the set is appended (and stamped in place) only after the checks.
        let batch =
            sluice_proto::RecordBatch::from_bytes(Bytes::copy_from_slice(batch), &Limits::DEFAULT)
                .map_err(corrupt)?;
        for (j, record) in batch.records().map_err(corrupt)?.enumerate() {
            if record.map_err(corrupt)?.key.is_none() {
                tracing::debug!(
                    topic = %p.topic,
                    partition = p.index,
                    "keyless record refused on a compacted topic"
                );
                return Err((
                    ErrorCode::INVALID_RECORD,
                    format!(
                        "record {j} of batch {i} has no key: topic {} is compacted \
                         (cleanup.policy=compact) and every record needs a key",
                        p.topic
                    ),
                ));
            }
        }
    }
    Ok(())
}

async fn produce_one(
    p: Rc<Partition>,
    ticket: Ticket,
    records: BytesMut,
    acks: i8,
    deadline: Instant,
) -> Result<(u64, u64), Failure> {
    if p.topic == crate::group::OFFSETS_TOPIC {
        // Only the group coordinator writes there (and not through Produce).
        tracing::warn!(
            partition = p.index,
            "produce to the internal offsets topic refused"
        );
        return Err((
            ErrorCode::INVALID_TOPIC,
            format!(
                "{} is internal: only the group coordinator writes to it",
                crate::group::OFFSETS_TOPIC
            ),
        ));
    }
    crate::replica::check_leader(&p)?;
    let batches = split_record_set(records, p.max_batch_bytes)?;
    let timed_out = || {
        (
            ErrorCode::REQUEST_TIMED_OUT,
            "not acknowledged within the request timeout".to_string(),
        )
    };
    let headers = batches
        .iter()
        .map(|b| BatchHeader::parse(b, &Limits::DEFAULT))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| (ErrorCode::CORRUPT_MESSAGE, format!("bad batch header: {e}")))?;
    if p.log.compacted() {
        reject_keyless(&p, &batches)?;
    }
    let remaining = deadline.saturating_duration_since(Instant::now());
    compio::time::timeout(remaining, ticket.turn())
        .await
        .map_err(|_| timed_out())?;
    // From here to `drop(ticket)` no other append of this partition runs, so the producer
    // checks and the appends they allow cannot interleave with another request's.
    // Leadership may have moved while this request waited its turn.
    crate::replica::check_leader(&p)?;
    if acks == ACKS_ALL {
        crate::replica::check_enough_replicas(&p)?;
    }
    check_producers(&p, &headers)?;
    // Appends are not cut by the timeout: a set is appended whole or not at all, barring a
    // failure of the log.
    let mut base = None;
    let mut last = None;
    let mut end = Offset(0);
    for (batch, header) in batches.into_iter().zip(&headers) {
        // Checked again against the state the set's earlier batches left.
        let verdict = p.producers.borrow().check(header);
        match verdict.map_err(|refusal| refuse(&p, header, refusal))? {
            Verdict::Duplicate {
                base_offset,
                last_offset,
            } => {
                tracing::debug!(
                    topic = %p.topic,
                    partition = p.index,
                    producer_id = header.producer_id,
                    sequence = header.base_sequence,
                    base_offset,
                    "duplicate batch: answering its original offset"
                );
                base.get_or_insert(Offset(base_offset));
                end = Offset(last_offset + 1);
                last = Some(p.log.durable_at(end));
            }
            Verdict::Append => {
                let bytes = batch.len();
                let appended = p
                    .log
                    .append(batch)
                    .await
                    .map_err(|e| log_error(&p.topic, p.index, &e))?;
                crate::metrics::produced(
                    &p.topic,
                    p.index,
                    bytes,
                    appended.last_offset.get() - appended.base_offset.get() + 1,
                );
                p.producers.borrow_mut().record(
                    header,
                    appended.base_offset.get(),
                    system_clock_ms(),
                );
                base.get_or_insert(appended.base_offset);
                end = Offset(appended.last_offset.get() + 1);
                last = Some(appended.durable);
            }
        }
    }
    drop(ticket);
    let base = base.expect("a record set has at least one batch");
    let log_start = p.log.offsets().log_start.get();
    if p.replica.is_cluster() {
        // Committed = below the high watermark, which the in-sync replicas move.
        if acks == ACKS_ALL {
            crate::replica::wait_committed(&p, end, deadline).await?;
        } else if let Some(durable) = last {
            crate::replica::after_append(&p, durable, p.replica.me.get());
        }
        return Ok((base.get(), log_start));
    }
    let (topic, index) = (p.topic.clone(), p.index);
    // The durability wait holds no claim on the partition, so deleting it or shutting down
    // never waits for a slow acknowledgement.
    drop(p);
    if acks == ACKS_ALL
        && let Some(durable) = last
    {
        let remaining = deadline.saturating_duration_since(Instant::now());
        compio::time::timeout(remaining, durable)
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| log_error(&topic, index, &e))?;
    } else {
        debug_assert!(acks == ACKS_NONE || acks == sluice_proto::protocol::ACKS_LEADER);
    }
    Ok((base.get(), log_start))
}

/// Checks every batch of a set against the producer state before any is written, so a set
/// with a bad batch is refused whole.
fn check_producers(p: &Partition, headers: &[BatchHeader]) -> Result<(), Failure> {
    if headers.iter().all(|h| h.producer_id < 0) {
        return Ok(());
    }
    let mut states = p.producers.borrow_mut();
    states.maybe_expire(system_clock_ms());
    if headers.len() == 1 {
        return states
            .check(&headers[0])
            .map(|_| ())
            .map_err(|refusal| refuse(p, &headers[0], refusal));
    }
    // Several batches: check each against the state the earlier ones would leave.
    let mut scratch = states.clone_for(headers.iter().map(|h| h.producer_id));
    for h in headers {
        match scratch.check(h).map_err(|refusal| refuse(p, h, refusal))? {
            Verdict::Duplicate { .. } => {}
            Verdict::Append => scratch.record(h, 0, 0),
        }
    }
    Ok(())
}

/// Logs a refused idempotent batch and returns its failure.
fn refuse(p: &Partition, h: &BatchHeader, (code, message): Failure) -> Failure {
    tracing::warn!(
        topic = %p.topic,
        partition = p.index,
        producer_id = h.producer_id,
        epoch = h.producer_epoch,
        sequence = h.base_sequence,
        error = %code,
        "{message}"
    );
    (code, message)
}

/// Reads `parts` in order, sharing `max_bytes` between them; the first batch of the
/// response is returned whatever its size.
pub(crate) async fn fetch(
    lookup: impl Fn(&str, u32) -> Option<Rc<Partition>>,
    parts: Vec<FetchPart>,
    max_bytes: usize,
) -> Vec<FetchPartitionResult> {
    let mut used = 0usize;
    let mut out = Vec::with_capacity(parts.len());
    for part in parts {
        let result = match lookup(&part.topic, part.partition) {
            None => {
                let (error, message) = unknown(&part.topic, part.partition);
                empty_fetch(part.partition, error, message, 0, 0)
            }
            Some(p) => fetch_one(&p, &part, max_bytes, &mut used).await,
        };
        out.push(result);
    }
    out
}

fn empty_fetch(
    partition: u32,
    error: ErrorCode,
    message: String,
    high_watermark: u64,
    log_start_offset: u64,
) -> FetchPartitionResult {
    FetchPartitionResult {
        partition,
        error,
        message,
        high_watermark,
        log_start_offset,
        records: RecordSet::empty(),
    }
}

async fn fetch_one(
    p: &Partition,
    part: &FetchPart,
    max_bytes: usize,
    used: &mut usize,
) -> FetchPartitionResult {
    if let Err((error, message)) = crate::replica::check_leader(p) {
        return empty_fetch(part.partition, error, message, 0, 0);
    }
    let offsets = p.log.offsets();
    // Consumers read below the high watermark (the durable end when the broker runs alone).
    let hw = crate::replica::visible_end(p);
    let start = offsets.log_start.get();
    // Out of range only outside the log itself (Kafka's rule): an offset between the high
    // watermark and the log end exists here but is not committed yet, as on a new leader
    // whose high watermark still lags its log end; it gets an empty answer, not a reset.
    let end = offsets.log_end.get().max(hw);
    if part.offset < start || part.offset > end {
        return empty_fetch(
            part.partition,
            ErrorCode::OFFSET_OUT_OF_RANGE,
            format!(
                "offset {} is outside [{start}, {end}] of {}/{}",
                part.offset, part.topic, part.partition
            ),
            hw,
            start,
        );
    }
    let budget = part.max_bytes.min(max_bytes.saturating_sub(*used));
    if part.offset >= hw || (budget == 0 && *used > 0) {
        return empty_fetch(part.partition, ErrorCode::NONE, String::new(), hw, start);
    }
    match p
        .log
        .read_until(Offset(part.offset), Offset(hw), budget.max(1))
        .await
    {
        Ok(batches) => {
            let mut chunks: Vec<Bytes> = Vec::with_capacity(batches.len());
            let mut taken = 0usize;
            for batch in batches {
                let len = batch.len();
                // Only the very first batch of the whole response may exceed the budget.
                if taken + len > budget && *used > 0 {
                    break;
                }
                taken += len;
                *used += len;
                chunks.push(batch.into_bytes());
            }
            FetchPartitionResult {
                partition: part.partition,
                error: ErrorCode::NONE,
                message: String::new(),
                high_watermark: hw,
                log_start_offset: start,
                records: RecordSet::Chunks(chunks),
            }
        }
        Err(e) => {
            let (error, message) = log_error(&part.topic, part.partition, &e);
            empty_fetch(part.partition, error, message, hw, start)
        }
    }
}

/// Waits until one of `parts` has committed data past the high watermark seen, until
/// `deadline`, or until `cancel` disconnects.
pub(crate) async fn watch(
    lookup: impl Fn(&str, u32) -> Option<Rc<Partition>>,
    parts: Vec<WatchPart>,
    deadline: Instant,
    cancel: flume::Receiver<()>,
) {
    let durables: Vec<_> = parts
        .iter()
        .filter_map(|w| {
            let p = lookup(&w.topic, w.partition)?;
            let seen = w.high_watermark;
            // Neither future holds the partition: deleting it never waits for a long poll.
            Some(if p.replica.is_cluster() {
                Either::Left(Box::pin(crate::replica::visible_past(
                    Rc::downgrade(&p),
                    seen,
                )))
            } else {
                Either::Right(p.log.durable_at(Offset(seen.saturating_add(1))).map(|_| ()))
            })
        })
        .collect();
    let remaining = deadline.saturating_duration_since(Instant::now());
    if durables.is_empty() {
        let _ = compio::time::timeout(remaining, cancel.recv_async()).await;
        return;
    }
    let any = select_all(durables);
    let cancelled = cancel.recv_async();
    let _ = compio::time::timeout(remaining, async {
        match select(any, cancelled).await {
            Either::Left(_) | Either::Right(_) => {}
        }
    })
    .await;
}

/// One partition's earliest, latest or by-timestamp offset, with the timestamp found.
async fn list_offset(p: &Partition, timestamp: i64) -> Result<(u64, i64), Failure> {
    crate::replica::check_leader(p)?;
    let hw = crate::replica::visible_end(p);
    match timestamp {
        EARLIEST_TIMESTAMP => Ok((p.log.offsets().log_start.get(), -1)),
        LATEST_TIMESTAMP => Ok((hw, -1)),
        ts if ts < 0 => Err((
            ErrorCode::INVALID_REQUEST,
            format!("timestamp {ts} is neither a time nor -1/-2"),
        )),
        ts => match p.log.offset_for_timestamp(ts).await {
            // Not yet committed data is not visible: past the watermark, answer it.
            Ok(Some(offset)) if offset.get() < hw => Ok((offset.get(), ts)),
            Ok(_) => Ok((hw, -1)),
            Err(e) => Err(log_error(&p.topic, p.index, &e)),
        },
    }
}

/// Earliest, latest or by-timestamp offsets.
pub(crate) async fn list_offsets(
    lookup: impl Fn(&str, u32) -> Option<Rc<Partition>>,
    parts: Vec<(String, u32, i64)>,
) -> Vec<ListOffsetsPartitionResult> {
    let mut out = Vec::with_capacity(parts.len());
    for (topic, partition, timestamp) in parts {
        let result = match lookup(&topic, partition) {
            None => Err(unknown(&topic, partition)),
            Some(p) => list_offset(&p, timestamp).await,
        };
        out.push(match result {
            Ok((offset, timestamp)) => ListOffsetsPartitionResult {
                partition,
                error: ErrorCode::NONE,
                message: String::new(),
                offset,
                timestamp,
            },
            Err((error, message)) => ListOffsetsPartitionResult {
                partition,
                error,
                message,
                offset: 0,
                timestamp: -1,
            },
        });
    }
    out
}

/// Log start and high watermark of each partition.
pub(crate) fn offsets(
    lookup: impl Fn(&str, u32) -> Option<Rc<Partition>>,
    parts: &[(String, u32)],
) -> Vec<OffsetsResult> {
    parts
        .iter()
        .map(|(topic, partition)| match lookup(topic, *partition) {
            None => Err(unknown(topic, *partition)),
            Some(p) => {
                let o = p.log.offsets();
                Ok((o.log_start.get(), crate::replica::visible_end(&p)))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_checks_lengths() {
        assert!(split_record_set(BytesMut::new(), 100).is_err());
        assert_eq!(
            split_record_set(BytesMut::from(&[1u8; 5][..]), 100)
                .expect_err("short")
                .0,
            ErrorCode::CORRUPT_MESSAGE
        );
    }
}
