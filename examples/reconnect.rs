//! A broker restarts under its clients, and they carry on by themselves.
//!
//! - a service provides `add` and publishes ticks, reconnecting;
//! - a caller and a subscriber reconnect too;
//! - the broker stops and starts again on the same socket; the clients
//!   restore their channels, providers and subscriptions, and a call made
//!   while the broker was away is answered once it is back.
//!
//! Run it with `cargo run --example reconnect`.

use std::time::Duration;

use busline::{
    broker::{Broker, BrokerClient, BrokerHandle, ConnectionEvent, Event, Reconnect},
    rpc::Client,
    Address, CborCodec, UnixTransport,
};
use futures::StreamExt;

async fn start_broker(addr: &Address) -> busline::Result<BrokerHandle> {
    Broker::builder()
        .listen(UnixTransport::new(), addr.clone(), CborCodec::new())
        .start()
        .await
}

/// A broker client that reconnects, trying again after about `delay`
/// each time.
async fn reconnecting(addr: &Address, delay: Duration) -> busline::Result<BrokerClient> {
    BrokerClient::builder(Client::builder(CborCodec::new()).timeout(Duration::from_secs(10)))
        .reconnect(Reconnect {
            initial_delay: delay,
            max_delay: delay,
            ..Reconnect::default()
        })
        .connect(&UnixTransport::new(), addr)
        .await
}

#[tokio::main]
async fn main() -> busline::Result<()> {
    let dir = std::env::temp_dir().join(format!("busline-reconnect-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let addr = Address::unix(dir.join("bus.sock"));
    let broker = start_broker(&addr).await?;

    // The service comes back quickly; the caller a little later, so that
    // what it calls is there again when it is.
    let service = reconnecting(&addr, Duration::from_millis(50)).await?;
    let math = service.open("math").await?;
    math.provide(
        "add",
        |(a, b): (i64, i64)| async move { Ok::<_, String>(a + b) },
    )
    .await?;
    let caller = reconnecting(&addr, Duration::from_millis(1500)).await?;
    let math_caller = caller.open("math").await?;
    let mut ticks = caller.open("clock").await?.subscribe("tick").await?;
    let clock = service.open("clock").await?;
    println!(
        "add(1, 2) = {}",
        math_caller.call::<_, i64>("add", &(1, 2)).await?
    );

    // Print what happens to the caller's connection.
    let mut events = caller.connection_events();
    let watcher = tokio::spawn(async move {
        while let Some(event) = events.next().await {
            println!("caller: {event:?}");
            if matches!(event, ConnectionEvent::Restored) {
                break;
            }
        }
    });

    println!("stopping the broker");
    broker.shutdown().await;
    // Made while the broker is away: it waits for the restoration.
    let pending = tokio::spawn(async move { math_caller.call::<_, i64>("add", &(20, 22)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    println!("starting it again");
    let broker = start_broker(&addr).await?;
    let answer = pending.await.expect("the call's task runs to its end")?;
    println!("add(20, 22), called while it was away = {answer}");
    let _ = watcher.await;

    // The subscription was told of the gap, and goes on.
    clock.publish("tick", &"after the restart").await?;
    for _ in 0..2 {
        match tokio::time::timeout(Duration::from_secs(5), ticks.next()).await {
            Ok(Some(Ok(Event::Interrupted))) => println!("subscriber: interrupted, then resumed"),
            Ok(Some(Ok(Event::Message(p)))) => {
                println!("subscriber: {}", p.decode::<String>()?)
            }
            other => println!("subscriber: {other:?}"),
        }
    }
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
