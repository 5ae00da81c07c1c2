//! The receiving end of pub/sub on a broker client.

use std::{
    collections::VecDeque,
    fmt,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
};

use busline_core::{Payload, Result};

use super::{
    queue::{queue, QueueBounds, QueueReceiver, QueueSender},
    signing::{Kind, Signer},
};
use futures::{task::AtomicWaker, Stream};
use serde::de::DeserializeOwned;

use super::topic;

/// One message published on a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// The topic it was published on.
    pub topic: String,
    /// Its payload, exactly as the publisher encoded it.
    pub payload: Payload,
}

impl Publication {
    /// The payload decoded as `T` (a single value published over JSON-RPC
    /// comes wrapped in an array, which this takes off).
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        self.payload.decode_params()
    }

    /// The bytes it owns beside its own size, as a queue counts them.
    fn heap_len(&self) -> usize {
        self.topic.capacity() + self.payload.len()
    }
}

/// What a [`Subscription`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A matching publication.
    Message(Publication),
    /// This many matching publications were dropped because the
    /// subscriber fell behind (at the broker or here); nothing is lost
    /// silently.
    Lagged(u64),
    /// The connection to the broker broke: what was published until it
    /// is restored is not seen. A client that reconnects
    /// ([`BrokerClientBuilder::reconnect`]) resubscribes and the stream
    /// goes on; otherwise it ends after this.
    ///
    /// [`BrokerClientBuilder::reconnect`]: super::BrokerClientBuilder::reconnect
    Interrupted,
}

/// The subscriptions of one client, matched against every publication the
/// broker delivers to it.
#[derive(Debug, Default)]
pub(crate) struct Subscribers {
    subs: Mutex<Vec<Local>>,
    next_id: AtomicU64,
    /// What each subscription may buffer before further publications are
    /// dropped (and counted, see [`Event::Lagged`]).
    bounds: QueueBounds,
}

#[derive(Debug)]
struct Local {
    id: u64,
    channel: String,
    pattern: String,
    tx: QueueSender<Result<Event>>,
    missed: Arc<AtomicU64>,
    interrupted: Arc<AtomicBool>,
    /// Wakes the reader when something is missed, which the queue alone
    /// would not.
    waker: Arc<AtomicWaker>,
    /// Checks publications on a protected channel.
    signer: Option<Arc<Signer>>,
}

/// The outcome of checking a publication's signature, once per key.
type Checked = Vec<(*const Signer, Result<Payload>)>;

impl Local {
    /// Whether publication `routed` (see [`Subscribers::deliver`]) is for
    /// this subscription.
    fn wants(&self, routed: &str, channel_len: usize) -> bool {
        routed[..channel_len] == self.channel
            && topic::matches(&self.pattern, &routed[channel_len + 1..])
    }

    /// The payload this subscription gets: as published, or on a protected
    /// channel, checked (once per key: a second check would see a replay).
    fn check(&self, routed: &str, payload: &Payload, checked: &mut Checked) -> Result<Payload> {
        let Some(signer) = &self.signer else {
            return Ok(payload.clone());
        };
        let key = Arc::as_ptr(signer);
        if let Some((_, result)) = checked.iter().find(|(k, _)| *k == key) {
            return result.clone();
        }
        let result = signer
            .verify(Kind::Publication, routed, None, payload)
            .map(|(inner, _)| inner);
        checked.push((key, result.clone()));
        result
    }

    /// Queue a publication on `topic` (or why its payload was refused);
    /// if the queue is full, count it missed.
    fn push(&self, topic: String, payload: Result<Payload>) {
        let publication = payload.map(|payload| Publication { topic, payload });
        let heap = publication.as_ref().map_or(0, Publication::heap_len);
        let queued = self.tx.push(publication.map(Event::Message), heap);
        if queued.is_err() {
            self.missed.fetch_add(1, Ordering::Relaxed);
            self.waker.wake();
        }
    }
}

impl Subscribers {
    /// No subscriptions yet; each will buffer up to `bounds`.
    pub(crate) fn new(bounds: QueueBounds) -> Subscribers {
        Subscribers {
            bounds,
            ..Subscribers::default()
        }
    }

