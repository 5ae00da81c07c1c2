//! shm-rpc-bridge's own Python `RPCClient` calling busline handlers through
//! the named shared memory and semaphores an `SrbServer` makes.
#![cfg(target_os = "linux")]

mod seeds;

use std::{
    fmt,
    io::{BufRead, BufReader},
    time::Duration,
};

use busline::{
    rpc::Router,
    srb::{SrbChannel, SrbServer},
};
use serde::Deserialize;
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(60);

/// A service name no other test (or run) uses.
fn service(test: &str) -> String {
    format!("busline-{test}-{}", std::process::id())
}

#[derive(Deserialize)]
struct Add {
    a: i64,
    b: i64,
}

#[derive(Debug)]
struct NotReady;

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the disk is still spinning up")
    }
}

impl std::error::Error for NotReady {}

fn router() -> Router {
    Router::new()
        .unary(
            "add",
            |Add { a, b }: Add| async move { Ok::<_, String>(a + b) },
        )
        .unary("describe", |kwargs: Value| async move {
            Ok::<_, String>(json!({ "got": kwargs }))
        })
        .unary("fail", |_: Value| async move { Err::<(), _>(NotReady) })
        .unary("big", |_: Value| async move {
            Ok::<_, String>("x".repeat(10_000))
        })
}

const CLIENT: &str = r#"
import json, sys
from shm_rpc_bridge import RPCClient
from shm_rpc_bridge.exceptions import RPCMethodError

client = RPCClient(sys.argv[1], wait_for_server=5)
out = {
    "add": client.call("add", a=2, b=40),
    "describe": client.call("describe", name="grüße", tags=[1, None, True]),
    "running": client.call("__running__"),
}
for name, call in [
    ("fail", lambda: client.call("fail")),
    ("unknown", lambda: client.call("nope")),
    ("bad_args", lambda: client.call("add", a=1)),
    ("big", lambda: client.call("big")),
]:
    try:
        call()
        out[name] = "no error"
    except RPCMethodError as e:
        out[name] = str(e)
# Still serving after every error.
out["after"] = client.call("add", a=1, b=1)
client.close()
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shm_rpc_bridge_client_calls_busline_handlers() {
    let Some(python) = seeds::python("shm_rpc_bridge_client_calls_busline_handlers") else {
        return;
    };
    let name = service("calls");
    let server = SrbServer::builder(router()).bind(&name).await.unwrap();
    let arg = name.clone();
    let out = tokio::task::spawn_blocking(move || seeds::run(&python, CLIENT, &[&arg], LIMIT))
        .await
        .unwrap();
    let out: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(out["add"], 42);
    assert_eq!(
        out["describe"],
        json!({"got": {"name": "grüße", "tags": [1, null, true]}})
    );
    assert_eq!(out["running"], true);
    assert_eq!(out["fail"], "NotReady: the disk is still spinning up");
    assert_eq!(out["unknown"], "RPCError: Unknown method: nope");
    let bad_args = out["bad_args"].as_str().unwrap();
    assert!(
        bad_args.starts_with("TypeError: ") && bad_args.contains("missing field `b`"),
        "{bad_args}"
    );
    let big = out["big"].as_str().unwrap();
    assert!(
        big.starts_with("RPCTransportError: ") && big.contains("raise buffer_size"),
        "{big}"
    );
    assert_eq!(out["after"], 2);

    assert!(SrbChannel::exists(&name));
    server.shutdown().await;
    assert!(
        !SrbChannel::exists(&name),
        "/dev/shm/*srb_{name}_* outlived the server"
    );
}

const PY_SERVER: &str = r#"
import sys
from shm_rpc_bridge import RPCServer
server = RPCServer(sys.argv[1])
server.register("add", lambda a, b: a + b)
print("ready", flush=True)
server.start()
"#;

/// A live server's objects are never taken; a dead one's are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_servers_service_is_refused_and_a_dead_ones_taken_over() {
    let Some(python) =
        seeds::python("a_live_servers_service_is_refused_and_a_dead_ones_taken_over")
    else {
        return;
    };
    // shm-rpc-bridge's own server, alive.
    let name = service("live");
    let mut py = std::process::Command::new(&python)
        .args(["-c", PY_SERVER, &name])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    BufReader::new(py.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "ready");
    let refused = SrbServer::builder(router()).bind(&name).await;
    let _ = py.kill();
    let _ = py.wait();
    SrbChannel::remove(&name);
    let err = refused.expect_err("took a live server's service");
    assert!(err.to_string().contains("already serves"), "{err}");

    // A server killed before it could clean up: its objects are taken over.
    let name = service("dead");
    std::mem::forget(SrbChannel::create(&name, SrbChannel::DEFAULT_BUFFER_SIZE).unwrap());
    // Nobody answers the probe within the (shortened) timeout.
    let server = SrbServer::builder(router())
        .timeout(Duration::from_millis(500))
        .bind(&name)
        .await
        .unwrap();
    let arg = name.clone();
    let code = r#"
