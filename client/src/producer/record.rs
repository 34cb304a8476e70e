//! What a producer sends (`ProducerRecord`) and what it gets back (`RecordMetadata` through a
//! `DeliveryFuture`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Waker;

use bytes::Bytes;

use crate::error::ClientError;
use crate::topic_partition::TopicPartition;

/// A record to send.
#[derive(Debug, Clone)]
pub struct ProducerRecord {
    /// The topic.
    pub topic: String,
    /// The partition; `None` to let the partitioner choose (by key, else sticky).
    pub partition: Option<u32>,
    /// The key; records with equal keys go to the same partition.
    pub key: Option<Bytes>,
    /// The value; `None` is a tombstone.
    pub value: Option<Bytes>,
    /// Headers in order; names need not be unique.
    pub headers: Vec<(String, Option<Bytes>)>,
    /// Create time (ms since the epoch); `None` for now.
    pub timestamp: Option<i64>,
}

impl ProducerRecord {
    /// A record with a value and nothing else.
    pub fn new(topic: impl Into<String>, value: impl Into<Bytes>) -> Self {
        ProducerRecord {
            topic: topic.into(),
            partition: None,
            key: None,
            value: Some(value.into()),
            headers: Vec::new(),
            timestamp: None,
        }
    }

    /// Sets the key.
    #[must_use]
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the partition.
    #[must_use]
    pub fn partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Adds a header.
    #[must_use]
    pub fn header(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push((key.into(), Some(value.into())));
        self
    }

    /// Sets the create time (ms).
    #[must_use]
    pub fn timestamp(mut self, ms: i64) -> Self {
        self.timestamp = Some(ms);
        self
    }

    /// Bytes of key, value and headers.
    pub(crate) fn payload_bytes(&self) -> usize {
        self.key.as_ref().map_or(0, Bytes::len)
            + self.value.as_ref().map_or(0, Bytes::len)
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.as_ref().map_or(0, Bytes::len))
                .sum::<usize>()
    }
}

/// Where a record was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMetadata {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The record's offset; -1 with `acks=0` (the broker does not say).
    pub offset: i64,
    /// The record's create time (ms).
    pub timestamp: i64,
}

/// The outcome of one batch, shared by the futures of its records: one allocation and one
/// lock per batch instead of a channel per record (Kafka's `ProduceRequestResult`).
#[derive(Debug)]
struct BatchOutcome {
    tp: TopicPartition,
    state: Mutex<OutcomeState>,
}

#[derive(Debug, Default)]
struct OutcomeState {
    /// Set once: the batch's base offset (`None` with `acks=0`), or why it failed.
    result: Option<Result<Option<u64>, ClientError>>,
    /// Tasks waiting on records of the batch; a future keeps its slot (at most one per
    /// record).
    wakers: Vec<Waker>,
}

