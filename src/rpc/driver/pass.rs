//! Calls passed on to another connection without a future each: the
//! caller's connection task sends the call to the provider's, whose task
//! sends the answer straight back ([`Command::Answer`]). What a handler
//! future would do otherwise is kept by events: the caller cancels (the
//! provider is told), the caller's connection closes (likewise), the
//! provider's connection ends with the call unanswered (the call goes on
//! to the next provider), the call's group fails it (a channel closed).
//!
//! Each call passed on has a token of its own, so that an answer or a
//! reroute that crossed a cancel never lands on a later call the peer
//! made under the same id.

use std::{panic::AssertUnwindSafe, task::Context};

use busline_core::{Codec, Error, Io, Message, Payload, RemoteError};
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::{Command, Driver};
use crate::rpc::{
    router::{PassTo, Retry},
    Client, Router,
};

/// A call of this connection's peer, passed on and not yet answered.
pub(crate) struct Passed {
    token: u64,
    provider: Client,
    /// The call's id on the provider's connection.
    provider_call_id: u64,
    /// Kept to send the call on again if the provider's connection drops.
    method: String,
    payload: Payload,
    group: u64,
    /// The provider connections it was passed to before, which lost it.
    tried: Vec<u64>,
    _guard: Box<dyn Send>,
    /// One of the provider connection's calls in flight.
    _permit: OwnedSemaphorePermit,
}

/// A call on its way to a provider: what it asks, and, after a provider's
/// connection ended with it unanswered, the group it was passed on in and
/// the connections that lost it.
struct Onward {
    method: String,
    payload: Payload,
    retry: Option<(u64, Vec<u64>)>,
}

/// Where the answer to a call passed on goes: the caller's connection
/// task, the call's id there and the token it was passed on under.
/// Dropped unanswered and not forgotten (the provider's connection closed,
/// or its task ended with the call still queued) it sends the call on to
/// the next provider.
#[derive(Debug)]
pub(crate) struct PassBack {
    to: mpsc::WeakUnboundedSender<Command>,
    id: u64,
    token: u64,
    answered: bool,
}

impl PassBack {
    pub(super) fn answer(mut self, answer: Result<Payload, RemoteError>) {
        self.answered = true;
        let id = self.id;
        let msg = match answer {
            Ok(payload) => Message::Reply { id, payload },
            Err(error) => Message::Error { id, error },
        };
        self.send(Command::Answer {
            id,
            token: self.token,
            msg,
        });
    }

    /// The caller gave up on the call: nothing goes back.
    pub(super) fn forget(mut self) {
        self.answered = true;
    }

    fn send(&self, cmd: Command) {
        if let Some(to) = self.to.upgrade() {
            // A caller's connection gone since: nobody waits for it.
            let _ = to.send(cmd);
        }
    }
}

impl Drop for PassBack {
    fn drop(&mut self) {
        if !self.answered {
            self.send(Command::Reroute {
                id: self.id,
                token: self.token,
            });
        }
    }
}

impl<I: Io, C: Codec> Driver<I, C> {
    /// Pass call `id` on where the router says (`retry`: after connections
    /// that lost it); serve it through the routes where it says so, or
    /// where the provider it picked has no call to spare (the routes wait
    /// for one).
    pub(super) fn pass_or_route(
        &mut self,
        id: u64,
        router: &Router,
        method: String,
        payload: Payload,
        retry: Option<(u64, Vec<u64>)>,
        cx: &mut Context<'_>,
    ) {
        let from = self.peer.connection_id();
        let mut call = Onward {
            method,
            payload,
            retry,
        };
        loop {
            let asked = call.retry.as_ref().map(|(group, tried)| Retry {
                group: *group,
                tried,
            });
            // Like a handler, the router's choice may not take the
            // connection down with it.
            let to = std::panic::catch_unwind(AssertUnwindSafe(|| {
                router.pass_target(&call.method, from, asked)
            }));
            let to = match to {
                Ok(Ok(Some(to))) => to,
                Ok(Ok(None)) => {
                    return self.serve_routed(id, router, call.method, call.payload, None, cx)
                }
                Ok(Err(err)) => {
                    return self.outbox.push_back(Message::Error {
                        id,
                        error: err.to_remote(),
                    })
                }
                Err(_) => {
                    tracing::warn!(method = %call.method, "choosing where to pass a call panicked");
                    return self.outbox.push_back(Message::Error {
                        id,
                        error: Error::HandlerFailed {
                            message: "choosing where to pass the call panicked".into(),
                            kind: "panic".into(),
                        }
                        .to_remote(),
                    });
                }
            };
            let (provider_conn, group) = (to.provider.connection_id(), to.group);
            let closing = to.provider.is_closed();
            call = match self.pass_on(id, call, to) {
                Ok(()) => return,
                Err(unsent) => unsent,
            };
            match &mut call.retry {
                // Lost before: the routes would not know where, so on to
                // the next provider here.
                Some((lost_in, tried)) if closing => {
                    tried.push(provider_conn);
                    *lost_in = group;
                }
                // A first try, or (rarely) again with its provider out of
                // calls to spare: the routes wait for room, though as for
                // a first call.
                _ => return self.serve_routed(id, router, call.method, call.payload, None, cx),
            }
        }
    }

