//! Encode + decode of one small call frame per codec: the per-message CPU
//! cost that the round-trip benchmark hides behind syscalls.
//!
//! Run: `cargo bench --bench codec`.

use std::time::Duration;

use busline::{CborCodec, Codec, JsonLineCodec, Message, Payload};
use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion};

fn small_call(codec: &impl Codec) -> Message {
    Message::Request {
        id: 12345,
        method: "echo".into(),
        payload: Payload::encode(codec.payload_encoding(), &42u64).expect("encodes"),
        timeout_ms: Some(5000),
    }
}

fn round<C: Codec>(c: &mut Criterion, mut codec: C) {
    let msg = small_call(&codec);
    let mut buf = BytesMut::with_capacity(256);
    c.bench_function(&format!("encode_decode/{}", codec.name()), |b| {
        b.iter(|| {
            codec.encode(msg.clone(), &mut buf).expect("encode");
            codec.decode(&mut buf).expect("decode").expect("a frame")
        })
    });
}

fn codecs(c: &mut Criterion) {
    round(c, CborCodec::new());
    round(c, JsonLineCodec::new());
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = codecs
}
criterion_main!(benches);
