//! Who provides what, and who answers the next call.

use std::sync::Arc;

use busline_core::Result;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{
    closed_in_flight, member_of, not_member, only_the_broker, providers_left, pubsub::announce,
    too_many, ById, Channel, Inner, Providers, State, MAX_PER_CLIENT,
};
use crate::{
    broker::{protocol, system::Happening},
    rpc::{Client, PassTo, Retry},
};

/// Marks a provider busy with one call until dropped.
#[derive(Debug)]
pub(crate) struct Busy {
    state: Arc<State>,
    id: u64,
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut inner = self.state.lock();
        if let Some(n) = inner.active.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                inner.active.remove(&self.id);
            }
        }
    }
}

impl State {
    /// Every provider of `method` on `channel` but `sender`, who must be a
    /// member.
    pub(crate) fn providers_except(
        &self,
        channel: &str,
        method: &str,
        sender: u64,
    ) -> Result<Vec<Client>> {
        let mut inner = self.lock();
        let conns: Vec<u64> = member_of(&mut inner.channels, channel, sender)?
            .methods
            .get(method)
            .map(|p| p.conns.iter().copied().filter(|&c| c != sender).collect())
            .unwrap_or_default();
        Ok(conns
            .iter()
            .filter_map(|c| inner.peers.get(c).cloned())
            .collect())
    }

    /// Connection `id` serves `method` on `channel`.
    pub(crate) fn provide(
        &self,
        channel: &str,
        method: &str,
        id: u64,
        schema: Option<protocol::MethodSchema>,
        via: Vec<String>,
    ) -> Result<()> {
        self.check_route(
            &format!("the provider of {method:?} on channel {channel:?}"),
            &via,
        )?;
        if let Some(schema) = &schema {
            let size = serde_json::to_string(schema).map_or(usize::MAX, |t| t.len());
            if size > protocol::MAX_SCHEMA {
                return Err(busline_core::Error::FrameTooLarge {
                    size,
                    limit: protocol::MAX_SCHEMA,
                });
            }
        }
        let mut inner = self.lock();
        if method.is_empty() || method.len() > protocol::MAX_CHANNEL_NAME {
            return Err(busline_core::Error::Protocol(format!(
                "a method name has 1 to {} bytes",
                protocol::MAX_CHANNEL_NAME
            )));
        }
        let ch = member_of(&mut inner.channels, channel, id)?;
        if ch.system {
            return Err(only_the_broker(channel));
        }
        let mine = ch
            .methods
            .values()
            .filter(|p| p.conns.contains(&id))
            .count();
        if mine >= MAX_PER_CLIENT && !ch.methods.contains_key(method) {
            return Err(too_many("methods per channel"));
        }
        let providers = ch.methods.entry(method.to_owned()).or_default();
        if schema.is_some() {
            providers.schema = schema;
        }

        let added = !providers.conns.contains(&id);
        if added {
            providers.conns.push(id);
        }
        let mut body = json!({"channel": channel, "method": method, "client": id});
        if via.is_empty() {
            providers.via.remove(&id);
        } else {
            body["via"] = json!(via);
            providers.via.insert(id, via);
        }
        if added {
            announce(&inner, Happening::new("provider.added", body));
        }
        Ok(())
    }

    /// How `method`'s calls are shared; only one of its providers may say.
    pub(crate) fn set_balance(
        &self,
        channel: &str,
        method: &str,
        id: u64,
        balance: protocol::Balance,
    ) -> Result<()> {
        let mut inner = self.lock();
        let providers = member_of(&mut inner.channels, channel, id)?
            .methods
            .get_mut(method)
            .filter(|p| p.conns.contains(&id))
            .ok_or_else(|| {
                busline_core::Error::Unauthorized(format!(
                    "only a provider of {method:?} on channel {channel:?} may set its balancing"
                ))
            })?;
        providers.balance = balance;
        Ok(())
    }

    /// Connection `id` stops serving `method` on `channel`.
    pub(crate) fn unprovide(&self, channel: &str, method: &str, id: u64) -> Result<()> {
        let mut inner = self.lock();
        let ch = member_of(&mut inner.channels, channel, id)?;
        if !remove_provider(ch, method, id) {
            return Err(busline_core::Error::MethodNotFound(format!(
                "this client does not provide {method:?} on channel {channel:?}"
            )));
        }
        let body = json!({"channel": channel, "method": method, "client": id});
        announce(&inner, Happening::new("provider.removed", body));
        Ok(())
    }

    /// The provider of `method` on `channel` with the fewest calls in
    /// progress (round-robin among equals), skipping `tried`, and the
    /// caller `from` if it is a bridge offering the method here (a call it
    /// relays must not come back to it: while routes settle, that could
    /// bounce it between brokers); marked busy until the guard drops; `None`
    /// when there is none (left).
    pub(crate) fn pick(
        self: &Arc<Self>,
        channel: &str,
        method: &str,
        from: u64,
        tried: &[u64],
    ) -> Option<(Client, Busy)> {
        let mut inner = self.lock();
        let Inner {
            peers,
            channels,
            active,
            ..
        } = &mut *inner;
        let ch = channels.get_mut(channel)?;
        self.take_call(ch, peers, active, method, from, tried)
    }

