//! The receiving end of a server stream.

use std::{
    fmt,
    future::Future,
    marker::PhantomData,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use busline_core::{Error, Payload, Result};
use futures::Stream;
use serde::de::DeserializeOwned;
use tokio::{
    sync::{mpsc, OwnedSemaphorePermit},
    time::Sleep,
};

use super::{client::CancelGuard, driver::Command};

/// Items of a server stream, decoded as `T`.
///
/// The server sends at most a window of items ahead of the reader; reading
/// grants more. Dropping the stream before its end cancels it on the server.
/// An error item (the handler failed, the deadline passed, the connection
/// dropped) is the last item.
pub struct CallStream<T> {
    guard: CancelGuard,
    items: mpsc::UnboundedReceiver<Result<Payload>>,
    window: u32,
    consumed: u32,
    deadline: Option<(Pin<Box<Sleep>>, Duration)>,
    done: bool,
    _permit: OwnedSemaphorePermit,
    _item: PhantomData<fn() -> T>,
}

impl<T> CallStream<T> {
    pub(crate) fn new(
        guard: CancelGuard,
        items: mpsc::UnboundedReceiver<Result<Payload>>,
        window: u32,
        deadline: Option<(Instant, Duration)>,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        CallStream {
            guard,
            items,
            window,
            consumed: 0,
            deadline: deadline
                .map(|(at, limit)| (Box::pin(tokio::time::sleep_until(at.into())), limit)),
            done: false,
            _permit: permit,
            _item: PhantomData,
        }
    }

    fn finish(&mut self) {
        self.done = true;
        self.guard.armed = false;
    }
}

impl<T> fmt::Debug for CallStream<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallStream")
            .field("id", &self.guard.id)
            .field("done", &self.done)
            .finish()
    }
}

impl<T> CallStream<T> {
    /// The same stream with items left encoded.
    pub fn into_payloads(self) -> impl Stream<Item = Result<Payload>> + Send + Unpin {
        let mut this = self;
        futures::stream::poll_fn(move |cx| this.poll_payload(cx))
    }

    fn poll_payload(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Payload>>> {
        let this = self;
        if this.done {
            return Poll::Ready(None);
        }
        match this.items.poll_recv(cx) {
            Poll::Ready(Some(Ok(payload))) => {
                this.consumed += 1;
                // Grant credit back in batches of half the window: one small
                // message per many items, and the server never stalls.
                if this.consumed >= (this.window / 2).max(1) {
                    let credit = std::mem::take(&mut this.consumed);
                    let _ = this.guard.commands.send(Command::Credit {
                        id: this.guard.id,
                        credit,
                    });
                }
                Poll::Ready(Some(Ok(payload)))
            }
            Poll::Ready(Some(Err(err))) => {
                this.finish();
                Poll::Ready(Some(Err(err)))
            }
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Pending => {
                let Some((sleep, limit)) = &mut this.deadline else {
                    return Poll::Pending;
                };
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let limit = *limit;
                this.done = true; // the guard stays armed: the server is told to stop
                Poll::Ready(Some(Err(Error::Timeout(limit))))
            }
        }
    }
}

impl<T: DeserializeOwned> Stream for CallStream<T> {
    type Item = Result<T>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<T>>> {
        self.get_mut()
            .poll_payload(cx)
            .map(|item| item.map(|payload| payload.and_then(|p| p.decode())))
    }
}
