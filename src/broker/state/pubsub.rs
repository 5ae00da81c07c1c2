//! Publications and who wants them.

use std::sync::Arc;

use busline_core::{Payload, Result};
use serde_json::Value;

use super::{
    lifecycle::tell, member_of, only_the_broker, too_many, Channel, Inner, Outlets, State,
    MAX_PER_CLIENT,
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

    /// A publication from another broker, passed on by a bridge (a member
    /// of `channel`, connection `from`): delivered here once, however many
    /// ways it came, and passed on to other bridges that want it. One that
    /// already came through here is dropped: it went round a loop.
    pub(crate) fn relay(
        &self,
        relayed: &protocol::Relayed<'_>,
        from: u64,
        payload: &Payload,
    ) -> Result<()> {
        let protocol::Relayed {
            origin,
            seq,
            via,
            channel,
            topic,
        } = relayed;
        topic::check_topic(topic)?;
        protocol::check_broker_id(origin)?;
        self.check_path("a relayed publication", via)?;
        let mut inner = self.lock();
        let ch = member_of(&mut inner.channels, channel, from)?;
        if ch.system {
            return Err(only_the_broker(channel));
        }
        if *origin == self.id || self.on_path(via) {
            return Ok(()); // it went round a loop
        }
        if let Some((owner, _)) = ch.topics.get(*topic) {
            if *owner != from {
                // Its one publisher is here: this one is forged.
                return Err(busline_core::Error::Unauthorized(format!(
                    "topic {topic:?} on channel {channel:?} has another publisher"
                )));
            }
        }
        let key = ((*origin).to_owned(), (*channel).to_owned());
        if inner.seen.len() >= MAX_ORIGINS && !inner.seen.contains_key(&key) {
            // Bounded: forget what was seen so far (a duplicate may get
            // through once; nothing grows without limit).
            inner.seen.clear();
        }
        if !inner.seen.entry(key).or_default().first_time(*seq) {
            return Ok(());
        }
        self.took_publication();
        if let Some(ch) = inner.channels.get(*channel) {
            offer_relays(ch, &inner.outlets, &self.id, relayed, payload);
            let name = protocol::published(channel, topic);
            offer(ch, &inner.outlets, name, channel.len(), payload);
        }
        Ok(())
    }

    /// Publications of a channel were lost on their way here (a bridge,
    /// connection `from`, says so): tell the channel's subscribers here, and
    /// pass it on to the bridges that subscribe here for others, unless it
    /// already came through where they lead.
    pub(crate) fn relay_lagged(&self, notice: protocol::RelayLagged, from: u64) -> Result<()> {
        self.check_path("a notice of lost publications", &notice.via)?;
        let mut inner = self.lock();
        let ch = member_of(&mut inner.channels, &notice.channel, from)?;
        if ch.system {
            return Err(only_the_broker(&notice.channel));
        }
        if self.on_path(&notice.via) {
            return Ok(()); // it went round a loop
        }
        if notice.missed == 0 {
            return Ok(());
        }
        let mut local: Vec<u64> = ch.subscriptions.iter().map(|(c, _)| *c).collect();
        local.dedup();
        let mut path = notice.via.clone();
        path.push(self.id.clone());
        let farther = bridges_onward(ch, &path, |_| true);
        let onward = protocol::RelayLagged {
            channel: notice.channel.clone(),
            missed: notice.missed,
            via: path,
        };
        let name: Arc<str> = Arc::from(protocol::RELAY_LAGGED);
        for conn in local {
            if let Some(outlet) = inner.outlets.get(&conn) {
                outlet.lagged(&notice.channel, notice.missed);
            }
        }
        for conn in farther {
            if let Some(outlet) = inner.outlets.get(&conn) {
                if let Ok(payload) = Payload::encode(outlet.encoding(), &onward) {
                    outlet.offer(&notice.channel, name.clone(), payload);
                }
            }
        }
        Ok(())
    }
}

/// Most (origin broker, channel) pairs whose publications are remembered
/// at once, for dropping duplicates: about 1 KiB each.
const MAX_ORIGINS: usize = 4096;
/// How many recent publication numbers of one origin and channel are
/// remembered.
const WINDOW: u64 = 1024;

