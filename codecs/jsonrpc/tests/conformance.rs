//! The shared codec contract, run over this codec.

use busline_core::{Encoding, Message, Payload};
use busline_jsonrpc::JsonRpcCodec;

/// What the codec documents it changes: a single argument that is not an
/// array or an object travels as a one-element array.
fn wrap_single_arguments(msg: Message) -> Message {
    let wrap = |payload: Payload| {
        let bytes = payload.bytes();
        let single = payload.encoding() == Encoding::Json
            && !bytes.contains(&b'\n')
            && serde_json::from_slice::<&serde_json::value::RawValue>(bytes)
                .is_ok_and(|raw| raw.get().len() == bytes.len())
            && !matches!(bytes.first(), Some(b'[' | b'{'))
            && bytes.as_ref() != b"null";
        if single {
            let wrapped = format!("[{}]", String::from_utf8_lossy(bytes));
            Payload::from_bytes(Encoding::Json, wrapped.into_bytes())
        } else {
            payload
        }
    };
    match msg {
        Message::Request {
            id,
            method,
            payload,
            timeout_ms,
        } => Message::Request {
            id,
            method,
            payload: wrap(payload),
            timeout_ms,
        },
        Message::Notify { method, payload } => Message::Notify {
            method,
            payload: wrap(payload),
        },
        Message::OpenStream {
            id,
            method,
            payload,
            credit,
            timeout_ms,
        } => Message::OpenStream {
            id,
            method,
            payload: wrap(payload),
            credit,
            timeout_ms,
        },
        other => other,
    }
}

#[test]
fn conformance() {
    busline_core::testing::codec_conformance_normalized(
        JsonRpcCodec::with_max_frame_size,
        wrap_single_arguments,
    );
}

#[test]
fn conformance_with_content_length_framing() {
    busline_core::testing::codec_conformance_normalized(
        |limit| {
            JsonRpcCodec::with_max_frame_size(limit)
                .framing(busline_jsonrpc::Framing::ContentLength)
        },
        wrap_single_arguments,
    );
}
