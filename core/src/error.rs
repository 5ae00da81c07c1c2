//! One error type for every layer, and its wire form.
//!
//! The categories are the ones users of the seed libraries already know
//! (timeout, method, transport, serialization, auth) plus the ones a
//! multiplexed protocol adds (frame too large, disconnected, protocol).
//! Every variant crosses the wire as a [`RemoteError`] with an
//! [`ErrorCode`], so a client sees the same variant the server produced.

use std::{fmt, io, sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};

/// Result alias used across busline.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong, by category.
///
/// `Error` is `Clone` so one connection failure can fail every call that was
/// in flight on it with the same cause.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The call's deadline passed before a reply arrived.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The server has no handler for this method.
    #[error("method not found: {0:?}")]
    MethodNotFound(String),
    /// The handler ran and returned an error (or panicked).
    #[error("handler failed ({kind}): {message}")]
    HandlerFailed {
        /// The handler's error message.
        message: String,
        /// The handler's error type, e.g. `std::num::ParseIntError` or `panic`.
        kind: String,
    },
    /// The byte stream failed: connect refused, reset, bind conflict, ...
    #[error("transport error: {0}")]
    Transport(Arc<io::Error>),
    /// A payload or frame could not be encoded or decoded.
    #[error("serialization error: {0}")]
    Serialization(String),
    /// The peer refused our credentials, or we refused the peer's.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// A frame exceeded the configured maximum size.
    #[error(
        "frame of {size} bytes exceeds the limit of {limit} bytes (raise it with `max_frame_size`)"
    )]
    FrameTooLarge {
        /// Size of the offending frame (at least this many bytes).
        size: usize,
        /// The limit in force.
        limit: usize,
    },
    /// The connection closed while the call was in flight, or before it started.
    #[error("disconnected: {0}")]
    Disconnected(String),
    /// The peer broke the protocol (garbage bytes, wrong message at the wrong time).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// An address URL could not be parsed or names an unsupported scheme.
    #[error("invalid address {url:?}: {reason}")]
    Address {
        /// The text that was given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The call was cancelled by the caller.
    #[error("cancelled")]
    Cancelled,
    /// A limit (in-flight calls, connections, queue depth) is reached and the
    /// peer chose to refuse rather than wait.
    #[error("overloaded: {0}")]
    Overloaded(String),
}

impl Error {
    /// Shorthand for a [`Error::HandlerFailed`] from any displayable error.
    pub fn handler<E: fmt::Display + ?Sized>(err: &E, kind: impl Into<String>) -> Self {
        Error::HandlerFailed {
            message: err.to_string(),
            kind: kind.into(),
        }
    }

    /// Shorthand for a [`Error::Transport`] built from an I/O error.
    pub fn transport(err: io::Error) -> Self {
        Error::Transport(Arc::new(err))
    }

    /// The wire code of this error's category.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Timeout(_) => ErrorCode::Timeout,
            Error::MethodNotFound(_) => ErrorCode::MethodNotFound,
            Error::HandlerFailed { .. } => ErrorCode::HandlerFailed,
            Error::Transport(_) => ErrorCode::Transport,
            Error::Serialization(_) => ErrorCode::Serialization,
            Error::Unauthorized(_) => ErrorCode::Unauthorized,
            Error::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            Error::Disconnected(_) => ErrorCode::Disconnected,
            Error::Protocol(_) => ErrorCode::Protocol,
            Error::Address { .. } => ErrorCode::Protocol,
            Error::Cancelled => ErrorCode::Cancelled,
            Error::Overloaded(_) => ErrorCode::Overloaded,
        }
    }

    /// Whether a caller may safely send the same call again.
    ///
    /// True only where the call certainly did not run: the connection could
    /// not be made, or the peer refused it before dispatch. A `Disconnected`
    /// or `Timeout` call may or may not have run, so retrying it is the
    /// caller's decision (use tower's `retry` layer with your own policy).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Transport(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound
            ),
            Error::Overloaded(_) => true,
            _ => false,
        }
    }

    /// The form of this error that crosses the wire.
    pub fn to_remote(&self) -> RemoteError {
        let (message, detail) = match self {
            Error::Timeout(d) => (self.to_string(), Some(d.as_millis().to_string())),
            Error::MethodNotFound(m) => (m.clone(), None),
            Error::HandlerFailed { message, kind } => (message.clone(), Some(kind.clone())),
            Error::FrameTooLarge { size, limit } => {
                (self.to_string(), Some(format!("{size}/{limit}")))
            }
            Error::Transport(e) => (e.to_string(), None),
            Error::Serialization(m)
            | Error::Unauthorized(m)
            | Error::Disconnected(m)
            | Error::Protocol(m)
            | Error::Overloaded(m) => (m.clone(), None),
            Error::Address { .. } | Error::Cancelled => (self.to_string(), None),
        };
        RemoteError {
            code: self.code(),
            message,
            detail,
        }
    }
}

impl From<io::Error> for Error {
    fn from(err: io::Error) -> Self {
        Error::transport(err)
    }
}

