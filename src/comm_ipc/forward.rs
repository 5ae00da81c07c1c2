//! Calls from the broker to an event a comm-ipc client provides: each is
//! written to the client as comm-ipc's `call` (or `send`) and answered by
//! the `response` messages it sends back with the same request id.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use busline_core::{Error, Payload, Result};
use futures::future::BoxFuture;
use rmpv::Value;
use tokio::sync::{mpsc, oneshot};

use super::{
    frame::{payload_of, value_of, Msg},
    now,
    sign::{sign, Key},
};
use crate::rpc::{CallKind, Reply, Request};

/// Stream chunks a provider may send ahead of the broker taking them; past
/// this the stream fails rather than grow (comm-ipc clients send chunks
/// without waiting for credit).
const STREAM_AHEAD: usize = 1024;

/// What a provider's answer resolves: one result, or a stream's items.
enum Waiting {
    Unary(oneshot::Sender<std::result::Result<Value, String>>),
    Stream(mpsc::Sender<Result<Payload>>),
}

/// The calls a session's provider has yet to answer, by request id.
#[derive(Clone, Default)]
pub(super) struct Pending(Arc<Mutex<HashMap<String, Waiting>>>);

impl Pending {
    fn insert(&self, id: String, waiting: Waiting) -> Unregister {
        self.lock().insert(id.clone(), waiting);
        Unregister {
            pending: self.clone(),
            id,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Waiting>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hand a `response` message to the call it answers. One that answers
    /// nothing (a call cancelled meanwhile) is dropped.
    pub(super) fn answer(&self, msg: &Msg) {
        let Some(id) = msg.str("request_id") else {
            return;
        };
        let mut pending = self.lock();
        let error = msg.get("error").filter(|e| !e.is_nil()).map(text_of);
        let finished = match pending.get(id) {
            None => return,
            Some(Waiting::Unary(_)) => true,
            Some(Waiting::Stream(items)) => match error {
                Some(ref error) => {
                    let _ = items.try_send(Err(failed(error)));
                    true
                }
                // A handler that answers once (no is_stream) ends the
                // stream with that one item, as does the last chunk.
                _ if msg.flag("is_stream") && msg.flag("is_final") => true,
                // The queue's last place is kept for the error that ends
                // an overrun stream, so that it is never lost.
                _ if items.capacity() <= 1 => {
                    let _ = items.try_send(Err(Error::Overloaded(format!(
                        "the comm-ipc provider sent more than {STREAM_AHEAD} chunks \
                         ahead of their reader"
                    ))));
                    true
                }
                _ => {
                    let _ = items.try_send(payload_of(&msg.value("data")));
                    !msg.flag("is_stream")
                }
            },
        };
        if finished {
            if let Some(Waiting::Unary(result)) = pending.remove(id) {
                let _ = result.send(match error {
                    Some(error) => Err(error),
                    None => Ok(msg.value("data")),
                });
            }
        }
    }

    /// Fail every call in flight: the provider is gone.
    pub(super) fn clear(&self) {
        self.lock().clear();
    }
}

/// Removes a call from [`Pending`] when its caller stops waiting.
struct Unregister {
    pending: Pending,
    id: String,
}

impl Drop for Unregister {
    fn drop(&mut self) {
        self.pending.lock().remove(&self.id);
    }
}

/// An error value as text (comm-ipc sends `str(exception)`).
fn text_of(value: &Value) -> String {
    value
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| value.to_string())
}

fn failed(message: &str) -> Error {
    Error::HandlerFailed {
        message: message.to_owned(),
        kind: "comm-ipc".into(),
    }
}

/// The handler service installed for one event a comm-ipc client
/// provides.
#[derive(Clone)]
pub(super) struct Forward {
    pub(super) out: mpsc::Sender<Msg>,
    pub(super) pending: Pending,
    pub(super) channel: String,
    pub(super) event: String,
    pub(super) server_id: String,
    /// The channel's comm-ipc message key, if it is protected.
    pub(super) key: Option<Key>,
}

impl Forward {
    /// The message that carries a call to the client.
    fn message(&self, kind: &str, id: Option<&str>, data: Value, stream: bool) -> Msg {
        let server = Value::from(self.server_id.as_str());
        let mut msg = Msg::new([
            ("type", Value::from(kind)),
            ("channel", Value::from(self.channel.as_str())),
            ("event", Value::from(self.event.as_str())),
            ("data", data),
            ("request_id", id.map_or(Value::Nil, Value::from)),
            // busline does not tell providers who calls.
            ("sender_id", Value::from("busline")),
            ("server_id", server.clone()),
            ("origin_server_id", server.clone()),
            ("timestamp", Value::from(now())),
            ("target_id", Value::Nil),
            ("is_stream", Value::from(stream)),
            ("is_final", Value::from(!stream)),
            ("sub_name", Value::Nil),
            ("path", Value::Array(vec![server])),
        ]);
        if let Some(key) = &self.key {
            sign(key, &mut msg);
        }
        msg
    }

    async fn forward(self, req: Request) -> Result<Reply> {
        let data = value_of(&req.payload)?;
        let gone = || Error::Disconnected(format!("the comm-ipc provider of {} left", self.event));
        match req.kind {
            CallKind::Notify => {
                let msg = self.message("send", None, data, false);
                self.out.send(msg).await.map_err(|_| gone())?;
                Ok(Reply::Unary(Payload::unit()))
            }
            CallKind::Unary => {
                let id = request_id();
                let (tx, rx) = oneshot::channel();
                let _registered = self.pending.insert(id.clone(), Waiting::Unary(tx));
                let msg = self.message("call", Some(&id), data, false);
                self.out.send(msg).await.map_err(|_| gone())?;
                match rx.await {
                    Ok(Ok(value)) => Ok(Reply::Unary(payload_of(&value)?)),
                    Ok(Err(message)) => Err(failed(&message)),
                    Err(_) => Err(gone()),
                }
            }
            CallKind::Stream => {
                let id = request_id();
                // One more place than items allowed, for an overrun's error.
                let (tx, rx) = mpsc::channel(STREAM_AHEAD + 1);
                let registered = self.pending.insert(id.clone(), Waiting::Stream(tx));
                let msg = self.message("call", Some(&id), data, true);
                self.out.send(msg).await.map_err(|_| gone())?;
                // The stream keeps the call registered while it is read.
                let items =
                    futures::stream::unfold((rx, registered), |(mut rx, registered)| async {
                        let item = rx.recv().await?;
                        Some((item, (rx, registered)))
                    });
                Ok(Reply::Stream(Box::pin(items)))
            }
        }
    }
}

impl tower::Service<Request> for Forward {
    type Response = Reply;
    type Error = Error;
    type Future = BoxFuture<'static, Result<Reply>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        Box::pin(self.clone().forward(req))
    }
}

/// A fresh request id, unique enough among a session's calls in flight.
pub(super) fn request_id() -> String {
    let mut bytes = [0u8; 16];
    // Uniqueness, not secrecy: a clock fallback would do, but getrandom
    // does not fail on Linux.
    let _ = getrandom::fill(&mut bytes);
    hex::encode(bytes)
}
