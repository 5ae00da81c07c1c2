//! Plain JSON lines, as codechu-ipc and countless small daemons speak them:
//! each line is one request, handed whole to a handler; each answer is one
//! line, in the order the requests came.

use std::collections::BTreeMap;

use busline_core::{
    short_type_name, Codec, Encoding, Error, ErrorCode, Message, Payload, RemoteError,
    DEFAULT_MAX_FRAME_SIZE,
};
use bytes::{BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::lines::{self, Lines};

/// The method every line is called as unless [`PlainJsonLineCodec::method`]
/// names another.
pub const DEFAULT_METHOD: &str = "request";

/// Serving clients that send bare JSON objects, one per line, with no
/// envelope: codechu-ipc's `UnixClient`, `socat`, a shell script.
///
/// - Every line is a call of one method (by default [`DEFAULT_METHOD`]) with
///   the line's JSON as its arguments. A line that is not JSON is answered
///   `{"error":"…","type":"Serialization"}` and the connection carries on.
/// - A handler's result is written back as one line; a result of `null`
///   writes nothing, which is how a handler treats a line as a notification.
/// - A failure is written as `{"error": message, "type": name}`, the name
///   being the handler's error type (its last path segment) or busline's
///   error category (`MethodNotFound`, `Timeout`, …), as codechu-ipc writes
///   the Python exception's class name.
/// - Answers leave in the order the lines came, whatever order the handlers
///   finish in, since the lines carry no ids to match them by. A client
///   that keeps sending while an early line is slow is disconnected once
///   [`MAX_HELD`] answers (or [`MAX_HELD_BYTES`]) wait behind it.
/// - A last line without its newline is taken if it is whole JSON (`printf`
///   and `socat` leave it off).
/// - No heartbeat: plain clients cannot answer busline's probes, so a
///   server with [`heartbeat`](https://docs.rs/busline) set drops them.
/// - Calls already read run to the end when the client closes its side:
///   codechu-ipc's `notify` writes one line and hangs up.
///
/// The codec serves (and sends one-way messages, as a
/// [`FifoChannel`](https://docs.rs/busline-fifo)'s framing); it cannot call,
/// since its lines carry no ids. It speaks no busline handshake, so it is
/// for listeners without an authenticator: rely on the socket's file mode
/// and peer credentials instead. Since the lines carry no message types it
/// is outside the codec conformance suite, which round-trips them.
///
/// ```
/// use busline_core::{Message, Payload};
/// use busline_jsonline::PlainJsonLineCodec;
/// use bytes::BytesMut;
/// use tokio_util::codec::{Decoder, Encoder};
///
/// let mut codec = PlainJsonLineCodec::new().method("control");
/// let mut wire = BytesMut::from(&b"{\"cmd\":\"status\"}\n"[..]);
/// let Some(Message::Request { id, method, payload, .. }) = codec.decode(&mut wire)? else {
///     unreachable!()
/// };
/// assert_eq!((id, method.as_str()), (1, "control"));
/// assert_eq!(&payload.bytes()[..], b"{\"cmd\":\"status\"}");
///
/// codec.encode(Message::Reply { id, payload: Payload::json(&"ok")? }, &mut wire)?;
/// assert_eq!(&wire[..], b"\"ok\"\n");
/// # Ok::<(), busline_core::Error>(())
/// ```
#[derive(Debug)]
pub struct PlainJsonLineCodec {
    method: String,
    lines: Lines,
    /// Id of the next line read; ids count up from 1.
    next_in: u64,
    /// Id of the next answer to write.
    next_out: u64,
    /// Answers that finished before an earlier line's: id → the line to
    /// write (empty for none), and their bytes.
    held: BTreeMap<u64, Vec<u8>>,
    held_bytes: usize,
}

/// Answers held behind a slower earlier line past which the client is
/// disconnected.
pub const MAX_HELD: usize = 4096;

/// Bytes of answers held behind a slower earlier line past which the
/// client is disconnected.
pub const MAX_HELD_BYTES: usize = 64 << 20;

impl PlainJsonLineCodec {
    /// A codec with the default 16 MiB line limit, calling
    /// [`DEFAULT_METHOD`].
    pub fn new() -> Self {
        Self::with_max_frame_size(DEFAULT_MAX_FRAME_SIZE)
    }

    /// A codec refusing lines over `bytes` (not counting the newline).
    pub fn with_max_frame_size(bytes: usize) -> Self {
        PlainJsonLineCodec {
            method: DEFAULT_METHOD.to_owned(),
            lines: Lines::new(bytes),
            next_in: 1,
            next_out: 1,
            held: BTreeMap::new(),
            held_bytes: 0,
        }
    }

    /// Call this method with each line instead of [`DEFAULT_METHOD`].
    pub fn method(mut self, method: impl Into<String>) -> Self {
        self.method = method.into();
        self
    }

    /// The method each line is called as.
    pub fn method_name(&self) -> &str {
        &self.method
    }

    fn decode_line(&mut self, src: &mut BytesMut) -> Result<Option<Message>, Error> {
        let Some(line) = self.lines.next(src)? else {
            return Ok(None);
        };
        if self.held.len() >= MAX_HELD || self.held_bytes >= MAX_HELD_BYTES {
            return Err(Error::Overloaded(format!(
                "{} answers ({} bytes) wait behind line {}, which is still being \
                 served; the client sends faster than that line is answered",
                self.held.len(),
                self.held_bytes,
                self.next_out
            )));
        }
        let id = self.next_in;
        self.next_in += 1;
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&line) {
            return Ok(Some(Message::Rejected {
                id,
                error: RemoteError {
                    code: ErrorCode::Serialization,
                    message: format!("line {id} is not JSON: {e}"),
                    detail: None,
                },
            }));
        }
        Ok(Some(Message::Request {
            id,
            method: self.method.clone(),
            payload: Payload::from_bytes(Encoding::Json, line),
            timeout_ms: None,
        }))
    }

    /// Write the answer to call `id` if its turn has come, else hold it.
    fn answer(&mut self, id: u64, line: Vec<u8>, dst: &mut BytesMut) -> Result<(), Error> {
        if id < self.next_out || self.held.contains_key(&id) {
            return Err(Error::Protocol(format!(
                "call {id} was answered twice; plain JSON lines carry one answer per line"
            )));
        }
        if id != self.next_out {
            self.held_bytes += line.len();
            self.held.insert(id, line);
            return Ok(());
        }
        dst.extend_from_slice(&line);
        self.next_out += 1;
        while let Some(line) = self.held.remove(&self.next_out) {
            self.held_bytes -= line.len();
            dst.extend_from_slice(&line);
            self.next_out += 1;
        }
        Ok(())
    }

    /// `payload` as one line (with its newline), or nothing for `null`.
    fn result_line(&self, payload: &Payload) -> Result<Vec<u8>, Error> {
        let bytes = payload.bytes();
        let mut line = if payload.encoding() == Encoding::Json
            && !bytes.iter().any(|&b| b == b'\n' || b == b'\r')
        {
            // JSON strings hold no raw line breaks, so none is inside a
            // value: compact JSON passes as it is.
            let trimmed = bytes.trim_ascii();
            if trimmed == b"null" {
                return Ok(Vec::new());
            }
            trimmed.to_vec()
        } else {
            let value: serde_json::Value = payload.decode()?;
            if value.is_null() {
                return Ok(Vec::new());
            }
            serde_json::to_vec(&value)
                .map_err(|e| Error::Serialization(format!("JSON encode: {e}")))?
        };
        self.check_size(line.len())?;
        line.push(b'\n');
        Ok(line)
    }

    fn check_size(&self, size: usize) -> Result<(), Error> {
        if size > self.lines.max() {
            return Err(Error::FrameTooLarge {
                size,
                limit: self.lines.max(),
            });
        }
        Ok(())
    }
}

