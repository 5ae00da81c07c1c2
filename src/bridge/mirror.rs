//! One look at both brokers: what each side should offer and subscribe to
//! for the other, and doing it, item by item.

use std::collections::{BTreeSet, HashMap};

use busline_core::{Error, Result};

use super::{
    relay,
    routes::{self, Demand, Offers},
};
use crate::{
    broker::{BrokerClient, Channel, ChannelKeys},
    rpc::{Reply, Request},
};

/// One broker as a bridge (or the NATS backbone) sees it: its client, the
/// channels joined there, and what the bridge offers there.
pub(crate) struct Side {
    pub(crate) bus: BrokerClient,
    joined: HashMap<String, Channel>,
    pub(crate) offered: Offers,
    /// What the bridge subscribed to here for the other side.
    pub(crate) subscribed: Demand,
}

impl Side {
    pub(crate) fn new(bus: BrokerClient) -> Side {
        Side {
            bus,
            joined: HashMap::new(),
            offered: Offers::new(),
            subscribed: Demand::new(),
        }
    }

    /// Whether the connection to this broker is up now.
    fn is_up(&self) -> bool {
        !self.bus.client().is_closed()
    }

    pub(crate) async fn join(
        &mut self,
        channel: &str,
        keys: &HashMap<String, ChannelKeys>,
    ) -> Result<Channel> {
        if let Some(joined) = self.joined.get(channel) {
            return Ok(joined.clone());
        }
        let joined = match keys.get(channel) {
            None => self.bus.open(channel).await?,
            Some(keys) => {
                let joined = self.bus.open_relay(channel, keys.clone()).await?;
                if !joined.describe().await?.protected {
                    joined.leave().await?;
                    return Err(Error::Unauthorized(format!(
                        "channel {channel:?} takes no password on one side: a bridge carries a \
                         protected channel only between brokers where it is protected"
                    )));
                }
                joined
            }
        };
        self.joined.insert(channel.to_owned(), joined.clone());
        Ok(joined)
    }

    /// Join each of `channels` here; those joined (now or before). One
    /// that cannot be joined is told, and tried again at the next look.
    pub(crate) async fn join_all(
        &mut self,
        channels: &BTreeSet<&str>,
        keys: &HashMap<String, ChannelKeys>,
    ) -> BTreeSet<String> {
        let mut joined = BTreeSet::new();
        for &channel in channels {
            match self.join(channel, keys).await {
                Ok(_) => drop(joined.insert(channel.to_owned())),
                Err(err) => tracing::warn!(%channel, error = %err, "bridge: cannot join"),
            }
        }
        joined
    }

    /// Leave the channels no longer needed here: neither offered here nor
    /// called through from the other side.
    pub(crate) async fn leave_all_but(&mut self, needed: &BTreeSet<&str>) {
        let gone: Vec<String> = self
            .joined
            .keys()
            .filter(|ch| !needed.contains(ch.as_str()))
            .cloned()
            .collect();
        for channel in gone {
            if let Some(joined) = self.joined.remove(&channel) {
                if let Err(err) = joined.leave().await {
                    tracing::debug!(%channel, error = %err, "bridge: cannot leave");
                }
            }
        }
    }

    /// Forget what the bridge did on channels that are gone here (closed
    /// by their owner, or lost with a broker that restarted), so that it is
    /// done again on the new ones.
    pub(crate) fn forget_all_but(&mut self, present: &BTreeSet<&str>) {
        self.joined.retain(|ch, _| present.contains(ch.as_str()));
        self.offered
            .retain(|(ch, _), _| present.contains(ch.as_str()));
        self.subscribed
            .retain(|(ch, _), _| present.contains(ch.as_str()));
    }
}

/// Both sides, and what may cross.
pub(super) struct Mirror {
    a: Side,
    b: Side,
    allow: Option<BTreeSet<String>>,
    /// The keys of the protected channels the bridge carries.
    keys: HashMap<String, ChannelKeys>,
    /// Protected channels it could not join on both sides (told once).
    refused: BTreeSet<String>,
}

