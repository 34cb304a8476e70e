//! Merges shard snapshots and writes the Prometheus text exposition format (version 0.0.4):
//! for every metric a `# HELP` and a `# TYPE` line, then its samples; histograms as
//! cumulative `_bucket{le=..}` samples ending with `+Inf`, then `_sum` and `_count`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

use sluice_storage::{LATENCY_BUCKETS_US, LatencyHistogram};

use super::{FetchPhase, LeaderSample, ReplicaSample, ShardSnapshot, Traffic};

/// A label value with `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn histogram(out: &mut String, name: &str, labels: &str, h: &LatencyHistogram) {
    let sep = if labels.is_empty() { "" } else { "," };
    let mut cumulative = 0u64;
    for (bound_us, count) in LATENCY_BUCKETS_US.iter().zip(h.buckets.iter()) {
        cumulative += count;
        let le = *bound_us as f64 / 1e6;
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
        );
    }
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", h.count);
    let braces = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    };
    let _ = writeln!(out, "{name}_sum{braces} {}", h.sum_us as f64 / 1e6);
    let _ = writeln!(out, "{name}_count{braces} {}", h.count);
}

/// Renders the merged snapshots. `shards` is the shard count (a shard that did not answer
/// in time is missing from `snapshots` and counted in `sluice_metrics_shards_missing`).
pub(crate) fn render(snapshots: &[ShardSnapshot], shards: usize) -> String {
    let mut out = String::with_capacity(16 * 1024);

    type ShardValue = fn(&ShardSnapshot) -> f64;
    let per_shard: [(&str, &str, &str, ShardValue); 20] = [
        (
            "sluice_shard_produce_bytes_total",
            "counter",
            "Record-batch bytes appended by produce requests, by owning shard.",
            |s| s.traffic.produce_bytes as f64,
        ),
        (
            "sluice_shard_produce_records_total",
            "counter",
            "Records appended by produce requests, by owning shard.",
            |s| s.traffic.produce_records as f64,
        ),
        (
            "sluice_shard_fetch_bytes_total",
            "counter",
            "Record-batch bytes sent in fetch responses, by the shard that answered the fetch.",
            |s| s.traffic.fetch_bytes as f64,
        ),
        (
            "sluice_shard_fetch_records_total",
            "counter",
            "Records sent in fetch responses, by the shard that answered the fetch.",
            |s| s.traffic.fetch_records as f64,
        ),
        (
            "sluice_batch_cache_hits_total",
            "counter",
            "Log reads served from the tail (batch) cache.",
            |s| s.io.cache_hits as f64,
        ),
        (
            "sluice_batch_cache_misses_total",
            "counter",
            "Log reads that went to the disk.",
            |s| s.io.cache_misses as f64,
        ),
        (
            "sluice_read_ahead_hits_total",
            "counter",
            "Log reads from the disk served by bytes read ahead for a sequential reader.",
            |s| s.io.read_ahead_hits as f64,
        ),
        (
            "sluice_disk_full_refusals_total",
            "counter",
            "Appends refused with DISK_FULL.",
            |s| s.io.disk_full_refusals as f64,
        ),
        (
            "sluice_fsyncs_total",
            "counter",
            "fdatasync/fsync calls of the shard's logs (group commits and segment seals).",
            |s| s.io.fsync.count as f64,
        ),
        (
            "sluice_shard_inbox_messages",
            "gauge",
            "Messages waiting in the shard's inbox.",
            |s| s.inbox as f64,
        ),
        (
            "sluice_shard_requests_in_flight",
            "gauge",
            "Requests read by the shard's connections and not yet answered.",
            |s| s.in_flight as f64,
        ),
        (
            "sluice_throttle_seconds_total",
            "counter",
            "Time connections waited for the shard's request and fetch budgets (reported to clients as throttle_ms).",
            |s| s.throttle_us as f64 / 1e6,
        ),
        (
            "sluice_connections",
            "gauge",
            "Open client connections.",
            |s| s.connections as f64,
        ),
        (
            "sluice_shard_partitions",
            "gauge",
            "Partitions the shard owns.",
            |s| s.partitions_owned as f64,
        ),
        (
            "sluice_write_buffer_bytes",
            "gauge",
            "Write-buffer chunk bytes held by the shard's partition logs.",
            |s| s.write_buffer_bytes as f64,
        ),
        (
            "sluice_write_buffer_free_bytes",
            "gauge",
            "Write-buffer chunk bytes given back by the shard's logs, still mapped for reuse \
             (with sluice_write_buffer_bytes, at most the limit).",
            |s| s.write_buffer_free_bytes as f64,
        ),
        (
            "sluice_write_buffer_limit_bytes",
            "gauge",
            "The shard's write-buffer budget (shard_write_buffer_bytes).",
            |s| s.write_buffer_limit_bytes as f64,
        ),
        (
            "sluice_tail_cache_bytes",
            "gauge",
            "Bytes of recent record batches the shard keeps in memory for consumers that keep \
             up (over the limit only while some are not written yet).",
            |s| s.tail_cache_bytes as f64,
        ),
        (
            "sluice_tail_cache_limit_bytes",
            "gauge",
            "The shard's tail-cache budget: its most recent written batches of any partition.",
            |s| s.tail_cache_limit_bytes as f64,
        ),
        (
            "sluice_shard_up",
            "gauge",
            "1 for every shard that answered this scrape.",
            |_| 1.0,
        ),
    ];
    for (name, kind, help, value) in per_shard {
        header(&mut out, name, kind, help);
        for s in snapshots {
            let _ = writeln!(out, "{name}{{shard=\"{}\"}} {}", s.shard, value(s));
        }
    }
    header(
        &mut out,
        "sluice_metrics_shards_missing",
        "gauge",
        "Shards that did not answer this scrape in time.",
    );
    let _ = writeln!(
        out,
        "sluice_metrics_shards_missing {}",
        shards.saturating_sub(snapshots.len())
    );

    // Per partition, summed over shards (fetches are counted by the shard that answered).
    let mut partitions: BTreeMap<(&str, u32), Traffic> = BTreeMap::new();
    for s in snapshots {
        for p in &s.partitions {
            partitions
                .entry((p.topic.as_str(), p.partition))
                .or_default()
                .add(&p.traffic);
        }
    }
    type PartValue = fn(&Traffic) -> u64;
    let per_partition: [(&str, &str, PartValue); 4] = [
        (
            "sluice_partition_produce_bytes_total",
            "Record-batch bytes appended to the partition.",
            |t| t.produce_bytes,
        ),
        (
            "sluice_partition_produce_records_total",
            "Records appended to the partition.",
            |t| t.produce_records,
        ),
        (
            "sluice_partition_fetch_bytes_total",
            "Record-batch bytes of the partition sent in fetch responses.",
            |t| t.fetch_bytes,
        ),
        (
            "sluice_partition_fetch_records_total",
            "Records of the partition sent in fetch responses.",
            |t| t.fetch_records,
        ),
    ];
    for (name, help, value) in per_partition {
        header(&mut out, name, "counter", help);
        for ((topic, partition), t) in &partitions {
            let _ = writeln!(
                out,
                "{name}{{topic=\"{}\",partition=\"{partition}\"}} {}",
                escape(topic),
                value(t)
            );
        }
    }

    // Requests by API (merged over shards).
    let mut requests: BTreeMap<&str, LatencyHistogram> = BTreeMap::new();
    let mut errors: BTreeMap<(&str, i16, &str), u64> = BTreeMap::new();
    for s in snapshots {
        for (api, h) in &s.requests {
            requests.entry(api).or_default().merge(h);
        }
        for (api, code, n) in &s.errors {
            *errors.entry((api, code.0, code.name())).or_default() += n;
        }
    }
    header(
        &mut out,
        "sluice_requests_total",
        "counter",
        "Requests answered (acks=0 produce: completed), by API.",
    );
    for (api, h) in &requests {
        let _ = writeln!(out, "sluice_requests_total{{api=\"{api}\"}} {}", h.count);
    }
    header(
        &mut out,
        "sluice_request_duration_seconds",
        "histogram",
        "Time from reading a request to writing its response, by API.",
    );
    for (api, h) in &requests {
        histogram(
            &mut out,
            "sluice_request_duration_seconds",
            &format!("api=\"{api}\""),
            h,
        );
    }
    header(
        &mut out,
        "sluice_request_errors_total",
        "counter",
        "Errors by API and code: whole-request errors, and per-partition errors of Produce, Fetch and ListOffsets.",
    );
    for ((api, code, name), n) in &errors {
        let _ = writeln!(
            out,
            "sluice_request_errors_total{{api=\"{api}\",code=\"{code}\",name=\"{name}\"}} {n}"
        );
    }

    let mut fsync = LatencyHistogram::default();
    for s in snapshots {
        fsync.merge(&s.io.fsync);
    }
    header(
        &mut out,
        "sluice_fsync_duration_seconds",
        "histogram",
        "Latency of fdatasync/fsync calls of every log (group commits and segment seals).",
    );
    histogram(&mut out, "sluice_fsync_duration_seconds", "", &fsync);

    replication(&mut out, snapshots);

    header(
        &mut out,
        "sluice_consumer_group_lag",
        "gauge",
        "Records between a consumer group's committed offset and the partition's high watermark.",
    );
    let mut lags: BTreeMap<(&str, &str, u32), i64> = BTreeMap::new();
    let mut high_watermarks: HashMap<(&str, u32), u64> = HashMap::new();
    for s in snapshots {
        for (topic, partition, hw) in &s.high_watermarks {
            high_watermarks.insert((topic, *partition), *hw);
        }
    }
    for s in snapshots {
        for (group, topic, partition, offset) in &s.committed {
            if let Some(&hw) = high_watermarks.get(&(topic.as_str(), *partition))
                && *offset >= 0
            {
                let lag = i64::try_from(hw)
                    .unwrap_or(i64::MAX)
                    .saturating_sub(*offset);
                lags.insert((group, topic, *partition), lag.max(0));
            }
        }
    }
    for s in snapshots {
        for (g, t, p, lag) in &s.group_lag {
            lags.insert((g, t, *p), *lag);
        }
    }
    for ((group, topic, partition), lag) in lags {
        let _ = writeln!(
            out,
            "sluice_consumer_group_lag{{group=\"{}\",topic=\"{}\",partition=\"{partition}\"}} {lag}",
            escape(group),
            escape(topic)
        );
    }
    out
}

