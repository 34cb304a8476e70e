//! The write-buffer budget of one shard: how many bytes of write-buffer chunks the logs of
//! the shard may have mapped at once. Each log's pipeline (`writer.rs`) takes a chunk only
//! when the budget grants it, and gives chunks back when it goes idle while the budget is
//! under pressure (its pooled chunks, and the active chunk "parked": only its partial last
//! block is kept). Chunks given back stay mapped in the budget's free list, counted against
//! the limit, and are handed to the next log that needs one: a shard with many partitions
//! reuses the same resident pages instead of mapping, faulting in and unmapping a chunk per
//! batch. An append that finds no room because the budget is spent waits on it and is
//! woken when a log gives chunks back.
//!
//! Single-threaded: a budget belongs to one shard (`Rc`), like the logs that share it.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::rc::Rc;
use std::task::Waker;

use crate::aligned::{AlignedBuf, BLOCK_BYTES};
use crate::config::LogConfig;
use crate::error::{LogError, LogResult};

/// Default write-buffer bytes of one shard (`write_buffer_bytes_per_shard`): 256 chunks of
/// 1 MiB. Idle logs may keep up to half of it; the other half serves busy logs.
pub const WRITE_BUFFER_BYTES_PER_SHARD_DEFAULT: usize = 256 << 20;

struct State {
    limit_bytes: usize,
    /// Bytes of chunks the logs hold.
    mapped_bytes: usize,
    /// Chunks given back, still mapped (resident), for the next log that needs one.
    free: Vec<AlignedBuf>,
    /// Bytes of `free`.
    free_bytes: usize,
    /// Most bytes mapped at once (held and free).
    peak_bytes: usize,
    /// Appends waiting for chunks, oldest first. Each waiting append registers at most once
    /// per wake-up of its log; all are woken (in order) when chunks come back.
    waiters: VecDeque<Waker>,
}

/// A shard's budget of mapped write-buffer bytes, shared (cheap clones) by its logs.
#[derive(Clone)]
pub struct WriteBudget {
    state: Rc<RefCell<State>>,
}

impl fmt::Debug for WriteBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.state.borrow();
        f.debug_struct("WriteBudget")
            .field("limit_bytes", &st.limit_bytes)
            .field("mapped_bytes", &st.mapped_bytes)
            .finish()
    }
}

impl WriteBudget {
    /// A budget of `limit_bytes` (`write_buffer_bytes_per_shard`).
    pub fn new(limit_bytes: usize) -> Self {
        Self {
            state: Rc::new(RefCell::new(State {
                limit_bytes,
                mapped_bytes: 0,
                free: Vec::new(),
                free_bytes: 0,
                peak_bytes: 0,
                waiters: VecDeque::new(),
            })),
        }
    }

    /// A budget for one log alone, large enough that it never constrains the log nor makes
    /// it give chunks back (what a log opened without a shard budget gets).
    pub fn unshared(config: &LogConfig) -> Self {
        Self::new(2 * config.write_chunks_max * config.write_chunk_bytes)
    }

    /// The limit.
    pub fn limit_bytes(&self) -> usize {
        self.state.borrow().limit_bytes
    }

    /// Bytes of chunks held now by the logs sharing the budget.
    pub fn mapped_bytes(&self) -> usize {
        self.state.borrow().mapped_bytes
    }

    /// Bytes of chunks mapped now: held by the logs plus the free list. Never above the
    /// limit; this is the write buffers' share of the shard's memory.
    pub fn resident_bytes(&self) -> usize {
        let st = self.state.borrow();
        st.mapped_bytes + st.free_bytes
    }

    /// Most bytes mapped at once (held and free) since the budget was made.
    pub fn peak_bytes(&self) -> usize {
        self.state.borrow().peak_bytes
    }

    /// Appends waiting for the budget now.
    pub fn waiting(&self) -> usize {
        self.state.borrow().waiters.len()
    }

    /// Checks that a log with `config` can always make progress under this budget: idle logs
    /// may keep up to half of the budget (see [`WriteBudget::under_pressure`]), so the other
    /// half must hold a largest batch beside a chunk holding a carried partial block.
    pub fn check(&self, config: &LogConfig) -> LogResult<()> {
        let needed_bytes = Self::bytes_for_batch(config);
        let limit_bytes = self.limit_bytes();
        if needed_bytes > limit_bytes / 2 {
            return Err(LogError::WriteBudgetTooSmall {
                limit_bytes,
                needed_bytes: 2 * needed_bytes,
            });
        }
        Ok(())
    }

    /// Bytes of chunks one batch of `max_batch_bytes` may need: its chunks (each loses up to
    /// a block to a carried partial block) plus the fresh chunk taken when one fills exactly.
    pub fn bytes_for_batch(config: &LogConfig) -> usize {
        let per_chunk = config.write_chunk_bytes.saturating_sub(BLOCK_BYTES).max(1);
        (config.max_batch_bytes.div_ceil(per_chunk) + 1) * config.write_chunk_bytes
    }

    /// Bytes logs may still take (free chunks and room to map new ones).
    pub(crate) fn available(&self) -> usize {
        let st = self.state.borrow();
        st.limit_bytes.saturating_sub(st.mapped_bytes)
    }

