//! The client side of a broker: connecting (and reconnecting), and
//! joining channels.

use std::{
    fmt,
    sync::{Arc, Mutex, OnceLock, RwLock},
};

use busline_core::{Address, Authenticator, Codec, Error, Payload, Result, Transport};
use tower::service_fn;

use super::{
    channel::Channel,
    keys::ChannelKeys,
    link::{self, ConnectionEvent, Connector, Link, Reconnect, Record},
    protocol::{
        self, Challenge, ChannelArgs, ChannelEvent, IdentifyArgs, Lagged, OpenArgs, Opened, Routed,
    },
    queue::QueueBounds,
    signing::Signer,
    subscription::Subscribers,
};
use crate::rpc::{Client, ClientBuilder, Request, Router};

/// A connection to a broker. Clones share it.
#[derive(Clone)]
pub struct BrokerClient {
    pub(super) link: Arc<Link>,
    /// What this client provides, consulted for every call the broker
    /// forwards; changed as `provide` is called.
    provided: Arc<RwLock<Router>>,
    pub(super) subscribers: Arc<Subscribers>,
    events: tokio::sync::broadcast::Sender<ChannelEvent>,
    /// Where publications relayed between brokers go (a bridge's client).
    relays: Arc<OnceLock<RelaySink>>,
}

/// Takes the publications a broker relays to a bridge: name and payload.
pub(crate) type RelaySink = Box<dyn Fn(&str, &Payload) + Send + Sync>;

/// Channel events kept for a slow [`BrokerClient::events`] reader (the
/// number in its docs).
const EVENT_BACKLOG: usize = 1024;

impl fmt::Debug for BrokerClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerClient")
            .field("link", &self.link)
            .finish()
    }
}

/// Configures a [`BrokerClient`]: its identity, whether it reconnects, and
/// how much its subscriptions buffer.
///
/// ```no_run
/// use busline::{broker::{BrokerClient, Reconnect}, rpc::Client, CborCodec, UnixTransport};
///
/// # async fn run() -> busline::Result<()> {
/// let bus = BrokerClient::builder(Client::builder(CborCodec::new()))
///     .client_id("thumbnailer")
///     .reconnect(Reconnect::default())
///     .connect(&UnixTransport::new(), &"unix:///run/busline.sock".parse()?)
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct BrokerClientBuilder<C, A> {
    client: ClientBuilder<C, A>,
    client_id: Option<String>,
    reconnect: Option<Reconnect>,
    subscription_queue: QueueBounds,
}

impl<C: Codec, A: Authenticator + Clone> BrokerClientBuilder<C, A> {
    /// Claim `client_id`, which no other live client may hold: a second
    /// client with the same id is refused with [`Error::Unauthorized`]. A
    /// reconnecting client claims it again (waiting, within its give-up
    /// window, until the broker has seen its old connection go).
    pub fn client_id(mut self, client_id: &str) -> Self {
        self.client_id = Some(client_id.to_owned());
        self
    }

    /// Reconnect when the connection is lost (a broker restart, a network
    /// cut), with backoff and jitter as `policy` says, and restore what
    /// this client had: its id, its channels (with their passwords), its
    /// providers and their balancing, its subscriptions and owned topics,
    /// and, as owner, its channel policy. Everything is confirmed before
    /// calls flow again.
    ///
    /// After a broker restart its channels are new: the first client to
    /// join one again owns it, as for any new channel, and a client that
    /// rejoins with a password protects it again with that password.
    /// Without this, a lost connection stays lost: calls fail with
    /// [`Error::Disconnected`] and subscriptions end.
    pub fn reconnect(mut self, policy: Reconnect) -> Self {
        self.reconnect = Some(policy);
        self
    }

    /// Publications each [`Subscription`](super::Subscription) buffers
    /// until it is read; past this, further ones are dropped for it and
    /// counted ([`Event::Lagged`](super::Event::Lagged)), so a reader that
    /// falls behind never grows the client's memory without bound nor
    /// stalls its connection. Default: as a broker's subscriber queue,
    /// [`DEFAULT_SUBSCRIBER_QUEUE`](super::DEFAULT_SUBSCRIBER_QUEUE).
    pub fn subscription_queue(mut self, publications: usize) -> Self {
        self.subscription_queue.publications = publications.max(1);
        self
    }