impl Mirror {
    pub(super) fn new(
        a: BrokerClient,
        b: BrokerClient,
        allow: Option<BTreeSet<String>>,
        keys: HashMap<String, ChannelKeys>,
    ) -> Mirror {
        Mirror {
            a: Side::new(a),
            b: Side::new(b),
            allow,
            keys,
            refused: BTreeSet::new(),
        }
    }

    /// Close both clients: each broker withdraws what the bridge did there.
    pub(super) fn close(&self) {
        self.a.bus.close();
        self.b.bus.close();
    }

    /// Look at both brokers and make each side offer what the other
    /// provides now, and nothing else.
    pub(super) async fn sync(&mut self) -> Result<()> {
        let (a_up, b_up) = (self.a.is_up(), self.b.is_up());
        if !(a_up && b_up) {
            // Calls relayed to a broker out of reach cannot be answered:
            // withdraw them at once, so that callers fail over to another
            // way or get a typed error instead of waiting. (They are
            // offered again once it is back.)
            let none = Offers::new();
            if a_up {
                withdraw_all_but(&mut self.a, &none).await;
            }
            if b_up {
                withdraw_all_but(&mut self.b, &none).await;
            }
            return Ok(());
        }
        let (mut status_a, mut status_b) = (self.a.bus.status().await?, self.b.bus.status().await?);
        // Brokers keep protected channels out of their status: describe
        // those the bridge carries, where it can join them on both sides.
        for channel in self.keys.keys() {
            let joined = (
                self.a.join(channel, &self.keys).await,
                self.b.join(channel, &self.keys).await,
            );
            let described = match joined {
                (Ok(on_a), Ok(on_b)) => match (on_a.describe().await, on_b.describe().await) {
                    (Ok(a), Ok(b)) => Ok((a, b)),
                    (Err(err), _) | (_, Err(err)) => Err(err),
                },
                (Err(err), _) | (_, Err(err)) => Err(err),
            };
            match described {
                Ok((a, b)) => {
                    status_a.channels.push(a);
                    status_b.channels.push(b);
                    self.refused.remove(channel);
                }
                Err(err) => {
                    if self.refused.insert(channel.clone()) {
                        tracing::warn!(%channel, error = %err, "bridge: not carried");
                    }
                }
            }
        }
        for (side, status) in [(&mut self.a, &status_a), (&mut self.b, &status_b)] {
            let present = status.channels.iter().map(|ch| ch.name.as_str()).collect();
            side.forget_all_but(&present);
        }
        let allow = self.allow.as_ref();
        let (to_b, to_a) = (
            routes::offers(&status_a, &status_b.id, allow),
            routes::offers(&status_b, &status_a.id, allow),
        );
        let (on_a, on_b) = (
            routes::demand(&status_b, &status_a.id, allow),
            routes::demand(&status_a, &status_b.id, allow),
        );
        let keys = &self.keys;
        // Calls and publications passed on come from a member of the channel.
        let ready_a = self.a.join_all(&routes::channels(&to_b), keys).await;
        let ready_b = self.b.join_all(&routes::channels(&to_a), keys).await;
        let (bus_a, bus_b) = (self.a.bus.clone(), self.b.bus.clone());
        offer(&mut self.b, &to_b, keys, |channel, _| {
            ready_a
                .contains(channel)
                .then(|| relay::calls_to(bus_a.clone()))
        })
        .await;
        offer(&mut self.a, &to_a, keys, |channel, _| {
            ready_b
                .contains(channel)
                .then(|| relay::calls_to(bus_b.clone()))
        })
        .await;
        let ready_b = self.b.join_all(&routes::channels(&on_a), keys).await;
        let ready_a = self.a.join_all(&routes::channels(&on_b), keys).await;
        subscribe(&mut self.a, &on_a, keys, |channel| {
            ready_b.contains(channel)
        })
        .await;
        subscribe(&mut self.b, &on_b, keys, |channel| {
            ready_a.contains(channel)
        })
        .await;
        // The protected channels carried stay joined: leaving one would
        // close it on a side where the bridge is its only member (and
        // joining it again at the next look would make churn).
        let carried = keys.keys().map(String::as_str).collect();
        let needed: BTreeSet<&str> = [
            routes::channels(&to_a),
            routes::channels(&to_b),
            routes::channels(&on_a),
            routes::channels(&on_b),
            carried,
        ]
        .into_iter()
        .flatten()
        .collect();
        self.a.leave_all_but(&needed).await;
        self.b.leave_all_but(&needed).await;
        Ok(())
    }
}

