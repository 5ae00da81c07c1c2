//! A broker with two listeners, and three clients meeting on its channels.
//!
//! - a "math" service provides `add` on the channel `math`;
//! - a caller on another listener (and another codec) calls it;
//! - a sensor publishes temperatures that a dashboard subscribes to;
//! - a password-protected channel where everything is signed end to end.
//!
//! Run it with `cargo run --example broker`.

use std::time::Duration;

use busline::{
    broker::{Broker, BrokerClient, Event},
    rpc::Client,
    Address, CborCodec, JsonRpcCodec, MemoryTransport,
};
use futures::StreamExt;

#[tokio::main]
async fn main() -> busline::Result<()> {
    // One broker, two listeners: CBOR and JSON-RPC. (Memory transports keep
    // the example self-contained; use UnixTransport, TcpTransport or
    // TlsTransport the same way.)
    let cbor = Address::memory("example-bus-cbor");
    let json = Address::memory("example-bus-jsonrpc");
    let broker = Broker::builder()
        .listen(MemoryTransport::new(), cbor.clone(), CborCodec::new())
        .listen(MemoryTransport::new(), json.clone(), JsonRpcCodec::new())
        .start()
        .await?;
    let transport = MemoryTransport::new();

    // A service provides a method on a channel.
    let service =
        BrokerClient::connect(Client::builder(CborCodec::new()), &transport, &cbor).await?;
    let math = service.open("math").await?;
    println!("service: opened \"math\" (owner: {})", math.is_owner());
    math.provide(
        "add",
        |(a, b): (i64, i64)| async move { Ok::<_, String>(a + b) },
    )
    .await?;

    // A caller on the JSON-RPC listener calls it through the broker.
    let caller =
        BrokerClient::connect(Client::builder(JsonRpcCodec::new()), &transport, &json).await?;
    let sum: i64 = caller.open("math").await?.call("add", &(2, 40)).await?;
    println!("caller: add(2, 40) = {sum}");

    // Pub/sub: the dashboard subscribes with a wildcard, the sensor publishes.
    let dashboard = caller.open("home").await?;
    let mut temps = dashboard.subscribe("sensors.*.temp").await?;
    let sensor = service.open("home").await?;
    for (room, celsius) in [("kitchen", 21.5), ("hall", 19.0)] {
        sensor
            .publish(&format!("sensors.{room}.temp"), &celsius)
            .await?;
    }
    for _ in 0..2 {
        match tokio::time::timeout(Duration::from_secs(5), temps.next()).await {
            Ok(Some(Ok(Event::Message(p)))) => {
                println!("dashboard: {} = {}", p.topic, p.decode::<f64>()?)
            }
            other => println!("dashboard: unexpected {other:?}"),
        }
    }

    // A protected channel: only clients with the password join, and what
    // they send each other is signed (the broker never sees the keys).
    let mut vault = service.open("vault").await?;
    vault.set_password(Some("s3cret")).await?;
    vault
        .provide("balance", |(): ()| async { Ok::<_, String>(1234) })
        .await?;
    let vault = caller.open_with_password("vault", "s3cret").await?;
    println!(
        "caller: balance = {}",
        vault.call::<_, i64>("balance", &()).await?
    );
    let refused = BrokerClient::connect(Client::builder(CborCodec::new()), &transport, &cbor)
        .await?
        .open("vault")
        .await
        .unwrap_err();
    println!("intruder: {refused}");

    broker.shutdown().await;
    Ok(())
}
