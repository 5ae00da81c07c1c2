//! The [`Codec`] contract as one generic test body.

use bytes::BytesMut;
use proptest::{prelude::*, test_runner::TestRunner};

use crate::{Codec, Encoding, Error, ErrorCode, Message, Payload, RemoteError, Splices};

/// Messages covering every variant and every payload shape a codec must carry
/// unchanged: each encoding, empty, unicode, JSON that spans lines, bytes
/// tagged JSON that are not JSON, and one payload of 1 MiB.
pub fn sample_messages() -> Vec<Message> {
    let json = |v: serde_json::Value| Payload::json(&v).expect("JSON encodes");
    let error = RemoteError {
        code: ErrorCode::HandlerFailed,
        message: "it broke \n\"badly\"".into(),
        detail: Some("my::Error".into()),
    };
    vec![
        Message::Hello {
            version: 1,
            scheme: "hmac-sha256".into(),
        },
        Message::Auth {
            payload: json(serde_json::json!({"nonce": "00ff"})),
        },
        Message::Welcome { version: 1 },
        Message::Request {
            id: 1,
            method: "add".into(),
            payload: json(serde_json::json!([2, 3])),
            timeout_ms: Some(1500),
        },
        Message::Request {
            id: u64::MAX,
            method: "ünïcødé/方法 \"quoted\"".into(),
            payload: Payload::unit(),
            timeout_ms: None,
        },
        Message::Notify {
            method: "log".into(),
            payload: Payload::cbor(&("cbor", 1u8)).expect("CBOR encodes"),
        },
        Message::OpenStream {
            id: 2,
            method: "count".into(),
            payload: Payload::from_bytes(Encoding::Binary, vec![0u8, 10, 13, 255]),
            credit: 64,
            timeout_ms: Some(0),
        },
        Message::Reply {
            id: 3,
            payload: Payload::from_bytes(Encoding::Json, "[\n1,\n2\n]"),
        },
        Message::Reply {
            id: 4,
            payload: Payload::from_bytes(Encoding::Json, "{not json"),
        },
        Message::Reply {
            id: 5,
            payload: Payload::from_bytes(Encoding::Json, " 5 "),
        },
        Message::Item {
            id: 6,
            payload: Payload::from_bytes(Encoding::Binary, Vec::new()),
        },
        Message::Item {
            id: 7,
            payload: Payload::from_bytes(Encoding::Binary, vec![0xA5; 1 << 20]),
        },
        Message::Error { id: 8, error },
        Message::End { id: 9 },
        Message::Credit { id: 10, credit: 32 },
        Message::Cancel { id: 11 },
        Message::Close { error: None },
        Message::Close {
            error: Some(Error::Unauthorized("wrong secret".into()).to_remote()),
        },
    ]
}

