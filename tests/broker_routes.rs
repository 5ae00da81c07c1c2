//! What a broker knows of providers on other brokers, which bridges
//! register with the path they came by: its own id, loops refused, the
//! nearest provider answering and the farther ones standing by.

use busline::{
    broker::{Broker, BrokerClient, BrokerHandle, MAX_HOPS},
    Address, CborCodec, Error, MemoryTransport,
};
use futures::StreamExt;
use serde_json::json;
use support::memory_client;

mod support;

async fn broker(id: &str) -> (BrokerHandle, Address) {
    let addr = Address::memory(format!("routes-{id}"));
    let broker = Broker::builder()
        .id(id)
        .listen(MemoryTransport::new(), addr.clone(), CborCodec::new())
        .start()
        .await
        .unwrap();
    (broker, addr)
}

/// A client providing `whoami` on channel `ch`, answering `name`, and
/// registered as reached through the brokers in `via`.
async fn provider(addr: &Address, name: &'static str, via: &[&str]) -> BrokerClient {
    let bus = memory_client(addr).await;
    let ch = bus.open("ch").await.unwrap();
    ch.provide("whoami", move |()| async move { Ok::<_, String>(name) })
        .await
        .unwrap();
    if !via.is_empty() {
        register(&bus, via).await.unwrap();
    }
    bus
}

/// Register (again) as the provider of `whoami` on `ch`, through `via`.
async fn register(bus: &BrokerClient, via: &[&str]) -> busline::Result<()> {
    let args = json!({"channel": "ch", "method": "whoami", "via": via});
    bus.client().call::<_, ()>("busline.provide", &args).await
}

async fn whoami(caller: &BrokerClient) -> String {
    let ch = caller.open("ch").await.unwrap();
    ch.call("whoami", &()).await.unwrap()
}

#[tokio::test]
async fn a_broker_has_the_id_it_was_given_or_a_random_one() {
    let (named, addr) = broker("alpha").await;
    assert_eq!(named.id(), "alpha");
    assert_eq!(
        memory_client(&addr).await.status().await.unwrap().id,
        "alpha"
    );

    let a = Broker::builder().start().await.unwrap();
    let b = Broker::builder().start().await.unwrap();
    assert_eq!(a.id().len(), 16);
    assert!(a.id().bytes().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(a.id(), b.id());

    for bad in ["", "has space", "slash/y", &"x".repeat(65)] {
        let err = Broker::builder().id(bad).start().await.unwrap_err();
        assert!(
            matches!(&err, Error::Protocol(m) if m.contains("broker id")),
            "{bad:?}: {err}"
        );
    }
}

#[tokio::test]
async fn a_registration_that_already_came_through_this_broker_is_a_loop() {
    let (_broker, addr) = broker("beta").await;
    let bus = provider(&addr, "p", &[]).await;

    let err = register(&bus, &["alpha", "beta", "gamma"])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Protocol(m) if m.contains("loop") && m.contains("beta")),
        "{err}"
    );
    let too_far: Vec<String> = (0..=MAX_HOPS).map(|i| format!("b{i}")).collect();
    let too_far: Vec<&str> = too_far.iter().map(String::as_str).collect();
    let err = register(&bus, &too_far).await.unwrap_err();
    assert!(
        matches!(&err, Error::Protocol(m) if m.contains("MAX_HOPS")),
        "{err}"
    );
    let err = register(&bus, &["ok", "not ok"]).await.unwrap_err();
    assert!(
        matches!(&err, Error::Protocol(m) if m.contains("broker id")),
        "{err}"
    );

    // Refusals change nothing; a good path is recorded, and shown.
    register(&bus, &["alpha", "gamma"]).await.unwrap();
    let info = bus.open("ch").await.unwrap().describe().await.unwrap();
    assert_eq!(info.routes.len(), 1, "{info:?}");
    let (_, method, via) = &info.routes[0];
    assert_eq!(method, "whoami");
    assert_eq!(via, &["alpha", "gamma"]);
    // Registered again without a path, it is a local provider again.
    register(&bus, &[]).await.unwrap();
    let info = bus.open("ch").await.unwrap().describe().await.unwrap();
    assert!(info.routes.is_empty(), "{info:?}");
}

#[tokio::test]
async fn the_nearest_provider_answers_and_the_others_stand_by() {
    let (_broker, addr) = broker("hub").await;
    let caller = memory_client(&addr).await;
    let two_hops = provider(&addr, "two hops", &["far", "near"]).await;
    assert_eq!(whoami(&caller).await, "two hops");
    let one_hop = provider(&addr, "one hop", &["near"]).await;
    let local = provider(&addr, "local", &[]).await;

    for _ in 0..8 {
        assert_eq!(whoami(&caller).await, "local");
    }
    // Each one gone, the next nearest takes over.
    local.close();
    drop(local);
    for _ in 0..8 {
        assert_eq!(whoami(&caller).await, "one hop");
    }
    one_hop.close();
    drop(one_hop);
    assert_eq!(whoami(&caller).await, "two hops");
    drop(two_hops);
}

