//! Three brokers in a line, A - B - C, joined by two bridges: a provider
//! on A answers a caller on C, and a publication on C reaches a subscriber
//! on A, each through two bridges, exactly once.
//!
//! Run it with `cargo run --example bridge`.

use std::time::Duration;

use busline::{
    bridge::Bridge,
    broker::{Broker, BrokerClient, Event},
    rpc::Client,
    Address, CborCodec, MemoryTransport,
};
use futures::StreamExt;

/// A client of the broker at `addr`. (Memory transports keep the example
/// self-contained; bridges join brokers over Unix sockets, TCP, TLS or
/// shared memory the same way.)
async fn client(addr: &Address) -> busline::Result<BrokerClient> {
    BrokerClient::connect(
        Client::builder(CborCodec::new()),
        &MemoryTransport::new(),
        addr,
    )
    .await
}

#[tokio::main]
async fn main() -> busline::Result<()> {
    // Three brokers, each with its own id.
    let mut brokers = Vec::new();
    let mut addrs = Vec::new();
    for id in ["a", "b", "c"] {
        let addr = Address::memory(format!("example-bridge-{id}"));
        brokers.push(
            Broker::builder()
                .id(id)
                .listen(MemoryTransport::new(), addr.clone(), CborCodec::new())
                .start()
                .await?,
        );
        addrs.push(addr);
    }
    let (a, b, c) = (&addrs[0], &addrs[1], &addrs[2]);

    // Two bridges: A - B and B - C. Each is a client of both its brokers.
    let ab = Bridge::builder()
        .start(client(a).await?, client(b).await?)
        .await?;
    let bc = Bridge::builder()
        .start(client(b).await?, client(c).await?)
        .await?;

    // A provider on A, and a subscriber on A.
    let provider = client(a).await?;
    provider
        .open("math")
        .await?
        .provide(
            "add",
            |(x, y): (i64, i64)| async move { Ok::<_, String>(x + y) },
        )
        .await?;
    let reader = client(a).await?;
    let mut news = reader.open("news").await?.subscribe(">").await?;

    // A caller on C: the offer takes a moment to cross both bridges.
    let caller = client(c).await?;
    let math = caller.open("math").await?;
    let sum = loop {
        match math.call::<_, i64>("add", &(2, 40)).await {
            Ok(sum) => break sum,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    println!("add(2, 40) from broker C, answered on broker A: {sum}");
    let routes = math.describe().await?.routes;
    println!("broker C's way to the provider (brokers it goes through): {routes:?}");

    // A publisher on C: once the subscription has crossed, its news
    // reaches the subscriber on A.
    let publisher = caller.open("news").await?;
    let first = loop {
        publisher.publish("weather", &"sunny").await?;
        if let Ok(Some(Ok(Event::Message(p)))) =
            tokio::time::timeout(Duration::from_millis(50), news.next()).await
        {
            break p;
        }
    };
    println!(
        "published on C, received on A: {} = {}",
        first.topic,
        first.decode::<String>()?
    );

    ab.shutdown().await;
    bc.shutdown().await;
    for broker in brokers {
        broker.shutdown().await;
    }
    Ok(())
}
