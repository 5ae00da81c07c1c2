//! What the FIFO transport promises beyond the shared suite: private
//! files, a clear error without a server, and an `accept` FIFO that
//! garbage cannot jam.
#![cfg(any(target_os = "linux", target_os = "android"))]

use std::{io::Write, os::unix::fs::PermissionsExt, time::Duration};

use busline_core::{Address, Error, Listener, Transport};
use busline_fifo::FifoTransport;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn files_are_private_and_nothing_else_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let rendezvous = dir.path().join("app");
    let addr = Address::fifo(&rendezvous);
    let listener = FifoTransport::new().bind(&addr).await.unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&rendezvous), 0o700);
    assert_eq!(mode(&rendezvous.join("accept")), 0o600);
    drop(listener);
    assert!(!rendezvous.exists(), "the directory it made is gone");

    let shared = FifoTransport::new().mode(0o660).bind(&addr).await.unwrap();
    assert_eq!(mode(&rendezvous.join("accept")), 0o660);
    drop(shared);
}

#[tokio::test]
async fn no_server_is_a_prompt_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let addr = Address::fifo(dir.path().join("nobody"));
    let err = tokio::time::timeout(Duration::from_secs(2), FifoTransport::new().connect(&addr))
        .await
        .expect("no hang")
        .unwrap_err();
    assert!(matches!(err, Error::Transport(_)), "{err}");
    assert!(err.to_string().contains("no server is listening"), "{err}");
    // A crashed server's `accept` FIFO, with nobody reading it: the same.
    std::fs::create_dir(dir.path().join("crashed")).unwrap();
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        dir.path().join("crashed/accept"),
        rustix::fs::Mode::from_raw_mode(0o600),
    )
    .unwrap();
    let err = FifoTransport::new()
        .connect(&Address::fifo(dir.path().join("crashed")))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no server is listening"), "{err}");
    // And no client FIFOs are left behind.
    let left: Vec<_> = std::fs::read_dir(dir.path().join("crashed"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["accept"]);
}

#[tokio::test]
async fn garbage_announcements_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let rendezvous = dir.path().join("app");
    let addr = Address::fifo(&rendezvous);
    let transport = FifoTransport::new();
    let mut listener = transport.bind(&addr).await.unwrap();
    {
        let mut accept = std::fs::OpenOptions::new()
            .write(true)
            .open(rendezvous.join("accept"))
            .unwrap();
        accept.write_all(b"../../etc/passwd\n").unwrap();
        accept.write_all(&[b'x'; 5000]).unwrap();
        accept.write_all(b"\nffffffffffffffff\n\xff\xfe\n").unwrap();
    }
    let (client, accepted) = tokio::join!(transport.connect(&addr), listener.accept());
    let (mut client, (mut server, _)) = (client.unwrap(), accepted.unwrap());
    client.write_all(b"still works").await.unwrap();
    let mut buf = [0; 11];
    server.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"still works");
}

#[tokio::test]
async fn writing_to_a_server_that_went_away_fails() {
    let dir = tempfile::tempdir().unwrap();
    let addr = Address::fifo(dir.path().join("app"));
    let transport = FifoTransport::new();
    let mut listener = transport.bind(&addr).await.unwrap();
    let (client, accepted) = tokio::join!(transport.connect(&addr), listener.accept());
    let (mut client, (server, _)) = (client.unwrap(), accepted.unwrap());
    drop(server);
    // More than any pipe holds: without a reader this must fail, not wait.
    let written = tokio::time::timeout(Duration::from_secs(5), client.write_all(&vec![7; 1 << 20]))
        .await
        .expect("no hang");
    assert!(written.is_err(), "{written:?}");
}
