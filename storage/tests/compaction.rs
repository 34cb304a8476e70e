//! Compaction (`cleanup.policy=compact`) against a model, on the real disk: random keys,
//! values and tombstones over many segments; after a pass the log holds exactly the latest
//! record of every key (plus the last record of each closed segment, which pins its next
//! offset), at the offsets they were written at, tombstones only until `delete.retention.ms`;
//! the same after reopening; appends continue at the same log end. Also: a bounded offset map
//! cleans only as far as it holds, reads at compacted-away offsets get the next record, and
//! every interrupted swap state on disk recovers to either the uncleaned or the cleaned log.
#![allow(missing_docs)]

mod common;

use std::collections::HashMap;
use std::path::Path;

use bytes::BytesMut;
use common::{run, within};
use proptest::prelude::*;
use sluice_proto::{BatchBuilder, Compression, Limits, Offset};
use sluice_storage::{CompactionConfig, LogConfig, PartitionLog, SEGMENT_BYTES_MIN};

/// One record of the model: offset, key, value (`None`: tombstone), timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rec {
    offset: u64,
    key: Vec<u8>,
    value: Option<Vec<u8>>,
    ts: i64,
}

fn config(dedupe_buffer_bytes: usize, delete_retention_ms: u64) -> LogConfig {
    LogConfig {
        segment_bytes: SEGMENT_BYTES_MIN,
        segment_ms: None,
        retention_ms: None,
        index_interval_bytes: 1024,
        compaction: Some(CompactionConfig {
            delete_retention_ms,
            min_cleanable_dirty_ratio: 0.5,
            min_compaction_lag_ms: 0,
            dedupe_buffer_bytes,
            io_bytes_per_s: None,
        }),
        ..LogConfig::default()
    }
}

/// A record to append: key, value (`None`: tombstone), timestamp.
type Input = (Vec<u8>, Option<Vec<u8>>, i64);
/// Batches to append: records, codec, and whether to roll the segment after it.
type Workload = Vec<(Vec<Input>, Compression, bool)>;

/// A batch of `(key, value, ts)` records.
fn batch(records: &[Input], compression: Compression) -> BytesMut {
    let mut b = BatchBuilder::new(compression, Limits::DEFAULT);
    for (key, value, ts) in records {
        b.push(*ts, Some(key), value.as_deref(), &[]).expect("push");
    }
    b.build().expect("build")
}

/// Appends the batches, each acknowledged; returns the model records written.
async fn append_all(log: &PartitionLog, batches: &[(Vec<Input>, Compression, bool)]) -> Vec<Rec> {
    let mut out = Vec::new();
    for (records, compression, roll_after) in batches {
        let appended = within(30, "append", log.append(batch(records, *compression)))
            .await
            .expect("append");
        within(30, "durable", appended.durable)
            .await
            .expect("durable");
        for (i, (key, value, ts)) in records.iter().enumerate() {
            out.push(Rec {
                offset: appended.base_offset.get() + i as u64,
                key: key.clone(),
                value: value.clone(),
                ts: *ts,
            });
        }
        if *roll_after {
            log.roll_now().await.expect("roll");
        }
    }
    wait_sealed(log).await;
    out
}

