//! A single-producer single-consumer byte ring in shared memory.
//!
//! Layout, at `base` in the region (every field on its own cache line, so
//! the two sides never write the same line):
//!
//! | offset | field | written by |
//! | --- | --- | --- |
//! | 0 | `head`: bytes ever written | producer |
//! | 64 | `tail`: bytes ever read | consumer |
//! | 128 | `consumer_waiting`: 1 while the consumer sleeps for data | consumer |
//! | 192 | `producer_waiting`: 1 while the producer sleeps for room | producer |
//! | 256 | `closed`: 1 once the producer has shut down | producer |
//! | [`HEADER`] | `capacity` bytes of data, a power of two | producer (free part), consumer reads |
//!
//! Positions grow forever (wrapping at 2^64); byte `p` lives at
//! `p % capacity`. Each side keeps its own position locally, as the truth,
//! and only publishes it; what it reads of the other side's is untrusted
//! and checked (`0 <= head - tail <= capacity`), so a corrupt or hostile
//! peer yields [`Corrupt`], never an access outside the ring.
//!
//! Positions are published with `Release` and read with `Acquire`, which
//! is what makes the data written before a position visible to whoever
//! reads it.
//!
//! Wake-ups never get lost: a side about to sleep sets its `*_waiting`
//! flag, then looks once more; the other side publishes its position, then
//! looks at the flag. A `SeqCst` fence sits between the store and the load
//! on both sides, so at least one of the two sees the other's store. (A
//! fence, not `SeqCst` accesses: loom models fences exactly, and the
//! fence is the textbook form of this store-then-load handshake.)

use std::sync::{
    atomic::Ordering::{Acquire, Relaxed, Release, SeqCst},
    Arc,
};

use crate::region::{fence, Region, Word};
use tokio::io::ReadBuf;

/// Bytes of header before each ring's data.
pub(crate) const HEADER: usize = 4096;

const HEAD: usize = 0;
const TAIL: usize = 64;
const CONSUMER_WAITING: usize = 128;
const PRODUCER_WAITING: usize = 192;
const CLOSED: usize = 256;

/// The peer broke the ring's rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Corrupt(pub(crate) String);

/// Where a ring lives: a region, the ring's offset in it and its capacity.
#[derive(Debug, Clone)]
struct Place {
    region: Arc<Region>,
    base: usize,
    capacity: usize,
}

impl Place {
    fn new(region: Arc<Region>, base: usize, capacity: usize) -> Place {
        assert!(
            capacity.is_power_of_two(),
            "capacity {capacity} is not a power of two"
        );
        assert!(
            base % 64 == 0 && base + HEADER + capacity <= region.len(),
            "a ring of {capacity} at {base} does not fit a {} byte region",
            region.len()
        );
        Place {
            region,
            base,
            capacity,
        }
    }

    fn word(&self, field: usize) -> &Word {
        self.region.word(self.base + field)
    }

    /// The one or two pieces of data area holding positions
    /// `[from, from + len)`, as (offset in region, length).
    fn pieces(&self, from: u64, len: usize) -> [(usize, usize); 2] {
        let at = (from % self.capacity as u64) as usize;
        let first = len.min(self.capacity - at);
        let data = self.base + HEADER;
        [(data + at, first), (data, len - first)]
    }

    /// `head - tail`, checked.
    fn used(&self, head: u64, tail: u64) -> Result<usize, Corrupt> {
        let used = head.wrapping_sub(tail);
        if used > self.capacity as u64 {
            return Err(Corrupt(format!(
                "head {head} and tail {tail} are {used} bytes apart in a {} byte ring",
                self.capacity
            )));
        }
        Ok(used as usize)
    }
}

/// The writing end of a ring.
#[derive(Debug)]
pub(crate) struct Producer {
    place: Place,
    head: u64,
}

/// The reading end of a ring.
#[derive(Debug)]
pub(crate) struct Consumer {
    place: Place,
    tail: u64,
}

/// Both ends of a ring at `base` in `region`, which must be zeroed there
/// (an empty, open ring). Each process keeps the end it uses.
pub(crate) fn ring(region: Arc<Region>, base: usize, capacity: usize) -> (Producer, Consumer) {
    let place = Place::new(region, base, capacity);
    (
        Producer {
            place: place.clone(),
            head: place.word(HEAD).load(Acquire),
        },
        Consumer {
            tail: place.word(TAIL).load(Acquire),
            place,
        },
    )
}

impl Producer {
    /// Bytes that can be written now.
    pub(crate) fn room(&self) -> Result<usize, Corrupt> {
        let tail = self.place.word(TAIL).load(Acquire);
        Ok(self.place.capacity - self.place.used(self.head, tail)?)
    }

