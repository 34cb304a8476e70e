//! Bad peer-protocol input against a running cluster (issue 6's fourth acceptance test).
//! Three `sluice serve --cluster` processes; the leader of a replicated partition is the
//! target, on both of its QUIC endpoints: the controller's (peer port) and shard 0's
//! replication endpoint (peer port + 1). Each of these is refused with an error:
//! - a client certificate from another CA (the client trusts the cluster's CA);
//! - a valid certificate of the cluster's CA for node 7, which is not a member;
//! - on the controller's port, the target's own certificate: a node never connects to its own
//!   controller, so only the other listed nodes may (the replication endpoint lets every
//!   registered broker in, itself included);
//! - garbage on a stream of an authenticated connection: a length over the frame limit, an
//!   unknown frame kind, a truncated frame (answered with an error frame by the transport);
//! - garbage bodies in well-formed frames of every request kind, and a response kind sent as
//!   a request (answered with an error frame by the broker), and a garbage raft message on a
//!   one-way stream.
//!
//! The authenticated garbage comes with the certificate of a running member other than the
//! target (the `insider`), while that member's own connections to the target stay up: the
//! target serves each connection on its own, so two connections presenting one node's
//! certificate do not disturb each other. (The target's own certificate would be refused at
//! the controller's port, see above: the leader is picked at random, and an earlier version
//! that always used node 1's certificate failed whenever node 1 led the partition.)
//!
//! Nothing changes: every node still runs, sees the same brokers and the same leader, leader
//! epoch, replicas and ISR, the partition's end offset is where it was; and the broker keeps
//! serving: more records are acknowledged and all are read back. The target's log names the
//! refused connections.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::cluster::{
    Cluster, ClusterOptions, check_reads, produce_acked, read_partition, test_client_config,
};
use compio_quic::{ClientConfig, Endpoint, EndpointConfig};
use quinn_proto::crypto::rustls::QuicClientConfig;
use rand::{Rng, SeedableRng};
use sluice_client::Client;
use sluice_replication::NodeId;
use sluice_replication::cert::{self, DevCa, node_cert_file, node_dns_name, node_key_file};
use sluice_replication::controller::driver::FORWARD_FORMAT_VERSION;
use sluice_replication::replica::REPLICA_WIRE_VERSION;
use sluice_replication::tls::{PEER_ALPN, PeerTls, ring_provider};
use sluice_replication::transport::{
    CloseCode, ErrorBody, Frame, FrameKind, PEER_FRAME_BYTES_MAX, PeerEndpoint, TransportError,
};

const TOPIC: &str = "peer-input";
const RECORDS_PER_PHASE: usize = 50;
/// A node id no cluster member has.
const STRANGER: NodeId = 7;
/// How long one bad exchange may take before the test calls it a hang.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(15);

fn values(phase: &str) -> Vec<String> {
    (0..RECORDS_PER_PHASE)
        .map(|i| format!("{phase}-{i:04}"))
        .collect()
}

fn any_addr() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

fn random_bytes(seed: u64, len: usize) -> Bytes {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    Bytes::from(v)
}

fn read_certs(path: &Path) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    let pem = std::fs::read(path).expect("read pem");
    rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .expect("certs")
}

/// A rustls client config trusting `ca_dir`'s CA and presenting node `node`'s certificate
/// from `cert_dir`.
fn client_config(ca_dir: &Path, cert_dir: &Path, node: NodeId) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(read_certs(&ca_dir.join(cert::CA_CERT_FILE)).remove(0))
        .expect("root");
    let key_pem = std::fs::read(cert_dir.join(node_key_file(node))).expect("key");
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .expect("pem")
        .expect("key");
    let mut config = rustls::ClientConfig::builder_with_provider(ring_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots)
        .with_client_auth_cert(read_certs(&cert_dir.join(node_cert_file(node))), key)
        .expect("client auth");
    config.alpn_protocols = vec![PEER_ALPN.to_vec()];
    config
}

