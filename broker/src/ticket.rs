//! FIFO admission per partition: a ticket is taken synchronously when a request is read (or
//! a forwarded one leaves a shard's inbox), and appends run in ticket order, so batches from
//! one connection land in the order they were sent even when an append has to wait for
//! buffer space. Single-threaded: lives on the partition's shard.

use std::cell::RefCell;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

#[derive(Default)]
struct State {
    next: u64,
    serving: u64,
    /// Tickets given up before their turn, skipped when reached.
    abandoned: Vec<u64>,
    waiters: Vec<Waker>,
}

/// A partition's admission queue.
#[derive(Clone, Default)]
pub(crate) struct Admission {
    state: Rc<RefCell<State>>,
}

/// A place in the queue; its turn ends when dropped.
pub(crate) struct Ticket {
    id: u64,
    state: Rc<RefCell<State>>,
}

impl Admission {
    /// Takes the next place, now.
    pub(crate) fn ticket(&self) -> Ticket {
        let mut st = self.state.borrow_mut();
        let id = st.next;
        st.next += 1;
        Ticket {
            id,
            state: self.state.clone(),
        }
    }
}

impl Ticket {
    /// Waits for this ticket's turn.
    pub(crate) async fn turn(&self) {
        poll_fn(|cx| {
            let mut st = self.state.borrow_mut();
            if st.serving == self.id {
                return Poll::Ready(());
            }
            st.waiters.push(cx.waker().clone());
            Poll::Pending
        })
        .await;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut st = self.state.borrow_mut();
        if st.serving == self.id {
            st.serving += 1;
            // Skip the tickets dropped before their turn.
            loop {
                let serving = st.serving;
                match st.abandoned.iter().position(|&t| t == serving) {
                    Some(i) => {
                        st.abandoned.swap_remove(i);
                        st.serving += 1;
                    }
                    None => break,
                }
            }
            for w in st.waiters.drain(..) {
                w.wake();
            }
        } else {
            st.abandoned.push(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_follow_ticket_order_and_skip_abandoned() {
        compio::runtime::Runtime::new()
            .expect("runtime")
            .block_on(async {
                let q = Admission::default();
                let order = Rc::new(RefCell::new(Vec::new()));
                let t0 = q.ticket();
                let t1 = q.ticket();
                let t2 = q.ticket();
                let t3 = q.ticket();
                let o = order.clone();
                let h3 = compio::runtime::spawn(async move {
                    t3.turn().await;
                    o.borrow_mut().push(3);
                });
                let o = order.clone();
                let h1 = compio::runtime::spawn(async move {
                    t1.turn().await;
                    o.borrow_mut().push(1);
                });
                drop(t2);
                t0.turn().await;
                order.borrow_mut().push(0);
                drop(t0);
                h1.await.expect("task");
                h3.await.expect("task");
                assert_eq!(*order.borrow(), vec![0, 1, 3]);
            });
    }
}
