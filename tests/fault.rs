//! Kill the broker process under load and start it again: every call ends
//! exactly once, nothing runs twice, and every client comes back on its
//! own.

mod support;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use busline::{
    broker::{BrokerClient, BrokerClientBuilder, ConnectionEvent, Event, Reconnect},
    rpc::Client,
    Address, CborCodec, Error, NoAuth, UnixTransport,
};
use futures::{stream, StreamExt};
use support::BrokerProcess;

const CALLS_PER_CALLER: u64 = 5_000;
const IN_FLIGHT: usize = 16;

fn resilient() -> BrokerClientBuilder<CborCodec, NoAuth> {
    BrokerClient::builder(Client::builder(CborCodec::new()).timeout(Duration::from_secs(10)))
        .reconnect(Reconnect {
            initial_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
            ..Reconnect::default()
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_broker_under_load_loses_no_call_and_doubles_none() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("bus.sock");
    let (transport, addr) = (UnixTransport::new(), Address::unix(&socket));
    let broker = BrokerProcess::start(&socket).await;

    // Two providers count how often each call reaches them.
    let handled: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let mut providers = Vec::new();
    for _ in 0..2 {
        let bus = resilient().connect(&transport, &addr).await.unwrap();
        let handled = handled.clone();
        bus.open("jobs")
            .await
            .unwrap()
            .provide("work", move |n: u64| {
                *handled.lock().unwrap().entry(n).or_default() += 1;
                async move { Ok::<_, String>(n) }
            })
            .await
            .unwrap();
        providers.push(bus);
    }
    let callers = [
        resilient().connect(&transport, &addr).await.unwrap(),
        resilient().connect(&transport, &addr).await.unwrap(),
    ];

    // A publication stream runs through it all.
    let mut ticks = callers[0]
        .open("ticks")
        .await
        .unwrap()
        .subscribe(">")
        .await
        .unwrap();
    let ticker = providers[0].open("ticks").await.unwrap();
    let publishing = tokio::spawn(async move {
        for i in 0u64.. {
            // Lost while the broker is away (fire and forget), never twice.
            if ticker.publish("tick", &i).await.is_err() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    });
    let reading = tokio::spawn(async move {
        let (mut last, mut received, mut interrupted) = (None::<u64>, 0u64, 0u32);
        while received < 500 || interrupted == 0 {
            match ticks.next().await {
                Some(Ok(Event::Message(p))) => {
                    let i: u64 = p.decode().unwrap();
                    assert!(
                        last < Some(i),
                        "tick {i} after {last:?}: a duplicate or reordering"
                    );
                    last = Some(i);
                    received += 1;
                }
                Some(Ok(Event::Interrupted)) => interrupted += 1,
                Some(Ok(Event::Lagged(_))) => {}
                other => panic!("the subscription ended: {other:?}"),
            }
        }
        (received, interrupted)
    });

    // Calls run while the broker is killed and started again.
    let done = Arc::new(AtomicUsize::new(0));
    let mut running = Vec::new();
    for (c, caller) in callers.iter().enumerate() {
        let jobs = caller.open("jobs").await.unwrap();
        let done = done.clone();
        let first = c as u64 * CALLS_PER_CALLER;
        running.push(tokio::spawn(async move {
            stream::iter(first..first + CALLS_PER_CALLER)
                .map(|n| {
                    let (jobs, done) = (jobs.clone(), done.clone());
                    async move {
                        let outcome = jobs.call::<_, u64>("work", &n).await;
                        done.fetch_add(1, Ordering::Relaxed);
                        (n, outcome)
                    }
                })
                .buffer_unordered(IN_FLIGHT)
                .collect::<Vec<_>>()
                .await
        }));
    }
    while done.load(Ordering::Relaxed) < 2_000 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut events = callers[0].connection_events();
    broker.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let broker = BrokerProcess::start(&socket).await;

    let mut outcomes = Vec::new();
    for run in running {
        outcomes.extend(
            tokio::time::timeout(Duration::from_secs(120), run)
                .await
                .expect("every call ends")
                .unwrap(),
        );
    }
    // Exactly one outcome per call, each the right answer or a typed error
    // that says the broker or the provider was away.
    assert_eq!(outcomes.len() as u64, 2 * CALLS_PER_CALLER);
    let (mut answered, mut failed) = (0, 0);
    for (n, outcome) in &outcomes {
        match outcome {
            Ok(m) => {
                assert_eq!(m, n);
                answered += 1;
            }
            Err(Error::Disconnected(_) | Error::MethodNotFound(_) | Error::Timeout(_)) => {
                failed += 1
            }
            Err(other) => panic!("call {n}: unexpected {other:?}"),
        }
    }
    eprintln!("{answered} calls answered, {failed} failed with a typed error");
    assert_eq!(answered + failed, outcomes.len());
    assert!(answered >= 2_000, "only {answered} answered");
    assert!(failed > 0, "the kill cut no call?");
    // Nothing ran twice, and every answer was run.
    let handled = handled.lock().unwrap().clone();
    assert!(
        handled.values().all(|&times| times == 1),
        "a call ran twice"
    );
    assert!(outcomes
        .iter()
        .filter(|(_, o)| o.is_ok())
        .all(|(n, _)| handled.contains_key(n)));

    // Everything is back, with no application code: calls, both providers,
    // the subscription.
    let seen = tokio::time::timeout(Duration::from_secs(20), async {
        let mut seen = Vec::new();
        while let Some(event) = events.next().await {
            let restored = matches!(event, ConnectionEvent::Restored);
            seen.push(event);
            if restored {
                return seen;
            }
        }
        seen
    })
    .await
    .expect("the caller is restored");
    assert!(
        seen.iter()
            .any(|e| matches!(e, ConnectionEvent::Disconnected(_))),
        "{seen:?}"
    );
    let jobs = callers[1].open("jobs").await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let info = jobs.describe().await.unwrap();
            if info.methods.first().is_some_and(|(_, by)| by.len() == 2) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("both providers are back");
    assert_eq!(
        jobs.call::<_, u64>("work", &u64::MAX).await.unwrap(),
        u64::MAX
    );
    let (received, interrupted) = tokio::time::timeout(Duration::from_secs(60), reading)
        .await
        .expect("publications flow again")
        .unwrap();
    assert!(interrupted >= 1 && received >= 500);
    publishing.abort();
    drop(broker);
}
