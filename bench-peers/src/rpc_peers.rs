//! Point-to-point RPC against the raw socket, tarpc and jsonrpsee, in one
//! run (tonic too): a 64-bit echo, each side on a one-thread tokio runtime of its own
//! (as two single-threaded processes would run, and as issue 9's peer
//! figures were taken). Over a Unix socket: the raw socket, busline with
//! CBOR, tarpc with bincode; over TCP loopback: busline with CBOR and with
//! JSON-RPC, jsonrpsee over WebSocket; tonic (gRPC) over both.
//!
//! - round trip: mean, median and p99 over sequential calls (on a virtual
//!   machine the times are bimodal: a call whose peer thread is still
//!   awake is several times faster than one that has to wake it, so the
//!   mean and the median can tell different stories);
//! - the CPU time both sides spent per sequential call (what the library
//!   costs, whatever the machine's wake-ups add to the round trip);
//! - calls per second with 1, 16 and 64 calls kept in flight (a new call
//!   starts as soon as one ends).
//!
//! The raw row is the floor: 48-byte messages echoed by a plain tokio
//! Unix socket, one write per message. Rounds take turns, so a slow spell
//! of the machine hits every contender; each figure is the median of the
//! rounds.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use busline::{
    Address, CborCodec, Codec, JsonRpcCodec, ShmTransport, Spin, TcpTransport, Transport,
    UnixTransport,
};
use futures::{stream::FuturesUnordered, StreamExt};
use tokio::runtime::Runtime;

use crate::{
    contenders::{
        busline_client, busline_server, current_thread, jsonrpsee_client, jsonrpsee_server,
        median_of, raw_client, raw_server, tarpc_client, tarpc_server, Call, ServerThread,
        COOL_DOWN, WARM_UP,
    },
    plots, tonic_peer,
};

const SEQUENTIAL: usize = 5000;
const CALLS: usize = 30_000;
const IN_FLIGHT: [usize; 3] = [1, 16, 64];
const ROUNDS: usize = 3;

#[derive(Clone, Debug, Default)]
struct Row {
    mean_us: f64,
    median_us: f64,
    p99_us: f64,
    /// CPU time of both sides (all of the process's threads) per
    /// sequential call.
    cpu_us: f64,
    /// Calls per second at each of [`IN_FLIGHT`].
    rates: Vec<f64>,
}

async fn measure(call: Call) -> Row {
    let warming = Instant::now();
    for i in 0.. {
        assert_eq!(call(i).await, i);
        if warming.elapsed() > WARM_UP {
            break;
        }
    }
    let mut samples = Vec::with_capacity(SEQUENTIAL);
    let cpu_before = process_cpu();
    for i in 0..SEQUENTIAL as u64 {
        let start = Instant::now();
        assert_eq!(call(i).await, i);
        samples.push(start.elapsed());
    }
    let cpu = process_cpu().saturating_sub(cpu_before);
    samples.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let mut rates = Vec::new();
    for window in IN_FLIGHT {
        rates.push(rate(&call, window).await);
    }
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    Row {
        mean_us: us(mean),
        median_us: us(samples[samples.len() / 2]),
        p99_us: us(samples[samples.len() * 99 / 100]),
        cpu_us: us(cpu) / SEQUENTIAL as f64,
        rates,
    }
}

/// Calls per second with `window` calls kept in flight: a new call starts
/// as soon as one ends.
async fn rate(call: &Call, window: usize) -> f64 {
    let start = Instant::now();
    let mut running = FuturesUnordered::new();
    let mut next = 0u64;
    while next < window as u64 {
        running.push(call(next));
        next += 1;
    }
    while running.next().await.is_some() {
        if next < CALLS as u64 {
            running.push(call(next));
            next += 1;
        }
    }
    CALLS as f64 / start.elapsed().as_secs_f64()
}

/// CPU time spent so far by all of this process's threads (from
/// `/proc/self/task/*/schedstat`, nanoseconds on a CPU, user and kernel).
fn process_cpu() -> Duration {
    let tasks = std::fs::read_dir("/proc/self/task").expect("/proc/self/task");
    let ns: u64 = tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(ns)
}

