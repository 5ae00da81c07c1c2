//! JSON-RPC 2.0 as a plain client sees it: raw JSON texts over the socket,
//! no busline code on the client side. The specification's examples
//! (jsonrpc.org/specification, section 7) are replayed with their ids,
//! error codes and batch shapes, over TCP and Unix sockets.

mod common;

use std::time::Duration;

use busline::{
    rpc::{Client, Router, Server},
    Address, CborCodec, Codec, Error, JsonRpcCodec, JsonRpcFraming, TcpTransport, Transport,
};
use common::Fixture;
use futures::stream;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

const WAIT: Duration = Duration::from_secs(10);

#[derive(Deserialize)]
struct Subtract {
    minuend: i64,
    subtrahend: i64,
}

fn router() -> Router {
    Router::new()
        .unary("subtract", |s: Subtract| async move {
            Ok::<_, String>(s.minuend - s.subtrahend)
        })
        .unary("sum", |xs: Vec<i64>| async move {
            Ok::<_, String>(xs.iter().sum::<i64>())
        })
        .unary("get_data", |(): ()| async {
            Ok::<_, String>(json!(["hello", 5]))
        })
        .notification("update", |_: Vec<i64>| async { Ok::<_, String>(()) })
        .notification("notify_hello", |_: i64| async { Ok::<_, String>(()) })
        .stream("count", |n: u64| stream::iter((0..n).map(Ok::<_, String>)))
        .unary(
            "ask_back",
            |req_n: u64| async move { Ok::<_, String>(req_n) },
        )
}

