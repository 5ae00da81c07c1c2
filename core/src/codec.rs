//! The framing layer: [`Message`] ⇄ bytes.
//!
//! A codec is a tokio-util [`Encoder`] + [`Decoder`] pair, so it plugs into
//! `tokio_util::codec::Framed` and every tool built on it.

use bytes::{Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::{Encoding, Error, Message, Result};

/// Default hard limit on one frame: 16 MiB.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 16 * 1024 * 1024;

/// Turns [`Message`]s into frames and back.
///
/// Contract (checked for every implementation by
/// `busline_core::testing::codec_conformance`):
/// - Every `Message` but [`Message::Rejected`] (which is never sent)
///   encodes and decodes back to an equal `Message` (payload bytes
///   identical), whatever the payload encoding.
/// - Decoding works whatever way the byte stream is split: `decode` returns
///   `Ok(None)` until a whole frame is buffered, and never consumes part of
///   the next frame.
/// - A frame over [`Codec::max_frame_size`] is refused with
///   [`Error::FrameTooLarge`]: by `encode` before writing anything to the
///   buffer, by `decode` as soon as the size is known (it never buffers more
///   than the limit plus one read).
/// - Malformed bytes yield [`Error::Serialization`] or [`Error::Protocol`]
///   (or, for a protocol that answers them and reads on, as JSON-RPC does,
///   only [`Message::Rejected`]); a stream that ends inside a frame yields
///   an error from `decode_eof`. Nothing panics, whatever the input.
/// - `Clone` gives an independent codec for a new connection.
/// - [`encode_spliced`](Codec::encode_spliced) makes the same frame as
///   `encode`, once its splices are put back in place.
/// - A codec whose [`encodes_alike`](Codec::encodes_alike) is true
///   encodes a message to the same bytes whatever it encoded or decoded
///   before, and so does every clone of it.
pub trait Codec:
    Encoder<Message, Error = Error>
    + Decoder<Item = Message, Error = Error>
    + Clone
    + Send
    + Sync
    + Unpin
    + 'static
{
    /// Short name, as used in `?codec=` URL options.
    fn name(&self) -> &'static str;

    /// The payload encoding this codec's users write by default (JSON for
    /// text codecs, CBOR for binary ones). Any codec carries any encoding.
    fn payload_encoding(&self) -> Encoding;

    /// The largest frame this codec encodes or accepts, in bytes.
    fn max_frame_size(&self) -> usize;

    /// Whether connections without authentication skip busline's hello,
    /// because the codec speaks a foreign protocol whose clients and servers
    /// know nothing of it (JSON-RPC): calls then flow at once. With an
    /// authenticator the handshake always runs.
    fn hello_optional(&self) -> bool {
        false
    }

    /// Whether calls already read still run, and their answers are still
    /// written, when the peer closes its side of the connection. A busline
    /// peer that hangs up has given up on its calls, so they are cancelled;
    /// a codec for a foreign protocol whose clients send and hang up
    /// (codechu-ipc's notifications) says otherwise.
    fn calls_outlive_hangup(&self) -> bool {
        false
    }

    /// Whether every clone of this codec encodes a message to the same
    /// bytes, whatever it read or wrote before: then a frame encoded once
    /// may be written to every connection that speaks it (a broker encodes
    /// a publication once for all its subscribers). False by default, and
    /// for a codec whose output depends on its connection: one that numbers
    /// what it writes or follows the framing its peer chose.
    fn encodes_alike(&self) -> bool {
        false
    }

    /// Encode `msg` as [`Encoder::encode`] does, but leaving large byte
    /// runs (payloads) out of `dst`: each goes into `splices` with the
    /// offset in `dst` where it belongs. Writers send the parts in order,
    /// so a megabyte payload reaches the transport without being copied
    /// into the write buffer first.
    ///
    /// The default splices nothing. A codec that carries payload bytes as
    /// they are (CBOR does; JSON escapes or embeds them) overrides it for
    /// payloads of at least [`Splices::MIN_LEN`].
    fn encode_spliced(
        &mut self,
        msg: Message,
        dst: &mut BytesMut,
        splices: &mut Splices,
    ) -> Result<()> {
        let _ = splices;
        self.encode(msg, dst)
    }
}

/// Byte runs a codec left out of its output, each with the offset in the
/// output buffer where it belongs; see [`Codec::encode_spliced`].
///
/// ```
/// use busline_core::Splices;
/// use bytes::{Bytes, BytesMut};
///
/// let mut splices = Splices::default();
/// let mut dst = BytesMut::from(&b"[]"[..]);
/// splices.push(1, Bytes::from_static(b"payload"));
/// assert_eq!(splices.assemble(dst.split()), b"[payload]");
/// ```
#[derive(Debug, Default)]
pub struct Splices {
    runs: Vec<(usize, Bytes)>,
}

impl Splices {
    /// Runs shorter than this are copied: splitting the write buffer around
    /// them costs more than the copy saves.
    pub const MIN_LEN: usize = 16 * 1024;

    /// Put `bytes` at offset `at` of the output buffer, after the runs
    /// pushed before (offsets never decrease).
    pub fn push(&mut self, at: usize, bytes: Bytes) {
        debug_assert!(self.runs.last().map_or(true, |(last, _)| *last <= at));
        self.runs.push((at, bytes));
    }

    /// Bytes in the runs after offset `from`, which a frame that starts
    /// at `from` carries besides what it wrote. (A run exactly at `from`
    /// ends the frame before.)
    pub fn len_after(&self, from: usize) -> usize {
        self.runs
            .iter()
            .filter(|(at, _)| *at > from)
            .map(|(_, b)| b.len())
            .sum()
    }

    /// Forget the runs after offset `from` (a frame given up).
    pub fn truncate_after(&mut self, from: usize) {
        self.runs.retain(|(at, _)| *at <= from);
    }

    /// Whether there are no runs.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Take the runs out, in order.
    pub fn drain(&mut self) -> impl Iterator<Item = (usize, Bytes)> + '_ {
        self.runs.drain(..)
    }

    /// The whole output: `dst` with every run put back in place (copying;
    /// for tests and for writers that cannot send parts).
    pub fn assemble(&mut self, dst: BytesMut) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(dst.len() + self.runs.iter().map(|(_, b)| b.len()).sum::<usize>());
        let mut written = 0;
        for (at, run) in self.drain() {
            out.extend_from_slice(&dst[written..at]);
            out.extend_from_slice(&run);
            written = at;
        }
        out.extend_from_slice(&dst[written..]);
        out
    }
}
