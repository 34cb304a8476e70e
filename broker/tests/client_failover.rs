//! The client follows leaders across brokers (issue 6, part 4), against a real `sluice serve`
//! behind a protocol-aware proxy that presents it as a cluster of several brokers.
//!
//! There is no multi-broker server yet, so the harness is honest about what it fakes: every
//! record goes to and comes from the one real broker, but the client only ever talks to the
//! proxy nodes. Each proxy node has a node id, a main listener and one listener per real
//! shard (forwarding to that shard), and the proxy decodes each request with
//! `sluice-proto`'s codecs:
//! - Metadata responses are rewritten: the brokers are the live proxy nodes, and each
//!   partition is led by the proxy node the test's routing table names (with a leader epoch
//!   bumped at each move);
//! - Produce, Fetch and ListOffsets parts for partitions the node does not lead are answered
//!   `NOT_LEADER_OR_FOLLOWER` by the proxy (the rest is forwarded), as a real broker that
//!   lost leadership would;
//! - FindCoordinator names the coordinator node of the routing table; a node that is not the
//!   coordinator answers group requests `NOT_COORDINATOR`;
//! - a killed node closes its listeners and resets every connection, and its partitions
//!   (and the coordinator role) move to live nodes, as a controller would do.
//!
//! Connections through the proxy are served one request at a time (the client's pipelining
//! just waits in the socket buffers).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::Broker;
use common::wire::Conn;
use sluice_client::{
    Acks, Client, ClientConfig, Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord,
    TopicPartition,
};
use sluice_proto::protocol::{
    ApiKey, BrokerMetadata, DeleteGroupResult, DeleteGroupsRequest, DeleteGroupsResponse,
    DescribeGroupsRequest, DescribeGroupsResponse, DescribedGroup, ErrorCode, FRAME_PREFIX_BYTES,
    FetchPartitionResult, FetchRequest, FetchResponse, FetchTopic, FetchTopicResult,
    FindCoordinatorResponse, HeartbeatResponse, JoinGroupResponse, LeaveGroupResponse,
    ListOffsetsPartitionResult, ListOffsetsRequest, ListOffsetsResponse, ListOffsetsTopic,
    ListOffsetsTopicResult, MetadataResponse, OffsetCommitPartitionResult, OffsetCommitRequest,
    OffsetCommitResponse, OffsetCommitTopicResult, OffsetFetchResponse, ProducePartitionResult,
    ProduceRequest, ProduceResponse, ProduceTopic, ProduceTopicResult, Reader, RecordSet,
    RequestHeader, ResponseHeader, ShardAddress, SyncGroupResponse, Wire, decode_body,
    encode_request, encode_response,
};

/// Proxy nodes the tests present the broker as.
const NODES: u32 = 3;
/// How often a stopped node's accept loop looks at its "alive" flag.
const ACCEPT_POLL: Duration = Duration::from_millis(5);

/// Reads one frame (prefix included); `None` at end of stream or on an error.
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

/// One proxy node's addresses.
#[derive(Clone)]
struct NodeAddrs {
    main: SocketAddr,
    /// (real shard, the node's listener for it).
    shards: Vec<(u16, SocketAddr)>,
}

/// Who leads what, and who is alive: the test's stand-in for a controller.
struct Routing {
    /// (leader node, leader epoch) per partition; a partition not listed yet is led by
    /// node `partition % NODES` (or the next live one) at epoch 0.
    leaders: HashMap<(String, u32), (u32, u32)>,
    coordinator: u32,
    alive: Vec<bool>,
    /// A storm: every node answers Produce `NOT_LEADER_OR_FOLLOWER` for every partition
    /// while the metadata keeps naming it (a leader that has not caught up yet).
    refusing: bool,
}

impl Routing {
    fn next_alive(&self, after: u32) -> u32 {
        (1..=NODES)
            .map(|i| (after + i) % NODES)
            .find(|n| self.alive[*n as usize])
            .expect("a live node")
    }

    fn leader(&mut self, topic: &str, partition: u32) -> (u32, u32) {
        let default = partition % NODES;
        let default = if self.alive[default as usize] {
            default
        } else {
            self.next_alive(default)
        };
        *self
            .leaders
            .entry((topic.to_owned(), partition))
            .or_insert((default, 0))
    }
}

/// Metadata requests of one client, as the proxy saw them.
#[derive(Default)]
struct MetadataLog {
    in_flight: usize,
    max_in_flight: usize,
    /// (arrival, answer sent) of each.
    requests: Vec<(Instant, Instant)>,
}

#[derive(Default)]
struct Stats {
    /// By client id.
    metadata: HashMap<String, MetadataLog>,
    not_leader: usize,
    not_coordinator: usize,
    moves: usize,
    /// Produce/Fetch/ListOffsets parts forwarded, by node.
    forwarded: [usize; NODES as usize],
    /// Connections a killed node reset.
    reset: usize,
}

struct Shared {
    routing: Mutex<Routing>,
    stats: Mutex<Stats>,
    nodes: Vec<NodeAddrs>,
    /// Both ends of each node's connections, shut down when it is killed.
    streams: Mutex<Vec<Vec<TcpStream>>>,
}

