//! comm-ipc's own Python clients (the `comm_ipc` package, unmodified)
//! through a busline broker's comm-ipc listener, beside busline clients on
//! the same channels.

mod seeds;

use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    time::Duration,
};

use busline::{
    broker::{Broker, BrokerClient, BrokerHandle},
    comm_ipc::{in_process, CommIpcBuilder, CommIpcListener},
    rpc::Client,
    Address, CborCodec, MemoryTransport, UnixTransport,
};
use futures::{stream, StreamExt};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(60);

/// A broker, and a comm-ipc listener (as `builder` makes it) on a Unix
/// socket in `dir` feeding it.
async fn broker_with_listener(
    dir: &std::path::Path,
    builder: CommIpcBuilder,
) -> (BrokerHandle, CommIpcListener, Address) {
    let inside = Address::memory(format!("comm-ipc-{}", dir.display()));
    let broker = Broker::builder()
        .id("test-broker")
        .listen(MemoryTransport::new(), inside.clone(), CborCodec::new())
        .start()
        .await
        .unwrap();
    let listener = builder
        .server_id(broker.id())
        .bind(
            &UnixTransport::new(),
            &Address::unix(dir.join("comm.sock")),
            in_process(inside.clone()),
        )
        .await
        .unwrap();
    (broker, listener, inside)
}

/// comm-ipc's wire spoken by hand, for the tests that need no Python.
mod raw {
    pub(crate) use rmpv::Value as V;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::UnixStream,
    };

    use super::LIMIT;

    /// One message as comm-ipc frames it: a 4-byte big-endian length, then
    /// a msgpack map.
    pub(crate) fn frame(entries: &[(&str, V)]) -> Vec<u8> {
        let map = V::Map(
            entries
                .iter()
                .map(|(k, v)| (V::from(*k), v.clone()))
                .collect(),
        );
        let mut body = Vec::new();
        rmpv::encode::write_value(&mut body, &map).unwrap();
        [&(body.len() as u32).to_be_bytes()[..], &body].concat()
    }

    pub(crate) async fn send(sock: &mut UnixStream, entries: &[(&str, V)]) {
        sock.write_all(&frame(entries)).await.unwrap();
    }

    /// The next message, which must come within [`LIMIT`].
    pub(crate) async fn read(sock: &mut UnixStream) -> V {
        let mut len = [0; 4];
        tokio::time::timeout(LIMIT, sock.read_exact(&mut len))
            .await
            .unwrap()
            .unwrap();
        let mut body = vec![0; u32::from_be_bytes(len) as usize];
        sock.read_exact(&mut body).await.unwrap();
        rmpv::decode::read_value(&mut &body[..]).unwrap()
    }

    /// The next message whose `key` is `value`, skipping others.
    pub(crate) async fn next(sock: &mut UnixStream, key: &str, value: &str) -> V {
        loop {
            let msg = read(sock).await;
            if msg[key].as_str() == Some(value) {
                return msg;
            }
        }
    }

    /// A connection to the listener at `path` that identified as `id`.
    pub(crate) async fn identified(path: &std::path::Path, id: &str) -> UnixStream {
        let mut sock = UnixStream::connect(path).await.unwrap();
        let identify = [("type", V::from("identify")), ("client_id", V::from(id))];
        send(&mut sock, &identify).await;
        assert_eq!(read(&mut sock).await["type"].as_str(), Some("identified"));
        sock
    }

    /// Whether the listener closed the connection (within [`LIMIT`]).
    pub(crate) async fn closed(sock: &mut UnixStream) -> bool {
        let mut rest = Vec::new();
        matches!(
            tokio::time::timeout(LIMIT, sock.read_to_end(&mut rest)).await,
            Ok(Ok(0))
        )
    }
}

