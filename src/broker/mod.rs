//! A broker: a hub that clients connect to, open named channels on, serve
//! methods and streams on, and call through.
//!
//! The broker is an RPC server like any other, so it runs over every
//! transport, codec and authenticator, several at once: a client on a Unix
//! socket speaking CBOR calls a provider on TCP speaking JSON-RPC. Calls
//! reach providers as calls the broker makes on the provider's own
//! connection ([`Request::peer`](crate::rpc::Request::peer)), so
//! cancellation, deadlines and stream credit pass through end to end, and
//! payloads are forwarded byte for byte, never decoded.
//!
//! ```
//! use busline::broker::{Broker, BrokerClient};
//! use busline::{rpc::Client, Address, CborCodec, JsonLineCodec, MemoryTransport};
//!
//! # tokio_test::block_on(async {
//! let addr = Address::memory("broker-doc");
//! let broker = Broker::builder()
//!     .listen(MemoryTransport::new(), addr.clone(), CborCodec::new())
//!     .start()
//!     .await?;
//!
//! let provider = BrokerClient::connect(Client::builder(CborCodec::new()), &MemoryTransport::new(), &addr).await?;
//! let math = provider.open("math").await?;
//! math.provide("add", |(a, b): (i64, i64)| async move { Ok::<_, String>(a + b) }).await?;
//!
//! let caller = BrokerClient::connect(Client::builder(CborCodec::new()), &MemoryTransport::new(), &addr).await?;
//! let math = caller.open("math").await?;
//! assert_eq!(math.call::<_, i64>("add", &(2, 3)).await?, 5);
//! broker.shutdown().await;
//! # Ok::<(), busline::Error>(())
//! # }).unwrap();
//! ```

mod channel;
mod client;
mod group;
mod keys;
mod link;
mod outlet;
mod protocol;
mod queue;
mod relayed;
mod restore;
mod service;
mod signing;
mod state;
mod subscription;
mod system;
mod topic;

use std::{fmt, sync::Arc};

use busline_core::{Address, Authenticator, Codec, NoAuth, Result, Spin, Transport};
use futures::future::BoxFuture;

pub(crate) use channel::derive;
pub use channel::Channel;
pub(crate) use client::RelaySink;
pub use client::{BrokerClient, BrokerClientBuilder};
pub use group::Group;
pub use keys::ChannelKeys;
pub use link::{ConnectionEvent, Reconnect};
pub use outlet::SlowSubscriber;
#[cfg(feature = "nats")]
pub(crate) use protocol::{check_broker_id, routed};
pub use protocol::{
    check_channel_name, Balance, BrokerStatus, ChannelEvent, ChannelInfo, MethodSchema,
    OwnerPolicy, MAX_BROKER_ID, MAX_CHANNEL_NAME, MAX_CLIENT_ID, MAX_HOPS,
};
pub(crate) use protocol::{parse_relayed, Lagged, RelayLagged, LAGGED, RELAY_LAGGED};
pub(crate) use queue::{queue, QueueBounds, QueueReceiver};
pub(crate) use service::pass_on;
pub use state::{DEFAULT_SUBSCRIBER_QUEUE, DEFAULT_SUBSCRIBER_QUEUE_BYTES, MAX_PER_CLIENT};
pub use subscription::{Event, Publication, Subscription};
pub use system::{is_system, ERRORS, LOGS, SYSTEM, SYSTEM_CHANNELS};
pub use topic::{check_pattern, check_topic, matches as topic_matches, MAX_TOPIC};

use crate::rpc::{Router, Server, ServerHandle};
use state::State;

/// Limits every listener applies.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_connections: usize,
    max_calls_per_client: usize,
    heartbeat: Option<std::time::Duration>,
    spin: Spin,
}

/// Starts one listener with the broker's router, tables and limits.
type StartListener =
    Box<dyn FnOnce(Router, Arc<State>, Limits) -> BoxFuture<'static, Result<ServerHandle>> + Send>;

/// Entry point: [`Broker::builder`].
#[derive(Debug)]
pub struct Broker;

