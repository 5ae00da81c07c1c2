//! One comm-ipc client's connection: its handshake, then each message it
//! sends acted on through a broker client of its own.

use std::{collections::HashMap, sync::Arc};

use busline_core::{Error, Io, Result};
use futures::{SinkExt, StreamExt};
use rmpv::Value;
use tokio::{sync::mpsc, task::JoinSet};
use tokio_util::codec::Framed;

use super::{
    forward::Pending,
    frame::{FrameCodec, Msg},
    handshake::handshake,
    password::Challenge,
    pubsub::Topics,
    sign::Key,
    Shared,
};
use crate::broker::{BrokerClient, Channel, ChannelEvent};

/// Calls, subscriptions and broadcast listeners one connection may have
/// running at once.
pub(super) const MAX_TASKS: usize = 1024;

/// Messages queued for one client's socket; producers wait beyond it, so
/// a client that does not read slows its own streams, nobody else's.
const OUT_QUEUE: usize = 256;

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
        keys: HashMap::new(),
        challenges: HashMap::new(),
        pending: Pending::default(),
        tasks: JoinSet::new(),
        topics: Topics::default(),
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

/// Write queued messages, as many as are waiting per flush. A message too
/// large to send becomes an error answer to its call, if it answers one.
async fn write_all<S>(mut sink: S, mut queued: mpsc::Receiver<Msg>)
where
    S: futures::Sink<Msg, Error = Error> + Unpin,
{
    while let Some(msg) = queued.recv().await {
        let id = msg.get("request_id").filter(|id| !id.is_nil()).cloned();
        match sink.feed(msg).await {
            Ok(()) => {}
            Err(err @ Error::FrameTooLarge { .. }) => match id {
                // Its caller learns why instead of waiting on.
                Some(id) => {
                    if sink.feed(response(id, Err(err.to_string()))).await.is_err() {
                        return;
                    }
                }
                None => {
                    tracing::warn!(error = %err, "dropped a comm-ipc message too large to send")
                }
            },
            Err(_) => return,
        }
        if queued.is_empty() && sink.flush().await.is_err() {
            return;
        }
    }
    let _ = sink.close().await;
}

/// `{"type": "response", "request_id": id, "data": …}` or `"error": …`.
pub(super) fn response(id: Value, outcome: std::result::Result<Value, String>) -> Msg {
    let mut msg = Msg::new([("type", Value::from("response")), ("request_id", id)]);
    match outcome {
        Ok(data) => msg.set("data", data),
        Err(error) => msg.set("error", Value::from(error)),
    }
    msg
}

/// An error's text as comm-ipc's server would word it: its own refusals
/// and a provider's `str(exception)` bare, busline's with their category.
pub(super) fn text(err: Error) -> String {
    match err {
        Error::Protocol(message) | Error::HandlerFailed { message, .. } => message,
        other => other.to_string(),
    }
}

pub(super) struct Session {
    pub(super) shared: Arc<Shared>,
    pub(super) client_id: String,
    pub(super) bus: BrokerClient,
    pub(super) out: mpsc::Sender<Msg>,
    pub(super) channels: HashMap<String, Channel>,
    /// Protected channels it proved the password of: their message keys.
    pub(super) keys: HashMap<String, Key>,
    /// Its challenges outstanding, by challenge id.
    pub(super) challenges: HashMap<String, Challenge>,
    /// Calls to events this client provides, awaiting its answers.
    pub(super) pending: Pending,
    /// Calls this client made, running.
    pub(super) tasks: JoinSet<()>,
    /// Its subscriptions, broadcasts heard and subscriptions owned.
    pub(super) topics: Topics,
}

impl Session {
    pub(super) async fn send(&self, msg: Msg) {
        let _ = self.out.send(msg).await;
    }

    /// Answer `msg` with an error: as a response if it has a request id,
    /// else as an error message.
    pub(super) async fn refuse(&self, msg: &Msg, error: String) {
        match msg.get("request_id").filter(|id| !id.is_nil()) {
            Some(id) => self.send(response(id.clone(), Err(error))).await,
            None => self.send(Msg::error(error)).await,
        }
    }

