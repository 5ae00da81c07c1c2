//! The `busline` program as a user runs it: bad input gets a clear message
//! and exit code 1, and `serve` + `call` work together.

mod support;

use std::process::{Command, Output, Stdio};

use support::provide_add;

fn busline(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_busline"))
        .args(args)
        .output()
        .expect("busline runs")
}

fn fails_with(args: &[&str], needle: &str) {
    let out = busline(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} should fail");
    assert!(
        stderr.contains(needle),
        "{args:?}: stderr {stderr:?} lacks {needle:?}"
    );
}

#[test]
fn bad_input_is_a_clear_error() {
    fails_with(&["call", "nonsense", "add"], "invalid address");
    fails_with(&["call", "http://x:1", "add"], "unknown scheme");
    fails_with(&["call", "tcp://127.0.0.1", "add"], "needs a port");
    fails_with(
        &["call", "unix:///tmp/x.sock?codec=morse", "add"],
        "unknown codec",
    );
    fails_with(
        &["call", "unix:///tmp/x.sock", "add", "[1,"],
        "must be valid JSON",
    );
    fails_with(
        &["call", "unix:///nonexistent/busline.sock", "add", "[1,2]"],
        "transport error",
    );
    fails_with(
        &[
            "serve",
            "unix:///tmp/x.sock",
            "--secret-file",
            "/nonexistent/key",
        ],
        "secret file",
    );
    fails_with(
        &["call", "u", "m", "--stream", "--notify"],
        "cannot be used with",
    );
    fails_with(&["frobnicate"], "unrecognized subcommand");
    fails_with(&["--threads", "0", "demo"], "not in 1..=1024");
    fails_with(&["demo", "--threads", "5000"], "not in 1..=1024");
    fails_with(&["demo", "--threads", "many"], "invalid digit");
    fails_with(
        &["call", "unix:///tmp/x.sock?codec=cbor&method=echo", "add"],
        "?method= applies to the plain-jsonline codec",
    );
    fails_with(
        &[
            "broker",
            "--listen",
            "unix:///tmp/x.sock?codec=plain-jsonline",
        ],
        "plain-jsonline serves one handler",
    );
    fails_with(
        &[
            "broker",
            "--listen",
            "unix:///tmp/x.sock?codec=comm-ipc",
            "--allow-uid",
            "0",
        ],
        "do not apply to comm-ipc listeners",
    );
}

