//! TLS over TCP for busline: `tls://host:port`, on rustls.
//!
//! Everything the TCP transport does (Nagle off, bounded connect time), then
//! a TLS 1.2/1.3 handshake. Certificates come either from configs built in
//! code ([`TlsTransport::with_server_config`],
//! [`TlsTransport::with_client_config`]) or, for addresses given on a
//! command line, from PEM files named in the address:
//!
//! - to bind: `tls://0.0.0.0:7400?cert=server.pem&key=server.key`;
//! - to connect: `tls://bus.example:7400?ca=ca.pem` (the authority that
//!   signed the server's certificate), and `&name=bus.example` when the
//!   certificate names the server differently from the host in the URL.
//!
//! The listener runs each handshake on its own task with a time limit, so
//! a client that connects and stays silent delays nobody else.
//!
//! ```no_run
//! use busline_core::{Address, Transport};
//! use busline_tls::TlsTransport;
//!
//! # async fn demo() -> busline_core::Result<()> {
//! let tls = TlsTransport::new();
//! let server = tls.bind(&"tls://127.0.0.1:7400?cert=server.pem&key=server.key".parse()?).await?;
//! let client = tls.connect(&"tls://localhost:7400?ca=ca.pem".parse()?).await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod config;
mod listener;
#[cfg(feature = "testing")]
pub mod testing;

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use busline_core::{expect_scheme, Address, Endpoint, Error, Result, Transport};
use busline_tcp::TcpTransport;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::{
    rustls::{ClientConfig, ServerConfig},
    TlsAcceptor, TlsConnector,
};

pub use listener::TlsListener;
/// The byte stream of a TLS connection, either side.
pub type TlsStream = tokio_rustls::TlsStream<TcpStream>;
/// rustls, for building configs.
pub use tokio_rustls::rustls;

/// The `tls` transport. See the [crate docs](crate).
#[derive(Debug, Clone)]
pub struct TlsTransport {
    tcp: TcpTransport,
    server: Option<Arc<ServerConfig>>,
    client: Option<Arc<ClientConfig>>,
    handshake_timeout: Duration,
}

impl TlsTransport {
    /// How long a TLS handshake may take by default.
    pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

    /// A transport that reads certificates from the files an address names.
    pub fn new() -> Self {
        TlsTransport {
            tcp: TcpTransport::new(),
            server: None,
            client: None,
            handshake_timeout: Self::DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }

    /// Serve with this config instead of `?cert=`/`?key=` files.
    pub fn with_server_config(mut self, config: Arc<ServerConfig>) -> Self {
        self.server = Some(config);
        self
    }

    /// Connect with this config instead of a `?ca=` file.
    pub fn with_client_config(mut self, config: Arc<ClientConfig>) -> Self {
        self.client = Some(config);
        self
    }

    /// Set how long a TLS handshake may take, either side.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }
}

impl Default for TlsTransport {
    fn default() -> Self {
        Self::new()
    }
}

/// Host and port of a `tls://` address, or [`Error::Address`].
fn host_port(addr: &Address) -> Result<(&str, u16)> {
    expect_scheme(addr, "tls")?;
    match addr.endpoint() {
        Endpoint::Tls { host, port } => Ok((host, *port)),
        _ => Err(Error::Address {
            url: addr.to_string(),
            reason: "not a tls:// address".into(),
        }),
    }
}

fn tls_error(addr: &Address, what: &str, e: impl std::fmt::Display) -> Error {
    Error::transport(std::io::Error::other(format!("{addr}: {what}: {e}")))
}

#[async_trait]
impl Transport for TlsTransport {
    type Io = TlsStream;
    type Listener = TlsListener;

    fn scheme(&self) -> &'static str {
        "tls"
    }

    async fn connect(&self, addr: &Address) -> Result<TlsStream> {
        let (host, port) = host_port(addr)?;
        let config = match &self.client {
            Some(config) => config.clone(),
            None => config::client_from(addr)?,
        };
        let name = addr.param("name").unwrap_or(host).to_owned();
        let name = ServerName::try_from(name).map_err(|e| Error::Address {
            url: addr.to_string(),
            reason: format!("not a server name to check the certificate against: {e}"),
        })?;
        let stream = self.tcp.connect(&Address::tcp(host, port)).await?;
        let handshake = TlsConnector::from(config).connect(name, stream);
        match tokio::time::timeout(self.handshake_timeout, handshake).await {
            Ok(Ok(stream)) => Ok(TlsStream::Client(stream)),
            Ok(Err(e)) => Err(tls_error(addr, "TLS handshake failed", e)),
            Err(_) => Err(Error::Timeout(self.handshake_timeout)),
        }
    }

    async fn bind(&self, addr: &Address) -> Result<TlsListener> {
        let (host, port) = host_port(addr)?;
        let config = match &self.server {
            Some(config) => config.clone(),
            None => config::server_from(addr)?,
        };
        let tcp = self.tcp.bind(&Address::tcp(host, port)).await?;
        Ok(TlsListener::new(
            tcp,
            TlsAcceptor::from(config),
            addr,
            self.handshake_timeout,
        ))
    }
}

#[cfg(test)]
mod tests;
