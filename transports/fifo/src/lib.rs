//! Named-pipe (FIFO) transport for [busline](https://docs.rs/busline):
//! addresses `fifo:///run/app/dir`.
//!
//! A FIFO carries bytes one way, and only between processes that open it
//! by name, so a connection is a *pair* of FIFOs met through a rendezvous
//! directory:
//!
//! 1. The server owns the directory (created `0700` if missing), a lock
//!    file that makes it the only server there, and the `accept` FIFO
//!    (`0600`, or [`FifoTransport::mode`]).
//! 2. A client makes two private FIFOs, `<id>.up` and `<id>.down`, opens
//!    its ends, and writes `<id>` as one line (an atomic pipe write) into
//!    `accept`. No server reading `accept` means an immediate error, not a
//!    hang.
//! 3. The server opens its ends, removes both files (the open ends live
//!    on; nothing is left on disk, even if a process dies later), and sends
//!    one byte that tells the client it is in.
//!
//! Closing either end is seen by the other as end-of-file, as on a socket.
//! The peer's uid and gid come from the owner of its FIFOs.
//!
//! For one-way events that need no connection, [`FifoChannel`] sends
//! codec-framed messages through a single named FIFO.
//!
//! ```
//! use busline_core::{Address, Listener, Transport};
//! use busline_fifo::FifoTransport;
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let addr = Address::fifo(dir.path().join("app"));
//! let transport = FifoTransport::new();
//!
//! let mut listener = transport.bind(&addr).await?;
//! let (client, accepted) = tokio::join!(transport.connect(&addr), listener.accept());
//! let (mut client, (mut server, peer)) = (client?, accepted?);
//! client.write_all(b"ping").await?;
//! let mut buf = [0; 4];
//! server.read_exact(&mut buf).await?;
//! assert_eq!(&buf, b"ping");
//! assert!(peer.credentials.is_some()); // the owner of the client's FIFOs
//! # Ok(())
//! # }
//! ```
// Linux (and Android): the read-write FIFO opens, /proc/self/fd and the
// 4096-byte PIPE_BUF this relies on are theirs.
#![cfg(any(target_os = "linux", target_os = "android"))]
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod channel;
mod listener;
mod stream;

use std::{
    io,
    path::{Path, PathBuf},
    time::Duration,
};

use async_trait::async_trait;
use busline_core::{expect_scheme, Address, Endpoint, Error, Result, Transport};
use rustix::fs::{mkfifoat, Mode, CWD};
use std::os::fd::AsRawFd;

use tokio::{io::AsyncReadExt, net::unix::pipe};

pub use channel::{FifoChannel, FifoReceiver, MAX_MESSAGE};
pub use listener::FifoListener;
pub use stream::FifoStream;

/// The FIFO every client announces itself through.
const ACCEPT: &str = "accept";
/// Held locked by the one server of a directory.
const LOCK: &str = "server.lock";
/// The byte that tells a client the server has taken its connection.
const ACCEPTED: u8 = 0x06;
/// How long a client waits for a server that reads its announcement.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects and listens over pairs of FIFOs in a rendezvous directory.
#[derive(Debug, Clone, Copy)]
pub struct FifoTransport {
    mode: u32,
}

impl Default for FifoTransport {
    fn default() -> Self {
        Self::new()
    }
}

impl FifoTransport {
    /// A transport whose servers' `accept` FIFO has mode `0600`: only
    /// processes of the same user (and root) may connect.
    pub fn new() -> Self {
        FifoTransport { mode: 0o600 }
    }

    /// The permission bits of the `accept` FIFO a server makes, e.g.
    /// `0o660` to let the group connect. The rendezvous directory must let
    /// them in too (it is created `0700` only when missing).
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode & 0o777;
        self
    }
}

fn dir_of(addr: &Address) -> Result<&Path> {
    expect_scheme(addr, "fifo")?;
    match addr.endpoint() {
        Endpoint::Fifo(dir) => Ok(dir),
        _ => Err(Error::Address {
            url: addr.to_string(),
            reason: "not a fifo:// address".into(),
        }),
    }
}

