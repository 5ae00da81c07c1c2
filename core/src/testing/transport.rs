//! The [`Transport`] conformance suite: one generic body that checks every
//! promise of the trait's contract, so each transport proves the same
//! behaviour the layers above rely on instead of re-testing it by hand.
//!
//! Every step is bounded by a timeout, so a transport that hangs fails with
//! a message naming the step instead of stalling the test run.

use std::{future::Future, io, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    task::JoinSet,
};

use crate::{Address, Error, Listener, PeerInfo, Transport};

/// Time allowed for one ordinary step (a bind, a connect, a short exchange).
const STEP: Duration = Duration::from_secs(10);
/// Time allowed for the steps that move a lot of data or many connections.
const HEAVY_STEP: Duration = Duration::from_secs(60);
/// Connections open at once in the concurrency check.
const CONNECTIONS: usize = 50;
/// Bytes each side writes in the full-duplex check: far more than any
/// socket or pipe buffer, so a transport that needs the peer to stop
/// writing before it can read deadlocks here.
const DUPLEX_BYTES: usize = 4 << 20;

/// Run the whole [`Transport`] contract against `transport`.
///
/// `addr` must return a fresh address nobody listens on, with the
/// transport's scheme, each time it is called (a new file name, a new
/// in-memory name, or a port-0 TCP address). The suite binds those
/// addresses and then works with [`Listener::local_addr`], so port 0 is fine.
///
/// It checks, in order, each with a clear panic message on failure:
/// - bind, then connect to `local_addr`: bytes travel both ways in order,
///   unaltered, and the listener reports a non-empty peer description;
/// - connect to an address nobody listens on fails promptly with
///   [`Error::Transport`];
/// - binding an address a live listener holds fails with
///   [`Error::Transport`] of kind [`io::ErrorKind::AddrInUse`], and leaves
///   the live listener working (it may have been sent probe connections
///   that close at once; the suite skips those);
/// - 50 concurrent connections each echo their own distinct data;
/// - dropping either end makes the other read EOF or an error;
/// - dropping the listener (after it served a connection) frees the
///   address: it can be bound again, and once that listener is dropped too,
///   connecting fails with [`Error::Transport`];
/// - both ends writing 4 MiB at once while also reading never deadlocks;
/// - an address of another scheme is refused with [`Error::Address`] by
///   both `connect` and `bind`.
///
/// Call it from an async test; it spawns tasks on the current runtime.
///
/// ```no_run
/// # use std::sync::atomic::{AtomicUsize, Ordering};
/// use busline_core::{testing::transport_conformance, Address, MemoryTransport};
///
/// # #[tokio::main] async fn main() {
/// static NEXT: AtomicUsize = AtomicUsize::new(0);
/// let fresh = || Address::memory(format!("conf-{}", NEXT.fetch_add(1, Ordering::Relaxed)));
/// transport_conformance(MemoryTransport::new(), fresh).await;
/// # }
/// ```
pub async fn transport_conformance<T: Transport>(transport: T, addr: impl Fn() -> Address) {
    let transport = Arc::new(transport);
    round_trip(&*transport, &addr).await;
    connect_to_unbound_address_fails(&*transport, &addr).await;
    bind_twice_is_addr_in_use(&*transport, &addr).await;
    concurrent_connections(&transport, &addr).await;
    dropping_one_end_gives_eof(&*transport, &addr).await;
    dropping_listener_frees_address(&*transport, &addr).await;
    full_duplex(&*transport, &addr).await;
    other_scheme_is_refused(&*transport).await;
}

/// Await `fut`, panicking with `what` if it takes longer than `limit`.
async fn within<F: Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(out) => out,
        Err(_) => panic!("transport conformance: {what} did not finish within {limit:?} (hang?)"),
    }
}

async fn bind<T: Transport>(t: &T, addr: &Address, why: &str) -> T::Listener {
    match within(STEP, &format!("bind {addr} ({why})"), t.bind(addr)).await {
        Ok(listener) => listener,
        Err(e) => panic!("transport conformance: bind {addr} ({why}) failed: {e}"),
    }
}

