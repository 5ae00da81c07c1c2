//! Connections (`-- connections`): what each connection costs, with 1,
//! 10, 100 and 1,000 clients connected to one server over a Unix socket,
//! each side on a one-thread runtime of its own as in `-- rpc`:
//!
//! - memory: the process's resident size after the clients connected and
//!   each made one call, less before, per connection (client and server
//!   ends together, both in one process, a fresh one for each contender
//!   and count; kernel socket buffers are not counted);
//! - round trip: median over sequential calls spread over the connections
//!   in turn;
//! - calls/s with every connection keeping one call in flight.
//!
//! Needs about 2,100 file descriptors (`ulimit -n`).

use std::{
    path::Path,
    time::{Duration, Instant},
};

use busline::{Address, CborCodec, Spin, UnixTransport};
use futures::{stream::FuturesUnordered, StreamExt};

use crate::{
    contenders::{
        busline_client, busline_server, current_thread, median_of, raw_client, raw_server,
        tarpc_client, tarpc_server, Call, ServerThread, COOL_DOWN, WARM_UP,
    },
    plots,
};

const COUNTS: [usize; 4] = [1, 10, 100, 1000];
const SEQUENTIAL: usize = 3000;
const CALLS: usize = 30_000;
const ROUNDS: usize = 3;

const CONTENDERS: [(&str, &str); 3] = [
    ("raw", "raw Unix socket"),
    ("busline", "busline Unix + CBOR"),
    ("tarpc", "tarpc Unix + bincode"),
];

#[derive(Clone, Copy, Debug, Default)]
struct Point {
    kib_per_connection: f64,
    median_us: f64,
    calls_per_s: f64,
}

/// The process's resident memory, in KiB (`/proc/self/statm`).
fn resident_kib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    pages * 4.0
}

async fn measure(calls: &[Call], before_kib: f64) -> Point {
    let n = calls.len();
    for (i, call) in calls.iter().enumerate() {
        assert_eq!(call(i as u64).await, i as u64);
    }
    let kib_per_connection = (resident_kib() - before_kib) / n as f64;
    let warming = Instant::now();
    for i in 0.. {
        assert_eq!(calls[i % n](i as u64).await, i as u64);
        if warming.elapsed() > WARM_UP {
            break;
        }
    }
    let mut samples = Vec::with_capacity(SEQUENTIAL);
    for i in 0..SEQUENTIAL {
        let start = Instant::now();
        assert_eq!(calls[i % n](i as u64).await, i as u64);
        samples.push(start.elapsed());
    }
    samples.sort();
    let start = Instant::now();
    let total = CALLS.max(3 * n);
    let start_call = |i: usize| {
        let call = calls[i].clone();
        async move { (i, call(i as u64).await) }
    };
    let mut running: FuturesUnordered<_> = (0..n).map(start_call).collect();
    let mut started = n;
    while let Some((i, _)) = running.next().await {
        if started < total {
            running.push(start_call(i));
            started += 1;
        }
    }
    Point {
        kib_per_connection,
        median_us: samples[samples.len() / 2].as_secs_f64() * 1e6,
        calls_per_s: total as f64 / start.elapsed().as_secs_f64(),
    }
}

/// One contender with `n` clients: its server on a thread of its own,
/// the clients on this one.
fn measure_one(name: &str, n: usize, socket: &Path) -> Point {
    let rt = current_thread();
    let local = tokio::task::LocalSet::new();
    let server = ServerThread::new();
    let mut busline_handle = None;
    let addr = Address::unix(socket);
    match name {
        "raw" => drop(server.handle.spawn(raw_server(socket.to_path_buf(), false))),
        "tarpc" => drop(server.handle.spawn(tarpc_server(socket.to_path_buf()))),
        _ => {
            let serving = busline_server(
                UnixTransport::new(),
                addr.clone(),
                CborCodec::new(),
                Spin::NONE,
            );
            busline_handle = Some(rt.block_on(server.handle.spawn(serving)).expect("serves"));
        }
    }
    std::thread::sleep(Duration::from_millis(50));
    let before = resident_kib();
    let point = local.block_on(&rt, async {
        let mut calls = Vec::with_capacity(n);
        for _ in 0..n {
            calls.push(match name {
                "raw" => raw_client(socket, false).await,
                "tarpc" => tarpc_client(socket).await,
                _ => {
                    busline_client(UnixTransport::new(), &addr, CborCodec::new(), Spin::NONE).await
                }
            });
        }
        measure(&calls, before).await
    });
    drop(busline_handle);
    drop(server);
    point
}

