//! Durable raft storage in `DATA_DIR/controller/`: raft-rs's [`Storage`] over three files.
//!
//! - `raft-state`: HardState (term, vote, commit) and ConfState (voters), written atomically
//!   (temp file, fsync, rename, directory fsync), with a CRC. Missing while a log or snapshot
//!   exists, or corrupt: open refuses rather than reset the term (a node that forgets its vote
//!   could vote twice in one term).
//! - `snapshot`: the rkyv-archived [`ClusterState`](super::ClusterState) with the index, term
//!   and voters it covers, written atomically, with a CRC. Corrupt: open refuses.
//! - `log`: the entries after the snapshot, one record each: `u32 LE body length | u32 LE
//!   crc32c(body) | body` (the protobuf-encoded raft `Entry`). Appends are fsynced before any
//!   message that depends on them is handed out. A torn or corrupt record ends the log: open
//!   cuts it and everything after it off, with a warn line. When raft overwrites a conflicting
//!   suffix the file is cut at the first overwritten record. Compaction after a snapshot
//!   rewrites the file (temp + rename), so the log stays bounded by
//!   [`CONTROLLER_SNAPSHOT_ENTRIES`](super::CONTROLLER_SNAPSHOT_ENTRIES) entries plus the
//!   uncommitted tail.
//!
//! All entries after the snapshot are also kept in memory, so the [`Storage`] reads raft-rs
//! makes never touch the disk. Writes are blocking `std::fs` calls: controller writes are rare
//! (a few per broker state change), and shard 0 pays for them, not the data path.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

use super::error::{ControllerError, Result};

/// Largest log record body (one raft entry); bigger proposals are refused before Raft.
pub const CONTROLLER_ENTRY_BYTES_MAX: usize = 1024 * 1024 + 4096;
/// Largest snapshot data (the archived cluster state). A snapshot travels in one raft
/// message, which must fit a peer frame (8 MiB + 64 KiB); the cluster limits
/// ([`CLUSTER_PARTITIONS_MAX`](super::state::CLUSTER_PARTITIONS_MAX) and friends) keep the
/// state well below it.
pub const CONTROLLER_SNAPSHOT_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Most voters (and learners) a conf state may hold.
pub const CONTROLLER_VOTERS_MAX: usize = 9;

const RAFT_STATE_FILE: &str = "raft-state";
const SNAPSHOT_FILE: &str = "snapshot";
const LOG_FILE: &str = "log";
const RAFT_STATE_MAGIC: &[u8; 4] = b"SLRS";
const SNAPSHOT_MAGIC: &[u8; 4] = b"SLSN";
const FORMAT_VERSION: u8 = 1;
const RECORD_HEADER_BYTES: usize = 8;

/// What open found and repaired, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Whether the directory was empty and got initialized.
    pub fresh: bool,
    /// Entries loaded from the log.
    pub entries: usize,
    /// Bytes cut off the end of the log (torn or corrupt tail).
    pub cut_bytes: u64,
    /// Snapshot index loaded (0: none).
    pub snapshot_index: u64,
}

