//! Dead and frozen peers: heartbeats notice them, deadlines free what
//! they held.

mod common;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use busline::{
    broker::{Broker, BrokerClient},
    rpc::{Client, Router, Server},
    Address, CborCodec, Error, MemoryTransport, TcpTransport,
};
use common::DropSignal;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// A TCP proxy that can freeze: it stops forwarding in both directions
/// but keeps both connections open, like a peer whose machine vanished
/// or whose process hangs. No FIN, no RST: only a heartbeat notices.
struct FreezingProxy {
    addr: Address,
    frozen: Arc<AtomicBool>,
}

impl FreezingProxy {
    async fn start(upstream: std::net::SocketAddr) -> FreezingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let local = listener.local_addr().unwrap();
        let frozen = Arc::new(AtomicBool::new(false));
        let freeze = frozen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = TcpStream::connect(upstream).await.unwrap();
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pump(client_read, server_write, freeze.clone()));
                tokio::spawn(pump(server_read, client_write, freeze.clone()));
            }
        });
        FreezingProxy {
            addr: format!("tcp://{local}").parse().unwrap(),
            frozen,
        }
    }

    fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.load(Ordering::SeqCst) {
            // Hold both ends open, forward nothing, forever.
            let _held = (from, to);
            std::future::pending::<()>().await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

fn adder() -> Router {
    Router::new().unary(
        "add",
        |(a, b): (i64, i64)| async move { Ok::<_, String>(a + b) },
    )
}

fn socket_addr(addr: &Address) -> std::net::SocketAddr {
    addr.to_string()
        .trim_start_matches("tcp://")
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_client_notices_a_frozen_server_within_its_heartbeat() {
    let server = Server::builder(adder(), CborCodec::new())
        .bind(&TcpTransport::new(), &"tcp://127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let proxy = FreezingProxy::start(socket_addr(server.local_addr())).await;
    let interval = Duration::from_millis(100);
    let client = Client::builder(CborCodec::new())
        .heartbeat(interval)
        .connect(&TcpTransport::new(), &proxy.addr)
        .await
        .unwrap();
    assert_eq!(client.call::<_, i64>("add", &(1, 2)).await.unwrap(), 3);

    proxy.freeze();
    let frozen_at = Instant::now();
    // Without a heartbeat this call would wait forever.
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        client.call::<_, i64>("add", &(3, 4)),
    )
    .await
    .expect("the frozen server is noticed")
    .unwrap_err();
    assert!(matches!(err, Error::Disconnected(_)), "{err}");
    assert!(err.to_string().contains("heartbeat"), "{err}");
    // Two silent intervals at least, three at most (with room for a slow
    // machine's scheduling).
    let waited = frozen_at.elapsed();
    assert!(waited >= interval, "gave up after only {waited:?}");
    assert!(client.is_closed());
    server.shutdown().await;
}

#[tokio::test]
async fn an_idle_connection_with_heartbeats_stays_up() {
    let transport = MemoryTransport::new();
    let addr = Address::memory("idle-heartbeat");
    let server = Server::builder(adder(), CborCodec::new())
        .heartbeat(Duration::from_millis(20))
        .bind(&transport, &addr)
        .await
        .unwrap();
    let client = Client::builder(CborCodec::new())
        .heartbeat(Duration::from_millis(20))
        .connect(&transport, &addr)
        .await
        .unwrap();
    // Many intervals of silence but for the probes, answered both ways.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!client.is_closed());
    assert_eq!(client.call::<_, i64>("add", &(20, 22)).await.unwrap(), 42);
    server.shutdown().await;
}

#[tokio::test]
async fn a_broker_drops_a_frozen_provider_and_its_methods() {
    let broker = Broker::builder()
        .heartbeat(Duration::from_millis(100))
        .listen(
            TcpTransport::new(),
            "tcp://127.0.0.1:0".parse().unwrap(),
            CborCodec::new(),
        )
        .start()
        .await
        .unwrap();
    let direct = broker.local_addrs()[0].clone();
    let proxy = FreezingProxy::start(socket_addr(&direct)).await;
    let connect = |addr: Address| async move {
        BrokerClient::connect(
            Client::builder(CborCodec::new()),
            &TcpTransport::new(),
            &addr,
        )
        .await
        .unwrap()
    };
    let provider = connect(proxy.addr.clone()).await;
    provider
        .open("math")
        .await
        .unwrap()
        .provide(
            "add",
            |(a, b): (i64, i64)| async move { Ok::<_, String>(a + b) },
        )
        .await
        .unwrap();
    let caller = connect(direct).await.open("math").await.unwrap();
    assert_eq!(caller.call::<_, i64>("add", &(1, 1)).await.unwrap(), 2);

    proxy.freeze();
    // The broker gives the silent provider up, and its method with it.
    let gone = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if caller.describe().await.unwrap().methods.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "the frozen provider is still listed");
    let err = caller.call::<_, i64>("add", &(1, 1)).await.unwrap_err();
    assert!(matches!(err, Error::MethodNotFound(_)), "{err}");
    broker.shutdown().await;
}

#[tokio::test]
async fn a_frozen_provider_costs_callers_only_their_deadline() {
    let transport = MemoryTransport::new();
    let broker = Broker::builder()
        .listen(
            transport,
            Address::memory("frozen-provider"),
            CborCodec::new(),
        )
        .start()
        .await
        .unwrap();
    let addr = broker.local_addrs()[0].clone();
    let provider = BrokerClient::connect(Client::builder(CborCodec::new()), &transport, &addr)
        .await
        .unwrap();
    let (dropped_tx, mut dropped) = tokio::sync::mpsc::unbounded_channel();
    provider
        .open("work")
        .await
        .unwrap()
        .provide("hang", move |(): ()| {
            let dropped = dropped_tx.clone();
            async move {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let _signal = DropSignal(Some(tx));
                let _ = dropped.send(rx);
                std::future::pending::<()>().await;
                Ok::<_, String>(())
            }
        })
        .await
        .unwrap();
    let caller = BrokerClient::connect(
        Client::builder(CborCodec::new()).timeout(Duration::from_millis(200)),
        &transport,
        &addr,
    )
    .await
    .unwrap()
    .open("work")
    .await
    .unwrap();

    for _ in 0..3 {
        let started = Instant::now();
        let err = caller.call::<_, ()>("hang", &()).await.unwrap_err();
        assert!(matches!(err, Error::Timeout(_)), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        // The deadline travelled: the provider's handler was dropped, so
        // the broker's and the provider's slots are free again.
        let handler = tokio::time::timeout(Duration::from_secs(5), dropped.recv())
            .await
            .expect("the handler started")
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), handler)
            .await
            .expect("the frozen handler is dropped at the deadline")
            .unwrap();
    }
    broker.shutdown().await;
}
