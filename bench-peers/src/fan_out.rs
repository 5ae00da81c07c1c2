//! Publications fanned out to 1, 10 and 100 subscribers, through busline's
//! broker and through NATS, measured the same way.
//!
//! Every scenario makes [`DELIVERIES`] deliveries (publications times
//! subscribers), long enough to reach its steady rate. The publisher sends
//! in windows of [`WINDOW`] publications and starts a window once every
//! subscriber has had the one two before: neither broker's queues (65,536
//! publications per subscriber on both) fill, so the rate measured is one
//! every subscriber keeps up with, not how fast a publisher fills memory.
//! Unpaced, NATS drops for slow consumers without telling them how many,
//! and busline drops and says how many ([`Event::Lagged`]); drops are
//! counted on both sides all the same. The clock stops at the last
//! delivery.

use std::{
    path::Path,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use busline::{
    broker::{BrokerClient, Event},
    rpc::Client,
    Address, CborCodec, UnixTransport,
};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::Notify;

/// Deliveries each scenario makes.
const DELIVERIES: u64 = 2_000_000;
/// Publications sent before the publisher waits for every subscriber.
const WINDOW: u64 = 10_000;
/// The subscriber counts measured.
const SUBSCRIBERS: [usize; 3] = [1, 10, 100];
/// Waited for a window's last publication before it counts as dropped.
const QUIET: Duration = Duration::from_secs(1);

/// One scenario's figures: subscribers, deliveries per second, dropped.
pub(crate) type FanOut = (usize, f64, u64);

/// How far the subscribers are: how many have had each window.
struct Pace {
    done: Vec<AtomicUsize>,
    advanced: Notify,
}

impl Pace {
    fn new(published: u64) -> Pace {
        Pace {
            done: (0..=published / WINDOW)
                .map(|_| AtomicUsize::new(0))
                .collect(),
            advanced: Notify::new(),
        }
    }

    /// A subscriber went from `before` publications (seen or dropped) to
    /// `after`.
    fn advanced(&self, before: u64, after: u64) {
        if after / WINDOW > before / WINDOW {
            for window in before / WINDOW..after / WINDOW {
                self.done[window as usize].fetch_add(1, Ordering::AcqRel);
            }
            self.advanced.notify_one();
        }
    }

    /// Wait until `subscribers` have all had `window`, or a quiet spell
    /// says some never will (NATS dropped part of it).
    async fn wait(&self, window: u64, subscribers: usize) {
        let done = &self.done[window as usize];
        let _ = tokio::time::timeout(QUIET, async {
            loop {
                let advanced = self.advanced.notified();
                if done.load(Ordering::Acquire) >= subscribers {
                    return;
                }
                advanced.await;
            }
        })
        .await;
    }
}

/// Publish `published` publications through `publish`, at most two
/// windows ahead of the slowest subscriber: the pipeline never drains
/// between windows, and no queue holds more than two.
async fn publish_paced<F: std::future::Future<Output = ()>>(
    pace: &Pace,
    published: u64,
    subscribers: usize,
    mut publish: impl FnMut(u64) -> F,
) {
    for i in 0..published {
        if i % WINDOW == 0 && i >= 2 * WINDOW {
            pace.wait(i / WINDOW - 2, subscribers).await;
        }
        publish(i).await;
    }
}

/// Deliveries per second and dropped, from each reader's (seen, dropped,
/// last delivery).
fn figures(subscribers: usize, start: Instant, readers: Vec<(u64, u64, Instant)>) -> FanOut {
    let delivered: u64 = readers.iter().map(|r| r.0).sum();
    let dropped = readers.iter().map(|r| r.1).sum();
    let end = readers.iter().map(|r| r.2).max().unwrap_or(start);
    let elapsed = end.duration_since(start).as_secs_f64();
    (subscribers, delivered as f64 / elapsed, dropped)
}

/// A broker client on the broker at `socket`.
pub(crate) async fn connect(socket: &Path) -> BrokerClient {
    BrokerClient::connect(
        Client::builder(CborCodec::new()).retry_connect(Duration::from_secs(10)),
        &UnixTransport::new(),
        &Address::unix(socket),
    )
    .await
    .expect("connects to the broker")
}

/// Every scenario through the busline broker at `socket`, on channels of
/// their own for `round`.
pub(crate) async fn busline(socket: &Path, round: usize) -> Vec<FanOut> {
    let mut rows = Vec::new();
    for subscribers in SUBSCRIBERS {
        let published = DELIVERIES / subscribers as u64;
        let channel = format!("fan{subscribers}-{round}");
        let pace = Arc::new(Pace::new(published));
        let mut clients = Vec::new();
        let mut readers = Vec::new();
        for _ in 0..subscribers {
            let client = connect(socket).await;
            let channel = client.open(&channel).await.expect("opens");
            let mut sub = channel.subscribe(">").await.expect("subscribes");
            let pace = pace.clone();
            readers.push(tokio::spawn(async move {
                let (mut seen, mut dropped) = (0u64, 0u64);
                while seen + dropped < published {
                    let before = seen + dropped;
                    match sub.next().await {
                        Some(Ok(Event::Message(_))) => seen += 1,
                        Some(Ok(Event::Lagged(n))) => dropped += n,
                        other => panic!("subscription ended: {other:?}"),
                    }
                    pace.advanced(before, seen + dropped);
                }
                (seen, dropped, Instant::now())
            }));
            clients.push(client);
        }
        let publisher = connect(socket).await.open(&channel).await.expect("opens");
        let start = Instant::now();
        publish_paced(&pace, published, subscribers, |i| {
            let publisher = &publisher;
            async move { publisher.publish("tick", &i).await.expect("publishes") }
        })
        .await;
        let mut seen = Vec::new();
        for reader in readers {
            seen.push(reader.await.expect("reader"));
        }
        rows.push(figures(subscribers, start, seen));
    }
    rows
}

/// Every scenario through the NATS server at `url`, on subjects of their
/// own for `round`.
pub(crate) async fn nats(url: &str, round: usize) -> Vec<FanOut> {
    let mut rows = Vec::new();
    for subscribers in SUBSCRIBERS {
        let published = DELIVERIES / subscribers as u64;
        let subject = format!("fan{subscribers}.{round}");
        let pace = Arc::new(Pace::new(published));
        let mut readers = Vec::new();
        for _ in 0..subscribers {
            let client = async_nats::connect(url).await.expect("connects");
            let mut sub = client.subscribe(subject.clone()).await.expect("subscribes");
            client.flush().await.expect("flushes");
            let pace = pace.clone();
            readers.push(tokio::spawn(async move {
                let _client = client;
                let (mut seen, mut last) = (0u64, Instant::now());
                // NATS drops for slow consumers without telling the
                // subscriber how many: stop at a quiet spell.
                while seen < published {
                    match tokio::time::timeout(QUIET, sub.next()).await {
                        Ok(Some(_)) => {
                            seen += 1;
                            last = Instant::now();
                            pace.advanced(seen - 1, seen);
                        }
                        _ => break,
                    }
                }
                (seen, published - seen, last)
            }));
        }
        let publisher = async_nats::connect(url).await.expect("connects");
        let start = Instant::now();
        publish_paced(&pace, published, subscribers, |i| {
            let (publisher, subject) = (&publisher, &subject);
            async move {
                publisher
                    .publish(subject.clone(), Bytes::from(i.to_le_bytes().to_vec()))
                    .await
                    .expect("publishes")
            }
        })
        .await;
        publisher.flush().await.expect("flushes");
        let mut seen = Vec::new();
        for reader in readers {
            seen.push(reader.await.expect("reader"));
        }
        rows.push(figures(subscribers, start, seen));
    }
    rows
}