#[tokio::test]
async fn relayed_publications_are_checked_like_any_input() {
    let (_broker, addr) = broker("gamma").await;
    let owner = memory_client(&addr).await;
    let news = owner.open("news").await.unwrap();
    news.own_topic("official").await.unwrap();
    let reader = memory_client(&addr).await;
    let mut sub = reader
        .open("news")
        .await
        .unwrap()
        .subscribe(">")
        .await
        .unwrap();

    let forger = memory_client(&addr).await;
    let raw = forger.client();
    let one = busline::Payload::cbor(&1u32).unwrap();
    // Not a member of the channel yet.
    let err = raw
        .call_raw("busline.relay:x:1:x:news#t", one.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Unauthorized(_) | Error::Protocol(_)),
        "{err}"
    );
    forger.open("news").await.unwrap();
    for (name, kind) in [
        ("busline.relay:x:one:x:news#t", "malformed"),
        ("busline.relay:x:1::news#t", "malformed"),
        ("busline.relay:bad id:1:x:news#t", "broker id"),
        ("busline.relay:x:1:x:news#bad..topic", "topic"),
    ] {
        let err = raw.call_raw(name, one.clone()).await.unwrap_err();
        assert!(
            matches!(&err, Error::Protocol(m) if m.contains(kind)),
            "{name}: {err}"
        );
    }
    let far: Vec<String> = (0..=MAX_HOPS).map(|i| format!("b{i}")).collect();
    let name = format!("busline.relay:b0:1:{}:news#t", far.join(","));
    let err = raw.call_raw(&name, one.clone()).await.unwrap_err();
    assert!(
        matches!(&err, Error::Protocol(m) if m.contains("MAX_HOPS")),
        "{err}"
    );
    // A topic whose one publisher is here cannot be relayed in.
    let err = raw
        .call_raw("busline.relay:x:1:x:news#official", one.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unauthorized(_)), "{err}");
    // One that already went through this broker is dropped, quietly; a
    // repeat of one delivered before too. The first of each is delivered.
    raw.call_raw("busline.relay:x:1:x,gamma:news#t", one.clone())
        .await
        .unwrap();
    raw.call_raw("busline.relay:x:7:x:news#first", one.clone())
        .await
        .unwrap();
    raw.call_raw("busline.relay:x:7:x,y:news#first", one.clone())
        .await
        .unwrap();
    raw.call_raw("busline.relay:x:8:x:news#second", one.clone())
        .await
        .unwrap();
    let mut topics = Vec::new();
    while topics.len() < 2 {
        match sub.next().await.unwrap().unwrap() {
            busline::broker::Event::Message(p) => topics.push(p.topic),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(topics, ["first", "second"]);
    // And the forger still works.
    assert!(forger.status().await.is_ok());
}

#[tokio::test]
async fn word_of_lost_publications_is_checked_and_reaches_the_subscribers() {
    let (_broker, addr) = broker("delta").await;
    let reader = memory_client(&addr).await;
    let mut sub = reader
        .open("news")
        .await
        .unwrap()
        .subscribe(">")
        .await
        .unwrap();
    let bridge = memory_client(&addr).await;
    let raw = bridge.client();
    let notice =
        |missed: u64, via: Vec<String>| json!({"channel": "news", "missed": missed, "via": via});
    let err = raw
        .call::<_, ()>("busline.relay_lagged", &notice(5, vec!["x".into()]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Unauthorized(_) | Error::Protocol(_)),
        "{err}"
    );
    bridge.open("news").await.unwrap();
    let far: Vec<String> = (0..=MAX_HOPS).map(|i| format!("b{i}")).collect();
    for (via, kind) in [(far, "MAX_HOPS"), (vec!["bad id".into()], "broker id")] {
        let err = raw
            .call::<_, ()>("busline.relay_lagged", &notice(5, via))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Protocol(m) if m.contains(kind)),
            "{err}"
        );
    }
    // Back where it was told before: dropped. Then a real one arrives.
    raw.call::<_, ()>(
        "busline.relay_lagged",
        &notice(7, vec!["x".into(), "delta".into()]),
    )
    .await
    .unwrap();
    raw.call::<_, ()>("busline.relay_lagged", &notice(5, vec!["x".into()]))
        .await
        .unwrap();
    let event = tokio::time::timeout(std::time::Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event, busline::broker::Event::Lagged(5));
}
