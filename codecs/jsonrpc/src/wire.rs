//! JSON-RPC objects ⇄ [`Message`]s.

use std::collections::VecDeque;

use base64::{engine::general_purpose::STANDARD as BASE64, Engine};
use busline_core::{Encoding, Error, ErrorCode, Message, Payload, RemoteError};
use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use crate::{
    calls::{Calls, JsonId},
    errors::{code_for, ErrorObject, INVALID_REQUEST, PARSE_ERROR},
};

/// The member that wraps a payload JSON cannot carry as it is.
const ESCAPE: &str = "busline.payload";
/// How an escape object starts, as written; a JSON payload that starts so
/// is escaped itself.
const ESCAPE_PREFIX: &str = "{\"busline.payload\"";

/// The `rpc.` notifications busline uses (the specification reserves the
/// prefix for such protocol extensions).
const INTERNAL: [&str; 7] = [
    "hello", "auth", "welcome", "item", "credit", "cancel", "close",
];

/// Every member busline reads; absent ones are `None`, a present `null`
/// is `Some("null")`.
#[derive(Deserialize)]
struct Object<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    jsonrpc: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    method: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    params: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    result: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    error: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    stream: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    timeout_ms: Option<&'a RawValue>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Reads frames into messages for one connection.
pub(crate) struct Reader<'a> {
    pub(crate) calls: &'a mut Calls,
    pub(crate) out: &'a mut VecDeque<Message>,
    pub(crate) frame: &'a Bytes,
}

/// Why an object is not a valid request: its JSON-RPC code and a message.
type Invalid = (i64, String);

fn invalid(what: impl Into<String>) -> Invalid {
    (INVALID_REQUEST, what.into())
}

