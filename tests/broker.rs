//! The broker with three listeners at once (memory + CBOR, Unix +
//! JSON-line, TCP + JSON-RPC): clients on any of them reach each other.

mod support;

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use busline::{
    broker::{Broker, BrokerClient, BrokerClientBuilder, BrokerHandle, Channel},
    rpc::{Client, Reply, Request},
    Address, AnyTransport, CborCodec, Encoding, Error, JsonLineCodec, JsonRpcCodec,
    MemoryTransport, NoAuth, Payload, Spin, TcpTransport, UnixTransport,
};
use futures::{stream, StreamExt};
use support::{memory_client, provide_add};
use tokio::sync::oneshot;

struct Setup {
    broker: BrokerHandle,
    _dir: tempfile::TempDir,
}

impl Setup {
    async fn start() -> Setup {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = tempfile::tempdir().unwrap();
        let memory = Address::memory(format!(
            "broker-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let broker = Broker::builder()
            .listen(MemoryTransport::new(), memory, CborCodec::new())
            .listen(
                UnixTransport::new(),
                Address::unix(dir.path().join("broker.sock")),
                JsonLineCodec::new(),
            )
            .listen(
                TcpTransport::new(),
                Address::tcp("127.0.0.1", 0),
                JsonRpcCodec::new(),
            )
            .start()
            .await
            .unwrap();
        Setup { broker, _dir: dir }
    }

    /// A client on listener `n` (0 memory/CBOR, 1 Unix/JSON-line, 2
    /// TCP/JSON-RPC), with that listener's codec.
    async fn client(&self, n: usize) -> BrokerClient {
        let addr = self.broker.local_addrs()[n].clone();
        let transport = busline::any_transport();
        match n {
            0 => connect(Client::builder(CborCodec::new()), &transport, &addr).await,
            1 => connect(Client::builder(JsonLineCodec::new()), &transport, &addr).await,
            _ => connect(Client::builder(JsonRpcCodec::new()), &transport, &addr).await,
        }
    }
}

async fn connect<C: busline::Codec>(
    builder: busline::rpc::ClientBuilder<C, busline::NoAuth>,
    transport: &AnyTransport,
    addr: &Address,
) -> BrokerClient {
    BrokerClient::connect(builder, transport, addr)
        .await
        .unwrap()
}

/// A broker set up by `builder` with one memory listener speaking CBOR,
/// and that listener's address.
async fn memory_broker(
    builder: busline::broker::BrokerBuilder,
    name: &str,
) -> (BrokerHandle, Address) {
    let broker = builder
        .listen(
            MemoryTransport::new(),
            Address::memory(name),
            CborCodec::new(),
        )
        .start()
        .await
        .unwrap();
    let addr = broker.local_addrs()[0].clone();
    (broker, addr)
}

/// A broker and clients that poll before they sleep (`Spin::ADAPTIVE`), on
/// a one-thread runtime (where a `#[tokio::main]` body waits for answers):
/// calls and publications arrive as with sleeping connections.
#[tokio::test(flavor = "current_thread")]
async fn a_spinning_broker_and_clients_carry_calls_and_publications() {
    let name = format!("spinning-broker-{}", std::process::id());
    let (broker, addr) = memory_broker(Broker::builder().spin(Spin::ADAPTIVE), &name).await;
    let transport = busline::any_transport();
    let spinning = || Client::builder(CborCodec::new()).spin(Spin::ADAPTIVE);
    let provider = connect(spinning(), &transport, &addr).await;
    provide_add(&provider.open("math").await.unwrap()).await;
    let caller = connect(spinning(), &transport, &addr).await;
    let math = caller.open("math").await.unwrap();
    for i in 0..100i64 {
        assert_eq!(math.call::<_, i64>("add", &(i, 1)).await.unwrap(), i + 1);
    }
    let mut news = caller
        .open("news")
        .await
        .unwrap()
        .subscribe(">")
        .await
        .unwrap();
    let publisher = provider.open("news").await.unwrap();
    for i in 0..50u64 {
        publisher.publish("tick", &i).await.unwrap();
    }
    for i in 0..50u64 {
        assert_eq!(next_message(&mut news).await.decode::<u64>().unwrap(), i);
    }
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_cross_every_transport_and_codec() {
    let s = Setup::start().await;
    for provider_on in 0..3 {
        let provider = s.client(provider_on).await;
        let channel = format!("math{provider_on}");
        provide_add(&provider.open(&channel).await.unwrap()).await;
        for caller_on in 0..3 {
            let caller = s.client(caller_on).await;
            let ch = caller.open(&channel).await.unwrap();
            let sum: i64 = ch.call("add", &(provider_on as i64, 40)).await.unwrap();
            assert_eq!(sum, provider_on as i64 + 40, "{provider_on} -> {caller_on}");
        }
    }
    s.broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_bytes_arrive_untouched() {
    let s = Setup::start().await;
    // Bytes no codec would produce itself: odd CBOR, and JSON with spacing.
    let cases = [
        (
            0,
            Payload::from_bytes(Encoding::Binary, vec![0u8, 0xff, 0x0a, 0x0d, 0x7b]),
        ),
        (
            0,
            Payload::from_bytes(Encoding::Cbor, vec![0x82, 0x01, 0x61, b'x']),
        ),
        (
            1,
            Payload::from_bytes(Encoding::Json, r#"{ "a" :  [1, 2.50, "\u00e9"] }"#),
        ),
    ];
    for (on, payload) in cases {
        let provider = s.client(on).await;
        let ch = provider.open("raw").await.unwrap();
        let expected = payload.clone();
        ch.provide_service(
            "echo",
            tower::service_fn(move |req: Request| {
                let expected = expected.clone();
                async move {
                    assert_eq!(req.payload, expected, "the provider got other bytes");
                    Ok::<_, Error>(Reply::Unary(req.payload))
                }
            }),
        )
        .await
        .unwrap();
        let caller = s.client(on).await;
        let back = caller
            .open("raw")
            .await
            .unwrap()
            .call_raw("echo", payload.clone())
            .await
            .unwrap();
        assert_eq!(back, payload, "the caller got other bytes");
        ch.leave().await.unwrap();
    }
    s.broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_share_calls_round_robin() {
    let s = Setup::start().await;
    let counts: Vec<Arc<AtomicUsize>> = (0..2).map(|_| Arc::default()).collect();
    let mut providers = Vec::new();
    for (on, count) in counts.iter().enumerate() {
        let p = s.client(on).await;
        let count = count.clone();
        p.open("work")
            .await
            .unwrap()
            .provide("job", move |n: u64| {
                count.fetch_add(1, Ordering::SeqCst);
                async move { Ok::<_, String>(n) }
            })
            .await
            .unwrap();
        providers.push(p);
    }
    let ch = s.client(2).await.open("work").await.unwrap();
    for n in 0..10u64 {
        assert_eq!(ch.call::<_, u64>("job", &n).await.unwrap(), n);
    }
    let counts: Vec<usize> = counts.iter().map(|c| c.load(Ordering::SeqCst)).collect();
    assert_eq!(counts, [5, 5]);
    s.broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_fails_over_when_its_provider_disconnects() {
    let s = Setup::start().await;
    let (started_tx, started) = oneshot::channel();
    let started_tx = Arc::new(std::sync::Mutex::new(Some(started_tx)));
    let doomed = s.client(1).await;
    doomed
        .open("jobs")
        .await
        .unwrap()
        .provide("slow", move |(): ()| {
            if let Some(tx) = started_tx.lock().unwrap().take() {
                let _ = tx.send(());
            }
            async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok::<_, String>("doomed")
            }
        })
        .await
        .unwrap();
    let caller = s.client(0).await.open("jobs").await.unwrap();
    let call = tokio::spawn(async move { caller.call::<_, String>("slow", &()).await });
    started.await.unwrap();

    let backup = s.client(2).await;
    backup
        .open("jobs")
        .await
        .unwrap()
        .provide("slow", |(): ()| async { Ok::<_, String>("backup") })
        .await
        .unwrap();
    drop(doomed);
    let answer = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer.unwrap(), "backup");

    // With nobody left to fail over to, the error says so.
    drop(backup);
    let lonely = s.client(0).await;
    let ch = lonely.open("jobs").await.unwrap();
    let err = loop {
        match ch.call::<_, String>("slow", &()).await {
            // The broker may not have seen the backup leave yet.
            Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(err) => break err,
        }
    };
    assert!(
        matches!(err, Error::MethodNotFound(_) | Error::Disconnected(_)),
        "{err:?}"
    );
    s.broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_typed() {
    let s = Setup::start().await;
    let c = s.client(0).await;
    let ch = c.open("empty").await.unwrap();
    let err = ch.call::<_, i64>("add", &(1, 2)).await.unwrap_err();
    assert!(
        matches!(err, Error::MethodNotFound(ref m) if m.contains("no provider")),
        "{err:?}"
    );

    // Calling into a channel one has not opened.
    let other = s.client(1).await;
    provide_add(&other.open("private").await.unwrap()).await;
    let err = c
        .client()
        .call::<_, i64>("private/add", &(1, 2))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Unauthorized(ref m) if m.contains("open it first")),
        "{err:?}"
    );
    // Providing on a channel one has not opened.
    let err = c
        .client()
        .call::<_, ()>(
            "busline.provide",
            &serde_json::json!({"channel": "private", "method": "x"}),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unauthorized(_)), "{err:?}");
    // Bad names, refused by the client and by the broker.
    assert!(matches!(c.open("a/b").await, Err(Error::Protocol(_))));
    let err = c
        .client()
        .call::<_, serde_json::Value>("busline.open", &serde_json::json!({"channel": "a/b"}))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Protocol(_)), "{err:?}");
    // Malformed control arguments.
    let err = c
        .client()
        .call::<_, serde_json::Value>("busline.open", &42)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Serialization(_)), "{err:?}");
    // Not a routed name at all.
    let err = c.client().call::<_, ()>("nothing", &()).await.unwrap_err();
    assert!(matches!(err, Error::MethodNotFound(_)), "{err:?}");
    s.broker.shutdown().await;
}

