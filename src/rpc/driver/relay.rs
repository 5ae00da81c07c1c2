//! Calls relayed to another connection without a future each: the
//! caller's connection task sends the call to the provider's, whose task
//! sends the answer straight back
//! ([`Command::Answer`](super::Command::Answer)). What a handler future
//! would do otherwise is kept by events: the caller cancels (the provider
//! is told), the caller's connection closes (likewise), the provider's
//! connection closes before the answer (the call is served again through
//! the routes, which fail it over), the call's group fails it (a channel
//! closed).

use std::task::Context;

use busline_core::{Codec, Error, Io, Message, Payload};
use tokio::sync::OwnedSemaphorePermit;

use super::{command::RelayBack, Driver};
use crate::rpc::{router::RelayTo, Client};

/// A call of this connection's peer, relayed and not yet answered.
pub(crate) struct Relayed {
    provider: Client,
    /// The call's id on the provider's connection.
    provider_id: u64,
    /// Kept to serve the call again if the provider's connection drops.
    method: String,
    payload: Payload,
    group: u64,
    _guard: Box<dyn Send>,
    /// One of the provider connection's calls in flight.
    _permit: OwnedSemaphorePermit,
}

impl<I: Io, C: Codec> Driver<I, C> {
    /// Relay call `id` to `to`; the call comes back if it could not go (the
    /// provider's connection has no call to spare or is closing).
    pub(super) fn relay(
        &mut self,
        id: u64,
        method: String,
        payload: Payload,
        to: RelayTo,
    ) -> Result<(), (String, Payload)> {
        let back = RelayBack {
            to: self.commands_tx.clone(),
            id,
        };
        let Some((provider_id, permit)) = to.provider.relay(&method, &payload, back) else {
            return Err((method, payload));
        };
        let relayed = Relayed {
            provider: to.provider,
            provider_id,
            method,
            payload,
            group: to.group,
            _guard: to.guard,
            _permit: permit,
        };
        self.relays.insert(id, relayed);
        Ok(())
    }

    /// The answer to relayed call `id` came.
    pub(super) fn relay_answered(&mut self, id: u64, msg: Message) {
        // Gone: cancelled by the peer, or failed already.
        if self.relays.remove(&id).is_some() && self.closing.is_none() {
            self.outbox.push_back(msg);
        }
    }

    /// Relayed call `id` lost its provider: serve it through the routes.
    pub(super) fn reroute(&mut self, id: u64, cx: &mut Context<'_>) {
        let Some(relayed) = self.relays.remove(&id) else {
            return;
        };
        let Some(router) = self.router.clone() else {
            return;
        };
        let Relayed {
            method, payload, ..
        } = relayed;
        if self.closing.is_none() {
            self.serve_routed(id, &router, method, payload, None, cx);
        }
    }

    /// The peer gave up on call `id`: if it was relayed, tell its provider.
    pub(super) fn cancel_relay(&mut self, id: u64) {
        if let Some(relayed) = self.relays.remove(&id) {
            relayed.provider.cancel_relayed(relayed.provider_id);
        }
    }

    /// Fail the relayed calls of `group` with `error`.
    pub(super) fn fail_relays(&mut self, group: u64, error: &Error) {
        let ids: Vec<u64> = self
            .relays
            .iter()
            .filter(|(_, relayed)| relayed.group == group)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.cancel_relay(id);
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
    /// The connection is going: its relayed calls are cancelled.
    pub(super) fn cancel_relays(&mut self) {
        for (_, relayed) in self.relays.drain() {
            relayed.provider.cancel_relayed(relayed.provider_id);
        }
    }
}