impl Broker {
    /// Configure a broker: add listeners, then [`BrokerBuilder::start`].
    pub fn builder() -> BrokerBuilder {
        BrokerBuilder {
            id: random_id(),
            listeners: Vec::new(),
            subscriber_queue: QueueBounds::default(),
            slow_subscriber: SlowSubscriber::default(),
            system_passwords: Vec::new(),
            limits: Limits {
                max_connections: crate::rpc::DEFAULT_MAX_CONNECTIONS,
                max_calls_per_client: crate::rpc::DEFAULT_MAX_HANDLERS,
                heartbeat: None,
                spin: Spin::NONE,
            },
        }
    }
}

/// Listeners of a broker about to start.
pub struct BrokerBuilder {
    id: String,
    listeners: Vec<StartListener>,
    subscriber_queue: QueueBounds,
    slow_subscriber: SlowSubscriber,
    system_passwords: Vec<(String, String)>,
    limits: Limits,
}

impl fmt::Debug for BrokerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerBuilder")
            .field("listeners", &self.listeners.len())
            .field("subscriber_queue", &self.subscriber_queue)
            .finish_non_exhaustive()
    }
}

/// A fresh broker id: 16 random hex digits.
fn random_id() -> String {
    let mut bytes = [0u8; 8];
    // Without the system's randomness, fall back to what differs between
    // processes and moments: ids only need to differ among bridged brokers.
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        bytes = (nanos ^ u64::from(std::process::id()).rotate_left(32)).to_be_bytes();
    }
    hex::encode(bytes)
}

impl BrokerBuilder {
    /// The broker's id, which bridges carry in the path of every
    /// registration they pass on, so that none comes back around a ring:
    /// it must differ between brokers bridged together. Default: 16 random
    /// hex digits. 1 to [`MAX_BROKER_ID`] ASCII letters, digits,
    /// `.`, `_` or `-` ([`BrokerBuilder::start`] refuses others).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// Publications queued for one subscriber connection before further
    /// ones are dropped for it (and counted in a lagged notice). Default:
    /// [`DEFAULT_SUBSCRIBER_QUEUE`].
    pub fn subscriber_queue(mut self, publications: usize) -> Self {
        self.subscriber_queue.publications = publications.max(1);
        self
    }

    /// Bytes held by the publications queued for one subscriber connection
    /// (their payloads and queue entries) before further ones are dropped
    /// for it, whichever of this and
    /// [`BrokerBuilder::subscriber_queue`] is reached first (one
    /// publication larger than this still goes through when the queue is
    /// all but empty: under an eighth of this). Default:
    /// [`DEFAULT_SUBSCRIBER_QUEUE_BYTES`].
    pub fn subscriber_queue_bytes(mut self, bytes: usize) -> Self {
        self.subscriber_queue.bytes = bytes.max(1);
        self
    }

    /// What to do with a subscriber whose queue is full: drop and count
    /// (the default) or disconnect it.
    pub fn slow_subscriber(mut self, policy: SlowSubscriber) -> Self {
        self.slow_subscriber = policy;
        self
    }

