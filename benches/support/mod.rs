//! What every benchmark here needs: the same runtime, and socket paths
//! that do not collide between runs.

use std::path::PathBuf;

use tokio::runtime::Runtime;

/// Two workers, like the machine the ratios in the README come from; or,
/// with `BUSLINE_BENCH_THREADS=1`, one thread for everything (client,
/// server and their connections), as the peers' figures in issue 9 were
/// taken.
pub fn runtime() -> Runtime {
    if std::env::var("BUSLINE_BENCH_THREADS").as_deref() == Ok("1") {
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A Unix socket path unique to this process and `name`.
pub fn socket_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("busline-bench-{}-{name}.sock", std::process::id()))
}
