//! Which providers a bridge offers from one broker to the other, and by
//! what path: pure functions of what the brokers report, tested alone.

use std::collections::{BTreeMap, BTreeSet};

use crate::broker::{BrokerStatus, ChannelInfo, MAX_HOPS};

/// What one broker should get from the other, by channel and name (a
/// method to offer, a pattern to subscribe to), with the path to register
/// it by: the brokers it comes through, the first where it is served or
/// wanted.
pub(crate) type Paths = BTreeMap<(String, String), Vec<String>>;

/// What one side should offer on the other: channel and method, and the
/// path (the provider's broker first).
pub(crate) type Offers = Paths;

/// What a bridge subscribes to on one broker for the subscribers of the
/// other: channel and pattern, and the path of the demand (the
/// subscribers' broker first).
pub(crate) type Demand = Paths;

/// The offers of broker `from` (as its status reports it) to broker `to`,
/// limited to `allow` if given: each method by its shortest way.
pub(crate) fn offers(from: &BrokerStatus, to: &str, allow: Option<&BTreeSet<String>>) -> Offers {
    offers_avoiding(from, &|broker| broker == to, allow)
}

/// As [`offers`], to wherever the brokers `avoid` picks are: none that
/// came through one of them.
pub(crate) fn offers_avoiding(
    from: &BrokerStatus,
    avoid: &dyn Fn(&str) -> bool,
    allow: Option<&BTreeSet<String>>,
) -> Offers {
    shortest(from, avoid, allow, |ch| {
        ch.methods.iter().flat_map(move |(method, providers)| {
            providers.iter().map(move |conn| {
                let via = ch
                    .routes
                    .iter()
                    .find(|(c, m, _)| c == conn && m == method)
                    .map_or(&[][..], |(_, _, via)| via.as_slice());
                (method, via)
            })
        })
    })
}

/// The subscriptions of broker `of` (as its status reports them) to make
/// on broker `on`, limited to `allow` if given: its own subscribers' one
/// hop away, those it relays for one more.
pub(crate) fn demand(of: &BrokerStatus, on: &str, allow: Option<&BTreeSet<String>>) -> Demand {
    demand_avoiding(of, &|broker| broker == on, allow)
}

/// As [`demand`], on wherever the brokers `avoid` picks are: none that
/// came through one of them.
pub(crate) fn demand_avoiding(
    of: &BrokerStatus,
    avoid: &dyn Fn(&str) -> bool,
    allow: Option<&BTreeSet<String>>,
) -> Demand {
    shortest(of, avoid, allow, |ch| {
        let local = ch.subscriptions.iter().map(|(_, p)| (p, &[][..]));
        let relayed = ch.relays.iter().map(|(_, p, via)| (p, via.as_slice()));
        local.chain(relayed)
    })
}

