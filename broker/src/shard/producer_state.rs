//! Idempotent-producer state of one partition: for each producer id its epoch and the
//! sequence ranges and offsets of its last [`BATCHES_PER_PRODUCER`] batches.
//!
//! Rules for a batch with `producer_id >= 0` (checked on the owning shard, under the
//! partition's append ticket, so no other append of the partition runs between the check
//! and the append):
//! - epoch older than the partition has seen: `PRODUCER_FENCED`;
//! - a newer epoch must start at sequence 0, else `OUT_OF_ORDER_SEQUENCE_NUMBER`;
//! - same epoch, same sequence range as one of the remembered batches: a duplicate; the
//!   original offsets are returned and nothing is written;
//! - same epoch, sequence = last sequence + 1: appended;
//! - same epoch, any other sequence below that: `DUPLICATE_SEQUENCE_NUMBER` (too old to
//!   know its offset); above it: `OUT_OF_ORDER_SEQUENCE_NUMBER` (a gap).
//! - a producer id the partition has no state for is accepted at any sequence (as Kafka
//!   2.5+ does): its state may have expired or been evicted, and refusing it would make the
//!   producer unusable. A gap right after expiry is therefore not detected.
//!
//! The state is rebuilt when the partition opens by reading the batch headers of its last
//! [`REBUILD_SEGMENTS`] segments (so at most twice `segment.bytes`, in reads of
//! [`REBUILD_READ_BYTES`]), so a retry of an acknowledged batch is still recognised after a
//! restart or a SIGKILL.

use std::collections::{HashMap, VecDeque};

use sluice_proto::protocol::ErrorCode;
use sluice_proto::{BatchHeader, Offset};
use sluice_storage::{LogError, PartitionLog, system_clock_ms};

/// Batches remembered per producer (Kafka's 5: as many as a producer may have in flight).
pub(crate) const BATCHES_PER_PRODUCER: usize = 5;
/// Most producers remembered per partition; past it the least recently seen is evicted.
pub(crate) const PRODUCERS_PER_PARTITION_MAX: usize = 10_000;
/// A producer not seen for this long (ms) is forgotten (Kafka's
/// `producer.id.expiration.ms` default, 7 days).
pub(crate) const PRODUCER_ID_EXPIRATION_MS: i64 = 7 * 24 * 3600 * 1000;
/// Segments read from the end of the log to rebuild the state at open.
pub(crate) const REBUILD_SEGMENTS: usize = 2;
/// Most bytes read per call while rebuilding (the memory a rebuild holds at a time).
pub(crate) const REBUILD_READ_BYTES: usize = 4 << 20;

/// One remembered batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BatchMeta {
    first_seq: i32,
    last_seq: i32,
    base_offset: u64,
    last_offset: u64,
}

/// One producer's state in a partition.
#[derive(Debug, Clone)]
struct ProducerEntry {
    epoch: i16,
    batches: VecDeque<BatchMeta>,
    /// Wall clock (ms) of the last batch, for expiry.
    last_seen_ms: i64,
}

/// What to do with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Not idempotent, or the next batch: append it.
    Append,
    /// Already written at these offsets: answer them, write nothing.
    Duplicate {
        /// Offset of its first record.
        base_offset: u64,
        /// Offset of its last record.
        last_offset: u64,
    },
}

/// A refused batch.
pub(crate) type Refusal = (ErrorCode, String);

/// `seq + n` with Kafka's wrap from `i32::MAX` to 0.
pub(crate) fn seq_add(seq: i32, n: i32) -> i32 {
    if seq > i32::MAX - n {
        n - (i32::MAX - seq) - 1
    } else {
        seq + n
    }
}

fn last_seq(h: &BatchHeader) -> i32 {
    seq_add(h.base_sequence, h.record_count as i32 - 1)
}

/// The producers of one partition.
#[derive(Debug, Default)]
pub(crate) struct ProducerStates {
    producers: HashMap<i64, ProducerEntry>,
    /// When [`ProducerStates::maybe_expire`] last ran (wall clock, ms).
    last_expiry_ms: i64,
}

/// Interval (ms) between expiry passes.
const EXPIRY_INTERVAL_MS: i64 = 60_000;