/// A raw compio-quic connection with `config` to node `node` at `addr`: `Err` when the
/// handshake fails.
async fn raw_connect(
    config: rustls::ClientConfig,
    addr: SocketAddr,
    node: NodeId,
) -> Result<(Endpoint, compio_quic::Connection), String> {
    let socket = compio::net::UdpSocket::bind(any_addr()).await.expect("udp");
    let endpoint = Endpoint::new(socket, EndpointConfig::default(), None, None).expect("endpoint");
    let quic = QuicClientConfig::try_from(config).expect("quic config");
    let connecting = endpoint
        .connect(
            addr,
            &node_dns_name(node),
            Some(ClientConfig::new(Arc::new(quic))),
        )
        .expect("connect starts");
    match compio::time::timeout(EXCHANGE_TIMEOUT, connecting).await {
        Ok(Ok(conn)) => Ok((endpoint, conn)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("handshake timed out".into()),
    }
}

/// Sends `bytes` on a new bidirectional stream and returns what comes back (or the error,
/// with the connection's close reason when it was closed).
async fn raw_exchange(conn: &compio_quic::Connection, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi_wait().await.map_err(|e| e.to_string())?;
        send.write_all_chunks(&mut [Bytes::copy_from_slice(bytes)])
            .await
            .map_err(|e| e.to_string())?;
        let _ = send.finish();
        let compio::BufResult(read, buf) = recv.read_to_end(Vec::new()).await;
        read.map_err(|e| e.to_string())?;
        Ok(buf)
    };
    compio::time::timeout(EXCHANGE_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err("no answer in time".into()))
        .map_err(|e| match conn.close_reason() {
            Some(reason) => format!("{e} ({reason})"),
            None => e,
        })
}

/// Parses an error frame.
fn error_frame(what: &str, bytes: &[u8]) -> ErrorBody {
    assert!(bytes.len() >= 7, "{what}: not an error frame: {bytes:?}");
    let len = u32::from_be_bytes(bytes[..4].try_into().expect("4")) as usize;
    assert_eq!(len + 4, bytes.len(), "{what}: frame length");
    assert_eq!(bytes[4], FrameKind::Error as u8, "{what}: frame kind");
    ErrorBody::decode(&bytes[5..])
}

/// A client whose certificate comes from another CA is refused: its handshake fails, or its
/// first stream does.
async fn wrong_ca_is_refused(
    cluster_certs: &Path,
    other_ca: &Path,
    addr: SocketAddr,
    node: NodeId,
) {
    let (_endpoint, conn) =
        match raw_connect(client_config(cluster_certs, other_ca, 1), addr, node).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{addr}: another CA's certificate: handshake refused: {e}");
                return;
            }
        };
    let frame = Frame::new(FrameKind::ReplicaFetchRequest, Bytes::from_static(b"hi")).expect("f");
    let answer = raw_exchange(&conn, &frame.to_bytes()).await;
    assert!(
        answer.is_err(),
        "{addr}: a client with another CA's certificate got an answer: {answer:?}"
    );
    eprintln!(
        "{addr}: another CA's certificate: stream refused: {}",
        answer.expect_err("checked above")
    );
}

/// A valid certificate of the cluster's CA for node `identity`, which may not connect to
/// `addr` (node [`STRANGER`], or the target itself on its controller's port): the broker
/// closes the connection as not allowed.
async fn identity_is_refused(
    cluster_certs: &Path,
    addr: SocketAddr,
    node: NodeId,
    identity: NodeId,
) {
    let tls = PeerTls::load(cluster_certs, identity).expect("node tls");
    let endpoint = PeerEndpoint::bind(any_addr(), &tls, &[])
        .await
        .expect("bind");
    let result = match endpoint.connect(addr, node).await {
        Err(e) => Err(e),
        Ok(conn) => {
            conn.request(
                FrameKind::ReplicaFetchRequest,
                Bytes::from_static(b"let me in"),
            )
            .await
        }
    };
    match result {
        Err(TransportError::Refused {
            code: CloseCode::NodeNotAllowed,
            ..
        })
        | Err(TransportError::Handshake { .. }) => {
            eprintln!(
                "{addr}: node {identity}'s certificate: refused: {}",
                result.expect_err("matched an error")
            );
        }
        other => panic!("{addr}: node {identity}'s certificate was not refused: {other:?}"),
    }
}

