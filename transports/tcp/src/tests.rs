//! TCP specifics the conformance suite does not cover.

use std::{io::ErrorKind, time::Duration};

use busline_core::{Address, Endpoint, Error, Listener, Transport};

use crate::TcpTransport;

fn transport_error(result: busline_core::Result<impl Sized>) -> (ErrorKind, String) {
    match result {
        Err(Error::Transport(e)) => (e.kind(), e.to_string()),
        Err(other) => panic!("expected a transport error, got {other:?}"),
        Ok(_) => panic!("expected a transport error, got success"),
    }
}

#[tokio::test]
async fn bind_resolves_localhost_and_reports_the_real_port() {
    let l = TcpTransport::new()
        .bind(&"tcp://localhost:0?codec=cbor".parse().unwrap())
        .await
        .unwrap();
    let local = l.local_addr();
    match local.endpoint() {
        Endpoint::Tcp { host, port } => {
            assert!(
                host.parse::<std::net::IpAddr>().unwrap().is_loopback(),
                "{host}"
            );
            assert_ne!(*port, 0);
            assert_eq!(*port, l.socket_addr().port());
        }
        other => panic!("not a tcp endpoint: {other:?}"),
    }
    assert_eq!(local.param("codec"), Some("cbor"));
}

#[tokio::test]
async fn both_ends_have_nagle_off_and_peer_is_described() {
    let t = TcpTransport::new();
    let mut l = t.bind(&Address::tcp("127.0.0.1", 0)).await.unwrap();
    let client = t.connect(&l.local_addr()).await.unwrap();
    let (server, peer) = l.accept().await.unwrap();
    assert!(client.nodelay().unwrap(), "connected stream has Nagle on");
    assert!(server.nodelay().unwrap(), "accepted stream has Nagle on");
    let from = client.local_addr().unwrap();
    assert_eq!(peer.description, format!("tcp://127.0.0.1:{}", from.port()));
    assert_eq!(peer.credentials, None);
}

#[tokio::test]
async fn bind_conflict_names_the_address() {
    let t = TcpTransport::new();
    let l = t.bind(&Address::tcp("127.0.0.1", 0)).await.unwrap();
    let (kind, message) = transport_error(t.bind(&l.local_addr()).await);
    assert_eq!(kind, ErrorKind::AddrInUse);
    assert!(message.contains(&l.local_addr().to_string()), "{message}");
    assert!(message.contains("port 0"), "{message}");
}

#[tokio::test]
async fn refused_connect_names_the_address() {
    let t = TcpTransport::new();
    let addr = t
        .bind(&Address::tcp("127.0.0.1", 0))
        .await
        .unwrap()
        .local_addr();
    let (kind, message) = transport_error(t.connect(&addr).await);
    assert_eq!(kind, ErrorKind::ConnectionRefused);
    assert!(message.contains(&addr.to_string()), "{message}");
    assert!(Error::transport(std::io::Error::from(kind)).is_retryable());
}

#[tokio::test]
async fn connect_gives_up_after_the_timeout() {
    // A listener that never accepts and has a tiny backlog: once the
    // queue is full, Linux drops further SYNs and connects hang.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let full = socket.listen(0).unwrap();
    let target = full.local_addr().unwrap();
    let t = TcpTransport::new().connect_timeout(Duration::from_millis(200));
    let addr = Address::tcp("127.0.0.1", target.port());
    let mut held = Vec::new();
    for _ in 0..16 {
        match t.connect(&addr).await {
            Ok(stream) => held.push(stream),
            Err(Error::Transport(e)) if e.kind() == ErrorKind::TimedOut => {
                assert!(e.to_string().contains("connect_timeout"), "{e}");
                return;
            }
            Err(other) => panic!("expected a timeout, got {other:?}"),
        }
    }
    panic!("16 connects to a listener that never accepts all succeeded");
}
