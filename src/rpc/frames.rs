//! Frames encoded once for every connection of a server.

use std::{
    fmt,
    sync::{Arc, Mutex},
};

use busline_core::{Codec, Message, Result};
use bytes::{Bytes, BytesMut};

type EncodeFn = dyn Fn(Message) -> Result<Bytes> + Send + Sync;

/// The codec of one server's connections, to encode a message once into a
/// whole frame that any of them can write as it is: a broker encodes a
/// publication once for all its subscribers instead of once each. Only
/// for a codec whose frames depend on the message alone
/// ([`Codec::encodes_alike`]).
#[derive(Clone)]
pub(crate) struct SharedFrames(Arc<EncodeFn>);

impl SharedFrames {
    /// `codec`'s frames, if it encodes alike on every connection.
    pub(crate) fn new<C: Codec>(codec: &C) -> Option<SharedFrames> {
        if !codec.encodes_alike() {
            return None;
        }
        // `encode` takes the codec mutably; it changes nothing that shows
        // in the bytes, so one copy serves every encode.
        let codec = Mutex::new(codec.clone());
        Some(SharedFrames(Arc::new(move |msg| {
            let mut frame = BytesMut::new();
            codec
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .encode(msg, &mut frame)?;
            Ok(frame.freeze())
        })))
    }

    /// `msg` as one whole frame, or why it cannot be sent (too large).
    pub(crate) fn encode(&self, msg: Message) -> Result<Bytes> {
        (self.0)(msg)
    }

    /// Whether `other` makes the same frames (the same server's codec).
    pub(crate) fn same_as(&self, other: &SharedFrames) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl fmt::Debug for SharedFrames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedFrames")
    }
}

#[cfg(all(test, feature = "cbor", feature = "jsonline"))]
mod tests {
    use busline_core::{Encoding, Payload};
    use busline_jsonline::PlainJsonLineCodec;
    use tokio_util::codec::Encoder;

    use super::*;
    use crate::CborCodec;

    #[test]
    fn only_codecs_that_encode_alike_share_frames() {
        let cbor = CborCodec::new();
        let frames = SharedFrames::new(&cbor).expect("CBOR frames depend on the message alone");
        let msg = Message::Notify {
            method: "news#a".into(),
            payload: Payload::from_bytes(Encoding::Binary, vec![1, 2, 3]),
        };
        let mut expected = BytesMut::new();
        cbor.clone().encode(msg.clone(), &mut expected).unwrap();
        assert_eq!(frames.encode(msg).unwrap(), expected.freeze());
        assert!(frames.same_as(&frames.clone()));
        assert!(!frames.same_as(&SharedFrames::new(&cbor).unwrap()));
        assert!(
            SharedFrames::new(&PlainJsonLineCodec::new()).is_none(),
            "a codec that holds answers back to write them in call order encodes per connection"
        );
    }
}