/// Counts what a stream handed out and sees it dropped.
struct Watch(Arc<AtomicUsize>, Option<oneshot::Sender<()>>);

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(tx) = self.1.take() {
            let _ = tx.send(());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_pass_through_with_backpressure_and_cancellation() {
    let s = Setup::start().await;
    let provider = s.client(1).await;
    let produced = Arc::new(AtomicUsize::new(0));
    let (dropped_tx, dropped) = oneshot::channel();
    let dropped_tx = Arc::new(std::sync::Mutex::new(Some(dropped_tx)));
    let counter = produced.clone();
    provider
        .open("feed")
        .await
        .unwrap()
        .provide_stream("count", move |n: u64| {
            // Only the endless stream reports its end.
            let signal = (n == u64::MAX)
                .then(|| dropped_tx.lock().unwrap().take())
                .flatten();
            let watch = Watch(counter.clone(), signal);
            stream::iter(0..n).map(move |i| {
                watch.0.fetch_add(1, Ordering::SeqCst);
                Ok::<_, String>(i)
            })
        })
        .await
        .unwrap();

    for on in [0, 2] {
        let ch = s.client(on).await.open("feed").await.unwrap();
        let all: Vec<u64> = ch
            .stream::<_, u64>("count", &1000u64)
            .await
            .unwrap()
            .map(Result::unwrap)
            .collect()
            .await;
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
    }

    // An endless stream, read a little, then dropped: the provider stops,
    // having run at most a few windows ahead of the reader.
    produced.store(0, Ordering::SeqCst);
    let ch = s.client(0).await.open("feed").await.unwrap();
    let mut items = ch.stream::<_, u64>("count", &u64::MAX).await.unwrap();
    for i in 0..3 {
        assert_eq!(items.next().await.unwrap().unwrap(), i);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ahead = produced.load(Ordering::SeqCst);
    assert!(
        ahead < 1000,
        "the provider ran {ahead} items ahead of a reader"
    );
    drop(items);
    tokio::time::timeout(Duration::from_secs(10), dropped)
        .await
        .expect("the provider's stream was dropped")
        .unwrap();
    s.broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_members_and_sends() {
    let s = Setup::start().await;
    let first = s.client(0).await;
    let second = s.client(1).await;
    let a = first.open("room").await.unwrap();
    let b = second.open("room").await.unwrap();
    assert!(a.is_owner() && !b.is_owner());
    let before = b.describe().await.unwrap();
    assert_eq!(before.members.len(), 2);
    assert_eq!(before.owner, before.members[0]);

    // `send` reaches one provider and nobody answers.
    let (got_tx, got) = oneshot::channel();
    let got_tx = Arc::new(std::sync::Mutex::new(Some(got_tx)));
    b.provide("note", move |text: String| {
        if let Some(tx) = got_tx.lock().unwrap().take() {
            let _ = tx.send(text);
        }
        async { Ok::<_, String>(()) }
    })
    .await
    .unwrap();
    a.send("note", &"hello").await.unwrap();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), got)
            .await
            .unwrap()
            .unwrap(),
        "hello"
    );

    // The owner leaves: the oldest remaining member owns the channel, and
    // is told.
    let mut events = second.events();
    drop(a);
    drop(first);
    let told = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        told,
        busline::broker::ChannelEvent::OwnerChanged {
            channel: "room".into(),
            you_own_it: true
        }
    );
    let after = loop {
        let info = b.describe().await.unwrap();
        if info.members.len() == 1 {
            break info;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(after.owner, before.members[1]);
    assert_eq!(
        after.methods,
        vec![("note".to_string(), vec![before.members[1]])]
    );
    s.broker.shutdown().await;
}

async fn next_message(sub: &mut busline::broker::Subscription) -> busline::broker::Publication {
    match tokio::time::timeout(Duration::from_secs(10), sub.next()).await {
        Ok(Some(Ok(busline::broker::Event::Message(p)))) => p,
        other => panic!("expected a publication, got {other:?}"),
    }
}

/// Several subscribers on each listener: where the codec encodes alike
/// (CBOR, JSON-line) the broker encodes each publication once for all of
/// a listener's subscribers; JSON-RPC encodes per connection. Every
/// subscriber gets every publication in order, small ones and ones large
/// enough to be written from where they are, whoever published them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publications_to_many_subscribers_arrive_whole_on_every_codec() {
    let s = Setup::start().await;
    let mut subs = Vec::new();
    let mut clients = Vec::new();
    for on in [0, 0, 0, 1, 1, 1, 2, 2] {
        let client = s.client(on).await;
        let sub = client
            .open("wide")
            .await
            .unwrap()
            .subscribe("t.>")
            .await
            .unwrap();
        subs.push((on, sub));
        clients.push(client);
    }
    let payloads: Vec<Vec<u8>> = (0..6u8)
        .map(|i| vec![i; if i % 2 == 0 { 10 } else { 100_000 }])
        .collect();
    for (i, bytes) in payloads.iter().enumerate() {
        let publisher = s.client(i % 3).await;
        publisher
            .open("wide")
            .await
            .unwrap()
            .publish(
                &format!("t.{i}"),
                &serde_bytes::ByteBuf::from(bytes.clone()),
            )
            .await
            .unwrap();
        // Answered after the publication ahead of it was routed: the next
        // publisher's comes after it.
        publisher.status().await.unwrap();
        clients.push(publisher);
    }
    for (on, sub) in &mut subs {
        for (i, bytes) in payloads.iter().enumerate() {
            let got = next_message(sub).await;
            assert_eq!(got.topic, format!("t.{i}"), "listener {on}: in order");
            let value: serde_bytes::ByteBuf = got.decode().unwrap();
            assert_eq!(
                &value[..],
                &bytes[..],
                "listener {on}: publication {i} whole"
            );
        }
    }
    s.broker.shutdown().await;
}

