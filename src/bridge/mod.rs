//! Bridges: two brokers joined so that the providers of each answer the
//! callers of the other, over whatever transports, codecs and
//! authenticators their clients use.
//!
//! A bridge is a client of both brokers. For every method provided on one
//! side it provides the same method on the other, and passes each call it
//! gets there on to the first side under the same name with the payload
//! untouched (so end-to-end signatures and streams pass through as they
//! are). Each such registration carries its path: the ids of the brokers
//! it came through. A bridge never offers a provider back to a broker on
//! its path, and brokers refuse registrations that would loop, so lines,
//! rings and meshes of brokers are safe; where several paths lead to one
//! provider, each broker sends calls the shortest way and keeps the others
//! for failover.
//!
//! Publications cross the same way: the bridge subscribes on each broker
//! on behalf of the other's subscribers (with the path the demand came
//! by), and passes what it gets on with its origin, its number there and
//! the brokers it went through, so that each broker delivers a publication
//! once however many ways it arrives, and none goes round a loop. What is
//! lost on the way (the bridge, or the broker it reads from, could not
//! keep up) is counted and told to the subscribers on the far side, who
//! see it as [`Event::Lagged`](crate::broker::Event::Lagged).
//!
//! The bridge follows each broker's `busline.system` events (providers,
//! subscriptions and channels coming and going) and also looks again every
//! [`BridgeBuilder::resync`], so a broker whose system channel it cannot
//! read is still followed. When the bridge stops, it closes both clients,
//! which withdraws everything it offered.
//!
//! A channel with a password crosses only if the bridge is given it
//! ([`BridgeBuilder::channel_password`]), and only to a broker where the
//! channel takes the same password (the bridge creates it so if it is
//! missing there; one open without a password is refused, as it would
//! let anyone in). The bridge joins such channels without signing or
//! checking anything itself: what it relays stays signed by its sender and
//! is checked by its receiver, end to end. A bridge thus never gives
//! anyone rights they did not have: without the password nothing of a
//! protected channel crosses.
//!
//! ```
//! use busline::{bridge::Bridge, broker::{Broker, BrokerClient}, rpc::Client,
//!     Address, CborCodec, MemoryTransport};
//!
//! # tokio_test::block_on(async {
//! let (a, b) = (Address::memory("bridge-doc-a"), Address::memory("bridge-doc-b"));
//! let _broker_a = Broker::builder().listen(MemoryTransport::new(), a.clone(), CborCodec::new()).start().await?;
//! let _broker_b = Broker::builder().listen(MemoryTransport::new(), b.clone(), CborCodec::new()).start().await?;
//! let connect = |addr: Address| async move {
//!     BrokerClient::connect(Client::builder(CborCodec::new()), &MemoryTransport::new(), &addr).await
//! };
//!
//! // A provider on broker A…
//! let provider = connect(a.clone()).await?;
//! provider.open("math").await?.provide("add", |(x, y): (i64, i64)| async move { Ok::<_, String>(x + y) }).await?;
//! // …answers a caller on broker B once a bridge joins them.
//! let bridge = Bridge::builder().start(connect(a).await?, connect(b.clone()).await?).await?;
//! let caller = connect(b).await?;
//! assert_eq!(caller.open("math").await?.call::<_, i64>("add", &(2, 40)).await?, 42);
//! bridge.shutdown().await;
//! # Ok::<(), busline::Error>(())
//! # }).unwrap();
//! ```

mod relay;
mod routes;

use std::{
    collections::{BTreeSet, HashMap},
    time::Duration,
};

