//! tonic (gRPC over HTTP/2) as a contender of `-- rpc`: the same 64-bit
//! echo as one unary method, over a Unix socket and over TCP.
//!
//! The service is written out by hand, as `tonic-build` would generate
//! it, so the bench needs no `protoc`: one prost message, a server that
//! routes the one path to `tonic::server::Grpc::unary`, and a client that
//! calls `tonic::client::Grpc::unary` on that path.

use std::{
    convert::Infallible,
    future::{ready, Future, Ready},
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use futures::stream;
use http::uri::PathAndQuery;
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tonic::{
    body::Body,
    client::Grpc,
    server::{NamedService, UnaryService},
    transport::{Channel, Endpoint, Server},
    Request, Response, Status,
};
use tonic_prost::ProstCodec;

use crate::contenders::Call;

/// The echoed value, as protobuf `message Num { uint64 x = 1; }`.
#[derive(Clone, PartialEq, prost::Message)]
struct Num {
    #[prost(uint64, tag = "1")]
    x: u64,
}

const METHOD: &str = "/echo.Echo/Echo";

/// The unary method: answers with what it was given.
struct EchoMethod;

impl UnaryService<Num> for EchoMethod {
    type Response = Num;
    type Future = Ready<Result<Response<Num>, Status>>;

    fn call(&mut self, request: Request<Num>) -> Self::Future {
        ready(Ok(Response::new(request.into_inner())))
    }
}

/// The service: routes its one method, answers anything else with gRPC's
/// "unimplemented".
#[derive(Clone)]
struct EchoService;

impl NamedService for EchoService {
    const NAME: &'static str = "echo.Echo";
}

impl tower::Service<http::Request<Body>> for EchoService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() != METHOD {
            return Box::pin(ready(Ok(
                Status::unimplemented("no such method").into_http()
            )));
        }
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<Num, Num>::default());
            Ok(grpc.unary(EchoMethod, request).await)
        })
    }
}

/// Serves the echo on a Unix socket at `socket` until the runtime stops.
pub async fn server_unix(socket: PathBuf) {
    let listener = UnixListener::bind(&socket).expect("tonic binds");
    let incoming = stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(s, _)| s);
        Some((accepted, listener))
    });
    let _ = Server::builder()
        .add_service(EchoService)
        .serve_with_incoming(incoming)
        .await;
}

/// Serves the echo on TCP loopback; returns the port once listening.
pub async fn server_tcp() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("tonic binds");
    let port = listener.local_addr().expect("tonic address").port();
    let incoming = stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(s, _)| {
            let _ = s.set_nodelay(true);
            s
        });
        Some((accepted, listener))
    });
    tokio::spawn(
        Server::builder()
            .add_service(EchoService)
            .serve_with_incoming(incoming),
    );
    port
}

fn client(channel: Channel) -> Call {
    let grpc = Grpc::new(channel);
    Arc::new(move |x| {
        let mut grpc = grpc.clone();
        Box::pin(async move {
            grpc.ready().await.expect("tonic ready");
            let answer: Response<Num> = grpc
                .unary(
                    Request::new(Num { x }),
                    PathAndQuery::from_static(METHOD),
                    ProstCodec::default(),
                )
                .await
                .expect("tonic call");
            answer.into_inner().x
        })
    })
}

/// A client of [`server_unix`] at `socket`.
pub async fn client_unix(socket: &Path) -> Call {
    let socket = socket.to_path_buf();
    // The URI is required but unused: the connector opens the socket.
    let channel = Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .expect("tonic connects");
    client(channel)
}

/// A client of [`server_tcp`] on `port`.
pub async fn client_tcp(port: u16) -> Call {
    let channel = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("tonic endpoint")
        .tcp_nodelay(true)
        .connect()
        .await
        .expect("tonic connects");
    client(channel)
}
