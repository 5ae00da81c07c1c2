//! Publications on their way to one subscriber connection.
//!
//! Each subscriber connection has one bounded queue, drained by one task
//! that writes publications as notifications and waits for each batch to
//! reach the socket before taking more. A subscriber that cannot keep up
//! fills its queue; further publications for it are dropped and counted,
//! and it is told how many it missed (`busline.lagged`) as soon as there is
//! room. Publishers and other subscribers never wait for it, and memory
//! stays bounded.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use busline_core::{Error, Message, Payload};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{
    budget::{QueueBounds, QueueBudget},
    protocol::{self, Lagged},
};
use crate::rpc::Client;

/// Publications handed to the connection at once, then written before
/// more are taken.
const BATCH: usize = 512;

/// What the broker does with a subscriber whose queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlowSubscriber {
    /// Drop further publications for it, and tell it how many it missed
    /// (the default).
    #[default]
    Drop,
    /// Close its connection with an [`Error::Overloaded`] saying why.
    Disconnect,
}

/// A publication's routed name (shared by every subscriber's queue) and
/// payload.
type Queued = (Arc<str>, Payload);

/// The sending side of one subscriber's queue.
#[derive(Debug, Clone)]
pub(crate) struct Outlet {
    tx: mpsc::UnboundedSender<Queued>,
    /// Publications dropped per channel since the last notice.
    missed: Arc<Mutex<HashMap<String, u64>>>,
    budget: Arc<QueueBudget<Queued>>,
    peer: Client,
    policy: SlowSubscriber,
    bounds: QueueBounds,
}

impl Outlet {
    /// Start delivering to `peer` through a queue within `bounds`.
    pub(crate) fn start(peer: Client, bounds: QueueBounds, policy: SlowSubscriber) -> Outlet {
        let (tx, rx) = mpsc::unbounded_channel();
        let missed = Arc::new(Mutex::new(HashMap::new()));
        let budget = Arc::new(QueueBudget::new(bounds));
        tokio::spawn(deliver(peer.clone(), rx, missed.clone(), budget.clone()));
        Outlet {
            tx,
            missed,
            budget,
            peer,
            policy,
            bounds,
        }
    }

    /// Tell the subscriber, with its next publications (or at once if
    /// none are queued), that it missed `count` of `channel`'s.
    pub(crate) fn lagged(&self, channel: &str, count: u64) {
        let mut missed = self.missed.lock().unwrap_or_else(|p| p.into_inner());
        let total = missed.entry(channel.to_owned()).or_default();
        *total = total.saturating_add(count);
        drop(missed);
        // An empty name wakes the delivery with nothing to deliver; if the
        // queue is full, what is in it carries the notice soon anyway.
        let nudge = Payload::unit();
        let heap = nudge.len();
        let _ = self.budget.try_send(&self.tx, (Arc::from(""), nudge), heap);
    }

    /// The encoding the subscriber reads.
    pub(crate) fn encoding(&self) -> busline_core::Encoding {
        self.peer.encoding()
    }

    /// Queue `payload` under the routed name `method`; if the queue is
    /// full, count it missed or disconnect the subscriber, as configured.
    pub(crate) fn offer(&self, channel: &str, method: Arc<str>, payload: Payload) {
        // The name is shared with the other subscribers' queues; each
        // counts it, erring on the safe side, as it counts the payload.
        let heap = method.len() + payload.len();
        if !self.budget.try_send(&self.tx, (method, payload), heap) {
            match self.policy {
                SlowSubscriber::Drop => {
                    let mut missed = self.missed.lock().unwrap_or_else(|p| p.into_inner());
                    *missed.entry(channel.to_owned()).or_default() += 1;
                }
                SlowSubscriber::Disconnect => self.peer.close(Error::Overloaded(format!(
                    "too slow a subscriber: its queue was full ({} publications or \
                     {} bytes; raise the broker's subscriber_queue or \
                     subscriber_queue_bytes, or read faster)",
                    self.bounds.publications, self.bounds.bytes
                ))),
            }
        }
    }
}

async fn deliver(
    peer: Client,
    mut rx: mpsc::UnboundedReceiver<Queued>,
    missed: Arc<Mutex<HashMap<String, u64>>>,
    budget: Arc<QueueBudget<Queued>>,
) {
    let mut queued = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut queued, BATCH).await > 0 {
        budget.give(
            queued.len(),
            queued
                .iter()
                .map(|(method, payload)| method.len() + payload.len())
                .sum(),
        );
        let mut batch: Vec<Message> = queued
            .drain(..)
            .filter(|(method, _)| !method.is_empty())
            .map(|(method, payload)| Message::Notify {
                method: String::from(&*method),
                payload,
            })
            .collect();
        let notices: Vec<(String, u64)> =
            std::mem::take(&mut *missed.lock().unwrap_or_else(|p| p.into_inner()))
                .into_iter()
                .collect();
        for (channel, count) in notices {
            tracing::debug!(%channel, count, "slow subscriber missed publications");
            let notice = Lagged {
                channel,
                missed: count,
            };
            if let Ok(payload) = Payload::encode(peer.encoding(), &notice) {
                batch.push(Message::Notify {
                    method: protocol::LAGGED.to_owned(),
                    payload,
                });
            }
        }
        // Written before more is taken: what waits in the connection's own
        // queue stays bounded to one batch.
        if peer.notify_batch(batch).await.is_err() {
            return; // the subscriber is gone
        }
    }
}
