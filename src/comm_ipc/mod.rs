//! A broker listener speaking comm-ipc's wire protocol, so that programs
//! written against the `comm_ipc` Python package use a busline broker
//! unchanged, beside busline's own clients.
//!
//! Each comm-ipc connection gets a [`BrokerClient`] of its own, claiming
//! the client's id, and every comm-ipc message becomes what that client
//! does on the broker:
//!
//! | comm-ipc | busline |
//! | --- | --- |
//! | `identify` (+ `conn_challenge`/`conn_proof` with a secret) | a broker client with that client id |
//! | `register` (open) | join the channel (the first to open one owns it); `channel_sync` lists its events |
//! | `register` with `is_provider` (groups too) | provide the event; calls reach the client as `call`, its `response`s answer them |
//! | `call`, `is_stream` | call or stream the event; the answer comes as `response`s |
//! | `send` | send: one provider gets it, nobody answers |
//! | `broadcast` of event `E` | publish `{"sender", "data"}` on topic `broadcast.E`; members that opened the channel hear it, but the sender |
//! | `add_subscription` / `remove_subscription` `S` | own (or give up) topic `sub.S`: only the owner publishes there |
//! | `subscribe` / `unsubscribe` / `publish` `S` | subscribe to / publish `data` on topic `sub.S`; the owner hears `subscription.S.first` and `.last` |
//! | `set_password`, `auth_challenge` and its proof | protect the busline channel with the same password; joiners answer comm-ipc's challenge |
//! | `signature` on a protected channel | checked on the calls, sends and broadcasts comm-ipc clients sign (unsigned ones refused), made on everything they receive |
//! | `list_members` | the channel's members, by client id |
//! | `metadata_update` | its listeners hear the listener's other comm-ipc clients join, provide, add subscriptions and leave |
//! | `ping` | `pong` |
//!
//! On a protected channel the listener holds the password, as comm-ipc's
//! server does (its owner sends it in `set_password`, or the listener is
//! given it with [`CommIpcBuilder::channel_password`] for a channel a
//! busline member protected), and signs on each leg: comm-ipc's signature
//! to and from its clients, busline's across the broker. Unlike comm-ipc's
//! server it signs stream chunks and publications too, so protected
//! streams and subscriptions work for comm-ipc's own clients.
//!
//! `data` crosses as CBOR, which holds every msgpack value, so a busline
//! member decodes it into its own types and answers in whatever encoding
//! it likes. A busline provider answers comm-ipc callers, and a comm-ipc
//! provider busline callers, each seeing the other as one of its own.
//!
//! ```no_run
//! use busline::{broker::Broker, comm_ipc, Address, CborCodec, MemoryTransport, UnixTransport};
//!
//! # async fn run() -> busline::Result<()> {
//! let inside = Address::memory("broker");
//! let broker = Broker::builder()
//!     .listen(MemoryTransport::new(), inside.clone(), CborCodec::new())
//!     .start()
//!     .await?;
//! // Python: CommIPC(socket_path="/run/comm-ipc.sock")
//! let listener = comm_ipc::CommIpcListener::builder()
//!     .server_id(broker.id())
//!     .bind(
//!         &UnixTransport::new(),
//!         &"unix:///run/comm-ipc.sock".parse()?,
//!         comm_ipc::in_process(inside),
//!     )
//!     .await?;
//! # Ok(()) }
//! ```

