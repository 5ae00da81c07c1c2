//! The bounds of a queue of publications: how many, and how much memory.
//!
//! A count alone does not bound memory when payloads may be megabytes;
//! payload bytes alone would let millions of tiny messages through, each
//! costing its queue entry. So each queue of publications (per subscriber
//! at the broker, per subscription at the client, per bridge on its way
//! to the other broker) counts its entries, and what they really hold: the
//! entries themselves and the heap bytes they own (payload and name).
//!
//! The queues are unbounded channels and the budget is their only bound:
//! a bounded channel would count entries a second time, with a lock taken
//! on every receive, once per delivery on the busiest path there is.

use std::{
    marker::PhantomData,
    mem::size_of,
    sync::atomic::{AtomicUsize, Ordering},
};

use tokio::sync::mpsc;

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

/// The most entries a reader holds back from [`QueueBudget::give_batched`].
const GIVE_BACK_BATCH: usize = 64;

/// What a reader took off a queue and has not given back to its budget
/// yet (see [`QueueBudget::give_batched`]).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Unreturned {
    entries: usize,
    heap: usize,
}

/// Entries and bytes held by one queue of `T`, shared by the side that
/// fills it and the side that drains it.
#[derive(Debug)]
pub(crate) struct QueueBudget<T> {
    entries: AtomicUsize,
    held: AtomicUsize,
    bounds: QueueBounds,
    entry: PhantomData<fn(T)>,
}

impl<T> QueueBudget<T> {
    /// An empty queue's budget; a bound of 0 entries is taken as 1.
    pub(crate) fn new(bounds: QueueBounds) -> QueueBudget<T> {
        QueueBudget {
            entries: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            bounds: QueueBounds {
                publications: bounds.publications.max(1),
                bytes: bounds.bytes,
            },
            entry: PhantomData,
        }
    }

    /// The bounds it keeps.
    pub(crate) fn bounds(&self) -> QueueBounds {
        self.bounds
    }

    /// What `entries` entries owning `heap` bytes between them hold.
    fn cost(entries: usize, heap: usize) -> usize {
        entries.saturating_mul(size_of::<T>()).saturating_add(heap)
    }

