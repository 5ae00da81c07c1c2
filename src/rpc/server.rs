//! The serving side: accept connections, authenticate them, run a
//! [`Router`] on each.

use std::{fmt, sync::Arc, time::Duration};

use busline_core::{
    handshake, Address, Authenticator, Codec, Identity, Io, Listener, NoAuth, PeerInfo, Result,
    Spin, Transport, DEFAULT_HANDSHAKE_TIMEOUT,
};
use tokio::{sync::Semaphore, task::JoinSet};
use tokio_util::{codec::Framed, sync::CancellationToken};

use super::{
    client::{CloseReason, HandleLimits},
    driver::{Driver, Setup},
    Client, Router, SharedFrames,
};

/// Default bound on simultaneous connections per server.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default bound on handlers running at once per connection.
pub const DEFAULT_MAX_HANDLERS: usize = 1024;
/// Default time a graceful shutdown waits for calls in flight.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves a [`Router`] on listeners.
///
/// See [`Client`] for a complete example.
#[derive(Debug)]
pub struct Server;

impl Server {
    /// Start configuring a server that answers calls with `router` in `codec`.
    pub fn builder<C: Codec>(router: Router, codec: C) -> ServerBuilder<C, NoAuth> {
        ServerBuilder {
            router,
            codec,
            auth: Arc::new(NoAuth),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_handlers: DEFAULT_MAX_HANDLERS,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            heartbeat: None,
            spin: Spin::NONE,
            on_connect: None,
            on_disconnect: None,
        }
    }
}

/// Called with [`Client::connection_id`] and who it is when a connection
/// has been authenticated.
type ConnectHook = Arc<dyn Fn(u64, &Identity) + Send + Sync>;
/// Called with [`Client::connection_id`] when a connection ends.
type DisconnectHook = Arc<dyn Fn(u64) + Send + Sync>;

/// Configures and starts a server.
pub struct ServerBuilder<C, A> {
    router: Router,
    codec: C,
    auth: Arc<A>,
    handshake_timeout: Duration,
    max_connections: usize,
    max_handlers: usize,
    drain_timeout: Duration,
    heartbeat: Option<Duration>,
    spin: Spin,
    on_connect: Option<ConnectHook>,
    on_disconnect: Option<DisconnectHook>,
}

impl<C: fmt::Debug, A> fmt::Debug for ServerBuilder<C, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("router", &self.router)
            .field("codec", &self.codec)
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
}

impl<C: Codec, A: Authenticator> ServerBuilder<C, A> {
    /// Require clients to authenticate with `auth`.
    pub fn auth<B: Authenticator>(self, auth: B) -> ServerBuilder<C, B> {
        ServerBuilder {
            router: self.router,
            codec: self.codec,
            auth: Arc::new(auth),
            handshake_timeout: self.handshake_timeout,
            max_connections: self.max_connections,
            max_handlers: self.max_handlers,
            drain_timeout: self.drain_timeout,
            heartbeat: self.heartbeat,
            spin: self.spin,
            on_connect: self.on_connect,
            on_disconnect: self.on_disconnect,
        }
    }

    /// Run `hook` with the connection's id and identity once a connection
    /// is authenticated.
    pub fn on_connect(mut self, hook: impl Fn(u64, &Identity) + Send + Sync + 'static) -> Self {
        self.on_connect = Some(Arc::new(hook));
        self
    }

    /// Run `hook` with the connection's id ([`Client::connection_id`] of
    /// [`Request::peer`](super::Request::peer)) when a connection ends, so
    /// per-connection state can be dropped.
    pub fn on_disconnect(mut self, hook: impl Fn(u64) + Send + Sync + 'static) -> Self {
        self.on_disconnect = Some(Arc::new(hook));
        self
    }

