//! The only `unsafe` code of the crate: glibc's named semaphores and a
//! mapped POSIX shared-memory object.
//!
//! # Invariants
//!
//! 1. A [`NamedSemaphore`] holds a pointer `sem_open` returned (never
//!    `SEM_FAILED`), valid until `sem_close`, which only its drop calls.
//!    POSIX semaphores are made to be used from many threads at once, so
//!    the pointer may be shared across threads.
//! 2. A [`SharedBuffer`] holds a mapping of `len` bytes that stays mapped
//!    until its drop unmaps it. It is never seen as a Rust reference
//!    (`&[u8]`): another process may write to it at any time. Bytes move
//!    with `ptr::copy_nonoverlapping` between it and memory this process
//!    owns, after a bounds check against `len`. The semaphore protocol
//!    keeps the two sides off the same bytes; a process breaking it races
//!    with the copy, and the worst outcome is torn bytes, which callers
//!    treat as untrusted input (as every shared-memory transport assumes).
//! 3. The object is made `len` bytes long before it is mapped, and one
//!    opened must belong to this process's user: `/dev/shm` is writable by
//!    all, and another user's object could be shrunk under the mapping to
//!    make an access fault. Only the same user (the objects are `0600`)
//!    can still do that, as it can anything to this process.

use std::{ffi::CString, io, os::fd::AsFd, ptr::NonNull, time::Duration};

use rustix::{
    fs::Mode,
    mm::{MapFlags, ProtFlags},
    shm,
    time::ClockId,
};

/// A glibc named semaphore (`sem_open`), as Python's `posix_ipc` makes
/// them: the file `/dev/shm/sem.<name>`.
#[derive(Debug)]
pub(crate) struct NamedSemaphore {
    sem: NonNull<libc::sem_t>,
}

// SAFETY: invariant 1.
unsafe impl Send for NamedSemaphore {}
// SAFETY: invariant 1.
unsafe impl Sync for NamedSemaphore {}

impl NamedSemaphore {
    /// Make the semaphore `name` (with its leading `/`) with `value`,
    /// failing if it exists.
    pub(crate) fn create(name: &str, value: u32) -> io::Result<Self> {
        let name = c_name(name)?;
        // SAFETY: `name` is a valid C string; O_CREAT takes the mode and
        // the initial value as the variadic arguments, both unsigned ints.
        let sem = unsafe {
            libc::sem_open(
                name.as_ptr(),
                libc::O_CREAT | libc::O_EXCL,
                0o600 as libc::c_uint,
                value as libc::c_uint,
            )
        };
        Self::opened(sem)
    }

    /// Open the existing semaphore `name`, which must be this user's
    /// (invariant 3 holds for its memory too).
    pub(crate) fn open(name: &str) -> io::Result<Self> {
        // glibc keeps it as the file /dev/shm/sem.<name without '/'>.
        let file = format!("/dev/shm/sem.{}", name.trim_start_matches('/'));
        mine(name, rustix::fs::stat(file.as_str())?.st_uid)?;
        let name = c_name(name)?;
        // SAFETY: `name` is a valid C string; without O_CREAT no variadic
        // arguments are read.
        let sem = unsafe { libc::sem_open(name.as_ptr(), 0) };
        Self::opened(sem)
    }

    fn opened(sem: *mut libc::sem_t) -> io::Result<Self> {
        if sem == libc::SEM_FAILED {
            return Err(io::Error::last_os_error());
        }
        NonNull::new(sem)
            .map(|sem| NamedSemaphore { sem })
            .ok_or_else(io::Error::last_os_error)
    }