    /// Bytes each subscription's buffer may hold (payloads, topics and
    /// queue entries), whichever of this and
    /// [`BrokerClientBuilder::subscription_queue`] is reached first (one
    /// publication larger than this still goes through when the buffer is
    /// all but empty: under an eighth of this). A subscription takes up to
    /// 64 publications off its buffer at a time, which keep their room
    /// until the last of them is read. Default:
    /// [`DEFAULT_SUBSCRIBER_QUEUE_BYTES`](super::DEFAULT_SUBSCRIBER_QUEUE_BYTES).
    pub fn subscription_queue_bytes(mut self, bytes: usize) -> Self {
        self.subscription_queue.bytes = bytes.max(1);
        self
    }

    /// Connect to the broker at `addr` over `transport`.
    pub async fn connect<T: Transport + Clone>(
        self,
        transport: &T,
        addr: &Address,
    ) -> Result<BrokerClient> {
        let record = Arc::new(Mutex::new(Record {
            client_id: self.client_id.clone(),
            ..Record::default()
        }));
        let parts = Parts::new(record.clone(), self.subscription_queue);
        let builder = self.client.serve(parts.router());
        let (first, connect): (Client, Option<Connector>) = match &self.reconnect {
            None => (builder.connect(transport, addr).await?, None),
            Some(_) => {
                let (transport, addr) = (transport.clone(), addr.clone());
                let connect: Connector = Arc::new(move || {
                    let (builder, transport, addr) =
                        (builder.clone(), transport.clone(), addr.clone());
                    Box::pin(async move { builder.connect(&transport, &addr).await })
                });
                (connect().await?, Some(connect))
            }
        };
        if let Some(client_id) = &self.client_id {
            identify(&first, client_id).await?;
        }
        let bus = parts.into_client(first.clone(), record, self.reconnect.as_ref());
        match (connect, self.reconnect) {
            (Some(connect), Some(policy)) => {
                tokio::spawn(link::supervise(
                    Arc::downgrade(&bus.link),
                    first,
                    connect,
                    bus.subscribers.clone(),
                    policy,
                ));
            }
            _ => {
                // Subscriptions end with the connection.
                let (end, subscribers) = (first.end(), bus.subscribers.clone());
                tokio::spawn(async move {
                    end.wait().await;
                    subscribers.interrupt();
                    subscribers.close_all();
                });
            }
        }
        Ok(bus)
    }
}

/// What a broker client is made of, before its first connection.
struct Parts {
    provided: Arc<RwLock<Router>>,
    subscribers: Arc<Subscribers>,
    events: tokio::sync::broadcast::Sender<ChannelEvent>,
    record: Arc<Mutex<Record>>,
    relays: Arc<OnceLock<RelaySink>>,
}

impl Parts {
    fn new(record: Arc<Mutex<Record>>, subscription_queue: QueueBounds) -> Parts {
        Parts {
            provided: Arc::new(RwLock::new(Router::new())),
            subscribers: Arc::new(Subscribers::new(subscription_queue)),
            events: tokio::sync::broadcast::channel(EVENT_BACKLOG).0,
            record,
            relays: Arc::new(OnceLock::new()),
        }
    }

    /// What the connection serves: the broker's pushes, handled in place
    /// (they come at publication rate), and calls to provided methods.
    fn router(&self) -> Router {
        let (subs, told, record, relays) = (
            self.subscribers.clone(),
            self.events.clone(),
            self.record.clone(),
            self.relays.clone(),
        );
        let pushed = Arc::new(move |method: String, payload: Payload, _from: u64| {
            if method.starts_with(protocol::RELAYED) || method == protocol::RELAY_LAGGED {
                if let Some(sink) = relays.get() {
                    sink(&method, &payload);
                }
            } else if let Some(Routed::Topic { channel, .. }) = protocol::parse_routed(&method) {
                let channel_len = channel.len();
                subs.deliver(method, channel_len, payload);
            } else if method == protocol::EVENT {
                match payload.decode_params::<ChannelEvent>() {
                    Ok(event) => {
                        if let ChannelEvent::Closed { channel, .. } = &event {
                            // Gone for everyone: not to be restored, and
                            // its subscriptions end.
                            record
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .channels
                                .remove(channel);
                            subs.close_channel(channel);
                        }
                        drop(told.send(event));
                    }
                    Err(e) => tracing::warn!(error = %e, "unreadable channel event"),
                }
            } else if method == protocol::LAGGED {
                if let Ok(notice) = payload.decode_params::<Lagged>() {
                    subs.lagged(&notice.channel, notice.missed);
                }
                // A bridge that fell behind tells the subscribers it serves.
                if let Some(sink) = relays.get() {
                    sink(&method, &payload);
                }
            } else {
                return Some((method, payload));
            }
            None
        });
        // Weak: the handlers in the table may hold this client, and the
        // connection holds this router; a strong one would keep both alive.
        let table = Arc::downgrade(&self.provided);
        Router::new()
            .fallback(service_fn(move |req: Request| {
                // A cheap clone (one Arc) of the current table, so no lock is
                // held while the handler runs.
                let router = table
                    .upgrade()
                    .map(|t| t.read().unwrap_or_else(|p| p.into_inner()).clone())
                    .unwrap_or_default();
                router.dispatch(req)
            }))
            .tap_notifications(pushed)
    }

