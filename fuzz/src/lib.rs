//! The checks behind busline's fuzz targets, one function per input
//! surface. Each takes the fuzzer's bytes, feeds them to busline the way a
//! hostile peer would, and panics only when busline breaks a promise: a
//! panic inside busline, a hang, an answer it should never give (a forged
//! handshake accepted), or a broker that stops serving others.
//!
//! `tests/fuzz_corpus.rs` in the main workspace includes this file and runs
//! every checked-in corpus and regression input through the same checks, so
//! a crash found once stays fixed under a plain `cargo test`.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use busline::{
    broker::Broker,
    handshake,
    rpc::{CallKind, Client, Reply, Request, Router},
    Address, CborCodec, Codec, Encoding, Error, JsonLineCodec, JsonRpcCodec, MemoryTransport,
    Message, Payload, PeerInfo, SharedSecret, Transport,
};
use bytes::BytesMut;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::Framed;

/// The frame limit the decoders run with: small, so the fuzzer reaches it.
const LIMIT: usize = 4096;

/// Which codec a decoder check runs.
#[derive(Debug, Clone, Copy)]
pub enum Wire {
    /// JSON lines.
    JsonLine,
    /// JSON-RPC 2.0, framing (lines or `Content-Length:` headers)
    /// detected from the first bytes, as a server does.
    JsonRpc,
    /// CBOR with a length prefix.
    Cbor,
}

/// Messages decoded from `bytes` fed `chunk` bytes at a time, and whether
/// decoding ended in an error.
type Decoded = (Vec<Message>, bool);

fn decode_all<C: Codec>(codec: &mut C, bytes: &[u8], chunk: usize) -> Decoded {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in bytes.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(msg)) => out.push(msg),
                Ok(None) => break,
                Err(_) => return (out, true),
            }
        }
    }
    loop {
        match codec.decode_eof(&mut buf) {
            Ok(Some(msg)) => out.push(msg),
            Ok(None) => return (out, false),
            Err(_) => return (out, true),
        }
    }
}

/// Decode `bytes` whole and in chunks (sized by the first byte): the same
/// messages and the same verdict either way, since a network splits a
/// stream anywhere. Then every message read must be answerable or, for a
/// stateless codec, must encode back to bytes that decode to itself.
pub fn decode(wire: Wire, bytes: &[u8]) {
    match wire {
        Wire::JsonLine => decode_with(&JsonLineCodec::with_max_frame_size(LIMIT), bytes, true),
        Wire::Cbor => decode_with(&CborCodec::with_max_frame_size(LIMIT), bytes, true),
        Wire::JsonRpc => decode_with(&JsonRpcCodec::with_max_frame_size(LIMIT), bytes, false),
    }
}

fn decode_with<C: Codec>(codec: &C, bytes: &[u8], stateless: bool) {
    let chunk = bytes.first().map_or(1, |&b| usize::from(b % 64) + 1);
    let mut server = codec.clone();
    let whole = decode_all(&mut server, bytes, usize::MAX);
    let split = decode_all(&mut codec.clone(), bytes, chunk);
    assert_eq!(
        whole, split,
        "decoding in chunks of {chunk} changed the result"
    );

    // The codec that read the calls can answer each one.
    let mut out = BytesMut::new();
    for msg in &whole.0 {
        let answer = match msg {
            Message::Request { id, .. } => Message::Reply {
                id: *id,
                payload: Payload::unit(),
            },
            Message::OpenStream { id, .. } => Message::End { id: *id },
            Message::Rejected { id, error } => Message::Error {
                id: *id,
                error: error.clone(),
            },
            _ => continue,
        };
        match server.encode(answer.clone(), &mut out) {
            // An id echoed back may not fit the small limit.
            Ok(()) | Err(Error::FrameTooLarge { .. }) => {}
            Err(e) => panic!("cannot answer {msg:?} with {answer:?}: {e}"),
        }
    }

    if stateless {
        for msg in whole.0 {
            if matches!(msg, Message::Rejected { .. }) {
                continue;
            }
            let mut buf = BytesMut::new();
            // Re-encoding may outgrow the limit (escapes): an error, not a bug.
            if codec.clone().encode(msg.clone(), &mut buf).is_err() {
                continue;
            }
            let back = decode_all(&mut codec.clone(), &buf, usize::MAX);
            assert_eq!(back, (vec![msg], false), "re-encoded message changed");
        }
    }
}

