//! The core of [busline](https://docs.rs/busline): the traits every layer
//! plugs into, the message envelope, errors, addresses and the in-memory
//! transport.
//!
//! - [`Transport`] knows bytes: connect, bind, accept.
//! - [`Codec`] knows frames: [`Message`] ⇄ bytes, with a hard size limit.
//! - [`Authenticator`] knows identities: a handshake on a fresh connection.
//!
//! Nothing here knows about calls; the RPC layer in `busline` does.
//!
//! ```
//! use busline_core::{Address, Listener, MemoryTransport, Transport};
//!
//! # tokio_test::block_on(async {
//! let transport = MemoryTransport::new();
//! let addr: Address = "memory://core-doc".parse()?;
//! let listener = transport.bind(&addr).await?;
//! let _client = transport.connect(&listener.local_addr()).await?;
//! # Ok::<(), busline_core::Error>(())
//! # }).unwrap();
//! ```
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![forbid(unsafe_code)]

mod address;
pub mod auth;
mod codec;
mod error;
mod memory;
mod message;
mod payload;
mod spin;
#[cfg(feature = "testing")]
pub mod testing;
mod transport;

pub use address::{Address, Endpoint};
pub use auth::{
    handshake, AuthChannel, Authenticator, Identity, NoAuth, PeerAllowList, SharedSecret,
    DEFAULT_HANDSHAKE_TIMEOUT,
};
pub use codec::{Codec, Splices, DEFAULT_MAX_FRAME_SIZE};
pub use error::{short_type_name, Error, ErrorCode, RemoteError, Result};
pub use memory::{MemoryListener, MemoryTransport};
pub use message::{Message, PROTOCOL_VERSION};
pub use payload::{Encoding, Payload};
pub use spin::Spin;
pub use transport::{
    expect_scheme, AnyTransport, BoxIo, BoxListener, Io, Listener, PeerCredentials, PeerInfo,
    Transport,
};
