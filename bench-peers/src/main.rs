//! busline's broker against NATS, the same shapes in one run, so ratios
//! hold on a noisy machine: a small request/reply (median and p99 over
//! 2000 sequential calls), calls per second with 64 in flight, and
//! publications fanned out to 1, 10 and 100 subscribers (deliveries per
//! second; drops counted on both sides).
//!
//! Needs `nats-server` on PATH (Debian: `apt-get install nats-server`).
//! Run: `cargo run --release --manifest-path bench-peers/Cargo.toml`.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use busline::{
    broker::{Broker, BrokerClient, Channel, Event},
    rpc::Client,
    Address, CborCodec, UnixTransport,
};
use bytes::Bytes;
use futures::{future::join_all, StreamExt};

const SEQUENTIAL: usize = 2000;
const IN_FLIGHT: usize = 64;
const BATCHES: usize = 300;
const PUBLISHED: u64 = 2000;

/// Kills the NATS server when the run ends.
struct Nats(Child);

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn start_nats() -> (Nats, String) {
    let port = free_port();
    let child = Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            eprintln!("cannot start nats-server ({e}); install it: apt-get install nats-server");
            std::process::exit(1)
        });
    let url = format!("nats://127.0.0.1:{port}");
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return (Nats(child), url);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nats-server did not start");
}

/// Median and 99th percentile, in microseconds.
fn percentiles(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    (at(0.5), at(0.99))
}

struct Row {
    median_us: f64,
    p99_us: f64,
    calls_per_s: f64,
    fan_out: Vec<(usize, f64, u64)>,
}

