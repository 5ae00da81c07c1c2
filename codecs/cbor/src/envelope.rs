//! The CBOR form of a [`Message`]: one definite-length array whose first
//! element is the message kind, then its fields by position.
//!
//! Positional arrays instead of maps keyed by field names make frames
//! smaller and decoding a straight walk with no key lookups; and because the
//! frame is already in memory, strings are read in place (minicbor's
//! borrowing decoder) and large payloads are shared with it, not copied.
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
//! Arrays and strings must have a definite length; anything else is a
//! malformed frame.

use std::convert::Infallible;

use busline_core::{Encoding, Error, ErrorCode, Message, Payload, RemoteError, Splices};
use bytes::{Bytes, BytesMut};
use minicbor::{
    data::Type,
    encode::{self as cbor_encode, Write},
    Decoder, Encoder,
};

type Encoded = Result<(), cbor_encode::Error<Infallible>>;

/// Append the CBOR form of `msg` to `dst`; with `splices`, leave large
/// payloads' bytes out of it (see [`Splices`]).
pub(crate) fn encode(
    msg: &Message,
    dst: &mut BytesMut,
    splices: Option<&mut Splices>,
) -> Result<(), Error> {
    write(msg, &mut Encoder::new(Sink { dst, splices }))
        .map_err(|e| Error::Serialization(format!("CBOR encode: {e}")))
}

fn write(msg: &Message, e: &mut Encoder<Sink<'_>>) -> Encoded {
    match msg {
        Message::Rejected { .. } => {
            return Err(cbor_encode::Error::message(
                "a rejected call is answered with an error, never sent itself",
            ))
        }
        Message::Hello { version, scheme } => {
            e.array(3)?.u8(0)?.u32(*version)?.str(scheme)?;
        }
        Message::Auth { payload } => {
            e.array(3)?.u8(1)?;
            write_payload(e, payload)?;
        }
        Message::Welcome { version } => {
            e.array(2)?.u8(2)?.u32(*version)?;
        }
        Message::Request {
            id,
            method,
            payload,
            timeout_ms,
        } => {
            e.array(6)?.u8(3)?.u64(*id)?.str(method)?;
            write_payload(e, payload)?;
            write_opt(e, *timeout_ms)?;
        }
        Message::Notify { method, payload } => {
            e.array(4)?.u8(4)?.str(method)?;
            write_payload(e, payload)?;
        }
        Message::OpenStream {
            id,
            method,
            payload,
            credit,
            timeout_ms,
        } => {
            e.array(7)?.u8(5)?.u64(*id)?.str(method)?;
            write_payload(e, payload)?;
            e.u32(*credit)?;
            write_opt(e, *timeout_ms)?;
        }
        Message::Reply { id, payload } => {
            e.array(4)?.u8(6)?.u64(*id)?;
            write_payload(e, payload)?;
        }
        Message::Error { id, error } => {
            e.array(3)?.u8(7)?.u64(*id)?;
            write_error(e, error)?;
        }
        Message::Item { id, payload } => {
            e.array(4)?.u8(8)?.u64(*id)?;
            write_payload(e, payload)?;
        }
        Message::End { id } => {
            e.array(2)?.u8(9)?.u64(*id)?;
        }
        Message::Credit { id, credit } => {
            e.array(3)?.u8(10)?.u64(*id)?.u32(*credit)?;
        }
        Message::Cancel { id } => {
            e.array(2)?.u8(11)?.u64(*id)?;
        }
        Message::Close { error } => {
            e.array(2)?.u8(12)?;
            match error {
                Some(error) => write_error(e, error)?,
                None => {
                    e.null()?;
                }
            }
        }
    }
    Ok(())
}

fn write_opt(e: &mut Encoder<Sink<'_>>, n: Option<u64>) -> Encoded {
    match n {
        Some(n) => e.u64(n)?,
        None => e.null()?,
    };
    Ok(())
}

fn write_payload(e: &mut Encoder<Sink<'_>>, p: &Payload) -> Encoded {
    let encoding = match p.encoding() {
        Encoding::Json => 0,
        Encoding::Cbor => 1,
        Encoding::Binary => 2,
    };
    e.u8(encoding)?;
    let bytes = p.bytes();
    let sink = e.writer_mut();
    match &mut sink.splices {
        Some(splices) if bytes.len() >= Splices::MIN_LEN => {
            // The byte string's head here, its contents spliced in after.
            write_bytes_head(sink.dst, bytes.len() as u64);
            splices.push(sink.dst.len(), bytes.clone());
        }
        _ => {
            e.bytes(bytes)?;
        }
    }
    Ok(())
}

