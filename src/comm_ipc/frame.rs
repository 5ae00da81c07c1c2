//! comm-ipc's framing: a 4-byte big-endian length, then one msgpack map
//! with string keys (its messages are Python dicts).

use busline_core::{Error, Payload, Result};
use bytes::{BufMut, BytesMut};
use rmpv::Value;
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

/// Nesting deeper than this is refused: comm-ipc's own messages nest a
/// few levels, and decoding recurses.
const MAX_DEPTH: usize = 128;

/// One message: the map's entries, as they came or will go.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Msg(pub(super) Vec<(Value, Value)>);

impl Msg {
    /// A message of these entries.
    pub(super) fn new<const N: usize>(entries: [(&str, Value); N]) -> Msg {
        Msg(entries
            .into_iter()
            .map(|(k, v)| (Value::from(k), v))
            .collect())
    }

    /// `{"type": "error", "message": message}`, comm-ipc's report of
    /// anything that is not an answer to a call.
    pub(super) fn error(message: impl Into<String>) -> Msg {
        Msg::new([
            ("type", Value::from("error")),
            ("message", Value::from(message.into())),
        ])
    }

    /// Add or replace an entry.
    pub(super) fn set(&mut self, key: &str, value: Value) {
        match self.0.iter_mut().find(|(k, _)| k.as_str() == Some(key)) {
            Some((_, v)) => *v = value,
            None => self.0.push((Value::from(key), value)),
        }
    }

    /// The value at `key`, if present.
    pub(super) fn get(&self, key: &str) -> Option<&Value> {
        self.0
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    /// The string at `key`, if there is one.
    pub(super) fn str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    /// The string at `key`, or a protocol error naming the message.
    pub(super) fn required(&self, key: &str) -> Result<&str> {
        self.str(key).ok_or_else(|| {
            Error::Protocol(format!(
                "a {} message needs a string {key:?}",
                self.kind().unwrap_or("untyped")
            ))
        })
    }

    /// Whether `key` holds `true` (Python's truthiness of a missing key is
    /// `False`).
    pub(super) fn flag(&self, key: &str) -> bool {
        self.get(key).and_then(Value::as_bool).unwrap_or(false)
    }

    /// The message's `"type"`.
    pub(super) fn kind(&self) -> Option<&str> {
        self.str("type")
    }

    /// The message as one map value (to nest in another message).
    pub(super) fn into_value(self) -> Value {
        Value::Map(self.0)
    }

    /// The value at `key`, or `nil`.
    pub(super) fn value(&self, key: &str) -> Value {
        self.get(key).cloned().unwrap_or(Value::Nil)
    }
}

/// A value as a busline payload (CBOR, which holds everything msgpack
/// does), for busline members to decode as they like.
pub(super) fn payload_of(value: &Value) -> Result<Payload> {
    Payload::encode(busline_core::Encoding::Cbor, value)
}

/// A busline payload (JSON, CBOR, …) as a value.
pub(super) fn value_of(payload: &Payload) -> Result<Value> {
    payload.decode()
}

/// The length-prefixed msgpack framing, with a frame size limit.
#[derive(Debug)]
pub(super) struct FrameCodec {
    lengths: LengthDelimitedCodec,
    max: usize,
}

impl FrameCodec {
    pub(super) fn new(max: usize) -> Self {
        FrameCodec {
            lengths: LengthDelimitedCodec::builder()
                .big_endian()
                .length_field_length(4)
                .max_frame_length(max)
                .new_codec(),
            max,
        }
    }
}

impl Decoder for FrameCodec {
    type Item = Msg;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Msg>> {
        let frame = match self.lengths.decode(src) {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(Error::FrameTooLarge {
                    size: self.max + 1,
                    limit: self.max,
                })
            }
            Err(e) => return Err(e.into()),
        };
        let value = rmpv::decode::read_value_with_max_depth(&mut &frame[..], MAX_DEPTH)
            .map_err(|e| Error::Serialization(format!("a comm-ipc frame is not msgpack: {e}")))?;
        match value {
            Value::Map(entries) => Ok(Some(Msg(entries))),
            other => Err(Error::Protocol(format!(
                "a comm-ipc message is a map, not {}",
                kind_of(&other)
            ))),
        }
    }
}

