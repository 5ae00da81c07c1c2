//! The bound side: TCP accepts, with TLS handshakes off the accept path.

use std::time::Duration;

use async_trait::async_trait;
use busline_core::{Address, Listener, PeerInfo, Result};
use busline_tcp::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::TlsStream;

/// Handshakes in progress at once; past it, new connections wait in the
/// OS backlog.
const MAX_HANDSHAKES: usize = 256;

/// A bound TLS socket, returned by [`TlsTransport::bind`]. Dropping it
/// frees the port at once and abandons handshakes in progress.
///
/// [`TlsTransport::bind`]: busline_core::Transport::bind
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    timeout: Duration,
    /// Each runs on its own task, so a silent client delays nobody.
    handshakes: JoinSet<Option<(TlsStream, PeerInfo)>>,
    addr: Address,
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener")
            .field("addr", &self.addr)
            .field("handshakes", &self.handshakes.len())
            .finish_non_exhaustive()
    }
}

impl TlsListener {
    pub(crate) fn new(
        tcp: TcpListener,
        acceptor: TlsAcceptor,
        requested: &Address,
        timeout: Duration,
    ) -> Self {
        let local = tcp.socket_addr();
        let addr = requested.params().fold(
            Address::tls(local.ip().to_string(), local.port()),
            |a, (k, v)| a.with_param(k, v),
        );
        TlsListener {
            tcp,
            acceptor,
            timeout,
            handshakes: JoinSet::new(),
            addr,
        }
    }
}

async fn handshake(
    acceptor: TlsAcceptor,
    stream: tokio::net::TcpStream,
    peer: PeerInfo,
    timeout: Duration,
) -> Option<(TlsStream, PeerInfo)> {
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Some((TlsStream::Server(stream), peer)),
        // One client failing its handshake is its problem, not the
        // listener's.
        Ok(Err(e)) => {
            tracing::info!(peer = %peer.description, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::info!(peer = %peer.description, "TLS handshake timed out");
            None
        }
    }
}

#[async_trait]
impl Listener for TlsListener {
    type Io = TlsStream;

    /// Cancel-safe: handshakes already under way carry on.
    async fn accept(&mut self) -> Result<(TlsStream, PeerInfo)> {
        loop {
            let room = self.handshakes.len() < MAX_HANDSHAKES;
            tokio::select! {
                accepted = self.tcp.accept(), if room => {
                    let (stream, peer) = accepted?;
                    let work = handshake(self.acceptor.clone(), stream, peer, self.timeout);
                    self.handshakes.spawn(work);
                }
                Some(done) = self.handshakes.join_next() => {
                    if let Ok(Some(accepted)) = done {
                        return Ok(accepted);
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> Address {
        self.addr.clone()
    }
}
