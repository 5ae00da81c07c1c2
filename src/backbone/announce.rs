//! What each broker on the backbone tells the others (its announce), and
//! what one broker makes of the others': which of their methods to offer
//! here and whom to call for them, and which of their subscriptions to
//! serve from here.

use std::{
    collections::{BTreeSet, HashMap},
    time::{Duration, Instant},
};

use busline_core::{Error, Result};
use serde::{Deserialize, Serialize};

use super::node::Targets;
use crate::{
    bridge::routes::{Demand, Offers, Paths},
    broker::{check_broker_id, check_channel_name, check_pattern, MAX_HOPS},
};

/// Most routes (offers and demand together) one announce may list.
pub const MAX_ROUTES: usize = 65536;

/// Most other brokers one namespace may have; announces of more are
/// ignored (and told once).
pub const MAX_BROKERS: usize = 1024;

/// Most other instances of this broker's id told about.
const MAX_TWINS: usize = 64;

/// What one broker offers and wants, as it tells the backbone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Announce {
    /// The broker's id.
    pub(super) broker: String,
    /// Drawn when its side of the backbone starts: two brokers that
    /// announce one id tell themselves apart by it.
    pub(super) instance: u64,
    /// It is leaving: forget it now.
    #[serde(default)]
    pub(super) leaving: bool,
    /// Its methods (and those it reaches by bridges), by channel.
    #[serde(default)]
    pub(super) offers: Vec<Route>,
    /// Its subscriptions (and those it relays for), by channel.
    #[serde(default)]
    pub(super) demand: Vec<Route>,
    /// The channels among those that take a password there.
    #[serde(default)]
    pub(super) protected: Vec<String>,
}

/// A method or subscription pattern of a channel, and the brokers it came
/// through (where it is served or wanted first, the announcing one last).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Route {
    pub(super) channel: String,
    pub(super) name: String,
    pub(super) path: Vec<String>,
}

/// Routes as listed in an announce.
pub(super) fn routes(paths: &Paths) -> Vec<Route> {
    paths
        .iter()
        .map(|((channel, name), path)| Route {
            channel: channel.clone(),
            name: name.clone(),
            path: path.clone(),
        })
        .collect()
}

impl Announce {
    /// Check an announce come from the backbone: anyone on it may send one.
    pub(super) fn check(&self) -> Result<()> {
        check_broker_id(&self.broker)?;
        if self.offers.len() + self.demand.len() > MAX_ROUTES {
            return Err(Error::Protocol(format!(
                "broker {} announces more than {MAX_ROUTES} routes",
                self.broker
            )));
        }
        for (route, is_demand) in self
            .offers
            .iter()
            .map(|r| (r, false))
            .chain(self.demand.iter().map(|r| (r, true)))
        {
            check_channel_name(&route.channel)?;
            if is_demand {
                check_pattern(&route.name)?;
            } else if route.name.is_empty() || route.name.len() > 256 {
                return Err(Error::Protocol(format!(
                    "broker {} announces a method of {} bytes",
                    self.broker,
                    route.name.len()
                )));
            }
            if route.path.len() > MAX_HOPS || route.path.last() != Some(&self.broker) {
                return Err(Error::Protocol(format!(
                    "broker {} announces a route by the path {:?}",
                    self.broker, route.path
                )));
            }
            route.path.iter().try_for_each(|b| check_broker_id(b))?;
        }
        Ok(())
    }
}

/// A broker on the backbone, as last heard.
#[derive(Debug)]
struct Peer {
    announce: Announce,
    heard: Instant,
}

/// The other brokers on the backbone.
#[derive(Debug)]
pub(super) struct Peers {
    me: String,
    instance: u64,
    peers: HashMap<String, Peer>,
    /// Other instances announcing this broker's id: when each was first
    /// and last heard.
    twins: HashMap<u64, (Instant, Instant)>,
    /// Whether brokers were ignored for [`MAX_BROKERS`] (told once).
    full: bool,
}

/// What one broker should do for the others: offer their methods (with
/// whom to call), and subscribe for their subscribers.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Plan {
    pub(super) offers: Offers,
    pub(super) targets: Targets,
    pub(super) demand: Demand,
}

impl Peers {
    pub(super) fn new(me: &str, instance: u64) -> Peers {
        Peers {
            me: me.to_owned(),
            instance,
            peers: HashMap::new(),
            twins: HashMap::new(),
            full: false,
        }
    }

    /// Whether another instance of this broker's id has kept announcing
    /// for `span` (not one last word of an instance this one replaced)
    /// with a lower instance number (one rule both follow), so this one
    /// must leave the backbone lest both serve the calls for the id.
    pub(super) fn yields(&self, span: Duration) -> bool {
        self.twins
            .iter()
            .any(|(&twin, &(first, last))| twin < self.instance && last - first >= span)
    }

