//! One client connection: a reader task and a writer task.
//!
//! The reader reads a frame's length prefix, checks it against `REQUEST_FRAME_BYTES_MAX`
//! before reading anything else, takes the frame's size from the shard's request budget
//! (waiting, and so not reading, while the budget is spent: TCP pushes back on the client),
//! reads the body, decodes the header and admits the request (in order: produce tickets and
//! forwarded messages are taken here). Each admitted request runs as a task; its handle goes
//! into a bounded queue (`CONNECTION_REQUESTS_IN_FLIGHT_MAX`), which the writer drains in
//! order, writing each response as one vectored write of its chunks (record bytes are not
//! copied). The budget comes back when the response is written.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use compio::BufResult;
use compio::buf::{IntoInner, IoBuf};
use compio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use compio::net::TcpStream;
use compio::runtime::JoinHandle;
use sluice_proto::protocol::{
    ApiKey, ErrorCode, FRAME_PREFIX_BYTES, REQUEST_FRAME_BYTES_MAX, Reader, RequestHeader,
    encode_error_response, frame_length,
};

use crate::budget::Permit;
use crate::handlers::{self, Admitted, RequestCtx};
use crate::limits::CONNECTION_REQUESTS_IN_FLIGHT_MAX;
use crate::metrics::{self, InFlightGuard, UNKNOWN_API};
use crate::shard::Shard;

/// iovecs per vectored write (the kernel refuses more than 1024).
const WRITE_IOVECS_MAX: usize = 512;
/// After a fatal error response, how long the connection keeps reading (and discarding) so
/// the client receives the response rather than a reset.
const LINGER_MS: u64 = 500;
/// Bytes discarded while lingering before giving up.
const LINGER_BYTES_MAX: usize = 1 << 20;

/// A response ready to write.
pub(crate) struct Outgoing {
    /// The frame, as chunks.
    pub(crate) chunks: Vec<Bytes>,
    /// Close the connection after writing it.
    pub(crate) close: bool,
    /// Budget held until the response is written.
    pub(crate) permits: Vec<Permit>,
}

/// A request in flight: its task yields the response, or `None` (acks=0).
pub(crate) type InFlight = JoinHandle<Option<Outgoing>>;

/// What the writer needs for the metrics of a request: its API, when it was read, and the
/// in-flight gauge's share (released when the response is written or dropped).
struct Started {
    api: ApiKey,
    at: Instant,
    _in_flight: InFlightGuard,
}

/// A request queued for the writer.
type Queued = (InFlight, Option<Started>);

/// Starts serving a connection on this shard.
pub(crate) fn start(shard: &Rc<Shard>, stream: TcpStream, peer: SocketAddr) {
    let id = shard.next_connection.get();
    shard.next_connection.set(id + 1);
    shard.connections.set(shard.connections.get() + 1);
    let _ = stream.set_nodelay(true);
    tracing::debug!(shard = shard.id, %peer, "connection opened");
    let (reader_half, writer_half) = stream.into_split();
    let (tx, rx) = flume::bounded::<Queued>(CONNECTION_REQUESTS_IN_FLIGHT_MAX);
    let reader = compio::runtime::spawn(read_loop(shard.clone(), reader_half, tx, peer));
    shard.readers.borrow_mut().insert(id, reader);
    let owner = shard.clone();
    compio::runtime::spawn(async move {
        write_loop(writer_half, rx).await;
        // Cancels the reader if it still runs (the client is gone).
        owner.readers.borrow_mut().remove(&id);
        owner.connections.set(owner.connections.get() - 1);
        tracing::debug!(shard = owner.id, %peer, "connection closed");
    })
    .detach();
}

/// A response that is ready now.
pub(crate) fn ready(chunks: Vec<Bytes>, close: bool, permits: Vec<Permit>) -> InFlight {
    compio::runtime::spawn(async move {
        Some(Outgoing {
            chunks,
            close,
            permits,
        })
    })
}

