//! Point-to-point RPC behaviour, run over every transport × codec.

mod common;

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use busline::{
    rpc::{Call, Router},
    Codec, Error, Message, Payload, SharedSecret, Spin, Transport, PROTOCOL_VERSION,
};
use bytes::BytesMut;
use common::{DropSignal, Fixture};
use futures::{stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::oneshot,
};
use tower::{Service, ServiceBuilder, ServiceExt};

#[derive(Debug, thiserror::Error)]
#[error("the answer is not {0}")]
struct WrongAnswer(i64);

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Point {
    x: f64,
    y: f64,
}

fn router() -> Router {
    Router::new()
        .unary(
            "add",
            |(a, b): (i64, i64)| async move { Ok::<_, String>(a + b) },
        )
        .unary("norm", |p: Point| async move {
            Ok::<_, String>((p.x * p.x + p.y * p.y).sqrt())
        })
        .unary("unit", |(): ()| async { Ok::<_, String>("nothing in") })
        .unary("check", |n: i64| async move {
            if n == 42 {
                Ok(n)
            } else {
                Err(WrongAnswer(n))
            }
        })
        .unary("panic", |(): ()| async {
            if true {
                panic!("boom");
            }
            Ok::<(), String>(())
        })
        .unary("echo", |bytes: serde_bytes::ByteBuf| async move {
            Ok::<_, String>(bytes)
        })
        .unary("sleep_ms", |ms: u64| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, String>(ms)
        })
        .stream("count", |n: u64| stream::iter((0..n).map(Ok::<_, String>)))
}

async fn request_response<T: Transport, C: Codec>(f: Fixture<T, C>) {
    let server = f.serve(router()).await;
    let client = f.connect(&server).await;
    assert_eq!(client.call::<_, i64>("add", &(2, 3)).await.unwrap(), 5);
    let norm: f64 = client
        .call("norm", &Point { x: 3.0, y: 4.0 })
        .await
        .unwrap();
    assert_eq!(norm, 5.0);
    let unit: String = client.call("unit", &()).await.unwrap();
    assert_eq!(unit, "nothing in");
    // Wrong argument types are the caller's error, and the server goes on.
    let bad = client.call::<_, i64>("add", &"not a pair").await;
    assert!(
        matches!(bad, Err(Error::Serialization(ref m)) if m.contains("add")),
        "{bad:?}"
    );
    assert_eq!(client.call::<_, i64>("add", &(1, 1)).await.unwrap(), 2);
    server.shutdown().await;
}

async fn notification<T: Transport, C: Codec>(f: Fixture<T, C>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let (done, finished) = oneshot::channel();
    let done = Arc::new(std::sync::Mutex::new(Some(done)));
    let counter = seen.clone();
    let router = router().notification("bump", move |n: usize| {
        let (counter, done) = (counter.clone(), done.clone());
        async move {
            if counter.fetch_add(n, Ordering::SeqCst) + n == 10 {
                let _ = done.lock().unwrap().take().map(|tx| tx.send(()));
            }
            Ok::<_, String>(())
        }
    });
    let server = f.serve(router).await;
    let client = f.connect(&server).await;
    for _ in 0..10 {
        client.notify("bump", &1usize).await.unwrap();
    }
    // A notification to a missing method or with bad arguments gets no reply
    // and does not disturb the connection.
    client.notify("missing", &1).await.unwrap();
    client.notify("bump", &"bad").await.unwrap();
    finished.await.unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), 10);
    assert_eq!(client.call::<_, i64>("add", &(1, 2)).await.unwrap(), 3);
    server.shutdown().await;
}

async fn stream_of_10k<T: Transport, C: Codec>(f: Fixture<T, C>) {
    let server = f.serve(router()).await;
    let client = f.connect(&server).await;
    let items: Vec<u64> = client
        .stream::<_, u64>("count", &10_000u64)
        .await
        .unwrap()
        .map(|item| item.unwrap())
        .collect()
        .await;
    assert_eq!(items, (0..10_000).collect::<Vec<_>>());
    // A unary method read as a stream yields its one result.
    let one: Vec<i64> = client
        .stream::<_, i64>("add", &(1, 2))
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(one, [3]);
    server.shutdown().await;
}

