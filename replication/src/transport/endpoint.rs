//! A shard's QUIC endpoint for its peers: one UDP socket that accepts connections from
//! allowed nodes and makes connections to other nodes.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};

use compio_quic::{ClientConfig, Endpoint, EndpointConfig, Incoming, ServerConfig};
use futures_util::future::LocalBoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use quinn_proto::crypto::rustls::{QuicClientConfig, QuicServerConfig};

use super::config::{
    PEER_CONNECTIONS_MAX, PEER_ENDPOINT_SHUTDOWN_TIMEOUT, PEER_PENDING_HANDSHAKES_MAX,
    PEER_SOCKET_RECV_BUFFER_BYTES, PeerConfig, transport_config,
};
use super::connection::PeerConnection;
use super::error::{CloseCode, TransportError};
use crate::NodeId;
use crate::cert::node_dns_name;
use crate::tls::{PeerTls, node_id_of_certificate};

/// Counters of an endpoint's incoming connection attempts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PeerEndpointStats {
    /// Connections accepted and handed out by [`PeerEndpoint::accept`].
    pub accepted: u64,
    /// Handshakes that failed (no or bad client certificate, wrong ALPN, timeout).
    pub handshake_failures: u64,
    /// Verified clients refused because their node is not in `allowed_nodes` (or their
    /// certificate names no node).
    pub refused_nodes: u64,
    /// Attempts refused because [`PEER_PENDING_HANDSHAKES_MAX`] handshakes were running or
    /// [`PEER_CONNECTIONS_MAX`] connections were open.
    pub refused_busy: u64,
}

/// Asks for a receive buffer of [`PEER_SOCKET_RECV_BUFFER_BYTES`] and returns the size the
/// kernel reports (`net.core.rmem_max` caps it). Not fatal: the endpoint works with any
/// buffer, it only drops more datagrams under load.
fn size_recv_buffer(socket: &compio::net::UdpSocket, local: SocketAddr) -> usize {
    let sock = socket2::SockRef::from(socket);
    if let Err(e) = sock.set_recv_buffer_size(PEER_SOCKET_RECV_BUFFER_BYTES) {
        tracing::warn!(%local, error = %e, "cannot size the peer socket's receive buffer");
    }
    let granted = sock.recv_buffer_size().unwrap_or(0);
    // Linux reports twice the granted size; `sluice doctor` warns when net.core.rmem_max
    // holds it under what is asked.
    tracing::debug!(%local, granted_bytes = granted / 2, wanted_bytes = PEER_SOCKET_RECV_BUFFER_BYTES,
        "peer socket receive buffer");
    granted
}

/// A QUIC endpoint with mutual TLS on the current compio runtime.
///
/// Dropping it is [`shutdown`](Self::shutdown) without the wait: it closes every connection
/// (peers see [`CloseCode::Shutdown`]) and its UDP socket is released in the background within
/// [`PEER_ENDPOINT_SHUTDOWN_TIMEOUT`] (see [`release`](Self::release) to wait for that),
/// provided the application has dropped its connections of it by then.
pub struct PeerEndpoint {
    endpoint: Endpoint,
    node: NodeId,
    addr: SocketAddr,
    /// The socket's receive buffer as the kernel reports it.
    recv_buffer_bytes: usize,
    client_config: ClientConfig,
    config: PeerConfig,
    state: Rc<AcceptState>,
    release: Rc<ReleaseState>,
    /// Set by [`PeerEndpoint::close`]; shared with every connection.
    closed: Rc<Cell<bool>>,
}

/// Waits for a dropped (or shut down) [`PeerEndpoint`] to release its UDP socket. Get one
/// with [`PeerEndpoint::release`] before the endpoint goes; cheap to clone.
#[derive(Clone)]
pub struct EndpointRelease {
    state: Rc<ReleaseState>,
    addr: SocketAddr,
}

impl std::fmt::Debug for EndpointRelease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointRelease")
            .field("addr", &self.addr)
            .field("outcome", &self.state.outcome.get())
            .finish()
    }
}

