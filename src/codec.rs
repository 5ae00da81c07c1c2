//! Run-time codec choice, for addresses like `tcp://host:port?codec=cbor`.

use busline_core::{Address, Codec, Encoding, Error, Message, Result, Splices};
use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

#[cfg(feature = "cbor")]
use busline_cbor::CborCodec;
#[cfg(feature = "jsonline")]
use busline_jsonline::{JsonLineCodec, PlainJsonLineCodec};
#[cfg(feature = "jsonrpc")]
use busline_jsonrpc::{Framing, JsonRpcCodec};

/// One of the codecs this build has, picked at run time.
///
/// ```
/// use busline::codec::AnyCodec;
///
/// let codec = AnyCodec::for_address(&"unix:///tmp/x.sock?codec=jsonline".parse()?)?;
/// assert_eq!(busline::Codec::name(&codec), "jsonline");
/// assert!(AnyCodec::named("morse").is_err());
/// # Ok::<(), busline::Error>(())
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum AnyCodec {
    /// See [`JsonLineCodec`].
    #[cfg(feature = "jsonline")]
    JsonLine(JsonLineCodec),
    /// See [`PlainJsonLineCodec`].
    #[cfg(feature = "jsonline")]
    PlainJsonLine(PlainJsonLineCodec),
    /// See [`JsonRpcCodec`].
    #[cfg(feature = "jsonrpc")]
    JsonRpc(Box<JsonRpcCodec>),
    /// See [`CborCodec`].
    #[cfg(feature = "cbor")]
    Cbor(CborCodec),
}

impl AnyCodec {
    /// The codec used when an address names none.
    pub const DEFAULT: &'static str = "cbor";

    /// The codec called `name` (`jsonline`, `plain-jsonline`, `jsonrpc` or
    /// `cbor`), with
    /// default limits (and, for `jsonrpc`, framing detected per connection).
    pub fn named(name: &str) -> Result<Self> {
        match name {
            #[cfg(feature = "jsonline")]
            "jsonline" | "json" => Ok(AnyCodec::JsonLine(JsonLineCodec::new())),
            #[cfg(feature = "jsonline")]
            "plain-jsonline" => Ok(AnyCodec::PlainJsonLine(PlainJsonLineCodec::new())),
            #[cfg(feature = "jsonrpc")]
            "jsonrpc" => Ok(AnyCodec::JsonRpc(Box::default())),
            #[cfg(feature = "cbor")]
            "cbor" => Ok(AnyCodec::Cbor(CborCodec::new())),
            other => Err(Error::Address {
                url: format!("?codec={other}"),
                reason: format!(
                    "unknown codec {other:?}; this build has: {}",
                    Self::available().join(", ")
                ),
            }),
        }
    }

    /// The codec an address asks for with `?codec=`, or [`AnyCodec::DEFAULT`];
    /// for `jsonrpc`, `&framing=lines` or `&framing=content-length` fixes
    /// the framing, and `&transcode=cbor` sends CBOR payloads as JSON to
    /// plain JSON-RPC peers; for `plain-jsonline`, `&method=NAME` names the
    /// method each line calls.
    pub fn for_address(addr: &Address) -> Result<Self> {
        let bad = |reason: String| Error::Address {
            url: addr.to_string(),
            reason,
        };
        let codec =
            Self::named(addr.param("codec").unwrap_or(Self::DEFAULT)).map_err(|e| match e {
                Error::Address { reason, .. } => bad(reason),
                other => other,
            })?;
        let (framing, transcode) = (addr.param("framing"), addr.param("transcode"));
        let method = addr.param("method");
        match codec {
            #[cfg(feature = "jsonline")]
            AnyCodec::PlainJsonLine(c) if framing.is_none() && transcode.is_none() => {
                Ok(AnyCodec::PlainJsonLine(match method {
                    Some(method) => c.method(method),
                    None => c,
                }))
            }
            codec if method.is_some() => Err(bad(format!(
                "?method= applies to the plain-jsonline codec, not {}",
                codec.name()
            ))),
            #[cfg(feature = "jsonrpc")]
            AnyCodec::JsonRpc(mut c) => {
                if let Some(framing) = framing {
                    let framing = match framing {
                        "auto" => Framing::Auto,
                        "lines" => Framing::Lines,
                        "content-length" => Framing::ContentLength,
                        other => {
                            return Err(bad(format!(
                                "unknown framing {other:?}; use auto, lines or content-length"
                            )))
                        }
                    };
                    c = Box::new(c.framing(framing));
                }
                match transcode {
                    None => {}
                    Some("cbor") => c = Box::new(c.transcode_cbor(true)),
                    Some(other) => {
                        return Err(bad(format!(
                            "unknown transcode {other:?}; the one there is: cbor"
                        )))
                    }
                }
                Ok(AnyCodec::JsonRpc(c))
            }
            codec if framing.is_some() || transcode.is_some() => Err(bad(format!(
                "?framing= and ?transcode= apply to the jsonrpc codec, not {}",
                codec.name()
            ))),
            codec => Ok(codec),
        }
    }

