//! Setting a fresh connection up as the lost one was.

use busline_core::{Error, Result};
use serde::Serialize;

use super::{
    channel::unsubscribe_now,
    client::{identify, open_on},
    link::{not_restored, Link},
    protocol::{self, BalanceArgs, MethodArgs, PatternArgs, PolicyArgs, TopicArgs},
    subscription::Subscribers,
};
use crate::rpc::Client;

/// Claim the id, rejoin every channel, provide every method, take every
/// topic and subscribe every pattern again, each confirmed; the patterns
/// subscribed. What the broker refuses for good is reported
/// ([`ConnectionEvent::NotRestored`]) and forgotten; a failing connection,
/// a transient refusal, or an id the broker still sees held (by the old
/// connection, until it notices it gone) fails the attempt, which is
/// retried.
///
/// [`ConnectionEvent::NotRestored`]: super::ConnectionEvent::NotRestored
pub(super) async fn restore(
    client: &Client,
    link: &Link,
    subscribers: &Subscribers,
) -> Result<Vec<(String, String)>> {
    let plan = link.record().clone();
    if let Some(client_id) = &plan.client_id {
        if let Err(err) = identify(client, client_id).await {
            if refusal(client, &err) {
                not_restored(link, format!("client id {client_id:?}"), err.clone());
            }
            return Err(err);
        }
    }
    for (channel, joined) in &plan.channels {
        let opened = match open_on(client, channel, joined.keys.as_ref(), !joined.existing).await {
            Ok(opened) => opened,
            Err(err) => {
                check(client, link, format!("channel {channel:?}"), err)?;
                // Gone for this client: so are its subscriptions there.
                link.record().channels.remove(channel);
                subscribers.close_channel(channel);
                continue;
            }
        };
        if let (true, Some(policy)) = (opened.owner, joined.policy) {
            let args = PolicyArgs {
                channel: channel.clone(),
                policy,
            };
            if !confirm(client, link, protocol::SET_POLICY, &args, || {
                format!("the policy of channel {channel:?}")
            })
            .await?
            {
                link.record().joined(channel).policy = None;
            }
        }
        for (method, (schema, via)) in &joined.methods {
            let args = MethodArgs {
                channel: channel.clone(),
                method: method.clone(),
                schema: schema.clone(),
                via: via.clone(),
            };
            if !confirm(client, link, protocol::PROVIDE, &args, || {
                format!("provider of {method:?} on channel {channel:?}")
            })
            .await?
            {
                link.record().joined(channel).methods.remove(method);
            }
        }
        for (method, balance) in &joined.balances {
            let args = BalanceArgs {
                channel: channel.clone(),
                method: method.clone(),
                balance: *balance,
            };
            if !confirm(client, link, protocol::SET_BALANCE, &args, || {
                format!("balance of {method:?} on channel {channel:?}")
            })
            .await?
            {
                link.record().joined(channel).balances.remove(method);
            }
        }
        for (pattern, via) in &joined.relays {
            let args = PatternArgs {
                channel: channel.clone(),
                pattern: pattern.clone(),
                via: via.clone(),
            };
            if !confirm(client, link, protocol::SUBSCRIBE, &args, || {
                format!("relayed subscription to {pattern:?} on channel {channel:?}")
            })
            .await?
            {
                link.record().joined(channel).relays.remove(pattern);
            }
        }
        for topic in &joined.topics {
            let args = TopicArgs {
                channel: channel.clone(),
                topic: topic.clone(),
            };
            if !confirm(client, link, protocol::OWN_TOPIC, &args, || {
                format!("topic {topic:?} on channel {channel:?}")
            })
            .await?
            {
                link.record().joined(channel).topics.retain(|t| t != topic);
            }
        }
    }
    let mut subscribed = Vec::new();
    for (channel, pattern) in subscribers.patterns() {
        let what = || format!("subscription to {pattern:?} on channel {channel:?}");
        let args = PatternArgs {
            channel: channel.clone(),
            pattern: pattern.clone(),
            via: Vec::new(),
        };
        if confirm(client, link, protocol::SUBSCRIBE, &args, what).await? {
            subscribed.push((channel, pattern));
        }
    }
    Ok(subscribed)
}

/// Unsubscribe, on the restored connection, what was subscribed while
/// restoring but dropped meanwhile (its drop went to the old connection).
pub(super) fn unsubscribe_unwanted(
    client: &Client,
    subscribed: Vec<(String, String)>,
    subscribers: &Subscribers,
) {
    let wanted = subscribers.patterns();
    for (channel, pattern) in subscribed {
        if wanted.contains(&(channel.clone(), pattern.clone())) {
            continue;
        }
        unsubscribe_now(client, channel, pattern);
    }
}

/// Make one control call: `true` if the broker agreed, `false` if it
/// refused for good (reported); a broken connection or a transient refusal
/// is the attempt's failure.
async fn confirm<A: Serialize>(
    client: &Client,
    link: &Link,
    method: &str,
    args: &A,
    what: impl FnOnce() -> String,
) -> Result<bool> {
    match client.call::<_, ()>(method, args).await {
        Ok(()) => Ok(true),
        Err(err) => check(client, link, what(), err).map(|()| false),
    }
}

/// Report a refusal for good; anything else fails the attempt.
fn check(client: &Client, link: &Link, what: String, err: Error) -> Result<()> {
    if !refusal(client, &err) {
        return Err(err);
    }
    tracing::warn!(%what, error = %err, "not restored after reconnecting");
    not_restored(link, what, err);
    Ok(())
}

/// Whether `err` is the broker's considered refusal (a changed password, a
/// name taken, a limit), as opposed to a connection failing or a passing
/// overload, which another attempt may get past.
fn refusal(client: &Client, err: &Error) -> bool {
    !client.is_closed()
        && matches!(
            err,
            Error::Unauthorized(_) | Error::Protocol(_) | Error::MethodNotFound(_)
        )
}
