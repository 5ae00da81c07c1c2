//! The only `unsafe` code of the crate: a memory region shared with another
//! process, bounds-checked access to it, and handing descriptors to tokio.
//!
//! # Invariants
//!
//! 1. `ptr` points to `len` bytes that stay mapped (or allocated) for the
//!    life of the `Region`, which unmaps (or frees) them on drop and never
//!    before. Shared memory comes only from a memfd sealed against
//!    shrinking (checked by [`Region::map`]), so no access can fault with
//!    `SIGBUS` even if the peer tries to truncate it.
//! 2. `ptr` is aligned to a page (mmap) or to 64 bytes (heap), so every
//!    offset that is a multiple of 8 is aligned for an `AtomicU64`.
//! 3. Every access checks its bounds against `len` before touching memory;
//!    an out-of-range request panics with a message, which callers rule out
//!    by computing offsets from validated, local values only (never from
//!    values read out of the region).
//! 4. The region is never seen as a Rust reference to plain bytes
//!    (`&[u8]`/`&mut [u8]`): the peer may write to it at any time. Words are
//!    accessed as `AtomicU64`. Bulk bytes move with
//!    `ptr::copy_nonoverlapping` through raw pointers into and out of
//!    memory this process owns; the ring protocol never has both sides on
//!    the same bytes at once. A hostile peer that writes the bytes being
//!    copied anyway races with the copy, which Rust's memory model does not
//!    define even across processes. In practice the copy is a `memcpy` of
//!    memory the compiler cannot see written, so the worst outcome is torn
//!    bytes, which the protocol treats as untrusted input; it cannot make
//!    this process read or write outside the region. This is the one
//!    assumption here beyond the language's rules, as for every
//!    shared-memory transport.
//!    The one exception is [`RingBytes::as_slices`], an `unsafe fn` whose
//!    caller takes on that promise for a peer it trusts.
//! 5. [`async_fd`] registers an `OwnedFd` with tokio's reactor, which
//!    requires the descriptor to stay open and the same until the
//!    `AsyncFd` is dropped: an `OwnedFd` moved into the `AsyncFd` is closed
//!    only by the `AsyncFd`'s own drop, and its number never changes.

use std::{
    alloc::Layout,
    io,
    os::fd::{AsFd, OwnedFd},
    ptr::NonNull,
    sync::atomic::AtomicU64,
};

use tokio::io::{unix::AsyncFd, Interest, ReadBuf};

/// `fd`, registered with the current tokio reactor for `interest`.
pub(crate) fn async_fd(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: invariant 5: the OwnedFd is moved in and closed only when
    // the AsyncFd drops it.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(io::Error::from)
}

use rustix::{
    fs::SealFlags,
    mm::{MapFlags, ProtFlags},
};

pub(crate) use std::sync::atomic::fence;

/// The word type the rings use.
pub(crate) type Word = AtomicU64;

/// A byte region shared with another process (or, in tests, with another
/// thread).
#[derive(Debug)]
pub(crate) struct Region {
    ptr: NonNull<u8>,
    len: usize,
    heap: bool,
}

// SAFETY: a Region is a pointer to memory that is valid for its whole life
// (invariant 1) and only accessed through atomics or raw copies
// (invariant 4), both of which may happen from any thread.
unsafe impl Send for Region {}
// SAFETY: as for Send: `&Region` offers nothing but atomic and raw-copy
// access, which are sound to perform concurrently.
unsafe impl Sync for Region {}

impl Region {
    /// The seals a memfd must carry before it is mapped: it can then never
    /// shrink (which would fault on access), grow, or drop its seals.
    pub(crate) const SEALS: SealFlags = SealFlags::SHRINK
        .union(SealFlags::GROW)
        .union(SealFlags::SEAL);