/// Make the bridge subscribe on `on` to exactly `demand`, for subscribers
/// elsewhere, where it passes the publications on: those of channels
/// `ready` says it can pass on to. Each item on its own: one that fails is
/// told and tried again at the next look.
pub(crate) async fn subscribe(
    on: &mut Side,
    demand: &Demand,
    keys: &HashMap<String, ChannelKeys>,
    ready: impl Fn(&str) -> bool,
) {
    let gone: Vec<(String, String)> = on
        .subscribed
        .keys()
        .filter(|key| !demand.contains_key(*key))
        .cloned()
        .collect();
    for key in gone {
        let undone = match on.joined.get(&key.0) {
            Some(joined) => joined.relay_unsubscribe(&key.1).await,
            None => Ok(()),
        };
        match undone {
            Ok(()) => drop(on.subscribed.remove(&key)),
            Err(err) => {
                tracing::warn!(channel = %key.0, pattern = %key.1, error = %err, "bridge: cannot unsubscribe")
            }
        }
    }
    for ((channel, pattern), path) in demand {
        let key = (channel.clone(), pattern.clone());
        if on.subscribed.get(&key) == Some(path) || !ready(channel) {
            continue;
        }
        let done = async {
            on.join(channel, keys)
                .await?
                .relay_subscribe(pattern, path.clone())
                .await
        };
        match done.await {
            Ok(()) => drop(on.subscribed.insert(key, path.clone())),
            Err(err) => {
                tracing::warn!(%channel, %pattern, error = %err, "bridge: cannot subscribe")
            }
        }
    }
}

/// Make `to` offer exactly `offers`, each served by what `relay` makes for
/// its channel and method (`None`: not now). Each item on its own: one
/// that fails is told and tried again at the next look.
pub(crate) async fn offer<S>(
    to: &mut Side,
    offers: &Offers,
    keys: &HashMap<String, ChannelKeys>,
    relay: impl Fn(&str, &str) -> Option<S>,
) where
    S: tower::Service<Request, Response = Reply, Error = Error> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    withdraw_all_but(to, offers).await;
    for ((channel, method), path) in offers {
        let key = (channel.clone(), method.clone());
        if to.offered.get(&key) == Some(path) {
            continue;
        }
        let Some(service) = relay(channel, method) else {
            continue;
        };
        let done = async {
            to.join(channel, keys)
                .await?
                .serve(method, service, None, path.clone())
                .await
        };
        match done.await {
            Ok(()) => drop(to.offered.insert(key, path.clone())),
            Err(err) => tracing::warn!(%channel, %method, error = %err, "bridge: cannot offer"),
        }
    }
}

/// Withdraw what `to` offers but `offers` does not list.
pub(crate) async fn withdraw_all_but(to: &mut Side, offers: &Offers) {
    let withdrawn: Vec<(String, String)> = to
        .offered
        .keys()
        .filter(|key| !offers.contains_key(*key))
        .cloned()
        .collect();
    for key in withdrawn {
        let undone = match to.joined.get(&key.0) {
            Some(joined) => joined.unprovide(&key.1).await,
            None => Ok(()),
        };
        match undone {
            Ok(()) | Err(Error::MethodNotFound(_)) => drop(to.offered.remove(&key)),
            Err(err) => {
                tracing::warn!(channel = %key.0, method = %key.1, error = %err, "bridge: cannot withdraw")
            }
        }
    }
}
