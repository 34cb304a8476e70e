//! The metrics endpoint of a real `sluice serve`: scrape, produce and fetch through the wire,
//! scrape again; the counters moved by exactly what was done, and the output is valid
//! Prometheus text (checked by the small parser below). Also: 404/405/431 answers.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::Broker;
use common::wire::{Conn, batch, values};
use sluice_proto::protocol::{
    ApiKey, ErrorCode, OffsetCommitPartition, OffsetCommitRequest, OffsetCommitResponse,
    OffsetCommitTopic,
};

/// A parsed scrape: `name{sorted labels}` → value.
type Samples = BTreeMap<String, f64>;

/// Sends `request` raw and returns the status code and body.
fn http(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to metrics");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(request).expect("send request");
    let mut response = String::new();
    s.read_to_string(&mut response).expect("read response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("Content-Length");
    assert_eq!(length, body.len(), "Content-Length matches the body");
    (status, body.to_string())
}

fn scrape(addr: SocketAddr) -> Samples {
    let (status, body) = http(addr, b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n");
    assert_eq!(status, 200, "{body}");
    parse(&body)
}

/// Splits `name{a="x",b="y"}` into the name and its labels (values unescaped).
fn split_sample_key(key: &str) -> (String, Vec<(String, String)>) {
    let Some((name, rest)) = key.split_once('{') else {
        return (key.to_string(), Vec::new());
    };
    let body = rest.strip_suffix('}').expect("labels end with }");
    let mut labels = Vec::new();
    let mut chars = body.chars().peekable();
    while chars.peek().is_some() {
        let label: String = chars.by_ref().take_while(|&c| c != '=').collect();
        assert_eq!(chars.next(), Some('"'), "label value is quoted in {key}");
        let mut value = String::new();
        loop {
            match chars.next().expect("unterminated label value") {
                '\\' => match chars.next().expect("escape") {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        assert!(
            label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "label name {label:?}"
        );
        labels.push((label, value));
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    (name.to_string(), labels)
}

/// Parses the text exposition format strictly: every line is `# HELP name text`,
/// `# TYPE name kind` or `name{labels} value`; a family's HELP and TYPE come before its
/// samples and families are not interleaved; histogram buckets are cumulative, end with
/// `+Inf` and `+Inf` equals `_count`.
fn parse(text: &str) -> Samples {
    let mut samples = Samples::new();
    let mut helped = HashSet::new();
    let mut types: HashMap<String, String> = HashMap::new();
    let mut finished = HashSet::new();
    let mut current: Option<String> = None;
    // histogram series (name, labels without le) → [(le, count)]
    let mut buckets: BTreeMap<(String, String), Vec<(f64, f64)>> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split_whitespace().next().expect("HELP name");
            assert!(helped.insert(name.to_string()), "HELP twice for {name}");
            if let Some(prev) = current.replace(name.to_string()) {
                finished.insert(prev);
            }
            assert!(!finished.contains(name), "family {name} interleaved");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let (name, kind) = (it.next().expect("name"), it.next().expect("kind"));
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "type {kind}"
            );
            assert_eq!(current.as_deref(), Some(name), "TYPE follows its HELP");
            types.insert(name.to_string(), kind.to_string());
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment line {line:?}");
        assert!(!line.is_empty(), "empty line");
        let (key, value) = line.rsplit_once(' ').expect("sample: key value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value of {line:?}")),
        };
        let (name, labels) = split_sample_key(key);
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "metric name {name:?}"
        );
        assert!(name.starts_with("sluice_"), "prefix: {name}");
        let family = current.clone().expect("a sample after a HELP line");
        let kind = types.get(&family).expect("a TYPE line before samples");
        if kind == "histogram" {
            let suffix = name.strip_prefix(family.as_str()).expect("histogram name");
            assert!(
                ["_bucket", "_sum", "_count"].contains(&suffix),
                "histogram sample {name}"
            );
            if suffix == "_bucket" {
                let le = labels
                    .iter()
                    .find(|(k, _)| k == "le")
                    .map(|(_, v)| v.clone())
                    .expect("bucket has le");
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().expect("le is a number")
                };
                let rest: Vec<_> = labels.iter().filter(|(k, _)| k != "le").collect();
                buckets
                    .entry((family.clone(), format!("{rest:?}")))
                    .or_default()
                    .push((le, value));
            }
        } else {
            assert_eq!(name, family, "sample of family {family}");
        }
        let mut sorted = labels.clone();
        sorted.sort();
        let canonical = if sorted.is_empty() {
            name.clone()
        } else {
            let inner: Vec<String> = sorted.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            format!("{name}{{{}}}", inner.join(","))
        };
        assert!(
            samples.insert(canonical.clone(), value).is_none(),
            "duplicate sample {canonical}"
        );
    }
    for ((family, labels), series) in &buckets {
        let mut prev = (f64::NEG_INFINITY, 0.0);
        for &(le, count) in series {
            assert!(le > prev.0, "{family}{labels}: bucket bounds increase");
            assert!(count >= prev.1, "{family}{labels}: buckets are cumulative");
            prev = (le, count);
        }
        assert!(prev.0.is_infinite(), "{family}{labels}: ends with +Inf");
    }
    for (key, value) in &samples {
        if key.contains("_bucket{") && key.contains("le=\"+Inf\"") {
            let count_key = key
                .replace("_bucket{", "_count{")
                .replace(",le=\"+Inf\"", "")
                .replace("{le=\"+Inf\"}", "")
                .replace("{le=\"+Inf\",", "{");
            let count_key = count_key.replace("{}", "");
            assert_eq!(
                samples.get(&count_key),
                Some(value),
                "+Inf bucket equals {count_key}"
            );
        }
    }
    samples
}

