//! `busline pub`, `sub` and `status`: a broker from the command line.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use busline::{
    broker::{BrokerClient, Channel, Event},
    rpc::Client,
    Authenticator, Error, Result,
};
use futures::StreamExt;

use super::{json_text, CodecArgs};

/// The broker and how to reach it.
#[derive(Debug, clap::Args)]
pub(crate) struct BusArgs {
    /// The broker, e.g. unix:///tmp/bus.sock.
    url: String,
    #[command(flatten)]
    codec: CodecArgs,
}

/// A channel on the broker.
#[derive(Debug, clap::Args)]
pub(crate) struct ChannelArgs {
    /// The channel.
    pub(crate) channel: String,
    /// The channel's password, read from this file (first line).
    #[arg(long, value_name = "FILE")]
    pub(crate) password_file: Option<PathBuf>,
}

/// What `busline pub` publishes.
#[derive(Debug, clap::Args)]
pub(crate) struct PubArgs {
    #[command(flatten)]
    bus: BusArgs,
    #[command(flatten)]
    channel: ChannelArgs,
    /// The topic, dot-separated, e.g. sensors.kitchen.temp.
    topic: String,
    /// The message, as JSON.
    message: String,
}

/// What `busline sub` listens to.
#[derive(Debug, clap::Args)]
pub(crate) struct SubArgs {
    #[command(flatten)]
    bus: BusArgs,
    #[command(flatten)]
    channel: ChannelArgs,
    /// Topics to receive: `*` stands for one token, a final `>` for the rest.
    #[arg(default_value = ">")]
    pattern: String,
    /// Exit after this many messages.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
}

async fn connect(bus: &BusArgs, auth: Arc<dyn Authenticator>) -> Result<BrokerClient> {
    let (addr, codec) = bus.codec.resolve(bus.url.parse()?)?;
    BrokerClient::connect(
        Client::builder(codec).auth(auth),
        &busline::any_transport(),
        &addr,
    )
    .await
}

/// The password from a `--password-file`, read before connecting so that
/// a missing file fails fast.
pub(crate) fn password(file: Option<&Path>) -> Result<Option<String>> {
    let Some(path) = file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::Unauthorized(format!(
            "cannot read the password file {}: {e}",
            path.display()
        ))
    })?;
    Ok(Some(text.lines().next().unwrap_or_default().to_owned()))
}

/// Join `channel`, with its password if there is one.
pub(crate) async fn join(
    bus: &BrokerClient,
    channel: &str,
    password: Option<String>,
) -> Result<Channel> {
    match password {
        None => bus.open(channel).await,
        Some(password) => bus.open_with_password(channel, &password).await,
    }
}

/// `busline pub URL CHANNEL TOPIC JSON`.
pub(crate) async fn publish(args: PubArgs, auth: Arc<dyn Authenticator>) -> Result<()> {
    let payload = super::json_payload("the message", &args.message)?;
    let password = password(args.channel.password_file.as_deref())?;
    let bus = connect(&args.bus, auth).await?;
    join(&bus, &args.channel.channel, password)
        .await?
        .publish_raw(&args.topic, payload)
        .await?;
    bus.client().flush().await
}

/// `busline sub URL CHANNEL [PATTERN]`: one JSON line per event.
pub(crate) async fn subscribe(args: SubArgs, auth: Arc<dyn Authenticator>) -> Result<()> {
    let password = password(args.channel.password_file.as_deref())?;
    let bus = connect(&args.bus, auth).await?;
    let mut events = join(&bus, &args.channel.channel, password)
        .await?
        .subscribe(&args.pattern)
        .await?;
    let mut received = 0;
    while args.count.map_or(true, |n| received < n) {
        let Some(event) = events.next().await else {
            return Err(Error::Disconnected(
                "the broker closed the connection".into(),
            ));
        };
        match event? {
            Event::Message(p) => {
                println!(
                    "{{\"topic\":{},\"message\":{}}}",
                    serde_json::Value::String(p.topic.clone()),
                    json_text(&p.payload)?
                );
                received += 1;
            }
            Event::Lagged(n) => println!("{{\"lagged\":{n}}}"),
            Event::Interrupted => println!("{{\"interrupted\":true}}"),
        }
    }
    Ok(())
}

/// `busline status URL`: the broker's clients and channels, as JSON.
pub(crate) async fn status(bus: BusArgs, auth: Arc<dyn Authenticator>) -> Result<()> {
    let status = connect(&bus, auth).await?.status().await?;
    let text =
        serde_json::to_string_pretty(&status).map_err(|e| Error::Serialization(e.to_string()))?;
    println!("{text}");
    Ok(())
}
