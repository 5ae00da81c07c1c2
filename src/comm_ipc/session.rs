//! One comm-ipc client's connection: its handshake, then each message it
//! sends acted on through a broker client of its own.

use std::{collections::HashMap, sync::Arc, time::Duration};

use busline_core::{Error, Io, Result};
use futures::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use rmpv::Value;
use sha2::Sha256;
use tokio::{sync::mpsc, task::JoinSet};
use tokio_util::codec::Framed;

use super::{
    forward::{request_id, Forward, Pending},
    frame::{FrameCodec, Msg},
    now, Shared,
};
use crate::broker::{BrokerClient, Channel, ChannelEvent};

/// How long a client has to answer the connection challenge (comm-ipc's
/// own server gives 10 s).
const PROOF_WAIT: Duration = Duration::from_secs(10);

/// Messages queued for one client's socket; producers wait beyond it, so
/// a client that does not read slows its own streams, nobody else's.
const OUT_QUEUE: usize = 256;

/// The message types of comm-ipc this listener does not carry yet.
const NOT_YET: [&str; 7] = [
    "broadcast",
    "set_password",
    "add_subscription",
    "remove_subscription",
    "subscribe",
    "unsubscribe",
    "publish",
];

/// Serve one connection to its end.
pub(super) async fn serve<I: Io>(shared: Arc<Shared>, io: I) {
    let mut framed = Framed::new(io, FrameCodec::new(shared.max_frame));
    let (client_id, bus) = match handshake(&shared, &mut framed).await {
        Ok(identified) => identified,
        Err(message) => {
            tracing::debug!(%message, "comm-ipc handshake refused");
            let _ = framed.send(Msg::error(message)).await;
            return;
        }
    };
    let (sink, mut frames) = framed.split();
    let (out, queued) = mpsc::channel(OUT_QUEUE);
    let writer = tokio::spawn(write_all(sink, queued));
    let mut session = Session {
        shared: shared.clone(),
        client_id,
        bus,
        out,
        channels: HashMap::new(),
        pending: Pending::default(),
        tasks: JoinSet::new(),
    };
    let mut events = session.bus.events();
    loop {
        tokio::select! {
            frame = tokio::time::timeout(shared.idle_timeout, frames.next()) => match frame {
                Ok(Some(Ok(msg))) => session.handle(msg).await,
                Ok(Some(Err(err))) => {
                    // The framing is lost (or was never there): say why, and end.
                    tracing::debug!(error = %err, "bad comm-ipc frame; closing");
                    session.send(Msg::error(err.to_string())).await;
                    break;
                }
                // Gone, or silent past the idle timeout (comm-ipc's clients
                // ping twice within it).
                Ok(None) | Err(_) => break,
            },
            Some(event) = events.next() => session.on_event(event).await,
            Some(_) = session.tasks.join_next(), if !session.tasks.is_empty() => {}
        }
    }
    session.end();
    drop(session);
    let _ = writer.await;
}

/// `identify`, and with a secret the connection challenge; then a broker
/// client claiming the client's id. `Err` is what to tell the client.
async fn handshake<I: Io>(
    shared: &Shared,
    framed: &mut Framed<I, FrameCodec>,
) -> std::result::Result<(String, BrokerClient), String> {
    let first = next(framed, shared.idle_timeout).await?;
    if first.kind() != Some("identify") {
        return Err("the first message must be identify".into());
    }
    let client_id = match first.str("client_id") {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ => format!("cli-{}", &request_id()[..8]),
    };
    let mode = first.str("mode").unwrap_or("client").to_owned();
    if let Some(key) = &shared.secret_hash {
        let challenge = request_id() + &request_id();
        let ask = Msg::new([
            ("type", Value::from("conn_challenge")),
            ("challenge", Value::from(challenge.as_str())),
            ("server_id", Value::from(shared.server_id.as_str())),
        ]);
        framed.send(ask).await.map_err(|e| e.to_string())?;
        let answer = next(framed, PROOF_WAIT).await?;
        let proof = answer
            .str("proof")
            .filter(|_| answer.kind() == Some("conn_proof"));
        if !proof.is_some_and(|proof| proves(key, &challenge, proof)) {
            return Err("Authentication failed".into());
        }
    }
    let bus = (shared.connect)(&client_id).await.map_err(|e| match e {
        Error::Unauthorized(_) => format!("Client ID {client_id} already in use"),
        other => format!("the broker refused the connection: {other}"),
    })?;
    shared.registry().modes.insert(client_id.clone(), mode);
    let identified = Msg::new([
        ("type", Value::from("identified")),
        ("client_id", Value::from(client_id.as_str())),
        ("server_id", Value::from(shared.server_id.as_str())),
    ]);
    if let Err(e) = framed.send(identified).await {
        shared.registry().forget(&client_id);
        bus.close();
        return Err(e.to_string());
    }
    Ok((client_id, bus))
}

