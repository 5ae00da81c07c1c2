//! Calls in: what other brokers call on this one's providers, passed to
//! this broker as its own client's calls (so the broker never hands them
//! back to the backbone), and the answers sent back.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use async_nats::{HeaderMap, Message, Subject};
use busline_core::{Error, Payload, Result};
use bytes::Bytes;
use futures::StreamExt;

use super::{
    node::{Control, Node},
    wire::{self, ALIVE, SILENCE, WINDOW},
};
use crate::{
    broker::{check_channel_name, is_system, pass_on, routed},
    rpc::{CallKind, PayloadStream, Reply, Request},
};

/// Serve the calls of `calls` (this broker's call subjects) until it ends.
pub(super) async fn calls(node: Arc<Node>, mut calls: async_nats::Subscriber) {
    while let Some(msg) = calls.next().await {
        let reply = msg.reply.clone();
        match accept(&node, msg) {
            Ok(()) => {}
            Err(err) => {
                tracing::debug!(error = %err, "backbone: a call refused");
                if let Some(reply) = reply {
                    let (headers, body) = wire::failure(&err);
                    send(&node, reply, headers, body).await;
                }
            }
        }
    }
}

/// Read a call and start serving it.
fn accept(node: &Arc<Node>, msg: Message) -> Result<()> {
    let (channel, method) = node
        .subjects
        .parse_call(&node.id, &msg.subject)
        .ok_or_else(|| Error::Protocol(format!("not a call subject: {:?}", msg.subject)))?;
    // As its own client would, never a name that routes elsewhere.
    check_channel_name(&channel)?;
    if is_system(&channel) || !node.carries(&channel) {
        return Err(Error::Unauthorized(format!(
            "broker {} does not carry channel {channel:?} on the backbone",
            node.id
        )));
    }
    if method.is_empty() || method.contains(['/', '#', '!']) {
        return Err(Error::Protocol(format!(
            "a method name has no '/', '#' or '!': {method:?}"
        )));
    }
    let headers = msg.headers.as_ref();
    let kind = wire::kind(headers)?;
    let payload = Payload::from_bytes(wire::encoding(headers)?, msg.payload);
    let deadline = wire::timeout(headers)?.map(|left| Instant::now() + left);
    let reply = match (kind, msg.reply) {
        (CallKind::Notify, _) => None,
        (_, Some(reply)) => Some(reply),
        (_, None) => {
            return Err(Error::Protocol(format!(
                "a call of {method:?} on {channel:?} with nowhere to answer"
            )))
        }
    };
    let permit = node.serving.clone().try_acquire_owned().map_err(|_| {
        Error::Overloaded(format!(
            "broker {} serves {} calls from the backbone already",
            node.id,
            super::MAX_SERVED
        ))
    })?;
    let req = Request {
        method: routed(&channel, &method),
        payload,
        kind,
        identity: Arc::default(),
        deadline,
        peer: None,
    };
    let node = node.clone();
    tokio::spawn(async move {
        let _permit = permit;
        match reply {
            None => {
                if let Err(err) = pass_on(&node.local.client(), &req, ()).await {
                    tracing::debug!(method = %req.method, error = %err, "backbone: a notification failed");
                }
            }
            Some(reply) => serve(&node, req, reply).await,
        }
    });
    Ok(())
}

/// Serve one call or stream and send its answers to `reply`, saying it is
/// still at it every [`ALIVE`]; the caller, told the call's control id,
/// keeps it alive (a call whose caller says nothing for [`SILENCE`] is
/// cancelled) or cancels it.
async fn serve(node: &Arc<Node>, req: Request, reply: Subject) {
    let id = node.next_id();
    let (control, mut credits) = tokio::sync::watch::channel(Some(WINDOW));
    node.served
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id, Arc::new(control));
    let _forget = Forget { node, id };
    let local = node.local.client();
    let answer = pass_on(&local, &req, ());
    tokio::pin!(answer);
    let mut tick = wire::every_alive();
    // When the caller last said something. One that never does (a plain
    // NATS request) is not held to it.
    let mut heard: Option<Instant> = None;
    let answer = loop {
        tokio::select! {
            answer = &mut answer => break answer,
            changed = credits.changed() => {
                if changed.is_err() || credits.borrow_and_update().is_none() {
                    return; // cancelled: dropping the call cancels it here
                }
                heard = Some(Instant::now());
            }
            _ = tick.tick() => {
                if heard.is_some_and(|at| at.elapsed() > SILENCE) {
                    tracing::debug!(method = %req.method, "backbone: a call's caller went silent; cancelled");
                    return;
                }
                alive(node, &reply, id).await;
            }
        }
    };
    match answer {
        Ok(Reply::Unary(payload)) => {
            let (headers, body) = wire::answer("ok", &payload);
            send_checked(node, reply, headers, body).await;
        }
        Ok(Reply::Stream(items)) => stream(node, items, reply, id, credits).await,
        Err(err) => {
            let (headers, body) = wire::failure(&err);
            send(node, reply, headers, body).await;
        }
    }
}

