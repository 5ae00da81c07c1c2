//! `GET /v1/ws`: a WebSocket carrying JSON-RPC 2.0, one JSON text per
//! message, served by busline's own RPC layer (the jsonrpc codec, its ids,
//! stream credit and cancellation) over the socket. Three methods, whose
//! params are objects:
//!
//! - `call` `{channel, method, args?, password?}`: the method's result.
//! - `stream` `{channel, method, args?, password?}`, sent with `"stream":
//!   N`: the method's items, as `rpc.item` notifications.
//! - `subscribe` `{channel, pattern, password?}`, sent with `"stream": N`:
//!   publications as items, `{"topic", "message"}`, `{"missed": n}` where
//!   some were dropped, `{"interrupted": true}` where the broker was lost a
//!   while. `rpc.cancel` unsubscribes.

use std::sync::Arc;

use axum::{
    extract::{
        ws::{Message as WsMessage, WebSocket},
        State, WebSocketUpgrade,
    },
    response::Response,
};
use busline_core::{Payload, PeerInfo, Result};
use busline_jsonrpc::{Framing, JsonRpcCodec};
use futures::{SinkExt, StreamExt, TryStreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tower::service_fn;

use super::{call::call_json, error::ApiError, Shared};
use crate::{
    broker::{Channel, Event},
    rpc::{Reply, Request, Router, Server},
};

/// Calls and streams one WebSocket may have running at once.
const MAX_HANDLERS: usize = 64;

/// Bytes in flight between the socket and the RPC layer, each way.
const PIPE_BYTES: usize = 64 << 10;

/// Open a WebSocket speaking JSON-RPC 2.0 (see the module docs).
#[utoipa::path(
    get,
    path = "/v1/ws",
    tag = "websocket",
    responses(
        (status = 101, description = "Switching to a WebSocket carrying JSON-RPC 2.0: \
            `call`, `stream` and `subscribe`"),
        (status = 503, description = "As many streams and WebSockets are open as the gateway serves",
            body = super::ErrorReply),
    ),
    security((), ("bearer" = [])),
)]
pub(super) async fn upgrade(
    State(gateway): State<Arc<Shared>>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let slot = gateway.stream_slot()?;
    let max = gateway.max_message;
    Ok(ws
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| async move {
            serve(gateway, socket).await;
            drop(slot);
        }))
}

/// Serve JSON-RPC on `socket` until either side closes it.
async fn serve(gateway: Arc<Shared>, socket: WebSocket) {
    let closing = gateway.closing.clone();
    let codec = JsonRpcCodec::new()
        .framing(Framing::Lines)
        .transcode_cbor(true);
    // A socket's calls wait for room rather than crowd out the others'.
    let server = Server::builder(router(gateway), codec).max_handlers(MAX_HANDLERS);
    let (rpc_side, pipe) = tokio::io::duplex(PIPE_BYTES);
    let (pipe_read, mut pipe_write) = tokio::io::split(pipe);
    let (mut to_client, mut from_client) = socket.split();
    // Messages in: each one text, written as one line.
    let inbound = async move {
        while let Some(Ok(message)) = from_client.next().await {
            let text = match message {
                WsMessage::Text(text) => text.to_string(),
                WsMessage::Binary(bytes) => match String::from_utf8(bytes.to_vec()) {
                    Ok(text) => text,
                    Err(_) => break,
                },
                WsMessage::Close(_) => break,
                WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
            };
            let line = one_line(text) + "\n";
            if pipe_write.write_all(line.as_bytes()).await.is_err() {
                break;
            }
        }
        let _ = pipe_write.shutdown().await;
    };
    // Lines out: each one message.
    let outbound = async move {
        let mut lines = BufReader::new(pipe_read).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if to_client.send(WsMessage::Text(line.into())).await.is_err() {
                break;
            }
        }
        let _ = to_client.close().await;
    };
    let connection = server.serve_connection(rpc_side, PeerInfo::described("websocket"));
    // Done when the RPC side has answered all and closed the socket (a
    // client that never answers the close is not waited for), or when
    // the gateway closes.
    let reading = tokio::spawn(inbound);
    tokio::select! {
        _ = async { tokio::join!(outbound, connection) } => {}
        () = closing.cancelled() => {}
    }
    reading.abort();
}

