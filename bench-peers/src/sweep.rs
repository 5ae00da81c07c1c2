//! The payload sweep (`-- sweep`): one call echoing 64 B to 4 MiB, each
//! side on a one-thread runtime of its own as in `-- rpc`, median round
//! trip per size. Contenders: the raw Unix socket (a length and the bytes,
//! echoed), busline over Unix, TCP and shared memory (CBOR, the payload
//! passed through as raw bytes: `call_raw` and a route that answers with
//! the request's payload), and tarpc over Unix (`Bytes` through bincode).
//!
//! Rounds take turns; each figure is the median of the rounds. The table
//! goes to stdout, the latency-against-payload plot to the plots folder.

use std::{
    future::Future,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use busline::{
    rpc::Client, Address, CborCodec, Encoding, Payload, ShmTransport, Spin, TcpTransport,
    Transport, UnixTransport,
};
use bytes::{Buf, Bytes};
use tarpc::context;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{UnixListener, UnixStream},
    sync::Mutex,
};

use crate::{
    contenders::{
        busline_server, current_thread, median_of, tarpc_connect, tarpc_server, ServerThread,
        COOL_DOWN, WARM_UP,
    },
    plots,
};

/// Payload sizes: 64 B, 1 KiB, 16 KiB, 64 KiB, 256 KiB, 1 MiB, 4 MiB.
pub(crate) const SIZES: [usize; 7] = [64, 1 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20];
const ROUNDS: usize = 3;

/// Who is measured: a name for `BUSLINE_PEERS_ONLY`, a column title.
const CONTENDERS: [(&str, &str); 6] = [
    ("raw", "raw Unix socket"),
    ("busline", "busline Unix + CBOR"),
    ("busline-spin", "busline Unix + CBOR, spin"),
    ("busline-tcp", "busline TCP + CBOR"),
    ("busline-shm", "busline shm + CBOR"),
    ("tarpc", "tarpc Unix + bincode"),
];

/// One echo of the given bytes; returns how many came back.
type Echo = Arc<dyn Fn(Bytes) -> Pin<Box<dyn Future<Output = usize>>>>;

/// Calls per size: enough for a steady median, fewer for large payloads.
fn calls_for(size: usize) -> usize {
    ((64 << 20) / size).clamp(30, 2000)
}

/// The raw floor: a 4-byte length and the bytes, echoed whole.
async fn raw_server(socket: PathBuf) {
    let listener = UnixListener::bind(&socket).expect("raw bind");
    while let Ok((mut s, _)) = listener.accept().await {
        tokio::spawn(async move {
            let mut buf = Vec::new();
            while let Ok(len) = s.read_u32().await {
                buf.resize(len as usize, 0);
                if s.read_exact(&mut buf).await.is_err() {
                    return;
                }
                let head = len.to_be_bytes();
                let mut answer = Buf::chain(&head[..], buf.as_slice());
                if s.write_all_buf(&mut answer).await.is_err() {
                    return;
                }
            }
        });
    }
}

async fn raw_client(socket: &Path) -> Echo {
    let stream = UnixStream::connect(socket).await.expect("raw connect");
    // One call at a time: the socket and a receive buffer kept between calls.
    let state = Arc::new(Mutex::new((stream, Vec::new())));
    Arc::new(move |bytes| {
        let state = state.clone();
        Box::pin(async move {
            let mut state = state.lock().await;
            let (stream, buf) = &mut *state;
            let len = bytes.len() as u32;
            let head = len.to_be_bytes();
            let mut message = Buf::chain(&head[..], bytes);
            stream.write_all_buf(&mut message).await.expect("raw write");
            let len = stream.read_u32().await.expect("raw read") as usize;
            buf.resize(len, 0);
            stream.read_exact(buf).await.expect("raw read");
            len
        })
    })
}

async fn busline_client<T: Transport>(transport: T, addr: &Address, spin: Spin) -> Echo {
    let client = Client::builder(CborCodec::new())
        .spin(spin)
        .connect(&transport, addr)
        .await
        .expect("busline connects");
    Arc::new(move |bytes| {
        let client = client.clone();
        Box::pin(async move {
            let payload = Payload::from_bytes(Encoding::Binary, bytes);
            let answer = client.call_raw("echo_raw", payload).await;
            answer.expect("busline call").bytes().len()
        })
    })
}

async fn tarpc_client(socket: &Path) -> Echo {
    let client = tarpc_connect(socket).await;
    Arc::new(move |bytes| {
        let client = client.clone();
        Box::pin(async move {
            let answer = client.echo_bytes(context::current(), bytes).await;
            answer.expect("tarpc call").len()
        })
    })
}

/// Median round trip per size, in µs.
async fn measure(echo: Echo) -> Vec<f64> {
    let warming = Instant::now();
    let small = Bytes::from(vec![7u8; SIZES[0]]);
    while warming.elapsed() < WARM_UP {
        assert_eq!(echo(small.clone()).await, SIZES[0]);
    }
    let mut medians = Vec::new();
    for size in SIZES {
        let payload = Bytes::from(vec![7u8; size]);
        for _ in 0..5 {
            assert_eq!(echo(payload.clone()).await, size);
        }
        let mut samples: Vec<Duration> = (0..calls_for(size)).map(|_| Duration::ZERO).collect();
        for sample in &mut samples {
            let start = Instant::now();
            assert_eq!(echo(payload.clone()).await, size);
            *sample = start.elapsed();
        }
        samples.sort();
        medians.push(samples[samples.len() / 2].as_secs_f64() * 1e6);
    }
    medians
}

