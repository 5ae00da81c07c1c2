//! Addresses given as URLs: `unix:///run/app.sock`, `tcp://127.0.0.1:7400`,
//! `memory://name`, `fifo:///run/app/dir`, `shm://name`.
//!
//! The URL picks the transport at run time (the command line, config files),
//! and its query string carries per-address options such as
//! `?codec=cbor`, which a transport or program reads with
//! [`Address::param`].

use std::{fmt, path::PathBuf, str::FromStr};

use percent_encoding::percent_decode_str;
use url::{Host, Url};

use crate::{Error, Result};

/// Where a transport connects or binds, without options.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Endpoint {
    /// A Unix domain socket file.
    Unix(PathBuf),
    /// A TCP host and port; `host` is a name or an IP literal (no brackets).
    Tcp {
        /// Host name or IP address.
        host: String,
        /// Port; `0` asks the OS for a free one when binding.
        port: u16,
    },
    /// TLS over TCP: a host and port, as for [`Endpoint::Tcp`].
    Tls {
        /// Host name or IP address (also the name the certificate must
        /// carry, unless `?name=` says otherwise).
        host: String,
        /// Port; `0` asks the OS for a free one when binding.
        port: u16,
    },
    /// A process-local in-memory rendezvous name.
    Memory(String),
    /// A rendezvous directory for FIFO pairs.
    Fifo(PathBuf),
    /// A shared-memory rendezvous name.
    Shm(String),
}

impl Endpoint {
    /// The URL scheme for this kind of endpoint.
    pub fn scheme(&self) -> &'static str {
        match self {
            Endpoint::Unix(_) => "unix",
            Endpoint::Tcp { .. } => "tcp",
            Endpoint::Tls { .. } => "tls",
            Endpoint::Memory(_) => "memory",
            Endpoint::Fifo(_) => "fifo",
            Endpoint::Shm(_) => "shm",
        }
    }
}

/// A parsed address: an [`Endpoint`] plus `?key=value` options.
///
/// ```
/// use busline_core::{Address, Endpoint};
///
/// let addr: Address = "tcp://127.0.0.1:7400?codec=cbor".parse()?;
/// assert_eq!(addr.endpoint(), &Endpoint::Tcp { host: "127.0.0.1".into(), port: 7400 });
/// assert_eq!(addr.param("codec"), Some("cbor"));
/// assert!("tcp://127.0.0.1".parse::<Address>().is_err()); // no port
/// # Ok::<(), busline_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Address {
    endpoint: Endpoint,
    params: Vec<(String, String)>,
}

impl Address {
    /// An address with no options.
    pub fn new(endpoint: Endpoint) -> Self {
        Address {
            endpoint,
            params: Vec::new(),
        }
    }

    /// Shorthand for `memory://name`.
    pub fn memory(name: impl Into<String>) -> Self {
        Address::new(Endpoint::Memory(name.into()))
    }

    /// Shorthand for `shm://name`.
    pub fn shm(name: impl Into<String>) -> Self {
        Address::new(Endpoint::Shm(name.into()))
    }

    /// Shorthand for `unix:///path`.
    pub fn unix(path: impl Into<PathBuf>) -> Self {
        Address::new(Endpoint::Unix(path.into()))
    }

    /// A FIFO rendezvous directory (`fifo:///dir`).
    pub fn fifo(dir: impl Into<PathBuf>) -> Self {
        Address::new(Endpoint::Fifo(dir.into()))
    }

    /// Shorthand for `tcp://host:port`.
    pub fn tcp(host: impl Into<String>, port: u16) -> Self {
        Address::new(Endpoint::Tcp {
            host: host.into(),
            port,
        })
    }

    /// A `tls://host:port` address.
    pub fn tls(host: impl Into<String>, port: u16) -> Self {
        Address::new(Endpoint::Tls {
            host: host.into(),
            port,
        })
    }

    /// Add (or replace) an option.
    pub fn with_param(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let key = key.into();
        self.params.retain(|(k, _)| *k != key);
        self.params.push((key, value.into()));
        self
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The URL scheme.
    pub fn scheme(&self) -> &'static str {
        self.endpoint.scheme()
    }