/// The child process's part (`connections-one <name> <n>`): measure one
/// contender with one count, in a fresh process so that no allocator
/// keeps memory from an earlier measurement, and print the figures.
pub fn run_one(name: &str, n: usize) {
    let dir = std::env::temp_dir().join(format!("busline-connections-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let p = measure_one(name, n, &dir.join("server.sock"));
    let _ = std::fs::remove_dir_all(&dir);
    println!("{} {} {}", p.kib_per_connection, p.median_us, p.calls_per_s);
}

/// Each contender and count in a process of its own.
fn measure_in_child(name: &str, n: usize) -> Point {
    std::thread::sleep(COOL_DOWN);
    let out = std::process::Command::new(std::env::current_exe().expect("this program"))
        .args(["connections-one", name, &n.to_string()])
        .output()
        .expect("the measuring process runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let figures: Vec<f64> = text
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    match figures[..] {
        [kib_per_connection, median_us, calls_per_s] if out.status.success() => Point {
            kib_per_connection,
            median_us,
            calls_per_s,
        },
        _ => panic!(
            "measuring {name} with {n} connections failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// How a table row shows one contender's point.
type Show = fn(&Point) -> String;

/// Each figure's median over the rounds.
fn median(points: Vec<Point>) -> Point {
    let mid = |f: fn(&Point) -> f64| median_of(points.iter().map(f).collect());
    Point {
        kib_per_connection: mid(|p| p.kib_per_connection),
        median_us: mid(|p| p.median_us),
        calls_per_s: mid(|p| p.calls_per_s),
    }
}

/// Run it, print the table and draw the plot.
pub fn run() {
    // Rounds take turns, so a slow spell of the machine hits every
    // contender; each figure is the median of the rounds.
    let mut results: Vec<Vec<Point>> = CONTENDERS
        .iter()
        .map(|(name, _)| {
            if plots::measured(name) {
                vec![Point::default(); COUNTS.len()]
            } else {
                Vec::new()
            }
        })
        .collect();
    let mut rounds: Vec<Vec<Vec<Point>>> = vec![vec![Vec::new(); COUNTS.len()]; CONTENDERS.len()];
    for _ in 0..ROUNDS {
        for (k, &n) in COUNTS.iter().enumerate() {
            for (c, (name, _)) in CONTENDERS.iter().enumerate() {
                if !results[c].is_empty() {
                    rounds[c][k].push(measure_in_child(name, n));
                }
            }
        }
    }
    for (c, contender) in rounds.into_iter().enumerate() {
        for (k, points) in contender.into_iter().enumerate() {
            if !points.is_empty() {
                results[c][k] = median(points);
            }
        }
    }

    let mut head = String::from("| connections | scenario |");
    for (_, title) in CONTENDERS {
        head += &format!(" {title} |");
    }
    println!("{head}\n|{}", " --- |".repeat(CONTENDERS.len() + 2));
    let at = |c: usize, k: usize| results[c].get(k).copied().unwrap_or_default();
    for (k, n) in COUNTS.iter().enumerate() {
        let rows: [(&str, Show); 3] = [
            ("memory per connection", |p| {
                format!("{:.1} KiB", p.kib_per_connection)
            }),
            ("round trip, median", |p| format!("{:.1} µs", p.median_us)),
            ("calls/s, one in flight each", |p| {
                format!("{:.0}", p.calls_per_s)
            }),
        ];
        for (what, show) in rows {
            let mut line = format!("| {n} | {what} |");
            for c in 0..CONTENDERS.len() {
                line += &format!(" {} |", show(&at(c, k)));
            }
            println!("{line}");
        }
    }
    let series: Vec<(&str, Vec<f64>)> = CONTENDERS
        .iter()
        .zip(&results)
        .map(|((_, title), points)| (*title, points.iter().map(|p| p.median_us).collect()))
        .collect();
    plots::lines(
        "round-trip-vs-connections.svg",
        "Round trip against connections open (median, calls spread over them)",
        ("connections", "round trip (µs)"),
        (true, false),
        &COUNTS.map(|n| n as f64),
        &series,
    );
}
