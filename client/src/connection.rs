//! One TCP connection to a broker address: a writer task, a reader task, and the queue of
//! requests waiting for their responses.
//!
//! Responses on a connection come back in request order, so waiters sit in a FIFO queue and
//! each response is matched to the front entry (its correlation id is checked). The number
//! of requests without a response is capped by a semaphore ([`IN_FLIGHT_REQUESTS_MAX`]); a
//! permit is released when the response arrives, not when the caller stops waiting.
//!
//! A connection that fails (end of stream, I/O error, a bad or unexpected frame) is dead for
//! good: every waiter gets [`ClientError::ConnectionLost`] and the owner dials again.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sluice_proto::protocol::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, ErrorCode, FRAME_PREFIX_BYTES,
    RESPONSE_FRAME_BYTES_MAX, Reader, ResponseHeader, Wire, decode_body, encode_request,
    frame_length,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::config::millis_u64;
use crate::error::ClientError;
use crate::limits::{
    IN_FLIGHT_REQUESTS_MAX, WRITE_BUFFER_BYTES, WRITE_COALESCE_FRAMES_MAX, WRITE_QUEUE_DEPTH,
};

/// The one API version this client speaks for every API.
const API_VERSION: u16 = 0;
/// Read buffer of a connection.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// A response whose header said `NONE`: the body is still to decode.
struct Response {
    body: Reader,
}

type Reply = oneshot::Sender<Result<Option<Response>, ClientError>>;

/// A frame handed to the writer task.
struct Outgoing {
    frame: Vec<Bytes>,
    correlation_id: u32,
    /// `None` when no response comes (produce with `acks=0`): the reply is sent once the
    /// frame is written.
    expects_response: bool,
    reply: Reply,
    permit: OwnedSemaphorePermit,
}

/// A request written (or about to be) whose response is awaited.
struct Pending {
    correlation_id: u32,
    reply: Reply,
    _permit: OwnedSemaphorePermit,
}

#[derive(Default)]
struct State {
    pending: VecDeque<Pending>,
    /// Why the connection died; once set, nothing new is accepted.
    dead: Option<String>,
}

struct Shared {
    addr: String,
    state: Mutex<State>,
    /// Tells the reader to stop when the writer side is gone.
    shutdown: Notify,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock means a panic while holding it; the queue itself stays consistent
        // (every operation on it is a single push or pop), so keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the connection dead and fails every waiter.
    fn kill(&self, reason: &str) {
        let drained: Vec<Pending> = {
            let mut state = self.lock();
            if state.dead.is_none() {
                state.dead = Some(reason.to_owned());
            }
            state.pending.drain(..).collect()
        };
        if !drained.is_empty() {
            tracing::debug!(addr = %self.addr, reason, waiters = drained.len(), "connection lost");
        }
        for p in drained {
            let _ = p.reply.send(Err(self.lost(reason)));
        }
    }

    fn lost(&self, reason: &str) -> ClientError {
        ClientError::ConnectionLost {
            addr: self.addr.clone(),
            reason: reason.to_owned(),
        }
    }
}

/// A live connection. Shared by every request to its address.
pub(crate) struct Connection {
    shared: Arc<Shared>,
    outgoing: mpsc::Sender<Outgoing>,
    in_flight: Arc<Semaphore>,
    next_correlation_id: AtomicU32,
    client_id: String,
}

