//! One channel joined through a broker client: providing, calling,
//! streaming, publishing and subscribing, and the owner's controls.

use std::{future::Future, sync::Arc};

use busline_core::{Error, Payload, Result};
use futures::{stream::BoxStream, Stream, StreamExt};
use serde::{de::DeserializeOwned, Serialize};

use super::{
    client::BrokerClient,
    keys::ChannelKeys,
    link::Joined,
    protocol::{
        self, Balance, BalanceArgs, ChannelArgs, ChannelInfo, MethodArgs, MethodSchema,
        OwnerPolicy, PasswordArgs, PatternArgs, PolicyArgs, TopicArgs,
    },
    signing::{Kind, Signer, Verified},
    subscription::Subscription,
    topic,
};
use crate::rpc::{Client, Reply, Request, StreamFn, UnaryFn};

/// One channel joined through a [`BrokerClient`].
///
/// On a channel opened with its password ([`BrokerClient::open_with_password`]
/// or after [`Channel::set_password`]), everything this handle sends to
/// other members is signed end to end, and everything it receives from them
/// is checked: calls, replies, stream items and publications. A forged,
/// altered or replayed one fails with [`Error::Unauthorized`].
#[derive(Debug, Clone)]
pub struct Channel {
    pub(super) bus: BrokerClient,
    pub(super) name: String,
    pub(super) owner: bool,
    pub(super) signer: Option<Arc<Signer>>,
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
    /// [`Router::unary`](crate::rpc::Router::unary)). Several providers of one method share its calls.
    /// Returns once the broker confirms.
    pub async fn provide<F, Args, Fut, Ret, E>(&self, method: &str, f: F) -> Result<()>
    where
        F: Fn(Args) -> Fut + Clone + Send + Sync + 'static,
        Args: DeserializeOwned + Send + 'static,
        Fut: Future<Output = std::result::Result<Ret, E>> + Send + 'static,
        Ret: Serialize + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        self.serve(method, UnaryFn::new(f), None, Vec::new()).await
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
        self.serve(method, UnaryFn::new(f), Some(schema), Vec::new())
            .await
    }

    /// Serve `method` on this channel with a function returning a stream
    /// (as [`Router::stream`](crate::rpc::Router::stream)); the caller's credit paces it end to end.
    pub async fn provide_stream<F, Args, S, T, E>(&self, method: &str, f: F) -> Result<()>
    where
        F: Fn(Args) -> S + Clone + Send + Sync + 'static,
        Args: DeserializeOwned + Send + 'static,
        S: Stream<Item = std::result::Result<T, E>> + Send + 'static,
        T: Serialize + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        self.serve(method, StreamFn::new(f), None, Vec::new()).await
    }

    /// Serve `method` with any handler service (as [`Router::route`](crate::rpc::Router::route)), for
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
        self.serve(method, service, None, Vec::new()).await
    }

    /// Install `service` for `method` (checking signatures on a protected
    /// channel), then tell the broker, which reaches it through the brokers
    /// in `via` (a bridge's registration; empty for a provider here).
    pub(crate) async fn serve<S>(
        &self,
        method: &str,
        service: S,
        schema: Option<MethodSchema>,
        via: Vec<String>,
    ) -> Result<()>
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
            schema: schema.clone(),
            via: via.clone(),
        };
        self.control(protocol::PROVIDE, &args).await?;
        self.record(|joined| {
            joined.methods.insert(method.to_owned(), (schema, via));
        });
        Ok(())
    }

    /// Make a control call to the broker about this channel.
    async fn control<A: Serialize>(&self, method: &str, args: &A) -> Result<()> {
        self.bus
            .link
            .client()
            .await?
            .call::<_, ()>(method, args)
            .await
    }

    /// Note what a reconnecting client must set up again.
    fn record(&self, edit: impl FnOnce(&mut Joined)) {
        edit(self.bus.link.record().joined(&self.name));
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
        self.control(protocol::SET_BALANCE, &args).await?;
        self.record(|joined| {
            joined.balances.insert(method.to_owned(), balance);
        });
        Ok(())
    }

    /// Stop serving `method` here. Returns once the broker confirms.
    pub async fn unprovide(&self, method: &str) -> Result<()> {
        let args = MethodArgs {
            channel: self.name.clone(),
            method: method.to_owned(),
            schema: None,
            via: Vec::new(),
        };
        self.control(protocol::UNPROVIDE, &args).await?;
        self.record(|joined| {
            joined.methods.remove(method);
            joined.balances.remove(method);
        });
        Ok(())
    }

    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Payload> {
        Payload::encode(self.bus.link.now().encoding(), value)
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
        let reply = self
            .bus
            .link
            .client()
            .await?
            .call_raw(&name, payload)
            .await?;
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
        self.bus.link.notify(name, payload).await
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
        let name = protocol::broadcast(&self.name, method);
        self.bus.link.notify(name, payload).await
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
        let items = self
            .bus
            .link
            .client()
            .await?
            .stream_payloads(&name, payload)
            .await?;
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
    /// connection's queue is full ([`ClientBuilder::max_queued_notifications`](crate::rpc::ClientBuilder::max_queued_notifications)),
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
        self.bus.link.notify(name, payload).await
    }

    /// Become the only publisher of `topic` here (others' publications on
    /// it are refused), and learn through [`BrokerClient::events`]
    /// ([`ChannelEvent::Demand`](super::ChannelEvent::Demand)) whether anyone is subscribed: now, and
    /// whenever the first subscriber arrives or the last one leaves, so
    /// the topic can be published lazily. Returns once the broker confirms.
    pub async fn own_topic(&self, topic: &str) -> Result<()> {
        topic::check_topic(topic)?;
        let args = TopicArgs {
            channel: self.name.clone(),
            topic: topic.to_owned(),
        };
        self.control(protocol::OWN_TOPIC, &args).await?;
        self.record(|joined| {
            if !joined.topics.iter().any(|t| t == topic) {
                joined.topics.push(topic.to_owned());
            }
        });
        Ok(())
    }

    /// Give up a topic taken with [`Channel::own_topic`]: anyone may publish
    /// on it again. Returns once the broker confirms.
    pub async fn disown_topic(&self, topic: &str) -> Result<()> {
        topic::check_topic(topic)?;
        let args = TopicArgs {
            channel: self.name.clone(),
            topic: topic.to_owned(),
        };
        self.control(protocol::DISOWN_TOPIC, &args).await?;
        self.record(|joined| joined.topics.retain(|t| t != topic));
        Ok(())
    }

    /// Receive what is published on this channel under topics matching
    /// `pattern` (`*` one token, a final `>` the rest). Returns once the
    /// broker confirms; dropping the subscription unsubscribes.
    pub async fn subscribe(&self, pattern: &str) -> Result<Subscription> {
        topic::check_pattern(pattern)?;
        let link = Arc::downgrade(&self.bus.link);
        // Registered here first, so nothing published after the broker
        // confirms can arrive before it.
        let subscription = self
            .bus
            .subscribers
            .add(&self.name, pattern, self.signer.clone())
            .on_drop(Box::new(move |channel, pattern| {
                // On the connection there is now, outside the bounded
                // queue: a drop cannot wait.
                let Some(client) = link.upgrade().map(|link| link.now()) else {
                    return;
                };
                unsubscribe_now(&client, channel, pattern);
            }));
        let args = PatternArgs {
            channel: self.name.clone(),
            pattern: pattern.to_owned(),
            via: Vec::new(),
        };
        self.control(protocol::SUBSCRIBE, &args).await?;
        Ok(subscription)
    }

    /// Subscribe as a bridge, for subscribers on the brokers in `via`: the
    /// publications come to [`BrokerClient::on_relayed`] with their path.
    pub(crate) async fn relay_subscribe(&self, pattern: &str, via: Vec<String>) -> Result<()> {
        let args = PatternArgs {
            channel: self.name.clone(),
            pattern: pattern.to_owned(),
            via: via.clone(),
        };
        self.control(protocol::SUBSCRIBE, &args).await?;
        self.record(|joined| {
            joined.relays.insert(pattern.to_owned(), via);
        });
        Ok(())
    }

    /// Undo [`Channel::relay_subscribe`].
    pub(crate) async fn relay_unsubscribe(&self, pattern: &str) -> Result<()> {
        let args = PatternArgs {
            channel: self.name.clone(),
            pattern: pattern.to_owned(),
            via: Vec::new(),
        };
        self.control(protocol::UNSUBSCRIBE, &args).await?;
        self.record(|joined| {
            joined.relays.remove(pattern);
        });
        Ok(())
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
        self.control(protocol::SET_PASSWORD, &args).await?;
        self.record(|joined| joined.keys = keys.clone());
        self.signer = keys.map(|k| Arc::new(Signer::new(&k, &self.name)));
        Ok(())
    }

    /// Choose what happens when the owner leaves; only the owner may.
    pub async fn set_policy(&self, policy: OwnerPolicy) -> Result<()> {
        let args = PolicyArgs {
            channel: self.name.clone(),
            policy,
        };
        self.control(protocol::SET_POLICY, &args).await?;
        self.record(|joined| joined.policy = Some(policy));
        Ok(())
    }

    /// The channel's owner, members and providers, as the broker sees them.
    pub async fn describe(&self) -> Result<ChannelInfo> {
        let args = ChannelArgs {
            channel: self.name.clone(),
        };
        self.bus
            .link
            .client()
            .await?
            .call(protocol::DESCRIBE, &args)
            .await
    }

    /// Leave the channel (this client's methods on it go too).
    pub async fn leave(self) -> Result<()> {
        let args = ChannelArgs {
            channel: self.name.clone(),
        };
        self.control(protocol::LEAVE, &args).await?;
        self.bus.link.record().channels.remove(&self.name);
        self.bus.subscribers.close_channel(&self.name);
        Ok(())
    }
}

/// Tell the broker, without waiting (for a drop), that `(channel,
/// pattern)` is no longer wanted; best effort on a closing connection.
pub(super) fn unsubscribe_now(client: &Client, channel: String, pattern: String) {
    let args = PatternArgs {
        channel,
        pattern,
        via: Vec::new(),
    };
    if let Ok(payload) = Payload::encode(client.encoding(), &args) {
        let _ = client.notify_unqueued(protocol::UNSUBSCRIBE, payload);
    }
}

/// The JSON Schema of `T`.
fn schema_of<T: schemars::JsonSchema>() -> Result<serde_json::Value> {
    serde_json::to_value(schemars::schema_for!(T))
        .map_err(|e| Error::Serialization(format!("schema of {}: {e}", std::any::type_name::<T>())))
}

/// Derive a channel's keys on a blocking thread: it takes milliseconds of
/// CPU on purpose.
pub(crate) async fn derive(channel: &str, password: &str) -> Result<ChannelKeys> {
    let (channel, password) = (channel.to_owned(), password.to_owned());
    tokio::task::spawn_blocking(move || ChannelKeys::derive(&channel, &password))
        .await
        .map_err(|e| Error::Protocol(format!("key derivation failed: {e}")))
}
