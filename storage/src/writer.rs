//! The write pipeline of one log, as state without I/O: appended bytes are copied into
//! aligned chunks; full chunks queue for writing; the filling chunk is written as a partial
//! block-padded write when nothing else is pending. The flusher task (in `log.rs`) asks for
//! the next job, performs it, and reports completions back.
//!
//! Positions: every appended byte has a *log position*, counting from zero at open across
//! segments. `written` is the log position below which every byte is on the device
//! (completed writes, contiguous); acknowledgements derive from it and from `synced`.
//!
//! A partial block at the end of a write is written padded with zeros and written again,
//! with more data, by the next write of the same file. Two writes to one block must not be
//! in flight together, so while a padded write is in flight nothing is issued after it.
//!
//! Chunks are mapped only when the shard's [`WriteBudget`] grants them. Without a chunk the
//! pipeline is *parked*: it keeps only the partial last block (the carry, already on disk or
//! in the padded write in flight) and its positions, exactly as a chunk starting with that
//! carry would; the next append takes a chunk and restores the carry. A segment starts
//! parked; the filling chunk is parked when it is written and no chunk is free for the carry
//! (so writing never waits for the budget); and an idle pipeline parks and unmaps its chunks
//! when the budget is under pressure ([`Pipeline::release_idle`]).

use std::collections::VecDeque;
use std::rc::Rc;

use crate::aligned::{AlignedBuf, BLOCK_BYTES, align_down, align_up};
use crate::budget::WriteBudget;
use crate::config::WRITE_DEPTH_MAX;
use crate::segment::SegmentFile;

/// Bytes being gathered for one contiguous region of one segment file.
pub(crate) struct Chunk {
    /// The segment file the chunk belongs to.
    pub file: Rc<SegmentFile>,
    /// File position of `buf[0]` (block aligned).
    pub file_pos: u64,
    /// Log position of `buf[clean_len]`, the first byte not yet written.
    pub log_pos: u64,
    /// Bytes at the start of `buf` already on disk (a carried partial block).
    pub clean_len: usize,
    /// The bytes.
    pub buf: AlignedBuf,
}

impl Chunk {
    fn end_log_pos(&self) -> u64 {
        self.log_pos + (self.buf.len() - self.clean_len) as u64
    }

    fn has_unwritten(&self) -> bool {
        self.buf.len() > self.clean_len
    }
}

/// The filling position of a pipeline that holds no chunk: what a chunk taken for the next
/// append starts with.
struct Parked {
    file: Rc<SegmentFile>,
    /// File position of the carry's first byte (block aligned).
    file_pos: u64,
    /// Log position just past the carry (the next appended byte).
    log_pos: u64,
    /// The partial last block, already on disk or in the padded write in flight (shorter
    /// than a block).
    carry: Vec<u8>,
}

enum Queued {
    Chunk(Chunk),
    /// The segment got its last byte: once its writes are done, close it.
    Seal(Rc<SegmentFile>),
}

/// A write to perform.
pub(crate) struct WriteJob {
    /// Identifies the write in `complete_write`.
    pub id: u64,
    /// Target file.
    pub file: Rc<SegmentFile>,
    /// Block-aligned position.
    pub file_pos: u64,
    /// Block-padded data.
    pub buf: AlignedBuf,
}

/// What the flusher should do next.
pub(crate) enum Job {
    /// Perform this write.
    Write(WriteJob),
    /// Writes are nearing the end of the file's allocated space: allocate up to `to`, in
    /// the background (writes below the allocated end go on meanwhile).
    Allocate {
        /// The file.
        file: Rc<SegmentFile>,
        /// File position the allocation must reach.
        to: u64,
    },
    /// All writes of this segment are complete: make it durable and close it.
    Seal(Rc<SegmentFile>),
}

enum Allocation {
    Ready,
    Blocked,
    Start(Job),
}

struct InFlight {
    id: u64,
    end_log_pos: u64,
    done: bool,
}

