//! Every checked-in fuzz input, run through the fuzz targets' own checks
//! under a plain `cargo test`: the seed corpus (`fuzz/corpus/<target>/`)
//! and every crash once found (`fuzz/regressions/<target>/`), so a fixed
//! crash stays fixed without cargo-fuzz or a nightly compiler. The fuzzing
//! itself runs in `.ci/fuzz`.

#[path = "../fuzz/src/lib.rs"]
mod checks;

use std::{panic::AssertUnwindSafe, path::Path};

use checks::Wire;

/// Run `check` on every file under `fuzz/corpus/<target>` and
/// `fuzz/regressions/<target>`; returns how many there were.
fn replay(target: &str, check: impl Fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut count = 0;
    for set in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(set).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("a readable fuzz folder").path();
            let input = std::fs::read(&path).expect("a readable fuzz input");
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| check(&input)));
            assert!(outcome.is_ok(), "{target}: {} fails", path.display());
            count += 1;
        }
    }
    count
}

#[test]
fn decoders_survive_their_corpora() {
    assert!(replay("decode_jsonline", |b| checks::decode(Wire::JsonLine, b)) > 0);
    assert!(replay("decode_jsonrpc", |b| checks::decode(Wire::JsonRpc, b)) > 0);
    assert!(replay("decode_cbor", |b| checks::decode(Wire::Cbor, b)) > 0);
}

#[test]
fn handshake_refuses_its_corpus() {
    assert!(replay("handshake", checks::handshake) > 0);
}

#[test]
fn broker_survives_its_corpus() {
    assert!(replay("broker", checks::broker) > 0);
}

#[cfg(any(target_os = "linux", target_os = "android"))]
#[test]
fn shared_memory_survives_hostile_memory() {
    assert!(replay("shm_ring", checks::shm_ring) > 0);
}

#[test]
fn addresses_survive_their_corpus() {
    assert!(replay("address", checks::address) > 0);
}
