//! Walking a segment file batch by batch with direct reads: recovery, index rebuilds and
//! fetches from disk all go through here, and every batch read from disk has its CRC checked.

use std::io;

use bytes::Bytes;
use sluice_proto::{BATCH_HEADER_BYTES, BatchHeader, Limits, Offset, RecordBatch};

use crate::aligned::{AlignedBuf, align_down, align_up};
use crate::config::SCAN_READ_BYTES;
use crate::index::{IndexEntry, SegmentIndex};
use crate::io::DirectFile;

/// Where and why a scan stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScanStop {
    /// Reached the end of the file exactly on a batch boundary.
    EndOfFile,
    /// Reached a header of zeros: preallocated space that was never written.
    Zeros,
    /// Reached bytes that are not a valid next batch.
    Invalid {
        /// Byte position of the bad batch in the file.
        position: u64,
        /// What was wrong with it.
        reason: String,
    },
}

/// What a scan learned about the valid prefix of a segment.
#[derive(Debug, Clone)]
pub(crate) struct ScanOutcome {
    /// Position just after the last valid batch.
    pub valid_end: u64,
    /// Offset after the last valid batch.
    pub next_offset: Offset,
    /// Largest batch timestamp seen (`i64::MIN` if none).
    pub max_timestamp: i64,
    /// Max timestamp of the first valid batch scanned, if any.
    pub first_timestamp: Option<i64>,
    /// Valid batches scanned.
    pub batches: u64,
    /// Index rebuilt along the way (entries appended to the one passed in).
    pub index: SegmentIndex,
    /// Why the scan ended.
    pub stop: ScanStop,
}

/// A window of the file held in one aligned buffer.
struct Window {
    start: u64,
    buf: AlignedBuf,
}

impl Window {
    fn covers(&self, pos: u64, len: usize) -> bool {
        pos >= self.start && pos + len as u64 <= self.start + self.buf.len() as u64
    }

    fn slice(&self, pos: u64, len: usize) -> &[u8] {
        let at = (pos - self.start) as usize;
        &self.buf.as_slice()[at..at + len]
    }
}

/// Reads so that `[pos, pos + len)` is in the window; `len` must not pass `file_len`.
async fn ensure(
    file: &DirectFile,
    window: &mut Option<Window>,
    pos: u64,
    len: usize,
    file_len: u64,
) -> io::Result<()> {
    if window.as_ref().is_some_and(|w| w.covers(pos, len)) {
        return Ok(());
    }
    let start = align_down(pos);
    let want = align_up(pos - start + len as u64).max(SCAN_READ_BYTES as u64);
    let want = want.min(align_up(file_len - start)) as usize;
    let buf = file.read_at(start, want).await?;
    let w = Window { start, buf };
    if !w.covers(pos, len) {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "short read of {} at {start}: got {} bytes",
                file.path().display(),
                w.buf.len()
            ),
        ));
    }
    *window = Some(w);
    Ok(())
}

/// Parameters of a scan.
pub(crate) struct ScanFrom<'a> {
    /// Base offset of the segment (for relative offsets in the index).
    pub segment_base: Offset,
    /// Position to start at (a batch boundary).
    pub position: u64,
    /// Offset the batch at `position` must have.
    pub offset: Offset,
    /// Size of the file; nothing beyond it is read.
    pub file_len: u64,
    /// Bytes between index entries; the index passed in is extended.
    pub index_interval_bytes: u32,
    /// Index built so far (empty to rebuild from the start).
    pub index: SegmentIndex,
    /// Largest timestamp of the batches before `position`.
    pub max_timestamp: i64,
    /// Decoding limits.
    pub limits: &'a Limits,
    /// A compacted log: a batch may start past where the previous one ended.
    pub gaps: bool,
}