/// Any [`Message`], for property tests.
pub fn arb_message() -> impl Strategy<Value = Message> {
    let payload = (
        prop_oneof![
            Just(Encoding::Json),
            Just(Encoding::Cbor),
            Just(Encoding::Binary)
        ],
        proptest::collection::vec(any::<u8>(), 0..256),
    )
        .prop_map(|(e, b)| Payload::from_bytes(e, b));
    let json_payload =
        any::<(i64, String, Vec<bool>)>().prop_map(|v| Payload::json(&v).expect("JSON encodes"));
    let payload = prop_oneof![payload, json_payload];
    let text = ".{0,40}";
    let code = prop_oneof![
        Just(ErrorCode::Timeout),
        Just(ErrorCode::HandlerFailed),
        Just(ErrorCode::Unauthorized)
    ];
    let remote =
        (code, text, proptest::option::of(text)).prop_map(|(code, message, detail)| RemoteError {
            code,
            message,
            detail,
        });
    prop_oneof![
        (any::<u32>(), text).prop_map(|(version, scheme)| Message::Hello { version, scheme }),
        payload
            .clone()
            .prop_map(|payload| Message::Auth { payload }),
        any::<u32>().prop_map(|version| Message::Welcome { version }),
        (any::<u64>(), text, payload.clone(), any::<Option<u64>>()).prop_map(
            |(id, method, payload, timeout_ms)| Message::Request {
                id,
                method,
                payload,
                timeout_ms
            }
        ),
        (text, payload.clone()).prop_map(|(method, payload)| Message::Notify { method, payload }),
        (
            any::<u64>(),
            text,
            payload.clone(),
            any::<u32>(),
            any::<Option<u64>>()
        )
            .prop_map(|(id, method, payload, credit, timeout_ms)| {
                Message::OpenStream {
                    id,
                    method,
                    payload,
                    credit,
                    timeout_ms,
                }
            }),
        (any::<u64>(), payload.clone()).prop_map(|(id, payload)| Message::Reply { id, payload }),
        (any::<u64>(), payload).prop_map(|(id, payload)| Message::Item { id, payload }),
        (any::<u64>(), remote.clone()).prop_map(|(id, error)| Message::Error { id, error }),
        any::<u64>().prop_map(|id| Message::End { id }),
        (any::<u64>(), any::<u32>()).prop_map(|(id, credit)| Message::Credit { id, credit }),
        any::<u64>().prop_map(|id| Message::Cancel { id }),
        proptest::option::of(remote).prop_map(|error| Message::Close { error }),
    ]
}

fn encode<C: Codec>(codec: &mut C, msgs: &[Message]) -> BytesMut {
    let mut buf = BytesMut::new();
    for msg in msgs {
        codec
            .encode(msg.clone(), &mut buf)
            .unwrap_or_else(|e| panic!("{}: encoding {} failed: {e}", codec.name(), msg.kind()));
    }
    buf
}

/// Feed `bytes` to a fresh decoder in chunks of the given sizes (cycled)
/// and collect every message, then check end of stream is clean.
fn decode_in_chunks<C: Codec>(
    codec: &C,
    bytes: &[u8],
    chunks: &[usize],
) -> Result<Vec<Message>, Error> {
    let mut codec = codec.clone();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut rest = bytes;
    for &size in chunks.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let take = size.clamp(1, rest.len());
        buf.extend_from_slice(&rest[..take]);
        rest = &rest[take..];
        while let Some(msg) = codec.decode(&mut buf)? {
            out.push(msg);
        }
    }
    while let Some(msg) = codec.decode_eof(&mut buf)? {
        out.push(msg);
    }
    Ok(out)
}

/// Check every bullet of the [`Codec`] contract. `make(limit)` builds a codec
/// with the given maximum frame size.
///
/// ```ignore
/// #[test]
/// fn conformance() {
///     busline_core::testing::codec_conformance(MyCodec::with_max_frame_size);
/// }
/// ```
pub fn codec_conformance<C: Codec>(make: impl Fn(usize) -> C) {
    codec_conformance_normalized(make, |msg| msg);
}

