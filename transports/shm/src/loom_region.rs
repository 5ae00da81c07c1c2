//! The [`Region`](crate::region) API over loom's atomics, for the loom
//! model of the rings' synchronisation (`RUSTFLAGS="--cfg busline_loom"`). Bytes
//! are relaxed atomics here: loom then explores every stale value a read
//! could see, so a missing happens-before edge between a ring's data and
//! its positions shows up as a wrong byte.

use loom::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};

pub(crate) use loom::sync::atomic::fence;

/// The word type the rings use.
pub(crate) type Word = AtomicU64;

/// A region of `len` bytes in loom's model.
#[derive(Debug)]
pub(crate) struct Region {
    words: Box<[AtomicU64]>,
    bytes: Box<[AtomicU8]>,
}

impl Region {
    pub(crate) fn heap(len: usize) -> Region {
        Region {
            words: (0..len / 8).map(|_| AtomicU64::new(0)).collect(),
            bytes: (0..len).map(|_| AtomicU8::new(0)).collect(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.bytes.len()
    }

    pub(crate) fn word(&self, offset: usize) -> &AtomicU64 {
        assert!(offset % 8 == 0);
        &self.words[offset / 8]
    }

    pub(crate) fn read_into(&self, offset: usize, len: usize, buf: &mut tokio::io::ReadBuf<'_>) {
        for i in 0..len {
            buf.put_slice(&[self.bytes[offset + i].load(Relaxed)]);
        }
    }

    pub(crate) fn write(&self, offset: usize, src: &[u8]) {
        for (i, s) in src.iter().enumerate() {
            self.bytes[offset + i].store(*s, Relaxed);
        }
    }
}
