//! NATS servers on loopback for the backbone's tests: Debian's
//! `nats-server`, which `.ci/run` installs. Without it the tests skip,
//! unless BUSLINE_REQUIRE_NATS=1 (as in CI) makes that a failure.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

/// A running `nats-server`, killed when dropped.
pub struct NatsServer {
    child: Child,
    /// `nats://127.0.0.1:PORT` for clients.
    pub url: String,
    /// `nats://127.0.0.1:PORT` for other servers of its cluster, if in one.
    pub route: Option<String>,
}

fn program() -> Option<PathBuf> {
    let candidates = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(["/usr/sbin".into(), "/usr/bin".into()]);
    for dir in candidates {
        let exe = dir.join("nats-server");
        if exe.is_file() {
            return Some(exe);
        }
    }
    None
}

/// Whether the tests can run here; `false` means skip (and say why).
pub fn available() -> bool {
    if program().is_some() {
        return true;
    }
    assert!(
        std::env::var("BUSLINE_REQUIRE_NATS").as_deref() != Ok("1"),
        "nats-server is not installed, and BUSLINE_REQUIRE_NATS=1 (apt-get install nats-server)"
    );
    eprintln!("skipped: nats-server is not installed (apt-get install nats-server)");
    false
}

impl NatsServer {
    /// A lone server on a free port.
    pub fn start() -> NatsServer {
        Self::spawn(&["-a", "127.0.0.1", "-p", "-1"], false)
    }

    /// A lone server speaking TLS only, with `cert` and `key` (PEM files),
    /// and requiring client certificates signed by `ca`.
    pub fn with_mutual_tls(cert: &str, key: &str, ca: &str) -> NatsServer {
        Self::spawn(
            &[
                "-a",
                "127.0.0.1",
                "-p",
                "-1",
                "--tlsverify",
                "--tlscert",
                cert,
                "--tlskey",
                key,
                "--tlscacert",
                ca,
            ],
            false,
        )
    }

    /// A lone server that admits only clients giving `token`.
    pub fn with_token(token: &str) -> NatsServer {
        Self::spawn(&["-a", "127.0.0.1", "-p", "-1", "--auth", token], false)
    }

    /// A server of cluster `busline`, named `name`, joining the servers at
    /// `routes`.
    pub fn clustered(name: &str, routes: &[&str]) -> NatsServer {
        let mut args = vec![
            "-a",
            "127.0.0.1",
            "-p",
            "-1",
            "-n",
            name,
            "--cluster_name",
            "busline",
            "--cluster",
            "nats://127.0.0.1:-1",
        ];
        let routes = routes.join(",");
        if !routes.is_empty() {
            args.extend(["--routes", routes.as_str()]);
        }
        Self::spawn(&args, true)
    }

    fn spawn(args: &[&str], clustered: bool) -> NatsServer {
        let mut child = Command::new(program().expect("nats-server"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start nats-server");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        // Read its log for the ports, and then on, so that it never blocks
        // on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (mut url, mut route) = (None, None);
        let port = |line: &str| {
            line.rsplit(':')
                .next()
                .map(|p| format!("nats://127.0.0.1:{p}"))
        };
        while url.is_none() || (clustered && route.is_none()) {
            let line = rx
                .recv_timeout(Duration::from_secs(10))
                .expect("nats-server did not say where it listens");
            if line.contains("Listening for client connections on") {
                url = port(&line);
            } else if line.contains("Listening for route connections on") {
                route = port(&line);
            }
        }
        NatsServer {
            child,
            url: url.expect("client port"),
            route,
        }
    }

    /// Stop it at once, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
