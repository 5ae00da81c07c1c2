//! The `busline` program as a user runs it: bad input gets a clear message
//! and exit code 1, and `serve` + `call` work together.

use std::process::{Command, Output, Stdio};

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
        "not valid JSON",
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
}

#[test]
fn serve_and_call() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "unix://{}?codec=jsonline",
        dir.path().join("s.sock").display()
    );
    let mut server = Command::new(env!("CARGO_BIN_EXE_busline"))
        .args(["serve", &url])
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
