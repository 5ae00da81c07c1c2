//! JSON-RPC 2.0 for busline, so that any ordinary JSON-RPC client or
//! server, in any language, talks to busline with no busline-specific code.
//!
//! Framing is per connection: one JSON text per line, or `Content-Length:`
//! headers as in LSP ([`Framing`]; by default a server detects which from
//! the first bytes). Everything the specification describes is honoured:
//! ids (number, string or null) come back exactly as sent; params by
//! position or by name; notifications are never answered; batches are
//! answered with one array holding the responses to their requests only;
//! parse and request errors use the specification's codes, and busline's
//! own categories use -32000 to -32007, each error carrying a `data` object
//! `{"busline": category, "message": ..., "detail": ...}`.
//!
//! # Conventions beyond the specification
//!
//! They use members and `rpc.`-prefixed methods (which the specification
//! reserves for such extensions); plain peers never see them unless they
//! use the features.
//!
//! - **Streams**: a request with `"stream": N` opens a stream; the server
//!   may send N items before the client grants more. Items arrive as
//!   notifications `{"method": "rpc.item", "params": {"id": <request id>,
//!   "item": <value>}}`; the stream ends with the request's response:
//!   `{"result": null, "stream": "end"}`, or an error. Grant more with
//!   `{"method": "rpc.credit", "params": {"id": <request id>, "credit": N}}`.
//! - **Cancel** a request or stream with `{"method": "rpc.cancel",
//!   "params": {"id": <request id>}}`; no response follows.
//! - **Deadline**: `"timeout_ms": N` in a request tells the server when the
//!   caller stops waiting.
//! - **Handshake**: without authentication there is none. With a shared
//!   secret, `rpc.hello`, `rpc.auth` and `rpc.welcome` notifications carry
//!   busline's handshake; a connection closed with an error ends with a
//!   response whose id is null.
//! - **Payloads** that are not one line of JSON (CBOR, binary, JSON with
//!   newlines) travel as `{"busline.payload": {"encoding": ..., "base64":
//!   ...}}`.
//!
//! JSON-RPC requires params to be an array or an object, so call with a
//! tuple or a struct; a handler taking one argument also accepts it wrapped
//! in a one-element array, which is what plain clients send.
//!
//! ```
//! use busline_core::{Message, Payload};
//! use busline_jsonrpc::JsonRpcCodec;
//! use bytes::BytesMut;
//! use tokio_util::codec::{Decoder, Encoder};
//!
//! let mut server = JsonRpcCodec::new();
//! let mut input = BytesMut::from(r#"{"jsonrpc":"2.0","method":"add","params":[2,3],"id":"a"}"#);
//! input.extend_from_slice(b"\n");
//! let Some(Message::Request { id, method, payload, .. }) = server.decode(&mut input)? else {
//!     panic!("a request")
//! };
//! assert_eq!((method.as_str(), payload.decode::<(i32, i32)>()?), ("add", (2, 3)));
//!
//! let mut output = BytesMut::new();
//! server.encode(Message::Reply { id, payload: Payload::json(&5)? }, &mut output)?;
//! assert_eq!(&output[..], b"{\"jsonrpc\":\"2.0\",\"result\":5,\"id\":\"a\"}\n");
//! # Ok::<(), busline_core::Error>(())
//! ```
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![forbid(unsafe_code)]

mod calls;
mod errors;
mod framing;
mod wire;

use std::collections::VecDeque;

use busline_core::{Codec, Encoding, Error, Message, Payload, DEFAULT_MAX_FRAME_SIZE};
use bytes::BytesMut;
use serde_json::value::RawValue;
use tokio_util::codec::{Decoder, Encoder};

pub use framing::Framing;

use calls::{Calls, JsonId};
use framing::Framer;
use wire::{error_object, payload_json, Out, Reader};

/// The JSON-RPC 2.0 codec. See the [crate docs](crate).
#[derive(Debug)]
pub struct JsonRpcCodec {
    framing: Framing,
    transcode: bool,
    max_frame_size: usize,
    framer: Framer,
    calls: Calls,
    /// Messages of a batch read but not yet handed out.
    decoded: VecDeque<Message>,
}

impl JsonRpcCodec {
    /// A codec with automatic framing and the default 16 MiB limit.
    pub fn new() -> Self {
        Self::with_max_frame_size(DEFAULT_MAX_FRAME_SIZE)
    }