use busline_core::{Error, Result};
use futures::{stream::BoxStream, FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::broker::{BrokerClient, Channel, ChannelKeys, ConnectionEvent, SYSTEM};
use routes::{Demand, Offers};

/// Entry point: [`Bridge::builder`].
#[derive(Debug)]
pub struct Bridge;

impl Bridge {
    /// Configure a bridge, then [`BridgeBuilder::start`] it between two
    /// broker clients.
    pub fn builder() -> BridgeBuilder {
        BridgeBuilder {
            channels: None,
            passwords: Vec::new(),
            resync: DEFAULT_RESYNC,
        }
    }
}

/// How often a bridge looks at both brokers again even without events.
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(2);

/// How long a bridge lets events gather before it acts on them: a burst of
/// registrations costs one look, not one each.
const SETTLE: Duration = Duration::from_millis(10);

/// The least time one look at both brokers may take before it is given up
/// and tried again (at least the resync interval). What it did until then
/// stays done, so a large look still completes over a few.
const SYNC_TIMEOUT: Duration = Duration::from_secs(1);

/// A bridge about to start.
#[derive(Debug, Clone)]
pub struct BridgeBuilder {
    channels: Option<BTreeSet<String>>,
    passwords: Vec<(String, String)>,
    resync: Duration,
}

impl BridgeBuilder {
    /// Carry only these channels across (default: every channel without a
    /// password).
    pub fn channels<I, S>(mut self, channels: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.channels = Some(channels.into_iter().map(Into::into).collect());
        self
    }

    /// Carry the protected `channel`, whose password this is (repeatable,
    /// one per channel). See the module docs for what that allows.
    pub fn channel_password(
        mut self,
        channel: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.passwords.push((channel.into(), password.into()));
        self
    }

    /// Look at both brokers again this often even when no event says
    /// anything changed. Default: [`DEFAULT_RESYNC`].
    pub fn resync(mut self, every: Duration) -> Self {
        self.resync = every.max(SETTLE);
        self
    }

    /// Join the brokers of `a` and `b` (clients of two different brokers;
    /// give them [`BrokerClientBuilder::reconnect`] to ride out restarts).
    /// Returns once each side offers what the other provides now.
    ///
    /// [`BrokerClientBuilder::reconnect`]: crate::broker::BrokerClientBuilder::reconnect
    pub async fn start(self, a: BrokerClient, b: BrokerClient) -> Result<BridgeHandle> {
        let mut allow = self.channels;
        let mut keys = HashMap::new();
        for (channel, password) in &self.passwords {
            // Given its password, a channel is meant to cross.
            if let Some(allow) = &mut allow {
                allow.insert(channel.clone());
            }
            crate::broker::check_channel_name(channel)?;
            keys.insert(
                channel.clone(),
                crate::broker::derive(channel, password).await?,
            );
        }
        let mut mirror = Mirror {
            a: Side::new(a.clone()),
            b: Side::new(b.clone()),
            allow,
            keys,
            refused: BTreeSet::new(),
        };
        let (id_a, id_b) = (a.status().await?.id, b.status().await?.id);
        if id_a == id_b {
            return Err(Error::Protocol(format!(
                "both sides of the bridge are broker {id_a:?}: a bridge joins two brokers \
                 (or two with the same id; give each its own with BrokerBuilder::id)"
            )));
        }
        let feed = changes(&a, &b).await;
        let stop = CancellationToken::new();
        a.on_relayed(relay::forwarder(&id_a, b.clone(), stop.clone()));
        b.on_relayed(relay::forwarder(&id_b, a.clone(), stop.clone()));
        if let Err(err) = mirror.sync().await {
            // Nothing may outlive a bridge that did not start.
            stop.cancel();
            a.close();
            b.close();
            return Err(err);
        }
        let task = tokio::spawn(run(mirror, feed, self.resync, stop.clone()));
        Ok(BridgeHandle { stop, task, a, b })
    }
}

/// A running bridge; dropping it stops the bridge too.
#[derive(Debug)]
pub struct BridgeHandle {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    a: BrokerClient,
    b: BrokerClient,
}

impl BridgeHandle {
    /// Stop the bridge: both clients close, and each broker withdraws what
    /// the bridge offered it (callers there fail over to another path, or
    /// get a typed error).
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        let _ = (&mut self.task).await;
    }
}

