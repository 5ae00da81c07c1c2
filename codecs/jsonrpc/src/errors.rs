//! busline's error categories ⇄ JSON-RPC 2.0 error objects.
//!
//! The five codes the specification defines keep their meaning; busline's
//! other categories take server-error codes from -32000 up. Every error
//! object busline sends has a `data` member naming the busline category and
//! carrying the full message, so a busline peer rebuilds the exact error and
//! a plain client still gets something readable.

use busline_core::{ErrorCode, RemoteError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Invalid JSON was received.
pub(crate) const PARSE_ERROR: i64 = -32700;
/// The JSON sent is not a valid Request object.
pub(crate) const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;
const INTERNAL_ERROR: i64 = -32603;

/// busline categories outside the specification's five, and their codes.
const SERVER_ERRORS: [(ErrorCode, i64); 8] = [
    (ErrorCode::HandlerFailed, -32000),
    (ErrorCode::Timeout, -32001),
    (ErrorCode::Unauthorized, -32002),
    (ErrorCode::FrameTooLarge, -32003),
    (ErrorCode::Disconnected, -32004),
    (ErrorCode::Cancelled, -32005),
    (ErrorCode::Overloaded, -32006),
    (ErrorCode::Transport, -32007),
];

/// The JSON-RPC code for a busline category.
pub(crate) fn code_for(code: ErrorCode) -> i64 {
    match code {
        ErrorCode::MethodNotFound => METHOD_NOT_FOUND,
        ErrorCode::Serialization => INVALID_PARAMS,
        ErrorCode::Protocol => INVALID_REQUEST,
        other => SERVER_ERRORS
            .iter()
            .find(|(c, _)| *c == other)
            .map_or(INTERNAL_ERROR, |(_, n)| *n),
    }
}

/// The specification's message for its own codes.
fn standard_message(code: i64) -> Option<&'static str> {
    Some(match code {
        PARSE_ERROR => "Parse error",
        INVALID_REQUEST => "Invalid Request",
        METHOD_NOT_FOUND => "Method not found",
        INVALID_PARAMS => "Invalid params",
        INTERNAL_ERROR => "Internal error",
        _ => return None,
    })
}

/// A JSON-RPC error object.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ErrorObject {
    pub(crate) code: i64,
    pub(crate) message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) data: Option<Value>,
}

/// What busline puts in `data`.
#[derive(Debug, Serialize, Deserialize)]
struct Data {
    busline: String,
    message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

impl ErrorObject {
    /// The object for `err`, under `code` (normally [`code_for`] of its
    /// category; the codec's own parse and request errors pass theirs).
    pub(crate) fn new(code: i64, err: &RemoteError) -> Self {
        let data = Data {
            busline: err.code.as_str().into(),
            message: err.message.clone(),
            detail: err.detail.clone(),
        };
        ErrorObject {
            code,
            message: standard_message(code).map_or_else(|| err.message.clone(), str::to_owned),
            data: serde_json::to_value(data).ok(),
        }
    }

    /// The busline error this object describes: exact when a busline peer
    /// sent it, the nearest category otherwise.
    pub(crate) fn into_remote(self) -> RemoteError {
        if let Some(data) = self.data.as_ref().and_then(|d| Data::deserialize(d).ok()) {
            return RemoteError {
                code: ErrorCode::from_name(&data.busline),
                message: data.message,
                detail: data.detail,
            };
        }
        let code = match self.code {
            METHOD_NOT_FOUND => ErrorCode::MethodNotFound,
            INVALID_PARAMS | PARSE_ERROR => ErrorCode::Serialization,
            INVALID_REQUEST => ErrorCode::Protocol,
            INTERNAL_ERROR => ErrorCode::Internal,
            n => SERVER_ERRORS
                .iter()
                .find(|(_, m)| *m == n)
                .map_or(ErrorCode::HandlerFailed, |(c, _)| *c),
        };
        let message = match &self.data {
            Some(data) => format!("{}: {data}", self.message),
            None => self.message,
        };
        // A foreign application error keeps its number as the error "type".
        let detail = (code == ErrorCode::HandlerFailed).then(|| format!("jsonrpc {}", self.code));
        RemoteError {
            code,
            message,
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busline_errors_survive_and_foreign_ones_map_to_the_nearest_category() {
        let ours = RemoteError {
            code: ErrorCode::Timeout,
            message: "timed out after 5ms".into(),
            detail: Some("5".into()),
        };
        let obj = ErrorObject::new(code_for(ours.code), &ours);
        assert_eq!(obj.code, -32001);
        assert_eq!(obj.into_remote(), ours);

        let not_found = ErrorObject {
            code: -32601,
            message: "Method not found".into(),
            data: None,
        };
        assert_eq!(not_found.into_remote().code, ErrorCode::MethodNotFound);

        let app = ErrorObject {
            code: 42,
            message: "out of stock".into(),
            data: Some(serde_json::json!({"sku": 7})),
        }
        .into_remote();
        assert_eq!(app.code, ErrorCode::HandlerFailed);
        assert_eq!(app.detail.as_deref(), Some("jsonrpc 42"));
        assert!(app.message.contains("out of stock") && app.message.contains("sku"));
    }

    #[test]
    fn standard_codes_carry_the_specification_messages() {
        let err = RemoteError {
            code: ErrorCode::MethodNotFound,
            message: "method not found: \"x\"".into(),
            detail: None,
        };
        let obj = ErrorObject::new(code_for(err.code), &err);
        assert_eq!(
            (obj.code, obj.message.as_str()),
            (-32601, "Method not found")
        );
    }
}
