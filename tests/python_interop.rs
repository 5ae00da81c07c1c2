//! JSON-RPC 2.0 interoperability with code that knows nothing of busline:
//! a Python client (standard library only) against a busline server, and a
//! busline client against a Python server.
//!
//! Both need `python3` on PATH; without it each test says so and returns.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use busline::{
    rpc::{Client, Router, Server},
    Address, Endpoint, Error, JsonRpcCodec, TcpTransport,
};
use serde::Deserialize;
use tokio::time::timeout;

/// How long any one step may take before the test fails instead of hanging.
const STEP: Duration = Duration::from_secs(5);

/// Whether `python3` can be run; if not, says which test is skipped.
fn python3(test: &str) -> bool {
    match Command::new("python3").arg("--version").output() {
        Ok(out) if out.status.success() => true,
        _ => {
            eprintln!("python3 not found; skipping {test}");
            false
        }
    }
}

/// Kills (and reaps) the child process when dropped, so a failing test
/// leaves nothing running.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn port_of(addr: &Address) -> u16 {
    match addr.endpoint() {
        Endpoint::Tcp { port, .. } => *port,
        other => panic!("expected a TCP address, got {other:?}"),
    }
}

/// A plain JSON-RPC 2.0 client over newline-delimited TCP, written against
/// the specification only. `python3 -c CLIENT PORT`; exits non-zero with a
/// message on stderr at the first mismatch.
const CLIENT: &str = r#"
import json
import socket
import sys

port = int(sys.argv[1])
sock = socket.create_connection(("127.0.0.1", port), timeout=5)
reader = sock.makefile("rb")
step = "connecting"


def fail(message):
    print(f"FAIL ({step}): {message}", file=sys.stderr)
    sys.exit(1)


def send_text(text):
    sock.sendall(text.encode("utf-8") + b"\n")


def send(obj):
    send_text(json.dumps(obj))


def receive():
    line = reader.readline()
    if not line:
        fail("the server closed the connection instead of answering")
    if not line.endswith(b"\n"):
        fail(f"a response without its newline: {line!r}")
    try:
        return json.loads(line)
    except ValueError as e:
        fail(f"the response is not JSON ({e}): {line!r}")


def call(obj):
    send(obj)
    return receive()


def expect(got, want):
    if got != want:
        fail(f"expected {want!r}, got {got!r}")


def expect_error(got, code, id):
    if not isinstance(got, dict) or not isinstance(got.get("error"), dict):
        fail(f"expected an error response, got {got!r}")
    if got.get("jsonrpc") != "2.0" or "result" in got:
        fail(f"expected an error response, got {got!r}")
    if got["error"].get("code") != code or not isinstance(got["error"].get("message"), str):
        fail(f"expected error code {code} with a message, got {got!r}")
    if "id" not in got or got["id"] != id or type(got["id"]) is not type(id):
        fail(f"expected id {id!r}, got {got!r}")


def check(name):
    global step
    step = name


