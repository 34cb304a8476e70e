//! Clients across lost answers and refusals (issue 6, round 2, "client"), against a real
//! `sluice serve` behind a small fault-injecting proxy:
//! - the idempotent producer bumps its epoch after a delivery timeout (KIP-360) and goes on,
//!   with every later record written exactly once;
//! - topic admin calls retry through `NOT_CONTROLLER`, `REQUEST_TIMED_OUT`,
//!   `LEADER_NOT_AVAILABLE` and dead connections, on another broker of the list;
//! - a consumer keeps its position through `FENCED_LEADER_EPOCH` / `UNKNOWN_LEADER_EPOCH`.
//!
//! The proxy forwards frames one request at a time. Metadata answers are rewritten so the
//! broker's address is the proxy's (the client is not shard aware, so every request goes
//! through the proxy). Faults are scripted per API: a black hole for Produce (optionally
//! forwarding the first request and dropping its answer, so the batch is in the log but the
//! producer never learns it), and for admin and Fetch requests an answer with an error
//! code, or a connection closed before or after forwarding.

mod common;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::Broker;
use common::wire::Conn;
use sluice_client::{
    Acks, Client, ClientConfig, ClientError, Consumer, ConsumerConfig, Producer, ProducerConfig,
    ProducerRecord, SeekTo, TopicPartition,
};
use sluice_proto::protocol::{
    ApiKey, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse,
    DescribeTopicsRequest, DescribeTopicsResponse, ErrorCode, FRAME_PREFIX_BYTES,
    FetchPartitionResult, FetchRequest, FetchResponse, FetchTopicResult, InitProducerIdResponse,
    MetadataResponse, Reader, RecordSet, RequestHeader, ResponseHeader, TopicDescription,
    TopicResult, Wire, decode_body, encode_response,
};
use sluice_proto::{Limits, split_batches};

/// How often an accept loop looks for its stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(5);

/// What the proxy does to one request.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Answer with this error code for every topic (partition) of the request.
    Answer(ErrorCode),
    /// Forward the request, drop the answer and close the connection: it happened, and
    /// the client cannot know.
    ForwardThenClose,
    /// Close the connection without forwarding.
    Close,
}

#[derive(Default)]
struct Faults {
    /// While `Some(n)`: every Produce request is black-holed (the connection then stalls,
    /// answering nothing), the first `n` of them after being forwarded to the broker.
    produce: Option<u32>,
    /// Faults for other APIs, used up in order (the front one applies only to its API).
    queue: VecDeque<(ApiKey, Fault)>,
    /// Requests seen: (proxy index, API, fault applied).
    seen: Vec<(usize, ApiKey, Option<Fault>)>,
    /// Produce requests black-holed, and how many of them were forwarded first.
    blackholed: usize,
    forwarded_then_dropped: usize,
}

struct Proxy {
    addrs: Vec<SocketAddr>,
    faults: Arc<Mutex<Faults>>,
}

impl Proxy {
    /// `listeners` proxies in front of `broker`, sharing one fault script.
    fn start(broker: &Broker, listeners: usize) -> Proxy {
        let faults = Arc::new(Mutex::new(Faults::default()));
        let mut addrs = Vec::new();
        let bound: Vec<TcpListener> = (0..listeners)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind proxy"))
            .collect();
        for l in &bound {
            addrs.push(l.local_addr().expect("address"));
        }
        // Metadata names the first proxy as the broker.
        let advertised = addrs[0];
        for (index, listener) in bound.into_iter().enumerate() {
            let faults = faults.clone();
            let target = broker.addr;
            std::thread::spawn(move || accept_loop(listener, index, target, advertised, faults));
        }
        Proxy { addrs, faults }
    }

    fn faults(&self) -> MutexGuard<'_, Faults> {
        self.faults.lock().expect("faults lock")
    }

    fn list(&self) -> String {
        self.addrs
            .iter()
            .map(SocketAddr::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }

    fn push(&self, api: ApiKey, fault: Fault, times: usize) {
        let mut f = self.faults();
        for _ in 0..times {
            f.queue.push_back((api, fault));
        }
    }

    /// (proxy, fault) of each request of `api` seen so far.
    fn seen(&self, api: ApiKey) -> Vec<(usize, Option<Fault>)> {
        self.faults()
            .seen
            .iter()
            .filter(|(_, a, _)| *a == api)
            .map(|(p, _, f)| (*p, *f))
            .collect()
    }
}

