//! The broker's state for people: a page at `/` that shows channels,
//! owners, providers, subscribers, clients and the call and publication
//! rates, updated live from `GET /v1/status/events`. Plain HTML and
//! JavaScript in the binary: nothing to build, nothing to fetch.

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

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
use tokio::{sync::watch, time::Instant};

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

/// The broker's status each second as server-sent `status` events (one
/// poll of the broker for all viewers):
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
    let mut updates = StatusFeed::watch(&gateway);
    // A viewer joining a running feed gets the latest update at once.
    if updates.borrow().is_some() {
        updates.mark_changed();
    }
    let events = stream::unfold(updates, |mut updates| async move {
        updates.changed().await.ok()?;
        let update = updates.borrow_and_update().clone()?;
        Some((update, updates))
    })
    .map(move |(name, data)| {
        let _held = &slot;
        Ok(SseEvent::default().event(name).data(data))
    })
    .take_until(closing);
    Ok(Sse::new(events.boxed()).keep_alive(KeepAlive::default()))
}

/// An update for the status page: the event's name and its data.
type Update = (&'static str, String);

/// One poll of the broker each second, whatever the number of viewers,
/// while there is one.
#[derive(Debug, Default)]
pub(super) struct StatusFeed {
    running: Mutex<Option<watch::Sender<Option<Update>>>>,
}

impl StatusFeed {
    /// Updates for one more viewer; the poll starts if it is the first.
    fn watch(gateway: &Arc<Shared>) -> watch::Receiver<Option<Update>> {
        let mut running = gateway.status.lock();
        if let Some(feed) = running.as_ref() {
            return feed.subscribe();
        }
        let (feed, updates) = watch::channel(None);
        *running = Some(feed.clone());
        tokio::spawn(poll(gateway.clone(), feed));
        updates
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<watch::Sender<Option<Update>>>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Poll the broker each second for `feed`'s viewers, until there are none
/// (decided under the feed's lock, so a viewer arriving meanwhile either
/// joins this poll or starts the next) or the gateway closes.
async fn poll(gateway: Arc<Shared>, feed: watch::Sender<Option<Update>>) {
    let mut ticks = tokio::time::interval(EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut before: Option<(Instant, u64, u64)> = None;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = gateway.closing.cancelled() => {}
        }
        {
            let mut running = gateway.status.lock();
            if feed.receiver_count() == 0 || gateway.closing.is_cancelled() {
                *running = None;
                return;
            }
        }
        let update = match gateway.channels.bus().status().await {
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
                before = Some(now);
                let update = json!({
                    "status": status,
                    "calls_per_s": calls,
                    "publications_per_s": publications,
                });
                ("status", update.to_string())
            }
            Err(e) => ("error", json!({ "error": e.to_remote() }).to_string()),
        };
        feed.send_replace(Some(update));
    }
}
