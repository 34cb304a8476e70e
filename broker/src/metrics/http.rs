//! The metrics endpoint: `GET /metrics` over plain HTTP/1.1 on its own thread (blocking std
//! sockets; one connection at a time, each bounded in size and time), so a scraper never
//! runs on a shard. A scrape sends every shard a `ShardMsg::Metrics` over its inbox, waits
//! (bounded) for the snapshots, merges and renders them. Other paths get 404, other methods
//! 405; one request per connection (`Connection: close`).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use super::render::render;
use crate::shard::msg::{ShardMsg, reply_channel};

/// Largest request (request line and headers) the endpoint reads.
pub(crate) const METRICS_REQUEST_BYTES_MAX: usize = 8 * 1024;
/// How long a client may take to send its request, and to read the response.
const METRICS_IO_TIMEOUT_MS: u64 = 5_000;
/// Bytes of an oversized request read and discarded after the 431 answer, so the client
/// gets the answer rather than a reset.
const METRICS_DISCARD_BYTES_MAX: usize = 1 << 20;
/// How long a scrape waits for all shards' snapshots.
const METRICS_SHARD_WAIT_MS: u64 = 2_000;

/// Starts the endpoint thread on `listener` (already bound).
pub(crate) fn start(
    listener: TcpListener,
    inboxes: Vec<flume::Sender<ShardMsg>>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => {
                        if let Err(e) = serve_one(stream, &inboxes) {
                            tracing::debug!(error = %e, "metrics connection failed");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics accept failed");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        })
        .map(|_| ())
}

/// Reads the request head (up to the blank line), bounded by [`METRICS_REQUEST_BYTES_MAX`].
/// `None`: too large or cut short.
fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            return Ok(Some(String::from_utf8_lossy(&head).into_owned()));
        }
        if head.len() >= METRICS_REQUEST_BYTES_MAX {
            return Ok(None);
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(None);
        }
        head.extend_from_slice(&buf[..n]);
    }
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

fn serve_one(mut stream: TcpStream, inboxes: &[flume::Sender<ShardMsg>]) -> std::io::Result<()> {
    let timeout = Some(Duration::from_millis(METRICS_IO_TIMEOUT_MS));
    stream.set_read_timeout(timeout)?;
    stream.set_write_timeout(timeout)?;
    let Some(head) = read_head(&mut stream)? else {
        respond(
            &mut stream,
            "431 Request Header Fields Too Large",
            "text/plain",
            "request too large or incomplete\n",
        )?;
        // Closing with unread bytes would reset the connection and lose the answer.
        stream.shutdown(std::net::Shutdown::Write)?;
        let mut discarded = 0usize;
        let mut buf = [0u8; 4096];
        while discarded < METRICS_DISCARD_BYTES_MAX {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => discarded += n,
            }
        }
        return Ok(());
    };
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if path != "/metrics" {
        return respond(
            &mut stream,
            "404 Not Found",
            "text/plain",
            "not found; try /metrics\n",
        );
    }
    if method != "GET" {
        return respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            "use GET\n",
        );
    }
    let body = scrape(inboxes);
    respond(
        &mut stream,
        "200 OK",
        "text/plain; version=0.0.4; charset=utf-8",
        &body,
    )
}

/// Asks every shard for its snapshot (all at once), waits up to [`METRICS_SHARD_WAIT_MS`].
fn scrape(inboxes: &[flume::Sender<ShardMsg>]) -> String {
    let deadline = Instant::now() + Duration::from_millis(METRICS_SHARD_WAIT_MS);
    let mut pending = Vec::with_capacity(inboxes.len());
    for (shard, inbox) in inboxes.iter().enumerate() {
        let (reply, rx) = reply_channel();
        match inbox.send_deadline(ShardMsg::Metrics { reply }, deadline) {
            Ok(()) => pending.push(rx),
            Err(_) => tracing::warn!(shard, "shard did not take the metrics request in time"),
        }
    }
    let mut snapshots = Vec::with_capacity(pending.len());
    for rx in pending {
        match rx.recv_deadline(deadline) {
            Ok(snapshot) => snapshots.push(snapshot),
            Err(_) => tracing::warn!("a shard did not answer the metrics request in time"),
        }
    }
    snapshots.sort_by_key(|s| s.shard);
    render(&snapshots, inboxes.len())
}
