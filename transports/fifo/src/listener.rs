//! The server's side: the rendezvous directory, its lock and its `accept`
//! FIFO.

use std::{
    fs::File,
    io,
    os::unix::fs::{DirBuilderExt, MetadataExt},
    path::{Path, PathBuf},
};

use async_trait::async_trait;
use busline_core::{Address, Listener, PeerCredentials, PeerInfo, Result};
use rustix::fs::{flock, FlockOperation};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::unix::pipe,
};

use crate::{mkfifo, pair, valid_id, FifoStream, ACCEPT, ACCEPTED, LOCK};

/// The longest announcement read: an id and its newline, with room.
const MAX_ANNOUNCEMENT: usize = 64;

/// Takes the connections clients announce in a rendezvous directory.
/// Dropping it removes what it made there.
#[derive(Debug)]
pub struct FifoListener {
    dir: PathBuf,
    addr: Address,
    announcements: BufReader<pipe::Receiver>,
    /// Locked while this listener lives: the one server of the directory.
    _lock: File,
    /// Whether `bind` made the directory (and so removes it).
    made_dir: bool,
}

impl FifoListener {
    pub(crate) fn bind(dir: &Path, addr: Address, mode: u32) -> io::Result<FifoListener> {
        let made_dir = !dir.exists();
        if made_dir {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK))?;
        if flock(&lock, FlockOperation::NonBlockingLockExclusive).is_err() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("a server is already listening at {addr}"),
            ));
        }
        // Whatever a crashed server or client left behind is ours to clear.
        for entry in std::fs::read_dir(dir)?.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let leftover = name == ACCEPT
                || name
                    .strip_suffix(".up")
                    .or_else(|| name.strip_suffix(".down"))
                    .is_some_and(valid_id);
            if leftover {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let accept = dir.join(ACCEPT);
        mkfifo(&accept, mode)?;
        // Read-write: the queue of announcements stays open while no
        // client is writing to it.
        let announcements = pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&accept)?;
        Ok(FifoListener {
            dir: dir.to_path_buf(),
            addr,
            announcements: BufReader::new(announcements),
            _lock: lock,
            made_dir,
        })
    }

    /// Open our ends of client `id`'s FIFOs and tell it it is in.
    async fn take(&self, id: &str) -> io::Result<(FifoStream, PeerInfo)> {
        let (up, down) = pair(&self.dir, id);
        let opened = async {
            // The client holds the reading end of `down` already.
            let mut tx = pipe::OpenOptions::new().open_sender(&down)?;
            let rx = pipe::OpenOptions::new().open_receiver(&up)?;
            let owner = std::fs::metadata(&up)?;
            tx.write_all(&[ACCEPTED]).await?;
            Ok::<_, io::Error>((rx, tx, owner))
        }
        .await;
        // Open ends outlive their names: nothing stays on disk.
        let _ = std::fs::remove_file(&up);
        let _ = std::fs::remove_file(&down);
        let (rx, tx, owner) = opened?;
        let peer = PeerInfo {
            description: format!("{}#{id}", self.addr),
            credentials: Some(PeerCredentials {
                uid: owner.uid(),
                gid: owner.gid(),
                pid: None,
            }),
        };
        Ok((FifoStream::new(rx, tx), peer))
    }
}

#[async_trait]
impl Listener for FifoListener {
    type Io = FifoStream;

    async fn accept(&mut self) -> Result<(FifoStream, PeerInfo)> {
        let mut line = Vec::with_capacity(MAX_ANNOUNCEMENT);
        loop {
            line.clear();
            // Bounded: whoever writes a longer line is skipped, a piece at
            // a time, not buffered.
            (&mut self.announcements)
                .take(MAX_ANNOUNCEMENT as u64)
                .read_until(b'\n', &mut line)
                .await?;
            let id = match line.strip_suffix(b"\n").map(std::str::from_utf8) {
                Some(Ok(id)) if valid_id(id) => id.to_owned(),
                _ => {
                    tracing::debug!(bytes = line.len(), "ignoring a malformed announcement");
                    continue;
                }
            };
            let id = id.as_str();
            match self.take(id).await {
                Ok(accepted) => return Ok(accepted),
                // It gave up before we got to it: on to the next.
                Err(err) => tracing::debug!(id, error = %err, "an announced client was gone"),
            }
        }
    }

    fn local_addr(&self) -> Address {
        self.addr.clone()
    }
}

impl Drop for FifoListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.dir.join(ACCEPT));
        let _ = std::fs::remove_file(self.dir.join(LOCK));
        if self.made_dir {
            // Only if empty: a directory someone else filled stays.
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}
