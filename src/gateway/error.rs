//! busline's typed errors as HTTP answers: a fitting status and a JSON body
//! that keeps the error's code, so an HTTP client can tell a missing method
//! from a slow provider without parsing text.

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use busline_core::{Error, ErrorCode, RemoteError};
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error answer: `{"error": {"code": ..., "message": ...}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorReply {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// One error, as busline's wire protocol carries it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// The category, e.g. `method_not_found`, `unauthorized`, `timeout`,
    /// `handler_failed`, `frame_too_large`, `disconnected`.
    #[schema(value_type = String)]
    pub code: ErrorCode,
    /// What happened, for people.
    pub message: String,
    /// More, by code: a failed handler's error type, a timeout's
    /// milliseconds, a frame's size and limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// An error answer on its way out.
#[derive(Debug)]
pub(super) struct ApiError {
    status: StatusCode,
    error: RemoteError,
}

impl ApiError {
    /// `err` as an answer; `credentials` says whether the request carried
    /// any for what refused it (a refusal without is 401, with is 403).
    pub(super) fn from_error(err: &Error, credentials: bool) -> ApiError {
        ApiError {
            status: status_of(err, credentials),
            error: err.to_remote(),
        }
    }

    /// A request the gateway refuses itself, before busline sees it.
    pub(super) fn new(status: StatusCode, code: ErrorCode, message: String) -> ApiError {
        ApiError {
            status,
            error: RemoteError {
                code,
                message,
                detail: None,
            },
        }
    }

    /// The busline error it stands for, for answers that are not HTTP
    /// (the WebSocket's JSON-RPC).
    pub(super) fn into_error(self) -> Error {
        self.error.into_error()
    }

    /// The status it answers with.
    pub(super) fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<Error> for ApiError {
    /// An error no credentials were given for.
    fn from(err: Error) -> ApiError {
        ApiError::from_error(&err, false)
    }
}

/// The HTTP status that says what `err` means to an HTTP client.
fn status_of(err: &Error, credentials: bool) -> StatusCode {
    match err {
        Error::MethodNotFound(_) => StatusCode::NOT_FOUND,
        Error::Unauthorized(_) if credentials => StatusCode::FORBIDDEN,
        Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        Error::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        Error::FrameTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        // The provider went away mid-call, or the broker did.
        Error::Disconnected(_) | Error::Transport(_) | Error::Cancelled => StatusCode::BAD_GATEWAY,
        // What the caller sent does not fit: bad JSON, arguments the
        // method cannot take, a malformed channel or method name.
        Error::Serialization(_) | Error::Protocol(_) | Error::Address { .. } => {
            StatusCode::BAD_REQUEST
        }
        Error::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
        // The provider's handler ran and failed (`handler_failed`, its
        // error type in `detail`), or an error this build does not know.
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let RemoteError {
            code,
            message,
            detail,
        } = self.error;
        let body = ErrorReply {
            error: ErrorDetail {
                code,
                message,
                detail,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"busline\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn each_error_gets_its_status() {
        let cases = [
            (Error::MethodNotFound("m".into()), false, 404),
            (Error::Unauthorized("no".into()), false, 401),
            (Error::Unauthorized("no".into()), true, 403),
            (Error::Timeout(Duration::from_secs(1)), false, 504),
            (Error::FrameTooLarge { size: 2, limit: 1 }, false, 413),
            (Error::Disconnected("gone".into()), false, 502),
            (Error::Serialization("bad".into()), false, 400),
            (Error::Overloaded("busy".into()), false, 503),
            (Error::handler(&"boom", "panic"), false, 500),
        ];
        for (err, credentials, status) in cases {
            let got = ApiError::from_error(&err, credentials).status();
            assert_eq!(got.as_u16(), status, "{err:?}");
        }
    }
}
