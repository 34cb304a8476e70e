//! `sluice-bench produce` and `sluice-bench consume`: load against a running broker through
//! the native client, the way an application uses it. Closed loop: producers send as fast as
//! the client's buffer allows; the figures are throughput and send-to-acknowledgement latency.
//!
//! Latency is taken when the bench observes each delivery, in send order per producer: a
//! record acknowledged before an earlier one is counted when the earlier one is.

use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::ValueEnum;
use serde::Serialize;
use sluice_client::{
    Acks, Client, ClientConfig, Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord,
    SeekTo, TopicPartition,
};
use sluice_proto::Compression;
use tokio::sync::mpsc;

use crate::report::{
    Latency, cpu_seconds_since, latency_histogram, print_result, process_cpu_seconds,
};
use crate::units::parse_bytes;

/// Deliveries a producer may have outstanding before it waits for the oldest (bounds the
/// bench's own memory next to the client's `buffer_bytes`).
const OUTSTANDING_DELIVERIES_MAX: usize = 1 << 16;

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

/// Connection settings shared by both commands.
#[derive(clap::Args, Clone)]
pub(crate) struct Conn {
    /// Broker addresses.
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Topic to use.
    #[arg(long, default_value = "sluice-bench")]
    topic: String,
    /// Send everything to the bootstrap address and let the broker forward between shards,
    /// instead of connecting to each partition's owning shard.
    #[arg(long)]
    no_shard_aware: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

impl Conn {
    async fn client(&self) -> Result<Client, String> {
        let mut config = ClientConfig::new(&self.brokers);
        config.client_id = "sluice-bench".into();
        config.shard_aware = !self.no_shard_aware;
        Client::connect(config).await.map_err(|e| e.to_string())
    }
}

/// Arguments of `produce`.
#[derive(clap::Args)]
pub(crate) struct ProduceArgs {
    #[command(flatten)]
    conn: Conn,
    /// Partitions of the topic, created if missing (an existing topic keeps its count).
    #[arg(long, default_value_t = 1)]
    partitions: u32,
    /// Topic configs when creating it (`k=v`, repeatable).
    #[arg(long = "config")]
    configs: Vec<String>,
    /// Bytes of record values to send in all.
    #[arg(long, default_value = "1GiB", value_parser = parse_bytes)]
    total_bytes: u64,
    /// Size of each record's value.
    #[arg(long, default_value = "1KiB", value_parser = parse_bytes)]
    record_bytes: u64,
    /// Concurrent producers (each its own `Producer`, sharing the connections).
    #[arg(long, default_value_t = 4)]
    producers: usize,
    /// Acknowledgement level.
    #[arg(long, value_enum, default_value = "all")]
    acks: AcksArg,
    /// Largest batch the client builds per partition.
    #[arg(long, default_value = "256KiB", value_parser = parse_bytes)]
    batch_bytes: u64,
    /// How long the client waits to fill a batch.
    #[arg(long, default_value_t = 2)]
    linger_ms: u64,
    /// Client memory for records not yet acknowledged, per producer. In this closed loop it
    /// is also the queue every record waits behind, so it sets the latency figures.
    #[arg(long, default_value = "2MiB", value_parser = parse_bytes)]
    buffer_bytes: u64,
    /// Produce requests in flight per partition.
    #[arg(long, default_value_t = 5)]
    in_flight: usize,
    /// Batch compression.
    #[arg(long, value_enum, default_value = "none")]
    compression: CompressionArg,
}

/// Arguments of `consume`.
#[derive(clap::Args)]
pub(crate) struct ConsumeArgs {
    #[command(flatten)]
    conn: Conn,
    /// Stop after this many records (default: everything up to the end offsets at start).
    #[arg(long)]
    records: Option<u64>,
    /// Largest fetch response.
    #[arg(long, default_value = "16MiB", value_parser = parse_bytes)]
    fetch_max_bytes: u64,
    /// Most bytes per partition in one fetch.
    #[arg(long, default_value = "4MiB", value_parser = parse_bytes)]
    partition_max_bytes: u64,
}

#[derive(Serialize)]
struct ProduceOutput {
    bench: &'static str,
    topic: String,
    partitions: u32,
    producers: usize,
    acks: AcksArg,
    shard_aware: bool,
    record_bytes: u64,
    records: u64,
    errors: u64,
    elapsed_s: f64,
    mb_per_s: f64,
    records_per_s: f64,
    cpu_s: Option<f64>,
    latency: Latency,
}

#[derive(Serialize)]
struct ConsumeOutput {
    bench: &'static str,
    topic: String,
    partitions: u32,
    shard_aware: bool,
    records: u64,
    bytes: u64,
    elapsed_s: f64,
    mb_per_s: f64,
    records_per_s: f64,
    cpu_s: Option<f64>,
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))
}

