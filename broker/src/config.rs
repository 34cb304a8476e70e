//! `sluice serve` settings: command-line flags, the optional TOML file, and the resolved
//! [`BrokerConfig`] the shards run with. Flags override the file; the file overrides the
//! defaults.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sluice_proto::protocol::REQUEST_FRAME_BYTES_MAX;
use sluice_proto::{BATCH_BYTES_MAX, protocol::FETCH_BYTES_MAX};

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
    /// Address of the Prometheus metrics endpoint (`GET /metrics`); `off` disables it
    /// [default: 127.0.0.1:9644].
    #[arg(long)]
    pub metrics_listen: Option<String>,
}

/// The settings of the TOML file (every key optional).
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    shards: Option<usize>,
    node_id: Option<u32>,
    advertised_host: Option<String>,
    shard_port_base: Option<u16>,
    retention_check_ms: Option<u64>,
    shard_request_bytes: Option<usize>,
    shard_fetch_bytes: Option<usize>,
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
    /// Per-shard budget of request bytes in flight.
    pub(crate) shard_request_bytes: usize,
    /// Per-shard budget of fetched bytes not yet written.
    pub(crate) shard_fetch_bytes: usize,
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
            shard_request_bytes,
            shard_fetch_bytes,
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
