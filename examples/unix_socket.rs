//! One service, two real transports: a Unix domain socket, then TCP.
//!
//! The service code is written once, generic over `Transport`; switching
//! from a Unix socket to TCP changes only which transport and address you
//! pass in. Both runs use the JSON-line codec (one JSON message per line).
//!
//! With TCP we bind port 0, let the OS pick a free port, and connect the
//! client to `server.local_addr()`, the address actually bound.
//!
//! Run it with `cargo run --example unix_socket`.

use busline::rpc::{Client, Router, Server};
use busline::{Address, JsonLineCodec, TcpTransport, Transport, UnixTransport};

/// The service: the same for every transport.
fn router() -> Router {
    Router::new()
        .unary(
            "add",
            |(a, b): (i64, i64)| async move { Ok::<_, String>(a + b) },
        )
        .unary("upper", |s: String| async move {
            Ok::<_, String>(s.to_uppercase())
        })
}

/// Serve `router()` at `addr` over `transport`, call it, shut down.
async fn run<T: Transport>(transport: T, addr: Address) -> busline::Result<()> {
    let server = Server::builder(router(), JsonLineCodec::new())
        .bind(&transport, &addr)
        .await?;
    let bound = server.local_addr().clone();
    let client = Client::builder(JsonLineCodec::new())
        .connect(&transport, &bound)
        .await?;

    let sum: i64 = client.call("add", &(2, 40)).await?;
    let shout: String = client.call("upper", "over the wire").await?;
    println!("  {bound}: add(2, 40) = {sum}, upper = {shout:?}");

    server.shutdown().await;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A private directory for the socket file, removed when `dir` drops.
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("busline-example.sock");

    println!("Unix socket:");
    run(UnixTransport::new(), Address::unix(&socket)).await?;

    println!("TCP (only this line differs):");
    run(TcpTransport::new(), "tcp://127.0.0.1:0".parse()?).await?;

    // To pick the transport at run time from the URL's scheme instead (say,
    // from a command-line flag), pass `busline::any_transport()`.

    Ok(())
}
