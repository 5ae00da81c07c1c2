//! The handshake over the Unix socket that hands the shared memory and the
//! wake-up sockets from one process to the other (`SCM_RIGHTS`).
//!
//! The client makes the memory: a memfd of two rings, sealed so it can
//! never shrink under the server (which would make the server fault). Each
//! side makes two socket pairs it sleeps on (data to read, room to write)
//! and hands the other end of each to its peer, to be woken through. The
//! client sends `HELLO` = `b"BSHM"`, version (u32 LE), ring capacity (u64
//! LE) with the memfd and its two wake ends. The server checks everything
//! (capacity, memfd size and seals, that the wake ends are sockets), maps
//! the memory, and answers `b"BSHM"`, status (u32 LE, 0 = accepted),
//! reason length (u32 LE) and reason, with its own two wake ends when it
//! accepts.

use std::{
    io::{self, IoSlice, IoSliceMut},
    mem::MaybeUninit,
    os::fd::{AsFd, OwnedFd},
    sync::Arc,
};

use busline_core::Spin;
use rustix::{
    fs::MemfdFlags,
    net::{
        RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
        SendAncillaryMessage, SendFlags,
    },
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, Interest},
    net::UnixStream,
};

use crate::{
    region::Region,
    ring::{ring, HEADER},
    stream::{Ends, ShmStream},
    wake::{check_wake_fd, new_wake_pair},
};

const MAGIC: &[u8; 4] = b"BSHM";
const VERSION: u32 = 1;
/// Smallest ring accepted.
pub(crate) const MIN_RING: usize = 4096;
/// Largest ring accepted.
pub(crate) const MAX_RING: usize = 64 << 20;

