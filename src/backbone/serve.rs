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
    broker::{pass_on, routed},
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
/// still at it every [`ALIVE`].
async fn serve(node: &Arc<Node>, req: Request, reply: Subject) {
    let local = node.local.client();
    let answer = pass_on(&local, &req, ());
    tokio::pin!(answer);
    let mut tick = tokio::time::interval(ALIVE);
    tick.tick().await;
    let answer = loop {
        tokio::select! {
            answer = &mut answer => break answer,
            _ = tick.tick() => alive(node, &reply).await,
        }
    };
    match answer {
        Ok(Reply::Unary(payload)) => {
            let (headers, body) = wire::answer("ok", &payload);
            send_checked(node, reply, headers, body).await;
        }
        Ok(Reply::Stream(items)) => stream(node, items, reply).await,
        Err(err) => {
            let (headers, body) = wire::failure(&err);
            send(node, reply, headers, body).await;
        }
    }
}

async fn alive(node: &Node, reply: &Subject) {
    let headers = wire::headers(&[(wire::REPLY, "alive")]);
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

/// Send a stream's items as its caller takes them.
async fn stream(node: &Arc<Node>, items: PayloadStream, reply: Subject) {
    let id = node.next_id();
    let (control, mut credits) = tokio::sync::watch::channel(Some(WINDOW));
    node.streams
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id, Arc::new(control));
    let _forget = Forget { node, id };
    let opened = wire::headers(&[
        (wire::REPLY, "open"),
        (wire::STREAM, id.to_string().as_str()),
    ]);
    if !send(node, reply.clone(), opened, Bytes::new()).await {
        return;
    }
    let mut items = items;
    let (mut sent, mut credit) = (0u64, WINDOW);
    let (mut heard, mut spoke) = (Instant::now(), Instant::now());
    let mut tick = tokio::time::interval(ALIVE);
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
                    alive(node, &reply).await;
                }
            }
        }
    }
}

/// Forgets a stream served once it is over.
struct Forget<'a> {
    node: &'a Node,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.node
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// Pass the controls of `controls` (this broker's stream control subjects)
/// to their streams until it ends.
pub(super) async fn controls(node: Arc<Node>, mut controls: async_nats::Subscriber) {
    while let Some(msg) = controls.next().await {
        let Some(id) = super::subject::Subjects::parse_reply(&msg.subject) else {
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
            .streams
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
