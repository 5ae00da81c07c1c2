//! Writing: batching every ready frame into one flush.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use busline_core::{Codec, Error, Io, Message, Result};
use futures::{Sink, Stream};

use super::Driver;

impl<I: Io, C: Codec> Driver<I, C> {
    /// The error a [`Message::Close`] already received says, if one did.
    pub(super) fn peer_close_reason(&mut self, cx: &mut Context<'_>) -> Option<Error> {
        while let Poll::Ready(Some(Ok(msg))) = Pin::new(&mut self.framed).poll_next(cx) {
            if let Message::Close { error: Some(e) } = msg {
                return Some(e.into_error());
            }
        }
        None
    }

    /// Encode and write everything queued; `Ready(Err)` means the
    /// connection is broken.
    pub(super) fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        while !self.outbox.is_empty() {
            match Pin::new(&mut self.framed).poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
            let msg = self.outbox.pop_front().expect("outbox is not empty");
            let (kind, id) = (msg.kind(), msg.id());
            if let Err(err) = Pin::new(&mut self.framed).start_send(msg) {
                self.unsendable(kind, id, err);
            }
            self.needs_flush = true;
        }
        if self.needs_flush {
            match Pin::new(&mut self.framed).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.needs_flush = false,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        for done in self.flushed.drain(..) {
            let _ = done.send(());
        }
        if self.notifications_unwritten > 0 {
            self.notification_room
                .add_permits(std::mem::take(&mut self.notifications_unwritten));
        }
        Poll::Ready(Ok(()))
    }

    /// A message could not be encoded (too large, unserializable): fail just
    /// the call it belongs to, keep the connection.
    pub(super) fn unsendable(&mut self, kind: &'static str, id: Option<u64>, err: Error) {
        tracing::warn!(kind, ?id, error = %err, "message could not be sent");
        match (kind, id) {
            ("request" | "open_stream", Some(id)) => {
                if let Some(pending) = self.pending.remove(&id) {
                    pending.fail(err);
                }
            }
            ("reply" | "item", Some(id)) => {
                if kind == "item" {
                    if let Some((_, abort)) = self.streams.remove(&id) {
                        abort.abort();
                    }
                }
                self.outbox.push_front(Message::Error {
                    id,
                    error: err.to_remote(),
                });
            }
            _ => {}
        }
    }
}
