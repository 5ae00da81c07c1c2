//! Where one JSON text ends: a newline, or a `Content-Length:` header.

use busline_core::Error;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{AnyDelimiterCodec, AnyDelimiterCodecError, Decoder};

/// How JSON texts are delimited on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Framing {
    /// Decide from the first bytes received: `Content-Length` headers if
    /// they start with a `C`, otherwise lines. Until then (a client speaking
    /// first), write lines. The default; servers accept both this way.
    #[default]
    Auto,
    /// One JSON text per line (raw TCP and Unix sockets, `nc`, `socat`).
    Lines,
    /// `Content-Length: N` and a blank line before each text (LSP style).
    ContentLength,
}

/// Longest header block accepted before its blank line.
const MAX_HEADER: usize = 4096;
const HEADER_END: &[u8] = b"\r\n\r\n";

impl Framing {
    /// Settle [`Framing::Auto`] from the first byte that is not whitespace;
    /// `None` while there is none yet.
    pub(crate) fn detect(self, src: &[u8]) -> Option<Framing> {
        match self {
            Framing::Auto => src
                .iter()
                .find(|b| !b.is_ascii_whitespace())
                .map(|b| match b {
                    b'C' | b'c' => Framing::ContentLength,
                    _ => Framing::Lines,
                }),
            settled => Some(settled),
        }
    }

    /// Append `body` as one frame.
    pub(crate) fn write(self, body: &[u8], dst: &mut BytesMut) {
        match self {
            Framing::Auto | Framing::Lines => {
                dst.reserve(body.len() + 1);
                dst.put_slice(body);
                dst.put_u8(b'\n');
            }
            Framing::ContentLength => {
                dst.put_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
                dst.put_slice(body);
            }
        }
    }
}

fn too_large(size: usize, limit: usize) -> Error {
    Error::FrameTooLarge { size, limit }
}

/// Splits one connection's input into JSON texts.
#[derive(Debug)]
pub(crate) struct Framer {
    pub(crate) mode: Framing,
    limit: usize,
    /// Remembers how far it searched, so a long line arriving in pieces is
    /// scanned once.
    lines: AnyDelimiterCodec,
}

impl Framer {
    pub(crate) fn new(mode: Framing, limit: usize) -> Self {
        Framer {
            mode,
            limit,
            lines: AnyDelimiterCodec::new_with_max_length(b"\n".to_vec(), Vec::new(), limit),
        }
    }

    /// Take the next whole JSON text out of `src`, if one is there. Blank
    /// lines between texts are skipped.
    pub(crate) fn next(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, Error> {
        if let Some(mode) = self.mode.detect(src) {
            self.mode = mode;
        }
        match self.mode {
            Framing::Auto => Ok(None),
            Framing::Lines => self.next_line(src),
            Framing::ContentLength => next_counted(src, self.limit),
        }
    }

    fn next_line(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, Error> {
        loop {
            let line = match self.lines.decode(src) {
                Ok(Some(line)) => line,
                Ok(None) => return Ok(None),
                Err(AnyDelimiterCodecError::MaxChunkLengthExceeded) => {
                    return Err(too_large(self.limit + 1, self.limit))
                }
                Err(AnyDelimiterCodecError::Io(e)) => return Err(Error::transport(e)),
            };
            let text = line.strip_suffix(b"\r").unwrap_or(&line);
            if !text.iter().all(u8::is_ascii_whitespace) {
                return Ok(Some(line.slice_ref(text)));
            }
        }
    }
}

fn next_counted(src: &mut BytesMut, limit: usize) -> Result<Option<Bytes>, Error> {
    // Whitespace between frames is tolerated, as between lines.
    let lead = src.iter().take_while(|b| b.is_ascii_whitespace()).count();
    src.advance(lead);
    let Some(end) = src.windows(HEADER_END.len()).position(|w| w == HEADER_END) else {
        if src.len() > MAX_HEADER {
            return Err(Error::Protocol(format!(
                "no end of headers within {MAX_HEADER} bytes"
            )));
        }
        return Ok(None);
    };
    let headers = std::str::from_utf8(&src[..end])
        .map_err(|_| Error::Protocol("frame headers are not UTF-8".into()))?;
    let mut length = None;
    for header in headers.split("\r\n") {
        let (name, value) = header
            .split_once(':')
            .ok_or_else(|| Error::Protocol(format!("malformed header line {header:?}")))?;
        if name.trim().eq_ignore_ascii_case("content-length") {
            let n = value.trim().parse::<usize>().map_err(|_| {
                Error::Protocol(format!("Content-Length {:?} is not a number", value.trim()))
            })?;
            length = Some(n);
        }
    }
    let length =
        length.ok_or_else(|| Error::Protocol("a frame without a Content-Length header".into()))?;
    if length > limit {
        return Err(too_large(length, limit));
    }
    let total = end + HEADER_END.len() + length;
    if src.len() < total {
        // Within the limit, so reserving the rest is bounded.
        src.reserve(total - src.len());
        return Ok(None);
    }
    src.advance(end + HEADER_END.len());
    Ok(Some(src.split_to(length).freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_detects_from_the_first_visible_byte() {
        assert_eq!(Framing::Auto.detect(b"  \n"), None);
        assert_eq!(Framing::Auto.detect(b" {"), Some(Framing::Lines));
        assert_eq!(Framing::Auto.detect(b"["), Some(Framing::Lines));
        assert_eq!(
            Framing::Auto.detect(b"Content-Length: 2"),
            Some(Framing::ContentLength)
        );
        assert_eq!(Framing::Lines.detect(b"C"), Some(Framing::Lines));
    }

    #[test]
    fn counted_frames_wait_for_their_body_and_check_headers() {
        let mut src = BytesMut::from(&b"Content-Length: 7\r\nContent-Type: x\r\n\r\n{\"a\":"[..]);
        assert_eq!(next_counted(&mut src, 100).unwrap(), None);
        src.extend_from_slice(b"1}\n");
        assert_eq!(
            &next_counted(&mut src, 100).unwrap().unwrap()[..],
            b"{\"a\":1}"
        );
        assert_eq!(&src[..], b"\n");

        let mut big = BytesMut::from(&b"Content-Length: 101\r\n\r\n"[..]);
        assert!(matches!(
            next_counted(&mut big, 100),
            Err(Error::FrameTooLarge { size: 101, .. })
        ));
        for bad in [
            &b"Content-Length: x\r\n\r\n"[..],
            b"Nope\r\n\r\n",
            b"A: b\r\n\r\n",
        ] {
            assert!(matches!(
                next_counted(&mut BytesMut::from(bad), 100),
                Err(Error::Protocol(_))
            ));
        }
        let endless = BytesMut::from(&[b'x'; MAX_HEADER + 1][..]);
        assert!(next_counted(&mut endless.clone(), 100).is_err());
    }

    #[test]
    fn lines_skip_blanks_and_refuse_overlong_ones_early() {
        let mut framer = Framer::new(Framing::Lines, 100);
        let mut src = BytesMut::from(&b"\r\n  \n{}\r\n[]"[..]);
        assert_eq!(&framer.next(&mut src).unwrap().unwrap()[..], b"{}");
        assert_eq!(framer.next(&mut src).unwrap(), None);
        let mut long = BytesMut::from(&[b'x'; 101][..]);
        assert!(matches!(
            Framer::new(Framing::Auto, 100).next(&mut long),
            Err(Error::FrameTooLarge { .. })
        ));
    }
}
