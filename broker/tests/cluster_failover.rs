//! Failover under SIGKILL (issue 6's first acceptance test): three `sluice serve --cluster`
//! processes; an idempotent acks=all producer writes unique values to a 3-partition topic
//! (replication factor 3, `min.insync.replicas=2`) while the test SIGKILLs the leader of
//! each partition in turn and restarts it, every [`KILL_EVERY`], for [`run_for`] (60 s in a
//! release build, 20 s in a debug one; `SLUICE_FAILOVER_SECS=N` for longer runs).
//!
//! Rounds alternate: in even rounds the killed leader stays down until another replica took
//! over (a higher leader epoch, within [`FAILOVER_TIMEOUT`]); in odd rounds it is restarted
//! after [`DOWN_FOR`], likely before the controller noticed (a leader that lost its unsynced
//! tail comes back). Afterwards, once every replica is back in the ISR:
//! - each partition read from its leader holds exactly offsets `0..HW` (monotonic, no gap);
//! - every acknowledged value is there, once, at the offset its acknowledgement named, and no
//!   value is in the topic twice;
//! - with the brokers stopped, every replica's files (read with `sluice_storage`) hold the
//!   same records, offset by offset and with the same leader epochs, below the HW.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::cluster::{Acked, Cluster, ClusterOptions, check_reads, read_partition};
use sluice_client::{Acks, Client, ClientConfig, Producer, ProducerConfig, ProducerRecord};

const TOPIC: &str = "failover";
const PARTITIONS: u32 = 3;
/// One leader is killed per this interval.
const KILL_EVERY: Duration = Duration::from_secs(5);
/// How long a killed node stays down before its restart.
const DOWN_FOR: Duration = Duration::from_secs(1);
/// Longest wait for a new leader after a kill (election timeout plus the view's broadcast).
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a restarted replica to be back in a partition's ISR.
const ISR_TIMEOUT: Duration = Duration::from_secs(30);
/// Records sent per producer tick, and the tick: about 1000 records/s.
const RECORDS_PER_TICK: usize = 10;
const TICK: Duration = Duration::from_millis(10);
/// The producer's delivery timeout: longer than a failover.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the kill loop runs: `SLUICE_FAILOVER_SECS`, else 60 s (release) or 20 s (debug).
fn run_for() -> Duration {
    let default = if cfg!(debug_assertions) { 20 } else { 60 };
    let secs = std::env::var("SLUICE_FAILOVER_SECS")
        .ok()
        .map(|s| {
            s.parse::<u64>()
                .expect("SLUICE_FAILOVER_SECS is a number of seconds")
        })
        .unwrap_or(default);
    Duration::from_secs(secs)
}

/// What the producer thread got back.
struct ProducerOutcome {
    acked: Vec<Acked>,
    /// Values whose delivery failed (an unknown outcome: each may be in the log, once).
    failed: Vec<(String, String)>,
    /// Values `Producer::send` refused outright (never sent).
    refused: Vec<(String, String)>,
    sent: u64,
    /// Acknowledgements that arrived after the last kill (the cluster still takes writes).
    acked_after_last_kill: usize,
}

fn client_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new(brokers);
    config.client_id = "cluster-failover".into();
    config.request_timeout = Duration::from_secs(5);
    config.connect_timeout = Duration::from_secs(2);
    config.metadata_max_age = Duration::from_secs(5);
    config
}

/// Produces `v-<n>` values until `stop`, about [`RECORDS_PER_TICK`] per [`TICK`]; then waits
/// for every delivery.
fn produce_until(
    brokers: String,
    stop: Arc<AtomicBool>,
    last_kill: Arc<std::sync::Mutex<Option<Instant>>>,
) -> ProducerOutcome {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let client = Client::connect(client_config(&brokers))
            .await
            .expect("connect");
        let producer = Producer::new(
            client,
            ProducerConfig {
                acks: Acks::All,
                linger: Duration::from_millis(5),
                delivery_timeout: DELIVERY_TIMEOUT,
                ..ProducerConfig::default()
            },
        );
        let mut pending = Vec::new();
        let mut refused = Vec::new();
        let mut n: u64 = 0;
        while !stop.load(Ordering::Relaxed) {
            for _ in 0..RECORDS_PER_TICK {
                let value = format!("v-{n:09}");
                n += 1;
                match producer
                    .send(ProducerRecord::new(TOPIC, value.clone()))
                    .await
                {
                    Ok(delivery) => pending.push(tokio::spawn(async move {
                        let result = delivery.await;
                        (value, result, Instant::now())
                    })),
                    // Refused before it was sent (not an unknown outcome): noted, checked at
                    // the end, after the safety checks.
                    Err(e) => refused.push((value, e.to_string())),
                }
            }
            tokio::time::sleep(TICK).await;
        }
        let mut outcome = ProducerOutcome {
            acked: Vec::new(),
            failed: Vec::new(),
            refused,
            sent: n,
            acked_after_last_kill: 0,
        };
        let last_kill = *last_kill.lock().expect("last kill");
        for task in pending {
            let (value, result, at) = task.await.expect("delivery task");
            match result {
                Ok(meta) => {
                    assert!(meta.offset >= 0, "acks=all names an offset");
                    if last_kill.is_some_and(|k| at > k) {
                        outcome.acked_after_last_kill += 1;
                    }
                    outcome.acked.push(Acked {
                        partition: meta.partition,
                        offset: meta.offset as u64,
                        value: value.into_bytes(),
                    });
                }
                Err(e) => outcome.failed.push((value, e.to_string())),
            }
        }
        producer.close().await.expect("close producer");
        outcome
    })
}

