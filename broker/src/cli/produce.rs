//! `sluice produce TOPIC`: one record per stdin line, flushed at end of input. Prints
//! nothing on success.

use std::collections::VecDeque;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use sluice_client::{
    Acks, ClientError, Compression, DeliveryFuture, Producer, ProducerConfig, ProducerRecord,
};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::{DEFAULT_BROKERS, connect, parse_key_value, run};

/// Records sent but not yet confirmed before the reader waits for the oldest: bounds the
/// memory held by futures (the producer's buffer bounds the record bytes).
const PENDING_RECORDS_MAX: usize = 100_000;

/// `sluice produce ...`.
#[derive(clap::Args)]
pub(crate) struct ProduceArgs {
    /// Topic to write to.
    topic: String,
    /// Broker addresses, `host:port[,host:port]`.
    #[arg(long, default_value = DEFAULT_BROKERS)]
    brokers: String,
    /// Split each line at the first SEP: the key before it, the value after it.
    #[arg(long, value_name = "SEP")]
    key_separator: Option<String>,
    /// A header for every record, `key=value` (repeatable).
    #[arg(long = "header", value_parser = parse_key_value)]
    headers: Vec<(String, String)>,
    /// Write every record to this partition.
    #[arg(long)]
    partition: Option<u32>,
    /// Acknowledgement: 0, 1 or all.
    #[arg(long, default_value = "all", value_parser = parse_acks)]
    acks: Acks,
    /// Batch compression: none, lz4 or zstd.
    #[arg(long, default_value = "none", value_parser = parse_compression)]
    compression: Compression,
    /// How long a batch waits for more lines (ms).
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
}

fn parse_acks(s: &str) -> Result<Acks, String> {
    match s {
        "0" => Ok(Acks::None),
        "1" => Ok(Acks::Leader),
        "all" | "-1" => Ok(Acks::All),
        other => Err(format!("acks must be 0, 1 or all, not '{other}'")),
    }
}

fn parse_compression(s: &str) -> Result<Compression, String> {
    match s {
        "none" => Ok(Compression::None),
        "lz4" => Ok(Compression::Lz4),
        "zstd" => Ok(Compression::Zstd),
        other => Err(format!(
            "compression must be none, lz4 or zstd, not '{other}'"
        )),
    }
}

pub(crate) fn run_produce(args: ProduceArgs) -> ExitCode {
    run(produce(args))
}

async fn produce(args: ProduceArgs) -> Result<(), ClientError> {
    let client = connect(&args.brokers).await?;
    // Fail early, before reading input, if the topic or partition does not exist.
    let partitions = client.partition_count(&args.topic).await?;
    if let Some(p) = args.partition
        && p >= partitions
    {
        return Err(ClientError::UnknownPartition {
            topic: args.topic.clone(),
            partition: p,
            partitions,
        });
    }
    let producer = Producer::new(
        client,
        ProducerConfig {
            acks: args.acks,
            compression: args.compression,
            linger: Duration::from_millis(args.linger_ms),
            ..ProducerConfig::default()
        },
    );
    let headers: Vec<(String, Option<Bytes>)> = args
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), Some(Bytes::from(v.clone()))))
        .collect();
    let mut pending: VecDeque<DeliveryFuture> = VecDeque::new();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let line = line.strip_suffix('\r').unwrap_or(&line);
        let (key, value) = match &args.key_separator {
            Some(sep) => match line.split_once(sep.as_str()) {
                Some((k, v)) => (Some(k), v),
                None => (None, line),
            },
            None => (None, line),
        };
        let mut record = ProducerRecord::new(args.topic.clone(), Bytes::from(value.to_owned()));
        if let Some(k) = key {
            record = record.key(Bytes::from(k.to_owned()));
        }
        if let Some(p) = args.partition {
            record = record.partition(p);
        }
        record.headers = headers.clone();
        pending.push_back(producer.send(record).await?);
        if pending.len() >= PENDING_RECORDS_MAX
            && let Some(oldest) = pending.pop_front()
        {
            oldest.await?;
        }
    }
    producer.flush().await?;
    for delivery in pending {
        delivery.await?;
    }
    producer.close().await
}
