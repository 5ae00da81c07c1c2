//! The `shm` transport: addresses, options, connecting and binding.

use std::{
    io,
    os::unix::fs::{DirBuilderExt, MetadataExt},
    path::PathBuf,
    time::Duration,
};

use async_trait::async_trait;
use busline_core::{expect_scheme, Address, Endpoint, Error, Result, Transport};
use busline_unix::UnixTransport;

use busline_core::Spin;

use crate::{ShmListener, ShmStream};

/// The `shm` transport. See the [crate docs](crate).
#[derive(Debug, Clone)]
pub struct ShmTransport {
    ring: usize,
    spin: Spin,
    handshake_timeout: Duration,
}

impl Default for ShmTransport {
    fn default() -> Self {
        Self::new()
    }
}

impl ShmTransport {
    /// Bytes in each ring unless the address says `?ring=`.
    pub const DEFAULT_RING: usize = 256 * 1024;
    /// How long a side with nothing to do spins before it sleeps, at least.
    pub const DEFAULT_SPIN: Duration = Spin::ADAPTIVE.least();
    /// How far the spin stretches for a peer that keeps answering just
    /// after it.
    pub const DEFAULT_SPIN_LIMIT: Duration = Spin::ADAPTIVE.most();

    /// A transport with the default ring size and spin.
    pub fn new() -> Self {
        ShmTransport {
            ring: Self::DEFAULT_RING,
            spin: Spin::ADAPTIVE,
            handshake_timeout: Duration::from_secs(5),
        }
    }

    /// Bytes in each ring of the connections this transport opens: a
    /// power of two from 4 KiB to 64 MiB (rounded up to one). Larger rings
    /// let a writer run further ahead of its reader.
    pub fn ring_size(mut self, bytes: usize) -> Self {
        self.ring = bytes
            .clamp(crate::rendezvous::MIN_RING, crate::rendezvous::MAX_RING)
            .next_power_of_two();
        self
    }

    /// How long a reader or writer with nothing to do spins, at least,
    /// before it sleeps. Spinning is what keeps system calls off a busy
    /// connection (the peer answers within the spin, so nobody sleeps);
    /// zero spin and zero [limit](Self::spin_limit) make every wait a
    /// sleep, and cost a wake-up of some microseconds each.
    pub fn spin(mut self, spin: Duration) -> Self {
        self.spin = Spin::new(spin, self.spin.most().max(spin));
        self
    }

    /// How far the spin may stretch. A side whose waits keep ending soon
    /// after it fell asleep (the peer answers, only later than the spin:
    /// large frames, slower handlers) spins for twice its last wait next
    /// time, up to this limit; a wait longer than the limit means the peer
    /// is idle, and the spin goes back to [`spin`](Self::spin). So a
    /// connection at work stops paying wake-ups, and an idle one costs no
    /// CPU once the limit has passed. A limit at or below the spin turns
    /// the stretching off.
    pub fn spin_limit(mut self, limit: Duration) -> Self {
        self.spin = Spin::new(self.spin.least(), limit.max(self.spin.least()));
        self
    }

    fn ring_for(&self, addr: &Address) -> Result<usize> {
        let Some(text) = addr.param("ring") else {
            return Ok(self.ring);
        };
        text.parse::<usize>()
            .ok()
            .filter(|n| {
                n.is_power_of_two()
                    && (crate::rendezvous::MIN_RING..=crate::rendezvous::MAX_RING).contains(n)
            })
            .ok_or_else(|| Error::Address {
                url: addr.to_string(),
                reason: format!(
                    "ring={text} is not a power of two from {} to {} bytes",
                    crate::rendezvous::MIN_RING,
                    crate::rendezvous::MAX_RING
                ),
            })
    }
}

/// The rendezvous socket of `addr`, its directory made if it is the
/// default one.
fn socket_path(addr: &Address) -> Result<PathBuf> {
    expect_scheme(addr, "shm")?;
    let Endpoint::Shm(name) = addr.endpoint() else {
        unreachable!("scheme checked above")
    };
    let bad = |reason: String| Error::Address {
        url: addr.to_string(),
        reason,
    };
    if name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(bad(format!(
            "name {name:?} must be at most 64 letters, digits, '.', '_' or '-'"
        )));
    }
    let dir = match addr.param("dir") {
        Some(dir) => PathBuf::from(dir),
        None => default_dir().map_err(|e| bad(e.to_string()))?,
    };
    Ok(dir.join(format!("{name}.shm")))
}

/// `$XDG_RUNTIME_DIR/busline`, else `/tmp/busline-<uid>`: made `0700`,
/// refused if someone else owns it or others may enter it (they could
/// swap the socket for their own).
fn default_dir() -> io::Result<PathBuf> {
    let uid = rustix::process::geteuid().as_raw();
    let dir = match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(runtime) if !runtime.is_empty() => PathBuf::from(runtime).join("busline"),
        _ => std::env::temp_dir().join(format!("busline-{uid}")),
    };
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(&dir)?;
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} must be a directory of user {uid} closed to others (mode 0700); \
                 remove it or choose another with ?dir=",
                dir.display()
            ),
        ));
    }
    Ok(dir)
}

#[async_trait]
impl Transport for ShmTransport {
    type Io = ShmStream;
    type Listener = ShmListener;

    fn scheme(&self) -> &'static str {
        "shm"
    }

    async fn connect(&self, addr: &Address) -> Result<ShmStream> {
        let ring = self.ring_for(addr)?;
        let socket = UnixTransport::new()
            .connect(&Address::unix(socket_path(addr)?))
            .await?;
        tokio::time::timeout(
            self.handshake_timeout,
            crate::rendezvous::client(socket, ring, self.spin),
        )
        .await
        .map_err(|_| Error::Timeout(self.handshake_timeout))?
        .map_err(Error::transport)
    }

    async fn bind(&self, addr: &Address) -> Result<ShmListener> {
        let unix = UnixTransport::new()
            .bind(&Address::unix(socket_path(addr)?))
            .await?;
        Ok(ShmListener::new(
            unix,
            addr.clone(),
            self.spin,
            self.handshake_timeout,
        ))
    }
}
