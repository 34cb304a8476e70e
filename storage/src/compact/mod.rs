//! Log compaction (`cleanup.policy=compact`): the pieces of the cleaner that do not touch the
//! log's state. The pass itself (planning, the two passes, the swap into the live log) is
//! `PartitionLog::clean` in `log/clean.rs`; this module holds
//!
//! - [`OffsetMap`]: key -> latest offset over the dirty range, bounded in bytes;
//! - [`filter_batch`]: keeps the wanted records of one batch, rebuilding it when some go;
//! - the crash-safe swap of a cleaned segment (`.cleaned` -> `.swap` -> final names) and the
//!   recovery step that finishes or discards an interrupted one ([`finish_swaps`]);
//! - [`Throttle`] and [`yield_now`], which keep the cleaner's I/O bounded and its shard
//!   responsive.
//!
//! Offsets never change: a batch whose records all stay is kept byte for byte; otherwise each
//! run of consecutive kept records becomes its own batch at the run's first offset (the format
//! requires offset deltas equal to record indexes), with a fresh CRC. Between batches there
//! may then be gaps, which readers of a compacted log accept. The last record of a segment is
//! always kept, so a segment never becomes empty and its next offset never changes: the log
//! end cannot move backwards at recovery, and segment boundaries stay where they were.

use std::collections::HashMap;
use std::future::poll_fn;
use std::io;
use std::path::{Path, PathBuf};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_proto::{
    BatchBuilder, BuildError, DecodeError, Limits, MAX_TIMESTAMP_AT, Offset, RecordBatch,
    TimestampType, compute_crc, stamp_base_offset, stamp_leader_epoch,
};

use crate::index::segment_file_names;

/// Bytes the cleaner reads from a segment file per step (then it yields to the shard).
pub const CLEANER_READ_BYTES: usize = 1 << 20;
/// Bytes of cleaned output the cleaner buffers before writing them out.
pub const CLEANER_WRITE_BYTES: usize = 1 << 20;
/// Bytes one entry of the [`OffsetMap`] costs besides its key: hash-table slot, the offset,
/// the boxed key's pointer and length, and allocator slack.
pub const OFFSET_MAP_ENTRY_OVERHEAD_BYTES: usize = 64;

/// Suffix of a cleaned segment file being written (incomplete until renamed).
pub(crate) const CLEANED_SUFFIX: &str = "cleaned";
/// Suffix of a cleaned segment file that is complete and replaces the segment of its name.
pub(crate) const SWAP_SUFFIX: &str = "swap";

/// Key -> offset of its latest record in the range scanned, holding at most `capacity`
/// bytes (keys plus [`OFFSET_MAP_ENTRY_OVERHEAD_BYTES`] each). Keys are stored whole, so two
/// keys never collide.
#[derive(Debug)]
pub(crate) struct OffsetMap {
    map: HashMap<Box<[u8]>, Offset>,
    bytes: usize,
    capacity: usize,
}

impl OffsetMap {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            map: HashMap::new(),
            bytes: 0,
            capacity,
        }
    }

    /// Records `offset` as the latest of `key`. `false` (and nothing recorded) when a new key
    /// would not fit.
    pub(crate) fn insert(&mut self, key: &[u8], offset: Offset) -> bool {
        if let Some(latest) = self.map.get_mut(key) {
            *latest = offset.max(*latest);
            return true;
        }
        let cost = key.len() + OFFSET_MAP_ENTRY_OVERHEAD_BYTES;
        if self.bytes + cost > self.capacity {
            return false;
        }
        self.bytes += cost;
        self.map.insert(key.into(), offset);
        true
    }

    /// The latest offset recorded for `key`.
    pub(crate) fn get(&self, key: &[u8]) -> Option<Offset> {
        self.map.get(key).copied()
    }

    /// Keys recorded.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

/// What the cleaner decides for one record.
pub(crate) struct RecordView<'a> {
    /// The record's offset.
    pub offset: Offset,
    /// Its key.
    pub key: Option<&'a [u8]>,
    /// Whether its value is null (a tombstone).
    pub tombstone: bool,
    /// Its timestamp (the batch's max timestamp under log-append time).
    pub timestamp: i64,
}