/// How an endpoint's socket release ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReleaseOutcome {
    /// The connections drained and the socket is closed.
    Released,
    /// [`PEER_ENDPOINT_SHUTDOWN_TIMEOUT`] passed first.
    TimedOut,
    /// Closing the socket failed.
    Failed,
}

/// What an endpoint, its closer task and [`EndpointRelease`] waiters share.
#[derive(Default)]
struct ReleaseState {
    /// Set when the [`PeerEndpoint`] is dropped: the closer task starts.
    requested: Cell<bool>,
    /// The closer task, waiting for `requested`.
    closer: RefCell<Option<Waker>>,
    /// Set by the closer task when it is done.
    outcome: Cell<Option<ReleaseOutcome>>,
    /// The I/O error of [`ReleaseOutcome::Failed`].
    error: RefCell<String>,
    /// Tasks waiting in [`EndpointRelease::wait`], one waker per task.
    waiters: RefCell<Vec<Waker>>,
}

/// What the endpoint's incoming task and [`PeerEndpoint::accept`] share.
struct AcceptState {
    node: NodeId,
    /// [`PeerEndpoint::closed`].
    endpoint_closed: Rc<Cell<bool>>,
    config: PeerConfig,
    allowed: Rc<RefCell<BTreeSet<NodeId>>>,
    /// Handshakes in progress, at most [`PEER_PENDING_HANDSHAKES_MAX`].
    handshakes: RefCell<FuturesUnordered<LocalBoxFuture<'static, Handshake>>>,
    /// The task waiting in `accept`, woken when a handshake starts or the endpoint closes.
    waiter: RefCell<Option<Waker>>,
    closed: Cell<bool>,
    stats: Cell<PeerEndpointStats>,
}

impl std::fmt::Debug for PeerEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerEndpoint")
            .field("node", &self.node)
            .field("local_addr", &self.endpoint.local_addr().ok())
            .finish_non_exhaustive()
    }
}

type Handshake = Result<PeerConnection, TransportError>;

impl PeerEndpoint {
    /// Binds `addr` (UDP) with the default [`PeerConfig`]. Only nodes in `allowed_nodes` may
    /// connect.
    pub async fn bind(
        addr: SocketAddr,
        tls: &PeerTls,
        allowed_nodes: &[NodeId],
    ) -> Result<Self, TransportError> {
        Self::bind_with(addr, tls, allowed_nodes, PeerConfig::default()).await
    }

