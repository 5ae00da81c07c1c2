//! What broker clients and the broker say to each other, on top of the RPC
//! layer.
//!
//! Control calls are ordinary calls to `busline.`-prefixed methods whose
//! arguments are the broker's own (it decodes them). Everything else is
//! routed by its name, and its payload is forwarded byte for byte, never
//! decoded:
//!
//! - `<channel>/<method>` is a call, a notification (`send`) or a stream,
//!   which goes to one provider of that method on that channel; the
//!   provider's answer comes back the same way.
//! - `<channel>#<topic>` is a publication, which goes to every connection
//!   with a matching subscription, as a notification of the same name.
//! - `<channel>!<method>` is a broadcast: a notification to every provider
//!   of that method but the sender, under the name `<channel>/<method>`.

use busline_core::{Error, Result};
use serde::{Deserialize, Serialize};

pub(crate) use super::relayed::{
    parse_relayed, relayed, RelayLagged, Relayed, RELAYED, RELAY_LAGGED,
};

/// Join (and create, if new) a channel.
pub(crate) const OPEN: &str = "busline.open";
/// Leave a channel.
pub(crate) const LEAVE: &str = "busline.leave";
/// Serve a method on a channel.
pub(crate) const PROVIDE: &str = "busline.provide";
/// Stop serving a method on a channel.
pub(crate) const UNPROVIDE: &str = "busline.unprovide";
/// Describe a channel: owner, members, providers.
pub(crate) const DESCRIBE: &str = "busline.describe";
/// Become the only publisher of a topic, told when it has subscribers.
pub(crate) const OWN_TOPIC: &str = "busline.own_topic";
/// Stop being the only publisher of a topic.
pub(crate) const DISOWN_TOPIC: &str = "busline.disown_topic";
/// Claim a client id, unique among live connections.
pub(crate) const IDENTIFY: &str = "busline.identify";
/// The whole broker: clients and every unprotected channel.
pub(crate) const STATUS: &str = "busline.status";
/// A nonce for proving knowledge of a channel's password.
pub(crate) const CHALLENGE: &str = "busline.challenge";
/// Protect a channel with a password, or lift the protection (owner only).
pub(crate) const SET_PASSWORD: &str = "busline.set_password";
/// Choose what happens when the owner leaves (owner only).
pub(crate) const SET_POLICY: &str = "busline.set_policy";
/// From the broker: something happened to a channel (a [`ChannelEvent`]).
pub(crate) const EVENT: &str = "busline.event";
/// Receive publications matching a pattern.
pub(crate) const SUBSCRIBE: &str = "busline.subscribe";
/// Stop receiving them.
pub(crate) const UNSUBSCRIBE: &str = "busline.unsubscribe";
/// From the broker: publications were dropped for a slow subscriber.
pub(crate) const LAGGED: &str = "busline.lagged";

/// Longest channel name accepted.
pub const MAX_CHANNEL_NAME: usize = 256;

/// Arguments naming a channel.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ChannelArgs {
    pub(crate) channel: String,
}

/// Arguments of [`OPEN`].
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct OpenArgs {
    pub(crate) channel: String,
    /// Hex proof of the password, for the nonce of the last [`CHALLENGE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) proof: Option<String>,
    /// Hex join key to protect the channel with, if this opens it first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) key: Option<String>,
    /// Join only a channel that exists: refused with `MethodNotFound`
    /// rather than created.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) existing: bool,
}

/// The answer to [`CHALLENGE`].
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Challenge {
    /// Hex nonce, good for one [`OPEN`] of that channel on this connection.
    pub(crate) nonce: String,
    /// Whether the channel exists: if not, the opener creates it and sends
    /// its join key; if so, only a proof.
    pub(crate) exists: bool,
}

/// Arguments of [`SET_PASSWORD`].
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct PasswordArgs {
    pub(crate) channel: String,
    /// Hex join key; none lifts the protection.
    pub(crate) key: Option<String>,
}

/// A 32-byte value sent as hex.
pub(crate) fn key_from_hex(what: &str, text: &str) -> Result<[u8; 32]> {
    let mut key = [0u8; 32];
    hex::decode_to_slice(text, &mut key)
        .map_err(|e| Error::Serialization(format!("{what} must be 64 hex digits: {e}")))?;
    Ok(key)
}

/// The answer to [`OPEN`].
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Opened {
    /// Whether the caller owns the channel (it opened it first).
    pub(crate) owner: bool,
}

/// Arguments naming one method of a channel.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct MethodArgs {
    pub(crate) channel: String,
    pub(crate) method: String,
    /// JSON Schemas of its params and result, if the provider gives them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) schema: Option<MethodSchema>,
    /// For a provider on another broker, reached through bridges: the ids
    /// of the brokers the registration came through, the provider's own
    /// first. Empty for a provider connected here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) via: Vec<String>,
}

/// Most brokers a registration may pass through (its `via`).
pub const MAX_HOPS: usize = 16;

/// Longest broker id accepted.
pub const MAX_BROKER_ID: usize = 64;

