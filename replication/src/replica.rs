//! The replica fetch wire format (no I/O): what a follower shard sends to the shard that leads
//! its partitions (frame kind 4, [`FetchRequest`]) and what it gets back (frame kind 5,
//! [`FetchResponse`]).
//!
//! The follower node is not in the request: the leader takes it from the connection's
//! verified TLS identity. Batches travel as the raw bytes of the leader's log (the on-disk
//! batch format, never re-encoded), back to back.
//!
//! Layout (big-endian). Request: `u8 version | u32 max_wait_ms | u32 max_bytes | u32 count |
//! count × (u16 topic_len | topic | u32 partition | u32 leader_epoch | u64 fetch_offset |
//! u64 durable_end | u8 has_last_epoch | [u32 last_fetched_epoch])`. Response: `u8 version |
//! u32 count | count × (u16 topic_len | topic | u32 partition | i16 error | u16 message_len |
//! message | u64 high_watermark | u64 log_start | u8 has_diverging | [u32 epoch | u64
//! end_offset] | u32 records_len | records)`. Every count and length is checked against its
//! limit before anything is allocated; garbage decodes to a [`ReplicaWireError`].

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::transport::PEER_FRAME_BYTES_MAX;

/// The format version this code writes and reads.
pub const REPLICA_WIRE_VERSION: u8 = 1;

/// Most batch bytes one fetch response carries (all partitions together): Kafka's
/// `replica.fetch.response.max.bytes` analogue, sized so a response fits one peer frame.
pub const REPLICA_FETCH_BYTES_MAX: u32 = 8 * 1024 * 1024;

/// Largest batch a replicated topic takes (`max.message.bytes` in cluster mode): it always
/// fits one fetch response, whatever the partition list (whose overhead stays below half a
/// frame, asserted below), so no batch can stall its followers.
pub const REPLICATED_BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Most partitions in one replica fetch request or response.
pub const REPLICA_FETCH_PARTITIONS_MAX: u32 = 4096;

/// Longest a leader holds a fetch that finds no new data, in ms (well below the transport's
/// request timeout, so a long poll never looks like a dead peer).
pub const REPLICA_FETCH_WAIT_MS_MAX: u32 = 5_000;

/// Longest topic name on the wire (Kafka's limit).
pub const REPLICA_TOPIC_BYTES_MAX: usize = 249;

/// Longest per-partition error message in a response; longer ones are cut at a char
/// boundary.
pub const REPLICA_MESSAGE_BYTES_MAX: usize = 512;

/// Bytes of a request partition's fixed fields (without the topic name and epoch).
const REQUEST_PARTITION_FIXED: usize = 2 + 4 + 4 + 8 + 8 + 1;
/// Bytes of a response partition's fixed fields (without topic, message, diverging, records).
const RESPONSE_PARTITION_FIXED: usize = 2 + 4 + 2 + 2 + 8 + 8 + 1 + 4;

/// Largest response body: what one peer frame holds after its kind byte.
pub const REPLICA_RESPONSE_BYTES_MAX: usize = PEER_FRAME_BYTES_MAX - 1;

// Even the largest partition list (every name and message at its limit) leaves room for
// records in one frame; the leader shrinks its record budget by [`response_overhead_max`].
const _: () = assert!(
    5 + REPLICA_FETCH_PARTITIONS_MAX as usize
        * (RESPONSE_PARTITION_FIXED + REPLICA_TOPIC_BYTES_MAX + REPLICA_MESSAGE_BYTES_MAX + 12)
        < REPLICA_RESPONSE_BYTES_MAX / 2
);
const _: () = assert!(
    REPLICATED_BATCH_BYTES_MAX <= REPLICA_RESPONSE_BYTES_MAX / 2
        && REPLICATED_BATCH_BYTES_MAX <= REPLICA_FETCH_BYTES_MAX as usize
);

