//! Accepting shared-memory connections: Unix-socket rendezvous, with each
//! handshake on its own task so a silent client delays nobody.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use busline_core::{Address, Listener, PeerInfo, Result};
use busline_unix::UnixListener;
use tokio::sync::{mpsc, Semaphore};

use crate::{rendezvous, ShmStream};

/// Handshakes allowed to run at once; more clients wait in the socket's
/// backlog.
const HANDSHAKES: usize = 64;
/// Connections ready but not yet taken by `accept`.
const READY: usize = 128;

/// Listener for `shm://name`; dropping it removes its socket.
#[derive(Debug)]
pub struct ShmListener {
    unix: UnixListener,
    addr: Address,
    spin: Duration,
    timeout: Duration,
    handshakes: Arc<Semaphore>,
    done: mpsc::Sender<(ShmStream, PeerInfo)>,
    ready: mpsc::Receiver<(ShmStream, PeerInfo)>,
}

impl ShmListener {
    pub(crate) fn new(
        unix: UnixListener,
        addr: Address,
        spin: Duration,
        timeout: Duration,
    ) -> ShmListener {
        let (done, ready) = mpsc::channel(READY);
        ShmListener {
            unix,
            addr,
            spin,
            timeout,
            handshakes: Arc::new(Semaphore::new(HANDSHAKES)),
            done,
            ready,
        }
    }

    /// Run the handshake with a new client on its own task.
    fn shake(
        &self,
        socket: tokio::net::UnixStream,
        peer: PeerInfo,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        let (done, spin, timeout) = (self.done.clone(), self.spin, self.timeout);
        tokio::spawn(async move {
            let shaken = tokio::time::timeout(timeout, rendezvous::server(socket, spin)).await;
            drop(permit);
            match shaken {
                Ok(Ok(stream)) => {
                    let peer = PeerInfo {
                        description: format!("shm {}", peer.description),
                        credentials: peer.credentials,
                    };
                    let _ = done.send((stream, peer)).await;
                }
                // A failed handshake costs that client only.
                Ok(Err(e)) => tracing::debug!("shm handshake refused: {e}"),
                Err(_) => tracing::debug!("shm handshake timed out after {timeout:?}"),
            }
        });
    }
}

#[async_trait]
impl Listener for ShmListener {
    type Io = ShmStream;

    async fn accept(&mut self) -> Result<(ShmStream, PeerInfo)> {
        loop {
            // Room for one more handshake first, so a failed one frees it.
            let permit = tokio::select! {
                biased;
                Some(accepted) = self.ready.recv() => return Ok(accepted),
                permit = self.handshakes.clone().acquire_owned() => {
                    permit.expect("the semaphore is never closed")
                }
            };
            tokio::select! {
                biased;
                Some(accepted) = self.ready.recv() => return Ok(accepted),
                accepted = self.unix.accept() => {
                    let (socket, peer) = accepted?;
                    self.shake(socket, peer, permit);
                }
            }
        }
    }

    fn local_addr(&self) -> Address {
        self.addr.clone()
    }
}