/// The write pipeline's state.
pub(crate) struct Pipeline {
    chunk_bytes: usize,
    chunks_max: usize,
    /// Allocation step: the file is extended by this much whenever the writes come within
    /// half of it of the allocated end, so they rarely wait for an fallocate.
    allocate_ahead: u64,
    active: Option<Chunk>,
    /// Set instead of `active` while the pipeline holds no filling chunk.
    parked: Option<Parked>,
    queue: VecDeque<Queued>,
    in_flight: VecDeque<InFlight>,
    /// A padded partial write is in flight; the next write of its file rewrites that block.
    padded_in_flight: Option<u64>,
    next_id: u64,
    pool: Vec<AlignedBuf>,
    /// Chunks mapped (filling, queued, in flight, pooled), each taken from `budget`.
    allocated: usize,
    budget: WriteBudget,
    appended: u64,
    written: u64,
    /// The disk ran out of space at the last allocation: allocate only what queued data
    /// needs, not ahead, until an allocation succeeds again.
    space_short: bool,
}

impl Pipeline {
    pub(crate) fn new(
        chunk_bytes: usize,
        chunks_max: usize,
        allocate_ahead: u64,
        budget: WriteBudget,
    ) -> Self {
        Self {
            chunk_bytes,
            chunks_max,
            allocate_ahead,
            active: None,
            parked: None,
            queue: VecDeque::new(),
            in_flight: VecDeque::new(),
            padded_in_flight: None,
            next_id: 0,
            pool: Vec::new(),
            allocated: 0,
            budget,
            appended: 0,
            written: 0,
            space_short: false,
        }
    }

    /// Allocates only what buffered data needs (`true`, after ENOSPC) or ahead (`false`).
    pub(crate) fn set_space_short(&mut self, short: bool) {
        self.space_short = short;
    }

    /// The file and file position just past the last byte buffered for the active segment.
    pub(crate) fn active_end(&self) -> Option<(&Rc<SegmentFile>, u64)> {
        match (&self.active, &self.parked) {
            (Some(c), _) => Some((&c.file, c.file_pos + c.buf.len() as u64)),
            (None, Some(p)) => Some((&p.file, p.file_pos + p.carry.len() as u64)),
            (None, None) => None,
        }
    }

    /// Log position after the last appended byte.
    pub(crate) fn appended(&self) -> u64 {
        self.appended
    }

    /// Log position below which every byte has been written.
    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    /// Nothing appended is left to write.
    pub(crate) fn is_idle(&self) -> bool {
        self.written == self.appended && self.in_flight.is_empty() && self.queue.is_empty()
    }

    /// A chunk from the pool, or a newly mapped one if the log's `chunks_max` and the
    /// shard's budget allow.
    fn take_buffer(&mut self) -> Option<AlignedBuf> {
        if let Some(mut buf) = self.pool.pop() {
            buf.clear();
            return Some(buf);
        }
        if self.allocated < self.chunks_max
            && let Some(buf) = self.budget.take_chunk(self.chunk_bytes)
        {
            self.allocated += 1;
            return Some(buf);
        }
        None
    }

    /// Gives chunks back to the budget's free list.
    fn put_back(&mut self, chunks: Vec<AlignedBuf>) {
        debug_assert!(chunks.len() <= self.allocated);
        self.allocated -= chunks.len();
        self.budget.put_back(chunks);
    }

    /// Gives back `n` chunks already dropped (unmapped).
    fn unmapped(&mut self, n: usize) {
        debug_assert!(n <= self.allocated);
        self.allocated -= n;
        self.budget.give_back(n * self.chunk_bytes);
    }

    /// Whether `len` more bytes can be buffered now. Strictly more room than `len` is
    /// required: a chunk filled exactly is queued and a fresh one taken at once, so one more
    /// buffer must be free. Conservative: a chunk that starts with a carried partial block
    /// loses up to one block of room.
    pub(crate) fn has_room(&self, len: usize) -> bool {
        self.room(self.spare_buffers()) > len
    }

    /// Whether an append of `len` bytes has no room only because the shard's budget is spent
    /// (the log's own `chunks_max` would allow it): it must wait for other logs to give
    /// chunks back, not only for this log's writes.
    pub(crate) fn waits_for_budget(&self, len: usize) -> bool {
        !self.has_room(len) && self.room(self.pool.len() + (self.chunks_max - self.allocated)) > len
    }

