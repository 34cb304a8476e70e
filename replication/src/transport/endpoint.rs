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
    PEER_CONNECTIONS_MAX, PEER_PENDING_HANDSHAKES_MAX, PeerConfig, transport_config,
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

/// A QUIC endpoint with mutual TLS on the current compio runtime. Dropping it closes it
/// (like [`close`](Self::close)).
pub struct PeerEndpoint {
    endpoint: Endpoint,
    node: NodeId,
    client_config: ClientConfig,
    config: PeerConfig,
    state: Rc<AcceptState>,
}

/// What the endpoint's incoming task and [`PeerEndpoint::accept`] share.
struct AcceptState {
    node: NodeId,
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
        let endpoint = Endpoint::new(
            socket,
            EndpointConfig::default(),
            Some(server_config),
            Some(client_config.clone()),
        )
        .map_err(|source| TransportError::Bind { addr, source })?;
        let state = Rc::new(AcceptState {
            node: tls.node_id(),
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
        Ok(Self {
            endpoint,
            node: tls.node_id(),
            client_config,
            config,
            state,
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
                    tracing::warn!(node = self.node, error = %e, "refused a peer connection");
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
        Ok(PeerConnection::new(conn, node, self.config.clone()))
    }

    /// Closes every connection (peers see [`CloseCode::Shutdown`]) and stops accepting.
    pub fn close(&self) {
        self.endpoint
            .close(CloseCode::Shutdown.varint(), b"endpoint shutting down");
    }

    /// Closes, then waits for the connections to be told and the socket to close. Waits
    /// until every [`PeerConnection`] of this endpoint (and its streams) has been dropped.
    pub async fn shutdown(self) -> Result<(), TransportError> {
        let endpoint = self.endpoint.clone();
        // Drop closes the endpoint; the incoming task then ends and drops its clone.
        drop(self);
        endpoint
            .shutdown()
            .await
            .map_err(|e| TransportError::Config(format!("shutdown: {e}")))
    }
}

impl Drop for PeerEndpoint {
    fn drop(&mut self) {
        self.close();
    }
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
            Ok(PeerConnection::new(conn, node, config))
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
