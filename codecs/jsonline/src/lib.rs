//! JSON-line framing for busline: one JSON object per line.
//!
//! Made to be read and typed by people (`socat - UNIX-CONNECT:/run/app.sock`)
//! and parsed by anything. Each message is one flat object whose `"type"`
//! says what it is; a JSON payload is embedded as-is, so a call looks like
//!
//! ```text
//! {"type":"hello","version":1,"scheme":"none"}
//! {"type":"request","id":1,"method":"add","payload":[2,3]}
//! {"type":"reply","id":1,"payload":5}
//! ```
//!
//! A payload that is not JSON (CBOR, binary), or JSON bytes that would not
//! fit on one line unchanged, travels as `"payload_base64"` with its
//! `"encoding"`, so payload bytes always arrive exactly as sent. Blank lines
//! and a `\r` before the newline are tolerated.
//!
//! ```
//! use busline_core::{Message, Payload};
//! use busline_jsonline::JsonLineCodec;
//! use bytes::BytesMut;
//! use tokio_util::codec::{Decoder, Encoder};
//!
//! let mut codec = JsonLineCodec::new();
//! let mut buf = BytesMut::new();
//! codec.encode(Message::Reply { id: 1, payload: Payload::json(&5)? }, &mut buf)?;
//! assert_eq!(&buf[..], b"{\"type\":\"reply\",\"id\":1,\"payload\":5}\n");
//! assert!(codec.decode(&mut buf)?.is_some());
//! # Ok::<(), busline_core::Error>(())
//! ```
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![forbid(unsafe_code)]

mod lines;
mod plain;
mod wire;

pub use plain::{PlainJsonLineCodec, DEFAULT_METHOD, MAX_HELD, MAX_HELD_BYTES};

use busline_core::{Codec, Encoding, Error, Message, DEFAULT_MAX_FRAME_SIZE};
use bytes::{BufMut, BytesMut};
use lines::Lines;
use tokio_util::codec::{Decoder, Encoder};

/// The JSON-line codec. See the [crate docs](crate).
#[derive(Debug)]
pub struct JsonLineCodec {
    lines: Lines,
}

impl JsonLineCodec {
    /// A codec with the default 16 MiB line limit.
    pub fn new() -> Self {
        Self::with_max_frame_size(DEFAULT_MAX_FRAME_SIZE)
    }

    /// A codec refusing lines over `bytes` (not counting the newline).
    pub fn with_max_frame_size(bytes: usize) -> Self {
        JsonLineCodec {
            lines: Lines::new(bytes),
        }
    }
}

impl Default for JsonLineCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl Clone for JsonLineCodec {
    /// A fresh codec with the same limit (decoder state is per connection).
    fn clone(&self) -> Self {
        Self::with_max_frame_size(self.lines.max())
    }
}

impl Encoder<Message> for JsonLineCodec {
    type Error = Error;

    fn encode(&mut self, msg: Message, dst: &mut BytesMut) -> Result<(), Error> {
        if let Message::Rejected { .. } = msg {
            return Err(Error::Protocol(
                "a rejected call is answered with an error, never sent itself".into(),
            ));
        }
        let start = dst.len();
        let written = serde_json::to_writer(dst.writer(), &wire::Out::from(&msg));
        let len = dst.len() - start;
        let result = match written {
            Err(e) => Err(Error::Serialization(format!("JSON encode: {e}"))),
            Ok(()) if len > self.lines.max() => Err(Error::FrameTooLarge {
                size: len,
                limit: self.lines.max(),
            }),
            Ok(()) => {
                dst.put_u8(b'\n');
                return Ok(());
            }
        };
        dst.truncate(start);
        result
    }
}

impl Decoder for JsonLineCodec {
    type Item = Message;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, Error> {
        self.lines
            .next(src)?
            .map(|line| wire::parse(&line))
            .transpose()
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Message>, Error> {
        // A last line without its newline is an incomplete frame, not a message:
        // the sender died mid-write, and acting on half a line would be wrong.
        match self.decode(src)? {
            Some(msg) => Ok(Some(msg)),
            None => lines::end_of_stream(src).map(|()| None),
        }
    }
}

impl Codec for JsonLineCodec {
    fn name(&self) -> &'static str {
        "jsonline"
    }

    /// A frame depends on the message alone.
    fn encodes_alike(&self) -> bool {
        true
    }

    fn payload_encoding(&self) -> Encoding {
        Encoding::Json
    }

    fn max_frame_size(&self) -> usize {
        self.lines.max()
    }
}
