//! Publications and who wants them.

use busline_core::{Payload, Result};
use serde_json::Value;

use super::{
    lifecycle::tell, member_of, only_the_broker, relay::offer_relays, too_many, Channel, Inner,
    Outlets, State, MAX_PER_CLIENT,
};
use crate::{
    broker::{
        outlet::{Copies, Outlet},
        protocol::{self, ChannelEvent},
        system::{self, Happening},
        topic,
    },
    rpc::Client,
};

impl State {
    /// Connection `id` becomes the only publisher of `topic` on `channel`,
    /// and is told now, and whenever it changes, whether anyone wants it.
    pub(crate) fn own_topic(&self, channel: &str, topic_name: &str, id: u64) -> Result<()> {
        topic::check_topic(topic_name)?;
        let mut inner = self.lock();
        let ch = member_of(&mut inner.channels, channel, id)?;
        if ch.system {
            return Err(only_the_broker(channel));
        }
        if ch.topics.values().filter(|(o, _)| *o == id).count() >= MAX_PER_CLIENT {
            return Err(too_many("owned topics per channel"));
        }
        match ch.topics.get(topic_name) {
            Some((owner, _)) if *owner != id => {
                return Err(busline_core::Error::Unauthorized(format!(
                    "topic {topic_name:?} on channel {channel:?} has another publisher"
                )))
            }
            Some(_) => return Ok(()),
            None => {}
        }
        let wanted = wants(ch, topic_name);
        ch.topics.insert(topic_name.to_owned(), (id, wanted));
        let event = ChannelEvent::Demand {
            channel: channel.to_owned(),
            topic: topic_name.to_owned(),
            wanted,
        };
        tell(&inner, id, &event);
        Ok(())
    }

    /// Connection `id` gives up `topic` on `channel`: anyone may publish
    /// on it again, or own it. Giving up a topic one does not own is
    /// refused.
    pub(crate) fn disown_topic(&self, channel: &str, topic_name: &str, id: u64) -> Result<()> {
        topic::check_topic(topic_name)?;
        let mut inner = self.lock();
        let ch = member_of(&mut inner.channels, channel, id)?;
        match ch.topics.get(topic_name) {
            Some((owner, _)) if *owner == id => {
                ch.topics.remove(topic_name);
                Ok(())
            }
            _ => Err(busline_core::Error::Unauthorized(format!(
                "topic {topic_name:?} on channel {channel:?} is not this client's"
            ))),
        }
    }

    /// Connection `peer` receives publications on `channel` whose topic
    /// matches `pattern`: as they are, or, for a bridge subscribing on
    /// behalf of subscribers on the brokers in `via`, as [`protocol::RELAYED`]
    /// names.
    pub(crate) fn subscribe(
        &self,
        channel: &str,
        pattern: &str,
        peer: &Client,
        via: Vec<String>,
    ) -> Result<()> {
        topic::check_pattern(pattern)?;
        if !via.is_empty() {
            let what = format!("the subscription to {pattern:?} on channel {channel:?}");
            self.check_route(&what, &via)?;
        }
        let mut inner = self.lock();
        let id = peer.connection_id();
        let ch = member_of(&mut inner.channels, channel, id)?;
        if ch.system && !via.is_empty() {
            return Err(only_the_broker(channel));
        }
        let mine = ch.subscriptions.iter().filter(|(c, _)| *c == id).count()
            + ch.relays.iter().filter(|(c, _, _)| *c == id).count();
        let known = ch
            .subscriptions
            .iter()
            .any(|(c, p)| *c == id && p == pattern)
            || ch.relays.iter().any(|(c, p, _)| *c == id && p == pattern);
        if mine >= MAX_PER_CLIENT && !known {
            return Err(too_many("subscriptions per channel"));
        }
        ch.subscriptions
            .retain(|(c, p)| !(*c == id && p == pattern));
        ch.relays.retain(|(c, p, _)| !(*c == id && p == pattern));
        let mut body = serde_json::json!({"channel": channel, "pattern": pattern, "client": id});
        if via.is_empty() {
            let at = ch.subscriptions.partition_point(|(c, _)| *c <= id);
            ch.subscriptions.insert(at, (id, pattern.to_owned()));
        } else {
            body["via"] = serde_json::json!(via);
            ch.relays.push((id, pattern.to_owned(), via));
        }
        if !known && !ch.system {
            announce(&inner, Happening::new("subscription.added", body));
        }
        let (bounds, policy) = (self.subscriber_queue, self.slow_subscriber);
        inner
            .outlets
            .entry(id)
            .or_insert_with(|| Outlet::start(peer.clone(), bounds, policy));
        refresh_demand(&mut inner, channel);
        Ok(())
    }

    /// Connection `id` no longer receives what `pattern` matches.
    pub(crate) fn unsubscribe(&self, channel: &str, pattern: &str, id: u64) {
        let mut inner = self.lock();
        if let Some(ch) = inner.channels.get_mut(channel) {
            let before = ch.subscriptions.len() + ch.relays.len();
            ch.subscriptions
                .retain(|(c, p)| !(*c == id && p == pattern));
            ch.relays.retain(|(c, p, _)| !(*c == id && p == pattern));
            if ch.subscriptions.len() + ch.relays.len() < before && !ch.system {
                let body =
                    serde_json::json!({"channel": channel, "pattern": pattern, "client": id});
                announce(&inner, Happening::new("subscription.removed", body));
            }
        }
        refresh_demand(&mut inner, channel);
    }