/// Category of an error on the wire. Stable numbers; unknown codes decode as
/// [`ErrorCode::Internal`] so old peers still understand new ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// See [`Error::Timeout`].
    Timeout,
    /// See [`Error::MethodNotFound`].
    MethodNotFound,
    /// See [`Error::HandlerFailed`].
    HandlerFailed,
    /// See [`Error::Transport`].
    Transport,
    /// See [`Error::Serialization`].
    Serialization,
    /// See [`Error::Unauthorized`].
    Unauthorized,
    /// See [`Error::FrameTooLarge`].
    FrameTooLarge,
    /// See [`Error::Disconnected`].
    Disconnected,
    /// See [`Error::Protocol`].
    Protocol,
    /// See [`Error::Cancelled`].
    Cancelled,
    /// See [`Error::Overloaded`].
    Overloaded,
    /// A code this build does not know.
    #[serde(other)]
    Internal,
}

impl ErrorCode {
    const ALL: [ErrorCode; 12] = [
        ErrorCode::Timeout,
        ErrorCode::MethodNotFound,
        ErrorCode::HandlerFailed,
        ErrorCode::Transport,
        ErrorCode::Serialization,
        ErrorCode::Unauthorized,
        ErrorCode::FrameTooLarge,
        ErrorCode::Disconnected,
        ErrorCode::Protocol,
        ErrorCode::Cancelled,
        ErrorCode::Overloaded,
        ErrorCode::Internal,
    ];

    /// The stable snake_case name used on the wire (the same as serde's).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Timeout => "timeout",
            ErrorCode::MethodNotFound => "method_not_found",
            ErrorCode::HandlerFailed => "handler_failed",
            ErrorCode::Transport => "transport",
            ErrorCode::Serialization => "serialization",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::Disconnected => "disconnected",
            ErrorCode::Protocol => "protocol",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Internal => "internal",
        }
    }

    /// The code named `name`; names this build does not know give
    /// [`ErrorCode::Internal`], so newer peers stay understood.
    pub fn from_name(name: &str) -> Self {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == name)
            .unwrap_or(ErrorCode::Internal)
    }
}

/// The name of a handler's error type (an [`Error::HandlerFailed`]'s
/// `kind`, a Rust type path) without its path or generics, as protocols
/// that name errors by class want it.
///
/// ```
/// assert_eq!(busline_core::short_type_name("app::errors::NotReady<u8>"), "NotReady");
/// assert_eq!(busline_core::short_type_name("String"), "String");
/// ```
pub fn short_type_name(kind: &str) -> &str {
    let base = kind.split('<').next().unwrap_or(kind);
    base.rsplit("::").next().unwrap_or(base)
}

/// An error as it crosses the wire: a category, a message, and an optional
/// machine-readable detail (the handler's error type, a size, a duration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteError {
    /// The category.
    pub code: ErrorCode,
    /// Human-readable text.
    pub message: String,
    /// Extra information whose meaning depends on `code`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl RemoteError {
    /// Rebuild the local [`Error`] the peer described.
    pub fn into_error(self) -> Error {
        let RemoteError {
            code,
            message,
            detail,
        } = self;
        match code {
            ErrorCode::Timeout => Error::Timeout(Duration::from_millis(
                detail.and_then(|d| d.parse().ok()).unwrap_or_default(),
            )),
            ErrorCode::MethodNotFound => Error::MethodNotFound(message),
            ErrorCode::HandlerFailed => Error::HandlerFailed {
                message,
                kind: detail.unwrap_or_else(|| "unknown".into()),
            },
            ErrorCode::Transport => Error::transport(io::Error::other(message)),
            ErrorCode::Serialization => Error::Serialization(message),
            ErrorCode::Unauthorized => Error::Unauthorized(message),
            ErrorCode::FrameTooLarge => {
                let mut parts = detail.as_deref().unwrap_or("").split('/');
                let mut next = || parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
                Error::FrameTooLarge {
                    size: next(),
                    limit: next(),
                }
            }
            ErrorCode::Disconnected => Error::Disconnected(message),
            ErrorCode::Protocol => Error::Protocol(message),
            ErrorCode::Cancelled => Error::Cancelled,
            ErrorCode::Overloaded => Error::Overloaded(message),
            ErrorCode::Internal => Error::HandlerFailed {
                message,
                kind: "internal".into(),
            },
        }
    }
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names_match_serde() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(ErrorCode::from_name(code.as_str()), code);
        }
        assert_eq!(ErrorCode::from_name("from_the_future"), ErrorCode::Internal);
    }

    #[test]
    fn every_category_survives_the_wire() {
        let errors = [
            Error::Timeout(Duration::from_millis(250)),
            Error::MethodNotFound("nope".into()),
            Error::handler("bad", "my::Error"),
            Error::Serialization("eof".into()),
            Error::Unauthorized("wrong secret".into()),
            Error::FrameTooLarge {
                size: 20,
                limit: 10,
            },
            Error::Disconnected("peer closed".into()),
            Error::Protocol("garbage".into()),
            Error::Cancelled,
            Error::Overloaded("too many calls".into()),
        ];
        for err in errors {
            let back = err.to_remote().into_error();
            assert_eq!(back.code(), err.code());
            assert_eq!(back.to_string(), err.to_string(), "{err:?}");
        }
    }

    #[test]
    fn unknown_code_decodes_as_internal() {
        let remote: RemoteError =
            serde_json::from_str(r#"{"code":"from_the_future","message":"x"}"#).unwrap();
        assert_eq!(remote.code, ErrorCode::Internal);
    }
}
