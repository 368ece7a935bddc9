//! The layer's callbacks while it answers an upgrade request: the room extractor, an
//! `OriginPolicy::predicate`, the `remote_addr` finder and the authorizer (its call and its
//! future).
//!
//! An authorizer that takes longer than `HubLayer::authorize_timeout` gets its request answered
//! `503` with `Retry-After`, counted in `HubStats::authorize_timeouts`, and gives back its place.
//!
//! A callback that panics is an application bug: its request is answered `500` with a reason
//! that says nothing of the panic, counted in `HubStats::callback_panics`, logged with the
//! callback's name and the panic message, and gives back any place it held. The server and the
//! client's keep-alive HTTP/1.1 connection go on serving. Everything goes over real loopback
//! sockets through `axum::serve`, in raw HTTP/1.1 so that the next request can go on the same
//! connection.

mod support;

use std::time::Duration;

use axum::Router;
use axum::http::request::Parts;
use axum::routing::get;
use support::raw::{RawWs, Upgrade};
use support::*;
use tokio::net::TcpStream;
use tower_ws_hub::{Hub, HubLayer, OriginPolicy, RoomAuthorizer, RoomMatch};

/// In every panic message; must never reach the client.
const SECRET: &str = "s3cr3t-in-the-panic";

/// A hub with one connection place, served with `layer` (given the hub) in front of a router
/// with `/healthz`.
async fn serve_one_place(layer: impl FnOnce(Hub) -> HubLayer) -> Server {
    let hub = Hub::builder().max_connections(Some(1)).build();
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .layer(layer(hub.clone()));
    serve_router(app, hub).await
}

/// Sends `panicking` (whose callback panics) on a new connection and checks the answer, the
/// counters and the log line naming `callback`; then, on the same keep-alive connection,
/// opens `working` and checks that it joins `room` and holds the server's one place (so the
/// panicking request gave back whatever it held). Returns the open WebSocket.
async fn panics_then_serves(
    server: &Server,
    callback: &str,
    panicking: Upgrade,
    working: Upgrade,
    room: &str,
) -> RawWs {
    let (_guard, logs) = capture_logs(tracing::Level::ERROR);
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (answer, stream) = panicking.send_on(stream).await;
    answer.assert_rejection(500, "internal error");
    assert!(
        !answer.text().contains(SECRET),
        "the panic message leaked: {answer:?}"
    );
    let stats = server.hub.stats();
    assert_eq!(stats.callback_panics, 1, "{stats:?}");
    assert_eq!(stats.handshakes_rejected, 1, "{stats:?}");
    assert_eq!(stats.connections_opened, 0, "{stats:?}");
    let logged = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert!(
        logged.contains(callback) && logged.contains(SECRET),
        "the log does not name {callback:?} and the panic:\n{logged}"
    );

    // The same connection serves the next request, which gets the one place.
    let ws = working.open_on(stream).await;
    wait_members(&server.hub, room, 1).await;
    Upgrade::new("/ws/other")
        .send(server.addr)
        .await
        .assert_rejection(503, "connection limit");
    // Still one panic: the callback ran fine for the others.
    assert_eq!(server.hub.stats().callback_panics, 1);
    ws
}

#[tokio::test]
async fn a_panicking_extractor_is_answered_500_and_the_connection_serves_the_next_request() {
    let extractor = |parts: &Parts| match parts.uri.path() {
        "/boom" => panic!("extractor bug ({SECRET})"),
        "/chat" => RoomMatch::Room("lobby".to_owned()),
        // `/ws/other` (the limit check) is a hub request too.
        path => match path.strip_prefix("/ws/") {
            Some(room) => RoomMatch::Room(room.to_owned()),
            None => RoomMatch::Pass,
        },
    };
    let server = serve_one_place(|hub| HubLayer::new(hub).extractor(extractor)).await;
    let mut ws = panics_then_serves(
        &server,
        "HubLayer::extractor",
        Upgrade::new("/boom"),
        Upgrade::new("/chat"),
        "lobby",
    )
    .await;
    ws.send(0x1, b"hi").await;
    // Requests the extractor passes on still reach the router.
    assert_eq!(http_get(&server.http_url("/healthz")).await.body, "ok");
}

#[tokio::test]
async fn a_panicking_origin_predicate_is_answered_500_and_the_connection_serves_the_next_request() {
    let predicate = OriginPolicy::predicate(|origin, _| {
        assert!(
            origin.is_none_or(|origin| origin != "http://boom.example"),
            "origin predicate bug ({SECRET})"
        );
        true
    });
    let server =
        serve_one_place(|hub| HubLayer::new(hub).route("/ws/{room}").origin(predicate)).await;
    panics_then_serves(
        &server,
        "OriginPolicy::predicate",
        Upgrade::new("/ws/r").header("Origin", "http://boom.example"),
        Upgrade::new("/ws/r").header("Origin", "http://fine.example"),
        "r",
    )
    .await;
}

