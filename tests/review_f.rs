//! Review probes (rev-f): hooks, stats and shutdown edges.
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::*;
use tower_ws_hub::{Hub, InboundAction, Message};

#[tokio::test]
async fn a_panicking_disconnect_hook_leaves_nothing_behind() {
    let connects = Arc::new(AtomicUsize::new(0));
    let disconnects = Arc::new(AtomicUsize::new(0));
    let (c, d) = (Arc::clone(&connects), Arc::clone(&disconnects));
    let hub = Hub::builder()
        .on_connect(move |_| {
            c.fetch_add(1, Ordering::SeqCst);
        })
        .on_disconnect(move |_| {
            d.fetch_add(1, Ordering::SeqCst);
            std::panic::panic_any(42u32);
        })
        .on_message(|_, m| {
            if m.as_text() == Some("boom") {
                std::panic::panic_any(7u8);
            }
            InboundAction::Forward(m)
        })
        .build();
    let server = serve_hub(hub).await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(server.connect("x").await);
    }
    wait_members(&server.hub, "x", 5).await;
    send_text(&mut clients[0], "boom").await;
    assert_eq!(close_code(&mut clients[0]).await, Some(1011));
    drop(clients);
    eventually("all gone", || {
        server.hub.connection_count() == 0 && server.hub.rooms().is_empty()
    })
    .await;
    assert_eq!(connects.load(Ordering::SeqCst), 5);
    assert_eq!(disconnects.load(Ordering::SeqCst), 5);
    let stats = server.hub.stats();
    assert_eq!(stats.hook_panics, 6, "{stats:?}");
    assert_eq!(stats.connections_opened, stats.connections_closed);
}

#[tokio::test]
async fn shutdown_with_zero_grace_still_runs_every_disconnect_hook() {
    let connects = Arc::new(AtomicUsize::new(0));
    let disconnects = Arc::new(AtomicUsize::new(0));
    let (c, d) = (Arc::clone(&connects), Arc::clone(&disconnects));
    let hub = Hub::builder()
        .shutdown_grace(Duration::ZERO)
        .on_connect(move |_| {
            c.fetch_add(1, Ordering::SeqCst);
        })
        .on_disconnect(move |_| {
            d.fetch_add(1, Ordering::SeqCst);
        })
        .build();
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

/// The runtime serving the hub goes away (the application returns from `main` without
/// `Hub::shutdown`, a test's runtime ends) with a connection open: the connection leaves its
/// room, and `on_disconnect` must run for it too ("however it ended").
#[test]
fn on_disconnect_runs_when_the_runtime_serving_the_connection_goes_away() {
    let connects = Arc::new(AtomicUsize::new(0));
    let disconnects = Arc::new(AtomicUsize::new(0));
    let (c, d) = (Arc::clone(&connects), Arc::clone(&disconnects));
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = server_rt.block_on(async move {
        let hub = Hub::builder()
            .on_connect(move |_| {
                c.fetch_add(1, Ordering::SeqCst);
            })
            .on_disconnect(move |_| {
                d.fetch_add(1, Ordering::SeqCst);
            })
            .build();
        serve_hub(hub).await
    });
    let url = server.ws_url("gone");
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = client_rt.block_on(connect(&url));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while connects.load(Ordering::SeqCst) == 0 {
        assert!(std::time::Instant::now() < deadline, "no on_connect");
        std::thread::sleep(Duration::from_millis(5));
    }
    let hub = server.hub.clone();
    drop(server);
    server_rt.shutdown_timeout(Duration::from_secs(5));
    assert!(hub.rooms().is_empty(), "the connection left its room");
    assert_eq!(hub.connection_count(), 0);
    assert_eq!(
        disconnects.load(Ordering::SeqCst),
        connects.load(Ordering::SeqCst),
        "on_disconnect once per on_connect"
    );
    drop(client);
}