    /// Write as much of `src` as fits; returns how much did.
    pub(crate) fn write(&mut self, src: &[u8]) -> Result<usize, Corrupt> {
        let n = src.len().min(self.room()?);
        let mut done = 0;
        for (offset, len) in self.place.pieces(self.head, n) {
            self.place.region.write(offset, &src[done..done + len]);
            done += len;
        }
        self.head = self.head.wrapping_add(n as u64);
        self.place.word(HEAD).store(self.head, Release);
        Ok(n)
    }

    /// Say that nothing more will be written.
    pub(crate) fn close(&self) {
        self.place.word(CLOSED).store(1, Release);
    }

    /// Set or clear "I sleep until there is room". Setting it is followed
    /// by a fence: look at [`Self::room`] again after, then sleep.
    pub(crate) fn set_waiting(&self, waiting: bool) {
        self.place
            .word(PRODUCER_WAITING)
            .store(u64::from(waiting), Relaxed);
        if waiting {
            fence(SeqCst);
        }
    }

    /// Whether the consumer sleeps until there is data, looked at after a
    /// fence that orders it behind what was just written or closed.
    pub(crate) fn consumer_waiting(&self) -> bool {
        fence(SeqCst);
        self.place.word(CONSUMER_WAITING).load(Relaxed) != 0
    }
}

impl Consumer {
    /// The ring's size in bytes.
    #[cfg(not(busline_loom))]
    pub(crate) fn capacity(&self) -> usize {
        self.place.capacity
    }

    /// Bytes that can be read now.
    pub(crate) fn available(&self) -> Result<usize, Corrupt> {
        let head = self.place.word(HEAD).load(Acquire);
        self.place.used(head, self.tail)
    }

    /// Append up to `dst.remaining()` bytes to `dst`; returns how many.
    pub(crate) fn read(&mut self, dst: &mut ReadBuf<'_>) -> Result<usize, Corrupt> {
        let n = dst.remaining().min(self.available()?);
        for (offset, len) in self.place.pieces(self.tail, n) {
            self.place.region.read_into(offset, len, dst);
        }
        self.consume(n);
        Ok(n)
    }

    /// Lend up to `max` readable bytes, in place, to `f`; consume as many
    /// as it returns (at most what it was lent).
    #[cfg(not(busline_loom))]
    pub(crate) fn lend<R>(
        &mut self,
        max: usize,
        f: impl FnOnce(crate::region::RingBytes<'_>) -> (usize, R),
    ) -> Result<R, Corrupt> {
        let n = max.min(self.available()?);
        let pieces = self.place.pieces(self.tail, n);
        let (used, result) = f(crate::region::RingBytes::new(&self.place.region, pieces));
        self.consume(used.min(n));
        Ok(result)
    }

    fn consume(&mut self, n: usize) {
        self.tail = self.tail.wrapping_add(n as u64);
        self.place.word(TAIL).store(self.tail, Release);
    }

    /// Whether the producer has shut down (read [`Self::available`] again
    /// after seeing it: the last bytes were published before the flag).
    pub(crate) fn closed(&self) -> bool {
        self.place.word(CLOSED).load(Acquire) != 0
    }

    /// Set or clear "I sleep until there is data". Setting it is followed
    /// by a fence: look at [`Self::available`] again after, then sleep.
    pub(crate) fn set_waiting(&self, waiting: bool) {
        self.place
            .word(CONSUMER_WAITING)
            .store(u64::from(waiting), Relaxed);
        if waiting {
            fence(SeqCst);
        }
    }

    /// Whether the producer sleeps until there is room, looked at after a
    /// fence that orders it behind what was just read.
    pub(crate) fn producer_waiting(&self) -> bool {
        fence(SeqCst);
        self.place.word(PRODUCER_WAITING).load(Relaxed) != 0
    }
}

/// The words a hostile peer would scribble on, for tests.
#[cfg(all(test, not(busline_loom)))]
pub(crate) fn words_of(consumer: &Consumer) -> (&Word, &Word) {
    (consumer.place.word(HEAD), consumer.place.word(TAIL))
}

#[cfg(all(test, not(busline_loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn one_ring(capacity: usize) -> (Producer, Consumer) {
        ring(Arc::new(Region::heap(HEADER + capacity)), 0, capacity)
    }

    #[test]
    fn fills_empties_and_wraps() {
        let (mut p, mut c) = one_ring(16);
        assert_eq!(p.write(b"0123456789").unwrap(), 10);
        let mut buf = [0u8; 6];
        assert_eq!(c.read(&mut ReadBuf::new(&mut buf)).unwrap(), 6);
        assert_eq!(&buf, b"012345");
        // 4 left; 12 of room, across the end of the ring.
        assert_eq!(p.write(b"abcdefghijklmnop").unwrap(), 12);
        assert_eq!(p.room().unwrap(), 0);
        let mut all = [0u8; 32];
        assert_eq!(c.read(&mut ReadBuf::new(&mut all)).unwrap(), 16);
        assert_eq!(&all[..16], b"6789abcdefghijkl");
        assert_eq!(c.available().unwrap(), 0);
    }

    #[test]
    fn a_corrupt_peer_is_an_error_not_an_access_outside() {
        let region = Arc::new(Region::heap(HEADER + 16));
        let (p, c) = ring(region.clone(), 0, 16);
        region.word(HEAD).store(1000, SeqCst);
        assert!(c.available().is_err());
        region.word(HEAD).store(0, SeqCst);
        region.word(TAIL).store(5, SeqCst);
        assert!(p.room().is_err());
    }

    proptest! {
        /// Random writes and reads of random sizes, one thread each side
        /// of the real atomics: every byte arrives, in order, once.
        #[test]
        fn a_stream_crosses_intact(
            capacity_log in 4u32..10,
            writes in proptest::collection::vec(1usize..700, 1..40),
            reads in proptest::collection::vec(1usize..700, 1..40),
        ) {
            let capacity = 1 << capacity_log;
            let (mut p, mut c) = one_ring(capacity);
            let total: usize = writes.iter().sum();
            let sent: Vec<u8> = (0..total).map(|i| (i * 7 + i / 251) as u8).collect();
            let writer = {
                let sent = sent.clone();
                std::thread::spawn(move || {
                    let mut at = 0;
                    for w in writes {
                        let end = (at + w).min(sent.len());
                        while at < end {
                            at += p.write(&sent[at..end]).unwrap();
                            std::hint::spin_loop();
                        }
                    }
                    p.close();
                })
            };
            let mut got = Vec::new();
            let mut sizes = reads.iter().cycle();
            loop {
                let mut buf = vec![0u8; *sizes.next().unwrap()];
                let n = c.read(&mut ReadBuf::new(&mut buf)).unwrap();
                got.extend_from_slice(&buf[..n]);
                if n == 0 && c.closed() && c.available().unwrap() == 0 {
                    break;
                }
            }
            writer.join().unwrap();
            prop_assert_eq!(got, sent);
        }
    }
}

