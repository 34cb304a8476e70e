//! `sluice-bench produce | consume | e2e`: load through the native client, the way an
//! application uses it, against running brokers (`--brokers`) or one started for the run
//! (`--spawn`).
//!
//! - Closed loop (no `--rate`): each producer sends as fast as the client's buffer lets it;
//!   the figures are the maximum throughput and the send-to-acknowledgement latency, which
//!   then includes queueing behind the producer's own buffer.
//! - Open loop (`--rate R` records/s in all): record `i` of a producer has the intended send
//!   time `start + i / (R / producers)`, on a fixed schedule that does not wait for the broker.
//!   Latency is measured from the intended time, so a stall delays the records behind it and
//!   they are counted as late (coordinated omission corrected). The run reports whether the
//!   target rate was reached.
//! - Every record's value starts with its (intended) send time, 8 bytes of Unix nanoseconds;
//!   in `e2e` the consumers tail the topics and record produce-to-consume latency from it
//!   (bench and consumers share one clock: run them on one machine).
//!
//! Acknowledgement latency is taken when the bench observes each delivery, in send order per
//! producer: a record acknowledged before an earlier one is counted when the earlier one is.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use serde::Serialize;
use sluice_client::{
    Acks, Assignor, Client, ClientConfig, Consumer, ConsumerConfig, Producer, ProducerConfig,
    ProducerRecord, SeekTo, TopicPartition,
};
use sluice_proto::Compression;
use sluice_proto::protocol::{EARLIEST_TIMESTAMP, LATEST_TIMESTAMP};
use tokio::sync::mpsc;

use crate::group::{
    CHURN_EVERY_MIN_S, GroupCtx, GroupFigures, Ledger, RebalanceTime, figures, partition_offsets,
    position_group, start_group,
};
use crate::report::{
    Latency, MachineCpu, cpu_seconds_since, find_listener_pid, latency_histogram, pid_cpu_seconds,
    pid_peak_rss_bytes, process_cpu_seconds, spectrum,
};
use crate::spawn::{BrokerProcess, sluice_binary};
use crate::units::parse_bytes;

/// Deliveries a producer may have outstanding before it waits for the oldest (bounds the
/// bench's own memory next to the client's `buffer_bytes`).
const OUTSTANDING_DELIVERIES_MAX: usize = 1 << 16;
/// Bytes of each value taken by the send timestamp.
pub(crate) const TIMESTAMP_BYTES: u64 = 8;
/// Most distinct keys for `--keys uniform|zipf` (the zipf table holds one f64 per key).
const KEY_SPACE_MAX: u64 = 1 << 20;
/// Record-batch framing per record (about 10 bytes for a keyless record of a few KiB; 16
/// leaves room for a short key), to size batches: 1000 records of 1 KiB then fit the
/// client's 1 MiB up-front batch buffer, which is never copied to a larger one.
const RECORD_OVERHEAD_BYTES: u64 = 16;
/// After the producers finish, consumers give up when nothing new arrives for this long.
const CONSUMER_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// An open-loop run counts as having reached its rate at this fraction of the target.
const RATE_REACHED_FRACTION: f64 = 0.95;
/// Most topics (`--topics`) one run creates.
const TOPICS_MAX: u32 = 10_000;

/// Which workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Producers only.
    Produce,
    /// Consumers read from the beginning (catching up); an empty topic is filled first.
    Consume,
    /// Producers and tailing consumers at once.
    E2e,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Produce => "produce",
            Mode::Consume => "consume",
            Mode::E2e => "e2e",
        }
    }
}

/// `--acks`.
#[derive(Clone, Copy, Debug, ValueEnum, Serialize)]
pub(crate) enum AcksArg {
    /// No acknowledgement.
    #[value(name = "0")]
    #[serde(rename = "0")]
    Zero,
    /// The leader appended.
    #[value(name = "1")]
    #[serde(rename = "1")]
    One,
    /// Committed (durable under the topic's flush policy).
    #[value(name = "all")]
    #[serde(rename = "all")]
    All,
}

/// `--compression`.
#[derive(Clone, Copy, Debug, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum CompressionArg {
    /// None.
    None,
    /// lz4.
    Lz4,
    /// zstd.
    Zstd,
}

/// `--keys`: none (records spread round-robin, `--batch-records` at a time per partition),
/// uniform over `--key-space` keys, or zipf with exponent s (hot keys).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Keys {
    /// No key.
    None,
    /// Uniformly random keys.
    Uniform,
    /// Zipf-distributed keys with this exponent.
    Zipf(f64),
}

fn parse_keys(text: &str) -> Result<Keys, String> {
    match text {
        "none" => Ok(Keys::None),
        "uniform" => Ok(Keys::Uniform),
        "zipf" => Ok(Keys::Zipf(1.0)),
        other => match other.strip_prefix("zipf:").map(str::parse::<f64>) {
            Some(Ok(s)) if s > 0.0 && s.is_finite() => Ok(Keys::Zipf(s)),
            _ => Err(format!(
                "`{other}`: expected none, uniform, zipf or zipf:S (S > 0)"
            )),
        },
    }
}

fn parse_assignor(text: &str) -> Result<Assignor, String> {
    Assignor::from_name(text)
        .ok_or_else(|| format!("`{text}`: expected cooperative-sticky, range or roundrobin"))
}

fn parse_seconds(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let (n, scale) = if let Some(ms) = t.strip_suffix("ms") {
        (ms, 0.001)
    } else if let Some(m) = t.strip_suffix('m') {
        (m, 60.0)
    } else {
        (t.strip_suffix('s').unwrap_or(t), 1.0)
    };
    let v: f64 = n
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (30, 30s, 500ms, 2m)"))?;
    if v.is_finite() && v >= 0.0 {
        Ok(v * scale)
    } else {
        Err(format!("`{text}` is out of range"))
    }
}

/// Where the broker is.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct BrokerArgs {
    /// Broker addresses (default 127.0.0.1:9092 unless --spawn).
    #[arg(long, conflicts_with = "spawn")]
    brokers: Option<String>,
    /// Start a `sluice serve` for this run (the binary next to this one, or --sluice-bin),
    /// in a temporary data directory under --data-dir; stop it and remove the directory after.
    #[arg(long)]
    spawn: bool,
    /// The `sluice` binary for --spawn.
    #[arg(long, requires = "spawn")]
    sluice_bin: Option<PathBuf>,
    /// Where --spawn puts its temporary data directory (default: the system temp dir). Put
    /// it on the disk you want to measure.
    #[arg(long, requires = "spawn")]
    data_dir: Option<PathBuf>,
    /// Shards of the spawned broker (default: the broker's, one per core).
    #[arg(long, requires = "spawn")]
    shards: Option<usize>,
    /// The broker's process id for its CPU and RSS figures with --brokers (default: the
    /// process listening on the first broker's port, if this user may see it).
    #[arg(long, conflicts_with = "spawn")]
    broker_pid: Option<u32>,
}

