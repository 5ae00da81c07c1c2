//! The `busline` program's commands, over the run-time `dyn` seam: the URL
//! picks the transport ([`busline::any_transport`]) and the codec
//! ([`AnyCodec`]).

mod backbone;
pub(crate) mod bridge;
pub(crate) mod bus;
mod comm_ipc;
pub(crate) mod demo;
pub(crate) mod gateway;
mod service;

use std::{path::PathBuf, sync::Arc, time::Duration};

use busline::{
    broker::{Broker, BrokerClient},
    codec::AnyCodec,
    rpc::{Client, Server},
    Address, Authenticator, Encoding, Error, NoAuth, Payload, PeerAllowList, Result, SharedSecret,
};
use futures::StreamExt;

/// Authentication options shared by the commands.
#[derive(Debug, clap::Args)]
pub(crate) struct AuthArgs {
    /// Require (serve) or use (call) HMAC-SHA256 authentication with the
    /// shared secret in this file.
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,
    /// Serving on a Unix socket: admit only peers running as this user id
    /// (repeatable; with --allow-gid, either one admits).
    #[arg(long, value_name = "UID")]
    allow_uid: Vec<u32>,
    /// Serving on a Unix socket: admit only peers in this primary group.
    #[arg(long, value_name = "GID")]
    allow_gid: Vec<u32>,
}

impl AuthArgs {
    /// The shared secret, if one is given: what the HTTP gateway asks of
    /// its clients as a bearer token.
    pub(crate) fn secret(&self) -> Result<Option<SharedSecret>> {
        self.secret_file
            .as_ref()
            .map(SharedSecret::from_file)
            .transpose()
    }

    /// The shared secret's bytes, checked as [`AuthArgs::secret`] checks
    /// them: comm-ipc's connection secret.
    pub(crate) fn secret_bytes(&self) -> Result<Option<Vec<u8>>> {
        let Some(path) = &self.secret_file else {
            return Ok(None);
        };
        let bytes = SharedSecret::read_file(path)?;
        // The same checks, and errors, as for busline's own handshake.
        SharedSecret::from_file(path)?;
        Ok(Some(bytes))
    }

    /// Whether only some peers are let in by their credentials
    /// (`--allow-uid`, `--allow-gid`).
    pub(crate) fn restricts_peers(&self) -> bool {
        !self.allow_uid.is_empty() || !self.allow_gid.is_empty()
    }

    pub(crate) fn authenticator(&self) -> Result<Arc<dyn Authenticator>> {
        let inner: Arc<dyn Authenticator> = match &self.secret_file {
            Some(path) => Arc::new(SharedSecret::from_file(path)?),
            None => Arc::new(NoAuth),
        };
        if self.allow_uid.is_empty() && self.allow_gid.is_empty() {
            return Ok(inner);
        }
        let list = self
            .allow_uid
            .iter()
            .fold(PeerAllowList::wrapping(inner), |l, &u| l.allow_uid(u));
        Ok(Arc::new(
            self.allow_gid.iter().fold(list, |l, &g| l.allow_gid(g)),
        ))
    }
}

/// The `--codec` option shared by the commands.
#[derive(Debug, clap::Args)]
pub(crate) struct CodecArgs {
    /// The codec: jsonline, plain-jsonline, jsonrpc or cbor. Overrides the URL's ?codec=
    /// (a jsonrpc URL's &framing= still applies).
    #[arg(long, value_name = "NAME", value_parser = codec_name)]
    codec: Option<String>,
}

impl CodecArgs {
    /// The address to use and the codec for it: `--codec` if given, else
    /// what the URL asks for.
    pub(crate) fn resolve(&self, addr: Address) -> Result<(Address, AnyCodec)> {
        let addr = match &self.codec {
            Some(name) => addr.with_param("codec", name.as_str()),
            None => addr,
        };
        let codec = AnyCodec::for_address(&addr)?;
        Ok((addr, codec))
    }
}

/// Checks a `--codec` value when the command line is read, so a wrong name
/// is a usage error listing the codecs this build has.
fn codec_name(name: &str) -> std::result::Result<String, String> {
    match AnyCodec::named(name) {
        Ok(_) => Ok(name.to_owned()),
        Err(Error::Address { reason, .. }) => Err(reason),
        Err(other) => Err(other.to_string()),
    }
}

