//! Notifications: calls without a reply, bounded by the connection's
//! queue of notifications not yet written.

use busline_core::{Error, Message, Payload, Result};
use serde::Serialize;
use tokio::sync::oneshot;

use super::{within, Client, Command, Outgoing};

impl Client {
    /// Call `method` as a notification: no reply is sent, not even on error.
    /// Returns once the notification is queued on the connection; if
    /// [`ClientBuilder::max_queued_notifications`] are already waiting to
    /// be written (the peer reads slower than this sends), it waits for
    /// room first, within the handle's timeout. Memory stays bounded.
    ///
    /// [`ClientBuilder::max_queued_notifications`]: crate::rpc::ClientBuilder::max_queued_notifications
    pub async fn notify<Args: Serialize + ?Sized>(&self, method: &str, args: &Args) -> Result<()> {
        self.notify_raw(method, Payload::encode(self.shared.encoding, args)?)
            .await
    }

    /// Send a notification with an already-encoded payload; see
    /// [`Client::notify`]. A `method` given as a `String` is sent as it
    /// is, without a copy.
    pub async fn notify_raw(&self, method: impl Into<String>, payload: Payload) -> Result<()> {
        if self.is_closed() {
            return Err(self.gone());
        }
        let room = self.shared.queued_notifications.acquire();
        let permit = within(self.timeout, room).await?;
        // Given back by the connection task once the notification is written.
        permit.map_err(|_| self.gone())?.forget();
        self.send_notification(method.into(), payload, true)
    }

    /// Send a notification as [`Client::notify_raw`] does if that needs no
    /// waiting (the connection is open and its queue has room); otherwise
    /// hand it back, for the caller to wait as `notify_raw` would. The
    /// path of every publication, where the future and the handle `await`
    /// would need cost more than the notification itself.
    pub(crate) fn notify_now(
        &self,
        method: String,
        payload: Payload,
    ) -> std::result::Result<Result<()>, (String, Payload)> {
        if self.is_closed() {
            return Err((method, payload));
        }
        match self.shared.queued_notifications.try_acquire() {
            Ok(permit) => permit.forget(),
            Err(_) => return Err((method, payload)),
        }
        Ok(self.send_notification(method, payload, true))
    }

    /// Send a notification now if there is room for it in the queue, or
    /// fail with [`Error::Overloaded`]: for code that must not wait.
    pub(crate) fn try_notify_raw(&self, method: &str, payload: Payload) -> Result<()> {
        match self.shared.queued_notifications.try_acquire() {
            Ok(permit) => permit.forget(),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(self.gone()),
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                return Err(Error::Overloaded(format!(
                    "{} notifications are waiting to be written to a peer that does not \
                     read them",
                    self.shared.max_queued_notifications
                )))
            }
        }
        self.send_notification(method.to_owned(), payload, true)
    }

    /// Send a notification outside the bounded queue, for a caller that
    /// bounds what it sends itself (a broker's subscriber outlet waits for
    /// each batch to be written).
    pub(crate) fn notify_unqueued(&self, method: &str, payload: Payload) -> Result<()> {
        self.send_notification(method.to_owned(), payload, false)
    }

    /// Send `notifications` (messages, or frames from this connection's
    /// [`SharedFrames`](crate::rpc::SharedFrames)) outside the bounded queue, and wait until they
    /// are written: for a sender that bounds itself by waiting (a broker's
    /// subscriber outlet), in one hand-over to the connection task.
    pub(crate) async fn notify_batch(&self, notifications: Vec<Outgoing>) -> Result<()> {
        let (written, done) = oneshot::channel();
        self.shared
            .commands
            .send(Command::Batch {
                msgs: notifications,
                written,
            })
            .map_err(|_| self.gone())?;
        done.await.map_err(|_| self.gone())
    }

    fn send_notification(&self, method: String, payload: Payload, counted: bool) -> Result<()> {
        let msg = Message::Notify { method, payload };
        self.shared
            .commands
            .send(Command::Oneway { msg, counted })
            .map_err(|_| self.gone())
    }

    /// Wait until everything sent so far (notifications included) is
    /// written to the connection: call it before exiting after a notify.
    pub async fn flush(&self) -> Result<()> {
        let (done, written) = oneshot::channel();
        self.shared
            .commands
            .send(Command::Flush(done))
            .map_err(|_| self.gone())?;
        written.await.map_err(|_| self.gone())
    }
}
