//! Shared-memory transport for busline: `shm://name`.
//!
//! Each connection is one region of shared memory holding two lock-free
//! single-producer single-consumer byte rings, one each way. Bytes move by
//! one copy into the ring and one copy out, with no system call while
//! both sides are busy; an idle side sleeps on a socket. Frames of any
//! size stream through the rings, so nothing is refused for being larger
//! than a ring.
//!
//! # Nothing leaks
//!
//! There are no named shared-memory objects. A client connects to a Unix
//! socket (`<dir>/<name>.shm`, private to the user), makes an anonymous
//! memfd and two wake-up sockets, and passes them over the socket
//! (`SCM_RIGHTS`); the server passes back its own two wake-up sockets. The kernel
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

#[cfg(not(busline_loom))]
mod listener;
#[cfg(busline_loom)]
#[path = "loom_region.rs"]
mod region;
#[cfg(not(busline_loom))]
#[allow(unsafe_code)]
mod region;
#[cfg(not(busline_loom))]
mod rendezvous;
mod ring;
#[cfg(not(busline_loom))]
mod stream;
#[cfg(not(busline_loom))]
mod transport;
#[cfg(not(busline_loom))]
mod wake;

// Under loom (`--cfg busline_loom`) only the rings and a model of their memory
// are built, for the model checker.
#[cfg(not(busline_loom))]
pub use crate::{
    listener::ShmListener, region::RingBytes, stream::ShmStream, transport::ShmTransport,
};