/// Connect and accept at the same time (some transports only finish a
/// connect once the listener accepts it).
async fn pair<T: Transport>(
    t: &T,
    listener: &mut T::Listener,
    why: &str,
) -> (T::Io, T::Io, PeerInfo) {
    let addr = listener.local_addr();
    let (client, accepted) = within(
        STEP,
        &format!("connect to and accept on {addr} ({why})"),
        async { tokio::join!(t.connect(&addr), listener.accept()) },
    )
    .await;
    let client = client
        .unwrap_or_else(|e| panic!("transport conformance: connect to {addr} ({why}) failed: {e}"));
    let (server, peer) = accepted
        .unwrap_or_else(|e| panic!("transport conformance: accept on {addr} ({why}) failed: {e}"));
    (client, server, peer)
}

/// Byte `i` of a stream seeded with `seed`: position-dependent, so lost,
/// repeated or reordered bytes show up as a mismatch.
fn pattern(seed: u8, i: usize) -> u8 {
    ((i % 251) as u8)
        .wrapping_add(((i / 251) % 253) as u8)
        .wrapping_add(seed)
}

/// Write `len` pattern bytes in chunks of uneven sizes.
async fn write_pattern<W: AsyncWrite + Unpin>(w: &mut W, seed: u8, len: usize) -> io::Result<()> {
    let mut sent = 0;
    let mut chunk = 1;
    while sent < len {
        let n = chunk.min(len - sent);
        let buf: Vec<u8> = (sent..sent + n).map(|i| pattern(seed, i)).collect();
        w.write_all(&buf).await?;
        sent += n;
        chunk = (chunk * 7 + 13) % (64 * 1024) + 1;
    }
    w.flush().await
}

/// Read exactly `len` pattern bytes, failing at the first wrong one.
async fn read_pattern<R: AsyncRead + Unpin>(r: &mut R, seed: u8, len: usize, who: &str) {
    let mut buf = vec![0; 64 * 1024];
    let mut got = 0;
    while got < len {
        let want = buf.len().min(len - got);
        let n = match r.read(&mut buf[..want]).await {
            Ok(0) => panic!("transport conformance: {who}: EOF after {got} of {len} bytes"),
            Ok(n) => n,
            Err(e) => panic!("transport conformance: {who}: read failed after {got} bytes: {e}"),
        };
        for (k, &b) in buf[..n].iter().enumerate() {
            let expected = pattern(seed, got + k);
            assert_eq!(
                b,
                expected,
                "transport conformance: {who}: byte {} altered or out of order",
                got + k
            );
        }
        got += n;
    }
}

/// Write `len` bytes to `io` while reading `len` bytes from it.
async fn exchange<I: AsyncRead + AsyncWrite + Unpin>(
    io: &mut I,
    (send_seed, recv_seed): (u8, u8),
    len: usize,
    who: &str,
) {
    let (mut r, mut w) = tokio::io::split(io);
    let write = async {
        write_pattern(&mut w, send_seed, len)
            .await
            .unwrap_or_else(|e| panic!("transport conformance: {who}: write failed: {e}"))
    };
    tokio::join!(write, read_pattern(&mut r, recv_seed, len, who));
}

async fn round_trip<T: Transport>(t: &T, addr: &impl Fn() -> Address) {
    let mut listener = bind(t, &addr(), "round trip").await;
    let local = listener.local_addr();
    assert_eq!(
        local.scheme(),
        t.scheme(),
        "transport conformance: local_addr {local} has another scheme than the transport"
    );
    let (mut client, mut server, peer) = pair(t, &mut listener, "round trip").await;
    assert!(
        !peer.description.is_empty(),
        "transport conformance: accept returned an empty PeerInfo description"
    );
    let len = 200 * 1024;
    within(
        STEP,
        "client → server then server → client, 200 KiB each",
        async {
            tokio::join!(
                write_pattern(&mut client, 1, len),
                read_pattern(&mut server, 1, len, "server reading client bytes")
            )
            .0
            .expect("transport conformance: client write failed");
            tokio::join!(
                write_pattern(&mut server, 2, len),
                read_pattern(&mut client, 2, len, "client reading server bytes")
            )
            .0
            .expect("transport conformance: server write failed");
        },
    )
    .await;
}

async fn connect_to_unbound_address_fails<T: Transport>(t: &T, addr: &impl Fn() -> Address) {
    let unbound = addr();
    let what = format!("connect to unbound {unbound}");
    match within(STEP, &what, t.connect(&unbound)).await {
        Err(Error::Transport(_)) => {}
        Err(other) => {
            panic!("transport conformance: {what}: expected Error::Transport, got {other:?}")
        }
        Ok(_) => panic!("transport conformance: {what} succeeded, but nobody listens there"),
    }
}

