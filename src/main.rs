//! `busline`: run a demo server, call any busline server, or see it all work
//! with `busline demo`.

mod cli;

use std::process::ExitCode;

/// A broker allocates a little for every message it passes on, on one
/// thread, and frees it on another: mimalloc does that much faster than
/// the system allocator (bench-peers shows the difference in fan-out).
/// Built not to ask for transparent huge pages (`no_thp`): memory mimalloc
/// returned between bursts came back as a 2 MiB page to zero on the next
/// burst, a third of the broker's time feeding one subscriber. (Where the
/// kernel's THP setting is `always`, `MIMALLOC_ALLOW_THP=0` turns them off.)
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

/// Inter-process communication over Unix sockets, TCP and memory.
///
/// Addresses are URLs: unix:///run/app.sock, tcp://127.0.0.1:7400,
/// optionally with ?codec=jsonline, ?codec=jsonrpc or ?codec=cbor (the
/// default), or --codec.
#[derive(Debug, Parser)]
#[command(name = "busline", version)]
struct Cli {
    /// Threads that run the work (default: one per CPU core). With 1,
    /// everything runs on one thread: no hand-offs between threads, which
    /// answers each message soonest where cores are few and shared (a
    /// broker on a small machine); more threads pass more messages at
    /// once where cores are many.
    #[arg(
        long,
        global = true,
        value_name = "N",
        value_parser = clap::value_parser!(u16).range(1..=1024)
    )]
    threads: Option<u16>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a server, call it, stream from it, print what happens, exit.
    Demo,
    /// Serve the demo service (echo, add, sum, count, sleep, fail, log)
    /// until Ctrl-C or SIGTERM.
    Serve {
        /// Where to listen, e.g. unix:///tmp/busline.sock or tcp://127.0.0.1:7400.
        #[arg(required_unless_present = "shm_rpc_bridge")]
        url: Option<String>,
        /// Also serve shm-rpc-bridge's Python clients, as service NAME
        /// (RPCClient("NAME").call("add", a=1, b=2)).
        #[arg(long, value_name = "NAME")]
        shm_rpc_bridge: Option<String>,
        #[command(flatten)]
        codec: cli::CodecArgs,
        #[command(flatten)]
        auth: cli::AuthArgs,
    },
    /// Run a broker: clients open channels on it, provide methods and call
    /// each other through it, across all its listeners.
    Broker {
        #[command(flatten)]
        broker: Box<cli::BrokerArgs>,
        #[command(flatten)]
        auth: cli::AuthArgs,
    },
    /// Serve HTTP in front of a broker, until Ctrl-C or SIGTERM: POST
    /// /v1/channels/{channel}/call/{method} with JSON arguments, GET
    /// /v1/openapi.json.
    Gateway {
        #[command(flatten)]
        args: cli::gateway::GatewayArgs,
        #[command(flatten)]
        auth: cli::AuthArgs,
    },
    /// Join two brokers: the providers of each answer the callers of the
    /// other, until Ctrl-C or SIGTERM.
    Bridge {
        #[command(flatten)]
        args: cli::bridge::BridgeArgs,
        #[command(flatten)]
        auth: cli::AuthArgs,
    },
    /// Publish a JSON message on a broker channel's topic.
    Pub {
        #[command(flatten)]
        args: cli::bus::PubArgs,
        #[command(flatten)]
        auth: cli::AuthArgs,
    },
    /// Print what is published on a broker channel, one JSON line each.
    Sub {
        #[command(flatten)]
        args: cli::bus::SubArgs,
        #[command(flatten)]
        auth: cli::AuthArgs,
    },
    /// Print a broker's clients and channels (owners, providers,
    /// subscriptions) as JSON.
    Status {
        #[command(flatten)]
        args: cli::bus::BusArgs,
        #[command(flatten)]
        auth: cli::AuthArgs,
    },
    /// Call a method and print its JSON result (or each item of a stream).
    Call {
        #[command(flatten)]
        call: cli::CallArgs,
        #[command(flatten)]
        auth: cli::AuthArgs,
    },
}

/// The async runtime on `threads` threads, or one per core.
fn runtime(threads: Option<u16>) -> std::io::Result<tokio::runtime::Runtime> {
    use tokio::runtime::Builder;
    match threads {
        Some(1) => Builder::new_current_thread().enable_all().build(),
        Some(n) => Builder::new_multi_thread()
            .worker_threads(n.into())
            .enable_all()
            .build(),
        None => Builder::new_multi_thread().enable_all().build(),
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match runtime(cli.threads) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("busline: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Demo => cli::demo::run().await,
            Command::Serve {
                url,
                shm_rpc_bridge,
                codec,
                auth,
            } => {
                let url = url.as_deref();
                let srb = shm_rpc_bridge.as_deref();
                cli::serve(url, srb, &codec, auth.authenticator()?).await
            }
            Command::Broker { broker, auth } => cli::broker(*broker, &auth).await,
            Command::Gateway { args, auth } => cli::gateway::run(args, &auth).await,
            Command::Bridge { args, auth } => cli::bridge::run(args, auth.authenticator()?).await,
            Command::Pub { args, auth } => cli::bus::publish(args, auth.authenticator()?).await,
            Command::Sub { args, auth } => cli::bus::subscribe(args, auth.authenticator()?).await,
            Command::Status { args, auth } => cli::bus::status(args, auth.authenticator()?).await,
            Command::Call { call, auth } => cli::call(call, auth.authenticator()?).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("busline: {e}");
            ExitCode::FAILURE
        }
    }
}
