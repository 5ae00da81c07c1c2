//! What a local daemon needs besides its sockets: one instance at a time,
//! and room for many connections.

use std::{
    fs::File,
    io::{self, Read, Seek, Write},
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use rustix::{
    fs::{flock, FlockOperation},
    process::{getrlimit, setrlimit, Resource, Rlimit},
};

/// Raise this process's soft limit on open file descriptors to its hard
/// limit, and return the new soft limit (`None`: unlimited).
///
/// Every connection costs a descriptor, and many systems still start
/// processes with a soft limit of 1024, which a busy broker reaches long
/// before it runs short of memory or CPU. The hard limit is what the
/// administrator allows; going up to it needs no privilege. The `busline`
/// program's `broker` does this at start.
///
/// ```
/// let limit = busline::daemon::raise_fd_limit()?;
/// assert!(limit.map_or(true, |n| n >= 64));
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn raise_fd_limit() -> io::Result<Option<u64>> {
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        )?;
    }
    Ok(getrlimit(Resource::Nofile).current)
}

/// Why a [`Pidfile`] could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum PidfileError {
    /// Another live process holds the pidfile.
    #[error("already running (pid {pid}): {path} is locked by it")]
    AlreadyRunning {
        /// The pid the holder wrote (0 if it wrote none yet).
        pid: u32,
        /// The pidfile.
        path: PathBuf,
    },
    /// The pidfile or its directory could not be made, locked or written.
    #[error("pidfile {path}: {source}")]
    Io {
        /// The pidfile.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
}

/// This process's claim to be the one instance of a daemon: a file holding
/// its pid under an exclusive `flock`.
///
/// The lock, not the file's existence, is what counts: the kernel drops it
/// when the process dies however it dies, so a pidfile left by a killed
/// daemon is simply taken over by the next one, and a live one is never
/// stolen. Dropping the guard removes the file (the `busline` program does
/// on SIGINT and SIGTERM).
///
/// ```
/// use busline::daemon::{Pidfile, PidfileError};
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("run/app.pid");
/// let guard = Pidfile::create(&path)?;
/// assert_eq!(std::fs::read_to_string(&path)?.trim(), std::process::id().to_string());
/// // A second claim, here from the same process, is refused with the pid.
/// assert!(matches!(Pidfile::create(&path), Err(PidfileError::AlreadyRunning { .. })));
/// drop(guard);
/// assert!(!path.exists());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Pidfile {
    path: PathBuf,
    file: File,
}

impl Pidfile {
    /// Take the pidfile at `path`: create its directory (`0755`) if
    /// missing, lock it, write this process's pid. Fails at once with
    /// [`PidfileError::AlreadyRunning`] if a live process holds it, and
    /// with [`PidfileError::Io`] if `path` is a symlink or not a regular
    /// file.
    pub fn create(path: impl AsRef<Path>) -> Result<Pidfile, PidfileError> {
        let path = path.as_ref().to_path_buf();
        let io_error = |source| PidfileError::Io {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(io_error)?;
        }
        let mut file = lock(&path).map_err(|err| match err {
            Held::Busy(mut file) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                PidfileError::AlreadyRunning {
                    pid: text.trim().parse().unwrap_or(0),
                    path: path.clone(),
                }
            }
            Held::Failed(source) => io_error(source),
        })?;
        let pid = format!("{}\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(pid.as_bytes()))
            .and_then(|()| file.sync_all())
            .map_err(io_error)?;
        Ok(Pidfile { path, file })
    }

    /// Where the pidfile is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Why [`lock`] did not return a locked file.
enum Held {
    /// Another process holds the lock (its file, to read the pid from).
    Busy(File),
    /// Something else went wrong.
    Failed(io::Error),
}

/// Open `path` (a regular file, never through a symlink) and lock it. A
/// holder that stops removes the file while it still holds the lock, so the
/// lock counts only if the name still leads to the locked file; otherwise
/// try again.
fn lock(path: &Path) -> Result<File, Held> {
    for _ in 0..10 {
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(path)
            .map_err(Held::Failed)?;
        let held = file.metadata().map_err(Held::Failed)?;
        if !held.is_file() {
            return Err(Held::Failed(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            )));
        }
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => return Err(Held::Busy(file)),
            Err(err) => return Err(Held::Failed(err.into())),
        }
        let named = std::fs::symlink_metadata(path).ok();
        if named.is_some_and(|n| n.dev() == held.dev() && n.ino() == held.ino()) {
            return Ok(file);
        }
    }
    Err(Held::Failed(io::Error::new(
        io::ErrorKind::WouldBlock,
        "the pidfile keeps being replaced",
    )))
}

impl Drop for Pidfile {
    fn drop(&mut self) {
        // Only if the name still points at our file: a successor's stays.
        let ours = match (std::fs::metadata(&self.path), self.file.metadata()) {
            (Ok(named), Ok(held)) => named.dev() == held.dev() && named.ino() == held.ino(),
            _ => false,
        };
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_killed_holders_pidfile_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.pid");
        // What a killed daemon leaves: a pid, and no lock.
        std::fs::write(&path, "4194304\n").unwrap();
        let guard = Pidfile::create(&path).unwrap();
        let written = std::fs::read_to_string(&path).unwrap();
        assert_eq!(written, format!("{}\n", std::process::id()));
        drop(guard);
        assert!(!path.exists());
    }

    #[test]
    fn the_holders_pid_is_in_the_refusal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.pid");
        let _guard = Pidfile::create(&path).unwrap();
        match Pidfile::create(&path) {
            Err(PidfileError::AlreadyRunning { pid, .. }) => assert_eq!(pid, std::process::id()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_symlink_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("precious");
        std::fs::write(&target, "keep me").unwrap();
        let link = dir.path().join("app.pid");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = Pidfile::create(&link).unwrap_err();
        assert!(matches!(err, PidfileError::Io { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
    }

    #[test]
    fn an_unwritable_place_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, "").unwrap();
        let err = Pidfile::create(blocker.join("app.pid")).unwrap_err();
        assert!(matches!(err, PidfileError::Io { .. }), "{err}");
    }
}
