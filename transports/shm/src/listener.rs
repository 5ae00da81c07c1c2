//! Accepting shared-memory connections: the Unix-socket rendezvous.

use std::{
    sync::{Arc, Mutex},
    task::Poll,
    time::Duration,
};

use async_trait::async_trait;
use busline_core::{Address, Error, Listener, PeerInfo, Result};
use busline_unix::UnixListener;
use tokio::{
    sync::{mpsc, Semaphore},
    task::JoinHandle,
};

use busline_core::Spin;

use crate::{rendezvous, ShmStream};

/// Handshakes allowed to run at once; more clients wait in the socket's
/// backlog.
const HANDSHAKES: usize = 64;
/// Connections ready but not yet taken by `accept`.
const READY: usize = 128;

/// Listener for `shm://name`; dropping it removes its socket.
///
/// Handshakes run as soon as clients connect, before [`Listener::accept`]
/// is called (a client waits for the server's half of the handshake), on
/// a task of their own each, so a silent client delays nobody.
#[derive(Debug)]
pub struct ShmListener {
    /// Shared with the accepting task, which polls it; taken out and
    /// dropped by our own drop, so the socket file goes at once.
    unix: Arc<Mutex<Option<UnixListener>>>,
    addr: Address,
    ready: mpsc::Receiver<Result<(ShmStream, PeerInfo)>>,
    task: JoinHandle<()>,
}

impl ShmListener {
    pub(crate) fn new(
        unix: UnixListener,
        addr: Address,
        spin: Spin,
        timeout: Duration,
    ) -> ShmListener {
        let unix = Arc::new(Mutex::new(Some(unix)));
        let (done, ready) = mpsc::channel(READY);
        let task = tokio::spawn(accept_loop(unix.clone(), done, spin, timeout));
        ShmListener {
            unix,
            addr,
            ready,
            task,
        }
    }
}

type Accepted = Result<(ShmStream, PeerInfo)>;

async fn accept_loop(
    unix: Arc<Mutex<Option<UnixListener>>>,
    done: mpsc::Sender<Accepted>,
    spin: Spin,
    timeout: Duration,
) {
    let handshakes = Arc::new(Semaphore::new(HANDSHAKES));
    loop {
        let Ok(permit) = handshakes.clone().acquire_owned().await else {
            return;
        };
        let accepted =
            std::future::poll_fn(|cx| match unix.lock().expect("never poisoned").as_ref() {
                Some(listener) => listener.poll_accept(cx).map(Some),
                None => Poll::Ready(None),
            })
            .await;
        let (socket, peer) = match accepted {
            None => return,
            Some(Ok(accepted)) => accepted,
            Some(Err(e)) => {
                if done.send(Err(e)).await.is_err() {
                    return;
                }
                continue;
            }
        };
        let done = done.clone();
        tokio::spawn(async move {
            let shaken = tokio::time::timeout(timeout, rendezvous::server(socket, spin)).await;
            // The permit goes once the connection is handed over (or
            // refused): connections nobody has accepted yet count against
            // the limit, so a slow `accept` slows new handshakes instead of
            // piling up open connections.
            let _permit = permit;
            match shaken {
                Ok(Ok(stream)) => {
                    let peer = PeerInfo {
                        description: format!("shm {}", peer.description),
                        credentials: peer.credentials,
                    };
                    let _ = done.send(Ok((stream, peer))).await;
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
        match self.ready.recv().await {
            Some(accepted) => accepted,
            None => Err(Error::transport(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "shm listener closed",
            ))),
        }
    }

    fn local_addr(&self) -> Address {
        self.addr.clone()
    }
}

impl Drop for ShmListener {
    fn drop(&mut self) {
        // The socket file goes now, not whenever the task next runs.
        drop(self.unix.lock().expect("never poisoned").take());
        self.task.abort();
    }
}
