//! `loadgen`: the load generator for any server that serves WebSocket rooms on `/ws/{room}`
//! (tower-ws-hub's `hub_server`, the `baseline`, or your own application).
//!
//! ```text
//! # 1000 subscribers in one room, 1 publisher, 200 messages of 64 bytes, as fast as possible:
//! loadgen pubsub --url 'ws://127.0.0.1:3000/ws/{room}' --subscribers 1000 --publishers 1 \
//!     --messages 200 --size 64
//!
//! # Two instances, 1000 rooms x 5 subscribers, 10 publishers spread over both, 1000 msgs each:
//! loadgen pubsub --url ws://127.0.0.1:3000/ws --url ws://127.0.0.1:3001/ws --rooms 1000 \
//!     --subscribers 5000 --publishers 10 --messages 1000 --publish-via all
//!
//! # Fixed rate: 1000 msg/s for 10 s from one publisher:
//! loadgen pubsub --url ws://127.0.0.1:3000/ws --subscribers 1000 --rate 1000 --duration 10
//!
//! # Server memory per idle connection (the server must serve GET /stats, see below):
//! loadgen idle --url ws://127.0.0.1:3000/ws --connections 10000 --rooms 100
//!
//! # Memory after one 64 KiB broadcast to 2000 sockets, watched for 5 s:
//! loadgen pubsub --url ws://127.0.0.1:3000/ws --subscribers 2000 --messages 1 --size 65536 \
//!     --watch-rss 5
//!
//! # The table of a bench/run.sh result directory:
//! loadgen summarize bench/results/20250101-120000
//! ```
//!
//! A URL is a template: `{room}` is replaced by the room name (`bench-0`, `bench-1`, ...), or
//! the room is appended as the last path segment. Several `--url`s stand for several server
//! instances; subscribers are spread over them round-robin.
//!
//! The report is one JSON document on stdout; a one-line summary goes to stderr. `--server-stats`,
//! `--watch-rss` and `idle` read `GET /stats` from each server (same host and port as the
//! WebSocket URL): `{"vm_rss_kib": .., "vm_hwm_kib": .., "connections": ..}`.
//!
//! The load generator raises its open-file limit to the hard limit, opens at most
//! `--connect-concurrency` handshakes at a time, and runs on one thread unless `--threads` says
//! otherwise, so that it leaves the other core(s) to the server.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tower_ws_hub_bench::loadgen::{idle, pubsub};
use tower_ws_hub_bench::{clock, summary, sys};

#[derive(Debug, Parser)]
#[command(version, about = "Load generator for WebSocket room servers")]
struct Cli {
    /// Runtime threads; 1 runs everything on the current thread.
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Subscribers and publishers: throughput, latency, loss, duplicates, reordering.
    Pubsub(PubsubArgs),
    /// Many idle connections: the servers' RSS per connection.
    Idle(IdleArgs),
    /// Print the results table of a `bench/run.sh` result directory.
    Summarize {
        /// Directory holding `{scenario}__{impl}__{rep}.json` files.
        dir: PathBuf,
        /// Scenario order, comma-separated (others follow alphabetically).
        #[arg(long, value_delimiter = ',')]
        order: Vec<String>,
    },
    /// Print a free TCP port on 127.0.0.1 (for scripts).
    FreePort,
}

#[derive(Debug, clap::Args)]
struct PubsubArgs {
    /// WebSocket URL template of a server instance (repeat for several instances).
    #[arg(long = "url", required = true)]
    urls: Vec<String>,
    /// Subscriber connections in total (spread over rooms, then over URLs).
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Number of rooms.
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    /// Number of publishers (each holds one connection per room it publishes to).
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Messages per publisher (burst mode).
    #[arg(long, default_value_t = 200)]
    messages: u64,
    /// Payload bytes per message (at least 24, the header).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Fixed-rate mode: messages per second per publisher.
    #[arg(long)]
    rate: Option<f64>,
    /// Fixed-rate mode: seconds to publish.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Burst mode: run the publishers on the subscribers' runtime instead of a thread of their
    /// own (how burst runs worked before session 11). There, the subscribers' reads pace the
    /// publishers: the burst is sent only as fast as the load generator's one thread gets round
    /// to it between reads.
    #[arg(long)]
    publishers_share_thread: bool,
    /// Where publisher connections go.
    #[arg(long, value_enum, default_value_t = pubsub::PublishVia::First)]
    publish_via: pubsub::PublishVia,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Seconds to wait for every subscriber to receive a readiness probe.
    #[arg(long, default_value_t = 30.0)]
    ready_timeout: f64,
    /// Milliseconds of quiet between readiness and the load.
    #[arg(long, default_value_t = 200)]
    settle_ms: u64,
    /// Seconds without any delivery after which the run ends.
    #[arg(long, default_value_t = 5.0)]
    drain_timeout: f64,
    /// Room name prefix.
    #[arg(long, default_value = "bench")]
    room_prefix: String,
    /// Read the servers' GET /stats before and after the load.
    #[arg(long)]
    server_stats: bool,
    /// After the load, sample the servers' RSS for this many seconds.
    #[arg(long)]
    watch_rss: Option<f64>,
    /// Free text copied into the report.
    #[arg(long, default_value = "")]
    label: String,
}

