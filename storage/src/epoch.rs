//! The leader-epoch cache of a log and the small checkpoint files a replicated log keeps next
//! to its segments (`leader-epoch-checkpoint`, `hw-checkpoint`).
//!
//! The cache is the ordered list of `(leader epoch, start offset)`: the first offset written
//! under each epoch. A returning follower or old leader asks the current leader for the end
//! of its own latest epoch ([`EpochCache::end_offset_for`]) and truncates what it holds past
//! that point: the suffix the new leader never had (Kafka's KIP-101 / KIP-279 / KIP-320).
//!
//! Both checkpoint files are small binary records ending with a CRC-32C of everything before
//! it, written through a temporary file, fsync, rename and directory fsync.

use std::io;
use std::path::Path;

use sluice_proto::Offset;

use crate::io::sync_dir;

/// Most entries the leader-epoch cache keeps; past it the oldest entry is dropped (the log
/// then answers nothing for epochs older than what remains, which only a follower more than
/// this many leader changes behind would ask about).
pub const LEADER_EPOCH_ENTRIES_MAX: usize = 1024;

/// Name of the leader-epoch checkpoint file in a partition directory.
pub const LEADER_EPOCH_CHECKPOINT: &str = "leader-epoch-checkpoint";
/// Name of the high-watermark checkpoint file in a partition directory.
pub const HW_CHECKPOINT: &str = "hw-checkpoint";
/// Name of the truncation-intent file: present while a truncation is in progress; the log
/// finishes it when it opens (see `PartitionLog::truncate_to`).
pub(crate) const TRUNCATE_INTENT: &str = "truncate-intent";

const EPOCH_MAGIC: &[u8; 4] = b"SLEP";
const HW_MAGIC: &[u8; 4] = b"SLHW";
const INTENT_MAGIC: &[u8; 4] = b"SLTR";
const INTENT_FULL_MAGIC: &[u8; 4] = b"SLTF";
const VERSION: u16 = 1;
/// Magic, version, entry count.
const EPOCH_HEAD_BYTES: usize = 4 + 2 + 4;
/// Epoch (u32) and start offset (u64).
const EPOCH_ENTRY_BYTES: usize = 4 + 8;
const CRC_BYTES: usize = 4;

/// One entry: the first offset written under `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEntry {
    /// The leader epoch.
    pub epoch: u32,
    /// The first offset written under it.
    pub start_offset: Offset,
}

/// The ordered `(epoch, start offset)` list of a log: epochs strictly increase, start
/// offsets never decrease.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct EpochCache {
    entries: Vec<EpochEntry>,
}

impl EpochCache {
    pub(crate) fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    pub(crate) fn latest(&self) -> Option<EpochEntry> {
        self.entries.last().copied()
    }

    /// Records that `epoch` starts at `start_offset`. Only an epoch newer than the latest
    /// is added (Kafka's `assign`); returns whether it was.
    pub(crate) fn assign(&mut self, epoch: u32, start_offset: Offset) -> bool {
        if let Some(last) = self.latest() {
            if epoch <= last.epoch {
                return false;
            }
            debug_assert!(start_offset >= last.start_offset);
        }
        if self.entries.len() >= LEADER_EPOCH_ENTRIES_MAX {
            self.entries.remove(0);
        }
        self.entries.push(EpochEntry {
            epoch,
            start_offset,
        });
        true
    }

