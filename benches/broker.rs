//! The broker's cost: a call through it against the same call made
//! directly, with 1 and 64 in flight, and publications fanned out to 1, 10
//! and 100 subscribers (messages delivered per second, drops counted); and
//! the same call from brokers one and two bridges away from the provider;
//! and the call made over HTTP through the gateway. Everything over Unix
//! sockets with CBOR (the gateway's HTTP on loopback TCP), measured in one
//! run.
//!
//! Run: `cargo bench --bench broker`.

mod support;

use support::{runtime, socket_path};

use std::time::Duration;

use busline::{
    bridge::{Bridge, BridgeHandle},
    broker::{Broker, BrokerClient, BrokerHandle, Channel, Event},
    rpc::{Client, Router, Server, ServerHandle},
    Address, CborCodec, UnixTransport,
};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use futures::{future::join_all, StreamExt};
use tokio::{
    runtime::Runtime,
    sync::{mpsc, oneshot},
};

const IN_FLIGHT: usize = 64;
const PUBLISHED: u64 = 1000;

fn socket(name: &str) -> Address {
    let path = socket_path(name);
    let _ = std::fs::remove_file(&path);
    Address::unix(path)
}

async fn bus(addr: &Address) -> BrokerClient {
    BrokerClient::connect(
        Client::builder(CborCodec::new()),
        &UnixTransport::new(),
        addr,
    )
    .await
    .expect("connects to the broker")
}

/// A direct server and client, a broker with a provider and a caller, and
/// two more brokers in a line behind it, joined by bridges, with a caller
/// each.
struct Rig {
    direct: Client,
    /// Callers by name: through the broker, one bridge away, two.
    brokered: Vec<(&'static str, Channel)>,
    _server: ServerHandle,
    _brokers: Vec<BrokerHandle>,
    _bridges: Vec<BridgeHandle>,
    _provider: BrokerClient,
}

async fn start_broker(name: &str) -> (BrokerHandle, Address) {
    let broker = Broker::builder()
        .id(name)
        .listen(UnixTransport::new(), socket(name), CborCodec::new())
        .start()
        .await
        .expect("broker starts");
    let addr = broker.local_addrs()[0].clone();
    (broker, addr)
}

/// A caller on the broker at `addr`, once calls from there get through.
async fn caller(addr: &Address) -> Channel {
    let channel = bus(addr).await.open("bench").await.expect("opens");
    while channel.call::<_, u64>("echo", &1).await.is_err() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    channel
}

async fn rig() -> Rig {
    let echo = |x: u64| async move { Ok::<_, String>(x) };
    let server = Server::builder(Router::new().unary("echo", echo), CborCodec::new())
        .bind(&UnixTransport::new(), &socket("direct"))
        .await
        .expect("server binds");
    let direct = Client::builder(CborCodec::new())
        .connect(&UnixTransport::new(), server.local_addr())
        .await
        .expect("client connects");
    let (broker, addr) = start_broker("broker").await;
    let provider = bus(&addr).await;
    provider
        .open("bench")
        .await
        .expect("opens")
        .provide("echo", echo)
        .await
        .expect("provides");
    let (one, one_addr) = start_broker("one-hop").await;
    let (two, two_addr) = start_broker("two-hops").await;
    let mut bridges = Vec::new();
    for (x, y) in [(&addr, &one_addr), (&one_addr, &two_addr)] {
        let bridge = Bridge::builder().start(bus(x).await, bus(y).await).await;
        bridges.push(bridge.expect("bridge starts"));
    }
    let brokered = vec![
        ("through_broker", caller(&addr).await),
        ("one_bridge_hop", caller(&one_addr).await),
        ("two_bridge_hops", caller(&two_addr).await),
    ];
    Rig {
        direct,
        brokered,
        _server: server,
        _brokers: vec![broker, one, two],
        _bridges: bridges,
        _provider: provider,
    }
}

/// `in_flight` echo calls on `channel` at once, each answered.
async fn echoes(channel: Channel, in_flight: usize) {
    let calls = (0..in_flight as u64).map(|i| {
        let channel = channel.clone();
        async move { channel.call::<_, u64>("echo", &i).await }
    });
    for answer in join_all(calls).await {
        answer.expect("call");
    }
}

/// Run `n` iterations of `op` inside the runtime and time them there.
fn timed<F, Fut>(rt: &Runtime, n: u64, op: F) -> Duration
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    rt.block_on(rt.spawn(async move {
        let start = std::time::Instant::now();
        for _ in 0..n {
            op().await;
        }
        start.elapsed()
    }))
    .expect("benchmark task")
}

fn calls(c: &mut Criterion) {
    let rt = runtime();
    let rig = rt.block_on(rig());
    let mut group = c.benchmark_group("broker_call");
    for (in_flight, label) in [(1, "1_in_flight"), (IN_FLIGHT, "64_in_flight")] {
        group.throughput(Throughput::Elements(in_flight as u64));
        let direct = rig.direct.clone();
        group.bench_function(BenchmarkId::new("direct", label), |b| {
            b.iter_custom(|n| {
                let client = direct.clone();
                timed(&rt, n, move || {
                    let client = client.clone();
                    async move {
                        let calls = (0..in_flight as u64).map(|i| {
                            let client = client.clone();
                            async move { client.call::<_, u64>("echo", &i).await }
                        });
                        for answer in join_all(calls).await {
                            answer.expect("call");
                        }
                    }
                })
            })
        });
        for (name, channel) in &rig.brokered {
            group.bench_function(BenchmarkId::new(*name, label), |b| {
                b.iter_custom(|n| {
                    let channel = channel.clone();
                    timed(&rt, n, move || echoes(channel.clone(), in_flight))
                })
            });
        }
    }
    group.finish();
}

