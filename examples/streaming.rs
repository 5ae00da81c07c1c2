//! Server streams: lazy reading, and cancellation by dropping the stream.
//!
//! 1. `count` streams 1,000 numbers. The server sends only as far ahead of
//!    the reader as the client's window allows (here 16 items), so a slow
//!    reader slows the producer down instead of filling memory.
//! 2. `ticks` streams forever. The client drops it after 10 items; that
//!    cancels the stream on the server, which drops the handler's stream,
//!    and a drop guard inside it prints "server: stream cancelled".
//!
//! Run it with `cargo run --example streaming`.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use busline::rpc::{Client, Router, Server};
use busline::{Address, CborCodec, MemoryTransport};
use futures::{stream, StreamExt};
use tokio::sync::Notify;

/// Lives inside the `ticks` stream; dropped when the server drops the stream.
struct OnCancel(Arc<Notify>);

impl Drop for OnCancel {
    fn drop(&mut self) {
        println!("server: stream cancelled");
        self.0.notify_one();
    }
}

#[tokio::main]
async fn main() -> busline::Result<()> {
    // How many items the server has produced so far, to watch the pacing.
    let produced = Arc::new(AtomicUsize::new(0));
    // Signalled by the drop guard, so main can wait for the server side.
    let cancelled = Arc::new(Notify::new());

    let router = Router::new()
        .stream("count", {
            let produced = produced.clone();
            move |n: u64| {
                let produced = produced.clone();
                stream::iter(0..n).map(move |i| {
                    produced.fetch_add(1, Ordering::Relaxed);
                    Ok::<_, String>(i)
                })
            }
        })
        .stream("ticks", {
            let cancelled = cancelled.clone();
            move |(): ()| {
                // The guard is part of the stream's state, so it is dropped
                // exactly when the server drops the stream.
                let guard = OnCancel(cancelled.clone());
                stream::unfold((0u64, guard), |(i, guard)| async move {
                    Some((Ok::<_, String>(i), (i + 1, guard)))
                })
            }
        });

    let addr = Address::memory("streaming");
    let server = Server::builder(router, CborCodec::new())
        .bind(&MemoryTransport::new(), &addr)
        .await?;
    let client = Client::builder(CborCodec::new())
        .stream_window(16)
        .connect(&MemoryTransport::new(), &addr)
        .await?;

    // 1. A long stream, read lazily.
    let mut numbers = client.stream::<_, u64>("count", &1_000u64).await?;
    let mut sum = 0;
    for _ in 0..5 {
        sum += numbers.next().await.expect("more items")?;
    }
    tokio::time::sleep(Duration::from_millis(100)).await; // let the server run ahead
    println!(
        "client: read 5 items; server has produced {} of 1000 (window: 16)",
        produced.load(Ordering::Relaxed)
    );
    let mut read = 5;
    while let Some(n) = numbers.next().await {
        sum += n?;
        read += 1;
    }
    println!("client: read all {read} items, sum = {sum}");

    // 2. An endless stream, dropped after 10 items.
    let ticks: Vec<u64> = client
        .stream::<_, u64>("ticks", &())
        .await?
        .take(10) // stop reading after 10 items; the stream is dropped here
        .map(|tick| tick.expect("tick"))
        .collect()
        .await;
    println!("client: got {ticks:?}, dropped the stream");
    tokio::time::timeout(Duration::from_secs(5), cancelled.notified())
        .await
        .expect("the server saw the cancellation");
    println!("client: the server stopped producing");

    server.shutdown().await;
    Ok(())
}
