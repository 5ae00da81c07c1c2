//! comm-ipc's broadcasts and named subscriptions, as busline publications.
//!
//! - A broadcast of event `E` on a channel is a publication on topic
//!   `broadcast.E` whose payload is `{"sender": client id, "data": …}`;
//!   every member that opened the channel hears it, but its sender.
//! - Subscription `S` is topic `sub.S`, owned (only it publishes there)
//!   by the client that added it; its payload is the published `data`.
//!   The owner hears `subscription.S.first` and `.last` as its first
//!   subscriber comes and its last goes, from the broker's demand events.
//!
//! busline members take part by publishing and subscribing to the same
//! topics.

use std::collections::HashMap;

use busline_core::{Error, Result};
use futures::StreamExt;
use rmpv::Value;
use tokio::{sync::mpsc, task::AbortHandle};

use super::{
    frame::{value_of, Msg},
    now,
    session::Session,
    sign::{sign, Key},
};
use crate::broker::{check_topic, Event, Publication, Subscription};

/// The topic prefix of broadcasts.
const BROADCAST: &str = "broadcast.";
/// The topic prefix of subscriptions.
const SUB: &str = "sub.";

/// A session's publications in and out.
#[derive(Default)]
pub(super) struct Topics {
    /// Per channel it opened: the task relaying broadcasts to it.
    hearing: HashMap<String, AbortHandle>,
    /// (channel, subscription) → the task relaying its publications.
    subscribed: HashMap<(String, String), AbortHandle>,
    /// (channel, subscription) it added, and whether anyone is subscribed
    /// (once the broker has said).
    owned: HashMap<(String, String), Option<bool>>,
}

impl Topics {
    /// The channel is gone: stop relaying what came on it.
    pub(super) fn close_channel(&mut self, channel: &str) {
        if let Some(task) = self.hearing.remove(channel) {
            task.abort();
        }
        self.subscribed.retain(|(ch, _), task| {
            let keep = ch != channel;
            if !keep {
                task.abort();
            }
            keep
        });
        self.owned.retain(|(ch, _), _| ch != channel);
    }

    /// The session is over.
    pub(super) fn close_all(&mut self) {
        let tasks = self.hearing.drain().map(|(_, t)| t);
        for task in tasks.chain(self.subscribed.drain().map(|(_, t)| t)) {
            task.abort();
        }
        self.owned.clear();
    }
}

/// The topic of subscription `name`, or why it cannot be one.
fn sub_topic(name: &str) -> Result<String> {
    let topic = format!("{SUB}{name}");
    check_topic(&topic).map_err(|e| {
        Error::Protocol(format!(
            "subscription name {name:?} makes no busline topic ({e})"
        ))
    })?;
    Ok(topic)
}

/// `channel` and `sub_name`, checked as comm-ipc's server checks them.
fn names(msg: &Msg) -> Result<(String, String)> {
    let (Some(channel), Some(sub)) = (msg.str("channel"), msg.str("sub_name")) else {
        return Err(Error::Protocol("channel and sub_name required".into()));
    };
    if channel == "subscription" {
        return Err(Error::Protocol(format!(
            "Channel name {channel} is reserved"
        )));
    }
    if sub.starts_with("subscription.") {
        return Err(Error::Protocol(format!(
            "Subscription name {sub} is reserved"
        )));
    }
    Ok((channel.to_owned(), sub.to_owned()))
}

/// What a comm-ipc client receives: the fields every one carries.
fn delivery(
    kind: &str,
    channel: &str,
    event: &str,
    data: Value,
    sender: &str,
    server: &str,
) -> Msg {
    Msg::new([
        ("type", Value::from(kind)),
        ("channel", Value::from(channel)),
        ("event", Value::from(event)),
        ("data", data),
        ("sender_id", Value::from(sender)),
        ("server_id", Value::from(server)),
        ("origin_server_id", Value::from(server)),
        ("timestamp", Value::from(now())),
        ("request_id", Value::Nil),
        ("target_id", Value::Nil),
        ("is_stream", Value::from(false)),
        ("is_final", Value::from(true)),
    ])
}

/// `msg`, signed if its channel is protected (comm-ipc leaves publications
/// unsigned, which its own subscribers then drop).
fn signed(key: Option<&Key>, mut msg: Msg) -> Msg {
    if let Some(key) = key {
        sign(key, &mut msg);
    }
    msg
}