impl Drop for BridgeHandle {
    fn drop(&mut self) {
        self.stop.cancel();
        self.a.close();
        self.b.close();
    }
}

/// One broker as the bridge sees it: its client, the channels joined
/// there, and what the bridge offers there.
struct Side {
    bus: BrokerClient,
    joined: HashMap<String, Channel>,
    offered: Offers,
    /// What the bridge subscribed to here for the other side.
    subscribed: Demand,
}

impl Side {
    fn new(bus: BrokerClient) -> Side {
        Side {
            bus,
            joined: HashMap::new(),
            offered: Offers::new(),
            subscribed: Demand::new(),
        }
    }

    /// Whether the connection to this broker is up now.
    fn is_up(&self) -> bool {
        !self.bus.client().is_closed()
    }

    async fn join(
        &mut self,
        channel: &str,
        keys: &HashMap<String, ChannelKeys>,
    ) -> Result<Channel> {
        if let Some(joined) = self.joined.get(channel) {
            return Ok(joined.clone());
        }
        let joined = match keys.get(channel) {
            None => self.bus.open(channel).await?,
            Some(keys) => {
                let joined = self.bus.open_relay(channel, keys.clone()).await?;
                if !joined.describe().await?.protected {
                    joined.leave().await?;
                    return Err(Error::Unauthorized(format!(
                        "channel {channel:?} takes no password on one side: a bridge carries a \
                         protected channel only between brokers where it is protected"
                    )));
                }
                joined
            }
        };
        self.joined.insert(channel.to_owned(), joined.clone());
        Ok(joined)
    }

    /// Leave the channels no longer needed here: neither offered here nor
    /// called through from the other side.
    async fn leave_all_but(&mut self, needed: &BTreeSet<&str>) {
        let gone: Vec<String> = self
            .joined
            .keys()
            .filter(|ch| !needed.contains(ch.as_str()))
            .cloned()
            .collect();
        for channel in gone {
            if let Some(joined) = self.joined.remove(&channel) {
                if let Err(err) = joined.leave().await {
                    tracing::debug!(%channel, error = %err, "bridge: cannot leave");
                }
            }
        }
    }

    /// Forget what the bridge did on channels that are gone here (closed
    /// by their owner, or lost with a broker that restarted), so that it is
    /// done again on the new ones.
    fn forget_all_but(&mut self, present: &BTreeSet<&str>) {
        self.joined.retain(|ch, _| present.contains(ch.as_str()));
        self.offered
            .retain(|(ch, _), _| present.contains(ch.as_str()));
        self.subscribed
            .retain(|(ch, _), _| present.contains(ch.as_str()));
    }
}

/// Both sides, and what may cross.
struct Mirror {
    a: Side,
    b: Side,
    allow: Option<BTreeSet<String>>,
    /// The keys of the protected channels the bridge carries.
    keys: HashMap<String, ChannelKeys>,
    /// Protected channels it could not join on both sides (told once).
    refused: BTreeSet<String>,
}

