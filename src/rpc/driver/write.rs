//! Writing: batching every ready frame into one flush, large payloads
//! written from where they are instead of copied into the write buffer.

use std::{
    collections::VecDeque,
    io::IoSlice,
    pin::Pin,
    task::{ready, Context, Poll},
};

use busline_core::{Codec, Error, Io, Message, Result, Splices};
use bytes::{Buf, Bytes};
use futures::{Sink, Stream};

use super::{Driver, Outgoing};

/// Frames encoded with large payloads left out of the write buffer
/// ([`Codec::encode_spliced`]): what comes before the buffer's bytes, in
/// order, as shared pieces of the buffer and the payloads themselves.
#[derive(Default)]
pub(super) struct Spliced {
    splices: Splices,
    chunks: VecDeque<Bytes>,
}

/// Pieces handed to one vectored write.
const MAX_SLICES: usize = 64;

impl<I: Io, C: Codec> Driver<I, C> {
    /// The error a [`Message::Close`] already received says, if one did.
    pub(super) fn peer_close_reason(&mut self, cx: &mut Context<'_>) -> Option<Error> {
        while let Poll::Ready(Some(Ok(msg))) = Pin::new(&mut self.framed).poll_next(cx) {
            if let Message::Close { error: Some(e) } = msg {
                return Some(e.into_error());
            }
        }
        None
    }

    /// Encode and write everything queued; `Ready(Err)` means the
    /// connection is broken.
    pub(super) fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        while !self.outbox.is_empty() {
            // Spliced pieces go before the buffer, which `poll_ready` may
            // flush.
            ready!(self.poll_write_spliced(cx))?;
            ready!(Pin::new(&mut self.framed).poll_ready(cx))?;
            match self.outbox.pop_front().expect("outbox is not empty") {
                Outgoing::Message(msg) => {
                    let (kind, id) = (msg.kind(), msg.id());
                    if let Err(err) = self.encode(msg) {
                        self.unsendable(kind, id, err);
                    }
                }
                // Encoded already, and small (see `Copies`): copied.
                Outgoing::Frame(frame) => self.framed.write_buffer_mut().extend_from_slice(&frame),
            }
            self.needs_flush = true;
        }
        if self.needs_flush {
            ready!(self.poll_write_spliced(cx))?;
            ready!(Pin::new(&mut self.framed).poll_flush(cx))?;
            self.needs_flush = false;
        }
        for done in self.flushed.drain(..) {
            let _ = done.send(());
        }
        if self.notifications_unwritten > 0 {
            self.notification_room
                .add_permits(std::mem::take(&mut self.notifications_unwritten));
        }
        Poll::Ready(Ok(()))
    }

    /// Encode `msg` at the end of the write buffer; if the codec left
    /// payloads out, cut the buffer before each and queue the pieces.
    fn encode(&mut self, msg: Message) -> Result<()> {
        let mut buf = std::mem::take(self.framed.write_buffer_mut());
        let spliced = &mut self.spliced;
        let result = self
            .framed
            .codec_mut()
            .encode_spliced(msg, &mut buf, &mut spliced.splices);
        let mut cut = 0;
        for (at, payload) in spliced.splices.drain() {
            // No empty pieces: a write of nothing but empty ones would
            // read as the transport refusing bytes.
            if at > cut {
                spliced.chunks.push_back(buf.split_to(at - cut).freeze());
            }
            if !payload.is_empty() {
                spliced.chunks.push_back(payload);
            }
            cut = at;
        }
        *self.framed.write_buffer_mut() = buf;
        result
    }

    /// Write the queued spliced pieces, as many at once as the transport
    /// takes.
    fn poll_write_spliced(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let chunks = &mut self.spliced.chunks;
        while !chunks.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let n = chunks
                .iter()
                .zip(&mut slices)
                .map(|(chunk, slice)| *slice = IoSlice::new(chunk))
                .count();
            let io = Pin::new(self.framed.get_mut());
            let mut written = ready!(io.poll_write_vectored(cx, &slices[..n]))?;
            if written == 0 {
                return Poll::Ready(Err(Error::transport(std::io::Error::from(
                    std::io::ErrorKind::WriteZero,
                ))));
            }
            while written > 0 {
                let front = chunks.front_mut().expect("wrote no more than queued");
                let step = written.min(front.len());
                front.advance(step);
                written -= step;
                if front.is_empty() {
                    chunks.pop_front();
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    /// A message could not be encoded (too large, unserializable): fail just
    /// the call it belongs to, keep the connection.
    pub(super) fn unsendable(&mut self, kind: &'static str, id: Option<u64>, err: Error) {
        tracing::warn!(kind, ?id, error = %err, "message could not be sent");
        match (kind, id) {
            ("request" | "open_stream", Some(id)) => {
                if let Some(pending) = self.pending.remove(&id) {
                    pending.fail(err);
                }
            }
            ("reply" | "item", Some(id)) => {
                if kind == "item" {
                    if let Some((_, abort)) = self.streams.remove(&id) {
                        abort.abort();
                    }
                }
                self.outbox.push_front(Message::Error {
                    id,
                    error: err.to_remote(),
                });
            }
            _ => {}
        }
    }
}
