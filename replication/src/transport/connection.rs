//! A connection to one verified peer node: requests out, requests and one-way frames in.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Poll, Waker};

use bytes::Bytes;
use compio_quic::{Connection, ReadError, RecvStream, SendStream};
use futures_util::future::LocalBoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};

use super::config::PeerConfig;
use super::error::{StreamCode, TransportError};
use super::frame::{ErrorBody, Frame, FrameError, ReadFrameError, read_frame, write_frame};
use super::kind::FrameKind;
use crate::NodeId;

/// A QUIC connection to a peer node whose identity was verified in the handshake. Cheap to
/// clone (one `Rc`): several tasks may send requests at once, while one task takes what the
/// peer sends with [`accept_incoming`](Self::accept_incoming).
#[derive(Clone)]
pub struct PeerConnection {
    inner: Rc<Inner>,
    /// Closes the connection when the last handle (connection, responder or one-way sender)
    /// is dropped; the tasks and stream reads hold only `inner`, so they never keep a
    /// connection nobody uses open.
    _handle: Rc<Handle>,
}

struct Handle(Rc<Inner>);

impl Drop for Handle {
    fn drop(&mut self) {
        self.0.close();
    }
}

struct Inner {
    conn: Connection,
    /// Set when the endpoint is closed: compio-quic closes its connections from their own
    /// tasks, later, so a handle closing one meanwhile says why ([`CloseCode::Shutdown`]).
    ///
    /// [`CloseCode::Shutdown`]: super::CloseCode::Shutdown
    endpoint_closed: Rc<Cell<bool>>,
    peer: NodeId,
    remote: SocketAddr,
    config: PeerConfig,
    /// Incoming streams whose next frame is being read, filled by the two acceptor tasks.
    /// Bounded by the peer's concurrent stream limits ([`super::PEER_BIDI_STREAMS_MAX`] +
    /// [`super::PEER_UNI_STREAMS_MAX`]).
    reads: RefCell<FuturesUnordered<LocalBoxFuture<'static, StreamRead>>>,
    /// The task waiting in `accept_incoming`, woken when the acceptors add a stream.
    waiter: RefCell<Option<Waker>>,
    /// Set by an acceptor when the connection is gone.
    lost: RefCell<Option<compio_quic::ConnectionError>>,
    /// Tasks waiting in [`PeerConnection::closed`] (one waker per task), woken when `lost`
    /// is set.
    closed_waiters: RefCell<Vec<Waker>>,
    /// Incoming streams refused for a malformed frame, over the connection's life.
    malformed_streams: Cell<u64>,
}

impl std::fmt::Debug for PeerConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerConnection")
            .field("peer", &self.inner.peer)
            .field("remote", &self.inner.remote)
            .finish_non_exhaustive()
    }
}

/// Something the peer sent, from [`PeerConnection::accept_incoming`].
#[derive(Debug)]
pub enum PeerIncoming {
    /// A request: answer it through the responder (dropping it resets the stream, so the
    /// requester fails at once instead of timing out).
    Request {
        /// The request frame.
        frame: Frame,
        /// Where the response goes.
        responder: Responder,
    },
    /// A one-way frame. Frames of one unidirectional stream arrive in the order they were
    /// sent.
    Oneway(Frame),
}

/// What a stream read needs to know of its connection. Reads sit in the connection's
/// `reads`, so they must not hold the connection itself (`Rc<Inner>`): that would be a
/// reference cycle keeping the connection, and with it the endpoint's UDP socket, alive after
/// every handle is gone.
#[derive(Clone, Copy)]
struct StreamCtx {
    peer: NodeId,
    remote: SocketAddr,
    frame_read_timeout: std::time::Duration,
    request_timeout: std::time::Duration,
}

/// What reading the next frame of an incoming stream gave.
enum StreamRead {
    Request(Frame, SendStream),
    Oneway(Frame, RecvStream),
    /// A unidirectional stream ended cleanly.
    Finished,
    /// The stream broke the format or failed; it has been refused and logged.
    Failed {
        malformed: bool,
    },
}

