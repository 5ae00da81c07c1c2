//! Load and soak against a real `busline broker` process on a Unix socket:
//! a thousand clients at once, and a long run of calls with random
//! cancellations beside a slow subscriber, watching the broker's resident
//! memory and open descriptors (Linux `/proc`).
//!
//! Sizes come from the environment, small enough by default for CI; run
//! them large by hand:
//!
//! ```sh
//! BUSLINE_SOAK_CLIENTS=5000 BUSLINE_SOAK_CALLS=1000000 \
//!     cargo test --release --test soak -- --nocapture
//! ```

mod support;

use std::{
    sync::{
        atomic::{AtomicI64, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use busline::{
    broker::{BrokerClient, Channel, Event},
    rpc::Client,
    Address, CborCodec, UnixTransport,
};
use futures::{stream, StreamExt};
use support::{open_fds, rss_kib, BrokerProcess};

fn size(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn connect(addr: &Address) -> BrokerClient {
    BrokerClient::connect(
        Client::builder(CborCodec::new()).timeout(Duration::from_secs(30)),
        &UnixTransport::new(),
        addr,
    )
    .await
    .expect("the broker accepts")
}

/// Wait up to ten seconds for `done`.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(10), "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_at_once_and_every_descriptor_back_after() {
    let clients = size("BUSLINE_SOAK_CLIENTS", 1000);
    // This process holds the client ends.
    busline::daemon::raise_fd_limit().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("bus.sock");
    let addr = Address::unix(&socket);
    let broker = BrokerProcess::start(&socket).await;
    let pid = broker.pid();

    let provider = connect(&addr).await;
    provider
        .open("load")
        .await
        .unwrap()
        .provide("echo", |n: u64| async move { Ok::<_, String>(n) })
        .await
        .unwrap();
    let idle = open_fds(pid);

    let joined: Vec<(BrokerClient, Channel)> = stream::iter(0..clients as u64)
        .map(|i| {
            let addr = addr.clone();
            async move {
                let bus = connect(&addr).await;
                let channel = bus.open("load").await.unwrap();
                assert_eq!(channel.call::<_, u64>("echo", &i).await.unwrap(), i);
                (bus, channel)
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    assert_eq!(provider.status().await.unwrap().clients, clients + 1);
    let busy = open_fds(pid);
    assert!(
        busy >= idle + clients,
        "{busy} descriptors for {clients} more clients than {idle}"
    );

    // All of them call at once.
    let answers =
        futures::future::join_all(
            joined
                .iter()
                .enumerate()
                .map(|(i, (_, channel))| async move {
                    channel.call::<_, u64>("echo", &(i as u64)).await
                }),
        )
        .await;
    for (i, answer) in answers.into_iter().enumerate() {
        assert_eq!(answer.unwrap(), i as u64);
    }

    drop(joined);
    eventually("the broker kept descriptors of closed clients", || {
        open_fds(pid) <= idle
    })
    .await;
    // A connection's socket closes before the broker forgets its client:
    // the count follows a moment later.
    let start = Instant::now();
    loop {
        let left = provider.status().await.unwrap().clients;
        if left == 1 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the broker still counts {left} clients, not the provider alone"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("{clients} clients: broker descriptors {idle} idle, {busy} with all connected");
}

/// A small deterministic generator for the random choices (xorshift).
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Counts a provider's handler while it runs, cancelled or not.
struct Running(Arc<AtomicI64>);

impl Running {
    fn start(count: &Arc<AtomicI64>) -> Running {
        count.fetch_add(1, Ordering::SeqCst);
        Running(count.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soak_with_cancellations_and_a_slow_subscriber_keeps_memory_flat() {
    const CALLERS: usize = 8;
    const IN_FLIGHT: usize = 16;
    let calls = size("BUSLINE_SOAK_CALLS", 40_000);
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("bus.sock");
    let addr = Address::unix(&socket);
    let broker = BrokerProcess::start(&socket).await;
    let pid = broker.pid();

    // The provider: some calls take a few milliseconds, long enough to be
    // cancelled while they run.
    let running = Arc::new(AtomicI64::new(0));
    let provider = connect(&addr).await;
    let counted = running.clone();
    provider
        .open("load")
        .await
        .unwrap()
        .provide("work", move |n: u64| {
            let running = Running::start(&counted);
            async move {
                let _running = running;
                if n % 5 == 0 {
                    tokio::time::sleep(Duration::from_millis(n % 3 + 1)).await;
                }
                Ok::<_, String>(n)
            }
        })
        .await
        .unwrap();

    // Publications throughout, to a subscriber that keeps up and one that
    // reads one every few milliseconds.
    let publisher = connect(&addr).await;
    let ticks = publisher.open("load").await.unwrap();
    let publishing = tokio::spawn(async move {
        for i in 0u64.. {
            ticks.publish("tick", &i).await.unwrap();
            if i % 16 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
    // The slow one buffers little, so it falls behind within the run.
    let slow = BrokerClient::builder(Client::builder(CborCodec::new()))
        .subscription_queue(256)
        .connect(&UnixTransport::new(), &addr)
        .await
        .expect("the broker accepts");
    let subscribers: Vec<BrokerClient> = vec![connect(&addr).await, slow];
    let mut reading = Vec::new();
    for (i, bus) in subscribers.iter().enumerate() {
        let mut events = bus
            .open("load")
            .await
            .unwrap()
            .subscribe(">")
            .await
            .unwrap();
        let pause = Duration::from_millis(5 * i as u64);
        reading.push(tokio::spawn(async move {
            let (mut received, mut lagged) = (0u64, 0u64);
            while let Some(event) = events.next().await {
                match event.unwrap() {
                    Event::Message(_) => received += 1,
                    Event::Lagged(missed) => lagged += missed,
                    // Its client is closed at the end.
                    Event::Interrupted => break,
                }
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
            (received, lagged)
        }));
    }

    let callers: Vec<Channel> = {
        let mut v = Vec::new();
        for _ in 0..CALLERS {
            v.push(connect(&addr).await.open("load").await.unwrap());
        }
        v
    };
    let (answered, cancelled) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let run = |from: usize, to: usize| {
        let (callers, answered, cancelled) = (&callers, answered.clone(), cancelled.clone());
        stream::iter(from..to)
            .map(move |i| {
                let channel = &callers[i % CALLERS];
                let (answered, cancelled) = (answered.clone(), cancelled.clone());
                async move {
                    let mut state = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                    let n = next(&mut state);
                    let call = channel.call::<_, u64>("work", &n);
                    // One call in four is abandoned after up to 2 ms.
                    if next(&mut state) % 4 == 0 {
                        let wait = Duration::from_micros(next(&mut state) % 2000);
                        match tokio::time::timeout(wait, call).await {
                            Ok(answer) => assert_eq!(answer.unwrap(), n),
                            Err(_) => {
                                cancelled.fetch_add(1, Ordering::Relaxed);
                                return;
                            }
                        }
                    } else {
                        assert_eq!(call.await.unwrap(), n);
                    }
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            })
            .buffer_unordered(CALLERS * IN_FLIGHT)
            .collect::<()>()
    };

    // A tenth to warm up (allocator pools, queues at their working size),
    // then the rest, watching memory.
    let warm = calls / 10;
    run(0, warm).await;
    let (rss_warm, fds_warm) = (rss_kib(pid), open_fds(pid));
    let started = Instant::now();
    let mut rss_peak = rss_warm;
    let step = (calls - warm).div_ceil(10).max(1);
    for from in (warm..calls).step_by(step) {
        run(from, (from + step).min(calls)).await;
        rss_peak = rss_peak.max(rss_kib(pid));
    }
    let elapsed = started.elapsed();
    eventually("cancelled handlers were never dropped", || {
        running.load(Ordering::SeqCst) == 0
    })
    .await;
    let rss_end = rss_kib(pid);

    publishing.abort();
    drop(subscribers);
    let counts: Vec<(u64, u64)> = {
        let mut v = Vec::new();
        for r in reading {
            v.push(r.await.unwrap());
        }
        v
    };
    let (answered, cancelled) = (
        answered.load(Ordering::Relaxed),
        cancelled.load(Ordering::Relaxed),
    );
    println!(
        "{calls} calls, the last {} in {elapsed:?}: {answered} answered, {cancelled} cancelled; \
         subscribers (received, missed): {counts:?}; broker RSS {rss_warm} KiB warm, \
         {rss_peak} KiB peak, {rss_end} KiB at the end; descriptors {fds_warm} warm, {} at the end",
        calls - warm,
        open_fds(pid)
    );
    assert_eq!(answered + cancelled, calls as u64);
    assert!(
        cancelled > 0 && answered > cancelled,
        "cancellations did not happen as planned"
    );
    assert!(
        counts[0].0 > 0 && counts[1].0 > 0,
        "a subscriber received nothing"
    );
    assert!(
        counts[1].1 > 0,
        "the slow subscriber was never told it missed publications"
    );
    // Flat: what the broker holds after the run is what it held warm, give
    // or take allocator slack, however long the run.
    assert!(
        rss_end < rss_warm + 16 * 1024,
        "the broker grew from {rss_warm} KiB to {rss_end} KiB over {calls} calls"
    );
    // The two subscribers are gone; nothing else was opened.
    eventually("descriptors leaked", || open_fds(pid) == fds_warm - 2).await;
}
