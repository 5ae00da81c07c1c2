//! Polling on for a moment before sleeping, on a connection that just had
//! work (see [`Spin`]).

use std::{
    future::Future,
    task::Context,
    time::{Duration, Instant},
};

use busline_core::Spin;

/// A connection's waits: since when it has had nothing to do, and how long
/// it keeps polling this time before its task sleeps.
#[derive(Debug)]
pub(super) struct Idle {
    spin: Spin,
    next: Duration,
    since: Option<Instant>,
    /// When the task was last polled while waiting: where the wait ended,
    /// if that poll finds work (not after the work, which may be long).
    polled: Option<Instant>,
}

impl Idle {
    pub(super) fn new(spin: Spin) -> Idle {
        Idle {
            spin,
            next: spin.least(),
            since: None,
            polled: None,
        }
    }

    /// The task is being polled.
    pub(super) fn polled(&mut self) {
        if self.since.is_some() {
            self.polled = Some(Instant::now());
        }
    }

    /// The connection had work: its wait, if it was waiting, is over, and
    /// sets the next one's spin.
    pub(super) fn busy(&mut self) {
        if let Some(since) = self.since.take() {
            let ended = self.polled.take().unwrap_or_else(Instant::now);
            self.next = self.spin.after(ended.saturating_duration_since(since));
        }
    }

    /// The connection has nothing to do. Within this wait's spin, have the
    /// task polled again once its runtime has looked at its I/O and run
    /// whatever else is ready (as `tokio::task::yield_now` does; outside a
    /// runtime's scheduler the wake-up is immediate instead: waking
    /// itself instead would be polled again at once, up to a whole
    /// scheduler tick before the runtime's `block_on` future, where a
    /// `#[tokio::main]` caller awaits its answer); after it, sleep until a
    /// registered waker fires.
    pub(super) fn spin(&mut self, cx: &mut Context<'_>) {
        if self.spin.most().is_zero() {
            return;
        }
        let since = *self.since.get_or_insert_with(Instant::now);
        if since.elapsed() < self.next {
            let yielded = std::pin::pin!(tokio::task::yield_now());
            let _pending = yielded.poll(cx);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            atomic::{AtomicUsize, Ordering},
            Arc,
        },
        task::{Wake, Waker},
    };

    use super::*;

    /// Counts its wake-ups.
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Outside a runtime, a deferred wake-up is an immediate one: what the
    /// spin arranges can be counted.
    fn spins(idle: &mut Idle) -> usize {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        idle.spin(&mut Context::from_waker(&waker));
        count.0.load(Ordering::SeqCst)
    }

    #[test]
    fn a_waiting_connection_polls_again_within_its_spin_then_sleeps() {
        let mut idle = Idle::new(Spin::new(Duration::from_secs(60), Duration::from_secs(60)));
        assert_eq!(spins(&mut idle), 1, "within the spin: poll again");
        assert_eq!(spins(&mut idle), 1, "still within it");

        let mut idle = Idle::new(Spin::new(
            Duration::from_millis(50),
            Duration::from_secs(60),
        ));
        assert_eq!(spins(&mut idle), 1);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(spins(&mut idle), 0, "past the spin: sleep");
        // Woken after ~100 ms: the wait ends at that poll, not after the
        // work it finds; the next spin stretches to twice it.
        idle.polled();
        std::thread::sleep(Duration::from_millis(300));
        idle.busy();
        assert!(
            idle.next >= Duration::from_millis(200) && idle.next < Duration::from_millis(600),
            "{:?}",
            idle.next
        );
        assert_eq!(spins(&mut idle), 1);
    }

    #[test]
    fn no_spin_never_polls_again() {
        let mut idle = Idle::new(Spin::NONE);
        assert_eq!(spins(&mut idle), 0);
        idle.busy();
        assert_eq!(spins(&mut idle), 0);
    }
}