/// Arguments of `produce`, `consume` and `e2e`.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct LoadArgs {
    #[command(flatten)]
    broker: BrokerArgs,
    /// Topic name (with --topics N > 1: NAME-0 .. NAME-{N-1}).
    #[arg(long, default_value = "sluice-bench")]
    topic: String,
    /// Topics to spread the load over.
    #[arg(long, default_value_t = 1)]
    topics: u32,
    /// Partitions per topic, when the bench creates it (an existing topic keeps its count).
    #[arg(long, default_value_t = 1)]
    partitions: u32,
    /// Topic configs when creating it (`k=v`, repeatable).
    #[arg(long = "config")]
    configs: Vec<String>,
    /// Copies of each partition when the bench creates the topic [default: the broker's,
    /// min(3, brokers) in a cluster].
    #[arg(long)]
    replication_factor: Option<u16>,
    /// Concurrent producers (each its own `Producer`, sharing the connections).
    #[arg(long, default_value_t = 1)]
    producers: usize,
    /// Concurrent consumers (each its own `Consumer`; partitions split between them).
    #[arg(long, default_value_t = 1)]
    consumers: usize,
    /// Consume as the members of this consumer group (`consume`, `e2e`): --consumers members,
    /// each its own `Consumer` subscribed to the topics; the group starts where the run does
    /// (its committed offsets are set first, so it must have no members). Adds the group's
    /// accounting: received, duplicates, gaps, missing, rebalances and their durations.
    #[arg(long)]
    group: Option<String>,
    /// With --group: every S seconds the longest-running member leaves (commit, LeaveGroup)
    /// and a new member joins, to measure rebalances under load (30, 30s, 500ms, 2m).
    #[arg(long, requires = "group", value_parser = parse_seconds)]
    churn_every: Option<f64>,
    /// With --group: the members' only assignor (cooperative-sticky, range, roundrobin);
    /// default: the client's list, cooperative-sticky then range.
    #[arg(long, requires = "group", value_parser = parse_assignor)]
    assignor: Option<Assignor>,
    /// Size of each record's value (at least 8: the send timestamp).
    #[arg(long, default_value = "1KiB", value_parser = parse_bytes)]
    record_bytes: u64,
    /// Records per batch: with --keys none the bench sends this many consecutive records to
    /// one partition, and the client's batch size holds about that many (a few more when
    /// one partition gets every record).
    #[arg(long, default_value_t = 1000)]
    batch_records: u64,
    /// How long the client waits to fill a batch.
    #[arg(long, default_value_t = 2)]
    linger_ms: u64,
    /// Client memory for records not yet acknowledged, per producer (default: the client's
    /// and Kafka's `buffer.memory`). In a closed loop it is the queue every record waits
    /// behind, so it sets the latency figures.
    #[arg(long, default_value = "32MiB", value_parser = parse_bytes)]
    buffer_bytes: u64,
    /// Produce requests in flight per partition.
    #[arg(long, default_value_t = 5)]
    in_flight: usize,
    /// Acknowledgement level.
    #[arg(long, value_enum, default_value = "all")]
    acks: AcksArg,
    /// Batch compression.
    #[arg(long, value_enum, default_value = "none")]
    compression: CompressionArg,
    /// Key distribution: none, uniform, zipf or zipf:S.
    #[arg(long, default_value = "none", value_parser = parse_keys)]
    keys: Keys,
    /// Distinct keys for uniform and zipf.
    #[arg(long, default_value_t = 10_000)]
    key_space: u64,
    /// Bytes of record values to produce (default 1GiB unless --duration is given).
    #[arg(long, value_parser = parse_bytes)]
    total_bytes: Option<u64>,
    /// Stop producing after this long (30, 30s, 500ms, 2m); with --total-bytes, whichever
    /// comes first.
    #[arg(long, value_parser = parse_seconds)]
    duration: Option<f64>,
    /// Records sent in the first part of the run are not measured.
    #[arg(long, value_parser = parse_seconds, default_value = "0")]
    warmup: f64,
    /// Open loop: records per second in all, on a fixed schedule.
    #[arg(long)]
    rate: Option<f64>,
    /// Send everything to the bootstrap address and let the broker forward between shards.
    #[arg(long)]
    no_shard_aware: bool,
    /// Worker threads of the load generator's runtime [default: one per producer and
    /// consumer, at most the machine's cores]. On a machine it shares with the broker, every
    /// extra thread's hand-offs cost CPU the broker could have used.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Write the latency histogram (HdrHistogram V2, produce-to-ack; in e2e the end-to-end
    /// one goes to FILE.e2e).
    #[arg(long)]
    hdr_out: Option<PathBuf>,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
    /// A name for this run in the JSON and in plots.
    #[arg(long)]
    label: Option<String>,
}

/// Lets the suite build [`LoadArgs`] from flags, exactly as on the command line.
#[derive(Parser)]
#[command(no_binary_name = true)]
struct LoadCli {
    #[command(flatten)]
    args: LoadArgs,
}

impl LoadArgs {
    /// Parses flags (without a program name).
    pub(crate) fn from_flags<I: IntoIterator<Item = String>>(flags: I) -> Result<Self, String> {
        LoadCli::try_parse_from(flags)
            .map(|c| c.args)
            .map_err(|e| e.to_string())
    }
}

/// The result of one run: one JSON object with stable keys.
#[derive(Debug, Serialize)]
pub(crate) struct LoadOutput {
    /// `produce`, `consume` or `e2e`.
    pub bench: &'static str,
    /// `--label`, or a summary of the parameters.
    pub label: String,
    /// `closed` or `open`.
    pub loop_mode: &'static str,
    /// Open loop: the target records/s.
    pub target_rate: Option<f64>,
    /// Open loop: whether the achieved rate was at least 95% of the target.
    pub rate_reached: Option<bool>,
    pub topics: u32,
    pub partitions: u32,
    pub producers: usize,
    pub consumers: usize,
    /// Worker threads of the load generator's runtime (`--threads`).
    pub bench_threads: usize,
    pub acks: AcksArg,
    pub compression: CompressionArg,
    pub keys: String,
    pub record_bytes: u64,
    pub batch_records: u64,
    pub linger_ms: u64,
    pub shard_aware: bool,
    pub warmup_s: f64,
    /// Records measured (after the warm-up): produced and acknowledged, or consumed in
    /// `consume`.
    pub records: u64,
    /// Value bytes of `records`.
    pub bytes: u64,
    pub errors: u64,
    /// Measured interval.
    pub elapsed_s: f64,
    pub records_per_s: f64,
    /// MB = 10^6 bytes of record values.
    pub mb_per_s: f64,
    /// Produce-to-acknowledgement latency (µs); null in `consume`.
    pub p50_us: Option<u64>,
    pub p90_us: Option<u64>,
    pub p99_us: Option<u64>,
    pub p999_us: Option<u64>,
    pub p9999_us: Option<u64>,
    pub max_us: Option<u64>,
    /// Records consumed (measured) and their throughput, in `consume` and `e2e`.
    pub consumed_records: u64,
    pub consume_mb_per_s: Option<f64>,
    /// End-to-end (produce to consume) latency in `e2e` (µs).
    pub e2e_p50_us: Option<u64>,
    pub e2e_p90_us: Option<u64>,
    pub e2e_p99_us: Option<u64>,
    pub e2e_p999_us: Option<u64>,
    pub e2e_p9999_us: Option<u64>,
    pub e2e_max_us: Option<u64>,
    /// Open loop: the load generator's own delay (µs), from a record's intended send time
    /// until `send` handed it to the client (pacing, waiting for a CPU, for the producer's
    /// lock or for room in its buffer). Part of the produce-to-ack latency above; null in a
    /// closed loop.
    pub send_delay_p50_us: Option<u64>,
    pub send_delay_p99_us: Option<u64>,
    pub send_delay_p999_us: Option<u64>,
    pub send_delay_max_us: Option<u64>,
    /// CPU seconds of the bench process in the measured interval.
    pub bench_cpu_s: Option<f64>,
    /// CPU seconds of the broker process in the measured interval.
    pub broker_cpu_s: Option<f64>,
    /// CPU seconds per GB (10^9 bytes of values) moved.
    pub bench_cpu_s_per_gb: Option<f64>,
    pub broker_cpu_s_per_gb: Option<f64>,
    /// The whole machine's CPU over the run (/proc/stat), in % of all its cores: busy, and
    /// stolen by the hypervisor (on a virtual machine, time no thread of it ran; latency
    /// includes it).
    pub machine_cpu_busy_pct: Option<f64>,
    pub machine_cpu_steal_pct: Option<f64>,
    /// The broker's peak resident set size (VmHWM) at the end of the run.
    pub broker_peak_rss_bytes: Option<u64>,
    /// How the broker's pid was found: spawn, flag, port, or unavailable.
    pub broker_pid_source: &'static str,
    /// `--group`: the consumer group the consumers were members of (the group fields below
    /// are null without it).
    pub group: Option<String>,
    /// `--churn-every`, seconds.
    pub churn_every_s: Option<f64>,
    /// `--assignor` (null: the client's default list).
    pub assignor: Option<&'static str>,
    /// How long the initial members took to form the group (before the measured interval).
    pub group_formed_ms: Option<f64>,
    /// Members started in all (the initial ones and those churned in).
    pub members_started: Option<u64>,
    /// Records delivered to the group's members, duplicates included.
    pub received: Option<u64>,
    /// Deliveries of an offset at or below the highest one already delivered in its
    /// partition (to any member).
    pub duplicates: Option<u64>,
    /// Offsets skipped: a delivery above the next expected offset of its partition.
    pub gaps: Option<u64>,
    /// Offsets never delivered between the highest delivered and the partition's end (the
    /// end at start in `consume`, once the producers finished in `e2e`).
    pub missing: Option<u64>,
    /// Rebalances: generations after the one the group formed with.
    pub rebalances: Option<u64>,
    /// The longest and the median rebalance: from the first member starting to rejoin (or
    /// a churned member starting to leave) to the last member back with the new generation.
    pub rebalance_ms_max: Option<f64>,
    pub rebalance_ms_p50: Option<f64>,
    /// Each timed rebalance (at most `REBALANCES_TRACKED_MAX`).
    pub rebalance_times: Vec<RebalanceTime>,
    /// `[percentile, µs]` points of the produce-to-ack latency, for plots.
    pub spectrum: Vec<[f64; 2]>,
    /// The same for end-to-end latency.
    pub e2e_spectrum: Vec<[f64; 2]>,
}

