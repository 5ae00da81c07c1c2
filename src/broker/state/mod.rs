//! The broker's tables: channels, their members and owners, and who
//! provides which method.
//!
//! One mutex guards them; every operation is a short, non-blocking edit, and
//! no lock is held across an await.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex, MutexGuard,
    },
};

use busline_core::{Error, Result};

use tokio_util::sync::CancellationToken;

use serde_json::json;

use super::{
    keys,
    outlet::{Outlet, SlowSubscriber},
    protocol::{self, BrokerStatus, ChannelInfo, OwnerPolicy},
    queue::QueueBounds,
    system::{self, Happening},
};

/// The owner of the system channels: no connection has id 0.
const BROKER: u64 = 0;

/// Most channels one client may be in, and most methods, subscriptions and
/// owned topics it may have in one channel: the broker's tables never grow
/// without bound at one client's will.
pub const MAX_PER_CLIENT: usize = 1024;

fn too_many(what: &str) -> Error {
    Error::Overloaded(format!("a client may have at most {MAX_PER_CLIENT} {what}"))
}
use crate::rpc::Client;

mod joining;
mod lifecycle;
mod providers;
pub(crate) use providers::Busy;
mod pubsub;
mod relay;

use pubsub::{announce, emit};

/// Default bound on publications queued for one subscriber connection:
/// a burst of this many tiny ones is absorbed (about 4 MiB).
pub const DEFAULT_SUBSCRIBER_QUEUE: usize = 65536;
/// Default bound on the bytes publications queued for one subscriber
/// connection hold (payloads and queue entries).
pub const DEFAULT_SUBSCRIBER_QUEUE_BYTES: usize = 8 << 20;

/// Everything the broker knows.
#[derive(Debug)]
pub(crate) struct State {
    /// This broker's id among bridged brokers.
    id: String,
    /// The number of the next publication first published here, as it
    /// travels between brokers: starts from the clock, so that a broker
    /// restarted under the same id does not reuse numbers others saw.
    next_seq: std::sync::atomic::AtomicU64,
    /// Calls routed and publications taken since the start, for status.
    calls: std::sync::atomic::AtomicU64,
    publications: std::sync::atomic::AtomicU64,
    inner: Mutex<Inner>,
    subscriber_queue: QueueBounds,
    slow_subscriber: SlowSubscriber,
}

/// Keyed by connection ids, which the broker gives out in sequence (no
/// client chooses them): a fast hash is safe here, and these run for every
/// delivery or routed call.
type ById<V> = rustc_hash::FxHashMap<u64, V>;
type Outlets = ById<Outlet>;

#[derive(Debug, Default)]
struct Inner {
    /// The calling side of every connection that joined a channel.
    peers: ById<Client>,
    channels: HashMap<String, Channel>,
    /// Where each subscribing connection's publications queue up.
    outlets: Outlets,
    /// The open password challenge of each connection, for one channel.
    nonces: ById<(String, [u8; 32])>,
    /// Calls each provider connection is answering right now.
    active: ById<usize>,
    /// Client ids claimed by live connections, both ways.
    client_ids: HashMap<String, u64>,
    ids_of: ById<String>,
    /// The publications from other brokers seen lately, by origin and
    /// channel.
    seen: HashMap<(String, String), relay::Seen>,
}

impl Channel {
    fn new(owner: u64, key: Option<[u8; 32]>) -> Self {
        /// Channels' numbers, never reused: a call passed on through one is
        /// failed by number when it closes, not by a name a new channel
        /// may take.
        static NEXT_SERIAL: AtomicU64 = AtomicU64::new(1);
        Channel {
            serial: NEXT_SERIAL.fetch_add(1, Ordering::Relaxed),
            passed_by: Default::default(),
            owner,
            members: Vec::new(),
            methods: HashMap::new(),
            subscriptions: Vec::new(),
            relays: Vec::new(),
            key,
            policy: OwnerPolicy::default(),
            system: false,
            closed: CancellationToken::new(),
            topics: HashMap::new(),
        }
    }
}

#[derive(Debug)]
struct Channel {
    /// This channel's number among all channels this process made.
    serial: u64,
    /// The connections that passed calls on through it (see
    /// [`State::pass_target`]): those to tell when it closes.
    passed_by: rustc_hash::FxHashSet<u64>,
    owner: u64,
    /// Oldest first: the next owner when the owner leaves.
    members: Vec<u64>,
    methods: HashMap<String, Providers>,
    /// Connection and pattern of each subscription, in connection order
    /// (so a publication offered to each connection once needs no set).
    subscriptions: Vec<(u64, String)>,
    /// Connection, pattern and path of each subscription a bridge made on
    /// behalf of subscribers on other brokers (see [`protocol::RELAYED`]).
    relays: Vec<(u64, String, Vec<String>)>,
    /// The join key, if the channel takes a password.
    key: Option<[u8; 32]>,
    policy: OwnerPolicy,
    /// One of the broker's own channels: never closed, only it speaks.
    system: bool,
    /// Cancelled when the channel closes, failing calls in flight.
    closed: CancellationToken,
    /// Topics one publisher owns: its connection, and whether anyone is
    /// subscribed (as last told).
    topics: HashMap<String, (u64, bool)>,
}

