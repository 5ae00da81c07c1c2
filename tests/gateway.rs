//! The HTTP gateway against a real broker, through a real HTTP client:
//! each endpoint, each error's status and body, channel passwords and the
//! broker's secret.

mod support;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use busline::{
    broker::{Broker, BrokerClient, BrokerHandle},
    gateway::Gateway,
    Address, CborCodec, Error, MemoryTransport, SharedSecret,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use support::{memory_client, provide_add};

const SECRET: &str = "a shared secret of some length";

/// A broker with providers on `math`, a protected `vault`, and a gateway
/// in front of it on a loopback port.
struct Setup {
    broker: BrokerHandle,
    addr: Address,
    url: String,
    http: reqwest::Client,
    /// Kept: their connections serve the methods.
    _providers: Vec<BrokerClient>,
    /// Set when the provider's endless `ticks` stream is dropped.
    ticks_cancelled: Arc<AtomicBool>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Setup {
    async fn start(name: &str, secret: Option<&str>) -> Setup {
        let broker = Broker::builder()
            .listen(
                MemoryTransport::new(),
                Address::memory(format!("gateway-{name}-{}", std::process::id())),
                CborCodec::new(),
            )
            .start()
            .await
            .unwrap();
        let addr = broker.local_addrs()[0].clone();

        let provider = memory_client(&addr).await;
        let math = provider.open("math").await.unwrap();
        provide_add(&math).await;
        math.provide("ping", |(): ()| async { Ok::<_, String>("pong") })
            .await
            .unwrap();
        math.provide("fail", |(): ()| async {
            Err::<(), _>("the disk is full".to_owned())
        })
        .await
        .unwrap();
        math.provide("slow", |(): ()| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok::<_, String>(())
        })
        .await
        .unwrap();
        math.provide_stream("count", |n: u64| {
            futures::stream::iter((0..n).map(Ok::<_, String>))
        })
        .await
        .unwrap();
        let ticks_cancelled = Arc::new(AtomicBool::new(false));
        let flag = ticks_cancelled.clone();
        math.provide_stream("ticks", move |()| {
            let guard = SetOnDrop(flag.clone());
            futures::stream::unfold((0u64, guard), |(n, guard)| async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Some((Ok::<_, String>(n), (n + 1, guard)))
            })
        })
        .await
        .unwrap();
        let mut vault = provider.open("vault").await.unwrap();
        vault.set_password(Some("s3cret")).await.unwrap();
        vault
            .provide("gold", |(): ()| async { Ok::<_, String>(1000) })
            .await
            .unwrap();
        // A provider whose connection dies while it answers.
        let vanishing = memory_client(&addr).await;
        let gone = vanishing.clone();
        vanishing
            .open("math")
            .await
            .unwrap()
            .provide("vanish", move |(): ()| {
                let gone = gone.clone();
                async move {
                    gone.close();
                    std::future::pending::<()>().await;
                    Ok::<_, String>(())
                }
            })
            .await
            .unwrap();