/// Counters the progress line reads.
#[derive(Default)]
pub(crate) struct Counters {
    sent: AtomicU64,
    acked: AtomicU64,
    /// Records consumed (with `--group`: first deliveries only).
    pub(crate) consumed: AtomicU64,
    errors: AtomicU64,
    pub(crate) producers_done: AtomicBool,
}

/// One producer's result.
struct ProducerResult {
    histogram: Histogram<u64>,
    /// Open loop: intended send time to `send` returning (see `LoadOutput::send_delay_p50_us`).
    send_delay: Histogram<u64>,
    measured: u64,
    errors: u64,
    first_error: Option<String>,
    last_ack: Instant,
}

/// One consumer's result.
pub(crate) struct ConsumerResult {
    pub(crate) histogram: Histogram<u64>,
    pub(crate) measured: u64,
    pub(crate) measured_bytes: u64,
    pub(crate) first: Option<Instant>,
    pub(crate) last: Option<Instant>,
}

impl ConsumerResult {
    /// An empty result with the load generator's latency histogram.
    pub(crate) fn new() -> Self {
        ConsumerResult {
            histogram: latency_histogram(),
            measured: 0,
            measured_bytes: 0,
            first: None,
            last: None,
        }
    }

    /// Counts one delivered record's value: every record in `consume` mode; in `e2e` mode those
    /// sent after the warm-up (`measure_from_ns`), with their end-to-end latency, taken from
    /// the send time in the value's first bytes, recorded in the histogram.
    pub(crate) fn measure(
        &mut self,
        mode: Mode,
        value: &[u8],
        measure_from_ns: u64,
        now_ns: u64,
    ) -> Result<(), String> {
        let sent_ns = value
            .get(..TIMESTAMP_BYTES as usize)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes);
        match (mode, sent_ns) {
            (Mode::Consume, _) => {
                self.measured += 1;
                self.measured_bytes += value.len() as u64;
            }
            (_, Some(sent)) if sent >= measure_from_ns => {
                self.measured += 1;
                self.measured_bytes += value.len() as u64;
                let us = (now_ns.saturating_sub(sent) / 1000).max(1);
                self.histogram.record(us).map_err(|e| e.to_string())?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Adds another consumer's result to this one.
    pub(crate) fn merge(&mut self, other: ConsumerResult) -> Result<(), String> {
        self.histogram
            .add(&other.histogram)
            .map_err(|e| e.to_string())?;
        self.measured += other.measured;
        self.measured_bytes += other.measured_bytes;
        self.first = match (self.first, other.first) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last = self.last.max(other.last);
        Ok(())
    }
}

/// splitmix64: a small, fast generator for keys (no statistical claims beyond that).
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Draws keys from `--keys`.
struct KeyGen {
    keys: Keys,
    space: u64,
    /// Zipf: cumulative probabilities of ranks 1..=space.
    cdf: Vec<f64>,
}

impl KeyGen {
    fn new(keys: Keys, space: u64) -> KeyGen {
        let cdf = match keys {
            Keys::Zipf(s) => {
                let mut acc = 0.0;
                let mut cdf: Vec<f64> = (1..=space)
                    .map(|k| {
                        acc += 1.0 / (k as f64).powf(s);
                        acc
                    })
                    .collect();
                for c in &mut cdf {
                    *c /= acc;
                }
                cdf
            }
            _ => Vec::new(),
        };
        KeyGen { keys, space, cdf }
    }

    fn key(&self, rng: &mut Rng) -> Option<Bytes> {
        let k = match self.keys {
            Keys::None => return None,
            Keys::Uniform => rng.next_u64() % self.space,
            Keys::Zipf(_) => {
                let u = rng.next_f64();
                self.cdf.partition_point(|&c| c < u) as u64
            }
        };
        Some(Bytes::from(format!("key-{k}")))
    }
}

pub(crate) fn unix_nanos(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Maps the run's monotonic instants to wall-clock time (the timestamps in records).
#[derive(Clone, Copy)]
pub(crate) struct Clock {
    start: Instant,
    start_unix_ns: u64,
}

impl Clock {
    pub(crate) fn unix_ns(&self, at: Instant) -> u64 {
        self.start_unix_ns + at.saturating_duration_since(self.start).as_nanos() as u64
    }
}

/// `--threads`, or one worker per producer and consumer of `mode`, at most the machine's
/// cores.
fn worker_threads(mode: Mode, args: &LoadArgs) -> usize {
    if let Some(n) = args.threads {
        return usize::from(n);
    }
    let (producers, consumers) = clients(mode, args);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (producers + consumers).clamp(1, cores)
}

/// The producers and consumers `mode` runs: (producers, consumers).
fn clients(mode: Mode, args: &LoadArgs) -> (usize, usize) {
    let producers = if mode == Mode::Consume {
        0
    } else {
        args.producers
    };
    let consumers = if mode == Mode::Produce {
        0
    } else {
        args.consumers
    };
    (producers, consumers)
}

fn runtime(threads: usize) -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))
}

/// Runs one workload from the command line and prints its result.
pub(crate) fn run_cli(mode: Mode, args: LoadArgs) -> Result<(), String> {
    let out = run(mode, &args)?;
    print(&out, args.json)?;
    if out.errors > 0 {
        return Err(format!("{} records were not acknowledged", out.errors));
    }
    if out.rate_reached == Some(false) {
        eprintln!(
            "sluice-bench: the target rate {:.0} records/s was NOT reached ({:.0} records/s)",
            out.target_rate.unwrap_or(0.0),
            out.records_per_s
        );
    }
    Ok(())
}

/// Runs one workload (starting and stopping a broker with --spawn) and returns its result.
pub(crate) fn run(mode: Mode, args: &LoadArgs) -> Result<LoadOutput, String> {
    validate(mode, args)?;
    let broker = if args.broker.spawn {
        let bin = sluice_binary(args.broker.sluice_bin.as_deref())?;
        Some(BrokerProcess::start(
            &bin,
            args.broker.data_dir.as_deref(),
            args.broker.shards,
        )?)
    } else {
        None
    };
    let brokers = match &broker {
        Some(b) => b.addr.clone(),
        None => args
            .broker
            .brokers
            .clone()
            .unwrap_or_else(|| "127.0.0.1:9092".into()),
    };
    let (broker_pid, pid_source) = match (&broker, args.broker.broker_pid) {
        (Some(b), _) => (Some(b.pid()), "spawn"),
        (None, Some(pid)) => (Some(pid), "flag"),
        (None, None) => {
            let port = brokers
                .split(',')
                .next()
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse::<u16>().ok());
            match port.and_then(find_listener_pid) {
                Some(pid) => (Some(pid), "port"),
                None => (None, "unavailable"),
            }
        }
    };
    let rt = runtime(worker_threads(mode, args))?;
    let result = rt.block_on(async {
        tokio::select! {
            r = workload(mode, args, &brokers, broker_pid, pid_source) => r,
            _ = tokio::signal::ctrl_c() => Err("interrupted".to_string()),
        }
    });
    // The runtime goes first (its tasks hold connections), then the broker (Drop).
    rt.shutdown_timeout(Duration::from_secs(2));
    drop(broker);
    result
}