impl PeerConnection {
    pub(crate) fn new(
        conn: Connection,
        peer: NodeId,
        config: PeerConfig,
        endpoint_closed: Rc<Cell<bool>>,
    ) -> Self {
        let remote = conn.remote_address();
        let inner = Rc::new(Inner {
            conn,
            endpoint_closed,
            peer,
            remote,
            config,
            reads: RefCell::new(FuturesUnordered::new()),
            waiter: RefCell::new(None),
            lost: RefCell::new(None),
            closed_waiters: RefCell::new(Vec::new()),
            malformed_streams: Cell::new(0),
        });
        // One task per direction, each woken only when a stream of its direction opens:
        // polling quinn's accept futures from `accept_incoming` instead would leave a waker
        // in compio-quic's queue on every poll (one per frame received), drained only when a
        // stream opens.
        let bi = Rc::clone(&inner);
        compio::runtime::spawn(async move {
            loop {
                match bi.conn.accept_bi().await {
                    Ok((send, recv)) => {
                        let read = read_request(bi.ctx(), send, recv).boxed_local();
                        bi.push_read(read);
                    }
                    Err(e) => return bi.set_lost(e),
                }
            }
        })
        .detach();
        let uni = Rc::clone(&inner);
        compio::runtime::spawn(async move {
            loop {
                match uni.conn.accept_uni().await {
                    Ok(recv) => {
                        let read = read_oneway(uni.ctx(), recv).boxed_local();
                        uni.push_read(read);
                    }
                    Err(e) => return uni.set_lost(e),
                }
            }
        })
        .detach();
        Self {
            _handle: Rc::new(Handle(Rc::clone(&inner))),
            inner,
        }
    }

    /// The peer's node id (from its verified certificate).
    pub fn peer_node(&self) -> NodeId {
        self.inner.peer
    }

    /// The peer's UDP address.
    pub fn remote_address(&self) -> SocketAddr {
        self.inner.remote
    }

    /// Incoming streams refused so far because their frame broke the format.
    pub fn malformed_streams(&self) -> u64 {
        self.inner.malformed_streams.get()
    }

