//! Point-to-point RPC and streaming over any transport, codec and
//! authenticator, on tower.
//!
//! - [`Router`] maps method names to handler services; it is a
//!   `tower::Service` itself, so middleware wraps one method or all.
//! - [`Server`] accepts connections, authenticates them and serves a router.
//! - [`Client`] multiplexes calls, notifications and streams on one
//!   connection, and is a `tower::Service<Call>` for client middleware.
//!
//! The wire protocol is symmetric: a handler calls back the client that
//! called it through [`Request::peer`], and a client serves methods with
//! [`ClientBuilder::serve`].

mod call_stream;
mod client;
mod closed;
mod connect;
mod driver;
mod frames;
mod handler;
mod router;
mod server;
mod stream_task;

pub use call_stream::CallStream;
pub(crate) use client::within;
pub use client::{
    Call, Client, DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_QUEUED_NOTIFICATIONS, DEFAULT_STREAM_WINDOW,
};
pub use connect::ClientBuilder;
#[cfg(all(feature = "srb", target_os = "linux"))]
pub(crate) use driver::guarded;
pub(crate) use driver::Outgoing;
pub(crate) use frames::SharedFrames;
pub(crate) use handler::{StreamFn, UnaryFn};
pub use router::{CallKind, PayloadStream, Reply, Request, Router};
pub(crate) use router::{PassTo, Retry};
pub use server::{
    Server, ServerBuilder, ServerHandle, DEFAULT_DRAIN_TIMEOUT, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_HANDLERS,
};