/// Garbage frames on a raw connection authenticated as node `insider`: each answered with an
/// error frame, on one connection.
async fn bad_frames_are_refused(
    cluster_certs: &Path,
    addr: SocketAddr,
    node: NodeId,
    insider: NodeId,
) {
    let config = client_config(cluster_certs, cluster_certs, insider);
    let (_endpoint, conn) = raw_connect(config, addr, node)
        .await
        .unwrap_or_else(|e| panic!("{addr}: node {insider}'s certificate refused: {e}"));
    let mut garbage = random_bytes(99, 4096).to_vec();
    garbage[0] = 0xde;
    let over = (PEER_FRAME_BYTES_MAX as u32 + 1).to_be_bytes();
    let cases: [(&str, Vec<u8>); 4] = [
        ("random bytes", garbage),
        (
            "a length one over the limit",
            vec![over[0], over[1], over[2], over[3], 4],
        ),
        ("an unknown kind", vec![0, 0, 0, 3, 200, 1, 2]),
        ("a truncated frame", vec![0, 0, 0, 10, 4, 1, 2]),
    ];
    for (what, bytes) in cases {
        let answer = raw_exchange(&conn, &bytes)
            .await
            .unwrap_or_else(|e| panic!("{addr}: {what}: no error frame: {e}"));
        let error = error_frame(what, &answer);
        assert_eq!(error.code, ErrorBody::MALFORMED_FRAME, "{addr}: {what}");
        eprintln!("{addr}: {what}: {}", error.message);
    }
}

/// Well-formed frames with garbage bodies, from an authenticated peer (node `insider`'s
/// identity): every request is answered with an error; a garbage raft message is dropped.
async fn garbage_bodies_are_refused(
    cluster_certs: &Path,
    addr: SocketAddr,
    node: NodeId,
    insider: NodeId,
) {
    let tls = PeerTls::load(cluster_certs, insider).expect("member tls");
    let endpoint = PeerEndpoint::bind(any_addr(), &tls, &[])
        .await
        .expect("bind");
    let conn = endpoint
        .connect(addr, node)
        .await
        .unwrap_or_else(|e| panic!("{addr}: connect as node {insider}: {e}"));
    let kinds = [
        FrameKind::BrokerHeartbeatRequest,
        FrameKind::ReplicaFetchRequest,
        FrameKind::ControllerForward,
        FrameKind::ReplicaFetchResponse,
        FrameKind::ControllerForwardResponse,
    ];
    for (i, kind) in kinds.into_iter().enumerate() {
        let seed = 1000 * (i as u64 + 1);
        let mut bodies = vec![
            Bytes::new(),
            random_bytes(seed, 3),
            random_bytes(seed + 1, 700),
        ];
        // Past the format version byte: garbage the body decoders themselves must refuse.
        let version = match kind {
            FrameKind::ReplicaFetchRequest => Some(REPLICA_WIRE_VERSION),
            FrameKind::ControllerForward => Some(FORWARD_FORMAT_VERSION),
            _ => None,
        };
        if let Some(version) = version {
            for (k, len) in [1usize, 2, 9, 64, 4096].into_iter().enumerate() {
                let mut body = vec![version];
                body.extend_from_slice(&random_bytes(seed + 10 + k as u64, len));
                bodies.push(Bytes::from(body));
            }
        }
        for (j, body) in bodies.into_iter().enumerate() {
            match conn.request(kind, body).await {
                Err(TransportError::Remote { code, message, .. }) => {
                    eprintln!("{addr}: {kind:?} garbage body {j}: error {code}: {message}");
                }
                other => panic!(
                    "{addr}: {kind:?} with garbage body {j} was not refused with an error: \
                     {other:?}"
                ),
            }
        }
    }
    conn.send_oneway(FrameKind::RaftMessage, random_bytes(3000, 512))
        .await
        .expect("a one-way frame is handed to QUIC");
    // The connection still works after all that: one more refused request on it.
    assert!(matches!(
        conn.request(FrameKind::ReplicaFetchRequest, random_bytes(4000, 9))
            .await,
        Err(TransportError::Remote { .. })
    ));
}

/// What every node says about the cluster: (node, brokers, leader, epoch, replicas, isr).
type Snapshot = Vec<(usize, Vec<u32>, i32, u32, Vec<i32>, Vec<i32>)>;

fn snapshot(cluster: &Cluster) -> Snapshot {
    (0..cluster.nodes.len())
        .map(|i| {
            let md = cluster
                .metadata(i, Some(vec![TOPIC.to_owned()]), Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("node {i} does not answer metadata: {e}"));
            let mut brokers: Vec<u32> = md.brokers.iter().map(|b| b.node_id).collect();
            brokers.sort_unstable();
            let p = &md.topics[0].partitions[0];
            let (mut replicas, mut isr) = (p.replicas.clone(), p.isr.clone());
            replicas.sort_unstable();
            isr.sort_unstable();
            (i, brokers, p.leader, p.leader_epoch, replicas, isr)
        })
        .collect()
}

