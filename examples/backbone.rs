//! Two brokers joined through NATS: a provider on one answers a caller on
//! the other, and a publication on the second reaches a subscriber on the
//! first. On two hosts each broker would be a `busline broker --backbone
//! nats://...`; here both live in this program.
//!
//! Needs a NATS server: `apt-get install nats-server`, `nats-server -a
//! 127.0.0.1 &`, then `cargo run --example backbone` (or give the server's
//! URL as the first argument).

use std::time::Duration;

use busline::{
    backbone::{self, Backbone, BackboneHandle},
    broker::{Broker, BrokerClient, BrokerHandle, Event},
    rpc::Client,
    Address, CborCodec, MemoryTransport,
};
use futures::StreamExt;

async fn client(addr: &Address) -> busline::Result<BrokerClient> {
    BrokerClient::connect(
        Client::builder(CborCodec::new()),
        &MemoryTransport::new(),
        addr,
    )
    .await
}

/// A broker with id `id`, and its side of the backbone at `nats`.
async fn site(id: &str, nats: &str) -> busline::Result<(BrokerHandle, BackboneHandle, Address)> {
    let addr = Address::memory(format!("example-backbone-{id}"));
    let broker = Broker::builder()
        .id(id)
        .listen(MemoryTransport::new(), addr.clone(), CborCodec::new())
        .start()
        .await?;
    let nats = backbone::connect(nats, async_nats::ConnectOptions::new()).await?;
    let side = Backbone::builder()
        .start(client(&addr).await?, nats)
        .await?;
    Ok((broker, side, addr))
}

#[tokio::main]
async fn main() -> busline::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let (broker_a, side_a, a) = site("east", &url).await?;
    let (broker_b, side_b, b) = site("west", &url).await?;

    // A provider on east…
    let provider = client(&a).await?;
    let math = provider.open("math").await?;
    math.provide(
        "add",
        |(x, y): (i64, i64)| async move { Ok::<_, String>(x + y) },
    )
    .await?;
    // …a subscriber on east…
    let mut news = math.subscribe("news.>").await?;

    // …and a caller on west, once east's offer has reached it.
    let caller = client(&b).await?.open("math").await?;
    let sum = loop {
        match caller.call::<_, i64>("add", &(2, 40)).await {
            Ok(sum) => break sum,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    println!("west called east's add(2, 40) = {sum}");

    // A publication on west reaches east's subscriber once east's demand
    // has reached west.
    let heard = loop {
        caller.publish("news.today", &"hello from west").await?;
        if let Ok(Some(Ok(Event::Message(p)))) =
            tokio::time::timeout(Duration::from_millis(100), news.next()).await
        {
            break p.decode::<String>()?;
        }
    };
    println!("east heard: {heard}");
    println!("brokers east sees on the backbone: {:?}", side_a.brokers());

    side_b.shutdown().await;
    side_a.shutdown().await;
    broker_b.shutdown().await;
    broker_a.shutdown().await;
    Ok(())
}
