//! A memory bound for a queue of publications, beside its count bound.
//!
//! A count alone does not bound memory when payloads may be megabytes;
//! payload bytes alone would let millions of tiny messages through, each
//! costing its queue entry. So each queue of publications (per subscriber
//! at the broker, per subscription at the client, per bridge on its way
//! to the other broker) counts what an entry really holds: the entry
//! itself and the heap bytes it owns (payload and name).

use std::{
    marker::PhantomData,
    mem::size_of,
    sync::atomic::{AtomicUsize, Ordering},
};

use tokio::sync::mpsc::{self, error::TrySendError};

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

/// Bytes held by one queue of `T`, shared by the side that fills it and
/// the side that drains it.
#[derive(Debug)]
pub(crate) struct ByteBudget<T> {
    held: AtomicUsize,
    limit: usize,
    entry: PhantomData<fn(T)>,
}

impl<T> ByteBudget<T> {
    pub(crate) fn new(limit: usize) -> ByteBudget<T> {
        ByteBudget {
            held: AtomicUsize::new(0),
            limit,
            entry: PhantomData,
        }
    }

    /// What `entries` entries owning `heap` bytes between them hold.
    fn cost(entries: usize, heap: usize) -> usize {
        entries.saturating_mul(size_of::<T>()).saturating_add(heap)
    }

    /// Reserve one entry owning `heap` bytes; `false` if that would pass
    /// the limit. An empty queue takes one entry of any size, so a payload
    /// larger than the limit is delivered alone rather than never.
    fn take(&self, heap: usize) -> bool {
        let cost = Self::cost(1, heap);
        let before = self.held.fetch_add(cost, Ordering::AcqRel);
        if before > 0 && before.saturating_add(cost) > self.limit {
            self.held.fetch_sub(cost, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Give back `entries` entries owning `heap` bytes between them, taken
    /// off the queue.
    pub(crate) fn give(&self, entries: usize, heap: usize) {
        self.held
            .fetch_sub(Self::cost(entries, heap), Ordering::AcqRel);
    }

    /// Queue `item`, owning `heap` bytes, on `tx` if both bounds allow it;
    /// `false` if either refused it. A closed queue takes anything: its
    /// reader is gone, and nothing is missed.
    pub(crate) fn try_send(&self, tx: &mpsc::Sender<T>, item: T, heap: usize) -> bool {
        if !self.take(heap) {
            return tx.is_closed();
        }
        match tx.try_send(item) {
            Ok(()) => true,
            Err(refused) => {
                self.give(1, heap);
                matches!(refused, TrySendError::Closed(_))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ByteBudget;

    /// An entry of 8 bytes, so costs are easy to count.
    type Budget = ByteBudget<u64>;

    #[test]
    fn bounds_bytes_but_always_takes_one() {
        let budget = Budget::new(100);
        assert!(budget.take(1_000), "an empty queue takes an oversized one");
        assert!(!budget.take(1), "nothing more fits beside it");
        budget.give(1, 1_000);
        assert!(budget.take(52));
        assert!(budget.take(32));
        assert!(!budget.take(0), "the limit is reached: entries count too");
        budget.give(1, 32);
        assert!(budget.take(32));
    }

    #[test]
    fn tiny_entries_are_bounded_by_their_own_size() {
        let budget = Budget::new(80);
        let taken = (0..100).take_while(|_| budget.take(0)).count();
        assert_eq!(taken, 10, "ten 8-byte entries fill 80 bytes");
        budget.give(10, 0);
        assert!(budget.take(72), "all of it is given back");
    }

    #[test]
    fn a_closed_queue_takes_anything_and_holds_nothing() {
        let budget = Budget::new(100);
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        drop(rx);
        for _ in 0..10 {
            assert!(budget.try_send(&tx, 1, 1_000));
        }
        // Nothing kept for the closed queue: two entries fit exactly.
        assert!(budget.take(40));
        assert!(budget.take(44));
    }

    #[test]
    fn a_full_queue_refuses_and_gives_the_reservation_back() {
        let budget = Budget::new(1_000);
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        assert!(budget.try_send(&tx, 1, 100));
        assert!(!budget.try_send(&tx, 2, 100), "the count bound holds");
        // 108 held by the first; the refused one holds nothing.
        assert!(budget.take(884), "room for exactly 892 more");
        assert!(!budget.take(0));
    }
}