    /// `{"type": "response", "request_id": …, "data": {"success": true}}`,
    /// if `msg` has a request id to answer.
    pub(super) async fn succeeded(&self, msg: &Msg) {
        if let Some(id) = msg.get("request_id").filter(|id| !id.is_nil()) {
            let done = Value::Map(vec![(Value::from("success"), Value::from(true))]);
            self.send(response(id.clone(), Ok(done))).await;
        }
    }

    async fn handle(&mut self, msg: Msg) {
        let Some(kind) = msg.kind().map(str::to_owned) else {
            let error = "a comm-ipc message needs a \"type\"".to_owned();
            return self.refuse(&msg, error).await;
        };
        let done = match kind.as_str() {
            "ping" => {
                self.send(Msg::new([("type", Value::from("pong"))])).await;
                Ok(())
            }
            "register" => {
                let reg = match msg.get("reg") {
                    Some(Value::Map(entries)) => Msg(entries.clone()),
                    _ => msg.clone(),
                };
                // A refusal answers the request id the registration had.
                let done = match self.authorize(reg.clone()).await {
                    Ok(Some(authorized)) => self.register(&authorized).await,
                    Ok(None) => Ok(()),
                    Err(err) => Err(err),
                };
                if let Err(err) = done {
                    self.refuse(&reg, text(err)).await;
                }
                return;
            }
            "call" => {
                self.call(msg).await;
                return;
            }
            "response" => {
                self.pending.answer(&msg);
                Ok(())
            }
            "send" => self.send_event(&msg).await,
            "list_members" => {
                self.list_members(msg).await;
                return;
            }
            "broadcast" => self.broadcast(&msg).await,
            "add_subscription" => self.add_subscription(&msg).await,
            "remove_subscription" => self.remove_subscription(&msg).await,
            "subscribe" => self.subscribe(&msg).await,
            "unsubscribe" => self.unsubscribe(&msg).await,
            "publish" => self.publish(&msg).await,
            "set_password" => self.set_password(&msg).await,
            other => Err(Error::Protocol(format!(
                "unknown comm-ipc message type {other:?}"
            ))),
        };
        if let Err(err) = done {
            self.refuse(&msg, text(err)).await;
        }
    }

    /// Refuse more work than [`MAX_TASKS`] at once on one connection: a
    /// client that calls without waiting for answers is held to it.
    pub(super) fn room_for_work(&self) -> Result<()> {
        if self.tasks.len() >= MAX_TASKS {
            return Err(Error::Overloaded(format!(
                "{MAX_TASKS} calls and subscriptions already in progress on this connection"
            )));
        }
        Ok(())
    }

    /// The channel, joined (and created, if `create`) on first use.
    pub(super) async fn join(&mut self, name: &str, create: bool) -> Result<Channel> {
        if let Some(channel) = self.channels.get(name) {
            return Ok(channel.clone());
        }
        let password = self.password_for(name);
        let channel = match (&password, create) {
            (Some(password), true) => self.bus.open_with_password(name, password).await?,
            (password, false) => self.bus.open_existing(name, password.as_deref()).await?,
            (None, true) => self.bus.open(name).await?,
        };
        self.channels.insert(name.to_owned(), channel.clone());
        Ok(channel)
    }

    /// What the broker says about this client's channels.
    async fn on_event(&mut self, event: ChannelEvent) {
        match event {
            ChannelEvent::Closed { channel, reason } => {
                self.stop_hearing(&channel);
                self.channels.remove(&channel);
                self.topics.close_channel(&channel);
                self.send(Msg::error(format!(
                    "Channel {channel} terminated: {reason}"
                )))
                .await;
            }
            ChannelEvent::Demand {
                channel,
                topic,
                wanted,
            } => self.on_demand(&channel, &topic, wanted).await,
            ChannelEvent::PasswordChanged { channel, .. } => {
                self.on_password_changed(&channel).await
            }
            _ => {}
        }
    }

    /// The connection is over: leave the broker, stop the calls in flight.
    fn end(&mut self) {
        self.bus.close();
        self.tasks.abort_all();
        self.topics.close_all();
        self.pending.clear();
        self.shared.registry().forget(&self.client_id);
    }
}