fn accept_loop(
    listener: TcpListener,
    index: usize,
    target: SocketAddr,
    advertised: SocketAddr,
    faults: Arc<Mutex<Faults>>,
) {
    listener.set_nonblocking(true).expect("nonblocking");
    loop {
        match listener.accept() {
            Ok((client, _)) => {
                client.set_nonblocking(false).expect("blocking");
                let faults = faults.clone();
                std::thread::spawn(move || serve(index, client, target, advertised, &faults));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(ACCEPT_POLL),
            Err(_) => return,
        }
    }
}

fn read_frame(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut prefix = [0u8; FRAME_PREFIX_BYTES];
    stream.read_exact(&mut prefix).ok()?;
    let len = u32::from_le_bytes(prefix) as usize;
    let mut frame = prefix.to_vec();
    frame.resize(FRAME_PREFIX_BYTES + len, 0);
    stream.read_exact(&mut frame[FRAME_PREFIX_BYTES..]).ok()?;
    Some(frame)
}

fn payload(frame: &[u8]) -> Reader {
    Reader::new(BytesMut::from(&frame[FRAME_PREFIX_BYTES..]))
}

fn forward(upstream: &mut TcpStream, frame: &[u8]) -> Option<Vec<u8>> {
    upstream.write_all(frame).ok()?;
    read_frame(upstream)
}

fn encode<T: Wire>(correlation_id: u32, body: &T) -> Vec<u8> {
    encode_response(correlation_id, body).concat()
}

/// What to do with one request.
enum Action {
    Reply(Vec<u8>),
    /// Read and drop everything the client sends, answer nothing.
    Stall,
    Close,
}

fn serve(
    index: usize,
    mut client: TcpStream,
    target: SocketAddr,
    advertised: SocketAddr,
    faults: &Mutex<Faults>,
) {
    let Ok(mut upstream) = TcpStream::connect(target) else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    while let Some(frame) = read_frame(&mut client) {
        match handle(index, &frame, &mut upstream, advertised, faults) {
            Action::Reply(reply) => {
                if client.write_all(&reply).is_err() {
                    break;
                }
            }
            Action::Stall => {
                while read_frame(&mut client).is_some() {}
                break;
            }
            Action::Close => break,
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = upstream.shutdown(Shutdown::Both);
}

fn handle(
    index: usize,
    frame: &[u8],
    upstream: &mut TcpStream,
    advertised: SocketAddr,
    faults: &Mutex<Faults>,
) -> Action {
    let mut r = payload(frame);
    let header = RequestHeader::decode(&mut r).expect("request header");
    let id = header.correlation_id;
    let Some(api) = ApiKey::from_u16(header.api_key) else {
        return forward(upstream, frame).map_or(Action::Close, Action::Reply);
    };
    let fault = {
        let mut f = faults.lock().expect("faults lock");
        if api == ApiKey::Produce
            && let Some(forwards) = f.produce
        {
            f.blackholed += 1;
            f.seen.push((index, api, None));
            if forwards > 0 {
                f.produce = Some(forwards - 1);
                f.forwarded_then_dropped += 1;
                drop(f);
                let _ = forward(upstream, frame);
            }
            return Action::Stall;
        }
        let fault = match f.queue.front() {
            Some((a, fault)) if *a == api => {
                let fault = *fault;
                f.queue.pop_front();
                Some(fault)
            }
            _ => None,
        };
        f.seen.push((index, api, fault));
        fault
    };
    match fault {
        None if api == ApiKey::Metadata => {
            let Some(reply) = forward(upstream, frame) else {
                return Action::Close;
            };
            let mut body = payload(&reply);
            let h = ResponseHeader::decode(&mut body).expect("response header");
            if h.error != ErrorCode::NONE {
                return Action::Reply(reply);
            }
            let mut md: MetadataResponse = decode_body(body).expect("metadata");
            for b in &mut md.brokers {
                b.host = advertised.ip().to_string();
                b.port = advertised.port();
                b.shards.clear();
            }
            Action::Reply(encode(id, &md))
        }
        None => forward(upstream, frame).map_or(Action::Close, Action::Reply),
        Some(Fault::Close) => Action::Close,
        Some(Fault::ForwardThenClose) => {
            let _ = forward(upstream, frame);
            Action::Close
        }
        Some(Fault::Answer(code)) => Action::Reply(answer(api, id, r, code)),
    }
}

/// An answer to `api` with `code` for everything the request names.
fn answer(api: ApiKey, id: u32, body: Reader, code: ErrorCode) -> Vec<u8> {
    let message = format!("injected {code}");
    let result = |name: &String| TopicResult {
        name: name.clone(),
        error: code,
        message: message.clone(),
    };
    match api {
        ApiKey::CreateTopics => {
            let req: CreateTopicsRequest = decode_body(body).expect("create");
            let topics = req.topics.iter().map(|t| result(&t.name)).collect();
            encode(id, &CreateTopicsResponse { topics })
        }
        ApiKey::DeleteTopics => {
            let req: DeleteTopicsRequest = decode_body(body).expect("delete");
            let topics = req.names.iter().map(result).collect();
            encode(id, &DeleteTopicsResponse { topics })
        }
        ApiKey::DescribeTopics => {
            let req: DescribeTopicsRequest = decode_body(body).expect("describe");
            let topics = req
                .names
                .unwrap_or_default()
                .into_iter()
                .map(|name| TopicDescription {
                    name,
                    error: code,
                    message: message.clone(),
                    configs: Vec::new(),
                    partitions: Vec::new(),
                })
                .collect();
            encode(id, &DescribeTopicsResponse { topics })
        }
        ApiKey::Fetch => {
            let req: FetchRequest = decode_body(body).expect("fetch");
            let topics = req
                .topics
                .into_iter()
                .map(|t| FetchTopicResult {
                    name: t.name,
                    partitions: t
                        .partitions
                        .into_iter()
                        .map(|p| FetchPartitionResult {
                            partition: p.partition,
                            error: code,
                            message: message.clone(),
                            high_watermark: 0,
                            log_start_offset: 0,
                            records: RecordSet::empty(),
                        })
                        .collect(),
                })
                .collect();
            encode(
                id,
                &FetchResponse {
                    topics,
                    ..FetchResponse::default()
                },
            )
        }
        ApiKey::InitProducerId => encode(
            id,
            &InitProducerIdResponse {
                error: code,
                message,
                producer_id: -1,
                producer_epoch: -1,
            },
        ),
        other => panic!("no injected answer for {other:?}"),
    }
}

fn client_config(brokers: &str, client_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new(brokers);
    config.client_id = client_id.into();
    config.shard_aware = false;
    config.retry_backoff = Duration::from_millis(50);
    config.request_timeout = Duration::from_secs(10);
    config.connect_timeout = Duration::from_secs(5);
    config
}

/// `(offset, value, producer id, producer epoch)` of every record of a partition.
fn stored(broker: &Broker, topic: &str, partition: u32) -> Vec<(u64, String, i64, i16)> {
    let mut conn = Conn::connect(broker.addr);
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let r = conn.fetch(topic, partition, offset, 0, 0);
        assert_eq!(r.error, ErrorCode::NONE, "{}", r.message);
        let before = out.len();
        for batch in split_batches(r.records.into_bytes(), &Limits::DEFAULT) {
            let batch = batch.expect("valid batch");
            let h = *batch.header();
            for record in batch.records().expect("records") {
                let record = record.expect("record");
                let at = record.offset(batch.base_offset()).get();
                if at >= offset {
                    let value = record.value.map(|v| v.to_vec()).unwrap_or_default();
                    let value = String::from_utf8(value).expect("utf8");
                    out.push((at, value, h.producer_id, h.producer_epoch));
                }
            }
        }
        if out.len() == before {
            assert_eq!(
                offset, r.high_watermark,
                "no progress below the high watermark"
            );
            return out;
        }
        offset = out.last().expect("non-empty").0 + 1;
    }
}

/// One sent record: partition, value, phase, and the outcome.
struct Sent {
    partition: u32,
    value: String,
    phase: usize,
    outcome: Result<u64, ClientError>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_producer_bumps_its_epoch_after_delivery_timeouts() {
    const PARTITIONS: u32 = 2;
    const PER_PHASE: usize = 300;
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path(), 2);
    let proxy = Proxy::start(&broker, 1);
    let mut config = client_config(&proxy.list(), "bumping-producer");
    config.request_timeout = Duration::from_millis(1000);
    let client = Client::connect(config).await.expect("connect");
    client
        .create_topic("bump", PARTITIONS, &[])
        .await
        .expect("create");
    let delivery_timeout = Duration::from_millis(3000);
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            acks: Acks::All,
            linger: Duration::from_millis(5),
            batch_bytes: 1024,
            retry_backoff: Duration::from_millis(50),
            delivery_timeout,
            max_in_flight_per_partition: 5,
            ..ProducerConfig::default()
        },
    );
    // Phases: 0 clean; 1 produce black-holed, the first request written but its answer
    // lost; 2 clean; 3 black-holed, nothing written (a sequence gap: without the bump every
    // later batch would fail with OUT_OF_ORDER_SEQUENCE_NUMBER); 4 clean.
    let mut pending = Vec::new();
    let mut n = 0usize;
    let started = Instant::now();
    for phase in 0..5 {
        match phase {
            1 => proxy.faults().produce = Some(1),
            3 => proxy.faults().produce = Some(0),
            _ => proxy.faults().produce = None,
        }
        let count = if phase % 2 == 1 { 60 } else { PER_PHASE };
        for _ in 0..count {
            let partition = (n as u32) % PARTITIONS;
            let value = format!("{n:06}");
            let record =
                ProducerRecord::new("bump", Bytes::from(value.clone())).partition(partition);
            pending.push((
                partition,
                value,
                phase,
                producer.send(record).await.expect("send"),
            ));
            n += 1;
            if n.is_multiple_of(20) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        if phase % 2 == 1 {
            // Past the delivery timeout: the black-holed batches fail for good.
            tokio::time::sleep(delivery_timeout * 2).await;
        } else {
            // The clean phase's records are acknowledged before the next fault starts.
            producer.flush().await.expect("flush");
        }
    }
    let mut sent = Vec::new();
    for (partition, value, phase, delivery) in pending {
        let outcome = delivery.await.map(|m| {
            assert_eq!(m.partition, partition);
            m.offset as u64
        });
        sent.push(Sent {
            partition,
            value,
            phase,
            outcome,
        });
    }
    producer.close().await.expect("close");
    let elapsed = started.elapsed();

    let mut failures: BTreeMap<String, usize> = BTreeMap::new();
    for s in &sent {
        match &s.outcome {
            Ok(_) => {}
            Err(e) => {
                // Its own timeout (the delivery timeout, reported with the last attempt's
                // error: a silent connection) or abandoned by the bump.
                let kind = match e {
                    ClientError::EpochBumped { .. } => "epoch bumped",
                    ClientError::Timeout { .. } | ClientError::ConnectionLost { .. } => "timeout",
                    other => panic!("{} (phase {}) failed: {other}", s.value, s.phase),
                };
                assert!(
                    s.phase % 2 == 1,
                    "{} of clean phase {} failed: {e}",
                    s.value,
                    s.phase
                );
                *failures.entry(kind.into()).or_default() += 1;
            }
        }
    }
    assert!(
        failures.get("timeout").copied().unwrap_or(0) > 0,
        "batches timed out"
    );

    let mut written_after_failing = 0;
    let mut epochs = Vec::new();
    for p in 0..PARTITIONS {
        let log = stored(&broker, "bump", p);
        let mut at: HashMap<&str, Vec<u64>> = HashMap::new();
        for (offset, value, _, _) in &log {
            at.entry(value.as_str()).or_default().push(*offset);
        }
        for s in sent.iter().filter(|s| s.partition == p) {
            let found = at.get(s.value.as_str()).cloned().unwrap_or_default();
            match &s.outcome {
                // Acknowledged: exactly once, at the acknowledged offset.
                Ok(offset) => assert_eq!(found, vec![*offset], "record {}", s.value),
                // Failed: at most once (it may have been written before its answer was lost,
                // and is never resent under the new epoch).
                Err(e) => {
                    assert!(
                        found.len() <= 1,
                        "failed record {} written twice: {e}",
                        s.value
                    );
                    written_after_failing += found.len();
                }
            }
        }
        // The acknowledged records are in send order.
        let acked: Vec<u64> = sent
            .iter()
            .filter(|s| s.partition == p)
            .filter_map(|s| s.outcome.as_ref().ok().copied())
            .collect();
        assert!(
            acked.windows(2).all(|w| w[0] < w[1]),
            "partition {p} in order"
        );
        let (first, last) = (log.first().expect("records"), log.last().expect("records"));
        epochs.push((p, first.2, first.3, last.2, last.3));
    }
    let acked = sent.iter().filter(|s| s.outcome.is_ok()).count();
    let clean = sent.iter().filter(|s| s.phase % 2 == 0).count();
    let (blackholed, forwarded) = {
        let f = proxy.faults();
        (f.blackholed, f.forwarded_then_dropped)
    };
    eprintln!(
        "epoch bump: {} records in {elapsed:?}: {acked} acknowledged ({clean} sent in clean \
         phases), failures {failures:?}, {written_after_failing} failed records found written, \
         {blackholed} produce requests black-holed ({forwarded} forwarded first); \
         (partition, first id, first epoch, last id, last epoch): {epochs:?}",
        sent.len()
    );
    assert!(
        acked >= clean,
        "every record of a clean phase is acknowledged"
    );
    assert_eq!(forwarded, 1);
    assert!(
        written_after_failing >= 1,
        "the batch whose answer was dropped is in the log, though its records failed"
    );
    for (p, first_id, first_epoch, last_id, last_epoch) in epochs {
        assert!(
            last_id != first_id || last_epoch >= first_epoch + 2,
            "partition {p}: two faults, two bumps at least: {first_id}/{first_epoch} -> \
             {last_id}/{last_epoch}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_retry_on_another_broker_and_report_what_happened() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path(), 2);
    // Two "brokers" of the bootstrap list: two proxies in front of the one real broker.
    let proxy = Proxy::start(&broker, 2);
    let client = Client::connect(client_config(&proxy.list(), "admin"))
        .await
        .expect("connect");

    // NOT_CONTROLLER twice, then REQUEST_TIMED_OUT, then it goes through.
    proxy.push(
        ApiKey::CreateTopics,
        Fault::Answer(ErrorCode::NOT_CONTROLLER),
        2,
    );
    proxy.push(
        ApiKey::CreateTopics,
        Fault::Answer(ErrorCode::REQUEST_TIMED_OUT),
        1,
    );
    client.create_topic("a", 2, &[]).await.expect("create a");
    let seen = proxy.seen(ApiKey::CreateTopics);
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert_ne!(
        seen[0].0, seen[1].0,
        "after NOT_CONTROLLER the next broker is asked"
    );
    assert_ne!(
        seen[1].0, seen[2].0,
        "after NOT_CONTROLLER the next broker is asked"
    );
    assert!(seen[3].1.is_none());
    assert_eq!(
        client
            .describe_topic("a")
            .await
            .expect("a")
            .partitions
            .len(),
        2
    );

    // The create happens, its answer is lost with the connection: the retry (on the other
    // broker) finds the topic, and the caller is told so.
    let before = proxy.seen(ApiKey::CreateTopics).len();
    proxy.push(ApiKey::CreateTopics, Fault::ForwardThenClose, 1);
    match client.create_topic("b", 1, &[]).await {
        Err(ClientError::Broker {
            code: ErrorCode::TOPIC_ALREADY_EXISTS,
            ..
        }) => {}
        other => panic!("expected TOPIC_ALREADY_EXISTS from the retry, got {other:?}"),
    }
    let seen = proxy.seen(ApiKey::CreateTopics);
    assert_eq!(seen.len(), before + 2);
    assert_ne!(
        seen[before].0,
        seen[before + 1].0,
        "the retry went elsewhere"
    );
    client.describe_topic("b").await.expect("b exists");

    // Describe: a dead connection, then LEADER_NOT_AVAILABLE for the topic.
    proxy.push(ApiKey::DescribeTopics, Fault::Close, 1);
    proxy.push(
        ApiKey::DescribeTopics,
        Fault::Answer(ErrorCode::LEADER_NOT_AVAILABLE),
        1,
    );
    let described = client.describe_topic("a").await.expect("describe a");
    assert_eq!(described.partitions.len(), 2);

    // Delete: NOT_CONTROLLER, then the delete happens and its answer is lost: the retry
    // says the topic is unknown.
    proxy.push(
        ApiKey::DeleteTopics,
        Fault::Answer(ErrorCode::NOT_CONTROLLER),
        1,
    );
    client.delete_topic("a").await.expect("delete a");
    proxy.push(ApiKey::DeleteTopics, Fault::ForwardThenClose, 1);
    match client.delete_topic("b").await {
        Err(ClientError::UnknownTopic { topic }) => assert_eq!(topic, "b"),
        other => panic!("expected UnknownTopic from the retry, got {other:?}"),
    }
    for t in ["a", "b"] {
        assert!(matches!(
            client.describe_topic(t).await,
            Err(ClientError::UnknownTopic { .. })
        ));
    }

    // A refusal that does not end is bounded by admin_timeout, and names the last error.
    let mut config = client_config(&proxy.list(), "admin-bounded");
    config.admin_timeout = Duration::from_millis(800);
    let bounded = Client::connect(config).await.expect("connect");
    proxy.push(
        ApiKey::CreateTopics,
        Fault::Answer(ErrorCode::NOT_CONTROLLER),
        10_000,
    );
    let started = Instant::now();
    let err = bounded
        .create_topic("c", 1, &[])
        .await
        .expect_err("never accepted");
    let took = started.elapsed();
    proxy.faults().queue.clear();
    assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
    assert!(err.to_string().contains("NOT_CONTROLLER"), "{err}");
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // A non-retriable answer is final at once.
    proxy.push(
        ApiKey::CreateTopics,
        Fault::Answer(ErrorCode::INVALID_REQUEST),
        1,
    );
    let before = proxy.seen(ApiKey::CreateTopics).len();
    let err = client.create_topic("d", 1, &[]).await.expect_err("refused");
    assert!(err.to_string().contains("INVALID_REQUEST"), "{err}");
    assert_eq!(proxy.seen(ApiKey::CreateTopics).len(), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_keeps_its_position_through_leader_epoch_errors() {
    const RECORDS: usize = 400;
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path(), 2);
    let proxy = Proxy::start(&broker, 1);
    let client = Client::connect(client_config(&proxy.list(), "epoch-consumer"))
        .await
        .expect("connect");
    client.create_topic("fenced", 1, &[]).await.expect("create");
    // Small batches, so a poll (at most 1 KiB) returns a few of them.
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            batch_bytes: 256,
            linger: Duration::from_millis(1),
            ..ProducerConfig::default()
        },
    );
    let mut deliveries = Vec::new();
    for n in 0..RECORDS {
        let record = ProducerRecord::new("fenced", Bytes::from(format!("{n:05}"))).partition(0);
        deliveries.push(producer.send(record).await.expect("send"));
    }
    for d in deliveries {
        d.await.expect("acknowledged");
    }
    let mut consumer = Consumer::new(
        client.clone(),
        ConsumerConfig {
            partition_max_bytes: 1024,
            ..ConsumerConfig::default()
        },
    );
    consumer.assign(vec![TopicPartition::new("fenced", 0)]);
    consumer
        .seek(&TopicPartition::new("fenced", 0), SeekTo::Offset(0))
        .await
        .expect("seek");
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut round = 0;
    while got.len() < RECORDS {
        assert!(Instant::now() < deadline, "read {} of {RECORDS}", got.len());
        // Between polls, the leader "moves": the next fetch meets an epoch error.
        let code = if round % 2 == 0 {
            ErrorCode::FENCED_LEADER_EPOCH
        } else {
            ErrorCode::UNKNOWN_LEADER_EPOCH
        };
        proxy.push(ApiKey::Fetch, Fault::Answer(code), 1);
        round += 1;
        for r in consumer
            .poll(Duration::from_millis(500))
            .await
            .expect("poll")
        {
            got.push((
                r.offset,
                String::from_utf8(r.value.expect("value").to_vec()).expect("utf8"),
            ));
        }
    }
    let expected: Vec<(u64, String)> = (0..RECORDS)
        .map(|n| (n as u64, format!("{n:05}")))
        .collect();
    assert_eq!(got, expected, "no gaps, no repeats");
    let injected = proxy
        .seen(ApiKey::Fetch)
        .iter()
        .filter(|(_, f)| f.is_some())
        .count();
    eprintln!(
        "consumer: {RECORDS} records through {injected} leader epoch errors in {round} polls"
    );
    assert!(injected >= 5, "the consumer met the errors: {injected}");
    assert!(
        proxy.seen(ApiKey::Metadata).len() >= 2,
        "and refreshed metadata"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_bump_falls_back_to_a_new_producer_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path(), 1);
    let proxy = Proxy::start(&broker, 1);
    let mut config = client_config(&proxy.list(), "refused-bump");
    config.request_timeout = Duration::from_millis(1000);
    let client = Client::connect(config).await.expect("connect");
    client.create_topic("fresh", 1, &[]).await.expect("create");
    let delivery_timeout = Duration::from_millis(2500);
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            acks: Acks::All,
            linger: Duration::from_millis(5),
            batch_bytes: 512,
            retry_backoff: Duration::from_millis(50),
            delivery_timeout,
            ..ProducerConfig::default()
        },
    );
    let send = |n: usize| {
        let producer = producer.clone();
        async move {
            let value = format!("{n:05}");
            let record = ProducerRecord::new("fresh", Bytes::from(value.clone())).partition(0);
            (value, producer.send(record).await.expect("send"))
        }
    };
    let mut before = Vec::new();
    for n in 0..100 {
        before.push(send(n).await);
    }
    producer.flush().await.expect("flush");
    // Nothing written for a while: a gap. The bump is then first answered
    // REQUEST_TIMED_OUT (retried), then INVALID_PRODUCER_EPOCH (as when the answer to an
    // earlier bump was lost): the producer takes a new id.
    proxy.push(
        ApiKey::InitProducerId,
        Fault::Answer(ErrorCode::REQUEST_TIMED_OUT),
        1,
    );
    proxy.push(
        ApiKey::InitProducerId,
        Fault::Answer(ErrorCode::INVALID_PRODUCER_EPOCH),
        1,
    );
    proxy.faults().produce = Some(0);
    let mut lost = Vec::new();
    for n in 100..120 {
        lost.push(send(n).await);
    }
    tokio::time::sleep(delivery_timeout * 2).await;
    proxy.faults().produce = None;
    let mut after = Vec::new();
    for n in 120..220 {
        after.push(send(n).await);
    }
    producer.flush().await.expect("flush");
    let mut acked = Vec::new();
    for (value, d) in before.into_iter().chain(after) {
        let meta = d.await.unwrap_or_else(|e| panic!("{value}: {e}"));
        acked.push((meta.offset as u64, value));
    }
    for (value, d) in lost {
        assert!(
            d.await.is_err(),
            "{value} was never written, it cannot be acknowledged"
        );
    }
    let log = stored(&broker, "fresh", 0);
    let values: Vec<(u64, String)> = log.iter().map(|(o, v, _, _)| (*o, v.clone())).collect();
    assert_eq!(
        values, acked,
        "every acknowledged record once, nothing else"
    );
    let (first, last) = (&log[0], &log[log.len() - 1]);
    eprintln!(
        "refused bump: producer {}/{} then {}/{}; InitProducerId requests {}",
        first.2,
        first.3,
        last.2,
        last.3,
        proxy.seen(ApiKey::InitProducerId).len()
    );
    assert_ne!(first.2, last.2, "a new producer id after the refused bump");
    assert_eq!(last.3, 0, "a new id starts at epoch 0");
    // The first init, the timed-out bump, the refused bump, the new id.
    assert_eq!(proxy.seen(ApiKey::InitProducerId).len(), 4);
}