/// The head of a definite-length CBOR byte string (major type 2) of `len`
/// bytes, in its shortest form as RFC 8949 §4.2.1 asks.
fn write_bytes_head(dst: &mut BytesMut, len: u64) {
    const MAJOR: u8 = 2 << 5;
    match len {
        0..=23 => dst.extend_from_slice(&[MAJOR | len as u8]),
        24..=0xff => dst.extend_from_slice(&[MAJOR | 24, len as u8]),
        0x100..=0xffff => {
            dst.extend_from_slice(&[MAJOR | 25]);
            dst.extend_from_slice(&(len as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            dst.extend_from_slice(&[MAJOR | 26]);
            dst.extend_from_slice(&(len as u32).to_be_bytes());
        }
        _ => {
            dst.extend_from_slice(&[MAJOR | 27]);
            dst.extend_from_slice(&len.to_be_bytes());
        }
    }
}

fn write_error(e: &mut Encoder<Sink<'_>>, err: &RemoteError) -> Encoded {
    e.array(if err.detail.is_some() { 3 } else { 2 })?
        .str(err.code.as_str())?
        .str(&err.message)?;
    if let Some(detail) = &err.detail {
        e.str(detail)?;
    }
    Ok(())
}

/// Lets the encoder append to a `BytesMut`, which cannot fail; and
/// where to leave large payloads out, if anywhere.
struct Sink<'a> {
    dst: &'a mut BytesMut,
    splices: Option<&'a mut Splices>,
}

impl Write for Sink<'_> {
    type Error = Infallible;

    fn write_all(&mut self, buf: &[u8]) -> Result<(), Infallible> {
        self.dst.extend_from_slice(buf);
        Ok(())
    }
}

/// Decode one whole frame (the bytes after the length prefix).
pub(crate) fn decode(frame: Bytes) -> Result<Message, Error> {
    let mut r = Reader {
        d: Decoder::new(&frame),
        frame: &frame,
    };
    let msg = r.message()?;
    let rest = frame.len() - r.d.position();
    if rest != 0 {
        return Err(Error::Protocol(format!(
            "{rest} unexpected bytes after the CBOR message in one frame"
        )));
    }
    Ok(msg)
}

fn malformed(what: impl std::fmt::Display) -> Error {
    Error::Serialization(format!("malformed CBOR frame: {what}"))
}

/// A decoder over one frame, which it slices large payloads out of.
struct Reader<'b> {
    d: Decoder<'b>,
    frame: &'b Bytes,
}