fn invalid(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

/// Bytes of shared memory for two rings of `capacity`.
fn region_len(capacity: usize) -> usize {
    2 * (HEADER + capacity)
}

/// Send `bytes` with `fds` attached.
async fn send_with_fds(socket: &UnixStream, bytes: &[u8], fds: &[&OwnedFd]) -> io::Result<()> {
    let borrowed: Vec<_> = fds.iter().map(|fd| fd.as_fd()).collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
    let sent = socket
        .async_io(Interest::WRITABLE, || {
            let mut control = SendAncillaryBuffer::new(&mut space);
            control.push(SendAncillaryMessage::ScmRights(&borrowed));
            Ok(rustix::net::sendmsg(
                socket,
                &[IoSlice::new(bytes)],
                &mut control,
                SendFlags::NOSIGNAL,
            )?)
        })
        .await?;
    // The descriptors went with the first byte; the rest is plain data.
    let mut rest = &bytes[sent..];
    while !rest.is_empty() {
        socket.writable().await?;
        match socket.try_write(rest) {
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Receive exactly `N` bytes, and the descriptors that came with the first.
async fn recv_with_fds<const N: usize>(
    socket: &mut UnixStream,
) -> io::Result<([u8; N], Vec<OwnedFd>)> {
    let mut bytes = [0u8; N];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
    let (got, fds) = socket
        .async_io(Interest::READABLE, || {
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let msg = rustix::net::recvmsg(
                &*socket,
                &mut [IoSliceMut::new(&mut bytes)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            )?;
            let mut fds = Vec::new();
            for message in control.drain() {
                if let RecvAncillaryMessage::ScmRights(received) = message {
                    fds.extend(received);
                }
            }
            Ok((msg.bytes, fds))
        })
        .await?;
    if got == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the peer closed the connection during the shared-memory handshake",
        ));
    }
    socket.read_exact(&mut bytes[got..]).await?;
    Ok((bytes, fds))
}

/// The client's side: make the memory, send it, await the answer.
pub(crate) async fn client(
    mut socket: UnixStream,
    capacity: usize,
    spin: Spin,
) -> io::Result<ShmStream> {
    let memfd = rustix::fs::memfd_create(
        "busline-shm",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    rustix::fs::ftruncate(&memfd, region_len(capacity) as u64)?;
    rustix::fs::fcntl_add_seals(&memfd, Region::SEALS)?;
    let region = Arc::new(Region::map(&memfd, region_len(capacity))?);
    let ((data, data_give), (room, room_give)) = (new_wake_pair()?, new_wake_pair()?);

    let mut hello = Vec::with_capacity(16);
    hello.extend_from_slice(MAGIC);
    hello.extend_from_slice(&VERSION.to_le_bytes());
    hello.extend_from_slice(&(capacity as u64).to_le_bytes());
    send_with_fds(&socket, &hello, &[&memfd, &data_give, &room_give]).await?;
    drop((memfd, data_give, room_give));

    let (answer, fds) = recv_with_fds::<12>(&mut socket).await?;
    if &answer[..4] != MAGIC {
        return Err(invalid(
            "the server does not speak busline's shared-memory handshake",
        ));
    }
    let status = u32::from_le_bytes(answer[4..8].try_into().expect("4 bytes"));
    let reason_len = u32::from_le_bytes(answer[8..12].try_into().expect("4 bytes")) as usize;
    if status != 0 {
        let mut reason = vec![0u8; reason_len.min(4096)];
        socket.read_exact(&mut reason).await?;
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("the server refused: {}", String::from_utf8_lossy(&reason)),
        ));
    }
    let [peer_data, peer_room]: [OwnedFd; 2] = fds
        .try_into()
        .map_err(|_| invalid("the server sent the wrong number of descriptors"))?;
    check_wake_fd(&peer_data)?;
    check_wake_fd(&peer_room)?;
    let wake = [data, room, peer_data, peer_room];
    open_stream(Side::Client, region, capacity, wake, socket, spin)
}

/// Which end of the connection: the client writes the first ring and reads
/// the second, the server the other way round.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

/// This side's stream over `region`; `wake` is this side's data and room
/// sockets, then the peer's.
fn open_stream(
    side: Side,
    region: Arc<Region>,
    capacity: usize,
    wake: [OwnedFd; 4],
    socket: UnixStream,
    spin: Spin,
) -> io::Result<ShmStream> {
    let (first, second) = (0, HEADER + capacity);
    let (outbound, inbound) = match side {
        Side::Client => (first, second),
        Side::Server => (second, first),
    };
    let (tx, _) = ring(region.clone(), outbound, capacity);
    let (_, rx) = ring(region, inbound, capacity);
    let [data, room, peer_data, peer_room] = wake;
    ShmStream::new(Ends {
        tx,
        rx,
        data,
        room,
        peer_data,
        peer_room,
        socket: socket.into_std()?.into(),
        spin,
    })
}

/// The server's side: check what the client sent, map it, answer.
pub(crate) async fn server(mut socket: UnixStream, spin: Spin) -> io::Result<ShmStream> {
    let accepted = accept(&mut socket).await;
    let (answer, fds) = match &accepted {
        Ok(a) => (answer(0, ""), vec![&a.data_give, &a.room_give]),
        Err(e) => (answer(1, &e.to_string()), vec![]),
    };
    if fds.is_empty() {
        socket.write_all(&answer).await?;
    } else {
        send_with_fds(&socket, &answer, &fds).await?;
    }
    let Accepted {
        region,
        capacity,
        data,
        room,
        peer_data,
        peer_room,
        ..
    } = accepted?;
    let wake = [data, room, peer_data, peer_room];
    open_stream(Side::Server, region, capacity, wake, socket, spin)
}

/// What the server has once it accepts a client's hello.
struct Accepted {
    region: Arc<Region>,
    capacity: usize,
    /// Where the server sleeps, and the ends it hands the client.
    data: OwnedFd,
    room: OwnedFd,
    data_give: OwnedFd,
    room_give: OwnedFd,
    /// The client's ends, to wake it.
    peer_data: OwnedFd,
    peer_room: OwnedFd,
}

async fn accept(socket: &mut UnixStream) -> io::Result<Accepted> {
    let (hello, fds) = recv_with_fds::<16>(socket).await?;
    if &hello[..4] != MAGIC {
        return Err(invalid("not busline's shared-memory handshake"));
    }
    let version = u32::from_le_bytes(hello[4..8].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(invalid(format!(
            "the client speaks shared-memory version {version}, this server {VERSION}"
        )));
    }
    let capacity = u64::from_le_bytes(hello[8..16].try_into().expect("8 bytes"));
    let capacity = usize::try_from(capacity)
        .ok()
        .filter(|c| c.is_power_of_two() && (MIN_RING..=MAX_RING).contains(c))
        .ok_or_else(|| {
            invalid(format!(
                "ring capacity {capacity} is not a power of two from {MIN_RING} to {MAX_RING}"
            ))
        })?;
    let [memfd, peer_data, peer_room]: [OwnedFd; 3] = fds
        .try_into()
        .map_err(|_| invalid("the client sent the wrong number of descriptors"))?;
    check_wake_fd(&peer_data)?;
    check_wake_fd(&peer_room)?;
    let region = Arc::new(Region::map(&memfd, region_len(capacity))?);
    let ((data, data_give), (room, room_give)) = (new_wake_pair()?, new_wake_pair()?);
    Ok(Accepted {
        region,
        capacity,
        data,
        room,
        data_give,
        room_give,
        peer_data,
        peer_room,
    })
}

fn answer(status: u32, reason: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + reason.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&status.to_le_bytes());
    out.extend_from_slice(&(reason.len() as u32).to_le_bytes());
    out.extend_from_slice(reason.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Send a hand-made hello to a server and return what it says.
    async fn hostile(hello: &[u8], fds: &[&OwnedFd]) -> io::Error {
        let (client, server_side) = UnixStream::pair().unwrap();
        let server = tokio::spawn(super::server(server_side, Spin::NONE));
        send_with_fds(&client, hello, fds).await.unwrap();
        let refused = server.await.unwrap().unwrap_err();
        let mut answer = Vec::new();
        let mut client = client;
        client.read_to_end(&mut answer).await.unwrap();
        assert_eq!(&answer[..4], MAGIC);
        assert_ne!(&answer[4..8], &0u32.to_le_bytes(), "accepted");
        assert!(
            String::from_utf8_lossy(&answer[12..]).contains(&refused.to_string()),
            "the client is told why"
        );
        refused
    }

    fn hello(capacity: u64) -> Vec<u8> {
        let mut h = MAGIC.to_vec();
        h.extend_from_slice(&VERSION.to_le_bytes());
        h.extend_from_slice(&capacity.to_le_bytes());
        h
    }

    fn memfd(len: usize, seal: bool) -> OwnedFd {
        let fd =
            rustix::fs::memfd_create("t", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
        rustix::fs::ftruncate(&fd, len as u64).unwrap();
        if seal {
            rustix::fs::fcntl_add_seals(&fd, Region::SEALS).unwrap();
        }
        fd
    }

    #[tokio::test]
    async fn a_server_refuses_memory_it_cannot_trust() {
        let ((_, data), (_, room)) = (new_wake_pair().unwrap(), new_wake_pair().unwrap());
        let ok_len = region_len(MIN_RING);

        // Unsealed: the client could shrink it and make the server fault.
        let err = hostile(
            &hello(MIN_RING as u64),
            &[&memfd(ok_len, false), &data, &room],
        )
        .await;
        assert!(err.to_string().contains("sealed"), "{err}");
        // Smaller than announced.
        let err = hostile(
            &hello(MIN_RING as u64),
            &[&memfd(ok_len - 4096, true), &data, &room],
        )
        .await;
        assert!(err.to_string().contains("announced"), "{err}");
        // A capacity out of range, or not a power of two.
        for capacity in [0, 1000, u64::MAX, (MAX_RING as u64) * 2] {
            let err = hostile(&hello(capacity), &[&memfd(ok_len, true), &data, &room]).await;
            assert!(err.to_string().contains("power of two"), "{err}");
        }
        // Something else where a wake-up socket belongs.
        let err = hostile(
            &hello(MIN_RING as u64),
            &[&memfd(ok_len, true), &memfd(8, false), &room],
        )
        .await;
        assert!(err.to_string().contains("socket"), "{err}");
        // Too few descriptors, a wrong magic, a wrong version.
        let err = hostile(&hello(MIN_RING as u64), &[&memfd(ok_len, true)]).await;
        assert!(err.to_string().contains("number of descriptors"), "{err}");
        let err = hostile(b"HTTP/1.1 GET /xy", &[&data]).await;
        assert!(err.to_string().contains("handshake"), "{err}");
        let mut future = hello(MIN_RING as u64);
        future[4] = 9;
        let err = hostile(&future, &[&data]).await;
        assert!(err.to_string().contains("version 9"), "{err}");
    }

    #[tokio::test]
    async fn a_client_that_hangs_up_mid_hello_is_an_error() {
        let (mut client, server_side) = UnixStream::pair().unwrap();
        let server = tokio::spawn(super::server(server_side, Spin::NONE));
        client.write_all(b"BSH").await.unwrap();
        drop(client);
        assert!(server.await.unwrap().is_err());
    }
}
