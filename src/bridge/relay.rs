//! What passes through a bridge: calls, publications, and word of
//! publications lost on the way.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use busline_core::{Encoding, Error, Payload};
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::{
    broker::{
        self, queue, BrokerClient, Lagged, QueueBounds, QueueReceiver, RelayLagged, RelaySink,
        LAGGED, RELAY_LAGGED,
    },
    rpc::{Reply, Request},
};

/// Publications a bridge holds on their way to the other broker; past
/// this many, or [`RELAY_QUEUE_BYTES`], it drops them and tells the
/// subscribers over there how many.
pub(super) const RELAY_QUEUE: usize = 65536;
/// Bytes the publications a bridge holds on their way may take (names,
/// payloads and queue entries), as a broker's subscriber queue.
pub(super) const RELAY_QUEUE_BYTES: usize = broker::DEFAULT_SUBSCRIBER_QUEUE_BYTES;

/// How soon word of lost publications goes out when nothing else does.
const TELL_LOST_EVERY: Duration = Duration::from_millis(100);

/// Passes the calls a bridge gets on one side to the other side's broker,
/// under the same name, payload untouched.
pub(super) fn calls_to(
    to: BrokerClient,
) -> impl tower::Service<Request, Response = Reply, Error = Error, Future = impl Send>
       + Clone
       + Send
       + Sync
       + 'static {
    tower::service_fn(move |req: Request| {
        let to = to.clone();
        async move { broker::pass_on(&to.client(), &req, ()).await }
    })
}

/// Publications lost per channel, not yet told.
type Lost = Arc<Mutex<HashMap<String, u64>>>;

/// A relayed message on its way: its routed name and payload.
type Relayed = (String, Payload);

/// Where what broker `from` relays to the bridge goes: on to the other
/// broker (`to`), in order, through a bounded queue. What cannot be passed
/// on (the queue is full, or `from` dropped some for the bridge) is counted
/// per channel and told to `to` as lost, for its subscribers to know.
pub(super) fn forwarder(from: &str, to: BrokerClient, stop: CancellationToken) -> RelaySink {
    let encoding = to.client().encoding();
    let deliver: Deliver = Arc::new(move |name: String, payload: Payload| {
        let to = to.clone();
        Box::pin(async move { to.client().notify_raw(name, payload).await })
    });
    forwarder_to(from, deliver, encoding, stop)
}

/// Passes a relayed message (a publication, or word of lost ones: its
/// routed name and payload) on, wherever it goes.
pub(crate) type Deliver =
    Arc<dyn Fn(String, Payload) -> BoxFuture<'static, busline_core::Result<()>> + Send + Sync>;

/// As [`forwarder`], passing each relayed message to `deliver`, in order,
/// and word of lost ones encoded as `encoding`. A message `deliver` fails
/// counts as lost.
pub(crate) fn forwarder_to(
    from: &str,
    deliver: Deliver,
    encoding: Encoding,
    stop: CancellationToken,
) -> RelaySink {
    let (tx, rx) = queue::<Relayed>(QueueBounds {
        publications: RELAY_QUEUE,
        bytes: RELAY_QUEUE_BYTES,
    });
    let lost: Lost = Arc::default();
    let forward = Forward {
        deliver,
        encoding,
        from: from.to_owned(),
        lost: lost.clone(),
    };
    tokio::spawn(forward.run(rx, stop));
    Box::new(move |name: &str, payload: &Payload| {
        if name == LAGGED {
            // The bridge itself fell behind on `from`.
            if let Ok(notice) = payload.decode_params::<Lagged>() {
                count(&lost, &notice.channel, notice.missed);
            }
            return;
        }
        let heap = name.len() + payload.len();
        let relayed = (name.to_owned(), payload.clone());
        if tx.push(relayed, heap).is_err() {
            if let Some((channel, missed)) = lost_with(name, payload) {
                count(&lost, &channel, missed);
            }
        }
    })
}

/// The channel and number of publications lost if this relayed message
/// (a publication, or word of lost ones) is.
fn lost_with(name: &str, payload: &Payload) -> Option<(String, u64)> {
    if name == RELAY_LAGGED {
        payload
            .decode_params::<RelayLagged>()
            .map(|n| (n.channel, n.missed))
            .ok()
    } else {
        broker::parse_relayed(name).map(|r| (r.channel.to_owned(), 1))
    }
}

fn count(lost: &Lost, channel: &str, missed: u64) {
    let mut lost = lost.lock().unwrap_or_else(|p| p.into_inner());
    let total = lost.entry(channel.to_owned()).or_default();
    *total = total.saturating_add(missed);
}

/// The task behind a forwarder.
struct Forward {
    deliver: Deliver,
    encoding: Encoding,
    from: String,
    lost: Lost,
}

impl Forward {
    async fn run(self, mut queue: QueueReceiver<Relayed>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(TELL_LOST_EVERY);
        let mut next = Vec::with_capacity(1);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
                _ = queue.take(&mut next, 1) => {
                    // Nothing taken: the queue has ended.
                    let Some((name, payload)) = next.pop() else {
                        return;
                    };
                    queue.release();
                    let missed = lost_with(&name, &payload);
                    if let Err(err) = (self.deliver)(name, payload).await {
                        tracing::debug!(error = %err, "bridge: a publication could not be passed on");
                        if let Some((channel, missed)) = missed {
                            count(&self.lost, &channel, missed);
                        }
                    }
                }
            }
            self.tell_lost().await;
        }
    }

    /// Tell what was lost since the last time.
    async fn tell_lost(&self) {
        let told: Vec<(String, u64)> =
            std::mem::take(&mut *self.lost.lock().unwrap_or_else(|p| p.into_inner()))
                .into_iter()
                .collect();
        for (channel, missed) in told {
            let notice = RelayLagged {
                channel,
                missed,
                via: vec![self.from.clone()],
            };
            let told = match Payload::encode(self.encoding, &notice) {
                Ok(payload) => (self.deliver)(RELAY_LAGGED.to_owned(), payload)
                    .await
                    .is_ok(),
                Err(_) => false,
            };
            if told {
                tracing::warn!(channel = %notice.channel, missed, "bridge: publications lost on the way; told the subscribers");
            } else {
                // Kept for the next time the other broker can be told.
                count(&self.lost, &notice.channel, notice.missed);
            }
        }
    }
}