/// The most bytes a response to partitions with these topic name lengths takes besides its
/// records. The leader answers with at most `min(max_bytes, REPLICA_RESPONSE_BYTES_MAX -
/// this)` record bytes, so the response always fits a peer frame.
pub fn response_overhead_max(topic_lengths: impl Iterator<Item = usize>) -> usize {
    5 + topic_lengths
        .map(|t| {
            RESPONSE_PARTITION_FIXED
                + t.min(REPLICA_TOPIC_BYTES_MAX)
                + REPLICA_MESSAGE_BYTES_MAX
                + 12
        })
        .sum::<usize>()
}

/// A body that breaks the replica fetch format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaWireError {
    /// The body ended inside a field.
    #[error("replica fetch body truncated reading {field}")]
    Truncated {
        /// The field being read.
        field: &'static str,
    },
    /// The version byte is not [`REPLICA_WIRE_VERSION`].
    #[error("unknown replica fetch format version {0}")]
    Version(u8),
    /// A count or length is over its limit.
    #[error("replica fetch {field} is {value}, over the limit {max}")]
    OverLimit {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// The limit.
        max: u64,
    },
    /// A topic name or message is not UTF-8.
    #[error("replica fetch {field} is not UTF-8")]
    Utf8 {
        /// The field.
        field: &'static str,
    },
    /// A flag byte is neither 0 nor 1.
    #[error("replica fetch flag {field} is {value}, not 0 or 1")]
    Flag {
        /// The field.
        field: &'static str,
        /// The byte.
        value: u8,
    },
    /// Bytes are left after the last field.
    #[error("{0} bytes after the end of the replica fetch body")]
    Trailing(usize),
}

/// One partition a follower fetches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchPartition {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: u32,
    /// The leader epoch the follower believes current.
    pub leader_epoch: u32,
    /// The follower's log end offset: the first offset it wants.
    pub fetch_offset: u64,
    /// The follower's durable end (what the leader's high watermark may count).
    pub durable_end: u64,
    /// The epoch of the last batch the follower holds (`None`: an empty log).
    pub last_fetched_epoch: Option<u32>,
}

/// A follower shard's fetch from the shard leading these partitions (frame kind 4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest {
    /// Longest the leader waits for new data when there is none, in ms (at most
    /// [`REPLICA_FETCH_WAIT_MS_MAX`]).
    pub max_wait_ms: u32,
    /// Most batch bytes in the response (at most [`REPLICA_FETCH_BYTES_MAX`]).
    pub max_bytes: u32,
    /// The partitions (at most [`REPLICA_FETCH_PARTITIONS_MAX`]).
    pub partitions: Vec<FetchPartition>,
}

/// Where a follower's log leaves the leader's: the largest epoch `<=` the follower's last
/// fetched epoch the leader knows, and that epoch's end offset on the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Diverging {
    /// The epoch.
    pub epoch: u32,
    /// Its end offset on the leader: the follower truncates to `min(end_offset, its end)`.
    pub end_offset: u64,
}

/// The leader's answer for one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedPartition {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: u32,
    /// Kafka error code (0: none).
    pub error: i16,
    /// Why, for the follower's log (at most [`REPLICA_MESSAGE_BYTES_MAX`]).
    pub message: String,
    /// The leader's high watermark.
    pub high_watermark: u64,
    /// The leader's log start offset.
    pub log_start: u64,
    /// Set when the follower's log diverges from the leader's: no records then.
    pub diverging: Option<Diverging>,
    /// Whole batches from `fetch_offset`, as the leader's log holds them.
    pub records: Bytes,
}

/// The leader shard's answer to a [`FetchRequest`] (frame kind 5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchResponse {
    /// One entry per requested partition, in request order.
    pub partitions: Vec<FetchedPartition>,
}

fn put_str(out: &mut BytesMut, s: &str) {
    // Callers cut strings to their limit (u16 range) before encoding.
    out.put_u16(s.len() as u16);
    out.put_slice(s.as_bytes());
}

