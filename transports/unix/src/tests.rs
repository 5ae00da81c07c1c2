//! The socket-file rules, one test each.

use std::{
    fs,
    io::ErrorKind,
    os::unix::{
        fs::{FileTypeExt, MetadataExt, PermissionsExt},
        net::UnixListener as StdUnixListener,
    },
    path::Path,
};

use busline_core::{Address, Error, Listener, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::UnixTransport;

fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o777
}

fn transport_error_kind(result: busline_core::Result<impl Sized>) -> (ErrorKind, String) {
    match result {
        Err(Error::Transport(e)) => (e.kind(), e.to_string()),
        Err(other) => panic!("expected a transport error, got {other:?}"),
        Ok(_) => panic!("expected a transport error, got success"),
    }
}

/// Send a byte from a fresh client to the listener and back.
async fn assert_serves(t: &UnixTransport, listener: &mut crate::UnixListener) {
    let mut client = t.connect(&listener.local_addr()).await.unwrap();
    let (mut server, _) = listener.accept().await.unwrap();
    client.write_all(b"x").await.unwrap();
    let mut b = [0];
    server.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"x");
}

#[tokio::test]
async fn socket_file_is_0600_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let _l = UnixTransport::new()
        .bind(&Address::unix(&path))
        .await
        .unwrap();
    assert!(fs::symlink_metadata(&path).unwrap().file_type().is_socket());
    assert_eq!(mode_of(&path), 0o600);
}

#[tokio::test]
async fn mode_is_configurable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let t = UnixTransport::new().mode(0o660);
    let mut l = t.bind(&Address::unix(&path)).await.unwrap();
    assert_eq!(mode_of(&path), 0o660);
    assert_serves(&t, &mut l).await;
}

#[tokio::test]
async fn missing_parent_directories_are_created_0700() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/s.sock");
    let _l = UnixTransport::new()
        .bind(&Address::unix(&path))
        .await
        .unwrap();
    assert_eq!(mode_of(&dir.path().join("a")), 0o700);
    assert_eq!(mode_of(&dir.path().join("a/b")), 0o700);
}

#[tokio::test]
async fn existing_parent_directory_keeps_its_mode() {
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let _l = UnixTransport::new()
        .bind(&Address::unix(dir.path().join("s.sock")))
        .await
        .unwrap();
    assert_eq!(mode_of(dir.path()), 0o755);
}

#[tokio::test]
async fn binding_leaves_only_the_socket_behind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let l = UnixTransport::new()
        .bind(&Address::unix(&path))
        .await
        .unwrap();
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["s.sock"], "staging directory left behind");
    drop(l);
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn stale_socket_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    drop(StdUnixListener::bind(&path).unwrap()); // std leaves the file behind
    assert!(path.exists());
    let t = UnixTransport::new();
    let mut l = t.bind(&Address::unix(&path)).await.unwrap();
    assert_eq!(mode_of(&path), 0o600);
    assert_serves(&t, &mut l).await;
}

#[tokio::test]
async fn live_socket_is_refused_and_left_working() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let live = StdUnixListener::bind(&path).unwrap();
    let ino = fs::symlink_metadata(&path).unwrap().ino();
    let (kind, message) =
        transport_error_kind(UnixTransport::new().bind(&Address::unix(&path)).await);
    assert_eq!(kind, ErrorKind::AddrInUse);
    assert!(message.contains("a live server owns"), "{message}");
    assert!(message.contains(&path.display().to_string()), "{message}");
    // Still there and still the live server's socket.
    assert_eq!(fs::symlink_metadata(&path).unwrap().ino(), ino);
    std::os::unix::net::UnixStream::connect(&path).unwrap();
    live.accept().unwrap(); // the probe
    live.accept().unwrap(); // ours
}