    /// After a truncation to `end`: drops every epoch that starts at or after it (their data
    /// is gone). Returns whether anything changed.
    pub(crate) fn truncate_from_end(&mut self, end: Offset) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| e.start_offset < end);
        self.entries.len() != before
    }

    /// At open: drops epochs that start beyond the log end (a crash lost their data, or
    /// interrupted a truncation before the checkpoint was rewritten). An epoch starting
    /// exactly at the end is kept: a leader elected but not yet written to.
    pub(crate) fn clamp_to_end(&mut self, end: Offset) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| e.start_offset <= end);
        self.entries.len() != before
    }

    /// After retention moved the log start to `start`: drops epochs wholly below it; the
    /// latest of them is kept, starting at `start`, if no epoch starts exactly there (Kafka's
    /// `truncateFromStart`). Returns whether anything changed.
    pub(crate) fn truncate_from_start(&mut self, start: Offset) -> bool {
        let below = self.entries.partition_point(|e| e.start_offset < start);
        if below == 0 {
            return false;
        }
        let starts_there = self
            .entries
            .get(below)
            .is_some_and(|e| e.start_offset == start);
        let mut kept = self.entries.split_off(below);
        if !starts_there {
            let last_below = self.entries[below - 1];
            kept.insert(
                0,
                EpochEntry {
                    epoch: last_below.epoch,
                    start_offset: start,
                },
            );
        }
        let changed = kept != self.entries;
        self.entries = kept;
        changed
    }

    /// Kafka's `endOffsetFor`: the largest epoch `<= epoch` this log has, and where it ends:
    /// the start offset of the next epoch, or `log_end` for the latest. `None` when the log
    /// knows no epoch that old (or none at all).
    pub(crate) fn end_offset_for(&self, epoch: u32, log_end: Offset) -> Option<(u32, Offset)> {
        let at = self.entries.partition_point(|e| e.epoch <= epoch);
        if at == 0 {
            return None;
        }
        let found = self.entries[at - 1];
        let end = self
            .entries
            .get(at)
            .map_or(log_end, |next| next.start_offset);
        Some((found.epoch, end))
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(EPOCH_HEAD_BYTES + self.entries.len() * EPOCH_ENTRY_BYTES + 4);
        out.extend_from_slice(EPOCH_MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for e in &self.entries {
            out.extend_from_slice(&e.epoch.to_le_bytes());
            out.extend_from_slice(&e.start_offset.get().to_le_bytes());
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes a checkpoint; the error says what is wrong with it.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, String> {
        let body = check_crc(bytes, EPOCH_MAGIC, EPOCH_HEAD_BYTES)?;
        let count = u32::from_le_bytes(body[6..10].try_into().expect("4 bytes")) as usize;
        if count > LEADER_EPOCH_ENTRIES_MAX {
            return Err(format!(
                "{count} entries, more than {LEADER_EPOCH_ENTRIES_MAX}"
            ));
        }
        if body.len() != EPOCH_HEAD_BYTES + count * EPOCH_ENTRY_BYTES {
            return Err(format!("{} bytes for {count} entries", body.len()));
        }
        let mut cache = Self::default();
        for chunk in body[EPOCH_HEAD_BYTES..].chunks_exact(EPOCH_ENTRY_BYTES) {
            let epoch = u32::from_le_bytes(chunk[..4].try_into().expect("4 bytes"));
            let start_offset = Offset(u64::from_le_bytes(chunk[4..].try_into().expect("8")));
            if let Some(last) = cache.latest()
                && (epoch <= last.epoch || start_offset < last.start_offset)
            {
                return Err(format!(
                    "entries out of order: ({}, {}) then ({epoch}, {start_offset})",
                    last.epoch, last.start_offset
                ));
            }
            cache.entries.push(EpochEntry {
                epoch,
                start_offset,
            });
        }
        Ok(cache)
    }
}

/// Checks magic, version and CRC; returns the bytes before the CRC.
fn check_crc<'a>(bytes: &'a [u8], magic: &[u8; 4], head: usize) -> Result<&'a [u8], String> {
    if bytes.len() < head + CRC_BYTES {
        return Err(format!("{} bytes, too short", bytes.len()));
    }
    let (body, crc) = bytes.split_at(bytes.len() - CRC_BYTES);
    let stored = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    let actual = crc32c::crc32c(body);
    if stored != actual {
        return Err(format!(
            "CRC mismatch: stored {stored:#010x}, computed {actual:#010x}"
        ));
    }
    if &body[..4] != magic {
        return Err("bad magic".into());
    }
    let version = u16::from_le_bytes(body[4..6].try_into().expect("2 bytes"));
    if version != VERSION {
        return Err(format!("unknown version {version}"));
    }
    Ok(body)
}

/// Encodes a single-offset checkpoint (`hw-checkpoint`, `truncate-intent`).
fn encode_offset(magic: &[u8; 4], offset: Offset) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 2 + 8 + CRC_BYTES);
    out.extend_from_slice(magic);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&offset.get().to_le_bytes());
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn decode_offset(magic: &[u8; 4], bytes: &[u8]) -> Result<Offset, String> {
    let body = check_crc(bytes, magic, 6)?;
    if body.len() != 6 + 8 {
        return Err(format!("{} bytes, expected 14", body.len()));
    }
    Ok(Offset(u64::from_le_bytes(
        body[6..14].try_into().expect("8 bytes"),
    )))
}

pub(crate) fn encode_hw(hw: Offset) -> Vec<u8> {
    encode_offset(HW_MAGIC, hw)
}

pub(crate) fn decode_hw(bytes: &[u8]) -> Result<Offset, String> {
    decode_offset(HW_MAGIC, bytes)
}

/// A truncation in progress, as recorded in `truncate-intent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TruncateIntent {
    /// `truncate_to`: the log ends at this offset (a batch boundary).
    To(Offset),
    /// `truncate_fully_and_start_at`: the log is empty and starts at this offset.
    FullyAt(Offset),
}

pub(crate) fn encode_intent(intent: TruncateIntent) -> Vec<u8> {
    match intent {
        TruncateIntent::To(offset) => encode_offset(INTENT_MAGIC, offset),
        TruncateIntent::FullyAt(offset) => encode_offset(INTENT_FULL_MAGIC, offset),
    }
}