/// The publications of one origin on one channel seen lately, as a
/// sliding window below the newest number: within it each number counts
/// once; anything older than the window counts as seen (a publication
/// that late, coming a long way round, is a duplicate or too old). Keyed
/// by channel too, so that a member of one channel, who could relay junk
/// into it, cannot disturb what crosses on another.
#[derive(Debug, Default)]
pub(super) struct Seen {
    newest: Option<u64>,
    /// `recent[i]`: whether `newest - i` was seen.
    recent: std::collections::VecDeque<bool>,
}

impl Seen {
    fn first_time(&mut self, seq: u64) -> bool {
        let Some(newest) = self.newest else {
            self.newest = Some(seq);
            self.recent.push_front(true);
            return true;
        };
        if seq > newest {
            let ahead = seq - newest;
            if ahead >= WINDOW {
                self.recent.clear();
            } else {
                for _ in 1..ahead {
                    self.recent.push_front(false);
                }
            }
            self.recent.push_front(true);
            self.recent.truncate(WINDOW as usize);
            self.newest = Some(seq);
            return true;
        }
        let behind = newest - seq;
        match self
            .recent
            .get_mut(usize::try_from(behind).unwrap_or(usize::MAX))
        {
            Some(seen) if !*seen => {
                *seen = true;
                true
            }
            Some(_) => false,
            // Within the window but before the first one seen: new.
            None if behind < WINDOW => {
                self.recent.resize(behind as usize, false);
                self.recent.push_back(true);
                true
            }
            None => false,
        }
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

/// Offer a publication (as `relayed` came here, or as first published
/// here), now delivered on `here` too, to the bridges subscribed to its
/// topic, each once.
fn offer_relays(
    ch: &Channel,
    outlets: &Outlets,
    here: &str,
    relayed: &protocol::Relayed<'_>,
    payload: &Payload,
) {
    if ch.relays.is_empty() {
        return;
    }
    let mut path = relayed.via.clone();
    path.push(here);
    let conns = bridges_onward(ch, &path, |pattern| topic::matches(pattern, relayed.topic));
    if conns.is_empty() {
        return;
    }
    let name = protocol::relayed(
        relayed.origin,
        relayed.seq,
        &path,
        relayed.channel,
        relayed.topic,
    );
    let mut copies = Copies::new(&name, payload);
    for conn in conns {
        if let Some(outlet) = outlets.get(&conn) {
            copies.offer(outlet, relayed.channel);
        }
    }
}

/// The bridges subscribed on `ch` (each once) with a pattern `wanted`,
/// except those whose subscribers' side is already on `path`.
fn bridges_onward<S: AsRef<str>>(
    ch: &Channel,
    path: &[S],
    wanted: impl Fn(&str) -> bool,
) -> Vec<u64> {
    let mut conns: Vec<u64> = ch
        .relays
        .iter()
        .filter(|(_, pattern, _)| wanted(pattern))
        .filter(|(_, _, demand)| {
            demand
                .last()
                .map_or(true, |next| !path.iter().any(|b| b.as_ref() == next))
        })
        .map(|(c, _, _)| *c)
        .collect();
    conns.sort_unstable();
    conns.dedup();
    conns
}

/// Offer publication `name` (the channel's `channel_len` bytes, `#`, the
/// topic) to each connection subscribed to its topic, once however many
/// of its patterns match. The name goes as it is to a lone subscriber;
/// several share it, or the frame encoded once (see [`Copies`]).
fn offer(ch: &Channel, outlets: &Outlets, name: String, channel_len: usize, payload: &Payload) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_number_is_new_once_and_the_window_forgets_the_oldest() {
        let mut seen = Seen::default();
        assert!(seen.first_time(10));
        assert!(!seen.first_time(10));
        assert!(seen.first_time(5), "late but within the window");
        assert!(!seen.first_time(5));
        assert!(seen.first_time(12));
        assert!(seen.first_time(11), "a gap filled later");
        assert!(!seen.first_time(11));
        assert!(seen.first_time(12 + WINDOW - 1));
        // 10 and below fell out of the window: that old counts as seen.
        assert!(!seen.first_time(12));
        assert!(!seen.first_time(3));
        assert!(seen.first_time(14), "still inside, never seen");
        assert!(seen.first_time(u64::MAX));
        assert!(!seen.first_time(u64::MAX));
        assert!(seen.recent.len() <= WINDOW as usize);
    }
}