async fn stream_cancellation<T: Transport, C: Codec>(f: Fixture<T, C>) {
    let (dropped_tx, dropped) = oneshot::channel();
    let signal = Arc::new(std::sync::Mutex::new(Some(dropped_tx)));
    let produced = Arc::new(AtomicUsize::new(0));
    let count = produced.clone();
    let router = router().stream("forever", move |(): ()| {
        let guard = DropSignal(signal.lock().unwrap().take());
        let count = count.clone();
        stream::iter(0u64..).map(move |i| {
            let _keep = &guard;
            count.fetch_add(1, Ordering::SeqCst);
            Ok::<_, String>(i)
        })
    });
    let server = f.serve(router).await;
    let client = f.connect(&server).await;
    let mut items = client.stream::<_, u64>("forever", &()).await.unwrap();
    for expected in 0..100 {
        assert_eq!(items.next().await.unwrap().unwrap(), expected);
    }
    drop(items);
    tokio::time::timeout(Duration::from_secs(10), dropped)
        .await
        .expect("server dropped the cancelled stream")
        .unwrap();
    // Credit bounds how far the server ran ahead of the reader.
    let ahead = produced.load(Ordering::SeqCst);
    assert!(
        ahead <= 100 + 2 * busline::rpc::DEFAULT_STREAM_WINDOW as usize,
        "{ahead}"
    );
    assert_eq!(client.call::<_, i64>("add", &(2, 2)).await.unwrap(), 4);
    server.shutdown().await;
}

async fn thousand_concurrent_calls<T: Transport, C: Codec>(f: Fixture<T, C>) {
    let server = f.serve(router()).await;
    let client = f.connect(&server).await;
    let calls = (0..1000i64).map(|i| {
        let client = client.clone();
        async move { client.call::<_, i64>("add", &(i, 1000)).await }
    });
    let results = futures::future::join_all(calls).await;
    for (i, result) in results.into_iter().enumerate() {
        assert_eq!(result.unwrap(), i as i64 + 1000);
    }
    server.shutdown().await;
}

/// Payloads around the size codecs stop copying at (`Splices::MIN_LEN`),
/// all in flight at once both ways, come back byte for byte.
async fn mixed_payload_sizes<T: Transport, C: Codec>(f: Fixture<T, C>) {
    let server = f.serve(router()).await;
    let client = f.connect(&server).await;
    let edge = busline::Splices::MIN_LEN;
    let sizes = [0, 1, edge - 1, edge, edge + 1, 70_000, 200_000];
    let calls = sizes
        .iter()
        .cycle()
        .take(3 * sizes.len())
        .enumerate()
        .map(|(i, &len)| {
            let client = client.clone();
            let sent: Vec<u8> = (0..len).map(|j| (i * 31 + j) as u8).collect();
            async move {
                let got: serde_bytes::ByteBuf = client
                    .call("echo", &serde_bytes::Bytes::new(&sent))
                    .await
                    .unwrap_or_else(|e| panic!("call {i} of {len} bytes: {e}"));
                assert!(
                    got[..] == sent[..],
                    "call {i}: {len} bytes came back changed"
                );
            }
        });
    futures::future::join_all(calls).await;
    server.shutdown().await;
}

/// Both ends polling before they sleep ([`Spin::ADAPTIVE`]): calls one at a
/// time and 500 at once, a stream, a call after the connection went idle
/// past its longest spin, and a clean shutdown, as with sleeping ends.
async fn spinning_connections<T: Transport, C: Codec>(f: Fixture<T, C>) {
    let server = f.start(f.server(router()).spin(Spin::ADAPTIVE)).await;
    let client = f
        .client()
        .spin(Spin::ADAPTIVE)
        .connect(&f.transport, server.local_addr())
        .await
        .expect("client connects");
    for i in 0..200i64 {
        assert_eq!(client.call::<_, i64>("add", &(i, 1)).await.unwrap(), i + 1);
    }
    let calls = (0..500i64).map(|i| {
        let client = client.clone();
        async move { client.call::<_, i64>("add", &(i, 7)).await }
    });
    for (i, sum) in futures::future::join_all(calls)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(sum.unwrap(), i as i64 + 7);
    }
    let items: Vec<u64> = client
        .stream::<_, u64>("count", &300u64)
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(items, (0..300).collect::<Vec<_>>());
    tokio::time::sleep(Spin::ADAPTIVE.most() * 4).await;
    assert_eq!(client.call::<_, i64>("add", &(2, 2)).await.unwrap(), 4);
    server.shutdown().await;
    assert!(client.call::<_, i64>("add", &(2, 2)).await.is_err());
}