fn get(s: &Samples, key: &str) -> f64 {
    s.get(key).copied().unwrap_or(0.0)
}

/// Sum of every sample of `name` (over all label sets).
fn sum(s: &Samples, name: &str) -> f64 {
    s.iter()
        .filter(|(k, _)| k.as_str() == name || k.starts_with(&format!("{name}{{")))
        .map(|(_, v)| v)
        .sum()
}

/// Scrapes until `check` holds (counters of a request are recorded right after its response
/// is written, so a scrape can race the last response by a moment), at most 10 s.
fn scrape_until(addr: SocketAddr, check: impl Fn(&Samples) -> bool) -> Samples {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = scrape(addr);
        if check(&s) || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn counters_move_by_what_was_produced_and_fetched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path(), 2);
    let maddr = broker.metrics_addr.expect("metrics endpoint on");
    let mut c = Conn::connect(broker.addr);
    let created = c.create_topic("m", 2, &[]);
    assert_eq!(created.error, ErrorCode::NONE, "{}", created.message);

    let before = scrape(maddr);
    assert_eq!(sum(&before, "sluice_shard_up"), 2.0, "both shards answer");
    assert_eq!(get(&before, "sluice_metrics_shards_missing"), 0.0);
    assert!(
        before.contains_key("sluice_under_replicated_partitions"),
        "computed on a single broker too"
    );
    assert_eq!(get(&before, "sluice_under_replicated_partitions"), 0.0);
    // Opening a partition maps no write buffer; the limit is the default budget.
    assert_eq!(sum(&before, "sluice_write_buffer_bytes"), 0.0);
    for shard in 0..2 {
        assert_eq!(
            get(
                &before,
                &format!("sluice_write_buffer_limit_bytes{{shard=\"{shard}\"}}")
            ),
            (256u64 << 20) as f64
        );
    }

    // 5 batches of 3 records to partition 0 with acks=all, 4 of 2 to partition 1 with acks=1.
    let mut bytes = [0usize; 2];
    let mut records = [0u64; 2];
    for i in 0..5 {
        let b = batch(&[b"aaaa", b"bbbbbbbb", format!("c{i}").as_bytes()], 1_000);
        bytes[0] += b.len();
        records[0] += 3;
        let r = c.produce("m", 0, -1, b);
        assert_eq!(r.error, ErrorCode::NONE, "{}", r.message);
    }
    for i in 0..4 {
        let b = batch(&[b"x", format!("y{i}").as_bytes()], 1_000);
        bytes[1] += b.len();
        records[1] += 2;
        let r = c.produce("m", 1, 1, b);
        assert_eq!(r.error, ErrorCode::NONE, "{}", r.message);
    }
    // The two partitions hold write-buffer chunks (far below half the budget, idle logs
    // keep theirs): whole 1 MiB chunks, at least one each.
    let mapped = sum(&scrape(maddr), "sluice_write_buffer_bytes");
    assert!(mapped >= (2u64 << 20) as f64, "mapped {mapped}");
    assert_eq!(mapped % (1u64 << 20) as f64, 0.0, "whole chunks");
    // One produce to a partition that does not exist: an error by API and code.
    let r = c.produce("m", 7, 1, batch(&[b"z"], 1_000));
    assert_eq!(r.error, ErrorCode::UNKNOWN_TOPIC_OR_PARTITION);

    // Fetch everything back, counting the fetch requests.
    let mut fetches = 0u64;
    for p in 0..2u32 {
        let mut offset = 0;
        let mut got = 0u64;
        while got < records[p as usize] {
            let r = c.fetch("m", p, offset, 1_000, 1);
            fetches += 1;
            assert_eq!(r.error, ErrorCode::NONE, "{}", r.message);
            let v = values(r.records);
            got += v.len() as u64;
            offset = v.last().expect("records").0 + 1;
        }
        assert_eq!(got, records[p as usize]);
    }

    // A group commits (an admin commit): its lag is the high watermark minus the offset.
    let commit: OffsetCommitResponse = c.call(
        ApiKey::OffsetCommit,
        &OffsetCommitRequest {
            group: "lagging".into(),
            generation_id: -1,
            member_id: String::new(),
            topics: vec![OffsetCommitTopic {
                topic: "m".into(),
                partitions: vec![
                    OffsetCommitPartition {
                        partition: 0,
                        offset: 2,
                        metadata: String::new(),
                    },
                    OffsetCommitPartition {
                        partition: 1,
                        offset: records[1] as i64,
                        metadata: String::new(),
                    },
                ],
            }],
        },
    );
    for p in &commit.topics[0].partitions {
        assert_eq!(p.error, ErrorCode::NONE, "{}", p.message);
    }

    let produces = 10.0;
    let after = scrape_until(maddr, |s| {
        get(s, "sluice_requests_total{api=\"Produce\"}")
            - get(&before, "sluice_requests_total{api=\"Produce\"}")
            >= produces
            && get(s, "sluice_requests_total{api=\"Fetch\"}")
                - get(&before, "sluice_requests_total{api=\"Fetch\"}")
                >= fetches as f64
            && sum(s, "sluice_shard_requests_in_flight") == 0.0
    });
    let delta = |key: &str| get(&after, key) - get(&before, key);
    let delta_sum = |name: &str| sum(&after, name) - sum(&before, name);
    for p in 0..2 {
        let labels = format!("{{partition=\"{p}\",topic=\"m\"}}");
        assert_eq!(
            delta(&format!("sluice_partition_produce_records_total{labels}")),
            records[p] as f64,
            "records in, partition {p}"
        );
        assert_eq!(
            delta(&format!("sluice_partition_produce_bytes_total{labels}")),
            bytes[p] as f64,
            "bytes in, partition {p}"
        );
        assert_eq!(
            delta(&format!("sluice_partition_fetch_records_total{labels}")),
            records[p] as f64,
            "records out, partition {p}"
        );
        assert_eq!(
            delta(&format!("sluice_partition_fetch_bytes_total{labels}")),
            bytes[p] as f64,
            "bytes out, partition {p}"
        );
    }
    // Alone, the broker leads every partition as its only replica; the high watermark is
    // the durable end.
    for (p, written) in records.iter().enumerate() {
        let labels = format!("{{partition=\"{p}\",topic=\"m\"}}");
        for (name, value) in [
            ("sluice_partition_isr_size", 1.0),
            ("sluice_partition_replicas", 1.0),
            ("sluice_partition_high_watermark", *written as f64),
            ("sluice_partition_log_end_offset", *written as f64),
        ] {
            assert_eq!(
                after.get(&format!("{name}{labels}")),
                Some(&value),
                "{name}, partition {p}"
            );
        }
    }
    assert_eq!(get(&after, "sluice_under_replicated_partitions"), 0.0);
    assert_eq!(sum(&after, "sluice_replica_lag_records"), 0.0);
    let total_records = (records[0] + records[1]) as f64;
    let total_bytes = (bytes[0] + bytes[1]) as f64;
    assert_eq!(
        delta_sum("sluice_shard_produce_records_total"),
        total_records
    );
    assert_eq!(delta_sum("sluice_shard_produce_bytes_total"), total_bytes);
    assert_eq!(delta_sum("sluice_shard_fetch_records_total"), total_records);
    assert_eq!(delta_sum("sluice_shard_fetch_bytes_total"), total_bytes);
    assert_eq!(delta("sluice_requests_total{api=\"Produce\"}"), produces);
    assert_eq!(
        delta("sluice_requests_total{api=\"Fetch\"}"),
        fetches as f64
    );
    assert_eq!(
        delta("sluice_request_duration_seconds_count{api=\"Produce\"}"),
        produces
    );
    assert!(delta("sluice_request_duration_seconds_sum{api=\"Produce\"}") > 0.0);
    assert_eq!(
        delta(
            "sluice_request_errors_total{api=\"Produce\",code=\"3\",name=\"UNKNOWN_TOPIC_OR_PARTITION\"}"
        ),
        1.0
    );
    // acks=all needs fdatasyncs: at least one group commit ran, and was timed.
    assert!(delta_sum("sluice_fsyncs_total") >= 1.0);
    assert!(delta("sluice_fsync_duration_seconds_count") >= 1.0);
    assert_eq!(
        sum(&after, "sluice_fsyncs_total"),
        get(&after, "sluice_fsync_duration_seconds_count")
    );
    // Recent data is read from the tail cache.
    assert!(delta_sum("sluice_batch_cache_hits_total") >= 1.0);
    assert!(sum(&after, "sluice_connections") >= 1.0);
    // Every partition of every topic (the internal ones too) is owned by one shard.
    let partitions: usize = c.metadata().topics.iter().map(|t| t.partitions.len()).sum();
    assert_eq!(sum(&after, "sluice_shard_partitions"), partitions as f64);
    assert_eq!(sum(&after, "sluice_shard_requests_in_flight"), 0.0);

    assert_eq!(
        get(
            &after,
            "sluice_consumer_group_lag{group=\"lagging\",partition=\"0\",topic=\"m\"}"
        ),
        (records[0] - 2) as f64,
        "lag of partition 0"
    );
    assert_eq!(
        after.get("sluice_consumer_group_lag{group=\"lagging\",partition=\"1\",topic=\"m\"}"),
        Some(&0.0),
        "lag of partition 1"
    );

    // Other paths, other methods, oversized requests.
    let (status, _) = http(maddr, b"GET /other HTTP/1.1\r\n\r\n");
    assert_eq!(status, 404);
    let (status, _) = http(
        maddr,
        b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(status, 405);
    let mut huge = b"GET /metrics HTTP/1.1\r\nX-Filler: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 64 * 1024));
    huge.extend_from_slice(b"\r\n\r\n");
    let mut s = TcpStream::connect(maddr).expect("connect");
    let _ = s.write_all(&huge);
    let mut response = Vec::new();
    let _ = s.read_to_end(&mut response);
    assert!(
        String::from_utf8_lossy(&response).starts_with("HTTP/1.1 431"),
        "oversized request refused"
    );
    // The endpoint still serves after those.
    scrape(maddr);
}