/// `{"error": message, "type": name}`, as codechu-ipc answers a failure.
fn error_line(error: &RemoteError) -> Vec<u8> {
    let kind = match (&error.code, &error.detail) {
        (ErrorCode::HandlerFailed, Some(kind)) => short_type_name(kind).to_owned(),
        (code, _) => code_name(*code),
    };
    let mut line = serde_json::json!({ "error": error.message, "type": kind }).to_string();
    line.push('\n');
    line.into_bytes()
}

/// `method_not_found` → `MethodNotFound`.
fn code_name(code: ErrorCode) -> String {
    code.as_str()
        .split('_')
        .map(|word| {
            let mut chars = word.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect()
}

impl Default for PlainJsonLineCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl Clone for PlainJsonLineCodec {
    /// A fresh codec with the same limit and method (the count of lines
    /// and answers is per connection).
    fn clone(&self) -> Self {
        Self::with_max_frame_size(self.lines.max()).method(self.method.clone())
    }
}

impl Encoder<Message> for PlainJsonLineCodec {
    type Error = Error;

    fn encode(&mut self, msg: Message, dst: &mut BytesMut) -> Result<(), Error> {
        match msg {
            Message::Reply { id, payload } => {
                let line = self.result_line(&payload)?;
                self.answer(id, line, dst)
            }
            Message::Error { id, error } => self.answer(id, error_line(&error), dst),
            // The one thing a plain client can be told as it is dropped.
            Message::Close { error: Some(error) } => {
                dst.extend_from_slice(&error_line(&error));
                Ok(())
            }
            Message::Close { error: None } => Ok(()),
            // busline's own keep-alives mean nothing to a plain client.
            Message::Notify { method, .. } if method.starts_with("busline.") => Ok(()),
            // A one-way message, as a FIFO channel sends them.
            Message::Notify { payload, .. } => {
                let line = self.result_line(&payload)?;
                dst.put_slice(&line);
                Ok(())
            }
            other => Err(Error::Protocol(format!(
                "plain JSON lines carry requests and their answers only, not a {}",
                other.kind()
            ))),
        }
    }
}

impl Decoder for PlainJsonLineCodec {
    type Item = Message;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, Error> {
        self.decode_line(src)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Message>, Error> {
        match self.decode_line(src)? {
            Some(msg) => Ok(Some(msg)),
            // A last line left without its newline, but whole.
            None if serde_json::from_slice::<serde::de::IgnoredAny>(src).is_ok() => {
                src.extend_from_slice(b"\n");
                self.decode_line(src)
            }
            // Half a line (its sender died mid-write), or nothing.
            None => lines::end_of_stream(src).map(|()| None),
        }
    }
}

impl Codec for PlainJsonLineCodec {
    fn name(&self) -> &'static str {
        "plain-jsonline"
    }

    fn payload_encoding(&self) -> Encoding {
        Encoding::Json
    }

    fn max_frame_size(&self) -> usize {
        self.lines.max()
    }

    fn hello_optional(&self) -> bool {
        true
    }

    fn calls_outlive_hangup(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn decode_all(codec: &mut PlainJsonLineCodec, bytes: &[u8]) -> Vec<Message> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(msg) = codec.decode(&mut buf).unwrap() {
            out.push(msg);
        }
        out
    }

    fn reply(id: u64, json: &str) -> Message {
        Message::Reply {
            id,
            payload: Payload::from_bytes(Encoding::Json, json.to_owned()),
        }
    }

    #[test]
    fn each_line_is_a_call_with_the_line_as_arguments() {
        let mut codec = PlainJsonLineCodec::new();
        let msgs = decode_all(&mut codec, b"{\"cmd\": \"a\"}\r\n\n  \n[1,2]\n\"x\"\n");
        let calls: Vec<_> = msgs
            .iter()
            .map(|m| match m {
                Message::Request {
                    id,
                    method,
                    payload,
                    ..
                } => (*id, method.as_str(), payload.bytes().to_vec()),
                other => panic!("not a call: {other:?}"),
            })
            .collect();
        assert_eq!(
            calls,
            [
                (1, "request", b"{\"cmd\": \"a\"}".to_vec()),
                (2, "request", b"[1,2]".to_vec()),
                (3, "request", b"\"x\"".to_vec()),
            ]
        );
    }

    #[test]
    fn a_line_that_is_not_json_is_answered_in_its_turn() {
        let mut codec = PlainJsonLineCodec::new();
        let msgs = decode_all(&mut codec, b"{\"ok\":1}\n{oops\n{\"ok\":2}\n");
        let Message::Rejected { id: 2, error } = &msgs[1] else {
            panic!("{msgs:?}")
        };
        assert!(matches!(msgs[2], Message::Request { id: 3, .. }));
        let mut out = BytesMut::new();
        codec
            .encode(
                Message::Error {
                    id: 2,
                    error: error.clone(),
                },
                &mut out,
            )
            .unwrap();
        assert!(out.is_empty(), "answered before line 1");
        codec.encode(reply(1, "1"), &mut out).unwrap();
        let text = String::from_utf8(out.to_vec()).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines[0], "1");
        let err: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(err["type"], "Serialization");
        assert!(err["error"]
            .as_str()
            .unwrap()
            .contains("line 2 is not JSON"));
    }

    #[test]
    fn answers_leave_in_line_order_and_null_writes_nothing() {
        let mut codec = PlainJsonLineCodec::new();
        let mut out = BytesMut::new();
        codec.encode(reply(3, "{\"c\":3}"), &mut out).unwrap();
        codec.encode(reply(2, "null"), &mut out).unwrap();
        assert!(out.is_empty());
        codec.encode(reply(1, " [1,\n 2] "), &mut out).unwrap();
        assert_eq!(&out[..], b"[1,2]\n{\"c\":3}\n");
        assert!(matches!(
            codec.encode(reply(2, "1"), &mut out),
            Err(Error::Protocol(_))
        ));
    }

    #[test]
    fn failures_name_the_error_type_as_codechu_does() {
        let line = |code, detail: Option<&str>| {
            let line = error_line(&RemoteError {
                code,
                message: "no".into(),
                detail: detail.map(Into::into),
            });
            serde_json::from_slice::<serde_json::Value>(&line).unwrap()["type"].clone()
        };
        assert_eq!(
            line(ErrorCode::HandlerFailed, Some("app::errors::NotReady")),
            "NotReady"
        );
        assert_eq!(
            line(ErrorCode::HandlerFailed, Some("core::result::Wrap<a::B>")),
            "Wrap"
        );
        assert_eq!(line(ErrorCode::MethodNotFound, None), "MethodNotFound");
        assert_eq!(line(ErrorCode::Timeout, Some("5")), "Timeout");
    }

    #[test]
    fn cbor_results_are_written_as_json() {
        let mut codec = PlainJsonLineCodec::new();
        let mut out = BytesMut::new();
        let payload = Payload::encode(Encoding::Cbor, &serde_json::json!({"a": [1]})).unwrap();
        codec
            .encode(Message::Reply { id: 1, payload }, &mut out)
            .unwrap();
        assert_eq!(&out[..], b"{\"a\":[1]}\n");
    }

    #[test]
    fn limits_and_foreign_messages_are_typed_errors() {
        let mut codec = PlainJsonLineCodec::with_max_frame_size(8);
        let mut buf = BytesMut::from(&b"[1,2,3,4,5,6]\n"[..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(Error::FrameTooLarge { limit: 8, .. })
        ));
        let mut out = BytesMut::new();
        assert!(matches!(
            codec.encode(reply(1, "\"a long answer\""), &mut out),
            Err(Error::FrameTooLarge { limit: 8, .. })
        ));
        let call = Message::Request {
            id: 1,
            method: "m".into(),
            payload: Payload::unit(),
            timeout_ms: None,
        };
        assert!(matches!(
            codec.encode(call, &mut out),
            Err(Error::Protocol(_))
        ));
        let mut codec = PlainJsonLineCodec::new();
        let mut half = BytesMut::from(&b"{\"a\":"[..]);
        assert_eq!(codec.decode(&mut half).unwrap(), None);
        assert!(codec.decode_eof(&mut half).is_err());
        // Whole, only without its newline: taken.
        let mut last = BytesMut::from(&b"{\"a\":1}"[..]);
        assert_eq!(codec.decode(&mut last).unwrap(), None);
        assert!(matches!(
            codec.decode_eof(&mut last),
            Ok(Some(Message::Request { .. }))
        ));
    }

    #[test]
    fn a_client_racing_ahead_of_a_slow_line_is_cut_off() {
        let mut codec = PlainJsonLineCodec::new();
        let lines = "1\n".repeat(MAX_HELD + 2);
        let mut buf = BytesMut::from(lines.as_bytes());
        let mut out = BytesMut::new();
        // Line 1 is slow; every later one is answered at once.
        for _ in 0..=MAX_HELD {
            let Some(Message::Request { id, .. }) = codec.decode(&mut buf).unwrap() else {
                panic!("a call")
            };
            if id > 1 {
                codec.encode(reply(id, "1"), &mut out).unwrap();
            }
        }
        assert!(out.is_empty());
        assert!(matches!(codec.decode(&mut buf), Err(Error::Overloaded(_))));
    }

    proptest! {
        #[test]
        fn any_bytes_decode_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut codec = PlainJsonLineCodec::with_max_frame_size(64);
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = codec.decode(&mut buf) {}
            let _ = codec.decode_eof(&mut buf);
        }
    }
}