    /// Take in an announce; whether it changes what the others offer or
    /// want.
    pub(super) fn heard(&mut self, announce: Announce, now: Instant) -> bool {
        if announce.broker == self.me {
            if announce.instance == self.instance {
                return false;
            }
            if announce.leaving {
                self.twins.remove(&announce.instance);
            } else if let Some((_, last)) = self.twins.get_mut(&announce.instance) {
                *last = now;
            } else if self.twins.len() < MAX_TWINS {
                self.twins.insert(announce.instance, (now, now));
                tracing::error!(
                    broker = %self.me,
                    "backbone: another broker announces this broker's id; give each its own \
                     (BrokerBuilder::id, busline broker --id): if both stay, one leaves the \
                     backbone"
                );
            }
            return false;
        }
        if announce.leaving {
            // Only the instance it knows may say it leaves.
            let known = self.peers.get(&announce.broker);
            if known.is_some_and(|p| p.announce.instance == announce.instance) {
                self.peers.remove(&announce.broker);
                return true;
            }
            return false;
        }
        if self.peers.len() >= MAX_BROKERS && !self.peers.contains_key(&announce.broker) {
            if !self.full {
                self.full = true;
                tracing::error!(
                    "backbone: more than {MAX_BROKERS} brokers announce; the others are ignored"
                );
            }
            return false;
        }
        let changed = self
            .peers
            .get(&announce.broker)
            .map_or(true, |p| p.announce != announce);
        self.peers.insert(
            announce.broker.clone(),
            Peer {
                announce,
                heard: now,
            },
        );
        changed
    }

    /// Forget the brokers not heard for `expiry`; whether any were.
    pub(super) fn expire(&mut self, now: Instant, expiry: Duration) -> bool {
        self.twins
            .retain(|_, (_, last)| now.saturating_duration_since(*last) < expiry);
        let before = self.peers.len();
        self.peers.retain(|id, peer| {
            let live = now.saturating_duration_since(peer.heard) < expiry;
            if !live {
                tracing::warn!(broker = %id, "backbone: a broker went silent; withdrawn");
            }
            live
        });
        self.peers.len() != before
    }

    /// The brokers on the backbone now.
    pub(super) fn ids(&self) -> impl Iterator<Item = &String> {
        self.peers.keys()
    }

