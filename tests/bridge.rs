//! Brokers joined by bridges: lines, rings and a full mesh, in one process
//! over the in-memory transport and as real `busline` processes over Unix
//! and TCP; calls, streams and publications across them, exactly once;
//! withdrawal, failover and recovery; allow-lists and protected channels.

mod support;

use std::{future::Future, time::Duration};

use busline::{
    bridge::{Bridge, BridgeHandle},
    broker::{Broker, BrokerClient, BrokerHandle, Channel, Reconnect},
    rpc::Client,
    Address, CborCodec, Error, JsonLineCodec, MemoryTransport,
};
use futures::StreamExt;
use support::provide_add;

/// A broker with id `id`, listening on `bridge-<id>`.
async fn broker(id: &str) -> BrokerHandle {
    Broker::builder()
        .id(id)
        .listen(MemoryTransport::new(), address(id), CborCodec::new())
        .listen(
            MemoryTransport::new(),
            Address::memory(format!("bridge-{id}-json")),
            JsonLineCodec::new(),
        )
        .start()
        .await
        .unwrap()
}

fn address(id: &str) -> Address {
    Address::memory(format!("bridge-{id}"))
}

async fn client(id: &str) -> BrokerClient {
    support::memory_client(&address(id)).await
}

/// A bridge between brokers `a` and `b` (its side on `b` speaks JSON-line:
/// the codecs of the two sides need not match).
async fn bridge(a: &str, b: &str) -> BridgeHandle {
    let b_side = BrokerClient::connect(
        Client::builder(JsonLineCodec::new()),
        &MemoryTransport::new(),
        &Address::memory(format!("bridge-{b}-json")),
    )
    .await
    .unwrap();
    Bridge::builder()
        .resync(Duration::from_millis(200))
        .start(client(a).await, b_side)
        .await
        .unwrap()
}

/// A client of broker `at` providing `math/add` and the stream
/// `math/count`.
async fn provider(at: &str) -> BrokerClient {
    let bus = client(at).await;
    let math = bus.open("math").await.unwrap();
    provide_add(&math).await;
    math.provide_stream("count", |n: u64| {
        futures::stream::iter((1..=n).map(Ok::<_, String>))
    })
    .await
    .unwrap();
    bus
}

/// Wait (up to 10 s) until `check` is true.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn add(math: &Channel) -> busline::Result<i64> {
    math.call("add", &(2, 40)).await
}

/// The route paths to `add` that broker `at` knows.
async fn routes(math: &Channel) -> Vec<Vec<String>> {
    let info = math.describe().await.unwrap();
    let mut paths: Vec<Vec<String>> = info
        .routes
        .into_iter()
        .filter(|(_, m, _)| m == "add")
        .map(|(_, _, via)| via)
        .collect();
    paths.sort();
    paths
}

#[tokio::test]
async fn along_a_line_calls_and_streams_reach_the_far_end_both_ways() {
    let _brokers = (
        broker("l-a").await,
        broker("l-b").await,
        broker("l-c").await,
    );
    let _bridges = (bridge("l-a", "l-b").await, bridge("l-b", "l-c").await);
    let _far = provider("l-c").await;

    let caller = client("l-a").await;
    let math = caller.open("math").await.unwrap();
    eventually("a call from A reaches C", || async {
        add(&math).await.is_ok()
    })
    .await;
    assert_eq!(add(&math).await.unwrap(), 42);
    assert_eq!(routes(&math).await, vec![vec!["l-c", "l-b"]]);
    let items: Vec<u64> = math
        .stream::<_, u64>("count", &3u64)
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(items, [1, 2, 3]);

    // And the other way: a provider on A, a caller on C.
    let near = client("l-a").await;
    near.open("echo")
        .await
        .unwrap()
        .provide("say", |s: String| async move { Ok::<_, String>(s) })
        .await
        .unwrap();
    let echo = client("l-c").await.open("echo").await.unwrap();
    eventually("a call from C reaches A", || async {
        echo.call::<_, String>("say", &"hi").await.is_ok()
    })
    .await;
    assert_eq!(echo.call::<_, String>("say", &"hi").await.unwrap(), "hi");
}

