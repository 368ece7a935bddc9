//! `baseline`: WebSocket rooms the way an axum user writes them without tower-ws-hub. It is
//! what tower-ws-hub is measured against, so it is written honestly and idiomatically, not to
//! lose.
//!
//! ```text
//! baseline --addr 127.0.0.1:3000                           # one instance, in-process rooms
//! baseline --addr 127.0.0.1:3001 --redis redis://127.0.0.1:6379  # instances share rooms
//! ```
//!
//! - `GET /ws/{room}`: axum's `WebSocketUpgrade` with its default settings. Each room is a
//!   `tokio::sync::broadcast` channel (capacity 1024) in a `Mutex<HashMap>`. Each connection
//!   is split into a sender task (broadcast receiver → one `send` per message) and a receiver
//!   task (socket → broadcast); a client's own messages are skipped by comparing the client id
//!   carried alongside each message. A lagging receiver skips what it missed and continues.
//! - `--redis URL`: every message a client sends goes to the local room first, then is
//!   `PUBLISH`ed to `{prefix}:{room}` (awaited before the client's next message is read, which
//!   keeps its messages in order) through one multiplexed connection shared by all clients; one
//!   `PSUBSCRIBE {prefix}:*` connection feeds what other instances publish into the local
//!   rooms. Messages carry the publishing instance's id so that an instance ignores its own.
//! - `GET /healthz`, `GET /stats` (VmRSS, VmHWM, open connections), `--workers`, `--nodelay`,
//!   `--check`: shared with `hub_server`.
//! - `--read-buffer-size` / `--write-buffer-size` override axum's socket buffers, for
//!   experiments ("what if the user had tuned them?"); the benchmarks run without them.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;
use bytes::{BufMut, Bytes, BytesMut};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use redis::AsyncCommands;
use tokio::sync::broadcast;
use tower_ws_hub_bench::serve::{self, ServerArgs};
use tower_ws_hub_bench::sys;

/// Messages a room buffers for its slowest receiver.
const ROOM_CAPACITY: usize = 1024;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Hand-rolled axum + broadcast WebSocket rooms, for benchmarks"
)]
struct Args {
    #[command(flatten)]
    server: ServerArgs,
    /// Share rooms with other instances through this Redis.
    #[arg(long)]
    redis: Option<String>,
    /// Redis channel prefix.
    #[arg(long, default_value = "rooms")]
    redis_prefix: String,
    /// Override axum's WebSocket read buffer size (for experiments; default: axum's).
    #[arg(long)]
    read_buffer_size: Option<usize>,
    /// Override axum's WebSocket write buffer size (for experiments; default: axum's).
    #[arg(long)]
    write_buffer_size: Option<usize>,
}

/// A message and the client that sent it (0: another instance).
#[derive(Debug, Clone)]
struct Envelope {
    from: u64,
    message: Message,
}

#[derive(Clone)]
struct AppState {
    buffers: (Option<usize>, Option<usize>),
    rooms: Arc<Mutex<HashMap<String, broadcast::Sender<Envelope>>>>,
    next_client_id: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
    redis: Option<RedisPublisher>,
}

impl AppState {
    fn join(&self, room: &str) -> broadcast::Sender<Envelope> {
        let mut rooms = self.rooms.lock().unwrap();
        rooms
            .entry(room.to_owned())
            .or_insert_with(|| broadcast::channel(ROOM_CAPACITY).0)
            .clone()
    }

    fn leave(&self, room: &str) {
        let mut rooms = self.rooms.lock().unwrap();
        if rooms.get(room).is_some_and(|tx| tx.receiver_count() == 0) {
            rooms.remove(room);
        }
    }

    /// Delivers to the local members of `room`, if it has any.
    fn deliver_local(&self, room: &str, envelope: Envelope) {
        if let Some(tx) = self.rooms.lock().unwrap().get(room) {
            let _ = tx.send(envelope);
        }
    }
}

async fn ws_handler(
    ws: WebSocketUpgrade,
    Path(room): Path<String>,
    State(state): State<AppState>,
) -> Response {
    let ws = match state.buffers {
        (Some(read), _) => ws.read_buffer_size(read),
        _ => ws,
    };
    let ws = match state.buffers {
        (_, Some(write)) => ws.write_buffer_size(write),
        _ => ws,
    };
    ws.on_upgrade(move |socket| handle_socket(socket, room, state))
}

async fn handle_socket(socket: WebSocket, room: String, state: AppState) {
    let id = state.next_client_id.fetch_add(1, Ordering::Relaxed);
    state.connections.fetch_add(1, Ordering::Relaxed);
    let tx = state.join(&room);
    let mut rx = tx.subscribe();
    let (mut sender, mut receiver) = socket.split();

    let mut send_task = tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(envelope) if envelope.from == id => {}
                Ok(envelope) => {
                    if sender.send(envelope.message).await.is_err() {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    });

    let publisher = state.redis.clone();
    let room_name = room.clone();
    let mut recv_task = tokio::spawn(async move {
        while let Some(Ok(message)) = receiver.next().await {
            match message {
                Message::Text(_) | Message::Binary(_) => {
                    // Local members first: they need not wait for Redis. Awaiting the PUBLISH
                    // before reading on keeps this client's messages in order across instances.
                    let _ = tx.send(Envelope {
                        from: id,
                        message: message.clone(),
                    });
                    if let Some(redis) = &publisher {
                        redis.publish(&room_name, &message).await;
                    }
                }
                Message::Close(_) => break,
                Message::Ping(_) | Message::Pong(_) => {}
            }
        }
    });

    // When either side ends, stop the other, and wait for it to drop its half (and its
    // broadcast receiver) before leaving the room.
    tokio::select! {
        _ = &mut send_task => {
            recv_task.abort();
            let _ = recv_task.await;
        }
        _ = &mut recv_task => {
            send_task.abort();
            let _ = send_task.await;
        }
    }
    state.leave(&room);
    state.connections.fetch_sub(1, Ordering::Relaxed);
}