async fn ensure_topic(
    client: &Client,
    topic: &str,
    partitions: u32,
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
        .create_topic(topic, partitions, &configs)
        .await
        .map_err(|e| e.to_string())?;
    client
        .partition_count(topic)
        .await
        .map_err(|e| e.to_string())
}

/// Runs `produce`.
pub(crate) fn run_produce(args: ProduceArgs) -> Result<(), String> {
    runtime()?.block_on(produce(args))
}

async fn produce(args: ProduceArgs) -> Result<(), String> {
    let client = args.conn.client().await?;
    let partitions =
        ensure_topic(&client, &args.conn.topic, args.partitions, &args.configs).await?;
    let config = ProducerConfig {
        acks: match args.acks {
            AcksArg::Zero => Acks::None,
            AcksArg::One => Acks::Leader,
            AcksArg::All => Acks::All,
        },
        linger: Duration::from_millis(args.linger_ms),
        batch_bytes: args.batch_bytes as usize,
        buffer_bytes: args.buffer_bytes as usize,
        max_in_flight_per_partition: args.in_flight,
        compression: match args.compression {
            CompressionArg::None => Compression::None,
            CompressionArg::Lz4 => Compression::Lz4,
            CompressionArg::Zstd => Compression::Zstd,
        },
        ..ProducerConfig::default()
    };
    let record_bytes = args.record_bytes as usize;
    let total_records = args.total_bytes.div_ceil(args.record_bytes);
    let value = Bytes::from(vec![b'x'; record_bytes]);
    let cpu_before = process_cpu_seconds();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..args.producers as u64 {
        let producer = Producer::new(client.clone(), config.clone());
        let topic = args.conn.topic.clone();
        let value = value.clone();
        // Records split evenly; the first producers take the remainder.
        let count = total_records / args.producers as u64
            + u64::from(p < total_records % args.producers as u64);
        tasks.push(tokio::spawn(async move {
            let (tx, mut rx) = mpsc::channel(OUTSTANDING_DELIVERIES_MAX);
            let collector = tokio::spawn(async move {
                let mut histogram = latency_histogram();
                let mut errors = 0u64;
                let mut first_error = None;
                while let Some((sent, delivery)) = rx.recv().await {
                    let delivery: sluice_client::DeliveryFuture = delivery;
                    match delivery.await {
                        Ok(_) => {
                            let us = Instant::elapsed(&sent).as_micros().max(1) as u64;
                            histogram.record(us).map_err(|e| e.to_string())?;
                        }
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert(e.to_string());
                        }
                    }
                }
                Ok::<_, String>((histogram, errors, first_error))
            });
            for _ in 0..count {
                let record = ProducerRecord::new(topic.clone(), value.clone());
                let sent = Instant::now();
                let delivery = producer.send(record).await.map_err(|e| e.to_string())?;
                if tx.send((sent, delivery)).await.is_err() {
                    break;
                }
            }
            drop(tx);
            producer.flush().await.map_err(|e| e.to_string())?;
            let result = collector.await.map_err(|e| e.to_string())??;
            producer.close().await.map_err(|e| e.to_string())?;
            Ok::<_, String>(result)
        }));
    }
    let mut histogram = latency_histogram();
    let mut errors = 0;
    let mut first_error = None;
    for task in tasks {
        let (h, e, first) = task.await.map_err(|e| e.to_string())??;
        histogram.add(&h).map_err(|e| e.to_string())?;
        errors += e;
        if first_error.is_none() {
            first_error = first;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds_since(cpu_before);
    if let Some(error) = first_error {
        eprintln!("sluice-bench: {errors} records failed; first error: {error}");
    }
    let records = histogram.len();
    let out = ProduceOutput {
        bench: "produce",
        topic: args.conn.topic.clone(),
        partitions,
        producers: args.producers,
        acks: args.acks,
        shard_aware: !args.conn.no_shard_aware,
        record_bytes: args.record_bytes,
        records,
        errors,
        elapsed_s: elapsed,
        mb_per_s: (records * args.record_bytes) as f64 / elapsed / 1e6,
        records_per_s: records as f64 / elapsed,
        cpu_s: cpu,
        latency: Latency::of(&histogram),
    };
    print_result(args.conn.json, &out, |out| {
        println!(
            "produce {} partitions={} producers={} acks={:?} shard_aware={}: {} records in {:.2} s, \
             {:.1} MB/s, {:.0} records/s; latency p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
            out.topic,
            out.partitions,
            out.producers,
            out.acks,
            out.shard_aware,
            out.records,
            out.elapsed_s,
            out.mb_per_s,
            out.records_per_s,
            out.latency.p50_us,
            out.latency.p99_us,
            out.latency.p999_us,
            out.latency.max_us
        );
    })?;
    if errors > 0 {
        return Err(format!("{errors} records were not acknowledged"));
    }
    Ok(())
}

/// Runs `consume`.
pub(crate) fn run_consume(args: ConsumeArgs) -> Result<(), String> {
    runtime()?.block_on(consume(args))
}

async fn consume(args: ConsumeArgs) -> Result<(), String> {
    let client = args.conn.client().await?;
    let topic = &args.conn.topic;
    let partitions = client
        .partition_count(topic)
        .await
        .map_err(|e| e.to_string())?;
    let mut available = 0u64;
    let mut tps = Vec::new();
    for partition in 0..partitions {
        let start = client
            .list_offset(topic, partition, sluice_proto::protocol::EARLIEST_TIMESTAMP)
            .await
            .map_err(|e| e.to_string())?;
        let end = client
            .list_offset(topic, partition, sluice_proto::protocol::LATEST_TIMESTAMP)
            .await
            .map_err(|e| e.to_string())?;
        available += end - start;
        tps.push(TopicPartition {
            topic: topic.clone(),
            partition,
        });
    }
    let target = args.records.unwrap_or(available);
    let mut consumer = Consumer::new(
        client,
        ConsumerConfig {
            fetch_max_wait: Duration::from_millis(100),
            fetch_min_bytes: 1,
            fetch_max_bytes: args.fetch_max_bytes as u32,
            partition_max_bytes: args.partition_max_bytes as u32,
        },
    );
    consumer.assign(tps.clone());
    for tp in &tps {
        consumer
            .seek(tp, SeekTo::Beginning)
            .await
            .map_err(|e| e.to_string())?;
    }
    let cpu_before = process_cpu_seconds();
    let started = Instant::now();
    let (mut records, mut bytes) = (0u64, 0u64);
    let mut idle_polls = 0;
    while records < target {
        let batch = consumer
            .poll(Duration::from_secs(1))
            .await
            .map_err(|e| e.to_string())?;
        if batch.is_empty() {
            idle_polls += 1;
            if idle_polls >= 10 {
                return Err(format!(
                    "no records for 10 polls after {records} of {target}"
                ));
            }
            continue;
        }
        idle_polls = 0;
        records += batch.len() as u64;
        bytes += batch
            .iter()
            .map(|r| r.value.as_ref().map_or(0, Bytes::len) as u64)
            .sum::<u64>();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds_since(cpu_before);
    let out = ConsumeOutput {
        bench: "consume",
        topic: topic.clone(),
        partitions,
        shard_aware: !args.conn.no_shard_aware,
        records,
        bytes,
        elapsed_s: elapsed,
        mb_per_s: bytes as f64 / elapsed / 1e6,
        records_per_s: records as f64 / elapsed,
        cpu_s: cpu,
    };
    print_result(args.conn.json, &out, |out| {
        println!(
            "consume {} partitions={} shard_aware={}: {} records ({} value bytes) in {:.2} s, \
             {:.1} MB/s, {:.0} records/s",
            out.topic,
            out.partitions,
            out.shard_aware,
            out.records,
            out.bytes,
            out.elapsed_s,
            out.mb_per_s,
            out.records_per_s
        );
    })?;
    Ok(())
}