    /// A new local subscription; the broker must be told separately.
    pub(crate) fn add(
        self: &Arc<Self>,
        channel: &str,
        pattern: &str,
        signer: Option<Arc<Signer>>,
    ) -> Subscription {
        let (tx, rx) = queue(self.bounds);
        let missed = Arc::new(AtomicU64::new(0));
        let interrupted = Arc::new(AtomicBool::new(false));
        let waker = Arc::new(AtomicWaker::new());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().push(Local {
            id,
            channel: channel.to_owned(),
            pattern: pattern.to_owned(),
            tx,
            missed: missed.clone(),
            interrupted: interrupted.clone(),
            waker: waker.clone(),
            signer,
        });
        Subscription {
            rx,
            read: VecDeque::new(),
            missed,
            interrupted,
            waker,
            owner: Arc::downgrade(self),
            id,
            on_drop: None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Local>> {
        self.subs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hand publication `routed` (its routed name: the channel's
    /// `channel_len` bytes, `#`, the topic) to every matching subscription;
    /// on a protected channel, checked once per key (a second check would
    /// see a replay). The last one it goes to gets the name's own memory
    /// for its topic, so one subscription costs no copy of it.
    pub(crate) fn deliver(&self, mut routed: String, channel_len: usize, payload: Payload) {
        let subs = self.lock();
        let mut checked = Vec::new();
        // Each match waits for the next one to know whether it is the last.
        let mut held: Option<&Local> = None;
        for sub in subs.iter().filter(|sub| sub.wants(&routed, channel_len)) {
            if let Some(earlier) = held.replace(sub) {
                let checked_payload = earlier.check(&routed, &payload, &mut checked);
                earlier.push(routed[channel_len + 1..].to_owned(), checked_payload);
            }
        }
        if let Some(last) = held {
            let checked_payload = last.check(&routed, &payload, &mut checked);
            routed.replace_range(..=channel_len, "");
            last.push(routed, checked_payload);
        }
    }

    /// The broker dropped `missed` publications on `channel` for us. It
    /// does not say which topics, so every subscription on the channel
    /// hears of it: a gap may be reported to one that missed nothing, never
    /// the other way round.
    pub(crate) fn lagged(&self, channel: &str, missed: u64) {
        for sub in self.lock().iter().filter(|s| s.channel == channel) {
            sub.missed.fetch_add(missed, Ordering::Relaxed);
            sub.waker.wake();
        }
    }

    /// The connection broke: every subscription hears of the gap.
    pub(crate) fn interrupt(&self) {
        for sub in self.lock().iter() {
            // In the queue, after what came before the cut; said at once
            // if the queue is full.
            if sub.tx.push(Ok(Event::Interrupted), 0).is_err() {
                sub.interrupted.store(true, Ordering::Release);
                sub.waker.wake();
            }
        }
    }

    /// The connection is gone for good: every subscription ends once its
    /// queue is read.
    pub(crate) fn close_all(&self) {
        let closed = std::mem::take(&mut *self.lock());
        for sub in closed {
            sub.waker.wake();
        }
    }

    /// The subscriptions on `channel` end (the client is no longer in it).
    pub(crate) fn close_channel(&self, channel: &str) {
        let mut subs = self.lock();
        for sub in subs.iter().filter(|s| s.channel == channel) {
            sub.waker.wake();
        }
        subs.retain(|s| s.channel != channel);
    }

    /// Each `(channel, pattern)` some subscription wants, once.
    pub(crate) fn patterns(&self) -> Vec<(String, String)> {
        let mut wanted: Vec<(String, String)> = self
            .lock()
            .iter()
            .map(|s| (s.channel.clone(), s.pattern.clone()))
            .collect();
        wanted.sort();
        wanted.dedup();
        wanted
    }

    /// Remove subscription `id`; whether another one still wants
    /// `(channel, pattern)` from the broker.
    fn remove(&self, id: u64) -> Option<(String, String, bool)> {
        let mut subs = self.lock();
        let at = subs.iter().position(|s| s.id == id)?;
        let gone = subs.remove(at);
        let shared = subs
            .iter()
            .any(|s| s.channel == gone.channel && s.pattern == gone.pattern);
        Some((gone.channel, gone.pattern, shared))
    }
}

/// Tells the broker a `(channel, pattern)` is no longer wanted.
pub(crate) type Unsubscribe = Box<dyn FnOnce(String, String) + Send + Sync>;

/// Publications matching one pattern on one channel, as a stream of
/// [`Event`]s. On a protected channel, a publication whose signature does
/// not check (forged, altered or replayed) comes as an
/// [`Error::Unauthorized`](busline_core::Error::Unauthorized) item instead.
/// Dropping the subscription unsubscribes.
pub struct Subscription {
    rx: QueueReceiver<Result<Event>>,
    /// A batch taken off the queue, being read; it holds its room in the
    /// queue until all of it is read.
    read: VecDeque<Result<Event>>,
    missed: Arc<AtomicU64>,
    interrupted: Arc<AtomicBool>,
    waker: Arc<AtomicWaker>,
    owner: std::sync::Weak<Subscribers>,
    id: u64,
    on_drop: Option<Unsubscribe>,
}

impl Subscription {
    pub(crate) fn on_drop(mut self, unsubscribe: Unsubscribe) -> Self {
        self.on_drop = Some(unsubscribe);
        self
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .finish()
    }
}

impl Subscription {
    /// A gap or an interruption to tell of before any more messages.
    /// Looked at before every message: read first, written only when
    /// there is one, so the deliverer's cache line is not taken each time.
    fn notice(&self) -> Option<Event> {
        if self.missed.load(Ordering::Relaxed) > 0 {
            return Some(Event::Lagged(self.missed.swap(0, Ordering::Relaxed)));
        }
        (self.interrupted.load(Ordering::Acquire) && self.interrupted.swap(false, Ordering::AcqRel))
            .then_some(Event::Interrupted)
    }
}

impl Stream for Subscription {
    type Item = Result<Event>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Event>>> {
        // A gap is reported as soon as it is known, ahead of messages
        // still queued.
        if let Some(notice) = self.notice() {
            return Poll::Ready(Some(Ok(notice)));
        }
        let this = &mut *self;
        if this.read.is_empty() {
            match this.rx.poll_take(cx, &mut this.read, READ_BATCH) {
                Poll::Pending => {
                    // Only a reader about to wait needs waking for a gap:
                    // it registers, then looks again, so a gap reported in
                    // between is not missed.
                    this.waker.register(cx.waker());
                    return match this.notice() {
                        Some(notice) => Poll::Ready(Some(Ok(notice))),
                        None => Poll::Pending,
                    };
                }
                Poll::Ready(0) => return Poll::Ready(None),
                Poll::Ready(_) => {}
            }
        }
        let next = this.read.pop_front();
        if this.read.is_empty() {
            this.rx.release();
        }
        Poll::Ready(next)
    }
}

/// The most publications a subscription takes off its queue at once.
const READ_BATCH: usize = 64;

impl Drop for Subscription {
    fn drop(&mut self) {
        let Some(subscribers) = self.owner.upgrade() else {
            return;
        };
        if let Some((channel, pattern, shared)) = subscribers.remove(self.id) {
            if let (false, Some(unsubscribe)) = (shared, self.on_drop.take()) {
                unsubscribe(channel, pattern);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    fn published(name: &str) -> (String, usize) {
        (name.to_owned(), name.find('#').expect("a routed topic"))
    }

    #[tokio::test]
    async fn each_matching_subscription_gets_the_topic_once() {
        let subs = Arc::new(Subscribers::new(QueueBounds::default()));
        let mut all = subs.add("news", ">", None);
        let mut sport = subs.add("news", "sport.*", None);
        let mut weather = subs.add("news", "weather", None);
        let mut elsewhere = subs.add("other", ">", None);
        let payload = Payload::from_bytes(busline_core::Encoding::Binary, vec![1, 2, 3]);
        let (routed, at) = published("news#sport.chess");
        subs.deliver(routed, at, payload.clone());

        for sub in [&mut all, &mut sport] {
            match sub.next().await {
                Some(Ok(Event::Message(p))) => {
                    assert_eq!(p.topic, "sport.chess");
                    assert_eq!(p.payload, payload);
                }
                other => panic!("expected the publication, got {other:?}"),
            }
        }
        for sub in [&mut all, &mut sport, &mut weather, &mut elsewhere] {
            assert!(
                futures::poll!(sub.next()).is_pending(),
                "once, and only where wanted"
            );
        }
    }

    #[tokio::test]
    async fn a_queue_counts_the_topic_it_holds_and_gives_it_back() {
        let bounds = QueueBounds {
            publications: 100,
            bytes: 4 * std::mem::size_of::<Result<Event>>() + 64,
        };
        let subs = Arc::new(Subscribers::new(bounds));
        let mut sub = subs.add("c", ">", None);
        let payload = Payload::from_bytes(busline_core::Encoding::Binary, vec![0; 8]);
        for _ in 0..10 {
            let (routed, at) = published("c#a.topic");
            subs.deliver(routed, at, payload.clone());
        }
        let mut seen = 0;
        let mut lagged = 0;
        while seen + lagged < 10 {
            match sub.next().await {
                Some(Ok(Event::Message(_))) => seen += 1,
                Some(Ok(Event::Lagged(n))) => lagged += n,
                other => panic!("unexpected {other:?}"),
            }
        }
        // Each entry holds its own size, the topic's memory (the routed
        // name's, "c#a.topic": 9 bytes) and the payload's 8: three fit.
        assert_eq!((seen, lagged), (3, 7), "the byte bound counts the topic");
        // Everything read was given back: a full queue's worth fits again.
        for _ in 0..seen {
            let (routed, at) = published("c#a.topic");
            subs.deliver(routed, at, payload.clone());
        }
        for _ in 0..seen {
            assert!(matches!(sub.next().await, Some(Ok(Event::Message(_)))));
        }
    }

    #[tokio::test]
    async fn a_drained_queue_takes_one_publication_of_any_size() {
        let subs = Arc::new(Subscribers::new(QueueBounds {
            publications: 1000,
            bytes: 10_000,
        }));
        let mut sub = subs.add("c", ">", None);
        let (routed, at) = published("c#small");
        subs.deliver(
            routed,
            at,
            Payload::from_bytes(busline_core::Encoding::Binary, vec![0; 8]),
        );
        assert!(matches!(sub.next().await, Some(Ok(Event::Message(_)))));
        // The reader has read everything but not yet polled again.
        let big = Payload::from_bytes(busline_core::Encoding::Binary, vec![0; 20_000]);
        let (routed, at) = published("c#big");
        subs.deliver(routed, at, big.clone());
        match sub.next().await {
            Some(Ok(Event::Message(p))) => assert_eq!(p.payload, big),
            other => panic!("the oversized publication should pass alone, got {other:?}"),
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_reader_that_always_finds_one_lets_other_tasks_run() {
        let subs = Arc::new(Subscribers::new(QueueBounds {
            publications: 100_000,
            bytes: usize::MAX,
        }));
        let mut sub = subs.add("c", ">", None);
        let payload = Payload::from_bytes(busline_core::Encoding::Binary, vec![1]);
        for _ in 0..20_000 {
            let (routed, at) = published("c#t");
            subs.deliver(routed, at, payload.clone());
        }
        let ran = Arc::new(AtomicBool::new(false));
        let other = ran.clone();
        tokio::spawn(async move { other.store(true, Ordering::Release) });
        let mut read_before = 0;
        for i in 1..=20_000 {
            assert!(matches!(sub.next().await, Some(Ok(Event::Message(_)))));
            if !ran.load(Ordering::Acquire) {
                read_before = i;
            }
        }
        assert!(
            read_before < 20_000,
            "the other task ran only after all {read_before} were read"
        );
    }
}