/// Waits until every rolled segment is sealed (closed), so a pass can clean it.
async fn wait_sealed(log: &PartitionLog) {
    let active = *log.segment_bases().last().expect("a segment");
    within(30, "seal", async {
        while log.cleanable_end() < active {
            compio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    })
    .await;
}

/// Every record from the log start to the log end, checking offsets increase.
async fn read_all(log: &PartitionLog) -> Vec<Rec> {
    let offsets = log.offsets();
    let mut out: Vec<Rec> = Vec::new();
    let mut from = offsets.log_start;
    while from < offsets.log_end {
        let got = within(30, "read", log.read(from, 64 * 1024))
            .await
            .expect("read");
        assert!(!got.is_empty(), "no batch at or after {from}");
        assert!(got[0].next_offset() > from, "batch before the position");
        for b in &got {
            for r in b.records().expect("records") {
                let r = r.expect("record");
                let offset = r.offset(b.base_offset()).get();
                if offset < from.get() {
                    continue;
                }
                if let Some(last) = out.last() {
                    assert!(
                        offset > last.offset,
                        "offsets increase: {offset} after {}",
                        last.offset
                    );
                }
                let ts = r.timestamp(b.header().base_timestamp);
                out.push(Rec {
                    offset,
                    key: r.key.expect("keyed").to_vec(),
                    value: r.value.map(|v| v.to_vec()),
                    ts,
                });
            }
        }
        from = got.last().expect("non-empty").next_offset();
    }
    out
}

/// What a pass at `now` over the closed segments (bases `bases`, the last one being the
/// active segment's) leaves: the latest record of each key below the active base unless it is
/// a tombstone older than `delete_retention_ms`, and the last record of every closed segment;
/// the active segment untouched.
fn model(written: &[Rec], bases: &[u64], now: i64, delete_retention_ms: u64) -> Vec<Rec> {
    let active = *bases.last().expect("a segment");
    let segment_last: Vec<u64> = bases.windows(2).map(|w| w[1] - 1).collect();
    let mut latest: HashMap<&[u8], u64> = HashMap::new();
    for r in written.iter().filter(|r| r.offset < active) {
        latest.insert(&r.key, r.offset);
    }
    let horizon = now - delete_retention_ms as i64;
    written
        .iter()
        .filter(|r| {
            r.offset >= active
                || segment_last.contains(&r.offset)
                || (latest[&r.key[..]] == r.offset && !(r.value.is_none() && r.ts < horizon))
        })
        .cloned()
        .collect()
}

/// Compares two record lists, reporting the offsets that differ (not the values).
fn same(got: &[Rec], expected: &[Rec]) -> Result<(), TestCaseError> {
    let g: Vec<u64> = got.iter().map(|r| r.offset).collect();
    let e: Vec<u64> = expected.iter().map(|r| r.offset).collect();
    if g != e {
        let extra: Vec<u64> = g.iter().filter(|o| !e.contains(o)).copied().collect();
        let missing: Vec<u64> = e.iter().filter(|o| !g.contains(o)).copied().collect();
        return Err(TestCaseError::fail(format!(
            "offsets differ: extra {extra:?}, missing {missing:?}"
        )));
    }
    for (a, b) in got.iter().zip(expected) {
        if a != b {
            return Err(TestCaseError::fail(format!(
                "record at {} differs",
                a.offset
            )));
        }
    }
    Ok(())
}

fn workload() -> impl Strategy<Value = Workload> {
    let record = (
        0u8..12,
        prop::option::weighted(0.85, 0usize..600),
        0i64..10_000,
    )
        .prop_map(|(key, len, ts)| {
            let key = format!("key-{key}").into_bytes();
            let value = len.map(|len| {
                (0..len)
                    .map(|i| (i as u8).wrapping_mul(31).wrapping_add(key[4]))
                    .collect()
            });
            (key, value, 1_000_000 + ts)
        });
    let compression = prop_oneof![
        Just(Compression::None),
        Just(Compression::Lz4),
        Just(Compression::Zstd)
    ];
    prop::collection::vec(
        (
            prop::collection::vec(record, 1..6),
            compression,
            prop::bool::weighted(0.1),
        ),
        20..120,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Two rounds of appends and passes; after each the log equals the model, also after a
    /// reopen, and appends continue at the log end.
    #[test]
    fn compaction_matches_the_model(first in workload(), second in workload()) {
        const RETENTION: u64 = 5_000;
        let dir = tempfile::tempdir().expect("tempdir");
        run(async {
            let log = PartitionLog::open(dir.path(), config(1 << 20, RETENTION)).await.expect("open");
            let mut written = append_all(&log, &first).await;
            let now = 1_007_000;
            let bases: Vec<u64> = log.segment_bases().iter().map(|o| o.get()).collect();
            let stats = log.clean_now(now).await.expect("clean");
            if bases.len() > 1 {
                let stats = stats.expect("a pass over closed segments");
                prop_assert_eq!(stats.cleaned_to, Offset(*bases.last().expect("base")));
            }
            same(&read_all(&log).await, &model(&written, &bases, now, RETENTION))?;
            written.extend(append_all(&log, &second).await);
            log.roll_now().await.expect("roll");
            wait_sealed(&log).await;
            let now = now + 2_000;
            let end = log.offsets().log_end;
            let bases: Vec<u64> = log.segment_bases().iter().map(|o| o.get()).collect();
            log.clean_now(now).await.expect("clean");
            let expected = model(&written, &bases, now, RETENTION);
            same(&read_all(&log).await, &expected)?;
            log.close().await.expect("close");
            let log = PartitionLog::open(dir.path(), config(1 << 20, RETENTION)).await.expect("reopen");
            prop_assert_eq!(log.offsets().log_end, end, "the log end never moves");
            same(&read_all(&log).await, &expected)?;
            let more = append_all(&log, &[(vec![(b"key-0".to_vec(), Some(b"after".to_vec()), 1)], Compression::None, false)]).await;
            prop_assert_eq!(more[0].offset, end.get());
            log.close().await.expect("close");
            Ok(())
        })?;
    }
}

/// With an offset map too small for every dirty key, a pass cleans only up to the last
/// segment it fully covered; repeated passes get to the end. Every key's latest record stays.
#[test]
fn bounded_offset_map_cleans_in_steps() {
    const KEY_MAP_BYTES: usize = sluice_storage::CLEANER_DEDUPE_BUFFER_BYTES_MIN;
    let dir = tempfile::tempdir().expect("tempdir");
    run(async {
        let log = PartitionLog::open(dir.path(), config(KEY_MAP_BYTES, 0))
            .await
            .expect("open");
        // 4000 distinct keys, then each written again: the map holds about 900.
        let mut batches: Workload = Vec::new();
        for round in 0..2 {
            for chunk in 0..400 {
                let records = (0..10)
                    .map(|i| {
                        let key = format!("k{:05}", chunk * 10 + i).into_bytes();
                        (key, Some(format!("r{round}").into_bytes()), 1)
                    })
                    .collect();
                batches.push((records, Compression::None, false));
            }
        }
        let written = append_all(&log, &batches).await;
        log.roll_now().await.expect("roll");
        wait_sealed(&log).await;
        let end = log.offsets().log_end;
        let first = log.clean_now(10).await.expect("clean").expect("a pass");
        assert!(
            first.cleaned_to < end,
            "a map of {KEY_MAP_BYTES} bytes cannot hold 4000 keys: cleaned to {}",
            first.cleaned_to
        );
        assert!(first.cleaned_to > Offset::ZERO);
        let mut passes = 1;
        while log.dirty_ratio() > 0.0 {
            log.clean_now(10).await.expect("clean").expect("a pass");
            passes += 1;
            assert!(passes < 50, "passes make progress");
        }
        let got = read_all(&log).await;
        let by_offset: HashMap<u64, &Rec> = written.iter().map(|r| (r.offset, r)).collect();
        let mut latest: HashMap<&[u8], u64> = HashMap::new();
        for r in &written {
            latest.insert(&r.key, r.offset);
        }
        for r in &got {
            assert_eq!(
                by_offset[&r.offset], r,
                "records keep their offsets and contents"
            );
        }
        let present: std::collections::HashSet<u64> = got.iter().map(|r| r.offset).collect();
        for offset in latest.values() {
            assert!(present.contains(offset), "latest record at {offset} kept");
        }
        assert!(
            got.len() < 4000 + 400,
            "superseded records are gone: {} left",
            got.len()
        );
        log.close().await.expect("close");
    });
}

/// A read at an offset that compaction removed returns the next record, in a segment's
/// middle and at its start; ListOffsets-style lookups still work.
#[test]
fn reads_at_removed_offsets_get_the_next_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    run(async {
        let log = PartitionLog::open(dir.path(), config(1 << 20, 0))
            .await
            .expect("open");
        let rec = |k: &str, v: &str| (k.as_bytes().to_vec(), Some(v.as_bytes().to_vec()), 5);
        // Offsets 0..=3 in segment 0; 4..=5 in segment 4; then the active one.
        let written = append_all(
            &log,
            &[
                (
                    vec![rec("a", "1"), rec("b", "1"), rec("a", "2")],
                    Compression::Lz4,
                    false,
                ),
                (vec![rec("c", "1")], Compression::None, true),
                (vec![rec("b", "2"), rec("c", "2")], Compression::None, true),
                (vec![rec("x", "1")], Compression::None, false),
            ],
        )
        .await;
        assert_eq!(written.len(), 7);
        log.clean_now(100).await.expect("clean").expect("a pass");
        let kept: Vec<u64> = read_all(&log).await.iter().map(|r| r.offset).collect();
        // a@0 and b@1 are superseded; c@3 too, but it is the last record of its segment.
        assert_eq!(kept, vec![2, 3, 4, 5, 6]);
        for (from, first) in [(0, 2), (1, 2), (2, 2), (3, 3)] {
            let got = log.read(Offset(from), 1 << 20).await.expect("read");
            let first_record = got[0]
                .records()
                .expect("records")
                .map(|r| r.expect("record").offset(got[0].base_offset()))
                .find(|o| o.get() >= from)
                .expect("a record at or after the position");
            assert_eq!(first_record, Offset(first), "read from {from}");
        }
        log.close().await.expect("close");
    });
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("list") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

/// Every state a crash can leave a swap in recovers to the uncleaned or the cleaned log:
/// `.cleaned` files (complete or torn), index `.swap` files without the log's, all `.swap`
/// files (committed), and the indexes installed with the log's `.swap` left.
#[test]
fn interrupted_swaps_recover_to_one_side() {
    let root = tempfile::tempdir().expect("tempdir");
    let original = root.path().join("original");
    let cleaned = root.path().join("cleaned");
    let (uncleaned_records, cleaned_records) = run(async {
        let log = PartitionLog::open(&original, config(1 << 20, 0))
            .await
            .expect("open");
        let mut batches: Workload = Vec::new();
        for i in 0..60u32 {
            let key = format!("key-{}", i % 5).into_bytes();
            batches.push((
                vec![(key, Some(vec![i as u8; 300]), i64::from(i))],
                Compression::None,
                i % 20 == 19,
            ));
        }
        append_all(&log, &batches).await;
        let uncleaned = read_all(&log).await;
        log.close().await.expect("close");
        copy_dir(&original, &cleaned);
        let log = PartitionLog::open(&cleaned, config(1 << 20, 0))
            .await
            .expect("open copy");
        log.clean_now(1_000).await.expect("clean").expect("a pass");
        let after = read_all(&log).await;
        log.close().await.expect("close");
        (uncleaned, after)
    });
    assert!(cleaned_records.len() < uncleaned_records.len());
    let segment = "00000000000000000000";
    let file = |dir: &Path, ext: &str| dir.join(format!("{segment}.{ext}"));
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, bool);
    let cases: Vec<Case<'_>> = vec![
        // (name, [(file in the cleaned copy, name it gets in the crashed dir)], cleaned wins)
        ("cleaned log only", vec![("log", "log.cleaned")], false),
        (
            "all cleaned files",
            vec![
                ("log", "log.cleaned"),
                ("index", "index.cleaned"),
                ("timeindex", "timeindex.cleaned"),
            ],
            false,
        ),
        (
            "index swaps without the log's",
            vec![
                ("log", "log.cleaned"),
                ("index", "index.swap"),
                ("timeindex", "timeindex.swap"),
            ],
            false,
        ),
        (
            "committed",
            vec![
                ("log", "log.swap"),
                ("index", "index.swap"),
                ("timeindex", "timeindex.swap"),
            ],
            true,
        ),
        (
            "indexes installed, log swap left",
            vec![
                ("log", "log.swap"),
                ("index", "index"),
                ("timeindex", "timeindex"),
            ],
            true,
        ),
    ];
    for (i, (name, files, cleaned_wins)) in cases.into_iter().enumerate() {
        let crashed = root.path().join(format!("crashed-{i}"));
        copy_dir(&original, &crashed);
        for (from, to) in &files {
            std::fs::copy(file(&cleaned, from), file(&crashed, to)).expect("copy");
        }
        if name == "cleaned log only" {
            // Torn: half of the cleaned file was written.
            let path = file(&crashed, "log.cleaned");
            let len = std::fs::metadata(&path).expect("stat").len();
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .expect("open")
                .set_len(len / 2)
                .expect("truncate");
        }
        let got = run(async {
            let log = PartitionLog::open(&crashed, config(1 << 20, 0))
                .await
                .unwrap_or_else(|e| panic!("{name}: recovery failed: {e}"));
            let got = read_all(&log).await;
            log.close().await.expect("close");
            got
        });
        // Only segment 0 is swapped here; the others stay as they were.
        let expected: Vec<Rec> = if cleaned_wins {
            cleaned_records
                .iter()
                .filter(|r| r.offset < 20)
                .chain(uncleaned_records.iter().filter(|r| r.offset >= 20))
                .cloned()
                .collect()
        } else {
            uncleaned_records.clone()
        };
        assert_eq!(got, expected, "{name}");
        let leftovers: Vec<String> = std::fs::read_dir(&crashed)
            .expect("list")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .filter(|n| n.ends_with(".cleaned") || n.ends_with(".swap"))
            .collect();
        assert!(leftovers.is_empty(), "{name}: leftovers {leftovers:?}");
    }
}

