//! The envelope every codec carries.
//!
//! Calls are multiplexed on one connection by `id`. An id belongs to the side
//! that started the call, and the message type says which way it flows, so
//! both sides can call each other on one connection without id clashes:
//!
//! - the caller sends [`Message::Request`], [`Message::Notify`],
//!   [`Message::OpenStream`], [`Message::Credit`] and [`Message::Cancel`];
//! - the callee answers with [`Message::Reply`], [`Message::Error`],
//!   [`Message::Item`] and [`Message::End`].
//!
//! [`Message::Hello`], [`Message::Auth`] and [`Message::Welcome`] only occur
//! during the connection handshake; [`Message::Close`] may end a connection
//! at any time and says why. [`Message::Rejected`] never crosses the wire: a
//! decoder produces it for a call it could not read.

use serde::{Deserialize, Serialize};

use crate::{Payload, RemoteError};

/// Protocol version spoken by this build, sent in [`Message::Hello`].
pub const PROTOCOL_VERSION: u32 = 1;

/// One frame's worth of protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Message {
    /// First frame from a client: protocol version and authentication scheme.
    Hello {
        /// [`PROTOCOL_VERSION`] of the client.
        version: u32,
        /// [`crate::Authenticator::scheme`] the client will run.
        scheme: String,
    },
    /// One step of the authentication exchange; content is scheme-defined.
    Auth {
        /// Scheme-defined content.
        payload: Payload,
    },
    /// The server accepted the handshake; calls may flow.
    Welcome {
        /// [`PROTOCOL_VERSION`] of the server.
        version: u32,
    },
    /// A call that expects exactly one [`Message::Reply`] or [`Message::Error`].
    Request {
        /// Caller-chosen id, unique among the caller's open calls.
        id: u64,
        /// Method name.
        method: String,
        /// Arguments.
        payload: Payload,
        /// Time the caller will still wait, in milliseconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
    /// A call that expects no answer at all, not even on error.
    Notify {
        /// Method name.
        method: String,
        /// Arguments.
        payload: Payload,
    },
    /// A call answered by any number of [`Message::Item`]s, then
    /// [`Message::End`] or [`Message::Error`].
    OpenStream {
        /// Caller-chosen id.
        id: u64,
        /// Method name.
        method: String,
        /// Arguments.
        payload: Payload,
        /// Items the callee may send before waiting for [`Message::Credit`].
        credit: u32,
        /// Time the caller will still wait, in milliseconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
    /// The successful result of a [`Message::Request`].
    Reply {
        /// The request's id.
        id: u64,
        /// The result.
        payload: Payload,
    },
    /// The failure of a request or a stream.
    Error {
        /// The call's id.
        id: u64,
        /// What went wrong.
        error: RemoteError,
    },
    /// One item of a stream.
    Item {
        /// The stream's id.
        id: u64,
        /// The item.
        payload: Payload,
    },
    /// A stream finished successfully.
    End {
        /// The stream's id.
        id: u64,
    },
    /// The receiver of a stream allows `credit` more items.
    Credit {
        /// The stream's id.
        id: u64,
        /// Additional items allowed.
        credit: u32,
    },
    /// The caller gave up on a call or stream; the callee drops its work.
    Cancel {
        /// The call's id.
        id: u64,
    },
    /// The sender is closing the connection; `error` says why, if not normal.
    Close {
        /// Why, when the close is not a normal shutdown.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<RemoteError>,
    },
    /// Not a wire message: a decoder's report that the peer sent a call it
    /// could not read (JSON-RPC's "invalid request"). The connection answers
    /// with `Error { id, error }` and carries on; the codec chose `id` and
    /// knows how to address that answer.
    Rejected {
        /// The id the answer goes to.
        id: u64,
        /// What was wrong with the call.
        error: RemoteError,
    },
}

impl Message {
    /// The call id this message belongs to, if it belongs to a call.
    pub fn id(&self) -> Option<u64> {
        match self {
            Message::Request { id, .. }
            | Message::OpenStream { id, .. }
            | Message::Reply { id, .. }
            | Message::Error { id, .. }
            | Message::Item { id, .. }
            | Message::End { id }
            | Message::Credit { id, .. }
            | Message::Cancel { id }
            | Message::Rejected { id, .. } => Some(*id),
            Message::Hello { .. }
            | Message::Auth { .. }
            | Message::Welcome { .. }
            | Message::Notify { .. }
            | Message::Close { .. } => None,
        }
    }

    /// A short name for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::Auth { .. } => "auth",
            Message::Welcome { .. } => "welcome",
            Message::Request { .. } => "request",
            Message::Notify { .. } => "notify",
            Message::OpenStream { .. } => "open_stream",
            Message::Reply { .. } => "reply",
            Message::Error { .. } => "error",
            Message::Item { .. } => "item",
            Message::End { .. } => "end",
            Message::Credit { .. } => "credit",
            Message::Cancel { .. } => "cancel",
            Message::Close { .. } => "close",
            Message::Rejected { .. } => "rejected",
        }
    }
}