/// Every option and configuration file with a wrong value: a usage error
/// (exit 2) or a message naming the problem (exit 1), never a panic, and
/// never a server that starts half-configured.
#[test]
fn bad_options_and_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path.display().to_string()
    };
    let (empty, short, garbage) = (
        file("empty", b""),
        file("short", b"hunter2\n"),
        file("garbage.pem", b"-----BEGIN NONSENSE-----\n\xff\xfe\n"),
    );
    let sock = dir.path().join("s.sock").display().to_string();
    let unix = format!("unix://{sock}");
    let tls = format!("tls://127.0.0.1:0?cert={garbage}&key={garbage}");
    let deep = "[".repeat(100_000);
    let transcode = format!("{unix}?codec=jsonrpc&transcode=maybe");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["call", &unix, "add", "--timeout", "soon"],
            "invalid value",
        ),
        (vec!["serve", &unix, "--allow-uid", "root"], "invalid value"),
        (
            vec!["broker", "--listen", &unix, "--heartbeat", "-5"],
            "unexpected argument",
        ),
        (vec!["broker"], "--listen <URL>"),
        (
            vec!["broker", "--listen", &unix, "--id", "two words"],
            "broker id",
        ),
        (
            vec!["bridge", &unix, &unix, "--channel-password-file", "vault"],
            "CHANNEL=FILE",
        ),
        (
            vec![
                "bridge",
                &unix,
                &unix,
                "--channel-password-file",
                "vault=/nonexistent/pw",
            ],
            "password file",
        ),
        (
            vec![
                "broker",
                "--listen",
                "tcp://127.0.0.1:0?codec=jsonrpc&framing=pigeon",
            ],
            "unknown framing",
        ),
        (vec!["call", &transcode, "add"], "unknown transcode"),
        (
            vec!["broker", "--listen", "tls://127.0.0.1:0"],
            "needs ?cert=",
        ),
        (vec!["broker", "--listen", &tls], "cannot read PEM"),
        (vec!["serve", &unix, "--secret-file", &empty], "0 bytes"),
        (
            vec!["serve", &unix, "--secret-file", &short],
            "head -c 32 /dev/urandom",
        ),
        (
            vec![
                "call",
                &unix,
                "add",
                "--channel",
                "c",
                "--password-file",
                "/nonexistent/pw",
            ],
            "password file",
        ),
        (
            vec![
                "broker",
                "--listen",
                &unix,
                "--pidfile",
                "/proc/nonexistent/busline.pid",
            ],
            "pidfile",
        ),
        (vec!["call", &unix, "add", &deep], "must be valid JSON"),
    ];
    for (args, needle) in cases {
        let out = busline(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let shown: Vec<String> = args.iter().map(|a| a.chars().take(60).collect()).collect();
        assert!(
            matches!(out.status.code(), Some(1 | 2)),
            "{shown:?}: exit {:?}, stderr {stderr}",
            out.status
        );
        assert!(
            stderr.contains(needle),
            "{shown:?}: {stderr:?} lacks {needle:?}"
        );
        assert!(!stderr.contains("panicked"), "{shown:?}: {stderr}");
        assert!(
            stderr.len() < 2048,
            "{shown:?}: a {} byte message",
            stderr.len()
        );
    }
    assert!(
        !dir.path().join("s.sock").exists(),
        "a refused server left its socket"
    );

    // Invalid UTF-8 in an argument is a usage error too.
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let out = Command::new(env!("CARGO_BIN_EXE_busline"))
            .args([
                "call".as_ref(),
                std::ffi::OsStr::from_bytes(b"unix:///tmp/\xff.sock"),
                "add".as_ref(),
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("invalid UTF-8"));
    }
}

#[test]
fn serve_and_call() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "unix://{}?codec=jsonline",
        dir.path().join("s.sock").display()
    );
    let mut server = Command::new(env!("CARGO_BIN_EXE_busline"))
        .args(["serve", &url, "--threads", "3"])
        .stderr(Stdio::null())
        .spawn()
        .expect("server starts");
    let out = busline(&["call", &url, "add", "[2, 40]", "--retry", "10000"]);
    let streamed = busline(&["call", &url, "count", "3", "--stream"]);
    let missing = busline(&["call", &url, "nope"]);
    server.kill().unwrap();
    server.wait().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
    assert_eq!(String::from_utf8_lossy(&streamed.stdout), "0\n1\n2\n");
    assert!(String::from_utf8_lossy(&missing.stderr).contains("method not found"));
}

/// `?codec=plain-jsonline&method=echo`: each bare JSON line is an `echo`
/// call, answered as one bare line, as codechu-ipc's clients expect.
#[test]
fn serve_plain_json_lines() {
    use std::io::{BufRead, BufReader, Write};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.sock");
    let url = format!("unix://{}?codec=plain-jsonline&method=echo", path.display());
    let mut server = Command::new(env!("CARGO_BIN_EXE_busline"))
        .args(["serve", &url])
        .stderr(Stdio::null())
        .spawn()
        .expect("server starts");
    eventually("the server listens", || path.exists());
    let mut stream = std::os::unix::net::UnixStream::connect(&path).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    stream.write_all(b"{\"cmd\": \"status\"}\n").unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    server.kill().unwrap();
    server.wait().unwrap();
    assert_eq!(line, "{\"cmd\":\"status\"}\n");
}

fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("probe port");
    probe.local_addr().expect("probe address").port()
}