mod calls;
mod forward;
mod frame;
mod handshake;
mod metadata;
mod password;
mod pubsub;
mod session;
mod sign;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use busline_core::{Address, Listener, MemoryTransport, Result, Transport};
use futures::future::BoxFuture;
use rmpv::Value;
use sha2::{Digest, Sha256};
use tokio::{sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;

use crate::{broker::BrokerClient, rpc::Client, CborCodec};

/// comm-ipc's idle timeout: a connection silent this long is dropped (its
/// clients ping every 30 s).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The largest message taken by default: 4 MiB. A msgpack frame decodes to
/// values many times its size (a frame of nils, 40 times), so the limit is
/// lower than busline's own codecs'; comm-ipc's file transfers send 64 KiB
/// chunks.
pub const DEFAULT_MAX_FRAME: usize = 4 << 20;

/// Connections served at once by default; more wait to be accepted.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// Makes the broker client for the comm-ipc client with the given id
/// (claiming that id, so that a second connection with it is refused).
pub type Connect = Arc<dyn Fn(&str) -> BoxFuture<'static, Result<BrokerClient>> + Send + Sync>;

/// What every connection of one listener shares.
struct Shared {
    server_id: String,
    /// comm-ipc's stored form of the connection secret: its SHA-256, hex.
    secret_hash: Option<String>,
    idle_timeout: Duration,
    max_frame: usize,
    connect: Connect,
    registry: Mutex<Registry>,
}

impl Shared {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What comm-ipc tells about clients and events that busline does not
/// keep: a client's mode, an event's stream and group flags and schemas.
#[derive(Default)]
struct Registry {
    /// Client id → the mode it identified with.
    modes: HashMap<String, String>,
    /// (channel, event) → what its comm-ipc providers registered.
    events: HashMap<(String, String), EventMeta>,
    /// (channel, subscription) → the client id that added it, and the
    /// schema it gave.
    subs: HashMap<(String, String), (String, Value)>,
    /// Channel → the password its comm-ipc owner set, while comm-ipc
    /// clients are in the channel (or the listener was given it).
    passwords: HashMap<String, password::Password>,
    /// Channel → its comm-ipc clients, told of each other.
    rooms: HashMap<String, metadata::Room>,
}

impl Registry {
    /// A client is gone: drop what it registered.
    fn forget(&mut self, client_id: &str) {
        self.leave_rooms(client_id);
        // A channel's password is kept while comm-ipc clients are in it,
        // as comm-ipc's server keeps it while the channel has members.
        let rooms = &self.rooms;
        self.passwords
            .retain(|channel, p| p.given || rooms.contains_key(channel));
        self.modes.remove(client_id);
        self.subs.retain(|_, (owner, _)| owner != client_id);
        self.events.retain(|_, meta| {
            meta.providers.retain(|p| p != client_id);
            !meta.providers.is_empty()
        });
    }
}

struct EventMeta {
    is_stream: bool,
    is_group: bool,
    param_schema: Value,
    return_schema: Value,
    /// Client ids of its comm-ipc providers, first registered first.
    providers: Vec<String>,
}

impl Default for EventMeta {
    fn default() -> Self {
        EventMeta {
            is_stream: false,
            is_group: false,
            param_schema: Value::Nil,
            return_schema: Value::Nil,
            providers: Vec::new(),
        }
    }
}

/// The usual `connect` of [`CommIpcBuilder::bind`]: a CBOR client of the
/// broker listening at `addr` on the in-process [`MemoryTransport`],
/// claiming the comm-ipc client's id.
pub fn in_process(
    addr: Address,
) -> impl Fn(&str) -> BoxFuture<'static, Result<BrokerClient>> + Send + Sync + 'static {
    move |client_id: &str| {
        let (addr, client_id) = (addr.clone(), client_id.to_owned());
        Box::pin(async move {
            BrokerClient::builder(Client::builder(CborCodec::new()))
                .client_id(&client_id)
                .connect(&MemoryTransport::new(), &addr)
                .await
        })
    }
}

/// Seconds since the Unix epoch, as comm-ipc stamps messages.
fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Options for a [`CommIpcListener`].
pub struct CommIpcBuilder {
    server_id: String,
    secret_hash: Option<String>,
    idle_timeout: Duration,
    max_frame: usize,
    max_connections: usize,
    passwords: HashMap<String, password::Password>,
}

impl std::fmt::Debug for CommIpcBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommIpcBuilder")
            .field("server_id", &self.server_id)
            .field("secret", &self.secret_hash.as_ref().map(|_| ".."))
            .field("idle_timeout", &self.idle_timeout)
            .field("max_frame", &self.max_frame)
            .field("max_connections", &self.max_connections)
            .field("passwords", &self.passwords.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl CommIpcBuilder {
    /// The server id clients are told (comm-ipc's `server_id`); by
    /// default `busline`. Give the broker's id.
    pub fn server_id(mut self, id: impl Into<String>) -> Self {
        self.server_id = id.into();
        self
    }

    /// Require comm-ipc's connection secret (its `connection_secret`):
    /// clients prove they know it by answering a challenge.
    pub fn connection_secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        self.secret_hash = Some(hex::encode(Sha256::digest(secret.as_ref())));
        self
    }

    /// Let comm-ipc clients join `channel`, protected by a busline member
    /// with `password`: the listener checks their answers to its
    /// challenges with it, as comm-ipc's server does with the passwords it
    /// is given (`system_passwords`). Channels whose comm-ipc owner set
    /// the password need nothing here. Derives the channel's keys, which
    /// takes a moment of CPU on purpose.
    pub fn channel_password(mut self, channel: &str, password: &str) -> Self {
        let key = sign::derive(channel, password);
        self.passwords.insert(
            channel.to_owned(),
            password::Password {
                text: password.to_owned(),
                key,
                given: true,
            },
        );
        self
    }

    /// Drop a connection silent this long (default
    /// [`DEFAULT_IDLE_TIMEOUT`], as comm-ipc's server).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Refuse messages larger than this (default [`DEFAULT_MAX_FRAME`];
    /// comm-ipc itself sets none).
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.max_frame = bytes;
        self
    }

    /// Serve at most this many connections at once (default
    /// [`DEFAULT_MAX_CONNECTIONS`]); more wait to be accepted.
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.max_connections = connections.max(1);
        self
    }

    /// Listen at `addr` on `transport`, each connection served through
    /// the broker client `connect` makes for it.
    pub async fn bind<T, F>(
        self,
        transport: &T,
        addr: &Address,
        connect: F,
    ) -> Result<CommIpcListener>
    where
        T: Transport,
        F: Fn(&str) -> BoxFuture<'static, Result<BrokerClient>> + Send + Sync + 'static,
    {
        let mut listener = transport.bind(addr).await?;
        let local_addr = listener.local_addr();
        let shared = Arc::new(Shared {
            server_id: self.server_id,
            secret_hash: self.secret_hash,
            idle_timeout: self.idle_timeout,
            max_frame: self.max_frame,
            connect: Arc::new(connect),
            registry: Mutex::new(Registry {
                passwords: self.passwords,
                ..Registry::default()
            }),
        });
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let slots = Arc::new(Semaphore::new(self.max_connections));
        let task = tokio::spawn(async move {
            let mut sessions = JoinSet::new();
            loop {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    break;
                };
                let accepted = tokio::select! {
                    _ = stopped.cancelled() => break,
                    accepted = listener.accept() => accepted,
                    Some(_) = sessions.join_next(), if !sessions.is_empty() => continue,
                };
                match accepted {
                    Ok((io, _peer)) => {
                        let shared = shared.clone();
                        sessions.spawn(async move {
                            session::serve(shared, io).await;
                            drop(slot);
                        });
                    }
                    Err(err) => {
                        // Out of descriptors, most likely: wait for some.
                        tracing::warn!(error = %err, "comm-ipc listener: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            sessions.shutdown().await;
        });
        Ok(CommIpcListener {
            local_addr,
            stop,
            task: Some(task),
        })
    }
}

/// A listener serving comm-ipc clients through a broker; see the
/// [module docs](self).
#[derive(Debug)]
pub struct CommIpcListener {
    local_addr: Address,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl CommIpcListener {
    /// A listener with comm-ipc's defaults and no connection secret.
    pub fn builder() -> CommIpcBuilder {
        CommIpcBuilder {
            server_id: "busline".into(),
            secret_hash: None,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_frame: DEFAULT_MAX_FRAME,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            passwords: HashMap::new(),
        }
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> &Address {
        &self.local_addr
    }

    /// Stop accepting, and end every connection.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for CommIpcListener {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
