//! What every scenario here shares: the runtimes each side runs on, how
//! long a contender warms up and the machine cools down, and each
//! library's server and client for the 64-bit echo (the raw socket,
//! busline, tarpc, jsonrpsee; tonic's are in `tonic_peer.rs`).

use std::{
    future::Future,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use busline::{
    rpc::{Client, Reply, Request, Router, Server},
    Address, Codec, Spin, Transport,
};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
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

/// Bytes per raw message: about the size of a small busline call frame.
const RAW_MESSAGE: usize = 48;

/// tarpc's side of every scenario, as busline's router has both echoes.
#[tarpc::service]
pub(crate) trait Echo {
    async fn echo(x: u64) -> u64;
    /// The payload sweep's echo.
    async fn echo_bytes(bytes: Bytes) -> Bytes;
}

#[derive(Clone)]
struct EchoServer;

impl Echo for EchoServer {
    async fn echo(self, _: context::Context, x: u64) -> u64 {
        x
    }

    async fn echo_bytes(self, _: context::Context, bytes: Bytes) -> Bytes {
        bytes
    }
}

/// The middle one of some figures (each table shows the median of its
/// rounds).
pub(crate) fn median_of(mut figures: Vec<f64>) -> f64 {
    figures.sort_by(f64::total_cmp);
    figures[figures.len() / 2]
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

pub(crate) async fn jsonrpsee_server() -> (String, jsonrpsee::server::ServerHandle) {
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

pub(crate) async fn jsonrpsee_client(url: &str) -> Call {
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

/// A tarpc client of [`tarpc_server`] at `socket`, taking frames of any
/// size (as the server does).
pub(crate) async fn tarpc_connect(socket: &Path) -> EchoClient {
    let mut connect = tarpc::serde_transport::unix::connect(socket, Bincode::default);
    connect.config_mut().max_frame_length(usize::MAX);
    let transport = connect.await.expect("tarpc connects");
    EchoClient::new(client::Config::default(), transport).spawn()
}

pub(crate) async fn tarpc_client(socket: &Path) -> Call {
    let client = tarpc_connect(socket).await;
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
