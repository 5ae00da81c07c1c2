//! Setting a fresh connection up as the lost one was.

use std::sync::Arc;

use busline_core::{Error, Result};
use serde::Serialize;

use super::{
    client::{identify, open_on},
    link::{not_restored, Link, Restorer},
    protocol::{self, BalanceArgs, MethodArgs, PatternArgs, PolicyArgs, TopicArgs},
    subscription::Subscribers,
};
use crate::rpc::Client;

/// The restorer of a broker client whose subscriptions are `subscribers`.
pub(super) fn restorer(subscribers: Arc<Subscribers>) -> Restorer {
    Arc::new(move |client, link| {
        let subscribers = subscribers.clone();
        Box::pin(async move { restore(&client, &link, &subscribers).await })
    })
}

/// Claim the id, rejoin every channel, provide every method, take every
/// topic and subscribe every pattern again, each confirmed. What the
/// broker refuses is reported ([`ConnectionEvent::NotRestored`]) and
/// dropped from the record; a failing connection (or an id the broker
/// still sees taken by the old one) fails the attempt, which is retried.
///
/// [`ConnectionEvent::NotRestored`]: super::ConnectionEvent::NotRestored
async fn restore(client: &Client, link: &Link, subscribers: &Subscribers) -> Result<()> {
    let plan = link.record().clone();
    if let Some(client_id) = &plan.client_id {
        identify(client, client_id).await?;
    }
    for (channel, joined) in &plan.channels {
        let opened = match open_on(client, channel, joined.keys.as_ref()).await {
            Ok(opened) => opened,
            Err(err) => {
                refused(client, link, format!("channel {channel:?}"), err)?;
                link.record().channels.remove(channel);
                continue;
            }
        };
        if let (true, Some(policy)) = (opened.owner, joined.policy) {
            let args = PolicyArgs {
                channel: channel.clone(),
                policy,
            };
            confirm(client, link, protocol::SET_POLICY, &args, || {
                format!("the policy of channel {channel:?}")
            })
            .await?;
        }
        for (method, schema) in &joined.methods {
            let args = MethodArgs {
                channel: channel.clone(),
                method: method.clone(),
                schema: schema.clone(),
            };
            confirm(client, link, protocol::PROVIDE, &args, || {
                format!("provider of {method:?} on channel {channel:?}")
            })
            .await?;
        }
        for (method, balance) in &joined.balances {
            let args = BalanceArgs {
                channel: channel.clone(),
                method: method.clone(),
                balance: *balance,
            };
            confirm(client, link, protocol::SET_BALANCE, &args, || {
                format!("balance of {method:?} on channel {channel:?}")
            })
            .await?;
        }
        for topic in &joined.topics {
            let args = TopicArgs {
                channel: channel.clone(),
                topic: topic.clone(),
            };
            confirm(client, link, protocol::OWN_TOPIC, &args, || {
                format!("topic {topic:?} on channel {channel:?}")
            })
            .await?;
        }
    }
    for (channel, pattern) in subscribers.patterns() {
        let what = || format!("subscription to {pattern:?} on channel {channel:?}");
        let args = PatternArgs {
            channel: channel.clone(),
            pattern: pattern.clone(),
        };
        confirm(client, link, protocol::SUBSCRIBE, &args, what).await?;
    }
    Ok(())
}

/// Make one control call; a refusal is reported, a broken connection is
/// the attempt's failure.
async fn confirm<A: Serialize>(
    client: &Client,
    link: &Link,
    method: &str,
    args: &A,
    what: impl FnOnce() -> String,
) -> Result<()> {
    match client.call::<_, ()>(method, args).await {
        Ok(()) => Ok(()),
        Err(err) => refused(client, link, what(), err),
    }
}

/// Whether `err` ends the attempt (the connection failed) or is the
/// broker's refusal of one thing, reported and passed over.
fn refused(client: &Client, link: &Link, what: String, err: Error) -> Result<()> {
    if client.is_closed() || matches!(err, Error::Disconnected(_) | Error::Timeout(_)) {
        return Err(err);
    }
    tracing::warn!(%what, error = %err, "not restored after reconnecting");
    not_restored(link, what, err);
    Ok(())
}