/// busline's server at `addr` on `server`'s thread, and a client of it
/// made on `rt`.
fn busline<T: Transport + Clone, C: Codec>(
    server: &ServerThread,
    rt: &Runtime,
    local: &tokio::task::LocalSet,
    transport: T,
    addr: Address,
    codec: C,
    spin: Spin,
) -> (busline::rpc::ServerHandle, Call) {
    let handle = rt
        .block_on(
            server
                .handle
                .spawn(busline_server(transport.clone(), addr, codec.clone(), spin)),
        )
        .expect("server-side setup");
    let call = local.block_on(
        rt,
        busline_client(transport, handle.local_addr(), codec, spin),
    );
    (handle, call)
}

/// Who is measured: a name for `BUSLINE_PEERS_ONLY`, a column title.
const CONTENDERS: [(&str, &str); 11] = [
    ("raw", "raw Unix socket"),
    ("raw-poll", "raw Unix socket, polling"),
    ("busline", "busline Unix + CBOR"),
    ("busline-spin", "busline Unix + CBOR, spin"),
    ("tarpc", "tarpc Unix + bincode"),
    ("tonic", "tonic Unix"),
    ("busline-shm", "busline shm + CBOR"),
    ("busline-tcp", "busline TCP + CBOR"),
    ("busline-jsonrpc", "busline TCP + JSON-RPC"),
    ("jsonrpsee", "jsonrpsee WebSocket"),
    ("tonic-tcp", "tonic TCP"),
];

/// One contender, one round: its server on a thread of its own, its
/// client measured on this one.
fn measure_one(name: &str, socket: &Path) -> Row {
    std::thread::sleep(COOL_DOWN);
    with_contender(name, socket, measure)
}

