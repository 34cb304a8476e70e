//! `sluice serve` settings: command-line flags, the optional TOML file, and the resolved
//! [`BrokerConfig`] the shards run with. Flags override the file; the file overrides the
//! defaults.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sluice_proto::protocol::REQUEST_FRAME_BYTES_MAX;
use sluice_proto::{BATCH_BYTES_MAX, protocol::FETCH_BYTES_MAX};

use sluice_storage::WRITE_BUFFER_BYTES_PER_SHARD_DEFAULT;

use crate::doctor::IoDriver;
use crate::limits::{
    RETENTION_CHECK_MS_DEFAULT, SHARD_FETCH_BYTES_DEFAULT, SHARD_REQUEST_BYTES_DEFAULT, SHARDS_MAX,
};

/// `sluice serve` arguments.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ServeArgs {
    /// A TOML file with the settings below and the tunables (flags override it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where topics and metadata live [default: ./sluice-data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The shared address every shard accepts on [default: 127.0.0.1:9092].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Shards (pinned threads) [default: one per core].
    #[arg(long)]
    pub shards: Option<usize>,
    /// Interval between retention passes, in ms [default: 60000].
    #[arg(long)]
    pub retention_check_ms: Option<u64>,
    /// Partitions of `__consumer_offsets` when the broker creates it [default: 16].
    #[arg(long)]
    pub offsets_topic_partitions: Option<u32>,
    /// When io_uring cannot be used (seccomp, sysctl), run on compio's polling (epoll)
    /// driver instead of refusing to start. Slower; logged loudly.
    #[arg(long)]
    pub allow_epoll_fallback: bool,
    /// Log filter: a level (error, warn, info, debug, trace) or `tracing` directives such as
    /// `info,sluice_storage=debug`. `RUST_LOG`, when set, wins [default: info].
    #[arg(long)]
    pub log_level: Option<String>,
    /// Log line format [default: text].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Address of the Prometheus metrics endpoint (`GET /metrics`); `off` disables it
    /// [default: 127.0.0.1:9644].
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// This broker's node id, unique in its cluster [default: 0].
    #[arg(long)]
    pub node_id: Option<u32>,
    /// Cluster mode: every controller voter, `ID@HOST:PORT` or `HOST:PORT` (id = position,
    /// from 0), comma-separated; PORT is that node's peer (QUIC) port. 1, 3, 5, 7 or 9 nodes,
    /// this node among them. Unset or empty: the broker runs alone.
    #[arg(long)]
    pub cluster: Option<String>,
    /// Cluster mode: the directory with `ca.pem`, `node-<id>.pem` and `node-<id>.key`
    /// (`sluice cert dev --dir DIR --nodes 0,1,2`).
    #[arg(long)]
    pub cert_dir: Option<PathBuf>,
    /// The host name clients are told to connect to [default: the listen address, or
    /// 127.0.0.1 when listening on 0.0.0.0].
    #[arg(long)]
    pub advertised_host: Option<String>,
    /// Shard i listens on its own port shard_port_base + i; 0: ephemeral ports [default:
    /// listen port + 1].
    #[arg(long)]
    pub shard_port_base: Option<u16>,
    /// Cluster mode: a follower that has not caught up with its leader for this long leaves
    /// the ISR, in ms [default: 30000].
    #[arg(long)]
    pub replica_lag_time_max_ms: Option<u64>,
}

/// How log lines are written to stderr.
#[derive(clap::ValueEnum, Deserialize, Serialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, fields).
    Json,
}

/// The settings of the TOML file (every key optional). `Serialize` lets a test list every key
/// and check that `deploy/sluice.toml` documents it.
#[derive(Deserialize, Serialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    shards: Option<usize>,
    node_id: Option<u32>,
    advertised_host: Option<String>,
    shard_port_base: Option<u16>,
    retention_check_ms: Option<u64>,
    offsets_topic_partitions: Option<u32>,
    shard_request_bytes: Option<usize>,
    shard_fetch_bytes: Option<usize>,
    shard_write_buffer_bytes: Option<usize>,
    allow_epoll_fallback: Option<bool>,
    log_level: Option<String>,
    log_format: Option<LogFormat>,
    metrics_listen: Option<String>,
    cluster: Option<String>,
    cert_dir: Option<PathBuf>,
    replica_lag_time_max_ms: Option<u64>,
}