        let mut gateway = Gateway::builder(memory_client(&addr).await)
            .call_timeout(Duration::from_millis(300))
            .max_streams(3)
            .allow_host("bus.example")
            .max_body_bytes(64 << 10);
        if let Some(secret) = secret {
            gateway = gateway.secret(SharedSecret::new(secret).unwrap());
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let gateway = gateway.build();
        tokio::spawn(async move {
            gateway
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Setup {
            broker,
            addr,
            url,
            http: reqwest::Client::new(),
            _providers: vec![provider, vanishing],
            ticks_cancelled,
            stop: Some(stop),
        }
    }

    /// POST a call; its status and JSON body.
    async fn call(&self, path: &str, body: &str, headers: &[(&str, &str)]) -> (StatusCode, Value) {
        let mut request = self
            .http
            .post(format!("{}/v1/channels/{path}", self.url))
            .header("Content-Type", "application/json")
            .body(body.to_owned());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    /// GET `path` below the gateway's root.
    async fn fetch(&self, path: &str) -> reqwest::Response {
        let request = self.http.get(format!("{}{path}", self.url));
        request.send().await.unwrap()
    }

    /// GET `path` below the gateway's root, as JSON.
    async fn json(&self, path: &str) -> Value {
        self.fetch(path).await.json().await.unwrap()
    }

    /// GET `path` below `/v1/channels/`, with `headers`.
    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut request = self.http.get(format!("{}/v1/channels/{path}", self.url));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.unwrap()
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.broker.shutdown().await;
    }
}

/// The error code of an error body, checking its shape.
fn code(body: &Value) -> &str {
    assert!(
        body["error"]["message"].is_string(),
        "an error body has a message: {body}"
    );
    body["error"]["code"].as_str().expect("an error code")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_takes_json_and_answers_json() {
    let s = Setup::start("call", None).await;
    assert_eq!(
        s.call("math/call/add", "[2, 40]", &[]).await,
        (StatusCode::OK, json!(42))
    );
    // An empty body is no arguments.
    assert_eq!(
        s.call("math/call/ping", "", &[]).await,
        (StatusCode::OK, json!("pong"))
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_error_has_its_status_and_a_json_body() {
    let s = Setup::start("errors", None).await;
    let cases = [
        (
            "math/call/nope",
            "[]",
            StatusCode::NOT_FOUND,
            "method_not_found",
        ),
        (
            "nowhere/call/add",
            "[1, 2]",
            StatusCode::NOT_FOUND,
            "method_not_found",
        ),
        (
            "math/call/add",
            "[2,",
            StatusCode::BAD_REQUEST,
            "serialization",
        ),
        (
            "math/call/add",
            "\"two\"",
            StatusCode::BAD_REQUEST,
            "serialization",
        ),
        (
            "bad name!/call/add",
            "[1, 2]",
            StatusCode::BAD_REQUEST,
            "protocol",
        ),
        (
            "math/call/fail",
            "",
            StatusCode::INTERNAL_SERVER_ERROR,
            "handler_failed",
        ),
        ("math/call/slow", "", StatusCode::GATEWAY_TIMEOUT, "timeout"),
        (
            "math/call/vanish",
            "",
            StatusCode::BAD_GATEWAY,
            "disconnected",
        ),
    ];
    for (path, body, status, expected) in cases {
        let (got, answer) = s.call(path, body, &[]).await;
        assert_eq!(
            (got, code(&answer)),
            (status, expected),
            "{path} {body}: {answer}"
        );
    }
    let unknown = s.fetch("/v2/nothing").await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert_eq!(code(&unknown.json().await.unwrap()), "method_not_found");
    let (_, failed) = s.call("math/call/fail", "", &[]).await;
    assert_eq!(failed["error"]["message"], "the disk is full");

    // Not said to be JSON (a form, as another site's page may post).
    let response = s
        .http
        .post(format!("{}/v1/channels/math/call/add", s.url))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("[1, 2]")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // Sent to a name that is not the gateway's (DNS rebinding): refused.
    let (status, _) = s
        .call("math/call/add", "[1, 2]", &[("Host", "evil.example:80")])
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    for host in [
        "bus.example:8080",
        "BUS.example",
        "localhost:1",
        "[::1]:8080",
        "10.1.2.3",
    ] {
        let (status, _) = s.call("math/call/add", "[1, 2]", &[("Host", host)]).await;
        assert_eq!(status, StatusCode::OK, "{host}");
    }
    // From another site's page: refused, whatever it asks.
    let (status, answer) = s
        .call(
            "math/call/add",
            "[1, 2]",
            &[("Origin", "https://evil.example")],
        )
        .await;
    assert_eq!(
        (status, code(&answer)),
        (StatusCode::FORBIDDEN, "unauthorized")
    );
    let own = format!("http://{}", s.url.trim_start_matches("http://"));
    assert_eq!(
        s.call("math/call/add", "[1, 2]", &[("Origin", &own)]).await,
        (StatusCode::OK, json!(3)),
        "the gateway's own pages"
    );

    // Larger than the gateway takes: refused before busline sees it.
    let big = format!("[\"{}\"]", "x".repeat(100 << 10));
    let (status, answer) = s.call("math/call/ping", &big, &[]).await;
    assert_eq!(
        (status, code(&answer)),
        (StatusCode::PAYLOAD_TOO_LARGE, "frame_too_large")
    );

    // Asking about a channel did not create it.
    let err = memory_client(&s.addr)
        .await
        .open_existing("nowhere", None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::MethodNotFound(_)), "{err:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protected_channel_takes_its_password_on_every_request() {
    let s = Setup::start("password", None).await;
    let (status, answer) = s.call("vault/call/gold", "", &[]).await;
    assert_eq!(
        (status, code(&answer)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let wrong = [("X-Busline-Password", "guess")];
    let (status, _) = s.call("vault/call/gold", "", &wrong).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let right = [("X-Busline-Password", "s3cret")];
    assert_eq!(
        s.call("vault/call/gold", "", &right).await,
        (StatusCode::OK, json!(1000))
    );
    // Once the gateway is in the channel, it still asks every request,
    // and a wrong password waits for its answer (a floor, not a speed).
    let guessing = std::time::Instant::now();
    let (status, _) = s.call("vault/call/gold", "", &wrong).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(guessing.elapsed() >= Duration::from_millis(250));
    let (status, answer) = s.call("vault/call/gold", "", &[]).await;
    assert_eq!(
        (status, code(&answer)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    assert_eq!(
        s.call("vault/call/gold", "", &right).await,
        (StatusCode::OK, json!(1000))
    );
    // A password for a channel that has none is a mistake, refused before
    // the gateway joins it and after.
    for _ in 0..2 {
        let (status, _) = s.call("math/call/add", "[1, 1]", &right).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(
            s.call("math/call/add", "[1, 1]", &[]).await,
            (StatusCode::OK, json!(2))
        );
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_secret_nothing_is_reachable_without_it() {
    let s = Setup::start("secret", Some(SECRET)).await;
    for path in ["/v1/openapi.json"] {
        let response = s.fetch(path).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers()["www-authenticate"],
            "Bearer realm=\"busline\""
        );
    }
    let (status, _) = s.call("math/call/add", "[1, 2]", &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let url = format!("{}/v1/ws", s.url.replace("http://", "ws://"));
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 401)
        }
        other => panic!("a WebSocket without the secret: {other:?}"),
    }
    let (status, _) = s
        .call(
            "math/call/add",
            "[1, 2]",
            &[("Authorization", "Bearer nope")],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    for scheme in ["Bearer", "bearer"] {
        let bearer = format!("{scheme} {SECRET}");
        assert_eq!(
            s.call("math/call/add", "[1, 2]", &[("Authorization", &bearer)])
                .await,
            (StatusCode::OK, json!(3))
        );
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_description_is_generated_from_the_handlers() {
    let s = Setup::start("openapi", None).await;
    let api: Value = s.json("/v1/openapi.json").await;
    assert!(api["openapi"].as_str().unwrap().starts_with("3."), "{api}");
    let call = &api["paths"]["/v1/channels/{channel}/call/{method}"]["post"];
    let statuses: Vec<&str> = call["responses"]
        .as_object()
        .expect("the call's responses")
        .keys()
        .map(String::as_str)
        .collect();
    for status in ["200", "401", "403", "404", "413", "502", "504"] {
        assert!(statuses.contains(&status), "{status} in {statuses:?}");
    }
    for path in [
        "/v1/channels/{channel}/stream/{method}",
        "/v1/channels/{channel}/subscribe/{pattern}",
    ] {
        assert!(
            api["paths"][path]["get"]["responses"]["200"].is_object(),
            "{path}"
        );
    }
    assert!(api["components"]["schemas"]["ErrorReply"].is_object());
    assert!(api["components"]["securitySchemes"]["bearer"].is_object());
    s.stop().await;
}

struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Reads server-sent events off a response.
struct Events {
    response: reqwest::Response,
    buffer: String,
}

impl Events {
    fn new(response: reqwest::Response) -> Events {
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Events {
            response,
            buffer: String::new(),
        }
    }

    /// The next event's name and data (keep-alive comments skipped).
    async fn next(&mut self) -> (String, String) {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let field = |name: &str| {
                    block
                        .lines()
                        .find_map(|l| l.strip_prefix(name))
                        .map(|v| v.trim_start().to_owned())
                };
                if let Some(event) = field("event:") {
                    return (event, field("data:").unwrap_or_default());
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.response.chunk())
                .await
                .expect("an event within 10 s")
                .expect("the response reads")
                .expect("the stream goes on");
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
}

/// Wait up to ten seconds for `done`.
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, done: impl Fn() -> F) {
    for _ in 0..400 {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{what} did not happen within 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_comes_as_server_sent_events() {
    let s = Setup::start("stream", None).await;
    let mut events = Events::new(s.get("math/stream/count?args=3", &[]).await);
    for n in 0..3 {
        assert_eq!(events.next().await, ("message".into(), n.to_string()));
    }
    assert_eq!(events.next().await.0, "end");

    // Refusals are statuses, not events.
    let cases = [
        ("math/stream/nope", StatusCode::NOT_FOUND),
        ("math/stream/count?args=%5B", StatusCode::BAD_REQUEST),
        (
            "math/stream/count?args=%22three%22",
            StatusCode::BAD_REQUEST,
        ),
        ("nowhere/stream/count?args=1", StatusCode::NOT_FOUND),
        ("vault/stream/count?args=1", StatusCode::UNAUTHORIZED),
    ];
    for (path, status) in cases {
        let response = s.get(path, &[]).await;
        assert_eq!(response.status(), status, "{path}");
        let body: Value = response.json().await.unwrap();
        code(&body);
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_cancels_the_providers_stream() {
    let s = Setup::start("cancel", None).await;
    let mut events = Events::new(s.get("math/stream/ticks", &[]).await);
    for n in 0..3 {
        assert_eq!(events.next().await, ("message".into(), n.to_string()));
    }
    assert!(!s.ticks_cancelled.load(Ordering::SeqCst));
    drop(events);
    let cancelled = s.ticks_cancelled.clone();
    eventually("the provider's stream is cancelled", || async {
        cancelled.load(Ordering::SeqCst)
    })
    .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publications_come_as_server_sent_events_until_the_client_leaves() {
    let s = Setup::start("subscribe", None).await;
    // The gateway joins channels, never creates them.
    let publisher = memory_client(&s.addr).await.open("news").await.unwrap();
    let mut events = Events::new(s.get("news/subscribe/sensors.%3E", &[]).await);
    publisher
        .publish("sensors.temp", &json!({"c": 21.5}))
        .await
        .unwrap();
    publisher.publish("other.topic", &1).await.unwrap();
    publisher.publish("sensors.hall", &"open").await.unwrap();
    let (event, data) = events.next().await;
    assert_eq!(event, "message");
    assert_eq!(
        serde_json::from_str::<Value>(&data).unwrap(),
        json!({"topic": "sensors.temp", "message": {"c": 21.5}})
    );
    let (_, data) = events.next().await;
    assert_eq!(
        serde_json::from_str::<Value>(&data).unwrap(),
        json!({"topic": "sensors.hall", "message": "open"})
    );

    // Gone: the gateway unsubscribes.
    drop(events);
    let watcher = publisher.clone();
    eventually("the gateway unsubscribes", || async {
        watcher.describe().await.unwrap().subscriptions.is_empty()
    })
    .await;

    for (path, status) in [
        ("news/subscribe/a..b", StatusCode::BAD_REQUEST),
        ("vault/subscribe/%3E", StatusCode::UNAUTHORIZED),
        ("nowhere/subscribe/%3E", StatusCode::NOT_FOUND),
    ] {
        let response = s.get(path, &[]).await;
        assert_eq!(response.status(), status, "{path}");
    }
    let right = [("X-Busline-Password", "s3cret")];
    Events::new(s.get("vault/subscribe/%3E", &right).await);
    s.stop().await;
}

/// A WebSocket client of the gateway, speaking JSON-RPC.
struct Socket(
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
);

impl Socket {
    async fn open(s: &Setup) -> Socket {
        let url = format!("{}/v1/ws", s.url.replace("http://", "ws://"));
        let (socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Socket(socket)
    }

    async fn send(&mut self, message: Value) {
        use futures::SinkExt;
        self.0
            .send(tokio_tungstenite::tungstenite::Message::text(
                message.to_string(),
            ))
            .await
            .unwrap();
    }

    async fn next(&mut self) -> Value {
        use futures::StreamExt;
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), self.0.next())
                .await
                .expect("a message within 10 s")
                .expect("the socket is open")
                .unwrap();
            if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
                return serde_json::from_str(&text).unwrap();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_carries_json_rpc_calls_streams_and_subscriptions() {
    let s = Setup::start("websocket", None).await;
    let publisher = memory_client(&s.addr).await.open("news").await.unwrap();
    let mut ws = Socket::open(&s).await;

    // A call, and errors with busline's categories.
    ws.send(json!({"jsonrpc": "2.0", "id": 1, "method": "call",
        "params": {"channel": "math", "method": "add", "args": [2, 40]}}))
        .await;
    assert_eq!(
        ws.next().await,
        json!({"jsonrpc": "2.0", "id": 1, "result": 42})
    );
    ws.send(json!({"jsonrpc": "2.0", "id": "x", "method": "call",
        "params": {"channel": "math", "method": "nope"}}))
        .await;
    let answer = ws.next().await;
    assert_eq!(answer["id"], "x");
    assert_eq!(
        answer["error"]["data"]["busline"], "method_not_found",
        "{answer}"
    );
    ws.send(json!({"jsonrpc": "2.0", "id": 2, "method": "call",
        "params": {"channel": "vault", "method": "gold", "password": "guess"}}))
        .await;
    assert_eq!(ws.next().await["error"]["data"]["busline"], "unauthorized");
    ws.send(json!({"jsonrpc": "2.0", "id": 3, "method": "call",
        "params": {"channel": "vault", "method": "gold", "password": "s3cret"}}))
        .await;
    assert_eq!(ws.next().await["result"], 1000);

    // A stream: items as notifications, then the answer.
    ws.send(
        json!({"jsonrpc": "2.0", "id": 4, "method": "stream", "stream": 16,
        "params": {"channel": "math", "method": "count", "args": 3}}),
    )
    .await;
    for n in 0..3 {
        let item = ws.next().await;
        assert_eq!(item["method"], "rpc.item", "{item}");
        assert_eq!(item["params"], json!({"id": 4, "item": n}));
    }
    let end = ws.next().await;
    assert_eq!(
        (end["id"].clone(), end["stream"].clone()),
        (json!(4), json!("end")),
        "{end}"
    );

    // A subscription, then cancelled: the gateway unsubscribes.
    ws.send(
        json!({"jsonrpc": "2.0", "id": 5, "method": "subscribe", "stream": 16,
        "params": {"channel": "news", "pattern": "sensors.>"}}),
    )
    .await;
    let watcher = publisher.clone();
    eventually("the gateway subscribes", || async {
        !watcher.describe().await.unwrap().subscriptions.is_empty()
    })
    .await;
    publisher.publish("sensors.temp", &21.5).await.unwrap();
    let item = ws.next().await;
    assert_eq!(
        item["params"],
        json!({"id": 5, "item": {"topic": "sensors.temp", "message": 21.5}})
    );
    ws.send(json!({"jsonrpc": "2.0", "method": "rpc.cancel", "params": {"id": 5}}))
        .await;
    eventually("the gateway unsubscribes", || async {
        watcher.describe().await.unwrap().subscriptions.is_empty()
    })
    .await;

    // Not JSON: an error answer, and the socket goes on.
    futures::SinkExt::send(
        &mut ws.0,
        tokio_tungstenite::tungstenite::Message::text("{nope"),
    )
    .await
    .unwrap();
    assert_eq!(ws.next().await["error"]["code"], -32700);
    ws.send(json!({"jsonrpc": "2.0", "id": 6, "method": "call",
        "params": {"channel": "math", "method": "add", "args": [1, 1]}}))
        .await;
    assert_eq!(ws.next().await["result"], 2);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_counts_calls_and_publications_live() {
    let s = Setup::start("status", None).await;
    let status: Value = s.json("/v1/status").await;
    let names: Vec<&str> = status["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["math"], "the protected vault is only counted");
    assert_eq!(status["protected_channels"], 1);
    let calls_before = status["calls"].as_u64().unwrap();

    let response = s.fetch("/v1/status/events").await;
    let mut events = Events::new(response);
    let (event, first) = events.next().await;
    assert_eq!(event, "status");
    let first: Value = serde_json::from_str(&first).unwrap();
    assert!(
        first["calls_per_s"].is_null(),
        "no rate before a second event"
    );
    for i in 0..10 {
        s.call("math/call/add", &format!("[{i}, 1]"), &[]).await;
    }
    // The event after the calls counts them all, at some rate.
    let mut later = Value::Null;
    for _ in 0..10 {
        let (_, data) = events.next().await;
        later = serde_json::from_str(&data).unwrap();
        if later["status"]["calls"].as_u64() == Some(calls_before + 10) {
            break;
        }
    }
    assert_eq!(later["status"]["calls"].as_u64(), Some(calls_before + 10));
    assert!(later["calls_per_s"].as_f64().unwrap() > 0.0, "{later}");

    // A second viewer shares the first one's poll of the broker: its first
    // event is the latest update, rates and all (a poll of its own would
    // start without rates).
    let response = s.fetch("/v1/status/events").await;
    let (_, data) = Events::new(response).next().await;
    let shared: Value = serde_json::from_str(&data).unwrap();
    assert!(shared["calls_per_s"].is_number(), "{shared}");

    // The page itself, served as it is.
    let page = s.fetch("/").await;
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    assert!(page.text().await.unwrap().contains("/v1/status/events"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_first_requests_each_get_what_their_password_deserves() {
    let s = Setup::start("race", None).await;
    for round in 0..3 {
        // A fresh protected channel the gateway has not joined.
        let name = format!("safe{round}");
        let owner = memory_client(&s.addr).await;
        let mut safe = owner.open(&name).await.unwrap();
        safe.set_password(Some("right")).await.unwrap();
        safe.provide("open", |(): ()| async { Ok::<_, String>("opened") })
            .await
            .unwrap();
        let requests = (0..12).map(|i| {
            let password = ["right", "wrong", ""][i % 3];
            let path = format!("{name}/call/open");
            let s = &s;
            async move {
                let headers: Vec<(&str, &str)> = if password.is_empty() {
                    vec![]
                } else {
                    vec![("X-Busline-Password", password)]
                };
                (password, s.call(&path, "", &headers).await.0)
            }
        });
        for (password, status) in futures::future::join_all(requests).await {
            let expected = match password {
                "right" => StatusCode::OK,
                "wrong" => StatusCode::FORBIDDEN,
                _ => StatusCode::UNAUTHORIZED,
            };
            assert_eq!(status, expected, "round {round}, password {password:?}");
        }
        drop(owner);
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_password_retires_the_old_one_and_the_gateway_never_owns() {
    let s = Setup::start("rotate", None).await;
    let owner = memory_client(&s.addr).await;
    let mut vault = owner.open("rotating").await.unwrap();
    vault.set_password(Some("first")).await.unwrap();
    // Providers sign with the key of the password they joined with.
    let provide = |password: &'static str| {
        let addr = s.addr.clone();
        async move {
            let provider = memory_client(&addr).await;
            let channel = provider
                .open_existing("rotating", Some(password))
                .await
                .unwrap();
            channel
                .provide("peek", |(): ()| async { Ok::<_, String>(7) })
                .await
                .unwrap();
            provider
        }
    };
    let old_provider = provide("first").await;
    let first = [("X-Busline-Password", "first")];
    let second = [("X-Busline-Password", "second")];
    assert_eq!(
        s.call("rotating/call/peek", "", &first).await.0,
        StatusCode::OK
    );
    vault.set_password(Some("second")).await.unwrap();
    old_provider.close();
    let _new_provider = provide("second").await;
    eventually("the old password is refused", || async {
        s.call("rotating/call/peek", "", &first).await.0 == StatusCode::FORBIDDEN
    })
    .await;
    let answer = s.call("rotating/call/peek", "", &second).await;
    assert_eq!(answer.0, StatusCode::OK, "{}", answer.1);

    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_made_owner_leaves_the_channel() {
    let s = Setup::start("handover", None).await;
    let owner = memory_client(&s.addr).await;
    let handover = owner.open("handover").await.unwrap();
    // The gateway joins (the method is not there yet) before the provider.
    let (status, _) = s.call("handover/call/peek", "", &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let members = handover.describe().await.unwrap().members;
    assert_eq!(members.len(), 2, "the owner, then the gateway: {members:?}");
    let gateway_id = members[1];
    let provider = memory_client(&s.addr).await;
    let channel = provider.open("handover").await.unwrap();
    channel
        .provide("peek", |(): ()| async { Ok::<_, String>(7) })
        .await
        .unwrap();
    let provider_id = channel.describe().await.unwrap().members[2];
    drop(handover);
    owner.close();
    eventually("the provider owns the channel, not the gateway", || async {
        channel
            .describe()
            .await
            .is_ok_and(|info| info.owner == provider_id && !info.members.contains(&gateway_id))
    })
    .await;
    // The gateway joins again when asked, as a plain member.
    assert_eq!(
        s.call("handover/call/peek", "", &[]).await,
        (StatusCode::OK, json!(7))
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_and_sockets_at_once_are_bounded() {
    let s = Setup::start("bounded", None).await;
    let mut open = vec![
        Events::new(s.get("math/stream/ticks", &[]).await),
        Events::new(s.get("math/stream/ticks", &[]).await),
    ];
    let _socket = Socket::open(&s).await;
    let response = s.get("math/stream/ticks", &[]).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(code(&response.json().await.unwrap()), "overloaded");
    // Calls are not streams: they still pass.
    assert_eq!(
        s.call("math/call/add", "[1, 1]", &[]).await.0,
        StatusCode::OK
    );
    // One closed makes room for one more.
    open.pop();
    eventually("a stream's room is given back", || async {
        s.get("math/stream/ticks", &[]).await.status() == StatusCode::OK
    })
    .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_secret_every_endpoint_wants_it() {
    let open = Setup::start("paths", None).await;
    let api: Value = open.json("/v1/openapi.json").await;
    open.stop().await;
    let s = Setup::start("paths-secret", Some(SECRET)).await;
    for (path, methods) in api["paths"].as_object().unwrap() {
        let path = path
            .replace("{channel}", "math")
            .replace("{method}", "add")
            .replace("{pattern}", "x");
        for method in methods.as_object().unwrap().keys() {
            let request = match method.as_str() {
                "get" => s.http.get(format!("{}{path}", s.url)),
                "post" => s.http.post(format!("{}{path}", s.url)),
                other => panic!("an endpoint answers {other}"),
            };
            let status = request.send().await.unwrap().status();
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
        }
    }
    s.stop().await;
}
