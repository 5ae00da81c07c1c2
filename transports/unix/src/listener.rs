//! The bound side: accepting connections and cleaning up the socket file.

use std::{
    path::{Path, PathBuf},
    task::{Context, Poll},
};

use async_trait::async_trait;
use busline_core::{Address, Error, Listener, PeerCredentials, PeerInfo, Result};
use tokio::net::UnixStream;

use crate::{bind::FileId, errors};

/// A bound Unix socket, returned by [`UnixTransport::bind`].
///
/// Dropping it removes the socket file, but only while the file at its path
/// is still the one it bound: if something replaced it meanwhile (a
/// successor server), that file is left alone.
///
/// [`UnixTransport::bind`]: busline_core::Transport::bind
#[derive(Debug)]
pub struct UnixListener {
    inner: tokio::net::UnixListener,
    addr: Address,
    path: PathBuf,
    /// Identity of the socket file this listener created.
    id: FileId,
}

impl UnixListener {
    pub(crate) fn new(
        inner: tokio::net::UnixListener,
        addr: Address,
        path: PathBuf,
        id: FileId,
    ) -> Self {
        UnixListener {
            inner,
            addr,
            path,
            id,
        }
    }

    /// The socket file's path, for logs and for tools that want the path
    /// rather than the URL.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accept a connection if one is waiting, else register `cx` to be
    /// woken when one is. Unlike [`Listener::accept`] it borrows the
    /// listener only for the call, so a listener shared behind a lock can
    /// be polled from a task and still be dropped (removing its socket
    /// file) at once from elsewhere.
    pub fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<Result<(UnixStream, PeerInfo)>> {
        self.inner.poll_accept(cx).map(|accepted| {
            let (stream, _) = accepted.map_err(|e| {
                let message = format!("accepting on {} failed", self.path.display());
                Error::transport(errors::with_context(e, message))
            })?;
            let peer = PeerInfo {
                description: Address::unix(&self.path).to_string(),
                credentials: credentials(&stream),
            };
            Ok((stream, peer))
        })
    }
}

/// What the OS says about the process behind `stream`, if it says anything.
fn credentials(stream: &UnixStream) -> Option<PeerCredentials> {
    match stream.peer_cred() {
        Ok(cred) => Some(PeerCredentials {
            uid: cred.uid(),
            gid: cred.gid(),
            pid: cred.pid(),
        }),
        Err(e) => {
            tracing::debug!(error = %e, "peer credentials unavailable");
            None
        }
    }
}

#[async_trait]
impl Listener for UnixListener {
    type Io = UnixStream;

    async fn accept(&mut self) -> Result<(UnixStream, PeerInfo)> {
        std::future::poll_fn(|cx| self.poll_accept(cx)).await
    }

    fn local_addr(&self) -> Address {
        self.addr.clone()
    }
}

impl Drop for UnixListener {
    fn drop(&mut self) {
        // Between this check and the removal a successor could still swap
        // the file in; the window is a few microseconds, and closing it
        // fully would need a lock file every server agrees on.
        match FileId::of(&self.path) {
            Ok(Some(id)) if id == self.id => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    tracing::warn!(path = %self.path.display(), error = %e,
                        "could not remove socket file");
                }
            }
            Ok(_) => tracing::debug!(path = %self.path.display(),
                "socket file replaced or removed by someone else; leaving it"),
            Err(e) => tracing::warn!(path = %self.path.display(), error = %e,
                "could not inspect socket file; leaving it"),
        }
    }
}
