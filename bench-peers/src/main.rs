//! busline's broker against NATS, the same shapes in one run, so ratios
//! hold on a noisy machine: a small request/reply (median and p99 over
//! 2000 sequential calls), calls per second with 64 in flight, and
//! publications fanned out to 1, 10 and 100 subscribers (deliveries per
//! second; drops counted on both sides).
//!
//! busline's broker runs twice: in a process of its own, as `busline
//! broker` and `nats-server` are deployed (this program started again with
//! `broker <socket>`, a two-thread runtime like the clients'), and
//! embedded in this program beside its clients, which NATS cannot do.
//!
//! Needs `nats-server` on PATH (Debian: `apt-get install nats-server`).
//! Run: `cargo run --release --manifest-path bench-peers/Cargo.toml`.
//!
//! Point to point instead: `... -- rpc` compares calls with the raw
//! socket, tarpc, jsonrpsee and tonic (`rpc_peers.rs`), `... -- sweep`
//! sweeps the payload from 64 B to 4 MiB (`sweep.rs`), `... --
//! connections` opens 1 to 1,000 connections (`connections.rs`). They
//! draw their plots into `plots/` (`plots.rs`). `... -- backbone` compares
//! brokers joined through the NATS backbone with a direct bridge
//! (`backbone.rs`).

mod backbone;
mod connections;
mod contenders;
mod plots;
mod rpc_peers;
mod sweep;
mod tonic_peer;

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
use contenders::{median_of, COOL_DOWN, WARM_UP};
use futures::{future::join_all, StreamExt};

/// The allocator the `busline` program uses, so the broker process here
/// is the daemon's equal; the clients, busline's and NATS's alike, use it
/// too.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SEQUENTIAL: usize = 2000;
const IN_FLIGHT: usize = 64;
const BATCHES: usize = 300;
const PUBLISHED: u64 = 20_000;
/// Runs of every scenario; the tables show each figure's median.
const ROUNDS: usize = 5;

/// Kills a server process when the run ends.
struct Server(Child);

impl Drop for Server {
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

async fn start_nats() -> (Server, String) {
    let port = free_port();
    // Killed when dropped, on every path out of here.
    let server = Server(
        Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                eprintln!(
                    "cannot start nats-server ({e}); install it: apt-get install nats-server"
                );
                std::process::exit(1)
            }),
    );
    let url = format!("nats://127.0.0.1:{port}");
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return (server, url);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nats-server did not start");
}

/// comm-ipc's brokered call (median, p99 in µs), measured by
/// `comm_ipc_call.py` with the Python in `$PYTHON` (default `python3`),
/// which needs `pip install comm-ipc fastapi`.
fn comm_ipc_call() -> Result<(f64, f64), String> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/comm_ipc_call.py");
    let out = Command::new(&python)
        .arg(script)
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {python}: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> Option<f64> {
        let at = text.find(&format!("\"{name}\": "))? + name.len() + 4;
        text[at..].split([',', '}']).next()?.trim().parse().ok()
    };
    match (out.status.success(), field("median_us"), field("p99_us")) {
        (true, Some(median), Some(p99)) => Ok((median, p99)),
        _ => Err(format!(
            "{python} {script} failed (pip install comm-ipc fastapi)"
        )),
    }
}

