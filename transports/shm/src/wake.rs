//! Sleeping and waking across processes: a socket pair per direction of
//! wake-up ("there is data", "there is room"), and the rendezvous socket for
//! "the peer is gone".
//!
//! Wake-ups go over sockets, not eventfds, because the peer shares the open
//! file description of whatever it is sent, and with it the `O_NONBLOCK`
//! flag: it could make a blocking eventfd of ours and stall a runtime
//! thread in `read`. `send` and `recv` with `MSG_DONTWAIT` never block,
//! whatever the peer does to the flags.

use std::{
    io,
    os::fd::{AsFd, OwnedFd},
    task::{Context, Poll},
};

use rustix::net::{RecvFlags, SendFlags};
use tokio::io::{unix::AsyncFd, Interest};

use crate::region::async_fd;

/// A pair of connected sockets: this process waits on the first, and hands
/// the second to the peer to wake it with.
pub(crate) fn new_wake_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::CLOEXEC | rustix::net::SocketFlags::NONBLOCK,
        None,
    )?)
}

/// Check that `fd`, received from the peer, is a socket, so that waking the
/// peer through it is a `send` that cannot block or write elsewhere.
pub(crate) fn check_wake_fd(fd: &OwnedFd) -> io::Result<()> {
    let stat = rustix::fs::fstat(fd)?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Socket {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the peer sent something else than a socket to wake it with",
        ));
    }
    Ok(())
}

/// What a wake-up socket had to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Woken {
    /// The peer signalled.
    Signalled,
    /// The peer closed its end: it is gone.
    Gone,
}

/// Receive whatever is waiting on `fd` without blocking: `None` if there
/// was nothing.
fn drain(fd: impl AsFd) -> io::Result<Option<Woken>> {
    let mut sink = [0u8; 64];
    let mut any = false;
    loop {
        match rustix::net::recv(fd.as_fd(), &mut sink, RecvFlags::DONTWAIT) {
            Ok((0, _)) => return Ok(Some(Woken::Gone)),
            Ok((n, _)) if n < sink.len() => return Ok(Some(Woken::Signalled)),
            Ok(_) => any = true,
            Err(rustix::io::Errno::AGAIN) => return Ok(any.then_some(Woken::Signalled)),
            Err(e) => return Err(e.into()),
        }
    }
}

/// The socket this process sleeps on.
#[derive(Debug)]
pub(crate) struct Waiter(AsyncFd<OwnedFd>);

impl Waiter {
    pub(crate) fn new(fd: OwnedFd) -> io::Result<Waiter> {
        Ok(Waiter(async_fd(fd, Interest::READABLE)?))
    }

    /// Ready once the peer has signalled since the last time, or is gone.
    pub(crate) fn poll(&self, cx: &mut Context<'_>) -> Poll<io::Result<Woken>> {
        loop {
            let mut guard = match self.0.poll_read_ready(cx) {
                Poll::Ready(ready) => ready?,
                Poll::Pending => return Poll::Pending,
            };
            if let Some(woken) = drain(guard.get_inner())? {
                return Poll::Ready(Ok(woken));
            }
            guard.clear_ready();
        }
    }
}

/// The peer's socket, signalled to wake it.
#[derive(Debug)]
pub(crate) struct Notifier(OwnedFd);

impl Notifier {
    pub(crate) fn new(fd: OwnedFd) -> Notifier {
        Notifier(fd)
    }

    /// Wake the peer. If its socket buffer is full, wake-ups are already
    /// waiting for it, so a failure needs no handling.
    pub(crate) fn signal(&self) {
        let _ = rustix::net::send(&self.0, &[1], SendFlags::DONTWAIT | SendFlags::NOSIGNAL);
    }
}
/// Watches the rendezvous socket, which carries nothing after the
/// handshake: readable means the peer closed it or died.
#[derive(Debug)]
pub(crate) struct DeathWatch(AsyncFd<OwnedFd>);

impl DeathWatch {
    pub(crate) fn new(socket: OwnedFd) -> io::Result<DeathWatch> {
        Ok(DeathWatch(async_fd(socket, Interest::READABLE)?))
    }

    /// A second watch on the same socket, for the other direction's waits.
    pub(crate) fn try_clone(&self) -> io::Result<DeathWatch> {
        DeathWatch::new(self.0.get_ref().try_clone()?)
    }

    /// Ready once the peer is gone.
    pub(crate) fn poll_gone(&self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let mut guard = match self.0.poll_read_ready(cx) {
                Poll::Ready(Ok(guard)) => guard,
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            };
            let mut byte = [0u8; 1];
            match rustix::net::recv(
                guard.get_inner(),
                &mut byte,
                rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT,
            ) {
                Err(rustix::io::Errno::AGAIN) => guard.clear_ready(),
                // End of stream, an error, or bytes nobody should send: in
                // every case the peer is no longer one to wait for.
                _ => return Poll::Ready(()),
            }
        }
    }
}
