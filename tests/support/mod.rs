//! What several behaviour tests share: the `busline broker` program as a
//! child process, what Linux tells about a process's resources, a CBOR
//! client of an in-memory broker, and the provider most tests put on a
//! channel.

// Each test crate uses only some of these.
#![allow(dead_code)]

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

/// A CBOR client of the broker at memory address `addr`.
pub async fn memory_client(addr: &busline::Address) -> busline::broker::BrokerClient {
    busline::broker::BrokerClient::connect(
        busline::rpc::Client::builder(busline::CborCodec::new()),
        &busline::MemoryTransport::new(),
        addr,
    )
    .await
    .expect("the broker accepts a client")
}

/// The `busline broker` program on `socket`, killed (SIGKILL) on drop.
pub struct BrokerProcess(Child);

impl BrokerProcess {
    /// Start it listening on `socket` and wait until it accepts.
    pub async fn start(socket: &Path) -> BrokerProcess {
        let child = Command::new(env!("CARGO_BIN_EXE_busline"))
            .args([
                "broker",
                "--listen",
                &format!("unix://{}", socket.display()),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the busline program starts");
        // Killed and waited for by its drop if it never listens.
        let process = BrokerProcess(child);
        for _ in 0..200 {
            if tokio::net::UnixStream::connect(socket).await.is_ok() {
                return process;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the broker did not start listening");
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Kill it with SIGKILL and reap it.
    pub fn kill(mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Resident memory of process `pid`, in KiB (Linux).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc is mounted");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// File descriptors process `pid` has open (Linux).
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc is mounted")
        .count()
}

/// Serve `add(a, b) = a + b` on `channel`.
pub async fn provide_add(channel: &busline::broker::Channel) {
    channel
        .provide(
            "add",
            |(a, b): (i64, i64)| async move { Ok::<_, String>(a + b) },
        )
        .await
        .unwrap();
}
