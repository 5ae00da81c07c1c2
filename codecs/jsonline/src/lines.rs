//! Splitting a byte stream into lines, as both JSON-line codecs read it.

use busline_core::Error;
use bytes::{Bytes, BytesMut};
use tokio_util::codec::{AnyDelimiterCodec, AnyDelimiterCodecError, Decoder};

/// Lines of at most a limit of bytes: blank ones skipped, a `\r` before
/// the newline taken off. Its state is per connection.
#[derive(Debug)]
pub(crate) struct Lines {
    max: usize,
    split: AnyDelimiterCodec,
}

impl Lines {
    /// Lines of at most `max` bytes (not counting the newline).
    pub(crate) fn new(max: usize) -> Self {
        Lines {
            max,
            split: AnyDelimiterCodec::new_with_max_length(b"\n".to_vec(), b"\n".to_vec(), max),
        }
    }

    /// The longest line taken.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// The next line that is not blank, without its line ending, once it
    /// is whole.
    pub(crate) fn next(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, Error> {
        loop {
            let line = self.split.decode(src).map_err(|e| match e {
                AnyDelimiterCodecError::MaxChunkLengthExceeded => Error::FrameTooLarge {
                    size: self.max + 1,
                    limit: self.max,
                },
                AnyDelimiterCodecError::Io(e) => Error::transport(e),
            })?;
            let Some(line) = line else {
                return Ok(None);
            };
            let trimmed = line.strip_suffix(b"\r").unwrap_or(&line);
            if !trimmed.iter().all(|b| b.is_ascii_whitespace()) {
                return Ok(Some(line.slice_ref(trimmed)));
            }
        }
    }
}

/// At end of stream, what is left after the last whole line: nothing but
/// whitespace is fine (and cleared); anything else is a line cut short.
pub(crate) fn end_of_stream(src: &mut BytesMut) -> Result<(), Error> {
    if src.iter().all(|b| b.is_ascii_whitespace()) {
        src.clear();
        return Ok(());
    }
    Err(Error::Protocol(format!(
        "connection closed inside a line ({} bytes without a newline)",
        src.len()
    )))
}