    fn room(&self, spare_buffers: usize) -> usize {
        let active = self.active.as_ref().map_or(0, |c| c.buf.remaining());
        active + spare_buffers * (self.chunk_bytes - BLOCK_BYTES)
    }

    fn spare_buffers(&self) -> usize {
        let mappable =
            (self.chunks_max - self.allocated).min(self.budget.available() / self.chunk_bytes);
        self.pool.len() + mappable
    }

    /// Starts the segment `file` at file position `file_pos` whose partial last block
    /// `carry` (already on disk) will be rewritten by the first write. No chunk is needed
    /// yet: the pipeline starts parked.
    pub(crate) fn start_segment(&mut self, file: Rc<SegmentFile>, file_pos: u64, carry: &[u8]) {
        debug_assert!(self.active.is_none() && self.parked.is_none());
        debug_assert_eq!(file_pos % BLOCK_BYTES as u64, 0);
        debug_assert!(carry.len() < BLOCK_BYTES);
        self.parked = Some(Parked {
            file,
            file_pos,
            log_pos: self.appended,
            carry: carry.to_vec(),
        });
    }

    /// After a truncation (the pipeline is idle): drops the filling chunk and starts again at
    /// file position `file_pos` of `file`, whose partial block `carry` is on disk.
    pub(crate) fn restart_segment(&mut self, file: Rc<SegmentFile>, file_pos: u64, carry: &[u8]) {
        debug_assert!(self.is_idle());
        if let Some(chunk) = self.active.take() {
            self.pool.push(chunk.buf);
        }
        self.parked = None;
        self.start_segment(file, file_pos, carry);
    }

    /// Takes a chunk for a parked pipeline and puts the carry back at its start. The caller
    /// checked [`Pipeline::has_room`], which counts a free chunk whenever none is filling.
    fn unpark(&mut self) {
        let Some(parked) = self.parked.take() else {
            return;
        };
        let mut buf = self.take_buffer().expect("room was checked");
        buf.extend_from_slice(&parked.carry);
        debug_assert_eq!(parked.log_pos, self.appended);
        self.active = Some(Chunk {
            file: parked.file,
            file_pos: parked.file_pos,
            log_pos: parked.log_pos,
            clean_len: parked.carry.len(),
            buf,
        });
    }

    /// Idle, with the budget under pressure: gives the pooled chunks back and parks the
    /// filling chunk (it holds only its carried partial block, already on disk). Returns the
    /// chunks given back.
    pub(crate) fn release_idle(&mut self) -> usize {
        if !self.budget.under_pressure() {
            return 0;
        }
        self.release()
    }

    /// [`Pipeline::release_idle`] whatever the budget's state (if idle).
    fn release(&mut self) -> usize {
        if !self.is_idle() || self.padded_in_flight.is_some() {
            return 0;
        }
        let mut released = std::mem::take(&mut self.pool);
        if let Some(chunk) = self.active.take_if(|c| !c.has_unwritten()) {
            debug_assert!(chunk.clean_len < BLOCK_BYTES);
            debug_assert_eq!(chunk.log_pos, self.appended);
            self.parked = Some(Parked {
                file: chunk.file,
                file_pos: chunk.file_pos,
                log_pos: chunk.log_pos,
                carry: chunk.buf.as_slice()[..chunk.clean_len].to_vec(),
            });
            released.push(chunk.buf);
        }
        let n = released.len();
        self.put_back(released);
        n
    }

    /// Copies `bytes` into the buffers. The caller checked [`Pipeline::has_room`].
    pub(crate) fn append(&mut self, file: &Rc<SegmentFile>, bytes: &[u8]) {
        self.unpark();
        let mut rest = bytes;
        while !rest.is_empty() {
            let chunk = match self.active.as_mut() {
                Some(chunk) => chunk,
                None => unreachable!("a segment is started before appends"),
            };
            debug_assert!(Rc::ptr_eq(&chunk.file, file));
            let n = rest.len().min(chunk.buf.remaining());
            chunk.buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            self.appended += n as u64;
            if chunk.buf.remaining() == 0 {
                let full = self.active.take().expect("active chunk");
                let file_pos = full.file_pos + full.buf.len() as u64;
                let log_pos = full.end_log_pos();
                self.queue.push_back(Queued::Chunk(full));
                let buf = self.take_buffer().expect("room was checked");
                self.active = Some(Chunk {
                    file: file.clone(),
                    file_pos,
                    log_pos,
                    clean_len: 0,
                    buf,
                });
            }
        }
    }

