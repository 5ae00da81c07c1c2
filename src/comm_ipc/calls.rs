//! What a comm-ipc client asks of channels: opening them, providing
//! events, calling them, listing members.

use std::collections::HashMap;

use busline_core::{Error, Result};
use futures::StreamExt;
use rmpv::Value;
use tokio::sync::mpsc;

use super::{
    forward::Forward,
    frame::Msg,
    now,
    session::{response, text, Session},
    sign::{sign, Key},
};
use crate::broker::Channel;

/// An error as comm-ipc words the same failure, for a call of `event` on
/// `channel`.
fn error_text(channel: &str, event: &str, err: Error) -> String {
    match err {
        Error::MethodNotFound(_) => format!("No provider for {channel}:{event}"),
        other => text(other),
    }
}

impl Session {
    /// `register`: open a channel, or provide an event on it.
    pub(super) async fn register(&mut self, reg: &Msg) -> Result<()> {
        let name = reg.required("channel")?.to_owned();
        let channel = self.join(&name, true).await?;
        let id = reg.value("request_id");
        let event = reg
            .str("event")
            .filter(|e| !e.is_empty())
            .map(str::to_owned);
        if reg.flag("is_provider") {
            let Some(event) = &event else {
                return Err(Error::Protocol(
                    "Event name required for provider registration".into(),
                ));
            };
            self.provide(&channel, event, reg).await?;
            self.offered(
                &name,
                [
                    ("name", Value::from(event.as_str())),
                    ("stype", Value::from("event")),
                    ("is_stream", Value::from(reg.flag("is_stream"))),
                    ("is_group", Value::from(reg.flag("is_group"))),
                    ("param_schema", reg.value("param_schema")),
                    ("return_schema", reg.value("return_schema")),
                ],
            );
            self.entered(&name, false);
            self.send(Msg::new([
                ("type", Value::from("response")),
                ("request_id", id.clone()),
                ("channel", Value::from(name.as_str())),
                ("event", Value::from(event.as_str())),
                ("success", Value::from(true)),
            ]))
            .await;
        } else {
            self.sync(&channel).await?;
            self.hear_broadcasts(&name).await?;
            self.entered(&name, true);
        }
        // comm-ipc answers every registration so, a provider's twice.
        let protected = self.shared.registry().passwords.contains_key(&name);
        let data = Value::Map(vec![
            (Value::from("channel"), Value::from(name.as_str())),
            (
                Value::from("event"),
                event.clone().map_or(Value::Nil, Value::from),
            ),
            (Value::from("authenticated"), Value::from(protected)),
        ]);
        let mut joined = response(id, Ok(data));
        joined.set("channel", Value::from(name.as_str()));
        joined.set("event", event.map_or(Value::Nil, Value::from));
        self.send(joined).await;
        Ok(())
    }

    /// Provide `event` on `channel`, under comm-ipc's rule: one provider
    /// per event, unless every one of them registers as a group.
    async fn provide(&mut self, channel: &Channel, event: &str, reg: &Msg) -> Result<()> {
        let key = (channel.name().to_owned(), event.to_owned());
        let is_group = reg.flag("is_group");
        let info = channel.describe().await?;
        let providers = info
            .methods
            .iter()
            .find(|(method, _)| method == event)
            .map_or(0, |(_, providers)| providers.len());
        let (mine, grouped) = match self.shared.registry().events.get(&key) {
            Some(meta) => (meta.providers.contains(&self.client_id), meta.is_group),
            None => (false, false),
        };
        if providers > 0 && !mine && !(is_group && grouped) {
            return Err(Error::Protocol(format!(
                "Provider already exists for {}:{event} and group mode is incompatible",
                channel.name()
            )));
        }
        channel
            .provide_service(event, self.forward(channel.name(), event))
            .await?;
        let mut registry = self.shared.registry();
        let meta = registry.events.entry(key).or_default();
        meta.is_stream = reg.flag("is_stream");
        meta.is_group = is_group;
        meta.param_schema = reg.value("param_schema");
        meta.return_schema = reg.value("return_schema");
        if !meta.providers.contains(&self.client_id) {
            meta.providers.push(self.client_id.clone());
        }
        Ok(())
    }

