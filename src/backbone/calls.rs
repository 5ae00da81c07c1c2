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
    wire::{self, Answer, SILENCE, WINDOW},
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
    let awaiting = node.awaiting(target);
    let reply = node.subjects.reply(&node.id, awaiting.id);
    let mut answers = Answers {
        awaiting,
        target: target.to_owned(),
    };
    node.nats
        .publish_with_reply_and_headers(subject, reply, headers, payload)
        .await
        .map_err(wire::nats_error)?;
    // Once the provider says it is at it, the caller keeps the call alive
    // there, and cancels it if dropped (or failed) before it ends.
    let mut control: Option<Control> = None;
    loop {
        match answers.next(req.deadline).await? {
            Answer::Alive(id) => {
                if let (None, Some(id)) = (&control, id) {
                    control = Some(Control::start(node, target, id));
                }
            }
            Answer::NoResponders => return Err(Tried::NoResponders),
            Answer::Ok(payload) if req.kind == CallKind::Unary => {
                control.as_ref().map(Control::ended);
                return Ok(Reply::Unary(payload));
            }
            Answer::Error(err) => {
                control.as_ref().map(Control::ended);
                return Err(err.into());
            }
            Answer::Open(id) if req.kind == CallKind::Stream => {
                let control = control.unwrap_or_else(|| Control::start(node, target, id));
                return Ok(Reply::Stream(items(answers, control)));
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

/// A call's answers as they come.
struct Answers {
    awaiting: Awaiting,
    target: String,
}

impl Answers {
    /// The next answer, within the deadline and [`SILENCE`].
    async fn next(&mut self, deadline: Option<Instant>) -> Result<Answer> {
        let started = Instant::now();
        let silence = started + SILENCE;
        let until = deadline.map_or(silence, |d| d.min(silence));
        let target = &self.target;
        tokio::select! {
            () = self.awaiting.gone.cancelled() => Err(Error::Disconnected(format!(
                "broker {target} left the backbone before answering"
            ))),
            next = tokio::time::timeout_at(until.into(), self.awaiting.answers.recv()) => match next {
                Ok(Some(msg)) => wire::read_answer(msg),
                Ok(None) => Err(Error::Disconnected("the backbone stopped".into())),
                Err(_) if deadline.is_some_and(|d| d <= silence) => {
                    Err(Error::Timeout(started.elapsed()))
                }
                Err(_) => Err(Error::Disconnected(format!(
                    "broker {target} went silent on the backbone for {SILENCE:?}"
                ))),
            },
        }
    }
}

/// The caller's side of a call served by another broker: every
/// [`ALIVE`](wire::ALIVE)
/// it tells the provider it is still there (and how many stream items it
/// takes); dropped before the call ended, it cancels the call there.
struct Control {
    nats: async_nats::Client,
    subject: String,
    /// Items read so far; `u64::MAX` once the call ended.
    taken: Arc<AtomicU64>,
    _done: DropGuard,
}

impl Control {
    fn start(node: &Node, target: &str, id: u64) -> Control {
        let subject = node.subjects.control(target, id);
        let taken = Arc::new(AtomicU64::new(0));
        let done = CancellationToken::new();
        tokio::spawn(keep_alive(
            node.nats.clone(),
            subject.clone(),
            taken.clone(),
            done.clone(),
        ));
        Control {
            nats: node.nats.clone(),
            subject,
            taken,
            _done: done.drop_guard(),
        }
    }

    /// The call ended at its provider: nothing to keep alive or cancel.
    fn ended(&self) {
        self.taken.store(u64::MAX, Ordering::Relaxed);
    }

    /// `taken` stream items were read: tell the provider at every half
    /// window, so it never waits on credit while the reader keeps up.
    async fn took(&self, taken: u64) {
        self.taken.store(taken, Ordering::Relaxed);
        if taken % (WINDOW / 2) == 0 {
            credit(&self.nats, &self.subject, taken + WINDOW).await;
        }
    }
}

/// A stream's items as its provider sends them; dropping it cancels the
/// stream.
fn items(answers: Answers, control: Control) -> crate::rpc::PayloadStream {
    let state = Items {
        answers,
        control,
        next: 0,
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
    answers: Answers,
    control: Control,
    /// The number of the next item.
    next: u64,
}

impl Items {
    async fn next(&mut self) -> Result<Option<Payload>> {
        loop {
            match self.answers.next(None).await? {
                Answer::Alive(_) => continue,
                Answer::Item(seq, payload) if seq == self.next => {
                    self.next += 1;
                    self.control.took(self.next).await;
                    return Ok(Some(payload));
                }
                Answer::End(seq) if seq == self.next => {
                    self.control.ended();
                    return Ok(None);
                }
                Answer::Item(seq, _) | Answer::End(seq) => {
                    return Err(Error::Disconnected(format!(
                        "{} stream items from broker {} were lost on the backbone",
                        seq.saturating_sub(self.next).max(1),
                        self.answers.target
                    )))
                }
                Answer::Error(err) => {
                    self.control.ended();
                    return Err(err);
                }
                other => {
                    return Err(Error::Protocol(format!(
                        "broker {} sent {other:?} in a stream",
                        self.answers.target
                    )))
                }
            }
        }
    }
}

/// Tell a call's provider how far it may go.
async fn credit(nats: &async_nats::Client, control: &str, upto: u64) {
    let headers = wire::headers(&[(wire::CREDIT, upto.to_string().as_str())]);
    let _ = nats
        .publish_with_headers(control.to_owned(), headers, Default::default())
        .await;
}

/// Every [`ALIVE`](wire::ALIVE), tell a call's provider the caller is there and how far
/// it may go; once the caller is gone, cancel the call (unless it ended).
async fn keep_alive(
    nats: async_nats::Client,
    control: String,
    taken: Arc<AtomicU64>,
    done: CancellationToken,
) {
    let mut tick = wire::every_alive();
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