/// What `busline call` was asked to do.
#[derive(Debug, clap::Args)]
pub(crate) struct CallArgs {
    /// The server, e.g. unix:///tmp/busline.sock.
    url: String,
    /// The method name.
    method: String,
    /// Arguments as JSON.
    #[arg(default_value = "null")]
    args: String,
    /// Read the answer as a stream, one JSON line per item.
    #[arg(long, conflicts_with = "notify")]
    stream: bool,
    /// Send as a notification: no reply is expected.
    #[arg(long)]
    notify: bool,
    /// Give up after this many milliseconds.
    #[arg(long, value_name = "MS")]
    timeout: Option<u64>,
    /// Keep retrying a refused connection for this many milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    retry: u64,
    /// Call through a broker: open this channel, then call METHOD on it.
    #[arg(long, value_name = "NAME")]
    channel: Option<String>,
    /// With --channel: the channel's password, read from this file.
    #[arg(long, value_name = "FILE", requires = "channel")]
    password_file: Option<PathBuf>,
    #[command(flatten)]
    codec: CodecArgs,
}

/// What `busline broker` was asked to do.
#[derive(Debug, clap::Args)]
pub(crate) struct BrokerArgs {
    /// Where to listen, once per listener, e.g. --listen unix:///run/busline.sock
    /// --listen 'tcp://127.0.0.1:7400?codec=jsonrpc'. Each URL's ?codec= picks
    /// that listener's codec; ?codec=comm-ipc serves the comm_ipc Python
    /// package's clients (with --secret-file as their connection secret).
    #[arg(long = "listen", value_name = "URL", required = true)]
    listen: Vec<String>,
    /// This broker's id among brokers bridged together (letters, digits,
    /// '.', '_', '-'); default: 16 random hex digits.
    #[arg(long, value_name = "ID")]
    id: Option<String>,
    /// Bridge this broker to the broker at URL (repeatable): the providers
    /// of each answer the callers of the other (see `busline bridge`).
    #[arg(long = "bridge", value_name = "URL")]
    bridges: Vec<String>,
    /// Drop clients that go silent (a vanished machine, a frozen process):
    /// probe one idle this many milliseconds, drop it if it does not answer
    /// within as many again. Every busline client answers probes.
    #[arg(long, value_name = "MS")]
    heartbeat: Option<u64>,
    /// Poll clients' connections for a moment before sleeping (20 µs,
    /// stretching up to 500 µs while they keep busy): several times lower
    /// latency where the broker has a core to itself, CPU time taken from
    /// its clients where it does not.
    #[arg(long)]
    spin: bool,
    /// Run as the one instance: lock this pidfile (its directory is made if
    /// missing) and write the pid; refuse to start if a live broker holds
    /// it. Removed on Ctrl-C or SIGTERM.
    #[arg(long, value_name = "PATH")]
    pidfile: Option<PathBuf>,
    /// Also serve the HTTP gateway (as `busline gateway` does) on this
    /// address, e.g. 127.0.0.1:8080; with --secret-file, HTTP clients give
    /// the secret as `Authorization: Bearer <secret>`.
    #[arg(long, value_name = "ADDR")]
    http: Option<std::net::SocketAddr>,
    /// With --http: take requests sent to this host name too (repeatable);
    /// addresses and localhost are always taken, other names refused.
    #[arg(long = "allow-host", value_name = "NAME")]
    hosts: Vec<String>,
    #[command(flatten)]
    backbone: backbone::BackboneArgs,
}

/// `busline serve [URL] [--shm-rpc-bridge NAME]`: the demo service until
/// Ctrl-C or SIGTERM.
pub(crate) async fn serve(
    url: Option<&str>,
    shm_rpc_bridge: Option<&str>,
    codec: &CodecArgs,
    auth: Arc<dyn Authenticator>,
) -> Result<()> {
    let server = match url {
        Some(url) => {
            let (addr, codec) = codec.resolve(url.parse()?)?;
            let server = Server::builder(service::router(), codec)
                .auth(auth)
                .bind(&busline::any_transport(), &addr)
                .await?;
            eprintln!("busline: serving on {}", server.local_addr());
            Some(server)
        }
        None => None,
    };
    let srb = match shm_rpc_bridge {
        Some(name) => {
            let srb = busline::srb::SrbServer::builder(service::router())
                .bind(name)
                .await?;
            eprintln!("busline: serving shm-rpc-bridge service {name}");
            Some(srb)
        }
        None => None,
    };
    eprintln!("busline: Ctrl-C to stop");
    shutdown_signal().await;
    eprintln!("busline: shutting down");
    if let Some(server) = server {
        server.shutdown().await;
    }
    if let Some(srb) = srb {
        srb.shutdown().await;
    }
    Ok(())
}