/// One subscriber alone on some topics and sharing others: its connection
/// writes publications it gets alone (encoded there) between ones encoded
/// once for both (frames), small and large, and reads them in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lone_and_shared_publications_keep_their_order_on_one_connection() {
    let s = Setup::start().await;
    let (both, other, publisher) = (s.client(0).await, s.client(0).await, s.client(0).await);
    let mut mine = both
        .open("mix")
        .await
        .unwrap()
        .subscribe(">")
        .await
        .unwrap();
    let mut shared = other
        .open("mix")
        .await
        .unwrap()
        .subscribe("shared.>")
        .await
        .unwrap();
    let channel = publisher.open("mix").await.unwrap();
    let size = |i: usize| if i % 3 == 0 { 40_000 } else { 16 };
    let topic = |i: usize| format!("{}.{i}", if i % 2 == 0 { "shared" } else { "alone" });
    for i in 0..24 {
        let bytes = serde_bytes::ByteBuf::from(vec![i as u8; size(i)]);
        channel.publish(&topic(i), &bytes).await.unwrap();
    }
    for i in 0..24 {
        let got = next_message(&mut mine).await;
        assert_eq!(got.topic, topic(i), "in publication order");
        let value: serde_bytes::ByteBuf = got.decode().unwrap();
        assert_eq!(
            value.to_vec(),
            vec![i as u8; size(i)],
            "publication {i} whole"
        );
    }
    for i in (0..24).step_by(2) {
        assert_eq!(next_message(&mut shared).await.topic, topic(i));
    }
    s.broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publications_reach_matching_subscribers_once() {
    let s = Setup::start().await;
    let mut subs = Vec::new();
    let mut clients = Vec::new();
    for (on, pattern) in [(0, "sensors.*.temp"), (1, "sensors.>"), (2, "alerts")] {
        let c = s.client(on).await;
        subs.push(
            c.open("home")
                .await
                .unwrap()
                .subscribe(pattern)
                .await
                .unwrap(),
        );
        clients.push(c);
    }
    // Two patterns of one client that both match: each gets it.
    let both = clients[0].open("home").await.unwrap();
    let mut twice = both.subscribe("sensors.kitchen.*").await.unwrap();

    let publisher = s.client(2).await.open("home").await.unwrap();
    publisher
        .publish("sensors.kitchen.temp", &21.5)
        .await
        .unwrap();
    publisher
        .publish("sensors.kitchen.humidity", &40)
        .await
        .unwrap();
    publisher.publish("alerts", &"smoke").await.unwrap();

    let p = next_message(&mut subs[0]).await;
    assert_eq!(
        (p.topic.as_str(), p.decode::<f64>().unwrap()),
        ("sensors.kitchen.temp", 21.5)
    );
    let topics: Vec<String> = [
        next_message(&mut subs[1]).await,
        next_message(&mut subs[1]).await,
    ]
    .into_iter()
    .map(|p| p.topic)
    .collect();
    assert_eq!(topics, ["sensors.kitchen.temp", "sensors.kitchen.humidity"]);
    assert_eq!(
        next_message(&mut subs[2]).await.decode::<String>().unwrap(),
        "smoke"
    );
    assert_eq!(next_message(&mut twice).await.topic, "sensors.kitchen.temp");
    assert_eq!(
        next_message(&mut twice).await.topic,
        "sensors.kitchen.humidity"
    );

    // Nothing else arrived for the first subscriber.
    publisher.publish("sensors.hall.temp", &19).await.unwrap();
    assert_eq!(next_message(&mut subs[0]).await.topic, "sensors.hall.temp");

    // Bad topics and patterns, and subscribing without joining.
    assert!(matches!(
        publisher.publish("a..b", &1).await,
        Err(Error::Protocol(_))
    ));
    assert!(matches!(
        publisher.subscribe("a.>.b").await,
        Err(Error::Protocol(_))
    ));
    let stranger = s.client(1).await;
    let err = stranger
        .client()
        .call::<_, ()>(
            "busline.subscribe",
            &serde_json::json!({"channel": "home", "pattern": ">"}),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unauthorized(_)), "{err:?}");

    // Dropping a subscription unsubscribes at the broker.
    drop(subs.remove(2));
    let info = loop {
        let info = publisher.describe().await.unwrap();
        if !info.subscriptions.iter().any(|(_, p)| p == "alerts") {
            break info;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(info.subscriptions.len(), 3, "{info:?}");
    s.broker.shutdown().await;
}

/// How the test configures a subscriber's client.
type SubscriberClient = BrokerClientBuilder<CborCodec, NoAuth>;

/// The subscriber's client with the default subscription queue.
fn default_queue(b: SubscriberClient) -> SubscriberClient {
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_is_told_what_it_missed() {
    let builder = Broker::builder().subscriber_queue(16);
    publish_to_a_slow_subscriber(builder, default_queue, "slow-sub", 20_000, 8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_queue_is_bounded_in_bytes_too() {
    // Room for thousands of publications, but only 64 KiB of them.
    let builder = Broker::builder().subscriber_queue_bytes(64 << 10);
    publish_to_a_slow_subscriber(builder, default_queue, "slow-sub-bytes", 400, 16 << 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_queue_in_the_client_is_bounded() {
    // The broker would hold all of them; the subscriber's client not.
    let client = |b: SubscriberClient| b.subscription_queue(16);
    publish_to_a_slow_subscriber(Broker::builder(), client, "slow-local", 2_000, 8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_queue_in_the_client_is_bounded_in_bytes_too() {
    // 64 KiB holds at most three 16 KiB publications beside their entries.
    let client = |b: SubscriberClient| b.subscription_queue_bytes(64 << 10);
    publish_to_a_slow_subscriber(Broker::builder(), client, "slow-local-bytes", 40, 16 << 10).await;
}

/// Publish `sent` numbered publications of about `size` bytes to a
/// subscriber (its client configured by `subscriber`) that reads only
/// afterwards: it gets them in order, and is told exactly how many it
/// missed.
async fn publish_to_a_slow_subscriber(
    builder: busline::broker::BrokerBuilder,
    subscriber: fn(SubscriberClient) -> SubscriberClient,
    name: &str,
    sent: u64,
    size: usize,
) {
    let (broker, addr) = memory_broker(builder, name).await;
    let subscriber = subscriber(BrokerClient::builder(Client::builder(CborCodec::new())))
        .connect(&MemoryTransport::new(), &addr)
        .await
        .unwrap();
    let mut sub = subscriber
        .open("firehose")
        .await
        .unwrap()
        .subscribe(">")
        .await
        .unwrap();
    let mut marks = subscriber
        .open("firehose-mark")
        .await
        .unwrap()
        .subscribe(">")
        .await
        .unwrap();
    let publishing = memory_client(&addr).await;
    let publisher = publishing.open("firehose").await.unwrap();
    let marker = publishing.open("firehose-mark").await.unwrap();
    let padding = "x".repeat(size);
    for i in 0..sent {
        publisher.publish("tick", &(i, &padding)).await.unwrap();
    }
    // A mark published after them reaches the subscriber's client after
    // them (one connection, in order): once it is read, every publication
    // has reached the subscription, been counted missed by the client, or
    // been dropped by the broker (whose notice of it follows at once), and
    // none is read while they still arrive. Published again while the
    // broker's queue for the subscriber may still be full (it says so:
    // lagged).
    let marked = async {
        loop {
            marker.publish("mark", &()).await.unwrap();
            match tokio::time::timeout(Duration::from_millis(200), marks.next()).await {
                Ok(Some(Ok(busline::broker::Event::Message(_)))) => break,
                Ok(Some(Ok(busline::broker::Event::Lagged(_)))) | Err(_) => {}
                other => panic!("the marks ended: {other:?}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), marked)
        .await
        .expect("a mark arrives");

    let (mut received, mut missed, mut last) = (0u64, 0u64, None);
    while received + missed < sent {
        match tokio::time::timeout(Duration::from_secs(10), sub.next()).await {
            Ok(Some(Ok(busline::broker::Event::Message(p)))) => {
                let (i, _): (u64, String) = p.decode().unwrap();
                assert!(last < Some(i), "out of order: {i} after {last:?}");
                last = Some(i);
                received += 1;
            }
            Ok(Some(Ok(busline::broker::Event::Lagged(n)))) => missed += n,
            other => panic!("after {received} received and {missed} missed: {other:?}"),
        }
    }
    assert_eq!(received + missed, sent);
    assert!(
        missed > 0,
        "a subscriber that did not read kept up with {sent}?"
    );
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_guard_channels_and_only_owners_change_them() {
    let s = Setup::start().await;
    let owner = s.client(0).await;
    let mut vault = owner.open("vault").await.unwrap();
    let member = s.client(1).await.open("vault").await.unwrap();
    vault.set_password(Some("s3cret")).await.unwrap();
    assert!(vault.describe().await.unwrap().protected);

    let unauthorized = |r: busline::Result<Channel>, what: &str| match r {
        Err(Error::Unauthorized(_)) => {}
        other => panic!("{what}: {other:?}"),
    };
    let joiner = s.client(2).await;
    unauthorized(joiner.open("vault").await, "no password");
    unauthorized(
        joiner.open_with_password("vault", "guess").await,
        "wrong password",
    );
    let joined = joiner.open_with_password("vault", "s3cret").await.unwrap();
    assert!(!joined.is_owner());

    // Members already in stay; only the owner changes the password.
    let mut member = member;
    let err = member.set_password(Some("mine")).await.unwrap_err();
    assert!(
        matches!(err, Error::Unauthorized(ref m) if m.contains("owner")),
        "{err:?}"
    );

    // A proof is bound to its connection's nonce: replaying it elsewhere fails.
    let keys = busline::broker::ChannelKeys::derive("vault", "s3cret");
    let a = s.client(0).await;
    let nonce: serde_json::Value = a
        .client()
        .call(
            "busline.challenge",
            &serde_json::json!({"channel": "vault"}),
        )
        .await
        .unwrap();
    let nonce = hex::decode(nonce["nonce"].as_str().unwrap()).unwrap();
    let proof = hex::encode(keys.join_proof("vault", &nonce));
    let open = serde_json::json!({"channel": "vault", "proof": proof});
    a.client()
        .call::<_, serde_json::Value>("busline.open", &open)
        .await
        .unwrap();
    let b = s.client(0).await;
    for ask_first in [false, true] {
        if ask_first {
            b.client()
                .call::<_, serde_json::Value>(
                    "busline.challenge",
                    &serde_json::json!({"channel": "vault"}),
                )
                .await
                .unwrap();
        }
        let err = b
            .client()
            .call::<_, serde_json::Value>("busline.open", &open)
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Unauthorized(_)),
            "replayed proof: {err:?}"
        );
    }

    // Created protected in one step, and lifted by its owner.
    let mut fort = owner.open_with_password("fort", "pw").await.unwrap();
    assert!(fort.is_owner());
    unauthorized(joiner.open("fort").await, "protected at creation");
    fort.set_password(None).await.unwrap();
    joiner.open("fort").await.unwrap();
    s.broker.shutdown().await;
}

/// Nobody withdraws, or slips into, another client's provision: control
/// messages about a channel need membership, and a withdrawal needs the
/// provision to be the sender's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_withdraw_or_hijack_another_clients_provision() {
    let s = Setup::start().await;
    let provider = s.client(0).await;
    let svc = provider.open("svc").await.unwrap();
    provide_add(&svc).await;
    let mut vault = provider.open("vault").await.unwrap();
    vault.set_password(Some("a vault password")).await.unwrap();

    let intruder = s.client(1).await;
    let raw = |method: &'static str, args: serde_json::Value| {
        let client = intruder.client();
        async move {
            client
                .call_raw(method, busline::Payload::json(&args).unwrap())
                .await
        }
    };
    let refused = |e: &Error| {
        matches!(
            e,
            Error::Protocol(_) | Error::Unauthorized(_) | Error::MethodNotFound(_)
        )
    };
    let withdraw = serde_json::json!({"channel": "svc", "method": "add"});
    // Not a member: refused.
    let err = raw("busline.unprovide", withdraw.clone())
        .await
        .unwrap_err();
    assert!(refused(&err), "{err:?}");
    // A member, but not the provider: refused too.
    let _member = intruder.open("svc").await.unwrap();
    let err = raw("busline.unprovide", withdraw).await.unwrap_err();
    assert!(refused(&err), "{err:?}");
    // Nor can it leave, provide on or subscribe to a protected channel it
    // never joined.
    for (method, args) in [
        ("busline.leave", serde_json::json!({"channel": "vault"})),
        (
            "busline.provide",
            serde_json::json!({"channel": "vault", "method": "add"}),
        ),
        (
            "busline.subscribe",
            serde_json::json!({"channel": "vault", "pattern": ">"}),
        ),
    ] {
        let err = raw(method, args).await.unwrap_err();
        assert!(refused(&err), "{method}: {err:?}");
    }
    // The provision stands.
    let caller = s.client(2).await.open("svc").await.unwrap();
    assert_eq!(caller.call::<_, i64>("add", &(2, 3)).await.unwrap(), 5);
    let info = svc.describe().await.unwrap();
    assert!(format!("{info:?}").contains("add"), "{info:?}");
    s.broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_channels_sign_end_to_end() {
    let s = Setup::start().await;
    let owner = s.client(1).await;
    let mut ch = owner.open("signed").await.unwrap();
    let early_bus = s.client(0).await;
    let early = early_bus.open("signed").await.unwrap(); // joins before the password
    ch.set_password(Some("pw")).await.unwrap();
    provide_add(&ch).await;
    ch.provide_stream("count", |n: u64| stream::iter((0..n).map(Ok::<_, String>)))
        .await
        .unwrap();

    // Members with the password: calls, streams and publications work.
    let caller = s
        .client(2)
        .await
        .open_with_password("signed", "pw")
        .await
        .unwrap();
    assert_eq!(caller.call::<_, i64>("add", &(2, 3)).await.unwrap(), 5);
    let items: Vec<u64> = caller
        .stream::<_, u64>("count", &5u64)
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(items, [0, 1, 2, 3, 4]);
    let mut keyed = ch.subscribe("news").await.unwrap();
    let mut raw = early.subscribe("news").await.unwrap();
    caller.publish("news", &"signed hello").await.unwrap();
    assert_eq!(
        next_message(&mut keyed).await.decode::<String>().unwrap(),
        "signed hello"
    );

    // A member without the keys sees only signed bytes, and cannot get a
    // call through: the provider refuses it.
    let captured = next_message(&mut raw).await;
    assert_eq!(captured.payload.encoding(), Encoding::Binary);
    let err = early.call::<_, i64>("add", &(1, 1)).await.unwrap_err();
    assert!(
        matches!(err, Error::Unauthorized(ref m) if m.contains("signature")),
        "{err:?}"
    );

    // Replaying a captured publication is detected.
    early_bus
        .client()
        .notify_raw("signed#news", captured.payload.clone())
        .await
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(10), keyed.next()).await {
        Ok(Some(Err(Error::Unauthorized(m)))) => assert!(m.contains("replayed"), "{m}"),
        other => panic!("a replay got through: {other:?}"),
    }
    s.broker.shutdown().await;
}

/// Forwards bytes between a client and the broker, flipping the first
/// payload byte of every signed payload on the way in: a broker (or a
/// network) that tampers.
async fn tampering_proxy(upstream: std::net::SocketAddr) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = tokio::net::TcpStream::connect(upstream).await.unwrap();
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1 << 16];
                while let Ok(n) = cr.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let chunk = &mut buf[..n];
                    if let Some(at) = chunk.windows(4).position(|w| w == b"BLSG") {
                        if let Some(byte) = chunk.get_mut(at + 63) {
                            *byte ^= 0x01;
                        }
                    }
                    if sw.write_all(chunk).await.is_err() {
                        break;
                    }
                }
            });
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut sr, &mut cw).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_is_detected() {
    let broker = Broker::builder()
        .listen(
            TcpTransport::new(),
            Address::tcp("127.0.0.1", 0),
            CborCodec::new(),
        )
        .start()
        .await
        .unwrap();
    let addr = broker.local_addrs()[0].clone();
    let connect = |addr: Address| async move {
        BrokerClient::connect(
            Client::builder(CborCodec::new()),
            &TcpTransport::new(),
            &addr,
        )
        .await
        .unwrap()
    };
    let provider = connect(addr.clone()).await;
    let ch = provider.open_with_password("t", "pw").await.unwrap();
    ch.provide("echo", |s: String| async move { Ok::<_, String>(s) })
        .await
        .unwrap();

    let busline::Endpoint::Tcp { port, .. } = addr.endpoint() else {
        panic!("a TCP broker")
    };
    let proxy = tampering_proxy(([127, 0, 0, 1], *port).into()).await;
    let victim = connect(Address::tcp("127.0.0.1", proxy.port())).await;
    let ch = victim.open_with_password("t", "pw").await.unwrap();
    let err = ch
        .call::<_, String>("echo", &"pay alice 10")
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Unauthorized(ref m) if m.contains("altered")),
        "{err:?}"
    );

    // Without the proxy, the same call goes through.
    let honest = connect(addr)
        .await
        .open_with_password("t", "pw")
        .await
        .unwrap();
    assert_eq!(honest.call::<_, String>("echo", &"ok").await.unwrap(), "ok");
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_peer_credentials_admit_or_refuse() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    // Our own uid, as the owner of a file we just made.
    let me = std::fs::metadata(dir.path()).unwrap().uid();
    let nobody = u32::MAX - 7;
    let mine = Address::unix(dir.path().join("mine.sock"));
    let theirs = Address::unix(dir.path().join("theirs.sock"));
    let broker = Broker::builder()
        .listen_with(
            UnixTransport::new(),
            mine.clone(),
            CborCodec::new(),
            busline::PeerAllowList::new().allow_uid(me),
        )
        .listen_with(
            UnixTransport::new(),
            theirs.clone(),
            JsonRpcCodec::new(),
            busline::PeerAllowList::new().allow_uid(nobody),
        )
        .listen_with(
            TcpTransport::new(),
            Address::tcp("127.0.0.1", 0),
            CborCodec::new(),
            busline::PeerAllowList::new().allow_uid(me),
        )
        .start()
        .await
        .unwrap();
    let ok = BrokerClient::connect(
        Client::builder(CborCodec::new()),
        &UnixTransport::new(),
        &mine,
    )
    .await
    .unwrap();
    ok.open("local").await.unwrap();

    // JSON-RPC has no handshake: the refusal answers the first call.
    let refused = match BrokerClient::connect(
        Client::builder(JsonRpcCodec::new()),
        &UnixTransport::new(),
        &theirs,
    )
    .await
    {
        Ok(c) => c.open("local").await.unwrap_err(),
        Err(e) => e,
    };
    assert!(
        matches!(refused, Error::Unauthorized(ref m) if m.contains("not allowed")),
        "{refused:?}"
    );

    // TCP carries no credentials, so the list refuses it outright.
    let tcp = broker.local_addrs()[2].clone();
    let err = BrokerClient::connect(
        Client::builder(CborCodec::new()),
        &TcpTransport::new(),
        &tcp,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, Error::Unauthorized(ref m) if m.contains("credentials")),
        "{err:?}"
    );
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_policy_closes_the_channel_when_its_owner_leaves() {
    let s = Setup::start().await;
    let owner = s.client(0).await;
    let ch = owner.open("temp").await.unwrap();
    ch.set_policy(busline::broker::OwnerPolicy::Terminate)
        .await
        .unwrap();
    let provider = s.client(1).await;
    let (started_tx, started) = oneshot::channel();
    let started_tx = Arc::new(std::sync::Mutex::new(Some(started_tx)));
    provider
        .open("temp")
        .await
        .unwrap()
        .provide("wait", move |(): ()| {
            if let Some(tx) = started_tx.lock().unwrap().take() {
                let _ = tx.send(());
            }
            async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok::<_, String>(())
            }
        })
        .await
        .unwrap();
    let caller = s.client(2).await;
    let member = caller.open("temp").await.unwrap();
    // Only the owner sets the policy.
    let err = member
        .set_policy(busline::broker::OwnerPolicy::Promote)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Unauthorized(ref m) if m.contains("owner")),
        "{err:?}"
    );

    let mut events = caller.events();
    let waiting = tokio::spawn(async move { member.call::<_, ()>("wait", &()).await });
    started.await.unwrap();
    drop(ch);
    drop(owner);

    let err = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, Error::Disconnected(ref m) if m.contains("closed")),
        "{err:?}"
    );
    match tokio::time::timeout(Duration::from_secs(10), events.next()).await {
        Ok(Some(busline::broker::ChannelEvent::Closed { channel, .. })) => {
            assert_eq!(channel, "temp")
        }
        other => panic!("members are told: {other:?}"),
    }
    s.broker.shutdown().await;
}

