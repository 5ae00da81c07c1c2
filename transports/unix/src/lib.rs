//! Unix domain socket transport for [busline](https://docs.rs/busline):
//! addresses `unix:///path/to/app.sock`.
//!
//! The socket file is the part of local IPC that usually goes wrong, so
//! this crate is strict about it:
//!
//! - **Private by default.** The socket file gets mode `0600` (only its
//!   owner may connect), or what [`UnixTransport::mode`] sets, and there is
//!   no moment at which it exists at the final path with wider permissions:
//!   it is bound inside a fresh `0700` directory, chmod-ed, and only then
//!   linked into place.
//! - **Missing parent directories are created with mode `0700`.**
//! - **Stale sockets are cleaned up, live ones are never stolen.** If the
//!   path holds a socket that accepts a connection, `bind` fails with
//!   `AddrInUse`; if connecting is refused, the file is a leftover of a
//!   crashed server and is replaced. Anything that is not a socket is left
//!   alone and `bind` fails.
//! - **No leaked files, no deleted neighbours.** Dropping the listener
//!   removes the socket file only if it is still the one it bound (same
//!   device and inode), so a successor's socket survives.
//! - **Peer credentials.** Each accepted connection carries the peer's
//!   uid, gid and pid in [`PeerInfo::credentials`].
//!
//! ```
//! use busline_core::{Address, Listener, Transport};
//! use busline_unix::UnixTransport;
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let addr = Address::unix(dir.path().join("app.sock"));
//! let transport = UnixTransport::new();
//!
//! let mut listener = transport.bind(&addr).await?;
//! let mut client = transport.connect(&listener.local_addr()).await?;
//! let (mut server, peer) = listener.accept().await?;
//!
//! client.write_all(b"ping").await?;
//! let mut buf = [0; 4];
//! server.read_exact(&mut buf).await?;
//! assert_eq!(&buf, b"ping");
//! assert!(peer.credentials.is_some()); // the OS says who connected
//! # Ok(())
//! # }
//! ```
//!
//! [`PeerInfo::credentials`]: busline_core::PeerInfo::credentials
#![cfg(unix)]
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod bind;
mod errors;
mod listener;

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use busline_core::{expect_scheme, Address, Endpoint, Result, Transport};
use tokio::net::UnixStream;

pub use listener::UnixListener;

/// The `unix` transport. See the [crate docs](crate) for the socket-file
/// rules it enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnixTransport {
    mode: u32,
}

impl UnixTransport {
    /// The socket file mode used unless [`UnixTransport::mode`] says
    /// otherwise: only the owner may connect, because a local socket is
    /// usually a private control channel.
    pub const DEFAULT_MODE: u32 = 0o600;

    /// A transport that binds socket files with mode `0600`.
    pub fn new() -> Self {
        UnixTransport {
            mode: Self::DEFAULT_MODE,
        }
    }

    /// Set the permission bits of bound socket files, e.g. `0o660` to let
    /// the owner's group connect. Only the `0o777` bits are used.
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode & 0o777;
        self
    }
}

impl Default for UnixTransport {
    fn default() -> Self {
        Self::new()
    }
}

/// The socket path of a `unix://` address, or [`busline_core::Error::Address`].
fn socket_path(addr: &Address) -> Result<&Path> {
    expect_scheme(addr, "unix")?;
    match addr.endpoint() {
        Endpoint::Unix(path) => Ok(path),
        _ => unreachable!("scheme checked above"),
    }
}

/// `addr`'s options carried over to an address for `path`, so a listener
/// bound with `?codec=cbor` advertises the same options.
fn address_with_params(path: PathBuf, addr: &Address) -> Address {
    addr.params()
        .fold(Address::unix(path), |a, (k, v)| a.with_param(k, v))
}

#[async_trait]
impl Transport for UnixTransport {
    type Io = UnixStream;
    type Listener = UnixListener;

    fn scheme(&self) -> &'static str {
        "unix"
    }

    async fn connect(&self, addr: &Address) -> Result<UnixStream> {
        let path = socket_path(addr)?;
        UnixStream::connect(path)
            .await
            .map_err(|e| busline_core::Error::transport(errors::connect(path, e)))
    }

    async fn bind(&self, addr: &Address) -> Result<UnixListener> {
        let path = socket_path(addr)?;
        let (listener, id) = bind::bind(path, self.mode)
            .await
            .map_err(busline_core::Error::transport)?;
        Ok(UnixListener::new(
            listener,
            address_with_params(path.to_path_buf(), addr),
            path.to_path_buf(),
            id,
        ))
    }
}

#[cfg(test)]
mod tests;
