//! Configuring and opening a [`Client`] connection.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use busline_core::{
    handshake, Address, Authenticator, Codec, Identity, Io, NoAuth, PeerInfo, Result, Spin,
    Transport, DEFAULT_HANDSHAKE_TIMEOUT,
};
use tokio::sync::mpsc;
use tokio_util::{codec::Framed, sync::CancellationToken};

use super::{
    client::{CloseReason, HandleLimits},
    driver::{Driver, Setup},
    Client, Router,
};

impl Client {
    /// Start configuring a client that speaks `codec`.
    pub fn builder<C: Codec>(codec: C) -> ClientBuilder<C, NoAuth> {
        ClientBuilder {
            codec,
            auth: NoAuth,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            retry_connect: None,
            limits: HandleLimits::default(),
            heartbeat: None,
            spin: Spin::NONE,
            router: None,
        }
    }
}

/// Configures and opens a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientBuilder<C, A> {
    codec: C,
    auth: A,
    handshake_timeout: Duration,
    retry_connect: Option<Duration>,
    limits: HandleLimits,
    heartbeat: Option<Duration>,
    spin: Spin,
    router: Option<Router>,
}

impl<C: Codec, A: Authenticator> ClientBuilder<C, A> {
    /// Authenticate with `auth` (it must match the server's scheme).
    pub fn auth<B: Authenticator>(self, auth: B) -> ClientBuilder<C, B> {
        ClientBuilder {
            codec: self.codec,
            auth,
            handshake_timeout: self.handshake_timeout,
            retry_connect: self.retry_connect,
            limits: self.limits,
            heartbeat: self.heartbeat,
            spin: self.spin,
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
        self.limits.timeout = Some(timeout);
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
        self.limits.max_in_flight = calls.max(1);
        self
    }

    /// Stream items the server may send before the reader catches up.
    /// Default: 64.
    pub fn stream_window(mut self, items: u32) -> Self {
        self.limits.stream_window = items.max(1);
        self
    }

    /// Detect a dead or frozen server: when nothing has arrived for
    /// `interval`, send it a probe, and close the connection (calls in
    /// flight fail with [`Error::Disconnected`]) if the next `interval`
    /// brings nothing either. A peer that goes silent is dropped within
    /// three intervals. Default: off.
    ///
    /// [`Error::Disconnected`]: busline_core::Error::Disconnected
    pub fn heartbeat(mut self, interval: Duration) -> Self {
        self.heartbeat = Some(interval.max(Duration::from_millis(1)));
        self
    }

    /// How long the connection keeps polling when it has nothing to do
    /// before its task sleeps: adaptively, longer while answers keep
    /// coming soon after (see [`Spin`]). Waking a sleeping task costs a
    /// system call and, on a virtual machine, tens of microseconds, more
    /// than a call over a local socket; polling on keeps that off a busy
    /// connection, for CPU time while it waits. Worth it where each end
    /// has a core to itself ([`Spin::ADAPTIVE`]: a Unix-socket call went
    /// from 95 µs to 11 µs here); harmful where busy threads outnumber
    /// cores, as the polling takes their time. Default: [`Spin::NONE`],
    /// every wait a sleep.
    pub fn spin(mut self, spin: Spin) -> Self {
        self.spin = spin;
        self
    }

    /// Bound on notifications (and publications) queued but not yet
    /// written; [`Client::notify`] waits for room beyond it, so a fast
    /// sender is paced by a slow peer instead of filling memory.
    /// Default: 4096.
    pub fn max_queued_notifications(mut self, notifications: usize) -> Self {
        self.limits.max_queued_notifications = notifications.max(1);
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
        let closed = CloseReason::default();
        let client = Client::new(
            commands.clone(),
            closed.clone(),
            encoding,
            self.limits,
            None,
        );
        let setup = Setup {
            owned_by_handles: true,
            router: self.router,
            identity: Arc::new(identity),
            max_handlers: self.limits.max_in_flight,
            shutdown: CancellationToken::new(),
            peer: client.downgrade(),
            notification_room: client.notification_room(),
            heartbeat: self.heartbeat,
            closed,
            spin: self.spin,
        };
        tokio::spawn(Driver::new(framed, rx, &commands, setup));
        Ok(client)
    }
}