    /// Binds `addr` with `config`.
    pub async fn bind_with(
        addr: SocketAddr,
        tls: &PeerTls,
        allowed_nodes: &[NodeId],
        config: PeerConfig,
    ) -> Result<Self, TransportError> {
        let transport = transport_config(&config).map_err(TransportError::Config)?;
        // Built from our own rustls configs, not compio-quic's builders: those turn 0-RTT on,
        // and replayed replication requests are not safe.
        let server_crypto = QuicServerConfig::try_from(tls.server_config()?)
            .map_err(|e| TransportError::Config(e.to_string()))?;
        let mut server_config = ServerConfig::with_crypto(Arc::new(server_crypto));
        server_config
            .transport_config(Arc::clone(&transport))
            .max_incoming(PEER_PENDING_HANDSHAKES_MAX)
            .migration(false);
        let client_crypto = QuicClientConfig::try_from(tls.client_config()?)
            .map_err(|e| TransportError::Config(e.to_string()))?;
        let mut client_config = ClientConfig::new(Arc::new(client_crypto));
        client_config.transport_config(transport);
        let socket = compio::net::UdpSocket::bind(addr)
            .await
            .map_err(|source| TransportError::Bind { addr, source })?;
        let local = socket
            .local_addr()
            .map_err(|source| TransportError::Bind { addr, source })?;
        let recv_buffer_bytes = size_recv_buffer(&socket, local);
        let endpoint = Endpoint::new(
            socket,
            EndpointConfig::default(),
            Some(server_config),
            Some(client_config.clone()),
        )
        .map_err(|source| TransportError::Bind { addr, source })?;
        let closed = Rc::new(Cell::new(false));
        let state = Rc::new(AcceptState {
            node: tls.node_id(),
            endpoint_closed: Rc::clone(&closed),
            config: config.clone(),
            allowed: Rc::new(RefCell::new(allowed_nodes.iter().copied().collect())),
            handshakes: RefCell::new(FuturesUnordered::new()),
            waiter: RefCell::new(None),
            closed: Cell::new(false),
            stats: Cell::new(PeerEndpointStats::default()),
        });
        // Incoming attempts are taken by their own task, woken only when one arrives:
        // polling compio-quic's `wait_incoming` from `accept` each time a handshake makes
        // progress would queue a waker per poll, drained only one per new connection.
        let task_state = Rc::clone(&state);
        let task_endpoint = endpoint.clone();
        compio::runtime::spawn(async move {
            while let Some(incoming) = task_endpoint.wait_incoming().await {
                task_state.start_handshake(incoming, task_endpoint.open_connections());
            }
            task_state.closed.set(true);
            task_state.wake_waiter();
        })
        .detach();
        // The closer is spawned now because `Drop` must not spawn (a drop may run while the
        // runtime itself is dropping its tasks).
        let release = Rc::new(ReleaseState::default());
        compio::runtime::spawn(closer(
            Rc::clone(&release),
            endpoint.clone(),
            tls.node_id(),
            local,
        ))
        .detach();
        Ok(Self {
            endpoint,
            node: tls.node_id(),
            addr: local,
            recv_buffer_bytes,
            client_config,
            config,
            state,
            release,
            closed,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        self.endpoint
            .local_addr()
            .map_err(|e| TransportError::Config(format!("no local address: {e}")))
    }

    /// This node's id (from its certificate).
    pub fn node_id(&self) -> NodeId {
        self.node
    }

    /// Replaces the set of nodes that may connect (existing connections stay).
    pub fn set_allowed_nodes(&self, nodes: &[NodeId]) {
        *self.state.allowed.borrow_mut() = nodes.iter().copied().collect();
    }

    /// The UDP socket's receive buffer in bytes as the kernel reports it (on Linux twice
    /// what it granted of [`PEER_SOCKET_RECV_BUFFER_BYTES`]).
    pub fn recv_buffer_bytes(&self) -> usize {
        self.recv_buffer_bytes
    }

    /// The counters so far.
    pub fn stats(&self) -> PeerEndpointStats {
        self.state.stats.get()
    }

    /// The next connection from an allowed peer. Up to [`PEER_PENDING_HANDSHAKES_MAX`]
    /// handshakes run at once; failed handshakes and refused nodes are logged (warn), counted
    /// in [`stats`](Self::stats) and skipped. `Err` only when the endpoint is closed.
    ///
    /// Call it from one task at a time.
    pub async fn accept(&self) -> Result<PeerConnection, TransportError> {
        let state = &self.state;
        loop {
            let done = poll_fn(|cx| {
                let mut handshakes = state.handshakes.borrow_mut();
                if !handshakes.is_empty() {
                    if let Poll::Ready(Some(done)) = handshakes.poll_next_unpin(cx) {
                        return Poll::Ready(Some(done));
                    }
                } else if state.closed.get() {
                    return Poll::Ready(None);
                }
                *state.waiter.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            })
            .await;
            match done {
                None => return Err(TransportError::EndpointClosed),
                Some(Ok(conn)) => {
                    state.count(|s| s.accepted += 1);
                    tracing::debug!(node = self.node, peer = conn.peer_node(),
                        remote = %conn.remote_address(), "peer connected");
                    return Ok(conn);
                }
                Some(Err(e)) => {
                    match e {
                        TransportError::NodeNotAllowed { .. }
                        | TransportError::NoNodeIdentity { .. } => {
                            state.count(|s| s.refused_nodes += 1);
                        }
                        _ => state.count(|s| s.handshake_failures += 1),
                    }
                    if matches!(e, TransportError::NodeNotAllowed { node, .. } if node == self.node)
                    {
                        // Never one of our own connections (a node does not dial itself): a
                        // copy of this node's key, or a peer list naming this address twice.
                        tracing::warn!(node = self.node, error = %e,
                            "refused a peer connection presenting this node's own certificate");
                    } else {
                        tracing::warn!(node = self.node, error = %e, "refused a peer connection");
                    }
                }
            }
        }
    }

    /// Connects to node `node` at `addr`; the server's certificate must name
    /// `node-<node>.sluice.internal` and chain to the CA.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        node: NodeId,
    ) -> Result<PeerConnection, TransportError> {
        let connecting = self
            .endpoint
            .connect(addr, &node_dns_name(node), Some(self.client_config.clone()))
            .map_err(|e| TransportError::Connect {
                addr,
                node,
                reason: e.to_string(),
            })?;
        let timeout = self.config.connect_timeout;
        let conn = compio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| TransportError::HandshakeTimeout { addr, timeout })?
            .map_err(|source| TransportError::Handshake {
                addr,
                expected: Some(node),
                source,
            })?;
        Ok(PeerConnection::new(
            conn,
            node,
            self.config.clone(),
            Rc::clone(&self.closed),
        ))
    }