async fn handler_error_and_panic<T: Transport, C: Codec>(f: Fixture<T, C>) {
    let server = f.serve(router()).await;
    let client = f.connect(&server).await;
    match client.call::<_, i64>("check", &7).await {
        Err(Error::HandlerFailed { message, kind }) => {
            assert_eq!(message, "the answer is not 7");
            assert!(kind.ends_with("WrongAnswer"), "{kind}");
        }
        other => panic!("{other:?}"),
    }
    match client.call::<_, ()>("panic", &()).await {
        Err(Error::HandlerFailed { message, kind }) => {
            assert_eq!((message.as_str(), kind.as_str()), ("boom", "panic"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(client.call::<_, i64>("check", &42).await.unwrap(), 42);
    server.shutdown().await;
}

async fn unknown_method<T: Transport, C: Codec>(f: Fixture<T, C>) {
    let server = f.serve(router()).await;
    let client = f.connect(&server).await;
    let err = client.call::<_, ()>("nope", &()).await.unwrap_err();
    assert!(
        matches!(err, Error::MethodNotFound(ref m) if m == "nope"),
        "{err:?}"
    );
    let mut s = client.stream::<_, ()>("nope", &()).await.unwrap();
    assert!(matches!(
        s.next().await,
        Some(Err(Error::MethodNotFound(_)))
    ));
    assert!(s.next().await.is_none());
    server.shutdown().await;
}

async fn authentication<T: Transport, C: Codec>(f: Fixture<T, C>) {
    let secret = SharedSecret::new("s3cret s3cret s3cret").unwrap();
    let server = f
        .start(
            f.server(router())
                .auth(secret.clone())
                .handshake_timeout(Duration::from_millis(300)),
        )
        .await;
    let addr = server.local_addr().clone();

    let ok = f
        .client()
        .auth(secret)
        .connect(&f.transport, &addr)
        .await
        .unwrap();
    assert_eq!(ok.call::<_, i64>("add", &(1, 2)).await.unwrap(), 3);

    let wrong = SharedSecret::new("a guess, long enough").unwrap();
    let err = f
        .client()
        .auth(wrong)
        .connect(&f.transport, &addr)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Unauthorized(_)),
        "wrong secret: {err:?}"
    );

    let err = match f.client().connect(&f.transport, &addr).await {
        Err(err) => err,
        // Without a handshake (JSON-RPC), the refusal answers the first call.
        Ok(client) if f.codec.hello_optional() => {
            client.call::<_, i64>("add", &(1, 2)).await.unwrap_err()
        }
        Ok(_) => panic!("connected without credentials"),
    };
    assert!(
        matches!(err, Error::Unauthorized(ref m) if m.contains("hmac-sha256")),
        "no auth: {err:?}"
    );

    // A client that says nothing is dropped once the handshake times out.
    let mut silent = f.transport.connect(&addr).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut buf))
        .await
        .expect("server closed the silent connection")
        .ok();

    // And a client whose server never answers its hello gives up with a
    // timeout (a codec without a handshake has nothing to wait for).
    let mut raw = f.transport.bind(&f.addr_for_raw()).await.unwrap();
    let raw_addr = busline::Listener::local_addr(&raw);
    let accept = tokio::spawn(async move {
        busline::Listener::accept(&mut raw)
            .await
            .map(|(io, _)| (io, raw))
    });
    if !f.codec.hello_optional() {
        let err = f
            .client()
            .handshake_timeout(Duration::from_millis(200))
            .connect(&f.transport, &raw_addr)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Timeout(_)), "mute server: {err:?}");
    }
    drop(accept);

    assert_eq!(ok.call::<_, i64>("add", &(2, 2)).await.unwrap(), 4);
    server.shutdown().await;
}

async fn oversize_frames<T: Transport, C: Codec>(f: Fixture<T, C>) {
    let server = f.serve(router()).await;
    let client = f.connect(&server).await;
    // Too large for the sender's own limit: refused locally, connection kept.
    let huge = serde_bytes::ByteBuf::from(vec![7u8; busline::DEFAULT_MAX_FRAME_SIZE + 1]);
    let err = client
        .call::<_, serde_bytes::ByteBuf>("echo", &huge)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::FrameTooLarge { .. }), "{err:?}");
    let fine = serde_bytes::ByteBuf::from(vec![7u8; 1 << 20]);
    let back: serde_bytes::ByteBuf = client.call("echo", &fine).await.unwrap();
    assert_eq!(back, fine);
    server.shutdown().await;
}

