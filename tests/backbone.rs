//! Brokers joined through NATS (real `nats-server` processes on loopback):
//! calls, streams and publications across three brokers, withdrawal,
//! protected channels, bad input on the subjects, and one node of a NATS
//! cluster killed under traffic.

mod nats;
mod support;

use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use busline::{
    backbone::{Backbone, BackboneBuilder, BackboneHandle},
    broker::{Broker, BrokerClient, BrokerHandle, Channel, Event, Subscription},
    Address, CborCodec, Error, MemoryTransport,
};
use futures::StreamExt;
use nats::NatsServer;
use support::provide_add;

/// A broker with id `id` and its side of the backbone.
struct Site {
    addr: Address,
    backbone: Option<BackboneHandle>,
    _broker: BrokerHandle,
}

impl Site {
    async fn start(id: &str, nats: &str, backbone: BackboneBuilder) -> Site {
        Self::start_at(id, &format!("backbone-{id}"), nats, backbone).await
    }

    /// A broker with id `id` listening at memory address `at`.
    async fn start_at(id: &str, at: &str, nats: &str, backbone: BackboneBuilder) -> Site {
        let addr = Address::memory(at);
        let broker = Broker::builder()
            .id(id)
            .listen(MemoryTransport::new(), addr.clone(), CborCodec::new())
            .start()
            .await
            .unwrap();
        let local = support::memory_client(&addr).await;
        let nats = busline::backbone::connect(nats, async_nats::ConnectOptions::new())
            .await
            .unwrap();
        let backbone = backbone.start(local, nats).await.unwrap();
        Site {
            addr,
            backbone: Some(backbone),
            _broker: broker,
        }
    }

    async fn client(&self) -> BrokerClient {
        support::memory_client(&self.addr).await
    }

    async fn open(&self, channel: &str) -> Channel {
        self.client().await.open(channel).await.unwrap()
    }

    async fn leave(&mut self) {
        self.backbone.take().unwrap().shutdown().await;
    }
}

/// A side of the backbone that announces often, as tests want.
fn fast() -> BackboneBuilder {
    Backbone::builder().announce_every(Duration::from_millis(200))
}

/// Wait (up to 15 s) until `check` is true.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn add(math: &Channel) -> busline::Result<i64> {
    math.call("add", &(2, 40)).await
}

/// Publications on `count.*` that `sub` gets until 500 ms pass without
/// one (after at least `expect`, or 15 s), in order.
async fn counted(sub: &mut Subscription, expect: usize) -> Vec<u64> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let quiet = if seen.len() >= expect {
            Duration::from_millis(500)
        } else {
            deadline.saturating_duration_since(tokio::time::Instant::now())
        };
        match tokio::time::timeout(quiet, sub.next()).await {
            Ok(Some(Ok(Event::Message(p)))) if p.topic.starts_with("count.") => {
                seen.push(p.decode().unwrap())
            }
            Ok(Some(Ok(Event::Lagged(n)))) => panic!("{n} publications lost"),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => panic!("subscription failed: {e}"),
            Ok(None) | Err(_) => return seen,
        }
    }
}

