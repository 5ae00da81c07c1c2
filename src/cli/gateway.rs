//! `busline gateway --broker URL --http ADDR`, and the gateway `busline
//! broker --http ADDR` runs beside its broker: HTTP in front of a broker.

use std::{net::SocketAddr, time::Duration};

use busline::{
    broker::{BrokerClient, Reconnect},
    gateway::Gateway,
    rpc::Client,
    Error, Result, SharedSecret,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{AuthArgs, CodecArgs};

/// What `busline gateway` serves, and for which broker.
#[derive(Debug, clap::Args)]
pub(crate) struct GatewayArgs {
    /// The broker, e.g. unix:///run/busline.sock.
    #[arg(long, value_name = "URL")]
    broker: String,
    /// Where to serve HTTP, e.g. 127.0.0.1:8080.
    #[arg(long, value_name = "ADDR")]
    http: SocketAddr,
    /// Wait this many milliseconds for the broker to accept, when started
    /// before it (afterwards the gateway reconnects whenever it is lost).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    retry: u64,
    /// Take requests sent to this host name too (repeatable); addresses
    /// and localhost are always taken, other names refused.
    #[arg(long = "allow-host", value_name = "NAME")]
    hosts: Vec<String>,
    #[command(flatten)]
    codec: CodecArgs,
}

/// `busline gateway`: until Ctrl-C or SIGTERM, reconnecting to the broker
/// whenever it restarts.
pub(crate) async fn run(args: GatewayArgs, auth: &AuthArgs) -> Result<()> {
    let (addr, codec) = args.codec.resolve(args.broker.parse()?)?;
    let mut client = Client::builder(codec).auth(auth.authenticator()?);
    if args.retry > 0 {
        client = client.retry_connect(Duration::from_millis(args.retry));
    }
    let bus = BrokerClient::builder(client)
        .reconnect(Reconnect::default())
        .connect(&busline::any_transport(), &addr)
        .await?;
    let stop = CancellationToken::new();
    let serving = tokio::spawn(serve(
        bus,
        args.http,
        auth.secret()?,
        args.hosts,
        stop.clone(),
    ));
    let failed = until_signal(serving, stop).await;
    eprintln!("busline: shutting down");
    failed.unwrap_or(Ok(()))
}

/// Let the gateway task serve until Ctrl-C or SIGTERM, then stop it and
/// wait for the requests in progress; its error if it ended first.
pub(crate) async fn until_signal(
    mut serving: JoinHandle<Result<()>>,
    stop: CancellationToken,
) -> Option<Result<()>> {
    let served = tokio::select! {
        served = &mut serving => served,
        () = super::shutdown_signal() => {
            stop.cancel();
            let _ = serving.await;
            return None;
        }
    };
    Some(served.unwrap_or_else(|e| Err(Error::Protocol(format!("the gateway failed: {e}")))))
}

/// Serve the gateway for `bus` on `http` until `stop`; the requests in
/// progress then finish.
pub(crate) async fn serve(
    bus: BrokerClient,
    http: SocketAddr,
    secret: Option<SharedSecret>,
    hosts: Vec<String>,
    stop: CancellationToken,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(http).await.map_err(|e| {
        Error::transport(std::io::Error::new(
            e.kind(),
            format!("cannot serve HTTP on {http}: {e}"),
        ))
    })?;
    eprintln!("busline: gateway serving http://{}", listener.local_addr()?);
    if secret.is_some() && !http.ip().is_loopback() {
        eprintln!(
            "busline: warning: HTTP clients send the secret in clear to {http}; \
             put a TLS proxy in front, or serve on a loopback address"
        );
    }
    let mut gateway = hosts
        .into_iter()
        .fold(Gateway::builder(bus), |g, host| g.allow_host(host));
    if let Some(secret) = secret {
        gateway = gateway.secret(secret);
    }
    gateway
        .build()
        .serve(listener, stop.cancelled_owned())
        .await
        .map_err(Error::transport)
}