/// busline's server at `addr` on `server`'s thread, and a client of it.
fn busline<T: Transport + Clone + 'static>(
    server: &ServerThread,
    rt: &tokio::runtime::Runtime,
    local: &tokio::task::LocalSet,
    transport: T,
    addr: Address,
    spin: Spin,
) -> (busline::rpc::ServerHandle, Echo) {
    let serving = busline_server(transport.clone(), addr, CborCodec::new(), spin);
    let handle = rt
        .block_on(server.handle.spawn(serving))
        .expect("server-side setup");
    let echo = local.block_on(rt, busline_client(transport, handle.local_addr(), spin));
    (handle, echo)
}

/// One contender, one round.
fn measure_one(name: &str, socket: &Path) -> Vec<f64> {
    std::thread::sleep(COOL_DOWN);
    let rt = current_thread();
    let local = tokio::task::LocalSet::new();
    let server = ServerThread::new();
    let mut busline_server = None;
    let echo = match name {
        "raw" => {
            server.handle.spawn(raw_server(socket.to_path_buf()));
            std::thread::sleep(Duration::from_millis(50));
            local.block_on(&rt, raw_client(socket))
        }
        "busline" | "busline-spin" | "busline-tcp" | "busline-shm" => {
            let (handle, echo) = match name {
                "busline" | "busline-spin" => {
                    let spin = if name == "busline" {
                        Spin::NONE
                    } else {
                        Spin::ADAPTIVE
                    };
                    let addr = Address::unix(socket);
                    busline(&server, &rt, &local, UnixTransport::new(), addr, spin)
                }
                "busline-tcp" => {
                    let addr = "tcp://127.0.0.1:0".parse().expect("address");
                    busline(&server, &rt, &local, TcpTransport::new(), addr, Spin::NONE)
                }
                _ => {
                    let name = format!("peers-sweep-{}", std::process::id());
                    busline(
                        &server,
                        &rt,
                        &local,
                        ShmTransport::new(),
                        Address::shm(name),
                        Spin::NONE,
                    )
                }
            };
            busline_server = Some(handle);
            echo
        }
        "tarpc" => {
            server.handle.spawn(tarpc_server(socket.to_path_buf()));
            std::thread::sleep(Duration::from_millis(50));
            local.block_on(&rt, tarpc_client(socket))
        }
        other => unreachable!("no contender {other}"),
    };
    let medians = local.block_on(&rt, measure(echo));
    drop(busline_server);
    drop(server);
    medians
}

/// Run the sweep, print its table and draw its plot.
pub fn run() {
    let dir = std::env::temp_dir().join(format!("busline-sweep-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let mut rounds: Vec<Vec<Vec<f64>>> = vec![Vec::new(); CONTENDERS.len()];
    for round in 0..ROUNDS {
        for (i, (name, _)) in CONTENDERS.iter().enumerate() {
            if !plots::measured(name) {
                continue;
            }
            let socket = dir.join(format!("{name}{round}.sock"));
            rounds[i].push(measure_one(name, &socket));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    // Each contender's median over the rounds, per size (empty if skipped).
    let medians: Vec<Vec<f64>> = rounds
        .iter()
        .map(|rounds| {
            (0..rounds.first().map_or(0, Vec::len))
                .map(|k| median_of(rounds.iter().map(|r| r[k]).collect()))
                .collect()
        })
        .collect();

    let mut head = String::from("| payload |");
    for (_, title) in CONTENDERS {
        head += &format!(" {title} |");
    }
    head += " busline Unix / raw | busline Unix / tarpc | spin / no spin | busline shm / busline Unix | busline Unix, payload MB/s |";
    println!("{head}");
    println!("|{}", " --- |".repeat(CONTENDERS.len() + 6));
    let at = |c: usize, k: usize| medians[c].get(k).copied().unwrap_or(f64::NAN);
    for (k, size) in SIZES.iter().enumerate() {
        let mut line = format!("| {} |", plots::bytes(*size as f64));
        for c in 0..CONTENDERS.len() {
            line += &format!(" {:.1} µs |", at(c, k));
        }
        line += &format!(
            " {:.2}x | {:.2}x | {:.2}x | {:.2}x | {:.0} |",
            at(1, k) / at(0, k),
            at(1, k) / at(5, k),
            at(2, k) / at(1, k),
            at(4, k) / at(1, k),
            *size as f64 / at(1, k)
        );
        println!("{line}");
    }
    let series: Vec<(&str, Vec<f64>)> = CONTENDERS
        .iter()
        .map(|(_, title)| *title)
        .zip(medians)
        .collect();
    plots::lines(
        "latency-vs-payload.svg",
        "Echo round trip against payload size (median, one call in flight)",
        ("payload (bytes)", "round trip (µs)"),
        (true, true),
        &SIZES.map(|s| s as f64),
        &series,
    );
}