/// A fresh connection id: hex, so it is always a plain file name.
fn fresh_id() -> String {
    let high = u64::from(getrandom::u32().unwrap_or(0));
    let low = u64::from(getrandom::u32().unwrap_or(0));
    format!("{:016x}", (high << 32) | low)
}

/// Whether `id` is one [`fresh_id`] could have made.
fn valid_id(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

fn pair(dir: &Path, id: &str) -> (PathBuf, PathBuf) {
    (dir.join(format!("{id}.up")), dir.join(format!("{id}.down")))
}

fn mkfifo(path: &Path, mode: u32) -> io::Result<()> {
    mkfifoat(CWD, path, Mode::from_raw_mode(mode)).map_err(io::Error::from)?;
    // The umask may have taken bits away; set exactly what was asked.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
}

#[async_trait]
impl Transport for FifoTransport {
    type Io = FifoStream;
    type Listener = FifoListener;

    fn scheme(&self) -> &'static str {
        "fifo"
    }

    async fn connect(&self, addr: &Address) -> Result<FifoStream> {
        let dir = dir_of(addr)?;
        let id = fresh_id();
        // Removed however this ends, a cancelled connect included; the
        // server removes them as soon as it has them open.
        let files = PairFiles(pair(dir, &id));
        let (up, down) = &files.0;
        let result = tokio::time::timeout(ACCEPT_TIMEOUT, handshake(dir, &id, up, down))
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the server at {addr} did not take the connection within {ACCEPT_TIMEOUT:?}"),
                ))
            });
        drop(files);
        result.map_err(|err| {
            let gone = matches!(
                err.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) || err.raw_os_error() == Some(rustix::io::Errno::NXIO.raw_os_error());
            if gone {
                Error::Transport(
                    io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        format!("no server is listening at {addr}"),
                    )
                    .into(),
                )
            } else {
                Error::from(err)
            }
        })
    }

    async fn bind(&self, addr: &Address) -> Result<FifoListener> {
        let dir = dir_of(addr)?;
        FifoListener::bind(dir, addr.clone(), self.mode).map_err(Error::from)
    }
}

/// A client's two FIFO files, removed when dropped.
struct PairFiles((PathBuf, PathBuf));

impl Drop for PairFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0 .0);
        let _ = std::fs::remove_file(&self.0 .1);
    }
}

/// The client's side of the rendezvous.
async fn handshake(dir: &Path, id: &str, up: &Path, down: &Path) -> io::Result<FifoStream> {
    mkfifo(up, 0o600)?;
    mkfifo(down, 0o600)?;
    // Our reading end first, so the server can open its writing end.
    let mut rx = pipe::OpenOptions::new().open_receiver(down)?;
    // Our writing end is opened read-write for now, so it needs no reader
    // yet; the server's reading end then never sees end-of-file before we
    // close.
    let early = pipe::OpenOptions::new().read_write(true).open_sender(up)?;
    // Fails at once (ENXIO) if no server reads `accept`, or NotFound if
    // there is none at all.
    let announce = pipe::OpenOptions::new().open_sender(dir.join(ACCEPT))?;
    let line = format!("{id}\n");
    loop {
        announce.writable().await?;
        // Shorter than PIPE_BUF: written whole or not at all.
        match announce.try_write(line.as_bytes()) {
            Ok(_) => break,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            Err(err) => return Err(err),
        }
    }
    drop(announce);
    let mut ack = [0u8; 1];
    match rx.read(&mut ack).await? {
        1 if ack[0] == ACCEPTED => {}
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "the server closed the connection while accepting it",
            ))
        }
    }
    // The server's reading end is open now: reopen ours write-only, so that
    // writing after the server has gone fails (BrokenPipe) instead of
    // filling a pipe nobody reads. The file is gone; its fd still names it.
    let tx =
        pipe::OpenOptions::new().open_sender(format!("/proc/self/fd/{}", early.as_raw_fd()))?;
    drop(early);
    Ok(FifoStream::new(rx, tx))
}