impl Reader<'_> {
    /// Read one frame: an object or a batch of them.
    pub(crate) fn frame(&mut self) {
        let frame = self.frame;
        let Ok(text) = std::str::from_utf8(frame) else {
            return self.reject(None, None, (PARSE_ERROR, "the text is not UTF-8".into()));
        };
        match text.trim_start().as_bytes().first() {
            Some(b'[') => {
                let items: Vec<&RawValue> = match serde_json::from_str(text) {
                    Ok(items) => items,
                    Err(e) => return self.reject(None, None, (PARSE_ERROR, e.to_string())),
                };
                if items.is_empty() {
                    return self.reject(None, None, invalid("an empty batch"));
                }
                let batch = self.calls.open_batch();
                for item in items {
                    self.object(item.get(), Some(batch));
                }
                self.calls.close_batch(batch);
            }
            Some(b'{') => self.object(text, None),
            _ => {
                let why = match serde_json::from_str::<serde::de::IgnoredAny>(text) {
                    Ok(_) => invalid("not an object or a batch"),
                    Err(e) => (PARSE_ERROR, e.to_string()),
                };
                self.reject(None, None, why)
            }
        }
    }

    /// Answer an unreadable call with an error, under its id if it has a
    /// usable one, else under null.
    fn reject(&mut self, id: Option<&RawValue>, batch: Option<u64>, (code, message): Invalid) {
        let json_id = id.filter(|id| usable_id(id)).unwrap_or(RawValue::NULL);
        let id = self.calls.register(json_id, batch, Some(code));
        let category = if code == PARSE_ERROR {
            ErrorCode::Serialization
        } else {
            ErrorCode::Protocol
        };
        self.out.push_back(Message::Rejected {
            id,
            error: RemoteError {
                code: category,
                message,
                detail: None,
            },
        });
    }

    fn object(&mut self, text: &str, batch: Option<u64>) {
        let obj: Object<'_> = match serde_json::from_str(text) {
            Ok(obj) => obj,
            // Not JSON at all, or JSON that is not a request object.
            Err(e) => {
                let why = match serde_json::from_str::<serde::de::IgnoredAny>(text) {
                    Ok(_) => invalid(format!("not a request: {e}")),
                    Err(e) => (PARSE_ERROR, e.to_string()),
                };
                return self.reject(None, batch, why);
            }
        };
        let read = match obj.method {
            Some(method) => self.request(&obj, method, batch),
            None => self.response(&obj),
        };
        if let Err(why) = read {
            self.reject(obj.id, batch, why);
        }
    }

    fn request(
        &mut self,
        obj: &Object<'_>,
        method: &RawValue,
        batch: Option<u64>,
    ) -> Result<(), Invalid> {
        if obj.jsonrpc.map(RawValue::get) != Some("\"2.0\"") {
            return Err(invalid("\"jsonrpc\" must be \"2.0\""));
        }
        let method: String = serde_json::from_str(method.get())
            .map_err(|_| invalid("\"method\" must be a string"))?;
        if let Some(id) = obj.id {
            if !usable_id(id) {
                return Err(invalid("\"id\" must be a string, a number or null"));
            }
        }
        let payload = match obj.params {
            None => Payload::unit(),
            Some(p) if matches!(p.get().as_bytes()[0], b'[' | b'{') => self.payload(p),
            Some(_) => return Err(invalid("\"params\" must be an array or an object")),
        };
        let timeout_ms = obj.timeout_ms.map(number).transpose()?;
        if let Some(name) = method.strip_prefix("rpc.").filter(|n| INTERNAL.contains(n)) {
            if let Some(msg) = self.internal(name, obj.params)? {
                self.out.push_back(msg);
            }
            return Ok(());
        }
        let msg = match (obj.id, obj.stream) {
            (None, _) => Message::Notify { method, payload },
            (Some(id), None) => Message::Request {
                id: self.calls.register(id, batch, None),
                method,
                payload,
                timeout_ms,
            },
            (Some(id), Some(credit)) => Message::OpenStream {
                credit: number(credit)?,
                id: self.calls.register(id, batch, None),
                method,
                payload,
                timeout_ms,
            },
        };
        self.out.push_back(msg);
        Ok(())
    }

    /// One of busline's own notifications; `None` when it needs no action
    /// (a cancel or credit for a call that is already over).
    fn internal(
        &mut self,
        name: &str,
        params: Option<&RawValue>,
    ) -> Result<Option<Message>, Invalid> {
        #[derive(Deserialize, Default)]
        struct Params<'a> {
            #[serde(borrow)]
            id: Option<&'a RawValue>,
            version: Option<u32>,
            scheme: Option<String>,
            credit: Option<u32>,
            #[serde(borrow)]
            item: Option<&'a RawValue>,
            #[serde(borrow)]
            payload: Option<&'a RawValue>,
            error: Option<ErrorObject>,
        }
        let p: Params<'_> = match params {
            Some(p) => serde_json::from_str(p.get())
                .map_err(|e| invalid(format!("rpc.{name} params: {e}")))?,
            None => Params::default(),
        };
        let need = |field: &str| invalid(format!("rpc.{name} needs {field:?}"));
        let our_id = |id: Option<&RawValue>| -> Result<u64, Invalid> {
            number(id.ok_or_else(|| need("id"))?)
        };
        Ok(Some(match name {
            "hello" => Message::Hello {
                version: p.version.ok_or_else(|| need("version"))?,
                scheme: p.scheme.ok_or_else(|| need("scheme"))?,
            },
            "auth" => Message::Auth {
                payload: self.payload(p.payload.ok_or_else(|| need("payload"))?),
            },
            "welcome" => Message::Welcome {
                version: p.version.ok_or_else(|| need("version"))?,
            },
            "item" => Message::Item {
                id: our_id(p.id)?,
                payload: self.payload(p.item.ok_or_else(|| need("item"))?),
            },
            "credit" | "cancel" => {
                let json_id = p.id.ok_or_else(|| need("id"))?.get();
                let Some(id) = self.calls.lookup(json_id) else {
                    return Ok(None);
                };
                if name == "cancel" {
                    self.calls.forget(id);
                    Message::Cancel { id }
                } else {
                    Message::Credit {
                        id,
                        credit: p.credit.ok_or_else(|| need("credit"))?,
                    }
                }
            }
            _ => Message::Close {
                error: p.error.map(ErrorObject::into_remote),
            },
        }))
    }

    /// An answer to one of our calls. One with an id that is not ours is
    /// dropped: nothing waits for it.
    fn response(&mut self, obj: &Object<'_>) -> Result<(), Invalid> {
        let id = obj
            .id
            .ok_or_else(|| invalid("neither \"method\" nor \"id\""))?;
        let msg = match (obj.result, obj.error) {
            (Some(_), Some(_)) => return Err(invalid("both \"result\" and \"error\"")),
            (None, None) => return Err(invalid("neither \"result\" nor \"error\"")),
            (None, Some(error)) => {
                let error = serde_json::from_str::<ErrorObject>(error.get())
                    .map_err(|e| invalid(format!("malformed \"error\": {e}")))?
                    .into_remote();
                match id.get() {
                    "null" => Message::Close { error: Some(error) },
                    text => match text.parse() {
                        Ok(id) => Message::Error { id, error },
                        Err(_) => return Ok(()),
                    },
                }
            }
            (Some(result), None) => {
                let Ok(id) = id.get().parse() else {
                    return Ok(());
                };
                if obj.stream.map(RawValue::get) == Some("\"end\"") {
                    Message::End { id }
                } else {
                    Message::Reply {
                        id,
                        payload: self.payload(result),
                    }
                }
            }
        };
        self.out.push_back(msg);
        Ok(())
    }

    /// The payload a JSON value carries: the value's own bytes, or what an
    /// escape object wraps.
    fn payload(&self, raw: &RawValue) -> Payload {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Escape {
            #[serde(rename = "busline.payload")]
            inner: Escaped,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Escaped {
            encoding: Encoding,
            base64: String,
        }
        let text = raw.get();
        if text.starts_with(ESCAPE_PREFIX) {
            if let Ok(Escape { inner }) = serde_json::from_str(text) {
                if let Ok(bytes) = BASE64.decode(inner.base64) {
                    return Payload::from_bytes(inner.encoding, bytes);
                }
            }
        }
        Payload::from_frame(Encoding::Json, self.frame, text.as_bytes())
    }
}