/// The rings' synchronisation under loom's model checker, which runs the
/// two sides through every interleaving (up to a preemption bound) and
/// every value a relaxed read could see:
///
/// ```sh
/// RUSTFLAGS="--cfg busline_loom" LOOM_MAX_PREEMPTIONS=2 \
///     cargo test -p busline-shm --lib --release -- loom
/// ```
#[cfg(all(test, busline_loom))]
mod loom_model {
    use loom::sync::Notify;

    use super::*;

    /// A producer writes 6 bytes through a 4-byte ring in two pieces and
    /// closes; the consumer reads in pieces of 3. Either side with nothing
    /// to do sleeps as `ShmStream` does: it says it waits, looks again,
    /// then blocks until signalled; each signals the other when it sees it
    /// waiting (and the producer always on close). Every byte arrives in
    /// order, and nobody sleeps through its last signal: a lost wake-up
    /// would leave a side blocked, which loom reports as a deadlock.
    #[test]
    fn bytes_arrive_in_order_and_no_wakeup_is_lost() {
        loom::model(|| {
            let region = Arc::new(Region::heap(HEADER + 4));
            let (mut producer, mut consumer) = ring(region, 0, 4);
            let (data, room) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
            let sent: Vec<u8> = (1..=6).collect();

            let (signal, wait_room) = (data.clone(), room.clone());
            let to_send = sent.clone();
            let writer = loom::thread::spawn(move || {
                for piece in [&to_send[..3], &to_send[3..]] {
                    let mut at = 0;
                    while at < piece.len() {
                        let n = producer.write(&piece[at..]).unwrap();
                        at += n;
                        if n > 0 {
                            if producer.consumer_waiting() {
                                signal.notify();
                            }
                            continue;
                        }
                        producer.set_waiting(true);
                        if producer.room().unwrap() == 0 {
                            wait_room.wait();
                        }
                        producer.set_waiting(false);
                    }
                }
                producer.close();
                signal.notify();
            });

            let mut got = Vec::new();
            loop {
                let mut buf = [0u8; 3];
                let n = consumer.read(&mut ReadBuf::new(&mut buf)).unwrap();
                if n > 0 {
                    got.extend_from_slice(&buf[..n]);
                    if consumer.producer_waiting() {
                        room.notify();
                    }
                    continue;
                }
                if consumer.closed() {
                    if consumer.available().unwrap() == 0 {
                        break;
                    }
                    continue;
                }
                consumer.set_waiting(true);
                if consumer.available().unwrap() > 0 || consumer.closed() {
                    consumer.set_waiting(false);
                    continue;
                }
                data.wait();
                consumer.set_waiting(false);
            }
            writer.join().unwrap();
            assert_eq!(got, sent);
        });
    }
}
