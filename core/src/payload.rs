//! Opaque payload bytes and the typed helpers that make and read them.
//!
//! A [`Payload`] is the exact bytes the sender produced, tagged with the
//! format they are in. Everything between the two ends (codecs, broker,
//! bridge) moves these bytes untouched, which keeps routing cheap and lets a
//! signature cover exactly what the sender wrote.

use std::fmt;

use bytes::Bytes;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::{Error, Result};

/// Payloads at least this long are taken out of a received frame without
/// copying; see [`Payload::from_frame`].
const SHARE_FRAME_THRESHOLD: usize = 1024;

/// The format a payload's bytes are in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// UTF-8 JSON text.
    #[default]
    Json,
    /// CBOR (RFC 8949).
    Cbor,
    /// Application-defined bytes; [`Payload::decode`] refuses them.
    Binary,
}

impl Encoding {
    /// The lowercase name used on the wire and in URLs.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::Cbor => "cbor",
            Encoding::Binary => "binary",
        }
    }
}

/// Opaque, cheaply clonable payload bytes plus their [`Encoding`].
///
/// ```
/// use busline_core::{Encoding, Payload};
///
/// let p = Payload::encode(Encoding::Cbor, &(1, "two"))?;
/// let (a, b): (u32, String) = p.decode()?;
/// assert_eq!((a, b.as_str()), (1, "two"));
/// # Ok::<(), busline_core::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    encoding: Encoding,
    #[serde(with = "serde_bytes_as_bytes")]
    bytes: Bytes,
}

impl Payload {
    /// Wrap bytes the caller already encoded.
    pub fn from_bytes(encoding: Encoding, bytes: impl Into<Bytes>) -> Self {
        Payload {
            encoding,
            bytes: bytes.into(),
        }
    }

    /// The payload found at `part` of a received `frame`, for codecs.
    ///
    /// Large payloads share the frame's buffer (no copy); small ones are
    /// copied, so that a small payload an application keeps does not pin a
    /// whole read buffer in memory.
    ///
    /// # Panics
    ///
    /// If `part` is not a subslice of `frame` (as [`Bytes::slice_ref`]).
    pub fn from_frame(encoding: Encoding, frame: &Bytes, part: &[u8]) -> Self {
        let bytes = if part.len() >= SHARE_FRAME_THRESHOLD {
            frame.slice_ref(part)
        } else {
            Bytes::copy_from_slice(part)
        };
        Payload::from_bytes(encoding, bytes)
    }

    /// The JSON `null` payload, used for calls without arguments.
    pub fn unit() -> Self {
        Payload::from_bytes(Encoding::Json, Bytes::from_static(b"null"))
    }

    /// Serialize `value` as JSON.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self> {
        Self::encode(Encoding::Json, value)
    }

    /// Serialize `value` as CBOR.
    pub fn cbor<T: Serialize + ?Sized>(value: &T) -> Result<Self> {
        Self::encode(Encoding::Cbor, value)
    }

    /// Serialize `value` in the given encoding. [`Encoding::Binary`] is
    /// refused: binary payloads are made with [`Payload::from_bytes`].
    pub fn encode<T: Serialize + ?Sized>(encoding: Encoding, value: &T) -> Result<Self> {
        let bytes = match encoding {
            Encoding::Json => {
                serde_json::to_vec(value).map_err(|e| Error::Serialization(e.to_string()))?
            }
            Encoding::Cbor => {
                let mut out = Vec::with_capacity(64);
                ciborium::into_writer(value, &mut out)
                    .map_err(|e| Error::Serialization(e.to_string()))?;
                out
            }
            Encoding::Binary => {
                return Err(Error::Serialization(
                    "binary payloads carry raw bytes; build them with Payload::from_bytes".into(),
                ))
            }
        };
        Ok(Payload::from_bytes(encoding, bytes))
    }

    /// Deserialize the payload into `T`, whatever encoding it is in.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        match self.encoding {
            Encoding::Json => serde_json::from_slice(&self.bytes)
                .map_err(|e| Error::Serialization(format!("JSON payload: {e}"))),
            Encoding::Cbor => {
                // ciborium's default zeroes a 4 KiB scratch buffer per call;
                // longer strings than this still decode, through the heap.
                let mut scratch = [0u8; 256];
                ciborium::de::from_reader_with_buffer(&self.bytes[..], &mut scratch)
                    .map_err(|e| Error::Serialization(format!("CBOR payload: {e}")))
            }
            Encoding::Binary => Err(Error::Serialization(
                "binary payload: read it with Payload::bytes".into(),
            )),
        }
    }

    /// Deserialize call arguments (or a publication): like
    /// [`Payload::decode`], but a single value may also come as a
    /// one-element JSON array, which is how JSON-RPC carries one (its
    /// params must be an array or an object).
    pub fn decode_params<T: DeserializeOwned>(&self) -> Result<T> {
        self.decode().or_else(|first| {
            if self.encoding != Encoding::Json {
                return Err(first);
            }
            serde_json::from_slice::<(&serde_json::value::RawValue,)>(&self.bytes)
                .ok()
                .and_then(|(only,)| serde_json::from_str(only.get()).ok())
                .ok_or(first)
        })
    }

    /// The payload's format.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// The exact bytes the sender produced.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Take the bytes out.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// Number of payload bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether there are no payload bytes at all.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

