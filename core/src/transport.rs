//! The byte-stream layer: connect, bind, accept.
//!
//! A [`Transport`] knows bytes and nothing else: it turns an [`Address`] into
//! a duplex byte stream ([`Io`]) on the client side and into a [`Listener`]
//! on the server side. Framing, authentication and calls live above it.
//!
//! Generic code takes `T: Transport` (static dispatch). Where the address
//! picks the transport at run time, [`AnyTransport`] is the one `dyn` seam:
//! it holds transports by URL scheme and yields boxed streams.

use std::{collections::HashMap, fmt, sync::Arc};

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{Address, Error, Result};

/// A duplex byte stream, what every transport yields.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Credentials of the process on the other end, where the OS tells them
/// (Unix sockets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCredentials {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Process id, when known.
    pub pid: Option<i32>,
}

/// What a listener knows about an accepted peer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerInfo {
    /// Human-readable description for logs, e.g. `tcp://127.0.0.1:51234`.
    pub description: String,
    /// OS-reported credentials, when the transport has them.
    pub credentials: Option<PeerCredentials>,
}

impl PeerInfo {
    /// Peer info with only a description.
    pub fn described(description: impl Into<String>) -> Self {
        PeerInfo {
            description: description.into(),
            credentials: None,
        }
    }
}

/// Turns addresses into byte streams.
///
/// Contract (checked for every implementation by
/// `busline_core::testing::transport_conformance`):
/// - `bind` then `connect` to the listener's [`Listener::local_addr`] yields
///   a pair of streams that carry bytes both ways, in order, unaltered.
/// - `connect` to an address nobody listens on fails promptly with
///   [`Error::Transport`] (never hangs).
/// - `bind` to an address a live listener holds fails with
///   [`Error::Transport`] of kind `AddrInUse`.
/// - A listener serves many concurrent connections; each is independent.
/// - When one end is dropped, the other reads EOF (or an error), never hangs.
/// - Dropping the listener releases the address: it can be bound again and
///   leaves no file or kernel object behind.
/// - Streams are fully duplex: writing a large amount while the peer does the
///   same never deadlocks as long as both sides also read.
/// - An address of another scheme is refused with [`Error::Address`].
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// The byte stream this transport yields.
    type Io: Io;
    /// The listener returned by [`Transport::bind`].
    type Listener: Listener<Io = Self::Io>;

    /// The URL scheme this transport serves (`"unix"`, `"tcp"`, ...).
    fn scheme(&self) -> &'static str;

    /// Open a connection.
    async fn connect(&self, addr: &Address) -> Result<Self::Io>;

    /// Start listening.
    async fn bind(&self, addr: &Address) -> Result<Self::Listener>;
}

/// Accepts connections for a bound address.
#[async_trait]
pub trait Listener: Send + 'static {
    /// The byte stream of an accepted connection.
    type Io: Io;

    /// Wait for the next connection.
    async fn accept(&mut self) -> Result<(Self::Io, PeerInfo)>;

    /// The address clients connect to (with the real port when bound to `:0`).
    fn local_addr(&self) -> Address;
}

/// Fail with [`Error::Address`] unless `addr` has the transport's scheme.
pub fn expect_scheme(addr: &Address, scheme: &str) -> Result<()> {
    if addr.scheme() == scheme {
        Ok(())
    } else {
        Err(Error::Address {
            url: addr.to_string(),
            reason: format!(
                "the {scheme} transport cannot use a {} address",
                addr.scheme()
            ),
        })
    }
}

/// A type-erased byte stream.
pub type BoxIo = Box<dyn Io>;
/// A type-erased listener.
pub type BoxListener = Box<dyn Listener<Io = BoxIo>>;

#[async_trait]
impl Listener for BoxListener {
    type Io = BoxIo;

    async fn accept(&mut self) -> Result<(BoxIo, PeerInfo)> {
        (**self).accept().await
    }

    fn local_addr(&self) -> Address {
        (**self).local_addr()
    }
}

struct ErasedListener<L>(L);

#[async_trait]
impl<L: Listener> Listener for ErasedListener<L> {
    type Io = BoxIo;

    async fn accept(&mut self) -> Result<(BoxIo, PeerInfo)> {
        let (io, peer) = self.0.accept().await?;
        Ok((Box::new(io), peer))
    }

    fn local_addr(&self) -> Address {
        self.0.local_addr()
    }
}

#[async_trait]
trait ErasedTransport: Send + Sync + 'static {
    async fn connect(&self, addr: &Address) -> Result<BoxIo>;
    async fn bind(&self, addr: &Address) -> Result<BoxListener>;
}

#[async_trait]
impl<T: Transport> ErasedTransport for T {
    async fn connect(&self, addr: &Address) -> Result<BoxIo> {
        Ok(Box::new(Transport::connect(self, addr).await?))
    }

    async fn bind(&self, addr: &Address) -> Result<BoxListener> {
        Ok(Box::new(ErasedListener(Transport::bind(self, addr).await?)))
    }
}

/// Picks a transport by the address's URL scheme at run time.
///
/// ```
/// use busline_core::{Address, AnyTransport, MemoryTransport, Transport};
///
/// # tokio_test::block_on(async {
/// let any = AnyTransport::new().with(MemoryTransport::new());
/// let listener = any.bind(&"memory://doc-any".parse()?).await?;
/// assert!(any.connect(&"tcp://127.0.0.1:1".parse()?).await.is_err()); // no tcp here
/// # drop(listener);
/// # Ok::<(), busline_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Default)]
pub struct AnyTransport {
    by_scheme: HashMap<&'static str, Arc<dyn ErasedTransport>>,
}

impl AnyTransport {
    /// An empty set; add transports with [`AnyTransport::with`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Serve `transport`'s scheme with it (replacing any earlier one).
    pub fn with<T: Transport>(mut self, transport: T) -> Self {
        self.by_scheme
            .insert(transport.scheme(), Arc::new(transport));
        self
    }

    /// The schemes served, sorted.
    pub fn schemes(&self) -> Vec<&'static str> {
        let mut s: Vec<_> = self.by_scheme.keys().copied().collect();
        s.sort_unstable();
        s
    }

    fn pick(&self, addr: &Address) -> Result<&Arc<dyn ErasedTransport>> {
        self.by_scheme
            .get(addr.scheme())
            .ok_or_else(|| Error::Address {
                url: addr.to_string(),
                reason: format!(
                    "no {} transport in this build (available: {})",
                    addr.scheme(),
                    self.schemes().join(", ")
                ),
            })
    }
}

impl fmt::Debug for AnyTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnyTransport")
            .field("schemes", &self.schemes())
            .finish()
    }
}

#[async_trait]
impl Transport for AnyTransport {
    type Io = BoxIo;
    type Listener = BoxListener;

    fn scheme(&self) -> &'static str {
        "any"
    }

    async fn connect(&self, addr: &Address) -> Result<BoxIo> {
        self.pick(addr)?.connect(addr).await
    }

    async fn bind(&self, addr: &Address) -> Result<BoxListener> {
        self.pick(addr)?.bind(addr).await
    }
}
