//! One-way messages through one named FIFO, for events between processes
//! that need no reply: any number of senders, one reader.

use std::{
    io,
    os::unix::fs::FileTypeExt,
    path::{Path, PathBuf},
};

use busline_core::{Codec, Error, Message, Payload, Result};
use serde::{de::DeserializeOwned, Serialize};
use tokio::{io::AsyncReadExt, net::unix::pipe};
use tokio_util::bytes::BytesMut;

use crate::mkfifo;

/// The largest message, framed: a pipe write up to this size (Linux's
/// `PIPE_BUF`) reaches the reader whole, never interleaved with another
/// sender's.
pub const MAX_MESSAGE: usize = 4096;

/// The method name messages are framed under.
const MESSAGE: &str = "message";

/// A named FIFO carrying one-way messages framed by a busline codec.
///
/// `send` never blocks on a FIFO nobody reads: it fails at once with a
/// `BrokenPipe` transport error, as it does when the reader goes away.
/// Each message travels in one pipe write of at most [`MAX_MESSAGE`]
/// bytes, so messages from many senders never interleave.
///
/// ```
/// use busline_cbor::CborCodec;
/// # use busline_fifo::FifoChannel;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> busline_core::Result<()> {
/// # let dir = tempfile::tempdir()?;
/// let events = FifoChannel::open(dir.path().join("events.fifo"), CborCodec::new())?;
/// assert!(events.send(&"nobody reads yet").await.is_err());
/// let mut reader = events.receiver()?;
/// events.send(&"rescan-done").await?;
/// assert_eq!(reader.recv::<String>().await?, "rescan-done");
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct FifoChannel<C> {
    path: PathBuf,
    codec: C,
}

impl<C: Codec> FifoChannel<C> {
    /// The FIFO at `path`, made with mode `0600` if missing; anything else
    /// at that path is refused.
    pub fn open(path: impl AsRef<Path>, codec: C) -> Result<Self> {
        Self::open_with_mode(path, codec, 0o600)
    }

    /// As [`FifoChannel::open`], making a missing FIFO with `mode`.
    pub fn open_with_mode(path: impl AsRef<Path>, codec: C, mode: u32) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        match std::fs::metadata(&path) {
            Ok(meta) if meta.file_type().is_fifo() => {}
            Ok(_) => {
                return Err(Error::Transport(
                    io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("{} exists and is not a FIFO", path.display()),
                    )
                    .into(),
                ))
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => mkfifo(&path, mode & 0o777)?,
            Err(err) => return Err(err.into()),
        }
        Ok(FifoChannel { path, codec })
    }

    /// Where the FIFO is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Send `value`. Waits only while a reader that is there has not made
    /// room; with no reader, fails at once.
    pub async fn send<T: Serialize + ?Sized>(&self, value: &T) -> Result<()> {
        let mut frame = BytesMut::new();
        let message = Message::Notify {
            method: MESSAGE.to_owned(),
            payload: Payload::encode(self.codec.payload_encoding(), value)?,
        };
        self.codec.clone().encode(message, &mut frame)?;
        if frame.len() > MAX_MESSAGE {
            return Err(Error::FrameTooLarge {
                size: frame.len(),
                limit: MAX_MESSAGE,
            });
        }
        let sender = pipe::OpenOptions::new()
            .open_sender(&self.path)
            .map_err(|e| self.no_reader(e))?;
        loop {
            sender.writable().await?;
            match sender.try_write(&frame) {
                // At most PIPE_BUF bytes: written whole or not at all.
                Ok(_) => return Ok(()),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                Err(err) => return Err(self.no_reader(err)),
            }
        }
    }

    /// Start reading the FIFO. It stays open while senders come and go.
    pub fn receiver(&self) -> Result<FifoReceiver<C>> {
        tokio::runtime::Handle::try_current().map_err(|_| {
            Error::Protocol("FifoChannel::receiver must be called within a tokio runtime".into())
        })?;
        let rx = pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&self.path)?;
        Ok(FifoReceiver {
            rx,
            codec: self.codec.clone(),
            buf: BytesMut::new(),
        })
    }

    fn no_reader(&self, err: io::Error) -> Error {
        let absent = err.raw_os_error() == Some(rustix::io::Errno::NXIO.raw_os_error())
            || err.kind() == io::ErrorKind::BrokenPipe;
        if !absent {
            return err.into();
        }
        Error::Transport(
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("no process is reading {}", self.path.display()),
            )
            .into(),
        )
    }
}

/// The reading end of a [`FifoChannel`].
#[derive(Debug)]
pub struct FifoReceiver<C> {
    rx: pipe::Receiver,
    codec: C,
    buf: BytesMut,
}

impl<C: Codec> FifoReceiver<C> {
    /// The next message, decoded as `T`. A malformed one is an error (if
    /// the codec cannot tell where it ends, whatever was buffered with it is
    /// dropped); messages written after it still arrive.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<T> {
        loop {
            let buffered = self.buf.len();
            let frame = match self.codec.decode(&mut self.buf) {
                Ok(frame) => frame,
                Err(err) => {
                    // A codec that could not get past the bad bytes (a
                    // bogus length) would fail on them forever: drop what
                    // is buffered, so that the next message is read.
                    if self.buf.len() == buffered {
                        self.buf.clear();
                    }
                    return Err(err);
                }
            };
            match frame {
                // A codec without one-way framing (plain JSON lines) reads
                // every message as a request: its payload is the message.
                Some(Message::Notify { payload, .. } | Message::Request { payload, .. }) => {
                    return payload.decode()
                }
                Some(Message::Rejected { error, .. }) => return Err(error.into_error()),
                Some(other) => {
                    return Err(Error::Protocol(format!(
                        "a FIFO channel carries messages, not a {}",
                        other.kind()
                    )))
                }
                None => {
                    // Opened read-write, the FIFO always has a writer: an
                    // end of file is not expected, but not looped on.
                    if self.rx.read_buf(&mut self.buf).await? == 0 {
                        return Err(Error::Disconnected("the FIFO was closed".into()));
                    }
                }
            }
        }
    }
}
