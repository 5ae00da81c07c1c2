//! A broker client's connection, and, if asked, its recovery: reconnect
//! with backoff, restore everything the client had, then let calls flow.
//!
//! Semantics across a cut, which the tests hold it to:
//! - Calls in flight when the connection drops fail with
//!   [`Error::Disconnected`]; nothing is retried behind the caller's back,
//!   so nothing runs twice.
//! - Calls made while it is down wait, bounded in number
//!   ([`Reconnect::max_waiting_calls`]) and by their own timeout, and go
//!   out on the new connection once everything is restored.
//! - Subscriptions yield [`Event::Interrupted`] for the gap, then resume.
//!
//! [`Event::Interrupted`]: super::Event::Interrupted

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant},
};

use busline_core::{Error, Payload, Result};
use futures::future::BoxFuture;
use tokio::sync::{broadcast, watch, Semaphore};

use super::{
    keys::ChannelKeys,
    protocol::{Balance, MethodSchema, OwnerPolicy},
    restore,
    subscription::Subscribers,
};
use crate::rpc::{within, Client};

/// How a broker client recovers from a lost connection (a broker restart,
/// a network cut): see [`BrokerClientBuilder::reconnect`].
///
/// [`BrokerClientBuilder::reconnect`]: super::BrokerClientBuilder::reconnect
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reconnect {
    /// Wait before the first attempt; doubled after each failure.
    pub initial_delay: Duration,
    /// The longest wait between attempts.
    pub max_delay: Duration,
    /// Stop trying after this long without a connection (`None`: never);
    /// then waiting and later calls fail with [`Error::Disconnected`].
    pub give_up_after: Option<Duration>,
    /// Calls that may wait for the connection at once (at least 1); more
    /// fail with [`Error::Overloaded`] at once.
    pub max_waiting_calls: usize,
}

impl Default for Reconnect {
    /// 50 ms doubling up to 5 s, never giving up, 1024 waiting calls.
    fn default() -> Self {
        Reconnect {
            initial_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(5),
            give_up_after: None,
            max_waiting_calls: 1024,
        }
    }
}

/// What happens to a broker client's connection, from
/// [`BrokerClient::connection_events`](super::BrokerClient::connection_events).
#[derive(Debug, Clone)]
pub enum ConnectionEvent {
    /// The connection broke; calls in flight failed with this error.
    Disconnected(Error),
    /// Attempt number `n` (from 1) to connect again is starting.
    Reconnecting(u32),
    /// Connected again, and everything restored: calls flow again.
    Restored,
    /// Connected again, but the broker refused to restore `what` (a
    /// channel whose password changed, an id another client took).
    NotRestored {
        /// What could not be restored, e.g. `channel "jobs"`.
        what: String,
        /// Why.
        error: Error,
    },
    /// The give-up window passed without a connection; the client is
    /// closed for good.
    GaveUp(Error),
}

/// Opens a fresh connection, configured as the first one was.
pub(crate) type Connector = Arc<dyn Fn() -> BoxFuture<'static, Result<Client>> + Send + Sync>;

/// Everything a client set up on the broker, to set up again.
#[derive(Debug, Default, Clone)]
pub(crate) struct Record {
    pub(crate) client_id: Option<String>,
    pub(crate) channels: BTreeMap<String, Joined>,
}

/// One joined channel, as it is to be restored.
#[derive(Debug, Default, Clone)]
pub(crate) struct Joined {
    pub(crate) keys: Option<ChannelKeys>,
    /// Joined only as an existing channel ([`BrokerClient::open_existing`](super::BrokerClient::open_existing)):
    /// rejoined so, never created again by this client.
    pub(crate) existing: bool,
    /// Set by this client as the owner; set again if it owns the channel
    /// once more.
    pub(crate) policy: Option<OwnerPolicy>,
    /// Each provided method: its schema, and the brokers it came through
    /// (a bridge's registration; empty for this client's own).
    pub(crate) methods: BTreeMap<String, (Option<MethodSchema>, Vec<String>)>,
    pub(crate) balances: BTreeMap<String, Balance>,
    pub(crate) topics: Vec<String>,
    /// Subscriptions made as a bridge: pattern, and the brokers the demand
    /// came through.
    pub(crate) relays: BTreeMap<String, Vec<String>>,
}

