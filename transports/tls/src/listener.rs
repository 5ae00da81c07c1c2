//! The bound side: TCP accepts, with TLS handshakes off the accept path.

use std::time::Duration;

use async_trait::async_trait;
use busline_core::{Address, Error, Listener, PeerInfo, Result};
use busline_tcp::TcpListener;
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_rustls::TlsAcceptor;

use crate::TlsStream;

/// Connections whose handshake finished, waiting for `accept`.
const READY: usize = 64;

/// A bound TLS socket, returned by [`TlsTransport::bind`]. Dropping it
/// stops accepting and frees the port.
///
/// [`TlsTransport::bind`]: busline_core::Transport::bind
#[derive(Debug)]
pub struct TlsListener {
    ready: mpsc::Receiver<Result<(TlsStream, PeerInfo)>>,
    task: JoinHandle<()>,
    addr: Address,
}

impl TlsListener {
    pub(crate) fn start(
        mut tcp: TcpListener,
        acceptor: TlsAcceptor,
        requested: &Address,
        timeout: Duration,
    ) -> Self {
        let local = tcp.socket_addr();
        let addr = requested.params().fold(
            Address::tls(local.ip().to_string(), local.port()),
            |a, (k, v)| a.with_param(k, v),
        );
        let (tx, ready) = mpsc::channel(READY);
        let task = tokio::spawn(async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        if tx.send(Err(e)).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send(Ok((TlsStream::Server(stream), peer))).await;
                        }
                        // One client failing its handshake is its problem,
                        // not the listener's.
                        Ok(Err(e)) => {
                            tracing::info!(peer = %peer.description, error = %e, "TLS handshake failed")
                        }
                        Err(_) => {
                            tracing::info!(peer = %peer.description, "TLS handshake timed out")
                        }
                    }
                });
            }
        });
        TlsListener { ready, task, addr }
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[async_trait]
impl Listener for TlsListener {
    type Io = TlsStream;

    async fn accept(&mut self) -> Result<(TlsStream, PeerInfo)> {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            None => Err(Error::Disconnected(format!(
                "{} stopped accepting",
                self.addr
            ))),
        }
    }

    fn local_addr(&self) -> Address {
        self.addr.clone()
    }
}
