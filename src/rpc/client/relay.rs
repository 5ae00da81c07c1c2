//! Calls relayed through this connection for another connection's peer
//! (see [`Router::relay_calls`](crate::rpc::Router::relay_calls)).

use busline_core::{Error, Message, Payload};
use tokio::sync::OwnedSemaphorePermit;

use super::{Client, Command, RelayBack};

impl Client {
    /// Send call `method` with `payload` for another connection's peer, its
    /// answer to go to `back`; the call's id here and the unit of this
    /// connection's calls in flight it holds. `None` when no unit is free
    /// (the caller then waits for one the usual way) or the connection is
    /// closed.
    pub(crate) fn relay(
        &self,
        method: &str,
        payload: &Payload,
        back: RelayBack,
    ) -> Option<(u64, OwnedSemaphorePermit)> {
        if self.is_closed() {
            return None;
        }
        let permit = self.shared.in_flight.clone().try_acquire_owned().ok()?;
        let id = self
            .shared
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let msg = Message::Request {
            id,
            method: method.to_owned(),
            payload: payload.clone(),
            timeout_ms: None,
        };
        self.shared
            .commands
            .send(Command::Relay { id, msg, back })
            .ok()?;
        Some((id, permit))
    }

    /// The caller of relayed call `id` gave up on it.
    pub(crate) fn cancel_relayed(&self, id: u64) {
        let _ = self.shared.commands.send(Command::Cancel { id });
    }

    /// Fail the calls this connection's peer made that are relayed in
    /// `group` (a channel that closed) with `error`.
    pub(crate) fn fail_relays(&self, group: u64, error: Error) {
        let _ = self
            .shared
            .commands
            .send(Command::FailRelays { group, error });
    }
}
