//! Members leaving, owners leaving, channels closing.

use busline_core::Payload;
use serde_json::json;

use super::{
    providers::remove_provider,
    pubsub::{announce, refresh_demand},
    Inner, State,
};
use crate::broker::{
    protocol::{self, ChannelEvent, OwnerPolicy},
    system::Happening,
};

impl State {
    /// Connection `id` leaves `channel`: its methods go, and if it owned
    /// the channel the oldest remaining member takes over. A channel with
    /// no members left is closed.
    pub(crate) fn leave(&self, channel: &str, id: u64) {
        let mut inner = self.lock();
        leave(&mut inner, channel, id);
    }

    /// Connection `id` is gone: it leaves every channel.
    pub(crate) fn disconnected(&self, id: u64) {
        let mut inner = self.lock();
        inner.outlets.remove(&id);
        inner.nonces.remove(&id);
        if let Some(name) = inner.ids_of.remove(&id) {
            inner.client_ids.remove(&name);
        }
        announce(
            &inner,
            Happening::new("client.disconnected", json!({"client": id})),
        );
        if inner.peers.remove(&id).is_none() {
            return;
        }
        let mut joined = Vec::new();
        for (name, ch) in inner.channels.iter_mut() {
            ch.passed_by.remove(&id);
            if ch.members.contains(&id) {
                joined.push(name.clone());
            }
        }
        for channel in joined {
            leave(&mut inner, &channel, id);
        }
    }
}

/// Tell connection `id` about `event` (best effort: it may be leaving).
pub(super) fn tell(inner: &Inner, id: u64, event: &ChannelEvent) {
    if let Some(peer) = inner.peers.get(&id) {
        if let Ok(payload) = Payload::encode(peer.encoding(), event) {
            if let Err(err) = peer.try_notify_raw(protocol::EVENT, payload) {
                tracing::warn!(connection = id, error = %err, "a channel event was not sent");
            }
        }
    }
}

fn leave(inner: &mut Inner, channel: &str, id: u64) {
    let Some(ch) = inner.channels.get_mut(channel) else {
        return;
    };
    ch.members.retain(|&m| m != id);
    ch.subscriptions.retain(|(c, _)| *c != id);
    ch.relays.retain(|(c, _, _)| *c != id);
    ch.topics.retain(|_, (owner, _)| *owner != id);
    let methods: Vec<String> = ch.methods.keys().cloned().collect();
    let removed: Vec<String> = methods
        .into_iter()
        .filter(|m| remove_provider(ch, m, id))
        .collect();
    let (owner_left, system, oldest, policy) = (
        ch.owner == id,
        ch.system,
        ch.members.first().copied(),
        ch.policy,
    );
    for method in removed {
        let body = json!({"channel": channel, "method": method, "client": id});
        announce(inner, Happening::new("provider.removed", body));
    }
    refresh_demand(inner, channel);
    if system {
        return;
    }
    match (oldest, policy) {
        (None, _) => close(inner, channel, "its last member left"),
        (Some(_), OwnerPolicy::Terminate) if owner_left => close(
            inner,
            channel,
            "its owner left, and its policy is terminate",
        ),
        (Some(oldest), OwnerPolicy::Promote) if owner_left => {
            let Some(ch) = inner.channels.get_mut(channel) else {
                return;
            };
            ch.owner = oldest;
            let members = ch.members.clone();
            for member in members {
                let event = ChannelEvent::OwnerChanged {
                    channel: channel.to_owned(),
                    you_own_it: member == oldest,
                };
                tell(inner, member, &event);
            }
            let body = json!({"channel": channel, "owner": oldest});
            announce(inner, Happening::new("owner.changed", body));
        }
        (Some(_), _) => {}
    }
}

/// Close `channel`: calls in flight through it fail, members are told.
fn close(inner: &mut Inner, channel: &str, reason: &str) {
    let Some(ch) = inner.channels.remove(channel) else {
        return;
    };
    ch.closed.cancel();
    // Calls passed on through it (no future to cancel) fail on their
    // callers' connections.
    let why = super::closed_in_flight(channel);
    for id in &ch.passed_by {
        if let Some(peer) = inner.peers.get(id) {
            peer.fail_passed(ch.serial, why.clone());
        }
    }
    let event = ChannelEvent::Closed {
        channel: channel.to_owned(),
        reason: reason.to_owned(),
    };
    for member in &ch.members {
        tell(inner, *member, &event);
    }
    let body = json!({"channel": channel, "reason": reason});
    announce(inner, Happening::new("channel.closed", body));
}