impl Shared {
    fn routing(&self) -> MutexGuard<'_, Routing> {
        self.routing.lock().expect("routing lock")
    }

    fn stats(&self) -> MutexGuard<'_, Stats> {
        self.stats.lock().expect("stats lock")
    }

    fn alive(&self, node: u32) -> bool {
        self.routing().alive[node as usize]
    }
}

/// The proxy cluster in front of one real broker.
struct Cluster {
    shared: Arc<Shared>,
}

impl Cluster {
    fn start(broker: &Broker) -> Cluster {
        let real = Conn::connect(broker.addr).metadata();
        let real_broker = real.brokers.first().expect("the broker lists itself");
        let real_shards: Vec<(u16, SocketAddr)> = real_broker
            .shards
            .iter()
            .map(|s| {
                let addr: SocketAddr = format!("{}:{}", s.host, s.port)
                    .parse()
                    .expect("shard address");
                (s.shard, addr)
            })
            .collect();
        let mut listeners = Vec::new();
        let mut nodes = Vec::new();
        for node in 0..NODES {
            let bind = || TcpListener::bind("127.0.0.1:0").expect("bind proxy");
            let main = bind();
            let main_addr = main.local_addr().expect("address");
            listeners.push((node, main, broker.addr));
            let mut shards = Vec::new();
            for (shard, target) in &real_shards {
                let l = bind();
                shards.push((*shard, l.local_addr().expect("address")));
                listeners.push((node, l, *target));
            }
            nodes.push(NodeAddrs {
                main: main_addr,
                shards,
            });
        }
        let shared = Arc::new(Shared {
            routing: Mutex::new(Routing {
                leaders: HashMap::new(),
                coordinator: 0,
                alive: vec![true; NODES as usize],
                refusing: false,
            }),
            stats: Mutex::new(Stats::default()),
            nodes,
            streams: Mutex::new((0..NODES).map(|_| Vec::new()).collect()),
        });
        for (node, listener, target) in listeners {
            let shared = shared.clone();
            std::thread::spawn(move || accept_loop(listener, node, target, shared));
        }
        Cluster { shared }
    }

    fn addr(&self, node: u32) -> String {
        self.shared.nodes[node as usize].main.to_string()
    }

    /// Moves a partition's leadership to the next live node; returns the new leader.
    fn move_leader(&self, topic: &str, partition: u32) -> u32 {
        let mut routing = self.shared.routing();
        let (old, epoch) = routing.leader(topic, partition);
        let new = routing.next_alive(old);
        routing
            .leaders
            .insert((topic.to_owned(), partition), (new, epoch + 1));
        drop(routing);
        self.shared.stats().moves += 1;
        new
    }

    fn leader(&self, topic: &str, partition: u32) -> u32 {
        self.shared.routing().leader(topic, partition).0
    }

    fn move_coordinator(&self) -> u32 {
        let mut routing = self.shared.routing();
        routing.coordinator = routing.next_alive(routing.coordinator);
        routing.coordinator
    }

    fn set_refusing(&self, refusing: bool) {
        self.shared.routing().refusing = refusing;
    }