    /// The handler service that brings the broker's calls of `event` on
    /// `channel` to this client.
    pub(super) fn forward(&self, channel: &str, event: &str) -> Forward {
        Forward {
            out: self.out.clone(),
            pending: self.pending.clone(),
            channel: channel.to_owned(),
            event: event.to_owned(),
            server_id: self.shared.server_id.clone(),
            key: self.keys.get(channel).copied(),
        }
    }

    /// Tell a client that opened `channel` what it offers (`channel_sync`).
    async fn sync(&self, channel: &Channel) -> Result<()> {
        let info = channel.describe().await?;
        let events = self.events_of(channel.name(), &info);
        self.send(Msg::new([
            ("type", Value::from("channel_sync")),
            ("channel", Value::from(channel.name())),
            ("events", events),
            ("subscriptions", self.subscriptions_of(channel.name())),
        ]))
        .await;
        Ok(())
    }

    /// The subscriptions of a channel as `channel_sync` lists them.
    fn subscriptions_of(&self, channel: &str) -> Value {
        let registry = self.shared.registry();
        let subs = registry.subs.iter().filter(|((ch, _), _)| ch == channel);
        Value::Map(
            subs.map(|((_, sub), (owner, schema))| {
                let entry = Msg::new([
                    ("owner", Value::from(owner.as_str())),
                    ("param_schema", schema.clone()),
                    ("stype", Value::from("subscription")),
                ]);
                (Value::from(sub.as_str()), entry.into_value())
            })
            .collect(),
        )
    }

    /// The events of a channel as `channel_sync` lists them: what comm-ipc
    /// providers registered, and busline providers' schemas.
    fn events_of(&self, channel: &str, info: &crate::broker::ChannelInfo) -> Value {
        let registry = self.shared.registry();
        let events: Vec<_> = info
            .methods
            .iter()
            .map(|(method, _)| {
                let meta = registry.events.get(&(channel.to_owned(), method.clone()));
                let schema = |pick: fn(&crate::broker::MethodSchema) -> &serde_json::Value| {
                    info.schemas
                        .iter()
                        .find(|(m, _)| m == method)
                        .and_then(|(_, s)| rmpv::ext::to_value(pick(s)).ok())
                        .unwrap_or(Value::Nil)
                };
                let entry = [
                    (
                        "owner",
                        meta.and_then(|m| m.providers.first())
                            .map_or(Value::from("busline"), |o| Value::from(o.as_str())),
                    ),
                    ("is_stream", Value::from(meta.is_some_and(|m| m.is_stream))),
                    ("is_group", Value::from(meta.is_some_and(|m| m.is_group))),
                    (
                        "param_schema",
                        meta.map_or_else(|| schema(|s| &s.params), |m| m.param_schema.clone()),
                    ),
                    (
                        "return_schema",
                        meta.map_or_else(|| schema(|s| &s.result), |m| m.return_schema.clone()),
                    ),
                    ("stype", Value::from("event")),
                ];
                (Value::from(method.as_str()), Msg::new(entry).into_value())
            })
            .collect();
        Value::Map(events)
    }

    /// `call`: call an event through the broker, answering with one
    /// response, or a stream's chunks and its final one.
    pub(super) async fn call(&mut self, msg: Msg) {
        let (Some(name), Some(event)) = (msg.str("channel"), msg.str("event")) else {
            let error = "a call needs a channel and an event".to_owned();
            return self.refuse(&msg, error).await;
        };
        if let Err(err) = self.room_for_work() {
            return self.refuse(&msg, text(err)).await;
        }
        let (name, event) = (name.to_owned(), event.to_owned());
        // Calls do not create channels: one that does not exist has no
        // provider.
        let channel = self.join(&name, false).await;
        let respond = Responder {
            out: self.out.clone(),
            id: msg.value("request_id"),
            channel: name.clone(),
            event: event.clone(),
            server_id: self.shared.server_id.clone(),
            client_id: self.client_id.clone(),
            key: self.keys.get(&name).copied(),
        };
        if let Err(err) = self.check_signature(&name, &msg) {
            return respond.failed(text(err)).await;
        }
        let (data, stream) = (msg.value("data"), msg.flag("is_stream"));
        self.tasks.spawn(async move {
            let channel = match channel {
                Ok(channel) => channel,
                Err(err) => return respond.failed(error_text(&name, &event, err)).await,
            };
            if !stream {
                let outcome = channel.call::<_, Value>(&event, &data).await;
                return match outcome {
                    Ok(value) => respond.chunk(value, false, true).await,
                    Err(err) => respond.failed(error_text(&name, &event, err)).await,
                };
            }
            let mut items = match channel.stream::<_, Value>(&event, &data).await {
                Ok(items) => items,
                Err(err) => return respond.failed(error_text(&name, &event, err)).await,
            };
            while let Some(item) = items.next().await {
                match item {
                    Ok(value) => respond.chunk(value, true, false).await,
                    Err(err) => return respond.failed(error_text(&name, &event, err)).await,
                }
            }
            respond.chunk(Value::Nil, true, true).await;
        });
    }