/// Each figure's median over the rounds.
fn median(mut rounds: Vec<Row>) -> Row {
    let pick = |f: &dyn Fn(&Row) -> f64| median_of(rounds.iter().map(f).collect());
    let mut row = Row {
        median_us: pick(&|r| r.median_us),
        p99_us: pick(&|r| r.p99_us),
        calls_per_s: pick(&|r| r.calls_per_s),
        fan_out: Vec::new(),
    };
    for i in 0..rounds[0].fan_out.len() {
        let n = rounds[0].fan_out[i].0;
        let rate = pick(&|r| r.fan_out[i].1);
        let dropped = rounds.iter().map(|r| r.fan_out[i].2).sum();
        row.fan_out.push((n, rate, dropped));
    }
    rounds.clear();
    row
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

/// The broker process: serve `socket` until killed.
async fn run_broker(socket: &str) {
    let broker = Broker::builder()
        .listen(
            UnixTransport::new(),
            Address::unix(socket),
            CborCodec::new(),
        )
        .start()
        .await
        .expect("broker starts");
    std::future::pending::<()>().await;
    drop(broker);
}

fn start_broker(socket: &std::path::Path) -> Server {
    let child = Command::new(std::env::current_exe().expect("this program"))
        .arg("broker")
        .arg(socket)
        .spawn()
        .expect("the broker process starts");
    Server(child)
}

/// The rows for a broker listening on `socket`, on channels of their own
/// for `round` (the broker serves every round, as `nats-server` does).
async fn busline_rows(socket: &std::path::Path, round: usize) -> Row {
    let addr = Address::unix(socket);
    let transport = UnixTransport::new();
    let connect = || {
        BrokerClient::connect(
            Client::builder(CborCodec::new()).retry_connect(Duration::from_secs(10)),
            &transport,
            &addr,
        )
    };
    let provider = connect().await.expect("connects");
    provider
        .open(&format!("bench{round}"))
        .await
        .expect("opens")
        .provide("echo", |x: Bytes| async move { Ok::<_, String>(x) })
        .await
        .expect("provides");
    let caller: Channel = connect()
        .await
        .expect("connects")
        .open(&format!("bench{round}"))
        .await
        .expect("opens");
    let (median_us, p99_us, calls_per_s) = backbone::measure_calls(&caller).await;

    let mut fan_out = Vec::new();
    for subscribers in [1usize, 10, 100] {
        let channel = format!("fan{subscribers}-{round}");
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
    Row {
        median_us,
        p99_us,
        calls_per_s,
        fan_out,
    }
}

/// NATS's rows for `round`; the fan-out only if `fan_out`.
async fn nats_rows(url: &str, round: usize, fan_out: bool) -> Row {
    let responder = async_nats::connect(url).await.expect("connects to NATS");
    let echo = format!("bench.echo.{round}");
    let mut requests = responder.subscribe(echo.clone()).await.expect("subscribes");
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
    let warming = Instant::now();
    while warming.elapsed() < WARM_UP {
        caller
            .request(echo.clone(), payload.clone())
            .await
            .expect("request");
    }

    let mut samples = Vec::with_capacity(SEQUENTIAL);
    for _ in 0..SEQUENTIAL {
        let start = Instant::now();
        caller
            .request(echo.clone(), payload.clone())
            .await
            .expect("request");
        samples.push(start.elapsed());
    }
    let (median_us, p99_us) = percentiles(samples);

    let start = Instant::now();
    for _ in 0..BATCHES {
        let calls = (0..IN_FLIGHT).map(|_| caller.request(echo.clone(), payload.clone()));
        for answer in join_all(calls).await {
            answer.expect("request");
        }
    }
    let calls_per_s = (BATCHES * IN_FLIGHT) as f64 / start.elapsed().as_secs_f64();

    let fanned = fan_out;
    let mut fan_out = Vec::new();
    for subscribers in [1usize, 10, 100].into_iter().filter(|_| fanned) {
        let subject = format!("fan{subscribers}.{round}");
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

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("rpc") => return rpc_peers::run(),
        Some("backbone") => return backbone::run(),
        Some("sweep") => return sweep::run(),
        Some("connections") => return connections::run(),
        Some("connections-one") => {
            let n = args.get(3).and_then(|n| n.parse().ok()).expect("a count");
            return connections::run_one(&args[2], n);
        }
        _ => {}
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(brokers(args));
}

/// The broker against NATS (and comm-ipc's broker), or with `broker
/// <socket>`, the broker process it measures.
async fn brokers(args: Vec<String>) {
    if let [_, command, socket] = args.as_slice() {
        if command == "broker" {
            return run_broker(socket).await;
        }
    }
    let dir = std::env::temp_dir().join(format!("busline-peers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let (_nats, url) = start_nats().await;
    // Both brokers serve every round, as nats-server does: none pays for
    // its first requests' memory in a round and not the others.
    let process_socket = dir.join("process.sock");
    let _process_broker = start_broker(&process_socket);
    let embedded_socket = dir.join("embedded.sock");
    let embedded_broker = Broker::builder()
        .listen(
            UnixTransport::new(),
            Address::unix(&embedded_socket),
            CborCodec::new(),
        )
        .start()
        .await
        .expect("broker starts");

    // Rounds take turns, so a slow spell of the machine hits all three.
    let (mut process, mut embedded, mut nats) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        // The broker in its own process, as `busline broker` runs it.
        tokio::time::sleep(COOL_DOWN).await;
        process.push(busline_rows(&process_socket, round).await);

        // The broker embedded in this program, beside its clients.
        tokio::time::sleep(COOL_DOWN).await;
        embedded.push(busline_rows(&embedded_socket, round).await);

        tokio::time::sleep(COOL_DOWN).await;
        nats.push(nats_rows(&url, round, true).await);
    }
    embedded_broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    let (process, embedded, nats) = (median(process), median(embedded), median(nats));
    let comm_ipc = comm_ipc_call();

    println!("| scenario | busline broker process | busline broker embedded | NATS | process / NATS | embedded / NATS |");
    println!("| --- | --- | --- | --- | --- | --- |");
    let time = |name: &str, f: fn(&Row) -> f64| {
        println!(
            "| {name} | {:.1} µs | {:.1} µs | {:.1} µs | {:.2}x the time | {:.2}x the time |",
            f(&process),
            f(&embedded),
            f(&nats),
            f(&process) / f(&nats),
            f(&embedded) / f(&nats)
        )
    };
    time("request/reply median", |r| r.median_us);
    time("request/reply p99", |r| r.p99_us);
    match comm_ipc {
        Ok((median_us, p99_us)) => {
            println!(
                "| comm-ipc request/reply median, p99 | {median_us:.1} µs, {p99_us:.1} µs: {:.1}x the process broker's time, {:.1}x the embedded one's | | | | |",
                median_us / process.median_us,
                median_us / embedded.median_us
            );
        }
        Err(why) => println!("| comm-ipc request/reply | not measured: {why} | | | | |"),
    }
    println!(
        "| calls/s, 64 in flight | {:.0} | {:.0} | {:.0} | {:.2}x the rate | {:.2}x the rate |",
        process.calls_per_s,
        embedded.calls_per_s,
        nats.calls_per_s,
        process.calls_per_s / nats.calls_per_s,
        embedded.calls_per_s / nats.calls_per_s
    );
    for (i, (n, nats_rate, nats_dropped)) in nats.fan_out.iter().enumerate() {
        let (_, p_rate, p_dropped) = process.fan_out[i];
        let (_, e_rate, e_dropped) = embedded.fan_out[i];
        println!(
            "| fan-out to {n}: deliveries/s (dropped in all rounds) | {p_rate:.0} ({p_dropped}, counted) | {e_rate:.0} ({e_dropped}, counted) | {nats_rate:.0} ({nats_dropped}) | {:.2}x the rate | {:.2}x the rate |",
            p_rate / nats_rate,
            e_rate / nats_rate
        );
    }
}
