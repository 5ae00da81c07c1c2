//! The calling side: a cheap, clonable handle to one connection.

use std::{
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Weak,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use busline_core::{
    handshake, Address, Authenticator, Codec, Encoding, Error, Identity, Io, Message, NoAuth,
    Payload, PeerInfo, Result, Transport, DEFAULT_HANDSHAKE_TIMEOUT,
};
use futures::future::BoxFuture;
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::{codec::Framed, sync::CancellationToken};
use tower::Service;

use super::{
    call_stream::CallStream,
    driver::{Command, Driver, Setup},
    PayloadStream, Router,
};

/// Default bound on calls (and streams) in flight on one connection.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;
/// Default number of stream items the server may send ahead of the reader.
pub const DEFAULT_STREAM_WINDOW: u32 = 64;

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
    encoding: Encoding,
    stream_window: u32,
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

/// Sends a cancel for its call if dropped before the call finished.
pub(crate) struct CancelGuard {
    pub(crate) id: u64,
    pub(crate) commands: mpsc::UnboundedSender<Command>,
    pub(crate) armed: bool,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.commands.send(Command::Cancel { id: self.id });
        }
    }
}

/// Why a connection closed, once it has: set by its connection task, read
/// by handles whose calls find it gone.
pub(crate) type CloseReason = Arc<std::sync::OnceLock<Error>>;

impl Client {
    /// Start configuring a client that speaks `codec`.
    pub fn builder<C: Codec>(codec: C) -> ClientBuilder<C, NoAuth> {
        ClientBuilder {
            codec,
            auth: NoAuth,
            timeout: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            retry_connect: None,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            stream_window: DEFAULT_STREAM_WINDOW,
            router: None,
        }
    }

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

    /// Call `method` with an already-encoded payload.
    pub async fn call_raw(&self, method: &str, payload: Payload) -> Result<Payload> {
        let _permit = self.permit().await?;
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        let msg = Message::Request {
            id,
            method: method.to_string(),
            payload,
            timeout_ms: self.timeout.map(millis),
        };
        self.shared
            .commands
            .send(Command::Call { id, msg, reply })
            .map_err(|_| self.gone())?;
        let mut guard = CancelGuard {
            id,
            commands: self.shared.commands.clone(),
            armed: true,
        };
        let answer = match self.timeout {
            None => answer.await,
            Some(limit) => tokio::time::timeout(limit, answer)
                .await
                .map_err(|_| Error::Timeout(limit))?,
        };
        guard.armed = false;
        answer.unwrap_or_else(|_| Err(self.gone()))
    }

    /// Call `method` as a notification: no reply is sent, not even on error.
    /// Returns once the notification is queued on the connection.
    pub fn notify<Args: Serialize + ?Sized>(&self, method: &str, args: &Args) -> Result<()> {
        self.notify_raw(method, Payload::encode(self.shared.encoding, args)?)
    }