async fn busline_rows() -> Row {
    let dir = std::env::temp_dir().join(format!("busline-peers-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let addr = Address::unix(dir.join("broker.sock"));
    let _ = std::fs::remove_file(dir.join("broker.sock"));
    let broker = Broker::builder()
        .listen(UnixTransport::new(), addr.clone(), CborCodec::new())
        .start()
        .await
        .expect("broker starts");
    let transport = UnixTransport::new();
    let connect = || BrokerClient::connect(Client::builder(CborCodec::new()), &transport, &addr);
    let provider = connect().await.expect("connects");
    provider
        .open("bench")
        .await
        .expect("opens")
        .provide("echo", |x: Bytes| async move { Ok::<_, String>(x) })
        .await
        .expect("provides");
    let caller: Channel = connect()
        .await
        .expect("connects")
        .open("bench")
        .await
        .expect("opens");
    let payload = Bytes::from_static(&[7u8; 32]);

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

    let start = Instant::now();
    for _ in 0..BATCHES {
        let calls = (0..IN_FLIGHT).map(|_| caller.call::<_, Bytes>("echo", &payload));
        for answer in join_all(calls).await {
            answer.expect("call");
        }
    }
    let calls_per_s = (BATCHES * IN_FLIGHT) as f64 / start.elapsed().as_secs_f64();

    let mut fan_out = Vec::new();
    for subscribers in [1usize, 10, 100] {
        let channel = format!("fan{subscribers}");
        let mut subs = Vec::new();
        let mut clients = Vec::new();
        for _ in 0..subscribers {
            let client = connect().await.expect("connects");
            subs.push(
                client
                    .open(&channel)
                    .await
                    .expect("opens")
                    .subscribe(">")
                    .await
                    .expect("subscribes"),
            );
            clients.push(client);
        }
        let publisher = connect()
            .await
            .expect("connects")
            .open(&channel)
            .await
            .expect("opens");
        let start = Instant::now();
        let readers = subs.into_iter().map(|mut sub| {
            tokio::spawn(async move {
                let (mut seen, mut dropped) = (0u64, 0u64);
                while seen + dropped < PUBLISHED {
                    match sub.next().await {
                        Some(Ok(Event::Message(_))) => seen += 1,
                        Some(Ok(Event::Lagged(n))) => dropped += n,
                        other => panic!("subscription ended: {other:?}"),
                    }
                }
                (seen, dropped)
            })
        });
        let readers: Vec<_> = readers.collect();
        for i in 0..PUBLISHED {
            publisher.publish("tick", &i).await.expect("publishes");
        }
        let mut delivered = 0;
        let mut dropped = 0;
        for reader in readers {
            let (seen, lost) = reader.await.expect("reader");
            delivered += seen;
            dropped += lost;
        }
        fan_out.push((
            subscribers,
            delivered as f64 / start.elapsed().as_secs_f64(),
            dropped,
        ));
    }
    broker.shutdown().await;
    Row {
        median_us,
        p99_us,
        calls_per_s,
        fan_out,
    }
}

async fn nats_rows(url: &str) -> Row {
    let responder = async_nats::connect(url).await.expect("connects to NATS");
    let mut requests = responder.subscribe("bench.echo").await.expect("subscribes");
    let answering = responder.clone();
    tokio::spawn(async move {
        while let Some(msg) = requests.next().await {
            if let Some(reply) = msg.reply {
                let _ = answering.publish(reply, msg.payload).await;
            }
        }
    });
    responder.flush().await.expect("flushes");
    let caller = async_nats::connect(url).await.expect("connects to NATS");
    let payload = Bytes::from_static(&[7u8; 32]);

    let mut samples = Vec::with_capacity(SEQUENTIAL);
    for _ in 0..SEQUENTIAL {
        let start = Instant::now();
        caller
            .request("bench.echo", payload.clone())
            .await
            .expect("request");
        samples.push(start.elapsed());
    }
    let (median_us, p99_us) = percentiles(samples);

    let start = Instant::now();
    for _ in 0..BATCHES {
        let calls = (0..IN_FLIGHT).map(|_| caller.request("bench.echo", payload.clone()));
        for answer in join_all(calls).await {
            answer.expect("request");
        }
    }
    let calls_per_s = (BATCHES * IN_FLIGHT) as f64 / start.elapsed().as_secs_f64();

    let mut fan_out = Vec::new();
    for subscribers in [1usize, 10, 100] {
        let subject = format!("fan{subscribers}");
        let mut readers = Vec::new();
        for _ in 0..subscribers {
            let client = async_nats::connect(url).await.expect("connects");
            let mut sub = client.subscribe(subject.clone()).await.expect("subscribes");
            client.flush().await.expect("flushes");
            readers.push(tokio::spawn(async move {
                let _client = client;
                let mut seen = 0u64;
                // NATS drops for slow consumers without telling the
                // subscriber how many: stop at a quiet second.
                while seen < PUBLISHED {
                    match tokio::time::timeout(Duration::from_secs(1), sub.next()).await {
                        Ok(Some(_)) => seen += 1,
                        _ => break,
                    }
                }
                seen
            }));
        }
        let publisher = async_nats::connect(url).await.expect("connects");
        let start = Instant::now();
        for i in 0..PUBLISHED {
            publisher
                .publish(subject.clone(), Bytes::from(i.to_le_bytes().to_vec()))
                .await
                .expect("publishes");
        }
        publisher.flush().await.expect("flushes");
        let mut delivered = 0;
        for reader in readers {
            delivered += reader.await.expect("reader");
        }
        let elapsed = start.elapsed();
        let dropped = PUBLISHED * subscribers as u64 - delivered;
        fan_out.push((
            subscribers,
            delivered as f64 / elapsed.as_secs_f64(),
            dropped,
        ));
    }
    Row {
        median_us,
        p99_us,
        calls_per_s,
        fan_out,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (_nats, url) = start_nats().await;
    let ours = busline_rows().await;
    let theirs = nats_rows(&url).await;
    println!("| scenario | busline broker (Unix, CBOR) | NATS (TCP loopback) | busline / NATS |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| request/reply median | {:.1} µs | {:.1} µs | {:.2}x the time |",
        ours.median_us,
        theirs.median_us,
        ours.median_us / theirs.median_us
    );
    println!(
        "| request/reply p99 | {:.1} µs | {:.1} µs | {:.2}x the time |",
        ours.p99_us,
        theirs.p99_us,
        ours.p99_us / theirs.p99_us
    );
    println!(
        "| calls/s, 64 in flight | {:.0} | {:.0} | {:.2}x the rate |",
        ours.calls_per_s,
        theirs.calls_per_s,
        ours.calls_per_s / theirs.calls_per_s
    );
    for ((n, ours_rate, ours_dropped), (_, nats_rate, nats_dropped)) in
        ours.fan_out.iter().zip(&theirs.fan_out)
    {
        println!(
            "| fan-out to {n}: deliveries/s (dropped) | {ours_rate:.0} ({ours_dropped}, counted) | {nats_rate:.0} ({nats_dropped}) | {:.2}x the rate |",
            ours_rate / nats_rate
        );
    }
}