impl Reader<'_> {
    fn message(&mut self) -> Result<Message, Error> {
        let fields = match self.d.array().map_err(malformed)? {
            Some(n) if n >= 1 => n - 1,
            _ => return Err(malformed("a message is a definite-length array")),
        };
        let kind = self.d.u8().map_err(malformed)?;
        let expect = |n: u64| {
            if fields == n {
                Ok(())
            } else {
                Err(malformed(format!(
                    "message kind {kind} has {n} fields, this one has {fields}"
                )))
            }
        };
        Ok(match kind {
            0 => {
                expect(2)?;
                Message::Hello {
                    version: self.u32()?,
                    scheme: self.text()?,
                }
            }
            1 => {
                expect(2)?;
                Message::Auth {
                    payload: self.payload()?,
                }
            }
            2 => {
                expect(1)?;
                Message::Welcome {
                    version: self.u32()?,
                }
            }
            3 => {
                expect(5)?;
                Message::Request {
                    id: self.u64()?,
                    method: self.text()?,
                    payload: self.payload()?,
                    timeout_ms: self.opt_u64()?,
                }
            }
            4 => {
                expect(3)?;
                Message::Notify {
                    method: self.text()?,
                    payload: self.payload()?,
                }
            }
            5 => {
                expect(6)?;
                Message::OpenStream {
                    id: self.u64()?,
                    method: self.text()?,
                    payload: self.payload()?,
                    credit: self.u32()?,
                    timeout_ms: self.opt_u64()?,
                }
            }
            6 => {
                expect(3)?;
                Message::Reply {
                    id: self.u64()?,
                    payload: self.payload()?,
                }
            }
            7 => {
                expect(2)?;
                Message::Error {
                    id: self.u64()?,
                    error: self.error()?,
                }
            }
            8 => {
                expect(3)?;
                Message::Item {
                    id: self.u64()?,
                    payload: self.payload()?,
                }
            }
            9 => {
                expect(1)?;
                Message::End { id: self.u64()? }
            }
            10 => {
                expect(2)?;
                Message::Credit {
                    id: self.u64()?,
                    credit: self.u32()?,
                }
            }
            11 => {
                expect(1)?;
                Message::Cancel { id: self.u64()? }
            }
            12 => {
                expect(1)?;
                let error = if self.null()? {
                    None
                } else {
                    Some(self.error()?)
                };
                Message::Close { error }
            }
            _ => return Err(malformed(format!("unknown message kind {kind}"))),
        })
    }

    fn u64(&mut self) -> Result<u64, Error> {
        self.d.u64().map_err(malformed)
    }

    fn u32(&mut self) -> Result<u32, Error> {
        self.d.u32().map_err(malformed)
    }

    /// Consume a null if one comes next.
    fn null(&mut self) -> Result<bool, Error> {
        let null = self.d.datatype().map_err(malformed)? == Type::Null;
        if null {
            self.d.null().map_err(malformed)?;
        }
        Ok(null)
    }

    fn opt_u64(&mut self) -> Result<Option<u64>, Error> {
        if self.null()? {
            Ok(None)
        } else {
            self.u64().map(Some)
        }
    }

    fn text(&mut self) -> Result<String, Error> {
        self.d.str().map(str::to_owned).map_err(malformed)
    }

    fn payload(&mut self) -> Result<Payload, Error> {
        let encoding = match self.d.u8().map_err(malformed)? {
            0 => Encoding::Json,
            1 => Encoding::Cbor,
            2 => Encoding::Binary,
            n => return Err(malformed(format!("unknown payload encoding {n}"))),
        };
        let bytes = self.d.bytes().map_err(malformed)?;
        Ok(Payload::from_frame(encoding, self.frame, bytes))
    }

    fn error(&mut self) -> Result<RemoteError, Error> {
        let with_detail = match self.d.array().map_err(malformed)? {
            Some(2) => false,
            Some(3) => true,
            _ => return Err(malformed("an error is an array of 2 or 3 strings")),
        };
        Ok(RemoteError {
            code: ErrorCode::from_name(self.d.str().map_err(malformed)?),
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
        encode(msg, &mut buf, None).unwrap();
        decode(buf.freeze()).unwrap()
    }

    #[test]
    fn spliced_byte_string_heads_are_minicbors() {
        for len in [0usize, 23, 24, 255, 256, 65535, 65536] {
            let mut ours = BytesMut::new();
            write_bytes_head(&mut ours, len as u64);
            let mut theirs = BytesMut::new();
            Encoder::new(Sink {
                dst: &mut theirs,
                splices: None,
            })
            .bytes(&vec![0u8; len])
            .unwrap();
            assert_eq!(&ours[..], &theirs[..theirs.len() - len], "length {len}");
        }
        // Lengths past 4 GiB take the 8-byte form.
        let mut ours = BytesMut::new();
        write_bytes_head(&mut ours, 1 << 32);
        assert_eq!(&ours[..], &[0x5b, 0, 0, 0, 1, 0, 0, 0, 0]);
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
        assert!(
            matches!(decode(wrong), Err(Error::Serialization(m)) if m.contains("expected u64"))
        );
        // [99] : an unknown kind.
        let unknown = Bytes::from_static(&[0x81, 0x18, 99]);
        assert!(matches!(decode(unknown), Err(Error::Serialization(m)) if m.contains("kind 99")));
        // [9, 1] then a stray byte.
        let trailing = Bytes::from_static(&[0x82, 0x09, 0x01, 0x00]);
        assert!(matches!(decode(trailing), Err(Error::Protocol(_))));
        // A byte string claiming more bytes than the frame has.
        let long = Bytes::from_static(&[0x84, 0x06, 0x01, 0x02, 0x5a, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(decode(long), Err(Error::Serialization(m)) if m.contains("end of input")));
        // Text that is not UTF-8.
        let latin1 = Bytes::from_static(&[0x83, 0x00, 0x01, 0x61, 0xe9]);
        assert!(matches!(decode(latin1), Err(Error::Serialization(m)) if m.contains("utf-8")));
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
            None,
        )
        .unwrap();
        let at = buf.windows(7).position(|w| w == b"timeout").unwrap();
        buf[at..at + 7].copy_from_slice(b"futured");
        match decode(buf.freeze()).unwrap() {
            Message::Close { error: Some(e) } => assert_eq!(e.code, ErrorCode::Internal),
            other => panic!("{other:?}"),
        }
    }
}
