//! A chat server: an axum app with WebSocket rooms, a small web page, and an HTTP endpoint that
//! publishes into a room from outside.
//!
//! What it shows:
//! - `HubLayer` added to an ordinary axum `Router`: `/ws/{room}` becomes WebSocket rooms, every
//!   other request reaches the router untouched;
//! - publishing from application code (`POST /rooms/{room}/messages`) with `Hub::publish`;
//! - connection hooks for logging, with the client's address from axum's `ConnectInfo`;
//! - liveness and readiness: `/healthz` always answers `200`; `/readyz` answers `503` with the
//!   reason while Redis is unreachable (local rooms keep working meanwhile);
//! - graceful shutdown: on Ctrl-C or SIGTERM every client gets close code 1001 ("going away"),
//!   then the process exits with status 0; a second Ctrl-C or SIGTERM while that is under way
//!   (a client that never answers its close holds it for the hub's 10 s grace period) exits at
//!   once with status 1.
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
//! curl -i http://127.0.0.1:3000/readyz
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
        // Anyone who can reach the server may publish here, a form on another site included
        // (`SameOrigin` guards the WebSocket upgrade only): put it behind your authentication
        // (see examples/auth.rs) or on an internal listener before you copy it.
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

    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|error| format!("cannot listen on $ADDR ({addr}): {error}"))?;

    let local_addr = listener.local_addr()?;

    // The hub writes each connection's queued frames in one go: Nagle's algorithm would only
    // delay them.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tracing::info!(%local_addr, "chat listening: open http://{local_addr}");

    // The first Ctrl-C or SIGTERM starts the graceful shutdown (`shutdown_signal` below hears
    // it); a second one, while that is under way, ends the process at once.
    tokio::spawn(exit_on_second_signal());
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

/// Listens for termination signals from now on (Ctrl-C or SIGTERM; the first also reaches
/// `Hub::shutdown_signal`) and returns a future that, at the second one, exits with status 1
/// without waiting for anything.
fn exit_on_second_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let signals = {
        use tokio::signal::unix::{SignalKind, signal};
        signal(SignalKind::interrupt()).and_then(|i| Ok((i, signal(SignalKind::terminate())?)))
    };
    async move {
        #[cfg(unix)]
        {
            let Ok((mut interrupt, mut terminate)) = signals else {
                return;
            };
            for _ in 0..2 {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
            }
        }
        #[cfg(not(unix))]
        for _ in 0..2 {
            if tokio::signal::ctrl_c().await.is_err() {
                return;
            }
        }
        tracing::warn!("second termination signal: exiting without waiting");
        std::process::exit(1);
    }
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
            // Not the URL itself in the message: it may carry a password.
            let config =
                RedisConfig::from_url(&url).map_err(|error| format!("$REDIS_URL: {error}"))?;
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

