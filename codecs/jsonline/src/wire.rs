//! The flat JSON object each [`Message`] becomes, and back.

use std::borrow::Cow;

use base64::{engine::general_purpose::STANDARD as BASE64, Engine};
use busline_core::{Encoding, Error, Message, Payload, RemoteError};
use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

/// The outgoing form, borrowing from the message.
#[derive(Serialize)]
pub(crate) struct Out<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scheme: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    credit: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a RemoteError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    encoding: Option<Encoding>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_base64: Option<String>,
}

impl<'a> Out<'a> {
    fn new(msg: &Message) -> Self {
        Out {
            kind: msg.kind(),
            id: None,
            version: None,
            scheme: None,
            method: None,
            credit: None,
            timeout_ms: None,
            error: None,
            encoding: None,
            payload: None,
            payload_base64: None,
        }
    }

    fn with_payload(mut self, payload: &'a Payload) -> Self {
        // Embed JSON verbatim when its exact bytes fit on one line; anything
        // else goes as base64 so the receiver gets the same bytes back.
        if payload.encoding() == Encoding::Json && !payload.bytes().contains(&b'\n') {
            if let Ok(raw) = serde_json::from_slice::<&RawValue>(payload.bytes()) {
                if raw.get().len() == payload.len() {
                    self.payload = Some(raw);
                    return self;
                }
            }
        }
        self.encoding = Some(payload.encoding());
        self.payload_base64 = Some(BASE64.encode(payload.bytes()));
        self
    }
}

impl<'a> From<&'a Message> for Out<'a> {
    fn from(msg: &'a Message) -> Self {
        let out = Out::new(msg);
        match msg {
            Message::Hello { version, scheme } => Out {
                version: Some(*version),
                scheme: Some(scheme),
                ..out
            },
            Message::Auth { payload } | Message::Notify { payload, .. } => {
                let method = match msg {
                    Message::Notify { method, .. } => Some(method.as_str()),
                    _ => None,
                };
                Out { method, ..out }.with_payload(payload)
            }
            Message::Welcome { version } => Out {
                version: Some(*version),
                ..out
            },
            Message::Request {
                id,
                method,
                payload,
                timeout_ms,
            } => Out {
                id: Some(*id),
                method: Some(method),
                timeout_ms: *timeout_ms,
                ..out
            }
            .with_payload(payload),
            Message::OpenStream {
                id,
                method,
                payload,
                credit,
                timeout_ms,
            } => Out {
                id: Some(*id),
                method: Some(method),
                credit: Some(*credit),
                timeout_ms: *timeout_ms,
                ..out
            }
            .with_payload(payload),
            Message::Reply { id, payload } | Message::Item { id, payload } => Out {
                id: Some(*id),
                ..out
            }
            .with_payload(payload),
            Message::Error { id, error } => Out {
                id: Some(*id),
                error: Some(error),
                ..out
            },
            Message::End { id } | Message::Cancel { id } => Out {
                id: Some(*id),
                ..out
            },
            Message::Credit { id, credit } => Out {
                id: Some(*id),
                credit: Some(*credit),
                ..out
            },
            Message::Close { error } => Out {
                error: error.as_ref(),
                ..out
            },
            // Refused by the encoder before it gets here.
            Message::Rejected { error, .. } => Out {
                error: Some(error),
                ..out
            },
        }
    }
}

/// The incoming form, borrowing from the line.
#[derive(Deserialize)]
struct In<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    id: Option<u64>,
    version: Option<u32>,
    scheme: Option<String>,
    method: Option<String>,
    credit: Option<u32>,
    timeout_ms: Option<u64>,
    error: Option<RemoteError>,
    encoding: Option<Encoding>,
    #[serde(default, borrow, deserialize_with = "present")]
    payload: Option<&'a RawValue>,
    #[serde(borrow)]
    payload_base64: Option<Cow<'a, str>>,
}

/// A present `payload` is kept even when it is `null` (a real JSON value).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

fn need<T>(value: Option<T>, field: &str, kind: &str) -> Result<T, Error> {
    value.ok_or_else(|| Error::Protocol(format!("a {kind:?} message needs {field:?}")))
}

/// Parse one line (without its newline) into a [`Message`].
pub(crate) fn parse(line: &Bytes) -> Result<Message, Error> {
    let w: In = serde_json::from_slice(line)
        .map_err(|e| Error::Serialization(format!("malformed JSON line: {e}")))?;
    let kind = &*w.kind;
    let payload = || -> Result<Payload, Error> {
        match (w.payload, &w.payload_base64) {
            (Some(raw), None) => match w.encoding.unwrap_or(Encoding::Json) {
                Encoding::Json => Ok(Payload::from_frame(
                    Encoding::Json,
                    line,
                    raw.get().as_bytes(),
                )),
                other => Err(Error::Protocol(format!(
                    "an inline \"payload\" is JSON; {} payloads go in \"payload_base64\"",
                    other.as_str()
                ))),
            },
            (None, Some(b64)) => {
                let bytes = BASE64.decode(b64.as_bytes()).map_err(|e| {
                    Error::Serialization(format!("\"payload_base64\" is not base64: {e}"))
                })?;
                Ok(Payload::from_bytes(
                    w.encoding.unwrap_or(Encoding::Json),
                    bytes,
                ))
            }
            (None, None) => Err(Error::Protocol(format!(
                "a {kind:?} message needs \"payload\" or \"payload_base64\""
            ))),
            (Some(_), Some(_)) => Err(Error::Protocol(
                "a message has either \"payload\" or \"payload_base64\", not both".into(),
            )),
        }
    };
    let id = || need(w.id, "id", kind);
    let method = || need(w.method.clone(), "method", kind);
    Ok(match kind {
        "hello" => Message::Hello {
            version: need(w.version, "version", kind)?,
            scheme: need(w.scheme.clone(), "scheme", kind)?,
        },
        "auth" => Message::Auth {
            payload: payload()?,
        },
        "welcome" => Message::Welcome {
            version: need(w.version, "version", kind)?,
        },
        "request" => Message::Request {
            id: id()?,
            method: method()?,
            payload: payload()?,
            timeout_ms: w.timeout_ms,
        },
        "notify" => Message::Notify {
            method: method()?,
            payload: payload()?,
        },
        "open_stream" => Message::OpenStream {
            id: id()?,
            method: method()?,
            payload: payload()?,
            credit: need(w.credit, "credit", kind)?,
            timeout_ms: w.timeout_ms,
        },
        "reply" => Message::Reply {
            id: id()?,
            payload: payload()?,
        },
        "error" => Message::Error {
            id: id()?,
            error: need(w.error.clone(), "error", kind)?,
        },
        "item" => Message::Item {
            id: id()?,
            payload: payload()?,
        },
        "end" => Message::End { id: id()? },
        "credit" => Message::Credit {
            id: id()?,
            credit: need(w.credit, "credit", kind)?,
        },
        "cancel" => Message::Cancel { id: id()? },
        "close" => Message::Close {
            error: w.error.clone(),
        },
        other => return Err(Error::Protocol(format!("unknown message type {other:?}"))),
    })
}
