//! Binding a socket file without races, leaks or theft.
//!
//! The order of operations is the point of this module:
//! 1. create missing parent directories with mode `0700`;
//! 2. look at what is at the path: nothing is fine, a socket nobody accepts
//!    on is stale and removed, a live socket or a non-socket is refused;
//! 3. bind inside a fresh private (`0700`) staging directory next to the
//!    path, so no other user can reach the socket before step 4;
//! 4. chmod the socket to the requested mode;
//! 5. hard-link it to the final path, which fails instead of clobbering if
//!    another server got there first (then go back to step 2);
//! 6. remove the staging directory.
//!
//! The socket's device and inode are recorded, so the listener later
//! deletes the file only if it is still its own.

use std::{
    collections::hash_map::RandomState,
    fs,
    hash::{BuildHasher, Hasher},
    io,
    os::unix::{
        fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt},
        net::UnixListener as StdUnixListener,
    },
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use tokio::net::{UnixListener, UnixStream};

use crate::errors::{self, with_context};

/// How long a connect probe may take before the socket counts as live
/// (a server too busy to answer is still a server).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often to retry when the path or the staging name keeps changing
/// under us; more than a couple means something else is fighting for it.
const ATTEMPTS: usize = 5;
/// Mode of directories this crate creates: only the owner may enter.
const PRIVATE_DIR_MODE: u32 = 0o700;

/// Identity of a file: the same device and inode means the same file, even
/// if it was renamed or re-linked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn from_meta(meta: &fs::Metadata) -> Self {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }

    /// The identity of whatever is at `path` (not following symlinks), or
    /// `None` if nothing is.
    pub(crate) fn of(path: &Path) -> io::Result<Option<FileId>> {
        match fs::symlink_metadata(path) {
            Ok(meta) => Ok(Some(FileId::from_meta(&meta))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Bind a listening socket at `path` with permission bits `mode`,
/// following the steps in the module docs.
pub(crate) async fn bind(path: &Path, mode: u32) -> io::Result<(UnixListener, FileId)> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    create_private_dirs(parent)?;
    for _ in 0..ATTEMPTS {
        clear_stale(path).await?;
        match bind_privately(parent, path, mode) {
            // Something appeared at the path after we looked: look again.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            other => return other,
        }
    }
    Err(errors::new(
        io::ErrorKind::AddrInUse,
        format!(
            "{} keeps being re-created while binding; is another server \
             starting at the same path?",
            path.display()
        ),
    ))
}

/// Create `dir` and any missing ancestors with mode `0700`. Directories
/// that already exist are left exactly as they are.
fn create_private_dirs(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut current = Some(dir);
    while let Some(d) = current {
        match fs::metadata(d) {
            Ok(meta) if meta.is_dir() => break,
            Ok(_) => {
                return Err(errors::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{} is not a directory, so no socket can be put under it; \
                         choose another path",
                        d.display()
                    ),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => missing.push(d),
            Err(e) => return Err(with_context(e, format!("cannot inspect {}", d.display()))),
        }
        current = d.parent().filter(|p| !p.as_os_str().is_empty());
    }
    for d in missing.into_iter().rev() {
        match fs::DirBuilder::new().mode(PRIVATE_DIR_MODE).create(d) {
            // Exactly 0700: the umask may have taken away owner bits.
            Ok(()) => fs::set_permissions(d, fs::Permissions::from_mode(PRIVATE_DIR_MODE))?,
            // Created by someone else meanwhile: theirs, leave it alone.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(with_context(
                    e,
                    format!(
                        "cannot create the socket's directory {}; create it yourself \
                         or choose a path under a directory this user may write",
                        d.display()
                    ),
                ))
            }
        }
    }
    Ok(())
}

