//! The client side of a broker: channels, and the methods this client
//! provides on them.

use std::{
    fmt,
    future::Future,
    sync::{Arc, RwLock},
};

use busline_core::{Address, Authenticator, Codec, Error, Payload, Result, Transport};
use futures::{stream::BoxStream, Stream, StreamExt};
use serde::{de::DeserializeOwned, Serialize};
use tower::service_fn;

use super::{
    keys::ChannelKeys,
    protocol::{
        self, Balance, BalanceArgs, Challenge, ChannelArgs, ChannelEvent, ChannelInfo,
        IdentifyArgs, Lagged, MethodArgs, MethodSchema, OpenArgs, Opened, OwnerPolicy,
        PasswordArgs, PatternArgs, PolicyArgs, Routed, TopicArgs,
    },
    signing::{Kind, Signer, Verified},
    subscription::{Subscribers, Subscription},
    topic,
};
use crate::rpc::{Client, ClientBuilder, Reply, Request, Router, StreamFn, UnaryFn};

/// A connection to a broker. Clones share it.
#[derive(Clone)]
pub struct BrokerClient {
    client: Client,
    /// What this client provides, consulted for every call the broker
    /// forwards; changed as `provide` is called.
    provided: Arc<RwLock<Router>>,
    subscribers: Arc<Subscribers>,
    events: tokio::sync::broadcast::Sender<ChannelEvent>,
}

/// Channel events kept for a slow [`BrokerClient::events`] reader (the
/// number in its docs).
const EVENT_BACKLOG: usize = 1024;

impl fmt::Debug for BrokerClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerClient")
            .field("client", &self.client)
            .finish()
    }
}

impl BrokerClient {
    /// Connect to the broker at `addr` with a client configured by
    /// `builder` (its codec, authentication and limits).
    pub async fn connect<T: Transport, C: Codec, A: Authenticator>(
        builder: ClientBuilder<C, A>,
        transport: &T,
        addr: &Address,
    ) -> Result<Self> {
        let provided = Arc::new(RwLock::new(Router::new()));
        let subscribers = Arc::new(Subscribers::default());
        let (events, _) = tokio::sync::broadcast::channel(EVENT_BACKLOG);
        let (subs, told) = (subscribers.clone(), events.clone());
        // What the broker pushes comes at publication rate: handled in place.
        let pushed = Arc::new(move |method: &str, payload: &Payload| {
            if let Some(Routed::Topic { channel, topic }) = protocol::parse_routed(method) {
                subs.deliver(channel, topic, payload);
            } else if method == protocol::EVENT {
                match payload.decode_params::<ChannelEvent>() {
                    Ok(event) => drop(told.send(event)),
                    Err(e) => tracing::warn!(error = %e, "unreadable channel event"),
                }
            } else if method == protocol::LAGGED {
                if let Ok(notice) = payload.decode_params::<Lagged>() {
                    subs.lagged(&notice.channel, notice.missed);
                }
            } else {
                return false;
            }
            true
        });
        let table = provided.clone();
        let serve = Router::new()
            .fallback(service_fn(move |req: Request| {
                // A cheap clone (one Arc) of the current table, so no lock is
                // held while the handler runs.
                let router = table.read().unwrap_or_else(|p| p.into_inner()).clone();
                router.dispatch(req)
            }))
            .tap_notifications(pushed);
        let client = builder.serve(serve).connect(transport, addr).await?;
        Ok(BrokerClient {
            client,
            provided,
            subscribers,
            events,
        })
    }

    /// Connect as [`BrokerClient::connect`] does, and claim `client_id`,
    /// which no other live client may hold: a second client with the same
    /// id is refused with [`Error::Unauthorized`] (a restarted service finds
    /// its old connection gone, or waits until the broker sees it go).
    pub async fn connect_as<T: Transport, C: Codec, A: Authenticator>(
        builder: ClientBuilder<C, A>,
        transport: &T,
        addr: &Address,
        client_id: &str,
    ) -> Result<Self> {
        let bus = Self::connect(builder, transport, addr).await?;
        let args = IdentifyArgs {
            client_id: client_id.to_owned(),
        };
        bus.client.call::<_, ()>(protocol::IDENTIFY, &args).await?;
        Ok(bus)
    }

