//! What client handles and stream tasks ask of the connection task, and
//! how it keeps track of the calls it sent.

use std::{collections::VecDeque, task::Context};

use busline_core::{Codec, Error, Io, Message, Payload, RemoteError, Result};
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::{Driver, PassBack};

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
    /// The caller gave up on call `id` (a local one, or another
    /// connection's whose call this one passed on).
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
    /// made; its answer goes back there (see [`PassBack`]).
    PassOn {
        id: u64,
        msg: Message,
        back: PassBack,
    },
    /// The answer (a reply or an error, with the caller's id) to the call
    /// this connection passed on as `token`.
    Answer { id: u64, token: u64, msg: Message },
    /// The call passed on as `token` lost its provider's connection
    /// unanswered: on to the next provider.
    Reroute { id: u64, token: u64 },
    /// Fail this connection's calls passed on in `group` with `error`.
    FailPassed { group: u64, error: Error },
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
    PassedOn(PassBack),
}

impl Pending {
    pub(super) fn fail(self, err: Error) {
        match self {
            Pending::Unary(tx) => drop(tx.send(Err(err))),
            Pending::Stream { items, .. } => drop(items.send(Err(err))),
            Pending::PassedOn(back) => back.answer(Err(err.to_remote())),
        }
    }

    /// The connection closed with the call unanswered: a call passed on
    /// goes on to the next provider (dropping its [`PassBack`] does that),
    /// any other fails with `err`.
    pub(super) fn lost(self, err: Error) {
        match self {
            Pending::PassedOn(back) => drop(back),
            other => other.fail(err),
        }
    }

    /// The peer answered the call (a stream's answer here is its error:
    /// a reply to a stream breaks the protocol and is refused before).
    pub(super) fn answered(self, answer: std::result::Result<Payload, RemoteError>) {
        match self {
            Pending::PassedOn(back) => back.answer(answer),
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
                let Some(pending) = self.pending.remove(&id) else {
                    return;
                };
                if let Pending::PassedOn(back) = pending {
                    // Its caller gave up: nothing to send on.
                    back.forget();
                }
                if self.closing.is_none() {
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
            Command::PassOn { id, msg, back } => {
                // Closing: dropped, the call goes on to the next provider.
                if self.closing.is_none() {
                    self.pending.insert(id, Pending::PassedOn(back));
                    self.outbox.push_back(msg);
                }
            }
            Command::Answer { id, token, msg } => self.pass_answered(id, token, msg),
            Command::Reroute { id, token } => self.reroute(id, token, cx),
            Command::FailPassed { group, error } => self.fail_passed(group, &error),
        }
    }
}
