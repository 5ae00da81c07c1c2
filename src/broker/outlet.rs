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

use busline_core::{Error, Payload};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::{self, error::TrySendError};

use super::protocol::{self, Lagged};
use crate::rpc::Client;

/// Publications written before waiting for the socket.
const BATCH: usize = 64;

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

/// The sending side of one subscriber's queue.
#[derive(Debug, Clone)]
pub(crate) struct Outlet {
    tx: mpsc::Sender<(Arc<str>, Payload)>,
    /// Publications dropped per channel since the last notice.
    missed: Arc<Mutex<HashMap<String, u64>>>,
    peer: Client,
    policy: SlowSubscriber,
    capacity: usize,
}

impl Outlet {
    /// Start delivering to `peer` through a queue of `capacity`.
    pub(crate) fn start(peer: Client, capacity: usize, policy: SlowSubscriber) -> Outlet {
        let capacity = capacity.max(1);
        let (tx, rx) = mpsc::channel(capacity);
        let missed = Arc::new(Mutex::new(HashMap::new()));
        tokio::spawn(deliver(peer.clone(), rx, missed.clone()));
        Outlet {
            tx,
            missed,
            peer,
            policy,
            capacity,
        }
    }

    /// Queue `payload` under the routed name `method`; if the queue is
    /// full, count it missed or disconnect the subscriber, as configured.
    pub(crate) fn offer(&self, channel: &str, method: Arc<str>, payload: Payload) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send((method, payload)) {
            match self.policy {
                SlowSubscriber::Drop => {
                    let mut missed = self.missed.lock().unwrap_or_else(|p| p.into_inner());
                    *missed.entry(channel.to_owned()).or_default() += 1;
                }
                SlowSubscriber::Disconnect => self.peer.close(Error::Overloaded(format!(
                    "too slow a subscriber: {} publications were waiting for it \
                     (raise the broker's subscriber_queue, or read faster)",
                    self.capacity
                ))),
            }
        }
    }
}

async fn deliver(
    peer: Client,
    mut rx: mpsc::Receiver<(Arc<str>, Payload)>,
    missed: Arc<Mutex<HashMap<String, u64>>>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        for (method, payload) in batch.drain(..) {
            if peer.notify_unqueued(&method, payload).is_err() {
                return; // the subscriber is gone
            }
        }
        let notices: Vec<(String, u64)> =
            std::mem::take(&mut *missed.lock().unwrap_or_else(|p| p.into_inner()))
                .into_iter()
                .collect();
        for (channel, count) in notices {
            tracing::debug!(%channel, count, "slow subscriber missed publications");
            let notice = Payload::encode(
                peer.encoding(),
                &Lagged {
                    channel,
                    missed: count,
                },
            );
            if let Ok(notice) = notice {
                if peer.notify_unqueued(protocol::LAGGED, notice).is_err() {
                    return;
                }
            }
        }
        // Bound what waits in the connection's own queue to one batch.
        if peer.flush().await.is_err() {
            return;
        }
    }
}
