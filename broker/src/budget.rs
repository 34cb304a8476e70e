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
    available: usize,
    /// Waiters in arrival order: `(ticket, waker)`; only the first may take bytes.
    waiters: VecDeque<(u64, Waker)>,
    next_ticket: u64,
}

/// A byte budget shared by the tasks of one shard.
#[derive(Clone)]
pub(crate) struct Budget {
    capacity: usize,
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
            capacity,
            state: Rc::new(RefCell::new(State {
                available: capacity,
                waiters: VecDeque::new(),
                next_ticket: 0,
            })),
        }
    }

    /// Takes `bytes` (at most the capacity), waiting in FIFO order while the budget is spent.
    /// Returns the permit and how long it waited. Dropping the future leaves the queue.
    pub(crate) async fn acquire(&self, bytes: usize) -> (Permit, Duration) {
        let bytes = bytes.min(self.capacity);
        let started = Instant::now();
        let mut waiting = Waiting {
            state: &self.state,
            ticket: None,
        };
        poll_fn(|cx| waiting.poll(cx, bytes)).await;
        let permit = Permit {
            bytes,
            state: self.state.clone(),
        };
        (permit, started.elapsed())
    }

    /// Bytes not taken.
    #[cfg(test)]
    pub(crate) fn available(&self) -> usize {
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
        st.available += self.bytes;
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
    fn poll(&mut self, cx: &mut std::task::Context<'_>, bytes: usize) -> Poll<()> {
        let mut st = self.state.borrow_mut();
        let first = st.waiters.front().map(|(t, _)| *t);
        let my_turn = match self.ticket {
            None => first.is_none(),
            Some(t) => first == Some(t),
        };
        if my_turn && st.available >= bytes {
            st.available -= bytes;
            if self.ticket.take().is_some() {
                st.waiters.pop_front();
            }
            // The next waiter may fit too.
            if let Some((_, w)) = st.waiters.front() {
                w.wake_by_ref();
            }
            return Poll::Ready(());
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
