//! The sparse offset index and time index of one segment, in memory and on disk.
//!
//! Every `index_interval_bytes` of log data the segment records one entry: the batch's
//! offset relative to the segment base, its byte position, and the largest timestamp of all
//! batches *before* it in the segment. Offsets and positions form the offset index
//! (`.index`), timestamps and offsets the time index (`.timeindex`).
//!
//! Index files are written when a segment is closed (rolled, or at a clean shutdown) and
//! describe the segment exactly: its logical size, next offset and largest timestamp. At open
//! an index is trusted only if its checksum holds and the segment file has exactly the size it
//! records; otherwise the segment is scanned and the index rebuilt. Both files share one
//! layout (little-endian):
//!
//! ```text
//! magic [u8; 4] ("SLIX" or "SLTI") | version u8 | reserved [u8; 3]
//! base_offset u64 | segment_bytes u64 | next_offset u64 | max_timestamp i64 | entries u32
//! entries: SLIX (relative_offset u32, position u32) / SLTI (timestamp i64, relative_offset u32)
//! crc32c u32 over everything before it
//! ```

use std::path::Path;

use sluice_proto::Offset;

const OFFSET_MAGIC: [u8; 4] = *b"SLIX";
const TIME_MAGIC: [u8; 4] = *b"SLTI";
const INDEX_VERSION: u8 = 1;
const HEADER_BYTES: usize = 4 + 1 + 3 + 8 + 8 + 8 + 8 + 4;
const OFFSET_ENTRY_BYTES: usize = 8;
const TIME_ENTRY_BYTES: usize = 12;
const CRC_BYTES: usize = 4;
/// Entries one segment's index may hold: one per index interval of a largest segment with
/// the smallest interval would be far more; this bounds what a damaged file can make us
/// allocate.
pub(crate) const INDEX_ENTRIES_MAX: usize = 1 << 22;

/// One sampled batch of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    /// Batch base offset minus segment base offset.
    pub relative_offset: u32,
    /// Byte position of the batch in the segment file.
    pub position: u32,
    /// Largest timestamp of the batches before this one in the segment (`i64::MIN` if none).
    pub max_timestamp_before: i64,
}

/// What a segment's index knows about it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SegmentIndex {
    /// Sampled entries, increasing in offset and position.
    pub entries: Vec<IndexEntry>,
}

impl SegmentIndex {
    /// The entry with the largest offset <= `relative_offset`.
    pub(crate) fn floor_offset(&self, relative_offset: u32) -> Option<IndexEntry> {
        let idx = self
            .entries
            .partition_point(|e| e.relative_offset <= relative_offset);
        idx.checked_sub(1).map(|i| self.entries[i])
    }

    /// The last entry before which every batch has a timestamp below `timestamp`: scanning
    /// from it finds the first record at or after `timestamp`.
    pub(crate) fn floor_timestamp(&self, timestamp: i64) -> Option<IndexEntry> {
        let idx = self
            .entries
            .partition_point(|e| e.max_timestamp_before < timestamp);
        idx.checked_sub(1).map(|i| self.entries[i])
    }

    /// Adds an entry; entries must arrive in increasing order.
    pub(crate) fn push(&mut self, entry: IndexEntry) {
        debug_assert!(
            self.entries
                .last()
                .is_none_or(|last| last.relative_offset < entry.relative_offset
                    && last.position < entry.position)
        );
        self.entries.push(entry);
    }
}

/// Facts about a closed segment stored beside its index entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentSummary {
    /// Base offset (also in the file name).
    pub base_offset: Offset,
    /// Logical size of the segment file in bytes.
    pub segment_bytes: u64,
    /// Offset after the segment's last record.
    pub next_offset: Offset,
    /// Largest timestamp in the segment (`i64::MIN` if unknown).
    pub max_timestamp: i64,
}

fn header(magic: [u8; 4], summary: &SegmentSummary, entries: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES);
    out.extend_from_slice(&magic);
    out.push(INDEX_VERSION);
    out.extend_from_slice(&[0; 3]);
    out.extend_from_slice(&summary.base_offset.get().to_le_bytes());
    out.extend_from_slice(&summary.segment_bytes.to_le_bytes());
    out.extend_from_slice(&summary.next_offset.get().to_le_bytes());
    out.extend_from_slice(&summary.max_timestamp.to_le_bytes());
    out.extend_from_slice(&(entries as u32).to_le_bytes());
    out
}