/// Cuts `s` to at most `max` bytes at a char boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

struct Reader {
    buf: Bytes,
}

impl Reader {
    fn need(&self, n: usize, field: &'static str) -> Result<(), ReplicaWireError> {
        if self.buf.remaining() < n {
            Err(ReplicaWireError::Truncated { field })
        } else {
            Ok(())
        }
    }
    fn u8(&mut self, field: &'static str) -> Result<u8, ReplicaWireError> {
        self.need(1, field)?;
        Ok(self.buf.get_u8())
    }
    fn u16(&mut self, field: &'static str) -> Result<u16, ReplicaWireError> {
        self.need(2, field)?;
        Ok(self.buf.get_u16())
    }
    fn i16(&mut self, field: &'static str) -> Result<i16, ReplicaWireError> {
        self.need(2, field)?;
        Ok(self.buf.get_i16())
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, ReplicaWireError> {
        self.need(4, field)?;
        Ok(self.buf.get_u32())
    }
    fn u64(&mut self, field: &'static str) -> Result<u64, ReplicaWireError> {
        self.need(8, field)?;
        Ok(self.buf.get_u64())
    }
    fn flag(&mut self, field: &'static str) -> Result<bool, ReplicaWireError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(ReplicaWireError::Flag { field, value }),
        }
    }
    fn limit(field: &'static str, value: u64, max: u64) -> Result<(), ReplicaWireError> {
        if value > max {
            Err(ReplicaWireError::OverLimit { field, value, max })
        } else {
            Ok(())
        }
    }
    fn string(&mut self, field: &'static str, max: usize) -> Result<String, ReplicaWireError> {
        let len = usize::from(self.u16(field)?);
        Self::limit(field, len as u64, max as u64)?;
        self.need(len, field)?;
        let bytes = self.buf.split_to(len);
        String::from_utf8(bytes.to_vec()).map_err(|_| ReplicaWireError::Utf8 { field })
    }
    fn version(&mut self) -> Result<(), ReplicaWireError> {
        match self.u8("version")? {
            REPLICA_WIRE_VERSION => Ok(()),
            v => Err(ReplicaWireError::Version(v)),
        }
    }
    fn count(&mut self, min_entry: usize) -> Result<usize, ReplicaWireError> {
        let count = self.u32("partition count")?;
        Self::limit(
            "partition count",
            u64::from(count),
            u64::from(REPLICA_FETCH_PARTITIONS_MAX),
        )?;
        // Each entry takes at least `min_entry` bytes: a count the body cannot hold is
        // refused before anything is reserved for it.
        if (count as usize).saturating_mul(min_entry) > self.buf.remaining() {
            return Err(ReplicaWireError::Truncated {
                field: "partitions",
            });
        }
        Ok(count as usize)
    }
    fn end(self) -> Result<(), ReplicaWireError> {
        if self.buf.has_remaining() {
            Err(ReplicaWireError::Trailing(self.buf.remaining()))
        } else {
            Ok(())
        }
    }
}

impl FetchRequest {
    /// Encodes the body of a kind-4 frame. Fields over their limits are the caller's bug:
    /// counts are cut to the limits, strings to theirs.
    pub fn encode(&self) -> Bytes {
        let parts = &self.partitions[..self
            .partitions
            .len()
            .min(REPLICA_FETCH_PARTITIONS_MAX as usize)];
        let mut out = BytesMut::with_capacity(
            13 + parts
                .iter()
                .map(|p| REQUEST_PARTITION_FIXED + 4 + p.topic.len())
                .sum::<usize>(),
        );
        out.put_u8(REPLICA_WIRE_VERSION);
        out.put_u32(self.max_wait_ms.min(REPLICA_FETCH_WAIT_MS_MAX));
        out.put_u32(self.max_bytes.min(REPLICA_FETCH_BYTES_MAX));
        out.put_u32(parts.len() as u32);
        for p in parts {
            put_str(&mut out, cut(&p.topic, REPLICA_TOPIC_BYTES_MAX));
            out.put_u32(p.partition);
            out.put_u32(p.leader_epoch);
            out.put_u64(p.fetch_offset);
            out.put_u64(p.durable_end);
            match p.last_fetched_epoch {
                Some(e) => {
                    out.put_u8(1);
                    out.put_u32(e);
                }
                None => out.put_u8(0),
            }
        }
        out.freeze()
    }