/// Check a broker id: 1 to [`MAX_BROKER_ID`] bytes of ASCII letters,
/// digits, `.`, `_` and `-`.
pub(crate) fn check_broker_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= MAX_BROKER_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::Protocol(format!(
            "a broker id has 1 to {MAX_BROKER_ID} ASCII letters, digits, '.', '_' or '-'; \
             got {:?}",
            id.chars().take(MAX_BROKER_ID + 8).collect::<String>()
        )))
    }
}

/// Set how a method's calls are shared (a provider of it only).
pub(crate) const SET_BALANCE: &str = "busline.set_balance";

/// Arguments of [`SET_BALANCE`].
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct BalanceArgs {
    pub(crate) channel: String,
    pub(crate) method: String,
    pub(crate) balance: Balance,
}

/// How the calls of one method are shared among its providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// To the provider with the fewest calls in progress, taking turns
    /// among equals (the default): a slow provider gets fewer calls.
    #[default]
    LeastActive,
    /// Strictly in turn, whatever each is doing.
    RoundRobin,
}

/// What a method takes and gives, as JSON Schemas, for tools that explore
/// a channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodSchema {
    /// The schema of the params.
    pub params: serde_json::Value,
    /// The schema of the result (of each item, for a stream).
    pub result: serde_json::Value,
}

/// Largest schema text the broker keeps for one method.
pub(crate) const MAX_SCHEMA: usize = 64 * 1024;

/// Arguments of [`SUBSCRIBE`] and [`UNSUBSCRIBE`].
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct PatternArgs {
    pub(crate) channel: String,
    pub(crate) pattern: String,
    /// For a bridge subscribing on behalf of subscribers on other brokers:
    /// the brokers the demand came through, the subscribers' first. Such a
    /// subscription gets publications as [`RELAYED`] names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) via: Vec<String>,
}

/// The broker's [`LAGGED`] notice.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Lagged {
    pub(crate) channel: String,
    pub(crate) missed: u64,
}

/// Arguments of [`OWN_TOPIC`].
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct TopicArgs {
    pub(crate) channel: String,
    pub(crate) topic: String,
}

/// Arguments of [`IDENTIFY`].
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct IdentifyArgs {
    pub(crate) client_id: String,
}

/// Longest client id accepted.
pub const MAX_CLIENT_ID: usize = 256;

/// The broker as [`BrokerClient::status`](super::BrokerClient::status) reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BrokerStatus {
    /// The broker's id, unique among the brokers bridged together.
    #[serde(default)]
    pub id: String,
    /// Connections that have joined a channel.
    pub clients: usize,
    /// Every channel without a password, by name; protected ones are only
    /// counted, as their members may not want to be seen.
    pub channels: Vec<ChannelInfo>,
    /// Channels with a password.
    pub protected_channels: usize,
    /// Connection number and client id of each client that claimed one.
    pub client_ids: Vec<(u64, String)>,
    /// Calls routed to a provider since the broker started (a call tried
    /// on a second provider after the first one left counts twice).
    #[serde(default)]
    pub calls: u64,
    /// Publications taken since the broker started, from its clients and
    /// through bridges.
    #[serde(default)]
    pub publications: u64,
}

/// What happens to a channel when its owner leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OwnerPolicy {
    /// The oldest remaining member becomes the owner (the default).
    #[default]
    Promote,
    /// The channel closes: members are told, calls in flight through it
    /// fail with [`Error::Disconnected`].
    Terminate,
}

/// Arguments of [`SET_POLICY`].
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct PolicyArgs {
    pub(crate) channel: String,
    pub(crate) policy: OwnerPolicy,
}

/// What the broker tells members about their channels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ChannelEvent {
    /// The owner left and another member owns the channel now.
    OwnerChanged {
        /// The channel.
        channel: String,
        /// Whether the member told is the new owner.
        you_own_it: bool,
    },
    /// Whether anyone is subscribed to a topic the member owns changed (and
    /// once when it takes the topic): publish while `wanted`.
    Demand {
        /// The channel.
        channel: String,
        /// The owned topic.
        topic: String,
        /// Whether at least one subscription matches it.
        wanted: bool,
    },
    /// The owner set, changed or removed the channel's password. Members
    /// stay in; one that checks passwords for others (the HTTP gateway)
    /// forgets the one it knew.
    PasswordChanged {
        /// The channel.
        channel: String,
        /// Whether it takes a password now.
        protected: bool,
    },
    /// The channel was closed; the member is no longer in it.
    Closed {
        /// The channel.
        channel: String,
        /// Why.
        reason: String,
    },
    /// Not from the broker: this many events came while the reader of
    /// [`BrokerClient::events`](super::BrokerClient::events) was behind by
    /// more than its backlog, and are lost to it.
    Missed {
        /// How many.
        count: u64,
    },
}

