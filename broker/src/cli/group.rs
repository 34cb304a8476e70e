//! `sluice group list|describe|reset-offsets|delete`.

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;

use serde_json::{Value, json};
use sluice_client::{
    Client, ClientError, DescribedGroup, EARLIEST_TIMESTAMP, LATEST_TIMESTAMP, TopicPartition,
    decode_assignment,
};

use super::time::parse_time_ms;
use super::{DEFAULT_BROKERS, connect, describe, run};

/// `sluice group ...`.
#[derive(clap::Args)]
pub(crate) struct GroupArgs {
    /// Broker addresses, `host:port[,host:port]`.
    #[arg(long, global = true, default_value = DEFAULT_BROKERS)]
    brokers: String,
    #[command(subcommand)]
    command: GroupCommand,
}

#[derive(clap::Subcommand)]
enum GroupCommand {
    /// List consumer groups with their state and member count.
    List,
    /// Show a group's members and assignments, and per partition the committed offset,
    /// the end offset and the lag.
    Describe {
        /// Group id.
        group: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Set a group's committed offsets for a topic (only while the group has no members).
    #[command(group = clap::ArgGroup::new("to").required(true).multiple(false))]
    ResetOffsets {
        /// Group id.
        group: String,
        /// The topic whose partitions to reset.
        #[arg(long)]
        topic: String,
        /// Each partition's first offset.
        #[arg(long, group = "to")]
        to_earliest: bool,
        /// Each partition's end offset.
        #[arg(long, group = "to")]
        to_latest: bool,
        /// This offset in every partition.
        #[arg(long, group = "to")]
        to_offset: Option<u64>,
        /// The first record at or after this time: milliseconds since the epoch or RFC 3339.
        #[arg(long, group = "to", value_parser = parse_time_ms)]
        to_time: Option<i64>,
    },
    /// Delete a group with no members, and its committed offsets.
    Delete {
        /// Group id.
        group: String,
    },
}

pub(crate) fn run_group(args: GroupArgs) -> ExitCode {
    run(group(args))
}

async fn group(args: GroupArgs) -> Result<(), ClientError> {
    let client = connect(&args.brokers).await?;
    match args.command {
        GroupCommand::List => {
            // Fails only when no broker answered; the others are warnings.
            let mut listing = client.list_groups().await?;
            listing.groups.sort_by(|a, b| a.group.cmp(&b.group));
            for g in listing.groups {
                println!("{}\t{}\t{} members", g.group, g.state, g.members);
            }
            for (addr, e) in &listing.unreachable {
                eprintln!(
                    "warning: broker {addr} did not answer; its groups are missing: {}",
                    describe(e)
                );
            }
        }
        GroupCommand::Describe { group, json } => {
            let description = client.describe_group(&group).await?;
            let rows = partition_rows(&client, &description).await?;
            if json {
                println!("{}", describe_json(&description, &rows)?);
            } else {
                print!("{}", describe_text(&description, &rows)?);
            }
        }
        GroupCommand::ResetOffsets {
            group,
            topic,
            to_earliest,
            to_latest,
            to_offset,
            to_time,
        } => {
            let partitions = client.partition_count(&topic).await?;
            let mut offsets = BTreeMap::new();
            for p in 0..partitions {
                let offset = if to_earliest {
                    client.list_offset(&topic, p, EARLIEST_TIMESTAMP).await?
                } else if to_latest {
                    client.list_offset(&topic, p, LATEST_TIMESTAMP).await?
                } else if let Some(ms) = to_time {
                    client.list_offset(&topic, p, ms).await?
                } else {
                    to_offset.expect("clap requires one --to-* option")
                };
                offsets.insert(TopicPartition::new(topic.clone(), p), offset);
            }
            client.reset_offsets(&group, &offsets).await?;
            let list: Vec<String> = offsets
                .iter()
                .map(|(tp, o)| format!("{}={o}", tp.partition))
                .collect();
            println!(
                "reset group '{group}' on topic '{topic}': {}",
                list.join(" ")
            );
        }
        GroupCommand::Delete { group } => {
            client.delete_group(&group).await?;
            println!("deleted group '{group}'");
        }
    }
    Ok(())
}

/// One partition of a described group.
struct Row {
    tp: TopicPartition,
    committed: Option<u64>,
    end: u64,
    member: Option<String>,
}

impl Row {
    /// End minus committed; with no committed offset, everything from the log start.
    fn lag(&self, start: u64) -> u64 {
        self.end.saturating_sub(self.committed.unwrap_or(start))
    }
}

/// Every partition of every topic the group has offsets for or is assigned, with its
/// committed offset, end offset and owner.
async fn partition_rows(
    client: &Client,
    d: &DescribedGroup,
) -> Result<Vec<(Row, u64)>, ClientError> {
    let committed = client.committed_offsets(&d.group, &[]).await?;
    let mut owner: BTreeMap<TopicPartition, String> = BTreeMap::new();
    for m in &d.members {
        for tp in decode_assignment(&m.assignment)? {
            owner.insert(tp, m.member_id.clone());
        }
    }
    let topics: BTreeSet<String> = committed
        .keys()
        .chain(owner.keys())
        .map(|tp| tp.topic.clone())
        .collect();
    let mut rows = Vec::new();
    for topic in topics {
        let description = match client.describe_topic(&topic).await {
            Ok(description) => description,
            // Offsets of a deleted topic: nothing to measure lag against.
            Err(ClientError::UnknownTopic { .. }) => continue,
            Err(e) => return Err(e),
        };
        for p in &description.partitions {
            let tp = TopicPartition::new(topic.clone(), p.partition);
            let row = Row {
                committed: committed.get(&tp).map(|c| c.offset),
                end: p.end_offset,
                member: owner.get(&tp).cloned(),
                tp,
            };
            rows.push((row, p.start_offset));
        }
    }
    Ok(rows)
}

fn describe_json(d: &DescribedGroup, rows: &[(Row, u64)]) -> Result<Value, ClientError> {
    let mut members = Vec::new();
    for m in &d.members {
        let assignment: Vec<Value> = decode_assignment(&m.assignment)?
            .iter()
            .map(|tp| json!({ "topic": tp.topic, "partition": tp.partition }))
            .collect();
        members.push(json!({
            "member_id": m.member_id,
            "client_id": m.client_id,
            "client_host": m.client_host,
            "assignment": assignment,
        }));
    }
    let partitions: Vec<Value> = rows
        .iter()
        .map(|(r, start)| {
            json!({
                "topic": r.tp.topic,
                "partition": r.tp.partition,
                "committed": r.committed,
                "end": r.end,
                "lag": r.lag(*start),
                "member": r.member,
            })
        })
        .collect();
    Ok(json!({
        "group": d.group,
        "state": d.state,
        "protocol": d.protocol,
        "generation": d.generation_id,
        "members": members,
        "partitions": partitions,
    }))
}

fn describe_text(d: &DescribedGroup, rows: &[(Row, u64)]) -> Result<String, ClientError> {
    let mut out = format!(
        "group {} state {} protocol {} generation {} with {} members\n",
        d.group,
        d.state,
        if d.protocol.is_empty() {
            "-"
        } else {
            &d.protocol
        },
        d.generation_id,
        d.members.len()
    );
    if !d.members.is_empty() {
        out.push_str("members:\n");
    }
    for m in &d.members {
        let assignment: Vec<String> = decode_assignment(&m.assignment)?
            .iter()
            .map(ToString::to_string)
            .collect();
        out.push_str(&format!(
            "  {}\t{}\t{}\t{}\n",
            m.member_id,
            m.client_id,
            m.client_host,
            assignment.join(",")
        ));
    }
    out.push_str("topic\tpartition\tcommitted\tend\tlag\tmember\n");
    for (r, start) in rows {
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\t{}\n",
            r.tp.topic,
            r.tp.partition,
            r.committed
                .map_or_else(|| "-".to_owned(), |c| c.to_string()),
            r.end,
            r.lag(*start),
            r.member.as_deref().unwrap_or("-")
        ));
    }
    Ok(out)
}
