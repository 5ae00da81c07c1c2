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

use busline_core::{Error, Message, Payload, Splices};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{
    protocol::{self, Lagged},
    queue::{queue, QueueBounds, QueueReceiver, QueueSender},
};
use crate::rpc::{Client, Outgoing, SharedFrames};

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

/// A publication's routed name in a subscriber's queue: its own when the
/// publication goes to that one subscriber (written without a copy), shared
/// when it goes to several.
#[derive(Debug)]
enum Name {
    Own(String),
    Shared(Arc<str>),
}

impl Name {
    /// The bytes it holds, as the queue counts them: a shared name counts
    /// in full in every queue, erring on the safe side.
    fn heap(&self) -> usize {
        match self {
            Name::Own(name) => name.capacity(),
            Name::Shared(name) => name.len(),
        }
    }

    fn into_string(self) -> String {
        match self {
            Name::Own(name) => name,
            Name::Shared(name) => String::from(&*name),
        }
    }
}

/// What waits in a subscriber's queue.
#[derive(Debug)]
enum Queued {
    /// A publication's routed name and payload.
    Publication(Name, Payload),
    /// A publication encoded already for the subscriber's codec, shared
    /// with the other subscribers on the same server (see [`Copies`]), and
    /// the bytes of its name and payload.
    Frame(Bytes, usize),
    /// Nothing to deliver: wakes the delivery to tell of missed
    /// publications (see [`Outlet::lagged`]).
    Nudge,
}

impl Queued {
    /// The bytes it holds, as the queue counts them: a shared frame as its
    /// name and payload, as if it went to this subscriber alone (its
    /// encoding is the codec's business, and counting it would make a
    /// subscriber's bound depend on who else subscribes).
    fn heap(&self) -> usize {
        match self {
            Queued::Publication(name, payload) => name.heap() + payload.len(),
            Queued::Frame(_, heap) => *heap,
            Queued::Nudge => 0,
        }
    }
}

/// The sending side of one subscriber's queue.
#[derive(Debug, Clone)]
pub(crate) struct Outlet {
    tx: QueueSender<Queued>,
    /// Publications dropped per channel since the last notice.
    missed: Arc<Mutex<HashMap<String, u64>>>,
    peer: Client,
    policy: SlowSubscriber,
}

impl Outlet {
    /// Start delivering to `peer` through a queue within `bounds`.
    pub(crate) fn start(peer: Client, bounds: QueueBounds, policy: SlowSubscriber) -> Outlet {
        let (tx, rx) = queue(bounds);
        let missed = Arc::new(Mutex::new(HashMap::new()));
        tokio::spawn(deliver(peer.clone(), rx, missed.clone()));
        Outlet {
            tx,
            missed,
            peer,
            policy,
        }
    }

    /// Tell the subscriber, with its next publications (or at once if
    /// none are queued), that it missed `count` of `channel`'s.
    pub(crate) fn lagged(&self, channel: &str, count: u64) {
        let mut missed = self.missed.lock().unwrap_or_else(|p| p.into_inner());
        let total = missed.entry(channel.to_owned()).or_default();
        *total = total.saturating_add(count);
        drop(missed);
        // If the queue is full, what is in it carries the notice soon
        // anyway.
        let _ = self.queue(Queued::Nudge);
    }

    /// The encoding the subscriber reads.
    pub(crate) fn encoding(&self) -> busline_core::Encoding {
        self.peer.encoding()
    }

    /// Queue `payload` of `channel` under the routed name `method`, shared
    /// with other subscribers' queues; if the queue is full, count it
    /// missed or disconnect the subscriber, as configured.
    pub(crate) fn offer(&self, channel: &str, method: Arc<str>, payload: Payload) {
        if self
            .queue(Queued::Publication(Name::Shared(method), payload))
            .is_err()
        {
            self.refused(channel);
        }
    }

    /// As [`Outlet::offer`], with the publication encoded already.
    fn offer_frame(&self, channel: &str, frame: Bytes, heap: usize) {
        if self.queue(Queued::Frame(frame, heap)).is_err() {
            self.refused(channel);
        }
    }

    /// As [`Outlet::offer`], for the only subscriber a publication goes
    /// to: `method`, whose first `channel_len` bytes name the channel, is
    /// queued as it is.
    pub(crate) fn offer_own(&self, method: String, channel_len: usize, payload: Payload) {
        if let Err(Queued::Publication(Name::Own(method), _)) =
            self.queue(Queued::Publication(Name::Own(method), payload))
        {
            self.refused(&method[..channel_len]);
        }
    }