/// The resolved configuration of a broker.
#[derive(Debug, Clone)]
pub(crate) struct BrokerConfig {
    /// Where topics and metadata live.
    pub(crate) data_dir: PathBuf,
    /// Shared address.
    pub(crate) listen: SocketAddr,
    /// Shard count.
    pub(crate) shards: usize,
    /// Node id reported in metadata.
    pub(crate) node_id: u32,
    /// Host clients are told to connect to.
    pub(crate) advertised_host: String,
    /// Shard `i` listens on its own port `shard_port_base + i`; `None`: ephemeral ports.
    pub(crate) shard_port_base: Option<u16>,
    /// Interval between retention passes.
    pub(crate) retention_check_ms: u64,
    /// Partitions of `__consumer_offsets` when the broker creates it.
    pub(crate) offsets_topic_partitions: u32,
    /// Per-shard budget of request bytes in flight.
    pub(crate) shard_request_bytes: usize,
    /// Per-shard budget of fetched bytes not yet written.
    pub(crate) shard_fetch_bytes: usize,
    /// Per-shard budget of partition-log write-buffer chunks (`write_buffer_bytes_per_shard`).
    pub(crate) shard_write_buffer_bytes: usize,
    /// Whether epoll may replace an unusable io_uring.
    pub(crate) allow_epoll_fallback: bool,
    /// The driver the shards run on: set by the start-up checks.
    pub(crate) io_driver: IoDriver,
    /// Log filter directives (`RUST_LOG` wins when set).
    pub(crate) log_level: String,
    /// Log line format.
    pub(crate) log_format: LogFormat,
    /// Where the metrics endpoint listens; `None`: disabled.
    pub(crate) metrics_listen: Option<SocketAddr>,
    /// Cluster mode (`--cluster`); `None`: the broker runs alone.
    pub(crate) cluster: Option<ClusterConfig>,
    /// Cluster mode: how long a follower may lag before it leaves the ISR (Kafka's
    /// `replica.lag.time.max.ms`).
    pub(crate) replica_lag_time_max_ms: u64,
}

/// Default of `replica_lag_time_max_ms` (Kafka's).
pub(crate) const REPLICA_LAG_TIME_MAX_MS_DEFAULT: u64 = 30_000;

/// Controller voter counts `--cluster` accepts: odd, so that every voter adds fault
/// tolerance (4 voters survive one loss, like 3), and at most the controller's limit. One
/// voter is a cluster of one: the cluster code paths on a single machine.
pub(crate) const CLUSTER_VOTER_COUNTS: [usize; 5] = [1, 3, 5, 7, 9];
const _: () = assert!(
    CLUSTER_VOTER_COUNTS[CLUSTER_VOTER_COUNTS.len() - 1]
        <= sluice_replication::controller::storage::CONTROLLER_VOTERS_MAX
);

/// One controller voter of `--cluster`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PeerAddr {
    /// Its node id.
    pub(crate) id: u32,
    /// Host (name or address) its peers connect to.
    pub(crate) host: String,
    /// Its peer port: the controller's QUIC endpoint (shard 0); shard `s` replicates on
    /// `port + 1 + s`.
    pub(crate) port: u16,
}

/// Cluster mode settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClusterConfig {
    /// Every controller voter, in the order given.
    pub(crate) voters: Vec<PeerAddr>,
    /// `ca.pem`, `node-<id>.pem`, `node-<id>.key`.
    pub(crate) cert_dir: PathBuf,
}

impl ClusterConfig {
    /// This node's entry (validated to exist by [`parse_cluster`]).
    pub(crate) fn me(&self, node_id: u32) -> Option<&PeerAddr> {
        self.voters.iter().find(|v| v.id == node_id)
    }
}