    /// Kills a node: its partitions and the coordinator role move to live nodes (new
    /// epochs), its listeners close and its connections are reset.
    fn kill(&self, node: u32) {
        {
            let mut routing = self.shared.routing();
            routing.alive[node as usize] = false;
            let next = routing.next_alive(node);
            for (leader, epoch) in routing.leaders.values_mut() {
                if *leader == node {
                    *leader = next;
                    *epoch += 1;
                }
            }
            if routing.coordinator == node {
                routing.coordinator = next;
            }
        }
        let streams =
            std::mem::take(&mut self.shared.streams.lock().expect("streams")[node as usize]);
        self.shared.stats().reset += streams.len() / 2;
        for s in streams {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(listener: TcpListener, node: u32, target: SocketAddr, shared: Arc<Shared>) {
    listener.set_nonblocking(true).expect("nonblocking");
    loop {
        if !shared.alive(node) {
            // Dropping the listener: new connections are refused.
            return;
        }
        match listener.accept() {
            Ok((client, _)) => {
                client.set_nonblocking(false).expect("blocking");
                let shared = shared.clone();
                std::thread::spawn(move || serve_conn(node, client, target, &shared));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(ACCEPT_POLL),
            Err(_) => return,
        }
    }
}

fn serve_conn(node: u32, mut client: TcpStream, target: SocketAddr, shared: &Shared) {
    let Ok(mut upstream) = TcpStream::connect(target) else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    {
        let mut streams = shared.streams.lock().expect("streams");
        if !shared.alive(node) {
            return;
        }
        streams[node as usize].push(client.try_clone().expect("clone"));
        streams[node as usize].push(upstream.try_clone().expect("clone"));
    }
    while let Some(frame) = read_frame(&mut client) {
        if !shared.alive(node) {
            break;
        }
        let Some(reply) = handle(node, &frame, &mut upstream, shared) else {
            break;
        };
        if client.write_all(&reply).is_err() {
            break;
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = upstream.shutdown(Shutdown::Both);
}

/// Sends a request frame to the real broker and reads its response frame.
fn forward(upstream: &mut TcpStream, frame: &[u8]) -> Option<Vec<u8>> {
    upstream.write_all(frame).ok()?;
    read_frame(upstream)
}

/// A response frame's header, and the body reader when the header says `NONE`.
fn response_body(frame: &[u8]) -> Option<Reader> {
    let mut r = payload(frame);
    let header = ResponseHeader::decode(&mut r).expect("response header");
    (header.error == ErrorCode::NONE).then_some(r)
}

fn encode<T: Wire>(correlation_id: u32, body: &T) -> Vec<u8> {
    encode_response(correlation_id, body).concat()
}

/// One request through node `node`: the reply frame to send back (`None`: stop).
fn handle(node: u32, frame: &[u8], upstream: &mut TcpStream, shared: &Shared) -> Option<Vec<u8>> {
    let mut r = payload(frame);
    let header = RequestHeader::decode(&mut r).expect("request header");
    let id = header.correlation_id;
    let Some(api) = ApiKey::from_u16(header.api_key) else {
        return forward(upstream, frame);
    };
    match api {
        ApiKey::Metadata => {
            {
                let mut stats = shared.stats();
                let log = stats.metadata.entry(header.client_id.clone()).or_default();
                log.in_flight += 1;
                log.max_in_flight = log.max_in_flight.max(log.in_flight);
            }
            let arrival = Instant::now();
            let reply = forward(upstream, frame).map(|reply| match response_body(&reply) {
                Some(body) => encode(
                    id,
                    &rewrite_metadata(decode_body(body).expect("md"), shared),
                ),
                None => reply,
            });
            let mut stats = shared.stats();
            let log = stats.metadata.get_mut(&header.client_id).expect("logged");
            log.in_flight -= 1;
            log.requests.push((arrival, Instant::now()));
            reply
        }
        ApiKey::FindCoordinator => {
            let reply = forward(upstream, frame)?;
            let Some(body) = response_body(&reply) else {
                return Some(reply);
            };
            let mut found: FindCoordinatorResponse = decode_body(body).expect("coordinator");
            if found.error == ErrorCode::NONE {
                let coordinator = shared.routing().coordinator;
                let addrs = &shared.nodes[coordinator as usize];
                let port = addrs
                    .shards
                    .iter()
                    .find(|(s, _)| *s == found.shard)
                    .map_or(addrs.main.port(), |(_, a)| a.port());
                found.node_id = coordinator;
                found.host = "127.0.0.1".into();
                found.port = port;
            }
            Some(encode(id, &found))
        }
        ApiKey::Produce => {
            let request: ProduceRequest = decode_body(r).expect("produce");
            handle_produce(node, id, &header, request, frame, upstream, shared)
        }
        ApiKey::Fetch => {
            let request: FetchRequest = decode_body(r).expect("fetch");
            handle_fetch(node, id, &header, request, frame, upstream, shared)
        }
        ApiKey::ListOffsets => {
            let request: ListOffsetsRequest = decode_body(r).expect("list offsets");
            handle_list_offsets(node, id, &header, request, frame, upstream, shared)
        }
        ApiKey::JoinGroup
        | ApiKey::SyncGroup
        | ApiKey::Heartbeat
        | ApiKey::LeaveGroup
        | ApiKey::OffsetCommit
        | ApiKey::OffsetFetch
        | ApiKey::DescribeGroups
        | ApiKey::DeleteGroups
            if shared.routing().coordinator != node =>
        {
            shared.stats().not_coordinator += 1;
            Some(not_coordinator(api, id, r))
        }
        _ => forward(upstream, frame),
    }
}

fn rewrite_metadata(mut response: MetadataResponse, shared: &Shared) -> MetadataResponse {
    let mut routing = shared.routing();
    response.brokers = (0..NODES)
        .filter(|n| routing.alive[*n as usize])
        .map(|n| {
            let addrs = &shared.nodes[n as usize];
            BrokerMetadata {
                node_id: n,
                host: "127.0.0.1".into(),
                port: addrs.main.port(),
                shards: addrs
                    .shards
                    .iter()
                    .map(|(shard, a)| ShardAddress {
                        shard: *shard,
                        host: "127.0.0.1".into(),
                        port: a.port(),
                    })
                    .collect(),
            }
        })
        .collect();
    let live: Vec<i32> = (0..NODES)
        .filter(|n| routing.alive[*n as usize])
        .map(|n| n as i32)
        .collect();
    for topic in &mut response.topics {
        for p in &mut topic.partitions {
            let (leader, epoch) = routing.leader(&topic.name, p.partition);
            p.leader = leader as i32;
            p.leader_epoch = epoch;
            p.replicas = (0..NODES as i32).collect();
            p.isr = live.clone();
        }
    }
    response
}

/// Whether node `node` serves `topic`-`partition` now (for produce, also not in a storm).
fn leads(shared: &Shared, node: u32, topic: &str, partition: u32, produce: bool) -> bool {
    let mut routing = shared.routing();
    !(produce && routing.refusing) && routing.leader(topic, partition).0 == node
}

fn not_leader_message(node: u32, topic: &str, partition: u32) -> String {
    format!("node {node} does not lead {topic}-{partition}")
}

#[allow(clippy::too_many_arguments)]
fn handle_produce(
    node: u32,
    id: u32,
    header: &RequestHeader,
    request: ProduceRequest,
    frame: &[u8],
    upstream: &mut TcpStream,
    shared: &Shared,
) -> Option<Vec<u8>> {
    assert_ne!(request.acks, 0, "these tests produce with acks");
    let mut led = Vec::new();
    let mut refused = Vec::new();
    for t in request.topics {
        let mut parts = Vec::new();
        for p in t.partitions {
            if leads(shared, node, &t.name, p.partition, true) {
                parts.push(p);
            } else {
                refused.push((t.name.clone(), p.partition));
            }
        }
        if !parts.is_empty() {
            led.push(ProduceTopic {
                name: t.name,
                partitions: parts,
            });
        }
    }
    let forwarded: usize = led.iter().map(|t| t.partitions.len()).sum();
    shared.stats().forwarded[node as usize] += forwarded;
    if refused.is_empty() {
        return forward(upstream, frame);
    }
    shared.stats().not_leader += refused.len();
    let mut response = if led.is_empty() {
        ProduceResponse::default()
    } else {
        let part = ProduceRequest {
            topics: led,
            ..request
        };
        let sub = encode_request(
            ApiKey::Produce,
            header.api_version,
            id,
            &header.client_id,
            &part,
        );
        let reply = forward(upstream, &sub.concat())?;
        let Some(body) = response_body(&reply) else {
            return Some(reply);
        };
        decode_body(body).expect("produce response")
    };
    for (topic, partition) in refused {
        let result = ProducePartitionResult {
            partition,
            error: ErrorCode::NOT_LEADER_OR_FOLLOWER,
            message: not_leader_message(node, &topic, partition),
            ..Default::default()
        };
        match response.topics.iter_mut().find(|t| t.name == topic) {
            Some(t) => t.partitions.push(result),
            None => response.topics.push(ProduceTopicResult {
                name: topic,
                partitions: vec![result],
            }),
        }
    }
    Some(encode(id, &response))
}

#[allow(clippy::too_many_arguments)]
fn handle_fetch(
    node: u32,
    id: u32,
    header: &RequestHeader,
    request: FetchRequest,
    frame: &[u8],
    upstream: &mut TcpStream,
    shared: &Shared,
) -> Option<Vec<u8>> {
    let mut led = Vec::new();
    let mut refused = Vec::new();
    for t in request.topics {
        let mut parts = Vec::new();
        for p in t.partitions {
            if leads(shared, node, &t.name, p.partition, false) {
                parts.push(p);
            } else {
                refused.push((t.name.clone(), p.partition));
            }
        }
        if !parts.is_empty() {
            led.push(FetchTopic {
                name: t.name,
                partitions: parts,
            });
        }
    }
    let forwarded: usize = led.iter().map(|t| t.partitions.len()).sum();
    shared.stats().forwarded[node as usize] += forwarded;
    if refused.is_empty() {
        return forward(upstream, frame);
    }
    shared.stats().not_leader += refused.len();
    let mut response = if led.is_empty() {
        FetchResponse::default()
    } else {
        let part = FetchRequest {
            topics: led,
            ..request
        };
        let sub = encode_request(
            ApiKey::Fetch,
            header.api_version,
            id,
            &header.client_id,
            &part,
        );
        let reply = forward(upstream, &sub.concat())?;
        let Some(body) = response_body(&reply) else {
            return Some(reply);
        };
        decode_body(body).expect("fetch response")
    };
    for (topic, partition) in refused {
        let result = FetchPartitionResult {
            partition,
            error: ErrorCode::NOT_LEADER_OR_FOLLOWER,
            message: not_leader_message(node, &topic, partition),
            high_watermark: 0,
            log_start_offset: 0,
            records: RecordSet::empty(),
        };
        match response.topics.iter_mut().find(|t| t.name == topic) {
            Some(t) => t.partitions.push(result),
            None => response.topics.push(FetchTopicResult {
                name: topic,
                partitions: vec![result],
            }),
        }
    }
    Some(encode(id, &response))
}

#[allow(clippy::too_many_arguments)]
fn handle_list_offsets(
    node: u32,
    id: u32,
    header: &RequestHeader,
    request: ListOffsetsRequest,
    frame: &[u8],
    upstream: &mut TcpStream,
    shared: &Shared,
) -> Option<Vec<u8>> {
    let mut led = Vec::new();
    let mut refused = Vec::new();
    for t in request.topics {
        let mut parts = Vec::new();
        for p in t.partitions {
            if leads(shared, node, &t.name, p.partition, false) {
                parts.push(p);
            } else {
                refused.push((t.name.clone(), p.partition));
            }
        }
        if !parts.is_empty() {
            led.push(ListOffsetsTopic {
                name: t.name,
                partitions: parts,
            });
        }
    }
    if refused.is_empty() {
        return forward(upstream, frame);
    }
    shared.stats().not_leader += refused.len();
    let mut response = if led.is_empty() {
        ListOffsetsResponse::default()
    } else {
        let part = ListOffsetsRequest { topics: led };
        let sub = encode_request(
            ApiKey::ListOffsets,
            header.api_version,
            id,
            &header.client_id,
            &part,
        );
        let reply = forward(upstream, &sub.concat())?;
        let Some(body) = response_body(&reply) else {
            return Some(reply);
        };
        decode_body(body).expect("list offsets response")
    };
    for (topic, partition) in refused {
        let result = ListOffsetsPartitionResult {
            partition,
            error: ErrorCode::NOT_LEADER_OR_FOLLOWER,
            message: not_leader_message(node, &topic, partition),
            ..Default::default()
        };
        match response.topics.iter_mut().find(|t| t.name == topic) {
            Some(t) => t.partitions.push(result),
            None => response.topics.push(ListOffsetsTopicResult {
                name: topic,
                partitions: vec![result],
            }),
        }
    }
    Some(encode(id, &response))
}

/// A group request answered `NOT_COORDINATOR` the way each API carries it.
fn not_coordinator(api: ApiKey, id: u32, body: Reader) -> Vec<u8> {
    let code = ErrorCode::NOT_COORDINATOR;
    let message = "this node is not the group's coordinator".to_owned();
    match api {
        ApiKey::JoinGroup => encode(
            id,
            &JoinGroupResponse {
                error: code,
                message,
                generation_id: -1,
                ..Default::default()
            },
        ),
        ApiKey::SyncGroup => encode(
            id,
            &SyncGroupResponse {
                error: code,
                message,
                ..Default::default()
            },
        ),
        ApiKey::Heartbeat => encode(
            id,
            &HeartbeatResponse {
                error: code,
                message,
            },
        ),
        ApiKey::LeaveGroup => encode(
            id,
            &LeaveGroupResponse {
                error: code,
                message,
            },
        ),
        ApiKey::OffsetFetch => encode(
            id,
            &OffsetFetchResponse {
                error: code,
                message,
                topics: Vec::new(),
            },
        ),
        ApiKey::OffsetCommit => {
            let request: OffsetCommitRequest = decode_body(body).expect("offset commit");
            let topics = request
                .topics
                .into_iter()
                .map(|t| OffsetCommitTopicResult {
                    topic: t.topic,
                    partitions: t
                        .partitions
                        .into_iter()
                        .map(|p| OffsetCommitPartitionResult {
                            partition: p.partition,
                            error: code,
                            message: message.clone(),
                        })
                        .collect(),
                })
                .collect();
            encode(id, &OffsetCommitResponse { topics })
        }
        ApiKey::DescribeGroups => {
            let request: DescribeGroupsRequest = decode_body(body).expect("describe groups");
            let groups = request
                .groups
                .into_iter()
                .map(|group| DescribedGroup {
                    group,
                    error: code,
                    message: message.clone(),
                    ..Default::default()
                })
                .collect();
            encode(id, &DescribeGroupsResponse { groups })
        }
        ApiKey::DeleteGroups => {
            let request: DeleteGroupsRequest = decode_body(body).expect("delete groups");
            let groups = request
                .groups
                .into_iter()
                .map(|group| DeleteGroupResult {
                    group,
                    error: code,
                    message: message.clone(),
                })
                .collect();
            encode(id, &DeleteGroupsResponse { groups })
        }
        other => unreachable!("{other:?} is not a group request"),
    }
}

// ---- the tests ----

fn client_config(brokers: &str, client_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new(brokers);
    config.client_id = client_id.into();
    config.retry_backoff = Duration::from_millis(50);
    config.request_timeout = Duration::from_secs(10);
    config.connect_timeout = Duration::from_secs(5);
    config
}

/// A port nothing listens on (bound, then closed).
fn dead_port() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("address");
    drop(l);
    addr.to_string()
}

fn values_of(broker: &Broker, topic: &str, partition: u32) -> Vec<(u64, String)> {
    Conn::connect(broker.addr)
        .read_all(topic, partition, 0)
        .into_iter()
        .map(|(o, v)| (o, String::from_utf8(v).expect("utf8")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_skips_dead_addresses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path(), 2);
    let cluster = Cluster::start(&broker);
    let brokers = format!("{},{},{}", dead_port(), dead_port(), cluster.addr(1));
    let client = Client::connect(client_config(&brokers, "bootstrap"))
        .await
        .expect("the third address answers");
    client.create_topic("boot", 3, &[]).await.expect("create");
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    for p in 0..3 {
        let meta = producer
            .send(ProducerRecord::new("boot", format!("v{p}")).partition(p))
            .await
            .expect("send")
            .await
            .expect("delivered");
        assert_eq!(meta.offset, 0);
    }
    producer.close().await.expect("close");
    // Each partition went to its leader node (partition p is led by node p), through the
    // node's own listeners: metadata named them, not the bootstrap address.
    let forwarded = cluster.shared.stats().forwarded;
    assert!(forwarded.iter().all(|n| *n > 0), "{forwarded:?}");
    for p in 0..3 {
        assert_eq!(values_of(&broker, "boot", p), vec![(0, format!("v{p}"))]);
    }
}

/// Moves leaders round-robin, one partition every `every`, until `stop`.
fn spawn_mover(
    cluster: Arc<Cluster>,
    topic: &'static str,
    partitions: u32,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut n = 0u32;
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(every);
            cluster.move_leader(topic, n % partitions);
            n += 1;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_produce_survives_leader_moves_and_a_dead_broker() {
    const PARTITIONS: u32 = 4;
    const RECORDS: usize = 6000;
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path(), 2);
    let cluster = Arc::new(Cluster::start(&broker));
    let brokers = format!("{},{}", cluster.addr(2), cluster.addr(0));
    let client = Client::connect(client_config(&brokers, "mover-producer"))
        .await
        .expect("connect");
    client
        .create_topic("moves", PARTITIONS, &[])
        .await
        .expect("create");
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            acks: Acks::All,
            linger: Duration::from_millis(2),
            batch_bytes: 2048,
            retry_backoff: Duration::from_millis(50),
            delivery_timeout: Duration::from_secs(60),
            max_in_flight_per_partition: 5,
            ..ProducerConfig::default()
        },
    );
    let stop = Arc::new(AtomicBool::new(false));
    let mover = spawn_mover(
        cluster.clone(),
        "moves",
        PARTITIONS,
        Duration::from_millis(30),
        stop.clone(),
    );
    let started = Instant::now();
    let mut deliveries = Vec::with_capacity(RECORDS);
    for n in 0..RECORDS {
        let value = format!("{n:06}");
        let p = (n as u32) % PARTITIONS;
        let record = ProducerRecord::new("moves", Bytes::from(value.clone())).partition(p);
        deliveries.push((p, value, producer.send(record).await.expect("send")));
        if n == RECORDS / 2 {
            // Node 2 (the first bootstrap address) dies while the producer is busy.
            cluster.kill(2);
        }
        if n % 50 == 49 {
            // Spread the traffic over ~3 s of moves.
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    let mut acked = Vec::with_capacity(RECORDS);
    for (p, value, delivery) in deliveries {
        let meta = delivery
            .await
            .unwrap_or_else(|e| panic!("{value} failed before the delivery timeout: {e}"));
        assert_eq!(meta.partition, p);
        acked.push((p, meta.offset as u64, value));
    }
    stop.store(true, Ordering::SeqCst);
    mover.join().expect("mover");
    producer.close().await.expect("close");
    let elapsed = started.elapsed();

    for p in 0..PARTITIONS {
        let stored = values_of(&broker, "moves", p);
        let sent: Vec<(u64, String)> = acked
            .iter()
            .filter(|(q, _, _)| *q == p)
            .map(|(_, o, v)| (*o, v.clone()))
            .collect();
        // Exactly once each, in send order, at the acknowledged offsets.
        assert_eq!(stored, sent, "partition {p}");
    }
    let stats = cluster.shared.stats();
    eprintln!(
        "produce through moves: {RECORDS} records in {elapsed:?}, {} moves, {} NOT_LEADER \
         answers, {} connections reset, forwarded by node {:?}",
        stats.moves, stats.not_leader, stats.reset, stats.forwarded
    );
    assert!(stats.moves >= 20, "leadership moved during the run");
    assert!(stats.not_leader >= 10, "the client hit old leaders");
    assert!(stats.reset > 0, "the killed node had live connections");
    assert!(
        stats.forwarded.iter().all(|n| *n > 0),
        "every node led some partition: {:?}",
        stats.forwarded
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_reads_through_leader_moves_without_gaps_or_repeats() {
    const PARTITIONS: u32 = 3;
    const RECORDS: usize = 3000;
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path(), 2);
    // Produce straight to the broker first, in small batches.
    {
        let direct = Client::connect(client_config(&broker.addr_string(), "direct"))
            .await
            .expect("connect");
        direct
            .create_topic("feed", PARTITIONS, &[])
            .await
            .expect("create");
        let producer = Producer::new(
            direct,
            ProducerConfig {
                batch_bytes: 512,
                linger: Duration::from_millis(1),
                ..ProducerConfig::default()
            },
        );
        let mut futures = Vec::new();
        for n in 0..RECORDS {
            let record =
                ProducerRecord::new("feed", format!("{n:06}")).partition((n as u32) % PARTITIONS);
            futures.push(producer.send(record).await.expect("send"));
        }
        for f in futures {
            f.await.expect("delivered");
        }
        producer.close().await.expect("close");
    }
    let cluster = Arc::new(Cluster::start(&broker));
    let client = Client::connect(client_config(&cluster.addr(0), "mover-consumer"))
        .await
        .expect("connect");
    let mut consumer = Consumer::new(
        client,
        ConsumerConfig {
            // One small batch per partition per fetch, so consuming spans many moves.
            partition_max_bytes: 256,
            fetch_max_wait: Duration::from_millis(100),
            ..ConsumerConfig::default()
        },
    );
    consumer.assign(
        (0..PARTITIONS)
            .map(|p| TopicPartition::new("feed", p))
            .collect(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let mover = spawn_mover(
        cluster.clone(),
        "feed",
        PARTITIONS,
        Duration::from_millis(20),
        stop.clone(),
    );
    let mut killed = false;
    let mut polls = 0u32;
    let mut seen: BTreeMap<u32, Vec<(u64, String)>> = BTreeMap::new();
    let mut total = 0;
    let mut retriable_errors = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while total < RECORDS {
        assert!(
            Instant::now() < deadline,
            "consumed only {total} of {RECORDS}"
        );
        match consumer.poll(Duration::from_millis(200)).await {
            Ok(records) => {
                polls += 1;
                // Between polls too, so moves land both during and between fetches.
                if polls.is_multiple_of(3) {
                    cluster.move_leader("feed", polls % PARTITIONS);
                }
                if !killed && total >= RECORDS / 2 {
                    cluster.kill(1);
                    killed = true;
                }
                for r in records {
                    let value = String::from_utf8(r.value.expect("value").to_vec()).expect("utf8");
                    seen.entry(r.partition).or_default().push((r.offset, value));
                    total += 1;
                }
            }
            // A connection the killed node reset: the positions did not move.
            Err(e) if e.is_retriable() => retriable_errors += 1,
            Err(e) => panic!("poll failed: {e}"),
        }
    }
    stop.store(true, Ordering::SeqCst);
    mover.join().expect("mover");
    assert_eq!(total, RECORDS, "nothing read twice");
    for p in 0..PARTITIONS {
        let got = &seen[&p];
        let expected = values_of(&broker, "feed", p);
        assert_eq!(got, &expected, "partition {p}: every offset once, in order");
        assert_eq!(
            consumer.position(&TopicPartition::new("feed", p)),
            Some(got.len() as u64)
        );
    }
    let stats = cluster.shared.stats();
    eprintln!(
        "consume through moves: {} moves, {} NOT_LEADER answers, {} resets, {retriable_errors} \
         retriable poll errors",
        stats.moves, stats.not_leader, stats.reset
    );
    assert!(stats.moves >= 5);
    assert!(stats.not_leader > 0, "the consumer hit old leaders");
    assert!(stats.reset > 0, "the killed node had live connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_member_survives_a_coordinator_move() {
    const PARTITIONS: u32 = 2;
    const RECORDS: usize = 400;
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path(), 2);
    let cluster = Cluster::start(&broker);
    let brokers = format!("{},{}", cluster.addr(0), cluster.addr(1));
    let client = Client::connect(client_config(&brokers, "member"))
        .await
        .expect("connect");
    client
        .create_topic("grp", PARTITIONS, &[])
        .await
        .expect("create");
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    let mut futures = Vec::new();
    for n in 0..RECORDS {
        let record =
            ProducerRecord::new("grp", format!("{n:04}")).partition((n as u32) % PARTITIONS);
        futures.push(producer.send(record).await.expect("send"));
    }
    for f in futures {
        f.await.expect("delivered");
    }
    producer.close().await.expect("close");

    let mut consumer = Consumer::new(
        client.clone(),
        ConsumerConfig {
            group_id: Some("movers".into()),
            session_timeout: Duration::from_secs(6),
            heartbeat_interval: Duration::from_millis(200),
            auto_commit: false,
            partition_max_bytes: 512,
            ..ConsumerConfig::default()
        },
    );
    consumer
        .subscribe(vec!["grp".into()], ())
        .expect("subscribe");
    let mut consumed = 0;
    while consumed < RECORDS / 2 {
        consumed += consumer
            .poll(Duration::from_millis(200))
            .await
            .expect("poll")
            .len();
    }
    consumer
        .commit_sync()
        .await
        .expect("commit on the first coordinator");
    let identity = consumer.group_identity().expect("in the group");
    assert!(identity.1 >= 1, "{identity:?}");

    let before = cluster.shared.stats().not_coordinator;
    let new = cluster.move_coordinator();
    assert_eq!(new, 1);
    // Heartbeats meet NOT_COORDINATOR and find node 1.
    tokio::time::sleep(Duration::from_millis(600)).await;
    while consumed < RECORDS {
        consumed += consumer
            .poll(Duration::from_millis(200))
            .await
            .expect("poll after the move")
            .len();
    }
    assert_eq!(consumed, RECORDS);
    consumer
        .commit_sync()
        .await
        .expect("commit lands on the new coordinator");
    assert_eq!(
        consumer.group_identity(),
        Some(identity.clone()),
        "same member id and generation: the group still knows the member"
    );
    assert!(
        cluster.shared.stats().not_coordinator > before,
        "the old coordinator refused the member"
    );

    // The commits are in the real broker.
    let direct = Client::connect(client_config(&broker.addr_string(), "direct"))
        .await
        .expect("connect");
    let parts: Vec<TopicPartition> = (0..PARTITIONS)
        .map(|p| TopicPartition::new("grp", p))
        .collect();
    let committed = direct
        .committed_offsets("movers", &parts)
        .await
        .expect("committed");
    for tp in &parts {
        assert_eq!(
            committed.get(tp).map(|c| c.offset),
            Some((RECORDS as u64) / u64::from(PARTITIONS)),
            "{tp}"
        );
    }
    // The admin finds the moved coordinator too (node 0 still refuses group requests).
    let described = client.describe_group("movers").await.expect("describe");
    assert_eq!(described.members.len(), 1);
    assert_eq!(described.members[0].member_id, identity.0);

    // The coordinator node dies: the member's coordinator connection is reset, and it finds
    // the coordinator on a live node (node 2) for its heartbeats and commits.
    cluster.kill(1);
    let stored = {
        let mut c = Conn::connect(broker.addr);
        (0..PARTITIONS)
            .map(|p| {
                c.produce("grp", p, -1, common::wire::batch(&[b"late"], 1))
                    .error
            })
            .collect::<Vec<_>>()
    };
    assert!(stored.iter().all(|e| *e == ErrorCode::NONE), "{stored:?}");
    let mut late = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while late < PARTITIONS as usize {
        assert!(Instant::now() < deadline, "read {late} late records");
        match consumer.poll(Duration::from_millis(200)).await {
            Ok(records) => late += records.len(),
            // The reset fetch connection: positions unchanged, poll again.
            Err(e) if e.is_retriable() => {}
            Err(e) => panic!("poll after the coordinator died: {e}"),
        }
    }
    consumer
        .commit_sync()
        .await
        .expect("commit lands on the coordinator found after the death");
    assert_eq!(
        consumer.group_identity(),
        Some(identity.clone()),
        "still the same member and generation"
    );
    let committed = direct
        .committed_offsets("movers", &parts)
        .await
        .expect("committed");
    for tp in &parts {
        assert_eq!(
            committed.get(tp).map(|c| c.offset),
            Some((RECORDS as u64) / u64::from(PARTITIONS) + 1),
            "{tp}"
        );
    }
    consumer.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_refresh_is_single_flight_and_backed_off() {
    const PARTITIONS: u32 = 8;
    const BACKOFF: Duration = Duration::from_millis(200);
    const STORM: Duration = Duration::from_millis(1500);
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path(), 2);
    let cluster = Cluster::start(&broker);
    let mut config = client_config(&cluster.addr(0), "storm");
    config.retry_backoff = BACKOFF;
    let client = Client::connect(config).await.expect("connect");
    client
        .create_topic("storm", PARTITIONS, &[])
        .await
        .expect("create");
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            linger: Duration::from_millis(1),
            retry_backoff: Duration::from_millis(10),
            delivery_timeout: Duration::from_secs(30),
            ..ProducerConfig::default()
        },
    );
    // Learn the topic before the storm.
    producer
        .send(ProducerRecord::new("storm", "first").partition(0))
        .await
        .expect("send")
        .await
        .expect("delivered");
    cluster.set_refusing(true);
    let storm_start = Instant::now();
    let mut futures = Vec::new();
    for n in 0..400u32 {
        let record = ProducerRecord::new("storm", format!("{n}")).partition(n % PARTITIONS);
        futures.push(producer.send(record).await.expect("send"));
    }
    tokio::time::sleep(STORM).await;
    cluster.set_refusing(false);
    let storm_end = Instant::now();
    for f in futures {
        f.await.expect("delivered once the storm is over");
    }
    producer.close().await.expect("close");

    let stats = cluster.shared.stats();
    let log = &stats.metadata["storm"];
    assert_eq!(log.max_in_flight, 1, "at most one refresh in flight");
    for pair in log.requests.windows(2) {
        let (_, answered) = pair[0];
        let (next, _) = pair[1];
        assert!(
            next >= answered + BACKOFF,
            "a refresh began {:?} after the previous one ended (backoff {BACKOFF:?})",
            next.saturating_duration_since(answered)
        );
    }
    let during = log
        .requests
        .iter()
        .filter(|(at, _)| *at >= storm_start && *at <= storm_end)
        .count();
    let bound = (STORM.as_millis() / BACKOFF.as_millis()) as usize + 1;
    eprintln!(
        "storm: {} NOT_LEADER answers, {during} metadata requests in {STORM:?} (bound {bound})",
        stats.not_leader
    );
    assert!(during >= 2, "the storm did make the client refresh");
    assert!(during <= bound, "{during} refreshes in {STORM:?}");
    assert!(
        stats.not_leader > 4 * during,
        "many refusals ({}) were covered by few refreshes ({during})",
        stats.not_leader
    );
    drop(stats);
    for p in 0..PARTITIONS {
        let stored = values_of(&broker, "storm", p).len();
        assert_eq!(
            stored,
            50 + usize::from(p == 0),
            "partition {p}: each record once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_is_refreshed_every_max_age_when_idle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path(), 1);
    let cluster = Cluster::start(&broker);
    let mut config = client_config(&cluster.addr(0), "idle");
    config.metadata_max_age = Duration::from_millis(300);
    let client = Client::connect(config).await.expect("connect");
    client.create_topic("idle", 3, &[]).await.expect("create");
    assert_eq!(client.partition_count("idle").await.expect("count"), 3);
    let first = cluster.shared.stats().metadata["idle"].requests.len();
    // A leader move with no error seen by the idle client: the periodic refresh learns it.
    let new_leader = cluster.move_leader("idle", 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = cluster.shared.stats().metadata["idle"].requests.len() - first;
    assert!(
        (3..=6).contains(&after),
        "{after} refreshes in 1.5 s with a max age of 300 ms"
    );
    let addr = client.partition_address("idle", 1).await.expect("address");
    let node = &cluster.shared.nodes[new_leader as usize];
    assert!(
        node.shards.iter().any(|(_, a)| a.to_string() == addr) || node.main.to_string() == addr,
        "partition 1 now routes to node {new_leader}: {addr}"
    );
    assert_eq!(cluster.leader("idle", 1), new_leader);
}