    /// Bound on connections per listener; further clients wait in the
    /// OS backlog. Default: [`crate::rpc::DEFAULT_MAX_CONNECTIONS`].
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.limits.max_connections = connections.max(1);
        self
    }

    /// Bound on calls one client has in progress through the broker; past
    /// it, the broker stops reading from that client until one finishes.
    /// Default:
    /// [`crate::rpc::DEFAULT_MAX_HANDLERS`].
    pub fn max_calls_per_client(mut self, calls: usize) -> Self {
        self.limits.max_calls_per_client = calls.max(1);
        self
    }

    /// Drop clients that go silent (a vanished machine, a frozen process)
    /// within three `interval`s: see [`crate::rpc::ServerBuilder::heartbeat`].
    /// Their channels, providers and subscriptions go with them. Default:
    /// off.
    pub fn heartbeat(mut self, interval: std::time::Duration) -> Self {
        self.limits.heartbeat = Some(interval);
        self
    }

    /// How long a client's connection keeps polling when it has nothing to
    /// do before its task sleeps: see [`crate::rpc::ServerBuilder::spin`].
    /// Default: [`Spin::NONE`] (with the broker, its clients and their
    /// providers sharing a machine's cores, polling costs more than it
    /// saves: on two cores it cut the rate of calls through the broker).
    pub fn spin(mut self, spin: Spin) -> Self {
        self.limits.spin = spin;
        self
    }

    /// Protect system channel `channel` ([`SYSTEM`], [`LOGS`] or
    /// [`ERRORS`]) with `password`: clients then join it with
    /// [`BrokerClient::open_with_password`].
    pub fn system_password(mut self, channel: &str, password: &str) -> Self {
        self.system_passwords
            .push((channel.to_owned(), password.to_owned()));
        self
    }

    /// Listen on `addr` with `transport`, speaking `codec`, without
    /// authentication.
    pub fn listen<T: Transport, C: Codec>(self, transport: T, addr: Address, codec: C) -> Self {
        self.listen_with(transport, addr, codec, NoAuth)
    }

    /// Listen on `addr` with `transport`, speaking `codec`, requiring `auth`.
    pub fn listen_with<T: Transport, C: Codec, A: Authenticator>(
        mut self,
        transport: T,
        addr: Address,
        codec: C,
        auth: A,
    ) -> Self {
        self.listeners.push(Box::new(move |router, state, limits| {
            Box::pin(async move {
                let connected = state.clone();
                let mut server = Server::builder(router, codec)
                    .auth(auth)
                    .max_connections(limits.max_connections)
                    .max_handlers(limits.max_calls_per_client)
                    .spin(limits.spin)
                    .on_connect(move |id, who| connected.connected(id, who))
                    .on_disconnect(move |id| state.disconnected(id));
                if let Some(interval) = limits.heartbeat {
                    server = server.heartbeat(interval);
                }
                server.bind(&transport, &addr).await
            })
        }));
        self
    }

    /// Bind every listener and start serving. If one fails to bind, the
    /// ones already bound are shut down and the error is returned.
    pub async fn start(self) -> Result<BrokerHandle> {
        protocol::check_broker_id(&self.id)?;
        let mut system_keys = Vec::new();
        for (channel, password) in self.system_passwords {
            if !is_system(&channel) {
                return Err(busline_core::Error::Protocol(format!(
                    "{channel:?} is not a system channel (those are {SYSTEM_CHANNELS:?})"
                )));
            }
            let name = channel.clone();
            let keys = tokio::task::spawn_blocking(move || ChannelKeys::derive(&name, &password))
                .await
                .map_err(|e| {
                    busline_core::Error::Protocol(format!("key derivation failed: {e}"))
                })?;
            system_keys.push((channel, keys.join_key()));
        }
        let state = Arc::new(State::new(
            self.id.clone(),
            self.subscriber_queue,
            self.slow_subscriber,
            &system_keys,
        ));
        let router = service::router(state.clone());
        let mut servers = Vec::new();
        for start in self.listeners {
            match start(router.clone(), state.clone(), self.limits).await {
                Ok(server) => servers.push(server),
                Err(err) => {
                    for server in servers {
                        server.shutdown().await;
                    }
                    return Err(err);
                }
            }
        }
        Ok(BrokerHandle {
            id: self.id,
            servers,
        })
    }
}

/// A running broker.
#[derive(Debug)]
pub struct BrokerHandle {
    id: String,
    servers: Vec<ServerHandle>,
}

impl BrokerHandle {
    /// The broker's id (see [`BrokerBuilder::id`]).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The address of each listener, in the order they were added.
    pub fn local_addrs(&self) -> Vec<&Address> {
        self.servers.iter().map(ServerHandle::local_addr).collect()
    }

    /// Stop every listener, letting calls in flight finish.
    pub async fn shutdown(self) {
        futures::future::join_all(self.servers.into_iter().map(ServerHandle::shutdown)).await;
    }

    /// Wait until every listener has stopped (after a shutdown token of one
    /// of them is cancelled, see [`BrokerHandle::shutdown_tokens`]).
    pub async fn wait(&mut self) {
        futures::future::join_all(self.servers.iter_mut().map(ServerHandle::wait)).await;
    }

    /// Tokens that stop the listeners when cancelled (for signal handlers).
    pub fn shutdown_tokens(&self) -> Vec<tokio_util::sync::CancellationToken> {
        self.servers
            .iter()
            .map(ServerHandle::shutdown_token)
            .collect()
    }
}