    /// Pass call `id` on to `to`; the call comes back if it could not go
    /// (`to`'s connection is closing, or has no call to spare).
    fn pass_on(&mut self, id: u64, call: Onward, to: PassTo) -> Result<(), Onward> {
        let token = self.next_pass_token;
        self.next_pass_token += 1;
        let back = PassBack {
            to: self.commands_tx.clone(),
            id,
            token,
            answered: false,
        };
        let (provider_call_id, permit) =
            match to.provider.pass_on(&call.method, &call.payload, back) {
                Ok(sent) => sent,
                Err(mut back) => {
                    // Not sent: nothing to reroute.
                    back.answered = true;
                    return Err(call);
                }
            };
        let Onward {
            method,
            payload,
            retry,
        } = call;
        let passed = Passed {
            token,
            provider: to.provider,
            provider_call_id,
            method,
            payload,
            group: to.group,
            tried: retry.map(|(_, tried)| tried).unwrap_or_default(),
            _guard: to.guard,
            _permit: permit,
        };
        self.passed.insert(id, passed);
        Ok(())
    }

    /// The answer to call `id`, passed on as `token`, came.
    pub(super) fn pass_answered(&mut self, id: u64, token: u64, msg: Message) {
        // Gone or another call now: cancelled by the peer, or failed.
        if self.take_passed(id, token).is_some() && self.closing.is_none() {
            self.outbox.push_back(msg);
        }
    }

    /// Call `id`, passed on as `token`, lost its provider's connection
    /// unanswered: on to the next provider, as the routes fail a call over.
    pub(super) fn reroute(&mut self, id: u64, token: u64, cx: &mut Context<'_>) {
        let Some(passed) = self.take_passed(id, token) else {
            return;
        };
        let Passed {
            provider,
            method,
            payload,
            group,
            mut tried,
            _guard,
            _permit,
            ..
        } = passed;
        // The lost provider is busy no more.
        drop((_guard, _permit));
        tried.push(provider.connection_id());
        match self.router.clone() {
            Some(router) if self.closing.is_none() => {
                self.pass_or_route(id, &router, method, payload, Some((group, tried)), cx)
            }
            _ => {}
        }
    }

    fn take_passed(&mut self, id: u64, token: u64) -> Option<Passed> {
        match self.passed.get(&id) {
            Some(passed) if passed.token == token => self.passed.remove(&id),
            _ => None,
        }
    }

    /// The peer gave up on call `id`: if it was passed on, tell its provider.
    pub(super) fn cancel_passed(&mut self, id: u64) {
        if let Some(passed) = self.passed.remove(&id) {
            passed.provider.cancel_passed(passed.provider_call_id);
        }
    }

    /// Fail the calls passed on in `group` with `error`.
    pub(super) fn fail_passed(&mut self, group: u64, error: &Error) {
        let ids: Vec<u64> = self
            .passed
            .iter()
            .filter(|(_, passed)| passed.group == group)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.cancel_passed(id);
            if self.closing.is_none() {
                self.outbox.push_back(Message::Error {
                    id,
                    error: error.to_remote(),
                });
            }
        }
    }
}

impl<I, C> Driver<I, C> {
    /// The connection is going: its calls passed on are cancelled.
    pub(super) fn cancel_all_passed(&mut self) {
        for (_, passed) in self.passed.drain() {
            passed.provider.cancel_passed(passed.provider_call_id);
        }
    }
}
