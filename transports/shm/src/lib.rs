//! Shared-memory transport for busline: `shm://name`.
//!
//! Each connection is one region of shared memory holding two lock-free
//! single-producer single-consumer byte rings, one each way. Bytes move by
//! one copy into the ring and one copy out, with no system call while
//! both sides are busy; an idle side sleeps on an eventfd. Frames of any
//! size stream through the rings, so nothing is refused for being larger
//! than a ring.
//!
//! # Nothing leaks
//!
//! There are no named shared-memory objects. A client connects to a Unix
//! socket (`<dir>/<name>.shm`, private to the user), makes an anonymous
//! memfd and two eventfds, and passes them over the socket
//! (`SCM_RIGHTS`); the server passes back its own two eventfds. The kernel
//! frees the memory when both ends have closed it, however they exit, and
//! the socket doubles as the liveness signal: when the peer dies, its end
//! of the socket closes and the stream ends with an error instead of
//! hanging. The listener's socket file goes when the listener does (and a
//! stale one left by a killed server is replaced, as for `unix://`).
//!
//! # Untrusted peer
//!
//! The shared memory is input like any other. The server maps only a memfd
//! sealed against shrinking (which would make it fault), of exactly the
//! announced size; ring positions read from the memory are checked before
//! use; and every access is bounds-checked in one small `unsafe` module
//! with its invariants written beside it. A corrupt or hostile peer can
//! break its own connection (`InvalidData`), never the process.
//!
//! # Addresses
//!
//! `shm://name` puts the rendezvous socket in `$XDG_RUNTIME_DIR/busline/`,
//! else `/tmp/busline-<uid>/` (made `0700`, and refused if another user
//! owns it). `?dir=/path` picks the directory; `?ring=BYTES` (a power of
//! two, 4 KiB to 64 MiB) sets the ring size a client asks for.
//!
//! ```no_run
//! use busline_core::{Address, Listener, Transport};
//! use busline_shm::ShmTransport;
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # async fn run() -> busline_core::Result<()> {
//! let shm = ShmTransport::new();
//! let addr: Address = "shm://demo".parse()?;
//! let mut listener = shm.bind(&addr).await?;
//! let mut client = shm.connect(&addr).await?;
//! let (mut server, _) = listener.accept().await?;
//! client.write_all(b"ping").await?;
//! let mut buf = [0u8; 4];
//! server.read_exact(&mut buf).await?;
//! # Ok(()) }
//! ```
#![cfg(any(target_os = "linux", target_os = "android"))]
#![deny(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod listener;
#[allow(unsafe_code)]
mod region;
mod rendezvous;
mod ring;
mod stream;
mod wake;

use std::{
    io,
    os::unix::fs::{DirBuilderExt, MetadataExt},
    path::PathBuf,
    time::Duration,
};

use async_trait::async_trait;
use busline_core::{expect_scheme, Address, Endpoint, Error, Result, Transport};
use busline_unix::UnixTransport;

pub use listener::ShmListener;
pub use stream::ShmStream;

/// The `shm` transport. See the [crate docs](crate).
#[derive(Debug, Clone)]
pub struct ShmTransport {
    ring: usize,
    spin: Duration,
    handshake_timeout: Duration,
}

impl Default for ShmTransport {
    fn default() -> Self {
        Self::new()
    }
}

impl ShmTransport {
    /// Bytes in each ring unless the address says `?ring=`.
    pub const DEFAULT_RING: usize = 256 * 1024;
    /// How long a side with nothing to do spins before it sleeps.
    pub const DEFAULT_SPIN: Duration = Duration::from_micros(20);

    /// A transport with the default ring size and spin.
    pub fn new() -> Self {
        ShmTransport {
            ring: Self::DEFAULT_RING,
            spin: Self::DEFAULT_SPIN,
            handshake_timeout: Duration::from_secs(5),
        }
    }

    /// Bytes in each ring of the connections this transport opens: a
    /// power of two from 4 KiB to 64 MiB (rounded up to one). Larger rings
    /// let a writer run further ahead of its reader.
    pub fn ring_size(mut self, bytes: usize) -> Self {
        self.ring = bytes
            .clamp(rendezvous::MIN_RING, rendezvous::MAX_RING)
            .next_power_of_two();
        self
    }

    /// How long a reader or writer with nothing to do spins before it
    /// sleeps. Spinning is what keeps system calls off a busy connection
    /// (the peer answers within the spin, so nobody sleeps); zero makes
    /// every wait a sleep, and costs a wake-up of some microseconds.
    pub fn spin(mut self, spin: Duration) -> Self {
        self.spin = spin;
        self
    }

    fn ring_for(&self, addr: &Address) -> Result<usize> {
        let Some(text) = addr.param("ring") else {
            return Ok(self.ring);
        };
        text.parse::<usize>()
            .ok()
            .filter(|n| {
                n.is_power_of_two() && (rendezvous::MIN_RING..=rendezvous::MAX_RING).contains(n)
            })
            .ok_or_else(|| Error::Address {
                url: addr.to_string(),
                reason: format!(
                    "ring={text} is not a power of two from {} to {} bytes",
                    rendezvous::MIN_RING,
                    rendezvous::MAX_RING
                ),
            })
    }
}

/// The rendezvous socket of `addr`, its directory made if it is the
/// default one.
fn socket_path(addr: &Address) -> Result<PathBuf> {
    expect_scheme(addr, "shm")?;
    let Endpoint::Shm(name) = addr.endpoint() else {
        unreachable!("scheme checked above")
    };
    let bad = |reason: String| Error::Address {
        url: addr.to_string(),
        reason,
    };
    if name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(bad(format!(
            "name {name:?} must be at most 64 letters, digits, '.', '_' or '-'"
        )));
    }
    let dir = match addr.param("dir") {
        Some(dir) => PathBuf::from(dir),
        None => default_dir().map_err(|e| bad(e.to_string()))?,
    };
    Ok(dir.join(format!("{name}.shm")))
}

/// `$XDG_RUNTIME_DIR/busline`, else `/tmp/busline-<uid>`: made `0700`,
/// refused if someone else owns it or others may enter it (they could
/// swap the socket for their own).
fn default_dir() -> io::Result<PathBuf> {
    let uid = rustix::process::geteuid().as_raw();
    let dir = match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(runtime) if !runtime.is_empty() => PathBuf::from(runtime).join("busline"),
        _ => std::env::temp_dir().join(format!("busline-{uid}")),
    };
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(&dir)?;
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} must be a directory of user {uid} closed to others (mode 0700); \
                 remove it or choose another with ?dir=",
                dir.display()
            ),
        ));
    }
    Ok(dir)
}

#[async_trait]
impl Transport for ShmTransport {
    type Io = ShmStream;
    type Listener = ShmListener;

    fn scheme(&self) -> &'static str {
        "shm"
    }

    async fn connect(&self, addr: &Address) -> Result<ShmStream> {
        let ring = self.ring_for(addr)?;
        let socket = UnixTransport::new()
            .connect(&Address::unix(socket_path(addr)?))
            .await?;
        tokio::time::timeout(
            self.handshake_timeout,
            rendezvous::client(socket, ring, self.spin),
        )
        .await
        .map_err(|_| Error::Timeout(self.handshake_timeout))?
        .map_err(Error::transport)
    }

    async fn bind(&self, addr: &Address) -> Result<ShmListener> {
        let unix = UnixTransport::new()
            .bind(&Address::unix(socket_path(addr)?))
            .await?;
        Ok(ShmListener::new(
            unix,
            addr.clone(),
            self.spin,
            self.handshake_timeout,
        ))
    }
}
