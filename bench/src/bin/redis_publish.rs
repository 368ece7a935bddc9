//! `redis_publish`: the Redis publish path of tower-ws-hub alone — how many messages a second
//! `Hub::publish` gets out to Redis through the pool (pipelined PUBLISH), with no WebSockets.
//!
//! ```text
//! redis_publish --redis redis://127.0.0.1:6379 --messages 1000000 --size 64 --rooms 64
//! ```
//!
//! Publishes to rooms with no local members (so only the broker works), as fast as the bounded
//! publish queue takes them (`Hub::publish_with_backpressure`, which waits for room in a full
//! queue; `--retry` instead uses `Hub::publish`, which refuses at once, and retries each refusal
//! after a `yield_now`, as this tool did before the waiting publish existed: that busy loop
//! takes a core from the publisher and Redis), and waits until Redis accepted every message.
//! Prints one JSON line: messages, seconds, messages per second, and the broker's published /
//! failed / dropped counters.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use tower_ws_hub::redis::RedisConfig;
use tower_ws_hub::{Hub, Message, PublishError};

#[derive(Debug, Parser)]
#[command(version, about = "Throughput of tower-ws-hub's Redis publish path")]
struct Args {
    /// The Redis to publish to.
    #[arg(long)]
    redis: String,
    /// Messages to publish.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Rooms the messages are spread over (round robin).
    #[arg(long, default_value_t = 64)]
    rooms: usize,
    /// Publish with `Hub::publish` and retry each refusal of a full queue after a `yield_now`
    /// (a busy loop), instead of waiting with `Hub::publish_with_backpressure`.
    #[arg(long)]
    retry: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("redis_publish: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("redis_publish: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> Result<String, Box<dyn std::error::Error>> {
    let hub = Hub::builder()
        .redis(RedisConfig::from_url(&args.redis)?)
        .build_connected(Duration::from_secs(5))
        .await?;
    let rooms: Vec<String> = (0..args.rooms.max(1))
        .map(|i| format!("bench-{i}"))
        .collect();
    let payload = Message::binary(vec![0x5a; args.size]);
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < args.messages {
        let room = &rooms[(sent as usize) % rooms.len()];
        if !args.retry {
            hub.publish_with_backpressure(room, payload.clone()).await?;
            sent += 1;
            continue;
        }
        match hub.publish(room, payload.clone()).await {
            Ok(_) => sent += 1,
            // The queue is full (or Redis hiccuped): let the publisher tasks catch up.
            Err(PublishError::BrokerUnavailable { .. }) => tokio::task::yield_now().await,
            Err(other) => return Err(other.into()),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = hub.broker_status();
        if status.published + status.publish_failures >= args.messages {
            break;
        }
        if Instant::now() > deadline {
            return Err("Redis did not accept every message within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let status = hub.broker_status();
    hub.shutdown().await;
    Ok(format!(
        "{{\"messages\":{},\"size\":{},\"rooms\":{},\"retry\":{},\"seconds\":{seconds:.3},\"messages_per_second\":{:.0},\"published\":{},\"publish_failures\":{},\"publish_dropped\":{}}}",
        args.messages,
        args.size,
        args.rooms,
        args.retry,
        args.messages as f64 / seconds,
        status.published,
        status.publish_failures,
        status.publish_dropped,
    ))
}
