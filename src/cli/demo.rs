//! `busline demo`: the whole library in one run, on a temporary Unix socket.

use std::time::Duration;

use busline::{
    codec::AnyCodec,
    rpc::{Client, Server},
    Address, Error, Result, UnixTransport,
};
use futures::StreamExt;
use serde_json::{json, Value};

use super::service;

pub(crate) async fn run() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("busline-demo-{}", std::process::id()));
    let addr = Address::unix(dir.join("demo.sock"));
    let transport = UnixTransport::new();
    let server = Server::builder(service::router(), AnyCodec::named("cbor")?)
        .bind(&transport, &addr)
        .await?;
    println!("server   listening on {}", server.local_addr());

    let result = calls(&transport, &addr).await;
    server.shutdown().await;
    let _ = std::fs::remove_dir(&dir);
    println!(
        "server   stopped; socket removed: {}",
        !dir.join("demo.sock").exists()
    );
    result
}

async fn calls(transport: &UnixTransport, addr: &Address) -> Result<()> {
    let client = Client::builder(AnyCodec::named("cbor")?)
        .timeout(Duration::from_secs(5))
        .connect(transport, addr)
        .await?;
    println!("client   connected");

    let sum: i64 = client.call("add", &(2, 40)).await?;
    println!("call     add(2, 40) = {sum}");

    let echoed: Value = client.call("echo", &json!({"hello": "busline"})).await?;
    println!("call     echo({{\"hello\":\"busline\"}}) = {echoed}");

    let items: Vec<u64> = client
        .stream::<_, u64>("count", &5u64)
        .await?
        .map(|item| item.expect("count items"))
        .collect()
        .await;
    println!("stream   count(5) = {items:?}");

    let calls = (0..64i64).map(|i| {
        let client = client.clone();
        async move { client.call::<_, i64>("add", &(i, i)).await }
    });
    let answers = futures::future::try_join_all(calls).await?;
    println!(
        "parallel 64 calls on one connection, sum of answers = {}",
        answers.iter().sum::<i64>()
    );

    match client.call::<_, ()>("fail", &"on purpose").await {
        Err(Error::HandlerFailed { message, .. }) => {
            println!("error    fail(\"on purpose\") -> handler failed: {message}")
        }
        other => {
            return Err(Error::Protocol(format!(
                "expected a handler error, got {other:?}"
            )))
        }
    }
    match client.call::<_, ()>("missing", &()).await {
        Err(e @ Error::MethodNotFound(_)) => println!("error    missing() -> {e}"),
        other => {
            return Err(Error::Protocol(format!(
                "expected method not found, got {other:?}"
            )))
        }
    }
    let slow = client.with_timeout(Duration::from_millis(50));
    match slow.call::<_, u64>("sleep", &1000u64).await {
        Err(e @ Error::Timeout(_)) => println!("error    sleep(1000) with a 50 ms timeout -> {e}"),
        other => {
            return Err(Error::Protocol(format!(
                "expected a timeout, got {other:?}"
            )))
        }
    }
    client
        .notify("log", &"a notification: no reply expected")
        .await?;
    // Frames on one connection are dispatched in order, so once this call
    // is answered the notification has reached its handler.
    let _: Value = client.call("echo", &Value::Null).await?;
    println!("notify   log(...) delivered (the server printed it on stderr)");
    Ok(())
}