async fn bind_twice_is_addr_in_use<T: Transport>(t: &T, addr: &impl Fn() -> Address) {
    let mut first = bind(t, &addr(), "first of two binds").await;
    let held = first.local_addr();
    let what = format!("second bind of {held} while a live listener holds it");
    match within(STEP, &what, t.bind(&held)).await {
        Err(Error::Transport(e)) => assert_eq!(
            e.kind(),
            io::ErrorKind::AddrInUse,
            "transport conformance: {what}: expected kind AddrInUse, got {e}"
        ),
        Err(other) => {
            panic!("transport conformance: {what}: expected Error::Transport, got {other:?}")
        }
        Ok(_) => panic!("transport conformance: {what} succeeded; it must fail with AddrInUse"),
    }
    // The refused bind must not have disturbed the live listener. It may
    // have probed it, though (the Unix transport connects to tell a live
    // socket from a stale file), so connections that close without a word
    // are skipped.
    const GREETING: &[u8] = b"still listening after a refused bind";
    let client = async {
        let mut io = t.connect(&held).await.unwrap_or_else(|e| {
            panic!("transport conformance: connect to {held} after a refused bind failed: {e}")
        });
        io.write_all(GREETING).await.unwrap_or_else(|e| {
            panic!("transport conformance: write after a refused bind failed: {e}")
        });
        let mut back = [0; GREETING.len()];
        io.read_exact(&mut back).await.unwrap_or_else(|e| {
            panic!("transport conformance: read after a refused bind failed: {e}")
        });
        assert_eq!(
            back, GREETING,
            "transport conformance: echo after a refused bind"
        );
    };
    let server = async {
        for _ in 0..3 {
            let (mut io, _) = first.accept().await.unwrap_or_else(|e| {
                panic!("transport conformance: accept after a refused bind failed: {e}")
            });
            let mut buf = [0; GREETING.len()];
            if io.read_exact(&mut buf).await.is_ok() {
                io.write_all(&buf).await.unwrap_or_else(|e| {
                    panic!("transport conformance: echo after a refused bind failed: {e}")
                });
                return;
            }
        }
        panic!("transport conformance: the live listener accepted only empty connections after a refused bind");
    };
    within(
        STEP,
        "exchange on the live listener after a refused bind",
        async { tokio::join!(client, server) },
    )
    .await;
}