    /// Map `len` bytes of the memfd `fd`, read-write and shared, after
    /// checking that it is exactly `len` bytes long and sealed with
    /// [`Self::SEALS`].
    pub(crate) fn map(fd: impl AsFd, len: usize) -> io::Result<Region> {
        let fd = fd.as_fd();
        let seals = rustix::fs::fcntl_get_seals(fd).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the shared memory is not a sealable memfd: {e}"),
            )
        })?;
        if !seals.contains(Self::SEALS) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the shared memory is not sealed against shrinking and growing",
            ));
        }
        let size = rustix::fs::fstat(fd)?.st_size;
        if u64::try_from(size).ok() != Some(len as u64) || len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the shared memory is {size} bytes, not the {len} announced"),
            ));
        }
        // SAFETY: a fresh mapping (null hint) of a sealed memfd of exactly
        // `len` bytes; the kernel picks an address that aliases nothing of
        // ours. The pointer is only used through this Region (invariants).
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                0,
            )?
        };
        let ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(Region {
            ptr,
            len,
            heap: false,
        })
    }

    /// A zeroed region on this process's heap: the same code paths without
    /// a kernel, for unit tests, Miri and loom-free stress tests.
    #[cfg(test)]
    pub(crate) fn heap(len: usize) -> Region {
        assert!(len > 0);
        let layout = Layout::from_size_align(len, 64).expect("a valid layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        Region {
            ptr,
            len,
            heap: true,
        }
    }

    /// The region's size in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The 8-byte word at `offset`, as an atomic.
    ///
    /// Panics if `offset` is not a multiple of 8 inside the region.
    pub(crate) fn word(&self, offset: usize) -> &AtomicU64 {
        assert!(
            offset % 8 == 0 && offset.checked_add(8).is_some_and(|end| end <= self.len),
            "word at {offset} outside a {} byte region",
            self.len
        );
        // SAFETY: in bounds and 8-aligned (checked above, invariant 2); the
        // memory lives as long as `&self` (invariant 1); AtomicU64 has the
        // size and alignment of u64 and allows concurrent access from the
        // peer (invariant 4).
        unsafe { &*self.ptr.as_ptr().add(offset).cast::<AtomicU64>() }
    }

    /// Copy `dst.len()` bytes from the region at `offset` into `dst`.
    ///
    /// Panics if the range is outside the region.
    pub(crate) fn read(&self, offset: usize, dst: &mut [u8]) {
        self.check(offset, dst.len());
        // SAFETY: the source range is inside the mapping (checked); `dst`
        // is our own exclusive buffer, which cannot overlap the mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(offset),
                dst.as_mut_ptr(),
                dst.len(),
            )
        }
    }

    /// Append `len` bytes from the region at `offset` to `buf`'s filled
    /// part, without zeroing its spare room first (for large reads that
    /// would cost as much as the copy).
    ///
    /// Panics if the range is outside the region or `buf` lacks the room.
    pub(crate) fn read_into(&self, offset: usize, len: usize, buf: &mut ReadBuf<'_>) {
        self.check(offset, len);
        assert!(len <= buf.remaining(), "no room for {len} bytes");
        // SAFETY: the source range is inside the mapping (checked), the
        // destination is `buf`'s own spare room (at least `len`, checked),
        // which cannot overlap the mapping. Exactly those `len` bytes are
        // written before they are declared initialised, and nothing is
        // de-initialised.
        unsafe {
            let room = buf.unfilled_mut();
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(offset),
                room.as_mut_ptr().cast::<u8>(),
                len,
            );
            buf.assume_init(len);
        }
        buf.advance(len);
    }

    /// Copy `src` into the region at `offset`.
    ///
    /// Panics if the range is outside the region.
    pub(crate) fn write(&self, offset: usize, src: &[u8]) {
        self.check(offset, src.len());
        // SAFETY: the destination range is inside the mapping (checked);
        // `src` is our own buffer, which cannot overlap the mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.as_ptr().add(offset), src.len())
        }
    }

    fn check(&self, offset: usize, len: usize) {
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.len),
            "{len} bytes at {offset} outside a {} byte region",
            self.len
        );
    }
}

/// Bytes lent in place from a shared-memory ring by
/// [`ShmStream::read_in_place`](crate::ShmStream::read_in_place): one or
/// two runs of the ring (two where they wrap around its end).
#[derive(Debug, Clone, Copy)]
pub struct RingBytes<'a> {
    region: &'a Region,
    pieces: [(usize, usize); 2],
}

impl<'a> RingBytes<'a> {
    /// `pieces` are (offset, length) runs inside `region`.
    pub(crate) fn new(region: &'a Region, pieces: [(usize, usize); 2]) -> Self {
        for (offset, len) in pieces {
            region.check(offset, len);
        }
        RingBytes { region, pieces }
    }

