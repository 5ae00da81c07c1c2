//! This broker on the backbone: what its calls out, the calls it serves
//! and its publications share.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, RwLock,
    },
};

use async_nats::Message;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_util::sync::CancellationToken;

use super::{
    subject::Subjects,
    wire::{self, WINDOW},
};
use crate::broker::BrokerClient;

/// Most calls from other brokers served at once; past it, callers get
/// [`Error::Overloaded`](busline_core::Error::Overloaded).
pub const MAX_SERVED: usize = 4096;

/// A served call's control, as its caller last sent it: the stream items
/// it takes up to, or `None` once cancelled.
pub(super) type Control = watch::Sender<Option<u64>>;

/// Which brokers answer for a channel's method, by the shortest path.
pub(super) type Targets = HashMap<(String, String), Vec<String>>;

/// What this broker's side of the backbone shares.
pub(super) struct Node {
    pub(super) nats: async_nats::Client,
    pub(super) subjects: Subjects,
    /// This broker's id.
    pub(super) id: String,
    pub(super) local: BrokerClient,
    /// The calls out awaiting answers, by call id: the broker called, where
    /// its answers go, and what ends the call if it leaves.
    pending: Mutex<HashMap<u64, Pending>>,
    next_id: AtomicU64,
    /// The calls served to other brokers, by control id.
    pub(super) served: Mutex<HashMap<u64, Arc<Control>>>,
    /// Where each channel's methods are called, by the latest announces.
    targets: RwLock<Targets>,
    /// Turns among the brokers that answer for a method.
    turn: AtomicUsize,
    /// The brokers on the backbone now, and those this one relays for:
    /// what came through one of them is not passed back onto it.
    known: RwLock<HashSet<String>>,
    /// Calls from other brokers being served.
    pub(super) serving: Arc<Semaphore>,
    /// The channels it carries (all if `None`).
    allow: Option<BTreeSet<String>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("id", &self.id).finish()
    }
}

/// A call out, as the answers to it find it.
struct Pending {
    target: String,
    answers: mpsc::Sender<Message>,
    gone: CancellationToken,
}

/// Room kept in a call's queue for what matters: a stream's window of
/// items and its end (or error).
const KEPT: usize = WINDOW as usize + 2;
/// How many answers a call holds unread: [`KEPT`], and as many words that
/// the provider is still at it.
const ROOM: usize = KEPT + WINDOW as usize;

/// A call out, awaiting its answers; dropped, it is forgotten.
pub(super) struct Awaiting {
    node: Arc<Node>,
    pub(super) id: u64,
    pub(super) answers: mpsc::Receiver<Message>,
    /// Cancelled when the broker called leaves the backbone.
    pub(super) gone: CancellationToken,
}

impl Drop for Awaiting {
    fn drop(&mut self) {
        lock(&self.node.pending).remove(&self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Node {
    pub(super) fn new(
        nats: async_nats::Client,
        subjects: Subjects,
        id: String,
        local: BrokerClient,
        allow: Option<BTreeSet<String>>,
    ) -> Node {
        Node {
            nats,
            subjects,
            id,
            local,
            pending: Mutex::default(),
            next_id: AtomicU64::new(1),
            served: Mutex::default(),
            targets: RwLock::default(),
            turn: AtomicUsize::new(0),
            known: RwLock::default(),
            serving: Arc::new(Semaphore::new(MAX_SERVED)),
            allow,
        }
    }

    /// A fresh id, for a call out or a call served.
    pub(super) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A new call out to broker `target`.
    pub(super) fn awaiting(self: &Arc<Self>, target: &str) -> Awaiting {
        let id = self.next_id();
        let gone = CancellationToken::new();
        let (tx, answers) = mpsc::channel(ROOM);
        let pending = Pending {
            target: target.to_owned(),
            answers: tx,
            gone: gone.clone(),
        };
        lock(&self.pending).insert(id, pending);
        Awaiting {
            node: self.clone(),
            id,
            answers,
            gone,
        }
    }

    /// Hand an answer to its call. Items and the end never find its queue
    /// full (there are at most a window of items unread, and room is kept
    /// for them); a word that the provider is still at it is dropped when
    /// only that room is left (the call has plenty to read), as is an
    /// answer to a call that is gone.
    pub(super) fn answered(&self, msg: Message) {
        let Some(id) = Subjects::parse_id(&msg.subject) else {
            return;
        };
        let pending = lock(&self.pending);
        let Some(call) = pending.get(&id) else {
            return;
        };
        if wire::is_alive(&msg) && call.answers.capacity() <= KEPT {
            return;
        }
        let _ = call.answers.try_send(msg);
    }

    /// End the calls awaiting answers from `broker`, which left: they fail
    /// at once instead of waiting out [`SILENCE`](super::wire::SILENCE).
    pub(super) fn left(&self, broker: &str) {
        lock(&self.pending).retain(|_, call| {
            if call.target == broker {
                call.gone.cancel();
            }
            call.target != broker
        });
    }

    /// The brokers answering for `method` on `channel`, the next turn's
    /// first.
    pub(super) fn targets(&self, channel: &str, method: &str) -> Vec<String> {
        let targets = self.targets.read().unwrap_or_else(|p| p.into_inner());
        let Some(brokers) = targets.get(&(channel.to_owned(), method.to_owned())) else {
            return Vec::new();
        };
        let mut brokers = brokers.clone();
        if !brokers.is_empty() {
            let first = self.turn.fetch_add(1, Ordering::Relaxed) % brokers.len();
            brokers.rotate_left(first);
        }
        brokers
    }

    pub(super) fn set_targets(&self, targets: Targets) {
        *self.targets.write().unwrap_or_else(|p| p.into_inner()) = targets;
    }

    /// Whether `broker` is on the backbone (or this broker relays for it).
    pub(super) fn is_known(&self, broker: &str) -> bool {
        self.known
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(broker)
    }

    /// Note `broker` on the backbone as soon as it is heard (its
    /// publications are taken from then on).
    pub(super) fn note_known(&self, broker: &str) {
        if !self.is_known(broker) {
            self.known
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(broker.to_owned());
        }
    }

    pub(super) fn set_known(&self, known: HashSet<String>) {
        *self.known.write().unwrap_or_else(|p| p.into_inner()) = known;
    }

    /// Whether this broker's side of the backbone carries `channel`.
    pub(super) fn carries(&self, channel: &str) -> bool {
        self.allow
            .as_ref()
            .map_or(true, |allow| allow.contains(channel))
    }

    /// The largest message the NATS server takes (its default until it
    /// has said).
    pub(super) fn max_payload(&self) -> usize {
        match self.nats.server_info().max_payload {
            0 => 1024 * 1024,
            max => max,
        }
    }
}
