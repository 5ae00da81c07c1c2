//! Two brokers joined through the NATS backbone against two joined by a
//! direct bridge, and a call within one broker as the baseline: a call's
//! round trip (median and p99 over 2000 sequential calls) and calls per
//! second with 64 in flight, from a client of one broker to a provider on
//! the other. The brokers run embedded here, on the in-memory transport,
//! so the figures are the joins' own cost. Needs `nats-server` on PATH.
//!
//! Run: `cargo run --release --manifest-path bench-peers/Cargo.toml -- backbone`.

use std::time::{Duration, Instant};

use busline::{
    backbone::Backbone,
    bridge::Bridge,
    broker::{Broker, BrokerClient, BrokerHandle, Channel},
    rpc::Client,
    Address, CborCodec, MemoryTransport,
};
use bytes::Bytes;
use futures::future::join_all;

use super::{
    contenders::{median_of, COOL_DOWN, WARM_UP},
    percentiles, start_nats, BATCHES, IN_FLIGHT, ROUNDS, SEQUENTIAL,
};

async fn broker(id: &str) -> (BrokerHandle, Address) {
    let addr = Address::memory(format!("bench-backbone-{id}"));
    let broker = Broker::builder()
        .id(id)
        .listen(MemoryTransport::new(), addr.clone(), CborCodec::new())
        .start()
        .await
        .expect("broker starts");
    (broker, addr)
}

async fn client(addr: &Address) -> BrokerClient {
    BrokerClient::connect(
        Client::builder(CborCodec::new()),
        &MemoryTransport::new(),
        addr,
    )
    .await
    .expect("connects")
}

/// A provider of `echo` on the broker at `at`, kept while the run lasts.
async fn provide(at: &Address) -> BrokerClient {
    let provider = client(at).await;
    provider
        .open("bench")
        .await
        .expect("opens")
        .provide("echo", |x: Bytes| async move { Ok::<_, String>(x) })
        .await
        .expect("provides");
    provider
}

/// A caller on the broker at `at`, once its calls reach a provider.
async fn caller(at: &Address) -> Channel {
    let channel = client(at).await.open("bench").await.expect("opens");
    let deadline = Instant::now() + Duration::from_secs(30);
    while channel
        .call::<_, Bytes>("echo", &Bytes::from_static(b"x"))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the provider never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    channel
}

/// Median and p99 in µs of sequential calls, and calls/s with 64 in flight.
pub(crate) async fn measure_calls(caller: &Channel) -> (f64, f64, f64) {
    let payload = Bytes::from_static(&[7u8; 32]);
    let warming = Instant::now();
    while warming.elapsed() < WARM_UP {
        caller
            .call::<_, Bytes>("echo", &payload)
            .await
            .expect("call");
    }
    let mut samples = Vec::with_capacity(SEQUENTIAL);
    for _ in 0..SEQUENTIAL {
        let start = Instant::now();
        caller
            .call::<_, Bytes>("echo", &payload)
            .await
            .expect("call");
        samples.push(start.elapsed());
    }
    let (median_us, p99_us) = percentiles(samples);
    (median_us, p99_us, rate_in_flight(caller).await)
}

/// Calls per second through `caller`'s `echo` with [`IN_FLIGHT`] at once,
/// in batches (as NATS's requests are measured).
pub(crate) async fn rate_in_flight(caller: &Channel) -> f64 {
    let payload = Bytes::from_static(&[7u8; 32]);
    let start = Instant::now();
    for _ in 0..BATCHES {
        let calls = (0..IN_FLIGHT).map(|_| caller.call::<_, Bytes>("echo", &payload));
        for answer in join_all(calls).await {
            answer.expect("call");
        }
    }
    (BATCHES * IN_FLIGHT) as f64 / start.elapsed().as_secs_f64()
}

/// The same calls as plain NATS requests to a responder that echoes.
async fn nats_alone(url: &str) -> (f64, f64, f64) {
    let row = super::nats_rows(url, usize::MAX, false).await;
    (row.median_us, row.p99_us, row.calls_per_s)
}

pub(crate) fn run() {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(measure());
}

async fn measure() {
    let (_nats, url) = start_nats().await;
    // One pair joined by a bridge (its provider also serves the local
    // baseline), another by the backbone.
    let (bridged_a, bridged_a_addr) = broker("bridged-a").await;
    let (bridged_b, bridged_b_addr) = broker("bridged-b").await;
    let bridge = Bridge::builder()
        .start(client(&bridged_a_addr).await, client(&bridged_b_addr).await)
        .await
        .expect("bridge starts");
    let (nats_a, nats_a_addr) = broker("nats-a").await;
    let (nats_b, nats_b_addr) = broker("nats-b").await;
    let mut sides = Vec::new();
    for addr in [&nats_a_addr, &nats_b_addr] {
        let nats = async_nats::connect(&url).await.expect("connects to NATS");
        sides.push(
            Backbone::builder()
                .start(client(addr).await, nats)
                .await
                .expect("backbone starts"),
        );
    }
    let _providers = (provide(&bridged_a_addr).await, provide(&nats_a_addr).await);
    let local = caller(&bridged_a_addr).await;
    let bridged = caller(&bridged_b_addr).await;
    let across = caller(&nats_b_addr).await;

    let names = [
        "within one broker",
        "across a bridge",
        "across the NATS backbone",
        "NATS request/reply alone, for reference",
    ];
    let callers = [&local, &bridged, &across];
    let mut rounds: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); names.len()];
    // Rounds take turns, so a slow spell of the machine hits all four.
    for _ in 0..ROUNDS {
        for (i, caller) in callers.iter().enumerate() {
            tokio::time::sleep(COOL_DOWN).await;
            rounds[i].push(measure_calls(caller).await);
        }
        tokio::time::sleep(COOL_DOWN).await;
        rounds[3].push(nats_alone(&url).await);
    }
    for side in sides {
        side.shutdown().await;
    }
    bridge.shutdown().await;
    for broker in [bridged_a, bridged_b, nats_a, nats_b] {
        broker.shutdown().await;
    }

    let row = |i: usize| {
        let pick = |f: fn(&(f64, f64, f64)) -> f64| median_of(rounds[i].iter().map(f).collect());
        (pick(|r| r.0), pick(|r| r.1), pick(|r| r.2))
    };
    let (bridge_row, backbone_row) = (row(1), row(2));
    println!("| call, 32 B | median | p99 | calls/s, 64 in flight |");
    println!("| --- | --- | --- | --- |");
    for (i, name) in names.iter().enumerate() {
        let (median, p99, rate) = row(i);
        println!("| {name} | {median:.1} µs | {p99:.1} µs | {rate:.0} |");
    }
    println!(
        "| backbone / bridge | {:.2}x the time | {:.2}x the time | {:.2}x the rate |",
        backbone_row.0 / bridge_row.0,
        backbone_row.1 / bridge_row.1,
        backbone_row.2 / bridge_row.2
    );
}
