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
    future::Future,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{plots, tonic_peer};
use busline::{
    rpc::{Client, Reply, Request, Router, Server},
    Address, CborCodec, Codec, JsonRpcCodec, ShmTransport, Spin, TcpTransport, Transport,
    UnixTransport,
};
use futures::{stream::FuturesUnordered, FutureExt, StreamExt};
use tarpc::{
    client, context,
    server::{self as tarpc_server, Channel},
    tokio_serde::formats::Bincode,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    net::{UnixListener, UnixStream},
    runtime::{Handle, Runtime},
    sync::Mutex,
};

const SEQUENTIAL: usize = 5000;
const CALLS: usize = 30_000;
const IN_FLIGHT: [usize; 3] = [1, 16, 64];
const ROUNDS: usize = 3;
const RAW_MESSAGE: usize = 48;

#[tarpc::service]
trait Echo {
    async fn echo(x: u64) -> u64;
}

#[derive(Clone)]
struct EchoServer;

impl Echo for EchoServer {
    async fn echo(self, _: context::Context, x: u64) -> u64 {
        x
    }
}

pub(crate) fn current_thread() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A one-thread runtime on a thread of its own, for the server side.
pub(crate) struct ServerThread {
    pub(crate) handle: Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerThread {
    pub(crate) fn new() -> ServerThread {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = current_thread();
            tx.send(rt.handle().clone()).expect("handle");
            let _ = rt.block_on(stopped);
        });
        ServerThread {
            handle: rx.recv().expect("server runtime"),
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One contender's client side: make one call with the given argument.
pub(crate) type Call = Arc<dyn Fn(u64) -> Pin<Box<dyn Future<Output = u64>>>>;

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

/// How long every contender makes calls before it is measured.
///
/// On this machine's virtual CPUs, a round trip after an idle pause is
/// several times faster (10-17 µs over a Unix socket) than once calls have
/// kept both threads busy for ~50-100 ms (~90 µs): the host seems to favour
/// a vCPU that has been idle. Setting up a contender is such a pause, so
/// without this warm-up whoever is measured first after it looks faster.
/// Half a second reaches the sustained state for every contender; the
/// tables are that state.
pub(crate) const WARM_UP: Duration = Duration::from_millis(500);

/// How long the machine idles before each contender starts.
///
/// The host's favour works both ways: a contender that keeps the vCPUs
/// busy (busline's connections poll before they sleep) leaves them in the
/// fast state for whoever comes next. A second of idling puts every
/// contender's start in the same state, and [`WARM_UP`] then takes each to
/// its own sustained one.
pub(crate) const COOL_DOWN: Duration = Duration::from_secs(1);

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
        rates.push(CALLS as f64 / start.elapsed().as_secs_f64());
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

/// Reads one whole message. With `poll`, it never sleeps: a read that finds
/// nothing yields to the runtime and looks again, the floor for a socket
/// transport that does not sleep while it waits (busline's connections
/// poll for a moment before they sleep).
async fn read_message<R: AsyncRead + Unpin>(rd: &mut R, buf: &mut [u8], poll: bool) -> bool {
    if !poll {
        return rd.read_exact(buf).await.is_ok();
    }
    let mut filled = 0;
    while filled < buf.len() {
        match rd.read(&mut buf[filled..]).now_or_never() {
            Some(Ok(0)) | Some(Err(_)) => return false,
            Some(Ok(n)) => filled += n,
            None => tokio::task::yield_now().await,
        }
    }
    true
}

/// The raw floor: the client writes one 48-byte message per call and a
/// reader hands each echo back in order (calls in flight are answered in
/// the order they were sent, as a socket delivers them).
pub(crate) async fn raw_client(socket: &Path, poll: bool) -> Call {
    let stream = UnixStream::connect(socket).await.expect("raw connect");
    let (mut rd, wr) = stream.into_split();
    let wr = Arc::new(Mutex::new(wr));
    let (waiters_tx, mut waiters_rx) =
        tokio::sync::mpsc::unbounded_channel::<tokio::sync::oneshot::Sender<u64>>();
    tokio::task::spawn_local(async move {
        let mut buf = [0u8; RAW_MESSAGE];
        while read_message(&mut rd, &mut buf, poll).await {
            let Some(waiter) = waiters_rx.recv().await else {
                break;
            };
            let _ = waiter.send(u64::from_le_bytes(buf[..8].try_into().expect("8 bytes")));
        }
    });
    Arc::new(move |x| {
        let wr = wr.clone();
        let waiters_tx = waiters_tx.clone();
        Box::pin(async move {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let mut msg = [0u8; RAW_MESSAGE];
            msg[..8].copy_from_slice(&x.to_le_bytes());
            {
                let mut wr = wr.lock().await;
                waiters_tx.send(tx).expect("reader alive");
                wr.write_all(&msg).await.expect("raw write");
            }
            rx.await.expect("raw echo")
        })
    })
}

pub(crate) async fn raw_server(socket: PathBuf, poll: bool) {
    let listener = UnixListener::bind(&socket).expect("raw bind");
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let mut buf = [0u8; RAW_MESSAGE];
            while read_message(&mut s, &mut buf, poll).await {
                if s.write_all(&buf).await.is_err() {
                    return;
                }
            }
        });
    }
}

