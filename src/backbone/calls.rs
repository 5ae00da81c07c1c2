//! Calls out: a method another broker provides, offered on this one, its
//! calls sent over NATS to a broker that answers for it.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Instant,
};

use busline_core::{Error, Payload, Result};
use futures::StreamExt;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{
    node::{Awaiting, Node},
    wire::{self, Answer, ALIVE, SILENCE, WINDOW},
};
use crate::rpc::{CallKind, Reply, Request};

/// The service offered on this broker for `method` of `channel`: each call
/// goes to one of the brokers answering for it, in turn; one whose subject
/// nobody listens on (it left) is skipped, as the call did not run there.
pub(super) fn calls_out(
    node: Arc<Node>,
    channel: String,
    method: String,
) -> impl tower::Service<Request, Response = Reply, Error = Error, Future = impl Send>
       + Clone
       + Send
       + Sync
       + 'static {
    let names = Arc::new((channel, method));
    tower::service_fn(move |req: Request| {
        let (node, names) = (node.clone(), names.clone());
        async move {
            let (channel, method) = (&names.0, &names.1);
            for target in node.targets(channel, method) {
                match call(&node, &target, channel, method, &req).await {
                    Err(Tried::NoResponders) => {
                        tracing::debug!(%target, channel, method, "backbone: no responder; next")
                    }
                    Err(Tried::Failed(err)) => return Err(err),
                    Ok(reply) => return Ok(reply),
                }
            }
            Err(Error::Disconnected(format!(
                "no broker on the backbone answers for {method:?} on channel {channel:?} now"
            )))
        }
    })
}

/// Why one broker did not answer.
enum Tried {
    /// Nobody listens for it: the call did not run.
    NoResponders,
    Failed(Error),
}

impl From<Error> for Tried {
    fn from(err: Error) -> Self {
        Tried::Failed(err)
    }
}

/// Send `req` to broker `target` and await its answer.
async fn call(
    node: &Arc<Node>,
    target: &str,
    channel: &str,
    method: &str,
    req: &Request,
) -> std::result::Result<Reply, Tried> {
    let subject = node.subjects.call(target, channel, method);
    let kind = match req.kind {
        CallKind::Unary => "unary",
        CallKind::Stream => "stream",
        CallKind::Notify => "notify",
    };
    let mut headers = wire::headers(&[
        (wire::KIND, kind),
        (wire::ENCODING, req.payload.encoding().as_str()),
    ]);
    if let Some(deadline) = req.deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::Timeout(Default::default()).into());
        }
        headers.insert(wire::TIMEOUT, left.as_millis().to_string().as_str());
    }
    wire::check_size(&headers, req.payload.len(), node.max_payload())?;
    let payload = req.payload.bytes().clone();
    if req.kind == CallKind::Notify {
        node.nats
            .publish_with_headers(subject, headers, payload)
            .await
            .map_err(wire::nats_error)?;
        return Ok(Reply::Unary(Payload::unit()));
    }
    // A stream's answers come a window at a time, with a word or two more.
    let room = match req.kind {
        CallKind::Stream => 2 * WINDOW as usize,
        _ => 8,
    };
    let mut awaiting = node.awaiting(target, room);
    let reply = node.subjects.reply(&node.id, awaiting.id);
    node.nats
        .publish_with_reply_and_headers(subject, reply, headers, payload)
        .await
        .map_err(wire::nats_error)?;
    loop {
        match next(&mut awaiting, target, req.deadline).await? {
            Answer::Alive => continue,
            Answer::NoResponders => return Err(Tried::NoResponders),
            Answer::Ok(payload) if req.kind == CallKind::Unary => return Ok(Reply::Unary(payload)),
            Answer::Error(err) => return Err(err.into()),
            Answer::Open(stream) if req.kind == CallKind::Stream => {
                let control = node.subjects.control(target, stream);
                return Ok(Reply::Stream(items(
                    node.clone(),
                    awaiting,
                    target.to_owned(),
                    control,
                )));
            }
            other => {
                return Err(Error::Protocol(format!(
                    "broker {target} answered a {kind} call with {other:?}"
                ))
                .into())
            }
        }
    }
}

