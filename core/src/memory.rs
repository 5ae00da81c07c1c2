//! The in-process transport, [`MemoryTransport`].

use std::{
    collections::HashMap,
    io,
    sync::{Arc, LazyLock, Mutex},
};

use async_trait::async_trait;
use tokio::{io::DuplexStream, sync::mpsc};

use crate::{
    transport::expect_scheme, Address, Endpoint, Error, Listener, PeerInfo, Result, Transport,
};

type Registry = Mutex<HashMap<String, mpsc::Sender<DuplexStream>>>;

static REGISTRY: LazyLock<Registry> = LazyLock::new(Default::default);

fn registry() -> std::sync::MutexGuard<'static, HashMap<String, mpsc::Sender<DuplexStream>>> {
    // A panic while holding this lock cannot leave the map inconsistent
    // (every operation is a single insert/remove/get), so poisoning is ignored.
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// `memory://name`: an in-process transport with real connect, bind and
/// accept semantics and no sockets, so tests run fast and in parallel.
///
/// Names live in one process-wide namespace, like socket paths do in the
/// file system: binding a name that a live listener holds fails with
/// `AddrInUse`, connecting to a name nobody holds fails with
/// `ConnectionRefused`, and dropping the listener frees the name.
///
/// ```
/// use busline_core::{Address, Listener, MemoryTransport, Transport};
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// # tokio_test::block_on(async {
/// let t = MemoryTransport::new();
/// let mut listener = t.bind(&Address::memory("doc-memory")).await?;
/// let mut client = t.connect(&Address::memory("doc-memory")).await?;
/// let (mut server, _peer) = listener.accept().await?;
/// client.write_all(b"hi").await?;
/// let mut buf = [0; 2];
/// server.read_exact(&mut buf).await?;
/// assert_eq!(&buf, b"hi");
/// # Ok::<(), busline_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone, Copy)]
pub struct MemoryTransport {
    buffer: usize,
    backlog: usize,
}

impl MemoryTransport {
    /// Default per-direction buffer (bytes), comparable to a socket buffer.
    pub const DEFAULT_BUFFER: usize = 256 * 1024;
    /// Default number of connections waiting to be accepted.
    pub const DEFAULT_BACKLOG: usize = 1024;

    /// A transport with default buffer and backlog sizes.
    pub fn new() -> Self {
        MemoryTransport {
            buffer: Self::DEFAULT_BUFFER,
            backlog: Self::DEFAULT_BACKLOG,
        }
    }

    /// Set the bytes buffered per direction before a writer waits.
    pub fn buffer(mut self, bytes: usize) -> Self {
        self.buffer = bytes.max(1);
        self
    }

    /// Set the number of connections that may wait for `accept`.
    pub fn backlog(mut self, connections: usize) -> Self {
        self.backlog = connections.max(1);
        self
    }
}

impl Default for MemoryTransport {
    fn default() -> Self {
        Self::new()
    }
}

fn name(addr: &Address) -> Result<&str> {
    expect_scheme(addr, "memory")?;
    match addr.endpoint() {
        Endpoint::Memory(name) => Ok(name),
        _ => unreachable!("scheme checked above"),
    }
}

#[async_trait]
impl Transport for MemoryTransport {
    type Io = DuplexStream;
    type Listener = MemoryListener;

    fn scheme(&self) -> &'static str {
        "memory"
    }

    async fn connect(&self, addr: &Address) -> Result<DuplexStream> {
        let name = name(addr)?;
        let sender = registry().get(name).cloned();
        let refused = || {
            Error::transport(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("nothing listens on memory://{name}"),
            ))
        };
        let sender = sender.ok_or_else(refused)?;
        let (client, server) = tokio::io::duplex(self.buffer);
        sender.send(server).await.map_err(|_| refused())?;
        Ok(client)
    }

    async fn bind(&self, addr: &Address) -> Result<MemoryListener> {
        let name = name(addr)?.to_string();
        let mut map = registry();
        if map.get(&name).is_some_and(|s| !s.is_closed()) {
            return Err(Error::transport(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("memory://{name} is already bound by a live listener"),
            )));
        }
        let (tx, rx) = mpsc::channel(self.backlog);
        map.insert(name.clone(), tx.clone());
        Ok(MemoryListener {
            name: Arc::from(name),
            rx,
            tx,
        })
    }
}

/// Listener for `memory://name`; dropping it frees the name.
#[derive(Debug)]
pub struct MemoryListener {
    name: Arc<str>,
    rx: mpsc::Receiver<DuplexStream>,
    /// The registered sender, kept to recognise our own registry entry.
    tx: mpsc::Sender<DuplexStream>,
}

#[async_trait]
impl Listener for MemoryListener {
    type Io = DuplexStream;

    async fn accept(&mut self) -> Result<(DuplexStream, PeerInfo)> {
        match self.rx.recv().await {
            Some(io) => Ok((io, PeerInfo::described(format!("memory://{}", self.name)))),
            None => Err(Error::transport(io::Error::new(
                io::ErrorKind::NotConnected,
                "memory listener closed",
            ))),
        }
    }

    fn local_addr(&self) -> Address {
        Address::memory(&*self.name)
    }
}

impl Drop for MemoryListener {
    fn drop(&mut self) {
        let mut map = registry();
        if map
            .get(&*self.name)
            .is_some_and(|s| s.same_channel(&self.tx))
        {
            map.remove(&*self.name);
        }
    }
}