/// [`codec_conformance`] for a codec that documents a change it makes to
/// some messages (JSON-RPC wraps a single argument in an array): every
/// message must decode as `normalize` of itself.
pub fn codec_conformance_normalized<C: Codec>(
    make: impl Fn(usize) -> C,
    normalize: impl Fn(Message) -> Message,
) {
    let big = 4 << 20;
    let mut codec = make(big);
    let name = codec.name();
    let samples = sample_messages();
    let expected: Vec<Message> = samples.iter().cloned().map(&normalize).collect();

    // Round trip, one message at a time and as one stream split every way.
    let stream = encode(&mut codec, &samples);
    for chunks in [&[usize::MAX][..], &[1], &[7, 1, 4096], &[65536, 3]] {
        let back = decode_in_chunks(&codec, &stream, chunks)
            .unwrap_or_else(|e| panic!("{name}: decoding in chunks {chunks:?}: {e}"));
        assert_eq!(back, expected, "{name}: round trip in chunks {chunks:?}");
    }

    spliced_encoding_makes_the_same_bytes(&make, &samples);
    if codec.encodes_alike() {
        clones_encode_alike(&make, &samples);
    }

    // Encoding an oversized message fails before touching the buffer.
    let mut small = make(1024);
    let mut buf = BytesMut::from(&b"kept"[..]);
    let huge = Message::Reply {
        id: 1,
        payload: Payload::from_bytes(Encoding::Binary, vec![1u8; 4096]),
    };
    match small.encode(huge.clone(), &mut buf) {
        Err(Error::FrameTooLarge { size, limit }) => {
            assert!(
                size > limit && limit == 1024,
                "{name}: size {size}, limit {limit}"
            );
        }
        other => panic!("{name}: oversized encode gave {other:?}"),
    }
    assert_eq!(&buf[..], b"kept", "{name}: failed encode left bytes behind");

    // Decoding an oversized frame fails within one limit's worth of input.
    let oversized = encode(&mut codec, &[huge]);
    let mut small = make(1024);
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let result = loop {
        if fed >= oversized.len() {
            break small.decode_eof(&mut buf);
        }
        let take = 512.min(oversized.len() - fed);
        buf.extend_from_slice(&oversized[fed..fed + take]);
        fed += take;
        match small.decode(&mut buf) {
            Ok(None) => continue,
            other => break other,
        }
    };
    assert!(
        matches!(result, Err(Error::FrameTooLarge { limit: 1024, .. })),
        "{name}: oversized decode gave {result:?}"
    );
    assert!(
        fed <= 1024 + 512,
        "{name}: buffered {fed} bytes before refusing a frame over 1024"
    );

    // A stream cut inside a frame waits for more, and errors at end of stream.
    let one = encode(&mut codec, &samples[3..4]);
    let mut cut = BytesMut::from(&one[..one.len() - 1]);
    let mut fresh = codec.clone();
    assert_eq!(
        fresh.decode(&mut cut).ok(),
        Some(None),
        "{name}: partial frame"
    );
    assert!(
        fresh.decode_eof(&mut cut).is_err(),
        "{name}: a truncated frame at end of stream must be an error"
    );

    // Garbage is an error (or, where the protocol answers it, only
    // `Rejected`), never a panic and never a call.
    for garbage in [
        &b"\xff\xff\xff\xff\xff\xff\xff\xff\n"[..],
        b"\x00\x00\x00\x05hello\n",
        b"{\"type\":\"request\"}\n",
        b"\x00\x00\x00\x02\xa1\x00\n",
        b"not a frame at all\n",
        b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\n",
    ] {
        let result = decode_in_chunks(&codec, garbage, &[usize::MAX]);
        let rejected =
            |msgs: &Vec<Message>| msgs.iter().all(|m| matches!(m, Message::Rejected { .. }));
        assert!(
            result.as_ref().map_or(true, rejected),
            "{name}: garbage {garbage:?} decoded as {result:?}"
        );
    }

    codec_properties(&codec, &normalize);
}

/// A codec that says it [`encodes_alike`](Codec::encodes_alike): a clone
/// that has read and written the whole sample, and a fresh codec, encode
/// every message to the same bytes.
fn clones_encode_alike<C: Codec>(make: &impl Fn(usize) -> C, samples: &[Message]) {
    let mut used = make(4 << 20);
    let name = used.name();
    let stream = encode(&mut used, samples);
    let mut read = BytesMut::from(&stream[..]);
    while let Ok(Some(_)) = used.decode(&mut read) {}
    let mut used_clone = used.clone();
    for msg in samples {
        let fresh = encode(&mut make(4 << 20), std::slice::from_ref(msg));
        assert_eq!(
            encode(&mut used, std::slice::from_ref(msg)),
            fresh,
            "{name}: says it encodes alike, but a used codec encoded {msg:?} differently"
        );
        assert_eq!(
            encode(&mut used_clone, std::slice::from_ref(msg)),
            fresh,
            "{name}: says it encodes alike, but a clone encoded {msg:?} differently"
        );
    }
}

