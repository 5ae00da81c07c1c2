//! tower middleware on both sides of a connection.
//!
//! Client side: `Client` is a `tower::Service<Call>`, so tower's layers wrap
//! it unchanged. We stack
//!   - `retry`, with a policy that retries only errors for which
//!     `busline::Error::is_retryable()` is true (the call certainly did not
//!     run), at most 3 times, with a short pause between attempts;
//!   - `timeout`, bounding each attempt;
//!   - `concurrency_limit`, bounding calls in flight across all clones.
//!
//! Server side: each method is a `tower::Service<Request>`, so
//! `Router::route` accepts any service, wrapped in any layers, and
//! `Router::layer` wraps every method at once. Here one method gets a
//! server-side timeout, and every method a logging layer.
//!
//! Run it with `cargo run --example middleware`.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use busline::rpc::{Call, Client, Reply, Request, Router, Server};
use busline::{Address, CborCodec, Error, MemoryTransport, Payload};
use futures::future::join_all;
use tower::{
    retry::Policy, service_fn, util::MapRequestLayer, BoxError, ServiceBuilder, ServiceExt,
};

/// Retry only what `busline::Error::is_retryable` allows, a few times.
#[derive(Clone)]
struct RetryRetryable {
    attempts_left: usize,
}

impl Policy<Call, Payload, BoxError> for RetryRetryable {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        req: &mut Call,
        result: &mut Result<Payload, BoxError>,
    ) -> Option<Self::Future> {
        let err = result.as_ref().err()?;
        // Errors from the client are `busline::Error`; the timeout layer's
        // own `Elapsed` is not one, so a timed-out call is never retried.
        let retryable = err.downcast_ref::<Error>().is_some_and(Error::is_retryable);
        if !retryable || self.attempts_left == 0 {
            return None;
        }
        self.attempts_left -= 1;
        println!(
            "  retry: {:?} failed with \"{err}\"; trying again",
            req.method
        );
        Some(tokio::time::sleep(Duration::from_millis(20)))
    }

    fn clone_request(&mut self, req: &Call) -> Option<Call> {
        Some(req.clone())
    }
}

/// The server-side timeout for `report`.
const REPORT_LIMIT: Duration = Duration::from_millis(300);

/// tower layers fail with `BoxError`; a route must fail with `busline::Error`.
fn to_busline(err: BoxError) -> Error {
    match err.downcast::<Error>() {
        Ok(ours) => *ours,
        Err(other) if other.is::<tower::timeout::error::Elapsed>() => Error::Timeout(REPORT_LIMIT),
        Err(other) => Error::handler(&other, "middleware"),
    }
}

/// Counts a running `sleep_ms` handler, even if it is cancelled midway.
struct Running(Arc<AtomicUsize>);

impl Running {
    fn enter(in_flight: &Arc<AtomicUsize>, peak: &AtomicUsize) -> Self {
        let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        peak.fetch_max(now, Ordering::SeqCst);
        Running(in_flight.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn router(in_flight: Arc<AtomicUsize>, peak: Arc<AtomicUsize>) -> Router {
    let flaky_calls = Arc::new(AtomicUsize::new(0));

    // `report` is a plain service over `Request` → `Reply`, wrapped in layers.
    let report = ServiceBuilder::new()
        .map_err(to_busline)
        .timeout(REPORT_LIMIT)
        .service(service_fn(|req: Request| async move {
            let ms: u64 = req.payload.decode()?;
            tokio::time::sleep(Duration::from_millis(ms)).await;
            let answer = format!("report took {ms} ms");
            // Answer in the caller's encoding (`.unary` does this for you).
            Ok::<_, Error>(Reply::Unary(Payload::encode(
                req.payload.encoding(),
                &answer,
            )?))
        }));

    Router::new()
        .unary(
            "add",
            |(a, b): (i64, i64)| async move { Ok::<_, String>(a + b) },
        )
        // Overloaded twice, then fine: `Overloaded` is retryable.
        .unary("flaky", move |(): ()| {
            let n = flaky_calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    Err(Error::Overloaded("busy, try later".into()))
                } else {
                    Ok("done")
                }
            }
        })
        // A handler error: the handler ran, so it is not retryable.
        .unary("fail", |(): ()| async { Err::<(), _>("no such user") })
        // Sleeps, counting how many run at once.
        .unary("sleep_ms", move |ms: u64| {
            let running = Running::enter(&in_flight, &peak);
            async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                drop(running);
                Ok::<_, String>(ms)
            }
        })
        .route("report", report)
        // Every method above: log who calls what.
        .layer(MapRequestLayer::new(|req: Request| {
            println!(
                "  server: {} called by {:?}",
                req.method, req.identity.scheme
            );
            req
        }))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let addr = Address::memory("middleware");
    let server = Server::builder(router(in_flight, peak.clone()), CborCodec::new())
        .bind(&MemoryTransport::new(), &addr)
        .await?;
    let client = Client::builder(CborCodec::new())
        .connect(&MemoryTransport::new(), &addr)
        .await?;

    // The client stack: outermost layer first.
    let svc = ServiceBuilder::new()
        .retry(RetryRetryable { attempts_left: 3 })
        .timeout(Duration::from_millis(200))
        .concurrency_limit(2)
        .service(client.clone());

    // The service interface speaks raw payloads: encode arguments (and
    // decode results) in the connection's encoding.
    let enc = client.encoding();

    println!("a call through the stack:");
    let sum = svc
        .clone()
        .oneshot(Call::encode(enc, "add", &(2, 3))?)
        .await?;
    println!("  add(2, 3) = {}", sum.decode::<i64>()?);

    println!("a retryable error (Overloaded), retried until it succeeds:");
    let done = svc
        .clone()
        .oneshot(Call::encode(enc, "flaky", &())?)
        .await?;
    println!("  flaky() = {:?}", done.decode::<String>()?);

    println!("a handler error, not retried:");
    let err = svc
        .clone()
        .oneshot(Call::encode(enc, "fail", &())?)
        .await
        .unwrap_err();
    println!("  fail() -> {err}");

    // Dropping the timed-out call also cancels its handler on the server.
    println!("a call slower than the 200 ms timeout, not retried:");
    let err = svc
        .clone()
        .oneshot(Call::encode(enc, "sleep_ms", &5_000u64)?)
        .await
        .unwrap_err();
    println!("  sleep_ms(5000) -> {err}");

    println!("6 calls at once through concurrency_limit(2):");
    let calls = (0..6).map(|_| {
        svc.clone()
            .oneshot(Call::encode(enc, "sleep_ms", &50u64).unwrap())
    });
    let results = join_all(calls).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    println!(
        "  {ok} succeeded; at most {} ran on the server at once",
        peak.load(Ordering::SeqCst)
    );

    println!("a server-side layer (timeout {REPORT_LIMIT:?}) around one method:");
    let fast: String = client.call("report", &10u64).await?;
    println!("  report(10) = {fast:?}");
    let slow = client.call::<_, String>("report", &1_000u64).await;
    println!("  report(1000) -> {}", slow.unwrap_err());

    server.shutdown().await;
    Ok(())
}
