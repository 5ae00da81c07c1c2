//! Publications across the backbone: those this broker relays out, each
//! published once on its channel's subject for every broker that wants it,
//! and those coming in for this broker's subscribers.

use std::{collections::HashMap, sync::Arc};

use busline_core::{Error, Payload};
use futures::StreamExt;

use super::{node::Node, wire};
use crate::{
    bridge::relay::Deliver,
    broker::{parse_relayed, RelayLagged, RELAY_LAGGED},
};

/// Where this broker's relayed publications (and word of lost ones) go:
/// onto the backbone, unless they came from it.
pub(super) fn deliver(node: Arc<Node>) -> Deliver {
    Arc::new(move |name: String, payload: Payload| {
        let node = node.clone();
        Box::pin(async move {
            // The last broker on its path is this one. One that came
            // through another broker on the backbone went out there.
            let came_by_backbone = |via: &[&str]| {
                via[..via.len().saturating_sub(1)]
                    .iter()
                    .any(|b| node.is_known(b))
            };
            let subject = if name == RELAY_LAGGED {
                let notice: RelayLagged = payload.decode_params()?;
                let via: Vec<&str> = notice.via.iter().map(String::as_str).collect();
                if came_by_backbone(&via) {
                    return Ok(());
                }
                node.subjects.lost(&notice.channel)
            } else {
                let relayed = parse_relayed(&name)
                    .ok_or_else(|| Error::Protocol(format!("not a relayed name: {name:?}")))?;
                if came_by_backbone(&relayed.via) {
                    return Ok(());
                }
                node.subjects.publication(relayed.channel, relayed.topic)
            };
            let headers = wire::headers(&[
                (wire::NAME, name.as_str()),
                (wire::ENCODING, payload.encoding().as_str()),
            ]);
            wire::check_size(&headers, payload.len(), node.max_payload())?;
            node.nats
                .publish_with_headers(subject, headers, payload.into_bytes())
                .await
                .map_err(wire::nats_error)
        })
    })
}

/// The channels whose publications this broker takes from the backbone,
/// one subscription each.
#[derive(Debug, Default)]
pub(super) struct Receivers {
    channels: HashMap<String, tokio::task::JoinHandle<()>>,
}

impl Receivers {
    /// Take the publications of exactly `channels` from now on.
    pub(super) async fn set(&mut self, node: &Arc<Node>, channels: &[&str]) {
        self.channels.retain(|channel, task| {
            let keep = channels.contains(&channel.as_str());
            if !keep {
                task.abort();
            }
            keep
        });
        for channel in channels {
            if self.channels.contains_key(*channel) {
                continue;
            }
            match node.nats.subscribe(node.subjects.channel(channel)).await {
                Ok(subscription) => {
                    let task =
                        tokio::spawn(receive(node.clone(), channel.to_string(), subscription));
                    self.channels.insert(channel.to_string(), task);
                }
                Err(err) => {
                    tracing::warn!(%channel, error = %err, "backbone: cannot take publications; trying again")
                }
            }
        }
    }
}

impl Drop for Receivers {
    fn drop(&mut self) {
        for task in self.channels.values() {
            task.abort();
        }
    }
}

/// Pass what is published on `channel` across the backbone to this broker,
/// in order, as relayed publications (which the broker delivers once each
/// to its subscribers, and checks as it checks a bridge's).
async fn receive(node: Arc<Node>, channel: String, mut subscription: async_nats::Subscriber) {
    while let Some(msg) = subscription.next().await {
        let headers = msg.headers.as_ref();
        let Some(name) = wire::name(headers) else {
            tracing::debug!(%channel, "backbone: a publication without a name; dropped");
            continue;
        };
        // Only what a broker on the backbone published last (what this
        // broker published comes back from NATS too).
        let from_a_peer = |via: &[&str]| {
            via.last()
                .is_some_and(|b| *b != node.id && node.is_known(b))
                && !via.contains(&node.id.as_str())
        };
        let ours = if name == RELAY_LAGGED {
            wire::encoding(headers)
                .and_then(|e| {
                    Payload::from_bytes(e, msg.payload.clone()).decode_params::<RelayLagged>()
                })
                .is_ok_and(|n| {
                    let via: Vec<&str> = n.via.iter().map(String::as_str).collect();
                    n.channel == channel && from_a_peer(&via)
                })
        } else {
            match parse_relayed(name) {
                Some(r) => r.channel == channel && from_a_peer(&r.via),
                None => false,
            }
        };
        if !ours {
            tracing::debug!(%channel, %name, "backbone: a publication not of this channel, or not from a broker on the backbone; dropped");
            continue;
        }
        let payload = match wire::encoding(headers) {
            Ok(encoding) => Payload::from_bytes(encoding, msg.payload),
            Err(err) => {
                tracing::debug!(%channel, error = %err, "backbone: a publication dropped");
                continue;
            }
        };
        if let Err(err) = node
            .local
            .client()
            .notify_raw(name.to_owned(), payload)
            .await
        {
            tracing::debug!(%channel, error = %err, "backbone: a publication could not be passed in");
        }
    }
}