#[tokio::test]
async fn regular_file_is_never_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("important.txt");
    fs::write(&path, "keep me").unwrap();
    let (kind, message) =
        transport_error_kind(UnixTransport::new().bind(&Address::unix(&path)).await);
    assert_eq!(kind, ErrorKind::AlreadyExists);
    assert!(message.contains("not a socket"), "{message}");
    assert_eq!(fs::read_to_string(&path).unwrap(), "keep me");
}

#[tokio::test]
async fn symlink_is_never_followed_or_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target.txt");
    fs::write(&target, "keep me").unwrap();
    let path = dir.path().join("s.sock");
    std::os::unix::fs::symlink(&target, &path).unwrap();
    let (kind, _) = transport_error_kind(UnixTransport::new().bind(&Address::unix(&path)).await);
    assert_eq!(kind, ErrorKind::AlreadyExists);
    assert!(fs::symlink_metadata(&path)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(fs::read_to_string(&target).unwrap(), "keep me");
}

#[tokio::test]
async fn socket_file_is_removed_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let l = UnixTransport::new()
        .bind(&Address::unix(&path))
        .await
        .unwrap();
    assert!(path.exists());
    drop(l);
    assert!(!path.exists());
}

#[tokio::test]
async fn successors_socket_is_not_removed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let t = UnixTransport::new();
    let old = t.bind(&Address::unix(&path)).await.unwrap();
    fs::remove_file(&path).unwrap(); // e.g. an admin cleaned up
    let mut successor = t.bind(&Address::unix(&path)).await.unwrap();
    drop(old);
    assert!(
        path.exists(),
        "the old listener deleted its successor's socket"
    );
    assert_serves(&t, &mut successor).await;
    drop(successor);
    assert!(!path.exists());
}

#[tokio::test]
async fn accept_reports_path_and_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("with space.sock");
    let t = UnixTransport::new();
    let mut l = t.bind(&Address::unix(&path)).await.unwrap();
    let _client = t.connect(&l.local_addr()).await.unwrap();
    let (_server, peer) = l.accept().await.unwrap();
    assert_eq!(peer.description, Address::unix(&path).to_string());
    assert!(peer.description.starts_with("unix:///"));
    let cred = peer.credentials.expect("credentials");
    let me = fs::metadata(dir.path()).unwrap(); // we created it
    assert_eq!((cred.uid, cred.gid), (me.uid(), me.gid()));
    assert_eq!(cred.pid, Some(std::process::id() as i32));
}

#[tokio::test]
async fn local_addr_keeps_options() {
    let dir = tempfile::tempdir().unwrap();
    let addr = Address::unix(dir.path().join("s.sock")).with_param("codec", "cbor");
    let l = UnixTransport::new().bind(&addr).await.unwrap();
    assert_eq!(l.local_addr(), addr);
    assert_eq!(l.path(), dir.path().join("s.sock"));
}

#[tokio::test]
async fn connect_errors_name_the_path_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.sock");
    let (kind, message) =
        transport_error_kind(UnixTransport::new().connect(&Address::unix(&missing)).await);
    assert_eq!(kind, ErrorKind::NotFound);
    assert!(
        message.contains(&missing.display().to_string()),
        "{message}"
    );
    assert!(message.contains("start it"), "{message}");

    let stale = dir.path().join("stale.sock");
    drop(StdUnixListener::bind(&stale).unwrap());
    let (kind, message) =
        transport_error_kind(UnixTransport::new().connect(&Address::unix(&stale)).await);
    assert_eq!(kind, ErrorKind::ConnectionRefused);
    assert!(message.contains("stale"), "{message}");
}

#[tokio::test]
async fn parent_that_is_a_file_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    fs::write(&file, "").unwrap();
    let (kind, message) = transport_error_kind(
        UnixTransport::new()
            .bind(&Address::unix(file.join("s.sock")))
            .await,
    );
    assert_eq!(kind, ErrorKind::InvalidInput);
    assert!(message.contains("not a directory"), "{message}");
}
