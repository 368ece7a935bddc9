//! What no input can make happen on purpose, made to happen through triggers compiled into
//! test builds only, against a real Redis and real WebSocket clients: a panic in a broker task
//! (a bug, which no input is known to trigger) costs its connection, not the task; a publish
//! caught between reserving its place in a publish queue and filling it when shutdown closes
//! the queue is still published; and a runtime that stalls right after a probe is published
//! does not take its subscriber connection for starved.
//!
//! The tests use the integration tests' support code (`tests/support`), which names the crate
//! `tower_ws_hub` (see the `extern crate self` in `lib.rs`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

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

/// A room whose waiting publishes, once they hold their place in the publish queue, stop
/// (blocking their thread) until that queue is closed, and fill the place a moment later.
const LATE_ROOM: &str = "tower-ws-hub-test-late-publish";

/// Set once a publish to [`LATE_ROOM`] holds its place.
static LATE_PLACE_HELD: AtomicBool = AtomicBool::new(false);

/// Test builds only: called between reserving a place in a publish queue and filling it.
pub(super) fn pause_before_filling_a_place(room: &str, queue: &mpsc::Sender<super::Outgoing>) {
    if room != LATE_ROOM {
        return;
    }
    LATE_PLACE_HELD.store(true, Ordering::SeqCst);
    let started = std::time::Instant::now();
    while !queue.is_closed() && started.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(1));
    }
    // Long enough for a publisher task that does not wait for late places to find its
    // closed queue empty and finish; well within the wait of one that does (an operation
    // timeout, 1 s here).
    std::thread::sleep(Duration::from_millis(50));
}

/// The channel prefix of the instance whose subscriber stops its thread, once, right after
/// Redis accepted one of its probes: a runtime that does not run for longer than the probe
/// timeout (a paused VM or process, a starved CPU quota).
const STALLED_PREFIX: &str = "recovery-stalled";

/// Set once the stall has happened.
static STALLED: AtomicBool = AtomicBool::new(false);

/// Test builds only: called when Redis has accepted a subscriber's probe.
pub(super) fn stall_after_a_probe_is_accepted(channel_prefix: &str, probe_timeout: Duration) {
    if channel_prefix == STALLED_PREFIX && !STALLED.swap(true, Ordering::SeqCst) {
        std::thread::sleep(probe_timeout + Duration::from_millis(500));
    }
}

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

/// A waiting publish that holds its place in the publish queue when shutdown closes the queue
/// (its thread was descheduled between reserving the place and filling it, say) was told it
/// succeeded: its message is published during the shutdown's flush, or at least counted as
/// failed, never dropped with the queue unseen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_that_held_its_place_when_the_queue_closed_is_published_not_lost() {
    let redis = RedisServer::start().await;
    let server = instance(&redis).await;
    eventually("the publisher to connect", || {
        server.hub.broker_status().publisher_connected
    })
    .await;
    // On a thread of its own: it blocks that thread, which must not be one the hub's tasks
    // need to shut down.
    let hub = server.hub.clone();
    let late = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(hub.publish_with_backpressure(LATE_ROOM, "late"))
    });
    eventually("the publish to hold its place", || {
        LATE_PLACE_HELD.load(Ordering::SeqCst)
    })
    .await;
    server.hub.shutdown().await;
    assert_eq!(late.join().unwrap(), Ok(0), "accepted (no local members)");
    let status = server.hub.broker_status();
    assert_eq!(status.published, 1, "{status:?}");
    assert_eq!(status.publish_failures, 0, "{status:?}");
}

/// A runtime that stops for longer than the probe timeout right after a probe was published
/// (here the only thread of this test's runtime sleeps): the probe's message is waiting in the
/// socket when it runs again, not yet read by the connection's task. That is no starvation,
/// and the subscriber connection must not be replaced for it (its rooms would miss what is
/// published while it resubscribes). What keeps it so: on waking, tokio polls the sockets
/// before it fires timers, so the connection's task has the probe's message in before the
/// probe clock ticks, and the tick reads what has arrived before it looks at the deadline.
#[tokio::test]
async fn a_runtime_stalled_past_the_probe_timeout_is_not_taken_for_a_starved_connection() {
    let redis = RedisServer::start().await;
    let config = RedisConfig::from_url(&redis.url())
        .unwrap()
        .channel_prefix(STALLED_PREFIX)
        .subscriber_connections(1)
        .probe(Duration::from_millis(200), Duration::from_secs(1));
    let server = serve_hub(Hub::builder().redis(config).build()).await;
    let mut client = server.connect("lobby").await;
    wait_members(&server.hub, "lobby", 1).await;
    eventually("the stall happened", || STALLED.load(Ordering::SeqCst)).await;
    // A few probe rounds after it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let status = server.hub.broker_status();
    assert_eq!(status.starvations, 0, "{status:?}");
    assert_eq!(status.reconnects, 0, "{status:?}");
    assert!(status.connected, "{status:?}");
    let mut plain = redis.connection().await;
    let envelope = crate::redis::Envelope::new(
        crate::redis::InstanceId::EXTERNAL,
        crate::Message::text("after the stall"),
    )
    .encode();
    publish_raw(&mut plain, &format!("{STALLED_PREFIX}:lobby"), &envelope).await;
    assert_eq!(next_text(&mut client).await, "after the stall");
}