/// What `call` and `stream` take.
#[derive(Debug, Deserialize)]
struct MethodParams {
    channel: String,
    method: String,
    #[serde(default)]
    args: Value,
    password: Option<String>,
}

/// What `subscribe` takes.
#[derive(Debug, Deserialize)]
struct PatternParams {
    channel: String,
    pattern: String,
    password: Option<String>,
}

fn router(gateway: Arc<Shared>) -> Router {
    let (calls, streams, subscriptions) = (gateway.clone(), gateway.clone(), gateway);
    Router::new()
        .route(
            "call",
            service_fn(move |req: Request| {
                let gateway = calls.clone();
                async move {
                    let p: MethodParams = req.arguments()?;
                    let channel = join(&gateway, &p.channel, p.password.as_deref()).await?;
                    let answer = call_json(&gateway, &channel, &p.method, &p.args).await?;
                    Ok(Reply::Unary(Payload::json(&answer)?))
                }
            }),
        )
        .route(
            "stream",
            service_fn(move |req: Request| {
                let gateway = streams.clone();
                async move {
                    let p: MethodParams = req.arguments()?;
                    let channel = join(&gateway, &p.channel, p.password.as_deref()).await?;
                    let items = channel.stream::<_, Value>(&p.method, &p.args).await?;
                    Ok(Reply::Stream(Box::pin(items.and_then(|item| {
                        std::future::ready(Payload::json(&item))
                    }))))
                }
            }),
        )
        .route(
            "subscribe",
            service_fn(move |req: Request| {
                let gateway = subscriptions.clone();
                async move {
                    let p: PatternParams = req.arguments()?;
                    let channel = join(&gateway, &p.channel, p.password.as_deref()).await?;
                    let subscription = channel.subscribe(&p.pattern).await?;
                    let items = subscription.map(|event| {
                        let item = match event? {
                            Event::Message(publication) => json!({
                                "topic": publication.topic,
                                "message": publication.decode::<Value>()?,
                            }),
                            Event::Lagged(missed) => json!({ "missed": missed }),
                            Event::Interrupted => json!({ "interrupted": true }),
                        };
                        Payload::json(&item)
                    });
                    Ok(Reply::Stream(Box::pin(items)))
                }
            }),
        )
}

/// The channel, checked against the password as for HTTP requests.
async fn join(gateway: &Shared, channel: &str, password: Option<&str>) -> Result<Channel> {
    gateway
        .channels
        .get(channel, password)
        .await
        .map_err(|e| e.into_error())
}

/// A message as one line. Compact JSON is one already; JSON with newlines
/// as whitespace is written compactly; text that is not JSON stays not
/// JSON (its newlines become a character JSON never allows unescaped), so
/// the client gets a parse error rather than a different message.
fn one_line(text: String) -> String {
    if !text.contains(['\n', '\r']) {
        return text;
    }
    match serde_json::from_str::<Value>(&text) {
        Ok(value) => value.to_string(),
        Err(_) => text.replace(['\n', '\r'], "\u{1}"),
    }
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn a_message_becomes_one_line_and_stays_what_it_was() {
        assert_eq!(one_line("{\"a\":1}".into()), "{\"a\":1}");
        assert_eq!(
            one_line("{\n  \"a\": [1,\r\n 2]\n}".into()),
            "{\"a\":[1,2]}"
        );
        let broken = one_line("{\"a\": \"x\ny\"}".into());
        assert!(!broken.contains('\n'));
        assert!(serde_json::from_str::<serde_json::Value>(&broken).is_err());
    }
}