/// The page, told the largest message the server takes so that it refuses a larger one itself
/// (the hub would close the connection with 1009).
async fn index() -> Html<String> {
    Html(INDEX_HTML.replace("{{MAX_MESSAGE_SIZE}}", &MAX_MESSAGE_SIZE.to_string()))
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
<link rel="icon" href="data:,">
<style>
  :root { font-family: system-ui, sans-serif; color: #1d2330; background: #f4f5f7; }
  main { max-width: 42rem; margin: 2rem auto; padding: 1.5rem; background: #fff;
         border-radius: 10px; box-shadow: 0 1px 4px rgba(0,0,0,.08); }
  h1 { font-size: 1.3rem; margin: 0 0 .25rem; }
  p.hint { margin: 0 0 1rem; color: #5b6475; font-size: .9rem; word-break: break-all; }
  form { display: flex; gap: .5rem; margin: .5rem 0; }
  input { flex: 1; padding: .5rem .6rem; border: 1px solid #c9ced8; border-radius: 6px; font: inherit; }
  button { padding: .5rem 1rem; border: 0; border-radius: 6px; background: #2f6fed; color: #fff;
           font: inherit; cursor: pointer; }
  button:disabled { background: #aab3c5; cursor: default; }
  #roomHint { min-height: 1.2em; margin: 0; font-size: .85rem; color: #5b6475; }
  #roomHint.error, #log li.error { color: #b3261e; }
  #state { display: inline-block; padding: .1rem .55rem; border-radius: 999px; font-size: .8rem;
           background: #e4e7ec; }
  #state.open { background: #d3f4dc; color: #13652d; }
  #state.connecting, #state.reconnecting { background: #fff1c7; color: #7a5600; }
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
  <p class="hint">WebSocket: <code id="url"></code><br>
     Publish from outside: <code id="curl"></code></p>
  <form id="join">
    <input id="room" value="lobby" placeholder="room" aria-label="room" autocomplete="off">
    <button id="joinButton">Join</button>
    <button id="leave" type="button" disabled>Leave</button>
  </form>
  <p id="roomHint" aria-live="polite"></p>
  <ul id="log"></ul>
  <form id="send">
    <input id="text" placeholder="message" aria-label="message" autocomplete="off" disabled>
    <button id="sendButton" disabled>Send</button>
  </form>
</main>
<script>
(() => {
  const $ = (id) => document.getElementById(id);
  // The server's limits: a larger message closes the connection (1009), a longer room name is
  // refused. The server fills in MAX_MESSAGE_SIZE; 256 is the hub's default max_room_name_len.
  const MAX_MESSAGE_BYTES = {{MAX_MESSAGE_SIZE}};
  const MAX_ROOM_BYTES = 256;
  const REASONS = { 1000: "normal closure", 1001: "going away", 1006: "connection lost",
                    1008: "policy violation", 1009: "message too big", 1011: "server error" };
  const utf8Length = (text) => new TextEncoder().encode(text).length;

  let socket = null;      // the current WebSocket, if any
  let joined = "";        // its room (kept while waiting to reconnect)
  let retryTimer = null;
  let retrying = false;   // reconnecting after the server restarted or the connection dropped
  let retryDelay = 1000;  // doubles after each failed attempt, up to 30 s

  // Percent-encodes everything but letters, digits and "-_.~", so the URLs also paste into a shell.
  const encode = (room) => encodeURIComponent(room)
    .replace(/[!'()*]/g, (c) => "%" + c.charCodeAt(0).toString(16).toUpperCase());
  const wsOrigin = (location.protocol === "https:" ? "wss://" : "ws://") + location.host;

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
    $("leave").disabled = state === "disconnected";
    if (open) $("text").focus();
  }

  // Why a room name cannot be joined from here, or "".
  function roomProblem(room) {
    if (!room) return "Type a room name.";
    // Browsers normalise /ws/. and /ws/.. to /ws/ before sending (and the server refuses them).
    if (room === "." || room === "..") return "\"" + room + "\" cannot be a room name here.";
    if (utf8Length(room) > MAX_ROOM_BYTES) return "Room names are at most " + MAX_ROOM_BYTES + " bytes.";
    return "";
  }

  // The URLs show the room actually joined; the hint below the room box says what Enter would do.
  function update() {
    const typed = $("room").value.trim();
    const problem = typed ? roomProblem(typed) : "";
    const room = joined || (problem ? "" : typed);
    const segment = room ? encode(room) : "<room>";
    $("url").textContent = wsOrigin + "/ws/" + segment;
    $("curl").textContent = "curl -d hi " + location.origin + "/rooms/" + segment + "/messages";
    $("roomHint").textContent = problem ||
      (joined && typed && typed !== joined ? "Press Enter to switch to \"" + typed + "\"." : "");
    $("roomHint").className = problem ? "error" : "";
  }
  $("room").addEventListener("input", update);
  update();

  function connect(room) {
    clearTimeout(retryTimer);
    retryTimer = null;
    const ws = new WebSocket(wsOrigin + "/ws/" + encode(room));
    socket = ws;
    joined = room;
    let opened = false;
    setState("connecting");
    update();
    ws.onopen = () => {
      opened = true;
      retrying = false;
      retryDelay = 1000;
      setState("open");
      log("joined " + room, "info");
    };
    ws.onmessage = (event) => {
      if (typeof event.data === "string") log(event.data);
      else log("(binary message, " + event.data.size + " bytes)", "info");
    };
    ws.onclose = (event) => {
      if (socket !== ws) return;   // replaced by another room, or left: already logged
      socket = null;
      const why = event.reason || (opened ? REASONS[event.code] : "");
      let text = (opened ? "closed (" : "could not connect (") + event.code +
                 (why ? ": " + why : "") + ")";
      // The server restarting (1001) or the connection dropping (1006): try again, waiting longer
      // each time. A first attempt that fails (refused or unreachable, also 1006) is not retried.
      if ((event.code === 1001 || event.code === 1006) && (opened || retrying)) {
        text += ", reconnecting in " + retryDelay / 1000 + " s";
        retrying = true;
        retryTimer = setTimeout(() => connect(room), retryDelay);
        retryDelay = Math.min(retryDelay * 2, 30000);
        setState("reconnecting");
      } else {
        joined = "";
        setState("disconnected");
        update();
      }
      log(text, event.code === 1000 ? "info" : "error");
    };
  }

  function leave() {
    clearTimeout(retryTimer);
    retryTimer = null;
    retrying = false;
    if (socket) socket.close(1000);
    socket = null;
    if (joined) log("left " + joined, "info");
    joined = "";
    setState("disconnected");
    update();
  }
  $("leave").addEventListener("click", leave);

  // Enter in the room box (or Join) joins that room, leaving the current one first.
  $("join").addEventListener("submit", (event) => {
    event.preventDefault();
    const room = $("room").value.trim();
    $("room").value = room;
    const problem = roomProblem(room);
    if (problem) {
      $("roomHint").textContent = problem;
      $("roomHint").className = "error";
      return;
    }
    if (socket && room === joined) return;   // already there (or on the way)
    if (room !== joined) leave();            // else reconnecting to it: try now
    connect(room);
  });

  $("send").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("text").value;
    if (!text || !socket || socket.readyState !== WebSocket.OPEN) return;
    const size = utf8Length(text);
    if (size > MAX_MESSAGE_BYTES) {
      log("not sent: the message is " + size + " bytes, the server takes at most " +
          MAX_MESSAGE_BYTES, "error");
      return;
    }
    socket.send(text);
    log(text, "me");   // the hub does not echo a message back to its sender
    $("text").value = "";
  });
})();
</script>
</body>
</html>
"#;
