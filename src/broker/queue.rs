//! Queues of publications, bounded by count and by memory.
//!
//! A count alone does not bound memory when payloads may be megabytes;
//! payload bytes alone would let millions of tiny messages through, each
//! costing its queue entry. So each queue of publications (per subscriber
//! at the broker, per subscription at the client, per bridge on its way
//! to the other broker) counts its entries, and what they really hold: the
//! entries themselves and the heap bytes they own (payload and name).
//!
//! A queue is a `VecDeque` behind a mutex, with the counts beside it: one
//! lock per publication in, two per batch out (take, release). A tokio channel with the
//! counts kept in atomics beside it cost five atomic writes and a wake-up
//! per publication, which were a third of a broker's time feeding ten
//! subscribers (see BENCHMARKS.md); a reader here takes a batch at once
//! and reads it without touching anything shared.

use std::{
    collections::VecDeque,
    fmt,
    mem::size_of,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll, Waker},
};

/// How much may wait in one queue of publications: whichever bound is
/// reached first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueBounds {
    pub(crate) publications: usize,
    pub(crate) bytes: usize,
}

impl Default for QueueBounds {
    fn default() -> Self {
        QueueBounds {
            publications: super::DEFAULT_SUBSCRIBER_QUEUE,
            bytes: super::DEFAULT_SUBSCRIBER_QUEUE_BYTES,
        }
    }
}

/// A queue within `bounds` (a bound of 0 entries is taken as 1).
pub(crate) fn queue<T>(bounds: QueueBounds) -> (QueueSender<T>, QueueReceiver<T>) {
    let shared = Arc::new(Mutex::new(Inner {
        items: VecDeque::new(),
        entries: 0,
        held: 0,
        bounds: QueueBounds {
            publications: bounds.publications.max(1),
            bytes: bounds.bytes,
        },
        waker: None,
        senders: 1,
        receiving: true,
    }));
    (
        QueueSender {
            shared: shared.clone(),
        },
        QueueReceiver {
            shared,
            taken: (0, 0),
        },
    )
}

struct Inner<T> {
    /// Each entry with the heap bytes it owns.
    items: VecDeque<(T, usize)>,
    /// Entries and bytes counted against the bounds: those queued, and
    /// those the receiver took and has not released.
    entries: usize,
    held: usize,
    bounds: QueueBounds,
    /// The receiver's, from the last time it found the queue empty.
    waker: Option<Waker>,
    senders: usize,
    receiving: bool,
}

impl<T> Inner<T> {
    /// What `entries` entries owning `heap` bytes between them hold.
    fn cost(entries: usize, heap: usize) -> usize {
        entries.saturating_mul(size_of::<T>()).saturating_add(heap)
    }

    /// Whether one more entry owning `heap` bytes fits. A queue all but
    /// empty (under an eighth of its byte bound) takes one of any size, so
    /// a payload larger than the byte bound is delivered nearly alone
    /// rather than never.
    fn fits(&self, heap: usize) -> bool {
        self.entries < self.bounds.publications
            && (self.held.saturating_mul(8) < self.bounds.bytes
                || self.held.saturating_add(Self::cost(1, heap)) <= self.bounds.bytes)
    }
}

fn lock<T>(shared: &Mutex<Inner<T>>) -> MutexGuard<'_, Inner<T>> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// The filling side of a queue; clones fill the same queue.
pub(crate) struct QueueSender<T> {
    shared: Arc<Mutex<Inner<T>>>,
}

