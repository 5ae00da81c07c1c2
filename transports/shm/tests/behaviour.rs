//! What the shared-memory transport must show beyond the conformance
//! suite: random frames wrapping around small rings byte for byte, frames
//! four times the ring, 64 connections at once, a peer killed with SIGKILL
//! mid-frame, and nothing left in `/dev/shm`.
#![cfg(any(target_os = "linux", target_os = "android"))]

use std::{io::ErrorKind, time::Duration};

use busline_core::{Address, Listener, Transport};
use busline_shm::{ShmStream, ShmTransport};
use proptest::{prelude::*, test_runner::TestRunner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const RING: usize = 4096;

fn addr(dir: &tempfile::TempDir, name: &str) -> Address {
    Address::shm(name).with_param("dir", dir.path().display().to_string())
}

async fn pair(name: &str) -> (tempfile::TempDir, ShmStream, ShmStream) {
    let dir = tempfile::tempdir().unwrap();
    let shm = ShmTransport::new().ring_size(RING);
    let addr = addr(&dir, name);
    let mut listener = shm.bind(&addr).await.unwrap();
    let client = shm.connect(&addr).await.unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (dir, client, server)
}

/// Length-prefixed frames of the given sizes, each byte a function of its
/// frame and position, written by one side while the other reads.
async fn frames_cross(sizes: Vec<usize>, client: &mut ShmStream, server: &mut ShmStream) {
    let frame = |i: usize, len: usize| -> Vec<u8> {
        (0..len).map(|j| (i * 31 + j * 7 + j / 256) as u8).collect()
    };
    let expected = sizes.clone();
    let (reader, writer) = (server, client);
    let write = async {
        for (i, len) in sizes.into_iter().enumerate() {
            writer.write_all(&(len as u32).to_le_bytes()).await.unwrap();
            writer.write_all(&frame(i, len)).await.unwrap();
        }
        writer.shutdown().await.unwrap();
    };
    let read = async {
        for (i, len) in expected.into_iter().enumerate() {
            let mut header = [0u8; 4];
            reader.read_exact(&mut header).await.unwrap();
            assert_eq!(
                u32::from_le_bytes(header) as usize,
                len,
                "frame {i}'s length"
            );
            let mut body = vec![0u8; len];
            reader.read_exact(&mut body).await.unwrap();
            assert!(
                body == frame(i, len),
                "frame {i} ({len} bytes) arrived changed"
            );
        }
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "{} bytes after the last frame", rest.len());
    };
    tokio::join!(write, read);
}

