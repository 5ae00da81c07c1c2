//! `POST /v1/channels/{channel}/call/{method}`: one call, JSON in and out.

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, Path, State},
    http::HeaderMap,
    Json,
};
use busline_core::{Error, ErrorCode, Payload};
use serde_json::Value;

use super::{error::ApiError, Shared, PASSWORD_HEADER};
use crate::broker::Channel;

/// Call `method` on `channel` with the JSON body as its arguments (an
/// empty body is `null`); its result, as JSON.
#[utoipa::path(
    post,
    path = "/v1/channels/{channel}/call/{method}",
    tag = "calls",
    params(
        ("channel" = String, Path, description = "The channel, e.g. `math`"),
        ("method" = String, Path, description = "A method provided on it, e.g. `add`"),
        ("X-Busline-Password" = Option<String>, Header,
            description = "The channel's password, if it takes one"),
    ),
    request_body(content = serde_json::Value, content_type = "application/json",
        description = "The method's arguments as JSON, e.g. `[2, 40]`; empty for none"),
    responses(
        (status = 200, description = "The method's result", body = serde_json::Value),
        (status = 400, description = "Not JSON, or arguments the method cannot take",
            body = super::ErrorReply),
        (status = 401, description = "Credentials missing", body = super::ErrorReply),
        (status = 403, description = "Credentials wrong", body = super::ErrorReply),
        (status = 404, description = "No such channel or method", body = super::ErrorReply),
        (status = 413, description = "Arguments or result too large", body = super::ErrorReply),
        (status = 415, description = "Not sent as application/json", body = super::ErrorReply),
        (status = 500, description = "The method's handler failed", body = super::ErrorReply),
        (status = 502, description = "The provider or the broker went away",
            body = super::ErrorReply),
        (status = 504, description = "No answer in time", body = super::ErrorReply),
    ),
    security((), ("bearer" = [])),
)]
pub(super) async fn call(
    State(gateway): State<Arc<Shared>>,
    Path((channel, method)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    // JSON only: a form another site's page posts is refused here, and a
    // body is never taken for what it does not say it is.
    let json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    if !json {
        return Err(ApiError::new(
            axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::Serialization,
            "send the arguments as Content-Type: application/json (curl --json '[2, 40]' URL)"
                .into(),
        ));
    }
    let body = body.map_err(|rejected| {
        let code = match rejected.status().as_u16() {
            413 => ErrorCode::FrameTooLarge,
            _ => ErrorCode::Protocol,
        };
        ApiError::new(rejected.status(), code, rejected.body_text())
    })?;
    let args: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            Error::Serialization(format!(
                "the body must be JSON, the method's arguments: {e}"
            ))
        })?
    };
    let password = password(&headers)?;
    let channel = gateway.channels.get(&channel, password).await?;
    let answer = call_json(&gateway, &channel, &method, &args)
        .await
        .map_err(|e| ApiError::from_error(&e, password.is_some()))?;
    Ok(Json(answer))
}

/// Call `method` on `channel` with JSON arguments, within the gateway's
/// call timeout; its answer as JSON (one that is not is the provider's
/// fault: `Disconnected`'s 502, not the caller's 400).
pub(super) async fn call_json(
    gateway: &Shared,
    channel: &Channel,
    method: &str,
    args: &Value,
) -> busline_core::Result<Value> {
    let call = channel.call_raw(method, Payload::json(args)?);
    let answer = tokio::time::timeout(gateway.call_timeout, call)
        .await
        .unwrap_or(Err(Error::Timeout(gateway.call_timeout)))?;
    answer.decode().map_err(|e| {
        Error::Disconnected(format!(
            "the provider of {method:?} answered what is not JSON: {e}"
        ))
    })
}

/// The channel password a request carries, if any.
pub(super) fn password(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    headers
        .get(PASSWORD_HEADER)
        .map(|value| {
            std::str::from_utf8(value.as_bytes())
                .map_err(|_| Error::Protocol(format!("{PASSWORD_HEADER} must be UTF-8 text")))
        })
        .transpose()
        .map_err(ApiError::from)
}
