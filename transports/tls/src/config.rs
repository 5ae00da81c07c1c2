//! TLS configs from the PEM files an address names.

use std::sync::Arc;

use busline_core::{Address, Error, Result};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};

fn param<'a>(addr: &'a Address, key: &str, example: &str) -> Result<&'a str> {
    addr.param(key).ok_or_else(|| Error::Address {
        url: addr.to_string(),
        reason: format!("needs ?{key}=FILE ({example})"),
    })
}

fn unreadable(addr: &Address, path: &str, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Address {
        url: addr.to_string(),
        reason: format!("cannot read {what} from {path}: {e}"),
    }
}

fn certificates(addr: &Address, path: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| unreadable(addr, path, "PEM certificates", e))?;
    if certs.is_empty() {
        return Err(unreadable(addr, path, "PEM certificates", "none found"));
    }
    Ok(certs)
}

/// `?cert=` (the chain, leaf first) and `?key=` of a listening address.
pub(crate) fn server_from(addr: &Address) -> Result<Arc<ServerConfig>> {
    let cert = param(addr, "cert", "the server's certificate chain, PEM")?;
    let key = param(addr, "key", "the server's private key, PEM")?;
    let chain = certificates(addr, cert)?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| unreadable(addr, key, "a PEM private key", e))?;
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| Error::Address {
            url: addr.to_string(),
            reason: format!("the certificate and key do not make a TLS server: {e}"),
        })?;
    Ok(Arc::new(config))
}

/// `?ca=`, the authorities a connecting client trusts.
pub(crate) fn client_from(addr: &Address) -> Result<Arc<ClientConfig>> {
    let ca = param(
        addr,
        "ca",
        "the certificate authority that signed the server's, PEM",
    )?;
    let mut roots = RootCertStore::empty();
    for cert in certificates(addr, ca)? {
        roots
            .add(cert)
            .map_err(|e| unreadable(addr, ca, "a usable CA certificate", e))?;
    }
    let config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