#[tokio::test]
async fn a_panicking_remote_addr_finder_is_answered_500_and_gives_back_its_place() {
    let server = serve_one_place(|hub| {
        HubLayer::new(hub).route("/ws/{room}").remote_addr(|parts| {
            assert!(
                !parts.headers.contains_key("x-boom"),
                "remote_addr bug ({SECRET})"
            );
            None
        })
    })
    .await;
    panics_then_serves(
        &server,
        "HubLayer::remote_addr",
        Upgrade::new("/ws/r").header("x-boom", "1"),
        Upgrade::new("/ws/r"),
        "r",
    )
    .await;
}

#[tokio::test]
async fn an_authorizer_that_panics_when_called_is_answered_500_and_gives_back_its_place() {
    let authorizer = |_: &Parts, room: &str| {
        // Before it returns its future.
        assert_ne!(room, "bad", "authorizer bug ({SECRET})");
        async { true }
    };
    let server =
        serve_one_place(|hub| HubLayer::new(hub).route("/ws/{room}").authorize(authorizer)).await;
    panics_then_serves(
        &server,
        "HubLayer::authorize",
        Upgrade::new("/ws/bad"),
        Upgrade::new("/ws/good"),
        "good",
    )
    .await;
}

#[tokio::test]
async fn an_authorizer_whose_future_panics_is_answered_500_and_gives_back_its_place() {
    let authorizer = |_: &Parts, room: &str| {
        let bad = room == "bad";
        async move {
            // Decides later, as one that asks a permission service would.
            tokio::time::sleep(Duration::from_millis(10)).await;
            assert!(!bad, "authorizer future bug ({SECRET})");
            true
        }
    };
    let server =
        serve_one_place(|hub| HubLayer::new(hub).route("/ws/{room}").authorize(authorizer)).await;
    panics_then_serves(
        &server,
        "HubLayer::authorize (its future)",
        Upgrade::new("/ws/bad"),
        Upgrade::new("/ws/good"),
        "good",
    )
    .await;
}

/// Panics are logged at most once a second, and every one is counted.
#[tokio::test]
async fn panics_are_all_counted_and_logged_at_most_once_a_second() {
    let (_guard, logs) = capture_logs(tracing::Level::ERROR);
    let server = serve_one_place(|hub| {
        HubLayer::new(hub).route("/ws/{room}").authorize(
            |_: &Parts, _: &str| -> std::future::Ready<bool> {
                panic!("authorizer bug ({SECRET})")
            },
        )
    })
    .await;
    for _ in 0..10 {
        Upgrade::new("/ws/r")
            .send(server.addr)
            .await
            .assert_rejection(500, "internal error");
    }
    let stats = server.hub.stats();
    assert_eq!(stats.callback_panics, 10, "{stats:?}");
    assert_eq!(stats.handshakes_rejected, 10, "{stats:?}");
    let logged = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    let lines = logged.matches("a layer callback panicked").count();
    // Ten requests on loopback take far less than a second, two at most if one straddles it.
    assert!((1..=2).contains(&lines), "{lines} log lines:\n{logged}");
}

// ----- authorize_timeout -----------------------------------------------------------------------

/// An authorizer that asks a permission service: for room `slow` it takes far longer than the
/// layer's `authorize_timeout`, for room `quick` a little less, for any other room no time.
fn permission_service(_: &Parts, room: &str) -> impl Future<Output = bool> + Send + use<> {
    let wait = match room {
        "slow" => Duration::from_secs(60),
        "quick" => Duration::from_millis(50),
        _ => Duration::ZERO,
    };
    async move {
        tokio::time::sleep(wait).await;
        true
    }
}

#[tokio::test]
async fn an_authorizer_slower_than_the_timeout_is_answered_503_and_gives_back_its_place() {
    let (_guard, logs) = capture_logs(tracing::Level::WARN);
    let timeout = Duration::from_millis(300);
    let server = serve_one_place(|hub| {
        HubLayer::new(hub)
            .route("/ws/{room}")
            .authorize(permission_service)
            .authorize_timeout(Some(timeout))
    })
    .await;
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let started = tokio::time::Instant::now();
    let (answer, stream) = Upgrade::new("/ws/slow").send_on(stream).await;
    let waited = started.elapsed();
    answer.assert_rejection(503, "authorization took too long");
    assert_eq!(answer.header("retry-after"), Some("10"), "{answer:?}");
    assert!(waited >= timeout, "answered after {waited:?}");
    assert!(waited < timeout * 10, "answered after {waited:?}");
    let stats = server.hub.stats();
    assert_eq!(stats.authorize_timeouts, 1, "{stats:?}");
    assert_eq!(stats.handshakes_rejected, 1, "{stats:?}");
    assert_eq!(stats.callback_panics, 0, "{stats:?}");
    let logged = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert!(
        logged.contains("authorize_timeout") && logged.contains("slow"),
        "no log line names the timeout and the room:\n{logged}"
    );

    // The place is free again, and an authorizer that takes less than the timeout still lets
    // its client in, on the same keep-alive connection.
    let mut ws = Upgrade::new("/ws/quick").open_on(stream).await;
    wait_members(&server.hub, "quick", 1).await;
    Upgrade::new("/ws/other")
        .send(server.addr)
        .await
        .assert_rejection(503, "connection limit");
    ws.send(0x1, b"hi").await;
    assert_eq!(server.hub.stats().authorize_timeouts, 1);
}