/// Relay a subscription's publications to the client as `deliver` words
/// each, until it ends or is aborted.
async fn relay(
    mut subscription: Subscription,
    out: mpsc::Sender<Msg>,
    what: String,
    deliver: impl Fn(Publication) -> Option<Msg> + Send + 'static,
) {
    while let Some(event) = subscription.next().await {
        let msg = match event {
            Ok(Event::Message(publication)) => match deliver(publication) {
                Some(msg) => msg,
                None => continue,
            },
            Ok(Event::Lagged(count)) => Msg::error(format!(
                "{count} {what} were dropped: this client read too slowly"
            )),
            Ok(Event::Interrupted) => continue,
            Err(err) => Msg::error(format!("{what}: {err}")),
        };
        if out.send(msg).await.is_err() {
            return;
        }
    }
}

impl Session {
    /// Hear the broadcasts on a channel this client opened.
    pub(super) async fn hear_broadcasts(&mut self, channel: &str) -> Result<()> {
        if self.topics.hearing.contains_key(channel) {
            return Ok(());
        }
        self.room_for_work()?;
        let joined = self.join(channel, true).await?;
        let subscription = joined.subscribe(&format!("{BROADCAST}>")).await?;
        let (me, server, name) = (
            self.client_id.clone(),
            self.shared.server_id.clone(),
            channel.to_owned(),
        );
        let key = self.keys.get(channel).copied();
        let what = format!("broadcasts on channel {channel}");
        let task = self
            .tasks
            .spawn(relay(subscription, self.out.clone(), what, move |p| {
                let event = p.topic.strip_prefix(BROADCAST)?;
                let value = value_of(&p.payload).unwrap_or(Value::Nil);
                // A busline member may publish the data bare.
                let (sender, data) = match (value.as_map(), &value["data"]) {
                    (Some(_), data) if !value["sender"].is_nil() => (
                        value["sender"].as_str().unwrap_or("busline").to_owned(),
                        data.clone(),
                    ),
                    _ => ("busline".to_owned(), value.clone()),
                };
                let msg = delivery("broadcast", &name, event, data, &sender, &server);
                (sender != me).then(|| signed(key.as_ref(), msg))
            }));
        self.topics.hearing.insert(channel.to_owned(), task);
        Ok(())
    }

    /// `broadcast`: every other member that opened the channel hears it.
    pub(super) async fn broadcast(&mut self, msg: &Msg) -> Result<()> {
        let channel = msg.required("channel")?.to_owned();
        let event = msg.required("event")?;
        let topic = format!("{BROADCAST}{event}");
        check_topic(&topic).map_err(|e| {
            Error::Protocol(format!(
                "event {event:?} cannot be broadcast through busline ({e})"
            ))
        })?;
        let joined = match self.join(&channel, false).await {
            Ok(joined) => joined,
            // No such channel: nobody to hear it.
            Err(Error::MethodNotFound(_)) => return Ok(()),
            Err(err) => return Err(err),
        };
        self.check_signature(&channel, msg)?;
        let envelope = Value::Map(vec![
            (Value::from("sender"), Value::from(self.client_id.as_str())),
            (Value::from("data"), msg.value("data")),
        ]);
        joined.publish(&topic, &envelope).await
    }

    /// `add_subscription`: this client becomes the publisher of `S`.
    pub(super) async fn add_subscription(&mut self, msg: &Msg) -> Result<()> {
        let (channel, sub) = names(msg)?;
        let topic = sub_topic(&sub)?;
        let joined = self.join(&channel, true).await?;
        joined.own_topic(&topic).await.map_err(|e| match e {
            Error::Unauthorized(_) => Error::Protocol(format!(
                "Subscription {sub} already owned by another client"
            )),
            other => other,
        })?;
        self.topics
            .owned
            .entry((channel.clone(), sub.clone()))
            .or_insert(None);
        let schema = msg.value("return_schema");
        self.offered(
            &channel,
            [
                ("name", Value::from(sub.as_str())),
                ("stype", Value::from("subscription")),
                ("return_schema", schema.clone()),
            ],
        );
        self.shared
            .registry()
            .subs
            .insert((channel, sub), (self.client_id.clone(), schema));
        self.succeeded(msg).await;
        Ok(())
    }

    /// `remove_subscription`: only its owner may.
    pub(super) async fn remove_subscription(&mut self, msg: &Msg) -> Result<()> {
        let key = names(msg)?;
        if !self.topics.owned.contains_key(&key) {
            return Err(Error::Protocol(
                "Not the owner or subscription does not exist".into(),
            ));
        }
        let joined = self.join(&key.0, false).await?;
        joined.disown_topic(&sub_topic(&key.1)?).await?;
        self.topics.owned.remove(&key);
        self.shared.registry().subs.remove(&key);
        self.succeeded(msg).await;
        Ok(())
    }