try:
    check("positional params")
    expect(call({"jsonrpc": "2.0", "method": "add", "params": [2, 3], "id": 1}),
           {"jsonrpc": "2.0", "result": 5, "id": 1})

    check("named params")
    expect(call({"jsonrpc": "2.0", "method": "subtract",
                 "params": {"minuend": 42, "subtrahend": 23}, "id": 2}),
           {"jsonrpc": "2.0", "result": 19, "id": 2})
    expect(call({"jsonrpc": "2.0", "method": "subtract",
                 "params": {"subtrahend": 23, "minuend": 42}, "id": 3}),
           {"jsonrpc": "2.0", "result": 19, "id": 3})

    check("method not found")
    expect_error(call({"jsonrpc": "2.0", "method": "no_such_method", "params": [], "id": 4}),
                 -32601, 4)

    check("string ids")
    for id in ["req-\u03b1-7", "42", ""]:
        got = call({"jsonrpc": "2.0", "method": "add", "params": [10, 20], "id": id})
        expect(got, {"jsonrpc": "2.0", "result": 30, "id": id})
        if type(got["id"]) is not str:
            fail(f"id {id!r} came back as {got['id']!r}")

    check("notification")
    send({"jsonrpc": "2.0", "method": "bump", "params": [1]})
    send({"jsonrpc": "2.0", "method": "add", "params": [1, 1], "id": 5})
    expect(receive(), {"jsonrpc": "2.0", "result": 2, "id": 5})

    check("batch")
    got = call([
        {"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": 10},
        {"jsonrpc": "2.0", "method": "bump", "params": [1]},
        {"jsonrpc": "2.0", "method": "subtract",
         "params": {"minuend": 10, "subtrahend": 4}, "id": "b"},
        {"jsonrpc": "2.0", "method": "no_such_method", "id": 11},
    ])
    if not isinstance(got, list):
        fail(f"expected an array, got {got!r}")
    if len(got) != 3:
        fail(f"expected 3 responses (none for the notification), got {got!r}")
    by_id = {json.dumps(r.get("id")): r for r in got}
    expect(by_id.get("10"), {"jsonrpc": "2.0", "result": 3, "id": 10})
    expect(by_id.get('"b"'), {"jsonrpc": "2.0", "result": 6, "id": "b"})
    expect_error(by_id.get("11"), -32601, 11)

    check("invalid JSON")
    send_text('{"jsonrpc": "2.0", "method": "add", "params": [1, 2')
    expect_error(receive(), -32700, None)
    check("a call after invalid JSON")
    expect(call({"jsonrpc": "2.0", "method": "add", "params": [4, 5], "id": 6}),
           {"jsonrpc": "2.0", "result": 9, "id": 6})

    check("invalid requests")
    expect_error(call([]), -32600, None)
    expect_error(call(1), -32600, None)
    expect(call({"jsonrpc": "2.0", "method": "add", "params": [6, 7], "id": 7}),
           {"jsonrpc": "2.0", "result": 13, "id": 7})

    check("closing")
    sock.shutdown(socket.SHUT_WR)
    while True:
        line = reader.readline()
        if not line:
            break
        try:
            extra = json.loads(line)
        except ValueError:
            fail(f"unexpected bytes after the last response: {line!r}")
        if isinstance(extra, list) or "id" in extra:
            fail(f"a response nobody asked for: {line!r}")
except (socket.timeout, TimeoutError):
    fail("timed out waiting for the server")
except (ConnectionError, OSError) as e:
    fail(f"connection error: {e!r}")

print("all JSON-RPC checks passed")
"#;

