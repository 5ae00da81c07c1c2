//! Serving shm-rpc-bridge's Python clients from busline handlers.
//!
//! shm-rpc-bridge's `RPCClient("NAME").call("add", a=1, b=2)` writes
//! `{"request_id": "…", "method": "add", "params": {"a": 1, "b": 2}}` into
//! the shared memory of service `NAME` and waits for
//! `{"request_id": "…", "result": …, "error": null}`. An [`SrbServer`] makes
//! that service's objects ([`SrbChannel`]) and answers each request by
//! calling the router's method with `params`, the keyword arguments, as its
//! argument object; so `add` takes a struct with fields `a` and `b`.
//!
//! ```
//! use busline::{rpc::Router, srb::SrbServer};
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! struct Add { a: i64, b: i64 }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> busline::Result<()> {
//! let router = Router::new()
//!     .unary("add", |Add { a, b }: Add| async move { Ok::<_, String>(a + b) });
//! # let name = format!("doc-srb-{}", std::process::id());
//! let server = SrbServer::builder(router).bind(&name).await?;
//! // Python: RPCClient(name).call("add", a=1, b=2) == 3
//! server.shutdown().await; // removes /dev/shm/srb_<name>_*
//! # Ok(())
//! # }
//! ```

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use busline_core::{Encoding, Error, Identity, Payload, PeerInfo, Result};
pub use busline_srb::SrbChannel;
use serde::{Deserialize, Serialize};
use serde_json::{value::RawValue, Value};
use tokio::runtime::Handle;
use tower::ServiceExt;

use crate::rpc::{guarded, CallKind, Reply, Request, Router};

/// How often the serving thread looks up from an empty request slot to
/// see whether it should stop.
const POLL: Duration = Duration::from_millis(100);

/// The method every shm-rpc-bridge server answers `true` to: its clients'
/// "is the server up" probe.
const RUNNING: &str = "__running__";

/// Options for an [`SrbServer`].
#[derive(Debug)]
pub struct SrbServerBuilder {
    router: Router,
    buffer_size: usize,
    timeout: Duration,
}

impl SrbServerBuilder {
    /// The size of each buffer, as the clients give it (`buffer_size=`);
    /// shm-rpc-bridge's default is 4096 bytes. A message holds 4 bytes
    /// less.
    pub fn buffer_size(mut self, bytes: usize) -> Self {
        self.buffer_size = bytes;
        self
    }

    /// How long a client waits for its answer (`timeout=`, 5 s by
    /// default). A handler still running after it is cancelled and its
    /// answer not written: its client has stopped waiting, and the one
    /// response slot would hand that answer to the next caller.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Make service `name`'s shared memory and semaphores and serve it, on
    /// a thread of its own (the semaphores block), calling handlers on the
    /// current tokio runtime.
    ///
    /// Objects already there are taken over only if no server answers
    /// `__running__` on them within the timeout (a server killed before it
    /// could remove them); a live server's are refused with an `AddrInUse`
    /// transport error, as are objects that cannot be checked (another
    /// user's, or smaller than the buffer size).
    pub async fn bind(self, name: &str) -> Result<SrbServer> {
        let runtime = Handle::current();
        let (buffer_size, timeout) = (self.buffer_size, self.timeout);
        let owned = name.to_owned();
        let channel = tokio::task::spawn_blocking(move || create(&owned, buffer_size, timeout))
            .await
            .map_err(|e| Error::Protocol(format!("creating the service panicked: {e}")))??;
        let stop = Arc::new(AtomicBool::new(false));
        let removed = Arc::new(AtomicBool::new(false));
        let serving = Serving {
            channel,
            router: self.router,
            timeout,
            stop: stop.clone(),
            removed: removed.clone(),
            runtime,
        };
        let thread = std::thread::Builder::new()
            .name(format!("srb-{name}"))
            .spawn(move || serving.run())?;
        Ok(SrbServer {
            name: name.to_owned(),
            stop,
            removed,
            thread: Some(thread),
        })
    }
}

/// A shm-rpc-bridge service served by busline handlers; see the
/// [module docs](self).
///
/// [`SrbServer::shutdown`] stops it and removes its objects once the
/// request in progress is answered. Dropping it removes their names at
/// once (clients that have them open keep them) and lets the serving
/// thread end on its own.
#[derive(Debug)]
pub struct SrbServer {
    name: String,
    stop: Arc<AtomicBool>,
    /// Set when a drop removed the objects' names: the serving thread then
    /// leaves them alone (they may be a new server's by the time it ends).
    removed: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SrbServer {
    /// A server of `router`'s methods, with shm-rpc-bridge's defaults.
    pub fn builder(router: Router) -> SrbServerBuilder {
        SrbServerBuilder {
            router,
            buffer_size: SrbChannel::DEFAULT_BUFFER_SIZE,
            timeout: SrbChannel::DEFAULT_TIMEOUT,
        }
    }

    /// The service name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stop serving, and remove the service's objects.
    pub async fn shutdown(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for SrbServer {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.removed.store(true, Ordering::SeqCst);
            self.stop.store(true, Ordering::SeqCst);
            // The process may end before the thread does: nothing may be
            // left in /dev/shm.
            SrbChannel::remove(&self.name);
        }
    }
}

/// Make the service's objects, taking over those a dead server left.
fn create(name: &str, buffer_size: usize, timeout: Duration) -> Result<SrbChannel> {
    if SrbChannel::exists(name) {
        let refused = |why: String| {
            Error::Transport(std::io::Error::new(std::io::ErrorKind::AddrInUse, why).into())
        };
        match SrbChannel::open(name, buffer_size) {
            // Some of them only: a server died making or removing them.
            Err(Error::Transport(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(other) => {
                return Err(refused(format!(
                    "shm-rpc-bridge service {name:?} exists and cannot be checked ({other}); \
                     remove its objects (busline_srb::SrbChannel::remove) if no server uses them"
                )))
            }
            Ok(mut channel) => {
                if answers(&mut channel, timeout) {
                    return Err(refused(format!(
                        "a server already serves shm-rpc-bridge service {name:?}"
                    )));
                }
            }
        }
        tracing::warn!(service = name, "removing the objects a dead server left");
        SrbChannel::remove(name);
    }
    SrbChannel::create(name, buffer_size)
}

/// Whether a server answers `__running__` on `channel` within `timeout`
/// (its clients' timeout: a live server answers within it, even busy).
fn answers(channel: &mut SrbChannel, timeout: Duration) -> bool {
    let probe = br#"{"request_id":"busline-probe","method":"__running__","params":{}}"#;
    if channel.send_request(probe, timeout).is_err() {
        return false;
    }
    // A dead server's last answer, never read, may still sit in the slot:
    // only an answer to this probe says a server lives.
    let deadline = Instant::now() + timeout;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Ok(answer) = channel.receive_response(left) else {
            return false;
        };
        let id = serde_json::from_slice::<Value>(&answer)
            .ok()
            .and_then(|v| v.get("request_id").cloned());
        if id.as_ref().and_then(Value::as_str) == Some("busline-probe") {
            return true;
        }
    }
    false
}

/// The serving thread's state.
struct Serving {
    channel: SrbChannel,
    router: Router,
    timeout: Duration,
    stop: Arc<AtomicBool>,
    removed: Arc<AtomicBool>,
    runtime: Handle,
}

impl Serving {
    fn run(mut self) {
        self.serve();
        if self.removed.load(Ordering::SeqCst) {
            self.channel.disown();
        }
    }

    fn serve(&mut self) {
        let mut slot_taken_since: Option<Instant> = None;
        while !self.stop.load(Ordering::Relaxed) {
            let answer = match self.channel.receive_request(POLL) {
                Ok(Some(request)) => {
                    slot_taken_since = None;
                    self.runtime.block_on(self.answer(&request))
                }
                Ok(None) => {
                    self.watch_request_slot(&mut slot_taken_since);
                    continue;
                }
                Err(err) => {
                    // A length over the buffer: answered, so that its
                    // client is not left waiting.
                    tracing::warn!(service = %self.channel.name(), error = %err, "bad request");
                    let error = format!("RPCTransportError: {err}");
                    Some(response(&Value::from(""), Err(&error)))
                }
            };
            let Some(answer) = answer else { continue };
            if let Err(err) = self.channel.send_response(&answer, self.timeout) {
                tracing::warn!(service = %self.channel.name(), error = %err, "response not sent");
            }
        }
    }

    /// A client killed between taking the request slot and filling it
    /// would block every later one: free a slot held that long.
    fn watch_request_slot(&mut self, since: &mut Option<Instant>) {
        match self.channel.request_slot_taken() {
            Ok(true) => {
                let since = since.get_or_insert_with(Instant::now);
                if since.elapsed() >= self.timeout {
                    let _ = self.channel.free_request_slot();
                    *since = Instant::now();
                }
            }
            _ => *since = None,
        }
    }

    /// The response to one request, or `None` if the handler outlived its
    /// client's wait.
    async fn answer(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        let incoming = match serde_json::from_slice::<Incoming<'_>>(bytes) {
            Ok(incoming) => incoming,
            Err(e) => {
                let id = serde_json::from_slice::<Value>(bytes)
                    .ok()
                    .and_then(|v| v.get("request_id").cloned())
                    .unwrap_or_else(|| Value::from(""));
                let error = format!("RPCSerializationError: Failed to deserialize data: {e}");
                return Some(response(&id, Err(&error)));
            }
        };
        let method = incoming.method;
        let params = incoming.params.map_or("{}", RawValue::get);
        if !params.trim_start().starts_with('{') {
            // Python would fail on `method(**params)` the same way.
            let error =
                format!("TypeError: params must be an object of keyword arguments: {params:.60}");
            return Some(response(&incoming.request_id, Err(&error)));
        }
        let deadline = Instant::now() + self.timeout;
        let call = Request {
            method: method.clone(),
            payload: Payload::from_bytes(Encoding::Json, params.to_owned()),
            kind: CallKind::Unary,
            identity: Arc::new(Identity {
                scheme: "none".into(),
                subject: None,
                peer: PeerInfo::described(format!("srb://{}", self.channel.name())),
            }),
            deadline: Some(deadline),
            peer: None,
        };
        let handled =
            tokio::time::timeout(self.timeout, guarded(self.router.clone().oneshot(call))).await;
        let result = match handled {
            Err(_) => {
                tracing::warn!(
                    service = %self.channel.name(), method = %method,
                    "the handler outlived its client's {:?} wait; its answer is dropped",
                    self.timeout
                );
                return None;
            }
            Ok(Err(Error::MethodNotFound(_))) if method == RUNNING => Ok("true".to_owned()),
            Ok(Ok(Reply::Unary(payload))) => result_json(&payload),
            Ok(Ok(Reply::Stream(_))) => Err(format!(
                "RPCError: {method} answers with a stream, which shm-rpc-bridge cannot carry"
            )),
            Ok(Err(err)) => Err(python_error(&method, err)),
        };
        let answer = response(
            &incoming.request_id,
            result.as_deref().map_err(String::as_str),
        );
        if answer.len() > self.channel.max_message() {
            let error = format!(
                "RPCTransportError: the answer to {method} is {} bytes, over the {} one \
                 message may hold (raise buffer_size on the server and its clients)",
                answer.len(),
                self.channel.max_message()
            );
            return Some(response(&incoming.request_id, Err(&error)));
        }
        Some(answer)
    }
}

/// A result's JSON text (a handler may have answered in CBOR).
fn result_json(payload: &Payload) -> std::result::Result<String, String> {
    if payload.encoding() == Encoding::Json {
        if let Ok(text) = std::str::from_utf8(payload.bytes()) {
            return Ok(text.to_owned());
        }
    }
    payload
        .decode::<Value>()
        .map(|v| v.to_string())
        .map_err(|e| format!("RPCSerializationError: {e}"))
}

/// An error as shm-rpc-bridge's server words it, `"Type: message"` after
/// the Python exception, with its types for the same failures.
fn python_error(method: &str, err: Error) -> String {
    match err {
        Error::MethodNotFound(_) => format!("RPCError: Unknown method: {method}"),
        // What a Python handler given the wrong keyword arguments raises.
        Error::Serialization(message) => format!("TypeError: {message}"),
        Error::Timeout(_) => format!("RPCTimeoutError: {err}"),
        Error::Unauthorized(_) => format!("PermissionError: {err}"),
        Error::HandlerFailed { message, kind } => {
            format!("{}: {message}", busline_core::short_type_name(&kind))
        }
        other => format!("RPCError: {other}"),
    }
}

#[derive(Deserialize)]
struct Incoming<'a> {
    request_id: Value,
    method: String,
    #[serde(borrow, default)]
    params: Option<&'a RawValue>,
}

#[derive(Serialize)]
struct Outgoing<'a> {
    request_id: &'a Value,
    result: Option<&'a RawValue>,
    error: Option<String>,
}

/// `{"request_id", "result", "error"}` as shm-rpc-bridge's client reads it.
fn response(request_id: &Value, result: std::result::Result<&str, &str>) -> Vec<u8> {
    let (result, error) = match result.map(|json| RawValue::from_string(json.to_owned())) {
        Ok(Ok(json)) => (Some(json), None),
        Ok(Err(e)) => (None, Some(format!("RPCSerializationError: {e}"))),
        Err(error) => (None, Some(error.to_owned())),
    };
    let outgoing = Outgoing {
        request_id,
        result: result.as_deref(),
        error,
    };
    // Values that came out of JSON, and strings: they serialize.
    serde_json::to_vec(&outgoing).unwrap_or_default()
}