    /// Ends the current segment: what is buffered for it is queued, then its seal.
    pub(crate) fn seal_segment(&mut self) {
        if let Some(parked) = self.parked.take() {
            // Its carry is on disk (or in the padded write in flight, queued before the seal).
            self.queue.push_back(Queued::Seal(parked.file));
        } else if let Some(chunk) = self.active.take() {
            let file = chunk.file.clone();
            if chunk.has_unwritten() {
                self.queue.push_back(Queued::Chunk(chunk));
            } else {
                self.pool.push(chunk.buf);
            }
            self.queue.push_back(Queued::Seal(file));
        }
    }

    fn write_job(&mut self, mut chunk: Chunk) -> Job {
        let id = self.next_id;
        self.next_id += 1;
        let end_log_pos = chunk.end_log_pos();
        chunk.buf.zero_pad_to_block();
        self.in_flight.push_back(InFlight {
            id,
            end_log_pos,
            done: false,
        });
        Job::Write(WriteJob {
            id,
            file: chunk.file,
            file_pos: chunk.file_pos,
            buf: chunk.buf,
        })
    }

    fn allocation(&self, chunk: &Chunk) -> Allocation {
        let end = chunk.file_pos + align_up(chunk.buf.len() as u64);
        let file = &chunk.file;
        // After ENOSPC, only data that must be written asks for space (no allocation ahead),
        // so a full disk does not keep the flusher retrying.
        let wanted = end > file.allocated()
            || (!self.space_short && end + self.allocate_ahead / 2 > file.allocated());
        if !file.allocating() && wanted {
            let ahead = if self.space_short {
                0
            } else {
                self.allocate_ahead
            };
            file.set_allocating(true);
            return Allocation::Start(Job::Allocate {
                file: file.clone(),
                to: align_up(end.max(file.allocated()) + ahead),
            });
        }
        if end > file.allocated() {
            Allocation::Blocked
        } else {
            Allocation::Ready
        }
    }

    /// The next job, if one may start now.
    pub(crate) fn next_job(&mut self) -> Option<Job> {
        if self.padded_in_flight.is_some() {
            return None;
        }
        match self.queue.front() {
            Some(Queued::Chunk(chunk)) => {
                if self.in_flight.len() >= WRITE_DEPTH_MAX {
                    return None;
                }
                match self.allocation(chunk) {
                    Allocation::Ready => {}
                    Allocation::Blocked => return None,
                    Allocation::Start(job) => return Some(job),
                }
                let Some(Queued::Chunk(chunk)) = self.queue.pop_front() else {
                    unreachable!()
                };
                // A sealed segment's last chunk may end mid-block: nothing follows it in
                // this file, so it needs no ordering against later writes.
                Some(self.write_job(chunk))
            }
            Some(Queued::Seal(file)) => {
                // The seal truncates the file: no write nor fallocate may be in flight.
                if !self.in_flight.is_empty() || file.allocating() {
                    return None;
                }
                let Some(Queued::Seal(file)) = self.queue.pop_front() else {
                    unreachable!()
                };
                Some(Job::Seal(file))
            }
            None => {
                // Write the filling chunk only when nothing else is pending: meanwhile more
                // appends gather in it (that is the group in group commit).
                let chunk = self.active.as_ref()?;
                if !chunk.has_unwritten() || !self.in_flight.is_empty() {
                    return None;
                }
                match self.allocation(chunk) {
                    Allocation::Ready => {}
                    Allocation::Blocked => return None,
                    Allocation::Start(job) => return Some(job),
                }
                // A chunk for the carry, unless the budget is short: then park (the write
                // must not wait for the budget, or logs holding each one filling chunk
                // could wait for each other forever).
                let carry_buf = match self.pool.pop() {
                    Some(mut buf) => {
                        buf.clear();
                        Some(buf)
                    }
                    None if !self.budget.under_pressure() => self.take_buffer(),
                    None => None,
                };
                let chunk = self.active.take().expect("active chunk");
                let full = align_down(chunk.buf.len() as u64) as usize;
                let carry = &chunk.buf.as_slice()[full..];
                let padded = full < chunk.buf.len();
                let file_pos = chunk.file_pos + full as u64;
                match carry_buf {
                    Some(mut buf) => {
                        buf.extend_from_slice(carry);
                        self.active = Some(Chunk {
                            file: chunk.file.clone(),
                            file_pos,
                            log_pos: chunk.end_log_pos(),
                            clean_len: buf.len(),
                            buf,
                        });
                    }
                    None => {
                        self.parked = Some(Parked {
                            file: chunk.file.clone(),
                            file_pos,
                            log_pos: chunk.end_log_pos(),
                            carry: carry.to_vec(),
                        });
                    }
                }
                let job = self.write_job(chunk);
                if padded && let Job::Write(w) = &job {
                    self.padded_in_flight = Some(w.id);
                }
                Some(job)
            }
        }
    }

