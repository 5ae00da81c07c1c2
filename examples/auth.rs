//! Shared-secret authentication.
//!
//! The server requires `SharedSecret` (a mutual HMAC-SHA256 handshake: each
//! side proves it knows the secret without sending it). A client with the
//! right secret connects and calls; a client with a wrong secret is refused
//! during `connect` with `Error::Unauthorized`, before any call is made, and
//! so is a client that offers no credentials.
//!
//! Run it with `cargo run --example auth`.

use busline::rpc::{Client, Router, Server};
use busline::{Address, Error, JsonLineCodec, MemoryTransport, SharedSecret};

#[tokio::main]
async fn main() -> busline::Result<()> {
    let router = Router::new().unary("whoami", |(): ()| async {
        Ok::<_, String>("a trusted client")
    });

    // In real programs, load the secret with `SharedSecret::from_file`.
    let addr = Address::memory("auth");
    let server = Server::builder(router, JsonLineCodec::new())
        .auth(SharedSecret::new("correct horse battery staple")?)
        .bind(&MemoryTransport::new(), &addr)
        .await?;

    // The right secret: the handshake succeeds and calls work.
    let client = Client::builder(JsonLineCodec::new())
        .auth(SharedSecret::new("correct horse battery staple")?)
        .connect(&MemoryTransport::new(), &addr)
        .await?;
    let answer: String = client.call("whoami", &()).await?;
    println!("right secret: connected; whoami() = {answer:?}");

    // A wrong secret: `connect` itself fails.
    let wrong = Client::builder(JsonLineCodec::new())
        .auth(SharedSecret::new("hunter2 hunter2 hunter2")?)
        .connect(&MemoryTransport::new(), &addr)
        .await;
    report_refusal("wrong secret", wrong);

    // No credentials at all: refused the same way.
    let none = Client::builder(JsonLineCodec::new())
        .connect(&MemoryTransport::new(), &addr)
        .await;
    report_refusal("no secret", none);

    server.shutdown().await;
    Ok(())
}

fn report_refusal(label: &str, connected: busline::Result<Client>) {
    match connected {
        Err(Error::Unauthorized(reason)) => println!("{label}: Unauthorized: {reason}"),
        Err(other) => panic!("{label}: expected Unauthorized, got {other}"),
        Ok(_) => panic!("{label}: must not connect"),
    }
}