impl Mirror {
    /// Look at both brokers and make each side offer what the other
    /// provides now, and nothing else.
    async fn sync(&mut self) -> Result<()> {
        let (a_up, b_up) = (self.a.is_up(), self.b.is_up());
        if !(a_up && b_up) {
            // Calls relayed to a broker out of reach cannot be answered:
            // withdraw them at once, so that callers fail over to another
            // way or get a typed error instead of waiting. (They are
            // offered again once it is back.)
            let none = Offers::new();
            if a_up {
                offer(&mut self.a, &mut self.b, &none, &self.keys).await;
            }
            if b_up {
                offer(&mut self.b, &mut self.a, &none, &self.keys).await;
            }
            return Ok(());
        }
        let (mut status_a, mut status_b) = (self.a.bus.status().await?, self.b.bus.status().await?);
        // Brokers keep protected channels out of their status: describe
        // those the bridge carries, where it can join them on both sides.
        for channel in self.keys.keys() {
            let joined = (
                self.a.join(channel, &self.keys).await,
                self.b.join(channel, &self.keys).await,
            );
            let described = match joined {
                (Ok(on_a), Ok(on_b)) => match (on_a.describe().await, on_b.describe().await) {
                    (Ok(a), Ok(b)) => Ok((a, b)),
                    (Err(err), _) | (_, Err(err)) => Err(err),
                },
                (Err(err), _) | (_, Err(err)) => Err(err),
            };
            match described {
                Ok((a, b)) => {
                    status_a.channels.push(a);
                    status_b.channels.push(b);
                    self.refused.remove(channel);
                }
                Err(err) => {
                    if self.refused.insert(channel.clone()) {
                        tracing::warn!(%channel, error = %err, "bridge: not carried");
                    }
                }
            }
        }
        for (side, status) in [(&mut self.a, &status_a), (&mut self.b, &status_b)] {
            let present = status.channels.iter().map(|ch| ch.name.as_str()).collect();
            side.forget_all_but(&present);
        }
        let allow = self.allow.as_ref();
        let (to_b, to_a) = (
            routes::offers(&status_a, &status_b.id, allow),
            routes::offers(&status_b, &status_a.id, allow),
        );
        let (on_a, on_b) = (
            routes::demand(&status_b, &status_a.id, allow),
            routes::demand(&status_a, &status_b.id, allow),
        );
        let keys = &self.keys;
        offer(&mut self.b, &mut self.a, &to_b, keys).await;
        offer(&mut self.a, &mut self.b, &to_a, keys).await;
        subscribe(&mut self.a, &mut self.b, &on_a, keys).await;
        subscribe(&mut self.b, &mut self.a, &on_b, keys).await;
        // The protected channels carried stay joined: leaving one would
        // close it on a side where the bridge is its only member (and
        // joining it again at the next look would make churn).
        let carried = keys.keys().map(String::as_str).collect();
        let needed: BTreeSet<&str> = [
            routes::channels(&to_a),
            routes::channels(&to_b),
            routes::channels(&on_a),
            routes::channels(&on_b),
            carried,
        ]
        .into_iter()
        .flatten()
        .collect();
        self.a.leave_all_but(&needed).await;
        self.b.leave_all_but(&needed).await;
        Ok(())
    }
}

/// Make the bridge subscribe on `on` to exactly `demand`, for the
/// subscribers of `to`, where it passes the publications on. Each item on
/// its own: one that fails is told and tried again at the next look.
async fn subscribe(
    on: &mut Side,
    to: &mut Side,
    demand: &Demand,
    keys: &HashMap<String, ChannelKeys>,
) {
    let gone: Vec<(String, String)> = on
        .subscribed
        .keys()
        .filter(|key| !demand.contains_key(*key))
        .cloned()
        .collect();
    for key in gone {
        let undone = match on.joined.get(&key.0) {
            Some(joined) => joined.relay_unsubscribe(&key.1).await,
            None => Ok(()),
        };
        match undone {
            Ok(()) => drop(on.subscribed.remove(&key)),
            Err(err) => {
                tracing::warn!(channel = %key.0, pattern = %key.1, error = %err, "bridge: cannot unsubscribe")
            }
        }
    }
    for ((channel, pattern), path) in demand {
        let key = (channel.clone(), pattern.clone());
        if on.subscribed.get(&key) == Some(path) {
            continue;
        }
        // Publications passed on come from a member of the channel.
        let done = async {
            to.join(channel, keys).await?;
            on.join(channel, keys)
                .await?
                .relay_subscribe(pattern, path.clone())
                .await
        };
        match done.await {
            Ok(()) => drop(on.subscribed.insert(key, path.clone())),
            Err(err) => {
                tracing::warn!(%channel, %pattern, error = %err, "bridge: cannot subscribe")
            }
        }
    }
}

