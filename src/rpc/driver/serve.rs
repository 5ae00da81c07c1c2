//! Serving the peer's calls: requests, notifications, streams.

use std::{
    future::Future,
    panic::AssertUnwindSafe,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use busline_core::{Codec, Error, Io, Message, Payload, Result};
use futures::{
    future::{AbortHandle, Abortable},
    FutureExt,
};
use tokio::sync::Semaphore;

use super::{Driver, MAX_CREDIT};
use crate::rpc::{
    router::{CallKind, Reply, Request, Router},
    stream_task,
};

impl<I: Io, C: Codec> Driver<I, C> {
    fn request(
        &self,
        method: String,
        payload: Payload,
        kind: CallKind,
        timeout_ms: Option<u64>,
    ) -> Request {
        Request {
            method,
            payload,
            kind,
            identity: self.identity.clone(),
            deadline: timeout_ms.map(|ms| Instant::now() + Duration::from_millis(ms)),
            peer: self.peer.upgrade(),
        }
    }

    /// The router to serve a new call `id` with; `None` once the call has
    /// been answered (nothing is served here) or the connection closed (the
    /// peer reused an id still in flight).
    fn admit(&mut self, id: u64, method: &str) -> Option<Router> {
        if self.call_aborts.contains_key(&id)
            || self.streams.contains_key(&id)
            || self.passed.contains_key(&id)
        {
            self.violation(format!("call id {id} reused while still in flight"));
            return None;
        }
        if self.router.is_none() {
            self.outbox.push_back(Message::Error {
                id,
                error: Error::MethodNotFound(method.to_string()).to_remote(),
            });
        }
        self.router.clone()
    }

    pub(super) fn serve_call(
        &mut self,
        id: u64,
        method: String,
        payload: Payload,
        timeout_ms: Option<u64>,
        cx: &mut Context<'_>,
    ) {
        if method == super::PING {
            // A heartbeat probe: the answer itself is the proof of life.
            self.outbox.push_back(Message::Reply {
                id,
                payload: Payload::unit(),
            });
            return;
        }
        let Some(router) = self.admit(id, &method) else {
            return;
        };
        // A call with a deadline is served through the routes, which keep it.
        if timeout_ms.is_none() && router.passes_calls() {
            self.pass_or_route(id, &router, method, payload, None, cx)
        } else {
            self.serve_routed(id, &router, method, payload, timeout_ms, cx)
        }
    }

    /// Serve call `id` through the routes of `router`.
    pub(super) fn serve_routed(
        &mut self,
        id: u64,
        router: &Router,
        method: String,
        payload: Payload,
        timeout_ms: Option<u64>,
        cx: &mut Context<'_>,
    ) {
        let req = self.request(method, payload, CallKind::Unary, timeout_ms);
        let mut run = Box::pin(with_deadline(req.deadline, guarded(router.dispatch(req))));
        // Most handlers finish on their first poll: answer those at once,
        // without the bookkeeping that makes a running handler cancellable.
        if let Poll::Ready(answer) = run.as_mut().poll(cx) {
            self.outbox.push_back(answer_message(id, answer));
            return;
        }
        let (abort, reg) = AbortHandle::new_pair();
        self.call_aborts.insert(id, abort);
        self.calls
            .push(Box::pin(Abortable::new(run, reg).map(move |result| {
                (id, result.ok().map(|a| answer_message(id, a)))
            })));
    }

    pub(super) fn serve_notification(
        &mut self,
        method: String,
        payload: Payload,
        cx: &mut Context<'_>,
    ) {
        let Some(router) = &self.router else {
            return;
        };
        if method == super::ALIVE {
            return;
        }
        // The tap runs here, in the connection's task: a panic in it is
        // logged and costs that notification, as in a handler.
        let from = self.peer.connection_id();
        let (method, payload) = match std::panic::catch_unwind(AssertUnwindSafe(|| {
            router.tap(method, payload, from)
        })) {
            Ok(Some(untapped)) => untapped,
            Ok(None) => return,
            Err(_) => {
                tracing::warn!(connection = from, "notification tap panicked");
                return;
            }
        };
        let router = router.clone();
        let req = self.request(method, payload, CallKind::Notify, None);
        let method = req.method.clone();
        let mut run = Box::pin(guarded(router.dispatch(req)).map(move |result| {
            if let Err(err) = result {
                tracing::warn!(%method, error = %err, "notification handler failed");
            }
        }));
        // Like calls, most finish at once: handled in arrival order.
        if run.as_mut().poll(cx).is_pending() {
            self.notifications.push(run);
        }
    }

    pub(super) fn serve_stream(
        &mut self,
        id: u64,
        method: String,
        payload: Payload,
        credit: u32,
        timeout_ms: Option<u64>,
    ) {
        let Some(router) = self.admit(id, &method) else {
            return;
        };
        let Some(tx) = self.commands_tx.upgrade() else {
            // Every handle of this client-owned connection is gone: it is closing.
            return;
        };
        let req = self.request(method, payload, CallKind::Stream, timeout_ms);
        let permits = Arc::new(Semaphore::new(credit.min(MAX_CREDIT) as usize));
        let task = stream_task::run(id, router, req, permits.clone(), tx);
        let (abort, reg) = AbortHandle::new_pair();
        tokio::spawn(Abortable::new(task, reg));
        self.streams.insert(id, (permits, abort));
    }
}

/// The message answering call `id`.
fn answer_message(id: u64, answer: Result<Reply>) -> Message {
    match answer {
        Ok(Reply::Unary(payload)) => Message::Reply { id, payload },
        Ok(Reply::Stream(_)) => Message::Error {
            id,
            error: Error::Protocol("this method streams; call it as a stream".into()).to_remote(),
        },
        Err(err) => Message::Error {
            id,
            error: err.to_remote(),
        },
    }
}

/// Run a handler future, turning a panic into an error reply.
pub(crate) async fn guarded<F: Future<Output = Result<T>>, T>(fut: F) -> Result<T> {
    AssertUnwindSafe(fut)
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "handler panicked".into());
            Err(Error::HandlerFailed {
                message,
                kind: "panic".into(),
            })
        })
}

/// Drop the work once the caller's deadline has passed.
pub(crate) async fn with_deadline<F: Future<Output = Result<T>>, T>(
    deadline: Option<Instant>,
    fut: F,
) -> Result<T> {
    match deadline {
        None => fut.await,
        Some(at) => {
            let budget = at.saturating_duration_since(Instant::now());
            tokio::time::timeout(budget, fut)
                .await
                .unwrap_or(Err(Error::Timeout(budget)))
        }
    }
}
