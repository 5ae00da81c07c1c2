//! CBOR framing for busline: a 4-byte big-endian length, then one CBOR
//! (RFC 8949) item holding the [`Message`] (its layout is in [`envelope`]).
//!
//! Binary and compact: payload bytes travel as CBOR byte strings, with no
//! escaping and no base64, so this is the codec for speed. The length comes
//! first, so an oversized frame is refused from its header alone, before any
//! of it is buffered.
//!
//! ```
//! use busline_cbor::CborCodec;
//! use busline_core::{Message, Payload};
//! use bytes::BytesMut;
//! use tokio_util::codec::{Decoder, Encoder};
//!
//! let mut codec = CborCodec::new();
//! let msg = Message::Reply { id: 7, payload: Payload::cbor(&"hi")? };
//! let mut buf = BytesMut::new();
//! codec.encode(msg.clone(), &mut buf)?;
//! assert_eq!(codec.decode(&mut buf)?, Some(msg));
//! # Ok::<(), busline_core::Error>(())
//! ```
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![forbid(unsafe_code)]

use busline_core::{Codec, Encoding, Error, Message, Splices, DEFAULT_MAX_FRAME_SIZE};
use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

pub mod envelope;

const HEADER: usize = 4;

/// The CBOR codec. See the [crate docs](crate).
#[derive(Debug, Clone)]
pub struct CborCodec {
    max_frame_size: usize,
}

impl CborCodec {
    /// A codec with the default 16 MiB frame limit.
    pub fn new() -> Self {
        Self::with_max_frame_size(DEFAULT_MAX_FRAME_SIZE)
    }

    /// A codec refusing frames over `bytes` (at most `u32::MAX`).
    pub fn with_max_frame_size(bytes: usize) -> Self {
        CborCodec {
            max_frame_size: bytes.min(u32::MAX as usize),
        }
    }
}

impl Default for CborCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl Encoder<Message> for CborCodec {
    type Error = Error;

    fn encode(&mut self, msg: Message, dst: &mut BytesMut) -> Result<(), Error> {
        self.encode_frame(&msg, dst, None)
    }
}

impl CborCodec {
    /// Serialize straight into the output after a placeholder header, then
    /// patch the length in: one copy (none for spliced payloads), and
    /// nothing left behind on error.
    fn encode_frame(
        &self,
        msg: &Message,
        dst: &mut BytesMut,
        mut splices: Option<&mut Splices>,
    ) -> Result<(), Error> {
        let start = dst.len();
        dst.put_u32(0);
        let result = envelope::encode(msg, dst, splices.as_deref_mut()).and_then(|()| {
            let spliced = splices.as_deref().map_or(0, |s| s.len_after(start));
            let len = dst.len() - start - HEADER + spliced;
            if len > self.max_frame_size {
                return Err(Error::FrameTooLarge {
                    size: len,
                    limit: self.max_frame_size,
                });
            }
            Ok(len)
        });
        match result {
            Ok(len) => {
                dst[start..start + HEADER].copy_from_slice(&(len as u32).to_be_bytes());
                Ok(())
            }
            Err(e) => {
                dst.truncate(start);
                if let Some(splices) = splices {
                    splices.truncate_after(start);
                }
                Err(e)
            }
        }
    }
}

impl Decoder for CborCodec {
    type Item = Message;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, Error> {
        if src.len() < HEADER {
            return Ok(None);
        }
        let size = (&src[..HEADER]).get_u32() as usize;
        if size > self.max_frame_size {
            return Err(Error::FrameTooLarge {
                size,
                limit: self.max_frame_size,
            });
        }
        if src.len() < HEADER + size {
            // Size is within the limit, so reserving the rest is bounded.
            src.reserve(HEADER + size - src.len());
            return Ok(None);
        }
        src.advance(HEADER);
        envelope::decode(src.split_to(size).freeze()).map(Some)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Message>, Error> {
        match self.decode(src)? {
            Some(msg) => Ok(Some(msg)),
            None if src.is_empty() => Ok(None),
            None => Err(Error::Protocol(format!(
                "connection closed inside a frame ({} bytes of it received)",
                src.len()
            ))),
        }
    }
}

impl Codec for CborCodec {
    fn name(&self) -> &'static str {
        "cbor"
    }

    /// A frame depends on the message alone.
    fn encodes_alike(&self) -> bool {
        true
    }

    fn payload_encoding(&self) -> Encoding {
        Encoding::Cbor
    }

    fn max_frame_size(&self) -> usize {
        self.max_frame_size
    }

    fn encode_spliced(
        &mut self,
        msg: Message,
        dst: &mut BytesMut,
        splices: &mut Splices,
    ) -> Result<(), Error> {
        self.encode_frame(&msg, dst, Some(splices))
    }
}