#[tokio::test]
async fn in_a_ring_the_short_way_answers_and_the_long_way_takes_over() {
    let _brokers = (
        broker("r-a").await,
        broker("r-b").await,
        broker("r-c").await,
    );
    let (ab, bc, ca) = (
        bridge("r-a", "r-b").await,
        bridge("r-b", "r-c").await,
        bridge("r-c", "r-a").await,
    );
    let _provider = provider("r-a").await;

    let caller = client("r-c").await;
    let math = caller.open("math").await.unwrap();
    let both = vec![vec!["r-a".to_string()], vec!["r-a".into(), "r-b".into()]];
    eventually("C knows both ways to A", || async {
        routes(&math).await == both
    })
    .await;
    for _ in 0..10 {
        assert_eq!(add(&math).await.unwrap(), 42);
    }
    // Nothing went round the ring back to A, whose provider is its own.
    let at_a = client("r-a").await.open("math").await.unwrap();
    assert!(routes(&at_a).await.is_empty());

    // The direct bridge goes down: C calls A the long way round.
    ca.shutdown().await;
    eventually("C falls back to the way through B", || async {
        routes(&math).await == vec![vec!["r-a".to_string(), "r-b".into()]]
    })
    .await;
    assert_eq!(add(&math).await.unwrap(), 42);
    drop((ab, bc));
}

#[tokio::test]
async fn a_provider_that_leaves_is_withdrawn_everywhere() {
    let _brokers = (broker("w-a").await, broker("w-b").await);
    let _bridge = bridge("w-a", "w-b").await;
    let far = provider("w-a").await;
    let math = client("w-b").await.open("math").await.unwrap();
    eventually("B offers A's add", || async { add(&math).await.is_ok() }).await;

    far.close();
    eventually("B no longer offers it", || async {
        matches!(add(&math).await, Err(Error::MethodNotFound(_)))
    })
    .await;
}

#[tokio::test]
async fn a_bridge_carries_only_the_channels_it_is_allowed() {
    let _brokers = (broker("f-a").await, broker("f-b").await);
    let _bridge = Bridge::builder()
        .channels(["math"])
        .resync(Duration::from_millis(200))
        .start(client("f-a").await, client("f-b").await)
        .await
        .unwrap();
    let _provider = provider("f-a").await;
    let other = client("f-a").await;
    provide_add(&other.open("secret").await.unwrap()).await;

    let caller = client("f-b").await;
    let math = caller.open("math").await.unwrap();
    eventually("math crosses", || async { add(&math).await.is_ok() }).await;
    let secret = caller.open("secret").await.unwrap();
    assert!(matches!(add(&secret).await, Err(Error::MethodNotFound(_))));
}

#[tokio::test]
async fn both_sides_on_one_broker_is_refused() {
    let _broker = broker("same").await;
    let err = Bridge::builder()
        .start(client("same").await, client("same").await)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Protocol(m) if m.contains("two brokers")),
        "{err}"
    );
}