#[derive(Debug, clap::Args)]
struct IdleArgs {
    /// WebSocket URL template of a server instance (repeat for several instances).
    #[arg(long = "url", required = true)]
    urls: Vec<String>,
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Rooms to spread them over.
    #[arg(long, default_value_t = 100)]
    rooms: usize,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Seconds to wait after the servers counted every connection, before measuring.
    #[arg(long, default_value_t = 2.0)]
    settle: f64,
    /// Seconds to keep the connections open after measuring.
    #[arg(long, default_value_t = 0.0)]
    hold: f64,
    /// After the idle measurement, each connection sends one binary message of this many
    /// bytes, and the servers' memory is measured again after `--settle` (give each
    /// connection a room of its own: `--rooms` = `--connections`).
    #[arg(long)]
    send_once: Option<usize>,
    /// Room name prefix.
    #[arg(long, default_value = "idle")]
    room_prefix: String,
    /// Handshakes carry a browser's headers (Chrome's, a session cookie, the server's own
    /// `Origin`: about 600 bytes), so that what a server keeps of them shows in the figure.
    #[arg(long)]
    browser_headers: bool,
    /// Free text copied into the report.
    #[arg(long, default_value = "")]
    label: String,
}

fn secs(value: f64) -> Duration {
    Duration::from_secs_f64(value.max(0.0))
}

fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
}

/// Runs a scenario; prints its one-line summary on stderr and its report as JSON on stdout.
fn run_and_print<R: serde::Serialize>(
    threads: usize,
    scenario: impl std::future::Future<Output = Result<R, String>>,
    human: fn(&R) -> String,
) -> ExitCode {
    let report = match runtime(threads) {
        Ok(runtime) => runtime.block_on(scenario),
        Err(error) => Err(format!("runtime: {error}")),
    };
    match report.and_then(|r| {
        serde_json::to_string_pretty(&r)
            .map(|json| (r, json))
            .map_err(|e| e.to_string())
    }) {
        Ok((report, json)) => {
            eprintln!("{}", human(&report));
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("loadgen: {error}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    clock::epoch();
    match cli.command {
        Command::Summarize { dir, order } => match summary::table(&dir, &order) {
            Ok(table) => {
                print!("{table}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("loadgen: {error}");
                ExitCode::FAILURE
            }
        },
        Command::FreePort => match std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
        {
            Ok(addr) => {
                println!("{}", addr.port());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("loadgen: {error}");
                ExitCode::FAILURE
            }
        },
        Command::Pubsub(args) => {
            let limit = sys::raise_fd_limit();
            let needed = args.subscribers + args.publishers.max(args.rooms) + 64;
            if (limit as usize) < needed {
                eprintln!("loadgen: warning: open-file limit {limit} < ~{needed} sockets needed");
            }
            let options = pubsub::Options {
                urls: args.urls,
                subscribers: args.subscribers,
                rooms: args.rooms,
                publishers: args.publishers,
                messages: args.messages,
                size: args.size,
                rate: args.rate.filter(|rate| *rate > 0.0),
                duration: secs(args.duration),
                publish_via: args.publish_via,
                publishers_share_thread: args.publishers_share_thread,
                connect_concurrency: args.connect_concurrency,
                ready_timeout: secs(args.ready_timeout),
                settle: Duration::from_millis(args.settle_ms),
                drain_timeout: secs(args.drain_timeout),
                room_prefix: args.room_prefix,
                server_stats: args.server_stats,
                watch_rss: args.watch_rss.map(secs),
                label: args.label,
            };
            run_and_print(cli.threads, pubsub::run(options), pubsub::Report::human)
        }
        Command::Idle(args) => {
            let limit = sys::raise_fd_limit();
            if (limit as usize) < args.connections + 64 {
                eprintln!(
                    "loadgen: warning: open-file limit {limit} < ~{} sockets needed",
                    args.connections + 64
                );
            }
            let options = idle::Options {
                urls: args.urls,
                connections: args.connections,
                rooms: args.rooms,
                connect_concurrency: args.connect_concurrency,
                settle: secs(args.settle),
                hold: secs(args.hold),
                send_once: args.send_once,
                room_prefix: args.room_prefix,
                browser_headers: args.browser_headers,
                label: args.label,
            };
            run_and_print(cli.threads, idle::run(options), idle::Report::human)
        }
    }
}