    /// Reserve one entry owning `heap` bytes; `false` if that would pass
    /// either bound. A queue all but empty (under an eighth of its byte
    /// bound, which is less than a reader holds back, see
    /// [`QueueBudget::give_batched`]) takes one entry of any size, so a
    /// payload larger than the byte bound is delivered nearly alone rather
    /// than never.
    fn take(&self, heap: usize) -> bool {
        if self.entries.fetch_add(1, Ordering::AcqRel) >= self.bounds.publications {
            self.entries.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        let cost = Self::cost(1, heap);
        let before = self.held.fetch_add(cost, Ordering::AcqRel);
        if before.saturating_mul(8) >= self.bounds.bytes
            && before.saturating_add(cost) > self.bounds.bytes
        {
            self.held.fetch_sub(cost, Ordering::AcqRel);
            self.entries.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Give back `entries` entries owning `heap` bytes between them, taken
    /// off the queue.
    pub(crate) fn give(&self, entries: usize, heap: usize) {
        self.held
            .fetch_sub(Self::cost(entries, heap), Ordering::AcqRel);
        self.entries.fetch_sub(entries, Ordering::AcqRel);
    }

    /// Give back `entries` entries owning `heap` bytes, taken off the queue
    /// by a reader that reads one at a time, once it is worth it: before it
    /// waits (`waiting`: an idle reader holds nothing back), or once what
    /// it holds reaches an eighth of either bound or
    /// [`GIVE_BACK_BATCH`] entries. The queue's writer takes from the same
    /// counters, so each give-back is a round trip between cores: batched,
    /// a busy reader pays it once in many reads.
    pub(crate) fn give_batched(
        &self,
        unreturned: &mut Unreturned,
        entries: usize,
        heap: usize,
        waiting: bool,
    ) {
        unreturned.entries += entries;
        unreturned.heap = unreturned.heap.saturating_add(heap);
        let Unreturned { entries, heap } = *unreturned;
        if entries > 0
            && (waiting
                || entries >= GIVE_BACK_BATCH
                || entries.saturating_mul(8) >= self.bounds.publications
                || Self::cost(entries, heap).saturating_mul(8) >= self.bounds.bytes)
        {
            self.give(entries, heap);
            *unreturned = Unreturned::default();
        }
    }

    /// Queue `item`, owning `heap` bytes, on `tx` if both bounds allow it;
    /// if either refuses it, it comes back. A closed queue takes anything:
    /// its reader is gone, and nothing is missed.
    pub(crate) fn try_send(
        &self,
        tx: &mpsc::UnboundedSender<T>,
        item: T,
        heap: usize,
    ) -> Result<(), T> {
        if !self.take(heap) {
            return if tx.is_closed() { Ok(()) } else { Err(item) };
        }
        if tx.send(item).is_err() {
            self.give(1, heap);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{QueueBounds, QueueBudget, Unreturned, GIVE_BACK_BATCH};

    /// An entry of 8 bytes, so costs are easy to count.
    type Budget = QueueBudget<u64>;

    /// A budget of `bytes`, with room for more entries than they allow.
    fn of_bytes(bytes: usize) -> Budget {
        Budget::new(QueueBounds {
            publications: usize::MAX,
            bytes,
        })
    }

    #[test]
    fn bounds_bytes_but_always_takes_one() {
        let budget = of_bytes(100);
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
        let budget = of_bytes(80);
        let taken = (0..100).take_while(|_| budget.take(0)).count();
        assert_eq!(taken, 10, "ten 8-byte entries fill 80 bytes");
        budget.give(10, 0);
        assert!(budget.take(72), "all of it is given back");
    }

    #[test]
    fn a_closed_queue_takes_anything_and_holds_nothing() {
        let budget = of_bytes(100);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        drop(rx);
        for _ in 0..10 {
            assert!(budget.try_send(&tx, 1, 1_000).is_ok());
        }
        // Nothing kept for the closed queue: two entries fit exactly.
        assert!(budget.take(40));
        assert!(budget.take(44));
    }

    #[test]
    fn the_count_bound_refuses_and_gives_the_reservation_back() {
        let budget = Budget::new(QueueBounds {
            publications: 2,
            bytes: 1_000,
        });
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        assert!(budget.try_send(&tx, 1, 100).is_ok());
        assert!(budget.try_send(&tx, 2, 100).is_ok());
        assert_eq!(budget.try_send(&tx, 3, 0), Err(3), "the count bound holds");
        assert_eq!(rx.try_recv().ok(), Some(1));
        budget.give(1, 100);
        assert!(
            budget.try_send(&tx, 4, 100).is_ok(),
            "room again once one is read"
        );
        // 216 held by two entries; the refused one holds nothing.
        budget.give(2, 200);
        assert!(budget.take(992), "all of it is given back");
    }

    #[test]
    fn a_bound_of_no_entries_still_takes_one() {
        let budget = Budget::new(QueueBounds {
            publications: 0,
            bytes: 1_000,
        });
        assert!(budget.take(0));
        assert!(!budget.take(0));
    }

    #[test]
    fn a_reader_gives_back_in_batches_and_all_before_waiting() {
        let budget = Budget::new(QueueBounds {
            publications: 8 * GIVE_BACK_BATCH + 8,
            bytes: usize::MAX,
        });
        let mut unreturned = Unreturned::default();
        for _ in 0..GIVE_BACK_BATCH + 8 {
            assert!(budget.take(0));
        }
        for _ in 0..GIVE_BACK_BATCH - 1 {
            budget.give_batched(&mut unreturned, 1, 0, false);
        }
        assert_eq!(
            budget.entries.load(std::sync::atomic::Ordering::Relaxed),
            GIVE_BACK_BATCH + 8,
            "held back below a batch"
        );
        budget.give_batched(&mut unreturned, 1, 0, false);
        assert_eq!(budget.entries.load(std::sync::atomic::Ordering::Relaxed), 8);
        budget.give_batched(&mut unreturned, 1, 0, false);
        budget.give_batched(&mut unreturned, 0, 0, true);
        assert_eq!(
            budget.entries.load(std::sync::atomic::Ordering::Relaxed),
            7,
            "a reader about to wait holds nothing back"
        );
    }

    #[test]
    fn a_small_bound_is_given_back_at_once() {
        let budget = Budget::new(QueueBounds {
            publications: 4,
            bytes: 10_000,
        });
        let mut unreturned = Unreturned::default();
        assert!(budget.take(0));
        budget.give_batched(&mut unreturned, 1, 0, false);
        for _ in 0..4 {
            assert!(budget.take(0), "the whole bound is free again");
        }
        let budget = of_bytes(800);
        assert!(budget.take(92));
        budget.give_batched(&mut unreturned, 1, 92, false);
        assert!(budget.take(792), "a hundred bytes is an eighth of 800");
    }

    #[test]
    fn a_queue_all_but_empty_takes_an_oversized_one() {
        let budget = of_bytes(800);
        assert!(budget.take(50), "58 bytes: under an eighth of 800");
        assert!(
            budget.take(10_000),
            "taken beside what a reader may hold back"
        );
        assert!(!budget.take(0), "and nothing more");
        let budget = of_bytes(800);
        assert!(budget.take(92), "100 bytes: an eighth");
        assert!(!budget.take(10_000), "too full for an oversized one");
    }
}