    /// A call from member `from` on `channel`: the token cancelled when the
    /// channel closes, and the provider [`State::pick`] would pick first,
    /// found under one lock (this runs for every routed call).
    pub(crate) fn enter_call(
        self: &Arc<Self>,
        channel: &str,
        method: &str,
        from: u64,
    ) -> Result<(CancellationToken, Option<(Client, Busy)>)> {
        let mut inner = self.lock();
        let Inner {
            peers,
            channels,
            active,
            ..
        } = &mut *inner;
        let ch = match channels.get_mut(channel) {
            Some(ch) if ch.members.contains(&from) => ch,
            _ => return Err(not_member(channel)),
        };
        let picked = self.take_call(ch, peers, active, method, from, &[]);
        Ok((ch.closed.clone(), picked))
    }

    /// Where a unary call from member `from` of `channel` is passed on: the
    /// provider [`State::pick`] would pick, counted busy until the answer.
    /// On a first try, `None` leaves every other case to the routes, which
    /// answer it (no member, no provider, one leaving or with no call to
    /// spare). Again after its provider's connection ended (`retry`), the
    /// call fails as the routes fail it over: no provider left besides
    /// those tried, or its channel (by number: not one reopened under its
    /// name) closed.
    pub(crate) fn pass_target(
        self: &Arc<Self>,
        channel: &str,
        method: &str,
        from: u64,
        retry: Option<Retry<'_>>,
    ) -> Result<Option<PassTo>> {
        let mut inner = self.lock();
        let Inner {
            peers,
            channels,
            active,
            ..
        } = &mut *inner;
        let ch = channels
            .get_mut(channel)
            .filter(|ch| retry.map_or(true, |retry| retry.group == ch.serial));
        let Some(ch) = ch else {
            return match retry {
                Some(_) => Err(closed_in_flight(channel)),
                None => Ok(None),
            };
        };
        if retry.is_none() && !ch.members.contains(&from) {
            return Ok(None);
        }
        let tried = retry.map_or(&[][..], |retry| retry.tried);
        let id = ch
            .methods
            .get_mut(method)
            .and_then(|providers| choose(providers, active, from, tried));
        let Some(id) = id else {
            return match retry {
                Some(_) => Err(providers_left(channel, method)),
                None => Ok(None),
            };
        };
        // Checked before it is marked busy: a guard dropped here, under the
        // lock, would lock again.
        let ready = peers.get(&id).is_some_and(Client::has_room);
        if retry.is_none() && !ready {
            return Ok(None);
        }
        let Some((provider, busy)) = self.mark_busy(peers, active, id) else {
            return Ok(None);
        };
        ch.passed_by.insert(from);
        Ok(Some(PassTo {
            provider,
            group: ch.serial,
            guard: Box::new(busy),
        }))
    }

    /// The provider of `method` on `ch` to take a call from `from`
    /// (skipping `tried`; see [`State::pick`]), counted busy.
    fn take_call(
        self: &Arc<Self>,
        ch: &mut Channel,
        peers: &ById<Client>,
        active: &mut ById<usize>,
        method: &str,
        from: u64,
        tried: &[u64],
    ) -> Option<(Client, Busy)> {
        let id = choose(ch.methods.get_mut(method)?, active, from, tried)?;
        self.mark_busy(peers, active, id)
    }

    /// Provider `id`'s calling side, counted busy with one more call.
    fn mark_busy(
        self: &Arc<Self>,
        peers: &ById<Client>,
        active: &mut ById<usize>,
        id: u64,
    ) -> Option<(Client, Busy)> {
        let peer = peers.get(&id).cloned()?;
        *active.entry(id).or_default() += 1;
        self.routed_call();
        Some((
            peer,
            Busy {
                state: self.clone(),
                id,
            },
        ))
    }
}

/// The provider connection to take the next call (see [`State::pick`]).
fn choose(
    providers: &mut Providers,
    active: &ById<usize>,
    from: u64,
    tried: &[u64],
) -> Option<u64> {
    // The nearest providers take the calls (a local one before one
    // behind a bridge, one bridge before two); the others stand by.
    let hops = |id: &u64| providers.via.get(id).map_or(0, Vec::len);
    let skipped =
        |id: &u64| tried.contains(id) || (*id == from && providers.via.contains_key(&from));
    let nearest = providers
        .conns
        .iter()
        .filter(|id| !skipped(id))
        .map(hops)
        .min()?;
    let n = providers.conns.len();
    let mut candidates = (0..n)
        .map(|k| (providers.next + k) % n)
        .map(|i| (i, providers.conns[i]))
        .filter(|(_, id)| !skipped(id) && hops(id) == nearest);
    let (turn, id) = match providers.balance {
        protocol::Balance::RoundRobin => candidates.next()?,
        protocol::Balance::LeastActive => {
            candidates.min_by_key(|(_, id)| active.get(id).copied().unwrap_or(0))?
        }
    };
    providers.next = turn + 1;
    Some(id)
}

/// Whether `id` provided `method` (and no longer does).
pub(super) fn remove_provider(ch: &mut Channel, method: &str, id: u64) -> bool {
    let Some(providers) = ch.methods.get_mut(method) else {
        return false;
    };
    let before = providers.conns.len();
    providers.conns.retain(|&p| p != id);
    providers.via.remove(&id);
    let removed = providers.conns.len() < before;
    if providers.conns.is_empty() {
        ch.methods.remove(method);
    }
    removed
}