impl Record {
    /// The entry of a joined channel, to update.
    pub(crate) fn joined(&mut self, channel: &str) -> &mut Joined {
        self.channels.entry(channel.to_owned()).or_default()
    }
}

/// Where the connection stands; `Down` and `GaveUp` keep the last
/// connection, closed, for code that only needs a handle.
#[derive(Clone)]
enum State {
    Up(Client),
    Down(Client),
    GaveUp(Client, Error),
}

impl State {
    fn client(&self) -> &Client {
        match self {
            State::Up(c) | State::Down(c) | State::GaveUp(c, _) => c,
        }
    }
}

/// The current connection of a broker client.
pub(crate) struct Link {
    state: watch::Sender<State>,
    pub(crate) record: Arc<Mutex<Record>>,
    /// Calls waiting for the connection to come back; `None`: this client
    /// does not reconnect.
    waiting: Option<Semaphore>,
    max_waiting: usize,
    /// For calls that wait: the configured per-call timeout.
    timeout: Option<Duration>,
    events: broadcast::Sender<ConnectionEvent>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &*self.state.borrow() {
            State::Up(c) if !c.is_closed() => "connected",
            State::Up(_) | State::Down(_) => "disconnected",
            State::GaveUp(..) => "gave up",
        };
        f.debug_struct("Link")
            .field("state", &state)
            .field("reconnects", &self.waiting.is_some())
            .finish()
    }
}

/// Connection events kept for a slow reader.
const EVENT_BACKLOG: usize = 256;

impl Link {
    pub(crate) fn new(
        client: Client,
        record: Arc<Mutex<Record>>,
        reconnect: Option<&Reconnect>,
    ) -> Link {
        let timeout = client.timeout();
        Link {
            state: watch::Sender::new(State::Up(client)),
            record,
            waiting: reconnect.map(|r| Semaphore::new(r.max_waiting_calls.max(1))),
            max_waiting: reconnect.map_or(0, |r| r.max_waiting_calls.max(1)),
            timeout,
            events: broadcast::Sender::new(EVENT_BACKLOG),
        }
    }

    pub(crate) fn events(&self) -> broadcast::Receiver<ConnectionEvent> {
        self.events.subscribe()
    }

