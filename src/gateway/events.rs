//! Server-sent events: a provider's stream, and a channel's publications.
//! Each ends, on the far side too, when the HTTP client goes away: the
//! response body is dropped, which drops the busline stream (cancelling
//! it at the provider) or the subscription (unsubscribing at the broker).

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    extract::{Path, Query, State},
    http::HeaderMap,
    response::sse::{Event as SseEvent, KeepAlive, Sse},
};
use busline_core::Error;
use futures::{stream, Stream, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{call::password, error::ApiError, Shared};
use crate::broker::Event;

/// How long a stream's answer waits for its first item, so that a
/// refusal (no such method, bad arguments) is an HTTP status rather than
/// an error event; a stream slower to start than this starts without it.
const FIRST_ITEM_WAIT: Duration = Duration::from_secs(1);

/// The query of a stream request.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct StreamQuery {
    /// The method's arguments as JSON, e.g. `args=[5]`; none for `null`.
    args: Option<String>,
}

/// Items of `method`'s stream on `channel`, one `message` event each (its
/// JSON as data), then an `end` event, or an `error` event with the error
/// body.
#[utoipa::path(
    get,
    path = "/v1/channels/{channel}/stream/{method}",
    tag = "streams",
    params(
        ("channel" = String, Path, description = "The channel"),
        ("method" = String, Path, description = "A streaming method provided on it"),
        StreamQuery,
        ("X-Busline-Password" = Option<String>, Header,
            description = "The channel's password, if it takes one"),
    ),
    responses(
        (status = 200, description = "`text/event-stream`: `message` events, then `end` or `error`",
            content_type = "text/event-stream", body = String),
        (status = 400, description = "Arguments not JSON, or not what the method takes",
            body = super::ErrorReply),
        (status = 401, description = "Credentials missing", body = super::ErrorReply),
        (status = 403, description = "Credentials wrong", body = super::ErrorReply),
        (status = 404, description = "No such channel or method", body = super::ErrorReply),
        (status = 502, description = "The provider or the broker went away",
            body = super::ErrorReply),
    ),
    security((), ("bearer" = [])),
)]
pub(super) async fn stream_items(
    State(gateway): State<Arc<Shared>>,
    Path((channel, method)): Path<(String, String)>,
    Query(query): Query<StreamQuery>,
    headers: HeaderMap,
) -> std::result::Result<Sse<impl Stream<Item = std::result::Result<SseEvent, Infallible>>>, ApiError>
{
    let args: Value = match &query.args {
        Some(text) => serde_json::from_str(text).map_err(|e| {
            Error::Serialization(format!("args must be JSON, the method's arguments: {e}"))
        })?,
        None => Value::Null,
    };
    let slot = gateway.stream_slot()?;
    let password = password(&headers)?;
    let refused = |e: Error| ApiError::from_error(&e, password.is_some());
    let channel = gateway.channels.get(&channel, password).await?;
    let mut items = channel
        .stream::<_, Value>(&method, &args)
        .await
        .map_err(refused)?;
    // A refusal comes as the first item: answered as a status.
    let first = match tokio::time::timeout(FIRST_ITEM_WAIT, items.next()).await {
        Ok(Some(Err(e))) => return Err(refused(e)),
        Ok(first) => first,
        Err(_) => None,
    };
    let items = stream::iter(first).chain(items);
    // Each item, then `end`; or an `error`, with nothing after it.
    let events = stream::unfold(Some(items), |items| async move {
        let mut items = items?;
        Some(match items.next().await {
            Some(Ok(item)) => (json_event("message", &item), Some(items)),
            Some(Err(e)) => (error_event(&e), None),
            None => (SseEvent::default().event("end").data(""), None),
        })
    })
    .map(move |event| {
        let _held = &slot;
        Ok(event)
    })
    .take_until(gateway.closing.clone().cancelled_owned());
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// Publications on `channel` under topics matching `pattern`: a `message`
/// event each (`{"topic", "message"}`), `lagged` (`{"missed"}`) where some
/// were dropped, `interrupted` where the gateway lost the broker a while.
#[utoipa::path(
    get,
    path = "/v1/channels/{channel}/subscribe/{pattern}",
    tag = "pub/sub",
    params(
        ("channel" = String, Path, description = "The channel"),
        ("pattern" = String, Path,
            description = "Topics to receive: `*` stands for one token, a final `>` for the rest"),
        ("X-Busline-Password" = Option<String>, Header,
            description = "The channel's password, if it takes one"),
    ),
    responses(
        (status = 200, description = "`text/event-stream`: `message`, `lagged` and `interrupted` events",
            content_type = "text/event-stream", body = String),
        (status = 400, description = "A malformed pattern", body = super::ErrorReply),
        (status = 401, description = "Credentials missing", body = super::ErrorReply),
        (status = 403, description = "Credentials wrong", body = super::ErrorReply),
        (status = 404, description = "No such channel", body = super::ErrorReply),
    ),
    security((), ("bearer" = [])),
)]
pub(super) async fn subscribe(
    State(gateway): State<Arc<Shared>>,
    Path((channel, pattern)): Path<(String, String)>,
    headers: HeaderMap,
) -> std::result::Result<Sse<impl Stream<Item = std::result::Result<SseEvent, Infallible>>>, ApiError>
{
    let slot = gateway.stream_slot()?;
    let password = password(&headers)?;
    let channel = gateway.channels.get(&channel, password).await?;
    let subscription = channel
        .subscribe(&pattern)
        .await
        .map_err(|e| ApiError::from_error(&e, password.is_some()))?;
    let closing = gateway.closing.clone().cancelled_owned();
    let events = subscription.take_until(closing).map(move |event| {
        let _held = &slot;
        Ok(match event {
            Ok(Event::Message(publication)) => match publication.decode::<Value>() {
                Ok(message) => json_event(
                    "message",
                    &json!({"topic": publication.topic, "message": message}),
                ),
                Err(e) => error_event(&e),
            },
            Ok(Event::Lagged(missed)) => json_event("lagged", &json!({ "missed": missed })),
            Ok(Event::Interrupted) => SseEvent::default().event("interrupted").data(""),
            Err(e) => error_event(&e),
        })
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

fn json_event(name: &str, data: &Value) -> SseEvent {
    // A `Value` always serializes; its text has no bare newlines.
    SseEvent::default().event(name).data(data.to_string())
}

fn error_event(err: &Error) -> SseEvent {
    let remote = err.to_remote();
    json_event("error", &json!({ "error": remote }))
}
