//! `sluice-bench log-append`: appends to a fresh partition log and measures throughput and
//! append-to-durable latency. No broker and no network: this is the storage engine alone,
//! to compare with what the disk can do (fio) in the same run.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::time::Instant;

use bytes::BytesMut;
use clap::ValueEnum;
use serde::Serialize;
use sluice_proto::{BatchBuilder, Compression, Limits};
use sluice_storage::{FlushPolicy, LogConfig, PartitionLog};

use crate::report::{
    Latency, cpu_seconds_since, latency_histogram, print_result, process_cpu_seconds,
};
use crate::units::parse_bytes;

/// Bytes of batches built before the timed run; beyond this each append copies a template.
const PREBUILT_BYTES_MAX: u64 = 4 << 30;

/// When an append counts as done.
#[derive(Clone, Copy, Debug, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Durability {
    /// fdatasync before the acknowledgement (group commit).
    EveryBatch,
    /// Acknowledged when the direct write completes; fdatasync by `--flush-ms`/`--flush-messages`.
    Interval,
}

/// Arguments of `log-append`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Directory on the disk to measure; a fresh log is made in a subdirectory and removed.
    #[arg(long)]
    dir: PathBuf,
    /// Bytes of batches to append in all.
    #[arg(long, default_value = "1GiB", value_parser = parse_bytes)]
    total_bytes: u64,
    /// Size of each appended batch.
    #[arg(long, default_value = "1MiB", value_parser = parse_bytes)]
    batch_bytes: u64,
    /// Size of each record's value inside the batches.
    #[arg(long, default_value = "1KiB", value_parser = parse_bytes)]
    record_bytes: u64,
    /// every-batch: fdatasync before each acknowledgement; interval: ack on write completion.
    #[arg(long, value_enum, default_value = "every-batch")]
    durability: Durability,
    /// With `interval`: fdatasync at least this often (`flush.ms`).
    #[arg(long, default_value_t = 1000)]
    flush_ms: u64,
    /// Concurrent appenders; each waits for its previous append to be durable.
    #[arg(long, default_value_t = 1)]
    appenders: usize,
    /// `segment.bytes` of the log.
    #[arg(long, default_value = "1GiB", value_parser = parse_bytes)]
    segment_bytes: u64,
    /// Size of one write-buffer chunk (one direct write when full).
    #[arg(long, default_value = "1MiB", value_parser = parse_bytes)]
    chunk_bytes: u64,
    /// Segment files are allocated ahead of the writes in steps of this many bytes.
    #[arg(long, default_value = "16MiB", value_parser = parse_bytes)]
    preallocate_bytes: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Keep the log directory afterwards.
    #[arg(long)]
    keep: bool,
}

#[derive(Serialize)]
struct Output {
    bench: &'static str,
    durability: Durability,
    appenders: usize,
    batch_bytes: usize,
    records_per_batch: usize,
    total_bytes: u64,
    appends: u64,
    elapsed_s: f64,
    mb_per_s: f64,
    appends_per_s: f64,
    records_per_s: f64,
    cpu_s: Option<f64>,
    #[serde(flatten)]
    latency: Latency,
}

fn template_batch(batch_bytes: usize, record_bytes: usize) -> Result<(BytesMut, usize), String> {
    let mut builder = BatchBuilder::new(Compression::None, Limits::DEFAULT);
    let value = vec![0x5a; record_bytes];
    let mut records = 0usize;
    loop {
        let key = format!("key-{records}");
        builder
            .push(0, Some(key.as_bytes()), Some(&value), &[])
            .map_err(|e| format!("building the batch: {e}"))?;
        records += 1;
        // Stop before the next record would take the batch past its size.
        if builder.estimated_bytes() + record_bytes + 32 > batch_bytes {
            break;
        }
    }
    let batch = builder
        .build()
        .map_err(|e| format!("building the batch: {e}"))?;
    Ok((batch, records))
}