    pub(crate) fn record(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection as it is now, whatever its state: for what must not
    /// wait (a subscription dropped), or only needs a handle.
    pub(crate) fn now(&self) -> Client {
        self.state.borrow().client().clone()
    }

    /// Send a notification as [`Client::notify_raw`] does on the
    /// connection [`Link::client`] gives: at once, without taking a handle
    /// to it, when it is up and has room ([`Client::notify_now`]), which
    /// is the path of every publication.
    pub(crate) async fn notify(&self, method: String, payload: Payload) -> Result<()> {
        let now = match &*self.state.borrow() {
            State::Up(client) => client.notify_now(method, payload),
            _ => Err((method, payload)),
        };
        match now {
            Ok(sent) => sent,
            Err((method, payload)) => self.client().await?.notify_raw(method, payload).await,
        }
    }

    /// The connection to send on. Without reconnection, the one there is
    /// (closed or not: its calls then fail with why). With it, a closed
    /// one is waited out until it is restored, within the call timeout; the
    /// handle returned carries what is left of it.
    pub(crate) async fn client(&self) -> Result<Client> {
        let Some(waiting) = &self.waiting else {
            return Ok(self.now());
        };
        match &*self.state.borrow() {
            State::Up(client) if !client.is_closed() => return Ok(client.clone()),
            State::GaveUp(_, why) => return Err(why.clone()),
            _ => {}
        }
        let _slot = waiting.try_acquire().map_err(|_| {
            Error::Overloaded(format!(
                "{} calls are already waiting for the broker connection to be restored \
                 (raise Reconnect::max_waiting_calls)",
                self.max_waiting
            ))
        })?;
        let started = Instant::now();
        let mut state = self.state.subscribe();
        let back = state.wait_for(|s| match s {
            State::Up(client) => !client.is_closed(),
            State::Down(_) => false,
            State::GaveUp(..) => true,
        });
        let ready = within(self.timeout, back)
            .await?
            .map_err(|_| Error::Disconnected("the broker client was dropped".into()))?
            .clone();
        match ready {
            State::GaveUp(_, why) => Err(why),
            ready => {
                let client = ready.client().clone();
                Ok(match self.timeout {
                    Some(limit) => client.with_timeout(limit.saturating_sub(started.elapsed())),
                    None => client,
                })
            }
        }
    }

    /// Close for good, as the application asks: no more reconnecting;
    /// calls fail with `why`.
    pub(crate) fn close(&self, why: Error) {
        let client = self.now();
        self.set(State::GaveUp(client.clone(), why.clone()));
        client.close(why);
    }

    fn is_closed(&self) -> bool {
        matches!(&*self.state.borrow(), State::GaveUp(..))
    }

    fn set(&self, state: State) {
        self.state.send_replace(state);
    }

    fn tell(&self, event: ConnectionEvent) {
        tracing::info!(?event, "broker connection");
        let _ = self.events.send(event);
    }
}

/// Watch the connection; when it ends, reconnect with backoff and jitter,
/// restore, and swap the new connection in. Ends when the client is
/// dropped, closed, or gives up.
pub(crate) async fn supervise(
    link: Weak<Link>,
    first: Client,
    connect: Connector,
    subscribers: Arc<Subscribers>,
    policy: Reconnect,
) {
    let mut end = first.end();
    drop(first);
    loop {
        let why = end.wait().await;
        let Some(strong) = link.upgrade().filter(|l| !l.is_closed()) else {
            return; // every handle is gone, or it was closed on purpose
        };
        strong.set(State::Down(strong.now()));
        strong.tell(ConnectionEvent::Disconnected(why.clone()));
        subscribers.interrupt();
        drop(strong);

        let down_since = Instant::now();
        let mut delay = policy.initial_delay.max(MIN_DELAY);
        let mut attempt = 0u32;
        end = loop {
            if let Some(window) = policy.give_up_after {
                if down_since.elapsed() >= window {
                    let gave_up = Error::Disconnected(format!(
                        "gave up reconnecting to the broker after {window:?} (last: {why})"
                    ));
                    if let Some(strong) = link.upgrade() {
                        strong.set(State::GaveUp(strong.now(), gave_up.clone()));
                        strong.tell(ConnectionEvent::GaveUp(gave_up));
                    }
                    subscribers.close_all();
                    return;
                }
            }
            tokio::time::sleep(jittered(delay)).await;
            delay = delay.saturating_mul(2).min(policy.max_delay.max(MIN_DELAY));
            attempt = attempt.saturating_add(1);
            let Some(strong) = link.upgrade().filter(|l| !l.is_closed()) else {
                return;
            };
            strong.tell(ConnectionEvent::Reconnecting(attempt));
            let client = match connect().await {
                Ok(client) => client,
                Err(err) => {
                    tracing::debug!(error = %err, attempt, "reconnecting failed");
                    continue;
                }
            };
            match restore::restore(&client, &strong, &subscribers).await {
                Ok(subscribed) => {
                    let end = client.end();
                    strong.set(State::Up(client.clone()));
                    strong.tell(ConnectionEvent::Restored);
                    // Dropped while restoring, on the old connection: tell
                    // the new one.
                    restore::unsubscribe_unwanted(&client, subscribed, &subscribers);
                    break end;
                }
                Err(err) => tracing::debug!(error = %err, attempt, "restoring failed"),
            }
        };
    }
}

/// The shortest wait between attempts, so a zero delay cannot spin.
const MIN_DELAY: Duration = Duration::from_millis(1);

/// Between half and one and a half times `delay`, at random, so that
/// clients cut off together do not come back together.
fn jittered(delay: Duration) -> Duration {
    let millis = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
    let jitter = u64::from(getrandom::u32().unwrap_or(0)) % millis.saturating_add(1).max(1);
    delay / 2 + Duration::from_millis(jitter)
}

/// Report a part of the state the broker refused to restore.
pub(crate) fn not_restored(link: &Link, what: String, error: Error) {
    link.tell(ConnectionEvent::NotRestored { what, error });
}