/// Waits until partition `p`'s ISR (as `sluice topic describe` shows it) holds all three
/// replicas; panics with the last description after `timeout`.
fn wait_for_full_isr(cluster: &mut Cluster, p: u32, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match cluster.describe(TOPIC) {
            Ok(parts) => {
                if let Some(d) = parts.iter().find(|d| d.partition == p) {
                    let mut isr = d.isr.clone();
                    isr.sort_unstable();
                    if d.leader >= 0 && isr == [0, 1, 2] {
                        return;
                    }
                }
                format!("{parts:?}")
            }
            Err(e) => e,
        };
        if Instant::now() > deadline {
            cluster.dump_logs();
            panic!(
                "{TOPIC}-{p}: the ISR did not hold all three replicas within {timeout:?}: {last}"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn sigkilled_leaders_lose_no_acknowledged_record_and_replicas_agree() {
    let started = Instant::now();
    let mut cluster = Cluster::start(ClusterOptions::new(3));
    cluster.wait_for_brokers(Duration::from_secs(60));
    cluster.create_topic(TOPIC, PARTITIONS, 3, &["min.insync.replicas=2"]);
    for p in 0..PARTITIONS {
        cluster.wait_for_leader(TOPIC, p, FAILOVER_TIMEOUT);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let last_kill = Arc::new(std::sync::Mutex::new(None));
    let producer = {
        let (brokers, stop, last_kill) = (cluster.brokers(), stop.clone(), last_kill.clone());
        std::thread::spawn(move || produce_until(brokers, stop, last_kill))
    };

    let run_for = run_for();
    let loop_start = Instant::now();
    let mut kills = Vec::new();
    let mut round = 0u32;
    while loop_start.elapsed() < run_for {
        let round_start = Instant::now();
        let p = round % PARTITIONS;
        // Kill only a leader whose followers are all in sync (else no replica may take over:
        // unclean election is off): a restarted replica must rejoin within ISR_TIMEOUT.
        wait_for_full_isr(&mut cluster, p, ISR_TIMEOUT);
        let (victim, epoch) = cluster.wait_for_leader(TOPIC, p, FAILOVER_TIMEOUT);
        cluster.kill(victim as usize);
        *last_kill.lock().expect("last kill") = Some(Instant::now());
        let killed_at = Instant::now();
        let failover = if round.is_multiple_of(2) {
            // Down until another replica leads (the controller must notice the death).
            let (leader, new_epoch) = common::cluster::wait_until(
                &format!(
                    "a new leader of {TOPIC}-{p} after SIGKILL of node {victim} (epoch {epoch})"
                ),
                FAILOVER_TIMEOUT,
                || {
                    cluster
                        .leader_of(TOPIC, p)
                        .filter(|&(l, e)| l != victim && e > epoch)
                },
            );
            let failover = killed_at.elapsed();
            std::thread::sleep(DOWN_FOR.saturating_sub(failover));
            cluster.restart(victim as usize);
            eprintln!(
                "round {round}: killed node {victim}, leader of {TOPIC}-{p} (epoch {epoch}); \
                 node {leader} took over (epoch {new_epoch}) after {failover:?}"
            );
            failover
        } else {
            // Back before the controller may have noticed: whoever leads then, the log
            // must stay one history (a restarted leader lost its unsynced tail).
            std::thread::sleep(DOWN_FOR);
            cluster.restart(victim as usize);
            let (leader, new_epoch) = cluster.wait_for_leader(TOPIC, p, FAILOVER_TIMEOUT);
            let failover = killed_at.elapsed();
            eprintln!(
                "round {round}: killed node {victim}, leader of {TOPIC}-{p} (epoch {epoch}), \
                 restarted it at once; node {leader} leads (epoch {new_epoch}) after \
                 {failover:?}"
            );
            failover
        };
        kills.push((victim, p, failover));
        round += 1;
        std::thread::sleep(KILL_EVERY.saturating_sub(round_start.elapsed()));
    }
    // Let the producer see the last restart settle before it stops.
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let outcome = producer.join().expect("producer thread");
    eprintln!(
        "{} kills in {:?}; {} records sent, {} acknowledged, {} failed, {} refused by send ({} \
         acknowledged after the last kill)",
        kills.len(),
        loop_start.elapsed(),
        outcome.sent,
        outcome.acked.len(),
        outcome.failed.len(),
        outcome.refused.len(),
        outcome.acked_after_last_kill
    );
    for (value, error) in outcome.failed.iter().take(5) {
        eprintln!("  failed: {value}: {error}");
    }
    for (value, error) in outcome.refused.iter().take(5) {
        eprintln!("  refused: {value}: {error}");
    }
    assert!(
        kills.len() as u32 >= PARTITIONS,
        "every partition's leader was killed at least once"
    );
    assert!(
        outcome.acked.len() >= outcome.failed.len(),
        "most records sent were acknowledged: {} acknowledged, {} failed",
        outcome.acked.len(),
        outcome.failed.len()
    );
    assert!(
        outcome.acked_after_last_kill > 0,
        "records were acknowledged after the last failover"
    );

    // Every replica back in sync.
    for p in 0..PARTITIONS {
        wait_for_full_isr(&mut cluster, p, Duration::from_secs(60));
    }

    // Read back through the leaders.
    let brokers = cluster.brokers();
    let reads = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(async {
            let client = Client::connect(client_config(&brokers))
                .await
                .expect("connect");
            let mut reads = BTreeMap::new();
            for p in 0..PARTITIONS {
                let read = read_partition(&client, TOPIC, p, Duration::from_secs(60))
                    .await
                    .unwrap_or_else(|e| panic!("reading back: {e}"));
                reads.insert(p, read);
            }
            reads
        });
    let sent = outcome.sent;
    if let Err(e) = check_reads(&reads, &outcome.acked, |v| {
        std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.strip_prefix("v-"))
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n < sent)
    }) {
        cluster.dump_logs();
        panic!("{e}");
    }
    let total: u64 = reads.values().map(|(end, _)| end).sum();
    eprintln!(
        "read back {total} records; {} of the {} failed deliveries are in the log",
        total - outcome.acked.len() as u64,
        outcome.failed.len()
    );

    // The replicas' files, offset by offset, below each high watermark.
    for p in 0..PARTITIONS {
        let (end, records) = &reads[&p];
        let ends = cluster.compare_replicas(TOPIC, p, *end, records);
        eprintln!("{TOPIC}-{p}: high watermark {end}, replica log ends {ends:?}");
    }
    // Availability: the producer's `send` must not refuse a record because of a failover
    // (Kafka's producer waits for the metadata instead).
    if let Some((value, error)) = outcome.refused.first() {
        panic!(
            "Producer::send refused {} records during the failovers, the first {value}: {error}",
            outcome.refused.len()
        );
    }
    eprintln!("took {:?}", started.elapsed());
}

/// The smallest form of the failover loop's first round: the leader of an empty partition
/// is SIGKILLed, another replica takes over, the old leader is restarted; it must be back in
/// the ISR (following the new leader) within [`ISR_TIMEOUT`], and the partition must take
/// writes from all three.
#[test]
fn a_restarted_leader_of_an_empty_partition_rejoins_the_isr() {
    let mut cluster = Cluster::start(ClusterOptions::new(3));
    cluster.wait_for_brokers(Duration::from_secs(60));
    cluster.create_topic(TOPIC, 1, 3, &["min.insync.replicas=2"]);
    wait_for_full_isr(&mut cluster, 0, ISR_TIMEOUT);
    let (victim, epoch) = cluster.wait_for_leader(TOPIC, 0, FAILOVER_TIMEOUT);
    cluster.kill(victim as usize);
    let (leader, new_epoch) = common::cluster::wait_until(
        &format!("a new leader after SIGKILL of node {victim} (epoch {epoch})"),
        FAILOVER_TIMEOUT,
        || {
            cluster
                .leader_of(TOPIC, 0)
                .filter(|&(l, e)| l != victim && e > epoch)
        },
    );
    eprintln!("node {leader} leads (epoch {new_epoch}); restarting node {victim}");
    cluster.restart(victim as usize);
    wait_for_full_isr(&mut cluster, 0, ISR_TIMEOUT);
    let brokers = cluster.brokers();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let acked = runtime.block_on(async {
        let client = Client::connect(client_config(&brokers))
            .await
            .expect("connect");
        let values: Vec<String> = (0..50).map(|i| format!("v-{i:09}")).collect();
        common::cluster::produce_acked(&client, TOPIC, &values).await
    });
    assert_eq!(acked.len(), 50);
}
