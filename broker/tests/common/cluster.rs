//! Real-process cluster harness: N `sluice serve --cluster` processes on one machine (issue 6).
//!
//! [`Cluster::start`] makes a certificate directory with `sluice cert dev`, gives each node a
//! data directory, a log file and fixed ports, and starts every node; [`Cluster::kill`]
//! (SIGKILL), [`Cluster::restart`], [`Cluster::pause`] (SIGSTOP), [`Cluster::resume`]
//! (SIGCONT) and [`Cluster::terminate`] (SIGTERM) act on one node. Ports stay the same across
//! restarts, so every node's `--cluster` list stays true.
//!
//! Ports: node `i` gets a block of [`PORTS_PER_NODE`] consecutive ports: its client port `P`
//! (shard `s` listens on `P + 1 + s`), and its peer port `Q = P + PEER_OFFSET` (the
//! controller's QUIC endpoint; shard `s` replicates on `Q + 1 + s`, the contract's layout).
//! Blocks are taken below the kernel's ephemeral range (20000..32000), checked free for TCP
//! and UDP, and never handed out twice by one test process.
//!
//! Where the cluster's state comes from: [`Cluster::metadata`] asks one node over the native
//! protocol (its own view: leader, epoch, replicas, ISR); [`Cluster::leader_of`] takes the
//! freshest answer (highest leader epoch) of the running nodes; [`Cluster::describe`] runs
//! `sluice topic describe T --json` (the CLI, as an operator would).
//!
//! Logs: each node's stderr goes to `DIR/node-<i>.log` and its stdout to `DIR/node-<i>.out`,
//! appended across restarts (a `=== start k ===` line between runs). When a test panics, the
//! drop prints the last lines of every log and, with `SLUICE_KEEP_CLUSTER=1`, keeps the
//! directory. Every process is SIGKILLed on drop.
//!
//! In network namespaces ([`ClusterOptions::netns`]), node `i` runs in namespace `i` of a
//! [`super::netns::Net`] (`ip netns exec`), listens on that namespace's address, and the ports
//! are the same fixed block in every namespace (each has its own port space).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use serde_json::Value;
use sluice_proto::protocol::{
    ApiKey, FRAME_PREFIX_BYTES, MetadataRequest, MetadataResponse, PartitionMetadata,
    RESPONSE_FRAME_BYTES_MAX, Reader, ResponseHeader, decode_body, encode_request, frame_length,
};

use super::sluice_bin;

/// Ports of one node's block (client + shards, peer + shard endpoints, room to spare).
pub const PORTS_PER_NODE: u16 = 20;
/// The peer (controller QUIC) port's distance from the client port inside a block.
pub const PEER_OFFSET: u16 = 10;
/// Most shards per node with this port layout.
pub const SHARDS_MAX: usize = 8;
/// Lowest port the harness hands out (below the usual ephemeral range 32768..).
const PORT_RANGE_START: u16 = 20_000;
/// One past the highest port the harness hands out.
const PORT_RANGE_END: u16 = 32_000;
/// Longest wait for a started node to print its `listening on` line.
pub const NODE_START_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for one `sluice` CLI command or one metadata request.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts of a restart that finds one of its ports still in use.
pub const RESTART_ADDR_IN_USE_ATTEMPTS: u32 = 10;
/// Lines of each node's log printed when a test fails.
const LOG_TAIL_LINES: usize = 80;

/// The next port block to try (shared by the tests of one process).
static NEXT_PORT: Mutex<Option<u16>> = Mutex::new(None);

/// Whether every port in `start..start + count` is free on `ip` for TCP and for UDP.
fn ports_free(ip: IpAddr, start: u16, count: u16) -> bool {
    (start..start + count)
        .all(|port| TcpListener::bind((ip, port)).is_ok() && UdpSocket::bind((ip, port)).is_ok())
}

/// Reserves `nodes` consecutive blocks of [`PORTS_PER_NODE`] ports (node `i`'s block starts at
/// `first + i * PORTS_PER_NODE`), free on 127.0.0.1 for TCP and UDP and distinct from every
/// block this process handed out before; returns `first`.
pub fn reserve_port_blocks(nodes: usize) -> u16 {
    let mut next = NEXT_PORT.lock().unwrap_or_else(|p| p.into_inner());
    let count = PORTS_PER_NODE * nodes as u16;
    let span = PORT_RANGE_END - PORT_RANGE_START;
    let mut port = next.unwrap_or_else(|| {
        // A start that differs between test processes run one after the other.
        let seed = u64::from(std::process::id()) * 7919
            + std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::from(d.subsec_nanos()));
        PORT_RANGE_START + (seed % u64::from(span / PORTS_PER_NODE)) as u16 * PORTS_PER_NODE
    });
    for _ in 0..(span / PORTS_PER_NODE) * 2 {
        if port + count > PORT_RANGE_END {
            port = PORT_RANGE_START;
        }
        if ports_free(IpAddr::V4(Ipv4Addr::LOCALHOST), port, count) {
            *next = Some(port + count);
            return port;
        }
        port += PORTS_PER_NODE;
    }
    panic!("no {count} free ports in a row in {PORT_RANGE_START}..{PORT_RANGE_END}");
}

