//! The demo service `busline serve` and `busline demo` run: small enough to
//! read, broad enough to try every kind of call.

use std::time::Duration;

use busline::rpc::Router;
use futures::{stream, StreamExt};
use serde_json::Value;

/// Two numbers, as `[a, b]` or as keyword arguments `{"a": …, "b": …}`
/// (shm-rpc-bridge's clients send those).
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Pair {
    Listed(i64, i64),
    Named { a: i64, b: i64 },
}

/// echo, add, sum, count (stream), sleep, fail and log (notification).
pub(crate) fn router() -> Router {
    Router::new()
        .unary("echo", |v: Value| async move { Ok::<_, String>(v) })
        .unary("add", |pair: Pair| async move {
            let (a, b) = match pair {
                Pair::Listed(a, b) | Pair::Named { a, b } => (a, b),
            };
            a.checked_add(b)
                .ok_or_else(|| format!("{a} + {b} overflows a 64-bit integer"))
        })
        .unary("sum", |xs: Vec<f64>| async move {
            Ok::<_, String>(xs.iter().sum::<f64>())
        })
        .unary("sleep", |ms: u64| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, String>(ms)
        })
        .unary(
            "fail",
            |message: String| async move { Err::<(), _>(message) },
        )
        .stream("count", |n: u64| {
            stream::iter(0..n).then(|i| async move {
                tokio::task::yield_now().await;
                Ok::<_, String>(i)
            })
        })
        .notification("log", |line: String| async move {
            eprintln!("log: {line}");
            Ok::<_, String>(())
        })
}