fn validate(mode: Mode, args: &LoadArgs) -> Result<(), String> {
    if args.record_bytes < TIMESTAMP_BYTES {
        return Err(format!(
            "--record-bytes must be at least {TIMESTAMP_BYTES} (the send timestamp)"
        ));
    }
    if args.producers == 0 && mode != Mode::Consume {
        return Err("--producers must be at least 1".into());
    }
    if args.consumers == 0 && mode != Mode::Produce {
        return Err("--consumers must be at least 1".into());
    }
    if args.group.is_some() && mode == Mode::Produce {
        return Err("--group is for consume and e2e".into());
    }
    if args.churn_every.is_some_and(|s| s < CHURN_EVERY_MIN_S) {
        return Err(format!(
            "--churn-every must be at least {CHURN_EVERY_MIN_S} s"
        ));
    }
    if args.topics == 0 || args.topics > TOPICS_MAX {
        return Err(format!("--topics must be 1..={TOPICS_MAX}"));
    }
    if args.partitions == 0 || args.batch_records == 0 {
        return Err("--partitions and --batch-records must be at least 1".into());
    }
    if args.keys != Keys::None && !(1..=KEY_SPACE_MAX).contains(&args.key_space) {
        return Err(format!("--key-space must be 1..={KEY_SPACE_MAX}"));
    }
    if let Some(rate) = args.rate
        && !(rate > 0.0 && rate.is_finite())
    {
        return Err("--rate must be a positive number of records per second".into());
    }
    Ok(())
}

fn topic_names(args: &LoadArgs) -> Vec<String> {
    if args.topics == 1 {
        vec![args.topic.clone()]
    } else {
        (0..args.topics)
            .map(|i| format!("{}-{i}", args.topic))
            .collect()
    }
}

async fn connect(brokers: &str, args: &LoadArgs) -> Result<Client, String> {
    let mut config = ClientConfig::new(brokers);
    config.client_id = "sluice-bench".into();
    config.shard_aware = !args.no_shard_aware;
    Client::connect(config).await.map_err(|e| e.to_string())
}

async fn ensure_topic(
    client: &Client,
    topic: &str,
    partitions: u32,
    replication_factor: Option<u16>,
    configs: &[String],
) -> Result<u32, String> {
    if let Ok(count) = client.partition_count(topic).await {
        return Ok(count);
    }
    let configs = configs
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| format!("config `{kv}` is not k=v"))
        })
        .collect::<Result<Vec<_>, String>>()?;
    client
        .create_topic_replicated(topic, partitions, replication_factor, &configs)
        .await
        .map_err(|e| format!("create topic {topic}: {e}"))?;
    client
        .partition_count(topic)
        .await
        .map_err(|e| e.to_string())
}

fn producer_config(args: &LoadArgs) -> ProducerConfig {
    ProducerConfig {
        acks: match args.acks {
            AcksArg::Zero => Acks::None,
            AcksArg::One => Acks::Leader,
            AcksArg::All => Acks::All,
        },
        linger: Duration::from_millis(args.linger_ms),
        // Room for about --batch-records records of this size.
        batch_bytes: (args.batch_records * (args.record_bytes + RECORD_OVERHEAD_BYTES)) as usize,
        buffer_bytes: args.buffer_bytes as usize,
        max_in_flight_per_partition: args.in_flight,
        compression: match args.compression {
            CompressionArg::None => Compression::None,
            CompressionArg::Lz4 => Compression::Lz4,
            CompressionArg::Zstd => Compression::Zstd,
        },
        ..ProducerConfig::default()
    }
}

/// What producers send: the schedule and where records go.
pub(crate) struct Plan {
    topics: Vec<String>,
    /// Every (topic index, partition).
    targets: Vec<(usize, u32)>,
    total_records: Option<u64>,
    deadline: Option<Instant>,
    /// Records sent before this are not measured.
    pub(crate) measure_from: Instant,
    pub(crate) clock: Clock,
}