/// A line-oriented raw client.
struct Raw<S> {
    io: BufReader<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Raw<S> {
    fn new(io: S) -> Self {
        Raw {
            io: BufReader::new(io),
        }
    }

    async fn send(&mut self, text: &str) {
        self.io.get_mut().write_all(text.as_bytes()).await.unwrap();
        self.io.get_mut().write_all(b"\n").await.unwrap();
    }

    async fn recv(&mut self) -> Value {
        let mut line = String::new();
        let n = tokio::time::timeout(WAIT, self.io.read_line(&mut line))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(n > 0, "connection closed while waiting for an answer");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
    }

    /// Send `text`, expect exactly `expected` back (batches in any order).
    async fn exchange(&mut self, text: &str, expected: Value) {
        self.send(text).await;
        let got = self.recv().await;
        assert_eq!(normalize(got), normalize(expected), "answer to {text}");
    }

    /// Send `text` and check nothing comes back: the next line is the
    /// answer to a probe sent after it.
    async fn silence(&mut self, text: &str) {
        self.send(text).await;
        self.exchange(
            r#"{"jsonrpc":"2.0","method":"sum","params":[40,2],"id":"probe"}"#,
            json!({"jsonrpc":"2.0","result":42,"id":"probe"}),
        )
        .await;
    }
}

/// Errors compared by code and id only (messages and data are ours to
/// choose); batch answers sorted, as their order is free.
fn normalize(v: Value) -> Value {
    match v {
        Value::Array(items) => {
            let mut items: Vec<Value> = items.into_iter().map(normalize).collect();
            items.sort_by_key(|i| i.to_string());
            Value::Array(items)
        }
        Value::Object(mut o) => {
            if let Some(Value::Object(e)) = o.get_mut("error") {
                e.retain(|k, _| k == "code");
            }
            Value::Object(o)
        }
        other => other,
    }
}

fn error(code: i64, id: Value) -> Value {
    json!({"jsonrpc": "2.0", "error": {"code": code}, "id": id})
}

async fn spec_examples<T: Transport, C: Codec>(f: Fixture<T, C>) {
    let server = f.serve(router()).await;
    let mut c = Raw::new(f.transport.connect(server.local_addr()).await.unwrap());

    // rpc call with positional parameters
    c.exchange(
        r#"{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}"#,
        json!({"jsonrpc": "2.0", "result": 19, "id": 1}),
    )
    .await;
    c.exchange(
        r#"{"jsonrpc": "2.0", "method": "subtract", "params": [23, 42], "id": 2}"#,
        json!({"jsonrpc": "2.0", "result": -19, "id": 2}),
    )
    .await;
    // rpc call with named parameters
    c.exchange(
        r#"{"jsonrpc": "2.0", "method": "subtract", "params": {"subtrahend": 23, "minuend": 42}, "id": 3}"#,
        json!({"jsonrpc": "2.0", "result": 19, "id": 3}),
    )
    .await;
    c.exchange(
        r#"{"jsonrpc": "2.0", "method": "subtract", "params": {"minuend": 42, "subtrahend": 23}, "id": 4}"#,
        json!({"jsonrpc": "2.0", "result": 19, "id": 4}),
    )
    .await;
    // a Notification
    c.silence(r#"{"jsonrpc": "2.0", "method": "update", "params": [1,2,3,4,5]}"#)
        .await;
    c.silence(r#"{"jsonrpc": "2.0", "method": "foobar"}"#).await;
    // rpc call of non-existent method
    c.exchange(
        r#"{"jsonrpc": "2.0", "method": "foobar", "id": "1"}"#,
        error(-32601, json!("1")),
    )
    .await;
    // rpc call with invalid JSON
    c.exchange(
        r#"{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]"#,
        error(-32700, Value::Null),
    )
    .await;
    // rpc call with invalid Request object
    c.exchange(
        r#"{"jsonrpc": "2.0", "method": 1, "params": "bar"}"#,
        error(-32600, Value::Null),
    )
    .await;
    // rpc call Batch, invalid JSON
    c.exchange(
        r#"[ {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"}, {"jsonrpc": "2.0", "method" ]"#,
        error(-32700, Value::Null),
    )
    .await;
    // rpc call with an empty Array
    c.exchange("[]", error(-32600, Value::Null)).await;
    // rpc call with an invalid Batch (but not empty)
    c.exchange("[1]", json!([error(-32600, Value::Null)])).await;
    // rpc call with invalid Batch
    c.exchange(
        "[1,2,3]",
        json!([
            error(-32600, Value::Null),
            error(-32600, Value::Null),
            error(-32600, Value::Null)
        ]),
    )
    .await;
    // rpc call Batch
    c.exchange(
        r#"[
            {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
            {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},
            {"jsonrpc": "2.0", "method": "subtract", "params": [42,23], "id": "2"},
            {"foo": "boo"},
            {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
            {"jsonrpc": "2.0", "method": "get_data", "id": "9"}
        ]"#
        .replace('\n', " ")
        .as_str(),
        json!([
            {"jsonrpc": "2.0", "result": 7, "id": "1"},
            {"jsonrpc": "2.0", "result": 19, "id": "2"},
            error(-32600, Value::Null),
            error(-32601, json!("5")),
            {"jsonrpc": "2.0", "result": ["hello", 5], "id": "9"}
        ]),
    )
    .await;
    // rpc call Batch (all notifications)
    c.silence(
        r#"[{"jsonrpc": "2.0", "method": "notify_sum", "params": [1,2,4]}, {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]}]"#,
    )
    .await;
    server.shutdown().await;
}

async fn bad_input<T: Transport, C: Codec>(f: Fixture<T, C>) {
    let server = f.serve(router()).await;
    let addr = server.local_addr().clone();
    let mut c = Raw::new(f.transport.connect(&addr).await.unwrap());

    c.exchange(
        r#"{"jsonrpc": "1.0", "method": "sum", "params": [1], "id": 1}"#,
        error(-32600, json!(1)),
    )
    .await;
    c.exchange(
        r#"{"jsonrpc": "2.0", "method": ["sum"], "id": 2}"#,
        error(-32600, json!(2)),
    )
    .await;
    c.exchange(
        r#"{"jsonrpc": "2.0", "method": "sum", "params": 5, "id": 3}"#,
        error(-32600, json!(3)),
    )
    .await;
    c.exchange(
        r#"{"jsonrpc": "2.0", "method": "sum", "params": {"a": "b"}, "id": 4}"#,
        error(-32602, json!(4)),
    )
    .await;
    c.exchange(
        r#"{"jsonrpc": "2.0", "method": "sum", "params": [1], "id": {"no": 1}}"#,
        error(-32600, Value::Null),
    )
    .await;
    // A streaming method called without asking for a stream.
    c.exchange(
        r#"{"jsonrpc": "2.0", "method": "count", "params": [3], "id": 5}"#,
        error(-32600, json!(5)),
    )
    .await;
    // 10 MB of garbage on one line: a parse error, and the line is gone.
    let garbage = "x".repeat(10 << 20);
    c.exchange(&garbage, error(-32700, Value::Null)).await;
    c.exchange(
        r#"{"jsonrpc": "2.0", "method": "sum", "params": [1, 2], "id": 6}"#,
        json!({"jsonrpc": "2.0", "result": 3, "id": 6}),
    )
    .await;

    // Half a request, then the peer vanishes: the server carries on.
    let mut half = f.transport.connect(&addr).await.unwrap();
    half.write_all(br#"{"jsonrpc": "2.0", "method": "sum", "par"#)
        .await
        .unwrap();
    drop(half);
    c.exchange(
        r#"{"jsonrpc": "2.0", "method": "sum", "params": [2, 2], "id": 7}"#,
        json!({"jsonrpc": "2.0", "result": 4, "id": 7}),
    )
    .await;
    server.shutdown().await;

    // Over the frame limit: one error naming the limit, then the server
    // closes that connection.
    let small = Server::builder(router(), JsonRpcCodec::with_max_frame_size(1024))
        .bind(&f.transport, &f.addr_for_raw())
        .await
        .unwrap();
    let mut c = Raw::new(f.transport.connect(small.local_addr()).await.unwrap());
    // The server may close before the whole line is written: a failed
    // write is part of the expected outcome.
    let line = format!("{}\n", "y".repeat(4096));
    let _ = c.io.get_mut().write_all(line.as_bytes()).await;
    let answer = c.recv().await;
    assert_eq!(answer["error"]["code"], json!(-32003), "{answer}");
    assert_eq!(answer["id"], Value::Null);
    assert_eq!(answer["error"]["data"]["busline"], json!("frame_too_large"));
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, c.io.read_to_end(&mut rest))
        .await
        .expect("the server closed the connection")
        .unwrap();
    small.shutdown().await;
}

async fn streams_by_convention<T: Transport, C: Codec>(f: Fixture<T, C>) {
    let server = f.serve(router()).await;
    let mut c = Raw::new(f.transport.connect(server.local_addr()).await.unwrap());
    c.send(r#"{"jsonrpc": "2.0", "method": "count", "params": [5], "id": "s", "stream": 2}"#)
        .await;
    let item =
        |n: u64| json!({"jsonrpc": "2.0", "method": "rpc.item", "params": {"id": "s", "item": n}});
    assert_eq!(c.recv().await, item(0));
    assert_eq!(c.recv().await, item(1));
    // No credit left: nothing more until the client grants some.
    c.silence("").await;
    c.send(r#"{"jsonrpc": "2.0", "method": "rpc.credit", "params": {"id": "s", "credit": 10}}"#)
        .await;
    for n in 2..5 {
        assert_eq!(c.recv().await, item(n));
    }
    assert_eq!(
        c.recv().await,
        json!({"jsonrpc": "2.0", "result": null, "stream": "end", "id": "s"})
    );

    // Cancelled after its first item: the stream stops, no answer follows.
    c.send(r#"{"jsonrpc": "2.0", "method": "count", "params": [1000], "id": 9, "stream": 1}"#)
        .await;
    assert_eq!(
        c.recv().await,
        json!({"jsonrpc": "2.0", "method": "rpc.item", "params": {"id": 9, "item": 0}})
    );
    c.send(r#"{"jsonrpc": "2.0", "method": "rpc.cancel", "params": {"id": 9}}"#)
        .await;
    c.silence(r#"{"jsonrpc": "2.0", "method": "rpc.credit", "params": {"id": 9, "credit": 5}}"#)
        .await;
    server.shutdown().await;
}

/// The server calls back into the client that called it, on the same
/// connection: a busline client serving methods, and a plain one.
async fn server_calls_the_client<T: Transport, C: Codec>(f: Fixture<T, C>) {
    let router = Router::new().route(
        "double_via_client",
        tower::service_fn(|req: busline::rpc::Request| async move {
            let peer = req
                .peer
                .clone()
                .ok_or_else(|| Error::Disconnected("no peer".into()))?;
            let n: i64 = req.arguments()?;
            let doubled: i64 = peer.call("double", &n).await?;
            Ok(busline::rpc::Reply::Unary(busline::Payload::encode(
                req.payload.encoding(),
                &doubled,
            )?))
        }),
    );
    let server = f.serve(router).await;

    let client = f
        .client()
        .serve(Router::new().unary("double", |n: i64| async move { Ok::<_, String>(n * 2) }))
        .connect(&f.transport, server.local_addr())
        .await
        .unwrap();
    assert_eq!(
        client
            .call::<_, i64>("double_via_client", &21)
            .await
            .unwrap(),
        42
    );

    // A client serving nothing answers "method not found", which reaches
    // the original caller.
    let plain = f.connect(&server).await;
    let err = plain
        .call::<_, i64>("double_via_client", &1)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::MethodNotFound(_)), "{err:?}");
    server.shutdown().await;
}

async fn plain_client_answers_the_server<T: Transport, C: Codec>(f: Fixture<T, C>) {
    let router = Router::new().route(
        "confirm_first",
        tower::service_fn(|req: busline::rpc::Request| async move {
            let peer = req
                .peer
                .clone()
                .ok_or_else(|| Error::Disconnected("no peer".into()))?;
            let ok: bool = peer.call("confirm", &("sure?",)).await?;
            Ok(busline::rpc::Reply::Unary(busline::Payload::json(&ok)?))
        }),
    );
    let server = f.serve(router).await;
    let mut c = Raw::new(f.transport.connect(server.local_addr()).await.unwrap());
    c.send(r#"{"jsonrpc": "2.0", "method": "confirm_first", "id": "q"}"#)
        .await;
    let request = c.recv().await;
    assert_eq!(request["method"], json!("confirm"));
    assert_eq!(request["params"], json!(["sure?"]));
    let answer = json!({"jsonrpc": "2.0", "result": true, "id": request["id"]});
    c.send(&answer.to_string()).await;
    assert_eq!(
        c.recv().await,
        json!({"jsonrpc": "2.0", "result": true, "id": "q"})
    );
    server.shutdown().await;
}

macro_rules! over_tcp_and_unix {
    ($($test:ident),* $(,)?) => {
        mod tcp {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(Fixture::tcp(JsonRpcCodec::new())).await;
                }
            )*
        }
        mod unix {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(Fixture::unix(JsonRpcCodec::new())).await;
                }
            )*
        }
    };
}

over_tcp_and_unix!(
    spec_examples,
    bad_input,
    streams_by_convention,
    server_calls_the_client,
    plain_client_answers_the_server,
);

#[tokio::test]
async fn server_calls_the_client_over_cbor_too() {
    server_calls_the_client(Fixture::tcp(CborCodec::new())).await;
}

/// The specification's batch example, pretty-printed as a client with
/// `Content-Length` framing (the LSP style) sends it.
#[tokio::test]
async fn content_length_framing() {
    let server = Server::builder(router(), JsonRpcCodec::new())
        .bind(&TcpTransport::new(), &Address::tcp("127.0.0.1", 0))
        .await
        .unwrap();
    let mut io = TcpTransport::new()
        .connect(server.local_addr())
        .await
        .unwrap();
    let body = r#"[
        {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},
        {"jsonrpc": "2.0", "method": "subtract", "params": [42,23], "id": "2"}
    ]"#;
    let frame = format!("Content-Length: {}\r\n\r\n{body}", body.len());
    io.write_all(frame.as_bytes()).await.unwrap();

    let mut reader = BufReader::new(io);
    let mut header = String::new();
    tokio::time::timeout(WAIT, reader.read_line(&mut header))
        .await
        .unwrap()
        .unwrap();
    let length: usize = header
        .trim()
        .strip_prefix("Content-Length: ")
        .expect("a Content-Length header")
        .parse()
        .unwrap();
    let mut blank = String::new();
    reader.read_line(&mut blank).await.unwrap();
    assert_eq!(blank, "\r\n");
    let mut answer = vec![0; length];
    reader.read_exact(&mut answer).await.unwrap();
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(
        normalize(answer),
        normalize(json!([
            {"jsonrpc": "2.0", "result": 7, "id": "1"},
            {"jsonrpc": "2.0", "result": 19, "id": "2"}
        ]))
    );

    // A busline client can use this framing too.
    let client = Client::builder(JsonRpcCodec::new().framing(JsonRpcFraming::ContentLength))
        .connect(&TcpTransport::new(), server.local_addr())
        .await
        .unwrap();
    assert_eq!(client.call::<_, i64>("sum", &[5, 6]).await.unwrap(), 11);
    server.shutdown().await;
}
