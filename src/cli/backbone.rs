//! `busline broker --backbone nats://…`: the broker joined to others
//! through NATS.

use std::path::{Path, PathBuf};

use busline::{
    backbone::{self, Backbone, BackboneHandle, DEFAULT_NAMESPACE},
    broker::BrokerClient,
    rpc::Client,
    Address, Error, Result,
};

/// The backbone options of `busline broker`.
#[derive(Debug, clap::Args)]
pub(crate) struct BackboneArgs {
    /// Join the brokers on the NATS backbone at URL (several servers of one
    /// cluster comma-separated, e.g. nats://10.0.0.1:4222,nats://10.0.0.2:4222):
    /// their channels, providers, streams and publications reach this
    /// broker's clients, and this broker's reach theirs.
    #[arg(long, value_name = "URL")]
    backbone: Option<String>,
    /// Join the brokers of this namespace on the backbone (subjects under
    /// busline.v1.NAME).
    #[arg(long, value_name = "NAME", default_value = DEFAULT_NAMESPACE, requires = "backbone")]
    backbone_namespace: String,
    /// Announce this broker's offers every MS milliseconds (every broker of
    /// a namespace should use the same: one not heard for three intervals
    /// is withdrawn).
    #[arg(long, value_name = "MS", default_value_t = 2000, requires = "backbone")]
    backbone_announce: u64,
    /// Authenticate to NATS with this credentials file (a user JWT and
    /// NKey seed, as `nsc` writes them).
    #[arg(long, value_name = "FILE", requires = "backbone")]
    backbone_creds: Option<PathBuf>,
    /// Authenticate to NATS with the token on the first line of FILE.
    #[arg(long, value_name = "FILE", requires = "backbone")]
    backbone_token_file: Option<PathBuf>,
    /// Trust this CA (PEM) for the NATS servers' TLS certificates; TLS is
    /// then required.
    #[arg(long, value_name = "FILE", requires = "backbone")]
    backbone_ca: Option<PathBuf>,
    /// Present this client certificate (PEM) to NATS, with --backbone-key.
    #[arg(long, value_name = "FILE", requires_all = ["backbone", "backbone_key"])]
    backbone_cert: Option<PathBuf>,
    /// The key (PEM) of --backbone-cert.
    #[arg(long, value_name = "FILE", requires = "backbone_cert")]
    backbone_key: Option<PathBuf>,
    /// Carry only this channel over the backbone (repeatable; default:
    /// every channel without a password).
    #[arg(long = "backbone-channel", value_name = "NAME", requires = "backbone")]
    channels: Vec<String>,
    /// Carry the protected CHANNEL too, whose password is the first line of
    /// FILE (repeatable): only to and from brokers where it is protected
    /// and their side of the backbone is given the password as well.
    #[arg(
        long = "backbone-channel-password-file",
        value_name = "CHANNEL=FILE",
        requires = "backbone"
    )]
    channel_passwords: Vec<String>,
}

impl BackboneArgs {
    /// Whether the broker joins a backbone.
    pub(crate) fn wanted(&self) -> bool {
        self.backbone.is_some()
    }
}

fn readable(path: &Path, what: &str) -> Result<()> {
    std::fs::metadata(path)
        .map(drop)
        .map_err(|e| Error::Unauthorized(format!("cannot read the {what} {}: {e}", path.display())))
}

/// Join the broker (reached in this process at `inside`) to the backbone,
/// if asked to.
pub(crate) async fn join(args: &BackboneArgs, inside: &Address) -> Result<Option<BackboneHandle>> {
    let Some(url) = &args.backbone else {
        return Ok(None);
    };
    backbone::check_namespace(&args.backbone_namespace)?;
    let mut builder = Backbone::builder()
        .namespace(&args.backbone_namespace)
        .announce_every(std::time::Duration::from_millis(args.backbone_announce));
    if !args.channels.is_empty() {
        builder = builder.channels(args.channels.iter().cloned());
    }
    for given in &args.channel_passwords {
        let (channel, password) =
            super::bridge::channel_password("--backbone-channel-password-file", given)?;
        builder = builder.channel_password(channel, password);
    }
    let mut options = async_nats::ConnectOptions::new();
    if let Some(creds) = &args.backbone_creds {
        options = options.credentials_file(creds).await.map_err(|e| {
            Error::Unauthorized(format!(
                "cannot read the NATS credentials {}: {e}",
                creds.display()
            ))
        })?;
    }
    if let Some(file) = &args.backbone_token_file {
        let token = super::bus::password(Some(file))?.unwrap_or_default();
        options = options.token(token);
    }
    if let Some(ca) = &args.backbone_ca {
        readable(ca, "NATS CA certificate")?;
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&args.backbone_cert, &args.backbone_key) {
        readable(cert, "NATS client certificate")?;
        readable(key, "NATS client key")?;
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    let nats = backbone::connect(url, options).await?;
    let local = BrokerClient::builder(Client::builder(busline::CborCodec::new()))
        .client_id(&format!("busline.backbone.{}", std::process::id()))
        .connect(&busline::MemoryTransport::new(), inside)
        .await?;
    let handle = builder.start(local, nats).await?;
    eprintln!("busline: joined the NATS backbone at {url}");
    Ok(Some(handle))
}