    /// A write finished successfully; its buffer comes back. Returns the new `written`.
    pub(crate) fn complete_write(&mut self, id: u64, buf: AlignedBuf) -> u64 {
        self.pool.push(buf);
        if self.padded_in_flight == Some(id) {
            self.padded_in_flight = None;
        }
        let entry = self
            .in_flight
            .iter_mut()
            .find(|w| w.id == id)
            .expect("completed write was in flight");
        entry.done = true;
        while let Some(front) = self.in_flight.front() {
            if !front.done {
                break;
            }
            self.written = front.end_log_pos;
            self.in_flight.pop_front();
        }
        self.written
    }

    /// A write failed: the log stops. The buffer is freed. The write stays in `in_flight`,
    /// never done: `written` must not move past the bytes it failed to write. (Removing it
    /// let later writes that were already in flight complete and advance `written` over the
    /// hole, acknowledging, under `FlushPolicy::Interval`, batches that are not on disk.)
    pub(crate) fn abandon_write(&mut self, id: u64) {
        debug_assert!(self.in_flight.iter().any(|w| w.id == id && !w.done));
        self.unmapped(1);
        if self.padded_in_flight == Some(id) {
            self.padded_in_flight = None;
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        // The log is gone: its chunks go back to the shard's free list (writes in flight
        // hold none by then: the flusher exits only once they completed; any other chunk
        // counted is one a failed write dropped).
        let mut chunks = std::mem::take(&mut self.pool);
        if let Some(chunk) = self.active.take() {
            chunks.push(chunk.buf);
        }
        for queued in self.queue.drain(..) {
            if let Queued::Chunk(chunk) = queued {
                chunks.push(chunk.buf);
            }
        }
        let kept = chunks.len().min(self.allocated);
        chunks.truncate(kept);
        self.put_back(chunks);
        self.budget.give_back(self.allocated * self.chunk_bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::DirectFile;
    use rand::{Rng, SeedableRng, rngs::StdRng};
    use sluice_proto::Offset;

    /// Drives the pipeline against an in-memory disk with writes completing in random order,
    /// and checks that no two writes in flight touch the same block and that the disk ends up
    /// holding exactly the appended bytes.
    ///
    /// With `budget_chunks`, the chunks come from a budget of that many chunks (less than
    /// `chunks_max`, so the filling chunk is parked when no chunk is left for its carry) and
    /// the idle pipeline gives its chunks back at random: the carry must survive every park.
    fn simulate(
        seed: u64,
        chunk_bytes: usize,
        chunks_max: usize,
        max_append: usize,
        budget_chunks: Option<usize>,
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        compio::runtime::Runtime::new()
            .expect("runtime")
            .block_on(async {
                let direct = DirectFile::open(&dir.path().join("seg"), true, 0, None)
                    .await
                    .expect("open");
                let file = Rc::new(SegmentFile::new(direct, Offset::ZERO, 64 * 1024));
                let mut rng = StdRng::seed_from_u64(seed);
                let budget = match budget_chunks {
                    Some(n) => WriteBudget::new(n * chunk_bytes),
                    None => WriteBudget::new(2 * chunks_max * chunk_bytes),
                };
                let mut p = Pipeline::new(chunk_bytes, chunks_max, 64 * 1024, budget.clone());
                p.start_segment(file.clone(), 0, &[]);
                let mut disk = vec![0u8; 0];
                let mut expected = Vec::new();
                let mut in_flight: Vec<WriteJob> = Vec::new();
                let mut allocating: Option<u64> = None;
                for step in 0..3000 {
                    assert!(budget.resident_bytes() <= budget.limit_bytes());
                    assert_eq!(budget.mapped_bytes(), p.allocated * chunk_bytes);
                    match rng.random_range(0..5) {
                        0 | 1 if step < 2500 => {
                            let len = rng.random_range(1..=max_append);
                            if p.has_room(len) {
                                let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                                p.append(&file, &bytes);
                                expected.extend_from_slice(&bytes);
                            }
                        }
                        2 if !in_flight.is_empty() => {
                            let job = in_flight.swap_remove(rng.random_range(0..in_flight.len()));
                            let end = job.file_pos as usize + job.buf.len();
                            if disk.len() < end {
                                disk.resize(end, 0);
                            }
                            disk[job.file_pos as usize..end].copy_from_slice(job.buf.as_slice());
                            p.complete_write(job.id, job.buf);
                        }
                        3 if allocating.is_some() => {
                            file.set_allocated(allocating.take().expect("some"));
                            file.set_allocating(false);
                        }
                        4 if budget_chunks.is_some() => {
                            if p.is_idle() {
                                p.release();
                                assert!(p.pool.is_empty());
                                assert!(p.active.as_ref().is_none_or(|c| c.has_unwritten()));
                            } else {
                                assert_eq!(p.release(), 0, "released while not idle");
                            }
                        }
                        _ => {}
                    }
                    while let Some(job) = p.next_job() {
                        match job {
                            Job::Write(w) => {
                                let (start, end) = (w.file_pos, w.file_pos + w.buf.len() as u64);
                                assert!(end <= file.allocated(), "write past the allocated end");
                                for other in &in_flight {
                                    let (s, e) =
                                        (other.file_pos, other.file_pos + other.buf.len() as u64);
                                    assert!(end <= s || start >= e, "overlapping writes in flight");
                                }
                                in_flight.push(w);
                            }
                            Job::Allocate { to, .. } => allocating = Some(to),
                            Job::Seal(_) => unreachable!("no roll in this simulation"),
                        }
                    }
                }
                // Drain.
                loop {
                    if let Some(to) = allocating.take() {
                        file.set_allocated(to);
                        file.set_allocating(false);
                    }
                    if let Some(job) = in_flight.pop() {
                        let end = job.file_pos as usize + job.buf.len();
                        if disk.len() < end {
                            disk.resize(end, 0);
                        }
                        disk[job.file_pos as usize..end].copy_from_slice(job.buf.as_slice());
                        p.complete_write(job.id, job.buf);
                    }
                    while let Some(job) = p.next_job() {
                        match job {
                            Job::Write(w) => in_flight.push(w),
                            Job::Allocate { to, .. } => allocating = Some(to),
                            Job::Seal(_) => unreachable!(),
                        }
                    }
                    if in_flight.is_empty() && allocating.is_none() && p.is_idle() {
                        break;
                    }
                }
                assert_eq!(p.written(), expected.len() as u64);
                if budget_chunks.is_some() {
                    p.release();
                    assert_eq!(budget.mapped_bytes(), 0, "an idle pipeline holds no chunk");
                }
                assert!(disk.len() >= expected.len());
                assert!(
                    disk[..expected.len()] == expected[..],
                    "seed {seed}: disk differs"
                );
            });
    }

    #[test]
    fn pipeline_writes_exactly_the_appended_bytes() {
        for seed in 0..20 {
            simulate(seed, 16 * 1024, 4, 20_000, None);
            simulate(seed, 4096, 2, 3000, None);
            simulate(seed, 64 * 1024, 8, 200_000, None);
        }
    }

    #[test]
    fn pipeline_parks_and_restores_the_carry_under_a_budget() {
        for seed in 0..8 {
            simulate(seed, 16 * 1024, 4, 20_000, Some(2));
            simulate(seed, 16 * 1024, 8, 9_000, Some(3));
            simulate(seed, 8192, 4, 3000, Some(2));
        }
    }
}
