//! A chat server: an axum app with WebSocket rooms, a small web page, and an HTTP endpoint that
//! publishes into a room from outside.
//!
//! What it shows:
//! - `HubLayer` added to an ordinary axum `Router`: `/ws/{room}` becomes WebSocket rooms, every
//!   other request reaches the router untouched;
//! - publishing from application code (`POST /rooms/{room}/messages`) with `Hub::publish`;
//! - connection hooks for logging, with the client's address from axum's `ConnectInfo`;
//! - graceful shutdown: on Ctrl-C or SIGTERM every client gets close code 1001 ("going away"),
//!   then the process exits with status 0.
//!
//! Run it:
//!
//! ```text
//! cargo run --example chat                    # listens on 127.0.0.1:3000 ($ADDR to change)
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example chat   # fan out across instances
//! RUST_LOG=debug cargo run --example chat     # more logs, including refused upgrades
//! ```
//!
//! Open <http://127.0.0.1:3000> in two browser tabs, join the same room and chat. Or use a CLI
//! client such as [websocat](https://github.com/vi/websocat):
//!
//! ```text
//! websocat ws://127.0.0.1:3000/ws/lobby
//! curl -i -d 'hello from curl' http://127.0.0.1:3000/rooms/lobby/messages
//! curl http://127.0.0.1:3000/healthz
//! ```

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use tower_ws_hub::redis::RedisConfig;
use tower_ws_hub::{Hub, HubLayer, Message, OriginPolicy, PublishError};
use tracing_subscriber::EnvFilter;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Largest message accepted by `POST /rooms/{room}/messages`, and from WebSocket clients.
const MAX_MESSAGE_SIZE: usize = 64 * 1024;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();

    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let hub = build_hub().await?;

    let app = Router::new()
        .route("/", get(index))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/rooms/{room}/messages", post(publish))
        .layer(DefaultBodyLimit::max(MAX_MESSAGE_SIZE))
        .with_state(hub.clone())
        // `Router::layer` also wraps the fallback, so `/ws/{room}` needs no route of its own.
        .layer(
            HubLayer::new(hub.clone())
                .route("/ws/{room}")
                // The page is served from this server, so only pages from this same origin (and
                // non-browser clients, which send no Origin) may open sockets: another site
                // cannot ride on a visitor's cookies (cross-site WebSocket hijacking).
                // The client's address (`ConnectionContext::remote_addr`) comes from axum's
                // `ConnectInfo`, found by default: see `into_make_service_with_connect_info`
                // below.
                .origin(OriginPolicy::SameOrigin),
        );

    let listener = tokio::net::TcpListener::bind(&addr).await?;

    let local_addr = listener.local_addr()?;

    // The hub writes each connection's queued frames in one go: Nagle's algorithm would only

    // delay them.

    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tracing::info!(%local_addr, "chat listening: open http://{local_addr}");

    // `shutdown_signal` waits for Ctrl-C or SIGTERM, closes every WebSocket with 1001 and waits
    // (up to the hub's grace period) for them to finish; then axum stops accepting and drains.
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(hub.shutdown_signal())
    .await?;

    tracing::info!("chat stopped");
    Ok(())
}

/// Everything about how the hub is made lives here. With `$REDIS_URL` set, several chat
/// processes behind a load balancer (or on two ports) behave as one hub, through Redis pub/sub;
/// without it the hub is in-process. `build()` never waits for Redis: when it is down at start-up
/// the hub serves local rooms and connects in the background (`/readyz` says when).
async fn build_hub() -> Result<Hub, BoxError> {
    let builder = Hub::builder()
        .max_message_size(MAX_MESSAGE_SIZE)
        .on_connect(|ctx| {
            tracing::info!(id = %ctx.id(), room = ctx.room(), remote = ?ctx.remote_addr(), "joined");
        })
        .on_disconnect(|ctx| {
            tracing::info!(id = %ctx.id(), room = ctx.room(), "left");
        });
    match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => {
            let config = RedisConfig::from_url(&url)?;
            tracing::info!(redis = ?config, "fanning out across instances through Redis");
            Ok(builder.redis(config).build())
        }
        _ => {
            tracing::info!("in-process hub (set REDIS_URL to fan out across instances)");
            Ok(builder.build())
        }
    }
}

/// Readiness: `200` when the hub can reach every instance (always, in-process), `503` with the
/// reason while Redis is unreachable. Local rooms keep working either way.
async fn readyz(State(hub): State<Hub>) -> Response {
    let status = hub.broker_status();
    if status.connected {
        (StatusCode::OK, "ready").into_response()
    } else {
        let why = status
            .last_error
            .unwrap_or_else(|| "broker not connected yet".to_owned());
        (StatusCode::SERVICE_UNAVAILABLE, why).into_response()
    }
}

async fn index() -> Html<&'static str> {
    Html(INDEX_HTML)
}