/// For each name `candidates` lists in an allowed channel of broker
/// `from`, with the path it came to `from` by, the shortest path on to
/// the brokers `avoid` picks. One that already came through one of them
/// is left out: passed back, it would make a loop (and they would refuse
/// it); so is one that would pass more than [`MAX_HOPS`] brokers.
fn shortest<'a, C, I>(
    from: &'a BrokerStatus,
    avoid: &dyn Fn(&str) -> bool,
    allow: Option<&BTreeSet<String>>,
    candidates: C,
) -> Paths
where
    C: Fn(&'a ChannelInfo) -> I,
    I: Iterator<Item = (&'a String, &'a [String])>,
{
    let mut best = Paths::new();
    let channels = from
        .channels
        .iter()
        .filter(|ch| allow.map_or(true, |allow| allow.contains(&ch.name)));
    for ch in channels {
        for (name, via) in candidates(ch) {
            if via.iter().any(|broker| avoid(broker) || *broker == from.id) || via.len() >= MAX_HOPS
            {
                continue;
            }
            let key = (ch.name.clone(), name.clone());
            if best
                .get(&key)
                .map_or(true, |path| via.len() + 1 < path.len())
            {
                let mut path = via.to_vec();
                path.push(from.id.clone());
                best.insert(key, path);
            }
        }
    }
    best
}

/// The channels named in offers or demand.
pub(crate) fn channels(of: &Paths) -> BTreeSet<&str> {
    of.keys().map(|(channel, _)| channel.as_str()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::OwnerPolicy;

    fn channel(
        name: &str,
        methods: &[(&str, &[u64])],
        routes: &[(u64, &str, &[&str])],
    ) -> ChannelInfo {
        ChannelInfo {
            name: name.into(),
            owner: 1,
            members: vec![1],
            methods: methods
                .iter()
                .map(|(m, c)| (m.to_string(), c.to_vec()))
                .collect(),
            schemas: vec![],
            round_robin: vec![],
            relays: vec![],
            routes: routes
                .iter()
                .map(|(c, m, via)| {
                    (
                        *c,
                        m.to_string(),
                        via.iter().map(|b| b.to_string()).collect(),
                    )
                })
                .collect(),
            subscriptions: vec![],
            protected: false,
            policy: OwnerPolicy::default(),
        }
    }

    fn status(id: &str, channels: Vec<ChannelInfo>) -> BrokerStatus {
        BrokerStatus {
            id: id.into(),
            clients: 1,
            channels,
            protected_channels: 0,
            client_ids: vec![],
            calls: 0,
            publications: 0,
        }
    }

    fn path(p: &[&str]) -> Vec<String> {
        p.iter().map(|b| b.to_string()).collect()
    }

    #[test]
    fn local_providers_go_one_hop_and_bridged_ones_one_more() {
        let a = status(
            "a",
            vec![channel(
                "math",
                &[("add", &[1]), ("mul", &[2])],
                &[(2, "mul", &["w"])],
            )],
        );
        let offers = offers(&a, "b", None);
        assert_eq!(offers[&("math".into(), "add".into())], path(&["a"]));
        assert_eq!(offers[&("math".into(), "mul".into())], path(&["w", "a"]));
    }

    #[test]
    fn nothing_goes_back_where_it_came_from_and_the_shortest_path_wins() {
        let a = status(
            "a",
            vec![channel(
                "math",
                &[("add", &[7, 8, 9]), ("echo", &[5])],
                &[
                    (7, "add", &["x", "y"]),
                    (8, "add", &["x"]),
                    (9, "add", &["x", "y", "z"]),
                    (5, "echo", &["b"]),
                ],
            )],
        );
        let offers = offers(&a, "b", None);
        assert_eq!(offers.len(), 1, "{offers:?}");
        assert_eq!(offers[&("math".into(), "add".into())], path(&["x", "a"]));
        // Offered to x instead, every path of add came through x.
        assert!(!super::offers(&a, "x", None).contains_key(&("math".into(), "add".into())));
    }

    #[test]
    fn demand_goes_one_hop_further_and_never_back() {
        let mut news = channel("news", &[], &[]);
        news.subscriptions = vec![(1, "sport.>".into()), (2, "sport.>".into())];
        news.relays = vec![
            (3, "weather".into(), path(&["x"])),
            (4, "weather".into(), path(&["x", "y"])),
            (5, "echo".into(), path(&["a"])),
        ];
        let b = status("b", vec![news]);
        let demand = demand(&b, "a", None);
        assert_eq!(demand.len(), 2, "{demand:?}");
        assert_eq!(demand[&("news".into(), "sport.>".into())], path(&["b"]));
        assert_eq!(
            demand[&("news".into(), "weather".into())],
            path(&["x", "b"])
        );
        let allow: BTreeSet<String> = ["other".to_string()].into();
        assert!(super::demand(&b, "a", Some(&allow)).is_empty());
    }

    #[test]
    fn only_allowed_channels_and_paths_within_the_hop_limit() {
        let long: Vec<String> = (0..MAX_HOPS).map(|i| format!("h{i}")).collect();
        let long: Vec<&str> = long.iter().map(String::as_str).collect();
        let a = status(
            "a",
            vec![
                channel("open", &[("m", &[1])], &[]),
                channel("closed", &[("m", &[2])], &[]),
                channel("far", &[("m", &[3])], &[(3, "m", &long)]),
            ],
        );
        let allow: BTreeSet<String> = ["open".to_string(), "far".to_string()].into();
        let offers = offers(&a, "b", Some(&allow));
        assert_eq!(offers.len(), 1, "{offers:?}");
        assert!(offers.contains_key(&("open".into(), "m".into())));
        assert_eq!(channels(&offers), BTreeSet::from(["open"]));
    }
}