/// A `--cluster` value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ClusterConfigError {
    /// An entry is not `ID@HOST:PORT` or `HOST:PORT`.
    #[error("cluster entry {entry:?} is not ID@HOST:PORT or HOST:PORT: {reason}")]
    BadEntry {
        /// The entry as given.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Not 1, 3, 5, 7 or 9 voters.
    #[error(
        "cluster lists {0} nodes: a controller quorum has 1, 3, 5, 7 or 9 voters (an even \
         count tolerates no more failures than one node fewer)"
    )]
    VoterCount(usize),
    /// Two entries share a node id.
    #[error("cluster lists node id {0} twice")]
    DuplicateId(u32),
    /// Two entries share an address.
    #[error("cluster lists the address {0} twice")]
    DuplicateAddress(String),
    /// `--node-id` is not among the voters.
    #[error(
        "node id {node} is not in the cluster list (ids {ids:?}); set --node-id to one of them"
    )]
    NotListed {
        /// `--node-id`.
        node: u32,
        /// The listed ids.
        ids: Vec<u32>,
    },
    /// This node's replication ports do not fit.
    #[error(
        "peer port {port}: the replication ports {port}+1..={port}+{shards} do not fit below 65536"
    )]
    PortRange {
        /// This node's peer port.
        port: u16,
        /// Shard count.
        shards: usize,
    },
    /// No `--cert-dir`.
    #[error("cluster mode needs --cert-dir (cert_dir): the CA and this node's certificate")]
    NoCertDir,
}

impl From<ClusterConfigError> for ConfigError {
    fn from(e: ClusterConfigError) -> Self {
        ConfigError(e.to_string())
    }
}

/// Parses a `--cluster` list (`ID@HOST:PORT` or `HOST:PORT` entries, comma-separated; a
/// plain entry's id is its position) and checks it: 1, 3, 5, 7 or 9 entries, distinct ids
/// and addresses, nonzero ports, `node_id` listed.
pub(crate) fn parse_cluster(
    value: &str,
    node_id: u32,
) -> Result<Vec<PeerAddr>, ClusterConfigError> {
    let mut voters: Vec<PeerAddr> = Vec::new();
    for (position, raw) in value.split(',').enumerate() {
        let entry = raw.trim();
        let bad = |reason: &str| ClusterConfigError::BadEntry {
            entry: entry.to_string(),
            reason: reason.to_string(),
        };
        if entry.is_empty() {
            return Err(bad("empty entry"));
        }
        let (id, addr) = match entry.split_once('@') {
            Some((id, addr)) => (
                id.trim()
                    .parse::<u32>()
                    .map_err(|e| bad(&format!("node id {id:?}: {e}")))?,
                addr.trim(),
            ),
            None => (
                u32::try_from(position).map_err(|_| bad("too many entries"))?,
                entry,
            ),
        };
        let (host, port) = addr.rsplit_once(':').ok_or_else(|| bad("no :PORT"))?;
        let port: u16 = port
            .parse()
            .map_err(|e| bad(&format!("port {port:?}: {e}")))?;
        if port == 0 {
            return Err(bad("port 0: peers must know the port"));
        }
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() || host.len() > 253 || host.contains(char::is_whitespace) {
            return Err(bad("no usable host"));
        }
        if voters.iter().any(|v| v.id == id) {
            return Err(ClusterConfigError::DuplicateId(id));
        }
        if voters.iter().any(|v| v.host == host && v.port == port) {
            return Err(ClusterConfigError::DuplicateAddress(format!(
                "{host}:{port}"
            )));
        }
        voters.push(PeerAddr {
            id,
            host: host.to_string(),
            port,
        });
    }
    if !CLUSTER_VOTER_COUNTS.contains(&voters.len()) {
        return Err(ClusterConfigError::VoterCount(voters.len()));
    }
    if !voters.iter().any(|v| v.id == node_id) {
        return Err(ClusterConfigError::NotListed {
            node: node_id,
            ids: voters.iter().map(|v| v.id).collect(),
        });
    }
    Ok(voters)
}

/// A configuration that cannot be used, with the reason.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ConfigError(pub String);

