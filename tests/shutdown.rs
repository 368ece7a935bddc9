//! Graceful shutdown: every client gets close 1001 after what was queued for it, new upgrades
//! get 503 while ordinary routes keep working, publishing is refused, and a client that never
//! answers cannot hold the shutdown up past its grace period.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use support::raw::{Upgrade, opcode};
use support::*;
use tower_ws_hub::{Hub, HubLayer, Message, PublishError, close_code};

#[tokio::test]
async fn shutdown_closes_every_client_with_1001() {
    let server = serve_hub(Hub::builder().build()).await;
    let mut clients = Vec::new();
    for room in ["a", "a", "b", "c"] {
        clients.push(server.connect(room).await);
    }
    eventually("four connections", || server.hub.stats().connections == 4).await;

    let hub = server.hub.clone();
    let shutdown = tokio::spawn(async move { hub.shutdown().await });
    for client in &mut clients {
        assert_eq!(
            close_code_to_end(client).await,
            Some(close_code::GOING_AWAY)
        );
    }
    tokio::time::timeout(PROMPTLY, shutdown)
        .await
        .expect("shutdown did not finish")
        .unwrap();
    let stats = server.hub.stats();
    assert_eq!(stats.connections, 0);
    assert!(server.hub.rooms().is_empty());
    assert!(server.hub.is_shutting_down());
}

#[tokio::test]
async fn messages_queued_before_shutdown_are_delivered_before_the_close() {
    let server = serve_hub(Hub::builder().build()).await;
    let mut client = server.connect("last-words").await;
    wait_members(&server.hub, "last-words", 1).await;

    // Queue a backlog the client has not read yet, then shut down at once.
    for i in 0..200 {
        server
            .hub
            .publish("last-words", Message::text(i.to_string()))
            .await
            .unwrap();
    }
    let hub = server.hub.clone();
    let shutdown = tokio::spawn(async move { hub.shutdown().await });

    for i in 0..200 {
        assert_eq!(next_text(&mut client).await, i.to_string());
    }
    assert_eq!(
        close_code_to_end(&mut client).await,
        Some(close_code::GOING_AWAY)
    );
    tokio::time::timeout(PROMPTLY, shutdown)
        .await
        .expect("shutdown did not finish")
        .unwrap();
}

#[tokio::test]
async fn publishing_after_shutdown_is_refused() {
    let hub = Hub::builder().build();
    hub.shutdown().await;
    let error = hub.publish("any", Message::text("late")).await.unwrap_err();
    assert_eq!(error, PublishError::ShuttingDown);
}

#[tokio::test]
async fn an_upgrade_after_shutdown_is_refused_with_503_while_other_routes_still_work() {
    let hub = Hub::builder().build();
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .layer(HubLayer::new(hub.clone()).route("/ws/{room}"));
    // An HTTP server that outlives the hub, so the upgrade reaches the layer.
    let server = serve_router_forever(app, hub).await;
    server.hub.shutdown().await;

    let response = Upgrade::new("/ws/lobby").send(server.addr).await;
    response.assert_rejection(503, "shutting down");
    // Sooner than for a full server: another instance is likely to take the retry.
    assert_eq!(response.header("retry-after"), Some("5"));
    assert_eq!(server.hub.stats().connections_opened, 0);

    let reply = http_get(&server.http_url("/healthz")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "ok");
}

#[tokio::test]
async fn shutdown_finishes_even_if_a_client_never_answers_the_close() {
    let hub = Hub::builder()
        .close_timeout(Duration::from_millis(200))
        .shutdown_grace(Duration::from_millis(500))
        .build();
    let server = serve_hub(hub).await;
    let mut polite = server.connect("mixed").await;
    // A raw client that reads nothing and never answers.
    let _mute = Upgrade::new("/ws/mixed").open(server.addr).await;
    wait_members(&server.hub, "mixed", 2).await;

    let hub = server.hub.clone();
    let shutdown = tokio::spawn(async move { hub.shutdown().await });
    assert_eq!(
        close_code_to_end(&mut polite).await,
        Some(close_code::GOING_AWAY)
    );
    tokio::time::timeout(PROMPTLY, shutdown)
        .await
        .expect("shutdown hung on a client that never answered")
        .unwrap();
    eventually("no connections", || server.hub.stats().connections == 0).await;
}

