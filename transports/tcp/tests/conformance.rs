//! `TcpTransport` passes the shared transport conformance suite.

use busline_core::{testing::transport_conformance, Address};
use busline_tcp::TcpTransport;

#[tokio::test]
async fn tcp_transport_conforms() {
    transport_conformance(TcpTransport::new(), || Address::tcp("127.0.0.1", 0)).await;
}

#[tokio::test]
async fn tcp_transport_conforms_over_ipv6_when_available() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipping: no IPv6 loopback here");
        return;
    }
    transport_conformance(TcpTransport::new(), || Address::tcp("::1", 0)).await;
}
