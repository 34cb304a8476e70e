//! A shard's byte budget: a FIFO semaphore of bytes. Connections acquire a frame's size
//! before reading its body and release it (by dropping the [`Permit`]) once the response is
//! written, so the bytes a shard holds for requests stay bounded and a full budget stops
//! reading (TCP pushes back on clients). Single-threaded: lives on one shard.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

struct State {
    /// Bytes that may be taken now; negative after the capacity shrank below what is held.
    available: i64,
    /// Largest single acquisition, and the total (changes with [`Budget::set_capacity`]).
    capacity: usize,
    /// Waiters in arrival order: `(ticket, waker)`; only the first may take bytes.
    waiters: VecDeque<(u64, Waker)>,
    next_ticket: u64,
}

/// A byte budget shared by the tasks of one shard.
#[derive(Clone)]
pub(crate) struct Budget {
    state: Rc<RefCell<State>>,
}

/// Bytes taken from a [`Budget`]; given back on drop.
pub(crate) struct Permit {
    bytes: usize,
    state: Rc<RefCell<State>>,
}

impl Budget {
    /// A budget of `capacity` bytes.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            state: Rc::new(RefCell::new(State {
                available: capacity as i64,
                capacity,
                waiters: VecDeque::new(),
                next_ticket: 0,
            })),
        }
    }

    /// Takes `bytes` (at most the capacity), waiting in FIFO order while the budget is spent.
    /// Returns the permit and how long it waited. Dropping the future leaves the queue.
    pub(crate) async fn acquire(&self, bytes: usize) -> (Permit, Duration) {
        let started = Instant::now();
        let mut waiting = Waiting {
            state: &self.state,
            ticket: None,
        };
        let bytes = poll_fn(|cx| waiting.poll(cx, bytes)).await;
        let permit = Permit {
            bytes,
            state: self.state.clone(),
        };
        (permit, started.elapsed())
    }

    /// Changes the capacity (SIGHUP reload). Bytes already held stay held; after a shrink,
    /// new acquisitions wait until enough has come back.
    pub(crate) fn set_capacity(&self, capacity: usize) {
        let mut st = self.state.borrow_mut();
        st.available += capacity as i64 - st.capacity as i64;
        st.capacity = capacity;
        if let Some((_, w)) = st.waiters.front() {
            w.wake_by_ref();
        }
    }

    /// The capacity.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.state.borrow().capacity
    }

    /// Bytes not taken.
    #[cfg(test)]
    pub(crate) fn available(&self) -> i64 {
        self.state.borrow().available
    }
}

impl Permit {
    /// Bytes held.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut st = self.state.borrow_mut();
        st.available += self.bytes as i64;
        if let Some((_, w)) = st.waiters.front() {
            w.wake_by_ref();
        }
    }
}

/// One `acquire` in progress: its place in the queue, removed if it is dropped.
struct Waiting<'a> {
    state: &'a Rc<RefCell<State>>,
    ticket: Option<u64>,
}

impl Waiting<'_> {
    /// Takes `bytes` (at most the capacity at the time it succeeds) when it is this waiter's
    /// turn; returns the bytes taken.
    fn poll(&mut self, cx: &mut std::task::Context<'_>, bytes: usize) -> Poll<usize> {
        let mut st = self.state.borrow_mut();
        let first = st.waiters.front().map(|(t, _)| *t);
        let my_turn = match self.ticket {
            None => first.is_none(),
            Some(t) => first == Some(t),
        };
        // A waiter that asked for more than a shrunk capacity takes at most the capacity.
        let bytes = bytes.min(st.capacity);
        if my_turn && st.available >= bytes as i64 {
            st.available -= bytes as i64;
            if self.ticket.take().is_some() {
                st.waiters.pop_front();
            }
            // The next waiter may fit too.
            if let Some((_, w)) = st.waiters.front() {
                w.wake_by_ref();
            }
            return Poll::Ready(bytes);
        }
        match self.ticket {
            None => {
                let t = st.next_ticket;
                st.next_ticket += 1;
                self.ticket = Some(t);
                st.waiters.push_back((t, cx.waker().clone()));
            }
            Some(t) => {
                if let Some(entry) = st.waiters.iter_mut().find(|(w, _)| *w == t) {
                    entry.1 = cx.waker().clone();
                }
            }
        }
        Poll::Pending
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(t) = self.ticket {
            let mut st = self.state.borrow_mut();
            st.waiters.retain(|(w, _)| *w != t);
            if let Some((_, w)) = st.waiters.front() {
                w.wake_by_ref();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_in_order_and_releases_on_drop() {
        compio::runtime::Runtime::new()
            .expect("runtime")
            .block_on(async {
                let budget = Budget::new(10);
                let (a, _) = budget.acquire(8).await;
                assert_eq!(budget.available(), 2);
                let b2 = budget.clone();
                let waiter = compio::runtime::spawn(async move { b2.acquire(5).await.0.bytes() });
                compio::time::sleep(Duration::from_millis(5)).await;
                assert!(!waiter.is_finished());
                drop(a);
                assert_eq!(waiter.await.expect("task"), 5);
                assert_eq!(budget.available(), 10);
                // Larger than the capacity: clamped, never stuck.
                let (p, _) = budget.acquire(100).await;
                assert_eq!(p.bytes(), 10);
            });
    }

    #[test]
    fn capacity_changes_apply_to_new_acquisitions() {
        compio::runtime::Runtime::new()
            .expect("runtime")
            .block_on(async {
                let budget = Budget::new(10);
                let (held, _) = budget.acquire(8).await;
                budget.set_capacity(4);
                assert_eq!(budget.available(), -4);
                let b2 = budget.clone();
                let waiter = compio::runtime::spawn(async move { b2.acquire(4).await.0.bytes() });
                compio::time::sleep(Duration::from_millis(5)).await;
                assert!(!waiter.is_finished(), "held bytes exceed the new capacity");
                drop(held);
                assert_eq!(waiter.await.expect("task"), 4);
                assert_eq!(budget.available(), 4);
                budget.set_capacity(20);
                let (p, _) = budget.acquire(100).await;
                assert_eq!(p.bytes(), 20);
                assert_eq!(budget.capacity(), 20);
            });
    }

    #[test]
    fn a_dropped_waiter_leaves_the_queue() {
        compio::runtime::Runtime::new()
            .expect("runtime")
            .block_on(async {
                let budget = Budget::new(4);
                let (held, _) = budget.acquire(4).await;
                let b2 = budget.clone();
                let abandoned =
                    compio::runtime::spawn(async move { b2.acquire(4).await.0.bytes() });
                compio::time::sleep(Duration::from_millis(5)).await;
                drop(abandoned);
                drop(held);
                let (p, _) = budget.acquire(4).await;
                assert_eq!(p.bytes(), 4);
            });
    }
}