async fn topics_until(sub: &mut busline::broker::Subscription, last: &str) -> Vec<String> {
    let mut topics = Vec::new();
    while topics.last().map(String::as_str) != Some(last) {
        topics.push(next_message(sub).await.topic);
    }
    topics
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_channels_report_what_happens() {
    let s = Setup::start().await;
    let watcher = s.client(0).await;
    let mut system = watcher
        .open(busline::broker::SYSTEM)
        .await
        .unwrap()
        .subscribe(">")
        .await
        .unwrap();
    let mut logs = watcher
        .open(busline::broker::LOGS)
        .await
        .unwrap()
        .subscribe("info")
        .await
        .unwrap();
    let mut errors = watcher
        .open(busline::broker::ERRORS)
        .await
        .unwrap()
        .subscribe("refused")
        .await
        .unwrap();

    let actor = s.client(2).await;
    let ch = actor.open("work").await.unwrap();
    provide_add(&ch).await;
    let other = s.client(1).await;
    let mut not_owner = other.open("work").await.unwrap();
    let _ = not_owner.set_password(Some("x")).await.unwrap_err();
    drop(not_owner);
    drop(other);
    drop(ch);
    drop(actor);

    let seen = topics_until(&mut system, "channel.closed").await;
    for expected in [
        "channel.opened",
        "provider.added",
        "provider.removed",
        "client.disconnected",
    ] {
        assert!(
            seen.iter().any(|t| t == expected),
            "{expected} missing from {seen:?}"
        );
    }
    // The log has a readable line for each of them.
    loop {
        let line = next_message(&mut logs)
            .await
            .decode::<serde_json::Value>()
            .unwrap();
        if line["message"]
            .as_str()
            .unwrap()
            .starts_with("channel.opened: ")
        {
            break;
        }
    }
    let refusal = next_message(&mut errors)
        .await
        .decode::<serde_json::Value>()
        .unwrap();
    assert_eq!(refusal["operation"], "busline.set_password", "{refusal}");

    // Only the broker speaks there.
    let err = watcher
        .open(busline::broker::SYSTEM)
        .await
        .unwrap()
        .provide("x", |(): ()| async { Ok::<_, String>(()) })
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Unauthorized(ref m) if m.contains("only the broker")),
        "{err:?}"
    );
    s.broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_channels_can_take_a_password() {
    let builder = Broker::builder().system_password(busline::broker::SYSTEM, "ops");
    let (broker, addr) = memory_broker(builder, "sys-pw").await;
    let c = memory_client(&addr).await;
    assert!(matches!(
        c.open(busline::broker::SYSTEM).await,
        Err(Error::Unauthorized(_))
    ));
    let mut events = c
        .open_with_password(busline::broker::SYSTEM, "ops")
        .await
        .unwrap()
        .subscribe("channel.*")
        .await
        .unwrap();
    c.open("seen").await.unwrap();
    let opened = next_message(&mut events).await;
    assert_eq!(opened.topic, "channel.opened");
    assert_eq!(
        opened.decode::<serde_json::Value>().unwrap()["channel"],
        "seen"
    );
    // The other system channels stay open, and only they exist.
    c.open(busline::broker::LOGS).await.unwrap();
    let bad = Broker::builder()
        .system_password("busline.nope", "x")
        .start()
        .await;
    assert!(matches!(bad, Err(Error::Protocol(_))));
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_go_to_the_least_busy_provider() {
    let s = Setup::start().await;
    let stuck = Arc::new(tokio::sync::Notify::new());
    let slow = s.client(0).await;
    let release = stuck.clone();
    slow.open("pool")
        .await
        .unwrap()
        .provide("job", move |(): ()| {
            let release = release.clone();
            async move {
                release.notified().await;
                Ok::<_, String>("slow")
            }
        })
        .await
        .unwrap();
    let fast = s.client(1).await;
    fast.open("pool")
        .await
        .unwrap()
        .provide("job", |(): ()| async { Ok::<_, String>("fast") })
        .await
        .unwrap();
    let ch = s.client(2).await.open("pool").await.unwrap();

    // Park one call on the slow provider.
    let parked = loop {
        let c = ch.clone();
        let call = tokio::spawn(async move { c.call::<_, String>("job", &()).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        if !call.is_finished() {
            break call;
        }
    };
    // While it is busy, every call goes to the idle one.
    for _ in 0..10 {
        let answer = tokio::time::timeout(Duration::from_secs(5), ch.call::<_, String>("job", &()))
            .await
            .expect("not queued behind the busy provider")
            .unwrap();
        assert_eq!(answer, "fast");
    }

    // Round-robin instead: taking turns, a call lands on the busy one.
    let err = ch
        .set_balance("job", busline::broker::Balance::RoundRobin)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Unauthorized(_)),
        "only providers: {err:?}"
    );
    let fast_ch = fast.open("pool").await.unwrap();
    fast_ch
        .set_balance("job", busline::broker::Balance::RoundRobin)
        .await
        .unwrap();
    assert_eq!(fast_ch.describe().await.unwrap().round_robin, ["job"]);
    let mut answers = Vec::new();
    for _ in 0..2 {
        let call = ch.call::<_, String>("job", &());
        answers.push(
            tokio::time::timeout(Duration::from_millis(300), call)
                .await
                .ok(),
        );
    }
    assert!(answers.iter().any(Option::is_none), "{answers:?}");
    stuck.notify_waiters();
    assert_eq!(parked.await.unwrap().unwrap(), "slow");
    s.broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_groups_share_their_own_calls() {
    let s = Setup::start().await;
    // Two pools offer "work" on one channel; each member answers its name.
    let mut members = Vec::new();
    for (n, (group, member)) in [("a", "a1"), ("a", "a2"), ("b", "b1"), ("b", "b2")]
        .into_iter()
        .enumerate()
    {
        let bus = s.client(n % 3).await;
        let pool = bus.open("workers").await.unwrap().group(group).unwrap();
        pool.provide("work", move |(): ()| async move { Ok::<_, String>(member) })
            .await
            .unwrap();
        members.push((bus, pool));
    }
    members[0]
        .1
        .set_balance("work", busline::broker::Balance::RoundRobin)
        .await
        .unwrap();
    let caller = s.client(2).await.open("workers").await.unwrap();
    let a = caller.group("a").unwrap();
    let mut answers: Vec<String> = Vec::new();
    for _ in 0..4 {
        answers.push(a.call("work", &()).await.unwrap());
    }
    // In turn, and only within the group.
    assert!(answers.windows(2).all(|w| w[0] != w[1]), "{answers:?}");
    assert!(answers.iter().all(|m| m.starts_with('a')), "{answers:?}");
    let b: String = caller.group("b").unwrap().call("work", &()).await.unwrap();
    assert!(b.starts_with('b'), "{b}");
    // The group's method is the channel's, by its full name.
    let full: String = caller.call("b.work", &()).await.unwrap();
    assert!(full.starts_with('b'), "{full}");
    assert!(caller
        .describe()
        .await
        .unwrap()
        .round_robin
        .contains(&"a.work".to_owned()));

    // No such group, no such method; bad group names are refused.
    assert!(matches!(
        caller
            .group("c")
            .unwrap()
            .call::<_, String>("work", &())
            .await,
        Err(Error::MethodNotFound(_))
    ));
    for bad in ["", "a.b"] {
        assert!(
            matches!(caller.group(bad), Err(Error::Protocol(_))),
            "{bad:?}"
        );
    }
    s.broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ids_are_unique_among_live_clients() {
    let s = Setup::start().await;
    let addr = s.broker.local_addrs()[0].clone();
    let transport = MemoryTransport::new();
    let as_id = |id: &'static str| {
        let addr = addr.clone();
        async move {
            BrokerClient::connect_as(Client::builder(CborCodec::new()), &transport, &addr, id).await
        }
    };
    let first = as_id("math-service").await.unwrap();
    first.open("m").await.unwrap();
    let err = as_id("math-service").await.unwrap_err();
    assert!(
        matches!(err, Error::Unauthorized(ref m) if m.contains("in use")),
        "{err:?}"
    );
    let status = first.status().await.unwrap();
    assert_eq!(status.client_ids.len(), 1);
    assert_eq!(status.client_ids[0].1, "math-service");

    // Once the holder is gone, the id is free again.
    drop(first);
    let again = loop {
        match as_id("math-service").await {
            Ok(c) => break c,
            Err(Error::Unauthorized(_)) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(e) => panic!("{e:?}"),
        }
    };
    assert!(matches!(
        again
            .client()
            .call::<_, ()>(
                "busline.identify",
                &serde_json::json!({"client_id": "other"})
            )
            .await,
        Err(Error::Protocol(_))
    ));
    s.broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_can_be_disconnected_instead() {
    let builder = Broker::builder()
        .subscriber_queue(4)
        .slow_subscriber(busline::broker::SlowSubscriber::Disconnect);
    let (broker, addr) = memory_broker(builder, "slow-dc").await;
    let subscriber = memory_client(&addr).await;
    let _sub = subscriber
        .open("firehose")
        .await
        .unwrap()
        .subscribe(">")
        .await
        .unwrap();
    let publisher = memory_client(&addr).await.open("firehose").await.unwrap();
    let err = loop {
        for i in 0..1000u64 {
            publisher.publish("tick", &i).await.unwrap();
        }
        publisher.describe().await.unwrap();
        match subscriber.open("elsewhere").await {
            Ok(_) => continue,
            Err(err) => break err,
        }
    };
    assert!(
        matches!(err, Error::Overloaded(ref m) if m.contains("slow a subscriber")),
        "{err:?}"
    );
    // The publisher is unaffected.
    publisher.publish("tick", &0).await.unwrap();
    publisher.describe().await.unwrap();
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_reaches_every_provider_but_the_sender() {
    let s = Setup::start().await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, String)>();
    let mut members = Vec::new();
    for on in 0..3 {
        let bus = s.client(on).await;
        let ch = bus.open("team").await.unwrap();
        let tx = tx.clone();
        ch.provide("refresh", move |what: String| {
            let _ = tx.send((on, what));
            async { Ok::<_, String>(()) }
        })
        .await
        .unwrap();
        members.push(ch);
    }
    members[1].broadcast("refresh", &"config").await.unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let (on, what) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(what, "config");
        got.push(on);
    }
    got.sort();
    assert_eq!(got, [0, 2]);
    // ... and nothing for the sender.
    members[1].call::<_, ()>("refresh", &"probe").await.unwrap();
    let (on, what) = rx.recv().await.unwrap();
    assert_eq!(
        what, "probe",
        "the sender got its own broadcast (from {on})"
    );
    s.broker.shutdown().await;
}

/// What comm-ipc gets wrong, done right: error messages keep their colons,
/// and calls through the broker have deadlines that cancel the provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_stay_whole_and_deadlines_cancel_providers() {
    let s = Setup::start().await;
    let provider = s.client(1).await;
    let (dropped_tx, dropped) = oneshot::channel();
    let dropped_tx = Arc::new(std::sync::Mutex::new(Some(dropped_tx)));
    let ch = provider.open("strict").await.unwrap();
    ch.provide("fail", |(): ()| async {
        Err::<(), _>("db: connect: 10.0.0.1:5432: refused")
    })
    .await
    .unwrap();
    ch.provide("hang", move |(): ()| {
        let watch = Watch(Arc::default(), dropped_tx.lock().unwrap().take());
        async move {
            let _watch = watch;
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, String>(())
        }
    })
    .await
    .unwrap();

    for on in [0, 2] {
        let caller = s.client(on).await.open("strict").await.unwrap();
        match caller.call::<_, ()>("fail", &()).await {
            Err(Error::HandlerFailed { message, .. }) => {
                assert_eq!(message, "db: connect: 10.0.0.1:5432: refused")
            }
            other => panic!("{other:?}"),
        }
    }
    let bus = BrokerClient::connect(
        Client::builder(CborCodec::new()).timeout(Duration::from_millis(100)),
        &MemoryTransport::new(),
        s.broker.local_addrs()[0],
    )
    .await
    .unwrap();
    let err = bus
        .open("strict")
        .await
        .unwrap()
        .call::<_, ()>("hang", &())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err:?}");
    tokio::time::timeout(Duration::from_secs(10), dropped)
        .await
        .expect("the provider's handler was cancelled")
        .unwrap();
    s.broker.shutdown().await;
}