    /// A codec refusing JSON texts over `bytes`.
    pub fn with_max_frame_size(bytes: usize) -> Self {
        Self::build(Framing::Auto, bytes)
    }

    /// This codec with the given framing.
    pub fn framing(self, framing: Framing) -> Self {
        Self {
            framing,
            framer: Framer::new(framing, self.max_frame_size),
            ..self
        }
    }

    /// Send CBOR payloads as their JSON value instead of an escape object,
    /// for plain JSON-RPC peers that cannot read CBOR (a broker listener
    /// whose clients are not busline's). The bytes change, so a payload
    /// kept byte for byte is not; signed payloads are binary and never
    /// transcoded, and busline peers decode either form.
    pub fn transcode_cbor(mut self, on: bool) -> Self {
        self.transcode = on;
        self
    }

    fn build(framing: Framing, max_frame_size: usize) -> Self {
        JsonRpcCodec {
            framing,
            transcode: false,
            max_frame_size,
            framer: Framer::new(framing, max_frame_size),
            calls: Calls::default(),
            decoded: VecDeque::new(),
        }
    }

    /// The JSON text for `msg`; `None` while it waits for the rest of its
    /// batch.
    fn text(&mut self, msg: Message) -> Result<Option<String>, Error> {
        fn notify(method: &'static str, params: &impl serde::Serialize) -> Result<String, Error> {
            let params = serde_json::value::to_raw_value(params)
                .map_err(|e| Error::Serialization(e.to_string()))?;
            Out {
                jsonrpc: "2.0",
                method: Some(method),
                params: Some(&params),
                ..Out::default()
            }
            .to_text()
        }
        Ok(Some(match msg {
            Message::Hello { version, scheme } => notify(
                "rpc.hello",
                &serde_json::json!({"version": version, "scheme": scheme}),
            )?,
            // Payloads go in as raw JSON, never parsed and written again.
            Message::Auth { payload } => {
                let payload = payload_json(&payload, self.transcode)?;
                notify("rpc.auth", &AuthParams { payload: &payload })?
            }
            Message::Welcome { version } => {
                notify("rpc.welcome", &serde_json::json!({"version": version}))?
            }
            Message::Item { id, payload } => {
                let item = payload_json(&payload, self.transcode)?;
                let id = self.calls.json_id(id);
                notify("rpc.item", &ItemParams { id, item: &item })?
            }
            Message::Credit { id, credit } => notify(
                "rpc.credit",
                &serde_json::json!({"id": id, "credit": credit}),
            )?,
            Message::Cancel { id } => notify("rpc.cancel", &serde_json::json!({"id": id}))?,
            Message::Close { error: None } => Out {
                jsonrpc: "2.0",
                method: Some("rpc.close"),
                ..Out::default()
            }
            .to_text()?,
            Message::Close { error: Some(error) } => Out {
                jsonrpc: "2.0",
                error: Some(error_object(&error, None)),
                id: Some(JsonId::Raw(RawValue::NULL)),
                ..Out::default()
            }
            .to_text()?,
            Message::Request {
                id,
                method,
                payload,
                timeout_ms,
            } => self.request(id, &method, &payload, timeout_ms, None)?,
            Message::OpenStream {
                id,
                method,
                payload,
                credit,
                timeout_ms,
            } => self.request(id, &method, &payload, timeout_ms, Some(credit))?,
            Message::Notify { method, payload } => {
                let params = params(&method, &payload, self.transcode)?;
                Out {
                    jsonrpc: "2.0",
                    method: Some(&method),
                    params: params.as_deref(),
                    ..Out::default()
                }
                .to_text()?
            }
            Message::Reply { id, payload } => {
                let result = payload_json(&payload, self.transcode)?;
                return self.answer(id, &result, false);
            }
            Message::End { id } => return self.answer(id, RawValue::NULL, true),
            Message::Error { id, error } => {
                let route = self.calls.finish(id);
                let text = Out {
                    jsonrpc: "2.0",
                    error: Some(error_object(&error, route.code)),
                    id: Some(route.json_id()),
                    ..Out::default()
                }
                .to_text()?;
                return Ok(self.calls.deliver(&route, text));
            }
            Message::Rejected { .. } => {
                return Err(Error::Protocol(
                    "a rejected call is answered with an error, never sent itself".into(),
                ))
            }
        }))
    }

