//! `ShmTransport` passes the shared transport conformance suite, and
//! leaves nothing behind: no socket file, no shared memory.
#![cfg(any(target_os = "linux", target_os = "android"))]

use std::cell::Cell;

use busline_core::{testing::transport_conformance, Address};
use busline_shm::ShmTransport;

#[tokio::test]
async fn shm_transport_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let next = Cell::new(0);
    let fresh = || {
        next.set(next.get() + 1);
        Address::shm(format!("conformance-{}", next.get()))
            .with_param("dir", dir.path().display().to_string())
    };
    // Small rings, so the suite's large transfers wrap around many times.
    transport_conformance(ShmTransport::new().ring_size(4096), fresh).await;
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "files left behind: {left:?}");
}