impl BrokerConfig {
    /// Resolves flags over the file over the defaults, and checks the result.
    pub(crate) fn resolve(args: &ServeArgs) -> Result<BrokerConfig, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let listen = args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9092)));
        let shards = match args.shards.or(file.shards) {
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        if !(1..=SHARDS_MAX).contains(&shards) {
            return Err(ConfigError(format!(
                "shards must be between 1 and {SHARDS_MAX}, not {shards}"
            )));
        }
        let shard_port_base = match args.shard_port_base.or(file.shard_port_base) {
            Some(0) => None,
            Some(base) => Some(base),
            None if listen.port() == 0 => None,
            None => Some(listen.port().checked_add(1).ok_or_else(|| {
                ConfigError("listen port 65535 leaves no room for shard ports".into())
            })?),
        };
        if let Some(base) = shard_port_base
            && usize::from(base) + shards > usize::from(u16::MAX) + 1
        {
            return Err(ConfigError(format!(
                "shard ports {base}.. do not fit below 65536 for {shards} shards"
            )));
        }
        let advertised_host = args
            .advertised_host
            .clone()
            .or(file.advertised_host)
            .unwrap_or_else(|| match listen.ip() {
                ip if ip.is_unspecified() => IpAddr::from([127, 0, 0, 1]).to_string(),
                ip => ip.to_string(),
            });
        let retention_check_ms = args
            .retention_check_ms
            .or(file.retention_check_ms)
            .unwrap_or(RETENTION_CHECK_MS_DEFAULT);
        if retention_check_ms == 0 {
            return Err(ConfigError("retention_check_ms must be positive".into()));
        }
        let offsets_topic_partitions = args
            .offsets_topic_partitions
            .or(file.offsets_topic_partitions)
            .unwrap_or(crate::group::OFFSETS_TOPIC_PARTITIONS_DEFAULT);
        crate::metadata::validate_partitions(offsets_topic_partitions)
            .map_err(|e| ConfigError(format!("offsets_topic_partitions: {e}")))?;
        let shard_request_bytes = file
            .shard_request_bytes
            .unwrap_or(SHARD_REQUEST_BYTES_DEFAULT);
        if shard_request_bytes < REQUEST_FRAME_BYTES_MAX {
            return Err(ConfigError(format!(
                "shard_request_bytes {shard_request_bytes} is below the largest request frame \
                 ({REQUEST_FRAME_BYTES_MAX})"
            )));
        }
        let shard_fetch_bytes = file.shard_fetch_bytes.unwrap_or(SHARD_FETCH_BYTES_DEFAULT);
        let one_fetch = FETCH_BYTES_MAX + BATCH_BYTES_MAX as usize;
        if shard_fetch_bytes < one_fetch {
            return Err(ConfigError(format!(
                "shard_fetch_bytes {shard_fetch_bytes} is below one whole fetch ({one_fetch})"
            )));
        }
        let shard_write_buffer_bytes = file
            .shard_write_buffer_bytes
            .unwrap_or(WRITE_BUFFER_BYTES_PER_SHARD_DEFAULT);
        let largest_batch = crate::topic_config::write_buffer_bytes_for_batch(BATCH_BYTES_MAX);
        if shard_write_buffer_bytes < 2 * largest_batch {
            return Err(ConfigError(format!(
                "shard_write_buffer_bytes {shard_write_buffer_bytes} is below twice the write \
                 buffers of the largest batch ({})",
                2 * largest_batch
            )));
        }
        let metrics_listen = parse_metrics_listen(
            args.metrics_listen
                .as_deref()
                .or(file.metrics_listen.as_deref())
                .unwrap_or(METRICS_LISTEN_DEFAULT),
        )?;
        let log_level = args
            .log_level
            .clone()
            .or(file.log_level)
            .unwrap_or_else(|| "info".to_string());
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log_level) {
            return Err(ConfigError(format!("invalid log_level {log_level:?}: {e}")));
        }
        let node_id = args.node_id.or(file.node_id).unwrap_or(0);
        let cluster = match args.cluster.clone().or(file.cluster) {
            Some(list) if !list.trim().is_empty() => {
                let voters = parse_cluster(&list, node_id)?;
                let me = voters
                    .iter()
                    .find(|v| v.id == node_id)
                    .map_or(0, |v| v.port);
                if usize::from(me) + 1 + shards > usize::from(u16::MAX) {
                    return Err(ClusterConfigError::PortRange { port: me, shards }.into());
                }
                let cert_dir = args
                    .cert_dir
                    .clone()
                    .or(file.cert_dir)
                    .ok_or(ClusterConfigError::NoCertDir)?;
                Some(ClusterConfig { voters, cert_dir })
            }
            _ => None,
        };
        let replica_lag_time_max_ms = args
            .replica_lag_time_max_ms
            .or(file.replica_lag_time_max_ms)
            .unwrap_or(REPLICA_LAG_TIME_MAX_MS_DEFAULT);
        if replica_lag_time_max_ms == 0 {
            return Err(ConfigError(
                "replica_lag_time_max_ms must be positive".into(),
            ));
        }
        Ok(BrokerConfig {
            data_dir: args
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("./sluice-data")),
            listen,
            shards,
            node_id,
            advertised_host,
            shard_port_base,
            retention_check_ms,
            offsets_topic_partitions,
            shard_request_bytes,
            shard_fetch_bytes,
            shard_write_buffer_bytes,
            allow_epoll_fallback: args.allow_epoll_fallback
                || file.allow_epoll_fallback.unwrap_or(false),
            io_driver: IoDriver::IoUring,
            log_level,
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            metrics_listen,
            cluster,
            replica_lag_time_max_ms,
        })
    }
}