    fn into_client(
        self,
        first: Client,
        record: Arc<Mutex<Record>>,
        reconnect: Option<&Reconnect>,
    ) -> BrokerClient {
        BrokerClient {
            link: Arc::new(Link::new(first, record, reconnect)),
            provided: self.provided,
            subscribers: self.subscribers,
            events: self.events,
            relays: self.relays,
        }
    }
}

/// Claim `client_id` on the connection.
pub(super) async fn identify(client: &Client, client_id: &str) -> Result<()> {
    let args = IdentifyArgs {
        client_id: client_id.to_owned(),
    };
    client.call::<_, ()>(protocol::IDENTIFY, &args).await
}

/// Open `channel` on the connection, proving the password's join key if
/// there is one (and protecting the channel with it if this creates it,
/// when it may: `create`).
pub(super) async fn open_on(
    client: &Client,
    channel: &str,
    keys: Option<&ChannelKeys>,
    create: bool,
) -> Result<Opened> {
    let mut args = OpenArgs {
        channel: channel.to_owned(),
        proof: None,
        key: None,
        existing: !create,
    };
    if let Some(keys) = keys {
        let ask = ChannelArgs {
            channel: channel.to_owned(),
        };
        let challenge: Challenge = client.call(protocol::CHALLENGE, &ask).await?;
        let nonce = hex::decode(&challenge.nonce)
            .map_err(|e| Error::Protocol(format!("the broker's nonce is not hex: {e}")))?;
        args.proof = Some(hex::encode(keys.join_proof(channel, &nonce)));
        // The join key is all a joiner needs: it crosses the wire only
        // to create the channel, never to join it.
        if !challenge.exists && create {
            args.key = Some(hex::encode(keys.join_key()));
        }
    }
    client.call(protocol::OPEN, &args).await
}

impl BrokerClient {
    /// Start configuring a broker client whose connection `client`
    /// configures (its codec, authentication and limits).
    pub fn builder<C: Codec, A: Authenticator>(
        client: ClientBuilder<C, A>,
    ) -> BrokerClientBuilder<C, A> {
        BrokerClientBuilder {
            client,
            client_id: None,
            reconnect: None,
            subscription_queue: QueueBounds::default(),
        }
    }

    /// Connect to the broker at `addr` with a client configured by
    /// `builder` (its codec, authentication and limits); see
    /// [`BrokerClient::builder`] for a client id and reconnection.
    pub async fn connect<T: Transport + Clone, C: Codec, A: Authenticator + Clone>(
        builder: ClientBuilder<C, A>,
        transport: &T,
        addr: &Address,
    ) -> Result<Self> {
        Self::builder(builder).connect(transport, addr).await
    }

    /// Connect as [`BrokerClient::connect`] does, and claim `client_id`
    /// (see [`BrokerClientBuilder::client_id`]).
    pub async fn connect_as<T: Transport + Clone, C: Codec, A: Authenticator + Clone>(
        builder: ClientBuilder<C, A>,
        transport: &T,
        addr: &Address,
        client_id: &str,
    ) -> Result<Self> {
        Self::builder(builder)
            .client_id(client_id)
            .connect(transport, addr)
            .await
    }

    /// Join `channel`, creating it if it does not exist (the first client
    /// to open a channel owns it). Returns once the broker confirms; a
    /// channel that takes a password refuses with [`Error::Unauthorized`].
    pub async fn open(&self, channel: &str) -> Result<Channel> {
        self.join(channel, None, true, true).await
    }