/// Sends on its channel when dropped: a handler's future, cancelled.
struct Dropped(tokio::sync::mpsc::UnboundedSender<()>);

impl Drop for Dropped {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

/// A call without a deadline goes from the caller's connection straight to
/// the provider's, with no future at the broker to drop: the provider
/// still hears when the caller gives up on it, and when the caller's
/// connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_passed_on_is_cancelled_when_its_caller_gives_up_or_leaves() {
    let s = Setup::start().await;
    let provider = s.client(1).await;
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
    let (dropped_tx, mut dropped) = tokio::sync::mpsc::unbounded_channel();
    provider
        .open("slow")
        .await
        .unwrap()
        .provide("hang", move |(): ()| {
            let _ = started_tx.send(());
            let dropped = Dropped(dropped_tx.clone());
            async move {
                let _dropped = dropped;
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok::<_, String>(())
            }
        })
        .await
        .unwrap();
    async fn wait<F: std::future::Future>(what: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(10), what)
            .await
            .expect("in time")
    }
    for leaves in [false, true] {
        let client = s.client(if leaves { 2 } else { 0 }).await;
        let caller = client.open("slow").await.unwrap();
        let call = tokio::spawn(async move { caller.call::<_, ()>("hang", &()).await });
        wait(started.recv()).await.unwrap();
        if leaves {
            client.close();
            let err = wait(call).await.unwrap().unwrap_err();
            assert!(matches!(err, Error::Disconnected(_)), "{err:?}");
        } else {
            call.abort();
        }
        wait(dropped.recv())
            .await
            .expect("the provider's handler was cancelled");
    }
    s.broker.shutdown().await;
}