    /// Sends `body` as a `kind` frame on a new bidirectional stream and waits for the one
    /// response frame, within the request timeout (waiting for a free stream included). An
    /// [`FrameKind::Error`] response is returned as [`TransportError::Remote`].
    pub async fn request(&self, kind: FrameKind, body: Bytes) -> Result<Frame, TransportError> {
        let peer = self.inner.peer;
        Frame::new(kind, body.clone()).map_err(|source| TransportError::Frame { peer, source })?;
        let timeout = self.inner.config.request_timeout;
        let exchange = async {
            let (mut send, mut recv) = self
                .inner
                .conn
                .open_bi_wait()
                .await
                .map_err(|e| TransportError::lost(peer, e))?;
            write_frame(&mut send, kind, &body)
                .await
                .map_err(|e| self.inner.write_error(e))?;
            // Already finished or reset only if the peer stopped the stream; the read says.
            let _ = send.finish();
            let frame = match read_frame(&mut recv).await {
                Ok(Some(frame)) => frame,
                Ok(None) => return Err(TransportError::NoResponse { peer }),
                Err(ReadFrameError::Frame(source)) => {
                    let _ = recv.stop(StreamCode::MalformedFrame.varint());
                    tracing::warn!(peer, remote = %self.inner.remote, request = ?kind, error = %source,
                        "malformed response frame from peer");
                    return Err(TransportError::Frame { peer, source });
                }
                Err(ReadFrameError::Stream(e)) => return Err(self.inner.read_error(e)),
            };
            if frame.kind == FrameKind::Error {
                let error = ErrorBody::decode(&frame.body);
                return Err(TransportError::Remote {
                    peer,
                    code: error.code,
                    message: error.message,
                });
            }
            Ok(frame)
        };
        compio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| TransportError::Timeout {
                peer,
                kind,
                timeout,
            })?
    }

    /// Sends one `kind` frame on a new unidirectional stream. Returns once the frame is handed
    /// to QUIC (not when the peer has read it). Use [`open_oneway`](Self::open_oneway) when
    /// several frames must arrive in order.
    pub async fn send_oneway(&self, kind: FrameKind, body: Bytes) -> Result<(), TransportError> {
        let mut sender = self.open_oneway().await?;
        sender.send(kind, body).await?;
        sender.finish();
        Ok(())
    }

    /// Opens a unidirectional stream whose frames the peer receives in order.
    pub async fn open_oneway(&self) -> Result<OnewaySender, TransportError> {
        let peer = self.inner.peer;
        let timeout = self.inner.config.request_timeout;
        let send = compio::time::timeout(timeout, self.inner.conn.open_uni_wait())
            .await
            .map_err(|_| TransportError::StreamsBusy { peer, timeout })?
            .map_err(|e| TransportError::lost(peer, e))?;
        Ok(OnewaySender {
            send,
            conn: self.clone(),
        })
    }

    /// The next request or one-way frame from the peer. Malformed incoming streams are
    /// refused here (an error frame back on a request stream, a stop on a one-way stream),
    /// logged with the peer's id and counted in
    /// [`malformed_streams`](Self::malformed_streams); they do not end the connection.
    /// `Err` means the connection is gone: every later call fails too.
    ///
    /// Call it from one task at a time. Cancel-safe: dropping the future loses nothing (a
    /// stream accepted meanwhile is read by the next call).
    pub async fn accept_incoming(&self) -> Result<PeerIncoming, TransportError> {
        let peer = self.inner.peer;
        loop {
            let read = poll_fn(|cx| {
                let mut reads = self.inner.reads.borrow_mut();
                if !reads.is_empty() {
                    if let Poll::Ready(Some(read)) = reads.poll_next_unpin(cx) {
                        return Poll::Ready(Ok(read));
                    }
                } else if let Some(e) = self.inner.lost.borrow().clone() {
                    return Poll::Ready(Err(e));
                }
                *self.inner.waiter.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            })
            .await
            .map_err(|e| TransportError::lost(peer, e))?;
            match read {
                StreamRead::Request(frame, send) => {
                    return Ok(PeerIncoming::Request {
                        responder: Responder {
                            send: Some(send),
                            conn: self.clone(),
                            request: frame.kind,
                        },
                        frame,
                    });
                }
                StreamRead::Oneway(frame, recv) => {
                    let next = read_oneway(self.inner.ctx(), recv).boxed_local();
                    self.inner.reads.borrow_mut().push(next);
                    return Ok(PeerIncoming::Oneway(frame));
                }
                StreamRead::Finished => {}
                StreamRead::Failed { malformed } => {
                    if malformed {
                        let n = self.inner.malformed_streams.get();
                        self.inner.malformed_streams.set(n + 1);
                    }
                }
            }
        }
    }

    /// Closes the connection (the peer sees a normal close, or
    /// [`CloseCode::Shutdown`](super::CloseCode::Shutdown) once the endpoint is closed).
    pub fn close(&self) {
        self.inner.close();
    }

    /// Waits until the connection is closed, by either side or a timeout, and says why.
    /// Cancel-safe.
    pub async fn closed(&self) -> TransportError {
        // Not compio-quic's `Connection::closed`: that future owns the connection's worker
        // task handle, and dropping it before the close (a timeout, a select) cancels the
        // worker, so the connection never drains and its endpoint never shuts down.
        let lost = poll_fn(|cx| {
            if let Some(e) = self.inner.lost.borrow().clone() {
                return Poll::Ready(e);
            }
            let mut waiters = self.inner.closed_waiters.borrow_mut();
            if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                waiters.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await;
        TransportError::lost(self.inner.peer, lost)
    }
}

impl Inner {
    fn close(&self) {
        if self.endpoint_closed.get() {
            self.conn.close(
                super::CloseCode::Shutdown.varint(),
                b"endpoint shutting down",
            );
        } else {
            self.conn
                .close(super::CloseCode::Closed.varint(), b"closed");
        }
    }

    fn push_read(&self, read: LocalBoxFuture<'static, StreamRead>) {
        self.reads.borrow_mut().push(read);
        self.wake_waiter();
    }

    fn set_lost(&self, e: compio_quic::ConnectionError) {
        self.lost.borrow_mut().get_or_insert(e);
        self.wake_waiter();
        let waiters = std::mem::take(&mut *self.closed_waiters.borrow_mut());
        waiters.into_iter().for_each(Waker::wake);
    }

    fn ctx(&self) -> StreamCtx {
        StreamCtx {
            peer: self.peer,
            remote: self.remote,
            frame_read_timeout: self.config.frame_read_timeout,
            request_timeout: self.config.request_timeout,
        }
    }

    fn wake_waiter(&self) {
        let waiter = self.waiter.borrow_mut().take();
        if let Some(waker) = waiter {
            waker.wake();
        }
    }

    fn write_error(&self, e: compio_quic::WriteError) -> TransportError {
        let peer = self.peer;
        match e {
            compio_quic::WriteError::Stopped(code) => TransportError::StreamReset {
                peer,
                code: code.into_inner(),
            },
            compio_quic::WriteError::ConnectionLost(e) => TransportError::lost(peer, e),
            other => TransportError::Stream {
                peer,
                reason: other.to_string(),
            },
        }
    }

    fn read_error(&self, e: ReadError) -> TransportError {
        self.ctx().read_error(e)
    }
}

impl StreamCtx {
    fn read_error(&self, e: ReadError) -> TransportError {
        let peer = self.peer;
        match e {
            ReadError::Reset(code) => TransportError::StreamReset {
                peer,
                code: code.into_inner(),
            },
            ReadError::ConnectionLost(e) => TransportError::lost(peer, e),
            other => TransportError::Stream {
                peer,
                reason: other.to_string(),
            },
        }
    }

    /// Logs a refused incoming stream: what came from which peer.
    fn log_bad_stream(&self, stream: &str, error: &TransportError) {
        tracing::warn!(peer = self.peer, remote = %self.remote, stream, error = %error,
            "refused a peer stream");
    }
}

/// Reads the request frame of an incoming bidirectional stream (within the frame-read
/// timeout); a malformed one is answered with an error frame and the stream stopped.
async fn read_request(conn: StreamCtx, mut send: SendStream, mut recv: RecvStream) -> StreamRead {
    let peer = conn.peer;
    let timeout = conn.frame_read_timeout;
    let read = compio::time::timeout(timeout, read_frame(&mut recv)).await;
    let source = match read {
        Ok(Ok(Some(frame))) => return StreamRead::Request(frame, send),
        Ok(Ok(None)) => FrameError::Truncated {
            need: super::FRAME_HEADER_BYTES as u64,
            have: 0,
        },
        Ok(Err(ReadFrameError::Frame(source))) => source,
        Ok(Err(ReadFrameError::Stream(e))) => {
            let error = conn.read_error(e);
            tracing::debug!(peer, error = %error, "peer request stream failed");
            return StreamRead::Failed { malformed: false };
        }
        Err(_) => {
            let error = TransportError::FrameReadTimeout { peer, timeout };
            conn.log_bad_stream("request", &error);
            let _ = recv.stop(StreamCode::MalformedFrame.varint());
            let _ = send.reset(StreamCode::MalformedFrame.varint());
            return StreamRead::Failed { malformed: false };
        }
    };
    let error = TransportError::Frame { peer, source };
    conn.log_bad_stream("request", &error);
    let _ = recv.stop(StreamCode::MalformedFrame.varint());
    let body = ErrorBody {
        code: ErrorBody::MALFORMED_FRAME,
        message: error.to_string(),
    }
    .encode();
    // Best effort, bounded: the peer may be gone or not reading.
    let answer = compio::time::timeout(conn.request_timeout, async {
        if write_frame(&mut send, FrameKind::Error, &body)
            .await
            .is_ok()
        {
            let _ = send.finish();
        }
    })
    .await;
    if answer.is_err() {
        let _ = send.reset(StreamCode::MalformedFrame.varint());
    }
    StreamRead::Failed { malformed: true }
}

/// Reads the next frame of an incoming unidirectional stream; a malformed one stops the
/// stream.
async fn read_oneway(conn: StreamCtx, mut recv: RecvStream) -> StreamRead {
    match read_frame(&mut recv).await {
        Ok(Some(frame)) => StreamRead::Oneway(frame, recv),
        Ok(None) => StreamRead::Finished,
        Err(ReadFrameError::Frame(source)) => {
            let error = TransportError::Frame {
                peer: conn.peer,
                source,
            };
            conn.log_bad_stream("one-way", &error);
            let _ = recv.stop(StreamCode::MalformedFrame.varint());
            StreamRead::Failed { malformed: true }
        }
        Err(ReadFrameError::Stream(e)) => {
            let error = conn.read_error(e);
            tracing::debug!(peer = conn.peer, error = %error, "peer one-way stream failed");
            StreamRead::Failed { malformed: false }
        }
    }
}

/// Answers one request. Dropping it unanswered resets the stream with
/// [`StreamCode::NoResponse`].
pub struct Responder {
    send: Option<SendStream>,
    conn: PeerConnection,
    request: FrameKind,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("peer", &self.conn.inner.peer)
            .field("request", &self.request)
            .finish_non_exhaustive()
    }
}

