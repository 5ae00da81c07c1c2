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

pub(crate) mod mirror;
pub(crate) mod relay;
pub(crate) mod routes;

use std::{
    collections::{BTreeSet, HashMap},
    time::Duration,
};

use busline_core::{Error, Result};
use futures::{stream::BoxStream, FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::broker::{BrokerClient, ConnectionEvent, SYSTEM};
use mirror::Mirror;

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
        let keys = carried_keys(&mut allow, &self.passwords).await?;
        let mut mirror = Mirror::new(a.clone(), b.clone(), allow, keys);
        let (id_a, id_b) = (a.status().await?.id, b.status().await?.id);
        if id_a == id_b {
            return Err(Error::Protocol(format!(
                "both sides of the bridge are broker {id_a:?}: a bridge joins two brokers \
                 (or two with the same id; give each its own with BrokerBuilder::id)"
            )));
        }
        let feed = changes(&[&a, &b]).await;
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

/// The keys of the protected channels given with their passwords, each
/// added to `allow` (given its password, a channel is meant to cross).
pub(crate) async fn carried_keys(
    allow: &mut Option<BTreeSet<String>>,
    passwords: &[(String, String)],
) -> Result<HashMap<String, crate::broker::ChannelKeys>> {
    let mut keys = HashMap::new();
    for (channel, password) in passwords {
        if let Some(allow) = allow {
            allow.insert(channel.clone());
        }
        crate::broker::check_channel_name(channel)?;
        keys.insert(
            channel.clone(),
            crate::broker::derive(channel, password).await?,
        );
    }
    Ok(keys)
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

/// What tells a bridge (or the backbone) to look again: providers and
/// channels coming and going on its brokers, and a connection dropping or
/// coming back.
pub(crate) async fn changes(buses: &[&BrokerClient]) -> BoxStream<'static, ()> {
    let mut feeds: Vec<BoxStream<'static, ()>> = Vec::new();
    for bus in buses {
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
    mirror.close();
}