#[derive(Debug, Default)]
struct Providers {
    /// As the latest provider described the method, if one did.
    schema: Option<protocol::MethodSchema>,
    conns: Vec<u64>,
    /// The brokers between this one and each provider reached through a
    /// bridge (the provider's first); no entry for a local provider.
    via: HashMap<u64, Vec<String>>,
    /// Round-robin position.
    next: usize,
    balance: protocol::Balance,
}

impl State {
    /// Tables with the system channels, protected by the given join keys.
    pub(crate) fn new(
        id: String,
        subscriber_queue: QueueBounds,
        slow_subscriber: SlowSubscriber,
        system_keys: &[(String, [u8; 32])],
    ) -> State {
        let mut inner = Inner::default();
        for name in system::SYSTEM_CHANNELS {
            let key = system_keys.iter().find(|(n, _)| n == name).map(|(_, k)| *k);
            let mut ch = Channel::new(BROKER, key);
            ch.system = true;
            inner.channels.insert(name.to_owned(), ch);
        }
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2));
        State {
            id,
            next_seq: std::sync::atomic::AtomicU64::new(clock),
            calls: Default::default(),
            publications: Default::default(),
            inner: Mutex::new(inner),
            subscriber_queue,
            slow_subscriber,
        }
    }

    /// The path of something that came through bridges (`what`): within
    /// [`protocol::MAX_HOPS`] brokers, each with a valid id.
    fn check_path<S: AsRef<str>>(&self, what: &str, via: &[S]) -> Result<()> {
        if via.len() > protocol::MAX_HOPS {
            return Err(Error::Protocol(format!(
                "{what} is {} brokers away; at most {} are followed (protocol::MAX_HOPS)",
                via.len(),
                protocol::MAX_HOPS
            )));
        }
        via.iter()
            .try_for_each(|id| protocol::check_broker_id(id.as_ref()))
    }

    /// Whether a path passes through this broker.
    fn on_path<S: AsRef<str>>(&self, via: &[S]) -> bool {
        via.iter().any(|id| id.as_ref() == self.id)
    }

    /// A registration that came through bridges (`what`): a valid path
    /// ([`State::check_path`]) not through this broker (a loop).
    fn check_route(&self, what: &str, via: &[String]) -> Result<()> {
        self.check_path(what, via)?;
        if self.on_path(via) {
            return Err(Error::Protocol(format!(
                "a loop: {what} already came through this broker ({}), by way of {via:?}",
                self.id
            )));
        }
        Ok(())
    }

    /// A connection was authenticated.
    pub(crate) fn connected(&self, id: u64, who: &busline_core::Identity) {
        let inner = self.lock();
        let body = json!({"client": id, "peer": who.peer.description, "scheme": who.scheme});
        announce(&inner, Happening::new("client.connected", body));
    }

    /// Connection `id` claims `client_id`; refused while another live
    /// connection holds it, or if this one already has another.
    pub(crate) fn identify(&self, id: u64, client_id: &str) -> Result<()> {
        if client_id.is_empty() || client_id.len() > protocol::MAX_CLIENT_ID {
            return Err(Error::Protocol(format!(
                "a client id has 1 to {} bytes",
                protocol::MAX_CLIENT_ID
            )));
        }
        let mut inner = self.lock();
        match (inner.client_ids.get(client_id), inner.ids_of.get(&id)) {
            (Some(&holder), _) if holder == id => return Ok(()),
            (Some(_), _) => {
                return Err(Error::Unauthorized(format!(
                    "client id {client_id:?} is in use by a live connection"
                )))
            }
            (None, Some(mine)) => {
                return Err(Error::Protocol(format!(
                    "this connection is already client {mine:?}"
                )))
            }
            (None, None) => {}
        }
        inner.client_ids.insert(client_id.to_owned(), id);
        inner.ids_of.insert(id, client_id.to_owned());
        let body = json!({"client": id, "client_id": client_id});
        announce(&inner, Happening::new("client.identified", body));
        Ok(())
    }

    /// Report a refused operation on `busline.errors`.
    pub(crate) fn refused(&self, id: u64, operation: &str, error: &Error) {
        let inner = self.lock();
        // The error may name a protected channel; the operation and who
        // asked are what operators need.
        let body = json!({"client": id, "operation": operation, "error": error.code().as_str()});
        emit(&inner, system::ERRORS, "refused", &body);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent tables (every
        // edit is a single insert or remove), so a poisoned lock is usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every client and unprotected channel.
    pub(crate) fn status(&self) -> BrokerStatus {
        let inner = self.lock();
        let mut channels: Vec<ChannelInfo> = inner
            .channels
            .iter()
            .filter(|(_, ch)| ch.key.is_none() && !ch.system)
            .map(|(name, ch)| info(name, ch))
            .collect();
        channels.sort_by(|a, b| a.name.cmp(&b.name));
        let mut client_ids: Vec<(u64, String)> =
            inner.ids_of.iter().map(|(c, n)| (*c, n.clone())).collect();
        client_ids.sort();
        let system = system::SYSTEM_CHANNELS.len();
        BrokerStatus {
            id: self.id.clone(),
            clients: inner.peers.len(),
            protected_channels: inner.channels.len() - channels.len() - system,
            channels,
            client_ids,
            calls: self.calls.load(std::sync::atomic::Ordering::Relaxed),
            publications: self.publications.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Count a call routed to a provider.
    fn routed_call(&self) {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Count a publication taken.
    fn took_publication(&self) {
        self.publications
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// What `channel` looks like now.
    pub(crate) fn describe(&self, channel: &str) -> Option<ChannelInfo> {
        let inner = self.lock();
        inner.channels.get(channel).map(|ch| info(channel, ch))
    }
}

fn info(channel: &str, ch: &Channel) -> ChannelInfo {
    let mut methods: Vec<(String, Vec<u64>)> = ch
        .methods
        .iter()
        .map(|(m, p)| (m.clone(), p.conns.clone()))
        .collect();
    methods.sort();
    let mut schemas: Vec<(String, protocol::MethodSchema)> = ch
        .methods
        .iter()
        .filter_map(|(m, p)| p.schema.clone().map(|s| (m.clone(), s)))
        .collect();
    schemas.sort_by(|a, b| a.0.cmp(&b.0));
    let mut round_robin: Vec<String> = ch
        .methods
        .iter()
        .filter(|(_, p)| p.balance == protocol::Balance::RoundRobin)
        .map(|(m, _)| m.clone())
        .collect();
    round_robin.sort();
    let mut routes: Vec<(u64, String, Vec<String>)> = ch
        .methods
        .iter()
        .flat_map(|(m, p)| p.via.iter().map(|(c, v)| (*c, m.clone(), v.clone())))
        .collect();
    routes.sort();
    ChannelInfo {
        name: channel.to_owned(),
        owner: ch.owner,
        members: ch.members.clone(),
        methods,
        schemas,
        round_robin,
        routes,
        subscriptions: ch.subscriptions.clone(),
        relays: ch.relays.clone(),
        protected: ch.key.is_some(),
        policy: ch.policy,
    }
}

fn owned_by<'a>(
    inner: &'a mut Inner,
    channel: &str,
    id: u64,
    what: &str,
) -> Result<&'a mut Channel> {
    let ch = member_of(&mut inner.channels, channel, id)?;
    if ch.owner != id {
        return Err(Error::Unauthorized(format!(
            "only the owner of channel {channel:?} may change its {what}"
        )));
    }
    Ok(ch)
}

/// Channel `channel` of `channels`, if connection `id` is a member.
fn member_of<'a>(
    channels: &'a mut HashMap<String, Channel>,
    channel: &str,
    id: u64,
) -> Result<&'a mut Channel> {
    channels
        .get_mut(channel)
        .filter(|ch| ch.members.contains(&id))
        .ok_or_else(|| not_member(channel))
}

fn only_the_broker(channel: &str) -> Error {
    Error::Unauthorized(format!(
        "only the broker speaks on system channel {channel:?}"
    ))
}

/// A call in flight through `channel` when it closed.
pub(crate) fn closed_in_flight(channel: &str) -> Error {
    Error::Disconnected(format!(
        "channel {channel:?} was closed while the call was in flight"
    ))
}

/// Every provider a call was sent to left before answering it, and no
/// other is left.
pub(crate) fn providers_left(channel: &str, method: &str) -> Error {
    Error::Disconnected(format!(
        "every provider of {method:?} on channel {channel:?} left before answering"
    ))
}

fn not_member(channel: &str) -> Error {
    Error::Unauthorized(format!(
        "not a member of channel {channel:?}: open it first"
    ))
}