/// One subscriber, counting what it gets when asked.
fn count_events(
    mut sub: busline::broker::Subscription,
) -> mpsc::Sender<(u64, oneshot::Sender<u64>)> {
    let (tx, mut rx) = mpsc::channel::<(u64, oneshot::Sender<u64>)>(1);
    tokio::spawn(async move {
        while let Some((expected, done)) = rx.recv().await {
            let (mut seen, mut dropped) = (0, 0);
            while seen + dropped < expected {
                match sub.next().await {
                    Some(Ok(Event::Message(_))) => seen += 1,
                    Some(Ok(Event::Lagged(n))) => dropped += n,
                    other => panic!("subscription ended: {other:?}"),
                }
            }
            let _ = done.send(dropped);
        }
    });
    tx
}

fn fan_out(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("broker_fan_out");
    let (broker, addr) = rt.block_on(async {
        let broker = Broker::builder()
            .listen(UnixTransport::new(), socket("fanout"), CborCodec::new())
            .start()
            .await
            .expect("broker starts");
        let addr = broker.local_addrs()[0].clone();
        (broker, addr)
    });
    for subscribers in [1usize, 10, 100] {
        let (publisher, counters, _clients) = rt.block_on(async {
            let channel = format!("fan{subscribers}");
            let mut counters = Vec::new();
            let mut clients = Vec::new();
            for _ in 0..subscribers {
                let client = bus(&addr).await;
                let sub = client
                    .open(&channel)
                    .await
                    .expect("opens")
                    .subscribe(">")
                    .await
                    .expect("subscribes");
                counters.push(count_events(sub));
                clients.push(client);
            }
            let publisher = bus(&addr).await.open(&channel).await.expect("opens");
            (publisher, counters, clients)
        });
        group.throughput(Throughput::Elements(PUBLISHED * subscribers as u64));
        group.bench_function(BenchmarkId::new("subscribers", subscribers), |b| {
            b.iter_custom(|n| {
                let (publisher, counters) = (publisher.clone(), counters.clone());
                let mut dropped = 0;
                let elapsed = rt.block_on(async {
                    let start = std::time::Instant::now();
                    for _ in 0..n {
                        let mut done = Vec::new();
                        for counter in &counters {
                            let (tx, rx) = oneshot::channel();
                            counter.send((PUBLISHED, tx)).await.expect("counter runs");
                            done.push(rx);
                        }
                        for i in 0..PUBLISHED {
                            publisher.publish("tick", &i).await.expect("publishes");
                        }
                        for rx in done {
                            dropped += rx.await.expect("counted");
                        }
                    }
                    start.elapsed()
                });
                if dropped > 0 {
                    eprintln!(
                        "  {subscribers} subscribers: {dropped} publications dropped and counted"
                    );
                }
                elapsed
            })
        });
    }
    group.finish();
    rt.block_on(broker.shutdown());
}

/// A call through the broker, made by a busline client and over HTTP
/// through the gateway (JSON, a kept-alive connection per call in flight).
fn gateway(c: &mut Criterion) {
    let rt = runtime();
    let (broker, _provider, caller, url) = rt.block_on(async {
        let (broker, addr) = start_broker("gateway").await;
        let provider = bus(&addr).await;
        let echo = |x: u64| async move { Ok::<_, String>(x) };
        let channel = provider.open("bench").await.expect("opens");
        channel.provide("echo", echo).await.expect("provides");
        let gateway = busline::gateway::Gateway::builder(bus(&addr).await).build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let url = format!(
            "http://{}/v1/channels/bench/call/echo",
            listener.local_addr().expect("bound")
        );
        tokio::spawn(async move { gateway.serve(listener, std::future::pending()).await });
        (broker, provider, caller(&addr).await, url)
    });
    let http = reqwest::Client::new();
    let mut group = c.benchmark_group("broker_gateway");
    for (in_flight, label) in [(1, "1_in_flight"), (IN_FLIGHT, "64_in_flight")] {
        group.throughput(Throughput::Elements(in_flight as u64));
        let channel = caller.clone();
        group.bench_function(BenchmarkId::new("busline_client", label), |b| {
            b.iter_custom(|n| {
                let channel = channel.clone();
                timed(&rt, n, move || echoes(channel.clone(), in_flight))
            })
        });
        let (http, url) = (http.clone(), url.clone());
        group.bench_function(BenchmarkId::new("http_through_gateway", label), |b| {
            b.iter_custom(|n| {
                let (http, url) = (http.clone(), url.clone());
                timed(&rt, n, move || {
                    let (http, url) = (http.clone(), url.clone());
                    async move {
                        let calls = (0..in_flight as u64).map(|i| {
                            let request = http.post(&url).body(i.to_string());
                            async move { request.send().await?.error_for_status()?.text().await }
                        });
                        for answer in join_all(calls).await {
                            answer.expect("HTTP call");
                        }
                    }
                })
            })
        });
    }
    group.finish();
    rt.block_on(broker.shutdown());
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    targets = calls, fan_out, gateway
}
criterion_main!(benches);