/// Publish on `warm.up` on `publisher` until every one of `subs` has had
/// one.
async fn warm_up(publisher: &Channel, subs: &mut [Subscription]) {
    for sub in subs {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "publications never crossed"
            );
            publisher.publish("warm.up", &0u32).await.unwrap();
            if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(100), sub.next()).await
            {
                break;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_streams_and_publications_cross_three_brokers_exactly_once() {
    if !nats::available() {
        return;
    }
    let server = NatsServer::start();
    let a = Site::start("bb-a", &server.url, fast()).await;
    let b = Site::start("bb-b", &server.url, fast()).await;
    let c = Site::start("bb-c", &server.url, fast()).await;

    // Providers on a: a call, a stream, and a stream that notes being dropped.
    let provider = a.client().await;
    let math = provider.open("math").await.unwrap();
    provide_add(&math).await;
    math.provide_stream("count", |n: u64| {
        futures::stream::iter((1..=n).map(Ok::<_, String>))
    })
    .await
    .unwrap();
    let dropped = Arc::new(AtomicBool::new(false));
    let produced = Arc::new(AtomicU64::new(0));
    let (d, p) = (dropped.clone(), produced.clone());
    math.provide_stream("forever", move |(): ()| {
        let guard = DropFlag(d.clone());
        let p = p.clone();
        futures::stream::iter(0u64..).map(move |i| {
            let _ = &guard;
            p.fetch_add(1, Ordering::Relaxed);
            Ok::<_, String>(i)
        })
    })
    .await
    .unwrap();

    let on_b = b.open("math").await;
    let on_c = c.open("math").await;
    eventually("b reaches a's add", || async { add(&on_b).await.is_ok() }).await;
    eventually("c reaches a's add", || async { add(&on_c).await.is_ok() }).await;
    assert_eq!(add(&on_c).await.unwrap(), 42);
    // A stream longer than the window, paced by its reader.
    let items: Vec<u64> = on_c
        .stream::<_, u64>("count", &500u64)
        .await
        .unwrap()
        .map(|i| i.unwrap())
        .collect()
        .await;
    assert_eq!(items, (1..=500).collect::<Vec<_>>());
    // Dropping a stream cancels it at its provider, and the provider never
    // runs more than a window or so ahead of the reader.
    let mut forever = on_b.stream::<_, u64>("forever", &()).await.unwrap();
    for i in 0..10 {
        assert_eq!(forever.next().await.unwrap().unwrap(), i);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ahead = produced.load(Ordering::Relaxed);
    assert!(
        ahead < 400,
        "the provider ran {ahead} items ahead of its reader"
    );
    drop(forever);
    eventually(
        "the dropped stream is cancelled at its provider",
        || async { dropped.load(Ordering::Relaxed) },
    )
    .await;
    // A method nobody provides is a typed error, at once.
    assert!(matches!(
        on_b.call::<_, i64>("nope", &()).await,
        Err(Error::MethodNotFound(_))
    ));
    // A handler's error crosses as it is.
    math.provide("fail", |(): ()| async { Err::<(), _>("no luck") })
        .await
        .unwrap();
    eventually("b reaches a's fail", || async {
        matches!(
            on_b.call::<_, ()>("fail", &()).await,
            Err(Error::HandlerFailed { .. })
        )
    })
    .await;

    // Publications from a: each subscriber on b and c (and a) gets each
    // once, in order, however many of its patterns match.
    let publisher = a.open("news").await;
    let mut subs = Vec::new();
    let mut clients = Vec::new();
    for (site, patterns) in [(&a, &[">"][..]), (&b, &[">"][..]), (&c, &[">", "*.*"][..])] {
        let bus = site.client().await;
        let news = bus.open("news").await.unwrap();
        for pattern in patterns {
            subs.push(news.subscribe(pattern).await.unwrap());
        }
        clients.push(bus);
    }
    warm_up(&publisher, &mut subs).await;
    const N: u64 = 300;
    for i in 0..N {
        publisher.publish(&format!("count.{i}"), &i).await.unwrap();
    }
    for (k, sub) in subs.iter_mut().enumerate() {
        assert_eq!(
            counted(sub, N as usize).await,
            (0..N).collect::<Vec<_>>(),
            "subscriber {k}"
        );
    }
}

/// Lowercase hex of `text`'s bytes.
fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Sets its flag when dropped.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_reader_keeps_its_stream_and_a_caller_that_gives_up_cancels_its_call() {
    if !nats::available() {
        return;
    }
    let server = NatsServer::start();
    let a = Site::start("bs-a", &server.url, fast()).await;
    let b = Site::start("bs-b", &server.url, fast()).await;
    let math = a.open("math").await;
    math.provide_stream("count", |n: u64| {
        futures::stream::iter((1..=n).map(Ok::<_, String>))
    })
    .await
    .unwrap();
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = dropped.clone();
    math.provide("hang", move |(): ()| {
        let guard = DropFlag(flag.clone());
        async move {
            let _guard = guard;
            std::future::pending::<()>().await;
            Ok::<(), String>(())
        }
    })
    .await
    .unwrap();
    let on_b = b.open("math").await;
    eventually("b reaches a's count", || async {
        match on_b.stream::<_, u64>("count", &1u64).await {
            Ok(mut items) => matches!(items.next().await, Some(Ok(1))),
            Err(_) => false,
        }
    })
    .await;
    // A reader that stops for longer than either side waits in silence:
    // both keep the stream alive, and it resumes where it was.
    let mut items = on_b.stream::<_, u64>("count", &300u64).await.unwrap();
    for i in 1..=100 {
        assert_eq!(items.next().await.unwrap().unwrap(), i);
    }
    tokio::time::sleep(Duration::from_secs(7)).await;
    let rest: Vec<u64> = items.map(|i| i.unwrap()).collect().await;
    assert_eq!(rest, (101..=300).collect::<Vec<_>>());
    // A caller that gives up on a call cancels it at the provider: at
    // once, not when the provider would give up on a silent caller.
    let gave_up =
        tokio::time::timeout(Duration::from_millis(2500), on_b.call::<_, ()>("hang", &())).await;
    assert!(gave_up.is_err(), "{gave_up:?}");
    let since = tokio::time::Instant::now();
    while !dropped.load(Ordering::Relaxed) {
        assert!(
            since.elapsed() < Duration::from_millis(2500),
            "the abandoned call was not cancelled at its provider"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_brokers_with_one_id_one_leaves_so_that_no_call_runs_twice() {
    if !nats::available() {
        return;
    }
    let server = NatsServer::start();
    let one = Site::start_at("bt-x", "backbone-bt-x-1", &server.url, fast()).await;
    let two = Site::start_at("bt-x", "backbone-bt-x-2", &server.url, fast()).await;
    let c = Site::start("bt-c", &server.url, fast()).await;
    let runs = Arc::new(AtomicU64::new(0));
    let mut providers = Vec::new();
    for site in [&one, &two] {
        let math = site.open("math").await;
        let runs = runs.clone();
        math.provide("count", move |(): ()| {
            let runs = runs.clone();
            async move { Ok::<_, String>(runs.fetch_add(1, Ordering::Relaxed)) }
        })
        .await
        .unwrap();
        providers.push(math);
    }
    let on_c = c.open("math").await;
    eventually("c reaches count", || async {
        on_c.call::<_, u64>("count", &()).await.is_ok()
    })
    .await;
    // Both announce the id for three intervals; then one leaves.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = runs.load(Ordering::Relaxed);
    for _ in 0..20 {
        on_c.call::<_, u64>("count", &()).await.unwrap();
    }
    assert_eq!(runs.load(Ordering::Relaxed) - before, 20, "calls ran twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_leaves_is_withdrawn_and_another_takes_its_calls() {
    if !nats::available() {
        return;
    }
    let server = NatsServer::start();
    // Announced every 5 s, a broker would be withdrawn after 15 s of
    // silence: what is withdrawn sooner was withdrawn by word.
    let slow = || Backbone::builder().announce_every(Duration::from_secs(5));
    let a = Site::start("bw-a", &server.url, slow()).await;
    let mut b = Site::start("bw-b", &server.url, slow()).await;
    let c = Site::start("bw-c", &server.url, slow()).await;
    let from_b = b.client().await;
    provide_add(&from_b.open("math").await.unwrap()).await;
    let on_a = a.open("math").await;
    eventually("a reaches b's add", || async { add(&on_a).await.is_ok() }).await;
    // b leaves: a withdraws its method at once, not after the expiry.
    b.leave().await;
    let left = tokio::time::Instant::now();
    eventually("b's add is withdrawn on a", || async {
        matches!(add(&on_a).await, Err(Error::MethodNotFound(_)))
    })
    .await;
    assert!(
        left.elapsed() < Duration::from_secs(2),
        "took {:?}",
        left.elapsed()
    );
    // A provider on c takes over.
    let from_c = c.client().await;
    provide_add(&from_c.open("math").await.unwrap()).await;
    eventually("a reaches c's add", || async { add(&on_a).await.is_ok() }).await;
    let info = on_a.describe().await.unwrap();
    let paths: Vec<_> = info.routes.iter().map(|(_, _, via)| via.clone()).collect();
    assert_eq!(paths, [vec!["bw-c".to_string()]], "{info:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protected_channel_crosses_only_where_its_password_is_given() {
    if !nats::available() {
        return;
    }
    let server = NatsServer::start();
    let keyed = || fast().channel_password("vault", "s3cret");
    let a = Site::start("bp-a", &server.url, keyed()).await;
    let b = Site::start("bp-b", &server.url, keyed()).await;
    let c = Site::start("bp-c", &server.url, fast()).await;
    let owner = a.client().await;
    let vault = owner.open_with_password("vault", "s3cret").await.unwrap();
    provide_add(&vault).await;
    // Protected on b too, by its own owner.
    let b_owner = b.client().await;
    b_owner.open_with_password("vault", "s3cret").await.unwrap();
    let on_b = b
        .client()
        .await
        .open_with_password("vault", "s3cret")
        .await
        .unwrap();
    eventually("b reaches a's protected add", || async {
        add(&on_b).await.is_ok()
    })
    .await;
    assert_eq!(add(&on_b).await.unwrap(), 42);
    // c's side has no password: nothing of vault crosses there.
    let on_c = c.open("vault").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(matches!(add(&on_c).await, Err(Error::MethodNotFound(_))));
    // A call put on NATS by hand, unsigned, is refused by the provider.
    let raw = async_nats::connect(&server.url).await.unwrap();
    let answer = raw
        .request("busline.v1.default.call.bp-a.vault.add", "[1,2]".into())
        .await
        .unwrap();
    let reply = answer.headers.as_ref().and_then(|h| h.get("Busline-Reply"));
    assert_eq!(reply.map(|v| v.as_str()), Some("error"));
    assert!(String::from_utf8_lossy(&answer.payload).contains("unauthorized"));
    // And a wrong password on b is still refused by b.
    assert!(b
        .client()
        .await
        .open_with_password("vault", "guess")
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_on_the_subjects_are_refused_and_change_nothing() {
    if !nats::available() {
        return;
    }
    let server = NatsServer::start();
    let a = Site::start("bx-a", &server.url, fast()).await;
    let b = Site::start("bx-b", &server.url, fast()).await;
    let math = a.open("math").await;
    provide_add(&math).await;
    let on_b = b.open("math").await;
    eventually("b reaches a's add", || async { add(&on_b).await.is_ok() }).await;

    let raw = async_nats::connect(&server.url).await.unwrap();
    let prefix = "busline.v1.default";
    // Garbage announces, and an announce for a broker by someone else's path.
    for body in [
        &b"not json"[..],
        br#"{"broker":"bad id","instance":1}"#,
        br#"{"broker":"x","instance":1,"offers":[{"channel":"math","name":"add","path":["y"]}]}"#,
        br#"{"broker":"bx-a","instance":99,"leaving":true}"#,
    ] {
        raw.publish(format!("{prefix}.announce"), body.to_vec().into())
            .await
            .unwrap();
    }
    // Calls that are not: an unknown kind, an unknown encoding, a subject
    // with a bad token. Each gets an error answer.
    let call = format!("{prefix}.call.bx-a.math.add");
    for (name, value) in [("Busline-Kind", "maybe"), ("Busline-Encoding", "yaml")] {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(name, value);
        let answer = raw
            .request_with_headers(call.clone(), headers, b"[1,2]".to_vec().into())
            .await
            .unwrap();
        let reply = answer.headers.as_ref().and_then(|h| h.get("Busline-Reply"));
        assert_eq!(reply.map(|v| v.as_str()), Some("error"), "{name}: {value}");
    }
    // A bad token; names that would route elsewhere on the broker (a '/'
    // in the channel, the system channel, a '#' in the method).
    let token = |name: &str| format!("~{}", hex(name));
    for subject in [
        format!("{prefix}.call.bx-a.~zz.add"),
        format!("{prefix}.call.bx-a.{}.add", token("math/x")),
        format!("{prefix}.call.bx-a.{}.status", token("busline.system")),
        format!("{prefix}.call.bx-a.math.{}", token("add#t")),
    ] {
        let answer = raw.request(subject.clone(), "[]".into()).await.unwrap();
        let reply = answer.headers.as_ref().and_then(|h| h.get("Busline-Reply"));
        assert_eq!(reply.map(|v| v.as_str()), Some("error"), "{subject}");
    }
    // A call in JSON without headers is a unary call, answered in JSON.
    let answer = raw.request(call, "[20,22]".into()).await.unwrap();
    assert_eq!(&answer.payload[..], b"42");
    // A channel a broker does not carry cannot be called through NATS.
    let c = Site::start("bx-c", &server.url, fast().channels(["math"])).await;
    let secret = c.open("secret").await;
    provide_add(&secret).await;
    let answer = raw
        .request(format!("{prefix}.call.bx-c.secret.add"), "[1,2]".into())
        .await
        .unwrap();
    let reply = answer.headers.as_ref().and_then(|h| h.get("Busline-Reply"));
    assert_eq!(reply.map(|v| v.as_str()), Some("error"));
    assert!(String::from_utf8_lossy(&answer.payload).contains("unauthorized"));
    // Publications without a name, or naming another channel, are dropped.
    raw.publish(format!("{prefix}.pub.math.t"), "1".into())
        .await
        .unwrap();
    raw.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    // Nothing changed: the forged word that bx-a leaves was ignored too.
    assert_eq!(add(&on_b).await.unwrap(), 42);
    let brokers = b.backbone.as_ref().unwrap().brokers();
    assert_eq!(brokers, ["bx-a", "bx-c"], "{brokers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_larger_than_nats_takes_is_a_typed_error() {
    if !nats::available() {
        return;
    }
    let server = NatsServer::start();
    let a = Site::start("bl-a", &server.url, fast()).await;
    let b = Site::start("bl-b", &server.url, fast()).await;
    let echo = a.open("blob").await;
    echo.provide("echo", |s: String| async move { Ok::<_, String>(s) })
        .await
        .unwrap();
    echo.provide(
        "grow",
        |n: usize| async move { Ok::<_, String>("x".repeat(n)) },
    )
    .await
    .unwrap();
    let on_b = b.open("blob").await;
    eventually("b reaches a's echo", || async {
        on_b.call::<_, String>("echo", "hi").await.is_ok()
    })
    .await;
    let big = "x".repeat(2 << 20);
    assert!(matches!(
        on_b.call::<_, String>("echo", &big).await,
        Err(Error::FrameTooLarge { .. })
    ));
    assert!(matches!(
        on_b.call::<_, String>("grow", &(2usize << 20)).await,
        Err(Error::FrameTooLarge { .. })
    ));
    // The way stays open.
    assert_eq!(
        on_b.call::<_, String>("grow", &3usize).await.unwrap(),
        "xxx"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_carries_on_through_the_other_node_when_a_nats_node_dies() {
    if !nats::available() {
        return;
    }
    let mut n1 = NatsServer::clustered("n1", &[]);
    let n2 = NatsServer::clustered("n2", &[n1.route.as_deref().unwrap()]);
    // a on n1 first, b on n2 first; each may move to the other.
    let a = Site::start("bk-a", &format!("{},{}", n1.url, n2.url), fast()).await;
    let b = Site::start("bk-b", &format!("{},{}", n2.url, n1.url), fast()).await;
    let math = a.open("math").await;
    provide_add(&math).await;
    let on_b = b.open("math").await;
    eventually("b reaches a's add across the cluster", || async {
        add(&on_b).await.is_ok()
    })
    .await;
    let publisher = a.open("news").await;
    let subscriber = b.client().await;
    let mut subs = vec![subscriber
        .open("news")
        .await
        .unwrap()
        .subscribe(">")
        .await
        .unwrap()];
    warm_up(&publisher, &mut subs).await;

    n1.kill();
    // a's client moves to n2; calls and publications go on.
    eventually("b reaches a's add again", || async {
        add(&on_b).await.is_ok()
    })
    .await;
    for _ in 0..50 {
        assert_eq!(add(&on_b).await.unwrap(), 42);
    }
    warm_up(&publisher, &mut subs).await;
    const N: u64 = 200;
    for i in 0..N {
        publisher.publish(&format!("count.{i}"), &i).await.unwrap();
    }
    assert_eq!(
        counted(&mut subs[0], N as usize).await,
        (0..N).collect::<Vec<_>>()
    );
}

/// A `busline` process, killed when dropped.
struct Process(std::process::Child);

impl Process {
    fn start(args: &[&str]) -> Process {
        Process(
            std::process::Command::new(env!("CARGO_BIN_EXE_busline"))
                .args(args)
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("busline starts"),
        )
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A client of the `busline` process listening at `url`, once it is up.
async fn process_client(url: &str) -> BrokerClient {
    let addr: Address = url.parse().unwrap();
    BrokerClient::connect(
        busline::rpc::Client::builder(CborCodec::new()).retry_connect(Duration::from_secs(10)),
        &busline::any_transport(),
        &addr,
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_brokers_join_by_flag_and_bring_their_bridged_brokers_along() {
    if !nats::available() {
        return;
    }
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let unix = |name: &str| format!("unix://{}", dir.path().join(name).display());
    let (p1, p2, p3) = (unix("1.sock"), unix("2.sock"), unix("3.sock"));
    // p1 and p2 on the backbone; p3 only bridged to p2.
    let _p1 = Process::start(&[
        "broker",
        "--listen",
        &p1,
        "--id",
        "p1",
        "--backbone",
        &server.url,
    ]);
    let _p2 = Process::start(&[
        "broker",
        "--listen",
        &p2,
        "--id",
        "p2",
        "--backbone",
        &server.url,
        "--bridge",
        &p3,
    ]);
    let _p3 = Process::start(&["broker", "--listen", &p3, "--id", "p3"]);

    let provider = process_client(&p3).await;
    let math = provider.open("math").await.unwrap();
    provide_add(&math).await;
    let caller = process_client(&p1).await;
    let far = caller.open("math").await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while add(&far).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a call on p1 never reached the provider on p3"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let info = far.describe().await.unwrap();
    let paths: Vec<_> = info.routes.iter().map(|(_, _, via)| via.clone()).collect();
    assert_eq!(
        paths,
        [vec!["p3".to_string(), "p2".to_string()]],
        "{info:?}"
    );
    // Publications from p1 reach a subscriber on p3, once each.
    let publisher = caller.open("news").await.unwrap();
    let reader = process_client(&p3).await;
    let mut subs = vec![reader
        .open("news")
        .await
        .unwrap()
        .subscribe(">")
        .await
        .unwrap()];
    warm_up(&publisher, &mut subs).await;
    for i in 0..100u64 {
        publisher.publish(&format!("count.{i}"), &i).await.unwrap();
    }
    assert_eq!(
        counted(&mut subs[0], 100).await,
        (0..100).collect::<Vec<_>>()
    );
}

#[test]
fn a_backbone_out_of_reach_or_misnamed_stops_the_broker_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("unix://{}", dir.path().join("b.sock").display());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nowhere = format!("nats://127.0.0.1:{port}");
    for (extra, reason) in [
        (
            vec!["--backbone", nowhere.as_str()],
            "cannot join the NATS backbone",
        ),
        (
            vec![
                "--backbone",
                nowhere.as_str(),
                "--backbone-namespace",
                "a b",
            ],
            "namespace",
        ),
        (
            vec![
                "--backbone",
                nowhere.as_str(),
                "--backbone-creds",
                "/nonexistent",
            ],
            "credentials",
        ),
        (vec!["--backbone-namespace", "x"], "--backbone"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_busline"))
            .args(["broker", "--listen", &listen])
            .args(&extra)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?}");
        assert!(stderr.contains(reason), "{extra:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_join_a_nats_server_that_asks_for_a_token_only_with_it() {
    if !nats::available() {
        return;
    }
    let server = NatsServer::with_token("s3cret-token");
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    let token = token.display().to_string();
    let unix = |name: &str| format!("unix://{}", dir.path().join(name).display());
    let (t1, t2) = (unix("t1.sock"), unix("t2.sock"));
    let with_token = ["--backbone", &server.url, "--backbone-token-file", &token];
    let _t1 =
        Process::start(&[&["broker", "--listen", &t1, "--id", "t1"][..], &with_token].concat());
    let _t2 =
        Process::start(&[&["broker", "--listen", &t2, "--id", "t2"][..], &with_token].concat());
    let provider = process_client(&t1).await;
    let math = provider.open("math").await.unwrap();
    provide_add(&math).await;
    let far = process_client(&t2).await.open("math").await.unwrap();
    eventually("a call on t2 reaches t1 through NATS", || async {
        add(&far).await.is_ok()
    })
    .await;
    // Without the token, NATS refuses the broker, which says so and stops.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_busline"))
        .args([
            "broker",
            "--listen",
            &unix("t3.sock"),
            "--backbone",
            &server.url,
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cannot join the NATS backbone"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_join_over_mutual_tls_only_with_the_ca_and_a_client_certificate() {
    if !nats::available() {
        return;
    }
    let pki = busline_tls::testing::TestPki::new();
    let file = |name: &str| pki.file(name).display().to_string();
    let (ca, cert, key) = (file("ca.pem"), file("cert.pem"), file("key.pem"));
    let server = NatsServer::with_mutual_tls(&cert, &key, &ca);
    let dir = tempfile::tempdir().unwrap();
    let unix = |name: &str| format!("unix://{}", dir.path().join(name).display());
    let (m1, m2) = (unix("m1.sock"), unix("m2.sock"));
    let tls = [
        "--backbone",
        &server.url,
        "--backbone-ca",
        &ca,
        "--backbone-cert",
        &cert,
        "--backbone-key",
        &key,
    ];
    let _m1 = Process::start(&[&["broker", "--listen", &m1, "--id", "m1"][..], &tls].concat());
    let _m2 = Process::start(&[&["broker", "--listen", &m2, "--id", "m2"][..], &tls].concat());
    let provider = process_client(&m1).await;
    let math = provider.open("math").await.unwrap();
    provide_add(&math).await;
    let far = process_client(&m2).await.open("math").await.unwrap();
    eventually("a call on m2 reaches m1 through NATS over TLS", || async {
        add(&far).await.is_ok()
    })
    .await;
    // Without the CA the server is not trusted; without a certificate the
    // server refuses the broker. Either way the broker says so and stops.
    for partial in [
        vec!["--backbone", server.url.as_str()],
        vec![
            "--backbone",
            server.url.as_str(),
            "--backbone-ca",
            ca.as_str(),
        ],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_busline"))
            .args(["broker", "--listen", &unix("m3.sock")])
            .args(&partial)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{partial:?}");
        assert!(
            stderr.contains("cannot join the NATS backbone"),
            "{partial:?}: {stderr}"
        );
    }
}
