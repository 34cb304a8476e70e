//! A tiny blocking client for tests: std `TcpStream` plus the protocol codec. One request
//! at a time (or raw frames for bad-input tests).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sluice_proto::protocol::*;
use sluice_proto::{BatchBuilder, Compression, Limits, split_batches};

/// A connection to a broker.
pub struct Conn {
    pub stream: TcpStream,
    next_id: u32,
}

/// A decoded response: header and, on success, the body.
pub struct Answer<T> {
    pub header: ResponseHeader,
    pub body: Option<T>,
}

impl Conn {
    pub fn connect(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).expect("connect to broker");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        Conn { stream, next_id: 1 }
    }

    pub fn connect_host(host: &str, port: u16) -> Conn {
        Self::connect(format!("{host}:{port}").parse().expect("address"))
    }

    /// Writes raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Sends a request, returns its correlation id.
    pub fn send<T: Wire>(&mut self, api: ApiKey, body: &T) -> u32 {
        self.send_versioned(api, 0, body)
    }

    pub fn send_versioned<T: Wire>(&mut self, api: ApiKey, version: u16, body: &T) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        for chunk in encode_request(api, version, id, "test", body) {
            self.stream.write_all(&chunk).expect("write request");
        }
        id
    }

    /// Reads one response frame's payload; `None` if the connection closed.
    pub fn read_frame(&mut self) -> Option<BytesMut> {
        let mut prefix = [0u8; FRAME_PREFIX_BYTES];
        if self.stream.read_exact(&mut prefix).is_err() {
            return None;
        }
        let len = frame_length(prefix, RESPONSE_FRAME_BYTES_MAX).expect("response size");
        let mut buf = vec![0u8; len];
        self.stream.read_exact(&mut buf).expect("response body");
        Some(BytesMut::from(&buf[..]))
    }

    /// Reads one response.
    pub fn read<T: Wire>(&mut self) -> Answer<T> {
        let payload = self.read_frame().expect("a response frame");
        let mut r = Reader::new(payload);
        let header = ResponseHeader::decode(&mut r).expect("response header");
        let body = if header.error.is_ok() {
            Some(decode_body::<T>(r).expect("response body"))
        } else {
            None
        };
        Answer { header, body }
    }

    /// Sends a request and reads its (successful) response.
    pub fn call<Req: Wire, Resp: Wire>(&mut self, api: ApiKey, body: &Req) -> Resp {
        let id = self.send(api, body);
        let answer = self.read::<Resp>();
        assert_eq!(answer.header.correlation_id, id);
        assert!(
            answer.header.error.is_ok(),
            "{api:?} failed: {:?} {}",
            answer.header.error,
            answer.header.message
        );
        answer.body.expect("body")
    }

    /// Whether the broker closed the connection (reads EOF or a reset).
    pub fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.stream.read(&mut b), Ok(0) | Err(_))
    }

    pub fn create_topic(
        &mut self,
        name: &str,
        partitions: u32,
        configs: &[(&str, &str)],
    ) -> TopicResult {
        let req = CreateTopicsRequest {
            topics: vec![NewTopic {
                name: name.into(),
                partitions,
                configs: configs
                    .iter()
                    .map(|(k, v)| ConfigEntry {
                        name: (*k).into(),
                        value: (*v).into(),
                    })
                    .collect(),
                replication_factor: -1,
            }],
            validate_only: false,
        };
        let resp: CreateTopicsResponse = self.call(ApiKey::CreateTopics, &req);
        resp.topics.into_iter().next().expect("one result")
    }

    pub fn metadata(&mut self) -> MetadataResponse {
        self.call(ApiKey::Metadata, &MetadataRequest { topics: None })
    }

    /// Produces one record set to one partition; returns the partition result.
    pub fn produce(
        &mut self,
        topic: &str,
        partition: u32,
        acks: i8,
        records: Bytes,
    ) -> ProducePartitionResult {
        let req = produce_request(topic, partition, acks, records);
        let resp: ProduceResponse = self.call(ApiKey::Produce, &req);
        resp.topics[0].partitions[0].clone()
    }

    /// Fetches one partition.
    pub fn fetch(
        &mut self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_wait_ms: u32,
        min_bytes: u32,
    ) -> FetchPartitionResult {
        let req = FetchRequest {
            max_wait_ms,
            min_bytes,
            max_bytes: 16 << 20,
            topics: vec![FetchTopic {
                name: topic.into(),
                partitions: vec![FetchPartition {
                    partition,
                    fetch_offset: offset,
                    partition_max_bytes: 8 << 20,
                }],
            }],
        };
        let resp: FetchResponse = self.call(ApiKey::Fetch, &req);
        resp.topics[0].partitions[0].clone()
    }

    /// Every record value of a partition from `offset`, with its offset, reading until the
    /// high watermark.
    pub fn read_all(
        &mut self,
        topic: &str,
        partition: u32,
        mut offset: u64,
    ) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            let r = self.fetch(topic, partition, offset, 0, 0);
            assert!(
                r.error.is_ok(),
                "fetch {topic}/{partition}@{offset}: {:?} {}",
                r.error,
                r.message
            );
            let records = values(r.records);
            let records: Vec<_> = records.into_iter().filter(|(o, _)| *o >= offset).collect();
            if records.is_empty() {
                assert_eq!(
                    offset, r.high_watermark,
                    "no progress below the high watermark"
                );
                return out;
            }
            offset = records.last().expect("non-empty").0 + 1;
            out.extend(records);
        }
    }

    pub fn list_offset(
        &mut self,
        topic: &str,
        partition: u32,
        timestamp: i64,
    ) -> ListOffsetsPartitionResult {
        let req = ListOffsetsRequest {
            topics: vec![ListOffsetsTopic {
                name: topic.into(),
                partitions: vec![ListOffsetsPartition {
                    partition,
                    timestamp,
                }],
            }],
        };
        let resp: ListOffsetsResponse = self.call(ApiKey::ListOffsets, &req);
        resp.topics[0].partitions[0].clone()
    }
}

pub fn produce_request(topic: &str, partition: u32, acks: i8, records: Bytes) -> ProduceRequest {
    ProduceRequest {
        acks,
        timeout_ms: 30_000,
        topics: vec![ProduceTopic {
            name: topic.into(),
            partitions: vec![ProducePartition {
                partition,
                records: RecordSet::Chunks(vec![records]),
            }],
        }],
    }
}

/// One batch of records with these values, all at `timestamp_ms`.
pub fn batch(values: &[&[u8]], timestamp_ms: i64) -> Bytes {
    let mut b = BatchBuilder::new(Compression::None, Limits::DEFAULT).base_timestamp(timestamp_ms);
    for v in values {
        b.push(timestamp_ms, None, Some(v), &[]).expect("push");
    }
    b.build().expect("build").freeze()
}

/// `(offset, value)` of every record in a record set.
pub fn values(records: RecordSet) -> Vec<(u64, Vec<u8>)> {
    let bytes = records.into_bytes();
    let mut out = Vec::new();
    for batch in split_batches(bytes, &Limits::DEFAULT) {
        let batch = batch.expect("valid batch");
        for record in batch.records().expect("records") {
            let record = record.expect("record");
            out.push((
                record.offset(batch.base_offset()).get(),
                record.value.map(|v| v.to_vec()).unwrap_or_default(),
            ));
        }
    }
    out
}