/// More calls at once than one provider connection carries (1,024): those
/// past the bound wait at the broker for room instead of being passed on at
/// once, and every call is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_a_provider_connections_bound_wait_and_all_arrive() {
    let s = Setup::start().await;
    // The provider itself would run more at once: the bound is the broker's.
    let provider = connect(
        Client::builder(CborCodec::new()).max_in_flight(4096),
        &busline::any_transport(),
        s.broker.local_addrs()[0],
    )
    .await;
    let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (counting, highest) = (running.clone(), most.clone());
    provider
        .open("busy")
        .await
        .unwrap()
        .provide("echo", move |n: u64| {
            let now = counting.fetch_add(1, Ordering::SeqCst) + 1;
            highest.fetch_max(now, Ordering::SeqCst);
            let counting = counting.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                counting.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, String>(n)
            }
        })
        .await
        .unwrap();
    let mut calls = Vec::new();
    for c in 0..2u64 {
        let caller = s.client(0).await.open("busy").await.unwrap();
        for i in 0..700u64 {
            let caller = caller.clone();
            let n = c * 1000 + i;
            calls.push(tokio::spawn(async move {
                (n, caller.call::<_, u64>("echo", &n).await)
            }));
        }
    }
    for call in calls {
        let (n, answer) = tokio::time::timeout(Duration::from_secs(30), call)
            .await
            .expect("answered in time")
            .unwrap();
        assert_eq!(answer.unwrap(), n);
    }
    let most = most.load(Ordering::SeqCst);
    assert!(
        most > 1 && most <= busline::rpc::DEFAULT_MAX_IN_FLIGHT,
        "{most} at once"
    );
    s.broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_owner_learns_when_it_is_wanted() {
    async fn next(
        events: &mut futures::stream::BoxStream<'static, busline::broker::ChannelEvent>,
    ) -> busline::broker::ChannelEvent {
        tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .unwrap()
            .unwrap()
    }
    use busline::broker::ChannelEvent;
    let s = Setup::start().await;
    let publisher = s.client(0).await;
    let mut events = publisher.events();
    let ch = publisher.open("market").await.unwrap();
    ch.own_topic("prices.eur").await.unwrap();
    let demand = |wanted| ChannelEvent::Demand {
        channel: "market".into(),
        topic: "prices.eur".into(),
        wanted,
    };
    assert_eq!(next(&mut events).await, demand(false));

    let a = s.client(1).await.open("market").await.unwrap();
    let sub_a = a.subscribe("prices.*").await.unwrap();
    assert_eq!(next(&mut events).await, demand(true));
    let b = s.client(2).await.open("market").await.unwrap();
    let sub_b = b.subscribe(">").await.unwrap();
    drop(sub_a);
    // Someone still wants it: nothing to say until the last one goes.
    drop(sub_b);
    assert_eq!(next(&mut events).await, demand(false));

    // Nobody else may publish there, or take it over, or give it up.
    let err = b.own_topic("prices.eur").await.unwrap_err();
    assert!(matches!(err, Error::Unauthorized(_)), "{err:?}");
    let err = b.disown_topic("prices.eur").await.unwrap_err();
    assert!(matches!(err, Error::Unauthorized(_)), "{err:?}");
    // Until its owner gives it up.
    ch.disown_topic("prices.eur").await.unwrap();
    b.own_topic("prices.eur").await.unwrap();
    s.broker.shutdown().await;
}