    /// Join `channel`, creating it if it does not exist (the first client
    /// to open a channel owns it). Returns once the broker confirms; a
    /// channel that takes a password refuses with [`Error::Unauthorized`].
    pub async fn open(&self, channel: &str) -> Result<Channel> {
        self.join(channel, None).await
    }

    /// Join `channel` with its password, or create it protected by
    /// `password`. The password itself never leaves this process: the
    /// client proves it knows it by answering a fresh challenge.
    pub async fn open_with_password(&self, channel: &str, password: &str) -> Result<Channel> {
        protocol::check_channel_name(channel)?;
        let keys = derive(channel, password).await?;
        self.join(channel, Some(keys)).await
    }

    async fn join(&self, channel: &str, keys: Option<ChannelKeys>) -> Result<Channel> {
        protocol::check_channel_name(channel)?;
        let mut args = OpenArgs {
            channel: channel.to_owned(),
            proof: None,
            key: None,
        };
        if let Some(keys) = &keys {
            let ask = ChannelArgs {
                channel: channel.to_owned(),
            };
            let challenge: Challenge = self.client.call(protocol::CHALLENGE, &ask).await?;
            let nonce = hex::decode(&challenge.nonce)
                .map_err(|e| Error::Protocol(format!("the broker's nonce is not hex: {e}")))?;
            args.proof = Some(hex::encode(keys.join_proof(channel, &nonce)));
            // The join key is all a joiner needs: it crosses the wire only
            // to create the channel, never to join it.
            if !challenge.exists {
                args.key = Some(hex::encode(keys.join_key()));
            }
        }
        let opened: Opened = self.client.call(protocol::OPEN, &args).await?;
        Ok(Channel {
            bus: self.clone(),
            name: channel.to_owned(),
            owner: opened.owner,
            // The broker itself speaks on system channels, unsigned.
            signer: keys
                .filter(|_| !super::is_system(channel))
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

    /// Every client and unprotected channel of the broker.
    pub async fn status(&self) -> Result<super::BrokerStatus> {
        self.client.call(protocol::STATUS, &()).await
    }

    /// The underlying RPC client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn add(&self, edit: impl FnOnce(Router) -> Router) {
        let mut table = self.provided.write().unwrap_or_else(|p| p.into_inner());
        *table = edit(std::mem::take(&mut *table));
    }
}

/// The JSON Schema of `T`.
fn schema_of<T: schemars::JsonSchema>() -> Result<serde_json::Value> {
    serde_json::to_value(schemars::schema_for!(T))
        .map_err(|e| Error::Serialization(format!("schema of {}: {e}", std::any::type_name::<T>())))
}

/// Derive a channel's keys on a blocking thread: it takes milliseconds of
/// CPU on purpose.
async fn derive(channel: &str, password: &str) -> Result<ChannelKeys> {
    let (channel, password) = (channel.to_owned(), password.to_owned());
    tokio::task::spawn_blocking(move || ChannelKeys::derive(&channel, &password))
        .await
        .map_err(|e| Error::Protocol(format!("key derivation failed: {e}")))
}

/// One channel joined through a [`BrokerClient`].
///
/// On a channel opened with its password ([`BrokerClient::open_with_password`]
/// or after [`Channel::set_password`]), everything this handle sends to
/// other members is signed end to end, and everything it receives from them
/// is checked: calls, replies, stream items and publications. A forged,
/// altered or replayed one fails with [`Error::Unauthorized`].
#[derive(Debug, Clone)]
pub struct Channel {
    bus: BrokerClient,
    name: String,
    owner: bool,
    signer: Option<Arc<Signer>>,
}

impl Channel {
    /// The channel's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The method name a call to `method` on this channel travels under
    /// (for code that calls through [`BrokerClient::client`] directly).
    pub fn routed(&self, method: &str) -> String {
        protocol::routed(&self.name, method)
    }

    /// Whether this client owned the channel when it opened it.
    pub fn is_owner(&self) -> bool {
        self.owner
    }

    /// Serve `method` on this channel with an async function (as
    /// [`Router::unary`]). Several providers of one method share its calls.
    /// Returns once the broker confirms.
    pub async fn provide<F, Args, Fut, Ret, E>(&self, method: &str, f: F) -> Result<()>
    where
        F: Fn(Args) -> Fut + Clone + Send + Sync + 'static,
        Args: DeserializeOwned + Send + 'static,
        Fut: Future<Output = std::result::Result<Ret, E>> + Send + 'static,
        Ret: Serialize + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        self.serve(method, UnaryFn::new(f), None).await
    }

    /// As [`Channel::provide`], and describe the method to the broker with
    /// JSON Schemas of its params and result, so that tools can list what
    /// the channel offers ([`Channel::describe`], `busline status`).
    pub async fn provide_described<F, Args, Fut, Ret, E>(&self, method: &str, f: F) -> Result<()>
    where
        F: Fn(Args) -> Fut + Clone + Send + Sync + 'static,
        Args: DeserializeOwned + schemars::JsonSchema + Send + 'static,
        Fut: Future<Output = std::result::Result<Ret, E>> + Send + 'static,
        Ret: Serialize + schemars::JsonSchema + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        let schema = MethodSchema {
            params: schema_of::<Args>()?,
            result: schema_of::<Ret>()?,
        };
        self.serve(method, UnaryFn::new(f), Some(schema)).await
    }