#[test]
fn serve_and_call_with_codec_flag() {
    let port = free_port();
    let url = format!("tcp://127.0.0.1:{port}");
    let mut server = Command::new(env!("CARGO_BIN_EXE_busline"))
        .args(["serve", &url, "--codec", "jsonrpc"])
        .stderr(Stdio::null())
        .spawn()
        .expect("server starts");
    let out = busline(&[
        "call",
        &url,
        "--codec",
        "jsonrpc",
        "add",
        "[2, 40]",
        "--retry",
        "10000",
        "--timeout",
        "10000",
    ]);
    // --codec wins over the URL's ?codec=.
    let cbor_url = format!("{url}?codec=cbor");
    let overridden = busline(&[
        "call",
        &cbor_url,
        "--codec",
        "jsonrpc",
        "add",
        "[1, 1]",
        "--timeout",
        "10000",
    ]);
    // The server really speaks JSON-RPC: a plain client gets a plain answer.
    let plain = plain_jsonrpc_call(
        port,
        r#"{"jsonrpc":"2.0","method":"add","params":[2,3],"id":1}"#,
    );
    server.kill().unwrap();
    server.wait().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
    assert!(overridden.status.success(), "{overridden:?}");
    assert_eq!(String::from_utf8_lossy(&overridden.stdout).trim(), "2");
    assert_eq!(
        plain.expect("plain JSON-RPC call").trim_end(),
        r#"{"jsonrpc":"2.0","result":5,"id":1}"#
    );
}

/// One request line to a JSON-RPC server on `port`, and its response line.
fn plain_jsonrpc_call(port: u16, request: &str) -> std::io::Result<String> {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    stream.write_all(format!("{request}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line)
}

#[test]
fn unknown_codec_flag_names_the_codecs() {
    for args in [
        &["call", "tcp://127.0.0.1:1", "add", "--codec", "morse"][..],
        &["serve", "tcp://127.0.0.1:0", "--codec", "morse"],
    ] {
        fails_with(args, "unknown codec \"morse\"");
        fails_with(args, "jsonline, jsonrpc, cbor");
    }
}

#[test]
fn broker_and_call_through_a_channel() {
    let dir = tempfile::tempdir().unwrap();
    let unix = format!("unix://{}", dir.path().join("b.sock").display());
    let tcp = format!("tcp://127.0.0.1:{}?codec=jsonrpc", free_port());
    let mut broker = Command::new(env!("CARGO_BIN_EXE_busline"))
        // Polling connections (--spin) serve as sleeping ones do, and so
        // does a broker on one thread.
        .args([
            "broker",
            "--listen",
            &unix,
            "--listen",
            &tcp,
            "--spin",
            "--threads",
            "1",
        ])
        .stderr(Stdio::null())
        .spawn()
        .expect("broker starts");
    let guard = KillOnDrop(&mut broker);

    // A provider in this process, on the Unix listener.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _provider = runtime.block_on(async {
        let bus = busline::broker::BrokerClient::connect(
            busline::rpc::Client::builder(busline::CborCodec::new())
                .retry_connect(std::time::Duration::from_secs(10)),
            &busline::any_transport(),
            &unix.parse().unwrap(),
        )
        .await
        .expect("provider connects");
        provide_add(&bus.open("math").await.unwrap()).await;
        bus
    });

    // A caller on the TCP listener, speaking JSON-RPC.
    let out = busline(&[
        "call",
        &tcp,
        "add",
        "[2, 40]",
        "--channel",
        "math",
        "--retry",
        "10000",
    ]);
    let unknown = busline(&["call", &tcp, "mul", "[2, 40]", "--channel", "math"]);
    let bad = busline(&["call", &tcp, "add", "[1, 1]", "--channel", "a/b"]);

    // pub, sub and status.
    let mut sub = Command::new(env!("CARGO_BIN_EXE_busline"))
        .args(["sub", &unix, "news", "sensors.>", "--count", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("sub starts");
    let subscribed = (0..200).any(|_| {
        let status = busline(&["status", &unix]);
        let text = String::from_utf8_lossy(&status.stdout).into_owned();
        text.contains("sensors.>") || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            false
        }
    });
    assert!(
        subscribed,
        "the subscription never showed in busline status"
    );
    let status = String::from_utf8_lossy(&busline(&["status", &unix]).stdout).into_owned();
    assert!(
        status.contains("\"math\"") && status.contains("\"add\""),
        "{status}"
    );
    for n in [1, 2] {
        let out = busline(&[
            "pub",
            &tcp,
            "news",
            "sensors.temp",
            &format!("{{\"n\":{n}}}"),
        ]);
        assert!(out.status.success(), "{out:?}");
    }
    // Read what `sub` prints, but never wait for it forever.
    let mut stdout = sub.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut text);
        let _ = tx.send(text);
    });
    let printed = rx.recv_timeout(std::time::Duration::from_secs(30));
    let _ = sub.kill();
    let _ = sub.wait();
    assert_eq!(
        printed.expect("sub exits after two messages"),
        "{\"topic\":\"sensors.temp\",\"message\":{\"n\":1}}\n{\"topic\":\"sensors.temp\",\"message\":{\"n\":2}}\n"
    );
    fails_with(&["pub", &unix, "news", "bad..topic", "1"], "empty token");
    drop(guard);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("no provider"),
        "{unknown:?}"
    );
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("channel name"),
        "{bad:?}"
    );
    fails_with(&["broker"], "--listen");
}