    /// Names of the codecs in this build.
    pub fn available() -> Vec<&'static str> {
        [
            ("jsonline", cfg!(feature = "jsonline")),
            ("plain-jsonline", cfg!(feature = "jsonline")),
            ("jsonrpc", cfg!(feature = "jsonrpc")),
            ("cbor", cfg!(feature = "cbor")),
        ]
        .into_iter()
        .filter_map(|(name, built)| built.then_some(name))
        .collect()
    }
}

macro_rules! each {
    ($self:expr, $c:ident => $body:expr) => {
        match $self {
            #[cfg(feature = "jsonline")]
            AnyCodec::JsonLine($c) => $body,
            #[cfg(feature = "jsonline")]
            AnyCodec::PlainJsonLine($c) => $body,
            #[cfg(feature = "jsonrpc")]
            AnyCodec::JsonRpc($c) => $body,
            #[cfg(feature = "cbor")]
            AnyCodec::Cbor($c) => $body,
        }
    };
}

impl Encoder<Message> for AnyCodec {
    type Error = Error;

    fn encode(&mut self, msg: Message, dst: &mut BytesMut) -> Result<()> {
        each!(self, c => c.encode(msg, dst))
    }
}

impl Decoder for AnyCodec {
    type Item = Message;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>> {
        each!(self, c => c.decode(src))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Message>> {
        each!(self, c => c.decode_eof(src))
    }
}

impl Codec for AnyCodec {
    fn name(&self) -> &'static str {
        each!(self, c => c.name())
    }

    fn payload_encoding(&self) -> Encoding {
        each!(self, c => c.payload_encoding())
    }

    fn max_frame_size(&self) -> usize {
        each!(self, c => c.max_frame_size())
    }

    fn hello_optional(&self) -> bool {
        each!(self, c => c.hello_optional())
    }

    fn calls_outlive_hangup(&self) -> bool {
        each!(self, c => c.calls_outlive_hangup())
    }

    fn encodes_alike(&self) -> bool {
        each!(self, c => c.encodes_alike())
    }

    fn encode_spliced(
        &mut self,
        msg: Message,
        dst: &mut BytesMut,
        splices: &mut Splices,
    ) -> Result<()> {
        each!(self, c => c.encode_spliced(msg, dst, splices))
    }
}

#[cfg(all(test, feature = "cbor", feature = "jsonline"))]
mod tests {
    use busline_core::{testing::codec_conformance, Payload};

    use super::*;

    #[test]
    fn each_codec_conforms_behind_the_enum() {
        codec_conformance(|limit| AnyCodec::Cbor(CborCodec::with_max_frame_size(limit)));
        codec_conformance(|limit| AnyCodec::JsonLine(JsonLineCodec::with_max_frame_size(limit)));
    }

    #[test]
    fn large_payloads_are_spliced_through_the_enum() {
        let mut codec = AnyCodec::named("cbor").unwrap();
        let (mut dst, mut splices) = (BytesMut::new(), Splices::default());
        let big = Payload::from_bytes(Encoding::Binary, vec![1u8; Splices::MIN_LEN]);
        codec
            .encode_spliced(
                Message::Reply {
                    id: 1,
                    payload: big,
                },
                &mut dst,
                &mut splices,
            )
            .unwrap();
        assert!(!splices.is_empty(), "the CBOR codec's splices were lost");
        assert!(dst.len() < 64, "the payload was copied into the buffer");
    }
}