#[tokio::test]
async fn in_a_full_mesh_of_four_calls_and_streams_reach_every_broker_and_converge_after_churn() {
    let ids = ["m-1", "m-2", "m-3", "m-4"];
    let mut brokers = Vec::new();
    let mut providers = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        brokers.push(broker(id).await);
        let bus = client(id).await;
        let mesh = bus.open("mesh").await.unwrap();
        mesh.provide(
            &format!("at-{i}"),
            move |()| async move { Ok::<_, String>(i) },
        )
        .await
        .unwrap();
        mesh.provide_stream(&format!("count-{i}"), move |n: usize| {
            futures::stream::iter((i..i + n).map(Ok::<_, String>))
        })
        .await
        .unwrap();
        providers.push(bus);
    }
    let mut bridges = std::collections::HashMap::new();
    for i in 0..ids.len() {
        for j in i + 1..ids.len() {
            bridges.insert((i, j), bridge(ids[i], ids[j]).await);
        }
    }
    let mut callers = Vec::new();
    for id in ids {
        callers.push(client(id).await.open("mesh").await.unwrap());
    }
    let all_answer = |callers: Vec<Channel>| async move {
        for caller in &callers {
            for j in 0..ids.len() {
                match caller.call::<_, usize>(&format!("at-{j}"), &()).await {
                    Ok(n) if n == j => {}
                    _ => return false,
                }
                let Ok(items) = caller
                    .stream::<_, usize>(&format!("count-{j}"), &3usize)
                    .await
                else {
                    return false;
                };
                let items: Vec<usize> = items.filter_map(|i| async move { i.ok() }).collect().await;
                if items != [j, j + 1, j + 2] {
                    return false;
                }
            }
        }
        true
    };
    eventually("every broker reaches every provider", || {
        all_answer(callers.clone())
    })
    .await;
    // Each remote provider is one bridge away, by the direct bridge; the
    // ways through a third broker stand by.
    let info = callers[0].describe().await.unwrap();
    for j in 1..ids.len() {
        let method = format!("at-{j}");
        let shortest = info
            .routes
            .iter()
            .filter(|(_, m, _)| *m == method)
            .map(|(_, _, via)| via.len())
            .min();
        assert_eq!(shortest, Some(1), "{method}: {:?}", info.routes);
    }

    // Churn: the bridge 1-2 goes down and comes back; meanwhile 1 and 2
    // still reach each other through 3 or 4.
    bridges.remove(&(0, 1)).unwrap().shutdown().await;
    eventually("m-1 reaches m-2 the long way", || async {
        let info = callers[0].describe().await.unwrap();
        let ways: Vec<usize> = info
            .routes
            .iter()
            .filter(|(_, m, _)| m == "at-1")
            .map(|(_, _, via)| via.len())
            .collect();
        !ways.is_empty() && ways.iter().all(|&n| n == 2)
    })
    .await;
    assert!(all_answer(callers.clone()).await);
    bridges.insert((0, 1), bridge(ids[0], ids[1]).await);
    eventually("the direct way is back", || async {
        let info = callers[0].describe().await.unwrap();
        info.routes
            .iter()
            .any(|(_, m, via)| m == "at-1" && via.len() == 1)
    })
    .await;
    assert!(all_answer(callers.clone()).await);
}

/// Count the `count.*` publications `sub` gets until `quiet` passes
/// without one (after at least `expect` have come, or 10 s).
async fn count_until_quiet(sub: &mut busline::broker::Subscription, expect: usize) -> usize {
    let mut seen = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let quiet = if seen >= expect {
            Duration::from_millis(300)
        } else {
            deadline.saturating_duration_since(tokio::time::Instant::now())
        };
        match tokio::time::timeout(quiet, sub.next()).await {
            Ok(Some(Ok(busline::broker::Event::Message(p)))) if p.topic.starts_with("count.") => {
                seen += 1
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => panic!("subscription failed: {e}"),
            Ok(None) | Err(_) => return seen,
        }
    }
}

/// Subscribers on each of `ids` (to everything on `news`), once
/// publications from `publisher` reach every one of them.
async fn subscribers_reached_from(
    ids: &[&str],
    publisher: &Channel,
) -> (Vec<BrokerClient>, Vec<busline::broker::Subscription>) {
    let mut clients = Vec::new();
    let mut subs = Vec::new();
    for id in ids {
        let bus = client(id).await;
        subs.push(
            bus.open("news")
                .await
                .unwrap()
                .subscribe(">")
                .await
                .unwrap(),
        );
        clients.push(bus);
    }
    for sub in &mut subs {
        loop {
            publisher.publish("warmup", &0u32).await.unwrap();
            if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(50), sub.next()).await {
                break;
            }
        }
    }
    (clients, subs)
}

#[tokio::test]
async fn in_a_ring_every_subscriber_gets_each_publication_exactly_once() {
    let _brokers = (
        broker("p-a").await,
        broker("p-b").await,
        broker("p-c").await,
    );
    let _bridges = (
        bridge("p-a", "p-b").await,
        bridge("p-b", "p-c").await,
        bridge("p-c", "p-a").await,
    );
    let publisher = client("p-a").await.open("news").await.unwrap();
    let (_clients, mut subs) =
        subscribers_reached_from(&["p-a", "p-b", "p-c", "p-c"], &publisher).await;
    const N: usize = 200;
    for i in 0..N {
        publisher.publish(&format!("count.{i}"), &i).await.unwrap();
    }
    for (k, sub) in subs.iter_mut().enumerate() {
        assert_eq!(count_until_quiet(sub, N).await, N, "subscriber {k}");
    }
}

