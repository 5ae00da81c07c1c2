//! shm-rpc-bridge's wire for [busline](https://docs.rs/busline): the named
//! POSIX shared memory and semaphores through which that Python library's
//! `RPCClient` and `RPCServer` talk, so either side can be busline.
//!
//! A service `NAME` is six kernel objects, exactly as shm-rpc-bridge 0.2
//! makes them with its POSIX transport (the one its published package
//! runs; its futex transport needs a module the package does not ship):
//!
//! - `/dev/shm/srb_NAME_req` and `/dev/shm/srb_NAME_resp`: one buffer each
//!   way, `buffer_size` bytes (4096 by default), mode `0600`; a message is
//!   a native-endian `u32` length and that many bytes (JSON, in practice);
//! - glibc semaphores `srb_NAME_req_empty` (1), `srb_NAME_req_full` (0),
//!   `srb_NAME_resp_empty` (1), `srb_NAME_resp_full` (0), guarding them:
//!   a writer takes `empty`, writes, posts `full`; a reader takes `full`,
//!   reads, posts `empty`.
//!
//! [`SrbChannel`] is that byte-level transport, blocking, for one thread
//! on each side; busline's `SrbServer` serves a router's handlers on it.
//! The server side makes the objects and removes them when dropped.
//!
//! ```
//! use std::time::Duration;
//! use busline_srb::SrbChannel;
//!
//! let name = format!("doc-{}", std::process::id());
//! let mut server = SrbChannel::create(&name, SrbChannel::DEFAULT_BUFFER_SIZE)?;
//! let mut client = SrbChannel::open(&name, SrbChannel::DEFAULT_BUFFER_SIZE)?;
//! client.send_request(b"{}", Duration::from_secs(5))?;
//! let request = server.receive_request(Duration::from_secs(5))?;
//! assert_eq!(request.as_deref(), Some(&b"{}"[..]));
//! # Ok::<(), busline_core::Error>(())
//! ```
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![cfg(target_os = "linux")]

mod sys;

use std::{io, time::Duration};

use busline_core::{Error, Result};
use sys::{NamedSemaphore, SharedBuffer};

/// The bytes before each message: its length, a native-endian `u32`.
const HEADER: usize = 4;

/// One direction: a buffer and the two semaphores guarding it.
#[derive(Debug)]
struct Slot {
    what: &'static str,
    buffer: SharedBuffer,
    empty: NamedSemaphore,
    full: NamedSemaphore,
}

impl Slot {
    /// The object names of `NAME`'s `dir` ("req" or "resp") slot: buffer,
    /// empty, full.
    fn names(name: &str, dir: &str) -> [String; 3] {
        [
            format!("/srb_{name}_{dir}"),
            format!("/srb_{name}_{dir}_empty"),
            format!("/srb_{name}_{dir}_full"),
        ]
    }

    fn create(what: &'static str, name: &str, dir: &str, size: usize) -> io::Result<Slot> {
        let [buffer, empty, full] = Self::names(name, dir);
        Ok(Slot {
            what,
            buffer: SharedBuffer::create(&buffer, size)?,
            empty: NamedSemaphore::create(&empty, 1)?,
            full: NamedSemaphore::create(&full, 0)?,
        })
    }

    fn open(what: &'static str, name: &str, dir: &str, size: usize) -> io::Result<Slot> {
        let [buffer, empty, full] = Self::names(name, dir);
        Ok(Slot {
            what,
            buffer: SharedBuffer::open(&buffer, size)?,
            empty: NamedSemaphore::open(&empty)?,
            full: NamedSemaphore::open(&full)?,
        })
    }

    fn capacity(&self) -> usize {
        self.buffer.len() - HEADER
    }

    fn check_fits(&self, data: &[u8]) -> Result<()> {
        if data.len() > self.capacity() {
            return Err(Error::FrameTooLarge {
                size: data.len(),
                limit: self.capacity(),
            });
        }
        Ok(())
    }

