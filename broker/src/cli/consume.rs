//! `sluice consume TOPIC`: prints records as they arrive (like `tail -f`); stops after
//! `--max-messages` records (waiting for them, as Kafka's console consumer does), or at the
//! end offsets seen at start with `--no-follow`.
//!
//! With `--group G` it is a member of consumer group G: it reads only the partitions the
//! group assigns it, starts at the group's committed offsets, and commits the offsets of
//! what it has printed after each batch (so a killed consumer's successor re-prints at most
//! the last batch). On exit (also on SIGINT or SIGTERM) it leaves the group, so the others
//! take its partitions at once.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use sluice_client::{
    Client, ClientError, Consumer, ConsumerConfig, ConsumerRecord, LATEST_TIMESTAMP, OffsetReset,
    RebalanceListener, SeekTo, TopicPartition,
};

use super::format::{Template, record_json};
use super::time::parse_time_ms;
use super::{DEFAULT_BROKERS, connect, run};

/// How long one poll waits before checking whether to stop.
const POLL_TIMEOUT: Duration = Duration::from_millis(500);

/// `sluice consume ...`.
#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("start").multiple(false))]
pub(crate) struct ConsumeArgs {
    /// Topic to read.
    topic: String,
    /// Broker addresses, `host:port[,host:port]`.
    #[arg(long, default_value = DEFAULT_BROKERS)]
    brokers: String,
    /// Start at the first offset of each partition (default: only new records). With
    /// `--group`: where partitions without a committed offset start.
    #[arg(long, group = "start")]
    from_beginning: bool,
    /// Start at this offset in each partition.
    #[arg(long, group = "start", conflicts_with = "group")]
    offset: Option<u64>,
    /// Start at the first record at or after this time: milliseconds since the epoch or
    /// RFC 3339 (`2024-05-01T12:00:00Z`).
    #[arg(long, group = "start", value_parser = parse_time_ms, conflicts_with = "group")]
    from_time: Option<i64>,
    /// Read only this partition.
    #[arg(long, conflicts_with = "group")]
    partition: Option<u32>,
    /// Join this consumer group: share the partitions with its other members and commit
    /// progress.
    #[arg(long, conflicts_with = "no_follow")]
    group: Option<String>,
    /// With `--group`: the coordinator evicts this consumer after this long without a
    /// heartbeat.
    #[arg(long, default_value_t = 10_000, requires = "group")]
    session_timeout_ms: u64,
    /// With `--group`: print rebalances and commits to stderr.
    #[arg(long, requires = "group")]
    verbose: bool,
    /// Stop after this many records, waiting for them to arrive (with --no-follow, stop
    /// earlier if the end offsets seen at start come first).
    #[arg(long)]
    max_messages: Option<u64>,
    /// Stop once caught up to the end offsets seen at start.
    #[arg(long)]
    no_follow: bool,
    /// Output template: {key} {value} {offset} {partition} {timestamp} {headers} {topic}.
    #[arg(long, default_value = "{value}", conflicts_with = "json")]
    format: String,
    /// One JSON object per record and line.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run_consume(args: ConsumeArgs) -> ExitCode {
    run(consume(args))
}

async fn consume(args: ConsumeArgs) -> Result<(), ClientError> {
    let template = Template::parse(&args.format).map_err(ClientError::InvalidConfig)?;
    let client = connect(&args.brokers).await?;
    if let Some(group) = args.group.clone() {
        return consume_group(client, group, &args, &template).await;
    }
    let partitions = client.partition_count(&args.topic).await?;
    let assigned: Vec<TopicPartition> = match args.partition {
        Some(p) if p >= partitions => {
            return Err(ClientError::UnknownPartition {
                topic: args.topic.clone(),
                partition: p,
                partitions,
            });
        }
        Some(p) => vec![TopicPartition::new(args.topic.clone(), p)],
        None => (0..partitions)
            .map(|p| TopicPartition::new(args.topic.clone(), p))
            .collect(),
    };
    let start = if args.from_beginning {
        SeekTo::Beginning
    } else if let Some(offset) = args.offset {
        SeekTo::Offset(offset)
    } else if let Some(ms) = args.from_time {
        SeekTo::Timestamp(ms)
    } else {
        SeekTo::End
    };
    let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default());
    consumer.assign(assigned.clone());
    for tp in &assigned {
        consumer.seek(tp, start).await?;
    }
    let stop_at: Option<BTreeMap<TopicPartition, u64>> = if args.no_follow {
        let mut ends = BTreeMap::new();
        for tp in &assigned {
            let end = client
                .list_offset(&tp.topic, tp.partition, LATEST_TIMESTAMP)
                .await?;
            ends.insert(tp.clone(), end);
        }
        Some(ends)
    } else {
        None
    };
    let max = args.max_messages.unwrap_or(u64::MAX);
    let mut printed = 0u64;
    let stdout = std::io::stdout();
    loop {
        if printed >= max {
            return Ok(());
        }
        if let Some(ends) = &stop_at
            && ends
                .iter()
                .all(|(tp, end)| consumer.position(tp).is_some_and(|p| p >= *end))
        {
            return Ok(());
        }
        let records = consumer.poll(POLL_TIMEOUT).await?;
        let mut out = stdout.lock();
        for record in &records {
            if printed >= max {
                break;
            }
            if let Err(e) = print_record(&mut out, record, args.json, &template) {
                return stdout_closed(e);
            }
            printed += 1;
        }
        if let Err(e) = out.flush() {
            return stdout_closed(e);
        }
    }
}

