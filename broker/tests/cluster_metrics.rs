//! Replication metrics of real `sluice serve --cluster` processes: three nodes, one partition
//! with three replicas. After acks=all writes the leader's `/metrics` shows the full ISR (3 of
//! 3), nothing under-replicated, no follower lag, and the high watermark at the records
//! written. With one follower SIGSTOPped (and `--replica-lag-time-max-ms 1500`) and acks=1
//! writes going on, the leader reports the partition under-replicated, an ISR of 2 and a
//! positive lag for the stopped follower; after SIGCONT it goes back to 0 and 3.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, ClusterOptions};
use common::wire::{Conn, batch};
use sluice_proto::protocol::ErrorCode;

const TOPIC: &str = "metrics";
/// Records per produce request.
const BATCH: usize = 10;
/// acks=all requests before the pause.
const BATCHES: usize = 10;
/// How long a follower may fall behind before it leaves the ISR.
const LAG_TIME_MAX_MS: &str = "1500";
/// Longest wait for a metric to reach its expected value.
const METRIC_TIMEOUT: Duration = Duration::from_secs(20);

/// The address node `i` printed as `metrics on ADDR` (its latest start).
fn metrics_addr(cluster: &Cluster, i: usize) -> SocketAddr {
    let out = fs::read_to_string(&cluster.nodes[i].out_path).expect("read node stdout");
    out.lines()
        .rev()
        .find_map(|l| l.strip_prefix("metrics on "))
        .expect("the node printed its metrics address")
        .trim()
        .parse()
        .expect("a socket address")
}