    /// Put `data` in the buffer and mark it full; the caller holds `empty`.
    fn fill(&self, data: &[u8]) -> Result<()> {
        self.buffer.write(0, &(data.len() as u32).to_ne_bytes());
        self.buffer.write(HEADER, data);
        self.full.post().map_err(Error::from)
    }

    /// Wait for room, then send `data`.
    fn send(&self, data: &[u8], timeout: Duration) -> Result<()> {
        self.check_fits(data)?;
        if !self.empty.wait(timeout)? {
            return Err(Error::Timeout(timeout));
        }
        self.fill(data)
    }

    /// Wait up to `timeout` for a message; `None` if none came.
    fn receive(&self, timeout: Duration) -> Result<Option<Vec<u8>>> {
        if !self.full.wait(timeout)? {
            return Ok(None);
        }
        let mut header = [0; HEADER];
        self.buffer.read(0, &mut header);
        let size = u32::from_ne_bytes(header) as usize;
        let message = if size > self.capacity() {
            Err(Error::Protocol(format!(
                "the {} buffer claims a message of {size} bytes, more than its {} \
                 (a writer broke the protocol, or the sides disagree on buffer_size)",
                self.what,
                self.capacity()
            )))
        } else {
            let mut data = vec![0; size];
            self.buffer.read(HEADER, &mut data);
            Ok(Some(data))
        };
        // The slot is free again either way: a bad message must not wedge it.
        self.empty.post()?;
        // A slot freed for a writer that was only slow, not dead
        // ([`SrbChannel::free_request_slot`]), is counted twice once that
        // writer is read: back to one, or two writers could write at once.
        // (Best effort: the message read is not lost over it.)
        while self.empty.value().is_ok_and(|v| v > 1) {
            if !self.empty.try_wait().unwrap_or(false) {
                break;
            }
        }
        message
    }
}

/// The shared memory and semaphores of one shm-rpc-bridge service.
///
/// Its methods take `&mut self`: one thread of a process sends and
/// receives on a channel at a time, so no two in it ever copy into the
/// same bytes.
///
/// Contract (as shm-rpc-bridge's own transport keeps it):
/// - one message in each direction at a time: a sender waits (up to its
///   timeout) until the last one was taken; a message larger than
///   `buffer_size - 4` bytes is refused with [`Error::FrameTooLarge`]
///   before anything is written;
/// - a malformed length is an [`Error::Protocol`] for that message only;
///   the slot is freed for the next one;
/// - the side that made the objects ([`SrbChannel::create`]) removes their
///   names when dropped; the other ([`SrbChannel::open`]) only unmaps.
#[derive(Debug)]
pub struct SrbChannel {
    name: String,
    owner: bool,
    request: Slot,
    response: Slot,
}

impl SrbChannel {
    /// shm-rpc-bridge's default buffer size, in bytes.
    pub const DEFAULT_BUFFER_SIZE: usize = 4096;
    /// shm-rpc-bridge's default timeout for each wait.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

    /// Make service `name`'s objects (server side), `buffer_size` bytes
    /// each way. Fails with `AlreadyExists` if any is there: see
    /// [`SrbChannel::remove`] for objects a dead server left.
    pub fn create(name: &str, buffer_size: usize) -> Result<Self> {
        check(name, buffer_size)?;
        // All or nothing: what is there is left alone, and what this call
        // makes it removes if it cannot make the rest.
        if Self::exists(name) {
            return Err(described(name, io::ErrorKind::AlreadyExists.into()));
        }
        let made = Slot::create("request", name, "req", buffer_size).and_then(|request| {
            Ok((
                request,
                Slot::create("response", name, "resp", buffer_size)?,
            ))
        });
        match made {
            Ok((request, response)) => Ok(SrbChannel {
                name: name.to_owned(),
                owner: true,
                request,
                response,
            }),
            Err(err) => {
                // Another server made one between the check and now: its
                // objects are not this call's to remove.
                if err.kind() != io::ErrorKind::AlreadyExists {
                    Self::remove(name);
                }
                Err(described(name, err))
            }
        }
    }