/// The script's exit status, once it exits (killed if it has not within
/// [`LIMIT`], so that a stuck one fails the test instead of hanging it).
fn exited(py: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        if let Some(status) = py.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = py.kill();
            return py.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn busline_client(inside: &Address) -> BrokerClient {
    BrokerClient::connect(
        Client::builder(CborCodec::new()),
        &MemoryTransport::new(),
        inside,
    )
    .await
    .unwrap()
}

/// Providers in Python: `add`, a stream `count`, a failing `boom`, and a
/// group event provided twice. Prints "ready", waits for a line on stdin,
/// then calls as a second client and prints what it saw as JSON.
const SCRIPT: &str = r#"
import asyncio, json, os, sys
from comm_ipc import CommIPC

path = sys.argv[1]

def client(name):
    return CommIPC(client_id=name, socket_path=path, auto_reconnect=False)

async def main():
    prov = client("py-prov")
    await prov.connect()
    math = await prov.open("math")

    async def add(cd):
        return cd.data["a"] + cd.data["b"]

    async def count(cd):
        for i in range(cd.data["n"]):
            yield {"i": i}

    async def boom(cd):
        raise ValueError("no such thing")

    await math.add_event("add", add)
    await math.add_event("count", count)
    await math.add_event("boom", boom)

    workers = []
    for name in ("py-w1", "py-w2"):
        w = client(name)
        await w.connect()
        ch = await w.open("math")
        async def work(cd, name=name):
            return name
        await ch.group("grp").provide("work", work)
        workers.append(w)

    out = {}
    rival = client("py-rival")
    await rival.connect()
    r = await rival.open("math")
    async def add2(cd):
        return 0
    try:
        await r.add_event("add", add2)
        out["rival"] = "registered"
    except Exception as e:
        out["rival"] = str(e)

    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

    caller = client("py-caller")
    await caller.connect()
    m = await caller.open("math")
    out["add"] = (await m.event("add", {"a": 2, "b": 40})).data
    out["count"] = [cd.data async for cd in m.stream("count", {"n": 3})]
    out["work"] = (await m.group("grp").get("work", {})).data
    for name, args in (("boom", {}), ("nope", {})):
        try:
            await m.event(name, args)
            out[name] = "no error"
        except Exception as e:
            out[name] = str(e)
    # Served by busline clients.
    out["mul"] = (await m.event("mul", [6, 7])).data
    out["ticks"] = [cd.data async for cd in m.stream("ticks", 3)]
    members = await m.list_members()
    out["members"] = sorted(x["id"] for x in members.data["members"])

    dup = client("py-caller")
    try:
        await dup.connect()
        out["dup"] = "connected"
    except Exception as e:
        out["dup"] = str(e)
    print(json.dumps(out), flush=True)
    # Exit without closing: a comm-ipc client closing while a message
    # arrives can miss its own cancellation (asyncio.wait_for in Python
    # 3.11) and wait out the idle timeout.
    os._exit(0)

asyncio.run(main())
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comm_ipc_clients_call_stream_and_meet_busline_clients() {
    let Some(python) = seeds::python("comm_ipc_clients_call_stream_and_meet_busline_clients")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (broker, listener, inside) =
        broker_with_listener(dir.path(), CommIpcListener::builder()).await;

    // A busline member provides on the same channel.
    let rust = busline_client(&inside).await;
    let math = rust.open("math").await.unwrap();
    math.provide(
        "mul",
        |(a, b): (i64, i64)| async move { Ok::<_, String>(a * b) },
    )
    .await
    .unwrap();
    math.provide_stream("ticks", |n: u64| {
        stream::iter((0..n).map(|i| Ok::<_, String>(format!("tick {i}"))))
    })
    .await
    .unwrap();

    let socket = dir.path().join("comm.sock");
    let mut py = Command::new(&python)
        .args(["-c", SCRIPT, socket.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(py.stdout.take().unwrap()).lines();
    let ready = tokio::task::spawn_blocking(move || {
        let first = lines.next();
        (first, lines)
    });
    let (first, mut lines) = tokio::time::timeout(LIMIT, ready).await.unwrap().unwrap();
    assert_eq!(first.unwrap().unwrap(), "ready");

    // busline calls and streams what Python provides.
    let sum: i64 = math.call("add", &json!({"a": 1, "b": 2})).await.unwrap();
    assert_eq!(sum, 3);
    let counted: Vec<Value> = math
        .stream::<_, Value>("count", &json!({"n": 2}))
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(counted, [json!({"i": 0}), json!({"i": 1})]);
    let boom = math.call::<_, Value>("boom", &json!({})).await.unwrap_err();
    assert!(boom.to_string().contains("no such thing"), "{boom}");

    py.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let read = tokio::task::spawn_blocking(move || lines.next());
    let out = tokio::time::timeout(LIMIT, read)
        .await
        .expect("the Python script answers")
        .unwrap()
        .unwrap()
        .unwrap();
    let status = exited(&mut py);
    assert!(status.success(), "the Python script failed: {out}");
    let out: Value = serde_json::from_str(&out).unwrap();

    assert_eq!(
        out["rival"],
        "Provider already exists for math:add and group mode is incompatible"
    );
    assert_eq!(out["add"], 42);
    assert_eq!(out["count"], json!([{"i": 0}, {"i": 1}, {"i": 2}]));
    assert!(
        ["py-w1", "py-w2"].contains(&out["work"].as_str().unwrap()),
        "{out}"
    );
    assert_eq!(out["boom"], "no such thing");
    assert_eq!(out["nope"], "No provider for math:nope");
    assert_eq!(out["mul"], 42);
    assert_eq!(out["ticks"], json!(["tick 0", "tick 1", "tick 2"]));
    let members = out["members"].as_array().unwrap();
    for id in ["py-prov", "py-w1", "py-w2", "py-rival", "py-caller"] {
        assert!(members.contains(&json!(id)), "{id} not in {members:?}");
    }
    assert_eq!(members.len(), 6, "and the busline member: {members:?}");
    assert_eq!(
        out["dup"],
        "Connection failed: Client ID py-caller already in use"
    );

    listener.shutdown().await;
    broker.shutdown().await;
}

const SECRET_SCRIPT: &str = r#"
import asyncio, json, os, sys
from comm_ipc import CommIPC

path = sys.argv[1]

async def attempt(secret):
    c = CommIPC(socket_path=path, connection_secret=secret, auto_reconnect=False)
    try:
        await c.connect()
        ch = await c.open("math")
        result = (await ch.event("mul", [3, 3])).data
        await c.close()
        return result
    except Exception as e:
        return str(e)

async def main():
    out = {
        "right": await attempt("correct horse battery staple"),
        "wrong": await attempt("incorrect horse"),
        "none": await attempt(None),
    }
    print(json.dumps(out))

asyncio.run(main())
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_secret_is_comm_ipcs_challenge() {
    let Some(python) = seeds::python("the_connection_secret_is_comm_ipcs_challenge") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (broker, listener, inside) = broker_with_listener(
        dir.path(),
        CommIpcListener::builder().connection_secret("correct horse battery staple"),
    )
    .await;
    let rust = busline_client(&inside).await;
    rust.open("math")
        .await
        .unwrap()
        .provide(
            "mul",
            |(a, b): (i64, i64)| async move { Ok::<_, String>(a * b) },
        )
        .await
        .unwrap();
    let socket = dir.path().join("comm.sock");
    let out = tokio::task::spawn_blocking(move || {
        seeds::run(&python, SECRET_SCRIPT, &[socket.to_str().unwrap()], LIMIT)
    })
    .await
    .unwrap();
    let out: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(out["right"], 9);
    assert_eq!(out["wrong"], "Connection failed: Authentication failed");
    assert_eq!(
        out["none"],
        "Server required connection secret but none provided"
    );
    listener.shutdown().await;
    broker.shutdown().await;
}

/// Bad input (no Python needed): each gets a clear error message, costs
/// at most its own connection, and the listener serves the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_cost_one_connection() {
    use raw::{closed, frame, identified, read, V};
    use tokio::{io::AsyncWriteExt, net::UnixStream};

    let dir = tempfile::tempdir().unwrap();
    let (broker, listener, _) = broker_with_listener(dir.path(), CommIpcListener::builder()).await;
    let path = dir.path().join("comm.sock");

    // Not an identify first.
    let mut sock = UnixStream::connect(&path).await.unwrap();
    sock.write_all(&frame(&[("type", V::from("call"))]))
        .await
        .unwrap();
    let said = read(&mut sock).await;
    assert_eq!(said["type"].as_str(), Some("error"));
    assert!(said["message"].as_str().unwrap().contains("identify"));
    assert!(closed(&mut sock).await);

    // After identifying: a frame that is not msgpack, one that is not a
    // map, an unknown type and a call missing its event are each answered.
    let mut sock = identified(&path, "raw").await;
    let unknown = frame(&[("type", V::from("teleport")), ("request_id", V::from("r1"))]);
    let no_event = frame(&[
        ("type", V::from("call")),
        ("channel", V::from("math")),
        ("request_id", V::from("r2")),
    ]);
    sock.write_all(&[unknown, no_event].concat()).await.unwrap();
    let first = read(&mut sock).await;
    assert_eq!(first["request_id"].as_str(), Some("r1"));
    assert!(first["error"].as_str().unwrap().contains("teleport"));
    let second = read(&mut sock).await;
    assert_eq!(second["request_id"].as_str(), Some("r2"));
    assert!(second["error"].as_str().unwrap().contains("event"));
    sock.write_all(&[0, 0, 0, 2, 0xd9, 0xc8]).await.unwrap();
    let said = read(&mut sock).await;
    assert!(
        said["message"].as_str().unwrap().contains("not msgpack"),
        "{said}"
    );
    assert!(closed(&mut sock).await);

    // A length past the frame limit.
    let mut sock = identified(&path, "big").await;
    sock.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    let said = read(&mut sock).await;
    assert!(
        said["message"]
            .as_str()
            .unwrap()
            .contains("exceeds the limit"),
        "{said}"
    );
    assert!(closed(&mut sock).await);

    // And the listener still serves.
    identified(&path, "after").await;
    listener.shutdown().await;
    broker.shutdown().await;
}

const PROVIDER: &str = r#"
import asyncio, sys
from comm_ipc import CommIPC

async def main():
    c = CommIPC(client_id="py-adder", socket_path=sys.argv[1], auto_reconnect=False)
    for _ in range(100):
        try:
            await c.connect()
            break
        except OSError:
            await asyncio.sleep(0.1)
    ch = await c.open("math")
    async def add(cd):
        return cd.data["a"] + cd.data["b"]
    await ch.add_event("add", add)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await c.close()

asyncio.run(main())
"#;

/// `busline broker --listen '...?codec=comm-ipc'`, and `busline call`
/// reaching a comm-ipc provider through it.
#[test]
fn the_broker_program_listens_for_comm_ipc_clients() {
    let Some(python) = seeds::python("the_broker_program_listens_for_comm_ipc_clients") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (native, comm) = (dir.path().join("b.sock"), dir.path().join("c.sock"));
    let native_url = format!("unix://{}", native.display());
    let comm_url = format!("unix://{}?codec=comm-ipc", comm.display());
    let mut broker = Command::new(env!("CARGO_BIN_EXE_busline"))
        .args(["broker", "--listen", &native_url, "--listen", &comm_url])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut py = Command::new(&python)
        .args(["-c", PROVIDER, comm.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    BufReader::new(py.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_busline"))
        .args([
            "call",
            &native_url,
            "--channel",
            "math",
            "add",
            r#"{"a": 2, "b": 40}"#,
        ])
        .output()
        .unwrap();
    drop(py.stdin.take());
    let _ = py.wait();
    let _ = broker.kill();
    let _ = broker.wait();
    assert_eq!(ready.trim(), "ready");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
}

/// comm-ipc's named subscriptions and broadcasts, with a busline member
/// hearing and speaking on the same topics.
const PUBSUB: &str = r#"
import asyncio, json, os, sys
from comm_ipc import CommIPC

path = sys.argv[1]
errors = {}

def client(name):
    async def on_error(e):
        errors.setdefault(name, []).append(str(e))
    return CommIPC(client_id=name, socket_path=path, auto_reconnect=False, on_error=on_error)

async def until(check, what):
    for _ in range(200):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)

async def main():
    out = {"edges": [], "got": [], "heard": [], "owner_heard": []}
    owner = client("py-owner")
    await owner.connect()
    news = await owner.open("news")
    async def edge(cd):
        out["edges"].append(cd.event)
    news.on_receive(edge, "subscription.prices.first")
    news.on_receive(edge, "subscription.prices.last")
    async def owner_heard(cd):
        out["owner_heard"].append(cd.data)
    news.on_receive(owner_heard, "hello")
    await news.add_subscription("prices")

    sub = client("py-sub")
    await sub.connect()
    snews = await sub.open("news")
    async def price(cd):
        out["got"].append([cd.data, cd.sender_id])
    await sub.subscribe("news", "prices", price)
    await until(lambda: out["edges"] == ["subscription.prices.first"], "the first subscriber")
    # The busline member subscribes too (not a first: Python's was).
    print("subscribed", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    async def hello(cd):
        out["heard"].append([cd.data, cd.sender_id])
    snews.on_receive(hello, "hello")

    await news.publish("prices", {"eur": 1.1})
    await news.broadcast("hello", {"from": "owner"})
    print("published", flush=True)
    # The busline member broadcasts bare data in turn.
    await until(lambda: len(out["heard"]) == 2, "both broadcasts")
    await until(lambda: len(out["got"]) == 1, "the publication")

    rival = client("py-rival")
    await rival.connect()
    rnews = await rival.open("news")
    try:
        await rnews.add_subscription("prices")
        out["rival_add"] = "added"
    except Exception as e:
        out["rival_add"] = str(e)
    await rival.publish("news", "prices", {"eur": 0})
    await until(lambda: "py-rival" in errors, "the refused publication")
    out["rival_publish"] = errors["py-rival"]

    await sub.unsubscribe("news", "prices")
    await until(lambda: len(out["edges"]) == 2, "the last subscriber leaving")
    out["removed"] = (await news.remove_subscription("prices")).data
    print(json.dumps(out), flush=True)
    os._exit(0)

asyncio.run(main())
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comm_ipc_subscriptions_and_broadcasts_meet_busline_topics() {
    use busline::broker::Event;
    let Some(python) = seeds::python("comm_ipc_subscriptions_and_broadcasts_meet_busline_topics")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (broker, listener, inside) =
        broker_with_listener(dir.path(), CommIpcListener::builder()).await;
    let rust = busline_client(&inside).await;
    let news = rust.open("news").await.unwrap();
    let mut broadcasts = news.subscribe("broadcast.>").await.unwrap();

    let socket = dir.path().join("comm.sock");
    let mut py = Command::new(&python)
        .args(["-c", PUBSUB, socket.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(py.stdout.take().unwrap()).lines();
    let line = |mut lines: std::io::Lines<BufReader<std::process::ChildStdout>>| async move {
        let read = tokio::task::spawn_blocking(move || (lines.next(), lines));
        let (line, lines) = tokio::time::timeout(LIMIT, read).await.unwrap().unwrap();
        (line.unwrap().unwrap(), lines)
    };
    let (said, lines) = line(lines).await;
    assert_eq!(said, "subscribed");
    let mut prices = news.subscribe("sub.prices").await.unwrap();
    py.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let (said, lines) = line(lines).await;
    assert_eq!(said, "published");

    // busline hears both, as the documented topics and payloads.
    let next = |e: Option<busline::Result<Event>>| match e {
        Some(Ok(Event::Message(p))) => (p.topic.clone(), p.decode::<Value>().unwrap()),
        other => panic!("{other:?}"),
    };
    let price = tokio::time::timeout(LIMIT, prices.next()).await.unwrap();
    assert_eq!(next(price), ("sub.prices".into(), json!({"eur": 1.1})));
    let said = tokio::time::timeout(LIMIT, broadcasts.next())
        .await
        .unwrap();
    assert_eq!(
        next(said),
        (
            "broadcast.hello".into(),
            json!({"sender": "py-owner", "data": {"from": "owner"}})
        )
    );
    // Gone before Python's subscriber leaves, which is then the last.
    drop(prices);
    news.publish("broadcast.hello", &json!({"from": "busline"}))
        .await
        .unwrap();

    let (out, _) = line(lines).await;
    assert!(exited(&mut py).success(), "{out}");
    let out: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(out["got"], json!([[{"eur": 1.1}, "py-owner"]]));
    assert_eq!(
        out["heard"],
        json!([[{"from": "owner"}, "py-owner"], [{"from": "busline"}, "busline"]])
    );
    assert_eq!(
        out["owner_heard"],
        json!([{"from": "busline"}]),
        "not its own"
    );
    assert_eq!(
        out["edges"],
        json!(["subscription.prices.first", "subscription.prices.last"])
    );
    assert_eq!(
        out["rival_add"],
        "Subscription prices already owned by another client"
    );
    assert_eq!(
        out["rival_publish"],
        json!(["only the owner of subscription prices on channel news may publish"])
    );
    assert_eq!(out["removed"], json!({"success": true}));
    listener.shutdown().await;
    broker.shutdown().await;
}

/// A channel protected by its comm-ipc owner: comm-ipc's challenges,
/// signatures checked and made on everything (stream chunks and
/// publications too, which comm-ipc itself leaves unsigned), and a busline
/// member joining with the same password.
const PROTECTED: &str = r#"
import asyncio, json, os, sys
from comm_ipc import CommIPC

path = sys.argv[1]

def client(name):
    return CommIPC(client_id=name, socket_path=path, auto_reconnect=False)

async def until(check, what):
    for _ in range(200):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)

async def main():
    out = {}
    owner = client("py-owner")
    await owner.connect()
    vault = await owner.open("vault")
    async def early(cd):
        return "served since before the password"
    await vault.add_event("early", early)
    await owner.set_password("vault", "s3cret")
    async def get(cd):
        return {"secret": 42, "asked": cd.data}
    async def items(cd):
        for i in range(cd.data["n"]):
            yield {"i": i}
    await vault.add_event("get", get)
    await vault.add_event("items", items)
    await vault.add_subscription("feed")
    print("protected", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

    member = client("py-member")
    await member.connect()
    m = await member.open("vault", password="s3cret")
    out["get"] = (await m.event("get", {"q": "grüße ✓", "f": 1.5, "n": None})).data
    out["early"] = (await m.event("early", {})).data
    out["items"] = [cd.data async for cd in m.stream("items", {"n": 3})]
    got = []
    async def feed(cd):
        got.append(cd.data)
    await member.subscribe("vault", "feed", feed)
    await vault.publish("feed", {"v": 1})
    await until(lambda: got, "the signed publication")
    out["feed"] = got
    heard = []
    async def hello(cd):
        heard.append(cd.data)
    m.on_receive(hello, "hello")
    await vault.broadcast("hello", {"h": 1})
    await until(lambda: heard, "the signed broadcast")
    out["heard"] = heard

    for name, password in (("py-wrong", "wrong"), ("py-none", None)):
        c = client(name)
        await c.connect()
        try:
            await c.open("vault", password=password)
            out[name] = "joined"
        except Exception as e:
            out[name] = str(e)
        await c.close()
    # CommIPC.call signs nothing: refused on a protected channel.
    try:
        await member.call("vault", "get", {})
        out["unsigned"] = "answered"
    except Exception as e:
        out["unsigned"] = str(e)
    try:
        await member.set_password("vault", "mine")
        out["steal"] = "changed"
    except Exception as e:
        out["steal"] = str(e)
    print(json.dumps(out), flush=True)
    os._exit(0)

asyncio.run(main())
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_channels_take_comm_ipcs_challenges_and_signatures() {
    let Some(python) = seeds::python("protected_channels_take_comm_ipcs_challenges_and_signatures")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (broker, listener, inside) =
        broker_with_listener(dir.path(), CommIpcListener::builder()).await;
    let socket = dir.path().join("comm.sock");
    let mut py = Command::new(&python)
        .args(["-c", PROTECTED, socket.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(py.stdout.take().unwrap()).lines();
    let line = |mut lines: std::io::Lines<BufReader<std::process::ChildStdout>>| async move {
        let read = tokio::task::spawn_blocking(move || (lines.next(), lines));
        let (line, lines) = tokio::time::timeout(LIMIT, read).await.unwrap().unwrap();
        (line.unwrap().unwrap(), lines)
    };
    let (said, lines) = line(lines).await;
    assert_eq!(said, "protected");

    // busline members: with the password, they call the comm-ipc provider
    // (signed end to end by busline); without it, they are refused.
    let rust = busline_client(&inside).await;
    let vault = rust.open_with_password("vault", "s3cret").await.unwrap();
    let got: Value = vault
        .call("get", &json!({"from": "busline"}))
        .await
        .unwrap();
    assert_eq!(got, json!({"secret": 42, "asked": {"from": "busline"}}));
    let stranger = busline_client(&inside).await;
    let refused = stranger.open("vault").await.unwrap_err();
    assert!(
        matches!(refused, busline::Error::Unauthorized(_)),
        "{refused}"
    );

    py.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let (out, _) = line(lines).await;
    assert!(exited(&mut py).success(), "{out}");
    let out: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        out["get"],
        json!({"secret": 42, "asked": {"q": "grüße ✓", "f": 1.5, "n": null}})
    );
    assert_eq!(out["early"], "served since before the password");
    assert_eq!(out["items"], json!([{"i": 0}, {"i": 1}, {"i": 2}]));
    assert_eq!(out["feed"], json!([{"v": 1}]));
    assert_eq!(out["heard"], json!([{"h": 1}]));
    assert_eq!(out["py-wrong"], "Invalid channel password");
    assert_eq!(
        out["py-none"],
        "Channel vault requires authentication, but no password was provided."
    );
    assert_eq!(out["unsigned"], "Invalid signature for channel vault");
    assert_eq!(
        out["steal"],
        "Only the channel owner can set or change the password"
    );
    listener.shutdown().await;
    broker.shutdown().await;
}

const KICKED: &str = r#"
import asyncio, json, os, sys
from comm_ipc import CommIPC

path = sys.argv[1]
errors = []

async def on_error(e):
    errors.append(str(e))

async def main():
    out = {}
    # A channel a busline member protected; the listener was given its password.
    c = CommIPC(client_id="py-guest", socket_path=path, auto_reconnect=False, on_error=on_error)
    await c.connect()
    ledger = await c.open("ledger", password="ledger-pw")
    out["total"] = (await ledger.event("total", [1, 2, 3])).data
    # An open channel whose comm-ipc owner then protects it: members are
    # told to reconnect, as by comm-ipc's server.
    owner = CommIPC(client_id="py-owner", socket_path=path, auto_reconnect=False)
    await owner.connect()
    await owner.open("club")
    await c.open("club")
    await owner.set_password("club", "members-only")
    for _ in range(200):
        if errors:
            break
        await asyncio.sleep(0.05)
    out["errors"] = errors
    print(json.dumps(out), flush=True)
    os._exit(0)

asyncio.run(main())
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_given_to_the_listener_and_password_changes() {
    let Some(python) = seeds::python("passwords_given_to_the_listener_and_password_changes") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let given = CommIpcListener::builder().channel_password("ledger", "ledger-pw");
    let (broker, listener, inside) = broker_with_listener(dir.path(), given).await;
    let rust = busline_client(&inside).await;
    let ledger = rust
        .open_with_password("ledger", "ledger-pw")
        .await
        .unwrap();
    ledger
        .provide("total", |xs: Vec<i64>| async move {
            Ok::<_, String>(xs.iter().sum::<i64>())
        })
        .await
        .unwrap();
    let socket = dir.path().join("comm.sock");
    let out = tokio::task::spawn_blocking(move || {
        seeds::run(&python, KICKED, &[socket.to_str().unwrap()], LIMIT)
    })
    .await
    .unwrap();
    let out: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(out["total"], 6);
    assert_eq!(
        out["errors"],
        json!(["Channel password changed, please reconnect"])
    );
    listener.shutdown().await;
    broker.shutdown().await;
}

/// Found in review: a proof for one channel's challenge once got a
/// registration on another channel acted on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_answers_only_its_own_channels_challenge() {
    use hmac::{Hmac, Mac};
    use raw::{identified, next, send, V};

    let dir = tempfile::tempdir().unwrap();
    let given = CommIpcListener::builder().channel_password("payroll", "payroll-pw");
    let (broker, listener, inside) = broker_with_listener(dir.path(), given).await;
    let mut sock = identified(&dir.path().join("comm.sock"), "m").await;
    // A challenge for the protected channel...
    let register = |channel: &str, rid: &str| {
        vec![
            ("type", V::from("register")),
            ("channel", V::from(channel)),
            ("request_id", V::from(rid)),
        ]
    };
    send(&mut sock, &register("payroll", "r1")).await;
    let payroll = next(&mut sock, "type", "auth_challenge").await;
    // ...answered with the password of a channel of its own.
    send(
        &mut sock,
        &[
            ("type", V::from("set_password")),
            ("channel", V::from("mine")),
            ("password", V::from("mine-pw")),
            ("request_id", V::from("r2")),
        ],
    )
    .await;
    next(&mut sock, "request_id", "r2").await;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"mine-pw").unwrap();
    mac.update(payroll["challenge"].as_str().unwrap().as_bytes());
    let proof = hex::encode(mac.finalize().into_bytes());
    let mut forged = register("mine", "r3");
    forged.push(("proof", V::from(proof)));
    forged.push(("challenge_id", payroll["challenge_id"].clone()));
    send(&mut sock, &forged).await;
    let answer = next(&mut sock, "type", "response").await;
    assert_eq!(answer["request_id"].as_str(), Some("r3"));
    assert_eq!(
        answer["error"].as_str(),
        Some("Invalid or expired challenge"),
        "{answer}"
    );
    // And payroll was neither joined nor made by it.
    let rust = busline_client(&inside).await;
    let missing = rust.open_existing("payroll", None).await.unwrap_err();
    assert!(
        matches!(missing, busline::Error::MethodNotFound(_)),
        "{missing}"
    );
    listener.shutdown().await;
    broker.shutdown().await;
}

const METADATA: &str = r#"
import asyncio, json, os, sys
from comm_ipc import CommIPC

path = sys.argv[1]

def client(name):
    return CommIPC(client_id=name, socket_path=path, auto_reconnect=False)

async def main():
    seen = []
    async def on_meta(msg):
        seen.append([msg.get("stype"), msg.get("name"), msg.get("action")])
    watcher = client("py-watch")
    watcher.on_metadata = on_meta
    await watcher.connect()
    room = await watcher.open("room")
    joiner = client("py-join")
    await joiner.connect()
    ch = await joiner.open("room")
    async def ev(cd):
        return 1
    await ch.add_event("ev", ev)
    await ch.add_subscription("news")
    await joiner.close()
    for _ in range(200):
        if ["membership", "py-join", "leave"] in seen:
            break
        await asyncio.sleep(0.05)
    print(json.dumps({"seen": seen, "schemas": sorted(room.remote_schemas)}), flush=True)
    os._exit(0)

asyncio.run(main())
"#;

/// comm-ipc's metadata_update: a channel's listeners hear its comm-ipc
/// members join, provide, add subscriptions and leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_hear_members_come_offer_and_go() {
    let Some(python) = seeds::python("listeners_hear_members_come_offer_and_go") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (broker, listener, _) = broker_with_listener(dir.path(), CommIpcListener::builder()).await;
    let socket = dir.path().join("comm.sock");
    let out = tokio::task::spawn_blocking(move || {
        seeds::run(&python, METADATA, &[socket.to_str().unwrap()], LIMIT)
    })
    .await
    .unwrap();
    let out: Value = serde_json::from_str(out.trim()).unwrap();
    let seen = out["seen"].as_array().unwrap();
    for expected in [
        json!(["membership", "py-join", "join"]),
        json!(["event", "ev", null]),
        json!(["subscription", "news", null]),
        json!(["membership", "py-join", "leave"]),
    ] {
        assert!(seen.contains(&expected), "{expected} not in {seen:?}");
    }
    assert_eq!(out["schemas"], json!(["ev", "news"]));
    listener.shutdown().await;
    broker.shutdown().await;
}

/// Found in review: a password outlived every comm-ipc client of its
/// channel, so the next channel of that name was challenged for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_goes_with_the_last_comm_ipc_client_of_its_channel() {
    use raw::{identified, next, send, V};

    let dir = tempfile::tempdir().unwrap();
    let (broker, listener, _) = broker_with_listener(dir.path(), CommIpcListener::builder()).await;
    let path = dir.path().join("comm.sock");
    let mut owner = identified(&path, "owner").await;
    send(
        &mut owner,
        &[
            ("type", V::from("set_password")),
            ("channel", V::from("temp")),
            ("password", V::from("pw")),
            ("request_id", V::from("p")),
        ],
    )
    .await;
    let msg = next(&mut owner, "request_id", "p").await;
    assert_eq!(msg["data"]["success"].as_bool(), Some(true), "{msg}");
    drop(owner);

    // Once the owner's connection is gone, "temp" is a new, open channel.
    let mut joiner = identified(&path, "next").await;
    for attempt in 0.. {
        assert!(
            attempt < 200,
            "still challenged or refused for the old password"
        );
        let rid = format!("r{attempt}");
        send(
            &mut joiner,
            &[
                ("type", V::from("register")),
                ("channel", V::from("temp")),
                ("request_id", V::from(rid.as_str())),
            ],
        )
        .await;
        let answer = next(&mut joiner, "request_id", &rid).await;
        // The owner's leaving reaches the listener and the broker each in
        // its own time: until both have seen it, the joiner is challenged
        // (by the listener) or refused (by the broker) for the old password.
        let refused = answer["type"].as_str() == Some("auth_challenge")
            || answer["error"]
                .as_str()
                .is_some_and(|e| e.contains("takes a password"));
        if !refused {
            assert_eq!(
                answer["data"]["authenticated"].as_bool(),
                Some(false),
                "{answer}"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    listener.shutdown().await;
    broker.shutdown().await;
}