async fn read_loop(
    shard: Rc<Shard>,
    mut stream: TcpStream,
    tx: flume::Sender<Queued>,
    peer: SocketAddr,
) {
    loop {
        let BufResult(res, prefix) = stream.read_exact([0u8; FRAME_PREFIX_BYTES]).await;
        if res.is_err() {
            // End of stream or a reset: the client is done.
            return;
        }
        let len = match frame_length(prefix, REQUEST_FRAME_BYTES_MAX) {
            Ok(len) => len,
            Err(e) => {
                tracing::warn!(shard = shard.id, %peer, error = %e, "refusing frame; closing connection");
                metrics::error(UNKNOWN_API, ErrorCode::FRAME_TOO_LARGE);
                let response = encode_error_response(0, ErrorCode::FRAME_TOO_LARGE, &e.to_string());
                let _ = tx
                    .send_async((ready(response, true, Vec::new()), None))
                    .await;
                return;
            }
        };
        let (permit, waited) = shard.request_budget.acquire(FRAME_PREFIX_BYTES + len).await;
        metrics::throttled(waited);
        let read_at = Instant::now();
        let body = BytesMut::with_capacity(len);
        let BufResult(res, body) = stream.read_exact(body.slice(..len)).await;
        if let Err(e) = res {
            tracing::debug!(shard = shard.id, %peer, error = %e, "client left mid-frame");
            return;
        }
        let body = body.into_inner();
        let mut reader = Reader::new(body);
        let header = match RequestHeader::decode(&mut reader) {
            Ok(header) => header,
            Err(e) => {
                tracing::warn!(shard = shard.id, %peer, error = %e, "malformed request header; closing connection");
                metrics::error(UNKNOWN_API, ErrorCode::INVALID_REQUEST);
                let response = encode_error_response(0, ErrorCode::INVALID_REQUEST, &e.to_string());
                let _ = tx
                    .send_async((ready(response, true, vec![permit]), None))
                    .await;
                return;
            }
        };
        let cid = header.correlation_id;
        let api_key = ApiKey::from_u16(header.api_key);
        let started = api_key.map(|api| Started {
            api,
            at: read_at,
            _in_flight: InFlightGuard::new(),
        });
        let in_flight = match api_key {
            None => {
                tracing::debug!(shard = shard.id, %peer, api_key = header.api_key, "unsupported API");
                metrics::error(UNKNOWN_API, ErrorCode::UNSUPPORTED_API);
                let message = format!("API key {} is not supported", header.api_key);
                ready(
                    encode_error_response(cid, ErrorCode::UNSUPPORTED_API, &message),
                    false,
                    vec![permit],
                )
            }
            Some(api) if !api.supports(header.api_version) => {
                let spec = api.spec();
                let message = format!(
                    "{} version {} is not supported (supported: {}..={})",
                    spec.name, header.api_version, spec.min_version, spec.max_version
                );
                metrics::error(spec.name, ErrorCode::UNSUPPORTED_VERSION);
                ready(
                    encode_error_response(cid, ErrorCode::UNSUPPORTED_VERSION, &message),
                    false,
                    vec![permit],
                )
            }
            Some(api) => {
                let ctx = RequestCtx {
                    correlation_id: cid,
                    throttle: waited,
                    permit,
                    peer,
                };
                match handlers::admit(&shard, api, reader, ctx).await {
                    Admitted::InFlight(in_flight) => in_flight,
                    Admitted::Invalid(message, permit) => {
                        tracing::warn!(shard = shard.id, %peer, api = api.spec().name, %message, "malformed request; closing connection");
                        metrics::error(api.spec().name, ErrorCode::INVALID_REQUEST);
                        let response =
                            encode_error_response(cid, ErrorCode::INVALID_REQUEST, &message);
                        let _ = tx
                            .send_async((ready(response, true, vec![permit]), started))
                            .await;
                        return;
                    }
                }
            }
        };
        if tx.send_async((in_flight, started)).await.is_err() {
            return;
        }
    }
}

async fn write_loop(mut stream: TcpStream, rx: flume::Receiver<Queued>) {
    let mut linger = false;
    while let Ok((in_flight, started)) = rx.recv_async().await {
        let out = match in_flight.await {
            Ok(Some(out)) => out,
            Ok(None) => {
                if let Some(s) = started {
                    metrics::request_done(s.api, s.at.elapsed());
                }
                continue;
            }
            Err(e) => {
                tracing::error!(error = ?e, "request task failed; closing connection");
                break;
            }
        };
        if let Err(e) = write_chunks(&mut stream, out.chunks).await {
            // A client that went away is routine; anything else is worth a line.
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ) {
                tracing::debug!(error = %e, "client gone while writing a response");
            } else {
                tracing::warn!(error = %e, "writing a response failed; closing connection");
            }
            break;
        }
        if let Some(s) = started {
            metrics::request_done(s.api, s.at.elapsed());
        }
        drop(out.permits);
        if out.close {
            linger = true;
            break;
        }
    }
    drop(rx);
    if linger {
        linger_close(&mut stream).await;
    }
    let _ = stream.shutdown().await;
}

async fn write_chunks(stream: &mut TcpStream, chunks: Vec<Bytes>) -> std::io::Result<()> {
    if chunks.len() <= WRITE_IOVECS_MAX {
        let BufResult(res, _) = stream.write_vectored_all(chunks).await;
        return res;
    }
    for window in chunks.chunks(WRITE_IOVECS_MAX) {
        let BufResult(res, _) = stream.write_vectored_all(window.to_vec()).await;
        res?;
    }
    Ok(())
}

/// Half-closes, then discards what the client still sends for a moment, so the response
/// written last is not lost to a reset caused by unread data.
async fn linger_close(stream: &mut TcpStream) {
    let _ = stream.shutdown().await;
    let mut discarded = 0usize;
    let _ = compio::time::timeout(Duration::from_millis(LINGER_MS), async {
        let mut buf = Vec::with_capacity(64 * 1024);
        while discarded < LINGER_BYTES_MAX {
            let BufResult(res, b) = stream.read(buf).await;
            buf = b;
            match res {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    discarded += n;
                    buf.clear();
                }
            }
        }
    })
    .await;
}
