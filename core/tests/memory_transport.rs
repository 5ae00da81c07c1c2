//! The in-memory transport passes the shared transport conformance suite,
//! which also proves the suite itself runs green on a reference transport.

use std::sync::atomic::{AtomicUsize, Ordering};

use busline_core::{testing::transport_conformance, Address, MemoryTransport};

/// A process-wide unique name: memory names share one namespace with every
/// other test running in parallel in this binary.
fn fresh_name() -> Address {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    Address::memory(format!(
        "memory-conformance-{}",
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

#[tokio::test]
async fn memory_transport_conforms() {
    transport_conformance(MemoryTransport::new(), fresh_name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_transport_conforms_on_multi_thread_runtime() {
    transport_conformance(MemoryTransport::new(), fresh_name).await;
}

#[tokio::test]
async fn memory_transport_conforms_with_tiny_buffers() {
    // A buffer far smaller than the suite's writes makes nearly every write
    // wait for the reader: a strict test of the suite's own full-duplex and
    // echo logic (1 byte would be stricter still, but takes a minute).
    transport_conformance(MemoryTransport::new().buffer(512), fresh_name).await;
}
