//! Dead and frozen peers: heartbeats notice them, deadlines free what
//! they held.

mod common;
mod support;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use busline::{
    broker::{Broker, BrokerClient, ConnectionEvent, Event, Reconnect},
    rpc::{Client, Router, Server},
    Address, CborCodec, Error, MemoryTransport, TcpTransport,
};
use common::DropSignal;
use futures::StreamExt;
use support::provide_add;
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
    let broker = tcp_broker(Broker::builder().heartbeat(Duration::from_millis(100))).await;
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
    provide_add(&provider.open("math").await.unwrap()).await;
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

/// A broker set up by `builder`, on a loopback TCP port of its own.
async fn tcp_broker(builder: busline::broker::BrokerBuilder) -> busline::broker::BrokerHandle {
    builder
        .listen(
            TcpTransport::new(),
            "tcp://127.0.0.1:0".parse().unwrap(),
            CborCodec::new(),
        )
        .start()
        .await
        .unwrap()
}

/// A broker on a Unix socket that can be stopped and started again at the
/// same address.
async fn unix_broker(path: &std::path::Path) -> busline::broker::BrokerHandle {
    Broker::builder()
        .listen(
            busline::UnixTransport::new(),
            Address::unix(path),
            CborCodec::new(),
        )
        .start()
        .await
        .unwrap()
}

/// A reconnecting client that first tries again after about `delay`
/// (between half and one and a half times it), then every 200 ms at most.
fn resilient(delay: Duration) -> busline::broker::BrokerClientBuilder<CborCodec, busline::NoAuth> {
    BrokerClient::builder(Client::builder(CborCodec::new()).timeout(Duration::from_secs(20)))
        .reconnect(Reconnect {
            initial_delay: delay,
            max_delay: delay.max(Duration::from_millis(200)),
            ..Reconnect::default()
        })
}

/// Quick to come back: the providers.
const SOON: Duration = Duration::from_millis(20);
/// Back a good second after the providers, so that what it calls is
/// there again (clients restore independently; until a provider is back,
/// calls to it fail with `MethodNotFound`).
const LATER: Duration = Duration::from_secs(2);

