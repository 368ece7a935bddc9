//! A panic in a broker task (a bug, which no input is known to trigger) costs its connection,
//! not the task: these tests make one panic on purpose, through triggers compiled into test
//! builds only, against a real Redis and real WebSocket clients.
//!
//! The tests use the integration tests' support code (`tests/support`), which names the crate
//! `tower_ws_hub` (see the `extern crate self` in `lib.rs`).

use std::time::Duration;

#[path = "../../../tests/support/redis.rs"]
mod redis_support;
#[path = "../../../tests/support/mod.rs"]
mod support;

use redis_support::{RedisServer, publish_raw};
use support::{Server, eventually, next_text, send_text, serve_hub, wait_members};

use crate::redis::RedisConfig;
use crate::{BrokerStatus, Hub};

/// A payload on a room channel that makes the subscriber receiving it panic.
pub(super) const PANICKING_PAYLOAD: &[u8] = b"tower-ws-hub test: panic in the subscriber";
/// A room whose messages make the publisher sending them panic.
pub(super) const PANICKING_ROOM: &str = "tower-ws-hub-test-panic-in-the-publisher";

const PREFIX: &str = "recovery";

async fn instance(redis: &RedisServer) -> Server {
    let config = RedisConfig::from_url(&redis.url())
        .unwrap()
        .channel_prefix(PREFIX)
        .probe(Duration::from_millis(200), Duration::from_secs(1))
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200));
    serve_hub(Hub::builder().redis(config).build()).await
}

/// Waits until `hub` counts `panics` task panics and is connected and subscribed to one room
/// again.
async fn wait_recovered(hub: &Hub, panics: u64) -> BrokerStatus {
    eventually(
        &format!("{panics} task panic(s), then connected again"),
        || {
            let status = hub.broker_status();
            status.task_panics == panics && status.connected && status.subscribed_rooms == 1
        },
    )
    .await;
    hub.broker_status()
}

/// Instances A and B with a client each in `room`, subscribed.
async fn two_instances(redis: &RedisServer, room: &str) -> [(Server, support::Client); 2] {
    let a = instance(redis).await;
    let b = instance(redis).await;
    let ca = a.connect(room).await;
    let cb = b.connect(room).await;
    for server in [&a, &b] {
        wait_members(&server.hub, room, 1).await;
        wait_recovered(&server.hub, 0).await;
    }
    [(a, ca), (b, cb)]
}

#[tokio::test]
async fn a_subscriber_task_that_panics_reconnects_and_delivers_again() {
    let redis = RedisServer::start().await;
    let [(a, mut ca), (b, mut cb)] = two_instances(&redis, "lobby").await;

    let mut plain = redis.connection().await;
    let receivers = publish_raw(&mut plain, &format!("{PREFIX}:lobby"), PANICKING_PAYLOAD).await;
    assert_eq!(receivers, 2, "both instances' subscribers got the payload");

    for server in [&a, &b] {
        let status = wait_recovered(&server.hub, 1).await;
        assert_eq!(status.reconnects, 1, "{status:?}");
        let error = status.last_error.unwrap_or_default();
        assert!(
            error.starts_with("Redis subscriber task ")
                && error.ends_with("panicked: test: a panic in the subscriber"),
            "{error}"
        );
    }
    // Both directions go through Redis again.
    send_text(&mut ca, "from A, after the panic").await;
    assert_eq!(next_text(&mut cb).await, "from A, after the panic");
    send_text(&mut cb, "from B, after the panic").await;
    assert_eq!(next_text(&mut ca).await, "from B, after the panic");
}

#[tokio::test]
async fn a_publisher_task_that_panics_counts_its_batch_failed_and_publishes_again() {
    let redis = RedisServer::start().await;
    let [(a, mut ca), (_b, mut cb)] = two_instances(&redis, "lobby").await;

    a.hub.publish(PANICKING_ROOM, "boom").await.unwrap();
    let status = wait_recovered(&a.hub, 1).await;
    assert!(status.publisher_connected, "{status:?}");
    assert_eq!(status.publish_failures, 1, "the panicked batch: {status:?}");
    let error = status.last_error.unwrap_or_default();
    assert!(
        error.starts_with("Redis publisher task ")
            && error.ends_with("panicked: test: a panic in the publisher"),
        "{error}"
    );

    send_text(&mut ca, "from A, after the panic").await;
    assert_eq!(next_text(&mut cb).await, "from A, after the panic");
    a.hub.publish("lobby", "published on A").await.unwrap();
    assert_eq!(next_text(&mut cb).await, "published on A");
    assert_eq!(a.hub.broker_status().task_panics, 1);
}
