//! TCP transport for [busline](https://docs.rs/busline): addresses
//! `tcp://host:port`.
//!
//! - `bind` resolves the host (`localhost`, an IP literal, a name) and
//!   binds the first address that works; port `0` picks a free port, and
//!   [`Listener::local_addr`] reports the real one.
//! - Every stream, connected or accepted, has Nagle's algorithm off
//!   (`TCP_NODELAY`): busline already batches frames in one writer per
//!   connection, so delaying small writes would only add latency to calls.
//! - `connect` gives up after [`TcpTransport::connect_timeout`] (10 s by
//!   default), so an unreachable host fails instead of hanging for the
//!   OS's minutes-long timeout.
//!
//! ```
//! use busline_core::{Address, Listener, Transport};
//! use busline_tcp::TcpTransport;
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let transport = TcpTransport::new();
//! let mut listener = transport.bind(&"tcp://127.0.0.1:0".parse()?).await?;
//! let addr: Address = listener.local_addr(); // e.g. tcp://127.0.0.1:41234
//!
//! let mut client = transport.connect(&addr).await?;
//! let (mut server, peer) = listener.accept().await?;
//! client.write_all(b"ping").await?;
//! let mut buf = [0; 4];
//! server.read_exact(&mut buf).await?;
//! assert_eq!(&buf, b"ping");
//! assert!(peer.description.starts_with("tcp://127.0.0.1:"));
//! # Ok(())
//! # }
//! ```
//!
//! [`Listener::local_addr`]: busline_core::Listener::local_addr
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod errors;
mod listener;

use std::{io, time::Duration};

use async_trait::async_trait;
use busline_core::{expect_scheme, Address, Endpoint, Error, Result, Transport};
use tokio::net::{TcpListener as TokioTcpListener, TcpStream};

pub use listener::TcpListener;

/// The `tcp` transport. See the [crate docs](crate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpTransport {
    connect_timeout: Duration,
}

impl TcpTransport {
    /// How long `connect` waits by default: long enough for a slow network,
    /// short enough that a dead host is reported while someone still waits.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

    /// A transport with the default connect timeout.
    pub fn new() -> Self {
        TcpTransport {
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// Set how long `connect` may take (name resolution included) before it
    /// fails with `TimedOut`.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
}

impl Default for TcpTransport {
    fn default() -> Self {
        Self::new()
    }
}

/// Host and port of a `tcp://` address, or [`Error::Address`].
fn host_port(addr: &Address) -> Result<(&str, u16)> {
    expect_scheme(addr, "tcp")?;
    match addr.endpoint() {
        Endpoint::Tcp { host, port } => Ok((host, *port)),
        _ => unreachable!("scheme checked above"),
    }
}

#[async_trait]
impl Transport for TcpTransport {
    type Io = TcpStream;
    type Listener = TcpListener;

    fn scheme(&self) -> &'static str {
        "tcp"
    }

    async fn connect(&self, addr: &Address) -> Result<TcpStream> {
        let (host, port) = host_port(addr)?;
        let stream = match tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect((host, port)),
        )
        .await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(Error::transport(errors::connect(host, port, e))),
            Err(_) => {
                return Err(Error::transport(errors::connect_timed_out(
                    host,
                    port,
                    self.connect_timeout,
                )))
            }
        };
        stream.set_nodelay(true).map_err(|e| {
            Error::transport(errors::with_context(
                e,
                format!("cannot turn off Nagle's algorithm on tcp://{host}:{port}"),
            ))
        })?;
        Ok(stream)
    }

    async fn bind(&self, addr: &Address) -> Result<TcpListener> {
        let (host, port) = host_port(addr)?;
        let candidates: Vec<_> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| Error::transport(errors::resolve(host, e)))?
            .collect();
        let mut last = None;
        for candidate in candidates {
            match TokioTcpListener::bind(candidate).await {
                Ok(inner) => return TcpListener::new(inner, addr),
                Err(e) => last = Some(e),
            }
        }
        Err(Error::transport(match last {
            Some(e) => errors::bind(host, port, e),
            None => errors::resolve(
                host,
                io::Error::new(io::ErrorKind::NotFound, "no addresses"),
            ),
        }))
    }
}

#[cfg(test)]
mod tests;
