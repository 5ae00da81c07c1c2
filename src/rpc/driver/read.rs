//! What the peer sent: each frame's effect on the connection.

use std::task::Context;

use busline_core::{Codec, Error, Io, Message, RemoteError};

use super::{command::Pending, Driver, MAX_CREDIT};

impl<I: Io, C: Codec> Driver<I, C> {
    pub(super) fn on_frame(&mut self, msg: Message, cx: &mut Context<'_>) {
        match msg {
            Message::Request {
                id,
                method,
                payload,
                timeout_ms,
            } => self.serve_call(id, method, payload, timeout_ms, cx),
            Message::Notify { method, payload } => self.serve_notification(method, payload, cx),
            Message::OpenStream {
                id,
                method,
                payload,
                credit,
                timeout_ms,
            } => self.serve_stream(id, method, payload, credit, timeout_ms),
            Message::Reply { id, payload } => match self.pending.remove(&id) {
                Some(pending @ (Pending::Unary(_) | Pending::PassedOn(_))) => {
                    pending.answered(Ok(payload))
                }
                Some(other) => {
                    self.pending.insert(id, other);
                    self.violation(format!("a reply for stream {id}"));
                }
                None => {} // cancelled or timed out; the answer is moot
            },
            Message::Error { id, error } => {
                if let Some(pending) = self.pending.remove(&id) {
                    pending.answered(Err(error));
                }
            }
            Message::Item { id, payload } => match self.pending.get_mut(&id) {
                Some(Pending::Stream { items, credit }) => {
                    if *credit == 0 {
                        return self.violation(format!("stream {id} sent items beyond its credit"));
                    }
                    *credit -= 1;
                    drop(items.send(Ok(payload)));
                }
                Some(Pending::Unary(_) | Pending::PassedOn(_)) => {
                    self.violation(format!("a stream item for call {id}"))
                }
                None => {}
            },
            Message::End { id } => {
                if let Some(Pending::Unary(_) | Pending::PassedOn(_)) = self.pending.get(&id) {
                    return self.violation(format!("a stream end for call {id}"));
                }
                self.pending.remove(&id);
            }
            Message::Credit { id, credit } => {
                if let Some((permits, _)) = self.streams.get(&id) {
                    let room = (MAX_CREDIT as usize).saturating_sub(permits.available_permits());
                    permits.add_permits((credit as usize).min(room));
                }
            }
            Message::Cancel { id } => {
                self.cancel_passed(id);
                if let Some(abort) = self.call_aborts.remove(&id) {
                    abort.abort();
                }
                if let Some((_, abort)) = self.streams.remove(&id) {
                    abort.abort();
                }
            }
            Message::Close { error } => {
                let err = error.map_or_else(
                    || Error::Disconnected("the peer closed the connection".into()),
                    RemoteError::into_error,
                );
                self.close(err, false);
            }
            Message::Rejected { id, error } => {
                tracing::debug!(id, error = %error.message, "rejected an unreadable call");
                self.outbox.push_back(Message::Error { id, error });
            }
            other @ (Message::Hello { .. } | Message::Auth { .. } | Message::Welcome { .. }) => {
                self.violation(format!("{} after the handshake", other.kind()))
            }
        }
    }

    pub(super) fn violation(&mut self, what: String) {
        tracing::warn!(%what, "protocol violation; closing the connection");
        self.close(Error::Protocol(what), true);
    }
}