/// `busline broker --listen URL ...`: a broker on every listener until
/// Ctrl-C or SIGTERM.
pub(crate) async fn broker(args: BrokerArgs, auth_args: &AuthArgs) -> Result<()> {
    let auth = auth_args.authenticator()?;
    let secret = auth_args.secret()?;
    if args.http.is_some() && auth_args.restricts_peers() && secret.is_none() {
        return Err(Error::Unauthorized(
            "--http would let in over TCP whoever --allow-uid and --allow-gid keep out: \
             give --secret-file too, which HTTP clients then present"
                .into(),
        ));
    }
    // Before any listener: a second instance must not touch the first's
    // sockets.
    let _pidfile = match &args.pidfile {
        Some(path) => Some(busline::daemon::Pidfile::create(path).map_err(|e| {
            let kind = match &e {
                busline::daemon::PidfileError::AlreadyRunning { .. } => {
                    std::io::ErrorKind::AddrInUse
                }
                busline::daemon::PidfileError::Io { source, .. } => source.kind(),
            };
            Error::Transport(std::io::Error::new(kind, e.to_string()).into())
        })?),
        None => None,
    };
    // Not fatal: the broker still serves as many clients as it can.
    if let Err(e) = busline::daemon::raise_fd_limit() {
        eprintln!("busline: cannot raise the open file limit: {e}");
    }
    // comm-ipc's clients come in through a listener of their own, which
    // acts for each of them as a busline client of this broker.
    let (comm_ipc, listen): (Vec<Address>, Vec<Address>) = args
        .listen
        .iter()
        .map(|url| url.parse::<Address>())
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .partition(|addr| addr.param("codec") == Some("comm-ipc"));
    if !comm_ipc.is_empty() && auth_args.restricts_peers() {
        return Err(Error::Unauthorized(
            "--allow-uid and --allow-gid do not apply to comm-ipc listeners: protect them \
             with --secret-file (comm-ipc's connection secret) or the socket's file mode"
                .into(),
        ));
    }
    let mut builder = Broker::builder();
    if let Some(id) = &args.id {
        builder = builder.id(id);
    }
    if let Some(ms) = args.heartbeat {
        builder = builder.heartbeat(Duration::from_millis(ms));
    }
    if args.spin {
        builder = builder.spin(busline::Spin::ADAPTIVE);
    }
    for addr in listen {
        let codec = AnyCodec::for_address(&addr)?;
        if let AnyCodec::PlainJsonLine(_) = codec {
            return Err(Error::Address {
                url: addr.to_string(),
                reason: "a broker speaks busline's protocol; plain-jsonline serves one \
                         handler (busline serve)"
                    .into(),
            });
        }
        builder = builder.listen_with(busline::any_transport(), addr, codec, auth.clone());
    }
    // The way in of the gateway, the comm-ipc listeners and the backbone:
    // in this process only, so it needs no secret (they ask their own
    // clients for it).
    let inside = Address::memory(format!("busline-inside-{}", std::process::id()));
    if args.http.is_some() || !comm_ipc.is_empty() || args.backbone.wanted() {
        builder = builder.listen(
            busline::MemoryTransport::new(),
            inside.clone(),
            busline::CborCodec::new(),
        );
    }
    let broker = builder.start().await?;
    for addr in broker.local_addrs() {
        eprintln!("busline: broker {} listening on {addr}", broker.id());
    }
    let mut comm_ipc_listeners = Vec::new();
    for addr in comm_ipc {
        let listener = comm_ipc::listen(&addr, broker.id(), &inside, auth_args).await?;
        eprintln!(
            "busline: broker {} listening for comm-ipc clients on {}",
            broker.id(),
            listener.local_addr()
        );
        comm_ipc_listeners.push(listener);
    }
    let stop_gateway = tokio_util::sync::CancellationToken::new();
    let gateway = match args.http {
        Some(http) => {
            let bus = BrokerClient::connect(
                Client::builder(busline::CborCodec::new()),
                &busline::MemoryTransport::new(),
                &inside,
            )
            .await?;
            let serving = gateway::serve(bus, http, secret, args.hosts, stop_gateway.clone());
            Some(tokio::spawn(serving))
        }
        None => None,
    };
    let mut bridges = bridge::to_peers(broker.local_addrs()[0], &args.bridges, auth);
    let backbone = match backbone::join(&args.backbone, &inside).await {
        Ok(backbone) => backbone,
        Err(err) => {
            bridges.shutdown().await;
            broker.shutdown().await;
            return Err(err);
        }
    };
    eprintln!("busline: Ctrl-C to stop");
    let failed = match gateway {
        Some(serving) => gateway::until_signal(serving, stop_gateway).await,
        None => {
            shutdown_signal().await;
            None
        }
    };
    eprintln!("busline: shutting down");
    for listener in comm_ipc_listeners {
        listener.shutdown().await;
    }
    if let Some(backbone) = backbone {
        backbone.shutdown().await;
    }
    bridges.shutdown().await;
    broker.shutdown().await;
    failed.unwrap_or(Ok(()))
}