    /// What this broker should do for the others, over channels `allow`
    /// lets cross (all if `None`), the protected ones only among `keyed`
    /// (and only where the other broker protects them too).
    pub(super) fn plan(&self, allow: Option<&BTreeSet<String>>, keyed: &BTreeSet<String>) -> Plan {
        let mut plan = Plan::default();
        // In id order: the same announces always make the same plan.
        let mut peers: Vec<&Peer> = self.peers.values().collect();
        peers.sort_by(|a, b| a.announce.broker.cmp(&b.announce.broker));
        for peer in peers {
            let a = &peer.announce;
            let carried = |channel: &str| {
                allow.map_or(true, |allow| allow.contains(channel))
                    && a.protected.iter().any(|p| p == channel) == keyed.contains(channel)
            };
            let usable = |r: &&Route| {
                carried(&r.channel) && r.path.len() < MAX_HOPS && !r.path.contains(&self.me)
            };
            for route in a.offers.iter().filter(usable) {
                let key = (route.channel.clone(), route.name.clone());
                match plan.offers.get(&key).map(Vec::len) {
                    Some(best) if best < route.path.len() => {}
                    Some(best) if best == route.path.len() => {
                        plan.targets.entry(key).or_default().push(a.broker.clone());
                    }
                    _ => {
                        plan.targets.insert(key.clone(), vec![a.broker.clone()]);
                        plan.offers.insert(key, route.path.clone());
                    }
                }
            }
            for route in a.demand.iter().filter(usable) {
                let key = (route.channel.clone(), route.name.clone());
                if plan
                    .demand
                    .get(&key)
                    .map_or(true, |best| route.path.len() < best.len())
                {
                    plan.demand.insert(key, route.path.clone());
                }
            }
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(channel: &str, name: &str, path: &[&str]) -> Route {
        Route {
            channel: channel.into(),
            name: name.into(),
            path: path.iter().map(|b| b.to_string()).collect(),
        }
    }

    fn announce(broker: &str, offers: Vec<Route>, demand: Vec<Route>) -> Announce {
        Announce {
            broker: broker.into(),
            instance: 1,
            leaving: false,
            offers,
            demand,
            protected: vec![],
        }
    }

    #[test]
    fn the_shortest_paths_win_and_ties_share_the_calls() {
        let now = Instant::now();
        let mut peers = Peers::new("a", 7);
        assert!(peers.heard(
            announce(
                "b",
                vec![route("m", "add", &["b"]), route("m", "mul", &["x", "b"])],
                vec![]
            ),
            now
        ));
        assert!(peers.heard(
            announce(
                "c",
                vec![route("m", "add", &["c"]), route("m", "mul", &["c"])],
                vec![route("n", "s.>", &["c"])]
            ),
            now
        ));
        // Heard again unchanged: nothing to do.
        assert!(!peers.heard(
            announce(
                "b",
                vec![route("m", "add", &["b"]), route("m", "mul", &["x", "b"])],
                vec![]
            ),
            now
        ));
        let plan = peers.plan(None, &BTreeSet::new());
        let key = |m: &str| ("m".to_string(), m.to_string());
        assert_eq!(plan.targets[&key("add")], ["b", "c"]);
        assert_eq!(plan.targets[&key("mul")], ["c"]);
        assert_eq!(plan.offers[&key("mul")], ["c"]);
        assert_eq!(plan.demand[&("n".into(), "s.>".into())], ["c"]);
    }

    #[test]
    fn loops_foreign_channels_and_protection_mismatches_are_left_out() {
        let now = Instant::now();
        let mut peers = Peers::new("a", 7);
        let mut b = announce(
            "b",
            vec![
                route("m", "add", &["a", "b"]),
                route("m", "sub", &["b"]),
                route("p", "x", &["b"]),
            ],
            vec![],
        );
        b.protected = vec!["p".into()];
        peers.heard(b, now);
        let plan = peers.plan(None, &BTreeSet::new());
        assert_eq!(plan.offers.len(), 1, "{plan:?}");
        assert!(plan.offers.contains_key(&("m".into(), "sub".into())));
        let keyed: BTreeSet<String> = ["p".to_string(), "m".to_string()].into();
        let plan = peers.plan(None, &keyed);
        // "p" is protected on both sides; "m" only here.
        assert_eq!(
            plan.offers.keys().collect::<Vec<_>>(),
            [&("p".into(), "x".into())]
        );
        let allow: BTreeSet<String> = ["other".to_string()].into();
        assert!(peers.plan(Some(&allow), &BTreeSet::new()).offers.is_empty());
    }

    #[test]
    fn silent_leaving_and_twin_brokers_are_forgotten_or_ignored() {
        let now = Instant::now();
        let mut peers = Peers::new("a", 7);
        peers.heard(announce("b", vec![], vec![]), now);
        peers.heard(announce("c", vec![], vec![]), now + Duration::from_secs(5));
        assert!(peers.expire(now + Duration::from_secs(6), Duration::from_secs(6)));
        assert_eq!(peers.ids().collect::<Vec<_>>(), ["c"]);
        let mut leaving = announce("c", vec![], vec![]);
        leaving.leaving = true;
        leaving.instance = 2;
        assert!(
            !peers.heard(leaving.clone(), now),
            "another instance's word"
        );
        leaving.instance = 1;
        assert!(peers.heard(leaving, now));
        assert_eq!(peers.ids().count(), 0);
        let span = Duration::from_secs(6);
        let mut twin = announce("a", vec![route("m", "x", &["a"])], vec![]);
        twin.instance = 9;
        assert!(!peers.heard(twin.clone(), now));
        assert!(!peers.heard(twin.clone(), now + span));
        assert!(peers.plan(None, &BTreeSet::new()).offers.is_empty());
        assert!(!peers.yields(span), "the twin drew higher: it leaves");
        twin.instance = 3;
        peers.heard(twin.clone(), now);
        assert!(!peers.yields(span), "one word of a replaced instance");
        peers.heard(twin.clone(), now + span);
        assert!(
            peers.yields(span),
            "the twin drew lower and stays: this one leaves"
        );
        twin.leaving = true;
        peers.heard(twin.clone(), now + span);
        assert!(!peers.yields(span), "the twin left");
        twin.leaving = false;
        peers.heard(twin.clone(), now);
        peers.heard(twin, now + span);
        peers.expire(now + span * 3, span);
        assert!(!peers.yields(span), "the twin went silent");
    }

    #[test]
    fn malformed_announces_are_refused() {
        let good = announce(
            "b",
            vec![route("m", "add", &["b"])],
            vec![route("m", "s.*", &["b"])],
        );
        assert!(good.check().is_ok());
        let bad = [
            announce("b b", vec![], vec![]),
            announce("b", vec![route("m", "add", &["c"])], vec![]),
            announce("b", vec![route("m", "add", &[])], vec![]),
            announce("b", vec![route("m/x", "add", &["b"])], vec![]),
            announce("b", vec![route("m", "", &["b"])], vec![]),
            announce("b", vec![], vec![route("m", "s..x", &["b"])]),
            announce("b", vec![route("m", "add", &["x y", "b"])], vec![]),
        ];
        for a in bad {
            assert!(a.check().is_err(), "{a:?}");
        }
        let long: Vec<String> = (0..=MAX_HOPS).map(|i| format!("h{i}")).collect();
        let mut a = announce("b", vec![], vec![]);
        a.offers.push(Route {
            channel: "m".into(),
            name: "x".into(),
            path: long.into_iter().chain(["b".to_string()]).collect(),
        });
        assert!(a.check().is_err());
    }
}