#[test]
fn bad_peer_input_is_refused_and_the_running_broker_keeps_serving() {
    let started = Instant::now();
    let mut cluster = Cluster::start(ClusterOptions::new(3));
    cluster.wait_for_brokers(Duration::from_secs(60));
    cluster.create_topic(TOPIC, 1, 3, &[]);
    let (target, _) = cluster.wait_for_leader(TOPIC, 0, Duration::from_secs(30));
    let brokers = cluster.brokers();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let client = runtime.block_on(async {
        Client::connect(test_client_config(&brokers, "cluster-peer-input"))
            .await
            .expect("connect")
    });
    let mut acked = runtime.block_on(produce_acked(&client, TOPIC, &values("before")));
    // Every replica in sync before the snapshot, so nothing is moving.
    common::cluster::wait_until("a full ISR", Duration::from_secs(30), || {
        let isr = cluster.partition_at(target as usize, TOPIC, 0)?.isr;
        (isr.len() == 3).then_some(())
    });
    let before = snapshot(&cluster);
    let end_before = runtime
        .block_on(client.list_offset(TOPIC, 0, sluice_client::LATEST_TIMESTAMP))
        .expect("end offset");

    // The stranger's certificate, from the cluster's own CA; a second CA with a node 1.
    let cert_dir = cluster.cert_dir.clone();
    let ca = DevCa::load(&cert_dir).expect("the cluster's CA");
    cert::write_nodes(&cert_dir, &ca, &[STRANGER], false).expect("node 7's certificate");
    let other_ca = tempfile::tempdir().expect("tempdir");
    cert::write_dev(other_ca.path(), &[1], false).expect("another CA");

    // A running member other than the target: its certificate authenticates the garbage.
    let insider = (target + 1) % cluster.nodes.len() as NodeId;
    let node = &cluster.nodes[target as usize];
    let endpoints = [
        SocketAddr::new(node.host, node.peer_port),
        SocketAddr::new(node.host, node.peer_port + 1),
    ];
    compio::runtime::Runtime::new()
        .expect("compio runtime")
        .block_on(async {
            for addr in endpoints {
                wrong_ca_is_refused(&cert_dir, other_ca.path(), addr, target).await;
                identity_is_refused(&cert_dir, addr, target, STRANGER).await;
                bad_frames_are_refused(&cert_dir, addr, target, insider).await;
                garbage_bodies_are_refused(&cert_dir, addr, target, insider).await;
            }
            identity_is_refused(&cert_dir, endpoints[0], target, target).await;
        });

    // Nothing changed, and every node still runs.
    std::thread::sleep(Duration::from_secs(2));
    for i in 0..cluster.nodes.len() {
        assert!(cluster.nodes[i].is_running(), "node {i} died");
    }
    assert_eq!(snapshot(&cluster), before, "the cluster's state changed");
    let end_after = runtime
        .block_on(client.list_offset(TOPIC, 0, sluice_client::LATEST_TIMESTAMP))
        .expect("end offset");
    assert_eq!(end_after, end_before, "the partition's end moved");

    // And it keeps serving.
    acked.extend(runtime.block_on(produce_acked(&client, TOPIC, &values("after"))));
    let read = runtime
        .block_on(read_partition(&client, TOPIC, 0, Duration::from_secs(30)))
        .unwrap_or_else(|e| panic!("reading back: {e}"));
    assert_eq!(read.0, 2 * RECORDS_PER_PHASE as u64);
    let reads = BTreeMap::from([(0, read)]);
    let sent = |v: &[u8]| v.starts_with(b"before-") || v.starts_with(b"after-");
    if let Err(e) = check_reads(&reads, &acked, sent) {
        cluster.dump_logs();
        panic!("{e}");
    }
    let log = cluster.log(target as usize);
    // Another CA and the stranger on both endpoints, the target's own certificate once.
    let expected = 2 * endpoints.len() + 1;
    let refusals = log.matches("refused a peer connection").count();
    assert!(
        refusals >= expected,
        "node {target}'s log names {refusals} refused peer connections, expected at least \
         {expected}"
    );
    assert!(
        log.contains("presenting this node's own certificate"),
        "node {target}'s log does not name the connection with its own certificate"
    );
    eprintln!("took {:?}", started.elapsed());
}
