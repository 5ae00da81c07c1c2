//! How publications, and word of lost ones, travel between brokers
//! joined by bridges: the names and arguments brokers and bridges pass.

use serde::{Deserialize, Serialize};

/// The prefix of a publication on its way between brokers, as a bridge
/// receives and passes it on: `busline.relay:<origin>:<seq>:<via>:<channel>#<topic>`,
/// with the id of the broker it was first published on, its number there,
/// and the brokers it was delivered on so far (origin first, comma
/// separated). The payload is the publisher's, untouched.
pub(crate) const RELAYED: &str = "busline.relay:";

/// A publication on its way between brokers (see [`RELAYED`]).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Relayed<'a> {
    pub(crate) origin: &'a str,
    pub(crate) seq: u64,
    pub(crate) via: Vec<&'a str>,
    pub(crate) channel: &'a str,
    pub(crate) topic: &'a str,
}

/// The [`RELAYED`] name of a publication.
pub(crate) fn relayed(origin: &str, seq: u64, via: &[&str], channel: &str, topic: &str) -> String {
    format!(
        "{RELAYED}{origin}:{seq}:{}:{channel}#{topic}",
        via.join(",")
    )
}

/// Split a [`RELAYED`] name; `None` if it is not one, or malformed.
pub(crate) fn parse_relayed(name: &str) -> Option<Relayed<'_>> {
    let rest = name.strip_prefix(RELAYED)?;
    let mut parts = rest.splitn(4, ':');
    let (origin, seq, via, published) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let (channel, topic) = published.split_once('#')?;
    if origin.is_empty() || via.is_empty() || channel.is_empty() || topic.is_empty() {
        return None;
    }
    Some(Relayed {
        origin,
        seq: seq.parse().ok()?,
        via: via.split(',').collect(),
        channel,
        topic,
    })
}

/// Publications of a channel lost on their way between brokers (a bridge
/// or a broker on the way could not keep up): a bridge tells the broker it
/// passes publications to, which tells the channel's subscribers (in their
/// [`LAGGED`](super::protocol::LAGGED) notices) and passes it on towards farther subscribers, like
/// a publication.
pub(crate) const RELAY_LAGGED: &str = "busline.relay_lagged";

/// Arguments of [`RELAY_LAGGED`].
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct RelayLagged {
    pub(crate) channel: String,
    pub(crate) missed: u64,
    /// The brokers it was told on so far, first where they were lost.
    pub(crate) via: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relayed_names_round_trip_and_malformed_ones_are_none() {
        let name = relayed("b-1", 42, &["b-1", "b-2"], "news", "sport.ski");
        assert_eq!(
            parse_relayed(&name),
            Some(Relayed {
                origin: "b-1",
                seq: 42,
                via: vec!["b-1", "b-2"],
                channel: "news",
                topic: "sport.ski",
            })
        );
        for bad in [
            "news#sport",
            "busline.relay:",
            "busline.relay:b:x:b:news#t",
            "busline.relay:b:1::news#t",
            "busline.relay:b:1:b:news",
            "busline.relay::1:b:news#t",
            "busline.relay:b:1:b:#t",
        ] {
            assert_eq!(parse_relayed(bad), None, "{bad}");
        }
    }
}