/// Environment variable that makes [`sigkill_child_cleaner`] run: the log directory.
const CHILD_DIR_ENV: &str = "SLUICE_COMPACTION_CHILD_DIR";

/// The child of [`sigkill_mid_clean_recovers_a_whole_segment_either_way`]: opens the log and
/// runs one slow (throttled) pass until it is killed. Does nothing unless started by it.
#[test]
#[ignore = "child process of sigkill_mid_clean_recovers_a_whole_segment_either_way"]
fn sigkill_child_cleaner() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return;
    };
    let mut config = config(1 << 20, 0);
    if let Some(c) = config.compaction.as_mut() {
        c.io_bytes_per_s = Some(1 << 20);
    }
    run(async {
        let log = PartitionLog::open(&dir, config).await.expect("child open");
        println!("cleaning");
        use std::io::Write;
        std::io::stdout().flush().expect("flush");
        log.clean_now(1_000).await.expect("child clean");
        println!("cleaned");
        std::io::stdout().flush().expect("flush");
        // Wait to be killed.
        compio::time::sleep(std::time::Duration::from_secs(60)).await;
    });
}

/// SIGKILL a process in the middle of a (throttled) compaction pass, at several moments:
/// after recovery every segment holds either exactly its original records or exactly its
/// cleaned ones, every key's latest record is there, and nothing else is.
#[test]
fn sigkill_mid_clean_recovers_a_whole_segment_either_way() {
    use std::io::BufRead;
    let root = tempfile::tempdir().expect("tempdir");
    let original = root.path().join("original");
    let written = run(async {
        let log = PartitionLog::open(&original, config(1 << 20, 0))
            .await
            .expect("open");
        let mut batches: Workload = Vec::new();
        for i in 0..600u32 {
            let key = format!("key-{}", i % 20).into_bytes();
            batches.push((
                vec![(key, Some(vec![i as u8; 1000]), i64::from(i))],
                Compression::None,
                false,
            ));
        }
        let written = append_all(&log, &batches).await;
        log.roll_now().await.expect("roll");
        wait_sealed(&log).await;
        log.close().await.expect("close");
        written
    });
    let bases: Vec<u64> = {
        let mut b: Vec<u64> = std::fs::read_dir(&original)
            .expect("list")
            .filter_map(|e| {
                let name = e.expect("entry").file_name().into_string().ok()?;
                name.strip_suffix(".log")?.parse().ok()
            })
            .collect();
        b.sort_unstable();
        b
    };
    assert!(bases.len() > 10, "many segments: {bases:?}");
    // The last segment is the empty one the roll left: a reopen removes it, and the segment
    // before becomes the active one, which is not cleaned.
    let bases = &bases[..bases.len() - 1];
    let cleaned = model(&written, bases, 1_000, 0);
    let mut outcomes = (0, 0);
    for (i, delay_ms) in [5u64, 150, 400, 900, 1500, 2500].into_iter().enumerate() {
        let dir = root.path().join(format!("run-{i}"));
        copy_dir(&original, &dir);
        let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "sigkill_child_cleaner",
                "--ignored",
                "--nocapture",
            ])
            .env(CHILD_DIR_ENV, &dir)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn child");
        let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        loop {
            let line = lines
                .next()
                .expect("child output")
                .expect("read child output");
            if line.trim() == "cleaning" {
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        let got = run(async {
            let log = PartitionLog::open(&dir, config(1 << 20, 0))
                .await
                .expect("recovery after SIGKILL");
            let got = read_all(&log).await;
            log.close().await.expect("close");
            got
        });
        // Segment by segment: original or cleaned, whole.
        for w in bases.windows(2) {
            let (start, end) = (w[0], w[1]);
            let part = |recs: &[Rec]| -> Vec<Rec> {
                recs.iter()
                    .filter(|r| r.offset >= start && r.offset < end)
                    .cloned()
                    .collect()
            };
            let seg = part(&got);
            if seg == part(&written) {
                outcomes.0 += 1;
            } else {
                assert!(
                    seg == part(&cleaned),
                    "kill after {delay_ms} ms: segment {start} is neither original nor cleaned: \
                     offsets {:?}",
                    seg.iter().map(|r| r.offset).collect::<Vec<_>>()
                );
                outcomes.1 += 1;
            }
        }
        let tail = *bases.last().expect("base");
        let active = |recs: &[Rec]| -> Vec<Rec> {
            recs.iter().filter(|r| r.offset >= tail).cloned().collect()
        };
        assert!(
            active(&got) == active(&written),
            "the active segment is untouched"
        );
    }
    assert!(
        outcomes.0 > 0 && outcomes.1 > 0,
        "kills landed before and after swaps: {outcomes:?}"
    );
}
