//! Publications and who wants them.

use busline_core::{Payload, Result};
use serde_json::Value;

use super::{member_of, only_the_broker, Inner, State};
use crate::{
    broker::{
        outlet::Outlet,
        protocol,
        system::{self, Happening},
        topic,
    },
    rpc::Client,
};

impl State {
    /// Connection `peer` receives publications on `channel` whose topic
    /// matches `pattern`.
    pub(crate) fn subscribe(&self, channel: &str, pattern: &str, peer: &Client) -> Result<()> {
        topic::check_pattern(pattern)?;
        let mut inner = self.lock();
        let id = peer.connection_id();
        let ch = member_of(&mut inner, channel, id)?;
        if !ch
            .subscriptions
            .iter()
            .any(|(c, p)| *c == id && p == pattern)
        {
            ch.subscriptions.push((id, pattern.to_owned()));
        }
        let (capacity, policy) = (self.subscriber_queue, self.slow_subscriber);
        inner
            .outlets
            .entry(id)
            .or_insert_with(|| Outlet::start(peer.clone(), capacity, policy));
        Ok(())
    }

    /// Connection `id` no longer receives what `pattern` matches.
    pub(crate) fn unsubscribe(&self, channel: &str, pattern: &str, id: u64) {
        let mut inner = self.lock();
        if let Some(ch) = inner.channels.get_mut(channel) {
            ch.subscriptions
                .retain(|(c, p)| !(*c == id && p == pattern));
        }
    }

    /// The outlets of every connection subscribed to `topic` on `channel`,
    /// each once; `publisher` must be a member.
    pub(crate) fn audience(
        &self,
        channel: &str,
        topic: &str,
        publisher: u64,
    ) -> Result<Vec<Outlet>> {
        topic::check_topic(topic)?;
        let mut inner = self.lock();
        let ch = member_of(&mut inner, channel, publisher)?;
        if ch.system {
            return Err(only_the_broker(channel));
        }
        let mut conns: Vec<u64> = ch
            .subscriptions
            .iter()
            .filter(|(_, pattern)| topic::matches(pattern, topic))
            .map(|(c, _)| *c)
            .collect();
        conns.sort_unstable();
        conns.dedup();
        Ok(conns
            .iter()
            .filter_map(|c| inner.outlets.get(c).cloned())
            .collect())
    }
}

/// Publish on a system channel to whoever subscribed to `topic` there.
pub(super) fn emit(inner: &Inner, channel: &str, topic_name: &str, body: &Value) {
    let Some(ch) = inner.channels.get(channel) else {
        return;
    };
    let mut conns: Vec<u64> = ch
        .subscriptions
        .iter()
        .filter(|(_, pattern)| topic::matches(pattern, topic_name))
        .map(|(c, _)| *c)
        .collect();
    if conns.is_empty() {
        return;
    }
    conns.sort_unstable();
    conns.dedup();
    let Ok(payload) = Payload::json(body) else {
        return;
    };
    let name: std::sync::Arc<str> = protocol::published(channel, topic_name).into();
    for conn in conns {
        if let Some(outlet) = inner.outlets.get(&conn) {
            outlet.offer(channel, name.clone(), payload.clone());
        }
    }
}

/// Tell `busline.system` and `busline.logs`.
pub(super) fn announce(inner: &Inner, happening: Happening) {
    tracing::info!(topic = happening.topic, body = %happening.body, "broker");
    emit(inner, system::SYSTEM, happening.topic, &happening.body);
    emit(inner, system::LOGS, "info", &happening.line());
}