/// Kills the child process when the test ends, passed or not.
struct KillOnDrop<'a>(&'a mut std::process::Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Wait up to 10 s for `ready`.
fn eventually(what: &str, ready: impl Fn() -> bool) {
    for _ in 0..400 {
        if ready() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    panic!("{what} did not happen within 10 s");
}

#[test]
fn one_broker_per_pidfile_and_a_killed_ones_files_are_reclaimed() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("b.sock");
    let pidfile = dir.path().join("run/busline.pid");
    let listen = format!("unix://{}", socket.display());
    let start = || {
        Command::new(env!("CARGO_BIN_EXE_busline"))
            .args(["broker", "--listen", &listen, "--pidfile"])
            .arg(&pidfile)
            .stderr(Stdio::piped())
            .spawn()
            .expect("broker starts")
    };
    let holds = |pid: u32| {
        std::fs::read_to_string(&pidfile).is_ok_and(|t| t.trim() == pid.to_string())
            && std::os::unix::net::UnixStream::connect(&socket).is_ok()
    };

    let mut first = start();
    let first_pid = first.id();
    let guard = KillOnDrop(&mut first);
    eventually("the first broker's start", || holds(first_pid));

    // A second one on the same pidfile stops at once, naming the first.
    let second = start().wait_with_output().unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains(&format!("already running (pid {first_pid})")),
        "{stderr}"
    );
    assert!(holds(first_pid), "the first one is untouched");

    // Killed, it leaves its pidfile and socket; the next start takes both.
    drop(guard);
    assert!(pidfile.exists() && socket.exists());
    let mut third = start();
    let third_pid = third.id();
    let guard = KillOnDrop(&mut third);
    eventually("the restart", || holds(third_pid));

    // SIGTERM: a clean stop removes both.
    let term = Command::new("kill")
        .args(["-TERM", &third_pid.to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    eventually("the clean stop", || !pidfile.exists() && !socket.exists());
    drop(guard);
}

#[test]
fn serve_call_and_broker_over_fifos() {
    let dir = tempfile::tempdir().unwrap();
    serve_call_and_broker_over(
        format!("fifo://{}", dir.path().join("serve").display()),
        format!("fifo://{}", dir.path().join("bus").display()),
    );
}

#[test]
fn serve_call_and_broker_over_shared_memory() {
    let dir = tempfile::tempdir().unwrap();
    let at = format!("?dir={}", dir.path().display());
    serve_call_and_broker_over(format!("shm://serve{at}"), format!("shm://bus{at}"));
}

/// `busline serve` and `call` on `url`, then a broker on `bus` with a
/// provider and a caller.
fn serve_call_and_broker_over(url: String, bus: String) {
    let mut server = Command::new(env!("CARGO_BIN_EXE_busline"))
        .args(["serve", &url])
        .stderr(Stdio::null())
        .spawn()
        .expect("server starts");
    let guard = KillOnDrop(&mut server);
    let out = busline(&["call", &url, "add", "[2, 40]", "--retry", "10000"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
    drop(guard);

    let mut broker = Command::new(env!("CARGO_BIN_EXE_busline"))
        .args(["broker", "--listen", &bus])
        .stderr(Stdio::null())
        .spawn()
        .expect("broker starts");
    let _guard = KillOnDrop(&mut broker);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let sum = runtime.block_on(async {
        let (transport, addr) = (busline::any_transport(), bus.parse().unwrap());
        let connect = || {
            busline::broker::BrokerClient::connect(
                busline::rpc::Client::builder(busline::CborCodec::new())
                    .retry_connect(std::time::Duration::from_secs(10)),
                &transport,
                &addr,
            )
        };
        let provider = connect().await.expect("provider connects");
        provide_add(&provider.open("math").await.unwrap()).await;
        let caller = connect().await.expect("caller connects");
        caller
            .open("math")
            .await
            .unwrap()
            .call::<_, i64>("add", &(2, 40))
            .await
            .unwrap()
    });
    assert_eq!(sum, 42);
}

/// POST a call to a gateway at `port`, retrying while it starts; its
/// status and body.
async fn http_call(port: u16, path: &str, body: &str, bearer: &str) -> (u16, String) {
    let http = reqwest::Client::new();
    for _ in 0..400 {
        let sent = http
            .post(format!("http://127.0.0.1:{port}/v1/channels/{path}"))
            .header("Authorization", format!("Bearer {bearer}"))
            .header("Content-Type", "application/json")
            .body(body.to_owned())
            .send()
            .await;
        if let Ok(response) = sent {
            return (
                response.status().as_u16(),
                response.text().await.unwrap_or_default(),
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("nothing served HTTP on port {port} within 10 s");
}

#[test]
fn the_gateway_serves_http_beside_a_broker_and_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "a secret for the gateway test";
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    let secret_arg = secret_file.to_str().unwrap();
    let unix = format!("unix://{}", dir.path().join("b.sock").display());
    let (beside, alone) = (free_port(), free_port());
    let mut broker = Command::new(env!("CARGO_BIN_EXE_busline"))
        .args(["broker", "--listen", &unix, "--secret-file", secret_arg])
        .args(["--http", &format!("127.0.0.1:{beside}")])
        .stderr(Stdio::null())
        .spawn()
        .expect("broker starts");
    let _broker = KillOnDrop(&mut broker);
    let mut gateway = Command::new(env!("CARGO_BIN_EXE_busline"))
        .args(["gateway", "--broker", &unix, "--secret-file", secret_arg])
        .args(["--http", &format!("127.0.0.1:{alone}"), "--retry", "10000"])
        .stderr(Stdio::null())
        .spawn()
        .expect("gateway starts");
    let _gateway = KillOnDrop(&mut gateway);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let bus = busline::broker::BrokerClient::connect(
            busline::rpc::Client::builder(busline::CborCodec::new())
                .auth(busline::SharedSecret::from_file(&secret_file).unwrap())
                .retry_connect(std::time::Duration::from_secs(10)),
            &busline::any_transport(),
            &unix.parse().unwrap(),
        )
        .await
        .expect("provider connects");
        provide_add(&bus.open("math").await.unwrap()).await;
        for port in [beside, alone] {
            assert_eq!(
                http_call(port, "math/call/add", "[2, 40]", secret).await,
                (200, "42".to_owned()),
                "port {port}"
            );
            let (status, body) = http_call(port, "math/call/add", "[2, 40]", "wrong").await;
            assert_eq!(status, 403, "{body}");
            let (status, body) = http_call(port, "math/call/mul", "[2, 40]", secret).await;
            assert_eq!(status, 404, "{body}");
        }
    });

    // An address taken, a broker that is not there: clear errors.
    fails_with(
        &[
            "gateway",
            "--broker",
            &unix,
            "--secret-file",
            secret_arg,
            "--http",
            &format!("127.0.0.1:{beside}"),
        ],
        "cannot serve HTTP on",
    );
    let nowhere = format!("unix://{}", dir.path().join("none.sock").display());
    fails_with(
        &["gateway", "--broker", &nowhere, "--http", "127.0.0.1:0"],
        "none.sock",
    );
    fails_with(
        &["gateway", "--broker", &unix, "--http", "localhost"],
        "invalid socket address",
    );
    // HTTP has no peer credentials: a broker that checks them needs the
    // secret for its gateway too.
    let other = format!("unix://{}", dir.path().join("other.sock").display());
    fails_with(
        &[
            "broker",
            "--listen",
            &other,
            "--allow-uid",
            "0",
            "--http",
            "127.0.0.1:0",
        ],
        "--secret-file",
    );
}