    /// How many bytes are lent.
    pub fn len(&self) -> usize {
        self.pieces[0].1 + self.pieces[1].1
    }

    /// Whether none are (the end of the stream).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copy the first `dst.len()` bytes into `dst`.
    ///
    /// Panics if fewer than `dst.len()` bytes are lent.
    pub fn copy_to_slice(&self, dst: &mut [u8]) {
        assert!(
            dst.len() <= self.len(),
            "{} bytes wanted, {} lent",
            dst.len(),
            self.len()
        );
        let mut done = 0;
        for (offset, len) in self.pieces {
            let take = len.min(dst.len() - done);
            self.region.read(offset, &mut dst[done..done + take]);
            done += take;
        }
    }

    /// All the lent bytes, copied.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.len()];
        self.copy_to_slice(&mut out);
        out
    }

    /// The lent bytes as plain slices, with no copy at all.
    ///
    /// # Safety
    ///
    /// The peer process can write to this memory at any time. The caller
    /// must trust it to follow the ring protocol (which never writes lent
    /// bytes) for as long as the slices live; a peer that does not makes
    /// the slices change under the caller, which Rust's rules for `&[u8]`
    /// do not allow.
    pub unsafe fn as_slices(&self) -> (&'a [u8], &'a [u8]) {
        let slice = |(offset, len): (usize, usize)| {
            // SAFETY: inside the region (checked in `new`), alive for 'a
            // (invariant 1); immutability is the caller's promise above.
            unsafe { std::slice::from_raw_parts(self.region.ptr.as_ptr().add(offset), len) }
        };
        (slice(self.pieces[0]), slice(self.pieces[1]))
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if self.heap {
            let layout = Layout::from_size_align(self.len, 64).expect("the layout of heap()");
            // SAFETY: allocated by heap() with this very layout, freed once.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) }
        } else {
            // SAFETY: mapped by map() with this length, unmapped once; no
            // reference into it outlives `self` (`word` borrows `self`).
            let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_bytes_stay_inside_the_region() {
        let r = Region::heap(128);
        r.word(120).store(7, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(r.word(120).load(std::sync::atomic::Ordering::SeqCst), 7);
        r.write(10, b"hello");
        let mut back = [0u8; 5];
        r.read(10, &mut back);
        assert_eq!(&back, b"hello");
        for bad in [
            std::panic::catch_unwind(|| {
                Region::heap(128)
                    .word(124)
                    .load(std::sync::atomic::Ordering::SeqCst)
            }),
            std::panic::catch_unwind(|| {
                Region::heap(128)
                    .word(128)
                    .load(std::sync::atomic::Ordering::SeqCst)
            }),
            std::panic::catch_unwind(|| {
                Region::heap(128)
                    .word(usize::MAX - 7)
                    .load(std::sync::atomic::Ordering::SeqCst)
            }),
        ] {
            assert!(bad.is_err());
        }
        assert!(std::panic::catch_unwind(|| Region::heap(16).write(12, b"12345")).is_err());
        assert!(std::panic::catch_unwind(|| Region::heap(16).read(usize::MAX, &mut [0])).is_err());
    }

    #[test]
    fn read_into_appends_to_spare_room_and_stays_inside() {
        let r = Region::heap(64);
        r.write(8, b"abcdef");
        let mut room = [std::mem::MaybeUninit::<u8>::uninit(); 8];
        let mut buf = ReadBuf::uninit(&mut room);
        r.read_into(8, 2, &mut buf);
        r.read_into(10, 4, &mut buf);
        assert_eq!(buf.filled(), b"abcdef");
        assert_eq!(buf.remaining(), 2);
        // Past the region, or more than the buffer holds: refused.
        let outside = std::panic::catch_unwind(|| {
            let mut room = [0u8; 8];
            Region::heap(64).read_into(60, 8, &mut ReadBuf::new(&mut room));
        });
        assert!(outside.is_err());
        let too_much = std::panic::catch_unwind(|| {
            let mut room = [0u8; 4];
            Region::heap(64).read_into(0, 8, &mut ReadBuf::new(&mut room));
        });
        assert!(too_much.is_err());
    }
}