    /// Open service `name`'s objects, made by a server (client side), of
    /// at least `buffer_size` bytes each way.
    pub fn open(name: &str, buffer_size: usize) -> Result<Self> {
        check(name, buffer_size)?;
        let request = Slot::open("request", name, "req", buffer_size);
        let opened = request
            .and_then(|request| Ok((request, Slot::open("response", name, "resp", buffer_size)?)));
        let (request, response) = opened.map_err(|err| described(name, err))?;
        Ok(SrbChannel {
            name: name.to_owned(),
            owner: false,
            request,
            response,
        })
    }

    /// Remove the names of service `name`'s objects, whoever made them (a
    /// server killed before it could); those missing are skipped. Processes
    /// that have them open keep them until they close them.
    pub fn remove(name: &str) {
        for dir in ["req", "resp"] {
            let [buffer, empty, full] = Slot::names(name, dir);
            let _ = SharedBuffer::unlink(&buffer);
            let _ = NamedSemaphore::unlink(&empty);
            let _ = NamedSemaphore::unlink(&full);
        }
    }

    /// Whether any of service `name`'s objects exist (glibc keeps them
    /// all in `/dev/shm`).
    pub fn exists(name: &str) -> bool {
        ["req", "resp"].iter().any(|dir| {
            let [buffer, empty, full] = Slot::names(name, dir);
            [
                buffer,
                format!("/sem.{}", &empty[1..]),
                format!("/sem.{}", &full[1..]),
            ]
            .iter()
            .any(|object| std::path::Path::new(&format!("/dev/shm{object}")).exists())
        })
    }

    /// Stop owning the objects: dropping this no longer removes them (their
    /// names were removed already, and may now be another server's).
    pub fn disown(&mut self) {
        self.owner = false;
    }

    /// The service name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The most bytes one message may hold: the buffer size less its
    /// 4-byte length.
    pub fn max_message(&self) -> usize {
        self.request.capacity().min(self.response.capacity())
    }

    /// Client side: send a request, waiting up to `timeout` for the slot.
    pub fn send_request(&mut self, data: &[u8], timeout: Duration) -> Result<()> {
        self.request.send(data, timeout)
    }

    /// Client side: the response, waiting up to `timeout` for it.
    pub fn receive_response(&mut self, timeout: Duration) -> Result<Vec<u8>> {
        self.response
            .receive(timeout)?
            .ok_or(Error::Timeout(timeout))
    }

    /// Server side: the next request, or `None` if none came within
    /// `timeout` (a server polls, so that it can stop).
    pub fn receive_request(&mut self, timeout: Duration) -> Result<Option<Vec<u8>>> {
        self.request.receive(timeout)
    }

    /// Server side: send a response, waiting up to `timeout` for the slot.
    ///
    /// If the last response is still unread when `timeout` runs out, its
    /// client gave up on it (or died): it is dropped and this one takes
    /// its place, since otherwise the one response slot stays blocked and
    /// every later client times out.
    pub fn send_response(&mut self, data: &[u8], timeout: Duration) -> Result<()> {
        let slot = &self.response;
        slot.check_fits(data)?;
        if slot.empty.wait(timeout)? {
            return slot.fill(data);
        }
        if slot.full.try_wait()? {
            tracing::warn!(
                service = %self.name,
                "dropping a response no client read within {timeout:?}"
            );
            return slot.fill(data);
        }
        Err(Error::Timeout(timeout))
    }

    /// Server side: whether a writer has held the request slot without
    /// filling it for as long as the caller has watched (a client killed
    /// between taking the slot and posting its request); such a slot is
    /// freed by [`SrbChannel::free_request_slot`]. Cheap: one
    /// `sem_getvalue` on each semaphore.
    pub fn request_slot_taken(&self) -> Result<bool> {
        Ok(self.request.empty.value()? == 0 && self.request.full.value()? == 0)
    }

