//! I/O errors that say which TCP address failed and what to do about it.
//!
//! The `io::ErrorKind` of the cause is kept, so callers can still branch on
//! it (`Error::is_retryable` does), while the message names the address and
//! the fix.

use std::{io, time::Duration};

/// `cause` with `message` in front, keeping its kind.
pub(crate) fn with_context(cause: io::Error, message: String) -> io::Error {
    io::Error::new(cause.kind(), format!("{message} ({cause})"))
}

/// `tcp://host:port`, with brackets around IPv6 literals.
fn url(host: &str, port: u16) -> String {
    busline_core::Address::tcp(host, port).to_string()
}

/// A failed `connect`, explained.
pub(crate) fn connect(host: &str, port: u16, cause: io::Error) -> io::Error {
    let at = url(host, port);
    let message = match cause.kind() {
        io::ErrorKind::ConnectionRefused => {
            format!("nothing listens on {at}; start the server or check the host and port")
        }
        io::ErrorKind::PermissionDenied => {
            format!("connecting to {at} is not permitted here (a firewall or policy)")
        }
        _ => format!("cannot connect to {at}; check the host and port and that the server runs"),
    };
    with_context(cause, message)
}

/// A `connect` that ran out of time.
pub(crate) fn connect_timed_out(host: &str, port: u16, limit: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!(
            "connecting to {} took longer than {limit:?}: the host may be down or a \
             firewall drops the packets; raise TcpTransport::connect_timeout if the \
             network is just slow",
            url(host, port)
        ),
    )
}

/// A host name that did not resolve.
pub(crate) fn resolve(host: &str, cause: io::Error) -> io::Error {
    with_context(
        cause,
        format!("cannot resolve host {host:?}; check the name or use an IP address"),
    )
}

/// A failed `bind`, explained.
pub(crate) fn bind(host: &str, port: u16, cause: io::Error) -> io::Error {
    let at = url(host, port);
    let message = match cause.kind() {
        io::ErrorKind::AddrInUse => format!(
            "{at} is already in use by another listener; stop it or choose another \
             port (port 0 picks a free one)"
        ),
        io::ErrorKind::PermissionDenied => format!(
            "not permitted to bind {at}; ports below 1024 need privileges, choose a \
             higher port"
        ),
        io::ErrorKind::AddrNotAvailable => format!(
            "cannot bind {at}: the host is not an address of this machine; use \
             127.0.0.1, 0.0.0.0 or one of its interface addresses"
        ),
        _ => format!("cannot bind {at}"),
    };
    with_context(cause, message)
}
