//! The framing layer: [`Message`] ⇄ bytes.
//!
//! A codec is a tokio-util [`Encoder`] + [`Decoder`] pair, so it plugs into
//! `tokio_util::codec::Framed` and every tool built on it.

use tokio_util::codec::{Decoder, Encoder};

use crate::{Encoding, Error, Message};

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
}