/// The next message, within `wait`.
async fn next<I: Io>(
    framed: &mut Framed<I, FrameCodec>,
    wait: Duration,
) -> std::result::Result<Msg, String> {
    match tokio::time::timeout(wait, framed.next()).await {
        Ok(Some(Ok(msg))) => Ok(msg),
        Ok(Some(Err(e))) => Err(e.to_string()),
        Ok(None) => Err("the client closed the connection".into()),
        Err(_) => Err(format!("no message within {wait:?}")),
    }
}

/// Whether `proof` is comm-ipc's answer to `challenge`: the hex HMAC-SHA256,
/// keyed with the hex SHA-256 of the secret, of `challenge:"<challenge>"`
/// (its signature text for a message holding only the challenge).
fn proves(key: &str, challenge: &str, proof: &str) -> bool {
    let Ok(proof) = hex::decode(proof) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes any key");
    mac.update(format!("challenge:\"{challenge}\"").as_bytes());
    mac.verify_slice(&proof).is_ok()
}

/// Write queued messages, as many as are waiting per flush. A message too
/// large to send becomes an error answer to its call, if it answers one.
async fn write_all<S>(mut sink: S, mut queued: mpsc::Receiver<Msg>)
where
    S: futures::Sink<Msg, Error = Error> + Unpin,
{
    while let Some(mut msg) = queued.recv().await {
        loop {
            if let Err(err) = sink.feed(msg.clone()).await {
                let Error::FrameTooLarge { .. } = err else {
                    return;
                };
                let Some(id) = msg.get("request_id").filter(|id| !id.is_nil()) else {
                    tracing::warn!(error = %err, "dropped a comm-ipc message too large to send");
                    break;
                };
                msg = response(id.clone(), Err(err.to_string()));
                continue;
            }
            break;
        }
        if queued.is_empty() && sink.flush().await.is_err() {
            return;
        }
    }
    let _ = sink.close().await;
}

/// `{"type": "response", "request_id": id, "data": …}` or `"error": …`.
fn response(id: Value, outcome: std::result::Result<Value, String>) -> Msg {
    let mut msg = Msg::new([("type", Value::from("response")), ("request_id", id)]);
    match outcome {
        Ok(data) => msg.set("data", data),
        Err(error) => msg.set("error", Value::from(error)),
    }
    msg
}

/// An error as comm-ipc words the same failure, for a call of `event` on
/// `channel`.
fn error_text(channel: &str, event: &str, err: Error) -> String {
    match err {
        Error::MethodNotFound(_) => format!("No provider for {channel}:{event}"),
        other => text(other),
    }
}

/// An error's text as comm-ipc's server would word it: its own refusals
/// and a provider's `str(exception)` bare, busline's with their category.
fn text(err: Error) -> String {
    match err {
        Error::Protocol(message) | Error::HandlerFailed { message, .. } => message,
        other => other.to_string(),
    }
}

struct Session {
    shared: Arc<Shared>,
    client_id: String,
    bus: BrokerClient,
    out: mpsc::Sender<Msg>,
    channels: HashMap<String, Channel>,
    /// Calls to events this client provides, awaiting its answers.
    pending: Pending,
    /// Calls this client made, running.
    tasks: JoinSet<()>,
}

impl Session {
    async fn send(&self, msg: Msg) {
        let _ = self.out.send(msg).await;
    }

    /// Answer `msg` with an error: as a response if it has a request id,
    /// else as an error message.
    async fn refuse(&self, msg: &Msg, error: String) {
        match msg.get("request_id").filter(|id| !id.is_nil()) {
            Some(id) => self.send(response(id.clone(), Err(error))).await,
            None => self.send(Msg::error(error)).await,
        }
    }