/// raft-rs [`Storage`] backed by files in the controller directory.
pub struct DiskStorage {
    dir: PathBuf,
    hard_state: HardState,
    conf_state: ConfState,
    /// Latest snapshot: metadata and the archived state (index 0: none yet).
    snapshot: Snapshot,
    /// The entries after `snapshot`'s index, in order, contiguous.
    entries: Vec<Entry>,
    /// `entry_ends[i]`: log file offset right after `entries[i]`'s record.
    entry_ends: Vec<u64>,
    log: File,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ControllerError + '_ {
    move |source| ControllerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(path: &Path, reason: impl Into<String>) -> ControllerError {
    ControllerError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl DiskStorage {
    /// Opens (or initializes, with `voters` as the raft ids of the voters) the storage in `dir`.
    pub fn open(dir: &Path, voters: &[u64]) -> Result<(DiskStorage, Recovery)> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut recovery = Recovery::default();
        let state_path = dir.join(RAFT_STATE_FILE);
        let snap_path = dir.join(SNAPSHOT_FILE);
        let log_path = dir.join(LOG_FILE);
        let mut sorted_voters = voters.to_vec();
        sorted_voters.sort_unstable();

        let snapshot = match read_optional(&snap_path)? {
            Some(bytes) => decode_snapshot(&bytes).map_err(|r| corrupt(&snap_path, r))?,
            None => Snapshot::default(),
        };
        let log_bytes = read_optional(&log_path)?.unwrap_or_default();

        let (mut hard_state, conf_state) = match read_optional(&state_path)? {
            Some(bytes) => decode_raft_state(&bytes).map_err(|r| corrupt(&state_path, r))?,
            None => {
                if !log_bytes.is_empty() || snapshot.get_metadata().index > 0 {
                    return Err(corrupt(
                        &state_path,
                        "missing while a log or snapshot exists; refusing to start over with \
                         term 0 (restore the file or wipe the controller directory)",
                    ));
                }
                recovery.fresh = true;
                let cs = ConfState {
                    voters: sorted_voters.clone(),
                    ..Default::default()
                };
                let hs = HardState::default();
                write_atomic(dir, RAFT_STATE_FILE, &encode_raft_state(&hs, &cs))?;
                (hs, cs)
            }
        };
        let mut stored_voters = conf_state.voters.clone();
        stored_voters.sort_unstable();
        if stored_voters != sorted_voters {
            return Err(ControllerError::Voters(format!(
                "{} holds voters {stored_voters:?} (raft ids), the node was started with \
                 {sorted_voters:?}; changing the voter set is not supported",
                dir.display()
            )));
        }

        // The log: every whole, checked record up to the first bad one.
        let (mut entries, mut entry_ends, good_len) = parse_log(&log_bytes);
        if good_len < log_bytes.len() as u64 {
            recovery.cut_bytes = log_bytes.len() as u64 - good_len;
            tracing::warn!(
                path = %log_path.display(),
                kept_bytes = good_len,
                cut_bytes = recovery.cut_bytes,
                "controller log ends in a torn or corrupt record; cutting it off"
            );
        }
        // Entries the snapshot covers go; if the log does not continue the snapshot (a crash
        // between writing a received snapshot and resetting the log), all of it goes.
        let snap_index = snapshot.get_metadata().index;
        let snap_term = snapshot.get_metadata().term;
        let mut rewrite = false;
        if snap_index > 0 && !entries.is_empty() {
            let consistent = entries
                .iter()
                .find(|e| e.index == snap_index)
                .is_none_or(|e| e.term == snap_term);
            let before = entries.len();
            entries.retain(|e| e.index > snap_index);
            if !consistent || entries.first().is_some_and(|e| e.index != snap_index + 1) {
                entries.clear();
            }
            rewrite = entries.len() != before;
        }
        recovery.entries = entries.len();
        recovery.snapshot_index = snap_index;
        if snap_index > 0 {
            hard_state.term = hard_state.term.max(snap_term);
            hard_state.commit = hard_state.commit.max(snap_index);
        }
        let last_index = entries.last().map_or(snap_index, |e| e.index);
        if hard_state.commit > last_index {
            return Err(corrupt(
                &log_path,
                format!(
                    "the log ends at index {last_index}, below the commit index {} recorded \
                     in {RAFT_STATE_FILE}: committed entries are lost",
                    hard_state.commit
                ),
            ));
        }

        let log = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&log_path)
            .map_err(io_err(&log_path))?;
        if rewrite {
            entry_ends.clear();
            let mut storage_log = log;
            rewrite_log(dir, &entries, &mut entry_ends, &mut storage_log)?;
            return Ok((
                DiskStorage {
                    dir: dir.to_path_buf(),
                    hard_state,
                    conf_state,
                    snapshot,
                    entries,
                    entry_ends,
                    log: storage_log,
                },
                recovery,
            ));
        }
        if good_len < log_bytes.len() as u64 {
            log.set_len(good_len).map_err(io_err(&log_path))?;
            log.sync_all().map_err(io_err(&log_path))?;
        }
        entry_ends.truncate(entries.len());
        Ok((
            DiskStorage {
                dir: dir.to_path_buf(),
                hard_state,
                conf_state,
                snapshot,
                entries,
                entry_ends,
                log,
            },
            recovery,
        ))
    }

    /// The latest snapshot (index 0: none).
    pub fn snapshot_ref(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The persisted HardState.
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// Entries held after the snapshot.
    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }

    fn first_index_inner(&self) -> u64 {
        self.snapshot.get_metadata().index + 1
    }

    fn last_index_inner(&self) -> u64 {
        self.entries
            .last()
            .map_or(self.snapshot.get_metadata().index, |e| e.index)
    }

    /// Appends entries (overwriting a conflicting suffix) and fsyncs them.
    pub fn append(&mut self, ents: &[Entry]) -> Result<()> {
        let Some(first) = ents.first() else {
            return Ok(());
        };
        let path = self.dir.join(LOG_FILE);
        assert!(
            first.index >= self.first_index_inner() && first.index <= self.last_index_inner() + 1,
            "raft appends entries {}.. to a log holding {}..={}",
            first.index,
            self.first_index_inner(),
            self.last_index_inner()
        );
        let keep = (first.index - self.first_index_inner()) as usize;
        if keep < self.entries.len() {
            self.entries.truncate(keep);
            self.entry_ends.truncate(keep);
            let len = self.entry_ends.last().copied().unwrap_or(0);
            self.log.set_len(len).map_err(io_err(&path))?;
        }
        let mut offset = self.entry_ends.last().copied().unwrap_or(0);
        let mut buf = Vec::new();
        for e in ents {
            let start = buf.len();
            encode_record(e, &mut buf);
            offset += (buf.len() - start) as u64;
            self.entry_ends.push(offset);
            self.entries.push(e.clone());
        }
        let at = offset - buf.len() as u64;
        self.log.write_all_at(&buf, at).map_err(io_err(&path))?;
        self.log.sync_data().map_err(io_err(&path))?;
        Ok(())
    }