async fn alive(node: &Node, reply: &Subject, id: u64) {
    let id = id.to_string();
    let headers = wire::headers(&[(wire::REPLY, "alive"), (wire::STREAM, id.as_str())]);
    send(node, reply.clone(), headers, Bytes::new()).await;
}

/// Send an answer; one too large for NATS becomes the error saying so.
async fn send_checked(node: &Node, reply: Subject, headers: HeaderMap, body: Bytes) -> bool {
    match wire::check_size(&headers, body.len(), node.max_payload()) {
        Ok(()) => send(node, reply, headers, body).await,
        Err(err) => {
            let (headers, body) = wire::failure(&err);
            send(node, reply, headers, body).await;
            false
        }
    }
}

async fn send(node: &Node, reply: Subject, headers: HeaderMap, body: Bytes) -> bool {
    match node.nats.publish_with_headers(reply, headers, body).await {
        Ok(()) => true,
        Err(err) => {
            tracing::debug!(error = %err, "backbone: an answer could not be sent");
            false
        }
    }
}

/// Send a stream's items, control id `id`, as its caller takes them.
async fn stream(
    node: &Node,
    mut items: PayloadStream,
    reply: Subject,
    id: u64,
    mut credits: tokio::sync::watch::Receiver<Option<u64>>,
) {
    let opened = wire::headers(&[
        (wire::REPLY, "open"),
        (wire::STREAM, id.to_string().as_str()),
    ]);
    if !send(node, reply.clone(), opened, Bytes::new()).await {
        return;
    }
    let (mut sent, mut credit) = (0u64, WINDOW);
    let (mut heard, mut spoke) = (Instant::now(), Instant::now());
    let mut tick = wire::every_alive();
    loop {
        tokio::select! {
            changed = credits.changed() => {
                if changed.is_err() {
                    return;
                }
                heard = Instant::now();
                match *credits.borrow_and_update() {
                    Some(more) => credit = credit.max(more),
                    None => return, // cancelled
                }
            }
            item = items.next(), if sent < credit => {
                spoke = Instant::now();
                let seq = sent.to_string();
                match item {
                    Some(Ok(payload)) => {
                        let (mut headers, body) = wire::answer("item", &payload);
                        headers.insert(wire::SEQ, seq.as_str());
                        if !send_checked(node, reply.clone(), headers, body).await {
                            return;
                        }
                        sent += 1;
                    }
                    Some(Err(err)) => {
                        let (mut headers, body) = wire::failure(&err);
                        headers.insert(wire::SEQ, seq.as_str());
                        send(node, reply, headers, body).await;
                        return;
                    }
                    None => {
                        let headers = wire::headers(&[(wire::REPLY, "end"), (wire::SEQ, seq.as_str())]);
                        send(node, reply, headers, Bytes::new()).await;
                        return;
                    }
                }
            }
            _ = tick.tick() => {
                if heard.elapsed() > SILENCE {
                    tracing::debug!(id, "backbone: a stream's caller went silent; cancelled");
                    return;
                }
                if spoke.elapsed() >= ALIVE.saturating_sub(Duration::from_millis(50)) {
                    spoke = Instant::now();
                    alive(node, &reply, id).await;
                }
            }
        }
    }
}

/// Forgets a call served once it is over.
struct Forget<'a> {
    node: &'a Node,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.node
            .served
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// Pass the controls of `controls` (this broker's call control subjects)
/// to their calls until it ends.
pub(super) async fn controls(node: Arc<Node>, mut controls: async_nats::Subscriber) {
    while let Some(msg) = controls.next().await {
        let Some(id) = super::subject::Subjects::parse_id(&msg.subject) else {
            continue;
        };
        let credit = match wire::credit(msg.headers.as_ref()) {
            Ok(credit) => credit,
            Err(err) => {
                tracing::debug!(error = %err, "backbone: a stream control refused");
                continue;
            }
        };
        let control: Option<Arc<Control>> = node
            .served
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned();
        if let Some(control) = control {
            // Told even when unchanged: it says the caller is there.
            control.send_modify(|c| {
                *c = match (*c, credit) {
                    (Some(old), Some(new)) => Some(old.max(new)),
                    _ => None,
                }
            });
        }
    }
}

/// Answers to this broker's calls, to their callers.
pub(super) async fn answers(node: Arc<Node>, mut answers: async_nats::Subscriber) {
    while let Some(msg) = answers.next().await {
        node.answered(msg);
    }
}
