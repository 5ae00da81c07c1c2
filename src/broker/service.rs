//! The broker as a [`Router`]: control methods by name, routed calls by
//! the fallback.

use std::{sync::Arc, time::Instant};

use busline_core::{Error, Payload, Result};
use futures::{future::BoxFuture, StreamExt};
use serde::{de::DeserializeOwned, Serialize};
use tokio_util::sync::CancellationToken;
use tower::service_fn;

use super::{
    protocol::{
        self, key_from_hex, BalanceArgs, Challenge, ChannelArgs, IdentifyArgs, MethodArgs,
        OpenArgs, Opened, PasswordArgs, PatternArgs, PolicyArgs, Routed, TopicArgs,
    },
    state::{self, Busy, State},
};
use crate::rpc::{CallKind, Client, PassTo, PayloadStream, Reply, Request, Retry, Router};

/// The router every broker listener serves.
pub(crate) fn router(state: Arc<State>) -> Router {
    let routed = state.clone();
    Router::new()
        .route(
            protocol::OPEN,
            control(&state, |state, peer, args: OpenArgs| {
                protocol::check_channel_name(&args.channel)?;
                let proof = args
                    .proof
                    .map(|p| {
                        hex::decode(p).map_err(|e| Error::Serialization(format!("proof: {e}")))
                    })
                    .transpose()?;
                let key = args.key.map(|k| key_from_hex("key", &k)).transpose()?;
                let owner =
                    state.open(&args.channel, peer, proof.as_deref(), key, args.existing)?;
                Ok(Opened { owner })
            }),
        )
        .route(
            protocol::CHALLENGE,
            control(&state, |state, peer, args: ChannelArgs| {
                protocol::check_channel_name(&args.channel)?;
                let (nonce, exists) = state.challenge(&args.channel, peer.connection_id())?;
                Ok(Challenge {
                    nonce: hex::encode(nonce),
                    exists,
                })
            }),
        )
        .route(
            protocol::SET_PASSWORD,
            control(&state, |state, peer, args: PasswordArgs| {
                let key = args.key.map(|k| key_from_hex("key", &k)).transpose()?;
                state.set_password(&args.channel, peer.connection_id(), key)
            }),
        )
        .route(
            protocol::LEAVE,
            control(&state, |state, peer, args: ChannelArgs| {
                // Leaving what one is not in is a mistake worth a word.
                state.check_member(&args.channel, peer.connection_id())?;
                state.leave(&args.channel, peer.connection_id());
                Ok(())
            }),
        )
        .route(
            protocol::PROVIDE,
            control(&state, |state, peer, args: MethodArgs| {
                state.provide(
                    &args.channel,
                    &args.method,
                    peer.connection_id(),
                    args.schema,
                    args.via,
                )
            }),
        )
        .route(
            protocol::SET_BALANCE,
            control(&state, |state, peer, args: BalanceArgs| {
                state.set_balance(
                    &args.channel,
                    &args.method,
                    peer.connection_id(),
                    args.balance,
                )
            }),
        )
        .route(
            protocol::UNPROVIDE,
            control(&state, |state, peer, args: MethodArgs| {
                state.unprovide(&args.channel, &args.method, peer.connection_id())
            }),
        )
        .route(
            protocol::SET_POLICY,
            control(&state, |state, peer, args: PolicyArgs| {
                state.set_policy(&args.channel, peer.connection_id(), args.policy)
            }),
        )
        .route(
            protocol::SUBSCRIBE,
            control(&state, |state, peer, args: PatternArgs| {
                state.subscribe(&args.channel, &args.pattern, peer, args.via)
            }),
        )
        .route(
            protocol::RELAY_LAGGED,
            control(&state, |state, peer, args: protocol::RelayLagged| {
                state.relay_lagged(args, peer.connection_id())
            }),
        )
        .route(
            protocol::UNSUBSCRIBE,
            control(&state, |state, peer, args: PatternArgs| {
                state.check_member(&args.channel, peer.connection_id())?;
                super::topic::check_pattern(&args.pattern)?;
                state.unsubscribe(&args.channel, &args.pattern, peer.connection_id());
                Ok(())
            }),
        )
        .route(
            protocol::DESCRIBE,
            control(&state, |state, peer, args: ChannelArgs| {
                state.check_member(&args.channel, peer.connection_id())?;
                state
                    .describe(&args.channel)
                    .ok_or_else(|| Error::MethodNotFound(format!("channel {:?}", args.channel)))
            }),
        )
        .route(
            protocol::OWN_TOPIC,
            control(&state, |state, peer, args: TopicArgs| {
                state.own_topic(&args.channel, &args.topic, peer.connection_id())
            }),
        )
        .route(
            protocol::DISOWN_TOPIC,
            control(&state, |state, peer, args: TopicArgs| {
                state.disown_topic(&args.channel, &args.topic, peer.connection_id())
            }),
        )
        .route(
            protocol::IDENTIFY,
            control(&state, |state, peer, args: IdentifyArgs| {
                state.identify(peer.connection_id(), &args.client_id)
            }),
        )
        .route(
            protocol::STATUS,
            control(&state, |state, _, (): ()| Ok(state.status())),
        )
        .fallback(service_fn(move |req: Request| {
            let state = routed.clone();
            async move { route(&state, req).await }
        }))
        .pass_calls({
            let state = state.clone();
            Arc::new(move |method: &str, from: u64, retry: Option<Retry<'_>>| {
                pass_target(&state, method, from, retry)
            })
        })
        .tap_notifications(Arc::new(
            move |method: String, payload: Payload, from: u64| {
                // The hottest path: handled as read, in order, with no request,
                // future or tower call each.
                match publication(&state, method, &payload, from) {
                    Ok(Err(err)) => {
                        tracing::warn!(connection = from, error = %err, "publication refused");
                        None
                    }
                    Ok(Ok(())) => None,
                    Err(method) => Some((method, payload)),
                }
            },
        ))
}

