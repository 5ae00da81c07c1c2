//! The NATS backbone: brokers on many hosts joined through a NATS cluster
//! instead of a mesh of bridges.
//!
//! Each broker gets one side of the backbone ([`Backbone::builder`], or
//! `busline broker --backbone nats://…`): a client of the broker, as a
//! bridge is, and a client of NATS. It tells the other brokers what its
//! broker's channels offer and want, offers there what theirs provide,
//! passes calls and streams to the broker that answers for them, and
//! publishes each publication once on NATS for every broker whose
//! subscribers want it, which NATS fans out. Payloads cross untouched, so
//! end-to-end signatures hold; a protected channel crosses only where its
//! password is given ([`BackboneBuilder::channel_password`]) and the
//! channel is protected on both brokers, and each broker keeps checking
//! its own members as before. Brokers joined by bridges come along: what
//! a broker reaches through a bridge it offers on the backbone too, and
//! the paths that bridges and the backbone share keep calls and
//! publications from going round.
//!
//! Why not a NATS [`Transport`](busline_core::Transport)? A transport is
//! one byte stream between two peers: over NATS that is a tunnel per pair
//! of brokers (a mesh again, N² of them), no use of NATS's fan-out, and a
//! stream that one lost message corrupts. Mapping busline's calls and
//! publications onto NATS's own subjects and request/reply keeps each
//! message whole, lets NATS fan publications out and lets operators see
//! and restrict the traffic by subject.
//!
//! # Subjects
//!
//! All under `busline.v1.<namespace>` (default namespace `default`);
//! channel, method, broker and topic names that are not plain NATS tokens
//! (ASCII letters, digits, `_`, `-`) travel as `~` and the hex of their
//! UTF-8 bytes.
//!
//! | subject | what |
//! |---|---|
//! | `announce` | each broker's offers and demand (JSON), every [`BackboneBuilder::announce_every`], at once when they change, and `leaving` when it stops; a broker not heard for three intervals is withdrawn |
//! | `sync` | a broker that joins asks the others to announce at once |
//! | `call.<broker>.<channel>.<method>` | a call for that broker; headers `Busline-Kind` (`unary`, `stream`, `notify`), `Busline-Encoding`, `Busline-Timeout-Ms` |
//! | `inbox.<broker>.<call>` | a call's answers (the caller subscribes to its own): `Busline-Reply` `ok`, `error` (a JSON [`RemoteError`](busline_core::RemoteError)), `alive` (every second while the call runs, with its control id in `Busline-Stream`), or for a stream `open` (with the id), numbered `item`s and `end` |
//! | `ctl.<broker>.<id>` | the caller of a call served by that broker, once told its id: `Busline-Credit` (how many stream items it takes; every second, as a keep-alive) or `cancel` |
//! | `pub.<channel>.<topic tokens>` | a publication, once for every broker that wants it; `Busline-Name` carries its origin, number and path, so each broker delivers it once |
//! | `pub.<channel>.~` | word of that channel's publications lost on the way |
//!
//! A call whose broker has left (NATS has no responder for it) goes to
//! the next broker that answers for the method, as it did not run; a call
//! in flight to a broker that says it leaves fails at once, and a call or
//! stream whose other side says nothing for five seconds fails with
//! [`Error::Disconnected`] (on the provider's side it is cancelled, as it
//! is when its caller gives up on it). Two brokers announcing one id are
//! told as an error, and one of them leaves the backbone. A
//! message larger than the NATS server's `max_payload` (1 MiB by default)
//! fails with [`Error::FrameTooLarge`]; a publication that large is
//! counted as lost and told to the subscribers as
//! [`Event::Lagged`](crate::broker::Event::Lagged).
//!
//! The NATS account is the trust boundary: anyone who may publish on
//! these subjects may call what the carried unprotected channels offer
//! (as anyone who may connect to a broker can), announce or withdraw
//! brokers, and read publications; protected channels stay protected
//! end to end (unsigned calls and publications are refused by their
//! receivers). Give NATS credentials and TLS (`async_nats::ConnectOptions`,
//! `busline broker --backbone-creds`, `--backbone-ca`) and keep the
//! subjects to the brokers' account. Every broker on the backbone should
//! carry the same channels ([`BackboneBuilder::channels`]): what comes
//! through a broker on the backbone is never passed back onto it, on any
//! channel.
//!
//! ```no_run
//! use busline::{backbone::Backbone, broker::{Broker, BrokerClient}, rpc::Client,
//!     Address, CborCodec, MemoryTransport};
//!
//! # async fn run() -> busline::Result<()> {
//! let inside = Address::memory("backbone-doc");
//! let broker = Broker::builder().listen(MemoryTransport::new(), inside.clone(), CborCodec::new())
//!     .start().await?;
//! let local = BrokerClient::connect(Client::builder(CborCodec::new()), &MemoryTransport::new(), &inside).await?;
//! let nats = async_nats::connect("nats://127.0.0.1:4222").await
//!     .map_err(|e| busline::Error::Disconnected(e.to_string()))?;
//! let backbone = Backbone::builder().start(local, nats).await?;
//! // … every broker on the backbone now reaches this one's channels, and it theirs.
//! backbone.shutdown().await;
//! broker.shutdown().await;
//! # Ok(()) }
//! ```

