//! Bad input to the broker: every control message with malformed,
//! wrong-type, oversized, deeply nested and invalid-UTF-8 arguments gets a
//! typed error, the connection that sent it keeps working, and so does
//! everyone else. (Codec-level garbage and oversized frames are covered
//! for every transport × codec in `tests/rpc.rs`.)

mod support;

use std::time::Duration;

use busline::{
    broker::{Broker, BrokerClient},
    rpc::Client,
    Address, CborCodec, Error, JsonLineCodec, MemoryTransport, Payload,
};
use support::provide_add;

/// Every method the broker itself answers.
const CONTROL: &[&str] = &[
    "busline.open",
    "busline.leave",
    "busline.provide",
    "busline.unprovide",
    "busline.describe",
    "busline.own_topic",
    "busline.identify",
    "busline.status",
    "busline.challenge",
    "busline.set_password",
    "busline.set_policy",
    "busline.subscribe",
    "busline.unsubscribe",
    "busline.set_balance",
];

/// Arguments no control method accepts, as JSON text.
fn bad_json_arguments() -> Vec<(String, String)> {
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let huge = format!("{{\"channel\": \"{}\"}}", "c".repeat(1 << 20));
    vec![
        ("null".into(), "null".into()),
        ("a number".into(), "42".into()),
        ("a string".into(), "\"open sesame\"".into()),
        ("an empty object".into(), "{}".into()),
        (
            "wrong field types".into(),
            r#"{"channel": 7, "method": [], "pattern": {}, "topic": null, "client_id": false, "policy": "maybe", "balance": 3, "key": 1, "proof": []}"#.into(),
        ),
        (
            "names with separators".into(),
            r#"{"channel": "a/b#c!d", "method": "", "pattern": "a.>.b", "topic": "a..b", "client_id": ""}"#.into(),
        ),
        ("100,000 nested arrays".into(), nested),
        ("a 1 MiB channel name".into(), huge),
    ]
}

async fn broker(name: &str) -> (busline::broker::BrokerHandle, Address) {
    let broker = Broker::builder()
        .listen(
            MemoryTransport::new(),
            Address::memory(format!("{name}-json")),
            JsonLineCodec::new(),
        )
        .listen(
            MemoryTransport::new(),
            Address::memory(format!("{name}-cbor")),
            CborCodec::new(),
        )
        .start()
        .await
        .unwrap();
    let addr = broker.local_addrs()[0].clone();
    (broker, addr)
}

/// The call fails with a typed error, quickly.
async fn refused(client: &Client, method: &str, payload: Payload, what: &str) -> Error {
    let answer = tokio::time::timeout(Duration::from_secs(10), client.call_raw(method, payload))
        .await
        .unwrap_or_else(|_| panic!("{method} with {what}: no answer"));
    match answer {
        Ok(reply) => panic!("{method} with {what}: accepted ({reply:?})"),
        Err(err) => err,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_control_message_refuses_bad_arguments_and_the_broker_lives_on() {
    let (broker, addr) = broker("bad-control").await;
    let transport = MemoryTransport::new();
    // A bystander with a working channel, to check others are unaffected.
    let bystander = BrokerClient::connect(
        Client::builder(CborCodec::new()),
        &transport,
        &broker.local_addrs()[1].clone(),
    )
    .await
    .unwrap();
    let math = bystander.open("math").await.unwrap();
    provide_add(&math).await;

    let attacker = Client::builder(JsonLineCodec::new())
        .connect(&transport, &addr)
        .await
        .unwrap();
    for method in CONTROL {
        for (what, json) in bad_json_arguments() {
            if *method == "busline.status" && json == "null" {
                continue; // it takes no arguments: null is the right ones
            }
            // Too deep or too large for the codec is refused before it is
            // read; either way, a typed error.
            let payload = match serde_json::from_str::<serde_json::Value>(&json) {
                Ok(value) => Payload::json(&value).unwrap(),
                Err(_) => Payload::from_bytes(busline::Encoding::Json, json.into_bytes()),
            };
            let err = refused(&attacker, method, payload, &what).await;
            assert!(
                matches!(
                    err,
                    Error::Serialization(_)
                        | Error::Protocol(_)
                        | Error::Unauthorized(_)
                        | Error::MethodNotFound(_)
                        | Error::FrameTooLarge { .. }
                        | Error::Overloaded(_)
                ),
                "{method} with {what}: {err:?}"
            );
        }
        // Keys and proofs that are not hex, where they are read.
        if ["busline.open", "busline.set_password"].contains(method) {
            let payload = Payload::json(&serde_json::json!({
                "channel": "c", "key": "zz", "proof": "not hex"
            }))
            .unwrap();
            let err = refused(&attacker, method, payload, "non-hex key and proof").await;
            assert!(!matches!(err, Error::Disconnected(_)), "{method}: {err:?}");
        }
        // Invalid UTF-8 inside a CBOR text string.
        let cbor = Client::builder(CborCodec::new())
            .connect(&transport, &broker.local_addrs()[1].clone())
            .await
            .unwrap();
        let bad_text = Payload::from_bytes(
            busline::Encoding::Cbor,
            vec![
                0xa1, 0x67, b'c', b'h', b'a', b'n', b'n', b'e', b'l', 0x62, 0xff, 0xfe,
            ],
        );
        let err = refused(&cbor, method, bad_text, "invalid UTF-8").await;
        assert!(!matches!(err, Error::Disconnected(_)), "{method}: {err:?}");
    }

    // The attacker's own connection still works, and so does everyone else's.
    assert!(!attacker.is_closed());
    let status = tokio::time::timeout(
        Duration::from_secs(10),
        attacker.call_raw("busline.status", Payload::json(&()).unwrap()),
    )
    .await
    .unwrap();
    assert!(status.is_ok(), "{status:?}");
    let caller = BrokerClient::connect(Client::builder(JsonLineCodec::new()), &transport, &addr)
        .await
        .unwrap()
        .open("math")
        .await
        .unwrap();
    assert_eq!(caller.call::<_, i64>("add", &(2, 40)).await.unwrap(), 42);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_to_a_provider_are_its_typed_errors_not_its_end() {
    let (broker, addr) = broker("bad-routed").await;
    let transport = MemoryTransport::new();
    let provider = BrokerClient::connect(Client::builder(JsonLineCodec::new()), &transport, &addr)
        .await
        .unwrap();
    provide_add(&provider.open("math").await.unwrap()).await;
    let caller = BrokerClient::connect(Client::builder(JsonLineCodec::new()), &transport, &addr)
        .await
        .unwrap()
        .open("math")
        .await
        .unwrap();
    for (what, json) in bad_json_arguments() {
        let payload = match serde_json::from_str::<serde_json::Value>(&json) {
            Ok(value) => Payload::json(&value).unwrap(),
            Err(_) => Payload::from_bytes(busline::Encoding::Json, json.into_bytes()),
        };
        let answer = tokio::time::timeout(Duration::from_secs(10), caller.call_raw("add", payload))
            .await
            .unwrap_or_else(|_| panic!("add with {what}: no answer"));
        assert!(answer.is_err(), "add with {what}: {answer:?}");
        assert!(
            !matches!(answer, Err(Error::Disconnected(_))),
            "add with {what}: {answer:?}"
        );
    }
    assert_eq!(caller.call::<_, i64>("add", &(2, 40)).await.unwrap(), 42);
    broker.shutdown().await;
}