    /// Send a notification with an already-encoded payload.
    pub fn notify_raw(&self, method: &str, payload: Payload) -> Result<()> {
        self.shared
            .commands
            .send(Command::Oneway(Message::Notify {
                method: method.to_string(),
                payload,
            }))
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
        let permit = self.permit().await?;
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

/// Configures and opens a [`Client`].
#[derive(Debug)]
pub struct ClientBuilder<C, A> {
    codec: C,
    auth: A,
    timeout: Option<Duration>,
    handshake_timeout: Duration,
    retry_connect: Option<Duration>,
    max_in_flight: usize,
    stream_window: u32,
    router: Option<Router>,
}

impl<C: Codec, A: Authenticator> ClientBuilder<C, A> {
    /// Authenticate with `auth` (it must match the server's scheme).
    pub fn auth<B: Authenticator>(self, auth: B) -> ClientBuilder<C, B> {
        ClientBuilder {
            codec: self.codec,
            auth,
            timeout: self.timeout,
            handshake_timeout: self.handshake_timeout,
            retry_connect: self.retry_connect,
            max_in_flight: self.max_in_flight,
            stream_window: self.stream_window,
            router: self.router,
        }
    }

    /// Serve `router`'s methods to the server over this connection: the
    /// server's handlers call them through [`Request::peer`], for pushing
    /// work or events to the client (JSON-RPC peers can do this too).
    ///
    /// [`Request::peer`]: super::Request::peer
    pub fn serve(mut self, router: Router) -> Self {
        self.router = Some(router);
        self
    }

    /// Default per-call timeout; it also travels to the server as the
    /// call's deadline. Default: none.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Bound on the connection handshake. Default: 5 s.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Keep retrying a refused connection (a daemon still starting) with
    /// exponential backoff and jitter for up to `window`. Default: no retry.
    pub fn retry_connect(mut self, window: Duration) -> Self {
        self.retry_connect = Some(window);
        self
    }

    /// Bound on calls and streams in flight; further calls wait for a slot.
    /// Default: 1024.
    pub fn max_in_flight(mut self, calls: usize) -> Self {
        self.max_in_flight = calls.max(1);
        self
    }

    /// Stream items the server may send before the reader catches up.
    /// Default: 64.
    pub fn stream_window(mut self, items: u32) -> Self {
        self.stream_window = items.max(1);
        self
    }

    /// Connect to `addr` over `transport`.
    pub async fn connect<T: Transport>(self, transport: &T, addr: &Address) -> Result<Client> {
        let started = Instant::now();
        let mut delay = Duration::from_millis(20);
        let io = loop {
            match transport.connect(addr).await {
                Ok(io) => break io,
                Err(err) => match self.retry_connect {
                    Some(window) if err.is_retryable() && started.elapsed() < window => {
                        let jitter = getrandom::u32().unwrap_or(0) % (delay.as_millis() as u32 + 1);
                        let pause = (delay / 2 + Duration::from_millis(jitter.into()))
                            .min(window.saturating_sub(started.elapsed()));
                        tracing::debug!(%addr, error = %err, ?pause, "connect refused; retrying");
                        tokio::time::sleep(pause).await;
                        delay = (delay * 2).min(Duration::from_secs(1));
                    }
                    _ => return Err(err),
                },
            }
        };
        self.connect_io(io, PeerInfo::described(addr.to_string()))
            .await
    }

    /// Run the handshake over an already-open byte stream and start the
    /// connection.
    pub async fn connect_io<I: Io>(self, io: I, peer: PeerInfo) -> Result<Client> {
        let encoding = self.codec.payload_encoding();
        let mut framed = Framed::new(io, self.codec);
        handshake::client(&mut framed, &self.auth, self.handshake_timeout).await?;
        let (commands, rx) = mpsc::unbounded_channel();
        let identity = Identity {
            scheme: self.auth.scheme().into(),
            subject: Some("server".into()),
            peer,
        };
        let setup = Setup {
            owned_by_handles: true,
            router: self.router,
            identity: Arc::new(identity),
            max_handlers: self.max_in_flight,
            shutdown: CancellationToken::new(),
            peer: WeakClient::default(),
            closed: CloseReason::default(),
        };
        let client = Client::new(
            commands.clone(),
            setup.closed.clone(),
            encoding,
            self.max_in_flight,
            self.stream_window,
            self.timeout,
        );
        let setup = Setup {
            peer: client.downgrade(),
            ..setup
        };
        tokio::spawn(Driver::new(framed, rx, &commands, setup));
        Ok(client)
    }
}

impl Client {
    pub(crate) fn new(
        commands: mpsc::UnboundedSender<Command>,
        closed: CloseReason,
        encoding: Encoding,
        max_in_flight: usize,
        stream_window: u32,
        timeout: Option<Duration>,
    ) -> Client {
        static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);
        Client {
            shared: Arc::new(Shared {
                connection_id: NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed),
                closed,
                commands,
                next_id: AtomicU64::new(1),
                in_flight: Arc::new(Semaphore::new(max_in_flight)),
                encoding,
                stream_window,
            }),
            timeout,
        }
    }

    /// A handle that does not keep the connection open.
    pub(crate) fn downgrade(&self) -> WeakClient {
        WeakClient(Arc::downgrade(&self.shared))
    }
}

/// A [`Client`] that does not keep its connection open; handlers get a
/// real one from it while they run.
#[derive(Clone, Default)]
pub(crate) struct WeakClient(Weak<Shared>);

impl WeakClient {
    pub(crate) fn upgrade(&self) -> Option<Client> {
        self.0.upgrade().map(|shared| Client {
            shared,
            timeout: None,
        })
    }
}
