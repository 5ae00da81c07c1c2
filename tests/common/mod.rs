//! A test fixture per transport × codec, so each behaviour is written once
//! and run over the whole matrix.

#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicUsize, Ordering};

use busline::{
    rpc::{Client, ClientBuilder, Router, Server, ServerBuilder, ServerHandle},
    Address, Authenticator, Codec, NoAuth, Transport,
};

/// Where and how one test talks.
pub struct Fixture<T, C> {
    pub transport: T,
    pub codec: C,
    pub addr: Address,
    _dir: Option<tempfile::TempDir>,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

impl<C> Fixture<busline::MemoryTransport, C> {
    pub fn memory(codec: C) -> Self {
        Fixture {
            transport: busline::MemoryTransport::new(),
            codec,
            addr: Address::memory(unique("test")),
            _dir: None,
        }
    }
}

impl<C> Fixture<busline::UnixTransport, C> {
    pub fn unix(codec: C) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Fixture {
            transport: busline::UnixTransport::new(),
            codec,
            addr: Address::unix(dir.path().join("s.sock")),
            _dir: Some(dir),
        }
    }
}

impl<C> Fixture<busline::FifoTransport, C> {
    pub fn fifo(codec: C) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Fixture {
            transport: busline::FifoTransport::new(),
            codec,
            addr: Address::fifo(dir.path().join("rendezvous")),
            _dir: Some(dir),
        }
    }
}

impl<C> Fixture<busline::ShmTransport, C> {
    pub fn shm(codec: C) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Fixture {
            // Small rings: frames of the tests wrap around and stream
            // through them.
            transport: busline::ShmTransport::new().ring_size(16 * 1024),
            codec,
            addr: Address::shm("rpc").with_param("dir", dir.path().display().to_string()),
            _dir: Some(dir),
        }
    }
}

impl<C> Fixture<busline::TcpTransport, C> {
    pub fn tcp(codec: C) -> Self {
        Fixture {
            transport: busline::TcpTransport::new(),
            codec,
            addr: Address::tcp("127.0.0.1", 0),
            _dir: None,
        }
    }
}

impl<T: Transport, C: Codec> Fixture<T, C> {
    pub fn server(&self, router: Router) -> ServerBuilder<C, NoAuth> {
        Server::builder(router, self.codec.clone())
    }

    /// Start a server with default settings on the fixture's address.
    pub async fn serve(&self, router: Router) -> ServerHandle {
        self.start(self.server(router)).await
    }

    pub async fn start<A: Authenticator>(&self, builder: ServerBuilder<C, A>) -> ServerHandle {
        builder
            .bind(&self.transport, &self.addr)
            .await
            .expect("server binds")
    }

    pub fn client(&self) -> ClientBuilder<C, NoAuth> {
        Client::builder(self.codec.clone())
    }

    /// Another address of the fixture's kind, for a second listener.
    pub fn addr_for_raw(&self) -> Address {
        match self.addr.endpoint() {
            busline::Endpoint::Memory(_) => Address::memory(unique("raw")),
            busline::Endpoint::Unix(p) => Address::unix(p.with_file_name(unique("raw"))),
            busline::Endpoint::Fifo(p) => Address::fifo(p.with_file_name(unique("raw"))),
            busline::Endpoint::Shm(_) => self
                .addr
                .params()
                .fold(Address::shm(unique("raw")), |a, (k, v)| a.with_param(k, v)),
            _ => Address::tcp("127.0.0.1", 0),
        }
    }

    /// An address nobody listens on.
    pub fn unused_addr(&self) -> Address {
        match self.addr.endpoint() {
            busline::Endpoint::Tcp { .. } => Address::tcp("127.0.0.1", free_port()),
            _ => self.addr_for_raw(),
        }
    }

    /// The address the server will have, known before it starts.
    pub fn fixed_addr(&self) -> Address {
        match self.addr.endpoint() {
            busline::Endpoint::Tcp { port: 0, .. } => Address::tcp("127.0.0.1", free_port()),
            _ => self.addr.clone(),
        }
    }

    /// Connect a default client to `server`.
    pub async fn connect(&self, server: &ServerHandle) -> Client {
        self.client()
            .connect(&self.transport, server.local_addr())
            .await
            .expect("client connects")
    }
}

fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("probe port");
    probe.local_addr().expect("probe address").port()
}

/// Sends on drop: lets a test see that the server dropped a handler.
pub struct DropSignal(pub Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// Instantiate each listed generic test body for every transport × codec.
#[macro_export]
macro_rules! matrix {
    ($($test:ident),* $(,)?) => {
        $crate::matrix!(@one memory_jsonline, Fixture::memory(busline::JsonLineCodec::new()), $($test),*);
        $crate::matrix!(@one memory_cbor, Fixture::memory(busline::CborCodec::new()), $($test),*);
        $crate::matrix!(@one unix_jsonline, Fixture::unix(busline::JsonLineCodec::new()), $($test),*);
        $crate::matrix!(@one unix_cbor, Fixture::unix(busline::CborCodec::new()), $($test),*);
        $crate::matrix!(@one tcp_jsonline, Fixture::tcp(busline::JsonLineCodec::new()), $($test),*);
        $crate::matrix!(@one tcp_cbor, Fixture::tcp(busline::CborCodec::new()), $($test),*);
        $crate::matrix!(@one fifo_jsonline, Fixture::fifo(busline::JsonLineCodec::new()), $($test),*);
        $crate::matrix!(@one fifo_cbor, Fixture::fifo(busline::CborCodec::new()), $($test),*);
        $crate::matrix!(@one fifo_jsonrpc, Fixture::fifo(busline::JsonRpcCodec::new()), $($test),*);
        $crate::matrix!(@one shm_jsonline, Fixture::shm(busline::JsonLineCodec::new()), $($test),*);
        $crate::matrix!(@one shm_cbor, Fixture::shm(busline::CborCodec::new()), $($test),*);
        $crate::matrix!(@one shm_jsonrpc, Fixture::shm(busline::JsonRpcCodec::new()), $($test),*);
        $crate::matrix!(@one memory_jsonrpc, Fixture::memory(busline::JsonRpcCodec::new()), $($test),*);
        $crate::matrix!(@one unix_jsonrpc, Fixture::unix(busline::JsonRpcCodec::new()), $($test),*);
        $crate::matrix!(@one tcp_jsonrpc, Fixture::tcp(busline::JsonRpcCodec::new()), $($test),*);
    };
    (@one $module:ident, $fixture:expr, $($test:ident),*) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    tokio::time::timeout(std::time::Duration::from_secs(60), super::$test($fixture))
                        .await
                        .expect("test finished within 60 s");
                }
            )*
        }
    };
}
