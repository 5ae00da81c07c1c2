//! The calling side: a cheap, clonable handle to one connection.

use std::{
    borrow::Borrow,
    fmt,
    future::Future,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Weak,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use busline_core::{Encoding, Error, Message, Payload, Result};
use futures::future::BoxFuture;
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tower::Service;

mod notify;
mod pass;

pub(crate) use super::closed::CloseReason;
use super::{
    call_stream::CallStream,
    driver::{Command, Outgoing, PassBack},
    PayloadStream, SharedFrames,
};

/// Default bound on calls (and streams) in flight on one connection.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;
/// Default number of stream items the server may send ahead of the reader.
pub const DEFAULT_STREAM_WINDOW: u32 = 64;
/// Default bound on notifications waiting to be written on one connection.
pub const DEFAULT_MAX_QUEUED_NOTIFICATIONS: usize = 4096;

/// The bounds one [`Client`] handle keeps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HandleLimits {
    pub(crate) max_in_flight: usize,
    pub(crate) stream_window: u32,
    pub(crate) max_queued_notifications: usize,
    pub(crate) timeout: Option<Duration>,
}

impl Default for HandleLimits {
    fn default() -> Self {
        HandleLimits {
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            stream_window: DEFAULT_STREAM_WINDOW,
            max_queued_notifications: DEFAULT_MAX_QUEUED_NOTIFICATIONS,
            timeout: None,
        }
    }
}

/// A call for the [`tower::Service`] interface of [`Client`].
#[derive(Debug, Clone)]
pub struct Call {
    /// Method name.
    pub method: String,
    /// Encoded arguments.
    pub payload: Payload,
}

impl Call {
    /// A call with raw payload.
    pub fn new(method: impl Into<String>, payload: Payload) -> Self {
        Call {
            method: method.into(),
            payload,
        }
    }

    /// A call with `args` serialized in `encoding` (a connection's is
    /// [`Client::encoding`]).
    pub fn encode<A: Serialize + ?Sized>(
        encoding: Encoding,
        method: impl Into<String>,
        args: &A,
    ) -> Result<Self> {
        Ok(Call::new(method, Payload::encode(encoding, args)?))
    }
}

struct Shared {
    connection_id: u64,
    closed: CloseReason,
    commands: mpsc::UnboundedSender<Command>,
    next_id: AtomicU64,
    in_flight: Arc<Semaphore>,
    /// Room for notifications not yet written; shared with the connection
    /// task, which gives it back as it writes them.
    queued_notifications: Arc<Semaphore>,
    max_queued_notifications: usize,
    encoding: Encoding,
    stream_window: u32,
    /// The codec of every connection of its server, for frames encoded
    /// once; `None` where frames are encoded per connection.
    frames: Option<SharedFrames>,
}

/// A connection to a server, shared by every clone of this handle.
///
/// Calls from all clones are multiplexed on the one connection. The
/// connection closes when the last handle is dropped; if it breaks, every
/// call in flight fails with [`Error::Disconnected`].
///
/// ```
/// use busline::{rpc::{Client, Router, Server}, Address, JsonLineCodec, MemoryTransport};
///
/// # tokio_test::block_on(async {
/// let router = Router::new().unary("double", |x: i64| async move { Ok::<_, String>(x * 2) });
/// let addr = Address::memory("client-doc");
/// let server = Server::builder(router, JsonLineCodec::new()).bind(&MemoryTransport::new(), &addr).await?;
/// let client = Client::builder(JsonLineCodec::new()).connect(&MemoryTransport::new(), &addr).await?;
/// assert_eq!(client.call::<_, i64>("double", &21).await?, 42);
/// server.shutdown().await;
/// # Ok::<(), busline::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    timeout: Option<Duration>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("encoding", &self.shared.encoding)
            .field("timeout", &self.timeout)
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// Sends a cancel for its call if dropped before the call finished; holds
/// the command channel owned (a stream) or borrowed (a unary call, which
/// need not pay for a clone).
pub(crate) struct CancelGuard<
    S: Borrow<mpsc::UnboundedSender<Command>> = mpsc::UnboundedSender<Command>,
> {
    pub(crate) id: u64,
    pub(crate) commands: S,
    pub(crate) armed: bool,
}