/// Feed `bytes` to a server's handshake (shared-secret authentication,
/// codec chosen by the first byte): it must refuse, never accept forged
/// input, and must end promptly.
pub fn handshake(bytes: &[u8]) {
    let Some((&pick, rest)) = bytes.split_first() else {
        return;
    };
    let runtime = runtime();
    runtime.block_on(async {
        match pick % 3 {
            0 => handshake_with(JsonLineCodec::new(), rest).await,
            1 => handshake_with(JsonRpcCodec::new(), rest).await,
            _ => handshake_with(CborCodec::new(), rest).await,
        }
    });
}

async fn handshake_with<C: Codec>(codec: C, bytes: &[u8]) {
    let (mut peer, server) = tokio::io::duplex(1 << 20);
    peer.write_all(bytes).await.expect("duplex takes the input");
    peer.shutdown().await.expect("duplex shuts down");
    let mut framed = Framed::new(server, codec);
    let secret = SharedSecret::new("a fuzzing secret, long enough").expect("a valid secret");
    let result = handshake::server(
        &mut framed,
        &secret,
        PeerInfo::described("fuzzer"),
        Duration::from_secs(5),
    )
    .await;
    assert!(result.is_err(), "the handshake accepted forged input");
}

/// Run a broker and throw `bytes` at it, then check it still serves a
/// well-behaved client and shuts down.
///
/// The first byte picks the form. Raw: the rest goes as it is down a
/// JSON-line or CBOR connection. Calls: the rest is lines `N method args`
/// sent by client N (0 or 1, both answering every call they are routed
/// with an echo) as unary calls; `N ~method args` opens a stream and
/// `N !method args` sends a notification. Time is simulated, so a deadlock
/// is a hang the fuzzer reports, and timeouts cost nothing.
pub fn broker(bytes: &[u8]) {
    let Some((&pick, rest)) = bytes.split_first() else {
        return;
    };
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = format!("fuzz-broker-{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let (json, cbor) = (
        Address::memory(format!("{name}-json")),
        Address::memory(format!("{name}-cbor")),
    );
    runtime().block_on(async {
        let handle = Broker::builder()
            .listen(MemoryTransport::new(), json.clone(), JsonLineCodec::new())
            .listen(MemoryTransport::new(), cbor.clone(), CborCodec::new())
            .start()
            .await
            .expect("the broker starts");
        match pick % 3 {
            0 => raw(&json, rest).await,
            1 => raw(&cbor, rest).await,
            _ => calls(&json, rest).await,
        }
        let witness = Client::builder(JsonLineCodec::new())
            .timeout(Duration::from_secs(5))
            .connect(&MemoryTransport::new(), &json)
            .await
            .expect("the broker still accepts connections");
        witness
            .call_raw("busline.status", Payload::unit())
            .await
            .expect("the broker still answers");
        handle.shutdown().await;
    });
}

async fn raw(addr: &Address, bytes: &[u8]) {
    let mut io = MemoryTransport::new()
        .connect(addr)
        .await
        .expect("the broker listens");
    // The broker may close first, having refused the input: that is fine.
    let _ = io.write_all(bytes).await;
    let _ = io.shutdown().await;
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), io.read_to_end(&mut sink)).await;
}

async fn calls(addr: &Address, script: &[u8]) {
    let echo = tower::service_fn(|req: Request| async move {
        Ok::<_, Error>(match req.kind {
            CallKind::Stream => Reply::Stream(Box::pin(futures::stream::iter([
                Ok(req.payload.clone()),
                Ok(req.payload),
            ]))),
            _ => Reply::Unary(req.payload),
        })
    });
    let mut clients = Vec::new();
    for _ in 0..2 {
        clients.push(
            Client::builder(JsonLineCodec::new())
                .timeout(Duration::from_secs(1))
                .serve(Router::new().fallback(echo))
                .connect(&MemoryTransport::new(), addr)
                .await
                .expect("the broker listens"),
        );
    }
    for line in String::from_utf8_lossy(script).lines().take(64) {
        let mut words = line.splitn(3, ' ');
        let (who, method) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let args = words.next().unwrap_or("null");
        let client = &clients[usize::from(who == "1")];
        let payload = Payload::from_bytes(Encoding::Json, args.as_bytes().to_vec());
        if let Some(method) = method.strip_prefix('~') {
            if let Ok(mut items) = client.stream_payloads(method, payload).await {
                let mut taken = 0;
                while let Ok(Some(_)) =
                    tokio::time::timeout(Duration::from_secs(1), items.next()).await
                {
                    taken += 1;
                    if taken == 16 {
                        break;
                    }
                }
            }
        } else if let Some(method) = method.strip_prefix('!') {
            let _ = client.notify_raw(method, payload).await;
        } else {
            let _ = client.call_raw(method, payload).await;
        }
    }
}

