//! What backbone messages carry besides their payload: NATS headers, and
//! how answers are read back.

use std::time::Duration;

use async_nats::{header::HeaderMap, HeaderMap as Headers, Message, StatusCode};
use busline_core::{Encoding, Error, ErrorCode, Payload, RemoteError, Result};
use bytes::Bytes;

use crate::rpc::CallKind;

/// On a call: `unary`, `stream` or `notify`.
pub(super) const KIND: &str = "Busline-Kind";
/// On a call, answer, item or publication: the payload's encoding
/// (`json`, `cbor`, `binary`).
pub(super) const ENCODING: &str = "Busline-Encoding";
/// On a call: milliseconds left before the caller stops waiting.
pub(super) const TIMEOUT: &str = "Busline-Timeout-Ms";
/// On an answer: `ok`, `error`, `open`, `item`, `end` or `alive`.
pub(super) const REPLY: &str = "Busline-Reply";
/// On a stream's items, its end and its error: the item's number.
pub(super) const SEQ: &str = "Busline-Seq";
/// On a stream's `open` and a call's `alive`: the id its caller keeps it
/// alive, paces and cancels it by.
pub(super) const STREAM: &str = "Busline-Stream";
/// On a call's control: the number of stream items the caller takes (sent
/// every [`ALIVE`] as a keep-alive), or `cancel`.
pub(super) const CREDIT: &str = "Busline-Credit";
/// On a publication: its relayed name (origin, number, path, channel and
/// topic), or `busline.relay_lagged` for word of lost ones.
pub(super) const NAME: &str = "Busline-Name";

/// How often a side that has sent nothing else says it is still there:
/// a provider during a call or stream, a caller during a stream.
pub(super) const ALIVE: Duration = Duration::from_secs(1);
/// How long either side of a call or stream waits without a word from the
/// other before it gives up on it.
pub(super) const SILENCE: Duration = Duration::from_secs(5);
/// A ticker every [`ALIVE`], its first tick one period from now (a first
/// tick due now would wait for the timer's next millisecond).
pub(super) fn every_alive() -> tokio::time::Interval {
    tokio::time::interval_at(tokio::time::Instant::now() + ALIVE, ALIVE)
}

/// How many items a stream's provider sends ahead of its caller.
pub(super) const WINDOW: u64 = 64;

/// What came back for a call.
#[derive(Debug)]
pub(super) enum Answer {
    /// A unary call's result.
    Ok(Payload),
    /// The call failed (for a stream: before or during it).
    Error(Error),
    /// A stream began; its control id.
    Open(u64),
    /// A stream's item and its number.
    Item(u64, Payload),
    /// A stream ended after this many items.
    End(u64),
    /// The provider is still at it; the id its caller keeps the call
    /// alive (or cancels it) by.
    Alive(Option<u64>),
    /// Nobody subscribes to the call's subject: it did not run.
    NoResponders,
}

fn header<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    headers?.get(name).map(|v| v.as_str())
}

/// The number in header `name`.
fn number(headers: Option<&HeaderMap>, name: &str) -> Result<u64> {
    header(headers, name)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Error::Protocol(format!("backbone message without a numeric {name}")))
}

/// The encoding a message's header names (JSON if it names none).
pub(super) fn encoding(headers: Option<&HeaderMap>) -> Result<Encoding> {
    match header(headers, ENCODING) {
        None | Some("json") => Ok(Encoding::Json),
        Some("cbor") => Ok(Encoding::Cbor),
        Some("binary") => Ok(Encoding::Binary),
        Some(other) => Err(Error::Protocol(format!(
            "backbone message in an unknown encoding {other:?}"
        ))),
    }
}

/// The kind of call a message asks for (unary if it does not say).
pub(super) fn kind(headers: Option<&HeaderMap>) -> Result<CallKind> {
    match header(headers, KIND) {
        None | Some("unary") => Ok(CallKind::Unary),
        Some("stream") => Ok(CallKind::Stream),
        Some("notify") => Ok(CallKind::Notify),
        Some(other) => Err(Error::Protocol(format!(
            "backbone call of an unknown kind {other:?}"
        ))),
    }
}

/// How long the caller of a message waits, if it said.
pub(super) fn timeout(headers: Option<&HeaderMap>) -> Result<Option<Duration>> {
    match header(headers, TIMEOUT) {
        None => Ok(None),
        Some(_) => number(headers, TIMEOUT).map(|ms| Some(Duration::from_millis(ms))),
    }
}

/// The relayed name a publication carries.
pub(super) fn name(headers: Option<&HeaderMap>) -> Option<&str> {
    header(headers, NAME)
}

/// The credit a stream control gives; `None` to cancel.
pub(super) fn credit(headers: Option<&HeaderMap>) -> Result<Option<u64>> {
    match header(headers, CREDIT) {
        Some("cancel") => Ok(None),
        _ => number(headers, CREDIT).map(Some),
    }
}

/// Headers naming a kind of call, or of answer, and a payload's encoding.
pub(super) fn headers(pairs: &[(&str, &str)]) -> Headers {
    let mut headers = Headers::new();
    for (name, value) in pairs {
        headers.insert(*name, *value);
    }
    headers
}

/// An answer's payload: `payload`'s bytes, and headers saying what it is.
pub(super) fn answer(reply: &str, payload: &Payload) -> (Headers, Bytes) {
    let headers = headers(&[(REPLY, reply), (ENCODING, payload.encoding().as_str())]);
    (headers, payload.bytes().clone())
}

