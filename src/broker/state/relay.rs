//! Publications between brokers: one relayed by a bridge is delivered
//! here once however many ways it came (a window of the numbers seen per
//! origin and channel), passed on to the bridges that still want it, and
//! a subscriber's lag on another broker is told back to its publisher's
//! side.

use std::sync::Arc;

use busline_core::{Payload, Result};

use super::{member_of, only_the_broker, pubsub::offer, Channel, Outlets, State};
use crate::broker::{outlet::Copies, protocol, topic};

impl State {
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

/// Offer a publication (as `relayed` came here, or as first published
/// here), now delivered on `here` too, to the bridges subscribed to its
/// topic, each once.
pub(super) fn offer_relays(
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
