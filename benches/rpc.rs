//! Round trip (1 call in flight) and throughput (64 in flight) for every
//! transport × codec, beside the raw socket doing the same byte ping-pong
//! without busline, so busline's overhead reads as a ratio from one run;
//! and 1 MiB payloads, beside a plain memory copy: typed (a serde byte
//! string, serialised and deserialised at the ends) and raw (bytes as they
//! are, through `call_raw` and a `Request`'s payload).
//!
//! The limits of the machine are rows too: `raw/shm_spin` is two threads
//! bouncing one cache line, as two processes on shared memory would, and
//! `raw/memcpy` copies 1 MiB in one thread.
//!
//! Each side runs on its own one-thread runtime, as two processes would
//! (see `support::Sides`; `BUSLINE_BENCH_RUNTIME=shared` runs both on one
//! two-worker runtime instead).
//!
//! Run: `cargo bench --bench rpc`; one group: `cargo bench --bench rpc -- round_trip`.

mod support;

use support::{socket_path, Sides};

use std::time::Duration;

use busline::{
    rpc::{Client, Reply, Request, Router, Server, ServerHandle},
    Address, CborCodec, Codec, Encoding, FifoTransport, JsonLineCodec, JsonRpcCodec, Listener,
    MemoryTransport, Payload, ShmStream, ShmTransport, TcpTransport, Transport, UnixTransport,
};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use futures::future::{join_all, BoxFuture};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream, UnixListener, UnixStream},
    runtime::Runtime,
};

/// Bytes per raw message: about the size of a small busline call frame.
const RAW_MESSAGE: usize = 48;
const IN_FLIGHT: usize = 64;

/// Echo fixed-size messages, one write per message (no batching).
async fn raw_echo<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) {
    let mut buf = [0u8; RAW_MESSAGE];
    while s.read_exact(&mut buf).await.is_ok() {
        if s.write_all(&buf).await.is_err() {
            break;
        }
    }
}

/// A connected raw pair over Unix, TCP or shared memory, its echo server
/// running on the server side.
fn raw_unix(sides: &Sides) -> UnixStream {
    let path = socket_path("raw");
    let _ = std::fs::remove_file(&path);
    let listener = sides.on_server({
        let path = path.clone();
        async move { UnixListener::bind(&path).expect("bind raw unix") }
    });
    sides.on_server(async move {
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.expect("accept");
            raw_echo(s).await;
        });
    });
    let client = sides
        .client
        .block_on(UnixStream::connect(&path))
        .expect("connect raw unix");
    let _ = std::fs::remove_file(&path);
    client
}

fn raw_tcp(sides: &Sides) -> TcpStream {
    let addr = sides.on_server(async {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind raw tcp");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.expect("accept");
            s.set_nodelay(true).expect("nodelay");
            raw_echo(s).await;
        });
        addr
    });
    let client = sides
        .client
        .block_on(TcpStream::connect(addr))
        .expect("connect raw tcp");
    client.set_nodelay(true).expect("nodelay");
    client
}

fn raw_shm(sides: &Sides) -> ShmStream {
    let addr = Address::shm(format!("bench-raw-{}", std::process::id()));
    sides.on_server({
        let addr = addr.clone();
        async move {
            let mut listener = ShmTransport::new().bind(&addr).await.expect("bind raw shm");
            tokio::spawn(async move {
                let (server, _) = listener.accept().await.expect("accept raw shm");
                raw_echo(server).await;
            });
        }
    });
    sides
        .client
        .block_on(ShmTransport::new().connect(&addr))
        .expect("connect raw shm")
}

/// The floor under any shared-memory transport: two threads handing a
/// counter back and forth through one cache line, spinning, no runtime.
fn spin_ping_pong(rounds: u64) -> Duration {
    use std::sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    };
    let line = Arc::new(AtomicU64::new(0));
    let peer = line.clone();
    let echo = std::thread::spawn(move || {
        for i in 0..rounds {
            while peer.load(Ordering::Acquire) != 2 * i + 1 {
                std::hint::spin_loop();
            }
            peer.store(2 * i + 2, Ordering::Release);
        }
    });
    let start = std::time::Instant::now();
    for i in 0..rounds {
        line.store(2 * i + 1, Ordering::Release);
        while line.load(Ordering::Acquire) != 2 * i + 2 {
            std::hint::spin_loop();
        }
    }
    let elapsed = start.elapsed();
    echo.join().expect("echo thread");
    elapsed
}

async fn raw_round_trip<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) {
    let mut buf = [7u8; RAW_MESSAGE];
    s.write_all(&buf).await.expect("write");
    s.read_exact(&mut buf).await.expect("read");
}

/// 64 messages pipelined, each written with its own syscall, as a program
/// without a batching writer would.
async fn raw_pipelined<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) {
    let (mut r, mut w) = tokio::io::split(s);
    let write = async {
        let buf = [7u8; RAW_MESSAGE];
        for _ in 0..IN_FLIGHT {
            w.write_all(&buf).await.expect("write");
        }
    };
    let read = async {
        let mut buf = [0u8; RAW_MESSAGE];
        for _ in 0..IN_FLIGHT {
            r.read_exact(&mut buf).await.expect("read");
        }
    };
    tokio::join!(write, read);
}

