//! The peer transport's limits and timeouts, and the quinn transport config built from them.

use std::sync::Arc;
use std::time::Duration;

use compio_quic::{IdleTimeout, TransportConfig, VarInt};

use super::frame::PEER_FRAME_BYTES_MAX;

/// The UDP payload size QUIC starts with and keeps. 1452 = a 1500-byte Ethernet MTU minus the
/// IPv6 (40) and UDP (8) headers, so it fits IPv4 and IPv6 paths without fragmentation. It stays
/// there because path MTU discovery does not run on Linux in compio-quic 0.8 (a socket option
/// is read the wrong way round), so [`transport_config`] turns discovery off instead of
/// relying on it; larger values (4000+) trip black-hole detection even on loopback.
pub const PEER_MTU_BYTES: u16 = 1452;

/// Receive buffer a peer endpoint asks its UDP socket for. Linux caps the request at
/// `net.core.rmem_max` and books twice the size (its own overhead included); `sluice doctor`
/// (and a cluster node's start-up checks) warn when the sysctl holds it lower. Its default buffer, 208 KiB, fills whenever the shard
/// reads its socket a little late under a replication flow: in a three-node RF 3 run ~1.4%
/// of the datagrams were dropped, and every drop halves QUIC's congestion window (the
/// leader's stayed at 50-180 KB, 3-15 ms round trips). With 4 MiB asked (8 MiB booked):
/// about half the drops, and 52 against 43 MB/s (medians of 6 interleaved pairs, faster in
/// 5). 32 MiB removed every drop but let the queue grow to 75-185 ms round trips, no faster.
pub const PEER_SOCKET_RECV_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// Bidirectional (request/response) streams a peer may have open at once on one connection;
/// more requests wait for a free one.
pub const PEER_BIDI_STREAMS_MAX: u32 = 64;

/// Unidirectional (one-way) streams a peer may have open at once on one connection.
pub const PEER_UNI_STREAMS_MAX: u32 = 16;

/// Receive window of one stream: a whole frame can be in flight without waiting for window
/// updates.
pub const PEER_STREAM_WINDOW_BYTES: u32 = 2 * PEER_FRAME_BYTES_MAX as u32;

/// Receive window of a connection (all its streams), and the send window.
pub const PEER_CONNECTION_WINDOW_BYTES: u32 = 4 * PEER_FRAME_BYTES_MAX as u32;

/// Connections an endpoint holds at once (both directions, handshakes included); more
/// incoming connections are refused. A node has one connection per peer shard, so this
/// allows 64 shards on each of 16 peers.
pub const PEER_CONNECTIONS_MAX: usize = 1024;

/// Handshakes an endpoint runs at once; more incoming connections are refused until one ends.
pub const PEER_PENDING_HANDSHAKES_MAX: usize = 64;

const _: () = assert!(PEER_CONNECTION_WINDOW_BYTES >= PEER_STREAM_WINDOW_BYTES);
const _: () = assert!(PEER_STREAM_WINDOW_BYTES as usize >= PEER_FRAME_BYTES_MAX);

/// Timeouts of the peer transport.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// A connection with no packet from the peer for this long is dead (QUIC idle timeout;
    /// the lower of both ends' values applies).
    pub idle_timeout: Duration,
    /// A connection sends a keep-alive after this much quiet, so an idle but live peer is not
    /// timed out. Must be well under `idle_timeout`.
    pub keep_alive_interval: Duration,
    /// Longest wait for a handshake, both when connecting and when accepting.
    pub connect_timeout: Duration,
    /// Longest wait for a request's response, from opening its stream (waiting for a free
    /// stream included) to the last byte of the response; also bounds a one-way send and the
    /// writing of a response.
    pub request_timeout: Duration,
    /// Longest wait for a request frame once its stream is open: a peer that opens a stream
    /// and dawdles loses it.
    pub frame_read_timeout: Duration,
}

/// Default QUIC idle timeout.
pub const PEER_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default keep-alive interval.
pub const PEER_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(2);
/// Default handshake timeout.
pub const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default request timeout.
pub const PEER_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default request-frame read timeout.
pub const PEER_FRAME_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait, once a [`PeerEndpoint`](super::PeerEndpoint) is shut down or dropped, for its
/// connections to drain (QUIC keeps a closed connection for three probe timeouts, up to about
/// 3 s for one still in its handshake) and its UDP socket to close. Past it the endpoint's
/// worker is stopped and the socket closes as soon as the last connection handle the
/// application still holds is dropped.
pub const PEER_ENDPOINT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

impl Default for PeerConfig {
    fn default() -> Self {
        Self {
            idle_timeout: PEER_IDLE_TIMEOUT,
            keep_alive_interval: PEER_KEEP_ALIVE_INTERVAL,
            connect_timeout: PEER_CONNECT_TIMEOUT,
            request_timeout: PEER_REQUEST_TIMEOUT,
            frame_read_timeout: PEER_FRAME_READ_TIMEOUT,
        }
    }
}

/// The quinn transport config for peer connections (both ends).
pub(crate) fn transport_config(config: &PeerConfig) -> Result<Arc<TransportConfig>, String> {
    let idle = IdleTimeout::try_from(config.idle_timeout)
        .map_err(|e| format!("idle timeout {:?}: {e}", config.idle_timeout))?;
    if config.keep_alive_interval >= config.idle_timeout {
        return Err(format!(
            "keep-alive interval {:?} must be under the idle timeout {:?}",
            config.keep_alive_interval, config.idle_timeout
        ));
    }
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(PEER_BIDI_STREAMS_MAX))
        .max_concurrent_uni_streams(VarInt::from_u32(PEER_UNI_STREAMS_MAX))
        .stream_receive_window(VarInt::from_u32(PEER_STREAM_WINDOW_BYTES))
        .receive_window(VarInt::from_u32(PEER_CONNECTION_WINDOW_BYTES))
        .send_window(u64::from(PEER_CONNECTION_WINDOW_BYTES))
        .max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(config.keep_alive_interval))
        .initial_mtu(PEER_MTU_BYTES)
        .mtu_discovery_config(None)
        // No datagrams: everything goes over streams.
        .datagram_receive_buffer_size(None);
    Ok(Arc::new(t))
}
