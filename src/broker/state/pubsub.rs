//! Publications and who wants them.

use std::sync::Arc;

use busline_core::{Payload, Result};
use serde_json::Value;

use super::{lifecycle::tell, member_of, only_the_broker, too_many, Inner, State, MAX_PER_CLIENT};
use crate::{
    broker::{
        outlet::Outlet,
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
        let ch = member_of(&mut inner, channel, id)?;
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
        let wanted = ch
            .subscriptions
            .iter()
            .any(|(_, p)| topic::matches(p, topic_name));
        ch.topics.insert(topic_name.to_owned(), (id, wanted));
        let event = ChannelEvent::Demand {
            channel: channel.to_owned(),
            topic: topic_name.to_owned(),
            wanted,
        };
        tell(&inner, id, &event);
        Ok(())
    }

    /// Connection `peer` receives publications on `channel` whose topic
    /// matches `pattern`.
    pub(crate) fn subscribe(&self, channel: &str, pattern: &str, peer: &Client) -> Result<()> {
        topic::check_pattern(pattern)?;
        let mut inner = self.lock();
        let id = peer.connection_id();
        let ch = member_of(&mut inner, channel, id)?;
        let mine = ch.subscriptions.iter().filter(|(c, _)| *c == id);
        if mine.clone().count() >= MAX_PER_CLIENT {
            return Err(too_many("subscriptions per channel"));
        }
        if !mine.clone().any(|(_, p)| p == pattern) {
            ch.subscriptions.push((id, pattern.to_owned()));
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
            ch.subscriptions
                .retain(|(c, p)| !(*c == id && p == pattern));
        }
        refresh_demand(&mut inner, channel);
    }

    /// Offer a publication on `topic` to every connection subscribed to it
    /// on `channel`, each once; `publisher` must be a member. Offers never
    /// wait (a full queue drops and counts), so this holds the lock briefly.
    pub(crate) fn publish(
        &self,
        channel: &str,
        topic: &str,
        publisher: u64,
        name: &Arc<str>,
        payload: &Payload,
    ) -> Result<()> {
        topic::check_topic(topic)?;
        let mut inner = self.lock();
        let ch = member_of(&mut inner, channel, publisher)?;
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
        offer(&inner, channel, topic, name, payload);
        Ok(())
    }
}

/// Offer `payload` to each connection subscribed to `topic_name` on
/// `channel`, once however many of its patterns match.
fn offer(inner: &Inner, channel: &str, topic_name: &str, name: &Arc<str>, payload: &Payload) {
    let Some(ch) = inner.channels.get(channel) else {
        return;
    };
    let mut conns: Vec<u64> = ch
        .subscriptions
        .iter()
        .filter(|(_, pattern)| topic::matches(pattern, topic_name))
        .map(|(c, _)| *c)
        .collect();
    conns.sort_unstable();
    conns.dedup();
    for conn in conns {
        if let Some(outlet) = inner.outlets.get(&conn) {
            outlet.offer(channel, name.clone(), payload.clone());
        }
    }
}

/// Publish on a system channel to whoever subscribed to `topic` there.
pub(super) fn emit(inner: &Inner, channel: &str, topic_name: &str, body: &Value) {
    let wanted = inner.channels.get(channel).is_some_and(|ch| {
        ch.subscriptions
            .iter()
            .any(|(_, pattern)| topic::matches(pattern, topic_name))
    });
    if !wanted {
        return;
    }
    let Ok(payload) = Payload::json(body) else {
        return;
    };
    let name: Arc<str> = protocol::published(channel, topic_name).into();
    offer(inner, channel, topic_name, &name, &payload);
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
    for (topic_name, (owner, wanted)) in ch.topics.iter_mut() {
        let now = ch
            .subscriptions
            .iter()
            .any(|(_, p)| topic::matches(p, topic_name));
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