#[derive(Deserialize)]
struct Subtract {
    minuend: i64,
    subtrahend: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_against_busline_server() {
    if !python3("python_client_against_busline_server") {
        return;
    }
    let bumps = Arc::new(AtomicUsize::new(0));
    let counter = bumps.clone();
    let router = Router::new()
        .unary(
            "add",
            |(a, b): (i64, i64)| async move { Ok::<_, String>(a + b) },
        )
        .unary("subtract", |s: Subtract| async move {
            Ok::<_, String>(s.minuend - s.subtrahend)
        })
        .notification("bump", move |n: usize| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(n, Ordering::SeqCst);
                Ok::<_, String>(())
            }
        });
    let server = timeout(
        STEP,
        Server::builder(router, JsonRpcCodec::new())
            .bind(&TcpTransport::new(), &Address::tcp("127.0.0.1", 0)),
    )
    .await
    .expect("server binds in time")
    .expect("server binds");
    let port = port_of(server.local_addr());

    let out = timeout(
        Duration::from_secs(30),
        tokio::process::Command::new("python3")
            .arg("-c")
            .arg(CLIENT)
            .arg(port.to_string())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the Python client finishes within 30 s")
    .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the Python client failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        out.status
    );
    assert!(stdout.contains("all JSON-RPC checks passed"), "{stdout}");

    // Both notifications (the single one and the one in the batch) reached
    // their handler.
    timeout(STEP, async {
        while bumps.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("both notifications handled");
    assert_eq!(bumps.load(Ordering::SeqCst), 2);
    timeout(STEP, server.shutdown())
        .await
        .expect("server shuts down in time");
}

/// A plain JSON-RPC 2.0 server over newline-delimited TCP: prints its port,
/// then serves `add` (positional) and `greet` (named) until killed or until
/// its stdin closes (so it never outlives the test).
const SERVER: &str = r#"
import json
import os
import socketserver
import sys
import threading


def error(id, code, message, data=None):
    err = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": "2.0", "error": err, "id": id}


def answer(msg):
    if not isinstance(msg, dict):
        return error(None, -32600, "Invalid Request")
    method = msg.get("method")
    if not isinstance(method, str):
        return None  # a response: this server never calls, so ignore it
    if "id" not in msg or method.startswith("rpc."):
        return None  # notifications, including busline's rpc.* ones
    id = msg["id"]
    params = msg.get("params")
    if method == "add":
        if not isinstance(params, list) or not all(isinstance(p, (int, float)) for p in params):
            return error(id, -32602, "Invalid params", "add takes an array of numbers")
        return {"jsonrpc": "2.0", "result": sum(params), "id": id}
    if method == "greet":
        if not isinstance(params, dict) or not isinstance(params.get("name"), str):
            return error(id, -32602, "Invalid params", "greet takes {\"name\": string}")
        return {"jsonrpc": "2.0", "result": "hello, " + params["name"], "id": id}
    return error(id, -32601, "Method not found", method)


class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            if not line.strip():
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                reply = error(None, -32700, "Parse error")
            else:
                if isinstance(msg, list):
                    replies = [r for r in map(answer, msg) if r is not None]
                    reply = replies or None
                    if not msg:
                        reply = error(None, -32600, "Invalid Request")
                else:
                    reply = answer(msg)
            if reply is not None:
                self.wfile.write(json.dumps(reply).encode("utf-8") + b"\n")
                self.wfile.flush()


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True


def exit_when_orphaned():
    sys.stdin.read()
    os._exit(0)


server = Server(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
threading.Thread(target=exit_when_orphaned, daemon=True).start()
server.serve_forever()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busline_client_against_python_server() {
    if !python3("busline_client_against_python_server") {
        return;
    }
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(SERVER)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let _child = KillOnDrop(child);

    // Read the port on a plain thread, so a silent child cannot block the
    // runtime; killing the child (on any exit) ends the read.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line).map(|_| line);
        let _ = tx.send(read);
    });
    let line = timeout(STEP, rx)
        .await
        .expect("the Python server prints its port within 5 s")
        .expect("the reader thread answers")
        .expect("the Python server's stdout is readable");
    let port: u16 = line
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("the Python server printed {line:?}, not a port: {e}"));

    let client = timeout(
        STEP,
        Client::builder(JsonRpcCodec::new())
            .timeout(STEP)
            .connect(&TcpTransport::new(), &Address::tcp("127.0.0.1", port)),
    )
    .await
    .expect("connects in time")
    .expect("connects to the Python server");

    let sum = timeout(STEP, client.call::<_, i64>("add", &(2, 3)))
        .await
        .expect("add answered in time");
    assert_eq!(sum.unwrap(), 5);

    let greeting = timeout(
        STEP,
        client.call::<_, String>("greet", &serde_json::json!({"name": "ann"})),
    )
    .await
    .expect("greet answered in time");
    assert_eq!(greeting.unwrap(), "hello, ann");

    let missing = timeout(STEP, client.call::<_, i64>("no_such_method", &(1,)))
        .await
        .expect("the unknown method answered in time");
    assert!(
        matches!(missing, Err(Error::MethodNotFound(_))),
        "{missing:?}"
    );

    // A notification gets no answer, and the connection goes on.
    client
        .notify("greet", &serde_json::json!({"name": "nobody"}))
        .await
        .unwrap();
    let sum = timeout(STEP, client.call::<_, i64>("add", &(40, 2)))
        .await
        .expect("add after a notification answered in time");
    assert_eq!(sum.unwrap(), 42);

    // Many calls in flight at once are matched to their answers by id.
    let calls = (0..20i64).map(|i| {
        let client = client.clone();
        async move { client.call::<_, i64>("add", &(i, 1000)).await }
    });
    let answers = timeout(STEP, futures::future::try_join_all(calls))
        .await
        .expect("parallel calls answered in time")
        .expect("parallel calls succeed");
    assert_eq!(answers, (0..20).map(|i| i + 1000).collect::<Vec<_>>());
}
