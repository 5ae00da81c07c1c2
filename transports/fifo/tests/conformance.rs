//! `FifoTransport` passes the shared transport conformance suite.
#![cfg(any(target_os = "linux", target_os = "android"))]

use std::cell::Cell;

use busline_core::{testing::transport_conformance, Address};
use busline_fifo::FifoTransport;

#[tokio::test]
async fn fifo_transport_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let next = Cell::new(0);
    let fresh = || {
        next.set(next.get() + 1);
        Address::fifo(dir.path().join(format!("conformance-{}", next.get())))
    };
    transport_conformance(FifoTransport::new(), fresh).await;
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "files left behind: {left:?}");
}
