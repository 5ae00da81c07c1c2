//! What client handles and stream tasks ask of the connection task, and
//! how it keeps track of the calls it sent.

use std::{collections::VecDeque, task::Context};

use busline_core::{Codec, Error, Io, Message, Payload, RemoteError, Result};
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::Driver;

/// Work sent to the driver by client handles and stream tasks.
pub(crate) enum Command {
    /// Send request `id`; deliver its answer to `reply`.
    Call {
        id: u64,
        msg: Message,
        reply: oneshot::Sender<Result<Payload>>,
    },
    /// Open stream `id`; deliver its items to `items`.
    Stream {
        id: u64,
        msg: Message,
        credit: u32,
        items: mpsc::UnboundedSender<Result<Payload>>,
    },
    /// The local stream consumer grants more items.
    Credit { id: u64, credit: u32 },
    /// The local caller gave up on call `id`.
    Cancel { id: u64 },
    /// Serving stream `id` produced a message (item or final answer).
    Send { id: u64, msg: Message, last: bool },
    /// Send a notification; if `counted`, it holds a unit of the
    /// connection's notification room until written.
    Oneway { msg: Message, counted: bool },
    /// Send these notifications, outside the bounded queue, and answer
    /// once they are written out.
    Batch {
        msgs: Vec<Outgoing>,
        written: oneshot::Sender<()>,
    },
    /// Answer once everything queued before it is written out.
    Flush(oneshot::Sender<()>),
    /// Close the connection, telling the peer why.
    Close(Error),
    /// Send request `id` (`msg`) for a call another connection's peer
    /// made; its answer goes back there (see [`RelayBack`]).
    Relay {
        id: u64,
        msg: Message,
        back: RelayBack,
    },
    /// The answer (a reply or an error, its id this connection's peer's)
    /// to a call this connection relayed.
    Answer { id: u64, msg: Message },
    /// Relayed call `id` lost its provider's connection before the
    /// answer: serve it again through the routes, which fail it over.
    Reroute { id: u64 },
    /// Fail this connection's relayed calls of `group` with `error`.
    FailRelays { group: u64, error: Error },
}

/// Where the answer to a relayed call goes: the connection task of the
/// peer that made it, and the call's id there.
#[derive(Debug)]
pub(crate) struct RelayBack {
    pub(crate) to: mpsc::WeakUnboundedSender<Command>,
    pub(crate) id: u64,
}

impl RelayBack {
    fn send(&self, cmd: Command) {
        if let Some(to) = self.to.upgrade() {
            // A caller's connection gone since: nobody waits for it.
            let _ = to.send(cmd);
        }
    }

    fn answer(self, msg: Message) {
        self.send(Command::Answer { id: self.id, msg });
    }
}

/// One thing to write: a message, or a small frame encoded already with
/// this connection's codec ([`SharedFrames`](crate::rpc::SharedFrames)),
/// copied into the write buffer.
#[derive(Debug)]
pub(crate) enum Outgoing {
    Message(Message),
    Frame(Bytes),
}

impl From<Message> for Outgoing {
    fn from(msg: Message) -> Self {
        Outgoing::Message(msg)
    }
}

/// What waits to be encoded and written, in order.
#[derive(Debug, Default)]
pub(super) struct Outbox(VecDeque<Outgoing>);

impl Outbox {
    pub(super) fn push_back(&mut self, item: impl Into<Outgoing>) {
        self.0.push_back(item.into());
    }

    pub(super) fn push_front(&mut self, item: impl Into<Outgoing>) {
        self.0.push_front(item.into());
    }

    pub(super) fn extend(&mut self, items: impl IntoIterator<Item = Outgoing>) {
        self.0.extend(items);
    }