import sys
from shm_rpc_bridge import RPCClient
print(RPCClient(sys.argv[1]).call("add", a=1, b=2))
"#;
    let out = tokio::task::spawn_blocking(move || seeds::run(&python, code, &[&arg], LIMIT))
        .await
        .unwrap();
    assert_eq!(out.trim(), "3");
    drop(server);
    assert!(
        !SrbChannel::exists(&name),
        "dropping the server left its objects"
    );
}

/// Bad requests (no Python needed): each gets a typed error answer, and
/// the service carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_answered_and_the_service_carries_on() {
    let name = service("bad");
    let server = SrbServer::builder(router()).bind(&name).await.unwrap();
    let arg = name.clone();
    let answers = tokio::task::spawn_blocking(move || {
        let mut client = SrbChannel::open(&arg, SrbChannel::DEFAULT_BUFFER_SIZE).unwrap();
        let wait = Duration::from_secs(10);
        let mut call = |request: &[u8]| -> Value {
            client.send_request(request, wait).unwrap();
            serde_json::from_slice(&client.receive_response(wait).unwrap()).unwrap()
        };
        [
            call(b"not json"),
            call(br#"{"request_id":"7","params":{}}"#),
            call(br#"{"request_id":"8","method":"add","params":[1,2]}"#),
            call(br#"{"request_id":"9","method":"add","params":{"a":1,"b":2}}"#),
        ]
    })
    .await
    .unwrap();
    let error = |i: usize| answers[i]["error"].as_str().unwrap_or("").to_owned();
    assert!(
        error(0).starts_with("RPCSerializationError: "),
        "{answers:?}"
    );
    assert_eq!(answers[0]["request_id"], "");
    assert!(
        error(1).starts_with("RPCSerializationError: "),
        "{answers:?}"
    );
    assert_eq!(answers[1]["request_id"], "7");
    assert!(error(2).starts_with("TypeError: "), "{answers:?}");
    assert_eq!(
        answers[3],
        json!({"request_id": "9", "result": 3, "error": null})
    );
    server.shutdown().await;
}

/// `busline serve --shm-rpc-bridge NAME`: the demo service for
/// shm-rpc-bridge's clients, its objects removed on SIGTERM.
#[test]
fn the_busline_program_serves_shm_rpc_bridge_clients() {
    let Some(python) = seeds::python("the_busline_program_serves_shm_rpc_bridge_clients") else {
        return;
    };
    let name = service("cli");
    let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_busline"))
        .args(["serve", "--shm-rpc-bridge", &name])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let code = r#"
import sys
from shm_rpc_bridge import RPCClient
client = RPCClient(sys.argv[1], wait_for_server=20)
print(client.call("add", a=2, b=40), client.call("echo", x="y"))
"#;
    let out = seeds::run(&python, code, &[&name], LIMIT);
    let stopped = std::process::Command::new("kill")
        .arg(server.id().to_string())
        .status()
        .unwrap();
    assert!(stopped.success());
    assert!(server.wait().unwrap().success());
    assert_eq!(out.trim(), "42 {'x': 'y'}");
    assert!(
        !SrbChannel::exists(&name),
        "the objects outlived the server"
    );
}

/// Found in review: a dropped server's thread, ending after a new server
/// of the same name started, once removed the new one's objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_server_leaves_its_successors_objects_alone() {
    let name = service("successor");
    let slow = Router::new().unary("slow", |_: Value| async move {
        tokio::time::sleep(Duration::from_millis(600)).await;
        Ok::<_, String>(())
    });
    let first = SrbServer::builder(slow).bind(&name).await.unwrap();
    // Keep its thread busy past the second server's start.
    let mut client = SrbChannel::open(&name, SrbChannel::DEFAULT_BUFFER_SIZE).unwrap();
    let request = br#"{"request_id":"1","method":"slow","params":{}}"#;
    client
        .send_request(request, Duration::from_secs(5))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(first);
    assert!(
        !SrbChannel::exists(&name),
        "dropping removes the names at once"
    );
    let second = SrbServer::builder(router()).bind(&name).await.unwrap();
    // The first server's handler is done by now, and its thread ended.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        SrbChannel::exists(&name),
        "the first server removed the second's objects"
    );
    second.shutdown().await;
    assert!(!SrbChannel::exists(&name));
}
