//! The shard's write-buffer budget: many logs share a small budget of chunks; the mapped
//! bytes never exceed it, appends that find it spent wait and are woken when other logs give
//! chunks back, and every byte appended is read back after a reopen.

mod common;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use bytes::BytesMut;
use common::{check_batch, make_batch, read_all, run, within};
use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use rand::{Rng, SeedableRng, rngs::StdRng};
use sluice_storage::{
    FlushPolicy, LogConfig, LogError, LogResult, Offset, PartitionLog, TailCacheBudget, WriteBudget,
};

/// Chunk of the logs under test: small, so a few batches fill one.
const CHUNK_BYTES: usize = 16 * 1024;
/// Largest batch: needs up to three chunks (two plus the fresh one taken when one fills).
const MAX_BATCH_BYTES: usize = 24 * 1024;

fn config() -> LogConfig {
    config_with(FlushPolicy::Interval {
        messages: None,
        ms: None,
    })
}

fn config_with(flush: FlushPolicy) -> LogConfig {
    LogConfig {
        segment_bytes: 64 * 1024,
        preallocate_bytes: 32 * 1024,
        index_interval_bytes: 4096,
        write_chunk_bytes: CHUNK_BYTES,
        write_chunks_max: 4,
        max_batch_bytes: MAX_BATCH_BYTES,
        tail_cache_bytes: 64 * 1024,
        flush,
        ..LogConfig::default()
    }
}

type Pending<'a> = Pin<Box<dyn Future<Output = LogResult<(usize, Offset, u64)>> + 'a>>;

/// `logs` logs on a budget of `budget_chunks` chunks; `appends` random batches, up to
/// `concurrency` appends outstanding at once on random logs.
fn many_logs_on_one_budget(
    flush: FlushPolicy,
    seed: u64,
    logs: usize,
    budget_chunks: usize,
    appends: u64,
    concurrency: usize,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let budget = WriteBudget::new(budget_chunks * CHUNK_BYTES);
    let limit = budget.limit_bytes();
    // (log, base offset) -> tag of the batch appended there.
    let mut expected: Vec<HashMap<Offset, u64>> = vec![HashMap::new(); logs];
    run(async {
        let mut open = Vec::new();
        for i in 0..logs {
            let log = PartitionLog::open_with_budget(
                dir.path().join(format!("p{i}")),
                config_with(flush),
                budget.clone(),
                TailCacheBudget::new(64 * 1024),
            )
            .await
            .expect("open");
            open.push(log);
        }
        assert_eq!(budget.mapped_bytes(), 0, "opening maps no chunk");
        let mut rng = StdRng::seed_from_u64(seed);
        let mut pending: FuturesUnordered<Pending<'_>> = FuturesUnordered::new();
        let mut tag = 0u64;
        let mut done = 0u64;
        let mut waited = 0;
        let mut record = |res: LogResult<(usize, Offset, u64)>| {
            let (i, base, tag) = res.expect("append and acknowledgement");
            expected[i].insert(base, tag);
        };
        while done < appends {
            assert!(budget.resident_bytes() <= limit, "budget exceeded");
            waited = waited.max(budget.waiting());
            if tag < appends && pending.len() < concurrency && rng.random_bool(0.7) {
                let i = rng.random_range(0..logs);
                let records = rng.random_range(1..=4);
                let value_len = rng.random_range(1..=(MAX_BATCH_BYTES - 200) / records - 40);
                let batch: BytesMut = make_batch(tag, records, value_len, 1_700_000_000_000);
                assert!(batch.len() <= MAX_BATCH_BYTES);
                let log = &open[i];
                let this = tag;
                tag += 1;
                pending.push(Box::pin(async move {
                    let appended = log.append(batch).await?;
                    appended.durable.await?;
                    Ok((i, appended.base_offset, this))
                }));
            } else if let Some(res) = within(30, "append", pending.next()).await {
                record(res);
                done += 1;
            }
        }
        assert!(pending.is_empty());
        assert!(waited > 0, "some appends waited for the budget");
        drop(pending);
        assert!(
            budget.peak_bytes() <= limit,
            "budget exceeded between steps"
        );
        assert!(
            budget.peak_bytes() > limit / 2,
            "the workload put the budget under pressure"
        );
        // Let every flusher see its log idle: idle logs keep at most half of the budget.
        for _ in 0..100 {
            compio::time::sleep(std::time::Duration::from_millis(2)).await;
            if budget.mapped_bytes() <= limit / 2 {
                break;
            }
        }
        assert!(
            budget.mapped_bytes() <= limit / 2,
            "idle logs hold {} of {limit} bytes",
            budget.mapped_bytes()
        );
        for log in open {
            within(30, "close", log.close()).await.expect("close");
        }
        assert_eq!(budget.mapped_bytes(), 0, "closed logs hold no chunk");
        assert!(
            budget.resident_bytes() <= limit,
            "the free list keeps what the logs gave back, within the limit"
        );

        // Reopen (a fresh budget) and read every log back.
        let budget = WriteBudget::new(budget_chunks * CHUNK_BYTES);
        let mut total = 0;
        for (i, want) in expected.iter().enumerate() {
            let log = PartitionLog::open_with_budget(
                dir.path().join(format!("p{i}")),
                config_with(flush),
                budget.clone(),
                TailCacheBudget::new(64 * 1024),
            )
            .await
            .expect("reopen");
            let batches = read_all(&log).await;
            assert_eq!(batches.len(), want.len(), "log {i}: batch count");
            for batch in &batches {
                let tag = want[&batch.base_offset()];
                check_batch(batch, tag, batch.base_offset());
            }
            total += batches.len();
            log.close().await.expect("close");
        }
        assert_eq!(total as u64, appends);
    });
}

