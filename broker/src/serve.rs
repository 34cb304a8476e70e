//! `sluice serve`: start-up (config, data directory, metadata, listeners, one pinned thread
//! per shard), the `listening on HOST:PORT` line, and the shutdown on SIGINT/SIGTERM (drain
//! every shard, then close every log, then exit 0).

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use sluice_proto::protocol::ShardAddress;

use crate::config::{BrokerConfig, ServeArgs};
use crate::doctor;
use crate::limits::SHARD_INBOX_CAPACITY;
use crate::logging;
use crate::metadata::{Metadata, meta_dir};
use crate::metrics;
use crate::net::listener;
use crate::shard::Cluster;
use crate::shard::msg::{ShardMsg, reply_channel};
use crate::shard::run::{ShardStart, run_shard};

/// Exit code for an unusable configuration or data directory.
const EXIT_CONFIG: u8 = 2;
/// How often the main thread checks on the shard threads while waiting for a signal.
const SIGNAL_POLL_MS: i64 = 200;
/// How often the main thread checks that a shard it asked to stop is still alive.
const STOP_POLL_MS: u64 = 100;

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("sluice serve: {message}");
    ExitCode::from(EXIT_CONFIG)
}

/// Runs `sluice serve`.
pub fn serve_main(args: ServeArgs) -> ExitCode {
    let mut config = match BrokerConfig::resolve(&args) {
        Ok(config) => config,
        Err(e) => return fail(e),
    };
    logging::init(&config.log_level, config.log_format);
    if !crate::limits::tune_allocator() {
        tracing::warn!(
            "glibc refused the allocator thresholds (mallopt); running with its defaults"
        );
    }
    if let Some((before, after)) = doctor::raise_nofile_limit() {
        tracing::info!(
            before,
            after,
            "raised the soft RLIMIT_NOFILE to the hard limit"
        );
    }
    let _lock = match prepare_data_dir(&config.data_dir) {
        Ok(lock) => lock,
        Err(e) => return fail(e),
    };
    // The doctor's checks: one line per problem and exit 2, or the I/O driver to run on.
    config.io_driver = match doctor::startup_checks(&config) {
        Ok(driver) => driver,
        Err(problems) => {
            for line in &problems {
                eprintln!("sluice serve: {line}");
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // Cluster mode: topics come from the controller (shard 0 installs them once its view is
    // built); `topics.json` is neither read nor written.
    let mut metadata = match &config.cluster {
        Some(_) => Metadata::default(),
        None => match Metadata::load(&config.data_dir) {
            Ok(meta) => meta,
            Err(e) => return fail(e),
        },
    };
    // The internal topic of committed offsets, created at the first start.
    if config.cluster.is_none()
        && crate::group::ensure_offsets_topic(&mut metadata, config.offsets_topic_partitions)
    {
        if let Err(e) = metadata.persist(&config.data_dir) {
            return fail(e);
        }
        tracing::info!(
            partitions = config.offsets_topic_partitions,
            "created {}",
            crate::group::OFFSETS_TOPIC
        );
    }
    if config.cluster.is_none() {
        // Cluster mode removes them at its first view.
        remove_orphans(&config.data_dir, &metadata);
    }
    let (shared, own, shared_addr, shard_addresses) = match bind_all(&config) {
        Ok(bound) => bound,
        Err(e) => return fail(e),
    };
    let metrics_listener = match config.metrics_listen.map(bind_metrics).transpose() {
        Ok(listener) => listener,
        Err(e) => return fail(e),
    };
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..config.shards)
        .map(|_| flume::bounded::<ShardMsg>(SHARD_INBOX_CAPACITY))
        .unzip();
    let cluster = Arc::new(Cluster {
        config: config.clone(),
        inboxes: senders.clone(),
        shared_port: shared_addr.port(),
        shard_addresses,
    });
    let signals = block_signals();
    let metadata = Arc::new(metadata);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mut threads = Vec::with_capacity(config.shards);
    for (id, ((inbox, shared_listener), own_listener)) in
        receivers.into_iter().zip(shared).zip(own).enumerate()
    {
        let start = ShardStart {
            id,
            cluster: cluster.clone(),
            inbox,
            metadata: metadata.clone(),
            shared_listener,
            own_listener,
            ready: ready_tx.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("shard-{id}"))
            .spawn(move || run_shard(start));
        match thread {
            Ok(t) => threads.push(t),
            Err(e) => {
                stop_all(&senders, &threads);
                return fail(format!("cannot start shard thread {id}: {e}"));
            }
        }
    }
    drop(ready_tx);
    for _ in 0..config.shards {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                stop_all(&senders, &threads);
                return fail(e);
            }
            Err(_) => {
                stop_all(&senders, &threads);
                return fail("a shard thread ended during start-up");
            }
        }
    }
    tracing::info!(
        shards = config.shards,
        io_driver = ?config.io_driver,
        data_dir = %config.data_dir.display(),
        topics = metadata.topics.len(),
        node_id = config.node_id,
        cluster = config.cluster.is_some(),
        "broker started"
    );
    if let Some(listener) = metrics_listener {
        let addr = listener
            .local_addr()
            .map_or_else(|_| "?".into(), |a| a.to_string());
        if let Err(e) = metrics::http::start(listener, senders.clone()) {
            stop_all(&senders, &threads);
            return fail(format!("cannot start the metrics thread: {e}"));
        }
        tracing::info!(%addr, "metrics endpoint: GET /metrics");
        println!("metrics on {addr}");
    }
    println!("listening on {shared_addr}");
    let _ = std::io::stdout().flush();

    let mut running = config.clone();
    let signal = wait_for_signal(&signals, &threads, &mut || {
        reload(&args, &mut running, &senders);
    });
    tracing::info!(signal, "shutting down");
    if config.cluster.is_some()
        && signal != "shard failure"
        && let Some(shard0) = senders.first()
    {
        let (reply, rx) = reply_channel();
        if shard0.send(ShardMsg::ControlledShutdown { reply }).is_ok() {
            // Bounded inside; the margin covers a shard 0 that never answers.
            let _ = rx
                .recv_timeout(crate::cluster::CONTROLLED_SHUTDOWN_TIMEOUT + Duration::from_secs(1));
        }
    }
    let mut replies = Vec::new();
    for inbox in &senders {
        let (reply, rx) = reply_channel();
        if inbox.send(ShardMsg::Drain { reply }).is_ok() {
            replies.push(rx);
        }
    }
    for rx in replies {
        let _ = rx.recv();
    }
    let clean = stop_all(&senders, &threads);
    for t in threads {
        let _ = t.join();
    }
    if clean && signal != "shard failure" {
        tracing::info!("broker stopped cleanly");
        ExitCode::SUCCESS
    } else {
        tracing::error!("broker stopped with errors");
        ExitCode::FAILURE
    }
}