async fn workload(
    mode: Mode,
    args: &LoadArgs,
    brokers: &str,
    broker_pid: Option<u32>,
    pid_source: &'static str,
) -> Result<LoadOutput, String> {
    let client = connect(brokers, args).await?;
    let topics = topic_names(args);
    let mut targets = Vec::new();
    let mut partitions = 0;
    for (t, topic) in topics.iter().enumerate() {
        let count = ensure_topic(
            &client,
            topic,
            args.partitions,
            args.replication_factor,
            &args.configs,
        )
        .await?;
        partitions = partitions.max(count);
        targets.extend((0..count).map(|p| (t, p)));
    }
    let total_bytes = match (args.total_bytes, args.duration) {
        (None, None) => Some(1 << 30),
        (t, _) => t,
    };
    let total_records = total_bytes.map(|b| b.div_ceil(args.record_bytes));

    if mode == Mode::Consume {
        let available = available_records(&client, &topics, &targets).await?;
        if available == 0 {
            // Fill the topic first (not measured), then read it back from the beginning.
            if !args.quiet {
                eprintln!("sluice-bench: the topic is empty; filling it first (not measured)");
            }
            let clock = Clock {
                start: Instant::now(),
                start_unix_ns: unix_nanos(SystemTime::now()),
            };
            let plan = Arc::new(Plan {
                topics: topics.clone(),
                targets: targets.clone(),
                total_records,
                deadline: args
                    .duration
                    .map(|d| clock.start + Duration::from_secs_f64(d)),
                measure_from: clock.start,
                clock,
            });
            let counters = Arc::new(Counters::default());
            let mut closed = args.clone();
            closed.rate = None;
            let results = run_producers(&client, &closed, &plan, &counters).await?;
            if let Some(e) = results.iter().find_map(|r| r.first_error.clone()) {
                return Err(format!("filling the topic failed: {e}"));
            }
        }
    }

    let clock = Clock {
        start: Instant::now(),
        start_unix_ns: unix_nanos(SystemTime::now()),
    };
    let plan = Arc::new(Plan {
        topics: topics.clone(),
        targets: targets.clone(),
        total_records,
        deadline: args
            .duration
            .map(|d| clock.start + Duration::from_secs_f64(args.warmup + d)),
        measure_from: clock.start + Duration::from_secs_f64(args.warmup),
        clock,
    });
    let counters = Arc::new(Counters::default());
    let group = match &args.group {
        Some(g) if mode != Mode::Produce => Some(Arc::new(
            prepare_group(mode, &client, g, args.assignor, &plan).await?,
        )),
        _ => None,
    };
    let mut group_formed: Option<Duration> = None;
    let consumers = match (&group, mode) {
        (_, Mode::Produce) => Vec::new(),
        (Some(ctx), _) => {
            let (run, formed) = start_group(
                client.clone(),
                mode,
                args.consumers,
                Arc::clone(ctx),
                Arc::clone(&plan),
                Arc::clone(&counters),
            )
            .await?;
            group_formed = Some(formed);
            if !args.quiet {
                eprintln!(
                    "sluice-bench: group {} formed with {} members in {} ms",
                    ctx.group,
                    args.consumers,
                    formed.as_millis()
                );
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            let churn_every = args.churn_every;
            tokio::spawn(async move {
                let _ = tx.send(run.run(churn_every).await);
            });
            vec![rx]
        }
        (None, _) => start_consumers(mode, &client, args, &plan, &counters).await?,
    };
    // CPU counts from the end of the warm-up, like the bytes they are divided by.
    let cpu_at_start = CpuReading::now(broker_pid);
    let measure_from = plan.measure_from;
    let cpu_after_warmup = tokio::spawn(async move {
        tokio::time::sleep_until(measure_from.into()).await;
        CpuReading::now(broker_pid)
    });
    let progress = (!args.quiet).then(|| tokio::spawn(progress(Arc::clone(&counters), mode)));
    let started = Instant::now();
    let producer_results = if mode == Mode::Consume {
        counters.producers_done.store(true, Ordering::SeqCst);
        Vec::new()
    } else {
        let r = run_producers(&client, args, &plan, &counters).await;
        counters.producers_done.store(true, Ordering::SeqCst);
        if let Some(ctx) = &group {
            // Everything produced is in the logs now: the group reads up to these ends.
            let parts = group_partitions(&plan);
            ctx.ledger
                .set_ends(&partition_offsets(&client, &parts, LATEST_TIMESTAMP).await?);
            ctx.ledger.touch();
        }
        r?
    };
    let produced_end = Instant::now();
    let mut consumer_results = Vec::new();
    for task in consumers {
        consumer_results.push(
            task.await
                .map_err(|_| "a consumer thread died".to_string())??,
        );
    }
    let end = Instant::now();
    if let Some(p) = progress {
        p.abort();
    }
    let cpu_before = if cpu_after_warmup.is_finished() {
        cpu_after_warmup.await.unwrap_or(cpu_at_start)
    } else {
        // The run ended within its warm-up (nothing was measured).
        cpu_after_warmup.abort();
        cpu_at_start
    };
    let bench_cpu = cpu_seconds_since(cpu_before.bench);
    let machine_cpu = cpu_before
        .machine
        .zip(MachineCpu::now())
        .and_then(|(a, b)| a.busy_and_steal_pct(b));
    let broker_cpu = broker_pid
        .and_then(pid_cpu_seconds)
        .zip(cpu_before.broker)
        .map(|(a, b)| a - b);
    let broker_peak_rss_bytes = broker_pid.and_then(pid_peak_rss_bytes);
    let group_figures: Option<GroupFigures> = group.as_deref().map(figures);
    if let Some(g) = &group_figures {
        let t = &g.totals;
        if t.gaps > 0 || t.missing > 0 || t.unexpected > 0 {
            eprintln!(
                "sluice-bench: the group skipped {} offsets and never got {} records ({} from \
                 partitions it does not read)",
                t.gaps, t.missing, t.unexpected
            );
        }
    }
    let rebalance_ms: Vec<f64> = group_figures.as_ref().map_or_else(Vec::new, |g| {
        let mut v: Vec<f64> = g.rebalances.iter().map(|r| r.ms).collect();
        v.sort_by(f64::total_cmp);
        v
    });

    let mut ack = latency_histogram();
    let mut send_delay = latency_histogram();
    let mut errors = 0;
    let mut first_error = None;
    let mut produced = 0;
    let mut last_ack = started;
    for r in &producer_results {
        ack.add(&r.histogram).map_err(|e| e.to_string())?;
        send_delay.add(&r.send_delay).map_err(|e| e.to_string())?;
        errors += r.errors;
        produced += r.measured;
        last_ack = last_ack.max(r.last_ack);
        if first_error.is_none() {
            first_error.clone_from(&r.first_error);
        }
    }
    if let Some(e) = &first_error {
        eprintln!("sluice-bench: {errors} records failed; first error: {e}");
    }
    let mut e2e = latency_histogram();
    let (mut consumed, mut consumed_bytes) = (0u64, 0u64);
    let (mut c_first, mut c_last): (Option<Instant>, Option<Instant>) = (None, None);
    for r in &consumer_results {
        e2e.add(&r.histogram).map_err(|e| e.to_string())?;
        consumed += r.measured;
        consumed_bytes += r.measured_bytes;
        c_first = match (c_first, r.first) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        c_last = c_last.max(r.last);
    }
    let measure_from = plan.measure_from.max(started);
    let (records, elapsed) = match mode {
        Mode::Consume => (
            consumed,
            c_last
                .zip(Some(started))
                .map_or(end - started, |(l, s)| l.saturating_duration_since(s)),
        ),
        _ => (
            produced,
            produced_end
                .max(last_ack)
                .saturating_duration_since(measure_from),
        ),
    };
    let elapsed_s = elapsed.as_secs_f64().max(1e-9);
    let bytes = records * args.record_bytes;
    let consume_elapsed = match mode {
        Mode::Consume => Some(elapsed_s),
        Mode::E2e => c_last.map(|l| l.saturating_duration_since(measure_from).as_secs_f64()),
        Mode::Produce => None,
    };
    let gb = bytes as f64 / 1e9;
    let records_per_s = records as f64 / elapsed_s;
    let rate_reached = args
        .rate
        .filter(|_| mode != Mode::Consume)
        .map(|rate| records_per_s >= rate * RATE_REACHED_FRACTION);
    let latency = (!ack.is_empty()).then(|| Latency::of(&ack));
    let e2e_latency = (!e2e.is_empty()).then(|| Latency::of(&e2e));
    let send_delay = (!send_delay.is_empty()).then(|| Latency::of(&send_delay));
    if let Some(path) = &args.hdr_out {
        if mode != Mode::Consume {
            write_hdr(path, &ack)?;
        }
        if mode == Mode::E2e {
            let mut p = path.clone().into_os_string();
            p.push(".e2e");
            write_hdr(&PathBuf::from(p), &e2e)?;
        }
    }
    let keys = match args.keys {
        Keys::None => "none".to_string(),
        Keys::Uniform => "uniform".to_string(),
        Keys::Zipf(s) => format!("zipf:{s}"),
    };
    let label = args.label.clone().unwrap_or_else(|| {
        format!(
            "{} p{} {}B acks={}{}",
            mode.name(),
            partitions as usize * topics.len(),
            args.record_bytes,
            match args.acks {
                AcksArg::Zero => "0",
                AcksArg::One => "1",
                AcksArg::All => "all",
            },
            args.rate.map_or(String::new(), |r| format!(" rate={r:.0}"))
        )
    });
    Ok(LoadOutput {
        bench: mode.name(),
        label,
        loop_mode: if args.rate.is_some() {
            "open"
        } else {
            "closed"
        },
        target_rate: args.rate,
        rate_reached,
        topics: args.topics,
        partitions,
        producers: clients(mode, args).0,
        consumers: clients(mode, args).1,
        bench_threads: tokio::runtime::Handle::current().metrics().num_workers(),
        acks: args.acks,
        compression: args.compression,
        keys,
        record_bytes: args.record_bytes,
        batch_records: args.batch_records,
        linger_ms: args.linger_ms,
        shard_aware: !args.no_shard_aware,
        warmup_s: args.warmup,
        records,
        bytes,
        errors,
        elapsed_s,
        records_per_s,
        mb_per_s: bytes as f64 / elapsed_s / 1e6,
        p50_us: latency.map(|l| l.p50_us),
        p90_us: latency.map(|l| l.p90_us),
        p99_us: latency.map(|l| l.p99_us),
        p999_us: latency.map(|l| l.p999_us),
        p9999_us: latency.map(|l| l.p9999_us),
        max_us: latency.map(|l| l.max_us),
        consumed_records: consumed,
        consume_mb_per_s: consume_elapsed.map(|s| consumed_bytes as f64 / s.max(1e-9) / 1e6),
        e2e_p50_us: e2e_latency.map(|l| l.p50_us),
        e2e_p90_us: e2e_latency.map(|l| l.p90_us),
        e2e_p99_us: e2e_latency.map(|l| l.p99_us),
        e2e_p999_us: e2e_latency.map(|l| l.p999_us),
        e2e_p9999_us: e2e_latency.map(|l| l.p9999_us),
        e2e_max_us: e2e_latency.map(|l| l.max_us),
        send_delay_p50_us: send_delay.map(|l| l.p50_us),
        send_delay_p99_us: send_delay.map(|l| l.p99_us),
        send_delay_p999_us: send_delay.map(|l| l.p999_us),
        send_delay_max_us: send_delay.map(|l| l.max_us),
        bench_cpu_s: bench_cpu,
        broker_cpu_s: broker_cpu,
        bench_cpu_s_per_gb: bench_cpu.filter(|_| gb > 0.0).map(|c| c / gb),
        broker_cpu_s_per_gb: broker_cpu.filter(|_| gb > 0.0).map(|c| c / gb),
        machine_cpu_busy_pct: machine_cpu.map(|(busy, _)| busy),
        machine_cpu_steal_pct: machine_cpu.map(|(_, steal)| steal),
        broker_peak_rss_bytes,
        broker_pid_source: pid_source,
        group: group.as_ref().map(|g| g.group.clone()),
        churn_every_s: args.churn_every.filter(|_| group.is_some()),
        assignor: args
            .assignor
            .filter(|_| group.is_some())
            .map(Assignor::name),
        group_formed_ms: group_formed.map(|d| d.as_secs_f64() * 1e3),
        members_started: group_figures.as_ref().map(|g| g.members_started),
        received: group_figures.as_ref().map(|g| g.totals.received),
        duplicates: group_figures.as_ref().map(|g| g.totals.duplicates),
        gaps: group_figures.as_ref().map(|g| g.totals.gaps),
        missing: group_figures.as_ref().map(|g| g.totals.missing),
        rebalances: group_figures
            .as_ref()
            .map(|g| g.rebalances.len() as u64 + g.untimed),
        rebalance_ms_max: rebalance_ms.last().copied(),
        rebalance_ms_p50: rebalance_ms.get(rebalance_ms.len() / 2).copied(),
        rebalance_times: group_figures.map_or_else(Vec::new, |g| g.rebalances),
        spectrum: spectrum(&ack),
        e2e_spectrum: spectrum(&e2e),
    })
}

/// Every partition of the run, in the plan's order.
fn group_partitions(plan: &Plan) -> Vec<TopicPartition> {
    plan.targets
        .iter()
        .map(|&(t, p)| TopicPartition::new(plan.topics[t].clone(), p))
        .collect()
}

/// `--group`: the group's committed offsets set to the ends (nothing to read while it
/// forms), and the accounting's starting points (consume: the first offsets, with the ends
/// now as the run's ends; e2e: the ends now, before the producers start).
async fn prepare_group(
    mode: Mode,
    client: &Client,
    group: &str,
    assignor: Option<Assignor>,
    plan: &Plan,
) -> Result<GroupCtx, String> {
    let parts = group_partitions(plan);
    let ends = partition_offsets(client, &parts, LATEST_TIMESTAMP).await?;
    let starts = if mode == Mode::Consume {
        partition_offsets(client, &parts, EARLIEST_TIMESTAMP).await?
    } else {
        ends.clone()
    };
    position_group(client, group, &parts, &ends).await?;
    let ledger = Ledger::new(parts, &starts);
    if mode == Mode::Consume {
        ledger.set_ends(&ends);
    }
    Ok(GroupCtx::new(
        group.to_owned(),
        assignor,
        plan.topics.clone(),
        ledger,
    ))
}

fn write_hdr(path: &std::path::Path, h: &Histogram<u64>) -> Result<(), String> {
    use hdrhistogram::serialization::{Serializer, V2Serializer};
    let mut file = std::fs::File::create(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    V2Serializer::new()
        .serialize(h, &mut file)
        .map_err(|e| format!("cannot write {}: {e:?}", path.display()))?;
    Ok(())
}

async fn available_records(
    client: &Client,
    topics: &[String],
    targets: &[(usize, u32)],
) -> Result<u64, String> {
    let mut available = 0;
    for &(t, p) in targets {
        let start = client
            .list_offset(&topics[t], p, sluice_proto::protocol::EARLIEST_TIMESTAMP)
            .await
            .map_err(|e| e.to_string())?;
        let end = client
            .list_offset(&topics[t], p, sluice_proto::protocol::LATEST_TIMESTAMP)
            .await
            .map_err(|e| e.to_string())?;
        available += end.saturating_sub(start);
    }
    Ok(available)
}

async fn run_producers(
    client: &Client,
    args: &LoadArgs,
    plan: &Arc<Plan>,
    counters: &Arc<Counters>,
) -> Result<Vec<ProducerResult>, String> {
    let config = producer_config(args);
    let producers = args.producers as u64;
    let mut tasks = Vec::new();
    for p in 0..producers {
        let producer = Producer::new(client.clone(), config.clone());
        let plan = Arc::clone(plan);
        let counters = Arc::clone(counters);
        let count = plan
            .total_records
            .map(|n| n / producers + u64::from(p < n % producers));
        let rate = args.rate.map(|r| r / producers as f64);
        let keygen = KeyGen::new(args.keys, args.key_space);
        let record_bytes = args.record_bytes as usize;
        let batch_records = args.batch_records;
        tasks.push(tokio::spawn(async move {
            produce_one(
                producer,
                p,
                producers,
                count,
                rate,
                keygen,
                record_bytes,
                batch_records,
                plan,
                counters,
            )
            .await
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.map_err(|e| e.to_string())??);
    }
    Ok(results)
}

#[allow(clippy::too_many_arguments)]
async fn produce_one(
    producer: Producer,
    p: u64,
    producers: u64,
    count: Option<u64>,
    rate: Option<f64>,
    keygen: KeyGen,
    record_bytes: usize,
    batch_records: u64,
    plan: Arc<Plan>,
    counters: Arc<Counters>,
) -> Result<ProducerResult, String> {
    let (tx, mut rx) = mpsc::channel::<Vec<Delivery>>(OUTSTANDING_DELIVERIES_MAX / DELIVERY_CHUNK);
    let measure_from = plan.measure_from;
    let collector_counters = Arc::clone(&counters);
    let collector = tokio::spawn(async move {
        let mut result = ProducerResult {
            histogram: latency_histogram(),
            send_delay: latency_histogram(),
            measured: 0,
            errors: 0,
            first_error: None,
            last_ack: Instant::now(),
        };
        while let Some(chunk) = rx.recv().await {
            for Delivery {
                intended,
                handed,
                future,
            } in chunk
            {
                match future.await {
                    Ok(_) => {
                        let now = Instant::now();
                        collector_counters.acked.fetch_add(1, Ordering::Relaxed);
                        if intended >= measure_from {
                            let us = now.saturating_duration_since(intended).as_micros().max(1);
                            result
                                .histogram
                                .record(us as u64)
                                .map_err(|e| e.to_string())?;
                            if let Some(handed) = handed {
                                let us = handed.saturating_duration_since(intended).as_micros();
                                result
                                    .send_delay
                                    .record((us as u64).max(1))
                                    .map_err(|e| e.to_string())?;
                            }
                            result.measured += 1;
                            result.last_ack = now;
                        }
                    }
                    Err(e) => {
                        result.errors += 1;
                        collector_counters.errors.fetch_add(1, Ordering::Relaxed);
                        result.first_error.get_or_insert(e.to_string());
                    }
                }
            }
        }
        Ok::<_, String>(result)
    });
    let mut records = RecordSource {
        template: vec![b'x'; record_bytes],
        slab: BytesMut::new(),
        rng: Rng(0x5eed ^ (p << 32)),
        keygen,
        // Producers start at different partitions so they do not all fill the same batches.
        offset: p * plan.targets.len() as u64 / producers,
        batch_records,
        p,
        plan: Arc::clone(&plan),
    };
    let send_error = match rate {
        None => {
            // Owned here, so the collector sees the channel close when the loop ends.
            let tx = tx;
            let mut chunk: Vec<Delivery> = Vec::with_capacity(DELIVERY_CHUNK);
            let mut i = 0u64;
            let stop = loop {
                if count.is_some_and(|c| i >= c) {
                    break None;
                }
                let intended = Instant::now();
                if plan.deadline.is_some_and(|d| intended >= d) {
                    break None;
                }
                let record = records.record(i, intended);
                let sent = send_tracked(&producer, record, intended, false, &tx, &mut chunk);
                if let Err(stop) = sent.await {
                    break stop;
                }
                counters.sent.fetch_add(1, Ordering::Relaxed);
                i += 1;
            };
            hand_over(&tx, &mut chunk).await;
            stop
        }
        Some(rate) => {
            // tokio's timers have millisecond resolution: a paced loop on them would send
            // records up to a millisecond after their intended time, in bursts, and count
            // that as the broker's latency. A thread of its own sleeps with the kernel's
            // resolution (plus its ~50 µs timer slack).
            let handle = tokio::runtime::Handle::current();
            let producer = producer.clone();
            let counters = Arc::clone(&counters);
            let plan = Arc::clone(&plan);
            tokio::task::spawn_blocking(move || {
                let start = plan.clock.start;
                let at = |i: u64| start + Duration::from_secs_f64(i as f64 / rate);
                let mut i = 0u64;
                let mut last_wake = Instant::now();
                loop {
                    let done = |i: u64| {
                        count.is_some_and(|c| i >= c) || plan.deadline.is_some_and(|d| at(i) >= d)
                    };
                    if done(i) {
                        return None;
                    }
                    // Wake-ups at least PACING_TICK apart: each costs the runtime a visit
                    // and a few thread wake-ups, which on a small machine would take CPU
                    // from the broker; the wait still counts as latency.
                    sleep_until_precise(at(i).max(last_wake + PACING_TICK));
                    last_wake = Instant::now();
                    // Every record due by now goes in one visit to the runtime.
                    let now = Instant::now();
                    // The burst's deliveries go to the collector together, at its end.
                    let sent = handle.block_on(async {
                        let mut chunk = Vec::with_capacity(DELIVERY_CHUNK);
                        let mut sent = Ok(());
                        while !done(i) && at(i) <= now {
                            let intended = at(i);
                            let record = records.record(i, intended);
                            sent = send_tracked(&producer, record, intended, true, &tx, &mut chunk)
                                .await;
                            if sent.is_err() {
                                break;
                            }
                            counters.sent.fetch_add(1, Ordering::Relaxed);
                            i += 1;
                        }
                        if !hand_over(&tx, &mut chunk).await && sent.is_ok() {
                            sent = Err(None);
                        }
                        sent
                    });
                    if let Err(stop) = sent {
                        return stop;
                    }
                }
            })
            .await
            .map_err(|e| format!("paced producer thread: {e}"))?
        }
    };
    let flushed = producer.flush().await;
    let mut result = collector.await.map_err(|e| e.to_string())??;
    let _ = producer.close().await;
    if let Some(e) = send_error {
        result.errors += 1;
        result.first_error.get_or_insert(e);
    }
    if let Err(e) = flushed {
        result.first_error.get_or_insert(e.to_string());
    }
    Ok(result)
}

/// CPU counters read at one moment: the bench's, the broker's, the machine's.
#[derive(Clone, Copy)]
struct CpuReading {
    bench: Option<f64>,
    broker: Option<f64>,
    machine: Option<MachineCpu>,
}

impl CpuReading {
    fn now(broker_pid: Option<u32>) -> Self {
        Self {
            bench: process_cpu_seconds(),
            broker: broker_pid.and_then(pid_cpu_seconds),
            machine: MachineCpu::now(),
        }
    }
}

/// A record's intended send time, when `send` returned (open loop only: a clock read per
/// record is not spent in a closed loop, where the two are the same but for `send`'s wait),
/// and its delivery.
struct Delivery {
    intended: Instant,
    handed: Option<Instant>,
    future: sluice_client::DeliveryFuture,
}

/// Deliveries a producer hands its collector at once (one channel message per
/// this many records; sooner when the producer has to wait, so nothing waits unobserved).
const DELIVERY_CHUNK: usize = 64;

/// Sends the queued deliveries to the collector. False when it is gone.
async fn hand_over(tx: &mpsc::Sender<Vec<Delivery>>, chunk: &mut Vec<Delivery>) -> bool {
    if chunk.is_empty() {
        return true;
    }
    let full = std::mem::replace(chunk, Vec::with_capacity(DELIVERY_CHUNK));
    tx.send(full).await.is_ok()
}

/// Sends one record; its delivery joins `chunk`, which goes to the collector when full, and
/// before the producer waits for room in its buffer (so no delivery waits unobserved behind
/// a blocked producer). `Err(None)`: the collector is gone. `timed`: note when `send`
/// returned.
async fn send_tracked(
    producer: &Producer,
    record: ProducerRecord,
    intended: Instant,
    timed: bool,
    tx: &mpsc::Sender<Vec<Delivery>>,
    chunk: &mut Vec<Delivery>,
) -> Result<(), Option<String>> {
    let mut send = std::pin::pin!(producer.send(record));
    let sent = match futures_util::poll!(send.as_mut()) {
        Poll::Ready(sent) => sent,
        Poll::Pending => {
            if !hand_over(tx, chunk).await {
                return Err(None);
            }
            send.await
        }
    };
    let future = sent.map_err(|e| Some(e.to_string()))?;
    chunk.push(Delivery {
        intended,
        handed: timed.then(Instant::now),
        future,
    });
    if chunk.len() >= DELIVERY_CHUNK && !hand_over(tx, chunk).await {
        return Err(None);
    }
    Ok(())
}

/// Builds a producer's records: values stamped with their intended send time, sent to
/// `batch_records` consecutive records per partition (or keyed).
struct RecordSource {
    template: Vec<u8>,
    /// Where the next values are written (see [`VALUE_SLAB_BYTES`]).
    slab: BytesMut,
    rng: Rng,
    keygen: KeyGen,
    offset: u64,
    batch_records: u64,
    p: u64,
    plan: Arc<Plan>,
}

impl RecordSource {
    fn record(&mut self, i: u64, intended: Instant) -> ProducerRecord {
        let plan = &self.plan;
        // Values are cut from a shared slab: one allocation per VALUE_SLAB_BYTES, not one
        // per record (the load generator's own cost counts against the broker's machine).
        if self.slab.capacity() - self.slab.len() < self.template.len() {
            self.slab = BytesMut::with_capacity(VALUE_SLAB_BYTES.max(self.template.len()));
        }
        self.slab.extend_from_slice(&self.template);
        self.slab[..TIMESTAMP_BYTES as usize]
            .copy_from_slice(&plan.clock.unix_ns(intended).to_le_bytes());
        let value = self.slab.split();
        let chunk = i / self.batch_records;
        match self.keygen.key(&mut self.rng) {
            None => {
                let targets = plan.targets.len() as u64;
                let (t, part) = plan.targets[((self.offset + chunk) % targets) as usize];
                ProducerRecord::new(plan.topics[t].clone(), value.freeze()).partition(part)
            }
            Some(key) => {
                let t = ((chunk + self.p) % plan.topics.len() as u64) as usize;
                ProducerRecord::new(plan.topics[t].clone(), value.freeze()).key(key)
            }
        }
    }
}

/// Size of the buffers record values are cut from: a slab is freed once every record cut
/// from it has been copied into its batch.
const VALUE_SLAB_BYTES: usize = 256 * 1024;

/// Shortest interval between two wake-ups of an open-loop producer's pacing thread: every
/// record due by a wake-up is sent then, so a record waits at most this long (plus the
/// kernel's timer slack, ~50 µs) after its intended time, and that wait counts as latency.
const PACING_TICK: Duration = Duration::from_micros(200);

/// Blocks the calling thread until `at` (never returns before it).
fn sleep_until_precise(at: Instant) {
    loop {
        let now = Instant::now();
        if now >= at {
            return;
        }
        std::thread::sleep(at - now);
    }
}

/// Starts the consumers: positioned (tail or beginning) before this returns, so that no
/// record produced after it is missed.
async fn start_consumers(
    mode: Mode,
    client: &Client,
    args: &LoadArgs,
    plan: &Arc<Plan>,
    counters: &Arc<Counters>,
) -> Result<Vec<tokio::sync::oneshot::Receiver<Result<ConsumerResult, String>>>, String> {
    let n = args.consumers;
    // consume: read what is there at start (end offsets now), from the beginning.
    let target = if mode == Mode::Consume {
        Some(available_records(client, &plan.topics, &plan.targets).await?)
    } else {
        None
    };
    let mut tasks = Vec::new();
    for c in 0..n {
        // The struct update keeps this valid when the client's config gains fields.
        #[allow(clippy::needless_update)]
        let config = ConsumerConfig {
            fetch_max_wait: Duration::from_millis(100),
            fetch_min_bytes: 1,
            fetch_max_bytes: 16 << 20,
            partition_max_bytes: 4 << 20,
            ..ConsumerConfig::default()
        };
        let mut own_target = target;
        let mut consumer = Consumer::new(client.clone(), config);
        {
            let mine: Vec<TopicPartition> = plan
                .targets
                .iter()
                .enumerate()
                .filter(|(i, _)| i % n == c)
                .map(|(_, &(t, p))| TopicPartition {
                    topic: plan.topics[t].clone(),
                    partition: p,
                })
                .collect();
            if mine.is_empty() {
                continue;
            }
            consumer.assign(mine.clone());
            let seek = if mode == Mode::Consume {
                SeekTo::Beginning
            } else {
                SeekTo::End
            };
            for tp in &mine {
                consumer.seek(tp, seek).await.map_err(|e| e.to_string())?;
            }
            if mode == Mode::Consume {
                let mine_targets: Vec<(usize, u32)> = plan
                    .targets
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| i % n == c)
                    .map(|(_, &t)| t)
                    .collect();
                own_target = Some(available_records(client, &plan.topics, &mine_targets).await?);
            }
        }
        let shared_target = false;
        let plan = Arc::clone(plan);
        let counters = Arc::clone(counters);
        // Each consumer runs on its own thread, on this runtime's handle (a consumer's
        // future need not be `Send` then).
        let (tx, rx) = tokio::sync::oneshot::channel();
        let handle = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name(format!("consumer-{c}"))
            .spawn(move || {
                let result = handle.block_on(consume_one(
                    consumer,
                    mode,
                    own_target,
                    shared_target,
                    plan,
                    counters,
                ));
                let _ = tx.send(result);
            })
            .map_err(|e| format!("cannot start a consumer thread: {e}"))?;
        tasks.push(rx);
    }
    Ok(tasks)
}

async fn consume_one(
    mut consumer: Consumer,
    mode: Mode,
    target: Option<u64>,
    shared_target: bool,
    plan: Arc<Plan>,
    counters: Arc<Counters>,
) -> Result<ConsumerResult, String> {
    let mut result = ConsumerResult::new();
    let measure_from_ns = plan.clock.unix_ns(plan.measure_from);
    let mut own = 0u64;
    let mut idle_since: Option<Instant> = None;
    loop {
        let done = match (mode, target) {
            (Mode::Consume, Some(t)) if shared_target => {
                counters.consumed.load(Ordering::SeqCst) >= t
            }
            (Mode::Consume, Some(t)) => own >= t,
            _ => {
                counters.producers_done.load(Ordering::SeqCst)
                    && counters.consumed.load(Ordering::SeqCst)
                        >= counters.acked.load(Ordering::SeqCst)
            }
        };
        if done {
            break;
        }
        let batch = consumer
            .poll(Duration::from_millis(100))
            .await
            .map_err(|e| format!("consumer: {e}"))?;
        let now = Instant::now();
        if batch.is_empty() {
            let idle = *idle_since.get_or_insert(now);
            let waiting = mode == Mode::Consume || counters.producers_done.load(Ordering::SeqCst);
            if waiting && now.duration_since(idle) > CONSUMER_IDLE_TIMEOUT {
                eprintln!(
                    "sluice-bench: a consumer got nothing for {} s; stopping it",
                    CONSUMER_IDLE_TIMEOUT.as_secs()
                );
                break;
            }
            continue;
        }
        idle_since = None;
        let now_ns = unix_nanos(SystemTime::now());
        own += batch.len() as u64;
        counters
            .consumed
            .fetch_add(batch.len() as u64, Ordering::SeqCst);
        result.first.get_or_insert(now);
        result.last = Some(now);
        for record in &batch {
            if let Some(value) = &record.value {
                result.measure(mode, value, measure_from_ns, now_ns)?;
            }
        }
    }
    Ok(result)
}

async fn progress(counters: Arc<Counters>, mode: Mode) {
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let (mut last_acked, mut last_consumed) = (0, 0);
    loop {
        tick.tick().await;
        let acked = counters.acked.load(Ordering::Relaxed);
        let consumed = counters.consumed.load(Ordering::Relaxed);
        let mut line = format!("[{:>4.0} s]", start.elapsed().as_secs_f64());
        if mode != Mode::Consume {
            line += &format!(
                " sent {} acked {} ({}/s)",
                counters.sent.load(Ordering::Relaxed),
                acked,
                acked - last_acked
            );
        }
        if mode != Mode::Produce {
            line += &format!(" consumed {consumed} ({}/s)", consumed - last_consumed);
        }
        let errors = counters.errors.load(Ordering::Relaxed);
        if errors > 0 {
            line += &format!(" errors {errors}");
        }
        eprintln!("{line}");
        (last_acked, last_consumed) = (acked, consumed);
    }
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn opt_f(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}"))
}

/// Prints a run's result: one JSON object, or a table.
pub(crate) fn print(out: &LoadOutput, json: bool) -> Result<(), String> {
    crate::report::print_result(json, out, |o| {
        println!("{} ({} loop)", o.label, o.loop_mode);
        println!(
            "  topics {} partitions {} producers {} consumers {} acks {:?} compression {:?} \
             keys {} record {} B batch {} records linger {} ms",
            o.topics,
            o.partitions,
            o.producers,
            o.consumers,
            o.acks,
            o.compression,
            o.keys,
            o.record_bytes,
            o.batch_records,
            o.linger_ms
        );
        println!(
            "  {:>12} {:>10} {:>10} {:>10}",
            "records", "records/s", "MB/s", "seconds"
        );
        println!(
            "  {:>12} {:>10.0} {:>10.1} {:>10.2}",
            o.records, o.records_per_s, o.mb_per_s, o.elapsed_s
        );
        if let Some(target) = o.target_rate {
            println!(
                "  target rate {target:.0} records/s: {}",
                if o.rate_reached == Some(true) {
                    "reached"
                } else {
                    "NOT reached"
                }
            );
        }
        println!(
            "  {:<18} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "latency µs", "p50", "p90", "p99", "p99.9", "p99.99", "max"
        );
        if o.p50_us.is_some() {
            println!(
                "  {:<18} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
                "produce-to-ack",
                opt(o.p50_us),
                opt(o.p90_us),
                opt(o.p99_us),
                opt(o.p999_us),
                opt(o.p9999_us),
                opt(o.max_us)
            );
        }
        if o.e2e_p50_us.is_some() {
            println!(
                "  {:<18} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
                "end-to-end",
                opt(o.e2e_p50_us),
                opt(o.e2e_p90_us),
                opt(o.e2e_p99_us),
                opt(o.e2e_p999_us),
                opt(o.e2e_p9999_us),
                opt(o.e2e_max_us)
            );
        }
        if o.send_delay_p50_us.is_some() {
            println!(
                "  {:<18} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
                "  of it send delay",
                opt(o.send_delay_p50_us),
                "",
                opt(o.send_delay_p99_us),
                opt(o.send_delay_p999_us),
                "",
                opt(o.send_delay_max_us)
            );
        }
        if o.consumers > 0 {
            println!(
                "  consumed {} records, {} MB/s",
                o.consumed_records,
                opt_f(o.consume_mb_per_s, 1)
            );
        }
        if let Some(group) = &o.group {
            println!(
                "  group {group}: {} members started; received {} duplicates {} gaps {} \
                 missing {}; rebalances {} (max {} ms, p50 {} ms)",
                opt(o.members_started),
                opt(o.received),
                opt(o.duplicates),
                opt(o.gaps),
                opt(o.missing),
                opt(o.rebalances),
                opt_f(o.rebalance_ms_max, 0),
                opt_f(o.rebalance_ms_p50, 0)
            );
        }
        println!(
            "  CPU s: bench {} broker {} ({}); per GB: bench {} broker {}; broker peak RSS {} MiB",
            opt_f(o.bench_cpu_s, 2),
            opt_f(o.broker_cpu_s, 2),
            o.broker_pid_source,
            opt_f(o.bench_cpu_s_per_gb, 2),
            opt_f(o.broker_cpu_s_per_gb, 2),
            opt_f(o.broker_peak_rss_bytes.map(|b| b as f64 / 1048576.0), 1)
        );
        println!(
            "  machine CPU (all cores): {}% busy, {}% stolen by the hypervisor",
            opt_f(o.machine_cpu_busy_pct, 0),
            opt_f(o.machine_cpu_steal_pct, 1)
        );
        if o.errors > 0 {
            println!("  errors {}", o.errors);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse() {
        assert_eq!(parse_keys("none"), Ok(Keys::None));
        assert_eq!(parse_keys("zipf:1.2"), Ok(Keys::Zipf(1.2)));
        assert!(parse_keys("zipf:-1").is_err());
        assert!(parse_keys("hot").is_err());
    }

    #[test]
    fn zipf_prefers_low_ranks() {
        let keygen = KeyGen::new(Keys::Zipf(1.2), 1000);
        let mut rng = Rng(7);
        let hot = (0..10_000)
            .filter(|_| keygen.key(&mut rng).as_deref() == Some(b"key-0".as_slice()))
            .count();
        // Rank 1 of zipf(1.2) over 1000 keys has probability ~0.2 (uniform: 0.001).
        assert!((1500..2800).contains(&hot), "{hot}");
    }

    #[test]
    fn seconds_parse() {
        assert_eq!(parse_seconds("30"), Ok(30.0));
        assert_eq!(parse_seconds("500ms"), Ok(0.5));
        assert_eq!(parse_seconds("2m"), Ok(120.0));
        assert!(parse_seconds("soon").is_err());
    }
}
