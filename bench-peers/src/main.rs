//! busline's broker against NATS, the same shapes in one run, so ratios
//! hold on a noisy machine: a small request/reply (median and p99 over
//! 2000 sequential calls), calls per second with 64 in flight, and
//! publications fanned out to 1, 10 and 100 subscribers (deliveries per
//! second, paced so no queue fills; drops counted on both sides; see
//! `fan_out.rs`).
//!
//! busline's broker runs three ways: in a process of its own, as `busline
//! broker` and `nats-server` are deployed (this program started again with
//! `broker <socket> <threads> [spin]`), on one thread (`busline --threads
//! 1`), on one thread with its connections polling before they sleep
//! (`busline --threads 1 broker --spin`) and on two threads (the default
//! on a two-core machine); and embedded in this
//! program beside its clients, which NATS cannot do. The clients run on
//! a two-thread runtime.
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
//! (`backbone.rs`). `... -- quick ...` takes a quick look at one thing,
//! for comparing two builds or for a profiler (`quick.rs`).

mod backbone;
mod connections;
mod contenders;
mod fan_out;
mod plots;
mod quick;
mod rpc_peers;
mod sweep;
mod tonic_peer;

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use busline::{
    broker::{Broker, BrokerClient, Channel},
    Address, CborCodec, Spin, UnixTransport,
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
    fan_out: Vec<fan_out::FanOut>,
}

