//! The server's side: the rendezvous directory, its lock and its `accept`
//! FIFO.

use std::{
    fs::File,
    io,
    os::fd::OwnedFd,
    os::unix::fs::{DirBuilderExt, MetadataExt},
    path::{Path, PathBuf},
};

use async_trait::async_trait;
use busline_core::{Address, Listener, PeerCredentials, PeerInfo, Result};
use rustix::fs::{flock, fstat, FileType, FlockOperation, Mode, OFlags, Stat};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, BufReader},
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
    /// The `accept` FIFO this listener made, to remove only that one.
    accept_inode: (u64, u64),
    /// Locked while this listener lives: the one server of the directory.
    lock: File,
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
        let lock = lock_exclusive(&dir.join(LOCK), &addr)?;
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
        let accept_inode = inode(&std::fs::metadata(&accept)?);
        Ok(FifoListener {
            dir: dir.to_path_buf(),
            addr,
            announcements: BufReader::new(announcements),
            accept_inode,
            lock,
            made_dir,
        })
    }

    /// Open our ends of client `id`'s FIFOs and tell it it is in.
    fn take(&self, id: &str) -> io::Result<(FifoStream, PeerInfo)> {
        let (up, down) = pair(&self.dir, id);
        let opened = (|| {
            // The client holds the reading end of `down` already.
            let (down_fd, down_stat) = open_fifo(&down, OFlags::WRONLY)?;
            let (up_fd, up_stat) = open_fifo(&up, OFlags::RDONLY)?;
            if down_stat.st_uid != up_stat.st_uid {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "the two FIFOs of a connection belong to different users",
                ));
            }
            // One byte into an empty pipe, straight away (the fd does not
            // block); a client that filled its own pipe first is dropped
            // rather than waited for.
            if rustix::io::write(&down_fd, &[ACCEPTED])? != 1 {
                return Err(io::Error::from(io::ErrorKind::WriteZero));
            }
            let tx = pipe::Sender::from_owned_fd(down_fd)?;
            let rx = pipe::Receiver::from_owned_fd(up_fd)?;
            Ok::<_, io::Error>((rx, tx, up_stat))
        })();
        // Open ends outlive their names: nothing stays on disk.
        let _ = std::fs::remove_file(&up);
        let _ = std::fs::remove_file(&down);
        let (rx, tx, owner) = opened?;
        let peer = PeerInfo {
            description: format!("{}#{id}", self.addr),
            credentials: Some(PeerCredentials {
                uid: owner.st_uid,
                gid: owner.st_gid,
                pid: None,
            }),
        };
        Ok((FifoStream::new(rx, tx), peer))
    }
}

/// Open a client's FIFO without following a symlink, and check that it is
/// one: a neighbour with write access to the directory cannot point the
/// server at another file, or lend it another owner.
fn open_fifo(path: &Path, access: OFlags) -> io::Result<(OwnedFd, Stat)> {
    let fd = rustix::fs::open(
        path,
        access | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let stat = fstat(&fd)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::Fifo || stat.st_nlink != 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a private FIFO", path.display()),
        ));
    }
    Ok((fd, stat))
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
            match self.take(id) {
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
        // Only what is still ours: a successor's files stay.
        let accept = self.dir.join(ACCEPT);
        if std::fs::metadata(&accept).is_ok_and(|m| inode(&m) == self.accept_inode) {
            let _ = std::fs::remove_file(accept);
        }
        // Removed while still locked; a server that opened the name before
        // finds, once it has the lock, that the name is gone, and retries.
        let lock = self.dir.join(LOCK);
        if self.lock.metadata().is_ok_and(|held| {
            std::fs::metadata(&lock).is_ok_and(|named| inode(&named) == inode(&held))
        }) {
            let _ = std::fs::remove_file(lock);
        }
        if self.made_dir {
            // Only if empty: a directory someone else filled stays.
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}

fn inode(meta: &std::fs::Metadata) -> (u64, u64) {
    (meta.dev(), meta.ino())
}

/// Lock the file at `path`, which must still be at that name once locked
/// (a server stopping removes it while it holds the lock).
fn lock_exclusive(path: &Path, addr: &Address) -> io::Result<File> {
    for _ in 0..10 {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("a server is already listening at {addr}"),
                ))
            }
            Err(err) => return Err(err.into()),
        }
        let named = std::fs::metadata(path).map(|m| inode(&m)).ok();
        if named == Some(inode(&file.metadata()?)) {
            return Ok(file);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        format!("the lock of {addr} keeps changing hands"),
    ))
}