impl Connection {
    /// Dials `addr`, starts the reader and writer tasks, and does the ApiVersions handshake.
    pub(crate) async fn open(
        addr: &str,
        client_id: &str,
        connect_timeout: Duration,
    ) -> Result<Arc<Connection>, ClientError> {
        let unreachable = |e: std::io::Error| ClientError::BrokerUnreachable {
            addr: addr.to_owned(),
            source: Arc::new(e),
        };
        let stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(unreachable(e)),
            Err(_) => {
                return Err(unreachable(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("connect timed out after {} ms", millis_u64(connect_timeout)),
                )));
            }
        };
        stream.set_nodelay(true).map_err(unreachable)?;
        let (read, write) = stream.into_split();
        let shared = Arc::new(Shared {
            addr: addr.to_owned(),
            state: Mutex::new(State::default()),
            shutdown: Notify::new(),
        });
        let (tx, rx) = mpsc::channel(WRITE_QUEUE_DEPTH);
        tokio::spawn(write_loop(rx, write, shared.clone()));
        tokio::spawn(read_loop(read, shared.clone()));
        let conn = Arc::new(Connection {
            shared,
            outgoing: tx,
            in_flight: Arc::new(Semaphore::new(IN_FLIGHT_REQUESTS_MAX)),
            next_correlation_id: AtomicU32::new(1),
            client_id: client_id.to_owned(),
        });
        let handshake: ApiVersionsResponse = match tokio::time::timeout(
            connect_timeout,
            conn.call(ApiKey::ApiVersions, &ApiVersionsRequest {}, connect_timeout),
        )
        .await
        {
            Ok(result) => result?,
            Err(_) => {
                conn.shared.kill("handshake timed out");
                return Err(ClientError::Timeout {
                    what: format!("handshake with {addr}"),
                    after_ms: millis_u64(connect_timeout),
                });
            }
        };
        for api in [
            ApiKey::Metadata,
            ApiKey::CreateTopics,
            ApiKey::DeleteTopics,
            ApiKey::ListTopics,
            ApiKey::DescribeTopics,
            ApiKey::Produce,
            ApiKey::Fetch,
            ApiKey::ListOffsets,
        ] {
            let supported = handshake.apis.iter().any(|r| {
                r.api_key == api as u16 && (r.min_version..=r.max_version).contains(&API_VERSION)
            });
            if !supported {
                conn.shared.kill("unsupported broker");
                return Err(ClientError::Unsupported {
                    addr: addr.to_owned(),
                    api: api.spec().name,
                    version: API_VERSION,
                });
            }
        }
        tracing::debug!(
            addr,
            node = handshake.node_id,
            shard = handshake.shard,
            "connected"
        );
        Ok(conn)
    }

    /// Whether the connection has failed and should be replaced.
    pub(crate) fn is_dead(&self) -> bool {
        self.shared.lock().dead.is_some()
    }

    /// Sends a request and decodes its response. A request-level error in the response
    /// header becomes [`ClientError::Broker`].
    pub(crate) async fn call<Req: Wire, Resp: Wire>(
        &self,
        api: ApiKey,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, ClientError> {
        let pending = self.start(api, body, true, timeout).await?;
        match pending.wait::<Resp>(timeout).await? {
            Some(response) => Ok(response),
            None => Err(self.shared.lost("response missing")),
        }
    }

    /// Queues a request for writing (waiting for an in-flight permit if at the cap) and
    /// returns the handle to its response. Requests started one after another from one task
    /// are written in that order. With `expects_response == false` (produce with `acks=0`)
    /// the handle resolves once the frame is written.
    pub(crate) async fn start<Req: Wire>(
        &self,
        api: ApiKey,
        body: &Req,
        expects_response: bool,
        timeout: Duration,
    ) -> Result<PendingReply, ClientError> {
        let work = async {
            let permit = self
                .in_flight
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| self.shared.lost("connection closed"))?;
            let correlation_id = self.next_correlation_id.fetch_add(1, Ordering::Relaxed);
            let frame = encode_request(api, API_VERSION, correlation_id, &self.client_id, body);
            let (reply, rx) = oneshot::channel();
            let outgoing = Outgoing {
                frame,
                correlation_id,
                expects_response,
                reply,
                permit,
            };
            if self.outgoing.send(outgoing).await.is_err() {
                return Err(self.shared.lost("connection closed"));
            }
            Ok(PendingReply {
                rx,
                shared: self.shared.clone(),
                api,
            })
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout {
                what: format!(
                    "sending a {} request to {}",
                    api.spec().name,
                    self.shared.addr
                ),
                after_ms: millis_u64(timeout),
            }),
        }
    }
}

/// The response to a request that was queued with [`Connection::start`].
pub(crate) struct PendingReply {
    rx: oneshot::Receiver<Result<Option<Response>, ClientError>>,
    shared: Arc<Shared>,
    api: ApiKey,
}