/// Calls per second of contender `name` with 64 calls in flight, a
/// connection per round, for `quick p2p`.
pub(crate) fn rates_in_flight(name: &str, rounds: usize) -> Vec<f64> {
    let dir = std::env::temp_dir().join(format!("busline-quick-p2p-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let rates = (0..rounds)
        .map(|round| {
            let socket = dir.join(format!("{round}.sock"));
            with_contender(name, &socket, |call| async move { rate(&call, 64).await })
        })
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    rates
}

/// Start contender `name`'s server on a thread of its own, and run `client`
/// on this one with a call of it.
fn with_contender<F: std::future::Future>(
    name: &str,
    socket: &Path,
    client: impl FnOnce(Call) -> F,
) -> F::Output {
    let rt = current_thread();
    let local = tokio::task::LocalSet::new();
    let server = ServerThread::new();
    let client = |call| local.block_on(&rt, client(call));
    let tcp = || "tcp://127.0.0.1:0".parse::<Address>().expect("address");
    let row = match name {
        "raw" | "raw-poll" => {
            let poll = name == "raw-poll";
            server.handle.spawn(raw_server(socket.to_path_buf(), poll));
            std::thread::sleep(Duration::from_millis(50));
            client(local.block_on(&rt, raw_client(socket, poll)))
        }
        "busline" | "busline-spin" => {
            let spin = if name == "busline" {
                Spin::NONE
            } else {
                Spin::ADAPTIVE
            };
            let (_handle, call) = busline(
                &server,
                &rt,
                &local,
                UnixTransport::new(),
                Address::unix(socket),
                CborCodec::new(),
                spin,
            );
            client(call)
        }
        "tarpc" => {
            server.handle.spawn(tarpc_server(socket.to_path_buf()));
            std::thread::sleep(Duration::from_millis(50));
            client(local.block_on(&rt, tarpc_client(socket)))
        }
        "tonic" => {
            server
                .handle
                .spawn(tonic_peer::server_unix(socket.to_path_buf()));
            std::thread::sleep(Duration::from_millis(50));
            client(local.block_on(&rt, tonic_peer::client_unix(socket)))
        }
        "tonic-tcp" => {
            let port = server.handle.block_on(tonic_peer::server_tcp());
            client(local.block_on(&rt, tonic_peer::client_tcp(port)))
        }
        "busline-shm" => {
            let name = format!("peers-rpc-{}", std::process::id());
            let (_handle, call) = busline(
                &server,
                &rt,
                &local,
                ShmTransport::new(),
                Address::shm(name),
                CborCodec::new(),
                Spin::NONE,
            );
            client(call)
        }
        "busline-tcp" => {
            let (_handle, call) = busline(
                &server,
                &rt,
                &local,
                TcpTransport::new(),
                tcp(),
                CborCodec::new(),
                Spin::NONE,
            );
            client(call)
        }
        "busline-jsonrpc" => {
            let (_handle, call) = busline(
                &server,
                &rt,
                &local,
                TcpTransport::new(),
                tcp(),
                JsonRpcCodec::new(),
                Spin::NONE,
            );
            client(call)
        }
        "jsonrpsee" => {
            let (url, _handle) = server.handle.block_on(jsonrpsee_server());
            client(local.block_on(&rt, jsonrpsee_client(&url)))
        }
        other => panic!("no contender {other}"),
    };
    drop(server);
    row
}

/// Run the comparison and print its tables.
pub fn run() {
    let dir = std::env::temp_dir().join(format!("busline-rpc-peers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let mut rounds: Vec<Vec<Row>> = vec![Vec::new(); CONTENDERS.len()];
    for round in 0..ROUNDS {
        for (i, (name, _)) in CONTENDERS.iter().enumerate() {
            if !plots::measured(name) {
                rounds[i].push(Row::default());
                continue;
            }
            let socket = dir.join(format!("{name}{round}.sock"));
            rounds[i].push(measure_one(name, &socket));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let rows: Vec<Row> = rounds.into_iter().map(median).collect();
    println!("Over a Unix socket:\n");
    table(
        &rows,
        &[0, 1, 2, 3, 4, 5, 6],
        &[(2, 0), (3, 1), (2, 4), (3, 4), (2, 5), (6, 2)],
    );
    println!("\nOver TCP loopback:\n");
    table(&rows, &[7, 8, 9, 10], &[(7, 9), (8, 9), (7, 10)]);

    let shown = || {
        CONTENDERS
            .iter()
            .zip(&rows)
            .filter(|(_, r)| r.median_us > 0.0)
    };
    let rates = shown()
        .map(|((_, title), row)| (*title, row.rates.clone()))
        .collect::<Vec<_>>();
    plots::lines(
        "rate-vs-in-flight.svg",
        "Calls per second against calls kept in flight (64-bit echo)",
        ("calls in flight", "calls/s"),
        (true, false),
        &IN_FLIGHT.map(|n| n as f64),
        &rates,
    );
    let round_trips = shown()
        .map(|((_, title), row)| (*title, row.median_us))
        .collect::<Vec<_>>();
    plots::bars(
        "round-trip-vs-peers.svg",
        "Round trip of one call, median (64-bit echo, lower is better)",
        "µs",
        &round_trips,
    );
}

/// One markdown table: the `shown` contenders' figures, then each
/// `(a, b)` ratio of contender `a` to `b`.
fn table(rows: &[Row], shown: &[usize], ratios: &[(usize, usize)]) {
    let title = |i: usize| CONTENDERS[i].1;
    let mut head = String::from("| scenario |");
    for &i in shown {
        head += &format!(" {} |", title(i));
    }
    for &(a, b) in ratios {
        head += &format!(" {} / {} |", title(a), title(b));
    }
    println!("{head}");
    println!("|{}", " --- |".repeat(1 + shown.len() + ratios.len()));
    let line = |name: &str, f: &dyn Fn(&Row) -> f64, unit: &str, what: &str| {
        let mut out = format!("| {name} |");
        for &i in shown {
            out += &format!(" {:.1}{unit} |", f(&rows[i]));
        }
        for &(a, b) in ratios {
            out += &format!(" {:.2}x the {what} |", f(&rows[a]) / f(&rows[b]));
        }
        println!("{out}");
    };
    line("round trip, mean", &|r| r.mean_us, " µs", "time");
    line("round trip, median", &|r| r.median_us, " µs", "time");
    line("round trip, p99", &|r| r.p99_us, " µs", "time");
    line("CPU per call, both sides", &|r| r.cpu_us, " µs", "CPU");
    for (k, window) in IN_FLIGHT.iter().enumerate() {
        let name = format!("calls/s, {window} in flight");
        line(
            &name,
            &|r| r.rates.get(k).copied().unwrap_or(0.0),
            "",
            "rate",
        );
    }
}

/// Each figure's median over the rounds.
fn median(rounds: Vec<Row>) -> Row {
    Row {
        median_us: median_of(rounds.iter().map(|r| r.median_us).collect()),
        // (Rows skipped with BUSLINE_PEERS_ONLY are all zero.)
        mean_us: median_of(rounds.iter().map(|r| r.mean_us).collect()),
        p99_us: median_of(rounds.iter().map(|r| r.p99_us).collect()),
        cpu_us: median_of(rounds.iter().map(|r| r.cpu_us).collect()),
        rates: (0..rounds.iter().map(|r| r.rates.len()).min().unwrap_or(0))
            .map(|i| median_of(rounds.iter().map(|r| r.rates[i]).collect()))
            .collect(),
    }
}