/// The kept part of a batch.
pub(crate) enum Filtered {
    /// Every record stays: the batch is kept as it is.
    All,
    /// Some records stay: one rebuilt batch per run of consecutive kept records.
    Some(Vec<Bytes>),
    /// No record stays.
    None,
}

/// Why a batch could not be filtered.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FilterError {
    /// The batch did not decode (it passed its CRC check, so this is a bug or damage).
    #[error("cannot decode batch: {0}")]
    Decode(#[from] DecodeError),
    /// A rebuilt batch could not be built.
    #[error("cannot rebuild batch: {0}")]
    Build(#[from] BuildError),
}

/// Applies `keep` to every record of `batch`. Rebuilt batches keep the codec, timestamp type,
/// flags, producer id and epoch, leader epoch and base timestamp; their base offset is the
/// run's first offset and their base sequence moves with it.
pub(crate) fn filter_batch(
    batch: &RecordBatch,
    limits: &Limits,
    mut keep: impl FnMut(&RecordView<'_>) -> bool,
) -> Result<Filtered, FilterError> {
    let header = *batch.header();
    let log_append = header.attributes.timestamp_type() == TimestampType::LogAppendTime;
    let mut records = Vec::with_capacity(batch.record_count() as usize);
    let mut kept = Vec::with_capacity(batch.record_count() as usize);
    for record in batch.records()? {
        let record = record?;
        let view = RecordView {
            offset: record.offset(batch.base_offset()),
            key: record.key.as_deref(),
            tombstone: record.value.is_none(),
            timestamp: if log_append {
                header.max_timestamp
            } else {
                record.timestamp(header.base_timestamp)
            },
        };
        kept.push(keep(&view));
        records.push(record);
    }
    if kept.iter().all(|&k| k) {
        return Ok(Filtered::All);
    }
    if !kept.iter().any(|&k| k) {
        return Ok(Filtered::None);
    }
    let compression = header.compression()?;
    let mut out = Vec::new();
    let mut i = 0;
    while i < records.len() {
        if !kept[i] {
            i += 1;
            continue;
        }
        let first = i;
        let base_sequence = if header.base_sequence < 0 {
            header.base_sequence
        } else {
            // Kafka's sequences wrap at i32::MAX.
            ((i64::from(header.base_sequence) + first as i64) % (i64::from(i32::MAX) + 1)) as i32
        };
        let mut builder = BatchBuilder::new(compression, *limits)
            .producer(header.producer_id, header.producer_epoch, base_sequence)
            .timestamp_type(header.attributes.timestamp_type())
            .transactional(header.attributes.is_transactional())
            .control(header.attributes.is_control())
            .base_timestamp(header.base_timestamp);
        while i < records.len() && kept[i] {
            let record = &records[i];
            let mut headers = Vec::with_capacity(record.headers.len());
            for h in &record.headers {
                headers.push(h?);
            }
            let headers: Vec<(&[u8], Option<&[u8]>)> = headers
                .iter()
                .map(|(k, v)| (&k[..], v.as_deref()))
                .collect();
            builder.push(
                record.timestamp(header.base_timestamp),
                record.key.as_deref(),
                record.value.as_deref(),
                &headers,
            )?;
            i += 1;
        }
        let mut bytes = builder.build()?;
        stamp_base_offset(&mut bytes, Offset(header.base_offset.get() + first as u64));
        stamp_leader_epoch(&mut bytes, header.leader_epoch);
        if log_append {
            // Under log-append time the header's max timestamp is the append time.
            bytes[MAX_TIMESTAMP_AT..MAX_TIMESTAMP_AT + 8]
                .copy_from_slice(&header.max_timestamp.to_le_bytes());
            let crc = compute_crc(&bytes);
            bytes[sluice_proto::CRC_AT..sluice_proto::CRC_AT + 4]
                .copy_from_slice(&crc.to_le_bytes());
        }
        out.push(bytes.freeze());
    }
    Ok(Filtered::Some(out))
}

/// A segment file name with an extra suffix: `{base:020}.log.cleaned`.
pub(crate) fn suffixed(dir: &Path, name: &str, suffix: &str) -> PathBuf {
    dir.join(format!("{name}.{suffix}"))
}

/// The three files of segment `base` (log, offset index, time index).
pub(crate) fn segment_names(base: Offset) -> [String; 3] {
    let (log, index, time) = segment_file_names(base);
    [log, index, time]
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Removes the `.cleaned` files of segment `base` and its index `.swap` files: a pass
/// abandoned before its commit point (the `.log.swap` rename).
pub(crate) fn remove_cleaned(dir: &Path, base: Offset) -> io::Result<()> {
    let [log, index, time] = segment_names(base);
    for name in [&log, &index, &time] {
        remove_if_present(&suffixed(dir, name, CLEANED_SUFFIX))?;
    }
    for name in [&index, &time] {
        remove_if_present(&suffixed(dir, name, SWAP_SUFFIX))?;
    }
    Ok(())
}

/// Step 2 of a swap: the complete, fsynced `.cleaned` files become `.swap` files, indexes
/// first; the rename of the log file is the commit point. The directory is fsynced after.
pub(crate) fn commit_swap(dir: &Path, base: Offset) -> io::Result<()> {
    let [log, index, time] = segment_names(base);
    for name in [index, time, log] {
        std::fs::rename(
            suffixed(dir, &name, CLEANED_SUFFIX),
            suffixed(dir, &name, SWAP_SUFFIX),
        )?;
    }
    Ok(())
}

/// Step 3 of a swap: the `.swap` files replace the segment's files, indexes first and the
/// log last (a crash in between leaves `.log.swap`, and recovery finishes the swap).
pub(crate) fn install_swap(dir: &Path, base: Offset) -> io::Result<()> {
    let [log, index, time] = segment_names(base);
    for name in [index, time, log] {
        let from = suffixed(dir, &name, SWAP_SUFFIX);
        match std::fs::rename(&from, dir.join(&name)) {
            // An index already installed by an earlier, interrupted attempt.
            Err(e) if e.kind() == io::ErrorKind::NotFound && !from.ends_with(".log.swap") => {}
            other => other?,
        }
    }
    Ok(())
}

/// Recovery: finishes swaps that reached their commit point (`{base}.log.swap` exists) and
/// discards the others (`.cleaned` files, and `.swap` index files without their log).
/// Returns the bases of the segments swapped in. The caller fsyncs the directory.
pub(crate) fn finish_swaps(dir: &Path) -> io::Result<Vec<Offset>> {
    let mut committed = Vec::new();
    let mut stray = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if let Some(stem) = name.strip_suffix(".log.swap") {
            if let Ok(base) = stem.parse::<u64>() {
                committed.push(Offset(base));
            }
        } else if name.ends_with(".cleaned") || name.ends_with(".swap") {
            stray.push(path);
        }
    }
    committed.sort();
    for base in &committed {
        tracing::warn!(dir = %dir.display(), segment = base.get(), "finishing an interrupted compaction swap");
        install_swap(dir, *base)?;
    }
    for path in stray {
        // Index `.swap` files of a committed swap were installed above.
        if path.exists() {
            tracing::warn!(file = %path.display(), "removing an unfinished compaction file");
            remove_if_present(&path)?;
        }
    }
    Ok(committed)
}

/// Keeps the cleaner's I/O under a rate: after each step, sleeps until the bytes done so far
/// are within the rate.
pub(crate) struct Throttle {
    bytes_per_s: Option<u64>,
    started: Instant,
    bytes: u64,
}

impl Throttle {
    pub(crate) fn new(bytes_per_s: Option<u64>) -> Self {
        Self {
            bytes_per_s,
            started: Instant::now(),
            bytes: 0,
        }
    }

    /// Counts `bytes` of I/O, sleeps if ahead of the rate, and yields to the shard.
    pub(crate) async fn step(&mut self, bytes: usize) {
        self.bytes += bytes as u64;
        if let Some(rate) = self.bytes_per_s {
            let due = Duration::from_secs_f64(self.bytes as f64 / rate as f64);
            let elapsed = self.started.elapsed();
            if due > elapsed {
                compio::time::sleep(due - elapsed).await;
                return;
            }
        }
        yield_now().await;
    }
}

/// Lets the other tasks of the shard run before going on.
pub(crate) async fn yield_now() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            return Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use sluice_proto::Compression;

    fn batch(base: u64, keys: &[Option<&str>], compression: Compression) -> RecordBatch {
        let mut b = BatchBuilder::new(compression, Limits::DEFAULT).producer(7, 1, 100);
        for (i, k) in keys.iter().enumerate() {
            let value = format!("v{i}");
            let header: (&[u8], Option<&[u8]>) = (b"h", Some(b"x"));
            b.push(
                1_000 + i as i64,
                k.map(str::as_bytes),
                Some(value.as_bytes()),
                &[header],
            )
            .expect("push");
        }
        let mut bytes: BytesMut = b.build().expect("build");
        stamp_base_offset(&mut bytes, Offset(base));
        RecordBatch::from_bytes(bytes.freeze(), &Limits::DEFAULT).expect("valid")
    }

    #[test]
    fn map_is_bounded_and_keeps_the_latest() {
        let mut map = OffsetMap::new(3 * (OFFSET_MAP_ENTRY_OVERHEAD_BYTES + 1));
        assert!(map.insert(b"a", Offset(1)));
        assert!(map.insert(b"b", Offset(2)));
        assert!(map.insert(b"a", Offset(5)));
        assert!(map.insert(b"c", Offset(6)));
        assert!(!map.insert(b"d", Offset(7)), "full");
        assert!(map.insert(b"c", Offset(8)), "known keys still update");
        assert_eq!(map.get(b"a"), Some(Offset(5)));
        assert_eq!(map.get(b"c"), Some(Offset(8)));
        assert_eq!(map.get(b"d"), None);
        assert_eq!(map.len(), 3);
    }

    #[test]
    fn runs_become_batches_at_their_offsets() {
        for compression in [Compression::None, Compression::Lz4, Compression::Zstd] {
            let b = batch(
                10,
                &[Some("a"), Some("b"), Some("c"), Some("d"), None],
                compression,
            );
            let all = filter_batch(&b, &Limits::DEFAULT, |_| true).expect("filter");
            assert!(matches!(all, Filtered::All));
            let none = filter_batch(&b, &Limits::DEFAULT, |_| false).expect("filter");
            assert!(matches!(none, Filtered::None));
            // Keep offsets 10, 12, 13: two runs.
            let Filtered::Some(runs) = filter_batch(&b, &Limits::DEFAULT, |r| {
                r.offset != Offset(11) && r.offset != Offset(14)
            })
            .expect("filter") else {
                panic!("some records kept");
            };
            assert_eq!(runs.len(), 2);
            let parsed: Vec<RecordBatch> = runs
                .into_iter()
                .map(|bytes| RecordBatch::from_bytes(bytes, &Limits::DEFAULT).expect("valid"))
                .collect();
            assert_eq!(parsed[0].base_offset(), Offset(10));
            assert_eq!(parsed[0].record_count(), 1);
            assert_eq!(parsed[1].base_offset(), Offset(12));
            assert_eq!(parsed[1].record_count(), 2);
            assert_eq!(parsed[1].header().base_sequence, 102);
            assert_eq!(parsed[1].header().producer_id, 7);
            assert_eq!(parsed[1].compression(), compression);
            let records: Vec<_> = parsed[1]
                .records()
                .expect("records")
                .map(|r| r.expect("record"))
                .collect();
            assert_eq!(records[0].key.as_deref(), Some(&b"c"[..]));
            assert_eq!(records[1].value.as_deref(), Some(&b"v3"[..]));
            assert_eq!(
                records[1].timestamp(parsed[1].header().base_timestamp),
                1_003
            );
            assert_eq!(records[1].headers.len(), 1);
        }
    }
}