/// A hostile client of the shared-memory transport: it fills the memory it
/// hands the server with `bytes` (ring positions, flags and data, from
/// offset 0), completes the handshake and hangs up. The server must read
/// and write through it to an end or a typed error, without a panic,
/// a fault or a hang.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub fn shm_ring(bytes: &[u8]) {
    use std::os::fd::AsFd;

    use busline::{Listener, ShmTransport};
    use rustix::{
        fs::{MemfdFlags, SealFlags},
        net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags},
    };
    use tokio::io::AsyncReadExt;

    /// The ring size asked for: the smallest, so inputs cover it all.
    const RING: u64 = 4096;
    const REGION: usize = 2 * (4096 + RING as usize);

    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!("busline-fuzz-shm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let name = format!("ring{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let addr = Address::shm(&name).with_param("dir", dir.display().to_string());

    // The memory, filled with the input, sealed as the server demands.
    let memfd = rustix::fs::memfd_create("fuzz", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .expect("memfd");
    rustix::fs::ftruncate(&memfd, REGION as u64).expect("ftruncate");
    let input = &bytes[..bytes.len().min(REGION)];
    rustix::io::pwrite(&memfd, input, 0).expect("pwrite");
    rustix::fs::fcntl_add_seals(
        &memfd,
        SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
    )
    .expect("seals");
    let wake = || {
        rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::STREAM,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .expect("socketpair")
    };
    let (events, _kept) = {
        let ((a, b), (c, d)) = (wake(), wake());
        ([b, d], (a, c))
    };

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let shm = ShmTransport::new().spin(Duration::ZERO);
        let mut listener = shm.bind(&addr).await.expect("bind");
        let socket = std::os::unix::net::UnixStream::connect(dir.join(format!("{name}.shm")))
            .expect("connect");
        let mut hello = b"BSHM".to_vec();
        hello.extend_from_slice(&1u32.to_le_bytes());
        hello.extend_from_slice(&RING.to_le_bytes());
        let fds = [memfd.as_fd(), events[0].as_fd(), events[1].as_fd()];
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        control.push(SendAncillaryMessage::ScmRights(&fds));
        rustix::net::sendmsg(
            &socket,
            &[std::io::IoSlice::new(&hello)],
            &mut control,
            SendFlags::NOSIGNAL,
        )
        .expect("hello sent");
        let (mut server, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
            .await
            .expect("the handshake ends")
            .expect("a valid hello is accepted");
        // Hang up: the server now has only the memory and our death.
        drop(socket);
        let read = async {
            let mut sink = vec![0u8; 8192];
            while let Ok(n) = server.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("reading ends: data, then an end or an error");
        let write = tokio::io::AsyncWriteExt::write_all(&mut server, &[1u8; 3 * RING as usize]);
        let written = tokio::time::timeout(Duration::from_secs(10), write)
            .await
            .expect("writing ends: room, or an error once the peer is gone");
        assert!(
            written.is_err(),
            "wrote 12 KiB into a 4 KiB ring nobody reads"
        );
    });
}

/// Parse `bytes` as an address URL: an error or an address that prints as
/// a URL parsing back to itself.
pub fn address(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    if let Ok(addr) = text.parse::<Address>() {
        let printed = addr.to_string();
        let again: Address = printed
            .parse()
            .unwrap_or_else(|e| panic!("{text:?} printed as {printed:?}, which fails: {e}"));
        assert_eq!(again, addr, "{text:?} printed as {printed:?}");
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime")
}