#[tokio::test]
async fn a_raw_client_sees_the_1001_close_frame_after_its_queued_messages() {
    let server = serve_hub(Hub::builder().build()).await;
    let mut raw = Upgrade::new("/ws/raw").open(server.addr).await;
    wait_members(&server.hub, "raw", 1).await;
    server
        .hub
        .publish("raw", Message::text("before"))
        .await
        .unwrap();
    let hub = server.hub.clone();
    let shutdown = tokio::spawn(async move { hub.shutdown().await });

    let first = raw.read_frame().await.expect("the queued message");
    assert_eq!(
        (first.opcode, first.payload.as_slice()),
        (opcode::TEXT, &b"before"[..])
    );
    assert_eq!(raw.close_code().await, Some(close_code::GOING_AWAY));
    raw.wait_eof().await;
    tokio::time::timeout(PROMPTLY, shutdown)
        .await
        .expect("shutdown did not finish")
        .unwrap();
}

#[tokio::test]
async fn the_http_server_stops_after_hub_shutdown_via_shutdown_started() {
    // serve_hub wires axum's graceful shutdown to `hub.shutdown_started()`.
    let server = serve_hub(Hub::builder().build()).await;
    let mut client = server.connect("bye").await;
    wait_members(&server.hub, "bye", 1).await;
    let hub = server.hub.clone();
    let shutdown = tokio::spawn(async move { hub.shutdown().await });
    assert_eq!(
        close_code_to_end(&mut client).await,
        Some(close_code::GOING_AWAY)
    );
    shutdown.await.unwrap();
    tokio::time::timeout(PROMPTLY, server.task)
        .await
        .expect("the HTTP server kept running")
        .unwrap();
    assert!(tokio::net::TcpStream::connect(server.addr).await.is_err());
}

/// An authorizer still deciding when the hub shuts down (here one that never decides, with no
/// `authorize_timeout`): its request is answered `503` as the shutdown starts, so it holds
/// neither `Hub::shutdown` nor the HTTP server's graceful shutdown, which waits for every
/// connection.
#[tokio::test]
async fn an_authorization_in_flight_is_answered_503_at_shutdown_and_the_http_server_stops() {
    let pending = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let hub = Hub::builder().build();
    let layer = HubLayer::new(hub.clone())
        .route("/ws/{room}")
        .authorize(never_deciding_on("hang", std::sync::Arc::clone(&pending)))
        .authorize_timeout(None);
    // serve_router wires axum's graceful shutdown to `hub.shutdown_started()`.
    let server = serve_router(Router::new().layer(layer), hub.clone()).await;
    let addr = server.addr;
    let answer = tokio::spawn(async move { Upgrade::new("/ws/hang").send(addr).await });
    eventually("the authorizer is deciding", || {
        pending.load(Ordering::SeqCst) == 1
    })
    .await;

    tokio::time::timeout(PROMPTLY, hub.shutdown())
        .await
        .expect("shutdown waited for the authorizer");
    answer
        .await
        .expect("no answer to the request")
        .assert_rejection(503, "shutting down");
    tokio::time::timeout(PROMPTLY, server.task)
        .await
        .expect("the HTTP server kept running")
        .unwrap();
    let stats = hub.stats();
    assert_eq!(stats.connections_opened, 0, "{stats:?}");
    assert_eq!(stats.handshakes_rejected, 1, "{stats:?}");
    assert_eq!(stats.authorize_timeouts, 0, "{stats:?}");
}

/// An extension the hub keeps for hooks, whose first clone starts `Hub::shutdown` on another
/// thread: the hub clones kept extensions between its last shutdown check and spawning the
/// connection's task, so this is a shutdown (a SIGTERM, say) landing in that window, made
/// deterministic.
struct ShutdownOnClone(std::sync::Arc<ShutdownProbe>);

struct ShutdownProbe {
    hub: Hub,
    runtime: tokio::runtime::Handle,
    /// `Hub::stats()` as `shutdown()` returned.
    at_return: std::sync::Mutex<Option<tower_ws_hub::HubStats>>,
    armed: std::sync::atomic::AtomicBool,
}