#[tokio::test]
async fn along_a_line_publications_reach_the_far_end_and_demand_is_withdrawn() {
    let _brokers = (
        broker("q-a").await,
        broker("q-b").await,
        broker("q-c").await,
    );
    let _bridges = (bridge("q-a", "q-b").await, bridge("q-b", "q-c").await);
    let publisher = client("q-a").await.open("news").await.unwrap();
    let (clients, mut subs) = subscribers_reached_from(&["q-c"], &publisher).await;
    const N: usize = 100;
    for i in 0..N {
        publisher.publish(&format!("count.{i}"), &i).await.unwrap();
    }
    assert_eq!(count_until_quiet(&mut subs[0], N).await, N);

    // The subscriber leaves: the bridges stop asking for the channel.
    drop(subs);
    clients[0].close();
    eventually("A no longer relays news", || async {
        publisher.describe().await.unwrap().relays.is_empty()
    })
    .await;
}

/// A client of broker `id` that reconnects when it restarts.
async fn steady_client(id: &str) -> BrokerClient {
    BrokerClient::builder(Client::builder(CborCodec::new()))
        .reconnect(Reconnect {
            initial_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(100),
            ..Reconnect::default()
        })
        .connect(&MemoryTransport::new(), &address(id))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_broker_that_goes_down_is_routed_around_and_back_when_it_returns() {
    let (a, b, c) = (
        broker("d-a").await,
        broker("d-b").await,
        broker("d-c").await,
    );
    let start = |x: &'static str, y: &'static str| async move {
        Bridge::builder()
            .resync(Duration::from_millis(200))
            .start(steady_client(x).await, steady_client(y).await)
            .await
            .unwrap()
    };
    let _bridges = (start("d-a", "d-b").await, start("d-b", "d-c").await);
    let _provider = provider("d-c").await;
    let math = client("d-a").await.open("math").await.unwrap();
    eventually("A reaches C through B", || async {
        add(&math).await.is_ok()
    })
    .await;

    // B goes down: A no longer offers what only B led to, so a call fails
    // at once with a typed error instead of waiting.
    b.shutdown().await;
    eventually("A withdraws the way through B", || async {
        matches!(add(&math).await, Err(Error::MethodNotFound(_)))
    })
    .await;

    // B comes back (same id, same address): the bridges reconnect and the
    // way is offered again.
    let _b = broker("d-b").await;
    eventually("A reaches C again", || async { add(&math).await.is_ok() }).await;
    assert_eq!(routes(&math).await, vec![vec!["d-c", "d-b"]]);
    drop((a, c));
}

/// A client of the `busline` process listening at `url` (its `?codec=`
/// picks the codec), once it is up.
async fn process_client(url: &str) -> BrokerClient {
    let addr: Address = url.parse().unwrap();
    let codec = busline::codec::AnyCodec::for_address(&addr).unwrap();
    BrokerClient::connect(
        Client::builder(codec).retry_connect(Duration::from_secs(10)),
        &busline::any_transport(),
        &addr,
    )
    .await
    .unwrap()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_brokers_on_unix_and_tcp_joined_by_flag_and_by_command() {
    let dir = tempfile::tempdir().unwrap();
    let a = format!("unix://{}", dir.path().join("a.sock").display());
    let c = format!("unix://{}", dir.path().join("c.sock").display());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let b = format!("tcp://127.0.0.1:{port}?codec=jsonline");
    // A bridges itself to B (which comes up after it), and a `busline
    // bridge` joins B and C: a line A - B - C of separate processes.
    let _a = Process::start(&["broker", "--listen", &a, "--id", "p-a", "--bridge", &b]);
    let _b = Process::start(&["broker", "--listen", &b, "--id", "p-b"]);
    let _c = Process::start(&["broker", "--listen", &c, "--id", "p-c"]);
    let _bc = Process::start(&["bridge", &b, &c]);

    let provider = process_client(&c).await;
    let math = provider.open("math").await.unwrap();
    provide_add(&math).await;

    let caller = process_client(&a).await;
    let far = caller.open("math").await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while add(&far).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a call on A never reached the provider on C"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(routes(&far).await, vec![vec!["p-c", "p-b"]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_processes_in_a_ring_survive_a_killed_bridge() {
    let dir = tempfile::tempdir().unwrap();
    let unix = |name: &str| format!("unix://{}", dir.path().join(name).display());
    let (a, c) = (unix("a.sock"), unix("c.sock"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let b = format!("tcp://127.0.0.1:{port}");
    let _brokers = (
        Process::start(&["broker", "--listen", &a, "--id", "k-a"]),
        Process::start(&["broker", "--listen", &b, "--id", "k-b"]),
        Process::start(&["broker", "--listen", &c, "--id", "k-c"]),
    );
    let _ab = Process::start(&["bridge", &a, &b]);
    let _bc = Process::start(&["bridge", &b, &c]);
    let mut ca = Process::start(&["bridge", &c, &a]);

    let provider = process_client(&a).await;
    provide_add(&provider.open("math").await.unwrap()).await;
    let math = process_client(&c).await.open("math").await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while routes(&math).await.len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "C never learned both ways to A: {:?}",
            routes(&math).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(add(&math).await.unwrap(), 42);

    // SIGKILL the direct bridge: its connections drop, C and A forget
    // what it offered, and C calls A through B.
    ca.0.kill().unwrap();
    ca.0.wait().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while routes(&math).await != vec![vec!["k-a".to_string(), "k-b".into()]] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "C never fell back to the way through B: {:?}",
            routes(&math).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(add(&math).await.unwrap(), 42);
}

#[tokio::test]
async fn a_protected_channel_crosses_only_with_its_password_and_stays_protected() {
    let _brokers = (broker("s-a").await, broker("s-b").await);
    let owner = client("s-a").await;
    let vault = owner.open_with_password("vault", "hunter22").await.unwrap();
    provide_add(&vault).await;

    // A bridge without the password carries nothing of it.
    let blind = Bridge::builder()
        .resync(Duration::from_millis(100))
        .start(client("s-a").await, client("s-b").await)
        .await
        .unwrap();
    let early = client("s-b").await;
    let early = early.open_with_password("vault", "hunter22").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(matches!(add(&early).await, Err(Error::MethodNotFound(_))));
    early.leave().await.unwrap();
    blind.shutdown().await;

    // With it: the channel crosses, still signed end to end, and still
    // closed to whoever lacks the password.
    let _bridge = Bridge::builder()
        .channel_password("vault", "hunter22")
        .resync(Duration::from_millis(100))
        .start(client("s-a").await, client("s-b").await)
        .await
        .unwrap();
    let caller = client("s-b").await;
    let far = caller
        .open_with_password("vault", "hunter22")
        .await
        .unwrap();
    eventually("the vault's add answers on B", || async {
        add(&far).await.is_ok()
    })
    .await;
    assert_eq!(add(&far).await.unwrap(), 42);
    for (who, result) in [
        (
            "no password",
            client("s-b").await.open("vault").await.map(|_| ()),
        ),
        (
            "a wrong one",
            client("s-b")
                .await
                .open_with_password("vault", "letmein1")
                .await
                .map(|_| ()),
        ),
    ] {
        assert!(
            matches!(result, Err(Error::Unauthorized(_))),
            "{who}: {result:?}"
        );
    }
}

#[tokio::test]
async fn a_protected_channel_never_crosses_to_a_broker_where_it_is_open() {
    let _brokers = (broker("o-a").await, broker("o-b").await);
    let owner = client("o-a").await;
    provide_add(&owner.open_with_password("vault", "hunter22").await.unwrap()).await;
    // On B, someone opened "vault" without a password first.
    let squatter = client("o-b").await;
    let open_vault = squatter.open("vault").await.unwrap();
    let _bridge = Bridge::builder()
        .channel_password("vault", "hunter22")
        .resync(Duration::from_millis(100))
        .start(client("o-a").await, client("o-b").await)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(matches!(
        add(&open_vault).await,
        Err(Error::MethodNotFound(_))
    ));
    assert!(open_vault.describe().await.unwrap().routes.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_processes_in_a_full_mesh_of_four_on_unix_and_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let tcp = || {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        format!("tcp://127.0.0.1:{port}?codec=jsonline")
    };
    let urls = [
        format!("unix://{}", dir.path().join("m1.sock").display()),
        tcp(),
        format!("unix://{}", dir.path().join("m3.sock").display()),
        tcp(),
    ];
    let mut processes = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        let id = format!("rm-{i}");
        processes.push(Process::start(&["broker", "--listen", url, "--id", &id]));
    }
    for i in 0..urls.len() {
        for j in i + 1..urls.len() {
            processes.push(Process::start(&["bridge", &urls[i], &urls[j]]));
        }
    }
    let mut keep = Vec::new();
    let mut callers = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        let bus = process_client(url).await;
        bus.open("mesh")
            .await
            .unwrap()
            .provide(
                &format!("at-{i}"),
                move |()| async move { Ok::<_, String>(i) },
            )
            .await
            .unwrap();
        keep.push(bus);
        callers.push(process_client(url).await.open("mesh").await.unwrap());
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for (i, caller) in callers.iter().enumerate() {
        for j in 0..urls.len() {
            loop {
                match caller.call::<_, usize>(&format!("at-{j}"), &()).await {
                    Ok(n) => {
                        assert_eq!(n, j);
                        break;
                    }
                    Err(e) => assert!(
                        tokio::time::Instant::now() < deadline,
                        "broker {i} never reached the provider on {j}: {e}"
                    ),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test]
async fn publications_lost_behind_a_bridge_are_told_to_the_far_subscribers() {
    // Broker A keeps only 4 publications queued per subscriber, and the
    // bridge is one: a burst overflows it there.
    let _a = Broker::builder()
        .id("g-a")
        .subscriber_queue(4)
        .listen(MemoryTransport::new(), address("g-a"), CborCodec::new())
        .start()
        .await
        .unwrap();
    let _b = broker("g-b").await;
    let _bridge = bridge("g-a", "g-b").await;
    let publisher = client("g-a").await.open("news").await.unwrap();
    let (_clients, mut subs) = subscribers_reached_from(&["g-b"], &publisher).await;
    let sub = &mut subs[0];
    // Let the warm-up drain.
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await {}

    const N: u64 = 3000;
    for i in 0..N {
        publisher.publish(&format!("count.{i}"), &i).await.unwrap();
    }
    let (mut got, mut lost) = (0u64, 0u64);
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(1), sub.next()).await {
        match event.unwrap() {
            busline::broker::Event::Message(_) => got += 1,
            busline::broker::Event::Lagged(n) => lost += n,
            busline::broker::Event::Interrupted => panic!("interrupted"),
        }
    }
    assert!(lost > 0, "the burst was expected to overflow A's queue");
    assert_eq!(got + lost, N, "got {got}, told of {lost} lost");
}

#[tokio::test]
async fn a_stream_dropped_two_bridges_away_is_cancelled_at_its_provider() {
    let _brokers = (
        broker("x-a").await,
        broker("x-b").await,
        broker("x-c").await,
    );
    let _bridges = (bridge("x-a", "x-b").await, bridge("x-b", "x-c").await);

    /// Sets its flag when dropped: the provider's stream was cancelled.
    struct Dropped(std::sync::Arc<std::sync::atomic::AtomicBool>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let cancelled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = cancelled.clone();
    let provider = client("x-a").await;
    provider
        .open("ticks")
        .await
        .unwrap()
        .provide_stream("forever", move |()| {
            let guard = Dropped(flag.clone());
            futures::stream::unfold((0u64, guard), |(n, guard)| async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                Some((Ok::<_, String>(n), (n + 1, guard)))
            })
        })
        .await
        .unwrap();
    let ticks = client("x-c").await.open("ticks").await.unwrap();
    let mut stream = loop {
        let mut stream = ticks.stream::<_, u64>("forever", &()).await.unwrap();
        if let Some(Ok(0)) = stream.next().await {
            break stream;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for expected in 1..3 {
        assert_eq!(stream.next().await.unwrap().unwrap(), expected);
    }
    drop(stream);
    eventually("the provider's stream is cancelled", || async {
        cancelled.load(std::sync::atomic::Ordering::SeqCst)
    })
    .await;
}

#[tokio::test]
async fn a_channel_that_cannot_cross_does_not_hold_up_the_others() {
    let _brokers = (broker("h-a").await, broker("h-b").await);
    let far = provider("h-a").await;
    provide_add(&far.open("clash").await.unwrap()).await;
    // On B, "clash" takes a password: the bridge cannot join it there.
    let owner = client("h-b").await;
    let _clash = owner.open_with_password("clash", "hunter22").await.unwrap();
    let _bridge = bridge("h-a", "h-b").await;
    let math = client("h-b").await.open("math").await.unwrap();
    eventually("math crosses anyway", || async { add(&math).await.is_ok() }).await;
}
