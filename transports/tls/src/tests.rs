use busline_core::{testing::transport_conformance, Address, Error, Listener, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::TlsTransport;
use crate::testing::TestPki;

/// An address that both binds and connects with `pki`'s files.
fn addr(pki: &TestPki) -> Address {
    let file = |name: &str| pki.file(name).display().to_string();
    Address::tls("127.0.0.1", 0)
        .with_param("cert", file("cert.pem"))
        .with_param("key", file("key.pem"))
        .with_param("ca", file("ca.pem"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_conforms() {
    let pki = TestPki::new();
    transport_conformance(TlsTransport::new(), || addr(&pki)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_servers_and_plaintext_clients_are_refused() {
    let pki = TestPki::new();
    let tls = TlsTransport::new();
    let mut listener = tls.bind(&addr(&pki)).await.unwrap();
    let addr = listener.local_addr();

    // A client trusting another CA refuses the server.
    let other = TestPki::new();
    let distrustful = addr
        .clone()
        .with_param("ca", other.file("ca.pem").display().to_string());
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