/// Panics when dropped (unless already unwinding), saying what dropped it and [`SECRET`].
struct PanicsOnDrop(&'static str);

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("authorizer guard {} ({SECRET})", self.0);
        }
    }
}

/// An authorizer that lets every room in but `hang`, whose future never decides and holds a
/// [`PanicsOnDrop`] saying `dropped`; each call is reported on `called`.
fn hangs_on_room_hang(
    dropped: &'static str,
    called: tokio::sync::watch::Sender<bool>,
) -> impl RoomAuthorizer {
    move |_: &Parts, room: &str| {
        let hangs = room == "hang";
        called.send_replace(true);
        async move {
            if hangs {
                let _guard = PanicsOnDrop(dropped);
                std::future::pending::<()>().await;
            }
            true
        }
    }
}

/// An authorizer's future that panics when it is dropped undecided (a guard of the
/// application's, say): `authorize_timeout` drops it, and that panic must not unwind through
/// the HTTP server's connection task either. The request is still answered `503`, the panic is
/// counted and logged, and the keep-alive connection serves the next request.
#[tokio::test]
async fn an_authorizer_future_that_panics_when_dropped_undecided_is_still_answered() {
    let (called, _) = tokio::sync::watch::channel(false);
    let authorizer = hangs_on_room_hang("dropped undecided", called);
    let (_guard, logs) = capture_logs(tracing::Level::ERROR);
    let server = serve_one_place(|hub| {
        HubLayer::new(hub)
            .route("/ws/{room}")
            .authorize(authorizer)
            .authorize_timeout(Some(Duration::from_millis(200)))
    })
    .await;
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (answer, stream) = Upgrade::new("/ws/hang").send_on(stream).await;
    answer.assert_rejection(503, "authorization took too long");
    assert!(!answer.text().contains(SECRET), "{answer:?}");
    let stats = server.hub.stats();
    assert_eq!(stats.authorize_timeouts, 1, "{stats:?}");
    assert_eq!(stats.callback_panics, 1, "{stats:?}");
    assert_eq!(stats.handshakes_rejected, 1, "{stats:?}");
    let logged = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert!(
        logged.contains("HubLayer::authorize") && logged.contains(SECRET),
        "the log does not name the authorizer and the panic:\n{logged}"
    );
    // The request was answered 503, not 500: the log must not say otherwise.
    assert!(
        !logged.contains("answered 500"),
        "the log gives the request another answer than its 503:\n{logged}"
    );

    // The place is free again, and the same connection serves the next request.
    let _ws = Upgrade::new("/ws/good").open_on(stream).await;
    wait_members(&server.hub, "good", 1).await;
}

/// The same future, dropped undecided because its client hung up: the HTTP server drops the
/// response future, and with it the authorizer's. That panic is caught, counted and logged
/// too, instead of unwinding through the HTTP server's task (where the default panic hook
/// would print whatever the application put in its message, uncounted), and the place it
/// held is free for the next client.
#[tokio::test]
async fn an_authorizer_future_dropped_because_its_client_hung_up_is_guarded_too() {
    let (called, mut was_called) = tokio::sync::watch::channel(false);
    let authorizer = hangs_on_room_hang("dropped by a hang-up", called);
    let (_guard, logs) = capture_logs(tracing::Level::ERROR);
    let server =
        serve_one_place(|hub| HubLayer::new(hub).route("/ws/{room}").authorize(authorizer)).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stream, &Upgrade::new("/ws/hang").to_bytes())
        .await
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        was_called.wait_for(|called| *called),
    )
    .await
    .expect("the authorizer was never called")
    .unwrap();
    drop(stream);

    eventually("the hang-up's panic is counted", || {
        server.hub.stats().callback_panics == 1
    })
    .await;
    let stats = server.hub.stats();
    assert_eq!(stats.authorize_timeouts, 0, "{stats:?}");
    let logged = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert!(
        logged.contains("HubLayer::authorize (dropping its future)") && logged.contains(SECRET),
        "the log does not name the authorizer and the panic:\n{logged}"
    );
    // Nobody was answered: the log must not say the request got a 500.
    assert!(
        !logged.contains("answered 500"),
        "the log gives the vanished client an answer:\n{logged}"
    );
    // The one place is free again.
    let _ws = Upgrade::new("/ws/good").open(server.addr).await;
    wait_members(&server.hub, "good", 1).await;
}
