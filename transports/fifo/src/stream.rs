//! One connection: the reading end of one FIFO, the writing end of the
//! other.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::unix::pipe,
};

/// A full-duplex byte stream over two FIFOs.
#[derive(Debug)]
pub struct FifoStream {
    rx: pipe::Receiver,
    /// `None` once shut down: dropping the writing end is how the peer
    /// learns there is no more.
    tx: Option<pipe::Sender>,
}

impl FifoStream {
    pub(crate) fn new(rx: pipe::Receiver, tx: pipe::Sender) -> FifoStream {
        FifoStream { rx, tx: Some(tx) }
    }

    fn closed() -> io::Error {
        io::Error::new(io::ErrorKind::BrokenPipe, "this end was shut down")
    }
}

impl AsyncRead for FifoStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.rx).poll_read(cx, buf)
    }
}

impl AsyncWrite for FifoStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.tx {
            Some(tx) => Pin::new(tx).poll_write(cx, data),
            None => Poll::Ready(Err(Self::closed())),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.tx {
            Some(tx) => Pin::new(tx).poll_write_vectored(cx, bufs),
            None => Poll::Ready(Err(Self::closed())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.tx {
            Some(tx) => Pin::new(tx).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tx = None;
        Poll::Ready(Ok(()))
    }
}