    /// Server side: give the request slot back, after
    /// [`SrbChannel::request_slot_taken`] said it was held for longer than
    /// any writer needs (a copy of at most `buffer_size` bytes).
    pub fn free_request_slot(&mut self) -> Result<()> {
        tracing::warn!(
            service = %self.name,
            "freeing the request slot a client took and never filled"
        );
        self.request.empty.post().map_err(Error::from)
    }
}

impl Drop for SrbChannel {
    fn drop(&mut self) {
        if self.owner {
            Self::remove(&self.name);
        }
    }
}

/// A service name shm-rpc-bridge could have made objects for, and a
/// buffer that holds at least its length header.
fn check(name: &str, buffer_size: usize) -> Result<()> {
    // glibc's semaphore files are "sem." + the name, within NAME_MAX (255).
    let longest = "sem.srb_".len() + name.len() + "_resp_empty".len();
    let reason = if name.is_empty() {
        Some("the service name is empty".to_owned())
    } else if name.contains(['/', '\0']) {
        Some("a service name holds no '/' or NUL".to_owned())
    } else if longest > 255 {
        Some(format!(
            "a service name of {} bytes makes object names over 255 bytes",
            name.len()
        ))
    } else if buffer_size <= HEADER || buffer_size > u32::MAX as usize {
        Some(format!(
            "a buffer of {buffer_size} bytes: it holds a 4-byte length, and at most {} bytes",
            u32::MAX
        ))
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::Address {
            url: format!("shm-rpc-bridge service {name:?}"),
            reason,
        }),
        None => Ok(()),
    }
}

fn described(name: &str, err: io::Error) -> Error {
    let what = match err.kind() {
        io::ErrorKind::AlreadyExists => format!(
            "shm-rpc-bridge service {name:?} exists (/dev/shm/srb_{name}_*): another \
             server serves it, or a dead one left it"
        ),
        io::ErrorKind::NotFound => format!(
            "no shm-rpc-bridge service {name:?} (/dev/shm/srb_{name}_*): is its server running?"
        ),
        _ => format!("shm-rpc-bridge service {name:?}: {err}"),
    };
    Error::Transport(io::Error::new(err.kind(), what).into())
}

#[cfg(test)]
mod tests {
    use std::{sync::atomic::AtomicU32, thread};

    use super::*;

    const WAIT: Duration = Duration::from_secs(5);