#[test]
fn metrics_listen_off_disables_the_endpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start_with(dir.path(), 1, &["--metrics-listen", "off"]);
    assert!(broker.metrics_addr.is_none());
}

#[test]
fn write_buffers_of_many_partitions_stay_within_the_shard_budget() {
    // The smallest budget the broker accepts (twice the chunks of a 16 MiB batch): 36 chunks
    // of 1 MiB. 48 partitions that each kept a chunk would need more.
    const LIMIT: u64 = 36 << 20;
    const PARTITIONS: u32 = 48;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("sluice.toml");
    std::fs::write(&config, format!("shard_write_buffer_bytes = {LIMIT}\n")).expect("write");
    let data = dir.path().join("data");
    let config_arg = config.to_str().expect("utf-8 path");
    let broker = Broker::start_with(&data, 1, &["--config", config_arg]);
    let maddr = broker.metrics_addr.expect("metrics endpoint on");
    let mut c = Conn::connect(broker.addr);
    let created = c.create_topic("wb", PARTITIONS, &[]);
    assert_eq!(created.error, ErrorCode::NONE, "{}", created.message);
    let limit = get(
        &scrape(maddr),
        "sluice_write_buffer_limit_bytes{shard=\"0\"}",
    );
    assert_eq!(limit, LIMIT as f64);

    let value = |round: u8, p: u32| vec![round ^ p as u8; 100_000];
    for round in 0..2u8 {
        for p in 0..PARTITIONS {
            let r = c.produce("wb", p, -1, batch(&[&value(round, p)], 1_000));
            assert_eq!(r.error, ErrorCode::NONE, "{}", r.message);
            let m = scrape(maddr);
            let mapped = get(&m, "sluice_write_buffer_bytes{shard=\"0\"}")
                + get(&m, "sluice_write_buffer_free_bytes{shard=\"0\"}");
            assert!(mapped <= LIMIT as f64, "mapped {mapped} over the limit");
        }
    }
    // Every partition is idle now: together they keep at most half of the budget.
    let mapped = get(&scrape(maddr), "sluice_write_buffer_bytes{shard=\"0\"}");
    assert!(
        mapped <= (LIMIT / 2) as f64,
        "idle partitions keep {mapped}"
    );
    for p in 0..PARTITIONS {
        let mut got = Vec::new();
        while got.len() < 2 {
            let r = c.fetch("wb", p, got.len() as u64, 1_000, 1);
            assert_eq!(r.error, ErrorCode::NONE, "{}", r.message);
            let v = values(r.records);
            assert!(!v.is_empty(), "partition {p}: no record at {}", got.len());
            got.extend(v);
        }
        assert_eq!(got.len(), 2, "partition {p}");
        for (round, (offset, v)) in got.into_iter().enumerate() {
            assert_eq!(offset, round as u64);
            assert!(v == value(round as u8, p), "partition {p} record {round}");
        }
    }
}