    /// Offer publication `name` (the channel's `channel_len` bytes, `#`,
    /// the topic) to every connection subscribed to its topic, each once;
    /// `publisher` must be a member of the channel. Offers never wait (a
    /// full queue drops and counts), so this holds the lock briefly.
    pub(crate) fn publish(
        &self,
        name: String,
        channel_len: usize,
        publisher: u64,
        payload: &Payload,
    ) -> Result<()> {
        let (channel, topic) = (&name[..channel_len], &name[channel_len + 1..]);
        topic::check_topic(topic)?;
        let mut inner = self.lock();
        // Looked up once: this runs for every publication.
        let Inner {
            channels, outlets, ..
        } = &mut *inner;
        let ch: &Channel = member_of(channels, channel, publisher)?;
        if ch.system {
            return Err(only_the_broker(channel));
        }
        if let Some((owner, _)) = ch.topics.get(topic) {
            if *owner != publisher {
                return Err(busline_core::Error::Unauthorized(format!(
                    "topic {topic:?} on channel {channel:?} has another publisher"
                )));
            }
        }
        self.took_publication();
        let first = protocol::Relayed {
            origin: &self.id,
            seq: self
                .next_seq
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            via: Vec::new(),
            channel,
            topic,
        };
        // Bridges first: the local offer takes the name with it.
        offer_relays(ch, outlets, &self.id, &first, payload);
        offer(ch, outlets, name, channel_len, payload);
        Ok(())
    }
}

/// Whether anyone, here or through a bridge, wants `topic_name`.
fn wants(ch: &Channel, topic_name: &str) -> bool {
    ch.subscriptions
        .iter()
        .any(|(_, p)| topic::matches(p, topic_name))
        || ch
            .relays
            .iter()
            .any(|(_, p, _)| topic::matches(p, topic_name))
}

/// Offer publication `name` (the channel's `channel_len` bytes, `#`, the
/// topic) to each connection subscribed to its topic, once however many
/// of its patterns match. The name goes as it is to a lone subscriber;
/// several share it, or the frame encoded once (see [`Copies`]).
pub(super) fn offer(
    ch: &Channel,
    outlets: &Outlets,
    name: String,
    channel_len: usize,
    payload: &Payload,
) {
    let (channel, topic_name) = (&name[..channel_len], &name[channel_len + 1..]);
    let (mut only, mut copies) = (None, None::<Copies>);
    let mut last = None;
    for (conn, pattern) in &ch.subscriptions {
        // In connection order: one already offered it was the last one.
        if last == Some(*conn) || !topic::matches(pattern, topic_name) {
            continue;
        }
        last = Some(*conn);
        let Some(outlet) = outlets.get(conn) else {
            continue;
        };
        // The first one waits to see whether it is the only one.
        match (&mut copies, only.take()) {
            (Some(copies), _) => copies.offer(outlet, channel),
            (None, None) => only = Some(outlet),
            (None, Some(first)) => {
                let copies = copies.insert(Copies::new(&name, payload));
                copies.offer(first, channel);
                copies.offer(outlet, channel);
            }
        }
    }
    if let Some(only) = only {
        only.offer_own(name, channel_len, payload.clone());
    }
}

/// Publish on a system channel to whoever subscribed to `topic` there.
pub(super) fn emit(inner: &Inner, channel: &str, topic_name: &str, body: &Value) {
    let Some(ch) = inner.channels.get(channel).filter(|ch| {
        ch.subscriptions
            .iter()
            .any(|(_, pattern)| topic::matches(pattern, topic_name))
    }) else {
        return;
    };
    let Ok(payload) = Payload::json(body) else {
        return;
    };
    let name = protocol::published(channel, topic_name);
    offer(ch, &inner.outlets, name, channel.len(), &payload);
}

/// Tell `busline.system` and `busline.logs`.
pub(super) fn announce(inner: &Inner, happening: Happening) {
    tracing::info!(topic = happening.topic, body = %happening.body, "broker");
    // What happens in a protected channel is its members' business.
    let channel = happening.body.get("channel").and_then(Value::as_str);
    if channel.is_some_and(|c| inner.channels.get(c).is_some_and(|ch| ch.key.is_some())) {
        return;
    }
    emit(inner, system::SYSTEM, happening.topic, &happening.body);
    emit(inner, system::LOGS, "info", &happening.line());
}

/// Tell owners of `channel`'s topics whose demand changed.
pub(super) fn refresh_demand(inner: &mut Inner, channel: &str) {
    let Some(ch) = inner.channels.get_mut(channel) else {
        return;
    };
    let mut changed = Vec::new();
    let wanted_now: Vec<bool> = ch.topics.keys().map(|t| wants(ch, t)).collect();
    for ((topic_name, (owner, wanted)), now) in ch.topics.iter_mut().zip(wanted_now) {
        if now != *wanted {
            *wanted = now;
            changed.push((*owner, topic_name.clone(), now));
        }
    }
    for (owner, topic_name, wanted) in changed {
        let event = ChannelEvent::Demand {
            channel: channel.to_owned(),
            topic: topic_name,
            wanted,
        };
        tell(inner, owner, &event);
    }
}