#[test]
fn random_frames_wrap_around_the_ring_intact() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(
            &proptest::collection::vec(0usize..3 * RING, 1..60),
            |sizes| {
                runtime.block_on(async {
                    let (_dir, mut client, mut server) = pair("wrap").await;
                    frames_cross(sizes, &mut client, &mut server).await;
                });
                Ok(())
            },
        )
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_four_times_the_ring_streams_through_both_ways() {
    let (_dir, mut client, mut server) = pair("big").await;
    frames_cross(vec![4 * RING, 4 * RING + 1, 7], &mut client, &mut server).await;
    let (_dir, mut client, mut server) = pair("big-back").await;
    frames_cross(vec![4 * RING, 1, 16 * RING], &mut server, &mut client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_connections_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let shm = ShmTransport::new().ring_size(RING);
    let addr = addr(&dir, "many");
    let mut listener = shm.bind(&addr).await.unwrap();
    let echo = tokio::spawn(async move {
        for _ in 0..64 {
            let (mut io, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1500];
                loop {
                    match io.read(&mut buf).await.unwrap() {
                        0 => break,
                        n => io.write_all(&buf[..n]).await.unwrap(),
                    }
                }
            });
        }
    });
    let clients: Vec<_> = (0..64u32)
        .map(|c| {
            let (shm, addr) = (shm.clone(), addr.clone());
            tokio::spawn(async move {
                let mut io = shm.connect(&addr).await.unwrap();
                let sent: Vec<u8> = (0..20_000u32).map(|i| (i * 13 + c) as u8).collect();
                let (mut reader, mut writer) = tokio::io::split(&mut io);
                let write = async {
                    writer.write_all(&sent).await.unwrap();
                };
                let mut back = vec![0u8; sent.len()];
                let read = reader.read_exact(&mut back);
                let (_, read) = tokio::join!(write, read);
                read.unwrap();
                assert!(back == sent, "connection {c} got other bytes back");
            })
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
    echo.await.unwrap();
}

/// Run by [`a_peer_killed_mid_frame_is_a_disconnect`] in a child process:
/// connect, write half a frame, say so, and wait to be killed.
#[tokio::test]
async fn child_writes_half_a_frame() {
    let Ok(url) = std::env::var("BUSLINE_SHM_CHILD") else {
        return; // only meaningful as the child
    };
    let addr: Address = url.parse().unwrap();
    let mut io = ShmTransport::new()
        .ring_size(RING)
        .connect(&addr)
        .await
        .unwrap();
    io.write_all(&1000u32.to_le_bytes()).await.unwrap();
    io.write_all(&[7u8; 500]).await.unwrap();
    println!("HALF-WRITTEN");
    tokio::time::sleep(Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_killed_mid_frame_is_a_disconnect() {
    let dir = tempfile::tempdir().unwrap();
    let addr = addr(&dir, "killed");
    let mut listener = ShmTransport::new().bind(&addr).await.unwrap();
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_writes_half_a_frame", "--nocapture"])
        .env("BUSLINE_SHM_CHILD", addr.to_string())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (mut server, _) = tokio::time::timeout(Duration::from_secs(30), listener.accept())
        .await
        .expect("the child connects")
        .unwrap();
    let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("HALF-WRITTEN") {
        line.clear();
        assert!(
            tokio::io::AsyncBufReadExt::read_line(&mut out, &mut line)
                .await
                .unwrap()
                > 0,
            "the child ended before writing"
        );
    }
    child.start_kill().unwrap();
    child.wait().await.unwrap();

    // What it wrote arrives; then the connection ends with an error, not a
    // hang and not a clean end.
    let mut got = Vec::new();
    let err = tokio::time::timeout(Duration::from_secs(10), server.read_to_end(&mut got))
        .await
        .expect("the death is noticed")
        .unwrap_err();
    assert_eq!(got.len(), 504);
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    let err = server.write_all(&[0u8; 3 * RING]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BrokenPipe, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_left_in_dev_shm_or_the_socket_directory() {
    let before = busline_entries_in_dev_shm();
    {
        let (dir, mut client, mut server) = pair("clean").await;
        frames_cross(vec![100, 5000], &mut client, &mut server).await;
        drop((client, server));
        let listed: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(listed.is_empty(), "{listed:?}");
    }
    assert_eq!(busline_entries_in_dev_shm(), before);
    assert!(before.is_empty(), "busline objects in /dev/shm: {before:?}");
}

fn busline_entries_in_dev_shm() -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains("busline"))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_in_place_lends_the_ring_across_its_end() {
    let (_dir, mut client, mut server) = pair("lend").await;
    // Move the ring's positions near its end, so the next frame wraps.
    client.write_all(&vec![1u8; RING - 10]).await.unwrap();
    let mut skip = vec![0u8; RING - 10];
    server.read_exact(&mut skip).await.unwrap();

    let frame: Vec<u8> = (0..100u8).collect();
    client.write_all(&frame).await.unwrap();
    // Lent whole, in two pieces (10 before the end, 90 after); take 60.
    let (lent, first) = server
        .read_in_place(100, usize::MAX, |bytes| {
            assert!(!bytes.is_empty());
            // SAFETY: the peer is this test's own, well-behaved client.
            let (a, b) = unsafe { bytes.as_slices() };
            assert_eq!((a.len(), b.len()), (10, 90), "split at the ring's end");
            let mut first = [0u8; 60];
            bytes.copy_to_slice(&mut first);
            (60, (bytes.to_vec(), first))
        })
        .await
        .unwrap();
    assert_eq!(lent, frame);
    assert_eq!(&first[..], &frame[..60]);
    // What was not taken is read next.
    let rest = server
        .read_in_place(1, 1000, |b| (b.len(), b.to_vec()))
        .await
        .unwrap();
    assert_eq!(rest, &frame[60..]);
    // Waiting for more than the ring holds could never end: refused.
    let err = server
        .read_in_place(RING + 1, RING + 1, |_| (0, ()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    // A stream that ends inside what was awaited is an error, not a spin.
    client.write_all(&[1, 2, 3]).await.unwrap();
    client.shutdown().await.unwrap();
    let err = server.read_in_place(4, 4, |_| (0, ())).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnexpectedEof, "{err}");
    // The three bytes are still there; then the view is empty.
    let three = server
        .read_in_place(1, 8, |b| (b.len(), b.len()))
        .await
        .unwrap();
    assert_eq!(three, 3);
    let end = server.read_in_place(1, 10, |b| (0, b.is_empty())).await;
    assert!(end.unwrap());
}
