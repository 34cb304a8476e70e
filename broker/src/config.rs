//! `sluice serve` settings: command-line flags, the optional TOML file, and the resolved
//! [`BrokerConfig`] the shards run with. Flags override the file; the file overrides the
//! defaults.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sluice_proto::protocol::REQUEST_FRAME_BYTES_MAX;
use sluice_proto::{BATCH_BYTES_MAX, protocol::FETCH_BYTES_MAX};

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
    allow_epoll_fallback: Option<bool>,
    log_level: Option<String>,
    log_format: Option<LogFormat>,
    metrics_listen: Option<String>,
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
        let shard_port_base = match file.shard_port_base {
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
        let advertised_host = file.advertised_host.unwrap_or_else(|| match listen.ip() {
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
        Ok(BrokerConfig {
            data_dir: args
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("./sluice-data")),
            listen,
            shards,
            node_id: file.node_id.unwrap_or(0),
            advertised_host,
            shard_port_base,
            retention_check_ms,
            offsets_topic_partitions,
            shard_request_bytes,
            shard_fetch_bytes,
            allow_epoll_fallback: args.allow_epoll_fallback
                || file.allow_epoll_fallback.unwrap_or(false),
            io_driver: IoDriver::IoUring,
            log_level,
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            metrics_listen,
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
    fn unknown_keys_are_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("typo.toml");
        std::fs::write(&path, "shard = 2\n").expect("write");
        let err = read_file(&path).expect_err("unknown key");
        assert!(err.to_string().contains("unknown field"), "{err}");
    }
}
