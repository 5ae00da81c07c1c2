//! One shared-memory connection as an async byte stream.

use std::{
    future::Future,
    io,
    os::fd::OwnedFd,
    pin::Pin,
    task::{ready, Context, Poll},
    time::{Duration, Instant},
};

use busline_core::Spin;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::{
    region::RingBytes,
    ring::{Consumer, Corrupt, Producer},
    wake::{DeathWatch, Notifier, Waiter, Woken},
};

/// What the handshake hands over to make a stream.
pub(crate) struct Ends {
    /// This side's writing end, and the ring it reads.
    pub(crate) tx: Producer,
    pub(crate) rx: Consumer,
    /// Wake-up sockets this side sleeps on: data to read, room to write.
    pub(crate) data: OwnedFd,
    pub(crate) room: OwnedFd,
    /// The peer's wake-up sockets.
    pub(crate) peer_data: OwnedFd,
    pub(crate) peer_room: OwnedFd,
    /// The rendezvous socket, kept open as the liveness signal.
    pub(crate) socket: OwnedFd,
    pub(crate) spin: Spin,
}

/// A connection over shared memory: two rings in one memory region, one
/// each way.
///
/// Reading and writing copy straight between your buffer and the ring,
/// with no system call while the other side is busy: a side that finds
/// nothing to do spins for a moment (see [`crate::ShmTransport::spin`])
/// before it sleeps on a wake-up socket, and the other side signals it
/// only when it sees it asleep. So an idle connection costs no CPU, and a
/// busy one pays no system call per message.
///
/// The peer's death, however it dies, ends the stream: reads return what it
/// wrote before, then `ConnectionReset` (or end of stream if it shut down
/// cleanly); writes fail with `BrokenPipe`.
#[derive(Debug)]
pub struct ShmStream {
    tx: Producer,
    rx: Consumer,
    /// Waiting for data to read, and for room to write.
    reading: Wait,
    writing: Wait,
    peer_data: Notifier,
    peer_room: Notifier,
    shut: bool,
}

fn corrupt(e: Corrupt) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the peer corrupted the shared memory: {}", e.0),
    )
}

impl ShmStream {
    pub(crate) fn new(ends: Ends) -> io::Result<ShmStream> {
        let watch = DeathWatch::new(ends.socket)?;
        Ok(ShmStream {
            writing: Wait::new(Waiter::new(ends.room)?, watch.try_clone()?, ends.spin),
            reading: Wait::new(Waiter::new(ends.data)?, watch, ends.spin),
            tx: ends.tx,
            rx: ends.rx,
            peer_data: Notifier::new(ends.peer_data),
            peer_room: Notifier::new(ends.peer_room),
            shut: false,
        })
    }

    fn close_writing(&mut self) {
        if !self.shut {
            self.shut = true;
            self.tx.close();
            // The reader may be asleep, or about to be: always wake it.
            self.peer_data.signal();
        }
    }
}

/// One direction's waiting: since when it has found nothing to do, how
/// long it spins this time, whether its "waiting" flag is up in the ring,
/// and what it sleeps on.
#[derive(Debug)]
struct Wait {
    idle: Option<Instant>,
    spin: Duration,
    bounds: Spin,
    sleeping: bool,
    waiter: Waiter,
    watch: DeathWatch,
}

/// What a direction that found nothing to do does next.
enum Idle {
    /// Look at the ring again now.
    Again,
    /// The peer is gone.
    Gone,
}

impl Wait {
    fn new(waiter: Waiter, watch: DeathWatch, bounds: Spin) -> Wait {
        Wait {
            idle: None,
            spin: bounds.least(),
            bounds,
            sleeping: false,
            waiter,
            watch,
        }
    }

