//! Conformance suites: one generic test body per trait contract, run for
//! every implementation. A new transport or codec gets the whole suite by
//! adding one line to its tests (see each function's example).
//!
//! Enabled with the `testing` feature; meant for `[dev-dependencies]`.

mod codec;
mod transport;

pub use codec::{arb_message, codec_conformance, codec_conformance_normalized, sample_messages};
pub use transport::transport_conformance;
