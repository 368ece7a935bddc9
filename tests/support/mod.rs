//! Shared test support: serve a router on a free port, connect WebSocket clients.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tower_ws_hub::{Hub, HubLayer};

pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a test waits for something that should happen promptly.
pub const PROMPTLY: Duration = Duration::from_secs(10);

/// A running server: its address and its hub.
pub struct Server {
    pub addr: SocketAddr,
    pub hub: Hub,
    pub task: tokio::task::JoinHandle<()>,
}

impl Server {
    pub fn ws_url(&self, room: &str) -> String {
        format!("ws://{}/ws/{room}", self.addr)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn connect(&self, room: &str) -> Client {
        connect(&self.ws_url(room)).await
    }
}

/// Serves `app` (already layered) on a free loopback port with axum::serve.
pub async fn serve_router(app: Router, hub: Hub) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown_hub = hub.clone();
    let task = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { shutdown_hub.shutdown_started().await })
        .await
        .unwrap();
    });
    Server { addr, hub, task }
}

/// A hub served at `/ws/{room}` in front of a router with `/` and `/healthz`.
pub async fn serve_hub(hub: Hub) -> Server {
    let app = Router::new()
        .route("/", axum::routing::get(|| async { "index" }))
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .layer(HubLayer::new(hub.clone()).route("/ws/{room}"));
    serve_router(app, hub).await
}

/// Connects a WebSocket client (panics with the server's answer on failure).
pub async fn connect(url: &str) -> Client {
    let (ws, response) = tokio::time::timeout(PROMPTLY, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect timed out")
        .unwrap_or_else(|e| panic!("connect to {url} failed: {e}"));
    assert_eq!(response.status(), 101);
    ws
}

/// Waits until `cond` holds (polling), panicking after [`PROMPTLY`].
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits for `n` members in `room`.
pub async fn wait_members(hub: &Hub, room: &str, n: usize) {
    eventually(&format!("{n} members in {room}"), || {
        hub.room_size(room) == n
    })
    .await;
}

/// The next data message (skipping pings/pongs), or panic after [`PROMPTLY`].
pub async fn next_data(client: &mut Client) -> WsMessage {
    loop {
        let message = tokio::time::timeout(PROMPTLY, client.next())
            .await
            .expect("no message in time")
            .expect("stream ended")
            .expect("read error");
        match message {
            WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
            other => return other,
        }
    }
}

/// The next text message's text.
pub async fn next_text(client: &mut Client) -> String {
    match next_data(client).await {
        WsMessage::Text(text) => text.to_string(),
        other => panic!("expected text, got {other:?}"),
    }
}

/// Asserts nothing but control frames arrives within `wait`.
pub async fn assert_silent(client: &mut Client, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, client.next()).await {
            Err(_) => return,
            Ok(Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_)))) => continue,
            Ok(other) => panic!("expected silence, got {other:?}"),
        }
    }
}

/// Sends a text message.
pub async fn send_text(client: &mut Client, text: &str) {
    client.send(WsMessage::text(text)).await.unwrap();
}