/// How to start a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Nodes (ids `0..nodes`), all raft voters.
    pub nodes: usize,
    /// Shards per node.
    pub shards: usize,
    /// More `sluice serve` arguments for every node.
    pub extra: Vec<String>,
    /// Namespace names, one per node (`ip netns exec`), with each namespace's address; `None`:
    /// every node on 127.0.0.1 of this namespace.
    pub netns: Option<Vec<(String, Ipv4Addr)>>,
    /// The namespace `sluice` CLI commands ([`Cluster::cli`]) run in; `None`: this one.
    pub client_netns: Option<String>,
}

impl ClusterOptions {
    /// `nodes` nodes of one shard each on 127.0.0.1.
    pub fn new(nodes: usize) -> ClusterOptions {
        ClusterOptions {
            nodes,
            shards: 1,
            extra: Vec::new(),
            netns: None,
            client_netns: None,
        }
    }
}

/// One node of a [`Cluster`].
#[derive(Debug)]
pub struct Node {
    /// Node id.
    pub id: u32,
    /// The address it listens on.
    pub host: IpAddr,
    /// Its client port (the shared `--listen` port).
    pub client_port: u16,
    /// Its peer port (the controller's QUIC endpoint).
    pub peer_port: u16,
    /// `--data-dir`.
    pub data_dir: PathBuf,
    /// Its stderr (the log), appended across restarts.
    pub log_path: PathBuf,
    /// Its stdout, appended across restarts.
    pub out_path: PathBuf,
    child: Option<Child>,
    /// SIGSTOPped now.
    paused: bool,
    /// Times started.
    starts: u32,
    /// Its `ip netns exec` namespace, if any.
    netns: Option<String>,
}

impl Node {
    /// `HOST:CLIENT_PORT`.
    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.client_port)
    }

    /// The pid of the running process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether a process runs (paused or not).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Whether it runs and is not SIGSTOPped.
    pub fn is_serving(&mut self) -> bool {
        !self.paused && self.is_running()
    }
}

/// A cluster of `sluice serve` processes; see the module doc.
pub struct Cluster {
    /// Holds the certificates, data directories and logs.
    pub dir: tempfile::TempDir,
    /// `sluice cert dev` output.
    pub cert_dir: PathBuf,
    /// The nodes, by id.
    pub nodes: Vec<Node>,
    /// Shards per node.
    pub shards: usize,
    extra: Vec<String>,
    client_netns: Option<String>,
}

/// Sends `signal` to `pid`.
pub fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: sending a signal to a child process this harness started.
    let rc = unsafe { libc::kill(pid as libc::pid_t, signal) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {signal}): {}",
        std::io::Error::last_os_error()
    );
}

/// Polls `check` every 50 ms until it returns `Some`, for at most `timeout`; panics naming
/// `what` when time runs out.
pub fn wait_until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `sluice args...` (in namespace `netns` if given) to completion within [`CLI_TIMEOUT`]:
/// (exit code, stdout, stderr).
pub fn run_cli(netns: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let mut command = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, sluice_bin()]);
            c
        }
        None => Command::new(sluice_bin()),
    };
    let mut child = command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + CLI_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait sluice") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sluice {args:?} did not finish within {CLI_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (
        status.code().unwrap_or(-1),
        out.join().expect("stdout thread"),
        err.join().expect("stderr thread"),
    )
}

/// One partition as `sluice topic describe --json` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribedPartition {
    /// Partition index.
    pub partition: u32,
    /// Leader node, -1 if none.
    pub leader: i32,
    /// Replica nodes.
    pub replicas: Vec<i32>,
    /// In-sync replicas.
    pub isr: Vec<i32>,
    /// Log start.
    pub start_offset: u64,
    /// High watermark.
    pub end_offset: u64,
}

/// Parses `sluice topic describe --json` output.
pub fn parse_describe(json: &str) -> Result<Vec<DescribedPartition>, String> {
    let v: Value = serde_json::from_str(json.trim()).map_err(|e| format!("{e}: {json}"))?;
    let parts = v["partitions"]
        .as_array()
        .ok_or_else(|| format!("no partitions array: {json}"))?;
    let ids = |v: &Value| -> Vec<i32> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_i64())
                    .map(|x| x as i32)
                    .collect()
            })
            .unwrap_or_default()
    };
    parts
        .iter()
        .map(|p| {
            Ok(DescribedPartition {
                partition: p["partition"].as_u64().ok_or("partition")? as u32,
                leader: p["leader"].as_i64().ok_or("leader")? as i32,
                replicas: ids(&p["replicas"]),
                isr: ids(&p["isr"]),
                start_offset: p["start_offset"].as_u64().ok_or("start_offset")?,
                end_offset: p["end_offset"].as_u64().ok_or("end_offset")?,
            })
        })
        .collect::<Result<_, &str>>()
        .map_err(|field| format!("partition without {field}: {json}"))
}

/// Asks the broker at `addr` for the metadata of `topics` (all when `None`) over the native
/// protocol; `Err` when it does not answer within `timeout` or answers with an error.
pub fn metadata_at(
    addr: SocketAddr,
    topics: Option<Vec<String>>,
    timeout: Duration,
) -> Result<MetadataResponse, String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    for chunk in encode_request(
        ApiKey::Metadata,
        0,
        1,
        "cluster-harness",
        &MetadataRequest { topics },
    ) {
        stream
            .write_all(&chunk)
            .map_err(|e| format!("write to {addr}: {e}"))?;
    }
    let mut prefix = [0u8; FRAME_PREFIX_BYTES];
    stream
        .read_exact(&mut prefix)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let len = frame_length(prefix, RESPONSE_FRAME_BYTES_MAX).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; len];
    stream
        .read_exact(&mut buf)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let mut r = Reader::new(BytesMut::from(&buf[..]));
    let header = ResponseHeader::decode(&mut r).map_err(|e| e.to_string())?;
    if !header.error.is_ok() {
        return Err(format!(
            "metadata from {addr}: {:?} {}",
            header.error, header.message
        ));
    }
    decode_body::<MetadataResponse>(r).map_err(|e| e.to_string())
}