    /// Remove the name `name` (its users keep it until they close it).
    pub(crate) fn unlink(name: &str) -> io::Result<()> {
        let name = c_name(name)?;
        // SAFETY: `name` is a valid C string.
        if unsafe { libc::sem_unlink(name.as_ptr()) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Take one unit, waiting up to `timeout`; `false` if it ran out.
    pub(crate) fn wait(&self, timeout: Duration) -> io::Result<bool> {
        // sem_timedwait wants a deadline on the realtime clock.
        let now = rustix::time::clock_gettime(ClockId::Realtime);
        let nanos = now.tv_nsec as u64 + u64::from(timeout.subsec_nanos());
        let deadline = libc::timespec {
            tv_sec: (now.tv_sec as libc::time_t)
                .saturating_add(timeout.as_secs().min(i32::MAX as u64) as libc::time_t)
                .saturating_add((nanos / 1_000_000_000) as libc::time_t),
            tv_nsec: (nanos % 1_000_000_000) as _,
        };
        loop {
            // SAFETY: invariant 1; `deadline` outlives the call.
            if unsafe { libc::sem_timedwait(self.sem.as_ptr(), &deadline) } == 0 {
                return Ok(true);
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ETIMEDOUT) => return Ok(false),
                _ => return Err(err),
            }
        }
    }

    /// Take one unit if there is one, without waiting.
    pub(crate) fn try_wait(&self) -> io::Result<bool> {
        loop {
            // SAFETY: invariant 1.
            if unsafe { libc::sem_trywait(self.sem.as_ptr()) } == 0 {
                return Ok(true);
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => return Ok(false),
                _ => return Err(err),
            }
        }
    }

    /// Give one unit back.
    pub(crate) fn post(&self) -> io::Result<()> {
        // SAFETY: invariant 1.
        if unsafe { libc::sem_post(self.sem.as_ptr()) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// The current count.
    pub(crate) fn value(&self) -> io::Result<i32> {
        let mut value: libc::c_int = 0;
        // SAFETY: invariant 1; `value` is a valid place to write.
        if unsafe { libc::sem_getvalue(self.sem.as_ptr(), &mut value) } == 0 {
            Ok(value)
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

impl Drop for NamedSemaphore {
    fn drop(&mut self) {
        // SAFETY: invariant 1: closed once, here.
        unsafe { libc::sem_close(self.sem.as_ptr()) };
    }
}

/// A POSIX shared-memory object (`/dev/shm/<name>`), mapped.
#[derive(Debug)]
pub(crate) struct SharedBuffer {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: invariant 2: the mapping is plain memory reached only through
// bounds-checked copies.
unsafe impl Send for SharedBuffer {}
// SAFETY: as above.
unsafe impl Sync for SharedBuffer {}

impl SharedBuffer {
    /// Make the object `name` (with its leading `/`), `len` bytes of
    /// zeros, mode `0600`, failing if it exists; and map it.
    pub(crate) fn create(name: &str, len: usize) -> io::Result<Self> {
        let fd = shm::open(
            name,
            shm::OFlags::CREATE | shm::OFlags::EXCL | shm::OFlags::RDWR,
            Mode::from_raw_mode(0o600),
        )?;
        let mapped = rustix::fs::ftruncate(&fd, len as u64)
            .map_err(io::Error::from)
            .and_then(|()| Self::map(fd.as_fd(), len));
        if mapped.is_err() {
            let _ = shm::unlink(name);
        }
        mapped
    }

    /// Open the existing object `name` and map its first `len` bytes; it
    /// must be at least that long.
    pub(crate) fn open(name: &str, len: usize) -> io::Result<Self> {
        let fd = shm::open(name, shm::OFlags::RDWR, Mode::empty())?;
        let stat = rustix::fs::fstat(&fd)?;
        mine(name, stat.st_uid)?;
        let size = stat.st_size;
        if (size as u64) < len as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{name} holds {size} bytes, fewer than the {len}-byte buffer asked for"),
            ));
        }
        Self::map(fd.as_fd(), len)
    }

    fn map(fd: std::os::fd::BorrowedFd<'_>, len: usize) -> io::Result<Self> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a shared buffer of zero bytes",
            ));
        }
        // SAFETY: a fresh shared mapping of `len` bytes of an object at
        // least that long (invariant 3); nothing else refers to it yet.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                0,
            )
        }?;
        let ptr = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned a null mapping"))?;
        Ok(SharedBuffer { ptr, len })
    }

    /// Remove the name `name` (its users keep it until they unmap it).
    pub(crate) fn unlink(name: &str) -> io::Result<()> {
        shm::unlink(name).map_err(io::Error::from)
    }

    /// Its length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Callers check any length read out of the buffer against its
    /// capacity first, so this never fails on a peer's input.
    fn check_bounds(&self, what: &str, offset: usize, len: usize) {
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.len),
            "{what} of {len} bytes at {offset} outside a {}-byte buffer",
            self.len
        );
    }

    /// Copy `dst.len()` bytes out, from `offset`.
    pub(crate) fn read(&self, offset: usize, dst: &mut [u8]) {
        self.check_bounds("read", offset, dst.len());
        // SAFETY: in bounds (checked above) of a live mapping (invariant
        // 2); `dst` is this process's own memory, so they cannot overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(offset),
                dst.as_mut_ptr(),
                dst.len(),
            )
        };
    }

    /// Copy `src` in, at `offset`.
    pub(crate) fn write(&self, offset: usize, src: &[u8]) {
        self.check_bounds("write", offset, src.len());
        // SAFETY: as for `read`.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.as_ptr().add(offset), src.len())
        };
    }
}

impl Drop for SharedBuffer {
    fn drop(&mut self) {
        // SAFETY: invariant 2: unmapped once, here, and never used after.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Refuse an object another user made.
fn mine(name: &str, owner: u32) -> io::Result<()> {
    let me = rustix::process::geteuid().as_raw();
    if owner != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{name} belongs to user {owner}, not to this process's user {me}"),
        ));
    }
    Ok(())
}

fn c_name(name: &str) -> io::Result<CString> {
    CString::new(name).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} holds a NUL byte"),
        )
    })
}