/// The next answer, within the deadline and [`SILENCE`].
async fn next(awaiting: &mut Awaiting, target: &str, deadline: Option<Instant>) -> Result<Answer> {
    let started = Instant::now();
    let silence = Instant::now() + SILENCE;
    let until = deadline.map_or(silence, |d| d.min(silence));
    match tokio::time::timeout_at(until.into(), awaiting.answers.recv()).await {
        Ok(Some(msg)) => wire::read_answer(msg),
        Ok(None) => Err(Error::Disconnected(format!(
            "broker {target} left the backbone before answering"
        ))),
        Err(_) if deadline.is_some_and(|d| d <= silence) => Err(Error::Timeout(started.elapsed())),
        Err(_) => Err(Error::Disconnected(format!(
            "broker {target} went silent on the backbone for {SILENCE:?}"
        ))),
    }
}

/// A stream's items as its provider sends them, credit given as they are
/// read, and kept alive while they are not; dropping it cancels the stream.
fn items(
    node: Arc<Node>,
    awaiting: Awaiting,
    target: String,
    control: String,
) -> crate::rpc::PayloadStream {
    let taken = Arc::new(AtomicU64::new(0));
    let done = CancellationToken::new();
    tokio::spawn(keep_alive(
        node.nats.clone(),
        control.clone(),
        taken.clone(),
        done.clone(),
    ));
    let state = Items {
        node,
        awaiting,
        target,
        control,
        taken,
        next: 0,
        _done: done.drop_guard(),
    };
    futures::stream::unfold(Some(state), |state| async move {
        let mut state = state?;
        match state.next().await {
            Ok(Some(item)) => Some((Ok(item), Some(state))),
            Ok(None) => None,
            Err(err) => Some((Err(err), None)),
        }
    })
    .boxed()
}

/// A stream being read.
struct Items {
    node: Arc<Node>,
    awaiting: Awaiting,
    target: String,
    control: String,
    /// Items read so far (the keep-alive tells the provider).
    taken: Arc<AtomicU64>,
    /// The number of the next item.
    next: u64,
    /// Stops the keep-alive, which then cancels the stream unless it ended.
    _done: DropGuard,
}

impl Items {
    async fn next(&mut self) -> Result<Option<Payload>> {
        loop {
            match next(&mut self.awaiting, &self.target, None).await? {
                Answer::Alive => continue,
                Answer::Item(seq, payload) if seq == self.next => {
                    self.next += 1;
                    self.taken.store(self.next, Ordering::Relaxed);
                    if self.next % (WINDOW / 2) == 0 {
                        credit(&self.node.nats, &self.control, self.next + WINDOW).await;
                    }
                    return Ok(Some(payload));
                }
                Answer::End(seq) if seq == self.next => {
                    self.finished();
                    return Ok(None);
                }
                Answer::Item(seq, _) | Answer::End(seq) => {
                    return Err(Error::Disconnected(format!(
                        "{} stream items from broker {} were lost on the backbone",
                        seq.saturating_sub(self.next).max(1),
                        self.target
                    )))
                }
                Answer::Error(err) => {
                    self.finished();
                    return Err(err);
                }
                other => {
                    return Err(Error::Protocol(format!(
                        "broker {} sent {other:?} in a stream",
                        self.target
                    )))
                }
            }
        }
    }

    /// The provider ended the stream: nothing to cancel.
    fn finished(&self) {
        self.taken.store(u64::MAX, Ordering::Relaxed);
    }
}

/// Tell a stream's provider how far it may go.
async fn credit(nats: &async_nats::Client, control: &str, upto: u64) {
    let headers = wire::headers(&[(wire::CREDIT, upto.to_string().as_str())]);
    let _ = nats
        .publish_with_headers(control.to_owned(), headers, Default::default())
        .await;
}

/// Every [`ALIVE`], tell a stream's provider the reader is there and how
/// far it may go; once the reader is gone, cancel the stream (unless it
/// ended).
async fn keep_alive(
    nats: async_nats::Client,
    control: String,
    taken: Arc<AtomicU64>,
    done: CancellationToken,
) {
    let mut tick = tokio::time::interval(ALIVE);
    tick.tick().await;
    loop {
        tokio::select! {
            () = done.cancelled() => break,
            _ = tick.tick() => {
                let taken = taken.load(Ordering::Relaxed);
                if taken == u64::MAX {
                    return;
                }
                credit(&nats, &control, taken + WINDOW).await;
            }
        }
    }
    if taken.load(Ordering::Relaxed) != u64::MAX {
        let headers = wire::headers(&[(wire::CREDIT, "cancel")]);
        let _ = nats
            .publish_with_headers(control, headers, Default::default())
            .await;
    }
}
