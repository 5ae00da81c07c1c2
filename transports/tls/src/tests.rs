use busline_core::{testing::transport_conformance, Address, Error, Listener, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::TlsTransport;

/// A CA, and a certificate it signed for localhost and 127.0.0.1, as PEM
/// files in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap();
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
        Pki { dir }
    }

    fn file(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// An address that both binds and connects.
    fn addr(&self) -> Address {
        Address::tls("127.0.0.1", 0)
            .with_param("cert", self.file("cert.pem"))
            .with_param("key", self.file("key.pem"))
            .with_param("ca", self.file("ca.pem"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_conforms() {
    let pki = Pki::new();
    transport_conformance(TlsTransport::new(), || pki.addr()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_servers_and_plaintext_clients_are_refused() {
    let pki = Pki::new();
    let tls = TlsTransport::new();
    let mut listener = tls.bind(&pki.addr()).await.unwrap();
    let addr = listener.local_addr();

    // A client trusting another CA refuses the server.
    let other = Pki::new();
    let distrustful = addr.clone().with_param("ca", other.file("ca.pem"));
    // (The server side handshakes while someone waits in accept.)
    let (connected, _) = tokio::join!(
        tls.connect(&distrustful),
        tokio::time::timeout(std::time::Duration::from_secs(1), listener.accept())
    );
    let err = connected.unwrap_err();
    assert!(
        matches!(err, Error::Transport(ref e) if e.to_string().contains("handshake")),
        "{err:?}"
    );

    // A plaintext client gets nowhere, and holds nobody up.
    let busline_core::Endpoint::Tls { port, .. } = addr.endpoint() else {
        panic!("a tls address")
    };
    let mut plain = tokio::net::TcpStream::connect(("127.0.0.1", *port))
        .await
        .unwrap();
    plain.write_all(b"hello, not TLS\n").await.unwrap();
    let (client, accepted) = tokio::join!(tls.connect(&addr), listener.accept());
    let (mut client, (mut server, _)) = (client.unwrap(), accepted.unwrap());
    client.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");

    // Missing files are named.
    let err = tls
        .connect(&Address::tls("127.0.0.1", *port))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Address { ref reason, .. } if reason.contains("?ca=")),
        "{err:?}"
    );
    let err = tls
        .bind(
            &Address::tls("127.0.0.1", 0)
                .with_param("cert", "/nonexistent.pem")
                .with_param("key", "/x"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Address { ref reason, .. } if reason.contains("/nonexistent.pem")),
        "{err:?}"
    );
}