/// Where the metrics endpoint listens unless told otherwise.
const METRICS_LISTEN_DEFAULT: &str = "127.0.0.1:9644";

/// `off` or empty disables the endpoint; anything else must be `HOST:PORT`.
fn parse_metrics_listen(value: &str) -> Result<Option<SocketAddr>, ConfigError> {
    let value = value.trim();
    if value.is_empty() || value.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|e| {
        ConfigError(format!(
            "metrics_listen {value:?} is neither HOST:PORT nor \"off\": {e}"
        ))
    })
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("cannot read config {}: {e}", path.display())))?;
    toml::from_str(&text)
        .map_err(|e| ConfigError(format!("invalid config {}: {e}", path.display())))
}

#[cfg(test)]
mod deploy_example_tests {
    use super::*;

    /// `deploy/sluice.toml`, the documented example.
    fn example_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/sluice.toml")
    }

    #[test]
    fn example_config_parses_with_the_broker_loader_and_resolves() {
        // read_file is the loader `serve --config` uses; it rejects unknown keys.
        let file = read_file(&example_path()).expect("deploy/sluice.toml parses");
        assert!(file.data_dir.is_some() && file.listen.is_some());
        let args = ServeArgs {
            config: Some(example_path()),
            ..ServeArgs::default()
        };
        let config = BrokerConfig::resolve(&args).expect("deploy/sluice.toml resolves");
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/sluice"));
    }

    #[test]
    fn example_config_documents_every_key() {
        let keys = match serde_json::to_value(FileConfig::default()) {
            Ok(serde_json::Value::Object(map)) => map.into_iter().map(|(k, _)| k),
            other => panic!("FileConfig serialises to an object, got {other:?}"),
        };
        let text = std::fs::read_to_string(example_path()).expect("read deploy/sluice.toml");
        let table: toml::Table = toml::from_str(&text).expect("TOML");
        let missing: Vec<String> = keys.filter(|k| !table.contains_key(k)).collect();
        assert!(
            missing.is_empty(),
            "deploy/sluice.toml does not set (and document) {missing:?}"
        );
    }

    #[test]
    fn write_buffer_budget_must_hold_twice_the_largest_batch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let resolve = |bytes: usize| {
            let path = dir.path().join(format!("wb{bytes}.toml"));
            std::fs::write(&path, format!("shard_write_buffer_bytes = {bytes}\n")).expect("write");
            BrokerConfig::resolve(&ServeArgs {
                config: Some(path),
                ..ServeArgs::default()
            })
        };
        // A 16 MiB batch spans 17 chunks of 1 MiB less a block, plus one: 18 MiB, twice 36.
        let least = 36 << 20;
        assert_eq!(
            resolve(least).expect("enough").shard_write_buffer_bytes,
            least
        );
        let err = resolve(least - 1).expect_err("too small");
        assert!(
            err.to_string().contains("shard_write_buffer_bytes"),
            "{err}"
        );
        let default = BrokerConfig::resolve(&ServeArgs::default()).expect("defaults");
        assert_eq!(default.shard_write_buffer_bytes, 256 << 20);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("typo.toml");
        std::fs::write(&path, "shard = 2\n").expect("write");
        let err = read_file(&path).expect_err("unknown key");
        assert!(err.to_string().contains("unknown field"), "{err}");
    }
}