impl ProducerStates {
    /// Checks a batch header against the state (changes nothing).
    pub(crate) fn check(&self, h: &BatchHeader) -> Result<Verdict, Refusal> {
        if h.producer_id < 0 {
            return Ok(Verdict::Append);
        }
        let pid = h.producer_id;
        if h.producer_epoch < 0 {
            return Err((
                ErrorCode::INVALID_PRODUCER_EPOCH,
                format!("producer {pid}: epoch {} is not valid", h.producer_epoch),
            ));
        }
        if h.base_sequence < 0 {
            return Err((
                ErrorCode::OUT_OF_ORDER_SEQUENCE_NUMBER,
                format!(
                    "producer {pid}: base sequence {} is negative",
                    h.base_sequence
                ),
            ));
        }
        let Some(entry) = self.producers.get(&pid) else {
            return Ok(Verdict::Append);
        };
        if h.producer_epoch < entry.epoch {
            return Err((
                ErrorCode::PRODUCER_FENCED,
                format!(
                    "producer {pid}: epoch {} is older than {}: fenced by a newer producer",
                    h.producer_epoch, entry.epoch
                ),
            ));
        }
        if h.producer_epoch > entry.epoch {
            if h.base_sequence != 0 {
                return Err((
                    ErrorCode::OUT_OF_ORDER_SEQUENCE_NUMBER,
                    format!(
                        "producer {pid}: new epoch {} must start at sequence 0, not {}",
                        h.producer_epoch, h.base_sequence
                    ),
                ));
            }
            return Ok(Verdict::Append);
        }
        let last = last_seq(h);
        if let Some(b) = entry
            .batches
            .iter()
            .find(|b| b.first_seq == h.base_sequence && b.last_seq == last)
        {
            return Ok(Verdict::Duplicate {
                base_offset: b.base_offset,
                last_offset: b.last_offset,
            });
        }
        let newest = entry.batches.back().map_or(-1, |b| b.last_seq);
        let expected = seq_add(newest, 1);
        if h.base_sequence == expected {
            Ok(Verdict::Append)
        } else if h.base_sequence < expected {
            Err((
                ErrorCode::DUPLICATE_SEQUENCE_NUMBER,
                format!(
                    "producer {pid}: sequence {} was written before and is older than the \
                     last {BATCHES_PER_PRODUCER} batches",
                    h.base_sequence
                ),
            ))
        } else {
            Err((
                ErrorCode::OUT_OF_ORDER_SEQUENCE_NUMBER,
                format!(
                    "producer {pid}: sequence {} after {newest}: expected {expected}",
                    h.base_sequence
                ),
            ))
        }
    }