    pub(super) fn pop_front(&mut self) -> Option<Outgoing> {
        self.0.pop_front()
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(super) fn clear(&mut self) {
        self.0.clear();
    }
}

pub(super) enum Pending {
    Unary(oneshot::Sender<Result<Payload>>),
    Stream {
        items: mpsc::UnboundedSender<Result<Payload>>,
        credit: u32,
    },
    Relay(RelayBack),
}

impl Pending {
    pub(super) fn fail(self, err: Error) {
        match self {
            Pending::Unary(tx) => drop(tx.send(Err(err))),
            Pending::Stream { items, .. } => drop(items.send(Err(err))),
            Pending::Relay(back) => {
                let id = back.id;
                back.answer(Message::Error {
                    id,
                    error: err.to_remote(),
                });
            }
        }
    }

    /// The connection closed with the call unanswered: a relayed call is
    /// served again through the routes (the provider's connection is gone,
    /// so it fails over), any other fails with `err`.
    pub(super) fn lost(self, err: Error) {
        match self {
            Pending::Relay(back) => back.send(Command::Reroute { id: back.id }),
            other => other.fail(err),
        }
    }

    /// The peer answered the call (a stream's answer here is its error:
    /// a reply to a stream breaks the protocol and is refused before).
    pub(super) fn answered(self, answer: std::result::Result<Payload, RemoteError>) {
        match self {
            Pending::Relay(back) => {
                let id = back.id;
                back.answer(match answer {
                    Ok(payload) => Message::Reply { id, payload },
                    Err(error) => Message::Error { id, error },
                });
            }
            Pending::Unary(tx) => drop(tx.send(answer.map_err(RemoteError::into_error))),
            Pending::Stream { items, .. } => {
                drop(items.send(answer.map_err(RemoteError::into_error)))
            }
        }
    }
}

impl<I: Io, C: Codec> Driver<I, C> {
    pub(super) fn on_command(&mut self, cmd: Command, cx: &mut Context<'_>) {
        match cmd {
            Command::Call { id, msg, reply } => {
                if let Some(err) = &self.closing {
                    drop(reply.send(Err(err.clone())));
                    return;
                }
                self.pending.insert(id, Pending::Unary(reply));
                self.outbox.push_back(msg);
            }
            Command::Stream {
                id,
                msg,
                credit,
                items,
            } => {
                if let Some(err) = &self.closing {
                    drop(items.send(Err(err.clone())));
                    return;
                }
                self.pending.insert(id, Pending::Stream { items, credit });
                self.outbox.push_back(msg);
            }
            Command::Credit { id, credit } => {
                if let Some(Pending::Stream { credit: left, .. }) = self.pending.get_mut(&id) {
                    *left = left.saturating_add(credit);
                    self.outbox.push_back(Message::Credit { id, credit });
                }
            }
            Command::Cancel { id } => {
                if self.pending.remove(&id).is_some() && self.closing.is_none() {
                    self.outbox.push_back(Message::Cancel { id });
                }
            }
            Command::Send { id, msg, last } => {
                // A cancelled or closed stream's late messages are dropped.
                if self.streams.contains_key(&id) {
                    if last {
                        self.streams.remove(&id);
                    }
                    self.outbox.push_back(msg);
                }
            }
            Command::Oneway { msg, counted } => {
                if self.closing.is_none() {
                    self.outbox.push_back(msg);
                    self.notifications_unwritten += usize::from(counted);
                }
            }
            Command::Batch { msgs, written } => {
                if self.closing.is_none() {
                    self.outbox.extend(msgs);
                    self.flushed.push(written);
                }
            }
            Command::Flush(done) => {
                if self.closing.is_none() {
                    self.flushed.push(done);
                }
            }
            Command::Close(err) => self.close(err, true),
            Command::Relay { id, msg, back } => {
                if let Some(err) = &self.closing {
                    Pending::Relay(back).lost(err.clone());
                    return;
                }
                self.pending.insert(id, Pending::Relay(back));
                self.outbox.push_back(msg);
            }
            Command::Answer { id, msg } => self.relay_answered(id, msg),
            Command::Reroute { id } => self.reroute(id, cx),
            Command::FailRelays { group, error } => self.fail_relays(group, &error),
        }
    }
}
