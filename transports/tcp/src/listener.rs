//! The bound side: accepting connections.

use std::net::SocketAddr;

use async_trait::async_trait;
use busline_core::{Address, Error, Listener, PeerInfo, Result};
use tokio::net::TcpStream;

use crate::errors;

/// A bound TCP socket, returned by [`TcpTransport::bind`]. Dropping it
/// closes the socket and frees the port.
///
/// [`TcpTransport::bind`]: busline_core::Transport::bind
#[derive(Debug)]
pub struct TcpListener {
    inner: tokio::net::TcpListener,
    local: SocketAddr,
    addr: Address,
}

/// `tcp://ip:port` for `sock`, with `params` carried over.
fn address(sock: SocketAddr, params: &Address) -> Address {
    params.params().fold(
        Address::tcp(sock.ip().to_string(), sock.port()),
        |a, (k, v)| a.with_param(k, v),
    )
}

impl TcpListener {
    /// Wrap a bound socket; `requested` supplies the options (`?codec=...`)
    /// that [`Listener::local_addr`] keeps advertising.
    pub(crate) fn new(inner: tokio::net::TcpListener, requested: &Address) -> Result<Self> {
        let local = inner.local_addr().map_err(|e| {
            Error::transport(errors::with_context(
                e,
                format!("cannot read the bound address of {requested}"),
            ))
        })?;
        Ok(TcpListener {
            inner,
            local,
            addr: address(local, requested),
        })
    }

    /// The bound socket address with the real port, for code that talks
    /// to the OS or other libraries rather than busline.
    pub fn socket_addr(&self) -> SocketAddr {
        self.local
    }
}

#[async_trait]
impl Listener for TcpListener {
    type Io = TcpStream;

    async fn accept(&mut self) -> Result<(TcpStream, PeerInfo)> {
        let (stream, peer) = self.inner.accept().await.map_err(|e| {
            Error::transport(errors::with_context(
                e,
                format!("accepting on {} failed", self.addr),
            ))
        })?;
        // One peer that reset before we got here must not look like a
        // listener failure, so a failed setsockopt is only logged.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(peer = %peer, error = %e, "cannot turn off Nagle's algorithm");
        }
        let description = Address::tcp(peer.ip().to_string(), peer.port()).to_string();
        Ok((stream, PeerInfo::described(description)))
    }

    fn local_addr(&self) -> Address {
        self.addr.clone()
    }
}