/// How long a SIGHUP reload waits for each shard to apply the new settings.
const RELOAD_WAIT_MS: u64 = 5_000;

/// SIGHUP: re-reads the configuration (the `--config` file under the same flags) and applies
/// what can change at runtime: `retention_check_ms`, `shard_request_bytes`,
/// `shard_fetch_bytes`. Changes to the other settings are logged as needing a restart. A
/// file that does not parse or validate is logged and ignored.
fn reload(args: &ServeArgs, running: &mut BrokerConfig, inboxes: &[flume::Sender<ShardMsg>]) {
    let new = match BrokerConfig::resolve(args) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!(error = %e, "SIGHUP: configuration not reloaded; the broker keeps running with the previous one");
            return;
        }
    };
    let mut restart = Vec::new();
    macro_rules! needs_restart {
        ($($field:ident),*) => {$(
            if format!("{:?}", new.$field) != format!("{:?}", running.$field) {
                restart.push(format!(
                    "{} {:?} -> {:?}",
                    stringify!($field),
                    running.$field,
                    new.$field
                ));
            }
        )*};
    }
    needs_restart!(
        data_dir,
        listen,
        shards,
        node_id,
        advertised_host,
        shard_port_base,
        metrics_listen,
        log_format,
        allow_epoll_fallback,
        cluster,
        replica_lag_time_max_ms,
        shard_write_buffer_bytes
    );
    let mut applied = Vec::new();
    macro_rules! dynamic {
        ($($field:ident),*) => {$(
            if new.$field != running.$field {
                applied.push(format!("{} {} -> {}", stringify!($field), running.$field, new.$field));
                running.$field = new.$field;
            }
        )*};
    }
    dynamic!(retention_check_ms, shard_request_bytes, shard_fetch_bytes);
    if new.log_level != running.log_level {
        if logging::set_level(&new.log_level) {
            applied.push(format!(
                "log_level {} -> {}",
                running.log_level, new.log_level
            ));
            running.log_level = new.log_level;
        } else {
            tracing::warn!(log_level = %new.log_level, "SIGHUP: RUST_LOG is set and wins; log_level not applied");
        }
    }
    if !restart.is_empty() {
        tracing::warn!(
            changes = %restart.join(", "),
            "SIGHUP: these settings take effect only after a restart; not applied"
        );
    }
    if applied.is_empty() {
        tracing::info!("SIGHUP: configuration reloaded; nothing to change at runtime");
        return;
    }
    let mut replies = Vec::new();
    for inbox in inboxes {
        let (reply, rx) = reply_channel();
        let msg = ShardMsg::Reconfigure {
            retention_check_ms: running.retention_check_ms,
            shard_request_bytes: running.shard_request_bytes,
            shard_fetch_bytes: running.shard_fetch_bytes,
            reply,
        };
        if inbox.send(msg).is_ok() {
            replies.push(rx);
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_millis(RELOAD_WAIT_MS);
    let answered = replies
        .into_iter()
        .filter(|rx| rx.recv_deadline(deadline).is_ok())
        .count();
    tracing::info!(
        changes = %applied.join(", "),
        shards = answered,
        "SIGHUP: configuration reloaded and applied"
    );
}

/// Phase 2 of shutdown: every shard closes its logs and stops. Returns whether all were clean.
///
/// A shard whose thread has already ended (it failed to start) never answers, and its
/// `Stop` may sit in its inbox for good (the main thread holds the senders), so the wait
/// for each answer also watches the shard's thread.
fn stop_all(
    inboxes: &[flume::Sender<ShardMsg>],
    threads: &[std::thread::JoinHandle<bool>],
) -> bool {
    let mut replies = Vec::new();
    for (id, inbox) in inboxes.iter().enumerate() {
        let (reply, rx) = reply_channel();
        if inbox.send(ShardMsg::Stop { reply }).is_ok() {
            replies.push((id, rx));
        }
    }
    let mut clean = true;
    for (id, rx) in replies {
        loop {
            match rx.recv_timeout(Duration::from_millis(STOP_POLL_MS)) {
                Ok(closed) => {
                    clean &= closed;
                    break;
                }
                Err(flume::RecvTimeoutError::Disconnected) => {
                    clean = false;
                    break;
                }
                Err(flume::RecvTimeoutError::Timeout) => {
                    if threads.get(id).is_none_or(|t| t.is_finished()) {
                        clean = false;
                        break;
                    }
                }
            }
        }
    }
    clean
}

/// A data directory the broker holds for itself (an exclusive `flock` on `meta/lock`).
struct DataDirLock(#[allow(dead_code)] std::fs::File);

fn prepare_data_dir(data_dir: &Path) -> Result<DataDirLock, String> {
    let meta = meta_dir(data_dir);
    for dir in [data_dir.join("topics"), meta.clone()] {
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot use data directory {}: {e}", dir.display()))?;
    }
    let path = meta.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot use data directory {}: {e}", data_dir.display()))?;
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor this function owns.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(format!(
            "data directory {} is in use by another broker ({})",
            data_dir.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(DataDirLock(file))
}

/// Deletes topic and partition directories the metadata does not list: what a crash in the
/// middle of a delete (or a failed create) left behind.
fn remove_orphans(data_dir: &Path, metadata: &Metadata) {
    let Ok(entries) = std::fs::read_dir(data_dir.join("topics")) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let orphan = match metadata.topics.get(&name) {
            None => true,
            Some(meta) => {
                // Partitions beyond the count, too.
                if let Ok(parts) = std::fs::read_dir(&path) {
                    for part in parts.flatten() {
                        let index = part.file_name().to_string_lossy().parse::<u32>();
                        if index.map_or(true, |i| i >= meta.partitions) {
                            tracing::warn!(dir = %part.path().display(), "removing a partition directory no topic owns");
                            let _ = std::fs::remove_dir_all(part.path());
                        }
                    }
                }
                false
            }
        };
        if orphan {
            tracing::warn!(dir = %path.display(), "removing a topic directory the metadata does not list");
            if let Err(e) = std::fs::remove_dir_all(&path) {
                tracing::error!(dir = %path.display(), error = %e, "cannot remove directory");
            }
        }
    }
}

/// Binds the metrics endpoint's address (plain blocking socket: the endpoint has its own
/// thread).
fn bind_metrics(addr: SocketAddr) -> Result<std::net::TcpListener, String> {
    std::net::TcpListener::bind(addr).map_err(|e| {
        format!("cannot listen for metrics on {addr}: {e} (set --metrics-listen ADDR, or off)")
    })
}

type Bound = (
    Vec<std::net::TcpListener>,
    Vec<std::net::TcpListener>,
    SocketAddr,
    Vec<ShardAddress>,
);

/// Binds the shared address once per shard (with port 0, shard 0 binds first and the others
/// take the port it got), and each shard's own address.
fn bind_all(config: &BrokerConfig) -> Result<Bound, String> {
    let mut shared = Vec::with_capacity(config.shards);
    let first = listener::bind(config.listen, true)
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let shared_addr = first
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;
    shared.push(first);
    for _ in 1..config.shards {
        shared.push(
            listener::bind(shared_addr, true)
                .map_err(|e| format!("cannot listen on {shared_addr}: {e}"))?,
        );
    }
    let mut own = Vec::with_capacity(config.shards);
    let mut addresses = Vec::with_capacity(config.shards);
    for i in 0..config.shards {
        let port = config.shard_port_base.map_or(0, |base| base + i as u16);
        let addr = SocketAddr::new(config.listen.ip(), port);
        let l = listener::bind(addr, false)
            .map_err(|e| format!("cannot listen on shard {i}'s address {addr}: {e}"))?;
        let bound = l
            .local_addr()
            .map_err(|e| format!("cannot read the bound address: {e}"))?;
        addresses.push(ShardAddress {
            shard: i as u16,
            host: config.advertised_host.clone(),
            port: bound.port(),
        });
        own.push(l);
    }
    Ok((shared, own, shared_addr, addresses))
}

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a set owned by this frame.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// Blocks SIGINT and SIGTERM on this thread (and the shard threads it starts, which inherit
/// the mask), so the main thread takes them synchronously with `sigtimedwait`.
fn block_signals() -> libc::sigset_t {
    let set = signal_set();
    // SAFETY: changes the calling thread's signal mask with a valid set.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    set
}

/// Waits for SIGINT/SIGTERM, or for a shard thread to end on its own; runs `on_hup` at
/// every SIGHUP.
fn wait_for_signal(
    set: &libc::sigset_t,
    threads: &[std::thread::JoinHandle<bool>],
    on_hup: &mut dyn FnMut(),
) -> &'static str {
    let timeout = libc::timespec {
        tv_sec: 0,
        tv_nsec: SIGNAL_POLL_MS * 1_000_000,
    };
    loop {
        // SAFETY: `set` and `timeout` are valid for the call; no siginfo is asked for.
        let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &timeout) };
        match sig {
            libc::SIGINT => return "SIGINT",
            libc::SIGTERM => return "SIGTERM",
            libc::SIGHUP => on_hup(),
            _ => {}
        }
        if threads.iter().any(|t| t.is_finished()) {
            tracing::error!("a shard stopped unexpectedly");
            return "shard failure";
        }
        let _ = Duration::ZERO;
    }
}