/// Publishes what local clients send, for the other instances.
#[derive(Clone)]
struct RedisPublisher {
    connection: redis::aio::MultiplexedConnection,
    prefix: Arc<str>,
    instance: u64,
}

const KIND_TEXT: u8 = 0;
const KIND_BINARY: u8 = 1;

impl RedisPublisher {
    async fn publish(&self, room: &str, message: &Message) {
        let (kind, payload): (u8, &[u8]) = match message {
            Message::Text(text) => (KIND_TEXT, text.as_str().as_bytes()),
            Message::Binary(bytes) => (KIND_BINARY, bytes),
            _ => return,
        };
        // Wire format: origin instance id (8 bytes LE), kind (1 byte), payload.
        let mut envelope = BytesMut::with_capacity(9 + payload.len());
        envelope.put_u64_le(self.instance);
        envelope.put_u8(kind);
        envelope.put_slice(payload);
        let mut connection = self.connection.clone();
        let channel = format!("{}:{room}", self.prefix);
        if let Err(error) = connection
            .publish::<_, _, ()>(channel, envelope.as_ref())
            .await
        {
            tracing::warn!(%error, "baseline: PUBLISH failed");
        }
    }
}

/// Feeds what other instances publish into the local rooms; reconnects when Redis goes away.
async fn redis_subscriber(client: redis::Client, prefix: Arc<str>, instance: u64, state: AppState) {
    let pattern = format!("{prefix}:*");
    loop {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => match pubsub.psubscribe(&pattern).await {
                Ok(()) => {
                    let mut messages = pubsub.on_message();
                    while let Some(msg) = messages.next().await {
                        let Some(room) = msg
                            .get_channel_name()
                            .strip_prefix(&*prefix)
                            .and_then(|rest| rest.strip_prefix(':'))
                        else {
                            continue;
                        };
                        let Some(message) = decode(msg.get_payload_bytes(), instance) else {
                            continue;
                        };
                        state.deliver_local(room, Envelope { from: 0, message });
                    }
                    tracing::warn!("baseline: Redis subscription ended, reconnecting");
                }
                Err(error) => tracing::warn!(%error, "baseline: PSUBSCRIBE failed"),
            },
            Err(error) => tracing::warn!(%error, "baseline: cannot reach Redis for PSUBSCRIBE"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A message published by another instance; `None` for our own or a malformed one.
fn decode(envelope: &[u8], instance: u64) -> Option<Message> {
    let origin = u64::from_le_bytes(envelope.get(..8)?.try_into().ok()?);
    if origin == instance {
        return None;
    }
    let payload = Bytes::copy_from_slice(envelope.get(9..)?);
    match *envelope.get(8)? {
        KIND_TEXT => Some(Message::Text(payload.try_into().ok()?)),
        KIND_BINARY => Some(Message::Binary(payload)),
        _ => None,
    }
}

/// An id that differs between instances: process id and start time.
fn instance_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (u64::from(std::process::id()) << 40) ^ nanos
}

async fn run(args: Args) -> Result<(), String> {
    let instance = instance_id();
    let mut state = AppState {
        buffers: (args.read_buffer_size, args.write_buffer_size),
        rooms: Arc::default(),
        next_client_id: Arc::new(AtomicU64::new(1)),
        connections: Arc::default(),
        redis: None,
    };
    let mut redis_client = None;
    if let Some(url) = &args.redis {
        let client =
            redis::Client::open(url.as_str()).map_err(|e| format!("--redis {url}: {e}"))?;
        let connection = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| format!("--redis {url}: {e}"))?;
        state.redis = Some(RedisPublisher {
            connection,
            prefix: Arc::from(args.redis_prefix.as_str()),
            instance,
        });
        redis_client = Some(client);
    }
    if let Some(client) = redis_client {
        tokio::spawn(redis_subscriber(
            client,
            Arc::from(args.redis_prefix.as_str()),
            instance,
            state.clone(),
        ));
    }
    let connections = Arc::clone(&state.connections);
    let app = Router::new()
        .route("/ws/{room}", get(ws_handler))
        .with_state(state)
        .merge(serve::admin_routes(move || {
            connections.load(Ordering::Relaxed)
        }));
    serve::serve(&args.server, app, serve::os_signal())
        .await
        .map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(error) = args.server.validate() {
        eprintln!("baseline: {error}");
        return ExitCode::from(2);
    }
    if args.server.check {
        return ExitCode::SUCCESS;
    }
    sys::raise_fd_limit();
    serve::init_tracing();
    let result = serve::runtime(args.server.workers)
        .map_err(|e| e.to_string())
        .and_then(|runtime| runtime.block_on(run(args)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("baseline: {error}");
            ExitCode::FAILURE
        }
    }
}
