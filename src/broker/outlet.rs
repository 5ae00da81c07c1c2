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

use busline_core::Payload;
use tokio::sync::mpsc::{self, error::TrySendError};

use super::protocol::{self, Lagged};
use crate::rpc::Client;

/// Publications written before waiting for the socket.
const BATCH: usize = 64;

/// The sending side of one subscriber's queue.
#[derive(Debug, Clone)]
pub(crate) struct Outlet {
    tx: mpsc::Sender<(Arc<str>, Payload)>,
    /// Publications dropped per channel since the last notice.
    missed: Arc<Mutex<HashMap<String, u64>>>,
}

impl Outlet {
    /// Start delivering to `peer` through a queue of `capacity`.
    pub(crate) fn start(peer: Client, capacity: usize) -> Outlet {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let missed = Arc::new(Mutex::new(HashMap::new()));
        tokio::spawn(deliver(peer, rx, missed.clone()));
        Outlet { tx, missed }
    }

    /// Queue `payload` under the routed name `method`, or count it missed.
    pub(crate) fn offer(&self, channel: &str, method: Arc<str>, payload: Payload) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send((method, payload)) {
            let mut missed = self.missed.lock().unwrap_or_else(|p| p.into_inner());
            *missed.entry(channel.to_owned()).or_default() += 1;
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
            if peer.notify_raw(&method, payload).is_err() {
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
                if peer.notify_raw(protocol::LAGGED, notice).is_err() {
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
