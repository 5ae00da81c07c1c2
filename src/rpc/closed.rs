//! The end of a connection: why it closed, and a way to wait for it.

use std::sync::Arc;

use busline_core::Error;

/// Why a connection closed, once it has: set by its connection task, read
/// by handles whose calls find it gone, awaited by whoever watches it.
pub(crate) type CloseReason = Arc<Closed>;

/// A connection's end: its reason, and a way to wait for it.
#[derive(Debug, Default)]
pub(crate) struct Closed {
    reason: std::sync::OnceLock<Error>,
    ended: tokio::sync::Notify,
}

impl Closed {
    /// Record why the connection ended (the first reason wins).
    pub(crate) fn set(&self, why: Error) {
        let _ = self.reason.set(why);
        self.ended.notify_waiters();
    }

    pub(crate) fn get(&self) -> Option<&Error> {
        self.reason.get()
    }

    /// Wait until the connection has ended; why it did.
    pub(crate) async fn wait(&self) -> Error {
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if let Some(why) = self.get() {
                return why.clone();
            }
            ended.await;
        }
    }
}