fn seal(mut out: Vec<u8>) -> Vec<u8> {
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Encodes the `.index` file.
pub(crate) fn encode_offset_index(summary: &SegmentSummary, index: &SegmentIndex) -> Vec<u8> {
    let mut out = header(OFFSET_MAGIC, summary, index.entries.len());
    for e in &index.entries {
        out.extend_from_slice(&e.relative_offset.to_le_bytes());
        out.extend_from_slice(&e.position.to_le_bytes());
    }
    seal(out)
}

/// Encodes the `.timeindex` file.
pub(crate) fn encode_time_index(summary: &SegmentSummary, index: &SegmentIndex) -> Vec<u8> {
    let mut out = header(TIME_MAGIC, summary, index.entries.len());
    for e in &index.entries {
        out.extend_from_slice(&e.max_timestamp_before.to_le_bytes());
        out.extend_from_slice(&e.relative_offset.to_le_bytes());
    }
    seal(out)
}

/// Why an index file was not usable (it is then rebuilt from the segment).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum IndexDecodeError {
    /// Shorter than its header or its declared entries.
    #[error("index file truncated: {have} bytes, need {need}")]
    Truncated {
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// Not an index file of this kind or version.
    #[error("bad magic or version")]
    BadMagic,
    /// The checksum does not match.
    #[error("checksum mismatch")]
    Crc,
    /// Entries out of order or beyond the segment.
    #[error("inconsistent entries: {0}")]
    Inconsistent(&'static str),
}

struct Decoded<'a> {
    summary: SegmentSummary,
    entries: &'a [u8],
    count: usize,
}

fn decode_common<'a>(
    bytes: &'a [u8],
    magic: [u8; 4],
    entry_bytes: usize,
) -> Result<Decoded<'a>, IndexDecodeError> {
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    if bytes.len() < HEADER_BYTES + CRC_BYTES {
        return Err(IndexDecodeError::Truncated {
            need: HEADER_BYTES + CRC_BYTES,
            have: bytes.len(),
        });
    }
    if bytes[..4] != magic || bytes[4] != INDEX_VERSION {
        return Err(IndexDecodeError::BadMagic);
    }
    let count = u32::from_le_bytes(bytes[40..44].try_into().expect("4 bytes")) as usize;
    if count > INDEX_ENTRIES_MAX {
        return Err(IndexDecodeError::Inconsistent("too many entries"));
    }
    let need = HEADER_BYTES + count * entry_bytes + CRC_BYTES;
    if bytes.len() != need {
        return Err(IndexDecodeError::Truncated {
            need,
            have: bytes.len(),
        });
    }
    let body = &bytes[..need - CRC_BYTES];
    let stored = u32::from_le_bytes(bytes[need - CRC_BYTES..].try_into().expect("4 bytes"));
    if crc32c::crc32c(body) != stored {
        return Err(IndexDecodeError::Crc);
    }
    let summary = SegmentSummary {
        base_offset: Offset(u64_at(8)),
        segment_bytes: u64_at(16),
        next_offset: Offset(u64_at(24)),
        max_timestamp: u64_at(32) as i64,
    };
    if summary.next_offset < summary.base_offset {
        return Err(IndexDecodeError::Inconsistent(
            "next offset below base offset",
        ));
    }
    Ok(Decoded {
        summary,
        entries: &body[HEADER_BYTES..],
        count,
    })
}