impl<T> QueueSender<T> {
    /// Queue `item`, owning `heap` bytes, if both bounds allow it; if
    /// either refuses it, it comes back. A queue whose receiver is gone
    /// takes anything and drops it: nobody misses it.
    pub(crate) fn push(&self, item: T, heap: usize) -> Result<(), T> {
        let mut inner = lock(&self.shared);
        if !inner.receiving {
            drop(inner);
            drop(item); // outside the lock: dropping it may run anything
            return Ok(());
        }
        if !inner.fits(heap) {
            return Err(item);
        }
        inner.entries += 1;
        inner.held = inner.held.saturating_add(Inner::<T>::cost(1, heap));
        inner.items.push_back((item, heap));
        let waker = inner.waker.take();
        drop(inner);
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// The bounds it keeps.
    pub(crate) fn bounds(&self) -> QueueBounds {
        lock(&self.shared).bounds
    }
}

impl<T> Clone for QueueSender<T> {
    fn clone(&self) -> Self {
        lock(&self.shared).senders += 1;
        QueueSender {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for QueueSender<T> {
    fn drop(&mut self) {
        let mut inner = lock(&self.shared);
        inner.senders -= 1;
        let waker = (inner.senders == 0).then(|| inner.waker.take()).flatten();
        drop(inner);
        if let Some(waker) = waker {
            waker.wake(); // to see the end
        }
    }
}

impl<T> fmt::Debug for QueueSender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("QueueSender");
        // Never blocks: a Debug print must not wait on the queue's lock.
        if let Ok(inner) = self.shared.try_lock() {
            d.field("entries", &inner.entries)
                .field("held", &inner.held);
        }
        d.finish_non_exhaustive()
    }
}

/// The draining side of a queue.
pub(crate) struct QueueReceiver<T> {
    shared: Arc<Mutex<Inner<T>>>,
    /// Entries and bytes taken and not yet released.
    taken: (usize, usize),
}

impl<T> QueueReceiver<T> {
    /// Move up to `max` entries into `into`, in order, first releasing
    /// what was taken before. `Ready(0)`: every sender is gone and the
    /// queue is empty. What is taken still counts against the bounds until
    /// [`QueueReceiver::release`] (or the next take): a reader that holds
    /// a batch holds its room. Cancel-safe: nothing moves unless it
    /// returns `Ready`.
    pub(crate) fn poll_take(
        &mut self,
        cx: &mut Context<'_>,
        into: &mut impl Extend<T>,
        max: usize,
    ) -> Poll<usize> {
        // Each batch counts against the task's budget, so a reader that
        // always finds one still lets its runtime's other tasks run (per
        // publication, the budget's bookkeeping cost 0.85x the fan-out
        // rate to ten subscribers).
        let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
        let mut inner = lock(&self.shared);
        Self::give_back(&mut inner, &mut self.taken);
        if inner.items.is_empty() {
            if inner.senders == 0 {
                return Poll::Ready(0);
            }
            let stale = match &inner.waker {
                Some(waker) if waker.will_wake(cx.waker()) => None,
                _ => inner.waker.replace(cx.waker().clone()),
            };
            // A burst grew the queue: give its memory back once drained.
            let grown =
                (inner.items.capacity() > SHRINK_ABOVE).then(|| std::mem::take(&mut inner.items));
            drop(inner);
            drop((stale, grown));
            return Poll::Pending;
        }
        let n = inner.items.len().min(max.max(1));
        let mut heap = 0usize;
        into.extend(inner.items.drain(..n).map(|(item, bytes)| {
            heap = heap.saturating_add(bytes);
            item
        }));
        self.taken = (n, heap);
        coop.made_progress();
        Poll::Ready(n)
    }

    /// Take up to `max` entries into `into`, waiting for the first;
    /// `0`: the queue has ended.
    pub(crate) async fn take(&mut self, into: &mut impl Extend<T>, max: usize) -> usize {
        std::future::poll_fn(|cx| self.poll_take(cx, into, max)).await
    }

    /// Give the room of what was taken back to the queue.
    pub(crate) fn release(&mut self) {
        if self.taken.0 > 0 {
            Self::give_back(&mut lock(&self.shared), &mut self.taken);
        }
    }

    fn give_back(inner: &mut Inner<T>, taken: &mut (usize, usize)) {
        let (entries, heap) = std::mem::take(taken);
        inner.entries -= entries;
        inner.held = inner.held.saturating_sub(Inner::<T>::cost(entries, heap));
    }
}

impl<T> Drop for QueueReceiver<T> {
    fn drop(&mut self) {
        let mut inner = lock(&self.shared);
        inner.receiving = false;
        let gone = (std::mem::take(&mut inner.items), inner.waker.take());
        drop(inner);
        drop(gone); // outside the lock
    }
}

/// Entries a drained queue keeps room for; above it, its memory is freed.
const SHRINK_ABOVE: usize = 1024;

impl<T> fmt::Debug for QueueReceiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueReceiver")
            .field("taken", &self.taken)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::task::Context;

    use futures::task::noop_waker;

    use super::*;

    /// An entry of 8 bytes, so costs are easy to count.
    fn of_bytes(bytes: usize) -> (QueueSender<u64>, QueueReceiver<u64>) {
        queue(QueueBounds {
            publications: usize::MAX,
            bytes,
        })
    }

    fn take_all(rx: &mut QueueReceiver<u64>) -> Vec<u64> {
        let waker = noop_waker();
        let mut out = Vec::new();
        let _ = rx.poll_take(&mut Context::from_waker(&waker), &mut out, usize::MAX);
        out
    }

