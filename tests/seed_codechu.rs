//! codechu-ipc's own Python client against a busline server speaking plain
//! JSON lines, and its FIFO channel against busline's, both ways.

mod seeds;

use std::{fmt, time::Duration};

use busline::{
    rpc::{Router, Server},
    Address, FifoChannel, PlainJsonLineCodec, UnixTransport,
};
use serde_json::{json, Value};
use tokio::sync::mpsc;

const LIMIT: Duration = Duration::from_secs(30);

/// A handler's own error type, whose name codechu's client sees.
#[derive(Debug)]
struct NotReady(String);

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not ready: {}", self.0)
    }
}

impl std::error::Error for NotReady {}

/// What a codechu daemon's handler does: answers `echo`, fails `fail`,
/// and takes `note` as a notification (no answer).
fn daemon(notes: mpsc::UnboundedSender<Value>) -> Router {
    Router::new().unary("request", move |req: Value| {
        let notes = notes.clone();
        async move {
            match req["cmd"].as_str() {
                Some("echo") => Ok(Some(json!({ "echo": req }))),
                Some("slow") => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Ok(Some(json!("slow")))
                }
                Some("note") => {
                    // Long enough for the client to have hung up.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let _ = notes.send(req);
                    Ok(None)
                }
                _ => Err(NotReady(req.to_string())),
            }
        }
    })
}

const CLIENT: &str = r#"
import json, socket, sys
from codechu_ipc import UnixClient

path = sys.argv[1]
client = UnixClient(path)
out = {}
out["echo"] = client.request({"cmd": "echo", "text": "grüße ✓"})
client.notify({"cmd": "note", "n": 1})
out["fail"] = client.request({"cmd": "fail"})

# Several lines on one kept connection: the slow one answers first, as
# it came first; a line that is not JSON is answered and the connection
# carries on.
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.settimeout(5)
sock.connect(path)
sock.sendall(b'{"cmd":"slow"}\n{not json\n{"cmd":"echo","n":2}\n')
reader = sock.makefile("rb")
out["kept"] = [json.loads(reader.readline()) for _ in range(3)]
sock.close()
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codechu_client_requests_notifies_and_sees_errors() {
    let Some(python) = seeds::python("codechu_client_requests_notifies_and_sees_errors") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    let (notes, mut noted) = mpsc::unbounded_channel();
    let server = Server::builder(daemon(notes), PlainJsonLineCodec::new())
        .bind(&UnixTransport::new(), &Address::unix(&path))
        .await
        .unwrap();

    let path_arg = path.to_str().unwrap().to_owned();
    let out = tokio::task::spawn_blocking(move || seeds::run(&python, CLIENT, &[&path_arg], LIMIT))
        .await
        .unwrap();
    let out: Value = serde_json::from_str(out.trim()).unwrap();

    assert_eq!(
        out["echo"],
        json!({"echo": {"cmd": "echo", "text": "grüße ✓"}})
    );
    assert_eq!(out["fail"]["type"], "NotReady");
    assert_eq!(out["fail"]["error"], r#"not ready: {"cmd":"fail"}"#);
    let kept = out["kept"].as_array().unwrap();
    assert_eq!(kept[0], "slow");
    assert_eq!(kept[1]["type"], "Serialization", "{kept:?}");
    assert_eq!(kept[2], json!({"echo": {"cmd": "echo", "n": 2}}));
    // The client hung up right after its notification: it still ran.
    let note = tokio::time::timeout(LIMIT, noted.recv()).await.unwrap();
    assert_eq!(note, Some(json!({"cmd": "note", "n": 1})));
    server.shutdown().await;
}

const FIFO_SEND: &str = r#"
import sys
from codechu_ipc import FifoChannel
FifoChannel(sys.argv[1]).send({"event": "rescan-done", "n": 1})
"#;

const FIFO_RECV: &str = r#"
import json, sys
from codechu_ipc import FifoChannel
print(json.dumps(FifoChannel(sys.argv[1]).recv()))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codechu_fifo_channels_interoperate_both_ways() {
    let Some(python) = seeds::python("codechu_fifo_channels_interoperate_both_ways") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.fifo");
    let channel = FifoChannel::open(&path, PlainJsonLineCodec::new()).unwrap();
    let path_arg = path.to_str().unwrap().to_owned();

    // Python sends, busline reads.
    let mut reader = channel.receiver().unwrap();
    let py = python.clone();
    let arg = path_arg.clone();
    let sent = tokio::task::spawn_blocking(move || seeds::run(&py, FIFO_SEND, &[&arg], LIMIT));
    let got: Value = tokio::time::timeout(LIMIT, reader.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, json!({"event": "rescan-done", "n": 1}));
    sent.await.unwrap();
    drop(reader);

    // busline sends, Python reads: its reader opens the FIFO when it
    // starts, and until then a send fails at once (nobody reads).
    let receiving = seeds::Script::start(&python, FIFO_RECV, &[&path_arg]);
    let deadline = tokio::time::Instant::now() + LIMIT;
    while let Err(e) = channel
        .send(&json!({"event": "from-rust", "ok": true}))
        .await
    {
        assert!(tokio::time::Instant::now() < deadline, "never read: {e}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = tokio::task::spawn_blocking(move || receiving.finish(LIMIT))
        .await
        .unwrap();
    let got: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(got, json!({"event": "from-rust", "ok": true}));
}