impl Encoder<Msg> for FrameCodec {
    type Error = Error;

    fn encode(&mut self, msg: Msg, dst: &mut BytesMut) -> Result<()> {
        let start = dst.len();
        dst.put_u32(0);
        let written = rmpv::encode::write_value(&mut dst.writer(), &Value::Map(msg.0));
        let len = dst.len() - start - 4;
        let failed = match written {
            Err(e) => Some(Error::Serialization(format!("msgpack encode: {e}"))),
            Ok(()) if len > self.max => Some(Error::FrameTooLarge {
                size: len,
                limit: self.max,
            }),
            Ok(()) => None,
        };
        if let Some(err) = failed {
            dst.truncate(start);
            return Err(err);
        }
        dst[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(())
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Nil => "nil",
        Value::Boolean(_) => "a boolean",
        Value::Integer(_) | Value::F32(_) | Value::F64(_) => "a number",
        Value::String(_) => "a string",
        Value::Binary(_) => "bytes",
        Value::Array(_) => "an array",
        Value::Map(_) => "a map",
        Value::Ext(..) => "an extension",
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn framed(value: &Value) -> BytesMut {
        let mut body = Vec::new();
        rmpv::encode::write_value(&mut body, value).unwrap();
        let mut out = BytesMut::new();
        out.put_u32(body.len() as u32);
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn messages_round_trip_in_comm_ipcs_framing() {
        let msg = Msg::new([
            ("type", Value::from("call")),
            (
                "data",
                Value::Array(vec![Value::from(1), Value::Binary(vec![0, 255])]),
            ),
        ]);
        let mut buf = BytesMut::new();
        FrameCodec::new(1024).encode(msg.clone(), &mut buf).unwrap();
        assert_eq!(
            u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize,
            buf.len() - 4
        );
        let back = FrameCodec::new(1024).decode(&mut buf).unwrap().unwrap();
        assert_eq!(back, msg);
        assert_eq!(back.kind(), Some("call"));
        assert!(buf.is_empty());
    }

    #[test]
    fn bad_frames_are_typed_errors() {
        let mut codec = FrameCodec::new(64);
        let mut big = framed(&Value::from("x".repeat(100)));
        assert!(matches!(
            codec.decode(&mut big),
            Err(Error::FrameTooLarge { limit: 64, .. })
        ));
        let mut not_map = framed(&Value::from(3));
        assert!(matches!(
            FrameCodec::new(64).decode(&mut not_map),
            Err(Error::Protocol(_))
        ));
        let mut garbage = BytesMut::from(&[0, 0, 0, 2, 0xd9, 0xc8][..]);
        assert!(matches!(
            FrameCodec::new(64).decode(&mut garbage),
            Err(Error::Serialization(_))
        ));
        // Deep nesting is refused, not recursed into.
        let mut deep = BytesMut::new();
        deep.put_u32(1000);
        deep.extend_from_slice(&[0x91; 999]);
        deep.extend_from_slice(&[0xc0]);
        assert!(FrameCodec::new(4096).decode(&mut deep).is_err());
        let mut out = BytesMut::from(&b"kept"[..]);
        let huge = Msg::new([("data", Value::from("y".repeat(100)))]);
        assert!(matches!(
            codec.encode(huge, &mut out),
            Err(Error::FrameTooLarge { .. })
        ));
        assert_eq!(&out[..], b"kept");
    }

    #[test]
    fn values_cross_to_busline_payloads_and_back() {
        let value = Value::Map(vec![
            (Value::from("n"), Value::from(-3)),
            (Value::from("bytes"), Value::Binary(vec![1, 2])),
            (Value::from("f"), Value::F64(1.5)),
            (Value::from("none"), Value::Nil),
        ]);
        let payload = payload_of(&value).unwrap();
        assert_eq!(value_of(&payload).unwrap(), value);
        let json = Payload::from_bytes(busline_core::Encoding::Json, r#"{"a":[1,"x",null]}"#);
        let value = value_of(&json).unwrap();
        assert_eq!(value["a"][1].as_str(), Some("x"));
    }

    proptest! {
        #[test]
        fn any_bytes_decode_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut codec = FrameCodec::new(128);
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = codec.decode(&mut buf) {}
        }
    }
}
