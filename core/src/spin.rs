//! How long a side with nothing to do keeps polling before it sleeps.

use std::time::Duration;

/// An adaptive spin-then-sleep rule, from `least` up to `most`.
///
/// Waking a sleeping thread costs tens of microseconds on a virtual
/// machine, more than a whole call over a fast transport. A side that has
/// just had work (an answer to wait for, the next request about to come)
/// therefore keeps polling for a moment before it sleeps. How long: each
/// wait that ends within `most` sets the next spin to twice its length (a
/// margin for jitter, never less than `least`), and a wait longer than
/// `most` (the peer was really idle) sets it back to `least`. So a
/// connection with work in flight stops sleeping, and an idle one costs no
/// CPU once its last spin has passed.
///
/// Spinning pays only where the spinning thread has a core to itself: on
/// a machine with more busy threads than cores it takes CPU time from
/// the very threads it waits for.
///
/// - `most` zero: never spin, every wait is a sleep.
/// - `least` is never above `most`.
///
/// ```
/// use std::time::Duration;
/// use busline_core::Spin;
///
/// let us = Duration::from_micros;
/// let spin = Spin::new(us(20), us(500));
/// assert_eq!(spin.after(us(120)), us(240));
/// assert_eq!(spin.after(us(900)), us(20));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spin {
    least: Duration,
    most: Duration,
}

impl Spin {
    /// 20 µs at first, up to 500 µs: a few wake-ups' worth on a virtual
    /// machine, short enough that an idle connection stops spinning within
    /// half a millisecond.
    /// What the shared-memory transport uses, and what an RPC connection
    /// whose ends each have a core to themselves should use.
    pub const ADAPTIVE: Spin = Spin {
        least: Duration::from_micros(20),
        most: Duration::from_micros(500),
    };

    /// Never spin: every wait is a sleep.
    pub const NONE: Spin = Spin {
        least: Duration::ZERO,
        most: Duration::ZERO,
    };

    /// Spin at least `least` and at most `most` (`least` is lowered to
    /// `most` if above it).
    pub const fn new(least: Duration, most: Duration) -> Spin {
        let least = if least.as_nanos() > most.as_nanos() {
            most
        } else {
            least
        };
        Spin { least, most }
    }

    /// The spin for the first wait, and after an idle one.
    pub const fn least(self) -> Duration {
        self.least
    }

    /// The longest spin.
    pub const fn most(self) -> Duration {
        self.most
    }

    /// The spin for the next wait, after one that lasted `waited`.
    pub fn after(self, waited: Duration) -> Duration {
        if waited > self.most {
            self.least
        } else {
            waited.saturating_mul(2).max(self.least).min(self.most)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spin_stretches_to_fit_short_waits_and_resets_after_idle_ones() {
        let us = Duration::from_micros;
        let spin = Spin::new(us(20), us(500));
        // Found during the spin: stays at the least.
        assert_eq!(spin.after(us(3)), us(20));
        // Woken soon after falling asleep: twice that wait next time.
        assert_eq!(spin.after(us(120)), us(240));
        // Never beyond the limit.
        assert_eq!(spin.after(us(400)), us(500));
        // Longer than the limit: the peer was idle, back to the least.
        assert_eq!(spin.after(us(501)), us(20));
        assert_eq!(spin.after(Duration::from_secs(3)), us(20));
    }

    #[test]
    fn no_spin_and_inverted_bounds_never_spin_past_the_limit() {
        let us = Duration::from_micros;
        assert_eq!(Spin::NONE.after(us(0)), Duration::ZERO);
        assert_eq!(Spin::NONE.after(us(50)), Duration::ZERO);
        let inverted = Spin::new(us(100), us(10));
        assert_eq!(inverted.least(), us(10));
        assert_eq!(inverted.after(us(3)), us(10));
        assert_eq!(inverted.after(us(11)), us(10));
        // No overflow at the far end.
        let unbounded = Spin::new(Duration::ZERO, Duration::MAX);
        assert_eq!(unbounded.after(Duration::MAX), Duration::MAX);
    }
}