    /// A service name no other test (or test run) uses.
    fn unique() -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("busline-test-{}-{n}", std::process::id())
    }

    #[test]
    fn a_request_and_its_response_cross() {
        let name = unique();
        let mut server = SrbChannel::create(&name, 64).unwrap();
        let mut client = SrbChannel::open(&name, 64).unwrap();
        let serving = thread::spawn(move || {
            let request = server.receive_request(WAIT).unwrap().unwrap();
            server
                .send_response(&[&request[..], b"!"].concat(), WAIT)
                .unwrap();
            server
        });
        client.send_request(b"hello", WAIT).unwrap();
        assert_eq!(client.receive_response(WAIT).unwrap(), b"hello!");
        let mut server = serving.join().unwrap();
        assert_eq!(
            server.receive_request(Duration::from_millis(10)).unwrap(),
            None
        );
        drop(client);
        assert!(SrbChannel::exists(&name));
        drop(server);
        assert!(
            !SrbChannel::exists(&name),
            "the server's objects outlived it"
        );
    }

    #[test]
    fn limits_and_names_are_typed_errors() {
        let name = unique();
        let mut server = SrbChannel::create(&name, 16).unwrap();
        assert_eq!(server.max_message(), 12);
        assert!(matches!(
            server.send_response(&[0; 13], WAIT),
            Err(Error::FrameTooLarge {
                size: 13,
                limit: 12
            })
        ));
        let again = SrbChannel::create(&name, 16).unwrap_err();
        assert!(
            again.to_string().contains("another server serves it"),
            "{again}"
        );
        assert!(SrbChannel::open(&name, 32)
            .unwrap_err()
            .to_string()
            .contains("fewer than"));
        for bad in ["", "a/b", "nul\0"] {
            assert!(matches!(
                SrbChannel::create(bad, 64),
                Err(Error::Address { .. })
            ));
        }
        assert!(matches!(
            SrbChannel::create(&"x".repeat(300), 64),
            Err(Error::Address { .. })
        ));
        assert!(matches!(
            SrbChannel::create(&unique(), 4),
            Err(Error::Address { .. })
        ));
        let missing = SrbChannel::open(&unique(), 64).unwrap_err();
        assert!(
            missing.to_string().contains("is its server running"),
            "{missing}"
        );
    }

    #[test]
    fn a_bad_length_costs_one_message_not_the_slot() {
        let name = unique();
        let mut server = SrbChannel::create(&name, 16).unwrap();
        // A writer that claims more than the buffer holds.
        assert!(server.request.empty.wait(WAIT).unwrap());
        server.request.buffer.write(0, &1000u32.to_ne_bytes());
        server.request.full.post().unwrap();
        assert!(matches!(
            server.receive_request(WAIT),
            Err(Error::Protocol(_))
        ));
        let mut client = SrbChannel::open(&name, 16).unwrap();
        client.send_request(b"next", WAIT).unwrap();
        assert_eq!(
            server.receive_request(WAIT).unwrap().as_deref(),
            Some(&b"next"[..])
        );
    }

    #[test]
    fn an_unread_response_gives_way_to_the_next() {
        let name = unique();
        let mut server = SrbChannel::create(&name, 64).unwrap();
        let mut client = SrbChannel::open(&name, 64).unwrap();
        let short = Duration::from_millis(20);
        server.send_response(b"never read", short).unwrap();
        server.send_response(b"second", short).unwrap();
        assert_eq!(client.receive_response(WAIT).unwrap(), b"second");
        assert!(matches!(
            client.receive_response(short),
            Err(Error::Timeout(_))
        ));
    }

    #[test]
    fn a_request_slot_taken_and_never_filled_can_be_freed() {
        let name = unique();
        let mut server = SrbChannel::create(&name, 64).unwrap();
        let mut client = SrbChannel::open(&name, 64).unwrap();
        assert!(!server.request_slot_taken().unwrap());
        // A client that died between taking the slot and filling it.
        assert!(client.request.empty.wait(WAIT).unwrap());
        assert!(server.request_slot_taken().unwrap());
        assert!(matches!(
            client.send_request(b"x", Duration::from_millis(20)),
            Err(Error::Timeout(_))
        ));
        server.free_request_slot().unwrap();
        client.send_request(b"x", WAIT).unwrap();
        assert!(!server.request_slot_taken().unwrap());
        assert_eq!(
            server.receive_request(WAIT).unwrap().as_deref(),
            Some(&b"x"[..])
        );
        // The writer was only slow: its request still comes, and the slot
        // counts one writer again, not two.
        client.request.fill(b"late").unwrap();
        assert_eq!(
            server.receive_request(WAIT).unwrap().as_deref(),
            Some(&b"late"[..])
        );
        assert_eq!(server.request.empty.value().unwrap(), 1);
    }

    #[test]
    fn remove_clears_what_a_dead_server_left() {
        let name = unique();
        let server = SrbChannel::create(&name, 64).unwrap();
        std::mem::forget(server);
        assert!(SrbChannel::exists(&name));
        SrbChannel::remove(&name);
        assert!(!SrbChannel::exists(&name));
        drop(SrbChannel::create(&name, 64).unwrap());
    }
}
