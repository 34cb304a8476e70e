//! The QUIC peer transport over real UDP sockets on 127.0.0.1, with certificates generated
//! into temporary directories: round trips, concurrency, one-way order, every kind of refused
//! peer, and garbage on streams. The server runs on its own thread and compio runtime; each
//! test's clients run on the test thread's runtime.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use compio_quic::{ClientConfig, Endpoint, EndpointConfig, VarInt};
use quinn_proto::crypto::rustls::QuicClientConfig;
use rand::{Rng, SeedableRng};
use sluice_replication::NodeId;
use sluice_replication::cert::{self, node_cert_file, node_key_file};
use sluice_replication::tls::{PEER_ALPN, PeerTls, ring_provider};
use sluice_replication::transport::{
    CloseCode, ErrorBody, Frame, FrameKind, PEER_ENDPOINT_SHUTDOWN_TIMEOUT, PEER_FRAME_BYTES_MAX,
    PEER_SOCKET_RECV_BUFFER_BYTES, PeerConfig, PeerConnection, PeerEndpoint, PeerEndpointStats,
    PeerIncoming, StreamCode, TransportError,
};

const SERVER_NODE: NodeId = 0;
/// The server's answer code to a `ControllerForward` request, to test error frames.
const TEST_ERROR_CODE: u16 = 77;

/// A peer server on its own thread: echoes `ReplicaFetchRequest` bodies as
/// `ReplicaFetchResponse`, answers `ControllerForward` with an error frame, never answers
/// `BrokerHeartbeatRequest` (holds it 3 s), drops `ReplicaFetchResponse` requests unanswered,
/// and reports one-way frames.
struct Server {
    addr: SocketAddr,
    oneway: mpsc::Receiver<(NodeId, Frame)>,
    shared: Arc<Mutex<Shared>>,
}

#[derive(Default)]
struct Shared {
    stats: PeerEndpointStats,
    malformed: u64,
}