pub(crate) fn decode_intent(bytes: &[u8]) -> Result<TruncateIntent, String> {
    match decode_offset(INTENT_MAGIC, bytes) {
        Ok(offset) => Ok(TruncateIntent::To(offset)),
        Err(_) => decode_offset(INTENT_FULL_MAGIC, bytes).map(TruncateIntent::FullyAt),
    }
}

/// Reads a small file; `Ok(None)` if it does not exist.
pub(crate) async fn read_optional(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match compio::fs::read(path).await {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes `name` in `dir` atomically and durably: temporary file, fsync, rename, directory
/// fsync. A crash leaves the old file or the new one, whole.
pub(crate) async fn write_checkpoint(dir: &Path, name: &str, bytes: Vec<u8>) -> io::Result<()> {
    crate::log::write_file_atomically(dir, name, bytes).await?;
    sync_dir(dir).await
}

/// Removes `name` in `dir` (if present) and fsyncs the directory.
pub(crate) async fn remove_checkpoint(dir: &Path, name: &str) -> io::Result<()> {
    match compio::fs::remove_file(dir.join(name)).await {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    sync_dir(dir).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(entries: &[(u32, u64)]) -> EpochCache {
        let mut c = EpochCache::default();
        for &(e, s) in entries {
            assert!(c.assign(e, Offset(s)));
        }
        c
    }

    #[test]
    fn end_offset_for_follows_kafka() {
        let c = cache(&[(1, 0), (3, 10), (4, 25)]);
        assert_eq!(c.end_offset_for(0, Offset(30)), None);
        assert_eq!(c.end_offset_for(1, Offset(30)), Some((1, Offset(10))));
        assert_eq!(c.end_offset_for(2, Offset(30)), Some((1, Offset(10))));
        assert_eq!(c.end_offset_for(3, Offset(30)), Some((3, Offset(25))));
        assert_eq!(c.end_offset_for(4, Offset(30)), Some((4, Offset(30))));
        assert_eq!(c.end_offset_for(9, Offset(30)), Some((4, Offset(30))));
        assert_eq!(EpochCache::default().end_offset_for(1, Offset(3)), None);
    }

    #[test]
    fn assign_ignores_old_epochs_and_is_bounded() {
        let mut c = cache(&[(2, 5)]);
        assert!(!c.assign(2, Offset(7)));
        assert!(!c.assign(1, Offset(7)));
        // Newer epochs start at or after the latest one's start (5).
        for e in 3..(3 + LEADER_EPOCH_ENTRIES_MAX as u32) {
            assert!(c.assign(e, Offset(5 + u64::from(e))));
        }
        assert_eq!(c.entries().len(), LEADER_EPOCH_ENTRIES_MAX);
        assert_eq!(c.entries()[0].epoch, 3);
    }

    #[test]
    fn truncation_from_both_ends() {
        let mut c = cache(&[(1, 0), (3, 10), (4, 25)]);
        assert!(c.truncate_from_end(Offset(25)));
        assert_eq!(c, cache(&[(1, 0), (3, 10)]));
        assert!(!c.truncate_from_end(Offset(11)));
        assert!(c.truncate_from_start(Offset(12)));
        assert_eq!(c, cache(&[(3, 12)]));
        let mut c = cache(&[(1, 0), (3, 10)]);
        assert!(c.truncate_from_start(Offset(10)));
        assert_eq!(c, cache(&[(3, 10)]));
        assert!(!c.truncate_from_start(Offset(10)));
        let mut c = cache(&[(1, 0), (3, 10)]);
        assert!(c.clamp_to_end(Offset(9)));
        assert_eq!(c, cache(&[(1, 0)]));
        assert!(!c.clamp_to_end(Offset(0)));
    }

    #[test]
    fn checkpoints_round_trip_and_reject_damage() {
        let c = cache(&[(1, 0), (3, 10), (4, 25)]);
        let bytes = c.encode();
        assert_eq!(EpochCache::decode(&bytes), Ok(c));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(EpochCache::decode(&bad).is_err(), "flip at {i} accepted");
        }
        assert!(EpochCache::decode(&bytes[..bytes.len() - 1]).is_err());
        assert_eq!(decode_hw(&encode_hw(Offset(77))), Ok(Offset(77)));
        assert!(decode_hw(&encode_intent(TruncateIntent::To(Offset(77)))).is_err());
        for intent in [
            TruncateIntent::To(Offset(5)),
            TruncateIntent::FullyAt(Offset(9)),
        ] {
            assert_eq!(decode_intent(&encode_intent(intent)), Ok(intent));
        }
        let mut hw = encode_hw(Offset(77));
        hw[8] ^= 1;
        assert!(decode_hw(&hw).is_err());
    }
}