mod announce;
mod calls;
mod node;
mod publish;
mod serve;
mod subject;
mod sync;
mod wire;

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use busline_core::{Error, Result};
use tokio_util::sync::CancellationToken;

pub use announce::{MAX_BROKERS, MAX_ROUTES};
pub use node::MAX_SERVED;
pub use subject::MAX_NAMESPACE;

use crate::broker::BrokerClient;

/// The namespace brokers share unless told otherwise.
pub const DEFAULT_NAMESPACE: &str = "default";

/// How often each broker tells the backbone what it offers and wants.
pub const DEFAULT_ANNOUNCE: Duration = Duration::from_secs(2);

/// Entry point: [`Backbone::builder`].
#[derive(Debug)]
pub struct Backbone;

impl Backbone {
    /// Configure this broker's side of the backbone, then
    /// [`BackboneBuilder::start`] it.
    pub fn builder() -> BackboneBuilder {
        BackboneBuilder {
            namespace: DEFAULT_NAMESPACE.to_owned(),
            channels: None,
            passwords: Vec::new(),
            announce: DEFAULT_ANNOUNCE,
        }
    }
}

/// One broker's side of the backbone, about to start.
#[derive(Debug, Clone)]
pub struct BackboneBuilder {
    namespace: String,
    channels: Option<BTreeSet<String>>,
    passwords: Vec<(String, String)>,
    announce: Duration,
}

impl BackboneBuilder {
    /// Join the brokers of this namespace (1 to [`MAX_NAMESPACE`] ASCII
    /// letters, digits, `_` or `-`): several sets of brokers can share one
    /// NATS cluster apart. Default: [`DEFAULT_NAMESPACE`].
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Carry only these channels (default: every channel without a
    /// password).
    pub fn channels<I, S>(mut self, channels: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.channels = Some(channels.into_iter().map(Into::into).collect());
        self
    }

    /// Carry the protected `channel`, whose password this is (repeatable),
    /// to and from the brokers where it is protected too and their side of
    /// the backbone is given the password.
    pub fn channel_password(
        mut self,
        channel: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.passwords.push((channel.into(), password.into()));
        self
    }

    /// Announce this often (at least every 100 ms); a broker not heard for
    /// three intervals is withdrawn, so every broker of a namespace should
    /// use the same. Default: [`DEFAULT_ANNOUNCE`].
    pub fn announce_every(mut self, every: Duration) -> Self {
        self.announce = every.max(Duration::from_millis(100));
        self
    }

    /// Join the broker of `local` (a client of it, as a bridge's) to the
    /// backbone through `nats`. Returns once this side listens on NATS and
    /// has announced; the other brokers' offers arrive within moments.
    pub async fn start(
        self,
        local: BrokerClient,
        nats: async_nats::Client,
    ) -> Result<BackboneHandle> {
        let subjects = subject::Subjects::new(&self.namespace)?;
        let mut allow = self.channels;
        let keys = crate::bridge::carried_keys(&mut allow, &self.passwords).await?;
        let id = local.status().await?.id;
        let node = Arc::new(node::Node::new(
            nats,
            subjects,
            id,
            local.clone(),
            allow.clone(),
        ));
        let stop = CancellationToken::new();
        let brokers = Arc::new(Mutex::new(Vec::new()));
        let run = sync::Run::start(
            node,
            sync::Config {
                allow,
                keys,
                announce: self.announce,
            },
            brokers.clone(),
            stop.clone(),
        )
        .await?;
        let task = tokio::spawn(run);
        Ok(BackboneHandle {
            stop,
            task,
            local,
            brokers,
        })
    }
}

/// This broker's running side of the backbone; dropping it leaves too.
#[derive(Debug)]
pub struct BackboneHandle {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    local: BrokerClient,
    brokers: Arc<Mutex<Vec<String>>>,
}

impl BackboneHandle {
    /// The other brokers on the backbone, as last heard.
    pub fn brokers(&self) -> Vec<String> {
        self.brokers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Leave the backbone: the other brokers withdraw what this one
    /// offered at once, and this broker what they offered (callers fail
    /// over to another way, or get a typed error).
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        let _ = (&mut self.task).await;
    }
}

impl Drop for BackboneHandle {
    fn drop(&mut self) {
        self.stop.cancel();
        self.local.close();
    }
}

/// Check a namespace as [`BackboneBuilder::namespace`] takes it (before
/// connecting, to fail fast).
pub fn check_namespace(namespace: &str) -> Result<()> {
    subject::Subjects::new(namespace).map(drop)
}

/// Connect to NATS at `url` (one server, or several comma-separated:
/// the client moves to another when one fails) with `options` (its
/// credentials, TLS, …), as the backbone wants it; a refusal is a typed
/// error naming the URL.
pub async fn connect(url: &str, options: async_nats::ConnectOptions) -> Result<async_nats::Client> {
    let servers: Vec<&str> = url.split(',').map(str::trim).collect();
    options
        .name("busline backbone")
        .connect(&servers[..])
        .await
        .map_err(|err| {
            Error::transport(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                format!("cannot join the NATS backbone at {url}: {err}"),
            ))
        })
}