    /// Records an appended batch (or one found while rebuilding).
    pub(crate) fn record(&mut self, h: &BatchHeader, base_offset: u64, now_ms: i64) {
        if h.producer_id < 0 {
            return;
        }
        let meta = BatchMeta {
            first_seq: h.base_sequence,
            last_seq: last_seq(h),
            base_offset,
            last_offset: base_offset + u64::from(h.last_offset_delta),
        };
        if !self.producers.contains_key(&h.producer_id)
            && self.producers.len() >= PRODUCERS_PER_PARTITION_MAX
        {
            self.evict_idlest();
        }
        let entry = self
            .producers
            .entry(h.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: h.producer_epoch,
                batches: VecDeque::with_capacity(BATCHES_PER_PRODUCER),
                last_seen_ms: now_ms,
            });
        if h.producer_epoch != entry.epoch {
            entry.epoch = h.producer_epoch;
            entry.batches.clear();
        }
        if entry.batches.len() == BATCHES_PER_PRODUCER {
            entry.batches.pop_front();
        }
        entry.batches.push_back(meta);
        entry.last_seen_ms = entry.last_seen_ms.max(now_ms);
    }

    fn evict_idlest(&mut self) {
        if let Some((&pid, _)) = self.producers.iter().min_by_key(|(_, e)| e.last_seen_ms) {
            tracing::debug!(
                producer_id = pid,
                "producer state evicted: partition at its cap"
            );
            self.producers.remove(&pid);
        }
    }

    /// Forgets producers not seen since `now_ms - expiration_ms`.
    pub(crate) fn expire(&mut self, now_ms: i64, expiration_ms: i64) {
        self.producers
            .retain(|_, e| now_ms.saturating_sub(e.last_seen_ms) < expiration_ms);
    }

    /// Runs [`ProducerStates::expire`] with [`PRODUCER_ID_EXPIRATION_MS`] at most once per
    /// minute.
    pub(crate) fn maybe_expire(&mut self, now_ms: i64) {
        if now_ms.saturating_sub(self.last_expiry_ms) >= EXPIRY_INTERVAL_MS {
            self.last_expiry_ms = now_ms;
            self.expire(now_ms, PRODUCER_ID_EXPIRATION_MS);
        }
    }

    /// A copy holding only the given producers (to simulate a set of batches).
    pub(crate) fn clone_for(&self, pids: impl Iterator<Item = i64>) -> Self {
        let mut out = Self::default();
        for pid in pids {
            if let Some(e) = self.producers.get(&pid) {
                out.producers.insert(pid, e.clone());
            }
        }
        out
    }

    /// Producers remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.producers.len()
    }

    /// Rebuilds the state from the tail of `log` (see the module docs). Producers found
    /// count as seen now: batch timestamps are the producer's clock, not the broker's.
    pub(crate) async fn rebuild(log: &PartitionLog) -> Result<Self, LogError> {
        let mut states = Self::default();
        let now_ms = system_clock_ms();
        let bases = log.segment_bases();
        let offsets = log.offsets();
        let from = bases
            .len()
            .checked_sub(REBUILD_SEGMENTS)
            .map_or(offsets.log_start, |i| bases[i])
            .max(offsets.log_start);
        let end = offsets.log_end;
        let mut at = from;
        while at < end {
            let batches = log.read(at, REBUILD_READ_BYTES).await?;
            if batches.is_empty() {
                break;
            }
            for batch in &batches {
                let h = *batch.header();
                states.record(&h, h.base_offset.get(), now_ms);
                at = Offset(h.base_offset.get() + u64::from(h.record_count));
            }
        }
        Ok(states)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::{BatchBuilder, Compression, Limits};

    fn header(pid: i64, epoch: i16, seq: i32, records: u32) -> BatchHeader {
        let mut b = BatchBuilder::new(Compression::None, Limits::DEFAULT);
        for i in 0..records {
            b.push(i64::from(i), None, Some(b"v"), &[]).expect("push");
        }
        let bytes = b.build().expect("build");
        let mut h = BatchHeader::parse(&bytes, &Limits::DEFAULT).expect("parse");
        h.producer_id = pid;
        h.producer_epoch = epoch;
        h.base_sequence = seq;
        h
    }

    #[test]
    fn sequence_rules() {
        let mut s = ProducerStates::default();
        let first = header(7, 0, 0, 3);
        assert_eq!(s.check(&first), Ok(Verdict::Append));
        s.record(&first, 100, 1);
        assert_eq!(
            s.check(&first),
            Ok(Verdict::Duplicate {
                base_offset: 100,
                last_offset: 102
            })
        );
        assert_eq!(s.check(&header(7, 0, 3, 1)), Ok(Verdict::Append));
        assert_eq!(
            s.check(&header(7, 0, 5, 1)).expect_err("gap").0,
            ErrorCode::OUT_OF_ORDER_SEQUENCE_NUMBER
        );
        assert_eq!(
            s.check(&header(7, 0, 1, 1)).expect_err("old").0,
            ErrorCode::DUPLICATE_SEQUENCE_NUMBER
        );
        assert_eq!(
            s.check(&header(7, 1, 4, 1)).expect_err("new epoch").0,
            ErrorCode::OUT_OF_ORDER_SEQUENCE_NUMBER
        );
        let bumped = header(7, 1, 0, 1);
        assert_eq!(s.check(&bumped), Ok(Verdict::Append));
        s.record(&bumped, 103, 2);
        assert_eq!(
            s.check(&header(7, 0, 3, 1)).expect_err("fenced").0,
            ErrorCode::PRODUCER_FENCED
        );
        // Unknown producers are accepted at any sequence; non-idempotent batches always.
        assert_eq!(s.check(&header(8, 0, 42, 1)), Ok(Verdict::Append));
        assert_eq!(s.check(&header(-1, -1, -1, 1)), Ok(Verdict::Append));
        // Only the last five batches are remembered.
        for i in 1..=6 {
            s.record(&header(7, 1, i, 1), 103 + i as u64, 3);
        }
        assert!(matches!(
            s.check(&header(7, 1, 2, 1)),
            Ok(Verdict::Duplicate {
                base_offset: 105,
                ..
            })
        ));
        assert_eq!(
            s.check(&header(7, 1, 1, 1)).expect_err("forgotten").0,
            ErrorCode::DUPLICATE_SEQUENCE_NUMBER
        );
        s.expire(10, 5);
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn sequences_wrap() {
        assert_eq!(seq_add(i32::MAX, 1), 0);
        assert_eq!(seq_add(i32::MAX - 1, 3), 1);
        assert_eq!(seq_add(5, 2), 7);
    }
}