    /// Drop a connection that has not completed its handshake in time.
    /// Default: 5 s.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Bound on simultaneous connections; at the bound, new connections wait
    /// in the OS backlog. Default: 10 000.
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.max_connections = connections.max(1);
        self
    }

    /// Bound on handlers running at once on one connection; at the bound the
    /// server stops reading from it until one finishes. Default: 1024.
    pub fn max_handlers(mut self, handlers: usize) -> Self {
        self.max_handlers = handlers.max(1);
        self
    }

    /// How long [`ServerHandle::shutdown`] waits for calls in flight before
    /// cutting connections. Default: 10 s.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Detect dead or frozen clients: when nothing has arrived from one
    /// for `interval`, probe it, and drop it if the next `interval` brings
    /// nothing either (within three intervals of going silent). Every
    /// busline client answers probes; a plain JSON-RPC client that ignores
    /// requests from the server would be dropped when idle, so leave this
    /// off for listeners that serve such clients. Default: off.
    pub fn heartbeat(mut self, interval: Duration) -> Self {
        self.heartbeat = Some(interval.max(Duration::from_millis(1)));
        self
    }

    /// How long a connection keeps polling when it has nothing to do
    /// before its task sleeps: adaptively, longer while requests keep
    /// coming soon after an answer (see [`Spin`]). Waking a sleeping task
    /// costs a system call and, on a virtual machine, tens of
    /// microseconds, more than a call over a local socket; polling on
    /// keeps that off a busy connection, for CPU time while it waits. Worth
    /// it where the server and its clients each have a core
    /// ([`Spin::ADAPTIVE`]); harmful where busy threads outnumber cores,
    /// and with many connections each polling in turn. Default:
    /// [`Spin::NONE`], every wait a sleep.
    pub fn spin(mut self, spin: Spin) -> Self {
        self.spin = spin;
        self
    }

    /// Bind `addr` with `transport` and serve in the background.
    pub async fn bind<T: Transport>(self, transport: &T, addr: &Address) -> Result<ServerHandle> {
        Ok(self.serve(transport.bind(addr).await?))
    }

    /// Serve an already-bound listener in the background.
    pub fn serve<L: Listener>(self, listener: L) -> ServerHandle {
        let local_addr = listener.local_addr();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(self.accept_loop(listener, shutdown.clone()));
        ServerHandle {
            local_addr,
            shutdown,
            task: Some(task),
        }
    }

    /// Serve one already-open connection until it closes (for callers that
    /// accept connections themselves).
    pub async fn serve_connection<I: Io>(&self, io: I, peer: PeerInfo) {
        self.connection(io, peer, CancellationToken::new(), None)
            .await
    }

    async fn accept_loop<L: Listener>(self, mut listener: L, shutdown: CancellationToken) {
        // Every connection of this server writes frames of one codec.
        let frames = SharedFrames::new(&self.codec);
        let this = Arc::new(self);
        let slots = Arc::new(Semaphore::new(this.max_connections));
        let mut connections = JoinSet::new();
        loop {
            while connections.try_join_next().is_some() {}
            let slot = tokio::select! {
                _ = shutdown.cancelled() => break,
                slot = slots.clone().acquire_owned() => slot.expect("never closed"),
            };
            let (io, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Out of file descriptors and the like: wait, don't spin.
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            tracing::debug!(peer = %peer.description, "accepted");
            let this = this.clone();
            let (shutdown, frames) = (shutdown.clone(), frames.clone());
            connections.spawn(async move {
                this.connection(io, peer, shutdown, frames).await;
                drop(slot);
            });
        }
        drop(listener); // new clients are refused from now on
        let drained = tokio::time::timeout(this.drain_timeout, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                remaining = connections.len(),
                "drain timeout passed; closing the remaining connections"
            );
            connections.shutdown().await;
        }
    }

    async fn connection<I: Io>(
        &self,
        io: I,
        peer: PeerInfo,
        shutdown: CancellationToken,
        frames: Option<SharedFrames>,
    ) {
        let mut framed = Framed::new(io, self.codec.clone());
        let description = peer.description.clone();
        let identity =
            match handshake::server(&mut framed, &*self.auth, peer, self.handshake_timeout).await {
                Ok(identity) => identity,
                Err(err) => {
                    tracing::info!(peer = %description, error = %err, "handshake refused");
                    return;
                }
            };
        let (commands, rx) = tokio::sync::mpsc::unbounded_channel();
        let closed = CloseReason::default();
        // Handlers call the client back through this; it lives as long as
        // the connection.
        let peer = Client::new(
            commands.clone(),
            closed.clone(),
            self.codec.payload_encoding(),
            HandleLimits::default(),
            frames,
        );
        if let Some(hook) = &self.on_connect {
            hook(peer.connection_id(), &identity);
        }
        let setup = Setup {
            owned_by_handles: false,
            router: Some(self.router.clone()),
            identity: Arc::new(identity),
            max_handlers: self.max_handlers,
            shutdown,
            peer: peer.downgrade(),
            notification_room: peer.notification_room(),
            heartbeat: self.heartbeat,
            closed,
            spin: self.spin,
        };
        Driver::new(framed, rx, &commands, setup).await;
        if let Some(hook) = &self.on_disconnect {
            hook(peer.connection_id());
        }
        tracing::debug!(peer = %description, "connection closed");
    }
}

/// A running server.
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: Address,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl ServerHandle {
    /// The address clients connect to.
    pub fn local_addr(&self) -> &Address {
        &self.local_addr
    }

    /// Stop accepting, let calls in flight finish (up to the drain
    /// timeout), end streams, close every connection, release the address.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        self.wait().await;
    }

    /// Wait until the server stops: after its [`shutdown_token`] is
    /// cancelled, e.g. by a signal handler.
    ///
    /// [`shutdown_token`]: ServerHandle::shutdown_token
    pub async fn wait(&mut self) {
        if let Some(task) = self.task.take() {
            if let Err(err) = task.await {
                tracing::error!(error = %err, "server task failed");
            }
        }
    }

    /// A token that shuts the server down when cancelled (for signal
    /// handlers).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        // A dropped handle must not leave a server running unseen.
        self.shutdown.cancel();
    }
}