/// Decodes an `.index` and a `.timeindex` file of the same segment into one index.
pub(crate) fn decode_index(
    offset_file: &[u8],
    time_file: &[u8],
) -> Result<(SegmentSummary, SegmentIndex), IndexDecodeError> {
    let offsets = decode_common(offset_file, OFFSET_MAGIC, OFFSET_ENTRY_BYTES)?;
    let times = decode_common(time_file, TIME_MAGIC, TIME_ENTRY_BYTES)?;
    if offsets.summary != times.summary || offsets.count != times.count {
        return Err(IndexDecodeError::Inconsistent(
            "offset and time index disagree",
        ));
    }
    let summary = offsets.summary;
    let mut index = SegmentIndex {
        entries: Vec::with_capacity(offsets.count),
    };
    let span = summary.next_offset.get() - summary.base_offset.get();
    for i in 0..offsets.count {
        let o = &offsets.entries[i * OFFSET_ENTRY_BYTES..][..OFFSET_ENTRY_BYTES];
        let t = &times.entries[i * TIME_ENTRY_BYTES..][..TIME_ENTRY_BYTES];
        let relative_offset = u32::from_le_bytes(o[..4].try_into().expect("4 bytes"));
        let position = u32::from_le_bytes(o[4..].try_into().expect("4 bytes"));
        let max_timestamp_before = i64::from_le_bytes(t[..8].try_into().expect("8 bytes"));
        if u32::from_le_bytes(t[8..].try_into().expect("4 bytes")) != relative_offset {
            return Err(IndexDecodeError::Inconsistent(
                "offset and time index disagree",
            ));
        }
        if u64::from(relative_offset) >= span.max(1) || u64::from(position) >= summary.segment_bytes
        {
            return Err(IndexDecodeError::Inconsistent("entry beyond the segment"));
        }
        if let Some(last) = index.entries.last()
            && (last.relative_offset >= relative_offset || last.position >= position)
        {
            return Err(IndexDecodeError::Inconsistent("entries out of order"));
        }
        index.entries.push(IndexEntry {
            relative_offset,
            position,
            max_timestamp_before,
        });
    }
    Ok((summary, index))
}

/// File names of a segment: `{base_offset:020}.log`, `.index`, `.timeindex`.
pub(crate) fn segment_file_names(base: Offset) -> (String, String, String) {
    let stem = format!("{:020}", base.get());
    (
        format!("{stem}.log"),
        format!("{stem}.index"),
        format!("{stem}.timeindex"),
    )
}

/// Parses the base offset out of a segment file name, if it is one.
pub(crate) fn parse_segment_name(path: &Path) -> Option<Offset> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(".log")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok().map(Offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (SegmentSummary, SegmentIndex) {
        let summary = SegmentSummary {
            base_offset: Offset(100),
            segment_bytes: 100_000,
            next_offset: Offset(200),
            max_timestamp: 5_000,
        };
        let index = SegmentIndex {
            entries: vec![
                IndexEntry {
                    relative_offset: 0,
                    position: 0,
                    max_timestamp_before: i64::MIN,
                },
                IndexEntry {
                    relative_offset: 40,
                    position: 40_000,
                    max_timestamp_before: 2_000,
                },
            ],
        };
        (summary, index)
    }

    #[test]
    fn roundtrip() {
        let (summary, index) = sample();
        let o = encode_offset_index(&summary, &index);
        let t = encode_time_index(&summary, &index);
        assert_eq!(decode_index(&o, &t), Ok((summary, index)));
    }

    #[test]
    fn any_flipped_bit_is_detected() {
        let (summary, index) = sample();
        let o = encode_offset_index(&summary, &index);
        let t = encode_time_index(&summary, &index);
        for bit in 0..o.len() * 8 {
            let mut bad = o.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_index(&bad, &t).is_err(), "bit {bit} not detected");
        }
        for len in 0..o.len() {
            assert!(decode_index(&o[..len], &t).is_err());
        }
    }

    #[test]
    fn lookups() {
        let (_, index) = sample();
        assert_eq!(index.floor_offset(39).map(|e| e.position), Some(0));
        assert_eq!(index.floor_offset(40).map(|e| e.position), Some(40_000));
        assert_eq!(index.floor_timestamp(1_000).map(|e| e.position), Some(0));
        assert_eq!(
            index.floor_timestamp(2_001).map(|e| e.position),
            Some(40_000)
        );
    }

    #[test]
    fn names() {
        let (log, index, time) = segment_file_names(Offset(42));
        assert_eq!(log, "00000000000000000042.log");
        assert_eq!(index, "00000000000000000042.index");
        assert_eq!(time, "00000000000000000042.timeindex");
        assert_eq!(parse_segment_name(Path::new(&log)), Some(Offset(42)));
        assert_eq!(parse_segment_name(Path::new("42.log")), None);
    }
}