impl Default for Payload {
    fn default() -> Self {
        Payload::unit()
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 64;
        let mut d = f.debug_struct("Payload");
        d.field("encoding", &self.encoding);
        match self.encoding {
            Encoding::Json if self.bytes.len() <= SHOWN => {
                d.field("json", &String::from_utf8_lossy(&self.bytes))
            }
            _ => d.field("len", &self.bytes.len()),
        };
        d.finish()
    }
}

/// Serde glue so `Bytes` goes out as a CBOR byte string, not an array.
mod serde_bytes_as_bytes {
    use bytes::Bytes;
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        serde_bytes::serialize(bytes.as_ref(), s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let buf: serde_bytes::ByteBuf = serde_bytes::deserialize(d)?;
        Ok(Bytes::from(buf.into_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_cbor_round_trip() {
        for enc in [Encoding::Json, Encoding::Cbor] {
            let p = Payload::encode(enc, &vec![1u8, 2, 3]).unwrap();
            assert_eq!(p.encoding(), enc);
            assert_eq!(p.decode::<Vec<u8>>().unwrap(), vec![1, 2, 3]);
        }
    }

    #[test]
    fn cbor_strings_longer_than_the_scratch_buffer_decode() {
        let long = "x".repeat(10_000);
        let bytes = serde_bytes::ByteBuf::from(vec![5u8; 10_000]);
        let p = Payload::cbor(&(&long, &bytes)).unwrap();
        assert_eq!(
            p.decode::<(String, serde_bytes::ByteBuf)>().unwrap(),
            (long, bytes)
        );
    }

    #[test]
    fn wrong_type_is_a_serialization_error() {
        let p = Payload::json(&"text").unwrap();
        assert!(matches!(p.decode::<u32>(), Err(Error::Serialization(_))));
        let garbage = Payload::from_bytes(Encoding::Cbor, vec![0xff, 0x00, 0x13]);
        assert!(matches!(
            garbage.decode::<u32>(),
            Err(Error::Serialization(_))
        ));
    }

    #[test]
    fn large_frame_parts_are_shared_and_small_ones_copied() {
        let frame = Bytes::from(vec![1u8; 4096]);
        let big = Payload::from_frame(Encoding::Binary, &frame, &frame[10..2000]);
        assert_eq!(big.bytes().as_ptr(), frame[10..].as_ptr());
        let small = Payload::from_frame(Encoding::Binary, &frame, &frame[10..20]);
        assert_ne!(small.bytes().as_ptr(), frame[10..].as_ptr());
        assert_eq!(small.bytes().as_ref(), &frame[10..20]);
    }

    #[test]
    fn params_may_wrap_a_single_value() {
        let json = |t: &str| Payload::from_bytes(Encoding::Json, t.to_owned());
        assert_eq!(json("[7]").decode_params::<u64>().unwrap(), 7);
        assert_eq!(json("7").decode_params::<u64>().unwrap(), 7);
        assert_eq!(json("[7]").decode_params::<Vec<u64>>().unwrap(), vec![7]);
        assert!(json("[7,8]").decode_params::<u64>().is_err());
        let cbor = Payload::cbor(&[7u8]).unwrap();
        assert!(cbor.decode_params::<u64>().is_err());
    }

    #[test]
    fn binary_is_opaque() {
        let p = Payload::from_bytes(Encoding::Binary, vec![9u8; 3]);
        assert!(p.decode::<Vec<u8>>().is_err());
        assert!(Payload::encode(Encoding::Binary, &1).is_err());
        assert_eq!(p.bytes().as_ref(), &[9, 9, 9]);
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let deep = "[".repeat(100_000);
        let p = Payload::from_bytes(Encoding::Json, deep.into_bytes());
        assert!(p.decode::<serde_json::Value>().is_err());
        let deep_cbor = vec![0x81u8; 100_000];
        let p = Payload::from_bytes(Encoding::Cbor, deep_cbor);
        assert!(p.decode::<ciborium::Value>().is_err());
    }
}
