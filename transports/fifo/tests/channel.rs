//! `FifoChannel`: one-way messages through one named FIFO.
#![cfg(any(target_os = "linux", target_os = "android"))]

use std::{os::unix::fs::PermissionsExt, time::Duration};

use busline_cbor::CborCodec;
use busline_core::Error;
use busline_fifo::{FifoChannel, MAX_MESSAGE};
use busline_jsonline::JsonLineCodec;

fn is_broken_pipe(err: &Error) -> bool {
    matches!(err, Error::Transport(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
}

#[tokio::test]
async fn sending_with_no_reader_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let channel = FifoChannel::open(dir.path().join("events.fifo"), CborCodec::new()).unwrap();
    let err = tokio::time::timeout(Duration::from_secs(1), channel.send(&"hello"))
        .await
        .expect("never blocks")
        .unwrap_err();
    assert!(is_broken_pipe(&err), "{err}");
    assert!(err.to_string().contains("no process is reading"), "{err}");
    let mode = std::fs::metadata(channel.path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn messages_arrive_whole_from_many_senders_with_any_codec() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.fifo");
    let channel = FifoChannel::open(&path, JsonLineCodec::new()).unwrap();
    let mut reader = channel.receiver().unwrap();
    let mut senders = Vec::new();
    for s in 0..8u32 {
        let channel = FifoChannel::open(&path, JsonLineCodec::new()).unwrap();
        senders.push(tokio::spawn(async move {
            for i in 0..200u32 {
                // Large enough that interleaved writes would tear frames.
                channel.send(&(s, i, "x".repeat(1500))).await.unwrap();
            }
        }));
    }
    let mut last = [None::<u32>; 8];
    for _ in 0..1600 {
        let (s, i, pad): (u32, u32, String) =
            tokio::time::timeout(Duration::from_secs(10), reader.recv())
                .await
                .expect("a message comes")
                .unwrap();
        assert_eq!(pad.len(), 1500);
        assert!(
            last[s as usize] < Some(i),
            "sender {s}: {i} after {:?}",
            last[s as usize]
        );
        last[s as usize] = Some(i);
    }
    for sender in senders {
        sender.await.unwrap();
    }

    let cbor = FifoChannel::open(dir.path().join("cbor.fifo"), CborCodec::new()).unwrap();
    let mut reader = cbor.receiver().unwrap();
    cbor.send(&vec![1u8, 2, 3]).await.unwrap();
    assert_eq!(reader.recv::<Vec<u8>>().await.unwrap(), [1, 2, 3]);
}

#[tokio::test]
async fn a_reader_that_goes_away_is_noticed() {
    let dir = tempfile::tempdir().unwrap();
    let channel = FifoChannel::open(dir.path().join("events.fifo"), CborCodec::new()).unwrap();
    let mut reader = channel.receiver().unwrap();
    channel.send(&1).await.unwrap();
    assert_eq!(reader.recv::<i32>().await.unwrap(), 1);
    drop(reader);
    let err = channel.send(&2).await.unwrap_err();
    assert!(is_broken_pipe(&err), "{err}");
}

#[tokio::test]
async fn bad_input_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    // Too large to arrive whole.
    let channel = FifoChannel::open(dir.path().join("events.fifo"), CborCodec::new()).unwrap();
    let _reader = channel.receiver().unwrap();
    let err = channel.send(&"x".repeat(MAX_MESSAGE)).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::FrameTooLarge {
                limit: MAX_MESSAGE,
                ..
            }
        ),
        "{err}"
    );
    // Not a FIFO.
    let file = dir.path().join("plain");
    std::fs::write(&file, "").unwrap();
    let err = FifoChannel::open(&file, CborCodec::new()).unwrap_err();
    assert!(err.to_string().contains("not a FIFO"), "{err}");
    // Garbage written into the FIFO is an error; what follows still arrives.
    let lines = FifoChannel::open(dir.path().join("lines.fifo"), JsonLineCodec::new()).unwrap();
    let mut reader = lines.receiver().unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(lines.path())
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"not json at all\n"))
        .unwrap();
    lines.send(&"after").await.unwrap();
    let garbage = tokio::time::timeout(Duration::from_secs(5), reader.recv::<String>())
        .await
        .expect("the garbage is reported");
    assert!(garbage.is_err(), "{garbage:?}");
    let after = tokio::time::timeout(Duration::from_secs(5), reader.recv::<String>())
        .await
        .expect("then the next message comes");
    assert_eq!(after.unwrap(), "after");

    // A length-prefixed codec too: a bogus huge length does not jam it.
    let cbor = FifoChannel::open(dir.path().join("cbor.fifo"), CborCodec::new()).unwrap();
    let mut reader = cbor.receiver().unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(cbor.path())
        .and_then(|mut f| std::io::Write::write_all(&mut f, &[0xff; 4]))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let garbage = tokio::time::timeout(Duration::from_secs(5), reader.recv::<String>()).await;
    assert!(matches!(garbage, Ok(Err(_))), "{garbage:?}");
    cbor.send(&"after").await.unwrap();
    let after = tokio::time::timeout(Duration::from_secs(5), reader.recv::<String>())
        .await
        .expect("then the next message comes");
    assert_eq!(after.unwrap(), "after");
}
