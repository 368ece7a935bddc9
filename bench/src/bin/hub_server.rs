//! `hub_server`: the benchmark server built on tower-ws-hub.
//!
//! ```text
//! hub_server --addr 127.0.0.1:3000            # prints "listening on 127.0.0.1:3000"
//! hub_server --addr 127.0.0.1:0               # any free port; the line says which
//! ```
//!
//! Routes: WebSocket rooms on `/ws/{room}` (a [`HubLayer`] on an axum `Router`, with
//! `Hub::builder()` defaults and nothing else), `GET /healthz`, and `GET /stats` (VmRSS, VmHWM
//! and open connections as JSON, for the load generator's memory scenarios). Flags shared with
//! the baseline: `--workers N`, `--nodelay`, `--check`. `--read-buffer-size BYTES`,
//! `--no-request-headers`, `--strip-original-uri`, `--write-interval-us`,
//! `--max-write-interval-us` and `--hub-nagle` change one thing each, for experiments (see
//! BENCHMARKS.md); the benchmarks run without them.
//!
//! `--redis URL` fans out across instances through that Redis (`RedisConfig::from_url`, defaults;
//! `--publish-queue N` and `--no-client-backpressure` change one setting each, for experiments).
//! `--keep-no-extensions` is the documented memory setting for large numbers of connections
//! (`HubBuilder::keep_no_extensions`). Stops gracefully on Ctrl-C or SIGTERM
//! ([`Hub::shutdown_signal`]), then prints the hub's counters ([`Hub::stats`]: deliveries,
//! drops, backlog holds, ...) and its broker status to stdout, which `bench/run.sh` keeps in
//! the run's `logs/`.

use std::io::Write;
use std::process::ExitCode;

use axum::Router;
use clap::Parser;
use tower_ws_hub::redis::RedisConfig;
use tower_ws_hub::{Hub, HubLayer};
use tower_ws_hub_bench::serve::{self, ServerArgs};
use tower_ws_hub_bench::sys;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "WebSocket rooms served by tower-ws-hub, for benchmarks"
)]
struct Args {
    #[command(flatten)]
    server: ServerArgs,
    /// Fan out across instances through this Redis.
    #[arg(long)]
    redis: Option<String>,
    /// Override `RedisConfig::publish_queue` (for experiments; default: the hub's default).
    /// At least 1, as `RedisConfig::publish_queue` asks.
    #[arg(long, requires = "redis",
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    publish_queue: Option<usize>,
    /// Override `RedisConfig::publisher_tasks` (for experiments; default: the hub's default).
    #[arg(long, requires = "redis",
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    publisher_tasks: Option<usize>,
    /// Override `RedisConfig::subscriber_connections` (for experiments; default: the hub's
    /// default).
    #[arg(long, requires = "redis",
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    subscriber_connections: Option<usize>,
    /// Override `RedisConfig::max_pipeline` (for experiments; default: the hub's default).
    #[arg(long, requires = "redis",
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    max_pipeline: Option<usize>,
    /// `RedisConfig::client_backpressure(false)`: refuse clients' messages the full publish
    /// queue cannot take instead of reading the clients more slowly (for experiments).
    #[arg(long, requires = "redis")]
    no_client_backpressure: bool,
    /// `HubBuilder::keep_no_extensions()`: connections keep no request extensions (they would
    /// keep hyper's read buffer alive through axum's `OriginalUri`).
    #[arg(long)]
    keep_no_extensions: bool,
    /// Override `HubBuilder::read_buffer_size` (for experiments; default: the hub's default).
    #[arg(long)]
    read_buffer_size: Option<usize>,
    /// `HubBuilder::keep_request_headers(false)` (for experiments; default: the hub's default).
    #[arg(long)]
    no_request_headers: bool,
    /// Remove axum's `OriginalUri` request extension before the hub sees the request (for
    /// experiments: it is a slice of hyper's read buffer, which it keeps alive).
    #[arg(long)]
    strip_original_uri: bool,
    /// Override `HubBuilder::write_interval`, in microseconds (0 turns it off; for
    /// experiments; default: the hub's default).
    #[arg(long)]
    write_interval_us: Option<u64>,
    /// Override `HubBuilder::max_write_interval`, in microseconds (at most the write interval
    /// keeps it fixed; for experiments; default: the hub's default).
    #[arg(long)]
    max_write_interval_us: Option<u64>,
    /// `HubBuilder::tcp_nodelay(false)`: leave Nagle's algorithm on for the hub's WebSockets
    /// (for experiments; default: the hub's default, Nagle off).
    #[arg(long)]
    hub_nagle: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(error) = args.server.validate() {
        eprintln!("hub_server: {error}");
        return ExitCode::from(2);
    }
    let redis = match args.redis.as_deref().map(RedisConfig::from_url).transpose() {
        Ok(redis) => redis.map(|mut redis| {
            if let Some(messages) = args.publish_queue {
                redis = redis.publish_queue(messages);
            }
            if let Some(tasks) = args.publisher_tasks {
                redis = redis.publisher_tasks(tasks);
            }
            if let Some(connections) = args.subscriber_connections {
                redis = redis.subscriber_connections(connections);
            }
            if let Some(commands) = args.max_pipeline {
                redis = redis.max_pipeline(commands);
            }
            redis.client_backpressure(!args.no_client_backpressure)
        }),
        Err(error) => {
            eprintln!("hub_server: --redis: {error}");
            return ExitCode::from(2);
        }
    };
    if args.server.check {
        return ExitCode::SUCCESS;
    }
    sys::raise_fd_limit();
    serve::init_tracing();
    let result = serve::runtime(args.server.workers).and_then(|runtime| {
        runtime.block_on(async {
            let mut builder = Hub::builder();
            if let Some(bytes) = args.read_buffer_size {
                builder = builder.read_buffer_size(bytes);
            }
            if let Some(us) = args.write_interval_us {
                builder = builder.write_interval(std::time::Duration::from_micros(us));
            }
            if let Some(us) = args.max_write_interval_us {
                builder = builder.max_write_interval(std::time::Duration::from_micros(us));
            }
            if args.hub_nagle {
                builder = builder.tcp_nodelay(false);
            }
            if args.no_request_headers {
                builder = builder.keep_request_headers(false);
            }
            if args.keep_no_extensions {
                builder = builder.keep_no_extensions();
            }
            if let Some(redis) = redis {
                builder = builder.redis(redis);
            }
            let hub = builder.build();
            let stats_hub = hub.clone();
            let mut app: Router = serve::admin_routes(move || stats_hub.connection_count())
                .layer(HubLayer::new(hub.clone()).route("/ws/{room}"));
            if args.strip_original_uri {
                // A later `layer` runs first: after the router inserted `OriginalUri`, before
                // the hub layer keeps the request's extensions.
                app = app.layer(axum::middleware::map_request(
                    |mut request: axum::extract::Request| async move {
                        request
                            .extensions_mut()
                            .remove::<axum::extract::OriginalUri>();
                        request
                    },
                ));
            }
            let served = serve::serve(&args.server, app, hub.shutdown_signal()).await;
            // For the run's logs: what the hub counted (backlog holds, drops, ...). Not
            // `println!`: a reader that is gone (`| head -1`) must not turn a clean stop into
            // a panic.
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "hub stats: {:?}", hub.stats());
            // After the shutdown: the connection flags say "down"; the counters are the run's.
            let _ = writeln!(
                stdout,
                "broker status (after shutdown): {:?}",
                hub.broker_status()
            );
            served
        })
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("hub_server: {error}");
            ExitCode::FAILURE
        }
    }
}