/// An error answer: headers, and the error as JSON.
pub(super) fn failure(err: &Error) -> (Headers, Bytes) {
    let body = serde_json::to_vec(&err.to_remote()).unwrap_or_default();
    (headers(&[(REPLY, "error")]), body.into())
}

/// Whether an answer only says the provider is still at it.
pub(super) fn is_alive(msg: &Message) -> bool {
    header(msg.headers.as_ref(), REPLY) == Some("alive")
}

/// Read an answer.
pub(super) fn read_answer(msg: Message) -> Result<Answer> {
    if msg.status == Some(StatusCode::NO_RESPONDERS) {
        return Ok(Answer::NoResponders);
    }
    let headers = msg.headers.as_ref();
    Ok(match header(headers, REPLY) {
        Some("ok") => Answer::Ok(Payload::from_bytes(encoding(headers)?, msg.payload)),
        Some("error") => {
            let remote: RemoteError = serde_json::from_slice(&msg.payload).unwrap_or(RemoteError {
                code: ErrorCode::Protocol,
                message: format!(
                    "an error answer that is not one: {:?}",
                    String::from_utf8_lossy(&msg.payload[..msg.payload.len().min(200)])
                ),
                detail: None,
            });
            Answer::Error(remote.into_error())
        }
        Some("open") => Answer::Open(number(headers, STREAM)?),
        Some("item") => Answer::Item(
            number(headers, SEQ)?,
            Payload::from_bytes(encoding(headers)?, msg.payload),
        ),
        Some("end") => Answer::End(number(headers, SEQ)?),
        Some("alive") => Answer::Alive(number(headers, STREAM).ok()),
        other => {
            return Err(Error::Protocol(format!(
                "backbone answer of an unknown kind {other:?}"
            )))
        }
    })
}

/// The bytes NATS counts against its `max_payload` for this message.
pub(super) fn size(headers: &Headers, payload: usize) -> usize {
    // "NATS/1.0\r\n", each "name: value\r\n", and the blank line.
    let head: usize = headers
        .iter()
        .map(|(name, values)| {
            values
                .iter()
                .map(|v| AsRef::<str>::as_ref(name).len() + v.as_str().len() + 4)
                .sum::<usize>()
        })
        .sum();
    payload + head + 12
}

/// Refuse a message NATS would refuse: larger than its `max_payload`.
pub(super) fn check_size(headers: &Headers, payload: usize, limit: usize) -> Result<()> {
    let size = size(headers, payload);
    if size > limit {
        return Err(Error::FrameTooLarge { size, limit });
    }
    Ok(())
}

/// A NATS client error, as busline's.
pub(super) fn nats_error(err: impl std::fmt::Display) -> Error {
    Error::Disconnected(format!("the NATS backbone: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(headers: Headers, payload: &'static [u8]) -> Message {
        Message {
            subject: "x".into(),
            reply: None,
            payload: Bytes::from_static(payload),
            headers: Some(headers),
            status: None,
            description: None,
            length: 0,
        }
    }

    #[test]
    fn answers_round_trip() {
        let (h, b) = answer("ok", &Payload::cbor(&7u8).unwrap());
        let Answer::Ok(p) = read_answer(message(h, b.to_vec().leak())).unwrap() else {
            panic!("not ok")
        };
        assert_eq!(p.decode::<u8>().unwrap(), 7);
        let (h, b) = failure(&Error::MethodNotFound("nope".into()));
        let Answer::Error(e) = read_answer(message(h, b.to_vec().leak())).unwrap() else {
            panic!("not an error")
        };
        assert!(matches!(e, Error::MethodNotFound(m) if m == "nope"));
        let open = headers(&[(REPLY, "open"), (STREAM, "9")]);
        assert!(matches!(
            read_answer(message(open, b"")),
            Ok(Answer::Open(9))
        ));
    }

    #[test]
    fn malformed_answers_are_typed_errors() {
        for pairs in [
            vec![(REPLY, "what")],
            vec![(REPLY, "item")],
            vec![(REPLY, "item"), (SEQ, "x")],
            vec![(REPLY, "ok"), (ENCODING, "yaml")],
        ] {
            let got = read_answer(message(headers(&pairs), b"1"));
            assert!(matches!(got, Err(Error::Protocol(_))), "{pairs:?}: {got:?}");
        }
        let garbled = read_answer(message(headers(&[(REPLY, "error")]), b"{")).unwrap();
        assert!(matches!(garbled, Answer::Error(Error::Protocol(_))));
        assert!(kind(Some(&headers(&[(KIND, "maybe")]))).is_err());
        assert!(timeout(Some(&headers(&[(TIMEOUT, "-1")]))).is_err());
        assert!(credit(Some(&headers(&[]))).is_err());
        assert_eq!(credit(Some(&headers(&[(CREDIT, "cancel")]))).unwrap(), None);
    }

    #[test]
    fn sizes_count_the_headers() {
        let h = headers(&[(REPLY, "ok")]);
        assert_eq!(size(&h, 10), 10 + "Busline-Reply".len() + 2 + 4 + 12);
        assert!(check_size(&h, 10, 1000).is_ok());
        assert!(matches!(
            check_size(&h, 1000, 1000),
            Err(Error::FrameTooLarge { limit: 1000, .. })
        ));
    }
}