impl PendingReply {
    /// Waits up to `timeout` for the response and decodes it; `None` for a request that
    /// gets no response.
    pub(crate) async fn wait<Resp: Wire>(
        self,
        timeout: Duration,
    ) -> Result<Option<Resp>, ClientError> {
        let result = match tokio::time::timeout(timeout, self.rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(self.shared.lost("connection closed")),
            Err(_) => {
                // Like Kafka: a broker that does not answer in time gets a fresh connection,
                // so the permits its silent requests hold are not lost for good.
                self.shared.kill("a request timed out");
                self.shared.shutdown.notify_one();
                return Err(ClientError::Timeout {
                    what: format!("{} request to {}", self.api.spec().name, self.shared.addr),
                    after_ms: millis_u64(timeout),
                });
            }
        };
        match result? {
            Some(response) => Ok(Some(decode_body::<Resp>(response.body)?)),
            None => Ok(None),
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // The writer ends when its queue closes (this sender is dropped); the reader needs
        // telling.
        self.shared.shutdown.notify_one();
    }
}

async fn write_loop(mut rx: mpsc::Receiver<Outgoing>, write: OwnedWriteHalf, shared: Arc<Shared>) {
    let mut w = BufWriter::with_capacity(WRITE_BUFFER_BYTES, write);
    let mut frames: Vec<Outgoing> = Vec::with_capacity(WRITE_COALESCE_FRAMES_MAX);
    let mut written: Vec<Reply> = Vec::with_capacity(WRITE_COALESCE_FRAMES_MAX);
    while let Some(first) = rx.recv().await {
        frames.push(first);
        while frames.len() < WRITE_COALESCE_FRAMES_MAX {
            match rx.try_recv() {
                Ok(next) => frames.push(next),
                Err(_) => break,
            }
        }
        // Register the waiters before writing, so a fast response finds its entry.
        let mut chunks: Vec<Bytes> = Vec::new();
        {
            let mut state = shared.lock();
            if let Some(reason) = state.dead.clone() {
                drop(state);
                for f in frames.drain(..) {
                    let _ = f.reply.send(Err(shared.lost(&reason)));
                }
                continue;
            }
            for f in frames.drain(..) {
                chunks.extend(f.frame);
                if f.expects_response {
                    state.pending.push_back(Pending {
                        correlation_id: f.correlation_id,
                        reply: f.reply,
                        _permit: f.permit,
                    });
                } else {
                    written.push(f.reply);
                }
            }
        }
        let mut result = Ok(());
        for chunk in &chunks {
            result = w.write_all(chunk).await;
            if result.is_err() {
                break;
            }
        }
        if result.is_ok() {
            result = w.flush().await;
        }
        if let Err(e) = result {
            let reason = format!("write failed: {e}");
            shared.kill(&reason);
            for reply in written.drain(..) {
                let _ = reply.send(Err(shared.lost(&reason)));
            }
            break;
        }
        for reply in written.drain(..) {
            let _ = reply.send(Ok(None));
        }
    }
    // Fail anything still queued, and stop the reader.
    shared.kill("connection closed");
    rx.close();
    while let Ok(f) = rx.try_recv() {
        let _ = f.reply.send(Err(shared.lost("connection closed")));
    }
    shared.shutdown.notify_one();
    let _ = w.shutdown().await;
}

async fn read_loop(read: OwnedReadHalf, shared: Arc<Shared>) {
    let mut r = BufReader::with_capacity(READ_BUFFER_BYTES, read);
    let reason = loop {
        let frame = tokio::select! {
            _ = shared.shutdown.notified() => break "connection closed".to_owned(),
            frame = read_frame(&mut r) => frame,
        };
        let payload = match frame {
            Ok(payload) => payload,
            Err(reason) => break reason,
        };
        let mut reader = Reader::new(payload);
        let header = match ResponseHeader::decode(&mut reader) {
            Ok(h) => h,
            Err(e) => break format!("bad response header: {e}"),
        };
        let Some(pending) = shared.lock().pending.pop_front() else {
            break format!(
                "response with correlation id {} to no request",
                header.correlation_id
            );
        };
        if pending.correlation_id != header.correlation_id {
            let reason = format!(
                "response correlation id {} does not match request {}",
                header.correlation_id, pending.correlation_id
            );
            let _ = pending.reply.send(Err(shared.lost(&reason)));
            break reason;
        }
        let result = if header.error == ErrorCode::NONE {
            Ok(Some(Response { body: reader }))
        } else {
            Err(ClientError::Broker {
                code: header.error,
                message: header.message,
            })
        };
        let _ = pending.reply.send(result);
    };
    if reason != "connection closed" {
        tracing::warn!(addr = %shared.addr, %reason, "broker connection failed");
    }
    shared.kill(&reason);
}

/// Reads one frame's payload, checking its length against [`RESPONSE_FRAME_BYTES_MAX`]
/// before allocating.
async fn read_frame(r: &mut BufReader<OwnedReadHalf>) -> Result<BytesMut, String> {
    let mut prefix = [0u8; FRAME_PREFIX_BYTES];
    match r.read_exact(&mut prefix).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err("the broker closed the connection".to_owned());
        }
        Err(e) => return Err(format!("read failed: {e}")),
    }
    let len = frame_length(prefix, RESPONSE_FRAME_BYTES_MAX).map_err(|e| e.to_string())?;
    // Read into spare capacity: zeroing a fetch response's megabytes first cost a few
    // percent of a consumer's CPU.
    let mut payload = BytesMut::with_capacity(len);
    let mut rest = (&mut *r).take(len as u64);
    while payload.len() < len {
        match rest.read_buf(&mut payload).await {
            Ok(0) => return Err("the broker closed the connection mid-frame".to_owned()),
            Ok(_) => {}
            Err(e) => return Err(format!("read failed mid-frame: {e}")),
        }
    }
    Ok(payload)
}