    /// Decodes the body of a kind-4 frame.
    pub fn decode(body: Bytes) -> Result<Self, ReplicaWireError> {
        let mut r = Reader { buf: body };
        r.version()?;
        let max_wait_ms = r.u32("max_wait_ms")?;
        Reader::limit(
            "max_wait_ms",
            u64::from(max_wait_ms),
            u64::from(REPLICA_FETCH_WAIT_MS_MAX),
        )?;
        let max_bytes = r.u32("max_bytes")?;
        Reader::limit(
            "max_bytes",
            u64::from(max_bytes),
            u64::from(REPLICA_FETCH_BYTES_MAX),
        )?;
        let count = r.count(REQUEST_PARTITION_FIXED)?;
        let mut partitions = Vec::with_capacity(count);
        for _ in 0..count {
            let topic = r.string("topic", REPLICA_TOPIC_BYTES_MAX)?;
            let partition = r.u32("partition")?;
            let leader_epoch = r.u32("leader_epoch")?;
            let fetch_offset = r.u64("fetch_offset")?;
            let durable_end = r.u64("durable_end")?;
            let last_fetched_epoch = if r.flag("has_last_fetched_epoch")? {
                Some(r.u32("last_fetched_epoch")?)
            } else {
                None
            };
            partitions.push(FetchPartition {
                topic,
                partition,
                leader_epoch,
                fetch_offset,
                durable_end,
                last_fetched_epoch,
            });
        }
        r.end()?;
        Ok(Self {
            max_wait_ms,
            max_bytes,
            partitions,
        })
    }
}

impl FetchResponse {
    /// Encodes the body of a kind-5 frame (records copied once into the frame body).
    /// Messages are cut to [`REPLICA_MESSAGE_BYTES_MAX`]; the caller keeps the partition
    /// count and the records within their limits.
    pub fn encode(&self) -> Bytes {
        let size = 5 + self
            .partitions
            .iter()
            .map(|p| {
                RESPONSE_PARTITION_FIXED
                    + p.topic.len()
                    + p.message.len().min(REPLICA_MESSAGE_BYTES_MAX)
                    + 12
                    + p.records.len()
            })
            .sum::<usize>();
        let mut out = BytesMut::with_capacity(size);
        out.put_u8(REPLICA_WIRE_VERSION);
        out.put_u32(self.partitions.len() as u32);
        for p in &self.partitions {
            put_str(&mut out, cut(&p.topic, REPLICA_TOPIC_BYTES_MAX));
            out.put_u32(p.partition);
            out.put_i16(p.error);
            put_str(&mut out, cut(&p.message, REPLICA_MESSAGE_BYTES_MAX));
            out.put_u64(p.high_watermark);
            out.put_u64(p.log_start);
            match p.diverging {
                Some(d) => {
                    out.put_u8(1);
                    out.put_u32(d.epoch);
                    out.put_u64(d.end_offset);
                }
                None => out.put_u8(0),
            }
            out.put_u32(p.records.len() as u32);
            out.put_slice(&p.records);
        }
        out.freeze()
    }