    /// Closes every connection (peers see [`CloseCode::Shutdown`]) and stops accepting;
    /// new connects fail. The socket stays bound until the endpoint is dropped or
    /// [`shutdown`](Self::shutdown).
    pub fn close(&self) {
        self.closed.set(true);
        self.endpoint
            .close(CloseCode::Shutdown.varint(), b"endpoint shutting down");
    }

    /// A handle to wait, after this endpoint is dropped, until its socket is released.
    pub fn release(&self) -> EndpointRelease {
        EndpointRelease {
            state: Rc::clone(&self.release),
            addr: self.addr,
        }
    }

    /// Closes (like [`close`](Self::close)), then waits until the connections have drained
    /// and the UDP socket is closed, so the address can be bound again; at most
    /// [`PEER_ENDPOINT_SHUTDOWN_TIMEOUT`]. The application must drop its connections of this
    /// endpoint (and their responders and one-way senders): connections hold the socket, and
    /// [`TransportError::ShutdownTimeout`] says one was still held (the socket then closes
    /// when it is dropped).
    pub async fn shutdown(self) -> Result<(), TransportError> {
        let release = self.release();
        drop(self);
        release.wait().await
    }
}

impl Drop for PeerEndpoint {
    fn drop(&mut self) {
        self.close();
        self.release.requested.set(true);
        let closer = self.release.closer.borrow_mut().take();
        if let Some(waker) = closer {
            waker.wake();
        }
    }
}

impl EndpointRelease {
    /// The endpoint's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether the release has ended (released, timed out or failed).
    pub fn is_done(&self) -> bool {
        self.state.outcome.get().is_some()
    }

