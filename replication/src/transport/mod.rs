//! The peer transport: QUIC (quinn-proto through compio-quic) with mutual TLS between
//! brokers, one endpoint per shard on that shard's compio runtime.
//!
//! - [`PeerEndpoint`] binds a UDP socket, accepts connections from allowed nodes (the node id
//!   comes from the verified client certificate) and connects to nodes (checking the server
//!   certificate names the expected node).
//! - [`PeerConnection`] carries frames ([`Frame`]): a request and its response on a new
//!   bidirectional stream ([`PeerConnection::request`]), one-way frames on unidirectional
//!   streams ([`PeerConnection::send_oneway`], [`PeerConnection::open_oneway`]); the other
//!   side takes both from [`PeerConnection::accept_incoming`].
//! - [`PeerEndpoint::shutdown`] (or a drop) closes every connection and frees the UDP port
//!   within [`PEER_ENDPOINT_SHUTDOWN_TIMEOUT`], once the application has dropped its
//!   connection handles; [`EndpointRelease`] waits for that.
//!
//! Everything is `!Send` (`Rc`, compio-quic without its `sync` feature): an endpoint and its
//! connections live on the thread that created them.

mod config;
mod connection;
mod endpoint;
mod error;
mod frame;
pub mod kind;

pub use config::{
    PEER_BIDI_STREAMS_MAX, PEER_CONNECT_TIMEOUT, PEER_CONNECTION_WINDOW_BYTES,
    PEER_CONNECTIONS_MAX, PEER_ENDPOINT_SHUTDOWN_TIMEOUT, PEER_FRAME_READ_TIMEOUT,
    PEER_IDLE_TIMEOUT, PEER_KEEP_ALIVE_INTERVAL, PEER_MTU_BYTES, PEER_PENDING_HANDSHAKES_MAX,
    PEER_REQUEST_TIMEOUT, PEER_SOCKET_RECV_BUFFER_BYTES, PEER_STREAM_WINDOW_BYTES,
    PEER_UNI_STREAMS_MAX, PeerConfig,
};
pub use connection::{OnewaySender, PeerConnection, PeerIncoming, Responder};
pub use endpoint::{EndpointRelease, PeerEndpoint, PeerEndpointStats};
pub use error::{CloseCode, StreamCode, TransportError};
pub use frame::{
    ERROR_MESSAGE_BYTES_MAX, ErrorBody, FRAME_HEADER_BYTES, Frame, FrameError,
    PEER_FRAME_BYTES_MAX, decode_header,
};
pub use kind::FrameKind;
