//! Pieces of the fake brokers the client's tests run over real sockets.

use bytes::BytesMut;
use sluice_proto::protocol::{FRAME_PREFIX_BYTES, Reader, RequestHeader, Wire, encode_response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads one request frame and returns its header; `None` at end of stream.
pub(crate) async fn read_request(stream: &mut TcpStream) -> Option<RequestHeader> {
    let mut prefix = [0u8; FRAME_PREFIX_BYTES];
    stream.read_exact(&mut prefix).await.ok()?;
    let mut payload = BytesMut::zeroed(u32::from_le_bytes(prefix) as usize);
    stream.read_exact(&mut payload).await.ok()?;
    RequestHeader::decode(&mut Reader::new(payload)).ok()
}

/// Writes the response `body` to request `correlation_id`.
pub(crate) async fn answer<T: Wire>(stream: &mut TcpStream, correlation_id: u32, body: &T) {
    for chunk in encode_response(correlation_id, body) {
        stream.write_all(&chunk).await.expect("write");
    }
}