    /// `send`: one provider of the event gets it; nobody answers.
    pub(super) async fn send_event(&mut self, msg: &Msg) -> Result<()> {
        let name = msg.required("channel")?.to_owned();
        let event = msg.required("event")?.to_owned();
        let channel = self.join(&name, false).await?;
        self.check_signature(&name, msg)?;
        channel.send(&event, &msg.value("data")).await
    }

    /// `list_members`: the channel's members, by client id.
    pub(super) async fn list_members(&mut self, msg: Msg) {
        let id = msg.value("request_id");
        let Some(name) = msg.str("channel").map(str::to_owned) else {
            return self
                .refuse(&msg, "list_members needs a channel".into())
                .await;
        };
        if let Err(err) = self.room_for_work() {
            return self.refuse(&msg, text(err)).await;
        }
        let channel = self.join(&name, false).await;
        let (bus, out, shared) = (self.bus.clone(), self.out.clone(), self.shared.clone());
        self.tasks.spawn(async move {
            let listed = async {
                let info = channel?.describe().await?;
                let ids: HashMap<u64, String> =
                    bus.status().await?.client_ids.into_iter().collect();
                let registry = shared.registry();
                let members = info.members.iter().map(|conn| {
                    let id = ids
                        .get(conn)
                        .cloned()
                        .unwrap_or_else(|| format!("busline-{conn}"));
                    let mode = registry.modes.get(&id).map_or("client", String::as_str);
                    Msg::new([
                        ("id", Value::from(id.as_str())),
                        ("mode", Value::from(mode)),
                        ("is_local", Value::from(true)),
                        ("path", Value::Array(Vec::new())),
                    ])
                    .into_value()
                });
                Ok::<_, Error>(Value::Map(vec![(
                    Value::from("members"),
                    Value::Array(members.collect()),
                )]))
            };
            let outcome = listed.await.map_err(|e| e.to_string());
            let _ = out.send(response(id, outcome)).await;
        });
    }
}

/// Writes the answers to one call of a comm-ipc client.
struct Responder {
    out: mpsc::Sender<Msg>,
    id: Value,
    channel: String,
    event: String,
    server_id: String,
    client_id: String,
    /// The channel's comm-ipc message key, if it is protected.
    key: Option<Key>,
}

impl Responder {
    fn message(&self, outcome: std::result::Result<Value, String>) -> Msg {
        let mut msg = response(self.id.clone(), outcome);
        let server = Value::from(self.server_id.as_str());
        msg.set("channel", Value::from(self.channel.as_str()));
        msg.set("event", Value::from(self.event.as_str()));
        msg.set("sender_id", Value::from("busline"));
        msg.set("server_id", server.clone());
        msg.set("origin_server_id", server);
        msg.set("target_id", Value::from(self.client_id.as_str()));
        msg.set("timestamp", Value::from(now()));
        msg
    }

    /// Send `msg`, signed on a protected channel (comm-ipc signs none of
    /// its answers, so its own clients fail to check stream chunks).
    async fn deliver(&self, mut msg: Msg) {
        if let Some(key) = &self.key {
            sign(key, &mut msg);
        }
        let _ = self.out.send(msg).await;
    }

    async fn chunk(&self, data: Value, stream: bool, last: bool) {
        let mut msg = self.message(Ok(data));
        msg.set("is_stream", Value::from(stream));
        msg.set("is_final", Value::from(last));
        self.deliver(msg).await;
    }

    async fn failed(&self, error: String) {
        self.deliver(self.message(Err(error))).await;
    }
}
