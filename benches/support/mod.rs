//! What every benchmark here needs: the runtimes, and socket paths that do
//! not collide between runs.

use std::{future::Future, path::PathBuf, thread::JoinHandle};

use tokio::{
    runtime::{Handle, Runtime},
    sync::oneshot,
};

/// Two workers, like the machine the ratios in the README come from; or,
/// with `BUSLINE_BENCH_THREADS=1`, one thread for everything (client,
/// server and their connections).
#[allow(dead_code)] // not every benchmark uses it
pub fn runtime() -> Runtime {
    if std::env::var("BUSLINE_BENCH_THREADS").as_deref() == Ok("1") {
        return current_thread();
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn current_thread() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Where each end of a benchmarked connection runs.
///
/// By default each side has its own one-thread runtime on its own thread,
/// as two single-threaded processes would (the way the peers' figures in
/// issue 9 were taken): the client's tasks on the benchmark's thread, the
/// server's on another. `BUSLINE_BENCH_RUNTIME=shared` puts both sides on
/// one two-worker runtime instead ([`runtime`]).
#[derive(Debug)]
#[allow(dead_code)] // not every benchmark uses it
pub struct Sides {
    /// Runs the client side and the timed loops.
    pub client: Runtime,
    /// The server side's runtime, when it is not `client`.
    server: Option<ServerThread>,
}

#[derive(Debug)]
struct ServerThread {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

#[allow(dead_code)] // not every benchmark uses it
impl Sides {
    pub fn new() -> Sides {
        if std::env::var("BUSLINE_BENCH_RUNTIME").as_deref() == Ok("shared") {
            return Sides {
                client: runtime(),
                server: None,
            };
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("bench-server".into())
            .spawn(move || {
                let rt = current_thread();
                handle_tx.send(rt.handle().clone()).expect("handle");
                let _ = rt.block_on(stopped);
            })
            .expect("server thread");
        Sides {
            client: current_thread(),
            server: Some(ServerThread {
                handle: handle_rx.recv().expect("server runtime"),
                stop: Some(stop),
                thread: Some(thread),
            }),
        }
    }

    /// Run `work` on the server side (binding a server, spawning an echo
    /// task) and wait for what it returns.
    pub fn on_server<F>(&self, work: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let handle = self
            .server
            .as_ref()
            .map_or_else(|| self.client.handle().clone(), |s| s.handle.clone());
        self.client
            .block_on(handle.spawn(work))
            .expect("server-side setup")
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A Unix socket path unique to this process and `name`.
pub fn socket_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("busline-bench-{}-{name}.sock", std::process::id()))
}