/// Checks batches from `from.position` on until the file ends or a batch is not valid:
/// header sane, length within the file, CRC matching, base offset continuing the previous
/// batch. Rebuilds the sparse index on the way.
pub(crate) async fn scan_segment(file: &DirectFile, from: ScanFrom<'_>) -> io::Result<ScanOutcome> {
    let mut window = None;
    let mut pos = from.position;
    let mut expected = from.offset;
    let mut index = from.index;
    let mut last_indexed = index.entries.last().map(|e| u64::from(e.position));
    let mut max_timestamp = from.max_timestamp;
    let mut first_timestamp = None;
    let mut batches = 0u64;
    let stop = loop {
        if pos == from.file_len {
            break ScanStop::EndOfFile;
        }
        let remaining = from.file_len - pos;
        let head_len = (BATCH_HEADER_BYTES as u64).min(remaining) as usize;
        ensure(file, &mut window, pos, head_len, from.file_len).await?;
        let head = window.as_ref().expect("window read").slice(pos, head_len);
        if head.iter().all(|&b| b == 0) {
            break ScanStop::Zeros;
        }
        let invalid = |reason: String| ScanStop::Invalid {
            position: pos,
            reason,
        };
        if head_len < BATCH_HEADER_BYTES {
            break invalid(format!("{remaining} bytes left, less than a batch header"));
        }
        let header = match BatchHeader::parse(head, from.limits) {
            Ok(header) => header,
            Err(err) => break invalid(format!("bad batch header: {err}")),
        };
        let len = header.batch_length as usize;
        if len as u64 > remaining {
            break invalid(format!(
                "batch of {len} bytes runs past the end of the file ({remaining} bytes left)"
            ));
        }
        ensure(file, &mut window, pos, len, from.file_len).await?;
        let bytes = window.as_ref().expect("window read").slice(pos, len);
        if let Err(err) = sluice_proto::verify_crc(bytes) {
            break invalid(err.to_string());
        }
        if header.base_offset < expected || (!from.gaps && header.base_offset != expected) {
            break invalid(format!(
                "offset gap: expected base offset {expected}, found {}",
                header.base_offset
            ));
        }
        if last_indexed.is_none_or(|last| pos - last >= u64::from(from.index_interval_bytes)) {
            index.push(IndexEntry {
                relative_offset: (header.base_offset.get() - from.segment_base.get()) as u32,
                position: pos as u32,
                max_timestamp_before: max_timestamp,
            });
            last_indexed = Some(pos);
        }
        first_timestamp.get_or_insert(header.max_timestamp);
        max_timestamp = max_timestamp.max(header.max_timestamp);
        expected = header.next_offset();
        pos += len as u64;
        batches += 1;
    };
    Ok(ScanOutcome {
        valid_end: pos,
        next_offset: expected,
        max_timestamp,
        first_timestamp,
        batches,
        index,
        stop,
    })
}

/// Whether every byte of `[pos, file_len)` is zero.
pub(crate) async fn all_zero_from(file: &DirectFile, pos: u64, file_len: u64) -> io::Result<bool> {
    let mut at = align_down(pos);
    while at < file_len {
        let len = (SCAN_READ_BYTES as u64).min(align_up(file_len - at)) as usize;
        let buf = file.read_at(at, len).await?;
        if buf.is_empty() {
            break;
        }
        let skip = pos.saturating_sub(at) as usize;
        let end = ((file_len - at) as usize).min(buf.len());
        if skip < end && buf.as_slice()[skip..end].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += buf.len() as u64;
    }
    Ok(true)
}

/// Batches read from a segment file, or why the read stopped early.
pub(crate) struct DiskRead {
    /// Whole, CRC-checked batches in offset order.
    pub batches: Vec<RecordBatch>,
    /// Bytes in `batches`.
    pub bytes: usize,
    /// File position of the first batch not returned (where a sequential reader goes on).
    pub next_position: u64,
    /// The bytes read ahead (`ReadFrom::prefetched`) served the first read.
    pub used_prefetched: bool,
}

/// A read request against one segment file.
pub(crate) struct ReadFrom<'a> {
    /// Position of a batch at or before the wanted offset (from the sparse index).
    pub position: u64,
    /// Base offset of the batch at `position` (from the same index entry).
    pub position_offset: Offset,
    /// First offset wanted.
    pub offset: Offset,
    /// Nothing at or past this position is read (the end of written data).
    pub end_position: u64,
    /// Nothing at or past this offset is returned.
    pub end_offset: Offset,
    /// At most this many bytes, except that the first batch is returned whatever its size.
    pub max_bytes: usize,
    /// Decoding limits.
    pub limits: &'a Limits,
    /// A compacted log: a batch may start past where the previous one ended.
    pub gaps: bool,
    /// Bytes of the file read ahead, as `(file position, bytes)`: used instead of the first
    /// read if they start where it does and cover it.
    pub prefetched: Option<(u64, Bytes)>,
}