    async fn handle(&mut self, msg: Msg) {
        match msg.kind() {
            Some("ping") => self.send(Msg::new([("type", Value::from("pong"))])).await,
            Some("register") => {
                let reg = match msg.get("reg") {
                    Some(Value::Map(entries)) => Msg(entries.clone()),
                    _ => msg,
                };
                if let Err(err) = self.register(&reg).await {
                    self.refuse(&reg, text(err)).await;
                }
            }
            Some("call") => self.call(msg).await,
            Some("response") => self.pending.answer(&msg),
            Some("send") => {
                if let Err(err) = self.send_event(&msg).await {
                    self.refuse(&msg, text(err)).await;
                }
            }
            Some("list_members") => self.list_members(msg).await,
            Some(kind) if NOT_YET.contains(&kind) => {
                let text = format!("{kind} is not carried by busline's comm-ipc listener yet");
                self.refuse(&msg, text).await;
            }
            Some(kind) => {
                let text = format!("unknown comm-ipc message type {kind:?}");
                self.refuse(&msg, text).await;
            }
            None => {
                self.refuse(&msg, "a comm-ipc message needs a \"type\"".into())
                    .await
            }
        }
    }

    /// The channel, joined (and created, if `create`) on first use.
    async fn join(&mut self, name: &str, create: bool) -> Result<Channel> {
        if let Some(channel) = self.channels.get(name) {
            return Ok(channel.clone());
        }
        let channel = if create {
            self.bus.open(name).await?
        } else {
            self.bus.open_existing(name, None).await?
        };
        self.channels.insert(name.to_owned(), channel.clone());
        Ok(channel)
    }

    /// `register`: open a channel, or provide an event on it.
    async fn register(&mut self, reg: &Msg) -> Result<()> {
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
        }
        // comm-ipc answers every registration so, a provider's twice.
        let data = Value::Map(vec![
            (Value::from("channel"), Value::from(name.as_str())),
            (
                Value::from("event"),
                event.clone().map_or(Value::Nil, Value::from),
            ),
            (Value::from("authenticated"), Value::from(false)),
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
        let forward = Forward {
            out: self.out.clone(),
            pending: self.pending.clone(),
            channel: channel.name().to_owned(),
            event: event.to_owned(),
            server_id: self.shared.server_id.clone(),
        };
        channel.provide_service(event, forward).await?;
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

    /// Tell a client that opened `channel` what it offers (`channel_sync`).
    async fn sync(&self, channel: &Channel) -> Result<()> {
        let info = channel.describe().await?;
        let events = self.events_of(channel.name(), &info);
        self.send(Msg::new([
            ("type", Value::from("channel_sync")),
            ("channel", Value::from(channel.name())),
            ("events", events),
            ("subscriptions", Value::Map(Vec::new())),
        ]))
        .await;
        Ok(())
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
    async fn call(&mut self, msg: Msg) {
        let (Some(name), Some(event)) = (msg.str("channel"), msg.str("event")) else {
            let error = "a call needs a channel and an event".to_owned();
            return self.refuse(&msg, error).await;
        };
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
        };
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
    async fn send_event(&mut self, msg: &Msg) -> Result<()> {
        let name = msg.required("channel")?.to_owned();
        let event = msg.required("event")?.to_owned();
        let channel = self.join(&name, false).await?;
        channel.send(&event, &msg.value("data")).await
    }

    /// `list_members`: the channel's members, by client id.
    async fn list_members(&mut self, msg: Msg) {
        let id = msg.value("request_id");
        let Some(name) = msg.str("channel").map(str::to_owned) else {
            return self
                .refuse(&msg, "list_members needs a channel".into())
                .await;
        };
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

    /// What the broker says about this client's channels.
    async fn on_event(&mut self, event: ChannelEvent) {
        if let ChannelEvent::Closed { channel, reason } = event {
            self.channels.remove(&channel);
            self.send(Msg::error(format!(
                "Channel {channel} terminated: {reason}"
            )))
            .await;
        }
    }

    /// The connection is over: leave the broker, stop the calls in flight.
    fn end(&mut self) {
        self.bus.close();
        self.tasks.abort_all();
        self.pending.clear();
        self.shared.registry().forget(&self.client_id);
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

    async fn chunk(&self, data: Value, stream: bool, last: bool) {
        let mut msg = self.message(Ok(data));
        msg.set("is_stream", Value::from(stream));
        msg.set("is_final", Value::from(last));
        let _ = self.out.send(msg).await;
    }

    async fn failed(&self, error: String) {
        let _ = self.out.send(self.message(Err(error))).await;
    }
}