    /// Decodes the body of a kind-5 frame; the records are zero-copy slices of `body`.
    pub fn decode(body: Bytes) -> Result<Self, ReplicaWireError> {
        let mut r = Reader { buf: body };
        r.version()?;
        let count = r.count(RESPONSE_PARTITION_FIXED)?;
        let mut partitions = Vec::with_capacity(count);
        let mut total = 0u64;
        for _ in 0..count {
            let topic = r.string("topic", REPLICA_TOPIC_BYTES_MAX)?;
            let partition = r.u32("partition")?;
            let error = r.i16("error")?;
            let message = r.string("message", REPLICA_MESSAGE_BYTES_MAX)?;
            let high_watermark = r.u64("high_watermark")?;
            let log_start = r.u64("log_start")?;
            let diverging = if r.flag("has_diverging")? {
                Some(Diverging {
                    epoch: r.u32("diverging epoch")?,
                    end_offset: r.u64("diverging end_offset")?,
                })
            } else {
                None
            };
            let len = r.u32("records length")?;
            total += u64::from(len);
            Reader::limit("records bytes", total, u64::from(REPLICA_FETCH_BYTES_MAX))?;
            r.need(len as usize, "records")?;
            let records = r.buf.split_to(len as usize);
            partitions.push(FetchedPartition {
                topic,
                partition,
                error,
                message,
                high_watermark,
                log_start,
                diverging,
                records,
            });
        }
        r.end()?;
        Ok(Self { partitions })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn request() -> FetchRequest {
        FetchRequest {
            max_wait_ms: 500,
            max_bytes: 1 << 20,
            partitions: vec![
                FetchPartition {
                    topic: "orders".into(),
                    partition: 3,
                    leader_epoch: 7,
                    fetch_offset: 1000,
                    durable_end: 990,
                    last_fetched_epoch: Some(6),
                },
                FetchPartition {
                    topic: "t".into(),
                    partition: 0,
                    leader_epoch: 0,
                    fetch_offset: 0,
                    durable_end: 0,
                    last_fetched_epoch: None,
                },
            ],
        }
    }

    fn response() -> FetchResponse {
        FetchResponse {
            partitions: vec![
                FetchedPartition {
                    topic: "orders".into(),
                    partition: 3,
                    error: 0,
                    message: String::new(),
                    high_watermark: 1000,
                    log_start: 10,
                    diverging: None,
                    records: Bytes::from_static(b"raw batch bytes"),
                },
                FetchedPartition {
                    topic: "t".into(),
                    partition: 0,
                    error: 74,
                    message: "fenced".into(),
                    high_watermark: 0,
                    log_start: 0,
                    diverging: Some(Diverging {
                        epoch: 2,
                        end_offset: 55,
                    }),
                    records: Bytes::new(),
                },
            ],
        }
    }

    #[test]
    fn request_and_response_round_trip() {
        let r = request();
        assert_eq!(FetchRequest::decode(r.encode()), Ok(r));
        let r = response();
        assert_eq!(FetchResponse::decode(r.encode()), Ok(r));
    }

    #[test]
    fn every_truncation_is_a_typed_error() {
        let req = request().encode();
        for n in 0..req.len() {
            assert!(
                matches!(
                    FetchRequest::decode(req.slice(..n)),
                    Err(ReplicaWireError::Truncated { .. })
                ),
                "request cut at {n}"
            );
        }
        let resp = response().encode();
        for n in 0..resp.len() {
            assert!(
                matches!(
                    FetchResponse::decode(resp.slice(..n)),
                    Err(ReplicaWireError::Truncated { .. })
                ),
                "response cut at {n}"
            );
        }
    }

    #[test]
    fn limits_version_flags_and_trailing_bytes_are_refused() {
        let mut b = BytesMut::from(&request().encode()[..]);
        b[0] = 9;
        assert_eq!(
            FetchRequest::decode(b.freeze()),
            Err(ReplicaWireError::Version(9))
        );
        // max_bytes over the limit.
        let mut b = BytesMut::from(&request().encode()[..]);
        b[5..9].copy_from_slice(&(REPLICA_FETCH_BYTES_MAX + 1).to_be_bytes());
        assert!(matches!(
            FetchRequest::decode(b.freeze()),
            Err(ReplicaWireError::OverLimit {
                field: "max_bytes",
                ..
            })
        ));
        // A huge partition count is refused before anything is reserved.
        let mut b = BytesMut::from(&request().encode()[..]);
        b[9..13].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            FetchRequest::decode(b.freeze()),
            Err(ReplicaWireError::OverLimit { .. })
        ));
        let mut b = BytesMut::from(&request().encode()[..]);
        b[9..13].copy_from_slice(&REPLICA_FETCH_PARTITIONS_MAX.to_be_bytes());
        assert!(matches!(
            FetchRequest::decode(b.freeze()),
            Err(ReplicaWireError::Truncated { .. })
        ));
        // Bad flag byte: the last byte of the second partition is its has_last_epoch flag.
        let mut b = BytesMut::from(&request().encode()[..]);
        let last = b.len() - 1;
        b[last] = 2;
        assert!(matches!(
            FetchRequest::decode(b.freeze()),
            Err(ReplicaWireError::Flag { value: 2, .. })
        ));
        let mut b = BytesMut::from(&request().encode()[..]);
        b.put_u8(0);
        assert_eq!(
            FetchRequest::decode(b.freeze()),
            Err(ReplicaWireError::Trailing(1))
        );
        // Records over the response limit.
        let mut big = response();
        big.partitions[0].records = Bytes::from(vec![0u8; REPLICA_FETCH_BYTES_MAX as usize + 1]);
        assert!(matches!(
            FetchResponse::decode(big.encode()),
            Err(ReplicaWireError::OverLimit { .. })
        ));
    }

    #[test]
    fn long_messages_are_cut_at_a_char_boundary() {
        let mut r = response();
        r.partitions[1].message = "é".repeat(REPLICA_MESSAGE_BYTES_MAX);
        let back = FetchResponse::decode(r.encode()).expect("decodes");
        assert!(back.partitions[1].message.len() <= REPLICA_MESSAGE_BYTES_MAX);
        assert!(back.partitions[1].message.chars().all(|c| c == 'é'));
    }

    fn arb_partition() -> impl Strategy<Value = FetchPartition> {
        (
            "[a-z._-]{1,40}",
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            any::<Option<u32>>(),
        )
            .prop_map(
                |(topic, partition, leader_epoch, fetch_offset, durable_end, e)| FetchPartition {
                    topic,
                    partition,
                    leader_epoch,
                    fetch_offset,
                    durable_end,
                    last_fetched_epoch: e,
                },
            )
    }

    fn arb_fetched() -> impl Strategy<Value = FetchedPartition> {
        (
            "[a-z._-]{1,40}",
            any::<u32>(),
            any::<i16>(),
            "\\PC{0,30}",
            any::<(u64, u64)>(),
            any::<Option<(u32, u64)>>(),
            proptest::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(
                |(topic, partition, error, message, (hw, start), div, records)| FetchedPartition {
                    topic,
                    partition,
                    error,
                    message,
                    high_watermark: hw,
                    log_start: start,
                    diverging: div.map(|(epoch, end_offset)| Diverging { epoch, end_offset }),
                    records: Bytes::from(records),
                },
            )
    }

    proptest! {
        #[test]
        fn request_round_trips(
            wait in 0..=REPLICA_FETCH_WAIT_MS_MAX,
            bytes in 0..=REPLICA_FETCH_BYTES_MAX,
            parts in proptest::collection::vec(arb_partition(), 0..20),
        ) {
            let r = FetchRequest { max_wait_ms: wait, max_bytes: bytes, partitions: parts };
            prop_assert_eq!(FetchRequest::decode(r.encode()), Ok(r));
        }

        #[test]
        fn response_round_trips(parts in proptest::collection::vec(arb_fetched(), 0..10)) {
            let r = FetchResponse { partitions: parts };
            prop_assert_eq!(FetchResponse::decode(r.encode()), Ok(r));
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = FetchRequest::decode(Bytes::from(bytes.clone()));
            let _ = FetchResponse::decode(Bytes::from(bytes));
        }
    }
}