    /// A chunk of `chunk_bytes` for a log: a free one, or a newly mapped one if it fits under
    /// the limit (free chunks of another size are unmapped to make room). Its contents are
    /// whatever it held before (callers fill it from the start).
    pub(crate) fn take_chunk(&self, chunk_bytes: usize) -> Option<AlignedBuf> {
        let mut st = self.state.borrow_mut();
        if let Some(i) = st.free.iter().rposition(|b| b.capacity() == chunk_bytes) {
            let mut buf = st.free.swap_remove(i);
            buf.clear();
            st.free_bytes -= chunk_bytes;
            st.mapped_bytes += chunk_bytes;
            return Some(buf);
        }
        if st.mapped_bytes + chunk_bytes > st.limit_bytes {
            return None;
        }
        while st.mapped_bytes + st.free_bytes + chunk_bytes > st.limit_bytes {
            let other = st.free.pop()?;
            st.free_bytes -= other.capacity();
        }
        st.mapped_bytes += chunk_bytes;
        st.peak_bytes = st.peak_bytes.max(st.mapped_bytes + st.free_bytes);
        drop(st);
        Some(AlignedBuf::mapped(chunk_bytes))
    }

    /// A log gives chunks back: they go to the free list (still mapped) and every waiting
    /// append is woken.
    pub(crate) fn put_back(&self, chunks: impl IntoIterator<Item = AlignedBuf>) {
        let mut any = false;
        {
            let mut st = self.state.borrow_mut();
            for buf in chunks {
                let bytes = buf.capacity();
                debug_assert!(st.mapped_bytes >= bytes, "budget gets back more than taken");
                st.mapped_bytes = st.mapped_bytes.saturating_sub(bytes);
                st.free_bytes += bytes;
                st.free.push(buf);
                any = true;
            }
        }
        if any {
            self.wake_waiters();
        }
    }

    /// Gives back `bytes` of chunks that were dropped (unmapped), and wakes every waiting
    /// append.
    pub(crate) fn give_back(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        {
            let mut st = self.state.borrow_mut();
            debug_assert!(
                st.mapped_bytes >= bytes,
                "budget gives back more than taken"
            );
            st.mapped_bytes = st.mapped_bytes.saturating_sub(bytes);
        }
        self.wake_waiters();
    }

    /// Wakes every waiting append (outside the borrow: a waker may poll at once).
    fn wake_waiters(&self) {
        let waiters = std::mem::take(&mut self.state.borrow_mut().waiters);
        for w in waiters {
            w.wake();
        }
    }

    /// Idle logs give their chunks back: more than half of the budget is mapped, or an
    /// append waits for it. Below that a log keeps its chunks, so a busy partition does not
    /// map and unmap them between batches. The chunks idle logs keep are therefore at most
    /// half of the budget: a log keeps chunks only while everything mapped (its own chunks
    /// included) is at most half.
    pub(crate) fn under_pressure(&self) -> bool {
        let st = self.state.borrow();
        st.mapped_bytes > st.limit_bytes / 2 || !st.waiters.is_empty()
    }

    /// Registers an append that waits for chunks (deduplicated against the last waiter).
    pub(crate) fn register(&self, waker: &Waker) {
        let mut st = self.state.borrow_mut();
        if !st.waiters.back().is_some_and(|w| w.will_wake(waker)) {
            st.waiters.push_back(waker.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: usize = 64 * 1024;

    #[test]
    fn chunks_given_back_are_reused_and_stay_within_the_limit() {
        let budget = WriteBudget::new(3 * CHUNK);
        let a = budget.take_chunk(CHUNK).expect("room");
        let b = budget.take_chunk(CHUNK).expect("room");
        let c = budget.take_chunk(CHUNK).expect("room");
        assert!(budget.take_chunk(CHUNK).is_none(), "the limit holds");
        assert_eq!(budget.available(), 0);
        let a_ptr = a.as_slice().as_ptr();
        budget.put_back([a]);
        assert_eq!(budget.mapped_bytes(), 2 * CHUNK);
        assert_eq!(
            budget.resident_bytes(),
            3 * CHUNK,
            "given back, still mapped"
        );
        assert_eq!(budget.available(), CHUNK);
        let again = budget.take_chunk(CHUNK).expect("the free chunk");
        assert_eq!(again.as_slice().as_ptr(), a_ptr, "the same mapping, reused");
        assert!(again.as_slice().is_empty(), "handed out cleared");
        assert_eq!(budget.resident_bytes(), 3 * CHUNK);
        // A free chunk of another size is unmapped to make room for a new one.
        budget.put_back([b, c]);
        let big = budget
            .take_chunk(2 * CHUNK)
            .expect("room after unmapping free chunks");
        assert_eq!(big.capacity(), 2 * CHUNK);
        assert_eq!(budget.mapped_bytes(), 3 * CHUNK);
        assert!(budget.resident_bytes() <= 3 * CHUNK);
        assert!(budget.peak_bytes() <= 3 * CHUNK);
        drop(again);
        budget.give_back(CHUNK);
        assert_eq!(budget.mapped_bytes(), 2 * CHUNK);
    }
}