/// `POST /rooms/{room}/messages`: publishes the (UTF-8) request body to the room as a text message.
async fn publish(State(hub): State<Hub>, Path(room): Path<String>, body: String) -> Response {
    match hub.publish(&room, Message::text(body)).await {
        Ok(delivered) => (
            StatusCode::ACCEPTED,
            [(header::CONTENT_TYPE, "application/json")],
            format!("{{\"delivered\":{delivered}}}\n"),
        )
            .into_response(),
        Err(error @ PublishError::InvalidRoom(_)) => {
            (StatusCode::BAD_REQUEST, format!("{error}\n")).into_response()
        }
        Err(error @ PublishError::ShuttingDown) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("{error}\n")).into_response()
        }
        // Local members got it; other instances did not (Redis is down or overloaded). Say both.
        Err(PublishError::BrokerUnavailable {
            delivered_locally,
            reason,
        }) => {
            tracing::warn!(room, %reason, "publish reached local members only");
            (
                StatusCode::ACCEPTED,
                [(header::CONTENT_TYPE, "application/json")],
                format!("{{\"delivered\":{delivered_locally},\"other_instances\":false}}\n"),
            )
                .into_response()
        }
        Err(error) => {
            tracing::warn!(room, %error, "publish");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")).into_response()
        }
    }
}

const INDEX_HTML: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tower-ws-hub chat</title>
<style>
  :root { font-family: system-ui, sans-serif; color: #1d2330; background: #f4f5f7; }
  main { max-width: 42rem; margin: 2rem auto; padding: 1.5rem; background: #fff;
         border-radius: 10px; box-shadow: 0 1px 4px rgba(0,0,0,.08); }
  h1 { font-size: 1.3rem; margin: 0 0 .25rem; }
  p.hint { margin: 0 0 1rem; color: #5b6475; font-size: .9rem; }
  form { display: flex; gap: .5rem; margin: .5rem 0; }
  input { flex: 1; padding: .5rem .6rem; border: 1px solid #c9ced8; border-radius: 6px; font: inherit; }
  button { padding: .5rem 1rem; border: 0; border-radius: 6px; background: #2f6fed; color: #fff;
           font: inherit; cursor: pointer; }
  button:disabled { background: #aab3c5; cursor: default; }
  #state { display: inline-block; padding: .1rem .55rem; border-radius: 999px; font-size: .8rem;
           background: #e4e7ec; }
  #state.open { background: #d3f4dc; color: #13652d; }
  #state.connecting { background: #fff1c7; color: #7a5600; }
  #log { list-style: none; margin: .75rem 0; padding: .5rem; height: 20rem; overflow-y: auto;
         border: 1px solid #e4e7ec; border-radius: 6px; background: #fafbfc; }
  #log li { padding: .15rem 0; white-space: pre-wrap; word-break: break-word; }
  #log li.me { color: #2f6fed; }
  #log li.info { color: #7b8494; font-style: italic; }
</style>
</head>
<body>
<main>
  <h1>tower-ws-hub chat <span id="state">disconnected</span></h1>
  <p class="hint">Connects to <code id="url">ws://&lt;host&gt;/ws/&lt;room&gt;</code>.
     Publish from outside with <code>curl -d hi http://&lt;host&gt;/rooms/&lt;room&gt;/messages</code>.</p>
  <form id="join">
    <input id="room" value="lobby" placeholder="room" aria-label="room" required>
    <button id="connect">Connect</button>
  </form>
  <ul id="log"></ul>
  <form id="send">
    <input id="text" placeholder="message" aria-label="message" autocomplete="off" disabled>
    <button id="sendButton" disabled>Send</button>
  </form>
</main>
<script>
(() => {
  const $ = (id) => document.getElementById(id);
  let socket = null;

  const wsUrl = (room) =>
    (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws/" +
    encodeURIComponent(room);

  function log(text, kind) {
    const li = document.createElement("li");
    li.textContent = text;   // never innerHTML: messages come from other people
    if (kind) li.className = kind;
    $("log").appendChild(li);
    $("log").scrollTop = $("log").scrollHeight;
  }

  function setState(state) {
    $("state").textContent = state;
    $("state").className = state;
    const open = state === "open";
    $("text").disabled = !open;
    $("sendButton").disabled = !open;
    $("connect").textContent = state === "disconnected" ? "Connect" : "Disconnect";
    if (open) $("text").focus();
  }

  function showUrl() {
    const room = $("room").value.trim();
    $("url").textContent = room ? wsUrl(room) : wsUrl("") + "<room>";
  }
  $("room").addEventListener("input", showUrl);
  showUrl();

  $("join").addEventListener("submit", (event) => {
    event.preventDefault();
    if (socket) { socket.close(1000); return; }
    const room = $("room").value.trim();
    if (!room) return;
    const ws = new WebSocket(wsUrl(room));
    socket = ws;
    setState("connecting");
    ws.onopen = () => { setState("open"); log("joined " + room, "info"); };
    ws.onmessage = (event) => {
      if (typeof event.data === "string") log(event.data);
      else log("(binary message, " + event.data.size + " bytes)", "info");
    };
    ws.onclose = (event) => {
      if (socket === ws) socket = null;
      setState("disconnected");
      log("closed (" + event.code + (event.reason ? ": " + event.reason : "") + ")", "info");
    };
  });

  $("send").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("text").value;
    if (!text || !socket || socket.readyState !== WebSocket.OPEN) return;
    socket.send(text);
    log(text, "me");   // the hub does not echo a message back to its sender
    $("text").value = "";
  });
})();
</script>
</body>
</html>
"#;