/// A channel as [`Channel::describe`](super::Channel::describe) reports it. Clients appear as the broker's
/// numbers for their connections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelInfo {
    /// The channel's name.
    pub name: String,
    /// Connection id of the owner.
    pub owner: u64,
    /// Connection ids of the members, oldest first.
    pub members: Vec<u64>,
    /// Each method served, with the connection ids of its providers.
    pub methods: Vec<(String, Vec<u64>)>,
    /// The schemas of the methods whose providers described them.
    pub schemas: Vec<(String, MethodSchema)>,
    /// The methods shared round-robin (the others go to the least busy).
    pub round_robin: Vec<String>,
    /// Providers on other brokers, reached through bridges: connection id
    /// of the bridge here, method, and the brokers the registration came
    /// through (the provider's first). Calls go to the provider with the
    /// fewest hops; the others stand by.
    #[serde(default)]
    pub routes: Vec<(u64, String, Vec<String>)>,
    /// Each subscription: connection id and pattern.
    pub subscriptions: Vec<(u64, String)>,
    /// Subscriptions on behalf of subscribers on other brokers, reached
    /// through bridges: connection id of the bridge here, pattern, and the
    /// brokers the demand came through (the subscribers' first).
    #[serde(default)]
    pub relays: Vec<(u64, String, Vec<String>)>,
    /// Whether joining takes the password.
    pub protected: bool,
    /// What happens when the owner leaves.
    pub policy: OwnerPolicy,
}

/// Check a channel name: not empty, at most [`MAX_CHANNEL_NAME`] bytes, no
/// `/`, `#` or `!` (they end the channel part of routed names), and not in the
/// `busline.` namespace the broker keeps for itself (but for its system
/// channels, which clients may open).
pub fn check_channel_name(name: &str) -> Result<()> {
    if super::system::is_system(name) {
        return Ok(());
    }
    let problem = if name.is_empty() {
        "is empty"
    } else if name.len() > MAX_CHANNEL_NAME {
        "is longer than 256 bytes"
    } else if name.contains(['/', '#', '!']) {
        "contains '/', '#' or '!', which end the channel part of routed names"
    } else if name.starts_with("busline.") {
        "starts with \"busline.\", which is reserved for the broker"
    } else {
        return Ok(());
    };
    Err(Error::Protocol(format!("channel name {name:?} {problem}")))
}

/// The routed method name for `method` on `channel`.
pub(crate) fn routed(channel: &str, method: &str) -> String {
    joined(channel, '/', method)
}

/// The routed name of a broadcast of `method` on `channel`.
pub(crate) fn broadcast(channel: &str, method: &str) -> String {
    joined(channel, '!', method)
}

/// The routed name of a publication on `topic` in `channel`.
pub(crate) fn published(channel: &str, topic: &str) -> String {
    joined(channel, '#', topic)
}

/// `channel`, `mark`, `rest` in one allocation of the exact size: built
/// once per call or publication, where `format!` costs more than the copy.
fn joined(channel: &str, mark: char, rest: &str) -> String {
    let mut name = String::with_capacity(channel.len() + 1 + rest.len());
    name.push_str(channel);
    name.push(mark);
    name.push_str(rest);
    name
}

/// What a routed name addresses.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Routed<'a> {
    /// A method of a channel's providers.
    Method { channel: &'a str, method: &'a str },
    /// A topic of a channel's subscribers.
    Topic { channel: &'a str, topic: &'a str },
    /// A method of every provider but the sender.
    Broadcast { channel: &'a str, method: &'a str },
}

/// Read a routed name: the first `/`, `#` or `!` ends the channel.
pub(crate) fn parse_routed(name: &str) -> Option<Routed<'_>> {
    // The marks are ASCII, so a byte search finds them at a char boundary,
    // faster than a search for any of several chars.
    let at = name.bytes().position(|b| matches!(b, b'/' | b'#' | b'!'))?;
    let (channel, rest) = (&name[..at], &name[at + 1..]);
    if channel.is_empty() || rest.is_empty() {
        return None;
    }
    Some(match name.as_bytes()[at] {
        b'/' => Routed::Method {
            channel,
            method: rest,
        },
        b'!' => Routed::Broadcast {
            channel,
            method: rest,
        },
        _ => Routed::Topic {
            channel,
            topic: rest,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_are_checked_and_routed_names_split() {
        assert!(check_channel_name("math").is_ok());
        assert!(check_channel_name("busline.system").is_ok());
        for bad in ["", "a/b", "a#b", "a!b", "busline.other", &"x".repeat(257)] {
            assert!(
                matches!(check_channel_name(bad), Err(Error::Protocol(_))),
                "{bad}"
            );
        }
        assert_eq!(
            parse_routed(&routed("math", "add/x#y")),
            Some(Routed::Method {
                channel: "math",
                method: "add/x#y"
            })
        );
        assert_eq!(
            parse_routed(&published("news", "a.b")),
            Some(Routed::Topic {
                channel: "news",
                topic: "a.b"
            })
        );
        assert_eq!(
            parse_routed(&broadcast("ch", "m")),
            Some(Routed::Broadcast {
                channel: "ch",
                method: "m"
            })
        );
        assert_eq!(
            parse_routed(&published("wärme", "ü.b")),
            Some(Routed::Topic {
                channel: "wärme",
                topic: "ü.b"
            }),
            "split at the mark's byte, never inside a character"
        );
        for bad in ["nochannel", "/m", "#t", "!m", "c/", "c#", "c!"] {
            assert_eq!(parse_routed(bad), None, "{bad}");
        }
    }
}
