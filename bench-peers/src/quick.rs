//! Quick looks at one thing, a few rounds, a line per round: to compare two
//! builds (run their binaries alternately, a round of each in turn, so the
//! machine's slow spells hit both) or to watch under a profiler. The broker
//! is the one-thread broker process (`busline --threads 1 broker`).
//!
//! - `quick calls [spin]`: request/reply median and p99, and calls/s with
//!   64 in flight, through the broker process (polling before it sleeps
//!   with `spin`) and through NATS, three rounds, with the ratios;
//! - `quick in-flight [spin]`: calls/s with 64 in flight through the
//!   broker process alone, ten rounds; with `BROKER_SOCKET=<path>`, through
//!   a broker already listening there, such as one started under a
//!   profiler (`valgrind --tool=callgrind busline-bench-peers broker
//!   <path> 1`);
//! - `quick fan-out [nats]`: deliveries/s to 1, 10 and 100 subscribers
//!   through the broker process, or through NATS, three rounds;
//! - `quick p2p <contender>`: point to point, calls/s with 64 in flight,
//!   ten rounds, for one contender of the `rpc` comparison (`busline`,
//!   `tarpc`, ...).

use std::path::PathBuf;

use super::{
    backbone, echo_channel, fan_out, nats_rows, rpc_peers, start_broker, start_nats, Server,
};

/// Run the quick look `args` names.
pub(crate) fn run(args: &[String]) {
    let what = args.first().map(String::as_str).unwrap_or_default();
    let flag = args.get(1).map(String::as_str);
    if what == "p2p" {
        // Its sides run on one-thread runtimes of their own.
        for rate in rpc_peers::rates_in_flight(flag.unwrap_or("busline"), 10) {
            println!("{rate:.0}");
        }
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    match what {
        "calls" => runtime.block_on(calls(flag == Some("spin"))),
        "in-flight" => runtime.block_on(in_flight(flag == Some("spin"))),
        "fan-out" => runtime.block_on(fan_out(flag == Some("nats"))),
        other => eprintln!("quick: {other:?} is not one of calls, in-flight, fan-out, p2p"),
    }
}

/// A broker process on one thread, on a socket of its own (it stops when
/// the `Server` drops).
fn broker(spin: bool) -> (PathBuf, Server) {
    let dir = std::env::temp_dir().join(format!("busline-quick-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let socket = dir.join("broker.sock");
    let process = start_broker(&socket, 1, spin);
    (socket, process)
}

async fn calls(spin: bool) {
    let (socket, _process) = broker(spin);
    let (_nats, url) = start_nats().await;
    for round in 0..3 {
        let (_provider, caller) = echo_channel(&socket, &format!("quick{round}")).await;
        let (median, p99, rate) = backbone::measure_calls(&caller).await;
        let nats = nats_rows(&url, round, false).await;
        println!(
            "busline {median:.1} µs, p99 {p99:.1} µs, {rate:.0}/s; NATS {:.1} µs, p99 {:.1} µs, \
             {:.0}/s; ratios {:.2} {:.2} {:.2}",
            nats.median_us,
            nats.p99_us,
            nats.calls_per_s,
            median / nats.median_us,
            p99 / nats.p99_us,
            rate / nats.calls_per_s,
        );
    }
}

async fn in_flight(spin: bool) {
    let (socket, _process) = match std::env::var_os("BROKER_SOCKET") {
        Some(socket) => (PathBuf::from(socket), None),
        None => {
            let (socket, process) = broker(spin);
            (socket, Some(process))
        }
    };
    let (_provider, caller) = echo_channel(&socket, "quick").await;
    for _ in 0..10 {
        println!("{:.0}", backbone::rate_in_flight(&caller).await);
    }
}

async fn fan_out(nats: bool) {
    let (socket, _process) = broker(false);
    let (_nats, url) = start_nats().await;
    for round in 0..3 {
        let rows = match nats {
            true => fan_out::nats(&url, round).await,
            false => fan_out::busline(&socket, round).await,
        };
        let rates: Vec<String> = rows
            .iter()
            .map(|(subscribers, rate, dropped)| {
                format!("{subscribers}: {rate:.0}/s ({dropped} dropped)")
            })
            .collect();
        println!("{}", rates.join(", "));
    }
}