pub(crate) async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

/// `text` as a JSON payload, or an error that quotes the start of it (an
/// argument may be megabytes long).
pub(crate) fn json_payload(what: &str, text: &str) -> Result<Payload> {
    serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(|e| {
        let shown: String = text.chars().take(60).collect();
        let more = if shown.len() < text.len() { "…" } else { "" };
        Error::Serialization(format!("{what} must be valid JSON ({e}): {shown}{more}"))
    })?;
    Ok(Payload::from_bytes(Encoding::Json, text.to_owned()))
}

/// `busline call URL METHOD [ARGS]`.
pub(crate) async fn call(args: CallArgs, auth: Arc<dyn Authenticator>) -> Result<()> {
    let (addr, codec) = args.codec.resolve(args.url.parse()?)?;
    let payload = json_payload("the arguments", &args.args)?;
    let password = bus::password(args.password_file.as_deref())?;
    let mut builder = Client::builder(codec).auth(auth);
    if let Some(ms) = args.timeout {
        builder = builder.timeout(Duration::from_millis(ms));
    }
    if args.retry > 0 {
        builder = builder.retry_connect(Duration::from_millis(args.retry));
    }
    let transport = busline::any_transport();
    let Some(channel) = args.channel else {
        let client = builder.connect(&transport, &addr).await?;
        if args.notify {
            client.notify_raw(&args.method, payload).await?;
            return client.flush().await;
        }
        if args.stream {
            let items = client
                .stream_raw::<serde_json::Value>(&args.method, payload)
                .await?;
            return print_each(items).await;
        }
        println!(
            "{}",
            json_text(&client.call_raw(&args.method, payload).await?)?
        );
        return Ok(());
    };
    // Through a broker, by way of the channel, which signs and checks on
    // a protected channel.
    let bus = BrokerClient::connect(builder, &transport, &addr).await?;
    let channel = bus::join(&bus, &channel, password).await?;
    let value: serde_json::Value = payload.decode()?;
    if args.notify {
        channel.send(&args.method, &value).await?;
        return bus.client().flush().await;
    }
    if args.stream {
        let items = channel
            .stream::<_, serde_json::Value>(&args.method, &value)
            .await?;
        return print_each(items).await;
    }
    println!(
        "{}",
        channel
            .call::<_, serde_json::Value>(&args.method, &value)
            .await?
    );
    Ok(())
}

/// Print each item of a stream on its own line; an error item ends it.
async fn print_each(
    mut items: impl futures::Stream<Item = Result<serde_json::Value>> + Unpin,
) -> Result<()> {
    while let Some(item) = items.next().await {
        println!("{}", item?);
    }
    Ok(())
}

/// A payload as JSON text, whatever its encoding.
pub(crate) fn json_text(payload: &Payload) -> Result<String> {
    match payload.encoding() {
        Encoding::Json => Ok(String::from_utf8_lossy(payload.bytes()).into_owned()),
        _ => Ok(payload.decode::<serde_json::Value>()?.to_string()),
    }
}