/// `GET /metrics`: every sample line as `name{labels}` → value.
fn scrape(addr: SocketAddr) -> BTreeMap<String, f64> {
    let mut s = TcpStream::connect(addr).expect("connect to metrics");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .expect("send request");
    let mut response = String::new();
    s.read_to_string(&mut response).expect("read response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (key, value) = l.rsplit_once(' ').expect("name and value");
            (key.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

fn part(name: &str) -> String {
    format!("{name}{{topic=\"{TOPIC}\",partition=\"0\"}}")
}

fn lag(follower: u32) -> String {
    format!(
        "sluice_replica_lag_records{{topic=\"{TOPIC}\",partition=\"0\",follower=\"{follower}\"}}"
    )
}

/// Scrapes until `check` holds; panics with the last scrape after [`METRIC_TIMEOUT`].
fn wait_metrics(
    addr: SocketAddr,
    what: &str,
    check: impl Fn(&BTreeMap<String, f64>) -> bool,
) -> BTreeMap<String, f64> {
    let deadline = Instant::now() + METRIC_TIMEOUT;
    loop {
        let samples = scrape(addr);
        if check(&samples) {
            return samples;
        }
        if Instant::now() > deadline {
            let replication: Vec<_> = samples
                .iter()
                .filter(|(k, _)| {
                    k.contains("replica") || k.contains("isr") || k.contains("watermark")
                })
                .collect();
            panic!("{what}: not within {METRIC_TIMEOUT:?}; last scrape: {replication:#?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn produce(conn: &mut Conn, acks: i8, n: usize, tag: &str) {
    let values: Vec<Vec<u8>> = (0..BATCH)
        .map(|i| format!("{tag}-{n}-{i}").into_bytes())
        .collect();
    let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
    let result = conn.produce(TOPIC, 0, acks, batch(&refs, 1_700_000_000_000));
    assert_eq!(
        result.error,
        ErrorCode::NONE,
        "produce {tag} {n}: {result:?}"
    );
}

#[test]
fn the_leader_reports_isr_lag_and_under_replication() {
    let started = Instant::now();
    let mut options = ClusterOptions::new(3);
    options.extra = vec!["--replica-lag-time-max-ms".into(), LAG_TIME_MAX_MS.into()];
    let mut cluster = Cluster::start(options);
    cluster.wait_for_brokers(Duration::from_secs(60));
    cluster.create_topic(TOPIC, 1, 3, &[]);
    let (leader, _) = cluster.wait_for_leader(TOPIC, 0, Duration::from_secs(30));
    let leader = leader as usize;
    let followers: Vec<u32> = (0..3u32).filter(|n| *n as usize != leader).collect();
    let addr = metrics_addr(&cluster, leader);
    // Every replica in the ISR before writing, so acks=all waits for all three.
    wait_metrics(addr, "an ISR of 3", |s| {
        s.get(&part("sluice_partition_isr_size")) == Some(&3.0)
    });

    let mut conn = Conn::connect(cluster.nodes[leader].client_addr());
    for n in 0..BATCHES {
        produce(&mut conn, -1, n, "all");
    }
    let written = (BATCH * BATCHES) as f64;
    let samples = wait_metrics(addr, "every follower caught up", |s| {
        followers.iter().all(|f| s.get(&lag(*f)) == Some(&0.0))
    });
    assert_eq!(samples.get(&part("sluice_partition_isr_size")), Some(&3.0));
    assert_eq!(samples.get(&part("sluice_partition_replicas")), Some(&3.0));
    assert_eq!(
        samples.get("sluice_under_replicated_partitions"),
        Some(&0.0)
    );
    assert_eq!(
        samples.get(&part("sluice_partition_high_watermark")),
        Some(&written)
    );
    assert_eq!(
        samples.get(&part("sluice_partition_log_end_offset")),
        Some(&written)
    );
    // A follower holds the partition too: its high watermark and log end are there.
    let follower_addr = metrics_addr(&cluster, followers[0] as usize);
    let on_follower = wait_metrics(follower_addr, "the follower's high watermark", |s| {
        s.get(&part("sluice_partition_high_watermark")) == Some(&written)
    });
    assert_eq!(
        on_follower.get(&part("sluice_partition_log_end_offset")),
        Some(&written)
    );
    assert!(
        !on_follower.contains_key(&part("sluice_partition_isr_size")),
        "a follower reports no ISR size"
    );
    // The follower's fetch rounds: every written batch came through them, and each phase
    // of a round that brought batches was timed. The leader follows nothing here.
    let produced = samples[&part("sluice_partition_produce_bytes_total")];
    assert!(produced > 0.0, "{samples:?}");
    assert!(
        on_follower["sluice_replica_fetched_bytes_total"] >= produced,
        "the follower fetched {} bytes of the {produced} written",
        on_follower["sluice_replica_fetched_bytes_total"]
    );
    let rounds = |s: &BTreeMap<String, f64>, phase: &str| {
        s[&format!("sluice_replica_fetch_phase_seconds_count{{phase=\"{phase}\"}}")]
    };
    for phase in ["round_trip", "append", "durable"] {
        assert!(
            rounds(&on_follower, phase) >= 1.0,
            "{phase}: {on_follower:?}"
        );
        assert_eq!(rounds(&samples, phase), 0.0, "the leader fetched: {phase}");
    }
    assert_eq!(samples["sluice_replica_fetched_bytes_total"], 0.0);
    assert_eq!(
        on_follower.get("sluice_under_replicated_partitions"),
        Some(&0.0)
    );

    // One follower stops; acks=1 writes go on at the leader.
    let paused = followers[1];
    cluster.pause(paused as usize);
    let mut n = BATCHES;
    let deadline = Instant::now() + METRIC_TIMEOUT;
    let samples = loop {
        produce(&mut conn, 1, n, "one");
        n += 1;
        let s = scrape(addr);
        if s.get("sluice_under_replicated_partitions") == Some(&1.0)
            && s.get(&part("sluice_partition_isr_size")) == Some(&2.0)
        {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the leader did not report the paused follower {paused} out of the ISR: {s:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(samples.get(&part("sluice_partition_replicas")), Some(&3.0));
    let paused_lag = samples.get(&lag(paused)).copied().unwrap_or(0.0);
    assert!(
        paused_lag > 0.0,
        "the paused follower {paused} lags by {paused_lag}"
    );
    eprintln!(
        "follower {paused} paused: under-replicated after {n} batches, lag {paused_lag} records"
    );

    cluster.resume(paused as usize);
    let samples = wait_metrics(addr, "the resumed follower back in the ISR", |s| {
        s.get("sluice_under_replicated_partitions") == Some(&0.0)
            && s.get(&part("sluice_partition_isr_size")) == Some(&3.0)
            && s.get(&lag(paused)) == Some(&0.0)
    });
    let end = (n * BATCH) as f64;
    assert_eq!(
        samples.get(&part("sluice_partition_log_end_offset")),
        Some(&end)
    );
    eprintln!("test took {:?}", started.elapsed());
}
