//! Certificates for tests (feature `testing`).

use std::path::PathBuf;

/// A certificate authority, and a certificate it signed for `localhost`
/// and `127.0.0.1`, as PEM files in a temporary directory that lives as
/// long as this value.
#[derive(Debug)]
pub struct TestPki {
    dir: tempfile::TempDir,
}

impl TestPki {
    /// Make the files `ca.pem`, `cert.pem` and `key.pem`.
    ///
    /// # Panics
    ///
    /// If the keys cannot be made or written: it is for tests.
    pub fn new() -> TestPki {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let ca_key = rcgen::KeyPair::generate().expect("a CA key");
        let mut ca_params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).expect("a CA certificate");
        let key = rcgen::KeyPair::generate().expect("a server key");
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let cert = rcgen::CertificateParams::new(names)
            .expect("server parameters")
            .signed_by(&key, &ca, &ca_key)
            .expect("a server certificate");
        let write = |name: &str, text: String| {
            std::fs::write(dir.path().join(name), text).expect("a PEM file");
        };
        write("ca.pem", ca.pem());
        write("cert.pem", cert.pem());
        write("key.pem", key.serialize_pem());
        TestPki { dir }
    }

    /// The path of `ca.pem`, `cert.pem` or `key.pem`.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}