    fn request(
        &self,
        id: u64,
        method: &str,
        payload: &Payload,
        timeout_ms: Option<u64>,
        credit: Option<u32>,
    ) -> Result<String, Error> {
        let params = params(method, payload, self.transcode)?;
        Out {
            jsonrpc: "2.0",
            method: Some(method),
            params: params.as_deref(),
            stream: credit.map(Into::into),
            timeout_ms,
            id: Some(JsonId::Number(id)),
            ..Out::default()
        }
        .to_text()
    }

    /// A successful response to the peer's call `id` (the end of a stream
    /// if `end`).
    fn answer(&mut self, id: u64, result: &RawValue, end: bool) -> Result<Option<String>, Error> {
        let route = self.calls.finish(id);
        let text = Out {
            jsonrpc: "2.0",
            result: Some(result),
            stream: end.then(|| "end".into()),
            id: Some(route.json_id()),
            ..Out::default()
        }
        .to_text()?;
        Ok(self.calls.deliver(&route, text))
    }
}

/// The params of `rpc.auth`.
#[derive(serde::Serialize)]
struct AuthParams<'a> {
    payload: &'a RawValue,
}

/// The params of `rpc.item`.
#[derive(serde::Serialize)]
struct ItemParams<'a> {
    id: JsonId<'a>,
    item: &'a RawValue,
}

/// The `params` member for a call: absent for no arguments (a JSON null),
/// a one-element array around a single value that is not an array or an
/// object (JSON-RPC requires structured params).
fn params(
    method: &str,
    payload: &Payload,
    transcode: bool,
) -> Result<Option<Box<RawValue>>, Error> {
    if method.starts_with("rpc.") {
        return Err(Error::Protocol(format!(
            "method {method:?}: names beginning with \"rpc.\" are reserved by JSON-RPC 2.0"
        )));
    }
    if payload.encoding() == Encoding::Json && payload.bytes().as_ref() == b"null" {
        return Ok(None);
    }
    let value = payload_json(payload, transcode)?;
    if matches!(value.get().as_bytes()[0], b'[' | b'{') {
        return Ok(Some(value));
    }
    serde_json::value::to_raw_value(&(&*value,))
        .map(Some)
        .map_err(|e| Error::Serialization(e.to_string()))
}

impl Default for JsonRpcCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl Clone for JsonRpcCodec {
    /// A fresh codec with the same settings (call state is per connection).
    fn clone(&self) -> Self {
        Self::build(self.framing, self.max_frame_size).transcode_cbor(self.transcode)
    }
}

impl Encoder<Message> for JsonRpcCodec {
    type Error = Error;

    fn encode(&mut self, msg: Message, dst: &mut BytesMut) -> Result<(), Error> {
        let Some(text) = self.text(msg)? else {
            return Ok(());
        };
        if text.len() > self.max_frame_size {
            return Err(Error::FrameTooLarge {
                size: text.len(),
                limit: self.max_frame_size,
            });
        }
        self.framer.mode.write(text.as_bytes(), dst);
        Ok(())
    }
}

impl Decoder for JsonRpcCodec {
    type Item = Message;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, Error> {
        loop {
            if let Some(msg) = self.decoded.pop_front() {
                return Ok(Some(msg));
            }
            let Some(frame) = self.framer.next(src)? else {
                return Ok(None);
            };
            Reader {
                calls: &mut self.calls,
                out: &mut self.decoded,
                frame: &frame,
            }
            .frame();
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Message>, Error> {
        // A last text without its newline is an incomplete frame: the sender
        // died mid-write, and acting on part of it would be wrong.
        match self.decode(src)? {
            Some(msg) => Ok(Some(msg)),
            None if src.iter().all(u8::is_ascii_whitespace) => {
                src.clear();
                Ok(None)
            }
            None => Err(Error::Protocol(format!(
                "connection closed inside a frame ({} bytes of it received)",
                src.len()
            ))),
        }
    }
}

impl Codec for JsonRpcCodec {
    fn name(&self) -> &'static str {
        "jsonrpc"
    }

    fn payload_encoding(&self) -> Encoding {
        Encoding::Json
    }

    fn max_frame_size(&self) -> usize {
        self.max_frame_size
    }

    fn hello_optional(&self) -> bool {
        true
    }
}