/// Prints rebalances to stderr (`--verbose`).
struct Announce {
    verbose: bool,
}

impl RebalanceListener for Announce {
    fn on_assigned(&mut self, partitions: &[TopicPartition]) {
        if self.verbose {
            eprintln!("assigned {}", list(partitions));
        }
    }
    fn on_revoked(&mut self, partitions: &[TopicPartition]) {
        if self.verbose {
            eprintln!("revoked {}", list(partitions));
        }
    }
}

fn list(partitions: &[TopicPartition]) -> String {
    let names: Vec<String> = partitions.iter().map(ToString::to_string).collect();
    names.join(",")
}

/// `consume --group`: a group member that commits what it printed after each batch.
async fn consume_group(
    client: Client,
    group: String,
    args: &ConsumeArgs,
    template: &Template,
) -> Result<(), ClientError> {
    let session = Duration::from_millis(args.session_timeout_ms);
    let config = ConsumerConfig {
        group_id: Some(group),
        session_timeout: session,
        heartbeat_interval: (session / 3).min(Duration::from_secs(3)),
        // Commits are explicit: only what was printed (a --max-messages stop can leave the
        // rest of a batch unprinted).
        auto_commit: false,
        auto_offset_reset: if args.from_beginning {
            OffsetReset::Earliest
        } else {
            OffsetReset::Latest
        },
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(client, config);
    consumer.subscribe(
        vec![args.topic.clone()],
        Announce {
            verbose: args.verbose,
        },
    )?;
    let max = args.max_messages.unwrap_or(u64::MAX);
    let mut printed = 0u64;
    let stdout = std::io::stdout();
    let mut result = Ok(());
    // SIGINT or SIGTERM: stop, commit and leave, so the others take over at once instead
    // of after the session timeout.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let interrupt = tokio::signal::ctrl_c();
    tokio::pin!(interrupt);
    while printed < max {
        let polled = tokio::select! {
            polled = consumer.poll(POLL_TIMEOUT) => polled,
            _ = &mut interrupt => break,
            _ = terminate.recv() => break,
        };
        let records = match polled {
            Ok(records) => records,
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        let mut next: BTreeMap<TopicPartition, (u64, String)> = BTreeMap::new();
        let mut out = stdout.lock();
        for record in &records {
            if printed >= max {
                break;
            }
            if let Err(e) = print_record(&mut out, record, args.json, template) {
                return stdout_closed(e);
            }
            printed += 1;
            next.insert(
                TopicPartition::new(record.topic.clone(), record.partition),
                (record.offset + 1, String::new()),
            );
        }
        if let Err(e) = out.flush() {
            return stdout_closed(e);
        }
        drop(out);
        if next.is_empty() {
            continue;
        }
        let summary: Vec<String> = next
            .iter()
            .map(|(tp, (o, _))| format!("{tp}@{o}"))
            .collect();
        match consumer.commit_offsets(next).await {
            Ok(()) if args.verbose => eprintln!("committed {}", summary.join(",")),
            Ok(()) => {}
            // A rebalance took the partitions; the next poll rejoins. The records may be
            // printed again by their next owner (at-least-once).
            Err(e) => eprintln!("warning: commit failed: {e}"),
        }
    }
    let closed = consumer.close().await;
    result.and(closed)
}

/// A closed stdout (`| head`) ends the command quietly; other write errors are reported.
/// Writes one record as a line: JSON, or the output template.
fn print_record(
    out: &mut impl Write,
    record: &ConsumerRecord,
    json: bool,
    template: &Template,
) -> std::io::Result<()> {
    if json {
        writeln!(out, "{}", record_json(record))
    } else {
        writeln!(out, "{}", template.render(record))
    }
}

fn stdout_closed(e: std::io::Error) -> Result<(), ClientError> {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Ok(())
    } else {
        Err(e.into())
    }
}
