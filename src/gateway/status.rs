//! The broker's state for people: a page at `/` that shows channels,
//! owners, providers, subscribers, clients and the call and publication
//! rates, updated live from `GET /v1/status/events`. Plain HTML and
//! JavaScript in the binary: nothing to build, nothing to fetch.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    extract::State,
    response::{
        sse::{Event as SseEvent, KeepAlive, Sse},
        Html,
    },
    Json,
};
use futures::{stream, Stream, StreamExt};
use serde_json::json;
use tokio::time::Instant;

use super::{error::ApiError, Shared};
use crate::broker::BrokerStatus;

/// How often the live status is sent.
const EVERY: Duration = Duration::from_secs(1);

/// The status page.
#[utoipa::path(
    get,
    path = "/",
    tag = "status",
    responses((status = 200, description = "The live status page", content_type = "text/html",
        body = String)),
    security((), ("bearer" = [])),
)]
pub(super) async fn page() -> Html<&'static str> {
    Html(include_str!("status.html"))
}

/// The broker's status now: its clients, and its channels (those without
/// a password) with their owners, members, providers and subscribers.
#[utoipa::path(
    get,
    path = "/v1/status",
    tag = "status",
    responses(
        (status = 200, description = "The broker's status", body = serde_json::Value),
        (status = 502, description = "The broker cannot be reached", body = super::ErrorReply),
    ),
    security((), ("bearer" = [])),
)]
pub(super) async fn status(
    State(gateway): State<Arc<Shared>>,
) -> Result<Json<BrokerStatus>, ApiError> {
    Ok(Json(gateway.channels.bus().status().await?))
}

/// The broker's status each second as server-sent `status` events:
/// `{"status": ..., "calls_per_s": ..., "publications_per_s": ...}` (the
/// rates since the previous event; `null` in the first). An `error` event
/// when the broker cannot be reached; the events go on.
#[utoipa::path(
    get,
    path = "/v1/status/events",
    tag = "status",
    responses((status = 200, description = "`text/event-stream` of `status` events",
        content_type = "text/event-stream", body = String)),
    security((), ("bearer" = [])),
)]
pub(super) async fn status_events(
    State(gateway): State<Arc<Shared>>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let slot = gateway.stream_slot()?;
    let closing = gateway.closing.clone().cancelled_owned();
    let mut ticks = tokio::time::interval(EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let events = stream::unfold(
        (ticks, None::<(Instant, u64, u64)>),
        move |(mut ticks, before)| {
            let gateway = gateway.clone();
            async move {
                ticks.tick().await;
                let (event, now) = match gateway.channels.bus().status().await {
                    Ok(status) => {
                        let now = (Instant::now(), status.calls, status.publications);
                        let per_s = |then: u64, count: u64, since: Instant| {
                            let seconds = now.0.duration_since(since).as_secs_f64();
                            (seconds > 0.0).then(|| count.saturating_sub(then) as f64 / seconds)
                        };
                        let (calls, publications) = match before {
                            Some((since, calls, publications)) => (
                                per_s(calls, now.1, since),
                                per_s(publications, now.2, since),
                            ),
                            None => (None, None),
                        };
                        let update = json!({
                            "status": status,
                            "calls_per_s": calls,
                            "publications_per_s": publications,
                        });
                        (
                            SseEvent::default().event("status").data(update.to_string()),
                            Some(now),
                        )
                    }
                    Err(e) => {
                        let error = json!({ "error": e.to_remote() });
                        (
                            SseEvent::default().event("error").data(error.to_string()),
                            before,
                        )
                    }
                };
                Some((Ok(event), (ticks, now)))
            }
        },
    );
    let events = events.take_until(closing).map(move |event| {
        let _held = &slot;
        event
    });
    Ok(Sse::new(events.boxed()).keep_alive(KeepAlive::default()))
}