    /// Persists a new HardState atomically.
    pub fn set_hard_state(&mut self, hs: &HardState) -> Result<()> {
        write_atomic(
            &self.dir,
            RAFT_STATE_FILE,
            &encode_raft_state(hs, &self.conf_state),
        )?;
        self.hard_state = hs.clone();
        Ok(())
    }

    /// Persists the commit index.
    pub fn set_commit(&mut self, commit: u64) -> Result<()> {
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.set_hard_state(&hs)
    }

    /// Installs a snapshot received from the leader: writes it, drops the whole log.
    pub fn apply_snapshot(&mut self, snap: &Snapshot) -> Result<()> {
        let meta = snap.get_metadata();
        write_atomic(&self.dir, SNAPSHOT_FILE, &encode_snapshot(snap))?;
        self.snapshot = snap.clone();
        self.entries.clear();
        self.entry_ends.clear();
        let path = self.dir.join(LOG_FILE);
        self.log.set_len(0).map_err(io_err(&path))?;
        self.log.sync_all().map_err(io_err(&path))?;
        let mut hs = self.hard_state.clone();
        hs.term = hs.term.max(meta.term);
        hs.commit = hs.commit.max(meta.index);
        self.set_hard_state(&hs)
    }

    /// Writes a snapshot of the applied state at `index` and drops the log entries up to it.
    pub fn compact(&mut self, index: u64, data: Vec<u8>) -> Result<()> {
        let term = self.term(index)?;
        let mut snap = Snapshot {
            data: data.into(),
            ..Default::default()
        };
        let meta = snap.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(self.conf_state.clone());
        write_atomic(&self.dir, SNAPSHOT_FILE, &encode_snapshot(&snap))?;
        self.snapshot = snap;
        self.entries.retain(|e| e.index > index);
        rewrite_log(
            &self.dir,
            &self.entries,
            &mut self.entry_ends,
            &mut self.log,
        )
    }
}

impl Storage for DiskStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first_index_inner() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last_index_inner() + 1 || low > high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let base = self.first_index_inner();
        let mut ents = self.entries[(low - base) as usize..(high - base) as usize].to_vec();
        raft::util::limit_size(&mut ents, max_size.into());
        Ok(ents)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let meta = self.snapshot.get_metadata();
        if idx == meta.index {
            return Ok(meta.term);
        }
        if idx < self.first_index_inner() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last_index_inner() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(self.entries[(idx - self.first_index_inner()) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first_index_inner())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index_inner())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if self.snapshot.get_metadata().index < request_index
            || self.snapshot.get_metadata().index == 0
        {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(self.snapshot.clone())
    }
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    match File::open(path) {
        Ok(mut f) => {
            let mut buf = Vec::new();
            f.read_to_end(&mut buf).map_err(io_err(path))?;
            Ok(Some(buf))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// temp file + fsync + rename + directory fsync.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    {
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
    }
    std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Rewrites the log file to hold exactly `entries` (temp + rename), reopening `log`.
fn rewrite_log(
    dir: &Path,
    entries: &[Entry],
    entry_ends: &mut Vec<u64>,
    log: &mut File,
) -> Result<()> {
    let mut buf = Vec::new();
    entry_ends.clear();
    for e in entries {
        encode_record(e, &mut buf);
        entry_ends.push(buf.len() as u64);
    }
    write_atomic(dir, LOG_FILE, &buf)?;
    let path = dir.join(LOG_FILE);
    *log = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    Ok(())
}

fn encode_record(e: &Entry, buf: &mut Vec<u8>) {
    let body = e
        .write_to_bytes()
        .unwrap_or_else(|err| panic!("encoding a raft entry cannot fail: {err}"));
    buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    buf.extend_from_slice(&body);
}

/// Parses records until the end or the first torn/corrupt one. Returns the entries, the end
/// offset of each, and the length of the good prefix.
fn parse_log(bytes: &[u8]) -> (Vec<Entry>, Vec<u64>, u64) {
    let mut entries: Vec<Entry> = Vec::new();
    let mut ends: Vec<u64> = Vec::new();
    let mut pos = 0usize;
    while bytes.len() - pos >= RECORD_HEADER_BYTES {
        let len = u32::from_le_bytes([bytes[pos], bytes[pos + 1], bytes[pos + 2], bytes[pos + 3]])
            as usize;
        let crc = u32::from_le_bytes([
            bytes[pos + 4],
            bytes[pos + 5],
            bytes[pos + 6],
            bytes[pos + 7],
        ]);
        let start = pos + RECORD_HEADER_BYTES;
        if len > CONTROLLER_ENTRY_BYTES_MAX || bytes.len() - start < len {
            break;
        }
        let body = &bytes[start..start + len];
        if crc32c::crc32c(body) != crc {
            break;
        }
        let Ok(entry) = Entry::parse_from_bytes(body) else {
            break;
        };
        // Records are contiguous; an overwrite only happens after the file was cut, so an
        // index that does not continue the log is damage, and ends it.
        if let Some(last) = entries.last()
            && entry.index != last.index + 1
        {
            break;
        }
        pos = start + len;
        entries.push(entry);
        ends.push(pos as u64);
    }
    (entries, ends, pos as u64)
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or_else(|| {
                format!(
                    "truncated: need {n} bytes at offset {}, file has {}",
                    self.pos,
                    self.bytes.len()
                )
            })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn ids(&mut self) -> Result<Vec<u64>, String> {
        let n = self.u32()? as usize;
        if n > CONTROLLER_VOTERS_MAX {
            return Err(format!("{n} node ids, at most {CONTROLLER_VOTERS_MAX}"));
        }
        (0..n).map(|_| self.u64()).collect()
    }
}

fn push_ids(out: &mut Vec<u8>, ids: &[u64]) {
    out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
    for id in ids {
        out.extend_from_slice(&id.to_le_bytes());
    }
}

/// Checks magic, version and the trailing CRC; returns a reader over the body.
fn checked<'a>(bytes: &'a [u8], magic: &[u8; 4]) -> Result<Reader<'a>, String> {
    if bytes.len() < 4 + 1 + 4 {
        return Err(format!("{} bytes is too short", bytes.len()));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let crc = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32c::crc32c(body) != crc {
        return Err("checksum mismatch".into());
    }
    if &body[..4] != magic {
        return Err("bad magic".into());
    }
    if body[4] != FORMAT_VERSION {
        return Err(format!("unknown format version {}", body[4]));
    }
    Ok(Reader {
        bytes: body,
        pos: 5,
    })
}