    /// Waits until the endpoint, once dropped, has released its socket (`Ok`) or given up
    /// after [`PEER_ENDPOINT_SHUTDOWN_TIMEOUT`] ([`TransportError::ShutdownTimeout`]).
    /// Cancel-safe; several tasks may wait.
    pub async fn wait(&self) -> Result<(), TransportError> {
        let outcome = poll_fn(|cx| {
            if let Some(outcome) = self.state.outcome.get() {
                return Poll::Ready(outcome);
            }
            let mut waiters = self.state.waiters.borrow_mut();
            if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                waiters.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await;
        match outcome {
            ReleaseOutcome::Released => Ok(()),
            ReleaseOutcome::TimedOut => Err(TransportError::ShutdownTimeout {
                addr: self.addr,
                timeout: PEER_ENDPOINT_SHUTDOWN_TIMEOUT,
            }),
            ReleaseOutcome::Failed => Err(TransportError::Shutdown {
                addr: self.addr,
                reason: self.state.error.borrow().clone(),
            }),
        }
    }
}

/// Waits until the [`PeerEndpoint`] is dropped, then shuts compio-quic's endpoint down: its
/// worker ends once every connection drained, then the socket is closed once nothing holds
/// it. compio-quic alone would keep a dropped endpoint's socket while its worker waits for a
/// packet that never comes (it only checks for the end after an event).
async fn closer(release: Rc<ReleaseState>, endpoint: Endpoint, node: NodeId, addr: SocketAddr) {
    poll_fn(|cx| {
        if release.requested.get() {
            return Poll::Ready(());
        }
        *release.closer.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    })
    .await;
    let started = std::time::Instant::now();
    let shutdown = compio::time::timeout(PEER_ENDPOINT_SHUTDOWN_TIMEOUT, endpoint.shutdown());
    let outcome = match shutdown.await {
        Ok(Ok(())) => {
            tracing::debug!(node, %addr, elapsed = ?started.elapsed(),
                "peer endpoint released its socket");
            ReleaseOutcome::Released
        }
        Ok(Err(e)) => {
            tracing::warn!(node, %addr, error = %e, "closing the peer endpoint's socket failed");
            *release.error.borrow_mut() = e.to_string();
            ReleaseOutcome::Failed
        }
        Err(_) => {
            // Dropping compio-quic's shutdown future cancels its worker; what still holds the
            // socket is a connection handle of the application.
            tracing::warn!(node, %addr, timeout = ?PEER_ENDPOINT_SHUTDOWN_TIMEOUT,
                "the peer endpoint's socket is still held by a connection after shutdown; \
                 it closes when that connection is dropped");
            ReleaseOutcome::TimedOut
        }
    };
    release.outcome.set(Some(outcome));
    let waiters = std::mem::take(&mut *release.waiters.borrow_mut());
    waiters.into_iter().for_each(Waker::wake);
}

impl AcceptState {
    fn start_handshake(&self, incoming: Incoming, open_connections: usize) {
        let remote = incoming.remote_address();
        if self.handshakes.borrow().len() >= PEER_PENDING_HANDSHAKES_MAX
            || open_connections > PEER_CONNECTIONS_MAX
        {
            self.count(|s| s.refused_busy += 1);
            tracing::warn!(node = self.node, %remote,
                "refused a peer connection: {PEER_PENDING_HANDSHAKES_MAX} handshakes running \
                 or {PEER_CONNECTIONS_MAX} connections open");
            incoming.refuse();
            return;
        }
        let allowed = Rc::clone(&self.allowed);
        let config = self.config.clone();
        let endpoint_closed = Rc::clone(&self.endpoint_closed);
        let handshake = async move {
            let timeout = config.connect_timeout;
            let connecting = incoming
                .accept()
                .map_err(|source| TransportError::Handshake {
                    addr: remote,
                    expected: None,
                    source,
                })?;
            let conn = compio::time::timeout(timeout, connecting)
                .await
                .map_err(|_| TransportError::HandshakeTimeout {
                    addr: remote,
                    timeout,
                })?
                .map_err(|source| TransportError::Handshake {
                    addr: remote,
                    expected: None,
                    source,
                })?;
            // rustls verified the chain; the node id is the node name in its certificate.
            let identity = conn
                .peer_identity()
                .and_then(|chain| chain.first().map(|c| node_id_of_certificate(c)));
            let node = match identity {
                Some(Ok(node)) => node,
                Some(Err(source)) => {
                    conn.close(CloseCode::NoNodeIdentity.varint(), b"no node identity");
                    return Err(TransportError::NoNodeIdentity {
                        addr: remote,
                        source,
                    });
                }
                None => {
                    conn.close(CloseCode::NoNodeIdentity.varint(), b"no client certificate");
                    return Err(TransportError::NoNodeIdentity {
                        addr: remote,
                        source: crate::tls::TlsError::BadCertificate {
                            reason: "no client certificate".into(),
                        },
                    });
                }
            };
            if !allowed.borrow().contains(&node) {
                conn.close(CloseCode::NodeNotAllowed.varint(), b"node not allowed");
                return Err(TransportError::NodeNotAllowed { node, addr: remote });
            }
            Ok(PeerConnection::new(conn, node, config, endpoint_closed))
        };
        self.handshakes.borrow_mut().push(handshake.boxed_local());
        self.wake_waiter();
    }

    fn wake_waiter(&self) {
        let waiter = self.waiter.borrow_mut().take();
        if let Some(waker) = waiter {
            waker.wake();
        }
    }

    fn count(&self, f: impl FnOnce(&mut PeerEndpointStats)) {
        let mut stats = self.stats.get();
        f(&mut stats);
        self.stats.set(stats);
    }
}