#[cfg(test)]
mod cluster_config_tests {
    use super::*;

    fn args(cluster: &str, node: u32) -> ServeArgs {
        ServeArgs {
            cluster: Some(cluster.to_string()),
            node_id: Some(node),
            cert_dir: Some(PathBuf::from("/certs")),
            shards: Some(2),
            ..ServeArgs::default()
        }
    }

    #[test]
    fn plain_and_explicit_entries_parse() {
        let v = parse_cluster("10.0.0.1:9192, 10.0.0.2:9192,10.0.0.3:9192", 1).expect("plain");
        assert_eq!(v.iter().map(|p| p.id).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(v[1].host, "10.0.0.2");
        assert_eq!(v[1].port, 9192);
        let v = parse_cluster("7@a:1,3@b:1,5@[::1]:2", 5).expect("explicit");
        assert_eq!(v.iter().map(|p| p.id).collect::<Vec<_>>(), [7, 3, 5]);
        assert_eq!(v[2].host, "::1");
        assert_eq!(parse_cluster("a:1", 0).expect("one voter").len(), 1);
        let config = BrokerConfig::resolve(&args("a:1,b:1,c:1", 2)).expect("resolves");
        let cluster = config.cluster.expect("cluster mode");
        assert_eq!(cluster.me(2).map(|p| p.host.as_str()), Some("c"));
        assert_eq!(
            config.replica_lag_time_max_ms,
            REPLICA_LAG_TIME_MAX_MS_DEFAULT
        );
        // Empty: single-node mode.
        assert!(
            BrokerConfig::resolve(&args(" ", 0))
                .expect("alone")
                .cluster
                .is_none()
        );
    }

    #[test]
    fn bad_cluster_lists_are_refused_with_a_typed_error() {
        use ClusterConfigError as E;
        let bad = |v: &str, node: u32| parse_cluster(v, node).expect_err(v);
        assert!(matches!(bad("a:1,b:1", 0), E::VoterCount(2)));
        assert!(matches!(bad("a:1,b:1,c:1,d:1", 0), E::VoterCount(4)));
        assert!(matches!(
            bad(
                &(0..11)
                    .map(|i| format!("h{i}:1"))
                    .collect::<Vec<_>>()
                    .join(","),
                0
            ),
            E::VoterCount(11)
        ));
        assert!(matches!(bad("0@a:1,0@b:1,2@c:1", 0), E::DuplicateId(0)));
        assert!(matches!(bad("a:1,a:1,c:1", 0), E::DuplicateAddress(_)));
        assert!(matches!(
            bad("a:1,b:1,c:1", 3),
            E::NotListed { node: 3, .. }
        ));
        for entry in ["a", "a:x", "a:0", ":1", "x@a:1", "a:1,,b:1", "a:70000"] {
            assert!(matches!(bad(entry, 0), E::BadEntry { .. }), "{entry}");
        }
        let e = BrokerConfig::resolve(&ServeArgs {
            cert_dir: None,
            ..args("a:1,b:1,c:1", 0)
        })
        .expect_err("no cert dir");
        assert!(e.to_string().contains("--cert-dir"), "{e}");
        let e = BrokerConfig::resolve(&args("a:65534,b:1,c:1", 0)).expect_err("ports");
        assert!(e.to_string().contains("65536"), "{e}");
        let e = BrokerConfig::resolve(&ServeArgs {
            replica_lag_time_max_ms: Some(0),
            ..args("a:1", 0)
        })
        .expect_err("lag 0");
        assert!(e.to_string().contains("replica_lag_time_max_ms"), "{e}");
    }
}