/// Make `to` offer exactly `offers`, each passing its calls to `from`. Each
/// item on its own: one that fails is told and tried again at the next
/// look.
async fn offer(
    to: &mut Side,
    from: &mut Side,
    offers: &Offers,
    keys: &HashMap<String, ChannelKeys>,
) {
    let withdrawn: Vec<(String, String)> = to
        .offered
        .keys()
        .filter(|key| !offers.contains_key(*key))
        .cloned()
        .collect();
    for key in withdrawn {
        let undone = match to.joined.get(&key.0) {
            Some(joined) => joined.unprovide(&key.1).await,
            None => Ok(()),
        };
        match undone {
            Ok(()) | Err(Error::MethodNotFound(_)) => drop(to.offered.remove(&key)),
            Err(err) => {
                tracing::warn!(channel = %key.0, method = %key.1, error = %err, "bridge: cannot withdraw")
            }
        }
    }
    for ((channel, method), path) in offers {
        let key = (channel.clone(), method.clone());
        if to.offered.get(&key) == Some(path) {
            continue;
        }
        // Calls through the bridge come from a member of the channel.
        let done = async {
            from.join(channel, keys).await?;
            let relay = relay::Calls::to(from.bus.clone());
            to.join(channel, keys)
                .await?
                .serve(method, relay, None, path.clone())
                .await
        };
        match done.await {
            Ok(()) => drop(to.offered.insert(key, path.clone())),
            Err(err) => tracing::warn!(%channel, %method, error = %err, "bridge: cannot offer"),
        }
    }
}

/// What tells the bridge to look again: providers and channels coming and
/// going on either broker, and either connection dropping or coming back.
async fn changes(a: &BrokerClient, b: &BrokerClient) -> BoxStream<'static, ()> {
    let mut feeds: Vec<BoxStream<'static, ()>> = Vec::new();
    for bus in [a, b] {
        // A client without reconnection tells nothing but its end.
        let first = bus.client();
        feeds.push(
            futures::stream::once(async move { first.closed().await })
                .map(|_| ())
                .boxed(),
        );
        feeds.push(
            bus.connection_events()
                .filter(|e| std::future::ready(!matches!(e, ConnectionEvent::Reconnecting(_))))
                .map(|_| ())
                .boxed(),
        );
        // A system channel behind a password is left to the periodic look.
        if let Ok(system) = bus.open(SYSTEM).await {
            for pattern in [
                "provider.*",
                "subscription.*",
                "channel.*",
                "client.disconnected",
            ] {
                if let Ok(events) = system.subscribe(pattern).await {
                    feeds.push(events.map(|_| ()).boxed());
                }
            }
        }
    }
    futures::stream::select_all(feeds).boxed()
}

async fn run(
    mut mirror: Mirror,
    mut feed: BoxStream<'static, ()>,
    resync: Duration,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            next = tokio::time::timeout(resync, feed.next()) => {
                if let Ok(None) = next {
                    // Both clients are gone: only the periodic look is left.
                    feed = futures::stream::pending().boxed();
                }
            }
        }
        let settled = async {
            tokio::time::sleep(SETTLE).await;
            while let Some(Some(())) = feed.next().now_or_never() {}
            // A broker that stops answering must not stall the bridge.
            tokio::time::timeout(resync.max(SYNC_TIMEOUT), mirror.sync()).await
        };
        let synced = tokio::select! {
            () = stop.cancelled() => break,
            synced = settled => synced,
        };
        match synced {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "bridge: could not bring the brokers in line; trying again")
            }
            Err(_) => tracing::warn!("bridge: a broker did not answer in time; trying again"),
        }
    }
    mirror.a.bus.close();
    mirror.b.bus.close();
}
