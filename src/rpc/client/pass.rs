//! Calls passed on through this connection for another connection's peer
//! (see [`Router::pass_calls`](crate::rpc::Router::pass_calls)).

use busline_core::{Error, Message, Payload};
use tokio::sync::OwnedSemaphorePermit;

use super::{Client, Command, PassBack};

impl Client {
    /// Send call `method` with `payload` on for another connection's peer,
    /// its answer to go to `back`. Gives the call's id on this connection
    /// and the unit of its calls in flight the call holds; or `back` again
    /// if no unit is free (the caller then waits for one the usual way) or
    /// the connection is closing.
    pub(crate) fn pass_on(
        &self,
        method: &str,
        payload: &Payload,
        back: PassBack,
    ) -> Result<(u64, OwnedSemaphorePermit), PassBack> {
        if self.is_closed() {
            return Err(back);
        }
        let Ok(permit) = self.shared.in_flight.clone().try_acquire_owned() else {
            return Err(back);
        };
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
        match self.shared.commands.send(Command::PassOn { id, msg, back }) {
            Ok(()) => Ok((id, permit)),
            Err(unsent) => match unsent.0 {
                Command::PassOn { back, .. } => Err(back),
                _ => unreachable!("the command sent comes back"),
            },
        }
    }

    /// Whether a call passed on now would go: the connection is open and
    /// has a call in flight to spare.
    pub(crate) fn has_room(&self) -> bool {
        !self.is_closed() && self.shared.in_flight.available_permits() > 0
    }

    /// The caller of call `id`, passed on through this connection, gave up
    /// on it.
    pub(crate) fn cancel_passed(&self, id: u64) {
        let _ = self.shared.commands.send(Command::Cancel { id });
    }

    /// Fail the calls this connection's peer made that were passed on in
    /// `group` (a channel that closed) with `error`.
    pub(crate) fn fail_passed(&self, group: u64, error: Error) {
        let _ = self
            .shared
            .commands
            .send(Command::FailPassed { group, error });
    }
}