/// Found in review: each of these once went wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_regressions() {
    let s = Setup::start().await;

    // A channel someone opened without a password is not "joined with a
    // password": that would look protected and not be.
    let squatter = s.client(0).await;
    let _squat = squatter.open("payments").await.unwrap();
    let victim = s.client(1).await;
    let err = victim
        .open_with_password("payments", "pw")
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Unauthorized(ref m) if m.contains("no password")),
        "{err:?}"
    );

    // A handler that itself fails with `Disconnected` ran: the call is not
    // run again on another provider.
    let runs = Arc::new(AtomicUsize::new(0));
    let mut providers = Vec::new();
    for on in [0, 1] {
        let bus = s.client(on).await;
        let runs = runs.clone();
        bus.open("once")
            .await
            .unwrap()
            .provide("job", move |(): ()| {
                runs.fetch_add(1, Ordering::SeqCst);
                async { Err::<(), _>(Error::Disconnected("my upstream left".into())) }
            })
            .await
            .unwrap();
        providers.push(bus);
    }
    let caller = s.client(2).await.open("once").await.unwrap();
    let err = caller.call::<_, ()>("job", &()).await.unwrap_err();
    assert!(
        matches!(err, Error::Disconnected(ref m) if m.contains("upstream")),
        "{err:?}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    // Unsubscribing and subscribing again at once keeps the subscription:
    // notifications and calls are handled in the order they were sent.
    let ch = s.client(0).await.open("order").await.unwrap();
    for _ in 0..20 {
        drop(ch.subscribe("a.>").await.unwrap());
        let mut again = ch.subscribe("a.>").await.unwrap();
        ch.publish("a.b", &1).await.unwrap();
        assert_eq!(next_message(&mut again).await.topic, "a.b");
    }
    s.broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_can_describe_methods_with_json_schemas() {
    #[derive(serde::Deserialize, schemars::JsonSchema)]
    struct Transfer {
        from: String,
        to: String,
        cents: u64,
    }
    let s = Setup::start().await;
    let bank = s.client(0).await.open("bank").await.unwrap();
    bank.provide_described("transfer", |t: Transfer| async move {
        Ok::<_, String>(format!("{} -> {}: {}", t.from, t.to, t.cents))
    })
    .await
    .unwrap();
    provide_add(&bank).await;
    let info = s
        .client(2)
        .await
        .open("bank")
        .await
        .unwrap()
        .describe()
        .await
        .unwrap();
    assert_eq!(info.schemas.len(), 1, "only described methods have schemas");
    let (method, schema) = &info.schemas[0];
    assert_eq!(method, "transfer");
    assert_eq!(schema.params["type"], "object");
    assert_eq!(schema.params["properties"]["cents"]["type"], "integer");
    assert_eq!(schema.result["type"], "string");
    s.broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closing_channel_ends_its_streams() {
    let s = Setup::start().await;
    let owner = s.client(0).await;
    let ch = owner.open("live").await.unwrap();
    ch.set_policy(busline::broker::OwnerPolicy::Terminate)
        .await
        .unwrap();
    let provider = s.client(1).await;
    provider
        .open("live")
        .await
        .unwrap()
        .provide_stream("ticks", |(): ()| {
            stream::unfold(0u64, |i| async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                Some((Ok::<_, String>(i), i + 1))
            })
        })
        .await
        .unwrap();
    let caller = s.client(2).await.open("live").await.unwrap();
    let mut ticks = caller.stream::<_, u64>("ticks", &()).await.unwrap();
    assert_eq!(ticks.next().await.unwrap().unwrap(), 0);
    drop(ch);
    drop(owner);
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ticks.next().await {
                Some(Ok(_)) => continue,
                other => break other,
            }
        }
    })
    .await
    .expect("the stream ended");
    assert!(
        matches!(end, Some(Err(Error::Disconnected(ref m))) if m.contains("closed")),
        "{end:?}"
    );
    s.broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_listens_over_tls() {
    let pki = busline_tls::testing::TestPki::new();
    let file = |name: &str| pki.file(name).display().to_string();
    let (ca, cert, key) = (file("ca.pem"), file("cert.pem"), file("key.pem"));
    let addr: Address = format!("tls://localhost:0?cert={cert}&key={key}")
        .parse()
        .unwrap();
    let broker = Broker::builder()
        .listen(busline::TlsTransport::new(), addr, CborCodec::new())
        .start()
        .await
        .unwrap();
    let busline::Endpoint::Tls { port, .. } = broker.local_addrs()[0].endpoint() else {
        panic!("a tls listener")
    };
    let url: Address = format!("tls://localhost:{port}?ca={ca}").parse().unwrap();
    let transport = busline::any_transport();
    let provider = connect(Client::builder(CborCodec::new()), &transport, &url).await;
    provide_add(&provider.open("secure").await.unwrap()).await;
    let caller = connect(Client::builder(CborCodec::new()), &transport, &url).await;
    let sum: i64 = caller
        .open("secure")
        .await
        .unwrap()
        .call("add", &(20, 22))
        .await
        .unwrap();
    assert_eq!(sum, 42);
    broker.shutdown().await;
}

