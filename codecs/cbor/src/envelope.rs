//! The CBOR form of a [`Message`]: one definite-length array whose first
//! element is the message kind, then its fields by position.
//!
//! Positional arrays instead of maps keyed by field names make frames
//! smaller and decoding a straight walk with no key lookups; and because the
//! frame is already in memory, large payload byte strings are sliced out of
//! it instead of copied.
//!
//! | kind | message       | fields after the kind                               |
//! |------|---------------|-----------------------------------------------------|
//! | 0    | `hello`       | version, scheme                                     |
//! | 1    | `auth`        | payload                                             |
//! | 2    | `welcome`     | version                                             |
//! | 3    | `request`     | id, method, payload, timeout_ms or null             |
//! | 4    | `notify`      | method, payload                                     |
//! | 5    | `open_stream` | id, method, payload, credit, timeout_ms or null     |
//! | 6    | `reply`       | id, payload                                         |
//! | 7    | `error`       | id, error                                           |
//! | 8    | `item`        | id, payload                                         |
//! | 9    | `end`         | id                                                  |
//! | 10   | `credit`      | id, credit                                          |
//! | 11   | `cancel`      | id                                                  |
//! | 12   | `close`       | error or null                                       |
//!
//! A payload is two elements: its encoding (0 JSON, 1 CBOR, 2 binary) and a
//! byte string. An error is an array `[code, message]` or
//! `[code, message, detail]` of text, `code` being [`ErrorCode::as_str`].
//! Strings must have a definite length; anything else is a malformed frame.

use busline_core::{Encoding, Error, ErrorCode, Message, Payload, RemoteError};
use bytes::{BufMut, Bytes, BytesMut};
use ciborium_ll::{simple, Decoder, Encoder, Header};

/// Append the CBOR form of `msg` to `dst`.
pub(crate) fn encode(msg: &Message, dst: &mut BytesMut) {
    let mut out = Out(Encoder::from(dst.writer()));
    match msg {
        Message::Hello { version, scheme } => {
            out.start(0, 2);
            out.uint(u64::from(*version));
            out.text(scheme);
        }
        Message::Auth { payload } => {
            out.start(1, 2);
            out.payload(payload);
        }
        Message::Welcome { version } => {
            out.start(2, 1);
            out.uint(u64::from(*version));
        }
        Message::Request {
            id,
            method,
            payload,
            timeout_ms,
        } => {
            out.start(3, 5);
            out.uint(*id);
            out.text(method);
            out.payload(payload);
            out.opt_uint(*timeout_ms);
        }
        Message::Notify { method, payload } => {
            out.start(4, 3);
            out.text(method);
            out.payload(payload);
        }
        Message::OpenStream {
            id,
            method,
            payload,
            credit,
            timeout_ms,
        } => {
            out.start(5, 6);
            out.uint(*id);
            out.text(method);
            out.payload(payload);
            out.uint(u64::from(*credit));
            out.opt_uint(*timeout_ms);
        }
        Message::Reply { id, payload } => {
            out.start(6, 3);
            out.uint(*id);
            out.payload(payload);
        }
        Message::Error { id, error } => {
            out.start(7, 2);
            out.uint(*id);
            out.error(error);
        }
        Message::Item { id, payload } => {
            out.start(8, 3);
            out.uint(*id);
            out.payload(payload);
        }
        Message::End { id } => {
            out.start(9, 1);
            out.uint(*id);
        }
        Message::Credit { id, credit } => {
            out.start(10, 2);
            out.uint(*id);
            out.uint(u64::from(*credit));
        }
        Message::Cancel { id } => {
            out.start(11, 1);
            out.uint(*id);
        }
        Message::Close { error } => {
            out.start(12, 1);
            match error {
                Some(error) => out.error(error),
                None => out.null(),
            }
        }
    }
}

/// Writes CBOR items into a `BytesMut`, which cannot fail.
struct Out<'a>(Encoder<bytes::buf::Writer<&'a mut BytesMut>>);

impl Out<'_> {
    fn push(&mut self, header: Header) {
        // Writing to a BytesMut only fails on allocation failure, which aborts.
        self.0.push(header).expect("writing to memory");
    }

    fn start(&mut self, kind: u64, fields: usize) {
        self.push(Header::Array(Some(fields + 1)));
        self.uint(kind);
    }

    fn uint(&mut self, n: u64) {
        self.push(Header::Positive(n));
    }

    fn opt_uint(&mut self, n: Option<u64>) {
        match n {
            Some(n) => self.uint(n),
            None => self.null(),
        }
    }

    fn null(&mut self) {
        self.push(Header::Simple(simple::NULL));
    }

    fn text(&mut self, s: &str) {
        self.0.text(s, None).expect("writing to memory");
    }

    fn payload(&mut self, p: &Payload) {
        self.uint(match p.encoding() {
            Encoding::Json => 0,
            Encoding::Cbor => 1,
            Encoding::Binary => 2,
        });
        self.0.bytes(p.bytes(), None).expect("writing to memory");
    }

    fn error(&mut self, e: &RemoteError) {
        self.push(Header::Array(Some(if e.detail.is_some() { 3 } else { 2 })));
        self.text(e.code.as_str());
        self.text(&e.message);
        if let Some(detail) = &e.detail {
            self.text(detail);
        }
    }
}