/// One benchmark operation on some per-benchmark state.
type Op<S> = for<'a> fn(&'a mut S) -> BoxFuture<'a, ()>;

/// Run `n` iterations of `op` in a task on the client's runtime (where the
/// client's connection tasks run too), and time them there. Running the
/// loop on the `block_on` thread of a multi-thread runtime instead would
/// charge every message a cross-thread wake-up.
fn timed<S: Send + 'static>(rt: &Runtime, n: u64, state: &mut Option<S>, op: Op<S>) -> Duration {
    let mut s = state.take().expect("state is put back after each run");
    let (s, elapsed) = rt
        .block_on(rt.spawn(async move {
            let start = std::time::Instant::now();
            for _ in 0..n {
                op(&mut s).await;
            }
            (s, start.elapsed())
        }))
        .expect("benchmark task");
    *state = Some(s);
    elapsed
}

fn router() -> Router {
    Router::new()
        .unary("echo", |x: u64| async move { Ok::<_, String>(x) })
        .unary("blob", |b: serde_bytes::ByteBuf| async move {
            Ok::<_, String>(b.len())
        })
        .route(
            "bytes",
            tower::service_fn(|req: Request| async move {
                Payload::cbor(&req.payload.bytes().len()).map(Reply::Unary)
            }),
        )
}

const MIB: usize = 1 << 20;

/// One call carrying 1 MiB (answered with its length).
async fn one_mib_call(client: &mut Client) {
    let blob = serde_bytes::Bytes::new(&BLOB);
    let n: usize = client.call("blob", &blob).await.expect("call");
    assert_eq!(n, MIB);
}

static BLOB: [u8; MIB] = [7u8; MIB];

/// The same 1 MiB as raw bytes: no serialising at either end, so the row
/// shows what the transport and framing cost.
async fn one_mib_raw(client: &mut Client) {
    let blob = Payload::from_bytes(Encoding::Binary, Bytes::from_static(&BLOB));
    let n: usize = client
        .call_raw("bytes", blob)
        .await
        .and_then(|p| p.decode())
        .expect("call");
    assert_eq!(n, MIB);
}

async fn one_call(client: &mut Client) {
    let x: u64 = client.call("echo", &42u64).await.expect("call");
    assert_eq!(x, 42);
}

async fn many_calls(client: &mut Client) {
    let client = &*client;
    let calls =
        (0..IN_FLIGHT as u64).map(|i| async move { client.call::<_, u64>("echo", &i).await });
    for answer in join_all(calls).await {
        answer.expect("call");
    }
}

struct Setup {
    name: String,
    client: Client,
    _server: ServerHandle,
}

fn setup<T: Transport + Clone + 'static, C: Codec>(
    sides: &Sides,
    transport: T,
    codec: C,
    addr: Address,
) -> Setup {
    let name = format!("{}+{}", addr.scheme(), codec.name());
    if let busline::Endpoint::Unix(p) = addr.endpoint() {
        let _ = std::fs::remove_file(p);
    }
    let server = sides.on_server({
        let (transport, codec) = (transport.clone(), codec.clone());
        async move {
            Server::builder(router(), codec)
                .bind(&transport, &addr)
                .await
                .expect("server binds")
        }
    });
    let client = sides
        .client
        .block_on(Client::builder(codec).connect(&transport, server.local_addr()))
        .expect("client connects");
    Setup {
        name,
        client,
        _server: server,
    }
}

/// Every transport × codec, on addresses unique to `group` (a previous
/// group's servers may still be releasing theirs).
fn all_setups(sides: &Sides, group: &str) -> Vec<Setup> {
    let unix = |codec: &str| Address::unix(socket_path(&format!("{group}-{codec}")));
    let memory = |codec: &str| Address::memory(format!("bench-{group}-{codec}"));
    let tcp = || Address::tcp("127.0.0.1", 0);
    let fifo = |codec: &str| Address::fifo(socket_path(&format!("{group}-fifo-{codec}")));
    let shm = |codec: &str| Address::shm(format!("bench-{group}-{codec}-{}", std::process::id()));
    let (cbor, jsonline, jsonrpc) = (CborCodec::new(), JsonLineCodec::new(), JsonRpcCodec::new());
    vec![
        setup(sides, ShmTransport::new(), cbor.clone(), shm("cbor")),
        setup(
            sides,
            ShmTransport::new(),
            jsonline.clone(),
            shm("jsonline"),
        ),
        setup(sides, ShmTransport::new(), jsonrpc.clone(), shm("jsonrpc")),
        setup(sides, UnixTransport::new(), cbor.clone(), unix("cbor")),
        setup(
            sides,
            UnixTransport::new(),
            jsonline.clone(),
            unix("jsonline"),
        ),
        setup(
            sides,
            UnixTransport::new(),
            jsonrpc.clone(),
            unix("jsonrpc"),
        ),
        setup(sides, FifoTransport::new(), cbor.clone(), fifo("cbor")),
        setup(
            sides,
            FifoTransport::new(),
            jsonline.clone(),
            fifo("jsonline"),
        ),
        setup(sides, TcpTransport::new(), cbor.clone(), tcp()),
        setup(sides, TcpTransport::new(), jsonline.clone(), tcp()),
        setup(sides, TcpTransport::new(), jsonrpc.clone(), tcp()),
        setup(sides, MemoryTransport::new(), cbor, memory("cbor")),
        setup(sides, MemoryTransport::new(), jsonline, memory("jsonline")),
        setup(sides, MemoryTransport::new(), jsonrpc, memory("jsonrpc")),
    ]
}