impl Clone for ShutdownOnClone {
    fn clone(&self) -> Self {
        let probe = &self.0;
        if probe.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            let shutting = std::sync::Arc::clone(probe);
            std::thread::spawn(move || {
                shutting.runtime.block_on(shutting.hub.shutdown());
                *shutting.at_return.lock().unwrap() = Some(shutting.hub.stats());
            });
            // Let the shutdown raise its flag (waited for: on a busy machine the thread may
            // start late, and the upgrade would then simply finish before the shutdown), then
            // close the connections it knows of and wait.
            let started = std::time::Instant::now();
            while !probe.hub.is_shutting_down() && started.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Self(std::sync::Arc::clone(&self.0))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_return_before_an_upgrade_it_raced_with_is_closed() {
    let hub = Hub::builder()
        .keep_extension::<ShutdownOnClone>()
        .close_timeout(Duration::from_millis(500))
        .build();
    let probe = std::sync::Arc::new(ShutdownProbe {
        hub: hub.clone(),
        runtime: tokio::runtime::Handle::current(),
        at_return: std::sync::Mutex::new(None),
        armed: std::sync::atomic::AtomicBool::new(true),
    });
    let layer_probe = std::sync::Arc::clone(&probe);
    let app = Router::new()
        .layer(HubLayer::new(hub.clone()).route("/ws/{room}"))
        .layer(axum::middleware::map_request(
            move |mut request: axum::extract::Request| {
                let extension = ShutdownOnClone(std::sync::Arc::clone(&layer_probe));
                async move {
                    request.extensions_mut().insert(extension);
                    request
                }
            },
        ));
    let server = serve_router_forever(app, hub.clone()).await;
    let response = Upgrade::new("/ws/late").send(server.addr).await;
    // The shutdown began after the hub's last check: the upgrade went ahead.
    assert_eq!(response.status, 101);

    eventually("shutdown returned", || {
        probe.at_return.lock().unwrap().is_some()
    })
    .await;
    let at_return = probe.at_return.lock().unwrap().clone().unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let now = hub.stats();
    assert_eq!(
        at_return.connections_opened, now.connections_opened,
        "a connection opened after shutdown() returned: at return {at_return:?}, now {now:?}"
    );
    assert_eq!(at_return.connections, 0, "{at_return:?}");
}

/// Once `shutdown` has returned, nothing connects and no hook runs: an upgrade the hub had
/// accepted (its `101` given to the server) but whose socket had not come yet when the grace
/// period ran out is abandoned, not served later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_connection_opens_and_no_hook_runs_after_shutdown_returned() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use axum::extract::Request;
    use axum::middleware::{self, Next};

    let (builder, connects, _) =
        counting_hooks(Hub::builder().shutdown_grace(Duration::from_millis(300)));
    let hub = builder.build();
    // A middleware in front of the layer that takes its time after the hub answered (a slow
    // access log, say): the `101` goes out 1.5 s later.
    let answered = Arc::new(AtomicBool::new(false));
    let slow_after_answer = {
        let answered = Arc::clone(&answered);
        move |request: Request, next: Next| {
            let answered = Arc::clone(&answered);
            async move {
                let response = next.run(request).await;
                answered.store(true, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1500)).await;
                response
            }
        }
    };
    let app = Router::new()
        .layer(HubLayer::new(hub.clone()).route("/ws/{room}"))
        .layer(middleware::from_fn(slow_after_answer));
    let server = serve_router_forever(app, hub.clone()).await;
    let mut slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut slow, &Upgrade::new("/ws/slow").to_bytes())
        .await
        .unwrap();
    eventually("the hub accepted the upgrade", || {
        answered.load(Ordering::SeqCst)
    })
    .await;

    tokio::time::timeout(PROMPTLY, hub.shutdown())
        .await
        .expect("shutdown returned");
    let at_return = hub.stats();
    // The middleware lets the `101` out and the server hands the socket over, which the hub
    // drops: the client reads the `101`, then the end of the stream.
    let mut seen = Vec::new();
    tokio::time::timeout(
        PROMPTLY,
        tokio::io::AsyncReadExt::read_to_end(&mut slow, &mut seen),
    )
    .await
    .expect("the socket ends")
    .ok();
    assert!(
        seen.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    let now = hub.stats();
    assert_eq!(
        connects.load(Ordering::SeqCst),
        0,
        "on_connect ran after shutdown returned"
    );
    assert_eq!(
        now.connections_opened, at_return.connections_opened,
        "a connection opened after shutdown returned: at return {at_return:?}, now {now:?}"
    );
    drop(slow);
}

/// With no grace period and messages still queued, the shutdown returns at once and still
/// runs every `on_disconnect`.
#[tokio::test]
async fn shutdown_with_zero_grace_still_runs_every_disconnect_hook() {
    let (builder, connects, disconnects) =
        counting_hooks(Hub::builder().shutdown_grace(Duration::ZERO));
    let hub = builder.build();
    let server = serve_hub(hub).await;
    let mut clients = Vec::new();
    for i in 0..10 {
        clients.push(server.connect(&format!("r{}", i % 3)).await);
    }
    eventually("10 open", || server.hub.connection_count() == 10).await;
    for i in 0..50 {
        let _ = server
            .hub
            .publish(&format!("r{}", i % 3), Message::text("m"))
            .await;
    }
    let started = std::time::Instant::now();
    server.hub.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(connects.load(Ordering::SeqCst), 10);
    assert_eq!(disconnects.load(Ordering::SeqCst), 10);
    assert!(server.hub.rooms().is_empty());
    assert_eq!(server.hub.connection_count(), 0);
}
