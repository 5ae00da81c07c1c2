//! The smallest busline program: a server and a client in one process,
//! talking over the in-memory transport.
//!
//! It registers one method, `greet`, calls it once and prints the answer.
//!
//! Run it with `cargo run --example hello`.

use busline::rpc::{Client, Router, Server};
use busline::{Address, JsonLineCodec, MemoryTransport};

#[tokio::main]
async fn main() -> busline::Result<()> {
    // A router maps method names to handlers. A unary handler is an async
    // function from its (deserialized) arguments to a Result.
    let router = Router::new().unary("greet", |name: String| async move {
        Ok::<_, String>(format!("hello, {name}!"))
    });

    // Serve it at an in-memory address, then connect a client to it.
    let addr = Address::memory("hello");
    let server = Server::builder(router, JsonLineCodec::new())
        .bind(&MemoryTransport::new(), &addr)
        .await?;
    let client = Client::builder(JsonLineCodec::new())
        .connect(&MemoryTransport::new(), &addr)
        .await?;

    // Typed call: argument type, then return type.
    let greeting: String = client.call("greet", "world").await?;
    println!("{greeting}");

    server.shutdown().await;
    Ok(())
}