async fn echo<I: AsyncRead + AsyncWrite + Unpin>(mut io: I) {
    let mut buf = vec![0; 16 * 1024];
    loop {
        match io.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if io.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn concurrent_connections<T: Transport>(t: &Arc<T>, addr: &impl Fn() -> Address) {
    let mut listener = bind(&**t, &addr(), "concurrent connections").await;
    let local = listener.local_addr();
    let mut tasks = JoinSet::new();
    tasks.spawn(async move {
        let mut echoes = JoinSet::new();
        for i in 0..CONNECTIONS {
            match listener.accept().await {
                Ok((io, _)) => echoes.spawn(echo(io)),
                Err(e) => panic!("transport conformance: accept #{i} of {CONNECTIONS} failed: {e}"),
            };
        }
        while echoes.join_next().await.is_some() {}
    });
    for i in 0..CONNECTIONS {
        let (t, local) = (Arc::clone(t), local.clone());
        tasks.spawn(async move {
            let mut io = t.connect(&local).await.unwrap_or_else(|e| {
                panic!("transport conformance: connection #{i} to {local} failed: {e}")
            });
            let data: Vec<u8> = format!("connection {i} says hello; ")
                .into_bytes()
                .into_iter()
                .cycle()
                .take(1000 + 997 * i)
                .collect();
            let (mut r, mut w) = tokio::io::split(&mut io);
            let mut back = vec![0; data.len()];
            let (written, read) = tokio::join!(w.write_all(&data), r.read_exact(&mut back));
            written
                .unwrap_or_else(|e| panic!("transport conformance: connection #{i}: write: {e}"));
            read.unwrap_or_else(|e| panic!("transport conformance: connection #{i}: read: {e}"));
            assert!(
                back == data,
                "transport conformance: connection #{i} got back other bytes than it sent \
                 (connections are not independent)"
            );
        });
    }
    within(HEAVY_STEP, "50 concurrent echo connections", async {
        while let Some(done) = tasks.join_next().await {
            if let Err(e) = done {
                if e.is_panic() {
                    std::panic::resume_unwind(e.into_panic());
                }
                panic!("transport conformance: a connection task failed: {e}");
            }
        }
    })
    .await;
}

/// Read from `io` until EOF or an error; panic if data arrives instead.
async fn expect_eof<I: AsyncRead + Unpin>(io: &mut I, who: &str) {
    let mut buf = [0; 64];
    let what = format!("{who} reading after its peer was dropped");
    match within(STEP, &what, io.read(&mut buf)).await {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("transport conformance: {what}: got {n} bytes instead of EOF"),
    }
}

async fn dropping_one_end_gives_eof<T: Transport>(t: &T, addr: &impl Fn() -> Address) {
    let mut listener = bind(t, &addr(), "drop one end").await;
    let (client, mut server, _) = pair(t, &mut listener, "client dropped").await;
    drop(client);
    expect_eof(&mut server, "server").await;
    let (mut client, server, _) = pair(t, &mut listener, "server dropped").await;
    drop(server);
    expect_eof(&mut client, "client").await;
}

async fn dropping_listener_frees_address<T: Transport>(t: &T, addr: &impl Fn() -> Address) {
    let mut listener = bind(t, &addr(), "listener to be dropped").await;
    let local = listener.local_addr();
    // Serve one connection first: a restarted server must be able to rebind
    // even though its old connections have just closed.
    let (mut client, mut server, _) = pair(t, &mut listener, "before dropping the listener").await;
    within(STEP, "exchange before dropping the listener", async {
        tokio::join!(
            exchange(&mut client, (5, 6), 1024, "client before listener drop"),
            exchange(&mut server, (6, 5), 1024, "server before listener drop"),
        )
    })
    .await;
    drop((client, server));
    drop(listener);

    let mut again = bind(t, &local, "rebind after the listener was dropped").await;
    let (mut client, mut server, _) = pair(t, &mut again, "on the rebound address").await;
    within(STEP, "exchange on the rebound address", async {
        tokio::join!(
            exchange(&mut client, (7, 8), 1024, "client on rebound address"),
            exchange(&mut server, (8, 7), 1024, "server on rebound address"),
        )
    })
    .await;
    drop((client, server));
    drop(again);

    let what = format!("connect to {local} after its listener was dropped");
    match within(STEP, &what, t.connect(&local)).await {
        Err(Error::Transport(_)) => {}
        Err(other) => {
            panic!("transport conformance: {what}: expected Error::Transport, got {other:?}")
        }
        Ok(_) => panic!("transport conformance: {what} succeeded; the address was not released"),
    }
}

async fn full_duplex<T: Transport>(t: &T, addr: &impl Fn() -> Address) {
    let mut listener = bind(t, &addr(), "full duplex").await;
    let (mut client, mut server, _) = pair(t, &mut listener, "full duplex").await;
    within(
        HEAVY_STEP,
        "both ends writing 4 MiB at once while reading (deadlock?)",
        async {
            tokio::join!(
                exchange(&mut client, (9, 10), DUPLEX_BYTES, "client in full duplex"),
                exchange(&mut server, (10, 9), DUPLEX_BYTES, "server in full duplex"),
            )
        },
    )
    .await;
}

async fn other_scheme_is_refused<T: Transport>(t: &T) {
    let foreign = if t.scheme() == "memory" {
        Address::tcp("127.0.0.1", 1)
    } else {
        Address::memory("conformance-foreign-scheme")
    };
    let what = format!("connect to {foreign} with the {} transport", t.scheme());
    match within(STEP, &what, t.connect(&foreign)).await {
        Err(Error::Address { .. }) => {}
        Err(other) => {
            panic!("transport conformance: {what}: expected Error::Address, got {other:?}")
        }
        Ok(_) => panic!("transport conformance: {what} succeeded; it must be refused"),
    }
    let what = format!("bind {foreign} with the {} transport", t.scheme());
    match within(STEP, &what, t.bind(&foreign)).await {
        Err(Error::Address { .. }) => {}
        Err(other) => {
            panic!("transport conformance: {what}: expected Error::Address, got {other:?}")
        }
        Ok(_) => panic!("transport conformance: {what} succeeded; it must be refused"),
    }
}