/// A plain JSON-RPC client on a broker reads what CBOR clients publish,
/// because its listener transcodes CBOR payloads to JSON at the edge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_json_rpc_client_reads_cbor_publications() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let broker = Broker::builder()
        .listen(
            MemoryTransport::new(),
            Address::memory("transcode"),
            CborCodec::new(),
        )
        .listen(
            TcpTransport::new(),
            Address::tcp("127.0.0.1", 0),
            JsonRpcCodec::new().transcode_cbor(true),
        )
        .start()
        .await
        .unwrap();
    let busline::Endpoint::Tcp { port, .. } = broker.local_addrs()[1].endpoint() else {
        panic!("tcp")
    };
    let plain = tokio::net::TcpStream::connect(("127.0.0.1", *port))
        .await
        .unwrap();
    let mut plain = BufReader::new(plain);
    let mut line = String::new();
    for request in [
        r#"{"jsonrpc":"2.0","method":"busline.open","params":{"channel":"home"},"id":1}"#,
        r#"{"jsonrpc":"2.0","method":"busline.subscribe","params":{"channel":"home","pattern":">"},"id":2}"#,
    ] {
        plain
            .get_mut()
            .write_all(format!("{request}\n").as_bytes())
            .await
            .unwrap();
        line.clear();
        plain.read_line(&mut line).await.unwrap();
        assert!(line.contains("\"result\""), "{line}");
    }
    let cbor = BrokerClient::connect(
        Client::builder(CborCodec::new()),
        &MemoryTransport::new(),
        broker.local_addrs()[0],
    )
    .await
    .unwrap()
    .open("home")
    .await
    .unwrap();
    cbor.publish("temp", &serde_json::json!({"room": "kitchen", "c": 21.5}))
        .await
        .unwrap();
    line.clear();
    tokio::time::timeout(Duration::from_secs(10), plain.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    let got: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        got,
        serde_json::json!({"jsonrpc": "2.0", "method": "home#temp", "params": {"room": "kitchen", "c": 21.5}})
    );
    broker.shutdown().await;
}

/// comm-ipc drops authenticated clients after about five minutes; busline
/// keeps an idle connection for as long as both ends want it.
#[tokio::test(start_paused = true)]
async fn idle_clients_are_not_disconnected() {
    let (broker, addr) = memory_broker(Broker::builder(), "idle").await;
    let bus = memory_client(&addr).await;
    let ch = bus.open("quiet").await.unwrap();
    provide_add(&ch).await;
    tokio::time::sleep(Duration::from_secs(6 * 3600)).await;
    assert_eq!(ch.call::<_, i64>("add", &(1, 2)).await.unwrap(), 3);
    broker.shutdown().await;
}

/// Everything a client sends while creating, protecting and joining a
/// channel, recorded: the password is not in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_never_crosses_the_wire() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let broker = Broker::builder()
        .listen(
            TcpTransport::new(),
            Address::tcp("127.0.0.1", 0),
            JsonLineCodec::new(),
        )
        .start()
        .await
        .unwrap();
    let busline::Endpoint::Tcp { port, .. } = broker.local_addrs()[0].endpoint() else {
        panic!("tcp")
    };
    let upstream = *port;
    let seen = Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_port = listener.local_addr().unwrap().port();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = tokio::net::TcpStream::connect(("127.0.0.1", upstream))
                .await
                .unwrap();
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let record = record.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1 << 16];
                while let Ok(n) = cr.read(&mut buf).await {
                    if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    record.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut sr, &mut cw).await;
            });
        }
    });
    let via_proxy = Address::tcp("127.0.0.1", proxy_port);
    let tcp = TcpTransport::new();
    let connect = || BrokerClient::connect(Client::builder(JsonLineCodec::new()), &tcp, &via_proxy);
    let owner = connect().await.unwrap();
    let mut ch = owner.open("vault").await.unwrap();
    ch.set_password(Some("correct horse battery staple"))
        .await
        .unwrap();
    connect()
        .await
        .unwrap()
        .open_with_password("vault", "correct horse battery staple")
        .await
        .unwrap();
    owner
        .open_with_password("fresh", "correct horse battery staple")
        .await
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    assert!(seen.len() > 100, "the proxy saw the traffic");
    let text = String::from_utf8_lossy(&seen);
    assert!(!text.contains("horse"), "the password went over the wire");
    broker.shutdown().await;
}
