//! I/O errors that say which socket file failed and what to do about it.
//!
//! The `io::ErrorKind` of the cause is kept, so callers can still branch on
//! it (`Error::is_retryable` does), while the message names the path and
//! the fix.

use std::{io, path::Path};

/// `cause` with `message` in front, keeping its kind.
pub(crate) fn with_context(cause: io::Error, message: String) -> io::Error {
    io::Error::new(cause.kind(), format!("{message} ({cause})"))
}

/// A failed `connect` to `path`, explained.
pub(crate) fn connect(path: &Path, cause: io::Error) -> io::Error {
    let p = path.display();
    let message = match cause.kind() {
        io::ErrorKind::NotFound => format!(
            "no socket at {p}: the server is not running or listens elsewhere; \
             start it or check the path"
        ),
        io::ErrorKind::ConnectionRefused => format!(
            "{p} exists but no server accepts on it (a stale socket left by a \
             stopped server); start the server, which replaces it"
        ),
        io::ErrorKind::PermissionDenied => format!(
            "permission denied connecting to {p}: the socket or its directory \
             does not let this user in; run as the server's user or have the \
             server bind with a wider mode (UnixTransport::mode)"
        ),
        _ => format!("cannot connect to {p}"),
    };
    with_context(cause, message)
}

/// An error of `kind` with `message` and no underlying cause.
pub(crate) fn new(kind: io::ErrorKind, message: String) -> io::Error {
    io::Error::new(kind, message)
}