/// Where a routed unary call goes without a future each: straight on to
/// a provider (see [`State::pass_target`]); `None` for any other call.
fn pass_target(
    state: &Arc<State>,
    method: &str,
    from: u64,
    retry: Option<Retry<'_>>,
) -> Result<Option<PassTo>> {
    // A publication relayed by a bridge is no call.
    if method.starts_with(protocol::RELAYED) {
        return Ok(None);
    }
    match protocol::parse_routed(method) {
        Some(Routed::Method { channel, method }) => state.pass_target(channel, method, from, retry),
        _ => Ok(None),
    }
}

/// Take a publication (`method` names a topic, or is a publication relayed
/// by a bridge) come on connection `from`; `method` comes back if it is
/// not one.
fn publication(
    state: &State,
    method: String,
    payload: &Payload,
    from: u64,
) -> std::result::Result<Result<()>, String> {
    if method.starts_with(protocol::RELAYED) {
        return Ok(match protocol::parse_relayed(&method) {
            Some(relayed) => state.relay(&relayed, from, payload),
            None => Err(Error::Protocol(format!(
                "a malformed relayed publication: {method:?}"
            ))),
        });
    }
    match protocol::parse_routed(&method) {
        Some(Routed::Topic { channel, .. }) => {
            let channel_len = channel.len();
            Ok(state.publish(method, channel_len, from, payload))
        }
        _ => Err(method),
    }
}

/// A control method: decode the broker's own arguments, act on the tables,
/// answer in the caller's encoding.
fn control<Args, Ret, F>(
    state: &Arc<State>,
    f: F,
) -> impl tower::Service<
    Request,
    Response = Reply,
    Error = Error,
    Future = BoxFuture<'static, Result<Reply>>,
> + Clone
       + Send
       + Sync
       + 'static
where
    Args: DeserializeOwned + Send + 'static,
    Ret: Serialize,
    F: Fn(&State, &Client, Args) -> Result<Ret> + Clone + Send + Sync + 'static,
{
    let state = state.clone();
    service_fn(move |req: Request| {
        let state = state.clone();
        let f = f.clone();
        // Control methods answer at once; run as a stream they would run on
        // another task, possibly after the connection is gone.
        if req.kind == CallKind::Stream {
            let refused = Error::Protocol(format!("{} is not a stream", req.method));
            return Box::pin(std::future::ready(Err(refused))) as BoxFuture<'static, Result<Reply>>;
        }
        let answer = caller(&req).and_then(|peer| {
            let out = req
                .arguments()
                .and_then(|args| f(&state, &peer, args))
                .inspect_err(|e| state.refused(peer.connection_id(), &req.method, e))?;
            Ok(Reply::Unary(Payload::encode(req.payload.encoding(), &out)?))
        });
        Box::pin(std::future::ready(answer)) as BoxFuture<'static, Result<Reply>>
    })
}

fn caller(req: &Request) -> Result<Client> {
    req.peer
        .clone()
        .ok_or_else(|| Error::Disconnected("the caller is gone".into()))
}

