//! The idempotent producer through the real client, with a TCP proxy between client and
//! broker that forwards each produce request but cuts the connection instead of forwarding
//! the response, for the first few produce responses: the broker wrote those batches, the
//! client sees a lost connection and retries. With idempotence, every record is in its
//! partition exactly once, in send order, at the offset its delivery reported; without it
//! (the control), the same cuts leave duplicates, so the test does exercise the retries.
//!
//! The proxy rewrites Metadata responses so that the broker (and its shards) are named at
//! the proxy's address: the client routes each partition to its leader as the metadata
//! names it, so this keeps every request going through the proxy.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::Broker;
use common::wire::Conn;
use sluice_client::{
    Acks, Client, ClientConfig, ClientError, Producer, ProducerConfig, ProducerRecord,
};
use sluice_proto::protocol::{
    ApiKey, ErrorCode, FRAME_PREFIX_BYTES, MetadataResponse, Reader, RequestHeader, ResponseHeader,
    decode_body, encode_response,
};

const PARTITIONS: u32 = 2;
const RECORDS: usize = 3000;
/// Produce responses the proxy swallows (cutting the connection each time).
const CUTS: usize = 4;

/// Reads one length-prefixed frame (prefix included); `None` at end of stream.
fn read_frame(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut prefix = [0u8; FRAME_PREFIX_BYTES];
    stream.read_exact(&mut prefix).ok()?;
    let len = u32::from_le_bytes(prefix) as usize;
    let mut frame = prefix.to_vec();
    frame.resize(FRAME_PREFIX_BYTES + len, 0);
    stream.read_exact(&mut frame[FRAME_PREFIX_BYTES..]).ok()?;
    Some(frame)
}

/// A proxy to `broker`: forwards everything, except that the responses to the first
/// `cuts` produce requests are dropped and the connection closed.
struct Proxy {
    addr: SocketAddr,
    cuts_left: Arc<AtomicUsize>,
}

impl Proxy {
    fn start(broker: SocketAddr, cuts: usize) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let cuts_left = Arc::new(AtomicUsize::new(cuts));
        let budget = cuts_left.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(upstream) = TcpStream::connect(broker) else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = upstream.set_nodelay(true);
                pair(client, upstream, budget.clone(), addr);
            }
        });
        Proxy { addr, cuts_left }
    }

    fn cuts_done(&self, cuts: usize) -> usize {
        cuts - self.cuts_left.load(Ordering::SeqCst)
    }
}

/// Runs one client connection through the proxy.
fn pair(client: TcpStream, upstream: TcpStream, budget: Arc<AtomicUsize>, me: SocketAddr) {
    // Correlation ids of produce requests whose response is to be swallowed.
    let doomed: Arc<Mutex<HashSet<u32>>> = Arc::default();
    // Correlation ids of Metadata requests, whose responses name the proxy as the broker.
    let metadata: Arc<Mutex<HashSet<u32>>> = Arc::default();
    let metadata_marks = metadata.clone();
    let (mut c_in, mut u_out) = (
        client.try_clone().expect("clone"),
        upstream.try_clone().expect("clone"),
    );
    let marks = doomed.clone();
    std::thread::spawn(move || {
        while let Some(frame) = read_frame(&mut c_in) {
            let mut r = Reader::new(BytesMut::from(&frame[FRAME_PREFIX_BYTES..]));
            let header = RequestHeader::decode(&mut r);
            if let Ok(h) = &header
                && h.api_key == ApiKey::Metadata as u16
            {
                metadata_marks
                    .lock()
                    .expect("lock")
                    .insert(h.correlation_id);
            }
            if let Ok(h) = header
                && h.api_key == ApiKey::Produce as u16
                && budget
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
            {
                marks.lock().expect("lock").insert(h.correlation_id);
            }
            if u_out.write_all(&frame).is_err() {
                break;
            }
        }
        let _ = u_out.shutdown(Shutdown::Both);
    });
    let (mut u_in, mut c_out) = (upstream, client);
    std::thread::spawn(move || {
        while let Some(frame) = read_frame(&mut u_in) {
            let mut r = Reader::new(BytesMut::from(&frame[FRAME_PREFIX_BYTES..]));
            let header = ResponseHeader::decode(&mut r).ok();
            let id = header.as_ref().map(|h| h.correlation_id);
            let ok = header.is_some_and(|h| h.error == ErrorCode::NONE);
            if id.is_some_and(|id| doomed.lock().expect("lock").contains(&id)) {
                // The broker wrote the batch and answered; the client never hears it.
                break;
            }
            let frame = match id {
                Some(id) if metadata.lock().expect("lock").remove(&id) && ok => {
                    let mut response: MetadataResponse = decode_body(r).expect("metadata");
                    for b in &mut response.brokers {
                        b.host = me.ip().to_string();
                        b.port = me.port();
                        b.shards.clear();
                    }
                    encode_response(id, &response).concat()
                }
                _ => frame,
            };
            if c_out.write_all(&frame).is_err() {
                break;
            }
        }
        let _ = c_out.shutdown(Shutdown::Both);
        let _ = u_in.shutdown(Shutdown::Both);
    });
}