/// Decode one whole frame (the bytes after the length prefix).
pub(crate) fn decode(frame: Bytes) -> Result<Message, Error> {
    let mut r = Reader { frame, pos: 0 };
    let fields = match r.header()? {
        Header::Array(Some(n)) if n >= 1 => n - 1,
        other => {
            return Err(malformed(format!(
                "expected a message array, found {other:?}"
            )))
        }
    };
    let kind = r.uint()?;
    let expect = |n: usize| {
        if fields == n {
            Ok(())
        } else {
            Err(malformed(format!(
                "message kind {kind} has {n} fields, this one has {fields}"
            )))
        }
    };
    let msg = match kind {
        0 => {
            expect(2)?;
            Message::Hello {
                version: r.u32()?,
                scheme: r.text()?,
            }
        }
        1 => {
            expect(2)?;
            Message::Auth {
                payload: r.payload()?,
            }
        }
        2 => {
            expect(1)?;
            Message::Welcome { version: r.u32()? }
        }
        3 => {
            expect(5)?;
            Message::Request {
                id: r.uint()?,
                method: r.text()?,
                payload: r.payload()?,
                timeout_ms: r.opt_uint()?,
            }
        }
        4 => {
            expect(3)?;
            Message::Notify {
                method: r.text()?,
                payload: r.payload()?,
            }
        }
        5 => {
            expect(6)?;
            Message::OpenStream {
                id: r.uint()?,
                method: r.text()?,
                payload: r.payload()?,
                credit: r.u32()?,
                timeout_ms: r.opt_uint()?,
            }
        }
        6 => {
            expect(3)?;
            Message::Reply {
                id: r.uint()?,
                payload: r.payload()?,
            }
        }
        7 => {
            expect(2)?;
            Message::Error {
                id: r.uint()?,
                error: r.error()?,
            }
        }
        8 => {
            expect(3)?;
            Message::Item {
                id: r.uint()?,
                payload: r.payload()?,
            }
        }
        9 => {
            expect(1)?;
            Message::End { id: r.uint()? }
        }
        10 => {
            expect(2)?;
            Message::Credit {
                id: r.uint()?,
                credit: r.u32()?,
            }
        }
        11 => {
            expect(1)?;
            Message::Cancel { id: r.uint()? }
        }
        12 => {
            expect(1)?;
            let error = if r.null()? { None } else { Some(r.error()?) };
            Message::Close { error }
        }
        _ => return Err(malformed(format!("unknown message kind {kind}"))),
    };
    let rest = r.frame.len() - r.pos;
    if rest != 0 {
        return Err(Error::Protocol(format!(
            "{rest} unexpected bytes after the CBOR message in one frame"
        )));
    }
    Ok(msg)
}

fn malformed(what: String) -> Error {
    Error::Serialization(format!("malformed CBOR frame: {what}"))
}

/// A cursor over one frame. Each header is parsed by a fresh ciborium
/// decoder on the remaining bytes, so that string contents can be taken
/// straight from the frame.
struct Reader {
    frame: Bytes,
    pos: usize,
}

impl Reader {
    fn header(&mut self) -> Result<Header, Error> {
        let mut dec = Decoder::from(&self.frame[self.pos..]);
        let header = dec.pull().map_err(|e| match e {
            ciborium_ll::Error::Io(_) => malformed("frame ends inside an item".into()),
            ciborium_ll::Error::Syntax(at) => {
                malformed(format!("invalid item at byte {}", self.pos + at))
            }
        })?;
        self.pos += dec.offset();
        Ok(header)
    }

    /// Peek for a null, consuming it if present.
    fn null(&mut self) -> Result<bool, Error> {
        let at = self.pos;
        if self.header()? == Header::Simple(simple::NULL) {
            Ok(true)
        } else {
            self.pos = at;
            Ok(false)
        }
    }

    fn uint(&mut self) -> Result<u64, Error> {
        match self.header()? {
            Header::Positive(n) => Ok(n),
            other => Err(malformed(format!(
                "expected an unsigned integer, found {other:?}"
            ))),
        }
    }

    fn u32(&mut self) -> Result<u32, Error> {
        let n = self.uint()?;
        u32::try_from(n).map_err(|_| malformed(format!("{n} does not fit in 32 bits")))
    }