/// Reads whole batches holding offsets `>= offset` from `position` on, with direct reads into
/// aligned buffers; batches are returned as slices of them (no per-batch copies). A batch
/// that fails its checks is an error naming the file and position: below the end of written
/// data, damage is never a reason to return less.
pub(crate) async fn read_batches(
    file: &DirectFile,
    req: ReadFrom<'_>,
) -> Result<DiskRead, crate::LogError> {
    let mut out = DiskRead {
        batches: Vec::new(),
        bytes: 0,
        next_position: req.position,
        used_prefetched: false,
    };
    let mut prefetched = req.prefetched;
    let max_bytes = req.max_bytes.max(1);
    let mut pos = req.position;
    // Base offset the batch at `pos` must have. The base offset is outside the CRC (the
    // broker stamps it in place), so a damaged one passes the CRC check: without this a
    // flipped bit served a batch under offsets it does not hold (two batches claiming the
    // same offsets, the real ones missing) from a segment whose index was trusted at open.
    let mut expected = req.position_offset;
    // The first read covers the wanted bytes; a batch larger than what was read makes the
    // next read start at it and cover all of it. It covers at least a header: with a tiny
    // `max_bytes` the read could end inside the first header (a batch starting near the end
    // of a block), and that is reported below as a short read, i.e. a corrupt segment.
    let mut want = max_bytes.max(BATCH_HEADER_BYTES);
    'reads: while pos < req.end_position && out.bytes < max_bytes {
        let start = align_down(pos);
        let len = align_up(pos - start + want as u64).min(align_up(req.end_position - start));
        let buf = match prefetched.take() {
            // Only bytes below the end of written data are used: read ahead when less was
            // written, they serve only if no more is wanted now.
            Some((at, bytes))
                if at == start && bytes.len() as u64 >= len.min(req.end_position - start) =>
            {
                out.used_prefetched = true;
                bytes.slice(..bytes.len().min(len as usize))
            }
            _ => file
                .read_at(start, len as usize)
                .await
                .map_err(|e| crate::LogError::io("read", file.path(), e))?
                .freeze(),
        };
        let valid = (buf.len() as u64).min(req.end_position - start) as usize;
        let mut at = (pos - start) as usize;
        let first_at = at;
        loop {
            let corrupt =
                |reason: String| crate::LogError::corrupt(file.path(), start + at as u64, reason);
            if start + at as u64 >= req.end_position || out.bytes >= max_bytes {
                break 'reads;
            }
            let header_end = at + BATCH_HEADER_BYTES;
            if start + header_end as u64 > req.end_position {
                return Err(corrupt("written data ends inside a batch header".into()));
            }
            if header_end > valid {
                if at == first_at {
                    return Err(corrupt(format!("short read: {} of {len} bytes", buf.len())));
                }
                want = BATCH_HEADER_BYTES.max(want);
                continue 'reads;
            }
            let header = BatchHeader::parse(&buf[at..header_end], req.limits)
                .map_err(|e| corrupt(e.to_string()))?;
            if header.base_offset < expected || (!req.gaps && header.base_offset != expected) {
                return Err(corrupt(format!(
                    "offset gap: expected base offset {expected}, found {}",
                    header.base_offset
                )));
            }
            let batch_len = header.batch_length as usize;
            if start + (at + batch_len) as u64 > req.end_position {
                return Err(corrupt(format!(
                    "batch of {batch_len} bytes runs past the end of written data"
                )));
            }
            if at + batch_len > valid {
                if at == first_at && want >= batch_len {
                    return Err(corrupt(format!("short read: {} of {len} bytes", buf.len())));
                }
                want = batch_len;
                continue 'reads;
            }
            if header.base_offset >= req.end_offset {
                break 'reads;
            }
            if header.next_offset() > req.offset {
                if !out.batches.is_empty() && out.bytes + batch_len > max_bytes {
                    break 'reads;
                }
                let bytes: Bytes = buf.slice(at..at + batch_len);
                let batch = RecordBatch::from_bytes(bytes, req.limits)
                    .map_err(|e| corrupt(e.to_string()))?;
                out.bytes += batch_len;
                out.batches.push(batch);
            }
            at += batch_len;
            pos = start + at as u64;
            out.next_position = pos;
            expected = header.next_offset();
        }
    }
    Ok(out)
}