/// The replication gauges: under-replicated partitions (this node's leaders), ISR and replica
/// counts of the partitions it leads, high watermark and log end of every partition it holds,
/// and the leader's view of each follower's lag.
fn replication(out: &mut String, snapshots: &[ShardSnapshot]) {
    header(
        out,
        "sluice_under_replicated_partitions",
        "gauge",
        "Partitions this node leads whose in-sync replica set is smaller than their replica list.",
    );
    let under: u64 = snapshots.iter().map(|s| s.under_replicated).sum();
    let _ = writeln!(out, "sluice_under_replicated_partitions {under}");

    header(
        out,
        "sluice_replica_fetch_phase_seconds",
        "histogram",
        "This node's follower fetch rounds by phase: round_trip (request to whole answer: the leader's long poll, read and transfer), append (the answer's batches into the logs), durable (their fdatasyncs).",
    );
    for phase in FetchPhase::ALL {
        let mut h = LatencyHistogram::default();
        for s in snapshots {
            h.merge(&s.replica_fetch[phase as usize]);
        }
        histogram(
            out,
            "sluice_replica_fetch_phase_seconds",
            &format!("phase=\"{}\"", phase.label()),
            &h,
        );
    }
    header(
        out,
        "sluice_replica_fetched_bytes_total",
        "counter",
        "Record-batch bytes this node's followers fetched from leaders.",
    );
    let fetched: u64 = snapshots.iter().map(|s| s.replica_fetched_bytes).sum();
    let _ = writeln!(out, "sluice_replica_fetched_bytes_total {fetched}");

    // A partition lives on one shard; sorted for a stable output.
    let mut samples: Vec<&ReplicaSample> = snapshots.iter().flat_map(|s| &s.replicas).collect();
    samples.sort_unstable_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    let labels = |r: &ReplicaSample| {
        format!(
            "topic=\"{}\",partition=\"{}\"",
            escape(&r.topic),
            r.partition
        )
    };
    type LeaderValue = fn(&LeaderSample) -> usize;
    let leader_gauges: [(&str, &str, LeaderValue); 2] = [
        (
            "sluice_partition_isr_size",
            "In-sync replicas of a partition this node leads (1 when the broker runs alone).",
            |l| l.isr,
        ),
        (
            "sluice_partition_replicas",
            "Replicas of a partition this node leads (1 when the broker runs alone).",
            |l| l.replicas,
        ),
    ];
    for (name, help, value) in leader_gauges {
        header(out, name, "gauge", help);
        for r in &samples {
            if let Some(l) = &r.leader {
                let _ = writeln!(out, "{name}{{{}}} {}", labels(r), value(l));
            }
        }
    }
    type OffsetValue = fn(&ReplicaSample) -> u64;
    let offset_gauges: [(&str, &str, OffsetValue); 2] = [
        (
            "sluice_partition_high_watermark",
            "End of what consumers may read, for every partition held here (leader or follower).",
            |r| r.high_watermark,
        ),
        (
            "sluice_partition_log_end_offset",
            "End of the local log, for every partition held here (leader or follower).",
            |r| r.log_end,
        ),
    ];
    for (name, help, value) in offset_gauges {
        header(out, name, "gauge", help);
        for r in &samples {
            let _ = writeln!(out, "{name}{{{}}} {}", labels(r), value(r));
        }
    }
    header(
        out,
        "sluice_replica_lag_records",
        "gauge",
        "On the leader: its log end minus the follower's last fetch offset.",
    );
    for r in &samples {
        if let Some(l) = &r.leader {
            for (follower, lag) in &l.lag {
                let _ = writeln!(
                    out,
                    "sluice_replica_lag_records{{{},follower=\"{follower}\"}} {lag}",
                    labels(r)
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn histograms_are_cumulative_and_labels_escaped() {
        let mut s = ShardSnapshot::default();
        let mut h = LatencyHistogram::default();
        h.record(Duration::from_micros(10));
        h.record(Duration::from_millis(3));
        s.requests.push(("Produce", h));
        s.group_lag.push(("g\"1".into(), "t".into(), 0, 5));
        let text = render(&[s], 2);
        assert!(
            text.contains(
                "sluice_request_duration_seconds_bucket{api=\"Produce\",le=\"0.00005\"} 1"
            )
        );
        assert!(
            text.contains("sluice_request_duration_seconds_bucket{api=\"Produce\",le=\"0.005\"} 2")
        );
        assert!(
            text.contains("sluice_request_duration_seconds_bucket{api=\"Produce\",le=\"+Inf\"} 2")
        );
        assert!(text.contains("sluice_request_duration_seconds_count{api=\"Produce\"} 2"));
        assert!(
            text.contains(
                "sluice_consumer_group_lag{group=\"g\\\"1\",topic=\"t\",partition=\"0\"} 5"
            )
        );
        assert!(text.contains("sluice_metrics_shards_missing 1"));
    }

    #[test]
    fn replication_gauges_sum_leaders_and_list_followers() {
        let mut a = ShardSnapshot {
            under_replicated: 1,
            ..ShardSnapshot::default()
        };
        a.replicas.push(ReplicaSample {
            topic: "t".into(),
            partition: 0,
            high_watermark: 7,
            log_end: 9,
            leader: Some(LeaderSample {
                isr: 2,
                replicas: 3,
                lag: vec![(2, 0), (3, 9)],
            }),
        });
        let mut b = ShardSnapshot {
            shard: 1,
            ..ShardSnapshot::default()
        };
        b.replicas.push(ReplicaSample {
            topic: "t".into(),
            partition: 1,
            high_watermark: 4,
            log_end: 5,
            leader: None,
        });
        let text = render(&[a, b], 2);
        assert!(text.contains("sluice_under_replicated_partitions 1\n"));
        assert!(text.contains("sluice_partition_isr_size{topic=\"t\",partition=\"0\"} 2\n"));
        assert!(text.contains("sluice_partition_replicas{topic=\"t\",partition=\"0\"} 3\n"));
        assert!(!text.contains("sluice_partition_isr_size{topic=\"t\",partition=\"1\"}"));
        assert!(text.contains("sluice_partition_high_watermark{topic=\"t\",partition=\"1\"} 4\n"));
        assert!(text.contains("sluice_partition_log_end_offset{topic=\"t\",partition=\"0\"} 9\n"));
        assert!(text.contains(
            "sluice_replica_lag_records{topic=\"t\",partition=\"0\",follower=\"3\"} 9\n"
        ));
        assert!(text.contains(
            "sluice_replica_lag_records{topic=\"t\",partition=\"0\",follower=\"2\"} 0\n"
        ));
    }
}