/// Wait for `wanted` among a client's connection events.
async fn until(
    events: &mut futures::stream::BoxStream<'static, ConnectionEvent>,
    wanted: fn(&ConnectionEvent) -> bool,
) -> Vec<ConnectionEvent> {
    let mut seen = Vec::new();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(20), events.next())
            .await
            .expect("the connection event comes")
            .expect("the client is alive");
        let done = wanted(&event);
        seen.push(event);
        if done {
            return seen;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_broker_gets_everything_back_without_application_code() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bus.sock");
    let transport = busline::UnixTransport::new();
    let addr = Address::unix(&path);
    let broker = unix_broker(&path).await;

    let provider = resilient(SOON)
        .client_id("adder")
        .connect(&transport, &addr)
        .await
        .unwrap();
    let math = provider.open_with_password("math", "s3cret").await.unwrap();
    provide_add(&math).await;
    math.set_balance("add", busline::broker::Balance::RoundRobin)
        .await
        .unwrap();
    math.set_policy(busline::broker::OwnerPolicy::Terminate)
        .await
        .unwrap();
    let news = provider.open("news").await.unwrap();
    news.own_topic("world").await.unwrap();

    let listener = resilient(SOON).connect(&transport, &addr).await.unwrap();
    let mut headlines = listener
        .open("news")
        .await
        .unwrap()
        .subscribe(">")
        .await
        .unwrap();
    let caller_bus = resilient(LATER).connect(&transport, &addr).await.unwrap();
    let caller = caller_bus
        .open_with_password("math", "s3cret")
        .await
        .unwrap();
    assert_eq!(caller.call::<_, i64>("add", &(1, 2)).await.unwrap(), 3);
    let mut events = caller_bus.connection_events();
    let mut provider_events = provider.connection_events();
    let mut listener_events = listener.connection_events();

    broker.shutdown().await;
    until(&mut events, |e| {
        matches!(e, ConnectionEvent::Disconnected(_))
    })
    .await;
    // Made while the broker is away: it waits, then goes out once the
    // caller and the provider are restored.
    let waiting = {
        let caller = caller.clone();
        tokio::spawn(async move { caller.call::<_, i64>("add", &(20, 22)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "{:?}", waiting.await);
    let broker = unix_broker(&path).await;

    let seen = until(&mut provider_events, |e| {
        matches!(e, ConnectionEvent::Restored)
    })
    .await;
    assert!(
        seen.iter()
            .any(|e| matches!(e, ConnectionEvent::Reconnecting(_))),
        "{seen:?}"
    );
    assert!(
        !seen
            .iter()
            .any(|e| matches!(e, ConnectionEvent::NotRestored { .. })),
        "{seen:?}"
    );
    until(&mut events, |e| matches!(e, ConnectionEvent::Restored)).await;
    assert_eq!(waiting.await.unwrap().unwrap(), 42);
    assert_eq!(caller.call::<_, i64>("add", &(2, 2)).await.unwrap(), 4);

    // The provider rejoined first with its password: it owns the channel
    // again, protected, with its policy and balancing.
    let info = caller.describe().await.unwrap();
    assert!(info.protected);
    assert_eq!(info.policy, busline::broker::OwnerPolicy::Terminate);
    assert_eq!(info.round_robin, ["add"]);
    let status = caller_bus.status().await.unwrap();
    assert!(
        format!("{status:?}").contains("adder"),
        "the client id is claimed again: {status:?}"
    );

    // The subscription heard of the gap, and goes on.
    until(&mut listener_events, |e| {
        matches!(e, ConnectionEvent::Restored)
    })
    .await;
    let publisher = resilient(SOON)
        .connect(&transport, &addr)
        .await
        .unwrap()
        .open("news")
        .await
        .unwrap();
    // "world" is the provider's again: the broker drops another's
    // publication on it (handled before the describe answers).
    publisher.publish("world", &"taken").await.unwrap();
    publisher.describe().await.unwrap();
    news.publish("world", &"back again").await.unwrap();
    assert_eq!(next_event(&mut headlines).await, Event::Interrupted);
    match next_event(&mut headlines).await {
        Event::Message(p) => assert_eq!(p.decode::<String>().unwrap(), "back again"),
        other => panic!("{other:?}"),
    }
    broker.shutdown().await;
}

async fn next_event(sub: &mut busline::broker::Subscription) -> Event {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("an event comes")
        .expect("the subscription goes on")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gives_up_after_its_window_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bus.sock");
    let transport = busline::UnixTransport::new();
    let broker = unix_broker(&path).await;
    let bus = BrokerClient::builder(Client::builder(CborCodec::new()))
        .reconnect(Reconnect {
            initial_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(50),
            give_up_after: Some(Duration::from_millis(300)),
            max_waiting_calls: 1,
        })
        .connect(&transport, &Address::unix(&path))
        .await
        .unwrap();
    let channel = bus.open("c").await.unwrap();
    let mut sub = channel.subscribe(">").await.unwrap();
    let mut events = bus.connection_events();
    broker.shutdown().await;
    until(&mut events, |e| {
        matches!(e, ConnectionEvent::Disconnected(_))
    })
    .await;

    // One call may wait; the next is refused at once.
    let first = {
        let channel = channel.clone();
        tokio::spawn(async move { channel.call::<_, ()>("m", &()).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = channel.call::<_, ()>("m", &()).await.unwrap_err();
    assert!(matches!(second, Error::Overloaded(_)), "{second}");

    let seen = until(&mut events, |e| matches!(e, ConnectionEvent::GaveUp(_))).await;
    assert!(seen.len() > 1, "it tried before giving up: {seen:?}");
    let first = first.await.unwrap().unwrap_err();
    assert!(first.to_string().contains("gave up"), "{first}");
    let later = channel.call::<_, ()>("m", &()).await.unwrap_err();
    assert!(matches!(later, Error::Disconnected(_)), "{later}");
    // The subscription is told, then ends.
    let interrupted = tokio::time::timeout(Duration::from_secs(5), sub.next()).await;
    assert!(
        matches!(interrupted, Ok(Some(Ok(Event::Interrupted)))),
        "{interrupted:?}"
    );
    let ended = tokio::time::timeout(Duration::from_secs(5), sub.next()).await;
    assert!(matches!(ended, Ok(None)), "{ended:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_reconnect_a_lost_connection_ends_subscriptions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bus.sock");
    let broker = unix_broker(&path).await;
    let bus = BrokerClient::connect(
        Client::builder(CborCodec::new()),
        &busline::UnixTransport::new(),
        &Address::unix(&path),
    )
    .await
    .unwrap();
    let channel = bus.open("c").await.unwrap();
    let mut sub = channel.subscribe(">").await.unwrap();
    broker.shutdown().await;
    let interrupted = tokio::time::timeout(Duration::from_secs(5), sub.next()).await;
    assert!(
        matches!(interrupted, Ok(Some(Ok(Event::Interrupted)))),
        "{interrupted:?}"
    );
    let ended = tokio::time::timeout(Duration::from_secs(5), sub.next()).await;
    assert!(matches!(ended, Ok(None)), "{ended:?}");
    let err = channel.call::<_, ()>("m", &()).await.unwrap_err();
    assert!(matches!(err, Error::Disconnected(_)), "{err}");
}

#[tokio::test]
async fn a_busy_server_is_not_taken_for_a_dead_one() {
    let transport = MemoryTransport::new();
    let addr = Address::memory("busy-heartbeat");
    // One handler at a time, each slower than the client's heartbeat
    // allows for silence: the server stops reading while it works.
    let router = Router::new().unary("slow", |n: u64| async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        Ok::<_, String>(n)
    });
    let server = Server::builder(router, CborCodec::new())
        .max_handlers(1)
        .bind(&transport, &addr)
        .await
        .unwrap();
    let client = Client::builder(CborCodec::new())
        .heartbeat(Duration::from_millis(100))
        .connect(&transport, &addr)
        .await
        .unwrap();
    let (a, b) = tokio::join!(
        client.call::<_, u64>("slow", &1),
        client.call::<_, u64>("slow", &2)
    );
    assert_eq!((a.unwrap(), b.unwrap()), (1, 2));
    assert!(!client.is_closed());
    server.shutdown().await;
}

#[tokio::test]
async fn a_sender_blocked_by_a_frozen_peer_is_released_by_the_heartbeat() {
    let server = Server::builder(adder(), CborCodec::new())
        .bind(&TcpTransport::new(), &"tcp://127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let proxy = FreezingProxy::start(socket_addr(server.local_addr())).await;
    let client = Client::builder(CborCodec::new())
        .heartbeat(Duration::from_millis(100))
        // More than a connection lets wait before it stops reading.
        .max_queued_notifications(5_000)
        .connect(&TcpTransport::new(), &proxy.addr)
        .await
        .unwrap();
    proxy.freeze();
    // Notifications fill the socket buffers, then the queue; the sender
    // waits (no timeout of its own) until the heartbeat gives up.
    let payload = "x".repeat(256);
    let err = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Err(err) = client.notify("log", &payload).await {
                break err;
            }
        }
    })
    .await
    .expect("the heartbeat notices the frozen peer behind full buffers");
    assert!(matches!(err, Error::Disconnected(_)), "{err}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_broker_refuses_after_a_restart_is_reported_and_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bus.sock");
    let transport = busline::UnixTransport::new();
    let addr = Address::unix(&path);
    let broker = unix_broker(&path).await;
    let member = resilient(LATER).connect(&transport, &addr).await.unwrap();
    let vault = member.open_with_password("vault", "old").await.unwrap();
    let mut secrets = vault.subscribe(">").await.unwrap();
    let mut events = member.connection_events();
    broker.shutdown().await;
    let broker = unix_broker(&path).await;
    // Someone else takes the name first, with another password.
    let other = BrokerClient::connect(Client::builder(CborCodec::new()), &transport, &addr)
        .await
        .unwrap();
    other.open_with_password("vault", "new").await.unwrap();

    let seen = until(&mut events, |e| matches!(e, ConnectionEvent::Restored)).await;
    let refused = seen.iter().find_map(|e| match e {
        ConnectionEvent::NotRestored { what, error } => Some((what.clone(), error.clone())),
        _ => None,
    });
    let (what, error) = refused.expect("the refusal is reported");
    assert!(what.contains("vault"), "{what}");
    assert!(matches!(error, Error::Unauthorized(_)), "{error}");
    // The subscription there heard of the cut, then ends.
    assert_eq!(next_event(&mut secrets).await, Event::Interrupted);
    let ended = tokio::time::timeout(Duration::from_secs(5), secrets.next()).await;
    assert!(matches!(ended, Ok(None)), "{ended:?}");
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_client_stops_reconnecting() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bus.sock");
    let transport = busline::UnixTransport::new();
    let addr = Address::unix(&path);
    let broker = unix_broker(&path).await;
    let bus = resilient(SOON).connect(&transport, &addr).await.unwrap();
    let channel = bus.open("c").await.unwrap();
    let mut events = bus.connection_events();
    bus.close();
    let err = channel.call::<_, ()>("m", &()).await.unwrap_err();
    assert!(err.to_string().contains("closed"), "{err}");
    // No attempt to come back, though the broker is there.
    let event = tokio::time::timeout(Duration::from_millis(500), events.next()).await;
    assert!(event.is_err(), "{event:?}");
    broker.shutdown().await;
}

/// A publisher whose broker stops reading is paced by its connection's
/// queue: publications go out at once while there is room, then a publish
/// waits for it instead of growing memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_waits_once_its_connection_queue_is_full() {
    let broker = tcp_broker(Broker::builder()).await;
    let direct = broker.local_addrs()[0].clone();
    let proxy = FreezingProxy::start(socket_addr(&direct)).await;
    let publisher = BrokerClient::connect(
        Client::builder(CborCodec::new()).max_queued_notifications(100),
        &TcpTransport::new(),
        &proxy.addr,
    )
    .await
    .unwrap();
    let news = publisher.open("news").await.unwrap();
    proxy.freeze();
    let payload = "x".repeat(1024);
    // Far more than the socket buffers and the queue hold (a few MB).
    let mut published = 0u64;
    let mut waited = false;
    while published < 50_000 {
        let publish = news.publish("world", &payload);
        if tokio::time::timeout(Duration::from_millis(500), publish)
            .await
            .is_err()
        {
            waited = true;
            break;
        }
        published += 1;
    }
    assert!(
        waited,
        "{published} publications went out and none waited for room"
    );
    assert!(published >= 100, "only {published} before the first wait");
    broker.shutdown().await;
}
