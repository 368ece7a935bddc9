//! Runs the example programs (`examples/*.rs`) as real processes and talks to them over the
//! network, like a user would.
//!
//! The binaries come from `target/<profile>/examples/`, built by `cargo test` (or
//! `cargo build --examples`). Each example gets a free port through `$ADDR`; its output goes to a
//! log file that is printed when a test fails.

#[path = "support/h2.rs"]
mod h2;
#[cfg(feature = "redis")]
#[path = "support/redis.rs"]
mod redis_support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::StatusCode;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long to wait for something that should happen promptly.
const PROMPTLY: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// Running an example
// ---------------------------------------------------------------------------------------------

/// A running example process; killed on drop (so a failing test never leaves it behind), and its
/// log printed if the test is failing.
struct Example {
    name: &'static str,
    child: tokio::process::Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Example {
    /// Starts `target/<profile>/examples/<name>` on a free port and waits until it accepts.
    async fn start(name: &'static str) -> Self {
        Self::start_with(name, &[]).await
    }

    /// Like [`start`](Self::start), with extra environment variables.
    async fn start_with(name: &'static str, env: &[(&str, &str)]) -> Self {
        let binary = example_binary(name);
        let addr = free_port();
        let log = std::env::temp_dir().join(format!(
            "tower-ws-hub-example-{name}-{}-{}.log",
            std::process::id(),
            addr.port()
        ));
        let log_file = std::fs::File::create(&log).expect("create the example's log file");
        let stderr = log_file.try_clone().expect("clone the log file handle");
        let child = tokio::process::Command::new(&binary)
            .env("ADDR", addr.to_string())
            .env("RUST_LOG", "info,tower_ws_hub=debug")
            .env_remove("REDIS_URL")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let mut example = Self {
            name,
            child,
            addr,
            log,
        };
        example.wait_until_accepting().await;
        example
    }

    async fn wait_until_accepting(&mut self) {
        let deadline = tokio::time::Instant::now() + PROMPTLY;
        loop {
            if TcpStream::connect(self.addr).await.is_ok() {
                return;
            }
            if let Some(status) = self.child.try_wait().expect("poll the example process") {
                panic!(
                    "example {} exited before listening on {} ({status})",
                    self.name, self.addr
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "example {} did not listen on {} within {PROMPTLY:?}",
                self.name,
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// Sends SIGTERM.
    fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends SIGINT, as Ctrl-C in a terminal does.
    fn interrupt(&self) {
        self.signal("INT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("the example is still running");
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid} failed: {status}");
    }

    /// Sends a second SIGINT (the first one's shutdown under way) and checks that the process
    /// exits at once, with status 1 and the line saying why.
    async fn assert_second_interrupt_exits_at_once(&mut self) {
        self.interrupt();
        let status = self.wait().await;
        assert_eq!(status.code(), Some(1), "{status}");
        assert!(
            self.output()
                .contains("second termination signal: exiting without waiting"),
            "{}",
            self.output()
        );
    }

    /// What the example logged so far.
    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).expect("read the example's log")
    }

    /// Waits for the process to exit.
    async fn wait(&mut self) -> ExitStatus {
        tokio::time::timeout(PROMPTLY, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("example {} did not exit within {PROMPTLY:?}", self.name))
            .expect("wait for the example")
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!(
                "---- output of example {} ----\n{log}---- end ----",
                self.name
            );
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// `target/<profile>/examples/<name>`, found from this test binary's own path
/// (`target/<profile>/deps/examples-<hash>`).
fn example_binary(name: &str) -> PathBuf {
    let test_binary = std::env::current_exe().expect("the test binary's path");
    let profile_dir = test_binary
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary lives in target/<profile>/deps");
    let binary = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    let built = std::fs::metadata(&binary)
        .and_then(|meta| meta.modified())
        .unwrap_or_else(|_| {
            panic!(
                "example binary {} not found: run `cargo build --examples` (same profile and \
                 target dir as the tests) first; `cargo test --test examples` alone does not \
                 build examples",
                binary.display()
            )
        });
    // `cargo test --test examples` rebuilds this test but not the examples: refuse to test an
    // example binary older than the code it is made of.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let sources = [
        root.join("Cargo.toml"),
        root.join("src"),
        root.join("examples").join(format!("{name}.rs")),
    ];
    if let Some(newest) = sources.iter().filter_map(|path| newest_mtime(path)).max() {
        assert!(
            built >= newest,
            "example binary {} is older than its sources: run `cargo build --examples` first",
            binary.display()
        );
    }
    binary
}

/// The latest modification time of a file, or of any file under a directory.
fn newest_mtime(path: &std::path::Path) -> Option<std::time::SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(|entry| newest_mtime(&entry.ok()?.path()))
        .max()
}

/// A port that was free a moment ago.
fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address")
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

async fn http(method: &str, url: &str, body: &str) -> (StatusCode, String) {
    http_as(method, url, None, body).await
}

/// [`http`] with `Authorization: Bearer <token>` when a token is given.
async fn http_as(method: &str, url: &str, token: Option<&str>, body: &str) -> (StatusCode, String) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut request = hyper::Request::builder().method(method).uri(url);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("a valid request");
    let response = tokio::time::timeout(PROMPTLY, client.request(request))
        .await
        .unwrap_or_else(|_| panic!("{method} {url} timed out"))
        .unwrap_or_else(|e| panic!("{method} {url} failed: {e}"));
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("read the response body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Connects a WebSocket client, or returns the status the server answered instead of `101`.
async fn try_connect(url: &str, authorization: Option<&str>) -> Result<Client, Option<StatusCode>> {
    let mut request = url.into_client_request().expect("a valid WebSocket URL");
    if let Some(value) = authorization {
        request.headers_mut().insert(
            "authorization",
            value.parse().expect("a valid header value"),
        );
    }
    let connecting = tokio_tungstenite::connect_async(request);
    match tokio::time::timeout(PROMPTLY, connecting).await {
        Err(_) => panic!("connecting to {url} timed out"),
        Ok(Ok((client, response))) => {
            assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
            Ok(client)
        }
        Ok(Err(WsError::Http(response))) => Err(Some(response.status())),
        Ok(Err(error)) => {
            eprintln!("connecting to {url}: {error}");
            Err(None)
        }
    }
}

async fn connect(url: &str) -> Client {
    try_connect(url, None)
        .await
        .unwrap_or_else(|status| panic!("connect to {url}: answered {status:?}"))
}

/// The next data message as text (control frames skipped).
async fn next_text(client: &mut Client) -> String {
    loop {
        let message = tokio::time::timeout(PROMPTLY, client.next())
            .await
            .expect("no message within the timeout")
            .expect("the connection ended")
            .expect("a WebSocket error");
        match message {
            WsMessage::Text(text) => return text.to_string(),
            WsMessage::Ping(_) | WsMessage::Pong(_) => {}
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// Sends `text` from `sender` until `receiver` gets a message, and returns that message.
///
/// The example runs in another process, so the test cannot ask its hub whether the receiver has
/// joined its room yet (joining finishes just after the `101`); resending covers that gap.
async fn send_until_received(sender: &mut Client, receiver: &mut Client, text: &str) -> String {
    resend_until(sender, receiver, text, async |receiver| {
        next_text(receiver).await
    })
    .await
}

/// Sends `text` from `sender` until `receiver` gets `seen` (`text` as the server passes it on);
/// what else it gets meanwhile is skipped (earlier messages that were held up, copies of ones
/// resent).
async fn send_until_seen(sender: &mut Client, receiver: &mut Client, text: &str, seen: &str) {
    resend_until(sender, receiver, text, async |receiver| {
        skip_until(receiver, seen).await;
    })
    .await;
}

/// Sends `text` from `sender` every 250 ms until `read` of `receiver` (any kind of client)
/// completes, within [`PROMPTLY`]; returns what `read` returned.
async fn resend_until<R, T>(
    sender: &mut Client,
    receiver: &mut R,
    text: &str,
    mut read: impl AsyncFnMut(&mut R) -> T,
) -> T {
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    loop {
        sender
            .send(WsMessage::text(text))
            .await
            .expect("send a message");
        if let Ok(got) = tokio::time::timeout(Duration::from_millis(250), read(receiver)).await {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{text:?} never reached the other client"
        );
    }
}

/// Reads until `client` gets `text`, skipping other messages (copies from earlier attempts).
async fn skip_until(client: &mut Client, text: &str) {
    while next_text(client).await != text {}
}

/// Reads until the server's close frame and returns its code, after completing the closing
/// handshake (the client's reply goes out on the next read, which then sees the end).
async fn close_code(client: &mut Client) -> CloseCode {
    let code = loop {
        let message = tokio::time::timeout(PROMPTLY, client.next())
            .await
            .expect("no close frame within the timeout");
        match message {
            Some(Ok(WsMessage::Close(Some(frame)))) => break frame.code,
            Some(Ok(WsMessage::Close(None))) => panic!("close frame without a code"),
            Some(Ok(_)) => {}
            Some(Err(error)) => panic!("connection failed before the close frame: {error}"),
            None => panic!("connection ended without a close frame"),
        }
    };
    let rest = tokio::time::timeout(PROMPTLY, client.next())
        .await
        .expect("the server did not end the connection after the close handshake");
    assert!(
        matches!(rest, None | Some(Err(WsError::ConnectionClosed))),
        "unexpected after the close frame: {rest:?}"
    );
    code
}

// ---------------------------------------------------------------------------------------------
// chat
// ---------------------------------------------------------------------------------------------

#[cfg(feature = "redis")] // the chat example reads $REDIS_URL
#[tokio::test]
async fn chat_serves_the_page_rooms_publishing_and_shuts_down_gracefully() {
    let mut chat = Example::start("chat").await;

    let (status, page) = http("GET", &chat.http_url("/"), "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.to_ascii_lowercase().starts_with("<!doctype html>"));
    assert!(
        page.contains("new WebSocket("),
        "the page opens a WebSocket"
    );
    assert!(page.contains("/ws/"), "the page shows the WebSocket URL");
    assert!(
        page.contains("const MAX_MESSAGE_BYTES = 65536;"),
        "the page is told the message size limit"
    );

    let (status, body) = http("GET", &chat.http_url("/healthz"), "").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));

    // Two clients in one room talk to each other.
    let mut a = connect(&chat.ws_url("/ws/lobby")).await;
    let mut b = connect(&chat.ws_url("/ws/lobby")).await;
    assert_eq!(send_until_received(&mut a, &mut b, "hi b").await, "hi b");
    // (`b` may get more copies of "hi b" if it was resent; `a` gets exactly what `b` sends.)
    b.send(WsMessage::text("hi a")).await.unwrap();
    assert_eq!(next_text(&mut a).await, "hi a");

    // HTTP publishing reaches a client in that room, and says how many got it.
    let mut r = connect(&chat.ws_url("/ws/r")).await;
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    loop {
        let (status, body) = http("POST", &chat.http_url("/rooms/r/messages"), "from http").await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        if body.trim() == r#"{"delivered":1}"# {
            break;
        }
        assert_eq!(body.trim(), r#"{"delivered":0}"#, "until `r` has joined");
        assert!(tokio::time::Instant::now() < deadline, "`r` never joined");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(next_text(&mut r).await, "from http");

    // An invalid room name is refused.
    let (status, _) = http("POST", &chat.http_url("/rooms/a%0Ab/messages"), "x").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // SIGTERM: every client is told "going away", then the process exits cleanly.
    chat.terminate();
    for client in [&mut a, &mut b, &mut r] {
        assert_eq!(close_code(client).await, CloseCode::Away);
    }
    let status = chat.wait().await;
    assert!(status.success(), "chat exited with {status}");
}

/// The plain-hyper example: the inner `service_fn` answers what is not a WebSocket route; rooms
/// work over HTTP/1.1 and over HTTP/2 (extended CONNECT) alike, and share a room; the hooks
/// see the client's address the example inserts; SIGTERM closes the WebSockets with 1001 and
/// the process exits with status 0.
#[tokio::test]
async fn hyper_serves_its_service_and_rooms_over_both_http_versions_and_stops_on_sigterm() {
    let mut example = Example::start("hyper").await;

    let (status, body) = http("GET", &example.http_url("/"), "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("/ws/{room}"), "{body}");
    let (status, _) = http("GET", &example.http_url("/elsewhere"), "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // A plain request on a WebSocket route is the hub's: 426 with a reason.
    let (status, body) = http("GET", &example.http_url("/ws/lobby"), "").await;
    assert_eq!(status, StatusCode::UPGRADE_REQUIRED, "{body}");

    let mut a = connect(&example.ws_url("/ws/lobby")).await;
    let mut sender = h2::h2_connect(example.addr).await;
    let mut over_h2 = h2::h2_websocket(&mut sender, example.addr, "lobby").await;
    // Until the HTTP/2 client has joined, resend; then both ways.
    let got = resend_until(&mut a, &mut over_h2, "to h2", async |ws| {
        h2::h2_next_text(ws).await
    })
    .await;
    assert_eq!(got, "to h2");
    over_h2.send(WsMessage::text("from h2")).await.unwrap();
    skip_until(&mut a, "from h2").await;
    // (The log may be coloured: look for the value, not the field name.)
    assert!(
        example.output().contains("Some(127.0.0.1:"),
        "the hook saw the client's address"
    );

    example.terminate();
    assert_eq!(close_code(&mut a).await, CloseCode::Away);
    assert_eq!(h2::h2_close_code(&mut over_h2).await, Some(1001));
    drop(over_h2);
    drop(sender);
    let status = example.wait().await;
    assert!(status.success(), "hyper exited with {status}");
    let output = example.output();
    assert!(
        output.contains("every HTTP connection finished"),
        "the HTTP connections were drained"
    );
    assert!(output.contains("hyper example stopped"));
}

/// A client that connects and sends nothing, or only the start of the HTTP/2 preface, is
/// dropped after the example's 10 s header-read timeout instead of holding a connection for
/// ever (hyper-util's auto builder reads the first bytes without a deadline of its own).
#[tokio::test]
async fn hyper_drops_a_client_that_never_sends_its_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let example = Example::start("hyper").await;
    let silent = TcpStream::connect(example.addr).await.unwrap();
    let mut partial = TcpStream::connect(example.addr).await.unwrap();
    partial.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    for mut stream in [silent, partial] {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(PROMPTLY, stream.read(&mut buf))
            .await
            .expect("still open after the header-read timeout");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
}

/// A second Ctrl-C while the hyper example waits for a client that never answers its close
/// (the hub's grace period is 10 s) exits at once with status 1, where the graceful path would
/// have exited 0.
#[tokio::test]
async fn hyper_exits_at_once_on_a_second_signal() {
    let mut example = Example::start("hyper").await;
    let _silent = connect(&example.ws_url("/ws/lobby")).await;
    let mut other = connect(&example.ws_url("/ws/lobby")).await;
    example.interrupt();
    // The shutdown is under way once a client hears 1001 (the silent one never answers).
    assert_eq!(close_code(&mut other).await, CloseCode::Away);
    example.assert_second_interrupt_exits_at_once().await;
}

/// Ctrl-C (SIGINT) stops the chat as SIGTERM does: clients are told "going away", the process
/// exits with status 0.
#[cfg(feature = "redis")]
#[tokio::test]
async fn chat_shuts_down_gracefully_on_ctrl_c() {
    let mut chat = Example::start("chat").await;
    let mut a = connect(&chat.ws_url("/ws/lobby")).await;
    let mut b = connect(&chat.ws_url("/ws/lobby")).await;
    assert_eq!(send_until_received(&mut a, &mut b, "hi").await, "hi");

    chat.interrupt();
    for client in [&mut a, &mut b] {
        assert_eq!(close_code(client).await, CloseCode::Away);
    }
    let status = chat.wait().await;
    assert!(status.success(), "chat exited with {status}");
}

/// A second Ctrl-C while the chat waits for a client that never answers its close (the hub's
/// grace period is 10 s) exits at once with status 1, where the graceful path would have exited
/// 0 after the grace period.
#[cfg(feature = "redis")]
#[tokio::test]
async fn chat_exits_at_once_on_a_second_signal() {
    let mut chat = Example::start("chat").await;
    let _silent = connect(&chat.ws_url("/ws/lobby")).await;
    let mut other = connect(&chat.ws_url("/ws/lobby")).await;
    chat.interrupt();
    // The shutdown is under way once a client hears 1001 (the silent one never answers).
    assert_eq!(close_code(&mut other).await, CloseCode::Away);
    chat.assert_second_interrupt_exits_at_once().await;
}

/// Two processes on one Redis are one hub; while Redis is gone each serves its own members, and
/// once it is back (restarted empty, on the same port) messages cross between them again.
#[cfg(feature = "redis")]
#[tokio::test]
async fn two_chat_processes_on_one_redis_behave_as_one_hub_across_a_redis_restart() {
    let mut redis = redis_support::RedisServer::start().await;
    let env = [("REDIS_URL", redis.url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut one = Example::start_with("chat", &env).await;
    let mut two = Example::start_with("chat", &env).await;
    for chat in [&one, &two] {
        wait_ready(chat).await;
    }

    // A client on each process, in the same room: messages cross both ways through Redis.
    let mut a = connect(&one.ws_url("/ws/lobby")).await;
    let mut b = connect(&two.ws_url("/ws/lobby")).await;
    assert_eq!(
        send_until_received(&mut a, &mut b, "from one").await,
        "from one"
    );
    b.send(WsMessage::text("from two")).await.unwrap();
    assert_eq!(next_text(&mut a).await, "from two");

    // Publishing over HTTP on one process reaches the member on the other (0 local receivers).
    let (status, body) = http("POST", &one.http_url("/rooms/lobby/messages"), "posted").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(next_text(&mut b).await, "posted");

    // Redis gone: /readyz says so, local delivery keeps working.
    redis.kill();
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    loop {
        let (status, _) = http("GET", &one.http_url("/readyz"), "").await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "readyz never noticed Redis left"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut a2 = connect(&one.ws_url("/ws/lobby")).await;
    assert_eq!(send_until_received(&mut a, &mut a2, "local").await, "local");

    // Redis back: both processes reconnect and subscribe again, and messages cross both ways.
    redis.restart().await;
    for chat in [&one, &two] {
        wait_ready(chat).await;
    }
    send_until_seen(
        &mut a,
        &mut b,
        "one, after the restart",
        "one, after the restart",
    )
    .await;
    send_until_seen(
        &mut b,
        &mut a,
        "two, after the restart",
        "two, after the restart",
    )
    .await;
    let (status, body) = http(
        "POST",
        &two.http_url("/rooms/lobby/messages"),
        "posted again",
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    for client in [&mut a, &mut a2] {
        skip_until(client, "posted again").await;
    }

    for chat in [&one, &two] {
        chat.terminate();
    }
    for chat in [&mut one, &mut two] {
        let status = chat.wait().await;
        assert!(status.success(), "chat exited with {status}");
    }
}

#[cfg(feature = "redis")]
/// Waits until the example's `/readyz` answers 200 (its broker is connected).
async fn wait_ready(example: &Example) {
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    loop {
        let (status, body) = http("GET", &example.http_url("/readyz"), "").await;
        if status == StatusCode::OK {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never became ready: {body}",
            example.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// tonic
// ---------------------------------------------------------------------------------------------

/// A gRPC health client connected to `example`.
async fn health_client(
    example: &Example,
) -> tonic_health::pb::health_client::HealthClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(example.http_url(""))
        .expect("a valid endpoint")
        .connect_timeout(PROMPTLY)
        .connect()
        .await
        .expect("connect the gRPC channel");
    tonic_health::pb::health_client::HealthClient::new(channel)
}

/// A health `Watch` of `service`, after checking that its first status is SERVING.
async fn watch_serving(
    health: &mut tonic_health::pb::health_client::HealthClient<tonic::transport::Channel>,
    service: &str,
) -> tonic::Streaming<tonic_health::pb::HealthCheckResponse> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;

    let request = HealthCheckRequest {
        service: service.to_owned(),
    };
    let mut watch = tokio::time::timeout(PROMPTLY, health.watch(request))
        .await
        .unwrap_or_else(|_| panic!("gRPC watch of {service:?} timed out"))
        .unwrap_or_else(|status| panic!("gRPC watch of {service:?} failed: {status}"))
        .into_inner();
    let first = tokio::time::timeout(PROMPTLY, watch.message())
        .await
        .unwrap_or_else(|_| panic!("no first status for {service:?}"))
        .expect("the watch stream failed")
        .expect("the watch stream ended before its first status");
    assert_eq!(first.status(), ServingStatus::Serving, "{service:?}");
    watch
}

/// The next status a health `Watch` reports.
async fn next_status(
    watch: &mut tonic::Streaming<tonic_health::pb::HealthCheckResponse>,
) -> tonic_health::pb::health_check_response::ServingStatus {
    tokio::time::timeout(PROMPTLY, watch.message())
        .await
        .expect("no status within the timeout")
        .expect("the watch stream failed")
        .expect("the watch stream ended")
        .status()
}

/// The tonic example started with `env`, a health client of it, and a `Watch` of the server
/// as a whole (`""`), SERVING so far.
async fn tonic_watched(
    env: &[(&str, &str)],
) -> (
    Example,
    tonic_health::pb::health_client::HealthClient<tonic::transport::Channel>,
    tonic::Streaming<tonic_health::pb::HealthCheckResponse>,
) {
    let example = Example::start_with("tonic", env).await;
    let mut health = health_client(&example).await;
    let watch = watch_serving(&mut health, "").await;
    (example, health, watch)
}

#[tokio::test]
async fn tonic_serves_grpc_and_websockets_on_one_port() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;

    let mut example = Example::start("tonic").await;

    let mut health = health_client(&example).await;
    let response = tokio::time::timeout(
        PROMPTLY,
        health.check(HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await
    .expect("gRPC check timed out")
    .expect("gRPC check failed")
    .into_inner();
    assert_eq!(response.status(), ServingStatus::Serving);

    let mut a = connect(&example.ws_url("/ws/grpc-side")).await;
    let mut b = connect(&example.ws_url("/ws/grpc-side")).await;
    assert_eq!(send_until_received(&mut a, &mut b, "hello").await, "hello");

    drop(health);
    example.terminate();
    for client in [&mut a, &mut b] {
        assert_eq!(close_code(client).await, CloseCode::Away);
    }
    let status = example.wait().await;
    assert!(status.success(), "tonic example exited with {status}");
}

/// A gRPC stream that never ends (a health `Watch`) hears NOT_SERVING when shutdown starts,
/// and does not keep the process running past the streams' grace (5 s) after the hub stopped.
#[tokio::test]
async fn tonic_stops_on_sigterm_even_with_a_health_watch_open() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;

    let mut example = Example::start("tonic").await;
    let mut health = health_client(&example).await;
    let mut watch = tokio::time::timeout(
        PROMPTLY,
        health.watch(HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await
    .expect("gRPC watch timed out")
    .expect("gRPC watch failed")
    .into_inner();
    let first = watch.message().await.expect("a status").expect("a status");
    assert_eq!(first.status(), ServingStatus::Serving);

    example.terminate();
    let next = tokio::time::timeout(PROMPTLY, watch.message())
        .await
        .expect("no status after SIGTERM")
        .expect("the watch stream failed")
        .expect("the watch stream ended before NOT_SERVING");
    assert_eq!(next.status(), ServingStatus::NotServing);
    // `wait` allows 15 s: the 5 s grace fits, a server waiting for the stream would not.
    let status = example.wait().await;
    assert!(status.success(), "tonic example exited with {status}");
    assert!(example.output().contains("gRPC streams still open"));
    drop(watch);
}

/// SIGTERM turns every name the server answers health checks for, the server as a whole (`""`)
/// and each service, to NOT_SERVING, closes the WebSockets with 1001 and exits 0.
#[tokio::test]
async fn tonic_reports_every_served_service_not_serving_and_closes_websockets_on_sigterm() {
    use tonic_health::pb::health_check_response::ServingStatus;

    let (mut example, mut health, mut server) = tonic_watched(&[]).await;
    let mut service = watch_serving(&mut health, "grpc.health.v1.Health").await;
    let mut a = connect(&example.ws_url("/ws/lobby")).await;
    let mut b = connect(&example.ws_url("/ws/lobby")).await;
    assert_eq!(send_until_received(&mut a, &mut b, "hi").await, "hi");

    example.terminate();
    assert_eq!(next_status(&mut server).await, ServingStatus::NotServing);
    assert_eq!(next_status(&mut service).await, ServingStatus::NotServing);
    for client in [&mut a, &mut b] {
        assert_eq!(close_code(client).await, CloseCode::Away);
    }
    // The watches end only now, as the hub finishes shutting down: the server stops as soon as
    // they have ended, without waiting out the streams' grace.
    drop((server, service, health));
    let status = example.wait().await;
    assert!(status.success(), "tonic example exited with {status}");
    assert!(
        !example.output().contains("gRPC streams still open"),
        "waited for streams that had ended"
    );
}

/// With `$SHUTDOWN_DRAIN_MS`, SIGTERM reports NOT_SERVING at once and the WebSockets go on
/// working (new ones are accepted) for that long; then they are closed with 1001 as usual.
#[tokio::test]
async fn tonic_keeps_websockets_open_for_the_drain_delay_after_not_serving() {
    use tonic_health::pb::health_check_response::ServingStatus;

    // Long enough for the checks below on a busy machine; the test takes about this long.
    let (mut example, health, mut watch) = tonic_watched(&[("SHUTDOWN_DRAIN_MS", "8000")]).await;
    let mut a = connect(&example.ws_url("/ws/lobby")).await;
    let mut b = connect(&example.ws_url("/ws/lobby")).await;
    assert_eq!(send_until_received(&mut a, &mut b, "hi").await, "hi");

    example.terminate();
    assert_eq!(next_status(&mut watch).await, ServingStatus::NotServing);
    // Load balancers are told; the instance still serves what they send meanwhile.
    send_until_seen(&mut a, &mut b, "still open", "still open").await;
    let mut late = connect(&example.ws_url("/ws/lobby")).await;
    send_until_seen(
        &mut late,
        &mut a,
        "joined during the drain",
        "joined during the drain",
    )
    .await;

    drop((watch, health));
    for client in [&mut a, &mut b, &mut late] {
        assert_eq!(close_code(client).await, CloseCode::Away);
    }
    let status = example.wait().await;
    assert!(status.success(), "tonic example exited with {status}");
}

/// A second Ctrl-C (or SIGTERM) while the first one's shutdown is under way exits at once, drain
/// delay or not; the first alone would have kept the server up for a minute.
#[tokio::test]
async fn tonic_exits_at_once_on_a_second_signal() {
    use tonic_health::pb::health_check_response::ServingStatus;

    let (mut example, _health, mut watch) = tonic_watched(&[("SHUTDOWN_DRAIN_MS", "60000")]).await;
    let mut client = connect(&example.ws_url("/ws/lobby")).await;

    example.interrupt();
    assert_eq!(next_status(&mut watch).await, ServingStatus::NotServing);
    example.assert_second_interrupt_exits_at_once().await;
    // Gone without a close handshake: the socket just ends.
    let end = tokio::time::timeout(PROMPTLY, client.next())
        .await
        .expect("the socket ends with the process");
    assert!(matches!(end, None | Some(Err(_))), "{end:?}");
}

/// An unusable `$SHUTDOWN_DRAIN_MS` stops the example at start, naming the variable.
#[tokio::test]
async fn tonic_names_an_invalid_drain_delay() {
    // A regression that served anyway would never exit: the timeout fails it, and the child is
    // killed when its future is dropped.
    let output = tokio::process::Command::new(example_binary("tonic"))
        .env("ADDR", "127.0.0.1:0")
        .env("SHUTDOWN_DRAIN_MS", "5s")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(PROMPTLY, output)
        .await
        .expect("the example exits on a bad $SHUTDOWN_DRAIN_MS")
        .expect("run the tonic example");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("$SHUTDOWN_DRAIN_MS (5s)"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// auth
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn auth_refuses_upgrades_without_a_valid_token_and_stamps_names() {
    let example = Example::start("auth").await;
    let url = example.ws_url("/ws/lobby");

    assert_eq!(
        try_connect(&url, None).await.err(),
        Some(Some(StatusCode::UNAUTHORIZED)),
        "no token"
    );
    assert_eq!(
        try_connect(&url, Some("Bearer mallory-token")).await.err(),
        Some(Some(StatusCode::UNAUTHORIZED)),
        "invalid token in the header"
    );
    assert_eq!(
        try_connect(&format!("{url}?token=mallory-token"), None)
            .await
            .err(),
        Some(Some(StatusCode::UNAUTHORIZED)),
        "invalid token in the query"
    );

    // Valid tokens: alice in the header, bob in the query string (as a browser would).
    let mut alice = try_connect(&url, Some("Bearer alice-token"))
        .await
        .unwrap_or_else(|status| panic!("alice refused: {status:?}"));
    let mut bob = try_connect(&format!("{url}?token=bob-token"), None)
        .await
        .unwrap_or_else(|status| panic!("bob refused: {status:?}"));
    assert_eq!(
        send_until_received(&mut alice, &mut bob, "hi").await,
        "alice: hi"
    );
    bob.send(WsMessage::text("hello alice")).await.unwrap();
    assert_eq!(next_text(&mut alice).await, "bob: hello alice");
}

/// A WebSocket client of the auth example, authenticated by `?token=`.
async fn connect_as(example: &Example, path: &str, token: &str) -> Client {
    let url = format!("{}?token={token}", example.ws_url(path));
    try_connect(&url, None)
        .await
        .unwrap_or_else(|status| panic!("{url} refused: {status:?}"))
}

/// Sends `body` from `from` to `to` with `POST /dm/{to}` until it reaches `connections` of their
/// connections: each is known once its `on_connect` ran, just after the `101`. Earlier attempts
/// may have reached some of them too.
async fn dm_until_reached(example: &Example, from: &str, to: &str, connections: usize, body: &str) {
    let url = example.http_url(&format!("/dm/{to}"));
    let wanted = format!("sent to {connections} connection(s)\n");
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    loop {
        let (status, answer) = http_as("POST", &url, Some(&format!("{from}-token")), body).await;
        if status == StatusCode::OK && answer == wanted {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{to}'s {connections} connection(s) never became reachable: {status} {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `/whoami` answers with the user a Bearer token stands for, and `401` without a valid one (a
/// `?token=` counts on WebSocket upgrades only).
#[tokio::test]
async fn auth_whoami_names_the_bearer_and_refuses_without_a_token() {
    let example = Example::start("auth").await;
    let url = example.http_url("/whoami");

    for (token, name) in [("alice-token", "alice\n"), ("bob-token", "bob\n")] {
        let (status, body) = http_as("GET", &url, Some(token), "").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, name));
    }
    let (status, _) = http("GET", &url, "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "no token");
    let (status, _) = http_as("GET", &url, Some("mallory-token"), "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "invalid token");
    let (status, _) = http("GET", &format!("{url}?token=alice-token"), "").await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "token in the query string"
    );
}

/// `POST /dm/{name}` reaches every connection of one user and no one else.
#[tokio::test]
async fn auth_sends_a_private_message_to_every_connection_of_one_user() {
    let example = Example::start("auth").await;
    let mut alice = connect_as(&example, "/ws/lobby", "alice-token").await;
    let mut bob_lobby = connect_as(&example, "/ws/lobby", "bob-token").await;
    let mut bob_elsewhere = connect_as(&example, "/ws/elsewhere", "bob-token").await;

    dm_until_reached(&example, "alice", "bob", 2, "psst").await;
    for bob in [&mut bob_lobby, &mut bob_elsewhere] {
        skip_until(bob, "alice (private): psst").await;
    }
    // Alice, in the same room as one of them, sees none of it.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), next_text(&mut alice))
            .await
            .is_err(),
        "a private message reached the sender's room"
    );
    let (status, body) = http_as(
        "POST",
        &example.http_url("/dm/carol"),
        Some("alice-token"),
        "x",
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::NOT_FOUND, "carol is not connected\n")
    );
}

/// `POST /disconnect` closes every connection of the caller with 4000 and no one else's; it is
/// not a logout: the same token opens a new connection at once.
#[tokio::test]
async fn auth_disconnect_closes_the_callers_connections_and_the_token_stays_valid() {
    let example = Example::start("auth").await;
    let mut alice = connect_as(&example, "/ws/lobby", "alice-token").await;
    let mut bob_lobby = connect_as(&example, "/ws/lobby", "bob-token").await;
    let mut bob_elsewhere = connect_as(&example, "/ws/elsewhere", "bob-token").await;
    dm_until_reached(&example, "alice", "bob", 2, "psst").await;
    dm_until_reached(&example, "bob", "alice", 1, "hi").await;

    // A token in the URL counts on WebSocket upgrades only.
    let url = example.http_url("/disconnect");
    let (status, _) = http("POST", &format!("{url}?token=bob-token"), "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = http_as("POST", &url, Some("bob-token"), "").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "closed 2 connection(s)\n")
    );
    assert_eq!(close_code(&mut bob_lobby).await, CloseCode::from(4000));
    assert_eq!(close_code(&mut bob_elsewhere).await, CloseCode::from(4000));

    // Alice's connection is untouched: bob can still reach it.
    let (status, _) = http_as(
        "POST",
        &example.http_url("/dm/alice"),
        Some("bob-token"),
        "bye",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    skip_until(&mut alice, "bob (private): bye").await;

    // Bob's token still opens connections, by header or query string, and they work.
    let mut bob_again = try_connect(&example.ws_url("/ws/lobby"), Some("Bearer bob-token"))
        .await
        .unwrap_or_else(|status| panic!("bob refused after /disconnect: {status:?}"));
    send_until_seen(&mut bob_again, &mut alice, "back", "bob: back").await;
    let _bob_query = connect_as(&example, "/ws/elsewhere", "bob-token").await;
    dm_until_reached(&example, "alice", "bob", 2, "welcome back").await;
}

/// A configuration mistake is named: the example exits with an error that says which
/// variable is wrong, and does not print the Redis URL (it may carry a password).
#[tokio::test]
async fn chat_names_the_variable_it_cannot_use() {
    let binary = example_binary("chat");
    for (env, wanted) in [
        (("ADDR", "not-an-address"), "$ADDR (not-an-address)"),
        (("REDIS_URL", "nosuch://secret@x"), "$REDIS_URL: "),
    ] {
        let output = tokio::process::Command::new(&binary)
            .env("ADDR", "127.0.0.1:0")
            .env_remove("REDIS_URL")
            .env(env.0, env.1)
            .stdin(Stdio::null())
            .output()
            .await
            .expect("run the chat example");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{env:?}: {stderr}");
        assert!(stderr.contains(wanted), "{env:?}: {stderr}");
        assert!(!stderr.contains("secret"), "{env:?}: {stderr}");
    }
}