/// Reads until a close frame arrives; returns its code. Then behaves as a browser does:
/// tungstenite has answered the close frame; once the server closes its end of the TCP
/// connection (or after `PROMPTLY`), the client closes its own.
pub async fn close_code(client: &mut Client) -> Option<u16> {
    let code = loop {
        match tokio::time::timeout(PROMPTLY, client.next())
            .await
            .expect("no close in time")
        {
            Some(Ok(WsMessage::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    };
    while let Ok(Some(Ok(_))) = tokio::time::timeout(PROMPTLY, client.next()).await {}
    let _ = tokio::io::AsyncWriteExt::shutdown(client.get_mut()).await;
    code
}

// ---------------------------------------------------------------------------------------------
// Additions for the integration suite (handshake, rooms, hooks, connection, slow consumer,
// shutdown, stacks, tonic). Raw-socket helpers live in `support::raw`.
// ---------------------------------------------------------------------------------------------

pub mod bystanders;
pub mod raw;
pub mod slow;

/// Serves `app` on a free loopback port with axum::serve, *without* tying the HTTP server's
/// lifetime to the hub's shutdown: the server keeps accepting requests after `hub.shutdown()`
/// (for tests of what a shut-down hub answers).
pub async fn serve_router_forever(app: Router, hub: Hub) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    Server { addr, hub, task }
}

/// Connects a WebSocket client built from a full request (custom headers, ...).
pub async fn connect_request(
    request: tokio_tungstenite::tungstenite::handshake::client::Request,
) -> Client {
    let (ws, response) = tokio::time::timeout(PROMPTLY, tokio_tungstenite::connect_async(request))
        .await
        .expect("connect timed out")
        .unwrap_or_else(|e| panic!("connect failed: {e}"));
    assert_eq!(response.status(), 101);
    ws
}

/// Connects a WebSocket client with 4 KiB buffers (for tests that open hundreds of clients:
/// tungstenite's default 128 KiB read buffer per client adds up).
pub async fn connect_small(url: &str) -> Client {
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(4 * 1024);
    let (ws, response) = tokio::time::timeout(
        PROMPTLY,
        tokio_tungstenite::connect_async_with_config(url, Some(config), true),
    )
    .await
    .expect("connect timed out")
    .unwrap_or_else(|e| panic!("connect to {url} failed: {e}"));
    assert_eq!(response.status(), 101);
    ws
}

/// The next binary message's bytes.
pub async fn next_binary(client: &mut Client) -> Vec<u8> {
    match next_data(client).await {
        WsMessage::Binary(bytes) => bytes.to_vec(),
        other => panic!("expected binary, got {other:?}"),
    }
}

/// Completes the close handshake from the client side, reading until the server's close.
pub async fn close_client(mut client: Client) {
    tokio::time::timeout(PROMPTLY, client.close(None))
        .await
        .expect("close timed out")
        .ok();
    // Drain until the server's close frame (or the end of the stream).
    while let Ok(Some(Ok(_))) = tokio::time::timeout(PROMPTLY, client.next()).await {}
}

/// Status, headers and body of a plain HTTP response.
pub struct HttpReply {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: String,
}

/// Sends `request` with hyper's HTTP/1.1 client and collects the response.
pub async fn http_send(request: http::Request<http_body_util::Full<bytes::Bytes>>) -> HttpReply {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let response = tokio::time::timeout(PROMPTLY, client.request(request))
        .await
        .expect("HTTP request timed out")
        .expect("HTTP request failed");
    let status = response.status();
    let headers = response.headers().clone();
    let body = tokio::time::timeout(PROMPTLY, response.into_body().collect())
        .await
        .expect("HTTP body timed out")
        .expect("HTTP body failed")
        .to_bytes();
    HttpReply {
        status,
        headers,
        body: String::from_utf8(body.to_vec()).expect("UTF-8 body"),
    }
}

/// `GET url` with hyper's HTTP/1.1 client.
pub async fn http_get(url: &str) -> HttpReply {
    http_send(
        http::Request::get(url)
            .body(http_body_util::Full::default())
            .unwrap(),
    )
    .await
}

/// The next thing `ws` reads is the server's close frame with `code`, and then the stream ends
/// cleanly (no reset): for a client the server closed while it was still sending.
pub async fn assert_close_then_clean_end<S>(ws: &mut WebSocketStream<S>, code: u16)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match tokio::time::timeout(PROMPTLY, ws.next()).await {
        Ok(Some(Ok(WsMessage::Close(Some(frame))))) => assert_eq!(u16::from(frame.code), code),
        other => panic!("expected a {code} close frame, got {other:?}"),
    }
    match tokio::time::timeout(PROMPTLY, ws.next()).await {
        Ok(None | Some(Err(tokio_tungstenite::tungstenite::Error::ConnectionClosed))) => {}
        other => panic!("the connection did not end cleanly: {other:?}"),
    }
}

/// Reads until the server's close frame, then keeps reading until the stream ends, which makes
/// tungstenite send its answering close frame (it is only flushed by a later read). Returns the
/// server's close code. Use this when the server waits for the close handshake to finish
/// (e.g. `Hub::shutdown`).
pub async fn close_code_to_end(client: &mut Client) -> Option<u16> {
    let code = close_code(client).await;
    while let Ok(Some(Ok(_))) = tokio::time::timeout(PROMPTLY, client.next()).await {}
    code
}

/// Connects to `room`, retrying while the server answers `503` (a slot is being freed).
pub async fn connect_when_admitted(server: &Server, room: &str) -> Client {
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    loop {
        match tokio_tungstenite::connect_async(server.ws_url(room)).await {
            Ok((client, response)) => {
                assert_eq!(response.status(), 101);
                return client;
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(response))
                if response.status() == http::StatusCode::SERVICE_UNAVAILABLE =>
            {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the slot was never freed"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => panic!("connect failed: {error}"),
        }
    }
}

/// An authorizer that never decides for `room` (and lets every other room in), counting in
/// `pending` the requests for `room` it has started on: for tests of what happens to a place
/// held by an authorization the client abandons.
pub fn never_deciding_on(
    room: &'static str,
    pending: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> impl Fn(
    &axum::http::request::Parts,
    &str,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>
+ Clone
+ Send
+ Sync
+ 'static {
    move |_, requested| {
        let hang = requested == room;
        if hang {
            pending.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        Box::pin(async move {
            if hang {
                std::future::pending::<()>().await;
            }
            true
        })
    }
}

/// `builder` with hooks that count: how many times `on_connect` and `on_disconnect` ran.
pub fn counting_hooks(
    builder: tower_ws_hub::HubBuilder,
) -> (
    tower_ws_hub::HubBuilder,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let connects = Arc::new(AtomicUsize::new(0));
    let disconnects = Arc::new(AtomicUsize::new(0));
    let (c, d) = (Arc::clone(&connects), Arc::clone(&disconnects));
    let builder = builder
        .on_connect(move |_| {
            c.fetch_add(1, Ordering::SeqCst);
        })
        .on_disconnect(move |_| {
            d.fetch_add(1, Ordering::SeqCst);
        });
    (builder, connects, disconnects)
}

/// Collects what is logged at `level` or above on this thread while the guard lives (a
/// `#[tokio::test]`'s current-thread runtime runs the server's and the hub's tasks on it too).
pub fn capture_logs(
    level: tracing::Level,
) -> (
    tracing::subscriber::DefaultGuard,
    std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
) {
    use std::sync::{Arc, Mutex};
    #[derive(Clone)]
    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer: Arc<Mutex<Vec<u8>>> = Arc::default();
    let writer = Capture(Arc::clone(&buffer));
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    (tracing::subscriber::set_default(subscriber), buffer)
}
