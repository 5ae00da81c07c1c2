//! busline: inter-process communication for Rust.
//!
//! One set of traits — [`Transport`], [`Codec`], [`Authenticator`] — plugs
//! into one tower-based RPC and streaming layer ([`rpc`]). The same service
//! code runs over a Unix socket, FIFOs, shared memory, TCP, TLS or an
//! in-memory pipe, with JSON-line, JSON-RPC or CBOR on the wire, with or
//! without authentication.
//!
//! ```
//! use busline::{rpc::{Client, Router, Server}, Address, CborCodec, MemoryTransport};
//! use futures::{stream, StreamExt};
//!
//! # tokio_test::block_on(async {
//! let router = Router::new()
//!     .unary("add", |(a, b): (i64, i64)| async move { Ok::<_, String>(a + b) })
//!     .stream("count", |n: u64| stream::iter((0..n).map(Ok::<_, String>)));
//!
//! // Swap MemoryTransport for UnixTransport or TcpTransport: nothing else changes.
//! let addr = Address::memory("crate-doc");
//! let server = Server::builder(router, CborCodec::new()).bind(&MemoryTransport::new(), &addr).await?;
//! let client = Client::builder(CborCodec::new()).connect(&MemoryTransport::new(), &addr).await?;
//!
//! assert_eq!(client.call::<_, i64>("add", &(2, 3)).await?, 5);
//! let items: Vec<u64> = client.stream::<_, u64>("count", &3).await?.map(Result::unwrap).collect().await;
//! assert_eq!(items, [0, 1, 2]);
//! server.shutdown().await;
//! # Ok::<(), busline::Error>(())
//! # }).unwrap();
//! ```
//!
//! Cargo features (all on by default): `unix`, `fifo`, `shm`, `tcp`, `tls` (transports),
//! `jsonline`, `jsonrpc`, `cbor` (codecs), `srb` (serving shm-rpc-bridge's Python
//! clients, Linux), `comm-ipc` (a broker listener for comm-ipc's Python clients),
//! `gateway` (HTTP in front of a broker, on axum), `nats` (the NATS backbone
//! between brokers), `cli` (the `busline` program).
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![forbid(unsafe_code)]

#[cfg(feature = "nats")]
pub mod backbone;
pub mod bridge;
pub mod broker;
pub mod codec;
#[cfg(feature = "comm-ipc")]
pub mod comm_ipc;
#[cfg(unix)]
pub mod daemon;
#[cfg(feature = "gateway")]
pub mod gateway;
pub mod rpc;
#[cfg(all(feature = "srb", target_os = "linux"))]
pub mod srb;

pub use busline_core::{
    auth, handshake, Address, AnyTransport, AuthChannel, Authenticator, BoxIo, BoxListener, Codec,
    Encoding, Endpoint, Error, ErrorCode, Identity, Io, Listener, MemoryListener, MemoryTransport,
    Message, NoAuth, Payload, PeerAllowList, PeerCredentials, PeerInfo, RemoteError, Result,
    SharedSecret, Spin, Splices, Transport, DEFAULT_MAX_FRAME_SIZE, PROTOCOL_VERSION,
};

#[cfg(feature = "cbor")]
pub use busline_cbor::CborCodec;
#[cfg(all(feature = "fifo", any(target_os = "linux", target_os = "android")))]
pub use busline_fifo::{FifoChannel, FifoReceiver, FifoTransport};
#[cfg(feature = "jsonline")]
pub use busline_jsonline::{JsonLineCodec, PlainJsonLineCodec};
#[cfg(feature = "jsonrpc")]
pub use busline_jsonrpc::{Framing as JsonRpcFraming, JsonRpcCodec};
#[cfg(all(feature = "shm", any(target_os = "linux", target_os = "android")))]
pub use busline_shm::{ShmStream, ShmTransport};
#[cfg(feature = "tcp")]
pub use busline_tcp::TcpTransport;
#[cfg(feature = "tls")]
pub use busline_tls::TlsTransport;
#[cfg(feature = "unix")]
pub use busline_unix::UnixTransport;

/// Every transport this build has, chosen by URL scheme at run time.
///
/// ```
/// let schemes = busline::any_transport().schemes();
/// assert!(schemes.contains(&"memory"));
/// ```
pub fn any_transport() -> AnyTransport {
    let any = AnyTransport::new().with(MemoryTransport::new());
    #[cfg(feature = "unix")]
    let any = any.with(UnixTransport::new());
    #[cfg(all(feature = "fifo", any(target_os = "linux", target_os = "android")))]
    let any = any.with(FifoTransport::new());
    #[cfg(all(feature = "shm", any(target_os = "linux", target_os = "android")))]
    let any = any.with(ShmTransport::new());
    #[cfg(feature = "tcp")]
    let any = any.with(TcpTransport::new());
    #[cfg(feature = "tls")]
    let any = any.with(TlsTransport::new());
    any
}