/// Produces `RECORDS` records through `proxy`; returns `(partition, offset, value)` of each.
async fn produce_through(proxy: &Proxy, idempotence: Option<bool>) -> Vec<(u32, i64, String)> {
    let mut config = ClientConfig::new(&proxy.addr.to_string());
    // Every request goes through the proxy (no direct per-shard connections).
    config.shard_aware = false;
    config.client_id = "idempotent-proxy".into();
    let client = Client::connect(config).await.expect("connect");
    let producer = Producer::new(
        client,
        ProducerConfig {
            acks: Acks::All,
            linger: Duration::from_millis(2),
            batch_bytes: 2048,
            retries: 20,
            retry_backoff: Duration::from_millis(20),
            max_in_flight_per_partition: 5,
            idempotence,
            ..ProducerConfig::default()
        },
    );
    let mut deliveries = Vec::with_capacity(RECORDS);
    for n in 0..RECORDS {
        let value = format!("{n:06}");
        let p = (n as u32) % PARTITIONS;
        let record = ProducerRecord::new("idem", Bytes::from(value.clone())).partition(p);
        deliveries.push((p, value, producer.send(record).await.expect("send")));
    }
    let mut acked = Vec::with_capacity(RECORDS);
    for (p, value, delivery) in deliveries {
        let meta = delivery.await.expect("every record is delivered");
        assert_eq!(meta.partition, p);
        acked.push((p, meta.offset, value));
    }
    producer.close().await.expect("close");
    acked
}

fn partition_values(broker: &Broker, topic: &str, p: u32) -> Vec<(u64, String)> {
    let mut conn = Conn::connect(broker.addr);
    conn.read_all(topic, p, 0)
        .into_iter()
        .map(|(o, v)| (o, String::from_utf8(v).expect("utf8")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_after_cut_connections_write_each_record_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path(), 2);
    let mut conn = Conn::connect(broker.addr);
    assert_eq!(
        conn.create_topic("idem", PARTITIONS, &[]).error,
        ErrorCode::NONE
    );

    let proxy = Proxy::start(broker.addr, CUTS);
    let acked = produce_through(&proxy, None).await;
    assert_eq!(
        proxy.cuts_done(CUTS),
        CUTS,
        "the proxy cut {CUTS} produce responses"
    );

    for p in 0..PARTITIONS {
        let stored = partition_values(&broker, "idem", p);
        let sent: Vec<&str> = acked
            .iter()
            .filter(|(q, _, _)| *q == p)
            .map(|(_, _, v)| v.as_str())
            .collect();
        let got: Vec<&str> = stored.iter().map(|(_, v)| v.as_str()).collect();
        // Exactly once each, in send order.
        assert_eq!(got, sent, "partition {p}");
        // Each acknowledged record is at the offset its delivery reported.
        for (_, offset, value) in acked.iter().filter(|(q, _, _)| *q == p) {
            assert_eq!(
                stored[*offset as usize].1, *value,
                "partition {p} offset {offset}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_idempotence_the_same_cuts_duplicate_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path(), 1);
    let mut conn = Conn::connect(broker.addr);
    assert_eq!(
        conn.create_topic("idem", PARTITIONS, &[]).error,
        ErrorCode::NONE
    );
    let proxy = Proxy::start(broker.addr, CUTS);
    produce_through(&proxy, Some(false)).await;
    assert_eq!(proxy.cuts_done(CUTS), CUTS);
    let stored: usize = (0..PARTITIONS)
        .map(|p| partition_values(&broker, "idem", p).len())
        .sum();
    assert!(
        stored > RECORDS,
        "{stored} records stored for {RECORDS} sent: the cut batches were written twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotence_needs_acks_all() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path(), 1);
    let client = Client::connect(ClientConfig::new(&broker.addr_string()))
        .await
        .expect("connect");
    let producer = Producer::new(
        client,
        ProducerConfig {
            acks: Acks::Leader,
            idempotence: Some(true),
            ..ProducerConfig::default()
        },
    );
    let err = producer
        .send(ProducerRecord::new("t", "v"))
        .await
        .expect_err("invalid config");
    assert!(matches!(err, ClientError::InvalidConfig(_)), "{err}");
    assert!(err.to_string().contains("acks"), "{err}");
}
