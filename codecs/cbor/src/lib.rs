//! CBOR framing for busline: a 4-byte big-endian length, then one CBOR
//! (RFC 8949) encoding of the [`Message`].
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

use busline_core::{Codec, Encoding, Error, Message, DEFAULT_MAX_FRAME_SIZE};
use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

const HEADER: usize = 4;
/// Strings and byte strings up to this size decode without an allocation.
const SCRATCH: usize = 4096;

/// The CBOR codec. See the [crate docs](crate).
#[derive(Debug, Clone)]
pub struct CborCodec {
    max_frame_size: usize,
    /// Reused across frames: ciborium would otherwise zero a fresh 4 KiB
    /// buffer for every message decoded.
    scratch: Vec<u8>,
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
            scratch: vec![0; SCRATCH],
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
        // Serialize straight into the output after a placeholder header,
        // then patch the length in: one copy, and nothing left behind on error.
        let start = dst.len();
        dst.put_u32(0);
        let written = ciborium::into_writer(&msg, dst.writer());
        let len = dst.len() - start - HEADER;
        let result = match written {
            Err(e) => Err(Error::Serialization(format!("CBOR encode: {e}"))),
            Ok(()) if len > self.max_frame_size => Err(Error::FrameTooLarge {
                size: len,
                limit: self.max_frame_size,
            }),
            Ok(()) => {
                dst[start..start + HEADER].copy_from_slice(&(len as u32).to_be_bytes());
                return Ok(());
            }
        };
        dst.truncate(start);
        result
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
        let frame = src.split_to(size);
        let mut rest = &frame[..];
        let msg: Message = ciborium::de::from_reader_with_buffer(&mut rest, &mut self.scratch)
            .map_err(|e| Error::Serialization(format!("malformed CBOR frame: {e}")))?;
        if !rest.is_empty() {
            return Err(Error::Protocol(format!(
                "{} unexpected bytes after the CBOR message in one frame",
                rest.len()
            )));
        }
        Ok(Some(msg))
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

    fn payload_encoding(&self) -> Encoding {
        Encoding::Cbor
    }

    fn max_frame_size(&self) -> usize {
        self.max_frame_size
    }
}