    fn opt_uint(&mut self) -> Result<Option<u64>, Error> {
        if self.null()? {
            Ok(None)
        } else {
            self.uint().map(Some)
        }
    }

    /// The contents of a `len`-byte string that starts here.
    fn take(&mut self, len: usize) -> Result<&[u8], Error> {
        let start = self.pos;
        let part = start
            .checked_add(len)
            .and_then(|end| self.frame.get(start..end))
            .ok_or_else(|| malformed(format!("a {len}-byte string runs past the frame")))?;
        self.pos += len;
        Ok(part)
    }

    fn text(&mut self) -> Result<String, Error> {
        match self.header()? {
            Header::Text(Some(len)) => std::str::from_utf8(self.take(len)?)
                .map(str::to_owned)
                .map_err(|e| malformed(format!("text is not UTF-8: {e}"))),
            other => Err(malformed(format!(
                "expected a definite-length text string, found {other:?}"
            ))),
        }
    }

    fn payload(&mut self) -> Result<Payload, Error> {
        let encoding = match self.uint()? {
            0 => Encoding::Json,
            1 => Encoding::Cbor,
            2 => Encoding::Binary,
            n => return Err(malformed(format!("unknown payload encoding {n}"))),
        };
        match self.header()? {
            Header::Bytes(Some(len)) => {
                let frame = self.frame.clone();
                Ok(Payload::from_frame(encoding, &frame, self.take(len)?))
            }
            other => Err(malformed(format!(
                "expected a definite-length byte string, found {other:?}"
            ))),
        }
    }

    fn error(&mut self) -> Result<RemoteError, Error> {
        let with_detail = match self.header()? {
            Header::Array(Some(2)) => false,
            Header::Array(Some(3)) => true,
            other => {
                return Err(malformed(format!(
                    "expected an error array of 2 or 3 items, found {other:?}"
                )))
            }
        };
        Ok(RemoteError {
            code: ErrorCode::from_name(&self.text()?),
            message: self.text()?,
            detail: if with_detail {
                Some(self.text()?)
            } else {
                None
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(msg: &Message) -> Message {
        let mut buf = BytesMut::new();
        encode(msg, &mut buf);
        decode(buf.freeze()).unwrap()
    }

    #[test]
    fn payloads_of_every_size_round_trip() {
        for len in [0, 10, 1023, 1024, 100_000] {
            let msg = Message::Item {
                id: u64::MAX,
                payload: Payload::from_bytes(Encoding::Binary, vec![3u8; len]),
            };
            assert_eq!(round_trip(&msg), msg);
        }
    }

    #[test]
    fn field_count_and_types_are_checked() {
        // [6, 1] : a reply without its payload.
        let short = Bytes::from_static(&[0x82, 0x06, 0x01]);
        assert!(matches!(decode(short), Err(Error::Serialization(m)) if m.contains("fields")));
        // [9, "x"] : an end whose id is text.
        let wrong = Bytes::from_static(&[0x82, 0x09, 0x61, b'x']);
        assert!(matches!(decode(wrong), Err(Error::Serialization(m)) if m.contains("unsigned")));
        // [99] : an unknown kind.
        let unknown = Bytes::from_static(&[0x81, 0x18, 99]);
        assert!(matches!(decode(unknown), Err(Error::Serialization(m)) if m.contains("kind 99")));
        // [9, 1] then a stray byte.
        let trailing = Bytes::from_static(&[0x82, 0x09, 0x01, 0x00]);
        assert!(matches!(decode(trailing), Err(Error::Protocol(_))));
        // A byte string claiming more bytes than the frame has.
        let long = Bytes::from_static(&[0x84, 0x06, 0x01, 0x02, 0x5a, 0xff, 0xff, 0xff, 0xff]);
        assert!(
            matches!(decode(long), Err(Error::Serialization(m)) if m.contains("past the frame"))
        );
        // Text that is not UTF-8.
        let latin1 = Bytes::from_static(&[0x83, 0x00, 0x01, 0x61, 0xe9]);
        assert!(matches!(decode(latin1), Err(Error::Serialization(m)) if m.contains("UTF-8")));
    }

    #[test]
    fn unknown_error_codes_decode_as_internal() {
        let mut buf = BytesMut::new();
        encode(
            &Message::Close {
                error: Some(RemoteError {
                    code: ErrorCode::Timeout,
                    message: "m".into(),
                    detail: None,
                }),
            },
            &mut buf,
        );
        let at = buf.windows(7).position(|w| w == b"timeout").unwrap();
        buf[at..at + 7].copy_from_slice(b"futured");
        match decode(buf.freeze()).unwrap() {
            Message::Close { error: Some(e) } => assert_eq!(e.code, ErrorCode::Internal),
            other => panic!("{other:?}"),
        }
    }
}