impl Cluster {
    /// Starts `options.nodes` nodes and waits for each to listen. It does not wait for a
    /// controller leader: see [`Cluster::wait_for_brokers`].
    pub fn start(options: ClusterOptions) -> Cluster {
        assert!(
            (1..=SHARDS_MAX).contains(&options.shards),
            "1..={SHARDS_MAX} shards"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let cert_dir = dir.path().join("certs");
        let ids: Vec<String> = (0..options.nodes).map(|i| i.to_string()).collect();
        let (code, _, err) = run_cli(
            None,
            &[
                "cert",
                "dev",
                "--dir",
                cert_dir.to_str().expect("utf-8 path"),
                "--nodes",
                &ids.join(","),
            ],
        );
        assert_eq!(code, 0, "sluice cert dev failed: {err}");
        let blocks: Vec<u16> = match &options.netns {
            // Each namespace has its own ports: one fixed block serves all.
            Some(_) => vec![9_000; options.nodes],
            None => {
                let first = reserve_port_blocks(options.nodes);
                (0..options.nodes as u16)
                    .map(|i| first + i * PORTS_PER_NODE)
                    .collect()
            }
        };
        let nodes = (0..options.nodes)
            .map(|i| {
                let (host, netns) = match &options.netns {
                    Some(list) => (IpAddr::V4(list[i].1), Some(list[i].0.clone())),
                    None => (IpAddr::V4(Ipv4Addr::LOCALHOST), None),
                };
                let data_dir = dir.path().join(format!("node-{i}"));
                std::fs::create_dir_all(&data_dir).expect("data dir");
                Node {
                    id: i as u32,
                    host,
                    client_port: blocks[i],
                    peer_port: blocks[i] + PEER_OFFSET,
                    data_dir,
                    log_path: dir.path().join(format!("node-{i}.log")),
                    out_path: dir.path().join(format!("node-{i}.out")),
                    child: None,
                    paused: false,
                    starts: 0,
                    netns,
                }
            })
            .collect();
        let mut cluster = Cluster {
            dir,
            cert_dir,
            nodes,
            shards: options.shards,
            extra: options.extra,
            client_netns: options.client_netns,
        };
        // Spawn all first (the controller needs a quorum to elect), then wait for each.
        let offsets: Vec<u64> = (0..options.nodes).map(|i| cluster.spawn(i)).collect();
        for (i, offset) in offsets.into_iter().enumerate() {
            cluster.await_listening(i, offset);
        }
        cluster
    }

    /// The `--cluster` value: `ID@HOST:PEER_PORT,...`.
    pub fn cluster_arg(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("{}@{}:{}", n.id, n.host, n.peer_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every node's client address, comma-separated (for `--brokers` and clients).
    pub fn brokers(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.client_addr().to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The client addresses of the nodes running and not paused.
    pub fn serving_brokers(&mut self) -> String {
        let mut addrs = Vec::new();
        for n in &mut self.nodes {
            if n.is_serving() {
                addrs.push(n.client_addr().to_string());
            }
        }
        addrs.join(",")
    }

    /// Starts node `i`'s process; returns the length of its stdout file before the start
    /// (where to look for this run's `listening on` line).
    fn spawn(&mut self, i: usize) -> u64 {
        let cluster_arg = self.cluster_arg();
        let cert_dir = self.cert_dir.clone();
        let shards = self.shards;
        let extra = self.extra.clone();
        let node = &mut self.nodes[i];
        assert!(node.child.is_none(), "node {i} is already running");
        node.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .expect("open node log");
        writeln!(log, "=== start {} of node {} ===", node.starts, node.id).expect("log");
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.out_path)
            .expect("open node stdout");
        let offset = out.metadata().expect("stdout file").len();
        let mut command = match &node.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, sluice_bin()]);
                c
            }
            None => Command::new(sluice_bin()),
        };
        command
            .arg("serve")
            .args(["--node-id", &node.id.to_string()])
            .args(["--cluster", &cluster_arg])
            .arg("--cert-dir")
            .arg(&cert_dir)
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--listen", &node.client_addr().to_string()])
            .args(["--shards", &shards.to_string()])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .args(&extra)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(log));
        node.child = Some(command.spawn().expect("spawn sluice serve"));
        node.paused = false;
        offset
    }

    /// Waits for node `i` to print `listening on` after `offset` of its stdout file.
    fn await_listening(&mut self, i: usize, offset: u64) {
        if let Err(why) = self.try_await_listening(i, offset) {
            panic!("{why}");
        }
    }

    /// [`Cluster::await_listening`], returning what went wrong.
    fn try_await_listening(&mut self, i: usize, offset: u64) -> Result<(), String> {
        let deadline = Instant::now() + NODE_START_TIMEOUT;
        loop {
            let mut text = String::new();
            let mut f = File::open(&self.nodes[i].out_path).expect("open stdout file");
            f.seek(SeekFrom::Start(offset)).expect("seek");
            f.read_to_string(&mut text).expect("read stdout file");
            if text.lines().any(|l| l.starts_with("listening on ")) {
                return Ok(());
            }
            if let Some(child) = self.nodes[i].child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.nodes[i].child = None;
                return Err(format!(
                    "node {i} exited before listening ({status}); its log:\n{}",
                    self.log_tail(i, LOG_TAIL_LINES)
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "node {i} did not listen within {NODE_START_TIMEOUT:?}; its log:\n{}",
                    self.log_tail(i, LOG_TAIL_LINES)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs node `i` and waits until its process is gone.
    pub fn kill(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let mut child = node.child.take().expect("node is running");
        let _ = child.kill();
        let _ = child.wait();
        node.paused = false;
    }

    /// SIGTERMs node `i` and waits up to `timeout` for it to exit; returns whether it exited
    /// with status 0 (SIGKILLed after the timeout otherwise).
    pub fn terminate(&mut self, i: usize, timeout: Duration) -> bool {
        let node = &mut self.nodes[i];
        let mut child = node.child.take().expect("node is running");
        if node.paused {
            signal(child.id(), libc::SIGCONT);
            node.paused = false;
        }
        signal(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("wait node") {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts node `i` again (same ports, data and certificates) and waits for it to listen.
    ///
    /// A restart whose port is still taken ("Address already in use": seen once on a shard
    /// port right after a SIGKILL, cause not found) is retried up to
    /// [`RESTART_ADDR_IN_USE_ATTEMPTS`] times, a second apart, printing who holds the port
    /// (`ss`) each time.
    pub fn restart(&mut self, i: usize) {
        for attempt in 1..=RESTART_ADDR_IN_USE_ATTEMPTS {
            let log_len = std::fs::metadata(&self.nodes[i].log_path).map_or(0, |m| m.len());
            let offset = self.spawn(i);
            match self.try_await_listening(i, offset) {
                Ok(()) => return,
                Err(why) => {
                    let log = std::fs::read(&self.nodes[i].log_path).unwrap_or_default();
                    let this_run =
                        String::from_utf8_lossy(&log[(log_len as usize).min(log.len())..])
                            .into_owned();
                    if !this_run.contains("Address already in use")
                        || self.nodes[i].child.is_some()
                        || attempt == RESTART_ADDR_IN_USE_ATTEMPTS
                    {
                        panic!("{why}");
                    }
                    let ss = Command::new("ss")
                        .args(["-tanup"])
                        .output()
                        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                        .unwrap_or_else(|e| format!("ss: {e}"));
                    let port = self.nodes[i].client_port;
                    let holders: Vec<&str> = ss
                        .lines()
                        .filter(|l| {
                            (port..port + PORTS_PER_NODE).any(|p| l.contains(&format!(":{p} ")))
                        })
                        .collect();
                    eprintln!(
                        "cluster harness: node {i}'s restart {attempt} found a port in use; \
                         retrying in 1 s. Sockets on its ports:\n{}",
                        holders.join("\n")
                    );
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }

    /// SIGSTOPs node `i`.
    pub fn pause(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        signal(node.pid().expect("node is running"), libc::SIGSTOP);
        node.paused = true;
    }

    /// SIGCONTs node `i`.
    pub fn resume(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        signal(node.pid().expect("node is running"), libc::SIGCONT);
        node.paused = false;
    }

    /// Node `i`'s metadata for `topic` (its own view), if it answers within `timeout`.
    pub fn metadata(
        &self,
        i: usize,
        topics: Option<Vec<String>>,
        timeout: Duration,
    ) -> Result<MetadataResponse, String> {
        let addr = self.nodes[i].client_addr();
        match &self.nodes[i].netns {
            None => metadata_at(addr, topics, timeout),
            Some(ns) => {
                // Reach a namespace's address from inside it.
                let ns = ns.clone();
                std::thread::scope(|s| {
                    s.spawn(move || {
                        enter_netns(&ns)?;
                        metadata_at(addr, topics, timeout)
                    })
                    .join()
                    .expect("metadata thread")
                })
            }
        }
    }

    /// Partition `p` of `topic` as node `i` sees it.
    pub fn partition_at(&self, i: usize, topic: &str, p: u32) -> Option<PartitionMetadata> {
        let md = self
            .metadata(i, Some(vec![topic.to_owned()]), Duration::from_secs(2))
            .ok()?;
        md.topics
            .into_iter()
            .find(|t| t.name == topic && t.error.is_ok())?
            .partitions
            .into_iter()
            .find(|x| x.partition == p)
    }

    /// The leader of `topic`-`p` and its epoch: of the running, unpaused nodes' answers, the
    /// one with the highest leader epoch that names a leader. `None` if no node names one.
    pub fn leader_of(&mut self, topic: &str, p: u32) -> Option<(u32, u32)> {
        let mut best: Option<(u32, u32)> = None;
        for i in 0..self.nodes.len() {
            if !self.nodes[i].is_serving() {
                continue;
            }
            if let Some(pm) = self.partition_at(i, topic, p)
                && pm.leader >= 0
                && best.is_none_or(|(_, epoch)| pm.leader_epoch > epoch)
            {
                best = Some((pm.leader as u32, pm.leader_epoch));
            }
        }
        best
    }

    /// Waits until `topic`-`p` has a leader that is serving, for at most `timeout`; returns it
    /// and its epoch.
    pub fn wait_for_leader(&mut self, topic: &str, p: u32, timeout: Duration) -> (u32, u32) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((leader, epoch)) = self.leader_of(topic, p)
                && self.nodes[leader as usize].is_serving()
            {
                return (leader, epoch);
            }
            if Instant::now() > deadline {
                self.dump_logs();
                panic!("no serving leader for {topic}-{p} within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until node `i` lists every node as a broker in its metadata (registered with the
    /// controller), for at most `timeout`.
    pub fn wait_for_brokers(&mut self, timeout: Duration) {
        let n = self.nodes.len();
        let deadline = Instant::now() + timeout;
        loop {
            let mut all = true;
            for i in 0..n {
                if !self.nodes[i].is_serving() {
                    continue;
                }
                let count = self
                    .metadata(i, Some(Vec::new()), Duration::from_secs(2))
                    .map_or(0, |md| md.brokers.len());
                all &= count == n;
            }
            if all {
                return;
            }
            if Instant::now() > deadline {
                self.dump_logs();
                panic!("not every node saw {n} brokers within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `sluice ARGS --brokers <serving nodes>` (in [`ClusterOptions::client_netns`]).
    pub fn cli(&mut self, args: &[&str]) -> (i32, String, String) {
        let brokers = self.serving_brokers();
        let netns = self.client_netns.clone();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--brokers", &brokers]);
        run_cli(netns.as_deref(), &all)
    }

    /// `sluice topic create NAME --partitions P --replication-factor RF [--config k=v]...`;
    /// panics unless it succeeds.
    pub fn create_topic(&mut self, name: &str, partitions: u32, rf: u16, configs: &[&str]) {
        let (p, r) = (partitions.to_string(), rf.to_string());
        let mut args = vec![
            "topic",
            "create",
            name,
            "--partitions",
            &p,
            "--replication-factor",
            &r,
        ];
        for c in configs {
            args.extend(["--config", c]);
        }
        let (code, out, err) = self.cli(&args);
        if code != 0 {
            self.dump_logs();
            panic!("topic create {name} failed ({code}): {out}{err}");
        }
    }

    /// `sluice topic describe NAME --json`, parsed; `Err` with what it printed on failure.
    pub fn describe(&mut self, topic: &str) -> Result<Vec<DescribedPartition>, String> {
        let (code, out, err) = self.cli(&["topic", "describe", topic, "--json"]);
        if code != 0 {
            return Err(format!("exit {code}: {out}{err}"));
        }
        parse_describe(&out)
    }

    /// The last `lines` lines of node `i`'s log.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.nodes[i].log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Node `i`'s whole log.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log_path).unwrap_or_default()
    }

    /// Prints the tail of every node's log to stderr.
    pub fn dump_logs(&self) {
        for i in 0..self.nodes.len() {
            eprintln!(
                "----- node {i} log ({}), last {LOG_TAIL_LINES} lines -----\n{}",
                self.nodes[i].log_path.display(),
                self.log_tail(i, LOG_TAIL_LINES)
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            self.dump_logs();
            if std::env::var_os("SLUICE_KEEP_CLUSTER").is_some() {
                let path =
                    std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir")).keep();
                eprintln!("cluster directory kept: {}", path.display());
            } else {
                eprintln!("(SLUICE_KEEP_CLUSTER=1 keeps the cluster directory)");
            }
        }
    }
}

/// Moves the calling thread into the named network namespace.
fn enter_netns(ns: &str) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
    // SAFETY: `file` is an open namespace file; setns only changes this thread's netns.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(format!("setns {path}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// One replica's log as read from its files.
#[derive(Debug)]
pub struct ReplicaLog {
    /// First offset held.
    pub log_start: u64,
    /// Offset the next record would get (after recovery at open).
    pub log_end: u64,
    /// The high watermark the log had checkpointed (or its durable end).
    pub high_watermark: u64,
    /// Every record below the `end` asked for: (offset, its batch's leader epoch, value).
    pub records: Vec<ReplicaRecord>,
}

/// One record of a replica's log: (offset, its batch's leader epoch, value).
pub type ReplicaRecord = (u64, u32, Vec<u8>);

/// Reads partition `partition` of `topic` from a stopped node's data directory with the
/// storage API (which recovers the log as the broker would at start). The node must not be
/// running (the log's segments are locked while open).
pub fn read_replica_log(
    data_dir: &Path,
    topic: &str,
    partition: u32,
    end: u64,
) -> Result<ReplicaLog, String> {
    use sluice_storage::{LogConfig, Offset, PartitionLog};
    let dir = data_dir
        .join("topics")
        .join(topic)
        .join(partition.to_string());
    if !dir.exists() {
        return Err(format!("{} does not exist", dir.display()));
    }
    let runtime = compio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let log = PartitionLog::open(&dir, LogConfig::default())
            .await
            .map_err(|e| format!("open {}: {e}", dir.display()))?;
        let mut records = Vec::new();
        let offsets = log.offsets();
        let mut from = offsets.log_start.get();
        let result = async {
            while from < end {
                let batches = log
                    .read_until(Offset(from), Offset(end), 1 << 20)
                    .await
                    .map_err(|e| format!("read {} at {from}: {e}", dir.display()))?;
                if batches.is_empty() {
                    break;
                }
                for batch in batches {
                    let epoch = batch.leader_epoch();
                    let base = batch.base_offset();
                    for record in batch.records().map_err(|e| e.to_string())? {
                        let record = record.map_err(|e| e.to_string())?;
                        let offset = record.offset(base).get();
                        if offset < end {
                            let value = record.value.map(|v| v.to_vec()).unwrap_or_default();
                            records.push((offset, epoch, value));
                        }
                    }
                    from = batch.next_offset().get();
                }
            }
            Ok::<_, String>(())
        }
        .await;
        log.close()
            .await
            .map_err(|e| format!("close {}: {e}", dir.display()))?;
        result.map(|()| ReplicaLog {
            log_start: offsets.log_start.get(),
            log_end: offsets.log_end.get(),
            high_watermark: offsets.high_watermark.get(),
            records,
        })
    })
}

/// One acknowledged record: where the broker said it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acked {
    /// Partition.
    pub partition: u32,
    /// Offset the acknowledgement named.
    pub offset: u64,
    /// The (unique) value.
    pub value: Vec<u8>,
}

/// Every record of `topic`-`partition` from offset 0 up to its high watermark (the end
/// offset the leader reports, asked first), read with the native client from the current
/// leader; retries through leader moves until `timeout`. Returns (end, offset -> value).
pub async fn read_partition(
    client: &sluice_client::Client,
    topic: &str,
    partition: u32,
    timeout: Duration,
) -> Result<(u64, std::collections::BTreeMap<u64, Vec<u8>>), String> {
    use sluice_client::{Consumer, ConsumerConfig, LATEST_TIMESTAMP, SeekTo, TopicPartition};
    let deadline = Instant::now() + timeout;
    let end = loop {
        match client.list_offset(topic, partition, LATEST_TIMESTAMP).await {
            Ok(end) => break end,
            Err(e) if Instant::now() < deadline => {
                tracing_free_sleep(&e).await;
            }
            Err(e) => return Err(format!("end offset of {topic}-{partition}: {e}")),
        }
    };
    let tp = TopicPartition::new(topic, partition);
    let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default());
    consumer.assign(vec![tp.clone()]);
    consumer
        .seek(&tp, SeekTo::Offset(0))
        .await
        .map_err(|e| format!("seek {topic}-{partition}: {e}"))?;
    let mut read = std::collections::BTreeMap::new();
    while consumer.position(&tp).is_none_or(|p| p < end) {
        if Instant::now() > deadline {
            return Err(format!(
                "{topic}-{partition}: read {} records, position {:?}, end {end}, within {timeout:?}",
                read.len(),
                consumer.position(&tp)
            ));
        }
        match consumer.poll(Duration::from_millis(500)).await {
            Ok(records) => {
                for r in records {
                    let value = r.value.map(|v| v.to_vec()).unwrap_or_default();
                    if let Some(previous) = read.insert(r.offset, value) {
                        return Err(format!(
                            "{topic}-{partition}: offset {} delivered twice (first {:?})",
                            r.offset,
                            String::from_utf8_lossy(&previous)
                        ));
                    }
                }
            }
            Err(e) => tracing_free_sleep(&e).await,
        }
    }
    read.retain(|offset, _| *offset < end);
    Ok((end, read))
}

/// A pause after a (retriable) client error, noted on stderr.
async fn tracing_free_sleep(e: &sluice_client::ClientError) {
    eprintln!("cluster harness: retrying after {e}");
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// The checks on what consumers read back after a run, for one topic:
/// - each partition's offsets are exactly `0..end` (monotonic, no gaps, no repeats);
/// - every acknowledged record is at the offset its acknowledgement named, with its value;
/// - no value is in the topic twice (values are unique per send; the producer is
///   idempotent), and every value read was sent (`sent` says whether a value was).
pub fn check_reads(
    reads: &std::collections::BTreeMap<u32, (u64, std::collections::BTreeMap<u64, Vec<u8>>)>,
    acked: &[Acked],
    sent: impl Fn(&[u8]) -> bool,
) -> Result<(), String> {
    let mut seen: std::collections::HashMap<&[u8], (u32, u64)> = std::collections::HashMap::new();
    for (&p, (end, records)) in reads {
        let offsets: Vec<u64> = records.keys().copied().collect();
        let expected: Vec<u64> = (0..*end).collect();
        if offsets != expected {
            let first_bad = offsets
                .iter()
                .zip(&expected)
                .find(|(a, b)| a != b)
                .map(|(a, b)| format!("offset {a} where {b} was expected"));
            return Err(format!(
                "partition {p}: {} records read for offsets 0..{end}; {}",
                offsets.len(),
                first_bad.unwrap_or_else(|| "some are missing at the end".into())
            ));
        }
        for (&offset, value) in records {
            if !sent(value) {
                return Err(format!(
                    "partition {p} offset {offset}: {:?} was never sent",
                    String::from_utf8_lossy(value)
                ));
            }
            if let Some((p0, o0)) = seen.insert(value, (p, offset)) {
                return Err(format!(
                    "{:?} is in the topic twice: partition {p0} offset {o0} and partition {p} \
                     offset {offset}",
                    String::from_utf8_lossy(value)
                ));
            }
        }
    }
    for a in acked {
        let Some((end, records)) = reads.get(&a.partition) else {
            return Err(format!("partition {} was not read", a.partition));
        };
        match records.get(&a.offset) {
            Some(v) if *v == a.value => {}
            Some(v) => {
                return Err(format!(
                    "acknowledged {:?} at partition {} offset {}, but that offset holds {:?}",
                    String::from_utf8_lossy(&a.value),
                    a.partition,
                    a.offset,
                    String::from_utf8_lossy(v)
                ));
            }
            None => {
                return Err(format!(
                    "acknowledged {:?} at partition {} offset {} is missing (high watermark {end})",
                    String::from_utf8_lossy(&a.value),
                    a.partition,
                    a.offset
                ));
            }
        }
    }
    Ok(())
}

impl Cluster {
    /// Stops every node (SIGTERM, SIGKILL after 30 s), then reads `topic`-`p` below `end` from
    /// every node's files and checks that every replica holds exactly `reference` there (the
    /// records a consumer read) and that all agree on each batch's leader epoch. Returns
    /// each node's log end.
    pub fn compare_replicas(
        &mut self,
        topic: &str,
        p: u32,
        end: u64,
        reference: &std::collections::BTreeMap<u64, Vec<u8>>,
    ) -> Vec<u64> {
        let all: Vec<usize> = (0..self.nodes.len()).collect();
        self.compare_replicas_on(&all, topic, p, end, reference)
    }

    /// [`Cluster::compare_replicas`] over the replicas on `nodes` only (every node is
    /// stopped all the same).
    pub fn compare_replicas_on(
        &mut self,
        nodes: &[usize],
        topic: &str,
        p: u32,
        end: u64,
        reference: &std::collections::BTreeMap<u64, Vec<u8>>,
    ) -> Vec<u64> {
        for i in 0..self.nodes.len() {
            if self.nodes[i].child.is_some() {
                self.terminate(i, Duration::from_secs(30));
            }
        }
        let mut first: Option<(usize, Vec<ReplicaRecord>)> = None;
        let mut ends = Vec::new();
        for &i in nodes {
            let log = read_replica_log(&self.nodes[i].data_dir, topic, p, end)
                .unwrap_or_else(|e| panic!("node {i}'s replica of {topic}-{p}: {e}"));
            assert!(
                log.log_end >= end,
                "node {i}'s replica of {topic}-{p} ends at {} below the high watermark {end}",
                log.log_end
            );
            let offsets: Vec<u64> = log.records.iter().map(|r| r.0).collect();
            assert_eq!(
                offsets,
                (0..end).collect::<Vec<_>>(),
                "node {i}'s replica of {topic}-{p}: offsets below {end}"
            );
            for (offset, _, value) in &log.records {
                assert_eq!(
                    Some(value),
                    reference.get(offset),
                    "node {i}'s replica of {topic}-{p} at offset {offset} differs from what \
                     the leader served"
                );
            }
            match &first {
                None => first = Some((i, log.records)),
                Some((j, other)) => {
                    for (a, b) in other.iter().zip(&log.records) {
                        assert_eq!(
                            a, b,
                            "nodes {j} and {i} disagree on {topic}-{p} at offset {} \
                             (offset, leader epoch, value)",
                            a.0
                        );
                    }
                }
            }
            ends.push(log.log_end);
        }
        ends
    }
}

/// Sends `values` with an idempotent acks=all producer and waits for each; every one must be
/// acknowledged (panics naming the first that is not).
pub async fn produce_acked(
    client: &sluice_client::Client,
    topic: &str,
    values: &[String],
) -> Vec<Acked> {
    use sluice_client::{Acks, Producer, ProducerConfig, ProducerRecord};
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            acks: Acks::All,
            linger: Duration::from_millis(2),
            delivery_timeout: Duration::from_secs(60),
            ..ProducerConfig::default()
        },
    );
    let mut pending = Vec::with_capacity(values.len());
    for value in values {
        let delivery = producer
            .send(ProducerRecord::new(topic.to_owned(), value.clone()))
            .await
            .unwrap_or_else(|e| panic!("send {value}: {e}"));
        pending.push((value, delivery));
    }
    let mut acked = Vec::with_capacity(values.len());
    for (value, delivery) in pending {
        let meta = delivery
            .await
            .unwrap_or_else(|e| panic!("{value} was not acknowledged: {e}"));
        acked.push(Acked {
            partition: meta.partition,
            offset: u64::try_from(meta.offset).expect("acks=all names an offset"),
            value: value.clone().into_bytes(),
        });
    }
    producer.close().await.expect("close producer");
    acked
}

/// A client for tests against a cluster: short timeouts, metadata refreshed every 5 s.
pub fn test_client_config(brokers: &str, client_id: &str) -> sluice_client::ClientConfig {
    let mut config = sluice_client::ClientConfig::new(brokers);
    config.client_id = client_id.into();
    config.request_timeout = Duration::from_secs(5);
    config.connect_timeout = Duration::from_secs(2);
    config.metadata_max_age = Duration::from_secs(5);
    config
}

/// Sends one acks=all Produce of `value` to partition `p` of `topic` on `conn` without
/// waiting (the broker may hold it up to `timeout_ms`); returns the correlation id.
pub fn send_raw_produce(
    conn: &mut super::wire::Conn,
    topic: &str,
    p: u32,
    value: &str,
    timeout_ms: u32,
) -> u32 {
    let mut request = super::wire::produce_request(
        topic,
        p,
        -1,
        super::wire::batch(&[value.as_bytes()], 1_700_000_000_000),
    );
    request.timeout_ms = timeout_ms;
    conn.send(ApiKey::Produce, &request)
}

/// Reads the answer to a raw Produce: `Ok(base offset)` when acknowledged, `Err(what)` when
/// refused (an error code), or when the connection closed or nothing came within its read
/// timeout (not acknowledged either).
pub fn read_raw_produce(conn: &mut super::wire::Conn) -> Result<u64, String> {
    use sluice_proto::protocol::ProduceResponse;
    let Some(payload) = read_frame_lenient(conn) else {
        return Err("no answer (connection closed or read timeout)".into());
    };
    let mut r = Reader::new(payload);
    let header = ResponseHeader::decode(&mut r).map_err(|e| e.to_string())?;
    if !header.error.is_ok() {
        return Err(format!(
            "request error {:?} {}",
            header.error, header.message
        ));
    }
    let response = decode_body::<ProduceResponse>(r).map_err(|e| e.to_string())?;
    let result = &response.topics[0].partitions[0];
    if result.error.is_ok() {
        Ok(result.base_offset)
    } else {
        Err(format!("{:?} {}", result.error, result.message))
    }
}

/// One response frame, or `None` on EOF, reset or timeout.
fn read_frame_lenient(conn: &mut super::wire::Conn) -> Option<BytesMut> {
    let mut prefix = [0u8; FRAME_PREFIX_BYTES];
    conn.stream.read_exact(&mut prefix).ok()?;
    let len = frame_length(prefix, RESPONSE_FRAME_BYTES_MAX).ok()?;
    let mut buf = vec![0u8; len];
    conn.stream.read_exact(&mut buf).ok()?;
    Some(BytesMut::from(&buf[..]))
}

/// Waits until node `old` names `new` the leader of partition 0 of `topic` and `new` has
/// `old` back in its ISR (an old leader that truncated and follows again).
pub fn wait_follows(cluster: &Cluster, topic: &str, old: usize, new: usize, timeout: Duration) {
    wait_until(
        &format!("node {old} follows node {new} and is back in the ISR"),
        timeout,
        || {
            let seen_by_old = cluster.partition_at(old, topic, 0)?;
            let seen_by_new = cluster.partition_at(new, topic, 0)?;
            (seen_by_old.leader == new as i32
                && seen_by_new.leader == new as i32
                && seen_by_new.isr.contains(&(old as i32)))
            .then_some(())
        },
    );
}

/// Reads partition 0 of `topic` back and checks it holds exactly the acknowledged records
/// of the phases `before-`, `during-` and `after-` (`records_per_phase` each), every one at
/// its acknowledged offset; dumps the nodes' logs before failing. Returns the end offset and
/// the records.
pub fn check_phases(
    cluster: &Cluster,
    runtime: &tokio::runtime::Runtime,
    client: &sluice_client::Client,
    topic: &str,
    acked: &[Acked],
    records_per_phase: usize,
) -> (u64, std::collections::BTreeMap<u64, Vec<u8>>) {
    let (end, records) = runtime
        .block_on(read_partition(client, topic, 0, Duration::from_secs(30)))
        .unwrap_or_else(|e| panic!("reading back: {e}"));
    let mut reads = std::collections::BTreeMap::new();
    reads.insert(0, (end, records.clone()));
    let sent = |v: &[u8]| {
        let v = String::from_utf8_lossy(v);
        ["before-", "during-", "after-"]
            .iter()
            .any(|p| v.starts_with(p))
    };
    if let Err(e) = check_reads(&reads, acked, sent) {
        cluster.dump_logs();
        panic!("{e}");
    }
    assert_eq!(
        end,
        3 * records_per_phase as u64,
        "the log holds the acknowledged records only"
    );
    (end, records)
}

/// Unique values `PHASE-00000`, `PHASE-00001`, ...
pub fn phase_values(phase: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{phase}-{i:05}")).collect()
}

/// A background writer on a tokio runtime: rounds of `round_values` unique values
/// (`during-RRRR-NNNNN`) sent with [`produce_acked`] (each must be acknowledged) until
/// [`Writer::finish`].
pub struct Writer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<(usize, Vec<Acked>)>,
}

impl Writer {
    /// Starts writing to `topic` through `client`.
    pub fn start(
        runtime: &tokio::runtime::Runtime,
        client: &sluice_client::Client,
        topic: &str,
        round_values: usize,
    ) -> Writer {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (client, topic, flag) = (client.clone(), topic.to_owned(), stop.clone());
        let task = runtime.spawn(async move {
            let mut acked = Vec::new();
            let mut round = 0;
            while !flag.load(Ordering::Relaxed) {
                let batch = phase_values(&format!("during-{round:04}"), round_values);
                acked.extend(produce_acked(&client, &topic, &batch).await);
                round += 1;
            }
            (round, acked)
        });
        Writer { stop, task }
    }

    /// Stops after the round under way; returns the rounds written and what was acknowledged.
    pub fn finish(self, runtime: &tokio::runtime::Runtime) -> (usize, Vec<Acked>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        runtime.block_on(self.task).expect("writer task")
    }
}

/// [`read_partition`] for partitions `0..partitions` of `topic` (panics naming the first that
/// cannot be read within `timeout`).
pub async fn read_topic(
    client: &sluice_client::Client,
    topic: &str,
    partitions: u32,
    timeout: Duration,
) -> std::collections::BTreeMap<u32, (u64, std::collections::BTreeMap<u64, Vec<u8>>)> {
    let mut reads = std::collections::BTreeMap::new();
    for p in 0..partitions {
        let read = read_partition(client, topic, p, timeout)
            .await
            .unwrap_or_else(|e| panic!("read {topic}-{p}: {e}"));
        reads.insert(p, read);
    }
    reads
}