    /// The value of option `key`, if given.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// All options, in the order given.
    pub fn params(&self) -> impl Iterator<Item = (&str, &str)> {
        self.params.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

fn invalid(url: &str, reason: impl Into<String>) -> Error {
    Error::Address {
        url: url.to_string(),
        reason: reason.into(),
    }
}

fn path_of(text: &str, url: &Url, example: &str) -> Result<PathBuf> {
    if url.host_str().is_some_and(|h| !h.is_empty()) {
        return Err(invalid(
            text,
            format!("takes an absolute path after three slashes, e.g. {example}"),
        ));
    }
    let path = percent_decode_str(url.path())
        .decode_utf8()
        .map_err(|_| invalid(text, "path is not valid UTF-8 after percent-decoding"))?;
    if !path.starts_with('/') || path.len() < 2 {
        return Err(invalid(
            text,
            format!("needs an absolute path, e.g. {example}"),
        ));
    }
    // A URL resolves `.` and `..` as it is parsed; spelled with `%2E` they
    // survive until decoded, and would name another path once printed.
    if path.split('/').any(|segment| matches!(segment, "." | "..")) {
        return Err(invalid(
            text,
            "has a '.' or '..' segment after percent-decoding; give the path itself",
        ));
    }
    Ok(PathBuf::from(path.into_owned()))
}

fn name_of(text: &str, url: &Url, example: &str) -> Result<String> {
    let name = url.host_str().unwrap_or("");
    if name.is_empty() || !matches!(url.path(), "" | "/") {
        return Err(invalid(
            text,
            format!("needs a single name, e.g. {example}"),
        ));
    }
    Ok(name.to_string())
}

impl FromStr for Address {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let url = Url::parse(text).map_err(|e| invalid(text, e.to_string()))?;
        let endpoint = match url.scheme() {
            "unix" => Endpoint::Unix(path_of(text, &url, "unix:///run/app.sock")?),
            "fifo" => Endpoint::Fifo(path_of(text, &url, "fifo:///run/app")?),
            "memory" => Endpoint::Memory(name_of(text, &url, "memory://app")?),
            "shm" => Endpoint::Shm(name_of(text, &url, "shm://app")?),
            scheme @ ("tcp" | "tls") => {
                let host = match url.host() {
                    Some(Host::Domain(d)) if !d.is_empty() => d.to_string(),
                    Some(Host::Ipv4(ip)) => ip.to_string(),
                    Some(Host::Ipv6(ip)) => ip.to_string(),
                    _ => {
                        return Err(invalid(
                            text,
                            format!("needs a host, e.g. {scheme}://127.0.0.1:7400"),
                        ))
                    }
                };
                let port = url.port().ok_or_else(|| {
                    invalid(
                        text,
                        format!("needs a port, e.g. {scheme}://127.0.0.1:7400"),
                    )
                })?;
                if !matches!(url.path(), "" | "/") {
                    return Err(invalid(text, "takes no path, only host:port"));
                }
                if scheme == "tls" {
                    Endpoint::Tls { host, port }
                } else {
                    Endpoint::Tcp { host, port }
                }
            }
            other => {
                return Err(invalid(
                    text,
                    format!("unknown scheme {other:?}; use unix, tcp, tls, memory, fifo or shm"),
                ))
            }
        };
        let params = url.query_pairs().into_owned().collect();
        Ok(Address { endpoint, params })
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const PATH: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
            .add(b' ')
            .add(b'?')
            .add(b'#')
            .add(b'%');
        match &self.endpoint {
            Endpoint::Unix(p) | Endpoint::Fifo(p) => write!(
                f,
                "{}://{}",
                self.scheme(),
                percent_encoding::utf8_percent_encode(&p.to_string_lossy(), PATH)
            )?,
            Endpoint::Tcp { host, port } | Endpoint::Tls { host, port } if host.contains(':') => {
                write!(f, "{}://[{host}]:{port}", self.scheme())?
            }
            Endpoint::Tcp { host, port } | Endpoint::Tls { host, port } => {
                write!(f, "{}://{host}:{port}", self.scheme())?
            }
            Endpoint::Memory(n) | Endpoint::Shm(n) => write!(f, "{}://{n}", self.scheme())?,
        }
        if !self.params.is_empty() {
            let query = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(&self.params)
                .finish();
            write!(f, "?{query}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_scheme_and_prints_it_back() {
        for text in [
            "unix:///run/busline.sock",
            "unix:///tmp/with%20space.sock",
            "tcp://127.0.0.1:7400",
            "tcp://[::1]:7400",
            "tcp://localhost:0?codec=cbor",
            "memory://Test-1",
            "fifo:///run/app",
            "shm://bus",
        ] {
            let addr: Address = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(addr.to_string(), text);
            assert_eq!(addr.to_string().parse::<Address>().unwrap(), addr);
        }
        let addr: Address = "unix:///tmp/with%20space.sock".parse().unwrap();
        assert_eq!(
            addr.endpoint(),
            &Endpoint::Unix("/tmp/with space.sock".into())
        );
    }

    #[test]
    fn bad_addresses_say_what_is_wrong() {
        for (text, hint) in [
            ("", "relative URL"),
            ("http://x:1", "unknown scheme"),
            ("tcp://127.0.0.1", "needs a port"),
            ("tcp://:80", ""),
            ("tcp://h:99999", ""),
            ("tcp://h:1/path", "no path"),
            ("unix://relative/x.sock", "three slashes"),
            ("unix://", "absolute path"),
            ("memory://", "single name"),
            ("memory://a/b", "single name"),
            ("shm://", "single name"),
            ("unix:///%FF", "UTF-8"),
            // Found by fuzzing: printed, it named another path.
            ("fifo:/p/ap9%p/%2E%2E%2fifo:/pp/xrun$", "'..' segment"),
            ("unix:///a/%2E%2E%2Fb", "'.' or '..' segment"),
        ] {
            match text.parse::<Address>() {
                Err(Error::Address { url, reason }) => {
                    assert_eq!(url, text);
                    assert!(reason.contains(hint), "{text}: {reason}");
                }
                other => panic!("{text}: expected an address error, got {other:?}"),
            }
        }
    }

    proptest::proptest! {
        /// Any text: an address error or an address whose printed URL
        /// parses back to it (the same check as the `address` fuzz target,
        /// from URL-shaped text).
        #[test]
        fn any_text_parses_to_an_error_or_round_trips(
            text in "(unix|tcp|tls|fifo|memory|shm|http)://[a-z0-9:./%?&=#@\\[\\] \\x{0}-\\x{7f}é]{0,40}"
        ) {
            if let Ok(addr) = text.parse::<Address>() {
                let printed = addr.to_string();
                let again: Address = printed.parse().map_err(|e| {
                    proptest::test_runner::TestCaseError::fail(format!("{printed:?}: {e}"))
                })?;
                proptest::prop_assert_eq!(again, addr, "{:?} printed as {:?}", text, printed);
            }
        }
    }
}