/// The broker process: serve `socket` on `threads` threads (1: the
/// one-thread runtime `busline --threads 1` uses), its connections
/// polling before they sleep if `spin` (`busline broker --spin`), until
/// killed.
fn run_broker(socket: &str, threads: usize, spin: bool) {
    let runtime = match threads {
        1 => contenders::current_thread(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()
            .expect("runtime"),
    };
    runtime.block_on(async {
        let spin = if spin { Spin::ADAPTIVE } else { Spin::NONE };
        let _broker = Broker::builder()
            .spin(spin)
            .listen(
                UnixTransport::new(),
                Address::unix(socket),
                CborCodec::new(),
            )
            .start()
            .await
            .expect("broker starts");
        std::future::pending::<()>().await
    })
}

fn start_broker(socket: &std::path::Path, threads: usize, spin: bool) -> Server {
    let child = Command::new(std::env::current_exe().expect("this program"))
        .arg("broker")
        .arg(socket)
        .arg(threads.to_string())
        .args(spin.then_some("spin"))
        .spawn()
        .expect("the broker process starts");
    Server(child)
}

/// A provider answering `echo` on channel `name` of the broker at
/// `socket`, and a caller of it; the provider's client lives as long as
/// the caller is used.
async fn echo_channel(socket: &std::path::Path, name: &str) -> (BrokerClient, Channel) {
    let provider = fan_out::connect(socket).await;
    provider
        .open(name)
        .await
        .expect("opens")
        .provide("echo", |x: Bytes| async move { Ok::<_, String>(x) })
        .await
        .expect("provides");
    let caller = fan_out::connect(socket)
        .await
        .open(name)
        .await
        .expect("opens");
    (provider, caller)
}

/// The rows for a broker listening on `socket`, on channels of their own
/// for `round` (the broker serves every round, as `nats-server` does).
async fn busline_rows(socket: &std::path::Path, round: usize) -> Row {
    let (_provider, caller) = echo_channel(socket, &format!("bench{round}")).await;
    let (median_us, p99_us, calls_per_s) = backbone::measure_calls(&caller).await;

    let fan_out = fan_out::busline(socket, round).await;
    Row {
        median_us,
        p99_us,
        calls_per_s,
        fan_out,
    }
}

/// NATS's rows for `round`; the fan-out only if `with_fan_out`.
async fn nats_rows(url: &str, round: usize, with_fan_out: bool) -> Row {
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

    let fan_out = if with_fan_out {
        fan_out::nats(url, round).await
    } else {
        Vec::new()
    };
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
        Some("broker") => {
            let threads = args.get(3).and_then(|n| n.parse().ok()).expect("a count");
            let spin = args.get(4).is_some_and(|arg| arg == "spin");
            return run_broker(&args[2], threads, spin);
        }
        Some("quick") => return quick::run(&args[2..]),
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
        .block_on(brokers());
}

/// One way of running busline's broker, and its figures round by round.
struct Contender {
    name: &'static str,
    socket: std::path::PathBuf,
    rounds: Vec<Row>,
}

/// The broker against NATS (and comm-ipc's broker).
async fn brokers() {
    let dir = std::env::temp_dir().join(format!("busline-peers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let (_nats, url) = start_nats().await;
    // Every broker serves every round, as nats-server does: none pays for
    // its first requests' memory in a round and not the others.
    let contender = |name, file| Contender {
        name,
        socket: dir.join(file),
        rounds: Vec::new(),
    };
    let mut contenders = [
        // In a process of its own, as `busline broker` runs, on one thread
        // (`--threads 1`) and on two (the default here).
        contender("busline broker process, 1 thread", "one.sock"),
        // The same, polling before it sleeps (`busline broker --spin`).
        contender("busline broker process, 1 thread, spin", "spin.sock"),
        contender("busline broker process, 2 threads", "two.sock"),
        // Embedded in this program, beside its clients.
        contender("busline broker embedded", "embedded.sock"),
    ];
    let _processes = [
        start_broker(&contenders[0].socket, 1, false),
        start_broker(&contenders[1].socket, 1, true),
        start_broker(&contenders[2].socket, 2, false),
    ];
    let embedded_broker = Broker::builder()
        .listen(
            UnixTransport::new(),
            Address::unix(&contenders[3].socket),
            CborCodec::new(),
        )
        .start()
        .await
        .expect("broker starts");

    // Rounds take turns, so a slow spell of the machine hits every one.
    let mut nats = Vec::new();
    for round in 0..ROUNDS {
        for contender in &mut contenders {
            tokio::time::sleep(COOL_DOWN).await;
            contender
                .rounds
                .push(busline_rows(&contender.socket, round).await);
        }
        tokio::time::sleep(COOL_DOWN).await;
        nats.push(nats_rows(&url, round, true).await);
    }
    embedded_broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    let nats = median(nats);
    let busline: Vec<(&str, Row)> = contenders
        .into_iter()
        .map(|c| (c.name, median(c.rounds)))
        .collect();
    print_table(&busline, &nats);
    draw(&busline, &nats);
}

/// The plots of the table: request/reply time, and fan-out against
/// subscribers.
fn draw(busline: &[(&str, Row)], nats: &Row) {
    let all = || {
        busline
            .iter()
            .map(|(name, row)| (*name, row))
            .chain([("NATS", nats)])
    };
    let times: Vec<(&str, f64)> = all().map(|(name, row)| (name, row.median_us)).collect();
    plots::bars(
        "broker-round-trip.svg",
        "Request/reply through a broker, median (32-byte echo, lower is better)",
        "µs",
        &times,
    );
    let subscribers: Vec<f64> = nats.fan_out.iter().map(|f| f.0 as f64).collect();
    let rates: Vec<(&str, Vec<f64>)> = all()
        .map(|(name, row)| (name, row.fan_out.iter().map(|f| f.1).collect()))
        .collect();
    plots::lines(
        "broker-fan-out.svg",
        "Deliveries per second against subscribers (paced so no queue fills)",
        ("subscribers", "deliveries/s"),
        (true, false),
        &subscribers,
        &rates,
    );
}

/// One table: each busline broker's figures, NATS's, and each busline
/// broker's against NATS's.
fn print_table(busline: &[(&str, Row)], nats: &Row) {
    let mut header = String::from("| scenario |");
    for (name, _) in busline {
        header += &format!(" {name} |");
    }
    header += " NATS |";
    for (name, _) in busline {
        header += &format!(" {} / NATS |", name.trim_start_matches("busline broker "));
    }
    println!("{header}");
    println!("|{}", " --- |".repeat(2 + 2 * busline.len()));
    let line = |name: &str, cell: &dyn Fn(&Row) -> String, ratio: &dyn Fn(&Row) -> String| {
        let mut line = format!("| {name} |");
        for (_, row) in busline {
            line += &format!(" {} |", cell(row));
        }
        line += &format!(" {} |", cell(nats));
        for (_, row) in busline {
            line += &format!(" {} |", ratio(row));
        }
        println!("{line}");
    };
    let time = |name: &str, f: fn(&Row) -> f64| {
        line(name, &|r| format!("{:.1} µs", f(r)), &|r| {
            format!("{:.2}x the time", f(r) / f(nats))
        })
    };
    time("request/reply median", |r| r.median_us);
    time("request/reply p99", |r| r.p99_us);
    line(
        "calls/s, 64 in flight",
        &|r| format!("{:.0}", r.calls_per_s),
        &|r| format!("{:.2}x the rate", r.calls_per_s / nats.calls_per_s),
    );
    for (i, &(n, _, _)) in nats.fan_out.iter().enumerate() {
        line(
            &format!("fan-out to {n}: deliveries/s (dropped in all rounds)"),
            &|r| format!("{:.0} ({})", r.fan_out[i].1, r.fan_out[i].2),
            &|r| format!("{:.2}x the rate", r.fan_out[i].1 / nats.fan_out[i].1),
        );
    }
    match comm_ipc_call() {
        Ok((median_us, p99_us)) => {
            let mut line = format!(
                "| comm-ipc request/reply median, p99 | {median_us:.1} µs, {p99_us:.1} µs:"
            );
            for (name, row) in busline {
                line += &format!(" {:.1}x the time of the {name};", median_us / row.median_us);
            }
            println!("{line} |");
        }
        Err(why) => println!("| comm-ipc request/reply | not measured: {why} |"),
    }
}