impl BatchOutcome {
    fn lock(&self) -> MutexGuard<'_, OutcomeState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Settles a batch's outcome; owned by the batch. Dropped without settling (the producer
/// went away with the batch), its records fail with [`ClientError::Closed`].
#[derive(Debug)]
pub(crate) struct DeliverySender {
    outcome: Arc<BatchOutcome>,
}

impl DeliverySender {
    /// The outcome of a new batch for `tp`.
    pub(crate) fn new(tp: TopicPartition) -> Self {
        DeliverySender {
            outcome: Arc::new(BatchOutcome {
                tp,
                state: Mutex::new(OutcomeState::default()),
            }),
        }
    }

    /// The future of the batch's record number `index`.
    pub(crate) fn future(&self, index: u32, timestamp: i64) -> DeliveryFuture {
        DeliveryFuture {
            outcome: Arc::clone(&self.outcome),
            index,
            timestamp,
            slot: None,
        }
    }

    /// Every record landed from `base_offset` on (`None` for `acks=0`).
    pub(crate) fn complete(self, base_offset: Option<u64>) {
        self.settle(Ok(base_offset));
    }

    /// Every record failed with `error`.
    pub(crate) fn fail(self, error: ClientError) {
        self.settle(Err(error));
    }

    fn settle(&self, result: Result<Option<u64>, ClientError>) {
        let wakers = {
            let mut st = self.outcome.lock();
            if st.result.is_some() {
                return;
            }
            st.result = Some(result);
            std::mem::take(&mut st.wakers)
        };
        for waker in wakers {
            waker.wake();
        }
    }
}

impl Drop for DeliverySender {
    fn drop(&mut self) {
        self.settle(Err(ClientError::Closed));
    }
}

/// Resolves when the record is acknowledged, or failed for good (retries and the delivery
/// timeout used up, or an error that no retry fixes).
#[derive(Debug)]
pub struct DeliveryFuture {
    outcome: Arc<BatchOutcome>,
    /// The record's place in its batch.
    index: u32,
    timestamp: i64,
    /// This future's entry in the outcome's wakers, once it waited.
    slot: Option<usize>,
}

/// Record number `index` of a batch for `tp` settled with `result`.
fn record_result(
    tp: &TopicPartition,
    index: u32,
    timestamp: i64,
    result: &Result<Option<u64>, ClientError>,
) -> Result<RecordMetadata, ClientError> {
    match result {
        Ok(base) => Ok(RecordMetadata {
            topic: tp.topic.clone(),
            partition: tp.partition,
            offset: base.map_or(-1, |base| {
                i64::try_from(base + u64::from(index)).unwrap_or(i64::MAX)
            }),
            timestamp,
        }),
        Err(e) => Err(e.clone()),
    }
}

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let mut st = this.outcome.lock();
        if let Some(result) = &st.result {
            return Poll::Ready(record_result(
                &this.outcome.tp,
                this.index,
                this.timestamp,
                result,
            ));
        }
        match this.slot {
            Some(i) => {
                if !st.wakers[i].will_wake(cx.waker()) {
                    st.wakers[i] = cx.waker().clone();
                }
            }
            None => {
                this.slot = Some(st.wakers.len());
                st.wakers.push(cx.waker().clone());
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
impl DeliveryFuture {
    /// The outcome if already known.
    pub(crate) fn rx_try(&mut self) -> Option<Result<RecordMetadata, ClientError>> {
        let st = self.outcome.lock();
        st.result
            .as_ref()
            .map(|r| record_result(&self.outcome.tp, self.index, self.timestamp, r))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    use super::*;

    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll(
        fut: &mut DeliveryFuture,
        waker: &Arc<CountingWaker>,
    ) -> Poll<<DeliveryFuture as Future>::Output> {
        let waker = Waker::from(Arc::clone(waker));
        Pin::new(fut).poll(&mut Context::from_waker(&waker))
    }

    #[test]
    fn records_of_a_batch_resolve_at_base_plus_their_index() {
        let sender = DeliverySender::new(TopicPartition::new("t", 3));
        let mut futures: Vec<_> = (0..3)
            .map(|i| sender.future(i, 100 + i64::from(i)))
            .collect();
        let waker = Arc::new(CountingWaker(AtomicUsize::new(0)));
        for f in &mut futures {
            assert!(poll(f, &waker).is_pending());
        }
        // Polled again by the same task: no second registration.
        assert!(poll(&mut futures[0], &waker).is_pending());
        sender.complete(Some(40));
        assert_eq!(
            waker.0.load(Ordering::SeqCst),
            3,
            "one wake per waiting future"
        );
        for (i, f) in futures.iter_mut().enumerate() {
            let Poll::Ready(Ok(meta)) = poll(f, &waker) else {
                panic!("record {i} is settled");
            };
            assert_eq!(
                meta,
                RecordMetadata {
                    topic: "t".into(),
                    partition: 3,
                    offset: 40 + i as i64,
                    timestamp: 100 + i as i64,
                }
            );
        }
    }

    #[test]
    fn acks_zero_has_no_offsets_and_failures_reach_every_record() {
        let sender = DeliverySender::new(TopicPartition::new("t", 0));
        let mut f = sender.future(5, 1);
        sender.complete(None);
        assert!(matches!(
            f.rx_try(),
            Some(Ok(RecordMetadata { offset: -1, .. }))
        ));

        let sender = DeliverySender::new(TopicPartition::new("t", 0));
        let mut futures = [sender.future(0, 1), sender.future(1, 1)];
        sender.fail(ClientError::Closed);
        for f in &mut futures {
            assert!(matches!(f.rx_try(), Some(Err(ClientError::Closed))));
        }
    }

    #[test]
    fn a_dropped_batch_fails_its_records_with_closed() {
        let sender = DeliverySender::new(TopicPartition::new("t", 0));
        let mut f = sender.future(0, 1);
        let waker = Arc::new(CountingWaker(AtomicUsize::new(0)));
        assert!(poll(&mut f, &waker).is_pending());
        drop(sender);
        assert_eq!(waker.0.load(Ordering::SeqCst), 1);
        assert!(matches!(
            poll(&mut f, &waker),
            Poll::Ready(Err(ClientError::Closed))
        ));
    }

    #[test]
    fn a_future_moved_to_another_task_wakes_that_task() {
        let sender = DeliverySender::new(TopicPartition::new("t", 0));
        let mut f = sender.future(0, 1);
        let (first, second) = (
            Arc::new(CountingWaker(AtomicUsize::new(0))),
            Arc::new(CountingWaker(AtomicUsize::new(0))),
        );
        assert!(poll(&mut f, &first).is_pending());
        assert!(poll(&mut f, &second).is_pending());
        sender.complete(Some(0));
        assert_eq!(first.0.load(Ordering::SeqCst), 0, "replaced");
        assert_eq!(second.0.load(Ordering::SeqCst), 1);
    }
}