pub(crate) async fn busline_server<T: Transport + 'static, C: Codec>(
    transport: T,
    addr: Address,
    codec: C,
    spin: Spin,
) -> busline::rpc::ServerHandle {
    let router = Router::new()
        .unary("echo", |x: u64| async move { Ok::<_, String>(x) })
        // The payload sweep's echo: bytes back as they came, unparsed.
        .route(
            "echo_raw",
            tower::service_fn(|req: Request| async move {
                Ok::<_, busline::Error>(Reply::Unary(req.payload))
            }),
        );
    Server::builder(router, codec)
        .spin(spin)
        .bind(&transport, &addr)
        .await
        .expect("busline binds")
}

pub(crate) async fn busline_client<T: Transport, C: Codec>(
    transport: T,
    addr: &Address,
    codec: C,
    spin: Spin,
) -> Call {
    let client = Client::builder(codec)
        .spin(spin)
        .connect(&transport, addr)
        .await
        .expect("busline connects");
    Arc::new(move |x| {
        let client = client.clone();
        Box::pin(async move {
            client
                .call::<_, u64>("echo", &x)
                .await
                .expect("busline call")
        })
    })
}

async fn jsonrpsee_server() -> (String, jsonrpsee::server::ServerHandle) {
    let server = jsonrpsee::server::Server::builder()
        .build("127.0.0.1:0")
        .await
        .expect("jsonrpsee binds");
    let addr = server.local_addr().expect("jsonrpsee address");
    let mut module = jsonrpsee::RpcModule::new(());
    module
        .register_method("echo", |params, _, _| params.one::<u64>())
        .expect("jsonrpsee method");
    (format!("ws://{addr}"), server.start(module))
}

async fn jsonrpsee_client(url: &str) -> Call {
    use jsonrpsee::core::client::ClientT;
    let client = Arc::new(
        jsonrpsee::ws_client::WsClientBuilder::default()
            .max_concurrent_requests(1024)
            .build(url)
            .await
            .expect("jsonrpsee connects"),
    );
    Arc::new(move |x| {
        let client = client.clone();
        Box::pin(async move {
            client
                .request::<u64, _>("echo", jsonrpsee::rpc_params![x])
                .await
                .expect("jsonrpsee call")
        })
    })
}

pub(crate) async fn tarpc_server(socket: PathBuf) {
    let mut listener = tarpc::serde_transport::unix::listen(&socket, Bincode::default)
        .await
        .expect("tarpc listens");
    listener.config_mut().max_frame_length(usize::MAX);
    while let Some(Ok(transport)) = listener.next().await {
        let channel = tarpc_server::BaseChannel::with_defaults(transport);
        tokio::spawn(
            channel
                .execute(EchoServer.serve())
                .for_each(|response| async move {
                    tokio::spawn(response);
                }),
        );
    }
}

pub(crate) async fn tarpc_client(socket: &Path) -> Call {
    let transport = tarpc::serde_transport::unix::connect(socket, Bincode::default)
        .await
        .expect("tarpc connects");
    let client = EchoClient::new(client::Config::default(), transport).spawn();
    Arc::new(move |x| {
        let client = client.clone();
        Box::pin(async move {
            client
                .echo(context::current(), x)
                .await
                .expect("tarpc call")
        })
    })
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
    let rt = current_thread();
    let local = tokio::task::LocalSet::new();
    let server = ServerThread::new();
    let client = |call| local.block_on(&rt, async { measure(call).await });
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
        other => unreachable!("no contender {other}"),
    };
    drop(server);
    row
}

/// Run the comparison and print its tables.
pub fn run() {
    let dir = std::env::temp_dir().join(format!("busline-rpc-peers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let only = std::env::var("BUSLINE_PEERS_ONLY").ok();
    let mut rounds: Vec<Vec<Row>> = vec![Vec::new(); CONTENDERS.len()];
    for round in 0..ROUNDS {
        for (i, (name, _)) in CONTENDERS.iter().enumerate() {
            if only.as_deref().is_some_and(|o| o != *name) {
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
        .map(|((_, title), row)| {
            let points = IN_FLIGHT
                .iter()
                .map(|&n| n as f64)
                .zip(row.rates.iter().copied());
            (*title, points.collect())
        })
        .collect::<Vec<_>>();
    plots::lines(
        "rate-vs-in-flight.svg",
        "Calls per second against calls kept in flight (64-bit echo)",
        ("calls in flight", "calls/s"),
        (true, false),
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
    let mid = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Row {
        median_us: mid(rounds.iter().map(|r| r.median_us).collect()),
        // (Rows skipped with BUSLINE_PEERS_ONLY are all zero.)
        mean_us: mid(rounds.iter().map(|r| r.mean_us).collect()),
        p99_us: mid(rounds.iter().map(|r| r.p99_us).collect()),
        cpu_us: mid(rounds.iter().map(|r| r.cpu_us).collect()),
        rates: (0..rounds.iter().map(|r| r.rates.len()).min().unwrap_or(0))
            .map(|i| mid(rounds.iter().map(|r| r.rates[i]).collect()))
            .collect(),
    }
}
