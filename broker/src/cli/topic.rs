//! `sluice topic create|list|describe|add-partitions|delete`.

use std::process::ExitCode;

use serde_json::{Map, Value, json};
use sluice_client::{ClientError, TopicDescription};

use super::{DEFAULT_BROKERS, connect, parse_key_value, run};

/// `sluice topic ...`.
#[derive(clap::Args)]
pub(crate) struct TopicArgs {
    /// Broker addresses, `host:port[,host:port]`.
    #[arg(long, global = true, default_value = DEFAULT_BROKERS)]
    brokers: String,
    #[command(subcommand)]
    command: TopicCommand,
}

#[derive(clap::Subcommand)]
enum TopicCommand {
    /// Create a topic.
    Create {
        /// Topic name.
        name: String,
        /// Number of partitions.
        #[arg(long)]
        partitions: u32,
        /// Copies of each partition (cluster mode) [default: min(3, registered brokers not
        /// being decommissioned); 1 on a broker running alone].
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=16))]
        replication_factor: Option<u16>,
        /// A topic config, `key=value` (repeatable), e.g. `retention.ms=86400000`.
        #[arg(long = "config", value_parser = parse_key_value)]
        configs: Vec<(String, String)>,
    },
    /// List topics with their partition counts.
    List,
    /// Show a topic's configs and partitions.
    Describe {
        /// Topic name.
        name: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Grow a topic to more partitions (existing ones keep their records; keyed records may
    /// map to other partitions from now on).
    AddPartitions {
        /// Topic name.
        name: String,
        /// The new partition count (the total, more than today's).
        total: u32,
    },
    /// Delete a topic and its data.
    Delete {
        /// Topic name.
        name: String,
    },
}

pub(crate) fn run_topic(args: TopicArgs) -> ExitCode {
    run(topic(args))
}

async fn topic(args: TopicArgs) -> Result<(), ClientError> {
    let client = connect(&args.brokers).await?;
    match args.command {
        TopicCommand::Create {
            name,
            partitions,
            replication_factor,
            configs,
        } => {
            client
                .create_topic_replicated(&name, partitions, replication_factor, &configs)
                .await?;
            println!("created topic '{name}' with {partitions} partitions");
        }
        TopicCommand::List => {
            let mut topics = client.list_topics().await?;
            topics.sort_by(|a, b| a.name.cmp(&b.name));
            for t in topics {
                println!("{}\t{}", t.name, t.partitions);
            }
        }
        TopicCommand::Describe { name, json } => {
            let description = client.describe_topic(&name).await?;
            if json {
                println!("{}", describe_json(&description));
            } else {
                print!("{}", describe_text(&description));
            }
        }
        TopicCommand::AddPartitions { name, total } => {
            client.create_partitions(&name, total).await?;
            println!("topic '{name}' now has {total} partitions");
        }
        TopicCommand::Delete { name } => {
            client.delete_topic(&name).await?;
            println!("deleted topic '{name}'");
        }
    }
    Ok(())
}

/// `{"name":..,"configs":{k:v..},"partitions":[{"partition","leader","replicas","isr",
/// "start_offset","end_offset","error"}]}` (`error` `NONE`, or why the offsets are missing:
/// in a cluster, `NOT_LEADER_OR_FOLLOWER` when the broker asked holds no replica).
fn describe_json(d: &TopicDescription) -> Value {
    let configs: Map<String, Value> = d
        .configs
        .iter()
        .map(|c| (c.name.clone(), Value::String(c.value.clone())))
        .collect();
    let partitions: Vec<Value> = d
        .partitions
        .iter()
        .map(|p| {
            json!({
                "partition": p.partition,
                "leader": p.leader,
                "leader_shard": p.leader_shard,
                "replicas": p.replicas,
                "isr": p.isr,
                "start_offset": p.start_offset,
                "end_offset": p.end_offset,
                "error": p.error.name(),
            })
        })
        .collect();
    json!({ "name": d.name, "configs": configs, "partitions": partitions })
}

fn describe_text(d: &TopicDescription) -> String {
    let mut out = format!("topic {} with {} partitions\n", d.name, d.partitions.len());
    out.push_str("configs:\n");
    for c in &d.configs {
        out.push_str(&format!("  {}={}\n", c.name, c.value));
    }
    out.push_str("partitions:\n");
    for p in &d.partitions {
        out.push_str(&format!(
            "  {}\tleader {} (shard {})\treplicas {:?}\tisr {:?}\toffsets {}..{}\n",
            p.partition, p.leader, p.leader_shard, p.replicas, p.isr, p.start_offset, p.end_offset
        ));
        if p.error != sluice_proto::protocol::ErrorCode::NONE {
            out.pop();
            out.push_str(&format!("\t({})\n", p.error.name()));
        }
    }
    out
}