/// `encode_spliced`, its splices put back, gives what `encode` gives:
/// whatever the buffer held before, with large payloads mid-frame and at
/// the end of frames back to back; and a frame refused for its size
/// leaves the buffer and the splices as they were.
fn spliced_encoding_makes_the_same_bytes<C: Codec>(
    make: &impl Fn(usize) -> C,
    samples: &[Message],
) {
    let big = |fill: u8| Payload::from_bytes(Encoding::Binary, vec![fill; Splices::MIN_LEN + 1]);
    let mut msgs = samples.to_vec();
    msgs.extend([
        Message::Request {
            id: 20,
            method: "put".into(),
            payload: big(1),
            timeout_ms: Some(5),
        },
        Message::Reply {
            id: 21,
            payload: big(2),
        },
        Message::Item {
            id: 22,
            payload: big(3),
        },
        Message::OpenStream {
            id: 23,
            method: "feed".into(),
            payload: big(4),
            credit: 8,
            timeout_ms: None,
        },
    ]);
    let mut codec = make(4 << 20);
    let name = codec.name();
    let expected = encode(&mut codec, &msgs);
    let mut buf = BytesMut::new();
    let mut splices = Splices::default();
    for msg in &msgs {
        codec
            .encode_spliced(msg.clone(), &mut buf, &mut splices)
            .unwrap_or_else(|e| panic!("{name}: spliced encoding of {} failed: {e}", msg.kind()));
    }
    assert!(
        splices.assemble(buf) == expected[..],
        "{name}: spliced encoding differs from encode"
    );

    // A refused frame right after a spliced one leaves both untouched.
    // (Room for the first frame even base64-encoded, not for the second.)
    let mut small = make(2 * Splices::MIN_LEN);
    let (mut buf, mut splices) = (BytesMut::new(), Splices::default());
    let fits = Message::Item {
        id: 1,
        payload: big(5),
    };
    small
        .encode_spliced(fits.clone(), &mut buf, &mut splices)
        .unwrap_or_else(|e| panic!("{name}: spliced encoding failed: {e}"));
    let kept = buf.clone();
    let oversized = Message::Item {
        id: 2,
        payload: Payload::from_bytes(Encoding::Binary, vec![6; 4 * Splices::MIN_LEN]),
    };
    let refused = small.encode_spliced(oversized, &mut buf, &mut splices);
    assert!(
        matches!(refused, Err(Error::FrameTooLarge { .. })),
        "{name}: oversized spliced encode gave {refused:?}"
    );
    assert_eq!(
        buf, kept,
        "{name}: a refused spliced frame left bytes behind"
    );
    assert_eq!(
        splices.assemble(buf),
        encode(&mut make(4 << 20), &[fits])[..],
        "{name}: a refused spliced frame disturbed the splices before it"
    );
}

fn codec_properties<C: Codec>(codec: &C, normalize: &impl Fn(Message) -> Message) {
    let name = codec.name();
    let config = ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = TestRunner::new(config.clone());
    runner
        .run(
            &(
                proptest::collection::vec(arb_message(), 1..6),
                proptest::collection::vec(1usize..64, 1..4),
            ),
            |(msgs, chunks)| {
                let mut c = codec.clone();
                let bytes = encode(&mut c, &msgs);
                let back = decode_in_chunks(codec, &bytes, &chunks)
                    .map_err(|e| TestCaseError::fail(format!("{name}: {e}")))?;
                let expected: Vec<Message> = msgs.into_iter().map(normalize).collect();
                prop_assert_eq!(back, expected);
                Ok(())
            },
        )
        .unwrap_or_else(|e| panic!("{name}: round trip property: {e}"));

    let mut runner = TestRunner::new(config);
    runner
        .run(&proptest::collection::vec(any::<u8>(), 0..512), |bytes| {
            // Any bytes: an error or some messages, never a panic.
            let _ = decode_in_chunks(codec, &bytes, &[13]);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{name}: arbitrary bytes property: {e}"));
}
