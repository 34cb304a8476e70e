//! What a producer sends (`ProducerRecord`) and what it gets back (`RecordMetadata` through a
//! `DeliveryFuture`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::error::ClientError;

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

pub(crate) type DeliverySender = oneshot::Sender<Result<RecordMetadata, ClientError>>;

/// Resolves when the record is acknowledged, or failed for good (retries and the delivery
/// timeout used up, or an error that no retry fixes).
#[derive(Debug)]
pub struct DeliveryFuture {
    rx: oneshot::Receiver<Result<RecordMetadata, ClientError>>,
}

impl DeliveryFuture {
    pub(crate) fn new() -> (DeliverySender, DeliveryFuture) {
        let (tx, rx) = oneshot::channel();
        (tx, DeliveryFuture { rx })
    }
}

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Ready(Ok(result)) => Poll::Ready(result),
            // The producer's task ended without an answer: it was dropped mid-flight.
            Poll::Ready(Err(_)) => Poll::Ready(Err(ClientError::Closed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
impl DeliveryFuture {
    /// The outcome if already known.
    pub(crate) fn rx_try(&mut self) -> Option<Result<RecordMetadata, ClientError>> {
        self.rx.try_recv().ok()
    }
}