/// Make room at `path`: nothing there or a stale socket (removed) is fine;
/// a live socket or anything that is not a socket is refused.
async fn clear_stale(path: &Path) -> io::Result<()> {
    let shown = path.display();
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(with_context(e, format!("cannot inspect {shown}"))),
    };
    if !meta.file_type().is_socket() {
        return Err(errors::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{shown} exists and is not a socket; refusing to replace it. \
                 Remove it yourself if it is not needed, or choose another path"
            ),
        ));
    }
    let live = || {
        errors::new(
            io::ErrorKind::AddrInUse,
            format!("a live server owns {shown}; stop it first or choose another path"),
        )
    };
    match tokio::time::timeout(PROBE_TIMEOUT, UnixStream::connect(path)).await {
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {}
        Ok(Err(e)) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        // Accepted, or a full backlog, or too slow: a server is there.
        Ok(Ok(_)) | Err(_) => return Err(live()),
        Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => return Err(live()),
        Ok(Err(e)) => {
            return Err(with_context(
                e,
                format!("cannot tell whether a server owns {shown}: connecting to it failed"),
            ))
        }
    }
    if FileId::of(path)? != Some(FileId::from_meta(&meta)) {
        // Replaced while we probed: not the stale file we judged. Leave it;
        // the hard link will fail and the caller looks again.
        return Ok(());
    }
    tracing::info!(path = %shown, "removing stale socket left by a stopped server");
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(with_context(
            e,
            format!("cannot remove the stale socket {shown}; remove it yourself"),
        )),
    }
}

/// Bind in a private staging directory, set `mode`, then link into place.
fn bind_privately(parent: &Path, path: &Path, mode: u32) -> io::Result<(UnixListener, FileId)> {
    let staging = Staging::create(parent)?;
    let staged = staging.socket();
    let std_listener = StdUnixListener::bind(&staged).map_err(|e| {
        let message = if e.kind() == io::ErrorKind::InvalidInput {
            format!(
                "cannot bind {}: the path is too long for a Unix socket once staged \
                 as {} ({} bytes); choose a shorter path",
                path.display(),
                staged.display(),
                staged.as_os_str().len()
            )
        } else {
            format!("cannot bind a socket in {}", parent.display())
        };
        with_context(e, message)
    })?;
    fs::set_permissions(&staged, fs::Permissions::from_mode(mode))?;
    let id = FileId::from_meta(&fs::symlink_metadata(&staged)?);
    // Register with tokio before the socket becomes visible, so no failure
    // after `install` can leave a file behind.
    std_listener.set_nonblocking(true)?;
    let listener = UnixListener::from_std(std_listener)?;
    install(&staged, path)?;
    Ok((listener, id))
}

/// Put the staged socket at `path` without replacing anything there.
fn install(staged: &Path, path: &Path) -> io::Result<()> {
    match fs::hard_link(staged, path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(e),
        Err(e) => {
            // Some file systems have no hard links; a rename is atomic too,
            // it just replaces a file that appeared since `clear_stale`.
            tracing::debug!(error = %e, "hard link failed; renaming the socket into place");
            fs::rename(staged, path).map_err(|e| {
                with_context(
                    e,
                    format!("cannot move the socket into place at {}", path.display()),
                )
            })
        }
    }
}

/// A private directory next to the socket path; removed on drop.
struct Staging {
    dir: PathBuf,
}

impl Staging {
    fn create(parent: &Path) -> io::Result<Staging> {
        for _ in 0..ATTEMPTS {
            let dir = parent.join(format!(".busline-{:08x}", random_u32()));
            match fs::DirBuilder::new().mode(PRIVATE_DIR_MODE).create(&dir) {
                Ok(()) => {
                    let staging = Staging { dir };
                    fs::set_permissions(
                        &staging.dir,
                        fs::Permissions::from_mode(PRIVATE_DIR_MODE),
                    )?;
                    return Ok(staging);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(with_context(
                        e,
                        format!(
                            "cannot create a private staging directory in {}; the \
                             socket's directory must be writable by this user",
                            parent.display()
                        ),
                    ))
                }
            }
        }
        // Not `AlreadyExists`: that would tell the caller the socket path
        // itself is taken.
        Err(errors::new(
            io::ErrorKind::Other,
            format!(
                "found no free staging directory name in {} after {ATTEMPTS} tries",
                parent.display()
            ),
        ))
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("s")
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.socket());
        if let Err(e) = fs::remove_dir(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e,
                "could not remove staging directory");
        }
    }
}

/// A name suffix that differs between processes, calls and runs; it need
/// not be secret, since a taken name only means another try.
fn random_u32() -> u32 {
    let mut h = RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    if let Ok(t) = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    h.finish() as u32
}
