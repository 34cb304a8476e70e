//! The peer transport's errors, and the QUIC application codes it closes connections and
//! streams with.

use std::net::SocketAddr;
use std::time::Duration;

use compio_quic::{ConnectionError, VarInt};

use super::frame::FrameError;
use super::kind::FrameKind;
use crate::NodeId;
use crate::tls::TlsError;

/// QUIC application error codes a peer connection is closed with (the peer sees them as
/// `ApplicationClosed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum CloseCode {
    /// A normal close.
    Closed = 0,
    /// The client's certificate names a node that is not in the server's `allowed_nodes`.
    NodeNotAllowed = 0x5301,
    /// The client's certificate names no node (or several).
    NoNodeIdentity = 0x5302,
    /// The endpoint is shutting down.
    Shutdown = 0x5303,
}

impl CloseCode {
    /// The code on the wire.
    pub fn varint(self) -> VarInt {
        VarInt::from_u32(self as u32)
    }

    /// The code with this wire value, if it is one of ours.
    pub fn from_wire(code: u64) -> Option<Self> {
        [
            Self::Closed,
            Self::NodeNotAllowed,
            Self::NoNodeIdentity,
            Self::Shutdown,
        ]
        .into_iter()
        .find(|c| *c as u64 == code)
    }
}

/// QUIC application error codes a stream is reset or stopped with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum StreamCode {
    /// The frame on the stream broke the format; the stream is refused.
    MalformedFrame = 0x5310,
    /// The request was dropped without a response.
    NoResponse = 0x5311,
}

impl StreamCode {
    /// The code on the wire.
    pub fn varint(self) -> VarInt {
        VarInt::from_u32(self as u32)
    }
}

/// What went wrong in the peer transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The UDP socket could not be bound.
    #[error("cannot bind the peer endpoint on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TLS material could not be turned into configs.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The QUIC configuration was refused.
    #[error("bad peer transport config: {0}")]
    Config(String),
    /// A connection attempt could not start (bad address, endpoint stopping).
    #[error("cannot connect to node {node} at {addr}: {reason}")]
    Connect {
        /// The address.
        addr: SocketAddr,
        /// The node expected there.
        node: NodeId,
        /// quinn's reason.
        reason: String,
    },
    /// The handshake failed: a certificate was refused (by either end), the peer is not the
    /// expected node, or the peer did not answer.
    #[error("handshake with {addr} (expecting node {expected:?}) failed: {source}")]
    Handshake {
        /// The peer's address.
        addr: SocketAddr,
        /// The node id the client expected (None on the accepting side).
        expected: Option<NodeId>,
        /// The connection error.
        source: ConnectionError,
    },
    /// The handshake did not finish in time.
    #[error("handshake with {addr} did not finish within {timeout:?}")]
    HandshakeTimeout {
        /// The peer's address.
        addr: SocketAddr,
        /// The timeout.
        timeout: Duration,
    },
    /// An accepted client's certificate names a node that is not allowed to connect.
    #[error("node {node} at {addr} is not an allowed peer")]
    NodeNotAllowed {
        /// The node its certificate names.
        node: NodeId,
        /// Its address.
        addr: SocketAddr,
    },
    /// An accepted client's certificate does not name exactly one node.
    #[error("the peer at {addr} has no node identity: {source}")]
    NoNodeIdentity {
        /// Its address.
        addr: SocketAddr,
        /// Why.
        source: TlsError,
    },
    /// The server closed this connection on purpose with one of our [`CloseCode`]s (for
    /// example [`CloseCode::NodeNotAllowed`]).
    #[error("node {peer} refused the connection: {code:?}")]
    Refused {
        /// The server's node id.
        peer: NodeId,
        /// Its reason.
        code: CloseCode,
    },
    /// The connection is gone (closed, timed out, reset).
    #[error("connection to node {peer} lost: {source}")]
    ConnectionLost {
        /// The peer.
        peer: NodeId,
        /// Why.
        source: ConnectionError,
    },
    /// A frame broke the format (ours to send, or the peer's).
    #[error("bad frame from/to node {peer}: {source}")]
    Frame {
        /// The peer.
        peer: NodeId,
        /// What is wrong.
        source: FrameError,
    },
    /// The peer reset or stopped the stream with this application code.
    #[error("node {peer} reset the stream (code {code:#x})")]
    StreamReset {
        /// The peer.
        peer: NodeId,
        /// The code (see [`StreamCode`]).
        code: u64,
    },
    /// A stream failed in a way that is neither a reset nor a lost connection (already
    /// closed, 0-RTT rejected).
    #[error("stream to node {peer} failed: {reason}")]
    Stream {
        /// The peer.
        peer: NodeId,
        /// quinn's reason.
        reason: String,
    },
    /// The stream ended without a response frame.
    #[error("node {peer} ended the stream without a response")]
    NoResponse {
        /// The peer.
        peer: NodeId,
    },
    /// The peer answered with an error frame.
    #[error("node {peer} answered with error {code}: {message}")]
    Remote {
        /// The peer.
        peer: NodeId,
        /// Its code (see [`ErrorBody`](super::ErrorBody)).
        code: u16,
        /// Its message.
        message: String,
    },
    /// No response within the request timeout.
    #[error("no response from node {peer} to a {kind:?} request within {timeout:?}")]
    Timeout {
        /// The peer.
        peer: NodeId,
        /// The request's kind.
        kind: FrameKind,
        /// The timeout.
        timeout: Duration,
    },
    /// No stream to the peer could be opened in time: all [`super::PEER_BIDI_STREAMS_MAX`]
    /// (or [`super::PEER_UNI_STREAMS_MAX`]) were busy.
    #[error("no free stream to node {peer} within {timeout:?}")]
    StreamsBusy {
        /// The peer.
        peer: NodeId,
        /// The timeout.
        timeout: Duration,
    },
    /// An incoming request frame did not arrive whole within the frame-read timeout.
    #[error("node {peer} did not send its whole request within {timeout:?}")]
    FrameReadTimeout {
        /// The peer.
        peer: NodeId,
        /// The timeout.
        timeout: Duration,
    },
    /// The endpoint is closed: nothing more will be accepted.
    #[error("the peer endpoint is closed")]
    EndpointClosed,
    /// A shut down (or dropped) endpoint did not release its UDP socket within
    /// [`PEER_ENDPOINT_SHUTDOWN_TIMEOUT`](super::PEER_ENDPOINT_SHUTDOWN_TIMEOUT): the
    /// application still holds a [`PeerConnection`](super::PeerConnection) (or a
    /// `Responder`, `OnewaySender`) of it. The socket closes when the last one is dropped.
    #[error(
        "the peer endpoint on {addr} did not release its socket within {timeout:?}: \
         connections of it are still held"
    )]
    ShutdownTimeout {
        /// The endpoint's address.
        addr: SocketAddr,
        /// The timeout.
        timeout: Duration,
    },
    /// Closing the endpoint's UDP socket failed.
    #[error("closing the peer endpoint's socket on {addr} failed: {reason}")]
    Shutdown {
        /// The endpoint's address.
        addr: SocketAddr,
        /// The I/O error.
        reason: String,
    },
}

impl TransportError {
    /// Maps a connection error of the connection to `peer`, naming our own close codes.
    pub(crate) fn lost(peer: NodeId, source: ConnectionError) -> Self {
        if let ConnectionError::ApplicationClosed(close) = &source
            && let Some(code) = CloseCode::from_wire(close.error_code.into_inner())
            && code != CloseCode::Closed
        {
            return Self::Refused { peer, code };
        }
        Self::ConnectionLost { peer, source }
    }
}