/// Deliver a routed call or publication (publications come here when
/// sent as calls; as notifications the tap above takes them).
async fn route(state: &Arc<State>, mut req: Request) -> Result<Reply> {
    let from = caller(&req)?.connection_id();
    let method = std::mem::take(&mut req.method);
    match publication(state, method, &req.payload, from) {
        Ok(published) => return published.map(|()| Reply::Unary(Payload::unit())),
        Err(method) => req.method = method,
    }
    // Not a publication: `publication` found no topic in it.
    match protocol::parse_routed(&req.method) {
        Some(Routed::Method { channel, method }) => {
            let (closing, first) = state.enter_call(channel, method, from)?;
            let answer = tokio::select! {
                biased;
                answer = forward(state, channel, method, from, &req, first) => answer,
                () = closing.cancelled() => Err(state::closed_in_flight(channel)),
            }?;
            Ok(match answer {
                Reply::Stream(items) => Reply::Stream(until_closed(items, closing, channel)),
                unary => unary,
            })
        }
        Some(Routed::Broadcast { channel, method }) => {
            let name = protocol::routed(channel, method);
            let providers = state.providers_except(channel, method, from)?;
            for provider in &providers {
                // A provider that is leaving just misses it.
                let _ = provider.notify_unqueued(&name, req.payload.clone());
            }
            // Wait until it is written to each: a provider that does not
            // read slows the sender (whose reading pauses at its handler
            // limit) instead of growing the broker's memory.
            futures::future::join_all(providers.iter().map(Client::flush)).await;
            Ok(Reply::Unary(Payload::unit()))
        }
        // A topic is a publication, taken above.
        Some(Routed::Topic { .. }) | None => Err(Error::MethodNotFound(req.method.clone())),
    }
}

/// End `items` with an error when the channel closes.
fn until_closed(items: PayloadStream, closing: CancellationToken, channel: &str) -> PayloadStream {
    let ended = closing.clone();
    let why = format!("channel {channel:?} was closed during the stream");
    let closed = futures::stream::once(async move {
        ended.is_cancelled().then(|| Err(Error::Disconnected(why)))
    })
    .filter_map(std::future::ready);
    Box::pin(items.take_until(closing.cancelled_owned()).chain(closed))
}

/// Forward a call to a provider (`first`, picked already, then the next),
/// its payload untouched; if the provider's connection drops before it
/// answers, try the next one.
async fn forward(
    state: &Arc<State>,
    channel: &str,
    method: &str,
    from: u64,
    req: &Request,
    mut first: Option<(Client, Busy)>,
) -> Result<Reply> {
    let mut tried = Vec::new();
    loop {
        let picked = match tried.is_empty() {
            true => first.take(),
            false => state.pick(channel, method, from, &tried),
        };
        let Some((provider, busy)) = picked else {
            return Err(match tried.is_empty() {
                true => Error::MethodNotFound(format!(
                    "no provider of {method:?} on channel {channel:?}"
                )),
                false => state::providers_left(channel, method),
            });
        };
        let sent = pass_on(&provider, req, busy).await;
        match sent {
            // Failover is decided by the provider's connection, not by the
            // error: a handler that returns `Disconnected` itself ran, and
            // must not run again elsewhere. (The tables forget the provider
            // when its disconnect is seen.)
            Err(why) if provider.is_closed() => {
                tracing::debug!(channel, method, %why, "provider gone; failing over");
                tried.push(provider.connection_id());
            }
            other => return other,
        }
    }
}

/// Send `req` on to `to` under the same name, its payload untouched, within
/// what is left of the caller's deadline; `busy` is held until the answer
/// (for a stream: until its last item).
pub(crate) async fn pass_on<B: Send + Sync + 'static>(
    to: &Client,
    req: &Request,
    busy: B,
) -> Result<Reply> {
    let to = match req.deadline {
        Some(at) => to.with_timeout(at.saturating_duration_since(Instant::now())),
        None => to.clone(),
    };
    match req.kind {
        CallKind::Unary => to
            .call_raw(&req.method, req.payload.clone())
            .await
            .map(Reply::Unary),
        // The provider counts as busy for as long as the stream runs.
        CallKind::Stream => to
            .stream_payloads(&req.method, req.payload.clone())
            .await
            .map(|items| {
                Reply::Stream(Box::pin(items.map(move |item| {
                    let _busy = &busy;
                    item
                })))
            }),
        // Written before the next is taken from the sender: backpressure,
        // not a queue without bound, for a provider that does not read.
        CallKind::Notify => match to.notify_unqueued(&req.method, req.payload.clone()) {
            Ok(()) => to.flush().await.map(|()| Reply::Unary(Payload::unit())),
            Err(e) => Err(e),
        },
    }
}