/// The shard's tail cache is shared by recency, not split evenly among its partitions: one
/// busy partition of a topic with many keeps its recent 24 MiB in memory (an even split
/// gave each of 64 partitions 2 MiB), so a consumer reading them back never reads the disk.
#[test]
fn one_busy_partition_may_use_the_whole_shard_tail_cache() {
    const PARTITIONS: u32 = 64;
    const BATCHES: u64 = 24;
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path(), 1);
    let maddr = broker.metrics_addr.expect("metrics endpoint on");
    let mut c = Conn::connect(broker.addr);
    let created = c.create_topic("busy", PARTITIONS, &[]);
    assert_eq!(created.error, ErrorCode::NONE, "{}", created.message);
    let limit = get(&scrape(maddr), "sluice_tail_cache_limit_bytes{shard=\"0\"}");
    assert_eq!(limit, (128u64 << 20) as f64);

    let value = |i: u64| vec![i as u8; 1_000_000];
    let mut produced = 0usize;
    for i in 0..BATCHES {
        let b = batch(&[&value(i)], 1_000);
        produced += b.len();
        let r = c.produce("busy", 0, -1, b);
        assert_eq!(r.error, ErrorCode::NONE, "{}", r.message);
    }
    let m = scrape(maddr);
    let held = get(&m, "sluice_tail_cache_bytes{shard=\"0\"}");
    assert!(
        held >= produced as f64 && held <= limit,
        "held {held} of {produced} produced"
    );
    let misses = get(&m, "sluice_batch_cache_misses_total{shard=\"0\"}");
    let hits = get(&m, "sluice_batch_cache_hits_total{shard=\"0\"}");

    for i in 0..BATCHES {
        let r = c.fetch("busy", 0, i, 1_000, 1);
        assert_eq!(r.error, ErrorCode::NONE, "{}", r.message);
        let v = values(r.records);
        assert_eq!(v.first().map(|(o, _)| *o), Some(i));
        assert!(v[0].1 == value(i), "offset {i}");
    }
    let m = scrape(maddr);
    assert_eq!(
        get(&m, "sluice_batch_cache_misses_total{shard=\"0\"}"),
        misses,
        "every fetch was served from memory"
    );
    assert_eq!(
        get(&m, "sluice_batch_cache_hits_total{shard=\"0\"}"),
        hits + BATCHES as f64
    );
}
