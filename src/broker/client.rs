//! The client side of a broker: channels, and the methods this client
//! provides on them.

use std::{
    fmt,
    future::Future,
    sync::{Arc, RwLock},
};

use busline_core::{Address, Authenticator, Codec, Error, Payload, Result, Transport};
use futures::Stream;
use serde::{de::DeserializeOwned, Serialize};
use tower::service_fn;

use super::{
    protocol::{self, ChannelArgs, ChannelInfo, Lagged, MethodArgs, Opened, PatternArgs, Routed},
    subscription::{Subscribers, Subscription},
    topic,
};
use crate::rpc::{CallStream, Client, ClientBuilder, Reply, Request, Router};

/// A connection to a broker. Clones share it.
#[derive(Clone)]
pub struct BrokerClient {
    client: Client,
    /// What this client provides, consulted for every call the broker
    /// forwards; changed as `provide` is called.
    provided: Arc<RwLock<Router>>,
    subscribers: Arc<Subscribers>,
}

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
        let (table, subs) = (provided.clone(), subscribers.clone());
        let serve = Router::new().fallback(service_fn(move |req: Request| {
            if let Some(Routed::Topic { channel, topic }) = protocol::parse_routed(&req.method) {
                subs.deliver(channel, topic, &req.payload);
                return done();
            }
            if req.method == protocol::LAGGED {
                if let Ok(notice) = req.arguments::<Lagged>() {
                    subs.lagged(&notice.channel, notice.missed);
                }
                return done();
            }
            // A cheap clone (one Arc) of the current table, so no lock is
            // held while the handler runs.
            let router = table.read().unwrap_or_else(|p| p.into_inner()).clone();
            router.dispatch(req)
        }));
        let client = builder.serve(serve).connect(transport, addr).await?;
        Ok(BrokerClient {
            client,
            provided,
            subscribers,
        })
    }

    /// Join `channel`, creating it if it does not exist (the first client
    /// to open a channel owns it). Returns once the broker confirms.
    pub async fn open(&self, channel: &str) -> Result<Channel> {
        protocol::check_channel_name(channel)?;
        let args = ChannelArgs {
            channel: channel.to_owned(),
        };
        let opened: Opened = self.client.call(protocol::OPEN, &args).await?;
        Ok(Channel {
            bus: self.clone(),
            name: channel.to_owned(),
            owner: opened.owner,
        })
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

fn done() -> futures::future::BoxFuture<'static, Result<Reply>> {
    Box::pin(std::future::ready(Ok(Reply::Unary(Payload::unit()))))
}

/// One channel joined through a [`BrokerClient`].
#[derive(Debug, Clone)]
pub struct Channel {
    bus: BrokerClient,
    name: String,
    owner: bool,
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
        let name = protocol::routed(&self.name, method);
        self.bus.add(|r| r.unary(name, f));
        self.register(method).await
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
        let name = protocol::routed(&self.name, method);
        self.bus.add(|r| r.stream(name, f));
        self.register(method).await
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
        let name = protocol::routed(&self.name, method);
        self.bus.add(|r| r.route(name, service));
        self.register(method).await
    }

    async fn register(&self, method: &str) -> Result<()> {
        let args = MethodArgs {
            channel: self.name.clone(),
            method: method.to_owned(),
        };
        self.bus
            .client
            .call::<_, ()>(protocol::PROVIDE, &args)
            .await
    }

    /// Stop serving `method` here. Returns once the broker confirms.
    pub async fn unprovide(&self, method: &str) -> Result<()> {
        let args = MethodArgs {
            channel: self.name.clone(),
            method: method.to_owned(),
        };
        self.bus
            .client
            .call::<_, ()>(protocol::UNPROVIDE, &args)
            .await
    }

    /// Call `method` on this channel: one of its providers answers.
    pub async fn call<Args: Serialize + ?Sized, Ret: DeserializeOwned>(
        &self,
        method: &str,
        args: &Args,
    ) -> Result<Ret> {
        self.bus
            .client
            .call(&protocol::routed(&self.name, method), args)
            .await
    }

    /// Call `method` with an already-encoded payload; the answer's bytes
    /// are exactly the provider's.
    pub async fn call_raw(&self, method: &str, payload: Payload) -> Result<Payload> {
        self.bus
            .client
            .call_raw(&protocol::routed(&self.name, method), payload)
            .await
    }

    /// Fire and forget: one provider of `method` gets it, nobody answers.
    pub fn send<Args: Serialize + ?Sized>(&self, method: &str, args: &Args) -> Result<()> {
        self.bus
            .client
            .notify(&protocol::routed(&self.name, method), args)
    }

    /// Open a stream from a provider of `method`; dropping it cancels the
    /// provider's stream.
    pub async fn stream<Args: Serialize + ?Sized, Item: DeserializeOwned>(
        &self,
        method: &str,
        args: &Args,
    ) -> Result<CallStream<Item>> {
        self.bus
            .client
            .stream(&protocol::routed(&self.name, method), args)
            .await
    }

    /// Publish `value` on `topic` (dot-separated tokens): every member
    /// subscribed to a matching pattern gets it. Fire and forget.
    pub fn publish<T: Serialize + ?Sized>(&self, topic: &str, value: &T) -> Result<()> {
        topic::check_topic(topic)?;
        self.bus
            .client
            .notify(&protocol::published(&self.name, topic), value)
    }

    /// Publish an already-encoded payload on `topic`.
    pub fn publish_raw(&self, topic: &str, payload: Payload) -> Result<()> {
        topic::check_topic(topic)?;
        self.bus
            .client
            .notify_raw(&protocol::published(&self.name, topic), payload)
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
            .add(&self.name, pattern)
            .on_drop(Box::new(move |channel, pattern| {
                let _ = client.notify(protocol::UNSUBSCRIBE, &PatternArgs { channel, pattern });
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