pub(crate) fn run(args: Args) -> Result<(), String> {
    let (template, records_per_batch) =
        template_batch(args.batch_bytes as usize, args.record_bytes as usize)?;
    let batch_len = template.len();
    let dir = args
        .dir
        .join(format!("sluice-log-append-{}", std::process::id()));
    if dir.exists() {
        return Err(format!("{} already exists", dir.display()));
    }
    let chunk = args.chunk_bytes as usize;
    let in_flight_bytes = args.appenders * batch_len;
    let max_batch_bytes = batch_len.max(LogConfig::default().max_batch_bytes);
    // Room for every appender's batch, and for one largest batch beside a filling chunk.
    let chunks_max = (in_flight_bytes.div_ceil(chunk) + 4)
        .max(8)
        .max(max_batch_bytes.div_ceil(chunk - sluice_storage::BLOCK_BYTES) + 2);
    let config = LogConfig {
        segment_bytes: args.segment_bytes,
        flush: match args.durability {
            Durability::EveryBatch => FlushPolicy::EveryBatch,
            Durability::Interval => FlushPolicy::Interval {
                messages: None,
                ms: Some(args.flush_ms),
            },
        },
        max_batch_bytes,
        write_chunk_bytes: chunk,
        preallocate_bytes: args.preallocate_bytes,
        write_chunks_max: chunks_max,
        ..LogConfig::default()
    };
    let runtime = compio::runtime::Runtime::new().map_err(|e| format!("io_uring runtime: {e}"))?;
    let result = runtime.block_on(async {
        let log = PartitionLog::open(&dir, config)
            .await
            .map_err(|e| e.to_string())?;
        let total_appends = args.total_bytes.div_ceil(batch_len as u64);
        // Batches are built before the clock starts (up to PREBUILT_BYTES_MAX), so the
        // figures measure the log, not the bench's own copying and page faults.
        let prebuilt_count = total_appends.min(PREBUILT_BYTES_MAX / batch_len as u64);
        let prebuilt = RefCell::new(
            (0..prebuilt_count)
                .map(|_| template.clone())
                .collect::<Vec<BytesMut>>(),
        );
        let remaining = Cell::new(total_appends);
        let histogram = RefCell::new(latency_histogram());
        let cpu_before = process_cpu_seconds();
        let started = Instant::now();
        let appender = || async {
            while remaining.get() > 0 {
                remaining.set(remaining.get() - 1);
                let batch = prebuilt.borrow_mut().pop();
                let batch = batch.unwrap_or_else(|| template.clone());
                let t0 = Instant::now();
                let appended = log.append(batch).await.map_err(|e| e.to_string())?;
                appended.durable.await.map_err(|e| e.to_string())?;
                let us = t0.elapsed().as_micros().max(1) as u64;
                histogram
                    .borrow_mut()
                    .record(us)
                    .map_err(|e| e.to_string())?;
            }
            Ok::<(), String>(())
        };
        let results = futures_util::future::join_all((0..args.appenders).map(|_| appender())).await;
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = cpu_seconds_since(cpu_before);
        results.into_iter().collect::<Result<Vec<()>, String>>()?;
        log.close().await.map_err(|e| e.to_string())?;
        let histogram = histogram.into_inner();
        let appends = histogram.len();
        let bytes = appends * batch_len as u64;
        Ok::<Output, String>(Output {
            bench: "log-append",
            durability: args.durability,
            appenders: args.appenders,
            batch_bytes: batch_len,
            records_per_batch,
            total_bytes: bytes,
            appends,
            elapsed_s: elapsed,
            mb_per_s: bytes as f64 / elapsed / 1e6,
            appends_per_s: appends as f64 / elapsed,
            records_per_s: (appends * records_per_batch as u64) as f64 / elapsed,
            cpu_s: cpu,
            latency: Latency::of(&histogram),
        })
    });
    if !args.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let out = result?;
    print_result(args.json, &out, |out| {
        println!(
            "log-append  durability={:?} appenders={} batch={} B ({} records)",
            out.durability, out.appenders, out.batch_bytes, out.records_per_batch
        );
        println!(
            "  {:.1} MB/s  {:.0} appends/s  {:.0} records/s  {} appends in {:.2} s  cpu {:.2} s",
            out.mb_per_s,
            out.appends_per_s,
            out.records_per_s,
            out.appends,
            out.elapsed_s,
            out.cpu_s.unwrap_or(f64::NAN)
        );
        let l = out.latency;
        println!(
            "  append->durable latency µs: p50 {}  p90 {}  p99 {}  p99.9 {}  p99.99 {}  max {}",
            l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.p9999_us, l.max_us
        );
    })?;
    Ok(())
}