    /// Queue a publication; what the queue refused comes back.
    fn queue(&self, entry: Queued) -> Result<(), Queued> {
        let heap = entry.heap();
        self.tx.push(entry, heap)
    }

    /// A publication of `channel` found the queue full.
    fn refused(&self, channel: &str) {
        match self.policy {
            SlowSubscriber::Drop => {
                let mut missed = self.missed.lock().unwrap_or_else(|p| p.into_inner());
                *missed.entry(channel.to_owned()).or_default() += 1;
            }
            SlowSubscriber::Disconnect => {
                let bounds = self.tx.bounds();
                self.peer.close(Error::Overloaded(format!(
                    "too slow a subscriber: its queue was full ({} publications or \
                     {} bytes; raise the broker's subscriber_queue or \
                     subscriber_queue_bytes, or read faster)",
                    bounds.publications, bounds.bytes
                )))
            }
        }
    }
}

/// One publication (or relayed one) on its way to several subscribers:
/// its name shared by their queues, and for subscribers on a server whose
/// codec encodes alike ([`SharedFrames`]), its frame encoded once per
/// server instead of once per subscriber.
#[derive(Debug)]
pub(crate) struct Copies<'a> {
    name: &'a str,
    payload: &'a Payload,
    shared: Option<Arc<str>>,
    /// Each server's frame, or `None` if its codec refused it (too large):
    /// then the name goes, and the subscriber's connection says why it
    /// cannot be written, as for any notification.
    frames: Vec<(SharedFrames, Option<Bytes>)>,
}

impl<'a> Copies<'a> {
    /// `payload` under routed name `name`, not offered to anyone yet.
    pub(crate) fn new(name: &'a str, payload: &'a Payload) -> Copies<'a> {
        Copies {
            name,
            payload,
            shared: None,
            frames: Vec::new(),
        }
    }

    /// Queue it for `outlet`, a subscriber of `channel`. Only small
    /// publications are encoded here, under the broker's lock: a large
    /// one is left to each connection, which writes its payload from
    /// where it is instead of copying it into a frame.
    pub(crate) fn offer(&mut self, outlet: &Outlet, channel: &str) {
        if self.payload.len() < Splices::MIN_LEN {
            if let Some(frame) = outlet.peer.shared_frames().and_then(|f| self.frame(f)) {
                let heap = self.name.len() + self.payload.len();
                return outlet.offer_frame(channel, frame, heap);
            }
        }
        let name = self.shared.get_or_insert_with(|| Arc::from(self.name));
        outlet.offer(channel, name.clone(), self.payload.clone());
    }

    /// Its frame for `frames`' server, encoded the first time it is asked.
    fn frame(&mut self, frames: &SharedFrames) -> Option<Bytes> {
        if let Some((_, frame)) = self.frames.iter().find(|(f, _)| f.same_as(frames)) {
            return frame.clone();
        }
        let frame = frames
            .encode(Message::Notify {
                method: self.name.to_owned(),
                payload: self.payload.clone(),
            })
            .ok();
        self.frames.push((frames.clone(), frame.clone()));
        frame
    }
}

async fn deliver(
    peer: Client,
    mut rx: QueueReceiver<Queued>,
    missed: Arc<Mutex<HashMap<String, u64>>>,
) {
    let mut queued = Vec::with_capacity(BATCH);
    while rx.take(&mut queued, BATCH).await > 0 {
        // Handed to the connection: the queue has room again.
        rx.release();
        let mut batch: Vec<Outgoing> = queued
            .drain(..)
            .filter_map(|entry| match entry {
                Queued::Nudge => None,
                Queued::Publication(name, payload) => Some(
                    Message::Notify {
                        method: name.into_string(),
                        payload,
                    }
                    .into(),
                ),
                Queued::Frame(frame, _) => Some(Outgoing::Frame(frame)),
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
                batch.push(
                    Message::Notify {
                        method: protocol::LAGGED.to_owned(),
                        payload,
                    }
                    .into(),
                );
            }
        }
        // Written before more is taken: what waits in the connection's own
        // queue stays bounded to one batch.
        if peer.notify_batch(batch).await.is_err() {
            return; // the subscriber is gone
        }
    }
}