    /// The ring had nothing for us.
    ///
    /// Busy-waiting inside a poll would hold a runtime thread, and with it
    /// the very task that is about to answer (on two cores, often the
    /// case). So look a few times at once, then yield (a deferred wake-up,
    /// as `tokio::task::yield_now`) to look again after other tasks have run, until this wait's spin (see
    /// [`Spin`]) has passed since we first found nothing; then `raise` the
    /// waiting flag (after which the caller looks once more), and only then
    /// sleep on the wake-up socket, or learn that the peer is gone.
    fn poll_idle(
        &mut self,
        cx: &mut Context<'_>,
        looks: &mut u32,
        raise: impl FnOnce(),
    ) -> Poll<io::Result<Idle>> {
        /// Looks at the ring before yielding: a few hundred nanoseconds.
        const LOOKS: u32 = 16;
        if *looks < LOOKS {
            *looks += 1;
            std::hint::spin_loop();
            return Poll::Ready(Ok(Idle::Again));
        }
        let start = *self.idle.get_or_insert_with(Instant::now);
        if start.elapsed() < self.spin {
            // Yield as `tokio::task::yield_now` does, not by waking
            // ourselves: a self-woken task is polled again at once, up to
            // a whole scheduler tick (61 polls, ~30 us here) before the
            // runtime polls its `block_on` future, where the caller of a
            // `#[tokio::main]` program waits for its answer. A deferred
            // wake-up lets the runtime poll its I/O and that future first.
            let yielded = std::pin::pin!(tokio::task::yield_now());
            let _pending = yielded.poll(cx);
            return Poll::Pending;
        }
        if !self.sleeping {
            self.sleeping = true;
            raise();
            return Poll::Ready(Ok(Idle::Again));
        }
        match self.waiter.poll(cx)? {
            Poll::Ready(Woken::Signalled) => Poll::Ready(Ok(Idle::Again)),
            Poll::Ready(Woken::Gone) => Poll::Ready(Ok(Idle::Gone)),
            Poll::Pending if self.watch.poll_gone(cx).is_ready() => Poll::Ready(Ok(Idle::Gone)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// The ring had something: stop counting idle time (and fit the next
    /// spin to this wait), and `lower` the waiting flag if it is up, so the
    /// peer need not signal every time.
    fn busy(&mut self, lower: impl FnOnce()) {
        if let Some(start) = self.idle.take() {
            self.spin = self.bounds.after(start.elapsed());
        }
        if self.sleeping {
            self.sleeping = false;
            lower();
        }
    }
}

impl ShmStream {
    /// Ready with `true` once at least `min` bytes can be read, `false`
    /// at the end of the stream; an error if it ends with fewer than `min`
    /// (but some) left, or the peer dies.
    fn poll_readable(&mut self, cx: &mut Context<'_>, min: usize) -> Poll<io::Result<bool>> {
        let result = self.poll_readable_inner(cx, min);
        if result.is_ready() {
            self.reading.busy(|| self.rx.set_waiting(false));
        }
        result
    }

    fn poll_readable_inner(&mut self, cx: &mut Context<'_>, min: usize) -> Poll<io::Result<bool>> {
        let mut looks = 0;
        loop {
            if self.rx.available().map_err(corrupt)? >= min {
                return Poll::Ready(Ok(true));
            }
            if self.rx.closed() {
                // The last bytes were published before the flag.
                return Poll::Ready(match self.rx.available().map_err(corrupt)? {
                    0 => Ok(false),
                    n if n >= min => Ok(true),
                    n => Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the stream ended with {n} bytes, fewer than the {min} awaited"),
                    )),
                });
            }
            let rx = &self.rx;
            match ready!(self
                .reading
                .poll_idle(cx, &mut looks, || rx.set_waiting(true)))?
            {
                Idle::Again => {}
                // What it wrote before it went is still ours to read.
                Idle::Gone if rx.available().map_err(corrupt)? >= min || rx.closed() => {}
                Idle::Gone => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "the peer process exited without closing the shared-memory connection",
                    )))
                }
            }
        }
    }

    fn poll_write_inner(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let mut looks = 0;
        loop {
            let n = self.tx.write(buf).map_err(corrupt)?;
            if n > 0 {
                if self.tx.consumer_waiting() {
                    self.peer_data.signal();
                }
                return Poll::Ready(Ok(n));
            }
            let tx = &self.tx;
            match ready!(self
                .writing
                .poll_idle(cx, &mut looks, || tx.set_waiting(true)))?
            {
                Idle::Again => {}
                Idle::Gone => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the peer closed the shared-memory connection",
                    )))
                }
            }
        }
    }

    /// After consuming: wake a writer waiting for room.
    fn consumed(&self) {
        if self.rx.producer_waiting() {
            self.peer_room.signal();
        }
    }

    /// Receive without copying: wait until at least `min` bytes can be
    /// read (1 if `min` is 0), lend up to `max` of them, in place in the
    /// ring, to `f`, and consume as many as `f` says it used (the rest stay
    /// for the next read). At the end of the stream `f` gets an empty view;
    /// a stream that ends with fewer than `min` bytes left is an
    /// `UnexpectedEof` error, and a `min` larger than the ring an
    /// `InvalidInput` one (it could never be met).
    ///
    /// The view ([`RingBytes`]) reads the shared memory itself: parse a
    /// header, look at a length, copy out just the part you keep. Bytes the
    /// writer published cannot change while lent, as long as the writer
    /// follows the protocol; a hostile writer could still scribble on
    /// them, which is why the view hands out copies and a plain `&[u8]`
    /// only through the `unsafe` [`RingBytes::as_slices`].
    ///
    /// ```no_run
    /// # async fn demo(stream: &mut busline_shm::ShmStream) -> std::io::Result<()> {
    /// // A 4-byte length prefix, then that many bytes.
    /// let len = stream
    ///     .read_in_place(4, 4, |bytes| {
    ///         let mut len = [0u8; 4];
    ///         bytes.copy_to_slice(&mut len);
    ///         (4, u32::from_le_bytes(len))
    ///     })
    ///     .await?;
    /// # let _ = len; Ok(()) }
    /// ```
    pub async fn read_in_place<R>(
        &mut self,
        min: usize,
        max: usize,
        f: impl FnOnce(RingBytes<'_>) -> (usize, R),
    ) -> io::Result<R> {
        let min = min.max(1);
        if min > self.rx.capacity() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "cannot wait for {min} bytes in a {} byte ring; read them in parts",
                    self.rx.capacity()
                ),
            ));
        }
        std::future::poll_fn(|cx| self.poll_readable(cx, min)).await?;
        let result = self.rx.lend(max, f).map_err(corrupt)?;
        self.consumed();
        Ok(result)
    }
}