impl<S: Borrow<mpsc::UnboundedSender<Command>>> Drop for CancelGuard<S> {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.commands.borrow().send(Command::Cancel { id: self.id });
        }
    }
}

impl Client {
    /// This handle with a different per-call timeout (`None`: wait forever).
    pub fn with_timeout(&self, timeout: impl Into<Option<Duration>>) -> Client {
        Client {
            shared: self.shared.clone(),
            timeout: timeout.into(),
        }
    }

    /// The error for a call that finds the connection gone: why it closed,
    /// if known.
    fn gone(&self) -> Error {
        self.shared
            .closed
            .get()
            .cloned()
            .unwrap_or_else(|| Error::Disconnected("the connection is closed".into()))
    }

    /// Close the connection now for every handle, telling the peer `why`;
    /// calls in flight fail with it. (Dropping every handle closes it too.)
    pub fn close(&self, why: Error) {
        let _ = self.shared.commands.send(Command::Close(why));
    }

    /// Wait until the connection has closed, and say why: the peer hung
    /// up, a heartbeat went unanswered, or [`Client::close`] was called.
    /// (It stays open while any handle lives, so await this beside other
    /// work, not instead of dropping the handles.)
    pub async fn closed(&self) -> Error {
        self.shared.closed.wait().await
    }

    /// Whether the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.get().is_some() || self.shared.commands.is_closed()
    }

    /// The payload encoding calls use.
    pub fn encoding(&self) -> Encoding {
        self.shared.encoding
    }

    /// A number for this connection, unique in the process: the same for
    /// every clone of this handle and for [`Request::peer`] on the serving
    /// side, so services can key per-connection state on it.
    ///
    /// [`Request::peer`]: super::Request::peer
    pub fn connection_id(&self) -> u64 {
        self.shared.connection_id
    }

    /// Call `method` with `args`, wait for its typed result.
    pub async fn call<Args: Serialize + ?Sized, Ret: DeserializeOwned>(
        &self,
        method: &str,
        args: &Args,
    ) -> Result<Ret> {
        let payload = Payload::encode(self.shared.encoding, args)?;
        self.call_raw(method, payload).await?.decode()
    }

    /// Call `method` with an already-encoded payload. The timeout covers
    /// everything, waiting for a slot among the calls in flight included.
    pub async fn call_raw(&self, method: &str, payload: Payload) -> Result<Payload> {
        let deadline = self.timeout.map(|limit| Instant::now() + limit);
        within(self.timeout, self.call_once(method, payload, deadline)).await?
    }

    async fn call_once(
        &self,
        method: &str,
        payload: Payload,
        deadline: Option<Instant>,
    ) -> Result<Payload> {
        if self.is_closed() {
            return Err(self.gone());
        }
        let _permit = self
            .shared
            .in_flight
            .acquire()
            .await
            .map_err(|_| self.gone())?;
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        let msg = Message::Request {
            id,
            method: method.to_string(),
            payload,
            // What is left of it, for the server to stop in time.
            timeout_ms: deadline.map(|at| millis(at.saturating_duration_since(Instant::now()))),
        };
        self.shared
            .commands
            .send(Command::Call { id, msg, reply })
            .map_err(|_| self.gone())?;
        // Dropped before the answer (timed out, or the caller gave up):
        // the server is told to stop.
        let mut guard = CancelGuard {
            id,
            commands: &self.shared.commands,
            armed: true,
        };
        let answer = answer.await;
        guard.armed = false;
        answer.unwrap_or_else(|_| Err(self.gone()))
    }

    /// Open a server stream; items arrive as the returned stream is read.
    /// Dropping the stream cancels it on the server.
    pub async fn stream<Args: Serialize + ?Sized, Item: DeserializeOwned>(
        &self,
        method: &str,
        args: &Args,
    ) -> Result<CallStream<Item>> {
        let payload = Payload::encode(self.shared.encoding, args)?;
        self.stream_raw(method, payload).await
    }

    /// Open a server stream with an already-encoded payload.
    pub async fn stream_raw<Item: DeserializeOwned>(
        &self,
        method: &str,
        payload: Payload,
    ) -> Result<CallStream<Item>> {
        let permit = within(self.timeout, self.permit()).await??;
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let window = self.shared.stream_window;
        let (items, rx) = mpsc::unbounded_channel();
        let msg = Message::OpenStream {
            id,
            method: method.to_string(),
            payload,
            credit: window,
            timeout_ms: self.timeout.map(millis),
        };
        self.shared
            .commands
            .send(Command::Stream {
                id,
                msg,
                credit: window,
                items,
            })
            .map_err(|_| self.gone())?;
        let guard = CancelGuard {
            id,
            commands: self.shared.commands.clone(),
            armed: true,
        };
        let deadline = self.timeout.map(|t| (Instant::now() + t, t));
        Ok(CallStream::new(guard, rx, window, deadline, permit))
    }

    /// Open a server stream whose items stay encoded, for code that
    /// forwards them (a broker) rather than reads them.
    pub async fn stream_payloads(&self, method: &str, payload: Payload) -> Result<PayloadStream> {
        let items = self.stream_raw::<()>(method, payload).await?;
        Ok(Box::pin(items.into_payloads()))
    }

    async fn permit(&self) -> Result<OwnedSemaphorePermit> {
        if self.is_closed() {
            return Err(self.gone());
        }
        self.shared
            .in_flight
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| self.gone())
    }
}