async fn garbage_and_truncated_input<T: Transport, C: Codec>(f: Fixture<T, C>) {
    let server = f.serve(router()).await;
    let client = f.connect(&server).await;
    let addr = server.local_addr().clone();

    for garbage in [
        &b"\xff\xfe\xfd garbage \x00\x01\n"[..],
        b"{\"type\":\"bogus\"}\n",
        b"\x00\x00\x00\x01\xff",
    ] {
        let mut raw = f.transport.connect(&addr).await.unwrap();
        raw.write_all(garbage).await.unwrap();
        raw.shutdown().await.unwrap(); // end of stream: an unfinished frame is garbage too
        let mut sink = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut sink))
            .await
            .expect("server closed the garbage connection")
            .ok();
    }

    // A valid hello, then half a request, then the peer vanishes.
    let mut codec = f.codec.clone();
    let mut bytes = BytesMut::new();
    codec
        .encode(
            Message::Hello {
                version: PROTOCOL_VERSION,
                scheme: "none".into(),
            },
            &mut bytes,
        )
        .unwrap();
    let hello_len = bytes.len();
    codec
        .encode(
            Message::Request {
                id: 1,
                method: "add".into(),
                payload: Payload::json(&(1, 2)).unwrap(),
                timeout_ms: None,
            },
            &mut bytes,
        )
        .unwrap();
    let cut = hello_len + (bytes.len() - hello_len) / 2;
    let mut raw = f.transport.connect(&addr).await.unwrap();
    raw.write_all(&bytes[..cut]).await.unwrap();
    drop(raw);

    // The existing client never noticed.
    assert_eq!(client.call::<_, i64>("add", &(20, 22)).await.unwrap(), 42);
    let again = f.connect(&server).await;
    assert_eq!(again.call::<_, i64>("add", &(1, 1)).await.unwrap(), 2);
    server.shutdown().await;
}

async fn disconnect_mid_call<T: Transport, C: Codec>(f: Fixture<T, C>) {
    let server = f
        .start(f.server(router()).drain_timeout(Duration::from_millis(50)))
        .await;
    let client = f.connect(&server).await;
    let pending = tokio::spawn({
        let client = client.clone();
        async move { client.call::<_, u64>("sleep_ms", &60_000u64).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.shutdown().await;
    let err = pending.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::Disconnected(_)), "{err:?}");
    let err = client.call::<_, i64>("add", &(1, 2)).await.unwrap_err();
    assert!(matches!(err, Error::Disconnected(_)), "{err:?}");
}

async fn call_cancellation<T: Transport, C: Codec>(f: Fixture<T, C>) {
    let (dropped_tx, dropped) = oneshot::channel();
    let signal = Arc::new(std::sync::Mutex::new(Some(dropped_tx)));
    let router = router().unary("hang", move |(): ()| {
        let guard = DropSignal(signal.lock().unwrap().take());
        async move {
            let _keep = guard;
            futures::future::pending::<()>().await;
            Ok::<(), String>(())
        }
    });
    let server = f.serve(router).await;
    let client = f.connect(&server).await;
    let err = client
        .with_timeout(Duration::from_millis(100))
        .call::<_, ()>("hang", &())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err:?}");
    tokio::time::timeout(Duration::from_secs(10), dropped)
        .await
        .expect("server dropped the abandoned handler")
        .unwrap();
    assert_eq!(client.call::<_, i64>("add", &(3, 4)).await.unwrap(), 7);
    server.shutdown().await;
}