    /// Serve `method` on this channel with a function returning a stream
    /// (as [`Router::stream`]); the caller's credit paces it end to end.
    pub async fn provide_stream<F, Args, S, T, E>(&self, method: &str, f: F) -> Result<()>
    where
        F: Fn(Args) -> S + Clone + Send + Sync + 'static,
        Args: DeserializeOwned + Send + 'static,
        S: Stream<Item = std::result::Result<T, E>> + Send + 'static,
        T: Serialize + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        self.serve(method, StreamFn::new(f), None).await
    }

    /// Serve `method` with any handler service (as [`Router::route`]), for
    /// raw payloads or middleware.
    pub async fn provide_service<S>(&self, method: &str, service: S) -> Result<()>
    where
        S: tower::Service<Request, Response = crate::rpc::Reply, Error = Error>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.serve(method, service, None).await
    }

    /// Install `service` for `method` (checking signatures on a protected
    /// channel), then tell the broker.
    async fn serve<S>(&self, method: &str, service: S, schema: Option<MethodSchema>) -> Result<()>
    where
        S: tower::Service<Request, Response = Reply, Error = Error> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
    {
        let name = protocol::routed(&self.name, method);
        match &self.signer {
            None => self.bus.add(|r| r.route(name, service)),
            Some(signer) => {
                let verified = Verified::new(service, signer.clone());
                self.bus.add(|r| r.route(name, verified))
            }
        }
        let args = MethodArgs {
            channel: self.name.clone(),
            method: method.to_owned(),
            schema,
        };
        self.bus
            .client
            .call::<_, ()>(protocol::PROVIDE, &args)
            .await
    }

    /// Choose how the calls of `method`, which this client provides, are
    /// shared among its providers (least busy first by default). Returns
    /// once the broker confirms.
    pub async fn set_balance(&self, method: &str, balance: Balance) -> Result<()> {
        let args = BalanceArgs {
            channel: self.name.clone(),
            method: method.to_owned(),
            balance,
        };
        self.bus
            .client
            .call::<_, ()>(protocol::SET_BALANCE, &args)
            .await
    }

    /// Stop serving `method` here. Returns once the broker confirms.
    pub async fn unprovide(&self, method: &str) -> Result<()> {
        let args = MethodArgs {
            channel: self.name.clone(),
            method: method.to_owned(),
            schema: None,
        };
        self.bus
            .client
            .call::<_, ()>(protocol::UNPROVIDE, &args)
            .await
    }

    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Payload> {
        Payload::encode(self.bus.client.encoding(), value)
    }

    /// Sign a call (or a send) on a protected channel; the nonce its
    /// answers carry.
    fn sign_call(&self, kind: Kind, name: &str, payload: Payload) -> Result<(Payload, [u8; 16])> {
        match &self.signer {
            Some(signer) => signer.sign_fresh(kind, name, &payload),
            None => Ok((payload, [0; 16])),
        }
    }

    /// Call `method` on this channel: one of its providers answers.
    pub async fn call<Args: Serialize + ?Sized, Ret: DeserializeOwned>(
        &self,
        method: &str,
        args: &Args,
    ) -> Result<Ret> {
        self.call_raw(method, self.encode(args)?).await?.decode()
    }

    /// Call `method` with an already-encoded payload; the answer's bytes
    /// are exactly the provider's.
    pub async fn call_raw(&self, method: &str, payload: Payload) -> Result<Payload> {
        let name = self.routed(method);
        let (payload, call) = self.sign_call(Kind::Call, &name, payload)?;
        let reply = self.bus.client.call_raw(&name, payload).await?;
        match &self.signer {
            Some(signer) => Ok(signer
                .verify(Kind::Reply, &name, Some((call, 0)), &reply)?
                .0),
            None => Ok(reply),
        }
    }

    /// Fire and forget: one provider of `method` gets it, nobody answers.
    /// Returns once it is queued (waiting for room as
    /// [`Client::notify`] does).
    pub async fn send<Args: Serialize + ?Sized>(&self, method: &str, args: &Args) -> Result<()> {
        let name = self.routed(method);
        let (payload, _) = self.sign_call(Kind::Send, &name, self.encode(args)?)?;
        self.bus.client.notify_raw(&name, payload).await
    }

    /// Fire and forget to every provider of `method` on this channel but
    /// this client. Returns once it is queued, as [`Channel::send`] does.
    pub async fn broadcast<Args: Serialize + ?Sized>(
        &self,
        method: &str,
        args: &Args,
    ) -> Result<()> {
        // Signed under the name the providers receive it by.
        let (payload, _) = self.sign_call(Kind::Send, &self.routed(method), self.encode(args)?)?;
        self.bus
            .client
            .notify_raw(&protocol::broadcast(&self.name, method), payload)
            .await
    }

    /// Open a stream from a provider of `method`; dropping it cancels the
    /// provider's stream. Items come with the provider's backpressure: it
    /// runs at most a window ahead of this reader.
    pub async fn stream<Args: Serialize + ?Sized, Item: DeserializeOwned + 'static>(
        &self,
        method: &str,
        args: &Args,
    ) -> Result<BoxStream<'static, Result<Item>>> {
        let name = self.routed(method);
        let (payload, call) = self.sign_call(Kind::Call, &name, self.encode(args)?)?;
        let items = self.bus.client.stream_payloads(&name, payload).await?;
        let signer = self.signer.clone();
        Ok(Box::pin(items.enumerate().map(move |(i, item)| {
            let item = item?;
            let item = match &signer {
                Some(s) => {
                    s.verify(Kind::Item, &name, Some((call, i as u64)), &item)?
                        .0
                }
                None => item,
            };
            item.decode()
        })))
    }

    /// Publish `value` on `topic` (dot-separated tokens): every member
    /// subscribed to a matching pattern gets it. Fire and forget: returns
    /// once it is queued on the connection, after waiting for room if the
    /// connection's queue is full ([`ClientBuilder::max_queued_notifications`]),
    /// so a fast publisher is paced by its connection rather than growing
    /// memory without bound.
    pub async fn publish<T: Serialize + ?Sized>(&self, topic: &str, value: &T) -> Result<()> {
        self.publish_raw(topic, self.encode(value)?).await
    }

    /// Publish an already-encoded payload on `topic`.
    pub async fn publish_raw(&self, topic: &str, payload: Payload) -> Result<()> {
        topic::check_topic(topic)?;
        let name = protocol::published(&self.name, topic);
        let payload = match &self.signer {
            Some(signer) => signer.sign_fresh(Kind::Publication, &name, &payload)?.0,
            None => payload,
        };
        self.bus.client.notify_raw(&name, payload).await
    }

    /// Become the only publisher of `topic` here (others' publications on
    /// it are refused), and learn through [`BrokerClient::events`]
    /// ([`ChannelEvent::Demand`]) whether anyone is subscribed: now, and
    /// whenever the first subscriber arrives or the last one leaves, so
    /// the topic can be published lazily. Returns once the broker confirms.
    pub async fn own_topic(&self, topic: &str) -> Result<()> {
        topic::check_topic(topic)?;
        let args = TopicArgs {
            channel: self.name.clone(),
            topic: topic.to_owned(),
        };
        self.bus
            .client
            .call::<_, ()>(protocol::OWN_TOPIC, &args)
            .await
    }

    /// Receive what is published on this channel under topics matching
    /// `pattern` (`*` one token, a final `>` the rest). Returns once the
    /// broker confirms; dropping the subscription unsubscribes.
    pub async fn subscribe(&self, pattern: &str) -> Result<Subscription> {
        topic::check_pattern(pattern)?;
        let client = self.bus.client.clone();
        // Registered here first, so nothing published after the broker
        // confirms can arrive before it.
        let subscription = self
            .bus
            .subscribers
            .add(&self.name, pattern, self.signer.clone())
            .on_drop(Box::new(move |channel, pattern| {
                // Outside the bounded queue: a drop cannot wait for room.
                let args = PatternArgs { channel, pattern };
                if let Ok(payload) = Payload::encode(client.encoding(), &args) {
                    let _ = client.notify_unqueued(protocol::UNSUBSCRIBE, payload);
                }
            }));
        let args = PatternArgs {
            channel: self.name.clone(),
            pattern: pattern.to_owned(),
        };
        self.bus
            .client
            .call::<_, ()>(protocol::SUBSCRIBE, &args)
            .await?;
        Ok(subscription)
    }

    /// Protect the channel with `password` (or lift the protection with
    /// `None`); only its owner may. Members already in stay; whoever joins
    /// later needs the password. Returns once the broker confirms.
    pub async fn set_password(&mut self, password: Option<&str>) -> Result<()> {
        let keys = match password {
            Some(password) => Some(derive(&self.name, password).await?),
            None => None,
        };
        let args = PasswordArgs {
            channel: self.name.clone(),
            key: keys.as_ref().map(|k| hex::encode(k.join_key())),
        };
        self.bus
            .client
            .call::<_, ()>(protocol::SET_PASSWORD, &args)
            .await?;
        self.signer = keys.map(|k| Arc::new(Signer::new(&k, &self.name)));
        Ok(())
    }

    /// Choose what happens when the owner leaves; only the owner may.
    pub async fn set_policy(&self, policy: OwnerPolicy) -> Result<()> {
        let args = PolicyArgs {
            channel: self.name.clone(),
            policy,
        };
        self.bus
            .client
            .call::<_, ()>(protocol::SET_POLICY, &args)
            .await
    }

    /// The channel's owner, members and providers, as the broker sees them.
    pub async fn describe(&self) -> Result<ChannelInfo> {
        let args = ChannelArgs {
            channel: self.name.clone(),
        };
        self.bus.client.call(protocol::DESCRIBE, &args).await
    }

    /// Leave the channel (this client's methods on it go too).
    pub async fn leave(self) -> Result<()> {
        let args = ChannelArgs {
            channel: self.name.clone(),
        };
        self.bus.client.call::<_, ()>(protocol::LEAVE, &args).await
    }
}