impl Server {
    fn start(dir: &Path, allowed: &[NodeId]) -> Server {
        let tls = PeerTls::load(dir, SERVER_NODE).expect("server tls");
        let allowed = allowed.to_vec();
        let (addr_tx, addr_rx) = mpsc::channel();
        let (oneway_tx, oneway) = mpsc::channel();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let published = Arc::clone(&shared);
        std::thread::spawn(move || {
            let runtime = compio::runtime::Runtime::new().expect("runtime");
            runtime.block_on(async move {
                let endpoint = Rc::new(
                    PeerEndpoint::bind("127.0.0.1:0".parse().expect("addr"), &tls, &allowed)
                        .await
                        .expect("bind"),
                );
                addr_tx
                    .send(endpoint.local_addr().expect("addr"))
                    .expect("send addr");
                let conns: Rc<RefCell<Vec<PeerConnection>>> = Rc::default();
                {
                    let endpoint = Rc::clone(&endpoint);
                    let conns = Rc::clone(&conns);
                    compio::runtime::spawn(async move {
                        loop {
                            {
                                let mut s = published.lock().expect("lock");
                                s.stats = endpoint.stats();
                                s.malformed =
                                    conns.borrow().iter().map(|c| c.malformed_streams()).sum();
                            }
                            compio::time::sleep(Duration::from_millis(5)).await;
                        }
                    })
                    .detach();
                }
                while let Ok(conn) = endpoint.accept().await {
                    conns.borrow_mut().push(conn.clone());
                    compio::runtime::spawn(serve(conn, oneway_tx.clone())).detach();
                }
            });
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("server address");
        Server {
            addr,
            oneway,
            shared,
        }
    }

    /// Waits (up to 10 s) until `check` holds for the server's published state.
    fn wait_for(&self, what: &str, check: impl Fn(&Shared) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if check(&self.shared.lock().expect("lock")) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let s = self.shared.lock().expect("lock");
        panic!(
            "server never reached: {what} (stats {:?}, malformed {})",
            s.stats, s.malformed
        );
    }
}

async fn serve(conn: PeerConnection, oneway: mpsc::Sender<(NodeId, Frame)>) {
    let peer = conn.peer_node();
    while let Ok(incoming) = conn.accept_incoming().await {
        match incoming {
            PeerIncoming::Oneway(frame) => {
                let _ = oneway.send((peer, frame));
            }
            PeerIncoming::Request { frame, responder } => {
                assert_eq!(responder.peer_node(), peer);
                compio::runtime::spawn(async move {
                    match frame.kind {
                        FrameKind::ReplicaFetchRequest => {
                            let _ = responder
                                .respond(FrameKind::ReplicaFetchResponse, frame.body)
                                .await;
                        }
                        FrameKind::ControllerForward => {
                            let _ = responder
                                .respond_error(TEST_ERROR_CODE, "not the controller")
                                .await;
                        }
                        FrameKind::BrokerHeartbeatRequest => {
                            compio::time::sleep(Duration::from_secs(3)).await;
                            drop(responder);
                        }
                        _ => drop(responder),
                    }
                })
                .detach();
            }
        }
    }
}

fn runtime() -> compio::runtime::Runtime {
    compio::runtime::Runtime::new().expect("runtime")
}

fn any_addr() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

/// A cert dir with a CA and `nodes`.
fn certs(nodes: &[NodeId]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    cert::write_dev(dir.path(), nodes, false).expect("certs");
    dir
}

/// A client endpoint of `node` connected to the server (node 0).
async fn client(dir: &Path, node: NodeId, server: SocketAddr) -> (PeerEndpoint, PeerConnection) {
    let tls = PeerTls::load(dir, node).expect("client tls");
    let endpoint = PeerEndpoint::bind(any_addr(), &tls, &[])
        .await
        .expect("bind");
    let conn = endpoint
        .connect(server, SERVER_NODE)
        .await
        .expect("connect");
    assert_eq!(conn.peer_node(), SERVER_NODE);
    (endpoint, conn)
}

/// A good peer can still connect and get an echo.
async fn good_peer_works(dir: &Path, server: SocketAddr) {
    let (_endpoint, conn) = client(dir, 1, server).await;
    let body = Bytes::from_static(b"still serving");
    let response = conn
        .request(FrameKind::ReplicaFetchRequest, body.clone())
        .await
        .expect("echo");
    assert_eq!(response.kind, FrameKind::ReplicaFetchResponse);
    assert_eq!(response.body, body);
}

fn random_bytes(seed: u64, len: usize) -> Bytes {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    Bytes::from(v)
}

#[test]
fn requests_round_trip_small_and_near_the_frame_limit() {
    let dir = certs(&[0, 1]);
    let server = Server::start(dir.path(), &[1]);
    runtime().block_on(async {
        let (_endpoint, conn) = client(dir.path(), 1, server.addr).await;
        for (seed, len) in [
            (1, 0),
            (2, 1),
            (3, 1000),
            (4, 100_000),
            (5, PEER_FRAME_BYTES_MAX - 1),
        ] {
            let body = random_bytes(seed, len);
            let response = conn
                .request(FrameKind::ReplicaFetchRequest, body.clone())
                .await
                .expect("request");
            assert_eq!(response.kind, FrameKind::ReplicaFetchResponse);
            assert_eq!(response.body.len(), len);
            assert!(response.body == body, "{len}-byte body came back different");
        }
        // One byte over the limit is refused before anything is sent.
        match conn
            .request(
                FrameKind::ReplicaFetchRequest,
                Bytes::from(vec![0; PEER_FRAME_BYTES_MAX]),
            )
            .await
        {
            Err(TransportError::Frame { peer: 0, .. }) => {}
            other => panic!("expected a frame error, got {other:?}"),
        }
        // Error frames and unanswered requests are typed.
        match conn
            .request(FrameKind::ControllerForward, Bytes::from_static(b"cmd"))
            .await
        {
            Err(TransportError::Remote { code, message, .. }) => {
                assert_eq!(
                    (code, message.as_str()),
                    (TEST_ERROR_CODE, "not the controller")
                );
            }
            other => panic!("expected a remote error, got {other:?}"),
        }
        match conn
            .request(FrameKind::ReplicaFetchResponse, Bytes::new())
            .await
        {
            Err(TransportError::StreamReset { code, .. }) => {
                assert_eq!(code, u64::from(StreamCode::NoResponse as u32));
            }
            other => panic!("expected a reset stream, got {other:?}"),
        }
        good_peer_works(dir.path(), server.addr).await;
    });
}

#[test]
fn a_request_without_a_response_times_out() {
    let dir = certs(&[0, 1]);
    let server = Server::start(dir.path(), &[1]);
    runtime().block_on(async {
        let tls = PeerTls::load(dir.path(), 1).expect("tls");
        let config = PeerConfig {
            request_timeout: Duration::from_millis(300),
            ..PeerConfig::default()
        };
        let endpoint = PeerEndpoint::bind_with(any_addr(), &tls, &[], config)
            .await
            .expect("bind");
        let conn = endpoint.connect(server.addr, 0).await.expect("connect");
        let started = Instant::now();
        match conn
            .request(FrameKind::BrokerHeartbeatRequest, Bytes::new())
            .await
        {
            Err(TransportError::Timeout { kind, timeout, .. }) => {
                assert_eq!(kind, FrameKind::BrokerHeartbeatRequest);
                assert_eq!(timeout, Duration::from_millis(300));
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(2));
        // The connection is still good.
        let r = conn
            .request(FrameKind::ReplicaFetchRequest, Bytes::from_static(b"x"))
            .await
            .expect("echo");
        assert_eq!(&r.body[..], b"x");
    });
}

#[test]
fn many_concurrent_requests_share_one_connection() {
    let dir = certs(&[0, 1]);
    let server = Server::start(dir.path(), &[1]);
    runtime().block_on(async {
        let (_endpoint, conn) = client(dir.path(), 1, server.addr).await;
        // More requests than PEER_BIDI_STREAMS_MAX: the rest wait for free streams.
        let requests = (0..500u32).map(|i| {
            let conn = conn.clone();
            async move {
                let body = random_bytes(u64::from(i), 1 + (i as usize * 37) % 20_000);
                let response = conn
                    .request(FrameKind::ReplicaFetchRequest, body.clone())
                    .await
                    .expect("request");
                assert!(response.body == body, "request {i} got another body");
            }
        });
        futures_util::future::join_all(requests).await;
    });
}

#[test]
fn one_way_frames_arrive_in_order_per_stream() {
    let dir = certs(&[0, 1]);
    let server = Server::start(dir.path(), &[1]);
    let (a, b) = runtime().block_on(async {
        let (_endpoint, conn) = client(dir.path(), 1, server.addr).await;
        let mut a = conn.open_oneway().await.expect("stream a");
        let mut b = conn.open_oneway().await.expect("stream b");
        for i in 0..500u32 {
            a.send(FrameKind::RaftMessage, Bytes::from(format!("a{i}")))
                .await
                .expect("send a");
            b.send(FrameKind::RaftMessage, random_body_b(i))
                .await
                .expect("send b");
        }
        a.finish();
        b.finish();
        conn.send_oneway(
            FrameKind::BrokerHeartbeatRequest,
            Bytes::from_static(b"single"),
        )
        .await
        .expect("send_oneway");
        // Collect on this runtime (polling the channel), so the client's connection keeps
        // running while the frames are delivered.
        let mut a = Vec::new();
        let mut b = Vec::new();
        let mut single = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        while a.len() + b.len() + single < 1001 {
            assert!(
                Instant::now() < deadline,
                "only {} + {} + {single} frames arrived",
                a.len(),
                b.len()
            );
            let Ok((peer, frame)) = server.oneway.try_recv() else {
                compio::time::sleep(Duration::from_millis(2)).await;
                continue;
            };
            assert_eq!(peer, 1);
            match frame.body.first() {
                Some(b'a') => a.push(String::from_utf8(frame.body.to_vec()).expect("utf8")),
                Some(b'b') => b.push(frame.body),
                _ => {
                    assert_eq!(frame.kind, FrameKind::BrokerHeartbeatRequest);
                    assert_eq!(&frame.body[..], b"single");
                    single += 1;
                }
            }
        }
        (a, b)
    });
    assert_eq!(a, (0..500).map(|i| format!("a{i}")).collect::<Vec<_>>());
    assert_eq!(b, (0..500).map(random_body_b).collect::<Vec<_>>());
}

/// Stream b's frames: 'b', the index, then up to 3000 random bytes (several packets each).
fn random_body_b(i: u32) -> Bytes {
    let mut v = vec![b'b'];
    v.extend_from_slice(&i.to_be_bytes());
    v.extend_from_slice(&random_bytes(
        u64::from(i) + 10_000,
        (i as usize * 7) % 3000,
    ));
    Bytes::from(v)
}

/// A raw compio-quic client endpoint with `config` (for peers the transport would not build).
async fn raw_client(config: rustls::ClientConfig) -> (Endpoint, ClientConfig) {
    let socket = compio::net::UdpSocket::bind(any_addr()).await.expect("udp");
    let endpoint = Endpoint::new(socket, EndpointConfig::default(), None, None).expect("endpoint");
    let quic = QuicClientConfig::try_from(config).expect("quic config");
    (endpoint, ClientConfig::new(Arc::new(quic)))
}

fn read_certs(path: &Path) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    let pem = std::fs::read(path).expect("read pem");
    rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .expect("certs")
}

/// A rustls client config trusting `ca_dir`'s CA and presenting `client` (dir, node) or no
/// certificate.
fn client_config(ca_dir: &Path, client: Option<(&Path, NodeId)>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(read_certs(&ca_dir.join(cert::CA_CERT_FILE)).remove(0))
        .expect("root");
    let builder = rustls::ClientConfig::builder_with_provider(ring_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots);
    let mut config = match client {
        Some((dir, node)) => {
            let key_pem = std::fs::read(dir.join(node_key_file(node))).expect("key");
            let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
                .expect("pem")
                .expect("key");
            builder
                .with_client_auth_cert(read_certs(&dir.join(node_cert_file(node))), key)
                .expect("client auth")
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![PEER_ALPN.to_vec()];
    config
}

/// Connects a raw client and shows the server refuses it: the handshake may look complete to
/// the client, but the first stream fails.
async fn raw_client_is_refused(config: rustls::ClientConfig, server: SocketAddr) {
    let (endpoint, quic) = raw_client(config).await;
    let connecting = endpoint
        .connect(server, "node-0.sluice.internal", Some(quic))
        .expect("connect starts");
    let conn = match connecting.await {
        Ok(conn) => conn,
        // Refused already in the handshake: also a refusal.
        Err(_) => return,
    };
    let (mut send, mut recv) = match conn.open_bi_wait().await {
        Ok(s) => s,
        Err(_) => return,
    };
    let frame = Frame::new(FrameKind::ReplicaFetchRequest, Bytes::from_static(b"hi")).expect("f");
    let wrote = send.write_all_chunks(&mut [frame.to_bytes()]).await;
    let _ = send.finish();
    let read = recv.read_to_end(Vec::new()).await;
    assert!(
        wrote.is_err() || read.0.is_err(),
        "a refused client used a stream (read {:?})",
        read.0
    );
}

#[test]
fn clients_without_a_good_certificate_or_identity_are_refused() {
    let dir = certs(&[0, 1, 2, 5]);
    let other_ca = certs(&[1]);
    let server = Server::start(dir.path(), &[1, 2]);
    runtime().block_on(async {
        // A client certificate of another CA (the client trusts the right CA).
        raw_client_is_refused(
            client_config(dir.path(), Some((other_ca.path(), 1))),
            server.addr,
        )
        .await;
        server.wait_for("a handshake failure", |s| s.stats.handshake_failures == 1);
        good_peer_works(dir.path(), server.addr).await;

        // No client certificate: the client's handshake completes, its first stream fails.
        let (endpoint, quic) = raw_client(client_config(dir.path(), None)).await;
        let conn = endpoint
            .connect(server.addr, "node-0.sluice.internal", Some(quic))
            .expect("connect starts")
            .await
            .expect("without a certificate the client's handshake still completes");
        let (mut send, mut recv) = conn.open_bi_wait().await.expect("open");
        let frame =
            Frame::new(FrameKind::ReplicaFetchRequest, Bytes::from_static(b"x")).expect("f");
        let wrote = send.write_all_chunks(&mut [frame.to_bytes()]).await;
        let _ = send.finish();
        let read = recv.read_to_end(Vec::new()).await;
        assert!(
            wrote.is_err() || read.0.is_err(),
            "no-cert client got {:?}",
            read.0
        );
        server.wait_for("two handshake failures", |s| {
            s.stats.handshake_failures == 2
        });
        good_peer_works(dir.path(), server.addr).await;

        // A valid certificate of node 5, which is not allowed.
        let tls5 = PeerTls::load(dir.path(), 5).expect("tls 5");
        let endpoint5 = PeerEndpoint::bind(any_addr(), &tls5, &[])
            .await
            .expect("bind");
        let conn5 = endpoint5
            .connect(server.addr, SERVER_NODE)
            .await
            .expect("the handshake itself succeeds");
        match conn5
            .request(
                FrameKind::ReplicaFetchRequest,
                Bytes::from_static(b"let me in"),
            )
            .await
        {
            Err(TransportError::Refused { peer: 0, code }) => {
                assert_eq!(code, CloseCode::NodeNotAllowed)
            }
            other => panic!("expected Refused(NodeNotAllowed), got {other:?}"),
        }
        server.wait_for("a refused node", |s| s.stats.refused_nodes == 1);
        good_peer_works(dir.path(), server.addr).await;

        // Expecting node 1 at the server, which is node 0: our side refuses the server.
        let tls2 = PeerTls::load(dir.path(), 2).expect("tls 2");
        let endpoint2 = PeerEndpoint::bind(any_addr(), &tls2, &[])
            .await
            .expect("bind");
        match endpoint2.connect(server.addr, 1).await {
            Err(TransportError::Handshake {
                expected: Some(1), ..
            }) => {}
            other => panic!("expected a handshake error, got {other:?}"),
        }
        server.wait_for("the aborted handshake", |s| s.stats.handshake_failures == 3);
        good_peer_works(dir.path(), server.addr).await;
        // Node 2 is allowed and does get in when it expects the right node.
        let conn2 = endpoint2.connect(server.addr, 0).await.expect("node 2");
        let r = conn2
            .request(FrameKind::ReplicaFetchRequest, Bytes::from_static(b"2"))
            .await
            .expect("node 2 echo");
        assert_eq!(&r.body[..], b"2");
    });
    // The server publishes its counters every 5 ms: wait for the last accept to show.
    // Node 1 four times (good_peer_works) and node 2 once.
    server.wait_for("five accepted connections", |s| s.stats.accepted == 5);
    let stats = server.shared.lock().expect("lock").stats;
    // The third: node 2's client aborted the handshake when the server was not node 1.
    assert_eq!(stats.handshake_failures, 3);
    assert_eq!(stats.refused_nodes, 1);
    assert_eq!(stats.accepted, 5);
}

/// Sends `bytes` on a new bidirectional stream of a raw connection and returns what comes back
/// (or the read error).
async fn raw_exchange(conn: &compio_quic::Connection, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let (mut send, mut recv) = conn.open_bi_wait().await.map_err(|e| e.to_string())?;
    send.write_all_chunks(&mut [Bytes::copy_from_slice(bytes)])
        .await
        .map_err(|e| e.to_string())?;
    let _ = send.finish();
    let compio::BufResult(read, buf) = recv.read_to_end(Vec::new()).await;
    read.map_err(|e| e.to_string())?;
    Ok(buf)
}

/// Parses an error frame.
fn error_frame(bytes: &[u8]) -> ErrorBody {
    assert!(bytes.len() >= 7, "not an error frame: {bytes:?}");
    let len = u32::from_be_bytes(bytes[..4].try_into().expect("4")) as usize;
    assert_eq!(len + 4, bytes.len());
    assert_eq!(bytes[4], FrameKind::Error as u8);
    ErrorBody::decode(&bytes[5..])
}

#[test]
fn garbage_on_streams_is_refused_per_stream_and_the_endpoint_keeps_serving() {
    let dir = certs(&[0, 1]);
    let server = Server::start(dir.path(), &[1]);
    runtime().block_on(async {
        let (endpoint, quic) = raw_client(client_config(dir.path(), Some((dir.path(), 1)))).await;
        let conn = endpoint
            .connect(server.addr, "node-0.sluice.internal", Some(quic))
            .expect("connect starts")
            .await
            .expect("handshake");

        // Random bytes whose first byte makes the length far too large.
        let mut garbage = random_bytes(99, 4096).to_vec();
        garbage[0] = 0xde;
        let error = error_frame(&raw_exchange(&conn, &garbage).await.expect("answer"));
        assert_eq!(error.code, ErrorBody::MALFORMED_FRAME);
        assert!(
            error.message.contains("exceeds the maximum"),
            "{}",
            error.message
        );

        // Exactly one over the limit.
        let over = (PEER_FRAME_BYTES_MAX as u32 + 1).to_be_bytes();
        let error = error_frame(
            &raw_exchange(&conn, &[over[0], over[1], over[2], over[3], 4])
                .await
                .expect("answer"),
        );
        assert!(
            error.message.contains("exceeds the maximum"),
            "{}",
            error.message
        );

        // An unknown kind.
        let error = error_frame(
            &raw_exchange(&conn, &[0, 0, 0, 3, 200, 1, 2])
                .await
                .expect("answer"),
        );
        assert!(
            error.message.contains("unknown frame kind 200"),
            "{}",
            error.message
        );

        // A truncated frame: 10 bytes announced, 3 sent, then the stream ends.
        let error = error_frame(
            &raw_exchange(&conn, &[0, 0, 0, 10, 4, 1, 2])
                .await
                .expect("answer"),
        );
        assert!(
            error.message.contains("ended inside a frame"),
            "{}",
            error.message
        );

        // Garbage on a one-way stream: the server stops the stream.
        let mut uni = conn.open_uni_wait().await.expect("uni");
        uni.write_all_chunks(&mut [Bytes::from_static(&[0, 0, 0, 1, 0])])
            .await
            .expect("write");
        let stopped = compio::time::timeout(Duration::from_secs(10), uni.stopped())
            .await
            .expect("stopped in time")
            .expect("stopped");
        assert_eq!(
            stopped,
            Some(VarInt::from_u32(StreamCode::MalformedFrame as u32))
        );

        // The same connection still serves a good request.
        let good = Frame::new(FrameKind::ReplicaFetchRequest, Bytes::from_static(b"ok"))
            .expect("frame")
            .to_bytes();
        let answer = raw_exchange(&conn, &good).await.expect("echo");
        assert_eq!(
            &answer[..5],
            &[0, 0, 0, 3, FrameKind::ReplicaFetchResponse as u8]
        );
        assert_eq!(&answer[5..], b"ok");
        server.wait_for("five malformed streams", |s| s.malformed == 5);
        // And so does the endpoint, for another connection.
        good_peer_works(dir.path(), server.addr).await;
    });
}

/// A raw server that answers every request with garbage: the requester gets a typed frame
/// error, not a panic or a hang.
#[test]
fn a_malformed_response_is_a_typed_error_for_the_requester() {
    let dir = certs(&[0, 1]);
    let tls0 = PeerTls::load(dir.path(), 0).expect("tls 0");
    let (addr_tx, addr_rx) = mpsc::channel();
    std::thread::spawn(move || {
        runtime().block_on(async move {
            let crypto = quinn_proto::crypto::rustls::QuicServerConfig::try_from(
                tls0.server_config().expect("server config"),
            )
            .expect("quic server config");
            let config = compio_quic::ServerConfig::with_crypto(Arc::new(crypto));
            let socket = compio::net::UdpSocket::bind(any_addr()).await.expect("udp");
            let endpoint = Endpoint::new(socket, EndpointConfig::default(), Some(config), None)
                .expect("endpoint");
            addr_tx
                .send(endpoint.local_addr().expect("addr"))
                .expect("send");
            while let Some(incoming) = endpoint.wait_incoming().await {
                let Ok(conn) = incoming.await else { continue };
                while let Ok((mut send, _recv)) = conn.accept_bi().await {
                    let _ = send
                        .write_all_chunks(&mut [Bytes::from_static(&[0, 0, 0, 2, 250, 9])])
                        .await;
                    let _ = send.finish();
                }
            }
        });
    });
    let addr = addr_rx.recv_timeout(Duration::from_secs(10)).expect("addr");
    runtime().block_on(async {
        let (_endpoint, conn) = client(dir.path(), 1, addr).await;
        match conn
            .request(FrameKind::ReplicaFetchRequest, Bytes::from_static(b"q"))
            .await
        {
            Err(TransportError::Frame { peer: 0, source }) => {
                assert_eq!(
                    source,
                    sluice_replication::transport::FrameError::UnknownKind { kind: 250 }
                );
            }
            other => panic!("expected a frame error, got {other:?}"),
        }
    });
}

/// Both ends on one runtime: closing an endpoint tells its peers (`Refused(Shutdown)`) and ends
/// its accept loop; `set_allowed_nodes` admits a node that was refused before.
#[test]
fn closing_an_endpoint_tells_its_peers_and_ends_accept() {
    let dir = certs(&[0, 1, 2]);
    runtime().block_on(async {
        let tls0 = PeerTls::load(dir.path(), 0).expect("tls 0");
        let server = Rc::new(
            PeerEndpoint::bind(any_addr(), &tls0, &[1])
                .await
                .expect("bind"),
        );
        let addr = server.local_addr().expect("addr");
        let accepted: Rc<RefCell<Vec<Result<NodeId, String>>>> = Rc::default();
        let accept_loop = {
            let server = Rc::clone(&server);
            let accepted = Rc::clone(&accepted);
            compio::runtime::spawn(async move {
                loop {
                    match server.accept().await {
                        Ok(conn) => {
                            accepted.borrow_mut().push(Ok(conn.peer_node()));
                            compio::runtime::spawn(serve(conn, mpsc::channel().0)).detach();
                        }
                        Err(e) => {
                            accepted.borrow_mut().push(Err(e.to_string()));
                            return matches!(e, TransportError::EndpointClosed);
                        }
                    }
                }
            })
        };
        let tls2 = PeerTls::load(dir.path(), 2).expect("tls 2");
        let client2 = PeerEndpoint::bind(any_addr(), &tls2, &[])
            .await
            .expect("bind");
        let refused = client2.connect(addr, 0).await.expect("handshake");
        assert!(matches!(
            refused
                .request(FrameKind::ReplicaFetchRequest, Bytes::from_static(b"x"))
                .await,
            Err(TransportError::Refused {
                code: CloseCode::NodeNotAllowed,
                ..
            })
        ));
        server.set_allowed_nodes(&[1, 2]);
        let conn2 = client2.connect(addr, 0).await.expect("connect");
        let r = conn2
            .request(FrameKind::ReplicaFetchRequest, Bytes::from_static(b"in"))
            .await
            .expect("node 2 now allowed");
        assert_eq!(&r.body[..], b"in");
        assert_eq!(accepted.borrow().as_slice(), &[Ok(2)]);

        server.close();
        match conn2
            .request(FrameKind::ReplicaFetchRequest, Bytes::from_static(b"x"))
            .await
        {
            Err(TransportError::Refused {
                peer: 0,
                code: CloseCode::Shutdown,
            }) => {}
            other => panic!("expected Refused(Shutdown), got {other:?}"),
        }
        assert!(
            accept_loop.await.expect("accept task"),
            "accept ended with {:?}",
            accepted.borrow()
        );
        assert!(matches!(
            conn2.closed().await,
            TransportError::Refused { .. }
        ));
        // Its connections are gone (the serve tasks ended), so shutdown completes.
        let server = Rc::try_unwrap(server).expect("the accept task has ended");
        compio::time::timeout(Duration::from_secs(5), server.shutdown())
            .await
            .expect("shutdown within 5 s")
            .expect("shutdown");
    });
}

/// Dropping every handle of a connection closes it (its acceptor tasks and stream reads do
/// not keep it open): the peer learns at once, not after keep-alives stop.
#[test]
fn dropping_the_last_handle_closes_the_connection() {
    let dir = certs(&[0, 1]);
    runtime().block_on(async {
        let tls0 = PeerTls::load(dir.path(), 0).expect("tls 0");
        let server = PeerEndpoint::bind(any_addr(), &tls0, &[1])
            .await
            .expect("bind");
        let addr = server.local_addr().expect("addr");
        let tls1 = PeerTls::load(dir.path(), 1).expect("tls 1");
        let client = PeerEndpoint::bind(any_addr(), &tls1, &[])
            .await
            .expect("bind");
        let (accepted, conn) = futures_util::join!(server.accept(), client.connect(addr, 0));
        let (accepted, conn) = (accepted.expect("accept"), conn.expect("connect"));
        assert_eq!(accepted.peer_node(), 1);
        // The server opens a one-way stream towards the client, so the client has a read
        // pending on it when its handles go.
        accepted
            .send_oneway(FrameKind::RaftMessage, Bytes::from_static(b"hello"))
            .await
            .expect("send");
        match conn.accept_incoming().await.expect("one-way") {
            PeerIncoming::Oneway(frame) => assert_eq!(&frame.body[..], b"hello"),
            other => panic!("expected a one-way frame, got {other:?}"),
        }
        let clone = conn.clone();
        drop(conn);
        drop(clone);
        let closed = compio::time::timeout(Duration::from_secs(3), accepted.closed())
            .await
            .expect("the server saw the close within 3 s (keep-alives would hold it 10 s+)");
        match closed {
            TransportError::ConnectionLost {
                peer: 1,
                source: compio_quic::ConnectionError::ApplicationClosed(close),
            } => assert_eq!(close.error_code.into_inner(), 0),
            other => panic!("expected a normal close, got {other:?}"),
        }
        assert!(matches!(
            accepted.accept_incoming().await,
            Err(TransportError::ConnectionLost { .. })
        ));
    });
}

/// How long until `addr` can be bound (UDP) again; panics after `limit`.
async fn rebindable_within(addr: SocketAddr, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if std::net::UdpSocket::bind(addr).is_ok() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{addr} still bound after {limit:?}"
        );
        compio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `close` then `shutdown` frees the port while both peers stay alive and requests are in
/// flight both ways: the endpoint's own request to a server that holds it, and a peer's
/// request its handler holds until the connection closes. A new endpoint binds the same
/// port at once and the same peer connects to it.
#[test]
fn shutdown_frees_the_port_with_peers_alive_and_requests_in_flight() {
    let dir = certs(&[0, 1, 2]);
    let server = Server::start(dir.path(), &[1]);
    runtime().block_on(async {
        let tls1 = PeerTls::load(dir.path(), 1).expect("tls 1");
        let tls2 = PeerTls::load(dir.path(), 2).expect("tls 2");
        let endpoint = PeerEndpoint::bind(any_addr(), &tls1, &[2])
            .await
            .expect("bind");
        let addr = endpoint.local_addr().expect("addr");
        let peer = PeerEndpoint::bind(any_addr(), &tls2, &[])
            .await
            .expect("bind peer");

        // The peer's request, held by this endpoint's handler until its connection closes.
        let (accepted, from_peer) = futures_util::join!(endpoint.accept(), peer.connect(addr, 1));
        let (accepted, from_peer) = (accepted.expect("accept"), from_peer.expect("connect"));
        let peer_request = compio::runtime::spawn(async move {
            from_peer
                .request(FrameKind::ReplicaFetchRequest, Bytes::from_static(b"held"))
                .await
        });
        let handler = compio::runtime::spawn(async move {
            let responder = match accepted.accept_incoming().await.expect("request") {
                PeerIncoming::Request { responder, .. } => responder,
                other => panic!("expected a request, got {other:?}"),
            };
            // `closed` is cancel-safe: giving up on it early must not harm the connection.
            assert!(
                compio::time::timeout(Duration::from_millis(20), accepted.closed())
                    .await
                    .is_err()
            );
            let reason = accepted.closed().await;
            drop(responder);
            reason
        });
        // This endpoint's request to the server, which holds heartbeat requests for 3 s.
        let to_server = endpoint
            .connect(server.addr, SERVER_NODE)
            .await
            .expect("connect to the server");
        let own_request = compio::runtime::spawn(async move {
            to_server
                .request(FrameKind::BrokerHeartbeatRequest, Bytes::from_static(b"hb"))
                .await
        });
        compio::time::sleep(Duration::from_millis(200)).await;

        let start = Instant::now();
        endpoint.close();
        endpoint.shutdown().await.expect("shutdown");
        let took = start.elapsed();
        println!("shutdown with two connections mid-request took {took:?}");
        assert!(took < PEER_ENDPOINT_SHUTDOWN_TIMEOUT, "took {took:?}");
        let again = PeerEndpoint::bind(addr, &tls1, &[2])
            .await
            .expect("the port binds again right after shutdown");

        // The requests in flight failed at once, each with the reason its side saw.
        match own_request.await.expect("task") {
            Err(TransportError::ConnectionLost {
                source: compio_quic::ConnectionError::LocallyClosed,
                ..
            }) => {}
            other => panic!("expected a locally closed connection, got {other:?}"),
        }
        match handler.await.expect("task") {
            TransportError::ConnectionLost {
                peer: 2,
                source: compio_quic::ConnectionError::LocallyClosed,
            } => {}
            other => panic!("expected a locally closed connection, got {other:?}"),
        }
        match peer_request.await.expect("task") {
            Err(TransportError::Refused {
                peer: 1,
                code: CloseCode::Shutdown,
            }) => {}
            other => panic!("expected Refused(Shutdown), got {other:?}"),
        }

        // The live peer reaches the new endpoint on the same port.
        let (accepted, conn) = futures_util::join!(again.accept(), peer.connect(addr, 1));
        let (accepted, conn) = (accepted.expect("accept"), conn.expect("connect"));
        conn.send_oneway(FrameKind::RaftMessage, Bytes::from_static(b"again"))
            .await
            .expect("send");
        match accepted.accept_incoming().await.expect("one-way") {
            PeerIncoming::Oneway(frame) => assert_eq!(&frame.body[..], b"again"),
            other => panic!("expected a one-way frame, got {other:?}"),
        }
    });
}

/// Dropping an endpoint without `close` or `shutdown` frees its port too: one that never had
/// a connection (compio-quic alone keeps that socket until a packet arrives), and one with
/// connections both ways and a one-way read pending on each, whose handles the application
/// drops with it.
#[test]
fn dropping_an_endpoint_frees_its_port() {
    let dir = certs(&[0, 1, 2]);
    let server = Server::start(dir.path(), &[1]);
    runtime().block_on(async {
        let tls1 = PeerTls::load(dir.path(), 1).expect("tls 1");
        let tls2 = PeerTls::load(dir.path(), 2).expect("tls 2");

        let idle = PeerEndpoint::bind(any_addr(), &tls1, &[2])
            .await
            .expect("bind");
        let addr = idle.local_addr().expect("addr");
        let release = idle.release();
        drop(idle);
        let took = rebindable_within(addr, PEER_ENDPOINT_SHUTDOWN_TIMEOUT).await;
        println!("an unused endpoint's port was free {took:?} after the drop");
        compio::time::timeout(PEER_ENDPOINT_SHUTDOWN_TIMEOUT, release.wait())
            .await
            .expect("release within the timeout")
            .expect("released");

        let endpoint = PeerEndpoint::bind(any_addr(), &tls1, &[2])
            .await
            .expect("bind");
        let addr = endpoint.local_addr().expect("addr");
        let peer = PeerEndpoint::bind(any_addr(), &tls2, &[])
            .await
            .expect("bind peer");
        let (accepted, from_peer) = futures_util::join!(endpoint.accept(), peer.connect(addr, 1));
        let (accepted, from_peer) = (accepted.expect("accept"), from_peer.expect("connect"));
        let to_server = endpoint
            .connect(server.addr, SERVER_NODE)
            .await
            .expect("connect to the server");
        // A frame each way on one-way streams left open, so reads are pending on both.
        let mut to_peer = accepted.open_oneway().await.expect("stream");
        to_peer
            .send(FrameKind::RaftMessage, Bytes::from_static(b"a"))
            .await
            .expect("send");
        match from_peer.accept_incoming().await.expect("one-way") {
            PeerIncoming::Oneway(frame) => assert_eq!(&frame.body[..], b"a"),
            other => panic!("expected a one-way frame, got {other:?}"),
        }
        let mut to_endpoint = from_peer.open_oneway().await.expect("stream");
        to_endpoint
            .send(FrameKind::RaftMessage, Bytes::from_static(b"b"))
            .await
            .expect("send");
        match accepted.accept_incoming().await.expect("one-way") {
            PeerIncoming::Oneway(frame) => assert_eq!(&frame.body[..], b"b"),
            other => panic!("expected a one-way frame, got {other:?}"),
        }
        to_server
            .send_oneway(FrameKind::RaftMessage, Bytes::from_static(b"c"))
            .await
            .expect("send to the server");

        let release = endpoint.release();
        drop(endpoint);
        drop(to_peer);
        drop(accepted);
        drop(to_server);
        let took = rebindable_within(addr, PEER_ENDPOINT_SHUTDOWN_TIMEOUT).await;
        println!("a dropped endpoint with two connections freed its port after {took:?}");
        compio::time::timeout(PEER_ENDPOINT_SHUTDOWN_TIMEOUT, release.wait())
            .await
            .expect("release within the timeout")
            .expect("released");
        // The peer, alive, was told: the endpoint closed with Shutdown before its handles
        // went.
        match from_peer.closed().await {
            TransportError::Refused {
                peer: 1,
                code: CloseCode::Shutdown,
            } => {}
            other => panic!("expected Refused(Shutdown), got {other:?}"),
        }
        drop(to_endpoint);
    });
}

/// A connection handle the application keeps holds the socket: `shutdown` gives up after
/// `PEER_ENDPOINT_SHUTDOWN_TIMEOUT` with a typed error, and the port is free as soon as the
/// handle is dropped.
#[test]
fn shutdown_is_bounded_when_a_connection_is_still_held() {
    let dir = certs(&[0, 1]);
    let server = Server::start(dir.path(), &[1]);
    runtime().block_on(async {
        let (endpoint, conn) = client(dir.path(), 1, server.addr).await;
        let addr = endpoint.local_addr().expect("addr");
        let start = Instant::now();
        match endpoint.shutdown().await {
            Err(TransportError::ShutdownTimeout { addr: a, timeout }) => {
                assert_eq!(a, addr);
                assert_eq!(timeout, PEER_ENDPOINT_SHUTDOWN_TIMEOUT);
            }
            other => panic!("expected ShutdownTimeout, got {other:?}"),
        }
        let took = start.elapsed();
        assert!(
            took >= PEER_ENDPOINT_SHUTDOWN_TIMEOUT
                && took < PEER_ENDPOINT_SHUTDOWN_TIMEOUT + Duration::from_secs(2),
            "gave up after {took:?}"
        );
        assert!(
            std::net::UdpSocket::bind(addr).is_err(),
            "the held connection still holds the socket"
        );
        drop(conn);
        let freed = rebindable_within(addr, Duration::from_secs(2)).await;
        println!("the port was free {freed:?} after the last handle was dropped");
    });
}

/// A runtime dropped with an endpoint, its connection and a request in flight inside its
/// tasks (a shard that dies without closing anything) frees the port: no close is sent, but
/// nothing keeps the socket.
#[test]
fn dropping_the_runtime_frees_the_port() {
    let dir = certs(&[0, 1]);
    let server = Server::start(dir.path(), &[1]);
    let server_addr = server.addr;
    let certs_dir = dir.path().to_path_buf();
    let addr = std::thread::spawn(move || {
        let runtime = runtime();
        let addr = runtime.block_on(async move {
            let (endpoint, conn) = client(&certs_dir, 1, server_addr).await;
            let addr = endpoint.local_addr().expect("addr");
            compio::runtime::spawn(async move {
                let _endpoint = endpoint;
                // Held by the server for 3 s: in flight when the runtime goes.
                let _ = conn
                    .request(FrameKind::BrokerHeartbeatRequest, Bytes::from_static(b"hb"))
                    .await;
            })
            .detach();
            compio::time::sleep(Duration::from_millis(100)).await;
            addr
        });
        drop(runtime);
        addr
    })
    .join()
    .expect("runtime thread");
    // The kernel lets go of the socket when it tears the closed io_uring down (its pending
    // receive holds a reference), which it does in the background: soon, not at once.
    let start = Instant::now();
    while std::net::UdpSocket::bind(addr).is_err() {
        assert!(
            start.elapsed() < RING_TEARDOWN_MAX,
            "the dropped runtime's port {addr} is still bound after {RING_TEARDOWN_MAX:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    println!(
        "the dropped runtime's port was free {:?} after",
        start.elapsed()
    );
}

/// How long the kernel may take to release a dropped runtime's sockets.
const RING_TEARDOWN_MAX: Duration = Duration::from_secs(1);

/// The endpoint asks for a receive buffer of `PEER_SOCKET_RECV_BUFFER_BYTES`: Linux grants
/// up to `net.core.rmem_max` and reports twice what it granted.
#[test]
fn the_endpoint_asks_for_a_large_socket_receive_buffer() {
    let dir = certs(&[0]);
    let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
        .expect("read net.core.rmem_max")
        .trim()
        .parse()
        .expect("a number");
    runtime().block_on(async {
        let tls = PeerTls::load(dir.path(), 0).expect("tls");
        let endpoint = PeerEndpoint::bind(any_addr(), &tls, &[])
            .await
            .expect("bind");
        assert_eq!(
            endpoint.recv_buffer_bytes(),
            2 * PEER_SOCKET_RECV_BUFFER_BYTES.min(rmem_max),
            "net.core.rmem_max = {rmem_max}"
        );
    });
}