async fn graceful_shutdown<T: Transport, C: Codec>(f: Fixture<T, C>) {
    let server = f.serve(router()).await;
    let client = f.connect(&server).await;
    let slow = tokio::spawn({
        let client = client.clone();
        async move { client.call::<_, u64>("sleep_ms", &300u64).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let addr = server.local_addr().clone();
    server.shutdown().await;
    assert_eq!(slow.await.unwrap().unwrap(), 300, "in-flight call finished");
    assert!(
        f.client().connect(&f.transport, &addr).await.is_err(),
        "address released"
    );
}

async fn tower_middleware<T: Transport, C: Codec>(f: Fixture<T, C>) {
    let server = f.serve(router()).await;
    let client = f.connect(&server).await;
    let mut svc = ServiceBuilder::new()
        .timeout(Duration::from_millis(200))
        .concurrency_limit(4)
        .service(client.clone());
    let sum = svc
        .ready()
        .await
        .unwrap()
        .call(Call::new(
            "add",
            Payload::encode(client.encoding(), &(5, 6)).unwrap(),
        ))
        .await
        .unwrap();
    assert_eq!(sum.decode::<i64>().unwrap(), 11);
    let slow = Call::new(
        "sleep_ms",
        Payload::encode(client.encoding(), &5_000u64).unwrap(),
    );
    let err = svc.ready().await.unwrap().call(slow).await.unwrap_err();
    assert!(err.is::<tower::timeout::error::Elapsed>(), "{err}");
    server.shutdown().await;
}

async fn retry_while_daemon_starts<T: Transport, C: Codec>(f: Fixture<T, C>) {
    let addr = f.fixed_addr();
    let start = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        f.server(router()).bind(&f.transport, &addr).await.unwrap()
    };
    let connect = f
        .client()
        .retry_connect(Duration::from_secs(10))
        .connect(&f.transport, &addr);
    let (server, client) = tokio::join!(start, connect);
    assert_eq!(
        client
            .unwrap()
            .call::<_, i64>("add", &(1, 2))
            .await
            .unwrap(),
        3
    );
    let err = f
        .client()
        .connect(&f.transport, &f.unused_addr())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Transport(_)), "{err:?}");
    server.shutdown().await;
}