    /// `subscribe`: relay what is published on `S` as `receive` messages
    /// of event `subscription.S.data`.
    pub(super) async fn subscribe(&mut self, msg: &Msg) -> Result<()> {
        let key = names(msg)?;
        if !self.topics.subscribed.contains_key(&key) {
            self.room_for_work()?;
            self.relay_subscription(key).await?;
        }
        self.succeeded(msg).await;
        Ok(())
    }

    /// Relay what is published on subscription `(channel, sub)`.
    async fn relay_subscription(&mut self, key: (String, String)) -> Result<()> {
        let topic = sub_topic(&key.1)?;
        let joined = self.join(&key.0, true).await?;
        let subscription = joined.subscribe(&topic).await?;
        let (channel, sub) = key.clone();
        let shared = self.shared.clone();
        let event = format!("subscription.{sub}.data");
        let what = format!("publications of {sub} on channel {channel}");
        let signing = self.keys.get(&channel).copied();
        let task = self
            .tasks
            .spawn(relay(subscription, self.out.clone(), what, move |p| {
                let data = value_of(&p.payload).unwrap_or(Value::Nil);
                let owner = shared
                    .registry()
                    .subs
                    .get(&(channel.clone(), sub.clone()))
                    .map_or_else(|| "busline".to_owned(), |(owner, _)| owner.clone());
                let mut msg =
                    delivery("receive", &channel, &event, data, &owner, &shared.server_id);
                msg.set("sub_name", Value::from(sub.as_str()));
                Some(signed(signing.as_ref(), msg))
            }));
        self.topics.subscribed.insert(key, task);
        Ok(())
    }

    /// The channel's password changed here: what was heard and
    /// subscribed to with the old keys is heard again with the new.
    pub(super) async fn rehear(&mut self, channel: &str) -> Result<()> {
        if let Some(task) = self.topics.hearing.remove(channel) {
            task.abort();
            self.hear_broadcasts(channel).await?;
        }
        let subscribed: Vec<_> = self
            .topics
            .subscribed
            .keys()
            .filter(|(ch, _)| ch == channel)
            .cloned()
            .collect();
        for key in subscribed {
            if let Some(task) = self.topics.subscribed.remove(&key) {
                task.abort();
            }
            self.relay_subscription(key).await?;
        }
        Ok(())
    }

    /// `unsubscribe`: stop relaying `S`.
    pub(super) async fn unsubscribe(&mut self, msg: &Msg) -> Result<()> {
        let key = names(msg)?;
        if let Some(task) = self.topics.subscribed.remove(&key) {
            // Dropping the subscription in the task unsubscribes.
            task.abort();
        }
        self.succeeded(msg).await;
        Ok(())
    }

    /// `publish`: only the subscription's owner may.
    pub(super) async fn publish(&mut self, msg: &Msg) -> Result<()> {
        let key = names(msg)?;
        if !self.topics.owned.contains_key(&key) {
            return Err(Error::Protocol(format!(
                "only the owner of subscription {} on channel {} may publish",
                key.1, key.0
            )));
        }
        let joined = self.join(&key.0, false).await?;
        joined
            .publish(&sub_topic(&key.1)?, &msg.value("data"))
            .await
    }

    /// The broker says whether anyone wants an owned topic: the first
    /// subscriber's coming and the last one's going are told as comm-ipc
    /// tells them.
    pub(super) async fn on_demand(&mut self, channel: &str, topic: &str, wanted: bool) {
        let Some(sub) = topic.strip_prefix(SUB) else {
            return;
        };
        let key = (channel.to_owned(), sub.to_owned());
        let Some(known) = self.topics.owned.get_mut(&key) else {
            return;
        };
        // The first word only says how things stand.
        let before = known.replace(wanted);
        if before.is_none() || before == Some(wanted) {
            return;
        }
        let edge = if wanted { "first" } else { "last" };
        let data = Value::Map(vec![(Value::from("sub_name"), Value::from(sub))]);
        let event = format!("subscription.{sub}.{edge}");
        let server = self.shared.server_id.clone();
        let msg = delivery("receive", channel, &event, data, "system", &server);
        self.send(signed(self.keys.get(channel), msg)).await;
    }
}