fn finish(mut out: Vec<u8>) -> Vec<u8> {
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn encode_raft_state(hs: &HardState, cs: &ConfState) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(RAFT_STATE_MAGIC);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&hs.term.to_le_bytes());
    out.extend_from_slice(&hs.vote.to_le_bytes());
    out.extend_from_slice(&hs.commit.to_le_bytes());
    push_ids(&mut out, &cs.voters);
    push_ids(&mut out, &cs.learners);
    finish(out)
}

fn decode_raft_state(bytes: &[u8]) -> Result<(HardState, ConfState), String> {
    let mut r = checked(bytes, RAFT_STATE_MAGIC)?;
    let hs = HardState {
        term: r.u64()?,
        vote: r.u64()?,
        commit: r.u64()?,
        ..Default::default()
    };
    let cs = ConfState {
        voters: r.ids()?,
        learners: r.ids()?,
        ..Default::default()
    };
    if r.pos != r.bytes.len() {
        return Err("trailing bytes".into());
    }
    Ok((hs, cs))
}

fn encode_snapshot(snap: &Snapshot) -> Vec<u8> {
    let meta = snap.get_metadata();
    let mut out = Vec::with_capacity(64 + snap.data.len());
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&meta.index.to_le_bytes());
    out.extend_from_slice(&meta.term.to_le_bytes());
    push_ids(&mut out, &meta.get_conf_state().voters);
    push_ids(&mut out, &meta.get_conf_state().learners);
    out.extend_from_slice(&(snap.data.len() as u64).to_le_bytes());
    out.extend_from_slice(&snap.data);
    finish(out)
}

fn decode_snapshot(bytes: &[u8]) -> Result<Snapshot, String> {
    let mut r = checked(bytes, SNAPSHOT_MAGIC)?;
    let index = r.u64()?;
    let term = r.u64()?;
    let cs = ConfState {
        voters: r.ids()?,
        learners: r.ids()?,
        ..Default::default()
    };
    let len = r.u64()?;
    if len > CONTROLLER_SNAPSHOT_BYTES_MAX as u64 {
        return Err(format!(
            "snapshot data of {len} bytes, at most {CONTROLLER_SNAPSHOT_BYTES_MAX}"
        ));
    }
    let data = r.take(len as usize)?.to_vec();
    if r.pos != r.bytes.len() {
        return Err("trailing bytes".into());
    }
    let mut snap = Snapshot {
        data: data.into(),
        ..Default::default()
    };
    let meta = snap.mut_metadata();
    meta.index = index;
    meta.term = term;
    meta.set_conf_state(cs);
    Ok(snap)
}