/// The server's frame limit is smaller than the client's: a call over it
/// costs that connection (the server says why), a reply over it costs only
/// that call.
async fn server_frame_limit<C: Codec>(server_codec: C, client_codec: C) {
    let f = Fixture::memory(client_codec);
    let router = router().unary("big_reply", |n: usize| async move {
        Ok::<_, String>(serde_bytes::ByteBuf::from(vec![1u8; n]))
    });
    let server = busline::rpc::Server::builder(router, server_codec)
        .bind(&f.transport, &f.addr)
        .await
        .unwrap();
    let client = f.connect(&server).await;
    let err = client
        .call::<_, serde_bytes::ByteBuf>("big_reply", &(128 * 1024usize))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::FrameTooLarge { limit: 65536, .. }),
        "big reply: {err:?}"
    );
    assert_eq!(
        client.call::<_, i64>("add", &(1, 2)).await.unwrap(),
        3,
        "connection kept"
    );

    let big = serde_bytes::ByteBuf::from(vec![2u8; 128 * 1024]);
    let err = client
        .call::<_, serde_bytes::ByteBuf>("echo", &big)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::FrameTooLarge { limit: 65536, .. }),
        "big call: {err:?}"
    );
    let other = f.connect(&server).await;
    assert_eq!(
        other.call::<_, i64>("add", &(2, 2)).await.unwrap(),
        4,
        "server unharmed"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn server_frame_limit_cbor() {
    server_frame_limit(
        busline::CborCodec::with_max_frame_size(65536),
        busline::CborCodec::new(),
    )
    .await;
}

#[tokio::test]
async fn server_frame_limit_jsonline() {
    server_frame_limit(
        busline::JsonLineCodec::with_max_frame_size(65536),
        busline::JsonLineCodec::new(),
    )
    .await;
}

matrix!(
    request_response,
    notification,
    stream_of_10k,
    stream_cancellation,
    thousand_concurrent_calls,
    mixed_payload_sizes,
    spinning_connections,
    handler_error_and_panic,
    unknown_method,
    authentication,
    oversize_frames,
    garbage_and_truncated_input,
    disconnect_mid_call,
    call_cancellation,
    graceful_shutdown,
    tower_middleware,
    retry_while_daemon_starts,
);

/// A call's timeout covers waiting for a slot among the calls in flight.
#[tokio::test]
async fn the_timeout_covers_waiting_for_a_slot() {
    let f = Fixture::memory(busline::CborCodec::new());
    let server = f.serve(router()).await;
    let client = f
        .client()
        .max_in_flight(1)
        .connect(&f.transport, server.local_addr())
        .await
        .unwrap();
    let busy = client.clone();
    let hog = tokio::spawn(async move { busy.call::<_, u64>("sleep_ms", &1_500u64).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let err = client
        .with_timeout(Duration::from_millis(100))
        .call::<_, u64>("sleep_ms", &0u64)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err:?}");
    hog.abort();
    server.shutdown().await;
}

/// A peer that stops reading paces the sender: notifications wait for
/// room once the socket and the bounded queue are full, and the wait
/// ends with the handle's timeout instead of growing memory.
#[tokio::test]
async fn notifications_wait_for_a_slow_reader() {
    let transport = busline::MemoryTransport::new().buffer(4096);
    let addr = busline::Address::memory("notify-pacing");
    // One handler at a time, and it never finishes: the server stops
    // reading after the first notification.
    let router = Router::new().notification("hang", |_: u64| async move {
        std::future::pending::<()>().await;
        Ok::<_, String>(())
    });
    let server = busline::rpc::Server::builder(router, busline::JsonLineCodec::new())
        .max_handlers(1)
        .drain_timeout(Duration::from_millis(100))
        .bind(&transport, &addr)
        .await
        .unwrap();
    let client = busline::rpc::Client::builder(busline::JsonLineCodec::new())
        .max_queued_notifications(16)
        .timeout(Duration::from_millis(300))
        .connect(&transport, &addr)
        .await
        .unwrap();
    let mut sent = 0u64;
    let err = loop {
        match client.notify("hang", &sent).await {
            Ok(()) => sent += 1,
            Err(err) => break err,
        }
        assert!(sent < 100_000, "notifications were never paced");
    };
    assert!(matches!(err, Error::Timeout(_)), "{err}");
    // The socket buffers hold a few hundred; the queue 16 more.
    assert!(sent > 16, "only {sent} were sent before waiting");
    client.close(Error::Disconnected("test over".into()));
    server.shutdown().await;
}

/// Once the connection is gone, a notification fails at once.
#[tokio::test]
async fn notifying_a_closed_connection_fails() {
    let transport = busline::MemoryTransport::new();
    let addr = busline::Address::memory("notify-closed");
    let server = busline::rpc::Server::builder(Router::new(), busline::JsonLineCodec::new())
        .bind(&transport, &addr)
        .await
        .unwrap();
    let client = busline::rpc::Client::builder(busline::JsonLineCodec::new())
        .connect(&transport, &addr)
        .await
        .unwrap();
    server.shutdown().await;
    let err = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Err(err) = client.notify("x", &1).await {
                break err;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the closed connection is noticed");
    assert!(matches!(err, Error::Disconnected(_)), "{err}");
}

/// Counts the writes made on the byte stream it wraps.
#[derive(Debug)]
struct CountedWrites<I> {
    io: I,
    writes: Arc<AtomicUsize>,
}

impl<I: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for CountedWrites<I> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for CountedWrites<I> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let written = std::pin::Pin::new(&mut self.io).poll_write(cx, buf);
        if written.is_ready() {
            self.writes.fetch_add(1, Ordering::SeqCst);
        }
        written
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// With many calls arriving at once, the server writes the first answers
/// before it has handled the last calls, so the caller can work on them
/// meanwhile (the two sides' threads work at once, not in turns): 64
/// calls read in one go are answered in several writes, not one.
#[tokio::test]
async fn many_calls_at_once_are_answered_as_they_are_handled() {
    let (near, far) = tokio::io::duplex(1 << 20);
    let (writes, sent) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let server_io = CountedWrites {
        io: far,
        writes: writes.clone(),
    };
    let client_io = CountedWrites {
        io: near,
        writes: sent.clone(),
    };
    let echo = Router::new().unary("echo", |x: u64| async move { Ok::<_, String>(x) });
    let server = busline::rpc::Server::builder(echo, busline::CborCodec::new());
    let serving = tokio::spawn(async move {
        server
            .serve_connection(server_io, busline::PeerInfo::described("test"))
            .await
    });
    let client = busline::rpc::Client::builder(busline::CborCodec::new())
        .connect_io(client_io, busline::PeerInfo::described("test"))
        .await
        .unwrap();
    assert_eq!(client.call::<_, u64>("echo", &0u64).await.unwrap(), 0);

    let (before, sent_before) = (writes.load(Ordering::SeqCst), sent.load(Ordering::SeqCst));
    let calls = (0..64u64).map(|x| {
        let client = client.clone();
        async move { client.call::<_, u64>("echo", &x).await.unwrap() }
    });
    let answers = futures::future::join_all(calls).await;
    assert_eq!(answers, (0..64).collect::<Vec<_>>());
    // The 64 calls reached the server in one write (each call sends before
    // any is awaited), so how it answered is the server's doing: a write
    // per 16 frames read, not one for all, nor one per frame.
    assert_eq!(sent.load(Ordering::SeqCst) - sent_before, 1);
    let answered_in = writes.load(Ordering::SeqCst) - before;
    assert!(
        (4..=8).contains(&answered_in),
        "64 calls answered in {answered_in} writes"
    );

    drop(client);
    serving.await.unwrap();
}