    #[test]
    fn bounds_bytes_and_an_all_but_empty_queue_takes_an_oversized_one() {
        let (tx, mut rx) = of_bytes(800);
        assert_eq!(tx.push(1, 10_000), Ok(()), "an empty queue takes it");
        assert_eq!(tx.push(2, 0), Err(2), "nothing more fits beside it");
        assert_eq!(take_all(&mut rx), [1]);
        assert_eq!(tx.push(3, 0), Err(3), "taken, not released: still held");
        rx.release();
        assert_eq!(tx.push(4, 50), Ok(()), "58 bytes: under an eighth of 800");
        assert_eq!(tx.push(5, 10_000), Ok(()), "so an oversized one fits too");
        assert_eq!(tx.push(6, 0), Err(6));
        assert_eq!(take_all(&mut rx), [4, 5]);
        take_all(&mut rx); // releases the last take
        assert_eq!(tx.push(7, 92), Ok(()), "100 bytes: an eighth");
        assert_eq!(tx.push(8, 10_000), Err(8), "too full for an oversized one");
        assert_eq!(tx.push(9, 692), Ok(()), "but 800 in all fit");
        assert_eq!(tx.push(10, 0), Err(10));
    }

    #[test]
    fn tiny_entries_are_bounded_by_their_own_size_and_the_count() {
        let (tx, _rx) = of_bytes(80);
        let taken = (0..100).take_while(|&i| tx.push(i, 0).is_ok()).count();
        assert_eq!(taken, 10, "ten 8-byte entries fill 80 bytes");
        let (tx, _rx) = queue::<u64>(QueueBounds {
            publications: 0,
            bytes: 1_000,
        });
        assert_eq!(tx.push(1, 0), Ok(()), "a bound of no entries takes one");
        assert_eq!(tx.push(2, 0), Err(2));
    }

    #[test]
    fn takes_in_order_within_max_and_ends_when_every_sender_is_gone() {
        let (tx, mut rx) = of_bytes(usize::MAX);
        let other = tx.clone();
        for i in 0..5 {
            tx.push(i, 0).unwrap();
        }
        let waker = noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut out = Vec::new();
        assert_eq!(rx.poll_take(&mut cx, &mut out, 3), Poll::Ready(3));
        assert_eq!(rx.poll_take(&mut cx, &mut out, 3), Poll::Ready(2));
        assert_eq!(out, [0, 1, 2, 3, 4]);
        drop(tx);
        assert_eq!(
            rx.poll_take(&mut cx, &mut out, 3),
            Poll::Pending,
            "a sender is left"
        );
        drop(other);
        assert_eq!(rx.poll_take(&mut cx, &mut out, 3), Poll::Ready(0));
    }

    #[test]
    fn a_waiting_receiver_is_woken_by_a_push_and_by_the_end() {
        let (tx, mut rx) = of_bytes(usize::MAX);
        let mut out = Vec::new();
        let mut taking = tokio_test::task::spawn(rx.take(&mut out, 10));
        assert!(taking.poll().is_pending());
        tx.push(7, 0).unwrap();
        assert!(taking.is_woken(), "a push wakes the waiting receiver");
        assert_eq!(taking.poll(), Poll::Ready(1));
        drop(taking);
        assert_eq!(out, [7]);

        let mut taking = tokio_test::task::spawn(rx.take(&mut out, 10));
        assert!(taking.poll().is_pending());
        drop(tx);
        assert!(taking.is_woken(), "the last sender's drop wakes it");
        assert_eq!(taking.poll(), Poll::Ready(0), "and it sees the end");
    }

    #[test]
    fn a_drained_queue_gives_back_what_a_burst_grew() {
        let (tx, mut rx) = of_bytes(usize::MAX);
        for i in 0..10 * SHRINK_ABOVE as u64 {
            tx.push(i, 0).unwrap();
        }
        assert_eq!(take_all(&mut rx).len(), 10 * SHRINK_ABOVE);
        assert!(lock(&rx.shared).items.capacity() >= 10 * SHRINK_ABOVE);
        take_all(&mut rx); // finds it empty
        assert_eq!(lock(&rx.shared).items.capacity(), 0);
    }

    #[test]
    fn a_queue_without_its_receiver_takes_anything_and_holds_nothing() {
        let (tx, rx) = of_bytes(100);
        tx.push(1, 50).unwrap();
        drop(rx);
        for i in 0..10 {
            assert_eq!(tx.push(i, 1_000), Ok(()));
        }
        assert!(lock(&tx.shared).items.is_empty());
    }
}