impl AsyncRead for ShmStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if !std::task::ready!(this.poll_readable(cx, 1))? {
            return Poll::Ready(Ok(()));
        }
        this.rx.read(buf).map_err(corrupt)?;
        this.consumed();
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ShmStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.shut {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown",
            )));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let result = this.poll_write_inner(cx, buf);
        if result.is_ready() {
            this.writing.busy(|| this.tx.set_waiting(false));
        }
        result
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Bytes are visible to the reader as soon as they are written.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().close_writing();
        Poll::Ready(Ok(()))
    }
}

impl Drop for ShmStream {
    fn drop(&mut self) {
        // Reads of what is left end cleanly; closing the socket (with the
        // watches) tells a writer waiting for room that nobody will read.
        self.close_writing();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::SeqCst;

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::UnixStream,
    };

    use super::*;
    use crate::{rendezvous, ring::words_of};

    async fn pair() -> (ShmStream, ShmStream) {
        let (a, b) = UnixStream::pair().unwrap();
        let (client, server) = tokio::join!(
            rendezvous::client(a, 4096, Spin::NONE),
            rendezvous::server(b, Spin::NONE)
        );
        (client.unwrap(), server.unwrap())
    }

    #[tokio::test]
    async fn scribbled_positions_are_invalid_data_not_a_crash() {
        // The peer's write position jumps beyond the ring: reading fails.
        let (client, mut server) = pair().await;
        let (head, _) = words_of(&server.rx);
        head.store(1 << 40, SeqCst);
        let err = server.read(&mut [0u8; 64]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        drop(client);

        // The peer's read position runs ahead of what was written: writing
        // fails.
        let (client, mut server) = pair().await;
        let (_, tail) = words_of(&client.rx);
        tail.store(12345, SeqCst);
        let err = server.write(b"hello").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }

    #[tokio::test]
    async fn a_clean_shutdown_is_end_of_stream_and_a_drop_too() {
        let (mut client, mut server) = pair().await;
        client.write_all(b"last words").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last words");
        assert_eq!(
            client.write(b"more").await.unwrap_err().kind(),
            io::ErrorKind::BrokenPipe
        );

        let (mut client, mut server) = pair().await;
        server.write_all(b"bye").await.unwrap();
        drop(server);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"bye");
    }
}
