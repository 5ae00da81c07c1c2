//! A byte bound for a queue of publications, beside its count bound.
//!
//! A count alone does not bound memory when payloads may be megabytes;
//! bytes alone would let millions of tiny messages through. Each queue of
//! publications (per subscriber at the broker, per subscription at the
//! client) keeps both.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc::{self, error::TrySendError};

/// Bytes held by one queue, shared by the side that fills it and the side
/// that drains it.
#[derive(Debug)]
pub(crate) struct ByteBudget {
    held: AtomicUsize,
    limit: usize,
}

impl ByteBudget {
    pub(crate) fn new(limit: usize) -> ByteBudget {
        ByteBudget {
            held: AtomicUsize::new(0),
            limit,
        }
    }

    /// Reserve `len` bytes; `false` if that would pass the limit. An empty
    /// queue takes one message of any size, so a payload larger than the
    /// limit is delivered alone rather than never.
    pub(crate) fn take(&self, len: usize) -> bool {
        let before = self.held.fetch_add(len, Ordering::AcqRel);
        if before > 0 && before.saturating_add(len) > self.limit {
            self.held.fetch_sub(len, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Give back `len` bytes reserved earlier.
    pub(crate) fn give(&self, len: usize) {
        self.held.fetch_sub(len, Ordering::AcqRel);
    }

    /// Queue `item`, of `len` payload bytes, on `tx` if both bounds allow
    /// it; `false` if either refused it. A closed queue takes anything:
    /// its reader is gone, and nothing is missed.
    pub(crate) fn try_send<T>(&self, tx: &mpsc::Sender<T>, item: T, len: usize) -> bool {
        if !self.take(len) {
            return false;
        }
        match tx.try_send(item) {
            Err(TrySendError::Full(_)) => {
                self.give(len);
                false
            }
            Ok(()) | Err(TrySendError::Closed(_)) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ByteBudget;

    #[test]
    fn bounds_bytes_but_always_takes_one() {
        let budget = ByteBudget::new(100);
        assert!(budget.take(1_000), "an empty queue takes an oversized one");
        assert!(!budget.take(1), "nothing more fits beside it");
        budget.give(1_000);
        assert!(budget.take(60));
        assert!(budget.take(40));
        assert!(!budget.take(1), "the limit is reached");
        budget.give(40);
        assert!(budget.take(40));
    }
}
