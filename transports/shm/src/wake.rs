//! Sleeping and waking across processes: eventfds for "there is data" and
//! "there is room", and the rendezvous socket for "the peer is gone".

use std::{
    io,
    os::fd::{AsFd, OwnedFd},
    task::{Context, Poll},
};

use rustix::event::{eventfd, EventfdFlags};
use tokio::io::{unix::AsyncFd, Interest};

use crate::region::async_fd;

/// Make an eventfd for this process to sleep on.
pub(crate) fn new_eventfd() -> io::Result<OwnedFd> {
    Ok(eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?)
}

/// Check that `fd`, received from the peer, is an eventfd, so that
/// signalling it can neither block nor write into something else.
pub(crate) fn check_eventfd(fd: &OwnedFd) -> io::Result<()> {
    let link = rustix::fs::readlinkat(
        rustix::fs::CWD,
        format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(fd)),
        Vec::new(),
    )?;
    if link.as_bytes() != b"anon_inode:[eventfd]" {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the peer sent {link:?} where an eventfd belongs"),
        ));
    }
    Ok(())
}

/// An eventfd this process sleeps on.
#[derive(Debug)]
pub(crate) struct Waiter(AsyncFd<OwnedFd>);

impl Waiter {
    pub(crate) fn new(fd: OwnedFd) -> io::Result<Waiter> {
        Ok(Waiter(async_fd(fd, Interest::READABLE)?))
    }

    /// Ready once the peer has signalled since the last time; resets the
    /// count.
    pub(crate) fn poll(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut guard = match self.0.poll_read_ready(cx) {
                Poll::Ready(ready) => ready?,
                Poll::Pending => return Poll::Pending,
            };
            let mut count = [0u8; 8];
            match rustix::io::read(guard.get_inner().as_fd(), &mut count) {
                Ok(_) => return Poll::Ready(Ok(())),
                Err(rustix::io::Errno::AGAIN) => guard.clear_ready(),
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
    }
}

/// The peer's eventfd, signalled to wake it.
#[derive(Debug)]
pub(crate) struct Notifier(OwnedFd);

impl Notifier {
    pub(crate) fn new(fd: OwnedFd) -> Notifier {
        Notifier(fd)
    }

    /// Wake the peer. A full counter (2^64 - 2 signals unread) already
    /// wakes it, so a failure needs no handling.
    pub(crate) fn signal(&self) {
        let _ = rustix::io::write(&self.0, &1u64.to_ne_bytes());
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