    /// Join `channel` only if it exists (with its password, if it takes
    /// one): one that does not is refused with [`Error::MethodNotFound`]
    /// instead of created, so a client acting for others (the HTTP
    /// gateway) never creates and owns channels by mistake.
    pub async fn open_existing(&self, channel: &str, password: Option<&str>) -> Result<Channel> {
        protocol::check_channel_name(channel)?;
        let keys = match password {
            Some(password) => Some(super::channel::derive(channel, password).await?),
            None => None,
        };
        self.join(channel, keys, true, false).await
    }

    /// Join `channel` with its password, or create it protected by
    /// `password`. The password itself never leaves this process: the
    /// client proves it knows it by answering a fresh challenge.
    pub async fn open_with_password(&self, channel: &str, password: &str) -> Result<Channel> {
        protocol::check_channel_name(channel)?;
        let keys = super::channel::derive(channel, password).await?;
        self.join(channel, Some(keys), true, true).await
    }

    /// Join a protected channel with its keys, as a bridge does: what it
    /// sends and serves there is not signed or checked here, because it
    /// passes on what others signed, to be checked at the far end.
    pub(crate) async fn open_relay(&self, channel: &str, keys: ChannelKeys) -> Result<Channel> {
        self.join(channel, Some(keys), false, true).await
    }

    /// Join `channel`, signing what is sent there if `sign` and it has
    /// `keys`, creating it if it does not exist and `create`.
    async fn join(
        &self,
        channel: &str,
        keys: Option<ChannelKeys>,
        sign: bool,
        create: bool,
    ) -> Result<Channel> {
        protocol::check_channel_name(channel)?;
        let client = self.link.client().await?;
        let opened = open_on(&client, channel, keys.as_ref(), create).await?;
        let mut record = self.link.record();
        let joined = record.joined(channel);
        joined.keys = keys.clone();
        joined.existing = !create;
        drop(record);
        Ok(Channel {
            bus: self.clone(),
            name: channel.to_owned(),
            owner: opened.owner,
            // The broker itself speaks on system channels, unsigned.
            signer: keys
                .filter(|_| sign && !super::is_system(channel))
                .map(|k| Arc::new(Signer::new(&k, channel))),
        })
    }

    /// What the broker says about this client's channels from now on:
    /// ownership changes, closures, demand for owned topics. A reader more
    /// than 1024 events behind gets [`ChannelEvent::Missed`] in their place.
    pub fn events(&self) -> futures::stream::BoxStream<'static, ChannelEvent> {
        let rx = self.events.subscribe();
        Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            use tokio::sync::broadcast::error::RecvError;
            let event = match rx.recv().await {
                Ok(event) => event,
                Err(RecvError::Lagged(count)) => ChannelEvent::Missed { count },
                Err(RecvError::Closed) => return None,
            };
            Some((event, rx))
        }))
    }

    /// What happens to the connection from now on: disconnections,
    /// reconnection attempts, restoration (see
    /// [`BrokerClientBuilder::reconnect`]). A reader more than 256 events
    /// behind misses the oldest.
    pub fn connection_events(&self) -> futures::stream::BoxStream<'static, ConnectionEvent> {
        let rx = self.link.events();
        Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                match rx.recv().await {
                    Ok(event) => return Some((event, rx)),
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return None,
                }
            }
        }))
    }

    /// Every client and unprotected channel of the broker.
    pub async fn status(&self) -> Result<super::BrokerStatus> {
        self.link.client().await?.call(protocol::STATUS, &()).await
    }

    /// Hand the publications the broker relays to this client (a bridge's)
    /// to `sink`; only the first call takes effect.
    pub(crate) fn on_relayed(&self, sink: RelaySink) {
        let _ = self.relays.set(sink);
    }

    /// The underlying RPC client: the current connection (a reconnecting
    /// client gets a new one after each restoration).
    pub fn client(&self) -> Client {
        self.link.now()
    }

    /// Close the connection for good, telling the broker: calls in flight
    /// and later ones fail with [`Error::Disconnected`], subscriptions end,
    /// and a reconnecting client stops reconnecting. (Dropping every handle
    /// does the same, but a provider whose handlers hold a handle of their
    /// own keeps it alive until this is called.)
    pub fn close(&self) {
        self.link
            .close(Error::Disconnected("the broker client was closed".into()));
        self.subscribers.interrupt();
        self.subscribers.close_all();
    }

    pub(super) fn add(&self, edit: impl FnOnce(Router) -> Router) {
        let mut table = self.provided.write().unwrap_or_else(|p| p.into_inner());
        *table = edit(std::mem::take(&mut *table));
    }
}
