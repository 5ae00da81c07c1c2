//! Probing an idle connection, so a dead or frozen peer is noticed.
//!
//! TCP alone does not notice a peer whose machine vanished or whose
//! process froze: a half-open connection waits forever. Every `interval`
//! the driver checks whether anything arrived since the last check; after
//! one silent interval it sends a probe (a request any busline peer
//! answers at once), and after a second it gives the connection up. A
//! peer that goes silent is thus dropped within three intervals.
//!
//! A side at its handler limit reads nothing, probes included, so it
//! cannot answer them: instead it sends a keep-alive every 100 ms while it
//! stays there, and does not count its own not-reading as the peer's
//! silence. A peer that has stopped reading what this side writes gets no
//! such allowance: that is what a frozen peer looks like.

use std::{
    task::{Context, Poll},
    time::Duration,
};

use busline_core::{Error, Message, Payload};
use tokio::time::{interval_at, Instant, Interval, MissedTickBehavior};

/// The method of a probe; drivers answer it themselves.
pub(crate) const PING: &str = "busline.ping";
/// The method of a keep-alive notification, sent by a side too busy to
/// read (and so to answer probes); drivers drop it on arrival.
pub(crate) const ALIVE: &str = "busline.alive";

/// A keep-alive notification.
pub(super) fn keepalive() -> Message {
    Message::Notify {
        method: ALIVE.to_owned(),
        payload: Payload::unit(),
    }
}

/// The id probes go out with, never one a caller uses (those count up
/// from 1).
const PROBE_ID: u64 = u64::MAX;

/// Ticks every `period`, the first one `period` from now; a late tick
/// moves the later ones rather than bunching them up.
pub(super) fn every(period: Duration) -> Interval {
    let mut ticks = interval_at(Instant::now() + period, period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticks
}

/// What the heartbeat wants done after a tick.
pub(super) enum Beat {
    /// Send this probe.
    Probe(Message),
    /// The peer stayed silent through a probe: close with this error.
    Dead(Error),
}

pub(super) struct Heartbeat {
    interval: Duration,
    tick: Interval,
    /// Something arrived (or reading was paused by our own limits) since
    /// the last tick.
    heard: bool,
    /// A probe went out at the last tick.
    probing: bool,
}

impl Heartbeat {
    pub(super) fn new(interval: Duration) -> Heartbeat {
        Heartbeat {
            interval,
            tick: every(interval),
            heard: true,
            probing: false,
        }
    }

    /// A frame arrived, or this side chose not to read: not silence.
    pub(super) fn heard(&mut self) {
        self.heard = true;
    }

    /// At each tick: nothing to do, a probe to send, or a dead peer.
    pub(super) fn poll_beat(&mut self, cx: &mut Context<'_>) -> Poll<Option<Beat>> {
        if self.tick.poll_tick(cx).is_pending() {
            return Poll::Pending;
        }
        // Registers the next tick's waker.
        let _ = self.tick.poll_tick(cx);
        if std::mem::take(&mut self.heard) {
            self.probing = false;
            return Poll::Ready(None);
        }
        if self.probing {
            return Poll::Ready(Some(Beat::Dead(Error::Disconnected(format!(
                "the peer sent nothing for {:?}, not even an answer to a heartbeat: \
                 it is gone or frozen",
                self.interval * 2
            )))));
        }
        self.probing = true;
        Poll::Ready(Some(Beat::Probe(Message::Request {
            id: PROBE_ID,
            method: PING.to_owned(),
            payload: Payload::unit(),
            timeout_ms: None,
        })))
    }
}
