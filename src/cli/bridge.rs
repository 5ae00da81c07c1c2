//! `busline bridge URL-A URL-B`, and the bridges `busline broker --bridge`
//! starts to its peers.

use std::{path::Path, sync::Arc, time::Duration};

use busline::{
    bridge::{Bridge, BridgeBuilder, BridgeHandle},
    broker::{BrokerClient, Reconnect},
    codec::AnyCodec,
    rpc::Client,
    Address, Authenticator, Error, Result,
};

/// What `busline bridge` was asked to do.
#[derive(Debug, clap::Args)]
pub(crate) struct BridgeArgs {
    /// One broker, e.g. unix:///run/busline.sock (its ?codec= picks the codec).
    a: String,
    /// The other, e.g. tcp://10.0.0.2:7400.
    b: String,
    /// Carry only this channel across (repeatable; default: every channel
    /// without a password).
    #[arg(long = "channel", value_name = "NAME")]
    channels: Vec<String>,
    /// Carry the protected CHANNEL too, whose password is the first line of
    /// FILE (repeatable). Without it nothing of a protected channel
    /// crosses; with it, only to a broker where the channel takes the same
    /// password.
    #[arg(long = "channel-password-file", value_name = "CHANNEL=FILE")]
    channel_passwords: Vec<String>,
}

/// How long a bridge keeps trying to reach a broker that is not up yet.
const FIRST_CONNECT: Duration = Duration::from_secs(30);

/// A client of the broker at `url` for a bridge: it reconnects for as long
/// as the bridge runs, and waits up to [`FIRST_CONNECT`] for the broker to
/// come up.
pub(crate) async fn side(url: &str, auth: Arc<dyn Authenticator>) -> Result<BrokerClient> {
    let addr: Address = url.parse()?;
    let codec = AnyCodec::for_address(&addr)?;
    // Client ids are unique per broker: one per bridge side of this process.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    BrokerClient::builder(
        Client::builder(codec)
            .auth(auth)
            .retry_connect(FIRST_CONNECT),
    )
    .client_id(&format!("busline.bridge.{}.{n}", std::process::id()))
    .reconnect(Reconnect::default())
    .connect(&busline::any_transport(), &addr)
    .await
}

/// Start `bridge` between the brokers at `a` and `b`.
pub(crate) async fn start(
    bridge: BridgeBuilder,
    a: &str,
    b: &str,
    auth: Arc<dyn Authenticator>,
) -> Result<BridgeHandle> {
    let (side_a, side_b) = (side(a, auth.clone()).await?, side(b, auth).await?);
    bridge.start(side_a, side_b).await
}

/// The channel and password of a `CHANNEL=FILE` given to `flag`: the
/// file's first line.
pub(crate) fn channel_password<'a>(flag: &str, given: &'a str) -> Result<(&'a str, String)> {
    let (channel, file) = given
        .split_once('=')
        .ok_or_else(|| Error::Protocol(format!("{flag} takes CHANNEL=FILE, not {given:?}")))?;
    let password = super::bus::password(Some(Path::new(file)))?.unwrap_or_default();
    Ok((channel, password))
}

/// `busline bridge A B`: until Ctrl-C or SIGTERM.
pub(crate) async fn run(args: BridgeArgs, auth: Arc<dyn Authenticator>) -> Result<()> {
    let mut bridge = Bridge::builder();
    if !args.channels.is_empty() {
        bridge = bridge.channels(args.channels.iter().cloned());
    }
    // Read before connecting: a missing file fails fast.
    for given in &args.channel_passwords {
        let (channel, password) = channel_password("--channel-password-file", given)?;
        bridge = bridge.channel_password(channel, password);
    }
    let bridge = start(bridge, &args.a, &args.b, auth).await?;
    eprintln!(
        "busline: bridging {} and {}; Ctrl-C to stop",
        args.a, args.b
    );
    super::shutdown_signal().await;
    eprintln!("busline: stopping the bridge");
    bridge.shutdown().await;
    Ok(())
}

/// Bridges from the broker at `local` to each of `peers`, started in the
/// background (a peer may come up later; one that never does is reported,
/// and tried again).
pub(crate) fn to_peers(
    local: &Address,
    peers: &[String],
    auth: Arc<dyn Authenticator>,
) -> tokio::task::JoinSet<()> {
    let mut bridges = tokio::task::JoinSet::new();
    for peer in peers {
        let (local, peer, auth) = (local.to_string(), peer.clone(), auth.clone());
        bridges.spawn(async move {
            loop {
                match start(Bridge::builder(), &local, &peer, auth.clone()).await {
                    Ok(bridge) => {
                        eprintln!("busline: bridged to {peer}");
                        // Runs until this task is aborted at shutdown.
                        std::future::pending::<()>().await;
                        drop(bridge);
                    }
                    Err(e) => {
                        eprintln!("busline: cannot bridge to {peer} yet: {e}");
                        tokio::time::sleep(FIRST_CONNECT / 10).await;
                    }
                }
            }
        });
    }
    bridges
}