fn round_trip(c: &mut Criterion) {
    let sides = Sides::new();
    let rt = &sides.client;
    let mut group = c.benchmark_group("round_trip");
    group.throughput(Throughput::Elements(1));

    let mut unix = Some(raw_unix(&sides));
    group.bench_function(BenchmarkId::new("raw", "unix"), |b| {
        b.iter_custom(|n| timed(rt, n, &mut unix, |s| Box::pin(raw_round_trip(s))))
    });
    let mut tcp = Some(raw_tcp(&sides));
    group.bench_function(BenchmarkId::new("raw", "tcp"), |b| {
        b.iter_custom(|n| timed(rt, n, &mut tcp, |s| Box::pin(raw_round_trip(s))))
    });
    let mut shm = Some(raw_shm(&sides));
    group.bench_function(BenchmarkId::new("raw", "shm"), |b| {
        b.iter_custom(|n| timed(rt, n, &mut shm, |s| Box::pin(raw_round_trip(s))))
    });
    group.bench_function(BenchmarkId::new("raw", "shm_spin"), |b| {
        b.iter_custom(spin_ping_pong)
    });

    for s in all_setups(&sides, "rt") {
        let mut client = Some(s.client.clone());
        group.bench_function(BenchmarkId::new("busline", &s.name), |b| {
            b.iter_custom(|n| timed(rt, n, &mut client, |c| Box::pin(one_call(c))))
        });
    }
    group.finish();
}

fn throughput(c: &mut Criterion) {
    let sides = Sides::new();
    let rt = &sides.client;
    let mut group = c.benchmark_group("in_flight_64");
    group.throughput(Throughput::Elements(IN_FLIGHT as u64));

    let mut unix = Some(raw_unix(&sides));
    group.bench_function(BenchmarkId::new("raw_unbatched", "unix"), |b| {
        b.iter_custom(|n| timed(rt, n, &mut unix, |s| Box::pin(raw_pipelined(s))))
    });
    let mut tcp = Some(raw_tcp(&sides));
    group.bench_function(BenchmarkId::new("raw_unbatched", "tcp"), |b| {
        b.iter_custom(|n| timed(rt, n, &mut tcp, |s| Box::pin(raw_pipelined(s))))
    });
    let mut shm = Some(raw_shm(&sides));
    group.bench_function(BenchmarkId::new("raw_unbatched", "shm"), |b| {
        b.iter_custom(|n| timed(rt, n, &mut shm, |s| Box::pin(raw_pipelined(s))))
    });

    for s in all_setups(&sides, "tp") {
        let mut client = Some(s.client.clone());
        group.bench_function(BenchmarkId::new("busline", &s.name), |b| {
            b.iter_custom(|n| timed(rt, n, &mut client, |c| Box::pin(many_calls(c))))
        });
    }
    group.finish();
}

fn payload(c: &mut Criterion) {
    let sides = Sides::new();
    let rt = &sides.client;
    let mut group = c.benchmark_group("payload_1mib");
    group.throughput(Throughput::Bytes(MIB as u64));
    let mut dst = vec![0u8; MIB];
    group.bench_function(BenchmarkId::new("raw", "memcpy"), |b| {
        b.iter(|| {
            dst.copy_from_slice(std::hint::black_box(&BLOB));
            std::hint::black_box(&dst);
        })
    });
    let setups = [
        setup(
            &sides,
            ShmTransport::new(),
            CborCodec::new(),
            Address::shm(format!("bench-mib-{}", std::process::id())),
        ),
        setup(
            &sides,
            UnixTransport::new(),
            CborCodec::new(),
            Address::unix(socket_path("mib")),
        ),
    ];
    for s in setups {
        let mut client = Some(s.client.clone());
        group.bench_function(BenchmarkId::new("busline", &s.name), |b| {
            b.iter_custom(|n| timed(rt, n, &mut client, |c| Box::pin(one_mib_call(c))))
        });
        group.bench_function(BenchmarkId::new("busline_raw", &s.name), |b| {
            b.iter_custom(|n| timed(rt, n, &mut client, |c| Box::pin(one_mib_raw(c))))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    targets = round_trip, throughput, payload
}
criterion_main!(benches);