#[test]
fn many_logs_share_a_small_budget_and_lose_nothing() {
    let interval = FlushPolicy::Interval {
        messages: None,
        ms: None,
    };
    for seed in 0..2 {
        many_logs_on_one_budget(interval, seed, 64, 8, 1500, 48);
    }
    // Acknowledged after fdatasync (group commit), a budget of the smallest size allowed.
    many_logs_on_one_budget(FlushPolicy::EveryBatch, 2, 64, 6, 1000, 48);
}

#[test]
fn an_append_waiting_for_the_budget_is_woken_when_another_log_goes_idle() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Four chunks: log A can map them all; B then has none until A gives them back.
    let small = LogConfig {
        max_batch_bytes: 12 * 1024,
        ..config()
    };
    let budget = WriteBudget::new(4 * CHUNK_BYTES);
    run(async {
        let a = PartitionLog::open_with_budget(
            dir.path().join("a"),
            small.clone(),
            budget.clone(),
            TailCacheBudget::new(64 * 1024),
        )
        .await
        .expect("open a");
        let b = PartitionLog::open_with_budget(
            dir.path().join("b"),
            small.clone(),
            budget.clone(),
            TailCacheBudget::new(64 * 1024),
        )
        .await
        .expect("open b");
        // Five batches of 12,000 bytes fill A's four chunks (appends that find room do not
        // yield, so A's flusher has not written anything yet).
        let mut acks = Vec::new();
        for tag in 0..5 {
            let batch = make_batch(tag, 1, 12_000 - 80, 0);
            let appended = a
                .append(batch)
                .now_or_never()
                .expect("room")
                .expect("append");
            acks.push(appended.durable);
        }
        assert_eq!(
            budget.mapped_bytes(),
            budget.limit_bytes(),
            "A holds the budget"
        );
        let mut waiting = Box::pin(b.append(make_batch(100, 1, 8000, 0)));
        assert!(
            waiting.as_mut().now_or_never().is_none(),
            "B waits for the budget"
        );
        assert_eq!(budget.waiting(), 1);
        // A's writes complete, A goes idle under pressure and gives its chunks back: B wakes.
        let appended = within(10, "B's append", waiting).await.expect("append b");
        within(10, "B durable", appended.durable)
            .await
            .expect("durable");
        for ack in acks {
            within(10, "A durable", ack).await.expect("durable");
        }
        let (a_batches, b_batches) = (read_all(&a).await, read_all(&b).await);
        assert_eq!(a_batches.len(), 5);
        for (tag, batch) in a_batches.iter().enumerate() {
            check_batch(batch, tag as u64, Offset(tag as u64));
        }
        assert_eq!(b_batches.len(), 1);
        check_batch(&b_batches[0], 100, Offset::ZERO);
        a.close().await.expect("close a");
        b.close().await.expect("close b");
        assert_eq!(budget.mapped_bytes(), 0);
    });
}

#[test]
fn a_budget_too_small_for_the_largest_batch_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A 24 KiB batch may need three 16 KiB chunks; idle logs may keep half the budget.
    let budget = WriteBudget::new(5 * CHUNK_BYTES);
    run(async {
        let err = PartitionLog::open_with_budget(
            dir.path().join("p"),
            config(),
            budget,
            TailCacheBudget::new(0),
        )
        .await
        .err()
        .expect("refused");
        assert!(
            matches!(
                err,
                LogError::WriteBudgetTooSmall {
                    limit_bytes,
                    needed_bytes
                } if limit_bytes == 5 * CHUNK_BYTES && needed_bytes == 6 * CHUNK_BYTES
            ),
            "{err}"
        );
    });
    assert_eq!(
        WriteBudget::bytes_for_batch(&config()),
        3 * CHUNK_BYTES,
        "two chunks of data plus one"
    );
}