/// A non-negative integer member.
fn number<T: serde::de::DeserializeOwned>(raw: &RawValue) -> Result<T, Invalid> {
    serde_json::from_str(raw.get())
        .map_err(|_| invalid(format!("{} is not a valid count", raw.get())))
}

/// Ids the specification allows: strings, numbers and null.
fn usable_id(id: &RawValue) -> bool {
    matches!(id.get().as_bytes()[0], b'"' | b'-' | b'0'..=b'9' | b'n')
}

/// The JSON form of `payload`: its bytes when they are one JSON value on one
/// line; with `transcode`, a CBOR payload's value as JSON; else an escape
/// object.
pub(crate) fn payload_json(payload: &Payload, transcode: bool) -> Result<Box<RawValue>, Error> {
    let bytes = payload.bytes();
    if transcode && payload.encoding() == Encoding::Cbor {
        let mut scratch = [0u8; 256];
        let value: Option<serde_json::Value> =
            ciborium::de::from_reader_with_buffer(&bytes[..], &mut scratch).ok();
        if let Some(raw) = value.and_then(|v| serde_json::value::to_raw_value(&v).ok()) {
            return Ok(raw);
        }
    }
    if payload.encoding() == Encoding::Json && !bytes.contains(&b'\n') {
        if let Ok(raw) = serde_json::from_slice::<&RawValue>(bytes) {
            let text = raw.get();
            if text.len() == bytes.len() && !text.starts_with(ESCAPE_PREFIX) {
                return Ok(raw.to_owned());
            }
        }
    }
    let escaped = serde_json::json!({
        ESCAPE: {"encoding": payload.encoding(), "base64": BASE64.encode(bytes)}
    });
    serde_json::value::to_raw_value(&escaped).map_err(|e| Error::Serialization(e.to_string()))
}

/// An outgoing object; members left `None` are not written.
#[derive(Serialize, Default)]
pub(crate) struct Out<'a> {
    pub(crate) jsonrpc: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) method: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) params: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) result: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<ErrorObject>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) stream: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) id: Option<JsonId<'a>>,
}

impl Out<'_> {
    pub(crate) fn to_text(&self) -> Result<String, Error> {
        serde_json::to_string(self).map_err(|e| Error::Serialization(e.to_string()))
    }
}

/// The error object for `error`, under `code` if the codec chose one.
pub(crate) fn error_object(error: &RemoteError, code: Option<i64>) -> ErrorObject {
    ErrorObject::new(code.unwrap_or_else(|| code_for(error.code)), error)
}