impl Responder {
    /// The node that sent the request.
    pub fn peer_node(&self) -> NodeId {
        self.conn.inner.peer
    }

    /// Sends the response frame (within the request timeout).
    pub async fn respond(mut self, kind: FrameKind, body: Bytes) -> Result<(), TransportError> {
        let peer = self.conn.inner.peer;
        Frame::new(kind, body.clone()).map_err(|source| TransportError::Frame { peer, source })?;
        let Some(mut send) = self.send.take() else {
            return Ok(());
        };
        let timeout = self.conn.inner.config.request_timeout;
        match compio::time::timeout(timeout, write_frame(&mut send, kind, &body)).await {
            Ok(Ok(())) => {
                let _ = send.finish();
                Ok(())
            }
            Ok(Err(e)) => Err(self.conn.inner.write_error(e)),
            Err(_) => {
                let _ = send.reset(StreamCode::NoResponse.varint());
                Err(TransportError::Timeout {
                    peer,
                    kind,
                    timeout,
                })
            }
        }
    }

    /// Answers with an [`FrameKind::Error`] frame; the requester gets
    /// [`TransportError::Remote`] with `code` and `message`.
    pub async fn respond_error(self, code: u16, message: &str) -> Result<(), TransportError> {
        let body = ErrorBody {
            code,
            message: message.to_owned(),
        }
        .encode();
        self.respond(FrameKind::Error, body).await
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if let Some(mut send) = self.send.take() {
            let _ = send.reset(StreamCode::NoResponse.varint());
        }
    }
}

/// A unidirectional stream to a peer: its frames arrive in order. Dropping it finishes the
/// stream.
pub struct OnewaySender {
    send: SendStream,
    conn: PeerConnection,
}

impl std::fmt::Debug for OnewaySender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnewaySender")
            .field("peer", &self.conn.inner.peer)
            .finish_non_exhaustive()
    }
}

impl OnewaySender {
    /// Sends one frame (waits, within the request timeout, while flow control holds it back).
    pub async fn send(&mut self, kind: FrameKind, body: Bytes) -> Result<(), TransportError> {
        let peer = self.conn.inner.peer;
        Frame::new(kind, body.clone()).map_err(|source| TransportError::Frame { peer, source })?;
        let timeout = self.conn.inner.config.request_timeout;
        match compio::time::timeout(timeout, write_frame(&mut self.send, kind, &body)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.conn.inner.write_error(e)),
            Err(_) => Err(TransportError::Timeout {
                peer,
                kind,
                timeout,
            }),
        }
    }

    /// Ends the stream after the frames sent so far.
    pub fn finish(mut self) {
        let _ = self.send.finish();
    }
}