/// Run `work`, giving up with [`Error::Timeout`] once `limit` (if any) has
/// passed.
pub(crate) async fn within<T>(limit: Option<Duration>, work: impl Future<Output = T>) -> Result<T> {
    match limit {
        None => Ok(work.await),
        Some(limit) => tokio::time::timeout(limit, work)
            .await
            .map_err(|_| Error::Timeout(limit)),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Calls as a tower service, so tower's `timeout`, `retry`,
/// `concurrency_limit`, `rate_limit` and `load_shed` wrap it unchanged.
impl Service<Call> for Client {
    type Response = Payload;
    type Error = Error;
    type Future = BoxFuture<'static, Result<Payload>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<()>> {
        if self.is_closed() {
            Poll::Ready(Err(self.gone()))
        } else {
            Poll::Ready(Ok(()))
        }
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let client = self.clone();
        Box::pin(async move { client.call_raw(&call.method, call.payload).await })
    }
}

impl Client {
    pub(crate) fn new(
        commands: mpsc::UnboundedSender<Command>,
        closed: CloseReason,
        encoding: Encoding,
        limits: HandleLimits,
        frames: Option<SharedFrames>,
    ) -> Client {
        static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);
        Client {
            shared: Arc::new(Shared {
                connection_id: NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed),
                closed,
                commands,
                next_id: AtomicU64::new(1),
                in_flight: Arc::new(Semaphore::new(limits.max_in_flight)),
                queued_notifications: Arc::new(Semaphore::new(limits.max_queued_notifications)),
                max_queued_notifications: limits.max_queued_notifications,
                encoding,
                stream_window: limits.stream_window,
                frames,
            }),
            timeout: limits.timeout,
        }
    }

    /// The frames this connection's server encodes once for all its
    /// connections, if its codec allows: written with
    /// [`Client::notify_batch`].
    pub(crate) fn shared_frames(&self) -> Option<&SharedFrames> {
        self.shared.frames.as_ref()
    }

    /// The room for queued notifications, which the connection task gives
    /// back as it writes them.
    pub(crate) fn notification_room(&self) -> Arc<Semaphore> {
        self.shared.queued_notifications.clone()
    }

    /// Where the connection's end is recorded; holding it does not keep
    /// the connection open.
    pub(crate) fn end(&self) -> CloseReason {
        self.shared.closed.clone()
    }

    /// The per-call timeout of this handle.
    pub(crate) fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// A handle that does not keep the connection open.
    pub(crate) fn downgrade(&self) -> WeakClient {
        WeakClient {
            shared: Arc::downgrade(&self.shared),
            connection_id: self.shared.connection_id,
        }
    }
}

/// A [`Client`] that does not keep its connection open; handlers get a
/// real one from it while they run.
#[derive(Clone)]
pub(crate) struct WeakClient {
    shared: Weak<Shared>,
    /// Its [`Client::connection_id`], known without upgrading.
    connection_id: u64,
}

impl WeakClient {
    pub(crate) fn upgrade(&self) -> Option<Client> {
        self.shared.upgrade().map(|shared| Client {
            shared,
            timeout: None,
        })
    }

    /// The connection's id, as [`Client::connection_id`] says it.
    pub(crate) fn connection_id(&self) -> u64 {
        self.connection_id
    }
}
